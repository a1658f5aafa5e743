//! Frames and virtio-net headers for the tests: builders for the traffic the tests send and
//! independent checkers (our own Internet checksum, etherparse for parsing) for what arrives.

use etherparse::{Ipv4HeaderSlice, Ipv6HeaderSlice, PacketBuilder, TcpHeaderSlice};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
};

use super::{HarnessError, Result};

/// Size of `virtio_net_hdr_v1`, the only header format with VERSION_1 (defined once, in
/// the crate's packet module).
pub use prism_vnic::packet::offload::VIRTIO_NET_HDR_LEN;
pub const BROADCAST: [u8; 6] = [0xff; 6];
pub const ETH_LEN: usize = 14;
pub const IPV4_LEN: usize = 20;
pub const TCP_LEN: usize = 20;
/// The MSS Linux uses for a 1500-byte MTU with TCP timestamps off.
pub const MSS: u16 = 1460;

/// `struct virtio_net_hdr_v1`, all fields little-endian on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioNetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub num_buffers: u16,
}

impl VirtioNetHdr {
    /// A header for a plain frame: no offload requested.
    pub fn plain() -> Self {
        VirtioNetHdr {
            gso_type: VIRTIO_NET_HDR_GSO_NONE as u8,
            ..Default::default()
        }
    }

    /// The header Linux virtio-net writes for a TCP/IPv4 TSO frame: partial checksum,
    /// TCPV4 segmentation at `mss`.
    pub fn tso4(mss: u16) -> Self {
        VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4 as u8,
            hdr_len: (ETH_LEN + IPV4_LEN + TCP_LEN) as u16,
            gso_size: mss,
            csum_start: (ETH_LEN + IPV4_LEN) as u16,
            csum_offset: 16,
            num_buffers: 0,
        }
    }

    pub fn to_bytes(self) -> [u8; VIRTIO_NET_HDR_LEN] {
        let mut b = [0u8; VIRTIO_NET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; VIRTIO_NET_HDR_LEN]) -> Self {
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        VirtioNetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
            num_buffers: le(10),
        }
    }
}

/// A locally administered unicast MAC derived from a small number (guest identity).
pub fn mac(n: u8) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x12, 0x34, n]
}

/// An IPv4 address for guest `n` in 10.0.0.0/24.
pub fn ip(n: u8) -> [u8; 4] {
    [10, 0, 0, n]
}

/// A UDP/IPv4 frame with correct checksums. `tag` is written into the payload so a test can
/// tell its frames apart; the payload is padded with a pattern to `payload_len`.
pub fn udp_frame(
    src: u8,
    dst_mac: [u8; 6],
    dst: u8,
    src_port: u16,
    dst_port: u16,
    tag: u32,
    payload_len: usize,
) -> Vec<u8> {
    let payload = tagged_payload(tag, payload_len);
    let builder = PacketBuilder::ethernet2(mac(src), dst_mac)
        .ipv4(ip(src), ip(dst), 64)
        .udp(src_port, dst_port);
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    // Writing to a Vec cannot fail for I/O; only oversize payloads fail, which tests never
    // build (they are programming errors in the test).
    builder
        .write(&mut frame, &payload)
        .expect("test frame within IPv4 limits");
    frame
}

/// A tagged UDP frame from guest 1 to guest 2 with DSCP `dscp` (IPv4 header checksum fixed).
pub fn dscp_frame(src_port: u16, dst_port: u16, dscp: u8, tag: u32) -> Vec<u8> {
    let mut frame = udp_frame(1, mac(2), 2, src_port, dst_port, tag, 64);
    frame[15] = dscp << 2;
    frame[24] = 0;
    frame[25] = 0;
    let sum = frame[14..34]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    let checksum = !(((folded & 0xffff) + (folded >> 16)) as u16);
    frame[24..26].copy_from_slice(&checksum.to_be_bytes());
    frame
}

/// A frame of exactly `len` bytes (Ethernet + IPv4 + UDP + padding payload).
pub fn udp_frame_of_len(src: u8, dst_mac: [u8; 6], dst: u8, tag: u32, len: usize) -> Vec<u8> {
    let overhead = ETH_LEN + IPV4_LEN + 8;
    udp_frame(
        src,
        dst_mac,
        dst,
        4000,
        5000,
        tag,
        len.saturating_sub(overhead),
    )
}

/// Payload starting with the 4-byte tag, then a position-dependent pattern (so reordered or
/// duplicated chunks are detected when comparing).
pub fn tagged_payload(tag: u32, len: usize) -> Vec<u8> {
    let mut p: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let t = tag.to_be_bytes();
    for (i, b) in t.iter().enumerate().take(len) {
        p[i] = *b;
    }
    p
}

/// The tag of a frame built by [`udp_frame`], if it is one of ours.
pub fn udp_tag(frame: &[u8]) -> Option<u32> {
    let start = ETH_LEN + IPV4_LEN + 8;
    let t = frame.get(start..start + 4)?;
    Some(u32::from_be_bytes([t[0], t[1], t[2], t[3]]))
}

/// A TCP/IPv4 frame as the Linux stack hands a TSO super-frame to virtio-net: IPv4 header
/// checksum complete, TCP checksum field holding the folded pseudo-header sum (addresses,
/// protocol, TCP length), not complemented — the device completes it.
pub fn tcp_tso_frame(src: u8, dst_mac: [u8; 6], dst: u8, seq: u32, payload: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(mac(src), dst_mac)
        .ipv4(ip(src), ip(dst), 64)
        .tcp(40000, 5201, seq, 65535)
        .ack(1)
        .psh();
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder
        .write(&mut frame, payload)
        .expect("test frame within IPv4 limits");
    let tcp_len = frame.len() - ETH_LEN - IPV4_LEN;
    let pseudo = pseudo_header_sum(ip(src), ip(dst), tcp_len as u32);
    let csum_at = ETH_LEN + IPV4_LEN + 16;
    frame[csum_at..csum_at + 2].copy_from_slice(&fold(pseudo).to_be_bytes());
    frame
}

/// One's complement sum of the IPv4 pseudo-header for TCP, unfolded.
fn pseudo_header_sum(src: [u8; 4], dst: [u8; 4], tcp_len: u32) -> u32 {
    let mut sum = 0u32;
    sum += u32::from(u16::from_be_bytes([src[0], src[1]]));
    sum += u32::from(u16::from_be_bytes([src[2], src[3]]));
    sum += u32::from(u16::from_be_bytes([dst[0], dst[1]]));
    sum += u32::from(u16::from_be_bytes([dst[2], dst[3]]));
    sum += 6; // protocol TCP
    sum += tcp_len;
    sum
}

fn add_bytes(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum = sum.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
        // Fold early so huge frames cannot overflow.
        sum = (sum & 0xffff) + (sum >> 16);
    }
    if let [last] = chunks.remainder() {
        sum = sum.wrapping_add(u32::from(*last) << 8);
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// A parsed TCP/IPv4 frame, checked for structure (not checksums).
#[derive(Debug)]
pub struct TcpFrame<'a> {
    pub ip: Ipv4HeaderSlice<'a>,
    pub tcp: TcpHeaderSlice<'a>,
    pub payload: &'a [u8],
    /// Offset of the TCP header in the frame.
    pub l4_offset: usize,
}

pub fn parse_tcp4(frame: &[u8]) -> Result<TcpFrame<'_>> {
    let bad = |what: String| HarnessError::Frame(what);
    if frame.len() < ETH_LEN || frame[12..14] != [0x08, 0x00] {
        return Err(bad(format!(
            "not an IPv4 Ethernet frame ({} bytes)",
            frame.len()
        )));
    }
    let ip = Ipv4HeaderSlice::from_slice(&frame[ETH_LEN..])
        .map_err(|e| bad(format!("IPv4 header: {e}")))?;
    let l4_offset = ETH_LEN + ip.slice().len();
    let ip_end = ETH_LEN + usize::from(ip.total_len());
    if ip_end > frame.len() {
        return Err(bad(format!(
            "IPv4 total length {} beyond frame of {}",
            ip.total_len(),
            frame.len()
        )));
    }
    let tcp = TcpHeaderSlice::from_slice(&frame[l4_offset..ip_end])
        .map_err(|e| bad(format!("TCP header: {e}")))?;
    let payload = &frame[l4_offset + tcp.slice().len()..ip_end];
    Ok(TcpFrame {
        ip,
        tcp,
        payload,
        l4_offset,
    })
}

/// True when the IPv4 header checksum is correct.
pub fn ipv4_checksum_ok(frame: &TcpFrame<'_>) -> bool {
    fold(add_bytes(0, frame.ip.slice())) == 0xffff
}

/// True when the TCP checksum over pseudo-header, header and payload is correct.
pub fn tcp_checksum_ok(raw: &[u8], frame: &TcpFrame<'_>) -> bool {
    let ip_end = ETH_LEN + usize::from(frame.ip.total_len());
    let segment = &raw[frame.l4_offset..ip_end];
    let sum = pseudo_header_sum(
        frame.ip.source(),
        frame.ip.destination(),
        segment.len() as u32,
    );
    fold(add_bytes(sum, segment)) == 0xffff
}

/// What a guest driver does with a NEEDS_CSUM frame before checking it: fold the one's
/// complement sum from `csum_start` to the end (the field holds the pseudo-header sum) and
/// store its complement at `csum_start + csum_offset`. Frames without NEEDS_CSUM are
/// returned unchanged.
pub fn complete_partial_checksum(frame: &[u8], hdr: &VirtioNetHdr) -> Result<Vec<u8>> {
    let mut out = frame.to_vec();
    if u32::from(hdr.flags) & VIRTIO_NET_HDR_F_NEEDS_CSUM == 0 {
        return Ok(out);
    }
    let start = usize::from(hdr.csum_start);
    let at = start + usize::from(hdr.csum_offset);
    if at + 2 > out.len() {
        return Err(HarnessError::Frame(format!(
            "csum_start {start} + csum_offset {} beyond frame of {}",
            hdr.csum_offset,
            out.len()
        )));
    }
    let csum = !fold(add_bytes(0, &out[start..]));
    out[at..at + 2].copy_from_slice(&csum.to_be_bytes());
    Ok(out)
}

/// The MSS for TCP over IPv6 with a 1500-byte MTU.
pub const MSS6: u16 = 1440;
pub const IPV6_LEN: usize = 40;

/// An IPv6 address for guest `n`: fd00::n.
pub fn ip6(n: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xfd;
    a[15] = n;
    a
}

impl VirtioNetHdr {
    /// The header Linux writes for a TCP/IPv6 TSO frame.
    pub fn tso6(mss: u16) -> Self {
        VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV6 as u8,
            hdr_len: (ETH_LEN + IPV6_LEN + TCP_LEN) as u16,
            gso_size: mss,
            csum_start: (ETH_LEN + IPV6_LEN) as u16,
            csum_offset: 16,
            num_buffers: 0,
        }
    }
}

fn pseudo_header_sum6(src: [u8; 16], dst: [u8; 16], tcp_len: u32) -> u32 {
    let mut sum = add_bytes(0, &src);
    sum = add_bytes(sum, &dst);
    sum += tcp_len >> 16;
    sum += tcp_len & 0xffff;
    sum + 6
}

/// A TCP/IPv6 TSO super-frame with the partial (pseudo-header) checksum Linux leaves.
pub fn tcp6_tso_frame(src: u8, dst_mac: [u8; 6], dst: u8, seq: u32, payload: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(mac(src), dst_mac)
        .ipv6(ip6(src), ip6(dst), 64)
        .tcp(40000, 5201, seq, 65535)
        .ack(1)
        .psh();
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder
        .write(&mut frame, payload)
        .expect("test frame within IPv6 limits");
    let tcp_len = frame.len() - ETH_LEN - IPV6_LEN;
    let pseudo = pseudo_header_sum6(ip6(src), ip6(dst), tcp_len as u32);
    let csum_at = ETH_LEN + IPV6_LEN + 16;
    frame[csum_at..csum_at + 2].copy_from_slice(&fold(pseudo).to_be_bytes());
    frame
}

/// A parsed TCP/IPv6 frame (no extension headers).
#[derive(Debug)]
pub struct Tcp6Frame<'a> {
    pub ip: Ipv6HeaderSlice<'a>,
    pub tcp: TcpHeaderSlice<'a>,
    pub payload: &'a [u8],
}

pub fn parse_tcp6(frame: &[u8]) -> Result<Tcp6Frame<'_>> {
    let bad = |what: String| HarnessError::Frame(what);
    if frame.len() < ETH_LEN || frame[12..14] != [0x86, 0xdd] {
        return Err(bad(format!(
            "not an IPv6 Ethernet frame ({} bytes)",
            frame.len()
        )));
    }
    let ip = Ipv6HeaderSlice::from_slice(&frame[ETH_LEN..])
        .map_err(|e| bad(format!("IPv6 header: {e}")))?;
    if ip.next_header() != etherparse::IpNumber::TCP {
        return Err(bad("IPv6 next header is not TCP".into()));
    }
    let l4 = ETH_LEN + IPV6_LEN;
    let end = l4 + usize::from(ip.payload_length());
    if end > frame.len() {
        return Err(bad(format!(
            "IPv6 payload length beyond frame of {}",
            frame.len()
        )));
    }
    let tcp =
        TcpHeaderSlice::from_slice(&frame[l4..end]).map_err(|e| bad(format!("TCP header: {e}")))?;
    let payload = &frame[l4 + tcp.slice().len()..end];
    Ok(Tcp6Frame { ip, tcp, payload })
}

/// True when the TCP checksum of an IPv6 frame is correct.
pub fn tcp6_checksum_ok(raw: &[u8], frame: &Tcp6Frame<'_>) -> bool {
    let l4 = ETH_LEN + IPV6_LEN;
    let segment = &raw[l4..l4 + usize::from(frame.ip.payload_length())];
    let sum = pseudo_header_sum6(
        frame.ip.source(),
        frame.ip.destination(),
        segment.len() as u32,
    );
    fold(add_bytes(sum, segment)) == 0xffff
}
