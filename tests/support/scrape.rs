//! Scraping the daemon's `--metrics` endpoint as Prometheus would: a plain HTTP GET, and
//! reading one sample out of the text format.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};

use super::daemon::Daemon;
use super::{HarnessError, Result, TIMEOUT, wait_for};

/// One HTTP answer: the status line, the headers (as sent) and the body.
pub struct Answer {
    pub status: String,
    pub headers: String,
    pub body: String,
}

/// `GET path` on `addr`, with an `Accept` header if given.
pub fn http_get(addr: SocketAddr, path: &str, accept: Option<&str>) -> Result<Answer> {
    let io = |e: std::io::Error| HarnessError::Command {
        command: format!("GET http://{addr}{path}"),
        detail: e.to_string(),
    };
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(io)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}\r\n");
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(io)?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| HarnessError::Command {
            command: format!("GET http://{addr}{path}"),
            detail: format!("no header end in {answer:?}"),
        })?;
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    Ok(Answer {
        status: status.to_string(),
        headers: headers.to_string(),
        body: body.to_string(),
    })
}

/// The address the daemon serves metrics on, from its log (`--metrics 127.0.0.1:0` lets the
/// kernel choose a free port).
pub fn metrics_addr(daemon: &mut Daemon) -> Result<SocketAddr> {
    wait_for("the daemon to log its metrics address", TIMEOUT, || {
        daemon.check_running()?;
        let stderr = daemon.stderr();
        Ok(stderr
            .split("metrics on http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|addr| addr.parse().ok()))
    })
}

/// The value of the sample `name{labels}` (labels written as in the text, in order), if
/// the text has it.
pub fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    text.lines()
        .find_map(|line| line.strip_prefix(&key))
        .and_then(|value| value.trim().parse().ok())
}

/// `promtool check metrics` on `text`: its exit status and what it said.
pub fn promtool_check(text: &str) -> Result<(bool, String)> {
    let failed = |detail: String| HarnessError::Command {
        command: "promtool check metrics".into(),
        detail,
    };
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("{e} (Debian package prometheus, .ci/install-deps)")))?;
    child
        .stdin
        .take()
        .ok_or_else(|| failed("no stdin".into()))?
        .write_all(text.as_bytes())
        .map_err(|e| failed(e.to_string()))?;
    let output = child
        .wait_with_output()
        .map_err(|e| failed(e.to_string()))?;
    let said = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    Ok((output.status.success(), said))
}
