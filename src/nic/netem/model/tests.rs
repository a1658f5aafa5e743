//! The model's statistics against their expectations. Every bound is computed from the
//! distribution (binomial, or a Markov chain's asymptotic variance) and is 6 standard
//! deviations wide; the seeds are fixed, so a run is also repeatable.

use super::*;
use crate::nic::netem::settings::{NetemAction, NetemCommand};

/// Frames per statistical test: the model alone takes well under a second for them.
const N: usize = 1_000_000;
const SIGMAS: f64 = 6.0;
const SEEDS: [u64; 3] = [1, 42, 0xdead_beef];

fn model(text: &str, seed: u64) -> ClassModel {
    let command: NetemCommand = text.parse().expect(text);
    let NetemAction::Set(mut settings) = command.action else {
        panic!("{text}: not settings")
    };
    settings.seed = Some(seed);
    ClassModel::new(settings, 0)
}

fn verdicts(text: &str, seed: u64, n: usize) -> Vec<Verdict> {
    let mut model = model(text, seed);
    (0..n).map(|_| model.decide(1500)).collect()
}

/// Asserts `count` hits out of `n` is within the bound of a process of rate `p` whose
/// count has `factor` times a binomial's variance.
fn assert_count_near(what: &str, count: usize, n: usize, p: f64, factor: f64) {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p) * factor).sqrt();
    let off = (count as f64 - mean).abs();
    assert!(
        off <= SIGMAS * sd,
        "{what}: {count} of {n}, expected {mean:.1} +- {:.1} ({SIGMAS} sd)",
        SIGMAS * sd
    );
}

/// A two-state chain's count variance relative to a binomial's: (1 + l) / (1 - l), where l
/// is the chain's second eigenvalue.
fn markov_factor(lambda: f64) -> f64 {
    (1.0 + lambda) / (1.0 - lambda)
}

#[test]
fn random_loss_of_1_percent_is_within_the_binomial_bound() {
    for seed in SEEDS {
        let lost = verdicts("loss 1%", seed, N)
            .iter()
            .filter(|v| v.lost)
            .count();
        assert_count_near("loss 1%", lost, N, 0.01, 1.0);
    }
}

#[test]
fn correlated_loss_keeps_its_rate_and_repeats_with_the_correlation() {
    let (p, rho) = (0.02, 0.5);
    for seed in SEEDS {
        let v = verdicts("loss random 2% 50%", seed, N);
        let lost = v.iter().filter(|v| v.lost).count();
        assert_count_near("loss 2% 50%", lost, N, p, markov_factor(rho));
        // After a loss, the next frame is lost with p + rho (1 - p).
        let after_loss: Vec<bool> = v
            .windows(2)
            .filter(|w| w[0].lost)
            .map(|w| w[1].lost)
            .collect();
        let again = after_loss.iter().filter(|&&lost| lost).count();
        let conditional = p + rho * (1.0 - p);
        assert_count_near("loss after loss", again, after_loss.len(), conditional, 1.0);
    }
}

#[test]
fn gilbert_elliott_loss_matches_its_stationary_rate_and_burst_length() {
    // p 1%, r 10%, 1-h 100%, 1-k 0%: every frame in the bad state is lost, so losses are the
    // chain's state and come in bursts of mean length 1 / r.
    let (p, r) = (0.01, 0.1);
    let rate = p / (p + r);
    for seed in SEEDS {
        let v = verdicts("loss gemodel 1% 10%", seed, N);
        let lost = v.iter().filter(|v| v.lost).count();
        assert_count_near("gemodel 1% 10%", lost, N, rate, markov_factor(1.0 - p - r));
        let mut bursts = Vec::new();
        let mut run = 0usize;
        for verdict in &v {
            if verdict.lost {
                run += 1;
            } else if run > 0 {
                bursts.push(run as f64);
                run = 0;
            }
        }
        // Burst lengths are geometric with mean 1 / r and variance (1 - r) / r^2.
        let mean = bursts.iter().sum::<f64>() / bursts.len() as f64;
        let sd = ((1.0 - r) / (r * r) / bursts.len() as f64).sqrt();
        assert!(
            (mean - 1.0 / r).abs() <= SIGMAS * sd,
            "mean burst {mean}, expected {} +- {}",
            1.0 / r,
            SIGMAS * sd
        );
    }
}

#[test]
fn gilbert_elliott_with_loss_in_both_states_matches_its_stationary_rate() {
    // Bad 50% loss, good 1%; the state is hidden, so the count's variance is the state's
    // share (a chain's) plus each frame's own Bernoulli noise.
    let (p, r, bad_loss, good_loss): (f64, f64, f64, f64) = (0.02, 0.2, 0.5, 0.01);
    let bad = p / (p + r);
    let rate = bad * bad_loss + (1.0 - bad) * good_loss;
    let state_variance = bad * (1.0 - bad) * (bad_loss - good_loss).powi(2);
    let noise = bad * bad_loss * (1.0 - bad_loss) + (1.0 - bad) * good_loss * (1.0 - good_loss);
    let variance = noise + state_variance * markov_factor(1.0 - p - r);
    let factor = variance / (rate * (1.0 - rate));
    for seed in SEEDS {
        let lost = verdicts("loss gemodel 2% 20% 50% 1%", seed, N)
            .iter()
            .filter(|v| v.lost)
            .count();
        assert_count_near("gemodel 2% 20% 50% 1%", lost, N, rate, factor);
    }
}

#[test]
fn duplicates_and_corruptions_are_within_the_binomial_bound() {
    for seed in SEEDS {
        let v = verdicts("duplicate 0.1% corrupt 0.01%", seed, N);
        let duplicated = v.iter().filter(|v| v.duplicate).count();
        assert_count_near("duplicate 0.1%", duplicated, N, 0.001, 1.0);
        let corrupted = v.iter().filter(|v| v.corrupt.is_some()).count();
        assert_count_near("corrupt 0.01%", corrupted, N, 0.0001, 1.0);
    }
}

#[test]
fn a_corruption_names_one_bit_inside_the_frame() {
    let mut model = model("corrupt 100%", 9);
    let mut bytes_hit = [0usize; 60];
    for _ in 0..60_000 {
        let (byte, bit) = model.decide(60).corrupt.expect("always corrupted");
        assert!(byte < 60 && bit < 8, "{byte} {bit}");
        bytes_hit[byte] += 1;
    }
    // Every byte of the frame can be hit (1,000 times each expected).
    assert!(bytes_hit.iter().all(|&n| n > 700), "{bytes_hit:?}");
}

/// Sample mean and variance.
fn moments(samples: &[f64]) -> (f64, f64) {
    let n = samples.len() as f64;
    let mean = samples.iter().sum::<f64>() / n;
    let variance = samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, variance)
}

/// Asserts the delays of `text` have the given mean, standard deviation and fourth central
/// moment (which bounds the sample variance's own spread), in nanoseconds.
fn assert_delay_moments(text: &str, mean: f64, sd: f64, mu4: f64) {
    const DELAYS: usize = 200_000;
    for seed in SEEDS {
        let samples: Vec<f64> = verdicts(text, seed, DELAYS)
            .iter()
            .map(|v| v.delay_ns as f64)
            .collect();
        let (got_mean, got_variance) = moments(&samples);
        let n = DELAYS as f64;
        let mean_bound = SIGMAS * sd / n.sqrt();
        assert!(
            (got_mean - mean).abs() <= mean_bound,
            "{text}: mean {got_mean} ns, expected {mean} +- {mean_bound}"
        );
        let variance = sd * sd;
        let variance_bound = SIGMAS * ((mu4 - variance * variance) / n).sqrt();
        assert!(
            (got_variance - variance).abs() <= variance_bound,
            "{text}: sd {} ns, expected {sd} (variance {got_variance} vs {variance} +- {variance_bound})",
            got_variance.sqrt()
        );
    }
}

#[test]
fn uniform_jitter_spreads_delays_evenly_around_the_delay() {
    // Uniform on 100 +- 20 us: sd 20/sqrt(3), fourth moment 9/5 sd^4.
    let sd = 20_000.0 / 3f64.sqrt();
    assert_delay_moments("delay 100us 20us", 100_000.0, sd, 1.8 * sd.powi(4));
    let delays = verdicts("delay 100us 20us", 5, 10_000);
    assert!(
        delays
            .iter()
            .all(|v| (80_000..=120_000).contains(&v.delay_ns))
    );
}

#[test]
fn normal_jitter_has_the_jitter_as_standard_deviation() {
    // Cut at +-4 sd: the variance of a normal cut at c is 1 - 2 c phi(c) / (2 Phi(c) - 1)
    // (2 Phi(4) - 1 = 1 - 6.3e-5); the fourth moment is 3 sd^4 less a smaller share.
    let c = NORMAL_CUT;
    let phi = (-c * c / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let cut_variance = 1.0 - 2.0 * c * phi / (1.0 - 6.334e-5);
    let sd = 20_000.0 * cut_variance.sqrt();
    assert_delay_moments(
        "delay 100us 20us distribution normal",
        100_000.0,
        sd,
        3.0 * 20_000f64.powi(4),
    );
}

#[test]
fn pareto_jitter_has_the_delay_as_mean_and_the_jitter_as_standard_deviation() {
    // Y = min(X, c) for X Pareto(1, 3), c where the cut is; raw moments of Y:
    // E[Y] = 3/2 - c^-2 / 2, E[Y^2] = 3 - 2/c, E[Y^3] = 1 + 3 ln c, E[Y^4] = 4c - 3.
    // The delay is 100us + 20us (Y - 3/2) / (sqrt(3)/2).
    let c = PARETO_MEAN + PARETO_CUT * PARETO_SD;
    let m1 = 1.5 - 0.5 / (c * c);
    let m2 = 3.0 - 2.0 / c;
    let m3 = 1.0 + 3.0 * c.ln();
    let m4 = 4.0 * c - 3.0;
    let variance = m2 - m1 * m1;
    let mu4 = m4 - 4.0 * m1 * m3 + 6.0 * m1 * m1 * m2 - 3.0 * m1.powi(4);
    let scale = 20_000.0 / PARETO_SD;
    assert_delay_moments(
        "delay 100us 20us distribution pareto",
        100_000.0 + scale * (m1 - PARETO_MEAN),
        scale * variance.sqrt(),
        scale.powi(4) * mu4,
    );
    // The cut is close enough to the tail that the mean and sd are nearly those asked for.
    assert!((scale * (m1 - PARETO_MEAN)).abs() < 200.0);
}

#[test]
fn reorder_sends_a_share_at_once_after_every_gap() {
    // gap 3: two frames are delayed, then each goes at once with 5%: cycles of 2 + G frames,
    // G geometric with mean 20, so 1 in 22 goes at once; the count's variance is a renewal
    // process's, n Var(G) / E[cycle]^3.
    let q: f64 = 0.05;
    let cycle = 2.0 + 1.0 / q;
    let rate = 1.0 / cycle;
    let variance_per_frame = ((1.0 - q) / (q * q)) / cycle.powi(3);
    for seed in SEEDS {
        let v = verdicts("delay 1ms reorder 5% gap 3", seed, N);
        let at_once = v.iter().filter(|v| v.reordered).count();
        assert_count_near(
            "reorder 5% gap 3",
            at_once,
            N,
            rate,
            variance_per_frame / (rate * (1.0 - rate)),
        );
        assert!(v.iter().all(|v| if v.reordered {
            v.delay_ns == 0
        } else {
            v.delay_ns == 1_000_000
        }));
        // Never two frames at once within a gap.
        let positions: Vec<usize> = (0..v.len()).filter(|&i| v[i].reordered).collect();
        assert!(positions.windows(2).all(|w| w[1] - w[0] >= 3));
    }
    // With 100%, exactly every gap-th frame goes at once.
    let v = verdicts("delay 1ms reorder 100% gap 5", 1, 20);
    let at_once: Vec<usize> = (0..20).filter(|&i| v[i].reordered).collect();
    assert_eq!(at_once, [4, 9, 14, 19]);
}

#[test]
fn the_same_seed_gives_the_same_verdicts_and_another_seed_others() {
    let text = "delay 100us 20us distribution normal loss gemodel 1% 10% reorder 5% gap 3 \
                duplicate 0.1% corrupt 0.01%";
    let first = verdicts(text, 42, 100_000);
    assert_eq!(first, verdicts(text, 42, 100_000));
    assert_ne!(first, verdicts(text, 43, 100_000));
    // Each class has its own stream from the same seed.
    let mut settings = *model(text, 42).settings();
    settings.seed = Some(42);
    let mut high = ClassModel::new(settings, 0);
    let mut normal = ClassModel::new(settings, 1);
    let high: Vec<Verdict> = (0..1000).map(|_| high.decide(100)).collect();
    let normal: Vec<Verdict> = (0..1000).map(|_| normal.decide(100)).collect();
    assert_ne!(high, normal);
}

#[test]
fn a_frame_lost_and_duplicated_goes_once_and_a_lost_one_is_not_delayed() {
    let v = verdicts("delay 1ms loss 50% duplicate 50%", 3, 10_000);
    for verdict in &v {
        match verdict.copies() {
            0 => assert_eq!((verdict.delay_ns, verdict.duplicate_delay_ns), (0, 0)),
            1 => assert_eq!(
                (verdict.delay_ns, verdict.duplicate_delay_ns),
                (1_000_000, 0)
            ),
            _ => assert_eq!(
                (verdict.delay_ns, verdict.duplicate_delay_ns),
                (1_000_000, 1_000_000)
            ),
        }
    }
    assert!(v.iter().any(|v| v.lost && v.duplicate && v.copies() == 1));
}
