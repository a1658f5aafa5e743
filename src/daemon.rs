//! Putting a running prism-vnic together from the command line: the fabric of ports, the
//! sockets bound before any thread starts (so bad paths fail at once), the threads, and a
//! clean shutdown on SIGINT/SIGTERM that removes the sockets.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use log::info;

use crate::classify::rules::RuleSet;
use crate::classify::{ClassifierConfig, Trust};
use crate::cli::{RunArgs, TrustArg};
use crate::control;
use crate::metrics;
use crate::nic::capture::Capture;
use crate::nic::link::LinkSettings;
use crate::nic::{Nic, NicConfig, scheduler};
use crate::port::backend::PortConfig;
use crate::port::server::{self, PortListener};
use crate::stats::{PortCounters, QueueCounters};
use crate::switch::fabric::{Fabric, FabricPort, PortKind};
use crate::switch::{Switch, SwitchConfig};
use crate::wire::sink::SinkRing;
use crate::wire::{generator, tap};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot create directory {path} for a socket: {source}")]
    SocketDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Server(#[from] server::ServerError),
    #[error(transparent)]
    Tap(#[from] tap::TapError),
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error(transparent)]
    Metrics(#[from] metrics::server::MetricsError),
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot wait for signals: {0}")]
    Signals(std::io::Error),
}

fn make_port(
    name: &str,
    kind: PortKind,
    queues: usize,
    config: &NicConfig,
    rules: RuleSet,
) -> Result<FabricPort, DaemonError> {
    let queue_counters: Vec<Arc<QueueCounters>> = (0..queues)
        .map(|_| Arc::new(QueueCounters::default()))
        .collect();
    let nic = Nic::new(
        &queue_counters,
        Arc::new(PortCounters::default()),
        config,
        rules,
    )
    .map_err(|e| DaemonError::Usage(format!("port {name}: {e}")))?;
    Ok(FabricPort {
        name: name.to_string(),
        kind,
        nic: Arc::new(nic),
        queue_counters,
    })
}

fn nic_config(args: &RunArgs) -> NicConfig {
    let trust = match args.trust {
        TrustArg::Dscp => Trust::default_dscp(),
        TrustArg::Pcp => Trust::default_pcp(),
        TrustArg::None => Trust::None,
    };
    NicConfig {
        buffer_frames: args.rx_buffer as usize,
        link: LinkSettings {
            rate_bps: args.link_rate,
            latency_ns: args.link_latency_us * 1000,
        },
        coalesce_high: args.coalesce_high,
        coalesce_normal: args.coalesce,
        priority_weight: args.priority_weight,
        classifier: ClassifierConfig {
            high_queues: args.high_queues,
            trust,
            vxlan_ports: args.vxlan_ports.clone(),
            ..ClassifierConfig::default()
        },
    }
}

/// The rules of port `name`: its own file if given, else the file for every port.
fn rules_for(args: &RunArgs, name: &str) -> Result<RuleSet, DaemonError> {
    let own = args
        .rules
        .iter()
        .find(|(port, _)| port.as_deref() == Some(name));
    let shared = args.rules.iter().find(|(port, _)| port.is_none());
    match own.or(shared) {
        Some((_, path)) => RuleSet::load(path).map_err(|e| DaemonError::Usage(e.to_string())),
        None => Ok(RuleSet::default()),
    }
}

fn ensure_parent(path: &Path) -> Result<(), DaemonError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| DaemonError::SocketDir {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// Blocks SIGINT and SIGTERM in this thread and every thread it starts afterwards, so that
/// only `wait_for_shutdown` receives them.
fn block_shutdown_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it, and
    // pthread_sigmask only changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_shutdown(set: &libc::sigset_t) -> Result<i32, DaemonError> {
    let mut signal: libc::c_int = 0;
    // SAFETY: `set` was initialised by block_shutdown_signals; sigwait writes one int.
    let rc = unsafe { libc::sigwait(set, &mut signal) };
    if rc != 0 {
        return Err(DaemonError::Signals(std::io::Error::from_raw_os_error(rc)));
    }
    Ok(signal)
}

/// Runs prism-vnic until SIGINT or SIGTERM.
pub fn run(args: RunArgs) -> Result<(), DaemonError> {
    args.validate().map_err(DaemonError::Usage)?;
    let queues = usize::from(args.queues);
    let nic = nic_config(&args);

    // Bind everything first: a bad path or a missing tap fails before anything runs.
    let mut listeners = Vec::new();
    for (_, path) in &args.ports {
        ensure_parent(path)?;
        listeners.push(PortListener::bind(path)?);
    }
    let mut taps = Vec::new();
    for (_, ifname) in &args.taps {
        taps.push(tap::Tap::attach(ifname)?);
    }
    ensure_parent(&args.control)?;
    let metrics_listener = args.metrics.map(metrics::server::bind).transpose()?;

    let mut ports = Vec::new();
    for (name, path) in &args.ports {
        let kind = PortKind::VhostUser {
            socket: path.display().to_string(),
        };
        ports.push(make_port(
            name,
            kind,
            queues,
            &nic,
            rules_for(&args, name)?,
        )?);
    }
    for (name, ifname) in &args.taps {
        let kind = PortKind::Tap {
            ifname: ifname.clone(),
        };
        ports.push(make_port(name, kind, 1, &nic, rules_for(&args, name)?)?);
    }
    for name in &args.sinks {
        ports.push(make_port(
            name,
            PortKind::Sink,
            1,
            &nic,
            rules_for(&args, name)?,
        )?);
    }
    for name in &args.discards {
        ports.push(make_port(
            name,
            PortKind::Discard,
            1,
            &nic,
            RuleSet::default(),
        )?);
    }
    for (name, _) in &args.generators {
        ports.push(make_port(
            name,
            PortKind::Generator,
            1,
            &nic,
            RuleSet::default(),
        )?);
    }
    for pcap in &args.pcaps {
        let Some(port) = ports.iter().find(|port| port.name == pcap.port) else {
            continue;
        };
        let capture = Capture::create(
            &pcap.file,
            &port.name,
            port.queue_counters.len(),
            pcap.queue,
        )
        .map_err(|e| DaemonError::Usage(e.to_string()))?;
        port.nic.set_capture(Some(capture));
    }
    let switch = Switch::new(
        ports.len(),
        SwitchConfig {
            ageing_secs: args.ageing,
            mac_limit: args.mac_limit as usize,
        },
    );
    let fabric = Arc::new(Fabric { switch, ports });

    crate::nic::clock::init();
    let signals = block_shutdown_signals();
    control::spawn(fabric.clone(), &args.control)?;
    if let Some(listener) = metrics_listener {
        if let Ok(addr) = listener.local_addr() {
            info!("metrics on http://{addr}/metrics");
        }
        metrics::server::spawn(fabric.clone(), listener)?;
    }
    for port in &fabric.ports {
        scheduler::spawn(port.nic.clone(), &port.name).map_err(DaemonError::Thread)?;
    }

    let vhost_config = PortConfig {
        queue_pairs: args.queues,
        max_queue_size: args.queue_size,
        mac: [0x52, 0x54, 0x00, 0x50, 0x52, 0x00],
        mtu: 1500,
        busy_poll: Duration::from_micros(args.busy_poll_us),
    };
    let mut id = 0;
    for (index, listener) in listeners.into_iter().enumerate() {
        let mut config = vhost_config.clone();
        config.mac[5] = index as u8;
        server::spawn(fabric.clone(), id, config, listener)?;
        id += 1;
    }
    for tap in taps {
        tap::start(fabric.clone(), id, tap).map_err(DaemonError::Thread)?;
        id += 1;
    }
    // A discard port's ring is never reached (the switch drops its frames), but attaching
    // one marks it connected, as a sink is.
    for _ in args.sinks.iter().chain(&args.discards) {
        fabric.ports[id].nic.attach_fixed_ring(Box::new(SinkRing));
        id += 1;
    }
    for (_, spec) in &args.generators {
        // A generator's own receive side discards, like a sink.
        fabric.ports[id].nic.attach_fixed_ring(Box::new(SinkRing));
        generator::spawn(fabric.clone(), id, spec.clone()).map_err(DaemonError::Thread)?;
        id += 1;
    }
    spawn_housekeeping(fabric.clone())?;
    info!(
        "prism-vnic running: {} port(s), {} queue pair(s) per vhost-user port, control socket {}",
        fabric.ports.len(),
        args.queues,
        args.control.display()
    );

    let signal = wait_for_shutdown(&signals)?;
    info!("signal {signal}: shutting down");
    for (_, path) in &args.ports {
        let _ = std::fs::remove_file(path);
    }
    let _ = std::fs::remove_file(&args.control);
    for port in &fabric.ports {
        // Flush the capture files before exit.
        port.nic.set_capture(None);
    }
    Ok(())
}

/// Advances the switch's coarse clock and ages its table once a second.
fn spawn_housekeeping(fabric: Arc<Fabric>) -> Result<(), DaemonError> {
    let start = Instant::now();
    thread::Builder::new()
        .name("housekeeping".into())
        .spawn(move || {
            loop {
                thread::sleep(Duration::from_secs(1));
                fabric.switch.set_time(start.elapsed().as_secs());
                fabric.switch.age();
            }
        })
        .map(|_| ())
        .map_err(DaemonError::Thread)
}
