//! Pure classification: frame in, decision (class, queue, rule) out.
//!
//! A [`Classifier`] holds the compiled flow rules ([`rules::RuleSet`]), a trust mode (which
//! header field marks a frame high priority: DSCP, VLAN PCP, or nothing) and RSS (a Toeplitz
//! hash and an indirection table). [`Classifier::classify`] parses the frame
//! ([`parse::FlowKey::parse`]), applies the lowest-location matching rule, else the trust
//! mode, and picks a queue: a rule's queue if it names one; otherwise high-class frames spread
//! by RSS over the high-priority queue set (default: queue 0 alone) and the others over the
//! remaining queues. For VXLAN frames both the trust fields and the RSS tuple come from the
//! inner headers (what a tunnel-aware NIC uses); a frame the parser could not finish goes to
//! the normal class on the first normal queue, no rule applied, with the reason in the
//! decision. No I/O, no allocation, no locks: the only shared writes are the rule hit counters
//! (relaxed atomics).
//!
//! With rules, a parsed frame first meets the rule screen ([`rules::RuleSet::may_match`]): a
//! few bitmap tests of its ports, DSCP, VNI and addresses that prove, for most frames of most
//! workloads (rules pick out a few flows), that no rule can match it. Such a frame is then
//! decided exactly as without rules (trust and RSS), which is why rules that the traffic does
//! not match cost about the screen and nothing more, however many there are. A frame some rule
//! may match goes to a per-thread exact-match flow cache ([`cache`]) keyed by the fields its
//! decision depends on and this classifier's id: a frame of a recently seen flow skips the
//! rule lookup, trust and RSS (a few ns instead of tens with many rules), still counting its
//! rule's hit; the screen costs less than the cache's probe (no thread-local access, no key
//! to pack and hash, no entry to load), so it goes first. With no rules neither is used.
//!
//! On a NIC with one queue, RSS has nothing to choose, and the Toeplitz hash (a sizeable part
//! of classifying a plain frame) is not computed: the queue is [`QueueChoice::Default`].

pub mod cache;
pub mod parse;
pub mod rss;
pub mod rules;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::packet::ethernet::ethertype;
use crate::packet::ip_proto;
use cache::Cached;
use parse::{FlowKey, LayerKey, PackedKey, ParseError, Parsed};
use rss::{IndirectionTable, Toeplitz};
use rules::{RuleAction, RuleSet};

/// The two traffic classes of the PRISM receive path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Class {
    High,
    #[default]
    Normal,
}

/// A word that names no class.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a class (high or normal)")]
pub struct UnknownClass(pub String);

impl FromStr for Class {
    type Err = UnknownClass;
    fn from_str(text: &str) -> Result<Self, UnknownClass> {
        match text {
            "high" => Ok(Class::High),
            "normal" => Ok(Class::Normal),
            _ => Err(UnknownClass(text.to_string())),
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Class::High => "high",
            Class::Normal => "normal",
        })
    }
}

/// Which header field marks a frame high priority when no rule sets the class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// IP DSCP: `high[dscp]`.
    Dscp { high: [bool; 64] },
    /// The outermost VLAN tag's PCP: `high[pcp]`; untagged frames are normal.
    Pcp { high: [bool; 8] },
    /// Every frame is normal unless a rule says otherwise.
    None,
}

impl Trust {
    /// DSCP trust with the default map: EF (46) and CS5, CS6, CS7 (40, 48, 56) are high.
    pub fn default_dscp() -> Self {
        let mut high = [false; 64];
        for dscp in [46, 40, 48, 56] {
            high[dscp] = true;
        }
        Trust::Dscp { high }
    }

    /// PCP trust with the default map: 5, 6 and 7 are high.
    pub fn default_pcp() -> Self {
        let mut high = [false; 8];
        for pcp in [5, 6, 7] {
            high[pcp] = true;
        }
        Trust::Pcp { high }
    }

    fn class_of(&self, layer: &LayerKey) -> Class {
        let high = match self {
            Trust::Dscp { high } => layer.dscp.is_some_and(|d| high[usize::from(d & 63)]),
            Trust::Pcp { high } => layer
                .outer_vlan()
                .is_some_and(|v| high[usize::from(v.pcp & 7)]),
            Trust::None => false,
        };
        if high { Class::High } else { Class::Normal }
    }
}

/// Settings of a [`Classifier`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassifierConfig {
    /// Number of receive queues of the emulated NIC.
    pub num_queues: u16,
    /// Queues `0..high_queues` take the high class; the rest take the normal class. When every
    /// queue is high, normal frames share them.
    pub high_queues: u16,
    pub trust: Trust,
    /// UDP destination ports decapsulated as VXLAN.
    pub vxlan_ports: Vec<u16>,
    pub rss_key: [u8; 40],
    /// Entries per indirection table (a power of two).
    pub indirection_len: usize,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        ClassifierConfig {
            num_queues: 1,
            high_queues: 1,
            trust: Trust::default_dscp(),
            vxlan_ports: parse::DEFAULT_VXLAN_PORTS.to_vec(),
            rss_key: rss::DEFAULT_KEY,
            indirection_len: rss::DEFAULT_TABLE_LEN,
        }
    }
}

/// Why a classifier could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifierError {
    #[error("the NIC needs at least one queue")]
    NoQueues,
    #[error("high-priority queue count {high} must be between 1 and the queue count {total}")]
    BadHighQueueCount { high: u16, total: u16 },
    #[error("rule at loc {location} steers to queue {queue}, but there are only {total} queues")]
    RuleQueueOutOfRange {
        location: u32,
        queue: u16,
        total: u16,
    },
    #[error(transparent)]
    Indirection(#[from] rss::IndirectionError),
}

/// How the queue was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueChoice {
    /// A rule named the queue.
    Rule(u16),
    /// RSS over the class's queue set.
    Rss { queue: u16, hash: u32 },
    /// The class's first queue: nothing to hash (not IP, or the parse stopped early), or
    /// nothing to choose from (the NIC has a single queue, so no hash is computed).
    Default(u16),
}

impl QueueChoice {
    pub fn queue(self) -> u16 {
        match self {
            QueueChoice::Rule(queue) | QueueChoice::Default(queue) => queue,
            QueueChoice::Rss { queue, .. } => queue,
        }
    }
}

/// The classifier's answer for one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub class: Class,
    pub queue: QueueChoice,
    /// Location of the rule that matched.
    pub rule: Option<u32>,
    /// A drop rule matched.
    pub drop: bool,
    /// The parser stopped early for this reason (the frame took the defaults).
    pub parse_error: Option<ParseError>,
}

/// Source of [`Classifier`] ids: never 0 (the flow cache's empty entries), never reused.
static NEXT_CLASSIFIER_ID: AtomicU64 = AtomicU64::new(1);

/// Rules, trust mode and RSS, compiled for the data path.
#[derive(Debug)]
pub struct Classifier {
    /// Unique per classifier built: tags this classifier's flow cache entries, so a new
    /// classifier (new rules) never sees an old one's decisions.
    id: u64,
    rules: RuleSet,
    trust: Trust,
    vxlan_ports: Box<[u16]>,
    toeplitz: Toeplitz,
    high_table: IndirectionTable,
    normal_table: IndirectionTable,
    first_high: u16,
    first_normal: u16,
    /// The NIC has one queue: RSS has nothing to choose, so the Toeplitz hash (a sizeable
    /// part of classifying a plain frame) is skipped. The NIC uses the hash only to pick
    /// among its enabled queues when the chosen one is not enabled, which with one queue
    /// leaves nothing to pick either.
    single_queue: bool,
}

impl Classifier {
    pub fn new(config: &ClassifierConfig, rules: RuleSet) -> Result<Self, ClassifierError> {
        let total = config.num_queues;
        if total == 0 {
            return Err(ClassifierError::NoQueues);
        }
        if config.high_queues == 0 || config.high_queues > total {
            return Err(ClassifierError::BadHighQueueCount {
                high: config.high_queues,
                total,
            });
        }
        for rule in rules.rules() {
            if let RuleAction::Set {
                queue: Some(queue), ..
            } = rule.action
                && queue >= total
            {
                return Err(ClassifierError::RuleQueueOutOfRange {
                    location: rule.location,
                    queue,
                    total,
                });
            }
        }
        let high: Vec<u16> = (0..config.high_queues).collect();
        let normal: Vec<u16> = if config.high_queues == total {
            (0..total).collect()
        } else {
            (config.high_queues..total).collect()
        };
        Ok(Classifier {
            id: NEXT_CLASSIFIER_ID.fetch_add(1, Ordering::Relaxed),
            rules,
            trust: config.trust.clone(),
            vxlan_ports: config.vxlan_ports.clone().into_boxed_slice(),
            toeplitz: Toeplitz::new(&config.rss_key),
            high_table: IndirectionTable::new(&high, config.indirection_len)?,
            normal_table: IndirectionTable::new(&normal, config.indirection_len)?,
            first_high: high[0],
            first_normal: normal[0],
            single_queue: total == 1,
        })
    }

    /// The compiled rules (for their hit counters).
    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Classifies one frame.
    #[inline]
    pub fn classify(&self, frame: &[u8]) -> Decision {
        if let Some(decision) = self.classify_plain_ipv4(frame) {
            return decision;
        }
        let mut parsed = Parsed::default();
        FlowKey::parse_into(frame, &self.vxlan_ports, &mut parsed);
        if let Some(error) = parsed.error {
            return self.parse_error_decision(error);
        }
        let key = &parsed.key;
        if self.rules.is_empty() || !self.rules.may_match(key) {
            // No rule can match (with rules, the case of most frames: rules pick out a few
            // flows). The screen proved it in fewer steps than a cache probe takes.
            return self.decide(key, None).decision;
        }
        self.classify_cached(key)
    }

    /// The decision for the commonest frame, untagged IPv4 without options or fragments
    /// (TCP, UDP other than VXLAN, or another protocol), when no rule can match it: read
    /// straight from the frame, the same decision the full parse leads to (a test holds the
    /// two to it over frames of every kind, with and without rules). `None` for any other
    /// frame, and for one the rule screen says a rule may match: those take the full parse.
    /// Building the full key (two layers of optional fields, IPv6-sized addresses) and
    /// reading it back showed in profiles of the switching path at 64 bytes; with rules, most
    /// frames match none (rules pick out a few flows), so the screen runs on the header's
    /// fields.
    #[inline(always)]
    fn classify_plain_ipv4(&self, frame: &[u8]) -> Option<Decision> {
        let header: &[u8; 34] = frame.get(..34)?.try_into().ok()?;
        let be16 = |at: usize| u16::from_be_bytes([header[at], header[at + 1]]);
        // IPv4 with a 20-byte header, neither a fragment nor a first fragment.
        if be16(12) != ethertype::IPV4 || header[14] != 0x45 || be16(20) & 0x3fff != 0 {
            return None;
        }
        let total_len = usize::from(be16(16));
        if total_len < 20 {
            return None;
        }
        // The transport header inside both the packet's announced length and the frame.
        let l4 = &frame[34..(14 + total_len).min(frame.len())];
        let ports = match header[23] {
            ip_proto::UDP => {
                let udp = l4.get(..8)?;
                let (src, dst) = (
                    u16::from_be_bytes([udp[0], udp[1]]),
                    u16::from_be_bytes([udp[2], udp[3]]),
                );
                if parse::is_vxlan_port(&self.vxlan_ports, dst) {
                    return None;
                }
                Some((src, dst))
            }
            ip_proto::TCP => {
                let tcp = l4.get(..20)?;
                let data_offset = usize::from(tcp[12] >> 4) * 4;
                if data_offset < 20 || l4.len() < data_offset {
                    return None;
                }
                Some((
                    u16::from_be_bytes([tcp[0], tcp[1]]),
                    u16::from_be_bytes([tcp[2], tcp[3]]),
                ))
            }
            _ => None,
        };
        let be32 = |at: usize| {
            u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
        };
        if !self.rules.is_empty()
            && self
                .rules
                .may_match_plain_ipv4(be32(26), be32(30), header[15] >> 2, ports)
        {
            return None;
        }
        let class = match &self.trust {
            Trust::Dscp { high } if high[usize::from(header[15] >> 2)] => Class::High,
            // Untagged: PCP trust finds nothing to trust.
            _ => Class::Normal,
        };
        let addresses = || {
            let ip = |at: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    header[at],
                    header[at + 1],
                    header[at + 2],
                    header[at + 3],
                ))
            };
            (ip(26), ip(30))
        };
        Some(Decision {
            class,
            queue: self.rss_queue_of(class, addresses, ports),
            rule: None,
            drop: false,
            parse_error: None,
        })
    }

    /// The decision for a parsed frame some rule may match: from this thread's flow cache,
    /// else computed and cached. Out of line: the common case above stays small.
    #[inline(never)]
    fn classify_cached(&self, key: &FlowKey) -> Decision {
        let mut packed = PackedKey::default();
        packed.pack(key);
        if packed.is_complete() {
            packed.words[0] = self.id;
            let cached = cache::with_thread_cache(|cache| {
                let cached = cache.get_or_insert(&packed, || self.decide_with_rules(key));
                if let Some(index) = cached.rule_index {
                    cache.count_hit(self.id, &self.rules, index as usize);
                }
                cached.decision
            });
            if let Some(decision) = cached {
                return decision;
            }
        }
        let decided = self.decide_with_rules(key);
        if let Some(index) = decided.rule_index {
            self.rules.count_hit(index as usize);
        }
        decided.decision
    }

    /// The decision for a frame the parser could not finish: the defaults, with the reason.
    fn parse_error_decision(&self, error: ParseError) -> Decision {
        Decision {
            class: Class::Normal,
            queue: QueueChoice::Default(self.first_normal),
            rule: None,
            drop: false,
            parse_error: Some(error),
        }
    }

    /// [`classify`](Self::classify) without the flow cache: the reference the cache must
    /// agree with (tests and benchmarks compare the two). Counts the hit too.
    pub fn classify_uncached(&self, frame: &[u8]) -> Decision {
        let mut parsed = Parsed::default();
        FlowKey::parse_into(frame, &self.vxlan_ports, &mut parsed);
        if let Some(error) = parsed.error {
            return self.parse_error_decision(error);
        }
        let decided = self.decide_with_rules(&parsed.key);
        if let Some(index) = decided.rule_index {
            self.rules.count_hit(index as usize);
        }
        decided.decision
    }

    /// [`decide`](Self::decide) with the rule lookup.
    #[inline]
    fn decide_with_rules(&self, key: &FlowKey) -> Cached {
        self.decide(key, self.rules.find_index(key))
    }

    /// The decision for a parsed frame given the index of the rule that matches it, if one
    /// does (the caller looked it up, or knows there are no rules); counts nothing.
    #[inline(always)]
    fn decide(&self, key: &FlowKey, rule_index: Option<usize>) -> Cached {
        // Trust and RSS look at the innermost headers the parser reached.
        let flow_layer = match &key.inner {
            Some(inner) if inner.src_ip.is_some() => inner,
            _ => &key.outer,
        };
        let mut decision = Decision {
            class: self.trust.class_of(flow_layer),
            queue: QueueChoice::Default(self.first_normal),
            rule: None,
            drop: false,
            parse_error: None,
        };
        let mut rule_queue = None;
        if let Some(rule) = rule_index.and_then(|index| self.rules.rules().get(index)) {
            decision.rule = Some(rule.location);
            match rule.action {
                RuleAction::Drop => {
                    decision.drop = true;
                    return Cached {
                        rule_index: rule_index.map(|index| index as u32),
                        decision,
                    };
                }
                RuleAction::Set { queue, class } => {
                    if let Some(class) = class {
                        decision.class = class;
                    }
                    rule_queue = queue;
                }
            }
        }
        decision.queue = match rule_queue {
            Some(queue) => QueueChoice::Rule(queue),
            None => self.rss_queue(decision.class, flow_layer),
        };
        Cached {
            rule_index: rule_index.map(|index| index as u32),
            decision,
        }
    }

    /// The queue of a frame of `class` not steered by a rule.
    #[inline(always)]
    fn rss_queue(&self, class: Class, layer: &LayerKey) -> QueueChoice {
        let (Some(src), Some(dst)) = (layer.src_ip, layer.dst_ip) else {
            return QueueChoice::Default(self.first_of(class));
        };
        // The 4-tuple for TCP/UDP with ports (first fragments excluded: later fragments of the
        // same datagram have no ports and must land on the same queue), else the 2-tuple.
        let ports = match (layer.proto, layer.src_port, layer.dst_port) {
            (Some(ip_proto::TCP | ip_proto::UDP), Some(s), Some(d)) if !layer.fragment => {
                Some((s, d))
            }
            _ => None,
        };
        self.rss_queue_of(class, || (src, dst), ports)
    }

    /// The first queue of `class`'s set.
    #[inline(always)]
    fn first_of(&self, class: Class) -> u16 {
        match class {
            Class::High => self.first_high,
            Class::Normal => self.first_normal,
        }
    }

    /// The queue of a frame of `class` with `addresses` (read only when there is a choice
    /// to make) and `ports`, by the Toeplitz hash over `class`'s queue set.
    #[inline(always)]
    fn rss_queue_of(
        &self,
        class: Class,
        addresses: impl FnOnce() -> (IpAddr, IpAddr),
        ports: Option<(u16, u16)>,
    ) -> QueueChoice {
        if self.single_queue {
            return QueueChoice::Default(self.first_of(class));
        }
        let table = match class {
            Class::High => &self.high_table,
            Class::Normal => &self.normal_table,
        };
        let (src, dst) = addresses();
        let hash = self.toeplitz.hash_flow(src, dst, ports);
        QueueChoice::Rss {
            queue: table.queue(hash),
            hash,
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
pub(crate) mod test_frames;
