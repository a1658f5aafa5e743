//! The virtio-net device as a vhost-user backend presents it: features, header, config space.

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use virtio_bindings::bindings::virtio_config::{VIRTIO_F_IN_ORDER, VIRTIO_F_VERSION_1};
use virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

use crate::nic::GuestOffloads;

/// Most queue pairs a port offers (`--queues`); the virtio spec allows more, QEMU's vhost-user
/// netdev takes up to 1024, 16 is what a 100G NIC in a test VM needs.
pub const MAX_QUEUE_PAIRS: u16 = 16;

/// Bit mask of a feature number.
const fn bit(feature: u32) -> u64 {
    1 << feature
}

/// The features we offer. QEMU keeps MAC, STATUS, CTRL_VQ and friends for itself and masks out
/// whatever it does not pass to a vhost-user peer.
///
/// IN_ORDER promises that every queue uses its buffers in the order the driver made them
/// available, which both directions do, bad chains included: TX completes each chain as it
/// takes it, RX takes chains in ring order and gives back (rewinds) what a frame did not
/// use. Drivers that take it (DPDK's virtio PMD; Linux 6.1 does not) then use their faster
/// in-order paths, as they do with DPDK's vhost.
pub fn offered_features() -> u64 {
    bit(VIRTIO_F_VERSION_1)
        | bit(VIRTIO_F_IN_ORDER)
        | bit(VIRTIO_NET_F_MQ)
        | bit(VIRTIO_NET_F_MRG_RXBUF)
        | bit(VIRTIO_RING_F_EVENT_IDX)
        | bit(VIRTIO_RING_F_INDIRECT_DESC)
        | bit(VIRTIO_NET_F_CSUM)
        | bit(VIRTIO_NET_F_GUEST_CSUM)
        | bit(VIRTIO_NET_F_GUEST_TSO4)
        | bit(VIRTIO_NET_F_GUEST_TSO6)
        | bit(VIRTIO_NET_F_GUEST_ECN)
        | bit(VIRTIO_NET_F_HOST_TSO4)
        | bit(VIRTIO_NET_F_HOST_TSO6)
        | bit(VIRTIO_NET_F_HOST_ECN)
        | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
}

/// The vhost-user protocol features we offer. Only what the vhost crate answers: an unknown
/// message closes the connection (STATUS would make QEMU send GET_STATUS, for instance).
/// REPLY_ACK is added by the crate itself.
pub fn offered_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::RESET_DEVICE
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
}

/// What the guest acknowledged, decoded once per SET_FEATURES.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Negotiated {
    pub mergeable_rx: bool,
    pub event_idx: bool,
    /// The offloads the guest accepts on receive.
    pub rx: GuestOffloads,
}

impl Negotiated {
    pub fn from_bits(acked: u64) -> Self {
        let has = |feature| acked & bit(feature) != 0;
        let csum = has(VIRTIO_NET_F_GUEST_CSUM);
        Negotiated {
            mergeable_rx: has(VIRTIO_NET_F_MRG_RXBUF),
            event_idx: has(VIRTIO_RING_F_EVENT_IDX),
            rx: GuestOffloads {
                csum,
                // TSO without GUEST_CSUM is not a valid combination (the spec requires it).
                tso4: csum && has(VIRTIO_NET_F_GUEST_TSO4),
                tso6: csum && has(VIRTIO_NET_F_GUEST_TSO6),
                ecn: csum && has(VIRTIO_NET_F_GUEST_ECN),
            },
        }
    }
}

/// `struct virtio_net_config` up to `mtu`: mac, status, max_virtqueue_pairs, mtu.
pub fn config_space(mac: [u8; 6], queue_pairs: u16, mtu: u16) -> [u8; 12] {
    let mut config = [0u8; 12];
    config[0..6].copy_from_slice(&mac);
    config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
    config[8..10].copy_from_slice(&queue_pairs.to_le_bytes());
    config[10..12].copy_from_slice(&mtu.to_le_bytes());
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_what_the_issue_lists_and_protocol_features_bit() {
        let features = offered_features();
        for feature in [
            VIRTIO_F_VERSION_1,
            VIRTIO_NET_F_MQ,
            VIRTIO_NET_F_MRG_RXBUF,
            VIRTIO_RING_F_EVENT_IDX,
        ] {
            assert_ne!(features & bit(feature), 0, "feature {feature}");
        }
        assert_ne!(
            features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
            0
        );
    }

    #[test]
    fn guest_tso_without_guest_csum_is_not_used() {
        let negotiated = Negotiated::from_bits(bit(VIRTIO_NET_F_GUEST_TSO4));
        assert!(!negotiated.rx.tso4);
        let negotiated =
            Negotiated::from_bits(bit(VIRTIO_NET_F_GUEST_TSO4) | bit(VIRTIO_NET_F_GUEST_CSUM));
        assert!(negotiated.rx.tso4 && negotiated.rx.csum);
    }

    #[test]
    fn config_space_reports_link_up_and_pairs() {
        let config = config_space([2, 0, 0, 0, 0, 1], 4, 1500);
        assert_eq!(&config[0..6], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(u16::from_le_bytes([config[6], config[7]]), 1);
        assert_eq!(u16::from_le_bytes([config[8], config[9]]), 4);
    }
}
