//! Property-based tests of the code that reads what a guest wrote: the frame parser, the
//! descriptor chain walker and the virtio-net header (offload) parser, with software
//! segmentation behind it. Whatever the bytes, none of them may panic, and what they accept
//! must hold the invariants the data path relies on.

use std::sync::Arc;

use prism_vnic::classify::parse::FlowKey;
use prism_vnic::packet::offload::{self, Offload, segment_buffer_len};
use prism_vnic::port::chain::{self, Direction};
use prism_vnic::port::host_memory::HostMemory;
use prism_vnic::port::ring_view::SplitRing;
use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Guest memory of the walker tests: two regions with a gap, so buffers may straddle it.
const REGIONS: [(u64, usize); 2] = [(0, 0x10000), (0x20000, 0x10000)];
const TABLE: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;

/// An Ethernet + IPv4 + TCP frame with random fields and payload, which the parsers should
/// mostly accept, so the properties also cover the paths past the first checks.
fn tcp4_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<[u8; 12]>(),
        any::<u16>(),
        any::<u16>(),
        0usize..3000,
        any::<u8>(),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(macs, sport, dport, payload_len, tos, noise)| {
            let mut frame = macs.to_vec();
            frame.extend_from_slice(&[0x08, 0x00]);
            let ip_len = (20 + 20 + payload_len) as u16;
            frame.extend_from_slice(&[0x45, tos]);
            frame.extend_from_slice(&ip_len.to_be_bytes());
            frame.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
            frame.extend_from_slice(&sport.to_be_bytes());
            frame.extend_from_slice(&dport.to_be_bytes());
            frame.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
            frame.extend((0..payload_len).map(|i| noise.get(i % 64).copied().unwrap_or(i as u8)));
            frame
        })
}

/// Some frames of any bytes, some well-formed ones, some of those cut short or corrupted.
fn any_frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        tcp4_frame(),
        (tcp4_frame(), any::<prop::sample::Index>())
            .prop_map(|(frame, cut)| frame[..cut.index(frame.len() + 1)].to_vec()),
        (tcp4_frame(), any::<prop::sample::Index>(), any::<u8>()).prop_map(
            |(mut frame, at, byte)| {
                let at = at.index(frame.len().min(60));
                frame[at] = byte;
                frame
            }
        ),
    ]
}

/// A virtio-net header: any bytes, or one asking for TSO with random fields.
fn any_header() -> impl Strategy<Value = [u8; 12]> {
    prop_oneof![
        any::<[u8; 12]>(),
        (any::<u16>(), any::<u16>(), any::<u16>(), any::<u16>()).prop_map(
            |(hdr_len, gso_size, start, offset)| {
                let mut header = [0u8; 12];
                header[0] = 1; // NEEDS_CSUM
                header[1] = 1; // GSO_TCPV4
                header[2..4].copy_from_slice(&hdr_len.to_le_bytes());
                header[4..6].copy_from_slice(&(gso_size % 2000).to_le_bytes());
                header[6..8].copy_from_slice(&(start % 80).to_le_bytes());
                header[8..10].copy_from_slice(&(offset % 40).to_le_bytes());
                header
            }
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_frame_parser_never_panics_and_is_deterministic(frame in any_frame()) {
        let first = FlowKey::parse(&frame, &[4789]);
        let second = FlowKey::parse(&frame, &[4789]);
        prop_assert_eq!(first, second);
    }

    #[test]
    fn the_offload_parser_accepts_only_requests_that_fit_the_frame(
        header in any_header(),
        frame in any_frame(),
    ) {
        let Ok(parsed) = Offload::from_virtio_hdr(&header, &frame) else {
            return Ok(());
        };
        if let Some(csum) = parsed.csum {
            let end = usize::from(csum.start) + usize::from(csum.offset) + 2;
            prop_assert!(end <= frame.len(), "checksum field at {end} past {}", frame.len());
        }
        if let Some(gso) = parsed.gso {
            prop_assert!(gso.size > 0);
            prop_assert!(usize::from(gso.hdr_len) <= frame.len());
            // Segmenting what was accepted never panics, and every segment is at most one
            // header and one gso_size of payload.
            let mut scratch = vec![0u8; segment_buffer_len(&gso)];
            let mut largest = 0;
            let cut = offload::segment(&frame, &gso, &mut scratch, |segment| {
                largest = largest.max(segment.len());
            });
            if cut.is_ok() {
                prop_assert!(largest <= usize::from(gso.hdr_len) + usize::from(gso.size));
            }
        }
    }

    #[test]
    fn the_chain_walker_never_panics_loops_or_leaves_guest_memory(
        descriptors in prop::collection::vec(
            (0u64..0x32000, 0u32..0x3000, 0u16..16, 0u16..20),
            8,
        ),
        indirect in prop::collection::vec(
            (0u64..0x32000, 0u32..0x3000, 0u16..16, 0u16..20),
            0..8,
        ),
        head in 0u16..10,
        writes in any::<bool>(),
    ) {
        let mem = GuestMemoryMmap::<()>::from_ranges(
            &REGIONS.map(|(base, len)| (GuestAddress(base), len)),
        )
        .unwrap();
        let put = |at: u64, (addr, len, flags, next): (u64, u32, u16, u16)| {
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&addr.to_le_bytes());
            raw[8..12].copy_from_slice(&len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&next.to_le_bytes());
            mem.write_slice(&raw, GuestAddress(at)).unwrap();
        };
        for (index, desc) in descriptors.iter().enumerate() {
            // Flag values 0..16: NEXT, WRITE, INDIRECT in every combination; an indirect one
            // points at the table below.
            let (mut addr, mut len, flags, next) = *desc;
            if flags & 4 != 0 {
                addr = 0x8000;
                len = 16 * indirect.len() as u32;
            }
            put(TABLE + 16 * index as u64, (addr, len, flags, next));
        }
        for (index, desc) in indirect.iter().enumerate() {
            put(0x8000 + 16 * index as u64, *desc);
        }
        let host = HostMemory::new(Arc::new(mem.clone()));
        let ring = SplitRing::at(&host, TABLE, AVAIL, USED, 8).unwrap();
        let direction = if writes { Direction::DeviceWrites } else { Direction::DeviceReads };
        let mut segments = Vec::new();
        if let Ok(len) = chain::walk(&host, &ring, head, direction, &mut segments) {
            prop_assert!(len > 0, "an accepted chain holds bytes");
            let total: usize = segments.iter().map(|s| s.len as usize).sum();
            prop_assert_eq!(total, len);
            // Every segment lies inside one mapped region.
            let inside = |host_addr: usize, len: usize| {
                mem.iter().any(|region| {
                    let start = region.as_ptr() as usize;
                    host_addr >= start && host_addr + len <= start + region.len() as usize
                })
            };
            for segment in &segments {
                prop_assert!(inside(segment.host, segment.len as usize));
            }
            // No more segments than descriptors the walk may visit (queue plus table,
            // each split at most once by the region gap).
            prop_assert!(segments.len() <= 2 * (8 + indirect.len()));
        }
    }
}
