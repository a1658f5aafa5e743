//! A split virtqueue's three areas as host pointers, translated and checked once, and the
//! ring access the RX and TX paths share: heads read from the avail ring with the guest's
//! index checked, used entries put and published together.
//!
//! virtio-queue's `Queue` keeps the ring state (indices, addresses, size) and answers the
//! frontend's messages; it is still the owner of that state. What it does per entry
//! (translate the address, build a volatile slice, store) is what this view replaces on the
//! data path: `SplitRing::new` checks that the descriptor table, avail ring and used ring lie
//! in guest memory and are aligned as the virtio spec requires, and the accessors are then
//! plain loads and stores. The view lives no longer than the [`HostMemory`] it came from.

use std::num::Wrapping;
use std::sync::atomic::{AtomicU16, Ordering, fence};

use vhost_user_backend::VringState;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemory;

use super::host_memory::{self, HostMemory, SharedGuestMemory, volatile};

/// VRING_AVAIL_F_NO_INTERRUPT: without EVENT_IDX, the driver's "don't interrupt me" flag.
const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Why a queue's areas cannot be used.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingError {
    #[error("queue is not ready")]
    NotReady,
    #[error("{area} at {addr:#x} ({len} bytes) is not in guest memory")]
    OutsideMemory {
        area: &'static str,
        addr: u64,
        len: usize,
    },
    #[error("queue size {size} is not a power of two")]
    BadSize { size: u16 },
    #[error("{area} at {addr:#x} is not {align}-byte aligned")]
    Misaligned {
        area: &'static str,
        addr: u64,
        align: u64,
    },
}

/// Host addresses of one split ring.
#[derive(Debug, Clone, Copy)]
pub struct SplitRing {
    desc: usize,
    avail: usize,
    used: usize,
    size: u16,
}

fn area(
    mem: &HostMemory,
    area: &'static str,
    addr: u64,
    len: usize,
    align: u64,
) -> Result<usize, RingError> {
    if !addr.is_multiple_of(align) {
        return Err(RingError::Misaligned { area, addr, align });
    }
    mem.range(addr, len)
        .ok_or(RingError::OutsideMemory { area, addr, len })
}

/// `struct vring_used_elem { le32 id; le32 len; }` as the used ring holds it.
#[inline]
pub fn used_elem(head: u16, len: u32) -> [u8; 8] {
    (u64::from(head) | u64::from(len) << 32).to_le_bytes()
}

impl SplitRing {
    /// The areas of `queue` (which must be ready) in `mem`.
    pub fn new(mem: &HostMemory, queue: &Queue) -> Result<Self, RingError> {
        if !queue.ready() {
            return Err(RingError::NotReady);
        }
        Self::at(
            mem,
            queue.desc_table(),
            queue.avail_ring(),
            queue.used_ring(),
            queue.size(),
        )
    }

    /// The areas of a ring of `size` entries at the given guest addresses.
    pub fn at(
        mem: &HostMemory,
        desc: u64,
        avail: u64,
        used: u64,
        size: u16,
    ) -> Result<Self, RingError> {
        if size == 0 {
            return Err(RingError::NotReady);
        }
        // virtio-queue refuses other sizes too; the slot arithmetic below relies on it.
        if !size.is_power_of_two() {
            return Err(RingError::BadSize { size });
        }
        let entries = usize::from(size);
        // virtio 1.2, 2.7: alignment 16, 2 and 4; avail and used carry a trailing event field.
        Ok(SplitRing {
            desc: area(mem, "descriptor table", desc, 16 * entries, 16)?,
            avail: area(mem, "avail ring", avail, 6 + 2 * entries, 2)?,
            used: area(mem, "used ring", used, 6 + 8 * entries, 4)?,
            size,
        })
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    /// Makes the used elements before `next_used` visible and notes the span for the next
    /// interrupt decision.
    pub fn publish(&self, before: Wrapping<u16>, next_used: Wrapping<u16>, since: &mut UsedSince) {
        if before != next_used {
            self.publish_used(next_used);
            since.advanced(before, next_used);
        }
    }

    /// The driver's avail index; entries before it are visible once this returns.
    #[inline]
    pub fn avail_idx(&self) -> Wrapping<u16> {
        // SAFETY: `avail + 2` is in the avail area and 2-aligned (checked in `new`).
        let idx = unsafe { &*((self.avail + 2) as *const AtomicU16) }.load(Ordering::Acquire);
        Wrapping(u16::from_le(idx))
    }

    /// The head index in avail slot `position % size`.
    #[inline]
    pub fn avail_entry(&self, position: Wrapping<u16>) -> u16 {
        let slot = usize::from(position.0 & (self.size - 1));
        // SAFETY: the slot is inside the avail area.
        unsafe { volatile::read_u16(self.avail + 4 + 2 * slot) }
    }

    /// Descriptor `index` as two little-endian words (address; length, flags and next),
    /// or `None` past the table.
    #[inline]
    pub fn descriptor(&self, index: u16) -> Option<(u64, u64)> {
        if index >= self.size {
            return None;
        }
        // SAFETY: the entry is inside the descriptor area.
        Some(unsafe { volatile::read_two_words(self.desc + 16 * usize::from(index)) })
    }

    /// Starts loading the descriptor the avail entry at `position` names (a hint; nothing
    /// is checked or read that the walk will not check again).
    #[inline]
    pub fn prefetch_descriptor_of(&self, position: Wrapping<u16>) {
        self.prefetch_descriptor(self.avail_entry(position));
    }

    /// Starts loading descriptor `head` (a hint; nothing past the table).
    #[inline]
    pub fn prefetch_descriptor(&self, head: u16) {
        if head < self.size {
            host_memory::prefetch(self.desc + 16 * usize::from(head));
        }
    }

    /// Copies the heads in avail slots `first`, `first + 1`, ... (modulo the size) into
    /// `heads`, at most a ring's worth. Entries before the avail index do not change until
    /// they are used, so a plain copy (one or two runs) reads them; a volatile load per
    /// entry cannot be merged into wider loads.
    pub fn copy_avail_entries(&self, first: Wrapping<u16>, heads: &mut [u16]) {
        let size = usize::from(self.size);
        assert!(heads.len() <= size, "more entries than the ring holds");
        let start = usize::from(first.0) & (size - 1);
        let (before_end, after_wrap) = heads.split_at_mut(heads.len().min(size - start));
        for (slot, run) in [(start, before_end), (0, after_wrap)] {
            // SAFETY: `slot + run.len() <= size`, so the run is inside the avail area; guest
            // memory never overlaps our own.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    (self.avail + 4 + 2 * slot) as *const u16,
                    run.as_mut_ptr(),
                    run.len(),
                );
            }
            for head in run.iter_mut() {
                *head = u16::from_le(*head);
            }
        }
    }

    /// Writes `elems` (each made by [`used_elem`]) at used positions `first`, `first + 1`,
    /// ... (modulo the size), not yet visible to the driver. As one copy per run up to the
    /// ring's end rather than a store per element.
    #[inline]
    pub fn put_used_run(&self, first: Wrapping<u16>, elems: &[[u8; 8]]) {
        let mut slot = usize::from(first.0 & (self.size - 1));
        let mut rest = elems;
        while !rest.is_empty() {
            let (run, next) = rest.split_at(rest.len().min(usize::from(self.size) - slot));
            // SAFETY: slots `slot..slot + run.len()` are inside the used area (checked in
            // `new`), which is guest memory and never overlaps our own `elems`.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    run.as_ptr().cast::<u8>(),
                    (self.used + 4 + 8 * slot) as *mut u8,
                    8 * run.len(),
                )
            };
            rest = next;
            slot = 0;
        }
    }

    /// Makes the used elements before `next_used` visible to the driver.
    #[inline]
    pub fn publish_used(&self, next_used: Wrapping<u16>) {
        // SAFETY: `used + 2` is in the used area and 2-aligned (the area is 4-aligned).
        unsafe { &*((self.used + 2) as *const AtomicU16) }
            .store(next_used.0.to_le(), Ordering::Release);
    }

    /// Whether the driver wants an interrupt for the used entries published in
    /// `[old, new)` (virtio 1.2, 2.7.10; `vring_need_event` in Linux).
    pub fn wants_interrupt(&self, event_idx: bool, old: Wrapping<u16>, new: Wrapping<u16>) -> bool {
        // The used index stores must be visible before we read the driver's wishes.
        fence(Ordering::SeqCst);
        let trailer = self.avail + 4 + 2 * usize::from(self.size);
        if event_idx {
            // SAFETY: used_event is the avail area's trailing field.
            let used_event = Wrapping(unsafe { volatile::read_u16(trailer) });
            new - used_event - Wrapping(1) < new - old
        } else {
            // SAFETY: the flags field starts the avail area.
            let flags = unsafe { volatile::read_u16(self.avail) };
            flags & AVAIL_F_NO_INTERRUPT == 0
        }
    }
}

/// A [`SplitRing`] kept across calls: re-translated only when the queue's addresses or the
/// guest memory snapshot change.
#[derive(Debug, Default)]
pub struct RingCache {
    cached: Option<(RingKey, SplitRing)>,
}

/// What a view depends on: memory snapshot id, descriptor table, avail ring, used ring, size.
type RingKey = (u64, u64, u64, u64, u16);

impl RingCache {
    /// The view last handed out, whatever the queue's state now.
    pub fn last(&self) -> Option<SplitRing> {
        self.cached.map(|(_, ring)| ring)
    }

    pub fn get(&mut self, mem: &HostMemory, queue: &Queue) -> Result<SplitRing, RingError> {
        if !queue.ready() {
            return Err(RingError::NotReady);
        }
        let key = (
            mem.id(),
            queue.desc_table(),
            queue.avail_ring(),
            queue.used_ring(),
            queue.size(),
        );
        match self.cached {
            Some((cached_key, ring)) if cached_key == key => Ok(ring),
            _ => {
                let ring = SplitRing::new(mem, queue)?;
                self.cached = Some((key, ring));
                Ok(ring)
            }
        }
    }
}

/// Used entries published since the driver was last considered for an interrupt, tolerant
/// of a frontend that reset the ring behind our back (SET_VRING_BASE): after a reset the
/// next decision notifies, since a spurious interrupt is harmless and a missed one stalls.
#[derive(Debug, Default, Clone, Copy)]
pub struct UsedSince {
    /// `next_used` at the last decision, and what we expect `next_used` to be now.
    last: Option<(Wrapping<u16>, Wrapping<u16>)>,
}

impl UsedSince {
    /// Records that we advanced the ring's used index from `before` to `after`.
    pub fn advanced(&mut self, before: Wrapping<u16>, after: Wrapping<u16>) {
        self.last = match self.last {
            Some((old, expected)) if expected == before => Some((old, after)),
            // First entries, or a reset in between: consider everything since `before`.
            _ => Some((before, after)),
        };
    }

    /// Whether to interrupt the driver now that the used index is `now`; starts a new span.
    pub fn decide(&mut self, ring: &SplitRing, event_idx: bool, now: Wrapping<u16>) -> bool {
        let wants = match self.last {
            Some((old, expected)) if expected == now => {
                old != now && ring.wants_interrupt(event_idx, old, now)
            }
            // The index moved without us (a reset): be safe.
            Some(_) => true,
            None => false,
        };
        self.last = Some((now, now));
        wants
    }
}

/// What reading the next avail entry found.
pub enum NextHead {
    Head(u16),
    Empty,
    /// The guest's avail index is more than a queue ahead of ours: the ring is corrupt.
    Broken {
        avail: u16,
        next: u16,
    },
}

/// The guest's avail index as last read, so a batch reads it from guest memory once rather
/// than once per chain. Valid only while the queue is not reset; a fresh one per batch.
#[derive(Default)]
pub struct AvailCache {
    known: Option<Wrapping<u16>>,
    /// Heads of the entries from `base` on, `count` of them, copied from the avail ring
    /// together. The driver appends to the line that holds them as it makes more chains
    /// available, which takes the line away from us: read one at a time, entry after entry
    /// missed again. Published entries do not change until they are used, so the copy
    /// stays right (also across an RX rewind, which only moves back within it).
    base: Wrapping<u16>,
    count: u16,
    heads: [u16; AVAIL_COPY],
}

/// Avail entries copied at once (64 bytes of the ring: one or two lines).
const AVAIL_COPY: usize = 32;

impl AvailCache {
    /// Whether the guest's index as last read is ahead of `position` (an entry is there).
    pub fn is_ahead_of(&self, position: Wrapping<u16>) -> bool {
        self.known.is_some_and(|known| known != position)
    }

    /// Starts loading the descriptor of the chain at avail `position`, if the guest made one
    /// available there. The head comes from the copy when it holds the entry: read from the
    /// ring, it was a miss on the line the driver is appending to.
    #[inline]
    pub fn prefetch_descriptor(&self, ring: &SplitRing, position: Wrapping<u16>) {
        if !self.is_ahead_of(position) {
            return;
        }
        let offset = usize::from((position - self.base).0);
        match self.heads[..usize::from(self.count)].get(offset) {
            Some(&head) => ring.prefetch_descriptor(head),
            None => ring.prefetch_descriptor_of(position),
        }
    }
}

/// Reads the next chain head the guest made available, advancing our avail index.
///
/// Inline for the commonest case, a head already in the copy of the avail entries behind an
/// index already read: called once per frame on both paths, the call and its return of the
/// enum cost more than that case's few loads. The rest (reading the guest's index, copying
/// entries, a broken ring) stays out of line.
#[inline]
pub fn next_head(queue: &mut Queue, ring: &SplitRing, cache: &mut AvailCache) -> NextHead {
    let next = Wrapping(queue.next_avail());
    let offset = (next - cache.base).0;
    if cache.known.is_some_and(|known| known != next)
        && offset < cache.count
        && let Some(&head) = cache.heads.get(usize::from(offset))
    {
        queue.set_next_avail((next + Wrapping(1)).0);
        return NextHead::Head(head);
    }
    next_head_refill(queue, ring, cache)
}

/// [`next_head`] past the copy of the avail entries: reads the guest's index if ours caught
/// up with it, and copies the next entries.
#[inline(never)]
fn next_head_refill(queue: &mut Queue, ring: &SplitRing, cache: &mut AvailCache) -> NextHead {
    let next = Wrapping(queue.next_avail());
    let avail = match cache.known {
        // Still ahead of us: checked against the queue size when it was read.
        Some(known) if known != next => known,
        _ => {
            let avail = ring.avail_idx();
            let pending = (avail - next).0;
            cache.known = Some(avail);
            if pending == 0 {
                return NextHead::Empty;
            }
            if pending > ring.size() {
                cache.known = None;
                return NextHead::Broken {
                    avail: avail.0,
                    next: next.0,
                };
            }
            avail
        }
    };
    debug_assert_ne!(avail, next);
    queue.set_next_avail((next + Wrapping(1)).0);
    let mut offset = (next - cache.base).0;
    if offset >= cache.count {
        let count = (avail - next).0.min(AVAIL_COPY as u16);
        ring.copy_avail_entries(next, &mut cache.heads[..usize::from(count)]);
        cache.base = next;
        cache.count = count;
        offset = 0;
    }
    NextHead::Head(cache.heads[usize::from(offset)])
}

/// Whether the guest made chains available that we have not taken yet.
pub fn has_available<M: GuestMemory>(state: &VringState<SharedGuestMemory>, mem: &M) -> bool {
    let queue = state.get_queue();
    queue.ready()
        && queue
            .avail_idx(mem, Ordering::Acquire)
            .is_ok_and(|avail| avail.0 != queue.next_avail())
}

/// Used elements put but not yet stored into the guest's used ring: they go there together,
/// when a batch publishes or a burst ends (DPDK's vhost calls it a shadow used ring).
///
/// Why: the driver reads the used ring on its CPU, so every store into it misses. Stored one
/// per frame, those misses sat in the store buffer while the next frame ran, and the first
/// load that could not be forwarded from a store (a value put together from narrower stores)
/// waited for them all: per frame, one cross-core round trip in the TX profile. Stored
/// together, the misses overlap.
///
/// The elements are kept as the ring lays them out (`struct vring_used_elem`, little-endian
/// id then len), so they go out as one copy of up to two runs (DPDK does the same): an
/// 8-byte store per element put 32 entries of a 32-frame burst into the store buffer, where
/// they waited behind the frame copies' misses and kept later stores from entering.
#[derive(Debug, Default)]
pub struct UsedShadow {
    /// The used position of `elems[0]`.
    first: u16,
    /// Used elements in used order, in the ring's layout.
    elems: Vec<[u8; 8]>,
}

impl UsedShadow {
    /// Stores the elements put since the last call into `ring`'s used area (the ring they
    /// were put for), still invisible to the driver until the used index moves.
    pub fn store(&mut self, ring: &SplitRing) {
        ring.put_used_run(Wrapping(self.first), &self.elems);
        self.elems.clear();
    }
}

/// Appends used element (`head`, `len`) at the queue's next used position, not yet
/// stored or published; false for a head the ring cannot name (counted by the caller).
#[inline]
pub fn put_used(
    queue: &mut Queue,
    ring: &SplitRing,
    shadow: &mut UsedShadow,
    head: u16,
    len: u32,
) -> bool {
    if head >= ring.size() {
        return false;
    }
    let next = queue.next_used();
    if shadow.elems.is_empty() {
        shadow.first = next;
    }
    shadow.elems.push(used_elem(head, len));
    queue.set_next_used(next.wrapping_add(1));
    true
}

/// Stores and publishes the used elements put since `before` (the queue's next used index
/// then), and notes them for the next interrupt decision.
pub fn publish_used(
    queue: &Queue,
    ring: &SplitRing,
    shadow: &mut UsedShadow,
    before: u16,
    since: &mut UsedSince,
) {
    shadow.store(ring);
    ring.publish(Wrapping(before), Wrapping(queue.next_used()), since);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    pub(crate) const DESC: u64 = 0x1000;
    pub(crate) const AVAIL: u64 = 0x2000;
    pub(crate) const USED: u64 = 0x3000;
    pub(crate) const SIZE: u16 = 8;

    /// 64 KiB of guest memory with a ring of SIZE at DESC, AVAIL and USED, as the host sees it.
    pub(crate) fn rig() -> (GuestMemoryMmap<()>, HostMemory) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let host = HostMemory::new(Arc::new(mem.clone()));
        (mem, host)
    }

    fn set_used_event(mem: &GuestMemoryMmap<()>, value: u16) {
        let at = AVAIL + 4 + 2 * u64::from(SIZE);
        mem.write_obj(value.to_le(), GuestAddress(at)).unwrap();
    }

    #[test]
    fn used_entries_and_index_land_where_the_driver_reads_them() {
        let (mem, host) = rig();
        let ring = SplitRing::at(&host, DESC, AVAIL, USED, SIZE).unwrap();
        ring.put_used_run(Wrapping(9), &[used_elem(5, 1500)]);
        ring.publish_used(Wrapping(10));
        let idx: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
        assert_eq!(idx, 10);
        // Position 9 is slot 1 of 8.
        let id: u32 = mem.read_obj(GuestAddress(USED + 4 + 8)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(USED + 4 + 8 + 4)).unwrap();
        assert_eq!((id, len), (5, 1500));
        mem.write_obj(7u16.to_le(), GuestAddress(AVAIL + 2))
            .unwrap();
        mem.write_obj(3u16.to_le(), GuestAddress(AVAIL + 4 + 2 * 7))
            .unwrap();
        assert_eq!(ring.avail_idx(), Wrapping(7));
        assert_eq!(ring.avail_entry(Wrapping(15)), 3);
        assert_eq!(ring.descriptor(SIZE), None);
    }

    #[test]
    fn avail_entries_copy_in_ring_order_across_the_wrap() {
        let (mem, host) = rig();
        let ring = SplitRing::at(&host, DESC, AVAIL, USED, SIZE).unwrap();
        for slot in 0..SIZE {
            mem.write_obj(
                (100 + slot).to_le(),
                GuestAddress(AVAIL + 4 + 2 * u64::from(slot)),
            )
            .unwrap();
        }
        // Positions 65533.. are slots 5, 6, 7, then 0, 1 after the wrap.
        let mut heads = [0u16; 5];
        ring.copy_avail_entries(Wrapping(65533), &mut heads);
        assert_eq!(heads, [105, 106, 107, 100, 101]);
        let mut all = [0u16; SIZE as usize];
        ring.copy_avail_entries(Wrapping(0), &mut all);
        assert_eq!(all, [100, 101, 102, 103, 104, 105, 106, 107]);
        let mut none = [0u16; 0];
        ring.copy_avail_entries(Wrapping(3), &mut none);
    }

    #[test]
    fn a_ring_whose_size_is_not_a_power_of_two_is_refused() {
        let (_mem, host) = rig();
        assert_eq!(
            SplitRing::at(&host, DESC, AVAIL, USED, 6).unwrap_err(),
            RingError::BadSize { size: 6 }
        );
    }

    #[test]
    fn event_index_asks_for_an_interrupt_only_when_crossed() {
        let (mem, host) = rig();
        let ring = SplitRing::at(&host, DESC, AVAIL, USED, SIZE).unwrap();
        // The driver wants an interrupt once entry 4 is used (used_event = 4).
        set_used_event(&mem, 4);
        assert!(!ring.wants_interrupt(true, Wrapping(0), Wrapping(4)));
        assert!(ring.wants_interrupt(true, Wrapping(0), Wrapping(5)));
        assert!(ring.wants_interrupt(true, Wrapping(4), Wrapping(6)));
        assert!(!ring.wants_interrupt(true, Wrapping(5), Wrapping(7)));
        // Across the u16 wrap.
        set_used_event(&mem, 65535);
        assert!(ring.wants_interrupt(true, Wrapping(65534), Wrapping(1)));
        // Without EVENT_IDX the avail flags decide.
        assert!(ring.wants_interrupt(false, Wrapping(0), Wrapping(1)));
        mem.write_obj(AVAIL_F_NO_INTERRUPT.to_le(), GuestAddress(AVAIL))
            .unwrap();
        assert!(!ring.wants_interrupt(false, Wrapping(0), Wrapping(1)));
    }

    #[test]
    fn used_since_spans_batches_and_survives_a_ring_reset() {
        let (mem, host) = rig();
        let ring = SplitRing::at(&host, DESC, AVAIL, USED, SIZE).unwrap();
        set_used_event(&mem, 2);
        let mut since = UsedSince::default();
        // Nothing published yet: no interrupt.
        assert!(!since.decide(&ring, true, Wrapping(0)));
        // Two batches, 0..2 then 2..3: the span 0..3 crosses used_event 2.
        since.advanced(Wrapping(0), Wrapping(2));
        since.advanced(Wrapping(2), Wrapping(3));
        assert!(since.decide(&ring, true, Wrapping(3)));
        // Nothing new since the decision.
        assert!(!since.decide(&ring, true, Wrapping(3)));
        // The frontend reset the ring to 0 behind our back: the next decision notifies.
        assert!(since.decide(&ring, true, Wrapping(0)));
        // A reset between batches restarts the span at the new base.
        since.advanced(Wrapping(40), Wrapping(41));
        set_used_event(&mem, 40);
        assert!(since.decide(&ring, true, Wrapping(41)));
    }
}
