//! The link into a port: a rate (bits per second on the wire, counting preamble, inter-frame
//! gap and FCS) and a one-way latency, so a test can make congestion happen at 1, 10, 25 or
//! 100 Gbit/s on purpose.
//!
//! The link is a virtual clock: `free_at` is when the wire finishes the last frame given to
//! it. A frame may go when the wire is free (within a small slack, so the pacer does not need
//! a timer per frame), and then occupies it for its wire time. Senders on several threads
//! share the clock through one atomic; nothing locks.
//!
//! A class may also be given an extra delay on top of the link's latency: a known effect on
//! the priority flow alone, which an evaluation must then measure back (a port-wide latency
//! would also reshape the bulk flows beside it).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::classify::Class;

/// Ethernet overhead per frame on the wire beyond the bytes a guest sees: preamble and SFD
/// (8), FCS (4), inter-frame gap (12).
pub const WIRE_OVERHEAD: u64 = 8 + 4 + 12;

/// Smallest frame on the wire without FCS (shorter frames are padded).
const MIN_FRAME: u64 = 60;

/// How far ahead of real time the link may run before a frame must wait: a burst allowance
/// that keeps the pacer from sleeping between back-to-back frames.
pub const SLACK_NS: u64 = 20_000;

/// Rate and latency of a link, as the user set them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkSettings {
    /// Bits per second on the wire; 0 means unpaced.
    pub rate_bps: u64,
    /// One-way latency added to every frame, in nanoseconds.
    pub latency_ns: u64,
}

impl Default for LinkSettings {
    fn default() -> Self {
        LinkSettings {
            rate_bps: 100_000_000_000,
            latency_ns: 0,
        }
    }
}

/// Bytes a frame of `len` bytes (without FCS), or a GSO frame cut into `segments` frames of
/// which the first `header_len` bytes repeat, occupies on the wire.
pub fn wire_bytes(len: usize, segments: u32, header_len: usize) -> u64 {
    let segments = u64::from(segments.max(1));
    let repeated_headers = (segments - 1) * header_len as u64;
    let bytes = len as u64 + repeated_headers;
    bytes.max(MIN_FRAME * segments) + WIRE_OVERHEAD * segments
}

pub struct Link {
    rate_bps: AtomicU64,
    /// Picoseconds per byte at `rate_bps` (0: unpaced), so a frame's wire time is one
    /// multiplication rather than a 128-bit division per frame.
    ps_per_byte: AtomicU64,
    latency_ns: AtomicU64,
    /// Extra delay per class (indexed by [`class_slot`]), added to `latency_ns`.
    class_delay_ns: [AtomicU64; 2],
    free_at: AtomicU64,
}

fn class_slot(class: Class) -> usize {
    match class {
        Class::High => 0,
        Class::Normal => 1,
    }
}

/// Picoseconds one byte takes at `rate_bps` (exact for the usual 1/10/25/40/100G rates).
fn ps_per_byte(rate_bps: u64) -> u64 {
    8_000_000_000_000u64.checked_div(rate_bps).unwrap_or(0)
}

/// When a wire free at `free_at` can next take a frame: `None` if at `now` (within the
/// slack), else the time.
fn busy_until(free_at: u64, now: u64) -> Option<u64> {
    (free_at > now + SLACK_NS).then(|| free_at - SLACK_NS)
}

/// A private copy of a link's state, to plan a run of frames before any is sent: which of
/// them the wire would take now, charging each as if sent.
#[derive(Debug, Clone, Copy)]
pub struct LinkPlan {
    ps_per_byte: u64,
    free_at: u64,
}

impl LinkPlan {
    /// Whether the wire takes every frame at once (no rate set).
    pub fn is_unpaced(&self) -> bool {
        self.ps_per_byte == 0
    }

    /// Whether the wire can take a frame at `now`; if so, counts it as sent.
    pub fn take(&mut self, now: u64, wire_bytes: u64) -> bool {
        if self.ps_per_byte == 0 {
            return true;
        }
        if busy_until(self.free_at, now).is_some() {
            return false;
        }
        self.free_at = self.free_at.max(now) + wire_bytes * self.ps_per_byte / 1000;
        true
    }
}

impl Link {
    pub fn new(settings: LinkSettings) -> Self {
        Link {
            rate_bps: AtomicU64::new(settings.rate_bps),
            ps_per_byte: AtomicU64::new(ps_per_byte(settings.rate_bps)),
            latency_ns: AtomicU64::new(settings.latency_ns),
            class_delay_ns: [AtomicU64::new(0), AtomicU64::new(0)],
            free_at: AtomicU64::new(0),
        }
    }

    /// The link's state now, to plan a run of frames with.
    pub fn plan(&self) -> LinkPlan {
        LinkPlan {
            ps_per_byte: self.ps_per_byte.load(Ordering::Relaxed),
            free_at: self.free_at.load(Ordering::Relaxed),
        }
    }

    pub fn settings(&self) -> LinkSettings {
        LinkSettings {
            rate_bps: self.rate_bps.load(Ordering::Relaxed),
            latency_ns: self.latency_ns.load(Ordering::Relaxed),
        }
    }

    /// Changes rate and latency at run time; frames already on the wire keep their times.
    pub fn set(&self, settings: LinkSettings) {
        self.rate_bps.store(settings.rate_bps, Ordering::Relaxed);
        self.ps_per_byte
            .store(ps_per_byte(settings.rate_bps), Ordering::Relaxed);
        self.latency_ns
            .store(settings.latency_ns, Ordering::Relaxed);
    }

    pub fn latency_ns(&self) -> u64 {
        self.latency_ns.load(Ordering::Relaxed)
    }

    /// The one-way latency a frame of `class` sees: the link's plus the class's extra delay.
    pub fn latency_of(&self, class: Class) -> u64 {
        self.latency_ns()
            .saturating_add(self.class_delay_ns[class_slot(class)].load(Ordering::Relaxed))
    }

    /// The extra delay of one class, on top of the link's latency.
    pub fn class_delay_ns(&self, class: Class) -> u64 {
        self.class_delay_ns[class_slot(class)].load(Ordering::Relaxed)
    }

    /// Changes one class's extra delay; frames already waiting keep their arrival times, so
    /// the new delay applies to them too.
    pub fn set_class_delay(&self, class: Class, delay_ns: u64) {
        self.class_delay_ns[class_slot(class)].store(delay_ns, Ordering::Relaxed);
    }

    /// Nanoseconds `wire_bytes` occupy the wire at the current rate (0 when unpaced).
    pub fn wire_ns(&self, wire_bytes: u64) -> u64 {
        // At most 64 KiB times 8e12 ps (1 bit/s): far below u64::MAX.
        wire_bytes.saturating_mul(self.ps_per_byte.load(Ordering::Relaxed)) / 1000
    }

    /// When the wire can next take a frame: `None` if now (within the slack), else the time.
    pub fn busy_until(&self, now: u64) -> Option<u64> {
        if self.ps_per_byte.load(Ordering::Relaxed) == 0 {
            return None;
        }
        busy_until(self.free_at.load(Ordering::Relaxed), now)
    }

    /// Puts a frame of `wire_bytes` on the wire at `now` (the caller checked `busy_until`).
    pub fn transmit(&self, now: u64, wire_bytes: u64) {
        let duration = self.wire_ns(wire_bytes);
        if duration == 0 {
            return;
        }
        let _ = self
            .free_at
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |free_at| {
                Some(free_at.max(now) + duration)
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends as fast as the link allows for one simulated second and returns the bits sent.
    fn simulate(rate_bps: u64, frame_len: usize) -> f64 {
        let link = Link::new(LinkSettings {
            rate_bps,
            latency_ns: 0,
        });
        let wire = wire_bytes(frame_len, 1, 0);
        let mut now = 0u64;
        let mut sent_bytes = 0u64;
        while now < 1_000_000_000 {
            match link.busy_until(now) {
                None => {
                    link.transmit(now, wire);
                    sent_bytes += wire;
                }
                Some(until) => now = until,
            }
        }
        sent_bytes as f64 * 8.0
    }

    #[test]
    fn pacing_at_1_gbit_is_within_2_percent_over_a_second() {
        for len in [60, 1514, 9014] {
            let bits = simulate(1_000_000_000, len);
            let error = (bits - 1e9).abs() / 1e9;
            assert!(error < 0.02, "len {len}: {bits} bits, error {error}");
        }
    }

    #[test]
    fn pacing_at_10_gbit_is_within_2_percent_over_a_second() {
        for len in [60, 1514] {
            let bits = simulate(10_000_000_000, len);
            let error = (bits - 1e10).abs() / 1e10;
            assert!(error < 0.02, "len {len}: {bits} bits, error {error}");
        }
    }

    #[test]
    fn wire_bytes_count_overhead_and_padding() {
        assert_eq!(wire_bytes(1514, 1, 0), 1514 + 24);
        assert_eq!(wire_bytes(42, 1, 0), 60 + 24);
        // A 3-segment GSO frame repeats its 54-byte headers twice more.
        assert_eq!(wire_bytes(54 + 3000, 3, 54), 54 * 3 + 3000 + 3 * 24);
    }

    #[test]
    fn minimum_frames_at_100g_take_6_72_ns() {
        let link = Link::new(LinkSettings::default());
        assert_eq!(link.wire_ns(wire_bytes(60, 1, 0)), 6);
        assert_eq!(link.wire_ns(84 * 1000), 6720);
    }

    #[test]
    fn an_idle_link_sends_at_once_and_a_busy_one_says_until_when() {
        let link = Link::new(LinkSettings {
            rate_bps: 1_000_000_000,
            latency_ns: 0,
        });
        assert_eq!(link.busy_until(1_000_000), None);
        // 125 000 bytes take 1 ms at 1 Gbit/s.
        link.transmit(1_000_000, 125_000);
        assert_eq!(link.busy_until(1_000_000), Some(2_000_000 - SLACK_NS));
        assert_eq!(link.busy_until(2_000_000), None);
    }

    #[test]
    fn unpaced_link_never_waits_and_rate_changes_apply() {
        let link = Link::new(LinkSettings {
            rate_bps: 0,
            latency_ns: 5,
        });
        link.transmit(0, 1_000_000);
        assert_eq!(link.busy_until(0), None);
        link.set(LinkSettings {
            rate_bps: 8_000_000_000,
            latency_ns: 7,
        });
        assert_eq!(link.wire_ns(1000), 1000);
        assert_eq!(link.latency_ns(), 7);
    }

    #[test]
    fn a_class_delay_adds_to_that_class_only_and_survives_link_changes() {
        let link = Link::new(LinkSettings {
            rate_bps: 0,
            latency_ns: 100,
        });
        link.set_class_delay(Class::High, 300_000);
        assert_eq!(link.latency_of(Class::High), 300_100);
        assert_eq!(link.latency_of(Class::Normal), 100);
        link.set(LinkSettings {
            rate_bps: 0,
            latency_ns: 0,
        });
        assert_eq!(link.latency_of(Class::High), 300_000);
        assert_eq!(link.class_delay_ns(Class::Normal), 0);
        link.set_class_delay(Class::High, 0);
        assert_eq!(link.latency_of(Class::High), 0);
    }
}
