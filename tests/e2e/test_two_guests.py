"""Two guests on two ports of the backend, 4 queue pairs each: ping, TCP, fewer queues, and a
guest SIGKILLed and restarted on the same socket.

The tests share one backend and one pair of guests (booting under TCG is the slow part) and run
in file order; the last one kills and restarts vm2.
"""

from __future__ import annotations

import re

import pytest

from vm import Guest, GuestError

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
    # One guest command for the whole wait, in a subshell so `exit` does not end the console shell.
    tries = int(timeout // 2)
    rc, out = src.run(f"(i=0; while [ $i -lt {tries} ]; do ping -c 1 -W 2 {dst_ip} >/dev/null && exit 0; "
                      f"i=$((i+1)); done; exit 1)", timeout=timeout + 60)
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


def iperf_mbits(client: Guest, server: Guest, server_ip: str) -> float:
    """Runs iperf3 client -> server for IPERF_SECONDS with IPERF_STREAMS streams; returns the
    receiver's total in Mbit/s."""
    server.run("killall iperf3 2>/dev/null; true")
    server.check("iperf3 -s -D -1 --logfile /tmp/iperf3-server.log")
    server.check("i=0; until netstat -ltn | grep -q ':5201 '; do i=$((i+1)); [ $i -lt 300 ] || break; "
                 "sleep 0.1; done; netstat -ltn | grep ':5201 '")
    rc, out = client.run(f"iperf3 -c {server_ip} -t {IPERF_SECONDS} -P {IPERF_STREAMS} -f m "
                         f"--connect-timeout 20000", timeout=IPERF_SECONDS + 120)
    assert rc == 0, f"iperf3 {client.name} -> {server_ip} exited {rc}:\n{out}"
    m = re.search(r"^\[SUM\].*?([\d.]+) Mbits/sec.*receiver\s*$", out, re.M)
    assert m, f"no [SUM] receiver line in iperf3 output:\n{out}"
    return float(m.group(1))


@pytest.fixture(scope="module")
def pair(vswitch, guests):
    vm1 = guests.start("vm1", vswitch.sockets["vm1"], ip=f"{VM1_IP}/{PREFIX}", queues=QUEUES, smp=SMP)
    vm2 = guests.start("vm2", vswitch.sockets["vm2"], ip=f"{VM2_IP}/{PREFIX}", queues=QUEUES, smp=SMP)
    vm1.wait_ready()
    vm2.wait_ready()
    return vm1, vm2


@pytest.fixture(autouse=True)
def backend_survives(vswitch):
    """Whatever a test did to the guests, the backend must still be running afterwards."""
    yield
    assert vswitch.alive(), \
        f"backend exited with {vswitch.proc.returncode} during the test:\n{vswitch.log_tail()}"


def test_guests_boot_with_four_queue_pairs(pair):
    for guest in pair:
        assert current_combined_queues(guest) == QUEUES, guest.ready_line


def test_ping_between_guests_has_no_loss(pair):
    vm1, vm2 = pair
    wait_reachable(vm1, VM2_IP)
    assert_no_ping_loss(vm1, VM2_IP)
    assert_no_ping_loss(vm2, VM1_IP)


def test_tcp_transfer_between_guests(pair, vswitch, report):
    vm1, vm2 = pair
    mbits = iperf_mbits(vm1, vm2, VM2_IP)
    report(f"iperf3 vm1 -> vm2, {QUEUES} queue pairs, {IPERF_STREAMS} streams, {IPERF_SECONDS} s: "
           f"{mbits:.0f} Mbit/s ({vswitch.describe()})")
    assert mbits > 0


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
        mbits = iperf_mbits(vm1, vm2, VM2_IP)
        report(f"iperf3 vm1 -> vm2, 2 queue pairs, {IPERF_STREAMS} streams, {IPERF_SECONDS} s: "
               f"{mbits:.0f} Mbit/s ({vswitch.describe()})")
        assert mbits > 0
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
        assert iperf_mbits(vm2, vm1, VM1_IP) > 0
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
