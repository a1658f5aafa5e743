#!/usr/bin/env python3
"""Benchmarks of prism-vnic's NIC model, with prism-vnic's own generator and sink ports (no
VM, no frontend: what is measured is the switch and the NIC).

1. Rule cost: the packet rate a generator pushes through the switch into a sink whose NIC
   holds 0, 10, 100 and 1000 flow rules (on ports, source and destination prefixes, none
   matching the traffic: the NIC's rule screen rules every frame out, and the frames are
   decided as without rules). Target: 1000 rules cost at most 10% against 0. The rule
   counts are measured in turn, --repeat times over; on a shared machine other load moves
   those rates by tens of percent, so the cost is also measured paired: a daemon with N
   rules and one with none run at once on the same CPU, and their rate ratio is the ratio
   of their per-frame costs, whatever else the machine does.
2. Priority under congestion: a bulk generator saturates a paced link into a sink while a
   second generator sends a DSCP EF flow at 1000 frames/s. The NIC residence time of the
   priority frames with strict priority (trust dscp), against the same traffic with priority
   disabled (trust none: the EF frames share the FIFO with bulk, so the normal class's
   residence is theirs). Prints p50/p99/p99.9 and draws the CDFs to benches/out/residence.png.

Usage: benches/nic.py [--secs 5] [--repeat 3] [--link-rate 100M] [--only rules|residence]
Environment: PRISM_VNIC=path/to/prism-vnic (default: target/release/prism-vnic).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from prismtb import REPO
from prismtb.interp import ensure_system_python
from prismtb.procs import sigterm_exits
from prismtb.switch import Switch, SwitchError, release_binary

# PRISM_VNIC (or PRISM_VNIC_BIN): a prism-vnic built elsewhere (e.g. in a CARGO_TARGET_DIR of one's own).
PRISM = str(release_binary())
CDF_QUANTILES = [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999, 1.0]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def rules_file(path, count):
    """`count` rules that the generated traffic does not match (UDP destination ports,
    source prefixes and DSCP values it never uses), in shuffled locations."""
    with open(path, "w") as f:
        for i in range(count):
            f.write("[[rule]]\n")
            f.write(f"loc = {(i * 7919) % 100_000}\n")
            kind = i % 4
            if kind == 0:
                f.write(f'proto = "udp"\ndst-port = {20000 + i}\nqueue = 0\n')
            elif kind == 1:
                f.write(f'proto = "tcp"\nsrc-port = {30000 + i}\nclass = "high"\n')
            elif kind == 2:
                f.write(f'src-ip = "192.168.{(i // 250) % 250}.{i % 250}/32"\ndrop = true\n')
            else:
                f.write(f'dst-ip = "172.16.{(i // 250) % 250}.{i % 250}/32"\nproto = "udp"\nqueue = 0\n')
            f.write("\n")
    return path


class Daemon(Switch):
    """prism-vnic with generator and sink ports only (no vhost-user port), on the given CPUs."""

    def __init__(self, work, args, cpus="1", name="daemon"):
        super().__init__(Path(work), ports=(), extra_args=args, sock_dir=Path(work) / name, name=name,
                         cpus={int(c) for c in cpus.split(",")}, env={**os.environ, "PRISM_VNIC": PRISM})
        try:
            self.start()
        except SwitchError as e:
            raise RuntimeError(f"prism-vnic did not start: {e}") from e

    def port(self, name):
        return next(p for p in self.stats()["ports"] if p["name"] == name)

    def reset_residence(self):
        self.control_command("residence", "--reset")

    def stop(self):
        problems = super().stop()
        if problems:
            log(f"prism-vnic {self.log_path}: {'; '.join(problems)}")


def rule_daemon(work, count, name="daemon"):
    # One CPU: the generator thread does all the work (switch, classifier, sink).
    args = ["--gen", "g=dst=02:00:00:00:00:0b,len=64,flows=64", "--sink", "s"]
    if count:
        args += ["--rules", "s=" + rules_file(os.path.join(work, f"rules{count}.toml"), count)]
    return Daemon(work, args, name=name)


def sink_rates(daemons, secs):
    """The packet rate into each daemon's sink over the same `secs` window."""
    time.sleep(1)
    before = [(d.port("s")["counters"]["rx_packets"], time.time()) for d in daemons]
    time.sleep(secs)
    after = [(d.port("s")["counters"]["rx_packets"], time.time()) for d in daemons]
    return [(b - a) / (t1 - t0) for (a, t0), (b, t1) in zip(before, after)]


def rule_rate(work, count, secs):
    d = rule_daemon(work, count)
    try:
        return sink_rates([d], secs)[0]
    finally:
        d.stop()


def paired_ratio(work, count, secs):
    """The rate with `count` rules over the rate with none, both daemons running at once on
    the same CPU: the kernel shares the CPU between them evenly, so whatever else slows the
    machine down slows both, and the ratio is the ratio of their per-frame costs."""
    daemons = [rule_daemon(work, 0, "none"), rule_daemon(work, count, f"rules{count}")]
    try:
        none, rules = sink_rates(daemons, secs)
    finally:
        for d in daemons:
            d.stop()
    return rules / none


def residence(work, trust, link_rate, secs):
    args = ["--gen", "bulk=dst=02:00:00:00:00:0b,len=1500,flows=16",
            "--gen", "prio=dst=02:00:00:00:00:0b,src=02:00:00:00:ff:02,len=100,dscp=46,pps=1000",
            "--sink", "s", "--link-rate", link_rate, "--trust", trust]
    # Both CPUs: the bulk generator spins at full speed, and the NIC's scheduler thread must
    # not wait behind it for a CPU (that would measure the host's scheduler, not the NIC).
    d = Daemon(work, args, cpus="0,1")
    try:
        time.sleep(1)
        d.reset_residence()
        time.sleep(secs)
        queue = d.port("s")["queues"][0]
    finally:
        d.stop()
    # With trust none the EF frames are in the normal class, with the bulk: their residence is
    # the FIFO's.
    return queue["residence"]["high" if trust == "dscp" else "normal"], queue["counters"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--secs", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--link-rate", default="100M")
    ap.add_argument("--out", default=os.path.join(REPO, "benches", "out"))
    ap.add_argument("--only", choices=("rules", "residence"),
                    help="run one of the two benchmarks (default: both)")
    args = ap.parse_args()
    if not os.path.exists(PRISM):
        sys.exit(f"nic.py: {PRISM} missing: run .ci/patch-crates && cargo build --release "
                 "(or set PRISM_VNIC_BIN)")
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nic-bench-") as work:
        if args.only != "residence":
            rule_cost(work, args)
        if args.only != "rules":
            priority(work, args)


def rule_cost(work, args):
    print("1. packet rate through a port's NIC with N flow rules (64 B, generator -> sink)")
    print(f"{'rules':>6} | {'Mpps min/med/max':>22} | {'vs 0 rules':>10}")
    # Interleaved (0, 10, 100, 1000, 0, 10, ...): on a shared machine the load drifts, and
    # a drift then spreads over every rule count instead of landing on one.
    counts = (0, 10, 100, 1000)
    all_rates = {count: [] for count in counts}
    for i in range(args.repeat):
        for count in counts:
            log(f"rules={count} run {i + 1}/{args.repeat}")
            all_rates[count].append(rule_rate(work, count, args.secs))
    base = None
    for count in counts:
        rates = sorted(all_rates[count])
        med = statistics.median(rates)
        base = base or med
        print(f"{count:>6} | {rates[0] / 1e6:6.2f}/{med / 1e6:6.2f}/{rates[-1] / 1e6:6.2f} | "
              f"{(med / base - 1) * 100:+9.1f}%")
    # The same comparison made robust against the machine's own swings: a daemon with N
    # rules and one with none share one CPU for the whole window.
    print("\n   paired: N rules and 0 rules at once on one CPU (rate ratio; other load falls on both)")
    print(f"{'rules':>6} | {'vs 0 rules min/med/max':>24}")
    for count in counts[1:]:
        ratios = sorted(paired_ratio(work, count, args.secs) for _ in range(args.repeat))
        log(f"rules={count} paired: {', '.join(f'{r:.3f}' for r in ratios)}")
        low, med, high = ((r - 1) * 100 for r in (ratios[0], statistics.median(ratios), ratios[-1]))
        print(f"{count:>6} | {low:+6.1f}%/{med:+6.1f}%/{high:+6.1f}%")


def priority(work, args):
    print(f"\n2. NIC residence of a DSCP EF flow (1000 frames/s) with bulk saturating a "
          f"{args.link_rate} link")
    print(f"{'priority':>9} | {'frames':>7} | {'p50 us':>9} {'p99 us':>9} {'p99.9 us':>9} | drops (bulk)")
    curves = {}
    for trust, label in (("dscp", "on"), ("none", "off")):
        runs = []
        for i in range(args.repeat):
            log(f"residence priority={label} run {i + 1}/{args.repeat}")
            runs.append(residence(work, trust, args.link_rate, args.secs))
        mid = sorted(runs, key=lambda r: r[0]["p99_ns"])[len(runs) // 2]
        r, counters = mid
        curves[label] = r["cdf_ns"]
        print(f"{label:>9} | {r['count']:>7} | {r['p50_ns'] / 1e3:9.1f} {r['p99_ns'] / 1e3:9.1f} "
              f"{r['p999_ns'] / 1e3:9.1f} | {counters['rx_drops_no_buffer']}")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, cdf in curves.items():
            ax.plot([v / 1e3 for v in cdf], CDF_QUANTILES, marker="o", label=f"priority {label}")
        ax.set_xscale("log")
        ax.set_xlabel("NIC residence time of EF frames (us, log)")
        ax.set_ylabel("CDF")
        ax.set_title(f"EF flow under bulk, {args.link_rate} link")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        path = os.path.join(args.out, "residence.png")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        print(f"\nplot: {path}")
    except ImportError:
        print("\n(matplotlib missing: no plot; apt-get install python3-matplotlib, run with /usr/bin/python3)")


if __name__ == "__main__":
    ensure_system_python()
    sigterm_exits()
    main()
