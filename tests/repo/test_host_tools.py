"""Every program a harness runs on the host itself (not in a guest) comes from a package
that .ci/install-deps installs, so a fresh machine can run every harness; a missing one is
said before anything boots, not found by a wait that runs out."""

from __future__ import annotations

import re
import subprocess

import pytest

from prismtb import REPO
from prismtb.hosttools import HOST_TOOLS, eval_host_client, missing


def install_deps_packages() -> set[str]:
    text = (REPO / ".ci" / "install-deps").read_text()
    m = re.search(r"^pkgs=\((.*?)\)", text, re.S | re.M)
    assert m, ".ci/install-deps has no pkgs=(...) list"
    # Besides the list, packages named on an apt-get line of their own (QEMU, from backports).
    own = {w for line in re.findall(r"apt-get install[^\n]*", text) for w in line.split()
           if re.fullmatch(r"[a-z0-9][a-z0-9.+-]+", w) and w not in ("apt-get", "install")}
    return set(m.group(1).split()) | own


# Packages of Debian's essential set: on every Debian machine, not named by install-deps.
ESSENTIAL = {"util-linux"}


def test_install_deps_installs_the_package_of_every_host_tool():
    pkgs = install_deps_packages() | ESSENTIAL
    lacking = {tool: pkg for tool, pkg in HOST_TOOLS.items() if pkg not in pkgs}
    assert not lacking, f"host tools whose package .ci/install-deps does not install: {lacking}"


def test_the_host_client_setup_needs_the_overlay_check_and_the_clients():
    assert {"ping", "sockperf", "iperf3", "ip", "taskset"} <= set(eval_host_client("ab"))
    assert not {"memcaslap", "wrk"} & set(eval_host_client(["a", "b", "cal"]))
    assert {"memcaslap", "wrk"} <= set(eval_host_client(["c", "d"]))
    assert set(eval_host_client(["a", "b", "c", "d", "cal"])) <= set(HOST_TOOLS)


def test_missing_names_each_absent_tool_with_its_package(tmp_path):
    (tmp_path / "ping").write_text("#!/bin/sh\n")
    (tmp_path / "ping").chmod(0o755)
    assert missing(["ping", "wrk"], path=str(tmp_path)) == ["wrk (wrk)"]


@pytest.mark.parametrize("tool", ["ping", "iperf3"])
def test_an_eval_run_without_a_host_tool_stops_before_booting_and_names_it(tmp_path, tool,
                                                                          path_without):
    env = {"PATH": path_without(tool), "HOME": "/root"}
    res = subprocess.run([str(REPO / "benches" / "eval"), "run", "--quick",
                          "--setups", "host-client", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"{tool} ({HOST_TOOLS[tool]})" in res.stderr
    assert "booting" not in res.stdout + res.stderr
