use super::*;
use crate::packet::checksum::{fold, pseudo_header_v4, pseudo_header_v6, sum, verifies};
use etherparse::{PacketBuilder, SlicedPacket, TcpHeader, TcpOptionElement, TransportSlice};

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0x0b];
const SRC4: [u8; 4] = [10, 1, 0, 1];
const DST4: [u8; 4] = [10, 1, 0, 2];
const SRC6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a,
];
const DST6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0b,
];
const FIRST_SEQ: u32 = 0xffff_f000; // close to wrapping, to test sequence arithmetic
const MSS: u16 = 1448;

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
}

fn tcp_header_with_flags() -> TcpHeader {
    let mut tcp = TcpHeader::new(40000, 5201, FIRST_SEQ, 64240);
    tcp.ack = true;
    tcp.acknowledgment_number = 77;
    tcp.psh = true;
    tcp.fin = true;
    tcp.cwr = true;
    tcp.ece = true;
    tcp
}

/// Eth / IPv4 (id 0x1000) / TCP with the given payload, as etherparse builds it.
fn tso4_frame(payload: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(SRC4, DST4, 64)
        .tcp_header(tcp_header_with_flags());
    let mut frame = Vec::new();
    builder.write(&mut frame, payload).unwrap();
    // PacketBuilder writes identification 0; give it a value to see the increments.
    frame[18..20].copy_from_slice(&0xfffeu16.to_be_bytes());
    let mut ip = Ipv4Packet::new_checked(&mut frame[14..]).unwrap();
    ip.fill_checksum();
    frame
}

/// Eth / 802.1Q VID 7 / IPv6 / TCP with timestamp options and the given payload.
fn tso6_vlan_frame(payload: &[u8]) -> Vec<u8> {
    let mut tcp = tcp_header_with_flags();
    tcp.set_options(&[
        TcpOptionElement::Noop,
        TcpOptionElement::Noop,
        TcpOptionElement::Timestamp(1, 2),
    ])
    .unwrap();
    let builder = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .single_vlan(etherparse::VlanId::try_new(7).unwrap())
        .ipv6(SRC6, DST6, 64)
        .tcp_header(tcp);
    let mut frame = Vec::new();
    builder.write(&mut frame, payload).unwrap();
    frame
}

/// The 12-byte header a Linux guest sends with a TSO frame (hdr_len deliberately wrong: Linux
/// only promises a hint).
fn virtio_hdr(flags: u8, gso: u8, gso_size: u16, csum_start: u16, csum_offset: u16) -> [u8; 12] {
    let mut hdr = [0u8; 12];
    hdr[0] = flags;
    hdr[1] = gso;
    hdr[2..4].copy_from_slice(&1u16.to_le_bytes());
    hdr[4..6].copy_from_slice(&gso_size.to_le_bytes());
    hdr[6..8].copy_from_slice(&csum_start.to_le_bytes());
    hdr[8..10].copy_from_slice(&csum_offset.to_le_bytes());
    hdr
}

fn run_segment(frame: &[u8], gso: &GsoRequest) -> Vec<Vec<u8>> {
    let mut scratch = vec![0u8; segment_buffer_len(gso)];
    let mut segments = Vec::new();
    let count = segment(frame, gso, &mut scratch, |seg| segments.push(seg.to_vec())).unwrap();
    assert_eq!(count, segments.len());
    segments
}

/// Checks everything the receiver of the segments relies on.
fn assert_segments_reassemble(original_payload: &[u8], segments: &[Vec<u8>], ipv4: bool) {
    let expected_count = original_payload.len().div_ceil(usize::from(MSS));
    assert_eq!(segments.len(), expected_count);
    let mut reassembled = Vec::new();
    for (index, bytes) in segments.iter().enumerate() {
        let sliced = SlicedPacket::from_ethernet(bytes).unwrap();
        let Some(TransportSlice::Tcp(tcp)) = sliced.transport else {
            panic!("segment {index} is not TCP");
        };
        let payload = tcp.payload();
        assert!(payload.len() <= usize::from(MSS));
        let expected_seq = FIRST_SEQ.wrapping_add(reassembled.len() as u32);
        assert_eq!(
            tcp.sequence_number(),
            expected_seq,
            "segment {index} sequence"
        );
        reassembled.extend_from_slice(payload);

        let first = index == 0;
        let last = index + 1 == segments.len();
        assert_eq!(tcp.cwr(), first, "CWR on segment {index}");
        assert_eq!(tcp.fin(), last, "FIN on segment {index}");
        assert_eq!(tcp.psh(), last, "PSH on segment {index}");
        assert!(tcp.ack() && tcp.ece(), "ACK/ECE kept on segment {index}");

        match sliced.net {
            Some(etherparse::NetSlice::Ipv4(ip)) => {
                assert!(ipv4);
                let header = ip.header();
                assert!(
                    verifies(header.slice()),
                    "IPv4 header checksum of segment {index}"
                );
                assert_eq!(usize::from(header.total_len()), bytes.len() - 14);
                assert_eq!(
                    header.identification(),
                    0xfffeu16.wrapping_add(index as u16)
                );
                let expected = tcp
                    .to_header()
                    .calc_checksum_ipv4(&header.to_header(), payload);
                assert_eq!(
                    tcp.checksum(),
                    expected.unwrap(),
                    "TCP checksum of segment {index}"
                );
            }
            Some(etherparse::NetSlice::Ipv6(ip)) => {
                assert!(!ipv4);
                let header = ip.header();
                assert_eq!(usize::from(header.payload_length()), bytes.len() - 18 - 40);
                let expected = tcp
                    .to_header()
                    .calc_checksum_ipv6(&header.to_header(), payload);
                assert_eq!(
                    tcp.checksum(),
                    expected.unwrap(),
                    "TCP checksum of segment {index}"
                );
            }
            _ => panic!("segment {index} has no IP header"),
        }
    }
    assert_eq!(reassembled, original_payload);
}

#[test]
fn tso4_64k_frame_segments_into_verified_contiguous_segments() {
    let data = payload(65_000);
    let frame = tso4_frame(&data);
    let hdr = virtio_hdr(
        hdr_flags::NEEDS_CSUM,
        gso_type::TCPV4 | gso_type::ECN,
        MSS,
        34,
        16,
    );
    let offload = Offload::from_virtio_hdr(&hdr, &frame).unwrap();
    let gso = offload.gso.unwrap();
    assert_eq!(
        gso,
        GsoRequest {
            kind: GsoKind::Tcp4,
            ecn: true,
            size: MSS,
            hdr_len: 54
        }
    );
    let segments = run_segment(&frame, &gso);
    assert_segments_reassemble(&data, &segments, true);
}

#[test]
fn tso6_64k_frame_with_vlan_and_tcp_options_segments_correctly() {
    let data = payload(65_000);
    let frame = tso6_vlan_frame(&data);
    let hdr = virtio_hdr(hdr_flags::NEEDS_CSUM, gso_type::TCPV6, MSS, 58, 16);
    let offload = Offload::from_virtio_hdr(&hdr, &frame).unwrap();
    let gso = offload.gso.unwrap();
    assert_eq!(gso.hdr_len, 14 + 4 + 40 + 32);
    let segments = run_segment(&frame, &gso);
    assert_segments_reassemble(&data, &segments, false);
    for bytes in &segments {
        assert_eq!(&bytes[12..16], &[0x81, 0x00, 0x00, 0x07], "VLAN tag copied");
    }
}

#[test]
fn tso6_with_destination_options_header_is_segmented() {
    // Insert an 8-byte destination-options header between IPv6 and TCP by hand.
    let data = payload(5000);
    let plain = tso6_vlan_frame(&data);
    let l3 = 18;
    let mut frame = plain[..l3 + 40].to_vec();
    frame.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
    frame.extend_from_slice(&plain[l3 + 40..]);
    frame[l3 + 6] = 60;
    let payload_len = u16::from_be_bytes([frame[l3 + 4], frame[l3 + 5]]) + 8;
    frame[l3 + 4..l3 + 6].copy_from_slice(&payload_len.to_be_bytes());

    let hdr = virtio_hdr(hdr_flags::NEEDS_CSUM, gso_type::TCPV6, MSS, 66, 16);
    let gso = Offload::from_virtio_hdr(&hdr, &frame).unwrap().gso.unwrap();
    assert_eq!(gso.hdr_len, 18 + 40 + 8 + 32);
    let segments = run_segment(&frame, &gso);
    assert_eq!(segments.len(), 4);
    let mut reassembled = Vec::new();
    for bytes in &segments {
        let tcp_start = usize::from(gso.hdr_len) - 32;
        let tcp_len = bytes.len() - tcp_start;
        let pseudo = pseudo_header_v6(SRC6, DST6, 6, tcp_len as u32);
        assert_eq!(
            fold(pseudo + sum(&bytes[tcp_start..])),
            0xffff,
            "TCP checksum verifies"
        );
        let ip_payload = u16::from_be_bytes([bytes[l3 + 4], bytes[l3 + 5]]);
        assert_eq!(usize::from(ip_payload), bytes.len() - l3 - 40);
        reassembled.extend_from_slice(&bytes[usize::from(gso.hdr_len)..]);
    }
    assert_eq!(reassembled, data);
}

#[test]
fn tso4_with_qinq_tags_and_ip_options_copies_them_into_every_segment() {
    let data = payload(10_000);
    let mut ip = etherparse::Ipv4Header::new(0, 64, etherparse::IpNumber::TCP, SRC4, DST4).unwrap();
    ip.options = [0x94, 0x04, 0x00, 0x00][..].try_into().unwrap(); // router alert
    let builder = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .double_vlan(
            etherparse::VlanId::try_new(10).unwrap(),
            etherparse::VlanId::try_new(20).unwrap(),
        )
        .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
        .tcp_header(tcp_header_with_flags());
    let mut frame = Vec::new();
    builder.write(&mut frame, &data).unwrap();
    let l4 = 14 + 8 + 24;
    let hdr = virtio_hdr(hdr_flags::NEEDS_CSUM, gso_type::TCPV4, MSS, l4 as u16, 16);
    let gso = Offload::from_virtio_hdr(&hdr, &frame).unwrap().gso.unwrap();
    assert_eq!(usize::from(gso.hdr_len), l4 + 20);
    let segments = run_segment(&frame, &gso);
    assert_eq!(segments.len(), data.len().div_ceil(usize::from(MSS)));
    let mut reassembled = Vec::new();
    for bytes in &segments {
        assert_eq!(&bytes[..22], &frame[..22], "MACs and both tags copied");
        let ip = Ipv4Packet::new_checked(&bytes[22..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.options(), &[0x94, 0x04, 0x00, 0x00]);
        let tcp_len = bytes.len() - l4;
        let pseudo = pseudo_header_v4(SRC4, DST4, 6, tcp_len as u16);
        assert_eq!(
            fold(pseudo + sum(&bytes[l4..])),
            0xffff,
            "TCP checksum verifies"
        );
        reassembled.extend_from_slice(&bytes[l4 + 20..]);
    }
    assert_eq!(reassembled, data);
}

#[test]
fn payload_within_one_mss_gives_one_segment_with_all_flags() {
    let data = payload(100);
    let frame = tso4_frame(&data);
    let gso = GsoRequest {
        kind: GsoKind::Tcp4,
        ecn: false,
        size: MSS,
        hdr_len: 54,
    };
    let segments = run_segment(&frame, &gso);
    assert_eq!(segments.len(), 1);
    assert_eq!(segments[0], frame, "a single segment is the original frame");
}

#[test]
fn segment_needs_a_scratch_buffer_of_header_plus_mss() {
    let frame = tso4_frame(&payload(3000));
    let gso = GsoRequest {
        kind: GsoKind::Tcp4,
        ecn: false,
        size: MSS,
        hdr_len: 54,
    };
    let mut scratch = vec![0u8; 54 + usize::from(MSS) - 1];
    assert_eq!(
        segment(&frame, &gso, &mut scratch, |_| {}),
        Err(OffloadError::ScratchTooSmall {
            needed: 54 + 1448,
            have: 54 + 1447
        })
    );
}

#[test]
fn segment_rejects_gso_kind_that_does_not_match_the_frame() {
    let frame = tso4_frame(&payload(3000));
    let gso = GsoRequest {
        kind: GsoKind::Tcp6,
        ecn: false,
        size: MSS,
        hdr_len: 54,
    };
    let mut scratch = vec![0u8; 4096];
    assert_eq!(
        segment(&frame, &gso, &mut scratch, |_| {}),
        Err(OffloadError::GsoIpVersionMismatch {
            expected: 6,
            found: 4
        })
    );
}

// ---- header validation: one test per rejection reason ----

fn small_tcp4() -> Vec<u8> {
    tso4_frame(&payload(3000))
}

fn parse(hdr: &[u8], frame: &[u8]) -> Result<Offload, OffloadError> {
    Offload::from_virtio_hdr(hdr, frame)
}

#[test]
fn plain_header_without_offloads_is_accepted() {
    let hdr = virtio_hdr(0, gso_type::NONE, 0, 0, 0);
    assert_eq!(parse(&hdr, &small_tcp4()), Ok(Offload::default()));
}

#[test]
fn header_shorter_than_12_bytes_is_rejected() {
    let hdr = virtio_hdr(0, 0, 0, 0, 0);
    assert_eq!(
        parse(&hdr[..10], &small_tcp4()),
        Err(OffloadError::HeaderTooShort { len: 10 })
    );
}

#[test]
fn unknown_flag_bits_are_rejected() {
    let hdr = virtio_hdr(0x10, 0, 0, 0, 0);
    assert_eq!(
        parse(&hdr, &small_tcp4()),
        Err(OffloadError::UnknownFlags { flags: 0x10 })
    );
}

#[test]
fn rsc_info_from_a_driver_is_rejected() {
    let hdr = virtio_hdr(hdr_flags::RSC_INFO, 0, 0, 0, 0);
    assert_eq!(
        parse(&hdr, &small_tcp4()),
        Err(OffloadError::RscInfoFromDriver)
    );
}

#[test]
fn udp_gso_types_are_unsupported() {
    for raw in [gso_type::UDP, gso_type::UDP_L4, 2, 0x7f] {
        let hdr = virtio_hdr(hdr_flags::NEEDS_CSUM, raw, MSS, 34, 16);
        assert_eq!(
            parse(&hdr, &small_tcp4()),
            Err(OffloadError::UnsupportedGsoType { gso_type: raw })
        );
    }
}

#[test]
fn ecn_bit_without_tso_is_rejected() {
    let hdr = virtio_hdr(hdr_flags::NEEDS_CSUM, gso_type::ECN, 0, 34, 16);
    assert_eq!(parse(&hdr, &small_tcp4()), Err(OffloadError::EcnWithoutGso));
}

#[test]
fn gso_without_needs_csum_is_rejected() {
    let hdr = virtio_hdr(0, gso_type::TCPV4, MSS, 34, 16);
    assert_eq!(
        parse(&hdr, &small_tcp4()),
        Err(OffloadError::GsoWithoutCsum)
    );
}

#[test]
fn gso_size_zero_is_rejected() {
    let hdr = virtio_hdr(hdr_flags::NEEDS_CSUM, gso_type::TCPV4, 0, 34, 16);
    assert_eq!(parse(&hdr, &small_tcp4()), Err(OffloadError::GsoSizeZero));
}

#[test]
fn checksum_field_past_the_frame_end_is_rejected() {
    let frame = small_tcp4();
    let start = (frame.len() - 17) as u16;
    let hdr = virtio_hdr(hdr_flags::NEEDS_CSUM, 0, 0, start, 16);
    assert_eq!(
        parse(&hdr, &frame),
        Err(OffloadError::CsumOutOfFrame {
            start,
            offset: 16,
            frame_len: frame.len()
        })
    );
    // Exactly at the end is fine.
    let start = (frame.len() - 18) as u16;
    let hdr = virtio_hdr(hdr_flags::NEEDS_CSUM, 0, 0, start, 16);
    assert!(parse(&hdr, &frame).is_ok());
}

#[test]
fn tso_whose_checksum_request_misses_the_tcp_checksum_is_rejected() {
    let frame = small_tcp4();
    for (start, offset) in [(14u16, 16u16), (34, 6)] {
        let hdr = virtio_hdr(hdr_flags::NEEDS_CSUM, gso_type::TCPV4, MSS, start, offset);
        assert_eq!(
            parse(&hdr, &frame),
            Err(OffloadError::TsoCsumMismatch {
                start,
                offset,
                tcp_offset: 34
            })
        );
    }
}

#[test]
fn tso_of_a_non_ip_frame_is_rejected() {
    let mut frame = small_tcp4();
    frame[12..14].copy_from_slice(&[0x08, 0x06]);
    let hdr = virtio_hdr(hdr_flags::NEEDS_CSUM, gso_type::TCPV4, MSS, 34, 16);
    assert_eq!(parse(&hdr, &frame), Err(OffloadError::NotIp));
}

#[test]
fn tso4_on_an_ipv6_frame_is_rejected() {
    let frame = tso6_vlan_frame(&payload(3000));
    let hdr = virtio_hdr(hdr_flags::NEEDS_CSUM, gso_type::TCPV4, MSS, 58, 16);
    assert_eq!(
        parse(&hdr, &frame),
        Err(OffloadError::GsoIpVersionMismatch {
            expected: 4,
            found: 6
        })
    );
}

#[test]
fn tso_of_a_udp_frame_is_rejected() {
    let builder = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(SRC4, DST4, 64)
        .udp(1, 2);
    let mut frame = Vec::new();
    builder.write(&mut frame, &payload(3000)).unwrap();
    let hdr = virtio_hdr(hdr_flags::NEEDS_CSUM, gso_type::TCPV4, MSS, 34, 6);
    assert_eq!(
        parse(&hdr, &frame),
        Err(OffloadError::NotTcp { protocol: 17 })
    );
}

#[test]
fn tso_of_an_ip_fragment_is_rejected() {
    let mut frame = small_tcp4();
    frame[20] |= 0x20; // more fragments
    let hdr = virtio_hdr(hdr_flags::NEEDS_CSUM, gso_type::TCPV4, MSS, 34, 16);
    assert_eq!(parse(&hdr, &frame), Err(OffloadError::Fragmented));
}

#[test]
fn tso_with_ip_length_beyond_the_frame_is_rejected() {
    let frame = small_tcp4();
    let cut = &frame[..frame.len() - 1];
    let hdr = virtio_hdr(hdr_flags::NEEDS_CSUM, gso_type::TCPV4, MSS, 34, 16);
    assert_eq!(parse(&hdr, cut), Err(OffloadError::HeaderLengthBeyondFrame));
}

#[test]
fn tso_with_tcp_header_length_beyond_the_ip_packet_is_rejected() {
    let builder = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(SRC4, DST4, 64)
        .tcp_header(tcp_header_with_flags());
    let mut frame = Vec::new();
    builder.write(&mut frame, &[1, 2, 3, 4]).unwrap();
    frame[14 + 20 + 12] = 0xf0; // data offset 60 bytes, only 24 there
    let hdr = virtio_hdr(hdr_flags::NEEDS_CSUM, gso_type::TCPV4, MSS, 34, 16);
    assert_eq!(
        parse(&hdr, &frame),
        Err(OffloadError::HeaderLengthBeyondFrame)
    );
}

#[test]
fn tso_with_impossible_ip_header_length_is_rejected() {
    let mut frame = small_tcp4();
    frame[14] = 0x43; // IHL 3
    let hdr = virtio_hdr(hdr_flags::NEEDS_CSUM, gso_type::TCPV4, MSS, 34, 16);
    assert_eq!(parse(&hdr, &frame), Err(OffloadError::MalformedHeaders));
}

#[test]
fn maximal_mss_on_a_64k_frame_gives_one_segment() {
    let frame = tso6_vlan_frame(&payload(65_000));
    let gso = GsoRequest {
        kind: GsoKind::Tcp6,
        ecn: false,
        size: u16::MAX,
        hdr_len: 0,
    };
    let mut scratch = vec![0u8; 70_000];
    assert_eq!(segment(&frame, &gso, &mut scratch, |_| {}), Ok(1));
    let frame4 = tso4_frame(&payload(65_000));
    let gso4 = GsoRequest {
        kind: GsoKind::Tcp4,
        ecn: false,
        size: u16::MAX,
        hdr_len: 0,
    };
    assert_eq!(segment(&frame4, &gso4, &mut scratch, |_| {}), Ok(1));
}

// ---- checksum completion ----

#[test]
fn complete_checksum_turns_linux_partial_tcp_checksum_into_the_full_one() {
    let data = payload(999);
    let mut frame = tso4_frame(&data);
    let full = u16::from_be_bytes([frame[50], frame[51]]);
    // Linux leaves the folded pseudo-header sum (not complemented) in the field.
    let tcp_len = (frame.len() - 34) as u16;
    let partial = fold(pseudo_header_v4(SRC4, DST4, 6, tcp_len));
    frame[50..52].copy_from_slice(&partial.to_be_bytes());
    complete_checksum(
        &mut frame,
        &CsumRequest {
            start: 34,
            offset: 16,
        },
    )
    .unwrap();
    assert_eq!(u16::from_be_bytes([frame[50], frame[51]]), full);
}

#[test]
fn complete_checksum_works_for_udp_over_ipv6() {
    let builder = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv6(SRC6, DST6, 64)
        .udp(1000, 2000);
    let mut frame = Vec::new();
    builder.write(&mut frame, &payload(333)).unwrap();
    let full = u16::from_be_bytes([frame[60], frame[61]]);
    let udp_len = (frame.len() - 54) as u32;
    let partial = fold(pseudo_header_v6(SRC6, DST6, 17, udp_len));
    frame[60..62].copy_from_slice(&partial.to_be_bytes());
    complete_checksum(
        &mut frame,
        &CsumRequest {
            start: 54,
            offset: 6,
        },
    )
    .unwrap();
    assert_eq!(u16::from_be_bytes([frame[60], frame[61]]), full);
}

#[test]
fn complete_checksum_outside_the_frame_is_rejected() {
    let mut frame = [0u8; 40];
    assert_eq!(
        complete_checksum(
            &mut frame,
            &CsumRequest {
                start: 30,
                offset: 9
            }
        ),
        Err(OffloadError::CsumOutOfFrame {
            start: 30,
            offset: 9,
            frame_len: 40
        })
    );
}

// ---- the receive side ----

#[test]
fn written_header_parses_back_to_the_same_offload() {
    let frame = small_tcp4();
    let offload = Offload {
        csum: Some(CsumRequest {
            start: 34,
            offset: 16,
        }),
        gso: Some(GsoRequest {
            kind: GsoKind::Tcp4,
            ecn: true,
            size: MSS,
            hdr_len: 54,
        }),
        data_valid: false,
    };
    let mut out = [0u8; 12];
    offload.write_virtio_hdr(&mut out, 3);
    assert_eq!(u16::from_le_bytes([out[10], out[11]]), 3);
    assert_eq!(u16::from_le_bytes([out[2], out[3]]), 54);
    assert_eq!(Offload::from_virtio_hdr(&out, &frame), Ok(offload));
}

#[test]
fn rx_plan_follows_what_the_guest_negotiated() {
    let tso4 = Offload {
        csum: Some(CsumRequest {
            start: 34,
            offset: 16,
        }),
        gso: Some(GsoRequest {
            kind: GsoKind::Tcp4,
            ecn: false,
            size: MSS,
            hdr_len: 54,
        }),
        data_valid: false,
    };
    let all = GuestOffloads {
        csum: true,
        tso4: true,
        tso6: true,
        ecn: true,
    };
    assert_eq!(
        tso4.rx_plan(&all),
        RxPlan {
            action: RxAction::Deliver,
            header: tso4
        }
    );

    let csum_only = GuestOffloads {
        csum: true,
        ..GuestOffloads::default()
    };
    let verified = Offload {
        data_valid: true,
        ..Offload::default()
    };
    assert_eq!(
        tso4.rx_plan(&csum_only),
        RxPlan {
            action: RxAction::Segment,
            header: verified
        }
    );

    let ecn_tso = Offload {
        gso: Some(GsoRequest {
            ecn: true,
            ..tso4.gso.unwrap()
        }),
        ..tso4
    };
    let no_ecn = GuestOffloads { ecn: false, ..all };
    assert_eq!(ecn_tso.rx_plan(&no_ecn).action, RxAction::Segment);

    let partial = Offload { gso: None, ..tso4 };
    assert_eq!(partial.rx_plan(&csum_only).action, RxAction::Deliver);
    let nothing = GuestOffloads::default();
    assert_eq!(
        partial.rx_plan(&nothing),
        RxPlan {
            action: RxAction::CompleteChecksum,
            header: Offload::default()
        }
    );
}

// ---- robustness ----

/// xorshift64*: deterministic pseudo-random bytes without a dependency.
pub(crate) struct TestRng(u64);

impl TestRng {
    pub(crate) fn new(seed: u64) -> Self {
        TestRng(seed | 1)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub(crate) fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound.max(1) as u64) as usize
    }
}

#[test]
fn random_and_truncated_headers_and_frames_never_panic() {
    let mut rng = TestRng::new(0x5eed);
    let valid4 = small_tcp4();
    let valid6 = tso6_vlan_frame(&payload(3000));
    let mut scratch = vec![0u8; 2048];
    let mut accepted = 0;
    for round in 0..20_000 {
        let base = if round % 2 == 0 { &valid4 } else { &valid6 };
        let mut frame = base[..rng.below(base.len() + 1)].to_vec();
        // Flip a few bytes, mostly in the headers.
        for _ in 0..rng.below(4) {
            if !frame.is_empty() {
                let at = rng.below(frame.len().min(120));
                frame[at] = rng.next_u64() as u8;
            }
        }
        let mut hdr = [0u8; 12];
        for byte in hdr.iter_mut() {
            *byte = rng.next_u64() as u8;
        }
        // Bias towards plausible headers so the deeper checks run too.
        if round % 3 != 0 {
            hdr[0] &= hdr_flags::NEEDS_CSUM;
            hdr[1] = [gso_type::TCPV4, gso_type::TCPV6, gso_type::NONE][rng.below(3)];
            hdr[6..8].copy_from_slice(&(rng.below(80) as u16).to_le_bytes());
            hdr[8..10].copy_from_slice(&16u16.to_le_bytes());
            hdr[4..6].copy_from_slice(&(rng.below(2000) as u16).to_le_bytes());
        }
        let hdr_len = if round % 7 == 0 { rng.below(13) } else { 12 };
        if let Ok(offload) = Offload::from_virtio_hdr(&hdr[..hdr_len], &frame) {
            accepted += 1;
            if let Some(csum) = offload.csum {
                complete_checksum(&mut frame, &csum).unwrap();
            }
            if let Some(gso) = offload.gso {
                let _ = segment(&frame, &gso, &mut scratch, |seg| assert!(!seg.is_empty()));
            }
        }
        // Also segment with a request that was never validated.
        let gso = GsoRequest {
            kind: if round % 2 == 0 {
                GsoKind::Tcp4
            } else {
                GsoKind::Tcp6
            },
            ecn: false,
            size: rng.below(3000) as u16,
            hdr_len: rng.below(200) as u16,
        };
        let _ = segment(&frame, &gso, &mut scratch, |_| {});
    }
    assert!(
        accepted > 100,
        "the fuzz loop should reach the deep checks ({accepted})"
    );
}

#[test]
fn every_error_has_a_distinct_counter_name() {
    let samples = [
        OffloadError::HeaderTooShort { len: 0 },
        OffloadError::UnknownFlags { flags: 0 },
        OffloadError::RscInfoFromDriver,
        OffloadError::UnsupportedGsoType { gso_type: 0 },
        OffloadError::EcnWithoutGso,
        OffloadError::GsoWithoutCsum,
        OffloadError::GsoSizeZero,
        OffloadError::CsumOutOfFrame {
            start: 0,
            offset: 0,
            frame_len: 0,
        },
        OffloadError::NotIp,
        OffloadError::GsoIpVersionMismatch {
            expected: 4,
            found: 6,
        },
        OffloadError::NotTcp { protocol: 17 },
        OffloadError::Fragmented,
        OffloadError::TsoCsumMismatch {
            start: 0,
            offset: 0,
            tcp_offset: 34,
        },
        OffloadError::HeaderLengthBeyondFrame,
        OffloadError::MalformedHeaders,
        OffloadError::ScratchTooSmall { needed: 1, have: 0 },
    ];
    assert_eq!(samples.len(), OffloadError::COUNT);
    for (index, error) in samples.iter().enumerate() {
        assert_eq!(error.index(), index);
        assert_eq!(error.name(), OffloadError::NAMES[index]);
    }
    let mut names = OffloadError::NAMES.to_vec();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), OffloadError::COUNT);
}

/// The shortcut the NIC takes for plain frames gives every guest the header the full plan
/// would: for each of the 16 offload sets a guest can negotiate, and only for plain frames.
#[test]
fn the_plain_header_is_what_the_full_plan_writes_for_every_guest() {
    let plain = Offload::default();
    assert!(plain.is_plain());
    for bits in 0..16u8 {
        let guest = GuestOffloads {
            csum: bits & 1 != 0,
            tso4: bits & 2 != 0,
            tso6: bits & 4 != 0,
            ecn: bits & 8 != 0,
        };
        let plan = plain.rx_plan(&guest);
        assert_eq!(plan.action, RxAction::Deliver, "guest {guest:?}");
        let mut header = [0xffu8; VIRTIO_NET_HDR_LEN];
        plan.header.write_virtio_hdr(&mut header, 1);
        assert_eq!(header, PLAIN_RX_HEADER, "guest {guest:?}");
    }
    let csum = CsumRequest {
        start: 34,
        offset: 6,
    };
    assert!(
        !Offload {
            csum: Some(csum),
            ..plain
        }
        .is_plain()
    );
    assert!(
        !Offload {
            data_valid: true,
            ..plain
        }
        .is_plain()
    );
    let gso = GsoRequest {
        kind: GsoKind::Tcp4,
        ecn: false,
        size: 1448,
        hdr_len: 54,
    };
    assert!(
        !Offload {
            gso: Some(gso),
            ..plain
        }
        .is_plain()
    );
}
