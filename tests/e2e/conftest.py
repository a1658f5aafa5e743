"""Fixtures for the end-to-end tests: a vhost-user backend (prism-vnic) and QEMU guests on it.

Run: tests/run -k e2e, or /usr/bin/python3 -m pytest tests/e2e -v   (as root: QEMU, memfd,
/var/cache). Against a stand-in backend: PRISM_SWITCH_CMD=... PRISM_SWITCH_EXIT_OK=0,-15
(see prismtb.switch). The only reason these tests skip is a missing QEMU; a missing
prism-vnic is a failure. Console and backend logs: tests/e2e/out/<test module>/.
(report, out_dir and qemu_binary come from tests/conftest.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from prismtb.guest import Guest, GuestConfig
from prismtb.image import ImageError, build_initramfs
from prismtb.switch import Switch, SwitchError


@pytest.fixture(scope="session")
def initramfs(qemu_binary) -> str:
    """The guest image for the default kernel, built once (cached by content across runs)."""
    try:
        return str(build_initramfs(no_modules=False))
    except ImageError as e:
        pytest.fail(str(e), pytrace=False)


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
