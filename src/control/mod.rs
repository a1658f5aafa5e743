//! The control socket: a Unix stream socket speaking one JSON object per line, each request
//! answered by one line. It reads counters and tables; the data path never calls into it.
//!
//! Requests: `{"cmd":"stats"}`, `{"cmd":"macs"}`, and the NIC requests of [`nic`] (rules,
//! link, coalesce, priority weight, residence, capture). Answers: `{"ok":true, ...}` or
//! `{"ok":false,"error":"..."}`.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use log::{debug, warn};
use serde_json::{Map, Value, json};

pub mod nic;

use crate::stats::{self, QueueCounters};
use crate::switch::fabric::Fabric;
use crate::switch::format_mac;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot listen on control socket {path}: {source}")]
    Listen { path: PathBuf, source: io::Error },
    #[error("cannot reach prism-vnic at {path}: {source} (is it running? see --control)")]
    Connect { path: PathBuf, source: io::Error },
    #[error("control socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("prism-vnic answered something that is not JSON: {0}")]
    BadAnswer(String),
    #[error("prism-vnic refused the request: {0}")]
    Refused(String),
}

fn counters_object(snapshot: &[(&'static str, u64)]) -> Value {
    Value::Object(
        snapshot
            .iter()
            .map(|(name, value)| (name.to_string(), json!(value)))
            .collect::<Map<String, Value>>(),
    )
}

/// All counters of all ports, the switch and its table, as JSON.
pub fn stats_json(fabric: &Fabric) -> Value {
    let ports: Vec<Value> = fabric
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
            let queues: Vec<Value> = queue_snapshots
                .iter()
                .enumerate()
                .map(|(index, snapshot)| {
                    let queue = port.nic.queue(index);
                    json!({
                        "index": index,
                        "rx_enabled": queue.is_some_and(|q| q.is_enabled()),
                        "rx_buffered_now": queue.map_or(0, |q| q.buffered()),
                        "coalesce": queue.map(|q| q.coalesce.get()),
                        "residence": queue.map(|q| {
                            let [high, normal] = q.residence();
                            json!({ "high": high, "normal": normal })
                        }),
                        "counters": counters_object(snapshot),
                    })
                })
                .collect();
            json!({
                "name": port.name,
                "kind": port.kind.label(),
                "connected": port.nic.is_connected(),
                "link": {
                    "rate_bps": port.nic.link.settings().rate_bps,
                    "latency_ns": port.nic.link.settings().latency_ns,
                    "class_delay_ns": nic::class_delay_json(&port.nic.link),
                },
                "priority_weight": port.nic.priority_weight(),
                "buffered_now": port.nic.buffered(),
                "counters": counters_object(&total),
                "queues": queues,
            })
        })
        .collect();
    json!({
        "ports": ports,
        "switch": counters_object(&fabric.switch.counters.snapshot()),
    })
}

fn macs_json(fabric: &Fabric) -> Value {
    let entries: Vec<Value> = fabric
        .switch
        .entries()
        .iter()
        .map(|(mac, port, age)| {
            json!({
                "mac": format_mac(mac),
                "port": fabric.ports.get(*port).map_or("?", |p| p.name.as_str()),
                "age_secs": age,
            })
        })
        .collect();
    json!({ "macs": entries })
}

fn answer(fabric: &Fabric, line: &str) -> Value {
    let refused = |error: String| json!({ "ok": false, "error": error });
    let request: Value = match serde_json::from_str(line) {
        Ok(request) => request,
        Err(e) => return refused(format!("bad request: {e}")),
    };
    let mut answer = match request["cmd"].as_str() {
        Some("stats") => stats_json(fabric),
        Some("macs") => macs_json(fabric),
        _ => match serde_json::from_value::<nic::NicRequest>(request) {
            Ok(request) => match nic::answer(fabric, request) {
                Ok(answer) => answer,
                Err(error) => return refused(error),
            },
            Err(e) => return refused(format!("bad request: {e}")),
        },
    };
    answer["ok"] = json!(true);
    answer
}

fn serve_client(fabric: &Fabric, stream: UnixStream) -> io::Result<()> {
    // A client that stops reading must not pin a thread forever.
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut writer = stream.try_clone()?;
    // A client may send at most 1 MiB over its connection, so it cannot make us buffer
    // without end.
    let reader = BufReader::new(io::Read::take(stream, 1 << 20));
    for line in reader.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let mut out = serde_json::to_vec(&answer(fabric, &line))?;
        out.push(b'\n');
        writer.write_all(&out)?;
    }
    Ok(())
}

/// Binds the control socket (replacing a stale one) and serves it on a thread.
pub fn spawn(fabric: Arc<Fabric>, path: &Path) -> Result<thread::JoinHandle<()>, ControlError> {
    let listen_error = |source| ControlError::Listen {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() {
        // Refuse to steal the socket of a running instance.
        if UnixStream::connect(path).is_ok() {
            return Err(listen_error(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another prism-vnic is answering on it",
            )));
        }
        std::fs::remove_file(path).map_err(listen_error)?;
    }
    let listener = UnixListener::bind(path).map_err(listen_error)?;
    serve(fabric, listener, path)
}

/// Serves an already listening control socket (bound by `spawn`, or inherited) on a thread.
pub fn serve(
    fabric: Arc<Fabric>,
    listener: UnixListener,
    path: &Path,
) -> Result<thread::JoinHandle<()>, ControlError> {
    thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        let fabric = fabric.clone();
                        let _ =
                            thread::Builder::new()
                                .name("control-client".into())
                                .spawn(move || {
                                    if let Err(e) = serve_client(&fabric, stream) {
                                        debug!("control client: {e}");
                                    }
                                });
                    }
                    Err(e) => warn!("control socket accept: {e}"),
                }
            }
        })
        .map_err(|source| ControlError::Listen {
            path: path.to_path_buf(),
            source,
        })
}

/// Sends one request to a running prism-vnic and returns its answer.
pub fn request(path: &Path, request: &Value) -> Result<Value, ControlError> {
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
    let mut line = serde_json::to_vec(request).map_err(|e| io_error(e.into()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io_error)?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(io_error)?;
    let value: Value =
        serde_json::from_str(&answer).map_err(|_| ControlError::BadAnswer(answer.clone()))?;
    if value["ok"] != json!(true) {
        return Err(ControlError::Refused(
            value["error"]
                .as_str()
                .unwrap_or("no reason given")
                .to_string(),
        ));
    }
    Ok(value)
}

/// Formats a stats answer like `ethtool -S`, port by port; per-queue counters are named
/// `rx_queue_N_...` / `tx_queue_N_...` as virtio_net and most NIC drivers do.
pub fn format_stats(stats: &Value, only_port: Option<&str>) -> String {
    let mut out = String::new();
    for port in stats["ports"].as_array().into_iter().flatten() {
        let name = port["name"].as_str().unwrap_or("?");
        if only_port.is_some_and(|only| only != name) {
            continue;
        }
        let connected = if port["connected"] == json!(true) {
            "connected"
        } else {
            "not connected"
        };
        out += &format!(
            "port {name} ({}, {connected})\nNIC statistics:\n",
            port["kind"].as_str().unwrap_or("?")
        );
        for (counter, value) in port["counters"].as_object().into_iter().flatten() {
            out += &format!("     {counter}: {value}\n");
        }
        for queue in port["queues"].as_array().into_iter().flatten() {
            let index = queue["index"].as_u64().unwrap_or(0);
            for (counter, value) in queue["counters"].as_object().into_iter().flatten() {
                let (direction, rest) = counter.split_once('_').unwrap_or(("", counter));
                out += &format!("     {direction}_queue_{index}_{rest}: {value}\n");
            }
        }
    }
    if only_port.is_none() {
        out += "switch:\n";
        for (counter, value) in stats["switch"].as_object().into_iter().flatten() {
            out += &format!("     {counter}: {value}\n");
        }
    }
    out
}

/// Formats the residence histograms of a stats answer: one line per port, queue and class.
pub fn format_residence(stats: &Value, only_port: Option<&str>) -> String {
    let mut out = format!(
        "{:<12} {:>5} {:<6} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
        "port", "queue", "class", "frames", "p50 us", "p99 us", "p99.9 us", "max us"
    );
    let us = |v: &Value| v.as_u64().map_or(0.0, |ns| ns as f64 / 1000.0);
    for port in stats["ports"].as_array().into_iter().flatten() {
        let name = port["name"].as_str().unwrap_or("?");
        if only_port.is_some_and(|only| only != name) {
            continue;
        }
        for queue in port["queues"].as_array().into_iter().flatten() {
            for class in ["high", "normal"] {
                let r = &queue["residence"][class];
                if r["count"].as_u64().unwrap_or(0) == 0 {
                    continue;
                }
                // As numbers: a JSON `Value` prints without the width it is given.
                out += &format!(
                    "{:<12} {:>5} {:<6} {:>10} {:>10.1} {:>10.1} {:>10.1} {:>10.1}\n",
                    name,
                    queue["index"].as_u64().unwrap_or(0),
                    class,
                    r["count"].as_u64().unwrap_or(0),
                    us(&r["p50_ns"]),
                    us(&r["p99_ns"]),
                    us(&r["p999_ns"]),
                    us(&r["max_ns"])
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::format_residence;
    use serde_json::json;

    #[test]
    fn residence_rows_line_up_under_their_headers() {
        let stats = json!({"ports": [{"name": "vm1", "queues": [{"index": 3, "residence": {
            "high": {"count": 0},
            "normal": {"count": 14, "p50_ns": 5300, "p99_ns": 60900, "p999_ns": 60900, "max_ns": 60900},
        }}]}]});
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
