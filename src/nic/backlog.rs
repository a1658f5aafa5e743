//! The NIC's receive buffer of one queue and class: frames that arrived while they could not
//! go to the guest yet (ring full, link busy, latency not elapsed), bounded in frames and, with
//! every other buffer of the port, in bytes ([`ByteBudget`]). Buffers are recycled, so a steady
//! state allocates nothing.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Arrival, FrameBytes};
use crate::packet::offload::VirtioNetHdrBytes;

/// A frame waiting in the NIC, with what the scheduler needs to know about it.
pub struct Waiting {
    pub header: VirtioNetHdrBytes,
    pub bytes: Vec<u8>,
    /// When it reached the port (ns on the NIC's clock).
    pub arrival_ns: u64,
    /// Bytes it occupies on the wire.
    pub wire_bytes: u64,
}

impl Waiting {
    /// The frame as it arrived, to be written into the ring now.
    pub fn arrival(&self) -> Arrival<'_> {
        Arrival {
            header: &self.header,
            bytes: FrameBytes::whole(&self.bytes),
            wire_bytes: self.wire_bytes,
            arrival_ns: self.arrival_ns,
        }
    }
}

/// The bytes a port's NIC may hold in its buffers, all queues and classes together.
///
/// Why bytes and not only frames: a frame limit bounds a port at 2 classes x queues x
/// `--rx-buffer` x 64 KiB (GSO frames), half a gigabyte with the defaults, for a guest
/// that merely stops reading. What is counted is the capacity of the buffers held, the
/// spare ones kept for reuse included, so the budget bounds the memory and not just the
/// frames. Taken only when a buffer grows, so a steady state touches no atomic.
#[derive(Debug)]
pub struct ByteBudget {
    limit: usize,
    used: AtomicUsize,
}

impl ByteBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(ByteBudget {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `bytes` if they fit under the limit.
    fn take(&self, bytes: usize) -> bool {
        let before = self.used.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > self.limit {
            self.used.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// A bounded FIFO of frames.
pub struct Frames {
    limit: usize,
    queued: VecDeque<Waiting>,
    /// Buffers of frames already delivered, kept for reuse.
    spare: Vec<Vec<u8>>,
    /// The port's budget, which the capacity of every buffer here (queued or spare) is
    /// taken from.
    budget: Arc<ByteBudget>,
}

impl Frames {
    pub fn new(limit: usize, budget: Arc<ByteBudget>) -> Self {
        Frames {
            limit,
            queued: VecDeque::with_capacity(limit.min(4096)),
            spare: Vec::new(),
            budget,
        }
    }

    /// Frees the spare buffers, giving their bytes back to the budget.
    fn free_spares(&mut self) {
        let bytes: usize = self.spare.iter().map(Vec::capacity).sum();
        self.spare.clear();
        self.budget.give_back(bytes);
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queued.len()
    }

    /// Queues a copy of the frame; false (and nothing queued) when the buffer is full.
    pub fn push(&mut self, arrival: &Arrival<'_>) -> bool {
        let frame = arrival.bytes;
        if self.queued.len() >= self.limit {
            return false;
        }
        let mut bytes = self.spare.pop().unwrap_or_default();
        bytes.clear();
        let had = bytes.capacity();
        bytes.reserve(frame.len());
        let grown = bytes.capacity() - had;
        if grown > 0 && !self.budget.take(grown) {
            // Over the budget: the spare buffers go first (their bytes are counted too),
            // then the frame if it still does not fit.
            self.free_spares();
            if !self.budget.take(grown) {
                self.budget.give_back(had);
                return false;
            }
        }
        frame.extend_vec(&mut bytes);
        self.queued.push_back(Waiting {
            header: *arrival.header,
            bytes,
            arrival_ns: arrival.arrival_ns,
            wire_bytes: arrival.wire_bytes,
        });
        true
    }

    /// The frames, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Waiting> {
        self.queued.iter()
    }

    /// The oldest frame, if any.
    pub fn front(&self) -> Option<&Waiting> {
        self.queued.front()
    }

    /// Removes the oldest frame, keeping its buffer for reuse.
    pub fn pop(&mut self) {
        if let Some(waiting) = self.queued.pop_front() {
            // At most `limit` spare buffers, as many as the frames a full buffer holds: a
            // guest that fell behind by that much and caught up finds every buffer it needs
            // again (with fewer, each frame past them cost an allocation and a free). Their
            // bytes are bounded by the budget, and kept only while it is less than half
            // used: they are a cache for a steady state, and under pressure their bytes are
            // for frames (another queue's frames too, which could not free them).
            if self.spare.len() < self.limit && self.budget.used() <= self.budget.limit / 2 {
                self.spare.push(waiting.bytes);
            } else {
                self.budget.give_back(waiting.bytes.capacity());
            }
        }
    }

    /// Drops everything queued (the guest behind the queue went away); returns how many.
    pub fn clear(&mut self) -> usize {
        let dropped = self.queued.len();
        while !self.queued.is_empty() {
            self.pop();
        }
        self.free_spares();
        dropped
    }
}

impl Drop for Frames {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival<'a>(
        header: &'a [u8; 12],
        bytes: &'a [u8],
        arrival_ns: u64,
        wire_bytes: u64,
    ) -> Arrival<'a> {
        Arrival {
            header,
            bytes: FrameBytes::whole(bytes),
            wire_bytes,
            arrival_ns,
        }
    }

    #[test]
    fn frames_come_out_in_order() {
        let mut frames = Frames::new(4, ByteBudget::new(usize::MAX));
        assert!(frames.push(&arrival(&[1; 12], b"first", 10, 84)));
        assert!(frames.push(&arrival(&[2; 12], b"second", 20, 84)));
        let head = frames.front().unwrap();
        assert_eq!(
            (head.header, head.bytes.as_slice(), head.arrival_ns),
            ([1; 12], &b"first"[..], 10)
        );
        frames.pop();
        assert_eq!(frames.front().unwrap().bytes, b"second");
    }

    #[test]
    fn full_buffer_refuses_and_keeps_what_it_has() {
        let mut frames = Frames::new(2, ByteBudget::new(usize::MAX));
        assert!(frames.push(&arrival(&[0; 12], b"a", 0, 84)));
        assert!(frames.push(&arrival(&[0; 12], b"b", 0, 84)));
        assert!(!frames.push(&arrival(&[0; 12], b"c", 0, 84)));
        assert_eq!(frames.len(), 2);
    }

    #[test]
    fn buffers_are_reused_after_pop() {
        let mut frames = Frames::new(2, ByteBudget::new(usize::MAX));
        frames.push(&arrival(&[0; 12], &[7u8; 1500], 0, 1524));
        frames.pop();
        assert_eq!(frames.spare.len(), 1);
        frames.push(&arrival(&[0; 12], b"x", 0, 84));
        assert!(frames.spare.is_empty());
        assert_eq!(frames.clear(), 1);
        assert!(frames.is_empty());
    }

    #[test]
    fn every_buffer_of_a_full_queue_is_kept_for_reuse_within_the_budget() {
        // More frames than any fixed number of spares: a guest that falls behind by a full
        // buffer and catches up must not cost an allocation and a free per frame.
        let limit = 1024;
        let budget = ByteBudget::new(1 << 30);
        let mut frames = Frames::new(limit, budget.clone());
        for _ in 0..limit {
            assert!(frames.push(&arrival(&[0; 12], &[1; 64], 0, 88)));
        }
        let held = budget.used();
        while !frames.is_empty() {
            frames.pop();
        }
        assert_eq!(frames.spare.len(), limit);
        for _ in 0..limit {
            assert!(frames.push(&arrival(&[0; 12], &[2; 64], 0, 88)));
        }
        assert!(frames.spare.is_empty());
        assert_eq!(budget.used(), held);
    }

    #[test]
    fn frames_over_the_byte_budget_are_refused_and_delivered_ones_give_their_bytes_back() {
        let budget = ByteBudget::new(4000);
        let mut high = Frames::new(100, budget.clone());
        let mut normal = Frames::new(100, budget.clone());
        // Two buffers share the budget: 1500 + 1500 fit, a third 1500 does not.
        assert!(high.push(&arrival(&[0; 12], &[1; 1500], 0, 1524)));
        assert!(normal.push(&arrival(&[0; 12], &[2; 1500], 0, 1524)));
        assert!(!normal.push(&arrival(&[0; 12], &[3; 1500], 0, 1524)));
        assert!(budget.used() <= 4000);
        // A small frame still fits in what is left.
        assert!(normal.push(&arrival(&[0; 12], &[4; 64], 0, 88)));
        // Delivered under pressure, frames give their bytes back at once (no spare is kept
        // over half the budget), and another buffer can use them.
        normal.pop();
        normal.pop();
        assert!(high.push(&arrival(&[0; 12], &[6; 2000], 0, 2024)));
        // Everything given back when the guest goes away.
        high.clear();
        normal.clear();
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_spare_buffer_is_reused_within_the_budget_without_taking_more() {
        let budget = ByteBudget::new(1 << 20);
        let mut frames = Frames::new(100, budget.clone());
        assert!(frames.push(&arrival(&[0; 12], &[1; 1500], 0, 1524)));
        frames.pop();
        let held = budget.used();
        assert!(held >= 1500, "the spare is counted");
        assert!(frames.push(&arrival(&[0; 12], &[5; 1000], 0, 1024)));
        assert_eq!(budget.used(), held);
    }
}
