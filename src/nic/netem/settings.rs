//! Impairment settings in tc-netem's vocabulary, parsed once into a typed value:
//!
//! ```text
//! [class high|normal|all | spare-high]
//!   ( off | show |
//!     [delay TIME [JITTER] [distribution uniform|normal|pareto]]
//!     [loss [random] P [CORR] | loss gemodel P [R [1-H [1-K]]]]
//!     [reorder P [CORR] [gap N]] [duplicate P [CORR]] [corrupt P [CORR]] [seed N] )
//! ```
//!
//! As tc: a percentage may be written with or without its `%` (`1` is 1%); a time without a
//! unit is in microseconds; the words come in any order. What differs from tc is said where
//! the value is defined. Every bad word gets its own [`NetemError`] naming it.

use std::fmt;
use std::str::FromStr;

use crate::classify::Class;

/// 100% in [`Chance`] units.
const ONE: u64 = 1 << 32;

/// The longest delay or jitter taken, as the link's latency.
pub const MAX_TIME_NS: u64 = 10_000_000_000;

/// A probability in units of 2^-32, as Linux's netem keeps them (so a draw is one compare
/// with a 32-bit random number), from 0 to 2^32 (always).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord)]
pub struct Chance(u64);

impl Chance {
    pub const ZERO: Chance = Chance(0);
    pub const ALWAYS: Chance = Chance(ONE);

    /// The chance of a fraction from 0 to 1.
    pub fn from_fraction(fraction: f64) -> Option<Chance> {
        (0.0..=1.0)
            .contains(&fraction)
            .then(|| Chance((fraction * ONE as f64).round() as u64))
    }

    pub fn fraction(self) -> f64 {
        self.0 as f64 / ONE as f64
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Whether a uniform 32-bit draw falls under the chance.
    #[inline]
    pub fn hit(self, draw: u32) -> bool {
        u64::from(draw) < self.0
    }

    /// 100% minus this chance.
    pub fn complement(self) -> Chance {
        Chance(ONE - self.0)
    }
}

impl fmt::Display for Chance {
    /// As a percentage with up to 8 decimals (finer than a unit of 2^-32 is as a percentage),
    /// trailing zeros dropped, so that parsing the text gives the same chance back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = format!("{:.8}", self.fraction() * 100.0);
        let text = text.trim_end_matches('0').trim_end_matches('.');
        write!(f, "{text}%")
    }
}

/// How a delay's jitter is spread around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Distribution {
    /// Uniform within delay ± jitter (tc's default).
    #[default]
    Uniform,
    /// Normal with the jitter as its standard deviation, cut at ±4 standard deviations.
    Normal,
    /// Pareto of shape 3 (as iproute2's table), shifted and scaled to the delay as mean and
    /// the jitter as standard deviation, cut at 8 standard deviations above the delay.
    Pareto,
}

impl Distribution {
    fn name(self) -> &'static str {
        match self {
            Distribution::Uniform => "uniform",
            Distribution::Normal => "normal",
            Distribution::Pareto => "pareto",
        }
    }
}

/// `delay TIME [JITTER] [distribution D]`. A delay never goes below zero: a jitter larger
/// than the delay cuts the distribution there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Delay {
    pub delay_ns: u64,
    pub jitter_ns: u64,
    pub distribution: Distribution,
}

impl Delay {
    /// The longest delay a frame can be given.
    pub fn max_ns(&self) -> u64 {
        let spread = match self.distribution {
            Distribution::Uniform => 1,
            Distribution::Normal => 4,
            Distribution::Pareto => 8,
        };
        self.delay_ns + spread * self.jitter_ns
    }
}

/// A chance with a correlation to the previous frame's outcome.
///
/// Unlike Linux's netem, whose correlation mixes the random numbers and so changes the rate
/// too (a known defect of it), a correlation here is the lag-one correlation of the outcomes
/// of a two-state Markov chain whose long-run rate is `chance`: after a hit the next frame
/// is hit with `chance + correlation * (1 - chance)`, after a miss with
/// `chance * (1 - correlation)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Correlated {
    pub chance: Chance,
    pub correlation: Chance,
}

/// `loss ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// `loss [random] P [CORR]`.
    Random(Correlated),
    /// `loss gemodel P [R [1-H [1-K]]]`: Gilbert-Elliott, as tc (and its defaults: R = 1 - P,
    /// 1-H = 100%, 1-K = 0%, which makes it Bernoulli with P).
    GilbertElliott {
        /// From the good state to the bad, per frame.
        p: Chance,
        /// From the bad state to the good, per frame.
        r: Chance,
        /// Loss in the bad state.
        one_minus_h: Chance,
        /// Loss in the good state.
        one_minus_k: Chance,
    },
}

impl Loss {
    /// The long-run loss rate.
    pub fn rate(&self) -> f64 {
        match *self {
            Loss::Random(correlated) => correlated.chance.fraction(),
            Loss::GilbertElliott {
                p,
                r,
                one_minus_h,
                one_minus_k,
            } => {
                let (p, r) = (p.fraction(), r.fraction());
                if p + r == 0.0 {
                    // Never leaves the good state it starts in.
                    return one_minus_k.fraction();
                }
                let bad = p / (p + r);
                bad * one_minus_h.fraction() + (1.0 - bad) * one_minus_k.fraction()
            }
        }
    }
}

/// `reorder P [CORR] [gap N]`: after `gap - 1` delayed frames, a frame is sent at once with
/// chance P, ahead of the frames still held for their delay (as netem).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reorder {
    pub chance: Correlated,
    pub gap: u32,
}

/// The impairments of one class of one port. `seed` is filled in by the NIC when the user
/// gave none, so that the run can be repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetemSettings {
    pub delay: Option<Delay>,
    pub loss: Option<Loss>,
    pub reorder: Option<Reorder>,
    pub duplicate: Option<Correlated>,
    pub corrupt: Option<Correlated>,
    pub seed: Option<u64>,
}

/// The classes a command is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClassScope {
    #[default]
    All,
    Only(Class),
}

impl ClassScope {
    pub fn includes(self, class: Class) -> bool {
        match self {
            ClassScope::All => true,
            ClassScope::Only(only) => only == class,
        }
    }
}

/// What a `netem` command asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetemAction {
    /// No options: show the current settings.
    Show,
    /// Remove the impairments.
    Off,
    /// Replace the impairments with these.
    Set(NetemSettings),
}

/// A parsed `netem` command: for which classes, and what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetemCommand {
    pub scope: ClassScope,
    pub action: NetemAction,
}

/// A `netem` command that cannot be taken, and the word at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetemError {
    #[error(
        "unknown word {0:?} (delay, distribution, loss, reorder, gap, duplicate, corrupt, seed, \
         class, spare-high, off, show)"
    )]
    UnknownWord(String),
    #[error("{after} needs {what}")]
    Missing {
        after: &'static str,
        what: &'static str,
    },
    #[error("{what} {value:?} is not a percentage from 0% to 100%")]
    Percent { what: &'static str, value: String },
    #[error("{what} {value:?} is not a time like 100us, 1.5ms or 2s (no unit: microseconds)")]
    Time { what: &'static str, value: String },
    #[error("{what} {value:?} is more than 10 s")]
    TimeTooLong { what: &'static str, value: String },
    #[error("gap {0:?} is not a whole number from 1 to 4294967295")]
    Gap(String),
    #[error("seed {0:?} is not a whole number from 0 to 18446744073709551615")]
    Seed(String),
    #[error("distribution {0:?} is not uniform, normal or pareto")]
    Distribution(String),
    #[error("class {0:?} is not high, normal or all")]
    Class(String),
    #[error("loss model {0:?} is not random or gemodel (the 4-state model is not supported)")]
    LossModel(String),
    #[error("{0} is given twice")]
    Twice(&'static str),
    #[error("{0} needs a delay: delay TIME ...")]
    NeedsDelay(&'static str),
    #[error("gap needs reorder: reorder P gap N")]
    GapWithoutReorder,
    #[error("distribution needs a jitter: delay TIME JITTER distribution NAME")]
    DistributionWithoutJitter,
    #[error("a delay correlation ({0:?}) is not supported: give delay TIME [JITTER] only")]
    DelayCorrelation(String),
    #[error("rate is not a netem setting here: the link's rate is `prism-vnic link PORT --rate`")]
    Rate,
    #[error("{0} takes no other settings")]
    Alone(&'static str),
}

/// The words that start a setting (or end the optional values of the one before).
const KEYWORDS: &[&str] = &[
    "delay",
    "distribution",
    "loss",
    "reorder",
    "gap",
    "duplicate",
    "corrupt",
    "seed",
    "class",
    "spare-high",
    "off",
    "show",
    "rate",
];

/// The words of a command: separated by spaces or commas (a `--netem` value on the command
/// line may use either).
pub fn words(text: &str) -> Vec<&str> {
    text.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|word| !word.is_empty())
        .collect()
}

/// Parses a percentage as tc does: a number of percent, with or without its `%`.
fn percent(what: &'static str, word: &str) -> Result<Chance, NetemError> {
    let number = word.strip_suffix('%').unwrap_or(word);
    number
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite())
        .and_then(|n| Chance::from_fraction(n / 100.0))
        .ok_or_else(|| NetemError::Percent {
            what,
            value: word.to_string(),
        })
}

/// Parses a time as tc does: a number with a unit (ns, us, ms, s, or tc's usec, msec, sec),
/// microseconds without one.
fn time(what: &'static str, word: &str) -> Result<u64, NetemError> {
    let split = word
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(word.len());
    let (number, unit) = word.split_at(split);
    let scale = match unit {
        "ns" | "nsec" => 1.0,
        "" | "us" | "usec" => 1e3,
        "ms" | "msec" => 1e6,
        "s" | "sec" | "secs" => 1e9,
        _ => f64::NAN,
    };
    let bad = || NetemError::Time {
        what,
        value: word.to_string(),
    };
    let number: f64 = number.parse().map_err(|_| bad())?;
    let ns = number * scale;
    if !ns.is_finite() || ns < 0.0 {
        return Err(bad());
    }
    if ns > MAX_TIME_NS as f64 {
        return Err(NetemError::TimeTooLong {
            what,
            value: word.to_string(),
        });
    }
    Ok(ns.round() as u64)
}

/// A cursor over the words of a command.
struct Words<'a> {
    words: &'a [&'a str],
    at: usize,
}

impl<'a> Words<'a> {
    fn next(&mut self) -> Option<&'a str> {
        let word = self.words.get(self.at).copied();
        self.at += usize::from(word.is_some());
        word
    }

    /// The next word, which `after` requires.
    fn required(&mut self, after: &'static str, what: &'static str) -> Result<&'a str, NetemError> {
        match self.words.get(self.at) {
            Some(word) if !KEYWORDS.contains(word) => {
                self.at += 1;
                Ok(word)
            }
            _ => Err(NetemError::Missing { after, what }),
        }
    }

    /// The next word if it is a value (not a keyword).
    fn optional(&mut self) -> Option<&'a str> {
        match self.words.get(self.at) {
            Some(word) if !KEYWORDS.contains(word) => {
                self.at += 1;
                Some(word)
            }
            _ => None,
        }
    }
}

/// `P [CORR]` after `what`.
fn correlated(words: &mut Words<'_>, what: &'static str) -> Result<Correlated, NetemError> {
    let chance = percent(what, words.required(what, "a percentage")?)?;
    let correlation = match words.optional() {
        Some(word) => percent("correlation", word)?,
        None => Chance::ZERO,
    };
    Ok(Correlated {
        chance,
        correlation,
    })
}

fn loss(words: &mut Words<'_>) -> Result<Loss, NetemError> {
    let first = words.required("loss", "a percentage, random P or gemodel P")?;
    match first {
        "random" => Ok(Loss::Random(correlated(words, "loss random")?)),
        "gemodel" => {
            let p = percent("gemodel p", words.required("gemodel", "p")?)?;
            let mut optional = |what| words.optional().map(|w| percent(what, w)).transpose();
            let r = optional("gemodel r")?.unwrap_or(p.complement());
            let one_minus_h = optional("gemodel 1-h")?.unwrap_or(Chance::ALWAYS);
            let one_minus_k = optional("gemodel 1-k")?.unwrap_or(Chance::ZERO);
            Ok(Loss::GilbertElliott {
                p,
                r,
                one_minus_h,
                one_minus_k,
            })
        }
        word if word.starts_with(|c: char| c.is_ascii_digit() || ".-+".contains(c)) => {
            // `loss P [CORR]`: random is tc's default model.
            words.at -= 1;
            Ok(Loss::Random(correlated(words, "loss")?))
        }
        other => Err(NetemError::LossModel(other.to_string())),
    }
}

/// Sets `slot` once; a second time is an error naming `what`.
fn once<T>(slot: &mut Option<T>, what: &'static str, value: T) -> Result<(), NetemError> {
    if slot.is_some() {
        return Err(NetemError::Twice(what));
    }
    *slot = Some(value);
    Ok(())
}

/// Parses the words of a `netem` command (see the module's grammar).
pub fn parse_command(words: &[&str]) -> Result<NetemCommand, NetemError> {
    let mut cursor = Words { words, at: 0 };
    let mut scope: Option<ClassScope> = None;
    let mut settings = NetemSettings::default();
    let mut lone: Option<NetemAction> = None;
    let mut any_setting = false;
    let mut distribution: Option<Distribution> = None;
    let mut gap: Option<u32> = None;
    while let Some(word) = cursor.next() {
        if !matches!(word, "class" | "spare-high" | "off" | "show") {
            any_setting = true;
        }
        match word {
            "class" => {
                let name = cursor.required("class", "high, normal or all")?;
                let value = match name {
                    "all" => ClassScope::All,
                    name => ClassScope::Only(
                        name.parse()
                            .map_err(|_| NetemError::Class(name.to_string()))?,
                    ),
                };
                once(&mut scope, "class", value)?;
            }
            "spare-high" => once(&mut scope, "class", ClassScope::Only(Class::Normal))?,
            "off" => once(&mut lone, "off", NetemAction::Off)?,
            "show" => once(&mut lone, "show", NetemAction::Show)?,
            "delay" => {
                let delay_ns = time("delay", cursor.required("delay", "a time")?)?;
                let jitter_ns = match cursor.optional() {
                    Some(word) => time("jitter", word)?,
                    None => 0,
                };
                if let Some(word) = cursor.optional() {
                    return Err(NetemError::DelayCorrelation(word.to_string()));
                }
                let delay = Delay {
                    delay_ns,
                    jitter_ns,
                    distribution: Distribution::Uniform,
                };
                once(&mut settings.delay, "delay", delay)?;
            }
            "distribution" => {
                let name = cursor.required("distribution", "uniform, normal or pareto")?;
                let value = match name {
                    "uniform" => Distribution::Uniform,
                    "normal" => Distribution::Normal,
                    "pareto" => Distribution::Pareto,
                    other => return Err(NetemError::Distribution(other.to_string())),
                };
                once(&mut distribution, "distribution", value)?;
            }
            "loss" => {
                let value = loss(&mut cursor)?;
                once(&mut settings.loss, "loss", value)?;
            }
            "reorder" => {
                let value = correlated(&mut cursor, "reorder")?;
                let reorder = Reorder {
                    chance: value,
                    gap: 1,
                };
                once(&mut settings.reorder, "reorder", reorder)?;
            }
            "gap" => {
                let word = cursor.required("gap", "a number of frames")?;
                let value = word
                    .parse::<u32>()
                    .ok()
                    .filter(|gap| *gap >= 1)
                    .ok_or_else(|| NetemError::Gap(word.to_string()))?;
                once(&mut gap, "gap", value)?;
            }
            "duplicate" => {
                let value = correlated(&mut cursor, "duplicate")?;
                once(&mut settings.duplicate, "duplicate", value)?;
            }
            "corrupt" => {
                let value = correlated(&mut cursor, "corrupt")?;
                once(&mut settings.corrupt, "corrupt", value)?;
            }
            "seed" => {
                let word = cursor.required("seed", "a number")?;
                let value = word
                    .parse::<u64>()
                    .map_err(|_| NetemError::Seed(word.to_string()))?;
                once(&mut settings.seed, "seed", value)?;
            }
            "rate" => return Err(NetemError::Rate),
            other => return Err(NetemError::UnknownWord(other.to_string())),
        }
    }
    if let Some(distribution) = distribution {
        match &mut settings.delay {
            None => return Err(NetemError::NeedsDelay("distribution")),
            Some(delay) if delay.jitter_ns == 0 => {
                return Err(NetemError::DistributionWithoutJitter);
            }
            Some(delay) => delay.distribution = distribution,
        }
    }
    if let Some(gap) = gap {
        match &mut settings.reorder {
            Some(reorder) => reorder.gap = gap,
            None => return Err(NetemError::GapWithoutReorder),
        }
    }
    if settings.reorder.is_some() && settings.delay.is_none() {
        // As tc: with nothing held back, there is nothing to send a frame ahead of.
        return Err(NetemError::NeedsDelay("reorder"));
    }
    let action = match lone {
        Some(NetemAction::Off) if any_setting => return Err(NetemError::Alone("off")),
        Some(NetemAction::Show) if any_setting => return Err(NetemError::Alone("show")),
        Some(action) => action,
        None if any_setting => NetemAction::Set(settings),
        None => NetemAction::Show,
    };
    Ok(NetemCommand {
        scope: scope.unwrap_or_default(),
        action,
    })
}

impl FromStr for NetemCommand {
    type Err = NetemError;

    fn from_str(text: &str) -> Result<Self, NetemError> {
        parse_command(&words(text))
    }
}

/// Formats a time in the largest unit that keeps it whole.
fn format_time(f: &mut fmt::Formatter<'_>, ns: u64) -> fmt::Result {
    match ns {
        0 => write!(f, "0us"),
        ns if ns % 1_000_000_000 == 0 => write!(f, "{}s", ns / 1_000_000_000),
        ns if ns % 1_000_000 == 0 => write!(f, "{}ms", ns / 1_000_000),
        ns if ns % 1_000 == 0 => write!(f, "{}us", ns / 1_000),
        ns => write!(f, "{ns}ns"),
    }
}

fn format_correlated(f: &mut fmt::Formatter<'_>, value: &Correlated) -> fmt::Result {
    write!(f, "{}", value.chance)?;
    if !value.correlation.is_zero() {
        write!(f, " {}", value.correlation)?;
    }
    Ok(())
}

impl fmt::Display for NetemSettings {
    /// In tc's vocabulary, every value spelled out: parsing the text gives the settings back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut separator = "";
        let mut word = |f: &mut fmt::Formatter<'_>, word: &str| {
            let result = write!(f, "{separator}{word} ");
            separator = " ";
            result
        };
        if let Some(delay) = &self.delay {
            word(f, "delay")?;
            format_time(f, delay.delay_ns)?;
            if delay.jitter_ns > 0 {
                write!(f, " ")?;
                format_time(f, delay.jitter_ns)?;
                write!(f, " distribution {}", delay.distribution.name())?;
            }
        }
        match &self.loss {
            Some(Loss::Random(value)) => {
                word(f, "loss random")?;
                format_correlated(f, value)?;
            }
            Some(Loss::GilbertElliott {
                p,
                r,
                one_minus_h,
                one_minus_k,
            }) => {
                word(f, "loss gemodel")?;
                write!(f, "{p} {r} {one_minus_h} {one_minus_k}")?;
            }
            None => {}
        }
        if let Some(reorder) = &self.reorder {
            word(f, "reorder")?;
            format_correlated(f, &reorder.chance)?;
            write!(f, " gap {}", reorder.gap)?;
        }
        if let Some(duplicate) = &self.duplicate {
            word(f, "duplicate")?;
            format_correlated(f, duplicate)?;
        }
        if let Some(corrupt) = &self.corrupt {
            word(f, "corrupt")?;
            format_correlated(f, corrupt)?;
        }
        if let Some(seed) = self.seed {
            word(f, "seed")?;
            write!(f, "{seed}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NetemCommand, NetemError> {
        text.parse()
    }

    fn settings(text: &str) -> NetemSettings {
        match parse(text).expect(text).action {
            NetemAction::Set(settings) => settings,
            other => panic!("{text}: {other:?}"),
        }
    }

    fn pct(percent: f64) -> Chance {
        Chance::from_fraction(percent / 100.0).unwrap()
    }

    #[test]
    fn the_issues_example_parses_into_every_setting() {
        let command = parse(
            "delay 100us 20us distribution normal loss gemodel 1% 10% reorder 5% gap 3 \
             duplicate 0.1% corrupt 0.01% seed 42",
        )
        .unwrap();
        assert_eq!(command.scope, ClassScope::All);
        let NetemAction::Set(s) = command.action else {
            panic!("{command:?}")
        };
        assert_eq!(
            s.delay,
            Some(Delay {
                delay_ns: 100_000,
                jitter_ns: 20_000,
                distribution: Distribution::Normal
            })
        );
        assert_eq!(
            s.loss,
            Some(Loss::GilbertElliott {
                p: pct(1.0),
                r: pct(10.0),
                one_minus_h: Chance::ALWAYS,
                one_minus_k: Chance::ZERO
            })
        );
        assert_eq!(
            s.reorder,
            Some(Reorder {
                chance: Correlated {
                    chance: pct(5.0),
                    correlation: Chance::ZERO
                },
                gap: 3
            })
        );
        assert_eq!(s.duplicate.unwrap().chance, pct(0.1));
        assert_eq!(s.corrupt.unwrap().chance, pct(0.01));
        assert_eq!(s.seed, Some(42));
    }

    #[test]
    fn percentages_and_times_read_as_tc_reads_them() {
        // A percentage without its sign is still percent; a time without a unit is in us.
        assert_eq!(settings("loss 1").loss, settings("loss random 1%").loss);
        assert_eq!(settings("delay 250").delay.unwrap().delay_ns, 250_000);
        for (word, ns) in [
            ("7ns", 7),
            ("1.5ms", 1_500_000),
            ("2s", 2_000_000_000),
            ("3usec", 3_000),
            ("4msec", 4_000_000),
            ("1sec", 1_000_000_000),
        ] {
            assert_eq!(
                settings(&format!("delay {word}")).delay.unwrap().delay_ns,
                ns,
                "{word}"
            );
        }
        let loss = settings("loss random 2% 25%").loss.unwrap();
        assert_eq!(
            loss,
            Loss::Random(Correlated {
                chance: pct(2.0),
                correlation: pct(25.0)
            })
        );
    }

    #[test]
    fn gemodel_takes_tcs_defaults_for_what_is_left_out() {
        assert_eq!(
            settings("loss gemodel 3%").loss,
            Some(Loss::GilbertElliott {
                p: pct(3.0),
                r: pct(97.0),
                one_minus_h: Chance::ALWAYS,
                one_minus_k: Chance::ZERO
            })
        );
        assert_eq!(
            settings("loss gemodel 1% 10% 70% 0.1%").loss,
            Some(Loss::GilbertElliott {
                p: pct(1.0),
                r: pct(10.0),
                one_minus_h: pct(70.0),
                one_minus_k: pct(0.1)
            })
        );
    }

    #[test]
    fn the_stationary_loss_rate_of_gilbert_elliott_is_its_bad_share_times_its_bad_loss() {
        let rate = settings("loss gemodel 1% 10%").loss.unwrap().rate();
        assert!((rate - 0.01 / 0.11).abs() < 1e-9, "{rate}");
        let rate = settings("loss gemodel 1% 9% 50% 1%").loss.unwrap().rate();
        assert!((rate - (0.1 * 0.5 + 0.9 * 0.01)).abs() < 1e-9, "{rate}");
        // Bernoulli with P when only P is given.
        let rate = settings("loss gemodel 3%").loss.unwrap().rate();
        assert!((rate - 0.03).abs() < 1e-9, "{rate}");
    }

    #[test]
    fn class_scope_off_and_show_are_read() {
        assert_eq!(
            parse("class high delay 1ms").unwrap().scope,
            ClassScope::Only(Class::High)
        );
        assert_eq!(
            parse("loss 1% spare-high").unwrap().scope,
            ClassScope::Only(Class::Normal)
        );
        assert_eq!(parse("off").unwrap().action, NetemAction::Off);
        assert_eq!(
            parse("class normal off").unwrap(),
            NetemCommand {
                scope: ClassScope::Only(Class::Normal),
                action: NetemAction::Off
            }
        );
        assert_eq!(parse("").unwrap().action, NetemAction::Show);
        assert_eq!(parse("show").unwrap().action, NetemAction::Show);
        // Commas separate words as spaces do (a --netem value on the command line).
        assert_eq!(settings("delay,1ms,loss,1%"), settings("delay 1ms loss 1%"));
    }

    #[test]
    fn every_bad_word_gets_its_own_error_naming_it() {
        let cases: &[(&str, NetemError)] = &[
            (
                "delay",
                NetemError::Missing {
                    after: "delay",
                    what: "a time",
                },
            ),
            (
                "delay 1ms loss",
                NetemError::Missing {
                    after: "loss",
                    what: "a percentage, random P or gemodel P",
                },
            ),
            (
                "loss 101%",
                NetemError::Percent {
                    what: "loss",
                    value: "101%".into(),
                },
            ),
            (
                "loss -1%",
                NetemError::Percent {
                    what: "loss",
                    value: "-1%".into(),
                },
            ),
            ("loss NaN", NetemError::LossModel("NaN".into())),
            (
                "loss random nan",
                NetemError::Percent {
                    what: "loss random",
                    value: "nan".into(),
                },
            ),
            (
                "duplicate 1% abc",
                NetemError::Percent {
                    what: "correlation",
                    value: "abc".into(),
                },
            ),
            (
                "delay 10parsecs",
                NetemError::Time {
                    what: "delay",
                    value: "10parsecs".into(),
                },
            ),
            (
                "delay 11s",
                NetemError::TimeTooLong {
                    what: "delay",
                    value: "11s".into(),
                },
            ),
            (
                "delay 1ms -2us",
                NetemError::Time {
                    what: "jitter",
                    value: "-2us".into(),
                },
            ),
            (
                "delay 1ms 1us 25%",
                NetemError::DelayCorrelation("25%".into()),
            ),
            ("delay 1ms reorder 1% gap 0", NetemError::Gap("0".into())),
            ("seed -4", NetemError::Seed("-4".into())),
            ("seed 1 seed 2", NetemError::Twice("seed")),
            (
                "delay 1ms 1us distribution zipf",
                NetemError::Distribution("zipf".into()),
            ),
            ("class urgent", NetemError::Class("urgent".into())),
            ("loss state 1% 2%", NetemError::LossModel("state".into())),
            ("reorder 5%", NetemError::NeedsDelay("reorder")),
            (
                "distribution normal",
                NetemError::NeedsDelay("distribution"),
            ),
            (
                "delay 1ms distribution normal",
                NetemError::DistributionWithoutJitter,
            ),
            ("delay 1ms gap 3", NetemError::GapWithoutReorder),
            ("rate 1gbit", NetemError::Rate),
            ("off loss 1%", NetemError::Alone("off")),
            ("show delay 1ms", NetemError::Alone("show")),
            ("slot 1ms", NetemError::UnknownWord("slot".into())),
            ("class high spare-high", NetemError::Twice("class")),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text).as_ref(), Err(expected), "{text}");
            // Every message names the word at fault or what is missing.
            assert!(!expected.to_string().is_empty());
        }
    }

    #[test]
    fn settings_print_as_words_that_parse_back_to_them() {
        for text in [
            "delay 100us 20us distribution normal loss gemodel 1% 10% reorder 5% gap 3 \
             duplicate 0.1% corrupt 0.01% seed 42",
            "delay 1.5ms 300us distribution pareto loss random 0.3% 25% seed 7",
            "delay 7ns",
            "delay 2s 1ms reorder 50% 10% gap 1 corrupt 0.00001%",
            "loss 33.333333%",
            "duplicate 100%",
        ] {
            let first = settings(text);
            let printed = first.to_string();
            assert_eq!(settings(&printed), first, "{text} -> {printed}");
        }
        assert_eq!(
            settings("loss 1% delay 1ms seed 3").to_string(),
            "delay 1ms loss random 1% seed 3"
        );
    }
}
