//! A vhost-user port's socket: accept a frontend, serve it until it goes away, listen again.
//!
//! `VhostUserDaemon::serve` recreates the socket for each connection (leaving a window with
//! no listener) and a daemon cannot be reused after a disconnect (SET_OWNER would fail with
//! "already claimed"). So the listener is created once and kept, and each connection gets a
//! new daemon, backend and guest memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;

use log::{error, info, warn};
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use super::backend::{NetBackend, PortConfig};
use super::vring::collect_created;
use crate::stats;
use crate::switch::PortId;
use crate::switch::fabric::Fabric;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: PathBuf,
        source: vhost::vhost_user::Error,
    },
    #[error("cannot start the thread of port {port}: {source}")]
    Thread {
        port: String,
        source: std::io::Error,
    },
}

/// A bound, listening vhost-user socket, ready to be served.
pub struct PortListener {
    path: PathBuf,
    listener: Listener,
}

impl PortListener {
    /// Binds the socket now, so that an unusable path fails at start, before any thread runs.
    /// Nothing at `path` is removed: the caller clears the way for the socket.
    pub fn bind(path: &Path) -> Result<Self, ServerError> {
        let listener = Listener::new(path, false).map_err(|source| ServerError::Listen {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(PortListener {
            path: path.to_path_buf(),
            listener,
        })
    }

    /// A socket already listening at `path`, inherited from whoever started prism-vnic
    /// (socket activation); it is not removed when dropped.
    pub fn inherited(path: &Path, listener: std::os::unix::net::UnixListener) -> Self {
        PortListener {
            path: path.to_path_buf(),
            listener: Listener::from(listener),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Serves the port's socket forever on its own thread: one frontend at a time, and a new
/// one after each disconnect.
pub fn spawn(
    fabric: Arc<Fabric>,
    port: PortId,
    config: PortConfig,
    mut listener: PortListener,
) -> Result<thread::JoinHandle<()>, ServerError> {
    let name = fabric.ports[port].name.clone();
    thread::Builder::new()
        .name(format!("port-{name}"))
        .spawn(move || {
            loop {
                serve_one(&fabric, port, &config, &mut listener);
            }
        })
        .map_err(|source| ServerError::Thread { port: name, source })
}

fn serve_one(fabric: &Arc<Fabric>, port: PortId, config: &PortConfig, listener: &mut PortListener) {
    let name = &fabric.ports[port].name;
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let backend = Arc::new(NetBackend::new(
        fabric.clone(),
        port,
        config.clone(),
        mem.clone(),
    ));
    let (daemon, vrings) =
        collect_created(|| VhostUserDaemon::new(format!("vhost-{name}"), backend.clone(), mem));
    let mut daemon = match daemon {
        Ok(daemon) => daemon,
        Err(e) => {
            // Only thread or epoll creation can fail here; back off rather than spin.
            error!("{name}: cannot create the vhost-user daemon: {e}");
            backend.stop_workers();
            thread::sleep(std::time::Duration::from_secs(1));
            return;
        }
    };
    backend.attach_rings(&vrings);
    info!(
        "{name}: waiting for a frontend on {}",
        listener.path().display()
    );
    if let Err(e) = daemon.start(&mut listener.listener) {
        warn!("{name}: accepting a frontend failed: {e}");
        backend.stop_workers();
        thread::sleep(std::time::Duration::from_millis(100));
        return;
    }
    stats::inc(&fabric.ports[port].nic.port_counters.connections);
    fabric.ports[port].nic.set_connected(true);
    info!("{name}: frontend connected");
    match daemon.wait() {
        Ok(()) => info!("{name}: frontend disconnected"),
        Err(e) => info!("{name}: connection ended: {e}"),
    }
    fabric.ports[port].nic.set_connected(false);
    backend.stop_workers();
    backend.detach();
    fabric.switch.flush_port(port);
    stats::inc(&fabric.ports[port].nic.port_counters.resets);
}
