"""What every pytest suite of the repository shares (tests/run runs them in one session):
the lower CPU priority for everything a session starts, the measured figures shown in the
terminal summary, a per-module output directory and the QEMU binary. The harness itself is
the prismtb package (qemu/prismtb), importable through tests/pytest.ini's pythonpath.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from prismtb import qemu
from prismtb.session import Figures, lower_priority

_figures = Figures("figures")


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
    """tests/<suite>/out/<module>/, emptied first so every file in it is from this run."""
    module = Path(request.module.__file__)
    d = module.parent / "out" / module.stem
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


@pytest.fixture(scope="session")
def qemu_binary() -> str:
    """The QEMU binary (PRISM_QEMU or qemu-system-x86_64); the suite skips without it and
    fails on a QEMU older than 8, saying what to do."""
    try:
        return str(qemu.find_qemu())
    except qemu.QemuMissing as e:
        pytest.skip(str(e))
    except qemu.QemuError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
def path_without(tmp_path):
    """A PATH of symlinks to everything the host's usual directories hold, but `tool`:
    how a harness behaves on a machine that lacks it."""
    def make(tool: str) -> str:
        bin_dir = tmp_path / f"path-without-{tool}"
        bin_dir.mkdir()
        for d in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
            if not Path(d).is_dir():
                continue
            for p in sorted(Path(d).iterdir()):
                target = bin_dir / p.name
                if p.name != tool and not target.exists() and not target.is_symlink():
                    target.symlink_to(p)
        return str(bin_dir)
    return make
