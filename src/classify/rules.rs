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

//!
//! The module's parts: `syntax` reads and writes rules, `index` holds the lookup structures
//! and `hits` the hit counters.

mod hits;
mod index;
mod syntax;

use std::net::IpAddr;
use std::sync::Arc;

use serde::Deserialize;

use super::Class;
use super::parse::{FlowKey, LayerKey};
use hits::HitCounters;
pub use hits::HitShard;
use index::RuleIndex;
pub use syntax::{RuleSyntaxError, RulesError};

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

/// An IP protocol number, written as a name (`tcp`, `udp`, `icmp`, `icmpv6`, `sctp`) or number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Proto(pub u8);

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

/// A compiled, ordered set of rules with per-rule hit counters.
#[derive(Debug, Default)]
pub struct RuleSet {
    /// Sorted by location; the index's lists and the counters are by position in it.
    rules: Box<[Rule]>,
    hits: HitCounters,
    index: RuleIndex,
}

impl RuleSet {
    /// Compiles `rules` (any order). Two rules with one location are refused.
    pub fn new(mut rules: Vec<Rule>) -> Result<Self, RulesError> {
        rules.sort_by_key(|rule| rule.location);
        if let Some(pair) = rules
            .windows(2)
            .find(|pair| pair[0].location == pair[1].location)
        {
            return Err(RulesError::DuplicateLocationInList(pair[0].location));
        }
        Ok(RuleSet {
            index: RuleIndex::new(&rules),
            hits: HitCounters::new(rules.len()),
            rules: rules.into_boxed_slice(),
        })
    }

    /// Starts each rule's hit counter from the count of the rule with the same location and
    /// the same definition in `old`, so that editing a rule set does not reset the others.
    pub fn inherit_hits(&self, old: &RuleSet) {
        let old_totals = old.hits.totals();
        for (position, rule) in self.rules.iter().enumerate() {
            if let Ok(index) = old
                .rules
                .binary_search_by_key(&rule.location, |r| r.location)
                && old.rules[index] == *rule
            {
                self.hits.start_at(position, old_totals[index]);
            }
        }
    }

    /// A new hit shard for the calling thread, counted in [`hits`](Self::hits) from now on.
    pub fn new_hit_shard(&self) -> Arc<HitShard> {
        self.hits.new_shard()
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
            .zip(self.hits.totals())
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
        self.hits.count(index);
        Some(&self.rules[index])
    }

    /// Counts one hit on the rule at `index` (in location order; out of range: nothing).
    #[inline]
    pub fn count_hit(&self, index: usize) {
        self.hits.count(index);
    }

    /// The index (in location order) of the lowest-location rule matching `key`.
    #[inline]
    pub fn find_index(&self, key: &FlowKey) -> Option<usize> {
        self.index.find_index(&self.rules, key)
    }

    /// False when no rule can match `key` ([`find_index`](Self::find_index) would return
    /// `None`), proven without a hash-table probe (see the module's description); true when
    /// some rule may match.
    #[inline]
    pub fn may_match(&self, key: &FlowKey) -> bool {
        self.index.may_match(key)
    }

    /// [`may_match`](Self::may_match) for an untagged IPv4 frame outside a tunnel, from its
    /// header's fields (`ports`: source and destination, for TCP and UDP).
    #[inline]
    pub fn may_match_plain_ipv4(
        &self,
        src: u32,
        dst: u32,
        dscp: u8,
        ports: Option<(u16, u16)>,
    ) -> bool {
        self.index.may_match_plain_ipv4(src, dst, dscp, ports)
    }
}

#[cfg(test)]
mod tests;
