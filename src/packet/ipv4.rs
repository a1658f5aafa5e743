//! IPv4 packets (RFC 791), options included.

use super::{Error, Field, checksum, read_u16, write_u16};

mod field {
    use super::Field;
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Field = 2..4;
    pub const IDENT: Field = 4..6;
    pub const FLAGS_FRAG: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC: Field = 12..16;
    pub const DST: Field = 16..20;
}

/// Length of an IPv4 header without options.
pub const MIN_HEADER_LEN: usize = field::DST.end;

/// A view over an IPv4 packet.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps a whole packet: version 4, IHL >= 5, the header (with options) inside the buffer,
    /// and the total length between the header length and the buffer length (the buffer may
    /// be longer, e.g. Ethernet padding; [`payload`](Self::payload) stops at the total length).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Self::new_checked_header(buffer)?;
        if usize::from(packet.total_len()) > packet.buffer.as_ref().len() {
            return Err(Error::Truncated);
        }
        Ok(packet)
    }

    /// Wraps a packet whose header is complete but whose payload may have been cut short (a
    /// capture snapshot, a classifier that only needs headers). [`payload`](Self::payload)
    /// then stops at the buffer end.
    #[inline]
    pub fn new_checked_header(buffer: T) -> Result<Self, Error> {
        let data = buffer.as_ref();
        if data.len() < MIN_HEADER_LEN {
            return Err(Error::Truncated);
        }
        let packet = Self { buffer };
        if packet.version() != 4 || packet.header_len() < MIN_HEADER_LEN {
            return Err(Error::Malformed);
        }
        if packet.buffer.as_ref().len() < packet.header_len() {
            return Err(Error::Truncated);
        }
        if usize::from(packet.total_len()) < packet.header_len() {
            return Err(Error::Malformed);
        }
        Ok(packet)
    }

    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes, options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    #[inline]
    pub fn dscp(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] >> 2
    }

    #[inline]
    pub fn ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] & 0x03
    }

    #[inline]
    pub fn total_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    #[inline]
    pub fn ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::IDENT)
    }

    #[inline]
    pub fn dont_fragment(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLAGS_FRAG) & 0x4000 != 0
    }

    #[inline]
    pub fn more_fragments(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLAGS_FRAG) & 0x2000 != 0
    }

    /// Fragment offset in bytes.
    #[inline]
    pub fn fragment_offset(&self) -> u16 {
        (read_u16(self.buffer.as_ref(), field::FLAGS_FRAG) & 0x1fff) << 3
    }

    /// True for any fragment (first or later) of a fragmented datagram.
    #[inline]
    pub fn is_fragment(&self) -> bool {
        self.more_fragments() || self.fragment_offset() != 0
    }

    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    #[inline]
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    #[inline]
    pub fn src_addr(&self) -> [u8; 4] {
        let mut addr = [0; 4];
        addr.copy_from_slice(&self.buffer.as_ref()[field::SRC]);
        addr
    }

    #[inline]
    pub fn dst_addr(&self) -> [u8; 4] {
        let mut addr = [0; 4];
        addr.copy_from_slice(&self.buffer.as_ref()[field::DST]);
        addr
    }

    /// The option bytes between the fixed header and the payload.
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[MIN_HEADER_LEN..self.header_len()]
    }

    /// The payload: up to the total length, or the buffer end if that comes first.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        let end = usize::from(self.total_len()).min(data.len());
        &data[self.header_len()..end]
    }

    /// True when the header checksum verifies.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::verifies(&self.buffer.as_ref()[..self.header_len()])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    #[inline]
    pub fn set_total_len(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH, value);
    }

    #[inline]
    pub fn set_ident(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::IDENT, value);
    }

    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    /// Recomputes the header checksum over the header (options included).
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let header_len = self.header_len();
        let value = checksum::checksum(&self.buffer.as_ref()[..header_len]);
        self.set_checksum(value);
    }
}

impl<'a> Ipv4Packet<&'a [u8]> {
    /// [`payload`](Self::payload) with the lifetime of the underlying buffer.
    #[inline]
    pub fn into_payload(self) -> &'a [u8] {
        let end = usize::from(self.total_len()).min(self.buffer.len());
        &self.buffer[self.header_len()..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 20-byte header + 4 bytes of options (NOP NOP NOP EOL) + 4 payload bytes, UDP, DSCP 46.
    const WITH_OPTIONS: [u8; 28] = [
        0x46, 0xb8, 0x00, 0x1c, // v4, IHL 6, DSCP 46 ECN 0, total 28
        0x12, 0x34, 0x40, 0x00, // id 0x1234, DF
        0x40, 0x11, 0x00, 0x00, // TTL 64, UDP, checksum (filled by the test)
        10, 0, 0, 1, //
        10, 0, 0, 2, //
        0x01, 0x01, 0x01, 0x00, // options
        0xde, 0xad, 0xbe, 0xef, // payload
    ];

    #[test]
    fn header_with_options_fields() {
        let mut bytes = WITH_OPTIONS;
        let mut packet = Ipv4Packet::new_checked(&mut bytes[..]).unwrap();
        packet.fill_checksum();
        assert!(packet.verify_checksum());
        assert_eq!(packet.header_len(), 24);
        assert_eq!(packet.dscp(), 46);
        assert_eq!(packet.ident(), 0x1234);
        assert!(packet.dont_fragment() && !packet.is_fragment());
        assert_eq!(packet.protocol(), 17);
        assert_eq!(packet.src_addr(), [10, 0, 0, 1]);
        assert_eq!(packet.dst_addr(), [10, 0, 0, 2]);
        assert_eq!(packet.options(), &[1, 1, 1, 0]);
        assert_eq!(packet.payload(), &[0xde, 0xad, 0xbe, 0xef]);
    }

    #[test]
    fn payload_stops_at_total_length_before_padding() {
        let mut bytes = WITH_OPTIONS.to_vec();
        bytes.extend_from_slice(&[0; 10]);
        let packet = Ipv4Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.payload().len(), 4);
    }

    #[test]
    fn cut_payload_is_truncated_but_header_view_works() {
        let bytes = &WITH_OPTIONS[..26];
        assert_eq!(Ipv4Packet::new_checked(bytes).err(), Some(Error::Truncated));
        let header = Ipv4Packet::new_checked_header(bytes).unwrap();
        assert_eq!(header.payload(), &[0xde, 0xad]);
    }

    #[test]
    fn cut_options_are_truncated() {
        assert_eq!(
            Ipv4Packet::new_checked_header(&WITH_OPTIONS[..22]).err(),
            Some(Error::Truncated)
        );
    }

    #[test]
    fn bad_version_ihl_or_total_length_is_malformed() {
        let mut bad_version = WITH_OPTIONS;
        bad_version[0] = 0x66;
        assert_eq!(
            Ipv4Packet::new_checked(&bad_version[..]).err(),
            Some(Error::Malformed)
        );
        let mut short_ihl = WITH_OPTIONS;
        short_ihl[0] = 0x44;
        assert_eq!(
            Ipv4Packet::new_checked(&short_ihl[..]).err(),
            Some(Error::Malformed)
        );
        let mut short_total = WITH_OPTIONS;
        short_total[3] = 20;
        assert_eq!(
            Ipv4Packet::new_checked(&short_total[..]).err(),
            Some(Error::Malformed)
        );
    }
}
