//! The vring type of our backend: vhost-user-backend's `VringMutex`, plus a way to learn
//! which vrings a new connection created.
//!
//! The NIC must know a connection's RX rings as soon as the frontend enables them, so that a
//! frame arriving right after the frontend's SET_VRING_ENABLE is acked is delivered rather
//! than dropped. vhost-user-backend creates the vrings inside `VhostUserDaemon::new` and only
//! shows them to the backend when a worker handles an event, which may be later. So `new`
//! records each vring it creates in a thread-local list that `server` arms around
//! `VhostUserDaemon::new` (the vrings are created in index order, on that thread).

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use vhost_user_backend::{VringMutex, VringStateGuard, VringStateMutGuard, VringT};
use virtio_queue::Error as VirtQueError;
use vm_memory::GuestAddressSpace;

#[derive(Clone)]
pub struct PortVring<M: GuestAddressSpace>(VringMutex<M>, Arc<Usable>);

/// Whether the frontend has the vring enabled and ready, readable without the vring's lock
/// (the NIC asks for every frame which queues it may use).
#[derive(Default)]
struct Usable {
    enabled: AtomicBool,
    ready: AtomicBool,
}

impl<M: GuestAddressSpace> PortVring<M> {
    /// Enabled (SET_VRING_ENABLE) and ready (set up, not stopped by GET_VRING_BASE).
    pub fn is_usable(&self) -> bool {
        self.1.enabled.load(Ordering::Acquire) && self.1.ready.load(Ordering::Acquire)
    }
}

thread_local! {
    static CREATED: RefCell<Option<Vec<Box<dyn std::any::Any>>>> = const { RefCell::new(None) };
}

/// Runs `create` and returns the vrings it created, in creation order.
pub fn collect_created<M, R>(create: impl FnOnce() -> R) -> (R, Vec<PortVring<M>>)
where
    M: GuestAddressSpace + 'static,
{
    CREATED.with(|created| *created.borrow_mut() = Some(Vec::new()));
    let result = create();
    let vrings = CREATED
        .with(|created| created.borrow_mut().take())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|any| any.downcast::<PortVring<M>>().ok().map(|boxed| *boxed))
        .collect();
    (result, vrings)
}

impl<'a, M: 'a + GuestAddressSpace> VringStateGuard<'a, M> for PortVring<M> {
    type G = <VringMutex<M> as VringStateGuard<'a, M>>::G;
}

impl<'a, M: 'a + GuestAddressSpace> VringStateMutGuard<'a, M> for PortVring<M> {
    type G = <VringMutex<M> as VringStateMutGuard<'a, M>>::G;
}

impl<M: 'static + GuestAddressSpace> VringT<M> for PortVring<M> {
    fn new(mem: M, max_queue_size: u16) -> Result<Self, VirtQueError> {
        let vring = PortVring(VringMutex::new(mem, max_queue_size)?, Arc::default());
        CREATED.with(|created| {
            if let Some(list) = created.borrow_mut().as_mut() {
                list.push(Box::new(vring.clone()));
            }
        });
        Ok(vring)
    }

    fn get_ref(&self) -> <Self as VringStateGuard<'_, M>>::G {
        self.0.get_ref()
    }

    fn get_mut(&self) -> <Self as VringStateMutGuard<'_, M>>::G {
        self.0.get_mut()
    }

    fn add_used(&self, desc_index: u16, len: u32) -> Result<(), VirtQueError> {
        self.0.add_used(desc_index, len)
    }

    fn signal_used_queue(&self) -> io::Result<()> {
        self.0.signal_used_queue()
    }

    fn enable_notification(&self) -> Result<bool, VirtQueError> {
        self.0.enable_notification()
    }

    fn disable_notification(&self) -> Result<(), VirtQueError> {
        self.0.disable_notification()
    }

    fn needs_notification(&self) -> Result<bool, VirtQueError> {
        self.0.needs_notification()
    }

    fn set_enabled(&self, enabled: bool) {
        self.0.set_enabled(enabled);
        self.1.enabled.store(enabled, Ordering::Release);
    }

    fn set_queue_info(
        &self,
        desc_table: u64,
        avail_ring: u64,
        used_ring: u64,
    ) -> Result<(), VirtQueError> {
        self.0.set_queue_info(desc_table, avail_ring, used_ring)
    }

    fn queue_next_avail(&self) -> u16 {
        self.0.queue_next_avail()
    }

    fn set_queue_next_avail(&self, base: u16) {
        self.0.set_queue_next_avail(base)
    }

    fn set_queue_next_used(&self, idx: u16) {
        self.0.set_queue_next_used(idx)
    }

    fn queue_used_idx(&self) -> Result<u16, VirtQueError> {
        self.0.queue_used_idx()
    }

    fn set_queue_size(&self, num: u16) {
        self.0.set_queue_size(num)
    }

    fn set_queue_event_idx(&self, enabled: bool) {
        self.0.set_queue_event_idx(enabled)
    }

    fn set_queue_ready(&self, ready: bool) {
        self.0.set_queue_ready(ready);
        self.1.ready.store(ready, Ordering::Release);
    }

    fn set_kick(&self, file: Option<File>) {
        self.0.set_kick(file)
    }

    fn read_kick(&self) -> io::Result<bool> {
        self.0.read_kick()
    }

    fn set_call(&self, file: Option<File>) {
        self.0.set_call(file)
    }

    fn set_err(&self, file: Option<File>) {
        self.0.set_err(file)
    }
}
