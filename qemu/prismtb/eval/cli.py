"""benches/eval: the one command of the evaluation.

    benches/eval [--quick | --full] [--out DIR] [--rounds N] [--experiments a,b,c,d,cal]
                 [--setups host-client,two-guests] [--servers idle,busy] [--steering on,off]
    benches/eval run [the same options] --out DIR --resume   continue a run cut short
    benches/eval compare DIR_A DIR_B [--absolute]     exit 1 on a regression from A to B
    benches/eval report DIR                           analysis, plots, report again from run.json

See docs/EVAL.md for the method and the result directory."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from . import compare, plots, report, results


def finish_run(out: Path, meta: dict, turns: list[dict]) -> dict:
    """Writes run.json and turns.csv, then the analysis, plots and report; returns the
    summary."""
    results.write_run(out, meta, turns)
    summary = results.analyse(turns)
    results.write_summary(out, summary)
    drawn = plots.all_plots(out, turns, summary)
    report.write(out, meta, summary, drawn)
    return summary


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benches/eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="verb")
    c = sub.add_parser("compare", help="changes from run A to run B beyond the intervals")
    c.add_argument("dir_a", type=Path)
    c.add_argument("dir_b", type=Path)
    c.add_argument("--absolute", action="store_true",
                   help="count absolute latency changes of PRISM variants as regressions too")
    r = sub.add_parser("report", help="analyse a run directory again")
    r.add_argument("dir", type=Path)
    run = sub.add_parser("run", help="run the experiments (the default verb)")
    add_run_arguments(run)
    return p


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    from .runner import PROFILES
    prof = p.add_mutually_exclusive_group()
    prof.add_argument("--quick", dest="profile", action="store_const", const="quick",
                      help="CI profile: few rounds and cells, at most 10 minutes warm")
    prof.add_argument("--full", dest="profile", action="store_const", const="full",
                      help="every experiment, both servers, steering on and off, two setups")
    p.set_defaults(profile="quick")
    p.add_argument("--out", type=Path, help="result directory (default benches/out/eval-TIME)")
    p.add_argument("--rounds", type=int, help="rounds per cell (profile's default otherwise)")
    p.add_argument("--seconds", type=float, help="seconds per turn")
    p.add_argument("--experiments", type=_csv, help=f"of {','.join(results.EXPERIMENTS)}")
    p.add_argument("--setups", type=_csv, help="host-client, two-guests")
    p.add_argument("--servers", type=_csv, help="idle, busy")
    p.add_argument("--steering", type=_csv, help="on, off")
    p.add_argument("--flows", type=lambda s: [int(x) for x in _csv(s)],
                   help="bulk flows of experiment b (default 0,1,2,4,8)")
    p.add_argument("--kernels", type=_csv, help="prism,vanilla (default both): which boots")
    p.add_argument("--prism-kernel", metavar="SPEC",
                   help="the PRISM kernel: a flavour or a bzImage (default: built from the series)")
    p.add_argument("--vanilla-kernel", metavar="SPEC", help="the vanilla kernel, likewise")
    p.add_argument("--initrd", type=Path, help="the guest image (default: built, with the "
                   "workloads)")
    p.add_argument("--icount", metavar="OPTS",
                   help="QEMU -icount OPTS for the guests (e.g. shift=auto), to compare the "
                   "intervals with a run without")
    p.add_argument("--bulk-rate", metavar="RATE", type=_rate,
                   help="pace each bulk flow at RATE bit/s (iperf3 -b: 20M, 500K) so the "
                   "server is not saturated; default: unpaced")
    p.add_argument("--priority-mps", metavar="N", type=int,
                   help="the priority flow's messages per second (sockperf --mps) in "
                   "experiments a, b and cal; 0: none, the bulk flows alone (default 500)")
    p.add_argument("--knob", metavar="NAME=VALUE", type=_knob, action="append",
                   help="set a PRISM knob (net.core.prism_*, e.g. prism_napi_ahead=0) in the "
                   "server's kernel after boot; repeatable")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out DIR with the same options: rounds "
                   "complete there are kept, a round cut short is measured again; refused "
                   "when the plan, commit, kernels or image differ (docs/EVAL.md)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (cells, turns, estimated time) and exit")
    p.epilog = "profiles: " + "; ".join(f"{k}: {v.describe()}" for k, v in PROFILES.items())


def _rate(text: str) -> str:
    """An iperf3 -b rate: a number with an optional K, M or G."""
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)?[KMG]?", text):
        raise argparse.ArgumentTypeError(f"not a rate like 20M or 500K: {text!r}")
    return text


def _knob(text: str) -> str:
    """NAME=VALUE for a PRISM knob: a prism_* sysctl of net.core and an integer."""
    if not re.fullmatch(r"prism_[a-z_]+=[0-9]+", text):
        raise argparse.ArgumentTypeError(
            f"not a PRISM knob setting like prism_napi_ahead=0: {text!r}")
    return text


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("compare", "report", "run", "-h", "--help"):
        argv.insert(0, "run")
    args = parser().parse_args(argv)
    try:
        if args.verb == "compare":
            return compare.main(args.dir_a, args.dir_b, absolute=args.absolute)
        if args.verb == "report":
            meta, turns = results.read_run(args.dir)
            finish_run(args.dir, meta, turns)
            print(args.dir / "report.md")
            return 0
    except FileNotFoundError as e:
        print(f"benches/eval: {e}", file=sys.stderr)
        return 2
    from .runner import run_from_args
    return run_from_args(args)
