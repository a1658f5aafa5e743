"""What the booted-guest test directories (tests/e2e, tests/overlay) share in their conftest:
a lower CPU priority for everything they start, and measured figures in the terminal summary.
"""

from __future__ import annotations

import os


def lower_priority() -> None:
    """Runs the session (and the QEMU and backend it starts) at nice PRISM_E2E_NICE (default
    10): the machine is shared with compilers and other guests. Sets the level rather than
    adding to it, so two directories in one session, or a niced shell, do not stack."""
    nice = int(os.environ.get("PRISM_E2E_NICE", "10"))
    if nice > 0 and os.nice(0) < nice:
        os.nice(nice - os.nice(0))


class Figures:
    """Measured figures (throughput, ...) collected by a `report` fixture and shown in the
    terminal summary, so they are in the test output without -s."""

    def __init__(self, title: str):
        self.title = title
        self.lines: list[str] = []

    def add(self, line: str) -> None:
        self.lines.append(line)
        print(line)

    def summarize(self, terminalreporter) -> None:
        if self.lines:
            terminalreporter.section(self.title)
            for line in self.lines:
                terminalreporter.write_line(line)
