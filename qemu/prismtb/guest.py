"""A test guest driven through its serial console.

A `Guest` starts one VM with qemu/vm (which execs QEMU, so the process we hold *is* QEMU),
reads the console from QEMU's stdout on a thread, saves everything to a log file, and runs
shell commands by writing them to QEMU's stdin.

Command output is cut out of the console stream with per-command markers that only the
*executed* command can print: the command line says `PRISM-BEG''IN-<id>` (the shell removes the
quotes), so the console's echo of the typed line never matches `PRISM-BEGIN-<id>`, and the exit
status is printed by `$?`, which the echo shows unexpanded. Kernel messages cannot fake the
markers either; /init lowers the console log level once the guest is ready, so only emergencies
interleave with command output (run(..., strip_kernel_lines=True) drops lines that look like
printk output, for the rare parser that must not see them; `dmesg` itself looks the same).
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import REPO
from .parsers import vcpu_threads
from .procs import die_with_parent, pid_alive, signals_deferred
from .shell import Shell

QEMU_VM = REPO / "qemu" / "vm"

READY_RE = re.compile(r"PRISM-GUEST-(READY|FAILED)([^\r\n]*)")
KERNEL_LINE_RE = re.compile(r"^\[\s*\d+\.\d+\] ")

# Boot under TCG takes seconds on an idle machine, much longer when the 2 cores are shared
# with compilers and other guests: wait on conditions, with room to spare.
BOOT_TIMEOUT = float(os.environ.get("PRISM_E2E_BOOT_TIMEOUT", "180"))
COMMAND_TIMEOUT = 120.0
PROGRESS_EVERY = 30.0
# QEMU stopped by one of its own assertions (SIGABRT): a bug of QEMU's, not of the guest or
# the backend. Under TCG, QEMU 10 can abort so while a guest boots (iotlb_to_section's
# `section_index < d->map.sections_nb`, a race between a vCPU and a memory map update). A
# boot that ends so is started again, at most BOOT_RELAUNCHES times, and says so; any other
# end of QEMU, and any abort after the guest is ready, stays a failure.
QEMU_ASSERTION_RE = re.compile(r"qemu-system-[^:\s]+: [^:\s]+\.c:\d+: [^\n]*Assertion [^\n]* failed")
BOOT_RELAUNCHES = 1

_marker_ids = itertools.count(1)


class GuestError(Exception):
    """The guest did not do what was asked; the message carries the console evidence."""


@dataclass
class GuestConfig:
    name: str
    socket: Path
    ip: str | None = None
    queues: int = 4
    smp: int = 2
    mem: str = "1G"
    kernel: str | None = None
    initrd: str | None = None
    append: str | None = None
    extra_qemu_args: list[str] = field(default_factory=list)
    # "stdio", or a unix socket path QEMU listens on (then QEMU also logs it to console_log,
    # by default PATH.log).
    console: str = "stdio"
    console_log: str | None = None

    def command(self) -> list[str]:
        cmd = [str(QEMU_VM), "--name", self.name, "--socket", str(self.socket),
               "--queues", str(self.queues), "--smp", str(self.smp), "--mem", self.mem,
               "--console", self.console]
        if self.ip:
            cmd += ["--ip", self.ip]
        if self.kernel:
            cmd += ["--kernel", self.kernel]
        if self.initrd:
            cmd += ["--initrd", self.initrd]
        if self.append:
            cmd += ["--append", self.append]
        if self.console_log:
            cmd += ["--console-log", self.console_log]
        if self.extra_qemu_args:
            cmd += ["--", *self.extra_qemu_args]
        return cmd


class Guest(Shell):
    def __init__(self, config: GuestConfig, out_dir: Path):
        self.config = config
        self.name = config.name
        out_dir.mkdir(parents=True, exist_ok=True)
        self.console_log_path = out_dir / f"{self.name}.console.log"
        self.qemu_log_path = out_dir / f"{self.name}.qemu.log"
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self.starts = 0
        # QEMU's own aborts at boot that wait_ready() started the guest again after.
        self.qemu_aborts: list[str] = []
        self._relaunch: Callable[[], object] | None = None
        self._sock: socket.socket | None = None
        self._writer = None
        self._generation = 0
        self._buf = ""  # console text since the last start, \r removed
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self._run_lock = threading.Lock()
        self.ready_line: str | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Starts QEMU (again, after kill(): same socket, same name, logs appended), its
        console on our pipes; QEMU dies with this process."""
        if self.alive():
            raise GuestError(f"{self.name}: already running (pid {self.pid})")
        self.config.console = "stdio"
        self._relaunch = self.start
        qemu_log = self._new_start()
        # New session: a test runner's Ctrl-C does not reach QEMU, the finalizers kill it.
        self.proc = subprocess.Popen(self.config.command(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=qemu_log,
                                     start_new_session=True, bufsize=0,
                                     preexec_fn=die_with_parent)
        qemu_log.close()
        self.pid = self.proc.pid
        assert self.proc.stdout is not None and self.proc.stdin is not None
        stdin = self.proc.stdin
        self._writer = lambda data: (stdin.write(data), stdin.flush())
        self._start_reader(self.proc.stdout.fileno(), log=True)

    def start_detached(self, console: Path, timeout: float = 60.0,
                       on_spawn: Callable[[int], None] | None = None) -> int:
        """Starts QEMU in a session of its own that outlives this process (the testbed's
        guests): its console is the unix socket `console`, which attach() connects to, and
        QEMU logs everything the console prints to the console log (OUT_DIR/NAME.console.log).
        Returns QEMU's pid."""
        if self.alive():
            raise GuestError(f"{self.name}: already running (pid {self.pid})")
        self._relaunch = lambda: self.start_detached(console, timeout, on_spawn)
        self.config.console = str(console)
        self.config.console_log = str(self.console_log_path)
        qemu_log = self._new_start()
        with signals_deferred():
            self.proc = subprocess.Popen(self.config.command(), stdin=subprocess.DEVNULL,
                                         stdout=qemu_log, stderr=qemu_log, start_new_session=True)
            if on_spawn:
                on_spawn(self.proc.pid)
        qemu_log.close()
        self.pid = self.proc.pid
        self.attach(console, self.pid, timeout)
        return self.pid

    def attach(self, console: Path, pid: int, timeout: float = 60.0) -> None:
        """Drives a guest started by start_detached (possibly by another process) through
        its console socket. What the console printed before is read from its log."""
        self.pid = pid
        deadline = time.monotonic() + timeout
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        while True:
            try:
                sock.connect(str(console))
                break
            except OSError as e:
                if not self.alive():
                    sock.close()
                    raise GuestError(self._describe_failure("QEMU exited before its console "
                                                            "socket accepted a connection")) from e
                if time.monotonic() > deadline:
                    sock.close()
                    raise GuestError(self._describe_failure(
                        f"console socket {console} not accepting after {timeout:.0f} s ({e})")) from e
                time.sleep(0.1)
        self._sock = sock
        self._writer = sock.sendall
        try:
            before = self.console_log_path.read_text(errors="replace").replace("\r", "")
        except OSError:
            before = ""
        with self._cond:
            self._buf = before
        self._start_reader(sock.fileno(), log=False)

    def _new_start(self):
        """Starts a new generation of console text and logs; returns QEMU's log, open."""
        self.starts += 1
        banner = f"\n===== {self.name} start #{self.starts} at {time.strftime('%H:%M:%S')} =====\n"
        mode = "w" if self.starts == 1 else "a"
        if self.config.console == "stdio":
            with open(self.console_log_path, mode) as f:
                f.write(banner)
        qemu_log = open(self.qemu_log_path, mode)
        qemu_log.write(banner + "command: " + shlex.join(self.config.command()) + "\n")
        qemu_log.flush()
        with self._cond:
            self._buf = ""
        self.ready_line = None
        return qemu_log

    def _start_reader(self, fd: int, log: bool) -> None:
        self._generation += 1
        self._reader = threading.Thread(target=self._read_console, args=(fd, self._generation, log),
                                        name=f"console-{self.name}", daemon=True)
        self._reader.start()

    def _read_console(self, fd: int, generation: int, log: bool) -> None:
        with open(self.console_log_path, "ab", buffering=0) if log else open(os.devnull, "wb") as out:
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                out.write(chunk)
                text = chunk.decode("utf-8", errors="replace").replace("\r", "")
                with self._cond:
                    if generation == self._generation:
                        self._buf += text
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return self.pid is not None and pid_alive(self.pid)

    def detach(self) -> None:
        """Stops driving a detached guest (closes the console connection); QEMU runs on."""
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
            self._sock = None
        if self._reader is not None:
            self._reader.join(timeout=10)

    def kill(self) -> None:
        """SIGKILLs QEMU (no shutdown: the backend sees the connection drop) and reaps it."""
        self.detach()
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)
        if self._reader is not None:
            self._reader.join(timeout=10)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass

    # --- console -----------------------------------------------------------------------------

    def console_tail(self, lines: int = 40) -> str:
        with self._cond:
            return "\n".join(self._buf.splitlines()[-lines:])

    def qemu_log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.qemu_log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _qemu_assertion(self) -> str | None:
        """QEMU's assertion message if this start of QEMU ended by aborting on one."""
        if self.proc is None or self.proc.poll() != -signal.SIGABRT:
            return None
        m = QEMU_ASSERTION_RE.search(self.qemu_log_tail())
        return m.group(0) if m else None

    def _describe_failure(self, what: str) -> str:
        state = "running" if self.alive() else f"exited with {self.proc.returncode if self.proc else None}"
        return (f"{self.name}: {what} (QEMU {state}; logs {self.console_log_path}, "
                f"{self.qemu_log_path})\n--- console tail ---\n{self.console_tail()}\n"
                f"--- qemu stderr tail ---\n{self.qemu_log_tail()}")

    def _wait_for(self, pattern: re.Pattern, start: int, timeout: float, what: str,
                  progress: Callable[[float], None] | None = None) -> re.Match:
        """Waits until pattern matches the console text from offset start; progress(seconds
        waited) is called every PROGRESS_EVERY seconds."""
        begun = time.monotonic()
        deadline = begun + timeout
        next_progress = begun + PROGRESS_EVERY
        with self._cond:
            while True:
                m = pattern.search(self._buf, start)
                if m:
                    return m
                if not self.alive():
                    # The reader may still hold the last bytes QEMU wrote before dying.
                    if self._reader is not None and self._reader.is_alive():
                        self._cond.wait(timeout=0.5)
                        m = pattern.search(self._buf, start)
                        if m:
                            return m
                    raise GuestError(self._describe_failure(f"QEMU exited while waiting for {what}"))
                now = time.monotonic()
                if progress is not None and now >= next_progress:
                    progress(now - begun)
                    next_progress = now + PROGRESS_EVERY
                remaining = deadline - now
                if remaining <= 0:
                    raise GuestError(self._describe_failure(f"timed out after {timeout:.0f} s waiting for {what}"))
                self._cond.wait(timeout=min(remaining, 1.0))

    def wait_ready(self, timeout: float = BOOT_TIMEOUT,
                   progress: Callable[[float], None] | None = None) -> str:
        """Waits for /init's readiness line; raises with the console if it reports failure.
        A boot QEMU aborted on its own assertion is started again, BOOT_RELAUNCHES times
        at most for this boot: a guest killed and started again gets its own."""
        relaunched = 0
        while True:
            try:
                m = self._wait_for(READY_RE, 0, timeout, "PRISM-GUEST-READY", progress)
                break
            except GuestError:
                assertion = self._qemu_assertion()
                if (assertion is None or self._relaunch is None
                        or relaunched >= BOOT_RELAUNCHES):
                    raise
            relaunched += 1
            self.qemu_aborts.append(assertion)
            print(f"{self.name}: QEMU aborted on its own assertion while the guest booted "
                  f"({assertion}); starting it again (logs {self.qemu_log_path})",
                  file=sys.stderr, flush=True)
            self.kill()
            self._relaunch()
        line = m.group(0).strip()
        if m.group(1) != "READY":
            raise GuestError(self._describe_failure(f"guest init failed: {line}"))
        self.ready_line = line
        return line

    def send(self, text: str) -> None:
        if not self.alive() or self._writer is None:
            raise GuestError(self._describe_failure("cannot write to the console"))
        try:
            self._writer(text.encode())
        except OSError as e:
            raise GuestError(self._describe_failure(f"cannot write to the console ({e})")) from e

    def run(self, cmd: str, timeout: float = COMMAND_TIMEOUT,
            strip_kernel_lines: bool = False) -> tuple[int, str]:
        """Runs cmd in the guest shell; returns (exit status, output).

        stdin is /dev/null so a command can never swallow the lines that follow it. On timeout
        the guest gets a Ctrl-C (the shell has job control on the console) and GuestError.
        """
        with self._run_lock:
            marker = f"{next(_marker_ids)}-{os.getpid()}-{time.monotonic_ns() % 10**9}"
            begin_re = re.compile(rf"PRISM-BEGIN-{re.escape(marker)}\n")
            end_re = re.compile(rf"PRISM-END-{re.escape(marker)}-rc=(\d+)")
            with self._cond:
                start = len(self._buf)
            self.send(f"echo PRISM-BEG''IN-{marker}; eval {shlex.quote(cmd)} </dev/null; "
                      f"echo PRISM-E''ND-{marker}-rc=$?\n")
            try:
                begin = self._wait_for(begin_re, start, timeout, f"start of `{cmd}`")
                end = self._wait_for(end_re, begin.end(), timeout, f"end of `{cmd}`")
            except GuestError:
                if self.alive():
                    self.send("\x03")
                raise
            with self._cond:
                raw = self._buf[begin.end():end.start()]
            lines = raw.split("\n")
            if strip_kernel_lines:
                lines = [ln for ln in lines if not KERNEL_LINE_RE.match(ln)]
            return int(end.group(1)), "\n".join(lines).rstrip("\n")

    def save_diagnostics(self) -> Path | None:
        """Writes the guest's kernel log and NIC counters next to its console log; best effort
        (the guest may be wedged), for post-mortems of failed tests."""
        if not self.alive():
            return None
        path = self.console_log_path.with_name(f"{self.name}.diag.txt")
        try:
            rc, out = self.run("dmesg; echo; ip -s -s link show eth0; ethtool -S eth0; ethtool -l eth0; "
                               "cat /proc/interrupts | grep -i virtio", timeout=60)
        except GuestError as e:
            out = f"(no answer: {e})"
        path.write_text(out + "\n")
        return path

    def pin_vcpus(self, cpus: list[int]) -> dict[int, int]:
        """Pins vCPU i's QEMU thread to host CPU cpus[i % len(cpus)]; returns {vCPU: host CPU}.
        The threads are QEMU's "CPU N/TCG" (or /KVM) threads, found by name in /proc."""
        if not self.alive() or self.proc is None or not cpus:
            raise GuestError(self._describe_failure("cannot pin the vCPUs of a guest that is not running"))
        deadline = time.monotonic() + 60
        while True:
            threads = vcpu_threads(Path(f"/proc/{self.proc.pid}/task"))
            if len(threads) >= self.config.smp:
                break
            if time.monotonic() > deadline:
                raise GuestError(self._describe_failure(
                    f"found {len(threads)} vCPU threads of {self.config.smp} after 60 s"))
            time.sleep(0.2)
        placed: dict[int, int] = {}
        for vcpu, tid in sorted(threads.items()):
            cpu = cpus[vcpu % len(cpus)]
            os.sched_setaffinity(tid, {cpu})
            placed[vcpu] = cpu
        return placed

    def error(self, message: str) -> Exception:
        return GuestError(message)
