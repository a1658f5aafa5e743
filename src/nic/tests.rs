//! The NIC model against a fake guest ring whose room the test controls, on a clock the test
//! drives (arrival and drain times are passed in), so nothing here depends on real time.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::burst::STAGE_MAX_LEN;
use super::link::{LinkSettings, wire_bytes};
use super::moderation::CoalesceSettings;
use super::*;
use crate::classify::rules::{Rule, RuleSet};
use crate::classify::{ClassifierConfig, Trust};
use crate::stats::{PortCounters, QueueCounters};

#[derive(Default)]
pub(super) struct FakeRing {
    pub(super) frames: Mutex<Vec<Vec<u8>>>,
    pub(super) room: AtomicUsize,
    /// Calls of `write_burst`.
    bursts: AtomicUsize,
    /// Frames longer than this are refused as too big (0: none is).
    max_len: AtomicUsize,
    notified: AtomicUsize,
    disabled: AtomicBool,
}

impl GuestRxRing for Arc<FakeRing> {
    fn write(&self, _header: &VirtioNetHdrBytes, frame: &[u8]) -> RingWrite {
        if self.disabled.load(Ordering::Relaxed) {
            return RingWrite::NotReady;
        }
        let max_len = self.max_len.load(Ordering::Relaxed);
        if max_len > 0 && frame.len() > max_len {
            return RingWrite::TooBig;
        }
        if self.room.load(Ordering::Relaxed) == 0 {
            return RingWrite::Full;
        }
        self.room.fetch_sub(1, Ordering::Relaxed);
        self.frames.lock().unwrap().push(frame.to_vec());
        RingWrite::Written
    }

    fn write_burst(&self, frames: &[BurstFrame<'_>]) -> (usize, Option<RingWrite>) {
        self.bursts.fetch_add(1, Ordering::Relaxed);
        for (index, &(header, bytes)) in frames.iter().enumerate() {
            let outcome = self.write(header, bytes);
            if outcome != RingWrite::Written {
                return (index, Some(outcome));
            }
        }
        (frames.len(), None)
    }

    fn notify(&self) {
        self.notified.fetch_add(1, Ordering::Relaxed);
    }

    fn is_enabled(&self) -> bool {
        !self.disabled.load(Ordering::Relaxed)
    }

    fn offloads(&self) -> GuestOffloads {
        GuestOffloads::default()
    }
}

impl FakeRing {
    pub(super) fn tags(&self) -> Vec<u8> {
        self.frames.lock().unwrap().iter().map(|f| f[TAG]).collect()
    }
}

/// Byte of the UDP payload that tells test frames apart.
pub(super) const TAG: usize = 14 + 20 + 8;

/// An Ethernet/IPv4/UDP frame with DSCP `dscp` and a tag byte.
pub(super) fn frame(dscp: u8, tag: u8) -> Vec<u8> {
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .udp(4000, 5000)
        .write(&mut out, &[tag; 18])
        .unwrap();
    out[15] = dscp << 2;
    out
}

pub(super) const EF: u8 = 46;

/// A frame arriving with a plain header.
fn arrival(bytes: FrameBytes<'_>, wire_bytes: u64, arrival_ns: u64) -> Arrival<'_> {
    Arrival {
        header: &[0; 12],
        bytes,
        wire_bytes,
        arrival_ns,
    }
}

pub(super) struct Rig {
    pub(super) nic: Nic,
    pub(super) rings: Vec<Arc<FakeRing>>,
}

impl Rig {
    pub(super) fn new(queues: usize, config: NicConfig, rules: RuleSet) -> Self {
        let counters: Vec<Arc<QueueCounters>> = (0..queues).map(|_| Arc::default()).collect();
        let nic = Nic::new(&counters, Arc::new(PortCounters::default()), &config, rules).unwrap();
        let rings: Vec<Arc<FakeRing>> =
            (0..queues).map(|_| Arc::new(FakeRing::default())).collect();
        for (index, ring) in rings.iter().enumerate() {
            ring.room.store(usize::MAX, Ordering::Relaxed);
            nic.attach_ring(index, Some(Box::new(ring.clone())));
        }
        Rig { nic, rings }
    }

    pub(super) fn send(&self, frame: &[u8], at_ns: u64) -> Option<usize> {
        let decision = self.nic.classify(frame);
        let wire = wire_bytes(frame.len(), 1, 0);
        self.nic
            .receive(&decision, arrival(FrameBytes::whole(frame), wire, at_ns))
    }

    fn counter(
        &self,
        queue: usize,
        pick: impl Fn(&QueueCounters) -> &std::sync::atomic::AtomicU64,
    ) -> u64 {
        pick(&self.nic.queue(queue).unwrap().counters).load(Ordering::Relaxed)
    }
}

pub(super) fn config() -> NicConfig {
    NicConfig {
        buffer_frames: 4,
        link: LinkSettings {
            rate_bps: 0,
            latency_ns: 0,
        },
        ..NicConfig::default()
    }
}

#[test]
fn dscp_ef_goes_to_the_priority_queue_and_bulk_elsewhere() {
    let rig = Rig::new(4, config(), RuleSet::default());
    assert_eq!(rig.send(&frame(EF, 1), 0), Some(0));
    let bulk = rig.send(&frame(0, 2), 0).unwrap();
    assert_ne!(bulk, 0, "normal traffic stays off the high-priority queue");
    assert_eq!(rig.counter(0, |c| &c.rx_high_packets), 1);
}

#[test]
fn strict_priority_delivers_high_frames_first_when_the_guest_catches_up() {
    // One queue: both classes share it, so the order in the ring shows the scheduling.
    let rig = Rig::new(1, config(), RuleSet::default());
    rig.rings[0].room.store(0, Ordering::Relaxed);
    for tag in 1..=3 {
        rig.send(&frame(0, tag), 10);
    }
    for tag in 11..=12 {
        rig.send(&frame(EF, tag), 20);
    }
    assert_eq!(rig.nic.buffered(), 5);
    rig.rings[0].room.store(usize::MAX, Ordering::Relaxed);
    rig.nic.drain(30);
    assert_eq!(rig.rings[0].tags(), vec![11, 12, 1, 2, 3]);
    assert_eq!(rig.nic.buffered(), 0);
}

#[test]
fn weighted_priority_lets_normal_frames_through() {
    let mut config = config();
    config.priority_weight = 2;
    let rig = Rig::new(1, config, RuleSet::default());
    rig.rings[0].room.store(0, Ordering::Relaxed);
    for tag in 1..=2 {
        rig.send(&frame(0, tag), 0);
    }
    for tag in 11..=14 {
        rig.send(&frame(EF, tag), 0);
    }
    rig.rings[0].room.store(usize::MAX, Ordering::Relaxed);
    rig.nic.drain(1);
    assert_eq!(rig.rings[0].tags(), vec![11, 12, 1, 13, 14, 2]);
}

#[test]
fn full_buffers_tail_drop_and_count_by_class() {
    let rig = Rig::new(1, config(), RuleSet::default());
    rig.rings[0].room.store(0, Ordering::Relaxed);
    for tag in 0..6 {
        rig.send(&frame(0, tag), 0);
        rig.send(&frame(EF, 100 + tag), 0);
    }
    // Four frames per class fit; two of each were dropped.
    assert_eq!(rig.nic.buffered(), 8);
    assert_eq!(rig.counter(0, |c| &c.rx_drops_no_buffer), 4);
    assert_eq!(rig.counter(0, |c| &c.rx_high_drops_no_buffer), 2);
    rig.rings[0].room.store(usize::MAX, Ordering::Relaxed);
    rig.nic.drain(0);
    // The oldest frames survived (tail drop).
    assert_eq!(rig.rings[0].tags(), vec![100, 101, 102, 103, 0, 1, 2, 3]);
}

#[test]
fn waiting_frames_go_back_to_the_ring_a_chunk_at_a_time() {
    let rig = Rig::new(1, config(), RuleSet::default());
    rig.rings[0].room.store(0, Ordering::Relaxed);
    for tag in 0..4 {
        rig.send(&frame(0, tag), 0);
    }
    assert_eq!(rig.nic.buffered(), 4);
    let bursts = || rig.rings[0].bursts.load(Ordering::Relaxed);
    let before = bursts();
    // Room for three: one write of the four, three go in, the fourth keeps waiting.
    rig.rings[0].room.store(3, Ordering::Relaxed);
    rig.nic.drain(0);
    assert_eq!(rig.rings[0].tags(), vec![0, 1, 2]);
    assert_eq!(bursts() - before, 1);
    assert_eq!(rig.nic.buffered(), 1);
    assert_eq!(rig.counter(0, |c| &c.rx_packets), 3);
    rig.rings[0].room.store(usize::MAX, Ordering::Relaxed);
    rig.nic.drain(0);
    assert_eq!(rig.rings[0].tags(), vec![0, 1, 2, 3]);
    assert_eq!(rig.nic.buffered(), 0);
    assert_eq!(rig.counter(0, |c| &c.rx_drops_no_buffer), 0);
}

#[test]
fn a_waiting_frame_the_ring_refuses_is_counted_and_the_next_ones_go_in() {
    let rig = Rig::new(1, config(), RuleSet::default());
    rig.rings[0].room.store(0, Ordering::Relaxed);
    let small = frame(0, 0);
    let mut large = frame(0, 1);
    large.resize(small.len() + 100, 0);
    for bytes in [&small, &large, &frame(0, 2), &frame(0, 3)] {
        rig.send(bytes, 0);
    }
    assert_eq!(rig.nic.buffered(), 4);
    rig.rings[0].max_len.store(small.len(), Ordering::Relaxed);
    rig.rings[0].room.store(usize::MAX, Ordering::Relaxed);
    rig.nic.drain(0);
    assert_eq!(rig.rings[0].tags(), vec![0, 2, 3]);
    assert_eq!(rig.nic.buffered(), 0);
    assert_eq!(rig.counter(0, |c| &c.rx_drops_too_big), 1);
    assert_eq!(rig.counter(0, |c| &c.rx_packets), 3);
}

#[test]
fn a_stalled_queue_does_not_hold_up_another() {
    let rig = Rig::new(4, config(), RuleSet::default());
    rig.rings[0].room.store(0, Ordering::Relaxed);
    rig.send(&frame(EF, 1), 0);
    assert!(rig.send(&frame(0, 2), 0).is_some());
    rig.nic.drain(0);
    let delivered: usize = rig.rings[1..].iter().map(|r| r.tags().len()).sum();
    assert_eq!(
        delivered, 1,
        "bulk went through while the priority ring was full"
    );
    assert_eq!(rig.nic.queue(0).unwrap().buffered(), 1);
}

#[test]
fn latency_holds_frames_until_due() {
    let mut config = config();
    config.link = LinkSettings {
        rate_bps: 0,
        latency_ns: 50_000,
    };
    let rig = Rig::new(1, config, RuleSet::default());
    rig.send(&frame(0, 1), 1_000);
    assert!(rig.rings[0].tags().is_empty());
    assert_eq!(rig.nic.drain(40_000), Some(51_000));
    assert!(rig.rings[0].tags().is_empty());
    rig.nic.drain(51_000);
    assert_eq!(rig.rings[0].tags(), vec![1]);
    let residence = rig.nic.queue(0).unwrap().residence()[1];
    assert!(residence.p50_ns >= 49_000, "{residence:?}");
}

#[test]
fn paced_link_holds_back_to_back_frames() {
    let mut config = config();
    config.buffer_frames = 100;
    // 1 Gbit/s: a 60-byte frame (84 bytes on the wire) takes 672 ns.
    config.link = LinkSettings {
        rate_bps: 1_000_000_000,
        latency_ns: 0,
    };
    let rig = Rig::new(1, config, RuleSet::default());
    for tag in 0..100 {
        rig.send(&frame(0, tag), 0);
    }
    // The slack lets about 20 us worth through at once, then the link is busy.
    let early = rig.rings[0].tags().len();
    assert!((20..40).contains(&early), "{early} frames at t=0");
    let mut now = 0;
    while let Some(next) = rig.nic.drain(now) {
        now = next;
    }
    assert_eq!(rig.rings[0].tags().len(), 100);
    // 100 frames at 672 ns each (67.2 us), the last ones sent up to the slack early.
    assert!((45_000..=67_200).contains(&now), "finished at {now} ns");
}

#[test]
fn moderation_by_frame_count_notifies_every_n_frames() {
    let mut config = config();
    config.coalesce_high = CoalesceSettings {
        rx_usecs: 0,
        rx_frames: 3,
    };
    let rig = Rig::new(1, config, RuleSet::default());
    let queue = rig.nic.queue(0).unwrap();
    for tag in 0..2 {
        rig.send(&frame(0, tag), 0);
        queue.flush_notify(0);
    }
    assert_eq!(rig.rings[0].notified.load(Ordering::Relaxed), 0);
    rig.send(&frame(0, 2), 0);
    assert_eq!(queue.flush_notify(0), None);
    assert_eq!(rig.rings[0].notified.load(Ordering::Relaxed), 1);
}

#[test]
fn a_rule_overrides_trust_and_steers_to_its_queue() {
    let rule: Rule = "loc 1 proto udp dst-port 5000 action queue 2 class high"
        .parse()
        .unwrap();
    let rig = Rig::new(4, config(), RuleSet::new(vec![rule]).unwrap());
    assert_eq!(rig.send(&frame(0, 1), 0), Some(2));
    assert_eq!(rig.counter(2, |c| &c.rx_high_packets), 1);
    let drop: Rule = "loc 0 proto udp action drop".parse().unwrap();
    rig.nic
        .set_rules(RuleSet::new(vec![drop, rule]).unwrap())
        .unwrap();
    assert_eq!(rig.send(&frame(0, 2), 0), None);
    let drops: u64 = (0..4).map(|q| rig.counter(q, |c| &c.rx_drops_rule)).sum();
    assert_eq!(drops, 1);
}

#[test]
fn a_sender_with_its_own_classifier_reference_sees_new_rules_on_the_next_frame() {
    let rig = Rig::new(4, config(), RuleSet::default());
    let mut burst = Burst::default();
    let udp = frame(0, 1);
    let before = rig.nic.classify_for(&mut burst, &udp);
    assert_eq!(before, rig.nic.classify(&udp));
    assert_eq!(before.rule, None);
    let rule: Rule = "loc 7 proto udp action queue 3".parse().unwrap();
    rig.nic
        .set_rules(RuleSet::new(vec![rule]).unwrap())
        .unwrap();
    let after = rig.nic.classify_for(&mut burst, &udp);
    assert_eq!(after.rule, Some(7));
    assert_eq!(after.queue.queue(), 3);
    rig.nic.set_rules(RuleSet::default()).unwrap();
    assert_eq!(rig.nic.classify_for(&mut burst, &udp).rule, None);
}

#[test]
fn frames_for_a_disabled_queue_fold_onto_enabled_ones() {
    let rig = Rig::new(4, config(), RuleSet::default());
    for ring in &rig.rings[2..] {
        ring.disabled.store(true, Ordering::Relaxed);
    }
    for port in 0..32u16 {
        let mut f = frame(0, 1);
        f[34..36].copy_from_slice(&(1000 + port).to_be_bytes());
        let queue = rig.send(&f, 0).unwrap();
        assert!(queue < 2, "frame went to disabled queue {queue}");
    }
}

#[test]
fn pcp_trust_reads_the_vlan_priority() {
    let mut config = config();
    config.classifier = ClassifierConfig {
        trust: Trust::default_pcp(),
        ..ClassifierConfig::default()
    };
    let rig = Rig::new(2, config, RuleSet::default());
    let mut tagged = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .single_vlan(etherparse::VlanId::try_new(10).unwrap())
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .udp(1, 2)
        .write(&mut tagged, &[0; 18])
        .unwrap();
    tagged[14] |= 6 << 5;
    assert_eq!(rig.send(&tagged, 0), Some(0));
    assert_eq!(
        rig.send(&frame(EF, 1), 0),
        Some(1),
        "DSCP is not trusted in PCP mode"
    );
}

impl Rig {
    /// Stages `frames` (frame, arrival) in one burst and delivers it, as a sender's flush does.
    fn send_burst(&self, frames: &[(Vec<u8>, u64)]) -> Vec<Option<usize>> {
        // Delivered when the last frame was staged, as a sender's flush does.
        let delivered_at = frames.iter().map(|(_, at)| *at).max().unwrap_or(0);
        self.send_burst_at(frames, delivered_at)
    }

    /// [`Rig::send_burst`], the burst delivered at `delivered_at`.
    fn send_burst_at(&self, frames: &[(Vec<u8>, u64)], delivered_at: u64) -> Vec<Option<usize>> {
        let mut burst = Burst::default();
        let queues = frames
            .iter()
            .map(|(frame, at)| {
                let decision = self.nic.classify(frame);
                let wire = wire_bytes(frame.len(), 1, 0);
                self.nic.stage(
                    &mut burst,
                    &decision,
                    arrival(FrameBytes::whole(frame), wire, *at),
                )
            })
            .collect();
        assert_eq!(
            burst.len(),
            frames.len(),
            "small frames are staged, not sent"
        );
        self.nic.deliver_burst(&mut burst, delivered_at);
        assert!(burst.is_empty());
        queues
    }
}

#[test]
fn a_queue_disabled_between_bursts_is_not_staged_for_again() {
    let rig = Rig::new(2, config(), RuleSet::default());
    // One flow: every frame of it hashes to queue 1, the only normal queue.
    let udp = frame(0, 1);
    let decision = rig.nic.classify(&udp);
    // One sender's burst, delivered twice, as across two batches.
    let mut burst = Burst::default();
    let stage = |burst: &mut Burst| {
        rig.nic
            .stage(burst, &decision, arrival(FrameBytes::whole(&udp), 84, 10))
    };
    assert_eq!(stage(&mut burst), Some(1));
    assert_eq!(stage(&mut burst), Some(1));
    rig.nic.deliver_burst(&mut burst, 10);
    // The guest turns the queue off (ethtool -L): the next burst folds onto queue 0.
    rig.rings[1].disabled.store(true, Ordering::Relaxed);
    assert_eq!(stage(&mut burst), Some(0));
    rig.nic.deliver_burst(&mut burst, 10);
    assert_eq!(rig.rings[1].tags(), vec![1, 1]);
    assert_eq!(rig.rings[0].tags(), vec![1]);
    assert_eq!(rig.counter(1, |c| &c.rx_drops_no_buffer), 0);
}

#[test]
fn parse_errors_count_once_per_frame_staged_or_sent_at_once() {
    let rig = Rig::new(1, config(), RuleSet::default());
    // IPv4 ethertype with a version-5 header: the parser stops (malformed).
    let malformed = |len: usize| {
        let mut bytes = frame(0, 1);
        bytes[14] = 0x55;
        bytes.resize(len, 0);
        bytes
    };
    let mut burst = Burst::default();
    for len in [64, STAGE_MAX_LEN + 100] {
        let bytes = malformed(len);
        let decision = rig.nic.classify(&bytes);
        assert!(decision.parse_error.is_some());
        let wire = wire_bytes(len, 1, 0);
        let queue = rig.nic.stage(
            &mut burst,
            &decision,
            arrival(FrameBytes::whole(&bytes), wire, 10),
        );
        assert_eq!(queue, Some(0));
    }
    rig.nic.deliver_burst(&mut burst, 10);
    assert_eq!(rig.counter(0, |c| &c.rx_parse_errors), 2);
    assert_eq!(rig.counter(0, |c| &c.rx_packets), 2);
}

#[test]
fn a_burst_of_both_classes_counts_each_frame_in_its_class() {
    let rig = Rig::new(1, config(), RuleSet::default());
    let frames: Vec<_> = [EF, 0, EF, 0, 0]
        .into_iter()
        .zip(1..)
        .map(|(dscp, tag)| (frame(dscp, tag), 10))
        .collect();
    assert_eq!(rig.send_burst(&frames), vec![Some(0); 5]);
    let len = frames[0].0.len() as u64;
    assert_eq!(rig.counter(0, |c| &c.rx_packets), 5);
    assert_eq!(rig.counter(0, |c| &c.rx_bytes), 5 * len);
    assert_eq!(rig.counter(0, |c| &c.rx_high_packets), 2);
    assert_eq!(rig.counter(0, |c| &c.rx_high_bytes), 2 * len);
    let [high, normal] = rig.nic.queue(0).unwrap().residence();
    assert_eq!((high.count, normal.count), (2, 3));
}

#[test]
fn a_burst_with_room_reaches_the_ring_in_order() {
    let rig = Rig::new(1, config(), RuleSet::default());
    let frames: Vec<_> = (1..=5).map(|tag| (frame(0, tag), 10)).collect();
    assert_eq!(rig.send_burst(&frames), vec![Some(0); 5]);
    assert_eq!(rig.rings[0].tags(), vec![1, 2, 3, 4, 5]);
    assert_eq!(rig.counter(0, |c| &c.rx_packets), 5);
    assert_eq!(rig.nic.buffered(), 0);
}

#[test]
fn a_burst_that_fills_the_ring_waits_and_keeps_strict_priority() {
    let rig = Rig::new(1, config(), RuleSet::default());
    rig.rings[0].room.store(2, Ordering::Relaxed);
    // Normal 1..=4 then high 11: two normal fit, two wait, and the high frame waits only
    // because the ring is full (not behind the normal ones).
    let mut frames: Vec<_> = (1..=4).map(|tag| (frame(0, tag), 10)).collect();
    frames.push((frame(EF, 11), 20));
    rig.send_burst(&frames);
    assert_eq!(rig.rings[0].tags(), vec![1, 2]);
    assert_eq!(rig.nic.buffered(), 3);
    rig.rings[0].room.store(usize::MAX, Ordering::Relaxed);
    rig.nic.drain(30);
    assert_eq!(rig.rings[0].tags(), vec![1, 2, 11, 3, 4]);
}

#[test]
fn a_burst_behind_waiting_frames_never_overtakes_them() {
    let rig = Rig::new(1, config(), RuleSet::default());
    rig.rings[0].room.store(0, Ordering::Relaxed);
    rig.send(&frame(0, 1), 0);
    // Still no room: the burst queues up behind frame 1.
    rig.send_burst(&[(frame(0, 2), 5), (frame(0, 3), 5)]);
    assert_eq!(rig.rings[0].tags(), Vec::<u8>::new());
    assert_eq!(rig.nic.buffered(), 3);
    // Room now: the next burst first delivers what waits (not only at the sender's flush),
    // then goes itself, in arrival order.
    rig.rings[0].room.store(usize::MAX, Ordering::Relaxed);
    rig.send_burst(&[(frame(0, 4), 10)]);
    assert_eq!(rig.rings[0].tags(), vec![1, 2, 3, 4]);
    assert_eq!(rig.nic.buffered(), 0);
    // The same for a frame too large to stage, delivered on its own.
    rig.rings[0].room.store(0, Ordering::Relaxed);
    rig.send(&frame(0, 5), 20);
    rig.rings[0].room.store(usize::MAX, Ordering::Relaxed);
    let mut large = frame(0, 6);
    large.resize(burst::STAGE_MAX_LEN + 100, 0);
    rig.send(&large, 30);
    assert_eq!(rig.rings[0].tags(), vec![1, 2, 3, 4, 5, 6]);
}

#[test]
fn a_burst_on_a_paced_link_sends_what_the_wire_takes_and_holds_the_rest() {
    let mut config = config();
    // 100 Mbit/s: a 60-byte frame is 84 wire bytes, 6.72 us; the 20 us slack takes a few.
    config.link.rate_bps = 100_000_000;
    config.buffer_frames = 16;
    let rig = Rig::new(1, config, RuleSet::default());
    let frames: Vec<_> = (1..=10).map(|tag| (frame(0, tag), 0)).collect();
    rig.send_burst(&frames);
    let sent = rig.rings[0].tags().len();
    assert!((1..10).contains(&sent), "{sent} of 10 frames went at once");
    assert_eq!(rig.nic.buffered(), 10 - sent);
    // As time passes the rest go, in order.
    let mut now = 0;
    while let Some(next) = rig.nic.drain(now) {
        now = next;
    }
    assert_eq!(rig.rings[0].tags(), (1..=10).collect::<Vec<u8>>());
}

#[test]
fn a_large_frame_goes_at_once_after_what_was_staged() {
    let rig = Rig::new(1, config(), RuleSet::default());
    let mut burst = Burst::default();
    let small = frame(0, 1);
    let decision = rig.nic.classify(&small);
    rig.nic.stage(
        &mut burst,
        &decision,
        arrival(FrameBytes::whole(&small), 84, 0),
    );
    let mut large = frame(0, 2);
    large.resize(burst::STAGE_MAX_LEN + 100, 0);
    rig.nic.stage(
        &mut burst,
        &decision,
        arrival(FrameBytes::whole(&large), 84, 0),
    );
    assert!(burst.is_empty(), "the staged frame went first");
    assert_eq!(rig.rings[0].tags(), vec![1, 2]);
}

#[test]
fn lasting_frames_are_staged_by_reference_whatever_their_length() {
    let rig = Rig::new(1, config(), RuleSet::default());
    let mut jumbo = frame(0, 8);
    jumbo.resize(9000, 0xab);
    let mut frames = vec![frame(0, 7), jumbo, frame(0, 9)];
    let copies = frames.clone();
    let mut burst = Burst::default();
    for (index, bytes) in frames.iter_mut().enumerate() {
        // SAFETY: the frames outlive the burst's delivery below and are not written.
        let frame = unsafe { TxFrame::lasting(bytes) };
        let decision = rig.nic.classify(frame.head());
        let wire = wire_bytes(frame.len(), 1, 0);
        let queue = rig
            .nic
            .stage(&mut burst, &decision, arrival(frame.bytes(), wire, 10));
        assert_eq!(queue, Some(0), "frame {index}");
    }
    assert_eq!(burst.len(), 3, "the jumbo frame is staged too");
    assert!(burst.bytes.is_empty(), "nothing was copied into the burst");
    rig.nic.deliver_burst(&mut burst, 10);
    assert_eq!(*rig.rings[0].frames.lock().unwrap(), copies);
}

#[test]
fn a_frame_made_whole_for_writing_is_copied_not_referred_to() {
    let rig = Rig::new(1, config(), RuleSet::default());
    let mut bytes = frame(0, 9);
    let expected = bytes.clone();
    // SAFETY: `bytes` outlives the burst's delivery and is written only through
    // `make_whole`, which gives the promise up.
    let mut frame = unsafe { TxFrame::lasting(&mut bytes) };
    frame.make_whole();
    let mut burst = Burst::default();
    let decision = rig.nic.classify(frame.head());
    let wire = wire_bytes(frame.len(), 1, 0);
    rig.nic
        .stage(&mut burst, &decision, arrival(frame.bytes(), wire, 0));
    assert_eq!(burst.bytes.len(), expected.len(), "copied into the burst");
    rig.nic.deliver_burst(&mut burst, 0);
    assert_eq!(*rig.rings[0].frames.lock().unwrap(), vec![expected]);
}

/// A test frame of class `dscp` with tag `tag`, `len` bytes long.
fn sized_frame(dscp: u8, tag: u8, len: usize) -> Vec<u8> {
    let mut bytes = frame(dscp, tag);
    bytes.resize(len, tag);
    bytes
}

#[test]
fn a_burst_records_each_frame_at_its_own_residence_whatever_its_run() {
    let rig = Rig::new(1, config(), RuleSet::default());
    // Normal frames stamped 10, 10, 10, 20, 20 (a sender stamps several at a time), a high
    // frame stamped 15 between them; delivered at 100.
    let frames = vec![
        (sized_frame(0, 1, 60), 10),
        (sized_frame(0, 2, 70), 10),
        (sized_frame(EF, 3, 80), 15),
        (sized_frame(0, 4, 90), 10),
        (sized_frame(0, 5, 100), 20),
        (sized_frame(0, 6, 110), 20),
    ];
    rig.send_burst_at(&frames, 100);
    assert_eq!(rig.counter(0, |c| &c.rx_packets), 6);
    assert_eq!(rig.counter(0, |c| &c.rx_bytes), 510);
    assert_eq!(rig.counter(0, |c| &c.rx_high_packets), 1);
    assert_eq!(rig.counter(0, |c| &c.rx_high_bytes), 80);
    let [high, normal] = rig.nic.queue(0).unwrap().residence();
    assert_eq!((high.count, high.max_ns), (1, 85));
    assert_eq!(normal.count, 5);
    // Three of five stayed 90 ns, two 80 ns.
    assert_eq!((normal.max_ns, normal.p50_ns), (90, 90));
    assert_eq!(
        normal.cdf_ns[0], 80,
        "the lowest percentile is the later stamp's"
    );
}

#[test]
fn a_burst_cut_short_by_the_ring_accounts_only_what_went_in() {
    let rig = Rig::new(1, config(), RuleSet::default());
    rig.rings[0].room.store(3, Ordering::Relaxed);
    let frames: Vec<_> = (1..=5)
        .map(|tag| (sized_frame(0, tag, 60 + 10 * usize::from(tag)), 10))
        .collect();
    rig.send_burst_at(&frames, 50);
    assert_eq!(rig.rings[0].tags(), vec![1, 2, 3]);
    assert_eq!(rig.counter(0, |c| &c.rx_packets), 3);
    assert_eq!(rig.counter(0, |c| &c.rx_bytes), 70 + 80 + 90);
    assert_eq!(rig.nic.queue(0).unwrap().residence()[1].count, 3);
    assert_eq!(rig.nic.buffered(), 2);
    rig.rings[0].room.store(usize::MAX, Ordering::Relaxed);
    rig.nic.drain(60);
    assert_eq!(rig.counter(0, |c| &c.rx_packets), 5);
    assert_eq!(rig.counter(0, |c| &c.rx_bytes), 70 + 80 + 90 + 100 + 110);
    assert_eq!(rig.nic.queue(0).unwrap().residence()[1].count, 5);
}

#[test]
fn a_burst_over_two_queues_accounts_each_queue_its_own_frames() {
    // Two queues: high frames on queue 0, normal ones on queue 1, interleaved in the burst.
    let rig = Rig::new(2, config(), RuleSet::default());
    let frames = vec![
        (sized_frame(EF, 1, 60), 10),
        (sized_frame(0, 2, 70), 10),
        (sized_frame(EF, 3, 80), 20),
        (sized_frame(0, 4, 90), 20),
        (sized_frame(0, 5, 100), 30),
    ];
    assert_eq!(
        rig.send_burst_at(&frames, 40),
        vec![Some(0), Some(1), Some(0), Some(1), Some(1)]
    );
    assert_eq!(rig.counter(0, |c| &c.rx_packets), 2);
    assert_eq!(rig.counter(0, |c| &c.rx_bytes), 140);
    assert_eq!(rig.counter(0, |c| &c.rx_high_packets), 2);
    assert_eq!(rig.counter(1, |c| &c.rx_packets), 3);
    assert_eq!(rig.counter(1, |c| &c.rx_bytes), 260);
    assert_eq!(rig.counter(1, |c| &c.rx_high_packets), 0);
    let high = rig.nic.queue(0).unwrap().residence()[0];
    assert_eq!((high.count, high.max_ns, high.cdf_ns[0]), (2, 30, 20));
    let normal = rig.nic.queue(1).unwrap().residence()[1];
    assert_eq!((normal.count, normal.max_ns, normal.cdf_ns[0]), (3, 30, 10));
}

#[test]
fn a_burst_over_several_queues_reaches_each_queue_once_and_in_order() {
    // Four queues: EF frames on queue 0, the flows (UDP source ports) spread over 1 to 3.
    let rig = Rig::new(4, config(), RuleSet::default());
    let frames: Vec<_> = (1..=24u8)
        .map(|tag| {
            let mut bytes = frame(if tag % 5 == 0 { EF } else { 0 }, tag);
            bytes[34..36].copy_from_slice(&(4000 + u16::from(tag % 7)).to_be_bytes());
            (bytes, 10)
        })
        .collect();
    let queues = rig.send_burst(&frames);
    let used: HashSet<usize> = queues.iter().flatten().copied().collect();
    assert!(used.len() >= 3, "the flows spread over queues {used:?}");
    for (index, ring) in rig.rings.iter().enumerate() {
        let expected: Vec<u8> = (1..=24u8)
            .zip(&queues)
            .filter(|(_, queue)| **queue == Some(index))
            .map(|(tag, _)| tag)
            .collect();
        assert_eq!(ring.tags(), expected, "queue {index}");
        assert_eq!(
            rig.counter(index, |c| &c.rx_packets),
            expected.len() as u64,
            "queue {index}"
        );
    }
}
