//! The NIC's scheduler thread of one port: delivers buffered frames when the link, the latency
//! and the guest's ring allow, and sends moderated notifications when they fall due.
//!
//! It sleeps on an eventfd (woken when frames are buffered, the guest posts RX buffers, or a
//! setting changes) with a nanosecond timeout for the next deadline. A sender that buffers a
//! frame wakes it only if it is asleep, so a congested port does not cost a system call per
//! frame.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

use super::Nic;

/// How the data path wakes a sleeping scheduler.
pub struct Waker {
    eventfd: Option<OwnedFd>,
    asleep: AtomicBool,
    /// Bumped on every wake, so the scheduler can tell it missed one while deciding to sleep.
    generation: AtomicU64,
}

impl Default for Waker {
    fn default() -> Self {
        Self::new()
    }
}

impl Waker {
    pub fn new() -> Self {
        // SAFETY: eventfd has no memory-safety preconditions; a negative result is an error.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        // SAFETY: a non-negative fd from eventfd is ours to own.
        let eventfd = (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) });
        Waker {
            eventfd,
            asleep: AtomicBool::new(false),
            generation: AtomicU64::new(0),
        }
    }

    pub fn wake(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if self.asleep.load(Ordering::SeqCst)
            && let Some(fd) = &self.eventfd
        {
            let one: u64 = 1;
            // SAFETY: writing 8 bytes from a u64 to an eventfd we own.
            unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }

    /// Sleeps until woken or until `deadline_ns` (on the NIC clock `now_ns` reads).
    fn sleep(&self, seen_generation: u64, timeout_ns: Option<u64>) {
        self.asleep.store(true, Ordering::SeqCst);
        if self.generation.load(Ordering::SeqCst) == seen_generation
            && let Some(fd) = &self.eventfd
        {
            let mut pollfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let timeout = timeout_ns.map(|ns| libc::timespec {
                tv_sec: (ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (ns % 1_000_000_000) as libc::c_long,
            });
            let timeout_ptr = timeout
                .as_ref()
                .map_or(std::ptr::null(), |t| t as *const libc::timespec);
            // SAFETY: one valid pollfd, a valid or null timespec, no signal mask change.
            unsafe { libc::ppoll(&mut pollfd, 1, timeout_ptr, std::ptr::null()) };
            let mut count: u64 = 0;
            // SAFETY: reading 8 bytes into a u64 from our non-blocking eventfd.
            unsafe { libc::read(fd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
        }
        self.asleep.store(false, Ordering::SeqCst);
    }
}

/// Runs the scheduler of `nic` on its own thread, forever.
pub fn spawn(nic: Arc<Nic>, name: &str) -> io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name(format!("nic-{name}"))
        .spawn(move || {
            // Deadlines are microseconds apart; the default 50 us timer slack would blur them.
            // SAFETY: prctl(PR_SET_TIMERSLACK) only affects this thread.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
            loop {
                let generation = nic.waker.generation.load(Ordering::SeqCst);
                let now = nic.now_ns();
                let release_at = nic.release_held(now);
                let drain_at = nic.drain(now);
                let notify_at = nic.flush_notifications(nic.now_ns());
                let deadline = [release_at, drain_at, notify_at]
                    .into_iter()
                    .flatten()
                    .min();
                let timeout = deadline.map(|at| at.saturating_sub(nic.now_ns()));
                if timeout == Some(0) {
                    continue;
                }
                nic.waker.sleep(generation, timeout);
            }
        })
}
