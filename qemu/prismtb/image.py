"""Guest images: images/build-initramfs (cached by content under /var/cache/prism-vnic/images)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from . import REPO

BUILD_INITRAMFS = REPO / "images" / "build-initramfs"
KERNEL_TEST_DIR = REPO / "tests" / "kernel" / "guest"
BUILD_TIMEOUT = 1800.0


class ImageError(Exception):
    """An image could not be built; the message has the builder's error output."""


def initramfs_command(no_modules: bool = True, extra_bins: list[str] | None = None,
                      extra_files: list[str] | None = None, modules_from: Path | None = None,
                      workloads: bool = False) -> list[str]:
    """images/build-initramfs's command line. modules_from: a Debian kernel's module tree
    (excludes no_modules); workloads: the paper's application tools too (memcached, nginx,
    wrk, ...)."""
    cmd = [str(BUILD_INITRAMFS)]
    if modules_from is not None:
        cmd += ["--kernel-modules-from", str(modules_from)]
    elif no_modules:
        cmd.append("--no-modules")
    if workloads:
        cmd.append("--workloads")
    for b in extra_bins or []:
        cmd += ["--extra-bin", b]
    for f in extra_files or []:
        cmd += ["--extra-file", f]
    return cmd


def build_initramfs(no_modules: bool = True, extra_bins: list[str] | None = None,
                    extra_files: list[str] | None = None, modules_from: Path | None = None,
                    workloads: bool = False, progress: bool = False) -> Path:
    """Builds (or finds cached) an initramfs and returns its path. progress: the builder's
    log lines go to our stderr instead of into the error message."""
    cmd = initramfs_command(no_modules, extra_bins, extra_files, modules_from, workloads)
    res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=BUILD_TIMEOUT,
                         stderr=None if progress else subprocess.PIPE)
    if res.returncode != 0:
        raise ImageError(f"images/build-initramfs failed ({res.returncode}):\n{res.stderr or ''}")
    lines = res.stdout.strip().splitlines()
    if not lines:
        raise ImageError("images/build-initramfs printed no image path")
    return Path(lines[-1])


def modules_for(kernel: Path) -> Path | None:
    """The module tree a Debian kernel (/boot/vmlinuz-VERSION) needs in its image; None for
    our kernels, which have everything built in."""
    version = kernel.name.removeprefix("vmlinuz-")
    if version != kernel.name and Path("/lib/modules", version).is_dir():
        return Path("/lib/modules", version)
    return None


def workload_image(kernel: Path, progress: bool = False) -> Path:
    """The guest image with the paper's workloads (sockperf, iperf3, memcached and
    libmemcached-tools, nginx, wrk) for kernel, with its modules when it needs them (a Debian
    kernel)."""
    modules = modules_for(kernel)
    return build_initramfs(no_modules=modules is None, modules_from=modules, workloads=True,
                           progress=progress)


def overlay_image(progress: bool = False) -> Path:
    """The image of the overlay guests: no modules (our kernels have everything built in),
    sockperf; iperf3, ethtool and iproute2 are in every image."""
    sockperf = shutil.which("sockperf")
    if sockperf is None:
        raise ImageError("sockperf not found on the host (apt-get install sockperf)")
    return build_initramfs(extra_bins=[sockperf], progress=progress)


def kernel_test_image(bindir: Path, extra_bins: list[str] | None = None) -> Path:
    """The image of the single-guest kernel scenarios: tests/kernel/guest/prism-test and the
    packet injector (compiled static into bindir), plus extra_bins."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise ImageError("gcc is needed to build the packet injector (tests/kernel/guest/prism-inject.c)")
    bindir.mkdir(parents=True, exist_ok=True)
    inject = bindir / "prism-inject"
    res = subprocess.run([gcc, "-static", "-O2", "-Wall", "-o", str(inject),
                          str(KERNEL_TEST_DIR / "prism-inject.c")], capture_output=True, text=True)
    if res.returncode != 0:
        raise ImageError(f"gcc prism-inject.c failed ({res.returncode}):\n{res.stderr}")
    return build_initramfs(extra_bins=[str(inject), *(extra_bins or [])],
                           extra_files=[f"{KERNEL_TEST_DIR / 'prism-test'}:/prism-test/prism-test"])
