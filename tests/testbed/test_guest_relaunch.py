"""A boot that QEMU ends by aborting on one of its own assertions (a QEMU bug under TCG) is
started again once; every other failure stays a failure. Through qemu/vm with a stand-in
for the QEMU binary (PRISM_QEMU) that aborts the way QEMU 10 did in CI, so no guest boots."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pytest

from prismtb.guest import BOOT_RELAUNCHES, Guest, GuestConfig, GuestError

ASSERTION = ("qemu-system-x86_64: system/physmem.c:2678: iotlb_to_section: Assertion "
             "`section_index < d->map.sections_nb' failed.")
# The stand-in: the starts FAKE_QEMU_FAILS_AT names (counted from 0) fail (abort on the
# assertion, or exit 1 with FAKE_QEMU_HOW=exit); every other prints the readiness line and waits.
FAKE_QEMU = """#!/bin/sh
case "$1" in --version) echo "QEMU emulator version 10.0.0"; exit 0;; esac
n=$(cat "$FAKE_QEMU_STATE" 2>/dev/null || echo 0); echo $((n + 1)) > "$FAKE_QEMU_STATE"
if case " $FAKE_QEMU_FAILS_AT " in *" $n "*) true;; *) false;; esac; then
  if [ "$FAKE_QEMU_HOW" = exit ]; then echo "qemu-system-x86_64: some error" >&2; exit 1; fi
  echo "ASSERTION" >&2
  kill -ABRT $$
fi
echo "PRISM-GUEST-READY vm1 stand-in"
exec sleep 120
""".replace("ASSERTION", ASSERTION.replace("`", "\\`"))


@pytest.fixture
def guest_of(tmp_path, monkeypatch):
    fake = tmp_path / "qemu-fake"
    fake.write_text(FAKE_QEMU)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    for f in ("bzImage", "initrd"):
        (tmp_path / f).write_bytes(b"\0")
    # qemu/vm wants the backend's socket to exist before it starts QEMU.
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "vm1.sock"))
    listener.listen(1)
    monkeypatch.setenv("PRISM_QEMU", str(fake))
    monkeypatch.setenv("PRISM_ACCEL", "tcg")
    monkeypatch.setenv("FAKE_QEMU_STATE", str(tmp_path / "starts"))
    guests = []

    def make(fails: int = 0, how: str = "abort", fails_at: tuple[int, ...] = ()) -> Guest:
        fails_at = fails_at or tuple(range(fails))
        monkeypatch.setenv("FAKE_QEMU_FAILS_AT", " ".join(map(str, fails_at)))
        monkeypatch.setenv("FAKE_QEMU_HOW", how)
        g = Guest(GuestConfig("vm1", tmp_path / "vm1.sock", kernel=str(tmp_path / "bzImage"),
                              initrd=str(tmp_path / "initrd")), tmp_path / "out")
        guests.append(g)
        return g

    yield make
    for g in guests:
        g.kill()
    listener.close()


def starts(guest: Guest) -> int:
    return Path(guest.qemu_log_path).read_text().count("===== vm1 start #")


def test_a_boot_qemu_aborted_on_its_own_assertion_is_started_again_and_says_so(guest_of,
                                                                             capsys):
    g = guest_of(fails=1)
    g.start()
    assert g.wait_ready(timeout=60) == "PRISM-GUEST-READY vm1 stand-in"
    assert g.qemu_aborts == [ASSERTION.rstrip(".")]
    assert starts(g) == 2 and g.alive()
    assert "QEMU aborted on its own assertion while the guest booted" in capsys.readouterr().err


def test_qemu_aborting_again_after_the_relaunch_is_a_failure(guest_of):
    g = guest_of(fails=BOOT_RELAUNCHES + 1)
    g.start()
    with pytest.raises(GuestError, match="QEMU exited while waiting for PRISM-GUEST-READY"):
        g.wait_ready(timeout=60)
    assert starts(g) == BOOT_RELAUNCHES + 1


def test_qemu_exiting_without_an_assertion_is_a_failure_at_once(guest_of):
    g = guest_of(fails=1, how="exit")
    g.start()
    with pytest.raises(GuestError, match="QEMU exited with 1"):
        g.wait_ready(timeout=60)
    assert starts(g) == 1 and g.qemu_aborts == []


def test_every_boot_of_a_guest_gets_its_own_relaunch(guest_of):
    # Boot 1 aborts once and is started again; boot 2 (after kill) aborts once too and
    # must get the same second chance, not inherit boot 1's.
    g = guest_of(fails_at=(0, 2))
    g.start()
    g.wait_ready(timeout=60)
    g.kill()
    g.start()
    assert g.wait_ready(timeout=60) == "PRISM-GUEST-READY vm1 stand-in"
    assert starts(g) == 4 and len(g.qemu_aborts) == 2 and g.alive()
