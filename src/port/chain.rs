//! Walking a split-ring descriptor chain that an untrusted guest wrote.
//!
//! virtio-queue's `DescriptorChain` iterator ends silently on every fault, which would make a
//! looping chain look like a short one. We walk the chain ourselves so that each fault has a
//! name (and a counter), and we translate every buffer into host memory before anyone copies:
//! a [`Segment`] is a host address range, so gathering and scattering are plain copies.

use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};

use super::host_memory::{self, HostMemory, volatile};
use super::ring_view::SplitRing;
use crate::nic::{FrameBytes, frame};

/// Size of one split-ring descriptor in guest memory.
const DESC_SIZE: u64 = 16;

/// One piece of a guest buffer, translated: `len` bytes at host address `host`. A buffer that
/// crosses guest memory regions becomes several segments. The same type the NIC copies a
/// split frame's tail from (see `nic::frame`).
pub use crate::nic::frame::HostPiece as Segment;

/// Which way the data flows, as the device sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// TX: every descriptor must be driver-written (device-readable).
    DeviceReads,
    /// RX: every descriptor must be device-writable.
    DeviceWrites,
}

/// Why a chain was rejected.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainError {
    #[error("descriptor index {index} is beyond the table size {size}")]
    IndexOutOfRange { index: u16, size: u16 },
    #[error("chain has more descriptors than its table ({limit}): a loop?")]
    TooLong { limit: u16 },
    #[error("indirect table at {0:#x} is outside guest memory (or crosses a region)")]
    TableOutsideMemory(u64),
    #[error("buffer {addr:#x}+{len} is outside guest memory")]
    BufferOutsideMemory { addr: u64, len: u32 },
    #[error("indirect descriptor inside an indirect table")]
    NestedIndirect,
    #[error("indirect descriptor combined with NEXT")]
    IndirectWithNext,
    #[error("indirect table length {0} is not a non-zero multiple of 16")]
    BadIndirectLength(u32),
    #[error("{0:?} chain contains a descriptor of the other direction")]
    WrongDirection(Direction),
    #[error("chain longer than 4 GiB")]
    LengthOverflow,
    #[error("chain holds no bytes (every descriptor has length 0)")]
    Empty,
    #[error("chain of {len} bytes cannot hold the virtio-net header, which every buffer must")]
    ShorterThanHeader { len: u32 },
}

/// What a walk found: the chain's length in bytes (at most `u32::MAX`), or why it is
/// unusable.
///
/// Why these types: a `usize` and a box are returned in two registers. The plain
/// `Result<u32, ChainError>` (24 bytes) went back through memory, written as two 4-byte
/// stores and read back by the caller with one 16-byte load, which cannot be forwarded
/// from them and waits until every earlier store has drained, misses into the other
/// CPU's rings included.
pub type Walked = Result<usize, Box<ChainError>>;

/// A split-ring descriptor as laid out in guest memory (little endian).
#[derive(Clone, Copy, Debug, Default)]
struct RawDescriptor {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

impl RawDescriptor {
    /// From the descriptor's two little-endian words: `addr`, then `len`, `flags`, `next`.
    fn from_words((addr, rest): (u64, u64)) -> Self {
        RawDescriptor {
            addr,
            len: rest as u32,
            flags: (rest >> 32) as u16,
            next: (rest >> 48) as u16,
        }
    }
}

/// The table a walk reads: the ring's own, or an indirect one (translated, `entries` long).
#[derive(Clone, Copy)]
enum Table<'a> {
    Ring(&'a SplitRing),
    Indirect { host: usize, entries: u16 },
}

impl Table<'_> {
    fn size(&self) -> u16 {
        match self {
            Table::Ring(ring) => ring.size(),
            Table::Indirect { entries, .. } => *entries,
        }
    }

    /// Descriptor `index`, which the caller checked against `size`.
    fn read(&self, index: u16) -> Option<RawDescriptor> {
        let raw = match *self {
            Table::Ring(ring) => ring.descriptor(index)?,
            Table::Indirect { host, entries } => {
                if index >= entries {
                    return None;
                }
                // SAFETY: `host` covers `entries` descriptors (translated in `walk`).
                unsafe { volatile::read_two_words(host + DESC_SIZE as usize * usize::from(index)) }
            }
        };
        Some(RawDescriptor::from_words(raw))
    }
}

/// The host address of the buffer of chain `head` when the chain is the commonest RX chain:
/// one device-writable descriptor, in one memory region, of at least `needed` bytes. `None`
/// for any other chain, good or bad, which [`walk`] then takes (and reports, if bad).
///
/// Why: a driver posts one buffer per chain when it can (Linux with mergeable buffers, DPDK
/// always), and for a small frame the general walk (a call, a loop, the segment list and
/// the frame's chain list, read back) cost more than the copy.
#[inline]
pub fn single_writable_buffer(
    mem: &HostMemory,
    ring: &SplitRing,
    head: u16,
    needed: usize,
) -> Option<usize> {
    let desc = RawDescriptor::from_words(ring.descriptor(head)?);
    let flags = u32::from(desc.flags);
    if flags & (VRING_DESC_F_NEXT | VRING_DESC_F_INDIRECT) != 0
        || flags & VRING_DESC_F_WRITE == 0
        || (desc.len as usize) < needed
    {
        return None;
    }
    // The whole buffer is checked, as the walk does: a buffer partly outside guest memory is
    // a bad chain, however little of it a frame needs.
    mem.range(desc.addr, desc.len as usize)
}

/// Walks the chain starting at `head` of `ring`, putting its buffers in `out` (cleared
/// first) as host segments, and returning their total length.
///
/// The walk is bounded by the table size (a loop is reported, not followed forever), each
/// buffer is checked against guest memory, and the direction of every descriptor must match.
/// An indirect descriptor may appear once, at the top level, without NEXT.
pub fn walk(
    mem: &HostMemory,
    ring: &SplitRing,
    head: u16,
    direction: Direction,
    out: &mut Vec<Segment>,
) -> Walked {
    out.clear();
    walk_append(mem, ring, head, direction, out)
}

/// [`walk`], appending to what `out` holds: a frame spread over several chains collects
/// their segments in place. Copying each chain's segments over from a separate vector read
/// them back with loads wider than the stores that had just written them, which wait for
/// every earlier store to drain. After an error `out` may end with part of this chain's segments.
pub fn walk_append(
    mem: &HostMemory,
    ring: &SplitRing,
    head: u16,
    direction: Direction,
    out: &mut Vec<Segment>,
) -> Walked {
    match walk_chain(mem, ring, head, direction, out) {
        Ok(len) => Ok(len as usize),
        Err(error) => Err(Box::new(error)),
    }
}

#[inline(always)]
fn walk_chain(
    mem: &HostMemory,
    ring: &SplitRing,
    head: u16,
    direction: Direction,
    out: &mut Vec<Segment>,
) -> Result<u32, ChainError> {
    let queue_size = ring.size();
    let mut table = Table::Ring(ring);
    let mut index = head;
    let mut budget = queue_size;
    let mut indirect = false;
    let mut total: u32 = 0;
    loop {
        let table_size = table.size();
        if index >= table_size {
            return Err(ChainError::IndexOutOfRange {
                index,
                size: table_size,
            });
        }
        if budget == 0 {
            return Err(ChainError::TooLong { limit: table_size });
        }
        budget -= 1;
        let desc = table.read(index).ok_or(ChainError::IndexOutOfRange {
            index,
            size: table_size,
        })?;
        let flags = u32::from(desc.flags);
        if flags & VRING_DESC_F_INDIRECT != 0 {
            if indirect {
                return Err(ChainError::NestedIndirect);
            }
            if flags & VRING_DESC_F_NEXT != 0 {
                return Err(ChainError::IndirectWithNext);
            }
            let entries = desc.len / DESC_SIZE as u32;
            if desc.len == 0
                || !desc.len.is_multiple_of(DESC_SIZE as u32)
                || entries > u32::from(u16::MAX)
            {
                return Err(ChainError::BadIndirectLength(desc.len));
            }
            // A chain, indirect table included, may not be longer than the queue (virtio 1.2,
            // 2.7.5.3.1).
            if entries > u32::from(queue_size) {
                return Err(ChainError::TooLong { limit: queue_size });
            }
            let host = mem
                .range(desc.addr, desc.len as usize)
                .ok_or(ChainError::TableOutsideMemory(desc.addr))?;
            indirect = true;
            table = Table::Indirect {
                host,
                entries: entries as u16,
            };
            budget = entries as u16;
            index = 0;
            continue;
        }
        let writable = flags & VRING_DESC_F_WRITE != 0;
        if writable != (direction == Direction::DeviceWrites) {
            return Err(ChainError::WrongDirection(direction));
        }
        if desc.len > 0 {
            let fits = match mem.range(desc.addr, desc.len as usize) {
                // The common case: the buffer lies in one region.
                Some(host) => {
                    out.push(Segment {
                        host,
                        len: desc.len,
                    });
                    true
                }
                None => mem.for_each_piece(desc.addr, u64::from(desc.len), |host, len| {
                    out.push(Segment { host, len })
                }),
            };
            if !fits {
                return Err(ChainError::BufferOutsideMemory {
                    addr: desc.addr,
                    len: desc.len,
                });
            }
            total = total
                .checked_add(desc.len)
                .ok_or(ChainError::LengthOverflow)?;
        }
        if flags & VRING_DESC_F_NEXT == 0 {
            // Zero-length descriptors are skipped, but a chain of nothing else is no buffer:
            // a receive frame would have nowhere to go, a transmit chain no header.
            return if total == 0 {
                Err(ChainError::Empty)
            } else {
                Ok(total)
            };
        }
        index = desc.next;
    }
}

/// Copies up to `buf.len()` bytes of the chain's buffers into `buf`, returning how many.
/// The segments must come from [`walk`] over a `HostMemory` that is still alive.
pub fn gather(segments: &[Segment], buf: &mut [u8]) -> usize {
    let mut copied = 0;
    for (host, take) in frame::ranges(segments, 0, buf.len()) {
        // SAFETY: `ranges` stays within the segments, translated by `walk` (see above).
        unsafe { host_memory::copy_from_guest(host, &mut buf[copied..copied + take]) };
        copied += take;
    }
    copied
}

/// Scatters `data` into the chain's buffers starting `skip` bytes in, returning bytes
/// written. The segments must come from [`walk`] over a `HostMemory` that is still alive.
pub fn scatter(segments: &[Segment], skip: usize, data: &[u8]) -> usize {
    scatter_frame(segments, skip, &FrameBytes::whole(data), 0, data.len())
}

/// Scatters `len` bytes of `frame`, from byte `from` on, into the chain's buffers starting
/// `skip` bytes in, returning bytes written. The frame's tail may be in another guest's
/// memory (see `nic::frame`): it is copied from there directly. The segments must come from
/// [`walk`] over a `HostMemory` that is still alive.
pub fn scatter_frame(
    segments: &[Segment],
    skip: usize,
    frame: &FrameBytes<'_>,
    from: usize,
    len: usize,
) -> usize {
    let len = len.min(frame.len().saturating_sub(from));
    let mut written = 0;
    for (host, take) in frame::ranges(segments, skip, len) {
        // SAFETY: `ranges` stays within the segments, translated by `walk`; the frame holds
        // `from + written + take <= from + len <= frame.len()` bytes.
        written += unsafe { frame.copy_to_ptr(from + written, take, host as *mut u8) };
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::ring_view::RingError;
    use std::sync::Arc;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    const TABLE: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;
    const MEM_SIZE: usize = 0x10000;

    fn memory() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
    }

    /// Walks a chain of the 8-entry ring whose descriptor table is at `table`.
    fn walk_at(
        mem: &GuestMemoryMmap<()>,
        table: u64,
        head: u16,
        direction: Direction,
        out: &mut Vec<Segment>,
    ) -> Result<u32, ChainError> {
        let host = HostMemory::new(Arc::new(mem.clone()));
        let ring = SplitRing::at(&host, table, AVAIL, USED, 8).expect("ring in memory");
        walk(&host, &ring, head, direction, out)
            .map(|len| len as u32)
            .map_err(|error| *error)
    }

    fn put(
        mem: &GuestMemoryMmap<()>,
        table: u64,
        index: u16,
        addr: u64,
        len: u32,
        flags: u32,
        next: u16,
    ) {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&(flags as u16).to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&raw, GuestAddress(table + u64::from(index) * 16))
            .unwrap();
    }

    fn walk_tx(mem: &GuestMemoryMmap<()>, head: u16) -> Result<u32, ChainError> {
        walk_at(mem, TABLE, head, Direction::DeviceReads, &mut Vec::new())
    }

    #[test]
    fn only_one_writable_buffer_large_enough_and_inside_memory_is_a_single_buffer() {
        let mem = memory();
        let host = HostMemory::new(Arc::new(mem.clone()));
        let ring = SplitRing::at(&host, TABLE, AVAIL, USED, 8).expect("ring in memory");
        let base = mem.get_host_address(GuestAddress(0)).unwrap() as usize;
        let single = |head| single_writable_buffer(&host, &ring, head, 76);
        put(&mem, TABLE, 0, 0x4000, 2048, VRING_DESC_F_WRITE, 0);
        assert_eq!(single(0), Some(base + 0x4000));
        // Exactly large enough, and the NEXT field ignored without the flag.
        put(&mem, TABLE, 1, 0x5000, 76, VRING_DESC_F_WRITE, 7);
        assert_eq!(single(1), Some(base + 0x5000));
        // Everything else is left to the walk, which names the fault if there is one.
        put(&mem, TABLE, 2, 0x5000, 75, VRING_DESC_F_WRITE, 0);
        put(&mem, TABLE, 3, 0x5000, 2048, 0, 0);
        put(
            &mem,
            TABLE,
            4,
            0x5000,
            2048,
            VRING_DESC_F_WRITE | VRING_DESC_F_NEXT,
            0,
        );
        put(
            &mem,
            TABLE,
            5,
            0x5000,
            128,
            VRING_DESC_F_WRITE | VRING_DESC_F_INDIRECT,
            0,
        );
        put(
            &mem,
            TABLE,
            6,
            MEM_SIZE as u64 - 64,
            2048,
            VRING_DESC_F_WRITE,
            0,
        );
        put(&mem, TABLE, 7, u64::MAX - 16, 2048, VRING_DESC_F_WRITE, 0);
        for head in 2..8 {
            assert_eq!(single(head), None, "descriptor {head}");
        }
        assert_eq!(single(8), None, "past the table");
    }

    #[test]
    fn two_readable_descriptors_make_one_chain() {
        let mem = memory();
        put(&mem, TABLE, 0, 0x4000, 12, VRING_DESC_F_NEXT, 3);
        put(&mem, TABLE, 3, 0x5000, 60, 0, 0);
        let mut out = Vec::new();
        let total = walk_at(&mem, TABLE, 0, Direction::DeviceReads, &mut out);
        assert_eq!(total, Ok(72));
        assert_eq!(out.len(), 2);
        let base = mem.get_host_address(GuestAddress(0)).unwrap() as usize;
        assert_eq!(
            out[1],
            Segment {
                host: base + 0x5000,
                len: 60
            }
        );
    }

    #[test]
    fn looping_chain_is_rejected_not_followed() {
        let mem = memory();
        put(&mem, TABLE, 0, 0x4000, 12, VRING_DESC_F_NEXT, 1);
        put(&mem, TABLE, 1, 0x4100, 12, VRING_DESC_F_NEXT, 0);
        assert_eq!(walk_tx(&mem, 0), Err(ChainError::TooLong { limit: 8 }));
    }

    #[test]
    fn next_index_beyond_queue_size_is_rejected() {
        let mem = memory();
        put(&mem, TABLE, 0, 0x4000, 12, VRING_DESC_F_NEXT, 9);
        assert_eq!(
            walk_tx(&mem, 0),
            Err(ChainError::IndexOutOfRange { index: 9, size: 8 })
        );
    }

    #[test]
    fn buffer_outside_memory_is_rejected() {
        let mem = memory();
        put(&mem, TABLE, 0, MEM_SIZE as u64 - 4, 12, 0, 0);
        assert!(matches!(
            walk_tx(&mem, 0),
            Err(ChainError::BufferOutsideMemory { .. })
        ));
        put(&mem, TABLE, 0, u64::MAX - 2, 12, 0, 0);
        assert!(matches!(
            walk_tx(&mem, 0),
            Err(ChainError::BufferOutsideMemory { .. })
        ));
    }

    #[test]
    fn rings_outside_memory_or_misaligned_are_refused() {
        let host = HostMemory::new(Arc::new(memory()));
        assert!(matches!(
            SplitRing::at(&host, u64::MAX - 15, AVAIL, USED, 8),
            Err(RingError::OutsideMemory { .. })
        ));
        assert!(matches!(
            SplitRing::at(&host, TABLE, AVAIL, MEM_SIZE as u64 - 16, 8),
            Err(RingError::OutsideMemory { .. })
        ));
        assert!(matches!(
            SplitRing::at(&host, TABLE + 8, AVAIL, USED, 8),
            Err(RingError::Misaligned { .. })
        ));
        assert!(matches!(
            SplitRing::at(&host, TABLE, AVAIL, USED, 0),
            Err(RingError::NotReady)
        ));
    }

    #[test]
    fn buffer_crossing_two_regions_becomes_two_segments() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x8000),
            (GuestAddress(0x8000), 0x8000),
        ])
        .unwrap();
        put(&mem, TABLE, 0, 0x7ff0, 0x20, 0, 0);
        let mut out = Vec::new();
        assert_eq!(
            walk_at(&mem, TABLE, 0, Direction::DeviceReads, &mut out),
            Ok(0x20)
        );
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].len, out[1].len), (0x10, 0x10));
        let data: Vec<u8> = (0..0x20).collect();
        assert_eq!(scatter(&out, 0, &data), 0x20);
        let mut back = [0u8; 0x20];
        mem.read_slice(&mut back, GuestAddress(0x7ff0)).unwrap();
        assert_eq!(&back[..], &data[..]);
    }

    #[test]
    fn writable_descriptor_in_tx_chain_is_wrong_direction() {
        let mem = memory();
        put(&mem, TABLE, 0, 0x4000, 12, VRING_DESC_F_NEXT, 1);
        put(&mem, TABLE, 1, 0x4100, 12, VRING_DESC_F_WRITE, 0);
        assert_eq!(
            walk_tx(&mem, 0),
            Err(ChainError::WrongDirection(Direction::DeviceReads))
        );
    }

    #[test]
    fn readable_descriptor_in_rx_chain_is_wrong_direction() {
        let mem = memory();
        put(&mem, TABLE, 0, 0x4000, 1526, 0, 0);
        let result = walk_at(&mem, TABLE, 0, Direction::DeviceWrites, &mut Vec::new());
        assert_eq!(
            result,
            Err(ChainError::WrongDirection(Direction::DeviceWrites))
        );
    }

    #[test]
    fn indirect_table_is_followed() {
        let mem = memory();
        let indirect = 0x8000;
        put(&mem, TABLE, 0, indirect, 32, VRING_DESC_F_INDIRECT, 0);
        put(&mem, indirect, 0, 0x4000, 12, VRING_DESC_F_NEXT, 1);
        put(&mem, indirect, 1, 0x4100, 100, 0, 0);
        assert_eq!(walk_tx(&mem, 0), Ok(112));
    }

    #[test]
    fn bad_indirect_tables_are_rejected() {
        let mem = memory();
        let indirect = 0x8000;
        put(&mem, TABLE, 0, indirect, 20, VRING_DESC_F_INDIRECT, 0);
        assert_eq!(walk_tx(&mem, 0), Err(ChainError::BadIndirectLength(20)));
        put(&mem, TABLE, 0, indirect, 0, VRING_DESC_F_INDIRECT, 0);
        assert_eq!(walk_tx(&mem, 0), Err(ChainError::BadIndirectLength(0)));
        put(
            &mem,
            TABLE,
            0,
            indirect,
            16,
            VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT,
            1,
        );
        assert_eq!(walk_tx(&mem, 0), Err(ChainError::IndirectWithNext));
        put(&mem, TABLE, 0, indirect, 16, VRING_DESC_F_INDIRECT, 0);
        put(&mem, indirect, 0, indirect, 16, VRING_DESC_F_INDIRECT, 0);
        assert_eq!(walk_tx(&mem, 0), Err(ChainError::NestedIndirect));
        put(
            &mem,
            TABLE,
            0,
            MEM_SIZE as u64 - 16,
            64,
            VRING_DESC_F_INDIRECT,
            0,
        );
        assert!(matches!(
            walk_tx(&mem, 0),
            Err(ChainError::TableOutsideMemory(_))
        ));
    }

    #[test]
    fn looping_indirect_table_is_rejected() {
        let mem = memory();
        let indirect = 0x8000;
        put(&mem, TABLE, 0, indirect, 32, VRING_DESC_F_INDIRECT, 0);
        put(&mem, indirect, 0, 0x4000, 12, VRING_DESC_F_NEXT, 1);
        put(&mem, indirect, 1, 0x4100, 12, VRING_DESC_F_NEXT, 0);
        assert_eq!(walk_tx(&mem, 0), Err(ChainError::TooLong { limit: 2 }));
    }

    #[test]
    fn gather_and_scatter_cross_segment_boundaries() {
        let mem = memory();
        let base = mem.get_host_address(GuestAddress(0)).unwrap() as usize;
        let segments = [
            Segment {
                host: base + 0x4000,
                len: 3,
            },
            Segment {
                host: base + 0x5000,
                len: 10,
            },
        ];
        let data: Vec<u8> = (0..10).collect();
        assert_eq!(scatter(&segments, 1, &data), 10);
        let mut back = [0u8; 13];
        assert_eq!(gather(&segments, &mut back), 13);
        assert_eq!(&back[1..11], &data[..]);
    }
}
