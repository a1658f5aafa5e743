"""DPDK's testpmd as a process of the testbed: as a virtio-user frontend (the traffic a
benchmark offers and counts) and as DPDK's vhost PMD backend (what prism-vnic is measured
against). It knows testpmd's flags, its ports (vdevs), its counters and its runtime files
(the e2e suites' stand-in backend, testpmd as a two-port cable, is a command template in
switch.py, beside PRISM_SWITCH_CMD's).

A configuration is data (`Testpmd`): the ports, the forwarding mode, and what a sweep varies
(the ring size of each virtio-user port, --burst, --rxq/--txq, the frame size); `argv()` is
its command line, `TestpmdProcess` runs it:

    dpdk-testpmd --lcores 0@CPU,1@CPU --no-pci --no-huge -m 1024 --file-prefix NAME-PID
        --vdev virtio_user0,path=SOCK,queues=1,mac=MAC[,queue_size=N] ...
        -- --nb-cores=1 --no-lsc-interrupt [-i] --forward-mode=MODE [--auto-start]
        [--port-topology=T] [--txpkts=LEN] [--eth-peer=P,MAC] [--burst=N] [--rxq=N --txq=N]
        [--mbuf-size=10240 --max-pkt-len=LEN+18 --total-num-mbufs=16384 above 1518 B]

Every lcore runs on one host CPU. The file prefix holds the harness's pid, so two harnesses
(two benches, a bench and a test) never share DPDK's runtime directory; that directory (its
config, memory map files and sockets, which testpmd leaves behind even on a clean exit) and
the vhost-user sockets of a vhost PMD are removed when the process is stopped.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from .procs import Child, ChildError

TESTPMD = "dpdk-testpmd"
# Time to get ready: DPDK fills its mbuf pool first, minutes on a loaded 2-core machine.
START_TIMEOUT = 180.0
# An answer to one command (a stats request) from a main lcore that shares its CPU.
ANSWER_TIMEOUT = 60.0
# Frames flowing after start: DPDK's vhost PMD maps the frontend's memory first.
FLOW_TIMEOUT = 120.0
STOP_TIMEOUT = 10.0
# Above this frame size testpmd needs jumbo mbufs (one 10 KiB mbuf holds a 9000-byte frame).
STANDARD_FRAME = 1518


class DpdkError(ChildError):
    """testpmd did not start, answer or forward as asked; the first line says why."""


@dataclass(frozen=True)
class VirtioUser:
    """A virtio-user port: testpmd as the driver of a vhost-user backend's socket (what a
    guest's virtio-net driver is to QEMU's backend). queue_size: entries of each of its rings
    (None: the driver's default, 256)."""
    path: Path
    mac: str | None = None
    queues: int = 1
    queue_size: int | None = None
    kind = "virtio_user"

    def args(self) -> str:
        s = f"path={self.path},queues={self.queues}"
        if self.mac:
            s += f",mac={self.mac}"
        if self.queue_size is not None:
            s += f",queue_size={self.queue_size}"
        return s


@dataclass(frozen=True)
class VhostPort:
    """A port of DPDK's vhost PMD: the backend side, listening on iface. tso: offer TSO (a
    virtio-user frontend offers it only when the backend does)."""
    iface: Path
    queues: int = 1
    tso: bool = False
    kind = "net_vhost"

    def args(self) -> str:
        return f"iface={self.iface},queues={self.queues}" + (",tso=1" if self.tso else "")


@dataclass(frozen=True)
class PcapReplay:
    """A port that receives one pcap file's frames over and over (the offered load). The pcap
    PMD has an RX queue per rx_pcap given (and as many dropping TX queues), so a frontend with
    --rxq N needs the file given N times."""
    pcap: Path
    queues: int = 1
    kind = "net_pcap"

    def args(self) -> str:
        return ",".join([f"rx_pcap={self.pcap}"] * self.queues) + ",infinite_rx=1"


@dataclass(frozen=True)
class NullPort:
    """A port that receives nothing and drops what it is sent (a drain)."""
    kind = "net_null"

    def args(self) -> str:
        return "no-rx=1"


Port = Union[VirtioUser, VhostPort, PcapReplay, NullPort]


def vdevs(ports: list[Port]) -> list[str]:
    """The --vdev values, numbered per kind in order (virtio_user0, virtio_user1, net_null0)."""
    seen: dict[str, int] = {}
    out = []
    for port in ports:
        index = seen.get(port.kind, 0)
        seen[port.kind] = index + 1
        out.append(f"{port.kind}{index},{port.args()}")
    return out


def jumbo_args(frame: int) -> list[str]:
    """The mbuf settings a frame needs: none up to 1518 bytes, one 10 KiB mbuf per frame above."""
    if frame <= STANDARD_FRAME:
        return []
    return ["--mbuf-size=10240", f"--max-pkt-len={frame + 18}", "--total-num-mbufs=16384"]


@dataclass
class Testpmd:
    """One testpmd's configuration. name: of its log (NAME.log) and file prefix; cpu: the host
    CPU its main and forwarding lcores run on; interactive: started by start() with stats
    read on request (a frontend), else forwarding from the start (--auto-start, a backend).
    frame: the largest frame it handles (jumbo mbufs above 1518 B); txpkts: the frame length
    txonly sends; burst: --burst (testpmd's default 32); queues: --rxq/--txq (default 1)."""
    name: str
    ports: list[Port]
    forward_mode: str
    cpu: int
    interactive: bool = True
    frame: int = 64
    txpkts: int | None = None
    port_topology: str | None = None
    eth_peers: dict[int, str] = field(default_factory=dict)
    burst: int | None = None
    queues: int | None = None
    nb_cores: int = 1
    memory_mb: int = 1024
    extra_args: list[str] = field(default_factory=list)

    def prefix(self, pid: int | None = None) -> str:
        return f"{self.name}-{os.getpid() if pid is None else pid}"

    def argv(self, prefix: str) -> list[str]:
        lcores = ",".join(f"{i}@{self.cpu}" for i in range(self.nb_cores + 1))
        argv = [TESTPMD, "--lcores", lcores, "--no-pci", "--no-huge", "-m", str(self.memory_mb),
                "--file-prefix", prefix]
        for vdev in vdevs(self.ports):
            argv += ["--vdev", vdev]
        argv += ["--", f"--nb-cores={self.nb_cores}", "--no-lsc-interrupt"]
        argv += ["-i"] if self.interactive else []
        argv.append(f"--forward-mode={self.forward_mode}")
        argv += [] if self.interactive else ["--auto-start"]
        if self.port_topology:
            argv.append(f"--port-topology={self.port_topology}")
        if self.txpkts is not None:
            argv.append(f"--txpkts={self.txpkts}")
        argv += [f"--eth-peer={port},{mac}" for port, mac in sorted(self.eth_peers.items())]
        if self.burst is not None:
            argv.append(f"--burst={self.burst}")
        if self.queues is not None:
            argv += [f"--rxq={self.queues}", f"--txq={self.queues}"]
        return argv + jumbo_args(self.frame) + self.extra_args


def runtime_dir(prefix: str) -> Path:
    """DPDK's runtime directory of a file prefix (its EAL's rule: /var/run for root, else
    XDG_RUNTIME_DIR or /tmp)."""
    base = "/var/run" if os.getuid() == 0 else os.environ.get("XDG_RUNTIME_DIR", "/tmp")
    return Path(base) / "dpdk" / prefix


_CAUSE = re.compile(r"^\s*Cause: (.+)$", re.M)
_ERROR = re.compile(r"^(?!testpmd> ).*(?:[Ff]ail|[Ee]rror|[Cc]annot|FATAL|[Ii]nvalid).*$", re.M)
_HARMLESS = re.compile(r"promiscuous mode|Error - exiting with code|[RT]X-\w+: +\d")


def failure_reason(text: str) -> str | None:
    """Why testpmd stopped, in one line: its first error (the root), and the cause rte_exit
    printed if that says more."""
    errors = [e.strip() for e in _ERROR.findall(text) if not _HARMLESS.search(e)]
    cause = _CAUSE.findall(text)
    if cause and errors and cause[-1].strip() not in errors[0]:
        return f"{errors[0]}; {cause[-1].strip()}"
    if cause:
        return cause[-1].strip()
    return errors[0] if errors else None


_STATS_HEADER = "NIC statistics for port"
# An interactive testpmd is ready at its prompt.
PROMPT = "testpmd> "
_PROBED = re.compile(r"^Port \d+: [0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}$", re.M)


def port_counts(text: str, port: int, key: str) -> list[int]:
    """Every cumulative `key` (RX-packets, TX-packets, ...) of `port` that `show port stats`
    printed, in order."""
    counts = []
    for block in re.split(r"#+ " + _STATS_HEADER, text)[1:]:
        m = re.match(r"\s*(\d+)", block)
        if not m or int(m.group(1)) != port:
            continue
        v = re.search(re.escape(key) + r":\s+(\d+)", block)
        if v:
            counts.append(int(v.group(1)))
    return counts


class TestpmdProcess(Child):
    """A running testpmd. A frontend (interactive) is driven through its prompt: start(),
    stats on request; a backend forwards from the start and is ready once its vhost-user
    sockets exist."""

    def __init__(self, config: Testpmd, out_dir: Path):
        self.config = config
        self.prefix = config.prefix()
        # stdbuf: testpmd's printf output must reach the log as it happens.
        super().__init__(["stdbuf", "-oL", *config.argv(self.prefix)], out_dir / f"{config.name}.log",
                         cpus={config.cpu}, reason=failure_reason)
        self.name = TESTPMD
        self._blocks = 0

    def sockets(self) -> list[Path]:
        """The vhost-user sockets it listens on (its vhost PMD ports)."""
        return [p.iface for p in self.config.ports if isinstance(p, VhostPort)]

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Starts it and returns once it is ready: an interactive one at its prompt with
        every port probed; a backend once its vhost-user sockets listen (it then checks its
        links for up to 9 s before forwarding, and a frontend may connect meanwhile). Stops
        it again, saying why in the first line, if it does not get there."""
        try:
            super().start()
            if self.config.interactive:
                self.wait_until(lambda: PROMPT in self.text(), timeout, "showed its prompt")
                probed = len(_PROBED.findall(self.text()))
                if probed < len(self.config.ports):
                    raise ChildError(self.failure(f"probed {probed} of its {len(self.config.ports)} ports"))
            else:
                sockets = self.sockets()
                self.wait_until(lambda: all(s.exists() for s in sockets), timeout,
                                f"listened on {', '.join(map(str, sockets))}")
        except ChildError as e:
            self.stop()
            raise DpdkError(str(e)) from e

    def command(self, line: str) -> None:
        """A command at the prompt of an interactive testpmd."""
        try:
            self.send(line)
        except OSError as e:
            raise DpdkError(self.failure(f"did not take the command {line!r} ({e})")) from e

    def stats(self, timeout: float = ANSWER_TIMEOUT) -> tuple[float, str]:
        """Asks for `show port stats all` and waits for the answer (a block per port):
        (when it was asked, the log's text then). The time is the request's, not the
        answer's: a main lcore that shares its CPU answers late."""
        self.command("show port stats all")
        asked = time.time()
        self._blocks += len(self.config.ports)
        try:
            self.wait_until(lambda: self.text().count(_STATS_HEADER) >= self._blocks, timeout,
                            "printed the port stats asked for", interval=0.1)
        except ChildError as e:
            raise DpdkError(str(e)) from e
        return asked, self.text()

    def reading(self, port: int, key: str) -> tuple[float, int]:
        """(when asked, one port's cumulative counter then)."""
        asked, text = self.stats()
        counts = port_counts(text, port, key)
        if not counts:
            raise DpdkError(self.failure(f"printed no {key} for port {port}"))
        return asked, counts[-1]

    def wait_flowing(self, port: int, key: str, timeout: float = FLOW_TIMEOUT) -> None:
        """Asks for stats every half second until the counter grew over two intervals in a
        row: frames flow."""
        deadline = time.monotonic() + timeout
        grew, last = 0, None
        while time.monotonic() < deadline:
            counts = port_counts(self.stats()[1], port, key)
            if counts and last is not None and counts[-1] > last:
                grew += 1
                if grew == 2:
                    return
            else:
                grew = 0
            last = counts[-1] if counts else None
            time.sleep(0.5)
        raise DpdkError(f"no frames flowed within {timeout:.0f} s (port {port} {key}); "
                        f"see {self.log_path}")

    def stop(self, sig: int = signal.SIGINT, timeout: float = STOP_TIMEOUT,
             commands: tuple[str, ...] | None = None) -> int | None:
        """Stops it (an interactive one is asked to stop forwarding and quit first), then
        removes what it leaves: its runtime directory and its vhost-user sockets."""
        if commands is None:
            commands = ("stop", "quit") if self.config.interactive else ()
        status = super().stop(sig, timeout, commands)
        shutil.rmtree(runtime_dir(self.prefix), ignore_errors=True)
        for sock in self.sockets():
            try:
                sock.unlink()
            except FileNotFoundError:
                pass
        return status
