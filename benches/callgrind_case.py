#!/usr/bin/env python3
"""Instructions per frame of one vs_dpdk.py case, counted by callgrind (docs/DATAPATH.md,
"Instructions per frame").

prism-vnic runs as vs_dpdk.py starts it for the case (polling, unpaced link, NIC model on),
under `valgrind --tool=callgrind --instr-atstart=no`, on the backend's CPU; testpmd is its
frontend as in vs_dpdk.py (the same `vs_dpdk.frontend`), on the other. Once frames flow and
--warmup seconds have passed, instrumentation is switched on for --secs seconds and the
profile dumped, so what the backend did before (the generator's frames before testpmd
connected, the rings' setup) is not counted. The figures printed divide by the calls of
`Classifier::classify` in the profile (one per frame through a receiving NIC): the whole
process and the functions named by --function, inclusive, per frame; and the share of
frames that went through the NIC's buffers or were dropped meanwhile, which moves the
totals of case (b) from run to run (testpmd, at nice 19 on a shared machine, falls behind
the slowed backend by more or less). Counts, not times: it is no wall-clock benchmark.

Usage: benches/callgrind_case.py [--case b|c] [--ring-a N] [--ring-b N] [--secs 20]
       [--binary PATH] [--out DIR] [--function NAME]...
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import vs_dpdk
from vs_dpdk import BACKEND_CPU, MAC_A, MAC_B, Settings

from prismtb import switch
from prismtb.interp import ensure_system_python
from prismtb.procs import sigterm_exits
from prismtb.switch import Switch, release_binary

FUNCTIONS = ("tx::process_batch", "Nic>::deliver_burst", "Nic>::write_planned",
             "GuestRxRing>::write_burst", "Nic>::drain")


def profile_costs(path: Path) -> tuple[collections.Counter, collections.Counter, collections.Counter]:
    """(self cost, inclusive cost, calls) per function of a callgrind profile (one event)."""
    names: dict[str, str] = {}
    own, inclusive, calls = collections.Counter(), collections.Counter(), collections.Counter()
    fn = callee = None
    call_count = None

    def name(spec: str) -> str:
        m = re.match(r"\((\d+)\)(?: (.*))?", spec)
        if not m:
            return spec
        if m.group(2):
            names[m.group(1)] = m.group(2)
        return names[m.group(1)]

    for line in path.read_text().splitlines():
        if line.startswith("fn="):
            fn = name(line[3:])
        elif line.startswith("cfn="):
            callee = name(line[4:])
        elif line.startswith("calls="):
            call_count = int(line[6:].split()[0])
        elif line[:1].isdigit() or line[:1] in "+-*":
            parts = line.split()
            if len(parts) < 2:
                continue
            cost = int(parts[1])
            if call_count is not None:
                calls[callee] += call_count
                if callee != fn:
                    inclusive[fn] += cost
                call_count = None
            else:
                own[fn] += cost
                inclusive[fn] += cost
    return own, inclusive, calls


def backend_counters(binary: Path, control: Path) -> collections.Counter | None:
    """The backend's frames written, buffered and dropped for want of room, all ports
    together; None (said on stderr) if its control socket does not answer."""
    for _ in range(5):
        out = subprocess.run([str(binary), "stats", "--control", str(control), "--json"],
                             capture_output=True, text=True, timeout=120)
        if out.returncode == 0:
            break
        time.sleep(1)
    else:
        print(f"callgrind_case: no stats from {control}: {out.stderr.strip()}", file=sys.stderr)
        return None
    totals: collections.Counter = collections.Counter()
    for port in json.loads(out.stdout)["ports"]:
        for key in ("rx_packets", "rx_buffered", "rx_drops_no_buffer"):
            totals[key] += port["counters"][key]
    return totals


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=("b", "c"), default="b")
    ap.add_argument("--ring-a", type=int, default=1024, help="the frontend's ring A (b: its only one)")
    ap.add_argument("--ring-b", type=int, default=1024, help="(c): the receiving ring B")
    ap.add_argument("--frame", type=int, default=64)
    ap.add_argument("--secs", type=int, default=20, help="seconds counted")
    ap.add_argument("--warmup", type=float, default=4.0, help="seconds after frames flow")
    ap.add_argument("--binary", default=str(release_binary()))
    ap.add_argument("--out", help="keep the profile and the logs here")
    ap.add_argument("--function", action="append", default=[],
                    help="also print this function (a substring of its name), inclusive")
    args = ap.parse_args()
    binary = Path(args.binary).resolve()
    settings = Settings(frame=args.frame, ring_a=args.ring_a,
                        ring_b=args.ring_b if args.case == "c" else None, burst=32)
    with tempfile.TemporaryDirectory(prefix="callgrind-case-") as tmp:
        work = Path(args.out or tmp)
        work.mkdir(parents=True, exist_ok=True)
        profile = work / "callgrind.out"
        ports = ("a", "b") if args.case == "c" else ("a",)
        command = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                   f"--callgrind-out-file={profile}", str(binary)]
        command += [arg for port in ports for arg in ("--port", f"{port}={{{port}}}")]
        command += ["--queues", "1", "--control", "{control}", "--busy-poll-us", "50",
                    "--link-rate", "0"]
        if args.case == "b":
            command += ["--gen", f"g=dst={MAC_A},src={MAC_B},len={args.frame}"]
        backend = Switch(work, ports=ports, queues=1, sock_dir=work / "sockets",
                         env={"PRISM_SWITCH_CMD": " ".join(command)}, name="prism-vnic",
                         cpus={BACKEND_CPU})
        # Valgrind takes its time to start the binary, the more so at nice 19 on a busy machine.
        switch.SOCKET_TIMEOUT = 300.0
        backend.start()
        fe = None
        try:
            fe, measured = vs_dpdk.frontend(args.case, backend.sockets, settings, "callgrind", work)
            fe.command("start")
            fe.wait_flowing(*measured)
            time.sleep(args.warmup)
            pid = str(backend.proc.pid)
            before = backend_counters(binary, backend.control)
            subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
            time.sleep(args.secs)
            subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
            subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
            after = backend_counters(binary, backend.control)
        finally:
            if fe is not None:
                fe.stop()
            backend.stop()
        dumps = sorted(work.glob("callgrind.out.*"), key=lambda p: p.stat().st_mtime)
        if not dumps:
            sys.exit(f"callgrind_case: no profile dumped in {work}")
        own, inclusive, calls = profile_costs(dumps[-1])
    frames = sum(n for name, n in calls.items() if name.endswith("Classifier::classify"))
    if not frames:
        sys.exit("callgrind_case: no frame was classified while counting")
    print(f"case ({args.case}), ring {args.ring_a}" + (f" -> {args.ring_b}" if args.case == "c" else "")
          + f", {args.frame} B: {frames} frames classified in {args.secs} s")
    print(f"  whole process: {sum(own.values()) / frames:.1f} instructions per frame")
    if before is not None and after is not None:
        delta = {key: after[key] - before[key] for key in after}
        written = max(delta["rx_packets"], 1)
        print(f"  through the NIC's buffers: {100 * delta['rx_buffered'] / written:.1f}% of the "
              f"frames written, dropped for want of room "
              f"{100 * delta['rx_drops_no_buffer'] / written:.1f}% (backend counters, read "
              "around the counted seconds)")
    for wanted in FUNCTIONS + tuple(args.function):
        for name in sorted(n for n in inclusive if wanted in n):
            print(f"  {inclusive[name] / frames:8.1f} inclusive, {own[name] / frames:7.1f} self, "
                  f"{calls[name]:>9} calls  {name}")
    return 0


if __name__ == "__main__":
    ensure_system_python()
    sigterm_exits()
    sys.exit(main())
