//! Zero-length and degenerate descriptors in every position a guest can put them: RX and TX,
//! with and without mergeable buffers, direct and indirect. For each: the daemon stays up,
//! a chain that can hold nothing comes back with used length 0 and a named counter, a chain
//! whose zero-length descriptors sit beside real buffers is used for its real buffers, and
//! the other guests' traffic to and from the port is not disturbed.

mod support;

use support::Result;
use support::daemon::Daemon;
use support::frames::VirtioNetHdr;
use support::guest::{GuestOptions, RawRing, TestGuest, feature};
use support::traffic::{assert_traffic_both_ways, flow_frame};
use support::virtqueue::{DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, Desc, InFlight};

/// Three guests on one pair: `b` is the hostile receiver, `a` sends to it, `c` checks that a
/// third guest's traffic to `b` is not disturbed by what `b` did.
struct Three {
    daemon: Daemon,
    a: TestGuest,
    b: TestGuest,
    c: TestGuest,
}

impl Three {
    fn new(b_options: GuestOptions) -> Three {
        let daemon = Daemon::start(&["a", "b", "c"], 1).expect("daemon starts");
        let a = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("a");
        let b = TestGuest::connect(&daemon.socket("b"), b_options).expect("b");
        let c = TestGuest::connect(&daemon.socket("c"), GuestOptions::linux(3)).expect("c");
        Three { daemon, a, b, c }
    }

    /// Every pair of guests still exchanges frames both ways, and the daemon runs.
    fn check_everyone_still_talks(&mut self, tag: u32) {
        self.daemon.check_running().expect("daemon survives");
        assert_traffic_both_ways(&mut self.a, &mut self.b, 0, tag);
        assert_traffic_both_ways(&mut self.c, &mut self.b, 0, tag + 10);
        assert_traffic_both_ways(&mut self.a, &mut self.c, 0, tag + 20);
        self.daemon.check_running().expect("daemon survives");
    }
}

fn mergeable(on: bool) -> GuestOptions {
    let options = GuestOptions::linux(2);
    if on {
        options.with(feature::MRG_RXBUF)
    } else {
        options.without(feature::MRG_RXBUF)
    }
}

/// The pieces of a chain a test builds: each is a writable (RX) or readable (TX) buffer of
/// the given length; `Data` carries bytes to read.
#[derive(Clone, Debug)]
enum Piece {
    /// Room for the device to write (RX), `len` bytes (0 for a degenerate one).
    Room(u32),
    /// Bytes for the device to read (TX).
    Data(Vec<u8>),
}

/// Writes `pieces` as one chain, direct descriptors or one indirect table, and publishes it.
fn publish_chain(raw: &mut RawRing<'_>, pieces: &[Piece], indirect: bool) -> Result<u16> {
    let mut chain = InFlight::default();
    let mut descs = Vec::new();
    for piece in pieces {
        let (addr, len, flags) = match piece {
            // A zero-length buffer still gets an address inside guest memory: only its length
            // is degenerate.
            // (Not recorded as writable room: the device writes nothing there.)
            Piece::Room(0) => (raw.buffer(&mut chain, &[0])?, 0, DESC_F_WRITE),
            Piece::Room(len) => (raw.room(&mut chain, *len)?, *len, DESC_F_WRITE),
            Piece::Data(bytes) if bytes.is_empty() => (raw.buffer(&mut chain, &[0])?, 0, 0),
            Piece::Data(bytes) => (raw.buffer(&mut chain, bytes)?, bytes.len() as u32, 0),
        };
        descs.push(Desc {
            addr,
            len,
            flags,
            next: 0,
        });
    }
    if indirect {
        let table_len = 16 * descs.len() as u32;
        let table = raw.buffer(&mut chain, &vec![0u8; table_len as usize])?;
        let count = descs.len();
        for (index, mut desc) in descs.into_iter().enumerate() {
            if index + 1 < count {
                desc.flags |= DESC_F_NEXT;
                desc.next = index as u16 + 1;
            }
            raw.write_indirect_desc(table, index as u16, desc)?;
        }
        let slots = raw.reserve(1)?;
        chain.descs = slots.clone();
        raw.write_desc(
            slots[0],
            Desc {
                addr: table,
                len: table_len,
                flags: DESC_F_INDIRECT,
                next: 0,
            },
        )?;
        raw.publish(slots[0], chain)?;
        return Ok(slots[0]);
    }
    let slots = raw.reserve(descs.len())?;
    chain.descs = slots.clone();
    let count = descs.len();
    for (index, mut desc) in descs.into_iter().enumerate() {
        if index + 1 < count {
            desc.flags |= DESC_F_NEXT;
            desc.next = slots[index + 1];
        }
        raw.write_desc(slots[index], desc)?;
    }
    raw.publish(slots[0], chain)?;
    Ok(slots[0])
}

/// `b` offers the RX chain `pieces`, then a good buffer behind it, and `a` and `c` send to it.
/// A chain with no room at all must come back with used length 0 and `rx_errors_chain`
/// counted, and not stop the ring: a frame arrives in the good buffer behind it. A chain with
/// room must take a frame. Either way everyone keeps talking afterwards.
fn rx_case(mergeable_on: bool, indirect: bool, pieces: &[Piece]) {
    let mut three = Three::new(mergeable(mergeable_on));
    let room: u32 = pieces
        .iter()
        .map(|piece| match piece {
            Piece::Room(len) => *len,
            Piece::Data(_) => 0,
        })
        .sum();
    let errors_before = three
        .daemon
        .counter("b", "rx_errors_chain")
        .expect("counter");
    let vring = TestGuest::rx_vring(0);
    let mut raw = three.b.raw(vring).expect("raw ring");
    let head = publish_chain(&mut raw, pieces, indirect).expect("publish the RX chain");
    publish_chain(&mut raw, &[Piece::Room(2048)], false).expect("publish a good buffer");
    raw.kick().expect("kick");
    three
        .a
        .send(0, VirtioNetHdr::plain(), &flow_frame(1, 2, 7, 1))
        .expect("a sends to b");
    three
        .c
        .send(0, VirtioNetHdr::plain(), &flow_frame(3, 2, 7, 2))
        .expect("c sends to b");
    let used = support::wait_for("b's RX chain to be used", support::TIMEOUT, || {
        three.daemon.check_running()?;
        let entries = three.b.used_entries(vring)?;
        Ok(entries.into_iter().find(|entry| entry.head == head))
    })
    .expect("the chain comes back");
    if room == 0 {
        assert_eq!(used.len, 0, "used length of a chain with no room");
        let errors = three
            .daemon
            .counter("b", "rx_errors_chain")
            .expect("counter");
        assert!(errors > errors_before, "rx_errors_chain did not rise");
    } else {
        assert!(used.len > 0, "a chain with room took no frame");
    }
    let got = three.b.expect_frames(1).expect("a frame arrives");
    assert!(
        got.iter()
            .any(|frame| [flow_frame(1, 2, 7, 1), flow_frame(3, 2, 7, 2)].contains(&frame.frame)),
        "a frame as sent"
    );
    three.check_everyone_still_talks(3000);
}

#[test]
fn a_zero_length_rx_buffer_with_mergeable_buffers_is_refused_and_others_keep_talking() {
    rx_case(true, false, &[Piece::Room(0)]);
}

#[test]
fn a_zero_length_rx_buffer_without_mergeable_buffers_is_refused_and_others_keep_talking() {
    rx_case(false, false, &[Piece::Room(0)]);
}

#[test]
fn an_rx_chain_of_zero_length_descriptors_is_refused() {
    rx_case(
        true,
        false,
        &[Piece::Room(0), Piece::Room(0), Piece::Room(0)],
    );
    rx_case(false, false, &[Piece::Room(0), Piece::Room(0)]);
}

#[test]
fn an_indirect_rx_table_of_zero_length_descriptors_is_refused() {
    rx_case(true, true, &[Piece::Room(0)]);
    rx_case(false, true, &[Piece::Room(0), Piece::Room(0)]);
}

#[test]
fn zero_length_rx_descriptors_beside_real_buffers_are_skipped() {
    for mergeable_on in [true, false] {
        for indirect in [false, true] {
            rx_case(
                mergeable_on,
                indirect,
                &[Piece::Room(0), Piece::Room(2048), Piece::Room(0)],
            );
        }
    }
}

#[test]
fn an_rx_chain_with_a_header_split_over_tiny_buffers_takes_the_frame() {
    for mergeable_on in [true, false] {
        rx_case(
            mergeable_on,
            false,
            &[
                Piece::Room(1),
                Piece::Room(0),
                Piece::Room(5),
                Piece::Room(2048),
            ],
        );
    }
}

#[test]
fn with_mergeable_buffers_chains_too_small_for_the_header_are_refused_and_the_frame_arrives_whole()
{
    // b's ring: a 4-byte chain (less than the virtio-net header, which every mergeable buffer
    // must hold), a zero-length one, then room enough. Both small chains come back with used
    // length 0 and the frame arrives intact, its header whole, in the third.
    let mut three = Three::new(mergeable(true));
    let vring = TestGuest::rx_vring(0);
    let errors_before = three
        .daemon
        .counter("b", "rx_errors_chain")
        .expect("counter");
    let mut raw = three.b.raw(vring).expect("raw ring");
    let mut heads = Vec::new();
    for pieces in [
        vec![Piece::Room(4)],
        vec![Piece::Room(0)],
        vec![Piece::Room(2048)],
    ] {
        heads.push(publish_chain(&mut raw, &pieces, false).expect("publish"));
    }
    raw.kick().expect("kick");
    let frame = flow_frame(1, 2, 7, 77);
    three
        .a
        .send(0, VirtioNetHdr::plain(), &frame)
        .expect("a sends to b");
    let got = three.b.expect_frames(1).expect("b receives the frame");
    assert_eq!(got[0].frame, frame, "the frame as sent");
    assert_eq!(got[0].used_lens, vec![12 + frame.len() as u32]);
    let errors = three
        .daemon
        .counter("b", "rx_errors_chain")
        .expect("counter");
    assert_eq!(errors, errors_before + 2, "both small chains counted");
    three.check_everyone_still_talks(4000);
}

/// `a` sends the TX chain `pieces` (its header and frame spread as given) to `b`. Whether
/// it is forwarded or refused, its chain comes back with used length 0 and everyone keeps
/// talking; `forwarded` says which.
fn tx_case(indirect: bool, pieces: &[Piece], forwarded: bool) {
    let mut three = Three::new(mergeable(true));
    three.b.post_rx_buffers(0, 8, 2048).expect("b posts");
    let vring = TestGuest::tx_vring(0);
    let mut raw = three.a.raw(vring).expect("raw ring");
    let head = publish_chain(&mut raw, pieces, indirect).expect("publish the TX chain");
    raw.kick().expect("kick");
    let used = three.a.wait_tx_done(0, head).expect("the chain comes back");
    assert_eq!(used.len, 0, "used length of a TX chain");
    if forwarded {
        let got = three.b.expect_frames(1).expect("b receives the frame");
        assert_eq!(got[0].frame, flow_frame(1, 2, 7, 5), "the frame as sent");
    }
    three.check_everyone_still_talks(5000);
}

fn header() -> Vec<u8> {
    VirtioNetHdr::plain().to_bytes().to_vec()
}

#[test]
fn a_tx_chain_of_zero_length_descriptors_is_refused() {
    for indirect in [false, true] {
        tx_case(indirect, &[Piece::Data(vec![])], false);
        tx_case(indirect, &[Piece::Data(vec![]), Piece::Data(vec![])], false);
    }
}

#[test]
fn zero_length_tx_descriptors_anywhere_in_a_frame_are_skipped() {
    let frame = flow_frame(1, 2, 7, 5);
    let (front, back) = frame.split_at(20);
    for indirect in [false, true] {
        tx_case(
            indirect,
            &[
                Piece::Data(vec![]),
                Piece::Data(header()),
                Piece::Data(vec![]),
                Piece::Data(front.to_vec()),
                Piece::Data(vec![]),
                Piece::Data(back.to_vec()),
                Piece::Data(vec![]),
            ],
            true,
        );
    }
}

#[test]
fn a_tx_header_split_over_one_byte_descriptors_is_read_whole() {
    let mut pieces: Vec<Piece> = header().into_iter().map(|b| Piece::Data(vec![b])).collect();
    pieces.push(Piece::Data(flow_frame(1, 2, 7, 5)));
    tx_case(false, &pieces, true);
}
