//! Socket activation: the test plays systemd. It binds the listening sockets itself, starts
//! the real binary with them as descriptors 3, 4, ... and LISTEN_FDS / LISTEN_FDNAMES /
//! LISTEN_PID in its environment, then vhost-user frontends, the control client and a
//! scraper connect through those sockets.

mod support;

use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use support::daemon::{BINARY, stats_counter};
use support::guest::{GuestOptions, TestGuest};
use support::scrape::{http_get, sample};
use support::traffic::assert_traffic_both_ways;
use support::{TIMEOUT, wait_for};

/// Starts prism-vnic with `sockets` as descriptors 3, 4, ... named `names`, as systemd's
/// service manager does: LISTEN_PID is the pid of the process that execs prism-vnic (a
/// shell that sets it to its own pid, `$$`, and execs), so it is prism-vnic's own.
fn spawn_activated(
    sockets: &[RawFd],
    names: &str,
    args: &[String],
    stderr: &Path,
) -> std::io::Result<Child> {
    let fds: Vec<RawFd> = sockets.to_vec();
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg("LISTEN_PID=$$ exec \"$@\"")
        .arg("sh")
        .arg(BINARY)
        .args(args)
        .env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDNAMES", names)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(stderr)?);
    // SAFETY: between fork and exec the closure calls only dup2 and fcntl, which are
    // async-signal-safe, on descriptors this process owns. Each socket is first copied
    // above every target number, so that placing one at 3 + i cannot overwrite another
    // still to be placed.
    unsafe {
        command.pre_exec(move || {
            let high: Vec<RawFd> = fds
                .iter()
                .map(|&fd| libc::fcntl(fd, libc::F_DUPFD, 100))
                .collect();
            for (index, &fd) in high.iter().enumerate() {
                let target = 3 + index as RawFd;
                if fd < 0 || libc::dup2(fd, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // dup2 leaves the new descriptor inheritable across exec, as systemd does.
                libc::close(fd);
            }
            Ok(())
        });
    }
    command.spawn()
}

struct Activated {
    child: Child,
    dir: tempfile::TempDir,
    stderr: PathBuf,
}

impl Activated {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn stats(&self) -> serde_json::Value {
        let output = Command::new(BINARY)
            .args(["stats", "--json", "--control"])
            .arg(self.path("control.sock"))
            .output()
            .expect("prism-vnic stats");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("stats JSON")
    }
}

impl Drop for Activated {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- prism-vnic stderr ----\n{}", self.stderr());
        }
    }
}

#[test]
fn ports_control_and_metrics_work_through_inherited_sockets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vm1 = UnixListener::bind(dir.path().join("vm1.sock")).expect("bind vm1");
    let vm2 = UnixListener::bind(dir.path().join("vm2.sock")).expect("bind vm2");
    let control = UnixListener::bind(dir.path().join("control.sock")).expect("bind control");
    let metrics = TcpListener::bind("127.0.0.1:0").expect("bind metrics");
    let metrics_addr = metrics.local_addr().expect("metrics address");
    let root = dir.path().to_path_buf();
    let inode = |name: &str| {
        std::fs::metadata(root.join(name))
            .expect("socket file")
            .ino()
    };
    let inodes = [inode("vm1.sock"), inode("vm2.sock"), inode("control.sock")];

    let path = |name: &str| dir.path().join(name).display().to_string();
    // The order of the descriptors is not the order of the ports: names decide.
    let args = vec![
        "--port".to_string(),
        format!("vm1={}", path("vm1.sock")),
        "--port".to_string(),
        format!("vm2={}", path("vm2.sock")),
        "--control".to_string(),
        path("control.sock"),
        "--queues".to_string(),
        "1".to_string(),
    ];
    let stderr = dir.path().join("daemon.stderr");
    let fds = [
        control.as_raw_fd(),
        vm2.as_raw_fd(),
        metrics.as_raw_fd(),
        vm1.as_raw_fd(),
    ];
    let child =
        spawn_activated(&fds, "control:vm2:metrics:vm1", &args, &stderr).expect("spawn prism-vnic");
    // Only prism-vnic listens on them from now on, as after systemd hands them over.
    drop((vm1, vm2, control, metrics));
    let mut daemon = Activated { child, dir, stderr };
    wait_for("prism-vnic to start", TIMEOUT, || {
        if let Some(status) = daemon.child.try_wait().expect("wait") {
            panic!("prism-vnic exited with {status}:\n{}", daemon.stderr());
        }
        Ok(daemon.stderr().contains("prism-vnic running").then_some(()))
    })
    .expect("running");
    let log = daemon.stderr();
    assert!(log.contains("vm1: inherited socket"), "{log}");
    assert!(log.contains("vm2: inherited socket"), "{log}");

    let mut a = TestGuest::connect(&daemon.path("vm1.sock"), GuestOptions::linux(1)).expect("a");
    let mut b = TestGuest::connect(&daemon.path("vm2.sock"), GuestOptions::linux(2)).expect("b");
    assert_traffic_both_ways(&mut a, &mut b, 0, 100);
    let stats = daemon.stats();
    assert_eq!(stats_counter(&stats, "vm1", None, "rx_packets").unwrap(), 1);
    assert_eq!(stats_counter(&stats, "vm2", None, "rx_packets").unwrap(), 1);
    let scrape = http_get(metrics_addr, "/metrics", None).expect("scrape");
    assert_eq!(
        sample(
            &scrape.body,
            "prism_vnic_rx_packets_total",
            r#"port="vm2",queue="0""#
        ),
        Some(1.0)
    );

    // prism-vnic served the very sockets it was given (it did not bind new ones in their
    // place), and leaves them to their owner when it stops.
    // SAFETY: kill(2) on our own child, not yet reaped.
    let killed = unsafe { libc::kill(daemon.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(killed, 0);
    let status = daemon.child.wait().expect("wait");
    assert!(status.success(), "{status}: {}", daemon.stderr());
    let after = [inode("vm1.sock"), inode("vm2.sock"), inode("control.sock")];
    assert_eq!(after, inodes);
}

#[test]
fn inherited_sockets_that_match_nothing_or_are_not_listening_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("vm1.sock");
    let args = vec![
        "--port".to_string(),
        format!("vm1={}", sock.display()),
        "--control".to_string(),
        dir.path().join("control.sock").display().to_string(),
    ];
    let run = |fds: &[RawFd], names: &str| {
        let stderr = dir.path().join("stderr");
        let mut child = spawn_activated(fds, names, &args, &stderr).expect("spawn");
        let status = wait_for("prism-vnic to exit", TIMEOUT, || {
            Ok(child.try_wait().expect("wait"))
        })
        .unwrap_or_else(|e| {
            let _ = child.kill();
            panic!("{e}");
        });
        assert!(!status.success());
        std::fs::read_to_string(stderr).unwrap_or_default()
    };

    let stray = UnixListener::bind(dir.path().join("stray.sock")).expect("bind");
    let error = run(&[stray.as_raw_fd()], "vm9");
    assert!(
        error.contains("\"vm9\"") && error.contains("match no port"),
        "{error}"
    );

    // Named vm1 but bound elsewhere: the unit and the command line disagree.
    let error = run(&[stray.as_raw_fd()], "vm1");
    assert!(
        error.contains("is bound to") && error.contains("stray.sock"),
        "{error}"
    );

    // A socket that is not listening.
    let (left, _right) = std::os::unix::net::UnixStream::pair().expect("pair");
    let error = run(&[left.as_raw_fd()], "vm1");
    assert!(
        error.contains("not a listening Unix stream socket"),
        "{error}"
    );

    // A TCP listener where a Unix one belongs.
    let tcp = TcpListener::bind("127.0.0.1:0").expect("bind");
    let error = run(&[tcp.as_raw_fd()], "control");
    assert!(
        error.contains("not a listening Unix stream socket"),
        "{error}"
    );
    assert!(!sock.exists(), "nothing was bound after the refusal");
}
