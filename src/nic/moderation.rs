//! Interrupt moderation of one RX queue, like `ethtool -C rx-usecs N rx-frames M`: the guest
//! is notified once `rx-frames` frames are waiting for it, or `rx-usecs` after the first of
//! them, whichever comes first. Zero for both means every batch notifies at once.

use std::sync::atomic::{AtomicU32, Ordering};

/// The settings, changeable at run time.
#[derive(Debug, Default)]
pub struct Coalesce {
    rx_usecs: AtomicU32,
    rx_frames: AtomicU32,
}

/// A snapshot of [`Coalesce`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CoalesceSettings {
    pub rx_usecs: u32,
    pub rx_frames: u32,
}

impl Coalesce {
    pub fn new(settings: CoalesceSettings) -> Self {
        Coalesce {
            rx_usecs: AtomicU32::new(settings.rx_usecs),
            rx_frames: AtomicU32::new(settings.rx_frames),
        }
    }

    pub fn get(&self) -> CoalesceSettings {
        CoalesceSettings {
            rx_usecs: self.rx_usecs.load(Ordering::Relaxed),
            rx_frames: self.rx_frames.load(Ordering::Relaxed),
        }
    }

    pub fn set(&self, settings: CoalesceSettings) {
        self.rx_usecs.store(settings.rx_usecs, Ordering::Relaxed);
        self.rx_frames.store(settings.rx_frames, Ordering::Relaxed);
    }
}

/// Frames published to the guest and not yet notified.
#[derive(Debug, Default, Clone, Copy)]
pub struct Pending {
    frames: u32,
    since_ns: u64,
}

/// What to do about the frames pending notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyDecision {
    /// Nothing pending.
    Idle,
    /// Notify the guest now.
    Now,
    /// Notify at this time (ns) unless more frames come first.
    At(u64),
}

impl Pending {
    pub fn add(&mut self, frames: u32, now_ns: u64) {
        if self.frames == 0 {
            self.since_ns = now_ns;
        }
        self.frames = self.frames.saturating_add(frames);
    }

    pub fn clear(&mut self) {
        self.frames = 0;
    }

    pub fn decide(&self, settings: CoalesceSettings, now_ns: u64) -> NotifyDecision {
        if self.frames == 0 {
            return NotifyDecision::Idle;
        }
        if settings.rx_usecs == 0 && settings.rx_frames == 0 {
            return NotifyDecision::Now;
        }
        if settings.rx_frames > 0 && self.frames >= settings.rx_frames {
            return NotifyDecision::Now;
        }
        if settings.rx_usecs == 0 {
            // Only a frame count: wait for it (a timer of 1 ms keeps a lone frame from
            // waiting forever, as drivers' moderation timers do).
            return NotifyDecision::At(self.since_ns + 1_000_000);
        }
        let deadline = self.since_ns + u64::from(settings.rx_usecs) * 1000;
        if now_ns >= deadline {
            NotifyDecision::Now
        } else {
            NotifyDecision::At(deadline)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFF: CoalesceSettings = CoalesceSettings {
        rx_usecs: 0,
        rx_frames: 0,
    };

    #[test]
    fn without_moderation_every_batch_notifies() {
        let mut pending = Pending::default();
        assert_eq!(pending.decide(OFF, 0), NotifyDecision::Idle);
        pending.add(1, 100);
        assert_eq!(pending.decide(OFF, 100), NotifyDecision::Now);
    }

    #[test]
    fn frame_count_notifies_when_reached() {
        let settings = CoalesceSettings {
            rx_usecs: 50,
            rx_frames: 4,
        };
        let mut pending = Pending::default();
        pending.add(3, 1000);
        assert_eq!(pending.decide(settings, 1000), NotifyDecision::At(51_000));
        pending.add(1, 2000);
        assert_eq!(pending.decide(settings, 2000), NotifyDecision::Now);
    }

    #[test]
    fn usecs_count_from_the_first_pending_frame() {
        let settings = CoalesceSettings {
            rx_usecs: 10,
            rx_frames: 0,
        };
        let mut pending = Pending::default();
        pending.add(1, 5_000);
        pending.add(1, 9_000);
        assert_eq!(pending.decide(settings, 9_000), NotifyDecision::At(15_000));
        assert_eq!(pending.decide(settings, 15_000), NotifyDecision::Now);
        pending.clear();
        assert_eq!(pending.decide(settings, 20_000), NotifyDecision::Idle);
    }

    #[test]
    fn settings_change_at_run_time() {
        let coalesce = Coalesce::new(OFF);
        coalesce.set(CoalesceSettings {
            rx_usecs: 8,
            rx_frames: 64,
        });
        assert_eq!(
            coalesce.get(),
            CoalesceSettings {
                rx_usecs: 8,
                rx_frames: 64
            }
        );
    }
}
