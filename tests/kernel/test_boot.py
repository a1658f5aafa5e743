"""Single-guest boot tests of the PRISM kernel under QEMU (TCG), no external network.

Each test boots the kernel with the test initramfs and runs one scenario of
tests/kernel/guest/prism-test inside the guest; the guest reports PRISM-CHECK lines, which
these tests assert. Every scenario also checks that dmesg holds no oops, WARN, BUG or
sanitizer report (dmesg_clean). Console logs are kept in tests/kernel/out/.
"""

import pytest

from prismtb.kernel import boot

OVERLAY_TRAFFIC = [
    "overlay_up", "servers_up",
    "tcp_unmarked_ab", "tcp_unmarked_ba", "udp_unmarked_ab", "udp_unmarked_ba",
    "tcp_marked_ab", "tcp_marked_ba", "udp_marked_ab", "udp_marked_ba", "tcp6_marked_ab",
    "counters_flat_unmarked", "dmesg_clean",
]


def test_every_knob_rejects_bad_input_and_is_root_only(prism_kernel, test_initramfs):
    """prism_mode, prism_prio_weight, prism_napi_ahead, prism_wait_stats, prism_ports,
    prism_vxlan_ports and rx-N/prism_priority accept their documented input, return EINVAL (value unchanged) for
    non-numbers, out-of-range and overflowing numbers, empty writes and port 0, and refuse
    writes from uid 65534 and from root without CAP_NET_ADMIN; /proc/net/prism is readable."""
    run = boot(prism_kernel, test_initramfs, "knobs", "knobs")
    run.assert_all_ok(required=[
        "proc_net_prism_readable", "proc_net_prism_has_total", "vxlan_ports_default",
        "rx_queue_flag_exists", "einval:prism_mode:3", "einval:prism_mode:99999999999999999999",
        "einval:prism_ports:add_0", "einval:prism_ports:<empty>", "einval:prism_priority:2",
        "root_only:nobody:prism_mode", "root_only:nocap:prism_mode",
        "root_only:nocap:prism_ports", "root_only:nocap:prism_priority",
        "wait_stats_default", "einval:prism_wait_stats:2", "root_only:nobody:prism_wait_stats",
        "root_only:nocap:prism_wait_stats",
        "knobs_unchanged_by_unprivileged", "dmesg_clean"])
    einval = [k for k in run.checks if k.startswith("einval:")]
    assert len(einval) >= 35, f"only {len(einval)} bad-input checks ran"


@pytest.mark.parametrize("mode", [0, 1, 2], ids=["vanilla", "batch", "sync"])
def test_overlay_traffic_marks_only_the_priority_port(prism_kernel, test_initramfs, mode):
    """Two netns 'hosts' joined by a veth underlay, each with VXLAN (dstport 4789) on a bridge
    and a container netns on veth (MTU 1450). TCP and UDP in both directions work in every
    mode. Unmarked flows move no PRISM counter. In modes 1/2 the marked port (5201) is
    marked on transmit and goes through the priority backlog (batch) or is delivered
    synchronously (sync); frames injected below ip_output() are marked on receive by the
    port table, VXLAN by the inner port; nothing is marked in mode 0."""
    run = boot(prism_kernel, test_initramfs, f"traffic-mode{mode}", "traffic", mode=mode)
    required = OVERLAY_TRAFFIC + ["mode_set"]
    if mode == 0:
        required += ["counters_flat_vanilla", "rx_port_table_off_in_vanilla"]
    else:
        required += ["marked_on_tx_rises", "rx_unmarked_flat", "rx_vxlan_inner_marked",
                     "rx_plain_udp_marked"]
        required += ["prio_enqueued_rises"] if mode == 1 else ["sync_deliveries_rise"]
    run.assert_all_ok(required=required)


@pytest.mark.parametrize("mode", [0, 1], ids=["vanilla", "batch"])
def test_priority_rx_queue_flag_marks_by_queue(prism_kernel, test_initramfs, mode):
    """With the guest's virtio-net on QEMU's user network, packets arriving on eth0 rx-0 are
    marked by queue only while rx-0/prism_priority is 1 and PRISM is active."""
    run = boot(prism_kernel, test_initramfs, f"queue-mode{mode}", "queue", mode=mode,
               netdev_user=True)
    required = ["eth0_up", "queue_flag_off_flat", "dmesg_clean"]
    required += ["queue_flag_ignored_in_vanilla"] if mode == 0 else ["queue_flag_marks"]
    run.assert_all_ok(required=required)


def test_mode_switches_under_load_leave_the_guest_healthy(prism_kernel, test_initramfs):
    """60 switches through modes 0/1/2 while two bulk TCP flows, a marked UDP flow and ping
    run through the overlay, then CPU 1 offline/online and veth removal under traffic: no
    oops or WARN, the ping sequence is complete, no marked UDP datagram is lost."""
    run = boot(prism_kernel, test_initramfs, "switch", "switch")
    run.assert_all_ok(required=[
        "overlay_up", "servers_up", "mode_switches", "cpu_offline_online",
        "ping_sequence_complete", "marked_udp_no_loss", "bulk_tcp_ok",
        "devices_removed_under_traffic", "dmesg_clean"])


def test_vanilla_kernel_carries_the_same_overlay_traffic(vanilla_kernel, test_initramfs):
    """The vanilla flavour (same source and config, no series) boots with the same image and
    carries TCP and UDP both ways over the VXLAN overlay: the baseline the benchmark compares
    against."""
    run = boot(vanilla_kernel, test_initramfs, "vanilla-overlay", "overlay")
    run.assert_all_ok(required=[
        "overlay_up", "servers_up", "tcp_ab", "tcp_ba", "udp_ab", "udp_ba",
        "no_proc_net_prism_or_vanilla_mode", "dmesg_clean"])
