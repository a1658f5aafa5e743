//! The `VhostUserBackend` implementation of one connection of a vhost-user port.
//!
//! One backend lives as long as one frontend connection; a reconnect gets a fresh one (with
//! fresh guest memory and fresh exit events), see `server`. Each queue pair has its own worker
//! thread and its own scratch state, so queues never share a lock on the data path.

use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use log::{debug, info, warn};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringT};
use vm_memory::GuestAddressSpace;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

use super::host_memory::SharedGuestMemory;
use super::memory_guard;
use super::ring_view;
use super::rx::{VhostRxRing, Vring};
use super::tx::{self, TxProgress, TxScratch, TxSender};
use super::virtio_net::{self, Negotiated};
use crate::stats::RateLimitedLog;
use crate::stats::{self, PortCounters};
use crate::switch::PortId;
use crate::switch::fabric::{Fabric, ForwardState};

/// Local vring index within a worker (each worker owns one pair).
const RX: u16 = 0;
const TX: u16 = 1;

/// Settings of a vhost-user port.
#[derive(Debug, Clone)]
pub struct PortConfig {
    pub queue_pairs: u16,
    pub max_queue_size: u16,
    pub mac: [u8; 6],
    pub mtu: u16,
    /// How long a TX worker polls its ring after draining it (0: notifications only).
    pub busy_poll: std::time::Duration,
}

/// State of one worker (queue pair), touched only by that worker's thread.
#[derive(Default)]
struct Worker {
    tx: TxScratch,
}

pub struct NetBackend {
    fabric: Arc<Fabric>,
    port: PortId,
    config: PortConfig,
    mem: SharedGuestMemory,
    acked_features: Arc<AtomicU64>,
    event_idx: AtomicBool,
    workers: Vec<Mutex<Worker>>,
    exit_notifiers: Mutex<Vec<EventNotifier>>,
    /// This connection's guest memory, registered for fault recovery.
    memory_registration: Mutex<Option<memory_guard::Registration>>,
    log: RateLimitedLog,
}

impl NetBackend {
    pub fn new(
        fabric: Arc<Fabric>,
        port: PortId,
        config: PortConfig,
        mem: SharedGuestMemory,
    ) -> Self {
        let pairs = usize::from(config.queue_pairs);
        NetBackend {
            fabric,
            port,
            config,
            mem,
            acked_features: Arc::new(AtomicU64::new(0)),
            event_idx: AtomicBool::new(false),
            workers: (0..pairs).map(|_| Mutex::new(Worker::default())).collect(),
            exit_notifiers: Mutex::new(Vec::new()),
            memory_registration: Mutex::new(None),
            log: RateLimitedLog::new(),
        }
    }

    fn name(&self) -> &str {
        &self.fabric.ports[self.port].name
    }

    /// Stops the worker threads of this connection.
    pub fn stop_workers(&self) {
        for notifier in self
            .exit_notifiers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = notifier.notify();
        }
    }

    /// Disconnects this connection's RX rings from the NIC (the frontend went away).
    pub fn detach(&self) {
        let nic = &self.fabric.ports[self.port].nic;
        for pair in 0..self.workers.len() {
            nic.attach_ring(pair, None);
        }
    }

    /// Makes each pair's RX vring its NIC queue's ring. Called with the vrings of this
    /// connection as soon as they exist, so a ring takes frames the moment it is enabled.
    pub fn attach_rings(&self, vrings: &[Vring]) {
        let port = &self.fabric.ports[self.port];
        for (pair, counters) in port.queue_counters.iter().enumerate() {
            let Some(rx) = vrings.get(2 * pair) else {
                break;
            };
            let ring = VhostRxRing::new(
                rx.clone(),
                self.mem.clone(),
                self.acked_features.clone(),
                counters.clone(),
                port.nic.port_counters.clone(),
                port.nic.retry_promises(),
            );
            port.nic.attach_ring(pair, Some(Box::new(ring)));
        }
    }

    /// With --busy-poll, watches the TX ring for up to that long before going back to
    /// notifications: a guest sending steadily then costs no kick and no wakeup per burst
    /// (vhost-net's busy_poll). Frames this worker left waiting for a full ring are tried
    /// again meanwhile (its retry promises hold). Returns whether chains arrived.
    fn busy_poll(&self, vring: &Vring, forward: &ForwardState) -> bool {
        if self.config.busy_poll.is_zero() {
            return false;
        }
        let start = std::time::Instant::now();
        while start.elapsed() < self.config.busy_poll {
            {
                let state = vring.get_ref();
                let mem = self.mem.memory();
                if ring_view::has_available(&state, &*mem) {
                    return true;
                }
            }
            if forward.has_promises() {
                self.fabric.retry_promised(forward);
            }
            std::hint::spin_loop();
        }
        false
    }

    fn run_tx(&self, pair: usize, worker: &mut Worker, vring: &Vring) {
        let port = &self.fabric.ports[self.port];
        let Some(counters) = port.queue_counters.get(pair) else {
            return;
        };
        let sender = TxSender {
            fabric: &self.fabric,
            port: self.port,
            counters,
            log: &self.log,
        };
        loop {
            if vring.is_quarantined() {
                return;
            }
            let progress = {
                let mut state = vring.get_mut();
                // Caught with the vring's lock held, so that the lock is not poisoned: see
                // `contain`.
                contain(&self.log, vring, &port.nic.port_counters, "TX", || {
                    let _ = state.disable_notification();
                    let progress =
                        tx::process_batch(&mut state, &self.mem, &mut worker.tx, &sender);
                    if tx::wants_interrupt(state.get_queue(), &self.mem, &mut worker.tx) {
                        let _ = state.signal_used_queue();
                    }
                    progress
                })
                .unwrap_or(TxProgress::Broken)
            };
            if vring.is_quarantined() {
                // What the failed batch left is dropped: its staged frames and its promises.
                worker.tx.forward.release_promises();
                worker.tx = TxScratch::default();
                return;
            }
            self.fabric.flush(&mut worker.tx.forward);
            match progress {
                TxProgress::More => continue,
                TxProgress::Broken => {
                    worker.tx.forward.release_promises();
                    return;
                }
                TxProgress::Drained => {
                    if self.busy_poll(vring, &worker.tx.forward) {
                        continue;
                    }
                    // Idle from here: frames left waiting need the guests' kicks now.
                    worker.tx.forward.release_promises();
                    // Re-enable notifications, then look again: the guest may have added
                    // chains after our last look and before it saw notifications on.
                    let more = vring.get_mut().enable_notification().unwrap_or(false);
                    if !more {
                        return;
                    }
                }
            }
        }
    }
}

/// Runs `work`; if it panics, quarantines `vring` (it stays unused until the frontend sets
/// it up again), counts and logs the failure, and returns `None`.
///
/// Why: a panic unwinding through a held vring lock poisons it, and vhost-user-backend
/// unwraps its locks, so every other thread that touches the ring (the senders of every
/// other port included) would panic in turn. Callers hold the ring's locks across this call,
/// so the panic is caught before any lock is released.
pub fn contain<R>(
    log: &RateLimitedLog,
    vring: &Vring,
    counters: &PortCounters,
    what: &str,
    work: impl FnOnce() -> R,
) -> Option<R> {
    match panic::catch_unwind(AssertUnwindSafe(work)) {
        Ok(result) => Some(result),
        Err(_) => {
            vring.quarantine();
            stats::inc(&counters.worker_failures);
            log.warn(|| {
                format!("{what} failed: ring quarantined until the guest sets it up again")
            });
            None
        }
    }
}

impl VhostUserBackend for NetBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        // RX and TX of each pair; QEMU keeps the control queue for itself.
        usize::from(self.config.queue_pairs) * 2
    }

    fn queue_num(&self) -> u64 {
        // QEMU's vhost-user netdev reads GET_QUEUE_NUM as queue pairs; answering pairs makes
        // `queues=` larger than ours fail with QEMU's own clear message.
        u64::from(self.config.queue_pairs)
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.config.max_queue_size)
    }

    fn features(&self) -> u64 {
        virtio_net::offered_features()
    }

    fn acked_features(&self, features: u64) {
        // QEMU sends SET_FEATURES once per queue pair: this must be idempotent.
        self.acked_features.store(features, Ordering::Relaxed);
        let negotiated = Negotiated::from_bits(features);
        self.fabric.ports[self.port].nic.set_offloads(negotiated.rx);
        debug!(
            "{}: features acked {features:#x}: {negotiated:?}",
            self.name()
        );
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        virtio_net::offered_protocol_features()
    }

    fn reset_device(&self) {
        info!("{}: device reset", self.name());
        stats::inc(&self.fabric.ports[self.port].nic.port_counters.resets);
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let config =
            virtio_net::config_space(self.config.mac, self.config.queue_pairs, self.config.mtu);
        let start = (offset as usize).min(config.len());
        let end = start.saturating_add(size as usize).min(config.len());
        let mut out = config[start..end].to_vec();
        // Bytes beyond what we define read as zero, as on a device with a shorter config.
        out.resize(size as usize, 0);
        out
    }

    fn update_memory(&self, mem: SharedGuestMemory) -> io::Result<()> {
        // The handler has already put the new table into the memory we share with it. A
        // region beyond its file's end would fault at its first access past the end: the
        // table is taken away again (every access is then refused) and the request fails.
        let table = mem.memory();
        let counters = &self.fabric.ports[self.port].nic.port_counters;
        if let Err(error) = memory_guard::check_regions(&table) {
            drop(table);
            mem.lock()
                .map_err(|_| io::Error::other("guest memory lock poisoned"))?
                .replace(vm_memory::GuestMemoryMmap::new());
            *self
                .memory_registration
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = None;
            stats::inc(&counters.memory_tables_refused);
            warn!("{}: memory table refused: {error}", self.name());
            return Err(io::Error::new(io::ErrorKind::InvalidInput, error));
        }
        // A file that shrinks later faults at the access: the fault is absorbed, see
        // `memory_guard`.
        let registration = memory_guard::Registration::new(&table, counters.clone());
        *self
            .memory_registration
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(registration);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.config.queue_pairs)
            .map(|pair| 0b11u64 << (2 * pair))
            .collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // A fresh pair per worker and per connection: a reused, already signalled eventfd
        // would stop the next connection's workers at once.
        let (consumer, notifier) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()?;
        let ours = notifier.try_clone().ok()?;
        self.exit_notifiers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ours);
        Some((consumer, notifier))
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        let (Some(worker), [_rx, tx]) = (self.workers.get(thread_id), vrings) else {
            return Ok(());
        };
        let mut worker = worker.lock().unwrap_or_else(|p| p.into_inner());
        let nic = &self.fabric.ports[self.port].nic;
        // Whatever fails on this worker's thread (delivering into other ports' rings
        // included) stays with this port: its TX ring is quarantined, the thread lives on.
        let _ = contain(&self.log, tx, &nic.port_counters, "worker", || {
            match device_event {
                // The guest posted RX buffers, or enabled the ring: frames waiting in the NIC
                // buffers go now, without waiting for traffic to push them.
                RX => {
                    nic.drain_waiting();
                }
                TX => self.run_tx(thread_id, &mut worker, tx),
                _ => {}
            }
        });
        Ok(())
    }
}
