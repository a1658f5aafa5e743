"""The runner's plan, without QEMU: cells, round orders, boots, the time estimate."""

import subprocess
import sys

from prismtb import REPO
from prismtb.eval import runner


def test_rounds_alternate_the_order_of_modes():
    assert runner.round_order(0) == ["mode0", "batch", "sync"]
    assert runner.round_order(1) == ["sync", "batch", "mode0"]


def test_vanilla_boots_alternate_with_prism_boots_and_share_the_rounds():
    full = runner.PROFILES["full"]
    plan = runner.boot_plan(full)
    assert [k for k, _ in plan] == ["prism", "vanilla", "prism", "vanilla"]
    assert plan[0][1] == plan[1][1] == list(range(5))
    assert plan[2][1] == plan[3][1] == list(range(5, 10))


def test_the_full_profile_has_every_experiment_factor():
    full = runner.PROFILES["full"]
    cells = runner.cells(full, "host-client")
    assert {c.experiment for c in cells} == {"a", "b", "c", "d"}
    assert {c.server for c in cells} == {"idle", "busy"}
    assert {c.steering for c in cells} == {True, False}
    assert sorted({c.flows for c in cells if c.experiment == "b"}) == [0, 1, 2, 4, 8]
    assert {c.path for c in cells if c.experiment == "a"} == {"overlay", "host"}
    # 2 servers x 2 steering x (2 a + 5 b + c + d)
    assert len(cells) == 36


def test_the_quick_profile_fits_ci_budget_of_10_minutes():
    assert runner.estimate_minutes(runner.PROFILES["quick"]) <= 10


def test_dry_run_prints_the_plan():
    proc = subprocess.run([sys.executable, str(REPO / "benches" / "eval"), "--full",
                           "--dry-run"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "host-client: 36 cells" in proc.stdout and "two-guests" in proc.stdout


def test_unknown_experiment_is_refused():
    proc = subprocess.run([sys.executable, str(REPO / "benches" / "eval"), "--experiments",
                           "a,z", "--dry-run"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown experiments ['z']" in proc.stderr
