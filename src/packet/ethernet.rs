//! Ethernet II frames and 802.1Q / 802.1ad VLAN tags.

use super::{Error, Field, Rest, read_u16};

/// EtherType values the data path looks at.
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const IPV6: u16 = 0x86dd;
    /// 802.1Q customer tag.
    pub const VLAN: u16 = 0x8100;
    /// 802.1ad service tag (the outer tag of a Q-in-Q stack).
    pub const QINQ: u16 = 0x88a8;
    /// The pre-standard Q-in-Q TPID some switches still send.
    pub const QINQ_LEGACY: u16 = 0x9100;

    /// True for the TPIDs that introduce a VLAN tag.
    #[inline]
    pub fn is_vlan_tpid(value: u16) -> bool {
        matches!(value, VLAN | QINQ | QINQ_LEGACY)
    }
}

mod field {
    use super::{Field, Rest};
    pub const DESTINATION: Field = 0..6;
    pub const SOURCE: Field = 6..12;
    pub const ETHERTYPE: Field = 12..14;
    pub const PAYLOAD: Rest = 14..;
}

/// Length of the Ethernet II header without tags.
pub const HEADER_LEN: usize = field::PAYLOAD.start;

/// A view over an Ethernet II frame.
#[derive(Debug, Clone, Copy)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps `buffer` after checking it holds the 14-byte header.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(Self { buffer })
    }

    #[inline]
    pub fn destination(&self) -> [u8; 6] {
        let mut mac = [0; 6];
        mac.copy_from_slice(&self.buffer.as_ref()[field::DESTINATION]);
        mac
    }

    #[inline]
    pub fn source(&self) -> [u8; 6] {
        let mut mac = [0; 6];
        mac.copy_from_slice(&self.buffer.as_ref()[field::SOURCE]);
        mac
    }

    /// The EtherType (or the TPID of the first VLAN tag).
    #[inline]
    pub fn ethertype(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ETHERTYPE)
    }

    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }

    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

mod tag_field {
    use super::Field;
    pub const TCI: Field = 0..2;
    pub const ETHERTYPE: Field = 2..4;
}

/// Length of one VLAN tag after its TPID (TCI + the next EtherType).
pub const VLAN_TAG_LEN: usize = 4;

/// A view over the 4 bytes that follow a VLAN TPID: the tag control information and the
/// EtherType of what comes next.
#[derive(Debug, Clone, Copy)]
pub struct VlanTag<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VlanTag<T> {
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        if buffer.as_ref().len() < VLAN_TAG_LEN {
            return Err(Error::Truncated);
        }
        Ok(Self { buffer })
    }

    #[inline]
    pub fn tci(&self) -> Tci {
        Tci(read_u16(self.buffer.as_ref(), tag_field::TCI))
    }

    /// The EtherType after this tag (another TPID for a stacked tag).
    #[inline]
    pub fn ethertype(&self) -> u16 {
        read_u16(self.buffer.as_ref(), tag_field::ETHERTYPE)
    }
}

/// 802.1Q tag control information: PCP (3 bits), DEI (1 bit), VLAN id (12 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Tci(pub u16);

impl Tci {
    #[inline]
    pub fn pcp(self) -> u8 {
        (self.0 >> 13) as u8
    }
    #[inline]
    pub fn dei(self) -> bool {
        self.0 & 0x1000 != 0
    }
    #[inline]
    pub fn vid(self) -> u16 {
        self.0 & 0x0fff
    }
}

/// Most VLAN tags [`parse_l2`] accepts (an 802.1ad service tag over an 802.1Q tag).
pub const MAX_VLAN_TAGS: usize = 2;

/// The layer-2 header of a frame: tags, the EtherType after them, and where layer 3 starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct L2Header {
    /// Outermost tag first; only the first `tag_count` entries are meaningful.
    pub tags: [Tci; MAX_VLAN_TAGS],
    pub tag_count: u8,
    /// The EtherType of the layer-3 payload.
    pub ethertype: u16,
    /// Offset of the layer-3 header in the frame.
    pub l3_offset: usize,
}

impl L2Header {
    /// The tags actually present, outermost first.
    #[inline]
    pub fn tags(&self) -> &[Tci] {
        &self.tags[..usize::from(self.tag_count)]
    }
}

/// Walks the Ethernet header and up to [`MAX_VLAN_TAGS`] tags. A third tag is
/// [`Error::Malformed`]; a frame that ends inside a tag is [`Error::Truncated`].
#[inline]
pub fn parse_l2(frame: &[u8]) -> Result<L2Header, Error> {
    let eth = EthernetFrame::new_checked(frame)?;
    let mut header = L2Header {
        ethertype: eth.ethertype(),
        l3_offset: HEADER_LEN,
        ..L2Header::default()
    };
    while ethertype::is_vlan_tpid(header.ethertype) {
        if usize::from(header.tag_count) == MAX_VLAN_TAGS {
            return Err(Error::Malformed);
        }
        let tag = VlanTag::new_checked(frame.get(header.l3_offset..).unwrap_or(&[]))?;
        header.tags[usize::from(header.tag_count)] = tag.tci();
        header.tag_count += 1;
        header.ethertype = tag.ethertype();
        header.l3_offset += VLAN_TAG_LEN;
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNTAGGED_IPV4: [u8; 14] = [
        0x02, 0, 0, 0, 0, 0x0b, // destination
        0x02, 0, 0, 0, 0, 0x0a, // source
        0x08, 0x00, // IPv4
    ];

    #[test]
    fn untagged_frame_fields() {
        let eth = EthernetFrame::new_checked(&UNTAGGED_IPV4[..]).unwrap();
        assert_eq!(eth.destination(), [2, 0, 0, 0, 0, 0x0b]);
        assert_eq!(eth.source(), [2, 0, 0, 0, 0, 0x0a]);
        assert_eq!(eth.ethertype(), ethertype::IPV4);
        assert!(eth.payload().is_empty());
        let l2 = parse_l2(&UNTAGGED_IPV4).unwrap();
        assert_eq!(l2.tag_count, 0);
        assert_eq!(l2.l3_offset, 14);
    }

    #[test]
    fn short_frame_is_truncated() {
        assert_eq!(
            EthernetFrame::new_checked(&UNTAGGED_IPV4[..13]).err(),
            Some(Error::Truncated)
        );
    }

    #[test]
    fn qinq_stack_gives_both_tags_outermost_first() {
        let frame = [
            2, 0, 0, 0, 0, 0x0b, 2, 0, 0, 0, 0, 0x0a, //
            0x88, 0xa8, 0xa0, 0x64, // S-tag: PCP 5, VID 100
            0x81, 0x00, 0x20, 0xc8, // C-tag: PCP 1, VID 200
            0x86, 0xdd,
        ];
        let l2 = parse_l2(&frame).unwrap();
        assert_eq!(l2.tags().len(), 2);
        assert_eq!((l2.tags()[0].pcp(), l2.tags()[0].vid()), (5, 100));
        assert_eq!((l2.tags()[1].pcp(), l2.tags()[1].vid()), (1, 200));
        assert_eq!(l2.ethertype, ethertype::IPV6);
        assert_eq!(l2.l3_offset, 22);
    }

    #[test]
    fn third_tag_is_malformed() {
        let frame = [
            2, 0, 0, 0, 0, 0x0b, 2, 0, 0, 0, 0, 0x0a, //
            0x88, 0xa8, 0, 1, 0x81, 0x00, 0, 2, 0x81, 0x00, 0, 3, 0x08, 0x00,
        ];
        assert_eq!(parse_l2(&frame), Err(Error::Malformed));
    }

    #[test]
    fn frame_ending_inside_a_tag_is_truncated() {
        let frame = [
            2, 0, 0, 0, 0, 0x0b, 2, 0, 0, 0, 0, 0x0a, 0x81, 0x00, 0x00, 0x05, 0x08,
        ];
        assert_eq!(parse_l2(&frame), Err(Error::Truncated));
    }

    #[test]
    fn dei_bit_is_separate_from_vid() {
        let tci = Tci(0xf123);
        assert_eq!((tci.pcp(), tci.dei(), tci.vid()), (7, true, 0x123));
    }
}
