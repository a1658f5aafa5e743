//! ICMP (RFC 792) and ICMPv6 (RFC 4443) messages: both share the 4-byte type/code/checksum
//! header and a 4-byte rest-of-header.

use super::{Error, Field, read_u16};

mod field {
    use super::Field;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    pub const REST: Field = 4..8;
}

pub const HEADER_LEN: usize = field::REST.end;

/// A view over an ICMP or ICMPv6 message.
#[derive(Debug, Clone, Copy)]
pub struct IcmpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> IcmpPacket<T> {
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(Self { buffer })
    }

    #[inline]
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    #[inline]
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Identifier of an echo request/reply (the first half of the rest-of-header).
    #[inline]
    pub fn echo_ident(&self) -> u16 {
        read_u16(
            self.buffer.as_ref(),
            field::REST.start..field::REST.start + 2,
        )
    }

    /// Sequence number of an echo request/reply.
    #[inline]
    pub fn echo_seq(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::REST.start + 2..field::REST.end)
    }

    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_fields_and_checksum() {
        // Echo request id 1 seq 2, payload "ab"; checksum computed over the message.
        let mut bytes = [8, 0, 0, 0, 0, 1, 0, 2, b'a', b'b'];
        let value = crate::packet::checksum::checksum(&bytes);
        bytes[2..4].copy_from_slice(&value.to_be_bytes());
        let icmp = IcmpPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!((icmp.msg_type(), icmp.code()), (8, 0));
        assert_eq!((icmp.echo_ident(), icmp.echo_seq()), (1, 2));
        assert_eq!(icmp.payload(), b"ab");
        assert!(crate::packet::checksum::verifies(&bytes));
    }

    #[test]
    fn short_message_is_truncated() {
        assert_eq!(
            IcmpPacket::new_checked(&[8u8, 0, 0][..]).err(),
            Some(Error::Truncated)
        );
    }
}
