//! Split-ring access shared by the RX and TX paths: reading heads from the avail ring with the
//! guest's index checked, and the guest RX ring as the NIC writes into it.

use std::num::Wrapping;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use log::warn;
use vhost_user_backend::{VringState, VringT};
use virtio_queue::QueueT;
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemory, GuestMemoryAtomic, GuestMemoryMmap,
};

use super::chain::{self, ChainError, Direction, Segment};
use super::virtio_net::{Negotiated, VIRTIO_NET_HDR_LEN};
use crate::nic::{GuestRxRing, RingWrite, RxOffloads};
use crate::stats::{self, QueueCounters};

pub type GuestMemory_ = GuestMemoryAtomic<GuestMemoryMmap<()>>;
pub type Vring = super::vring::PortVring<GuestMemory_>;

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
}

/// Reads the next chain head the guest made available, advancing our avail index.
pub fn next_head<M: GuestMemory>(
    state: &mut VringState<GuestMemory_>,
    mem: &M,
    cache: &mut AvailCache,
) -> NextHead {
    let queue = state.get_queue_mut();
    if !queue.ready() {
        return NextHead::Empty;
    }
    let next = Wrapping(queue.next_avail());
    let size = queue.size();
    let avail = match cache.known {
        // Still ahead of us: checked against the queue size when it was read.
        Some(known) if known != next => known,
        _ => {
            let Ok(avail) = queue.avail_idx(mem, Ordering::Acquire) else {
                return NextHead::Broken {
                    avail: 0,
                    next: next.0,
                };
            };
            let pending = (avail - next).0;
            if pending == 0 {
                cache.known = Some(avail);
                return NextHead::Empty;
            }
            if pending > size || size == 0 {
                return NextHead::Broken {
                    avail: avail.0,
                    next: next.0,
                };
            }
            cache.known = Some(avail);
            avail
        }
    };
    // avail ring: flags u16, idx u16, ring[size] u16.
    let slot = u64::from(next.0 % size);
    let at = GuestAddress(queue.avail_ring()).0.checked_add(4 + 2 * slot);
    let head = at.and_then(|at| mem.read_obj::<u16>(GuestAddress(at)).ok());
    queue.set_next_avail((next + Wrapping(1)).0);
    match head {
        Some(head) => NextHead::Head(u16::from_le(head)),
        None => NextHead::Broken {
            avail: avail.0,
            next: next.0,
        },
    }
}

/// Whether the guest made chains available that we have not taken yet.
pub fn has_available<M: GuestMemory>(state: &VringState<GuestMemory_>, mem: &M) -> bool {
    let queue = state.get_queue();
    queue.ready()
        && queue
            .avail_idx(mem, Ordering::Acquire)
            .is_ok_and(|avail| avail.0 != queue.next_avail())
}

/// Walks the chain at `head` of the vring's descriptor table.
pub fn walk_chain<M: GuestMemory>(
    state: &mut VringState<GuestMemory_>,
    mem: &M,
    head: u16,
    direction: Direction,
    out: &mut Vec<Segment>,
) -> Result<u32, ChainError> {
    let queue = state.get_queue();
    chain::walk(
        mem,
        GuestAddress(queue.desc_table()),
        queue.size(),
        head,
        direction,
        out,
    )
}

/// Logs at most one warning per `every` occurrences of a guest fault, so a hostile guest
/// cannot flood the log; the counters carry the full count.
pub struct RateLimitedLog {
    seen: AtomicU64,
}

impl RateLimitedLog {
    pub const fn new() -> Self {
        RateLimitedLog {
            seen: AtomicU64::new(0),
        }
    }

    pub fn warn(&self, what: impl FnOnce() -> String) {
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        // 1, 2, 4, 8, ... then every 1024th.
        if (n < 1024 && n.is_power_of_two()) || n.is_multiple_of(1024) {
            warn!("{} (occurrence {})", what(), n + 1);
        }
    }
}

impl Default for RateLimitedLog {
    fn default() -> Self {
        Self::new()
    }
}

/// Reusable per-ring bookkeeping for one RX write (chains taken for one frame).
#[derive(Default)]
struct RxScratch {
    /// Reset for every write: the guest adds buffers between writes.
    avail: AvailCache,
    /// We asked the guest to kick when it adds buffers (the ring was full).
    armed: bool,
    segments: Vec<Segment>,
    /// (head, first segment, end segment, capacity) of each chain taken for the frame.
    chains: Vec<(u16, usize, usize, u32)>,
    walk: Vec<Segment>,
}

/// A guest's RX vring, as the NIC writes into it.
pub struct VhostRxRing {
    vring: Vring,
    mem: GuestMemory_,
    acked_features: Arc<AtomicU64>,
    counters: Arc<QueueCounters>,
    scratch: Mutex<RxScratch>,
    log: RateLimitedLog,
}

impl VhostRxRing {
    pub fn new(
        vring: Vring,
        mem: GuestMemory_,
        acked_features: Arc<AtomicU64>,
        counters: Arc<QueueCounters>,
    ) -> Self {
        VhostRxRing {
            vring,
            mem,
            acked_features,
            counters,
            // Armed: the first write turns off the guest's kicks for every buffer it adds.
            scratch: Mutex::new(RxScratch {
                armed: true,
                ..RxScratch::default()
            }),
            log: RateLimitedLog::new(),
        }
    }

    fn negotiated(&self) -> Negotiated {
        Negotiated::from_bits(self.acked_features.load(Ordering::Relaxed))
    }

    /// Takes chains until they hold `needed` bytes (one chain without MRG_RXBUF). Returns
    /// `Ok(None)` when the ring ran out first (the caller rewinds), `Err` for a frame that no
    /// chain of this guest can hold.
    fn take_chains<M: GuestMemory>(
        &self,
        state: &mut VringState<GuestMemory_>,
        mem: &M,
        scratch: &mut RxScratch,
        needed: usize,
        mergeable: bool,
        rewind_to: &mut u16,
    ) -> Result<Option<()>, RingWrite> {
        scratch.segments.clear();
        scratch.chains.clear();
        let mut capacity: usize = 0;
        while capacity < needed {
            let head = match next_head(state, mem, &mut scratch.avail) {
                NextHead::Head(head) => head,
                NextHead::Empty => {
                    // A ring full of buffers that still cannot hold the frame never will.
                    if scratch.chains.len() >= usize::from(state.get_queue().size()) {
                        return Err(RingWrite::TooBig);
                    }
                    return Ok(None);
                }
                NextHead::Broken { avail, next } => {
                    stats::inc(&self.counters.rx_errors_ring);
                    self.log
                        .warn(|| format!("RX ring broken: guest avail index {avail}, ours {next}"));
                    return Err(RingWrite::NotReady);
                }
            };
            match walk_chain(state, mem, head, Direction::DeviceWrites, &mut scratch.walk) {
                Ok(len) => {
                    if !mergeable && (len as usize) < needed {
                        // This guest's buffers can never hold the frame; leave the chain for
                        // the next (smaller) frame.
                        return Err(RingWrite::TooBig);
                    }
                    let first = scratch.segments.len();
                    scratch.segments.extend_from_slice(&scratch.walk);
                    scratch
                        .chains
                        .push((head, first, scratch.segments.len(), len));
                    capacity += len as usize;
                }
                Err(error) => {
                    stats::inc(&self.counters.rx_errors_chain);
                    self.log
                        .warn(|| format!("RX chain {head} rejected: {error}"));
                    // Complete the bad chain with length 0, and the chains already taken for
                    // this frame with it: we cannot rewind past a completed chain, and a
                    // zero-length buffer is something every driver handles (Linux counts an
                    // rx_length_error and reposts it).
                    let queue = state.get_queue_mut();
                    for &(taken, ..) in &scratch.chains {
                        let _ = queue.add_used(mem, taken, 0);
                    }
                    if queue.add_used(mem, head, 0).is_err() {
                        stats::inc(&self.counters.rx_errors_ring);
                    }
                    *rewind_to = queue.next_avail();
                    scratch.chains.clear();
                    scratch.segments.clear();
                    capacity = 0;
                }
            }
        }
        Ok(Some(()))
    }
}

impl GuestRxRing for VhostRxRing {
    fn write(&self, header: &[u8; 12], frame: &[u8]) -> RingWrite {
        let mut scratch = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let mut state = self.vring.get_mut();
        if !state.is_enabled() || !state.get_queue().ready() {
            return RingWrite::NotReady;
        }
        // The guest may have been reset since the last write (SET_VRING_BASE).
        scratch.avail = AvailCache::default();
        let negotiated = self.negotiated();
        let mem = self.mem.memory();
        let needed = VIRTIO_NET_HDR_LEN + frame.len();
        let mut rewind_to = state.get_queue().next_avail();
        let mut attempt = 0;
        loop {
            match self.take_chains(
                &mut state,
                &*mem,
                &mut scratch,
                needed,
                negotiated.mergeable_rx,
                &mut rewind_to,
            ) {
                Ok(Some(())) => break,
                Ok(None) => {
                    state.get_queue_mut().set_next_avail(rewind_to);
                    // Ask the guest to kick when it adds buffers, then look once more: it may
                    // have added some between our check and the request.
                    scratch.armed = true;
                    match state.enable_notification() {
                        Ok(true) if attempt == 0 => {
                            attempt += 1;
                            continue;
                        }
                        _ => return RingWrite::Full,
                    }
                }
                Err(outcome) => {
                    state.get_queue_mut().set_next_avail(rewind_to);
                    return outcome;
                }
            }
        }
        if scratch.armed {
            // Room again: stop the guest's kicks for every buffer it adds.
            let _ = state.disable_notification();
            scratch.armed = false;
        }
        let mut header = *header;
        let buffers = scratch.chains.len() as u16;
        header[10..12].copy_from_slice(&buffers.to_le_bytes());
        let mut offset = 0usize; // bytes of (header ++ frame) written so far
        let total = needed;
        for &(head, first, end, capacity) in &scratch.chains {
            let segments = &scratch.segments[first..end];
            let take = (capacity as usize).min(total - offset);
            let mut written = 0;
            let mut ok = true;
            // The part of the header that falls in this chain.
            if offset < VIRTIO_NET_HDR_LEN {
                let part = &header[offset..VIRTIO_NET_HDR_LEN.min(offset + take)];
                ok &= chain::scatter(&*mem, segments, 0, part).is_ok();
                written += part.len();
            }
            if written < take {
                let start = offset + written - VIRTIO_NET_HDR_LEN;
                let part = &frame[start..start + (take - written)];
                ok &= chain::scatter(&*mem, segments, written, part).is_ok();
                written += part.len();
            }
            if !ok {
                stats::inc(&self.counters.rx_errors_chain);
            }
            offset += written;
            if state
                .get_queue_mut()
                .add_used(&*mem, head, written as u32)
                .is_err()
            {
                stats::inc(&self.counters.rx_errors_ring);
            }
        }
        RingWrite::Written
    }

    fn notify(&self) {
        let mut state = self.vring.get_mut();
        if state.needs_notification().unwrap_or(true) {
            let _ = state.signal_used_queue();
        }
    }

    fn is_enabled(&self) -> bool {
        self.vring.is_usable()
    }

    fn offloads(&self) -> RxOffloads {
        self.negotiated().rx
    }
}
