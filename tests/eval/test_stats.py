"""The paired statistics on synthetic data with known answers."""

import math

import pytest

from prismtb.eval import stats


def test_geometric_mean_of_reciprocal_ratios_is_one():
    assert stats.geometric_mean([0.5, 2.0]) == pytest.approx(1.0)


def test_constant_ratios_give_a_zero_width_interval_at_the_ratio():
    ci = stats.bootstrap([0.5] * 10)
    assert (ci.value, ci.low, ci.high) == pytest.approx((0.5, 0.5, 0.5))


def test_bootstrap_interval_covers_the_true_ratio_and_narrows_with_rounds():
    import random
    rng = random.Random(5)
    few = [0.6 * math.exp(rng.gauss(0, 0.1)) for _ in range(5)]
    many = [0.6 * math.exp(rng.gauss(0, 0.1)) for _ in range(80)]
    a, b = stats.bootstrap(few), stats.bootstrap(many)
    assert b.contains(0.6)
    assert (b.high - b.low) < (a.high - a.low)


def test_bootstrap_is_deterministic_for_a_seed():
    xs = [0.5, 0.7, 0.6, 0.9, 0.4]
    assert stats.bootstrap(xs) == stats.bootstrap(xs)


def test_paired_ratios_use_only_rounds_with_both_variants():
    rounds = {0: {"mode0": 100.0, "batch": 50.0}, 1: {"mode0": 200.0}, 2: {"batch": 1.0}}
    assert stats.paired_ratios(rounds, "batch") == {0: 0.5}


def test_paired_ratios_cancel_a_drift_that_absolute_values_do_not():
    # Mode 0 drifts 4x across rounds; batch is always half of its round's mode 0.
    rounds = {r: {"mode0": 100.0 * (1 + r), "batch": 50.0 * (1 + r)} for r in range(4)}
    assert set(stats.paired_ratios(rounds, "batch").values()) == {0.5}


def rounds_with(order_breaks: int, n: int = 10) -> dict:
    out = {}
    for r in range(n):
        if r < order_breaks:
            out[r] = {"mode0": 100.0, "batch": 60.0, "sync": 70.0}  # sync worse than batch
        else:
            out[r] = {"mode0": 100.0, "batch": 60.0, "sync": 40.0}
    return out


def test_ordering_holds_in_10_of_10_rounds():
    o = stats.ordering(rounds_with(0))
    assert o.holds and o.held_rounds == 10 and o.rounds == 10
    assert all(p["separated"] for p in o.pairs)


def test_ordering_holds_in_9_of_10_rounds():
    o = stats.ordering(rounds_with(1))
    assert o.held_rounds == 9
    assert o.holds


def test_ordering_does_not_hold_in_8_of_10_rounds():
    o = stats.ordering(rounds_with(2))
    assert o.held_rounds == 8
    assert not o.holds
    assert "did NOT hold" in o.sentence() and "8 of 10" in o.sentence()


def test_ordering_needs_separated_intervals_even_when_every_round_holds():
    # sync below batch in every round but by a hair and with noise around 1: the interval
    # of sync/batch must exclude 1 for the order to hold; here it does (all below 1) ...
    rounds = {r: {"mode0": 100.0, "batch": 60.0, "sync": 59.9} for r in range(10)}
    assert stats.ordering(rounds).holds
    # ... but one sync round far above batch pulls the interval over 1.
    rounds[0]["sync"] = 600.0
    o = stats.ordering(rounds)
    assert not o.pairs[0]["separated"] and not o.holds


def test_ordering_of_no_complete_round_does_not_hold():
    o = stats.ordering({0: {"mode0": 1.0}})
    assert o.rounds == 0 and not o.holds


def test_agreement_of_vanilla_and_mode0():
    same = {r: {"mode0": 100.0, "vanilla": 100.0 * (1.02 if r % 2 else 0.98)} for r in range(10)}
    assert stats.agreement(same, "vanilla")["agree"]
    slower = {r: {"mode0": 100.0, "vanilla": 140.0 + r} for r in range(10)}
    assert not stats.agreement(slower, "vanilla")["agree"]


def test_calibration_within_10_percent_passes_and_beyond_fails():
    ok = {r: {"plain": 900.0 + r, "delayed": 900.0 + r + 148.0} for r in range(6)}
    res = stats.calibration(ok, expected=150.0)
    assert res["passes"] and res["difference"]["value"] == pytest.approx(148.0)
    # The port-wide delay's +174 us under bulk: 16% off.
    off = {r: {"plain": 900.0, "delayed": 1074.0} for r in range(6)}
    assert not stats.calibration(off, expected=150.0)["passes"]


def test_percentile_interpolates_between_order_statistics():
    assert stats.percentile([1, 2, 3, 4], 50) == 2.5
    assert stats.percentile([5], 99.9) == 5


def test_the_measured_order_ranks_modes_and_ties_those_the_run_cannot_tell_apart():
    # batch and sync both at half of mode 0, alternating above and below each other.
    rounds = {r: {"mode0": 100.0 + r, "batch": 50.0 + (r % 2) * 2, "sync": 51.0 - (r % 2) * 2}
              for r in range(10)}
    o = stats.observed_order(rounds)
    assert set(o.ranking[:2]) == {"batch", "sync"} and o.ranking[2] == "mode0"
    assert [link["relation"] for link in o.links] == ["~", "<"]
    assert o.text.endswith("< mode0") and " ~ " in o.text
    assert o.consistent


def test_the_measured_order_is_not_consistent_when_a_strict_step_fails_in_2_of_10_rounds():
    rounds = {r: {"mode0": 100.0, "batch": 60.0, "sync": 30.0} for r in range(10)}
    for r in (3, 7):
        rounds[r]["batch"] = 110.0  # batch above mode 0 in two rounds, still below overall
    o = stats.observed_order(rounds)
    assert o.text == "sync < batch < mode0"
    assert o.links[1]["rounds_held"] == 8
    assert not o.consistent and "NOT consistent" in o.sentence()


def test_the_measured_order_of_no_complete_round_is_empty_and_not_consistent():
    o = stats.observed_order({0: {"mode0": 1.0}})
    assert o.ranking == () and not o.consistent
