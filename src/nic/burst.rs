//! Frames a sender has for one NIC, staged until the end of the sender's batch (or until
//! the burst is full), then delivered queue by queue with one lock acquisition each: what a
//! NIC's DMA engine does with a descriptor burst, and what keeps the per-frame cost of the
//! switching path down to classification and the copy.
//!
//! Staging copies the frame (the sender reuses its buffer), which is cheap for small frames
//! and not for large ones; frames longer than [`STAGE_MAX_LEN`] are delivered at once
//! instead, after whatever was staged for the NIC before them, so order is kept. A frame
//! whose sender keeps it unchanged until its flush (a generator's) is staged by reference,
//! at any length.

use super::{Arrival, FrameBytes};
use std::sync::Arc;

use crate::classify::{Class, Classifier};
use crate::packet::offload::VirtioNetHdrBytes;

/// Frames staged per NIC before the burst is delivered regardless of the batch.
pub const BURST_FRAMES: usize = 64;

/// Longest frame worth staging (a copy of it costs about what the locks it saves do).
pub const STAGE_MAX_LEN: usize = 2048;

/// One staged frame: where it goes and its bytes' place in the burst's buffer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Staged {
    pub queue: usize,
    pub class: Class,
    pub header: VirtioNetHdrBytes,
    /// Where the bytes start: in the burst's buffer, or (`external`) at this address in the
    /// sender's memory.
    pub start: usize,
    pub external: bool,
    pub len: usize,
    pub wire_bytes: u64,
    pub arrival_ns: u64,
}

impl Staged {
    /// The staged frame as it arrived, its bytes being `bytes` (see [`staged_bytes`]).
    pub fn arrival<'b>(&'b self, bytes: &'b [u8]) -> Arrival<'b> {
        Arrival {
            header: &self.header,
            bytes: FrameBytes::whole(bytes),
            wire_bytes: self.wire_bytes,
            arrival_ns: self.arrival_ns,
        }
    }
}

/// A sender's frames for one NIC (reused: no allocation per frame once warm).
#[derive(Debug, Default)]
pub struct Burst {
    pub(super) bytes: Vec<u8>,
    pub(super) frames: Vec<Staged>,
    /// Indices of frames planned for the ring, reused by the delivery.
    pub(super) planned: Vec<usize>,
    /// The sender's reference to the NIC's classifier, with the NIC's classifier generation
    /// it was loaded at (see `Nic::classify_for`).
    pub(super) classifier: Option<(u64, Arc<Classifier>)>,
    /// Queues (below 64) found usable since the burst was last delivered: a frame bound for
    /// one of them is staged without loading the queue's ring again. Loading it (an
    /// arc-swap guard) costs a store and a full fence per frame; whether a guest enables
    /// or disables a queue within one burst makes no difference a guest could tell.
    pub(super) usable: u64,
}

/// The bytes of `frame`, staged in a burst whose buffer is `bytes`.
pub(super) fn staged_bytes<'b>(bytes: &'b [u8], frame: &Staged) -> &'b [u8] {
    if frame.external {
        // SAFETY: the sender staged a reference only to a frame it promised to keep valid
        // and unchanged until its flush (`TxFrame::lasting`); the burst is emptied at every
        // delivery, and the flush delivers it, so no reference outlives the promise.
        unsafe { std::slice::from_raw_parts(frame.start as *const u8, frame.len) }
    } else {
        &bytes[frame.start..frame.start + frame.len]
    }
}

impl Burst {
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether `queue` was found usable since the burst was last delivered.
    pub(super) fn is_usable(&self, queue: usize) -> bool {
        queue < 64 && self.usable & 1 << queue != 0
    }

    /// Notes that `queue` is usable until the burst is delivered.
    pub(super) fn mark_usable(&mut self, queue: usize) {
        if queue < 64 {
            self.usable |= 1 << queue;
        }
    }

    pub(super) fn is_full(&self) -> bool {
        self.frames.len() >= BURST_FRAMES
    }

    pub(super) fn push(&mut self, queue: usize, class: Class, arrival: &Arrival<'_>) {
        let frame = arrival.bytes;
        let (start, external) = match frame.lasting() {
            Some(bytes) => (bytes.as_ptr() as usize, true),
            None => {
                let start = self.bytes.len();
                frame.extend_vec(&mut self.bytes);
                (start, false)
            }
        };
        self.frames.push(Staged {
            queue,
            class,
            header: *arrival.header,
            start,
            external,
            len: frame.len(),
            wire_bytes: arrival.wire_bytes,
            arrival_ns: arrival.arrival_ns,
        });
    }

    pub(super) fn bytes_of(&self, frame: &Staged) -> &[u8] {
        staged_bytes(&self.bytes, frame)
    }

    pub(super) fn clear(&mut self) {
        self.usable = 0;
        self.bytes.clear();
        self.frames.clear();
        self.planned.clear();
    }
}
