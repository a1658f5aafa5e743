"""benches/nic.py with the release prism-vnic: SIGTERM in the middle stops its daemons and
removes its work directory (sockets, rule files), as Ctrl-C does. Behaviour only."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from prismtb import REPO
from prismtb.procs import processes_naming, sigterm_and_collect
from prismtb.switch import release_binary

NIC = REPO / "benches" / "nic.py"


def test_nic_bench_stopped_by_sigterm_mid_run_leaves_nothing_behind(tmp_path):
    binary = release_binary()
    if not binary.is_file():
        pytest.fail(f"{binary} missing: cargo build --release (or set PRISM_VNIC)", pytrace=False)
    # Its work directory is a temporary one: under TMPDIR, here tmp_path/tmp.
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    argv = ["/usr/bin/python3", str(NIC), "--only", "rules", "--secs", "30", "--repeat", "1",
            "--out", str(tmp_path / "out")]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "TMPDIR": str(tmp), "PRISM_VNIC": str(binary)}) as proc:
        try:
            assert proc.stderr is not None
            for line in proc.stderr:
                if line.startswith("rules=0 run 1/1"):
                    break
            # The daemon is up (its control socket answers) before the rates are read.
            deadline = time.monotonic() + 300
            while not list(tmp.glob("nic-bench-*/daemon/control.sock")):
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "no daemon came up within 300 s"
                time.sleep(0.05)
        finally:
            _, stderr = sigterm_and_collect(proc, 300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert list(tmp.iterdir()) == [], stderr
    assert processes_naming(str(tmp)) == []
