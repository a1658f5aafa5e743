//! The VXLAN wire port (`--vxlan`), end to end: against the Linux kernel's vxlan device in
//! network namespaces this test makes (both ways), and between two prism-vnic processes
//! carrying the traffic of protocol-level frontends.

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;

use etherparse::PacketBuilder;
use support::daemon::{BINARY, Daemon};
use support::frames::{BROADCAST, VirtioNetHdr, ip, mac, udp_frame_of_len, udp_tag};
use support::guest::{GuestOptions, TestGuest};
use support::traffic::{assert_traffic_both_ways, expect_tag};
use support::{TIMEOUT, wait_for};

const VNI: u32 = 4224;

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn control(daemon: &Daemon, args: &[&str]) -> String {
    let mut full = vec![args[0], "--control"];
    let socket = daemon.control_socket().display().to_string();
    full.push(&socket);
    full.extend(&args[1..]);
    run(BINARY, &full).unwrap_or_else(|e| panic!("{e}"))
}

/// Two network namespaces joined by a veth pair, removed when dropped: `a` (10.224.0.1)
/// for prism-vnic, `b` (10.224.0.2) for the kernel's vxlan device, whose inner address is
/// guest 2's (10.0.0.2).
struct Namespaces {
    a: String,
    b: String,
}

impl Namespaces {
    fn create() -> Result<Namespaces, String> {
        let pid = std::process::id();
        let ns = Namespaces {
            a: format!("v24-vxlan-a-{pid}"),
            b: format!("v24-vxlan-b-{pid}"),
        };
        run("ip", &["netns", "add", &ns.a])?;
        run("ip", &["netns", "add", &ns.b])?;
        let (a, b) = (ns.a.as_str(), ns.b.as_str());
        for args in [
            vec![
                "-n", a, "link", "add", "v24", "type", "veth", "peer", "name", "v24", "netns", b,
            ],
            vec!["-n", a, "addr", "add", "10.224.0.1/24", "dev", "v24"],
            vec!["-n", b, "addr", "add", "10.224.0.2/24", "dev", "v24"],
            vec!["-n", a, "link", "set", "v24", "up"],
            vec!["-n", b, "link", "set", "v24", "up"],
            vec!["-n", a, "link", "set", "lo", "up"],
            vec!["-n", b, "link", "set", "lo", "up"],
        ] {
            run("ip", &args)?;
        }
        let vni = VNI.to_string();
        for args in [
            vec![
                "-n",
                b,
                "link",
                "add",
                "vx-v24",
                "type",
                "vxlan",
                "id",
                &vni,
                "remote",
                "10.224.0.1",
                "local",
                "10.224.0.2",
                "dstport",
                "8472",
            ],
            vec![
                "-n",
                b,
                "link",
                "set",
                "vx-v24",
                "address",
                "52:54:00:12:34:02",
            ],
            vec!["-n", b, "addr", "add", "10.0.0.2/24", "dev", "vx-v24"],
            vec!["-n", b, "link", "set", "vx-v24", "up"],
        ] {
            run("ip", &args)?;
        }
        Ok(ns)
    }

    /// A counter of the kernel's vxlan device (`rx_packets`, `tx_packets`).
    fn kernel_counter(&self, name: &str) -> u64 {
        let path = format!("/sys/class/net/vx-v24/statistics/{name}");
        run("ip", &["netns", "exec", &self.b, "cat", &path])
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // Deleting a namespace takes its veth end, vxlan device and addresses with it.
        let _ = run("ip", &["netns", "del", &self.a]);
        let _ = run("ip", &["netns", "del", &self.b]);
    }
}

/// An ICMP echo request from guest 1 to 10.0.0.2.
fn echo_request(seq: u16) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(mac(1), mac(2))
        .ipv4(ip(1), ip(2), 64)
        .icmpv4_echo_request(0x2424, seq);
    let payload = b"prism-vnic vxlan";
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut frame, payload).expect("echo request");
    frame
}

/// An ARP reply from guest 1 (10.0.0.1) to `to`, who asked.
fn arp_reply(to_mac: [u8; 6], to_ip: [u8; 4]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(42);
    frame.extend_from_slice(&to_mac);
    frame.extend_from_slice(&mac(1));
    frame.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
    frame.extend_from_slice(&mac(1));
    frame.extend_from_slice(&ip(1));
    frame.extend_from_slice(&to_mac);
    frame.extend_from_slice(&to_ip);
    frame
}

#[test]
fn the_kernels_vxlan_device_answers_a_guest_through_the_vxlan_port() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let ns = Namespaces::create().expect("namespaces");
    let mut daemon = Daemon::builder()
        .port("a")
        .within(&["ip", "netns", "exec", &ns.a])
        .arg("--vxlan")
        .arg(&format!(
            "w=remote=10.224.0.2,vni={VNI},local=10.224.0.1:8472"
        ))
        .spawn()
        .expect("daemon starts");
    let mut guest = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("a");
    guest.post_rx_buffers_all(64, 2048).expect("post");

    // Guest -> kernel: echo requests, encapsulated by prism-vnic, decapsulated by the
    // kernel; kernel -> guest: its ARP request for 10.0.0.1 and its echo replies.
    let mut replies = 0;
    let mut seq = 0u16;
    wait_for("echo replies from the kernel", TIMEOUT, || {
        seq += 1;
        guest
            .send(0, VirtioNetHdr::plain(), &echo_request(seq))
            .map_err(|e| support::HarnessError::Frame(e.to_string()))?;
        for frame in guest
            .recv_any(1, std::time::Duration::from_millis(200))
            .unwrap_or_default()
        {
            guest.post_rx_buffers(frame.pair, frame.used_lens.len(), 2048)?;
            let f = &frame.frame;
            if f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[21] == 1 && f[38..42] == ip(1) {
                let mut asker_mac = [0u8; 6];
                asker_mac.copy_from_slice(&f[22..28]);
                let mut asker_ip = [0u8; 4];
                asker_ip.copy_from_slice(&f[28..32]);
                guest.send(0, VirtioNetHdr::plain(), &arp_reply(asker_mac, asker_ip))?;
            }
            // IPv4, ICMP, echo reply, from 10.0.0.2.
            if f.len() >= 42 && f[12..14] == [0x08, 0x00] && f[23] == 1 && f[34] == 0 {
                assert_eq!(f[26..30], ip(2));
                replies += 1;
            }
        }
        Ok((replies >= 3).then_some(()))
    })
    .expect("the kernel answers");
    assert!(
        ns.kernel_counter("rx_packets") >= 3,
        "kernel decapsulated our frames"
    );
    assert!(
        ns.kernel_counter("tx_packets") >= 3,
        "kernel encapsulated its answers"
    );
    // The switch learned the kernel device's MAC behind the VXLAN port.
    let macs = control(&daemon, &["macs"]);
    assert!(macs.contains("52:54:00:12:34:02  w"), "{macs}");
    assert_eq!(daemon.counter("w", "vxlan_rx_drops_vni").unwrap(), 0);
    daemon.check_running().expect("running");
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

/// Two daemons whose VXLAN ports face each other on loopback: guest 1 on the first, guest 2
/// on the second.
fn two_hosts() -> (Daemon, Daemon, u16) {
    let (p1, p2) = (free_udp_port(), free_udp_port());
    let host = |port: &str, local: u16, remote: u16| {
        Daemon::builder()
            .port(port)
            .arg("--vxlan")
            .arg(&format!(
                "w=remote=127.0.0.1:{remote},vni={VNI},local=127.0.0.1:{local}"
            ))
            .spawn()
            .expect("daemon starts")
    };
    (host("a", p1, p2), host("b", p2, p1), p2)
}

#[test]
fn two_prism_vnic_hosts_carry_guest_traffic_over_vxlan_both_ways() {
    let (mut one, mut two, _) = two_hosts();
    let mut a = TestGuest::connect(&one.socket("a"), GuestOptions::linux(1)).expect("a");
    let mut b = TestGuest::connect(&two.socket("b"), GuestOptions::linux(2)).expect("b");
    assert_traffic_both_ways(&mut a, &mut b, 0, 10);
    // Each switch learned the other guest behind its VXLAN port.
    assert!(control(&one, &["macs"]).contains("52:54:00:12:34:02  w"));
    assert!(control(&two, &["macs"]).contains("52:54:00:12:34:01  w"));

    // A burst of many flows (several outer source ports) and a broadcast arrive whole.
    b.post_rx_buffers_all(128, 2048).expect("post");
    let frames: Vec<Vec<u8>> = (0..64u32)
        .map(|tag| {
            let mut f = udp_frame_of_len(1, mac(2), 2, 1000 + tag, 300);
            f[34..36].copy_from_slice(&(2000 + tag as u16).to_be_bytes());
            // The UDP checksum covers the ports: zero means none (IPv4).
            f[40..42].copy_from_slice(&[0, 0]);
            f
        })
        .collect();
    a.send_batch(0, &frames).expect("burst");
    let got = b.expect_frames(64).expect("the burst arrives");
    let mut tags: Vec<u32> = got.iter().filter_map(|f| udp_tag(&f.frame)).collect();
    tags.sort_unstable();
    assert_eq!(tags, (1000..1064).collect::<Vec<u32>>());
    let broadcast = udp_frame_of_len(1, BROADCAST, 2, 7777, 100);
    a.send(0, VirtioNetHdr::plain(), &broadcast)
        .expect("broadcast");
    assert_eq!(
        expect_tag(&mut b, 7777).expect("broadcast").frame,
        broadcast
    );
    assert_eq!(one.counter("w", "rx_packets").unwrap(), 66);
    assert_eq!(two.counter("w", "tx_packets").unwrap(), 66);

    // Link settings apply to the VXLAN port like to any port.
    let link = control(&one, &["link", "w", "--rate", "1G", "--latency-us", "100"]);
    assert!(link.contains("\"rate_bps\":1000000000"), "{link}");
    assert_traffic_both_ways(&mut a, &mut b, 0, 20);
    one.check_running().expect("running");
    two.check_running().expect("running");
}

#[test]
fn datagrams_from_strangers_or_with_bad_headers_are_counted_and_harm_nothing() {
    let (mut one, mut two, port_two) = two_hosts();
    let to: SocketAddr = format!("127.0.0.1:{port_two}").parse().unwrap();
    let inner = udp_frame_of_len(9, BROADCAST, 2, 1, 100);
    let datagram = |flags: u8, vni: u32| {
        let v = vni.to_be_bytes();
        let mut d = vec![flags, 0, 0, 0, v[1], v[2], v[3], 0];
        d.extend_from_slice(&inner);
        d
    };
    let remote = UdpSocket::bind("127.0.0.1:0").expect("bind");
    remote.send_to(&datagram(0x08, VNI + 1), to).expect("send");
    remote.send_to(&datagram(0x00, VNI), to).expect("send");
    remote
        .send_to(&datagram(0x08, VNI)[..12], to)
        .expect("send");
    let stranger = UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    stranger.send_to(&datagram(0x08, VNI), to).expect("send");
    for counter in [
        "vxlan_rx_drops_vni",
        "vxlan_rx_errors_flags",
        "vxlan_rx_errors_short",
        "vxlan_rx_drops_unknown_remote",
    ] {
        two.wait_counter("w", counter, 1).expect(counter);
    }
    assert_eq!(two.counter("w", "tx_packets").unwrap(), 0, "none went in");
    // A good one from the remote's address goes in.
    remote.send_to(&datagram(0x08, VNI), to).expect("send");
    two.wait_counter("w", "tx_packets", 1).expect("taken");
    let mut a = TestGuest::connect(&one.socket("a"), GuestOptions::linux(1)).expect("a");
    let mut b = TestGuest::connect(&two.socket("b"), GuestOptions::linux(2)).expect("b");
    assert_traffic_both_ways(&mut a, &mut b, 0, 30);
    one.check_running().expect("running");
}
