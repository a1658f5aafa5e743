//! Control requests that change a port's NIC at run time: flow rules (ethtool -N), link rate
//! and latency, interrupt moderation (ethtool -C), priority weight, residence histograms,
//! packet capture and impairments (tc-netem). Each takes effect for the next frame; none stops the data path.

use std::path::Path;

use serde_json::{Value, json};

use super::paths;
use super::protocol::{
    CaptureAnswer, ClassDelays, CoalesceAnswer, LinkAnswer, PriorityWeightAnswer, Reply, Request,
    RuleEntry, RulesAnswer,
};
use crate::classify::Class;
use crate::classify::rules::{Rule, RuleSet};
use crate::cli::{parse_coalesce, parse_rate};
use crate::nic::capture::Capture;
use crate::nic::link::{Link, LinkSettings};
use crate::nic::moderation::CoalesceSettings;
use crate::nic::netem::{self, NetemAction, NetemCommand};
use crate::switch::fabric::{Fabric, FabricPort, PortKind};

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

/// Answers one NIC request.
pub fn answer(fabric: &Fabric, capture_dir: &Path, request: Request) -> Reply {
    match answer_nic(fabric, capture_dir, request) {
        Ok(reply) => reply,
        Err(error) => Reply::refused(error),
    }
}

fn answer_nic(fabric: &Fabric, capture_dir: &Path, request: Request) -> Result<Reply, String> {
    match request {
        Request::Stats | Request::Macs => Err("not a NIC request".to_string()),
        Request::Rules { port } => Ok(Reply::answer(rules_answer(find_nic(fabric, &port)?))),
        Request::RuleAdd { port, rule } => {
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
                return Err(format!("no rule at loc {loc}"));
            }
            let set = RuleSet::new(rules).map_err(|e| e.to_string())?;
            port.nic.set_rules(set).map_err(|e| e.to_string())?;
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
            Ok(Reply::answer(link_answer(port)))
        }
        Request::Coalesce {
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
            Ok(Reply::answer(CoalesceAnswer {
                port: port.name.clone(),
                queue,
                coalesce: json!(rx_queue.coalesce.get()),
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
            Ok(Reply::answer(answer))
        }
        Request::Capture { port, queue, file } => {
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
                    let capture = Capture::new(
                        file,
                        &path,
                        &port.name,
                        queues,
                        queue,
                        port.nic.port_counters.clone(),
                    )
                    .map_err(|e| e.to_string())?;
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
