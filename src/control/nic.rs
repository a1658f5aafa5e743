//! Control requests that change a port's NIC at run time: flow rules (ethtool -N), link rate
//! and latency, interrupt moderation (ethtool -C), priority weight, residence histograms,
//! packet capture and impairments (tc-netem). Each takes effect for the next frame; none stops the data path.

use std::path::{Path, PathBuf};

use super::paths::{self, PathError};
use super::protocol::{
    CaptureAnswer, ClassDelays, CoalesceAnswer, Counters, LinkAnswer, NetemAnswer, NetemClassStats,
    NetemStats, PriorityWeightAnswer, Reply, Request, RuleEntry, RulesAnswer,
};
use crate::classify::rules::{Rule, RuleSet, RuleSyntaxError, RulesError};
use crate::classify::{Class, ClassifierError, UnknownClass};
use crate::cli::{ValueError, parse_coalesce, parse_rate};
use crate::nic::capture::{Capture, CaptureError};
use crate::nic::link::{Link, LinkSettings};
use crate::nic::netem::{NetemAction, NetemCommand, NetemError};
use crate::switch::fabric::{Fabric, FabricPort, PortKind};

/// Longest latency or class delay a link takes, in microseconds.
const MAX_DELAY_US: u64 = 10_000_000;

/// Why a NIC request was refused; the refusal's text is this error's.
#[derive(Debug, thiserror::Error)]
pub enum NicRequestError {
    #[error("not a NIC request")]
    NotNicRequest,
    #[error("there is no port {0:?}")]
    NoPort(String),
    #[error("port {0:?} is a discard port: the switch drops its frames before any NIC")]
    DiscardPort(String),
    #[error("rule {rule:?}: {source}")]
    RuleSyntax {
        rule: String,
        source: RuleSyntaxError,
    },
    #[error("loc {0} is taken; delete it first")]
    LocationTaken(u32),
    #[error("no rule at loc {0}")]
    NoRuleAt(u32),
    #[error(transparent)]
    Rules(#[from] RulesError),
    #[error(transparent)]
    Classifier(#[from] ClassifierError),
    #[error(transparent)]
    Class(#[from] UnknownClass),
    #[error("{what} {us} us is more than 10 s")]
    TooLong { what: &'static str, us: u64 },
    #[error("--class needs --delay-us")]
    ClassWithoutDelay,
    #[error("--delay-us needs --class high|normal")]
    DelayWithoutClass,
    #[error(transparent)]
    Value(#[from] ValueError),
    #[error("port {port} has queues 0 to {last}, not {queue}")]
    NoQueue {
        port: String,
        last: usize,
        queue: usize,
    },
    #[error("netem {port}: {source}")]
    Netem { port: String, source: NetemError },
    #[error("port {port} has {queues} queues")]
    CaptureQueue { port: String, queues: usize },
    #[error(transparent)]
    CapturePath(#[from] PathError),
    #[error(transparent)]
    Capture(#[from] CaptureError),
}

fn find<'a>(fabric: &'a Fabric, name: &str) -> Result<&'a FabricPort, NicRequestError> {
    fabric
        .ports
        .iter()
        .find(|port| port.name == name)
        .ok_or_else(|| NicRequestError::NoPort(name.to_string()))
}

/// The port whose NIC a request configures: any but a discard port, whose frames never
/// reach its NIC (the switch drops them), so rules, links, moderation and captures there
/// would take effect on nothing.
fn find_nic<'a>(fabric: &'a Fabric, name: &str) -> Result<&'a FabricPort, NicRequestError> {
    let port = find(fabric, name)?;
    if matches!(port.kind, PortKind::Discard) {
        return Err(NicRequestError::DiscardPort(name.to_string()));
    }
    Ok(port)
}

fn rules_answer(port: &FabricPort) -> RulesAnswer {
    let classifier = port.nic.rules();
    let rules = classifier.rules();
    // `hits` walks the rules in location order, as `rules` does.
    let list = rules
        .rules()
        .iter()
        .zip(rules.hits())
        .map(|(rule, (_, hits))| RuleEntry {
            loc: rule.location,
            rule: rule.to_string(),
            hits,
        })
        .collect();
    RulesAnswer {
        port: port.name.clone(),
        rules: list,
    }
}

fn link_answer(port: &FabricPort) -> LinkAnswer {
    let link = port.nic.link.settings();
    LinkAnswer {
        port: port.name.clone(),
        rate_bps: link.rate_bps,
        latency_ns: link.latency_ns,
        class_delay_ns: class_delays(&port.nic.link),
    }
}

/// Each class's extra delay, for the link's answer here and in the stats.
pub fn class_delays(link: &Link) -> ClassDelays {
    ClassDelays {
        high: link.class_delay_ns(Class::High),
        normal: link.class_delay_ns(Class::Normal),
    }
}

/// A port's impairments, per class (settings in tc-netem's words, or none, and counters),
/// and its delay buffer; for the netem answer here and in the stats.
pub fn netem_stats(port: &FabricPort) -> NetemStats {
    let nic = &port.nic;
    let class = |class: Class| NetemClassStats {
        settings: nic
            .netem
            .settings(class)
            .map(|settings| settings.to_string()),
        counters: Counters::of(&nic.netem.counters(class).snapshot()),
    };
    let (held_bytes, budget_bytes) = nic.netem.held_bytes(nic.link.settings().rate_bps);
    NetemStats {
        high: class(Class::High),
        normal: class(Class::Normal),
        held_now: nic.netem.held(),
        held_bytes,
        budget_bytes,
    }
}

/// Checks a latency or delay given in microseconds; in nanoseconds.
fn bounded_us(what: &'static str, us: u64) -> Result<u64, NicRequestError> {
    if us > MAX_DELAY_US {
        return Err(NicRequestError::TooLong { what, us });
    }
    Ok(us * 1000)
}

/// Answers one NIC request.
pub fn answer(fabric: &Fabric, capture_dir: &Path, request: Request) -> Reply {
    match answer_nic(fabric, capture_dir, request) {
        Ok(reply) => reply,
        Err(error) => Reply::refused(error),
    }
}

fn answer_nic(
    fabric: &Fabric,
    capture_dir: &Path,
    request: Request,
) -> Result<Reply, NicRequestError> {
    match request {
        Request::Stats | Request::Macs => Err(NicRequestError::NotNicRequest),
        Request::Rules { port } => Ok(Reply::answer(rules_answer(find_nic(fabric, &port)?))),
        Request::RuleAdd { port, rule } => {
            let port = find_nic(fabric, &port)?;
            let rule: Rule = rule
                .parse()
                .map_err(|source| NicRequestError::RuleSyntax { rule, source })?;
            let current = port.nic.rules();
            if current
                .rules()
                .rules()
                .iter()
                .any(|r| r.location == rule.location)
            {
                return Err(NicRequestError::LocationTaken(rule.location));
            }
            let mut rules = current.rules().rules().to_vec();
            rules.push(rule);
            port.nic.set_rules(RuleSet::new(rules)?)?;
            Ok(Reply::answer(rules_answer(port)))
        }
        Request::RuleDel { port, loc } => {
            let port = find_nic(fabric, &port)?;
            let current = port.nic.rules();
            let rules: Vec<Rule> = current
                .rules()
                .rules()
                .iter()
                .filter(|rule| rule.location != loc)
                .copied()
                .collect();
            if rules.len() == current.rules().len() {
                return Err(NicRequestError::NoRuleAt(loc));
            }
            port.nic.set_rules(RuleSet::new(rules)?)?;
            Ok(Reply::answer(rules_answer(port)))
        }
        Request::Link {
            port,
            rate,
            latency_us,
            delay_us,
            class,
        } => {
            let port = find_nic(fabric, &port)?;
            // Everything is checked before anything changes.
            let class_delay = match (class, delay_us) {
                (Some(class), Some(us)) => {
                    Some((class.parse::<Class>()?, bounded_us("delay", us)?))
                }
                (None, None) => None,
                (Some(_), None) => return Err(NicRequestError::ClassWithoutDelay),
                (None, Some(_)) => return Err(NicRequestError::DelayWithoutClass),
            };
            let mut settings = port.nic.link.settings();
            if let Some(rate) = rate {
                settings.rate_bps = parse_rate(&rate)?;
            }
            if let Some(latency_us) = latency_us {
                settings.latency_ns = bounded_us("latency", latency_us)?;
            }
            port.nic.set_link(LinkSettings { ..settings });
            if let Some((class, delay_ns)) = class_delay {
                port.nic.set_class_delay(class, delay_ns);
            }
            Ok(Reply::answer(link_answer(port)))
        }
        Request::Coalesce {
            port,
            queue,
            settings,
        } => {
            let port = find_nic(fabric, &port)?;
            let Some(rx_queue) = port.nic.queue(queue) else {
                return Err(NicRequestError::NoQueue {
                    port: port.name.clone(),
                    last: port.nic.queues().len().saturating_sub(1),
                    queue,
                });
            };
            if let Some(settings) = settings {
                port.nic.set_coalesce(queue, parse_coalesce(&settings)?);
            }
            Ok(Reply::answer(CoalesceAnswer {
                port: port.name.clone(),
                queue,
                coalesce: rx_queue.coalesce.get(),
            }))
        }
        Request::PriorityWeight { port, weight } => {
            let port = find_nic(fabric, &port)?;
            port.nic.set_priority_weight(weight);
            Ok(Reply::answer(PriorityWeightAnswer {
                port: port.name.clone(),
                priority_weight: weight,
            }))
        }
        Request::ResidenceReset { port } => {
            for candidate in &fabric.ports {
                if port.as_deref().is_none_or(|name| name == candidate.name) {
                    candidate
                        .nic
                        .queues()
                        .iter()
                        .for_each(|q| q.reset_residence());
                }
            }
            if let Some(name) = port {
                find(fabric, &name)?;
            }
            Ok(Reply::answer(()))
        }
        Request::Netem { port, settings } => {
            let port = find_nic(fabric, &port)?;
            // Parsed whole before anything changes: a bad word leaves the settings as they are.
            let command: NetemCommand =
                settings.parse().map_err(|source| NicRequestError::Netem {
                    port: port.name.clone(),
                    source,
                })?;
            match command.action {
                NetemAction::Show => {}
                NetemAction::Off => {
                    port.nic.set_netem(command.scope, None);
                }
                NetemAction::Set(settings) => {
                    port.nic.set_netem(command.scope, Some(settings));
                }
            }
            Ok(Reply::answer(NetemAnswer {
                netem: netem_stats(port),
                port: port.name.clone(),
            }))
        }
        Request::Capture { port, queue, file } => {
            let port = find_nic(fabric, &port)?;
            let queues = port.nic.queues().len();
            if queue.is_some_and(|q| q >= queues) {
                return Err(NicRequestError::CaptureQueue {
                    port: port.name.clone(),
                    queues,
                });
            }
            match file {
                Some(file) => {
                    let path: PathBuf = paths::capture_path(capture_dir, &file)?;
                    let file = paths::create_capture_file(&path)?;
                    let capture = Capture::new(
                        file,
                        &path,
                        &port.name,
                        queues,
                        queue,
                        port.nic.port_counters.clone(),
                    )?;
                    port.nic.set_capture(Some(capture));
                    Ok(Reply::answer(CaptureAnswer {
                        port: port.name.clone(),
                        capturing: Some(path),
                    }))
                }
                None => {
                    port.nic.set_capture(None);
                    Ok(Reply::answer(CaptureAnswer {
                        port: port.name.clone(),
                        capturing: None,
                    }))
                }
            }
        }
    }
}
