//! The two written forms of a rule: TOML files ([`RuleSet::from_toml`]) and the control
//! socket's text ([`Rule`]'s `FromStr`, and `Display` to write it back), both filling in one
//! flat [`RawRule`] that [`Rule::try_from`] checks.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::{IpPrefix, Layer, Proto, Rule, RuleAction, RuleError, RuleMatch, RuleSet};
use crate::classify::Class;
use crate::packet::ip_proto;

impl FromStr for IpPrefix {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (addr_text, len_text) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| format!("`{addr_text}` is not an IP address"))?;
        let len = match len_text {
            Some(len) => len
                .parse::<u8>()
                .map_err(|_| format!("`{len}` is not a prefix length"))?,
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        IpPrefix::new(addr, len)
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl<'de> Deserialize<'de> for IpPrefix {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

const PROTO_NAMES: [(&str, u8); 5] = [
    ("tcp", ip_proto::TCP),
    ("udp", ip_proto::UDP),
    ("icmp", ip_proto::ICMP),
    ("icmpv6", ip_proto::ICMPV6),
    ("sctp", ip_proto::SCTP),
];

impl FromStr for Proto {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if let Some((_, number)) = PROTO_NAMES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(text))
        {
            return Ok(Proto(*number));
        }
        text.parse::<u8>().map(Proto).map_err(|_| {
            format!("`{text}` is not a protocol (tcp, udp, icmp, icmpv6, sctp or 0-255)")
        })
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match PROTO_NAMES.iter().find(|(_, number)| *number == self.0) {
            Some((name, _)) => f.write_str(name),
            None => write!(f, "{}", self.0),
        }
    }
}

impl<'de> Deserialize<'de> for Proto {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ProtoVisitor;
        impl Visitor<'_> for ProtoVisitor {
            type Value = Proto;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a protocol name (tcp, udp, icmp, icmpv6, sctp) or a number 0-255")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Proto, E> {
                text.parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Proto, E> {
                u8::try_from(value)
                    .map(Proto)
                    .map_err(|_| E::custom(format!("protocol {value} is not in 0-255")))
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Proto, E> {
                u8::try_from(value)
                    .map(Proto)
                    .map_err(|_| E::custom(format!("protocol {value} is not in 0-255")))
            }
        }
        deserializer.deserialize_any(ProtoVisitor)
    }
}

impl<'de> Deserialize<'de> for Class {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

/// The flat form both the TOML and the text syntax fill in.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawRule {
    loc: u32,
    #[serde(default)]
    layer: Layer,
    src_ip: Option<IpPrefix>,
    dst_ip: Option<IpPrefix>,
    src_port: Option<u16>,
    dst_port: Option<u16>,
    proto: Option<Proto>,
    dscp: Option<u8>,
    vlan: Option<u16>,
    pcp: Option<u8>,
    vni: Option<u32>,
    queue: Option<u16>,
    class: Option<Class>,
    #[serde(default)]
    drop: bool,
}

impl TryFrom<RawRule> for Rule {
    type Error = RuleError;
    fn try_from(raw: RawRule) -> Result<Rule, RuleError> {
        if let Some(dscp) = raw.dscp.filter(|&d| d > 63) {
            return Err(RuleError::DscpOutOfRange(dscp));
        }
        if let Some(pcp) = raw.pcp.filter(|&p| p > 7) {
            return Err(RuleError::PcpOutOfRange(pcp));
        }
        if let Some(vlan) = raw.vlan.filter(|&v| v > 4095) {
            return Err(RuleError::VlanOutOfRange(vlan));
        }
        if let Some(vni) = raw.vni.filter(|&v| v > 0x00ff_ffff) {
            return Err(RuleError::VniOutOfRange(vni));
        }
        if let Some(p) = raw.proto {
            let has_ports = raw.src_port.is_some() || raw.dst_port.is_some();
            if has_ports && p.0 != ip_proto::TCP && p.0 != ip_proto::UDP {
                return Err(RuleError::PortsNeedTcpOrUdp(p));
            }
        }
        let action = match (raw.drop, raw.queue, raw.class) {
            (true, None, None) => RuleAction::Drop,
            (true, _, _) => return Err(RuleError::DropWithOtherAction),
            (false, None, None) => return Err(RuleError::NoAction),
            (false, queue, class) => RuleAction::Set { queue, class },
        };
        Ok(Rule {
            location: raw.loc,
            matches: RuleMatch {
                layer: raw.layer,
                src_ip: raw.src_ip,
                dst_ip: raw.dst_ip,
                src_port: raw.src_port,
                dst_port: raw.dst_port,
                proto: raw.proto.map(|p| p.0),
                dscp: raw.dscp,
                vlan: raw.vlan,
                pcp: raw.pcp,
                vni: raw.vni,
            },
            action,
        })
    }
}

/// Why the text form of a rule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleSyntaxError {
    #[error("unknown keyword `{0}`")]
    UnknownKeyword(String),
    #[error("`{0}` needs a value")]
    MissingValue(String),
    #[error("bad value `{value}` for `{key}`: {reason}")]
    BadValue {
        key: String,
        value: String,
        reason: String,
    },
    #[error("`{0}` given twice")]
    Repeated(String),
    #[error("a rule needs `loc N`")]
    MissingLocation,
    #[error(transparent)]
    Invalid(#[from] RuleError),
}

impl FromStr for Rule {
    type Err = RuleSyntaxError;

    /// Parses `loc N [outer|inner] [field value]... action (drop | [queue N] [class C])`.
    fn from_str(text: &str) -> Result<Rule, RuleSyntaxError> {
        fn value<T: FromStr>(key: &str, token: Option<&str>) -> Result<T, RuleSyntaxError>
        where
            T::Err: fmt::Display,
        {
            let token = token.ok_or_else(|| RuleSyntaxError::MissingValue(key.to_string()))?;
            token
                .parse()
                .map_err(|error: T::Err| RuleSyntaxError::BadValue {
                    key: key.to_string(),
                    value: token.to_string(),
                    reason: error.to_string(),
                })
        }
        fn set<T>(slot: &mut Option<T>, key: &str, value: T) -> Result<(), RuleSyntaxError> {
            if slot.replace(value).is_some() {
                return Err(RuleSyntaxError::Repeated(key.to_string()));
            }
            Ok(())
        }
        let mut raw = RawRule::default();
        let mut location = None;
        let mut tokens = text.split_whitespace();
        let mut in_action = false;
        while let Some(key) = tokens.next() {
            match (in_action, key) {
                (false, "loc") => set(&mut location, key, value(key, tokens.next())?)?,
                (false, "outer") => raw.layer = Layer::Outer,
                (false, "inner") => raw.layer = Layer::Inner,
                (false, "src-ip") => set(&mut raw.src_ip, key, value(key, tokens.next())?)?,
                (false, "dst-ip") => set(&mut raw.dst_ip, key, value(key, tokens.next())?)?,
                (false, "src-port") => set(&mut raw.src_port, key, value(key, tokens.next())?)?,
                (false, "dst-port") => set(&mut raw.dst_port, key, value(key, tokens.next())?)?,
                (false, "proto") => set(&mut raw.proto, key, value(key, tokens.next())?)?,
                (false, "dscp") => set(&mut raw.dscp, key, value(key, tokens.next())?)?,
                (false, "vlan") => set(&mut raw.vlan, key, value(key, tokens.next())?)?,
                (false, "pcp") => set(&mut raw.pcp, key, value(key, tokens.next())?)?,
                (false, "vni") => set(&mut raw.vni, key, value(key, tokens.next())?)?,
                (false, "action") => in_action = true,
                (true, "queue") => set(&mut raw.queue, key, value(key, tokens.next())?)?,
                (true, "class") => set(&mut raw.class, key, value(key, tokens.next())?)?,
                (true, "drop") => raw.drop = true,
                _ => return Err(RuleSyntaxError::UnknownKeyword(key.to_string())),
            }
        }
        raw.loc = location.ok_or(RuleSyntaxError::MissingLocation)?;
        Ok(Rule::try_from(raw)?)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.matches;
        write!(f, "loc {}", self.location)?;
        if m.layer == Layer::Inner {
            f.write_str(" inner")?;
        }
        if let Some(p) = m.proto {
            write!(f, " proto {}", Proto(p))?;
        }
        if let Some(v) = m.src_ip {
            write!(f, " src-ip {v}")?;
        }
        if let Some(v) = m.dst_ip {
            write!(f, " dst-ip {v}")?;
        }
        if let Some(v) = m.src_port {
            write!(f, " src-port {v}")?;
        }
        if let Some(v) = m.dst_port {
            write!(f, " dst-port {v}")?;
        }
        if let Some(v) = m.dscp {
            write!(f, " dscp {v}")?;
        }
        if let Some(v) = m.vlan {
            write!(f, " vlan {v}")?;
        }
        if let Some(v) = m.pcp {
            write!(f, " pcp {v}")?;
        }
        if let Some(v) = m.vni {
            write!(f, " vni {v}")?;
        }
        f.write_str(" action")?;
        match self.action {
            RuleAction::Drop => f.write_str(" drop"),
            RuleAction::Set { queue, class } => {
                if let Some(q) = queue {
                    write!(f, " queue {q}")?;
                }
                if let Some(c) = class {
                    write!(f, " class {c}")?;
                }
                Ok(())
            }
        }
    }
}

/// Why a rule file was refused. Line and column are 1-based.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}:{line}: rule at loc {location}: {reason}")]
    InvalidRule {
        file: String,
        line: usize,
        location: u32,
        reason: RuleError,
    },
    #[error("{file}:{line}: loc {location} is already used by the rule at line {first_line}")]
    DuplicateLocation {
        file: String,
        line: usize,
        location: u32,
        first_line: usize,
    },
    #[error("duplicate rule location {0}")]
    DuplicateLocationInList(u32),
    #[error("reading {file}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    rule: Vec<toml::Spanned<RawRule>>,
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |nl| nl + 1) + 1;
    (line, column)
}

impl RuleSet {
    /// Parses and compiles a TOML rule file; `file` names it in errors.
    pub fn from_toml(text: &str, file: &str) -> Result<Self, RulesError> {
        let parsed: RuleFile = toml::from_str(text).map_err(|error| {
            let (line, column) = line_column(text, error.span().map_or(0, |span| span.start));
            RulesError::Syntax {
                file: file.to_string(),
                line,
                column,
                message: error.message().trim().to_string(),
            }
        })?;
        let mut rules = Vec::with_capacity(parsed.rule.len());
        let mut first_lines: HashMap<u32, usize> = HashMap::new();
        for spanned in parsed.rule {
            let (line, _) = line_column(text, spanned.span().start);
            let raw = spanned.into_inner();
            let location = raw.loc;
            if let Some(&first_line) = first_lines.get(&location) {
                return Err(RulesError::DuplicateLocation {
                    file: file.to_string(),
                    line,
                    location,
                    first_line,
                });
            }
            first_lines.insert(location, line);
            let rule = Rule::try_from(raw).map_err(|reason| RulesError::InvalidRule {
                file: file.to_string(),
                line,
                location,
                reason,
            })?;
            rules.push(rule);
        }
        RuleSet::new(rules)
    }

    /// Reads and compiles a TOML rule file.
    pub fn load(path: &std::path::Path) -> Result<Self, RulesError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| RulesError::Io {
            file: file.clone(),
            source,
        })?;
        RuleSet::from_toml(&text, &file)
    }
}
