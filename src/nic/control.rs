//! The NIC's control surface: what the daemon and the control socket set and read while
//! frames flow (rules, link, coalescing, class delays, captures, the guest's rings and
//! offloads). A setting takes effect for the next frame; one that changes when waiting
//! frames may go (link, delays, coalescing, rings) also wakes the scheduler, so they are
//! judged again.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::capture::Capture;
use super::link::LinkSettings;
use super::moderation::CoalesceSettings;
use super::queue::RxQueue;
use super::{GuestOffloads, GuestRxRing, Nic};
use crate::classify::{Class, Classifier, ClassifierError, rules::RuleSet};

impl Nic {
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

    /// Starts (or with `None` stops) capturing delivered frames. A capture replaced or
    /// stopped writes what it holds before this returns (unless its file takes no writes).
    pub fn set_capture(&self, capture: Option<Capture>) {
        self.capturing.store(capture.is_some(), Ordering::Relaxed);
        if let Some(previous) = self.capture.swap(capture.map(Arc::new)) {
            previous.stop();
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
