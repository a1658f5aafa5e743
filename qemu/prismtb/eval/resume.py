"""A run continued over several sessions (`benches/eval run ... --out DIR --resume`).

The full profile takes longer than a working session on a shared machine may last. A run
is planned as segments: one boot of one kernel in one setup, measuring a share of the
rounds (runner.boot_plan). Within a segment the unit of work is a round: the modes of every
cell take turns inside it, and its paired ratios need all of them, so a round is either
complete or measured again. run.json's meta records, per segment, each boot (the session
that booted it, when) and each round (the session, when it started and, once its last turn
was written, when it finished). A resumed session

- refuses when anything that makes turns comparable differs from what the run recorded
  (the plan, the settings, the commit, the kernels and the image, the machine's CPUs and
  scheduler setting): `differences`;
- drops the turns of a round that was started but not finished, and moves its raw files to
  raw/dropped/ where the analysis does not read them: `drop_unfinished`;
- boots only the segments with rounds left, and measures only those: `left`."""

from __future__ import annotations

import dataclasses
import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

# What a resumed session must have exactly as the run recorded it, or its turns would not
# be comparable with the ones measured before.
SAME = ("plan", "settings", "topology", "prism_vnic_commit", "kernels", "initrd")
SAME_MACHINE = ("cpus", "sched_autogroup")


class ResumeRefused(Exception):
    """The run in DIR cannot be continued by this session; the message says why."""


def plan_of(profile) -> dict:
    """The profile as run.json stores it (lists for tuples), every field of it: rounds,
    turn length, experiments and their factors, kernels, boots, calibration, options."""
    return _json(dataclasses.asdict(profile))


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def new_segments(boots: Iterable[tuple[str, int, str, list[int]]]) -> list[dict]:
    """meta["segments"] for a fresh run: (setup, boot, flavour, rounds) as planned."""
    return [{"setup": setup, "boot": boot, "flavour": flavour, "rounds": list(rounds),
             "boots": [], "round_log": []} for setup, boot, flavour, rounds in boots]


def differences(recorded: dict, now: dict) -> list[str]:
    """What differs between the recorded meta and this session's (empty: comparable).
    `now` needs only the keys it has: the commit can be checked before the kernels are
    resolved (which may build one)."""
    out = []
    if "segments" not in recorded or "plan" not in recorded:
        return ["the run was recorded before runs could be resumed (no plan or segments in "
                "its run.json)"]
    for key in SAME:
        if key in now and _json(recorded.get(key)) != _json(now[key]):
            out.append(f"{key}: recorded {_show(recorded.get(key))}, now {_show(now[key])}")
    for key in SAME_MACHINE:
        was = recorded.get("machine", {}).get(key)
        is_ = now.get("machine", {}).get(key)
        if "machine" in now and was != is_:
            out.append(f"machine {key}: recorded {was}, now {is_}")
    if "prism_vnic_commit" not in now:
        return out
    for commit in {recorded.get("prism_vnic_commit"), now.get("prism_vnic_commit")}:
        if isinstance(commit, str) and commit.endswith("-dirty"):
            out.append(f"prism-vnic commit {commit} has uncommitted changes: a resumed run "
                       f"must run the same code as the sessions before it")
    return out


def _show(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 300 else text[:300] + "..."


def complete_rounds(meta: dict) -> set[tuple[str, int, int]]:
    """(setup, boot, round) of every round whose last turn was written."""
    return {(s["setup"], s["boot"], r["round"]) for s in meta.get("segments", [])
            for r in s["round_log"] if r.get("finished")}


def left(meta: dict) -> list[tuple[dict, list[int]]]:
    """[(segment, rounds not complete)] for the segments with rounds left, in plan order."""
    done = complete_rounds(meta)
    out = []
    for seg in meta.get("segments", []):
        rounds = [r for r in seg["rounds"] if (seg["setup"], seg["boot"], r) not in done]
        if rounds:
            out.append((seg, rounds))
    return out


def describe_left(todo: list[tuple[dict, list[int]]], sep: str) -> str:
    """`left()`'s answer in words, one segment after another joined by `sep`; "" for none."""
    return sep.join(f"{s['setup']} boot {s['boot']} ({s['flavour']}) rounds "
                    f"{','.join(map(str, rs))}" for s, rs in todo)


def drop_unfinished(out: Path, meta: dict, turns: list[dict], raw_names) -> list[dict]:
    """The turns of complete rounds. A round started and not finished (the session ended
    inside it) is marked dropped in its segment's round_log with the number of its turns
    dropped, and its raw files (`raw_names(segment, round)`: the names a round writes) are
    moved to raw/dropped/session-N/, kept but not analysed."""
    done = complete_rounds(meta)
    kept = [t for t in turns if (t["setup"], t["boot"], t["round"]) in done]
    for seg in meta["segments"]:
        for entry in seg["round_log"]:
            if entry.get("finished") or entry.get("dropped"):
                continue
            entry["dropped"] = True
            entry["turns_dropped"] = sum(
                1 for t in turns if (t["setup"], t["boot"], t["round"])
                == (seg["setup"], seg["boot"], entry["round"]))
            aside = out / "raw" / "dropped" / f"session-{entry['session']}"
            for name in raw_names(seg, entry["round"]):
                for path in (out / "raw").glob(name):
                    aside.mkdir(parents=True, exist_ok=True)
                    shutil.move(str(path), aside / path.name)
    return kept


def open_session(meta: dict, now: str, loadavg: str, sched_autogroup: str) -> int:
    """Appends this session to meta["sessions"]; its index."""
    sessions = meta.setdefault("sessions", [])
    sessions.append({"started": now, "last": now, "loadavg_start": loadavg,
                     "sched_autogroup": sched_autogroup})
    return len(sessions) - 1


def _when(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


def summary(meta: dict) -> dict | None:
    """How the run was spread over sessions: their count, the resumes, the span from the
    first session's start to the last one's last record, the time the sessions measured,
    and the rounds cut short and measured again. None for a run without sessions."""
    sessions = meta.get("sessions") or []
    if not sessions:
        return None
    first, last = _when(sessions[0]["started"]), _when(sessions[-1]["last"])
    busy = sum((_when(s["last"]) - _when(s["started"])).total_seconds() for s in sessions)
    dropped = [r for s in meta.get("segments", []) for r in s["round_log"] if r.get("dropped")]
    return {"sessions": len(sessions), "resumes": len(sessions) - 1,
            "first_started": sessions[0]["started"], "last_recorded": sessions[-1]["last"],
            "span_hours": (last - first).total_seconds() / 3600, "session_hours": busy / 3600,
            "rounds_dropped": len(dropped),
            "turns_dropped": sum(r.get("turns_dropped", 0) for r in dropped)}


def report_lines(meta: dict) -> list[str]:
    """The report's lines on the sessions: one for the whole, one per session when the run
    was resumed (each session's load average, so the reader sees what the machine did)."""
    s = summary(meta)
    if s is None:
        return []
    if not s["resumes"]:
        return [f"- sessions: 1, not resumed ({s['session_hours']:.2f} h)"]
    lines = [f"- RESUMED {s['resumes']} time{'s' if s['resumes'] > 1 else ''}: "
             f"{s['sessions']} sessions from {s['first_started']} to {s['last_recorded']}, "
             f"a span of {s['span_hours']:.2f} h of which the sessions ran "
             f"{s['session_hours']:.2f} h; {s['rounds_dropped']} round(s) cut short "
             f"({s['turns_dropped']} turns) dropped and measured again"]
    for i, sess in enumerate(meta["sessions"]):
        rounds = sum(1 for seg in meta["segments"] for r in seg["round_log"]
                     if r["session"] == i and r.get("finished"))
        lines.append(f"  - session {i}: {sess['started']} to {sess['last']}, {rounds} "
                     f"round(s) completed, load average at start {sess['loadavg_start']}, "
                     f"at end {sess.get('loadavg_end', 'not recorded (ended by a kill)')}, "
                     f"sched_autogroup {sess.get('sched_autogroup')}")
    return lines
