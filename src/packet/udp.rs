//! UDP datagrams (RFC 768).

use super::{Error, Field, read_u16, write_u16};

mod field {
    use super::Field;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const LENGTH: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
}

pub const HEADER_LEN: usize = field::CHECKSUM.end;
/// Offset of the checksum field (the `csum_offset` a sender puts in a virtio-net header).
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM.start;

/// A view over a UDP datagram.
#[derive(Debug, Clone, Copy)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Wraps `buffer` after checking the 8-byte header is inside it. The length field is not
    /// trusted: [`payload`](Self::payload) is clamped to the buffer.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(Self { buffer })
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
    pub fn len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// True when the length field says the datagram has no payload.
    #[inline]
    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) <= HEADER_LEN
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The payload: up to the length field, or the buffer end if that comes first.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        let end = usize::from(self.len()).clamp(HEADER_LEN, data.len());
        &data[HEADER_LEN..end]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    #[inline]
    pub fn set_len(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH, value);
    }

    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }
}

impl<'a> UdpPacket<&'a [u8]> {
    /// [`payload`](Self::payload) with the lifetime of the underlying buffer.
    #[inline]
    pub fn into_payload(self) -> &'a [u8] {
        let end = usize::from(self.len()).clamp(HEADER_LEN, self.buffer.len());
        &self.buffer[HEADER_LEN..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATAGRAM: [u8; 12] = [0x13, 0x88, 0x12, 0xb5, 0x00, 0x0c, 0x00, 0x00, 1, 2, 3, 4];

    #[test]
    fn datagram_fields() {
        let udp = UdpPacket::new_checked(&DATAGRAM[..]).unwrap();
        assert_eq!((udp.src_port(), udp.dst_port()), (5000, 4789));
        assert_eq!(udp.len(), 12);
        assert_eq!(udp.payload(), &[1, 2, 3, 4]);
    }

    #[test]
    fn lying_length_field_is_clamped_to_the_buffer() {
        let mut bytes = DATAGRAM;
        bytes[4..6].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(
            UdpPacket::new_checked(&bytes[..]).unwrap().payload().len(),
            4
        );
        bytes[4..6].copy_from_slice(&3u16.to_be_bytes());
        assert!(
            UdpPacket::new_checked(&bytes[..])
                .unwrap()
                .payload()
                .is_empty()
        );
    }

    #[test]
    fn seven_bytes_are_truncated() {
        assert_eq!(
            UdpPacket::new_checked(&DATAGRAM[..7]).err(),
            Some(Error::Truncated)
        );
    }
}
