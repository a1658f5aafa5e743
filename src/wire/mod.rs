//! Ports that are not vhost-user guests: a host tap device, a VXLAN tunnel to other hosts,
//! a sink that discards, and a generator that sends at full speed. They plug into the switch the way guests do.

pub mod generator;
pub mod sink;
pub mod tap;
pub mod vxlan;

use crate::nic::GuestOffloads;

/// What a host-side receiver (a tap with TUNSETOFFLOAD, a sink) takes: every offload, so the
/// switch never segments or checksums in software for it.
pub const ALL_OFFLOADS: GuestOffloads = GuestOffloads {
    csum: true,
    tso4: true,
    tso6: true,
    ecn: true,
};
