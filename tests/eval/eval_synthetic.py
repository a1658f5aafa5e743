"""Synthetic runs with known answers: every round's mode 0 drifts with a load factor, the
other variants are mode 0 times a known ratio times a little noise."""

from __future__ import annotations

import random

from prismtb.eval import results

RATIOS = {"vanilla": {"p50_us": 1.0, "p99_us": 1.0, "bulk_mbps": 1.0},
          "mode0": {"p50_us": 1.0, "p99_us": 1.0, "bulk_mbps": 1.0},
          "batch": {"p50_us": 0.5, "p99_us": 0.55, "bulk_mbps": 0.95},
          "sync": {"p50_us": 0.3, "p99_us": 0.4, "bulk_mbps": 0.93}}
BASE = {"p50_us": 900.0, "p90_us": 1200.0, "p99_us": 1500.0, "p99.9_us": 2500.0,
        "bulk_mbps": 1100.0}


def turns(rounds: int = 10, *, seed: int = 1, noise: float = 0.03,
          ratios: dict | None = None, experiments=("b",), flows=(0, 2),
          calibration_delay_us: int = 300, calibration_shift_us: float = 150.0) -> list[dict]:
    rng = random.Random(seed)
    ratios = ratios or RATIOS
    out = []
    for exp in experiments:
        for server in ("idle", "busy"):
            for f in flows:
                cell = results.Cell("host-client", exp, server, True, f, "overlay")
                for r in range(rounds):
                    load = rng.uniform(0.7, 1.5)  # the machine's drift, shared by the round
                    for v, vr in ratios.items():
                        metrics = {}
                        for m, base in BASE.items():
                            k = vr.get(m, vr.get("p99_us", 1.0) if m.endswith("_us") else 1.0)
                            scale = load if m.endswith("_us") else 1.0
                            metrics[m] = base * scale * k * rng.gauss(1.0, noise)
                        out.append(results.new_turn(cell, v, r, boot=0 if v != "vanilla" else 1,
                                                    metrics=metrics))
    cell = results.Cell("host-client", "cal", "idle", True, 0, "overlay")
    for r in range(rounds):
        base = 900.0 * rng.uniform(0.9, 1.1)
        for delay, shift in ((0, 0.0), (calibration_delay_us, calibration_shift_us)):
            metrics = {"p50_us": base + shift + rng.gauss(0, 3.0)}
            out.append(results.new_turn(cell, "mode0", r, boot=0, metrics=metrics,
                                        delay_us=delay))
    return out
