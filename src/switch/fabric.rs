//! The ports and the switch between them: what a TX worker calls for each frame it reads.

use std::sync::Arc;

use log::debug;

use super::{DecisionCache, Forward, IngressError, MacKey, PortId, Switch};
use crate::nic::{self, Nic, TxFrame};
use crate::packet::offload::Offload;
use crate::stats::{self, QueueCounters};

/// What kind of port sits behind a switch port (for stats and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortKind {
    VhostUser { socket: String },
    Tap { ifname: String },
    Vxlan { vni: u32 },
    Sink,
    Discard,
    Generator,
}

impl PortKind {
    pub fn label(&self) -> &'static str {
        match self {
            PortKind::VhostUser { .. } => "vhost-user",
            PortKind::Tap { .. } => "tap",
            PortKind::Vxlan { .. } => "vxlan",
            PortKind::Sink => "sink",
            PortKind::Discard => "discard",
            PortKind::Generator => "generator",
        }
    }
}

/// One port as the switch sees it: its name and the NIC that receives frames for it.
pub struct FabricPort {
    pub name: String,
    pub kind: PortKind,
    pub nic: Arc<Nic>,
    /// Per-queue counters of the port (TX and RX sides share them, ethtool style).
    pub queue_counters: Vec<Arc<QueueCounters>>,
}

/// A worker's reusable state for forwarding: the segmentation buffer and the RX queues it
/// wrote into since the last flush (each is notified once per batch, not once per frame).
#[derive(Default)]
pub struct ForwardState {
    pub segment: Vec<u8>,
    decisions: DecisionCache,
    touched: Vec<(PortId, usize)>,
    /// Ports whose buffers the last flush drained (reused allocation).
    drained: Vec<PortId>,
    /// Frames staged for each port's NIC (indexed by port), delivered by `flush`.
    bursts: Vec<nic::Burst>,
    arrivals: ArrivalClock,
    /// Frames and bytes dropped at each discarding port (indexed by port) since the last
    /// flush: added to the port's counters once per batch, as the switch's are.
    discarded: Vec<(u64, u64)>,
    /// Whether this sender makes retry promises (`Nic::promise_retry`): only one that calls
    /// `ForwardState::release_promises` before it goes idle may.
    promising: bool,
    /// The promises this sender holds (`Nic::promise_retry`), by port. Released when
    /// dropped, so that a promise cannot outlive its holder however it ends.
    promised: Vec<(PortId, RetryPromise)>,
}

/// A sender's promise to try a NIC's waiting frames again (see [`Nic::promise_retry`]),
/// released when dropped.
struct RetryPromise(Arc<Nic>);

impl RetryPromise {
    fn new(nic: &Arc<Nic>) -> Self {
        nic.promise_retry();
        RetryPromise(nic.clone())
    }
}

impl Drop for RetryPromise {
    fn drop(&mut self) {
        self.0.release_retry();
    }
}

impl ForwardState {
    /// The state of a sender that, before it goes idle, always calls
    /// [`ForwardState::release_promises`]: it may then leave frames waiting for a full ring
    /// without the ring asking its guest for a kick (see `Nic::promise_retry`).
    pub fn promising() -> Self {
        ForwardState {
            promising: true,
            ..ForwardState::default()
        }
    }

    /// Whether every frame staged with this scratch has been delivered (by `Fabric::flush`
    /// or a full burst): no burst refers to a sender's lasting frame any more.
    pub fn is_flushed(&self) -> bool {
        self.bursts.iter().all(nic::Burst::is_empty)
    }

    /// Whether this sender holds retry promises.
    pub fn has_promises(&self) -> bool {
        !self.promised.is_empty()
    }

    /// Ends this sender's retry promises: it is going idle. Each NIC tries its waiting
    /// frames once more and asks its guests for a kick where a ring is still out of room.
    pub fn release_promises(&mut self) {
        self.promised.clear();
    }
}

/// Frames of a batch stamped with one reading of the clock.
const FRAMES_PER_STAMP: u8 = 8;

/// Arrival stamps for a sender's frames: the clock is read for every eighth frame of a batch
/// and at the first of each batch: a TSC read per frame showed in profiles of the generator
/// -> port path at 64 bytes (docs/DATAPATH.md). A stamp is then
/// at most seven frames early (well under a microsecond at the rates where batches are that
/// long), which can only lengthen the residence a frame is recorded with; a lone frame, as
/// in latency tests, is stamped exactly.
#[derive(Default)]
struct ArrivalClock {
    stamp: u64,
    left: u8,
}

impl ArrivalClock {
    fn stamp(&mut self, nic: &Nic) -> u64 {
        if self.left == 0 {
            self.stamp = nic.now_ns();
            self.left = FRAMES_PER_STAMP;
        }
        self.left -= 1;
        self.stamp
    }

    /// The batch ended: the next frame reads the clock.
    fn restart(&mut self) {
        self.left = 0;
    }
}

impl ForwardState {
    fn touch(&mut self, port: PortId, queue: usize) {
        if !self.touched.contains(&(port, queue)) {
            self.touched.push((port, queue));
        }
    }
}

pub struct Fabric {
    pub switch: Switch,
    pub ports: Vec<FabricPort>,
}

/// The destination and source MACs of an Ethernet frame as [`MacKey`]s, if it is that long.
///
/// Read as one 8-byte and one 4-byte load from the frame (which the sender has just gathered
/// with wide stores that forward to them) and kept in registers: as arrays they went through
/// the stack in pieces that the next loads could not be forwarded from (see [`MacKey`]).
#[inline]
fn macs(frame: &[u8]) -> Option<(MacKey, MacKey)> {
    let (low, high) = frame.get(..12)?.split_at(8);
    let low = u64::from_le_bytes(low.try_into().ok()?);
    let high = u32::from_le_bytes(high.try_into().ok()?);
    Some((low & 0xffff_ffff_ffff, low >> 48 | u64::from(high) << 16))
}

impl Fabric {
    pub fn port_id(&self, name: &str) -> Option<PortId> {
        self.ports.iter().position(|port| port.name == name)
    }

    /// Forwards one frame that arrived from `ingress`. `frame`'s head is at least an Ethernet
    /// header long (the caller checked), `offload` was validated against it.
    pub fn forward(
        &self,
        ingress: PortId,
        frame: &mut TxFrame<'_>,
        offload: &mut Offload,
        scratch: &mut ForwardState,
        sender: &QueueCounters,
    ) {
        let Some((dst, src)) = macs(frame.head()) else {
            // Not even an Ethernet header: the caller's check failed us; drop, never panic.
            stats::inc(&sender.tx_errors_frame);
            return;
        };
        let forward = match self
            .switch
            .decide(ingress, src, dst, &mut scratch.decisions)
        {
            Ok(forward) => forward,
            Err(IngressError::MacLimit) => {
                stats::inc(&sender.tx_drops_mac_limit);
                return;
            }
            Err(IngressError::MulticastSource) => {
                stats::inc(&sender.tx_drops_invalid_address);
                return;
            }
            Err(IngressError::MacLocked) => {
                stats::inc(&sender.tx_drops_mac_lock);
                return;
            }
        };
        match forward {
            Forward::Unicast(port) => self.deliver_to(port, frame, offload, scratch, sender),
            Forward::Flood => {
                for port in (0..self.ports.len()).filter(|&port| port != ingress) {
                    self.deliver_to(port, frame, offload, scratch, sender);
                }
            }
            Forward::Filter => {}
        }
    }

    fn deliver_to(
        &self,
        port: PortId,
        frame: &mut TxFrame<'_>,
        offload: &mut Offload,
        scratch: &mut ForwardState,
        sender: &QueueCounters,
    ) {
        let Some(target) = self.ports.get(port) else {
            return;
        };
        // A discard port's frames are dropped here, before its NIC.
        if matches!(target.kind, PortKind::Discard) {
            if scratch.discarded.len() <= port {
                scratch.discarded.resize(port + 1, (0, 0));
            }
            let count = &mut scratch.discarded[port];
            count.0 += 1;
            count.1 += frame.len() as u64;
            return;
        }
        let arrival = scratch.arrivals.stamp(&target.nic);
        if scratch.bursts.len() <= port {
            scratch.bursts.resize_with(port + 1, Default::default);
        }
        match nic::deliver(
            &target.nic,
            frame,
            offload,
            arrival,
            &mut scratch.segment,
            &mut scratch.bursts[port],
            sender,
        ) {
            Ok(Some(queue)) => scratch.touch(port, queue),
            Ok(None) => {}
            Err(error) => {
                // The frame passed validation at ingress, so this is a frame the segmenter
                // cannot cut (e.g. headers longer than the MSS allows): count it as a bad
                // header from the sender.
                stats::inc(&sender.tx_errors_header);
                debug!("frame to {} not delivered: {error}", target.name);
            }
        }
    }

    /// Delivers the frames staged for each NIC (see `Nic::stage`), then notifies every RX
    /// queue written since the last flush (subject to its interrupt moderation; a deferred
    /// notification is left to the port's NIC scheduler).
    ///
    /// A frame that found its ring full waits in the NIC's buffers, and so does every frame
    /// of its class after it. The sender is running anyway, so it first delivers what fits
    /// now: leaving it all to the port's scheduler thread would stall the queue until that
    /// thread gets a CPU, which a busy sender on the same core does not give up.
    pub fn flush(&self, scratch: &mut ForwardState) {
        self.switch.settle(&mut scratch.decisions);
        for (port, (packets, bytes)) in scratch.discarded.iter_mut().enumerate() {
            if *packets > 0
                && let Some(counters) = self.ports.get(port).and_then(|p| p.queue_counters.first())
            {
                stats::add(&counters.rx_packets, std::mem::take(packets));
                stats::add(&counters.rx_bytes, std::mem::take(bytes));
            }
        }
        scratch.arrivals.restart();
        self.deliver_staged(scratch);
        scratch.drained.clear();
        let touched = scratch.touched.iter().map(|&(port, _)| port);
        for port in touched.chain(scratch.promised.iter().map(|&(port, _)| port)) {
            if !scratch.drained.contains(&port) && self.drain_port(port) {
                scratch.drained.push(port);
            }
        }
        if scratch.promising {
            // Every NIC this sender delivers to, while it is busy: a ring that runs out
            // mid-batch and has room again by the flush (the sender drains before each
            // frame it adds) would otherwise ask its guest for a kick every time.
            for &(port, _) in &scratch.touched {
                if !scratch
                    .promised
                    .iter()
                    .any(|&(promised, _)| promised == port)
                {
                    let promise = RetryPromise::new(&self.ports[port].nic);
                    scratch.promised.push((port, promise));
                }
            }
        }
        for (port, queue) in scratch.touched.drain(..) {
            let Some(nic) = self.ports.get(port).map(|p| &p.nic) else {
                continue;
            };
            if scratch.drained.contains(&port) {
                continue;
            }
            if let Some(queue) = nic.queue(queue)
                && queue.flush_notify(nic.now_ns()).is_some()
            {
                nic.wake();
            }
        }
    }

    /// Makes what this sender wrote so far into the rings it delivered to visible to their
    /// guests, mid-batch, without notifying them (the flush decides that). Frames still
    /// staged in a burst are not written yet, and wait for it.
    pub fn publish_touched(&self, scratch: &ForwardState) {
        for &(port, queue) in &scratch.touched {
            if let Some(queue) = self.ports.get(port).and_then(|p| p.nic.queue(queue)) {
                queue.publish_ring();
            }
        }
    }

    /// Delivers the frames staged with `scratch` (see `Nic::stage`), as a full burst is,
    /// without the rest of a flush: for a sender that reuses what its staged frames refer
    /// to before its batch ends.
    pub fn deliver_staged(&self, scratch: &mut ForwardState) {
        for (port, burst) in scratch.bursts.iter_mut().enumerate() {
            if let Some(target) = self.ports.get(port) {
                target.nic.deliver_burst(burst, target.nic.now_ns());
            }
        }
    }

    /// `Nic::drain_waiting` on `port`'s NIC: whether frames waited there.
    fn drain_port(&self, port: PortId) -> bool {
        self.ports
            .get(port)
            .is_some_and(|target| target.nic.drain_waiting())
    }

    /// Makes `scratch`'s retry promises (see `Nic::promise_retry`) to the NIC of every port
    /// but `ingress` at once, rather than to each as its first flush after delivering to it
    /// does: for a promising sender that may run a ring out before its first flush (a
    /// generator's first batch of frames into a ring just set up), and would have it ask
    /// its guest for a kick there.
    pub fn promise_everywhere(&self, ingress: PortId, scratch: &mut ForwardState) {
        if !scratch.promising {
            return;
        }
        for (port, target) in self.ports.iter().enumerate() {
            if port != ingress && !scratch.promised.iter().any(|&(p, _)| p == port) {
                scratch
                    .promised
                    .push((port, RetryPromise::new(&target.nic)));
            }
        }
    }

    /// Tries again the frames waiting in the NICs this sender promised to (see
    /// `Nic::promise_retry`): for a sender that polls for work, between polls.
    pub fn retry_promised(&self, scratch: &ForwardState) {
        for &(port, _) in &scratch.promised {
            self.drain_port(port);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::switch::{pack_mac, unpack_mac};

    #[test]
    fn arrival_stamps_are_shared_by_eight_frames_and_fresh_at_each_batch() {
        let nic = Nic::new(
            &[Arc::default()],
            Arc::default(),
            &nic::NicConfig::default(),
            Default::default(),
        )
        .unwrap();
        let mut clock = ArrivalClock::default();
        let first = clock.stamp(&nic);
        for _ in 1..FRAMES_PER_STAMP {
            assert_eq!(clock.stamp(&nic), first);
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
        let ninth = clock.stamp(&nic);
        assert!(ninth > first, "the ninth frame reads the clock again");
        clock.restart();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(clock.stamp(&nic) > ninth, "a new batch reads the clock");
    }

    #[test]
    fn macs_are_the_first_twelve_bytes() {
        let frame: Vec<u8> = (1..=14).collect();
        let (dst, src) = macs(&frame).unwrap();
        assert_eq!(unpack_mac(dst), [1, 2, 3, 4, 5, 6]);
        assert_eq!(unpack_mac(src), [7, 8, 9, 10, 11, 12]);
        assert_eq!(pack_mac([1, 2, 3, 4, 5, 6]), dst);
        assert_eq!(macs(&frame[..11]), None);
    }
}
