#!/usr/bin/env python3
"""prism-vnic against DPDK's vhost PMD, driven by DPDK's virtio-user frontend (dpdk-testpmd).

Every figure is paired, in the same run, with DPDK's own vhost PMD in prism-vnic's place:
  (a) frontend txonly into one port, the backend discarding (prism-vnic: --discard, which
      drops at the switch as testpmd's rxonly drops after the vhost PMD; --a-receiver sink
      measures --sink instead, a NIC model that classifies each frame onto a queue first);
  (b) the backend generating into one port, frontend rxonly (prism-vnic: --gen);
  (c) two ports, A -> backend switches -> B. One frontend testpmd with one forwarding lcore
      polls both sides (pcap infinite_rx -> virtio_user A, virtio_user B -> net_null), so
      scheduling cannot starve the receiver (see ../shared/BENCH.md for why the naive
      three-poller setup measures nothing); DPDK: io forwarding between net_vhost0/1.
The backend runs alone on CPU 1, the frontend on CPU 0. Rates are testpmd's counters over
--secs, from one second after frames start to flow, read every second; each configuration is
repeated, the two backends taking turns, and the 10th/50th/90th percentiles of the per-second
rates printed with the backend's CPU use. Before each round a probe (benches/probe/) times a
cache line's trip between CPUs 0 and 1, which every frame makes a few times; the log and the
summary show it, for comparing machines. prism-vnic's
emulated links run unpaced (--link-rate 0) unless --link-rate is given: its default 100G link
would cap 9000-byte frames at 1.36 Mpps, and DPDK's vhost PMD has no line rate.
(c)'s largest frames are 9000-byte jumbo frames, not 64 KiB TSO. testpmd's csum engine does
send TSO on virtio-user (`csum set tcp hw 1`, `tso set 1448 1`, from a pcap of 64 KiB TCP
frames, mbufs of 64 KiB). But the receiving virtio-user, with LRO and TCP checksum offload on
so that it takes GSO frames, stalled after 32-320 frames with DPDK's own vhost PMD as the
backend, with and without mergeable buffers (DPDK 22.11, 7 tries). No reference figure can
be had from it. prism-vnic passed the GSO frames to B intact, and segmented them in software
for a receiver without LRO.
Usage: benches/vs_dpdk.py [--secs 10] [--repeat 3] [--only a,b,c] [--frames 64,1518,9000]
       [--busy-poll-us N] [--link-rate RATE]
"""

import argparse
import os
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRISM = os.path.join(REPO, "target", "release", "prism-vnic")
MAC_A = "02:00:00:00:00:0a"
MAC_B = "02:00:00:00:00:0b"
BUSY_POLL_US = 0
# prism-vnic emulates a 100G link by default, which caps 9000-byte frames at 1.36 Mpps (and
# 1518-byte ones at 8.1 Mpps); DPDK's vhost PMD has no line rate. The comparison measures
# the software, so prism-vnic's links run unpaced unless --link-rate says otherwise.
LINK_RATE = "0"
A_RECEIVER = "discard"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def udp_frame(length, src_mac, dst_mac):
    """An Ethernet/IPv4/UDP frame of `length` bytes (no FCS)."""
    mac = lambda m: bytes(int(x, 16) for x in m.split(":"))
    payload = bytes(length - 42)
    ip_len = 20 + 8 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, ip_len, 0, 0, 64, 17, 0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    s = sum(struct.unpack("!10H", ip))
    s = (s & 0xFFFF) + (s >> 16)
    ip = ip[:10] + struct.pack("!H", ~s & 0xFFFF) + ip[12:]
    udp = struct.pack("!HHHH", 1024, 9, 8 + len(payload), 0)
    return mac(dst_mac) + mac(src_mac) + b"\x08\x00" + ip + udp + payload


def write_pcap(path, frame):
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        f.write(struct.pack("<IIII", 0, 0, len(frame), len(frame)))
        f.write(frame)


class Proc:
    def __init__(self, cmd, cpu, log_path):
        self.log_path = log_path
        self.out = open(log_path, "w")
        # stdbuf: testpmd's printf output must reach the log as it happens.
        self.p = subprocess.Popen(["taskset", "-c", str(cpu), "stdbuf", "-oL"] + cmd, stdout=self.out,
                                  stderr=subprocess.STDOUT, stdin=subprocess.PIPE, start_new_session=True)

    def command(self, line):
        """Sends a command to an interactive testpmd."""
        self.p.stdin.write((line + "\n").encode())
        self.p.stdin.flush()

    def cpu_seconds(self):
        try:
            with open(f"/proc/{self.p.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            return 0.0

    def stop(self):
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGINT)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        self.out.close()

    def text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()


def wait_for(path, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path):
            return True
        time.sleep(0.05)
    return False


def testpmd(prefix, vdevs, args, lcores="0@0,1@0"):
    return ["dpdk-testpmd", "--lcores", lcores, "--no-pci", "--no-huge", "-m", "1024",
            "--file-prefix", prefix] + [x for v in vdevs for x in ("--vdev", v)] + \
           ["--", "--nb-cores=1", "--no-lsc-interrupt"] + args


def port_counts(text, port, key):
    """Every cumulative `key` (RX-packets or TX-packets) of `port` printed by testpmd."""
    counts = []
    for block in re.split(r"#+ NIC statistics for port", text)[1:]:
        m = re.match(r"\s*(\d+)", block)
        if not m or int(m.group(1)) != port:
            continue
        v = re.search(key + r":\s+(\d+)", block)
        if v:
            counts.append(int(v.group(1)))
    return counts


def wait_blocks(proc, n, timeout=30):
    """Waits until the log holds `n` stats blocks (a starved main lcore prints late)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.text().count("NIC statistics for port") >= n:
            return True
        time.sleep(0.1)
    return False


def wait_flowing(fe, ports, port, key, timeout=30):
    """Asks for stats every half second until the measured counter grew over two intervals
    in a row; returns how many stats blocks the log holds by then."""
    deadline = time.time() + timeout
    blocks, grew, last = 0, 0, None
    while time.time() < deadline:
        fe.command("show port stats all")
        blocks += ports
        if not wait_blocks(fe, blocks):
            break
        counts = port_counts(fe.text(), port, key)
        if counts and last is not None and counts[-1] > last:
            grew += 1
            if grew == 2:
                return blocks
        else:
            grew = 0
        last = counts[-1] if counts else None
        time.sleep(0.5)
    raise RuntimeError(f"no frames flowed within {timeout} s; see {fe.log_path}")


def run_case(case, backend, length, secs, work):
    """One measurement; returns (pps at the measured side, backend CPU %)."""
    sock_a, sock_b = os.path.join(work, "a.sock"), os.path.join(work, "b.sock")
    for s in (sock_a, sock_b):
        if os.path.exists(s):
            os.unlink(s)
    big = length > 1518
    mbuf = ["--mbuf-size=10240", f"--max-pkt-len={length + 18}", "--total-num-mbufs=16384"] if big else []
    # The backend.
    if backend == "prism":
        cmd = [PRISM, "--queues", "1", "--control", os.path.join(work, "ctl.sock"),
               "--busy-poll-us", str(BUSY_POLL_US), "--link-rate", LINK_RATE]
        if case == "a":
            cmd += ["--port", f"a={sock_a}", f"--{A_RECEIVER}", "null"]
        elif case == "b":
            cmd += ["--port", f"a={sock_a}", "--gen", f"g=dst={MAC_A},src={MAC_B},len={length}"]
        else:
            cmd += ["--port", f"a={sock_a}", "--port", f"b={sock_b}"]
        be = Proc(cmd, 1, os.path.join(work, f"be-{backend}-{case}.log"))
    else:
        tso = ",tso=1" if big else ""
        vdevs = [f"net_vhost0,iface={sock_a},queues=1{tso}"]
        if case == "c":
            vdevs.append(f"net_vhost1,iface={sock_b},queues=1{tso}")
        mode = {"a": "rxonly", "b": "txonly", "c": "io"}[case]
        extra = [f"--txpkts={length}"] if case == "b" else []
        be = Proc(testpmd("be", vdevs, [f"--forward-mode={mode}", "--auto-start"] + extra + mbuf, "0@1,1@1"),
                  1, os.path.join(work, f"be-{backend}-{case}.log"))
    if not wait_for(sock_a) or (case == "c" and not wait_for(sock_b)):
        be.stop()
        raise RuntimeError(f"{backend}: backend sockets did not appear; see {be.log_path}")
    # The frontend.
    if case == "a":
        fe_cmd = testpmd("fe", [f"virtio_user0,path={sock_a},queues=1,mac={MAC_A}"],
                         ["-i", "--forward-mode=txonly", f"--txpkts={length}",
                          f"--eth-peer=0,{MAC_B}"] + mbuf)
        measured = (0, "TX-packets")
    elif case == "b":
        fe_cmd = testpmd("fe", [f"virtio_user0,path={sock_a},queues=1,mac={MAC_A}"],
                         ["-i", "--forward-mode=rxonly"] + mbuf)
        measured = (0, "RX-packets")
    else:
        pcap = os.path.join(work, f"frame{length}.pcap")
        write_pcap(pcap, udp_frame(length, MAC_A, MAC_B))
        fe_cmd = testpmd("fe", [f"net_pcap0,rx_pcap={pcap},infinite_rx=1",
                                f"virtio_user0,path={sock_a},queues=1,mac={MAC_A}",
                                f"virtio_user1,path={sock_b},queues=1,mac={MAC_B}",
                                "net_null0,no-rx=1"],
                         ["-i", "--forward-mode=io", "--port-topology=paired"] + mbuf)
        measured = (3, "TX-packets")  # what B received, forwarded to the null port
    fe = Proc(fe_cmd, 0, os.path.join(work, f"fe-{backend}-{case}.log"))
    ports = 4 if case == "c" else 1
    try:
        fe.command("start")
        # Warm-up: connection, learning, rings filled. The window opens once frames flow:
        # DPDK's vhost PMD takes 1-4 s here to map the frontend's memory (4 KiB pages), and
        # a fixed warm-up shorter than that averaged seconds of nothing into its figure.
        blocks = wait_flowing(fe, ports, *measured)
        time.sleep(1)
        # A reading every second: the reference machine changes state every few seconds,
        # and per-second rates show it where one figure for the window would average it
        # away.
        times = []
        cpu0 = be.cpu_seconds()
        for _ in range(secs + 1):
            if times:
                time.sleep(max(0.0, times[0] + len(times) - time.time()))
            fe.command("show port stats all")
            times.append(time.time())
        cpu1 = be.cpu_seconds()
        if not wait_blocks(fe, blocks + len(times) * ports):
            raise RuntimeError(f"no stats from the frontend; see {fe.log_path}")
        fe.command("stop")
        fe.command("quit")
    finally:
        fe.stop()
        be.stop()
    counts = port_counts(fe.text(), *measured)[-len(times):]
    if len(counts) < len(times):
        raise RuntimeError(f"no stats from the frontend; see {fe.log_path}")
    per_second = [(c1 - c0) / (t1 - t0) for c0, c1, t0, t1 in zip(counts, counts[1:], times, times[1:])]
    window = times[-1] - times[0]
    return (counts[-1] - counts[0]) / window, (cpu1 - cpu0) / window * 100, per_second


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
    ap.add_argument("--secs", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", default="a,b,c")
    ap.add_argument("--frames", help="only these frame sizes, e.g. 64 or 64,9000 (default: all)")
    ap.add_argument("--logs", help="keep the testpmd and prism-vnic logs in this directory")
    ap.add_argument("--link-rate", default="0",
                    help="prism-vnic's --link-rate (default 0: unpaced, as DPDK's vhost PMD; "
                         "100G caps 9000-byte frames at 1.36 Mpps)")
    ap.add_argument("--busy-poll-us", type=int, default=0,
                    help="prism-vnic's --busy-poll-us (0: event-driven, as by default)")
    ap.add_argument("--a-receiver", choices=("discard", "sink"), default="discard",
                    help="prism-vnic's receiving port in (a): discard (dropped at the switch, "
                         "as testpmd's rxonly does) or sink (a NIC model that classifies first)")
    args = ap.parse_args()
    global BUSY_POLL_US, LINK_RATE, A_RECEIVER
    A_RECEIVER = args.a_receiver
    BUSY_POLL_US = args.busy_poll_us
    LINK_RATE = args.link_rate
    print(f"prism-vnic: {'event-driven' if not BUSY_POLL_US else f'busy-poll {BUSY_POLL_US} us'}, "
          f"links {'unpaced' if LINK_RATE == '0' else 'at ' + LINK_RATE}, (a) into --{A_RECEIVER}; "
          "DPDK vhost PMD: polling")
    for tool in ("dpdk-testpmd", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"vs_dpdk: {tool} not found (apt-get install dpdk-dev util-linux; .ci/install-deps does)")
    if not os.path.exists(PRISM):
        sys.exit(f"vs_dpdk: {PRISM} missing: run .ci/patch-crates && cargo build --release")
    frames = [int(f) for f in args.frames.split(",")] if args.frames else None
    cases = [(c, l) for c in args.only.split(",") for l in ([64, 1518] + ([9000] if c == "c" else []))
             if frames is None or l in frames]
    rows = []
    if args.logs:
        os.makedirs(args.logs, exist_ok=True)
    probes = {"prism": [], "dpdk": []}
    with tempfile.TemporaryDirectory(prefix="vs-dpdk-") as tmp:
        work = args.logs or tmp
        probe = build_probe(tmp)
        for case, length in cases:
            result = {"prism": [], "dpdk": []}
            # The two backends take turns, so a change in the machine's load between runs
            # falls on both figures alike.
            for i in range(args.repeat):
                for backend in ("prism", "dpdk"):
                    c2c = core_to_core_ns(probe)
                    state = f", core-to-core {c2c:.0f} ns before" if c2c is not None else ""
                    if c2c is not None:
                        probes[backend].append(c2c)
                    log(f"({case}) {length} B {backend} run {i + 1}/{args.repeat} ...")
                    try:
                        pps, cpu, per_second = run_case(case, backend, length, args.secs, work)
                        spread = "-".join(f"{r / 1e6:.2f}" for r in (min(per_second), max(per_second)))
                        log(f"  {pps / 1e6:.2f} Mpps (per second {spread}), backend CPU {cpu:.0f}%{state}")
                        result[backend].append((pps, cpu, per_second))
                    except RuntimeError as e:
                        log(f"  failed: {e}")
                        result[backend].append(None)  # keeps the rounds aligned for pairing
            rows.append((case, length, result))
    # Rates are pooled per second over every round of a backend: the reference machine
    # changes state every few seconds, both backends moving up to 3x, so the median of a few
    # rounds' means drew lots; the median of many seconds, taken in
    # turns by both, is what each typically does here. Three ratios: of those medians; of
    # the 90th percentiles (the machine's fast state: other load only ever slows a second
    # down); and the median of each round's pair of means (the two runs of a round are the
    # likeliest to share a state).
    print(f"{'case':<5} {'frame':>6} | {'prism-vnic Mpps/s (p10/med/p90)':>31} {'CPU%':>5} | "
          f"{'DPDK vhost Mpps/s (p10/med/p90)':>31} {'CPU%':>5} | {'ratio':>5} {'p90':>5} {'paired':>6} "
          f"{'Gbit/s':>7}")
    for case, length, result in rows:
        pairs = [p[0] / d[0] for p, d in zip(result["prism"], result["dpdk"]) if p and d and d[0]]
        paired = statistics.median(pairs) if pairs else 0.0

        def summary(runs):
            runs = [r for r in runs if r]
            if not runs:
                return "failed", 0.0, 0.0, 0.0
            seconds = [rate for r in runs for rate in r[2]]
            cpu = statistics.median(r[1] for r in runs)
            low, mid, high = (percentile(seconds, f) for f in (0.1, 0.5, 0.9))
            text = f"{low / 1e6:.2f}/{mid / 1e6:.2f}/{high / 1e6:.2f}"
            return text, mid, high, cpu
        p_text, p_med, p_high, p_cpu = summary(result.get("prism"))
        d_text, d_med, d_high, d_cpu = summary(result.get("dpdk"))
        ratio = p_med / d_med if d_med else 0.0
        fast = p_high / d_high if d_high else 0.0
        gbps = p_med * length * 8 / 1e9
        print(f"({case})  {length:>6} | {p_text:>31} {p_cpu:>5.0f} | {d_text:>31} {d_cpu:>5.0f} | "
              f"{ratio:>5.2f} {fast:>5.2f} {paired:>6.2f} {gbps:>7.1f}")
    for backend, name in (("prism", "prism-vnic"), ("dpdk", "DPDK")):
        if probes[backend]:
            values = probes[backend]
            print(f"machine state before {name}'s rounds: core-to-core "
                  f"{min(values):.0f}/{statistics.median(values):.0f}/{max(values):.0f} ns "
                  f"(min/median/max of {len(values)})")


if __name__ == "__main__":
    main()
