//! Test harness for protocol-level integration tests of prism-vnic.
//!
//! The tests drive the real daemon binary as a vhost-user frontend, without a VM:
//! - [`daemon::Daemon`] spawns `prism-vnic`, reads its counters and stops it;
//! - [`guest::TestGuest`] is a fake virtio-net driver: guest memory on a memfd, split
//!   virtqueues laid out by the harness (so tests can write any descriptor, including
//!   malicious ones), and a vhost-user frontend speaking the wire protocol in the order
//!   QEMU 10 does for a multi-queue virtio-net device;
//! - [`frames`] builds and checks Ethernet/IPv4/TCP/UDP frames and virtio-net headers.
//!
//! Every `tests/*.rs` file includes this module with `mod support;` and uses only part of
//! it, hence the `dead_code` allowance: an item unused by one test binary is used by another.
#![allow(dead_code)]

pub mod daemon;
pub mod frames;
pub mod guest;
pub mod guest_memory;
pub mod scrape;
pub mod traffic;
pub mod vhost_user;
pub mod virtqueue;

use std::path::PathBuf;
use std::time::Duration;

/// How long any single condition in a test may take before it is declared failed. Generous on
/// purpose: the box is a slow, shared 2-core machine; tests wait on conditions, so a passing
/// test never waits this long.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Everything that can go wrong while driving the daemon. Tests `expect()` on these: a test
/// failing on a harness error prints the context carried here.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("spawning {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("daemon exited early with {status}; stderr:\n{stderr}")]
    DaemonExited {
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout { what: String, timeout: Duration },
    #[error("running `{command}`: {detail}")]
    Command { command: String, detail: String },
    #[error("stats JSON: {0}")]
    Stats(String),
    #[error("vhost-user {request}: {source}")]
    Socket {
        request: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("vhost-user {request}: backend closed the connection")]
    ConnectionClosed { request: &'static str },
    #[error("vhost-user {request}: backend answered with error code {code}")]
    Nack { request: &'static str, code: u64 },
    #[error("vhost-user {request}: malformed reply: {detail}")]
    BadReply {
        request: &'static str,
        detail: String,
    },
    #[error("guest memory: {0}")]
    Memory(String),
    #[error("virtqueue {vring}: {detail}")]
    Queue { vring: u16, detail: String },
    #[error("frame: {0}")]
    Frame(String),
}

impl HarnessError {
    /// True when the backend refused a vhost-user request, either by a negative REPLY_ACK or by
    /// closing the connection (what the rust-vmm crates do on any handler error).
    pub fn is_backend_refusal(&self) -> bool {
        matches!(
            self,
            HarnessError::Nack { .. } | HarnessError::ConnectionClosed { .. }
        ) || matches!(self, HarnessError::Socket { source, .. }
            if matches!(source.kind(),
                std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::UnexpectedEof))
    }
}

pub type Result<T> = std::result::Result<T, HarnessError>;

/// Polls `condition` until it returns `Some`, or fails after `timeout`. The poll interval
/// grows from 1 ms to 50 ms so fast conditions finish fast and slow ones cost little CPU.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut condition: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = std::time::Instant::now() + timeout;
    let mut interval = Duration::from_millis(1);
    loop {
        if let Some(value) = condition()? {
            return Ok(value);
        }
        if std::time::Instant::now() >= deadline {
            return Err(HarnessError::Timeout {
                what: what.to_string(),
                timeout,
            });
        }
        std::thread::sleep(interval);
        interval = (interval * 2).min(Duration::from_millis(50));
    }
}
