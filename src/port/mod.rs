//! vhost-user ports: the virtio-net device a QEMU guest attaches to through a socket.
//!
//! `server` owns the socket and the connection lifecycle, `backend` implements the
//! vhost-user-backend trait (one worker thread per queue pair), `tx` reads frames from the
//! guest's TX ring into the switch, `ring` writes frames into its RX ring, and `chain` walks
//! the guest's descriptor chains with every fault named.

pub mod backend;
pub mod chain;
pub mod host_memory;
pub mod memory_guard;
pub mod ring_view;
pub mod rx;
pub mod server;
pub mod tx;
pub mod virtio_net;
pub mod vring;
