use super::*;
use crate::classify::parse::{FlowKey, Vlan};
use crate::classify::test_frames::Rng;
use std::net::{Ipv4Addr, Ipv6Addr};

fn rule(text: &str) -> Rule {
    text.parse()
        .unwrap_or_else(|error| panic!("`{text}`: {error}"))
}

fn tcp4_key(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, dscp: u8) -> FlowKey {
    let mut key = FlowKey::default();
    key.outer.ethertype = Some(0x0800);
    key.outer.src_ip = Some(IpAddr::V4(Ipv4Addr::from(src)));
    key.outer.dst_ip = Some(IpAddr::V4(Ipv4Addr::from(dst)));
    key.outer.dscp = Some(dscp);
    key.outer.proto = Some(6);
    key.outer.src_port = Some(sport);
    key.outer.dst_port = Some(dport);
    key
}

#[test]
fn text_form_round_trips_through_display() {
    for text in [
        "loc 10 proto tcp dst-port 5001 action queue 0 class high",
        "loc 3 inner proto udp src-ip 10.0.0.0/8 dst-ip 2001:db8::/32 src-port 9 action drop",
        "loc 7 dscp 46 vlan 100 pcp 5 vni 4096 action class normal",
        "loc 8 proto 47 action queue 3",
    ] {
        assert_eq!(rule(text).to_string(), text);
    }
}

#[test]
fn text_form_errors_name_the_problem() {
    let err = |text: &str| text.parse::<Rule>().unwrap_err();
    assert_eq!(
        err("dst-port 1 action drop"),
        RuleSyntaxError::MissingLocation
    );
    assert_eq!(
        err("loc 1 dport 1 action drop"),
        RuleSyntaxError::UnknownKeyword("dport".into())
    );
    assert_eq!(
        err("loc 1 dst-port"),
        RuleSyntaxError::MissingValue("dst-port".into())
    );
    assert!(matches!(
        err("loc 1 dst-port 70000 action drop"),
        RuleSyntaxError::BadValue { .. }
    ));
    assert!(matches!(
        err("loc 1 src-ip 10.0.0.0/33 action drop"),
        RuleSyntaxError::BadValue { .. }
    ));
    assert_eq!(
        err("loc 1 loc 2 action drop"),
        RuleSyntaxError::Repeated("loc".into())
    );
    assert_eq!(
        err("loc 1 dst-port 5"),
        RuleSyntaxError::Invalid(RuleError::NoAction)
    );
    assert_eq!(
        err("loc 1 action drop queue 2"),
        RuleSyntaxError::Invalid(RuleError::DropWithOtherAction)
    );
    assert_eq!(
        err("loc 1 proto icmp dst-port 5 action drop"),
        RuleSyntaxError::Invalid(RuleError::PortsNeedTcpOrUdp(Proto(1)))
    );
    assert_eq!(
        err("loc 1 dscp 64 action drop"),
        RuleSyntaxError::Invalid(RuleError::DscpOutOfRange(64))
    );
    assert_eq!(
        err("loc 1 pcp 8 action drop"),
        RuleSyntaxError::Invalid(RuleError::PcpOutOfRange(8))
    );
    assert_eq!(
        err("loc 1 vlan 4096 action drop"),
        RuleSyntaxError::Invalid(RuleError::VlanOutOfRange(4096))
    );
    assert_eq!(
        err("loc 1 vni 16777216 action drop"),
        RuleSyntaxError::Invalid(RuleError::VniOutOfRange(16_777_216))
    );
    // A keyword of the action part is not a match field.
    assert_eq!(
        err("loc 1 queue 1"),
        RuleSyntaxError::UnknownKeyword("queue".into())
    );
}

#[test]
fn prefixes_match_their_family_only() {
    let net: IpPrefix = "10.1.0.0/16".parse().unwrap();
    assert!(net.contains("10.1.200.3".parse().unwrap()));
    assert!(!net.contains("10.2.0.1".parse().unwrap()));
    assert!(!net.contains("::ffff:10.1.0.1".parse().unwrap()));
    let host: IpPrefix = "10.1.2.3".parse().unwrap();
    assert_eq!(host.len(), 32);
    let any6: IpPrefix = "::/0".parse().unwrap();
    assert!(any6.contains(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    let cleared: IpPrefix = "2001:db8::1/32".parse().unwrap();
    assert_eq!(cleared.to_string(), "2001:db8::/32");
}

#[test]
fn lowest_location_wins_whatever_the_bucket() {
    // loc 5 sits in the residual list, loc 9 in a port bucket: 5 must win.
    let rules = RuleSet::new(vec![
        rule("loc 9 proto tcp dst-port 80 action queue 1"),
        rule("loc 5 src-ip 10.0.0.0/8 action queue 2"),
        rule("loc 20 dscp 46 action class high"),
    ])
    .unwrap();
    let key = tcp4_key([10, 0, 0, 1], [1, 1, 1, 1], 999, 80, 46);
    assert_eq!(rules.find(&key).map(|r| r.location), Some(5));
    let outside = tcp4_key([11, 0, 0, 1], [1, 1, 1, 1], 999, 80, 46);
    assert_eq!(rules.find(&outside).map(|r| r.location), Some(9));
    let other_port = tcp4_key([11, 0, 0, 1], [1, 1, 1, 1], 999, 81, 46);
    assert_eq!(rules.find(&other_port).map(|r| r.location), Some(20));
    let nothing = tcp4_key([11, 0, 0, 1], [1, 1, 1, 1], 999, 81, 0);
    assert_eq!(rules.find(&nothing), None);
}

#[test]
fn prefix_buckets_of_different_lengths_and_families_keep_location_order() {
    let rules = RuleSet::new(vec![
        rule("loc 4 src-ip 10.1.0.0/16 action queue 1"),
        rule("loc 2 src-ip 10.1.2.0/24 action queue 2"),
        rule("loc 6 dst-ip 2001:db8::/32 action queue 3"),
        rule("loc 8 src-ip 0.0.0.0/0 action queue 0"),
    ])
    .unwrap();
    let found = |src: [u8; 4]| {
        rules
            .find(&tcp4_key(src, [1, 1, 1, 1], 1, 2, 0))
            .map(|r| r.location)
    };
    assert_eq!(found([10, 1, 2, 3]), Some(2));
    assert_eq!(found([10, 1, 3, 3]), Some(4));
    assert_eq!(found([10, 2, 3, 3]), Some(8));
    let mut v6 = tcp4_key([0; 4], [0; 4], 1, 2, 0);
    v6.outer.src_ip = Some("2001:db8::1".parse().unwrap());
    v6.outer.dst_ip = Some("2001:db8:0:1::2".parse().unwrap());
    assert_eq!(rules.find(&v6).map(|r| r.location), Some(6));
    v6.outer.dst_ip = Some("2001:db9::2".parse().unwrap());
    assert_eq!(rules.find(&v6), None, "an IPv4 /0 does not match IPv6");
}

#[test]
fn port_rule_without_protocol_matches_tcp_and_udp() {
    let rules = RuleSet::new(vec![rule("loc 1 dst-port 53 action queue 1")]).unwrap();
    let mut key = tcp4_key([1, 1, 1, 1], [2, 2, 2, 2], 1000, 53, 0);
    assert!(rules.find(&key).is_some());
    key.outer.proto = Some(17);
    assert!(rules.find(&key).is_some());
}

#[test]
fn inner_rules_need_an_inner_layer_and_vni_rules_a_vni() {
    let rules = RuleSet::new(vec![
        rule("loc 1 inner proto tcp dst-port 5001 action class high"),
        rule("loc 2 vni 42 action queue 3"),
    ])
    .unwrap();
    let plain = tcp4_key([1, 1, 1, 1], [2, 2, 2, 2], 1000, 5001, 0);
    assert_eq!(
        rules.find(&plain),
        None,
        "outer port 5001 must not match an inner rule"
    );
    let mut tunnelled = tcp4_key([1, 1, 1, 1], [2, 2, 2, 2], 1000, 4789, 0);
    tunnelled.outer.proto = Some(17);
    tunnelled.vni = Some(42);
    tunnelled.inner = Some(plain.outer);
    assert_eq!(rules.find(&tunnelled).map(|r| r.location), Some(1));
    tunnelled.inner.as_mut().unwrap().dst_port = Some(80);
    assert_eq!(rules.find(&tunnelled).map(|r| r.location), Some(2));
}

#[test]
fn vlan_and_pcp_match_the_outermost_tag() {
    let rules = RuleSet::new(vec![rule("loc 1 vlan 100 pcp 5 action class high")]).unwrap();
    let mut key = tcp4_key([1, 1, 1, 1], [2, 2, 2, 2], 1, 2, 0);
    assert_eq!(rules.find(&key), None);
    key.outer.vlans = [Vlan { vid: 100, pcp: 5 }, Vlan { vid: 7, pcp: 0 }];
    key.outer.vlan_count = 2;
    assert!(rules.find(&key).is_some());
    key.outer.vlans = [Vlan { vid: 7, pcp: 0 }, Vlan { vid: 100, pcp: 5 }];
    assert_eq!(rules.find(&key), None);
}

#[test]
fn hits_are_counted_per_rule() {
    let rules = RuleSet::new(vec![
        rule("loc 1 proto tcp dst-port 80 action queue 1"),
        rule("loc 2 proto tcp action queue 2"),
    ])
    .unwrap();
    for _ in 0..3 {
        rules.lookup(&tcp4_key([1, 1, 1, 1], [2, 2, 2, 2], 1, 80, 0));
    }
    rules.lookup(&tcp4_key([1, 1, 1, 1], [2, 2, 2, 2], 1, 443, 0));
    rules.find(&tcp4_key([1, 1, 1, 1], [2, 2, 2, 2], 1, 443, 0));
    assert_eq!(rules.hits().collect::<Vec<_>>(), vec![(1, 3), (2, 1)]);
}

#[test]
fn duplicate_locations_are_refused() {
    let result = RuleSet::new(vec![
        rule("loc 4 action drop"),
        rule("loc 4 dscp 1 action drop"),
    ]);
    assert!(matches!(
        result,
        Err(RulesError::DuplicateLocationInList(4))
    ));
}

// ---- TOML ----

#[test]
fn toml_file_loads_every_field() {
    let text = r#"
[[rule]]
loc = 10
proto = "tcp"
dst-port = 5001
queue = 0
class = "high"

[[rule]]
loc = 20
layer = "inner"
proto = 17
src-ip = "192.168.0.0/16"
dst-ip = "2001:db8::1"
src-port = 9
dscp = 34
vlan = 12
pcp = 3
vni = 77
drop = true
"#;
    let rules = RuleSet::from_toml(text, "rules.toml").unwrap();
    assert_eq!(
        rules.rules()[0],
        rule("loc 10 proto tcp dst-port 5001 action queue 0 class high")
    );
    assert_eq!(
        rules.rules()[1],
        rule(
            "loc 20 inner proto udp src-ip 192.168.0.0/16 dst-ip 2001:db8::1/128 src-port 9 \
             dscp 34 vlan 12 pcp 3 vni 77 action drop"
        )
    );
}

fn toml_error(text: &str) -> String {
    RuleSet::from_toml(text, "bad.toml")
        .unwrap_err()
        .to_string()
}

#[test]
fn toml_bad_value_reports_file_line_and_reason() {
    let text = "[[rule]]\nloc = 1\nsrc-ip = \"10.0.0.0/40\"\ndrop = true\n";
    let message = toml_error(text);
    assert!(message.starts_with("bad.toml:3:"), "{message}");
    assert!(message.contains("prefix length 40"), "{message}");
}

#[test]
fn toml_unknown_key_reports_its_line() {
    let text = "[[rule]]\nloc = 1\ndrop = true\n\n[[rule]]\nloc = 2\ndport = 80\nqueue = 1\n";
    let message = toml_error(text);
    assert!(message.starts_with("bad.toml:7:"), "{message}");
    assert!(message.contains("dport"), "{message}");
}

#[test]
fn toml_bad_protocol_and_port_types_are_reported() {
    let message = toml_error("[[rule]]\nloc = 1\nproto = \"gre-ish\"\ndrop = true\n");
    assert!(
        message.starts_with("bad.toml:3:") && message.contains("gre-ish"),
        "{message}"
    );
    let message = toml_error("[[rule]]\nloc = 1\ndst-port = 65536\ndrop = true\n");
    assert!(message.starts_with("bad.toml:3:"), "{message}");
}

#[test]
fn toml_rule_without_action_reports_the_rule_line() {
    let text = "[[rule]]\nloc = 1\ndrop = true\n\n[[rule]]\nloc = 2\ndst-port = 80\n";
    let message = toml_error(text);
    assert_eq!(
        message,
        "bad.toml:5: rule at loc 2: rule has no action (queue, class or drop)"
    );
}

#[test]
fn toml_duplicate_location_names_both_lines() {
    let text = "[[rule]]\nloc = 3\ndrop = true\n[[rule]]\nloc = 3\nqueue = 1\n";
    assert_eq!(
        toml_error(text),
        "bad.toml:4: loc 3 is already used by the rule at line 1"
    );
}

#[test]
fn toml_syntax_error_reports_line() {
    let message = toml_error("[[rule]]\nloc = 1\ndrop = tru\n");
    assert!(message.starts_with("bad.toml:3:"), "{message}");
}

#[test]
fn empty_toml_file_gives_no_rules() {
    assert!(RuleSet::from_toml("", "empty.toml").unwrap().is_empty());
}

// ---- compiled lookup against a linear scan ----

/// Prefixes of assorted families and lengths (0 included) over the addresses
/// [`random_address`] produces.
fn random_prefix(rng: &mut Rng) -> IpPrefix {
    let len = [0u8, 8, 16, 24, 32][rng.below(5) as usize];
    match rng.below(4) {
        0 => IpPrefix::new(random_address(rng, true), len * 4).unwrap(),
        _ => IpPrefix::new(random_address(rng, false), len).unwrap(),
    }
}

/// Addresses from a small space: 10.a.b.c (IPv4) or 2001:db8::a:b:c (IPv6), a, b, c in 0..4.
fn random_address(rng: &mut Rng, v6: bool) -> IpAddr {
    let (a, b, c) = (rng.below(4) as u8, rng.below(4) as u8, rng.below(4) as u8);
    if v6 {
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0,
            0,
            0,
            a.into(),
            b.into(),
            c.into(),
        ))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, a, b, c))
    }
}

/// Small value ranges so random rules and random frames collide often.
fn random_rule(rng: &mut Rng, location: u32) -> Rule {
    let layer = if rng.chance(20) {
        Layer::Inner
    } else {
        Layer::Outer
    };
    let proto = rng.chance(60).then(|| [6u8, 17, 1][rng.below(3) as usize]);
    let ports_ok = proto.is_none_or(|p| p == 6 || p == 17);
    let matches = RuleMatch {
        layer,
        src_ip: rng.chance(15).then(|| random_prefix(rng)),
        dst_ip: rng.chance(10).then(|| random_prefix(rng)),
        src_port: (ports_ok && rng.chance(20)).then(|| 1000 + rng.below(8) as u16),
        dst_port: (ports_ok && rng.chance(50)).then(|| 80 + rng.below(16) as u16),
        proto,
        dscp: rng.chance(20).then(|| rng.below(4) as u8 * 8),
        vlan: rng.chance(10).then(|| rng.below(3) as u16),
        pcp: rng.chance(10).then(|| rng.below(8) as u8),
        vni: rng.chance(10).then(|| rng.below(3) as u32),
    };
    let action = if rng.chance(10) {
        RuleAction::Drop
    } else {
        RuleAction::Set {
            queue: Some(rng.below(4) as u16),
            class: None,
        }
    };
    Rule {
        location,
        matches,
        action,
    }
}

/// A random key: outer headers, and VXLAN inner ones (with a VNI of 0-2) three times in ten.
fn random_key(rng: &mut Rng) -> FlowKey {
    let mut key = FlowKey {
        outer: random_layer(rng),
        ..FlowKey::default()
    };
    if rng.chance(30) {
        key.vni = Some(rng.below(3) as u32);
        key.inner = Some(random_layer(rng));
    }
    key
}

fn random_layer(rng: &mut Rng) -> LayerKey {
    let mut layer = LayerKey::default();
    if rng.chance(30) {
        layer.vlan_count = 1;
        layer.vlans[0] = Vlan {
            vid: rng.below(3) as u16,
            pcp: rng.below(8) as u8,
        };
    }
    layer.ethertype = Some(0x0800);
    if rng.chance(95) {
        let v6 = rng.chance(25);
        layer.ethertype = Some(if v6 { 0x86dd } else { 0x0800 });
        layer.src_ip = Some(random_address(rng, v6));
        layer.dst_ip = Some(random_address(rng, v6));
        layer.dscp = Some(rng.below(4) as u8 * 8);
        let proto = [6u8, 17, 1][rng.below(3) as usize];
        layer.proto = Some(proto);
        if proto != 1 && rng.chance(95) {
            layer.src_port = Some(1000 + rng.below(8) as u16);
            layer.dst_port = Some(80 + rng.below(16) as u16);
        }
    }
    layer
}

#[test]
fn compiled_lookup_equals_linear_scan_on_random_rules_and_frames() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..20 {
        let count = [0usize, 1, 10, 100, 1000][round % 5];
        let mut locations: Vec<u32> = (0..count as u32 * 3).collect();
        // Shuffle so insertion order differs from location order.
        for i in (1..locations.len()).rev() {
            locations.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let rules: Vec<Rule> = locations
            .iter()
            .take(count)
            .map(|&loc| random_rule(&mut rng, loc))
            .collect();
        let mut linear = rules.clone();
        linear.sort_by_key(|r| r.location);
        let compiled = RuleSet::new(rules).unwrap();
        for _ in 0..2000 {
            let key = random_key(&mut rng);
            let expected = linear
                .iter()
                .find(|r| r.matches.matches(&key))
                .map(|r| r.location);
            assert_eq!(compiled.find(&key).map(|r| r.location), expected, "{key:?}");
        }
    }
}

#[test]
fn inherit_hits_keeps_counts_of_unchanged_rules_only() {
    let key = tcp4_key([1, 1, 1, 1], [2, 2, 2, 2], 1, 80, 0);
    let old = RuleSet::new(vec![
        rule("loc 1 proto tcp dst-port 80 action queue 1"),
        rule("loc 2 proto tcp action queue 2"),
    ])
    .unwrap();
    old.lookup(&key);
    old.lookup(&key);
    let mut other = key;
    other.outer.dst_port = Some(443);
    old.lookup(&other);
    let new = RuleSet::new(vec![
        rule("loc 1 proto tcp dst-port 80 action queue 1"),
        rule("loc 2 proto tcp action queue 3"),
        rule("loc 3 proto udp action queue 0"),
    ])
    .unwrap();
    new.inherit_hits(&old);
    assert_eq!(new.hits().collect::<Vec<_>>(), vec![(1, 2), (2, 0), (3, 0)]);
}

/// Whether `rule` goes into a bucket (else into the residual list, which the screen cannot
/// rule out).
fn is_bucketed(rule: &Rule) -> bool {
    let m = &rule.matches;
    m.dst_port.is_some()
        || m.src_port.is_some()
        || m.vni.is_some()
        || m.src_ip.is_some_and(|p| !p.is_empty())
        || m.dst_ip.is_some_and(|p| !p.is_empty())
        || m.dscp.is_some()
}

#[test]
fn the_screen_rules_out_only_frames_no_rule_matches() {
    let mut rng = Rng(0x5c2e_e000_0000_0001);
    let (mut screened_out, mut total) = (0usize, 0usize);
    for round in 0..40 {
        let count = [1usize, 2, 5, 10, 100][round % 5];
        let mut rules: Vec<Rule> = Vec::new();
        let mut location = 0;
        while rules.len() < count {
            let rule = random_rule(&mut rng, location);
            location += 1;
            // Every other round keeps a residual rule or two, which the screen must answer
            // "may match" for.
            if is_bucketed(&rule) || (round % 2 == 1 && rules.len() < 2) {
                rules.push(rule);
            }
        }
        let has_residual = !rules.iter().all(is_bucketed);
        let compiled = RuleSet::new(rules).unwrap();
        for _ in 0..2000 {
            let key = random_key(&mut rng);
            total += 1;
            if !compiled.may_match(&key) {
                screened_out += 1;
                assert!(!has_residual, "a residual rule was screened out: {key:?}");
                assert_eq!(
                    compiled.find(&key),
                    None,
                    "screened out, but a rule matches {key:?}"
                );
            }
        }
    }
    // The screen must also be of use: with few rules over these small value ranges, many
    // frames match none, and most of those are screened out.
    assert!(
        screened_out * 5 > total,
        "{screened_out} of {total} screened out"
    );
}

#[test]
fn the_screen_rules_out_traffic_far_from_the_rules() {
    // Rules on ports, DSCP, VNIs and prefixes of both families and layers; frames that share
    // none of their values are screened out, and one field in common is enough to let a frame
    // through to the lookup.
    let rules = RuleSet::new(vec![
        rule("loc 1 proto udp dst-port 5001 action queue 1"),
        rule("loc 2 proto tcp src-port 7000 action queue 1"),
        rule("loc 3 dscp 46 action class high"),
        rule("loc 4 vni 77 action queue 2"),
        rule("loc 5 src-ip 192.168.1.0/24 action drop"),
        rule("loc 6 dst-ip 172.16.0.9 proto udp action queue 0"),
        rule("loc 7 inner src-ip 2001:db8::/32 action queue 3"),
    ])
    .unwrap();
    let far = tcp4_key([10, 0, 0, 1], [10, 0, 0, 2], 1234, 80, 0);
    assert!(!rules.may_match(&far));
    let mut tunnelled = far;
    tunnelled.vni = Some(5);
    tunnelled.inner = Some(tcp4_key([10, 1, 0, 1], [10, 1, 0, 2], 1, 2, 0).outer);
    assert!(!rules.may_match(&tunnelled));
    let near = [
        tcp4_key([10, 0, 0, 1], [10, 0, 0, 2], 1234, 5001, 0),
        tcp4_key([10, 0, 0, 1], [10, 0, 0, 2], 7000, 80, 0),
        tcp4_key([10, 0, 0, 1], [10, 0, 0, 2], 1234, 80, 46),
        tcp4_key([192, 168, 1, 200], [10, 0, 0, 2], 1234, 80, 0),
        tcp4_key([10, 0, 0, 1], [172, 16, 0, 9], 1234, 80, 0),
    ];
    for key in near {
        assert!(rules.may_match(&key), "{key:?}");
    }
    let mut vni = tunnelled;
    vni.vni = Some(77);
    assert!(rules.may_match(&vni));
    let mut inner_v6 = tunnelled;
    if let Some(inner) = inner_v6.inner.as_mut() {
        inner.src_ip = Some("2001:db8::5".parse().unwrap());
        inner.dst_ip = Some("2001:db8::6".parse().unwrap());
    }
    assert!(rules.may_match(&inner_v6));
    // A residual rule (no bucketed field) may match anything.
    let residual = RuleSet::new(vec![rule("loc 1 proto tcp action queue 1")]).unwrap();
    assert!(residual.may_match(&far));
    // Rules for every DSCP value may match every IP frame: the screen lets all through.
    let every_dscp: Vec<Rule> = (0..64)
        .map(|dscp| rule(&format!("loc {dscp} dscp {dscp} action class high")))
        .collect();
    assert!(RuleSet::new(every_dscp).unwrap().may_match(&far));
    // No rules: nothing can match.
    assert!(!RuleSet::default().may_match(&far));
}
