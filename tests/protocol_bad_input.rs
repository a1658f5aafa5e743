//! Malformed and malicious guest input. For each case: the chain is completed (used entry
//! with len 0), a named error counter rises on the port and the queue, the daemon stays up,
//! and good frames still pass on the same queue and between other ports.

mod support;

use support::Result;
use support::daemon::Daemon;
use support::frames::{MSS, VIRTIO_NET_HDR_LEN, VirtioNetHdr, mac, tagged_payload, tcp_tso_frame};
use support::guest::{GuestOptions, RawRing, TestGuest, feature};
use support::guest_memory::{BEYOND_ADDR, GAP_ADDR, REGION_BASES, REGION_SIZE};
use support::traffic::{assert_traffic_both_ways, flow_frame};
use support::virtqueue::{DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, Desc, InFlight};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_UDP,
};

/// The TX queue pair the bad chains are sent on (not 0, to catch per-queue mix-ups).
const PAIR: u16 = 1;

struct Bench {
    daemon: Daemon,
    a: TestGuest,
    b: TestGuest,
    tag: u32,
}

impl Bench {
    fn new() -> Bench {
        let daemon = Daemon::start(&["a", "b"], 2).expect("daemon starts");
        let a = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("a");
        let b = TestGuest::connect(&daemon.socket("b"), GuestOptions::linux(2)).expect("b");
        Bench {
            daemon,
            a,
            b,
            tag: 1000,
        }
    }

    /// Publishes the chain `build` writes on a's TX queue [`PAIR`] and checks the outcome.
    fn reject_tx(
        mut self,
        counter: &str,
        build: impl FnOnce(&mut RawRing<'_>) -> Result<(u16, InFlight)>,
    ) {
        let port_before = self.daemon.counter("a", counter).expect("port counter");
        let queue_before = self
            .daemon
            .queue_counter("a", PAIR, counter)
            .expect("queue counter");
        let mut raw = self.a.raw(TestGuest::tx_vring(PAIR)).expect("raw ring");
        let (head, chain) = build(&mut raw).expect("build bad chain");
        raw.publish(head, chain).expect("publish");
        raw.kick().expect("kick");
        let used = self
            .a
            .wait_tx_done(PAIR, head)
            .expect("bad chain completed");
        assert_eq!(used.len, 0, "used len of a rejected TX chain");
        self.daemon
            .wait_counter("a", counter, port_before + 1)
            .expect("port error counter rises");
        let per_queue = self
            .daemon
            .queue_counter("a", PAIR, counter)
            .expect("queue counter");
        assert!(
            per_queue > queue_before,
            "{counter} of queue {PAIR} did not rise"
        );
        self.check_recovery();
    }

    /// The daemon is alive and forwards good frames on the same queue and the other way.
    fn check_recovery(&mut self) {
        self.daemon.check_running().expect("daemon survives");
        self.tag += 10;
        assert_traffic_both_ways(&mut self.a, &mut self.b, PAIR, self.tag);
        assert_traffic_both_ways(&mut self.b, &mut self.a, 0, self.tag + 5);
    }
}

/// Header + a good 64-byte frame to b, as one buffer.
fn good_bytes(hdr: VirtioNetHdr) -> Vec<u8> {
    let mut bytes = hdr.to_bytes().to_vec();
    bytes.extend_from_slice(&flow_frame(1, 2, 1234, 1));
    bytes
}

/// Header + a 600-byte TCP frame with the partial checksum Linux leaves.
fn tcp_bytes(hdr: VirtioNetHdr) -> Vec<u8> {
    let mut bytes = hdr.to_bytes().to_vec();
    bytes.extend_from_slice(&tcp_tso_frame(1, mac(2), 2, 1, &tagged_payload(1, 546)));
    bytes
}

/// A one-descriptor chain reading `bytes`.
fn single(raw: &mut RawRing<'_>, bytes: &[u8]) -> Result<(u16, InFlight)> {
    let mut chain = InFlight::default();
    let slots = raw.reserve(1)?;
    chain.descs = slots.clone();
    let addr = raw.buffer(&mut chain, bytes)?;
    raw.write_desc(
        slots[0],
        Desc {
            addr,
            len: bytes.len() as u32,
            flags: 0,
            next: 0,
        },
    )?;
    Ok((slots[0], chain))
}

/// A one-descriptor chain pointing at `addr` (not allocated by us).
fn pointing_at(raw: &mut RawRing<'_>, addr: u64, len: u32) -> Result<(u16, InFlight)> {
    let slots = raw.reserve(1)?;
    raw.write_desc(
        slots[0],
        Desc {
            addr,
            len,
            flags: 0,
            next: 0,
        },
    )?;
    Ok((
        slots[0],
        InFlight {
            descs: slots.clone(),
            ..InFlight::default()
        },
    ))
}

fn offload(
    flags: u32,
    gso_type: u32,
    gso_size: u16,
    csum_start: u16,
    csum_offset: u16,
) -> VirtioNetHdr {
    VirtioNetHdr {
        flags: flags as u8,
        gso_type: gso_type as u8,
        hdr_len: 54,
        gso_size,
        csum_start,
        csum_offset,
        num_buffers: 0,
    }
}

// ---- descriptor chains ----

#[test]
fn tx_chain_that_loops_is_rejected() {
    Bench::new().reject_tx("tx_errors_chain", |raw| {
        let bytes = good_bytes(VirtioNetHdr::plain());
        let mut chain = InFlight::default();
        let slots = raw.reserve(2)?;
        chain.descs = slots.clone();
        let addr = raw.buffer(&mut chain, &bytes)?;
        let half = (bytes.len() / 2) as u32;
        raw.write_desc(
            slots[0],
            Desc {
                addr,
                len: half,
                flags: DESC_F_NEXT,
                next: slots[1],
            },
        )?;
        raw.write_desc(
            slots[1],
            Desc {
                addr: addr + u64::from(half),
                len: bytes.len() as u32 - half,
                flags: DESC_F_NEXT,
                next: slots[0],
            },
        )?;
        Ok((slots[0], chain))
    });
}

#[test]
fn tx_chain_longer_than_the_queue_is_rejected() {
    // Every descriptor of the table in one chain, the last pointing back to the first: the
    // walk exceeds the queue size before it could end.
    Bench::new().reject_tx("tx_errors_chain", |raw| {
        let bytes = good_bytes(VirtioNetHdr::plain());
        let n = raw.queue.size as usize;
        let mut chain = InFlight::default();
        let slots = raw.reserve(n)?;
        chain.descs = slots.clone();
        let addr = raw.buffer(&mut chain, &bytes)?;
        for i in 0..n {
            let next = slots[(i + 1) % n];
            raw.write_desc(
                slots[i],
                Desc {
                    addr,
                    len: 4,
                    flags: DESC_F_NEXT,
                    next,
                },
            )?;
        }
        Ok((slots[0], chain))
    });
}

#[test]
fn tx_chain_with_next_outside_the_table_is_rejected() {
    Bench::new().reject_tx("tx_errors_chain", |raw| {
        let bytes = good_bytes(VirtioNetHdr::plain());
        let (head, chain) = single(raw, &bytes)?;
        let addr = chain.allocations[0].0;
        let next = raw.queue.size + 44;
        raw.write_desc(
            head,
            Desc {
                addr,
                len: bytes.len() as u32,
                flags: DESC_F_NEXT,
                next,
            },
        )?;
        Ok((head, chain))
    });
}

#[test]
fn tx_buffer_between_memory_regions_is_rejected() {
    Bench::new().reject_tx("tx_errors_chain", |raw| pointing_at(raw, GAP_ADDR, 100));
}

#[test]
fn tx_buffer_beyond_guest_memory_is_rejected() {
    Bench::new().reject_tx("tx_errors_chain", |raw| pointing_at(raw, BEYOND_ADDR, 100));
}

#[test]
fn tx_buffer_running_past_the_end_of_a_region_is_rejected() {
    let end = REGION_BASES[0] + REGION_SIZE;
    Bench::new().reject_tx("tx_errors_chain", |raw| pointing_at(raw, end - 20, 100));
}

#[test]
fn tx_buffer_with_address_overflowing_u64_is_rejected() {
    Bench::new().reject_tx("tx_errors_chain", |raw| pointing_at(raw, u64::MAX - 8, 100));
}

#[test]
fn tx_chain_with_a_write_only_descriptor_is_rejected() {
    Bench::new().reject_tx("tx_errors_chain", |raw| {
        let mut chain = InFlight::default();
        let slots = raw.reserve(2)?;
        chain.descs = slots.clone();
        let hdr = raw.buffer(&mut chain, &VirtioNetHdr::plain().to_bytes())?;
        let frame = raw.buffer(&mut chain, &flow_frame(1, 2, 1, 1))?;
        raw.write_desc(
            slots[0],
            Desc {
                addr: hdr,
                len: VIRTIO_NET_HDR_LEN as u32,
                flags: DESC_F_NEXT,
                next: slots[1],
            },
        )?;
        raw.write_desc(
            slots[1],
            Desc {
                addr: frame,
                len: 64,
                flags: DESC_F_WRITE,
                next: 0,
            },
        )?;
        Ok((slots[0], chain))
    });
}

// ---- indirect descriptors ----

/// An indirect descriptor at a table of `entries` (written by the caller) of byte length
/// `len`.
fn indirect(raw: &mut RawRing<'_>, entries: &[Desc], len: u32) -> Result<(u16, InFlight)> {
    let mut chain = InFlight::default();
    let slots = raw.reserve(1)?;
    chain.descs = slots.clone();
    let table_bytes: Vec<u8> = entries.iter().flat_map(|d| d.to_bytes()).collect();
    let table = raw.buffer(&mut chain, &table_bytes)?;
    raw.write_desc(
        slots[0],
        Desc {
            addr: table,
            len,
            flags: DESC_F_INDIRECT,
            next: 0,
        },
    )?;
    Ok((slots[0], chain))
}

fn good_indirect_entries(raw: &mut RawRing<'_>, chain: &mut InFlight) -> Result<Vec<Desc>> {
    let bytes = good_bytes(VirtioNetHdr::plain());
    let addr = raw.buffer(chain, &bytes)?;
    Ok(vec![
        Desc {
            addr,
            len: VIRTIO_NET_HDR_LEN as u32,
            flags: DESC_F_NEXT,
            next: 1,
        },
        Desc {
            addr: addr + VIRTIO_NET_HDR_LEN as u64,
            len: (bytes.len() - VIRTIO_NET_HDR_LEN) as u32,
            flags: 0,
            next: 0,
        },
    ])
}

#[test]
fn indirect_table_with_a_length_not_multiple_of_16_is_rejected() {
    Bench::new().reject_tx("tx_errors_chain", |raw| {
        let mut data = InFlight::default();
        let entries = good_indirect_entries(raw, &mut data)?;
        let (head, mut chain) = indirect(raw, &entries, 20)?;
        chain.allocations.extend(data.allocations);
        Ok((head, chain))
    });
}

#[test]
fn indirect_table_of_length_zero_is_rejected() {
    Bench::new().reject_tx("tx_errors_chain", |raw| {
        let mut data = InFlight::default();
        let entries = good_indirect_entries(raw, &mut data)?;
        let (head, mut chain) = indirect(raw, &entries, 0)?;
        chain.allocations.extend(data.allocations);
        Ok((head, chain))
    });
}

#[test]
fn indirect_table_with_next_beyond_its_end_is_rejected() {
    Bench::new().reject_tx("tx_errors_chain", |raw| {
        let mut data = InFlight::default();
        let mut entries = good_indirect_entries(raw, &mut data)?;
        entries[0].next = 7;
        let (head, mut chain) = indirect(raw, &entries, 32)?;
        chain.allocations.extend(data.allocations);
        Ok((head, chain))
    });
}

#[test]
fn indirect_table_longer_than_the_queue_is_rejected() {
    Bench::new().reject_tx("tx_errors_chain", |raw| {
        let mut data = InFlight::default();
        let bytes = good_bytes(VirtioNetHdr::plain());
        let addr = raw.buffer(&mut data, &bytes)?;
        let n = raw.queue.size as usize + 1;
        // n well-formed descriptors: the header, then one-byte reads. Only the length is
        // wrong: one more than the queue size.
        let entries: Vec<Desc> = (0..n)
            .map(|i| Desc {
                addr: if i == 0 {
                    addr
                } else {
                    addr + VIRTIO_NET_HDR_LEN as u64
                },
                len: if i == 0 { VIRTIO_NET_HDR_LEN as u32 } else { 1 },
                flags: if i + 1 < n { DESC_F_NEXT } else { 0 },
                next: (i + 1) as u16,
            })
            .collect();
        let (head, mut chain) = indirect(raw, &entries, 16 * n as u32)?;
        chain.allocations.extend(data.allocations);
        Ok((head, chain))
    });
}

#[test]
fn indirect_descriptor_inside_an_indirect_table_is_rejected() {
    Bench::new().reject_tx("tx_errors_chain", |raw| {
        let mut data = InFlight::default();
        let mut entries = good_indirect_entries(raw, &mut data)?;
        entries[0].flags |= DESC_F_INDIRECT;
        let (head, mut chain) = indirect(raw, &entries, 32)?;
        chain.allocations.extend(data.allocations);
        Ok((head, chain))
    });
}

// ---- virtio-net header ----

#[test]
fn tx_chain_shorter_than_the_virtio_net_header_is_rejected() {
    Bench::new().reject_tx("tx_errors_header", |raw| single(raw, &[0u8; 8]));
}

#[test]
fn csum_start_beyond_the_frame_is_rejected() {
    let hdr = offload(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 2000, 16);
    Bench::new().reject_tx("tx_errors_header", |raw| single(raw, &tcp_bytes(hdr)));
}

#[test]
fn csum_offset_beyond_the_frame_is_rejected() {
    let hdr = offload(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 34, 4000);
    Bench::new().reject_tx("tx_errors_header", |raw| single(raw, &tcp_bytes(hdr)));
}

#[test]
fn gso_without_needs_csum_is_rejected() {
    let hdr = offload(0, VIRTIO_NET_HDR_GSO_TCPV4, MSS, 34, 16);
    Bench::new().reject_tx("tx_errors_header", |raw| single(raw, &tcp_bytes(hdr)));
}

#[test]
fn gso_size_zero_is_rejected() {
    let hdr = offload(
        VIRTIO_NET_HDR_F_NEEDS_CSUM,
        VIRTIO_NET_HDR_GSO_TCPV4,
        0,
        34,
        16,
    );
    Bench::new().reject_tx("tx_errors_header", |raw| single(raw, &tcp_bytes(hdr)));
}

#[test]
fn unknown_gso_type_is_rejected() {
    let hdr = offload(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0x42, MSS, 34, 16);
    Bench::new().reject_tx("tx_errors_header", |raw| single(raw, &tcp_bytes(hdr)));
}

#[test]
fn gso_type_the_device_does_not_offer_is_rejected() {
    // UFO (GSO_UDP) is not offered (no HOST_UFO).
    let hdr = offload(
        VIRTIO_NET_HDR_F_NEEDS_CSUM,
        VIRTIO_NET_HDR_GSO_UDP,
        MSS,
        34,
        6,
    );
    Bench::new().reject_tx("tx_errors_header", |raw| single(raw, &tcp_bytes(hdr)));
}

#[test]
fn tso4_on_a_non_tcp_frame_is_rejected() {
    let hdr = offload(
        VIRTIO_NET_HDR_F_NEEDS_CSUM,
        VIRTIO_NET_HDR_GSO_TCPV4,
        MSS,
        34,
        6,
    );
    Bench::new().reject_tx("tx_errors_header", |raw| single(raw, &good_bytes(hdr)));
}

// ---- frames ----

#[test]
fn runt_frame_is_rejected() {
    let mut bytes = VirtioNetHdr::plain().to_bytes().to_vec();
    bytes.extend_from_slice(&[0xaa; 10]);
    Bench::new().reject_tx("tx_errors_frame", |raw| single(raw, &bytes));
}

#[test]
fn header_without_a_frame_is_rejected() {
    let bytes = VirtioNetHdr::plain().to_bytes().to_vec();
    Bench::new().reject_tx("tx_errors_frame", |raw| single(raw, &bytes));
}

#[test]
fn oversize_frame_without_gso_is_rejected() {
    let mut bytes = VirtioNetHdr::plain().to_bytes().to_vec();
    let mut frame = flow_frame(1, 2, 1, 1);
    frame.resize(70_000, 0x55);
    bytes.extend_from_slice(&frame);
    Bench::new().reject_tx("tx_errors_frame", |raw| single(raw, &bytes));
}

// ---- RX chains ----

/// b (one pair, nothing else posted) offers the RX chain `build` writes; a sends a frame to
/// b. The chain must come back with len 0 and b's `rx_errors_chain` must rise.
fn reject_rx(build: impl FnOnce(&mut RawRing<'_>) -> Result<(u16, InFlight)>) {
    let mut daemon = Daemon::start(&["a", "b"], 1).expect("daemon starts");
    let mut a = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("a");
    let mut b = TestGuest::connect(&daemon.socket("b"), GuestOptions::linux(2)).expect("b");
    let before = daemon.counter("b", "rx_errors_chain").expect("counter");
    let mut raw = b.raw(TestGuest::rx_vring(0)).expect("raw ring");
    let (head, chain) = build(&mut raw).expect("build bad chain");
    raw.publish(head, chain).expect("publish");
    raw.kick().expect("kick");
    a.send(0, VirtioNetHdr::plain(), &flow_frame(1, 2, 1, 1))
        .expect("send");
    daemon
        .wait_counter("b", "rx_errors_chain", before + 1)
        .expect("rx_errors_chain rises");
    let used = support::wait_for("the bad RX chain to be used", support::TIMEOUT, || {
        let entries = b.used_entries(TestGuest::rx_vring(0))?;
        Ok(entries.into_iter().find(|e| e.head == head))
    })
    .expect("bad RX chain completed");
    assert_eq!(used.len, 0, "used len of a rejected RX chain");
    daemon.check_running().expect("daemon survives");
    assert_traffic_both_ways(&mut a, &mut b, 0, 2000);
}

#[test]
fn rx_chain_with_a_read_only_descriptor_is_rejected() {
    reject_rx(|raw| {
        let mut chain = InFlight::default();
        let slots = raw.reserve(1)?;
        chain.descs = slots.clone();
        let addr = raw.buffer(&mut chain, &[0u8; 2048])?;
        raw.write_desc(
            slots[0],
            Desc {
                addr,
                len: 2048,
                flags: 0,
                next: 0,
            },
        )?;
        Ok((slots[0], chain))
    });
}

#[test]
fn rx_buffer_outside_guest_memory_is_rejected() {
    reject_rx(|raw| {
        let slots = raw.reserve(1)?;
        raw.write_desc(
            slots[0],
            Desc {
                addr: GAP_ADDR,
                len: 2048,
                flags: DESC_F_WRITE,
                next: 0,
            },
        )?;
        Ok((
            slots[0],
            InFlight {
                descs: slots.clone(),
                ..InFlight::default()
            },
        ))
    });
}

#[test]
fn rx_chain_that_loops_is_rejected() {
    reject_rx(|raw| {
        let mut chain = InFlight::default();
        let slots = raw.reserve(2)?;
        chain.descs = slots.clone();
        let a = raw.room(&mut chain, 1024)?;
        let b = raw.room(&mut chain, 1024)?;
        raw.write_desc(
            slots[0],
            Desc {
                addr: a,
                len: 1024,
                flags: DESC_F_WRITE | DESC_F_NEXT,
                next: slots[1],
            },
        )?;
        raw.write_desc(
            slots[1],
            Desc {
                addr: b,
                len: 1024,
                flags: DESC_F_WRITE | DESC_F_NEXT,
                next: slots[0],
            },
        )?;
        Ok((slots[0], chain))
    });
}

/// A one-descriptor RX chain: `room` bytes the device may write at `addr` (allocated when
/// `None`), or, with `read_only`, the wrong direction.
fn rx_single(raw: &mut RawRing<'_>, addr: Option<u64>, read_only: bool) -> Result<(u16, InFlight)> {
    let mut chain = InFlight::default();
    let slots = raw.reserve(1)?;
    chain.descs = slots.clone();
    let addr = match addr {
        Some(addr) => addr,
        None => raw.room(&mut chain, 2048)?,
    };
    let flags = if read_only { 0 } else { DESC_F_WRITE };
    raw.write_desc(
        slots[0],
        Desc {
            addr,
            len: 2048,
            flags,
            next: 0,
        },
    )?;
    Ok((slots[0], chain))
}

#[test]
fn an_in_order_guest_gets_every_buffer_back_in_order_bad_ones_included() {
    let daemon = Daemon::start(&["a", "b"], 1).expect("daemon starts");
    let options = |id| GuestOptions::linux(id).with(feature::IN_ORDER);
    let mut a = TestGuest::connect(&daemon.socket("a"), options(1)).expect("a");
    let mut b = TestGuest::connect(&daemon.socket("b"), options(2)).expect("b");
    assert!(a.has(feature::IN_ORDER) && b.has(feature::IN_ORDER));

    // b's RX ring: good, wrong direction, good, outside guest memory, good.
    let mut posted = Vec::new();
    let mut raw = b.raw(TestGuest::rx_vring(0)).expect("raw ring");
    for (addr, read_only) in [
        (None, false),
        (None, true),
        (None, false),
        (Some(GAP_ADDR), false),
        (None, false),
    ] {
        let (head, chain) = rx_single(&mut raw, addr, read_only).expect("RX chain");
        raw.publish(head, chain).expect("publish");
        posted.push(head);
    }
    raw.kick().expect("kick");

    // a's TX ring: good, a runt, good, good; one kick.
    let mut sent = Vec::new();
    let mut raw = a.raw(TestGuest::tx_vring(0)).expect("raw ring");
    let mut runt = VirtioNetHdr::plain().to_bytes().to_vec();
    runt.extend_from_slice(&[0xaa; 10]);
    let good = good_bytes(VirtioNetHdr::plain());
    for bytes in [&good, &runt, &good, &good] {
        let (head, chain) = single(&mut raw, bytes).expect("TX chain");
        raw.publish(head, chain).expect("publish");
        sent.push(head);
    }
    raw.kick().expect("kick");

    let collect = |guest: &mut TestGuest, vring: u16, count: usize| {
        let mut heads = Vec::new();
        support::wait_for("every chain to be used", support::TIMEOUT, || {
            heads.extend(guest.used_entries(vring)?.iter().map(|entry| entry.head));
            Ok((heads.len() >= count).then_some(()))
        })
        .expect("chains used");
        heads
    };
    assert_eq!(
        collect(&mut a, TestGuest::tx_vring(0), sent.len()),
        sent,
        "TX order"
    );
    assert_eq!(
        collect(&mut b, TestGuest::rx_vring(0), posted.len()),
        posted,
        "RX order"
    );
}
