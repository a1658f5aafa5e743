//! RX buffer handling: mergeable RX buffers (VIRTIO_NET_F_MRG_RXBUF) and what happens
//! without them.

mod support;

use std::time::{Duration, Instant};
use support::daemon::Daemon;

use support::frames::{VIRTIO_NET_HDR_LEN, VirtioNetHdr, mac, udp_frame_of_len, udp_tag};
use support::guest::{GuestOptions, TestGuest, feature};
use support::traffic::expect_tag;
use support::wait_for;

/// Ports a and b with one queue pair, so every frame lands on RX queue 0.
fn guests(b_opts: GuestOptions) -> (Daemon, TestGuest, TestGuest) {
    let daemon = Daemon::start(&["a", "b"], 1).expect("daemon starts");
    let a = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("a");
    let b = TestGuest::connect(&daemon.socket("b"), b_opts).expect("b");
    (daemon, a, b)
}

#[test]
fn mergeable_frame_spans_small_buffers_with_num_buffers_set() {
    let (_daemon, mut a, mut b) = guests(GuestOptions::linux(2));
    assert!(b.has(feature::MRG_RXBUF));
    b.post_rx_buffers(0, 16, 256).expect("post");
    let frame = udp_frame_of_len(1, mac(2), 2, 1, 1500);
    a.send(0, VirtioNetHdr::plain(), &frame).expect("send");
    let got = expect_tag(&mut b, 1).expect("frame arrives");
    assert_eq!(got.frame, frame, "reassembled frame differs");
    // 12 + 1500 bytes in 256-byte buffers: five full ones and 232 bytes in the sixth.
    let total = VIRTIO_NET_HDR_LEN + frame.len();
    let buffers = total.div_ceil(256);
    assert_eq!(usize::from(got.net_hdr().num_buffers), buffers);
    let mut want = vec![256u32; buffers - 1];
    want.push((total - 256 * (buffers - 1)) as u32);
    assert_eq!(got.used_lens, want);
}

#[test]
fn mergeable_small_frame_uses_one_buffer() {
    let (_daemon, mut a, mut b) = guests(GuestOptions::linux(2));
    b.post_rx_buffers(0, 4, 2048).expect("post");
    let frame = udp_frame_of_len(1, mac(2), 2, 2, 60);
    a.send(0, VirtioNetHdr::plain(), &frame).expect("send");
    let got = expect_tag(&mut b, 2).expect("frame arrives");
    assert_eq!(got.net_hdr().num_buffers, 1);
    assert_eq!(got.used_lens, vec![(VIRTIO_NET_HDR_LEN + 60) as u32]);
    assert_eq!(got.frame, frame);
}

#[test]
fn without_mergeable_a_frame_too_big_for_the_buffer_is_dropped_and_counted() {
    let (mut daemon, mut a, mut b) = guests(GuestOptions::linux(2).without(
        feature::MRG_RXBUF | feature::GUEST_TSO4 | feature::GUEST_TSO6 | feature::GUEST_ECN,
    ));
    assert!(!b.has(feature::MRG_RXBUF));
    b.post_rx_buffers(0, 8, 256).expect("post");
    let before = daemon.counter("b", "rx_drops_too_big").expect("counter");
    let big = udp_frame_of_len(1, mac(2), 2, 3, 1500);
    a.send(0, VirtioNetHdr::plain(), &big).expect("send");
    daemon
        .wait_counter("b", "rx_drops_too_big", before + 1)
        .expect("drop counted");
    // A frame that fits still passes, and the big one never shows up.
    let small = udp_frame_of_len(1, mac(2), 2, 4, 200);
    a.send(0, VirtioNetHdr::plain(), &small).expect("send");
    let got = expect_tag(&mut b, 4).expect("small frame arrives");
    assert_eq!(got.frame, small);
    // virtio 1.x, 5.1.6.4.2: without MRG_RXBUF the device MUST set num_buffers to 1.
    assert_eq!(
        got.net_hdr().num_buffers,
        1,
        "num_buffers without MRG_RXBUF"
    );
    let rest = b.try_recv(0).expect("poll");
    assert!(rest.is_empty(), "unexpected frames: {rest:?}");
}

#[test]
fn without_mergeable_a_chain_of_small_buffers_holds_a_big_frame() {
    // Linux's "big packets" mode: one RX chain of several writable descriptors.
    let (_daemon, mut a, mut b) = guests(GuestOptions::linux(2).without(feature::MRG_RXBUF));
    b.post_rx_chain(0, &[256; 8]).expect("post chain");
    let frame = udp_frame_of_len(1, mac(2), 2, 5, 1500);
    a.send(0, VirtioNetHdr::plain(), &frame).expect("send");
    let got = expect_tag(&mut b, 5).expect("frame arrives");
    assert_eq!(got.frame, frame);
    assert_eq!(got.used_lens, vec![(VIRTIO_NET_HDR_LEN + 1500) as u32]);
}

#[test]
fn frames_wait_for_rx_buffers_posted_later() {
    // The guest posts its buffers only after the frame was sent: the frame is held (the
    // NIC buffers per RX queue) or dropped as no-buffer; a frame sent after posting passes.
    let (mut daemon, mut a, mut b) = guests(GuestOptions::linux(2));
    let frame = udp_frame_of_len(1, mac(2), 2, 6, 300);
    a.send(0, VirtioNetHdr::plain(), &frame).expect("send");
    a.flush_tx(0)
        .expect("a's TX completes without waiting for b");
    daemon.check_running().expect("alive");
    b.post_rx_buffers(0, 8, 2048).expect("post");
    let later = udp_frame_of_len(1, mac(2), 2, 7, 300);
    a.send(0, VirtioNetHdr::plain(), &later).expect("send");
    let got = expect_tag(&mut b, 7).expect("frame after posting arrives");
    assert_eq!(got.frame, later);
}

/// Ports a and b, one queue pair, a's worker polling its TX ring for `busy_poll` after each
/// batch. a sends one frame, so that it is busy and delivering to b, then six into b's ring
/// of one free buffer: one goes in, five wait in b's NIC. b takes the two frames.
fn five_frames_waiting_behind_a_busy_sender(
    busy_poll: Duration,
) -> (Daemon, TestGuest, TestGuest, Vec<u32>) {
    let daemon = Daemon::builder()
        .port("a")
        .port("b")
        .queues(1)
        .arg(&format!("--busy-poll-us={}", busy_poll.as_micros()))
        .spawn()
        .expect("daemon starts");
    let mut a = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("a");
    let mut b = TestGuest::connect(&daemon.socket("b"), GuestOptions::linux(2)).expect("b");
    b.post_rx_buffers(0, 2, 2048).expect("post two buffers");
    a.send(
        0,
        VirtioNetHdr::plain(),
        &udp_frame_of_len(1, mac(2), 2, 19, 300),
    )
    .expect("send the first frame");
    let first = expect_tag(&mut b, 19).expect("the first frame arrives");
    let mut tags = vec![udp_tag(&first.frame).expect("tagged")];
    let frames: Vec<Vec<u8>> = (20..26)
        .map(|tag| udp_frame_of_len(1, mac(2), 2, tag, 300))
        .collect();
    a.send_batch(0, &frames).expect("send six frames");
    a.flush_tx(0)
        .expect("a's TX completes without waiting for b");
    let got = b.expect_frames(1).expect("the frame that fitted arrives");
    tags.extend(got.iter().map(|f| udp_tag(&f.frame).expect("tagged")));
    (daemon, a, b, tags)
}

/// Takes frames on b until all of tags 19..26 came or 30 s passed.
fn receive_the_rest(b: &mut TestGuest, tags: &mut Vec<u32>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tags.len() < 7 && Instant::now() < deadline {
        for frame in b.recv_any(1, Duration::from_millis(200)).expect("receive") {
            tags.push(udp_tag(&frame.frame).expect("tagged frame"));
        }
    }
    assert_eq!(
        tags,
        &(19..26).collect::<Vec<u32>>(),
        "frames lost or reordered"
    );
}

#[test]
fn a_busy_sender_moves_waiting_frames_without_the_guest_kicking() {
    // While a polls its TX ring (for a second after its last frame), it has promised to try
    // b's waiting frames again, and does: buffers b posts without a kick take them. (Should
    // the poll end first on a slow machine, going idle tries them once more too.)
    let (_daemon, _a, mut b, mut tags) =
        five_frames_waiting_behind_a_busy_sender(Duration::from_secs(1));
    b.post_rx_buffers_without_kick(0, 8, 2048)
        .expect("post eight buffers");
    receive_the_rest(&mut b, &mut tags);
}

#[test]
fn a_sender_going_idle_leaves_the_ring_asking_for_a_kick() {
    // When a stops polling (after 100 ms) with frames still waiting for b's full ring, b's
    // ring must ask for a kick: nobody else would move the frames. A driver that kicks only
    // when asked then gets them.
    let (_daemon, _a, mut b, mut tags) =
        five_frames_waiting_behind_a_busy_sender(Duration::from_millis(100));
    let asks = wait_for(
        "b's ring to ask for a kick",
        Duration::from_secs(30),
        || Ok(b.rx_asks_for_kick(0)?.then_some(())),
    );
    asks.expect("b's ring asks for a kick once a is idle");
    let kicked = b
        .post_rx_buffers_as_driver(0, 8, 2048)
        .expect("post eight buffers");
    assert!(kicked, "the driver was asked to kick");
    receive_the_rest(&mut b, &mut tags);
}
