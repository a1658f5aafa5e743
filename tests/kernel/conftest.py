"""Fixtures of the PRISM guest-kernel tests: the kernels (guest-kernel/build, cached), the
test initramfs (images/build-initramfs plus tests/kernel/guest/), booted by
prismtb.kernel.boot (import it from there: `from prismtb.kernel import boot`).

Environment:
  PRISM_KERNEL          bzImage to test instead of building the prism flavour
  PRISM_VANILLA_KERNEL  bzImage to use instead of building the vanilla flavour
  PRISM_KERNEL_DEBUG=1  build and boot the KASAN + kmemleak flavour (guest-kernel/build --debug)
  PRISM_BOOT_TIMEOUT    seconds a guest may take for one scenario (default 900; TCG is slow,
                        KASAN slower)
  PRISM_KERNEL_LOGS     directory for console logs (default tests/kernel/out)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from prismtb import kernel
from prismtb.image import ImageError, kernel_test_image

DEBUG = os.environ.get("PRISM_KERNEL_DEBUG") == "1"


def _kernel(flavour: str, override: str, debug: bool) -> Path:
    path = os.environ.get(override)
    if path:
        return Path(path)
    try:
        return kernel.build_kernel(flavour, debug=debug)
    except kernel.KernelError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def prism_kernel() -> Path:
    return _kernel("prism", "PRISM_KERNEL", DEBUG)


@pytest.fixture(scope="session")
def vanilla_kernel() -> Path:
    return _kernel("vanilla", "PRISM_VANILLA_KERNEL", False)


@pytest.fixture(scope="session")
def test_initramfs(tmp_path_factory) -> Path:
    try:
        return kernel_test_image(tmp_path_factory.mktemp("guest-bin"))
    except ImageError as e:
        pytest.fail(str(e), pytrace=False)
