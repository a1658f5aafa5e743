//! The NIC model through a real vhost-user frontend: hardware priority classification into
//! the priority RX queue under a bulk flood, flow rules changed at run time, link latency,
//! and packet capture read back by tcpdump.

mod support;

use std::collections::HashSet;
use std::process::Command;

use support::daemon::{BINARY, Daemon};
use support::frames::{VirtioNetHdr, dscp_frame as frame, ip6, mac, tagged_payload, udp_tag};
use support::guest::{GuestOptions, TestGuest};
use support::traffic::expect_tag;

const PAIRS: u16 = 4;
const EF: u8 = 46;

fn two_guests(extra: &[&str]) -> (Daemon, TestGuest, TestGuest) {
    let mut builder = Daemon::builder().port("a").port("b").queues(PAIRS);
    for arg in extra {
        builder = builder.arg(arg);
    }
    let daemon = builder.spawn().expect("daemon starts");
    let a = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("a");
    let b = TestGuest::connect(&daemon.socket("b"), GuestOptions::linux(2)).expect("b");
    (daemon, a, b)
}

#[test]
fn priority_frames_land_on_the_priority_queue_while_bulk_floods_the_others() {
    // A small NIC buffer and few ring buffers on the bulk queues, so the flood overruns them
    // and the NIC drops bulk.
    let (mut daemon, mut a, mut b) = two_guests(&["--rx-buffer", "16"]);
    b.post_rx_buffers(0, 64, 2048).expect("post");
    for pair in 1..PAIRS {
        b.post_rx_buffers(pair, 8, 2048).expect("post");
    }
    let mut priority_tags = HashSet::new();
    for i in 0..600u32 {
        // Bulk: many flows, DSCP 0.
        a.send(
            (i % u32::from(PAIRS)) as u16,
            VirtioNetHdr::plain(),
            &frame(2000 + (i % 64) as u16, 5000, 0, i),
        )
        .expect("send bulk");
        if i % 20 == 0 {
            let tag = 100_000 + i;
            a.send(0, VirtioNetHdr::plain(), &frame(7000, 7001, EF, tag))
                .expect("send EF");
            priority_tags.insert(tag);
        }
    }
    // Every EF frame arrives, and on queue 0; nothing else is on queue 0.
    let mut seen = HashSet::new();
    while seen.len() < priority_tags.len() {
        let got = b
            .recv(0, support::TIMEOUT)
            .expect("frames on the priority queue");
        assert!(
            !got.is_empty(),
            "priority frames missing: {:?}",
            priority_tags.difference(&seen)
        );
        for f in got {
            let tag = udp_tag(&f.frame).expect("tagged");
            assert!(
                priority_tags.contains(&tag),
                "bulk frame {tag} on the priority queue"
            );
            seen.insert(tag);
        }
    }
    daemon
        .wait_counter("b", "rx_high_packets", priority_tags.len() as u64)
        .expect("high counted");
    assert_eq!(
        daemon
            .queue_counter("b", 0, "rx_high_packets")
            .expect("counter"),
        priority_tags.len() as u64
    );
    assert_eq!(
        daemon
            .queue_counter("b", 0, "rx_drops_no_buffer")
            .expect("counter"),
        0
    );
    let bulk_drops: u64 = (1..PAIRS)
        .map(|q| {
            daemon
                .queue_counter("b", q, "rx_drops_no_buffer")
                .expect("counter")
        })
        .sum();
    assert!(
        bulk_drops > 0,
        "the flood should have overrun the bulk queues"
    );
}

#[test]
fn a_rule_added_at_run_time_takes_effect_on_the_next_frame() {
    let (daemon, mut a, mut b) = two_guests(&[]);
    b.post_rx_buffers_all(16, 2048).expect("post");
    a.send(0, VirtioNetHdr::plain(), &frame(4000, 5001, 0, 1))
        .expect("send");
    let before = expect_tag(&mut b, 1).expect("frame before the rule");
    assert_ne!(before.pair, 0, "an unmarked flow avoids the priority queue");

    daemon.control(&[
        "rule", "add", "b", "loc", "3", "proto", "udp", "dst-port", "5001", "action", "queue", "0",
        "class", "high",
    ]);
    a.send(0, VirtioNetHdr::plain(), &frame(4000, 5001, 0, 2))
        .expect("send");
    let after = expect_tag(&mut b, 2).expect("frame after the rule");
    assert_eq!(after.pair, 0, "the rule steers the very next frame");
    let listing = daemon.control(&["rule", "list", "b"]);
    assert!(
        listing.contains("loc 3") && listing.contains("hits 1"),
        "{listing}"
    );

    daemon.control(&[
        "rule", "add", "b", "loc", "1", "proto", "udp", "dst-port", "5001", "action", "drop",
    ]);
    a.send(0, VirtioNetHdr::plain(), &frame(4000, 5001, 0, 3))
        .expect("send");
    a.send(0, VirtioNetHdr::plain(), &frame(4000, 5002, 0, 4))
        .expect("send");
    expect_tag(&mut b, 4).expect("an unmatched frame still passes");
    daemon.control(&["rule", "del", "b", "1"]);
    let listing = daemon.control(&["rule", "list", "b"]);
    assert!(!listing.contains("action drop"), "{listing}");
}

/// An IPv6/UDP frame of 4000 bytes whose UDP header comes after a 512-byte Destination
/// Options header: past the head a large frame's sender copies out for classification.
fn frame_with_long_ipv6_options(dst_port: u16, tag: u32) -> Vec<u8> {
    const OPTIONS_LEN: usize = 512;
    let payload_len = 4000 - 14 - 40 - OPTIONS_LEN - 8;
    let mut frame = Vec::new();
    frame.extend_from_slice(&mac(2));
    frame.extend_from_slice(&mac(1));
    frame.extend_from_slice(&0x86ddu16.to_be_bytes());
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    frame.extend_from_slice(&((OPTIONS_LEN + 8 + payload_len) as u16).to_be_bytes());
    frame.extend_from_slice(&[60, 64]); // next: Destination Options; hop limit
    frame.extend_from_slice(&ip6(1));
    frame.extend_from_slice(&ip6(2));
    // Destination Options: next header UDP, length in 8-byte units beyond the first, then
    // one PadN option filling the rest.
    frame.extend_from_slice(&[17, (OPTIONS_LEN / 8 - 1) as u8, 1, (OPTIONS_LEN - 4) as u8]);
    frame.resize(frame.len() + OPTIONS_LEN - 4, 0);
    frame.extend_from_slice(&4000u16.to_be_bytes());
    frame.extend_from_slice(&dst_port.to_be_bytes());
    frame.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(&tagged_payload(tag, payload_len));
    frame
}

#[test]
fn a_large_frame_whose_headers_go_past_the_copied_head_is_classified_on_all_of_them() {
    let (mut daemon, mut a, mut b) = two_guests(&[]);
    daemon.control(&[
        "rule", "add", "b", "loc", "1", "proto", "udp", "dst-port", "5001", "action", "queue", "0",
        "class", "high",
    ]);
    b.post_rx_buffers_all(16, 2048).expect("post");
    let frame = frame_with_long_ipv6_options(5001, 7);
    a.send(0, VirtioNetHdr::plain(), &frame).expect("send");
    let got = b.recv_any(1, support::TIMEOUT).expect("recv");
    let got = got.first().expect("the frame arrives");
    assert!(got.frame == frame, "the frame was altered");
    assert_eq!(
        got.pair, 0,
        "the rule on the UDP port behind the options steers it"
    );
    assert_eq!(daemon.counter("b", "rx_parse_errors").expect("stats"), 0);
    let listing = daemon.control(&["rule", "list", "b"]);
    assert!(listing.contains("hits 1"), "{listing}");
}

#[test]
fn a_bad_rule_or_port_is_refused_with_a_reason() {
    let (daemon, _a, _b) = two_guests(&[]);
    let output = Command::new(BINARY)
        .args(["rule", "--control"])
        .arg(daemon.control_socket())
        .args([
            "add", "b", "loc", "1", "dst-port", "99999", "action", "drop",
        ])
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("99999"), "{stderr}");
    let output = Command::new(BINARY)
        .args(["link", "--control"])
        .arg(daemon.control_socket())
        .args(["nope", "--rate", "1G"])
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&output.stderr).contains("no port"));
}

#[test]
fn link_latency_shows_in_the_residence_time() {
    let (mut daemon, mut a, mut b) = two_guests(&["--link-latency-us", "3000"]);
    b.post_rx_buffers_all(8, 2048).expect("post");
    for tag in 0..5 {
        a.send(0, VirtioNetHdr::plain(), &frame(4000, 5000, 0, tag))
            .expect("send");
        expect_tag(&mut b, tag).expect("delayed frame still arrives");
    }
    let stats = daemon.stats().expect("stats");
    let port = stats["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "b")
        .unwrap();
    let p50s: Vec<u64> = port["queues"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|q| q["residence"]["normal"]["count"].as_u64().unwrap_or(0) > 0)
        .map(|q| q["residence"]["normal"]["p50_ns"].as_u64().unwrap())
        .collect();
    assert!(!p50s.is_empty(), "residence recorded");
    // 2 significant digits: within 1% below the configured latency at worst.
    assert!(
        p50s.iter().all(|&p50| p50 >= 2_970_000),
        "residence {p50s:?} below the 3 ms latency"
    );
}

#[test]
fn capture_written_by_the_nic_is_read_back_by_tcpdump() {
    if Command::new("tcpdump").arg("--version").output().is_err() {
        panic!("tcpdump is required (apt-get install tcpdump; .ci/install-deps does)");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (daemon, mut a, mut b) = two_guests(&["--capture-dir", dir.path().to_str().unwrap()]);
    let file = dir.path().join("b.pcapng");
    b.post_rx_buffers_all(16, 2048).expect("post");
    daemon.control(&["capture", "b", file.to_str().unwrap()]);
    for tag in 0..5 {
        a.send(
            0,
            VirtioNetHdr::plain(),
            &frame(4000 + tag as u16, 5000, if tag == 0 { EF } else { 0 }, tag),
        )
        .expect("send");
        expect_tag(&mut b, tag).expect("frame arrives");
    }
    daemon.control(&["capture", "b"]);
    let output = Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(&file)
        .output()
        .expect("tcpdump");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "tcpdump: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("10.0.0.1.40") && l.contains("> 10.0.0.2.5000"))
            .count(),
        5,
        "{text}"
    );
    // The queue and class are recorded as packet comments.
    let raw = std::fs::read(&file).expect("read capture");
    let has = |needle: &str| raw.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(
        has("queue=0 class=high"),
        "EF frame recorded on queue 0 as high"
    );
    assert!(has("class=normal"));
}

/// The residence p50 of a class on port `port`, over the queues that saw any.
fn residence_p50s(daemon: &mut Daemon, port: &str, class: &str) -> Vec<u64> {
    let stats = daemon.stats().expect("stats");
    stats["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == port)
        .unwrap()["queues"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|q| q["residence"][class]["count"].as_u64().unwrap_or(0) > 0)
        .map(|q| q["residence"][class]["p50_ns"].as_u64().unwrap())
        .collect()
}

#[test]
fn a_class_delay_holds_back_that_class_only() {
    let (mut daemon, mut a, mut b) = two_guests(&[]);
    b.post_rx_buffers_all(8, 2048).expect("post");
    let answer = daemon.control(&["link", "b", "--delay-us", "50000", "--class", "high"]);
    assert!(answer.contains("50000000"), "{answer}");
    // The EF frame goes first but is held back 50 ms; the normal one sent after it overtakes.
    a.send(0, VirtioNetHdr::plain(), &frame(7000, 7001, EF, 1))
        .expect("send EF");
    a.send(0, VirtioNetHdr::plain(), &frame(4000, 5000, 0, 2))
        .expect("send normal");
    let first = b.recv_any(1, support::TIMEOUT).expect("recv");
    assert_eq!(
        udp_tag(&first.first().expect("a frame").frame),
        Some(2),
        "the normal frame is not delayed"
    );
    expect_tag(&mut b, 1).expect("the delayed EF frame still arrives");
    let high = residence_p50s(&mut daemon, "b", "high");
    assert!(
        !high.is_empty() && high.iter().all(|&p50| p50 >= 49_500_000),
        "high residence {high:?} below the 50 ms delay"
    );
    let normal = residence_p50s(&mut daemon, "b", "normal");
    assert!(
        !normal.is_empty() && normal.iter().all(|&p50| p50 < 49_500_000),
        "normal residence {normal:?} carries the high class's delay"
    );
    // 0 removes the delay.
    daemon.control(&["link", "b", "--delay-us", "0", "--class", "high"]);
    let stats = daemon.stats().expect("stats");
    let link = &stats["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "b")
        .unwrap()["link"];
    assert_eq!(link["class_delay_ns"]["high"], 0, "{link}");
}

#[test]
fn a_class_delay_without_a_valid_class_is_refused_with_a_reason() {
    let (daemon, _a, _b) = two_guests(&[]);
    let run = |args: &[&str]| {
        Command::new(BINARY)
            .args(["link", "--control"])
            .arg(daemon.control_socket())
            .arg("b")
            .args(args)
            .output()
            .expect("run")
    };
    let output = run(&["--delay-us", "10", "--class", "urgent"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("urgent"));
    let output = run(&["--delay-us", "10"]);
    assert!(!output.status.success(), "a delay needs a class");
    let output = run(&["--delay-us", "20000000", "--class", "high"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("more than 10 s"));
}
