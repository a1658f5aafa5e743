"""Guest kernels (guest-kernel/build, cached) and single-guest scenario boots: a kernel plus
an initramfs under QEMU with no vhost-user NIC, running one scenario of a test script that
reports PRISM-CHECK lines on the console (tests/kernel).

Environment: PRISM_QEMU (QEMU binary), PRISM_BOOT_TIMEOUT (seconds per scenario, default
900), PRISM_KERNEL_DEBUG=1 (boot arguments for the KASAN + kmemleak flavour).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import REPO
from .parsers import protocol_lines

BUILD = REPO / "guest-kernel" / "build"
BOOT_TIMEOUT = float(os.environ.get("PRISM_BOOT_TIMEOUT", "900"))
CHECK_RE = re.compile(r"^PRISM-CHECK (\S+) (ok|fail) ?(.*)$")
FLAVOURS = ("vanilla", "prism")


class KernelError(Exception):
    """A kernel could not be built or found."""


def build_command(flavour: str, debug: bool = False, source: Path | None = None,
                  selftests: bool = False) -> list[str]:
    """guest-kernel/build's command line for one flavour (from a kernel source directory);
    selftests: with config/selftests.config (what the upstream net selftests need)."""
    if flavour not in FLAVOURS:
        raise KernelError(f"kernel flavour must be one of {', '.join(FLAVOURS)}, not {flavour!r}")
    cmd = [str(BUILD), "--flavour", flavour]
    if debug:
        cmd.append("--debug")
    if selftests:
        cmd.append("--selftests")
    if source is not None:
        cmd += ["--source", str(source)]
    return cmd


def parse_build_output(stdout: str, flavour: str, debug: bool = False,
                       selftests: bool = False) -> Path | None:
    """The bzImage path from guest-kernel/build's `NAME=PATH` lines."""
    name = flavour + ("-debug" if debug else "") + ("-selftests" if selftests else "")
    for line in stdout.splitlines():
        if line.startswith(name + "="):
            return Path(line.split("=", 1)[1])
    return None


def build_kernel(flavour: str, debug: bool = False, source: Path | None = None,
                 progress: bool = True, selftests: bool = False) -> Path:
    """Runs guest-kernel/build (cached: a second when warm) and returns the bzImage path.
    Its progress goes to our stderr (shown by pytest -s) unless progress is False."""
    cmd = build_command(flavour, debug, source, selftests)
    res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False,
                         stderr=None if progress else subprocess.PIPE)
    if res.returncode != 0:
        tail = "" if progress else "\n" + "\n".join((res.stderr or "").splitlines()[-20:])
        raise KernelError(f"{' '.join(cmd)} failed with status {res.returncode}{tail}")
    path = parse_build_output(res.stdout, flavour, debug, selftests)
    if path is None:
        raise KernelError(f"guest-kernel/build printed no {flavour}= line: {res.stdout!r}")
    return path


def resolve_kernel(spec: str, debug: bool = False, source: Path | None = None) -> Path:
    """A kernel named in a topology or on a command line: a flavour (built if missing, from
    Debian's source or from the tree `source`) or the path of a bzImage."""
    if spec in FLAVOURS:
        return build_kernel(spec, debug=debug, source=source)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise KernelError(f"kernel {spec!r}: neither {' nor '.join(FLAVOURS)} nor a bzImage file")
    return path


@dataclass
class GuestRun:
    """What one scenario printed: its checks by name, info lines, and the whole console."""
    console: str
    checks: dict = field(default_factory=dict)
    info: list = field(default_factory=list)
    ended: bool = False

    def failures(self) -> dict:
        return {k: v for k, v in self.checks.items() if v[0] != "ok"}

    def assert_all_ok(self, required=()) -> None:
        assert self.ended, "guest did not reach PRISM-TEST-END; console tail:\n" + self.console[-4000:]
        missing = [name for name in required if name not in self.checks]
        assert not missing, f"checks not reported: {missing}"
        assert not self.failures(), "failed checks:\n" + "\n".join(
            f"  {k}: {v[1]}" for k, v in self.failures().items())

    def parse(self) -> "GuestRun":
        for line in protocol_lines(self.console):
            m = CHECK_RE.match(line)
            if m:
                self.checks[m.group(1)] = (m.group(2), m.group(3))
            elif line.startswith("PRISM-INFO "):
                self.info.append(line[len("PRISM-INFO "):])
            elif line == "PRISM-TEST-END":
                self.ended = True
        return self


def scenario_command(kernel: Path, initrd: Path, test: str, mode: int = 1,
                     netdev_user: bool = False, smp: int = 2, extra_append: str = "",
                     debug: bool = False, script: str = "/prism-test/prism-test") -> list[str]:
    """QEMU's command line for one scenario: TCG, no reboot, the script as init's argument."""
    # no_timer_check: a TCG guest on a loaded host can fail the boot's IO-APIC timer check
    # ("IO-APIC + timer doesn't work!") and panic.
    append = (f"console=ttyS0 panic=-1 oops=panic no_timer_check rdinit=/bin/bash "
              f"prism.test={test} prism.mode={mode}")
    if debug:
        append += " prism.kmemleak=1 kmemleak=on"
    if extra_append:
        append += " " + extra_append
    append += f" -- {script}"
    cmd = [os.environ.get("PRISM_QEMU", "qemu-system-x86_64"), "-accel", "tcg",
           "-m", "1G", "-smp", str(smp), "-display", "none", "-monitor", "none",
           "-serial", "stdio", "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd),
           "-append", append]
    if netdev_user:
        cmd += ["-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"]
    else:
        cmd += ["-nic", "none"]
    return cmd


def boot(kernel: Path, initrd: Path, name: str, test: str, mode: int = 1,
         netdev_user: bool = False, smp: int = 2, extra_append: str = "",
         log_dir: Path | None = None, debug: bool | None = None,
         timeout: float | None = None, script: str = "/prism-test/prism-test") -> GuestRun:
    """Boots kernel + initrd under QEMU (TCG), runs scenario `test`, returns its report.

    The guest prints PRISM-TEST-END and reboots; QEMU has -no-reboot, so it exits. We wait
    for either (or the timeout), never for a fixed time. The console goes to
    log_dir/NAME.log (default tests/kernel/out, or PRISM_KERNEL_LOGS).
    """
    if debug is None:
        debug = os.environ.get("PRISM_KERNEL_DEBUG") == "1"
    if log_dir is None:
        log_dir = Path(os.environ.get("PRISM_KERNEL_LOGS", REPO / "tests" / "kernel" / "out"))
    timeout = BOOT_TIMEOUT if timeout is None else timeout
    cmd = scenario_command(kernel, initrd, test, mode, netdev_user, smp, extra_append, debug,
                           script)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    run = GuestRun(console="")
    with open(log_path, "w+b") as log, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=err)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                log.seek(0)
                if b"PRISM-TEST-END" in log.read():
                    # Give the reboot a moment; kill below if it hangs.
                    try:
                        proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        pass
                    break
                time.sleep(1)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log.seek(0)
        run.console = log.read().decode(errors="replace")
        err.seek(0)
        qemu_err = err.read().decode(errors="replace")
    if qemu_err.strip():
        run.console += "\n[qemu stderr]\n" + qemu_err
    return run.parse()

