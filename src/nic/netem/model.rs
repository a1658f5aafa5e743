//! The impairment model of one class of one port: given its settings and a seeded random
//! stream, what happens to each frame, frame by frame.
//!
//! The random numbers come from PCG (rand_pcg's `Lcg128Xsl64`, seeded with the settings'
//! seed, one stream per class) and the delay distributions from rand_distr, so the same
//! seed and the same sequence of frames give the same verdicts. The draws per frame follow
//! netem's order: duplication, loss, corruption, then reordering or delay.

use rand::{Rng, RngExt, SeedableRng};
use rand_distr::{Distribution as _, Pareto, StandardNormal};
use rand_pcg::Lcg128Xsl64;

use super::settings::{Chance, Correlated, Delay, Distribution, Loss, NetemSettings, Reorder};

/// The Pareto shape of iproute2's table.
const PARETO_SHAPE: f64 = 3.0;
/// Mean and standard deviation of Pareto(scale 1, shape 3): 3/2 and sqrt(3)/2.
const PARETO_MEAN: f64 = 1.5;
const PARETO_SD: f64 = 0.866_025_403_784_438_6;
/// Where the normal distribution is cut, in standard deviations (about where tc's table
/// ends).
const NORMAL_CUT: f64 = 4.0;
/// Where the Pareto distribution is cut above its mean, in standard deviations: its tail has
/// no fourth moment, so without a cut no sample's spread would settle (and the buffer for
/// the longest delay would be unbounded).
const PARETO_CUT: f64 = 8.0;

/// What happens to one frame. As in netem, duplication and loss add up: a frame both lost
/// and duplicated goes once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Verdict {
    /// One copy fewer.
    pub lost: bool,
    /// One copy more; the second copy has its own delay and is never corrupted.
    pub duplicate: bool,
    /// Byte and bit of the first copy flipped.
    pub corrupt: Option<(usize, u8)>,
    /// Sent at once, ahead of the frames still held for their delay.
    pub reordered: bool,
    /// How long the frame is held (0: sent at once).
    pub delay_ns: u64,
    /// How long the second copy is held.
    pub duplicate_delay_ns: u64,
}

impl Verdict {
    /// How many copies of the frame go on: 0, 1 or 2.
    pub fn copies(&self) -> usize {
        1 + usize::from(self.duplicate) - usize::from(self.lost)
    }
}

/// A Bernoulli draw correlated with the one before (see [`Correlated`]).
#[derive(Debug, Clone)]
struct Markov {
    after_hit: Chance,
    after_miss: Chance,
    last: bool,
}

impl Markov {
    fn new(value: Correlated) -> Self {
        let (p, rho) = (value.chance.fraction(), value.correlation.fraction());
        let (after_hit, after_miss) = if value.correlation.is_zero() {
            (value.chance, value.chance)
        } else {
            let chance = |f: f64| Chance::from_fraction(f.clamp(0.0, 1.0)).unwrap_or_default();
            (chance(p + rho * (1.0 - p)), chance(p * (1.0 - rho)))
        };
        Markov {
            after_hit,
            after_miss,
            last: false,
        }
    }

    fn draw(&mut self, rng: &mut Lcg128Xsl64) -> bool {
        let chance = if self.last {
            self.after_hit
        } else {
            self.after_miss
        };
        self.last = chance.hit(rng.next_u32());
        self.last
    }
}

/// The loss process.
#[derive(Debug, Clone)]
enum LossState {
    Random(Markov),
    /// Gilbert-Elliott, stepped as Linux's `loss_gilb_ell`: the state moves, then the frame
    /// is lost with the chance of the state it was in.
    GilbertElliott {
        p: Chance,
        r: Chance,
        one_minus_h: Chance,
        one_minus_k: Chance,
        bad: bool,
    },
}

impl LossState {
    fn new(loss: Loss) -> Self {
        match loss {
            Loss::Random(value) => LossState::Random(Markov::new(value)),
            Loss::GilbertElliott {
                p,
                r,
                one_minus_h,
                one_minus_k,
            } => LossState::GilbertElliott {
                p,
                r,
                one_minus_h,
                one_minus_k,
                bad: false,
            },
        }
    }

    fn draw(&mut self, rng: &mut Lcg128Xsl64) -> bool {
        match self {
            LossState::Random(markov) => markov.draw(rng),
            LossState::GilbertElliott {
                p,
                r,
                one_minus_h,
                one_minus_k,
                bad,
            } => {
                let was_bad = *bad;
                let (leave, lose) = if was_bad {
                    (*r, *one_minus_h)
                } else {
                    (*p, *one_minus_k)
                };
                if leave.hit(rng.next_u32()) {
                    *bad = !was_bad;
                }
                lose.hit(rng.next_u32())
            }
        }
    }
}

/// Draws a delay from the settings' distribution.
#[derive(Debug, Clone)]
struct DelaySampler {
    delay: Delay,
    pareto: Pareto<f64>,
}

impl DelaySampler {
    fn new(delay: Delay) -> Self {
        DelaySampler {
            delay,
            // Scale 1 and shape 3 are positive: the constructor cannot refuse them.
            pareto: Pareto::new(1.0, PARETO_SHAPE).unwrap_or_else(|_| unreachable!()),
        }
    }

    /// The jitter's offset in units of the jitter, from the distribution.
    fn standard(&self, rng: &mut Lcg128Xsl64) -> f64 {
        match self.delay.distribution {
            Distribution::Uniform => rng.random::<f64>() * 2.0 - 1.0,
            Distribution::Normal => {
                let z: f64 = rng.sample(StandardNormal);
                z.clamp(-NORMAL_CUT, NORMAL_CUT)
            }
            Distribution::Pareto => {
                let x = self.pareto.sample(rng);
                ((x - PARETO_MEAN) / PARETO_SD).min(PARETO_CUT)
            }
        }
    }

    fn draw(&self, rng: &mut Lcg128Xsl64) -> u64 {
        if self.delay.jitter_ns == 0 {
            return self.delay.delay_ns;
        }
        let offset = self.standard(rng) * self.delay.jitter_ns as f64;
        (self.delay.delay_ns as f64 + offset).round().max(0.0) as u64
    }
}

/// The impairments of one class, with their state.
#[derive(Debug, Clone)]
pub struct ClassModel {
    settings: NetemSettings,
    rng: Lcg128Xsl64,
    loss: Option<LossState>,
    duplicate: Option<Markov>,
    corrupt: Option<Markov>,
    reorder: Option<(Markov, u32)>,
    /// Frames delayed since the last one sent at once (netem's `counter`).
    since_reorder: u32,
    delay: Option<DelaySampler>,
}

impl ClassModel {
    /// A model for `settings`, whose seed must be set; `stream` tells the classes apart, so
    /// each class has its own sequence whatever the other class's frames do.
    pub fn new(settings: NetemSettings, stream: u64) -> Self {
        let seed = settings.seed.unwrap_or_default();
        // The seed spread over PCG's 128-bit state by rand_core's own seeding.
        let mut seeder = Lcg128Xsl64::seed_from_u64(seed);
        let state = (u128::from(seeder.next_u64()) << 64) | u128::from(seeder.next_u64());
        ClassModel {
            settings,
            rng: Lcg128Xsl64::new(state, u128::from(stream)),
            loss: settings.loss.map(LossState::new),
            duplicate: settings.duplicate.map(Markov::new),
            corrupt: settings.corrupt.map(Markov::new),
            reorder: settings
                .reorder
                .map(|Reorder { chance, gap }| (Markov::new(chance), gap)),
            since_reorder: 0,
            delay: settings.delay.map(DelaySampler::new),
        }
    }

    pub fn settings(&self) -> &NetemSettings {
        &self.settings
    }

    /// The verdict on the next frame, of `len` bytes.
    pub fn decide(&mut self, len: usize) -> Verdict {
        let rng = &mut self.rng;
        let mut verdict = Verdict {
            duplicate: self.duplicate.as_mut().is_some_and(|d| d.draw(rng)),
            lost: self.loss.as_mut().is_some_and(|l| l.draw(rng)),
            ..Verdict::default()
        };
        let copies = verdict.copies();
        if copies > 0 && len > 0 && self.corrupt.as_mut().is_some_and(|c| c.draw(rng)) {
            verdict.corrupt = Some((rng.random_range(0..len), rng.random_range(0..8u8)));
        }
        if let Some(delay) = &self.delay {
            if copies > 0 {
                // netem: a frame goes at once only after gap - 1 delayed ones, and then with
                // the reorder chance.
                let at_once = self.reorder.as_mut().is_some_and(|(chance, gap)| {
                    self.since_reorder + 1 >= *gap && chance.draw(rng)
                });
                if at_once {
                    self.since_reorder = 0;
                    verdict.reordered = true;
                } else {
                    self.since_reorder = self.since_reorder.saturating_add(1);
                    verdict.delay_ns = delay.draw(rng);
                }
            }
            if copies > 1 {
                verdict.duplicate_delay_ns = delay.draw(rng);
            }
        }
        verdict
    }

    /// The longest a frame is held.
    pub fn max_delay_ns(&self) -> u64 {
        self.settings.delay.map_or(0, |delay| delay.max_ns())
    }
}

#[cfg(test)]
mod tests;
