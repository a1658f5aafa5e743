"""The run's plots, PNG and SVG each: latency CDFs per variant, percentiles against bulk
flows, bulk throughput, and the per-round paired ratios. matplotlib with the Agg backend
(no display)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from . import results, stats  # noqa: E402

COLOURS = {"vanilla": "tab:gray", "mode0": "tab:blue", "batch": "tab:orange",
           "sync": "tab:green"}


def _save(fig, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "svg"):
        path = out / f"{name}.{ext}"
        fig.savefig(path, dpi=110 if ext == "png" else None, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def _samples(run_dir: Path, turn: dict) -> list[float]:
    rel = turn.get("samples")
    if not rel:
        return []
    return json.loads((run_dir / rel).read_text())


def cdfs(run_dir: Path, turns: list[dict], summary: dict) -> list[Path]:
    """One figure per cell that has samples: the CDF of the priority flow's latency per
    variant, all rounds pooled."""
    paths = []
    for entry in summary["cells"]:
        cell = results.Cell(**entry["cell"])
        ts = [t for t in turns if results.Cell.of(t) == cell and t.get("delay_us", 0) == 0]
        fig, ax = plt.subplots(figsize=(6, 4))
        drawn = 0
        for v in stats.VARIANTS:
            xs = sorted(x for t in ts if t["variant"] == v for x in _samples(run_dir, t))
            if not xs:
                continue
            ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], label=v,
                    color=COLOURS[v])
            drawn += 1
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xscale("log")
        ax.set_xlabel("latency (us; sockperf: half round trip)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"CDF: {entry['label']}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        paths += _save(fig, run_dir / "plots", f"cdf-{entry['slug']}")
    return paths


def against_flows(run_dir: Path, summary: dict) -> list[Path]:
    """Experiment b: p50 and p99 (median over rounds, bars min-max) against bulk flows, and
    the bulk throughput against bulk flows, per variant; one figure per setup, server and
    steering."""
    groups: dict[tuple, list[dict]] = {}
    for entry in summary["cells"]:
        c = entry["cell"]
        if c["experiment"] == "b":
            groups.setdefault((c["setup"], c["server"], c["steering"]), []).append(entry)
    paths = []
    for (setup, server, steering), entries in sorted(groups.items()):
        entries.sort(key=lambda e: e["cell"]["flows"])
        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        for ax, metric in zip(axes, ("p50_us", "p99_us", results.THROUGHPUT)):
            for v in stats.VARIANTS:
                pts = [(e["cell"]["flows"], e["variants"][v][metric]) for e in entries
                       if v in e["variants"] and metric in e["variants"][v]
                       and e["variants"][v][metric]["median"] is not None]
                if not pts:
                    continue
                xs = [p[0] for p in pts]
                med = [p[1]["median"] for p in pts]
                err = [[p[1]["median"] - p[1]["min"] for p in pts],
                       [p[1]["max"] - p[1]["median"] for p in pts]]
                ax.errorbar(xs, med, yerr=err, marker="o", capsize=3, label=v,
                            color=COLOURS[v])
            ax.set_xlabel("bulk flows")
            ax.set_ylabel("Mbit/s" if metric == results.THROUGHPUT else f"{metric[:-3]} (us)")
            ax.set_title(metric.replace("_", " "))
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        steer = "steer" if steering else "nosteer"
        fig.suptitle(f"priority flow against bulk flows ({setup}, {server}, {steer})",
                     fontsize=10)
        paths += _save(fig, run_dir / "plots", f"flows-{setup}-{server}-{steer}")
    return paths


def throughput(run_dir: Path, summary: dict) -> list[Path]:
    """Bulk throughput per cell and variant (median over rounds)."""
    entries = [e for e in summary["cells"]
               if any(results.THROUGHPUT in m for m in e["variants"].values())]
    if not entries:
        return []
    fig, ax = plt.subplots(figsize=(max(6, len(entries) * 0.9), 4))
    width = 0.2
    for i, v in enumerate(stats.VARIANTS):
        xs, ys = [], []
        for j, e in enumerate(entries):
            s = e["variants"].get(v, {}).get(results.THROUGHPUT)
            if s and s["median"] is not None:
                xs.append(j + (i - 1.5) * width)
                ys.append(s["median"])
        if xs:
            ax.bar(xs, ys, width=width, label=v, color=COLOURS[v])
    ax.set_xticks(range(len(entries)))
    ax.set_xticklabels([e["label"] for e in entries], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("bulk throughput (Mbit/s)")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, run_dir / "plots", "throughput")


def paired_ratios(run_dir: Path, summary: dict) -> list[Path]:
    """Per busy cell: each round's ratio of batch, sync and vanilla to mode 0 (p50 and p99),
    with the 95% interval as a band."""
    entries = [e for e in summary["cells"] if e["ratios"].get("p50_us")]
    if not entries:
        return []
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5), sharey=True)
    for ax, metric in zip(axes, results.LATENCY_METRICS):
        for j, e in enumerate(entries):
            for k, v in enumerate(("vanilla", "batch", "sync")):
                r = e["ratios"].get(metric, {}).get(v)
                if not r:
                    continue
                x = j + (k - 1) * 0.25
                ax.scatter([x] * len(r["per_round"]), r["per_round"], s=10,
                           color=COLOURS[v], label=v if j == 0 else None)
                ax.plot([x, x], [r["low"], r["high"]], color=COLOURS[v], linewidth=4,
                        alpha=0.35)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")  # a ratio of 0.5 is as far from 1 as one of 2
        ax.set_xticks(range(len(entries)))
        ax.set_xticklabels([e["label"] for e in entries], rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{metric[:-3]}: per-round ratio to mode 0 (band: 95% interval)")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, run_dir / "plots", "paired-ratios")


def all_plots(run_dir: Path, turns: list[dict], summary: dict) -> list[Path]:
    return (cdfs(run_dir, turns, summary) + against_flows(run_dir, summary)
            + throughput(run_dir, summary) + paired_ratios(run_dir, summary))
