//! Putting a running prism-vnic together from the command line: the fabric of ports, the
//! sockets bound before any thread starts (so bad paths fail at once), the threads, and a
//! clean shutdown on SIGINT/SIGTERM that removes the sockets.

use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use log::info;

use crate::activation;
use crate::classify::rules::{RuleSet, RulesError};
use crate::classify::{Class, ClassifierError};
use crate::config::{Config, PortBackend, PortSpec, SocketSettings};
use crate::control::{self, paths};
use crate::metrics;
use crate::nic::capture::{Capture, CaptureError};
use crate::nic::netem::ClassScope;
use crate::nic::{Nic, NicConfig, scheduler};
use crate::port::backend::PortConfig;
use crate::port::server::{self, PortListener};
use crate::stats::{ControlCounters, PortCounters, QueueCounters};
use crate::switch::Switch;
use crate::switch::fabric::{Fabric, FabricPort, PortKind};
use crate::wire::sink::SinkRing;
use crate::wire::{generator, tap, vxlan};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("port {port}: {source}")]
    Rules {
        port: String,
        #[source]
        source: RulesError,
    },
    #[error("port {port}: {source}")]
    Nic {
        port: String,
        #[source]
        source: ClassifierError,
    },
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Path(#[from] paths::PathError),
    #[error(transparent)]
    Server(#[from] server::ServerError),
    #[error(transparent)]
    Tap(#[from] tap::TapError),
    #[error(transparent)]
    Vxlan(#[from] vxlan::VxlanError),
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error(transparent)]
    Metrics(#[from] metrics::server::MetricsError),
    #[error("socket activation: {0}")]
    Activation(#[from] activation::ActivationError),
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot wait for signals: {0}")]
    Signals(std::io::Error),
}

fn make_port(
    spec: &PortSpec,
    queues: usize,
    config: &NicConfig,
) -> Result<FabricPort, DaemonError> {
    let rules = match &spec.rules {
        Some(path) => RuleSet::load(path).map_err(|source| DaemonError::Rules {
            port: spec.name.clone(),
            source,
        })?,
        None => RuleSet::default(),
    };
    let queue_counters: Vec<Arc<QueueCounters>> = (0..queues)
        .map(|_| Arc::new(QueueCounters::default()))
        .collect();
    let nic = Nic::new(
        &queue_counters,
        Arc::new(PortCounters::default()),
        config,
        rules,
    )
    .map_err(|source| DaemonError::Nic {
        port: spec.name.clone(),
        source,
    })?;
    let kind = match &spec.backend {
        PortBackend::VhostUser { socket, .. } => PortKind::VhostUser {
            socket: socket.display().to_string(),
        },
        PortBackend::Tap { ifname } => PortKind::Tap {
            ifname: ifname.clone(),
        },
        PortBackend::Vxlan(spec) => PortKind::Vxlan { vni: spec.vni },
        PortBackend::Sink => PortKind::Sink,
        PortBackend::Discard => PortKind::Discard,
        PortBackend::Generator(_) => PortKind::Generator,
    };
    Ok(FabricPort {
        name: spec.name.clone(),
        kind,
        nic: Arc::new(nic),
        queue_counters,
    })
}

/// Binds a vhost-user socket where only a stale socket of ours may be replaced, and gives
/// it the configured mode and group.
fn bind_port_socket(path: &Path, sockets: &SocketSettings) -> Result<PortListener, DaemonError> {
    paths::prepare_parent(path, sockets.dir_mode)?;
    paths::clear_socket_path(path)?;
    let listener = PortListener::bind(path)?;
    paths::set_mode_and_group(path, sockets.mode, sockets.group)?;
    Ok(listener)
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
pub fn run(config: Config) -> Result<(), DaemonError> {
    let queue_pairs = usize::from(config.vhost.queue_pairs);
    // Sockets and files are born private, then given their configured modes: never, even
    // for a moment, what a loose umask would have made them.
    paths::strict_umask();

    // Bind everything first: a bad path or a missing tap fails before anything runs.
    // Sockets inherited from systemd (socket activation) are taken instead of bound, all of
    // them claimed or refused before anything is bound; only the sockets bound here are
    // removed at exit, the others belong to whoever made them.
    let mut inherited = activation::Inherited::from_env()?;
    let mut port_sockets = Vec::new();
    for spec in &config.ports {
        if let PortBackend::VhostUser { socket, .. } = &spec.backend {
            port_sockets.push(inherited.take_unix(&spec.name, socket)?);
        }
    }
    let control_listener = inherited.take_unix(activation::CONTROL, &config.control.path)?;
    let inherited_metrics = inherited.take_tcp(activation::METRICS)?;
    inherited.finish()?;
    let mut port_sockets = port_sockets.into_iter();
    let mut bound_here = Vec::new();
    let mut listeners = Vec::new();
    let mut taps = Vec::new();
    let mut vxlans = Vec::new();
    for spec in &config.ports {
        match &spec.backend {
            PortBackend::VhostUser { socket, mac } => {
                let listener = match port_sockets.next().flatten() {
                    Some(listener) => {
                        info!("{}: inherited socket {}", spec.name, socket.display());
                        PortListener::inherited(socket, listener)
                    }
                    None => {
                        let listener = bind_port_socket(socket, &config.sockets)?;
                        bound_here.push(socket.clone());
                        listener
                    }
                };
                listeners.push((spec.id, *mac, listener));
            }
            PortBackend::Tap { ifname } => taps.push((spec.id, tap::Tap::attach(ifname)?)),
            PortBackend::Vxlan(vxlan) => {
                vxlans.push((spec.id, vxlan::Vxlan::bind(&spec.name, vxlan)?));
            }
            _ => {}
        }
    }
    if control_listener.is_none() {
        paths::prepare_parent(&config.control.path, config.sockets.dir_mode)?;
        bound_here.push(config.control.path.clone());
    }
    let metrics_listener = match inherited_metrics {
        Some(listener) => Some(listener),
        None => config.metrics.map(metrics::server::bind).transpose()?,
    };

    let mut ports = Vec::new();
    for spec in &config.ports {
        let queues = match spec.backend {
            PortBackend::VhostUser { .. } => queue_pairs,
            _ => 1,
        };
        let port = make_port(spec, queues, &config.nic)?;
        for (class, settings) in [Class::High, Class::Normal].into_iter().zip(spec.netem) {
            if settings.is_some() {
                port.nic.set_netem(ClassScope::Only(class), settings);
            }
            // With the seed chosen for settings given without one: the run can be repeated.
            if let Some(in_force) = port.nic.netem.settings(class) {
                info!("netem on {} ({class} class): {in_force}", port.name);
            }
        }
        if let Some(capture) = &spec.capture {
            // Named by whoever started the daemon, so anywhere; but always a new file.
            let file = paths::create_capture_file(&capture.file)?;
            let capture = Capture::new(
                file,
                &capture.file,
                &port.name,
                port.queue_counters.len(),
                capture.queue,
                port.nic.port_counters.clone(),
            )?;
            port.nic.set_capture(Some(capture));
        }
        ports.push(port);
    }
    let switch = Switch::new(ports.len(), config.switch);
    for spec in &config.ports {
        if let Some(lock) = spec.mac_lock {
            switch.set_mac_lock(spec.id, lock);
        }
    }
    let fabric = Arc::new(Fabric { switch, ports });

    crate::nic::clock::init();
    let signals = block_shutdown_signals();
    paths::prepare_dir(&config.control.capture_dir, config.sockets.dir_mode)?;
    let counters = Arc::new(ControlCounters::default());
    match control_listener {
        Some(listener) => control::serve(fabric.clone(), listener, &config.control, counters)?,
        None => control::spawn(fabric.clone(), &config.control, counters)?,
    };
    if let Some(listener) = metrics_listener {
        if let Ok(addr) = listener.local_addr() {
            info!("metrics on http://{addr}/metrics");
        }
        metrics::server::spawn(fabric.clone(), listener)?;
    }
    for port in &fabric.ports {
        scheduler::spawn(port.nic.clone(), &port.name).map_err(DaemonError::Thread)?;
    }

    let worker_threads = config
        .vhost
        .worker_threads
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, |cpus| u16::try_from(cpus.get()).unwrap_or(u16::MAX))
        })
        .clamp(1, config.vhost.queue_pairs);
    for (id, mac, listener) in listeners {
        let port_config = PortConfig {
            queue_pairs: config.vhost.queue_pairs,
            max_queue_size: config.vhost.max_queue_size,
            mac,
            mtu: 1500,
            busy_poll: config.vhost.busy_poll,
            worker_threads,
        };
        server::spawn(fabric.clone(), id, port_config, listener)?;
    }
    for (id, tap) in taps {
        tap::start(fabric.clone(), id, tap).map_err(DaemonError::Thread)?;
    }
    for (id, vxlan) in vxlans {
        vxlan::start(fabric.clone(), id, vxlan).map_err(DaemonError::Thread)?;
    }
    for spec in &config.ports {
        match &spec.backend {
            // A discard port's ring is never reached (the switch drops its frames), but
            // attaching one marks it connected, as a sink is.
            PortBackend::Sink | PortBackend::Discard => {
                fabric.ports[spec.id]
                    .nic
                    .attach_fixed_ring(Box::new(SinkRing));
            }
            PortBackend::Generator(generator) => {
                // A generator's own receive side discards, like a sink.
                fabric.ports[spec.id]
                    .nic
                    .attach_fixed_ring(Box::new(SinkRing));
                generator::spawn(fabric.clone(), spec.id, generator.clone())
                    .map_err(DaemonError::Thread)?;
            }
            PortBackend::VhostUser { .. } | PortBackend::Tap { .. } | PortBackend::Vxlan(_) => {}
        }
    }
    spawn_housekeeping(fabric.clone())?;
    info!(
        "prism-vnic running: {} port(s), {} queue pair(s) per vhost-user port, control socket {}",
        fabric.ports.len(),
        config.vhost.queue_pairs,
        config.control.path.display()
    );

    let signal = wait_for_shutdown(&signals)?;
    info!("signal {signal}: shutting down");
    for path in &bound_here {
        paths::remove_own_socket(path);
    }
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
