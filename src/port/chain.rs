//! Walking a split-ring descriptor chain that an untrusted guest wrote.
//!
//! virtio-queue's `DescriptorChain` iterator ends silently on every fault, which would make a
//! looping chain look like a short one. We walk the chain ourselves so that each fault has a
//! name (and a counter), and we check every buffer against guest memory before anyone copies.

use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

/// Size of one split-ring descriptor in guest memory.
const DESC_SIZE: u64 = 16;

/// One guest buffer of a chain, already checked to lie in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

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
    #[error("descriptor table entry at {0:#x} is outside guest memory")]
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
}

/// A split-ring descriptor as laid out in guest memory (little endian).
#[derive(Clone, Copy, Debug, Default)]
struct RawDescriptor {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn read_descriptor<M: GuestMemory>(
    mem: &M,
    table: GuestAddress,
    index: u16,
) -> Result<RawDescriptor, ChainError> {
    let at = table
        .0
        .checked_add(u64::from(index) * DESC_SIZE)
        .ok_or(ChainError::TableOutsideMemory(table.0))?;
    let mut raw = [0u8; DESC_SIZE as usize];
    mem.read_slice(&mut raw, GuestAddress(at))
        .map_err(|_| ChainError::TableOutsideMemory(at))?;
    let le64 = |r: &[u8]| u64::from_le_bytes([r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]]);
    Ok(RawDescriptor {
        addr: le64(&raw[0..8]),
        len: u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]),
        flags: u16::from_le_bytes([raw[12], raw[13]]),
        next: u16::from_le_bytes([raw[14], raw[15]]),
    })
}

/// Walks the chain starting at `head` of a table of `queue_size` entries, appending its buffers
/// to `out` (cleared first) and returning their total length.
///
/// The walk is bounded by the table size (a loop is reported, not followed forever), each
/// buffer is checked against guest memory, and the direction of every descriptor must match.
/// An indirect descriptor may appear once, at the top level, without NEXT.
pub fn walk<M: GuestMemory>(
    mem: &M,
    desc_table: GuestAddress,
    queue_size: u16,
    head: u16,
    direction: Direction,
    out: &mut Vec<Segment>,
) -> Result<u32, ChainError> {
    out.clear();
    let mut table = desc_table;
    let mut table_size = queue_size;
    let mut index = head;
    let mut budget = queue_size;
    let mut indirect = false;
    let mut total: u32 = 0;
    loop {
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
        let desc = read_descriptor(mem, table, index)?;
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
            if !mem.check_range(
                GuestAddress(desc.addr),
                desc.len as usize,
                Permissions::Read,
            ) {
                return Err(ChainError::TableOutsideMemory(desc.addr));
            }
            indirect = true;
            table = GuestAddress(desc.addr);
            table_size = entries as u16;
            budget = table_size;
            index = 0;
            continue;
        }
        let writable = flags & VRING_DESC_F_WRITE != 0;
        if writable != (direction == Direction::DeviceWrites) {
            return Err(ChainError::WrongDirection(direction));
        }
        if desc.len > 0 {
            let access = match direction {
                Direction::DeviceReads => Permissions::Read,
                Direction::DeviceWrites => Permissions::Write,
            };
            if !mem.check_range(GuestAddress(desc.addr), desc.len as usize, access) {
                return Err(ChainError::BufferOutsideMemory {
                    addr: desc.addr,
                    len: desc.len,
                });
            }
            total = total
                .checked_add(desc.len)
                .ok_or(ChainError::LengthOverflow)?;
            out.push(Segment {
                addr: GuestAddress(desc.addr),
                len: desc.len,
            });
        }
        if flags & VRING_DESC_F_NEXT == 0 {
            return Ok(total);
        }
        index = desc.next;
    }
}

/// Copies up to `buf.len()` bytes of the chain's buffers into `buf`, returning how many.
pub fn gather<M: GuestMemory>(
    mem: &M,
    segments: &[Segment],
    buf: &mut [u8],
) -> Result<usize, ChainError> {
    let mut copied = 0;
    for segment in segments {
        if copied == buf.len() {
            break;
        }
        let take = (segment.len as usize).min(buf.len() - copied);
        mem.read_slice(&mut buf[copied..copied + take], segment.addr)
            .map_err(|_| ChainError::BufferOutsideMemory {
                addr: segment.addr.0,
                len: segment.len,
            })?;
        copied += take;
    }
    Ok(copied)
}

/// Scatters `data` into the chain's buffers starting `skip` bytes in, returning bytes written.
pub fn scatter<M: GuestMemory>(
    mem: &M,
    segments: &[Segment],
    mut skip: usize,
    data: &[u8],
) -> Result<usize, ChainError> {
    let mut written = 0;
    for segment in segments {
        if written == data.len() {
            break;
        }
        let len = segment.len as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        let room = len - skip;
        let take = room.min(data.len() - written);
        let addr = GuestAddress(segment.addr.0 + skip as u64);
        mem.write_slice(&data[written..written + take], addr)
            .map_err(|_| ChainError::BufferOutsideMemory {
                addr: segment.addr.0,
                len: segment.len,
            })?;
        written += take;
        skip = 0;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    const TABLE: u64 = 0x1000;
    const MEM_SIZE: usize = 0x10000;

    fn memory() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
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
        walk(
            mem,
            GuestAddress(TABLE),
            8,
            head,
            Direction::DeviceReads,
            &mut Vec::new(),
        )
    }

    #[test]
    fn two_readable_descriptors_make_one_chain() {
        let mem = memory();
        put(&mem, TABLE, 0, 0x4000, 12, VRING_DESC_F_NEXT, 3);
        put(&mem, TABLE, 3, 0x5000, 60, 0, 0);
        let mut out = Vec::new();
        let total = walk(
            &mem,
            GuestAddress(TABLE),
            8,
            0,
            Direction::DeviceReads,
            &mut out,
        );
        assert_eq!(total, Ok(72));
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[1],
            Segment {
                addr: GuestAddress(0x5000),
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
    fn table_outside_memory_is_rejected() {
        let mem = memory();
        let result = walk(
            &mem,
            GuestAddress(u64::MAX - 8),
            8,
            0,
            Direction::DeviceReads,
            &mut Vec::new(),
        );
        assert!(matches!(result, Err(ChainError::TableOutsideMemory(_))));
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
        let result = walk(
            &mem,
            GuestAddress(TABLE),
            8,
            0,
            Direction::DeviceWrites,
            &mut Vec::new(),
        );
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
        let segments = [
            Segment {
                addr: GuestAddress(0x4000),
                len: 3,
            },
            Segment {
                addr: GuestAddress(0x5000),
                len: 10,
            },
        ];
        let data: Vec<u8> = (0..10).collect();
        assert_eq!(scatter(&mem, &segments, 1, &data), Ok(10));
        let mut back = [0u8; 13];
        assert_eq!(gather(&mem, &segments, &mut back), Ok(13));
        assert_eq!(&back[1..11], &data[..]);
    }
}
