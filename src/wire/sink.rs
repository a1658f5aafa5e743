//! A sink port: takes every frame and discards it, counting. A stand-in for a receiver that
//! is never the bottleneck (benchmarks, loading a guest without a second VM).

use crate::nic::{FrameBytes, GuestOffloads, GuestRxRing, RingWrite};
use crate::packet::offload::VirtioNetHdrBytes;

pub struct SinkRing;

impl GuestRxRing for SinkRing {
    fn write(&self, _header: &VirtioNetHdrBytes, _frame: &[u8]) -> RingWrite {
        RingWrite::Written
    }

    fn write_bytes(&self, _header: &VirtioNetHdrBytes, _frame: FrameBytes<'_>) -> RingWrite {
        RingWrite::Written
    }

    fn notify(&self) {}

    fn is_enabled(&self) -> bool {
        true
    }

    fn offloads(&self) -> GuestOffloads {
        super::ALL_OFFLOADS
    }
}
