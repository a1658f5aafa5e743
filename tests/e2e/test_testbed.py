"""qemu/testbed, driven as a person would: the two-guest overlay (PRISM kernel, one container per
guest) plus a host namespace on a tap port comes up, carries TCP and UDP between containers on
different guests, serves memcached and nginx to them, switches PRISM modes, and goes down leaving no process, socket, tap, netns or
temporary directory; the same after a Ctrl-C during `up` and after a failure half-way.

Names carry "t19" (taps and namespaces are the machine's); the run and log directories are
this module's (PRISM_TESTBED_RUN, PRISM_TESTBED_LOGS). PRISM_KERNEL replaces the prism flavour.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from prismtb import REPO
from prismtb.netns import netns_exists, tap_exists
from prismtb.parsers import vcpu_threads
from prismtb.state import same_process

TESTBED = REPO / "qemu" / "testbed"
NAME = "t19e2e"
UP_TIMEOUT = 1800  # a cold kernel build on a busy 2-core machine, then two TCG boots
IPERF = "timeout 200 iperf3 -c 192.168.42.2 -t 3"


def topology(kernel: str, name: str = NAME) -> str:
    return f"""
[testbed]
name = "{name}"
queues = 4

[overlay]
containers = 1

[[host]]
name = "vm1"
kernel = "{kernel}"
address = "10.0.0.1/24"
pin = [1, 0]

[[host]]
name = "vm2"
kernel = "{kernel}"
address = "10.0.0.2/24"

[[host]]
name = "gen"
kind = "netns"
port = "tap0"
address = "10.0.0.100/24"
"""


class Bed:
    """The testbed command with this module's run and log directories."""

    def __init__(self, root: Path, name: str, kernel: str):
        self.root = root
        self.name = name
        self.file = root / f"{name}.toml"
        self.file.write_text(topology(kernel, name))
        self.env = {**os.environ, "PRISM_TESTBED_RUN": str(root / "run"),
                    "PRISM_TESTBED_LOGS": str(root / "logs")}

    def argv(self, *args: str) -> list[str]:
        return [str(TESTBED), *args]

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), capture_output=True, text=True, env=self.env,
                              timeout=timeout)

    def check(self, *args: str, timeout: float = 600) -> str:
        res = self.run(*args, timeout=timeout)
        assert res.returncode == 0, f"qemu/testbed {' '.join(args)} exited {res.returncode}:\n" \
                                    f"{res.stdout}\n{res.stderr}"
        return res.stdout

    def record(self) -> dict:
        """The state `up` records (read while it runs)."""
        try:
            return json.loads((self.root / "run" / self.name / "state.json").read_text())
        except (OSError, ValueError):
            return {}

    def leftovers(self, record: dict) -> list[str]:
        """Everything of this testbed still on the machine."""
        left = []
        for r in record.get("resources", []):
            if r["kind"] == "process" and same_process(r):
                left.append(f"process {r['what']} {r['pid']}")
            if r["kind"] == "dir" and Path(r["path"]).exists():
                left.append(f"directory {r['path']}")
        left += [f"tap {self.name}-{h}" for h in ("gen", "vm1", "vm2") if tap_exists(f"{self.name}-{h}")]
        left += [f"netns {self.name}-{h}" for h in ("gen",) if netns_exists(f"{self.name}-{h}")]
        left += [f"temporary directory {p}" for p in Path("/tmp").glob(f"prism-tb-{self.name}-*")]
        run = self.root / "run"
        if run.exists():
            left += [f"run file {p}" for p in run.iterdir()]
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                if f"prism-tb-{self.name}-" in cmdline and (proc / "stat").read_text().split()[2] != "Z":
                    left.append(f"process {proc.name}: {cmdline.replace(chr(0), ' ')[:200]}")
        return left


def kernel_spec() -> str:
    return os.environ.get("PRISM_KERNEL", "prism")


@pytest.fixture(scope="module")
def bed(qemu_binary, out_dir):
    b = Bed(out_dir, NAME, kernel_spec())
    res = b.run("up", str(b.file), timeout=UP_TIMEOUT)
    (out_dir / "up.log").write_text(res.stdout + res.stderr)
    b.up_record = b.record()
    try:
        assert res.returncode == 0, f"up exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr}"
        yield b
    finally:
        b.run("down", "-t", NAME, timeout=300)


def test_up_brings_the_guests_containers_and_host_namespace_up(bed):
    status = bed.check("status")
    assert re.search(r"vm1: guest on port vm1, eth0 10\.0\.0\.1/24, containers c1=192\.168\.42\.1, "
                     r"PRISM mode \d", status), status
    assert "vm2: guest on port vm2, eth0 10.0.0.2/24, containers c1=192.168.42.2" in status
    assert f"gen: netns {NAME}-gen, tap {NAME}-gen on port tap0, eth0 10.0.0.100/24" in status
    assert "prism-vnic vm1: vhost-user connected" in status and "prism-vnic tap0: tap" in status


def test_vm1s_vcpu_threads_are_pinned_as_its_topology_says(bed):
    qemu = next(r for r in bed.record()["resources"] if r.get("what") == "QEMU vm1")
    threads = vcpu_threads(Path(f"/proc/{qemu['pid']}/task"))
    assert {vcpu: os.sched_getaffinity(tid) for vcpu, tid in threads.items()} == {0: {1}, 1: {0}}


def test_a_second_up_is_refused_while_one_runs(bed):
    res = bed.run("up", str(bed.file))
    assert res.returncode == 1
    assert f"{NAME} is already up" in res.stderr and "qemu/testbed down" in res.stderr
    assert bed.record()["resources"] == bed.up_record["resources"]


def test_tcp_and_udp_between_containers_on_different_guests(bed):
    bed.check("exec", "vm2", "c1", "--", "iperf3 -s -D -p 5201 && sleep 1")
    tcp = bed.check("exec", "vm1", "c1", "--", f"{IPERF} -p 5201")
    assert "receiver" in tcp
    udp = bed.check("exec", "vm1", "c1", "--", f"{IPERF} -p 5201 -u -b 5M")
    assert re.search(r"\d+/\d+ \(.*\)\s+receiver", udp), udp


def test_exec_passes_the_exit_status_through_on_guests_containers_and_namespaces(bed):
    assert bed.run("exec", "vm1", "--", "exit 7").returncode == 7
    assert bed.run("exec", "vm2", "c1", "--", "exit 5").returncode == 5
    assert bed.run("exec", "gen", "--", "exit 3").returncode == 3
    assert bed.check("exec", "vm2", "c1", "--", "ip -br addr show eth0").split()[2] == "192.168.42.2/24"


def test_memcached_and_nginx_serve_a_container_on_the_other_guest(bed):
    """The paper's application workloads are in the guest image and work across the overlay:
    memcslap against memcached, wrk against nginx."""
    bed.check("exec", "vm2", "c1", "--", "memcached -u root -d -l 192.168.42.2 -p 11211 && nginx")
    bed.check("exec", "vm2", "c1", "--",
              "for i in $(seq 100); do netstat -ltn | grep -q ':80 ' && netstat -ltn | grep -q ':11211 ' "
              "&& exit 0; sleep 0.5; done; exit 1")
    slap = bed.check("exec", "vm1", "c1", "--", "memcslap -s 192.168.42.2:11211 -t get -c 2 -e 200 -l 200")
    assert "Time to get" in slap, slap
    stats = bed.check("exec", "vm1", "c1", "--", "memcstat -s 192.168.42.2:11211")
    assert re.search(r"get_hits: [1-9]", stats), stats
    wrk = bed.check("exec", "vm1", "c1", "--", "wrk -t 1 -c 4 -d 3s http://192.168.42.2/index.html")
    assert re.search(r"[1-9]\d* requests in", wrk) and "Non-2xx" not in wrk, wrk


def test_prism_modes_switch_on_both_guests(bed):
    for mode in (1, 2, 0):
        for vm in ("vm1", "vm2"):
            bed.check("mode", vm, str(mode))
            assert bed.check("exec", vm, "--", "cat /proc/sys/net/core/prism_mode").strip() == str(mode)
    res = bed.run("mode", "vm1", "3")
    assert res.returncode == 2 and "invalid choice" in res.stderr


def test_the_host_namespace_reaches_both_guests_through_its_tap_port(bed):
    for address in ("10.0.0.1", "10.0.0.2"):
        bed.check("exec", "gen", "--", f"ping -c 2 -W 5 {address}")


def test_down_leaves_no_process_socket_tap_netns_or_temporary_directory(bed):
    record = bed.record()
    assert record.get("up") and any(r["kind"] == "process" for r in record["resources"])
    out = bed.check("down", timeout=300)
    assert "is down" in out
    assert bed.leftovers(record) == []
    assert bed.run("status").returncode == 1


def test_ctrl_c_during_up_takes_down_what_was_started(qemu_binary, tmp_path):
    b = Bed(tmp_path, "t19sig", kernel_spec())
    proc = subprocess.Popen(b.argv("up", str(b.file)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=b.env)
    # Interrupt once QEMU runs: prism-vnic, a tap, a namespace and guests are all there.
    deadline = time.monotonic() + UP_TIMEOUT
    while not any(r.get("what", "").startswith("QEMU") for r in b.record().get("resources", [])):
        assert proc.poll() is None, f"up ended before booting:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, "up did not boot a guest in time"
        time.sleep(0.2)
    record = b.record()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out
    assert "interrupted: taking down what was started" in out
    assert b.leftovers(record) == []


def test_a_guest_that_does_not_boot_fails_up_with_its_console_and_leaves_nothing(qemu_binary, tmp_path):
    """A failure half-way: prism-vnic, the tap and the namespace are up when the guest fails."""
    not_a_kernel = tmp_path / "bzImage"
    not_a_kernel.write_bytes(b"\0" * 4096)
    b = Bed(tmp_path, "t19bad", str(not_a_kernel))
    res = b.run("up", str(b.file), timeout=UP_TIMEOUT)
    assert res.returncode == 1
    failed = re.search(r"up failed: (vm[12]): QEMU exited", res.stderr)
    assert failed, res.stderr
    # Both guests fail; whichever the testbed saw first is named, with its own logs.
    assert "--- qemu stderr tail ---" in res.stderr
    assert f"{failed.group(1)}.qemu.log" in res.stderr, res.stderr
    assert "taking down what was started" in res.stdout
    assert b.leftovers({}) == []
