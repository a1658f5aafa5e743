//! A frame's bytes on their way from a sender to the NICs it is delivered to.
//!
//! A small frame is copied out of the sending guest whole: the copy is cheap and the switch,
//! the classifier and the NIC then work on one slice. A large frame from a vhost-user port is
//! not: only its head (every header the switch, the classifier and the offload checks read)
//! is copied into the sender's buffer, and the rest stays in the sending guest's memory until
//! the receiving NIC copies it straight into the receiving guest's buffers. That is one copy
//! of the payload instead of two (guest to buffer, buffer to guest), which at 9000 bytes is
//! most of the cost of a frame.
//!
//! Nothing ever parses the tail, so a sending guest that rewrites its buffer while we copy
//! changes only its own payload, never a decision already made from the head. Whatever needs
//! the whole frame in one place (a software checksum or segmentation, a capture, a NIC
//! buffer when the ring is full) gathers it: [`TxFrame::make_whole`] or
//! [`FrameBytes::copy_to`].

use crate::packet::copy::copy_bytes;

/// `len` bytes of guest memory at host address `host`, translated and bounds-checked by the
/// port that owns the memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostPiece {
    pub host: usize,
    pub len: u32,
}

/// The byte ranges `skip..skip + len` of `pieces` (clipped to what they hold), as host
/// address and length, piece by piece: how both a split frame's tail (read) and a guest's RX
/// buffers (written) are walked.
pub fn ranges(
    pieces: &[HostPiece],
    skip: usize,
    len: usize,
) -> impl Iterator<Item = (usize, usize)> {
    let mut skip = skip;
    let mut left = len;
    pieces
        .iter()
        .map_while(move |piece| {
            if left == 0 {
                return None;
            }
            let piece_len = piece.len as usize;
            if skip >= piece_len {
                skip -= piece_len;
                return Some(None);
            }
            let take = (piece_len - skip).min(left);
            let range = (piece.host + skip, take);
            skip = 0;
            left -= take;
            Some(Some(range))
        })
        .flatten()
}

/// The part of a frame still in the sending guest's memory: `len` bytes of `pieces`, starting
/// `skip` bytes into them.
#[derive(Clone, Copy, Debug)]
struct GuestTail<'a> {
    pieces: &'a [HostPiece],
    skip: usize,
    len: usize,
}

impl GuestTail<'_> {
    /// Copies tail bytes `from..from + len` to `dst` (which may be guest memory too: the
    /// ranges may even overlap when one guest owns both ports, hence `ptr::copy`).
    ///
    /// # Safety
    /// `dst` must be valid for `len` bytes of writes; the pieces must be readable (the
    /// contract of [`TxFrame::split`]); `from + len <= self.len`.
    unsafe fn copy_to_ptr(&self, from: usize, len: usize, dst: *mut u8) {
        let mut done = 0;
        for (host, take) in ranges(self.pieces, self.skip + from, len) {
            // SAFETY: `ranges` stays within the pieces, which are readable; `dst` has room
            // for `len` bytes and `ranges` yields at most `len` in all.
            unsafe { copy_bytes(host as *const u8, dst.add(done), take) };
            done += take;
        }
    }
}

/// A frame's bytes, read-only: `head` and, for a split frame, a tail in guest memory.
#[derive(Clone, Copy, Debug)]
pub struct FrameBytes<'a> {
    head: &'a [u8],
    tail: Option<GuestTail<'a>>,
    /// Whole, and staying as it is until the sender's flush (see [`TxFrame::lasting`]).
    lasting: bool,
}

impl<'a> FrameBytes<'a> {
    /// A frame held whole in one slice.
    pub fn whole(bytes: &'a [u8]) -> Self {
        FrameBytes {
            head: bytes,
            tail: None,
            lasting: false,
        }
    }

    pub fn len(&self) -> usize {
        self.head.len() + self.tail.map_or(0, |tail| tail.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame's bytes if its sender promised to keep them, unchanged, until its next
    /// flush (see [`TxFrame::lasting`]): a burst may then refer to them instead of copying.
    pub(super) fn lasting(&self) -> Option<&'a [u8]> {
        (self.lasting && self.tail.is_none()).then_some(self.head)
    }

    /// The frame as one slice, if it is held whole.
    pub fn as_whole(&self) -> Option<&'a [u8]> {
        match self.tail {
            None => Some(self.head),
            Some(_) => None,
        }
    }

    /// Copies the frame's bytes `from..from + len` (clipped to the frame) to `dst`; returns
    /// how many.
    ///
    /// # Safety
    /// `dst` must be valid for writes of the returned number of bytes, at most `len`.
    pub unsafe fn copy_to_ptr(&self, from: usize, len: usize, dst: *mut u8) -> usize {
        let len = len.min(self.len().saturating_sub(from));
        let mut done = 0;
        if from < self.head.len() {
            done = (self.head.len() - from).min(len);
            // SAFETY: `from + done` is within the head; `dst` has room for `len >= done`.
            unsafe { copy_bytes(self.head.as_ptr().add(from), dst, done) };
        }
        if done < len
            && let Some(tail) = &self.tail
        {
            let tail_from = from + done - self.head.len();
            // SAFETY: `tail_from + (len - done) <= tail.len` since `from + len <= self.len()`;
            // `dst + done` has room for the rest.
            unsafe { tail.copy_to_ptr(tail_from, len - done, dst.add(done)) };
        }
        len
    }

    /// Copies bytes from `from` on into `out` (as many as fit); returns how many.
    pub fn copy_to(&self, from: usize, out: &mut [u8]) -> usize {
        // SAFETY: `out` is valid for `out.len()` bytes, the most `copy_to_ptr` writes.
        unsafe { self.copy_to_ptr(from, out.len(), out.as_mut_ptr()) }
    }

    /// Calls `use_bytes` with the frame in one slice: its own for a whole frame, a gathered
    /// copy for a split one (for the rare consumers that need one: a capture, a ring that
    /// cannot copy from the pieces).
    pub fn with_whole<R>(&self, use_bytes: impl FnOnce(&[u8]) -> R) -> R {
        match self.as_whole() {
            Some(bytes) => use_bytes(bytes),
            None => {
                let mut bytes = Vec::with_capacity(self.len());
                self.extend_vec(&mut bytes);
                use_bytes(&bytes)
            }
        }
    }

    /// Appends the whole frame to `out`.
    pub fn extend_vec(&self, out: &mut Vec<u8>) {
        match self.as_whole() {
            Some(bytes) => out.extend_from_slice(bytes),
            None => {
                // Straight into the spare capacity: zeroing it first would cost as much as
                // the copy.
                let len = self.len();
                out.reserve(len);
                let start = out.len();
                // SAFETY: the spare capacity holds at least `len` bytes, and `copy_to_ptr`
                // writes exactly `len` (the whole frame) before the length covers them.
                unsafe {
                    let copied = self.copy_to_ptr(0, len, out.as_mut_ptr().add(start));
                    out.set_len(start + copied);
                }
            }
        }
    }
}

/// A frame as its sender holds it while the switch forwards it: the first `gathered` bytes in
/// the sender's buffer, the rest (if any) still in the sending guest's memory.
pub struct TxFrame<'a> {
    buf: &'a mut [u8],
    gathered: usize,
    tail: Option<GuestTail<'a>>,
    lasting: bool,
}

impl<'a> TxFrame<'a> {
    /// A frame held whole in `bytes`.
    pub fn whole(bytes: &'a mut [u8]) -> Self {
        let gathered = bytes.len();
        TxFrame {
            buf: bytes,
            gathered,
            tail: None,
            lasting: false,
        }
    }

    /// A frame held whole in `bytes`, which its sender keeps as they are past the call into
    /// the switch: a NIC stages a reference to it rather than a copy (a generator's frames,
    /// sent over and over; at 1518 bytes the copy was one of the two per frame).
    ///
    /// # Safety
    /// `bytes` must stay valid and unmodified until the sender's next `Fabric::flush` with
    /// the `ForwardState` the frame is forwarded with has returned (that flush delivers
    /// every burst holding a reference), or until that scratch is dropped. The switch itself
    /// writes to a frame only through [`TxFrame::make_whole`], which gives the promise up.
    pub unsafe fn lasting(bytes: &'a mut [u8]) -> Self {
        TxFrame {
            lasting: true,
            ..TxFrame::whole(bytes)
        }
    }

    /// A frame of `buf.len()` bytes of which the first `gathered` are in `buf` and the rest
    /// in `pieces`, from `skip` bytes in.
    ///
    /// # Safety
    /// The pieces must be readable host memory for as long as the frame (or anything copied
    /// from it) is used, and hold at least `skip + buf.len() - gathered` bytes. A vhost-user
    /// port guarantees it while it holds the guest's memory snapshot and has not completed
    /// the chain, which is the whole of its call into the switch.
    pub unsafe fn split(
        buf: &'a mut [u8],
        gathered: usize,
        pieces: &'a [HostPiece],
        skip: usize,
    ) -> Self {
        let gathered = gathered.min(buf.len());
        let len = buf.len() - gathered;
        TxFrame {
            buf,
            gathered,
            tail: Some(GuestTail { pieces, skip, len }),
            lasting: false,
        }
    }

    /// [`TxFrame::split`], with `buf` kept as [`TxFrame::lasting`] promises: once the tail is
    /// in it ([`TxFrame::fill_lasting`]), a NIC may stage a reference to the whole frame.
    ///
    /// # Safety
    /// The contracts of both [`TxFrame::split`] and [`TxFrame::lasting`].
    pub unsafe fn split_lasting(
        buf: &'a mut [u8],
        gathered: usize,
        pieces: &'a [HostPiece],
        skip: usize,
    ) -> Self {
        TxFrame {
            lasting: true,
            // SAFETY: the caller's contract.
            ..unsafe { TxFrame::split(buf, gathered, pieces, skip) }
        }
    }

    /// Gathers the tail of a split frame whose buffer lasts ([`TxFrame::split_lasting`]),
    /// keeping the promise: a NIC then stages a reference to the frame rather than copying
    /// it into its burst, head and tail. Any other frame is left as it is: for one in a
    /// reused buffer, gathering first would only add a copy. The frame's bytes do not
    /// change, so whoever staged a reference to its head before still sees it right.
    pub fn fill_lasting(&mut self) {
        if self.lasting {
            self.gather_tail();
        }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Whether part of the frame is still in guest memory.
    pub fn is_split(&self) -> bool {
        self.tail.is_some()
    }

    /// The frame's bytes, to be copied by whoever keeps them: for a receiver whose frame
    /// another receiver of the same (flooded) frame may then write to (a checksum completed
    /// in place), which a reference would see.
    pub fn bytes_to_copy(&self) -> FrameBytes<'_> {
        FrameBytes {
            lasting: false,
            ..self.bytes()
        }
    }

    /// The bytes in the sender's buffer: at least every header of a split frame.
    pub fn head(&self) -> &[u8] {
        &self.buf[..self.gathered]
    }

    /// The frame's bytes, split or whole.
    pub fn bytes(&self) -> FrameBytes<'_> {
        FrameBytes {
            head: &self.buf[..self.gathered],
            tail: self.tail,
            lasting: self.lasting,
        }
    }

    /// The whole frame in the sender's buffer, gathering the tail first if it is still in
    /// guest memory (once: later calls find it whole).
    pub fn make_whole(&mut self) -> &mut [u8] {
        // The caller may write to it (a checksum completed in place), so a NIC must copy
        // it from now on.
        self.lasting = false;
        self.gather_tail();
        self.buf
    }

    /// Copies the tail, if still in guest memory, into the sender's buffer (once).
    fn gather_tail(&mut self) {
        if let Some(tail) = self.tail.take() {
            let rest = &mut self.buf[self.gathered..];
            // SAFETY: `rest` has room for the tail's `len` bytes; the pieces are readable
            // (the contract of `split`).
            unsafe { tail.copy_to_ptr(0, tail.len, rest.as_mut_ptr()) };
            self.gathered = self.buf.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces_of(chunks: &[&[u8]]) -> Vec<HostPiece> {
        chunks
            .iter()
            .map(|chunk| HostPiece {
                host: chunk.as_ptr() as usize,
                len: chunk.len() as u32,
            })
            .collect()
    }

    /// A frame of 0..=199 split at `head` over pieces of 7, 50 and the rest, with `skip` bytes
    /// of junk in front of the tail (as the virtio-net header and the head are in a chain).
    fn check_split(head_len: usize) {
        let frame: Vec<u8> = (0..200u32).map(|b| b as u8).collect();
        let skip = 5;
        let mut in_guest = vec![0xeeu8; skip];
        in_guest.extend_from_slice(&frame[head_len..]);
        let cut = [7.min(in_guest.len()), 57.min(in_guest.len())];
        let chunks = [
            &in_guest[..cut[0]],
            &in_guest[cut[0]..cut[1]],
            &in_guest[cut[1]..],
        ];
        let pieces = pieces_of(&chunks);
        // The sender's buffer holds the head; what lies beyond it must come from the pieces.
        let mut buf = frame.clone();
        buf[head_len..].fill(0);
        // SAFETY: the pieces point into `in_guest`, alive for the whole test.
        let mut tx = unsafe { TxFrame::split(&mut buf, head_len, &pieces, skip) };
        assert!(tx.is_split());
        assert_eq!(tx.head(), &frame[..head_len]);
        let bytes = tx.bytes();
        assert_eq!(bytes.len(), 200);
        assert!(bytes.as_whole().is_none());
        for from in [0, 1, head_len.saturating_sub(1), head_len, 60, 199, 200] {
            let mut out = vec![0u8; 300];
            let copied = bytes.copy_to(from, &mut out);
            assert_eq!(copied, 200 - from.min(200));
            assert_eq!(&out[..copied], &frame[from.min(200)..]);
        }
        // A copy shorter than the frame, across the head's end where there is one.
        let from = head_len.saturating_sub(1).min(150);
        let mut short = [0u8; 3];
        assert_eq!(bytes.copy_to(from, &mut short), 3);
        assert_eq!(short[..], frame[from..from + 3]);
        let mut collected = vec![1, 2];
        bytes.extend_vec(&mut collected);
        assert_eq!(&collected[2..], &frame[..]);
        assert!(bytes.with_whole(|whole| whole == &frame[..]));

        assert_eq!(tx.make_whole(), &frame[..]);
        assert!(!tx.is_split());
        assert_eq!(tx.bytes().as_whole(), Some(&frame[..]));
    }

    #[test]
    fn split_frames_read_as_the_frame_at_every_head_length() {
        for head_len in [0, 1, 14, 100, 199, 200] {
            check_split(head_len);
        }
    }

    #[test]
    fn a_lasting_split_frame_is_filled_in_place_and_stays_lasting() {
        let frame: Vec<u8> = (0..100u32).map(|b| b as u8).collect();
        let in_guest = frame[40..].to_vec();
        let pieces = pieces_of(&[&in_guest[..]]);
        for lasting in [true, false] {
            let mut buf = frame.clone();
            buf[40..].fill(0);
            // SAFETY: the pieces point into `in_guest`, and `buf` outlives `tx`.
            let mut tx = unsafe {
                if lasting {
                    TxFrame::split_lasting(&mut buf, 40, &pieces, 0)
                } else {
                    TxFrame::split(&mut buf, 40, &pieces, 0)
                }
            };
            assert!(tx.bytes().lasting().is_none(), "split: a NIC must copy it");
            tx.fill_lasting();
            if lasting {
                // Whole in the sender's lasting buffer: a NIC may refer to it.
                assert!(!tx.is_split());
                assert_eq!(tx.bytes().lasting(), Some(&frame[..]));
            } else {
                // Gathering into a reused buffer would only add a copy: left split.
                assert!(tx.is_split());
                assert!(tx.bytes().lasting().is_none());
            }
        }
    }

    #[test]
    fn ranges_skip_whole_pieces_cut_partial_ones_and_stop_at_the_end() {
        let pieces = [
            HostPiece {
                host: 1000,
                len: 10,
            },
            HostPiece { host: 2000, len: 0 },
            HostPiece { host: 3000, len: 5 },
            HostPiece {
                host: 4000,
                len: 20,
            },
        ];
        let all: Vec<_> = ranges(&pieces, 12, 100).collect();
        assert_eq!(all, vec![(3002, 3), (4000, 20)]);
        let cut: Vec<_> = ranges(&pieces, 3, 9).collect();
        assert_eq!(cut, vec![(1003, 7), (3000, 2)]);
        assert_eq!(ranges(&pieces, 35, 4).count(), 0);
        assert_eq!(ranges(&pieces, 0, 0).count(), 0);
    }

    #[test]
    fn whole_frames_copy_and_clip() {
        let frame = [1u8, 2, 3, 4];
        let bytes = FrameBytes::whole(&frame);
        assert_eq!(bytes.as_whole(), Some(&frame[..]));
        let mut out = [0u8; 8];
        assert_eq!(bytes.copy_to(1, &mut out), 3);
        assert_eq!(out[..3], [2, 3, 4]);
        assert_eq!(bytes.copy_to(9, &mut out), 0);
        let mut buf = frame;
        let mut tx = TxFrame::whole(&mut buf);
        assert!(!tx.is_split());
        assert_eq!(tx.make_whole(), &frame);
    }
}
