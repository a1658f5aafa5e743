//! Typed views over frame bytes, checksums and software segmentation.
//!
//! The views follow smoltcp's `wire` module: a `Packet<T: AsRef<[u8]>>` wraps a borrowed (or
//! owned) buffer, `new_checked` validates the length (and the few fields that decide where the
//! header ends) once, and every accessor after that is infallible and cannot index out of
//! bounds. Byte ranges live as named consts in each view's `field` module. With
//! `T: AsMut<[u8]>` the views also have setters for the fields the data path rewrites
//! (lengths, IPv4 id, TCP sequence number and flags, checksums).
//!
//! Why our own views rather than etherparse's slices: the data path touches a handful of fixed
//! offsets per frame, and needs to *write* some of them in place (checksum completion,
//! segmentation); etherparse's slices are read-only and decode more than we need (it validates
//! every IPv6 extension and builds header structs). The views here compile down to bounds-free
//! loads after the one length check. etherparse stays a dev-dependency-style oracle: the tests
//! build frames with its `PacketBuilder` and compare checksums with its computation.
//!
//! Nothing here allocates; nothing here panics on any input (the tests feed random bytes).
//!
//! Modules:
//! - [`checksum`]: RFC 1071 internet checksum, 16 bytes per step, and pseudo-header sums.
//! - [`copy`]: bulk copies of frame bytes that avoid `rep movsb`'s slow alignments.
//! - [`ethernet`]: Ethernet II, 802.1Q / 802.1ad tags, [`ethernet::parse_l2`] for up to two tags.
//! - [`ipv4`], [`ipv6`] (with [`ipv6::skip_extension_headers`]), [`tcp`], [`udp`], [`icmp`],
//!   [`vxlan`]; [`ip_proto`], the IP protocol numbers.
//! - [`offload`]: the virtio-net header (checksum and TSO requests), checksum completion and
//!   software TSO.
//! - [`headers`]: [`headers::locate_l4`], one walk from the Ethernet header to the transport
//!   header offset, shared by offload and its tests.

pub mod checksum;
pub mod copy;
pub mod ethernet;
pub mod headers;
pub mod icmp;
pub mod ip_proto;
pub mod ipv4;
pub mod ipv6;
pub mod offload;
pub mod tcp;
pub mod udp;
pub mod vxlan;

/// Why a view could not be built over a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer ends before the header (or the length a header field announces) does.
    #[error("buffer too short for the header")]
    Truncated,
    /// A field that decides the layout has an impossible value (wrong IP version, header
    /// length below the minimum, too many extension headers or VLAN tags).
    #[error("malformed header field")]
    Malformed,
}

/// A byte range of a fixed-position header field.
pub(crate) type Field = core::ops::Range<usize>;
/// The bytes from a fixed position to the end of the buffer.
pub(crate) type Rest = core::ops::RangeFrom<usize>;

/// Reads a big-endian u16 at a field the view's constructor already proved to be in bounds.
#[inline]
pub(crate) fn read_u16(data: &[u8], field: Field) -> u16 {
    let mut bytes = [0u8; 2];
    bytes.copy_from_slice(&data[field]);
    u16::from_be_bytes(bytes)
}

/// Reads a big-endian u32 at a field the view's constructor already proved to be in bounds.
#[inline]
pub(crate) fn read_u32(data: &[u8], field: Field) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&data[field]);
    u32::from_be_bytes(bytes)
}

#[inline]
pub(crate) fn write_u16(data: &mut [u8], field: Field, value: u16) {
    data[field].copy_from_slice(&value.to_be_bytes());
}

#[inline]
pub(crate) fn write_u32(data: &mut [u8], field: Field, value: u32) {
    data[field].copy_from_slice(&value.to_be_bytes());
}
