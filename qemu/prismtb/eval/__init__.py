"""The evaluation of PRISM on the testbed (benches/eval): experiments, paired statistics,
result directories, plots, the Markdown report and `compare`. See docs/EVAL.md."""
