"""Topology files of the testbed (TOML): which hosts, on which prism-vnic ports, with which
kernels, and the container overlay between them. Errors name the file, the line and what is
wrong, in one line.

    [testbed]                 # optional
    name = "overlay"          # default: the file's name; in netns and tap names: keep it short
    queues = 4                # queue pairs of every vhost-user port

    [prism-vnic]              # optional: the daemon's options
    link-rate = "100G"        # every port's link (0: unpaced)
    trust = "dscp"            # dscp | pcp | none
    rules = "rules.toml"      # flow rules for every port (relative to this file)
    args = ["--priority-weight", "4"]   # any other flags, as given

    [overlay]                 # optional: VXLAN + bridge + netns containers on the guests
    containers = 1            # per guest (a host can say otherwise)
    vni = 42
    subnet = "192.168.42"     # containers get SUBNET.N+16(K-1)/24

    [[host]]
    name = "vm1"
    kind = "guest"            # guest (default) | netns (a host namespace on a tap port)
    port = "vm1"              # prism-vnic port (default: the host's name)
    address = "10.0.0.1/24"   # eth0's address
    kernel = "prism"          # guests: vanilla | prism | path of a bzImage
    kernel-source = "~/linux" # guests: build vanilla|prism from this tree (guest-kernel/build --source)
    vcpus = 2
    memory = "1G"
    queues = 4                # guests: queue pairs, at most testbed.queues
    containers = 1            # guests: containers on the overlay
    pin = [0, 1]              # guests: host CPUs for the vCPU threads, round-robin
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .kernel import FLAVOURS
from .overlay import HOSTS_MAX, OverlayParams

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
MEMORY_RE = re.compile(r"^[1-9][0-9]*[MG]$")
RATE_RE = re.compile(r"^(0|[1-9][0-9]*(\.[0-9]+)?[KMG]?)$")
# Tap devices are named TESTBED-HOST and must fit in 15 characters.
IFNAMSIZ = 15


class TopologyError(Exception):
    """What is wrong with a topology file: FILE:LINE: message."""


@dataclass
class SwitchSpec:
    link_rate: str | None = None
    trust: str | None = None
    rules: Path | None = None
    args: list[str] = field(default_factory=list)

    def argv(self) -> list[str]:
        """prism-vnic flags for these options."""
        out: list[str] = []
        if self.link_rate is not None:
            out += ["--link-rate", self.link_rate]
        if self.trust is not None:
            out += ["--trust", self.trust]
        if self.rules is not None:
            out += ["--rules", str(self.rules)]
        return out + self.args


@dataclass
class HostSpec:
    name: str
    kind: str
    port: str
    address: str | None
    kernel: str = "prism"
    kernel_source: Path | None = None
    vcpus: int = 2
    memory: str = "1G"
    queues: int = 4
    containers: int = 0
    pin: list[int] = field(default_factory=list)

    @property
    def is_guest(self) -> bool:
        return self.kind == "guest"


@dataclass
class Topology:
    path: Path
    name: str
    queues: int
    switch: SwitchSpec
    overlay: OverlayParams | None
    hosts: list[HostSpec]

    def host(self, name: str) -> HostSpec:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def tap_name(self, host: HostSpec) -> str:
        return f"{self.name}-{host.name}"

    def netns_name(self, host: HostSpec) -> str:
        return f"{self.name}-{host.name}"


# --- where things are in the file -----------------------------------------------------------

HEADER_RE = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.-]+)\s*\]\]?\s*(#.*)?$")
KEY_RE = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")


def key_lines(text: str) -> dict[tuple, int]:
    """Line numbers (1-based) of tables and keys: (table,) or (table, index) for a header,
    plus (..., key) for a key in it. Keys before any header are under ()."""
    lines: dict[tuple, int] = {}
    counts: dict[str, int] = {}
    table: tuple = ()
    for number, line in enumerate(text.splitlines(), start=1):
        m = HEADER_RE.match(line)
        if m:
            name = m.group(2)
            if m.group(1) == "[[":
                index = counts.get(name, 0)
                counts[name] = index + 1
                table = (name, index)
            else:
                table = (name,)
            lines.setdefault(table, number)
            continue
        m = KEY_RE.match(line)
        if m:
            lines.setdefault(table + (m.group(1),), number)
    return lines


class _Reader:
    """Reads one table of the file, checking keys and types, with the line of every error."""

    def __init__(self, path: Path, lines: dict[tuple, int], table: tuple, what: str, data: Any):
        self.path, self.lines, self.table, self.what = path, lines, table, what
        self.data: dict = {}
        if not isinstance(data, dict):
            raise self.error(f"{what} must be a table")
        self.data = data

    def line(self, key: str | None = None) -> int:
        if key is not None and self.table + (key,) in self.lines:
            return self.lines[self.table + (key,)]
        return self.lines.get(self.table, 1)

    def error(self, message: str, key: str | None = None) -> TopologyError:
        return TopologyError(f"{self.path}:{self.line(key)}: {self.what}: {message}")

    def check_keys(self, allowed: list[str]) -> None:
        for key in self.data:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(allowed)})"
                raise self.error(f"unknown key {key!r}{hint}", key)

    def get(self, key: str, kind: type | tuple, default: Any = None) -> Any:
        if key not in self.data:
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # TOML booleans are not numbers here.
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join(k.__name__.replace("str", "string").replace("int", "integer")
                                for k in kinds)
            raise self.error(f"{key} must be {names}, not {value!r}", key)
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.get(key, int, default)
        if not low <= value <= high:
            raise self.error(f"{key} must be {low}..{high}, not {value}", key)
        return value


def load(path: Path) -> Topology:
    """Reads and checks a topology file; raises TopologyError (file, line, what is wrong)."""
    import tomllib  # Python 3.11; imported here so that the rest of the package runs on older ones

    try:
        text = path.read_text()
    except OSError as e:
        raise TopologyError(f"{path}: cannot read the topology file: {e.strerror}") from e
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        where = f"{m.group(1)}" if m else "1"
        raise TopologyError(f"{path}:{where}: not valid TOML: {re.sub(r' [(]at line.*', '', str(e))}") from e
    lines = key_lines(text)
    top = _Reader(path, lines, (), "topology", data)
    top.check_keys(["testbed", "prism-vnic", "overlay", "host"])

    tb = _Reader(path, lines, ("testbed",), "[testbed]", data.get("testbed", {}))
    tb.check_keys(["name", "queues"])
    name = tb.get("name", str, path.stem)
    if not NAME_RE.match(name):
        raise tb.error(f"name must be lower-case letters, digits and '-', not {name!r}", "name")
    queues = tb.integer("queues", 4, 1, 64)

    sw = _Reader(path, lines, ("prism-vnic",), "[prism-vnic]", data.get("prism-vnic", {}))
    sw.check_keys(["link-rate", "trust", "rules", "args"])
    switch = SwitchSpec()
    switch.link_rate = sw.get("link-rate", str)
    if switch.link_rate is not None and not RATE_RE.match(switch.link_rate):
        raise sw.error(f"link-rate must look like 100G, 25G, 500M or 0, not {switch.link_rate!r}",
                       "link-rate")
    switch.trust = sw.get("trust", str)
    if switch.trust is not None and switch.trust not in ("dscp", "pcp", "none"):
        raise sw.error(f"trust must be dscp, pcp or none, not {switch.trust!r}", "trust")
    rules = sw.get("rules", str)
    if rules is not None:
        switch.rules = (path.parent / rules).resolve()
        if not switch.rules.is_file():
            raise sw.error(f"rules file {switch.rules} does not exist", "rules")
    args = sw.get("args", list, [])
    if not all(isinstance(a, str) for a in args):
        raise sw.error("args must be a list of strings", "args")
    switch.args = list(args)

    overlay = None
    if "overlay" in data:
        ov = _Reader(path, lines, ("overlay",), "[overlay]", data["overlay"])
        ov.check_keys(["containers", "vni", "subnet"])
        containers = ov.integer("containers", 1, 1, 254 // HOSTS_MAX)
        vni = ov.integer("vni", 42, 0, (1 << 24) - 1)
        try:
            overlay = OverlayParams(containers=containers, vni=vni, subnet=ov.get("subnet", str, "192.168.42"))
        except ValueError as e:
            raise ov.error(str(e), "subnet") from e

    raw_hosts = data.get("host", [])
    if not isinstance(raw_hosts, list) or not raw_hosts:
        raise TopologyError(f"{path}:1: topology: no [[host]] tables (a testbed needs at least one host)")
    if len(raw_hosts) > HOSTS_MAX:
        raise TopologyError(f"{path}:{lines.get(('host', HOSTS_MAX), 1)}: topology: at most "
                            f"{HOSTS_MAX} hosts")
    hosts: list[HostSpec] = []
    for index, raw in enumerate(raw_hosts):
        hosts.append(_host(path, lines, index, raw, queues, overlay))
    _check_unique(path, lines, hosts, name)
    return Topology(path=path, name=name, queues=queues, switch=switch, overlay=overlay, hosts=hosts)


GUEST_KEYS = ["name", "kind", "port", "address", "kernel", "kernel-source", "vcpus", "memory",
              "queues", "containers", "pin"]
NETNS_KEYS = ["name", "kind", "port", "address"]


def _host(path: Path, lines: dict, index: int, raw: Any, queues: int,
          overlay: OverlayParams | None) -> HostSpec:
    r = _Reader(path, lines, ("host", index), f"host #{index + 1}", raw)
    name = r.get("name", str)
    if name is None:
        raise r.error("name is missing")
    if not NAME_RE.match(name):
        raise r.error(f"name must be lower-case letters, digits and '-', not {name!r}", "name")
    r.what = f"host {name!r}"
    kind = r.get("kind", str, "guest")
    if kind not in ("guest", "netns"):
        raise r.error(f"kind must be guest or netns, not {kind!r}", "kind")
    r.check_keys(GUEST_KEYS if kind == "guest" else NETNS_KEYS)
    port = r.get("port", str, name)
    if not NAME_RE.match(port):
        raise r.error(f"port must be lower-case letters, digits and '-', not {port!r}", "port")
    address = r.get("address", str)
    if address is not None:
        try:
            iface = ipaddress.ip_interface(address)
        except ValueError:
            raise r.error(f"address must be ADDRESS/PREFIX like 10.0.0.1/24, not {address!r}", "address") from None
        if "/" not in address or iface.version != 4:
            raise r.error(f"address must be IPv4 ADDRESS/PREFIX like 10.0.0.1/24, not {address!r}", "address")
    host = HostSpec(name=name, kind=kind, port=port, address=address)
    if kind == "netns":
        return host
    host.kernel = r.get("kernel", str, "prism")
    if host.kernel not in FLAVOURS and not Path(host.kernel).expanduser().is_file():
        raise r.error(f"kernel must be {' or '.join(FLAVOURS)} or the path of a bzImage; "
                      f"{host.kernel!r} is neither", "kernel")
    source = r.get("kernel-source", str)
    if source is not None:
        host.kernel_source = (path.parent / Path(source).expanduser()).resolve()
        if host.kernel not in FLAVOURS:
            raise r.error(f"kernel-source needs kernel = vanilla or prism, not {host.kernel!r}", "kernel-source")
        if not (host.kernel_source / "Makefile").is_file():
            raise r.error(f"kernel-source {host.kernel_source} is not a kernel source tree (no Makefile)",
                          "kernel-source")
    host.vcpus = r.integer("vcpus", 2, 1, 64)
    host.memory = r.get("memory", str, "1G")
    if not MEMORY_RE.match(host.memory):
        raise r.error(f"memory must look like 512M or 1G, not {host.memory!r}", "memory")
    host.queues = r.integer("queues", queues, 1, queues)
    default_containers = overlay.containers if overlay else 0
    host.containers = r.integer("containers", default_containers, 0, 254 // HOSTS_MAX)
    if host.containers and overlay is None:
        raise r.error("containers need an [overlay] table", "containers")
    if host.containers and address is None:
        raise r.error("containers need the host's address (the VXLAN underlay)", "containers")
    pin = r.get("pin", list, [])
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in pin):
        raise r.error(f"pin must be a list of host CPU numbers, not {pin!r}", "pin")
    host.pin = list(pin)
    return host


def _check_unique(path: Path, lines: dict, hosts: list[HostSpec], name: str) -> None:
    seen_names: set[str] = set()
    seen_ports: set[str] = set()
    seen_addrs: set[str] = set()
    for index, h in enumerate(hosts):
        where = f"{path}:{lines.get(('host', index), 1)}: host {h.name!r}"
        if h.name in seen_names:
            raise TopologyError(f"{where}: a second host with this name")
        if h.port in seen_ports:
            raise TopologyError(f"{where}: port {h.port!r} is already another host's")
        if h.address is not None:
            addr = h.address.split("/")[0]
            if addr in seen_addrs:
                raise TopologyError(f"{where}: address {addr} is already another host's")
            seen_addrs.add(addr)
        if h.kind == "netns" and len(f"{name}-{h.name}") > IFNAMSIZ:
            raise TopologyError(f"{where}: its tap device {name}-{h.name} would be longer than "
                                f"{IFNAMSIZ} characters: shorten testbed.name or the host's name")
        seen_names.add(h.name)
        seen_ports.add(h.port)
