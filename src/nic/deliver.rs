//! Handing one frame to one receiving NIC, with the sender's offloads adapted to what the
//! receiving guest negotiated: a GSO frame stays whole for a guest that takes TSO and is cut
//! into segments in software for one that does not; a partial checksum is completed for a
//! guest without GUEST_CSUM. This is the work a real NIC's TSO and checksum engines do on
//! transmit. The frame is classified once, before any segmentation: every segment of a GSO
//! frame belongs to the same flow.

use super::link::wire_bytes;
use super::{Burst, Nic};
use crate::packet::offload::{
    self, Offload, OffloadError, RxAction, VIRTIO_NET_HDR_LEN, segment_buffer_len,
};
use crate::stats::{self, QueueCounters};

/// Delivers `frame` (with the sender's validated `offload`) to `nic`, as arrived at
/// `arrival_ns` on the NIC's clock. May complete the checksum in `frame` in place, in which
/// case `offload` is updated to say so, so that further receivers of a flooded frame do not
/// redo it. `segment_scratch` is the worker's reusable buffer for software segmentation;
/// `burst` the sender's staging area for this NIC (see [`Nic::stage`]).
/// Returns the RX queue index used, if any.
pub fn deliver(
    nic: &Nic,
    frame: &mut [u8],
    offload: &mut Offload,
    arrival_ns: u64,
    segment_scratch: &mut Vec<u8>,
    burst: &mut Burst,
    sender: &QueueCounters,
) -> Result<Option<usize>, OffloadError> {
    let decision = nic.classify(frame);
    let plan = offload.rx_plan(&nic.offloads());
    let mut header = [0u8; VIRTIO_NET_HDR_LEN];
    plan.header.write_virtio_hdr(&mut header, 1);
    let whole_frame_wire = |frame: &[u8]| match offload.gso {
        Some(gso) => {
            let payload = frame.len().saturating_sub(usize::from(gso.hdr_len));
            let segments = payload.div_ceil(usize::from(gso.size).max(1)).max(1) as u32;
            wire_bytes(frame.len(), segments, usize::from(gso.hdr_len))
        }
        None => wire_bytes(frame.len(), 1, 0),
    };
    match plan.action {
        RxAction::Deliver => {
            let wire = whole_frame_wire(frame);
            Ok(nic.stage(burst, &decision, &header, frame, wire, arrival_ns))
        }
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
            let wire = wire_bytes(frame.len(), 1, 0);
            Ok(nic.stage(burst, &decision, &header, frame, wire, arrival_ns))
        }
        RxAction::Segment => {
            let Some(gso) = offload.gso else {
                let wire = wire_bytes(frame.len(), 1, 0);
                return Ok(nic.stage(burst, &decision, &header, frame, wire, arrival_ns));
            };
            let needed = segment_buffer_len(&gso);
            if segment_scratch.len() < needed {
                segment_scratch.resize(needed, 0);
            }
            let mut queue = None;
            offload::segment(frame, &gso, segment_scratch, |segment| {
                let wire = wire_bytes(segment.len(), 1, 0);
                queue = nic.stage(burst, &decision, &header, segment, wire, arrival_ns);
            })?;
            stats::inc(&sender.tx_gso_segmented);
            Ok(queue)
        }
    }
}
