"""The vhost-user backend the guests attach to: prism-vnic, or a stand-in from PRISM_SWITCH_CMD.
This is the one place that knows prism-vnic's flags and its control socket.

By default the newest of target/release/prism-vnic and target/debug/prism-vnic runs as

    prism-vnic --port vm1=DIR/vm1.sock --port vm2=DIR/vm2.sock [--tap NAME=IFNAME]...
               --queues 4 --control DIR/control.sock [EXTRA ARGS: --rules, --link-rate, ...]

PRISM_SWITCH_CMD replaces that command line. It is a template with {vm1}, {vm2} (socket paths),
{queues}, {control}, {dir} and {pid}, split like a shell would. PRISM_SWITCH=testpmd is a shorthand
for DPDK's testpmd as a two-port "cable" (io forwarding between two vhost-user ports), the
stand-in used to validate the harness:

    dpdk-testpmd --no-pci --no-huge -m 512 --file-prefix=prism-e2e-PID
        --vdev net_vhost0,iface={vm1},queues={queues} --vdev net_vhost1,iface={vm2},queues={queues}
        -- --forward-mode=io --rxq={queues} --txq={queues} --total-num-mbufs=32768 -a

The backend's stdin is a pipe kept open for its whole life (testpmd without -i exits when it
reads end-of-file). It is stopped with SIGTERM; the exit statuses accepted then are 0 unless
PRISM_SWITCH_EXIT_OK lists others (comma-separated; -15 means "killed by SIGTERM").

A stand-in is not a switch: testpmd's io forwarding sends what arrives on port A queue q out
of port B queue q, so tests that need real switching check `Switch.is_stand_in`.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

from . import REPO
from .procs import cpu_seconds, die_with_parent, log_tail, signal_group, signals_deferred
SOCKET_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


# Stand-in backends by name: (command template, exit statuses accepted after SIGTERM).
STAND_INS = {
    "testpmd": (
        "dpdk-testpmd --no-pci --no-huge -m 512 --file-prefix=prism-e2e-{pid} "
        "--vdev net_vhost0,iface={vm1},queues={queues} --vdev net_vhost1,iface={vm2},queues={queues} "
        "-- --forward-mode=io --rxq={queues} --txq={queues} --total-num-mbufs=32768 -a",
        "0"),
}


class SwitchError(Exception):
    """The backend did not start, stop or answer as its contract says."""


def find_prism_vnic(env: dict[str, str] | None = None) -> Path | None:
    """The most recently built prism-vnic binary, release or debug (PRISM_VNIC overrides)."""
    override = (os.environ if env is None else env).get("PRISM_VNIC")
    if override:
        return Path(override)
    built = [p for p in (REPO / "target" / "release" / "prism-vnic",
                         REPO / "target" / "debug" / "prism-vnic") if p.is_file()]
    return max(built, key=lambda p: p.stat().st_mtime) if built else None


def release_binary(env: dict[str, str] | None = None) -> Path:
    """The prism-vnic a benchmark measures: PRISM_VNIC (or PRISM_VNIC_BIN), else the release
    build (a debug build would measure the compiler's settings, not the code)."""
    env = os.environ if env is None else env
    override = env.get("PRISM_VNIC") or env.get("PRISM_VNIC_BIN")
    return Path(override) if override else REPO / "target" / "release" / "prism-vnic"


def prism_vnic_argv(binary: Path, sockets: dict[str, Path], taps: dict[str, str], queues: int,
                    control: Path, extra_args: list[str]) -> list[str]:
    """prism-vnic's command line: a vhost-user port per socket, a tap port per device."""
    argv = [str(binary)]
    for port, sock in sockets.items():
        argv += ["--port", f"{port}={sock}"]
    for port, ifname in taps.items():
        argv += ["--tap", f"{port}={ifname}"]
    return argv + ["--queues", str(queues), "--control", str(control), *extra_args]


def socket_in_use(path: Path) -> bool:
    """Whether a process listens on the unix socket at path (a stale file is not in use)."""
    if not _is_socket(path):
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(5)
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.stat().st_mode)
    except OSError:
        return False


class Switch:
    def __init__(self, out_dir: Path, ports: tuple[str, ...] = ("vm1", "vm2"), queues: int = 4,
                 taps: dict[str, str] | None = None, extra_args: list[str] | None = None,
                 sock_dir: Path | None = None, env: dict[str, str] | None = None,
                 detached: bool = False, name: str = "switch", cpus: set[int] | None = None):
        """ports: vhost-user ports (a socket each, in sock_dir); taps: port name -> existing
        host tap device; extra_args: more prism-vnic flags (--rules, --link-rate, ...).
        sock_dir (default: a new temporary directory, removed by stop()) holds the sockets;
        env (default os.environ) is where PRISM_SWITCH* are read. detached: the backend
        outlives this process (the testbed's); otherwise it dies with it. name: of the log
        (OUT_DIR/NAME.log); cpus: the host CPUs it may run on (benchmarks)."""
        self.detached = detached
        self.cpus = set(cpus) if cpus else None
        env = dict(os.environ) if env is None else env
        out_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = out_dir / f"{name}.log"
        self.queues = queues
        # Short path: unix socket paths are limited to 108 bytes.
        if sock_dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="prism-e2e-"))
        else:
            sock_dir.mkdir(parents=True, exist_ok=True)
            self.dir = sock_dir
        self.sockets = {port: self.dir / f"{port}.sock" for port in ports}
        self.taps = dict(taps or {})
        self.control = self.dir / "control.sock"
        template = env.get("PRISM_SWITCH_CMD")
        exit_ok_default = "0"
        stand_in = env.get("PRISM_SWITCH")
        if stand_in and not template:
            if stand_in not in STAND_INS:
                raise SwitchError(f"PRISM_SWITCH={stand_in}: known stand-ins are {sorted(STAND_INS)}")
            template, exit_ok_default = STAND_INS[stand_in]
        self.binary: Path | None = None
        # A name for reports, and whether this is something other than prism-vnic.
        self.kind = stand_in if stand_in and not env.get("PRISM_SWITCH_CMD") else "prism-vnic"
        if template:
            fields = {port: str(sock) for port, sock in self.sockets.items()}
            fields.update(queues=str(queues), control=str(self.control), dir=str(self.dir),
                          pid=str(os.getpid()))
            try:
                self.argv = shlex.split(template.format(**fields))
            except (KeyError, IndexError, ValueError) as e:
                raise SwitchError(f"PRISM_SWITCH_CMD: bad template ({e!r}): {template}") from e
            if Path(self.argv[0]).name == "prism-vnic":
                self.binary = Path(self.argv[0])
            elif self.kind == "prism-vnic":
                self.kind = Path(self.argv[0]).name
        else:
            self.binary = find_prism_vnic(env)
            if self.binary is None:
                raise SwitchError(
                    "no prism-vnic binary in target/release or target/debug: build it "
                    "(.ci/patch-crates && cargo build --release) or set PRISM_VNIC or PRISM_SWITCH_CMD")
            self.argv = prism_vnic_argv(self.binary, self.sockets, self.taps, queues,
                                        self.control, extra_args or [])
        ok = env.get("PRISM_SWITCH_EXIT_OK", exit_ok_default)
        try:
            self.exit_ok = {int(x) for x in ok.split(",") if x.strip()}
        except ValueError as e:
            raise SwitchError(f"PRISM_SWITCH_EXIT_OK must be comma-separated integers, not {ok!r}") from e
        self.proc: subprocess.Popen | None = None

    def describe(self) -> str:
        """What ran, for reports: the binary (relative to the repository) or the stand-in."""
        if self.binary is None:
            return self.kind
        try:
            return str(self.binary.resolve().relative_to(REPO))
        except ValueError:
            return str(self.binary)

    @property
    def is_stand_in(self) -> bool:
        return self.binary is None

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def panics_since(self, offset: int) -> list[str]:
        """Rust panic reports the backend logged after byte offset of its log (a panicking
        vring worker leaves the daemon running with a dead data path)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            return []
        return [f"{line} | {lines[i + 1] if i + 1 < len(lines) else ''}"
                for i, line in enumerate(lines) if "panicked at" in line]

    def start(self, on_spawn: Callable[[int], None] | None = None) -> None:
        """Starts the backend and waits until it listens on every port socket and, for
        prism-vnic, on its control socket. on_spawn(pid) runs as soon as it exists, with
        Ctrl-C held back until it returns (the testbed records the pid there)."""
        for path in [*self.sockets.values(), self.control]:
            if socket_in_use(path):
                # prism-vnic would take the path over, leaving the other process deaf.
                raise SwitchError(f"socket {path} is in use by a running process (another "
                                  "prism-vnic?): stop it, or choose another path")
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        log = open(self.log_path, "w")
        log.write("command: " + shlex.join(self.argv) + "\n")
        log.flush()
        try:
            with signals_deferred() if on_spawn else nullcontext():
                self.proc = subprocess.Popen(
                    self.argv, stdin=subprocess.DEVNULL if self.detached else subprocess.PIPE,
                    stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                    preexec_fn=self._preexec)
                if on_spawn:
                    on_spawn(self.proc.pid)
        except OSError as e:
            raise SwitchError(f"cannot run {self.argv[0]}: {e}") from e
        finally:
            log.close()
        try:
            self._wait_listening()
        except BaseException:
            # Not started is not running: a backend that did not get there in time, or
            # whose start was interrupted (Ctrl-C, SIGTERM), has no caller to stop it.
            self.kill()
            raise

    def _wait_listening(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + SOCKET_TIMEOUT
        wanted = list(self.sockets.values()) + ([self.control] if self.binary is not None else [])
        while not all(_is_socket(s) for s in wanted):
            if self.proc.poll() is not None:
                raise SwitchError(self._start_failure())
            if time.monotonic() > deadline:
                missing = [str(s) for s in wanted if not _is_socket(s)]
                raise SwitchError(f"{self.argv[0]} did not create {missing} within {SOCKET_TIMEOUT:.0f} s; "
                                  f"log {self.log_path}:\n{self.log_tail()}")
            time.sleep(0.1)

    def _start_failure(self) -> str:
        """Why the backend exited before listening: prism-vnic's own one-line error
        ("prism-vnic: cannot ...") first, with the log's tail below it."""
        tail = self.log_tail()
        errors = [line for line in tail.splitlines() if line.startswith("prism-vnic: ")]
        if errors:
            return (f"prism-vnic did not start: {errors[-1].removeprefix('prism-vnic: ')} "
                    f"(log {self.log_path})\n{tail}")
        return (f"{self.argv[0]} exited with {self.proc.returncode} before creating its "
                f"sockets; log {self.log_path}:\n{tail}")

    def _preexec(self) -> None:
        """Between fork and exec: the CPUs, and death with this process unless detached."""
        if self.cpus:
            os.sched_setaffinity(0, self.cpus)
        if not self.detached:
            die_with_parent()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pause(self) -> None:
        """SIGSTOP: the backend keeps its state and uses no CPU until resume() (benchmarks
        whose backends take turns on the CPUs)."""
        if self.alive():
            assert self.proc is not None
            signal_group(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.alive():
            assert self.proc is not None
            signal_group(self.proc.pid, signal.SIGCONT)

    def cpu_seconds(self) -> float:
        """CPU time the backend has used (user plus system)."""
        return cpu_seconds(self.proc.pid) if self.proc is not None else 0.0

    def stop(self) -> list[str]:
        """SIGTERMs the backend; returns the contract violations seen (empty when clean)."""
        problems: list[str] = []
        if self.proc is None:
            return problems
        if self.proc.poll() is not None:
            problems.append(f"exited on its own, with {self.proc.returncode}, before SIGTERM")
        else:
            # A paused backend would leave SIGTERM pending until it is killed.
            self.resume()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
                problems.append(f"still running {STOP_TIMEOUT:.0f} s after SIGTERM (SIGKILLed)")
            else:
                if self.proc.returncode not in self.exit_ok:
                    problems.append(f"exited with {self.proc.returncode} after SIGTERM, "
                                    f"want one of {sorted(self.exit_ok)}")
        with open(self.log_path, "a") as log:
            log.write(f"\n[e2e] exit status {self.proc.returncode}\n")
        left = [str(s) for s in self.sockets.values() if s.exists()]
        if left:
            problems.append(f"left its sockets behind: {left}")
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return problems

    def kill(self) -> None:
        """Emergency cleanup: SIGKILL, no checks."""
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)

    def control_command(self, *args: str, timeout: float = 60) -> str:
        """`prism-vnic SUBCOMMAND --control SOCK ARGS...` (stats, rule, link, ...); its stdout."""
        if self.binary is None:
            raise SwitchError(f"`prism-vnic {' '.join(args)}` needs prism-vnic, not the stand-in {self.kind}")
        sub, *rest = args
        res = subprocess.run([str(self.binary), sub, "--control", str(self.control), *rest],
                             capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            raise SwitchError(f"prism-vnic {' '.join(args)} exited {res.returncode}: {res.stderr.strip()}")
        return res.stdout

    def rule(self, *args: str) -> str:
        """`prism-vnic rule ARGS` (add PORT ..., del, list) on this backend."""
        return self.control_command("rule", *args)

    def stats(self) -> dict | None:
        """`prism-vnic stats --json` from the control socket; None for a stand-in backend."""
        if self.binary is None:
            return None
        out = self.control_command("stats", "--json", timeout=30)
        try:
            return json.loads(out)
        except json.JSONDecodeError as e:
            raise SwitchError(f"prism-vnic stats --json printed invalid JSON ({e}): {out[:500]}") from e
