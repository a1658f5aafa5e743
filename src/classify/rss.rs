//! Receive-side scaling: the Toeplitz hash of the Microsoft RSS specification and an
//! indirection table from hash to queue.
//!
//! The hash input is the source address, destination address, then (for the 4-tuple) source
//! and destination port, all in network byte order. The Toeplitz hash XORs, for every set input
//! bit `i`, the 32-bit window of the key starting at bit `i`; [`Toeplitz::new`] precomputes for
//! every input byte position and byte value the XOR of its windows, so hashing costs one table
//! load and XOR per input byte.

use std::net::IpAddr;

/// The default key of the Microsoft RSS specification (also the default of most NIC drivers).
pub const DEFAULT_KEY: [u8; 40] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
    0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c,
    0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
];

/// The longest input: two IPv6 addresses and two ports.
pub const MAX_INPUT_LEN: usize = 16 + 16 + 2 + 2;

/// A Toeplitz hasher for one 40-byte key, with per-byte lookup tables.
#[derive(Clone)]
pub struct Toeplitz {
    /// `tables[i][b]`: the hash contribution of byte value `b` at input position `i`.
    tables: Box<[[u32; 256]; MAX_INPUT_LEN]>,
}

impl std::fmt::Debug for Toeplitz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Toeplitz { .. }")
    }
}

impl Default for Toeplitz {
    fn default() -> Self {
        Self::new(&DEFAULT_KEY)
    }
}

impl Toeplitz {
    /// Precomputes the tables for `key` (36 KiB; done once per configuration, not per packet).
    pub fn new(key: &[u8; 40]) -> Self {
        // The 32-bit key window starting at bit `bit` (bit 0 = the top bit of key[0]).
        let window = |bit: usize| -> u32 {
            let byte = bit / 8;
            let shift = bit % 8;
            let mut wide = 0u64;
            for k in 0..5 {
                wide = (wide << 8) | u64::from(*key.get(byte + k).unwrap_or(&0));
            }
            ((wide << shift) >> 8) as u32
        };
        let mut tables = Box::new([[0u32; 256]; MAX_INPUT_LEN]);
        for (position, table) in tables.iter_mut().enumerate() {
            let windows: [u32; 8] = std::array::from_fn(|bit| window(position * 8 + bit));
            for (value, entry) in table.iter_mut().enumerate() {
                *entry = (0..8)
                    .filter(|bit| value & (0x80 >> bit) != 0)
                    .fold(0, |acc, bit| acc ^ windows[bit]);
            }
        }
        Toeplitz { tables }
    }

    /// Hashes up to [`MAX_INPUT_LEN`] bytes (longer input is cut there).
    #[inline]
    pub fn hash(&self, input: &[u8]) -> u32 {
        self.hash_at(0, input)
    }

    /// The contribution of `bytes` placed at input position `start` (Toeplitz is linear: the
    /// hash of a concatenation is the XOR of the pieces' contributions at their positions).
    #[inline]
    fn hash_at(&self, start: usize, bytes: &[u8]) -> u32 {
        let tables = self.tables.get(start..).unwrap_or(&[]);
        bytes
            .iter()
            .zip(tables)
            .fold(0, |acc, (&byte, table)| acc ^ table[usize::from(byte)])
    }

    /// The hash of an address pair and, when given, a port pair (the RSS 2-tuple or 4-tuple).
    /// Mixed address families hash to 0: they cannot occur in a parsed header.
    #[inline]
    pub fn hash_flow(&self, src: IpAddr, dst: IpAddr, ports: Option<(u16, u16)>) -> u32 {
        let (mut hash, ports_at) = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => (
                self.hash_at(0, &s.octets()) ^ self.hash_at(4, &d.octets()),
                8,
            ),
            (IpAddr::V6(s), IpAddr::V6(d)) => (
                self.hash_at(0, &s.octets()) ^ self.hash_at(16, &d.octets()),
                32,
            ),
            _ => return 0,
        };
        if let Some((src_port, dst_port)) = ports {
            let [s0, s1] = src_port.to_be_bytes();
            let [d0, d1] = dst_port.to_be_bytes();
            hash ^= self.hash_at(ports_at, &[s0, s1, d0, d1]);
        }
        hash
    }
}

/// Default number of indirection-table entries (as many NICs use).
pub const DEFAULT_TABLE_LEN: usize = 128;

/// Maps a hash to a queue: `entries[hash % len]`, filled round-robin from a queue set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndirectionTable {
    entries: Box<[u16]>,
}

/// Why an indirection table could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndirectionError {
    #[error("indirection table needs at least one queue")]
    NoQueues,
    #[error("indirection table length {0} is not a power of two between 1 and 65536")]
    BadLength(usize),
}

impl IndirectionTable {
    /// A table of `len` entries (a power of two) spreading over `queues` round-robin.
    pub fn new(queues: &[u16], len: usize) -> Result<Self, IndirectionError> {
        if queues.is_empty() {
            return Err(IndirectionError::NoQueues);
        }
        if !len.is_power_of_two() || len > 65536 {
            return Err(IndirectionError::BadLength(len));
        }
        let entries = (0..len).map(|i| queues[i % queues.len()]).collect();
        Ok(IndirectionTable { entries })
    }

    /// The queue for `hash` (the low bits index the table, as on NICs).
    #[inline]
    pub fn queue(&self, hash: u32) -> u16 {
        // `entries.len()` is a power of two, so the mask keeps the index in bounds.
        self.entries[hash as usize & (self.entries.len() - 1)]
    }

    pub fn entries(&self) -> &[u16] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// (destination, destination port, source, source port, 2-tuple hash, 4-tuple hash).
    type Vector<A> = (A, u16, A, u16, u32, u32);

    /// The Microsoft "Verifying the RSS Hash Calculation" IPv4 table.
    const IPV4_VECTORS: [Vector<[u8; 4]>; 5] = [
        (
            [161, 142, 100, 80],
            1766,
            [66, 9, 149, 187],
            2794,
            0x323e_8fc2,
            0x51cc_c178,
        ),
        (
            [65, 69, 140, 83],
            4739,
            [199, 92, 111, 2],
            14230,
            0xd718_262a,
            0xc626_b0ea,
        ),
        (
            [12, 22, 207, 184],
            38024,
            [24, 19, 198, 95],
            12898,
            0xd2d0_a5de,
            0x5c2b_394a,
        ),
        (
            [209, 142, 163, 6],
            2217,
            [38, 27, 205, 30],
            48228,
            0x8298_9176,
            0xafc7_327f,
        ),
        (
            [202, 188, 127, 2],
            1303,
            [153, 39, 163, 191],
            44251,
            0x5d18_09c5,
            0x10e8_28a2,
        ),
    ];

    /// The same table for IPv6.
    const IPV6_VECTORS: [Vector<&str>; 3] = [
        (
            "3ffe:2501:200:3::1",
            1766,
            "3ffe:2501:200:1fff::7",
            2794,
            0x2cc1_8cd5,
            0x4020_7d3d,
        ),
        (
            "ff02::1",
            4739,
            "3ffe:501:8::260:97ff:fe40:efab",
            14230,
            0x0f0c_461c,
            0xdde5_1bbf,
        ),
        (
            "fe80::200:f8ff:fe21:67cf",
            38024,
            "3ffe:1900:4545:3:200:f8ff:fe21:67cf",
            44251,
            0x4b61_e985,
            0x02d1_feef,
        ),
    ];

    #[test]
    fn ipv4_verification_suite_matches() {
        let toeplitz = Toeplitz::default();
        for (dst, dst_port, src, src_port, two_tuple, four_tuple) in IPV4_VECTORS {
            let (src, dst) = (
                IpAddr::V4(Ipv4Addr::from(src)),
                IpAddr::V4(Ipv4Addr::from(dst)),
            );
            assert_eq!(
                toeplitz.hash_flow(src, dst, None),
                two_tuple,
                "{src} -> {dst}"
            );
            assert_eq!(
                toeplitz.hash_flow(src, dst, Some((src_port, dst_port))),
                four_tuple,
                "{src}:{src_port} -> {dst}:{dst_port}"
            );
        }
    }

    #[test]
    fn ipv6_verification_suite_matches() {
        let toeplitz = Toeplitz::default();
        for (dst, dst_port, src, src_port, two_tuple, four_tuple) in IPV6_VECTORS {
            let src = IpAddr::V6(src.parse::<Ipv6Addr>().unwrap());
            let dst = IpAddr::V6(dst.parse::<Ipv6Addr>().unwrap());
            assert_eq!(
                toeplitz.hash_flow(src, dst, None),
                two_tuple,
                "{src} -> {dst}"
            );
            assert_eq!(
                toeplitz.hash_flow(src, dst, Some((src_port, dst_port))),
                four_tuple,
                "{src}:{src_port} -> {dst}:{dst_port}"
            );
        }
    }

    /// The textbook bit-by-bit Toeplitz, to check the tables against on other keys.
    fn bitwise(key: &[u8; 40], input: &[u8]) -> u32 {
        let mut result = 0u32;
        let mut window = u32::from_be_bytes([key[0], key[1], key[2], key[3]]);
        for (position, &byte) in input.iter().enumerate() {
            let next_key_byte = position + 4;
            for bit in 0..8 {
                if byte & (0x80 >> bit) != 0 {
                    result ^= window;
                }
                let incoming = key.get(next_key_byte).map_or(0, |k| (k >> (7 - bit)) & 1);
                window = (window << 1) | u32::from(incoming);
            }
        }
        result
    }

    #[test]
    fn tables_match_bitwise_toeplitz_on_another_key() {
        let key: [u8; 40] = std::array::from_fn(|i| (i as u8).wrapping_mul(151).wrapping_add(7));
        let toeplitz = Toeplitz::new(&key);
        let input: Vec<u8> = (0..36u8).map(|i| i.wrapping_mul(73) ^ 0x5a).collect();
        for len in 0..=36 {
            assert_eq!(
                toeplitz.hash(&input[..len]),
                bitwise(&key, &input[..len]),
                "len {len}"
            );
        }
    }

    #[test]
    fn indirection_table_spreads_round_robin_over_its_queues() {
        let table = IndirectionTable::new(&[1, 2, 3], 8).unwrap();
        assert_eq!(table.entries(), &[1, 2, 3, 1, 2, 3, 1, 2]);
        assert_eq!(table.queue(0), 1);
        assert_eq!(table.queue(9), 2);
        assert_eq!(table.queue(u32::MAX), 2);
    }

    #[test]
    fn indirection_table_rejects_no_queues_and_odd_lengths() {
        assert_eq!(
            IndirectionTable::new(&[], 8),
            Err(IndirectionError::NoQueues)
        );
        assert_eq!(
            IndirectionTable::new(&[0], 12),
            Err(IndirectionError::BadLength(12))
        );
        assert_eq!(
            IndirectionTable::new(&[0], 0),
            Err(IndirectionError::BadLength(0))
        );
    }
}
