//! The tap port: a host tap device as one end of the wire. A fake guest on a vhost-user port
//! pings the host kernel through prism-vnic and the tap, and the kernel's echo reply comes
//! back. Needs root and /dev/net/tun (CI runs as root); creates and removes its own tap.

mod support;

use std::process::Command;

use etherparse::{Icmpv4Type, PacketBuilder, SlicedPacket, TransportSlice};
use support::daemon::{BINARY, Daemon};
use support::frames::VirtioNetHdr;
use support::guest::{GuestOptions, TestGuest};

const HOST_IP: [u8; 4] = [10, 77, 0, 1];
const GUEST_IP: [u8; 4] = [10, 77, 0, 2];

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {args:?} failed");
}

/// A tap device for the test, removed on drop.
struct TapDevice(String);

impl TapDevice {
    fn create(guest_mac: [u8; 6]) -> Self {
        let name = format!("pvtap{}", std::process::id() % 100_000);
        ip(&["tuntap", "add", "dev", &name, "mode", "tap"]);
        let tap = TapDevice(name);
        ip(&["addr", "add", "10.77.0.1/24", "dev", &tap.0]);
        ip(&["link", "set", &tap.0, "up"]);
        // The fake guest answers no ARP: tell the host kernel where 10.77.0.2 is.
        let mac = guest_mac.map(|b| format!("{b:02x}")).join(":");
        ip(&[
            "neigh",
            "replace",
            "10.77.0.2",
            "lladdr",
            &mac,
            "dev",
            &tap.0,
            "nud",
            "permanent",
        ]);
        tap
    }
}

impl Drop for TapDevice {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

fn echo_request(guest_mac: [u8; 6], sequence: u16) -> Vec<u8> {
    // To the host's MAC we do not know: broadcast is what the switch floods to the tap, and
    // the kernel accepts an IP packet for its own address in a broadcast frame.
    let builder = PacketBuilder::ethernet2(guest_mac, [0xff; 6])
        .ipv4(GUEST_IP, HOST_IP, 64)
        .icmpv4_echo_request(0x4242, sequence);
    let mut frame = Vec::new();
    builder
        .write(&mut frame, b"prism-vnic tap test")
        .expect("frame");
    frame
}

fn is_echo_reply(frame: &[u8], sequence: u16) -> bool {
    let Ok(packet) = SlicedPacket::from_ethernet(frame) else {
        return false;
    };
    match packet.transport {
        Some(TransportSlice::Icmpv4(icmp)) => matches!(
            icmp.icmp_type(),
            Icmpv4Type::EchoReply(echo) if echo.id == 0x4242 && echo.seq == sequence
        ),
        _ => false,
    }
}

#[test]
fn a_guest_pings_the_host_through_a_tap_port() {
    assert!(
        std::path::Path::new("/dev/net/tun").exists(),
        "this test needs /dev/net/tun (and root)"
    );
    let guest_mac = support::frames::mac(1);
    let tap = TapDevice::create(guest_mac);
    let mut daemon = Daemon::builder()
        .port("vm")
        .queues(2)
        .arg("--tap")
        .arg(&format!("host={}", tap.0))
        .spawn()
        .expect("daemon starts with a tap port");
    let mut guest =
        TestGuest::connect(&daemon.socket("vm"), GuestOptions::linux(1)).expect("guest");
    guest.post_rx_buffers_all(16, 2048).expect("post");
    for sequence in 1..=3u16 {
        guest
            .send(0, VirtioNetHdr::plain(), &echo_request(guest_mac, sequence))
            .expect("send echo request");
        let deadline = std::time::Instant::now() + support::TIMEOUT;
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "no echo reply {sequence} from the host"
            );
            let frames = guest
                .recv_any(1, support::TIMEOUT)
                .expect("a frame from the host");
            let got_reply = frames.iter().any(|f| is_echo_reply(&f.frame, sequence));
            for f in &frames {
                guest
                    .post_rx_buffers(f.pair, f.used_lens.len(), 2048)
                    .expect("repost");
            }
            if got_reply {
                break;
            }
        }
    }
    assert!(daemon.counter("host", "tx_packets").expect("tap counters") >= 3);
    assert!(daemon.counter("host", "rx_packets").expect("tap counters") >= 3);
}

#[test]
fn a_missing_tap_device_is_a_clear_error() {
    let output = Command::new(BINARY)
        .args([
            "--tap",
            "host=pvtap-missing",
            "--control",
            "/tmp/prism-vnic-missing-tap.sock",
        ])
        .output()
        .expect("run prism-vnic");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("tap device pvtap-missing does not exist") && stderr.lines().count() == 1,
        "{stderr}"
    );
}
