//! The metrics endpoint: a small HTTP/1.x responder on a TCP listener. `GET /metrics` answers
//! with the Prometheus text format, or OpenMetrics when the `Accept` header asks for it;
//! anything else gets 404 or 405. One request per connection.
//!
//! A scraper is not trusted more than any local user: a request head is read up to 8 KiB
//! and for at most 5 s, and at most [`MAX_CLIENTS`] connections are served at once (more
//! are closed at once), so a stalled client cannot pin threads or memory.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use log::{debug, warn};
use prometheus_client::registry::Registry;

use super::{registry, render};
use crate::switch::fabric::Fabric;

/// Connections served at once.
pub const MAX_CLIENTS: usize = 8;
/// Longest request head read.
const MAX_HEAD: usize = 8 * 1024;
const TIMEOUT: Duration = Duration::from_secs(5);

const PROMETHEUS_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("metrics listener: {0}")]
    Listener(io::Error),
    #[error("cannot start the metrics thread: {0}")]
    Thread(io::Error),
}

/// Binds the metrics address now, so that a bad or taken address fails at start.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr).map_err(|source| MetricsError::Bind { addr, source })
}

/// Serves `listener` on a thread for as long as the process runs.
pub fn spawn(
    fabric: Arc<Fabric>,
    listener: TcpListener,
) -> Result<thread::JoinHandle<()>, MetricsError> {
    // Inherited listeners (socket activation) may come non-blocking.
    listener
        .set_nonblocking(false)
        .map_err(MetricsError::Listener)?;
    let registry = Arc::new(registry(fabric));
    let clients = Arc::new(AtomicUsize::new(0));
    thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let stream = match stream {
                    Ok(stream) => stream,
                    Err(e) => {
                        warn!("metrics accept: {e}");
                        thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                if clients.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
                    clients.fetch_sub(1, Ordering::AcqRel);
                    continue;
                }
                let (registry, clients) = (registry.clone(), clients.clone());
                let spawned =
                    thread::Builder::new()
                        .name("metrics-client".into())
                        .spawn(move || {
                            if let Err(e) = serve(&registry, stream) {
                                debug!("metrics client: {e}");
                            }
                            clients.fetch_sub(1, Ordering::AcqRel);
                        });
                if let Err(e) = spawned {
                    warn!("metrics: cannot start a client thread: {e}");
                }
            }
        })
        .map_err(MetricsError::Thread)
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Metrics { openmetrics: bool },
    NotFound,
    BadMethod,
    Malformed,
}

fn parse_head(head: &str) -> Request {
    let mut lines = head.split("\r\n");
    let mut words = lines.next().unwrap_or("").split(' ');
    let (Some(method), Some(target), Some(version)) = (words.next(), words.next(), words.next())
    else {
        return Request::Malformed;
    };
    if !version.starts_with("HTTP/1.") {
        return Request::Malformed;
    }
    if method != "GET" && method != "HEAD" {
        return Request::BadMethod;
    }
    let path = target.split('?').next().unwrap_or("");
    if path != "/metrics" {
        return Request::NotFound;
    }
    let openmetrics = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("accept") && value.contains("application/openmetrics-text")
        })
    });
    Request::Metrics { openmetrics }
}

/// Reads a request head (up to the blank line), or fails if it is too long or too slow.
fn read_head(stream: &mut TcpStream) -> io::Result<String> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too long",
            ));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

fn serve(registry: &Registry, mut stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let head = read_head(&mut stream)?;
    let (status, content_type, body) = match parse_head(&head) {
        Request::Metrics { openmetrics } => match render(registry, openmetrics) {
            Ok(body) if openmetrics => ("200 OK", OPENMETRICS_TEXT, body),
            Ok(body) => ("200 OK", PROMETHEUS_TEXT, body),
            Err(_) => (
                "500 Internal Server Error",
                "text/plain",
                "encoding failed\n".into(),
            ),
        },
        Request::NotFound => (
            "404 Not Found",
            "text/plain",
            "prism-vnic serves /metrics\n".into(),
        ),
        Request::BadMethod => (
            "405 Method Not Allowed",
            "text/plain",
            "GET /metrics\n".into(),
        ),
        Request::Malformed => ("400 Bad Request", "text/plain", "bad request\n".into()),
    };
    let with_body = !head.starts_with("HEAD ");
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(header.as_bytes())?;
    if with_body {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_told_apart() {
        assert_eq!(
            parse_head("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Request::Metrics { openmetrics: false }
        );
        assert_eq!(
            parse_head(
                "GET /metrics?x=1 HTTP/1.1\r\naccept: application/openmetrics-text;version=1.0.0,\
                 text/plain;q=0.5\r\n\r\n"
            ),
            Request::Metrics { openmetrics: true }
        );
        assert_eq!(parse_head("GET / HTTP/1.0\r\n\r\n"), Request::NotFound);
        assert_eq!(
            parse_head("POST /metrics HTTP/1.1\r\n\r\n"),
            Request::BadMethod
        );
        assert_eq!(parse_head("hello\r\n\r\n"), Request::Malformed);
        assert_eq!(parse_head("GET /metrics SPDY\r\n\r\n"), Request::Malformed);
    }
}
