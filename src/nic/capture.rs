//! Capture of the frames a NIC delivers to its guest, to a pcapng file that tcpdump and
//! Wireshark read. Each RX queue is its own interface in the file (named `PORT:rx-N`), and
//! every packet carries a comment with its queue and class, so a capture shows what the
//! classifier decided.
//!
//! The data path never writes the file: it copies a delivered frame into a bounded buffer,
//! and a writer thread of the capture's own turns what waits there into pcapng blocks. A file
//! that takes writes slowly or not at all (a stalled disk, a hung network filesystem) costs
//! the capture the frames that do not fit (`capture_drops_queue_full`), never the traffic.
//!
//! The buffer is two vectors allocated once: senders append records to one while the writer
//! writes the other, and they swap when the writer is done. A frame costs a sender a lock
//! and a copy, no allocation; the lock is held for the copy only, never across a write.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::warn;
use pcap_file::DataLink;
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};

use super::queue::class_index;
use crate::classify::Class;
use crate::stats::{self, PortCounters};

/// Bytes of records a capture holds back while its file is being written, in each of its two
/// buffers: enough for a burst of 64 KiB frames, and a bound on what a capture whose file
/// takes no writes costs in memory.
pub const BUFFER_BYTES: usize = 2 << 20;

/// How long stopping a capture waits for its writer to write what is left.
const STOP_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot write capture file {path}: {source}")]
    Write {
        path: PathBuf,
        source: pcap_file::PcapError,
    },
    #[error("cannot start the writer of capture file {path}: {source}")]
    Spawn { path: PathBuf, source: io::Error },
}

/// One delivered frame waiting for the writer, ahead of its bytes in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RecordHeader {
    timestamp_ns: u64,
    len: u32,
    queue: u16,
    class: Class,
}

impl RecordHeader {
    const LEN: usize = 16;

    fn to_bytes(self) -> [u8; Self::LEN] {
        let mut bytes = [0u8; Self::LEN];
        bytes[..8].copy_from_slice(&self.timestamp_ns.to_le_bytes());
        bytes[8..12].copy_from_slice(&self.len.to_le_bytes());
        bytes[12..14].copy_from_slice(&self.queue.to_le_bytes());
        bytes[14] = class_index(self.class) as u8;
        bytes
    }

    /// The header at the start of `bytes` (written by `to_bytes`) and the rest after it.
    fn split(bytes: &[u8]) -> Option<(RecordHeader, &[u8])> {
        let (header, rest) = bytes.split_first_chunk::<{ Self::LEN }>()?;
        let header = RecordHeader {
            timestamp_ns: u64::from_le_bytes(header[..8].try_into().ok()?),
            len: u32::from_le_bytes(header[8..12].try_into().ok()?),
            queue: u16::from_le_bytes(header[12..14].try_into().ok()?),
            class: if header[14] == 0 {
                Class::High
            } else {
                Class::Normal
            },
        };
        Some((header, rest))
    }
}

/// What senders and the writer share, under one lock.
struct Pending {
    /// Records (a header, then the frame) back to back, never longer than BUFFER_BYTES.
    records: Vec<u8>,
    /// The writer sleeps until a sender wakes it: senders signal only then, so a busy
    /// writer costs them no system call.
    writer_idle: bool,
    /// No more records: the writer writes what is left and ends.
    stopped: bool,
    /// The writer has ended.
    finished: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the writer (records or stop) and whoever waits for it to finish.
    wake: Condvar,
    counters: Arc<PortCounters>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub struct Capture {
    path: PathBuf,
    /// Only this queue, or all.
    queue: Option<usize>,
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Capture {
    /// Starts a capture in `file`, newly created at `path` by the caller (who decides where
    /// captures may go), describes one interface per queue and starts its writer thread.
    /// Its drops are counted in `counters` (the port's).
    pub fn new(
        file: File,
        path: &Path,
        port: &str,
        queues: usize,
        queue: Option<usize>,
        counters: Arc<PortCounters>,
    ) -> Result<Self, CaptureError> {
        let write_error = |source| CaptureError::Write {
            path: path.to_path_buf(),
            source,
        };
        let mut writer = PcapNgWriter::new(BufWriter::new(file)).map_err(write_error)?;
        for index in 0..queues {
            let mut interface = InterfaceDescriptionBlock::new(DataLink::ETHERNET, 0);
            interface
                .options
                .push(InterfaceDescriptionOption::IfName(Cow::Owned(format!(
                    "{port}:rx-{index}"
                ))));
            interface
                .options
                .push(InterfaceDescriptionOption::IfTsResol(9));
            writer.write_pcapng_block(interface).map_err(write_error)?;
        }
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                records: Vec::with_capacity(BUFFER_BYTES),
                writer_idle: false,
                stopped: false,
                finished: false,
            }),
            wake: Condvar::new(),
            counters,
        });
        let writer_shared = shared.clone();
        let handle = thread::Builder::new()
            .name(format!("capture {port}"))
            .spawn(move || write_records(&writer_shared, writer))
            .map_err(|source| CaptureError::Spawn {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Capture {
            path: path.to_path_buf(),
            queue,
            shared,
            writer: Mutex::new(Some(handle)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records a delivered frame (if it is on the captured queue), or counts it dropped if
    /// the buffer is full.
    pub fn record(&self, queue: usize, class: Class, frame: &[u8]) {
        if self.queue.is_some_and(|only| only != queue) {
            return;
        }
        let timestamp_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        let header = RecordHeader {
            timestamp_ns,
            len: frame.len() as u32,
            queue: queue as u16,
            class,
        };
        let mut pending = self.shared.lock();
        if pending.stopped {
            return;
        }
        if pending.records.len() + RecordHeader::LEN + frame.len() > BUFFER_BYTES {
            drop(pending);
            stats::inc(&self.shared.counters.capture_drops_queue_full);
            return;
        }
        pending.records.extend_from_slice(&header.to_bytes());
        pending.records.extend_from_slice(frame);
        let wake = std::mem::take(&mut pending.writer_idle);
        drop(pending);
        if wake {
            self.shared.wake.notify_all();
        }
    }

    /// Stops taking records and waits (a while) for the writer to write what is left and
    /// end. Returns whether it ended; if its file still takes no writes, it ends when the
    /// file does.
    pub fn stop(&self) -> bool {
        let pending = self.shared.lock();
        let mut pending = self.stop_with(pending);
        let deadline = std::time::Instant::now() + STOP_WAIT;
        while !pending.finished {
            let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) else {
                warn!(
                    "capture {}: the file takes no writes; its writer ends when it does",
                    self.path.display()
                );
                return false;
            };
            pending = self
                .shared
                .wake
                .wait_timeout(pending, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        drop(pending);
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
        true
    }

    fn stop_with<'a>(&self, mut pending: MutexGuard<'a, Pending>) -> MutexGuard<'a, Pending> {
        pending.stopped = true;
        self.shared.wake.notify_all();
        pending
    }
}

impl Drop for Capture {
    /// Without waiting: the last reference may be dropped by a sender (the data path). The
    /// writer then writes what is left on its own.
    fn drop(&mut self) {
        let pending = self.shared.lock();
        drop(self.stop_with(pending));
    }
}

/// The writer thread: writes batches of records until the capture stops, then what is left.
fn write_records(shared: &Shared, mut writer: PcapNgWriter<BufWriter<File>>) {
    let mut batch: Vec<u8> = Vec::with_capacity(BUFFER_BYTES);
    let mut comment = String::new();
    loop {
        let stopped = {
            let mut pending = shared.lock();
            while pending.records.is_empty() && !pending.stopped {
                pending.writer_idle = true;
                pending = shared
                    .wake
                    .wait(pending)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            pending.writer_idle = false;
            std::mem::swap(&mut pending.records, &mut batch);
            pending.stopped
        };
        let mut records = 0u64;
        let mut written = Ok(());
        let mut rest = batch.as_slice();
        while let Some((header, after)) = RecordHeader::split(rest) {
            let (frame, after) = after.split_at(header.len as usize);
            rest = after;
            records += 1;
            if written.is_err() {
                continue;
            }
            comment.clear();
            let _ = write!(comment, "queue={} class={}", header.queue, header.class);
            let block = EnhancedPacketBlock {
                interface_id: u32::from(header.queue),
                timestamp: Duration::from_nanos(header.timestamp_ns),
                original_len: header.len,
                data: Cow::Borrowed(frame),
                options: vec![EnhancedPacketOption::Comment(Cow::Borrowed(&comment))],
            };
            written = writer.write_pcapng_block(block).map(drop);
        }
        // Flushed after every batch, so the file is readable while the capture runs.
        if written.is_err() || writer.get_mut().flush().is_err() {
            // A full disk costs the capture this batch, not the data path.
            stats::add(&shared.counters.capture_drops_write_error, records);
        }
        batch.clear();
        if stopped {
            break;
        }
    }
    let mut pending = shared.lock();
    pending.finished = true;
    shared.wake.notify_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_header_reads_back_as_written() {
        for class in [Class::High, Class::Normal] {
            let header = RecordHeader {
                timestamp_ns: 1_700_000_000_123_456_789,
                len: 65_550,
                queue: 7,
                class,
            };
            let mut bytes = header.to_bytes().to_vec();
            bytes.extend_from_slice(b"frame");
            assert_eq!(
                RecordHeader::split(&bytes),
                Some((header, b"frame".as_slice()))
            );
        }
        assert_eq!(RecordHeader::split(&[0u8; RecordHeader::LEN - 1]), None);
    }

    fn capture_in(dir: &Path, counters: &Arc<PortCounters>) -> (Capture, PathBuf) {
        let path = dir.join("c.pcapng");
        let file = File::create(&path).unwrap();
        let capture = Capture::new(file, &path, "p", 2, None, counters.clone()).unwrap();
        (capture, path)
    }

    /// Packets in a pcapng stream, by interface and first byte.
    fn packets(bytes: &[u8]) -> Vec<(u32, u8)> {
        let mut reader = pcap_file::pcapng::PcapNgReader::new(bytes).unwrap();
        let mut packets = Vec::new();
        while let Some(block) = reader.next_block() {
            if let pcap_file::pcapng::Block::EnhancedPacket(packet) = block.unwrap() {
                packets.push((packet.interface_id, packet.data[0]));
            }
        }
        packets
    }

    fn dropped(counters: &PortCounters) -> u64 {
        counters
            .capture_drops_queue_full
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    #[test]
    fn a_sink_nobody_reads_costs_the_capture_frames_never_the_sender() {
        let (read_end, write_end) = std::io::pipe().unwrap();
        let counters = Arc::new(PortCounters::default());
        let file = File::from(std::os::fd::OwnedFd::from(write_end));
        let capture =
            Capture::new(file, Path::new("pipe"), "p", 1, None, counters.clone()).unwrap();
        // Nobody reads the pipe: the writer sleeps once it is full, and these return anyway.
        let frames = 200u64;
        for n in 0..frames {
            capture.record(0, Class::Normal, &[n as u8; 60_000]);
        }
        let dropped = dropped(&counters);
        assert!(
            dropped >= frames - 2 * (BUFFER_BYTES as u64 / 60_000) - 2,
            "{dropped}"
        );
        // A reader comes: what was held back is written, the rest was counted.
        let reader = thread::spawn(move || {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut &read_end, &mut bytes).unwrap();
            bytes
        });
        assert!(capture.stop());
        drop(capture);
        let written = packets(&reader.join().unwrap()).len() as u64;
        assert_eq!(written + dropped, frames);
    }

    #[test]
    fn stopping_writes_every_record_and_ends_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let counters = Arc::new(PortCounters::default());
        let (capture, path) = capture_in(dir.path(), &counters);
        for n in 0..100u8 {
            capture.record(usize::from(n % 2), Class::High, &[n; 60]);
        }
        assert!(capture.stop());
        assert!(capture.writer.lock().unwrap().is_none());
        capture.record(0, Class::High, &[0; 60]);
        let expected: Vec<(u32, u8)> = (0..100u8).map(|n| (u32::from(n % 2), n)).collect();
        assert_eq!(packets(&std::fs::read(path).unwrap()), expected);
        assert_eq!(dropped(&counters), 0);
    }
}
