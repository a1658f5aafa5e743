//! One RX queue of the NIC: the guest ring behind it, a bounded buffer per class, the frames
//! published but not yet notified (interrupt moderation), residence histograms and counters.
//!
//! The queue's lock orders every write into its ring, so frames of one class and queue reach
//! the guest in arrival order, whether a sender wrote directly or the scheduler drained them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwapOption;

use super::backlog::{ByteBudget, Frames};
use super::moderation::{Coalesce, CoalesceSettings, NotifyDecision, Pending};
use super::residence::{Residence, ResidenceBuckets, ResidenceSummary};
use super::{Arrival, GuestRxRing, RingWrite};
use crate::classify::Class;
use crate::stats::{self, QueueCounters};

/// Index of a class in per-class arrays.
pub fn class_index(class: Class) -> usize {
    match class {
        Class::High => 0,
        Class::Normal => 1,
    }
}

pub struct QueueState {
    pub buffers: [Frames; 2],
    pub accounting: Accounting,
    /// High-class frames sent in a row (for the priority weight).
    pub high_streak: u32,
}

/// What publishing updates besides the ring: kept apart from the buffers so a frame can be
/// published straight from its buffer.
pub struct Accounting {
    pending: Pending,
    residence: [Residence; 2],
}

/// What writing one frame into the ring came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publish {
    Published,
    /// The ring is full: keep the frame.
    RingFull,
    /// Dropped (too big for the guest, or the ring is not usable); counted.
    Dropped,
}

/// Frames written into the ring together, as the accounting takes them
/// ([`RxQueue::account_written`]): `frames` of `class` that arrived at `arrival_ns`, `bytes`
/// long together. A sender stamps several frames at a time, so the frames of a chunk come
/// in a few such runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrittenRun {
    pub class: Class,
    pub frames: u64,
    pub bytes: u64,
    pub arrival_ns: u64,
}

impl WrittenRun {
    /// One frame of `class`, `len` bytes long, that arrived at `arrival_ns`.
    pub fn one(class: Class, len: usize, arrival_ns: u64) -> Self {
        WrittenRun {
            class,
            frames: 1,
            bytes: len as u64,
            arrival_ns,
        }
    }
}

/// A loaded ring reference (arc-swap's guard: no reference count touched).
pub type RingGuard = arc_swap::Guard<Option<Arc<Box<dyn GuestRxRing>>>>;

pub struct RxQueue {
    pub index: usize,
    pub(super) ring: ArcSwapOption<Box<dyn GuestRxRing>>,
    state: Mutex<QueueState>,
    pub counters: Arc<QueueCounters>,
    pub coalesce: Coalesce,
    /// When a moderated notification is due (ns), 0 for none; read by the scheduler.
    pub(super) notify_due: AtomicU64,
}

impl RxQueue {
    pub fn new(
        index: usize,
        counters: Arc<QueueCounters>,
        buffer_frames: usize,
        budget: &Arc<ByteBudget>,
        coalesce: CoalesceSettings,
    ) -> Self {
        RxQueue {
            index,
            ring: ArcSwapOption::empty(),
            state: Mutex::new(QueueState {
                buffers: [
                    Frames::new(buffer_frames, budget.clone()),
                    Frames::new(buffer_frames, budget.clone()),
                ],
                accounting: Accounting {
                    pending: Pending::default(),
                    residence: [Residence::new(), Residence::new()],
                },
                high_streak: 0,
            }),
            counters,
            coalesce: Coalesce::new(coalesce),
            notify_due: AtomicU64::new(0),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A poisoned lock only means another thread panicked while holding it; the buffers
        // are still consistent queues, so keep going rather than take the data path down.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ring, without touching its reference count (arc-swap's guard).
    pub(super) fn ring(&self) -> RingGuard {
        self.ring.load()
    }

    /// Whether a ring is attached and enabled by its guest.
    pub fn is_enabled(&self) -> bool {
        self.ring
            .load()
            .as_ref()
            .is_some_and(|ring| ring.is_enabled())
    }

    /// Frames waiting in the buffers now.
    pub fn buffered(&self) -> usize {
        let state = self.lock();
        state.buffers.iter().map(Frames::len).sum()
    }

    /// Writes one frame of `class` into the ring under the queue's lock and accounts for it.
    pub(super) fn publish(
        &self,
        accounting: &mut Accounting,
        ring: &dyn GuestRxRing,
        class: Class,
        frame: &Arrival<'_>,
        now_ns: u64,
    ) -> Publish {
        let outcome = ring.write_bytes(frame.header, frame.bytes);
        self.account(
            accounting,
            outcome,
            class,
            frame.bytes.len(),
            frame.arrival_ns,
            now_ns,
        )
    }

    /// Accounts for the outcome of writing a frame of `class` and `len` bytes that arrived
    /// at `arrival_ns`; the caller holds the queue's lock.
    pub(super) fn account(
        &self,
        accounting: &mut Accounting,
        outcome: RingWrite,
        class: Class,
        len: usize,
        arrival_ns: u64,
        now_ns: u64,
    ) -> Publish {
        match outcome {
            RingWrite::Written => {
                self.account_written(
                    accounting,
                    &[WrittenRun::one(class, len, arrival_ns)],
                    now_ns,
                );
                Publish::Published
            }
            RingWrite::Full => Publish::RingFull,
            RingWrite::TooBig => {
                stats::inc(&self.counters.rx_drops_too_big);
                Publish::Dropped
            }
            RingWrite::NotReady => {
                stats::inc(&self.counters.rx_drops_no_buffer);
                Publish::Dropped
            }
        }
    }

    /// Accounts for frames written into the ring together, given as runs of one class and
    /// arrival time ([`WrittenRun`]; a frame alone is a run of one): what
    /// [`RxQueue::account`] does for a written frame, with the counters and the pending
    /// notification moved once for all of them, and each run's residence recorded at once.
    /// The caller holds the queue's lock, so the counters have one writer at a time.
    pub(super) fn account_written(
        &self,
        accounting: &mut Accounting,
        runs: &[WrittenRun],
        now_ns: u64,
    ) {
        // Per class: packets, bytes.
        let mut totals = [(0u64, 0u64); 2];
        for run in runs {
            let ci = class_index(run.class);
            totals[ci].0 += run.frames;
            totals[ci].1 += run.bytes;
            accounting.residence[ci].record_n(now_ns.saturating_sub(run.arrival_ns), run.frames);
        }
        let [(high, high_bytes), (normal, normal_bytes)] = totals;
        let packets = high + normal;
        if packets == 0 {
            return;
        }
        let counters = &self.counters;
        stats::add_single_writer(&counters.rx_packets, packets);
        stats::add_single_writer(&counters.rx_bytes, high_bytes + normal_bytes);
        if high > 0 {
            stats::add_single_writer(&counters.rx_high_packets, high);
            stats::add_single_writer(&counters.rx_high_bytes, high_bytes);
        }
        // A chunk holds at most a burst of frames.
        accounting
            .pending
            .add(u32::try_from(packets).unwrap_or(u32::MAX), now_ns);
    }

    /// Buffers a frame of `class`; counts a tail drop if the class buffer is full.
    pub(super) fn buffer(&self, state: &mut QueueState, class: Class, frame: &Arrival<'_>) -> bool {
        if state.buffers[class_index(class)].push(frame) {
            stats::inc(&self.counters.rx_buffered);
            true
        } else {
            stats::inc(&self.counters.rx_drops_no_buffer);
            if class == Class::High {
                stats::inc(&self.counters.rx_high_drops_no_buffer);
            }
            false
        }
    }

    /// Makes the frames written into the ring so far visible to the guest (a polling driver
    /// takes them from here), without notifying it.
    pub fn publish_ring(&self) {
        if let Some(ring) = self.ring().as_ref() {
            ring.publish();
        }
    }

    /// Applies interrupt moderation to what was published: notifies the guest now, or
    /// returns when it should be notified.
    pub fn flush_notify(&self, now_ns: u64) -> Option<u64> {
        // What was written becomes visible now, whatever moderation decides about telling
        // the guest: a polling driver must not wait for the interrupt.
        self.publish_ring();
        let decision = {
            let mut state = self.lock();
            let decision = state.accounting.pending.decide(self.coalesce.get(), now_ns);
            if decision == NotifyDecision::Now {
                state.accounting.pending.clear();
            }
            decision
        };
        match decision {
            NotifyDecision::Idle => {
                self.notify_due.store(0, Ordering::Relaxed);
                None
            }
            NotifyDecision::Now => {
                self.notify_due.store(0, Ordering::Relaxed);
                if let Some(ring) = self.ring().as_ref() {
                    ring.notify();
                }
                None
            }
            NotifyDecision::At(due) => {
                self.notify_due.store(due, Ordering::Relaxed);
                Some(due)
            }
        }
    }

    /// Drops every buffered frame (the guest went away); returns how many, per class.
    pub(super) fn clear(&self) -> [usize; 2] {
        let mut state = self.lock();
        state.accounting.pending.clear();
        state.buffers.each_mut().map(Frames::clear)
    }

    pub fn residence(&self) -> [ResidenceSummary; 2] {
        let mut state = self.lock();
        let residence = &mut state.accounting.residence;
        [residence[0].summary(), residence[1].summary()]
    }

    /// Both classes' residence histograms cut at `bounds_ns` (see [`Residence::buckets`]).
    pub fn residence_buckets(&self, bounds_ns: &[u64]) -> [ResidenceBuckets; 2] {
        let mut state = self.lock();
        let residence = &mut state.accounting.residence;
        [
            residence[0].buckets(bounds_ns),
            residence[1].buckets(bounds_ns),
        ]
    }

    pub fn reset_residence(&self) {
        let mut state = self.lock();
        state
            .accounting
            .residence
            .iter_mut()
            .for_each(Residence::reset);
    }
}
