//! The guest's RX ring as the NIC writes into it (the receive counterpart of `tx`).

use std::num::Wrapping;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use std::panic::{self, AssertUnwindSafe};

use log::error;
use vhost_user_backend::{VringState, VringT};
use virtio_queue::{Queue, QueueT};

use super::chain::{self, ChainError, Direction, Segment};
use super::host_memory::HostMemory;
use super::ring_view::{
    AvailCache, NextHead, RingCache, SplitRing, UsedShadow, UsedSince, next_head, put_used,
};
use super::virtio_net::Negotiated;
use crate::nic::{BurstFrame, FrameBytes, GuestOffloads, GuestRxRing, RingWrite};
use crate::packet::copy;
use crate::packet::offload::{VIRTIO_NET_HDR_LEN, VirtioNetHdrBytes};
use crate::stats::{self, PortCounters, QueueCounters, RateLimitedLog};

pub use super::host_memory::SharedGuestMemory;
pub use super::vring::PortVring as Vring;

/// How many frames' descriptors a burst write prefetches before it starts.
const RX_PREFETCH_AHEAD: usize = 8;

/// What an RX ring keeps between writes: translations, the guest's avail index, the used
/// entries not yet published, and reusable buffers for the chains of one frame.
#[derive(Default)]
struct RxScratch {
    /// The ring's configuration generation this state was built under (see
    /// `PortVring::generation`): any other means the frontend changed the ring, and
    /// everything below that describes it is dropped.
    generation: u64,
    /// The guest memory snapshot, kept across writes until the frontend changes the table.
    host: Option<HostMemory>,
    ring: RingCache,
    /// The guest's avail index as last read, valid while the queue's next avail index is
    /// `avail_next` (what we left it at; anything else means the frontend reset the ring).
    avail: AvailCache,
    avail_next: Option<u16>,
    /// The queue's next used index when the first unpublished entry was written. Writes put
    /// used entries; `publish` (once per sender batch, from the NIC's flush) makes them
    /// visible, so the guest's used index line moves once per batch rather than per frame.
    unpublished: Option<u16>,
    /// We asked the guest to kick when it adds buffers (the ring was full).
    armed: bool,
    segments: Vec<Segment>,
    /// (head, first segment, end segment, capacity) of each chain taken for the frame.
    chains: Vec<(u16, usize, usize, usize)>,
    /// Used entries published since the last interrupt decision.
    used: UsedSince,
    /// Used entries put by the current burst, stored at its end.
    shadow: UsedShadow,
    /// Small frames of the current burst, copied into their buffers at its end.
    deferred: Vec<DeferredCopy>,
}

impl RxScratch {
    fn new(generation: u64) -> Self {
        RxScratch {
            generation,
            // Armed: the first write turns off the guest's kicks for every buffer it adds.
            armed: true,
            ..RxScratch::default()
        }
    }

    /// Publishes the used entries written but not yet made visible, through the view they
    /// were written through (the ring may be stopped already: nothing is written after a
    /// stop, and the memory snapshot keeps the view valid).
    fn publish_pending(&mut self, next_used: u16) {
        if let (Some(before), Some(ring)) = (self.unpublished.take(), self.ring.last()) {
            ring.publish(Wrapping(before), Wrapping(next_used), &mut self.used);
        }
    }
}

/// Frames up to this long (with the header) are copied at the end of the burst.
const DEFER_COPY_MAX: usize = 256;

/// The bytes of `frame` if its copy is left for the end of the burst: a small frame held
/// whole (a split frame's tail is copied at once, from the sender's memory). `needed` is
/// the frame's length with the header.
fn deferrable<'f>(frame: &FrameBytes<'f>, needed: usize) -> Option<&'f [u8]> {
    frame.as_whole().filter(|_| needed <= DEFER_COPY_MAX)
}

/// A small frame bound for one buffer, copied at the end of the burst rather than when its
/// chain is taken (what DPDK's vhost does with its "batch copies", for the same reason).
///
/// The guest's CPU last touched these lines (its driver read the previous frame's header
/// there), so every first store into one waits for the line to come over, and stores leave
/// the store buffer in order: interleaved with the stores of the chain walk, the counters and
/// the bookkeeping, the store buffer filled behind each frame's first miss and every frame
/// waited for its own. Stored back to back, the frames' misses are in flight together.
#[derive(Clone, Copy)]
struct DeferredCopy {
    /// Host address of the buffer (at least `12 + len` bytes).
    to: usize,
    /// The virtio-net header, written by [`write_header`] with one buffer.
    header: VirtioNetHdrBytes,
    /// Host address and length of the frame's bytes (the burst's, alive for the write).
    from: usize,
    len: usize,
}

/// The frames of one write into the ring: one frame, which may be split (`write_bytes`), or
/// a burst of whole frames (`write_burst`). One type for both, so the write loop is compiled
/// once and the one-buffer write it runs for frame after frame has one call site, where it
/// is inlined: with a loop per caller it stayed out of line, and its call (arguments
/// spilled and reloaded, registers saved) cost a frame more than the counts it keeps.
#[derive(Clone, Copy)]
enum Frames<'a> {
    One(&'a VirtioNetHdrBytes, FrameBytes<'a>),
    Burst(&'a [BurstFrame<'a>]),
}

impl<'a> Frames<'a> {
    fn len(&self) -> usize {
        match self {
            Frames::One(..) => 1,
            Frames::Burst(frames) => frames.len(),
        }
    }

    /// Frame `index` (< `len()`).
    #[inline]
    fn get(&self, index: usize) -> (&'a VirtioNetHdrBytes, FrameBytes<'a>) {
        match *self {
            Frames::One(header, frame) => (header, frame),
            Frames::Burst(frames) => {
                let (header, bytes) = frames[index];
                (header, FrameBytes::whole(bytes))
            }
        }
    }
}

/// A guest's RX vring, as the NIC writes into it.
pub struct VhostRxRing {
    vring: Vring,
    mem: SharedGuestMemory,
    acked_features: Arc<AtomicU64>,
    counters: Arc<QueueCounters>,
    port_counters: Arc<PortCounters>,
    /// Senders that promised to try this NIC's waiting frames again (`Nic::promise_retry`):
    /// while there are any, running out of buffers does not ask the guest for a kick.
    retry_promises: Arc<AtomicU32>,
    /// Shared with the ring's stop hook (see [`VhostRxRing::new`]).
    scratch: Arc<Mutex<RxScratch>>,
    log: RateLimitedLog,
}

/// Where taking chains for a frame ended.
enum Take {
    /// The chains hold the frame.
    Enough,
    /// The ring ran out first; the caller rewinds.
    RanOut,
}

/// The parts of [`RxScratch`] that taking chains fills.
struct ChainScratch<'a> {
    segments: &'a mut Vec<Segment>,
    chains: &'a mut Vec<(u16, usize, usize, usize)>,
    used: &'a mut UsedShadow,
}

impl VhostRxRing {
    pub fn new(
        vring: Vring,
        mem: SharedGuestMemory,
        acked_features: Arc<AtomicU64>,
        counters: Arc<QueueCounters>,
        port_counters: Arc<PortCounters>,
        retry_promises: Arc<AtomicU32>,
    ) -> Self {
        let scratch = Arc::new(Mutex::new(RxScratch::new(vring.generation())));
        // When the frontend stops or disables the ring, the used entries written so far are
        // published before it gets its answer: it reads the used index back when it starts
        // the ring again, and entries left unpublished would be buffers lost to the guest.
        let pending = Arc::downgrade(&scratch);
        vring.on_stop(Some(Box::new(move |vring: &Vring| {
            if let Some(scratch) = pending.upgrade() {
                let mut scratch = scratch.lock().unwrap_or_else(|p| p.into_inner());
                let state = vring.get_ref();
                scratch.publish_pending(state.get_queue().next_used());
            }
        })));
        VhostRxRing {
            vring,
            mem,
            acked_features,
            counters,
            port_counters,
            retry_promises,
            scratch,
            log: RateLimitedLog::new(),
        }
    }

    fn negotiated(&self) -> Negotiated {
        Negotiated::from_bits(self.acked_features.load(Ordering::Relaxed))
    }

    /// Takes chains until they hold `needed` bytes (one chain without MRG_RXBUF). `Err` for
    /// a frame that no chain of this guest can hold, or a broken ring.
    #[allow(clippy::too_many_arguments)]
    fn take_chains(
        &self,
        queue: &mut Queue,
        mem: &HostMemory,
        ring: &SplitRing,
        avail: &mut AvailCache,
        scratch: &mut ChainScratch<'_>,
        needed: usize,
        mergeable: bool,
        rewind_to: &mut u16,
    ) -> Result<Take, RingWrite> {
        scratch.segments.clear();
        scratch.chains.clear();
        let mut capacity: usize = 0;
        while capacity < needed {
            let head = match next_head(queue, ring, avail) {
                NextHead::Head(head) => {
                    // The next frame's descriptor: its miss then overlaps with this copy.
                    avail.prefetch_descriptor(ring, Wrapping(queue.next_avail()));
                    head
                }
                NextHead::Empty => {
                    // A ring full of buffers that still cannot hold the frame never will.
                    if scratch.chains.len() >= usize::from(ring.size()) {
                        return Err(RingWrite::TooBig);
                    }
                    return Ok(Take::RanOut);
                }
                NextHead::Broken { avail, next } => {
                    stats::inc(&self.counters.rx_errors_ring);
                    self.log
                        .warn(|| format!("RX ring broken: guest avail index {avail}, ours {next}"));
                    return Err(RingWrite::NotReady);
                }
            };
            let first = scratch.segments.len();
            let walked =
                chain::walk_append(mem, ring, head, Direction::DeviceWrites, scratch.segments)
                    .and_then(|len| {
                        // With mergeable buffers every buffer must hold the header (virtio 1.2,
                        // 5.1.6.3.1): a frame's header split over chains reaches no driver whole.
                        if mergeable && len < VIRTIO_NET_HDR_LEN {
                            Err(Box::new(ChainError::ShorterThanHeader { len: len as u32 }))
                        } else {
                            Ok(len)
                        }
                    });
            match walked {
                Ok(len) => {
                    if !mergeable && len < needed {
                        // This guest's buffers can never hold the frame; leave the chain for
                        // the next (smaller) frame.
                        return Err(RingWrite::TooBig);
                    }
                    scratch
                        .chains
                        .push((head, first, scratch.segments.len(), len));
                    capacity += len;
                }
                Err(error) => {
                    stats::inc(&self.counters.rx_errors_chain);
                    self.log
                        .warn(|| format!("RX chain {head} rejected: {error}"));
                    // Complete the bad chain with length 0, and the chains already taken for
                    // this frame with it: we cannot rewind past a completed chain, and a
                    // zero-length buffer is something every driver handles (Linux counts an
                    // rx_length_error and reposts it).
                    for &(taken, ..) in scratch.chains.iter() {
                        put_used(queue, ring, scratch.used, taken, 0);
                    }
                    if !put_used(queue, ring, scratch.used, head, 0) {
                        stats::inc(&self.counters.rx_errors_ring);
                    }
                    *rewind_to = queue.next_avail();
                    scratch.chains.clear();
                    scratch.segments.clear();
                    capacity = 0;
                }
            }
        }
        Ok(Take::Enough)
    }

    /// Publishes the used entries written since the last publication; the vring is locked
    /// by the caller.
    fn publish_locked(&self, scratch: &mut RxScratch, queue: &Queue) -> Option<SplitRing> {
        let ring = scratch
            .ring
            .get(HostMemory::current(&self.mem, &mut scratch.host), queue)
            .ok()?;
        if let Some(before) = scratch.unpublished.take() {
            ring.publish(
                Wrapping(before),
                Wrapping(queue.next_used()),
                &mut scratch.used,
            );
        }
        Some(ring)
    }

    /// Writes `frames` in order under one acquisition of the ring's locks, stopping at the
    /// first that does not go in. Returns how many went in and what stopped the rest.
    fn write_frames(&self, frames: Frames<'_>) -> (usize, Option<RingWrite>) {
        let mut guard = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let mut state = self.vring.get_mut();
        if !state.is_enabled() || !state.get_queue().ready() || self.vring.is_quarantined() {
            return (0, Some(RingWrite::NotReady));
        }
        let generation = self.vring.generation();
        if guard.generation != generation {
            // The frontend changed the ring (size, base, addresses, readiness): nothing
            // cached about the old one is used on the new one. Entries still unpublished
            // were published by the stop hook if the ring was stopped; a frontend that
            // changed a running ring loses them (its own fault, and only its own ring).
            let host = guard.host.take();
            *guard = RxScratch::new(generation);
            guard.host = host;
        }
        // The ring's locks are held across the catch: a panic is caught before they are
        // released, so neither is poisoned and the senders of other ports that write into
        // this ring are not taken down with it. This ring is quarantined instead.
        let written = panic::catch_unwind(AssertUnwindSafe(|| {
            self.write_frames_locked(&mut guard, &mut state, frames)
        }));
        match written {
            Ok(outcome) => outcome,
            Err(_) => {
                *guard = RxScratch::new(generation);
                drop(state);
                self.vring.quarantine();
                stats::inc(&self.port_counters.worker_failures);
                error!(
                    "RX ring quarantined after a failure writing into it; it is used again once the guest sets it up anew"
                );
                (0, Some(RingWrite::NotReady))
            }
        }
    }

    /// [`Self::write_frames`] with the ring's locks held and its generation checked.
    fn write_frames_locked(
        &self,
        scratch: &mut RxScratch,
        state: &mut VringState<SharedGuestMemory>,
        source: Frames<'_>,
    ) -> (usize, Option<RingWrite>) {
        let count = source.len();
        let mem = HostMemory::current(&self.mem, &mut scratch.host);
        let ring = match scratch.ring.get(mem, state.get_queue()) {
            Ok(ring) => ring,
            Err(error) => {
                stats::inc(&self.counters.rx_errors_ring);
                self.log.warn(|| format!("RX ring unusable: {error}"));
                return (0, Some(RingWrite::NotReady));
            }
        };
        let mergeable = self.negotiated().mergeable_rx;
        if count > 1 && scratch.avail_next == Some(state.get_queue().next_avail()) {
            // The descriptors of the next few frames' buffers, which the guest wrote on its
            // CPU: their misses then overlap instead of coming one per frame.
            let next = Wrapping(state.get_queue().next_avail());
            for ahead in 0..count.min(RX_PREFETCH_AHEAD) as u16 {
                let position = next + Wrapping(ahead);
                if !scratch.avail.is_ahead_of(position) {
                    break;
                }
                scratch.avail.prefetch_descriptor(&ring, position);
            }
        }
        let mut frames = FrameScratch {
            deferred: &mut scratch.deferred,
            avail: &mut scratch.avail,
            avail_next: &mut scratch.avail_next,
            unpublished: &mut scratch.unpublished,
            armed: &mut scratch.armed,
            chains: ChainScratch {
                segments: &mut scratch.segments,
                chains: &mut scratch.chains,
                used: &mut scratch.shadow,
            },
        };
        let mut result = (count, None);
        let mut index = 0;
        while index < count {
            let next_avail = state.get_queue().next_avail();
            if *frames.avail_next != Some(next_avail) {
                // The frontend set the ring's base since our last write (or this is the
                // first): read its index afresh. Its driver initialised the used ring
                // asking for a kick per buffer; count that as armed, so the first frame
                // written turns it off (else a ring that never runs dry would keep asking
                // for one forever).
                *frames.avail = AvailCache::default();
                *frames.armed = true;
                *frames.avail_next = Some(next_avail);
            }
            // A run of frames into one-buffer chains, the commonest case: what each write
            // keeps track of besides the chain (our avail index, the first unpublished
            // entry, the guest's kicks) is brought up to date once for the run rather than
            // once per frame. This is the one place that tries the one-buffer write.
            let used_before = state.get_queue().next_used();
            let run_start = index;
            while index < count {
                let (header, bytes) = source.get(index);
                if !Self::write_single_buffer(state, mem, &ring, &mut frames, header, bytes) {
                    break;
                }
                index += 1;
            }
            if index > run_start {
                frames.written_single(state, used_before);
            }
            if index == count {
                break;
            }
            // Any other chain, an empty ring or a fault: the general walk.
            let (header, bytes) = source.get(index);
            match self.write_locked(state, mem, &ring, &mut frames, mergeable, header, bytes) {
                RingWrite::Written => index += 1,
                other => {
                    result = (index, Some(other));
                    break;
                }
            }
        }
        for copy in frames.deferred.drain(..) {
            write_header(copy.to, &copy.header, 1);
            // SAFETY: `to` is a translated guest buffer of at least `12 + len` bytes (checked
            // when the chain was walked), alive with `mem`; `from` is a frame of this burst,
            // borrowed for this call. They never overlap: one is guest memory, the other ours.
            unsafe {
                copy::copy_small(
                    copy.from as *const u8,
                    (copy.to + VIRTIO_NET_HDR_LEN) as *mut u8,
                    copy.len,
                )
            };
        }
        // Still under the locks that the entries were put under, so into the same ring.
        frames.chains.used.store(&ring);
        result
    }

    /// Writes one frame through the general walk (any chain, mergeable buffers, faults);
    /// the ring's locks are held by the caller, who tried the one-buffer write first and
    /// brought our avail index up to date with the queue's.
    #[allow(clippy::too_many_arguments)]
    fn write_locked(
        &self,
        state: &mut VringState<SharedGuestMemory>,
        mem: &HostMemory,
        ring: &SplitRing,
        scratch: &mut FrameScratch<'_>,
        mergeable: bool,
        header: &VirtioNetHdrBytes,
        frame: FrameBytes<'_>,
    ) -> RingWrite {
        let needed = VIRTIO_NET_HDR_LEN + frame.len();
        let used_before = state.get_queue().next_used();
        let mut rewind_to = state.get_queue().next_avail();
        let mut attempt = 0;
        let outcome = loop {
            let queue = state.get_queue_mut();
            match self.take_chains(
                queue,
                mem,
                ring,
                scratch.avail,
                &mut scratch.chains,
                needed,
                mergeable,
                &mut rewind_to,
            ) {
                Ok(Take::Enough) => break None,
                Ok(Take::RanOut) => {
                    queue.set_next_avail(rewind_to);
                    // Ask the guest to kick when it adds buffers, then look once more: it may
                    // have added some between our check and the request. Not while a sender
                    // has promised to try again: it will, or it asks when it goes idle.
                    if !*scratch.armed && self.retry_promises.load(Ordering::SeqCst) == 0 {
                        *scratch.armed = true;
                        if let Ok(true) = state.enable_notification() {
                            attempt += 1;
                        }
                    }
                    if attempt == 1 {
                        attempt += 1;
                        *scratch.avail = AvailCache::default();
                        continue;
                    }
                    break Some(RingWrite::Full);
                }
                Err(outcome) => {
                    queue.set_next_avail(rewind_to);
                    break Some(outcome);
                }
            }
        };
        let queue = state.get_queue();
        *scratch.avail_next = Some(queue.next_avail());
        if queue.next_used() != used_before && scratch.unpublished.is_none() {
            // Bad chains completed on the way count as written entries too.
            *scratch.unpublished = Some(used_before);
        }
        if let Some(outcome) = outcome {
            return outcome;
        }
        scratch.disarm(state);
        let queue = state.get_queue_mut();
        if let (&[(head, first, _, _)], Some(bytes)) =
            (&scratch.chains.chains[..], deferrable(&frame, needed))
            && let Some(&segment) = scratch.chains.segments.get(first)
            && segment.len as usize >= needed
        {
            let to = segment.host;
            scratch.defer_copy(queue, ring, head, to, header, bytes);
        } else {
            Self::scatter_now(queue, ring, &mut scratch.chains, header, &frame, needed);
        }
        if scratch.unpublished.is_none() {
            *scratch.unpublished = Some(used_before);
        }
        RingWrite::Written
    }

    /// The commonest write: a frame into the next chain, which is one buffer large enough
    /// (`chain::single_writable_buffer`). A small frame's copy is deferred to the burst's
    /// end, a larger one is copied now; either way its used entry is put. False, with
    /// nothing taken, for any other chain or none: the general path then takes it and
    /// reports what is wrong with it.
    ///
    /// Why larger frames too: drivers post one buffer per chain for them as well (Linux's
    /// mergeable buffers are 1.5 to 4 KiB, DPDK's mbufs hold a whole frame), and the
    /// general walk costs a large frame as much as a small one.
    ///
    /// What the write leaves to its caller: [`FrameScratch::written_single`] after the
    /// last of a run of such writes, before anything else uses the scratch. Its one caller
    /// is the write loop (see [`Frames`] for why one).
    #[inline]
    fn write_single_buffer(
        state: &mut VringState<SharedGuestMemory>,
        mem: &HostMemory,
        ring: &SplitRing,
        scratch: &mut FrameScratch<'_>,
        header: &VirtioNetHdrBytes,
        frame: FrameBytes<'_>,
    ) -> bool {
        let needed = VIRTIO_NET_HDR_LEN + frame.len();
        let queue = state.get_queue_mut();
        let position = queue.next_avail();
        let NextHead::Head(head) = next_head(queue, ring, scratch.avail) else {
            return false;
        };
        let Some(to) = chain::single_writable_buffer(mem, ring, head, needed) else {
            queue.set_next_avail(position);
            return false;
        };
        // The next frame's descriptor: its miss then overlaps with this frame's work.
        scratch
            .avail
            .prefetch_descriptor(ring, Wrapping(queue.next_avail()));
        match deferrable(&frame, needed) {
            Some(bytes) => scratch.defer_copy(queue, ring, head, to, header, bytes),
            None => {
                write_header(to, header, 1);
                // SAFETY: `to` is a translated guest buffer of at least `needed` =
                // 12 + `frame.len()` bytes (checked by `single_writable_buffer`), alive
                // with `mem`.
                unsafe { frame.copy_to_ptr(0, frame.len(), (to + VIRTIO_NET_HDR_LEN) as *mut u8) };
                put_used(queue, ring, scratch.chains.used, head, needed as u32);
            }
        }
        true
    }

    /// Writes the header and `frame` (`needed` bytes together) into the chains taken for
    /// it, and puts their used entries.
    fn scatter_now(
        queue: &mut Queue,
        ring: &SplitRing,
        chains: &mut ChainScratch<'_>,
        header: &VirtioNetHdrBytes,
        frame: &FrameBytes<'_>,
        needed: usize,
    ) {
        if injected_failure(needed) {
            panic!("injected failure writing a frame of {needed} bytes");
        }
        let buffers = chains.chains.len() as u16;
        let mut offset = 0usize; // bytes of (header ++ frame) written so far
        for &(head, first, end, capacity) in chains.chains.iter() {
            let segments = &chains.segments[first..end];
            let take = capacity.min(needed - offset);
            let mut written = 0;
            // The part of the header that falls in this chain. (Every chain taken holds a
            // byte at least: the walk refuses empty ones.)
            let first_segment = segments.first().copied().unwrap_or_default();
            if offset == 0 && first_segment.len as usize >= VIRTIO_NET_HDR_LEN {
                write_header(first_segment.host, header, buffers);
                written = VIRTIO_NET_HDR_LEN;
            } else if offset < VIRTIO_NET_HDR_LEN {
                let mut whole = *header;
                whole[10..12].copy_from_slice(&buffers.to_le_bytes());
                let part = &whole[offset..VIRTIO_NET_HDR_LEN.min(offset + take)];
                written += chain::scatter(segments, 0, part);
            }
            if written < take {
                let start = offset + written - VIRTIO_NET_HDR_LEN;
                written += chain::scatter_frame(segments, written, frame, start, take - written);
            }
            offset += written;
            put_used(queue, ring, chains.used, head, written as u32);
        }
    }
}

/// For the tests of failure containment (`tests/protocol_containment.rs`): with
/// `PRISM_VNIC_INJECT_RX_FAILURE=N` in the environment, writing a frame of `N` bytes (header
/// included) through the general path panics. Read once; one comparison on a path that
/// walks chains anyway.
fn injected_failure(needed: usize) -> bool {
    static LEN: OnceLock<Option<usize>> = OnceLock::new();
    *LEN.get_or_init(|| {
        std::env::var("PRISM_VNIC_INJECT_RX_FAILURE")
            .ok()
            .and_then(|value| value.parse().ok())
    }) == Some(needed)
}

/// Writes the virtio-net header `header`, with `num_buffers` (its last two bytes) set to
/// `buffers`, at host address `at`, which has room for it.
///
/// As two stores of values held in registers: a copy of the header patched on the stack and
/// then copied out is read back with loads that cannot be forwarded from the narrower stores
/// that built it, and such a load waits for every older store, the previous frame's stores
/// into the guest's lines included.
#[inline]
fn write_header(at: usize, header: &VirtioNetHdrBytes, buffers: u16) {
    let (low, high) = header.split_at(8);
    let low = u64::from_le_bytes(low.try_into().expect("8 bytes"));
    let high = u32::from(u16::from_le_bytes([high[0], high[1]])) | u32::from(buffers) << 16;
    // Stored only where the buffer does not hold the value already, as DPDK's vhost does
    // (`ASSIGN_UNLESS_EQUAL`): a driver that reuses its buffers finds the same header there
    // (no offloads, one buffer), and the line, which its CPU read the header from last
    // time, is then not taken away from it. A store would wait for that line to come over
    // (a load can overlap with others; stores leave in order), and the driver would then
    // miss on its next read of the header.
    // Volatile: the guest may write the header meanwhile, and can garble nothing but its own
    // header that way. A volatile load of a byte array is a load per byte, so a header at a
    // 4-byte boundary (Linux's buffers are cache-line aligned, DPDK's mbufs put it 4 bytes
    // past one) is read as three words.
    let (low_words, high_differs) = if at.is_multiple_of(4) {
        // SAFETY: the caller's contract: `at` is a translated guest buffer of at least 12
        // bytes, alive while the memory snapshot is; it is 4-aligned here.
        let words = unsafe {
            [0, 4, 8]
                .map(|offset| u32::from_le(std::ptr::read_volatile((at + offset) as *const u32)))
        };
        (
            u64::from(words[0]) | u64::from(words[1]) << 32,
            words[2] != high,
        )
    } else {
        // SAFETY: as above, at any alignment.
        unsafe {
            (
                u64::from_le_bytes(std::ptr::read_volatile(at as *const [u8; 8])),
                std::ptr::read_volatile((at + 8) as *const [u8; 4]) != high.to_le_bytes(),
            )
        }
    };
    // SAFETY: as above; unaligned stores.
    unsafe {
        if low_words != low {
            std::ptr::write_unaligned(at as *mut u64, low.to_le());
        }
        if high_differs {
            std::ptr::write_unaligned((at + 8) as *mut u32, high.to_le());
        }
    }
}

/// The parts of [`RxScratch`] that writing frames uses, borrowed apart from the memory
/// snapshot and the ring view (which the frames are written through).
struct FrameScratch<'s> {
    deferred: &'s mut Vec<DeferredCopy>,
    avail: &'s mut AvailCache,
    avail_next: &'s mut Option<u16>,
    unpublished: &'s mut Option<u16>,
    armed: &'s mut bool,
    chains: ChainScratch<'s>,
}

impl FrameScratch<'_> {
    /// Leaves the copy of a small frame (and its header) into the one buffer at `to` for
    /// the end of the burst, and puts the buffer's used entry.
    #[inline]
    fn defer_copy(
        &mut self,
        queue: &mut Queue,
        ring: &SplitRing,
        head: u16,
        to: usize,
        header: &VirtioNetHdrBytes,
        bytes: &[u8],
    ) {
        self.deferred.push(DeferredCopy {
            to,
            header: *header,
            from: bytes.as_ptr() as usize,
            len: bytes.len(),
        });
        let written = (VIRTIO_NET_HDR_LEN + bytes.len()) as u32;
        put_used(queue, ring, self.chains.used, head, written);
    }

    /// A run of [`VhostRxRing::write_single_buffer`] writes went in, the first when the
    /// queue's next used index was `used_before`: our avail index is where they left the
    /// queue's, their entries are unpublished, and the guest's kicks are off.
    #[inline]
    fn written_single(&mut self, state: &mut VringState<SharedGuestMemory>, used_before: u16) {
        *self.avail_next = Some(state.get_queue().next_avail());
        if self.unpublished.is_none() {
            *self.unpublished = Some(used_before);
        }
        self.disarm(state);
    }

    /// A frame went in: if the guest was asked to kick when it adds buffers, it is told to
    /// stop (it would otherwise kick for every buffer it adds).
    #[inline]
    fn disarm(&mut self, state: &mut VringState<SharedGuestMemory>) {
        if *self.armed {
            let _ = state.disable_notification();
            *self.armed = false;
        }
    }
}

impl GuestRxRing for VhostRxRing {
    fn write(&self, header: &VirtioNetHdrBytes, frame: &[u8]) -> RingWrite {
        self.write_bytes(header, FrameBytes::whole(frame))
    }

    fn write_bytes(&self, header: &VirtioNetHdrBytes, frame: FrameBytes<'_>) -> RingWrite {
        match self.write_frames(Frames::One(header, frame)) {
            (_, Some(outcome)) => outcome,
            (_, None) => RingWrite::Written,
        }
    }

    fn write_burst(&self, frames: &[BurstFrame<'_>]) -> (usize, Option<RingWrite>) {
        self.write_frames(Frames::Burst(frames))
    }

    fn publish(&self) {
        let mut scratch = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        if scratch.unpublished.is_none() {
            return;
        }
        let state = self.vring.get_ref();
        self.publish_locked(&mut scratch, state.get_queue());
    }

    fn notify(&self) {
        let mut scratch = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let state = self.vring.get_ref();
        let queue = state.get_queue();
        let Some(ring) = self.publish_locked(&mut scratch, queue) else {
            return;
        };
        if scratch.used.decide(
            &ring,
            queue.event_idx_enabled(),
            Wrapping(queue.next_used()),
        ) {
            let _ = state.signal_used_queue();
        }
    }
    fn is_enabled(&self) -> bool {
        self.vring.is_usable()
    }

    fn offloads(&self) -> GuestOffloads {
        self.negotiated().rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::ring_view::publish_used;
    use crate::port::ring_view::tests::{AVAIL, DESC, SIZE, USED, rig};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

    fn used_elem(mem: &GuestMemoryMmap<()>, slot: u64) -> (u32, u32) {
        let at = USED + 4 + 8 * slot;
        (
            mem.read_obj(GuestAddress(at)).unwrap(),
            mem.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }

    #[test]
    fn used_entries_wait_in_the_shadow_then_land_in_order_across_the_wrap() {
        let (mem, host) = rig();
        let ring = SplitRing::at(&host, DESC, AVAIL, USED, SIZE).unwrap();
        let mut queue = Queue::new(SIZE).unwrap();
        queue.set_next_used(6);
        let mut shadow = UsedShadow::default();
        let mut since = UsedSince::default();
        for head in 1..=4 {
            assert!(put_used(
                &mut queue,
                &ring,
                &mut shadow,
                head,
                100 * u32::from(head)
            ));
        }
        // A head the ring cannot name is refused and takes no position.
        assert!(!put_used(&mut queue, &ring, &mut shadow, SIZE, 0));
        assert_eq!(queue.next_used(), 10);
        // Nothing reached the guest yet.
        assert_eq!(used_elem(&mem, 6), (0, 0));
        publish_used(&queue, &ring, &mut shadow, 6, &mut since);
        // Positions 6..10 are slots 6, 7, 0, 1.
        let slots: Vec<_> = [6, 7, 0, 1].iter().map(|&s| used_elem(&mem, s)).collect();
        assert_eq!(slots, vec![(1, 100), (2, 200), (3, 300), (4, 400)]);
        let idx: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
        assert_eq!(idx, 10);
        // The shadow starts afresh at the next position.
        assert!(put_used(&mut queue, &ring, &mut shadow, 7, 1));
        shadow.store(&ring);
        assert_eq!(used_elem(&mem, 2), (7, 1));
    }

    fn make_available(mem: &GuestMemoryMmap<()>, position: u16, head: u16) {
        let slot = u64::from(position % SIZE);
        mem.write_obj(head.to_le(), GuestAddress(AVAIL + 4 + 2 * slot))
            .unwrap();
        mem.write_obj(position.wrapping_add(1).to_le(), GuestAddress(AVAIL + 2))
            .unwrap();
    }

    #[test]
    fn heads_come_in_ring_order_across_the_wrap_a_rewind_and_new_entries() {
        let (mem, host) = rig();
        let ring = SplitRing::at(&host, DESC, AVAIL, USED, SIZE).unwrap();
        let mut queue = Queue::new(SIZE).unwrap();
        queue.set_next_avail(6);
        for (position, head) in (6..11).zip([3, 1, 4, 0, 5]) {
            make_available(&mem, position, head);
        }
        let mut cache = AvailCache::default();
        let take = |queue: &mut Queue, cache: &mut AvailCache| match next_head(queue, &ring, cache)
        {
            NextHead::Head(head) => Some(head),
            NextHead::Empty => None,
            NextHead::Broken { .. } => panic!("not broken"),
        };
        let heads: Vec<_> = std::iter::from_fn(|| take(&mut queue, &mut cache)).collect();
        assert_eq!(heads, vec![3, 1, 4, 0, 5]);
        // An RX frame that ran out gives its chains back: they come again, in order.
        queue.set_next_avail(8);
        assert_eq!(take(&mut queue, &mut cache), Some(4));
        assert_eq!(take(&mut queue, &mut cache), Some(0));
        // The driver makes more available (reusing slots): the new heads, not the old ones.
        make_available(&mem, 11, 6);
        make_available(&mem, 12, 7);
        assert_eq!(take(&mut queue, &mut cache), Some(5));
        assert_eq!(take(&mut queue, &mut cache), Some(6));
        assert_eq!(take(&mut queue, &mut cache), Some(7));
        assert_eq!(take(&mut queue, &mut cache), None);
        assert_eq!(queue.next_avail(), 13);
    }

    #[test]
    fn the_header_goes_out_with_its_buffer_count() {
        let header: [u8; 12] = [1, 4, 3, 4, 5, 6, 7, 8, 9, 10, 0xee, 0xee];
        let mut buffer = [0xffu8; 16];
        write_header(buffer.as_mut_ptr() as usize, &header, 0x0203);
        assert_eq!(buffer[..10], header[..10]);
        assert_eq!(buffer[10..12], [0x03, 0x02]);
        assert_eq!(buffer[12..], [0xff; 4]);
        // The same again, and then a buffer count alone changed: only what differs is stored.
        write_header(buffer.as_mut_ptr() as usize, &header, 0x0203);
        assert_eq!(buffer[10..12], [0x03, 0x02]);
        write_header(buffer.as_mut_ptr() as usize, &header, 1);
        assert_eq!(buffer[..10], header[..10]);
        assert_eq!(buffer[10..12], [1, 0]);
        assert_eq!(buffer[12..], [0xff; 4]);
    }

    #[test]
    fn the_header_is_written_whole_at_any_alignment_and_whatever_the_buffer_held() {
        #[repr(align(8))]
        struct Aligned([u8; 32]);
        let header: [u8; 12] = [1, 4, 3, 4, 5, 6, 7, 8, 9, 10, 0xee, 0xee];
        let mut expected = header;
        expected[10..].copy_from_slice(&0x0203u16.to_le_bytes());
        for offset in 0..8 {
            let mut buffer = Aligned([0xff; 32]);
            let at = buffer.0.as_mut_ptr() as usize + offset;
            write_header(at, &header, 0x0203);
            assert_eq!(buffer.0[offset..offset + 12], expected, "offset {offset}");
            // A byte the guest changed in either part is written again; nothing around moves.
            for changed in [0, 5, 8, 11] {
                buffer.0[offset + changed] ^= 0x55;
                write_header(at, &header, 0x0203);
                assert_eq!(buffer.0[offset..offset + 12], expected, "offset {offset}");
            }
            assert!(buffer.0[..offset].iter().all(|&b| b == 0xff));
            assert!(buffer.0[offset + 12..].iter().all(|&b| b == 0xff));
        }
    }

    /// Writes descriptor `index`: a writable buffer of `len` bytes at `addr`, chained to
    /// `next` if given.
    fn write_descriptor(
        mem: &GuestMemoryMmap<()>,
        index: u16,
        addr: u64,
        len: u32,
        next: Option<u16>,
    ) {
        use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
        let flags = VRING_DESC_F_WRITE as u16 | next.map_or(0, |_| VRING_DESC_F_NEXT as u16);
        let mut desc = [0u8; 16];
        desc[0..8].copy_from_slice(&addr.to_le_bytes());
        desc[8..12].copy_from_slice(&len.to_le_bytes());
        desc[12..14].copy_from_slice(&flags.to_le_bytes());
        desc[14..16].copy_from_slice(&next.unwrap_or(0).to_le_bytes());
        mem.write_slice(&desc, GuestAddress(DESC + 16 * u64::from(index)))
            .unwrap();
    }

    /// A ready, enabled vring of SIZE over 64 KiB of guest memory, and its RX ring.
    fn rx_rig() -> (GuestMemoryMmap<()>, Vring, VhostRxRing) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let shared = GuestMemoryAtomic::new(mem.clone());
        let vring = <Vring as VringT<SharedGuestMemory>>::new(shared.clone(), SIZE).unwrap();
        vring.set_queue_size(SIZE);
        vring.set_queue_info(DESC, AVAIL, USED).unwrap();
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        let ring = VhostRxRing::new(
            vring.clone(),
            shared,
            Arc::new(AtomicU64::new(0)),
            Arc::default(),
            Arc::default(),
            Arc::default(),
        );
        (mem, vring, ring)
    }

    #[test]
    fn bursts_over_one_buffer_and_chained_buffers_land_in_order_and_settle_the_kicks() {
        let (mem, _vring, ring) = rx_rig();
        let buffer = |head: u16| 0x4000 + 0x800 * u64::from(head);
        // Chains 0, 1, 3 and 4 are one 2 KiB buffer each; chain 2 is 20 bytes then 2 KiB.
        for head in [0, 1, 3, 4, 6] {
            write_descriptor(&mem, head, buffer(head), 2048, None);
        }
        write_descriptor(&mem, 2, buffer(2), 20, Some(6));
        for (position, head) in (0..5).zip([0, 1, 2, 3, 4]) {
            make_available(&mem, position, head);
        }
        let frames: Vec<Vec<u8>> = (1..=6u8).map(|tag| vec![tag; 60]).collect();
        let header = [0u8; 12];
        let burst = |range: std::ops::Range<usize>| -> Vec<BurstFrame<'_>> {
            frames[range]
                .iter()
                .map(|frame| (&header, frame.as_slice()))
                .collect()
        };
        let used_flags =
            |mem: &GuestMemoryMmap<()>| -> u16 { mem.read_obj(GuestAddress(USED)).unwrap() };
        let no_notify = virtio_bindings::virtio_ring::VRING_USED_F_NO_NOTIFY as u16;
        // Four frames: one buffer, one buffer, the chained pair, one buffer.
        assert_eq!(ring.write_burst(&burst(0..4)), (4, None));
        assert_eq!(used_flags(&mem) & no_notify, no_notify, "kicks turned off");
        // Two more: the fifth takes the last chain, the sixth finds none.
        assert_eq!(ring.write_burst(&burst(4..6)), (1, Some(RingWrite::Full)));
        assert_eq!(
            used_flags(&mem) & no_notify,
            0,
            "asks for a kick when it adds buffers"
        );
        ring.publish();
        let used_idx: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
        assert_eq!(used_idx, 5);
        let entries: Vec<_> = (0..5).map(|slot| used_elem(&mem, slot)).collect();
        assert_eq!(entries, vec![(0, 72), (1, 72), (2, 72), (3, 72), (4, 72)]);
        let read = |addr: u64, len: usize| {
            let mut bytes = vec![0u8; len];
            mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
            bytes
        };
        for (head, tag) in [(0, 1), (1, 2), (3, 4), (4, 5)] {
            assert_eq!(read(buffer(head) + 12, 60), vec![tag; 60], "chain {head}");
        }
        // The chained frame: 8 bytes after the header, the other 52 in the next buffer.
        assert_eq!(read(buffer(2) + 12, 8), vec![3; 8]);
        assert_eq!(read(buffer(6), 52), vec![3; 52]);
    }

    #[test]
    fn entries_written_before_a_ring_stop_are_published_before_the_stop_returns() {
        let (mem, vring, ring) = rx_rig();
        // One 2 KiB writable buffer, made available.
        write_descriptor(&mem, 0, 0x4000, 2048, None);
        make_available(&mem, 0, 0);
        assert_eq!(ring.write(&[0; 12], &[0xab; 60]), RingWrite::Written);
        let used_idx =
            |mem: &GuestMemoryMmap<()>| -> u16 { mem.read_obj(GuestAddress(USED + 2)).unwrap() };
        // Written, not yet published (that waits for the sender's batch to end).
        assert_eq!(used_idx(&mem), 0);
        // GET_VRING_BASE stops the ring: the entry is published before it returns.
        vring.set_queue_ready(false);
        assert_eq!(used_idx(&mem), 1);
        assert_eq!(used_elem(&mem, 0), (0, 72));
    }
}
