#!/usr/bin/env python3
"""prism-vnic against DPDK's vhost PMD, driven by DPDK's virtio-user frontend (dpdk-testpmd).

Every figure is paired, in the same run, with DPDK's own vhost PMD in prism-vnic's place:
  (a) frontend txonly into one port, the backend discarding (prism-vnic: --discard, which
      drops at the switch as testpmd's rxonly drops after the vhost PMD; --a-receiver sink
      measures --sink instead, a NIC model that classifies each frame onto a queue first);
  (b) the backend generating into one port, frontend rxonly (prism-vnic: --gen);
  (c) two ports, A -> backend switches -> B. One frontend testpmd with one forwarding lcore
      polls both sides (pcap infinite_rx -> virtio_user A, virtio_user B -> net_null), so
      scheduling cannot starve the receiver (with a frontend per side, three pollers share
      two CPUs, and while B's is descheduled nobody empties its ring: that setup measures
      the scheduler); DPDK: io forwarding between net_vhost0/1.
The backend runs on CPU 1, the frontend on CPU 0. Rates are testpmd's counters, read every
second once frames flow. By default (--mode interleaved) both backends are set up at once,
each with its own frontend, and take turns of --secs seconds on the CPUs while the other pair
is stopped (SIGSTOP): turns seconds apart see the same machine. --mode rounds starts each
backend alone for a round of --secs, the two taking turns. The summary gives the 10th/50th/
90th percentiles of the per-second rates with the backend's CPU use, the ratios, and the same
by where the host had placed the two vCPUs: a probe (benches/probe/) times a cache line's
trip between CPUs 0 and 1 before and after every turn, and on the reference machine (an AMD
EPYC VM) it reads 25-55 ns on cores that share a cache and 170-215 ns on cores that do not;
the host moves the vCPUs between the two every few tens of seconds, and at 64 B both backends
run about 3x slower in (a) and 1.6x slower in (b) on far cores. prism-vnic's
emulated links run unpaced (--link-rate 0) unless --link-rate is given: its default 100G link
would cap 9000-byte frames at 1.36 Mpps, and DPDK's vhost PMD has no line rate.
(c)'s largest frames are 9000-byte jumbo frames, not 64 KiB TSO. testpmd's csum engine does
send TSO on virtio-user (`csum set tcp hw 1`, `tso set 1448 1`, from a pcap of 64 KiB TCP
frames, mbufs of 64 KiB). But the receiving virtio-user, with LRO and TCP checksum offload on
so that it takes GSO frames, stalled after 32-320 frames with DPDK's own vhost PMD as the
backend, with and without mergeable buffers (DPDK 22.11, 7 tries). No reference figure can
be had from it. prism-vnic passed the GSO frames to B intact, and segmented them in software
for a receiver without LRO.
The processes are the testbed package's: prism-vnic a prismtb.switch.Switch, testpmd (frontends
and DPDK's vhost PMD) a prismtb.dpdk.TestpmdProcess, each pinned, stopped and cleaned up by it
(also on Ctrl-C or SIGTERM). A case runs with a Settings: the frame size, and what the
frontend chooses (ring size of A's and B's virtio-user ports, --burst, queue pairs).
Usage: benches/vs_dpdk.py [--mode interleaved|rounds] [--secs N] [--repeat N] [--only a,b,c]
       [--frames 64,1518,9000] [--busy-poll-us N] [--link-rate RATE] [--logs DIR]
"""

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from prismtb import REPO
from prismtb.dpdk import (STANDARD_FRAME, NullPort, PcapReplay, Testpmd, TestpmdProcess, VhostPort,
                          VirtioUser)
from prismtb.interp import ensure_system_python
from prismtb.procs import ChildError, sigterm_exits
from prismtb.switch import Switch, SwitchError, release_binary

PRISM = str(release_binary())
# The backend prism-vnic is paired with: DPDK's vhost PMD, or ("base") another prism-vnic
# binary given by --baseline-binary, to compare two builds case by case.
OTHER = "dpdk"
BASELINE = None
NAMES = {"prism": "prism-vnic", "dpdk": "DPDK vhost PMD", "base": "baseline prism-vnic"}
SHORT = {"dpdk": "DPDK vhost", "base": "baseline"}
MAC_A = "02:00:00:00:00:0a"
MAC_B = "02:00:00:00:00:0b"
BUSY_POLL_US = 0
# prism-vnic emulates a 100G link by default, which caps 9000-byte frames at 1.36 Mpps (and
# 1518-byte ones at 8.1 Mpps); DPDK's vhost PMD has no line rate. The comparison measures
# the software, so prism-vnic's links run unpaced unless --link-rate says otherwise.
LINK_RATE = "0"
A_RECEIVER = "discard"
# A resumed rig refills its rings and caches before its turn is measured.
SETTLE_SECS = 0.5
# The core-to-core probe is bimodal on the reference machine (an AMD EPYC VM): 25-55 ns when
# the host runs the two vCPUs on cores that share a cache, 170-215 ns when it does not.
NEAR_NS = 100
# Issue 2's targets: prism-vnic's packet rate as a multiple of DPDK's.
TARGETS = {("a", 64): 0.8, ("b", 64): 0.8, ("c", 64): 0.8, ("c", 9000): 1.0}


class Run:
    """One backend's measured turn or round: per-second rates, backend CPU %, and the
    core-to-core probe (ns or None) just before and just after."""

    def __init__(self, rates, cpu, c2c):
        self.rates, self.cpu, self.c2c = rates, cpu, c2c

    def placement(self):
        """near or far: where the probes around the run found the two vCPUs; moved if they
        disagree (the host moved them during it), unknown without a probe."""
        if None in self.c2c:
            return "unknown"
        near = [c < NEAR_NS for c in self.c2c]
        return "moved" if near[0] != near[1] else ("near" if near[0] else "far")

    def c2c_text(self):
        if None in self.c2c:
            return ""
        return f", core-to-core {self.c2c[0]:.0f}/{self.c2c[1]:.0f} ns before/after ({self.placement()})"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def udp_frame(length, src_mac, dst_mac, src_port=1024):
    """An Ethernet/IPv4/UDP frame of `length` bytes (no FCS)."""
    mac = lambda m: bytes(int(x, 16) for x in m.split(":"))
    payload = bytes(length - 42)
    ip_len = 20 + 8 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, ip_len, 0, 0, 64, 17, 0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    s = sum(struct.unpack("!10H", ip))
    s = (s & 0xFFFF) + (s >> 16)
    ip = ip[:10] + struct.pack("!H", ~s & 0xFFFF) + ip[12:]
    udp = struct.pack("!HHHH", src_port, 9, 8 + len(payload), 0)
    return mac(dst_mac) + mac(src_mac) + b"\x08\x00" + ip + udp + payload


def write_pcap(path, frames):
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for frame in frames:
            f.write(struct.pack("<IIII", 0, 0, len(frame), len(frame)))
            f.write(frame)


# Flows per queue pair in (c)'s pcap and (b)'s generator with several pairs. A NIC steers a
# flow to one queue (prism-vnic: RSS over its normal-class queues), so one flow would leave
# every receiving queue but one idle, which no multi-queue setup is meant for; DPDK's vhost
# PMD forwards queue i to queue i whatever the flows.
FLOWS_PER_PAIR = 8


def frames_of(s):
    """(c)'s frames: one flow with one queue pair, FLOWS_PER_PAIR per pair with more."""
    flows = 1 if s.queues == 1 else FLOWS_PER_PAIR * s.queues
    return [udp_frame(s.frame, MAC_A, MAC_B, 1024 + k) for k in range(flows)]


@dataclass(frozen=True)
class Settings:
    """What a case runs with, the frame size and what the frontend chooses: the ring size of
    each virtio-user port (A: where the frames enter, B: where they leave in (c); None:
    DPDK's default, 256), testpmd's --burst (None: 32) and the queue pairs of every port."""
    frame: int = 64
    ring_a: int | None = None
    ring_b: int | None = None
    burst: int | None = None
    queues: int = 1


# Where the processes run: the backend alone on one CPU, the frontend on the other.
FRONTEND_CPU, BACKEND_CPU = 0, 1
# Errors that fail a case (its rig did not start, answer or forward), not the run.
CASE_FAILURES = (RuntimeError, SwitchError, ChildError)


def prism_backend(case, binary, settings, tag, work):
    """prism-vnic as the backend of a case, started: a vhost-user port per frontend side,
    plus the discarding or sink port of (a) or the generator of (b)."""
    extra = ["--busy-poll-us", str(BUSY_POLL_US), "--link-rate", LINK_RATE]
    if case == "a":
        extra += [f"--{A_RECEIVER}", "null"]
    elif case == "b":
        flows = "" if settings.queues == 1 else f",flows={FLOWS_PER_PAIR * settings.queues}"
        extra += ["--gen", f"g=dst={MAC_A},src={MAC_B},len={settings.frame}{flows}"]
    # The environment names this binary and no stand-in: the bench measures prism-vnic.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRISM_SWITCH")}
    be = Switch(work, ports=("a", "b") if case == "c" else ("a",), queues=settings.queues,
                extra_args=extra, sock_dir=work / tag, env={**env, "PRISM_VNIC": str(binary)},
                name=f"be-{tag}", cpus={BACKEND_CPU})
    be.start()
    return be, be.sockets


def dpdk_backend(case, settings, tag, work):
    """DPDK's vhost PMD as the backend of a case, started: rxonly drops what A sends (a),
    txonly sends into A (b), io forwards A to B (c)."""
    big = settings.frame > STANDARD_FRAME
    sockets = {side: work / tag / f"{side}.sock" for side in (("a", "b") if case == "c" else ("a",))}
    (work / tag).mkdir(parents=True, exist_ok=True)
    config = Testpmd(f"be-{tag}", [VhostPort(sock, settings.queues, tso=big) for sock in sockets.values()],
                     {"a": "rxonly", "b": "txonly", "c": "io"}[case], BACKEND_CPU, interactive=False,
                     frame=settings.frame, txpkts=settings.frame if case == "b" else None,
                     queues=settings.queues if settings.queues > 1 else None)
    be = TestpmdProcess(config, work)
    be.start()
    return be, sockets


def frontend(case, sockets, settings, tag, work):
    """The testpmd frontend of a case and what it measures (port, counter): (a) txonly into
    A, counting what A's ring accepted; (b) rxonly on A; (c) one forwarding lcore feeding A
    from a pcap and draining B into a null port, counting what B received."""
    s = settings
    a = VirtioUser(sockets["a"], MAC_A, s.queues, s.ring_a)
    common = dict(frame=s.frame, burst=s.burst, queues=s.queues if s.queues > 1 else None)
    if case == "a":
        config = Testpmd(f"fe-{tag}", [a], "txonly", FRONTEND_CPU, txpkts=s.frame,
                         eth_peers={0: MAC_B}, **common)
        measured = (0, "TX-packets")
    elif case == "b":
        config = Testpmd(f"fe-{tag}", [a], "rxonly", FRONTEND_CPU, **common)
        measured = (0, "RX-packets")
    else:
        pcap = work / f"frame{s.frame}-{s.queues}q.pcap"
        write_pcap(pcap, frames_of(s))
        b = VirtioUser(sockets["b"], MAC_B, s.queues, s.ring_b)
        config = Testpmd(f"fe-{tag}", [PcapReplay(pcap, s.queues), a, b, NullPort()], "io", FRONTEND_CPU,
                         port_topology="paired", **common)
        measured = (3, "TX-packets")  # what B received, forwarded to the null port
    fe = TestpmdProcess(config, work)
    fe.start()
    return fe, measured


class Rig:
    """One backend and the testpmd frontend that drives it, set up for one case and running:
    frames flow once the constructor returns. Both processes can be paused (SIGSTOP), so two
    rigs can share the two CPUs by taking turns."""

    def __init__(self, case, backend, settings, work):
        self.backend = backend
        self.fe = self.be = None
        work = Path(work)
        tag = f"{backend}-{case}"
        self.sock_dir = work / tag
        try:
            if backend in ("prism", "base"):
                self.be, sockets = prism_backend(case, PRISM if backend == "prism" else BASELINE,
                                                 settings, tag, work)
            else:
                self.be, sockets = dpdk_backend(case, settings, tag, work)
            self.fe, self.measured = frontend(case, sockets, settings, tag, work)
            self.fe.command("start")
            # Warm-up: connection, learning, rings filled. Frames flow once this returns:
            # DPDK's vhost PMD takes 1-4 s here to map the frontend's memory (4 KiB pages),
            # and a fixed warm-up shorter than that averaged seconds of nothing into its figure.
            self.fe.wait_flowing(*self.measured)
        except BaseException:
            self.close()
            raise

    def reading(self):
        """(time, the measured counter) now. Waits for testpmd's answer, so a pause that
        follows cannot delay it into the next turn."""
        return self.fe.reading(*self.measured)

    def measure(self, secs):
        """A reading every second for `secs` seconds: (per-second rates, backend CPU %)."""
        cpu0 = self.be.cpu_seconds()
        readings = [self.reading()]
        for k in range(1, secs + 1):
            time.sleep(max(0.0, readings[0][0] + k - time.time()))
            readings.append(self.reading())
        cpu = (self.be.cpu_seconds() - cpu0) / (readings[-1][0] - readings[0][0]) * 100
        rates = [(c1 - c0) / (t1 - t0) for (t0, c0), (t1, c1) in zip(readings, readings[1:])]
        return rates, cpu

    def pause(self):
        for proc in (self.fe, self.be):
            proc.pause()

    def resume(self):
        for proc in (self.be, self.fe):
            proc.resume()

    def close(self):
        """Stops the frontend, then the backend; each removes what it leaves behind."""
        if self.fe is not None:
            self.fe.stop()
        if isinstance(self.be, Switch):
            problems = self.be.stop()
            if problems:
                log(f"{self.backend}: {self.be.log_path}: {'; '.join(problems)}")
        elif self.be is not None:
            self.be.stop()
        shutil.rmtree(self.sock_dir, ignore_errors=True)


def run_case(case, backend, settings, secs, work):
    """One round of one backend alone: (per-second rates, backend CPU %)."""
    rig = Rig(case, backend, settings, work)
    try:
        time.sleep(1)
        return rig.measure(secs)
    finally:
        rig.close()


def run_interleaved(case, settings, turns, secs, work, probe):
    """Both backends set up at once, taking turns of `secs` seconds on the CPUs while the
    other rig is stopped: {backend: [Run per turn]}. Turns seconds
    apart see the same machine; rounds a minute apart did not (see the module's notes)."""
    rigs, result = {}, {"prism": [], OTHER: []}
    try:
        for backend in ("prism", OTHER):
            rigs[backend] = Rig(case, backend, settings, work)
            rigs[backend].pause()
        for turn in range(turns):
            # Who goes first alternates: a turn's first second after a switch may differ.
            order = ("prism", OTHER) if turn % 2 == 0 else (OTHER, "prism")
            for backend in order:
                before = core_to_core_ns(probe)
                rig = rigs[backend]
                rig.resume()
                time.sleep(SETTLE_SECS)
                rates, cpu = rig.measure(secs)
                rig.pause()
                run = Run(rates, cpu, (before, core_to_core_ns(probe)))
                result[backend].append(run)
                log(f"({case}) {settings.frame} B turn {turn + 1}/{turns} {backend}: per second "
                    + " ".join(f"{r / 1e6:.2f}" for r in rates) + f" Mpps, backend CPU {cpu:.0f}%"
                    + run.c2c_text())
    finally:
        for rig in rigs.values():
            rig.close()
    return result


def build_probe(work):
    """Compiles the core-to-core latency probe; None (with a note) where it cannot."""
    source = os.path.join(REPO, "benches", "probe", "core_to_core.c")
    binary = os.path.join(work, "core_to_core")
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        log("vs_dpdk: no C compiler: the machine's state is not probed")
        return None
    built = subprocess.run([cc, "-O2", "-pthread", source, "-o", binary], capture_output=True, text=True)
    if built.returncode != 0:
        log(f"vs_dpdk: cannot build {source}: {built.stderr.strip()}: the machine's state is not probed")
        return None
    return binary


def core_to_core_ns(probe):
    """The probe's one-way core-to-core time between CPUs 0 and 1, or None."""
    if not probe:
        return None
    try:
        out = subprocess.run([probe], capture_output=True, text=True, timeout=10)
        return float(out.stdout.strip())
    except (subprocess.TimeoutExpired, ValueError):
        return None


def percentile(values, fraction):
    """The value `fraction` of the way up the sorted values (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("interleaved", "rounds"), default="interleaved",
                    help="interleaved (default): both backends set up at once, taking turns of "
                         "--secs on the CPUs, the other one stopped; rounds: each backend started "
                         "alone per round, the two taking turns")
    ap.add_argument("--secs", type=int, help="seconds measured per turn (default 2) or round (default 10)")
    ap.add_argument("--repeat", type=int, help="turns per backend (default 10) or rounds (default 3)")
    ap.add_argument("--only", default="a,b,c")
    ap.add_argument("--frames", help="only these frame sizes, e.g. 64 or 64,9000 (default: all)")
    ap.add_argument("--logs", help="keep the testpmd and prism-vnic logs in this directory")
    ap.add_argument("--out", default=os.path.join(REPO, "benches", "out"),
                    help="where vs_dpdk.json and the plots go (default benches/out)")
    ap.add_argument("--link-rate", default="0",
                    help="prism-vnic's --link-rate (default 0: unpaced, as DPDK's vhost PMD; "
                         "100G caps 9000-byte frames at 1.36 Mpps)")
    ap.add_argument("--busy-poll-us", type=int, default=0,
                    help="prism-vnic's --busy-poll-us (0: event-driven, as by default)")
    ap.add_argument("--baseline-binary", metavar="PATH",
                    help="pair prism-vnic with this other prism-vnic binary instead of DPDK "
                         "(the same cases, turn by turn), and print per case the ratio new/old "
                         "with its spread; exits 1 if a case loses more than --max-loss")
    ap.add_argument("--max-loss", type=float, default=0.03,
                    help="with --baseline-binary: the largest loss a case may show (default 0.03)")
    ap.add_argument("--a-receiver", choices=("discard", "sink"), default="discard",
                    help="prism-vnic's receiving port in (a): discard (dropped at the switch, "
                         "as testpmd's rxonly does) or sink (a NIC model that classifies first)")
    args = ap.parse_args()
    if args.secs is None:
        args.secs = 2 if args.mode == "interleaved" else 10
    if args.repeat is None:
        args.repeat = 10 if args.mode == "interleaved" else 3
    if args.secs < 1 or args.repeat < 1:
        sys.exit("vs_dpdk: --secs and --repeat must be at least 1")
    global BUSY_POLL_US, LINK_RATE, A_RECEIVER, OTHER, BASELINE
    if args.baseline_binary:
        if not os.access(args.baseline_binary, os.X_OK):
            sys.exit(f"vs_dpdk: --baseline-binary {args.baseline_binary} is not an executable")
        OTHER, BASELINE = "base", os.path.abspath(args.baseline_binary)
    A_RECEIVER = args.a_receiver
    BUSY_POLL_US = args.busy_poll_us
    LINK_RATE = args.link_rate
    print(f"prism-vnic: {'event-driven' if not BUSY_POLL_US else f'busy-poll {BUSY_POLL_US} us'}, "
          f"links {'unpaced' if LINK_RATE == '0' else 'at ' + LINK_RATE}, (a) into --{A_RECEIVER}; "
          + ("DPDK vhost PMD: polling" if OTHER == "dpdk" else f"baseline: {BASELINE}"))
    print(f"new: {PRISM}")
    for tool in ("dpdk-testpmd", "stdbuf"):
        if not shutil.which(tool):
            sys.exit(f"vs_dpdk: {tool} not found (apt-get install dpdk-dev coreutils; .ci/install-deps does)")
    if not os.path.exists(PRISM):
        sys.exit(f"vs_dpdk: {PRISM} missing: run .ci/patch-crates && cargo build --release")
    frames = [int(f) for f in args.frames.split(",")] if args.frames else None
    cases = [(c, l) for c in args.only.split(",") for l in ([64, 1518] + ([9000] if c == "c" else []))
             if frames is None or l in frames]
    rows = []
    if args.logs:
        os.makedirs(args.logs, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vs-dpdk-") as tmp:
        work = args.logs or tmp
        probe = build_probe(tmp)
        for case, length in cases:
            if args.mode == "interleaved":
                try:
                    result = run_interleaved(case, Settings(frame=length), args.repeat, args.secs,
                                             work, probe)
                except CASE_FAILURES as e:
                    log(f"({case}) {length} B failed: {e}")
                    result = {"prism": [], OTHER: []}
                rows.append((case, length, result))
                continue
            result = {"prism": [], OTHER: []}
            # The two backends take turns, so a change in the machine's load between runs
            # falls on both figures alike.
            for i in range(args.repeat):
                for backend in ("prism", OTHER):
                    log(f"({case}) {length} B {backend} run {i + 1}/{args.repeat} ...")
                    before = core_to_core_ns(probe)
                    try:
                        rates, cpu = run_case(case, backend, Settings(frame=length), args.secs, work)
                    except CASE_FAILURES as e:
                        log(f"  failed: {e}")
                        result[backend].append(None)  # keeps the rounds aligned for pairing
                        continue
                    run = Run(rates, cpu, (before, core_to_core_ns(probe)))
                    log(f"  {statistics.mean(rates) / 1e6:.2f} Mpps (per second {min(rates) / 1e6:.2f}-"
                        f"{max(rates) / 1e6:.2f}), backend CPU {cpu:.0f}%{run.c2c_text()}")
                    result[backend].append(run)
            rows.append((case, length, result))
    print_summary(rows)
    save(rows, args.out)
    if OTHER == "base" and not print_baseline(rows, args.max_loss):
        sys.exit(1)


def print_baseline(rows, max_loss):
    """Per case, the paired ratio new/old (the median of the turn-by-turn ratios) with its
    spread (10th and 90th percentiles of those ratios). False if a case loses more than
    `max_loss` or has no pair."""
    print(f"new / baseline, paired turn by turn (load average {os.getloadavg()[0]:.2f} "
          f"{os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} at the end):")
    print(f"{'case':<5} {'frame':>6} | {'pairs':>5} {'ratio':>6} {'p10':>6} {'p90':>6} | verdict")
    fine = True
    for case, length, result in rows:
        ratios = turn_ratios(result["prism"], result[OTHER])
        if not ratios:
            print(f"({case})  {length:>6} | {0:>5} {'-':>6} {'-':>6} {'-':>6} | no pair")
            fine = False
            continue
        ratio = statistics.median(ratios)
        lost = ratio < 1 - max_loss
        fine &= not lost
        print(f"({case})  {length:>6} | {len(ratios):>5} {ratio:>6.3f} {percentile(ratios, 0.1):>6.3f} "
              f"{percentile(ratios, 0.9):>6.3f} | {'LOSS' if lost else 'ok'}")
    return fine


def print_summary(rows):
    # Rates are pooled per second over every turn of a backend, and three ratios given: of
    # the medians; of the 90th percentiles; and the median of each turn's pair of means (a
    # pair runs seconds apart, the likeliest to share the machine's state). Then the same by
    # where the host had put the two vCPUs, as the probes around each turn saw it: the
    # reference machine moves them between near and far cores every few tens of seconds, and
    # every figure with them, both backends alike (up to 3x at 64 B).
    print(f"{'case':<5} {'frame':>6} | {'prism-vnic Mpps/s (p10/med/p90)':>31} {'CPU%':>5} | "
          f"{SHORT[OTHER] + ' Mpps/s (p10/med/p90)':>31} {'CPU%':>5} | {'ratio':>5} {'p90':>5} {'paired':>6} "
          f"{'Gbit/s':>7}")
    for case, length, result in rows:
        p_text, p_med, p_high, p_cpu = per_second_summary(result["prism"])
        d_text, d_med, d_high, d_cpu = per_second_summary(result[OTHER])
        ratio = p_med / d_med if d_med else 0.0
        fast = p_high / d_high if d_high else 0.0
        gbps = p_med * length * 8 / 1e9
        print(f"({case})  {length:>6} | {p_text:>31} {p_cpu:>5.0f} | {d_text:>31} {d_cpu:>5.0f} | "
              f"{ratio:>5.2f} {fast:>5.2f} {paired_ratio(result['prism'], result[OTHER]):>6.2f} {gbps:>7.1f}")
        for where in ("near", "far"):
            prism, dpdk = pairs_at(result, where)
            if not prism:
                continue
            p_med, d_med = per_second_summary(prism)[1], per_second_summary(dpdk)[1]
            print(f"{'':<5} {'':>6} | {where} cores, {len(prism)} pairs: prism-vnic {p_med / 1e6:.2f}, "
                  f"{SHORT[OTHER]} {d_med / 1e6:.2f} Mpps/s (medians): ratio {p_med / d_med if d_med else 0.0:.2f}, "
                  f"paired {paired_ratio(prism, dpdk):.2f}")
    probes = [c for _, _, result in rows for runs in result.values() for r in runs if r for c in r.c2c
              if c is not None]
    if probes:
        print(f"core-to-core around the turns: {min(probes):.0f}/{statistics.median(probes):.0f}/"
              f"{max(probes):.0f} ns (min/median/max of {len(probes)}); near below {NEAR_NS} ns")


def pairs_at(result, where=None):
    """The turn pairs (prism-vnic's runs, DPDK's runs) in which both backends ran with the
    vCPUs at `where` (near or far; None: every pair that both completed)."""
    pairs = [(p, d) for p, d in zip(result["prism"], result[OTHER])
             if p and d and (where is None or p.placement() == d.placement() == where)]
    return [p for p, _ in pairs], [d for _, d in pairs]


def per_second_summary(runs):
    """(text, median, 90th percentile, CPU %) of the per-second rates of `runs`."""
    runs = [r for r in runs if r]
    if not runs:
        return "failed", 0.0, 0.0, 0.0
    seconds = [rate for r in runs for rate in r.rates]
    cpu = statistics.median(r.cpu for r in runs)
    low, mid, high = (percentile(seconds, f) for f in (0.1, 0.5, 0.9))
    return f"{low / 1e6:.2f}/{mid / 1e6:.2f}/{high / 1e6:.2f}", mid, high, cpu


def turn_ratios(prism, dpdk):
    """The turn-by-turn ratios of the two backends' mean rates."""
    return [statistics.mean(p.rates) / statistics.mean(d.rates)
            for p, d in zip(prism, dpdk) if p and d and statistics.mean(d.rates)]


def paired_ratio(prism, dpdk):
    """The median of the turn-by-turn ratios of the two backends' mean rates."""
    ratios = turn_ratios(prism, dpdk)
    return statistics.median(ratios) if ratios else 0.0


def save(rows, out):
    """Writes every turn's figures to vs_dpdk.json and draws them (matplotlib, if present):
    vs_dpdk.png, each backend's rate turn by turn with the far-core turns shaded, and
    vs_dpdk_ratios.png, the paired ratios overall and per placement against the targets."""
    os.makedirs(out, exist_ok=True)
    data = [{"case": case, "frame": length,
             **{backend: [r and {"rates": r.rates, "cpu": r.cpu, "c2c": r.c2c, "placement": r.placement()}
                          for r in result[backend]] for backend in ("prism", OTHER)}}
            for case, length, result in rows]
    with open(os.path.join(out, "vs_dpdk.json"), "w") as f:
        json.dump(data, f, indent=1)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"wrote {out}/vs_dpdk.json (matplotlib missing: no plots; "
              "apt-get install python3-matplotlib, run with /usr/bin/python3)")
        return
    colours = {"prism": "tab:blue", OTHER: "tab:orange"}
    cols = min(len(rows), 4)
    grid_rows = (len(rows) + cols - 1) // cols
    fig, axes = plt.subplots(grid_rows, cols, figsize=(4 * cols, 3.2 * grid_rows), squeeze=False)
    for ax, (case, length, result) in zip(axes.flat, rows):
        for turn, (p, d) in enumerate(zip(result["prism"], result[OTHER])):
            if p and d and p.placement() == d.placement() == "far":
                ax.axvspan(turn - 0.5, turn + 0.5, color="0.88", lw=0)
        for backend in ("prism", OTHER):
            # Each turn's seconds side by side within the turn's slot.
            xs, ys = [], []
            for turn, run in enumerate(result[backend]):
                if run:
                    n = len(run.rates)
                    xs += [turn - 0.3 + 0.6 * (i + 0.5) / n for i in range(n)]
                    ys += [r / 1e6 for r in run.rates]
            ax.plot(xs, ys, ".", color=colours[backend], label=NAMES[backend])
        ax.set_title(f"({case}) {length} B: paired {paired_ratio(result['prism'], result[OTHER]):.2f}")
        ax.set_xlabel("turn (grey: both on far cores)")
        ax.set_ylabel("Mpps, per second")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "vs_dpdk.png"), dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(1.4 * len(rows) + 2, 3.6))
    width = 0.27
    for k, (label, where) in enumerate((("all turns", None), ("near cores", "near"), ("far cores", "far"))):
        heights = []
        for _, _, result in rows:
            prism, dpdk = pairs_at(result, where)
            heights.append(paired_ratio(prism, dpdk))
        ax.bar([i + (k - 1) * width for i in range(len(rows))], heights, width, label=label)
    for i, (case, length, _) in enumerate(rows):
        target = TARGETS.get((case, length))
        if target:
            ax.hlines(target, i - 1.5 * width, i + 1.5 * width, colors="red")
    ax.axhline(1.0, color="0.5", lw=0.8, ls="--")
    ax.set_xticks(range(len(rows)), [f"({c}) {n} B" for c, n, _ in rows])
    ax.set_ylabel("prism-vnic / DPDK, paired")
    ax.set_title("Packet rate against DPDK's vhost PMD (red: target)")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "vs_dpdk_ratios.png"), dpi=110)
    plt.close(fig)
    print(f"wrote {out}/vs_dpdk.json, {out}/vs_dpdk.png and {out}/vs_dpdk_ratios.png")


if __name__ == "__main__":
    ensure_system_python()
    sigterm_exits()
    main()
