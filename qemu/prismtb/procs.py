"""Child processes: those that cannot outlive the test run, and those recorded by pid (the
testbed's), which must be recognised again before anything is sent to them.

Fixtures kill what they start, but a test runner that is itself SIGKILLed (CI timeout, OOM)
runs no finalizer; PR_SET_PDEATHSIG makes the kernel SIGKILL the child then. It survives the
exec (qemu/vm execs QEMU), so the guard sits on QEMU itself.
"""

from __future__ import annotations

import ctypes
import signal
from contextlib import contextmanager
from typing import Iterator

_PR_SET_PDEATHSIG = 1
# Loaded once, here: the function below runs between fork and exec, where importing or
# allocating is unsafe.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def die_with_parent() -> None:
    """subprocess.Popen(preexec_fn=...): SIGKILL this child when the test runner dies."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name (field 2) may hold spaces and parentheses: split after it.
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether pid is a live process (a zombie is not)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot): with the pid, it names one process;
    a recycled pid has another start time."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None else None


@contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is over: a resource made in it is recorded
    before a Ctrl-C can abandon it."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
