"""benches/vs_dpdk_sweep.py through real dpdk-testpmd processes and the release prism-vnic, in
one cell per case kind: a cell in another configuration than vs_dpdk.py's own (ring sizes,
burst, queue pairs) is set up as asked, both backends forward frames, its paired ratio is
written, and nothing is left behind. Behaviour only: no figure is compared with a target."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from prismtb import REPO

from test_vs_dpdk import release_binary, run_bench

SWEEP = REPO / "benches" / "vs_dpdk_sweep.py"

pytestmark = pytest.mark.skipif(shutil.which("dpdk-testpmd") is None,
                                reason="dpdk-testpmd missing (.ci/install-deps installs dpdk)")


def planned_cells(sweep: str, *extra: str) -> list[str]:
    proc = subprocess.run(["/usr/bin/python3", str(SWEEP), "--sweep", sweep, "--dry-run", *extra],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [line.strip() for line in proc.stdout.splitlines()[1:]]


def test_match_keeps_the_cells_whose_label_holds_every_text_given():
    cells = planned_cells("full", "--match", "4q", "--match", "64 B", "--only", "c")
    assert len(cells) == 18 and all("4q" in x and "64 B" in x for x in cells)
    proc = subprocess.run(["/usr/bin/python3", str(SWEEP), "--dry-run", "--match", "no such cell"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "no cell matches" in proc.stderr


def test_the_full_matrix_has_every_configuration_the_issue_names():
    cells = planned_cells("full")
    c = [re.fullmatch(r"\(c\) (\d+)->(\d+), burst (\d+), (\d+) B, (\d+)q", x) for x in cells
         if x.startswith("(c)")]
    assert all(c) and len(c) == 108 and len(cells) == 156
    fields = list(zip(*(m.groups() for m in c)))
    assert set(zip(fields[0], fields[1])) == {(a, b) for a in ("256", "512", "1024")
                                              for b in ("256", "512", "1024")}
    assert set(fields[2]) == {"32", "64"} and set(fields[3]) == {"64", "1518", "9000"}
    assert set(fields[4]) == {"1", "4"}
    assert {x.split(",")[0] for x in cells if not x.startswith("(c)")} == {
        f"({case}) ring {ring}" for case in "ab" for ring in (256, 512, 1024)}
    assert "(c) 256->1024, burst 32, 64 B, 1q" in planned_cells("quick")


def test_a_sweep_cell_in_its_own_configuration_is_measured_against_dpdk_and_leaves_nothing(
        tmp_path):
    # The quick sweep's (a) cell: a 1024-entry ring, which neither backend gets by default.
    res, out = run_bench(SWEEP, tmp_path, "--sweep", "quick", "--only", "a", "--repeat", "1",
                         "--secs", "1", "--target", "0")
    diagnostics = f"stdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    assert res.returncode == 0, diagnostics
    result = json.loads((out / "vs_dpdk_sweep.json").read_text())
    [cell] = result["cells"]
    assert (cell["case"], cell["ring_a"], cell["error"]) == ("a", 1024, None), diagnostics
    assert cell["prism_mpps"] > 0 and cell["dpdk_mpps"] > 0 and cell["ratio"] > 0, diagnostics
    assert "1 of 1 cells at or above 0.0x DPDK" in res.stdout
    assert (out / "vs_dpdk_sweep.png").is_file()


def test_four_queue_pairs_forward_through_one_worker_thread_against_a_baseline_build(tmp_path):
    # The quick sweep's (c) cell with 4 queue pairs, the release build against itself as the
    # baseline: the pcap's flows spread over B's queues, each port's pairs share the one
    # worker thread a backend pinned to one CPU gets, and both builds forward frames.
    res, out = run_bench(SWEEP, tmp_path, "--sweep", "quick", "--only", "c", "--match", "4q",
                         "--baseline-binary", str(release_binary()), "--repeat", "1",
                         "--secs", "1", "--target", "0")
    diagnostics = f"stdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    assert res.returncode == 0, diagnostics
    [cell] = json.loads((out / "vs_dpdk_sweep.json").read_text())["cells"]
    assert (cell["case"], cell["queues"], cell["error"]) == ("c", 4, None), diagnostics
    assert cell["prism_mpps"] > 0 and cell["dpdk_mpps"] > 0, diagnostics
    assert "baseline" in res.stderr or "baseline" in res.stdout, diagnostics
