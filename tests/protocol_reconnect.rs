//! Frontends that come and go: a CI host reboots guests all day, so a connection must give
//! back everything it took (file descriptors, threads, memory) when it ends.

mod support;

use support::daemon::{Daemon, Resources};
use support::guest::{GuestOptions, TestGuest};
use support::traffic::assert_traffic_both_ways;

/// One connect, a frame each way with a guest that stays, and a disconnect.
fn cycle(daemon: &Daemon, stays: &mut TestGuest, tag: u32) {
    let mut comes = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("a");
    assert_traffic_both_ways(&mut comes, stays, 0, tag);
    drop(comes.disconnect());
}

/// Waits until the daemon has torn the last connection down (its thread count settles).
fn settled(daemon: &Daemon, want: impl Fn(&Resources) -> bool) -> Resources {
    let mut last = daemon.resources().expect("resources");
    let _ = support::wait_for("the daemon's resources to settle", support::TIMEOUT, || {
        last = daemon.resources()?;
        Ok(want(&last).then_some(()))
    });
    last
}

/// The largest fd and thread counts over a few samples.
fn steady(daemon: &Daemon) -> Resources {
    let mut most = daemon.resources().expect("resources");
    for _ in 0..10 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let now = daemon.resources().expect("resources");
        most.fds = most.fds.max(now.fds);
        most.threads = most.threads.max(now.threads);
        most.rss_kib = most.rss_kib.max(now.rss_kib);
    }
    most
}

#[test]
fn connections_that_come_and_go_leave_no_file_descriptors_or_threads_behind() {
    let mut daemon = Daemon::start(&["a", "b"], 2).expect("daemon starts");
    let mut b = TestGuest::connect(&daemon.socket("b"), GuestOptions::linux(2)).expect("b");
    // Warm up: the first connections may create what lives as long as the daemon.
    for tag in 0..3 {
        cycle(&daemon, &mut b, 100 * tag);
    }
    // The most seen over a moment: between connections the daemon tears one connection's
    // threads down and starts the next one's, so a single sample may catch it in between.
    let before = steady(&daemon);
    for tag in 3..43 {
        cycle(&daemon, &mut b, 100 * tag);
    }
    let after = settled(&daemon, |now| {
        now.fds <= before.fds && now.threads <= before.threads
    });
    daemon.check_running().expect("daemon survives");
    assert!(
        after.fds <= before.fds,
        "file descriptors grew from {} to {} over 40 connections",
        before.fds,
        after.fds
    );
    assert!(
        after.threads <= before.threads,
        "threads grew from {} to {} over 40 connections",
        before.threads,
        after.threads
    );
}
