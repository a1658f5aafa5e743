//! The control socket: a Unix stream socket speaking one JSON object per line, each request
//! answered by one line. It reads counters and tables; the data path never calls into it.
//!
//! The requests and answers are [`protocol`]'s types, shared with the CLI client:
//! `{"cmd":"stats"}`, `{"cmd":"macs"}`, and the NIC requests [`nic`] answers (rules, link,
//! coalesce, priority weight, residence, capture, netem). Answers: `{"ok":true, ...}` or
//! `{"ok":false,"error":"..."}`.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, warn};
use serde_json::Value;

pub mod access;
pub mod nic;
pub mod paths;
pub mod protocol;

use self::access::Gid;
pub use self::protocol::MAX_REQUEST;
use self::protocol::{
    Counters, LinkStats, MacEntry, MacsAnswer, NetemStats, PerClass, PortStats, QueueStats, Reply,
    Request, StatsAnswer,
};
use crate::stats::{self, ControlCounters, QueueCounters};
use crate::switch::fabric::Fabric;
use crate::switch::format_mac;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot listen on control socket {path}: {source}")]
    Listen { path: PathBuf, source: io::Error },
    #[error("control socket: {0}")]
    Path(#[from] paths::PathError),
    #[error("cannot reach prism-vnic at {path}: {source} (is it running? see --control)")]
    Connect { path: PathBuf, source: io::Error },
    #[error("control socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("prism-vnic answered something that is not an answer: {answer}")]
    BadAnswer {
        answer: String,
        source: serde_json::Error,
    },
    #[error("prism-vnic refused the request: {0}")]
    Refused(String),
}

/// All counters of all ports and the switch, and the ports' settings.
pub fn stats(fabric: &Fabric) -> StatsAnswer {
    let ports = fabric
        .ports
        .iter()
        .map(|port| {
            let queue_snapshots: Vec<Vec<(&'static str, u64)>> =
                port.queue_counters.iter().map(|q| q.snapshot()).collect();
            let mut total = stats::sum(queue_snapshots.iter().map(Vec::as_slice));
            if total.is_empty() {
                total = QueueCounters::default().snapshot();
            }
            total.extend(port.nic.port_counters.snapshot());
            let queues = queue_snapshots
                .iter()
                .enumerate()
                .map(|(index, snapshot)| {
                    let queue = port.nic.queue(index);
                    QueueStats {
                        index,
                        rx_enabled: queue.is_some_and(|q| q.is_enabled()),
                        rx_buffered_now: queue.map_or(0, |q| q.buffered()),
                        coalesce: queue.map(|q| q.coalesce.get()),
                        residence: queue.map(|q| {
                            let [high, normal] = q.residence();
                            PerClass { high, normal }
                        }),
                        counters: Counters::of(snapshot),
                    }
                })
                .collect();
            let link = port.nic.link.settings();
            PortStats {
                name: port.name.clone(),
                kind: port.kind.label().to_string(),
                connected: port.nic.is_connected(),
                link: LinkStats {
                    rate_bps: link.rate_bps,
                    latency_ns: link.latency_ns,
                    class_delay_ns: nic::class_delays(&port.nic.link),
                },
                priority_weight: port.nic.priority_weight(),
                netem: nic::netem_stats(port),
                buffered_now: port.nic.buffered(),
                counters: Counters::of(&total),
                queues,
            }
        })
        .collect();
    StatsAnswer {
        ports,
        switch: Counters::of(&fabric.switch.counters.snapshot()),
        control: Counters::default(),
    }
}

fn macs(fabric: &Fabric) -> MacsAnswer {
    let macs = fabric
        .switch
        .entries()
        .iter()
        .map(|(mac, port, age)| MacEntry {
            mac: format_mac(mac),
            port: fabric
                .ports
                .get(*port)
                .map_or("?", |p| p.name.as_str())
                .to_string(),
            age_secs: *age,
        })
        .collect();
    MacsAnswer { macs }
}

/// The reply to one request line.
fn answer(server: &Server, line: &str) -> Reply {
    let fabric = &server.fabric;
    match Request::parse(line) {
        Err(error) => Reply::refused(error),
        Ok(Request::Stats) => Reply::answer(StatsAnswer {
            control: Counters::of(&server.counters.snapshot()),
            ..stats(fabric)
        }),
        Ok(Request::Macs) => Reply::answer(macs(fabric)),
        Ok(request) => nic::answer(fabric, &server.settings.capture_dir, request),
    }
}
/// Most control clients connected at once; further ones are answered with an error.
pub const MAX_CLIENTS: usize = 16;

/// The control socket and who may use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlSettings {
    pub path: PathBuf,
    /// A group granted access besides root and the daemon's user (the socket is then 0660).
    pub group: Option<Gid>,
    /// How long a client has to send each request.
    pub timeout: Duration,
    /// Where captures started over the socket are written.
    pub capture_dir: PathBuf,
}

impl ControlSettings {
    pub fn mode(&self) -> u32 {
        if self.group.is_some() { 0o660 } else { 0o600 }
    }
}

/// Why a request could not be read.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("request too large: more than {MAX_REQUEST} bytes without a newline")]
    TooLarge,
    #[error("request timed out")]
    TimedOut,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads one request line, which must be complete within `timeout` of the call and at most
/// MAX_REQUEST bytes long. `None` at the end of the stream.
fn read_request(
    reader: &mut BufReader<UnixStream>,
    timeout: Duration,
) -> Result<Option<String>, ReadError> {
    let deadline = Instant::now() + timeout;
    let mut line = Vec::new();
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
            .ok_or(ReadError::TimedOut)?;
        reader.get_ref().set_read_timeout(Some(left))?;
        let buffer = match reader.fill_buf() {
            Ok(buffer) => buffer,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ReadError::TimedOut);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if buffer.is_empty() {
            // A last line without its newline is still a request.
            return Ok((!line.is_empty()).then(|| String::from_utf8_lossy(&line).into_owned()));
        }
        let (taken, done) = match buffer.iter().position(|&b| b == b'\n') {
            Some(at) => (at + 1, true),
            None => (buffer.len(), false),
        };
        line.extend_from_slice(&buffer[..taken]);
        reader.consume(taken);
        if line.len() > MAX_REQUEST + 1 {
            return Err(ReadError::TooLarge);
        }
        if done {
            line.pop();
            return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
        }
    }
}

fn write_answer(writer: &mut UnixStream, reply: &Reply) -> io::Result<()> {
    writer.write_all(&reply.to_line())
}

fn serve_client(server: &Server, stream: UnixStream) -> io::Result<()> {
    // A client that stops reading must not pin a thread forever.
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let line = match read_request(&mut reader, server.settings.timeout) {
            Ok(Some(line)) => line,
            Ok(None) => return Ok(()),
            Err(ReadError::Io(e)) => return Err(e),
            Err(error) => {
                let counter = match error {
                    ReadError::TooLarge => &server.counters.oversize,
                    _ => &server.counters.timed_out,
                };
                stats::inc(counter);
                return write_answer(&mut writer, &Reply::refused(error));
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        write_answer(&mut writer, &answer(server, &line))?;
    }
}

/// What the control threads share.
struct Server {
    fabric: Arc<Fabric>,
    settings: ControlSettings,
    counters: Arc<ControlCounters>,
    clients: AtomicUsize,
}

/// One of the MAX_CLIENTS places, held while a client is served.
struct ClientPlace(Arc<Server>);

impl ClientPlace {
    fn take(server: &Arc<Server>) -> Option<Self> {
        server
            .clients
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_CLIENTS).then_some(n + 1)
            })
            .ok()
            .map(|_| ClientPlace(server.clone()))
    }
}

impl Drop for ClientPlace {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Turns a client away with one answer line, without a thread of its own.
fn turn_away(mut stream: UnixStream, error: impl std::fmt::Display) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = write_answer(&mut stream, &Reply::refused(error));
}

fn accept(server: &Arc<Server>, stream: UnixStream) {
    let allowed = access::peer_of(&stream)
        .and_then(|peer| access::control_allowed(peer, server.settings.group));
    if let Err(error) = allowed {
        stats::inc(&server.counters.denied);
        debug!("control client refused: {error}");
        turn_away(stream, error);
        return;
    }
    let Some(place) = ClientPlace::take(server) else {
        stats::inc(&server.counters.too_many_clients);
        turn_away(
            stream,
            format!("too many control clients (at most {MAX_CLIENTS}); try again"),
        );
        return;
    };
    let spawned = thread::Builder::new()
        .name("control-client".into())
        .spawn(move || {
            if let Err(e) = serve_client(&place.0, stream) {
                debug!("control client: {e}");
            }
        });
    if let Err(e) = spawned {
        warn!("control client thread: {e}");
    }
}

/// Binds the control socket (replacing only a stale one of ours), gives it its mode and
/// group, and serves it on a thread.
pub fn spawn(
    fabric: Arc<Fabric>,
    settings: &ControlSettings,
    counters: Arc<ControlCounters>,
) -> Result<thread::JoinHandle<()>, ControlError> {
    let path = &settings.path;
    paths::clear_socket_path(path)?;
    let listener = UnixListener::bind(path).map_err(|source| ControlError::Listen {
        path: path.to_path_buf(),
        source,
    })?;
    paths::set_mode_and_group(path, settings.mode(), settings.group)?;
    serve(fabric, listener, settings, counters)
}

/// Serves an already listening control socket (bound by `spawn`, or inherited) on a thread.
pub fn serve(
    fabric: Arc<Fabric>,
    listener: UnixListener,
    settings: &ControlSettings,
    counters: Arc<ControlCounters>,
) -> Result<thread::JoinHandle<()>, ControlError> {
    let server = Arc::new(Server {
        fabric,
        settings: settings.clone(),
        counters,
        clients: AtomicUsize::new(0),
    });
    thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => accept(&server, stream),
                    Err(e) => warn!("control socket accept: {e}"),
                }
            }
        })
        .map_err(|source| ControlError::Listen {
            path: settings.path.clone(),
            source,
        })
}

/// Sends one request to a running prism-vnic and returns its answer's fields (without `ok`).
pub fn request(path: &Path, request: &Request) -> Result<Value, ControlError> {
    let io_error = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(path).map_err(|source| ControlError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io_error)?;
    let line = request.to_line();
    // A daemon that turns us away answers and closes before reading: its answer says why.
    let written = stream.write_all(&line);
    let mut answer = String::new();
    let read = BufReader::new(stream).read_line(&mut answer);
    match (written, read) {
        (_, Ok(n)) if n > 0 => {}
        (Err(e), _) | (Ok(()), Err(e)) => return Err(io_error(e)),
        (Ok(()), Ok(_)) => {
            return Err(io_error(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed without an answer",
            )));
        }
    }
    let reply: Reply = serde_json::from_str(&answer).map_err(|source| ControlError::BadAnswer {
        answer: answer.trim_end().to_string(),
        source,
    })?;
    if !reply.ok {
        return Err(ControlError::Refused(
            reply.error.unwrap_or_else(|| "no reason given".to_string()),
        ));
    }
    Ok(reply.into_value())
}

/// Formats a stats answer like `ethtool -S`, port by port; per-queue counters are named
/// `rx_queue_N_...` / `tx_queue_N_...` as virtio_net and most NIC drivers do.
pub fn format_stats(stats: &StatsAnswer, only_port: Option<&str>) -> String {
    let mut out = String::new();
    for port in &stats.ports {
        if only_port.is_some_and(|only| only != port.name) {
            continue;
        }
        let connected = if port.connected {
            "connected"
        } else {
            "not connected"
        };
        out += &format!(
            "port {} ({}, {connected})\nNIC statistics:\n",
            port.name, port.kind
        );
        for (counter, value) in &port.counters.0 {
            out += &format!("     {counter}: {value}\n");
        }
        for queue in &port.queues {
            for (counter, value) in &queue.counters.0 {
                let (direction, rest) = counter.split_once('_').unwrap_or(("", counter));
                out += &format!("     {direction}_queue_{}_{rest}: {value}\n", queue.index);
            }
        }
        out += &format_netem(&port.netem);
    }
    if only_port.is_none() {
        out += "switch:\n";
        for (counter, value) in &stats.switch.0 {
            out += &format!("     {counter}: {value}\n");
        }
    }
    out
}

/// A port's impairments in a stats answer, per class impaired now or before: the settings,
/// then the counters named `netem_<class>_<effect>`.
fn format_netem(netem: &NetemStats) -> String {
    let mut out = String::new();
    for (class, stats) in [("high", &netem.high), ("normal", &netem.normal)] {
        if stats.settings.is_none() && !stats.counters.any() {
            continue;
        }
        out += &format!(
            "     netem {class}: {}\n",
            stats.settings.as_deref().unwrap_or("off")
        );
        for (counter, value) in &stats.counters.0 {
            let effect = counter.strip_prefix("netem_").unwrap_or(counter);
            out += &format!("     netem_{class}_{effect}: {value}\n");
        }
    }
    out
}

/// Formats the residence histograms of a stats answer: one line per port, queue and class.
pub fn format_residence(stats: &StatsAnswer, only_port: Option<&str>) -> String {
    let mut out = format!(
        "{:<12} {:>5} {:<6} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
        "port", "queue", "class", "frames", "p50 us", "p99 us", "p99.9 us", "max us"
    );
    let us = |ns: u64| ns as f64 / 1000.0;
    for port in &stats.ports {
        if only_port.is_some_and(|only| only != port.name) {
            continue;
        }
        for queue in &port.queues {
            let Some(residence) = &queue.residence else {
                continue;
            };
            for (class, r) in [("high", &residence.high), ("normal", &residence.normal)] {
                if r.count == 0 {
                    continue;
                }
                out += &format!(
                    "{:<12} {:>5} {:<6} {:>10} {:>10.1} {:>10.1} {:>10.1} {:>10.1}\n",
                    port.name,
                    queue.index,
                    class,
                    r.count,
                    us(r.p50_ns),
                    us(r.p99_ns),
                    us(r.p999_ns),
                    us(r.max_ns)
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::protocol::{
        ClassDelays, Counters, LinkStats, NetemClassStats, NetemStats, PerClass, PortStats,
        QueueStats, StatsAnswer,
    };
    use super::{format_netem, format_residence};
    use crate::nic::residence::ResidenceSummary;

    fn class(settings: Option<&str>, lost: u64) -> NetemClassStats {
        NetemClassStats {
            settings: settings.map(str::to_string),
            counters: Counters(vec![("netem_lost".into(), lost)]),
        }
    }

    #[test]
    fn netem_lines_show_the_classes_impaired_now_or_before_only() {
        let netem = NetemStats {
            high: class(None, 0),
            normal: class(Some("loss random 1% seed 7"), 3),
            ..NetemStats::default()
        };
        assert_eq!(
            format_netem(&netem),
            "     netem normal: loss random 1% seed 7\n     netem_normal_lost: 3\n"
        );
        let turned_off = NetemStats {
            high: class(None, 2),
            ..NetemStats::default()
        };
        assert!(format_netem(&turned_off).starts_with("     netem high: off\n"));
        assert_eq!(format_netem(&NetemStats::default()), "");
    }

    #[test]
    fn residence_rows_line_up_under_their_headers() {
        let normal = ResidenceSummary {
            count: 14,
            p50_ns: 5300,
            p99_ns: 60900,
            p999_ns: 60900,
            max_ns: 60900,
            ..ResidenceSummary::default()
        };
        let stats = StatsAnswer {
            ports: vec![PortStats {
                name: "vm1".into(),
                kind: "vhost-user".into(),
                connected: true,
                link: LinkStats {
                    rate_bps: 0,
                    latency_ns: 0,
                    class_delay_ns: ClassDelays { high: 0, normal: 0 },
                },
                priority_weight: 0,
                netem: NetemStats::default(),
                buffered_now: 0,
                counters: Counters::default(),
                queues: vec![QueueStats {
                    index: 3,
                    rx_enabled: true,
                    rx_buffered_now: 0,
                    coalesce: None,
                    residence: Some(PerClass {
                        high: ResidenceSummary::default(),
                        normal,
                    }),
                    counters: Counters::default(),
                }],
            }],
            switch: Counters::default(),
            control: Counters::default(),
        };
        let table = format_residence(&stats, None);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines.len(),
            2,
            "a header and the one class with frames:\n{table}"
        );
        assert_eq!(lines[0].len(), lines[1].len(), "{table}");
        // Every column ends where its header does.
        for header in ["queue", "frames", "p50 us", "max us"] {
            let end = lines[0].find(header).expect("header") + header.len();
            assert_ne!(lines[1].as_bytes()[end - 1], b' ', "{header} in\n{table}");
        }
        assert!(lines[1].starts_with("vm1"));
        assert!(lines[1].contains(" 14 "), "{table}");
        assert_eq!(format_residence(&stats, Some("vm2")).lines().count(), 1);
    }
}
