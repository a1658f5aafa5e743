"""The Markdown report of a run: the machine and versions, then per experiment and cell a
table (median over rounds with min-max, ratio to mode 0 with its 95% interval) and the
verdict on the paper's ordering, the calibration, and the goals."""

from __future__ import annotations

from pathlib import Path

from . import results, resume, stats


def _num(x: float | None, digits: int = 0) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _ratio(r: dict | None) -> str:
    if not r:
        return "n/a"
    return f"{r['value']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"


def cell_table(entry: dict) -> list[str]:
    metrics = [m for m in (*results.TABLE_METRICS, results.THROUGHPUT, "ops_per_s",
                           "requests_per_s")
               if any(m in v for v in entry["variants"].values())]
    head = ["variant"] + [f"{m} (median, min-max)" for m in metrics] + \
        [f"{m} / mode0 [95%]" for m in metrics if m in (*results.LATENCY_METRICS,
                                                      results.THROUGHPUT)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in stats.VARIANTS:
        if v not in entry["variants"]:
            continue
        row = [v]
        for m in metrics:
            s = entry["variants"][v].get(m) or {}
            digits = 1 if m.endswith("_us") else 0
            row.append(f"{_num(s.get('median'), digits)} ({_num(s.get('min'), digits)}-"
                       f"{_num(s.get('max'), digits)}, n={s.get('n', 0)})")
        for m in metrics:
            if m in (*results.LATENCY_METRICS, results.THROUGHPUT):
                row.append("1" if v == stats.BASELINE
                           else _ratio(entry["ratios"].get(m, {}).get(v)))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def cell_verdicts(entry: dict) -> list[str]:
    out = []
    for m in results.LATENCY_METRICS:
        o = entry["ordering"].get(m)
        if o and o["rounds"]:
            order = stats.Ordering(order=tuple(o["order"]), rounds=o["rounds"],
                                   held_rounds=o["held_rounds"], pairs=o["pairs"])
            out.append(f"- {m}: {order.sentence()}")
        ob = entry.get("observed", {}).get(m)
        if ob and ob["ranking"]:
            observed = stats.Observed(ranking=tuple(ob["ranking"]), links=ob["links"])
            out.append(f"- {m}: {observed.sentence()}")
        a = entry["agreement"].get(m)
        if a and a["rounds"]:
            word = "agree" if a["agree"] else "DIFFER"
            out.append(f"- {m}: vanilla / mode0 = {_ratio(a['ratio'])} over {a['rounds']} "
                       f"rounds: they {word}")
    if entry.get("batch_bulk_at_least_0_9") is not None:
        word = "keeps" if entry["batch_bulk_at_least_0_9"] else "does NOT keep"
        out.append(f"- bulk: batch {word} 0.9x mode 0's throughput")
    return out


def priority_table(summary: dict, experiment: str = "b") -> list[str]:
    """The three modes at a glance (qemu/demo): per cell of `experiment`, each variant's
    p50 and p99 (median over rounds), bulk throughput, and the ratios to mode 0."""
    lines = []
    for e in summary["cells"]:
        if e["cell"]["experiment"] != experiment:
            continue
        lines += [f"{e['label']}:", f"  {'variant':8} {'p50 us':>9} {'p99 us':>9} "
                  f"{'bulk Mbit/s':>12} {'p50/mode0':>10} {'p99/mode0':>10}"]
        for v in stats.VARIANTS:
            if v not in e["variants"]:
                continue
            m = e["variants"][v]
            med = {k: (m.get(k) or {}).get("median") for k in ("p50_us", "p99_us",
                                                                 results.THROUGHPUT)}
            ratio = {k: 1.0 if v == stats.BASELINE else
                     (e["ratios"].get(k, {}).get(v) or {}).get("value")
                     for k in results.LATENCY_METRICS}
            lines.append(f"  {v:8} {_num(med['p50_us']):>9} {_num(med['p99_us']):>9} "
                         f"{_num(med[results.THROUGHPUT]):>12} "
                         f"{_num(ratio['p50_us'], 2):>10} {_num(ratio['p99_us'], 2):>10}")
        for m in results.LATENCY_METRICS:
            ob = e.get("observed", {}).get(m)
            if ob and ob["ranking"]:
                lines.append(f"  {m}: " + stats.Observed(
                    ranking=tuple(ob["ranking"]), links=ob["links"]).sentence())
    return lines


def wait_section(rows: list[dict]) -> list[str]:
    """Whether the host-speed-independent metric (results.WAIT_METRIC) tightens the
    intervals: its paired ratio to mode 0 beside p50's, with each interval's spread."""
    if not rows:
        return []
    m = results.WAIT_METRIC
    lines = ["## Host-speed-independent metric", "",
             f"{m}: the packets the server's CPU handled while a priority packet went from "
             "the driver to its socket, itself counted as one, mean per turn (1 + the "
             "kernel's prio_waited / prio_waits, `--knob prism_wait_stats=1`). Spread: an "
             "interval's high / low.",
             "", f"| cell | variant | {m} / mode0 [95%] | spread | p50 / mode0 [95%] | "
             "spread | narrower |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['variant']} | {_ratio(r['wait'])} | "
                     f"{results.spread_factor(r['wait']):.2f} | {_ratio(r['p50'])} | "
                     f"{results.spread_factor(r['p50']):.2f} | "
                     f"{'yes' if r['narrower'] else 'no'} |")
    narrower = sum(r["narrower"] for r in rows)
    lines += ["", f"{m}'s interval is the narrower in {narrower} of {len(rows)} comparisons.",
              ""]
    return lines


def render(meta: dict, summary: dict, plots: list[Path], run_dir: Path) -> str:
    lines = ["# PRISM evaluation", ""]
    lines += [f"- profile: {meta.get('profile')}, rounds: {meta.get('rounds')}, "
              f"turn length: {meta.get('turn_seconds')} s",
              f"- prism-vnic commit: {meta.get('prism_vnic_commit')}",
              f"- started {meta.get('started')}, finished {meta.get('finished')}"]
    for name, k in sorted(meta.get("kernels", {}).items()):
        lines.append(f"- kernel {name}: flavour {k.get('flavour')}, series hash "
                     f"{k.get('series_hash')}")
    machine = meta.get("machine", {})
    if machine:
        lines.append(f"- machine: {machine.get('cpus')} CPUs, load average at start "
                     f"{machine.get('loadavg_start')}, at end {machine.get('loadavg_end')}"
                     + (f", sched_autogroup {machine['sched_autogroup']}"
                        if "sched_autogroup" in machine else ""))
    lines += resume.report_lines(meta)
    for note in meta.get("skipped", []):
        lines.append(f"- SKIPPED: {note}")
    lines += ["", "Latencies are the priority flow's, in microseconds (sockperf: half the "
              "round trip). Ratios are per round to mode 0 of the same boot (vanilla: the "
              "vanilla boot's round against the PRISM boot's), geometric mean with a 95% "
              "bootstrap interval over rounds. The paper's ordering (sync < batch < mode0) holds "
              "when it held in at least 9 of 10 rounds and every neighbouring pair's interval "
              "excludes 1. The measured order ranks the modes by their ratio to mode 0 and "
              "joins neighbours with < where the interval of their paired ratio excludes 1, "
              "with ~ where the run cannot tell them apart; it is consistent when every < "
              "held in at least 9 of 10 rounds.", ""]
    g = summary.get("goals", {})
    if g:
        lines += ["## Goals of this run", ""]
        for name, res in g.items():
            state = {True: "met", False: "NOT met", None: "not measured"}[res["met"]]
            failing = f" (failing: {'; '.join(res['failing'])})" if res["failing"] else ""
            lines.append(f"- {name}: {state}{failing}")
        lines.append("")
    for exp, title in results.EXPERIMENTS.items():
        entries = [e for e in summary["cells"] if e["cell"]["experiment"] == exp]
        if exp == "cal":
            if not summary.get("calibration"):
                continue
            lines += [f"## {exp}: {title}", "",
                      "The known effect is the delay as the NIC applied it: half the shift of "
                      "prism-vnic's own residence median for the high class (the delay is on "
                      "the guest-bound direction; sockperf reports half the round trip). The "
                      "nominal value is half the delay as set.", "",
                      "| cell | delay (us) | nominal shift (us) | applied shift (us) | "
                      "measured shift of p50 [95%] (us) | error | within 10% |",
                      "|---|---|---|---|---|---|---|"]
            for c in summary["calibration"]:
                d = c["difference"]
                measured = "n/a" if d is None else \
                    f"{d['value']:.1f} [{d['low']:.1f}, {d['high']:.1f}]"
                err = c.get("relative_error")
                applied = c.get("applied")
                shown = "not measured" if not applied else f"{applied['value'] / 2:.1f}"
                nominal = c.get("nominal", c["delay_us"] / 2)
                lines.append(f"| {c['label']} | {c['delay_us']} | {nominal:.0f} | {shown} | "
                             f"{measured} | {'n/a' if err is None else f'{err:+.1%}'} | "
                             f"{'yes' if c['passes'] else 'NO'} |")
            lines.append("")
            continue
        if not entries:
            continue
        lines += [f"## {exp}: {title}", ""]
        for e in entries:
            lines += [f"### {e['label']}", ""] + cell_table(e) + [""] + cell_verdicts(e) + [""]
        lines.append("")
    lines += wait_section(summary.get("wait_metric", []))
    if plots:
        lines += ["## Plots", ""]
        for p in plots:
            if p.suffix == ".png":
                rel = p.relative_to(run_dir)
                lines += [f"![{p.stem}]({rel})", ""]
    return "\n".join(lines) + "\n"


def write(run_dir: Path, meta: dict, summary: dict, plots: list[Path]) -> Path:
    path = run_dir / "report.md"
    path.write_text(render(meta, summary, plots, run_dir))
    return path
