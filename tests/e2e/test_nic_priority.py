"""The NIC model seen from a booted guest: a DSCP EF flow, and a flow matched by a port rule
added at run time, arrive on the guest's rx-0 (the high-priority queue) while bulk TCP lands
on the other queues. The guest's own per-queue counters (`ethtool -S eth0`) are the evidence,
cross-checked with prism-vnic's.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from prismtb.guest import Guest

QUEUES = 4
VM1_IP, VM2_IP = "10.0.0.1", "10.0.0.2"
SECONDS = 5


def rx_queue_packets(guest: Guest) -> list[int]:
    out = guest.check("ethtool -S eth0")
    counts = [0] * QUEUES
    for queue, packets in re.findall(r"rx_queue_(\d+)_packets: (\d+)", out):
        if int(queue) < QUEUES:
            counts[int(queue)] = int(packets)
    return counts


def udp_received(out: str) -> int:
    """Datagrams the iperf3 server reported received (the 'receiver' line: lost/total)."""
    m = re.search(r"(\d+)/(\d+) \([\d.e+-]+%\)\s+receiver", out)
    assert m, f"no iperf3 UDP receiver summary:\n{out}"
    return int(m.group(2)) - int(m.group(1))


@pytest.fixture(scope="module")
def pair(vswitch, guests):
    if vswitch.is_stand_in:
        pytest.skip("the NIC model is prism-vnic's; a stand-in backend has none")
    vm1 = guests.start("vm1", vswitch.sockets["vm1"], ip=f"{VM1_IP}/24", queues=QUEUES, smp=2)
    vm2 = guests.start("vm2", vswitch.sockets["vm2"], ip=f"{VM2_IP}/24", queues=QUEUES, smp=2)
    vm1.wait_ready()
    vm2.wait_ready()
    # In a subshell: `exit` in the console's own shell would end it.
    vm1.check(f"(i=0; until ping -c 1 -W 2 {VM2_IP} >/dev/null; do i=$((i+1)); [ $i -lt 60 ] || exit 1; done)",
              timeout=300)
    vm2.check("iperf3 -s -D && iperf3 -s -D -p 5202 && iperf3 -s -D -p 5203")
    return vm1, vm2


def bulk_with_udp_flow(vm1: Guest, vm2: Guest, udp_args: str) -> tuple[list[int], int]:
    """Bulk TCP with a 1 Mbit/s UDP flow alongside; returns vm2's per-queue RX deltas and the
    UDP datagrams received."""
    before = rx_queue_packets(vm2)
    vm1.check(f"(iperf3 -c {VM2_IP} {udp_args} -u -b 1M -t {SECONDS} > /tmp/udp.txt 2>&1 &)")
    rc, out = vm1.run(f"iperf3 -c {VM2_IP} -t {SECONDS} -P 4", timeout=SECONDS * 20 + 120)
    assert rc == 0, f"bulk iperf3 failed:\n{out}"
    vm1.check("i=0; while pidof iperf3 >/dev/null; do i=$((i+1)); [ $i -lt 300 ] || break; sleep 0.2; done",
              timeout=120)
    udp = udp_received(vm1.check("cat /tmp/udp.txt"))
    after = rx_queue_packets(vm2)
    return [a - b for a, b in zip(after, before)], udp


def test_dscp_ef_flow_arrives_on_rx0_and_bulk_elsewhere(pair, vswitch, report):
    vm1, vm2 = pair
    stats_before = vswitch.stats()
    deltas, udp = bulk_with_udp_flow(vm1, vm2, "-p 5202 -S 184")
    report(f"EF flow: {udp} datagrams received; vm2 rx per queue during the test: {deltas}")
    assert udp > 0
    # Everything on rx-0 is the EF flow (ARP and other unmarked frames go elsewhere) ...
    assert deltas[0] >= udp, f"EF datagrams missing from rx-0: {deltas} vs {udp} received"
    assert deltas[0] <= udp + 5, f"unmarked traffic on rx-0: {deltas} vs {udp} EF datagrams"
    # ... and the bulk transfer used the other queues.
    assert sum(deltas[1:]) > 1000, f"bulk not on rx-1..3: {deltas}"
    high = lambda s: next(p for p in s["ports"] if p["name"] == "vm2")["counters"]["rx_high_packets"]
    assert high(vswitch.stats()) - high(stats_before) == deltas[0]


def test_port_rule_added_at_run_time_steers_an_unmarked_flow_to_rx0(pair, vswitch, report):
    vm1, vm2 = pair
    rule = ["rule", "--control", str(vswitch.control), "add", "vm2",
            "loc", "7", "proto", "udp", "dst-port", "5203", "action", "queue", "0", "class", "high"]
    subprocess.run([str(vswitch.binary), *rule], check=True, capture_output=True)
    deltas, udp = bulk_with_udp_flow(vm1, vm2, "-p 5203")
    report(f"port-rule flow: {udp} datagrams received; vm2 rx per queue: {deltas}")
    assert deltas[0] >= udp and deltas[0] <= udp + 5, f"rule-matched flow not on rx-0: {deltas} vs {udp}"
    assert sum(deltas[1:]) > 1000, f"bulk not on rx-1..3: {deltas}"
    listing = subprocess.run([str(vswitch.binary), "rule", "--control", str(vswitch.control), "list", "vm2"],
                             check=True, capture_output=True, text=True).stdout
    hits = int(re.search(r"loc 7 .*hits (\d+)", listing).group(1))
    assert hits >= udp, listing
