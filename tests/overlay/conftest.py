"""Fixtures of the two-guest overlay tests: prism-vnic with two PRISM guests and the container
overlay between them (overlay_env.Overlay), booted once per module.

Run: /usr/bin/python3 -m pytest tests/overlay -v -rs      (as root: QEMU, memfd, /var/cache)
Logs (consoles, QEMU stderr, guest diagnostics, prism-vnic's log): tests/overlay/out/<module>/.
Environment: PRISM_KERNEL (bzImage instead of guest-kernel/build --flavour prism),
PRISM_OVERLAY_BOOT_TIMEOUT (seconds per boot, default 600), PRISM_E2E_NICE (default 10).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from overlay_env import Overlay, OverlayError, SwitchError, GuestError, build_initramfs, build_kernel
from session import Figures, lower_priority  # tests/e2e, on the path via overlay_env

OUT_ROOT = Path(__file__).resolve().parent / "out"
BOOT_TIMEOUT = float(os.environ.get("PRISM_OVERLAY_BOOT_TIMEOUT", "600"))

_figures = Figures("overlay figures")


def pytest_configure(config):
    lower_priority()


def pytest_terminal_summary(terminalreporter):
    _figures.summarize(terminalreporter)


@pytest.fixture(scope="session")
def report():
    """report(line): records a figure for the terminal summary (and prints it for -s)."""
    return _figures.add


@pytest.fixture(scope="module")
def out_dir(request) -> Path:
    """tests/overlay/out/<module>/, emptied first so every file in it is from this run."""
    d = OUT_ROOT / Path(request.module.__file__).stem
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


@pytest.fixture(scope="module")
def overlay(out_dir):
    """prism-vnic (vm1, vm2; 4 queue pairs) and two guests on the PRISM kernel with the
    container overlay up; torn down at the end of the module, pass or fail."""
    qemu = os.environ.get("PRISM_QEMU", "qemu-system-x86_64")
    if shutil.which(qemu) is None:
        pytest.skip(f"QEMU missing: {qemu} not found (see .ci/install-deps)")
    override = os.environ.get("PRISM_KERNEL")
    kernel = Path(override) if override else build_kernel("prism")
    try:
        initrd = build_initramfs()
    except OverlayError as e:
        pytest.fail(str(e), pytrace=False)
    ov = Overlay(out_dir, kernel, initrd, boot_timeout=BOOT_TIMEOUT)
    problems: list[str] = []
    try:
        try:
            ov.start()
        except (OverlayError, SwitchError, GuestError) as e:
            pytest.fail(f"overlay did not come up: {e}", pytrace=False)
        yield ov
    finally:
        problems = ov.stop()
    if problems:
        pytest.fail(f"prism-vnic broke its stop contract: {'; '.join(problems)}", pytrace=False)
