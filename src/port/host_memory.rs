//! Guest memory as host pointers, for the data path.
//!
//! vm-memory's `Bytes` accessors find the region and build a volatile slice on every call,
//! which costs more than copying a 64-byte frame. The data path instead takes one snapshot
//! of the region table per memory generation ([`HostMemory`]) and translates each guest
//! range once, checking that it lies inside one region; everything after that is a plain
//! pointer access. The snapshot holds the `Arc` of the guest memory it was made from, so the
//! mappings stay valid for as long as it lives, even if the frontend replaces the table.
//!
//! Guest memory is shared with a guest that may write it at any moment: ring fields are read
//! and written with volatile accesses of the right width, and payload bytes are copied with
//! `copy_nonoverlapping`, as vm-memory does for slices (bytes have no invalid values, so a
//! racing guest can only garble its own data).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use vm_memory::{
    GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};

/// Guest memory as the frontend shares it: the region table, swapped by the vhost-user
/// handler when the frontend sends a new one.
pub type SharedGuestMemory = GuestMemoryAtomic<GuestMemoryMmap<()>>;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One mapped region: guest physical `[start, end)` at host address `host`.
#[derive(Debug, Clone, Copy)]
struct HostRegion {
    start: u64,
    end: u64,
    host: usize,
}

/// A snapshot of the guest's memory map as host addresses.
pub struct HostMemory {
    /// Unique per snapshot (process-wide), so views derived from one can be cached.
    id: u64,
    /// Keeps the mappings of `regions` alive.
    mem: Arc<GuestMemoryMmap<()>>,
    /// Sorted by `start`, non-overlapping (vm-memory guarantees both).
    regions: Box<[HostRegion]>,
}

impl HostMemory {
    pub fn new(mem: Arc<GuestMemoryMmap<()>>) -> Self {
        let mut regions: Vec<HostRegion> = mem
            .iter()
            .filter_map(|region| {
                let host = region.get_host_address(MemoryRegionAddress(0)).ok()?;
                let start = region.start_addr().0;
                Some(HostRegion {
                    start,
                    end: start.checked_add(region.len())?,
                    host: host as usize,
                })
            })
            .collect();
        regions.sort_by_key(|region| region.start);
        HostMemory {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            mem,
            regions: regions.into_boxed_slice(),
        }
    }

    /// The snapshot of `space`'s current memory, reusing `cached` when the memory is the
    /// same (the common case: the table changes only when the frontend sends a new one).
    pub fn current<'a>(
        space: &SharedGuestMemory,
        cached: &'a mut Option<HostMemory>,
    ) -> &'a HostMemory {
        let guard = space.memory();
        let same = cached
            .as_ref()
            .is_some_and(|snapshot| std::ptr::eq(Arc::as_ptr(&snapshot.mem), &*guard));
        if !same {
            *cached = Some(HostMemory::new(guard.into_inner()));
        }
        cached.get_or_insert_with(HostMemory::empty)
    }

    /// A snapshot that translates nothing (every access is refused).
    fn empty() -> Self {
        HostMemory {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            mem: Arc::new(GuestMemoryMmap::default()),
            regions: Box::new([]),
        }
    }

    /// This snapshot's process-wide unique id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The host address of guest range `[addr, addr + len)`, if it lies inside one region.
    #[inline]
    pub fn range(&self, addr: u64, len: usize) -> Option<usize> {
        let end = addr.checked_add(len as u64)?;
        let region = self.region_of(addr)?;
        (end <= region.end).then(|| region.host + (addr - region.start) as usize)
    }

    #[inline]
    fn region_of(&self, addr: u64) -> Option<&HostRegion> {
        // Guests have one to a few regions: a scan beats a binary search at that size.
        if self.regions.len() <= 4 {
            return self
                .regions
                .iter()
                .find(|region| region.start <= addr && addr < region.end);
        }
        let after = self.regions.partition_point(|region| region.start <= addr);
        let region = self.regions.get(after.checked_sub(1)?)?;
        (addr < region.end).then_some(region)
    }

    /// Splits guest range `[addr, addr + len)` into host pieces, one per region it crosses,
    /// calling `piece(host, len)` for each; false (and no call after the gap) if part of it is
    /// not guest memory.
    pub fn for_each_piece(
        &self,
        mut addr: u64,
        mut len: u64,
        mut piece: impl FnMut(usize, u32),
    ) -> bool {
        if addr.checked_add(len).is_none() {
            return false;
        }
        while len > 0 {
            let Some(region) = self.region_of(addr) else {
                return false;
            };
            let here = len.min(region.end - addr);
            // `here` is at most `len`, which the callers bound by a u32 descriptor length.
            piece(region.host + (addr - region.start) as usize, here as u32);
            addr += here;
            len -= here;
        }
        true
    }
}

/// Volatile little-endian accessors at host addresses that [`HostMemory::range`] returned.
///
/// # Safety (every function)
/// The address must come from a translation of a range covering the access, made from a
/// `HostMemory` that is still alive. Any alignment is fine (the guest chooses addresses).
pub mod volatile {
    /// # Safety
    /// See the module.
    #[inline]
    pub unsafe fn read_u16(at: usize) -> u16 {
        if at.is_multiple_of(2) {
            // One 2-byte load (ring fields are 2-aligned, checked when the ring is set up):
            // a volatile byte array is read a byte at a time and put together with shifts.
            // SAFETY: the caller's contract, and the alignment just checked.
            u16::from_le(unsafe { std::ptr::read_volatile(at as *const u16) })
        } else {
            // SAFETY: the caller's contract.
            u16::from_le_bytes(unsafe { std::ptr::read_volatile(at as *const [u8; 2]) })
        }
    }

    /// The 16 bytes at `at` as two little-endian words (low first), which is how a
    /// descriptor's fields are taken apart: with shifts of registers, not from bytes.
    ///
    /// # Safety
    /// See the module.
    #[inline]
    pub unsafe fn read_two_words(at: usize) -> (u64, u64) {
        if at.is_multiple_of(8) {
            // Two 8-byte loads (descriptor tables are 16-aligned; indirect ones in practice).
            // SAFETY: the caller's contract, and the alignment just checked.
            unsafe {
                (
                    u64::from_le(std::ptr::read_volatile(at as *const u64)),
                    u64::from_le(std::ptr::read_volatile((at + 8) as *const u64)),
                )
            }
        } else {
            // SAFETY: the caller's contract.
            let raw = unsafe { std::ptr::read_volatile(at as *const [u8; 16]) };
            let (low, high) = raw.split_at(8);
            (
                u64::from_le_bytes(low.try_into().expect("8 bytes")),
                u64::from_le_bytes(high.try_into().expect("8 bytes")),
            )
        }
    }
}

/// Asks the CPU to start loading the cache line at host address `at` (a hint: it never
/// faults, whatever the address), so that a later access does not wait for it.
#[inline]
pub fn prefetch(at: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is a hint that does not fault on any address.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(at as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Copies `out.len()` bytes from host address `at`. (Copies into guest memory go through
/// `nic::frame`, whose source may be another guest's memory.)
///
/// # Safety
/// `[at, at + out.len())` must lie in guest memory translated by a live `HostMemory`.
#[inline]
pub unsafe fn copy_from_guest(at: usize, out: &mut [u8]) {
    // SAFETY: the caller's contract; guest memory never overlaps our own buffers.
    unsafe { crate::packet::copy::copy_bytes(at as *const u8, out.as_mut_ptr(), out.len()) }
}
