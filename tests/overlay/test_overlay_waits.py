"""The kernel's count of the normal packets a priority packet waits for (net.core.
prism_wait_stats, the evaluation's host-speed-independent metric), across two guests on
prism-vnic with one vCPU each, as the evaluation's server.

prism-vnic steers the ping-pong (inner UDP port 11111) to rx-0, flagged prism_priority, so
the receiving guest marks it by queue; two bulk TCP flows load vm2 meanwhile. With the knob
at 1, every mode counts: each marked request that reaches the container's socket adds one
to prio_waits and the normal packet passes its CPU made since the request left the driver
to prio_waited, mode 0 included (where the mark changes no path). With the knob at 0 (the
default), mode 0 classifies nothing and nothing is counted.
"""

from __future__ import annotations

import pytest

from prismtb.overlay import CONTAINER, KNOBS, RX0_FLAG, Overlay

OVERLAY_SMP = 1
PRIO_PORT, BULK_PORT = 11111, 5301
WAITS = f"{KNOBS}/prism_wait_stats"
SECS, MPS = 4, 200
COUNTED = ("prio_waits", "prio_waited", "prio_unmatched", "marked_by_queue")
# The requests a run must count at least: sockperf sends SECS * MPS, a slow TCG guest under
# bulk may answer fewer, and a run with a handful would show nothing.
MIN_WAITS = 50
# Marked packets that reach a socket with no arrival on record: none expected on one vCPU
# with one request in flight; the margin is for the unforeseen.
UNMATCHED_SHARE = 0.02


@pytest.fixture(scope="module")
def ov(overlay: Overlay) -> Overlay:
    overlay.start_servers(2, [BULK_PORT], sockperf_port=PRIO_PORT)
    overlay.rule("add", "vm2", "loc", "1", "inner", "proto", "udp", "dst-port", str(PRIO_PORT),
                 "action", "queue", "0", "class", "high")
    overlay.both(f"echo 1 > {RX0_FLAG}")
    # ARP, FDB and sockperf's first exchanges before anything is counted.
    overlay.c(1, f"sockperf ping-pong -i {CONTAINER[2]} -p {PRIO_PORT} -t 2 --mps 100",
              timeout=300)
    return overlay


def set_waits(ov: Overlay, on: bool) -> None:
    value = int(on)
    ov.both(f"echo {value} > {WAITS} && [ \"$(cat {WAITS})\" = {value} ]")


def counted_run(ov: Overlay, mode: int, waits: bool) -> dict[str, int]:
    """vm2's counter increases over a ping-pong under bulk in `mode`, the knob at `waits`."""
    ov.set_mode(mode)
    set_waits(ov, waits)
    try:
        _, deltas = ov.counter_deltas(
            lambda: ov.pingpong_under_bulk(PRIO_PORT, BULK_PORT, SECS, MPS), COUNTED)
    finally:
        set_waits(ov, False)
        ov.set_mode(0)
    return deltas[2]


@pytest.mark.parametrize("mode", [0, 1, 2], ids=["mode0", "batch", "sync"])
def test_every_mode_counts_the_normal_packets_a_marked_request_waited_for(ov: Overlay, mode,
                                                                         report):
    d = counted_run(ov, mode, waits=True)
    mean = d["prio_waited"] / d["prio_waits"] if d["prio_waits"] else None
    report(f"mode {mode}, prism_wait_stats 1: vm2 {d}, mean wait "
           f"{'n/a' if mean is None else f'{mean:.1f}'} normal packet passes")
    assert d["marked_by_queue"] >= MIN_WAITS, (
        f"mode {mode}: the requests were not marked by rx-0's flag: {d}")
    assert d["prio_waits"] >= MIN_WAITS, (
        f"mode {mode}: marked requests reached the container's socket uncounted: {d}")
    # Each request is counted once, at its socket: the outer VXLAN packet's delivery to the
    # tunnel's socket is not an end, so there are not more waits than marked arrivals.
    assert d["prio_waits"] <= d["marked_by_queue"], d
    assert d["prio_unmatched"] <= UNMATCHED_SHARE * d["prio_waits"], (
        f"mode {mode}: marked packets reached a socket with no arrival on record: {d}")
    if mode == 0:
        # Mode 0 leaves a request behind the bulk flows' packets on every stage: under two
        # bulk flows it cannot have waited for none.
        assert d["prio_waited"] > 0, f"mode 0 under bulk counted no normal packet passes: {d}"


def test_with_the_knob_off_mode_0_classifies_and_counts_nothing(ov: Overlay, report):
    d = counted_run(ov, 0, waits=False)
    report(f"mode 0, prism_wait_stats 0: vm2 {d}")
    assert d == {name: 0 for name in COUNTED}, (
        f"mode 0 with prism_wait_stats 0 must run no PRISM code at all: {d}")
