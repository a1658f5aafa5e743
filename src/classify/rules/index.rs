//! The lookup structures of a rule set: buckets keyed by each rule's most selective exact
//! field, a residual list, the prefix shapes in use, and the [`RuleScreen`] that proves "no
//! rule can match this frame" without a probe (see the `rules` module for how they fit).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;

use super::{IpPrefix, Layer, Rule, RuleMatch, address_bits};
use crate::classify::parse::{FlowKey, LayerKey};
use crate::packet::ip_proto;

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

/// The bucket kinds, also bits of [`RuleIndex`]'s `present` mask.
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

/// Which values of each bucketed field some rule names, for [`RuleIndex::may_match`]. A bucket
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
    /// screened per shape by [`RuleIndex::may_match`]).
    #[inline(always)]
    fn layer_may_match(&self, layer: &LayerKey) -> bool {
        self.fields_may_match(layer.dst_port, layer.src_port, layer.dscp)
    }

    /// [`layer_may_match`](Self::layer_may_match) on the fields themselves.
    #[inline(always)]
    fn fields_may_match(
        &self,
        dst_port: Option<u16>,
        src_port: Option<u16>,
        dscp: Option<u8>,
    ) -> bool {
        // Plain `|`: the tests are cheap and independent, and no branch is then mispredicted
        // on which of them fires.
        dst_port.is_some_and(|port| self.test(Self::port_position(Self::DST_PORTS, port)))
            | src_port.is_some_and(|port| self.test(Self::port_position(Self::SRC_PORTS, port)))
            | dscp.is_some_and(|dscp| self.dscps & (1 << (dscp & 63)) != 0)
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

/// The lookup structures of a rule set's rules (held in location order by the set; the lists
/// here are indices into them, ascending).
#[derive(Debug, Default)]
pub(super) struct RuleIndex {
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

impl RuleIndex {
    /// Indexes `rules`, sorted by location with no location twice.
    pub(super) fn new(rules: &[Rule]) -> Self {
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
        RuleIndex {
            buckets,
            residual: residual.into_boxed_slice(),
            net_shapes: net_shapes.into_boxed_slice(),
            present,
            screen,
            outer_v4_shapes,
            other_shapes: other_shapes.into_boxed_slice(),
            screen_passes_all,
        }
    }

    /// The index (in location order) of the lowest-location rule matching `key`.
    #[inline]
    pub(super) fn find_index(&self, rules: &[Rule], key: &FlowKey) -> Option<usize> {
        if rules.is_empty() {
            return None;
        }
        let mut best = u32::MAX;
        let mut scan = |list: &[u32]| {
            for &index in list {
                if index >= best {
                    return;
                }
                if rules[index as usize].matches.matches(key) {
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
    pub(super) fn may_match(&self, key: &FlowKey) -> bool {
        if self.screen_passes_all {
            return true;
        }
        let outer = &key.outer;
        let mut hit = self.screen.layer_may_match(outer);
        if !self.outer_v4_shapes.is_empty() {
            match (outer.src_ip, outer.dst_ip) {
                (Some(IpAddr::V4(src)), Some(IpAddr::V4(dst))) => {
                    hit |= self.outer_v4_networks_may_match(u32::from(src), u32::from(dst));
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

    /// [`may_match`](Self::may_match) for an untagged IPv4 frame outside a tunnel, from the
    /// fields the classifier's shortcut read straight from its header (`ports`: source and
    /// destination, for TCP and UDP). Such a frame has no inner layer, VNI or IPv6 address,
    /// so of the screen only its ports, DSCP and outer IPv4 prefixes apply: the same answer
    /// as `may_match` on its parsed key (a test holds the two to it), without the parse.
    #[inline(always)]
    pub(super) fn may_match_plain_ipv4(
        &self,
        src: u32,
        dst: u32,
        dscp: u8,
        ports: Option<(u16, u16)>,
    ) -> bool {
        if self.screen_passes_all {
            return true;
        }
        let (src_port, dst_port) = (ports.map(|(src, _)| src), ports.map(|(_, dst)| dst));
        self.screen.fields_may_match(dst_port, src_port, Some(dscp))
            | (!self.outer_v4_shapes.is_empty() && self.outer_v4_networks_may_match(src, dst))
    }

    /// Whether an outer IPv4 prefix some rule names may hold the frame's source or
    /// destination (whichever each shape is of).
    ///
    /// A plain loop: written as a `fold` over the shapes, LLVM left the fold out of line, and
    /// the call (the addresses passed through memory) was most of what rules cost a frame.
    #[inline(always)]
    fn outer_v4_networks_may_match(&self, src: u32, dst: u32) -> bool {
        let mut hit = false;
        for shape in self.outer_v4_shapes.iter() {
            let address = dst ^ ((src ^ dst) & shape.select);
            let key = u64::from(address & shape.mask) ^ shape.tag;
            hit |= self.screen.may_contain_network(key);
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
