"""Child processes that cannot outlive the test run.

Fixtures kill what they start, but a test runner that is itself SIGKILLed (CI timeout, OOM)
runs no finalizer; PR_SET_PDEATHSIG makes the kernel SIGKILL the child then. It survives the
exec (qemu/vm execs QEMU), so the guard sits on QEMU itself.
"""

from __future__ import annotations

import ctypes
import signal

_PR_SET_PDEATHSIG = 1
# Loaded once, here: the function below runs between fork and exec, where importing or
# allocating is unsafe.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def die_with_parent() -> None:
    """subprocess.Popen(preexec_fn=...): SIGKILL this child when the test runner dies."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
