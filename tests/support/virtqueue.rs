//! The driver side of a split virtqueue (virtio 1.x, 2.7), laid out in guest memory by the
//! harness itself so tests control every byte the backend reads: descriptors, chains and
//! indices, including malicious ones.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::time::Duration;

use virtio_bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::guest_memory::GuestRam;
use super::{HarnessError, Result};

pub const DESC_F_NEXT: u16 = VRING_DESC_F_NEXT as u16;
pub const DESC_F_WRITE: u16 = VRING_DESC_F_WRITE as u16;
pub const DESC_F_INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;
const DESC_SIZE: u64 = 16;

/// One descriptor as it is written to the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl Desc {
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..].copy_from_slice(&self.next.to_le_bytes());
        b
    }
}

/// A buffer of a well-formed chain: data the device reads, or room the device writes.
#[derive(Clone, Debug)]
pub enum ChainBuf {
    Readable(Vec<u8>),
    Writable(u32),
}

/// A used ring entry as the backend wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsedEntry {
    pub head: u16,
    pub len: u32,
}

/// A completed chain: the used entry, plus the bytes the device wrote into the chain's
/// writable buffers (the first `len` of them, in chain order).
#[derive(Clone, Debug)]
pub struct Completion {
    pub entry: UsedEntry,
    pub written: Vec<u8>,
}

/// What the harness remembers about a chain the device owns.
#[derive(Default, Debug)]
pub struct InFlight {
    /// Descriptor table slots to return to the free list.
    pub descs: Vec<u16>,
    /// Writable buffers in chain order, to read the device's output from.
    pub writable: Vec<(u64, u32)>,
    /// Guest memory allocations (`start`, `size`) to free once the chain completes.
    pub allocations: Vec<(u64, u64)>,
}

pub struct SplitQueue {
    pub vring: u16,
    pub size: u16,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    ring_allocations: Vec<(u64, u64)>,
    /// Next avail index to publish (free-running, wraps at 2^16).
    avail_idx: u16,
    /// Used index up to which completions were consumed.
    last_used: u16,
    free_descs: Vec<u16>,
    inflight: HashMap<u16, InFlight>,
    event_idx: bool,
    pub kick: EventFd,
    pub call: EventFd,
}

impl SplitQueue {
    /// Lays out a fresh, zeroed ring of `size` entries in guest memory.
    pub fn new(ram: &mut GuestRam, vring: u16, size: u16, event_idx: bool) -> Result<Self> {
        let n = u64::from(size);
        let desc_len = DESC_SIZE * n;
        // flags, idx, ring[size], used_event
        let avail_len = 4 + 2 * n + 2;
        // flags, idx, ring[size] of {id u32, len u32}, avail_event
        let used_len = 4 + 8 * n + 2;
        let desc_table = ram.alloc(desc_len)?;
        let avail_ring = ram.alloc(avail_len)?;
        let used_ring = ram.alloc(used_len)?;
        let eventfd = |what: &str| {
            EventFd::new(EFD_NONBLOCK).map_err(|e| HarnessError::Queue {
                vring,
                detail: format!("{what} eventfd: {e}"),
            })
        };
        Ok(SplitQueue {
            vring,
            size,
            desc_table,
            avail_ring,
            used_ring,
            ring_allocations: vec![
                (desc_table, desc_len),
                (avail_ring, avail_len),
                (used_ring, used_len),
            ],
            avail_idx: 0,
            last_used: 0,
            // Hand out low indices first: the order is irrelevant to the device, and this
            // makes dumps easier to read.
            free_descs: (0..size).rev().collect(),
            inflight: HashMap::new(),
            event_idx,
            kick: eventfd("kick")?,
            call: eventfd("call")?,
        })
    }

    /// A fresh ring whose indices start at `base` (what a driver resumes with after the
    /// device was stopped and its base read back): both indices are written to the ring.
    pub fn starting_at(mut self, ram: &GuestRam, base: u16) -> Result<Self> {
        self.avail_idx = base;
        self.last_used = base;
        ram.store_u16_release(self.avail_ring + 2, base)?;
        ram.store_u16_release(self.used_ring + 2, base)?;
        Ok(self)
    }

    /// Frees the rings and every buffer still owned by the device.
    pub fn release(self, ram: &mut GuestRam) {
        for (start, size) in self.ring_allocations {
            ram.free(start, size);
        }
        for chain in self.inflight.into_values() {
            for (start, size) in chain.allocations {
                ram.free(start, size);
            }
        }
    }

    fn err(&self, detail: String) -> HarnessError {
        HarnessError::Queue {
            vring: self.vring,
            detail,
        }
    }

    pub fn free_descriptors(&self) -> usize {
        self.free_descs.len()
    }

    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    pub fn is_in_flight(&self, head: u16) -> bool {
        self.inflight.contains_key(&head)
    }

    /// The avail index the harness published last.
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// Takes `n` descriptor table slots for a chain the caller writes itself.
    pub fn reserve(&mut self, n: usize) -> Result<Vec<u16>> {
        if self.free_descs.len() < n {
            return Err(self.err(format!(
                "need {n} free descriptors, have {}",
                self.free_descs.len()
            )));
        }
        let at = self.free_descs.len() - n;
        let mut taken = self.free_descs.split_off(at);
        taken.reverse();
        Ok(taken)
    }

    pub fn write_desc(&self, ram: &GuestRam, index: u16, desc: Desc) -> Result<()> {
        // Deliberately no bounds check against the table: tests may point `next` anywhere,
        // but the slot written here must be inside our own table.
        if index >= self.size {
            return Err(self.err(format!("descriptor slot {index} outside table")));
        }
        ram.write(
            self.desc_table + DESC_SIZE * u64::from(index),
            &desc.to_bytes(),
        )
    }

    /// Makes the chain starting at `head` available to the device. The caller has written the
    /// descriptors; `chain` says what to reclaim when it completes.
    pub fn publish(&mut self, ram: &GuestRam, head: u16, chain: InFlight) -> Result<()> {
        let slot = u64::from(self.avail_idx % self.size);
        ram.write_u16(self.avail_ring + 4 + 2 * slot, head)?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // Release: the descriptors and the ring entry are visible before the new index.
        ram.store_u16_release(self.avail_ring + 2, self.avail_idx)?;
        self.inflight.insert(head, chain);
        Ok(())
    }

    /// Builds and publishes a well-formed chain of direct descriptors.
    pub fn add_chain(&mut self, ram: &mut GuestRam, bufs: &[ChainBuf]) -> Result<u16> {
        if bufs.is_empty() {
            return Err(self.err("empty chain".into()));
        }
        let slots = self.reserve(bufs.len())?;
        let mut chain = InFlight {
            descs: slots.clone(),
            ..InFlight::default()
        };
        for (i, buf) in bufs.iter().enumerate() {
            let (addr, len, mut flags) = match buf {
                ChainBuf::Readable(data) => {
                    let addr = ram.alloc(data.len() as u64)?;
                    ram.write(addr, data)?;
                    chain.allocations.push((addr, data.len() as u64));
                    (addr, data.len() as u32, 0)
                }
                ChainBuf::Writable(len) => {
                    let addr = ram.alloc(u64::from(*len))?;
                    chain.allocations.push((addr, u64::from(*len)));
                    chain.writable.push((addr, *len));
                    (addr, *len, DESC_F_WRITE)
                }
            };
            let next = slots.get(i + 1).copied().unwrap_or(0);
            if i + 1 < slots.len() {
                flags |= DESC_F_NEXT;
            }
            self.write_desc(
                ram,
                slots[i],
                Desc {
                    addr,
                    len,
                    flags,
                    next,
                },
            )?;
        }
        let head = slots[0];
        self.publish(ram, head, chain)?;
        Ok(head)
    }

    /// Builds and publishes a chain of one indirect descriptor pointing at a table of
    /// readable buffers (what Linux does for multi-fragment TX when INDIRECT_DESC is on).
    pub fn add_indirect_readable(&mut self, ram: &mut GuestRam, pieces: &[Vec<u8>]) -> Result<u16> {
        let slots = self.reserve(1)?;
        let mut chain = InFlight {
            descs: slots.clone(),
            ..InFlight::default()
        };
        let table_len = DESC_SIZE * pieces.len() as u64;
        let table = ram.alloc(table_len)?;
        chain.allocations.push((table, table_len));
        for (i, piece) in pieces.iter().enumerate() {
            let addr = ram.alloc(piece.len() as u64)?;
            ram.write(addr, piece)?;
            chain.allocations.push((addr, piece.len() as u64));
            let last = i + 1 == pieces.len();
            let desc = Desc {
                addr,
                len: piece.len() as u32,
                flags: if last { 0 } else { DESC_F_NEXT },
                next: if last { 0 } else { (i + 1) as u16 },
            };
            ram.write(table + DESC_SIZE * i as u64, &desc.to_bytes())?;
        }
        self.write_desc(
            ram,
            slots[0],
            Desc {
                addr: table,
                len: table_len as u32,
                flags: DESC_F_INDIRECT,
                next: 0,
            },
        )?;
        self.publish(ram, slots[0], chain)?;
        Ok(slots[0])
    }

    /// Notifies the device. Always kicks (spurious kicks are allowed and keep the harness
    /// independent of the device's notification suppression).
    pub fn kick(&self) -> Result<()> {
        self.kick
            .write(1)
            .map_err(|e| self.err(format!("kick: {e}")))
    }

    /// Notifies the device only if it asked to be, as a driver that honours notification
    /// suppression does (DPDK's virtio PMD, Linux): with EVENT_IDX when the avail index
    /// passed the device's avail_event since `old_avail`, without it when the used ring's
    /// flags lack NO_NOTIFY. Returns whether it kicked.
    pub fn kick_if_asked(&self, ram: &GuestRam, old_avail: u16) -> Result<bool> {
        let asked = self.asks_for_kick_since(ram, old_avail)?;
        if asked {
            self.kick()?;
        }
        Ok(asked)
    }

    /// Whether the device wants a kick for chains made available after avail index `old`.
    fn asks_for_kick_since(&self, ram: &GuestRam, old: u16) -> Result<bool> {
        Ok(if self.event_idx {
            let event = ram.read_u16(self.used_ring + 4 + 8 * u64::from(self.size))?;
            let new = self.avail_idx;
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            ram.read_u16(self.used_ring)? & VRING_USED_F_NO_NOTIFY as u16 == 0
        })
    }

    /// Whether the device would want a kick for the next chain made available.
    pub fn asks_for_kick(&self, ram: &GuestRam) -> Result<bool> {
        let next = self.avail_idx;
        if self.event_idx {
            let event = ram.read_u16(self.used_ring + 4 + 8 * u64::from(self.size))?;
            return Ok(event == next);
        }
        self.asks_for_kick_since(ram, next)
    }

    /// Consumes the used ring: returns every newly completed chain, reclaiming its slots and
    /// memory. A used entry naming a chain the device does not own is a device bug, reported
    /// as an error.
    pub fn poll_used(&mut self, ram: &mut GuestRam) -> Result<Vec<Completion>> {
        let used_idx = ram.load_u16_acquire(self.used_ring + 2)?;
        let mut done = Vec::new();
        let pending = used_idx.wrapping_sub(self.last_used);
        if pending > self.size {
            return Err(self.err(format!(
                "used idx {used_idx} is {pending} ahead of {} (ring size {})",
                self.last_used, self.size
            )));
        }
        while self.last_used != used_idx {
            let slot = u64::from(self.last_used % self.size);
            let elem = self.used_ring + 4 + 8 * slot;
            let id = ram.read_u32(elem)?;
            let len = ram.read_u32(elem + 4)?;
            let head = u16::try_from(id)
                .ok()
                .filter(|h| self.inflight.contains_key(h))
                .ok_or_else(|| self.err(format!("used entry names head {id}, not in flight")))?;
            let chain = self
                .inflight
                .remove(&head)
                .ok_or_else(|| self.err(format!("head {head} vanished")))?;
            let mut written = Vec::new();
            let mut left = len as usize;
            for (addr, cap) in &chain.writable {
                if left == 0 {
                    break;
                }
                let take = left.min(*cap as usize);
                written.extend_from_slice(&ram.read(*addr, take)?);
                left -= take;
            }
            if left > 0 {
                return Err(self.err(format!(
                    "used len {len} exceeds the writable capacity of chain {head}"
                )));
            }
            self.free_descs.extend(chain.descs.iter().copied());
            for (start, size) in chain.allocations {
                ram.free(start, size);
            }
            done.push(Completion {
                entry: UsedEntry { head, len },
                written,
            });
            self.last_used = self.last_used.wrapping_add(1);
        }
        if self.event_idx {
            // used_event: interrupt us as soon as anything beyond what we consumed is used.
            ram.write_u16(
                self.avail_ring + 4 + 2 * u64::from(self.size),
                self.last_used,
            )?;
        }
        Ok(done)
    }

    /// Waits up to `timeout` for the device to signal the call eventfd; true if it did.
    /// Consumes the signal.
    pub fn wait_call(&self, timeout: Duration) -> Result<bool> {
        wait_any_call(&[&self.call], timeout)
    }
}

/// Waits up to `timeout` for any of the call eventfds to be signalled; clears all of them.
pub fn wait_any_call(calls: &[&EventFd], timeout: Duration) -> Result<bool> {
    let mut fds: Vec<libc::pollfd> = calls
        .iter()
        .map(|e| libc::pollfd {
            fd: e.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: fds is a valid array of pollfd of the given length for the duration of the call.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(HarnessError::Queue {
            vring: u16::MAX,
            detail: format!("poll: {e}"),
        });
    }
    for call in calls {
        // Non-blocking read resets the counter; EAGAIN means it was not signalled.
        let _ = call.read();
    }
    Ok(n > 0)
}
