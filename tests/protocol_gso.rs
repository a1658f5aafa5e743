//! TCP segmentation offload and checksum offload between guests with different offload
//! features.

mod support;

use support::daemon::Daemon;
use support::frames::{
    MSS, MSS6, VirtioNetHdr, complete_partial_checksum, ipv4_checksum_ok, mac, parse_tcp4,
    parse_tcp6, tagged_payload, tcp_checksum_ok, tcp_tso_frame, tcp6_checksum_ok, tcp6_tso_frame,
};
use support::guest::{GuestOptions, RxFrame, TestGuest, feature};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
};

/// A 64 KB TSO super-frame's TCP payload.
const SUPER_PAYLOAD: usize = 64_000;
const SEQ: u32 = 1_000_000;
const NO_TSO: u64 = feature::GUEST_TSO4 | feature::GUEST_TSO6 | feature::GUEST_ECN;

fn guests(b_opts: GuestOptions) -> (Daemon, TestGuest, TestGuest) {
    let daemon = Daemon::start(&["a", "b"], 1).expect("daemon starts");
    let a = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("a");
    assert!(
        a.has(feature::HOST_TSO4 | feature::CSUM),
        "a may send TSO frames"
    );
    let b = TestGuest::connect(&daemon.socket("b"), b_opts).expect("b");
    (daemon, a, b)
}

fn send_super_frame(a: &mut TestGuest) -> (Vec<u8>, Vec<u8>) {
    let payload = tagged_payload(0xfeed, SUPER_PAYLOAD);
    let frame = tcp_tso_frame(1, mac(2), 2, SEQ, &payload);
    a.send(0, VirtioNetHdr::tso4(MSS), &frame).expect("send");
    (frame, payload)
}

/// Checks the segments of the super-frame and returns their payloads concatenated.
fn check_segments(segments: &[RxFrame], allow_partial_csum: bool) -> Vec<u8> {
    let mut payload = Vec::new();
    let mut seq = SEQ;
    for (i, seg) in segments.iter().enumerate() {
        let hdr = seg.net_hdr();
        assert_eq!(
            u32::from(hdr.gso_type),
            VIRTIO_NET_HDR_GSO_NONE,
            "segment {i}"
        );
        let partial = u32::from(hdr.flags) & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0;
        assert!(
            allow_partial_csum || !partial,
            "segment {i}: NEEDS_CSUM to a guest without GUEST_CSUM"
        );
        // A guest with GUEST_CSUM may be handed a partial checksum; complete it as the
        // driver would before checking.
        let raw = complete_partial_checksum(&seg.frame, &hdr).expect("csum fields in range");
        let tcp = parse_tcp4(&raw).unwrap_or_else(|e| panic!("segment {i}: {e}"));
        assert!(ipv4_checksum_ok(&tcp), "segment {i}: bad IPv4 checksum");
        assert!(tcp_checksum_ok(&raw, &tcp), "segment {i}: bad TCP checksum");
        assert_eq!(tcp.tcp.sequence_number(), seq, "segment {i}: sequence");
        assert!(
            tcp.payload.len() <= usize::from(MSS),
            "segment {i} above MSS"
        );
        if i + 1 < segments.len() {
            assert_eq!(tcp.payload.len(), usize::from(MSS), "segment {i} short");
            assert!(!tcp.tcp.psh(), "PSH only on the last segment");
        }
        seq = seq.wrapping_add(tcp.payload.len() as u32);
        payload.extend_from_slice(tcp.payload);
    }
    payload
}

#[test]
fn tso4_frame_reaches_a_tso_guest_intact() {
    let (_daemon, mut a, mut b) = guests(GuestOptions::linux(2));
    assert!(b.has(feature::GUEST_TSO4 | feature::GUEST_CSUM | feature::MRG_RXBUF));
    b.post_rx_buffers(0, 40, 4096).expect("post");
    let (frame, _) = send_super_frame(&mut a);
    let got = b.expect_frames(1).expect("super-frame arrives");
    assert_eq!(got.len(), 1, "delivered as one frame, not segmented");
    let hdr = got[0].net_hdr();
    assert_eq!(u32::from(hdr.gso_type), VIRTIO_NET_HDR_GSO_TCPV4);
    assert_eq!(hdr.gso_size, MSS);
    assert_ne!(u32::from(hdr.flags) & VIRTIO_NET_HDR_F_NEEDS_CSUM, 0);
    assert_eq!(hdr.csum_start, VirtioNetHdr::tso4(MSS).csum_start);
    assert_eq!(hdr.csum_offset, VirtioNetHdr::tso4(MSS).csum_offset);
    assert_eq!(got[0].frame, frame, "super-frame altered");
}

#[test]
fn tso4_frame_is_segmented_with_valid_checksums_for_a_guest_without_tso() {
    let (mut daemon, mut a, mut b) = guests(GuestOptions::linux(2).without(NO_TSO));
    assert!(!b.has(feature::GUEST_TSO4) && b.has(feature::GUEST_CSUM));
    b.post_rx_buffers(0, 64, 2048).expect("post");
    let (_, payload) = send_super_frame(&mut a);
    let n = SUPER_PAYLOAD.div_ceil(usize::from(MSS));
    let segments = b.expect_frames(n).expect("all segments arrive");
    assert_eq!(segments.len(), n);
    assert!(
        segments.iter().all(|s| s.frame.len() <= 1514),
        "segment above MTU"
    );
    assert_eq!(check_segments(&segments, true), payload, "payload altered");
    // Which side counts the segmentation is the daemon's choice; one of them must.
    let counted = daemon.counter("a", "tx_gso_segmented").expect("counter")
        + daemon.counter("b", "tx_gso_segmented").expect("counter");
    assert!(counted >= 1, "segmentation not counted");
}

#[test]
fn guest_without_guest_csum_gets_full_checksums() {
    let (mut daemon, mut a, mut b) =
        guests(GuestOptions::linux(2).without(NO_TSO | feature::GUEST_CSUM));
    assert!(!b.has(feature::GUEST_CSUM));
    b.post_rx_buffers(0, 64, 2048).expect("post");
    let (_, payload) = send_super_frame(&mut a);
    let n = SUPER_PAYLOAD.div_ceil(usize::from(MSS));
    let segments = b.expect_frames(n).expect("all segments arrive");
    assert_eq!(check_segments(&segments, false), payload);

    // A single frame with only checksum offload is completed too.
    let before = daemon.counter("a", "tx_csum_completed").expect("counter")
        + daemon.counter("b", "tx_csum_completed").expect("counter");
    let frame = tcp_tso_frame(1, mac(2), 2, 7, &tagged_payload(1, 500));
    let hdr = VirtioNetHdr {
        gso_type: VIRTIO_NET_HDR_GSO_NONE as u8,
        gso_size: 0,
        hdr_len: 0,
        ..VirtioNetHdr::tso4(MSS)
    };
    a.send(0, hdr, &frame).expect("send");
    let got = b.expect_frames(1).expect("frame arrives");
    assert_eq!(
        got[0].net_hdr().flags,
        0,
        "no NEEDS_CSUM without GUEST_CSUM"
    );
    let tcp = parse_tcp4(&got[0].frame).expect("TCP frame");
    assert!(
        tcp_checksum_ok(&got[0].frame, &tcp),
        "checksum not completed"
    );
    assert_eq!(tcp.payload, &tagged_payload(1, 500)[..]);
    let after = daemon.counter("a", "tx_csum_completed").expect("counter")
        + daemon.counter("b", "tx_csum_completed").expect("counter");
    assert!(after > before, "checksum completion not counted");
}

#[test]
fn partial_checksum_reaches_a_guest_with_guest_csum_correctly() {
    let (_daemon, mut a, mut b) = guests(GuestOptions::linux(2));
    b.post_rx_buffers(0, 4, 2048).expect("post");
    let frame = tcp_tso_frame(1, mac(2), 2, 7, &tagged_payload(2, 700));
    let hdr = VirtioNetHdr {
        gso_type: VIRTIO_NET_HDR_GSO_NONE as u8,
        gso_size: 0,
        hdr_len: 0,
        ..VirtioNetHdr::tso4(MSS)
    };
    a.send(0, hdr, &frame).expect("send");
    let got = b.expect_frames(1).expect("frame arrives");
    // Either passed on as partial (NEEDS_CSUM with the same offsets) or completed.
    let raw = complete_partial_checksum(&got[0].frame, &got[0].net_hdr()).expect("csum fields");
    let tcp = parse_tcp4(&raw).expect("TCP frame");
    assert!(
        tcp_checksum_ok(&raw, &tcp),
        "checksum wrong after completion"
    );
    assert_eq!(tcp.payload, &tagged_payload(2, 700)[..]);
}

#[test]
fn tso6_frame_reaches_a_tso6_guest_intact() {
    let (_daemon, mut a, mut b) = guests(GuestOptions::linux(2));
    assert!(a.has(feature::HOST_TSO6) && b.has(feature::GUEST_TSO6));
    b.post_rx_buffers(0, 40, 4096).expect("post");
    let frame = tcp6_tso_frame(1, mac(2), 2, SEQ, &tagged_payload(6, SUPER_PAYLOAD));
    a.send(0, VirtioNetHdr::tso6(MSS6), &frame).expect("send");
    let got = b.expect_frames(1).expect("super-frame arrives");
    assert_eq!(got.len(), 1, "delivered as one frame, not segmented");
    let hdr = got[0].net_hdr();
    assert_eq!(u32::from(hdr.gso_type), VIRTIO_NET_HDR_GSO_TCPV6);
    assert_eq!(hdr.gso_size, MSS6);
    assert_eq!(got[0].frame, frame, "super-frame altered");
}

#[test]
fn tso6_frame_is_segmented_with_valid_checksums_for_a_guest_without_tso() {
    let (_daemon, mut a, mut b) =
        guests(GuestOptions::linux(2).without(NO_TSO | feature::GUEST_CSUM));
    b.post_rx_buffers(0, 64, 2048).expect("post");
    let payload = tagged_payload(6, SUPER_PAYLOAD);
    let frame = tcp6_tso_frame(1, mac(2), 2, SEQ, &payload);
    a.send(0, VirtioNetHdr::tso6(MSS6), &frame).expect("send");
    let n = SUPER_PAYLOAD.div_ceil(usize::from(MSS6));
    let segments = b.expect_frames(n).expect("all segments arrive");
    assert_eq!(segments.len(), n);
    let mut joined = Vec::new();
    let mut seq = SEQ;
    for (i, seg) in segments.iter().enumerate() {
        assert_eq!(
            seg.net_hdr().flags,
            0,
            "segment {i}: no NEEDS_CSUM without GUEST_CSUM"
        );
        let tcp = parse_tcp6(&seg.frame).unwrap_or_else(|e| panic!("segment {i}: {e}"));
        assert!(
            tcp6_checksum_ok(&seg.frame, &tcp),
            "segment {i}: bad TCP checksum"
        );
        assert_eq!(tcp.tcp.sequence_number(), seq, "segment {i}: sequence");
        assert!(
            tcp.payload.len() <= usize::from(MSS6),
            "segment {i} above MSS"
        );
        seq = seq.wrapping_add(tcp.payload.len() as u32);
        joined.extend_from_slice(tcp.payload);
    }
    assert_eq!(joined, payload, "payload altered");
}

/// A flooded frame with a partial checksum reaches a guest that takes partial checksums
/// as it was sent, although a later receiver without GUEST_CSUM has the checksum completed
/// in the sender's copy of the frame: the first receiver's copy must not see that write.
#[test]
fn a_flooded_partial_checksum_stays_partial_for_one_guest_and_is_completed_for_another() {
    let daemon = Daemon::start(&["a", "b", "c"], 1).expect("daemon starts");
    let mut a = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("a");
    let mut b = TestGuest::connect(&daemon.socket("b"), GuestOptions::linux(2)).expect("b");
    let mut c = TestGuest::connect(
        &daemon.socket("c"),
        GuestOptions::linux(3).without(NO_TSO | feature::GUEST_CSUM),
    )
    .expect("c");
    assert!(b.has(feature::GUEST_CSUM) && !c.has(feature::GUEST_CSUM));
    b.post_rx_buffers(0, 8, 2048).expect("post");
    c.post_rx_buffers(0, 8, 2048).expect("post");
    // To a MAC nobody has: flooded to b, then c (port order).
    let frame = tcp_tso_frame(1, [2, 0, 0, 0, 0, 0x77], 9, 7, &tagged_payload(3, 300));
    let hdr = VirtioNetHdr {
        gso_type: VIRTIO_NET_HDR_GSO_NONE as u8,
        gso_size: 0,
        hdr_len: 0,
        ..VirtioNetHdr::tso4(MSS)
    };
    for _ in 0..4 {
        a.send(0, hdr, &frame).expect("send");
    }
    for got in b.expect_frames(4).expect("b gets the frames") {
        assert_eq!(
            u32::from(got.net_hdr().flags),
            VIRTIO_NET_HDR_F_NEEDS_CSUM,
            "still partial for b"
        );
        assert_eq!(got.frame, frame, "b's frame is the frame as sent");
    }
    for got in c.expect_frames(4).expect("c gets the frames") {
        assert_eq!(got.net_hdr().flags, 0, "completed for c");
        let tcp = parse_tcp4(&got.frame).expect("TCP frame");
        assert!(tcp_checksum_ok(&got.frame, &tcp), "c's checksum is valid");
    }
}
