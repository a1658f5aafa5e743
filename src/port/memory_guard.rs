//! Guest memory a frontend can take away: the regions' files are checked when mapped, and a
//! fault in a mapping whose file shrank later cannot kill the daemon.
//!
//! A vhost-user frontend hands over a file descriptor per memory region and says how much of
//! it to map. A region larger than its file maps anyway (mmap does not check), and the first
//! access past the file's end raises SIGBUS, whose default action ends the whole process:
//! every guest's port with it. The same happens when the frontend shrinks the file after the
//! check (ftruncate on its memfd).
//!
//! Two defences:
//! - [`check_regions`]: every region of a new memory table is compared with its file (fstat)
//!   and a table with a region beyond its file's end is refused.
//! - [`install`] / [`Registration`]: a SIGBUS handler for faults inside registered guest
//!   mappings. It maps a private zero page over the faulting page (`MAP_FIXED`) and returns;
//!   the access then completes on that page. The guest loses nothing it still had (the page
//!   was past its file's end, so no guest could see it), the daemon loses nothing, and the
//!   fault is counted on the port. A SIGBUS anywhere else is not ours: the handler restores
//!   the default action and returns, so the access faults again and the process dies as it
//!   would have.
//!
//! Why this design rather than a recovery point (sigsetjmp around every copy): a jump out of
//! a signal handler across Rust frames skips destructors and is undefined behaviour, and a
//! recovery point per copy costs on the data path. Replacing the page needs nothing on the
//! data path at all: the copies stay plain copies. Only `mmap` (a system call, safe in a
//! signal handler) and atomics run in the handler.
//!
//! A registration lives as long as the connection whose memory it describes (its backend);
//! a mapping may outlive it for a moment (a snapshot still held), during which a SIGBUS in it
//! is fatal as before. Slots are few and fixed so the handler never allocates or locks.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::stats::PortCounters;

/// Why a memory table is refused.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("region at guest {guest:#x} has no file behind it")]
    NoFile { guest: u64 },
    #[error("cannot fstat the file of the region at guest {guest:#x}: {source}")]
    Stat {
        guest: u64,
        #[source]
        source: io::Error,
    },
    #[error(
        "region at guest {guest:#x} maps {len} bytes from offset {offset} of a file of {file_len} \
         bytes: past its end"
    )]
    BeyondFile {
        guest: u64,
        offset: u64,
        len: u64,
        file_len: u64,
    },
}

/// Checks that every region of `mem` lies inside its file.
pub fn check_regions(mem: &GuestMemoryMmap<()>) -> Result<(), MemoryError> {
    for region in mem.iter() {
        let guest = region.start_addr().0;
        let file_offset = region.file_offset().ok_or(MemoryError::NoFile { guest })?;
        // SAFETY: a zeroed `stat` is a valid out-parameter; the descriptor is the region's
        // file, open while the region lives.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: see above; `stat` is valid for writes.
        if unsafe { libc::fstat(file_offset.file().as_raw_fd(), &mut stat) } != 0 {
            return Err(MemoryError::Stat {
                guest,
                source: io::Error::last_os_error(),
            });
        }
        let offset = file_offset.start();
        let len = region.len();
        let file_len = u64::try_from(stat.st_size).unwrap_or(0);
        // Only regular files and memfds have a size to check against; a device (e.g. a DAX
        // or hugetlbfs special file reports its size too) of size 0 is refused as well.
        let fits = offset.checked_add(len).is_some_and(|end| end <= file_len);
        if !fits {
            return Err(MemoryError::BeyondFile {
                guest,
                offset,
                len,
                file_len,
            });
        }
    }
    Ok(())
}

/// Registered mappings at once (each a region of a connected guest).
const SLOTS: usize = 256;

struct Slot {
    /// Host range `[start, end)`; `end == 0` when free.
    start: AtomicUsize,
    end: AtomicUsize,
    /// The counter to add the fault to (a `&'static`-like pointer: kept alive by the
    /// registration, which clears the slot before it lets go of it).
    counter: AtomicUsize,
    taken: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot {
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    counter: AtomicUsize::new(0),
    taken: AtomicBool::new(false),
};

static SLOT_TABLE: [Slot; SLOTS] = [FREE; SLOTS];

/// Faults absorbed since start, all ports together (for the log).
static ABSORBED: AtomicU64 = AtomicU64::new(0);

/// Guest mappings registered for fault recovery; unregistered when dropped.
pub struct Registration {
    slots: Vec<usize>,
    /// Keeps the counter the slots point at alive.
    _counters: Arc<PortCounters>,
}

impl Registration {
    /// Registers every region of `mem`; faults in them are counted in `counters`
    /// (`guest_memory_faults`). Installs the handler on first use. Regions that find no free
    /// slot are not covered (logged).
    pub fn new(mem: &GuestMemoryMmap<()>, counters: Arc<PortCounters>) -> Registration {
        if let Err(error) = install() {
            log::warn!("guest memory faults will not be absorbed: {error}");
        }
        let counter: *const AtomicU64 = &counters.guest_memory_faults;
        let mut slots = Vec::new();
        for region in mem.iter() {
            let Ok(host) = region.get_host_address(vm_memory::MemoryRegionAddress(0)) else {
                continue;
            };
            let start = host as usize;
            let Some(end) = start.checked_add(region.len() as usize) else {
                continue;
            };
            let free = SLOT_TABLE.iter().position(|slot| {
                slot.taken
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            });
            let Some(index) = free else {
                log::warn!("guest memory at {start:#x}: no fault-recovery slot left");
                continue;
            };
            let slot = &SLOT_TABLE[index];
            slot.counter.store(counter as usize, Ordering::Release);
            slot.start.store(start, Ordering::Release);
            slot.end.store(end, Ordering::Release);
            slots.push(index);
        }
        Registration {
            slots,
            _counters: counters,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        for &index in &self.slots {
            let slot = &SLOT_TABLE[index];
            slot.end.store(0, Ordering::Release);
            slot.start.store(0, Ordering::Release);
            slot.counter.store(0, Ordering::Release);
            slot.taken.store(false, Ordering::Release);
        }
    }
}

/// Faults absorbed so far, all ports together.
pub fn absorbed() -> u64 {
    ABSORBED.load(Ordering::Relaxed)
}

/// Installs the SIGBUS handler (once per process; later calls do nothing).
pub fn install() -> io::Result<()> {
    static INSTALLED: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
    let rc = *INSTALLED.get_or_init(|| {
        // SAFETY: a zeroed sigaction is valid; we fill in the handler, flags and mask.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_sigbus as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        // SAFETY: `sa_mask` is valid for writes; `action` is a valid sigaction whose handler
        // only calls async-signal-safe functions (see `on_sigbus`).
        unsafe {
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut())
        }
    });
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::other("sigaction(SIGBUS) failed"))
    }
}

/// The SIGBUS handler: see the module. Async-signal-safe: atomics, `mmap`, `sigaction`.
extern "C" fn on_sigbus(
    _signal: libc::c_int,
    info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    if code == libc::BUS_ADRERR
        && let Some(slot) = SLOT_TABLE.iter().find(|slot| {
            let start = slot.start.load(Ordering::Acquire);
            let end = slot.end.load(Ordering::Acquire);
            start <= addr && addr < end
        })
        && replace_page(addr)
    {
        ABSORBED.fetch_add(1, Ordering::Relaxed);
        let counter = slot.counter.load(Ordering::Acquire);
        if counter != 0 {
            // SAFETY: the registration that filled the slot keeps the counter alive until it
            // clears the slot.
            unsafe { &*(counter as *const AtomicU64) }.fetch_add(1, Ordering::Relaxed);
        }
        return;
    }
    // Not ours (or the page could not be replaced): the default action, on the access's
    // next attempt.
    // SAFETY: a zeroed sigaction with SIG_DFL restores the default action.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
    }
}

/// Maps a private zero page over the page holding `addr` (4 KiB, or 2 MiB for a huge-page
/// mapping, where a smaller page cannot replace part of one).
fn replace_page(addr: usize) -> bool {
    for size in [4096usize, 2 << 20] {
        let page = addr & !(size - 1);
        // SAFETY: the range is inside a guest mapping registered by us (checked by the
        // caller); replacing it changes only what the guest's vanished pages read as.
        let mapped = unsafe {
            libc::mmap(
                page as *mut libc::c_void,
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if mapped != libc::MAP_FAILED {
            return true;
        }
    }
    false
}
