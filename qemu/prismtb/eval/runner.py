"""The experiment runner: the probe's method made the harness's.

Setup "host-client" (the probe): one server guest (1 vCPU, TCG, every QEMU thread pinned to
CPU 1) on prism-vnic (2 queue pairs, pinned to CPU 0 with the clients); the client is the host
itself at native speed, from a host network namespace on a tap port of prism-vnic, with a
Linux vxlan device (VNI 42, dstport 4789, 10.42.0.100) talking to the container c1
(10.42.0.1, netns on br0 with vxlan0, veth MTU 1450) in the guest.

Setup "two-guests" (the paper's two hosts): the client is a second guest's container (1 vCPU,
pinned to CPU 0), the overlay on both guests.

In one boot the modes are switched in interleaved rounds (0, 1, 2 then 2, 1, 0, ...), every
cell's modes back to back inside a round, so a round's ratios to mode 0 pair turns measured a
few seconds apart. Vanilla-kernel boots alternate with the PRISM boots (each boot runs a share
of the rounds), and a vanilla round r is paired with the PRISM round r.

Experiments (each on an idle server and a busy one: a CPU hog per vCPU in the container):
  a  one request/response flow (sockperf ping-pong, UDP 11111), overlay (container to
     container) and "host" (guest eth0, no VXLAN)
  b  the same priority flow with 0, 1, 2, 4, 8 bulk TCP flows (iperf3 -P) to the container
  c  memcached in the container, memcaslap (1 connection) from the client, under 2 bulk flows
  d  nginx in the container, wrk (1 connection) from the client, under 2 bulk flows
  cal  experiment b's 2-flow cell in mode 0 with prism-vnic delaying the high class by D us
     in every other turn: the harness must measure +D/2 (sockperf's half round trip)
NIC steering on: prism-vnic rules put the priority flows on rx-0 as class high (rx-0 has the
prism_priority flag); off: no rules, trust none, so they share the RSS queue with bulk and the
kernel's port table (net.core.prism_ports) alone marks them."""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from .. import REPO
from ..parsers import parse_sockperf
from . import parsers, resume, results

PRIO_PORT = 11111
MEMCACHED_PORT = 11211
HTTP_PORT = 80
# iperf3 servers taken in turn: a server still ending the last turn's test under TCG
# refuses the next one ("the server is busy running a test").
BULK_PORTS = (5201, 5202, 5203, 5204)
APP_BULK_FLOWS = 2
SOCKPERF_MPS = 500
HOST_CPU, GUEST_CPU = 0, 1
UNDERLAY_SERVER, UNDERLAY_CLIENT = "10.0.0.1", "10.0.0.100"
SUBNET = "10.42.0"
SERVER_C1 = f"{SUBNET}.1"
CLIENT_VXLAN = f"{SUBNET}.100"
# Names on the host carry the owner so that parallel testbeds never collide (IFNAMSIZ 15).
NAME = "e21ev"
WRK_LUA = Path(__file__).with_name("wrk_report.lua")
MODES = {"mode0": 0, "batch": 1, "sync": 2}
# prism-vnic rules for NIC steering: the priority flows to rx-0 as class high.
STEERING_RULES = [
    (10, f"inner proto udp dst-port {PRIO_PORT}"),
    (11, f"inner proto tcp dst-port {MEMCACHED_PORT}"),
    (12, f"inner proto tcp dst-port {HTTP_PORT}"),
    (13, f"proto udp dst-port {PRIO_PORT}"),  # experiment a's path without the overlay
]


@dataclass(frozen=True)
class Profile:
    rounds: int
    seconds: float
    experiments: tuple[str, ...]
    setups: tuple[str, ...]
    servers: tuple[str, ...]
    steering: tuple[bool, ...]
    flows: tuple[int, ...]
    kernels: tuple[str, ...] = ("prism", "vanilla")
    cal_delays_us: tuple[int, ...] = (300,)
    # Bulk flows under the calibration: 0 gives the harness's own precision; 2 (experiment
    # b's cell) shows how far a known effect is blurred by the bulk flows' queues.
    cal_flows: tuple[int, ...] = (0,)
    boots_per_kernel: int = 1
    # The two-guests setup is reported beside host-client (the method's), on the cells the
    # goals are about: busy server, steering on. False: every cell in both setups.
    two_guests_busy_only: bool = True
    # QEMU -icount for the guests (e.g. "shift=auto"): guest time from instructions executed,
    # to see whether it tightens the intervals (docs/EVAL.md); None: real time.
    icount: str | None = None
    # iperf3 -b for each bulk flow (e.g. "20M"); None: as fast as TCP goes. Paced below what
    # the server's one vCPU can take, the bulk flows still build queues in the receive path
    # but leave the vCPU idle part of the time: whether the modes' order depends on a
    # saturated server is the question this answers (docs/EVAL.md).
    bulk_rate: str | None = None
    # The priority flow's rate (sockperf --mps) in experiments a, b and cal; 0: no priority
    # flow, the bulk flows alone (what the modes cost the bulk flows without anything to
    # preempt for).
    priority_mps: int = SOCKPERF_MPS
    # Receive-path knobs of the PRISM kernel (net.core.prism_*, e.g. prism_napi_ahead=0),
    # set after boot: a run with a knob changed, beside one without, isolates what it costs.
    knobs: tuple[str, ...] = ()

    def describe(self) -> str:
        return (f"{self.rounds} rounds of {self.seconds:g} s turns, experiments "
                f"{','.join(self.experiments)}, {','.join(self.setups)}, servers "
                f"{','.join(self.servers)}, steering "
                f"{','.join('on' if s else 'off' for s in self.steering)}, flows "
                f"{','.join(map(str, self.flows))}"
                + (f" at {self.bulk_rate}bit/s each" if self.bulk_rate else "")
                + (f", priority flow at {self.priority_mps} msg/s"
                   if self.priority_mps != SOCKPERF_MPS else "")
                + (f", knobs {' '.join(self.knobs)}" if self.knobs else "")
                + f", ~{estimate_minutes(self):.0f} min")


PROFILES = {
    "quick": Profile(rounds=3, seconds=3, experiments=("b", "c", "d", "cal"),
                     setups=("host-client",), servers=("busy",), steering=(True,),
                     flows=(2,), cal_delays_us=(1000,), cal_flows=(0,)),
    "full": Profile(rounds=10, seconds=4, experiments=("a", "b", "c", "d", "cal"),
                    setups=("host-client", "two-guests"), servers=("idle", "busy"),
                    steering=(True, False), flows=(0, 1, 2, 4, 8),
                    cal_delays_us=(300, 1000), cal_flows=(0, 2), boots_per_kernel=2),
}
# The bulk flows of a cell run under all its turns: they start once (and get past slow start
# in BULK_WARMUP_S), each turn switches the mode in place and waits SETTLE_S for the frames
# queued under the previous mode to be served.
BULK_WARMUP_S = 1.5
SETTLE_S = 0.5
# Seconds a turn costs beyond its measurement (the mode switch, the settling, three guest
# shell commands under TCG), a cell beyond its turns (the bulk flows' start and end), and a
# boot with its setup; the estimate of --dry-run.
STEP_OVERHEAD_S = 4.0
# The guest's clock, the CPU time of ksoftirqd/0 (fields 14 and 15 of its stat, in USER_HZ
# ticks, filled in per boot) and the bytes the container received (see Bed.container_rx),
# then the receive path's counters (see KERNEL_COUNTERS): ksoftirqd's voluntary context
# switches (its wakeups: it sleeps once per batch of deferred work), CPU 0's softnet_stat,
# the CPU's time split, the NET_RX softirqs run, and /proc/net/prism's header and total
# (PRISM_LINE).
#
# /proc/net/prism's header and total on one line after a marker, so that the line is there,
# and not empty, on a kernel without PRISM too: an empty last line would be stripped from the
# console's output with its trailing newline, and every reading after it taken one line off.
PRISM_LINE = ("echo \"prism $(grep -e '^cpu ' -e '^total' /proc/net/prism 2>/dev/null "
              "| tr '\\n' ' ')\"")
CONTAINER_RX = ("cat /proc/uptime /proc/{ksoftirqd}/stat && "
                "ip netns exec c1 cat /sys/class/net/eth0/statistics/rx_bytes && "
                "grep -h ^voluntary_ctxt_switches /proc/{ksoftirqd}/status && "
                "head -n 1 /proc/net/softnet_stat && grep '^cpu ' /proc/stat && "
                "grep NET_RX /proc/softirqs && "
                f"{PRISM_LINE}")
READING_LINES = 8
USER_HZ = 100
CELL_OVERHEAD_S = 3.0
BOOT_S = 60.0


class EvalError(Exception):
    """An experiment step failed; the message says which and shows the output."""


def cells(profile: Profile, setup: str) -> list[results.Cell]:
    out = []
    servers, steerings = profile.servers, profile.steering
    if setup == "two-guests" and profile.two_guests_busy_only:
        servers = tuple(s for s in servers if s == "busy")
        steerings = tuple(s for s in steerings if s)
    for server in servers:
        for steering in steerings:
            def cell(exp: str, flows: int, path: str = "overlay") -> results.Cell:
                return results.Cell(setup, exp, server, steering, flows, path)
            if "a" in profile.experiments:
                out += [cell("a", 0, "overlay"), cell("a", 0, "host")]
            if "b" in profile.experiments:
                out += [cell("b", f) for f in profile.flows]
            if "c" in profile.experiments:
                out.append(cell("c", APP_BULK_FLOWS))
            if "d" in profile.experiments:
                out.append(cell("d", APP_BULK_FLOWS))
    return out


def calibration_cells(profile: Profile, setup: str) -> list[results.Cell]:
    """Experiment b's cells on the idle server, mode 0, where the probe saw a port-wide
    delay of 300 / 1000 us move the p50 by +148 / +500 us, and under bulk, where it moved it
    by +174 us instead of +150: the class delay must give the expected shift there too."""
    if "cal" not in profile.experiments:
        return []
    return [results.Cell(setup, "cal", "idle", True, flows, "overlay")
            for flows in profile.cal_flows]


def turns_per_round(profile: Profile, setup: str) -> tuple[int, int]:
    """(PRISM boot turns, vanilla boot turns) per round."""
    n = len(cells(profile, setup))
    cal = (1 + len(profile.cal_delays_us)) * len(calibration_cells(profile, setup))
    return ((3 * n + cal) if "prism" in profile.kernels else 0,
            n if "vanilla" in profile.kernels else 0)


def estimate_minutes(profile: Profile) -> float:
    total = 0.0
    for setup in profile.setups:
        prism, vanilla = turns_per_round(profile, setup)
        groups = len(cells(profile, setup))
        cal = len(calibration_cells(profile, setup))
        prism_groups = (groups + cal) if "prism" in profile.kernels else 0
        vanilla_groups = groups if "vanilla" in profile.kernels else 0
        turn = profile.seconds + STEP_OVERHEAD_S
        per_round = ((prism + vanilla) * turn
                     + (prism_groups + vanilla_groups) * CELL_OVERHEAD_S)
        boots = profile.boots_per_kernel * len(profile.kernels)
        total += profile.rounds * per_round + boots * BOOT_S
    return total / 60


def round_order(rnd: int) -> list[str]:
    """The modes of round r: 0, 1, 2 in even rounds, 2, 1, 0 in odd ones."""
    order = ["mode0", "batch", "sync"]
    return order if rnd % 2 == 0 else order[::-1]


def boot_plan(profile: Profile) -> list[tuple[str, list[int]]]:
    """[(kernel flavour, rounds)]: the rounds split over boots, PRISM and vanilla boots
    alternating, so that each vanilla round has its PRISM round measured near it in time."""
    per = math.ceil(profile.rounds / profile.boots_per_kernel)
    plan = []
    for b in range(profile.boots_per_kernel):
        rounds = list(range(b * per, min(profile.rounds, (b + 1) * per)))
        if not rounds:
            continue
        plan += [(kernel, rounds) for kernel in ("prism", "vanilla")
                 if kernel in profile.kernels]
    return plan


# --- the testbed -------------------------------------------------------------------------------


def _pin_process(pid: int, cpu: int) -> None:
    """Every thread of a process onto one host CPU."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), {cpu})
        except OSError:
            pass  # the thread ended meanwhile


def _series_of(kernel: Path) -> dict:
    """Flavour and hash from the cache directory guest-kernel/build puts a kernel in
    (<flavour>-<hash>/bzImage)."""
    m = re.match(r"(.+)-([0-9a-f]{8,})$", kernel.parent.name)
    if m:
        return {"flavour": m.group(1), "series_hash": m.group(2), "path": str(kernel)}
    return {"flavour": kernel.parent.name, "series_hash": "unknown", "path": str(kernel)}


class HostClient:
    """The client at native speed: commands in a host namespace, pinned to HOST_CPU."""

    def __init__(self, ns, tmp: Path):
        self.ns = ns
        self.tmp = tmp

    def argv(self, cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns.name, "taskset", "-c", str(HOST_CPU),
                "sh", "-c", cmd]

    def start(self, cmd: str) -> subprocess.Popen:
        """cmd in a session of its own, so that stop() reaches every process of it."""
        from ..procs import default_signals
        return subprocess.Popen(self.argv(cmd), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                preexec_fn=default_signals)

    def stop(self, proc: subprocess.Popen) -> str:
        """Interrupts a start()ed tool (iperf3 prints its report on SIGINT); its output."""
        try:
            os.killpg(proc.pid, signal.SIGINT)
        except ProcessLookupError:
            pass  # it ended by itself
        return self.finish(proc, timeout=60)

    def finish(self, proc: subprocess.Popen, timeout: float) -> str:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            raise EvalError(f"client command still running after {timeout:.0f} s:\n{out}")
        return out

    def run(self, cmd: str, timeout: float, container: bool = True) -> str:
        """Runs cmd; the namespace has both the underlay and the overlay (container is for
        the guest client's sake)."""
        return self.finish(self.start(cmd), timeout)

    def file(self, name: str) -> str:
        return str(self.tmp / name)

    def read(self, path: str) -> str:
        return Path(path).read_text()


class GuestClient:
    """The client in a second guest's container (the two-guests setup)."""

    def __init__(self, guest):
        self.guest = guest
        self._n = 0

    def start(self, cmd: str) -> str:
        self._n += 1
        name = f"evalbg{self._n}"
        self.guest.bg(name, f"ip netns exec c1 sh -c {shlex.quote(cmd)}")
        return name

    def finish(self, name: str, timeout: float) -> str:
        rc, out = self.guest.wait_bg(name, timeout)
        return out

    def stop(self, name: str) -> str:
        """Interrupts the start()ed bulk client (the only iperf3 client in this guest)."""
        self.guest.run("killall -INT iperf3 2>/dev/null; true")
        return self.finish(name, timeout=60)

    def run(self, cmd: str, timeout: float, container: bool = True) -> str:
        """Runs cmd in the container c1, or in the guest's own namespace (the underlay)."""
        prefix = "ip netns exec c1 " if container else ""
        rc, out = self.guest.run(f"{prefix}sh -c {shlex.quote(cmd)}", timeout=timeout)
        return out

    def file(self, name: str) -> str:
        return f"/tmp/{name}"

    def read(self, path: str) -> str:
        rc, out = self.guest.run(f"cat {path}", timeout=300)
        if rc != 0:
            raise OSError(f"cannot read {path} in {self.guest.name}: {out[-500:]}")
        return out


@dataclass
class Bed:
    """One boot's testbed: prism-vnic, the server guest, the client (host netns or guest)."""

    setup: str
    flavour: str
    kernel: Path
    initrd: Path
    out: Path
    icount: str | None = None
    bulk_rate: str | None = None
    priority_mps: int = SOCKPERF_MPS
    knobs: tuple[str, ...] = ()
    switch: object = None
    server: object = None
    client_guest: object = None
    client: object = None
    ns: object = None
    tap: str | None = None
    tmp: Path | None = None
    apps: bool = False  # memcached and nginx in the image (experiments c and d)
    bulk_turns: int = 0
    ksoftirqd: int | None = None
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    def up(self) -> None:
        from ..guest import Guest, GuestConfig
        from ..netns import HostNetns, create_tap
        from ..overlay import OverlayParams, overlay_steps
        from ..switch import Switch
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{NAME}-"))
        self.cleanup.append(lambda: shutil.rmtree(self.tmp, ignore_errors=True))
        ports: tuple[str, ...] = ("srv",) if self.setup == "host-client" else ("srv", "cli")
        taps = {}
        if self.setup == "host-client":
            self.tap = f"{NAME}{os.getpid() % 10000}"
            create_tap(self.tap)
            self.cleanup.append(self._delete_tap)
            taps = {"tap": self.tap}
        self.switch = Switch(self.out, ports=ports, queues=2, taps=taps,
                             extra_args=["--trust", "none"], sock_dir=self.tmp / "sock")
        self.switch.start()
        self.cleanup.append(self.switch.stop)
        _pin_process(self.switch.proc.pid, HOST_CPU)
        params = OverlayParams(subnet=SUBNET)
        cfg = GuestConfig(name=f"{NAME}-srv", socket=self.switch.sockets["srv"],
                          ip=f"{UNDERLAY_SERVER}/24", queues=2, smp=1, mem="1G",
                          kernel=str(self.kernel), initrd=str(self.initrd),
                          extra_qemu_args=["-icount", self.icount] if self.icount else [])
        self.server = Guest(cfg, self.out)
        self.server.start()
        self.cleanup.append(self.server.kill)
        if self.setup == "two-guests":
            ccfg = replace(cfg, name=f"{NAME}-cli", socket=self.switch.sockets["cli"],
                           ip=f"{UNDERLAY_CLIENT}/24")
            self.client_guest = Guest(ccfg, self.out)
            self.client_guest.start()
            self.cleanup.append(self.client_guest.kill)
        for guest, cpu in ((self.server, GUEST_CPU), (self.client_guest, HOST_CPU)):
            if guest is not None:
                guest.wait_ready()
                _pin_process(guest.pid, cpu)
        if self.setup == "host-client":
            self.ns = HostNetns(f"{NAME}-{os.getpid() % 10000}", self.tap,
                                f"{UNDERLAY_CLIENT}/24")
            self.ns.create()
            self.cleanup.append(self.ns.delete)
            for step in (f"ip link add vxlan42 type vxlan id 42 dstport 4789 local "
                         f"{UNDERLAY_CLIENT} remote {UNDERLAY_SERVER} dev eth0",
                         "ip link set vxlan42 mtu 1450 up",
                         f"ip addr add {CLIENT_VXLAN}/24 dev vxlan42"):
                self.ns.check(step)
            self.client = HostClient(self.ns, self.tmp)
        else:
            for step in overlay_steps(params, 2, UNDERLAY_CLIENT, [UNDERLAY_SERVER]):
                self.client_guest.check(step)
            self.client = GuestClient(self.client_guest)
        peers = [UNDERLAY_CLIENT]
        for step in overlay_steps(params, 1, UNDERLAY_SERVER, peers):
            self.server.check(step)
        self.servers_up()

    def _delete_tap(self) -> None:
        from ..netns import delete_tap
        delete_tap(self.tap)

    def srv(self, cmd: str, timeout: float = 120.0) -> str:
        return self.server.check(cmd, timeout=timeout)

    def servers_up(self) -> None:
        """The workloads in the container, the PRISM marks, and a first reachability check."""
        c1 = "ip netns exec c1"
        if self.flavour != "vanilla":
            from ..knobs import KNOBS, RX0_FLAG
            self.srv(f"echo 1 > {RX0_FLAG}")
            for port in (PRIO_PORT, MEMCACHED_PORT, HTTP_PORT):
                self.srv(f"echo 'add {port}' > {KNOBS}/prism_ports")
            for knob in self.knobs:
                name, value = knob.split("=", 1)
                self.srv(f"echo {shlex.quote(value)} > {KNOBS}/{name} && "
                         f"[ \"$(cat {KNOBS}/{name})\" = {shlex.quote(value)} ]")
        self.srv(f"( {c1} sockperf sr -i {SERVER_C1} -p {PRIO_PORT} > /tmp/sr.log 2>&1 & )")
        self.srv(f"( sockperf sr -i {UNDERLAY_SERVER} -p {PRIO_PORT} > /tmp/sr0.log 2>&1 & )")
        for port in BULK_PORTS:
            self.srv(f"{c1} iperf3 -s -p {port} -D")
        missing = self.server.run("for t in memcached nginx; do command -v $t >/dev/null "
                                  "|| echo missing $t; done")[1]
        self.apps = "missing" not in missing
        clients = ("memcaslap", "wrk")
        if self.setup == "host-client":
            self.apps = self.apps and all(shutil.which(t) for t in clients)
        else:
            rc, _ = self.client_guest.run(" && ".join(f"command -v {t}" for t in clients))
            self.apps = self.apps and rc == 0
        if self.apps:
            self.srv(f"{c1} memcached -u root -p {MEMCACHED_PORT} -U 0 -t 1 -d")
            # nginx makes its compiled-in temp and log directories before reading the config.
            self.srv("mkdir -p /tmp/www /tmp/nginx /var/lib/nginx /var/log/nginx && "
                     "echo hello > /tmp/www/index.html && "
                     "printf '%s\\n' 'user root; worker_processes 1; pid /tmp/nginx/pid;' "
                     "'error_log /tmp/nginx/error.log;' 'events { worker_connections 64; }' "
                     "'http { access_log off; client_body_temp_path /tmp/nginx;' "
                     f"'server {{ listen {SERVER_C1}:{HTTP_PORT}; root /tmp/www; }} }}' "
                     "> /tmp/nginx/nginx.conf")
            self.srv(f"{c1} nginx -c /tmp/nginx/nginx.conf")
        for port in BULK_PORTS:
            self.server.wait_until(f"{c1} netstat -ltn | grep -q ':{port} '", 120)
        # The client reaches the container across the overlay (ARP, FDB learning).
        deadline = time.monotonic() + 300
        while True:
            out = self.client.run(f"ping -c 1 -W 2 {SERVER_C1} >/dev/null && echo reach",
                                  timeout=30)
            if "reach" in out:
                break
            if time.monotonic() > deadline:
                raise EvalError(f"the client cannot reach {SERVER_C1} across the overlay")

    def set_server(self, busy: bool) -> None:
        """A CPU hog in the container on the server's vCPU (the paper's busy server)."""
        self.srv("[ -s /tmp/hog.pid ] && kill $(cat /tmp/hog.pid) 2>/dev/null; "
                 "rm -f /tmp/hog.pid; true")
        if busy:
            self.srv("( ip netns exec c1 sh -c 'echo $$ > /tmp/hog.pid; "
                     "while :; do :; done' > /dev/null 2>&1 & )")

    def set_steering(self, on: bool) -> None:
        listing = self.switch.rule("list", "srv")
        for loc, text in STEERING_RULES:
            present = re.search(rf"\bloc {loc}\b", listing) is not None
            if on and not present:
                self.switch.rule("add", "srv", "loc", str(loc), *text.split(), "action",
                                 "queue", "0", "class", "high")
            if not on and present:
                self.switch.rule("del", "srv", str(loc))

    def bulk_port(self) -> int:
        self.bulk_turns += 1
        return BULK_PORTS[self.bulk_turns % len(BULK_PORTS)]

    def high_packets(self) -> int:
        return self.nic_view()[0]

    def nic_view(self) -> tuple[int, float | None]:
        """(frames prism-vnic classified high towards the server, the high class's median
        residence on rx-0 in us since reset_residence(), None without frames)."""
        stats = self.switch.stats() or {}
        for port in stats.get("ports", []):
            if port.get("name") == "srv":
                high = int(port.get("counters", {}).get("rx_high_packets", 0))
                queues = port.get("queues") or [{}]
                res = ((queues[0].get("residence") or {}).get("high") or {})
                p50 = res.get("p50_ns") / 1000 if res.get("count") else None
                return high, p50
        return 0, None

    def reset_residence(self) -> None:
        self.switch.control_command("residence", "--port", "srv", "--reset")

    def switch_mode(self, variant: str) -> tuple[RxReading, RxReading]:
        """Sets the mode (on both guests in two-guests) and waits SETTLE_S in the server for
        what was queued under the previous mode to be served, with container_rx() read just
        before and just after, in one trip over the serial console: (before, after)."""
        from ..knobs import mode_command
        if variant != "vanilla" and self.client_guest is not None:
            self.client_guest.check(mode_command(MODES[variant]))
        switch = "" if variant == "vanilla" else f"{mode_command(MODES[variant])} && "
        rx = self.container_rx_command()
        out = self.srv(f"{rx} && {switch}sleep {SETTLE_S} && {rx}")
        before, after = rx_readings(out, 2)
        return before, after

    def container_rx(self) -> RxReading:
        """The guest's clock, ksoftirqd/0's CPU time and the bytes the container c1's
        interface received: the bulk throughput as the container sees it, timed by the guest
        so that the serial console's delays do not enter it."""
        out = self.srv(self.container_rx_command())
        return rx_readings(out, 1)[0]

    def container_rx_command(self) -> str:
        if self.ksoftirqd is None:
            self.ksoftirqd = int(self.srv(
                "for p in /proc/[0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = ksoftirqd/0 ] "
                "&& basename $p; done; true").split()[-1])
        return CONTAINER_RX.format(ksoftirqd=self.ksoftirqd)

    def set_delay(self, delay_us: int) -> None:
        self.switch.control_command("link", "srv", "--delay-us", str(delay_us),
                                    "--class", "high")

    def down(self) -> None:
        for step in reversed(self.cleanup):
            try:
                step()
            except Exception as e:  # tear down the rest whatever one step did
                print(f"eval: cleanup step failed: {e!r}", file=sys.stderr)
        self.cleanup.clear()


# --- turns -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One turn of a cell: the kernel variant (a PRISM mode, or the vanilla kernel) and the
    delay prism-vnic adds to the high class (the calibration's known effect)."""

    variant: str
    delay_us: int = 0


def step_tag(cell: results.Cell, step: Step, rnd: int) -> str:
    """The name of a turn's raw files (raw/TAG.*)."""
    return f"{cell.slug()}-{step.variant}-d{step.delay_us}-r{rnd}"


def _probe(bed: Bed, cell: results.Cell, seconds: float, tag: str, raw_dir: Path
           ) -> tuple[dict, dict, list[float]]:
    """The priority workload of one turn: (metrics, raw files, latency samples)."""
    client = bed.client
    raw: dict[str, str] = {}
    samples: list[float] = []
    if cell.experiment in ("a", "b", "cal") and not bed.priority_mps:
        time.sleep(seconds)  # the bulk flows alone
        metrics = {}
    elif cell.experiment in ("a", "b", "cal"):
        target = SERVER_C1 if cell.path == "overlay" else UNDERLAY_SERVER
        log = client.file(f"{tag}.csv")
        out = client.run(f"rm -f {log}; sockperf ping-pong -i {target} -p {PRIO_PORT} "
                         f"--mps {bed.priority_mps} -t {seconds:g} --full-log {log}",
                         timeout=seconds + 120, container=cell.path == "overlay")
        (raw_dir / f"{tag}.sockperf.txt").write_text(out)
        raw["sockperf"] = f"raw/{tag}.sockperf.txt"
        if parsers.sockperf_no_reply(out):
            # No reply in the turn's measured part (none at all, or a request lost and
            # ping-pong waiting for it to the end): a turn without latencies (the analysis
            # pairs the rounds that have them), counted, rather than the end of the run.
            return {"no_reply": 1}, raw, samples
        try:
            samples = parsers.sockperf_full_log(client.read(log))
        except (parsers.ParseError, OSError) as e:
            raise EvalError(f"{tag}: {e}; sockperf printed:\n{out[-2000:]}") from e
        metrics = parsers.latency_metrics(samples)
        metrics["dropped"] = parse_sockperf(out).get("dropped", 0)
        metrics["no_reply"] = 0
    elif cell.experiment == "c":
        out = client.run(f"memcaslap -s {SERVER_C1}:{MEMCACHED_PORT} -T 1 -c 1 "
                         f"-t {int(seconds)}s -S {int(seconds)}s", timeout=seconds + 120)
        (raw_dir / f"{tag}.memcaslap.txt").write_text(out)
        raw["memcaslap"] = f"raw/{tag}.memcaslap.txt"
        parsed = parsers.memcaslap(out)
        metrics = {k: v for k, v in parsed["get"].items() if k != "count"}
        metrics["set_mean_us"] = parsed.get("set", {}).get("mean_us", math.nan)
        metrics["ops_per_s"] = parsed["ops_per_s"]
    elif cell.experiment == "d":
        lua = client.file("wrk_report.lua")
        if isinstance(client, HostClient):
            shutil.copy(WRK_LUA, lua)
        else:
            encoded = base64.b64encode(WRK_LUA.read_bytes()).decode()
            bed.client_guest.check(f"echo {encoded} | base64 -d > {lua}")
        out = client.run(f"wrk -t1 -c1 -d{seconds:g}s --latency -s {lua} "
                         f"http://{SERVER_C1}:{HTTP_PORT}/index.html", timeout=seconds + 120)
        (raw_dir / f"{tag}.wrk.txt").write_text(out)
        raw["wrk"] = f"raw/{tag}.wrk.txt"
        metrics = parsers.wrk(out)
    else:
        raise EvalError(f"unknown experiment {cell.experiment!r}")
    return metrics, raw, samples


@dataclass(frozen=True)
class RxReading:
    uptime: float
    ksoftirqd_ticks: int
    rx_bytes: int
    counters: dict[str, int] = field(default_factory=dict)


# The receive path's counters a turn records (their increase during it), beside the bulk
# throughput: what PRISM's modes make the server's CPU do per byte that mode 0 does not.
KERNEL_COUNTERS = ("ksoftirqd_wakeups", "softnet_processed", "time_squeeze", "net_rx_softirqs",
                   "cpu_softirq_ticks", "cpu_idle_ticks", "prism_preemptions", "prism_yields",
                   "prism_empty_runs", "prism_napi_ahead", "prism_prio_waits",
                   "prism_prio_waited", "prism_prio_unmatched")


def rx_readings(out: str, count: int) -> list[RxReading]:
    """The last `count` readings of CONTAINER_RX in a guest's output, in order."""
    lines = out.strip().splitlines()[-count * READING_LINES:]
    if len(lines) < count * READING_LINES:
        raise EvalError(f"expected {count} readings of {READING_LINES} lines:\n{out[-2000:]}")
    return [_rx_reading(lines[i * READING_LINES:(i + 1) * READING_LINES]) for i in range(count)]


def _rx_reading(lines: list[str]) -> RxReading:
    """CONTAINER_RX's lines: /proc/uptime, ksoftirqd's stat, the byte counter, then (when
    given) the counters of KERNEL_COUNTERS; a kernel without PRISM has no prism_* ones."""
    stat = lines[1].rsplit(")", 1)[1].split()  # fields after the command name
    counters: dict[str, int] = {}
    if len(lines) >= READING_LINES:
        counters["ksoftirqd_wakeups"] = int(lines[3].split()[-1])
        softnet = [int(x, 16) for x in lines[4].split()]
        counters["softnet_processed"], counters["time_squeeze"] = softnet[0], softnet[2]
        cpu = [int(x) for x in lines[5].split()[1:]]
        counters["cpu_idle_ticks"], counters["cpu_softirq_ticks"] = cpu[3], cpu[6]
        counters["net_rx_softirqs"] = int(lines[6].split()[1])
        prism = lines[7].split()
        if prism[:1] == ["prism"]:
            prism = prism[1:]
        if "total" in prism:
            at = prism.index("total")
            names, values = prism[1:at], prism[at + 1:]
            for name, value in zip(names, values):
                if f"prism_{name}" in KERNEL_COUNTERS:
                    counters[f"prism_{name}"] = int(value)
    return RxReading(float(lines[0].split()[0]), int(stat[11]) + int(stat[12]), int(lines[2]),
                     counters)


def turn_counters(start: RxReading, end: RxReading) -> dict[str, float]:
    """What the server's receive path did during a turn: the increase of each counter of
    KERNEL_COUNTERS, and the shares of its CPU that ksoftirqd took (how much of the receive
    path ran deferred, scheduled against the applications, rather than on interrupt exit),
    that softirqs took (both ways), and that stayed idle; with the kernel's wait counters
    on, results.WAIT_METRIC."""
    seconds = end.uptime - start.uptime
    out: dict[str, float] = {
        "ksoftirqd_cpu": (end.ksoftirqd_ticks - start.ksoftirqd_ticks) / USER_HZ / seconds}
    for name in KERNEL_COUNTERS:
        if name in end.counters and name in start.counters:
            out[name] = end.counters[name] - start.counters[name]
    for share, ticks in (("softirq_cpu", "cpu_softirq_ticks"), ("idle_cpu", "cpu_idle_ticks")):
        if ticks in out:
            out[share] = out[ticks] / USER_HZ / seconds
    if out.get("prism_prio_waits"):
        out[results.WAIT_METRIC] = 1 + out["prism_prio_waited"] / out["prism_prio_waits"]
    return out


def bulk_seconds(steps: int, seconds: float) -> float:
    """How long a cell's bulk flows must last: the warm-up, every step's measurement and its
    switch, with room for a slow guest shell; they are stopped when the cell ends."""
    return BULK_WARMUP_S + steps * (seconds + STEP_OVERHEAD_S * 4) + 30


def bulk_command(port: int, flows: int, secs: float, rate: str | None) -> str:
    """The client's iperf3 for a cell's bulk flows (`rate`: iperf3 -b, for each flow)."""
    paced = f"-b {rate} " if rate else ""
    return (f"iperf3 -c {SERVER_C1} -p {port} -P {flows} {paced}-t {secs:.0f} -i 1 -J "
            "2>/dev/null")


def measure_cell(bed: Bed, cell: results.Cell, steps: list[Step], seconds: float, rnd: int,
                 raw_dir: Path) -> Iterator[tuple[Step, str, dict]]:
    """A cell's turns in one go: the bulk flows start once and run under every step, and each
    step switches the mode (or the delay) in place and measures. Starting the flows once per
    cell instead of once per turn is what makes the full profile fit in hours, and it puts
    every mode under the same, already established, bulk flows.

    Yields (step, tag, {"metrics", "raw", "samples"}) as each turn ends. The bulk
    throughput of a turn is the bytes that reached the container's interface during its
    measurement (TCP payload with its headers, after every stage of the receive path), read
    in the guest with the mode switch."""
    client = bed.client
    bulk = None
    # The flavour in the name: a vanilla boot's round r must not overwrite the PRISM boot's.
    base = f"{cell.slug()}-{bed.flavour}-r{rnd}"
    if cell.flows:
        bulk = client.start(bulk_command(bed.bulk_port(), cell.flows,
                                         bulk_seconds(len(steps), seconds), bed.bulk_rate))
        time.sleep(BULK_WARMUP_S)  # past slow start
    def finished(turn: tuple, end: RxReading) -> tuple[Step, str, dict]:
        step, tag, metrics, raw, samples, start = turn
        if bulk is not None:
            metrics["bulk_mbps"] = ((end.rx_bytes - start.rx_bytes) * 8
                                    / (end.uptime - start.uptime) / 1e6)
        metrics.update(turn_counters(start, end))
        return step, tag, {"metrics": metrics, "raw": raw, "samples": samples}

    pending = None
    try:
        for step in steps:
            tag = step_tag(cell, step, rnd)
            if cell.experiment == "cal":
                bed.set_delay(step.delay_us)
            # One trip to the guest ends the last turn's count and starts this one's.
            end, start = bed.switch_mode(step.variant)
            if pending is not None:
                yield finished(pending, end)
            if cell.experiment == "cal":
                bed.reset_residence()
            high0 = bed.high_packets()
            metrics, raw, samples = _probe(bed, cell, seconds, tag, raw_dir)
            # Whether the NIC steered: frames prism-vnic classified high towards the server.
            high1, residence = bed.nic_view()
            metrics["nic_high_packets"] = high1 - high0
            if cell.experiment == "cal" and residence is not None:
                # The delay the NIC applied, as it measured it: the calibration's known effect.
                metrics["nic_high_residence_p50_us"] = residence
            pending = (step, tag, metrics, raw, samples, start)
        if pending is not None:
            end = bed.container_rx()
            if cell.experiment == "cal":
                bed.set_delay(0)
            yield finished(pending, end)
    finally:
        if bulk is not None:
            out = client.stop(bulk)
            (raw_dir / f"{base}.iperf3.json").write_text(out)


def round_groups(flavour: str, apps: bool, profile: Profile, rnd: int, setup: str
                 ) -> Iterator[tuple[results.Cell, list[Step]]]:
    """(cell, steps) in the order round r of a `flavour` boot measures them (`apps`: the
    image has the workloads of experiments c and d); groups cells by server state and
    steering, so the hog and the rules change only between groups."""
    variants = round_order(rnd) if flavour != "vanilla" else ["vanilla"]
    for cell in cells(profile, setup):
        if not apps and cell.experiment in ("c", "d"):
            continue
        yield cell, [Step(v) for v in variants]
    if flavour == "vanilla":
        return
    delays = [0, *profile.cal_delays_us]
    for cal in calibration_cells(profile, setup):
        yield cal, [Step("mode0", d) for d in (delays if rnd % 2 == 0 else delays[::-1])]


def workload_image(progress: Callable[[str], None]) -> Path:
    """The guest image with the paper's workloads (sockperf, iperf3, memcached, nginx, and
    for the two-guests client memcaslap and wrk). Without them (an images/build-initramfs
    that has no --workloads yet), the sockperf image, and experiments c and d are skipped."""
    from ..image import ImageError, build_initramfs
    sockperf = shutil.which("sockperf")
    if sockperf is None:
        raise EvalError("sockperf not found on the host: run .ci/install-deps")
    try:
        return build_initramfs(extra_bins=[sockperf], workloads=True)
    except ImageError as e:
        progress(f"eval: no image with the workloads ({str(e).strip().splitlines()[-1]}); "
                 f"experiments c and d are skipped")
        return build_initramfs(extra_bins=[sockperf])


def plan_meta(profile: Profile, kernels: dict[str, Path], initrd: Path) -> dict:
    """What run.json's meta records about the plan and the versions: everything a resumed
    session must match (resume.differences)."""
    return {"profile": profile.describe(), "rounds": profile.rounds,
            "turn_seconds": profile.seconds, "plan": resume.plan_of(profile),
            "prism_vnic_commit": _git_commit(), "kernels": {k: _series_of(p)
                                                          for k, p in kernels.items()},
            "initrd": str(initrd), "settings": {
                "sockperf_mps": profile.priority_mps, "knobs": profile.knobs,
                "queues": 2, "trust": "none",
                "server_vcpus": 1, "server_cpu": GUEST_CPU, "client_cpu": HOST_CPU,
                "vni": 42, "dstport": 4789, "veth_mtu": 1450, "steering_rules": STEERING_RULES,
                "app_bulk_flows": APP_BULK_FLOWS, "cal_delays_us": profile.cal_delays_us,
                "cal_flows": profile.cal_flows,
                "icount": profile.icount, "bulk_rate": profile.bulk_rate},
            "topology": {"host-client": "server guest + host netns client on a tap port",
                         "two-guests": "server guest + client guest"},
            "machine": _machine()}


def _machine() -> dict:
    """The facts of the machine a resumed session must share (resume.SAME_MACHINE)."""
    return {"cpus": os.cpu_count(), "sched_autogroup": _sched_autogroup()}


def segments(profile: Profile) -> list[tuple[str, int, str, list[int]]]:
    """(setup, boot, kernel flavour, rounds): every boot of the run, in the order it runs."""
    return [(setup, boot, flavour, rounds) for setup in profile.setups
            for boot, (flavour, rounds) in enumerate(boot_plan(profile))]


def round_raw_names(profile: Profile, segment: dict, rnd: int) -> list[str]:
    """Glob patterns, under raw/, of the files one round of a segment writes (each turn's
    tool output and samples, each cell's bulk report)."""
    names = []
    for cell, steps in round_groups(segment["flavour"], True, profile, rnd, segment["setup"]):
        names.append(f"{cell.slug()}-{segment['flavour']}-r{rnd}.iperf3.json")
        names += [f"{step_tag(cell, step, rnd)}.*" for step in steps]
    return names


def open_run(profile: Profile, out: Path, resuming: bool) -> tuple[dict | None, list[dict]]:
    """The recorded meta and turns of the run to resume (None, [] for a fresh one), after
    the checks that need no kernel: a fresh run never overwrites one, a resumed one must
    exist, have the same plan and run the same commit."""
    if not resuming:
        if (out / "run.json").exists():
            raise resume.ResumeRefused(
                f"{out} holds a run already: --resume to continue it, or another --out")
        return None, []
    if not (out / "run.json").exists():
        raise resume.ResumeRefused(f"{out} has no run.json: nothing to resume")
    meta, turns = results.read_run(out)
    now = {"plan": resume.plan_of(profile)}
    if resume.left(meta) or not meta.get("finished"):
        # Only a session that measures must run the same code; a finished run is left as
        # it is by any checkout that asks for the same plan.
        now["prism_vnic_commit"] = _git_commit()
    problems = resume.differences(meta, now)
    if problems:
        raise resume.ResumeRefused(_refusal(out, problems))
    return meta, turns


def _refusal(out: Path, problems: list[str]) -> str:
    return (f"cannot resume the run in {out}: its turns would not be comparable with this "
            f"session's:\n  " + "\n  ".join(problems))


def run(profile: Profile, out: Path, *, kernel_specs: dict[str, str] | None = None,
        initrd: Path | None = None, progress: Callable[[str], None] = print,
        resuming: bool = False) -> dict | None:
    """Runs the profile, or what is left of the run in `out` (`resuming`); writes the
    result directory as it goes; returns the summary (None: a resumed run that was
    complete already, left as it was)."""
    from ..kernel import resolve_kernel
    from .cli import finish_run
    recorded, turns = open_run(profile, out, resuming)
    if recorded is not None and not resume.left(recorded) and recorded.get("finished"):
        progress(f"eval: {out}: every round is complete; nothing to resume")
        return None
    out.mkdir(parents=True, exist_ok=True)
    raw_dir = out / "raw"
    raw_dir.mkdir(exist_ok=True)
    started = time.monotonic()
    progress("eval: kernels and image (built if missing; a cold kernel build takes long)")
    specs = kernel_specs or {}
    kernels = {k: resolve_kernel(specs.get(k, k)) for k in profile.kernels}
    initrd = initrd or workload_image(progress)
    meta = plan_meta(profile, kernels, initrd)
    if recorded is None:
        meta.update({"started": _now(), "segments": resume.new_segments(segments(profile))})
        meta["machine"]["loadavg_start"] = _loadavg()
    else:
        problems = resume.differences(recorded, meta)
        if problems:
            raise resume.ResumeRefused(_refusal(out, problems))
        meta = recorded
        turns = resume.drop_unfinished(out, meta, turns,
                                       lambda seg, rnd: round_raw_names(profile, seg, rnd))
    session = resume.open_session(meta, _now(), _loadavg(), _sched_autogroup())
    if meta["machine"]["sched_autogroup"] == "1":
        progress("eval: note: kernel.sched_autogroup_enabled is 1: another session's jobs get "
                 "an equal share of each CPU whatever their nice value or SCHED_IDLE; on a "
                 "shared machine run `sysctl -w kernel.sched_autogroup_enabled=0` first "
                 "(docs/EVAL.md)")

    def record() -> None:
        meta["sessions"][session]["last"] = _now()
        results.write_run(out, meta, turns)

    todo = resume.left(meta)
    if recorded is not None:
        progress(f"eval: resuming {out} (session {session}): "
                 + (resume.describe_left(todo, ", ") or "analysis only"))
    record()
    for seg, rounds in todo:
        setup, boot, flavour = seg["setup"], seg["boot"], seg["flavour"]
        logs = out / "logs" / (f"{setup}-{boot}" if session == 0
                               else f"{setup}-{boot}-session-{session}")
        bed = Bed(setup, flavour, kernels[flavour], initrd, logs,
                  icount=profile.icount, bulk_rate=profile.bulk_rate,
                  priority_mps=profile.priority_mps, knobs=profile.knobs)
        t0 = time.monotonic()
        seg["boots"].append({"session": session, "started": _now()})
        record()  # a boot that fails is on record too
        progress(f"eval: {setup}: booting {flavour} (boot {boot})")
        try:
            bed.up()
            progress(f"eval: {setup}: {flavour} up in {time.monotonic() - t0:.0f} s")
            apps = meta.setdefault("apps", {}).setdefault(setup, bed.apps)
            if apps != bed.apps:
                raise EvalError(f"{setup}: this session's image or client "
                                f"{'has' if bed.apps else 'lacks'} memcached/nginx and "
                                f"memcaslap/wrk, the run's earlier sessions "
                                f"{'had' if apps else 'lacked'} them: experiments c and d "
                                f"would be missing from some rounds")
            skipped = sorted({c.experiment for c in cells(profile, setup)
                              if c.experiment in ("c", "d")} if not bed.apps else set())
            if skipped:
                note = (f"{setup}/{flavour}: experiments {','.join(skipped)} skipped: no "
                        f"memcached/nginx in the image or no memcaslap/wrk on the client")
                if note not in meta.get("skipped", []):
                    meta.setdefault("skipped", []).append(note)
                progress(f"eval: {note}")
            state: tuple | None = None
            for rnd in rounds:
                entry = {"round": rnd, "session": session, "started": _now()}
                seg["round_log"].append(entry)
                for cell, steps in round_groups(bed.flavour, bed.apps, profile, rnd, setup):
                    if state != (cell.server, cell.steering):
                        bed.set_server(cell.server == "busy")
                        bed.set_steering(cell.steering)
                        state = (cell.server, cell.steering)
                    for step, tag, res in measure_cell(bed, cell, steps, profile.seconds,
                                                       rnd, raw_dir):
                        (raw_dir / f"{tag}.samples.json").write_text(
                            json.dumps(res["samples"]))
                        turns.append(results.new_turn(
                            cell, step.variant, rnd, boot, res["metrics"], res["raw"],
                            delay_us=step.delay_us, samples=f"raw/{tag}.samples.json",
                            at=_now()))
                        record()
                        m = res["metrics"]
                        progress(f"eval: {tag}: p50 {m.get('p50_us', math.nan):.0f} us, "
                                 f"p99 {m.get('p99_us', math.nan):.0f} us"
                                 + (f", bulk {m['bulk_mbps']:.0f} Mbit/s"
                                    if "bulk_mbps" in m else ""))
                entry["finished"] = _now()
                record()
        finally:
            bed.down()
    meta["finished"] = _now()
    meta["sessions"][session]["loadavg_end"] = meta["machine"]["loadavg_end"] = _loadavg()
    meta["sessions"][session]["last"] = meta["finished"]
    span = resume.summary(meta)
    meta["wall_seconds"] = round(span["session_hours"] * 3600 if span
                                 else time.monotonic() - started)
    return finish_run(out, meta, turns)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _sched_autogroup() -> str:
    """kernel.sched_autogroup_enabled: with 1, CFS shares each CPU between sessions first,
    so the nice value and SCHED_IDLE of other sessions' jobs no longer yield to the run."""
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip()
    except OSError:
        return "unknown"


def _git_commit() -> str:
    res = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                         capture_output=True, text=True)
    return res.stdout.strip() or "unknown"


def run_from_args(args) -> int:
    profile = PROFILES[args.profile]
    overrides = {k: getattr(args, k) for k in ("rounds", "seconds") if getattr(args, k)}
    for name in ("experiments", "setups", "servers", "flows"):
        if getattr(args, name):
            overrides[name] = tuple(getattr(args, name))
    if args.steering:
        overrides["steering"] = tuple(s == "on" for s in args.steering)
    if args.kernels:
        overrides["kernels"] = tuple(args.kernels)
    if args.icount:
        overrides["icount"] = args.icount
    if args.bulk_rate:
        overrides["bulk_rate"] = args.bulk_rate
    if args.priority_mps is not None:
        overrides["priority_mps"] = args.priority_mps
    if args.knob:
        overrides["knobs"] = tuple(args.knob)
    profile = replace(profile, **overrides)
    if not profile.kernels or set(profile.kernels) - {"prism", "vanilla"}:
        print(f"benches/eval: --kernels takes prism and/or vanilla, not {args.kernels}",
              file=sys.stderr)
        return 2
    bad = set(profile.experiments) - set(results.EXPERIMENTS)
    if bad:
        print(f"benches/eval: unknown experiments {sorted(bad)}; known: "
              f"{','.join(results.EXPERIMENTS)}", file=sys.stderr)
        return 2
    if args.resume and not args.out:
        print("benches/eval: --resume needs --out DIR, the run to continue", file=sys.stderr)
        return 2
    if args.dry_run and args.resume:
        try:
            recorded, _ = open_run(profile, args.out, resuming=True)
        except resume.ResumeRefused as e:
            print(f"benches/eval: {e}", file=sys.stderr)
            return 2
        todo = resume.left(recorded)
        print(f"{args.out}: {len(recorded.get('sessions', []))} session(s) so far; left: "
              + (resume.describe_left(todo, "; ") or "nothing"))
        return 0
    if args.dry_run:
        print(profile.describe())
        for setup in profile.setups:
            prism, vanilla = turns_per_round(profile, setup)
            print(f"{setup}: {len(cells(profile, setup))} cells, {prism} PRISM turns and "
                  f"{vanilla} vanilla turns per round; boots {boot_plan(profile)}")
        return 0
    if "host-client" in profile.setups:
        from ..hosttools import eval_host_client, missing
        lacking = missing(eval_host_client(profile.experiments))
        if lacking:
            print(f"benches/eval: the host-client setup runs these on the host, which lacks "
                  f"{', '.join(lacking)}: run .ci/install-deps", file=sys.stderr)
            return 2
    out = args.out or REPO / "benches" / "out" / \
        f"eval-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    specs = {k: v for k, v in (("prism", args.prism_kernel),
                               ("vanilla", args.vanilla_kernel)) if v}
    # SIGTERM ends a run like Ctrl-C: the testbed's cleanup (guests, prism-vnic, tap,
    # namespace, temp dir) runs on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        summary = run(profile, out, kernel_specs=specs, initrd=args.initrd,
                      resuming=args.resume)
    except resume.ResumeRefused as e:
        print(f"benches/eval: {e}", file=sys.stderr)
        return 2
    if summary is None:
        print(f"eval: report {out / 'report.md'} (unchanged)")
        return 0
    print(f"eval: report {out / 'report.md'}")
    for name, goal in summary["goals"].items():
        state = {True: "met", False: "NOT met", None: "not measured"}[goal["met"]]
        print(f"eval: goal {name}: {state} ({goal['measured']} measured)")
    return 0
