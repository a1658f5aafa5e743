//! The internet checksum (RFC 1071) and the TCP/UDP pseudo-header sums.
//!
//! [`sum`] returns the unfolded one's-complement sum of big-endian 16-bit words as a `u64`:
//! adding 32-bit words into a 64-bit accumulator cannot overflow before 16 GiB of data, so the
//! inner loop reads 16 bytes per step with no carry handling and the carries are folded once at
//! the end ([`fold`]). Partial sums of consecutive pieces can be added together as long as every
//! piece but the last has an even length (RFC 1071 section 2(A)).

/// Unfolded sum of `data` as big-endian 16-bit words; an odd trailing byte is padded with zero.
#[inline]
pub fn sum(data: &[u8]) -> u64 {
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(16);
    for chunk in &mut chunks {
        // Four independent 32-bit words; the compiler keeps them in registers.
        let w0 = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        let w1 = u32::from_be_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
        let w2 = u32::from_be_bytes([chunk[8], chunk[9], chunk[10], chunk[11]]);
        let w3 = u32::from_be_bytes([chunk[12], chunk[13], chunk[14], chunk[15]]);
        acc += u64::from(w0) + u64::from(w1) + u64::from(w2) + u64::from(w3);
    }
    let mut rest = chunks.remainder();
    while rest.len() >= 4 {
        acc += u64::from(u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]));
        rest = &rest[4..];
    }
    if rest.len() >= 2 {
        acc += u64::from(u16::from_be_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
    }
    if let Some(&last) = rest.first() {
        acc += u64::from(last) << 8;
    }
    acc
}

/// Folds an unfolded sum into 16 bits with end-around carry (not complemented).
#[inline]
pub fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The checksum field value for data whose unfolded sum is `sum`: folded and complemented.
#[inline]
pub fn finish(sum: u64) -> u16 {
    !fold(sum)
}

/// The internet checksum of `data` (the value to store in a zeroed checksum field).
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    finish(sum(data))
}

/// True when `data`, checksum field included, sums to all ones (the checksum verifies).
#[inline]
pub fn verifies(data: &[u8]) -> bool {
    fold(sum(data)) == 0xffff
}

/// The unfolded sum of the IPv4 pseudo-header (RFC 793 / RFC 768) for an upper-layer packet of
/// `upper_len` bytes.
#[inline]
pub fn pseudo_header_v4(src: [u8; 4], dst: [u8; 4], protocol: u8, upper_len: u16) -> u64 {
    u64::from(u32::from_be_bytes(src))
        + u64::from(u32::from_be_bytes(dst))
        + u64::from(protocol)
        + u64::from(upper_len)
}

/// The unfolded sum of the IPv6 pseudo-header (RFC 8200 section 8.1) for an upper-layer packet
/// of `upper_len` bytes.
#[inline]
pub fn pseudo_header_v6(src: [u8; 16], dst: [u8; 16], next_header: u8, upper_len: u32) -> u64 {
    sum(&src) + sum(&dst) + u64::from(upper_len) + u64::from(next_header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example_sums_to_ddf2() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn ipv4_header_vector_gives_b861() {
        // A well-known IPv4 header (checksum field zeroed); its checksum is b861.
        let mut header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&header), 0xb861);
        header[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert!(verifies(&header));
    }

    #[test]
    fn odd_length_pads_last_byte_with_zero() {
        assert_eq!(fold(sum(&[0x12, 0x34, 0x56])), 0x1234 + 0x5600);
    }

    #[test]
    fn empty_data_has_checksum_ffff() {
        assert_eq!(checksum(&[]), 0xffff);
    }

    #[test]
    fn all_ones_data_folds_without_overflow() {
        let data = vec![0xffu8; 70_000];
        assert_eq!(fold(sum(&data)), 0xffff);
    }

    /// A plain word-by-word reference sum, to compare the 16-byte fast path against.
    fn reference_fold(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        for pair in data.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            acc += u32::from(word);
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    #[test]
    fn fast_sum_matches_word_by_word_sum_for_every_length_up_to_300() {
        let data: Vec<u8> = (0..300u32)
            .map(|i| (i.wrapping_mul(97) ^ (i >> 3)) as u8)
            .collect();
        for len in 0..data.len() {
            let expected = reference_fold(&data[..len]);
            let got = fold(sum(&data[..len]));
            // 0x0000 and 0xffff are the same number in one's complement.
            let normalize = |v: u16| if v == 0 { 0xffff } else { v };
            assert_eq!(normalize(got), normalize(expected), "length {len}");
        }
    }

    #[test]
    fn pieces_with_even_lengths_add_up_to_the_whole() {
        let data: Vec<u8> = (0..101u8).collect();
        let whole = fold(sum(&data));
        let pieces = fold(sum(&data[..40]) + sum(&data[40..58]) + sum(&data[58..]));
        assert_eq!(whole, pieces);
    }

    #[test]
    fn tcp_checksums_match_etherparse_for_ipv4_and_ipv6() {
        use etherparse::{TcpHeader, UdpHeader};
        let payload: Vec<u8> = (0..1001u32).map(|i| (i * 7) as u8).collect();
        let src4 = [10, 0, 0, 1];
        let dst4 = [192, 168, 7, 200];
        let src6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let dst6 = [
            0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0, 0, 0, 0, 0xab, 0xcd,
        ];

        let tcp = TcpHeader::new(12345, 80, 0xdead_beef, 4000);
        let tcp_bytes = tcp.to_bytes();
        let len = (tcp_bytes.len() + payload.len()) as u16;
        let ours = finish(pseudo_header_v4(src4, dst4, 6, len) + sum(&tcp_bytes) + sum(&payload));
        assert_eq!(
            ours,
            tcp.calc_checksum_ipv4_raw(src4, dst4, &payload).unwrap()
        );
        let ours6 = finish(
            pseudo_header_v6(src6, dst6, 6, u32::from(len)) + sum(&tcp_bytes) + sum(&payload),
        );
        assert_eq!(
            ours6,
            tcp.calc_checksum_ipv6_raw(src6, dst6, &payload).unwrap()
        );

        let udp = UdpHeader::without_ipv4_checksum(5000, 4789, payload.len()).unwrap();
        let udp_bytes = udp.to_bytes();
        let ulen = (udp_bytes.len() + payload.len()) as u16;
        let ours_udp =
            finish(pseudo_header_v4(src4, dst4, 17, ulen) + sum(&udp_bytes) + sum(&payload));
        assert_eq!(
            ours_udp,
            udp.calc_checksum_ipv4_raw(src4, dst4, &payload).unwrap()
        );
    }
}
