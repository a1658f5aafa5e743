#!/usr/bin/python3
"""Single-guest latency benchmark of the PRISM modes (a stand-in until the two-guest one runs).

    benches/single_guest.py [--reps 3] [--secs 10] [--json OUT]

Boots one guest with one vCPU (TCG) per kernel: the vanilla flavour, then the prism flavour.
Inside, two netns "hosts" joined by a veth underlay carry a VXLAN overlay (dstport 4789) with a
container netns on each side (veth MTU 1450 on a bridge), like the two-guest experiment. A
sockperf UDP ping-pong runs on the marked port 11111 while two iperf3 bulk TCP flows load the
same CPU; each mode is measured `reps` times, interleaved. Prints p50/p99 per run, the median
over runs, and ratios to vanilla. Under TCG the absolute numbers mean little; the ordering and
the ratios are the result.
"""

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

from prismtb.image import kernel_test_image
from prismtb.interp import ensure_system_python
from prismtb.kernel import boot, build_kernel

BENCH_RE = re.compile(r"^PRISM-BENCH mode=(\S+) rep=(\d+) p50_us=(\S+) p99_us=(\S+) bulk=(\S*)")
MODE_NAMES = {"v": "vanilla kernel", "0": "prism kernel, mode 0", "1": "PRISM-batch",
              "2": "PRISM-sync"}


def run(kernel: Path, initrd: Path, name: str, modes: str, reps: int, secs: int):
    extra = f"prism.bench_modes={modes} prism.reps={reps} prism.secs={secs}"
    guest = boot(kernel, initrd, name, "bench", smp=1, extra_append=extra)
    rows = []
    for line in guest.console.splitlines():
        m = BENCH_RE.match(line.strip("\r"))
        if m:
            rows.append({"mode": m.group(1), "rep": int(m.group(2)),
                         "p50_us": float(m.group(3)), "p99_us": float(m.group(4)),
                         "bulk": m.group(5).replace("_", " ")})
    if not guest.ended or guest.failures():
        print(f"{name}: guest failed: {guest.failures()}\n{guest.console[-3000:]}", file=sys.stderr)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--secs", type=int, default=10)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    tmp = Path(subprocess.run(["mktemp", "-d"], stdout=subprocess.PIPE, text=True,
                              check=True).stdout.strip())
    initrd = kernel_test_image(tmp, extra_bins=["sockperf"])
    rows = run(build_kernel("vanilla"), initrd, "bench-vanilla", "v", args.reps, args.secs)
    rows += run(build_kernel("prism"), initrd, "bench-prism", "0,1,2", args.reps, args.secs)

    print(f"{'mode':22} {'rep':>3} {'p50 us':>10} {'p99 us':>10}  bulk")
    for r in rows:
        print(f"{MODE_NAMES.get(r['mode'], r['mode']):22} {r['rep']:>3} {r['p50_us']:>10.1f} "
              f"{r['p99_us']:>10.1f}  {r['bulk']}")
    summary = {}
    for mode in ["v", "0", "1", "2"]:
        sel = [r for r in rows if r["mode"] == mode]
        if sel:
            summary[mode] = {"p50_us": statistics.median(r["p50_us"] for r in sel),
                             "p99_us": statistics.median(r["p99_us"] for r in sel),
                             "runs": len(sel)}
    print("\nmedian over runs (ratio to vanilla kernel)")
    base = summary.get("v")
    for mode, s in summary.items():
        ratio = ""
        if base:
            ratio = (f"  p50 x{s['p50_us'] / base['p50_us']:.2f}"
                     f"  p99 x{s['p99_us'] / base['p99_us']:.2f}")
        print(f"{MODE_NAMES[mode]:22} p50 {s['p50_us']:9.1f} us  p99 {s['p99_us']:9.1f} us{ratio}")
    if args.json:
        args.json.write_text(json.dumps({"runs": rows, "summary": summary}, indent=2))
    return 0 if rows else 1


if __name__ == "__main__":
    ensure_system_python()
    sys.exit(main())
