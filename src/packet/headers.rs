//! One walk from the Ethernet header to the transport header, for code that needs offsets
//! rather than fields (checksum offload, segmentation).

use super::Error;
use super::ethernet::{L2Header, ethertype, parse_l2};
use super::ipv4::Ipv4Packet;
use super::ipv6::{self, Ipv6Packet, skip_extension_headers};

/// Which IP version carries the transport header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpVersion {
    V4,
    V6,
}

/// Where the layers of a frame start and end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layers {
    pub l2: L2Header,
    pub ip: IpVersion,
    /// Offset of the IP header.
    pub l3_offset: usize,
    /// Offset of the transport header (for IPv6, after the extension headers).
    pub l4_offset: usize,
    /// Offset one past the end of the IP packet according to its length field (the frame may
    /// carry padding after it).
    pub ip_end: usize,
    /// The transport protocol number.
    pub protocol: u8,
    /// The IP packet is a fragment (first or later).
    pub fragment: bool,
}

/// Why [`locate_l4`] could not find a transport header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocateError {
    /// The EtherType after the tags is neither IPv4 nor IPv6.
    NotIp,
    /// A header does not fit in the frame, or the IP length field points past it.
    Truncated,
    /// A header field has an impossible value.
    Malformed,
}

impl From<Error> for LocateError {
    fn from(error: Error) -> Self {
        match error {
            Error::Truncated => LocateError::Truncated,
            Error::Malformed => LocateError::Malformed,
        }
    }
}

/// Walks Ethernet, up to two VLAN tags, IPv4 (options) or IPv6 (extension headers) and returns
/// the offsets. The IP length field must lie within the frame.
pub fn locate_l4(frame: &[u8]) -> Result<Layers, LocateError> {
    let l2 = parse_l2(frame)?;
    let l3 = &frame[l2.l3_offset..];
    match l2.ethertype {
        ethertype::IPV4 => {
            let ip = Ipv4Packet::new_checked(l3)?;
            Ok(Layers {
                l2,
                ip: IpVersion::V4,
                l3_offset: l2.l3_offset,
                l4_offset: l2.l3_offset + ip.header_len(),
                ip_end: l2.l3_offset + usize::from(ip.total_len()),
                protocol: ip.protocol(),
                fragment: ip.is_fragment(),
            })
        }
        ethertype::IPV6 => {
            let ip = Ipv6Packet::new_checked(l3)?;
            let upper = skip_extension_headers(ip.next_header(), ip.payload())?;
            Ok(Layers {
                l2,
                ip: IpVersion::V6,
                l3_offset: l2.l3_offset,
                l4_offset: l2.l3_offset + ipv6::HEADER_LEN + upper.offset,
                ip_end: l2.l3_offset + ipv6::HEADER_LEN + usize::from(ip.payload_len()),
                protocol: upper.protocol,
                fragment: upper.is_fragment,
            })
        }
        _ => Err(LocateError::NotIp),
    }
}
