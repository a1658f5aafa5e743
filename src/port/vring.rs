//! The vring type of our backend: vhost-user-backend's `VringMutex`, plus what the data path
//! must learn about the frontend's changes to a ring without taking the ring's lock.
//!
//! - Which vrings a new connection created. The NIC must know a connection's RX rings as
//!   soon as the frontend enables them, so that a frame arriving right after the frontend's
//!   SET_VRING_ENABLE is acked is delivered rather than dropped. vhost-user-backend creates
//!   the vrings inside `VhostUserDaemon::new` and only shows them to the backend when a
//!   worker handles an event, which may be later. So `new` records each vring it creates in
//!   a thread-local list that `server` arms around `VhostUserDaemon::new` (the vrings are
//!   created in index order, on that thread).
//! - Whether the ring may be used (enabled, ready, not quarantined), and a generation that
//!   every reconfiguration (size, base, addresses, readiness, enable) moves, so whoever caches
//!   something about the ring (the RX writer's avail index and heads) knows to drop it.
//! - A hook run when the ring is stopped or disabled, before the frontend's request is
//!   answered: the RX writer publishes the used entries it has written but not yet made
//!   visible, which the frontend would otherwise never see (it reads the used index back
//!   when it starts the ring again).

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vhost_user_backend::{VringMutex, VringStateGuard, VringStateMutGuard, VringT};
use virtio_queue::Error as VirtQueError;

use super::host_memory::SharedGuestMemory;

/// What runs when a ring stops or is disabled (see the module).
pub type StopHook = Box<dyn Fn(&PortVring) + Send + Sync>;

#[derive(Clone)]
pub struct PortVring {
    state: VringMutex<SharedGuestMemory>,
    status: Arc<RingStatus>,
}

/// What the data path reads about a ring without its lock.
#[derive(Default)]
struct RingStatus {
    /// SET_VRING_ENABLE (or SET_FEATURES without PROTOCOL_FEATURES).
    enabled: AtomicBool,
    /// Set up by the frontend and not stopped by GET_VRING_BASE.
    ready: AtomicBool,
    /// A worker failed while using the ring: it stays unused until the frontend sets it up
    /// again (see [`PortVring::quarantine`]).
    quarantined: AtomicBool,
    /// Moved by every reconfiguration.
    generation: AtomicU64,
    on_stop: Mutex<Option<StopHook>>,
}

impl PortVring {
    /// Enabled, ready and not quarantined.
    pub fn is_usable(&self) -> bool {
        self.status.enabled.load(Ordering::Acquire)
            && self.status.ready.load(Ordering::Acquire)
            && !self.status.quarantined.load(Ordering::Acquire)
    }

    pub fn is_quarantined(&self) -> bool {
        self.status.quarantined.load(Ordering::Acquire)
    }

    /// Takes the ring out of use after a worker failed on it, until the frontend sets it up
    /// again (a driver reset does). Returns false if it already was.
    pub fn quarantine(&self) -> bool {
        let was = self.status.quarantined.swap(true, Ordering::AcqRel);
        self.reconfigured();
        !was
    }

    /// The ring's configuration generation (see the module).
    pub fn generation(&self) -> u64 {
        self.status.generation.load(Ordering::Acquire)
    }

    /// Sets what runs when the ring stops or is disabled (one hook per ring: the RX writer's).
    pub fn on_stop(&self, hook: Option<StopHook>) {
        *self
            .status
            .on_stop
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = hook;
    }

    fn reconfigured(&self) {
        self.status.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// A reconfiguration by the frontend: moves the generation and lifts a quarantine (the
    /// frontend is setting the ring up anew).
    fn set_up_again(&self) {
        self.status.quarantined.store(false, Ordering::Release);
        self.reconfigured();
    }

    fn stopped(&self) {
        self.reconfigured();
        let hook = self
            .status
            .on_stop
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(hook) = hook.as_ref() {
            hook(self);
        }
    }
}

thread_local! {
    static CREATED: RefCell<Option<Vec<PortVring>>> = const { RefCell::new(None) };
}

/// Runs `create` and returns the vrings it created, in creation order.
pub fn collect_created<R>(create: impl FnOnce() -> R) -> (R, Vec<PortVring>) {
    CREATED.with(|created| *created.borrow_mut() = Some(Vec::new()));
    let result = create();
    let vrings = CREATED
        .with(|created| created.borrow_mut().take())
        .unwrap_or_default();
    (result, vrings)
}

impl<'a> VringStateGuard<'a, SharedGuestMemory> for PortVring {
    type G = <VringMutex<SharedGuestMemory> as VringStateGuard<'a, SharedGuestMemory>>::G;
}

impl<'a> VringStateMutGuard<'a, SharedGuestMemory> for PortVring {
    type G = <VringMutex<SharedGuestMemory> as VringStateMutGuard<'a, SharedGuestMemory>>::G;
}

impl VringT<SharedGuestMemory> for PortVring {
    fn new(mem: SharedGuestMemory, max_queue_size: u16) -> Result<Self, VirtQueError> {
        let vring = PortVring {
            state: VringMutex::new(mem, max_queue_size)?,
            status: Arc::default(),
        };
        CREATED.with(|created| {
            if let Some(list) = created.borrow_mut().as_mut() {
                list.push(vring.clone());
            }
        });
        Ok(vring)
    }

    fn get_ref(&self) -> <Self as VringStateGuard<'_, SharedGuestMemory>>::G {
        self.state.get_ref()
    }

    fn get_mut(&self) -> <Self as VringStateMutGuard<'_, SharedGuestMemory>>::G {
        self.state.get_mut()
    }

    fn add_used(&self, desc_index: u16, len: u32) -> Result<(), VirtQueError> {
        self.state.add_used(desc_index, len)
    }

    fn signal_used_queue(&self) -> io::Result<()> {
        self.state.signal_used_queue()
    }

    fn enable_notification(&self) -> Result<bool, VirtQueError> {
        self.state.enable_notification()
    }

    fn disable_notification(&self) -> Result<(), VirtQueError> {
        self.state.disable_notification()
    }

    fn needs_notification(&self) -> Result<bool, VirtQueError> {
        self.state.needs_notification()
    }

    fn set_enabled(&self, enabled: bool) {
        self.state.set_enabled(enabled);
        self.status.enabled.store(enabled, Ordering::Release);
        if enabled {
            self.reconfigured();
        } else {
            self.stopped();
        }
    }

    fn set_queue_info(
        &self,
        desc_table: u64,
        avail_ring: u64,
        used_ring: u64,
    ) -> Result<(), VirtQueError> {
        let result = self.state.set_queue_info(desc_table, avail_ring, used_ring);
        self.set_up_again();
        result
    }

    fn queue_next_avail(&self) -> u16 {
        self.state.queue_next_avail()
    }

    fn set_queue_next_avail(&self, base: u16) {
        self.state.set_queue_next_avail(base);
        self.set_up_again();
    }

    fn set_queue_next_used(&self, idx: u16) {
        self.state.set_queue_next_used(idx);
        self.set_up_again();
    }

    fn queue_used_idx(&self) -> Result<u16, VirtQueError> {
        self.state.queue_used_idx()
    }

    fn set_queue_size(&self, num: u16) {
        self.state.set_queue_size(num);
        self.set_up_again();
    }

    fn set_queue_event_idx(&self, enabled: bool) {
        self.state.set_queue_event_idx(enabled);
        self.reconfigured();
    }

    fn set_queue_ready(&self, ready: bool) {
        self.state.set_queue_ready(ready);
        self.status.ready.store(ready, Ordering::Release);
        if ready {
            self.reconfigured();
        } else {
            self.stopped();
        }
    }

    fn set_kick(&self, file: Option<File>) {
        self.state.set_kick(file)
    }

    fn read_kick(&self) -> io::Result<bool> {
        self.state.read_kick()
    }

    fn set_call(&self, file: Option<File>) {
        self.state.set_call(file)
    }

    fn set_err(&self, file: Option<File>) {
        self.state.set_err(file)
    }
}
