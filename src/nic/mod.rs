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
//!
//! [`Nic`]'s methods come in two files: `receive` is the engine a frame goes through (as an
//! [`Arrival`]: admit, stage, write or buffer, drain), `control` what the daemon and the
//! control socket set and read (rules, link, coalescing, captures, rings).

pub mod backlog;
pub mod burst;
pub mod capture;
pub mod clock;
mod control;
pub mod deliver;
pub mod frame;
pub mod link;
pub mod moderation;
pub mod netem;
pub mod queue;
mod receive;
pub mod residence;
pub mod scheduler;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize};

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::classify::{Classifier, ClassifierConfig, ClassifierError, rules::RuleSet};
use crate::packet::offload::VirtioNetHdrBytes;
use crate::stats::{PortCounters, QueueCounters};
pub use burst::Burst;
use capture::Capture;
pub use frame::{FrameBytes, TxFrame};
use link::{Link, LinkSettings};
use moderation::CoalesceSettings;
use queue::RxQueue;
pub use receive::Arrival;
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
pub type BurstFrame<'a> = (&'a VirtioNetHdrBytes, &'a [u8]);

/// Frames handed to [`GuestRxRing::write_burst`] at once: a burst's worth.
const WRITE_CHUNK: usize = burst::BURST_FRAMES;

/// A guest RX ring, as the NIC sees it. Implemented by the vhost-user port's RX vring.
pub trait GuestRxRing: Send + Sync {
    /// Writes the 12-byte virtio-net header (num_buffers filled in by the ring) and the frame.
    fn write(&self, header: &VirtioNetHdrBytes, frame: &[u8]) -> RingWrite;
    /// Writes a frame that may be split, its tail still in the sender's guest memory
    /// (see [`frame`]). A ring that cannot copy from the pieces itself takes the frame
    /// gathered into one buffer (split frames are large and rare outside vhost-user rings).
    fn write_bytes(&self, header: &VirtioNetHdrBytes, frame: FrameBytes<'_>) -> RingWrite {
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
    /// Impairments on the way in (see [`netem`]).
    pub netem: netem::Netem,
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
            netem: netem::Netem::new(config.buffer_bytes),
        })
    }

    /// Nanoseconds on this NIC's clock.
    pub fn now_ns(&self) -> u64 {
        clock::now_ns()
    }
}

#[cfg(test)]
mod tests;
