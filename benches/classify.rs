//! Classification rate with 0, 10, 100 and 1000 flow rules (plain `main`, no harness).
//!
//! Run: `cargo bench --bench classify`. Prints ns per frame and millions of frames per second
//! for: parsing alone, the full classifier at each rule count under four traffic mixes, and
//! (for comparison) a linear scan over 1000 rules in location order. Also the checksum rate,
//! for the offload path. The mixes:
//! - "nic64": what `benches/nic.py` measures the rule cost with: its generator's 64 IPv4/UDP
//!   flows into a one-queue NIC whose rules (its rule file's) none of them match, so the rule
//!   screen rules every frame out ("screen nic64" times the screen alone).
//! - "steady": 256 flows sent round-robin, many frames each (what a NIC sees in the steady
//!   state), many of them matching rules: the screen lets them through and the flow cache
//!   hits.
//! - "steady64": the first 64 of them: the cache's entries for them stay in the core's L1
//!   cache.
//! - "spray": every frame a new flow (its outer source port and the low half of its source
//!   address rewritten from a random stream before it is classified), the worst case for a
//!   flow cache: every frame a miss and a fill. The rewrite is timed too, at every rule count.
//!
//! Each line gives the cost against 0 rules of the same mix. Figures on a shared, noisy
//! machine vary by tens of percent; compare within one run. `BENCH_MS` sets the time per case
//! (default 1000), `BENCH_ONLY` runs one case by name, `BENCH_ROUNDS` repeats the rule-count
//! cases (interleaved) and reports each case's best round, the least disturbed by other load.

use std::hint::black_box;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use etherparse::PacketBuilder;
use prism_vnic::classify::parse::{DEFAULT_VXLAN_PORTS, FlowKey};
use prism_vnic::classify::rules::{Rule, RuleSet};
use prism_vnic::classify::{Classifier, ClassifierConfig, Trust};
use prism_vnic::packet::checksum;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Where the "spray" mix rewrites a frame: the outer source port and the low 16 bits of the
/// outer source address.
#[derive(Clone, Copy)]
struct SprayAt {
    src_port: usize,
    src_addr_low: usize,
}

/// 256 frames: IPv4 UDP/TCP with assorted ports and DSCP, IPv6 TCP, VXLAN over IPv4.
fn frames(rng: &mut Rng) -> (Vec<Vec<u8>>, Vec<SprayAt>) {
    let payload = [0u8; 64];
    let mut frames = Vec::new();
    let mut spray_at = Vec::new();
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
        // Ethernet (14), a VLAN tag for kind 1, then IPv4 (20, source at 12) or IPv6 (40,
        // source at 8).
        spray_at.push(match i % 4 {
            1 => SprayAt {
                src_port: 18 + 20,
                src_addr_low: 18 + 12 + 2,
            },
            2 => SprayAt {
                src_port: 14 + 40,
                src_addr_low: 14 + 8 + 14,
            },
            _ => SprayAt {
                src_port: 14 + 20,
                src_addr_low: 14 + 12 + 2,
            },
        });
        frames.push(frame);
    }
    (frames, spray_at)
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

/// The traffic of `benches/nic.py`'s rule-cost run: the generator's 64 flows (64-byte
/// IPv4/UDP frames 10.255.0.1 -> 10.255.0.2, source ports 1024 to 1087, destination port 9).
fn nic_frames() -> Vec<Vec<u8>> {
    (0..64u16)
        .map(|flow| {
            let mut frame = Vec::new();
            PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0x0a], [2, 0, 0, 0, 0, 0x0b])
                .ipv4([10, 255, 0, 1], [10, 255, 0, 2], 64)
                .udp(1024 + flow, 9)
                .write(&mut frame, &[0u8; 18])
                .unwrap();
            frame
        })
        .collect()
}

/// `benches/nic.py`'s rule file as rules: `count` rules that its traffic does not match
/// (UDP destination ports, TCP source ports, source and destination /32s it never uses), in
/// shuffled locations.
fn nic_rules(count: usize) -> Vec<Rule> {
    (0..count)
        .map(|i| {
            let loc = (i * 7919) % 100_000;
            let (a, b) = ((i / 250) % 250, i % 250);
            let text = match i % 4 {
                0 => format!("loc {loc} proto udp dst-port {} action queue 0", 20000 + i),
                1 => format!(
                    "loc {loc} proto tcp src-port {} action class high",
                    30000 + i
                ),
                2 => format!("loc {loc} src-ip 192.168.{a}.{b}/32 action drop"),
                _ => format!("loc {loc} dst-ip 172.16.{a}.{b}/32 proto udp action queue 0"),
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

/// As [`measure`], but each frame first gets a random outer source port and source address
/// low half, so (almost) every frame classified is a flow not seen before.
fn measure_spray(
    frames: &mut [Vec<u8>],
    spray_at: &[SprayAt],
    min_time: Duration,
    mut step: impl FnMut(&[u8]),
) -> f64 {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed() < min_time {
        for _ in 0..64 {
            for (frame, at) in frames.iter_mut().zip(spray_at) {
                let random = rng.next();
                frame[at.src_port..at.src_port + 2].copy_from_slice(&(random as u16).to_be_bytes());
                frame[at.src_addr_low..at.src_addr_low + 2]
                    .copy_from_slice(&((random >> 16) as u16).to_be_bytes());
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

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, PartialEq)]
enum Mix {
    Nic64,
    Steady,
    Steady64,
    Spray,
}

fn main() {
    let min_time = Duration::from_millis(env_number("BENCH_MS", 1000));
    let rounds = env_number("BENCH_ROUNDS", 1).max(1);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let (frames, spray_at) = frames(&mut rng);
    // The spray rewrites must land on the outer source port and address of every template.
    for (frame, at) in frames.iter().zip(&spray_at) {
        let key = FlowKey::parse(frame, &DEFAULT_VXLAN_PORTS).key;
        let port = u16::from_be_bytes([frame[at.src_port], frame[at.src_port + 1]]);
        assert_eq!(key.outer.src_port, Some(port), "spray offset of a template");
        let low = u16::from_be_bytes([frame[at.src_addr_low], frame[at.src_addr_low + 1]]);
        let addr_low = match key.outer.src_ip {
            Some(IpAddr::V4(v4)) => u32::from(v4) as u16,
            Some(IpAddr::V6(v6)) => u128::from(v6) as u16,
            None => panic!("template without an address"),
        };
        assert_eq!(addr_low, low, "spray address offset of a template");
    }

    if selected("parse only") {
        let ns = measure(&frames, min_time, |f| {
            black_box(FlowKey::parse(f, &DEFAULT_VXLAN_PORTS));
        });
        report("parse only", ns);
    }
    let nic_frames = nic_frames();
    if selected("parse only, nic64") {
        let ns = measure(&nic_frames, min_time, |f| {
            black_box(FlowKey::parse(f, &DEFAULT_VXLAN_PORTS));
        });
        report("parse only, nic64", ns);
    }
    let config = ClassifierConfig {
        num_queues: 4,
        high_queues: 1,
        trust: Trust::default_dscp(),
        ..ClassifierConfig::default()
    };
    let counts = [0usize, 10, 100, 1000];
    // Generate the rules even when skipped, so every case sees the same random stream.
    let sets: Vec<Vec<Rule>> = counts.iter().map(|&n| rules(&mut rng, n)).collect();
    let nic_sets: Vec<Vec<Rule>> = counts.iter().map(|&n| nic_rules(n)).collect();
    // benches/nic.py's sink port has one queue.
    let nic_config = ClassifierConfig {
        num_queues: 1,
        ..config.clone()
    };
    // The screen alone (RuleSet::may_match on parsed keys), per rule count of the nic64 mix.
    let nic_keys: Vec<FlowKey> = nic_frames
        .iter()
        .map(|f| FlowKey::parse(f, &DEFAULT_VXLAN_PORTS).key)
        .collect();
    for (&count, set) in counts.iter().zip(&nic_sets).skip(1) {
        let name = format!("screen nic64, {count} rules");
        if !selected(&name) {
            continue;
        }
        let set = RuleSet::new(set.clone()).expect("rule set");
        let start = Instant::now();
        let mut done = 0u64;
        while start.elapsed() < min_time {
            for _ in 0..64 {
                for key in &nic_keys {
                    black_box(set.may_match(black_box(key)));
                }
            }
            done += 64 * nic_keys.len() as u64;
        }
        report(&name, start.elapsed().as_nanos() as f64 / done as f64);
    }
    for mix in [Mix::Nic64, Mix::Steady, Mix::Steady64, Mix::Spray] {
        let (config, sets) = match mix {
            Mix::Nic64 => (&nic_config, &nic_sets),
            _ => (&config, &sets),
        };
        let label = match mix {
            Mix::Nic64 => "nic64",
            Mix::Steady => "steady",
            Mix::Steady64 => "steady64",
            Mix::Spray => "spray",
        };
        // best[i]: the lowest ns/frame over the rounds at counts[i]; hits: of the last round.
        let mut best = [f64::INFINITY; 4];
        let mut hits = [0u64; 4];
        for _ in 0..rounds {
            for (i, (&count, set)) in counts.iter().zip(sets).enumerate() {
                if !selected(&format!("classify {label}, {count} rules")) {
                    continue;
                }
                let set = RuleSet::new(set.clone()).expect("rule set");
                let classifier = Classifier::new(config, set).expect("classifier");
                let step = |f: &[u8]| {
                    black_box(classifier.classify(f));
                };
                let ns = match mix {
                    Mix::Nic64 => measure(&nic_frames, min_time, step),
                    Mix::Steady => measure(&frames, min_time, step),
                    Mix::Steady64 => measure(&frames[..64], min_time, step),
                    Mix::Spray => measure_spray(&mut frames.clone(), &spray_at, min_time, step),
                };
                best[i] = best[i].min(ns);
                hits[i] = classifier.rules().hits().map(|(_, hits)| hits).sum();
            }
        }
        for (i, &count) in counts.iter().enumerate() {
            if best[i].is_finite() {
                let name = format!("classify {label}, {count} rules");
                report(&name, best[i]);
                let extra = if best[0].is_finite() {
                    format!("{:+.1} ns/frame against 0 rules", best[i] - best[0])
                } else {
                    String::new()
                };
                if count > 0 {
                    println!("{:<34} {extra}, {} rule hits counted", "", hits[i]);
                }
            }
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
