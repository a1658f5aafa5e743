//! Control requests that change a port's NIC at run time: flow rules (ethtool -N), link rate
//! and latency, interrupt moderation (ethtool -C), priority weight, residence histograms,
//! packet capture and impairments (tc-netem). Each takes effect for the next frame; none stops the data path.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};

use super::paths;
use crate::classify::Class;
use crate::classify::rules::{Rule, RuleSet};
use crate::cli::{parse_coalesce, parse_rate};
use crate::nic::capture::Capture;
use crate::nic::link::{Link, LinkSettings};
use crate::nic::moderation::CoalesceSettings;
use crate::nic::netem::{self, NetemAction, NetemCommand};
use crate::switch::fabric::{Fabric, FabricPort, PortKind};

#[derive(Debug, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum NicRequest {
    /// List a port's rules with hit counters.
    Rules { port: String },
    /// Add a rule in ethtool -N style text, e.g. `loc 1 proto udp dst-port 5001 action queue 0`.
    RuleAdd { port: String, rule: String },
    /// Delete the rule at a location.
    RuleDel { port: String, loc: u32 },
    /// Show, or change, a port's link: rate like "10G" (0 = unpaced), latency in microseconds,
    /// and an extra delay for one class's frames.
    Link {
        port: String,
        rate: Option<String>,
        latency_us: Option<u64>,
        /// Extra delay in microseconds for the frames of `class` only.
        #[serde(default)]
        delay_us: Option<u64>,
        #[serde(default)]
        class: Option<String>,
    },
    /// Show, or change, one queue's interrupt moderation ("rx-usecs=N,rx-frames=M").
    Coalesce {
        port: String,
        queue: usize,
        settings: Option<String>,
    },
    /// Set the priority weight (0 = strict priority).
    PriorityWeight { port: String, weight: u32 },
    /// Clear the residence histograms of one port or all.
    ResidenceReset { port: Option<String> },
    /// Start capturing delivered frames to a pcapng file (all queues or one), or stop.
    Capture {
        port: String,
        queue: Option<usize>,
        file: Option<PathBuf>,
    },
    /// Show or change a port's impairments: tc-netem's words (see `nic::netem::settings`);
    /// none shows them.
    Netem {
        port: String,
        #[serde(default)]
        settings: String,
    },
}

fn find<'a>(fabric: &'a Fabric, name: &str) -> Result<&'a FabricPort, String> {
    fabric
        .ports
        .iter()
        .find(|port| port.name == name)
        .ok_or_else(|| format!("there is no port {name:?}"))
}

/// The port whose NIC a request configures: any but a discard port, whose frames never
/// reach its NIC (the switch drops them), so rules, links, moderation and captures there
/// would take effect on nothing.
fn find_nic<'a>(fabric: &'a Fabric, name: &str) -> Result<&'a FabricPort, String> {
    let port = find(fabric, name)?;
    if matches!(port.kind, PortKind::Discard) {
        return Err(format!(
            "port {name:?} is a discard port: the switch drops its frames before any NIC"
        ));
    }
    Ok(port)
}

fn rules_json(port: &FabricPort) -> Value {
    let classifier = port.nic.rules();
    let rules = classifier.rules();
    let hits: Vec<(u32, u64)> = rules.hits().collect();
    let list: Vec<Value> = rules
        .rules()
        .iter()
        .map(|rule| {
            let hits = hits
                .iter()
                .find(|(loc, _)| *loc == rule.location)
                .map_or(0, |(_, n)| *n);
            json!({ "loc": rule.location, "rule": rule.to_string(), "hits": hits })
        })
        .collect();
    json!({ "port": port.name, "rules": list })
}

fn link_json(port: &FabricPort) -> Value {
    let link = port.nic.link.settings();
    json!({
        "port": port.name,
        "rate_bps": link.rate_bps,
        "latency_ns": link.latency_ns,
        "class_delay_ns": class_delay_json(&port.nic.link),
    })
}

/// Each class's extra delay, for the link's JSON here and in the stats.
pub fn class_delay_json(link: &Link) -> Value {
    json!({
        "high": link.class_delay_ns(Class::High),
        "normal": link.class_delay_ns(Class::Normal),
    })
}

/// A port's impairments, per class (settings in tc-netem's words, or null, and counters),
/// and its delay buffer; for the netem answer here and in the stats.
pub fn netem_json(port: &FabricPort) -> Value {
    let nic = &port.nic;
    let class = |class: Class| {
        let counters: serde_json::Map<String, Value> = nic
            .netem
            .counters(class)
            .snapshot()
            .into_iter()
            .map(|(name, value)| (name.to_string(), json!(value)))
            .collect();
        json!({
            "settings": nic.netem.settings(class).map(|settings| settings.to_string()),
            "counters": counters,
        })
    };
    let (held_bytes, budget_bytes) = nic.netem.held_bytes(nic.link.settings().rate_bps);
    json!({
        "high": class(Class::High),
        "normal": class(Class::Normal),
        "held_now": nic.netem.held(),
        "held_bytes": held_bytes,
        "budget_bytes": budget_bytes,
    })
}

/// Checks a latency or delay given in microseconds.
fn bounded_us(what: &str, us: u64) -> Result<u64, String> {
    if us > 10_000_000 {
        return Err(format!("{what} {us} us is more than 10 s"));
    }
    Ok(us * 1000)
}

/// Answers one NIC request (without the "ok" field).
pub fn answer(fabric: &Fabric, capture_dir: &Path, request: NicRequest) -> Result<Value, String> {
    match request {
        NicRequest::Rules { port } => Ok(rules_json(find_nic(fabric, &port)?)),
        NicRequest::RuleAdd { port, rule } => {
            let port = find_nic(fabric, &port)?;
            let rule: Rule = rule.parse().map_err(|e| format!("rule {rule:?}: {e}"))?;
            let current = port.nic.rules();
            if current
                .rules()
                .rules()
                .iter()
                .any(|r| r.location == rule.location)
            {
                return Err(format!("loc {} is taken; delete it first", rule.location));
            }
            let mut rules = current.rules().rules().to_vec();
            rules.push(rule);
            let set = RuleSet::new(rules).map_err(|e| e.to_string())?;
            port.nic.set_rules(set).map_err(|e| e.to_string())?;
            Ok(rules_json(port))
        }
        NicRequest::RuleDel { port, loc } => {
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
                return Err(format!("no rule at loc {loc}"));
            }
            let set = RuleSet::new(rules).map_err(|e| e.to_string())?;
            port.nic.set_rules(set).map_err(|e| e.to_string())?;
            Ok(rules_json(port))
        }
        NicRequest::Link {
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
                (Some(_), None) => return Err("--class needs --delay-us".to_string()),
                (None, Some(_)) => return Err("--delay-us needs --class high|normal".to_string()),
            };
            let mut settings = port.nic.link.settings();
            if let Some(rate) = rate {
                settings.rate_bps = parse_rate(&rate).map_err(|e| e.to_string())?;
            }
            if let Some(latency_us) = latency_us {
                settings.latency_ns = bounded_us("latency", latency_us)?;
            }
            port.nic.set_link(LinkSettings { ..settings });
            if let Some((class, delay_ns)) = class_delay {
                port.nic.set_class_delay(class, delay_ns);
            }
            Ok(link_json(port))
        }
        NicRequest::Coalesce {
            port,
            queue,
            settings,
        } => {
            let port = find_nic(fabric, &port)?;
            let Some(rx_queue) = port.nic.queue(queue) else {
                return Err(format!(
                    "port {} has queues 0 to {}, not {queue}",
                    port.name,
                    port.nic.queues().len().saturating_sub(1)
                ));
            };
            if let Some(settings) = settings {
                let settings: CoalesceSettings =
                    parse_coalesce(&settings).map_err(|e| e.to_string())?;
                port.nic.set_coalesce(queue, settings);
            }
            Ok(json!({ "port": port.name, "queue": queue, "coalesce": rx_queue.coalesce.get() }))
        }
        NicRequest::PriorityWeight { port, weight } => {
            let port = find_nic(fabric, &port)?;
            port.nic.set_priority_weight(weight);
            Ok(json!({ "port": port.name, "priority_weight": weight }))
        }
        NicRequest::ResidenceReset { port } => {
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
            Ok(json!({}))
        }
        NicRequest::Netem { port, settings } => {
            let port = find_nic(fabric, &port)?;
            // Parsed whole before anything changes: a bad word leaves the settings as they are.
            let command: NetemCommand = settings
                .parse()
                .map_err(|e: netem::NetemError| format!("netem {}: {e}", port.name))?;
            match command.action {
                NetemAction::Show => {}
                NetemAction::Off => {
                    port.nic.set_netem(command.scope, None);
                }
                NetemAction::Set(settings) => {
                    port.nic.set_netem(command.scope, Some(settings));
                }
            }
            let mut answer = netem_json(port);
            answer["port"] = json!(port.name);
            Ok(answer)
        }
        NicRequest::Capture { port, queue, file } => {
            let port = find_nic(fabric, &port)?;
            let queues = port.nic.queues().len();
            if queue.is_some_and(|q| q >= queues) {
                return Err(format!("port {} has {queues} queues", port.name));
            }
            match file {
                Some(file) => {
                    let path =
                        paths::capture_path(capture_dir, &file).map_err(|e| e.to_string())?;
                    let file = paths::create_capture_file(&path).map_err(|e| e.to_string())?;
                    let capture = Capture::new(file, &path, &port.name, queues, queue)
                        .map_err(|e| e.to_string())?;
                    port.nic.set_capture(Some(capture));
                    Ok(json!({ "port": port.name, "capturing": path }))
                }
                None => {
                    port.nic.set_capture(None);
                    Ok(json!({ "port": port.name, "capturing": null }))
                }
            }
        }
    }
}
