//! The generator -> NIC path of `benches/vs_dpdk.py` case (b) without the guest ring: a
//! generator's loop (64-byte frames, 64 to a batch, forwarded by reference and flushed) into
//! a port whose NIC classifies, stages and delivers them to a ring that takes every frame
//! and copies none (plain `main`, no harness).
//!
//! Run: `cargo bench --bench nic_path` prints ns per frame. Its use is under callgrind, where
//! the count is exact and the same from run to run, whatever else the machine runs:
//!
//!     valgrind --tool=callgrind target/release/deps/nic_path-HASH
//!
//! then the program's instructions over `BENCH_FRAMES` (default 10 million; one million is
//! plenty under callgrind), or a function's inclusive count over the calls of
//! `Classifier::classify` (one per frame), as docs/DATAPATH.md, "Instructions per frame",
//! does for the whole backend driven by testpmd. Nothing here waits for a guest, so no
//! frame goes through the NIC's buffers: what this counts is the path every frame takes
//! when the ring has room.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use prism_vnic::classify::rules::RuleSet;
use prism_vnic::nic::{
    BurstFrame, GuestOffloads, GuestRxRing, Nic, NicConfig, RingWrite, TxFrame, clock,
};
use prism_vnic::packet::offload::{Offload, VirtioNetHdrBytes};
use prism_vnic::stats::{PortCounters, QueueCounters};
use prism_vnic::switch::fabric::{Fabric, FabricPort, ForwardState, PortKind};
use prism_vnic::switch::{Switch, SwitchConfig};
use prism_vnic::wire::generator::{GeneratorSpec, build_frame};

/// A guest ring with room for everything, that keeps nothing but a count.
#[derive(Default)]
struct CountingRing {
    frames: AtomicU64,
}

impl GuestRxRing for CountingRing {
    fn write(&self, _header: &VirtioNetHdrBytes, _frame: &[u8]) -> RingWrite {
        self.frames.fetch_add(1, Ordering::Relaxed);
        RingWrite::Written
    }

    fn write_burst(&self, frames: &[BurstFrame<'_>]) -> (usize, Option<RingWrite>) {
        self.frames
            .fetch_add(frames.len() as u64, Ordering::Relaxed);
        (frames.len(), None)
    }

    fn notify(&self) {}

    fn is_enabled(&self) -> bool {
        true
    }

    fn offloads(&self) -> GuestOffloads {
        GuestOffloads::default()
    }
}

struct Ring(Arc<CountingRing>);

impl GuestRxRing for Ring {
    fn write(&self, header: &VirtioNetHdrBytes, frame: &[u8]) -> RingWrite {
        self.0.write(header, frame)
    }

    fn write_burst(&self, frames: &[BurstFrame<'_>]) -> (usize, Option<RingWrite>) {
        self.0.write_burst(frames)
    }

    fn notify(&self) {}

    fn is_enabled(&self) -> bool {
        true
    }

    fn offloads(&self) -> GuestOffloads {
        GuestOffloads::default()
    }
}

fn port(name: &str, kind: PortKind) -> FabricPort {
    let queue_counters = vec![Arc::new(QueueCounters::default())];
    let mut config = NicConfig::default();
    // Unpaced, as vs_dpdk.py runs prism-vnic (--link-rate 0).
    config.link.rate_bps = 0;
    let nic = Nic::new(
        &queue_counters,
        Arc::new(PortCounters::default()),
        &config,
        RuleSet::default(),
    )
    .expect("a NIC with default settings");
    FabricPort {
        name: name.into(),
        kind,
        nic: Arc::new(nic),
        queue_counters,
    }
}

fn main() {
    let frames: u64 = std::env::var("BENCH_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    clock::init();
    let receiver = port(
        "a",
        PortKind::VhostUser {
            socket: "none".into(),
        },
    );
    let ring = Arc::new(CountingRing::default());
    receiver.nic.attach_fixed_ring(Box::new(Ring(ring.clone())));
    let generator = port("g", PortKind::Generator);
    let counters = generator.queue_counters[0].clone();
    let fabric = Fabric {
        switch: Switch::new(2, SwitchConfig::default()),
        ports: vec![receiver, generator],
    };
    // vs_dpdk.py's (b): from B's MAC to A's, 64 bytes, one flow.
    let spec = GeneratorSpec {
        dst: [2, 0, 0, 0, 0, 0xa],
        src: [2, 0, 0, 0, 0, 0xb],
        len: 64,
        flows: 1,
        dscp: 0,
        pps: 0,
    };
    let mut frame = build_frame(&spec, 0);
    let mut scratch = ForwardState::default();
    let batch = 64;
    let start = Instant::now();
    let mut sent = 0;
    while sent < frames {
        for _ in 0..batch {
            let mut offload = Offload::default();
            // SAFETY: `frame` outlives the loop and nothing writes to it; the flush below
            // ends every burst that refers to it, as the generator's loop does.
            let mut tx = unsafe { TxFrame::lasting(&mut frame) };
            fabric.forward(1, &mut tx, &mut offload, &mut scratch, &counters);
        }
        fabric.flush(&mut scratch);
        sent += batch;
    }
    let elapsed = start.elapsed();
    let received = ring.frames.load(Ordering::Relaxed);
    assert_eq!(received, sent, "every frame reached the ring");
    println!(
        "generator -> NIC -> ring (no copy): {sent} frames, {:.1} ns per frame",
        elapsed.as_nanos() as f64 / sent as f64
    );
}
