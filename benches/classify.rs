//! Classification rate with 0, 10, 100 and 1000 flow rules (plain `main`, no harness).
//!
//! Run: `cargo bench --bench classify`. Prints ns per frame and millions of frames per second
//! for: parsing alone, the full classifier at each rule count, and (for comparison) a linear
//! scan over 1000 rules in location order. Also the checksum rate, for the offload path.
//! Figures on a shared, noisy machine vary by tens of percent; compare within one run.

use std::hint::black_box;
use std::time::{Duration, Instant};

use etherparse::PacketBuilder;
use prism_vnic::classify::parse::{DEFAULT_VXLAN_PORTS, FlowKey};
use prism_vnic::classify::rules::{Rule, RuleSet};
use prism_vnic::classify::{Classifier, ClassifierConfig, Trust};
use prism_vnic::packet::checksum;

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// 256 frames: IPv4 UDP/TCP with assorted ports and DSCP, IPv6 TCP, VXLAN over IPv4.
fn frames(rng: &mut Rng) -> Vec<Vec<u8>> {
    let payload = [0u8; 64];
    let mut frames = Vec::new();
    for i in 0..256u32 {
        let sport = 1024 + rng.below(4000) as u16;
        let dport = 5000 + rng.below(2000) as u16;
        let dscp = [0u8, 10, 46, 48][rng.below(4) as usize];
        let src4 = [10, 0, (i >> 8) as u8, i as u8];
        let mut frame = Vec::new();
        match i % 4 {
            0 => {
                let mut ip = etherparse::Ipv4Header::new(
                    0,
                    64,
                    etherparse::IpNumber::UDP,
                    src4,
                    [10, 1, 0, 1],
                )
                .unwrap();
                ip.dscp = etherparse::IpDscp::try_new(dscp).unwrap();
                PacketBuilder::ethernet2([2; 6], [4; 6])
                    .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
                    .udp(sport, dport)
                    .write(&mut frame, &payload)
                    .unwrap();
            }
            1 => PacketBuilder::ethernet2([2; 6], [4; 6])
                .single_vlan(etherparse::VlanId::try_new(100).unwrap())
                .ipv4(src4, [10, 1, 0, 1], 64)
                .tcp(sport, dport, 1, 1000)
                .write(&mut frame, &payload)
                .unwrap(),
            2 => {
                let mut src6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                src6[14..].copy_from_slice(&(i as u16).to_be_bytes());
                PacketBuilder::ethernet2([2; 6], [4; 6])
                    .ipv6(
                        src6,
                        [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                        64,
                    )
                    .tcp(sport, dport, 1, 1000)
                    .write(&mut frame, &payload)
                    .unwrap()
            }
            _ => {
                let mut inner = Vec::new();
                PacketBuilder::ethernet2([6; 6], [8; 6])
                    .ipv4([172, 16, 0, i as u8], [172, 16, 1, 1], 64)
                    .tcp(sport, dport, 1, 1000)
                    .write(&mut inner, &payload)
                    .unwrap();
                let mut vxlan = vec![0x08, 0, 0, 0];
                vxlan.extend_from_slice(&((i % 16) << 8).to_be_bytes());
                vxlan.extend_from_slice(&inner);
                PacketBuilder::ethernet2([2; 6], [4; 6])
                    .ipv4(src4, [10, 1, 0, 1], 64)
                    .udp(sport, 4789)
                    .write(&mut frame, &vxlan)
                    .unwrap();
            }
        }
        frames.push(frame);
    }
    frames
}

/// `count` rules: mostly destination-port rules (as an operator would write), some on source
/// ports, DSCP, VNI, and a residual 5% on address prefixes only.
fn rules(rng: &mut Rng, count: usize) -> Vec<Rule> {
    (0..count)
        .map(|i| {
            let loc = i as u32 * 10;
            let text = match rng.below(100) {
                0..70 => format!(
                    "loc {loc} proto {} dst-port {} action queue {}",
                    ["tcp", "udp"][i % 2],
                    5000 + rng.below(2000),
                    rng.below(4)
                ),
                70..80 => format!(
                    "loc {loc} proto tcp src-port {} action class high",
                    1024 + rng.below(4000)
                ),
                80..90 => format!("loc {loc} dscp {} action class high", rng.below(64)),
                90..95 => format!("loc {loc} vni {} action queue 1", rng.below(64)),
                _ => format!(
                    "loc {loc} src-ip 10.{}.{}.0/24 action queue 2",
                    rng.below(4),
                    rng.below(256)
                ),
            };
            text.parse().expect("generated rule")
        })
        .collect()
}

/// Runs `step` over the frames for at least `min_time` and returns ns per frame.
fn measure(frames: &[Vec<u8>], min_time: Duration, mut step: impl FnMut(&[u8])) -> f64 {
    for frame in frames {
        step(frame);
    }
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed() < min_time {
        for _ in 0..64 {
            for frame in frames {
                step(black_box(frame));
            }
        }
        done += 64 * frames.len() as u64;
    }
    start.elapsed().as_nanos() as f64 / done as f64
}

/// `BENCH_ONLY=<name>` runs only the case with exactly that name (as printed), for profiling.
fn selected(name: &str) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |only| name == only)
}

fn report(name: &str, ns: f64) {
    println!(
        "{name:<34} {ns:>8.1} ns/frame {:>8.2} Mframes/s",
        1000.0 / ns
    );
}

fn main() {
    let min_time = Duration::from_millis(
        std::env::var("BENCH_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000),
    );
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let frames = frames(&mut rng);

    if selected("parse only") {
        let ns = measure(&frames, min_time, |f| {
            black_box(FlowKey::parse(f, &DEFAULT_VXLAN_PORTS));
        });
        report("parse only", ns);
    }
    let config = ClassifierConfig {
        num_queues: 4,
        high_queues: 1,
        trust: Trust::default_dscp(),
        ..ClassifierConfig::default()
    };
    for count in [0, 10, 100, 1000] {
        // Generate the rules even when skipped, so every case sees the same random stream.
        let set = RuleSet::new(rules(&mut rng, count)).expect("rule set");
        let name = format!("classify, {count} rules");
        if !selected(&name) {
            continue;
        }
        let classifier = Classifier::new(&config, set).expect("classifier");
        let ns = measure(&frames, min_time, |f| {
            black_box(classifier.classify(f));
        });
        let matched: u64 = classifier.rules().hits().map(|(_, hits)| hits).sum();
        report(&name, ns);
        if count > 0 {
            println!("{:<34} {matched} rule hits counted", "");
        }
    }
    let set = RuleSet::new(rules(&mut rng, 1000)).expect("rule set");
    if selected("linear scan, 1000 rules (baseline)") {
        let ns = measure(&frames, min_time, |f| {
            let key = FlowKey::parse(f, &DEFAULT_VXLAN_PORTS).key;
            black_box(set.rules().iter().find(|r| r.matches.matches(&key)));
        });
        report("linear scan, 1000 rules (baseline)", ns);
    }
    if !selected("checksum") {
        return;
    }
    let data = vec![0xa5u8; 1500];
    let ns = measure(&[data], min_time, |d| {
        black_box(checksum::checksum(d));
    });
    println!(
        "{:<34} {ns:>8.1} ns/1500 B {:>8.2} GB/s",
        "checksum",
        1500.0 / ns
    );
}
