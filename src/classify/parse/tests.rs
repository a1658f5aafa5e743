use super::*;
use crate::classify::test_frames::*;

/// The header ends of [`vxlan_ipv6_ext_tcp`], for the truncation test.
struct Ends {
    outer_eth: usize,
    outer_tag: usize,
    outer_ip: usize,
    outer_udp: usize,
    vxlan: usize,
    inner_eth: usize,
    inner_tag: usize,
    inner_ip_fixed: usize,
    inner_ext: usize,
    inner_tcp: usize,
}

/// Eth / 802.1Q(PCP 3, VID 100) / IPv4 with 4 option bytes (DSCP 10) / UDP 5555 -> 4789 /
/// VXLAN VNI 0x123456 / Eth / 802.1Q(PCP 5, VID 200) / IPv6 (DSCP 46) / hop-by-hop (8) /
/// destination options (16) / TCP with 12 option bytes 40000 -> 5001 / 10 payload bytes.
fn vxlan_ipv6_ext_tcp() -> (Vec<u8>, Ends) {
    let mut inner = l2(&[(TPID_8021Q, 5, 200)], ETH_IPV6);
    let tcp_header = tcp(40000, 5001, &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
    let ext_len = 8 + 16;
    inner.extend(ipv6(v6(1), v6(2), 46, 0, ext_len + tcp_header.len() + 10));
    inner.extend(ipv6_ext(60, 8));
    inner.extend(ipv6_ext(6, 16));
    inner.extend(tcp_header);
    inner.extend([0xaa; 10]);

    let mut frame = l2(&[(TPID_8021Q, 3, 100)], ETH_IPV4);
    let udp_payload = 8 + inner.len();
    frame.extend(ipv4(
        [10, 0, 0, 1],
        [10, 0, 0, 2],
        10,
        17,
        &[1, 1, 1, 0],
        8 + udp_payload,
    ));
    frame.extend(udp(5555, 4789, udp_payload));
    frame.extend(vxlan(0x12_3456));
    frame.extend(inner);
    let ends = Ends {
        outer_eth: 14,
        outer_tag: 18,
        outer_ip: 42,
        outer_udp: 50,
        vxlan: 58,
        inner_eth: 72,
        inner_tag: 76,
        inner_ip_fixed: 116,
        inner_ext: 140,
        inner_tcp: 172,
    };
    assert_eq!(frame.len(), 182);
    (frame, ends)
}

#[test]
fn full_vxlan_frame_gives_outer_vni_and_inner_fields() {
    let (frame, _) = vxlan_ipv6_ext_tcp();
    let parsed = FlowKey::parse(&frame, &DEFAULT_VXLAN_PORTS);
    assert_eq!(parsed.error, None);
    assert_eq!(parsed.reached, Stage::InnerL4);
    let outer = parsed.key.outer;
    assert_eq!(outer.vlans(), &[Vlan { vid: 100, pcp: 3 }]);
    assert_eq!(outer.src_ip, Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))));
    assert_eq!(outer.dst_ip, Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))));
    assert_eq!((outer.dscp, outer.proto), (Some(10), Some(17)));
    assert_eq!((outer.src_port, outer.dst_port), (Some(5555), Some(4789)));
    assert_eq!(parsed.key.vni, Some(0x12_3456));
    let inner = parsed.key.inner.unwrap();
    assert_eq!(inner.vlans(), &[Vlan { vid: 200, pcp: 5 }]);
    assert_eq!(inner.src_ip, Some(IpAddr::V6(Ipv6Addr::from(v6(1)))));
    assert_eq!(inner.dst_ip, Some(IpAddr::V6(Ipv6Addr::from(v6(2)))));
    assert_eq!((inner.dscp, inner.proto), (Some(46), Some(6)));
    assert_eq!((inner.src_port, inner.dst_port), (Some(40000), Some(5001)));
}

#[test]
fn truncation_at_every_offset_never_reports_fields_beyond_the_cut() {
    let (frame, e) = vxlan_ipv6_ext_tcp();
    let full = FlowKey::parse(&frame, &DEFAULT_VXLAN_PORTS).key;
    let full_inner = full.inner.unwrap();
    for cut in 0..=frame.len() {
        let parsed = FlowKey::parse(&frame[..cut], &DEFAULT_VXLAN_PORTS);
        let key = parsed.key;
        let ctx = format!("cut at {cut}: {parsed:?}");
        // Outer layer: each field appears exactly when its header is complete.
        let tag = if cut >= e.outer_tag { 1 } else { 0 };
        assert_eq!(key.outer.vlan_count, tag, "{ctx}");
        let ip = cut >= e.outer_ip;
        assert_eq!(key.outer.src_ip, full.outer.src_ip.filter(|_| ip), "{ctx}");
        assert_eq!(key.outer.dst_ip, full.outer.dst_ip.filter(|_| ip), "{ctx}");
        assert_eq!(key.outer.dscp, full.outer.dscp.filter(|_| ip), "{ctx}");
        assert_eq!(key.outer.proto, full.outer.proto.filter(|_| ip), "{ctx}");
        let udp = cut >= e.outer_udp;
        assert_eq!(
            key.outer.dst_port,
            full.outer.dst_port.filter(|_| udp),
            "{ctx}"
        );
        assert_eq!(key.vni, full.vni.filter(|_| cut >= e.vxlan), "{ctx}");
        // Inner layer.
        assert_eq!(key.inner.is_some(), cut >= e.vxlan, "{ctx}");
        let inner = key.inner.unwrap_or_default();
        assert_eq!(
            inner.vlan_count,
            if cut >= e.inner_tag { 1 } else { 0 },
            "{ctx}"
        );
        let ip6 = cut >= e.inner_ip_fixed;
        assert_eq!(inner.src_ip, full_inner.src_ip.filter(|_| ip6), "{ctx}");
        assert_eq!(inner.dscp, full_inner.dscp.filter(|_| ip6), "{ctx}");
        assert_eq!(
            inner.proto,
            full_inner.proto.filter(|_| cut >= e.inner_ext),
            "{ctx}"
        );
        let tcp = cut >= e.inner_tcp;
        assert_eq!(inner.src_port, full_inner.src_port.filter(|_| tcp), "{ctx}");
        assert_eq!(inner.dst_port, full_inner.dst_port.filter(|_| tcp), "{ctx}");

        let expected_error = match cut {
            c if c < e.outer_eth => Some(ParseError::EthernetTruncated),
            c if c < e.outer_tag => Some(ParseError::VlanTruncated),
            c if c < e.outer_ip => Some(ParseError::Ipv4Truncated),
            c if c < e.outer_udp => Some(ParseError::UdpTruncated),
            c if c < e.vxlan => Some(ParseError::VxlanTruncated),
            c if c < e.inner_eth => Some(ParseError::EthernetTruncated),
            c if c < e.inner_tag => Some(ParseError::VlanTruncated),
            c if c < e.inner_ip_fixed => Some(ParseError::Ipv6Truncated),
            c if c < e.inner_ext => Some(ParseError::Ipv6ExtensionTruncated),
            c if c < e.inner_tcp => Some(ParseError::TcpTruncated),
            _ => None,
        };
        assert_eq!(parsed.error, expected_error, "{ctx}");
        let expected_stage = match cut {
            c if c < e.outer_tag => Stage::Nothing,
            c if c < e.outer_ip => Stage::OuterL2,
            c if c < e.outer_udp => Stage::OuterL3,
            c if c < e.vxlan => Stage::OuterL4,
            c if c < e.inner_tag => Stage::Vxlan,
            c if c < e.inner_ext => Stage::InnerL2,
            c if c < e.inner_tcp => Stage::InnerL3,
            _ => Stage::InnerL4,
        };
        assert_eq!(parsed.reached, expected_stage, "{ctx}");
    }
}

#[test]
fn qinq_stack_reports_both_tags_outermost_first() {
    let frame = ipv4_l4(
        &[(TPID_8021AD, 6, 10), (TPID_8021Q, 2, 20)],
        [1, 1, 1, 1],
        [2, 2, 2, 2],
        0,
        17,
        (53, 53),
        4,
    );
    let key = FlowKey::parse(&frame, &DEFAULT_VXLAN_PORTS).key;
    assert_eq!(
        key.outer.vlans(),
        &[Vlan { vid: 10, pcp: 6 }, Vlan { vid: 20, pcp: 2 }]
    );
    assert_eq!(key.outer.outer_vlan(), Some(Vlan { vid: 10, pcp: 6 }));
    assert_eq!(key.outer.dst_port, Some(53));
}

#[test]
fn third_vlan_tag_stops_the_walk() {
    let frame = ipv4_l4(
        &[(TPID_8021AD, 0, 1), (TPID_8021Q, 0, 2), (TPID_8021Q, 0, 3)],
        [1, 1, 1, 1],
        [2, 2, 2, 2],
        0,
        6,
        (1, 2),
        0,
    );
    let parsed = FlowKey::parse(&frame, &DEFAULT_VXLAN_PORTS);
    assert_eq!(parsed.error, Some(ParseError::TooManyVlanTags));
    assert_eq!(parsed.key.outer.src_ip, None);
}

#[test]
fn ipv4_options_are_skipped_to_reach_the_ports() {
    let mut frame = l2(&[], ETH_IPV4);
    let tcp_header = tcp(1234, 80, &[]);
    frame.extend(ipv4(
        [10, 0, 0, 1],
        [10, 0, 0, 2],
        46,
        6,
        &[0x94, 4, 0, 0, 1, 1, 1, 0],
        20,
    ));
    frame.extend(tcp_header);
    let key = FlowKey::parse(&frame, &DEFAULT_VXLAN_PORTS).key;
    assert_eq!(
        (key.outer.src_port, key.outer.dst_port),
        (Some(1234), Some(80))
    );
    assert_eq!(key.outer.dscp, Some(46));
}

#[test]
fn ipv6_extension_headers_are_skipped_to_reach_the_ports() {
    let mut frame = l2(&[], ETH_IPV6);
    frame.extend(ipv6(v6(1), v6(2), 0, 0, 8 + 24 + 8 + 8));
    frame.extend(ipv6_ext(43, 8)); // hop-by-hop -> routing
    frame.extend(ipv6_ext(44, 24)); // routing -> fragment
    frame.extend([17, 0, 0, 0, 0, 0, 0, 1]); // fragment, offset 0, last -> UDP
    frame.extend(udp(999, 4242, 0));
    let parsed = FlowKey::parse(&frame, &DEFAULT_VXLAN_PORTS);
    assert_eq!(parsed.error, None);
    assert_eq!(parsed.key.outer.proto, Some(17));
    assert!(parsed.key.outer.fragment);
    assert_eq!(parsed.key.outer.dst_port, Some(4242));
}

#[test]
fn later_ipv4_fragment_has_no_ports() {
    let mut frame = ipv4_l4(&[], [1, 1, 1, 1], [2, 2, 2, 2], 0, 17, (7, 8), 16);
    frame[14 + 6..14 + 8].copy_from_slice(&0x0002u16.to_be_bytes()); // offset 16 bytes
    let parsed = FlowKey::parse(&frame, &DEFAULT_VXLAN_PORTS);
    assert_eq!(parsed.error, None);
    assert_eq!(parsed.reached, Stage::OuterL3);
    assert!(parsed.key.outer.fragment);
    assert_eq!(parsed.key.outer.dst_port, None);
}

#[test]
fn ethernet_padding_is_not_read_as_a_transport_header() {
    // IPv4 says TCP with no payload; 26 bytes of padding follow.
    let mut frame = l2(&[], ETH_IPV4);
    frame.extend(ipv4([1, 1, 1, 1], [2, 2, 2, 2], 0, 6, &[], 0));
    frame.extend([0x55; 26]);
    let parsed = FlowKey::parse(&frame, &DEFAULT_VXLAN_PORTS);
    assert_eq!(parsed.error, Some(ParseError::TcpTruncated));
    assert_eq!(parsed.key.outer.src_port, None);
}

#[test]
fn vxlan_only_on_configured_ports() {
    let inner = ipv4_l4(&[], [9, 9, 9, 9], [8, 8, 8, 8], 0, 6, (1, 2), 0);
    let frame = vxlan_over_ipv4(7, 1000, 0, &inner);
    assert_eq!(FlowKey::parse(&frame, &[]).key.vni, None);
    assert_eq!(FlowKey::parse(&frame, &[]).key.inner, None);
    assert_eq!(FlowKey::parse(&frame, &[8472, 4789]).key.vni, Some(7));
}

#[test]
fn vxlan_without_i_flag_is_reported() {
    let inner = ipv4_l4(&[], [9, 9, 9, 9], [8, 8, 8, 8], 0, 6, (1, 2), 0);
    let mut frame = vxlan_over_ipv4(7, 1000, 0, &inner);
    frame[42] = 0; // VXLAN flags
    let parsed = FlowKey::parse(&frame, &DEFAULT_VXLAN_PORTS);
    assert_eq!(parsed.error, Some(ParseError::VxlanNoVni));
    assert_eq!(parsed.key.vni, None);
}

#[test]
fn non_ip_frame_stops_after_layer_2_without_error() {
    let mut frame = l2(&[(TPID_8021Q, 1, 5)], 0x0806);
    frame.extend([0u8; 28]);
    let parsed = FlowKey::parse(&frame, &DEFAULT_VXLAN_PORTS);
    assert_eq!(parsed.error, None);
    assert_eq!(parsed.reached, Stage::OuterL2);
    assert_eq!(parsed.key.outer.ethertype, Some(0x0806));
}

#[test]
fn random_bytes_never_panic() {
    let (frame, _) = vxlan_ipv6_ext_tcp();
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let mut bytes = frame.clone();
        for _ in 0..(next() % 6) {
            let at = (next() % bytes.len() as u64) as usize;
            bytes[at] = next() as u8;
        }
        let len = (next() % (bytes.len() as u64 + 1)) as usize;
        let parsed = FlowKey::parse(&bytes[..len], &DEFAULT_VXLAN_PORTS);
        assert!(parsed.key.outer.vlan_count as usize <= MAX_TAGS);
    }
}

#[test]
fn parse_error_indices_are_dense_and_named() {
    for (index, error) in ParseError::ALL.iter().enumerate() {
        assert_eq!(error.index(), index);
        assert!(!error.name().is_empty());
    }
}

#[test]
fn parse_into_resets_what_a_previous_frame_left() {
    let (frame, _) = vxlan_ipv6_ext_tcp();
    let mut parsed = Parsed::default();
    FlowKey::parse_into(&frame, &DEFAULT_VXLAN_PORTS, &mut parsed);
    FlowKey::parse_into(&frame[..20], &DEFAULT_VXLAN_PORTS, &mut parsed);
    assert_eq!(parsed, FlowKey::parse(&frame[..20], &DEFAULT_VXLAN_PORTS));
    assert_eq!(parsed.key.inner, None);
}

#[test]
fn parsed_stays_small_enough_to_copy_cheaply() {
    // A guard against a field change that bloats the hot-path struct.
    assert!(
        std::mem::size_of::<Parsed>() <= 192,
        "{}",
        std::mem::size_of::<Parsed>()
    );
}
