"""benches/vs_dpdk_sweep.py through real dpdk-testpmd processes and the release prism-vnic, in
one cell per case kind: a cell in another configuration than vs_dpdk.py's own (ring sizes,
burst, queue pairs) is set up as asked, both backends forward frames, its paired ratio is
written, and nothing is left behind. Behaviour only: no figure is compared with a target."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from prismtb import REPO
from prismtb.switch import release_binary

sys.path.insert(0, str(REPO / "benches"))
import vs_dpdk_sweep  # noqa: E402
from vs_dpdk import Settings  # noqa: E402

from test_vs_dpdk import assert_nothing_left  # noqa: E402

SWEEP = REPO / "benches" / "vs_dpdk_sweep.py"
RUN_TIMEOUT = 900

pytestmark = pytest.mark.skipif(shutil.which("dpdk-testpmd") is None,
                                reason="dpdk-testpmd missing (.ci/install-deps installs dpdk)")


def test_the_full_matrix_has_every_configuration_the_issue_names():
    cells = vs_dpdk_sweep.full_matrix(["a", "b", "c"])
    c = [s for case, s in cells if case == "c"]
    assert {(s.ring_a, s.ring_b) for s in c} == {(a, b) for a in (256, 512, 1024)
                                                 for b in (256, 512, 1024)}
    assert {s.burst for s in c} == {32, 64} and {s.queues for s in c} == {1, 4}
    assert {s.frame for s in c} == {64, 1518, 9000}
    assert len(c) == 108 and len(cells) == 156
    quick = vs_dpdk_sweep.quick_matrix(["a", "b", "c"])
    assert ("c", Settings(frame=64, ring_a=256, ring_b=1024, burst=32)) in quick


def test_a_sweep_cell_in_its_own_configuration_is_measured_against_dpdk_and_leaves_nothing(
        tmp_path):
    binary = release_binary()
    if not binary.is_file():
        pytest.fail(f"{binary} missing: cargo build --release (or set PRISM_VNIC)", pytrace=False)
    logs, out = tmp_path / "logs", tmp_path / "out"
    # The quick sweep's (a) cell: a 1024-entry ring, which neither backend gets by default.
    argv = ["/usr/bin/python3", str(SWEEP), "--sweep", "quick", "--only", "a", "--repeat", "1",
            "--secs", "1", "--target", "0", "--logs", str(logs), "--out", str(out)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "PRISM_VNIC": str(binary)}) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.terminate()
            stdout, stderr = proc.communicate(timeout=120)
            pytest.fail(f"vs_dpdk_sweep did not end within {RUN_TIMEOUT} s:\n{stderr}")
    diagnostics = f"stdout:\n{stdout}\nstderr:\n{stderr}"
    assert proc.returncode == 0, diagnostics
    assert_nothing_left(proc.pid, logs, diagnostics)
    result = json.loads((out / "vs_dpdk_sweep.json").read_text())
    [cell] = result["cells"]
    assert (cell["case"], cell["ring_a"], cell["error"]) == ("a", 1024, None), diagnostics
    assert cell["prism_mpps"] > 0 and cell["dpdk_mpps"] > 0 and cell["ratio"] > 0, diagnostics
    assert "1 of 1 cells at or above 0.0x DPDK" in stdout
    assert (out / "vs_dpdk_sweep.png").is_file()
    # The frontend was given the ring size: its virtio-user port says so on its command line.
    assert any("queue_size=1024" in p.read_text(errors="replace")
               for p in logs.rglob("*.log")) or "queue_size=1024" in stderr, diagnostics
