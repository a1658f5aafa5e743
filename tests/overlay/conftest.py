"""Fixtures of the two-guest overlay tests: prism-vnic with two PRISM guests and the container
overlay between them (prismtb.overlay.Overlay), booted once per module.

Run: tests/run, or /usr/bin/python3 -m pytest tests/overlay -v -rs   (as root: QEMU, memfd,
/var/cache). Logs (consoles, QEMU stderr, guest diagnostics, prism-vnic's log):
tests/overlay/out/<module>/. Environment: PRISM_KERNEL (bzImage instead of guest-kernel/build
--flavour prism), PRISM_KERNEL_DEBUG=1 (the KASAN + kmemleak + lockdep flavour,
guest-kernel/build --flavour prism --debug; each module ends with a kmemleak scan of both
guests), PRISM_OVERLAY_BOOT_TIMEOUT (seconds per boot, default 600; PRISM_BOOT_TIMEOUT
when it is not set), PRISM_E2E_NICE (default 10). (report and out_dir come from
tests/conftest.py.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from prismtb.overlay import GuestError, Overlay, OverlayError, SwitchError, build_initramfs, build_kernel

BOOT_TIMEOUT = float(os.environ.get("PRISM_OVERLAY_BOOT_TIMEOUT",
                                    os.environ.get("PRISM_BOOT_TIMEOUT", "600")))
DEBUG = os.environ.get("PRISM_KERNEL_DEBUG") == "1"


@pytest.fixture(scope="module")
def overlay(qemu_binary, out_dir, request):
    """prism-vnic (vm1, vm2; 4 queue pairs) and two guests on the PRISM kernel with the
    container overlay up; torn down at the end of the module, pass or fail. A module's
    OVERLAY_SMP sets the guests' vCPUs (default 2)."""
    override = os.environ.get("PRISM_KERNEL")
    try:
        kernel = Path(override) if override else build_kernel("prism", debug=DEBUG)
        initrd = build_initramfs()
    except OverlayError as e:
        pytest.fail(str(e), pytrace=False)
    ov = Overlay(out_dir, kernel, initrd, smp=getattr(request.module, "OVERLAY_SMP", 2),
                 boot_timeout=BOOT_TIMEOUT)
    problems: list[str] = []
    try:
        try:
            ov.start()
        except (OverlayError, SwitchError, GuestError) as e:
            pytest.fail(f"overlay did not come up: {e}", pytrace=False)
        yield ov
        if DEBUG:
            leaks = {n: ov.kmemleak_report(n) for n in (1, 2)}
    finally:
        problems = ov.stop()
    if problems:
        pytest.fail(f"prism-vnic broke its stop contract: {'; '.join(problems)}", pytrace=False)
    if DEBUG:
        for n, text in leaks.items():
            (out_dir / f"vm{n}.kmemleak.txt").write_text(text)
        leaky = {n: count for n, text in leaks.items()
                 if (count := text.count("unreferenced object"))}
        if leaky:
            pytest.fail(f"kmemleak: unreferenced objects per guest {leaky} (see {out_dir})",
                        pytrace=False)
