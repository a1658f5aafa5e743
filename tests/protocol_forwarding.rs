//! Forwarding through the daemon's switch between guests attached over vhost-user.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use support::TIMEOUT;
use support::daemon::Daemon;
use support::frames::{BROADCAST, VirtioNetHdr, mac, udp_frame, udp_frame_of_len, udp_tag};
use support::guest::{GuestOptions, TestGuest, TxLayout};
use support::traffic::{expect_tag, flow_frame, send_tagged};

const PAIRS: u16 = 4;

fn two_guests(pairs: u16) -> (Daemon, TestGuest, TestGuest) {
    let daemon = Daemon::start(&["a", "b"], pairs).expect("daemon starts");
    let a = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("a");
    let b = TestGuest::connect(&daemon.socket("b"), GuestOptions::linux(2)).expect("b");
    (daemon, a, b)
}

fn three_guests(pairs: u16) -> (Daemon, TestGuest, TestGuest, TestGuest) {
    let daemon = Daemon::start(&["a", "b", "c"], pairs).expect("daemon starts");
    let a = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("a");
    let b = TestGuest::connect(&daemon.socket("b"), GuestOptions::linux(2)).expect("b");
    let c = TestGuest::connect(&daemon.socket("c"), GuestOptions::linux(3)).expect("c");
    (daemon, a, b, c)
}

/// `n` frames from 1 to 2 of `len` bytes, tagged `first`, `first + 1`, ...
fn tagged_frames(first: u32, n: u32, len: usize) -> Vec<Vec<u8>> {
    (first..first + n)
        .map(|tag| udp_frame_of_len(1, mac(2), 2, tag, len))
        .collect()
}

/// Receives as many frames as were `sent` and checks each is the one sent, in order.
fn expect_as_sent(receiver: &mut TestGuest, sent: &[Vec<u8>], what: &str) {
    let got = receiver
        .expect_frames(sent.len())
        .unwrap_or_else(|error| panic!("{what}: not every frame arrives: {error}"));
    for (at, (got, sent)) in got.iter().zip(sent).enumerate() {
        assert_eq!(&got.frame, sent, "{what}: frame {at}");
    }
}

#[test]
fn frames_from_every_tx_queue_arrive_intact_exactly_once() {
    let (_daemon, mut a, mut b) = two_guests(PAIRS);
    b.post_rx_buffers_all(32, 2048).expect("post");
    let mut sent = HashMap::new();
    for pair in 0..PAIRS {
        for flow in 0..4u16 {
            let tag = u32::from(pair) * 100 + u32::from(flow);
            let frame = flow_frame(1, 2, 2000 + flow, tag);
            a.send(pair, VirtioNetHdr::plain(), &frame).expect("send");
            sent.insert(tag, frame);
        }
    }
    let got = b.expect_frames(sent.len()).expect("all frames arrive");
    assert_eq!(
        got.len(),
        sent.len(),
        "no duplicates (each frame on one queue)"
    );
    let mut seen = HashSet::new();
    for f in &got {
        let tag = udp_tag(&f.frame).expect("tagged frame");
        assert!(seen.insert(tag), "tag {tag} delivered twice");
        assert_eq!(Some(&f.frame), sent.get(&tag), "frame {tag} altered");
        assert_eq!(f.net_hdr().gso_type, 0, "no offload on a plain frame");
    }
}

/// Sends one frame per new, unmarked flow from a to b until b has received frames on every
/// normal RX queue (each flow hashes to one queue, so enough flows cover all of them). Queue 0
/// is the NIC's high-priority queue: unmarked flows never land there. Proves b's queues are
/// all in use before a test relies on the mapping staying stable.
fn until_every_rx_queue_is_used(a: &mut TestGuest, b: &mut TestGuest) {
    let mut used = HashSet::new();
    for flow in 0..200u16 {
        let tag = 50_000 + u32::from(flow);
        a.send(
            0,
            VirtioNetHdr::plain(),
            &flow_frame(1, 2, 10_000 + flow, tag),
        )
        .expect("send");
        let got = expect_tag(b, tag).expect("warm-up frame arrives");
        b.post_rx_buffers(got.pair, 1, 2048)
            .expect("replace buffer");
        assert_ne!(
            got.pair, 0,
            "an unmarked flow landed on the high-priority queue"
        );
        used.insert(got.pair);
        if used.len() == usize::from(b.pairs()) - 1 {
            return;
        }
    }
    panic!("200 flows reached only RX queues {used:?} of {}", b.pairs());
}

#[test]
fn flows_are_spread_over_every_normal_rx_queue() {
    let (_daemon, mut a, mut b) = two_guests(PAIRS);
    b.post_rx_buffers_all(32, 2048).expect("post");
    until_every_rx_queue_is_used(&mut a, &mut b);
}

#[test]
fn one_flow_lands_on_one_rx_queue_whatever_the_tx_queue() {
    let (_daemon, mut a, mut b) = two_guests(PAIRS);
    b.post_rx_buffers_all(32, 2048).expect("post");
    until_every_rx_queue_is_used(&mut a, &mut b);
    let mut tag = 0;
    for _round in 0..3 {
        for pair in 0..PAIRS {
            // Same addresses and ports every time: one flow.
            let frame = flow_frame(1, 2, 4242, tag);
            a.send(pair, VirtioNetHdr::plain(), &frame).expect("send");
            tag += 1;
        }
    }
    let got = b.expect_frames(tag as usize).expect("all frames arrive");
    let queues: HashSet<u16> = got.iter().map(|f| f.pair).collect();
    assert_eq!(queues.len(), 1, "one flow spread over RX queues {queues:?}");
}

#[test]
fn every_tx_layout_is_accepted() {
    let (_daemon, mut a, mut b) = two_guests(2);
    b.post_rx_buffers_all(16, 2048).expect("post");
    let layouts = [
        TxLayout::Contiguous,
        TxLayout::HeaderSeparate,
        TxLayout::Scattered(100),
        TxLayout::Scattered(7),
        TxLayout::Indirect,
    ];
    for (i, layout) in layouts.into_iter().enumerate() {
        let frame = udp_frame(1, mac(2), 2, 7000, 5000, i as u32, 900);
        a.send_layout(1, VirtioNetHdr::plain(), &frame, layout)
            .expect("send");
        let got = expect_tag(&mut b, i as u32).unwrap_or_else(|e| panic!("{layout:?}: {e}"));
        assert_eq!(got.frame, frame, "{layout:?} altered the frame");
    }
}

/// Frames above 1 KiB leave the sending guest in two parts: the head copied for the switch,
/// the rest copied straight into the receiver. Every TX layout must still arrive byte for
/// byte, spread over mergeable RX buffers, whether it goes straight into the ring or waits
/// in the NIC for buffers first.
#[test]
fn large_frames_cross_intact_in_every_tx_layout_straight_or_after_waiting() {
    let (_daemon, mut a, mut b) = two_guests(1);
    let layouts = [
        TxLayout::Contiguous,
        TxLayout::HeaderSeparate,
        TxLayout::Scattered(1000),
        TxLayout::Scattered(100),
        TxLayout::Indirect,
    ];
    let frames: Vec<Vec<u8>> = (0..layouts.len() as u32)
        .map(|tag| udp_frame_of_len(1, mac(2), 2, tag, 9000 - 64 * tag as usize))
        .collect();
    // No RX buffers yet: every frame waits in b's NIC, copied there from a's memory.
    for (frame, layout) in frames.iter().zip(layouts) {
        a.send_layout(0, VirtioNetHdr::plain(), frame, layout)
            .expect("send");
    }
    a.flush_tx(0)
        .expect("a's TX completes while b has no buffers");
    b.post_rx_buffers(0, 5 * 5, 2048).expect("post");
    let mut got = Vec::new();
    while got.len() < frames.len() {
        let more = b
            .recv_any(frames.len() - got.len(), support::TIMEOUT)
            .expect("recv");
        assert!(
            !more.is_empty(),
            "only {} of the waiting frames arrived",
            got.len()
        );
        got.extend(more);
    }
    for (tag, (frame, layout)) in frames.iter().zip(layouts).enumerate() {
        let arrived = got.iter().find(|f| udp_tag(&f.frame) == Some(tag as u32));
        let arrived = arrived.unwrap_or_else(|| panic!("{layout:?}: lost while waiting"));
        assert_eq!(arrived.frame.len(), frame.len(), "{layout:?} after waiting");
        assert!(
            arrived.frame == *frame,
            "{layout:?} altered the frame after waiting"
        );
    }
    // Buffers ready: the frames go straight from a's memory into b's.
    b.post_rx_buffers(0, 5 * 5, 2048).expect("post");
    for (tag, layout) in layouts.into_iter().enumerate() {
        let tag = 100 + tag as u32;
        let frame = udp_frame_of_len(1, mac(2), 2, tag, 8999);
        a.send_layout(0, VirtioNetHdr::plain(), &frame, layout)
            .expect("send");
        let got = expect_tag(&mut b, tag).unwrap_or_else(|e| panic!("{layout:?}: {e}"));
        assert_eq!(usize::from(got.net_hdr().num_buffers), got.used_lens.len());
        assert!(got.frame == frame, "{layout:?} altered the frame");
    }
}

#[test]
fn batches_larger_than_the_tx_arena_arrive_intact_and_in_order() {
    // The daemon gathers the frames its NIC stages (up to 2 KiB) into a 64 KiB arena and
    // stages references to them; when the arena is full it delivers what is staged and
    // starts again, mid-batch. Frames over 1 KiB are gathered head first and their tail
    // only when the NIC stages them. 256 frames of 1,000 bytes (some 60 fit the arena), then
    // 256 of 1,500 (42 fit), then a batch of small ones: each must arrive as sent.
    let (_daemon, mut a, mut b) = two_guests(1);
    for (first, len) in [(0, 1000), (1000, 1500), (2000, 200)] {
        b.post_rx_buffers(0, 256, 2048).expect("post");
        let frames = tagged_frames(first, 256, len);
        a.send_batch(0, &frames).expect("send");
        expect_as_sent(&mut b, &frames, &format!("{len}-byte batch"));
    }
}

#[test]
fn a_flooded_batch_reaches_every_other_port_intact() {
    // Each broadcast frame is staged for b and for c by reference to the same copy; those
    // over 1 KiB have their tail gathered into it when the first of the two stages it.
    let (_daemon, mut a, mut b, mut c) = three_guests(1);
    for g in [&mut b, &mut c] {
        g.post_rx_buffers(0, 100, 2048).expect("post");
    }
    let frames: Vec<Vec<u8>> = (0..100u32)
        .map(|tag| udp_frame(1, BROADCAST, 255, 68, 67, tag, 60 + 15 * tag as usize))
        .collect();
    a.send_batch(0, &frames).expect("send");
    expect_as_sent(&mut b, &frames, "b");
    expect_as_sent(&mut c, &frames, "c");
}

#[test]
fn broadcast_reaches_every_other_port_once() {
    let (_daemon, mut a, mut b, mut c) = three_guests(2);
    for g in [&mut a, &mut b, &mut c] {
        g.post_rx_buffers_all(8, 2048).expect("post");
    }
    let frame = udp_frame(1, BROADCAST, 255, 68, 67, 77, 300);
    a.send(0, VirtioNetHdr::plain(), &frame).expect("send");
    for g in [&mut b, &mut c] {
        let got = expect_tag(g, 77).expect("broadcast arrives");
        assert_eq!(got.frame, frame);
    }
    // Both copies were made from the same TX pass; by now a copy to a would have arrived.
    let own: Vec<_> = (0..2)
        .flat_map(|p| a.try_recv(p).expect("poll a"))
        .collect();
    assert!(own.is_empty(), "sender got its own broadcast back: {own:?}");
    let dup: Vec<_> = (0..2)
        .flat_map(|p| b.try_recv(p).expect("poll b"))
        .collect();
    assert!(dup.is_empty(), "b got the broadcast twice");
}

#[test]
fn unicast_to_a_learned_mac_is_not_flooded() {
    let (_daemon, mut a, mut b, mut c) = three_guests(2);
    for g in [&mut a, &mut b, &mut c] {
        g.post_rx_buffers_all(8, 2048).expect("post");
    }
    // b speaks once: the switch learns b's MAC on port b.
    send_tagged(&mut b, 0, 1, 1).expect("b sends");
    expect_tag(&mut a, 1).expect("a hears b");

    // a -> b unicast, then a broadcast marker of the very same flow (same addresses and
    // ports, so the same RX queue and class on c): once c has the marker, a flooded copy of
    // the unicast would already be ahead of it in the same ring.
    let unicast = udp_frame(1, mac(2), 2, 5555, 5000, 10, 64);
    let marker = udp_frame(1, BROADCAST, 2, 5555, 5000, 11, 64);
    a.send(1, VirtioNetHdr::plain(), &unicast)
        .expect("send unicast");
    a.send(1, VirtioNetHdr::plain(), &marker)
        .expect("send marker");
    let got = expect_tag(&mut b, 10).expect("b gets the unicast");
    assert_eq!(got.frame, unicast);
    // Delivery to c is asynchronous, and b's first frame (flooded while a's MAC was
    // unknown) may come first: collect until the marker is there, then poll once more.
    let mut tags = Vec::new();
    while !tags.contains(&Some(11)) {
        let got = c.expect_frames(1).expect("c gets the marker");
        tags.extend(got.iter().map(|f| udp_tag(&f.frame)));
    }
    for p in 0..2 {
        let got = c.try_recv(p).expect("poll c");
        tags.extend(got.iter().map(|f| udp_tag(&f.frame)));
    }
    // c may have seen b's first frame (flooded while a's MAC was unknown), never the unicast.
    assert!(tags.contains(&Some(11)), "marker missing at c: {tags:?}");
    assert!(
        !tags.contains(&Some(10)),
        "unicast to b flooded to c: {tags:?}"
    );
}

#[test]
fn rx_delivery_signals_the_call_eventfd() {
    let (_daemon, mut a, mut b) = two_guests(1);
    b.post_rx_buffers(0, 4, 2048).expect("post");
    // Clear any signal from setup so only this delivery counts.
    b.clear_rx_call(0).expect("clear");
    send_tagged(&mut a, 0, 2, 5).expect("send");
    let signalled = b.wait_rx_call(0, support::TIMEOUT).expect("poll call");
    assert!(signalled, "no interrupt for a used RX buffer");
    expect_tag(&mut b, 5).expect("frame arrives");
}

#[test]
fn a_batch_of_mixed_sizes_arrives_intact_and_in_order() {
    // One kick for the whole batch, so the daemon reads it as one TX batch and writes b's
    // ring in bursts: frames that fit one 128-byte buffer (copied at the end of the burst)
    // between frames that span several (copied at once).
    let (_daemon, mut a, mut b) = two_guests(1);
    assert!(b.has(support::guest::feature::MRG_RXBUF));
    b.post_rx_buffers(0, 200, 128).expect("post");
    let lens = [60, 100, 116, 117, 300, 1500];
    let frames: Vec<Vec<u8>> = (0..48u32)
        .map(|tag| udp_frame_of_len(1, mac(2), 2, tag, lens[tag as usize % lens.len()]))
        .collect();
    a.send_batch(0, &frames).expect("send");
    let got = b.expect_frames(frames.len()).expect("all frames arrive");
    for (at, (got, sent)) in got.iter().zip(&frames).enumerate() {
        assert_eq!(&got.frame, sent, "frame {at} ({} bytes)", sent.len());
        assert_eq!(
            usize::from(got.net_hdr().num_buffers),
            got.used_lens.len(),
            "frame {at}: num_buffers"
        );
    }
}

#[test]
fn a_frame_that_fits_one_buffer_takes_exactly_one() {
    // Buffers that each hold a whole frame, as DPDK's and Linux's mergeable buffers are
    // posted: small frames (copied at the end of their burst), larger ones staged whole,
    // and frames over 1 KiB whose tail is copied straight from a's memory (over 2 KiB they
    // skip the burst too). Each must fill one buffer, num_buffers 1.
    let (_daemon, mut a, mut b) = two_guests(1);
    b.post_rx_buffers(0, 12, 9100).expect("post");
    for (tag, len) in [60, 250, 1400, 1518, 3000, 9000].into_iter().enumerate() {
        let frame = udp_frame_of_len(1, mac(2), 2, tag as u32, len);
        a.send(0, VirtioNetHdr::plain(), &frame).expect("send");
        let got = b.expect_frames(1).expect("the frame arrives");
        assert_eq!(got[0].frame, frame, "{len}-byte frame");
        assert_eq!(got[0].used_lens, [12 + len as u32], "{len}-byte frame");
        assert_eq!(got[0].net_hdr().num_buffers, 1, "{len}-byte frame");
    }
}

#[test]
fn a_receiver_sees_frames_while_the_senders_batch_is_still_forwarded() {
    // a's 256 frames come as one TX batch. b's used index must move during it, not only
    // at its end: a polling receiver then takes frames while the batch runs, and a ring no
    // larger than the batch does not run out of buffers its driver has long been given
    // frames in. Frames over 2 KiB go straight into b's ring (smaller ones are staged and
    // published a burst at a time), and every 32 frames the daemon publishes b's ring
    // before a's completions: once a sees 128 frames completed, b sees them too.
    let (_daemon, mut a, mut b) = two_guests(1);
    b.post_rx_buffers(0, 256, 4096).expect("post");
    let frames = tagged_frames(0, 256, 3000);
    a.send_batch(0, &frames).expect("send");
    // A tight spin, not `wait_for`: the batch takes tens of microseconds.
    let deadline = Instant::now() + TIMEOUT;
    let a_done = loop {
        let done = a
            .device_used_idx(TestGuest::tx_vring(0))
            .expect("a's used index");
        if done >= 128 {
            break done;
        }
        assert!(Instant::now() < deadline, "a's frames did not complete");
        std::hint::spin_loop();
    };
    let b_seen = b
        .device_used_idx(TestGuest::rx_vring(0))
        .expect("b's used index");
    assert!(
        b_seen >= 128,
        "a saw {a_done} frames completed while b saw only {b_seen}"
    );
    expect_as_sent(&mut b, &frames, "the batch");
}

/// Streams `n` frames from a to b on TX queue 0, b replacing every buffer it gets back;
/// checks every frame arrives once and intact, in order within the flow.
fn stream(a: &mut TestGuest, b: &mut TestGuest, n: u32) {
    b.post_rx_buffers_all(16, 2048).expect("post");
    let mut next_expected = 0u32;
    let mut sent = 0u32;
    while next_expected < n {
        // Keep up to 8 frames in flight; the ring indices wrap many times over.
        while sent < n && sent < next_expected + 8 {
            let frame = flow_frame(a.id(), b.id(), 999, sent);
            a.send(0, VirtioNetHdr::plain(), &frame).expect("send");
            sent += 1;
        }
        let got = b.recv_any(1, support::TIMEOUT).expect("receive");
        assert!(
            !got.is_empty(),
            "stream stalled at frame {next_expected} of {n}"
        );
        for f in got {
            assert_eq!(udp_tag(&f.frame), Some(next_expected), "lost or reordered");
            assert_eq!(f.frame, flow_frame(a.id(), b.id(), 999, next_expected));
            next_expected += 1;
            b.post_rx_buffers(f.pair, f.used_lens.len(), 2048)
                .expect("replace buffer");
        }
    }
}

#[test]
fn sustained_stream_wraps_the_rings_without_loss() {
    // Queue size 64 so 1000 frames wrap every ring's indices many times.
    let daemon = Daemon::start(&["a", "b"], 1).expect("daemon starts");
    let mut a =
        TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1).queue_size(64)).expect("a");
    let mut b =
        TestGuest::connect(&daemon.socket("b"), GuestOptions::linux(2).queue_size(64)).expect("b");
    assert!(a.has(support::guest::feature::EVENT_IDX));
    stream(&mut a, &mut b, 1000);
}

#[test]
fn minimal_guest_without_ring_features_or_offloads_exchanges_traffic() {
    // Only VERSION_1 (+ PROTOCOL_FEATURES and MQ for the vhost-user side): no EVENT_IDX, no
    // INDIRECT_DESC, no MRG_RXBUF, no offloads. The device must not use what was not acked.
    use support::guest::feature::*;
    let minimal = GuestOptions::linux(2).without(
        EVENT_IDX
            | INDIRECT_DESC
            | MRG_RXBUF
            | CSUM
            | GUEST_CSUM
            | GUEST_TSO4
            | GUEST_TSO6
            | GUEST_ECN
            | HOST_TSO4
            | HOST_TSO6
            | HOST_ECN,
    );
    let daemon = Daemon::start(&["a", "b"], 1).expect("daemon starts");
    let mut a =
        TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1).queue_size(64)).expect("a");
    let mut b = TestGuest::connect(&daemon.socket("b"), minimal.queue_size(64)).expect("b");
    assert!(!b.has(EVENT_IDX) && !b.has(MRG_RXBUF));
    stream(&mut a, &mut b, 300);
    stream(&mut b, &mut a, 300);
}

#[test]
fn counters_account_frames_per_queue_and_per_port() {
    let (mut daemon, mut a, mut b) = two_guests(PAIRS);
    b.post_rx_buffers_all(32, 2048).expect("post");
    let mut sent_bytes = 0u64;
    let mut sent_per_tx_queue = [0u64; PAIRS as usize];
    for flow in 0..24u16 {
        let pair = flow % PAIRS;
        let frame = flow_frame(1, 2, 8000 + flow, u32::from(flow));
        a.send(pair, VirtioNetHdr::plain(), &frame).expect("send");
        sent_bytes += frame.len() as u64;
        sent_per_tx_queue[usize::from(pair)] += 1;
    }
    let got = b.expect_frames(24).expect("all frames arrive");
    let mut got_per_rx_queue = [0u64; PAIRS as usize];
    for f in &got {
        got_per_rx_queue[usize::from(f.pair)] += 1;
    }
    // Counted in frame bytes, without the virtio-net header.
    daemon
        .wait_counter("b", "rx_packets", 24)
        .expect("b rx_packets");
    assert_eq!(daemon.counter("a", "tx_packets").expect("counter"), 24);
    assert_eq!(
        daemon.counter("a", "tx_bytes").expect("counter"),
        sent_bytes
    );
    assert_eq!(daemon.counter("b", "rx_packets").expect("counter"), 24);
    assert_eq!(
        daemon.counter("b", "rx_bytes").expect("counter"),
        sent_bytes
    );
    for q in 0..PAIRS {
        let i = usize::from(q);
        let tx = daemon.queue_counter("a", q, "tx_packets").expect("counter");
        assert_eq!(tx, sent_per_tx_queue[i], "a tx_packets of queue {q}");
        let rx = daemon.queue_counter("b", q, "rx_packets").expect("counter");
        assert_eq!(rx, got_per_rx_queue[i], "b rx_packets of queue {q}");
    }
}
