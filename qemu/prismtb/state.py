"""What a running testbed is made of, recorded as it is made, so that `down` (or the cleanup
after a failure or Ctrl-C half-way through `up`) finds everything: processes (pid and start
time, so a recycled pid is never signalled), tap devices, network namespaces, directories.

The record is a JSON file written atomically after every change, in the testbed's run
directory (PRISM_TESTBED_RUN, default /run/prism-testbed, then the testbed's name).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import time
from pathlib import Path

from . import netns
from .procs import pid_alive, signals_deferred, start_time

STOP_TIMEOUT = 30.0


def run_root() -> Path:
    return Path(os.environ.get("PRISM_TESTBED_RUN", "/run/prism-testbed"))


class StateError(Exception):
    """The testbed's record could not be read, or says another `up` owns it."""


class State:
    def __init__(self, name: str, root: Path | None = None):
        self.name = name
        self.dir = (root or run_root()) / name
        self.path = self.dir / "state.json"
        self.lock_path = (root or run_root()) / f".{name}.lock"
        self.data: dict = {}
        self._lock_fd: int | None = None

    # --- lock: one command at a time changes a testbed -----------------------------------

    def lock(self) -> None:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateError(f"testbed {self.name}: another qemu/testbed command is changing it "
                             "right now (wait for it, or Ctrl-C it)") from None
        self._lock_fd = fd

    def unlock(self, remove: bool = False) -> None:
        if self._lock_fd is None:
            return
        if remove:
            try:
                self.lock_path.unlink()
            except FileNotFoundError:
                pass
        os.close(self._lock_fd)
        self._lock_fd = None

    # --- the record ---------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> dict:
        try:
            self.data = json.loads(self.path.read_text())
        except FileNotFoundError:
            raise StateError(f"testbed {self.name} is not up (no {self.path})") from None
        except (OSError, json.JSONDecodeError) as e:
            raise StateError(f"testbed {self.name}: unreadable record {self.path}: {e}") from e
        return self.data

    def create(self, topology: str, logs: Path) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data = {"name": self.name, "topology": topology, "logs": str(logs), "up": False,
                     "started": time.strftime("%Y-%m-%d %H:%M:%S"), "owner": os.getpid(),
                     "resources": [], "hosts": {}}
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)

    def add(self, kind: str, **fields) -> None:
        self.data["resources"].append({"kind": kind, **fields})
        self.save()

    def add_process(self, what: str, pid: int, **fields) -> None:
        """A process by pid and start time; signal="KILL" to stop it with SIGKILL."""
        self.add("process", what=what, pid=pid, start=start_time(pid), **fields)

    def processes(self) -> list[dict]:
        return [r for r in self.data.get("resources", []) if r["kind"] == "process"]

    def live_processes(self) -> list[dict]:
        return [r for r in self.processes() if same_process(r)]

    # --- teardown -----------------------------------------------------------------------------

    def teardown(self, say=print) -> list[str]:
        """Removes every recorded resource, newest first, and the record itself; returns what
        could not be removed (empty: nothing is left)."""
        left: list[str] = []
        for r in reversed(self.data.get("resources", [])):
            try:
                problem = _remove(r, say)
            except Exception as e:  # keep removing the others
                problem = f"{r}: {e!r}"
            if problem:
                left.append(problem)
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.dir.exists():
            left.append(f"directory {self.dir}")
        return left


def same_process(r: dict) -> bool:
    """Whether the recorded process still runs (same pid and start time)."""
    return pid_alive(r["pid"]) and start_time(r["pid"]) == r.get("start")


def _remove(r: dict, say) -> str | None:
    kind = r["kind"]
    if kind == "process":
        return _stop_process(r, say)
    if kind == "tap":
        netns.delete_tap(r["name"], r.get("netns"))
        return f"tap {r['name']}" if netns.tap_exists(r["name"]) else None
    if kind == "netns":
        netns.HostNetns(r["name"], r.get("tap", ""), None).delete()
        return f"netns {r['name']}" if netns.netns_exists(r["name"]) else None
    if kind == "dir":
        shutil.rmtree(r["path"], ignore_errors=True)
        return f"directory {r['path']}" if Path(r["path"]).exists() else None
    return f"unknown resource {r}"


def _stop_process(r: dict, say) -> str | None:
    """SIGTERM (prism-vnic removes its sockets then) or SIGKILL (QEMU: nothing to save), then
    waits until the process is gone."""
    if not same_process(r):
        return None
    sig = signal.SIGKILL if r.get("signal") == "KILL" else signal.SIGTERM
    say(f"stopping {r['what']} (pid {r['pid']})")
    try:
        os.kill(r["pid"], sig)
    except ProcessLookupError:
        return None
    deadline = time.monotonic() + STOP_TIMEOUT
    while same_process(r):
        _reap(r["pid"])
        if time.monotonic() > deadline:
            if sig == signal.SIGKILL:
                return f"process {r['what']} (pid {r['pid']}) survives SIGKILL"
            say(f"{r['what']} (pid {r['pid']}) still runs {STOP_TIMEOUT:.0f} s after SIGTERM: SIGKILL")
            sig = signal.SIGKILL
            os.kill(r["pid"], sig)
            deadline = time.monotonic() + STOP_TIMEOUT
        time.sleep(0.1)
    _reap(r["pid"])
    return None


def _reap(pid: int) -> None:
    """Collects the exit status of our own child (the `up` that started it), so that it does
    not stay a zombie; nothing for another process's."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
