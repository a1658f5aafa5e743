"""The QEMU binary: found, its version checked (vhost-user virtio-net with MSI-X needs QEMU 8
or newer under TCG), and the accelerator qemu/vm chose."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .parsers import qemu_version

MIN_MAJOR = 8
INSTALL_HINT = "run .ci/install-deps as root (it installs QEMU from bookworm-backports)"


class QemuError(Exception):
    """QEMU is unusable for the testbed; the message says what to do."""


class QemuMissing(QemuError):
    """No QEMU binary at all."""


def qemu_name() -> str:
    return os.environ.get("PRISM_QEMU", "qemu-system-x86_64")


def find_qemu(min_major: int = MIN_MAJOR) -> Path:
    """The QEMU binary, checked to be at least min_major."""
    name = qemu_name()
    path = shutil.which(name)
    if path is None:
        raise QemuMissing(f"QEMU missing: {name} not found on PATH; {INSTALL_HINT}")
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise QemuError(f"{path} --version failed ({e}); {INSTALL_HINT}") from e
    check_version(path, out, min_major)
    return Path(path)


def check_version(path: str, version_text: str, min_major: int = MIN_MAJOR) -> tuple[int, int, int]:
    version = qemu_version(version_text)
    if version is None:
        raise QemuError(f"{path} --version printed no version ({version_text.strip()[:80]!r}); "
                        f"{INSTALL_HINT}")
    if version[0] < min_major:
        raise QemuError(f"{path} is QEMU {'.'.join(map(str, version))}, older than {min_major} "
                        f"(vhost-user NICs with MSI-X crash it under TCG); {INSTALL_HINT}")
    return version


def kvm_problem() -> str | None:
    """Why /dev/kvm cannot be used (None: it can be opened; qemu/vm still probes it)."""
    kvm = Path("/dev/kvm")
    if not kvm.exists():
        return "no /dev/kvm (no hardware virtualisation here)"
    if not os.access(kvm, os.R_OK | os.W_OK):
        return "/dev/kvm is not readable and writable by this user"
    return None
