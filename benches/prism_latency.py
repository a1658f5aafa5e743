#!/usr/bin/python3
"""Latency of a priority RPC flow under bulk load, across two guests on prism-vnic: vanilla
against PRISM-batch and PRISM-sync.

    benches/prism_latency.py [--reps 3] [--secs 10] [--kernels vanilla,prism] [--smp 1]
                             [--mps 200] [--bulk-flows 2] [--no-nic-rules]

The testbed is tests/overlay's (prismtb.overlay.Overlay): prism-vnic with ports vm1 and vm2 (4
queue pairs), a guest on each, and in each guest vxlan0 (id 42, dstport 4789) and a container
veth (MTU 1450) on br0, the container being netns c1 (192.168.42.N). In each measurement:

- `sockperf sr` in vm2's container serves the priority port 11111; `sockperf ping-pong` in
  vm1's container runs against it for --secs seconds at --mps requests per second;
- meanwhile `iperf3 -P --bulk-flows` sends bulk TCP on port 5301 (unmarked) the same way,
  started before and ending after the ping-pong; the guests have --smp vCPUs (default 1, so
  the bulk flows load the CPU that processes the RPCs, as in the paper's busy-server case).

The priority flow is identified by both of PRISM's sources: the NIC steers it (prism-vnic
rules `inner proto udp dst-port 11111` on vm2 and `src-port 11111` on vm1 put it on rx-0 as
high class, so the NIC never drops it behind bulk frames, in every mode alike), and on the
PRISM kernel rx-0/prism_priority = 1 and net.core.prism_ports = 11111 mark it in the kernel
(--no-nic-rules: the port table alone).
Modes: the vanilla kernel (same source and config, no series), then the prism kernel with
net.core.prism_mode 0 (vanilla behaviour), 1 (PRISM-batch) and 2 (PRISM-sync), each `reps`
times, modes interleaved within a rep so that drifts of the shared machine hit all alike.

Prints every run, then per mode min/median/max of p50 and p99 and the ratio of the medians
to the vanilla kernel (or to mode 0 without it); writes benches/out/prism_latency.json and
benches/out/prism_latency.png. Under TCG absolute figures mean little: read the ordering and
the ratios. Guest logs: benches/out/prism_latency-<kernel>/.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

from prismtb import REPO
from prismtb.interp import ensure_system_python
from prismtb.overlay import (CONTAINER, KNOBS, RX0_FLAG, GuestError, Overlay, OverlayError,
                             SwitchError, build_initramfs, build_kernel, parse_sockperf)

OUT = REPO / "benches" / "out"
PRIO_PORT, BULK_PORT = 11111, 5301
MODE_NAMES = {"v": "vanilla kernel", "0": "prism mode 0", "1": "PRISM-batch",
              "2": "PRISM-sync"}
BULK_RE = re.compile(r"\[SUM\].*?([\d.]+) ([KMG]?)bits/sec\s+receiver")


def bulk_mbps(out: str) -> float | None:
    """The bulk flows' total receiver throughput in Mbit/s, None if iperf3 did not finish."""
    m = BULK_RE.search(out)
    if not m:
        return None
    scale = {"": 1e-6, "K": 1e-3, "M": 1.0, "G": 1e3}[m.group(2)]
    return float(m.group(1)) * scale


def measure(ov: Overlay, mode: str, args) -> dict:
    """One ping-pong under bulk load in the given mode; returns its figures."""
    if mode != "v":
        ov.set_mode(int(mode))
    peer = CONTAINER[2]
    ov.bg(1, "bulk", f"ip netns exec c1 iperf3 -c {peer} -p {BULK_PORT} -P {args.bulk_flows} "
                     f"-t {args.secs + 8} -i 1")
    # The load is on once iperf3 reported its first interval.
    ov.wait_until(1, "grep -q 'sec ' /tmp/bulk.out || [ -s /tmp/bulk.rc ]", timeout=120)
    out = ov.c(1, f"timeout {args.secs * 6 + 60} sockperf ping-pong -i {peer} -p {PRIO_PORT} "
                  f"-t {args.secs} --mps {args.mps}", timeout=args.secs * 6 + 120)
    bulk_rc, bulk_out = ov.wait_bg(1, "bulk", timeout=args.secs * 10 + 120)
    res = parse_sockperf(out)
    res.update(mode=mode, bulk_mbps=bulk_mbps(bulk_out), bulk_rc=bulk_rc)
    if "p50" not in res:
        raise OverlayError(f"sockperf printed no percentiles:\n{out[-2000:]}")
    return res


def run_kernel(flavour: str, modes: list[str], initrd: str, args) -> list[dict]:
    kernel = build_kernel(flavour)
    out_dir = OUT / f"prism_latency-{flavour}"
    ov = Overlay(out_dir, kernel, initrd, smp=args.smp)
    rows: list[dict] = []
    try:
        ov.start()
        ov.start_servers(2, [BULK_PORT], sockperf_port=PRIO_PORT)
        if args.nic_rules:
            ov.rule("add", "vm2", "loc", "1", "inner", "proto", "udp", "dst-port", str(PRIO_PORT),
                    "action", "queue", "0", "class", "high")
            ov.rule("add", "vm1", "loc", "1", "inner", "proto", "udp", "src-port", str(PRIO_PORT),
                    "action", "queue", "0", "class", "high")
        if flavour == "prism":
            ov.both(f"echo {PRIO_PORT} > {KNOBS}/prism_ports")
            if args.nic_rules:
                ov.both(f"echo 1 > {RX0_FLAG}")
        # Warm-up: ARP, FDB and sockperf's first exchanges outside the measurements.
        ov.c(1, f"sockperf ping-pong -i {CONTAINER[2]} -p {PRIO_PORT} -t 2 --mps 100",
             timeout=300)
        for rep in range(1, args.reps + 1):
            for mode in modes:
                row = measure(ov, mode, args)
                row["rep"] = rep
                rows.append(row)
                print(f"{MODE_NAMES[mode]:16} rep {rep}: p50 {row['p50']:9.1f} us  "
                      f"p99 {row['p99']:9.1f} us  sent/received {row.get('sent')}/"
                      f"{row.get('received')}  bulk {row['bulk_mbps']} Mbit/s", flush=True)
        if flavour == "prism":
            for n in (1, 2):
                print(f"vm{n} /proc/net/prism total: {ov.counters(n)}")
                problems = ov.dmesg_problems(n)
                if problems:
                    print(f"vm{n} dmesg problems: {problems}", file=sys.stderr)
    finally:
        problems = ov.stop()
        if problems:
            print(f"prism-vnic stop problems: {problems}", file=sys.stderr)
    return rows


def summarise(rows: list[dict]) -> dict:
    summary = {}
    for mode in ("v", "0", "1", "2"):
        sel = [r for r in rows if r["mode"] == mode]
        if not sel:
            continue
        entry = {"runs": len(sel)}
        for key in ("p50", "p99"):
            values = [r[key] for r in sel]
            entry[key] = {"min": min(values), "median": statistics.median(values),
                          "max": max(values)}
        bulk = [r["bulk_mbps"] for r in sel if r["bulk_mbps"] is not None]
        entry["bulk_mbps_median"] = statistics.median(bulk) if bulk else None
        summary[mode] = entry
    return summary


def print_table(summary: dict) -> str:
    base_mode = "v" if "v" in summary else "0"
    base = summary.get(base_mode)
    lines = [f"latency of sockperf ping-pong under bulk load, microseconds "
             f"(ratios: median / median of {MODE_NAMES[base_mode]})",
             f"{'mode':16} {'runs':>4}  {'p50 min':>9} {'median':>9} {'max':>9}  "
             f"{'p99 min':>9} {'median':>9} {'max':>9}  {'p50 x':>6} {'p99 x':>6}  bulk Mbit/s"]
    for mode, s in summary.items():
        r50 = s["p50"]["median"] / base["p50"]["median"] if base else float("nan")
        r99 = s["p99"]["median"] / base["p99"]["median"] if base else float("nan")
        bulk = s["bulk_mbps_median"]
        lines.append(f"{MODE_NAMES[mode]:16} {s['runs']:>4}  {s['p50']['min']:9.1f} "
                     f"{s['p50']['median']:9.1f} {s['p50']['max']:9.1f}  {s['p99']['min']:9.1f} "
                     f"{s['p99']['median']:9.1f} {s['p99']['max']:9.1f}  {r50:6.2f} {r99:6.2f}  "
                     f"{bulk if bulk is None else round(bulk, 1)}")
    text = "\n".join(lines)
    print("\n" + text)
    return text


def plot(summary: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(summary)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("p50", "p99")):
        med = [summary[m][key]["median"] for m in modes]
        low = [summary[m][key]["median"] - summary[m][key]["min"] for m in modes]
        high = [summary[m][key]["max"] - summary[m][key]["median"] for m in modes]
        ax.bar(range(len(modes)), med, yerr=[low, high], capsize=6,
               color=["#888888", "#aaaaaa", "#4c72b0", "#55a868"][:len(modes)])
        ax.set_xticks(range(len(modes)))
        ax.set_xticklabels([MODE_NAMES[m] for m in modes], rotation=15)
        ax.set_ylabel(f"{key} latency (us)")
        ax.set_title(f"{key}: median of runs, bars min-max")
    fig.suptitle("sockperf ping-pong on the priority port under iperf3 bulk load "
                 "(two guests, VXLAN overlay, TCG)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--secs", type=int, default=10, help="ping-pong duration per run")
    ap.add_argument("--mps", type=int, default=200, help="ping-pong requests per second")
    ap.add_argument("--bulk-flows", type=int, default=2)
    ap.add_argument("--smp", type=int, default=1, help="vCPUs per guest")
    ap.add_argument("--no-nic-rules", dest="nic_rules", action="store_false",
                    help="no prism-vnic steering of the priority flow: the kernel identifies it by "
                         "the port table alone, and the NIC treats it like bulk (it may drop it "
                         "when a guest's RX ring is full, which stalls sockperf until the run ends)")
    ap.add_argument("--kernels", default="vanilla,prism",
                    help="comma-separated: vanilla (the vanilla flavour) and/or prism (modes 0,1,2)")
    args = ap.parse_args()
    if args.reps < 1 or args.secs < 1 or args.mps < 1 or args.bulk_flows < 1 or args.smp < 1:
        ap.error("--reps, --secs, --mps, --bulk-flows and --smp must be positive")
    kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    if not kernels or any(k not in ("vanilla", "prism") for k in kernels):
        ap.error("--kernels takes vanilla and/or prism")

    started = time.monotonic()
    initrd = build_initramfs()
    rows: list[dict] = []
    try:
        for flavour in kernels:
            rows += run_kernel(flavour, ["v"] if flavour == "vanilla" else ["0", "1", "2"],
                               initrd, args)
    except (OverlayError, GuestError, SwitchError) as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        if not rows:
            return 1
    summary = summarise(rows)
    table = print_table(summary)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "prism_latency.json").write_text(json.dumps(
        {"args": vars(args), "runs": rows, "summary": summary, "table": table}, indent=2))
    plot(summary, OUT / "prism_latency.png")
    print(f"\nwrote {OUT / 'prism_latency.json'} and {OUT / 'prism_latency.png'} "
          f"({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    ensure_system_python()
    sys.exit(main())
