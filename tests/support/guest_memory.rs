//! Guest memory for a fake guest: a memfd shared with the daemon, mapped with vm-memory in a
//! few regions with gaps between them (so tests have addresses that are outside guest memory
//! yet between valid regions), and a small allocator for rings and buffers.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::Ordering;

use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use super::vhost_user::MemoryRegionMsg;
use super::{HarnessError, Result};

/// Size of each region: room for 8 vrings of rings plus 64 KiB frames in flight.
pub const REGION_SIZE: u64 = 16 << 20;
/// Guest physical bases of the regions. The gaps between them (e.g. [`GAP_ADDR`]) and the
/// space after the last one are not guest memory. The last region is above 4 GiB so 64-bit
/// addresses are exercised.
pub const REGION_BASES: [u64; 3] = [0x0010_0000, 0x4000_0000, 0x1_0000_0000];
/// An address between two regions: not guest memory.
pub const GAP_ADDR: u64 = 0x2000_0000;
/// An address far beyond all regions.
pub const BEYOND_ADDR: u64 = 0xF_0000_0000;

/// Alignment of every allocation: enough for descriptor tables (16) and cache-line friendly.
const ALLOC_ALIGN: u64 = 64;

pub struct GuestRam {
    memory: GuestMemoryMmap,
    memfd: File,
    /// Free ranges `[start, end)` in guest physical addresses, sorted, never spanning two
    /// regions (the regions are not adjacent, so merging can never join them).
    free: Vec<(u64, u64)>,
}

impl GuestRam {
    pub fn new() -> Result<Self> {
        let name = CString::new("prism-vnic-test-guest")
            .map_err(|e| HarnessError::Memory(format!("memfd name: {e}")))?;
        // SAFETY: name is a valid NUL-terminated string; the flags are a valid combination.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(HarnessError::Memory(format!(
                "memfd_create: {}",
                std::io::Error::last_os_error()
            )));
        }
        // SAFETY: fd was just returned by memfd_create and is owned by nobody else.
        let memfd = unsafe { File::from_raw_fd(fd) };
        let total = REGION_SIZE * REGION_BASES.len() as u64;
        memfd
            .set_len(total)
            .map_err(|e| HarnessError::Memory(format!("ftruncate memfd: {e}")))?;
        let mut ranges = Vec::new();
        for (i, base) in REGION_BASES.iter().enumerate() {
            let file = memfd
                .try_clone()
                .map_err(|e| HarnessError::Memory(format!("dup memfd: {e}")))?;
            ranges.push((
                GuestAddress(*base),
                REGION_SIZE as usize,
                Some(FileOffset::new(file, i as u64 * REGION_SIZE)),
            ));
        }
        let memory = GuestMemoryMmap::from_ranges_with_files(ranges)
            .map_err(|e| HarnessError::Memory(format!("mmap regions: {e}")))?;
        let free = REGION_BASES
            .iter()
            .map(|base| (*base, base + REGION_SIZE))
            .collect();
        Ok(GuestRam {
            memory,
            memfd,
            free,
        })
    }

    /// The SET_MEM_TABLE description of the regions. `user_addr` is where this process mapped
    /// each region, like QEMU sends its own virtual addresses.
    pub fn region_messages(&self) -> Result<Vec<MemoryRegionMsg>> {
        self.memory
            .iter()
            .enumerate()
            .map(|(i, region)| {
                let host = self
                    .memory
                    .get_host_address(region.start_addr())
                    .map_err(|e| HarnessError::Memory(format!("host address: {e}")))?;
                Ok(MemoryRegionMsg {
                    guest_phys_addr: region.start_addr().0,
                    memory_size: region.len(),
                    user_addr: host as u64,
                    mmap_offset: i as u64 * REGION_SIZE,
                    fd: self.memfd.as_raw_fd(),
                })
            })
            .collect()
    }

    /// Sets the length of the file behind the regions (what a frontend that shrinks its
    /// memfd under the daemon does). Pages past the new end fault in every mapping, ours
    /// included: the test must not touch them afterwards.
    pub fn set_file_len(&self, len: u64) -> Result<()> {
        self.memfd
            .set_len(len)
            .map_err(|e| HarnessError::Memory(format!("ftruncate memfd: {e}")))
    }

    /// Translates a guest physical address to the frontend virtual address the backend
    /// expects in SET_VRING_ADDR.
    pub fn user_addr(&self, gpa: u64) -> Result<u64> {
        self.memory
            .get_host_address(GuestAddress(gpa))
            .map(|p| p as u64)
            .map_err(|e| HarnessError::Memory(format!("host address of {gpa:#x}: {e}")))
    }

    /// Allocates `size` bytes (zeroed) inside one region.
    pub fn alloc(&mut self, size: u64) -> Result<u64> {
        let size = size.max(1).div_ceil(ALLOC_ALIGN) * ALLOC_ALIGN;
        let slot = self
            .free
            .iter()
            .position(|(start, end)| end - start >= size)
            .ok_or_else(|| HarnessError::Memory(format!("out of guest memory for {size} bytes")))?;
        let start = self.free[slot].0;
        self.free[slot].0 += size;
        if self.free[slot].0 == self.free[slot].1 {
            self.free.remove(slot);
        }
        self.write(start, &vec![0u8; size as usize])?;
        Ok(start)
    }

    /// Returns an allocation to the free list.
    pub fn free(&mut self, start: u64, size: u64) {
        let size = size.max(1).div_ceil(ALLOC_ALIGN) * ALLOC_ALIGN;
        let end = start + size;
        let pos = self.free.partition_point(|(s, _)| *s < start);
        self.free.insert(pos, (start, end));
        // Merge with the following and the preceding neighbour when adjacent.
        if pos + 1 < self.free.len() && self.free[pos].1 == self.free[pos + 1].0 {
            self.free[pos].1 = self.free[pos + 1].1;
            self.free.remove(pos + 1);
        }
        if pos > 0 && self.free[pos - 1].1 == self.free[pos].0 {
            self.free[pos - 1].1 = self.free[pos].1;
            self.free.remove(pos);
        }
    }

    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<()> {
        self.memory
            .write_slice(data, GuestAddress(gpa))
            .map_err(|e| {
                HarnessError::Memory(format!("write {} bytes at {gpa:#x}: {e}", data.len()))
            })
    }

    pub fn read(&self, gpa: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.memory
            .read_slice(&mut buf, GuestAddress(gpa))
            .map_err(|e| HarnessError::Memory(format!("read {len} bytes at {gpa:#x}: {e}")))?;
        Ok(buf)
    }

    pub fn write_u16(&self, gpa: u64, value: u16) -> Result<()> {
        self.write(gpa, &value.to_le_bytes())
    }

    pub fn read_u16(&self, gpa: u64) -> Result<u16> {
        let b = self.read(gpa, 2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub fn read_u32(&self, gpa: u64) -> Result<u32> {
        let b = self.read(gpa, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Publishes a ring index: the backend must see every write made before it.
    pub fn store_u16_release(&self, gpa: u64, value: u16) -> Result<()> {
        self.memory
            .store(u16::to_le(value), GuestAddress(gpa), Ordering::Release)
            .map_err(|e| HarnessError::Memory(format!("store at {gpa:#x}: {e}")))
    }

    /// Reads a ring index published by the backend, ordered before later reads of the ring.
    pub fn load_u16_acquire(&self, gpa: u64) -> Result<u16> {
        self.memory
            .load::<u16>(GuestAddress(gpa), Ordering::Acquire)
            .map(u16::from_le)
            .map_err(|e| HarnessError::Memory(format!("load at {gpa:#x}: {e}")))
    }

    /// The end of the region containing `gpa` (exclusive), for tests that build buffers
    /// running past the end of guest memory.
    pub fn region_end(&self, gpa: u64) -> Option<u64> {
        REGION_BASES
            .iter()
            .find(|base| (**base..**base + REGION_SIZE).contains(&gpa))
            .map(|base| base + REGION_SIZE)
    }
}
