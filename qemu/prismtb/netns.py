"""Host network namespaces on tap ports of prism-vnic: a "host" that is not a VM, for load
generators and servers running on the host's kernel.

The tap is created in the host's namespace (prism-vnic opens existing taps by name, --tap
NAME=IFNAME), prism-vnic attaches to it, and only then is it moved into the namespace and
configured: a tap keeps its open file across the move. Names must be unique on the machine
(put the owner in them); a tap name has at most 15 characters.
"""

from __future__ import annotations

import subprocess

from .shell import Shell

IFNAMSIZ = 15


class NetnsError(Exception):
    """A namespace or tap could not be created, configured or removed."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=60)
    if check and res.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def check_ifname(name: str) -> None:
    if not 1 <= len(name) <= IFNAMSIZ or any(c in name for c in "/ :"):
        raise NetnsError(f"interface name {name!r} must be 1..{IFNAMSIZ} characters without '/', ':' "
                         "or spaces")


def tap_exists(name: str) -> bool:
    return ip("link", "show", "dev", name, check=False).returncode == 0


def netns_exists(name: str) -> bool:
    res = ip("netns", "list", check=False)
    return any(line.split()[0] == name for line in res.stdout.splitlines() if line.strip())


def create_tap(name: str) -> None:
    """A persistent tap in the host's namespace, for prism-vnic --tap."""
    check_ifname(name)
    if tap_exists(name):
        raise NetnsError(f"interface {name} already exists: another testbed (or a leftover) uses "
                         f"it; remove it with `ip link del {name}` if it is a leftover")
    ip("tuntap", "add", "dev", name, "mode", "tap")


def delete_tap(name: str, netns: str | None = None) -> None:
    """Removes the tap wherever it is (host namespace, or netns); no error if gone."""
    if netns and netns_exists(netns):
        ip("-n", netns, "link", "del", name, check=False)
    if tap_exists(name):
        ip("link", "del", name, check=False)


class HostNetns(Shell):
    """A namespace whose eth0 is a prism-vnic tap port; run() runs shell commands in it."""

    def __init__(self, name: str, tap: str, address: str | None, mtu: int | None = None):
        self.name = name
        self.tap = tap
        self.address = address
        self.mtu = mtu

    def setup_commands(self) -> list[list[str]]:
        """The ip commands that move the (attached) tap in and configure it as eth0."""
        ns = self.name
        cmds = [["ip", "netns", "add", ns],
                ["ip", "link", "set", self.tap, "netns", ns],
                ["ip", "-n", ns, "link", "set", self.tap, "name", "eth0"],
                ["ip", "-n", ns, "link", "set", "lo", "up"]]
        if self.mtu:
            cmds.append(["ip", "-n", ns, "link", "set", "eth0", "mtu", str(self.mtu)])
        if self.address:
            cmds.append(["ip", "-n", ns, "addr", "add", self.address, "dev", "eth0"])
        cmds.append(["ip", "-n", ns, "link", "set", "eth0", "up"])
        return cmds

    def create(self) -> None:
        if netns_exists(self.name):
            raise NetnsError(f"network namespace {self.name} already exists: another testbed (or a "
                             f"leftover) uses it; `ip netns del {self.name}` if it is a leftover")
        for cmd in self.setup_commands():
            ip(*cmd[1:])

    def delete(self) -> None:
        """Removes the namespace and the tap in it (named eth0 by then); no error if gone."""
        if netns_exists(self.name):
            ip("-n", self.name, "link", "del", "eth0", check=False)
            ip("netns", "del", self.name, check=False)

    def run(self, cmd: str, timeout: float = 120.0) -> tuple[int, str]:
        """Runs cmd with sh in the namespace; (exit status, stdout and stderr)."""
        try:
            res = subprocess.run(["ip", "netns", "exec", self.name, "sh", "-c", cmd],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise NetnsError(f"{self.name}: `{cmd}` still running after {timeout:.0f} s") from e
        return res.returncode, res.stdout

    def exec_argv(self, argv: list[str]) -> list[str]:
        """The host command line that runs argv in the namespace (for passing a terminal through)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def error(self, message: str) -> Exception:
        return NetnsError(message)

    def __repr__(self) -> str:
        return f"HostNetns({self.name!r}, tap={self.tap!r}, address={self.address!r})"

