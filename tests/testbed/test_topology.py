"""Topology files: the examples load, and every mistake is one line naming the file, the line
and what is wrong (through `qemu/testbed up` itself, which must refuse before starting anything)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from prismtb import REPO
from prismtb.topology import TopologyError, load

TESTBED = REPO / "qemu" / "testbed"
GOOD = """\
[testbed]
name = "t19unit"

[overlay]
containers = 2

[[host]]
name = "vm1"
address = "10.0.0.1/24"

[[host]]
name = "vm2"
kernel = "vanilla"
vcpus = 1
address = "10.0.0.2/24"

[[host]]
name = "gen"
kind = "netns"
port = "tap0"
address = "10.0.0.3/24"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "topo.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("example", sorted((REPO / "qemu" / "topologies").glob("*.toml")),
                         ids=lambda p: p.name)
def test_the_example_topologies_load(example):
    topo = load(example)
    assert topo.hosts


def test_a_topology_gives_hosts_ports_containers_and_names(tmp_path):
    topo = load(write(tmp_path, GOOD))
    vm1, vm2, gen = topo.hosts
    assert (vm1.kernel, vm1.vcpus, vm1.port, vm1.containers) == ("prism", 2, "vm1", 2)
    assert (vm2.kernel, vm2.vcpus) == ("vanilla", 1)
    assert (gen.kind, gen.port, gen.containers) == ("netns", "tap0", 0)
    assert topo.tap_name(gen) == "t19unit-gen"


BAD = [
    # (what is changed, the line the error is on, what the error says)
    (GOOD.replace('vcpus = 1', 'vcpu = 1'), 14, "host 'vm2': unknown key 'vcpu' (did you mean 'vcpus'?)"),
    (GOOD.replace('vcpus = 1', 'vcpus = 0'), 14, "host 'vm2': vcpus must be 1..64, not 0"),
    (GOOD.replace('vcpus = 1', 'vcpus = "two"'), 14, "host 'vm2': vcpus must be integer, not 'two'"),
    (GOOD.replace('kernel = "vanilla"', 'kernel = "/nonexistent/bzImage"'), 13,
     "kernel must be vanilla or prism or the path of a bzImage; '/nonexistent/bzImage' is neither"),
    (GOOD.replace('vcpus = 1', 'vcpus = 1\nkernel-source = "/nonexistent/linux"'), 15,
     "kernel-source /nonexistent/linux is not a kernel source tree (no Makefile)"),
    (GOOD.replace('port = "tap0"', 'port = "vm1"'), 17, "host 'gen': port 'vm1' is already another host's"),
    (GOOD.replace('address = "10.0.0.3/24"', 'address = "10.0.0.300/24"'), 21,
     "address must be ADDRESS/PREFIX like 10.0.0.1/24, not '10.0.0.300/24'"),
    (GOOD.replace('kind = "netns"', 'kind = "netns"\nvcpus = 2'), 20, "host 'gen': unknown key 'vcpus'"),
    (GOOD.replace('[overlay]', '[overlay]\nvni = -1'), 5, "[overlay]: vni must be 0..16777215, not -1"),
    (GOOD.replace('[testbed]', '[testbd]'), 1, "topology: unknown key 'testbd' (did you mean 'testbed'?)"),
    (GOOD.replace('name = "gen"', 'name = "generator-x"'), 17, "tap device t19unit-generator-x would be longer"),
    (GOOD.replace('containers = 2', 'containers = 2 2'), 5, "not valid TOML"),
]


@pytest.mark.parametrize("text,line,message", BAD, ids=[b[2][:40] for b in BAD])
def test_a_bad_topology_file_is_refused_with_file_line_and_what(tmp_path, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(TopologyError) as e:
        load(path)
    assert str(e.value).startswith(f"{path}:{line}: "), str(e.value)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_up_with_a_bad_topology_file_says_so_in_one_line_and_starts_nothing(tmp_path):
    path = write(tmp_path, GOOD.replace('vcpus = 1', 'vcpus = 1\nmemroy = "1G"'))
    env = {**os.environ, "PRISM_TESTBED_RUN": str(tmp_path / "run"),
           "PRISM_TESTBED_LOGS": str(tmp_path / "logs")}
    res = subprocess.run([str(TESTBED), "up", str(path)], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 2
    assert res.stderr == (f"testbed: {path}:15: host 'vm2': unknown key 'memroy' "
                          "(did you mean 'memory'?)\n")
    assert not (tmp_path / "run").exists() and not (tmp_path / "logs").exists()


def test_up_with_a_host_namespace_on_a_machine_without_ping_names_it_and_starts_nothing(
        tmp_path, path_without):
    # The host namespaces' reachability check runs ping on the host.
    path = write(tmp_path, (REPO / "qemu" / "topologies" / "guest-netns.toml").read_text())
    env = {**os.environ, "PATH": path_without("ping"), "PRISM_TESTBED_RUN": str(tmp_path / "run"),
           "PRISM_TESTBED_LOGS": str(tmp_path / "logs")}
    res = subprocess.run([str(TESTBED), "up", str(path)], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "ping (iputils-ping)" in res.stderr and "\n" not in res.stderr.rstrip("\n")
    assert not (tmp_path / "run").exists() and not (tmp_path / "logs").exists()
