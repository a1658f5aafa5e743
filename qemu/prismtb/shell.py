"""What every place commands run in offers on top of run(): a guest's console, a host
network namespace. Subclasses define run(cmd, timeout) -> (exit status, output) and name."""

from __future__ import annotations

import re


class ShellError(Exception):
    """A command failed or a condition did not come true; the message has the output."""


class Shell:
    name: str = "?"

    def run(self, cmd: str, timeout: float = 120.0) -> tuple[int, str]:
        raise NotImplementedError

    def check(self, cmd: str, timeout: float = 120.0) -> str:
        """run() that raises unless the command exits 0."""
        rc, out = self.run(cmd, timeout)
        if rc != 0:
            raise self.error(f"{self.name}: `{cmd}` exited {rc}:\n{out}")
        return out

    def error(self, message: str) -> Exception:
        """The exception check() raises; subclasses keep their historical types."""
        return ShellError(message)

    def wait_until(self, condition: str, timeout: float, interval: float = 0.5) -> None:
        """Waits until the shell condition succeeds; the loop runs in a subshell so giving
        up (exit 1) ends the loop, not the console's shell."""
        tries = max(1, int(timeout / max(interval, 1.0)))
        pause = f"sleep {interval}; " if interval else ""
        self.check(f"( i=0; until {condition}; do i=$((i+1)); [ $i -lt {tries} ] || exit 1; "
                   f"{pause}done )", timeout=timeout + 60)

    def bg(self, name: str, cmd: str) -> None:
        """Starts cmd in the background; its output goes to /tmp/NAME.out and its exit
        status to /tmp/NAME.rc.

        Backgrounded from a subshell that exits at once, so the job is not the console
        shell's: an interactive shell reports its own jobs' ends ("[4]+ Done ...") at its
        next prompt, into the output of whatever command runs then (a CI run read that
        notice as part of a `cat` of the exit status)."""
        self.check(f"rm -f /tmp/{name}.rc; ( ( {cmd} > /tmp/{name}.out 2>&1; "
                   f"echo $? > /tmp/{name}.rc ) & )")

    def wait_bg(self, name: str, timeout: float) -> tuple[int, str]:
        """Waits for a bg() command to end; returns (exit status, output)."""
        self.wait_until(f"[ -s /tmp/{name}.rc ]", timeout)
        text = self.check(f"cat /tmp/{name}.rc")
        status = parse_status(text)
        if status is None:
            raise self.error(f"{self.name}: /tmp/{name}.rc holds no exit status: {text!r}")
        return status, self.check(f"cat /tmp/{name}.out")


def parse_status(text: str) -> int | None:
    """The exit status in a file's text: the line that is a number (anything else the
    console printed around it, like a job notice of another command, is not part of it)."""
    status = re.search(r"^\s*(-?\d+)\s*$", text, re.MULTILINE)
    return int(status.group(1)) if status else None
