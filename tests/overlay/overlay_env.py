"""Two PRISM guests on prism-vnic with a container overlay between them, for tests/overlay and
benches/prism_latency.py.

The topology is the one of the PRISM experiment, one "host" per guest, the underlay being the
guests' eth0 on prism-vnic (ports vm1 and vm2, 4 queue pairs):

    guest N (eth0 10.0.0.N/24)
      vxlan0 (id 42, dstport 4789, remote 10.0.0.<other>) --+
                                                             br0
      veth "vc1" (MTU 1450, GRO off) ----------------------+
        peer eth0 in netns c1: 192.168.42.N/24 (MTU 1450, GRO off)

RPS and threaded NAPI stay off (the kernel defaults), as prism.rst requires.

The guests, the backend and their console drivers are tests/e2e's (vm.Guest, switch.Switch);
the kernels come from tests/kernel's build_kernel (guest-kernel/build, cached).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
sys.path.insert(0, str(TESTS / "e2e"))

from switch import Switch, SwitchError  # noqa: E402
from vm import Guest, GuestConfig, GuestError  # noqa: E402

QUEUES = 4
UNDERLAY = {1: "10.0.0.1", 2: "10.0.0.2"}
CONTAINER = {1: "192.168.42.1", 2: "192.168.42.2"}
KNOBS = "/proc/sys/net/core"
RX0_FLAG = "/sys/class/net/eth0/queues/rx-0/prism_priority"
# dmesg lines that mean the kernel is unhealthy (the same list as tests/kernel/guest/prism-test).
DMESG_BAD = ("WARNING:|BUG:|Oops|general protection|KASAN|UBSAN|Call Trace|RCU stall|"
             "soft lockup|hung task|Dead loop")

ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")


class OverlayError(Exception):
    """The overlay could not be built or driven; the message says which step and shows output."""


def _kernel_helpers():
    """tests/kernel/conftest.py, loaded under its own name: pytest imports every conftest.py
    as `conftest`, so a plain import would find ours."""
    name = "prism_kernel_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, TESTS / "kernel" / "conftest.py")
        if spec is None or spec.loader is None:
            raise OverlayError("cannot load tests/kernel/conftest.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def build_kernel(flavour: str) -> Path:
    """guest-kernel/build --flavour FLAVOUR (cached), through tests/kernel's helper."""
    return Path(_kernel_helpers().build_kernel(flavour))


def build_initramfs() -> str:
    """The standard guest image without modules (our kernels have everything built in), plus
    sockperf; iperf3, ethtool and iproute2 are in it already."""
    sockperf = shutil.which("sockperf")
    if sockperf is None:
        raise OverlayError("sockperf not found on the host (apt-get install sockperf)")
    res = subprocess.run([str(REPO / "images" / "build-initramfs"), "--no-modules",
                          "--extra-bin", sockperf], capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        raise OverlayError(f"images/build-initramfs failed ({res.returncode}):\n{res.stderr}")
    return res.stdout.strip().splitlines()[-1]


def parse_sockperf(out: str) -> dict:
    """The figures of a `sockperf ping-pong` run: sent/received over the whole run, dropped,
    and the percentiles in microseconds (p50, p99, ...)."""
    text = ANSI_RE.sub("", out)
    res: dict = {}
    m = re.search(r"\[Total Run\].*SentMessages=(\d+); ReceivedMessages=(\d+)", text)
    if m:
        res["sent"], res["received"] = int(m.group(1)), int(m.group(2))
    m = re.search(r"# dropped messages = (\d+); # duplicated messages = (\d+); "
                  r"# out-of-order messages = (\d+)", text)
    if m:
        res["dropped"], res["duplicated"], res["out_of_order"] = map(int, m.groups())
    for pct, value in re.findall(r"percentile (\d+\.\d+) =\s*([\d.]+)", text):
        res[f"p{float(pct):g}"] = float(value)
    return res


def iperf_udp_summary(out: str) -> tuple[int, int] | None:
    """(lost, total) datagrams from iperf3's UDP receiver line, None when absent."""
    m = re.search(r"(\d+)/(\d+) \([\d.e+-]+%\)\s+receiver", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


class Overlay:
    """prism-vnic plus two guests with the container overlay; start() builds it all, stop()
    tears it down (guests SIGKILLed after saving diagnostics, backend SIGTERMed)."""

    def __init__(self, out_dir: Path, kernel: Path, initrd: str, smp: int = 2,
                 boot_timeout: float = 600.0):
        self.out_dir = out_dir
        self.kernel = kernel
        self.initrd = initrd
        self.smp = smp
        self.boot_timeout = boot_timeout
        self.switch: Switch | None = None
        self.guests: dict[int, Guest] = {}

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.switch = Switch(self.out_dir, queues=QUEUES)
        self.switch.start()
        for n in (1, 2):
            cfg = GuestConfig(name=f"vm{n}", socket=self.switch.sockets[f"vm{n}"],
                              ip=f"{UNDERLAY[n]}/24", queues=QUEUES, smp=self.smp,
                              kernel=str(self.kernel), initrd=self.initrd)
            guest = Guest(cfg, self.out_dir)
            self.guests[n] = guest
            guest.start()
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
        other = 3 - n
        g = self.guests[n]
        steps = [
            "ip link add br0 type bridge",
            "ip link set br0 up",
            f"ip link add vxlan0 type vxlan id 42 dstport 4789 local {UNDERLAY[n]} "
            f"remote {UNDERLAY[other]} dev eth0",
            "ip link set vxlan0 master br0 up",
            "ip netns add c1",
            "ip link add vc1 type veth peer name eth0 netns c1",
            "ip link set vc1 mtu 1450 master br0 up",
            "ethtool -K vc1 gro off",
            "ip -n c1 link set lo up",
            "ip -n c1 link set eth0 mtu 1450 up",
            f"ip -n c1 addr add {CONTAINER[n]}/24 dev eth0",
            "ip netns exec c1 ethtool -K eth0 gro off",
        ]
        for step in steps:
            rc, out = g.run(step)
            if rc != 0:
                raise OverlayError(f"{g.name}: `{step}` exited {rc}:\n{out}")

    def wait_reachable(self, timeout: float = 300.0) -> None:
        """Waits until each container pings the other (ARP, bridge and VXLAN FDB learning)."""
        for n in (1, 2):
            self.wait_until(n, f"ip netns exec c1 ping -c 1 -W 2 {CONTAINER[3 - n]} >/dev/null",
                            timeout, interval=0)

    # --- driving the guests --------------------------------------------------------------------

    def run(self, n: int, cmd: str, timeout: float = 120.0) -> tuple[int, str]:
        return self.guests[n].run(cmd, timeout=timeout)

    def c(self, n: int, cmd: str, timeout: float = 120.0, netns: bool = True) -> str:
        """Runs cmd in guest n (in its container c1 unless netns=False); raises unless it
        exits 0."""
        full = f"ip netns exec c1 {cmd}" if netns else cmd
        rc, out = self.guests[n].run(full, timeout=timeout)
        if rc != 0:
            raise OverlayError(f"vm{n}: `{full}` exited {rc}:\n{out}")
        return out

    def both(self, cmd: str, timeout: float = 120.0) -> None:
        for n in (1, 2):
            self.c(n, cmd, timeout=timeout, netns=False)

    def set_mode(self, mode: int) -> None:
        self.both(f"echo {mode} > {KNOBS}/prism_mode && [ \"$(cat {KNOBS}/prism_mode)\" = {mode} ]")

    def counters(self, n: int) -> dict[str, int]:
        """The `total` line of guest n's /proc/net/prism, by column name."""
        out = self.c(n, "cat /proc/net/prism", netns=False)
        lines = [ln.split() for ln in out.splitlines() if ln.strip()]
        header = next((ln for ln in lines if ln and ln[0] == "cpu"), None)
        total = next((ln for ln in lines if ln and ln[0] == "total"), None)
        if header is None or total is None:
            raise OverlayError(f"vm{n}: /proc/net/prism has no header or total line:\n{out}")
        return {name: int(value) for name, value in zip(header[1:], total[1:])}

    def start_servers(self, n: int, iperf_ports: list[int], sockperf_port: int | None = None) -> None:
        for port in iperf_ports:
            self.c(n, f"iperf3 -s -p {port} -D")
        if sockperf_port is not None:
            # Not a job of the console shell (see `bg`).
            self.c(n, f"( ip netns exec c1 sockperf sr -i {CONTAINER[n]} -p {sockperf_port} "
                      f"> /tmp/sockperf-sr-{sockperf_port}.log 2>&1 & )", netns=False)
        # iperf3 -D returns before it listens: wait until the ports are bound.
        for port in iperf_ports:
            self.wait_until(n, f"ip netns exec c1 netstat -ltn | grep -q ':{port} '", 120)
        if sockperf_port is not None:
            self.wait_until(n, f"ip netns exec c1 netstat -lun | grep -q ':{sockperf_port} '", 120)

    def wait_until(self, n: int, condition: str, timeout: float, interval: float = 0.5) -> None:
        """Waits in guest n until the shell condition succeeds; the loop runs in a subshell so
        giving up (exit 1) ends the loop, not the console's shell."""
        tries = max(1, int(timeout / max(interval, 1.0)))
        pause = f"sleep {interval}; " if interval else ""
        self.c(n, f"( i=0; until {condition}; do i=$((i+1)); [ $i -lt {tries} ] || exit 1; "
                  f"{pause}done )", timeout=timeout + 60, netns=False)

    def bg(self, n: int, name: str, cmd: str) -> None:
        """Starts cmd in the background in guest n; its output goes to /tmp/NAME.out and its
        exit status to /tmp/NAME.rc.

        Backgrounded from a subshell that exits at once, so the job is not the console
        shell's: an interactive shell reports its own jobs' ends ("[4]+ Done ...") at its
        next prompt, into the output of whatever command runs then (a CI run read that
        notice as part of a `cat` of the exit status)."""
        self.c(n, f"rm -f /tmp/{name}.rc; ( ( {cmd} > /tmp/{name}.out 2>&1; "
                  f"echo $? > /tmp/{name}.rc ) & )", netns=False)

    def wait_bg(self, n: int, name: str, timeout: float) -> tuple[int, str]:
        """Waits for a bg() command to end; returns (exit status, output)."""
        self.wait_until(n, f"[ -s /tmp/{name}.rc ]", timeout)
        text = self.c(n, f"cat /tmp/{name}.rc", netns=False)
        # The status is the line that is a number: anything else the console printed
        # around it (a job notice of some other command) is not part of it.
        status = re.search(r"^\s*(-?\d+)\s*$", text, re.MULTILINE)
        if status is None:
            raise OverlayError(f"guest {n}: /tmp/{name}.rc holds no exit status: {text!r}")
        return int(status.group(1)), self.c(n, f"cat /tmp/{name}.out", netns=False)

    def rule(self, *args: str) -> str:
        """`prism-vnic rule ARGS` on the backend's control socket."""
        if self.switch is None or self.switch.binary is None:
            raise OverlayError("flow rules need prism-vnic itself, not a stand-in backend")
        res = subprocess.run([str(self.switch.binary), "rule", "--control",
                              str(self.switch.control), *args],
                             capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise OverlayError(f"prism-vnic rule {' '.join(args)} exited {res.returncode}: "
                               f"{res.stderr.strip()}")
        return res.stdout

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

    def dmesg_problems(self, n: int) -> list[str]:
        out = self.c(n, f"dmesg | grep -E '{DMESG_BAD}' | head -20; true", netns=False)
        return [ln for ln in out.splitlines() if ln.strip()]

