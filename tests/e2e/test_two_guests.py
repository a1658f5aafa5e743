"""Two guests on two ports of the backend, 4 queue pairs each: ping, TCP, fewer queues, mixed
queue counts, and a guest SIGKILLed and restarted on the same socket. With prism-vnic itself
(not a stand-in) also: its counters see the guests' traffic, and after a transfer no RX queue
keeps frames the guest never gets.

The tests share one backend and one pair of guests (booting under TCG is the slow part) and run
in file order; the last one kills and restarts vm2.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from prismtb.guest import Guest, GuestError

VM1_IP, VM2_IP = "10.0.0.1", "10.0.0.2"
PREFIX = 24
QUEUES = 4
# 2 vCPUs per guest: enough for the guest to spread flows over more than one queue pair,
# and what two TCG guests plus the backend can share on a 2-core machine.
SMP = 2
PING_COUNT = 20
REACHABLE_TIMEOUT = 120.0
IPERF_SECONDS = 5
IPERF_STREAMS = 4


def current_combined_queues(guest: Guest) -> int:
    out = guest.check("ethtool -l eth0")
    current = out.split("Current hardware settings:", 1)
    m = re.search(r"^Combined:\s*(\d+)", current[-1], re.M) if len(current) == 2 else None
    if m is None:
        raise GuestError(f"{guest.name}: no current Combined count in `ethtool -l eth0`:\n{out}")
    return int(m.group(1))


def wait_reachable(src: Guest, dst_ip: str, timeout: float = REACHABLE_TIMEOUT) -> None:
    """Pings once per try until an answer comes back: links, ARP and a reconnecting backend
    take a while to settle under TCG."""
    # One guest command for the whole wait, in a subshell so `exit` does not end the console
    # shell. A try takes 1-3 s (ping fails at once while the route or ARP is missing).
    tries = max(1, int(timeout // 3))
    rc, out = src.run(f"(i=0; while [ $i -lt {tries} ]; do ping -c 1 -W 2 {dst_ip} >/dev/null && exit 0; "
                      f"sleep 1; i=$((i+1)); done; exit 1)", timeout=timeout + 60)
    if rc != 0:
        raise GuestError(f"{src.name}: {dst_ip} not reachable within {timeout:.0f} s\n{out}")


def ping_loss(src: Guest, dst_ip: str, count: int = PING_COUNT) -> tuple[int, int, str]:
    rc, out = src.run(f"ping -c {count} -i 0.2 -W 5 {dst_ip}", timeout=count * 5 + 60)
    m = re.search(r"(\d+) packets transmitted, (\d+) packets received", out)
    if m is None:
        raise GuestError(f"{src.name}: no ping summary (exit {rc}):\n{out}")
    return int(m.group(1)), int(m.group(2)), out


def assert_no_ping_loss(src: Guest, dst_ip: str) -> None:
    sent, received, out = ping_loss(src, dst_ip)
    assert sent == PING_COUNT and received == PING_COUNT, \
        f"{src.name} -> {dst_ip}: {received}/{sent} answered:\n{out}"


def run_iperf(client: Guest, server: Guest, server_ip: str) -> tuple[float | None, str]:
    """Runs iperf3 client -> server for IPERF_SECONDS with IPERF_STREAMS streams; returns the
    receiver's total in Mbit/s (None if the run failed) and iperf3's output."""
    server.run("killall iperf3 2>/dev/null; true")
    server.check("iperf3 -s -D -1 --logfile /tmp/iperf3-server.log")
    server.check("i=0; until netstat -ltn | grep -q ':5201 '; do i=$((i+1)); [ $i -lt 300 ] || break; "
                 "sleep 0.1; done; netstat -ltn | grep ':5201 '")
    rc, out = client.run(f"iperf3 -c {server_ip} -t {IPERF_SECONDS} -P {IPERF_STREAMS} -f m "
                         f"--connect-timeout 20000", timeout=IPERF_SECONDS + 120)
    m = re.search(r"^\[SUM\].*?([\d.]+) Mbits/sec.*receiver\s*$", out, re.M)
    if rc != 0 or m is None:
        return None, f"iperf3 {client.name} -> {server_ip} exited {rc}:\n{out}"
    return float(m.group(1)), out


# --- prism-vnic's own view (`prism-vnic stats --json`), not available from stand-ins ---------

def port_stats(vswitch, name: str) -> dict:
    stats = vswitch.stats()
    for port in stats.get("ports", []):
        if port.get("name") == name:
            return port
    raise AssertionError(f"no port {name} in prism-vnic stats: {stats}")


def queues_holding_frames(vswitch) -> list[str]:
    """RX queues where the backend holds frames it has not delivered to the guest."""
    held = []
    for port in vswitch.stats().get("ports", []):
        for queue in port.get("queues", []):
            if queue.get("rx_buffered_now", 0):
                held.append(f"{port.get('name')} rx queue {queue.get('index')}: "
                            f"{queue['rx_buffered_now']} frames buffered, enabled={queue.get('rx_enabled')}, "
                            f"delivered so far {queue.get('counters', {}).get('rx_packets')}")
    return held


def wait_backend_drained(vswitch, timeout: float = 30.0) -> list[str]:
    """Once traffic stops, every frame the backend buffered must reach its guest (the guests
    keep reposting RX buffers): polls until no queue holds frames; returns what is still held."""
    deadline = time.monotonic() + timeout
    while True:
        held = queues_holding_frames(vswitch)
        if not held or time.monotonic() > deadline:
            return held
        time.sleep(0.5)


def save_backend_stats(vswitch, out_dir, label: str) -> None:
    if not vswitch.is_stand_in:
        (out_dir / f"stats-{label}.json").write_text(json.dumps(vswitch.stats(), indent=1))


@pytest.fixture(scope="module")
def pair(vswitch, guests, report):
    started = time.monotonic()
    vm1 = guests.start("vm1", vswitch.sockets["vm1"], ip=f"{VM1_IP}/{PREFIX}", queues=QUEUES, smp=SMP)
    vm2 = guests.start("vm2", vswitch.sockets["vm2"], ip=f"{VM2_IP}/{PREFIX}", queues=QUEUES, smp=SMP)
    vm1.wait_ready()
    vm2.wait_ready()
    report(f"two guests booted to PRISM-GUEST-READY in {time.monotonic() - started:.0f} s "
           f"(accelerator and QEMU command: {vm1.qemu_log_path})")
    return vm1, vm2


@pytest.fixture(autouse=True)
def backend_survives(vswitch, out_dir, request):
    """Whatever a test did to the guests, the backend must still be running afterwards, and
    none of its threads may have panicked. Its counters after each test are saved for
    post-mortems (out/<module>/stats-after-<test>.json)."""
    log_offset = vswitch.log_size()
    yield
    if vswitch.alive() and not vswitch.is_stand_in:
        try:
            save_backend_stats(vswitch, out_dir, f"after-{request.node.name}")
        except Exception as e:  # a broken stats command must not hide the test's own result
            print(f"saving backend stats: {e!r}")
    assert vswitch.alive(), \
        f"backend exited with {vswitch.proc.returncode} during the test:\n{vswitch.log_tail()}"
    panics = vswitch.panics_since(log_offset)
    assert not panics, f"backend threads panicked during the test (log {vswitch.log_path}):\n" + \
        "\n".join(panics[:5])


def test_guests_boot_with_four_queue_pairs(pair):
    for guest in pair:
        assert current_combined_queues(guest) == QUEUES, guest.ready_line


def test_ping_between_guests_has_no_loss(pair):
    vm1, vm2 = pair
    wait_reachable(vm1, VM2_IP)
    assert_no_ping_loss(vm1, VM2_IP)
    assert_no_ping_loss(vm2, VM1_IP)


def test_backend_counts_guest_traffic(pair, vswitch):
    """prism-vnic's counters are the guest NIC's view: tx_* = sent by the guest, rx_* = delivered
    to it. 20 pings each way must show up on both ports."""
    if vswitch.is_stand_in:
        pytest.skip(f"{vswitch.kind} has no prism-vnic stats")
    vm1, _ = pair
    keys = ("tx_packets", "rx_packets")
    before = {name: port_stats(vswitch, name)["counters"] for name in ("vm1", "vm2")}
    assert_no_ping_loss(vm1, VM2_IP)
    after = {name: port_stats(vswitch, name)["counters"] for name in ("vm1", "vm2")}
    delta = {name: {k: after[name][k] - before[name][k] for k in keys} for name in before}
    for name in ("vm1", "vm2"):
        for key in keys:
            assert delta[name][key] >= PING_COUNT, f"{name} {key} grew by {delta[name][key]}: {delta}"


def test_tcp_transfer_between_guests(pair, vswitch, report):
    vm1, vm2 = pair
    mbits, out = run_iperf(vm1, vm2, VM2_IP)
    held = [] if vswitch.is_stand_in else wait_backend_drained(vswitch)
    if mbits is not None:
        report(f"iperf3 vm1 -> vm2, {QUEUES} queue pairs, {IPERF_STREAMS} streams, {IPERF_SECONDS} s: "
               f"{mbits:.0f} Mbit/s ({vswitch.describe()})")
    assert not held, "frames stuck in the backend 30 s after the transfer:\n" + "\n".join(held) + "\n" + out
    assert mbits is not None and mbits > 0, out


def set_combined_queues(guest: Guest, n: int) -> None:
    guest.check(f"ethtool -L eth0 combined {n}")
    assert current_combined_queues(guest) == n


def test_traffic_after_reducing_to_two_queue_pairs(pair, vswitch, report):
    vm1, vm2 = pair
    try:
        for guest in pair:
            set_combined_queues(guest, 2)
        wait_reachable(vm1, VM2_IP)
        assert_no_ping_loss(vm1, VM2_IP)
        mbits, out = run_iperf(vm1, vm2, VM2_IP)
        held = [] if vswitch.is_stand_in else wait_backend_drained(vswitch)
        if mbits is not None:
            report(f"iperf3 vm1 -> vm2, 2 queue pairs, {IPERF_STREAMS} streams, {IPERF_SECONDS} s: "
                   f"{mbits:.0f} Mbit/s ({vswitch.describe()})")
        assert not held, "frames stuck in the backend 30 s after the transfer:\n" + "\n".join(held) + "\n" + out
        assert mbits is not None and mbits > 0, out
    finally:
        for guest in pair:
            set_combined_queues(guest, QUEUES)


def test_traffic_between_guests_using_different_queue_counts(pair, vswitch):
    """vm1 uses 2 queue pairs, vm2 all 4: the backend must deliver vm2's frames from any of
    its TX queues into one of vm1's two enabled RX queues."""
    if vswitch.is_stand_in:
        pytest.skip(f"{vswitch.kind} forwards queue q to queue q, it cannot map 4 queues onto 2")
    vm1, vm2 = pair
    try:
        set_combined_queues(vm1, 2)
        wait_reachable(vm2, VM1_IP)
        assert_no_ping_loss(vm2, VM1_IP)
        assert_no_ping_loss(vm1, VM2_IP)
        mbits, out = run_iperf(vm2, vm1, VM1_IP)
        assert mbits is not None and mbits > 0, out
    finally:
        set_combined_queues(vm1, QUEUES)


def test_traffic_after_guest_killed_and_restarted(pair):
    vm1, vm2 = pair
    vm2.kill()
    vm2.start()
    vm2.wait_ready()
    wait_reachable(vm1, VM2_IP)
    assert_no_ping_loss(vm1, VM2_IP)
    assert_no_ping_loss(vm2, VM1_IP)
