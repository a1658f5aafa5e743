"""Child processes: those that cannot outlive the test run, and those recorded by pid (the
testbed's), which must be recognised again before anything is sent to them.

Fixtures kill what they start, but a test runner that is itself SIGKILLed (CI timeout, OOM)
runs no finalizer; PR_SET_PDEATHSIG makes the kernel SIGKILL the child then. It survives the
exec (qemu/vm execs QEMU), so the guard sits on QEMU itself.

`Child` is the lifecycle the harness's other processes share (DPDK's testpmd as a frontend or
as a backend, see dpdk.py): started in a session of its own, pinned, output in a log, waited
on a condition with a deadline, paused and resumed, stopped with a signal and then SIGKILL.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

_PR_SET_PDEATHSIG = 1
# Loaded once, here: the function below runs between fork and exec, where importing or
# allocating is unsafe.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def die_with_parent() -> None:
    """subprocess.Popen(preexec_fn=...): SIGKILL this child when the test runner dies."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def default_signals() -> None:
    """subprocess.Popen(preexec_fn=...): SIGINT and SIGTERM as a new program expects them.
    A harness started in the background of a non-interactive shell (`cmd &`: CI jobs, nohup)
    ignores SIGINT, and one inside `signals_deferred` blocks both; ignored and blocked
    signals survive exec, and the harness stops its children with them."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


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


def sigterm_exits() -> None:
    """SIGTERM ends the script like Ctrl-C does, through its finally blocks: the children it
    started are stopped and their files removed (PR_SET_PDEATHSIG would only kill them)."""
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is over: a resource made in it is recorded
    before a Ctrl-C can abandon it. Blocking them in this thread is not enough: the kernel
    hands a process's signal to any thread that does not block it (a guest's console
    reader), and Python then runs the handler in the main thread, inside the block. So the
    handlers are swapped too, for ones that note the signal, which is raised again once the
    block is over. Children spawned in the block inherit the mask (procs.default_signals)."""
    sigs = (signal.SIGINT, signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread runs Python's handlers, or may set them
        return
    pending: list[int] = []
    handlers = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in sigs}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, set(sigs))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        for s, h in handlers.items():
            signal.signal(s, h)
        if pending:
            signal.raise_signal(pending[0])


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used (0 once it is gone)."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def signal_group(pid: int, sig: int) -> None:
    """Sends sig to the process group led by pid (a child started with start_new_session):
    what it runs under (stdbuf, a shell) and what it started get it too."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def processes_naming(text: str) -> list[str]:
    """"PID: COMMAND LINE" of every process (but this one) whose command line holds text:
    what a harness left running that names its directory."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and int(pid) != os.getpid():
            found.append(f"{pid}: {cmdline}")
    return found


def sigterm_and_collect(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """Stops a script as a user's SIGTERM would, and returns its (stdout, stderr) once it
    has exited; SIGKILLs it if it is still there after timeout seconds."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# Seconds a SIGKILLed child may take to be gone.
KILL_TIMEOUT = 300.0


class ChildError(Exception):
    """A child did not start, get ready or stop; the first line says why, the log's tail
    follows."""


class Child:
    """One process of a harness, its output (stdout and stderr) in log_path.

    argv runs in a session of its own (a test runner's Ctrl-C does not reach it; the harness
    stops it) on the given CPUs, and dies with the harness. Its stdin is a pipe for commands
    (send). reason(log text) names why it failed in one line, from its own messages; without
    one, the exit status is the reason."""

    def __init__(self, argv: list[str], log_path: Path, cpus: set[int] | None = None,
                 reason: Callable[[str], str | None] | None = None,
                 env: dict[str, str] | None = None):
        self.argv = argv
        self.log_path = log_path
        self.cpus = set(cpus) if cpus else None
        self.reason = reason
        self.env = env
        self.name = Path(argv[0]).name
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w") as log:
            log.write("command: " + shlex.join(self.argv) + "\n")
            log.flush()
            try:
                self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=log,
                                             stderr=subprocess.STDOUT, env=self.env,
                                             start_new_session=True, preexec_fn=self._preexec)
            except OSError as e:
                raise ChildError(f"cannot run {self.argv[0]}: {e}") from e

    def _preexec(self) -> None:
        """Between fork and exec: the CPUs, death with the harness, the signals stop() uses."""
        default_signals()
        if self.cpus:
            os.sched_setaffinity(0, self.cpus)
        die_with_parent()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def failure(self, what: str) -> str:
        """One line saying why (the process's own words when reason finds them), the log's
        path, then its tail."""
        why = self.reason(self.text()) if self.reason else None
        if why is None and self.proc is not None and self.proc.poll() is not None:
            why = f"exited with {self.proc.returncode}"
        return (f"{self.name} {what}" + (f": {why}" if why else "") +
                f" (log {self.log_path})\n{self.log_tail()}")

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str,
                   interval: float = 0.05) -> None:
        """Waits until ready() holds; a ChildError if the process exits first (with its
        reason) or after timeout seconds (saying what it did not do)."""
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.alive():
                raise ChildError(self.failure(f"exited before it {what}"))
            if time.monotonic() > deadline:
                raise ChildError(self.failure(f"did not {what} within {timeout:.0f} s"))
            time.sleep(interval)

    def send(self, line: str) -> None:
        """Writes a command line to its stdin (an interactive program's prompt)."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()

    def pause(self) -> None:
        """SIGSTOP to its group: it keeps its state and uses no CPU until resume()."""
        if self.alive():
            signal_group(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.alive():
            signal_group(self.pid, signal.SIGCONT)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid) if self.proc is not None else 0.0

    def stop(self, sig: int = signal.SIGINT, timeout: float = 10.0,
             commands: tuple[str, ...] = ()) -> int | None:
        """Stops it: resumed if paused (a stopped process cannot act on anything), the
        commands written to its stdin (a polite quit), then sig to its group and, after
        timeout seconds, SIGKILL. Returns its exit status (None if never started)."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            signal_group(proc.pid, signal.SIGCONT)
            try:
                for line in commands:
                    self.send(line)
            except OSError:
                pass
            signal_group(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                signal_group(proc.pid, signal.SIGKILL)
                try:
                    # Exiting takes long on a loaded machine (testpmd unmaps a GiB of memory).
                    proc.wait(KILL_TIMEOUT)
                except subprocess.TimeoutExpired as e:
                    raise ChildError(f"{self.name} (pid {proc.pid}) still exists {KILL_TIMEOUT:.0f} s "
                                     f"after SIGKILL (log {self.log_path})") from e
        if proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
        with open(self.log_path, "a") as log:
            log.write(f"\n[prismtb] exit status {proc.returncode}\n")
        return proc.returncode
