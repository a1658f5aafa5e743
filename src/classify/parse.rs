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
        let end = match parse_layer(frame, &mut parsed.key.outer, &mut parsed.reached, &OUTER) {
            Ok(end) => end,
            Err(error) => {
                parsed.error = Some(error);
                return;
            }
        };
        let (Some(udp_payload), Some(port)) = (end.udp_payload, parsed.key.outer.dst_port) else {
            return;
        };
        if !vxlan_ports.contains(&port) {
            return;
        }
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
        let result = parse_layer(vxlan.into_payload(), inner, &mut parsed.reached, &INNER);
        if let Err(error) = result {
            parsed.error = Some(error);
        }
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
            key.src_ip = Some(IpAddr::V4(Ipv4Addr::from(ip.src_addr())));
            key.dst_ip = Some(IpAddr::V4(Ipv4Addr::from(ip.dst_addr())));
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
            key.src_ip = Some(IpAddr::V6(Ipv6Addr::from(ip.src_addr())));
            key.dst_ip = Some(IpAddr::V6(Ipv6Addr::from(ip.dst_addr())));
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
        proto::TCP => {
            let tcp = TcpPacket::new_checked(l4).map_err(|error| match error {
                ViewError::Truncated => ParseError::TcpTruncated,
                ViewError::Malformed => ParseError::TcpMalformed,
            })?;
            key.src_port = Some(tcp.src_port());
            key.dst_port = Some(tcp.dst_port());
            *reached = stages.l4;
            Ok(none)
        }
        proto::UDP => {
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
