//! The NIC's receive buffer of one queue and class: frames that arrived while they could not
//! go to the guest yet (ring full, link busy, latency not elapsed), bounded in frames.
//! Buffers are recycled, so a steady state allocates nothing.

use std::collections::VecDeque;

use super::FrameBytes;

/// A frame waiting in the NIC, with what the scheduler needs to know about it.
pub struct Waiting {
    pub header: [u8; 12],
    pub bytes: Vec<u8>,
    /// When it reached the port (ns on the NIC's clock).
    pub arrival_ns: u64,
    /// Bytes it occupies on the wire.
    pub wire_bytes: u64,
}

/// A bounded FIFO of frames.
pub struct Frames {
    limit: usize,
    queued: VecDeque<Waiting>,
    /// Buffers of frames already delivered, kept for reuse.
    spare: Vec<Vec<u8>>,
}

impl Frames {
    pub fn new(limit: usize) -> Self {
        Frames {
            limit,
            queued: VecDeque::with_capacity(limit.min(4096)),
            spare: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queued.len()
    }

    /// Queues a copy of the frame; false (and nothing queued) when the buffer is full.
    pub fn push(
        &mut self,
        header: &[u8; 12],
        frame: FrameBytes<'_>,
        arrival_ns: u64,
        wire_bytes: u64,
    ) -> bool {
        if self.queued.len() >= self.limit {
            return false;
        }
        let mut bytes = self.spare.pop().unwrap_or_default();
        bytes.clear();
        frame.extend_vec(&mut bytes);
        self.queued.push_back(Waiting {
            header: *header,
            bytes,
            arrival_ns,
            wire_bytes,
        });
        true
    }

    /// The oldest frame, if any.
    pub fn front(&self) -> Option<&Waiting> {
        self.queued.front()
    }

    /// Removes the oldest frame, keeping its buffer for reuse.
    pub fn pop(&mut self) {
        if let Some(waiting) = self.queued.pop_front() {
            // Keep at most `limit` spare buffers; a burst of jumbo frames should not pin
            // memory forever.
            if self.spare.len() < self.limit.min(256) {
                self.spare.push(waiting.bytes);
            }
        }
    }

    /// Drops everything queued (the guest behind the queue went away); returns how many.
    pub fn clear(&mut self) -> usize {
        let dropped = self.queued.len();
        while !self.queued.is_empty() {
            self.pop();
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_come_out_in_order() {
        let mut frames = Frames::new(4);
        assert!(frames.push(&[1; 12], FrameBytes::whole(b"first"), 10, 84));
        assert!(frames.push(&[2; 12], FrameBytes::whole(b"second"), 20, 84));
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
        let mut frames = Frames::new(2);
        assert!(frames.push(&[0; 12], FrameBytes::whole(b"a"), 0, 84));
        assert!(frames.push(&[0; 12], FrameBytes::whole(b"b"), 0, 84));
        assert!(!frames.push(&[0; 12], FrameBytes::whole(b"c"), 0, 84));
        assert_eq!(frames.len(), 2);
    }

    #[test]
    fn buffers_are_reused_after_pop() {
        let mut frames = Frames::new(2);
        frames.push(&[0; 12], FrameBytes::whole(&[7u8; 1500]), 0, 1524);
        frames.pop();
        assert_eq!(frames.spare.len(), 1);
        frames.push(&[0; 12], FrameBytes::whole(b"x"), 0, 84);
        assert!(frames.spare.is_empty());
        assert_eq!(frames.clear(), 1);
        assert!(frames.is_empty());
    }
}
