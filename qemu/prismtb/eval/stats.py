"""Paired statistics of an evaluation run: per-round ratios to mode 0, bootstrap intervals,
and the verdict on an ordering of modes.

Why paired: on a shared 2-core host the absolute latency of a turn moves with whatever else
runs, by more than PRISM's effect. The modes of one round run back to back in one boot, so
the ratio of a mode to mode 0 within a round cancels most of that drift; the spread of the
ratios across rounds is what the intervals describe.

Ratios are summarised by their geometric mean (the mean of log ratios: a ratio of 0.5 and
one of 2.0 cancel), with a percentile bootstrap interval over rounds."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

# The kernel variants of a cell, in the order tables list them. "vanilla" is the unpatched
# kernel (its own boots); the others are one PRISM boot's modes 0, 1 (batch) and 2 (sync).
VARIANTS = ("vanilla", "mode0", "batch", "sync")
BASELINE = "mode0"
# The paper's ordering for latency (lower is better): sync < batch < mode 0.
PAPER_ORDER = ("sync", "batch", "mode0")
# "holds in at least 9 of 10 rounds".
ROUNDS_FRACTION = 0.9
BOOTSTRAP_RESAMPLES = 4000


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95% interval."""

    value: float
    low: float
    high: float

    def overlaps(self, other: "Interval") -> bool:
        return self.low <= other.high and other.low <= self.high

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high

    def as_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high}

    @staticmethod
    def from_dict(d: Mapping) -> "Interval":
        return Interval(float(d["value"]), float(d["low"]), float(d["high"]))


def geometric_mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("geometric mean of nothing")
    if any(v <= 0 for v in values):
        raise ValueError(f"geometric mean needs positive values, got {list(values)}")
    return math.exp(sum(math.log(v) for v in values) / len(values))


def median(values: Sequence[float]) -> float:
    s = sorted(values)
    if not s:
        raise ValueError("median of nothing")
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between order statistics."""
    s = sorted(values)
    if not s:
        raise ValueError("percentile of nothing")
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def arithmetic_mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("mean of nothing")
    return sum(values) / len(values)


STATISTICS = {"geomean": geometric_mean, "mean": arithmetic_mean}


def bootstrap(values: Sequence[float], statistic: str = "geomean", *,
              resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = 0.95,
              seed: int = 21) -> Interval:
    """The statistic ("geomean" of ratios, or "mean" of differences) of `values` with a
    percentile bootstrap interval (resampling the values, i.e. the rounds, with
    replacement). Deterministic for a given seed, so a report and its `compare` see the
    same numbers. One value gives a zero-width interval: the report shows n beside it."""
    values = [float(v) for v in values]
    point = STATISTICS[statistic](values)
    if len(values) < 2:
        return Interval(point, point, point)
    rng = np.random.default_rng(seed)
    data = np.log(values) if statistic == "geomean" else np.asarray(values)
    means = data[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    if statistic == "geomean":
        means = np.exp(means)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    # A resampled mean cannot leave the values' range; rounding can, by an ulp.
    return Interval(point, min(float(low), point), max(float(high), point))


def paired_ratios(by_round: Mapping[int, Mapping[str, float]], variant: str,
                  baseline: str = BASELINE) -> dict[int, float]:
    """{round: value(variant) / value(baseline)} over the rounds that have both."""
    out = {}
    for rnd, values in sorted(by_round.items()):
        a, b = values.get(variant), values.get(baseline)
        if a is None or b is None or b <= 0 or a <= 0:
            continue
        out[rnd] = a / b
    return out


@dataclass
class Ordering:
    """Whether `order` (best first, e.g. sync < batch < mode0 for latency) held: per pair of
    neighbours, in how many rounds, and whether their paired-ratio intervals exclude 1."""

    order: tuple[str, ...]
    rounds: int = 0
    held_rounds: int = 0  # rounds in which the whole order held
    pairs: list[dict] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        return (self.rounds > 0
                and self.held_rounds >= math.ceil(ROUNDS_FRACTION * self.rounds)
                and all(p["separated"] for p in self.pairs))

    def as_dict(self) -> dict:
        return {"order": list(self.order), "rounds": self.rounds,
                "held_rounds": self.held_rounds, "holds": self.holds, "pairs": self.pairs}

    def sentence(self) -> str:
        text = " < ".join(self.order)
        verdict = "held" if self.holds else "did NOT hold"
        parts = [f"{text} {verdict}: whole order in {self.held_rounds} of {self.rounds} rounds"]
        for p in self.pairs:
            ci = p["ratio"]
            parts.append(f"{p['better']}/{p['worse']} = {ci['value']:.3f} "
                         f"[{ci['low']:.3f}, {ci['high']:.3f}] ({p['rounds_held']}/{p['rounds']})")
        return "; ".join(parts)


def ordering(by_round: Mapping[int, Mapping[str, float]],
             order: Sequence[str] = PAPER_ORDER, *, lower_is_better: bool = True) -> Ordering:
    """The verdict on `order` (best first). For each neighbouring pair (better, worse) the
    per-round ratio better/worse is bootstrapped; the pair is separated when the whole 95%
    interval is below 1 (above 1 when higher is better). The order holds when every pair is
    separated and the whole order held in at least 9 of 10 rounds (rounded up)."""
    result = Ordering(order=tuple(order))
    complete = {r: v for r, v in by_round.items() if all(m in v for m in order)}
    result.rounds = len(complete)

    def better(a: float, b: float) -> bool:
        return a < b if lower_is_better else a > b

    result.held_rounds = sum(
        all(better(v[order[i]], v[order[i + 1]]) for i in range(len(order) - 1))
        for v in complete.values())
    for i in range(len(order) - 1):
        good, bad = order[i], order[i + 1]
        ratios = list(paired_ratios(complete, good, bad).values())
        if not ratios:
            result.pairs.append({"better": good, "worse": bad, "rounds": 0, "rounds_held": 0,
                                 "ratio": Interval(math.nan, math.nan, math.nan).as_dict(),
                                 "separated": False})
            continue
        ci = bootstrap(ratios)
        separated = ci.high < 1 if lower_is_better else ci.low > 1
        result.pairs.append({
            "better": good, "worse": bad, "rounds": len(ratios),
            "rounds_held": sum(1 for r in ratios if (r < 1 if lower_is_better else r > 1)),
            "ratio": ci.as_dict(), "separated": separated})
    return result


@dataclass
class Observed:
    """The ordering of modes a run measured (not the one it expected): variants ranked by
    their paired ratio to mode 0, each neighbouring pair joined by "<" where the interval of
    their paired ratio excludes 1 and by "~" where it does not (the run cannot tell them
    apart). Consistent when every "<" held in at least 9 of 10 rounds."""

    ranking: tuple[str, ...]
    links: list[dict] = field(default_factory=list)

    @property
    def text(self) -> str:
        out = self.ranking[0] if self.ranking else ""
        for link, name in zip(self.links, self.ranking[1:]):
            out += f" {link['relation']} {name}"
        return out

    @property
    def consistent(self) -> bool:
        return bool(self.links) and all(
            link["relation"] == "~"
            or link["rounds_held"] >= math.ceil(ROUNDS_FRACTION * link["rounds"])
            for link in self.links)

    def as_dict(self) -> dict:
        return {"ranking": list(self.ranking), "text": self.text, "links": self.links,
                "consistent": self.consistent}

    def sentence(self) -> str:
        parts = [f"measured order {self.text} "
                 f"({'consistent' if self.consistent else 'NOT consistent'} over rounds)"]
        for link in self.links:
            ci = link["ratio"]
            parts.append(f"{link['better']}/{link['worse']} = {ci['value']:.3f} "
                         f"[{ci['low']:.3f}, {ci['high']:.3f}] "
                         f"({link['rounds_held']}/{link['rounds']})")
        return "; ".join(parts)


def observed_order(by_round: Mapping[int, Mapping[str, float]],
                   variants: Sequence[str] = PAPER_ORDER) -> Observed:
    """The measured ordering of `variants` for a lower-is-better metric (see Observed)."""
    complete = {r: v for r, v in by_round.items() if all(m in v for m in variants)}
    if not complete:
        return Observed(ranking=())
    rank = {v: geometric_mean(list(paired_ratios(complete, v, variants[-1]).values()))
            for v in variants}
    ranking = tuple(sorted(variants, key=lambda v: rank[v]))
    result = Observed(ranking=ranking)
    for good, bad in zip(ranking, ranking[1:]):
        ratios = list(paired_ratios(complete, good, bad).values())
        ci = bootstrap(ratios)
        result.links.append({
            "better": good, "worse": bad, "relation": "<" if ci.high < 1 else "~",
            "rounds": len(ratios), "rounds_held": sum(1 for r in ratios if r < 1),
            "ratio": ci.as_dict()})
    return result


def agreement(by_round: Mapping[int, Mapping[str, float]], variant: str,
              baseline: str = BASELINE) -> dict:
    """Whether `variant` and `baseline` agree: the interval of their paired ratio contains 1
    (e.g. the vanilla kernel against PRISM's mode 0)."""
    ratios = list(paired_ratios(by_round, variant, baseline).values())
    if not ratios:
        return {"variant": variant, "baseline": baseline, "rounds": 0, "agree": False,
                "ratio": None}
    ci = bootstrap(ratios)
    return {"variant": variant, "baseline": baseline, "rounds": len(ratios),
            "agree": ci.contains(1.0), "ratio": ci.as_dict()}


def calibration(by_round: Mapping[int, Mapping[str, float]], expected: float, *,
                with_delay: str = "delayed", without: str = "plain",
                tolerance: float = 0.10) -> dict:
    """A known effect measured back: the per-round difference with_delay - without of a
    latency, bootstrapped (mean), against the `expected` difference. Passes when the
    estimate is within `tolerance` (10%) of the expected value."""
    diffs = [v[with_delay] - v[without] for _, v in sorted(by_round.items())
             if with_delay in v and without in v]
    if not diffs:
        return {"expected": expected, "rounds": 0, "passes": False, "difference": None}
    ci = bootstrap(diffs, "mean")
    error = (ci.value - expected) / expected if expected else math.inf
    return {"expected": expected, "rounds": len(diffs), "difference": ci.as_dict(),
            "relative_error": error, "passes": abs(error) <= tolerance}


def spread(values: Iterable[float]) -> dict:
    """Median, min and max of a metric across rounds, for the tables."""
    v = [x for x in values if x is not None and not math.isnan(x)]
    if not v:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": median(v), "min": min(v), "max": max(v), "n": len(v)}
