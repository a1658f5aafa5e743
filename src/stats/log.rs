//! A log that a guest cannot flood: warnings about guest faults are sampled, while the
//! counters (this module's neighbours) carry the full count.

use std::sync::atomic::{AtomicU64, Ordering};

use log::warn;

/// Logs at most one warning per `every` occurrences of a guest fault, so a hostile guest
/// cannot flood the log; the counters carry the full count.
pub struct RateLimitedLog {
    seen: AtomicU64,
}

impl RateLimitedLog {
    pub const fn new() -> Self {
        RateLimitedLog {
            seen: AtomicU64::new(0),
        }
    }

    pub fn warn(&self, what: impl FnOnce() -> String) {
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        // 1, 2, 4, 8, ... then every 1024th.
        if (n < 1024 && n.is_power_of_two()) || n.is_multiple_of(1024) {
            warn!("{} (occurrence {})", what(), n + 1);
        }
    }
}

impl Default for RateLimitedLog {
    fn default() -> Self {
        Self::new()
    }
}
