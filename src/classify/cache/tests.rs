use super::*;
use crate::classify::parse::FlowKey;
use crate::classify::rules::{Rule, RuleSet};
use crate::classify::test_frames::*;
use crate::classify::{Class, Classifier, ClassifierConfig, QueueChoice, Trust};
use crate::packet::{checksum, ip_proto};

/// Small value domains, so random frames often share fields with each other and with the
/// random rules (a cache keyed on too few fields would then hand one frame another's
/// decision).
const PORTS: [u16; 4] = [53, 80, 5001, 4789];
const DSCPS: [u8; 3] = [0, 10, 46];
const VIDS: [u16; 3] = [1, 2, 100];
const PCPS: [u8; 3] = [0, 3, 5];

fn random_tags(rng: &mut Rng) -> Vec<(u16, u8, u16)> {
    (0..rng.pick(&[0usize, 0, 1, 2]))
        .map(|_| {
            (
                rng.pick(&[TPID_8021Q, TPID_8021AD]),
                rng.pick(&PCPS),
                rng.pick(&VIDS),
            )
        })
        .collect()
}

/// An L4 header for `proto` (TCP, UDP or none for others) with random ports.
fn random_l4(rng: &mut Rng, proto: u8) -> Vec<u8> {
    let (sport, dport) = (rng.pick(&PORTS), rng.pick(&PORTS));
    match proto {
        ip_proto::TCP => tcp(sport, dport, &[]),
        ip_proto::UDP => udp(sport, dport, 8),
        _ => vec![0u8; 8],
    }
}

/// A random frame: 0-2 VLAN tags; IPv4 (sometimes a fragment), IPv6 or ARP; TCP, UDP or
/// ICMP; and, when `tunnel`, sometimes VXLAN with a random inner frame.
fn random_frame(rng: &mut Rng, tunnel: bool) -> Vec<u8> {
    let tags = random_tags(rng);
    let proto = rng.pick(&[ip_proto::TCP, ip_proto::UDP, ip_proto::UDP, ip_proto::ICMP]);
    let dscp = rng.pick(&DSCPS);
    match rng.below(5) {
        0 => {
            let mut frame = l2(&tags, 0x0806);
            frame.extend([0u8; 28]);
            frame
        }
        1 => {
            let l4 = random_l4(rng, proto);
            let src = v6(rng.pick(&[1, 2]));
            let dst = v6(rng.pick(&[1, 3]));
            let mut frame = l2(&tags, ETH_IPV6);
            frame.extend(ipv6(src, dst, dscp, proto, l4.len()));
            frame.extend(l4);
            frame
        }
        _ => {
            let src = [10, 0, 0, rng.pick(&[1, 2])];
            let dst = [10, 0, rng.pick(&[0, 1]), 1];
            let vxlan_inside = tunnel && proto == ip_proto::UDP && rng.chance(50);
            let mut l4 = if vxlan_inside {
                let inner = random_frame(rng, false);
                let mut bytes = udp(rng.pick(&PORTS), 4789, 8 + inner.len());
                bytes.extend(vxlan(rng.pick(&[1, 2, 0x00ff_ffff])));
                bytes.extend(inner);
                bytes
            } else {
                random_l4(rng, proto)
            };
            if l4.len() < 8 {
                l4.resize(8, 0);
            }
            let mut ip = ipv4(src, dst, dscp, proto, &[], l4.len());
            match rng.below(6) {
                // First fragment: more-fragments set, ports present.
                0 => ip[6] = 0x20,
                // A later fragment: no ports.
                1 => ip[6..8].copy_from_slice(&[0x00, 0x10]),
                _ => {}
            }
            ip[10..12].copy_from_slice(&[0, 0]);
            let sum = checksum::checksum(&ip);
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
            let mut frame = l2(&tags, ETH_IPV4);
            frame.extend(ip);
            frame.extend(l4);
            frame
        }
    }
}

/// A random rule with 0-3 fields (on the outer or, one time in four, the inner layer).
fn random_rule(rng: &mut Rng, location: u32) -> Rule {
    let mut text = format!("loc {location}");
    if rng.chance(25) {
        text.push_str(" inner");
    }
    let proto = rng.pick(&["tcp", "udp"]);
    for _ in 0..rng.below(4) {
        let field = match rng.below(10) {
            0 => format!(" proto {proto} dst-port {}", rng.pick(&PORTS)),
            1 => format!(" proto {proto} src-port {}", rng.pick(&PORTS)),
            2 => format!(" dscp {}", rng.pick(&DSCPS)),
            3 => format!(" vlan {}", rng.pick(&VIDS)),
            4 => format!(" pcp {}", rng.pick(&PCPS)),
            5 => format!(" vni {}", rng.pick(&[1, 2])),
            6 => format!(
                " src-ip {}",
                rng.pick(&["10.0.0.0/8", "10.0.0.1", "10.0.0.2/31", "2001:db8::/32"])
            ),
            7 => format!(
                " dst-ip {}",
                rng.pick(&["10.0.1.0/24", "10.0.0.1", "2001:db8::3"])
            ),
            8 => format!(" proto {}", rng.pick(&["tcp", "udp", "icmp"])),
            _ => String::new(),
        };
        // One value per field: a repeated keyword is refused.
        let keyword = field.split_whitespace().next().unwrap_or("");
        if !keyword.is_empty() && !text.contains(&format!(" {keyword} ")) {
            text.push_str(&field);
        }
    }
    text.push_str(match rng.below(5) {
        0 => " action drop",
        1 => " action class high",
        2 => " action queue 2",
        3 => " action queue 3 class normal",
        _ => " action queue 1 class high",
    });
    // A port field after `proto icmp` makes an invalid rule: drop the port fields then.
    text.parse().unwrap_or_else(|_| {
        format!("loc {location} dscp 46 action class high")
            .parse()
            .expect("fallback rule")
    })
}

fn random_rules(rng: &mut Rng, count: usize) -> Vec<Rule> {
    (0..count)
        .map(|i| {
            let location = i as u32 * 10 + rng.below(10) as u32;
            random_rule(rng, location)
        })
        .collect()
}

fn config() -> ClassifierConfig {
    ClassifierConfig {
        num_queues: 4,
        high_queues: 1,
        trust: Trust::default_dscp(),
        ..ClassifierConfig::default()
    }
}

fn pair(rules: &[Rule], trust: Trust) -> (Classifier, Classifier) {
    let config = ClassifierConfig { trust, ..config() };
    let build =
        || Classifier::new(&config, RuleSet::new(rules.to_vec()).expect("rule set")).expect("ok");
    (build(), build())
}

/// Classifies every frame `rounds` times through the cache of `cached` and without it through
/// `reference`, asserting equal decisions and, at the end, equal hit counters.
fn assert_cache_exact(
    cached: &Classifier,
    reference: &Classifier,
    frames: &[Vec<u8>],
    rounds: usize,
) {
    for round in 0..rounds {
        for (i, frame) in frames.iter().enumerate() {
            let expected = reference.classify_uncached(frame);
            let got = cached.classify(frame);
            assert_eq!(
                got,
                expected,
                "round {round}, frame {i}: {:?}\nrules: {:?}",
                FlowKey::parse(frame, &crate::classify::parse::DEFAULT_VXLAN_PORTS),
                cached.rules().rules()
            );
        }
    }
    let hits: Vec<(u32, u64)> = cached.rules().hits().collect();
    let expected: Vec<(u32, u64)> = reference.rules().hits().collect();
    assert_eq!(hits, expected, "hit counters");
}

#[test]
fn cached_decisions_and_hit_counts_equal_the_uncached_ones() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let frames: Vec<Vec<u8>> = (0..400).map(|_| random_frame(&mut rng, true)).collect();
    for set in 0..60 {
        let count = rng.pick(&[1, 3, 10, 40]);
        let rules = random_rules(&mut rng, count);
        let trust = match set % 3 {
            0 => Trust::default_dscp(),
            1 => Trust::default_pcp(),
            _ => Trust::None,
        };
        let (cached, reference) = pair(&rules, trust);
        // Several rounds: the first fills the cache, the others hit it.
        assert_cache_exact(&cached, &reference, &frames, 3);
    }
}

#[test]
fn screened_decisions_and_hit_counts_equal_the_uncached_ones() {
    // Rule sets with no residual rule (each has a port, DSCP, VNI or prefix), so the screen
    // decides many frames without the cache; the others go through it. Either way the
    // decision and the hit counts must be those of the plain lookup.
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let frames: Vec<Vec<u8>> = (0..400).map(|_| random_frame(&mut rng, true)).collect();
    let mut screened_out = 0;
    for set in 0..40 {
        let count = rng.pick(&[1, 2, 5, 20]);
        let rules: Vec<Rule> = (0..count)
            .map(|i| {
                let location = i as u32 * 10;
                loop {
                    let rule = random_rule(&mut rng, location);
                    let m = &rule.matches;
                    if m.dst_port.is_some()
                        || m.src_port.is_some()
                        || m.dscp.is_some()
                        || m.vni.is_some()
                        || m.src_ip.is_some()
                        || m.dst_ip.is_some()
                    {
                        return rule;
                    }
                }
            })
            .collect();
        let trust = match set % 3 {
            0 => Trust::default_dscp(),
            1 => Trust::default_pcp(),
            _ => Trust::None,
        };
        let (cached, reference) = pair(&rules, trust);
        screened_out += frames
            .iter()
            .map(|frame| FlowKey::parse(frame, &[4789]))
            .filter(|parsed| parsed.error.is_none() && !cached.rules().may_match(&parsed.key))
            .count();
        assert_cache_exact(&cached, &reference, &frames, 2);
    }
    assert!(
        screened_out > 1000,
        "only {screened_out} frames screened out"
    );
}

#[test]
fn a_new_rule_set_is_used_from_the_next_frame_on() {
    let mut rng = Rng(0x0bad_cafe_dead_beef);
    let frames: Vec<Vec<u8>> = (0..200).map(|_| random_frame(&mut rng, true)).collect();
    // The same frames, through one thread's cache, under a sequence of rule sets: none may
    // see a decision cached under an earlier one.
    for _ in 0..30 {
        let count = rng.pick(&[1, 5, 20]);
        let rules = random_rules(&mut rng, count);
        let (cached, reference) = pair(&rules, Trust::default_dscp());
        assert_cache_exact(&cached, &reference, &frames, 2);
    }
    // A rule added in front of a flow already cached takes it over at once.
    let frame = ipv4_l4(&[], [10, 0, 0, 1], [10, 0, 0, 2], 0, 17, (7, 5001), 8);
    let before = Classifier::new(
        &config(),
        RuleSet::new(vec!["loc 20 proto udp action queue 2".parse().unwrap()]).unwrap(),
    )
    .unwrap();
    assert_eq!(before.classify(&frame).queue, QueueChoice::Rule(2));
    assert_eq!(before.classify(&frame).queue, QueueChoice::Rule(2));
    let after = Classifier::new(
        &config(),
        RuleSet::new(vec![
            "loc 10 dst-port 5001 action queue 3".parse().unwrap(),
            "loc 20 proto udp action queue 2".parse().unwrap(),
        ])
        .unwrap(),
    )
    .unwrap();
    assert_eq!(after.classify(&frame).queue, QueueChoice::Rule(3));
    assert_eq!(after.rules().hits().collect::<Vec<_>>(), [(10, 1), (20, 0)]);
}

#[test]
fn many_random_flows_evict_without_changing_any_answer() {
    let mut rng = Rng(0x5eed_5eed_5eed_5eed);
    let rules = random_rules(&mut rng, 30);
    let (cached, reference) = pair(&rules, Trust::default_dscp());
    // Three times the cache's capacity of distinct flows (random source ports and
    // addresses), twice over: every set sees many collisions and evictions.
    let flows = 3 * 2 * FlowCache::SETS;
    let frames: Vec<Vec<u8>> = (0..flows)
        .map(|i| {
            let i = i as u32;
            let src = [10, 0, (i >> 8) as u8, i as u8];
            let sport = rng.below(65536) as u16;
            ipv4_l4(&[], src, [10, 0, 1, 1], 0, 17, (sport, rng.pick(&PORTS)), 8)
        })
        .collect();
    assert_cache_exact(&cached, &reference, &frames, 2);
}

#[test]
fn without_rules_the_cache_is_not_used() {
    let (cached, reference) = pair(&[], Trust::default_dscp());
    let mut rng = Rng(42);
    let frames: Vec<Vec<u8>> = (0..100).map(|_| random_frame(&mut rng, true)).collect();
    assert_cache_exact(&cached, &reference, &frames, 1);
    // A thread that only classified without rules has not allocated a table.
    std::thread::spawn(move || {
        for frame in &frames {
            cached.classify(frame);
        }
        with_thread_cache(|cache| assert!(cache.entries.is_empty()));
    })
    .join()
    .expect("classifying thread");
}

fn key(words: &[u64]) -> CacheKey {
    let mut key = CacheKey {
        words: [0; PACKED_WORDS],
        len: words.len(),
    };
    key.words[..words.len()].copy_from_slice(words);
    key
}

fn value(location: u32) -> Cached {
    Cached {
        rule_index: Some(location),
        decision: Decision {
            class: Class::High,
            queue: QueueChoice::Rule(1),
            rule: Some(location),
            drop: false,
            parse_error: None,
        },
    }
}

/// `cache.get_or_insert(key)` with a compute that records whether it ran.
fn probe(cache: &mut FlowCache, key: &CacheKey, fill: u32) -> (Cached, bool) {
    let mut missed = false;
    let got = cache.get_or_insert(key, || {
        missed = true;
        value(fill)
    });
    (got, missed)
}

#[test]
fn a_set_keeps_its_two_most_recent_keys() {
    // One set: every key collides.
    let mut cache = FlowCache::new(1);
    let (a, b, c) = (key(&[1, 2, 3, 4]), key(&[1, 2, 3, 5]), key(&[1, 2, 3, 6]));
    assert_eq!(probe(&mut cache, &a, 1), (value(1), true));
    assert_eq!(probe(&mut cache, &b, 2), (value(2), true));
    assert_eq!(probe(&mut cache, &a, 99), (value(1), false));
    assert_eq!(probe(&mut cache, &b, 99), (value(2), false));
    // A third key evicts the older of the two (a), never answers for another key.
    assert_eq!(probe(&mut cache, &c, 3), (value(3), true));
    assert_eq!(probe(&mut cache, &b, 99), (value(2), false));
    assert_eq!(probe(&mut cache, &c, 99), (value(3), false));
    assert_eq!(probe(&mut cache, &a, 4), (value(4), true));
    assert_eq!(probe(&mut cache, &a, 99), (value(4), false));
}

#[test]
fn keys_differing_only_past_the_head_are_different_keys() {
    let mut cache = FlowCache::new(1);
    let long_a = key(&[1, 2, 3, 4, 5, 6, 7]);
    let long_b = key(&[1, 2, 3, 4, 5, 6, 8]);
    let mut short = key(&[1, 2, 3, 4]);
    assert_eq!(probe(&mut cache, &long_a, 1), (value(1), true));
    assert_eq!(probe(&mut cache, &long_b, 2), (value(2), true));
    assert_eq!(probe(&mut cache, &long_a, 99), (value(1), false));
    assert_eq!(probe(&mut cache, &long_b, 99), (value(2), false));
    // A short key with the same head (impossible from the parser, whose misc word says how
    // long a key is) still never takes a long key's entry: its zero tail differs.
    short.len = 7;
    assert_eq!(probe(&mut cache, &short, 3), (value(3), true));
}

#[test]
fn an_empty_entry_never_matches() {
    let mut cache = FlowCache::new(4);
    // Classifier ids start at 1; a key of all zeros is not one the classifier makes, but
    // even it must miss in a fresh table rather than read the empty entry's value.
    let zero = key(&[0, 0, 0, 0]);
    let (_, missed) = probe(&mut cache, &zero, 1);
    assert!(missed);
}

#[test]
fn packed_keys_of_frames_that_differ_in_a_classified_field_differ() {
    let base = ipv4_l4(
        &[(TPID_8021Q, 3, 100)],
        [10, 0, 0, 1],
        [10, 0, 0, 2],
        10,
        17,
        (5, 6),
        8,
    );
    let variants = [
        ipv4_l4(
            &[(TPID_8021Q, 3, 100)],
            [10, 0, 0, 9],
            [10, 0, 0, 2],
            10,
            17,
            (5, 6),
            8,
        ),
        ipv4_l4(
            &[(TPID_8021Q, 3, 100)],
            [10, 0, 0, 1],
            [10, 0, 0, 9],
            10,
            17,
            (5, 6),
            8,
        ),
        ipv4_l4(
            &[(TPID_8021Q, 3, 100)],
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            11,
            17,
            (5, 6),
            8,
        ),
        ipv4_l4(
            &[(TPID_8021Q, 3, 100)],
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            10,
            6,
            (5, 6),
            0,
        ),
        ipv4_l4(
            &[(TPID_8021Q, 3, 100)],
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            10,
            17,
            (9, 6),
            8,
        ),
        ipv4_l4(
            &[(TPID_8021Q, 3, 100)],
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            10,
            17,
            (5, 9),
            8,
        ),
        ipv4_l4(
            &[(TPID_8021Q, 4, 100)],
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            10,
            17,
            (5, 6),
            8,
        ),
        ipv4_l4(
            &[(TPID_8021Q, 3, 101)],
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            10,
            17,
            (5, 6),
            8,
        ),
        ipv4_l4(&[], [10, 0, 0, 1], [10, 0, 0, 2], 10, 17, (5, 6), 8),
        vxlan_over_ipv4(1, 5, 10, &base),
        vxlan_over_ipv4(2, 5, 10, &base),
    ];
    let pack = |frame: &[u8]| {
        let parsed = FlowKey::parse(frame, &crate::classify::parse::DEFAULT_VXLAN_PORTS);
        assert_eq!(parsed.error, None);
        let packed = CacheKey::of(&parsed.key);
        assert!(packed.is_complete());
        packed
    };
    let mut seen = vec![pack(&base)];
    for variant in &variants {
        let packed = pack(variant);
        assert!(!seen.contains(&packed), "{packed:?}");
        seen.push(packed);
    }
    // The same frame packs the same way; unused words are 0.
    assert_eq!(pack(&base), seen[0]);
    assert!(seen[0].words[seen[0].len..].iter().all(|&word| word == 0));
}

/// The fields of one layer the classifier reads: the outermost tag, the addresses, DSCP,
/// protocol, fragment flag and ports.
type LayerFields = (
    Option<crate::classify::parse::Vlan>,
    Option<std::net::IpAddr>,
    Option<std::net::IpAddr>,
    Option<u8>,
    Option<u8>,
    bool,
    Option<u16>,
    Option<u16>,
);

fn layer_fields(layer: &crate::classify::parse::LayerKey) -> LayerFields {
    (
        layer.outer_vlan(),
        layer.src_ip,
        layer.dst_ip,
        layer.dscp,
        layer.proto,
        layer.fragment,
        layer.src_port,
        layer.dst_port,
    )
}

#[test]
fn frames_pack_alike_exactly_when_their_classified_fields_are_equal() {
    let mut rng = Rng(0x7ac4_e0f1_2b3c_4d5e);
    let keys: Vec<FlowKey> = (0..300)
        .map(|_| {
            FlowKey::parse(
                &random_frame(&mut rng, true),
                &crate::classify::parse::DEFAULT_VXLAN_PORTS,
            )
        })
        .filter(|parsed| parsed.error.is_none())
        .map(|parsed| parsed.key)
        .collect();
    let fields = |key: &FlowKey| {
        (
            layer_fields(&key.outer),
            key.vni,
            key.inner.as_ref().map(layer_fields),
        )
    };
    let mut equal_pairs = 0;
    for a in &keys {
        let packed_a = CacheKey::of(a);
        assert!(packed_a.is_complete());
        for b in &keys {
            let same = fields(a) == fields(b);
            assert_eq!(CacheKey::of(b) == packed_a, same, "{a:?}\n{b:?}");
            equal_pairs += usize::from(same);
        }
    }
    // Random frames from small value ranges repeat: the "alike" side is tested too.
    assert!(equal_pairs > keys.len(), "{equal_pairs} equal pairs");
}

/// How many of `keys` (short ones) have an entry in `cache`.
fn entries_holding(cache: &FlowCache, keys: &[CacheKey]) -> usize {
    keys.iter()
        .filter(|key| {
            cache
                .entries
                .iter()
                .any(|entry| entry.head[..] == key.words[..HEAD_WORDS])
        })
        .count()
}

#[test]
fn a_flood_of_new_flows_leaves_the_steady_flows_cached() {
    let mut cache = FlowCache::new(FlowCache::SETS);
    let steady: Vec<CacheKey> = (0..200u64).map(|i| key(&[1, 7, i, 0])).collect();
    for round in 0..4 {
        for flow in &steady {
            let (_, missed) = probe(&mut cache, flow, 1);
            assert_eq!(missed, round == 0);
        }
    }
    // Ten times the cache's size in flows seen once: filling each would evict every steady
    // flow (each set sees about ten fills); sampling leaves most of them.
    for i in 0..(20 * FlowCache::SETS as u64) {
        let (answer, missed) = probe(&mut cache, &key(&[1, 8, i, 0]), 2);
        assert_eq!((answer, missed), (value(2), true));
    }
    assert!(cache.thrashing);
    let kept = entries_holding(&cache, &steady);
    assert!(kept * 2 > steady.len(), "{kept} of {}", steady.len());
    // Once the flood is over, the sampled probes mostly hit, and the cache is used fully
    // again: a new flow is cached at its first miss.
    let mut rounds = 0;
    while cache.thrashing {
        rounds += 1;
        assert!(rounds < 1000, "still thrashing");
        for flow in &steady {
            assert_eq!(probe(&mut cache, flow, 1).0, value(1));
        }
    }
    let newcomer = key(&[1, 9, 1, 0]);
    assert!(probe(&mut cache, &newcomer, 3).1);
    assert_eq!(probe(&mut cache, &newcomer, 99), (value(3), false));
}

#[test]
fn hit_counts_are_exact_across_threads_and_alternating_classifiers() {
    let mut rng = Rng(0xfeed_f00d_1234_5678);
    let frames: Vec<Vec<u8>> = (0..300).map(|_| random_frame(&mut rng, true)).collect();
    let rules = random_rules(&mut rng, 20);
    let (first, reference) = pair(&rules, Trust::default_dscp());
    let (second, _) = pair(&rules, Trust::default_dscp());
    let (first, second) = (std::sync::Arc::new(first), std::sync::Arc::new(second));
    let threads = 4;
    let rounds = 3;
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let (first, second, frames) = (&first, &second, &frames);
            scope.spawn(move || {
                // Each thread alternates between the two classifiers frame by frame, so its
                // shard of each is looked up behind the other's every time.
                for _ in 0..rounds {
                    for frame in frames {
                        first.classify(frame);
                        second.classify(frame);
                    }
                }
            });
        }
    });
    for frame in &frames {
        reference.classify_uncached(frame);
    }
    let per_pass: Vec<(u32, u64)> = reference.rules().hits().collect();
    let expected: Vec<(u32, u64)> = per_pass
        .iter()
        .map(|&(location, hits)| (location, hits * (threads * rounds) as u64))
        .collect();
    assert_eq!(first.rules().hits().collect::<Vec<_>>(), expected);
    assert_eq!(second.rules().hits().collect::<Vec<_>>(), expected);
    // Carried over to a new rule set, with the shards' counts.
    let next = RuleSet::new(rules.clone()).expect("rule set");
    next.inherit_hits(first.rules());
    assert_eq!(next.hits().collect::<Vec<_>>(), expected);
}

#[test]
fn a_thread_drops_the_hit_shards_of_rule_sets_that_are_gone() {
    std::thread::spawn(|| {
        let frame = ipv4_l4(&[], [10, 0, 0, 1], [10, 0, 0, 2], 0, 17, (7, 53), 8);
        let rules = || vec!["loc 1 proto udp action queue 2".parse().unwrap()];
        for _ in 0..10 {
            // A rule change: a new classifier, the old one dropped.
            let (classifier, _) = pair(&rules(), Trust::None);
            classifier.classify(&frame);
            assert_eq!(classifier.rules().hits().collect::<Vec<_>>(), [(1, 1)]);
        }
        // The shard of the classifier dropped last goes with the next registration.
        let shards = with_thread_cache(|cache| cache.shards.len()).expect("cache");
        assert_eq!(shards, 1);
    })
    .join()
    .expect("classifying thread");
}
