#!/usr/bin/env python3
"""prism-vnic against DPDK's vhost PMD over a matrix of configurations, each cell paired.

benches/vs_dpdk.py measures each case in one configuration. What a user gets depends on what
the frontends choose, so this sweeps it: every cell is one of vs_dpdk.py's cases in one
configuration, both backends set up at once and taking turns on the CPUs (vs_dpdk.py's
interleaved method), and its figure is the paired ratio prism-vnic / DPDK (the median of the
turn-by-turn ratios of the two backends' rates).

The matrix (--sweep full, 156 cells, about 90 minutes with the defaults):
  (c) one io-forwarding frontend feeding A from a pcap and draining B into a null port:
      sender ring (A) x receiver ring (B) in 256, 512, 1024; testpmd burst 32, 64; frames of
      64, 1518 and 9000 bytes; 1 and 4 queue pairs: 108 cells;
  (a) a txonly frontend into the backend and (b) the backend into an rxonly frontend: the
      frontend's ring 256, 512, 1024; burst 32, 64; 64 and 1518 bytes; 1 and 4 queue pairs:
      24 cells each.
--sweep quick (about 10 minutes) is the subset where configurations have differed before:
unequal rings both ways and equal ones in (c) at 64 bytes, the largest frames, 4 queue pairs,
burst 64, and the largest ring in (a) and (b).

prism-vnic runs as vs_dpdk.py runs it (the NIC model on: classification, queues, residence
accounting), polling with --busy-poll-us (default 50 here, as DPDK's PMD polls) or
event-driven with --busy-poll-us 0. Output: a line per cell as it ends, a table, the cells
below --target (exit 1 if any), vs_dpdk_sweep.json and vs_dpdk_sweep.png (a heat map of the
paired ratios) in --out.

Usage: benches/vs_dpdk_sweep.py [--sweep quick|full] [--only a,b,c] [--match TEXT]... [--secs 2]
       [--repeat 3] [--busy-poll-us 50] [--target 1.0] [--out DIR] [--logs DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict

import vs_dpdk
from vs_dpdk import CASE_FAILURES, Settings

from prismtb import REPO
from prismtb.interp import ensure_system_python
from prismtb.procs import sigterm_exits

RINGS = (256, 512, 1024)
BURSTS = (32, 64)
QUEUES = (1, 4)
FRAMES = {"a": (64, 1518), "b": (64, 1518), "c": (64, 1518, 9000)}
# Seconds a cell costs besides its turns: two rigs set up (DPDK's vhost PMD maps the
# frontend's memory in 1-4 s) and torn down.
CELL_OVERHEAD_S = 12


def full_matrix(cases: list[str]) -> list[tuple[str, Settings]]:
    cells = []
    for case in cases:
        rings = itertools.product(RINGS, RINGS) if case == "c" else ((r, None) for r in RINGS)
        for (ring_a, ring_b), burst, frame, queues in itertools.product(
                list(rings), BURSTS, FRAMES[case], QUEUES):
            cells.append((case, Settings(frame=frame, ring_a=ring_a, ring_b=ring_b, burst=burst,
                                         queues=queues)))
    return cells


def quick_matrix(cases: list[str]) -> list[tuple[str, Settings]]:
    cells = []
    if "c" in cases:
        for ring_a, ring_b in ((256, 1024), (1024, 256), (256, 256), (1024, 1024)):
            cells.append(("c", Settings(frame=64, ring_a=ring_a, ring_b=ring_b, burst=32)))
        cells += [("c", Settings(frame=9000, ring_a=256, ring_b=1024, burst=32)),
                  ("c", Settings(frame=1518, ring_a=256, ring_b=1024, burst=32)),
                  ("c", Settings(frame=64, ring_a=256, ring_b=1024, burst=32, queues=4)),
                  ("c", Settings(frame=64, ring_a=1024, ring_b=1024, burst=64))]
    for case in ("a", "b"):
        if case in cases:
            cells.append((case, Settings(frame=64, ring_a=1024, burst=32)))
    return cells


def other_name() -> str:
    """What prism-vnic is compared with: DPDK, or a --baseline-binary build."""
    return vs_dpdk.SHORT[vs_dpdk.OTHER].split()[0]


def label(case: str, s: Settings) -> str:
    rings = f"{s.ring_a}->{s.ring_b}" if case == "c" else f"ring {s.ring_a}"
    return f"({case}) {rings}, burst {s.burst}, {s.frame} B, {s.queues}q"


def estimate_minutes(cells: list, repeat: int, secs: int) -> float:
    turn = secs + vs_dpdk.SETTLE_SECS + 1
    return len(cells) * (CELL_OVERHEAD_S + 2 * repeat * turn) / 60


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", choices=("quick", "full"), default="quick")
    ap.add_argument("--only", default="a,b,c", help="cases, of a,b,c")
    ap.add_argument("--secs", type=int, default=2, help="seconds measured per turn")
    ap.add_argument("--repeat", type=int, default=3, help="turns per backend and cell")
    ap.add_argument("--busy-poll-us", type=int, default=50,
                    help="prism-vnic's --busy-poll-us (0: event-driven, its default mode)")
    ap.add_argument("--target", type=float, default=1.0,
                    help="the paired ratio every cell should reach (exit 1 if one does not)")
    ap.add_argument("--out", default=os.path.join(REPO, "benches", "out"))
    ap.add_argument("--logs", help="keep the testpmd and prism-vnic logs in this directory")
    ap.add_argument("--match", action="append", default=[],
                    help="only the cells whose label (as --dry-run lists them) contains this "
                         "text, e.g. '4q' or '256->1024'; repeated: every text")
    ap.add_argument("--baseline-binary", metavar="PATH",
                    help="another prism-vnic build in DPDK's place (the 'DPDK' figures are then "
                         "its own): where a change gains or loses, cell by cell")
    ap.add_argument("--dry-run", action="store_true", help="list the cells and the time, and exit")
    args = ap.parse_args()
    cases = [c for c in args.only.split(",") if c]
    if set(cases) - set(FRAMES) or args.secs < 1 or args.repeat < 1:
        sys.exit("vs_dpdk_sweep: --only takes a,b,c; --secs and --repeat at least 1")
    cells = (quick_matrix if args.sweep == "quick" else full_matrix)(cases)
    cells = [(case, s) for case, s in cells if all(m in label(case, s) for m in args.match)]
    if not cells:
        sys.exit("vs_dpdk_sweep: no cell matches " + " and ".join(map(repr, args.match)))
    print(f"{len(cells)} cells, {args.repeat} turns of {args.secs} s per backend each, "
          f"~{estimate_minutes(cells, args.repeat, args.secs):.0f} min; prism-vnic "
          + ("event-driven" if not args.busy_poll_us else f"busy-poll {args.busy_poll_us} us"))
    if args.dry_run:
        for case, s in cells:
            print("  " + label(case, s))
        return 0
    if not shutil.which("dpdk-testpmd"):
        sys.exit("vs_dpdk_sweep: dpdk-testpmd not found (.ci/install-deps installs dpdk-dev)")
    if not os.path.exists(vs_dpdk.PRISM):
        sys.exit(f"vs_dpdk_sweep: {vs_dpdk.PRISM} missing: cargo build --release")
    vs_dpdk.BUSY_POLL_US = args.busy_poll_us
    if args.baseline_binary:
        if not os.access(args.baseline_binary, os.X_OK):
            sys.exit(f"vs_dpdk_sweep: --baseline-binary {args.baseline_binary} is not an executable")
        vs_dpdk.OTHER, vs_dpdk.BASELINE = "base", os.path.abspath(args.baseline_binary)
    results = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vs-dpdk-sweep-") as tmp:
        work = args.logs or tmp
        if args.logs:
            os.makedirs(args.logs, exist_ok=True)
        probe = vs_dpdk.build_probe(tmp)
        for k, (case, s) in enumerate(cells, 1):
            try:
                result = vs_dpdk.run_interleaved(case, s, args.repeat, args.secs, work, probe)
                error = None
            except CASE_FAILURES as e:
                result, error = {"prism": [], vs_dpdk.OTHER: []}, str(e)
            other = result[vs_dpdk.OTHER]
            ratio = vs_dpdk.paired_ratio(result["prism"], other) if not error else None
            ratios = vs_dpdk.turn_ratios(result["prism"], other)
            rate = lambda runs: statistics.median(r for run in runs if run for r in run.rates) \
                if any(runs) else None
            row = {"case": case, **asdict(s), "ratio": ratio,
                   "turn_ratios": ratios, "error": error,
                   "prism_mpps": (rate(result["prism"]) or 0) / 1e6,
                   "dpdk_mpps": (rate(other) or 0) / 1e6}
            results.append(row)
            elapsed = (time.monotonic() - started) / 60
            vs_dpdk.log(f"[{k}/{len(cells)}, {elapsed:.0f} min] {label(case, s)}: "
                        + (f"FAILED: {error}" if error else
                           f"prism-vnic {row['prism_mpps']:.2f} / {other_name()} {row['dpdk_mpps']:.2f} Mpps, "
                           f"paired {ratio:.3f}"))
    return report(results, args)


def report(results: list[dict], args) -> int:
    print(f"{'cell':<44} {'prism-vnic':>10} {other_name():>8} {'paired':>7}  turns")
    for r in results:
        s = Settings(**{k: r[k] for k in ("frame", "ring_a", "ring_b", "burst", "queues")})
        turns = " ".join(f"{x:.2f}" for x in r["turn_ratios"])
        print(f"{label(r['case'], s):<44} {r['prism_mpps']:>10.2f} {r['dpdk_mpps']:>8.2f} "
              + (f"{r['ratio']:>7.3f}  {turns}" if r["ratio"] is not None else "  failed"))
    below = [r for r in results if r["ratio"] is None or r["ratio"] < args.target]
    print(f"{len(results) - len(below)} of {len(results)} cells at or above {args.target}x {other_name()} "
          f"(paired, {args.repeat} turns of {args.secs} s)")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "vs_dpdk_sweep.json")
    with open(path, "w") as f:
        json.dump({"sweep": args.sweep, "busy_poll_us": args.busy_poll_us, "secs": args.secs,
                   "repeat": args.repeat, "target": args.target, "cells": results}, f, indent=1)
    print(f"wrote {path}" + plot(results, args))
    return 1 if below else 0


def plot(results: list[dict], args) -> str:
    """A heat map per case: rows the ring setups, columns frame x burst x queues, the paired
    ratio written in each cell (red below the target, green above)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import TwoSlopeNorm
    except ImportError:
        return " (matplotlib missing: no plot)"
    cases = sorted({r["case"] for r in results})
    fig, axes = plt.subplots(len(cases), 1, figsize=(12, 2.2 + 1.6 * len(cases) * 2),
                             squeeze=False)
    # Red below the target, green above; the scale reaches at least 0.5x and 1.5x.
    t = args.target
    norm = TwoSlopeNorm(vmin=min(0.5, t - 0.25), vcenter=t, vmax=max(1.5, t + 0.25))
    for ax, case in zip(axes.flat, cases):
        rows_ = [r for r in results if r["case"] == case]
        ring_keys = sorted({(r["ring_a"] or 0, r["ring_b"] or 0) for r in rows_})
        col_keys = sorted({(r["frame"], r["burst"] or 32, r["queues"]) for r in rows_})
        grid = [[float("nan")] * len(col_keys) for _ in ring_keys]
        for r in rows_:
            i = ring_keys.index((r["ring_a"] or 0, r["ring_b"] or 0))
            j = col_keys.index((r["frame"], r["burst"] or 32, r["queues"]))
            grid[i][j] = r["ratio"] if r["ratio"] is not None else float("nan")
        ax.imshow(grid, cmap="RdYlGn", norm=norm, aspect="auto")
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if v == v:
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
        ax.set_yticks(range(len(ring_keys)),
                      [f"{a}->{b}" if case == "c" else f"ring {a}" for a, b in ring_keys])
        ax.set_xticks(range(len(col_keys)), [f"{f} B\nb{b} {q}q" for f, b, q in col_keys],
                      fontsize=7)
        ax.set_title(f"({case}) prism-vnic / {vs_dpdk.NAMES[vs_dpdk.OTHER]}, paired"
                     + (" (sender ring -> receiver ring)" if case == "c" else ""))
    fig.tight_layout()
    path = os.path.join(args.out, "vs_dpdk_sweep.png")
    fig.savefig(path, dpi=110)
    return f", {path}"


if __name__ == "__main__":
    ensure_system_python()
    sigterm_exits()
    sys.exit(main())
