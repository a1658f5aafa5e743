//! prism-vnic: a vhost-user-net backend that emulates a multi-queue 100G NIC with hardware
//! priority classification, its ports joined by an emulated switch.
//!
//! A frame follows the modules in this order: `port` (a guest's TX ring, virtio-net header)
//! -> `switch` (learn, look up) -> `nic` (queue choice, buffering, offload adaptation) ->
//! `port` (the destination guest's RX ring). `wire` holds the other kinds of ports (tap,
//! sink). `packet` (views, checksums, segmentation) and `classify` (pure decisions) know
//! nothing of devices; `stats` is a leaf; `control` reads counters over a socket, `metrics` serves them to Prometheus.

pub mod activation;
pub mod classify;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod metrics;
pub mod nic;
pub mod packet;
pub mod port;
pub mod stats;
pub mod switch;
pub mod wire;
