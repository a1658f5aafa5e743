//! The NIC's receive buffer of one queue: frames that arrived while the guest's RX ring was
//! full, bounded in frames. Buffers are recycled, so a steady state allocates nothing.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

/// A bounded FIFO of frames (each stored with its virtio-net header).
pub struct Backlog {
    inner: Mutex<Frames>,
}

pub struct Frames {
    limit: usize,
    queued: VecDeque<Stored>,
    /// Buffers of frames already delivered, kept for reuse.
    spare: Vec<Vec<u8>>,
}

struct Stored {
    header: [u8; 12],
    bytes: Vec<u8>,
}

impl Backlog {
    pub fn new(limit: usize) -> Self {
        Backlog {
            inner: Mutex::new(Frames {
                limit,
                queued: VecDeque::with_capacity(limit.min(4096)),
                spare: Vec::new(),
            }),
        }
    }

    /// Locks the buffer. The lock also orders writes into the guest ring, so frames of one
    /// queue reach the guest in arrival order.
    pub fn lock(&self) -> MutexGuard<'_, Frames> {
        // A poisoned lock only means another thread panicked while holding it; the frames are
        // still a consistent queue, so keep going rather than take the data path down too.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Frames {
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queued.len()
    }

    /// Queues a copy of the frame; false (and nothing queued) when the buffer is full.
    pub fn push(&mut self, header: &[u8; 12], frame: &[u8]) -> bool {
        if self.queued.len() >= self.limit {
            return false;
        }
        let mut bytes = self.spare.pop().unwrap_or_default();
        bytes.clear();
        bytes.extend_from_slice(frame);
        self.queued.push_back(Stored {
            header: *header,
            bytes,
        });
        true
    }

    /// The oldest frame, if any.
    pub fn front(&self) -> Option<(&[u8; 12], &[u8])> {
        self.queued
            .front()
            .map(|stored| (&stored.header, stored.bytes.as_slice()))
    }

    /// Removes the oldest frame, keeping its buffer for reuse.
    pub fn pop(&mut self) {
        if let Some(stored) = self.queued.pop_front() {
            // Keep at most `limit` spare buffers; a burst of jumbo frames should not pin
            // memory forever.
            if self.spare.len() < self.limit {
                self.spare.push(stored.bytes);
            }
        }
    }

    /// Drops everything queued (the guest behind the queue went away).
    pub fn clear(&mut self) {
        while !self.queued.is_empty() {
            self.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_come_out_in_order() {
        let backlog = Backlog::new(4);
        let mut frames = backlog.lock();
        assert!(frames.push(&[1; 12], b"first"));
        assert!(frames.push(&[2; 12], b"second"));
        assert_eq!(frames.front(), Some((&[1; 12], &b"first"[..])));
        frames.pop();
        assert_eq!(frames.front(), Some((&[2; 12], &b"second"[..])));
    }

    #[test]
    fn full_buffer_refuses_and_keeps_what_it_has() {
        let backlog = Backlog::new(2);
        let mut frames = backlog.lock();
        assert!(frames.push(&[0; 12], b"a"));
        assert!(frames.push(&[0; 12], b"b"));
        assert!(!frames.push(&[0; 12], b"c"));
        assert_eq!(frames.len(), 2);
    }

    #[test]
    fn buffers_are_reused_after_pop() {
        let backlog = Backlog::new(2);
        let mut frames = backlog.lock();
        frames.push(&[0; 12], &[7u8; 1500]);
        frames.pop();
        assert_eq!(frames.spare.len(), 1);
        frames.push(&[0; 12], b"x");
        assert!(frames.spare.is_empty());
        frames.clear();
        assert!(frames.is_empty());
    }
}
