//! RX buffer handling: mergeable RX buffers (VIRTIO_NET_F_MRG_RXBUF) and what happens
//! without them.

mod support;

use support::daemon::Daemon;
use support::frames::{NET_HDR_LEN, VirtioNetHdr, mac, udp_frame_of_len};
use support::guest::{GuestOptions, TestGuest, feature};
use support::traffic::expect_tag;

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
    let total = NET_HDR_LEN + frame.len();
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
    assert_eq!(got.used_lens, vec![(NET_HDR_LEN + 60) as u32]);
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
    assert_eq!(got.used_lens, vec![(NET_HDR_LEN + 1500) as u32]);
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
