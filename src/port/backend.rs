//! The `VhostUserBackend` implementation of one connection of a vhost-user port.
//!
//! One backend lives as long as one frontend connection; a reconnect gets a fresh one (with
//! fresh guest memory and fresh exit events), see `server`. Each queue pair has its own
//! scratch state, so queues never share a lock on the data path; a worker thread serves one
//! or more pairs (`PortConfig::worker_threads`).

use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arrayvec::ArrayVec;
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
use super::virtio_net::{self, MAX_QUEUE_PAIRS, Negotiated};
use crate::stats::RateLimitedLog;
use crate::stats::{self, PortCounters};
use crate::switch::PortId;
use crate::switch::fabric::Fabric;

/// A vring's place within its pair: a thread's vrings are its pairs' RX and TX rings.
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
    /// Worker threads of a connection (at most `queue_pairs`): pair `p` is served by thread
    /// `p % worker_threads`.
    pub worker_threads: u16,
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

    /// The queue pairs served by worker thread `thread`: pair `p` belongs to thread
    /// `p % threads`, so the pairs a guest uses first (0, 1, ...) spread over the threads.
    fn thread_pairs(&self, thread: usize) -> impl Iterator<Item = usize> {
        let threads = usize::from(self.config.worker_threads.max(1));
        (thread..usize::from(self.config.queue_pairs)).step_by(threads)
    }

    /// With --busy-poll, watches the thread's TX rings for up to that long before going
    /// back to notifications: a guest sending steadily then costs no kick and no wakeup per
    /// burst (vhost-net's busy_poll). Frames the thread's workers left waiting for a full
    /// ring are tried again meanwhile (their retry promises hold). Returns the rings where
    /// chains arrived.
    fn busy_poll(&self, rings: &mut [TxRing<'_>]) -> u32 {
        if self.config.busy_poll.is_zero() {
            return 0;
        }
        let start = std::time::Instant::now();
        while start.elapsed() < self.config.busy_poll {
            let found = self.with_chains(rings);
            if found != 0 {
                return found;
            }
            for ring in rings.iter() {
                if ring.worker.tx.forward.has_promises() {
                    self.fabric.retry_promised(&ring.worker.tx.forward);
                }
            }
            std::hint::spin_loop();
        }
        0
    }

    /// The rings (bit `k` for `rings[k]`) where the guest has made chains available.
    fn with_chains(&self, rings: &[TxRing<'_>]) -> u32 {
        let mem = self.mem.memory();
        let mut found = 0;
        for (k, ring) in rings.iter().enumerate() {
            if !ring.vring.is_quarantined()
                && ring_view::has_available(&ring.vring.get_ref(), &*mem)
            {
                found |= 1 << k;
            }
        }
        found
    }

    /// Serves the TX rings of worker thread `thread`, starting with its ring `first` (the one
    /// that was kicked), until all of them are drained (and, with --busy-poll, stayed so).
    ///
    /// A thread may serve several queue pairs (`--worker-threads`): it then takes one batch
    /// from each ring with chains in turn, as a DPDK lcore polls its queues, so a guest
    /// that keeps one ring full cannot starve its other rings. Serving them from one thread
    /// instead of a thread per pair matters when the pairs share fewer CPUs than there are
    /// pairs: busy threads time-slicing one CPU leave each ring unserved for a scheduler
    /// slice at a time, while its guest keeps adding to it.
    fn run_tx(&self, thread: usize, first: usize, vrings: &[Vring]) {
        let port = &self.fabric.ports[self.port];
        let mut rings = ArrayVec::<TxRing<'_>, { MAX_QUEUE_PAIRS as usize }>::new();
        for (k, pair) in self.thread_pairs(thread).enumerate() {
            let (Some(vring), Some(worker), Some(counters)) = (
                vrings.get(2 * k + usize::from(TX)),
                self.workers.get(pair),
                port.queue_counters.get(pair),
            ) else {
                break;
            };
            rings.push(TxRing {
                vring,
                worker: worker.lock().unwrap_or_else(|p| p.into_inner()),
                sender: TxSender {
                    fabric: &self.fabric,
                    port: self.port,
                    counters,
                    log: &self.log,
                },
            });
        }
        if first >= rings.len() {
            return;
        }
        // Rings whose notifications this call turned off, and rings with chains to take.
        let mut polled: u32 = 0;
        let mut pending: u32 = 1 << first;
        loop {
            let mut more = 0;
            for k in bits(pending) {
                match self.tx_batch(&mut rings[k]) {
                    TxProgress::More => {
                        polled |= 1 << k;
                        more |= 1 << k;
                    }
                    TxProgress::Drained => polled |= 1 << k,
                    TxProgress::Broken => {
                        rings[k].worker.tx.forward.release_promises();
                        polled &= !(1 << k);
                    }
                }
            }
            // Every ring with chains gets the next turn, kicked or not: a kick that came
            // while this thread was busy waits in its event queue until the call returns.
            pending = if rings.len() > 1 {
                more | self.with_chains(&rings)
            } else {
                more
            };
            if pending != 0 {
                continue;
            }
            pending = self.busy_poll(&mut rings);
            if pending != 0 {
                continue;
            }
            // Idle from here: frames left waiting need the guests' kicks now.
            for ring in rings.iter_mut() {
                ring.worker.tx.forward.release_promises();
            }
            // Re-enable notifications, then look again: the guest may have added chains
            // after our last look and before it saw notifications on.
            for k in bits(polled) {
                let vring = rings[k].vring;
                if !vring.is_quarantined() && vring.get_mut().enable_notification().unwrap_or(false)
                {
                    pending |= 1 << k;
                }
            }
            polled = 0;
            if pending == 0 {
                return;
            }
        }
    }

    /// Takes one batch of chains from a TX ring and delivers what it staged.
    fn tx_batch(&self, ring: &mut TxRing<'_>) -> TxProgress {
        let TxRing {
            vring,
            worker,
            sender,
        } = ring;
        if vring.is_quarantined() {
            return TxProgress::Broken;
        }
        let counters = &self.fabric.ports[self.port].nic.port_counters;
        let progress = {
            let mut state = vring.get_mut();
            // Caught with the vring's lock held, so that the lock is not poisoned: see
            // `contain`.
            contain(&self.log, vring, counters, "TX", || {
                let _ = state.disable_notification();
                let progress = tx::process_batch(&mut state, &self.mem, &mut worker.tx, sender);
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
            return TxProgress::Broken;
        }
        self.fabric.flush(&mut worker.tx.forward);
        progress
    }
}

/// One TX ring of a worker thread, with its pair's worker state, for one `run_tx`.
struct TxRing<'a> {
    vring: &'a Vring,
    worker: MutexGuard<'a, Worker>,
    sender: TxSender<'a>,
}

/// The indices of the set bits of `mask`, lowest first.
fn bits(mut mask: u32) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (mask != 0).then(|| {
            let k = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            k
        })
    })
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
        (0..usize::from(self.config.worker_threads.clamp(1, self.config.queue_pairs)))
            .map(|thread| {
                self.thread_pairs(thread)
                    .fold(0u64, |mask, pair| mask | 0b11u64 << (2 * pair))
            })
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
        // The thread's vrings are its pairs' RX and TX rings, in pair order.
        let (local_pair, kind) = (usize::from(device_event / 2), device_event % 2);
        let Some(tx) = vrings.get(2 * local_pair + usize::from(TX)) else {
            return Ok(());
        };
        let nic = &self.fabric.ports[self.port].nic;
        match kind {
            // The guest posted RX buffers, or enabled the ring: frames waiting in the NIC
            // buffers go now, without waiting for traffic to push them. Whatever fails on
            // this thread (delivering into other ports' rings included) stays with this port.
            RX => {
                let _ = contain(&self.log, tx, &nic.port_counters, "worker", || {
                    nic.drain_waiting();
                });
            }
            // `run_tx` contains each batch's failure within its own ring.
            TX => self.run_tx(thread_id, local_pair, vrings),
            _ => {}
        }
        Ok(())
    }
}
