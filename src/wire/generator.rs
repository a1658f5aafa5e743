//! A generator port: sends UDP frames into the switch as fast as it can, spread over a number
//! of flows (source ports), so a guest can be loaded at line rate without a second VM.

use std::sync::Arc;
use std::thread;

use etherparse::PacketBuilder;

use crate::nic::TxFrame;
use crate::nic::burst::BURST_FRAMES;
use crate::packet::offload::Offload;
use crate::stats;
use crate::switch::PortId;
use crate::switch::fabric::{Fabric, ForwardState};

/// What a generator sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratorSpec {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// Frame length without FCS (at least 60, like a NIC pads).
    pub len: usize,
    /// Number of flows (UDP source ports), to spread over RSS queues.
    pub flows: u16,
    /// DSCP of the IPv4 header (46 = EF marks a flow high priority under DSCP trust).
    pub dscp: u8,
    /// Frames per second; 0 sends as fast as the switch takes them.
    pub pps: u64,
}

/// Smallest and largest frame a generator makes.
pub const MIN_LEN: usize = 60;
pub const MAX_LEN: usize = 9014;

/// Builds the frame of flow `flow`: Ethernet/IPv4/UDP 10.255.0.1 -> 10.255.0.2, source
/// port 1024 + flow, destination port 9 (discard).
pub fn build_frame(spec: &GeneratorSpec, flow: u16) -> Vec<u8> {
    const HEADERS: usize = 14 + 20 + 8;
    let payload = vec![0u8; spec.len.max(MIN_LEN) - HEADERS];
    let builder = PacketBuilder::ethernet2(spec.src, spec.dst)
        .ipv4([10, 255, 0, 1], [10, 255, 0, 2], 64)
        .udp(1024u16.wrapping_add(flow), 9);
    let mut frame = Vec::with_capacity(spec.len.max(MIN_LEN));
    // Writing into a Vec cannot fail, and the sizes are bounded by MAX_LEN.
    let _ = builder.write(&mut frame, &payload);
    if spec.dscp != 0 {
        // TOS byte, then the IPv4 header checksum again.
        frame[15] = spec.dscp << 2;
        frame[24..26].copy_from_slice(&[0, 0]);
        let checksum = crate::packet::checksum::checksum(&frame[14..34]);
        frame[24..26].copy_from_slice(&checksum.to_be_bytes());
    }
    frame
}

/// The most frames a generator sends between two flushes: a NIC's full burst. Receivers are
/// notified once per batch, as a NIC's TX engine would (not per frame), so an unpaced
/// generator sends full batches: the flush, the ring's lock and its publication are paid
/// once per 64 frames (32 was slower at 64 bytes).
const BATCH_MAX: usize = BURST_FRAMES;

/// How many frames to send now, `elapsed_ns` after the start with `sent` sent so far: a
/// full batch unpaced (`pps` 0); paced, every frame due by now (frame `k` is due at
/// `k / pps` s), at least one and at most a batch. A paced flow thus goes out as evenly
/// as the thread wakes, not in batches of 64 (an EF flow of 1000 pps measured in bursts
/// would queue behind itself).
fn frames_due(elapsed_ns: u128, pps: u64, sent: u64) -> usize {
    if pps == 0 {
        return BATCH_MAX;
    }
    let due = elapsed_ns * u128::from(pps) / 1_000_000_000 + 1;
    due.saturating_sub(u128::from(sent))
        .clamp(1, BATCH_MAX as u128) as usize
}

/// Starts the generator thread for port `port`.
pub fn spawn(
    fabric: Arc<Fabric>,
    port: PortId,
    spec: GeneratorSpec,
) -> std::io::Result<thread::JoinHandle<()>> {
    let name = format!("gen-{}", fabric.ports[port].name);
    thread::Builder::new().name(name).spawn(move || {
        let mut frames: Vec<Vec<u8>> = (0..spec.flows.max(1))
            .map(|flow| build_frame(&spec, flow))
            .collect();
        // Unpaced, the generator never goes idle and tries the frames waiting for a full
        // ring at every flush, as a busy vhost TX worker does between its batches: it
        // promises to (`Nic::promise_retry`), so that a ring that runs out does not ask its
        // guest for a kick. A polling driver asked for one makes a syscall per refill, and
        // each kick wakes the port's worker on the CPU the generator runs on. A paced
        // generator sleeps between its frames and could not keep the promise.
        // Promised to every port before the first frame: the first batch into a ring just
        // set up may run it out before a flush would have made the promise.
        let mut scratch = if spec.pps == 0 {
            ForwardState::promising()
        } else {
            ForwardState::default()
        };
        fabric.promise_everywhere(port, &mut scratch);
        let Some(counters) = fabric.ports[port].queue_counters.first().cloned() else {
            return;
        };
        let flows = frames.len();
        let mut next = 0;
        let start = std::time::Instant::now();
        let mut sent: u64 = 0;
        // SAFETY: prctl(PR_SET_TIMERSLACK) only affects this thread; paced sleeps are short.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
        loop {
            // Pace: sleep until the next frame is due, then send every frame due by now.
            if let Some(due_ns) = sent.saturating_mul(1_000_000_000).checked_div(spec.pps)
                && let Some(wait) =
                    std::time::Duration::from_nanos(due_ns).checked_sub(start.elapsed())
            {
                thread::sleep(wait);
            }
            let batch = frames_due(start.elapsed().as_nanos(), spec.pps, sent);
            sent += batch as u64;
            let mut bytes = 0;
            for _ in 0..batch {
                let frame = &mut frames[next];
                // Not `% flows`: a division per frame showed in this loop's profile.
                next += 1;
                if next == flows {
                    next = 0;
                }
                let mut offload = Offload::default();
                bytes += frame.len() as u64;
                // SAFETY: `frames` lives as long as this thread and nothing writes to it
                // once built: this loop does not, and the switch writes to a frame only to
                // complete a checksum it was asked for (these ask for none), after giving
                // up the promise. The flush below ends every burst that refers to it.
                let mut frame = unsafe { TxFrame::lasting(frame) };
                fabric.forward(port, &mut frame, &mut offload, &mut scratch, &counters);
            }
            // Once per batch: the counters live in memory the stats reader shares, and two
            // read-modify-writes per frame showed in the thread's profile. This thread is
            // their only writer.
            stats::add_single_writer(&counters.tx_packets, batch as u64);
            stats::add_single_writer(&counters.tx_bytes, bytes);
            fabric.flush(&mut scratch);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unpaced_generator_sends_full_batches() {
        assert_eq!(frames_due(0, 0, 0), BATCH_MAX);
        assert_eq!(frames_due(123_456_789, 0, 1 << 40), BATCH_MAX);
    }

    #[test]
    fn a_paced_generator_sends_what_is_due_and_no_more() {
        // 1000 pps: frame k is due at k ms.
        assert_eq!(frames_due(0, 1000, 0), 1, "frame 0 at once");
        assert_eq!(frames_due(500_000, 1000, 1), 1, "early wake-up: still one");
        assert_eq!(frames_due(1_000_000, 1000, 1), 1, "frame 1 at 1 ms");
        assert_eq!(frames_due(4_999_999, 1000, 2), 3, "late: frames 2, 3 and 4");
        assert_eq!(
            frames_due(1_000_000_000, 1000, 5),
            BATCH_MAX,
            "far behind: a batch"
        );
    }

    #[test]
    fn frames_have_the_requested_length_and_flow() {
        let spec = GeneratorSpec {
            dst: [2, 0, 0, 0, 0, 0xb],
            src: [2, 0, 0, 0, 0, 0xa],
            len: 64,
            flows: 4,
            dscp: 0,
            pps: 0,
        };
        let frame = build_frame(&spec, 3);
        assert_eq!(frame.len(), 64);
        assert_eq!(&frame[0..6], &spec.dst);
        // UDP source port at 14 + 20.
        assert_eq!(u16::from_be_bytes([frame[34], frame[35]]), 1027);
        let runt = build_frame(&GeneratorSpec { len: 10, ..spec }, 0);
        assert_eq!(runt.len(), MIN_LEN);
        let marked = build_frame(&GeneratorSpec { dscp: 46, ..spec }, 0);
        assert_eq!(marked[15] >> 2, 46);
        assert!(
            crate::packet::checksum::verifies(&marked[14..34]),
            "IPv4 checksum"
        );
    }
}
