"""Parsers of the evaluation's tools: sockperf's full log, iperf3 -J, wrk (with the Lua
report that prints its percentiles as JSON, or plain --latency), memcaslap
(libmemcached-tools' load generator). sockperf's summary is prismtb.parsers.parse_sockperf's. Pure functions on text, tested on outputs recorded on a real host
(tests/eval/data).

Latencies are in microseconds everywhere. sockperf reports half the round trip (its
"latency" column is (rx - tx) / 2); the parsers keep that convention and say so in the
metric names the runner records."""

from __future__ import annotations

import json
import math
import re

from .stats import percentile

ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def pkey(q: float) -> str:
    """The metric name of a percentile: 50 -> "p50_us", 99.9 -> "p99.9_us"."""
    return f"p{q:g}_us"


class ParseError(ValueError):
    """A tool's output without what the evaluation needs; the message names the tool."""


def sockperf_full_log(text: str) -> list[float]:
    """The per-message latencies (us, half round trip) of `sockperf ping-pong --full-log`:
    the rows after the "packet, txTime(sec), rxTime(sec), latency(usec)" header."""
    lines = ANSI_RE.sub("", text).splitlines()
    try:
        start = next(i for i, ln in enumerate(lines) if ln.startswith("packet, txTime"))
    except StopIteration:
        raise ParseError("sockperf full log: no 'packet, txTime' header") from None
    out = []
    for ln in lines[start + 1:]:
        parts = [p.strip() for p in ln.split(",")]
        if len(parts) != 4:
            continue  # the closing rule of dashes
        try:
            out.append(float(parts[3]))
        except ValueError:
            continue
    if not out:
        raise ParseError("sockperf full log: no observations")
    return out


def latency_metrics(samples: list[float]) -> dict:
    """p50/p90/p99/p99.9 and mean of raw latency samples."""
    if not samples:
        raise ParseError("no latency samples")
    out = {pkey(q): percentile(samples, q) for q in PERCENTILES}
    out["mean_us"] = sum(samples) / len(samples)
    out["count"] = len(samples)
    return out


def iperf3_json(text: str) -> dict:
    """Throughput of an `iperf3 -J` run (client side): received bits per second over all
    streams, retransmits, streams."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ParseError(f"iperf3 -J: not JSON ({e})") from None
    if "error" in data:
        raise ParseError(f"iperf3: {data['error']}")
    end = data.get("end", {})
    received = end.get("sum_received") or end.get("sum")
    if not received:
        raise ParseError("iperf3 -J: no end.sum_received")
    sent = end.get("sum_sent", {})
    return {"mbps": received["bits_per_second"] / 1e6,
            "seconds": received.get("seconds"),
            "retransmits": sent.get("retransmits"),
            "streams": len(end.get("streams", []))}


_WRK_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6}


def wrk(text: str) -> dict:
    """wrk's figures: from the WRK_JSON line our Lua report prints when present (p50, p90,
    p99, p99.9 from wrk's full histogram), else from --latency's distribution (50/75/90/99)."""
    m = re.search(r"^WRK_JSON (\{.*\})$", text, re.M)
    if m:
        data = json.loads(m.group(1))
        seconds = data["duration_us"] / 1e6
        out = {pkey(float(q)): float(v) for q, v in data["percentiles_us"].items()}
        out.update({"mean_us": data["mean_us"], "requests": data["requests"],
                    "errors": data["errors"],
                    "requests_per_s": data["requests"] / seconds if seconds else math.nan})
        return out
    out: dict = {}
    for q, value, unit in re.findall(r"^\s+(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M):
        out[pkey(float(q))] = float(value) * _WRK_UNITS[unit]
    for key, pattern, kind in (("requests_per_s", r"Requests/sec:\s+([\d.]+)", float),
                               ("requests", r"(\d+) requests in", int)):
        m = re.search(pattern, text)
        if m:
            out[key] = kind(m.group(1))
    if pkey(50.0) not in out:
        raise ParseError("wrk: no latency distribution (run with --latency or our Lua report)")
    return out


def _log2_percentile(buckets: dict[int, int], q: float, lo: float, hi: float) -> float:
    """The q-th percentile of a log2 histogram (bucket k holds [2^k, 2^(k+1)) us),
    interpolated geometrically inside the bucket and clamped to the observed min and max."""
    total = sum(buckets.values())
    rank = q / 100.0 * total
    seen = 0
    for k in sorted(buckets):
        n = buckets[k]
        if n and seen + n >= rank:
            frac = (rank - seen) / n
            a, b = max(2.0 ** k, lo), min(2.0 ** (k + 1), hi)
            if a >= b:
                return a
            return a * (b / a) ** frac
        seen += n
    return hi


def memcaslap(text: str) -> dict:
    """memcaslap's final statistics (run it with -S equal to -t so they are printed): per
    operation (get, set, total) count, min, max, mean, geometric mean and the percentiles
    estimated from its log2 histogram (to within its factor-2 buckets), and the throughput.
    The mean and geometric mean are exact; the percentiles are the coarse part."""
    text = ANSI_RE.sub("", text)
    out: dict = {}
    blocks = re.findall(r"^(Get|Set|Total) Statistics \((\d+) events\)\n(.*?)(?=\n\s*\n|\Z)",
                        text, re.M | re.S)
    for name, events, body in blocks:
        op = name.lower()
        fields = dict(re.findall(r"^\s+(Min|Max|Avg|Geo|Std):\s+([\d.]+)", body, re.M))
        buckets: dict[int, int] = {}
        dist = body.split("Log2 Dist:", 1)[1] if "Log2 Dist:" in body else ""
        for row in re.finditer(r"^\s+(\d+):((?:\s+\d+)+)\s*$", dist, re.M):
            base = int(row.group(1))
            for i, count in enumerate(row.group(2).split()):
                buckets[base + i] = int(count)
        lo, hi = float(fields.get("Min", 0)), float(fields.get("Max", 0))
        stats = {"count": int(events), "mean_us": float(fields.get("Avg", "nan")),
                 "geo_us": float(fields.get("Geo", "nan")), "min_us": lo, "max_us": hi}
        if buckets and sum(buckets.values()):
            for q in PERCENTILES:
                stats[pkey(q)] = _log2_percentile(buckets, q, lo, hi)
        out[op] = stats
    m = re.search(r"Run time: ([\d.]+)s Ops: (\d+) TPS: (\d+)", text)
    if m:
        out["seconds"], out["ops"], out["ops_per_s"] = float(m.group(1)), int(m.group(2)), \
            float(m.group(3))
    if "get" not in out or "ops_per_s" not in out:
        raise ParseError("memcaslap: no final statistics (run with -S as long as -t)")
    return out


def sockperf_no_reply(text: str) -> bool:
    """Whether a sockperf client got no reply in the measured part of its run (it then
    writes no log): none at all, or only to its warmup messages (ping-pong waits for the
    reply to a lost request until the run ends)."""
    return ("No messages were received from the server" in text
            or "No valid observations found" in text)
