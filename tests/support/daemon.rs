//! `Daemon`: the real `prism-vnic` binary, spawned with one vhost-user socket per port in a
//! private temporary directory.

use serde_json::Value;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::{HarnessError, Result, TIMEOUT, wait_for};

/// The binary under test, built by cargo for integration tests.
pub const BINARY: &str = env!("CARGO_BIN_EXE_prism-vnic");

pub struct DaemonBuilder {
    ports: Vec<String>,
    queues: u16,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    wrapper: Vec<String>,
}

impl DaemonBuilder {
    pub fn port(mut self, name: &str) -> Self {
        self.ports.push(name.to_string());
        self
    }

    pub fn queues(mut self, pairs: u16) -> Self {
        self.queues = pairs;
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.extra.push(arg.to_string());
        self
    }

    /// Sets an environment variable of the daemon.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Runs the daemon through a command that execs it (e.g. `ip netns exec NS`), so that
    /// the process is still the daemon's.
    pub fn within(mut self, wrapper: &[&str]) -> Self {
        self.wrapper = wrapper.iter().map(|w| w.to_string()).collect();
        self
    }

    /// Spawns the daemon and waits until every socket it must create exists.
    pub fn spawn(self) -> Result<Daemon> {
        let dir = tempfile::tempdir().map_err(|e| HarnessError::Spawn {
            binary: BINARY.into(),
            source: e,
        })?;
        let control = dir.path().join("control.sock");
        let stderr_path = dir.path().join("daemon.stderr");
        let ports: Vec<(String, PathBuf)> = self
            .ports
            .iter()
            .map(|name| (name.clone(), dir.path().join(format!("{name}.sock"))))
            .collect();
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(BINARY);
                cmd
            }
            None => Command::new(BINARY),
        };
        for (name, sock) in &ports {
            cmd.arg("--port").arg(format!("{name}={}", sock.display()));
        }
        cmd.arg("--queues").arg(self.queues.to_string());
        cmd.arg("--control").arg(&control);
        cmd.args(&self.extra);
        cmd.envs(self.env.iter().map(|(key, value)| (key, value)));
        let stderr = File::create(&stderr_path).map_err(|e| HarnessError::Spawn {
            binary: BINARY.into(),
            source: e,
        })?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            // Debug logging helps when a test fails; the file is printed then.
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        let child = cmd.spawn().map_err(|source| HarnessError::Spawn {
            binary: BINARY.into(),
            source,
        })?;
        let mut daemon = Daemon {
            child: Some(child),
            dir,
            control,
            stderr_path,
            ports,
        };
        let mut wanted: Vec<PathBuf> = daemon.ports.iter().map(|(_, p)| p.clone()).collect();
        wanted.push(daemon.control.clone());
        wait_for("daemon sockets to appear", TIMEOUT, || {
            daemon.check_running()?;
            Ok(wanted.iter().all(|p| p.exists()).then_some(()))
        })?;
        Ok(daemon)
    }
}

/// What the daemon process holds, as /proc shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resources {
    pub fds: usize,
    pub threads: usize,
    pub rss_kib: u64,
}

pub struct Daemon {
    child: Option<Child>,
    dir: tempfile::TempDir,
    control: PathBuf,
    stderr_path: PathBuf,
    ports: Vec<(String, PathBuf)>,
}

impl Daemon {
    /// Ports `a`, `b`, ... with `--queues 1` unless changed.
    pub fn builder() -> DaemonBuilder {
        DaemonBuilder {
            ports: Vec::new(),
            queues: 1,
            extra: Vec::new(),
            env: Vec::new(),
            wrapper: Vec::new(),
        }
    }

    /// A daemon with the named ports and `pairs` queue pairs each.
    pub fn start(ports: &[&str], pairs: u16) -> Result<Daemon> {
        ports
            .iter()
            .fold(Daemon::builder().queues(pairs), |b, p| b.port(p))
            .spawn()
    }

    pub fn socket(&self, port: &str) -> PathBuf {
        self.ports
            .iter()
            .find(|(name, _)| name == port)
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| self.dir.path().join(format!("{port}.sock")))
    }

    pub fn control_socket(&self) -> &Path {
        &self.control
    }

    /// The daemon's process id (for reading its /proc entries).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The names of the daemon's threads, from /proc (empty if it is not running).
    pub fn thread_names(&self) -> Vec<String> {
        let Some(pid) = self.pid() else {
            return Vec::new();
        };
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return Vec::new();
        };
        tasks
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .map(|name| name.trim_end().to_string())
            .collect()
    }

    /// Open file descriptors, threads and resident memory of the daemon, from /proc.
    pub fn resources(&self) -> Result<Resources> {
        let pid = self.pid().ok_or_else(|| HarnessError::Command {
            command: "daemon resources".into(),
            detail: "already stopped".into(),
        })?;
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        let failed = |what: &str, e: std::io::Error| HarnessError::Command {
            command: format!("read {what} of the daemon"),
            detail: e.to_string(),
        };
        let fds = std::fs::read_dir(proc_dir.join("fd"))
            .map_err(|e| failed("fd", e))?
            .count();
        let status =
            std::fs::read_to_string(proc_dir.join("status")).map_err(|e| failed("status", e))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|value| value.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(Resources {
            fds,
            threads: field("Threads:") as usize,
            rss_kib: field("VmRSS:"),
        })
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Fails if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        let stderr = self.stderr();
        let child = self.child.as_mut().ok_or_else(|| HarnessError::Command {
            command: "daemon".into(),
            detail: "already stopped".into(),
        })?;
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(HarnessError::DaemonExited { status, stderr }),
            Err(e) => Err(HarnessError::Command {
                command: "wait for daemon".into(),
                detail: e.to_string(),
            }),
        }
    }

    /// `prism-vnic ARGS... --control CTL`, which must succeed; its output.
    pub fn control(&self, args: &[&str]) -> String {
        let output = Command::new(BINARY)
            .args(args)
            .arg("--control")
            .arg(&self.control)
            .stdin(Stdio::null())
            .output()
            .expect("run prism-vnic control command");
        assert!(
            output.status.success(),
            "prism-vnic {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `prism-vnic stats --control CTL --json`, parsed.
    pub fn stats(&mut self) -> Result<Value> {
        self.check_running()?;
        let command = format!("{BINARY} stats --control {} --json", self.control.display());
        let out = Command::new(BINARY)
            .arg("stats")
            .arg("--control")
            .arg(&self.control)
            .arg("--json")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| HarnessError::Command {
                command: command.clone(),
                detail: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(HarnessError::Command {
                command,
                detail: format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        serde_json::from_slice(&out.stdout).map_err(|e| {
            HarnessError::Stats(format!("{e} in {:?}", String::from_utf8_lossy(&out.stdout)))
        })
    }

    /// A port-level counter (summed over queues by the daemon).
    pub fn counter(&mut self, port: &str, name: &str) -> Result<u64> {
        let stats = self.stats()?;
        stats_counter(&stats, port, None, name)
    }

    /// A counter of one queue (pair index) of a port.
    pub fn queue_counter(&mut self, port: &str, queue: u16, name: &str) -> Result<u64> {
        let stats = self.stats()?;
        stats_counter(&stats, port, Some(queue), name)
    }

    /// Waits until `counter(port, name) >= at_least`; returns the value.
    pub fn wait_counter(&mut self, port: &str, name: &str, at_least: u64) -> Result<u64> {
        wait_for(
            &format!("counter {port}.{name} >= {at_least}"),
            TIMEOUT,
            || {
                let value = self.counter(port, name)?;
                Ok((value >= at_least).then_some(value))
            },
        )
    }

    /// Sends SIGTERM and returns at once: the daemon starts shutting down (see [`Self::stop`]
    /// to wait for its exit).
    pub fn sigterm(&self) -> Result<()> {
        let child = self.child.as_ref().ok_or_else(|| HarnessError::Command {
            command: "kill -TERM daemon".into(),
            detail: "already stopped".into(),
        })?;
        // SAFETY: plain kill(2) on the pid of our own child, which we have not reaped yet.
        let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        if rc != 0 {
            return Err(HarnessError::Command {
                command: "kill -TERM daemon".into(),
                detail: std::io::Error::last_os_error().to_string(),
            });
        }
        Ok(())
    }

    /// SIGTERM, then asserts a clean exit (status 0) and that the sockets are gone.
    pub fn stop(mut self) -> Result<()> {
        self.sigterm()?;
        let mut child = self.child.take().ok_or_else(|| HarnessError::Command {
            command: "stop daemon".into(),
            detail: "already stopped".into(),
        })?;
        let status = wait_for("daemon to exit after SIGTERM", TIMEOUT, || {
            child.try_wait().map_err(|e| HarnessError::Command {
                command: "wait for daemon".into(),
                detail: e.to_string(),
            })
        });
        let status = match status {
            Ok(status) => status,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        if !status.success() {
            return Err(HarnessError::DaemonExited {
                status,
                stderr: self.stderr(),
            });
        }
        let mut left: Vec<&Path> = self.ports.iter().map(|(_, p)| p.as_path()).collect();
        left.push(&self.control);
        left.retain(|p| p.exists());
        if !left.is_empty() {
            return Err(HarnessError::Command {
                command: "stop daemon".into(),
                detail: format!("sockets left behind: {left:?}"),
            });
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            // The test failed: the counters usually say where the frame went.
            match self.stats() {
                Ok(stats) => eprintln!("---- prism-vnic stats ----\n{stats}"),
                Err(e) => eprintln!("---- prism-vnic stats unavailable: {e}"),
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            // The test failed: the daemon's own account is the first thing to read.
            eprintln!("---- prism-vnic stderr ----\n{}", self.stderr());
        }
    }
}

/// The one place that knows the stats JSON shape:
/// `{"ports":[{"name":..,"counters":{..},"queues":[{"index":0,"counters":{..}}]}],"switch":{..}}`.
pub fn stats_counter(stats: &Value, port: &str, queue: Option<u16>, name: &str) -> Result<u64> {
    let missing = |what: String| HarnessError::Stats(format!("{what} not in {stats}"));
    let port_obj = stats
        .get("ports")
        .and_then(Value::as_array)
        .and_then(|ports| {
            ports
                .iter()
                .find(|p| p.get("name").and_then(Value::as_str) == Some(port))
        })
        .ok_or_else(|| missing(format!("port {port:?}")))?;
    let counters = match queue {
        None => port_obj.get("counters"),
        Some(q) => port_obj
            .get("queues")
            .and_then(Value::as_array)
            .and_then(|qs| {
                qs.iter()
                    .find(|e| e.get("index").and_then(Value::as_u64) == Some(u64::from(q)))
            })
            .and_then(|e| e.get("counters")),
    };
    counters
        .and_then(|c| c.get(name))
        .and_then(Value::as_u64)
        .ok_or_else(|| missing(format!("counter {port}/{queue:?}/{name}")))
}
