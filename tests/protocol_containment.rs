//! A failure while serving one guest stays with that guest's port. The failure is injected
//! (`PRISM_VNIC_INJECT_RX_FAILURE`: writing a frame of that many bytes into a guest's RX ring
//! panics), since no guest input is meant to reach a panic any more: what is checked is that
//! if one does, the ring is quarantined and counted, the threads that wrote into it (other
//! guests' senders) live on, and the guest gets its ring back by setting it up again.

mod support;

use support::daemon::Daemon;
use support::frames::VirtioNetHdr;
use support::guest::{GuestOptions, TestGuest};
use support::traffic::{assert_traffic_both_ways, flow_frame};

#[test]
fn a_failure_writing_into_one_guests_ring_stays_with_that_port() {
    let frame = flow_frame(1, 2, 7, 1);
    let failing = (12 + frame.len()).to_string();
    let mut daemon = Daemon::builder()
        .queues(1)
        .port("a")
        .port("b")
        .port("c")
        .env("PRISM_VNIC_INJECT_RX_FAILURE", &failing)
        .spawn()
        .expect("daemon starts");
    let mut a = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("a");
    let mut b = TestGuest::connect(&daemon.socket("b"), GuestOptions::linux(2)).expect("b");
    let mut c = TestGuest::connect(&daemon.socket("c"), GuestOptions::linux(3)).expect("c");
    // A chain of two buffers takes the general path, where the failure is injected.
    b.post_rx_chain(0, &[64, 2048]).expect("b posts");
    a.send(0, VirtioNetHdr::plain(), &frame)
        .expect("a sends to b");
    daemon
        .wait_counter("b", "worker_failures", 1)
        .expect("the failure is counted on b");
    daemon.check_running().expect("daemon survives");
    // a's sender, which failed writing into b's ring, still forwards; so does c's.
    assert_traffic_both_ways(&mut a, &mut c, 0, 100);
    for tag in 200..210 {
        c.send(0, VirtioNetHdr::plain(), &flow_frame(3, 2, 7, tag))
            .expect("c sends to the quarantined b");
    }
    assert_traffic_both_ways(&mut c, &mut a, 0, 300);
    assert_eq!(daemon.counter("a", "worker_failures").expect("a"), 0);
    assert_eq!(daemon.counter("c", "worker_failures").expect("c"), 0);
    // b sets its ring up again (as a driver reset does): the quarantine ends.
    b.restart_vring(TestGuest::rx_vring(0), 256)
        .expect("b restarts its RX ring");
    assert_traffic_both_ways(&mut a, &mut b, 0, 400);
    daemon.check_running().expect("daemon survives");
}
