//! Handing one frame to one receiving NIC, with the sender's offloads adapted to what the
//! receiving guest negotiated: a GSO frame stays whole for a guest that takes TSO and is cut
//! into segments in software for one that does not; a partial checksum is completed for a
//! guest without GUEST_CSUM. This is the work a real NIC's TSO and checksum engines do on
//! transmit.

use super::Nic;
use crate::packet::headers::{IpVersion, locate_l4};
use crate::packet::offload::{
    self, Offload, OffloadError, RxAction, VIRTIO_NET_HDR_LEN, segment_buffer_len,
};
use crate::stats::{self, QueueCounters};

/// Delivers `frame` (with the sender's validated `offload`) to `nic`. May complete the
/// checksum in `frame` in place, in which case `offload` is updated to say so, so that further
/// receivers of a flooded frame do not redo it. `segment_scratch` is the worker's reusable
/// buffer for software segmentation. Returns the RX queue index used, if any.
pub fn deliver(
    nic: &Nic,
    frame: &mut [u8],
    offload: &mut Offload,
    flow_hash: u32,
    segment_scratch: &mut Vec<u8>,
    sender: &QueueCounters,
) -> Result<Option<usize>, OffloadError> {
    let plan = offload.rx_plan(&nic.offloads());
    let mut header = [0u8; VIRTIO_NET_HDR_LEN];
    plan.header.write_virtio_hdr(&mut header, 1);
    match plan.action {
        RxAction::Deliver => Ok(nic.receive(flow_hash, &header, frame).map(|q| q.index)),
        RxAction::CompleteChecksum => {
            if let Some(csum) = offload.csum {
                offload::complete_checksum(frame, &csum)?;
                stats::inc(&sender.tx_csum_completed);
                *offload = Offload {
                    csum: None,
                    gso: None,
                    data_valid: true,
                };
            }
            Ok(nic.receive(flow_hash, &header, frame).map(|q| q.index))
        }
        RxAction::Segment => {
            let Some(gso) = offload.gso else {
                return Ok(nic.receive(flow_hash, &header, frame).map(|q| q.index));
            };
            let needed = segment_buffer_len(&gso);
            if segment_scratch.len() < needed {
                segment_scratch.resize(needed, 0);
            }
            let mut queue = None;
            offload::segment(frame, &gso, segment_scratch, |segment| {
                queue = nic.receive(flow_hash, &header, segment).map(|q| q.index);
            })?;
            stats::inc(&sender.tx_gso_segmented);
            Ok(queue)
        }
    }
}

/// A hash of the flow a frame belongs to (IP addresses and, for unfragmented TCP/UDP, ports),
/// so that a flow always lands on one RX queue; non-IP frames hash their MAC addresses.
pub fn flow_hash(frame: &[u8]) -> u32 {
    // FNV-1a: cheap and good enough to spread flows; the classifier's Toeplitz RSS replaces
    // it where a NIC-compatible hash matters.
    fn fnv(hash: u32, bytes: &[u8]) -> u32 {
        bytes
            .iter()
            .fold(hash, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
    }
    const SEED: u32 = 0x811c_9dc5;
    let Ok(layers) = locate_l4(frame) else {
        return fnv(SEED, frame.get(..12).unwrap_or(frame));
    };
    let addresses = match layers.ip {
        IpVersion::V4 => frame.get(layers.l3_offset + 12..layers.l3_offset + 20),
        IpVersion::V6 => frame.get(layers.l3_offset + 8..layers.l3_offset + 40),
    };
    let mut hash = fnv(SEED, addresses.unwrap_or_default());
    if !layers.fragment && matches!(layers.protocol, 6 | 17) {
        hash = fnv(
            hash,
            frame
                .get(layers.l4_offset..layers.l4_offset + 4)
                .unwrap_or_default(),
        );
    }
    hash
}
