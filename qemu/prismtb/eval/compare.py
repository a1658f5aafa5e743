"""`benches/eval compare DIR_A DIR_B`: what changed from run A (the last good one) to run B
(a kernel patch) beyond the intervals, and whether that is a regression.

A change is a metric whose 95% intervals in A and B do not overlap. It is a regression when
B is worse: a PRISM variant's latency ratio to mode 0 went up (PRISM helps less), batch's
bulk-throughput ratio went down, or an ordering or agreement that held in A fails in B. The
absolute latencies of mode 0 move with the host's load; they are listed beside, and count as
regressions only with --absolute."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import results
from .stats import Interval


# The metrics compare judges; any other (counters such as nic_high_packets, count, drops,
# min and max) is context, not a result.
LOWER_IS_BETTER = ("p50_us", "p90_us", "p99_us", "p99.9_us", "mean_us", "geo_us")
HIGHER_IS_BETTER = (results.THROUGHPUT, "ops_per_s", "requests_per_s")


@dataclass
class Change:
    cell: str
    what: str
    a: str
    b: str
    regression: bool

    def line(self) -> str:
        tag = "REGRESSION" if self.regression else "change"
        return f"{tag}: {self.cell}: {self.what}: {self.a} -> {self.b}"


def _ci(d: dict) -> Interval:
    return Interval.from_dict(d)


def _fmt(i: Interval) -> str:
    return f"{i.value:.3f} [{i.low:.3f}, {i.high:.3f}]"


def compare(a: dict, b: dict, *, absolute: bool = False) -> tuple[list[Change], list[str]]:
    """Changes from summary `a` to summary `b`, and the cells found in only one of them."""
    changes: list[Change] = []
    notes: list[str] = []
    cells_a = {e["slug"]: e for e in a["cells"]}
    cells_b = {e["slug"]: e for e in b["cells"]}
    for slug in sorted(set(cells_a) ^ set(cells_b)):
        notes.append(f"cell {slug} only in {'A' if slug in cells_a else 'B'}")
    for slug in sorted(set(cells_a) & set(cells_b)):
        ea, eb = cells_a[slug], cells_b[slug]
        label = ea["label"]
        for metric, per_variant in ea["ratios"].items():
            if metric not in LOWER_IS_BETTER and metric not in HIGHER_IS_BETTER:
                continue  # counters (frames steered, samples, drops) are not performance
            for variant, ra in per_variant.items():
                rb = eb["ratios"].get(metric, {}).get(variant)
                if not rb:
                    continue
                ia, ib = _ci(ra), _ci(rb)
                if ia.overlaps(ib):
                    continue
                higher_is_better = metric in HIGHER_IS_BETTER
                worse = ib.value < ia.value if higher_is_better else ib.value > ia.value
                # The vanilla kernel is the reference, not the change under test.
                regression = worse and variant != "vanilla"
                changes.append(Change(label, f"{metric} {variant}/mode0", _fmt(ia), _fmt(ib),
                                      regression))
        for group, key, what, words in (
                ("ordering", "holds", "ordering of {}", ("held", "did not hold")),
                ("agreement", "agree", "vanilla vs mode0 on {}", ("agree", "differ"))):
            for metric, va in ea[group].items():
                vb = eb[group].get(metric)
                if not (va and vb and va["rounds"] and vb["rounds"]) or va[key] == vb[key]:
                    continue
                # Lost in B is a regression; gained is a change.
                changes.append(Change(label, what.format(metric),
                                      words[0] if va[key] else words[1],
                                      words[0] if vb[key] else words[1], va[key]))
        for metric, oa in ea.get("observed", {}).items():
            ob = eb.get("observed", {}).get(metric)
            if not (oa and ob and oa["ranking"] and ob["ranking"]) or same_order(oa, ob):
                continue
            # A regression when a PRISM mode that A put below mode 0 is not below it in B.
            changes.append(Change(label, f"measured order of {metric}", oa["text"], ob["text"],
                                  bool(_below_mode0(oa) - _below_mode0(ob))))
        for variant, ma in ea["variants"].items():
            mb = eb["variants"].get(variant)
            if not mb:
                continue
            for metric in results.LATENCY_METRICS:
                sa, sb = ma.get(metric), mb.get(metric)
                if not sa or not sb or sa["median"] is None or sb["median"] is None:
                    continue
                # Ranges over rounds: beyond each other's whole range is a change.
                if sb["min"] > sa["max"] or sb["max"] < sa["min"]:
                    worse = sb["median"] > sa["median"]
                    changes.append(Change(
                        label, f"{metric} of {variant} (absolute, us)",
                        f"{sa['median']:.1f} ({sa['min']:.1f}-{sa['max']:.1f})",
                        f"{sb['median']:.1f} ({sb['min']:.1f}-{sb['max']:.1f})",
                        absolute and worse and variant != "vanilla"))
    for ca in a.get("calibration", []):
        for cb in b.get("calibration", []):
            if ca["label"] == cb["label"] and ca["delay_us"] == cb["delay_us"] \
                    and ca["passes"] and not cb["passes"]:
                changes.append(Change(ca["label"], f"calibration at {ca['delay_us']} us",
                                      "within 10%", "not within 10%", True))
    return changes, notes


def groups(observed: dict) -> tuple[frozenset[str], ...]:
    """A measured order as its groups from best to worst: the modes a run could not tell
    apart ('~') form one group, whatever order the ranking lists them in."""
    out: list[set[str]] = [{observed["ranking"][0]}] if observed["ranking"] else []
    for link, name in zip(observed["links"], observed["ranking"][1:]):
        if link["relation"] == "<":
            out.append({name})
        else:
            out[-1].add(name)
    return tuple(frozenset(g) for g in out)


def same_order(a: dict, b: dict) -> bool:
    return groups(a) == groups(b)


def _below_mode0(observed: dict) -> set[str]:
    """The modes a measured order puts strictly below mode 0 (a '<' between them)."""
    ranking, links = observed["ranking"], observed["links"]
    if "mode0" not in ranking:
        return set()
    below: set[str] = set()
    strict = False
    for i in range(ranking.index("mode0") - 1, -1, -1):
        strict = strict or links[i]["relation"] == "<"
        if strict:
            below.add(ranking[i])
    return below


def same_orders(a: dict, b: dict) -> tuple[int, list[str]]:
    """Busy cells whose measured orders of p50 and p99 A and B both have: how many, and
    those that differ (the goal of 'two full runs in a row give the same ordering')."""
    cells_b = {e["slug"]: e for e in b["cells"]}
    n, differ = 0, []
    for ea in a["cells"]:
        eb = cells_b.get(ea["slug"])
        if eb is None or ea["cell"]["server"] != "busy":
            continue
        for m in results.LATENCY_METRICS:
            oa, ob = ea.get("observed", {}).get(m), eb.get("observed", {}).get(m)
            if oa and ob and oa["ranking"] and ob["ranking"]:
                n += 1
                if not same_order(oa, ob):
                    differ.append(f"{ea['label']}: {m}: {oa['text']} / {ob['text']}")
    return n, differ


def main(dir_a: Path, dir_b: Path, *, absolute: bool = False) -> int:
    """Prints the changes; exit status 1 on a regression, 0 otherwise."""
    a, b = results.read_summary(dir_a), results.read_summary(dir_b)
    changes, notes = compare(a, b, absolute=absolute)
    for n in notes:
        print(f"note: {n}")
    for c in changes:
        print(c.line())
    regressions = [c for c in changes if c.regression]
    n, differ = same_orders(a, b)
    if n:
        print(f"busy cells' measured orders: {n - len(differ)} of {n} the same in both runs"
              + "".join(f"\n  differs: {d}" for d in differ))
    print(f"{len(changes)} changes beyond the intervals, {len(regressions)} regressions "
          f"({dir_a} -> {dir_b})")
    return 1 if regressions else 0
