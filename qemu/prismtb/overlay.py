"""The container overlay of the PRISM experiment, and two PRISM guests on prism-vnic with it
(tests/overlay, benches/prism_latency.py).

One "host" per guest (or host netns), the underlay being its eth0 on a prism-vnic port:

    host N (eth0 10.0.0.N/24)
      vxlan0 (id VNI, dstport 4789, remote: the other hosts) --+
                                                               br0
      veth "vcK" (MTU 1450, GRO off) -------------------------+
        peer eth0 in netns cK: 192.168.42.A/24 (MTU 1450, GRO off)

with K = 1..containers per host and A = N + 16 (K - 1) (OverlayParams). RPS and threaded
NAPI stay off (the kernel defaults), as prism.rst requires.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import image, kernel
from .guest import Guest, GuestConfig, GuestError
from .knobs import DMESG_BAD, KNOBS, RX0_FLAG, mode_command
from .parsers import iperf_udp_summary, parse_sockperf, prism_counters
from .switch import Switch, SwitchError

__all__ = ["CONTAINER", "KNOBS", "QUEUES", "RX0_FLAG", "UNDERLAY", "GuestError", "Overlay",
           "OverlayError", "OverlayParams", "SwitchError", "build_initramfs", "build_kernel",
           "container_ip", "iperf_udp_summary", "overlay_steps", "parse_sockperf"]

QUEUES = 4
UNDERLAY = {1: "10.0.0.1", 2: "10.0.0.2"}
CONTAINER = {1: "192.168.42.1", 2: "192.168.42.2"}
# Hosts per overlay at most: container addresses are N + HOSTS_MAX * (K - 1).
HOSTS_MAX = 16


class OverlayError(Exception):
    """The overlay could not be built or driven; the message says which step and shows output."""


@dataclass(frozen=True)
class OverlayParams:
    """The overlay's parameters: containers per host, VXLAN id and port, the containers'
    /24 (first three octets) and the veth MTU."""
    containers: int = 1
    vni: int = 42
    dstport: int = 4789
    subnet: str = "192.168.42"
    mtu: int = 1450

    def __post_init__(self) -> None:
        if not 1 <= self.containers <= 254 // HOSTS_MAX:
            raise ValueError(f"containers per host must be 1..{254 // HOSTS_MAX}, not {self.containers}")
        if not 0 <= self.vni < 1 << 24:
            raise ValueError(f"VNI must be 0..16777215, not {self.vni}")
        if not 1 <= self.dstport <= 65535:
            raise ValueError(f"dstport must be 1..65535, not {self.dstport}")
        octets = self.subnet.split(".")
        if len(octets) != 3 or not all(o.isdigit() and int(o) < 256 for o in octets):
            raise ValueError(f"subnet must be three octets like 192.168.42, not {self.subnet!r}")


def container_ip(params: OverlayParams, host: int, container: int) -> str:
    """The address of container K (1-based) of host N (1-based)."""
    if not 1 <= host <= HOSTS_MAX:
        raise ValueError(f"host number must be 1..{HOSTS_MAX}, not {host}")
    return f"{params.subnet}.{host + HOSTS_MAX * (container - 1)}"


def overlay_steps(params: OverlayParams, host: int, local: str, peers: list[str],
                  device: str = "eth0") -> list[str]:
    """The shell commands that build the overlay on host N whose underlay address is local
    on device, with the other hosts' underlay addresses peers."""
    if peers and len(peers) == 1:
        vxlan = (f"ip link add vxlan0 type vxlan id {params.vni} dstport {params.dstport} "
                 f"local {local} remote {peers[0]} dev {device}")
    else:
        vxlan = (f"ip link add vxlan0 type vxlan id {params.vni} dstport {params.dstport} "
                 f"local {local} dev {device}")
    steps = ["ip link add br0 type bridge", "ip link set br0 up", vxlan]
    if len(peers) > 1:
        # Head-end replication: broadcasts and unknown unicast go to every peer.
        steps += [f"bridge fdb append 00:00:00:00:00:00 dev vxlan0 dst {peer}" for peer in peers]
    steps.append("ip link set vxlan0 master br0 up")
    for k in range(1, params.containers + 1):
        steps += [
            f"ip netns add c{k}",
            f"ip link add vc{k} type veth peer name eth0 netns c{k}",
            f"ip link set vc{k} mtu {params.mtu} master br0 up",
            f"ethtool -K vc{k} gro off",
            f"ip -n c{k} link set lo up",
            f"ip -n c{k} link set eth0 mtu {params.mtu} up",
            f"ip -n c{k} addr add {container_ip(params, host, k)}/24 dev eth0",
            f"ip netns exec c{k} ethtool -K eth0 gro off",
        ]
    return steps


def build_kernel(flavour: str, debug: bool = False) -> Path:
    """guest-kernel/build --flavour FLAVOUR [--debug] (cached)."""
    try:
        return kernel.build_kernel(flavour, debug=debug)
    except kernel.KernelError as e:
        raise OverlayError(str(e)) from e


def build_initramfs() -> str:
    """The overlay guests' image (prismtb.image.overlay_image)."""
    try:
        return str(image.overlay_image())
    except image.ImageError as e:
        raise OverlayError(str(e)) from e


class Overlay:
    """prism-vnic plus two guests with the container overlay; start() builds it all, stop()
    tears it down (guests SIGKILLed after saving diagnostics, backend SIGTERMed).

    params: the overlay's parameters; switch_args: more prism-vnic flags (--link-rate,
    --rules, ...); pin: host CPUs per guest number, each guest's vCPU threads pinned to them
    round-robin after boot."""

    def __init__(self, out_dir: Path, kernel: Path, initrd: str, smp: int = 2,
                 boot_timeout: float = 600.0, params: OverlayParams | None = None,
                 switch_args: list[str] | None = None, pin: dict[int, list[int]] | None = None,
                 mem: str = "1G"):
        self.out_dir = out_dir
        self.kernel = kernel
        self.initrd = initrd
        self.smp = smp
        self.mem = mem
        self.boot_timeout = boot_timeout
        self.params = params or OverlayParams()
        self.switch_args = list(switch_args or [])
        self.pin = dict(pin or {})
        self.switch: Switch | None = None
        self.guests: dict[int, Guest] = {}

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.switch = Switch(self.out_dir, queues=QUEUES, extra_args=self.switch_args)
        self.switch.start()
        for n in (1, 2):
            cfg = GuestConfig(name=f"vm{n}", socket=self.switch.sockets[f"vm{n}"],
                              ip=f"{UNDERLAY[n]}/24", queues=QUEUES, smp=self.smp, mem=self.mem,
                              kernel=str(self.kernel), initrd=self.initrd)
            guest = Guest(cfg, self.out_dir)
            self.guests[n] = guest
            guest.start()
        for n, cpus in self.pin.items():
            self.guests[n].pin_vcpus(cpus)
        for guest in self.guests.values():  # booting in parallel; wait for both
            guest.wait_ready(timeout=self.boot_timeout)
        for n in (1, 2):
            self._build_overlay(n)
        self.wait_reachable()

    def stop(self) -> list[str]:
        """Tears everything down; returns the backend's stop-contract problems (empty: clean)."""
        for guest in self.guests.values():
            try:
                guest.save_diagnostics()
            except Exception as e:  # diagnostics must never keep a guest alive
                print(f"diagnostics of {guest.name}: {e!r}")
        for guest in self.guests.values():
            try:
                guest.kill()
            except Exception as e:  # keep killing the others
                print(f"killing {guest.name}: {e!r}")
        problems: list[str] = []
        if self.switch is not None:
            try:
                problems = self.switch.stop()
            except Exception as e:
                self.switch.kill()
                problems = [f"stop failed: {e!r}"]
        return problems

    def _build_overlay(self, n: int) -> None:
        g = self.guests[n]
        for step in overlay_steps(self.params, n, UNDERLAY[n], [UNDERLAY[3 - n]]):
            rc, out = g.run(step)
            if rc != 0:
                raise OverlayError(f"{g.name}: `{step}` exited {rc}:\n{out}")

    def container(self, n: int, k: int = 1) -> str:
        """The address of container k of guest n."""
        return container_ip(self.params, n, k)

    def wait_reachable(self, timeout: float = 300.0) -> None:
        """Waits until each container pings the other (ARP, bridge and VXLAN FDB learning)."""
        for n in (1, 2):
            for k in range(1, self.params.containers + 1):
                self.wait_until(n, f"ip netns exec c{k} ping -c 1 -W 2 {self.container(3 - n, k)} "
                                   ">/dev/null", timeout, interval=0)

    # --- driving the guests --------------------------------------------------------------------

    def run(self, n: int, cmd: str, timeout: float = 120.0) -> tuple[int, str]:
        return self.guests[n].run(cmd, timeout=timeout)

    def c(self, n: int, cmd: str, timeout: float = 120.0, netns: bool = True, k: int = 1) -> str:
        """Runs cmd in guest n (in its container c<k> unless netns=False); raises unless it
        exits 0."""
        full = f"ip netns exec c{k} {cmd}" if netns else cmd
        rc, out = self.guests[n].run(full, timeout=timeout)
        if rc != 0:
            raise OverlayError(f"vm{n}: `{full}` exited {rc}:\n{out}")
        return out

    def both(self, cmd: str, timeout: float = 120.0) -> None:
        for n in (1, 2):
            self.c(n, cmd, timeout=timeout, netns=False)

    def set_mode(self, mode: int) -> None:
        self.both(mode_command(mode))

    def counters(self, n: int) -> dict[str, int]:
        """The `total` line of guest n's /proc/net/prism, by column name."""
        out = self.c(n, "cat /proc/net/prism", netns=False)
        try:
            return prism_counters(out)
        except ValueError as e:
            raise OverlayError(f"vm{n}: {e}") from e

    def counter_deltas(self, run, names: tuple[str, ...]) -> tuple[object, dict[int, dict]]:
        """Runs run() and returns its result and, per guest, the increase of the named
        /proc/net/prism counters during it."""
        before = {n: self.counters(n) for n in (1, 2)}
        result = run()
        after = {n: self.counters(n) for n in (1, 2)}
        return result, {n: {k: after[n][k] - before[n][k] for k in names} for n in (1, 2)}

    def pingpong_under_bulk(self, prio_port: int, bulk_port: int, secs: int, mps: int
                            ) -> tuple[dict, str]:
        """sockperf ping-pong (prio_port, mps requests/s, secs seconds) from vm1's container
        to vm2's while two bulk TCP flows (bulk_port) load vm2, started before it and ending
        after it; returns sockperf's figures and iperf3's output."""
        peer = CONTAINER[2]
        self.bg(1, "bulk", f"ip netns exec c1 iperf3 -c {peer} -p {bulk_port} -P 2 "
                           f"-t {secs + 8} -i 1")
        self.wait_until(1, "grep -q 'sec ' /tmp/bulk.out || [ -s /tmp/bulk.rc ]", timeout=120)
        out = self.c(1, f"timeout {secs * 6 + 60} sockperf ping-pong -i {peer} -p {prio_port} "
                        f"-t {secs} --mps {mps}", timeout=secs * 6 + 120)
        rc, bulk = self.wait_bg(1, "bulk", timeout=secs * 10 + 300)
        if rc != 0 or "receiver" not in bulk:
            raise OverlayError(f"bulk iperf3 rc={rc}:\n{bulk[-2000:]}")
        res = parse_sockperf(out)
        if "p50" not in res or "p99" not in res:
            raise OverlayError(f"sockperf printed no percentiles:\n{out[-2000:]}")
        return res, bulk

    def start_servers(self, n: int, iperf_ports: list[int], sockperf_port: int | None = None) -> None:
        for port in iperf_ports:
            self.c(n, f"iperf3 -s -p {port} -D")
        if sockperf_port is not None:
            # Not a job of the console shell (see Shell.bg).
            self.c(n, f"( ip netns exec c1 sockperf sr -i {self.container(n)} -p {sockperf_port} "
                      f"> /tmp/sockperf-sr-{sockperf_port}.log 2>&1 & )", netns=False)
        # iperf3 -D returns before it listens: wait until the ports are bound.
        for port in iperf_ports:
            self.wait_until(n, f"ip netns exec c1 netstat -ltn | grep -q ':{port} '", 120)
        if sockperf_port is not None:
            self.wait_until(n, f"ip netns exec c1 netstat -lun | grep -q ':{sockperf_port} '", 120)

    def _guest_call(self, n: int, call, *args):
        try:
            return call(*args)
        except GuestError as e:
            raise OverlayError(str(e)) from e

    def wait_until(self, n: int, condition: str, timeout: float, interval: float = 0.5) -> None:
        """Waits in guest n until the shell condition succeeds (Shell.wait_until)."""
        self._guest_call(n, self.guests[n].wait_until, condition, timeout, interval)

    def bg(self, n: int, name: str, cmd: str) -> None:
        """Starts cmd in the background in guest n (Shell.bg)."""
        self._guest_call(n, self.guests[n].bg, name, cmd)

    def wait_bg(self, n: int, name: str, timeout: float) -> tuple[int, str]:
        """Waits for a bg() command to end; returns (exit status, output)."""
        return self._guest_call(n, self.guests[n].wait_bg, name, timeout)

    def rule(self, *args: str) -> str:
        """`prism-vnic rule ARGS` on the backend's control socket."""
        if self.switch is None or self.switch.binary is None:
            raise OverlayError("flow rules need prism-vnic itself, not a stand-in backend")
        try:
            return self.switch.rule(*args)
        except SwitchError as e:
            raise OverlayError(str(e)) from e

    def drop_counters(self, n: int) -> dict[str, int]:
        """Every place guest n's receive path counts a drop: the container's UDP receive
        buffer errors, the backlog drops (softnet_stat column 2, summed over CPUs), PRISM's
        prio_dropped, and prism-vnic's drops towards port vmN."""
        res: dict[str, int] = {}
        snmp = self.c(n, "grep '^Udp:' /proc/net/snmp")
        rows = [ln.split()[1:] for ln in snmp.splitlines() if ln.startswith("Udp:")]
        if len(rows) >= 2:
            for name, value in zip(rows[0], rows[1]):
                if name in ("RcvbufErrors", "InErrors"):
                    res[f"c1_udp_{name}"] = int(value)
        softnet = self.c(n, "cat /proc/net/softnet_stat", netns=False)
        res["backlog_dropped"] = sum(int(ln.split()[1], 16) for ln in softnet.splitlines()
                                     if len(ln.split()) > 1)
        res["prio_dropped"] = self.counters(n)["prio_dropped"]
        if self.switch is not None and not self.switch.is_stand_in:
            stats = self.switch.stats() or {}
            for port in stats.get("ports", []):
                if port.get("name") == f"vm{n}":
                    for name, value in port.get("counters", {}).items():
                        if "drop" in name and isinstance(value, int):
                            res[f"nic_{name}"] = value
        return res

    def drops_since(self, n: int, before: dict[str, int]) -> dict[str, int]:
        """The drop counters of guest n (drop_counters) that moved since before."""
        return {k: v - before.get(k, 0) for k, v in self.drop_counters(n).items()
                if v != before.get(k, 0)}

    def kmemleak_report(self, n: int) -> str:
        """Two kmemleak scans in guest n (a debug kernel): the unreferenced objects it reports
        after a line saying whether the kernel has kmemleak."""
        return self.c(n, "mount -t debugfs none /sys/kernel/debug 2>/dev/null; "
                         "f=/sys/kernel/debug/kmemleak; if [ -e $f ]; then "
                         "echo 'kmemleak: scanned'; echo scan > $f; sleep 5; echo scan > $f; "
                         "cat $f; else echo 'kmemleak: absent'; fi", netns=False, timeout=600)

    def dmesg_problems(self, n: int) -> list[str]:
        out = self.c(n, f"dmesg | grep -E '{DMESG_BAD}' | head -20; true", netns=False)
        return [ln for ln in out.splitlines() if ln.strip()]
