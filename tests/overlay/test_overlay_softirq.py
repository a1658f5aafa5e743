"""PRISM's receive loop leaves the NET_RX softirq pending only for work still queued, as
upstream does, across two guests on prism-vnic, each with one vCPU (as the evaluation's
server: every NAPI, the backlog, ksoftirqd and the applications share one CPU).

PRISM's net_rx_action() serves the live poll_list (patch 3), so a NAPI scheduled during a
run (the VXLAN gro_cell, the backlog behind veth, the NIC's next interrupt) is polled in the
same run, but scheduling it raised the softirq again. Left pending, that raise made the next
run find nothing to poll, and past the softirq's time limit woke ksoftirqd; while ksoftirqd
is runnable, the receive work of every interrupt waits for its turn under the scheduler
instead of running on interrupt exit (docs/EVAL.md, batch's bulk throughput). The empty runs
are counted in /proc/net/prism (empty_runs); the test reads them against the NET_RX softirq
runs of /proc/softirqs under bulk TCP, with no marked packet. With the counter but without
the raise taken back, 160 of 712 runs (batch) and 94 of 581 (sync) were empty.
"""

from __future__ import annotations

import pytest

from prismtb.overlay import CONTAINER, Overlay

OVERLAY_SMP = 1
BULK_PORT = 5301
BULK_SECS = 5
IPERF_TIMEOUT = 300
# Empty runs allowed per NET_RX run. With the raise taken back, a run finds nothing to poll
# only when a NAPI was taken off poll_list outside the softirq (none here) or a deferred skb
# free was kicked from another CPU (one vCPU here): none expected; the margin is for the
# unforeseen, far below the one empty run in five or six of the defect.
EMPTY_RUN_SHARE = 0.02


@pytest.fixture(scope="module")
def ov(overlay: Overlay) -> Overlay:
    overlay.start_servers(2, [BULK_PORT])
    return overlay


def net_rx_runs(ov: Overlay, n: int) -> int:
    """NET_RX softirq runs on guest n's CPUs (/proc/softirqs)."""
    out = ov.c(n, "grep NET_RX: /proc/softirqs", netns=False)
    return sum(int(x) for x in out.split()[1:])


def bulk_deltas(ov: Overlay) -> dict[str, int]:
    """Bulk TCP (2 flows, unmarked) from vm1's container to vm2's; on vm2, the receiver,
    the increase of its NET_RX softirq runs and of its empty_runs counter."""
    runs0, empty0 = net_rx_runs(ov, 2), ov.counters(2).get("empty_runs")
    out = ov.c(1, f"timeout {BULK_SECS * 10 + 60} iperf3 -c {CONTAINER[2]} -p {BULK_PORT} "
                  f"-P 2 -t {BULK_SECS}", timeout=IPERF_TIMEOUT)
    assert "receiver" in out, f"bulk iperf3 did not complete:\n{out[-2000:]}"
    runs1, empty1 = net_rx_runs(ov, 2), ov.counters(2).get("empty_runs")
    assert empty0 is not None and empty1 is not None, (
        "/proc/net/prism has no empty_runs column: the series does not count NET_RX runs "
        "that found nothing to poll")
    return {"net_rx_runs": runs1 - runs0, "empty_runs": empty1 - empty0}


@pytest.mark.parametrize("mode", [1, 2], ids=["batch", "sync"])
def test_bulk_traffic_leaves_no_net_rx_raise_behind_its_work(ov: Overlay, mode: int, report):
    """Modes 1 and 2 (the loop is the same), bulk TCP into vm2's container: fewer than
    EMPTY_RUN_SHARE of vm2's NET_RX softirq runs find no NAPI to poll. Before the raise was
    taken back, one run in five or six was empty."""
    ov.set_mode(mode)
    try:
        d = bulk_deltas(ov)
    finally:
        ov.set_mode(0)
    report(f"mode {mode}: vm2 NET_RX runs {d['net_rx_runs']}, empty {d['empty_runs']}")
    assert d["net_rx_runs"] > 20, f"too little receive work to judge: {d}"
    assert d["empty_runs"] <= EMPTY_RUN_SHARE * d["net_rx_runs"], (
        f"vm2: {d['empty_runs']} of {d['net_rx_runs']} NET_RX runs had nothing to poll: the "
        f"softirq was left raised for work already done")


def test_mode_0_counts_no_empty_runs(ov: Overlay, report):
    """Mode 0 runs upstream's loop, which PRISM's counters do not instrument."""
    ov.set_mode(0)
    d = bulk_deltas(ov)
    report(f"mode 0: vm2 NET_RX runs {d['net_rx_runs']}, empty {d['empty_runs']}")
    assert d["empty_runs"] == 0, d
