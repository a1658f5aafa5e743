//! The emulated NIC of one port, on the receive side: what a ConnectX-5 does between the wire
//! and the host in the PRISM setup, plus what no NIC shows.
//!
//! A frame from the switch is classified (`classify`: flow rules, DSCP/PCP trust, Toeplitz
//! RSS), which gives it a class (high or normal) and an RX queue. It then crosses the port's
//! link (paced at a rate, with a one-way latency) into a bounded buffer per queue and class,
//! and from there into the guest's RX ring; high-class frames go first when both wait
//! (strict priority, optionally weighted so normal traffic is not starved). Interrupt
//! moderation decides when the guest is told. Residence time (arrival at the port to
//! publication in the used ring) is recorded per queue and class.
//!
//! The common case costs nothing extra: when nothing waits, the link is free and there is no
//! latency, the sender's thread writes straight into the ring. Otherwise the frame is
//! buffered and the port's scheduler thread (`scheduler`) delivers it when it can. A stalled
//! guest therefore costs its own buffers, never a sender's time.
//!
//! The ring is behind [`GuestRxRing`], implemented by the vhost-user port (and the tap and
//! sink ports), so this module does not depend on `port`.

pub mod backlog;
pub mod burst;
pub mod capture;
pub mod clock;
pub mod deliver;
pub mod frame;
pub mod link;
pub mod moderation;
pub mod queue;
pub mod residence;
pub mod scheduler;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::classify::{
    Class, Classifier, ClassifierConfig, ClassifierError, Decision, rules::RuleSet,
};
use crate::stats::{self, PortCounters, QueueCounters};
use arrayvec::ArrayVec;
pub use burst::Burst;
use burst::STAGE_MAX_LEN;
use capture::Capture;
pub use frame::{FrameBytes, TxFrame};
use link::{Link, LinkSettings};
use moderation::CoalesceSettings;
use queue::{Arriving, Publish, RxQueue, class_index};
use scheduler::Waker;

pub use deliver::deliver;

/// The offloads a receiver accepts, as its guest negotiated them.
pub use crate::packet::offload::GuestOffloads;

/// Outcome of one attempt to write a frame into a guest RX ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingWrite {
    /// Written; the ring wants a notification at the end of the batch.
    Written,
    /// No room now: the frame should wait. The ring re-armed the guest's notification, so
    /// posting buffers will kick.
    Full,
    /// The frame is larger than the guest's buffers can ever hold (no MRG_RXBUF); drop it.
    TooBig,
    /// The ring is not usable (disabled, not set up, or the guest broke it); drop.
    NotReady,
}

/// A frame of a burst as [`GuestRxRing::write_burst`] takes it: its virtio-net header and
/// its bytes.
pub type BurstFrame<'a> = (&'a [u8; 12], &'a [u8]);

/// Frames handed to [`GuestRxRing::write_burst`] at once: a burst's worth.
const WRITE_CHUNK: usize = burst::BURST_FRAMES;

/// A guest RX ring, as the NIC sees it. Implemented by the vhost-user port's RX vring.
pub trait GuestRxRing: Send + Sync {
    /// Writes the 12-byte virtio-net header (num_buffers filled in by the ring) and the frame.
    fn write(&self, header: &[u8; 12], frame: &[u8]) -> RingWrite;
    /// Writes a frame that may be split, its tail still in the sender's guest memory
    /// (see [`frame`]). A ring that cannot copy from the pieces itself takes the frame
    /// gathered into one buffer (split frames are large and rare outside vhost-user rings).
    fn write_bytes(&self, header: &[u8; 12], frame: FrameBytes<'_>) -> RingWrite {
        frame.with_whole(|bytes| self.write(header, bytes))
    }
    /// Writes `frames` (header and bytes of each) in order until one does not go in;
    /// returns how many went in and the outcome of the first that did not. A ring may take
    /// its locks once for all of them.
    fn write_burst(&self, frames: &[BurstFrame<'_>]) -> (usize, Option<RingWrite>) {
        for (index, &(header, bytes)) in frames.iter().enumerate() {
            match self.write(header, bytes) {
                RingWrite::Written => {}
                other => return (index, Some(other)),
            }
        }
        (frames.len(), None)
    }
    /// Makes what `write` wrote visible to the guest. Writers call it once per batch (the
    /// NIC does, before its interrupt moderation decides anything), so a ring may defer
    /// its used-index update until then.
    fn publish(&self) {}
    /// Publishes, then signals the guest if the ring published entries it has not been
    /// told about.
    fn notify(&self);
    /// Whether the ring is set up and enabled by the guest.
    fn is_enabled(&self) -> bool;
    /// What the guest accepts on receive.
    fn offloads(&self) -> GuestOffloads;
}

/// The default of [`NicConfig::buffer_bytes`]: what a 100 Gbit/s link delivers in 2.5 ms,
/// room for the longest `--link-latency-us` usually asked for (see the README's sizing).
pub const DEFAULT_BUFFER_BYTES: usize = 32 << 20;

/// The default of [`NicConfig::min_gso_size`]: Linux's floor for a TCP sender's MSS
/// (`net.ipv4.tcp_min_snd_mss`), so no sender Linux allows is refused, and a 64 KiB frame
/// becomes at most some 1,400 segments rather than 65,000.
pub const DEFAULT_MIN_GSO_SIZE: u16 = 48;

/// Settings of one port's NIC.
#[derive(Debug, Clone)]
pub struct NicConfig {
    /// Frames buffered per queue and class.
    pub buffer_frames: usize,
    /// Bytes buffered by the port's NIC, all queues and classes together (see
    /// [`backlog::ByteBudget`]).
    pub buffer_bytes: usize,
    /// Smallest gso_size cut in software (a receiver without TSO); smaller is dropped.
    pub min_gso_size: u16,
    pub link: LinkSettings,
    /// Moderation of the high-priority queues (default: notify at once).
    pub coalesce_high: CoalesceSettings,
    /// Moderation of the other queues.
    pub coalesce_normal: CoalesceSettings,
    /// High-class frames in a row before one waiting normal frame goes; 0 is strict priority.
    pub priority_weight: u32,
    /// Classification; `num_queues` is the port's queue count.
    pub classifier: ClassifierConfig,
}

impl Default for NicConfig {
    fn default() -> Self {
        NicConfig {
            buffer_frames: 1024,
            buffer_bytes: DEFAULT_BUFFER_BYTES,
            min_gso_size: DEFAULT_MIN_GSO_SIZE,
            link: LinkSettings::default(),
            coalesce_high: CoalesceSettings::default(),
            coalesce_normal: CoalesceSettings::default(),
            priority_weight: 0,
            classifier: ClassifierConfig::default(),
        }
    }
}

/// The NIC of one port.
pub struct Nic {
    queues: Vec<RxQueue>,
    classifier: ArcSwap<Classifier>,
    /// Bumped after every change of `classifier`: senders keep their own reference to the
    /// classifier and check this instead of loading the arc-swap per frame.
    classifier_generation: AtomicU64,
    classifier_config: ClassifierConfig,
    pub link: Link,
    /// Frames waiting in this NIC's buffers, per class: a frame may skip the buffers only when
    /// nothing of its class or a higher one waits.
    buffered: [AtomicUsize; 2],
    /// Busy senders that promised to try the frames waiting here again until they go idle
    /// (see [`Nic::promise_retry`]). Shared with the rings, which ask the guest for a kick
    /// when they run out of buffers only while nobody has promised.
    retry_promises: Arc<AtomicU32>,
    priority_weight: AtomicU32,
    pub(crate) waker: Waker,
    capture: ArcSwapOption<Capture>,
    /// See [`NicConfig::min_gso_size`].
    min_gso_size: u16,
    capturing: AtomicBool,
    connected: AtomicBool,
    /// What the guest accepts on receive ([`GuestOffloads`] bits), as its driver acked it: one
    /// atomic for the data path to read per frame rather than a walk over the rings.
    rx_offloads: AtomicU8,
    pub port_counters: Arc<PortCounters>,
}

impl Nic {
    pub fn new(
        queue_counters: &[Arc<QueueCounters>],
        port_counters: Arc<PortCounters>,
        config: &NicConfig,
        rules: RuleSet,
    ) -> Result<Self, ClassifierError> {
        let mut classifier_config = config.classifier.clone();
        classifier_config.num_queues = queue_counters.len() as u16;
        classifier_config.high_queues = classifier_config
            .high_queues
            .min(classifier_config.num_queues);
        let classifier = Classifier::new(&classifier_config, rules)?;
        let high_queues = usize::from(classifier_config.high_queues);
        let budget = backlog::ByteBudget::new(config.buffer_bytes);
        Ok(Nic {
            queues: queue_counters
                .iter()
                .enumerate()
                .map(|(index, counters)| {
                    let coalesce = if index < high_queues {
                        config.coalesce_high
                    } else {
                        config.coalesce_normal
                    };
                    RxQueue::new(
                        index,
                        counters.clone(),
                        config.buffer_frames,
                        &budget,
                        coalesce,
                    )
                })
                .collect(),
            classifier: ArcSwap::from_pointee(classifier),
            classifier_generation: AtomicU64::new(0),
            classifier_config,
            link: Link::new(config.link),
            buffered: [AtomicUsize::new(0), AtomicUsize::new(0)],
            retry_promises: Arc::new(AtomicU32::new(0)),
            priority_weight: AtomicU32::new(config.priority_weight),
            waker: Waker::new(),
            capture: ArcSwapOption::empty(),
            min_gso_size: config.min_gso_size,
            capturing: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            rx_offloads: AtomicU8::new(0),
            port_counters,
        })
    }

    /// Nanoseconds on this NIC's clock.
    pub fn now_ns(&self) -> u64 {
        clock::now_ns()
    }

    pub fn queue(&self, index: usize) -> Option<&RxQueue> {
        self.queues.get(index)
    }

    pub fn queues(&self) -> &[RxQueue] {
        &self.queues
    }

    /// Connects (or, with `None`, disconnects) the guest ring behind RX queue `index`.
    /// Disconnecting drops whatever waits in the buffers: it belonged to the old guest.
    pub fn attach_ring(&self, index: usize, ring: Option<Box<dyn GuestRxRing>>) {
        let Some(queue) = self.queues.get(index) else {
            return;
        };
        let detach = ring.is_none();
        if index == 0 {
            // Queue 0 comes and goes with the guest. Its driver may also ack features after
            // this (the port then calls `set_offloads`); either order ends with its choice.
            self.set_offloads(
                ring.as_ref()
                    .map(|ring| ring.offloads())
                    .unwrap_or_default(),
            );
        }
        queue.ring.store(ring.map(Arc::new));
        if detach {
            let dropped = queue.clear();
            for (count, dropped) in self.buffered.iter().zip(dropped) {
                count.fetch_sub(dropped, Ordering::Relaxed);
            }
        }
        self.wake();
    }

    /// Attaches the only ring of a port that is always there (tap, sink, generator).
    pub fn attach_fixed_ring(&self, ring: Box<dyn GuestRxRing>) {
        self.attach_ring(0, Some(ring));
        self.set_connected(true);
    }

    /// Whether a frontend is connected (taps, sinks and generators always are).
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    /// The receive offloads of the guest behind this NIC (none while no guest is connected).
    pub fn offloads(&self) -> GuestOffloads {
        GuestOffloads::from_bits(self.rx_offloads.load(Ordering::Relaxed))
    }

    /// Sets what the guest accepts on receive (its driver acked the features).
    pub fn set_offloads(&self, offloads: GuestOffloads) {
        self.rx_offloads
            .store(offloads.to_bits(), Ordering::Relaxed);
    }

    /// Classifies a frame for this NIC.
    pub fn classify(&self, frame: &[u8]) -> Decision {
        self.classifier.load().classify(frame)
    }

    /// Classifies a frame for this NIC with the sender's reference to the classifier, kept
    /// in its `burst` for the NIC: one atomic load per frame (the generation) instead of an
    /// arc-swap load, which costs several. A rule change bumps the generation after the new
    /// classifier is in place, so a frame sent after `set_rules` returned sees the new rules.
    pub fn classify_for(&self, burst: &mut Burst, frame: &[u8]) -> Decision {
        let generation = self.classifier_generation.load(Ordering::Acquire);
        match &burst.classifier {
            Some((seen, classifier)) if *seen == generation => classifier.classify(frame),
            _ => {
                let classifier = self.classifier.load_full();
                let decision = classifier.classify(frame);
                burst.classifier = Some((generation, classifier));
                decision
            }
        }
    }

    /// The current rules.
    pub fn rules(&self) -> Arc<Classifier> {
        self.classifier.load_full()
    }

    /// Replaces the rule set (the next frame sees the new rules); hit counters of rules that
    /// stay are carried over.
    pub fn set_rules(&self, rules: RuleSet) -> Result<(), ClassifierError> {
        let old = self.classifier.load();
        rules.inherit_hits(old.rules());
        let classifier = Classifier::new(&self.classifier_config, rules)?;
        self.classifier.store(Arc::new(classifier));
        self.classifier_generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    pub fn priority_weight(&self) -> u32 {
        self.priority_weight.load(Ordering::Relaxed)
    }

    pub fn set_priority_weight(&self, weight: u32) {
        self.priority_weight.store(weight, Ordering::Relaxed);
    }

    /// Starts (or with `None` stops) capturing delivered frames.
    pub fn set_capture(&self, capture: Option<Capture>) {
        self.capturing.store(capture.is_some(), Ordering::Relaxed);
        self.capture.store(capture.map(Arc::new));
    }

    /// Wakes the scheduler: frames may be deliverable (the guest posted buffers, a ring was
    /// enabled, settings changed).
    pub fn wake(&self) {
        self.waker.wake();
    }

    /// The queue a decision lands on, among the queues the guest has enabled, with its ring
    /// (loaded once: the caller writes into it). A guest that uses fewer queues (ethtool -L)
    /// has its classifier's choice folded onto those, as a NIC driver reprograms its
    /// indirection table; queue 0 is never disabled by Linux.
    fn pick_queue(&self, decision: &Decision, hash: u32) -> Option<(&RxQueue, queue::RingGuard)> {
        let wanted = usize::from(decision.queue.queue());
        if let Some(queue) = self.queues.get(wanted) {
            let ring = queue.ring();
            if ring.as_ref().is_some_and(|ring| ring.is_enabled()) {
                return Some((queue, ring));
            }
        }
        let enabled = self.queues.iter().filter(|q| q.is_enabled()).count();
        if enabled == 0 {
            return None;
        }
        let queue = self
            .queues
            .iter()
            .filter(|q| q.is_enabled())
            .nth(hash as usize % enabled)?;
        Some((queue, queue.ring()))
    }

    /// The queue a frame with `decision` goes to, with its ring; counts what the NIC drops
    /// before any buffer (no usable queue, a drop rule). `None`: the frame is dropped.
    fn admit(&self, decision: &Decision) -> Option<(&RxQueue, queue::RingGuard)> {
        let hash = match decision.queue {
            crate::classify::QueueChoice::Rss { hash, .. } => hash,
            _ => 0,
        };
        let Some((queue, ring_guard)) = self.pick_queue(decision, hash) else {
            stats::inc(&self.port_counters.rx_drops_not_ready);
            return None;
        };
        count_parse_error(queue, decision);
        if decision.drop {
            stats::inc(&queue.counters.rx_drops_rule);
            return None;
        }
        Some((queue, ring_guard))
    }

    /// Receives one frame from the wire (its header already adapted to this guest, its
    /// decision from [`Nic::classify`]) at once. Returns the queue it went to, if any.
    pub fn receive(
        &self,
        decision: &Decision,
        header: &[u8; 12],
        frame: FrameBytes<'_>,
        wire_bytes: u64,
        arrival_ns: u64,
    ) -> Option<usize> {
        let (queue, ring_guard) = self.admit(decision)?;
        self.receive_on(
            queue,
            &ring_guard,
            decision.class,
            header,
            frame,
            wire_bytes,
            arrival_ns,
        )
    }

    /// Stages a frame in the sender's `burst` for this NIC; it reaches the ring when the
    /// sender delivers the burst ([`Nic::deliver_burst`], from `Fabric::flush`) or when the
    /// burst fills. Frames too long to be worth copying go at once, after the burst; a
    /// lasting frame (see `TxFrame::lasting`) is staged by reference, whatever its length.
    /// Returns the queue the frame goes to, if any.
    pub fn stage(
        &self,
        burst: &mut Burst,
        decision: &Decision,
        header: &[u8; 12],
        frame: FrameBytes<'_>,
        wire_bytes: u64,
        arrival_ns: u64,
    ) -> Option<usize> {
        let wanted = usize::from(decision.queue.queue());
        // A lasting frame is staged by reference, at no cost per byte, whatever its length.
        let stageable = frame.len() <= STAGE_MAX_LEN || frame.lasting().is_some();
        if burst.is_usable(wanted) && !decision.drop && stageable {
            // Known usable in this burst: what `admit` would pick, without loading the ring.
            count_parse_error(&self.queues[wanted], decision);
            return self.push_staged(
                burst, wanted, decision, header, frame, wire_bytes, arrival_ns,
            );
        }
        let (queue, ring_guard) = self.admit(decision)?;
        if queue.index == wanted {
            burst.mark_usable(wanted);
        }
        if !stageable {
            self.deliver_burst(burst, arrival_ns);
            return self.receive_on(
                queue,
                &ring_guard,
                decision.class,
                header,
                frame,
                wire_bytes,
                arrival_ns,
            );
        }
        self.push_staged(
            burst,
            queue.index,
            decision,
            header,
            frame,
            wire_bytes,
            arrival_ns,
        )
    }

    /// Stages a frame admitted to queue `index` (see [`Nic::stage`]).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn push_staged(
        &self,
        burst: &mut Burst,
        index: usize,
        decision: &Decision,
        header: &[u8; 12],
        frame: FrameBytes<'_>,
        wire_bytes: u64,
        arrival_ns: u64,
    ) -> Option<usize> {
        burst.push(index, decision.class, header, frame, wire_bytes, arrival_ns);
        if burst.is_full() {
            self.deliver_burst(burst, arrival_ns);
        }
        Some(index)
    }

    /// Delivers a sender's staged frames, queue by queue, each under one acquisition of the
    /// queue's lock and one ring write: the same decisions as [`Nic::receive`] frame by frame
    /// (a frame goes straight into the ring only when nothing of its class or a higher one
    /// waits, there is no link latency and the link can take it; otherwise it waits in the
    /// queue's buffer), with the frames bound for the ring written together.
    ///
    /// The frames reach the link at `now_ns`, the time of delivery, not when they were
    /// staged: another sender may have used the link since, and judging a staged frame by
    /// its arrival would hold it back for time that has already passed. Residence still
    /// counts from arrival.
    pub fn deliver_burst(&self, burst: &mut Burst, now_ns: u64) {
        if burst.is_empty() {
            // Nothing to deliver, but what the burst knew about its queues ends here too.
            burst.clear();
            return;
        }
        self.drain_ahead_of(Class::Normal, now_ns);
        let latency = [Class::High, Class::Normal].map(|class| self.link.latency_of(class));
        let mut link = self.link.plan();
        // Queues already handled: a bit each (a NIC has at most 16), a scan beyond 64.
        let mut handled: u64 = 0;
        for first in 0..burst.frames.len() {
            let index = burst.frames[first].queue;
            let seen = if index < 64 {
                let bit = 1u64 << index;
                let seen = handled & bit != 0;
                handled |= bit;
                seen
            } else {
                burst.frames[..first].iter().any(|f| f.queue == index)
            };
            if seen {
                continue;
            }
            let Some(queue) = self.queues.get(index) else {
                continue;
            };
            let ring_guard = queue.ring();
            let mut state = queue.lock();
            burst.planned.clear();
            for at in first..burst.frames.len() {
                let frame = burst.frames[at];
                if frame.queue != index {
                    continue;
                }
                if self.may_skip_buffers(frame.class, latency[class_index(frame.class)])
                    && ring_guard.is_some()
                    && link.take(now_ns, frame.wire_bytes)
                {
                    burst.planned.push(at);
                    continue;
                }
                // It must wait: what was planned before it goes first.
                self.write_planned(queue, &mut state, &ring_guard, burst, now_ns);
                self.buffer_staged(queue, &mut state, &frame, burst.bytes_of(&frame));
            }
            self.write_planned(queue, &mut state, &ring_guard, burst, now_ns);
            drop(state);
            // Visible now, not at the end of the sender's batch: a batch may be as long as
            // the guest's ring, which would otherwise run dry before the guest saw a frame.
            if let Some(ring) = ring_guard.as_ref() {
                ring.publish();
            }
        }
        burst.clear();
    }

    /// Before frames that would queue behind frames waiting for room in a ring: delivers
    /// what fits now. Without it the wait would last until the end of the sender's batch
    /// (`Fabric::flush`) however soon the guest made room, and every frame that arrives
    /// meanwhile would wait too, at the cost of two more copies each. Frames waiting for the
    /// link's latency are the scheduler's business, so nothing is done then.
    fn drain_ahead_of(&self, class: Class, now_ns: u64) {
        let latency = self.link.latency_of(class);
        if latency == 0 && !self.may_skip_buffers(class, latency) {
            let _ = self.drain(now_ns);
        }
    }

    /// Whether a frame of `class` may go past the buffers into the ring (the link willing):
    /// only when nothing of its class or a higher one waits (strict priority: a high frame
    /// only waits behind high frames) and the link adds no latency.
    fn may_skip_buffers(&self, class: Class, latency_ns: u64) -> bool {
        let ahead = match class {
            Class::High => self.buffered[class_index(Class::High)].load(Ordering::Acquire),
            Class::Normal => self.buffered(),
        };
        ahead == 0 && latency_ns == 0
    }

    /// Writes the frames of `burst.planned` into the queue's ring; what does not fit waits.
    fn write_planned(
        &self,
        queue: &RxQueue,
        state: &mut queue::QueueState,
        ring_guard: &queue::RingGuard,
        burst: &mut Burst,
        now: u64,
    ) {
        let Burst {
            bytes,
            frames,
            planned,
            ..
        } = burst;
        let Some(ring) = ring_guard.as_ref() else {
            planned.clear();
            return;
        };
        let ring: &dyn GuestRxRing = ring.as_ref().as_ref();
        let bytes_of = |frame: &burst::Staged| burst::staged_bytes(bytes, frame);
        let mut from = 0;
        // The frames' references, laid out before the writes start rather than handed out
        // one by one: the ring then reads them from lines stored long before, and no load
        // of theirs has to wait behind the stores into the guest's memory (see
        // `write_header` in port/ring.rs for why such waits cost). Only as many slots as
        // frames are written: filling all of a 64-slot array first (1.5 KiB of stores) was
        // a tenth of a generator's time at 64 bytes, where its bursts are 32 frames.
        let mut chunk: ArrayVec<BurstFrame<'_>, WRITE_CHUNK> = ArrayVec::new();
        while from < planned.len() {
            let rest = &planned[from..];
            let count = rest.len().min(WRITE_CHUNK);
            chunk.clear();
            chunk.extend(rest[..count].iter().map(|&at| {
                let frame = &frames[at];
                (&frame.header, bytes_of(frame))
            }));
            let (written, outcome) = ring.write_burst(&chunk);
            let account = |state: &mut queue::QueueState, outcome, frame: &burst::Staged| {
                let len = frame.len;
                queue.account(
                    &mut state.accounting,
                    outcome,
                    frame.class,
                    len,
                    frame.arrival_ns,
                    now,
                )
            };
            let mut wire_bytes = 0;
            for &at in &rest[..written] {
                let frame = &frames[at];
                account(state, RingWrite::Written, frame);
                wire_bytes += frame.wire_bytes;
                self.captured(queue.index, frame.class, FrameBytes::whole(bytes_of(frame)));
            }
            // The chunk goes on the wire back to back, at once: one update of the link
            // (an atomic read-modify-write, which waits for every store before it) rather
            // than one per frame.
            self.link.transmit(now, wire_bytes);
            from += written;
            match outcome {
                // This chunk went in; the loop goes on with the next, if any.
                None | Some(RingWrite::Written) => {}
                Some(RingWrite::Full) => {
                    for &at in &planned[from..] {
                        let frame = frames[at];
                        self.buffer_staged(queue, state, &frame, bytes_of(&frame));
                    }
                    break;
                }
                Some(dropped) => {
                    account(state, dropped, &frames[planned[from]]);
                    from += 1;
                }
            }
        }
        planned.clear();
    }

    /// Puts a staged frame in its queue's buffer (or counts the tail drop).
    fn buffer_staged(
        &self,
        queue: &RxQueue,
        state: &mut queue::QueueState,
        frame: &burst::Staged,
        bytes: &[u8],
    ) {
        if queue.buffer(
            state,
            frame.class,
            &frame.header,
            FrameBytes::whole(bytes),
            frame.arrival_ns,
            frame.wire_bytes,
        ) {
            self.buffered[class_index(frame.class)].fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Receives one frame into `queue` now (the caller admitted it).
    #[allow(clippy::too_many_arguments)]
    fn receive_on(
        &self,
        queue: &RxQueue,
        ring_guard: &queue::RingGuard,
        class: Class,
        header: &[u8; 12],
        frame: FrameBytes<'_>,
        wire_bytes: u64,
        arrival_ns: u64,
    ) -> Option<usize> {
        self.drain_ahead_of(class, arrival_ns);
        let mut state = queue.lock();
        let direct = self.may_skip_buffers(class, self.link.latency_of(class))
            && self.link.busy_until(arrival_ns).is_none();
        if direct && let Some(ring) = ring_guard.as_ref() {
            let ring = ring.as_ref().as_ref();
            match queue.publish(
                &mut state.accounting,
                ring,
                &Arriving {
                    class,
                    header,
                    bytes: frame,
                    arrival_ns,
                },
                arrival_ns,
            ) {
                Publish::Published => {
                    self.link.transmit(arrival_ns, wire_bytes);
                    self.captured(queue.index, class, frame);
                    return Some(queue.index);
                }
                Publish::Dropped => return None,
                Publish::RingFull => {}
            }
        }
        if queue.buffer(&mut state, class, header, frame, arrival_ns, wire_bytes) {
            // No wake-up here: the sender's `Fabric::flush` at the end of its batch drains
            // what fits and wakes the scheduler only for what must wait for time to pass.
            self.buffered[class_index(class)].fetch_add(1, Ordering::SeqCst);
            Some(queue.index)
        } else {
            None
        }
    }

    fn captured(&self, queue: usize, class: Class, frame: FrameBytes<'_>) {
        // A plain flag first: capturing is rare, and the data path should not pay an
        // arc-swap load per frame for it.
        if self.capturing.load(Ordering::Relaxed)
            && let Some(capture) = self.capture.load().as_ref()
        {
            frame.with_whole(|bytes| capture.record(queue, class, bytes));
        }
    }

    /// Smallest gso_size this NIC cuts in software.
    pub fn min_gso_size(&self) -> u16 {
        self.min_gso_size
    }

    /// Whether frames are being captured (a sender then hands over whole frames: a split
    /// frame would have to be gathered for the capture anyway).
    pub fn is_capturing(&self) -> bool {
        self.capturing.load(Ordering::Relaxed)
    }

    /// Delivers what waits, as far as rings and link allow: first the high class of every
    /// queue (strict priority for the shared link), then both classes, high first within a
    /// queue. Returns the earliest time something that still waits could go (latency or
    /// link), if any; frames held back by a full ring go when the guest kicks.
    pub(crate) fn drain(&self, now_ns: u64) -> Option<u64> {
        let mut next: Option<u64> = None;
        let latency = [Class::High, Class::Normal].map(|class| self.link.latency_of(class));
        let weight = self.priority_weight();
        for allow_normal in [false, true] {
            for queue in &self.queues {
                let ring_guard = queue.ring();
                let Some(ring) = ring_guard.as_ref() else {
                    continue;
                };
                let mut guard = queue.lock();
                let state = &mut *guard;
                loop {
                    let eligible = |class: Class| {
                        state.buffers[class_index(class)]
                            .front()
                            .map(|head| head.arrival_ns + latency[class_index(class)])
                    };
                    let (high_at, normal_at) = (eligible(Class::High), eligible(Class::Normal));
                    let high_ready = high_at.is_some_and(|at| at <= now_ns);
                    let normal_ready = normal_at.is_some_and(|at| at <= now_ns);
                    // Weighted priority: after `weight` high frames in a row, a waiting normal
                    // frame gets one turn.
                    let yield_to_normal = weight > 0 && normal_ready && state.high_streak >= weight;
                    let class = if high_ready && !(yield_to_normal && allow_normal) {
                        if yield_to_normal {
                            break;
                        }
                        Class::High
                    } else if normal_ready && allow_normal {
                        Class::Normal
                    } else {
                        for at in [high_at, normal_at].into_iter().flatten() {
                            if at > now_ns {
                                next = Some(next.map_or(at, |n| n.min(at)));
                            }
                        }
                        break;
                    };
                    if let Some(until) = self.link.busy_until(now_ns) {
                        return Some(next.map_or(until, |n| n.min(until)));
                    }
                    let buffer = &mut state.buffers[class_index(class)];
                    let Some(head) = buffer.front() else { break };
                    let outcome = queue.publish(
                        &mut state.accounting,
                        ring.as_ref().as_ref(),
                        &Arriving {
                            class,
                            header: &head.header,
                            bytes: FrameBytes::whole(&head.bytes),
                            arrival_ns: head.arrival_ns,
                        },
                        now_ns,
                    );
                    match outcome {
                        Publish::RingFull => break,
                        Publish::Published => {
                            self.link.transmit(now_ns, head.wire_bytes);
                            self.captured(queue.index, class, FrameBytes::whole(&head.bytes));
                            state.high_streak = match class {
                                Class::High => state.high_streak.saturating_add(1),
                                Class::Normal => 0,
                            };
                        }
                        Publish::Dropped => {}
                    }
                    state.buffers[class_index(class)].pop();
                    self.buffered[class_index(class)].fetch_sub(1, Ordering::Release);
                }
            }
        }
        next
    }

    /// Delivers what waits and fits right away, on the caller's thread (the port's worker
    /// when the guest posted RX buffers or enabled a ring, a sender at its flush), rather
    /// than waking the scheduler for it; the scheduler is woken only for what must wait for
    /// a time (link, latency, moderation). Draining may write into any queue, so the
    /// notifications of them all are settled. Returns whether anything waited.
    pub fn drain_waiting(&self) -> bool {
        if self.buffered() == 0 {
            return false;
        }
        let waits = self.drain(self.now_ns());
        if self.flush_notifications(self.now_ns()).is_some() || waits.is_some() {
            self.wake();
        }
        true
    }

    /// Applies interrupt moderation on every queue; returns the earliest pending deadline.
    pub(crate) fn flush_notifications(&self, now_ns: u64) -> Option<u64> {
        self.queues
            .iter()
            .filter_map(|queue| queue.flush_notify(now_ns))
            .min()
    }

    /// Frames waiting in this NIC's buffers.
    pub fn buffered(&self) -> usize {
        // SeqCst with the increments and with `release_retry`'s decrement: a sender that
        // buffers a frame and then finds no promise, and a promise released before its
        // holder finds no frame, cannot both happen (see `promise_retry`).
        self.buffered
            .iter()
            .map(|count| count.load(Ordering::SeqCst))
            .sum()
    }

    /// The count of retry promises, for this NIC's rings (see [`Nic::promise_retry`]).
    pub fn retry_promises(&self) -> Arc<AtomicU32> {
        self.retry_promises.clone()
    }

    /// A busy sender delivering to this NIC promises to try its waiting frames again at each
    /// of its flushes and to call [`Nic::release_retry`] before it goes idle. Meanwhile a
    /// ring that runs out of buffers does not ask its guest for a kick.
    ///
    /// Why: a guest whose driver polls (DPDK) kicks on every refill once asked, and the
    /// port's worker thread then woke on the backend's CPU for each full-ring episode:
    /// 8,400 times a second with 9000-byte frames, and with the task switches and the
    /// interrupt exits, a sixth of the sending worker's time. The sender is running anyway
    /// and tries again within a batch, as a DPDK application would.
    pub fn promise_retry(&self) {
        self.retry_promises.fetch_add(1, Ordering::SeqCst);
    }

    /// Ends a promise (see [`Nic::promise_retry`]): the holder is going idle. What waits is
    /// tried once more, and a ring still out of buffers then asks its guest for a kick
    /// (unless another sender still holds a promise), so nothing waits without someone to
    /// move it.
    pub fn release_retry(&self) {
        self.retry_promises.fetch_sub(1, Ordering::SeqCst);
        self.drain_waiting();
    }

    /// Coalescing settings of one queue.
    pub fn set_coalesce(&self, queue: usize, settings: CoalesceSettings) -> bool {
        match self.queues.get(queue) {
            Some(q) => {
                q.coalesce.set(settings);
                self.wake();
                true
            }
            None => false,
        }
    }

    pub fn set_link(&self, settings: LinkSettings) {
        self.link.set(settings);
        self.wake();
    }

    /// Sets one class's extra delay on this NIC's link (see [`Link::latency_of`]).
    pub fn set_class_delay(&self, class: Class, delay_ns: u64) {
        self.link.set_class_delay(class, delay_ns);
        self.wake();
    }
}

/// Counts on `queue` that the parser could not finish the frame `decision` is for.
fn count_parse_error(queue: &RxQueue, decision: &Decision) {
    if decision.parse_error.is_some() {
        stats::inc(&queue.counters.rx_parse_errors);
    }
}

#[cfg(test)]
mod tests;
