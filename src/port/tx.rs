//! The TX path of a vhost-user port: read a chain from the guest's TX ring, check the
//! virtio-net header and the frame, and hand the frame to the switch.

use std::num::Wrapping;

use vhost_user_backend::VringState;
use virtio_queue::{Queue, QueueT};

use super::chain::{self, Direction, Segment};
use super::host_memory::SharedGuestMemory;
use super::host_memory::{self, HostMemory};
use super::ring_view::{AvailCache, NextHead, UsedShadow, next_head, publish_used, put_used};
use super::ring_view::{RingCache, SplitRing, UsedSince};
use crate::nic::TxFrame;
use crate::nic::burst::STAGE_MAX_LEN;
use crate::packet::offload::Offload;
use crate::packet::offload::VIRTIO_NET_HDR_LEN;
use crate::stats::{self, QueueCounters, RateLimitedLog};
use crate::switch::PortId;
use crate::switch::fabric::{Fabric, ForwardState};

/// Largest TX chain we accept: the header and a 64 KiB GSO frame with Ethernet, two VLAN
/// tags and an IPv6 header in front of the 65535-byte IP payload.
pub const MAX_TX_CHAIN: usize = VIRTIO_NET_HDR_LEN + 14 + 8 + 40 + 65535;

/// Smallest frame: an Ethernet header.
const MIN_FRAME: usize = 14;

/// Frames longer than this leave the guest in two parts (see `nic::frame`): their head is
/// copied into the worker's buffer, the rest is copied straight into each receiver (a NIC
/// buffer or the receiving guest), one copy of the payload fewer. Below it, one copy of
/// the whole frame costs less than keeping track of the pieces.
const SPLIT_FROM_LEN: usize = 1024;

/// Bytes of a split frame copied out for the switch, the classifier and the offload checks:
/// every header of all but exotic frames (a frame whose headers go on past it is gathered
/// whole when the classifier finds its head cut short).
const SPLIT_HEAD_LEN: usize = 256;

/// Chains handled before the worker lets go of the TX ring and flushes notifications, so a
/// guest that keeps its ring full cannot hold the ring lock (or its receivers) indefinitely.
pub const TX_BATCH: usize = 256;

/// Completions are published at least this often within a batch.
const TX_PUBLISH_EVERY: usize = 32;

/// Bytes of staged frames kept until they are delivered (see [`TxArena`]): a batch of 256
/// frames of up to 244 bytes, or a burst of 42 frames of 1518.
const ARENA_BYTES: usize = 64 * 1024;

/// Where the frames a NIC will stage (up to `STAGE_MAX_LEN`) are gathered, each in its own
/// place, and left as they are until they are delivered: the NIC then stages a reference
/// to the frame (`TxFrame::lasting`) instead of copying it into its burst, one copy per
/// frame fewer.
/// A frame over `SPLIT_FROM_LEN` gets a place of its full length but only its head is
/// gathered; the NIC gathers the tail into the place when it stages the frame, so a frame
/// that is dropped at the switch (a discard port) costs only its head.
///
/// Only our copy is referred to, never the guest's buffer: the switch and the classifier
/// decide on bytes the guest can no longer change.
struct TxArena {
    bytes: Vec<u8>,
    used: usize,
}

impl Default for TxArena {
    fn default() -> Self {
        TxArena {
            bytes: vec![0; ARENA_BYTES],
            used: 0,
        }
    }
}

impl TxArena {
    /// Whether `len` more bytes fit.
    fn has_room(&self, len: usize) -> bool {
        self.used
            .checked_add(len)
            .is_some_and(|end| end <= self.bytes.len())
    }

    /// `len` bytes of their own, if they fit. Each place starts a cache line, so no two
    /// frames share one.
    fn place(&mut self, len: usize) -> Option<&mut [u8]> {
        if !self.has_room(len) {
            return None;
        }
        let start = self.used;
        self.used = (start + len).next_multiple_of(64);
        Some(&mut self.bytes[start..start + len])
    }
}

/// Starts the arena again, first delivering the frames staged with the worker's
/// `ForwardState`, which may refer to its places.
fn restart_arena(scratch: &mut TxScratch, fabric: &Fabric) {
    if !scratch.forward.is_flushed() {
        fabric.deliver_staged(&mut scratch.forward);
    }
    scratch.arena.used = 0;
}

/// The reusable buffers of one TX worker (no allocation per frame).
pub struct TxScratch {
    /// Where a frame the NIC does not stage (over `STAGE_MAX_LEN`) is gathered.
    pub chain: Vec<u8>,
    /// Where the frames the NIC stages are gathered.
    arena: TxArena,
    pub segments: Vec<Segment>,
    /// The next chain's segments (walked one frame ahead).
    next_segments: Vec<Segment>,
    pub forward: ForwardState,
    /// The guest memory snapshot, kept until the frontend changes the table.
    host: Option<HostMemory>,
    /// The TX ring's translated areas, kept while its addresses and the memory stay.
    ring: RingCache,
    /// Used entries published since the last interrupt decision.
    used: UsedSince,
    /// Used entries put since the last publication.
    shadow: UsedShadow,
}

impl Default for TxScratch {
    fn default() -> Self {
        TxScratch {
            chain: vec![0; MAX_TX_CHAIN],
            arena: TxArena::default(),
            segments: Vec::with_capacity(64),
            next_segments: Vec::with_capacity(64),
            forward: ForwardState::promising(),
            host: None,
            ring: RingCache::default(),
            used: UsedSince::default(),
            shadow: UsedShadow::default(),
        }
    }
}

impl TxScratch {
    /// Stores and publishes the used entries put since `before` (see [`publish_used`]).
    fn publish(&mut self, queue: &Queue, ring: &SplitRing, before: u16) {
        publish_used(queue, ring, &mut self.shadow, before, &mut self.used);
    }
}

/// Whether the ring has more to do after a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxProgress {
    /// The ring is empty.
    Drained,
    /// The batch budget ran out with chains still available.
    More,
    /// The guest corrupted the ring; stop until it is set up again.
    Broken,
}

/// Who is sending: the port, its queue counters and the fabric to forward into.
pub struct TxSender<'a> {
    pub fabric: &'a Fabric,
    pub port: PortId,
    pub counters: &'a QueueCounters,
    pub log: &'a RateLimitedLog,
}

/// Processes up to [`TX_BATCH`] chains. Every chain is completed (with length 0, as TX chains
/// are), good or bad, so a bad chain never blocks the ring; the completions are published
/// once, at the end of the batch.
pub fn process_batch(
    state: &mut VringState<SharedGuestMemory>,
    space: &SharedGuestMemory,
    scratch: &mut TxScratch,
    sender: &TxSender<'_>,
) -> TxProgress {
    // Staged frames may refer to the arena until they are delivered: by the flush after
    // the batch that gathered them (the worker's loop flushes after every batch), or here.
    restart_arena(scratch, sender.fabric);
    let mut host = scratch.host.take();
    let mem = HostMemory::current(space, &mut host);
    let progress = match scratch.ring.get(mem, state.get_queue()) {
        Ok(ring) => process_chains(state, mem, &ring, scratch, sender),
        // Not set up yet (or stopped): nothing to take.
        Err(_) if !state.get_queue().ready() => TxProgress::Drained,
        Err(error) => {
            stats::inc(&sender.counters.tx_errors_ring);
            sender.log.warn(|| format!("TX ring unusable: {error}"));
            TxProgress::Broken
        }
    };
    scratch.host = host;
    progress
}

fn process_chains(
    state: &mut VringState<SharedGuestMemory>,
    mem: &HostMemory,
    ring: &SplitRing,
    scratch: &mut TxScratch,
    sender: &TxSender<'_>,
) -> TxProgress {
    let queue = state.get_queue_mut();
    let mut used_before = queue.next_used();
    let mut avail = AvailCache::default();
    // A two-stage pipeline: while one frame is forwarded, the next chain is already walked
    // and its first buffer lines are on their way into the cache (the guest wrote them on
    // another CPU), and the descriptor after it too. Without it every frame waits for
    // those misses one after the other.
    let mut current = match take_chain(queue, ring, mem, &mut avail, &mut scratch.segments, sender)
    {
        Taken::Chain(chain) => Some(chain),
        Taken::Empty => None,
        Taken::Broken => {
            scratch.publish(queue, ring, used_before);
            return TxProgress::Broken;
        }
    };
    let mut progress = TxProgress::More;
    for taken in 1..=TX_BATCH {
        let Some(chain) = current.take() else {
            progress = TxProgress::Drained;
            break;
        };
        if taken < TX_BATCH {
            match take_chain(
                queue,
                ring,
                mem,
                &mut avail,
                &mut scratch.next_segments,
                sender,
            ) {
                Taken::Chain(next) => current = Some(next),
                Taken::Empty => {}
                Taken::Broken => progress = TxProgress::Broken,
            }
        }
        let head = chain.head;
        forward_chain(head, chain.walked, scratch, sender);
        if !put_used(queue, ring, &mut scratch.shadow, head, 0) {
            // The head index itself is out of range: nothing valid can go to the used ring.
            stats::inc(&sender.counters.tx_errors_chain);
            sender
                .log
                .warn(|| format!("TX head index {head} out of range"));
        }
        if progress == TxProgress::Broken {
            break;
        }
        if taken % TX_PUBLISH_EVERY == 0 {
            // The receivers' rings first: frames written straight into them (those over
            // 2 KiB; staged bursts publish themselves) become visible now, not at the end
            // of the batch. A ring no larger than the batch otherwise ran out of buffers
            // its driver had long since been given frames in, and from then on every
            // frame waited in the NIC, two more copies each (most frames of a jumbo-frame
            // stream did).
            sender.fabric.publish_touched(&scratch.forward);
            // Give the guest its buffers back during a long batch too: its ring may be no
            // larger than the batch, and it cannot queue more until it sees completions.
            let published_to = queue.next_used();
            scratch.publish(queue, ring, used_before);
            used_before = published_to;
        }
        std::mem::swap(&mut scratch.segments, &mut scratch.next_segments);
    }
    scratch.publish(queue, ring, used_before);
    progress
}

/// Whether the guest wants an interrupt for the TX completions published so far.
pub fn wants_interrupt(queue: &Queue, space: &SharedGuestMemory, scratch: &mut TxScratch) -> bool {
    let mem = HostMemory::current(space, &mut scratch.host);
    match scratch.ring.get(mem, queue) {
        Ok(ring) => scratch.used.decide(
            &ring,
            queue.event_idx_enabled(),
            Wrapping(queue.next_used()),
        ),
        Err(_) => false,
    }
}

/// A chain taken from the avail ring and walked (its segments in the caller's buffer).
struct TakenChain {
    head: u16,
    walked: chain::Walked,
}

enum Taken {
    Chain(TakenChain),
    Empty,
    Broken,
}

/// Takes the next chain, walks it into `segments`, and starts loading its first buffer
/// lines and the next chain's descriptor.
fn take_chain(
    queue: &mut Queue,
    ring: &SplitRing,
    mem: &HostMemory,
    avail: &mut AvailCache,
    segments: &mut Vec<Segment>,
    sender: &TxSender<'_>,
) -> Taken {
    let head = match next_head(queue, ring, avail) {
        NextHead::Head(head) => head,
        NextHead::Empty => return Taken::Empty,
        NextHead::Broken { avail, next } => {
            stats::inc(&sender.counters.tx_errors_ring);
            sender
                .log
                .warn(|| format!("TX ring broken: guest avail index {avail}, ours {next}"));
            return Taken::Broken;
        }
    };
    avail.prefetch_descriptor(ring, Wrapping(queue.next_avail()));
    let walked = chain::walk(mem, ring, head, Direction::DeviceReads, segments);
    if walked.is_ok() {
        // The virtio-net header and the Ethernet, IP and L4 headers: what is read first.
        for segment in segments.iter().take(2) {
            host_memory::prefetch(segment.host);
            if segment.len > 64 {
                host_memory::prefetch(segment.host + 64);
                if segment.len > 128 {
                    prefetch_rest(segment);
                }
            }
        }
    }
    Taken::Chain(TakenChain { head, walked })
}

/// Starts loading the rest of a large buffer, up to `PREFETCH_MAX` bytes, one frame ahead.
/// The NIC copies a frame of up to 2 KiB out of the guest when it stages it, and a larger
/// one's tail straight into the receiver: without this, that copy waited for each line in
/// turn from the sending guest's CPU. Out of line, so a small frame's path stays as it was
/// (inline, the loop cost small frames more than it saved; docs/DATAPATH.md).
#[inline(never)]
fn prefetch_rest(segment: &Segment) {
    /// A miss queue's worth: 32 lines.
    const PREFETCH_MAX: usize = 2048;
    let end = (segment.len as usize).min(PREFETCH_MAX);
    for offset in (128..end).step_by(64) {
        host_memory::prefetch(segment.host + offset);
    }
}

fn forward_chain(head: u16, walked: chain::Walked, scratch: &mut TxScratch, sender: &TxSender<'_>) {
    let counters = sender.counters;
    let len = match walked {
        Ok(len) => len,
        Err(error) => {
            stats::inc(&counters.tx_errors_chain);
            sender
                .log
                .warn(|| format!("TX chain {head} rejected: {error}"));
            return;
        }
    };
    if len > MAX_TX_CHAIN {
        stats::inc(&counters.tx_errors_frame);
        sender
            .log
            .warn(|| format!("TX chain {head} of {len} bytes is larger than any frame"));
        return;
    }
    if len < VIRTIO_NET_HDR_LEN {
        stats::inc(&counters.tx_errors_header);
        sender
            .log
            .warn(|| format!("TX chain {head} of {len} bytes has no virtio-net header"));
        return;
    }
    let frame_len = len - VIRTIO_NET_HDR_LEN;
    if frame_len < MIN_FRAME {
        stats::inc(&counters.tx_errors_frame);
        sender
            .log
            .warn(|| format!("TX frame of {frame_len} bytes is a runt"));
        return;
    }
    let split = frame_len > SPLIT_FROM_LEN;
    let placed = if frame_len <= STAGE_MAX_LEN {
        if !scratch.arena.has_room(len) {
            restart_arena(scratch, sender.fabric);
        }
        scratch.arena.place(len)
    } else {
        None
    };
    let lasting = placed.is_some();
    let buf = match placed {
        Some(place) => place,
        None => &mut scratch.chain[..len],
    };
    let gathered = if split {
        VIRTIO_NET_HDR_LEN + SPLIT_HEAD_LEN
    } else {
        len
    };
    chain::gather(&scratch.segments, &mut buf[..gathered]);
    let (header, frame) = buf.split_at_mut(VIRTIO_NET_HDR_LEN);
    // SAFETY: (split) the segments were walked over `mem`, which this batch holds, and hold
    // the whole chain; the chain is completed (and the guest may reuse its buffers) only
    // after `forward` returns, and nothing keeps the frame's tail beyond that call.
    // SAFETY (lasting): the frame's place in the arena is its own until the arena is
    // restarted, and `restart_arena` first delivers every frame staged with
    // `scratch.forward`.
    let mut frame = unsafe {
        match (split, lasting) {
            (true, true) => {
                TxFrame::split_lasting(frame, SPLIT_HEAD_LEN, &scratch.segments, gathered)
            }
            (true, false) => TxFrame::split(frame, SPLIT_HEAD_LEN, &scratch.segments, gathered),
            (false, true) => TxFrame::lasting(frame),
            (false, false) => TxFrame::whole(frame),
        }
    };
    if frame.is_split() && Offload::reads_frame(header) {
        // Checksum and segmentation requests are checked against the frame's headers and
        // length, and are rare on frames this size without GSO: take the frame whole.
        frame.make_whole();
    }
    // The common header is tested for in place: moving the parsed value out of a `Result`
    // read it back with loads wider than the stores that wrote it, which wait for every
    // earlier store to drain (a third of this function's time at 64 bytes).
    let mut offload = Offload::default();
    if !Offload::asks_nothing(header) {
        match Offload::from_virtio_hdr(header, frame.head()) {
            Ok(parsed) => offload = parsed,
            Err(error) => {
                stats::inc(&counters.tx_errors_header);
                sender
                    .log
                    .warn(|| format!("TX virtio-net header rejected: {error}"));
                return;
            }
        }
    }
    // Only this queue's worker writes its TX counters.
    stats::add_single_writer(&counters.tx_packets, 1);
    stats::add_single_writer(&counters.tx_bytes, frame_len as u64);
    sender.fabric.forward(
        sender.port,
        &mut frame,
        &mut offload,
        &mut scratch.forward,
        counters,
    );
}
