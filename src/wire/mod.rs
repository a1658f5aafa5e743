//! Ports that are not vhost-user guests: a host tap device, a sink that discards, and a
//! generator that sends at full speed. They plug into the switch the way guests do.

pub mod generator;
pub mod sink;
pub mod tap;
