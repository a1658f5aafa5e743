//! Small traffic steps shared by the tests: send a tagged UDP frame, wait for it.

use super::frames::{VirtioNetHdr, mac, udp_frame, udp_tag};
use super::guest::{RxFrame, TestGuest};
use super::{HarnessError, Result, TIMEOUT};

/// The tagged UDP frame guest `src` sends to guest `dst` on UDP source port `flow`.
pub fn flow_frame(src: u8, dst: u8, flow: u16, tag: u32) -> Vec<u8> {
    udp_frame(src, mac(dst), dst, flow, 5000, tag, 64)
}

/// `from` sends a tagged frame to guest `to` on TX queue `pair`; returns the frame.
pub fn send_tagged(from: &mut TestGuest, pair: u16, to: u8, tag: u32) -> Result<Vec<u8>> {
    let frame = flow_frame(from.id(), to, 1000 + pair, tag);
    from.send(pair, VirtioNetHdr::plain(), &frame)?;
    Ok(frame)
}

/// Waits until a frame carrying `tag` arrives at `guest` on any queue; returns it. Frames
/// with other tags received meanwhile (e.g. floods held by the daemon) are discarded and
/// their buffers replaced, so they cannot starve the frame waited for.
pub fn expect_tag(guest: &mut TestGuest, tag: u32) -> Result<RxFrame> {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(HarnessError::Timeout {
                what: format!("frame with tag {tag} at guest {}", guest.id()),
                timeout: TIMEOUT,
            });
        }
        let frames = guest.recv_any(1, left)?;
        let mut wanted = None;
        for f in frames {
            if wanted.is_none() && udp_tag(&f.frame) == Some(tag) {
                wanted = Some(f);
            } else {
                guest.post_rx_buffers(f.pair, f.used_lens.len(), 2048)?;
            }
        }
        if let Some(f) = wanted {
            return Ok(f);
        }
    }
}

/// One good frame each way between `a` and `b` on `pair`, checked byte for byte: the proof
/// that both ports still work after whatever the test did before. Posts RX buffers first.
pub fn assert_traffic_both_ways(a: &mut TestGuest, b: &mut TestGuest, pair: u16, tag: u32) {
    a.post_rx_buffers_all(4, 2048)
        .expect("post RX buffers on a");
    b.post_rx_buffers_all(4, 2048)
        .expect("post RX buffers on b");
    let sent = send_tagged(a, pair, b.id(), tag).expect("a sends");
    let got = expect_tag(b, tag).expect("b receives a's frame");
    assert_eq!(got.frame, sent, "frame a -> b altered");
    let sent = send_tagged(b, pair, a.id(), tag + 1).expect("b sends");
    let got = expect_tag(a, tag + 1).expect("a receives b's frame");
    assert_eq!(got.frame, sent, "frame b -> a altered");
}
