//! Packet capture through the real binary: a capture whose file stops taking writes never
//! stops the traffic it records, nor the daemon's shutdown.
//!
//! A capture is always a new regular file (a FIFO or any existing path is refused), so the
//! sink that blocks here is a regular file whose writes sleep: the test holds the file's
//! inode lock from a write of its own whose source page is never filled (userfaultfd), the way
//! a hung NFS server or a stalled disk holds a writer. Every other write to that file then
//! sleeps in the kernel until the test lets go.

mod support;

use std::collections::HashSet;
use std::ffi::c_void;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::thread::{self, JoinHandle};

use pcap_file::pcapng::{Block, PcapNgReader};
use support::daemon::Daemon;
use support::frames::{mac, udp_frame, udp_tag};
use support::guest::{GuestOptions, TestGuest};

/// Frames sent while the capture file is stalled: more bytes than a capture may hold back
/// in memory, so the capture has to drop some.
const FRAMES: u32 = 4096;
const PAYLOAD: usize = 1400;
const BATCH: usize = 32;

// userfaultfd(2) ABI, from linux/userfaultfd.h (x86_64 and aarch64 alike).
const UFFD_API: u64 = 0xaa;
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
const UFFDIO_WAKE: libc::c_ulong = 0x8010_aa02;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

/// A file whose writes sleep until this is dropped: a thread of the test writes into it from
/// a page registered with userfaultfd and never filled, and sleeps in that write holding the
/// file's inode lock. Dropping unmaps the page and wakes the write, which then fails with
/// EFAULT having written nothing.
struct StalledFile {
    uffd: OwnedFd,
    page: *mut c_void,
    page_len: usize,
    writer: Option<JoinHandle<io::Result<usize>>>,
}

impl StalledFile {
    fn stall(path: &Path) -> StalledFile {
        let mut file = OpenOptions::new()
            .append(true)
            .open(path)
            .expect("open the capture file");
        // SAFETY: userfaultfd takes flags only and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) };
        assert!(
            fd >= 0,
            "userfaultfd: {} (the test needs root, or vm.unprivileged_userfaultfd=1)",
            io::Error::last_os_error()
        );
        // SAFETY: fd is a new descriptor that nothing else owns.
        let uffd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: 0,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API reads and writes one uffdio_api, which `api` is and outlives.
        let rc = unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_API, &mut api) };
        assert_eq!(rc, 0, "UFFDIO_API: {}", io::Error::last_os_error());
        // SAFETY: sysconf has no memory effects.
        let page_len = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        // SAFETY: a new anonymous private mapping; no existing memory is touched.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(page, libc::MAP_FAILED, "mmap");
        let mut register = UffdioRegister {
            range: UffdioRange {
                start: page as u64,
                len: page_len as u64,
            },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes one uffdio_register, which `register`
        // is; the range is the mapping made above.
        let rc = unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_REGISTER, &mut register) };
        assert_eq!(rc, 0, "UFFDIO_REGISTER: {}", io::Error::last_os_error());
        let source = page as usize;
        let writer = thread::spawn(move || {
            // SAFETY: the page is mapped readable until StalledFile's drop, which unmaps it
            // only after this write has been woken into failing; it is read, never written.
            let bytes = unsafe { std::slice::from_raw_parts(source as *const u8, page_len) };
            file.write(bytes)
        });
        // The write is inside the kernel, holding the file's lock, once its fault is reported.
        let mut message = [0u8; 32];
        let read = File::from(uffd.try_clone().expect("dup uffd")).read(&mut message);
        assert_eq!(read.ok(), Some(32), "no page fault reported by userfaultfd");
        assert_eq!(
            message[0], UFFD_EVENT_PAGEFAULT,
            "not a page fault: {message:?}"
        );
        StalledFile {
            uffd,
            page,
            page_len,
            writer: Some(writer),
        }
    }
}

impl Drop for StalledFile {
    fn drop(&mut self) {
        // SAFETY: the page was mapped by `stall` and nothing but the stalled write uses it.
        unsafe { libc::munmap(self.page, self.page_len) };
        let mut range = UffdioRange {
            start: self.page as u64,
            len: self.page_len as u64,
        };
        // SAFETY: UFFDIO_WAKE reads one uffdio_range, which `range` is and outlives.
        unsafe { libc::ioctl(self.uffd.as_raw_fd(), UFFDIO_WAKE, &mut range) };
        if let Some(writer) = self.writer.take() {
            let result = writer.join().expect("stalling writer");
            assert!(
                result.is_err(),
                "the stalling write wrote into the capture: {result:?}"
            );
        }
    }
}

/// Sends `frames` tagged frames from `a` to `b` in batches; each batch must arrive whole
/// before the next goes. `b` has RX buffers posted for a batch or more.
fn send_all(a: &mut TestGuest, b: &mut TestGuest, frames: u32) {
    let mut tags = (0..frames).peekable();
    while tags.peek().is_some() {
        let batch: Vec<u32> = tags.by_ref().take(BATCH).collect();
        let sent: Vec<Vec<u8>> = batch
            .iter()
            .map(|&tag| udp_frame(1, mac(2), 2, 4000, 5000, tag, PAYLOAD))
            .collect();
        a.send_batch(0, &sent).expect("a sends");
        let got = b.expect_frames(batch.len()).expect("b receives");
        let arrived: HashSet<u32> = got.iter().filter_map(|f| udp_tag(&f.frame)).collect();
        assert_eq!(arrived, batch.iter().copied().collect(), "frames lost");
        b.post_rx_buffers(0, got.len(), 2048).expect("post");
    }
}

/// The daemon's threads named as a capture's writer.
fn capture_threads(daemon: &Daemon) -> usize {
    daemon
        .thread_names()
        .iter()
        .filter(|name| name.starts_with("capture"))
        .count()
}

/// Waits until the daemon has `n` capture writer threads (a new thread takes its name a
/// moment after it starts).
fn wait_capture_threads(daemon: &Daemon, n: usize) {
    support::wait_for(
        &format!("{n} capture writer thread(s)"),
        support::TIMEOUT,
        || Ok((capture_threads(daemon) == n).then_some(())),
    )
    .expect("capture writer threads");
}

/// Packets in a pcapng file.
fn packets_in(path: &Path) -> u64 {
    let mut reader = PcapNgReader::new(File::open(path).expect("open capture")).expect("pcapng");
    let mut packets = 0;
    while let Some(block) = reader.next_block() {
        if let Block::EnhancedPacket(_) = block.expect("a whole block") {
            packets += 1;
        }
    }
    packets
}

/// The capture file the stalled-file tests write, in their --capture-dir.
const CAPTURE: &str = "stalled.pcapng";

/// A daemon with ports `a` and `b` and captures in `dir`, guests on both (b with RX buffers
/// for a few batches), and a capture of `b` into [`CAPTURE`] whose writer is running.
fn capturing_b(dir: &Path) -> (Daemon, TestGuest, TestGuest) {
    let daemon = Daemon::builder()
        .port("a")
        .port("b")
        .queues(1)
        .arg("--capture-dir")
        .arg(dir.to_str().unwrap())
        .spawn()
        .expect("daemon starts");
    let a = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("a");
    let mut b = TestGuest::connect(&daemon.socket("b"), GuestOptions::linux(2)).expect("b");
    b.post_rx_buffers(0, 4 * BATCH, 2048).expect("post");
    daemon.control(&["capture", "b", CAPTURE]);
    wait_capture_threads(&daemon, 1);
    (daemon, a, b)
}

#[test]
fn a_capture_file_that_stops_taking_writes_never_stops_the_traffic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut daemon, mut a, mut b) = capturing_b(dir.path());
    let file = dir.path().join(CAPTURE);
    let stalled = StalledFile::stall(&file);

    // Every frame arrives while the capture file takes no writes.
    send_all(&mut a, &mut b, FRAMES);
    // What the capture could not hold back is dropped from the capture and counted.
    let dropped = daemon
        .wait_counter("b", "capture_drops_queue_full", 1)
        .expect("capture drops counted");
    assert!(dropped < u64::from(FRAMES), "it kept nothing: {dropped}");
    assert!(
        daemon
            .control(&["stats", "--port", "b"])
            .contains("capture_drops_queue_full"),
        "`stats` shows the counter"
    );

    // Once the file takes writes again, what was held back is written, and stopping the
    // capture ends its writer.
    drop(stalled);
    daemon.control(&["capture", "b"]);
    assert_eq!(
        packets_in(&file) + dropped,
        u64::from(FRAMES),
        "every frame is either in the file or counted as dropped"
    );
    assert_eq!(daemon.counter("b", "capture_drops_write_error").unwrap(), 0);
    // The writer thread ends with the capture.
    wait_capture_threads(&daemon, 0);
    daemon.stop().expect("clean stop");
}

#[test]
fn a_capture_running_at_shutdown_is_written_whole_before_the_daemon_exits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("start.pcapng");
    let daemon = Daemon::builder()
        .port("a")
        .port("b")
        .queues(1)
        .arg(&format!("--pcap=b={}", file.display()))
        .spawn()
        .expect("daemon starts");
    let mut a = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("a");
    let mut b = TestGuest::connect(&daemon.socket("b"), GuestOptions::linux(2)).expect("b");
    b.post_rx_buffers(0, 4 * BATCH, 2048).expect("post");
    wait_capture_threads(&daemon, 1);
    // Fewer bytes than the capture holds back: none may be dropped, whatever the writer did.
    let frames = 256;
    send_all(&mut a, &mut b, frames);
    daemon.stop().expect("clean stop");
    assert_eq!(packets_in(&file), u64::from(frames));
}

#[test]
fn a_capture_file_that_takes_no_writes_at_shutdown_does_not_hold_the_shutdown_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (daemon, mut a, mut b) = capturing_b(dir.path());
    let stalled = StalledFile::stall(&dir.path().join(CAPTURE));
    // Records for the writer, whose write into the file now sleeps.
    send_all(&mut a, &mut b, 256);

    daemon.sigterm().expect("SIGTERM");
    // The shutdown goes on past the capture (after its bounded wait): the sockets are
    // removed and the capture's fate is logged, while its file still takes no writes.
    let sockets = [daemon.socket("a"), daemon.socket("b")];
    support::wait_for(
        "the shutdown past the stalled capture",
        support::TIMEOUT,
        || {
            Ok((sockets.iter().all(|s| !s.exists())
                && daemon.stderr().contains("the file takes no writes"))
            .then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", daemon.stderr()));

    // The writer's write fails or completes once the file takes writes again, and the
    // process, which was only waiting for that thread to leave the kernel, exits cleanly.
    drop(stalled);
    daemon.stop().expect("clean exit");
}
