//! Impairments on a port's link, in the manner of Linux's netem: delay with jitter, loss,
//! reordering, duplication and corruption, per class, seeded so a run can be repeated frame
//! by frame.
//!
//! They act where a frame reaches the port, before the NIC: a frame is decided on by its
//! class's [`model::ClassModel`]; a delayed frame (or duplicate) is copied into this port's
//! delay buffer, a heap ordered by release time, and the NIC's scheduler hands it on when
//! its time comes, through the same receive path as any frame (classification already done,
//! queue buffers, link pacing and latency, which adds to netem's delay). A frame not delayed
//! goes on at once, ahead of the held ones: that is netem's reordering.
//!
//! The delay buffer has its own byte budget, sized from the link's rate times the longest
//! delay (never less than the NIC's own buffer budget, never more than [`MAX_HOLD_BYTES`]),
//! so delayed frames do not take the room of the queue buffers, and a frame the buffer has
//! no room for is counted apart from the model's losses.
//!
//! A class without impairments costs one relaxed atomic load per frame; a class with them,
//! a lock per frame (one random stream per class must see the frames in one order).

pub mod model;
pub mod settings;

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::queue::class_index;
use super::{Arrival, Burst, FrameBytes, Nic};
use crate::classify::{Class, Decision};
use crate::packet::offload::{VirtioNetHdrBytes, hdr_flags};
use crate::stats::{self, NetemCounters};
use model::{ClassModel, Verdict};
pub use settings::{
    ClassScope, NetemAction, NetemCommand, NetemError, NetemSettings, parse_command, words,
};

/// The most bytes a port's delay buffer may hold, however fast the link and long the delay.
pub const MAX_HOLD_BYTES: usize = 1 << 30;

/// Both classes, in the order of the per-class arrays.
const CLASSES: [Class; 2] = [Class::High, Class::Normal];

/// A frame held for its delay.
struct Held {
    release_ns: u64,
    /// Order of holding: frames due at the same time go in the order they came.
    seq: u64,
    decision: Decision,
    header: VirtioNetHdrBytes,
    bytes: Vec<u8>,
    wire_bytes: u64,
}

impl Held {
    /// What it takes from the budget: its bytes and its place in the heap.
    fn cost(&self) -> usize {
        self.bytes.capacity() + std::mem::size_of::<Held>()
    }

    fn key(&self) -> (u64, u64) {
        (self.release_ns, self.seq)
    }
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Held {}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Held {
    /// Reversed, so the heap's top is the frame due first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        other.key().cmp(&self.key())
    }
}

struct State {
    classes: [Option<ClassModel>; 2],
    held: BinaryHeap<Held>,
    next_seq: u64,
    held_bytes: usize,
}

/// The impairments of one port.
pub struct Netem {
    /// Per class: whether it is impaired (the data path's one check per frame).
    active: [AtomicBool; 2],
    /// Frames held now, so the scheduler skips the lock when there are none.
    holding: AtomicUsize,
    state: Mutex<State>,
    counters: [NetemCounters; 2],
    /// The least the delay buffer may hold: the NIC's own buffer budget.
    floor_bytes: usize,
}

/// A seed for settings given without one: different in every run, shown with the settings
/// so the run can be repeated.
fn fresh_seed() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(super::clock::now_ns())
}

impl Netem {
    pub fn new(floor_bytes: usize) -> Self {
        Netem {
            active: [AtomicBool::new(false), AtomicBool::new(false)],
            holding: AtomicUsize::new(0),
            state: Mutex::new(State {
                classes: [None, None],
                held: BinaryHeap::new(),
                next_seq: 0,
                held_bytes: 0,
            }),
            counters: [NetemCounters::default(), NetemCounters::default()],
            floor_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere leaves a consistent heap and models: keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether frames of `class` are impaired.
    #[inline]
    pub fn is_active(&self, class: Class) -> bool {
        self.active[class_index(class)].load(Ordering::Relaxed)
    }

    /// The settings of `class`, if it is impaired.
    pub fn settings(&self, class: Class) -> Option<NetemSettings> {
        self.lock().classes[class_index(class)]
            .as_ref()
            .map(|model| *model.settings())
    }

    /// Replaces the impairments of `class` (`None`: removes them); the model starts afresh
    /// from its seed, a new one if none is given. Frames already held keep their times.
    /// Returns the settings in force, seed included.
    pub fn set(&self, class: Class, settings: Option<NetemSettings>) -> Option<NetemSettings> {
        let index = class_index(class);
        let model = settings.map(|mut settings| {
            settings.seed.get_or_insert_with(fresh_seed);
            ClassModel::new(settings, index as u64)
        });
        let in_force = model.as_ref().map(|model| *model.settings());
        let mut state = self.lock();
        self.active[index].store(model.is_some(), Ordering::Relaxed);
        state.classes[index] = model;
        in_force
    }

    /// Counters of `class`.
    pub fn counters(&self, class: Class) -> &NetemCounters {
        &self.counters[class_index(class)]
    }

    /// Frames held now.
    pub fn held(&self) -> usize {
        self.holding.load(Ordering::Relaxed)
    }

    /// Bytes the delay buffer holds now, and may hold at the link's `rate_bps`.
    pub fn held_bytes(&self, rate_bps: u64) -> (usize, usize) {
        let state = self.lock();
        (state.held_bytes, self.budget(&state, rate_bps))
    }

    /// The delay buffer's budget: the link's rate times the longest delay, with a quarter
    /// more for bursts, between the NIC's budget and [`MAX_HOLD_BYTES`].
    fn budget(&self, state: &State, rate_bps: u64) -> usize {
        let longest = state
            .classes
            .iter()
            .flatten()
            .map(ClassModel::max_delay_ns)
            .max()
            .unwrap_or(0);
        let bytes = u128::from(rate_bps) * u128::from(longest) / 8 / 1_000_000_000 * 5 / 4;
        usize::try_from(bytes)
            .unwrap_or(usize::MAX)
            .max(self.floor_bytes)
            .min(MAX_HOLD_BYTES.max(self.floor_bytes))
    }

    /// The verdict on a frame of `class` and `len` bytes, counted; `None` if the class is
    /// not impaired (it was just turned off).
    fn decide(&self, class: Class, len: usize) -> Option<Verdict> {
        let verdict = self.lock().classes[class_index(class)]
            .as_mut()?
            .decide(len);
        let counters = self.counters(class);
        for (counter, happened) in [
            (&counters.netem_lost, verdict.lost),
            (&counters.netem_duplicated, verdict.duplicate),
            (&counters.netem_corrupted, verdict.corrupt.is_some()),
            (&counters.netem_reordered, verdict.reordered),
        ] {
            if happened {
                stats::inc(counter);
            }
        }
        Some(verdict)
    }

    /// Holds a frame until its release time, if the budget has room; returns whether it
    /// is now the first due (the scheduler must learn of the earlier deadline), or `None`
    /// when it was dropped for want of room.
    fn hold(&self, mut held: Held, rate_bps: u64) -> Option<bool> {
        let class = held.decision.class;
        let mut state = self.lock();
        let cost = held.cost();
        if state.held_bytes + cost > self.budget(&state, rate_bps) {
            drop(state);
            stats::inc(&self.counters(class).netem_drops_budget);
            return None;
        }
        held.seq = state.next_seq;
        state.next_seq += 1;
        state.held_bytes += cost;
        let first = state
            .held
            .peek()
            .is_none_or(|head| held.release_ns < head.release_ns);
        state.held.push(held);
        self.holding.fetch_add(1, Ordering::Relaxed);
        drop(state);
        stats::inc(&self.counters(class).netem_delayed);
        Some(first)
    }

    /// Moves the frames due by `now` to `due`, in release order; returns when the next one
    /// is due, if any is held.
    fn take_due(&self, now: u64, due: &mut Vec<Held>) -> Option<u64> {
        let mut state = self.lock();
        while state.held.peek().is_some_and(|head| head.release_ns <= now) {
            let Some(held) = state.held.pop() else { break };
            state.held_bytes -= held.cost();
            due.push(held);
        }
        self.holding.store(state.held.len(), Ordering::Relaxed);
        state.held.peek().map(|head| head.release_ns)
    }
}

/// Where a frame that netem lets through at once goes on.
pub(super) enum Onward<'b> {
    /// Into the sender's burst ([`Nic::stage`]).
    Burst(&'b mut Burst),
    /// Into the queue now ([`Nic::receive`]).
    Direct,
}

/// The header of a corrupted frame: its checksums are no longer known good, so the guest
/// must check them (a partial checksum, NEEDS_CSUM, stays the sender's business).
fn corrupted_header(header: &VirtioNetHdrBytes) -> VirtioNetHdrBytes {
    let mut header = *header;
    header[0] &= !hdr_flags::DATA_VALID;
    header
}

impl Nic {
    /// Receives a frame of an impaired class: decides on it, then sends on, holds or drops
    /// each copy. Returns the queue of a copy sent on at once, if any.
    pub(super) fn impair(
        &self,
        mut onward: Onward<'_>,
        decision: &Decision,
        arrival: Arrival<'_>,
    ) -> Option<usize> {
        let Some(verdict) = self.netem.decide(decision.class, arrival.bytes.len()) else {
            return self.pass(&mut onward, decision, arrival);
        };
        let corrupted = verdict.corrupt.map(|(byte, bit)| {
            let mut bytes = Vec::with_capacity(arrival.bytes.len());
            arrival.bytes.extend_vec(&mut bytes);
            if let Some(byte) = bytes.get_mut(byte) {
                *byte ^= 1 << bit;
            }
            (bytes, corrupted_header(arrival.header))
        });
        let mut queue = None;
        for copy in 0..verdict.copies() {
            let (delay_ns, copy) = match (copy, &corrupted) {
                (0, Some((bytes, header))) => {
                    let bytes = FrameBytes::whole(bytes);
                    (
                        verdict.delay_ns,
                        Arrival {
                            header,
                            bytes,
                            ..arrival
                        },
                    )
                }
                (0, None) => (verdict.delay_ns, arrival),
                _ => (verdict.duplicate_delay_ns, arrival),
            };
            if delay_ns == 0 {
                queue = queue.or(self.pass(&mut onward, decision, copy));
                continue;
            }
            let mut bytes = Vec::with_capacity(copy.bytes.len());
            copy.bytes.extend_vec(&mut bytes);
            let held = Held {
                release_ns: copy.arrival_ns.saturating_add(delay_ns),
                seq: 0,
                decision: *decision,
                header: *copy.header,
                bytes,
                wire_bytes: copy.wire_bytes,
            };
            if self.netem.hold(held, self.link.settings().rate_bps) == Some(true) {
                self.wake();
            }
        }
        queue
    }

    /// Sends a frame on, unimpaired.
    fn pass(
        &self,
        onward: &mut Onward<'_>,
        decision: &Decision,
        arrival: Arrival<'_>,
    ) -> Option<usize> {
        match onward {
            Onward::Burst(burst) => self.stage_clean(burst, decision, arrival),
            Onward::Direct => self.receive_clean(decision, arrival),
        }
    }

    /// Hands on the held frames due by `now` (the scheduler calls it); returns when the next
    /// one is due. A released frame reaches the NIC at its release time: the link's latency
    /// adds to netem's delay, and the NIC's residence counts from there.
    pub(crate) fn release_held(&self, now: u64) -> Option<u64> {
        if self.netem.held() == 0 {
            return None;
        }
        let mut due = Vec::new();
        let next = self.netem.take_due(now, &mut due);
        for held in due {
            let arrival = Arrival {
                header: &held.header,
                bytes: FrameBytes::whole(&held.bytes),
                wire_bytes: held.wire_bytes,
                arrival_ns: held.release_ns,
            };
            let _ = self.receive_clean(&held.decision, arrival);
        }
        next
    }

    /// Sets the impairments of the classes in `scope` (see [`Netem::set`]); returns those in
    /// force for each class.
    pub fn set_netem(
        &self,
        scope: ClassScope,
        settings: Option<NetemSettings>,
    ) -> [Option<NetemSettings>; 2] {
        // One seed for every class in scope (each still has its own stream from it).
        let settings = settings.map(|mut settings| {
            settings.seed.get_or_insert_with(fresh_seed);
            settings
        });
        let mut in_force = CLASSES.map(|class| self.netem.settings(class));
        for class in CLASSES {
            if scope.includes(class) {
                in_force[class_index(class)] = self.netem.set(class, settings);
            }
        }
        self.wake();
        in_force
    }
}

#[cfg(test)]
mod tests;
