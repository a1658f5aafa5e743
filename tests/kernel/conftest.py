"""Fixtures of the PRISM guest-kernel tests: the kernels (guest-kernel/build, cached), the
test initramfs (images/build-initramfs plus tests/kernel/guest/), and a QEMU boot helper.

Environment:
  PRISM_KERNEL          bzImage to test instead of building the prism flavour
  PRISM_VANILLA_KERNEL  bzImage to use instead of building the vanilla flavour
  PRISM_KERNEL_DEBUG=1  build and boot the KASAN + kmemleak flavour (guest-kernel/build --debug)
  PRISM_BOOT_TIMEOUT    seconds a guest may take for one scenario (default 900; TCG is slow,
                        KASAN slower)
  PRISM_KERNEL_LOGS     directory for console logs (default tests/kernel/out)
"""

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[2]
GUEST_DIR = Path(__file__).resolve().parent / "guest"
BOOT_TIMEOUT = float(os.environ.get("PRISM_BOOT_TIMEOUT", "900"))
DEBUG = os.environ.get("PRISM_KERNEL_DEBUG") == "1"
LOG_DIR = Path(os.environ.get("PRISM_KERNEL_LOGS", Path(__file__).resolve().parent / "out"))

CHECK_RE = re.compile(r"^PRISM-CHECK (\S+) (ok|fail) ?(.*)$")
# A kernel message on the console: "[   34.354714] text" up to its newline.
KERNEL_MESSAGE_RE = re.compile(r"\[\s*\d+\.\d+\] [^\n]*\n")


def protocol_lines(console):
    """The console's lines with kernel messages taken out first. The kernel writes to the
    same serial console as the test script, asynchronously (a network namespace is torn
    down by a workqueue after the script has moved on), and a message can land in the
    middle of a line the script is writing: "PRISM-CHECK dmes[  34.35] device vxlan0 left
    promiscuous mode\ng_clean ok". Taken out, the script's line is whole again."""
    return [line.strip("\r") for line in KERNEL_MESSAGE_RE.sub("", console).splitlines()]


def build_kernel(flavour: str, debug: bool = False) -> Path:
    """Runs guest-kernel/build (cached: seconds when warm) and returns the bzImage path."""
    cmd = [str(TOP / "guest-kernel" / "build"), "--flavour", flavour]
    if debug:
        cmd.append("--debug")
    # Progress goes to stderr (shown with pytest -s); the paths are the last stdout lines.
    res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if res.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed with status {res.returncode}")
    name = f"{flavour}-debug" if debug else flavour
    for line in res.stdout.splitlines():
        if line.startswith(name + "="):
            return Path(line.split("=", 1)[1])
    pytest.fail(f"guest-kernel/build printed no {name}= line: {res.stdout!r}")


@pytest.fixture(scope="session")
def prism_kernel() -> Path:
    override = os.environ.get("PRISM_KERNEL")
    if override:
        return Path(override)
    return build_kernel("prism", debug=DEBUG)


@pytest.fixture(scope="session")
def vanilla_kernel() -> Path:
    override = os.environ.get("PRISM_VANILLA_KERNEL")
    if override:
        return Path(override)
    return build_kernel("vanilla", debug=False)


@pytest.fixture(scope="session")
def test_initramfs(tmp_path_factory) -> Path:
    builder = TOP / "images" / "build-initramfs"
    if not builder.exists():
        pytest.skip("images/build-initramfs not available")
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is needed to build the packet injector (tests/kernel/guest/prism-inject.c)")
    bindir = tmp_path_factory.mktemp("guest-bin")
    inject = bindir / "prism-inject"
    subprocess.run([gcc, "-static", "-O2", "-Wall", "-o", str(inject),
                    str(GUEST_DIR / "prism-inject.c")], check=True)
    res = subprocess.run(
        [str(builder), "--no-modules", "--extra-bin", str(inject),
         "--extra-file", f"{GUEST_DIR / 'prism-test'}:/prism-test/prism-test"],
        stdout=subprocess.PIPE, text=True, check=True)
    return Path(res.stdout.strip().splitlines()[-1])


@dataclass
class GuestRun:
    """What one scenario printed: its checks by name, info lines, and the whole console."""
    console: str
    checks: dict = field(default_factory=dict)
    info: list = field(default_factory=list)
    ended: bool = False

    def failures(self):
        return {k: v for k, v in self.checks.items() if v[0] != "ok"}

    def assert_all_ok(self, required=()):
        assert self.ended, "guest did not reach PRISM-TEST-END; console tail:\n" + self.console[-4000:]
        missing = [name for name in required if name not in self.checks]
        assert not missing, f"checks not reported: {missing}"
        assert not self.failures(), "failed checks:\n" + "\n".join(
            f"  {k}: {v[1]}" for k, v in self.failures().items())


def boot(kernel: Path, initrd: Path, name: str, test: str, mode: int = 1,
         netdev_user: bool = False, smp: int = 2, extra_append: str = "") -> GuestRun:
    """Boots kernel + initrd under QEMU (TCG), runs scenario `test`, returns its report.

    The guest prints PRISM-TEST-END and reboots; QEMU has -no-reboot, so it exits. We wait
    for either (or the timeout), never for a fixed time.
    """
    append = (f"console=ttyS0 panic=-1 oops=panic rdinit=/bin/bash prism.test={test} "
              f"prism.mode={mode}")
    if DEBUG:
        append += " prism.kmemleak=1 kmemleak=on"
    if extra_append:
        append += " " + extra_append
    append += " -- /prism-test/prism-test"
    cmd = [os.environ.get("PRISM_QEMU", "qemu-system-x86_64"), "-accel", "tcg",
           "-m", "1G", "-smp", str(smp), "-display", "none", "-monitor", "none",
           "-serial", "stdio", "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd),
           "-append", append]
    if netdev_user:
        cmd += ["-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"]
    else:
        cmd += ["-nic", "none"]

    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{name}.log"
    run = GuestRun(console="")
    with open(log_path, "w+b") as log, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=err)
        deadline = time.monotonic() + BOOT_TIMEOUT
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
    for line in protocol_lines(run.console):
        m = CHECK_RE.match(line)
        if m:
            run.checks[m.group(1)] = (m.group(2), m.group(3))
        elif line.startswith("PRISM-INFO "):
            run.info.append(line[len("PRISM-INFO "):])
        elif line == "PRISM-TEST-END":
            run.ended = True
    return run
