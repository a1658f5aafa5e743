//! A frontend's memory table is checked against the files behind it, and a file that
//! shrinks later cannot take the daemon down: the fault is absorbed and counted.

mod support;

use support::daemon::Daemon;
use support::frames::VirtioNetHdr;
use support::guest::{GuestOptions, TestGuest};
use support::guest_memory::{REGION_BASES, REGION_SIZE};
use support::traffic::{assert_traffic_both_ways, flow_frame};
use support::virtqueue::{DESC_F_WRITE, Desc, InFlight};

fn three() -> (Daemon, TestGuest, TestGuest, TestGuest) {
    let daemon = Daemon::start(&["a", "b", "c"], 1).expect("daemon starts");
    let a = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("a");
    let b = TestGuest::connect(&daemon.socket("b"), GuestOptions::linux(2)).expect("b");
    let c = TestGuest::connect(&daemon.socket("c"), GuestOptions::linux(3)).expect("c");
    (daemon, a, b, c)
}

#[test]
fn a_memory_region_larger_than_its_file_is_refused() {
    let (mut daemon, mut a, mut b, mut c) = three();
    let mut regions = b.memory_regions().expect("regions");
    // The last region is the file's last 16 MiB: asking for 32 MiB maps past its end.
    let last = regions.last_mut().expect("a region");
    last.memory_size = 2 * REGION_SIZE;
    let refused = b.connection().set_mem_table(&regions);
    assert!(
        refused.as_ref().is_err_and(|e| e.is_backend_refusal()),
        "the table was accepted: {refused:?}"
    );
    daemon
        .wait_counter("b", "memory_tables_refused", 1)
        .expect("the refusal is counted");
    daemon.check_running().expect("daemon survives");
    assert_traffic_both_ways(&mut a, &mut c, 0, 100);
    // b comes back with a sound table.
    let mut b = b.reconnect().expect("b reconnects");
    assert_traffic_both_ways(&mut a, &mut b, 0, 200);
}

#[test]
fn a_memory_file_shrunk_under_the_daemon_faults_without_killing_it() {
    let (mut daemon, mut a, mut b, mut c) = three();
    // b offers a buffer in the upper half of its last region, then cuts the file so that
    // the buffer lies past its end.
    let buffer = REGION_BASES[2] + REGION_SIZE - (4 << 20);
    let mut raw = b.raw(TestGuest::rx_vring(0)).expect("raw ring");
    let slots = raw.reserve(1).expect("slot");
    raw.write_desc(
        slots[0],
        Desc {
            addr: buffer,
            len: 2048,
            flags: DESC_F_WRITE,
            next: 0,
        },
    )
    .expect("descriptor");
    raw.publish(
        slots[0],
        InFlight {
            descs: slots.clone(),
            ..InFlight::default()
        },
    )
    .expect("publish");
    raw.ram
        .set_file_len(3 * REGION_SIZE - (8 << 20))
        .expect("shrink the file");
    raw.kick().expect("kick");
    a.send(0, VirtioNetHdr::plain(), &flow_frame(1, 2, 7, 1))
        .expect("a sends to b");
    daemon
        .wait_counter("b", "guest_memory_faults", 1)
        .expect("the fault is absorbed and counted");
    daemon.check_running().expect("daemon survives");
    assert_traffic_both_ways(&mut a, &mut c, 0, 100);
    assert_eq!(daemon.counter("a", "guest_memory_faults").expect("a"), 0);
    daemon.check_running().expect("daemon survives");
}
