//! VXLAN (RFC 7348): an 8-byte header over UDP, then an inner Ethernet frame.

use super::{Error, Field, read_u32};

mod field {
    use super::Field;
    pub const FLAGS: usize = 0;
    /// The VNI is the top 24 bits of bytes 4..8; the low byte is reserved.
    pub const VNI_RESERVED: Field = 4..8;
}

pub const HEADER_LEN: usize = 8;
/// The IANA-assigned VXLAN UDP port.
pub const DEFAULT_PORT: u16 = 4789;
/// The I flag: the VNI field is valid (RFC 7348 requires it set).
pub const FLAG_VNI_VALID: u8 = 0x08;

/// A view over a VXLAN header and the inner frame after it.
#[derive(Debug, Clone, Copy)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// Wraps `buffer` after checking the header is inside it and its I flag is set.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let packet = Self { buffer };
        if packet.flags() & FLAG_VNI_VALID == 0 {
            return Err(Error::Malformed);
        }
        Ok(packet)
    }

    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The 24-bit VXLAN network identifier.
    #[inline]
    pub fn vni(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::VNI_RESERVED) >> 8
    }

    /// The inner Ethernet frame.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<'a> VxlanPacket<&'a [u8]> {
    /// [`payload`](Self::payload) with the lifetime of the underlying buffer.
    #[inline]
    pub fn into_payload(self) -> &'a [u8] {
        &self.buffer[HEADER_LEN..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vni_is_the_top_24_bits() {
        let bytes = [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0x00, 0xee];
        let vxlan = VxlanPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(vxlan.vni(), 0x12_3456);
        assert_eq!(vxlan.payload(), &[0xee]);
    }

    #[test]
    fn missing_i_flag_is_malformed_and_short_header_truncated() {
        let bytes = [0x00, 0, 0, 0, 0, 0, 1, 0];
        assert_eq!(
            VxlanPacket::new_checked(&bytes[..]).err(),
            Some(Error::Malformed)
        );
        assert_eq!(
            VxlanPacket::new_checked(&bytes[..7]).err(),
            Some(Error::Truncated)
        );
    }
}
