//! Counters as plain atomics, named in `ethtool -S` vocabulary.
//!
//! Names are from the point of view of the guest's NIC, as `ethtool -S eth0` in the guest would
//! show them: `tx_*` counts what the guest sent (read from its TX ring), `rx_*` what was delivered
//! into its RX ring. Every drop or error has a counter of its own, so a test (or a user) can tell
//! a full ring from a malformed descriptor from a MAC-limit violation.
//!
//! Writers use relaxed `fetch_add`: several ports' TX workers may deliver into one RX queue, and
//! readers (the control socket) only need eventually consistent values. The per-frame packet
//! and byte counters, which have one writer at a time, use [`add_single_writer`].

use std::sync::atomic::{AtomicU64, Ordering};

mod log;
pub use log::RateLimitedLog;

/// Declares a struct of `AtomicU64` counters with a `snapshot` that lists them by name, so the
/// list of names cannot drift from the fields.
macro_rules! counters {
    ($(#[$meta:meta])* $name:ident { $($(#[doc = $doc:literal])* $field:ident),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Default, Debug)]
        pub struct $name {
            $($(#[doc = $doc])* pub $field: AtomicU64,)*
        }

        impl $name {
            /// Every counter's name, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$(stringify!($field)),*];

            /// Every counter's doc comment as one line, in the order of [`Self::NAMES`]
            /// (the help text of the Prometheus metrics).
            pub const HELP: &'static [&'static str] = &[$(concat!($($doc),*).trim_ascii()),*];

            /// The current values, in the order of [`Self::NAMES`].
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($field), self.$field.load(Ordering::Relaxed))),*]
            }

            /// Resets every counter to zero (a new connection starts counting from zero
            /// for its queues; port totals are kept separately).
            pub fn clear(&self) {
                $(self.$field.store(0, Ordering::Relaxed);)*
            }
        }
    };
}

counters! {
    /// Counters of one queue pair of a port.
    QueueCounters {
        /// Frames the guest sent on this TX queue (after software segmentation: one per frame read).
        tx_packets,
        /// Bytes of the frames the guest sent on this TX queue.
        tx_bytes,
        /// TX descriptor chains rejected: loop, longer than the queue, outside guest memory,
        /// device-writable descriptor, bad indirect table.
        tx_errors_chain,
        /// TX frames whose virtio-net header is short or asks for nonsense offloads.
        tx_errors_header,
        /// TX frames shorter than an Ethernet header or longer than the largest GSO frame.
        tx_errors_frame,
        /// The guest moved the avail index by more than the queue size: the queue stops until
        /// it is set up again.
        tx_errors_ring,
        /// GSO frames cut into segments in software for a receiver without the offload.
        tx_gso_segmented,
        /// Partial checksums completed in software for a receiver without GUEST_CSUM.
        tx_csum_completed,
        /// Frames dropped because the port's MAC limit was reached for a new source address.
        tx_drops_mac_limit,
        /// Frames with a multicast source address or addressed to the sender itself.
        tx_drops_invalid_address,
        /// Frames from a source address other than the one the port is locked to
        /// (`--mac-lock`).
        tx_drops_mac_lock,
        /// GSO frames whose gso_size is below `--min-gso-size`, for a receiver that would
        /// need them cut in software.
        tx_drops_gso_size,
        /// Frames delivered to the guest on this RX queue.
        rx_packets,
        /// Bytes of the frames delivered to the guest on this RX queue.
        rx_bytes,
        /// RX descriptor chains rejected (same reasons as `tx_errors_chain`, or read-only).
        rx_errors_chain,
        /// The guest moved the RX avail index by more than the queue size.
        rx_errors_ring,
        /// Frames dropped: the RX ring had no room and the NIC buffer for the class was full
        /// (or the ring could not be used).
        rx_drops_no_buffer,
        /// Frames dropped: larger than the guest's buffers (no MRG_RXBUF).
        rx_drops_too_big,
        /// Frames that waited in the NIC buffer (ring full, link busy or latency).
        rx_buffered,
        /// Frames of the high-priority class delivered (also counted in rx_packets).
        rx_high_packets,
        /// Bytes of the high-priority frames delivered (also counted in rx_bytes).
        rx_high_bytes,
        /// High-class frames dropped because their buffer was full (also in rx_drops_no_buffer).
        rx_high_drops_no_buffer,
        /// Frames dropped by a flow rule with action drop.
        rx_drops_rule,
        /// Frames whose headers were malformed or truncated; they took the default class.
        rx_parse_errors,
    }
}

counters! {
    /// Port-wide counters that belong to no queue.
    PortCounters {
        /// Frames for this port dropped because no RX queue of it was ready and enabled.
        rx_drops_not_ready,
        /// vhost-user connections accepted on this port's socket.
        connections,
        /// Device resets (GET_VRING_BASE on all rings, RESET_DEVICE, disconnects).
        resets,
        /// Worker failures (a panic) caught on this port's rings: the ring is quarantined
        /// until its guest sets it up again, and no other port is affected.
        worker_failures,
        /// Memory tables refused: a region larger than the file behind it.
        memory_tables_refused,
        /// Faults in this guest's memory absorbed (its file shrank under a mapping).
        guest_memory_faults,
        /// VXLAN port: datagrams from an address that is none of the remotes.
        vxlan_rx_drops_unknown_remote,
        /// VXLAN port: datagrams with another VNI than the port's.
        vxlan_rx_drops_vni,
        /// VXLAN port: datagrams too short for a VXLAN header and an Ethernet header.
        vxlan_rx_errors_short,
        /// VXLAN port: datagrams whose VXLAN header lacks the I flag (RFC 7348).
        vxlan_rx_errors_flags,
        /// VXLAN port: datagrams longer than the largest inner frame taken (jumbo).
        vxlan_rx_errors_too_big,
        /// VXLAN port: frames not sent because the socket's send buffer was full.
        vxlan_tx_drops_send,
        /// VXLAN port: frames not sent because the datagram is too big for the path (MTU).
        vxlan_tx_errors_too_big,
        /// Frames left out of the port's capture because its buffer was full: the capture
        /// file took writes more slowly than frames arrived (the frames were delivered).
        capture_drops_queue_full,
        /// Frames left out of the port's capture because writing its file failed (a full
        /// disk); the frames were delivered.
        capture_drops_write_error,
    }
}

counters! {
    /// Counters of the impairments (`netem`) of one class of one port, one per effect.
    NetemCounters {
        /// Frames dropped by the loss model (random or Gilbert-Elliott).
        netem_lost,
        /// Frames sent twice.
        netem_duplicated,
        /// Frames with one bit flipped.
        netem_corrupted,
        /// Frames sent at once, ahead of frames held for their delay.
        netem_reordered,
        /// Frames (and duplicates) held for a delay.
        netem_delayed,
        /// Frames to be held that were dropped because the delay buffer's byte budget was
        /// full (not a loss the model chose).
        netem_drops_budget,
    }
}

counters! {
    /// Counters of the control socket: one per reason a client is turned away.
    ControlCounters {
        /// Connections refused by the peer-credential check (not root, the daemon's user or
        /// the --control-group).
        denied,
        /// Connections refused because the most clients were already connected.
        too_many_clients,
        /// Requests longer than the request size limit (the connection is closed).
        oversize,
        /// Connections closed because a request did not arrive within --control-timeout.
        timed_out,
    }
}

counters! {
    /// Counters of the learning switch.
    SwitchCounters {
        /// Frames sent to every port but the ingress one (broadcast, multicast, unknown unicast).
        flooded,
        /// Frames sent to exactly one learned port.
        forwarded,
        /// Source addresses learned (new entries or moves between ports).
        learned,
        /// Entries removed because they were not seen for the ageing time.
        aged,
        /// Frames addressed to a MAC learned on the ingress port itself (filtered).
        filtered_same_port,
    }
}

/// Adds `value` to a relaxed counter.
#[inline]
pub fn add(counter: &AtomicU64, value: u64) {
    counter.fetch_add(value, Ordering::Relaxed);
}

/// Increments a relaxed counter.
#[inline]
pub fn inc(counter: &AtomicU64) {
    add(counter, 1);
}

/// Adds `value` to a counter that has one writer at a time (it is written under a lock, or
/// by one thread only): a plain load and store instead of a locked read-modify-write, which
/// costs as much as copying a small frame. Readers still see a monotonic value.
#[inline]
pub fn add_single_writer(counter: &AtomicU64, value: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(value),
        Ordering::Relaxed,
    );
}

/// Sums several snapshots of the same counter set, name by name.
pub fn sum<'a>(
    snapshots: impl IntoIterator<Item = &'a [(&'static str, u64)]>,
) -> Vec<(&'static str, u64)> {
    let mut total: Vec<(&'static str, u64)> = Vec::new();
    for snapshot in snapshots {
        if total.is_empty() {
            total = snapshot.to_vec();
            continue;
        }
        for (slot, (_, value)) in total.iter_mut().zip(snapshot) {
            slot.1 += value;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_lists_every_counter_by_name() {
        let queue = QueueCounters::default();
        inc(&queue.tx_errors_chain);
        add(&queue.rx_bytes, 1500);
        let snapshot = queue.snapshot();
        assert_eq!(snapshot.len(), QueueCounters::NAMES.len());
        assert!(snapshot.contains(&("tx_errors_chain", 1)));
        assert!(snapshot.contains(&("rx_bytes", 1500)));
    }

    #[test]
    fn every_counter_has_its_doc_comment_as_help() {
        for (names, help) in [
            (QueueCounters::NAMES, QueueCounters::HELP),
            (PortCounters::NAMES, PortCounters::HELP),
            (NetemCounters::NAMES, NetemCounters::HELP),
            (SwitchCounters::NAMES, SwitchCounters::HELP),
        ] {
            assert_eq!(names.len(), help.len());
            for (name, help) in names.iter().zip(help) {
                assert!(!help.is_empty(), "{name} has no doc comment");
                assert!(
                    !help.starts_with(' ') && !help.contains('\n'),
                    "{name}: {help:?}"
                );
            }
        }
        assert!(QueueCounters::HELP[0].starts_with("Frames the guest sent"));
    }

    #[test]
    fn sum_adds_counters_of_the_same_name() {
        let a = QueueCounters::default();
        let b = QueueCounters::default();
        add(&a.rx_packets, 2);
        add(&b.rx_packets, 3);
        let (sa, sb) = (a.snapshot(), b.snapshot());
        let total = sum([sa.as_slice(), sb.as_slice()]);
        assert!(total.contains(&("rx_packets", 5)));
    }

    #[test]
    fn clear_zeroes_everything() {
        let queue = QueueCounters::default();
        inc(&queue.rx_packets);
        queue.clear();
        assert!(queue.snapshot().iter().all(|(_, v)| *v == 0));
    }
}
