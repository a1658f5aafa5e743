//! Handing one frame to one receiving NIC, with the sender's offloads adapted to what the
//! receiving guest negotiated: a GSO frame stays whole for a guest that takes TSO and is cut
//! into segments in software for one that does not; a partial checksum is completed for a
//! guest without GUEST_CSUM. This is the work a real NIC's TSO and checksum engines do on
//! transmit. The frame is classified once, before any segmentation: every segment of a GSO
//! frame belongs to the same flow.

use super::burst::STAGE_MAX_LEN;
use super::link::wire_bytes;
use super::{Arrival, Burst, FrameBytes, Nic, TxFrame};
use crate::packet::offload::{
    self, Offload, OffloadError, RxAction, VIRTIO_NET_HDR_LEN, segment_buffer_len,
};
use crate::stats::{self, QueueCounters};

/// Delivers `frame` (with the sender's validated `offload`) to `nic`, as arrived at
/// `arrival_ns` on the NIC's clock. May complete the checksum in `frame` in place, in which
/// case `offload` is updated to say so, so that further receivers of a flooded frame do not
/// redo it. `segment_scratch` is the worker's reusable buffer for software segmentation;
/// `burst` the sender's staging area for this NIC (see [`Nic::stage`]).
///
/// A split frame (see [`super::frame`]) is classified from its head and handed on split, so
/// its tail is copied once, into the receiving guest; it is gathered first when the head
/// did not hold every header (the parser stopped early), and when the NIC needs the frame
/// whole: a software checksum or segmentation, or a capture.
/// Returns the RX queue index used, if any.
pub fn deliver(
    nic: &Nic,
    frame: &mut TxFrame<'_>,
    offload: &mut Offload,
    arrival_ns: u64,
    segment_scratch: &mut Vec<u8>,
    burst: &mut Burst,
    sender: &QueueCounters,
) -> Result<Option<usize>, OffloadError> {
    let mut decision = nic.classify_for(burst, frame.head());
    if decision.parse_error.is_some() && frame.is_split() {
        // The headers may go on past the head: decide from the whole frame.
        decision = nic.classify_for(burst, frame.make_whole());
    }
    if offload.is_plain() {
        // Most frames: delivered as they are whatever the guest negotiated, so neither the
        // guest's offloads nor a header need working out per frame.
        if nic.is_capturing() {
            frame.make_whole();
        } else if frame.len() <= STAGE_MAX_LEN {
            // It will be staged: by reference, if its sender's buffer lasts.
            frame.fill_lasting();
        }
        let wire = wire_bytes(frame.len(), 1, 0);
        let arrival = Arrival {
            header: &offload::PLAIN_RX_HEADER,
            bytes: frame.bytes(),
            wire_bytes: wire,
            arrival_ns,
        };
        return Ok(nic.stage(burst, &decision, arrival));
    }
    let plan = offload.rx_plan(&nic.offloads());
    let mut header = [0u8; VIRTIO_NET_HDR_LEN];
    plan.header.write_virtio_hdr(&mut header, 1);
    let header = header;
    let arrival = |bytes, wire_bytes| Arrival {
        header: &header,
        bytes,
        wire_bytes,
        arrival_ns,
    };
    let len = frame.len();
    let whole_frame_wire = match offload.gso {
        Some(gso) => {
            let payload = len.saturating_sub(usize::from(gso.hdr_len));
            let segments = payload.div_ceil(usize::from(gso.size).max(1)).max(1) as u32;
            wire_bytes(len, segments, usize::from(gso.hdr_len))
        }
        None => wire_bytes(len, 1, 0),
    };
    match plan.action {
        RxAction::Deliver => {
            if nic.is_capturing() {
                frame.make_whole();
            }
            // Copied, never referred to: a later receiver of a flooded frame may complete
            // its checksum in place. (A plain frame, above, is never written to.)
            let bytes = frame.bytes_to_copy();
            let arrival = Arrival {
                header: &header,
                bytes,
                wire_bytes: whole_frame_wire,
                arrival_ns,
            };
            Ok(nic.stage(burst, &decision, arrival))
        }
        RxAction::CompleteChecksum => {
            let frame = frame.make_whole();
            if let Some(csum) = offload.csum {
                offload::complete_checksum(frame, &csum)?;
                stats::inc(&sender.tx_csum_completed);
                *offload = Offload {
                    csum: None,
                    gso: None,
                    data_valid: true,
                };
            }
            let wire = wire_bytes(len, 1, 0);
            let bytes = FrameBytes::whole(frame);
            Ok(nic.stage(burst, &decision, arrival(bytes, wire)))
        }
        RxAction::Segment => {
            let frame = frame.make_whole();
            let Some(gso) = offload.gso else {
                let wire = wire_bytes(len, 1, 0);
                let bytes = FrameBytes::whole(frame);
                return Ok(nic.stage(burst, &decision, arrival(bytes, wire)));
            };
            if gso.size < nic.min_gso_size() {
                // Cutting it would cost a segment per few bytes: up to 65,000 frames for
                // one, all for a receiver that did not ask for them.
                stats::inc(&sender.tx_drops_gso_size);
                return Ok(None);
            }
            let needed = segment_buffer_len(&gso);
            if segment_scratch.len() < needed {
                segment_scratch.resize(needed, 0);
            }
            let mut queue = None;
            offload::segment(frame, &gso, segment_scratch, |segment| {
                let wire = wire_bytes(segment.len(), 1, 0);
                let arrival = Arrival {
                    header: &header,
                    bytes: FrameBytes::whole(segment),
                    wire_bytes: wire,
                    arrival_ns,
                };
                queue = nic.stage(burst, &decision, arrival);
            })?;
            stats::inc(&sender.tx_gso_segmented);
            Ok(queue)
        }
    }
}
