//! Flow rules in the spirit of `ethtool -N`: match fields of the outer or inner headers, act
//! (steer to a queue, set the class, or drop); the rule with the lowest location wins.
//!
//! Two input forms produce the same [`Rule`]:
//! - TOML ([`RuleSet::from_toml`]), an array of `[[rule]]` tables:
//!   ```toml
//!   [[rule]]
//!   loc = 10
//!   proto = "tcp"        # or a number
//!   dst-port = 5001
//!   queue = 0            # and/or class = "high" | "normal"; or drop = true
//!   class = "high"
//!   ```
//!   Other keys: `layer = "inner"` (default "outer"), `src-ip`/`dst-ip` (`"10.0.0.0/8"`,
//!   `"2001:db8::/32"`, or a bare address), `src-port`, `dscp`, `vlan` (VLAN id of the
//!   outermost tag of that layer), `pcp` (its priority), `vni`. A bad file is rejected with the
//!   file, line, column and what is wrong.
//! - Text for the control socket ([`Rule::from_str`], and [`Rule`]'s `Display` writes it back):
//!   `loc 10 [inner] proto tcp dst-port 5001 action queue 0 class high`, `... action drop`.
//!
//! [`RuleSet::new`] compiles the rules so a lookup is not a linear scan: each rule goes into
//! one bucket keyed by its most selective exact field — (layer, protocol, destination port),
//! else (layer, protocol, source port), else VNI, else its source (or destination) address
//! prefix, else (layer, DSCP) — or, with none of those, into a residual list. Prefixes are
//! bucketed per distinct (layer, family, length): the lookup masks the frame's address to each
//! such length in use and probes once per length (tuple-space search). A rule with a port but
//! no protocol goes into both the TCP and the UDP bucket (the parser reports ports only for
//! TCP and UDP). A lookup probes the buckets the
//! frame's fields name plus the residual list; each list is in location order, so the
//! first full match in a list is that list's best, and the lowest over all lists wins, exactly
//! as a linear scan in location order would.
//!
//! Beside the buckets is a [`RuleScreen`]: per field, which values some bucketed rule names
//! (a bit per port, a bit per DSCP value, and a small Bloom filter of the prefixes' networks
//! and the VNIs). [`RuleSet::may_match`] reads it to prove "no rule can match this frame"
//! with a handful of loads and no hash-table probe. Most frames of most workloads match no
//! rule (the rules pick out a few flows), and for them this is cheaper than the lookup, and
//! than the flow cache's probe too (see [`super`]). The screen errs only towards "may match"
//! (it ignores the protocol and layer of a port, a Bloom filter has false positives), which
//! costs the lookup and is never a wrong answer.
//!
//! Each rule has a hit counter ([`RuleSet::hits`]) readable while the data path runs: a
//! shared atomic per rule, plus one [`HitShard`] per thread that counts through the flow
//! cache (a thread alone writes its shard, so it counts with a plain load and store instead
//! of a locked read-modify-write, and threads hitting one rule share no cache line); a read
//! adds them up.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::Class;
use super::parse::{FlowKey, LayerKey};
use crate::packet::ip_proto;

/// Which header stack a rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    #[default]
    Outer,
    /// The frame inside VXLAN; a rule on the inner layer never matches a frame without one.
    Inner,
}

/// An address prefix (`10.0.0.0/8`, `2001:db8::/32`, or a bare address for a full match).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpPrefix {
    addr: IpAddr,
    len: u8,
    /// The network and mask as 128-bit numbers (IPv4 in the low 32 bits), precomputed so
    /// `contains` is one AND and one compare.
    bits: u128,
    mask: u128,
}

/// An address as a 128-bit number (IPv4 in the low 32 bits) and whether it is IPv6.
#[inline]
fn address_bits(ip: IpAddr) -> (u128, bool) {
    match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), false),
        IpAddr::V6(v6) => (u128::from(v6), true),
    }
}

impl IpPrefix {
    /// A prefix; host bits of `addr` are cleared. `len` beyond the family's width is an error.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, String> {
        let width: u8 = if addr.is_ipv4() { 32 } else { 128 };
        if len > width {
            return Err(format!("prefix length {len} is longer than {width}"));
        }
        let full = if width == 32 {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        let host_bits = u32::from(width - len);
        let mask = full & full.checked_shl(host_bits).unwrap_or(0);
        let (raw, _) = address_bits(addr);
        let bits = raw & mask;
        let addr = match addr {
            IpAddr::V4(_) => IpAddr::V4((bits as u32).into()),
            IpAddr::V6(_) => IpAddr::V6(bits.into()),
        };
        Ok(IpPrefix {
            addr,
            len,
            bits,
            mask,
        })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn len(&self) -> u8 {
        self.len
    }

    /// True for the zero-length prefix (matches every address of its family).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_ipv6(&self) -> bool {
        self.addr.is_ipv6()
    }

    /// True when `ip` is of the same family and inside the prefix.
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (bits, is_v6) = address_bits(ip);
        is_v6 == self.addr.is_ipv6() && bits & self.mask == self.bits
    }
}

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

/// An IP protocol number, written as a name (`tcp`, `udp`, `icmp`, `icmpv6`, `sctp`) or number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Proto(pub u8);

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

/// The fields a rule matches; `None` matches anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RuleMatch {
    pub layer: Layer,
    pub src_ip: Option<IpPrefix>,
    pub dst_ip: Option<IpPrefix>,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
    pub proto: Option<u8>,
    pub dscp: Option<u8>,
    /// VLAN id of the layer's outermost tag.
    pub vlan: Option<u16>,
    /// PCP of the layer's outermost tag.
    pub pcp: Option<u8>,
    pub vni: Option<u32>,
}

impl RuleMatch {
    /// True when every field the rule names is present in the frame and equal (or inside the
    /// prefix).
    #[inline]
    pub fn matches(&self, key: &FlowKey) -> bool {
        let layer: &LayerKey = match self.layer {
            Layer::Outer => &key.outer,
            Layer::Inner => match &key.inner {
                Some(inner) => inner,
                None => return false,
            },
        };
        fn eq<T: PartialEq>(want: Option<T>, have: Option<T>) -> bool {
            match want {
                None => true,
                Some(want) => have == Some(want),
            }
        }
        fn within(want: &Option<IpPrefix>, have: Option<IpAddr>) -> bool {
            match (want, have) {
                (None, _) => true,
                (Some(prefix), Some(ip)) => prefix.contains(ip),
                (Some(_), None) => false,
            }
        }
        let tag = layer.outer_vlan();
        eq(self.proto, layer.proto)
            && eq(self.dst_port, layer.dst_port)
            && eq(self.src_port, layer.src_port)
            && eq(self.dscp, layer.dscp)
            && eq(self.vni, key.vni)
            && eq(self.vlan, tag.map(|t| t.vid))
            && eq(self.pcp, tag.map(|t| t.pcp))
            && within(&self.src_ip, layer.src_ip)
            && within(&self.dst_ip, layer.dst_ip)
    }
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleAction {
    /// Drop the frame.
    Drop,
    /// Steer to a queue and/or set the class (at least one is set).
    Set {
        queue: Option<u16>,
        class: Option<Class>,
    },
}

/// One flow rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Lower locations take precedence.
    pub location: u32,
    pub matches: RuleMatch,
    pub action: RuleAction,
}

/// Why a rule's fields do not make a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("rule has no action (queue, class or drop)")]
    NoAction,
    #[error("drop cannot be combined with queue or class")]
    DropWithOtherAction,
    #[error("ports are only parsed for tcp and udp, not protocol {0}")]
    PortsNeedTcpOrUdp(Proto),
    #[error("dscp {0} is not in 0-63")]
    DscpOutOfRange(u8),
    #[error("pcp {0} is not in 0-7")]
    PcpOutOfRange(u8),
    #[error("vlan {0} is not in 0-4095")]
    VlanOutOfRange(u16),
    #[error("vni {0} is not in 0-16777215")]
    VniOutOfRange(u32),
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

/// A hasher for the `u64` bucket keys: one multiply-rotate (FxHash), far cheaper than SipHash
/// and good enough since the keys come from the operator's rules, not from the network.
#[derive(Default, Clone, Copy)]
struct BucketHasher(u64);

impl Hasher for BucketHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0.rotate_left(5) ^ value).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type Buckets = HashMap<u64, Box<[u32]>, BuildHasherDefault<BucketHasher>>;

/// The bucket kinds, also bits of [`RuleSet`]'s `present` mask.
const KIND_DST_PORT: u64 = 1;
const KIND_SRC_PORT: u64 = 2;
const KIND_VNI: u64 = 3;
const KIND_DSCP: u64 = 4;
const KIND_SRC_NET: u64 = 5;
const KIND_DST_NET: u64 = 6;

#[inline(always)]
fn bucket_key(kind: u64, layer: Layer, proto: u8, value: u32) -> u64 {
    let layer_bit = match layer {
        Layer::Outer => 0,
        Layer::Inner => 1,
    };
    (kind << 48) | (layer_bit << 40) | (u64::from(proto) << 32) | u64::from(value)
}

/// The bucket of an address prefix: a 64-bit digest of (kind, layer, family, length, network).
/// Digests of different prefixes may collide; that only puts a few more rules in a list, since
/// every candidate is fully matched anyway, so the lookup stays exact.
#[inline(always)]
fn net_key(kind: u64, layer: Layer, is_v6: bool, len: u8, bits: u128) -> u64 {
    let tag = bucket_key(kind, layer, u8::from(is_v6), u32::from(len));
    let folded = (bits as u64) ^ ((bits >> 64) as u64).rotate_left(29);
    (folded ^ tag.rotate_left(17)).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ tag
}

/// The prefix a rule is bucketed by: its source prefix, else its destination prefix; a
/// zero-length prefix selects nothing (and is left to the residual list).
fn selective_prefix(m: &RuleMatch) -> Option<(u64, IpPrefix)> {
    match (m.src_ip, m.dst_ip) {
        (Some(src), _) if !src.is_empty() => Some((KIND_SRC_NET, src)),
        (_, Some(dst)) if !dst.is_empty() => Some((KIND_DST_NET, dst)),
        _ => None,
    }
}

/// One prefix length some rule's source or destination prefix uses: the lookup probes the
/// frame's address masked to each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NetShape {
    kind: u64,
    layer: Layer,
    is_v6: bool,
    len: u8,
    mask: u128,
    /// A digest of the above, setting this shape's networks apart in the network filter.
    tag: u64,
}

impl NetShape {
    fn new(kind: u64, layer: Layer, prefix: &IpPrefix) -> Self {
        let is_v6 = prefix.is_ipv6();
        let tag = bucket_key(kind, layer, u8::from(is_v6), u32::from(prefix.len))
            .wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
            .rotate_left(31);
        NetShape {
            kind,
            layer,
            is_v6,
            len: prefix.len,
            mask: prefix.mask,
            tag,
        }
    }
}

/// An outer-layer IPv4 prefix shape (the common case), screened from the address as a `u32`:
/// the network filter key [`network_filter_key`] gives for an IPv4 network is
/// `u64::from(network) ^ tag`.
#[derive(Debug, Clone, Copy)]
struct OuterV4Shape {
    /// All ones for a shape of source prefixes, 0 for destination ones: the address is then
    /// `dst ^ ((src ^ dst) & select)`, with no branch and no memory access.
    select: u32,
    mask: u32,
    tag: u64,
}

/// Which values of each bucketed field some rule names, for [`RuleSet::may_match`]. A bucket
/// exists for a rule's key only if the rule's field value is in here, so a frame none of whose
/// fields are in here can match no bucketed rule.
///
/// The bitmaps are one allocation (20 KiB, of which a frame reads a line per field value it
/// has): a screen then loads one pointer, and needs no check of which bitmaps exist (those of
/// kinds no rule uses are all zeros). Words `0..1024`: a bit per destination port some rule
/// bucketed by its destination port names (for any protocol and layer); `1024..2048`: the
/// same for source ports; `2048..2560`: the network filter, a Bloom filter of the networks of
/// the rules bucketed by a prefix (each tagged with its shape, so a probe for one shape cannot
/// hit another's) and of the bucketed VNIs. Each of its keys sets one bit, picked by the top
/// bits of one multiply (a short chain: multiply, shift, load, test); at its fixed 32768 bits
/// a false "maybe" is about 1 in 64 with 500 keys (1000 rules, half of them on prefixes), 1 in
/// 7 with 5000. Not keyed: the keys come from the operator's rules, and a frame aimed at a
/// false "maybe" only costs the lookup the screen would have saved.
#[derive(Debug)]
struct RuleScreen {
    bits: Box<[u64; RuleScreen::WORDS]>,
    /// Bit `d`: some rule bucketed by its DSCP names `d`.
    dscps: u64,
}

impl Default for RuleScreen {
    fn default() -> Self {
        RuleScreen {
            bits: Box::new([0; RuleScreen::WORDS]),
            dscps: 0,
        }
    }
}

impl RuleScreen {
    const DST_PORTS: usize = 0;
    const SRC_PORTS: usize = 1 << 10;
    const NETWORKS: usize = 2 << 10;
    const NETWORK_BITS_LOG2: u32 = 15;
    const WORDS: usize = Self::NETWORKS + (1 << (Self::NETWORK_BITS_LOG2 - 6));

    /// The word and bit of `port` in the port bitmap at word `base`.
    #[inline(always)]
    fn port_position(base: usize, port: u16) -> (usize, u64) {
        (base + usize::from(port >> 6), 1 << (port & 63))
    }

    /// The word and bit of network filter key `key`.
    #[inline(always)]
    fn network_position(key: u64) -> (usize, u64) {
        let index = key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - Self::NETWORK_BITS_LOG2);
        (Self::NETWORKS + (index >> 6) as usize, 1 << (index & 63))
    }

    /// Whether the bit at `position` is set (the positions above are inside the table, so the
    /// bounds check compiles away).
    #[inline(always)]
    fn test(&self, (word, bit): (usize, u64)) -> bool {
        self.bits.get(word).is_some_and(|word| word & bit != 0)
    }

    fn set(&mut self, (word, bit): (usize, u64)) {
        if let Some(word) = self.bits.get_mut(word) {
            *word |= bit;
        }
    }

    /// False when `key` is certainly not one of the network filter's keys.
    #[inline(always)]
    fn may_contain_network(&self, key: u64) -> bool {
        self.test(Self::network_position(key))
    }

    /// Whether some rule bucketed by a port or DSCP field may match `layer` (prefixes are
    /// screened per shape by [`RuleSet::may_match`]).
    #[inline(always)]
    fn layer_may_match(&self, layer: &LayerKey) -> bool {
        // Plain `|`: the tests are cheap and independent, and no branch is then mispredicted
        // on which of them fires.
        layer
            .dst_port
            .is_some_and(|port| self.test(Self::port_position(Self::DST_PORTS, port)))
            | layer
                .src_port
                .is_some_and(|port| self.test(Self::port_position(Self::SRC_PORTS, port)))
            | layer
                .dscp
                .is_some_and(|dscp| self.dscps & (1 << (dscp & 63)) != 0)
    }
}

/// The network filter key ([`RuleScreen`]) of a network (an address already masked to the
/// shape's length) of prefix shape `shape_tag` ([`NetShape::tag`]).
#[inline(always)]
fn network_filter_key(shape_tag: u64, network: u128) -> u64 {
    (network as u64) ^ ((network >> 64) as u64).rotate_left(29) ^ shape_tag
}

/// The network filter key ([`RuleScreen`]) of a VNI: apart from the networks' keys by a tag
/// of its own.
#[inline(always)]
fn vni_filter_key(vni: u32) -> u64 {
    u64::from(vni) ^ 0x5bd1_e995_0000_0000
}

/// One thread's hit counters for the rules of one [`RuleSet`] (index = position in location
/// order). Only the thread that asked for it ([`RuleSet::new_hit_shard`]) counts into it;
/// anyone reads it.
#[derive(Debug)]
pub struct HitShard(Box<[AtomicU64]>);

impl HitShard {
    /// Counts a hit on the rule at `index` (out of range: nothing). A plain load and store:
    /// correct because the calling thread is the shard's only writer.
    #[inline]
    pub fn count(&self, index: usize) {
        if let Some(hits) = self.0.get(index) {
            hits.store(
                hits.load(Ordering::Relaxed).wrapping_add(1),
                Ordering::Relaxed,
            );
        }
    }
}

/// A compiled, ordered set of rules with per-rule hit counters.
#[derive(Debug, Default)]
pub struct RuleSet {
    /// Sorted by location; bucket lists hold indices into it, ascending.
    rules: Box<[Rule]>,
    /// Hits counted without a shard (the uncached path, [`lookup`](Self::lookup)).
    hits: Box<[AtomicU64]>,
    /// Every thread's shard: a registration per thread and rule set, off the data path.
    shards: Mutex<Vec<Arc<HitShard>>>,
    buckets: Buckets,
    residual: Box<[u32]>,
    /// The prefix shapes that have a bucket (few: one per distinct layer, family and length).
    net_shapes: Box<[NetShape]>,
    /// Bit `1 << kind` set when some bucket of that kind exists (skips useless probes).
    present: u8,
    /// Which field values the bucketed rules name (for [`may_match`](Self::may_match)).
    screen: RuleScreen,
    /// `net_shapes` split for the screen: the outer IPv4 ones, and the others.
    outer_v4_shapes: Box<[OuterV4Shape]>,
    /// The screen would let every frame through, so [`may_match`](Self::may_match) skips
    /// it: there is a residual rule (which may match anything), or every DSCP value has a rule
    /// (every IP frame has a DSCP).
    screen_passes_all: bool,
    other_shapes: Box<[NetShape]>,
}

impl RuleSet {
    /// Starts each rule's hit counter from the count of the rule with the same location and
    /// the same definition in `old`, so that editing a rule set does not reset the others.
    pub fn inherit_hits(&self, old: &RuleSet) {
        let old_totals = old.total_hits();
        for (rule, hits) in self.rules.iter().zip(self.hits.iter()) {
            if let Ok(index) = old
                .rules
                .binary_search_by_key(&rule.location, |r| r.location)
                && old.rules[index] == *rule
            {
                hits.store(old_totals[index], Ordering::Relaxed);
            }
        }
    }

    /// A new hit shard for the calling thread, counted in [`hits`](Self::hits) from now on.
    pub fn new_hit_shard(&self) -> Arc<HitShard> {
        let shard = Arc::new(HitShard(
            self.rules.iter().map(|_| AtomicU64::new(0)).collect(),
        ));
        self.shards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(shard.clone());
        shard
    }

    /// Each rule's hits: its shared counter plus every thread's shard.
    fn total_hits(&self) -> Vec<u64> {
        let mut totals: Vec<u64> = self
            .hits
            .iter()
            .map(|hits| hits.load(Ordering::Relaxed))
            .collect();
        let shards = self.shards.lock().unwrap_or_else(PoisonError::into_inner);
        for shard in shards.iter() {
            for (total, hits) in totals.iter_mut().zip(shard.0.iter()) {
                *total = total.wrapping_add(hits.load(Ordering::Relaxed));
            }
        }
        totals
    }

    /// Compiles `rules` (any order). Two rules with one location are refused.
    pub fn new(mut rules: Vec<Rule>) -> Result<Self, RulesError> {
        rules.sort_by_key(|rule| rule.location);
        if let Some(pair) = rules
            .windows(2)
            .find(|pair| pair[0].location == pair[1].location)
        {
            return Err(RulesError::DuplicateLocationInList(pair[0].location));
        }
        let mut lists: HashMap<u64, Vec<u32>, BuildHasherDefault<BucketHasher>> =
            HashMap::default();
        let mut residual = Vec::new();
        let mut net_shapes: Vec<NetShape> = Vec::new();
        let mut present = 0u8;
        let mut screen = RuleScreen::default();
        let mut network_keys = Vec::new();
        for (index, rule) in rules.iter().enumerate() {
            let index = index as u32;
            let m = &rule.matches;
            // Ports without a protocol can only match TCP or UDP frames.
            let protos: &[u8] = match &m.proto {
                Some(p) => std::slice::from_ref(p),
                None => &[ip_proto::TCP, ip_proto::UDP],
            };
            let (kind, keys): (u64, Vec<u64>) = if let Some(port) = m.dst_port {
                screen.set(RuleScreen::port_position(RuleScreen::DST_PORTS, port));
                let keys = protos
                    .iter()
                    .map(|&p| bucket_key(KIND_DST_PORT, m.layer, p, u32::from(port)));
                (KIND_DST_PORT, keys.collect())
            } else if let Some(port) = m.src_port {
                screen.set(RuleScreen::port_position(RuleScreen::SRC_PORTS, port));
                let keys = protos
                    .iter()
                    .map(|&p| bucket_key(KIND_SRC_PORT, m.layer, p, u32::from(port)));
                (KIND_SRC_PORT, keys.collect())
            } else if let Some(vni) = m.vni {
                network_keys.push(vni_filter_key(vni));
                (KIND_VNI, vec![bucket_key(KIND_VNI, Layer::Outer, 0, vni)])
            } else if let Some((kind, net)) = selective_prefix(m) {
                let shape = NetShape::new(kind, m.layer, &net);
                network_keys.push(network_filter_key(shape.tag, net.bits));
                if !net_shapes.contains(&shape) {
                    net_shapes.push(shape);
                }
                let key = net_key(kind, m.layer, shape.is_v6, net.len, net.bits);
                (kind, vec![key])
            } else if let Some(dscp) = m.dscp {
                screen.dscps |= 1 << (dscp & 63);
                (
                    KIND_DSCP,
                    vec![bucket_key(KIND_DSCP, m.layer, 0, u32::from(dscp))],
                )
            } else {
                residual.push(index);
                continue;
            };
            present |= 1 << kind;
            for key in keys {
                lists.entry(key).or_default().push(index);
            }
        }
        for key in network_keys {
            screen.set(RuleScreen::network_position(key));
        }
        let (outer_v4, other_shapes): (Vec<NetShape>, Vec<NetShape>) = net_shapes
            .iter()
            .partition(|shape| shape.layer == Layer::Outer && !shape.is_v6);
        let outer_v4_shapes = outer_v4
            .iter()
            .map(|shape| OuterV4Shape {
                select: if shape.kind == KIND_SRC_NET {
                    u32::MAX
                } else {
                    0
                },
                mask: shape.mask as u32,
                tag: shape.tag,
            })
            .collect();
        let buckets = lists
            .into_iter()
            .map(|(key, list)| (key, list.into_boxed_slice()))
            .collect();
        let screen_passes_all = !residual.is_empty() || screen.dscps == u64::MAX;
        let hits = rules.iter().map(|_| AtomicU64::new(0)).collect();
        Ok(RuleSet {
            rules: rules.into_boxed_slice(),
            hits,
            shards: Mutex::new(Vec::new()),
            buckets,
            residual: residual.into_boxed_slice(),
            net_shapes: net_shapes.into_boxed_slice(),
            present,
            screen,
            outer_v4_shapes,
            other_shapes: other_shapes.into_boxed_slice(),
            screen_passes_all,
        })
    }

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

    /// The rules, in location order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Each rule's location and hit count, in location order.
    pub fn hits(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.rules
            .iter()
            .zip(self.total_hits())
            .map(|(rule, hits)| (rule.location, hits))
    }

    /// The lowest-location rule matching `key`, without counting a hit.
    #[inline]
    pub fn find(&self, key: &FlowKey) -> Option<&Rule> {
        self.find_index(key).map(|index| &self.rules[index])
    }

    /// The lowest-location rule matching `key`; counts a hit on it.
    #[inline]
    pub fn lookup(&self, key: &FlowKey) -> Option<&Rule> {
        let index = self.find_index(key)?;
        self.hits[index].fetch_add(1, Ordering::Relaxed);
        Some(&self.rules[index])
    }

    /// Counts one hit on the rule at `index` (in location order; out of range: nothing).
    #[inline]
    pub fn count_hit(&self, index: usize) {
        if let Some(hits) = self.hits.get(index) {
            hits.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The index (in location order) of the lowest-location rule matching `key`.
    #[inline]
    pub fn find_index(&self, key: &FlowKey) -> Option<usize> {
        if self.rules.is_empty() {
            return None;
        }
        let mut best = u32::MAX;
        let mut scan = |list: &[u32]| {
            for &index in list {
                if index >= best {
                    return;
                }
                if self.rules[index as usize].matches.matches(key) {
                    best = index;
                    return;
                }
            }
        };
        let has = |kind: u64| self.present & (1 << kind) != 0;
        let probe = |bucket: u64, scan: &mut dyn FnMut(&[u32])| {
            if let Some(list) = self.buckets.get(&bucket) {
                scan(list);
            }
        };
        for (layer, layer_key) in [
            (Layer::Outer, Some(&key.outer)),
            (Layer::Inner, key.inner.as_ref()),
        ] {
            let Some(layer_key) = layer_key else { continue };
            if let Some(p) = layer_key.proto {
                if has(KIND_DST_PORT)
                    && let Some(port) = layer_key.dst_port
                {
                    probe(
                        bucket_key(KIND_DST_PORT, layer, p, u32::from(port)),
                        &mut scan,
                    );
                }
                if has(KIND_SRC_PORT)
                    && let Some(port) = layer_key.src_port
                {
                    probe(
                        bucket_key(KIND_SRC_PORT, layer, p, u32::from(port)),
                        &mut scan,
                    );
                }
            }
            if has(KIND_DSCP)
                && let Some(dscp) = layer_key.dscp
            {
                probe(bucket_key(KIND_DSCP, layer, 0, u32::from(dscp)), &mut scan);
            }
        }
        for shape in self.net_shapes.iter() {
            let Some(address) = shape_address(shape, key) else {
                continue;
            };
            let (bits, _) = address_bits(address);
            let bucket = net_key(
                shape.kind,
                shape.layer,
                shape.is_v6,
                shape.len,
                bits & shape.mask,
            );
            probe(bucket, &mut scan);
        }
        if has(KIND_VNI)
            && let Some(vni) = key.vni
        {
            probe(bucket_key(KIND_VNI, Layer::Outer, 0, vni), &mut scan);
        }
        scan(&self.residual);
        (best != u32::MAX).then_some(best as usize)
    }

    /// False when no rule can match `key` ([`find_index`](Self::find_index) would return
    /// `None`), proven from the [`RuleScreen`] with no hash-table probe: there is no residual
    /// rule, and none of the frame's ports, DSCP values, VNI and networks (its addresses
    /// masked to each prefix shape in use) is one a bucketed rule names. True when some rule
    /// may match, and without a test when the screen cannot rule frames out (a residual rule,
    /// or a rule for every DSCP value).
    #[inline]
    pub fn may_match(&self, key: &FlowKey) -> bool {
        if self.screen_passes_all {
            return true;
        }
        let screen = &self.screen;
        let outer = &key.outer;
        let mut hit = screen.layer_may_match(outer);
        if !self.outer_v4_shapes.is_empty() {
            match (outer.src_ip, outer.dst_ip) {
                (Some(IpAddr::V4(src)), Some(IpAddr::V4(dst))) => {
                    let (src, dst) = (u32::from(src), u32::from(dst));
                    hit |= self.outer_v4_shapes.iter().fold(false, |hit, shape| {
                        let address = dst ^ ((src ^ dst) & shape.select);
                        let key = u64::from(address & shape.mask) ^ shape.tag;
                        hit | screen.may_contain_network(key)
                    });
                }
                // No IPv4 address: no outer IPv4 prefix applies.
                (None | Some(IpAddr::V6(_)), None | Some(IpAddr::V6(_))) => {}
                // One IPv4 address (the parser reads both or none): not worth screening.
                _ => return true,
            }
        }
        if !self.other_shapes.is_empty() || key.inner.is_some() || key.vni.is_some() {
            hit |= self.others_may_match(key);
        }
        hit
    }

    /// The part of [`may_match`](Self::may_match) for tunnelled frames and IPv6 or inner
    /// prefixes: the inner layer's ports and DSCP, the VNI, and the prefix shapes other than
    /// the outer IPv4 ones.
    #[inline(never)]
    fn others_may_match(&self, key: &FlowKey) -> bool {
        let screen = &self.screen;
        let mut hit = key
            .inner
            .as_ref()
            .is_some_and(|inner| screen.layer_may_match(inner));
        if let Some(vni) = key.vni {
            hit |= screen.may_contain_network(vni_filter_key(vni));
        }
        for shape in self.other_shapes.iter() {
            if let Some(address) = shape_address(shape, key) {
                let (bits, _) = address_bits(address);
                hit |= screen.may_contain_network(network_filter_key(shape.tag, bits & shape.mask));
            }
        }
        hit
    }
}

/// The frame's address prefix shape `shape` applies to (of the shape's layer, source or
/// destination, and family), if the frame has one.
#[inline(always)]
fn shape_address(shape: &NetShape, key: &FlowKey) -> Option<IpAddr> {
    let layer_key = match shape.layer {
        Layer::Outer => &key.outer,
        Layer::Inner => key.inner.as_ref()?,
    };
    let address = match shape.kind {
        KIND_SRC_NET => layer_key.src_ip,
        _ => layer_key.dst_ip,
    }?;
    (address.is_ipv6() == shape.is_v6).then_some(address)
}

#[cfg(test)]
mod tests;
