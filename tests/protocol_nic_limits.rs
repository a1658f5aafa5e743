//! Limits a port puts on what its guest, or the guests sending to it, can make the daemon
//! hold or do: the NIC's byte budget, the MAC lock, the smallest gso_size cut in software.

mod support;

use support::daemon::Daemon;
use support::frames::{MSS, VirtioNetHdr, mac, tagged_payload, tcp_tso_frame, udp_frame_of_len};
use support::guest::{GuestOptions, TestGuest, feature};
use support::traffic::{assert_traffic_both_ways, flow_frame};

fn two(extra: &[&str], b_options: GuestOptions) -> (Daemon, TestGuest, TestGuest) {
    let daemon = extra
        .iter()
        .fold(Daemon::builder().queues(1).port("a").port("b"), |d, arg| {
            d.arg(arg)
        })
        .spawn()
        .expect("daemon starts");
    let a = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("a");
    let b = TestGuest::connect(&daemon.socket("b"), b_options).expect("b");
    (daemon, a, b)
}

#[test]
fn a_guest_that_stops_reading_costs_at_most_its_ports_byte_budget() {
    const BUDGET: usize = 65_536;
    const FRAME: usize = 1400;
    const SENT: usize = 200;
    let budget = BUDGET.to_string();
    let (mut daemon, mut a, mut b) = two(
        &["--rx-buffer-bytes", &budget, "--rx-buffer", "1000"],
        GuestOptions::linux(2),
    );
    // b posts no buffers: every frame waits in b's NIC, until its bytes run out.
    for tag in 0..SENT {
        a.send(
            0,
            VirtioNetHdr::plain(),
            &udp_frame_of_len(1, mac(2), 2, tag as u32, FRAME),
        )
        .expect("a sends");
    }
    a.flush_tx(0).expect("a's frames are read");
    let dropped = daemon
        .wait_counter("b", "rx_drops_no_buffer", 1)
        .expect("frames past the budget are dropped");
    b.post_rx_buffers(0, 200, 2048).expect("b posts");
    let received = support::wait_for("b to receive what was buffered", support::TIMEOUT, || {
        let delivered = daemon.counter("b", "rx_packets")?;
        let dropped = daemon.counter("b", "rx_drops_no_buffer")?;
        Ok((delivered + dropped >= SENT as u64).then_some(delivered))
    })
    .expect("every frame delivered or dropped");
    assert!(dropped > 0);
    assert!(
        received as usize * FRAME <= BUDGET,
        "{received} frames of {FRAME} bytes were buffered under a budget of {BUDGET}"
    );
    assert!(received > 0, "nothing was buffered");
    daemon.check_running().expect("daemon survives");
    assert_traffic_both_ways(&mut a, &mut b, 0, 5000);
}

#[test]
fn a_sticky_mac_lock_drops_frames_from_any_other_source_until_the_guest_reconnects() {
    let (mut daemon, mut a, mut b) = two(&["--mac-lock", "a"], GuestOptions::linux(2));
    // a's first frames, from its own address, lock the port to it.
    assert_traffic_both_ways(&mut a, &mut b, 0, 100);
    // a now claims guest 3's address.
    a.send(0, VirtioNetHdr::plain(), &flow_frame(3, 2, 7, 1))
        .expect("a sends");
    daemon
        .wait_counter("a", "tx_drops_mac_lock", 1)
        .expect("the spoofed frame is dropped");
    assert_traffic_both_ways(&mut a, &mut b, 0, 200);
    assert_eq!(daemon.counter("a", "tx_drops_mac_lock").expect("a"), 1);
    // A new guest on the port may use another address.
    let mut a = a.reconnect().expect("a reconnects");
    b.post_rx_buffers(0, 4, 2048).expect("b posts");
    a.send(0, VirtioNetHdr::plain(), &flow_frame(3, 2, 7, 300))
        .expect("a sends as guest 3");
    let got = b.expect_frames(1).expect("b receives");
    assert_eq!(got[0].frame, flow_frame(3, 2, 7, 300));
}

#[test]
fn a_fixed_mac_lock_admits_only_the_given_address() {
    let lock = "b=52:54:00:12:34:09";
    let (mut daemon, mut a, mut b) = two(&["--mac-lock", lock], GuestOptions::linux(2));
    a.post_rx_buffers(0, 4, 2048).expect("a posts");
    b.send(0, VirtioNetHdr::plain(), &flow_frame(2, 1, 7, 1))
        .expect("b sends from its own address");
    daemon
        .wait_counter("b", "tx_drops_mac_lock", 1)
        .expect("dropped: not the locked address");
    b.send(0, VirtioNetHdr::plain(), &flow_frame(9, 1, 7, 2))
        .expect("b sends from the locked address");
    let got = a.expect_frames(1).expect("a receives");
    assert_eq!(got[0].frame, flow_frame(9, 1, 7, 2));
}

#[test]
fn a_gso_frame_below_the_minimum_gso_size_is_not_cut_in_software() {
    let no_tso = GuestOptions::linux(2)
        .without(feature::GUEST_TSO4 | feature::GUEST_TSO6 | feature::GUEST_ECN);
    let (mut daemon, mut a, mut b) = two(&["--min-gso-size", "100"], no_tso);
    b.post_rx_buffers(0, 64, 2048).expect("b posts");
    let frame = tcp_tso_frame(1, mac(2), 2, 1, &tagged_payload(7, 60_000));
    // gso_size 1: 60,000 segments if it were cut.
    a.send(0, VirtioNetHdr::tso4(1), &frame).expect("a sends");
    a.send(0, VirtioNetHdr::tso4(99), &frame).expect("a sends");
    daemon
        .wait_counter("a", "tx_drops_gso_size", 2)
        .expect("both dropped and counted");
    // A usual MSS still goes, cut into segments.
    let small = tcp_tso_frame(1, mac(2), 2, 1, &tagged_payload(8, 4 * usize::from(MSS)));
    a.send(0, VirtioNetHdr::tso4(MSS), &small).expect("a sends");
    let got = b.expect_frames(4).expect("b receives the segments");
    assert_eq!(got.len(), 4);
    assert_eq!(daemon.counter("b", "rx_packets").expect("b"), 4);
}
