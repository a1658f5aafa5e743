//! The NIC model's clock: nanoseconds since the process started, read once or twice per
//! frame (arrival, publication, pacing), so it must be cheap.
//!
//! `clock_gettime` through the vDSO was a large share of the switching path in a profile. On
//! x86_64 with an invariant TSC (`constant_tsc` and `nonstop_tsc`, which is also what lets the
//! kernel use the TSC as its clocksource) we read the TSC and scale it by a factor calibrated
//! against `Instant` at start. Elsewhere, `Instant` it is.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

struct Clock {
    epoch: Instant,
    /// TSC at `epoch` and nanoseconds per tick in 32.32 fixed point, when the TSC is usable.
    tsc: Option<(u64, u64)>,
}

static CLOCK: OnceLock<Clock> = OnceLock::new();

#[cfg(target_arch = "x86_64")]
fn read_tsc() -> u64 {
    // SAFETY: RDTSC has no preconditions; invariant-TSC support is checked before use.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(target_arch = "x86_64")]
fn invariant_tsc() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
        info.lines()
            .find(|line| line.starts_with("flags"))
            .is_some_and(|flags| {
                let has = |flag| flags.split_whitespace().any(|f| f == flag);
                has("constant_tsc") && has("nonstop_tsc")
            })
    })
}

fn calibrate() -> Clock {
    #[cfg(target_arch = "x86_64")]
    if invariant_tsc() {
        let (t0, c0) = (Instant::now(), read_tsc());
        std::thread::sleep(Duration::from_millis(20));
        let (t1, c1) = (Instant::now(), read_tsc());
        let ticks = c1.wrapping_sub(c0);
        let ns = t1.duration_since(t0).as_nanos() as u64;
        if ticks > ns / 16 && ns > 0 {
            let scale = ((u128::from(ns) << 32) / u128::from(ticks)) as u64;
            return Clock {
                epoch: t0,
                tsc: Some((c0, scale)),
            };
        }
    }
    Clock {
        epoch: Instant::now(),
        tsc: None,
    }
}

/// Starts the clock (a 20 ms calibration); called once at start so no frame pays for it.
pub fn init() {
    CLOCK.get_or_init(calibrate);
}

/// Nanoseconds since the clock started.
#[inline]
pub fn now_ns() -> u64 {
    let clock = CLOCK.get_or_init(calibrate);
    #[cfg(target_arch = "x86_64")]
    if let Some((tsc0, scale)) = clock.tsc {
        let ticks = read_tsc().wrapping_sub(tsc0);
        return ((u128::from(ticks) * u128::from(scale)) >> 32) as u64;
    }
    clock.epoch.elapsed().as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_follows_real_time() {
        init();
        let (t0, n0) = (Instant::now(), now_ns());
        std::thread::sleep(Duration::from_millis(50));
        let (elapsed, ticked) = (t0.elapsed().as_nanos() as i64, (now_ns() - n0) as i64);
        // Within 5 ms of real time over 50 ms (scheduling noise, not clock error).
        assert!(
            (elapsed - ticked).abs() < 5_000_000,
            "real {elapsed} ns, clock {ticked} ns"
        );
    }

    #[test]
    fn the_clock_never_goes_back() {
        let mut last = now_ns();
        for _ in 0..10_000 {
            let now = now_ns();
            assert!(now >= last);
            last = now;
        }
    }
}
