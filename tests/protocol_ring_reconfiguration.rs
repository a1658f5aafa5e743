//! A guest may stop a ring and set it up again with another size, base or addresses (a driver
//! reset, `ethtool -G`, `ethtool -L`). Nothing the daemon cached about the old ring may be
//! used on the new one.

mod support;

use support::daemon::Daemon;
use support::guest::{GuestOptions, TestGuest};
use support::traffic::{assert_traffic_both_ways, expect_tag, send_tagged};

fn two() -> (Daemon, TestGuest, TestGuest) {
    let daemon = Daemon::start(&["a", "b"], 1).expect("daemon starts");
    let a = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("a");
    let b = TestGuest::connect(&daemon.socket("b"), GuestOptions::linux(2)).expect("b");
    (daemon, a, b)
}

#[test]
fn an_rx_ring_restarted_smaller_at_the_same_base_takes_frames_from_the_new_ring() {
    let (mut daemon, mut a, mut b) = two();
    // Many buffers posted, one used: the daemon has read an avail index far ahead of its own.
    b.post_rx_buffers(0, 200, 2048).expect("b posts");
    send_tagged(&mut a, 0, 2, 1).expect("send");
    expect_tag(&mut b, 1).expect("b receives");
    // The ring is stopped and set up again, 16 entries, resuming at the same base.
    let base = b
        .restart_vring(TestGuest::rx_vring(0), 16)
        .expect("restart");
    assert_eq!(base, 1, "the device took one buffer");
    b.post_rx_buffers(0, 4, 2048)
        .expect("b posts on the new ring");
    for tag in 2..6 {
        send_tagged(&mut a, 0, 2, tag).expect("send");
        expect_tag(&mut b, tag).expect("b receives on the new ring");
    }
    daemon.check_running().expect("daemon survives");
    assert_traffic_both_ways(&mut a, &mut b, 0, 100);
}

#[test]
fn a_tx_ring_restarted_smaller_at_the_same_base_is_read_from_the_new_ring() {
    let (mut daemon, mut a, mut b) = two();
    b.post_rx_buffers(0, 32, 2048).expect("b posts");
    send_tagged(&mut a, 0, 2, 1).expect("send");
    expect_tag(&mut b, 1).expect("b receives");
    a.flush_tx(0).expect("a's TX drains");
    a.restart_vring(TestGuest::tx_vring(0), 16)
        .expect("restart");
    for tag in 2..20 {
        send_tagged(&mut a, 0, 2, tag).expect("send on the new ring");
        expect_tag(&mut b, tag).expect("b receives");
    }
    daemon.check_running().expect("daemon survives");
}

#[test]
fn an_rx_ring_restarted_at_another_base_and_larger_keeps_working() {
    let (mut daemon, mut a, mut b) = two();
    b.post_rx_buffers(0, 100, 2048).expect("b posts");
    for tag in 1..4 {
        send_tagged(&mut a, 0, 2, tag).expect("send");
        expect_tag(&mut b, tag).expect("b receives");
    }
    // Restart twice: smaller, then larger again; frames arrive after each.
    for (round, size) in [(0u32, 8u16), (1, 512)] {
        b.restart_vring(TestGuest::rx_vring(0), size)
            .expect("restart");
        b.post_rx_buffers(0, 4, 2048).expect("b posts");
        let tag = 10 + 10 * round;
        send_tagged(&mut a, 0, 2, tag).expect("send");
        expect_tag(&mut b, tag).expect("b receives");
    }
    daemon.check_running().expect("daemon survives");
    assert_traffic_both_ways(&mut a, &mut b, 0, 200);
}

/// What a started ring's notification state is, whoever set it up: a driver initialises the
/// used ring with its flags clear, so it kicks for every buffer it adds until the device says
/// otherwise. A device that assumes "not asking" on a fresh ring never says otherwise unless
/// the ring runs dry; a polling driver (DPDK's virtio PMD, without EVENT_IDX) with a ring
/// larger than the traffic needs then makes a syscall per refill and wakes the daemon's thread
/// for each.
#[test]
fn an_rx_ring_that_never_runs_dry_stops_asking_for_a_kick_per_buffer_after_each_start() {
    use support::guest::feature::EVENT_IDX;
    for (what, options) in [
        (
            "without EVENT_IDX",
            GuestOptions::linux(2).without(EVENT_IDX),
        ),
        ("with EVENT_IDX", GuestOptions::linux(2)),
    ] {
        let mut daemon = Daemon::start(&["a", "b"], 1).expect("daemon starts");
        let mut a = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("a");
        let mut b = TestGuest::connect(&daemon.socket("b"), options.queue_size(1024)).expect("b");
        for (start, size) in [("first start", 0u16), ("after a restart", 512)] {
            if size != 0 {
                b.restart_vring(TestGuest::rx_vring(0), size)
                    .expect("restart");
            }
            b.post_rx_buffers(0, 256, 2048).expect("b posts");
            for tag in 1..=4 {
                send_tagged(&mut a, 0, 2, tag).expect("send");
                expect_tag(&mut b, tag).expect("b receives");
            }
            assert!(
                !b.rx_asks_for_kick(0).expect("read b's ring"),
                "{what}, {start}: b's ring, 252 buffers still posted, asks for a kick per buffer"
            );
        }
        daemon.check_running().expect("daemon survives");
    }
}
