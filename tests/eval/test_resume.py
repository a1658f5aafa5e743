"""A run continued over several sessions, without QEMU: what is left of a partial run, the
round cut short dropped, the refusal of a session whose turns would not be comparable, and
the report's account of the sessions. (test_quick_run.py resumes a real run.)"""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from prismtb import REPO
from prismtb.eval import report, results, resume, runner

COMMIT = "abc1234"
QUICK = runner.PROFILES["quick"]


@pytest.fixture(autouse=True)
def clean_commit(monkeypatch):
    """The tests must not depend on the state of the tree or the machine they run in."""
    monkeypatch.setattr(runner, "_git_commit", lambda: COMMIT)
    monkeypatch.setattr(runner, "_machine", lambda: {"cpus": 2, "sched_autogroup": "0"})


def kernels(tmp_path: Path, prism_hash: str = "c3d1f16aefa8fa7b") -> dict[str, Path]:
    return {"prism": tmp_path / f"prism-{prism_hash}" / "bzImage",
            "vanilla": tmp_path / "vanilla-2b1a992fa26b5c83" / "bzImage"}


def fresh_meta(tmp_path: Path, profile=QUICK) -> dict:
    meta = runner.plan_meta(profile, kernels(tmp_path), tmp_path / "initrd.img")
    meta.update({"started": "2026-12-07T10:00:00+00:00",
                 "segments": resume.new_segments(runner.segments(profile))})
    resume.open_session(meta, "2026-12-07T10:00:00+00:00", "1.0 1.0 1.0", "0")
    return meta


def measured(meta: dict, segment: int, rnd: int, *, finished: bool = True,
             turns_done: int | None = None, profile=QUICK) -> list[dict]:
    """Turns of one round of a segment, logged as a session of `meta` measured them;
    `turns_done`: only that many, the round cut short."""
    seg = meta["segments"][segment]
    entry = {"round": rnd, "session": len(meta["sessions"]) - 1,
             "started": "2026-12-07T10:01:00+00:00"}
    seg["round_log"].append(entry)
    out = []
    for cell, steps in runner.round_groups(seg["flavour"], True, profile, rnd, seg["setup"]):
        for step in steps:
            out.append(results.new_turn(cell, step.variant, rnd, seg["boot"],
                                        {"p50_us": 100.0}, delay_us=step.delay_us))
    if turns_done is not None:
        out = out[:turns_done]
    if finished:
        entry["finished"] = "2026-12-07T10:02:00+00:00"
    meta["sessions"][-1]["last"] = "2026-12-07T10:02:00+00:00"
    return out


def test_the_plan_splits_each_setup_into_alternating_boot_segments():
    full = runner.PROFILES["full"]
    first, second = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]
    assert runner.segments(full) == [
        (setup, boot, flavour, rounds) for setup in ("host-client", "two-guests")
        for boot, (flavour, rounds) in enumerate([("prism", first), ("vanilla", first),
                                                  ("prism", second), ("vanilla", second)])]


def test_complete_rounds_are_skipped_and_a_round_cut_short_is_measured_again(tmp_path):
    meta = fresh_meta(tmp_path)
    turns = measured(meta, 0, 0) + measured(meta, 0, 1)
    partial = measured(meta, 0, 2, finished=False, turns_done=4)
    assert resume.left(meta) == [(meta["segments"][0], [2]), (meta["segments"][1], [0, 1, 2])]
    assert resume.describe_left(resume.left(meta), "; ") == \
        "host-client boot 0 (prism) rounds 2; host-client boot 1 (vanilla) rounds 0,1,2"
    # The cut round's raw files go aside; the complete rounds' stay.
    raw = tmp_path / "raw"
    raw.mkdir()
    cut = runner.step_tag(results.Cell.of(partial[0]), runner.Step("mode0"), 2)
    kept = runner.step_tag(results.Cell.of(turns[0]), runner.Step("mode0"), 0)
    for name in (f"{cut}.samples.json", f"{cut}.sockperf.txt", f"{kept}.samples.json",
                 "host-client-b-busy-steer-f2-overlay-prism-r2.iperf3.json",
                 "host-client-b-busy-steer-f2-overlay-vanilla-r2.iperf3.json"):
        (raw / name).write_text("x")

    left_turns = resume.drop_unfinished(
        tmp_path, meta, turns + partial, lambda seg, rnd: runner.round_raw_names(QUICK, seg, rnd))

    assert left_turns == turns
    assert {t["round"] for t in left_turns} == {0, 1}
    entry = meta["segments"][0]["round_log"][2]
    assert entry["dropped"] and entry["turns_dropped"] == 4
    aside = raw / "dropped" / "session-0"
    assert sorted(p.name for p in aside.iterdir()) == sorted(
        [f"{cut}.samples.json", f"{cut}.sockperf.txt",
         "host-client-b-busy-steer-f2-overlay-prism-r2.iperf3.json"])
    assert (raw / f"{kept}.samples.json").exists()
    # Not the vanilla boot's round 2: it is another segment's, not measured yet.
    assert (raw / "host-client-b-busy-steer-f2-overlay-vanilla-r2.iperf3.json").exists()
    # Still left: the dropped round, as before.
    assert resume.left(meta) == [(meta["segments"][0], [2]), (meta["segments"][1], [0, 1, 2])]


def test_a_finished_run_has_nothing_left(tmp_path):
    meta = fresh_meta(tmp_path)
    turns = [t for s in range(2) for r in range(3) for t in measured(meta, s, r)]
    assert resume.left(meta) == []
    assert resume.drop_unfinished(tmp_path, meta, turns, lambda seg, rnd: []) == turns


@pytest.mark.parametrize("change, named", [
    (lambda m: m["plan"].update(rounds=4), "plan"),
    (lambda m: m["plan"].update(seconds=4.0), "plan"),
    (lambda m: m["plan"].update(experiments=["b"]), "plan"),
    (lambda m: m["settings"].update(bulk_rate="50M"), "settings"),
    (lambda m: m["kernels"]["prism"].update(series_hash="649614bf00000000"), "kernels"),
    (lambda m: m.update(prism_vnic_commit="def5678"), "prism_vnic_commit"),
    (lambda m: m.update(initrd="/other/initrd.img"), "initrd"),
    (lambda m: m["machine"].update(sched_autogroup="1"), "machine sched_autogroup"),
    (lambda m: m["machine"].update(cpus=4), "machine cpus"),
    (lambda m: m["machine"].update(sched_autogroup="unknown"), "machine sched_autogroup"),
])
def test_a_session_whose_turns_would_not_be_comparable_is_refused(tmp_path, change, named):
    recorded = fresh_meta(tmp_path)
    now = runner.plan_meta(QUICK, kernels(tmp_path), tmp_path / "initrd.img")
    assert resume.differences(recorded, now) == []
    change(now)
    problems = resume.differences(recorded, now)
    assert len(problems) == 1 and problems[0].startswith(named + ":"), problems


def test_a_dirty_tree_or_a_run_from_before_resuming_cannot_be_resumed(tmp_path):
    recorded = fresh_meta(tmp_path)
    dirty = {**recorded, "prism_vnic_commit": f"{COMMIT}-dirty"}
    assert any("uncommitted" in p for p in resume.differences(dirty, dirty))
    old = {k: v for k, v in recorded.items() if k not in ("plan", "segments")}
    assert "before runs could be resumed" in resume.differences(old, recorded)[0]


def write_partial_run(tmp_path: Path) -> Path:
    out = tmp_path / "run"
    meta = fresh_meta(tmp_path)
    results.write_run(out, meta, measured(meta, 0, 0))
    return out


def test_the_command_refuses_to_resume_with_another_plan(tmp_path):
    out = write_partial_run(tmp_path)
    meta, _ = results.read_run(out)
    # The command runs in a process of its own, on this tree's commit.
    meta["prism_vnic_commit"] = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
        capture_output=True, text=True).stdout.strip()
    results.write_run(out, meta, [])
    before = (out / "run.json").read_text()
    proc = subprocess.run([sys.executable, str(REPO / "benches" / "eval"), "run", "--quick",
                           "--rounds", "4", "--out", str(out), "--resume"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "cannot resume the run" in proc.stderr and "plan: recorded" in proc.stderr
    assert (out / "run.json").read_text() == before


def test_a_run_is_never_written_over_and_resume_needs_a_run(tmp_path):
    out = write_partial_run(tmp_path)
    before = (out / "run.json").read_text()
    proc = subprocess.run([sys.executable, str(REPO / "benches" / "eval"), "run", "--quick",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "holds a run already" in proc.stderr, proc.stderr
    assert (out / "run.json").read_text() == before
    proc = subprocess.run([sys.executable, str(REPO / "benches" / "eval"), "run", "--quick",
                           "--out", str(tmp_path / "none"), "--resume"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "nothing to resume" in proc.stderr, proc.stderr


def test_the_report_says_the_run_was_resumed_how_often_and_over_what_span(tmp_path):
    meta = fresh_meta(tmp_path)
    turns = measured(meta, 0, 0) + measured(meta, 0, 1, finished=False, turns_done=2)
    resume.drop_unfinished(tmp_path, meta, turns, lambda seg, rnd: [])
    for started, last in (("2026-12-07T13:00:00+00:00", "2026-12-07T15:30:00+00:00"),
                          ("2026-12-07T16:00:00+00:00", "2026-12-07T17:00:00+00:00")):
        resume.open_session(meta, started, "2.0 2.0 2.0", "0")
        meta["sessions"][-1].update(last=last, loadavg_end="3.0 3.0 3.0")
    text = report.render(meta, {"cells": [], "calibration": []}, [], tmp_path)
    assert ("- RESUMED 2 times: 3 sessions from 2026-12-07T10:00:00+00:00 to "
            "2026-12-07T17:00:00+00:00, a span of 7.00 h of which the sessions ran "
            "3.53 h; 1 round(s) cut short (2 turns) dropped and measured again") in text
    assert "session 0: 2026-12-07T10:00:00+00:00 to 2026-12-07T10:02:00+00:00, 1 round(s)" \
        in text and "at end not recorded (ended by a kill)" in text
    assert "session 2:" in text and "at end 3.0 3.0 3.0" in text


def test_a_run_of_one_session_says_it_was_not_resumed(tmp_path):
    meta = fresh_meta(tmp_path)
    assert resume.report_lines(meta) == ["- sessions: 1, not resumed (0.00 h)"]
    assert resume.report_lines({}) == []


class FakeBed:
    """The testbed without QEMU: records its boots; the turns come from fake_cell."""
    boots: list = []

    def __init__(self, setup, flavour, kernel, initrd, logs, **kw):
        self.setup, self.flavour, self.apps = setup, flavour, True

    def up(self):
        FakeBed.boots.append((self.setup, self.flavour))

    def down(self):
        pass

    def set_server(self, busy):
        pass

    def set_steering(self, on):
        pass


class Killed(BaseException):
    """The session's end (a SIGTERM arrives as KeyboardInterrupt; this stands for it)."""


def test_a_run_killed_inside_a_round_resumes_to_the_same_complete_run(tmp_path, monkeypatch):
    profile = replace(QUICK, rounds=3, experiments=("b",))
    made = {"n": 0, "kill_at": 8}

    def fake_cell(bed, cell, steps, seconds, rnd, raw_dir):
        for step in steps:
            made["n"] += 1
            if made["n"] == made["kill_at"]:
                raise Killed()
            yield step, runner.step_tag(cell, step, rnd), {
                "metrics": {"p50_us": 100.0 + made["n"], "p99_us": 200.0 + made["n"],
                            "bulk_mbps": 500.0}, "raw": {}, "samples": [1.0, 2.0]}

    import prismtb.kernel
    monkeypatch.setattr(prismtb.kernel, "resolve_kernel",
                        lambda spec: kernels(tmp_path)[spec])
    monkeypatch.setattr(runner, "Bed", FakeBed)
    monkeypatch.setattr(runner, "measure_cell", fake_cell)
    FakeBed.boots = []
    out = tmp_path / "run"
    initrd = tmp_path / "initrd.img"
    quiet = lambda msg: None  # noqa: E731
    with pytest.raises(Killed):
        runner.run(profile, out, initrd=initrd, progress=quiet)
    # 3 turns per PRISM round: rounds 0 and 1 complete, round 2 cut after its 1st turn.
    meta, turns = results.read_run(out)
    assert len(turns) == 7 and "finished" not in meta

    made["kill_at"] = None
    FakeBed.boots = []
    summary = runner.run(profile, out, initrd=initrd, progress=quiet, resuming=True)
    meta, turns = results.read_run(out)
    assert FakeBed.boots == [("host-client", "prism"), ("host-client", "vanilla")]
    prism = [t for t in turns if t["variant"] != "vanilla"]
    assert sorted((t["round"], t["variant"]) for t in prism) == sorted(
        (r, v) for r in range(3) for v in ("mode0", "batch", "sync"))
    assert sorted(t["round"] for t in turns if t["variant"] == "vanilla") == [0, 1, 2]
    # Round 2 measured in the second session, its first attempt dropped.
    log = meta["segments"][0]["round_log"]
    assert [(e["round"], e["session"], bool(e.get("dropped"))) for e in log] == [
        (0, 0, False), (1, 0, False), (2, 0, True), (2, 1, False)]
    assert 107.0 not in [t["metrics"]["p50_us"] for t in turns]  # the dropped turn
    assert [c["ordering"]["p50_us"]["rounds"] for c in summary["cells"]] == [3]
    assert "RESUMED 1 time" in (out / "report.md").read_text()
    assert len(meta["sessions"]) == 2 and meta["finished"]

    # Once finished, resuming does nothing: no boot, no file rewritten; from any checkout
    # (this one has uncommitted changes), as nothing is measured.
    monkeypatch.setattr(runner, "_git_commit", lambda: f"{COMMIT}-dirty")
    FakeBed.boots = []
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert runner.run(profile, out, initrd=initrd, progress=quiet, resuming=True) is None
    assert FakeBed.boots == []
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert json.loads((out / "run.json").read_text())["meta"]["sessions"] == meta["sessions"]
