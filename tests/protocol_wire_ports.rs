//! The ports without a guest behind them, driven from a vhost-user guest: a discard port
//! drops at the switch, a sink takes frames through its NIC model and then drops them, a
//! generator loads a guest with the UDP frames it was told to send.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use support::daemon::Daemon;
use support::frames::{BROADCAST, VirtioNetHdr, mac, udp_frame_of_len};
use support::guest::{GuestOptions, TestGuest};
use support::wait_for;

/// A MAC nobody has: frames to it are flooded, which is how a port that never sends (and so
/// is never learned) receives unicast.
const UNKNOWN: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

/// Sends `small` frames of 64 bytes and `large` of 1500 (long enough to leave the guest in
/// two parts, see `nic::frame`) from `guest` to `dst`; returns their total length.
fn send_mix(guest: &mut TestGuest, dst: [u8; 6], small: usize, large: usize) -> u64 {
    let mut frames: Vec<Vec<u8>> = (0..small)
        .map(|i| udp_frame_of_len(1, dst, 2, i as u32, 64))
        .collect();
    frames.extend((0..large).map(|i| udp_frame_of_len(1, dst, 2, 1000 + i as u32, 1500)));
    for frame in &frames {
        guest.send(0, VirtioNetHdr::plain(), frame).expect("send");
    }
    frames.iter().map(|f| f.len() as u64).sum()
}

#[test]
fn a_discard_port_counts_every_frame_it_drops_and_delivers_none() {
    let mut daemon = Daemon::builder()
        .port("a")
        .port("b")
        .arg("--discard")
        .arg("null")
        .spawn()
        .expect("daemon starts");
    let mut a = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("a");
    let mut b = TestGuest::connect(&daemon.socket("b"), GuestOptions::linux(2)).expect("b");
    b.post_rx_buffers_all(64, 2048).expect("post");

    // Unknown unicast floods to b and to the discard port alike.
    let bytes = send_mix(&mut a, UNKNOWN, 20, 5);
    assert_eq!(b.expect_frames(25).expect("b gets the flood").len(), 25);
    daemon
        .wait_counter("null", "rx_packets", 25)
        .expect("the discard port counts the frames");
    assert_eq!(daemon.counter("null", "rx_packets").unwrap(), 25);
    assert_eq!(daemon.counter("null", "rx_bytes").unwrap(), bytes);

    // A broadcast too; b's own frames reach the discard port as well.
    let frame = udp_frame_of_len(2, BROADCAST, 1, 7, 100);
    b.send(0, VirtioNetHdr::plain(), &frame).expect("send");
    daemon
        .wait_counter("null", "rx_packets", 26)
        .expect("broadcast counted");
    assert_eq!(
        daemon.counter("null", "rx_bytes").unwrap(),
        bytes + frame.len() as u64
    );
    // Nothing was modelled: no NIC drops, no parse errors, nothing buffered.
    for counter in ["rx_drops_not_ready", "rx_drops_no_buffer", "rx_buffered"] {
        assert_eq!(daemon.counter("null", counter).unwrap(), 0, "{counter}");
    }
    // Nor can its NIC be configured: it would take effect on nothing.
    let refused = std::process::Command::new(support::daemon::BINARY)
        .args(["rule", "--control"])
        .arg(daemon.control_socket())
        .args(["list", "null"])
        .output()
        .expect("run prism-vnic rule list");
    assert!(!refused.status.success(), "rules on a discard port refused");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("discard port"), "{stderr}");
    daemon.check_running().expect("daemon still running");
}

#[test]
fn a_sink_takes_frames_through_its_nic_and_counts_priority_apart() {
    let mut daemon = Daemon::builder()
        .port("a")
        .arg("--sink")
        .arg("s")
        .spawn()
        .expect("daemon starts");
    let mut a = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("a");
    let bytes = send_mix(&mut a, UNKNOWN, 30, 3);
    // One frame marked EF (DSCP 46), which the NIC's default DSCP trust classifies high.
    let mut marked = udp_frame_of_len(1, UNKNOWN, 2, 99, 80);
    marked[15] = 46 << 2;
    marked[24..26].copy_from_slice(&[0, 0]);
    let checksum = ipv4_checksum(&marked[14..34]);
    marked[24..26].copy_from_slice(&checksum.to_be_bytes());
    a.send(0, VirtioNetHdr::plain(), &marked).expect("send");

    daemon
        .wait_counter("s", "rx_packets", 34)
        .expect("the sink counts the frames");
    assert_eq!(daemon.counter("s", "rx_packets").unwrap(), 34);
    assert_eq!(
        daemon.counter("s", "rx_bytes").unwrap(),
        bytes + marked.len() as u64
    );
    assert_eq!(daemon.counter("s", "rx_high_packets").unwrap(), 1);
}

#[test]
fn a_generator_loads_a_guest_with_the_flows_it_was_given() {
    generator_frames_arrive_as_asked(128);
}

/// Jumbo frames go by reference into the NIC's burst (`TxFrame::lasting`) and over
/// several mergeable buffers into the guest.
#[test]
fn a_generator_sends_jumbo_frames_intact() {
    generator_frames_arrive_as_asked(9000);
}

fn generator_frames_arrive_as_asked(len: usize) {
    let guest_mac = mac(1);
    let spec = format!(
        "g=dst={},len={len},flows=4,pps=2000",
        guest_mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    );
    let mut daemon = Daemon::builder()
        .port("a")
        .arg("--gen")
        .arg(&spec)
        .spawn()
        .expect("daemon starts");
    let mut a = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("a");
    a.post_rx_buffers_all(128, 2048).expect("post");
    let got = a.expect_frames(16).expect("generated frames arrive");
    let mut flows = HashSet::new();
    for rx in &got {
        let frame = &rx.frame;
        assert_eq!(frame.len(), len, "the requested length");
        assert_eq!(&frame[..6], &guest_mac, "to the guest");
        assert_eq!(frame[23], 17, "UDP");
        assert!(
            ipv4_checksum(&frame[14..34]) == 0,
            "a valid IPv4 header checksum"
        );
        assert_eq!(
            usize::from(u16::from_be_bytes([frame[16], frame[17]])),
            len - 14,
            "IPv4 total length"
        );
        assert_eq!(u16::from_be_bytes([frame[36], frame[37]]), 9, "to port 9");
        assert!(frame[42..].iter().all(|&b| b == 0), "the zero payload");
        flows.insert(u16::from_be_bytes([frame[34], frame[35]]));
    }
    assert_eq!(
        flows,
        (1024..1028).collect::<HashSet<u16>>(),
        "four flows, by source port"
    );
    assert!(daemon.counter("g", "tx_packets").unwrap() >= 16);
}

/// `--gen` for a generator of 64-byte frames to `dst`, with `extra` (",pps=N") appended.
fn generator_spec(dst: [u8; 6], extra: &str) -> String {
    let dst = dst.map(|b| format!("{b:02x}")).join(":");
    format!("g=dst={dst},len=64{extra}")
}

/// An unpaced generator never goes idle and tries the frames waiting for a guest's full ring
/// at every batch, as a busy vhost TX worker does: the ring must not ask the guest for a kick
/// (a polling driver makes a syscall per refill when asked, and each kick wakes the port's
/// worker on the backend's CPU), and buffers posted without a kick still take the frames.
#[test]
fn an_unpaced_generator_fills_a_ring_without_asking_its_guest_for_kicks() {
    let mut daemon = Daemon::builder()
        .port("a")
        .arg("--gen")
        .arg(&generator_spec(mac(1), ""))
        .spawn()
        .expect("daemon starts");
    let mut a = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("a");
    a.post_rx_buffers(0, 32, 2048).expect("post");
    a.expect_frames(32).expect("the generator fills the ring");
    // The ring is out of buffers, and frames keep coming: had it asked for a kick, that
    // would show within a few of the generator's batches.
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(10));
        assert!(
            !a.rx_asks_for_kick(0).expect("read a's ring"),
            "the full ring asks for a kick per buffer posted"
        );
    }
    a.post_rx_buffers_without_kick(0, 8, 2048)
        .expect("post eight buffers");
    a.expect_frames(8)
        .expect("buffers posted without a kick are filled");
    daemon.check_running().expect("daemon survives");
}

/// A paced generator sleeps between its frames, and a sleeping sender cannot try again: a
/// ring it found full asks for a kick, so that the guest's buffers move the waiting frames.
#[test]
fn a_paced_generator_leaves_a_full_ring_asking_for_a_kick() {
    let mut daemon = Daemon::builder()
        .port("a")
        .arg("--gen")
        .arg(&generator_spec(mac(1), ",pps=2000"))
        .spawn()
        .expect("daemon starts");
    let mut a = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("a");
    a.post_rx_buffers(0, 4, 2048).expect("post");
    a.expect_frames(4).expect("the generator fills the ring");
    wait_for(
        "a's ring to ask for a kick",
        Duration::from_secs(30),
        || Ok(a.rx_asks_for_kick(0)?.then_some(())),
    )
    .expect("the full ring asks for a kick");
    assert!(
        a.post_rx_buffers_as_driver(0, 4, 2048).expect("post"),
        "the driver was asked to kick"
    );
    a.expect_frames(4)
        .expect("the kick moves the waiting frames");
    daemon.check_running().expect("daemon survives");
}

/// The Internet checksum of `bytes` (0 over a header whose checksum field is right).
fn ipv4_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
