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
use crate::packet::ip_proto;
use crate::packet::ipv4::Ipv4Packet;
use crate::packet::ipv6::{Ipv6Packet, skip_extension_headers};
use crate::packet::tcp::TcpPacket;
use crate::packet::udp::UdpPacket;
use crate::packet::vxlan::{self, VxlanPacket};

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

/// The fields of a [`FlowKey`] that classification depends on, packed into words
/// ([`PackedKey::of`]), as the flow cache's key ([`super::cache`]). Packed after parsing, and
/// only for frames the classifier looks up in the cache: most frames with rules are decided
/// without it (see [`super`]), and would pay for the packing for nothing.
///
/// `words[0]` is left 0 for the classifier to put its id in. `words[1]` holds the VNI
/// (bits 0..24), the outer layer's [`packed`] flags (bits 24..36), the inner layer's (36..48),
/// and whether there is a VNI (bit 48) and an inner layer (bit 49). Then, per layer present,
/// outer first: its addresses (two IPv4 addresses: one word, source in the high half; else
/// each address present, source first: IPv4 one word, IPv6 two, high half first), then its
/// meta word: source port (bits 48..64), destination port (32..48), protocol (24..32), DSCP
/// (16..24), and the outermost VLAN tag's PCP and id (bits 0..16, as in the tag with the DEI
/// bit clear). Absent fields are 0 and the flags say which are present, so equal words mean
/// equal fields (given the flags in `words[1]`, the layout of the rest is fixed) for every
/// key the parser makes (its VLAN ids fit 12 bits, PCPs 3, DSCPs 6, VNIs 24); unused words
/// stay 0.
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
    /// The source (destination) address is present, IPv4 or IPv6.
    pub const SRC_V4: u64 = 1 << 1;
    pub const SRC_V6: u64 = 1 << 2;
    pub const DST_V4: u64 = 1 << 3;
    pub const DST_V6: u64 = 1 << 4;
    /// DSCP, protocol, source port and destination port are present.
    pub const DSCP: u64 = 1 << 5;
    pub const PROTO: u64 = 1 << 6;
    pub const SRC_PORT: u64 = 1 << 7;
    pub const DST_PORT: u64 = 1 << 8;
    /// The packet is an IP fragment.
    pub const FRAGMENT: u64 = 1 << 9;
    pub const OUTER_FLAGS_SHIFT: u32 = 24;
    pub const INNER_FLAGS_SHIFT: u32 = 36;
    pub const HAS_VNI: u64 = 1 << 48;
    pub const HAS_INNER: u64 = 1 << 49;
}

impl PackedKey {
    /// The packed form of `key`, word 0 left 0.
    #[inline]
    pub fn of(key: &FlowKey) -> PackedKey {
        let mut packed = PackedKey::default();
        packed.pack(key);
        packed
    }

    /// Packs `key` into `self` (all of it rewritten, word 0 left 0): in place, where the
    /// caller keeps its key, rather than built elsewhere and copied there.
    #[inline(always)]
    pub fn pack(&mut self, key: &FlowKey) {
        self.words = [0; PACKED_WORDS];
        self.len = 2;
        let mut misc = self.push_layer(&key.outer) << packed::OUTER_FLAGS_SHIFT;
        if let Some(vni) = key.vni {
            misc |= u64::from(vni & 0x00ff_ffff) | packed::HAS_VNI;
        }
        if let Some(inner) = &key.inner {
            misc |= packed::HAS_INNER | (self.push_layer(inner) << packed::INNER_FLAGS_SHIFT);
        }
        self.words[1] = misc;
    }

    /// Appends the words of one layer; returns its flags.
    #[inline(always)]
    fn push_layer(&mut self, layer: &LayerKey) -> u64 {
        let mut flags = 0;
        let mut meta = 0;
        if let Some(tag) = layer.outer_vlan() {
            flags |= packed::VLAN;
            meta |= (u64::from(tag.pcp & 7) << 13) | u64::from(tag.vid & 0x0fff);
        }
        match (layer.src_ip, layer.dst_ip) {
            (Some(IpAddr::V4(src)), Some(IpAddr::V4(dst))) => {
                flags |= packed::SRC_V4 | packed::DST_V4;
                self.push((u64::from(u32::from(src)) << 32) | u64::from(u32::from(dst)));
            }
            (src, dst) => {
                for (address, v4, v6) in [
                    (src, packed::SRC_V4, packed::SRC_V6),
                    (dst, packed::DST_V4, packed::DST_V6),
                ] {
                    match address {
                        Some(IpAddr::V4(address)) => {
                            flags |= v4;
                            self.push(u64::from(u32::from(address)));
                        }
                        Some(IpAddr::V6(address)) => {
                            flags |= v6;
                            let address = u128::from(address);
                            self.push((address >> 64) as u64);
                            self.push(address as u64);
                        }
                        None => {}
                    }
                }
            }
        }
        if let Some(dscp) = layer.dscp {
            flags |= packed::DSCP;
            meta |= u64::from(dscp) << 16;
        }
        if let Some(proto) = layer.proto {
            flags |= packed::PROTO;
            meta |= u64::from(proto) << 24;
        }
        if let Some(port) = layer.dst_port {
            flags |= packed::DST_PORT;
            meta |= u64::from(port) << 32;
        }
        if let Some(port) = layer.src_port {
            flags |= packed::SRC_PORT;
            meta |= u64::from(port) << 48;
        }
        if layer.fragment {
            flags |= packed::FRAGMENT;
        }
        self.push(meta);
        flags
    }

    /// Appends a word (past the end: the word is dropped, and the key, which then misses a
    /// field, is marked unusable by `len` past the end; two layers of at most five words
    /// after the id and misc words fit exactly, so this does not happen).
    #[inline(always)]
    fn push(&mut self, word: u64) {
        if let Some(slot) = self.words.get_mut(self.len) {
            *slot = word;
        }
        self.len += 1;
    }

    /// True when every field fitted (always, for keys of parsed frames).
    #[inline]
    pub fn is_complete(&self) -> bool {
        self.len <= PACKED_WORDS
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

/// The three stages of one layer, so one walk serves outer and inner.
struct LayerStages {
    l2: Stage,
    l3: Stage,
    l4: Stage,
}

const OUTER: LayerStages = LayerStages {
    l2: Stage::OuterL2,
    l3: Stage::OuterL3,
    l4: Stage::OuterL4,
};
const INNER: LayerStages = LayerStages {
    l2: Stage::InnerL2,
    l3: Stage::InnerL3,
    l4: Stage::InnerL4,
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
        let Some(udp_payload) = parse_outer(frame, vxlan_ports, parsed) else {
            return;
        };
        parse_vxlan(udp_payload, parsed);
    }
}

/// Parses the outer layer; returns the UDP payload when it is to be decapsulated as VXLAN.
#[inline(always)]
fn parse_outer<'a>(frame: &'a [u8], vxlan_ports: &[u16], parsed: &mut Parsed) -> Option<&'a [u8]> {
    let end = match parse_layer(frame, &mut parsed.key.outer, &mut parsed.reached, &OUTER) {
        Ok(end) => end,
        Err(error) => {
            parsed.error = Some(error);
            return None;
        }
    };
    let (Some(udp_payload), Some(port)) = (end.udp_payload, parsed.key.outer.dst_port) else {
        return None;
    };
    is_vxlan_port(vxlan_ports, port).then_some(udp_payload)
}

/// Whether UDP destination `port` is one of `vxlan_ports`.
#[inline(always)]
pub(super) fn is_vxlan_port(vxlan_ports: &[u16], port: u16) -> bool {
    // Not `contains`: for u16 that is an out-of-line call, on every frame's path.
    #[allow(clippy::manual_contains)]
    vxlan_ports.iter().any(|&vxlan| vxlan == port)
}

/// Parses the VXLAN header and the inner layer.
#[inline(always)]
fn parse_vxlan(udp_payload: &[u8], parsed: &mut Parsed) {
    let vxlan = match VxlanPacket::new_checked(udp_payload) {
        Ok(vxlan) => vxlan,
        Err(ViewError::Truncated) => {
            parsed.error = Some(ParseError::VxlanTruncated);
            return;
        }
        Err(ViewError::Malformed) => {
            parsed.error = Some(ParseError::VxlanNoVni);
            return;
        }
    };
    parsed.key.vni = Some(vxlan.vni());
    parsed.reached = Stage::Vxlan;
    let inner = parsed.key.inner.insert(LayerKey::default());
    if let Err(error) = parse_layer(vxlan.into_payload(), inner, &mut parsed.reached, &INNER) {
        parsed.error = Some(error);
    }
}

/// Walks one Ethernet/VLAN/IP/L4 stack, filling `key` as each header proves complete.
#[inline]
fn parse_layer<'a>(
    frame: &'a [u8],
    key: &mut LayerKey,
    reached: &mut Stage,
    stages: &LayerStages,
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
        ip_proto::TCP => {
            let tcp = TcpPacket::new_checked(l4).map_err(|error| match error {
                ViewError::Truncated => ParseError::TcpTruncated,
                ViewError::Malformed => ParseError::TcpMalformed,
            })?;
            key.src_port = Some(tcp.src_port());
            key.dst_port = Some(tcp.dst_port());
            *reached = stages.l4;
            Ok(none)
        }
        ip_proto::UDP => {
            let udp = UdpPacket::new_checked(l4).map_err(|_| ParseError::UdpTruncated)?;
            key.src_port = Some(udp.src_port());
            key.dst_port = Some(udp.dst_port());
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
