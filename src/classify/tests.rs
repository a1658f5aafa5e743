use super::test_frames::*;
use super::*;

fn classifier(num_queues: u16, high_queues: u16, trust: Trust, rules: &[&str]) -> Classifier {
    let rules = RuleSet::new(rules.iter().map(|text| text.parse().unwrap()).collect()).unwrap();
    let config = ClassifierConfig {
        num_queues,
        high_queues,
        trust,
        ..ClassifierConfig::default()
    };
    Classifier::new(&config, rules).unwrap()
}

fn udp4(dscp: u8, sport: u16, dport: u16) -> Vec<u8> {
    ipv4_l4(
        &[],
        [10, 0, 0, 1],
        [10, 0, 0, 2],
        dscp,
        17,
        (sport, dport),
        8,
    )
}

#[test]
fn default_dscp_map_marks_ef_and_cs5_to_cs7_high() {
    let c = classifier(4, 1, Trust::default_dscp(), &[]);
    for dscp in 0..64u8 {
        let expected = if [40, 46, 48, 56].contains(&dscp) {
            Class::High
        } else {
            Class::Normal
        };
        assert_eq!(c.classify(&udp4(dscp, 1, 2)).class, expected, "dscp {dscp}");
    }
}

#[test]
fn default_pcp_map_marks_5_to_7_high_and_untagged_normal() {
    let c = classifier(4, 1, Trust::default_pcp(), &[]);
    for pcp in 0..8u8 {
        let frame = ipv4_l4(
            &[(TPID_8021Q, pcp, 9)],
            [1, 1, 1, 1],
            [2, 2, 2, 2],
            46,
            6,
            (1, 2),
            0,
        );
        let expected = if pcp >= 5 { Class::High } else { Class::Normal };
        assert_eq!(c.classify(&frame).class, expected, "pcp {pcp}");
    }
    assert_eq!(
        c.classify(&udp4(46, 1, 2)).class,
        Class::Normal,
        "untagged EF frame"
    );
}

#[test]
fn trust_none_leaves_everything_normal() {
    let c = classifier(4, 1, Trust::None, &[]);
    assert_eq!(c.classify(&udp4(46, 1, 2)).class, Class::Normal);
}

#[test]
fn high_class_goes_to_the_high_queue_set_and_normal_spreads_over_the_rest() {
    let c = classifier(4, 1, Trust::default_dscp(), &[]);
    let mut normal_queues = std::collections::BTreeSet::new();
    for sport in 0..200 {
        let high = c.classify(&udp4(46, sport, 9));
        assert_eq!(high.queue.queue(), 0);
        let normal = c.classify(&udp4(0, sport, 9));
        assert!(matches!(normal.queue, QueueChoice::Rss { .. }));
        normal_queues.insert(normal.queue.queue());
    }
    assert_eq!(normal_queues.into_iter().collect::<Vec<_>>(), vec![1, 2, 3]);
}

#[test]
fn rss_queue_is_the_indirection_of_the_toeplitz_hash() {
    let c = classifier(4, 1, Trust::None, &[]);
    let decision = c.classify(&udp4(0, 2794, 1766));
    let expected_hash = Toeplitz::default().hash_flow(
        "10.0.0.1".parse().unwrap(),
        "10.0.0.2".parse().unwrap(),
        Some((2794, 1766)),
    );
    let QueueChoice::Rss { queue, hash } = decision.queue else {
        panic!("{decision:?}")
    };
    assert_eq!(hash, expected_hash);
    assert_eq!(queue, [1, 2, 3][(hash as usize % 128) % 3]);
}

#[test]
fn a_one_queue_nic_computes_no_rss_hash() {
    // RSS has one queue to choose from: every frame not steered by a rule goes to queue 0
    // without a hash (the NIC falls back on the hash only to pick among its enabled queues),
    // whether decided without rules, by the rule screen, or from the flow cache.
    let plain = classifier(1, 1, Trust::default_dscp(), &[]);
    let ruled = classifier(
        1,
        1,
        Trust::default_dscp(),
        &[
            "loc 1 proto udp dst-port 5001 action class high",
            "loc 2 proto udp dst-port 53 action queue 0",
        ],
    );
    for c in [&plain, &ruled] {
        for sport in 0..50 {
            // Twice: the second time a cached flow's decision, if it went through the cache.
            for _ in 0..2 {
                for dscp in [0, 46] {
                    let decision = c.classify(&udp4(dscp, sport, 9));
                    assert_eq!(decision.queue, QueueChoice::Default(0), "{decision:?}");
                }
                let steered = c.classify(&udp4(0, sport, 5001)).queue;
                assert_eq!(steered, QueueChoice::Default(0));
            }
        }
    }
    let steered = ruled.classify(&udp4(0, 1, 5001));
    assert_eq!(
        (steered.class, steered.queue, steered.rule),
        (Class::High, QueueChoice::Default(0), Some(1))
    );
    assert_eq!(ruled.classify(&udp4(0, 1, 53)).queue, QueueChoice::Rule(0));
    // With two queues the hash is back.
    let two = classifier(2, 1, Trust::None, &[]);
    assert!(matches!(
        two.classify(&udp4(0, 1, 9)).queue,
        QueueChoice::Rss { .. }
    ));
}

#[test]
fn vxlan_frames_use_inner_dscp_and_inner_tuple() {
    let c = classifier(4, 1, Trust::default_dscp(), &[]);
    let inner_ef = ipv4_l4(&[], [172, 16, 0, 1], [172, 16, 0, 2], 46, 6, (5000, 80), 0);
    let decision = c.classify(&vxlan_over_ipv4(1, 33333, 0, &inner_ef));
    assert_eq!(decision.class, Class::High);
    // Two tunnelled frames of one inner flow with different outer source ports hash alike.
    let inner = ipv4_l4(&[], [172, 16, 0, 1], [172, 16, 0, 2], 0, 6, (5000, 80), 0);
    let a = c.classify(&vxlan_over_ipv4(1, 1111, 0, &inner));
    let b = c.classify(&vxlan_over_ipv4(1, 2222, 0, &inner));
    assert_eq!(a.queue, b.queue);
    let direct = c.classify(&inner);
    assert_eq!(a.queue, direct.queue);
}

#[test]
fn rule_class_and_queue_override_trust_and_rss() {
    let c = classifier(
        4,
        1,
        Trust::default_dscp(),
        &[
            "loc 10 proto udp dst-port 5001 action queue 3 class high",
            "loc 20 dscp 46 action class normal",
        ],
    );
    let steered = c.classify(&udp4(0, 1, 5001));
    assert_eq!(
        steered,
        Decision {
            class: Class::High,
            queue: QueueChoice::Rule(3),
            rule: Some(10),
            drop: false,
            parse_error: None
        }
    );
    let demoted = c.classify(&udp4(46, 1, 9));
    assert_eq!((demoted.class, demoted.rule), (Class::Normal, Some(20)));
    assert_ne!(demoted.queue.queue(), 0);
    assert_eq!(c.rules().hits().collect::<Vec<_>>(), vec![(10, 1), (20, 1)]);
}

#[test]
fn rule_with_only_a_queue_keeps_the_trust_class() {
    let c = classifier(
        4,
        1,
        Trust::default_dscp(),
        &["loc 1 proto udp action queue 2"],
    );
    let decision = c.classify(&udp4(46, 1, 2));
    assert_eq!(
        (decision.class, decision.queue),
        (Class::High, QueueChoice::Rule(2))
    );
}

#[test]
fn drop_rule_drops_and_names_itself() {
    let c = classifier(
        2,
        1,
        Trust::default_dscp(),
        &["loc 5 src-ip 10.0.0.0/24 action drop"],
    );
    let decision = c.classify(&udp4(0, 1, 2));
    assert!(decision.drop);
    assert_eq!(decision.rule, Some(5));
}

#[test]
fn lower_location_wins_between_drop_and_steer() {
    let c = classifier(
        2,
        1,
        Trust::None,
        &[
            "loc 2 proto udp dst-port 53 action queue 1",
            "loc 1 src-ip 10.0.0.1 action drop",
        ],
    );
    assert!(c.classify(&udp4(0, 1, 53)).drop);
}

#[test]
fn truncated_frame_falls_to_the_default_class_with_its_reason() {
    let c = classifier(
        4,
        1,
        Trust::default_dscp(),
        &["loc 1 action queue 2 class high"],
    );
    let frame = udp4(46, 1, 2);
    let decision = c.classify(&frame[..30]);
    assert_eq!(
        decision,
        Decision {
            class: Class::Normal,
            queue: QueueChoice::Default(1),
            rule: None,
            drop: false,
            parse_error: Some(ParseError::Ipv4Truncated)
        }
    );
}

#[test]
fn non_ip_frames_use_the_first_queue_of_their_class() {
    let c = classifier(4, 2, Trust::default_dscp(), &[]);
    let mut arp = l2(&[], 0x0806);
    arp.extend([0u8; 28]);
    assert_eq!(c.classify(&arp).queue, QueueChoice::Default(2));
}

#[test]
fn all_queues_high_lets_normal_frames_share_them() {
    let c = classifier(2, 2, Trust::default_dscp(), &[]);
    let queues: std::collections::BTreeSet<u16> = (0..100)
        .map(|port| c.classify(&udp4(0, port, 9)).queue.queue())
        .collect();
    assert_eq!(queues.into_iter().collect::<Vec<_>>(), vec![0, 1]);
}

#[test]
fn bad_configurations_are_refused() {
    let config = |num_queues, high_queues| ClassifierConfig {
        num_queues,
        high_queues,
        ..ClassifierConfig::default()
    };
    assert_eq!(
        Classifier::new(&config(0, 1), RuleSet::default()).unwrap_err(),
        ClassifierError::NoQueues
    );
    assert_eq!(
        Classifier::new(&config(2, 3), RuleSet::default()).unwrap_err(),
        ClassifierError::BadHighQueueCount { high: 3, total: 2 }
    );
    let rules = RuleSet::new(vec!["loc 7 action queue 4".parse().unwrap()]).unwrap();
    assert_eq!(
        Classifier::new(&config(4, 1), rules).unwrap_err(),
        ClassifierError::RuleQueueOutOfRange {
            location: 7,
            queue: 4,
            total: 4
        }
    );
}

#[test]
fn the_plain_ipv4_shortcut_decides_as_the_full_parse_does() {
    // Frames around the shortcut's edges: every protocol it knows and some it does not,
    // VXLAN and near-VXLAN ports, IP options, fragments, short and long announced lengths,
    // TCP data offsets, cuts at every length, tags, other ethertypes; then random bytes
    // flipped in their headers. Classifiers with and without RSS and with every trust mode.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut frames = Vec::new();
    for proto in [6u8, 17, 1, 132] {
        for dport in [80u16, 4789, 4790, 8472] {
            for dscp in [0u8, 46, 40, 63] {
                frames.push(ipv4_l4(
                    &[],
                    [10, 0, 0, 1],
                    [10, 0, 0, 2],
                    dscp,
                    proto,
                    (1234, dport),
                    18,
                ));
            }
        }
    }
    frames.push(ipv4_l4(
        &[(TPID_8021Q, 5, 10)],
        [10, 0, 0, 1],
        [10, 0, 0, 2],
        46,
        17,
        (1, 2),
        8,
    ));
    let mut with_options = l2(&[], ETH_IPV4);
    with_options.extend(ipv4([1, 2, 3, 4], [5, 6, 7, 8], 46, 17, &[1, 1, 1, 0], 8));
    with_options.extend(udp(1, 2, 0));
    frames.push(with_options);
    frames.push(vxlan_over_ipv4(7, 999, 0, &udp4(46, 3, 4)));
    let base = frames.clone();
    for frame in &base {
        for cut in 0..frame.len() {
            frames.push(frame[..cut].to_vec());
        }
        for _ in 0..200 {
            let mut mutated = frame.clone();
            for _ in 0..1 + rng.below(3) {
                // Mostly the bytes the shortcut reads: ethertype, IP header, ports, offset.
                let at = rng.below(mutated.len().min(60) as u64) as usize;
                mutated[at] = match rng.below(4) {
                    0 => rng.next() as u8,
                    1 => mutated[at] ^ (1 << rng.below(8)),
                    2 => 0,
                    _ => 0xff,
                };
            }
            frames.push(mutated);
        }
    }
    // With rules the shortcut runs the rule screen on the header's fields: rules of every
    // field the screen knows (ports, DSCP, outer IPv4 prefixes of both directions) and of
    // those it cannot screen a plain frame by (IPv6, inner layer, VNI, protocol alone).
    let rule_sets: [&[&str]; 6] = [
        &[],
        &["loc 1 proto udp dst-port 80 action queue 0 class high"],
        &[
            "loc 1 src-port 1234 action drop",
            "loc 2 dscp 40 action class high",
        ],
        &[
            "loc 1 src-ip 10.0.0.0/8 action queue 0",
            "loc 2 dst-ip 5.6.7.0/24 action class high",
        ],
        &[
            "loc 1 dst-ip 2001:db8::/32 action drop",
            "loc 2 inner proto udp dst-port 4 action class high",
            "loc 3 vni 999 action queue 0",
        ],
        &["loc 1 proto tcp action class high"],
    ];
    for rules in rule_sets {
        for num_queues in [1u16, 4] {
            for trust in [Trust::default_dscp(), Trust::default_pcp(), Trust::None] {
                let c = classifier(num_queues, 1, trust.clone(), rules);
                for frame in &frames {
                    assert_eq!(
                        c.classify(frame),
                        c.classify_uncached(frame),
                        "rules {rules:?}, {num_queues} queues, {trust:?}, frame {frame:02x?}"
                    );
                }
            }
        }
    }
}
