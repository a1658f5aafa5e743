//! How a port's queue pairs are served by its worker threads (`--worker-threads`): every
//! pair forwards whichever thread serves it, a thread serves its rings in turn, and a port
//! gets no more threads than the CPUs the daemon may run on.

mod support;

use std::collections::HashSet;

use support::daemon::Daemon;
use support::frames::{VirtioNetHdr, udp_tag};
use support::guest::{GuestOptions, TestGuest};
use support::traffic::flow_frame;

const PAIRS: u16 = 4;

fn daemon(pairs: u16, extra: &[&str]) -> Daemon {
    let mut builder = Daemon::builder().port("a").port("b").queues(pairs);
    for arg in extra {
        builder = builder.arg(arg);
    }
    builder.spawn().expect("daemon starts")
}

/// Waits until the daemon has `n` threads that serve vrings (a new thread takes its name a
/// moment after it starts).
fn expect_vring_workers(daemon: &Daemon, n: usize) {
    let workers = || {
        daemon
            .thread_names()
            .iter()
            .filter(|name| *name == "vring_worker")
            .count()
    };
    support::wait_for(
        &format!("{n} vring worker threads"),
        support::TIMEOUT,
        || Ok((workers() == n).then_some(())),
    )
    .unwrap_or_else(|e| panic!("{e}: {} running", workers()));
}

#[test]
fn every_queue_pair_forwards_both_ways_with_any_number_of_worker_threads() {
    for threads in 1..=PAIRS {
        let daemon = daemon(PAIRS, &[&format!("--worker-threads={threads}")]);
        let mut a = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("a");
        let mut b = TestGuest::connect(&daemon.socket("b"), GuestOptions::linux(2)).expect("b");
        expect_vring_workers(&daemon, 2 * usize::from(threads));
        exchange(&mut a, &mut b, threads);
        exchange(&mut b, &mut a, threads);
    }
}

/// `sender` sends four flows on each of its pairs; `receiver` gets every frame once.
fn exchange(sender: &mut TestGuest, receiver: &mut TestGuest, threads: u16) {
    let (from, to) = (sender.id(), receiver.id());
    receiver.post_rx_buffers_all(64, 2048).expect("post");
    let mut sent = HashSet::new();
    for pair in 0..PAIRS {
        for flow in 0..4u16 {
            let tag = u32::from(threads) * 10_000 + u32::from(pair) * 100 + u32::from(flow);
            let frame = flow_frame(from, to, 2000 + flow, tag);
            sender
                .send(pair, VirtioNetHdr::plain(), &frame)
                .expect("send");
            sent.insert(tag);
        }
    }
    let got = receiver
        .expect_frames(sent.len())
        .unwrap_or_else(|e| panic!("{threads} threads, {from} -> {to}: {e}"));
    let tags: HashSet<u32> = got.iter().filter_map(|f| udp_tag(&f.frame)).collect();
    assert_eq!(
        (tags, got.len()),
        (sent.clone(), sent.len()),
        "{threads} threads, {from} -> {to}: every frame once"
    );
}

#[test]
fn a_worker_thread_takes_its_rings_in_turn_so_a_full_ring_cannot_hold_up_another() {
    // One thread for both pairs. Pair 0 gets 1000 frames and pair 1 one frame of the same
    // flow (so they reach b in the order the thread took them), all before either kick.
    let daemon = daemon(2, &["--worker-threads=1"]);
    let options = |id| GuestOptions::linux(id).queue_size(1024);
    let mut a = TestGuest::connect(&daemon.socket("a"), options(1)).expect("a");
    let mut b = TestGuest::connect(&daemon.socket("b"), options(2)).expect("b");
    expect_vring_workers(&daemon, 2);
    b.post_rx_buffers_all(1024, 2048).expect("post");
    let bulk: Vec<Vec<u8>> = (0..1000).map(|tag| flow_frame(1, 2, 7000, tag)).collect();
    a.queue_batch(0, &bulk).expect("queue bulk");
    a.queue_batch(1, &[flow_frame(1, 2, 7000, 5000)])
        .expect("queue the other ring's frame");
    a.kick_tx(0).expect("kick 0");
    a.kick_tx(1).expect("kick 1");
    let got = b.expect_frames(1001).expect("every frame arrives");
    let tags: Vec<u32> = got.iter().filter_map(|f| udp_tag(&f.frame)).collect();
    let at = tags
        .iter()
        .position(|&tag| tag == 5000)
        .expect("pair 1's frame arrives");
    // A batch is at most 256 chains: the other ring's frame goes after one or two of them,
    // not after the whole full ring.
    assert!(
        at <= 512,
        "pair 1's frame waited behind {at} of pair 0's 1000 frames"
    );
    let bulk_order: Vec<u32> = tags.iter().copied().filter(|&tag| tag != 5000).collect();
    assert_eq!(
        bulk_order,
        (0..1000).collect::<Vec<u32>>(),
        "pair 0's frames keep their order"
    );
}

#[test]
fn a_port_gets_one_worker_thread_per_cpu_it_may_run_on_by_default() {
    // Pinned to one CPU, each port's four pairs share one thread.
    let daemon = Daemon::builder()
        .port("a")
        .port("b")
        .queues(PAIRS)
        .within(&["taskset", "-c", "0"])
        .spawn()
        .expect("daemon starts");
    let _a = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("a");
    let _b = TestGuest::connect(&daemon.socket("b"), GuestOptions::linux(2)).expect("b");
    expect_vring_workers(&daemon, 2);
}

#[test]
fn worker_threads_beyond_the_queue_pairs_are_not_started() {
    let daemon = daemon(2, &["--worker-threads=8"]);
    let _a = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("a");
    let _b = TestGuest::connect(&daemon.socket("b"), GuestOptions::linux(2)).expect("b");
    // Two ports of two pairs: a thread per pair.
    expect_vring_workers(&daemon, 4);
}
