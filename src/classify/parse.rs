//! Extracting the fields classification looks at, without reading past the frame.
//!
//! [`FlowKey::parse`] walks Ethernet, up to two VLAN tags, IPv4 (options) or IPv6 (extension
//! headers), TCP/UDP ports, and, when the outer UDP destination port is a VXLAN port, the VNI
//! and the inner frame the same way. A field is reported only once the whole header that holds
//! it is inside the frame, so a truncated frame yields a prefix of what the full frame would:
//! the [`Parsed`] says how far the walk got ([`Parsed::reached`]) and why it stopped
//! ([`Parsed::error`]), and the classifier sends such frames to the default class.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::packet::Error as ViewError;
use crate::packet::ethernet::{
    EthernetFrame, HEADER_LEN as ETH_LEN, VLAN_TAG_LEN, VlanTag, ethertype,
};
use crate::packet::ipv4::Ipv4Packet;
use crate::packet::ipv6::{Ipv6Packet, skip_extension_headers};
use crate::packet::tcp::TcpPacket;
use crate::packet::udp::UdpPacket;
use crate::packet::vxlan::{self, VxlanPacket};

/// IP protocol numbers the classifier names.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
}

/// One VLAN tag's id and priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Vlan {
    pub vid: u16,
    pub pcp: u8,
}

/// Most tags recorded per layer.
pub const MAX_TAGS: usize = 2;

/// The fields of one header stack (the outer frame, or the frame inside VXLAN). `None` means
/// "not present or not reached".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LayerKey {
    /// Outermost first; only the first `vlan_count` entries are meaningful.
    pub vlans: [Vlan; MAX_TAGS],
    pub vlan_count: u8,
    /// The EtherType after the tags.
    pub ethertype: Option<u16>,
    pub src_ip: Option<IpAddr>,
    pub dst_ip: Option<IpAddr>,
    pub dscp: Option<u8>,
    /// The upper-layer protocol (after IPv6 extension headers).
    pub proto: Option<u8>,
    /// The packet is an IP fragment (ports only in the first fragment).
    pub fragment: bool,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
}

impl LayerKey {
    /// The tags present, outermost first.
    #[inline]
    pub fn vlans(&self) -> &[Vlan] {
        &self.vlans[..usize::from(self.vlan_count).min(MAX_TAGS)]
    }

    /// The outermost tag, which VLAN and PCP rules match.
    #[inline]
    pub fn outer_vlan(&self) -> Option<Vlan> {
        self.vlans().first().copied()
    }
}

/// What the classifier knows about a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowKey {
    pub outer: LayerKey,
    /// The VXLAN network identifier, when the outer UDP destination port is a VXLAN port.
    pub vni: Option<u32>,
    /// The encapsulated frame's fields (present once the VXLAN header was read).
    pub inner: Option<LayerKey>,
}

/// How far [`FlowKey::parse`] got: the last header it read completely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Stage {
    #[default]
    Nothing,
    OuterL2,
    OuterL3,
    OuterL4,
    Vxlan,
    InnerL2,
    InnerL3,
    InnerL4,
}

/// Why the walk stopped early. Each is a counter in the classifier's statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ParseError {
    #[error("Ethernet header truncated")]
    EthernetTruncated,
    #[error("VLAN tag truncated")]
    VlanTruncated,
    #[error("more than two VLAN tags")]
    TooManyVlanTags,
    #[error("IPv4 header truncated")]
    Ipv4Truncated,
    #[error("IPv4 header malformed")]
    Ipv4Malformed,
    #[error("IPv6 header truncated")]
    Ipv6Truncated,
    #[error("IPv6 header malformed")]
    Ipv6Malformed,
    #[error("IPv6 extension header truncated")]
    Ipv6ExtensionTruncated,
    #[error("IPv6 extension header chain too long")]
    Ipv6ExtensionChainTooLong,
    #[error("TCP header truncated")]
    TcpTruncated,
    #[error("TCP header malformed")]
    TcpMalformed,
    #[error("UDP header truncated")]
    UdpTruncated,
    #[error("VXLAN header truncated")]
    VxlanTruncated,
    #[error("VXLAN header without the VNI flag")]
    VxlanNoVni,
}

impl ParseError {
    /// Every reason, in [`index`](Self::index) order (for counter arrays).
    pub const ALL: [ParseError; 14] = [
        ParseError::EthernetTruncated,
        ParseError::VlanTruncated,
        ParseError::TooManyVlanTags,
        ParseError::Ipv4Truncated,
        ParseError::Ipv4Malformed,
        ParseError::Ipv6Truncated,
        ParseError::Ipv6Malformed,
        ParseError::Ipv6ExtensionTruncated,
        ParseError::Ipv6ExtensionChainTooLong,
        ParseError::TcpTruncated,
        ParseError::TcpMalformed,
        ParseError::UdpTruncated,
        ParseError::VxlanTruncated,
        ParseError::VxlanNoVni,
    ];

    /// A dense index for counter arrays.
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }

    /// A stable snake_case name for counters.
    #[inline]
    pub fn name(self) -> &'static str {
        match self {
            ParseError::EthernetTruncated => "ethernet_truncated",
            ParseError::VlanTruncated => "vlan_truncated",
            ParseError::TooManyVlanTags => "too_many_vlan_tags",
            ParseError::Ipv4Truncated => "ipv4_truncated",
            ParseError::Ipv4Malformed => "ipv4_malformed",
            ParseError::Ipv6Truncated => "ipv6_truncated",
            ParseError::Ipv6Malformed => "ipv6_malformed",
            ParseError::Ipv6ExtensionTruncated => "ipv6_extension_truncated",
            ParseError::Ipv6ExtensionChainTooLong => "ipv6_extension_chain_too_long",
            ParseError::TcpTruncated => "tcp_truncated",
            ParseError::TcpMalformed => "tcp_malformed",
            ParseError::UdpTruncated => "udp_truncated",
            ParseError::VxlanTruncated => "vxlan_truncated",
            ParseError::VxlanNoVni => "vxlan_no_vni",
        }
    }
}

/// Words in a [`PackedKey`].
pub const PACKED_WORDS: usize = 12;

/// The fields of a [`FlowKey`] that classification depends on, packed into words while
/// parsing (by [`FlowKey::parse_packed_into`]), as the flow cache's key ([`super::cache`]).
///
/// `words[0]` is left 0 for the classifier to put its id in. `words[1]` holds the VNI
/// (bits 0..24), the outer layer's [`packed`] flags (bits 24..32), the inner layer's (32..40),
/// and whether there is a VNI (bit 40) and an inner layer (bit 41). Then, per layer reached,
/// outer first: its addresses (IPv4: one word, source in the high half; IPv6: four words,
/// source first, high half first) when it has IP, then its meta word: source port (bits
/// 48..64), destination port (32..48), protocol (24..32), DSCP (16..24), and the outermost
/// VLAN tag's PCP and id (bits 0..16, as in the tag with the DEI bit clear). Absent fields are
/// 0 and the flags say which are present, so equal words mean equal fields (given the flags in
/// `words[1]`, the layout of the rest is fixed); unused words stay 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PackedKey {
    pub words: [u64; PACKED_WORDS],
    /// Words in use (2 to 12).
    pub len: usize,
}

/// Layout of [`PackedKey`]'s misc word and per-layer flags.
pub mod packed {
    /// A VLAN tag is present (its PCP and id are in the meta word).
    pub const VLAN: u64 = 1 << 0;
    /// IPv4 addresses, DSCP and protocol are present.
    pub const IPV4: u64 = 1 << 1;
    /// IPv6 addresses, DSCP and protocol are present.
    pub const IPV6: u64 = 1 << 2;
    /// Source and destination ports are present.
    pub const PORTS: u64 = 1 << 3;
    /// The packet is an IP fragment.
    pub const FRAGMENT: u64 = 1 << 4;
    pub const OUTER_FLAGS_SHIFT: u32 = 24;
    pub const INNER_FLAGS_SHIFT: u32 = 32;
    pub const HAS_VNI: u64 = 1 << 40;
    pub const HAS_INNER: u64 = 1 << 41;
}

impl PackedKey {
    /// Appends a word (a full key is a bug in this module: the word is dropped, and the key,
    /// which then misses a field, is marked unusable by `len` past the end).
    #[inline(always)]
    fn push(&mut self, word: u64) {
        if let Some(slot) = self.words.get_mut(self.len) {
            *slot = word;
        }
        self.len += 1;
    }

    /// True when every field fitted (always, for keys the parser makes).
    #[inline]
    pub fn is_complete(&self) -> bool {
        self.len <= PACKED_WORDS
    }
}

/// What the walk reports, field by field, besides the [`LayerKey`]: nothing for plain parsing
/// ([`NoPacking`], which compiles away), the packed key's words for the flow cache
/// ([`LayerPacker`]).
trait Packer {
    fn vlan(&mut self, vid: u16, pcp: u8);
    fn ipv4(&mut self, src: [u8; 4], dst: [u8; 4], dscp: u8, proto: u8, fragment: bool);
    fn ipv6(&mut self, src: [u8; 16], dst: [u8; 16], dscp: u8, proto: u8, fragment: bool);
    fn ports(&mut self, src: u16, dst: u16);
    /// The layer's walk ended without an error.
    fn finish(self, flags_shift: u32);
}

struct NoPacking;

impl Packer for NoPacking {
    #[inline(always)]
    fn vlan(&mut self, _: u16, _: u8) {}
    #[inline(always)]
    fn ipv4(&mut self, _: [u8; 4], _: [u8; 4], _: u8, _: u8, _: bool) {}
    #[inline(always)]
    fn ipv6(&mut self, _: [u8; 16], _: [u8; 16], _: u8, _: u8, _: bool) {}
    #[inline(always)]
    fn ports(&mut self, _: u16, _: u16) {}
    #[inline(always)]
    fn finish(self, _: u32) {}
}

/// Collects one layer's words for a [`PackedKey`].
struct LayerPacker<'a> {
    packed: &'a mut PackedKey,
    flags: u64,
    meta: u64,
}

impl LayerPacker<'_> {
    #[inline(always)]
    fn ip_meta(&mut self, family: u64, dscp: u8, proto: u8, fragment: bool) {
        self.flags |= family;
        if fragment {
            self.flags |= packed::FRAGMENT;
        }
        self.meta |= (u64::from(proto) << 24) | (u64::from(dscp) << 16);
    }
}

impl Packer for LayerPacker<'_> {
    #[inline(always)]
    fn vlan(&mut self, vid: u16, pcp: u8) {
        self.flags |= packed::VLAN;
        self.meta |= (u64::from(pcp & 7) << 13) | u64::from(vid & 0x0fff);
    }

    #[inline(always)]
    fn ipv4(&mut self, src: [u8; 4], dst: [u8; 4], dscp: u8, proto: u8, fragment: bool) {
        let addrs = (u64::from(u32::from_be_bytes(src)) << 32) | u64::from(u32::from_be_bytes(dst));
        self.packed.push(addrs);
        self.ip_meta(packed::IPV4, dscp, proto, fragment);
    }

    #[inline(always)]
    fn ipv6(&mut self, src: [u8; 16], dst: [u8; 16], dscp: u8, proto: u8, fragment: bool) {
        for addr in [u128::from_be_bytes(src), u128::from_be_bytes(dst)] {
            self.packed.push((addr >> 64) as u64);
            self.packed.push(addr as u64);
        }
        self.ip_meta(packed::IPV6, dscp, proto, fragment);
    }

    #[inline(always)]
    fn ports(&mut self, src: u16, dst: u16) {
        self.flags |= packed::PORTS;
        self.meta |= (u64::from(src) << 48) | (u64::from(dst) << 32);
    }

    /// Appends the meta word and puts the flags in the misc word.
    #[inline(always)]
    fn finish(self, flags_shift: u32) {
        self.packed.push(self.meta);
        self.packed.words[1] |= self.flags << flags_shift;
    }
}

/// The result of [`FlowKey::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Parsed {
    pub key: FlowKey,
    /// The last header read completely.
    pub reached: Stage,
    /// Why the walk stopped before the end of the headers it understands, if it did.
    pub error: Option<ParseError>,
}

/// What the VXLAN step needs from the outer layer: the UDP payload, if the layer was UDP.
struct LayerEnd<'a> {
    udp_payload: Option<&'a [u8]>,
}

/// The three stages of one layer, so one walk serves outer and inner, and where the layer's
/// flags go in a [`PackedKey`].
struct LayerStages {
    l2: Stage,
    l3: Stage,
    l4: Stage,
    flags_shift: u32,
}

const OUTER: LayerStages = LayerStages {
    l2: Stage::OuterL2,
    l3: Stage::OuterL3,
    l4: Stage::OuterL4,
    flags_shift: packed::OUTER_FLAGS_SHIFT,
};
const INNER: LayerStages = LayerStages {
    l2: Stage::InnerL2,
    l3: Stage::InnerL3,
    l4: Stage::InnerL4,
    flags_shift: packed::INNER_FLAGS_SHIFT,
};

impl FlowKey {
    /// Parses `frame`; UDP destination ports in `vxlan_ports` (usually
    /// [`vxlan::DEFAULT_PORT`]) are decapsulated once (no VXLAN inside VXLAN).
    #[inline]
    pub fn parse(frame: &[u8], vxlan_ports: &[u16]) -> Parsed {
        let mut parsed = Parsed::default();
        Self::parse_into(frame, vxlan_ports, &mut parsed);
        parsed
    }

    /// [`parse`](Self::parse) into a caller's `Parsed` (reset first), which saves copying the
    /// result around on the hot path.
    #[inline]
    pub fn parse_into(frame: &[u8], vxlan_ports: &[u16], parsed: &mut Parsed) {
        *parsed = Parsed::default();
        let Some(udp_payload) = parse_outer(frame, vxlan_ports, parsed, NoPacking) else {
            return;
        };
        parse_vxlan(udp_payload, parsed, NoPacking);
    }

    /// [`parse_into`](Self::parse_into), also packing the fields into `packed` (reset
    /// first; meaningful when `parsed.error` is `None`). Word 0 is left 0.
    #[inline]
    pub fn parse_packed_into(
        frame: &[u8],
        vxlan_ports: &[u16],
        parsed: &mut Parsed,
        packed: &mut PackedKey,
    ) {
        *parsed = Parsed::default();
        *packed = PackedKey {
            words: [0; PACKED_WORDS],
            len: 2,
        };
        let outer = LayerPacker {
            packed: &mut *packed,
            flags: 0,
            meta: 0,
        };
        let Some(udp_payload) = parse_outer(frame, vxlan_ports, parsed, outer) else {
            return;
        };
        let inner = LayerPacker {
            packed: &mut *packed,
            flags: 0,
            meta: 0,
        };
        if let Some(vni) = parse_vxlan(udp_payload, parsed, inner) {
            packed.words[1] |= u64::from(vni & 0x00ff_ffff) | packed::HAS_VNI | packed::HAS_INNER;
        }
    }
}

/// Parses the outer layer; returns the UDP payload when it is to be decapsulated as VXLAN.
#[inline(always)]
fn parse_outer<'a>(
    frame: &'a [u8],
    vxlan_ports: &[u16],
    parsed: &mut Parsed,
    packer: impl Packer,
) -> Option<&'a [u8]> {
    let end = match parse_layer(
        frame,
        &mut parsed.key.outer,
        &mut parsed.reached,
        &OUTER,
        packer,
    ) {
        Ok(end) => end,
        Err(error) => {
            parsed.error = Some(error);
            return None;
        }
    };
    let (Some(udp_payload), Some(port)) = (end.udp_payload, parsed.key.outer.dst_port) else {
        return None;
    };
    vxlan_ports.contains(&port).then_some(udp_payload)
}

/// Parses the VXLAN header and the inner layer; returns the VNI once the header was read.
#[inline(always)]
fn parse_vxlan(udp_payload: &[u8], parsed: &mut Parsed, packer: impl Packer) -> Option<u32> {
    let vxlan = match VxlanPacket::new_checked(udp_payload) {
        Ok(vxlan) => vxlan,
        Err(ViewError::Truncated) => {
            parsed.error = Some(ParseError::VxlanTruncated);
            return None;
        }
        Err(ViewError::Malformed) => {
            parsed.error = Some(ParseError::VxlanNoVni);
            return None;
        }
    };
    let vni = vxlan.vni();
    parsed.key.vni = Some(vni);
    parsed.reached = Stage::Vxlan;
    let inner = parsed.key.inner.insert(LayerKey::default());
    let result = parse_layer(
        vxlan.into_payload(),
        inner,
        &mut parsed.reached,
        &INNER,
        packer,
    );
    if let Err(error) = result {
        parsed.error = Some(error);
    }
    Some(vni)
}

/// Walks one Ethernet/VLAN/IP/L4 stack, filling `key` (and telling `packer`) as each header
/// proves complete.
#[inline]
fn parse_layer<'a>(
    frame: &'a [u8],
    key: &mut LayerKey,
    reached: &mut Stage,
    stages: &LayerStages,
    mut packer: impl Packer,
) -> Result<LayerEnd<'a>, ParseError> {
    let end = walk_layer(frame, key, reached, stages, &mut packer)?;
    packer.finish(stages.flags_shift);
    Ok(end)
}

#[inline(always)]
fn walk_layer<'a>(
    frame: &'a [u8],
    key: &mut LayerKey,
    reached: &mut Stage,
    stages: &LayerStages,
    packer: &mut impl Packer,
) -> Result<LayerEnd<'a>, ParseError> {
    let none = LayerEnd { udp_payload: None };
    let eth = EthernetFrame::new_checked(frame).map_err(|_| ParseError::EthernetTruncated)?;
    let mut ether = eth.ethertype();
    let mut offset = ETH_LEN;
    let mut tags = 0usize;
    while ethertype::is_vlan_tpid(ether) {
        if tags == MAX_TAGS {
            return Err(ParseError::TooManyVlanTags);
        }
        let tag = VlanTag::new_checked(&frame[offset..]).map_err(|_| ParseError::VlanTruncated)?;
        let tci = tag.tci();
        key.vlans[tags] = Vlan {
            vid: tci.vid(),
            pcp: tci.pcp(),
        };
        if tags == 0 {
            packer.vlan(tci.vid(), tci.pcp());
        }
        tags += 1;
        key.vlan_count = tags as u8;
        ether = tag.ethertype();
        offset += VLAN_TAG_LEN;
    }
    key.ethertype = Some(ether);
    *reached = stages.l2;

    let l3 = &frame[offset..];
    // The transport header is looked for inside the IP packet's announced length (so Ethernet
    // padding is never read as ports) and inside the frame (so a cut frame stops at the cut).
    let (proto, l4, later_fragment) = match ether {
        ethertype::IPV4 => {
            let ip = Ipv4Packet::new_checked_header(l3).map_err(|error| match error {
                ViewError::Truncated => ParseError::Ipv4Truncated,
                ViewError::Malformed => ParseError::Ipv4Malformed,
            })?;
            let (src, dst) = (ip.src_addr(), ip.dst_addr());
            key.src_ip = Some(IpAddr::V4(Ipv4Addr::from(src)));
            key.dst_ip = Some(IpAddr::V4(Ipv4Addr::from(dst)));
            key.dscp = Some(ip.dscp());
            key.proto = Some(ip.protocol());
            key.fragment = ip.is_fragment();
            packer.ipv4(src, dst, ip.dscp(), ip.protocol(), key.fragment);
            (ip.protocol(), ip.into_payload(), ip.fragment_offset() != 0)
        }
        ethertype::IPV6 => {
            let ip = Ipv6Packet::new_checked_header(l3).map_err(|error| match error {
                ViewError::Truncated => ParseError::Ipv6Truncated,
                ViewError::Malformed => ParseError::Ipv6Malformed,
            })?;
            let (src, dst) = (ip.src_addr(), ip.dst_addr());
            key.src_ip = Some(IpAddr::V6(Ipv6Addr::from(src)));
            key.dst_ip = Some(IpAddr::V6(Ipv6Addr::from(dst)));
            key.dscp = Some(ip.dscp());
            let payload = ip.into_payload();
            let upper =
                skip_extension_headers(ip.next_header(), payload).map_err(|error| match error {
                    ViewError::Truncated => ParseError::Ipv6ExtensionTruncated,
                    ViewError::Malformed => ParseError::Ipv6ExtensionChainTooLong,
                })?;
            key.proto = Some(upper.protocol);
            key.fragment = upper.is_fragment;
            packer.ipv6(src, dst, ip.dscp(), upper.protocol, upper.is_fragment);
            let upper_bytes = payload.get(upper.offset..).unwrap_or(&[]);
            (upper.protocol, upper_bytes, upper.later_fragment)
        }
        _ => return Ok(none),
    };
    *reached = stages.l3;
    if later_fragment {
        return Ok(none);
    }

    match proto {
        proto::TCP => {
            let tcp = TcpPacket::new_checked(l4).map_err(|error| match error {
                ViewError::Truncated => ParseError::TcpTruncated,
                ViewError::Malformed => ParseError::TcpMalformed,
            })?;
            key.src_port = Some(tcp.src_port());
            key.dst_port = Some(tcp.dst_port());
            packer.ports(tcp.src_port(), tcp.dst_port());
            *reached = stages.l4;
            Ok(none)
        }
        proto::UDP => {
            let udp = UdpPacket::new_checked(l4).map_err(|_| ParseError::UdpTruncated)?;
            key.src_port = Some(udp.src_port());
            key.dst_port = Some(udp.dst_port());
            packer.ports(udp.src_port(), udp.dst_port());
            *reached = stages.l4;
            Ok(LayerEnd {
                udp_payload: Some(udp.into_payload()),
            })
        }
        _ => Ok(none),
    }
}

/// The ports to decapsulate by default.
pub const DEFAULT_VXLAN_PORTS: [u16; 1] = [vxlan::DEFAULT_PORT];

#[cfg(test)]
mod tests;
