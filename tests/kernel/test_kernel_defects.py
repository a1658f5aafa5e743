"""The PRISM series' defects of issue 20, each as a single-guest trigger under QEMU (TCG).

Each test boots the prism kernel with the test initramfs plus tests/kernel/guest/prism-defects
and prism-udpping, and runs one scenario that made a defect show on the series before its fix
(the docstrings say what was seen). Every scenario also asserts a clean dmesg (dmesg_clean).
Console logs: tests/kernel/out/defect-*.log.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

from prismtb.image import KERNEL_TEST_DIR, ImageError, build_initramfs
from prismtb.kernel import boot

XTABLES = Path("/usr/lib/x86_64-linux-gnu/xtables")


@pytest.fixture(scope="session")
def defects_initramfs(tmp_path_factory):
    """The scenarios' image: prism-test (the helpers), prism-defects, prism-udpping, and
    iptables-nft (xtables-nft-multi with the two extensions rx_verdict's rule loads)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is needed to build tests/kernel/guest/prism-udpping.c")
    udpping = tmp_path_factory.mktemp("defect-bin") / "prism-udpping"
    subprocess.run([gcc, "-static", "-O2", "-Wall", "-o", str(udpping),
                    str(KERNEL_TEST_DIR / "prism-udpping.c")], check=True)
    files = [f"{KERNEL_TEST_DIR / script}:/prism-test/{script}"
             for script in ("prism-test", "prism-defects")]
    xtables = shutil.which("xtables-nft-multi")
    if xtables is None:
        pytest.fail("iptables (xtables-nft-multi) is needed on the host: apt-get install iptables")
    # iptables loads its extensions with dlopen (ldd does not see them).
    files += [str(XTABLES / f"libxt_{name}.so") for name in ("standard", "udp")]
    try:
        return build_initramfs(extra_bins=[str(udpping), xtables], extra_files=files)
    except ImageError as e:
        pytest.fail(str(e), pytrace=False)


def run_defect(kernel, initrd, scenario, mode=1, smp=2):
    return boot(kernel, initrd, f"defect-{scenario}", scenario, mode=mode, smp=smp,
                script="/prism-test/prism-defects")


def test_backlog_poll_never_completes_at_its_quota(prism_kernel, defects_initramfs):
    """Defect 1. net.core.dev_weight=2 (the backlog's quota) under the default
    prism_prio_weight of 64, mode 1, a marked UDP ping-pong and a burst of 2000 marked
    datagrams through the overlay: the backlog poll never returns more than its quota nor
    completes at it, no reply is lost (a reply later than the ping-pong's 2 s timeout, as on
    a KASAN guest under TCG, counts once it comes; only one that never comes fails), and the
    guest's network works afterwards. Before the
    fix the first datagram gave "process_backlog ... returned 4, exceeding its budget of 2"
    (the NAPI, completed, was requeued), and afterwards an unmarked ping lost 3 of 3."""
    run = run_defect(prism_kernel, defects_initramfs, "poll_quota")
    run.assert_all_ok(required=["overlay_up", "udp_server_up", "pingpong_quota2",
                                "pingpong_after_burst", "no_budget_overrun",
                                "unmarked_ping_after", "dmesg_clean"])


def test_mode_switches_never_strand_a_priority_flow(prism_kernel, defects_initramfs):
    """Defect 5. 20 switches 0 -> 1 -> 0 from CPU 0 (6 s in mode 1) while a marked UDP
    ping-pong (3 s timeout) runs with both ends on CPU 1, the only traffic there: no reply
    may time out. Before the fix a switch in the middle of the upstream backlog loop left the
    re-enqueued marked packet on the priority queue of a completed backlog, and the
    ping-pong stalled until the next switch to mode 0: 10 timeouts in 40 switches (with
    1.5 s in mode 1 and a 700 ms timeout). Those figures were too tight for a slow guest:
    the KASAN build had 20 late replies in 40 switches on the 9-patch series, and the plain
    build with patch 9 one reply late by more than 700 ms in 40, none lost; a strand lasts
    until the next switch to 0, so the timeout is now half of the time in mode 1."""
    run = run_defect(prism_kernel, defects_initramfs, "flip_strand", mode=0)
    run.assert_all_ok(required=["overlay_up", "udp_server_up", "marked_pingpong_never_stranded",
                                "dmesg_clean"])


def test_a_marked_flood_at_the_cap_does_not_stall_other_traffic(prism_kernel, defects_initramfs):
    """Defects 6 and 4. prism_prio_weight=1, a marked UDP flood sent from CPU 1 and steered
    by RPS on the underlay to CPU 0, and an unmarked UDP ping-pong (2 s timeout) with both
    ends on CPU 0, whose packets go through CPU 0's normal backlog queues and VXLAN gro_cell
    NAPI: no reply may time out. A guard: before the fix the backlog yielding at its cap went
    straight back to the head of poll_list and the normal queues ran only in a poll whose
    priority phase found nothing, but this run did not show it (100/100 replies on the series
    before the fix, with and without the RPS steering; the gro_cell and the ping-pong's
    packets got their turns whenever the flood's queue emptied)."""
    run = run_defect(prism_kernel, defects_initramfs, "flood_fairness")
    run.assert_all_ok(required=["overlay_up", "rps_to_cpu0", "marked_flood_flowed",
                                "unmarked_pingpong_not_starved", "dmesg_clean"])


def test_bulk_keeps_its_share_beside_a_marked_stream(prism_kernel, defects_initramfs):
    """Defect 4. One vCPU, a marked UDP stream of 64-byte datagrams as fast as the guest
    takes them beside bulk TCP, mode 0 and mode 1 interleaved twice: bulk keeps at least a
    quarter of its mode-0 throughput in mode 1 (the backlog poll guarantees the normal queues
    a quarter of its quota while they wait). A guard: before the fix the normal queues ran
    only in a backlog poll whose priority phase found nothing, and each yield was charged a
    full quota, but this run did not show starvation (bulk in mode 1 at 0.63 of mode 0, sum
    of two runs, time_squeeze 180 against 144, on the series before the fix)."""
    run = run_defect(prism_kernel, defects_initramfs, "normal_share", smp=1)
    for line in run.info:
        if line.startswith("normal_share:"):
            print(line)
    run.assert_all_ok(required=["overlay_up", "servers_up", "bulk_keeps_its_share",
                                "dmesg_clean"])


def test_sync_mode_never_nests_socket_locks(prism_kernel, defects_initramfs):
    """Defect 2. Mode 2, an iperf3 server on the bridge's address in host hb (reached through
    the bridge's local delivery), TCP both ways from container cb on the same host and from
    ca across the overlay: every run completes and dmesg holds no lockdep report (recursive
    or circular locking, meaningful on the PRISM_KERNEL_DEBUG=1 build with PROVE_LOCKING).
    Before the fix a synchronous delivery could start from a transmit path holding cb's
    socket spinlock and come back into cb through the host socket's ACK; without lockdep
    this single-guest run passed on the series before the fix too (the two-guest version in
    tests/overlay/test_overlay_defects.py hung its guest)."""
    run = run_defect(prism_kernel, defects_initramfs, "sync_locking")
    run.assert_all_ok(required=["overlay_up", "tcp_to_bridge_host_from_cb",
                                "tcp_to_bridge_host_from_cb-R", "tcp_to_bridge_host_from_ca",
                                "tcp_to_bridge_host_from_ca-R", "no_lock_nesting",
                                "dmesg_clean"])


def test_a_port_list_split_into_several_writes_changes_nothing(prism_kernel, defects_initramfs):
    """Lower item of issue 20. `echo "add <10000 ports>"` into prism_ports, which the shell
    writes in several write() calls, fails and leaves the table as it was; a list of 500
    ports in one write() ending with a newline is applied whole; a write of two lines is
    refused. Before the fix the first write of the echo was applied on its own."""
    run = run_defect(prism_kernel, defects_initramfs, "port_list_writes", mode=0)
    run.assert_all_ok(required=["split_echo_refused", "one_write_long_list_applied",
                                "two_lines_refused", "dmesg_clean"])


def test_mode_switches_keep_a_marked_stream_in_order(prism_kernel, defects_initramfs):
    """Defect 3's class across mode switches. A marked UDP stream (60000 numbered datagrams
    in bursts of 16) from ca on CPU 0 to cb on CPU 1, with RPS on the underlay handing every
    packet to CPU 1's backlog so that several wait there at once, while CPU 0 switches the
    mode every 20 ms, in three phases: 1 <-> 2, 0 <-> 1, 0 <-> 2. Each switch changes the
    path a marked packet takes (gro_cell and normal backlog, priority backlog, synchronous
    delivery), and no datagram may arrive after a higher-numbered one, except in a phase
    where a CPU was switched with packets still queued (switch_forced, after 200 ms without
    its queues emptying: the case patch 9 documents; on the KASAN build, with 4 forced
    switches in 756, 208 datagrams came out of order; the plain build had no forced switch).
    Before patch 9 (a
    CPU takes a new mode only where none of its receive queues holds a packet) 14, 1966 and
    1348 of 60000 datagrams did, in the three phases; without the RPS steering (both ends on
    CPU 1, each datagram carried to the socket before the next was sent) 0, 0 and 1."""
    run = run_defect(prism_kernel, defects_initramfs, "switch_order")
    for line in run.info:
        if line.startswith("switch_order:"):
            print(line)
    run.assert_all_ok(required=["overlay_up", "rps_to_cpu1",
                                "marked_stream_keeps_its_order_across_switches",
                                "dmesg_clean"])


def test_a_drop_by_the_receivers_netfilter_is_no_veth_drop_in_any_mode(prism_kernel,
                                                                        defects_initramfs):
    """Lower item of issue 20 (patch 5). Container cb drops UDP to the marked port in its
    INPUT chain (iptables-nft); 200 marked datagrams from ca in modes 0, 1 and 2: the rule
    drops all 200 each time, the packets took the mode's path (prio_enqueued in mode 1,
    sync_deliveries in mode 2), and the tx_dropped of every veth end moves as in mode 0,
    where netif_rx() only queues: not at all. In mode 2 the bridge's veth (vb) hands the
    packet to cb within the synchronous delivery, and netif_rx() returns NET_RX_SUCCESS, as
    for a queued packet, instead of __netif_receive_skb()'s verdict: a drop further on is not
    the sender's congestion, and veth must not count it as its own."""
    run = run_defect(prism_kernel, defects_initramfs, "rx_verdict", mode=0)
    for line in run.info:
        if line.startswith("rx_verdict:"):
            print(line)
    run.assert_all_ok(required=["overlay_up", "receiver_netfilter_drops",
                                "receiver_drops_are_no_veth_drops", "dmesg_clean"])
