"""benches/vs_dpdk.py in its smallest cases, through real dpdk-testpmd processes and the release
prism-vnic: frames are forwarded by both backends, and once it exits nothing it started is left
(no process, no vhost-user socket, no DPDK runtime directory with its memory files). Behaviour
only: one turn of one second per backend, and no figure is compared with anything.

The processes, sockets and logs of a run all sit in its --logs directory, and the DPDK file
prefixes end with the bench's pid (another run at the same time, of this checkout or another,
has other ones)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from prismtb import REPO, dpdk
from prismtb.procs import processes_naming, sigterm_and_collect
from prismtb.switch import release_binary

VS_DPDK = REPO / "benches" / "vs_dpdk.py"
RUN_TIMEOUT = 900

pytestmark = pytest.mark.skipif(shutil.which("dpdk-testpmd") is None,
                                reason="dpdk-testpmd missing (.ci/install-deps installs dpdk)")


def runtime_dirs_of(pid: int) -> list[str]:
    """DPDK runtime directories (config, memory map files, sockets) of the testpmd processes a
    harness started: their file prefixes end with its pid."""
    root = dpdk.runtime_dir("x").parent
    return sorted(d.name for d in root.iterdir() if d.name.endswith(f"-{pid}")) if root.is_dir() else []


def run_vs_dpdk(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Runs the bench (one turn of one second per backend, 64-byte frames) and checks that
    it left nothing; (its result, its output directory)."""
    return run_bench(VS_DPDK, tmp_path, "--repeat", "1", "--secs", "1", "--frames", "64", *args)


def run_bench(script: Path, tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Runs a bench of vs_dpdk's kind with its --logs and --out in `tmp_path` and the release
    prism-vnic, and checks that it left nothing; (its result, its output directory)."""
    binary = release_binary()
    if not binary.is_file():
        pytest.fail(f"{binary} missing: cargo build --release (or set PRISM_VNIC)", pytrace=False)
    logs, out = tmp_path / "logs", tmp_path / "out"
    argv = ["/usr/bin/python3", str(script), "--logs", str(logs), "--out", str(out), *args]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "PRISM_VNIC": str(binary)}) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.terminate()
            stdout, stderr = proc.communicate(timeout=120)
            pytest.fail(f"{script.name} did not end within {RUN_TIMEOUT} s:\n{stderr}")
    res = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
    assert_nothing_left(proc.pid, logs, f"stdout:\n{stdout}\nstderr:\n{stderr}")
    return res, out


def assert_nothing_left(pid: int, logs: Path, diagnostics: str) -> None:
    # Everything the bench started had its sockets and logs in the logs directory: a process
    # still naming that directory is one it left running.
    assert processes_naming(str(logs)) == [], diagnostics
    assert sorted(str(p.relative_to(logs)) for p in logs.rglob("*") if p.is_socket()) == [], diagnostics
    assert runtime_dirs_of(pid) == [], diagnostics


def test_vs_dpdk_forwards_frames_through_both_backends_and_leaves_nothing_behind(tmp_path):
    res, out = run_vs_dpdk(tmp_path, "--only", "a,b,c")
    assert res.returncode == 0, res.stderr
    rows = json.loads((out / "vs_dpdk.json").read_text())
    assert [(r["case"], r["frame"]) for r in rows] == [("a", 64), ("b", 64), ("c", 64)]
    for row in rows:
        for backend in ("prism", "dpdk"):
            # A turn is measured only once frames flow (the counter grew twice in a row).
            runs = row[backend]
            assert len(runs) == 1 and runs[0] is not None, (row["case"], backend, res.stderr)
            assert len(runs[0]["rates"]) == 1, (row["case"], backend)
    # Where each case counts, frames arrived: (a) what A's ring took, (b) what A received,
    # (c) what B received (forwarded on to the null port, 3), after prism-vnic's switch or
    # DPDK's io forwarding.
    for case, port, key in (("a", 0, "TX-packets"), ("b", 0, "RX-packets"), ("c", 3, "TX-packets")):
        for backend in ("prism", "dpdk"):
            text = (tmp_path / "logs" / f"fe-{backend}-{case}.log").read_text(errors="replace")
            assert dpdk.port_counts(text, port, key)[-1] > 0, (case, backend)
    summary = [line for line in res.stdout.splitlines() if re.match(r"\([abc]\) +64 \|", line)]
    assert len(summary) == 3 and not any("failed" in line for line in summary), res.stdout


def test_vs_dpdk_against_a_baseline_binary_prints_the_ratio_and_its_verdict(tmp_path):
    """--baseline-binary pairs two prism-vnic builds (here the same one); the exit status
    follows the verdict line, whatever the ratio came out at."""
    res, _ = run_vs_dpdk(tmp_path, "--only", "c", "--baseline-binary", str(release_binary()),
                            "--max-loss", "0.5")
    assert "baseline: " in res.stdout.splitlines()[0], res.stdout
    assert "new / baseline, paired turn by turn" in res.stdout
    row = re.search(r"^\(c\) +64 \| +1 +(\d+\.\d{3}) +\d+\.\d{3} +\d+\.\d{3} \| (ok|LOSS)$",
                    res.stdout, re.M)
    assert row, res.stdout
    assert res.returncode == (0 if row.group(2) == "ok" else 1), res.stderr


def test_vs_dpdk_stopped_by_sigterm_mid_run_leaves_nothing_behind(tmp_path):
    """SIGTERM while both rigs of (c) are up: the bench stops what it started and exits."""
    logs = tmp_path / "logs"
    argv = ["/usr/bin/python3", str(VS_DPDK), "--only", "c", "--frames", "64", "--repeat", "100",
            "--secs", "1", "--logs", str(logs), "--out", str(tmp_path / "out")]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "PRISM_VNIC": str(release_binary())}) as proc:
        try:
            assert proc.stderr is not None
            for line in proc.stderr:
                if "turn 1/100" in line:
                    break
        finally:
            stdout, stderr = sigterm_and_collect(proc, 300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert_nothing_left(proc.pid, logs, f"stdout:\n{stdout}\nstderr:\n{stderr}")
