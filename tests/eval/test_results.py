"""Result directories, the report, the plots and `compare` on synthetic runs."""

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

from prismtb.eval import compare, results
from prismtb.eval.cli import finish_run

from eval_synthetic import RATIOS, turns

REPO = Path(__file__).resolve().parents[2]
META = {"profile": "synthetic", "rounds": 10, "turn_seconds": 1,
        "prism_vnic_commit": "0123abc",
        "kernels": {"prism": {"flavour": "prism", "series_hash": "feedbeef"},
                    "vanilla": {"flavour": "vanilla", "series_hash": "-"}}}


def make_run(tmp: Path, name: str, **kw) -> Path:
    out = tmp / name
    finish_run(out, META, turns(**kw))
    return out


# The runs are shared by the tests of this module: drawing their plots is the slow part.
@pytest.fixture(scope="module")
def run_a(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"), "a", seed=1)


@pytest.fixture(scope="module")
def run_b_same(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"), "b", seed=2)


@pytest.fixture(scope="module")
def run_b_worse(tmp_path_factory) -> Path:
    # The patch under test makes PRISM-sync lose most of its benefit.
    worse = {**RATIOS, "sync": {"p50_us": 0.8, "p99_us": 0.9, "bulk_mbps": 0.93}}
    return make_run(tmp_path_factory.mktemp("runs"), "b", seed=2, ratios=worse)


def test_a_synthetic_run_meets_its_known_goals(run_a):
    out = run_a
    summary = results.read_summary(out)
    g = summary["goals"]
    assert g["ordering_busy"]["met"], g
    assert g["paper_ordering_busy"]["met"], g
    assert g["vanilla_agrees_with_mode0"]["met"], g
    assert g["batch_bulk_0_9"]["met"], g
    assert g["calibration_10pct"]["met"], g
    cell = next(c for c in summary["cells"] if c["cell"]["server"] == "busy")
    batch = cell["ratios"]["p50_us"]["batch"]
    assert batch["low"] <= 0.5 <= batch["high"] and batch["high"] - batch["low"] < 0.1
    cal = summary["calibration"][0]
    assert cal["difference"]["low"] <= 150 <= cal["difference"]["high"]


def test_the_run_directory_holds_raw_json_csv_report_and_plots(run_a):
    out = run_a
    meta, ts = results.read_run(out)
    assert meta["prism_vnic_commit"] == "0123abc" and len(ts) == len(turns())
    rows = (out / "turns.csv").read_text().splitlines()
    assert len(rows) == len(ts) + 1
    assert rows[0].startswith("kernel_flavour,series_hash,prism_vnic_commit,setup")
    assert "feedbeef" in rows[1] or "feedbeef" in rows[2]
    text = (out / "report.md").read_text()
    assert "n/a" not in text, "every cell of the report has a number"
    assert "held: whole order in 10 of 10 rounds" in text
    assert "measured order sync < batch < mode0 (consistent over rounds)" in text
    pngs = sorted((out / "plots").glob("*.png"))
    assert {p.stem.split("-")[0] for p in pngs} >= {"flows", "throughput", "paired"}
    for p in pngs:
        assert (out / "plots" / f"{p.stem}.svg").exists()
        assert matplotlib.image.imread(p).shape[0] > 100
        assert f"plots/{p.name}" in text


def test_compare_of_two_runs_with_the_same_effects_finds_no_regression(run_a, run_b_same):
    assert compare.main(run_a, run_b_same) == 0


def test_compare_finds_an_injected_regression_and_exits_non_zero(run_a, run_b_worse):
    a, b = run_a, run_b_worse
    changes, _ = compare.compare(results.read_summary(a), results.read_summary(b))
    regressions = [c for c in changes if c.regression]
    assert any("p50_us sync/mode0" in c.what for c in regressions)
    assert any("ordering" in c.what for c in regressions)
    # sync now sits between batch and mode 0: a changed measured order, and still below.
    order = [c for c in changes if c.what == "measured order of p50_us"]
    assert order and order[0].a == "sync < batch < mode0"
    assert order[0].b == "batch < sync < mode0" and not order[0].regression
    assert not any("batch/mode0" in c.what for c in regressions)
    proc = subprocess.run([sys.executable, str(REPO / "benches" / "eval"), "compare",
                           str(a), str(b)], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "REGRESSION" in proc.stdout


def test_compare_counts_the_busy_cells_whose_measured_orders_two_runs_share(
        run_a, run_b_same, run_b_worse):
    a = results.read_summary(run_a)
    assert compare.same_orders(a, results.read_summary(run_b_same)) == (4, [])
    n, differ = compare.same_orders(a, results.read_summary(run_b_worse))
    assert n == 4 and len(differ) == 4 and "sync < batch < mode0 / batch < sync" in differ[0]


def test_a_mode_no_longer_below_mode0_is_a_regression_of_the_measured_order():
    ranked = {"ranking": ["batch", "sync", "mode0"],
              "links": [{"relation": "<"}, {"relation": "<"}]}
    tied = {"ranking": ["batch", "mode0", "sync"],
            "links": [{"relation": "~"}, {"relation": "~"}]}
    assert compare._below_mode0(ranked) == {"batch", "sync"}
    assert compare._below_mode0(tied) == set()


def test_compare_of_a_directory_without_a_run_says_so(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benches" / "eval"), "compare",
                           str(tmp_path), str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "not an evaluation result directory" in proc.stderr


def test_cdf_plots_are_drawn_from_the_turns_samples(tmp_path):
    ts = turns(rounds=2, flows=(0,))
    out = tmp_path / "run"
    (out / "raw").mkdir(parents=True)
    for i, t in enumerate(ts):
        rel = f"raw/{i}.samples.json"
        (out / rel).write_text(json.dumps([t["metrics"]["p50_us"] * (1 + k / 100)
                                           for k in range(100)]))
        t["samples"] = rel
    finish_run(out, META, ts)
    cdfs = sorted((out / "plots").glob("cdf-*.png"))
    assert len(cdfs) == 2  # idle and busy
    assert "cdf-" in (out / "report.md").read_text()


def test_goals_that_nothing_measured_are_not_measured_rather_than_failed():
    only_vanilla = [t for t in turns(rounds=2) if t["variant"] == "vanilla"]
    goals = results.analyse(only_vanilla)["goals"]
    assert all(g["met"] is None and g["measured"] == 0 for g in goals.values()), goals


def test_a_counter_one_kernel_lacks_is_left_out_of_that_variant_not_given_as_none():
    """The vanilla kernel has no /proc/net/prism: its turns carry no prism_* counters, and the
    summary gives it none (a median of None is not a figure; the quick run's check of every
    cell failed on it), while the PRISM variants keep theirs."""
    ts = turns(rounds=2)
    for t in ts:
        if t["variant"] != "vanilla":
            t["metrics"]["prism_yields"] = 3
    (entry, *_) = results.analyse(ts)["cells"]
    assert "prism_yields" not in entry["variants"]["vanilla"]
    assert entry["variants"]["mode0"]["prism_yields"]["median"] == 3
    assert all(s["median"] is not None for v in entry["variants"].values() for s in v.values())


def test_the_demo_table_shows_each_mode_with_its_ratio_to_mode0(run_a):
    from prismtb.eval import report
    lines = report.priority_table(results.read_summary(run_a))
    sync = next(line for line in lines if line.strip().startswith("sync"))
    # p50 ratio 0.3 and p99 ratio 0.4 by construction (eval_synthetic.RATIOS).
    assert sync.split()[-2:] == ["0.30", "0.40"], sync
    assert any("measured order sync < batch < mode0 (consistent" in line for line in lines)


def test_compare_judges_performance_metrics_not_counters():
    def summary(value):
        ratio = {"value": value, "low": value, "high": value, "n": 3, "per_round": [value] * 3}
        return {"cells": [{"slug": "x", "label": "x", "variants": {}, "ordering": {},
                           "agreement": {}, "ratios": {"nic_high_packets": {"sync": ratio},
                                                       "p99_us": {"sync": ratio}}}],
                "calibration": []}
    changes, _ = compare.compare(summary(0.5), summary(2.0))
    assert [c.what for c in changes] == ["p99_us sync/mode0"] and changes[0].regression


def test_the_calibration_judges_the_harness_against_the_delay_the_nic_applied():
    cell = results.Cell("host-client", "cal", "idle", True, 0, "overlay")
    ts = []
    for r in range(10):
        base = 300.0 + 10 * r  # the machine's drift, shared by the round
        for delay, shift, residence in ((0, 0.0, 20.0), (1000, 585.0 + (r % 3), 1190.0)):
            ts.append(results.new_turn(cell, "mode0", r, 0, {
                "p50_us": base + shift, "nic_high_residence_p50_us": residence},
                delay_us=delay))
    (cal,) = results.analyse_calibration(ts)
    # Set 1000 us, applied 1170 us (releasing a held frame costs a wake-up): expect +585.
    assert cal["nominal"] == 500 and cal["applied"]["value"] == 1170
    assert cal["expected"] == 585 and cal["passes"]
    without_nic = [{**t, "metrics": {"p50_us": t["metrics"]["p50_us"]}} for t in ts]
    (nominal,) = results.analyse_calibration(without_nic)
    assert nominal["expected"] == 500 and not nominal["passes"]  # +17% of the set delay


def test_measured_orders_that_list_tied_modes_differently_are_the_same_order():
    def order(ranking, relations):
        return {"ranking": ranking, "links": [{"relation": r} for r in relations]}
    a = order(["sync", "batch", "mode0"], ["~", "<"])
    assert compare.same_order(a, order(["batch", "sync", "mode0"], ["~", "<"]))
    assert not compare.same_order(a, order(["batch", "sync", "mode0"], ["<", "<"]))
    assert not compare.same_order(a, order(["batch", "sync", "mode0"], ["~", "~"]))
    assert compare.groups(a) == (frozenset({"sync", "batch"}), frozenset({"mode0"}))


def with_wait_metric(ts: list[dict], ratios: dict[str, float], noise: float,
                     p50_noise: float, seed: int = 5) -> list[dict]:
    """The turns of a PRISM boot with the kernel's wait counters on: WAIT_METRIC is mode 0's
    count times a known ratio, with `noise` per turn; p50 gets `p50_noise` per turn on top of
    the round's drift (the host's speed, which the count does not see)."""
    import random
    rng = random.Random(seed)
    for t in ts:
        if t["variant"] in ratios:
            t["metrics"][results.WAIT_METRIC] = 40.0 * ratios[t["variant"]] * rng.gauss(1, noise)
            t["metrics"]["p50_us"] *= rng.gauss(1, p50_noise)
    return ts


def test_the_report_says_whether_the_host_speed_independent_metric_tightens_the_intervals():
    from prismtb.eval import report
    wait = {"mode0": 1.0, "batch": 0.5, "sync": 0.25}
    tight = results.analyse(with_wait_metric(turns(), wait, noise=0.02, p50_noise=0.3))
    rows = tight["wait_metric"]
    # Both servers' cells of experiment b with 0 and 2 flows, batch and sync in each.
    assert len(rows) == 8 and all(r["narrower"] for r in rows), rows
    batch = next(r for r in rows if r["variant"] == "batch")
    assert abs(batch["wait"]["value"] - 0.5) < 0.02
    text = "\n".join(report.wait_section(rows))
    assert "## Host-speed-independent metric" in text
    assert f"{results.WAIT_METRIC}'s interval is the narrower in 8 of 8 comparisons" in text
    # A count noisier than the latency does not tighten anything, and the report says so.
    loose = results.analyse(with_wait_metric(turns(), wait, noise=0.5, p50_noise=0.0))
    assert not any(r["narrower"] for r in loose["wait_metric"])
    # Without the counters (the default) the report has no such section.
    assert results.analyse(turns())["wait_metric"] == []
    assert report.wait_section([]) == []
