//! `--metrics ADDR`: the real binary scraped over HTTP as Prometheus scrapes it, the text
//! checked by promtool, and its values the same as the control socket's counters.

mod support;

use std::io::Write;

use support::daemon::Daemon;
use support::frames::{VirtioNetHdr, mac, udp_frame_of_len};
use support::guest::{GuestOptions, TestGuest};
use support::scrape::{http_get, metrics_addr, promtool_check, sample};

const FRAMES: usize = 40;

fn daemon_with_a_rule() -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules.toml");
    let mut file = std::fs::File::create(&rules).expect("rules file");
    writeln!(
        file,
        "[[rule]]\nloc = 7\nproto = \"udp\"\ndst-port = 5000\nqueue = 0\nclass = \"high\""
    )
    .expect("write rules");
    let daemon = Daemon::builder()
        .port("a")
        .port("b")
        .arg("--metrics")
        .arg("127.0.0.1:0")
        .arg("--rules")
        .arg(&format!("b={}", rules.display()))
        .spawn()
        .expect("daemon starts");
    (daemon, dir)
}

#[test]
fn a_scrape_passes_promtool_and_counts_what_the_guests_sent() {
    let (mut daemon, _dir) = daemon_with_a_rule();
    let addr = metrics_addr(&mut daemon).expect("metrics address");
    let mut a = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("a");
    let mut b = TestGuest::connect(&daemon.socket("b"), GuestOptions::linux(2)).expect("b");
    b.post_rx_buffers_all(FRAMES, 2048).expect("post");
    for tag in 0..FRAMES {
        let frame = udp_frame_of_len(1, mac(2), 2, tag as u32, 200);
        a.send(0, VirtioNetHdr::plain(), &frame).expect("send");
    }
    assert_eq!(b.expect_frames(FRAMES).expect("b receives").len(), FRAMES);
    daemon
        .wait_counter("b", "rx_packets", FRAMES as u64)
        .expect("delivered");

    let answer = http_get(addr, "/metrics", None).expect("scrape");
    assert_eq!(answer.status, "HTTP/1.1 200 OK");
    assert!(
        answer
            .headers
            .contains("Content-Type: text/plain; version=0.0.4"),
        "{}",
        answer.headers
    );
    let text = answer.body;
    let (clean, said) = promtool_check(&text).expect("promtool runs");
    assert!(clean && said.trim().is_empty(), "promtool: {said}\n{text}");

    // The same values as the control socket's, per port and queue.
    let frames = FRAMES as f64;
    let b0 = r#"port="b",queue="0""#;
    let a0 = r#"port="a",queue="0""#;
    assert_eq!(
        sample(&text, "prism_vnic_rx_packets_total", b0),
        Some(frames)
    );
    assert_eq!(
        sample(&text, "prism_vnic_tx_packets_total", a0),
        Some(frames)
    );
    assert_eq!(
        sample(&text, "prism_vnic_rx_bytes_total", b0),
        Some(daemon.counter("b", "rx_bytes").unwrap() as f64)
    );
    assert_eq!(
        sample(&text, "prism_vnic_rx_high_packets_total", b0),
        Some(frames),
        "the rule makes them high"
    );
    assert_eq!(
        sample(&text, "prism_vnic_connections_total", r#"port="a""#),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "prism_vnic_port_connected",
            r#"port="b",kind="vhost-user""#
        ),
        Some(1.0)
    );
    // b never sent, so a's frames to it were flooded.
    assert_eq!(
        sample(&text, "prism_vnic_switch_flooded_total", ""),
        Some(frames)
    );
    assert_eq!(
        sample(
            &text,
            "prism_vnic_link_rate_bytes_per_second",
            r#"port="b""#
        ),
        Some(100e9 / 8.0)
    );
    let hits = text
        .lines()
        .find(|line| line.starts_with(r#"prism_vnic_rule_hits_total{port="b",loc="7","#))
        .unwrap_or_else(|| panic!("rule hits of b's rule in\n{text}"));
    assert!(hits.ends_with(&format!(" {FRAMES}")), "{hits}");

    // Every delivered frame is in the high class's residence histogram of queue 0, and the
    // +Inf bucket holds them all.
    let high = r#"port="b",queue="0",class="high""#;
    assert_eq!(
        sample(&text, "prism_vnic_rx_residence_seconds_count", high),
        Some(frames)
    );
    let inf = r#"port="b",queue="0",class="high",le="+Inf""#;
    assert_eq!(
        sample(&text, "prism_vnic_rx_residence_seconds_bucket", inf),
        Some(frames)
    );
    assert!(sample(&text, "prism_vnic_rx_residence_seconds_sum", high).is_some_and(|s| s > 0.0));
    daemon.check_running().expect("daemon still running");
}

#[test]
fn openmetrics_is_served_to_a_scraper_that_asks_for_it() {
    let (mut daemon, _dir) = daemon_with_a_rule();
    let addr = metrics_addr(&mut daemon).expect("metrics address");
    let accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let answer = http_get(addr, "/metrics", Some(accept)).expect("scrape");
    assert_eq!(answer.status, "HTTP/1.1 200 OK");
    assert!(
        answer
            .headers
            .contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "{}",
        answer.headers
    );
    assert!(answer.body.ends_with("# EOF\n"), "{}", answer.body);
    // OpenMetrics names the counter family without `_total`, its samples with it.
    assert!(
        answer
            .body
            .contains("# TYPE prism_vnic_rx_packets counter\n"),
        "{}",
        answer.body
    );
    assert!(
        answer
            .body
            .contains(r#"prism_vnic_rx_packets_total{port="a",queue="0"} 0"#)
    );
}

#[test]
fn other_paths_and_methods_are_refused_and_bad_requests_harm_nothing() {
    let (mut daemon, _dir) = daemon_with_a_rule();
    let addr = metrics_addr(&mut daemon).expect("metrics address");
    assert_eq!(
        http_get(addr, "/", None).expect("GET /").status,
        "HTTP/1.1 404 Not Found"
    );
    // Garbage, an endless head, and connections that send nothing: each is closed, and
    // the next scrape is answered.
    let mut garbage = std::net::TcpStream::connect(addr).expect("connect");
    garbage.write_all(b"\x00\x01hello\r\n\r\n").expect("write");
    let mut endless = std::net::TcpStream::connect(addr).expect("connect");
    let _ = endless.write_all(&[b'x'; 64 * 1024]);
    let idle: Vec<_> = (0..20)
        .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
        .collect();
    drop(idle);
    let answer = support::wait_for("a scrape after the bad clients", support::TIMEOUT, || {
        Ok(http_get(addr, "/metrics", None)
            .ok()
            .filter(|a| a.status == "HTTP/1.1 200 OK"))
    })
    .expect("scrape");
    assert!(answer.body.contains("prism_vnic_rx_packets_total"));
    daemon.check_running().expect("daemon still running");
}

#[test]
fn a_taken_metrics_address_fails_at_start_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let dir = tempfile::tempdir().expect("tempdir");
    let output = std::process::Command::new(support::daemon::BINARY)
        .arg("--port")
        .arg(format!("a={}", dir.path().join("a.sock").display()))
        .arg("--control")
        .arg(dir.path().join("control.sock"))
        .arg("--metrics")
        .arg(addr.to_string())
        .output()
        .expect("run prism-vnic");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen for metrics on {addr}")),
        "{stderr}"
    );
}
