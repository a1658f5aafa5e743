//! Hand-built frames for the classifier tests: each helper writes one header visibly, so a
//! test can say which bytes it sends and where each header ends.

use crate::packet::{checksum, ip_proto};

pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88a8;
pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_IPV6: u16 = 0x86dd;

/// Ethernet header, then VLAN tags `(tpid, pcp, vid)` outermost first, ending with `ethertype`.
pub fn l2(tags: &[(u16, u8, u16)], ethertype: u16) -> Vec<u8> {
    let mut bytes = vec![2, 0, 0, 0, 0, 0x0b, 2, 0, 0, 0, 0, 0x0a];
    for &(tpid, pcp, vid) in tags {
        bytes.extend_from_slice(&tpid.to_be_bytes());
        bytes.extend_from_slice(&((u16::from(pcp) << 13) | vid).to_be_bytes());
    }
    bytes.extend_from_slice(&ethertype.to_be_bytes());
    bytes
}

/// IPv4 header with `options` (a multiple of 4 bytes) for `payload_len` bytes of payload.
pub fn ipv4(
    src: [u8; 4],
    dst: [u8; 4],
    dscp: u8,
    proto: u8,
    options: &[u8],
    payload_len: usize,
) -> Vec<u8> {
    let header_len = 20 + options.len();
    let total = (header_len + payload_len) as u16;
    let mut bytes = vec![0x40 | (header_len / 4) as u8, dscp << 2];
    bytes.extend_from_slice(&total.to_be_bytes());
    bytes.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, proto, 0, 0]);
    bytes.extend_from_slice(&src);
    bytes.extend_from_slice(&dst);
    bytes.extend_from_slice(options);
    let sum = checksum::checksum(&bytes);
    bytes[10..12].copy_from_slice(&sum.to_be_bytes());
    bytes
}

/// Fixed IPv6 header for `payload_len` bytes (extension headers included) after it.
pub fn ipv6(src: [u8; 16], dst: [u8; 16], dscp: u8, next: u8, payload_len: usize) -> Vec<u8> {
    let word = (6u32 << 28) | (u32::from(dscp) << 22) | 0xbeef;
    let mut bytes = word.to_be_bytes().to_vec();
    bytes.extend_from_slice(&(payload_len as u16).to_be_bytes());
    bytes.extend_from_slice(&[next, 64]);
    bytes.extend_from_slice(&src);
    bytes.extend_from_slice(&dst);
    bytes
}

/// An IPv6 extension header of `len` bytes (a multiple of 8) announcing `next`.
pub fn ipv6_ext(next: u8, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    bytes[0] = next;
    bytes[1] = (len / 8 - 1) as u8;
    bytes
}

/// TCP header with `options` (a multiple of 4 bytes); checksum left zero (the parser ignores it).
pub fn tcp(src_port: u16, dst_port: u16, options: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&src_port.to_be_bytes());
    bytes.extend_from_slice(&dst_port.to_be_bytes());
    bytes.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
    bytes.push((((20 + options.len()) / 4) as u8) << 4);
    bytes.extend_from_slice(&[0x18, 0xff, 0xff, 0, 0, 0, 0]);
    bytes.extend_from_slice(options);
    bytes
}

pub fn udp(src_port: u16, dst_port: u16, payload_len: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&src_port.to_be_bytes());
    bytes.extend_from_slice(&dst_port.to_be_bytes());
    bytes.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    bytes.extend_from_slice(&[0, 0]);
    bytes
}

pub fn vxlan(vni: u32) -> Vec<u8> {
    let mut bytes = vec![0x08, 0, 0, 0];
    bytes.extend_from_slice(&(vni << 8).to_be_bytes());
    bytes
}

pub fn v6(last: u8) -> [u8; 16] {
    [
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, last,
    ]
}

/// Eth [/ tags] / IPv4 / TCP or UDP / `payload_len` zero bytes.
pub fn ipv4_l4(
    tags: &[(u16, u8, u16)],
    src: [u8; 4],
    dst: [u8; 4],
    dscp: u8,
    proto: u8,
    ports: (u16, u16),
    payload_len: usize,
) -> Vec<u8> {
    let l4 = if proto == ip_proto::TCP {
        tcp(ports.0, ports.1, &[])
    } else {
        udp(ports.0, ports.1, payload_len)
    };
    let mut frame = l2(tags, ETH_IPV4);
    frame.extend(ipv4(src, dst, dscp, proto, &[], l4.len() + payload_len));
    frame.extend(l4);
    frame.extend(std::iter::repeat_n(0u8, payload_len));
    frame
}

/// Wraps `inner` in Eth / IPv4 / UDP(`sport` -> 4789) / VXLAN(`vni`).
pub fn vxlan_over_ipv4(vni: u32, sport: u16, outer_dscp: u8, inner: &[u8]) -> Vec<u8> {
    let mut frame = l2(&[], ETH_IPV4);
    let udp_len = 8 + 8 + inner.len();
    frame.extend(ipv4(
        [192, 0, 2, 1],
        [192, 0, 2, 2],
        outer_dscp,
        17,
        &[],
        udp_len,
    ));
    frame.extend(udp(sport, 4789, 8 + inner.len()));
    frame.extend(vxlan(vni));
    frame.extend_from_slice(inner);
    frame
}

/// xorshift64 for the randomized tests: deterministic, so a failure reproduces.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}
