//! IPv6 packets (RFC 8200) and the walk over their extension headers.

use super::{Error, Field, read_u16, read_u32, write_u16};

mod field {
    use super::Field;
    pub const VER_TC_FLOW: Field = 0..4;
    pub const PAYLOAD_LEN: Field = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: Field = 8..24;
    pub const DST: Field = 24..40;
}

/// Length of the fixed IPv6 header.
pub const HEADER_LEN: usize = field::DST.end;

/// Next-header values of the extension headers [`skip_extension_headers`] walks over.
pub mod next_header {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const AUTHENTICATION: u8 = 51;
    pub const NO_NEXT_HEADER: u8 = 59;
    pub const DESTINATION_OPTIONS: u8 = 60;
}

/// A view over an IPv6 packet (fixed header; see [`skip_extension_headers`] for the rest).
#[derive(Debug, Clone, Copy)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wraps a whole packet: version 6, the fixed header and the announced payload inside the
    /// buffer (a longer buffer is fine; [`payload`](Self::payload) stops at the payload length).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Self::new_checked_header(buffer)?;
        if HEADER_LEN + usize::from(packet.payload_len()) > packet.buffer.as_ref().len() {
            return Err(Error::Truncated);
        }
        Ok(packet)
    }

    /// Wraps a packet whose fixed header is complete but whose payload may be cut short.
    #[inline]
    pub fn new_checked_header(buffer: T) -> Result<Self, Error> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let packet = Self { buffer };
        if packet.version() != 6 {
            return Err(Error::Malformed);
        }
        Ok(packet)
    }

    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }

    #[inline]
    pub fn traffic_class(&self) -> u8 {
        (read_u32(self.buffer.as_ref(), field::VER_TC_FLOW) >> 20) as u8
    }

    #[inline]
    pub fn dscp(&self) -> u8 {
        self.traffic_class() >> 2
    }

    #[inline]
    pub fn flow_label(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::VER_TC_FLOW) & 0x000f_ffff
    }

    #[inline]
    pub fn payload_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::PAYLOAD_LEN)
    }

    #[inline]
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    #[inline]
    pub fn src_addr(&self) -> [u8; 16] {
        let mut addr = [0; 16];
        addr.copy_from_slice(&self.buffer.as_ref()[field::SRC]);
        addr
    }

    #[inline]
    pub fn dst_addr(&self) -> [u8; 16] {
        let mut addr = [0; 16];
        addr.copy_from_slice(&self.buffer.as_ref()[field::DST]);
        addr
    }

    /// Everything after the fixed header: up to the payload length, or the buffer end if that
    /// comes first.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        let end = (HEADER_LEN + usize::from(self.payload_len())).min(data.len());
        &data[HEADER_LEN..end]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    #[inline]
    pub fn set_payload_len(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::PAYLOAD_LEN, value);
    }
}

/// Most extension headers [`skip_extension_headers`] walks before calling the chain malformed
/// (RFC 8200 allows each kind about once; a long chain is an attack on the parser).
pub const MAX_EXTENSION_HEADERS: usize = 8;

/// Where the upper-layer header of an IPv6 packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpperLayer {
    /// The upper-layer protocol number (TCP 6, UDP 17, ICMPv6 58, ...).
    pub protocol: u8,
    /// Offset of the upper-layer header from the end of the fixed IPv6 header.
    pub offset: usize,
    /// A fragment header was present.
    pub is_fragment: bool,
    /// The packet is a non-first fragment: the bytes at `offset` are not the upper-layer header.
    pub later_fragment: bool,
}

/// Skips hop-by-hop, routing, fragment, destination-options and authentication headers, starting
/// with `next_header` from the fixed header, over `extensions` (the bytes after the fixed
/// header). Stops at the first other protocol number, or after a fragment header for a
/// non-first fragment.
#[inline]
pub fn skip_extension_headers(first: u8, extensions: &[u8]) -> Result<UpperLayer, Error> {
    use next_header::*;
    let mut current = first;
    let mut offset = 0usize;
    let mut is_fragment = false;
    for _ in 0..=MAX_EXTENSION_HEADERS {
        let header_len = match current {
            HOP_BY_HOP | ROUTING | DESTINATION_OPTIONS => {
                let len_byte = *extensions.get(offset + 1).ok_or(Error::Truncated)?;
                (usize::from(len_byte) + 1) * 8
            }
            AUTHENTICATION => {
                let len_byte = *extensions.get(offset + 1).ok_or(Error::Truncated)?;
                (usize::from(len_byte) + 2) * 4
            }
            FRAGMENT => 8,
            protocol => {
                return Ok(UpperLayer {
                    protocol,
                    offset,
                    is_fragment,
                    later_fragment: false,
                });
            }
        };
        let header = extensions
            .get(offset..offset + header_len)
            .ok_or(Error::Truncated)?;
        let following = header[0];
        offset += header_len;
        if current == FRAGMENT {
            is_fragment = true;
            // Fragment offset: the top 13 bits of bytes 2..4, in 8-byte units.
            let fragment_offset = u16::from_be_bytes([header[2], header[3]]) & 0xfff8;
            if fragment_offset != 0 {
                return Ok(UpperLayer {
                    protocol: following,
                    offset,
                    is_fragment,
                    later_fragment: true,
                });
            }
        }
        current = following;
    }
    Err(Error::Malformed)
}

impl<'a> Ipv6Packet<&'a [u8]> {
    /// [`payload`](Self::payload) with the lifetime of the underlying buffer.
    #[inline]
    pub fn into_payload(self) -> &'a [u8] {
        let end = (HEADER_LEN + usize::from(self.payload_len())).min(self.buffer.len());
        &self.buffer[HEADER_LEN..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed_header(next: u8, payload_len: u16) -> Vec<u8> {
        let mut bytes = vec![
            0x6b, 0x80, 0x00, 0x01, // v6, traffic class 0xb8 (DSCP 46), flow label 1
        ];
        bytes.extend_from_slice(&payload_len.to_be_bytes());
        bytes.extend_from_slice(&[next, 64]);
        bytes.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        bytes.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        bytes
    }

    #[test]
    fn fixed_header_fields() {
        let bytes = fixed_header(17, 0);
        let packet = Ipv6Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.traffic_class(), 0xb8);
        assert_eq!(packet.dscp(), 46);
        assert_eq!(packet.flow_label(), 1);
        assert_eq!(packet.next_header(), 17);
        assert_eq!(packet.hop_limit(), 64);
        assert_eq!(packet.src_addr()[15], 1);
        assert_eq!(packet.dst_addr()[15], 2);
    }

    #[test]
    fn announced_payload_beyond_buffer_is_truncated() {
        let bytes = fixed_header(17, 8);
        assert_eq!(
            Ipv6Packet::new_checked(&bytes[..]).err(),
            Some(Error::Truncated)
        );
        assert!(Ipv6Packet::new_checked_header(&bytes[..]).is_ok());
    }

    #[test]
    fn version_4_is_malformed() {
        let mut bytes = fixed_header(17, 0);
        bytes[0] = 0x45;
        assert_eq!(
            Ipv6Packet::new_checked(&bytes[..]).err(),
            Some(Error::Malformed)
        );
    }

    #[test]
    fn hop_by_hop_routing_fragment_destination_chain_reaches_tcp() {
        let extensions = [
            43, 0, 1, 4, 0, 0, 0, 0, // hop-by-hop (8 bytes) -> routing
            44, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, // routing (24) -> fragment
            60, 0, 0x00, 0x01, 0, 0, 0, 7, // fragment, offset 0, M=1 -> destination options
            6, 0, 1, 4, 0, 0, 0, 0, // destination options -> TCP
        ];
        let upper = skip_extension_headers(next_header::HOP_BY_HOP, &extensions).unwrap();
        assert_eq!(
            upper,
            UpperLayer {
                protocol: 6,
                offset: 48,
                is_fragment: true,
                later_fragment: false
            }
        );
    }

    #[test]
    fn later_fragment_stops_after_the_fragment_header() {
        let extensions = [17, 0, 0x05, 0x00, 0, 0, 0, 9, 0xaa, 0xbb];
        let upper = skip_extension_headers(next_header::FRAGMENT, &extensions).unwrap();
        assert_eq!(
            upper,
            UpperLayer {
                protocol: 17,
                offset: 8,
                is_fragment: true,
                later_fragment: true
            }
        );
    }

    #[test]
    fn extension_header_cut_anywhere_is_truncated() {
        let extensions = [43, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 6, 0];
        for cut in 0..16 {
            assert_eq!(
                skip_extension_headers(next_header::HOP_BY_HOP, &extensions[..cut]),
                Err(Error::Truncated),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn endless_chain_is_malformed() {
        let chain = [60u8, 0, 0, 0, 0, 0, 0, 0].repeat(20);
        assert_eq!(
            skip_extension_headers(next_header::DESTINATION_OPTIONS, &chain),
            Err(Error::Malformed)
        );
    }
}
