//! The receive side of the emulated NIC: which RX queue a frame goes to, a bounded buffer per
//! queue between the wire and the guest's RX ring, and delivery into that ring.
//!
//! A frame from the switch is written straight into the guest's RX ring when the queue's buffer
//! is empty and the ring has room (the common case costs one copy). Otherwise it waits in the
//! queue's buffer, bounded in frames, until the guest posts buffers (RX kick), the ring is
//! enabled again, or the port's worker is woken; when the buffer is full the frame is dropped
//! and counted. A stalled guest therefore costs its own queue's buffer, never a sender's time.
//!
//! The ring itself is behind [`GuestRxRing`], implemented by the vhost-user port, so this module
//! does not depend on `port`.

pub mod backlog;
pub mod deliver;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use arc_swap::ArcSwapOption;

use crate::stats::{self, PortCounters, QueueCounters};
use backlog::Backlog;

pub use deliver::{deliver, flow_hash};

/// The offloads a receiver accepts, as its guest negotiated them.
pub use crate::packet::offload::GuestOffloads as RxOffloads;

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

/// A guest RX ring, as the NIC sees it. Implemented by the vhost-user port's RX vring.
pub trait GuestRxRing: Send + Sync {
    /// Writes the 12-byte virtio-net header (num_buffers filled in by the ring) and the frame.
    fn write(&self, header: &[u8; 12], frame: &[u8]) -> RingWrite;
    /// Signals the guest if the ring published entries it has not been told about.
    fn notify(&self);
    /// Whether the ring is set up and enabled by the guest.
    fn is_enabled(&self) -> bool;
    /// What the guest accepts on receive.
    fn offloads(&self) -> RxOffloads;
}

/// One RX queue of the NIC: the ring it delivers into (if connected), its buffer and counters.
pub struct RxQueue {
    pub index: usize,
    ring: ArcSwapOption<Box<dyn GuestRxRing>>,
    backlog: Backlog,
    pub counters: Arc<QueueCounters>,
    /// Set when frames were written and the guest has not been notified yet.
    needs_notify: AtomicBool,
}

impl RxQueue {
    fn new(index: usize, counters: Arc<QueueCounters>, buffer_frames: usize) -> Self {
        RxQueue {
            index,
            ring: ArcSwapOption::empty(),
            backlog: Backlog::new(buffer_frames),
            counters,
            needs_notify: AtomicBool::new(false),
        }
    }

    fn ring(&self) -> Option<Arc<Box<dyn GuestRxRing>>> {
        self.ring.load_full()
    }

    pub fn is_enabled(&self) -> bool {
        self.ring
            .load()
            .as_ref()
            .is_some_and(|ring| ring.is_enabled())
    }

    /// Delivers a frame: straight into the ring when nothing is waiting, else into the buffer.
    fn deliver(&self, header: &[u8; 12], frame: &[u8]) {
        let Some(ring) = self.ring() else {
            stats::inc(&self.counters.rx_drops_no_buffer);
            return;
        };
        let mut waiting = self.backlog.lock();
        if waiting.is_empty() {
            match ring.write(header, frame) {
                RingWrite::Written => {
                    self.count_delivered(frame.len());
                    self.needs_notify.store(true, Ordering::Relaxed);
                    return;
                }
                RingWrite::TooBig => {
                    stats::inc(&self.counters.rx_drops_too_big);
                    return;
                }
                RingWrite::NotReady => {
                    stats::inc(&self.counters.rx_drops_no_buffer);
                    return;
                }
                RingWrite::Full => {}
            }
        }
        if waiting.push(header, frame) {
            stats::inc(&self.counters.rx_buffered);
        } else {
            stats::inc(&self.counters.rx_drops_no_buffer);
        }
    }

    fn count_delivered(&self, len: usize) {
        stats::inc(&self.counters.rx_packets);
        stats::add(&self.counters.rx_bytes, len as u64);
    }

    /// Moves buffered frames into the ring while it has room, then notifies the guest.
    /// Called by the port's worker when the guest posts RX buffers or enables the ring.
    pub fn drain(&self) {
        let Some(ring) = self.ring() else { return };
        {
            let mut waiting = self.backlog.lock();
            while let Some((header, frame)) = waiting.front() {
                match ring.write(header, frame) {
                    RingWrite::Written => {
                        let len = frame.len();
                        waiting.pop();
                        self.count_delivered(len);
                        self.needs_notify.store(true, Ordering::Relaxed);
                    }
                    RingWrite::TooBig => {
                        waiting.pop();
                        stats::inc(&self.counters.rx_drops_too_big);
                    }
                    RingWrite::Full | RingWrite::NotReady => break,
                }
            }
        }
        self.flush_notify();
    }

    /// Notifies the guest once for everything written since the last notification.
    pub fn flush_notify(&self) {
        if self.needs_notify.swap(false, Ordering::Relaxed)
            && let Some(ring) = self.ring()
        {
            ring.notify();
        }
    }

    /// Frames waiting in the buffer (for tests and stats).
    pub fn buffered(&self) -> usize {
        self.backlog.lock().len()
    }
}

/// The NIC of one port: its RX queues and the port-level counters.
pub struct Nic {
    queues: Vec<RxQueue>,
    /// Queue pairs the guest currently uses (bounded by `queues.len()`).
    active_hint: AtomicUsize,
    pub port_counters: Arc<PortCounters>,
}

impl Nic {
    pub fn new(
        queue_counters: &[Arc<QueueCounters>],
        port_counters: Arc<PortCounters>,
        buffer_frames: usize,
    ) -> Self {
        Nic {
            queues: queue_counters
                .iter()
                .enumerate()
                .map(|(index, counters)| RxQueue::new(index, counters.clone(), buffer_frames))
                .collect(),
            active_hint: AtomicUsize::new(queue_counters.len()),
            port_counters,
        }
    }

    pub fn queue(&self, index: usize) -> Option<&RxQueue> {
        self.queues.get(index)
    }

    pub fn queues(&self) -> &[RxQueue] {
        &self.queues
    }

    /// Connects (or, with `None`, disconnects) the guest ring behind RX queue `index`.
    /// Disconnecting drops whatever waits in the buffer: it belonged to the old guest.
    pub fn attach_ring(&self, index: usize, ring: Option<Box<dyn GuestRxRing>>) {
        if let Some(queue) = self.queues.get(index) {
            queue.ring.store(ring.map(Arc::new));
            if queue.ring.load().is_none() {
                queue.backlog.lock().clear();
            }
        }
    }

    /// Whether any ring is attached (a frontend is connected, or the port is a tap or sink).
    pub fn is_connected(&self) -> bool {
        self.queues.iter().any(|queue| queue.ring.load().is_some())
    }

    /// The receive offloads of the guest behind this NIC (from any connected ring), or none.
    pub fn offloads(&self) -> RxOffloads {
        self.queues
            .iter()
            .find_map(|queue| queue.ring.load().as_ref().map(|ring| ring.offloads()))
            .unwrap_or_default()
    }

    /// Picks the RX queue for a flow among the enabled ones, so a flow stays on one queue as
    /// long as the set of enabled queues does not change (like RSS over an indirection table).
    pub fn select_queue(&self, flow_hash: u32) -> Option<&RxQueue> {
        let count = self.queues.len();
        let hint = self
            .active_hint
            .load(Ordering::Relaxed)
            .clamp(1, count.max(1));
        let first = self.queues.get(flow_hash as usize % hint)?;
        if first.is_enabled() {
            return Some(first);
        }
        // The guest changed its queue count (ethtool -L): recompute the number of enabled
        // queues, which are always a prefix in Linux's virtio_net.
        let enabled = self
            .queues
            .iter()
            .filter(|queue| queue.is_enabled())
            .count();
        self.active_hint.store(enabled.max(1), Ordering::Relaxed);
        let enabled_queues: usize = enabled;
        if enabled_queues == 0 {
            return None;
        }
        self.queues
            .iter()
            .filter(|queue| queue.is_enabled())
            .nth(flow_hash as usize % enabled_queues)
    }

    /// Receives one frame from the wire with its offload state already adapted to this guest.
    pub fn receive(&self, flow_hash: u32, header: &[u8; 12], frame: &[u8]) -> Option<&RxQueue> {
        match self.select_queue(flow_hash) {
            Some(queue) => {
                queue.deliver(header, frame);
                Some(queue)
            }
            None => {
                stats::inc(&self.port_counters.rx_drops_not_ready);
                None
            }
        }
    }

    /// Re-counts the enabled queues (after SET_VRING_ENABLE).
    pub fn refresh_active(&self) {
        let enabled = self
            .queues
            .iter()
            .filter(|queue| queue.is_enabled())
            .count();
        self.active_hint.store(enabled.max(1), Ordering::Relaxed);
    }
}
