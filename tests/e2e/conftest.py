"""Fixtures for the end-to-end tests: a vhost-user backend (prism-vnic) and QEMU guests on it.

Run: python3 -m pytest tests/e2e -v      (as root: QEMU, memfd, /var/cache)
Against a stand-in backend: PRISM_SWITCH_CMD=... PRISM_SWITCH_EXIT_OK=0,-15 (see switch.py).
The only reason these tests skip is a missing QEMU; a missing prism-vnic is a failure.
Console and backend logs: tests/e2e/out/<test module>/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from switch import Switch, SwitchError
from vm import REPO, Guest, GuestConfig
from session import Figures, lower_priority

OUT_ROOT = Path(__file__).resolve().parent / "out"

_figures = Figures("e2e figures")


def pytest_configure(config):
    lower_priority()


def pytest_terminal_summary(terminalreporter):
    _figures.summarize(terminalreporter)


@pytest.fixture(scope="session")
def report():
    """report(line): records a figure for the terminal summary (and prints it for -s)."""
    return _figures.add


@pytest.fixture(scope="session")
def qemu_binary() -> str:
    name = os.environ.get("PRISM_QEMU", "qemu-system-x86_64")
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"QEMU missing: {name} not found (apt-get install qemu-system-x86, "
                    "see .ci/install-deps)")
    return path


@pytest.fixture(scope="session")
def initramfs(qemu_binary) -> str:
    """The guest image for the default kernel, built once (cached by content across runs)."""
    res = subprocess.run([str(REPO / "images" / "build-initramfs")], capture_output=True,
                         text=True, timeout=900)
    if res.returncode != 0:
        pytest.fail(f"images/build-initramfs failed ({res.returncode}):\n{res.stderr}")
    return res.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def out_dir(request) -> Path:
    """tests/e2e/out/<module>/, emptied first so every file in it is from this run."""
    d = OUT_ROOT / Path(request.module.__file__).stem
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


@pytest.fixture(scope="module")
def vswitch(qemu_binary, out_dir):
    """The backend with ports vm1 and vm2, 4 queue pairs; stopped with SIGTERM at the end,
    which must make it exit cleanly and remove its sockets."""
    try:
        switch = Switch(out_dir)
    except SwitchError as e:
        pytest.fail(f"backend not usable: {e}", pytrace=False)
    try:
        switch.start()
    except SwitchError as e:
        switch.kill()
        pytest.fail(f"backend did not start: {e}", pytrace=False)
    try:
        yield switch
    finally:
        problems = switch.stop()
        if problems:
            pytest.fail(f"backend {switch.argv[0]} broke its stop contract: {'; '.join(problems)}; "
                        f"log {switch.log_path}:\n{switch.log_tail()}", pytrace=False)


class Guests:
    """Starts guests and guarantees they are all SIGKILLed at teardown, pass or fail."""

    def __init__(self, out_dir: Path, initrd: str):
        self.out_dir = out_dir
        self.initrd = initrd
        self.started: list[Guest] = []

    def start(self, name: str, socket: Path, **kwargs) -> Guest:
        kwargs.setdefault("initrd", self.initrd)
        guest = Guest(GuestConfig(name=name, socket=socket, **kwargs), self.out_dir)
        self.started.append(guest)
        guest.start()
        return guest

    def kill_all(self) -> None:
        for guest in self.started:
            try:
                guest.save_diagnostics()
            except Exception as e:  # diagnostics must never keep a guest alive
                print(f"diagnostics of {guest.name}: {e!r}")
        for guest in self.started:
            try:
                guest.kill()
            except Exception as e:  # keep killing the others
                print(f"killing {guest.name}: {e!r}")


@pytest.fixture(scope="module")
def guests(qemu_binary, initramfs, out_dir):
    g = Guests(out_dir, initramfs)
    try:
        yield g
    finally:
        g.kill_all()
