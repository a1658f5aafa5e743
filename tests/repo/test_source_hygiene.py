"""A rule of the project's style that a reviewer would otherwise have to catch by eye: the
code's comments say why, not how fast (figures belong in commit messages and
docs/DATAPATH.md)."""

from __future__ import annotations

import re
import subprocess

from prismtb import REPO

# A benchmark figure in a comment: a share of a profile, a speed-up, a named bench case.
FIGURE = re.compile(
    r"\d+(\.\d+)?(-\d+(\.\d+)?)?% (of the|slower|faster)"
    r"|\d+(\.\d+)?x the rate"
    r"|\b(a|one) (half|third|quarter|fourth|fifth|sixth|tenth) of (the|its|case)"
    r"|[0-9.]+ ?GB/s instead"
    r"|benches/vs_dpdk|benchmark case|reference machine"
)
COMMENT = re.compile(r"^\s*//")


def tracked(*patterns: str) -> list[str]:
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "--", *patterns],
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line]


def test_rust_comments_carry_no_benchmark_figures():
    found = []
    for path in tracked("src/*.rs", "src/**/*.rs"):
        for n, line in enumerate((REPO / path).read_text().splitlines(), 1):
            if COMMENT.match(line) and FIGURE.search(line):
                found.append(f"{path}:{n}: {line.strip()}")
    assert not found, "figures belong in docs/DATAPATH.md or the commit message:\n" + "\n".join(found)


def test_the_figure_pattern_catches_what_it_is_for():
    assert FIGURE.search("// the staging copy was 4% of the worker")
    assert FIGURE.search("/// 32 was 4-6% slower at 64 bytes")
    assert FIGURE.search("// (case (c) of benches/vs_dpdk.py at 9000 bytes)")
    assert FIGURE.search("/// reading it back was a sixth of the switching path")
    assert not FIGURE.search("// Two significant digits: within 1%.")
    assert not FIGURE.search("/// 100% in [`Chance`] units.")
