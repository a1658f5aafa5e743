//! The control protocol, defined once for the server (`control`) and the client (the CLI):
//! a [`Request`] per line, answered by one line, `{"ok":true, ...}` with the request's answer
//! beside `ok`, or `{"ok":false,"error":"..."}`. Both sides go through [`Request`]'s and
//! [`Reply`]'s serde forms; neither builds a request or an envelope by hand.

use std::fmt;
use std::path::PathBuf;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::nic::moderation::CoalesceSettings;
use crate::nic::residence::ResidenceSummary;

/// Most bytes of one request line: far more than any request needs, little to buffer.
pub const MAX_REQUEST: usize = 64 << 10;

/// One request, as a JSON object whose `cmd` names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Every counter of every port, the switch and the control socket.
    Stats,
    /// The switch's learned MAC table.
    Macs,
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
        #[serde(default)]
        rate: Option<String>,
        #[serde(default)]
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
        #[serde(default)]
        settings: Option<String>,
    },
    /// Set the priority weight (0 = strict priority).
    PriorityWeight { port: String, weight: u32 },
    /// Clear the residence histograms of one port or all.
    ResidenceReset {
        #[serde(default)]
        port: Option<String>,
    },
    /// Start capturing delivered frames to a pcapng file (all queues or one), or stop.
    Capture {
        port: String,
        #[serde(default)]
        queue: Option<usize>,
        #[serde(default)]
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

/// Why a request line is not a request.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("request too large: more than {MAX_REQUEST} bytes")]
    TooLarge,
    #[error("bad request: {0}")]
    Syntax(#[from] serde_json::Error),
}

impl Request {
    /// Parses one request line (without its newline). Never panics, whatever the bytes.
    pub fn parse(line: &str) -> Result<Request, RequestError> {
        if line.len() > MAX_REQUEST {
            return Err(RequestError::TooLarge);
        }
        Ok(serde_json::from_str(line)?)
    }

    /// The request as one line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }
}

/// One answer line: `ok`, and either the answer's fields or why the request was refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The answer's own fields (see the answer types below), beside `ok`.
    #[serde(flatten)]
    pub answer: Map<String, Value>,
}

impl Reply {
    /// A successful reply carrying `answer` (a struct or map: its fields go beside `ok`, so
    /// none may be named `ok` or `error`; anything else goes in a field `answer`).
    pub fn answer(answer: impl Serialize) -> Reply {
        let answer = match serde_json::to_value(answer) {
            Ok(Value::Object(map)) => map,
            Ok(Value::Null) => Map::new(),
            Ok(other) => Map::from_iter([("answer".to_string(), other)]),
            Err(error) => return Reply::refused(format!("cannot encode the answer: {error}")),
        };
        Reply {
            ok: true,
            error: None,
            answer,
        }
    }

    /// A refusal saying why.
    pub fn refused(error: impl std::fmt::Display) -> Reply {
        Reply {
            ok: false,
            error: Some(error.to_string()),
            answer: Map::new(),
        }
    }

    /// The reply as one line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }

    /// The answer's fields as one JSON object (without `ok`).
    pub fn into_value(self) -> Value {
        Value::Object(self.answer)
    }
}

/// One rule in a [`RulesAnswer`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleEntry {
    pub loc: u32,
    /// The rule in the text form `rule add` takes.
    pub rule: String,
    pub hits: u64,
}

/// The answer to `rules`, `rule-add` and `rule-del`: the port's rules after the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesAnswer {
    pub port: String,
    pub rules: Vec<RuleEntry>,
}

/// Each class's extra delay on a link, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassDelays {
    pub high: u64,
    pub normal: u64,
}

/// The answer to `link`: the link's settings after the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkAnswer {
    pub port: String,
    pub rate_bps: u64,
    pub latency_ns: u64,
    pub class_delay_ns: ClassDelays,
}

/// The answer to `coalesce`: the queue's moderation after the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoalesceAnswer {
    pub port: String,
    pub queue: usize,
    pub coalesce: CoalesceSettings,
}

/// The answer to `priority-weight`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriorityWeightAnswer {
    pub port: String,
    pub priority_weight: u32,
}

/// The answer to `capture`: the file now written, or none when capturing stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureAnswer {
    pub port: String,
    pub capturing: Option<PathBuf>,
}

/// One entry of the MAC table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacEntry {
    pub mac: String,
    pub port: String,
    pub age_secs: u64,
}

/// The answer to `macs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacsAnswer {
    pub macs: Vec<MacEntry>,
}

/// Counters by name, in the order their set declares them (a JSON object, `ethtool -S`
/// order when printed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters(pub Vec<(String, u64)>);

impl Counters {
    pub fn of(snapshot: &[(&'static str, u64)]) -> Counters {
        Counters(
            snapshot
                .iter()
                .map(|(name, value)| (name.to_string(), *value))
                .collect(),
        )
    }

    /// Whether any counter is not zero.
    pub fn any(&self) -> bool {
        self.0.iter().any(|(_, value)| *value != 0)
    }
}

impl Serialize for Counters {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(name, value)| (name, value)))
    }
}

impl<'de> Deserialize<'de> for Counters {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InOrder;
        impl<'de> Visitor<'de> for InOrder {
            type Value = Counters;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of counters")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Counters, A::Error> {
                let mut counters = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(entry) = map.next_entry()? {
                    counters.push(entry);
                }
                Ok(Counters(counters))
            }
        }
        deserializer.deserialize_map(InOrder)
    }
}

/// The answer to `stats`: every counter of every port, the switch and the control socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsAnswer {
    pub ports: Vec<PortStats>,
    pub switch: Counters,
    /// Refusals of the control socket.
    #[serde(default)]
    pub control: Counters,
}

/// One port in a [`StatsAnswer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortStats {
    pub name: String,
    pub kind: String,
    pub connected: bool,
    pub link: LinkStats,
    pub priority_weight: u32,
    pub netem: NetemStats,
    /// Frames the NIC holds now, all queues and classes.
    pub buffered_now: usize,
    /// The queues' counters summed, then the port's own.
    pub counters: Counters,
    pub queues: Vec<QueueStats>,
}

/// A port's link in a [`PortStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStats {
    pub rate_bps: u64,
    pub latency_ns: u64,
    pub class_delay_ns: ClassDelays,
}

/// One queue pair in a [`PortStats`]; the NIC fields are null for a queue the NIC lacks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueStats {
    pub index: usize,
    pub rx_enabled: bool,
    pub rx_buffered_now: usize,
    pub coalesce: Option<CoalesceSettings>,
    pub residence: Option<PerClass<ResidenceSummary>>,
    pub counters: Counters,
}

/// One value per class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerClass<T> {
    pub high: T,
    pub normal: T,
}

/// A port's impairments, per class, and its delay buffer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetemStats {
    pub high: NetemClassStats,
    pub normal: NetemClassStats,
    /// Frames held for their delay now.
    pub held_now: usize,
    pub held_bytes: usize,
    pub budget_bytes: usize,
}

/// One class's impairments: its settings in tc-netem's words (none if off) and counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetemClassStats {
    pub settings: Option<String>,
    pub counters: Counters,
}

/// The answer to `netem`: the port's impairments after the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetemAnswer {
    #[serde(flatten)]
    pub netem: NetemStats,
    pub port: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_keep_the_wire_form_clients_already_send() {
        let request =
            Request::parse(r#"{"cmd":"rule-add","port":"b","rule":"loc 1 action drop"}"#).unwrap();
        assert_eq!(
            request,
            Request::RuleAdd {
                port: "b".into(),
                rule: "loc 1 action drop".into()
            }
        );
        assert_eq!(
            Request::parse(r#"{"cmd":"stats"}"#).unwrap(),
            Request::Stats
        );
        assert_eq!(
            Request::parse(r#"{"cmd":"link","port":"a"}"#).unwrap(),
            Request::Link {
                port: "a".into(),
                rate: None,
                latency_us: None,
                delay_us: None,
                class: None
            }
        );
    }

    #[test]
    fn a_reply_puts_the_answer_beside_ok_and_a_refusal_says_why() {
        let reply = Reply::answer(PriorityWeightAnswer {
            port: "a".into(),
            priority_weight: 3,
        });
        let line = String::from_utf8(reply.to_line()).unwrap();
        assert_eq!(line, "{\"ok\":true,\"port\":\"a\",\"priority_weight\":3}\n");
        let refused = String::from_utf8(Reply::refused("no").to_line()).unwrap();
        assert_eq!(refused, "{\"ok\":false,\"error\":\"no\"}\n");
        let back: Reply = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(back, reply);
    }

    #[test]
    fn counters_keep_their_order_there_and_back() {
        let counters = Counters(vec![("tx_packets".into(), 2), ("rx_bytes".into(), 1)]);
        let line = serde_json::to_string(&counters).unwrap();
        assert_eq!(line, r#"{"tx_packets":2,"rx_bytes":1}"#);
        assert_eq!(serde_json::from_str::<Counters>(&line).unwrap(), counters);
    }

    #[test]
    fn a_netem_answer_keeps_its_wire_form() {
        let answer = NetemAnswer {
            netem: NetemStats {
                normal: NetemClassStats {
                    settings: Some("loss random 1%".into()),
                    counters: Counters(vec![("netem_lost".into(), 3)]),
                },
                held_now: 1,
                held_bytes: 60,
                budget_bytes: 65536,
                ..NetemStats::default()
            },
            port: "b".into(),
        };
        let line = String::from_utf8(Reply::answer(&answer).to_line()).unwrap();
        assert_eq!(
            line,
            "{\"ok\":true,\"high\":{\"settings\":null,\"counters\":{}},\
             \"normal\":{\"settings\":\"loss random 1%\",\"counters\":{\"netem_lost\":3}},\
             \"held_now\":1,\"held_bytes\":60,\"budget_bytes\":65536,\"port\":\"b\"}\n"
        );
        let reply: Reply = serde_json::from_str(&line).unwrap();
        let back: NetemAnswer = serde_json::from_value(reply.into_value()).unwrap();
        assert_eq!(back, answer);
    }
}
