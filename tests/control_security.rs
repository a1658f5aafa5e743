//! What a hostile local user can do to a running prism-vnic, driven against the real binary
//! started under umask 000 (the loosest a service manager may leave it): the files it creates
//! are no looser than configured, it replaces nothing that is not its own stale socket,
//! captures go only to new files in the capture directory, and the control socket answers
//! only root, the daemon's user and the granted group, with bounded requests, time and
//! clients.

mod support;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use support::daemon::BINARY;
use support::{HarnessError, TIMEOUT, wait_for};

/// The user and group a hostile local user runs as.
const NOBODY: u32 = 65534;

/// A prism-vnic started under umask 000, killed when dropped.
struct Instance {
    child: Child,
    stderr: PathBuf,
}

impl Instance {
    /// Starts the daemon with `args` under umask 000; its stderr goes to `log`.
    fn start(args: &[&str], log: &Path) -> Instance {
        let stderr = fs::File::create(log).expect("stderr file");
        let child = Command::new("sh")
            .arg("-c")
            .arg("umask 000; exec \"$0\" \"$@\"")
            .arg(BINARY)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn prism-vnic");
        Instance {
            child,
            stderr: log.to_path_buf(),
        }
    }

    /// Starts the daemon and waits until every path in `ready` exists.
    fn running(args: &[&str], log: &Path, ready: &[&Path]) -> Instance {
        let mut instance = Instance::start(args, log);
        wait_for("the daemon's sockets", TIMEOUT, || {
            if let Some(status) = instance.child.try_wait().expect("wait") {
                panic!("prism-vnic exited with {status}: {}", instance.log());
            }
            Ok(ready.iter().all(|p| p.exists()).then_some(()))
        })
        .expect("daemon starts");
        instance
    }

    /// Waits for the daemon to exit on its own and returns its log; it must fail.
    fn refused(args: &[&str], log: &Path) -> String {
        let mut instance = Instance::start(args, log);
        let status = wait_for("the daemon to refuse to start", TIMEOUT, || {
            Ok(instance.child.try_wait().expect("wait"))
        })
        .expect("the daemon exits instead of running");
        assert!(!status.success(), "exit status {status}");
        instance.log()
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).expect("stat").mode() & 0o7777
}

/// Runs a prism-vnic subcommand, as `user` (uid, gid) if given.
fn client(binary: &Path, args: &[&str], control: &Path, user: Option<(u32, u32)>) -> Output {
    let mut command = Command::new(binary);
    command.args(args).arg("--control").arg(control);
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
    command.output().expect("run prism-vnic client")
}

fn assert_ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr_of(output: &Output) -> String {
    assert!(!output.status.success(), "the command was expected to fail");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn sockets_are_0600_and_a_new_socket_directory_0750_under_umask_000() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run").join("prism");
    let (port, control) = (dir.join("a.sock"), dir.join("control.sock"));
    let _daemon = Instance::running(
        &[
            "--port",
            &format!("a={}", port.display()),
            "--control",
            control.to_str().unwrap(),
        ],
        &tmp.path().join("log"),
        &[&port, &control],
    );
    assert_eq!(mode(&dir), 0o750, "socket directory");
    assert_eq!(mode(&port), 0o600, "vhost-user socket");
    assert_eq!(mode(&control), 0o600, "control socket");
    assert_eq!(mode(&dir.join("captures")), 0o750, "capture directory");
}

#[test]
fn vhost_user_sockets_take_their_mode_and_group_from_the_options_and_nothing_else_loosens() {
    let tmp = tempfile::tempdir().unwrap();
    let (port, control) = (tmp.path().join("a.sock"), tmp.path().join("control.sock"));
    let _daemon = Instance::running(
        &[
            "--port",
            &format!("a={}", port.display()),
            "--control",
            control.to_str().unwrap(),
            "--socket-mode",
            "0660",
            "--socket-group",
            "4242",
        ],
        &tmp.path().join("log"),
        &[&port, &control],
    );
    assert_eq!(mode(&port), 0o660);
    assert_eq!(fs::metadata(&port).unwrap().gid(), 4242);
    assert_eq!(mode(&control), 0o600, "the control socket is not loosened");
    assert_ne!(fs::metadata(&control).unwrap().gid(), 4242);
}

#[test]
fn a_socket_directory_open_to_others_or_owned_by_another_user_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let open = tmp.path().join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let args = |dir: &Path| {
        vec![
            "--port".to_string(),
            format!("a={}", dir.join("a.sock").display()),
            "--control".to_string(),
            dir.join("control.sock").display().to_string(),
        ]
    };
    let log = tmp.path().join("log");
    let open_args = args(&open);
    let open_args: Vec<&str> = open_args.iter().map(String::as_str).collect();
    let error = Instance::refused(&open_args, &log);
    assert!(error.contains("writable by others"), "{error}");
    assert!(!open.join("a.sock").exists());

    // Sticky, like /tmp: others cannot remove or rename what is ours.
    fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
    let _daemon = Instance::running(
        &open_args,
        &log,
        &[&open.join("a.sock"), &open.join("control.sock")],
    );

    let foreign = tmp.path().join("foreign");
    fs::create_dir(&foreign).unwrap();
    std::os::unix::fs::chown(&foreign, Some(NOBODY), Some(NOBODY)).unwrap();
    let foreign_args = args(&foreign);
    let foreign_args: Vec<&str> = foreign_args.iter().map(String::as_str).collect();
    let error = Instance::refused(&foreign_args, &tmp.path().join("log2"));
    assert!(error.contains("belongs to uid 65534"), "{error}");
}

#[test]
fn a_path_that_is_not_a_socket_is_never_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let victim = tmp.path().join("victim");
    fs::write(&victim, b"precious").unwrap();
    let control = tmp.path().join("control.sock");
    // The port's socket path is a file.
    let error = Instance::refused(
        &[
            "--port",
            &format!("a={}", victim.display()),
            "--control",
            control.to_str().unwrap(),
        ],
        &tmp.path().join("log"),
    );
    assert!(error.contains("not a socket"), "{error}");
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    // The control socket's path is a link to a file.
    let link = tmp.path().join("link.sock");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let error = Instance::refused(
        &["--sink", "s", "--control", link.to_str().unwrap()],
        &tmp.path().join("log2"),
    );
    assert!(error.contains("not a socket"), "{error}");
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
}

#[test]
fn the_live_socket_of_another_instance_is_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let port = tmp.path().join("a.sock");
    let first_control = tmp.path().join("first.sock");
    let _first = Instance::running(
        &[
            "--port",
            &format!("a={}", port.display()),
            "--control",
            first_control.to_str().unwrap(),
        ],
        &tmp.path().join("log"),
        &[&port, &first_control],
    );
    let error = Instance::refused(
        &[
            "--port",
            &format!("b={}", port.display()),
            "--control",
            tmp.path().join("second.sock").to_str().unwrap(),
        ],
        &tmp.path().join("log2"),
    );
    assert!(error.contains("live socket"), "{error}");
    UnixStream::connect(&port).expect("the first instance's socket still accepts");
    // A stale socket of our own (its listener gone) is replaced.
    let stale = tmp.path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let third_control = tmp.path().join("third.sock");
    let _third = Instance::running(
        &[
            "--port",
            &format!("c={}", stale.display()),
            "--control",
            third_control.to_str().unwrap(),
        ],
        &tmp.path().join("log3"),
        &[&third_control],
    );
    wait_for("the stale socket to be replaced", TIMEOUT, || {
        Ok(UnixStream::connect(&stale).ok().map(|_| ()))
    })
    .expect("the stale socket is replaced by a live one");
}

/// A daemon with one sink port `s` whose NIC captures, and its capture directory.
fn capturing_daemon(tmp: &Path) -> (Instance, PathBuf, PathBuf) {
    let control = tmp.join("control.sock");
    let captures = tmp.join("captures");
    let daemon = Instance::running(
        &[
            "--sink",
            "s",
            "--control",
            control.to_str().unwrap(),
            "--capture-dir",
            captures.to_str().unwrap(),
        ],
        &tmp.join("log"),
        &[&control],
    );
    (daemon, control, captures)
}

#[test]
fn captures_go_only_to_new_regular_files_in_the_capture_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let (_daemon, control, captures) = capturing_daemon(tmp.path());
    let binary = Path::new(BINARY);
    let victim = tmp.path().join("victim");
    fs::write(&victim, b"precious").unwrap();

    // Outside the capture directory, by absolute path or by climbing out.
    for outside in [victim.to_str().unwrap(), "../victim", "sub/x.pcapng"] {
        let error = stderr_of(&client(binary, &["capture", "s", outside], &control, None));
        assert!(error.contains("only in the capture directory"), "{error}");
    }
    // A link planted in the capture directory.
    std::os::unix::fs::symlink(&victim, captures.join("link.pcapng")).unwrap();
    let error = stderr_of(&client(
        binary,
        &["capture", "s", "link.pcapng"],
        &control,
        None,
    ));
    assert!(error.contains("never replaces"), "{error}");
    // A file that exists.
    fs::write(captures.join("old.pcapng"), b"old").unwrap();
    let error = stderr_of(&client(
        binary,
        &["capture", "s", "old.pcapng"],
        &control,
        None,
    ));
    assert!(error.contains("never replaces"), "{error}");
    assert_eq!(fs::read(captures.join("old.pcapng")).unwrap(), b"old");
    assert_eq!(fs::read(&victim).unwrap(), b"precious");

    // A new name is created there, as a regular file only the daemon's user reads.
    assert_ok(&client(
        binary,
        &["capture", "s", "new.pcapng"],
        &control,
        None,
    ));
    assert_ok(&client(binary, &["capture", "s"], &control, None));
    let new = captures.join("new.pcapng");
    assert!(fs::symlink_metadata(&new).unwrap().file_type().is_file());
    assert_eq!(mode(&new), 0o600);
    // The same absolute path the daemon would use is accepted too.
    let again = captures.join("again.pcapng");
    assert_ok(&client(
        binary,
        &["capture", "s", again.to_str().unwrap()],
        &control,
        None,
    ));
}

/// Makes a FIFO at `path`.
fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(status.success());
}

#[test]
fn a_fifo_never_becomes_a_capture_sink_that_blocks_the_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let (_daemon, control, captures) = capturing_daemon(tmp.path());
    let fifo = captures.join("fifo.pcapng");
    mkfifo(&fifo);
    // Opening a FIFO without a reader would block the control thread; writing one that
    // nobody reads would block the data path. It is refused at once instead.
    let error = stderr_of(&client(
        Path::new(BINARY),
        &["capture", "s", "fifo.pcapng"],
        &control,
        None,
    ));
    assert!(error.contains("never replaces"), "{error}");
    assert_ok(&client(Path::new(BINARY), &["stats"], &control, None));

    // The same FIFO given at start fails the start instead of hanging it.
    let fifo = tmp.path().join("start.fifo");
    mkfifo(&fifo);
    let error = Instance::refused(
        &[
            "--sink",
            "s",
            "--control",
            tmp.path().join("other.sock").to_str().unwrap(),
            "--pcap",
            &format!("s={}", fifo.display()),
        ],
        &tmp.path().join("log2"),
    );
    assert!(error.contains("never replaces"), "{error}");
}

/// A copy of the binary another user may run (the build tree may not be reachable to them),
/// in a directory others may enter.
fn binary_for_others(tmp: &Path) -> PathBuf {
    fs::set_permissions(tmp, fs::Permissions::from_mode(0o755)).unwrap();
    let copy = tmp.join("prism-vnic");
    fs::copy(BINARY, &copy).unwrap();
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

#[test]
fn another_user_is_refused_even_on_a_loosened_control_socket_unless_in_the_control_group() {
    let tmp = tempfile::tempdir().unwrap();
    let binary = binary_for_others(tmp.path());
    let control = tmp.path().join("control.sock");
    let _daemon = Instance::running(
        &[
            "--sink",
            "s",
            "--control",
            control.to_str().unwrap(),
            "--control-group",
            "4242",
        ],
        &tmp.path().join("log"),
        &[&control],
    );
    assert_eq!(mode(&control), 0o660);
    assert_eq!(fs::metadata(&control).unwrap().gid(), 4242);
    // Loosened by hand: the file system no longer keeps anyone out.
    fs::set_permissions(&control, fs::Permissions::from_mode(0o666)).unwrap();
    let error = stderr_of(&client(
        &binary,
        &["stats"],
        &control,
        Some((NOBODY, NOBODY)),
    ));
    assert!(error.contains("may not use this control socket"), "{error}");
    let error = stderr_of(&client(
        &binary,
        &["capture", "s", "x.pcapng"],
        &control,
        Some((NOBODY, NOBODY)),
    ));
    assert!(error.contains("may not use"), "{error}");
    // A member of the control group is let in.
    let stats = assert_ok(&client(&binary, &["stats"], &control, Some((NOBODY, 4242))));
    assert!(stats.contains("port s"), "{stats}");
    // Root is.
    assert_ok(&client(&binary, &["stats"], &control, None));
}

/// A daemon with one sink port and the given control options; its control socket.
fn control_daemon(tmp: &Path, extra: &[&str]) -> (Instance, PathBuf) {
    let control = tmp.join("control.sock");
    let mut args = vec!["--sink", "s", "--control", control.to_str().unwrap()];
    args.extend_from_slice(extra);
    let daemon = Instance::running(&args, &tmp.join("log"), &[&control]);
    (daemon, control)
}

/// Reads one answer line (or nothing, at end of stream) with a generous deadline.
fn read_answer(stream: &UnixStream) -> String {
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .expect("an answer or the end of the stream before the deadline");
    line
}

/// Asserts the daemon closes the connection (a reset, when it left bytes unread, counts).
fn assert_closed(stream: &mut UnixStream) {
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the daemon does not close the connection: {e}"),
    }
}

fn stats_work(control: &Path) -> bool {
    client(Path::new(BINARY), &["stats"], control, None)
        .status
        .success()
}

#[test]
fn an_oversize_request_is_refused_and_its_connection_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let (_daemon, control) = control_daemon(tmp.path(), &[]);
    let mut stream = UnixStream::connect(&control).unwrap();
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        // The daemon stops reading part way: the rest may not be written.
        std::thread::spawn(move || {
            let _ = stream.write_all(&vec![b' '; 4 << 20]);
        })
    };
    let answer = read_answer(&stream);
    assert!(
        answer.contains("\"ok\":false") && answer.contains("too large"),
        "{answer:?}"
    );
    assert_closed(&mut stream);
    writer.join().unwrap();
    assert!(stats_work(&control));
}

#[test]
fn a_client_that_never_finishes_its_request_is_disconnected() {
    let tmp = tempfile::tempdir().unwrap();
    let (_daemon, control) = control_daemon(tmp.path(), &["--control-timeout", "1"]);
    for partial in [&b""[..], b"{\"cmd\":"] {
        let mut stream = UnixStream::connect(&control).unwrap();
        stream.write_all(partial).unwrap();
        let answer = read_answer(&stream);
        assert!(
            answer.is_empty() || answer.contains("timed out"),
            "{answer:?}"
        );
        assert_closed(&mut stream);
    }
    assert!(stats_work(&control));
}

#[test]
fn clients_beyond_the_limit_are_refused_until_others_leave() {
    let tmp = tempfile::tempdir().unwrap();
    // Idle clients stay connected for the whole test.
    let (_daemon, control) = control_daemon(tmp.path(), &["--control-timeout", "3600"]);
    let mut idle: Vec<UnixStream> = (0..16)
        .map(|_| UnixStream::connect(&control).unwrap())
        .collect();
    // Each idle client has been accepted (and holds its place) once it is answered.
    for stream in &mut idle {
        stream.write_all(b"{\"cmd\":\"macs\"}\n").unwrap();
        assert!(read_answer(stream).contains("\"ok\":true"));
    }
    let extra = UnixStream::connect(&control).unwrap();
    let answer = read_answer(&extra);
    assert!(answer.contains("too many control clients"), "{answer:?}");
    let error = stderr_of(&client(Path::new(BINARY), &["stats"], &control, None));
    assert!(error.contains("too many control clients"), "{error}");
    drop(idle.pop());
    wait_for("a place to free up", TIMEOUT, || {
        Ok(stats_work(&control).then_some(()))
    })
    .map_err(|e: HarnessError| e.to_string())
    .expect("a client is served once another leaves");
}

#[test]
fn control_refusals_are_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let (_daemon, control) = control_daemon(tmp.path(), &["--control-timeout", "1"]);
    let stream = UnixStream::connect(&control).unwrap();
    read_answer(&stream);
    let mut oversize = UnixStream::connect(&control).unwrap();
    let _ = oversize.write_all(&vec![b' '; 200 << 10]);
    read_answer(&oversize);
    let stats = assert_ok(&client(
        Path::new(BINARY),
        &["stats", "--json"],
        &control,
        None,
    ));
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["control"]["timed_out"], 1, "{stats}");
    assert_eq!(stats["control"]["oversize"], 1, "{stats}");
    assert_eq!(stats["control"]["denied"], 0, "{stats}");
    assert_eq!(stats["control"]["too_many_clients"], 0, "{stats}");
}
