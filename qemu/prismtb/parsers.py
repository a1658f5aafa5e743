"""Parsers of what the tools print: sockperf, iperf3, /proc/net/prism, QEMU's version, the
kernel-test console protocol, prism-vnic's stats, /proc task names. Pure functions on text,
tested on recorded samples (tests/testbed)."""

from __future__ import annotations

import re
from pathlib import Path

ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
# A kernel message on the console: "[   34.354714] text" up to its newline.
KERNEL_MESSAGE_RE = re.compile(r"\[\s*\d+\.\d+\] [^\n]*\n")
QEMU_VERSION_RE = re.compile(r"version (\d+)\.(\d+)(?:\.(\d+))?")
VCPU_THREAD_RE = re.compile(r"^CPU (\d+)/(TCG|KVM)$")


def parse_sockperf(out: str) -> dict:
    """The figures of a `sockperf ping-pong` run: sent/received over the whole run, dropped,
    and the percentiles in microseconds (p50, p99, ...)."""
    text = ANSI_RE.sub("", out)
    res: dict = {}
    m = re.search(r"\[Total Run\].*SentMessages=(\d+); ReceivedMessages=(\d+)", text)
    if m:
        res["sent"], res["received"] = int(m.group(1)), int(m.group(2))
    m = re.search(r"# dropped messages = (\d+); # duplicated messages = (\d+); "
                  r"# out-of-order messages = (\d+)", text)
    if m:
        res["dropped"], res["duplicated"], res["out_of_order"] = map(int, m.groups())
    for pct, value in re.findall(r"percentile (\d+\.\d+) =\s*([\d.]+)", text):
        res[f"p{float(pct):g}"] = float(value)
    return res


def iperf_udp_summary(out: str) -> tuple[int, int] | None:
    """(lost, total) datagrams from iperf3's UDP receiver line, None when absent."""
    m = re.search(r"(\d+)/(\d+) \([\d.e+-]+%\)\s+receiver", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def iperf_receiver_mbits(out: str) -> float | None:
    """The receiver's rate in Mbit/s from iperf3's summary (the last `receiver` line)."""
    rate = None
    for m in re.finditer(r"([\d.]+) ([KMG]?)bits/sec.*receiver", out):
        scale = {"": 1e-6, "K": 1e-3, "M": 1.0, "G": 1e3}[m.group(2)]
        rate = float(m.group(1)) * scale
    return rate


def prism_counters(text: str) -> dict[str, int]:
    """The `total` line of /proc/net/prism, by column name; raises ValueError without it."""
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    header = next((ln for ln in lines if ln and ln[0] == "cpu"), None)
    total = next((ln for ln in lines if ln and ln[0] == "total"), None)
    if header is None or total is None:
        raise ValueError(f"/proc/net/prism has no header or total line:\n{text}")
    return {name: int(value) for name, value in zip(header[1:], total[1:])}


def qemu_version(text: str) -> tuple[int, int, int] | None:
    """(major, minor, micro) from `qemu-system-x86_64 --version`; None when not recognised."""
    m = QEMU_VERSION_RE.search(text)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def protocol_lines(console: str) -> list[str]:
    """The console's lines with kernel messages taken out first. The kernel writes to the
    same serial console as the test script, asynchronously (a network namespace is torn
    down by a workqueue after the script has moved on), and a message can land in the
    middle of a line the script is writing: "PRISM-CHECK dmes[  34.35] device vxlan0 left
    promiscuous mode\\ng_clean ok". Taken out, the script's line is whole again."""
    return [line.strip("\r") for line in KERNEL_MESSAGE_RE.sub("", console).splitlines()]


def vcpu_threads(task_dir: Path) -> dict[int, int]:
    """{vCPU index: thread id} of a QEMU process, from /proc/PID/task/*/comm."""
    threads: dict[int, int] = {}
    try:
        tasks = list(task_dir.iterdir())
    except OSError:
        return threads
    for task in tasks:
        try:
            comm = (task / "comm").read_text().strip()
        except OSError:
            continue  # the thread ended meanwhile
        m = VCPU_THREAD_RE.match(comm)
        if m:
            threads[int(m.group(1))] = int(task.name)
    return threads


def stats_summary(stats: dict) -> list[str]:
    """One line per port of `prism-vnic stats --json`: kind, link, packets and drops."""
    lines = []
    for port in stats.get("ports", []):
        c = port.get("counters", {})
        drops = sum(v for k, v in c.items() if "drop" in k and isinstance(v, int))
        state = "connected" if port.get("connected") else "not connected"
        lines.append(f"{port.get('name')}: {port.get('kind')} {state}, "
                     f"rx {c.get('rx_packets', 0)} pkts ({c.get('rx_high_packets', 0)} high), "
                     f"tx {c.get('tx_packets', 0)} pkts, drops {drops}")
    return lines
