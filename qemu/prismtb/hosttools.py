"""The programs the harnesses run on the host itself, not in a guest, and the Debian
package of each, which .ci/install-deps installs (tests/repo/test_host_tools.py holds the
two together). A harness checks its share before it boots anything, so a machine without
one is told which package to install instead of waiting on a command that cannot run."""

from __future__ import annotations

import shutil

HOST_TOOLS = {
    "ip": "iproute2",
    "ping": "iputils-ping",
    "taskset": "util-linux",
    "ethtool": "ethtool",
    "tcpdump": "tcpdump",
    "sockperf": "sockperf",
    "iperf3": "iperf3",
    "memcaslap": "libmemcached-tools",
    "wrk": "wrk",
    "qemu-system-x86_64": "qemu-system-x86",
    "dpdk-testpmd": "dpdk-dev",
}

# The evaluation's host-client setup: the client in a host namespace (ip, taskset), its
# reachability check across the overlay (ping), the clients of experiments a, b and cal,
# and those of c and d where they run.
EVAL_HOST_CLIENT = ("ip", "taskset", "ping", "sockperf", "iperf3")
EVAL_HOST_CLIENT_APPS = {"c": "memcaslap", "d": "wrk"}


def eval_host_client(experiments) -> list[str]:
    """The host tools the host-client setup needs for these experiments."""
    return [*EVAL_HOST_CLIENT, *(EVAL_HOST_CLIENT_APPS[e] for e in experiments
                                 if e in EVAL_HOST_CLIENT_APPS)]


def missing(tools, path: str | None = None) -> list[str]:
    """`tool (package)` for each of `tools` not found on PATH (or `path`)."""
    return [f"{t} ({HOST_TOOLS[t]})" for t in tools if shutil.which(t, path=path) is None]
