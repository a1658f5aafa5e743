//! TCP segments (RFC 9293).

use super::{Error, Field, read_u16, read_u32, write_u16, write_u32};

mod field {
    use super::Field;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const SEQ_NUM: Field = 4..8;
    pub const ACK_NUM: Field = 8..12;
    pub const DATA_OFFSET: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: Field = 14..16;
    pub const CHECKSUM: Field = 16..18;
    pub const URGENT: Field = 18..20;
}

/// Length of a TCP header without options.
pub const MIN_HEADER_LEN: usize = field::URGENT.end;
/// Offset of the checksum field (the `csum_offset` a sender puts in a virtio-net header).
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM.start;

/// The flag bits of byte 13.
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// A view over a TCP segment.
#[derive(Debug, Clone, Copy)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Wraps `buffer` after checking the header, options included, is inside it.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        if buffer.as_ref().len() < MIN_HEADER_LEN {
            return Err(Error::Truncated);
        }
        let packet = Self { buffer };
        if packet.header_len() < MIN_HEADER_LEN {
            return Err(Error::Malformed);
        }
        if packet.buffer.as_ref().len() < packet.header_len() {
            return Err(Error::Truncated);
        }
        Ok(packet)
    }

    #[inline]
    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    #[inline]
    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    #[inline]
    pub fn seq_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SEQ_NUM)
    }

    #[inline]
    pub fn ack_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::ACK_NUM)
    }

    /// Header length in bytes, options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFFSET] >> 4) * 4
    }

    /// The flag byte (see [`flags`]).
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    #[inline]
    pub fn window(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::WINDOW)
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    #[inline]
    pub fn urgent_pointer(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::URGENT)
    }

    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[MIN_HEADER_LEN..self.header_len()]
    }

    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    #[inline]
    pub fn set_seq_number(&mut self, value: u32) {
        write_u32(self.buffer.as_mut(), field::SEQ_NUM, value);
    }

    #[inline]
    pub fn set_flags(&mut self, value: u8) {
        self.buffer.as_mut()[field::FLAGS] = value;
    }

    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYN_WITH_MSS: [u8; 26] = [
        0x30, 0x39, 0x00, 0x50, // 12345 -> 80
        0x01, 0x02, 0x03, 0x04, // seq
        0x00, 0x00, 0x00, 0x00, // ack
        0x60, 0x02, 0xfa, 0xf0, // data offset 6, SYN, window 64240
        0x00, 0x00, 0x00, 0x00, // checksum, urgent
        0x02, 0x04, 0x05, 0xb4, // MSS 1460
        0xaa, 0xbb, // payload
    ];

    #[test]
    fn syn_with_mss_option_fields() {
        let packet = TcpPacket::new_checked(&SYN_WITH_MSS[..]).unwrap();
        assert_eq!((packet.src_port(), packet.dst_port()), (12345, 80));
        assert_eq!(packet.seq_number(), 0x0102_0304);
        assert_eq!(packet.header_len(), 24);
        assert_eq!(packet.flags(), flags::SYN);
        assert_eq!(packet.window(), 64240);
        assert_eq!(packet.options(), &[2, 4, 5, 0xb4]);
        assert_eq!(packet.payload(), &[0xaa, 0xbb]);
    }

    #[test]
    fn options_cut_short_are_truncated_and_tiny_offset_malformed() {
        assert_eq!(
            TcpPacket::new_checked(&SYN_WITH_MSS[..22]).err(),
            Some(Error::Truncated)
        );
        let mut tiny = SYN_WITH_MSS;
        tiny[12] = 0x40;
        assert_eq!(
            TcpPacket::new_checked(&tiny[..]).err(),
            Some(Error::Malformed)
        );
    }

    #[test]
    fn setters_write_in_place() {
        let mut bytes = SYN_WITH_MSS;
        let mut packet = TcpPacket::new_checked(&mut bytes[..]).unwrap();
        packet.set_seq_number(7);
        packet.set_flags(flags::ACK | flags::PSH);
        packet.set_checksum(0xbeef);
        assert_eq!(packet.seq_number(), 7);
        assert_eq!(packet.flags(), 0x18);
        assert_eq!(packet.checksum(), 0xbeef);
    }
}
