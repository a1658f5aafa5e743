//! The NIC's receive engine: a frame from the switch is admitted to a queue, staged in its
//! sender's burst or written straight into the guest's ring, or buffered until the ring,
//! the link or its latency lets it go; `drain` delivers what waits.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use arrayvec::ArrayVec;

use super::backlog::Frames;
use super::burst::{self, Burst, STAGE_MAX_LEN};
use super::queue::{self, Publish, RxQueue, WrittenRun, class_index};
use super::{BurstFrame, FrameBytes, GuestRxRing, Nic, RingWrite, WRITE_CHUNK, netem};
use crate::classify::{Class, Decision};
use crate::packet::offload::VirtioNetHdrBytes;
use crate::stats;

/// A frame arriving at a NIC, as every step of the receive path takes it: the virtio-net
/// header its guest will see (already adapted to the guest's offloads), its bytes, what it
/// occupies on the link and when it reached the port (on the NIC's clock). Its class is the
/// classifier's business, and travels beside it.
#[derive(Clone, Copy, Debug)]
pub struct Arrival<'a> {
    pub header: &'a VirtioNetHdrBytes,
    pub bytes: FrameBytes<'a>,
    /// Bytes on the wire, framing and segments included (see [`super::link::wire_bytes`]).
    pub wire_bytes: u64,
    pub arrival_ns: u64,
}

impl Nic {
    /// Classifies a frame for this NIC.
    pub fn classify(&self, frame: &[u8]) -> Decision {
        self.classifier.load().classify(frame)
    }

    /// Classifies a frame for this NIC with the sender's reference to the classifier, kept
    /// in its `burst` for the NIC: one atomic load per frame (the generation) instead of an
    /// arc-swap load, which costs several. A rule change bumps the generation after the new
    /// classifier is in place, so a frame sent after `set_rules` returned sees the new rules.
    pub fn classify_for(&self, burst: &mut Burst, frame: &[u8]) -> Decision {
        let generation = self.classifier_generation.load(Ordering::Acquire);
        match &burst.classifier {
            Some((seen, classifier)) if *seen == generation => classifier.classify(frame),
            _ => {
                let classifier = self.classifier.load_full();
                let decision = classifier.classify(frame);
                burst.classifier = Some((generation, classifier));
                decision
            }
        }
    }

    /// Wakes the scheduler: frames may be deliverable (the guest posted buffers, a ring was
    /// enabled, settings changed).
    pub fn wake(&self) {
        self.waker.wake();
    }

    /// The queue a decision lands on, among the queues the guest has enabled, with its ring
    /// (loaded once: the caller writes into it). A guest that uses fewer queues (ethtool -L)
    /// has its classifier's choice folded onto those, as a NIC driver reprograms its
    /// indirection table; queue 0 is never disabled by Linux.
    fn pick_queue(&self, decision: &Decision, hash: u32) -> Option<(&RxQueue, queue::RingGuard)> {
        let wanted = usize::from(decision.queue.queue());
        if let Some(queue) = self.queues.get(wanted) {
            let ring = queue.ring();
            if ring.as_ref().is_some_and(|ring| ring.is_enabled()) {
                return Some((queue, ring));
            }
        }
        let enabled = self.queues.iter().filter(|q| q.is_enabled()).count();
        if enabled == 0 {
            return None;
        }
        let queue = self
            .queues
            .iter()
            .filter(|q| q.is_enabled())
            .nth(hash as usize % enabled)?;
        Some((queue, queue.ring()))
    }

    /// The queue a frame with `decision` goes to, with its ring; counts what the NIC drops
    /// before any buffer (no usable queue, a drop rule). `None`: the frame is dropped.
    fn admit(&self, decision: &Decision) -> Option<(&RxQueue, queue::RingGuard)> {
        let hash = match decision.queue {
            crate::classify::QueueChoice::Rss { hash, .. } => hash,
            _ => 0,
        };
        let Some((queue, ring_guard)) = self.pick_queue(decision, hash) else {
            stats::inc(&self.port_counters.rx_drops_not_ready);
            return None;
        };
        count_parse_error(queue, decision);
        if decision.drop {
            stats::inc(&queue.counters.rx_drops_rule);
            return None;
        }
        Some((queue, ring_guard))
    }

    /// Receives one frame from the wire (its header already adapted to this guest, its
    /// decision from [`Nic::classify`]) at once. Returns the queue it went to, if any.
    pub fn receive(&self, decision: &Decision, arrival: Arrival<'_>) -> Option<usize> {
        if self.netem.is_active(decision.class) {
            return self.impair(netem::Onward::Direct, decision, arrival);
        }
        self.receive_clean(decision, arrival)
    }

    /// [`Nic::receive`] past the impairments.
    pub(super) fn receive_clean(&self, decision: &Decision, arrival: Arrival<'_>) -> Option<usize> {
        let (queue, ring_guard) = self.admit(decision)?;
        self.receive_on(queue, &ring_guard, decision.class, arrival)
    }

    /// Stages a frame in the sender's `burst` for this NIC; it reaches the ring when the
    /// sender delivers the burst ([`Nic::deliver_burst`], from `Fabric::flush`) or when the
    /// burst fills. Frames too long to be worth copying go at once, after the burst; a
    /// lasting frame (see `TxFrame::lasting`) is staged by reference, whatever its length.
    /// Returns the queue the frame goes to, if any.
    pub fn stage(
        &self,
        burst: &mut Burst,
        decision: &Decision,
        arrival: Arrival<'_>,
    ) -> Option<usize> {
        if self.netem.is_active(decision.class) {
            return self.impair(netem::Onward::Burst(burst), decision, arrival);
        }
        self.stage_clean(burst, decision, arrival)
    }

    /// [`Nic::stage`] past the impairments.
    pub(super) fn stage_clean(
        &self,
        burst: &mut Burst,
        decision: &Decision,
        arrival: Arrival<'_>,
    ) -> Option<usize> {
        let wanted = usize::from(decision.queue.queue());
        // A lasting frame is staged by reference, at no cost per byte, whatever its length.
        let stageable = arrival.bytes.len() <= STAGE_MAX_LEN || arrival.bytes.lasting().is_some();
        if burst.is_usable(wanted) && !decision.drop && stageable {
            // Known usable in this burst: what `admit` would pick, without loading the ring.
            count_parse_error(&self.queues[wanted], decision);
            return self.push_staged(burst, wanted, decision.class, arrival);
        }
        let (queue, ring_guard) = self.admit(decision)?;
        if queue.index == wanted {
            burst.mark_usable(wanted);
        }
        if !stageable {
            self.deliver_burst(burst, arrival.arrival_ns);
            return self.receive_on(queue, &ring_guard, decision.class, arrival);
        }
        self.push_staged(burst, queue.index, decision.class, arrival)
    }

    /// Stages a frame admitted to queue `index` (see [`Nic::stage`]).
    #[inline]
    fn push_staged(
        &self,
        burst: &mut Burst,
        index: usize,
        class: Class,
        arrival: Arrival<'_>,
    ) -> Option<usize> {
        burst.push(index, class, &arrival);
        if burst.is_full() {
            self.deliver_burst(burst, arrival.arrival_ns);
        }
        Some(index)
    }

    /// Delivers a sender's staged frames, queue by queue, each under one acquisition of the
    /// queue's lock and one ring write: the same decisions as [`Nic::receive`] frame by frame
    /// (a frame goes straight into the ring only when nothing of its class or a higher one
    /// waits, there is no link latency and the link can take it; otherwise it waits in the
    /// queue's buffer), with the frames bound for the ring written together.
    ///
    /// The frames reach the link at `now_ns`, the time of delivery, not when they were
    /// staged: another sender may have used the link since, and judging a staged frame by
    /// its arrival would hold it back for time that has already passed. Residence still
    /// counts from arrival.
    pub fn deliver_burst(&self, burst: &mut Burst, now_ns: u64) {
        if burst.is_empty() {
            // Nothing to deliver, but what the burst knew about its queues ends here too.
            burst.clear();
            return;
        }
        self.drain_ahead_of(Class::Normal, now_ns);
        let latency = [Class::High, Class::Normal].map(|class| self.link.latency_of(class));
        let mut link = self.link.plan();
        // Queues already handled: a bit each (a NIC has at most 16), a scan beyond 64.
        let mut handled: u64 = 0;
        let is_handled = |handled: u64, queue: usize| queue < 64 && handled & 1 << queue != 0;
        // The first frame of a queue not handled yet. The plan of one queue passes every
        // later frame anyway, and notes where the next queue starts: a burst for one queue
        // is gone through once, not once more to look for other queues.
        let mut first = 0;
        while first < burst.frames.len() {
            let index = burst.frames[first].queue;
            let seen = if index < 64 {
                let seen = is_handled(handled, index);
                handled |= 1 << index;
                seen
            } else {
                burst.frames[..first].iter().any(|f| f.queue == index)
            };
            let Some(queue) = self.queues.get(index).filter(|_| !seen) else {
                first += 1;
                continue;
            };
            let mut next = burst.frames.len();
            let ring_guard = queue.ring();
            let mut state = queue.lock();
            burst.planned.clear();
            // Whether each class may go past the buffers, read once and again only after
            // this delivery buffered a frame itself: the counts are shared by every queue
            // of the NIC, and reading them per frame cost more than the rest of the plan.
            // A frame another sender buffers meanwhile could as well have come after ours.
            let mut skip = self.skip_buffers(latency);
            let has_ring = ring_guard.is_some();
            // Whether every frame of the queue goes to the ring, whatever its class and
            // length: nothing waits, there is a ring and the wire is unpaced (the common
            // case, decided once rather than per frame).
            let unpaced = link.is_unpaced();
            let all_go = |skip: [bool; 2]| skip == [true, true] && has_ring && unpaced;
            let mut every_frame_goes = all_go(skip);
            for at in first..burst.frames.len() {
                let frame = &burst.frames[at];
                if frame.queue != index {
                    if next == burst.frames.len() && !is_handled(handled, frame.queue) {
                        next = at;
                    }
                    continue;
                }
                if every_frame_goes
                    || skip[class_index(frame.class)]
                        && has_ring
                        && link.take(now_ns, frame.wire_bytes)
                {
                    burst.planned.push(at);
                    continue;
                }
                let frame = *frame;
                // It must wait: what was planned before it goes first.
                self.write_planned(queue, &mut state, &ring_guard, burst, now_ns);
                self.buffer_staged(queue, &mut state, &frame, burst.bytes_of(&frame));
                skip = self.skip_buffers(latency);
                every_frame_goes = all_go(skip);
            }
            self.write_planned(queue, &mut state, &ring_guard, burst, now_ns);
            drop(state);
            // Visible now, not at the end of the sender's batch: a batch may be as long as
            // the guest's ring, which would otherwise run dry before the guest saw a frame.
            if let Some(ring) = ring_guard.as_ref() {
                ring.publish();
            }
            first = next;
        }
        burst.clear();
    }

    /// Before frames that would queue behind frames waiting for room in a ring: delivers
    /// what fits now. Without it the wait would last until the end of the sender's batch
    /// (`Fabric::flush`) however soon the guest made room, and every frame that arrives
    /// meanwhile would wait too, at the cost of two more copies each. Frames waiting for the
    /// link's latency are the scheduler's business, so nothing is done then.
    fn drain_ahead_of(&self, class: Class, now_ns: u64) {
        let latency = self.link.latency_of(class);
        if latency == 0 && !self.may_skip_buffers(class, latency) {
            let _ = self.drain(now_ns);
        }
    }

    /// Whether a frame of `class` may go past the buffers into the ring (the link willing):
    /// only when nothing of its class or a higher one waits (strict priority: a high frame
    /// only waits behind high frames) and the link adds no latency.
    fn may_skip_buffers(&self, class: Class, latency_ns: u64) -> bool {
        let ahead = match class {
            Class::High => self.buffered[class_index(Class::High)].load(Ordering::Acquire),
            Class::Normal => self.buffered(),
        };
        ahead == 0 && latency_ns == 0
    }

    /// [`Nic::may_skip_buffers`] for each class (by `class_index`), with the link's
    /// latencies `latency` (likewise).
    fn skip_buffers(&self, latency: [u64; 2]) -> [bool; 2] {
        [Class::High, Class::Normal]
            .map(|class| self.may_skip_buffers(class, latency[class_index(class)]))
    }

    /// Writes the frames of `burst.planned` into the queue's ring; what does not fit waits.
    fn write_planned(
        &self,
        queue: &RxQueue,
        state: &mut queue::QueueState,
        ring_guard: &queue::RingGuard,
        burst: &mut Burst,
        now: u64,
    ) {
        let Burst {
            bytes,
            frames,
            planned,
            ..
        } = burst;
        let Some(ring) = ring_guard.as_ref() else {
            planned.clear();
            return;
        };
        let ring: &dyn GuestRxRing = ring.as_ref().as_ref();
        let bytes_of = |frame: &burst::Staged| burst::staged_bytes(bytes, frame);
        let mut from = 0;
        // The frames' references, laid out before the writes start rather than handed out
        // one by one: the ring then reads them from lines stored long before, and no load
        // of theirs has to wait behind the stores into the guest's memory (see
        // `write_header` in port/rx.rs for why such waits cost). Only as many slots as
        // frames are written: filling all of a 64-slot array first is 1.5 KiB of stores
        // per burst, a cost that shows with small frames in short bursts.
        let mut chunk: ArrayVec<BurstFrame<'_>, WRITE_CHUNK> = ArrayVec::new();
        // What accounting the chunk needs, added up while it is laid out (the frames are
        // at hand there): runs of one class and arrival stamp, and the bytes on the wire.
        let mut tally = ChunkTally::new();
        while from < planned.len() {
            let rest = &planned[from..];
            let count = rest.len().min(WRITE_CHUNK);
            chunk.clear();
            tally.clear();
            for &at in &rest[..count] {
                let frame = &frames[at];
                chunk.push((&frame.header, bytes_of(frame)));
                tally.add_staged(frame);
            }
            let (written, outcome) = ring.write_burst(&chunk);
            let account = |state: &mut queue::QueueState, outcome, frame: &burst::Staged| {
                let len = frame.len;
                queue.account(
                    &mut state.accounting,
                    outcome,
                    frame.class,
                    len,
                    frame.arrival_ns,
                    now,
                )
            };
            let done = &rest[..written];
            if written < count {
                // Cut short by the ring: the tally counts frames that did not go in.
                tally.clear();
                for &at in done {
                    tally.add_staged(&frames[at]);
                }
            }
            // Accounted for together: the counters once per chunk, the residences once per
            // run of one arrival stamp, not once per frame.
            let (runs, wire_bytes) = tally.finish();
            queue.account_written(&mut state.accounting, runs, now);
            if self.is_capturing() {
                for &at in done {
                    let frame = &frames[at];
                    self.captured(queue.index, frame.class, FrameBytes::whole(bytes_of(frame)));
                }
            }
            // The chunk goes on the wire back to back, at once: one update of the link
            // (an atomic read-modify-write, which waits for every store before it) rather
            // than one per frame.
            self.link.transmit(now, wire_bytes);
            from += written;
            match outcome {
                // This chunk went in; the loop goes on with the next, if any.
                None | Some(RingWrite::Written) => {}
                Some(RingWrite::Full) => {
                    for &at in &planned[from..] {
                        let frame = frames[at];
                        self.buffer_staged(queue, state, &frame, bytes_of(&frame));
                    }
                    break;
                }
                Some(dropped) => {
                    account(state, dropped, &frames[planned[from]]);
                    from += 1;
                }
            }
        }
        planned.clear();
    }

    /// Puts a staged frame in its queue's buffer (or counts the tail drop).
    fn buffer_staged(
        &self,
        queue: &RxQueue,
        state: &mut queue::QueueState,
        frame: &burst::Staged,
        bytes: &[u8],
    ) {
        if queue.buffer(state, frame.class, &frame.arrival(bytes)) {
            self.buffered[class_index(frame.class)].fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Receives one frame into `queue` now (the caller admitted it).
    fn receive_on(
        &self,
        queue: &RxQueue,
        ring_guard: &queue::RingGuard,
        class: Class,
        arrival: Arrival<'_>,
    ) -> Option<usize> {
        let arrival_ns = arrival.arrival_ns;
        self.drain_ahead_of(class, arrival_ns);
        let mut state = queue.lock();
        let direct = self.may_skip_buffers(class, self.link.latency_of(class))
            && self.link.busy_until(arrival_ns).is_none();
        if direct && let Some(ring) = ring_guard.as_ref() {
            let ring = ring.as_ref().as_ref();
            match queue.publish(&mut state.accounting, ring, class, &arrival, arrival_ns) {
                Publish::Published => {
                    self.link.transmit(arrival_ns, arrival.wire_bytes);
                    self.captured(queue.index, class, arrival.bytes);
                    return Some(queue.index);
                }
                Publish::Dropped => return None,
                Publish::RingFull => {}
            }
        }
        if queue.buffer(&mut state, class, &arrival) {
            // No wake-up here: the sender's `Fabric::flush` at the end of its batch drains
            // what fits and wakes the scheduler only for what must wait for time to pass.
            self.buffered[class_index(class)].fetch_add(1, Ordering::SeqCst);
            Some(queue.index)
        } else {
            None
        }
    }

    fn captured(&self, queue: usize, class: Class, frame: FrameBytes<'_>) {
        // A plain flag first: capturing is rare, and the data path should not pay an
        // arc-swap load per frame for it.
        if self.capturing.load(Ordering::Relaxed)
            && let Some(capture) = self.capture.load().as_ref()
        {
            frame.with_whole(|bytes| capture.record(queue, class, bytes));
        }
    }

    /// Delivers what waits, as far as rings and link allow: first the high class of every
    /// queue (strict priority for the shared link), then both classes, high first within a
    /// queue. Returns the earliest time something that still waits could go (latency or
    /// link), if any; frames held back by a full ring go when the guest kicks.
    pub(crate) fn drain(&self, now_ns: u64) -> Option<u64> {
        let mut next: Option<u64> = None;
        let latency = [Class::High, Class::Normal].map(|class| self.link.latency_of(class));
        let weight = self.priority_weight();
        for allow_normal in [false, true] {
            for queue in &self.queues {
                let ring_guard = queue.ring();
                let Some(ring) = ring_guard.as_ref() else {
                    continue;
                };
                let mut guard = queue.lock();
                let state = &mut *guard;
                loop {
                    let eligible = |class: Class| {
                        state.buffers[class_index(class)]
                            .front()
                            .map(|head| head.arrival_ns + latency[class_index(class)])
                    };
                    let (high_at, normal_at) = (eligible(Class::High), eligible(Class::Normal));
                    let high_ready = high_at.is_some_and(|at| at <= now_ns);
                    let normal_ready = normal_at.is_some_and(|at| at <= now_ns);
                    // Weighted priority: after `weight` high frames in a row, a waiting normal
                    // frame gets one turn.
                    let yield_to_normal = weight > 0 && normal_ready && state.high_streak >= weight;
                    let class = if high_ready && !(yield_to_normal && allow_normal) {
                        if yield_to_normal {
                            break;
                        }
                        Class::High
                    } else if normal_ready && allow_normal {
                        Class::Normal
                    } else {
                        for at in [high_at, normal_at].into_iter().flatten() {
                            if at > now_ns {
                                next = Some(next.map_or(at, |n| n.min(at)));
                            }
                        }
                        break;
                    };
                    if let Some(until) = self.link.busy_until(now_ns) {
                        return Some(next.map_or(until, |n| n.min(until)));
                    }
                    // How many of this class may go in a row now: the choice above would
                    // be made again for each, on the same buffers (the lock is held) and at
                    // the same time, until the weight hands a turn to a normal frame or a
                    // normal frame hands it back to a waiting high one.
                    let in_a_row = match class {
                        Class::High if weight > 0 && normal_ready => {
                            weight.saturating_sub(state.high_streak).max(1) as usize
                        }
                        Class::High => usize::MAX,
                        Class::Normal if high_ready => 1,
                        Class::Normal => usize::MAX,
                    };
                    let ci = class_index(class);
                    // The frames that go together: ready, and taken by the link (as the
                    // sender's burst plans them; the first is, as just checked).
                    let mut link = self.link.plan();
                    let mut chunk: ArrayVec<BurstFrame<'_>, WRITE_CHUNK> = ArrayVec::new();
                    let mut tally = ChunkTally::new();
                    for waiting in state.buffers[ci].iter().take(in_a_row.min(WRITE_CHUNK)) {
                        if waiting.arrival_ns + latency[ci] > now_ns
                            || !link.take(now_ns, waiting.wire_bytes)
                        {
                            break;
                        }
                        chunk.push((&waiting.header, &waiting.bytes));
                        tally.add(
                            class,
                            waiting.bytes.len(),
                            waiting.arrival_ns,
                            waiting.wire_bytes,
                        );
                    }
                    if chunk.is_empty() {
                        break;
                    }
                    // Written together: one acquisition of the ring's locks for the chunk,
                    // not one per frame (a guest that fell behind is given its frames back
                    // as fast as it makes room).
                    let (written, outcome) = ring.write_burst(&chunk);
                    let laid_out = chunk.len();
                    drop(chunk);
                    let buffer = &state.buffers[ci];
                    let frames = || buffer.iter().take(written);
                    if written < laid_out {
                        // Cut short by the ring: the tally counts frames that did not go in.
                        tally.clear();
                        for waiting in frames() {
                            tally.add(
                                class,
                                waiting.bytes.len(),
                                waiting.arrival_ns,
                                waiting.wire_bytes,
                            );
                        }
                    }
                    let (runs, sent) = tally.finish();
                    queue.account_written(&mut state.accounting, runs, now_ns);
                    if written > 0 {
                        self.link.transmit(now_ns, sent);
                    }
                    if self.is_capturing() {
                        for waiting in frames() {
                            self.captured(queue.index, class, FrameBytes::whole(&waiting.bytes));
                        }
                    }
                    state.high_streak = match class {
                        Class::High => state
                            .high_streak
                            .saturating_add(u32::try_from(written).unwrap_or(u32::MAX)),
                        Class::Normal if written > 0 => 0,
                        Class::Normal => state.high_streak,
                    };
                    let mut gone = written;
                    match outcome {
                        None | Some(RingWrite::Written) => {}
                        Some(RingWrite::Full) => {
                            self.pop_waiting(&mut state.buffers[ci], ci, gone);
                            break;
                        }
                        Some(dropped) => {
                            // Counted, and gone: the frame after it is tried next.
                            if let Some(waiting) = state.buffers[ci].iter().nth(written) {
                                let len = waiting.bytes.len();
                                let arrival_ns = waiting.arrival_ns;
                                queue.account(
                                    &mut state.accounting,
                                    dropped,
                                    class,
                                    len,
                                    arrival_ns,
                                    now_ns,
                                );
                                gone += 1;
                            }
                        }
                    }
                    self.pop_waiting(&mut state.buffers[ci], ci, gone);
                }
            }
        }
        next
    }

    /// Removes the first `count` frames of class index `ci` from `buffer`, which they left.
    fn pop_waiting(&self, buffer: &mut Frames, ci: usize, count: usize) {
        for _ in 0..count {
            buffer.pop();
        }
        if count > 0 {
            self.buffered[ci].fetch_sub(count, Ordering::Release);
        }
    }

    /// Delivers what waits and fits right away, on the caller's thread (the port's worker
    /// when the guest posted RX buffers or enabled a ring, a sender at its flush), rather
    /// than waking the scheduler for it; the scheduler is woken only for what must wait for
    /// a time (link, latency, moderation). Draining may write into any queue, so the
    /// notifications of them all are settled. Returns whether anything waited.
    pub fn drain_waiting(&self) -> bool {
        if self.buffered() == 0 {
            return false;
        }
        let waits = self.drain(self.now_ns());
        if self.flush_notifications(self.now_ns()).is_some() || waits.is_some() {
            self.wake();
        }
        true
    }

    /// Applies interrupt moderation on every queue; returns the earliest pending deadline.
    pub(crate) fn flush_notifications(&self, now_ns: u64) -> Option<u64> {
        self.queues
            .iter()
            .filter_map(|queue| queue.flush_notify(now_ns))
            .min()
    }

    /// Frames waiting in this NIC's buffers.
    pub fn buffered(&self) -> usize {
        // SeqCst with the increments and with `release_retry`'s decrement: a sender that
        // buffers a frame and then finds no promise, and a promise released before its
        // holder finds no frame, cannot both happen (see `promise_retry`).
        self.buffered
            .iter()
            .map(|count| count.load(Ordering::SeqCst))
            .sum()
    }

    /// The count of retry promises, for this NIC's rings (see [`Nic::promise_retry`]).
    pub fn retry_promises(&self) -> Arc<AtomicU32> {
        self.retry_promises.clone()
    }

    /// A busy sender delivering to this NIC promises to try its waiting frames again at each
    /// of its flushes and to call [`Nic::release_retry`] before it goes idle. Meanwhile a
    /// ring that runs out of buffers does not ask its guest for a kick.
    ///
    /// Why: a guest whose driver polls (DPDK) kicks on every refill once asked, and the
    /// port's worker thread then woke on the backend's CPU for each full-ring episode, and
    /// with the task switches and the interrupt exits that took a large share of the
    /// sending worker's time with jumbo frames. The sender is running anyway and tries again
    /// within a batch, as a DPDK application would.
    pub fn promise_retry(&self) {
        self.retry_promises.fetch_add(1, Ordering::SeqCst);
    }

    /// Ends a promise (see [`Nic::promise_retry`]): the holder is going idle. What waits is
    /// tried once more, and a ring still out of buffers then asks its guest for a kick
    /// (unless another sender still holds a promise), so nothing waits without someone to
    /// move it.
    pub fn release_retry(&self) {
        self.retry_promises.fetch_sub(1, Ordering::SeqCst);
        self.drain_waiting();
    }
}

/// The accounting of a chunk of staged frames, added up as the chunk is laid out: its frames
/// as runs of one class and arrival stamp, and their bytes on the wire. The run being
/// added to is kept apart from the finished ones: a frame of the same run costs a
/// comparison and three additions, and only a new run touches the list.
struct ChunkTally {
    runs: ArrayVec<WrittenRun, WRITE_CHUNK>,
    /// The run the next frame may extend; no frames yet at the start.
    current: WrittenRun,
    wire_bytes: u64,
}

impl ChunkTally {
    /// The run a chunk starts with: no frames.
    const NO_RUN: WrittenRun = WrittenRun {
        class: Class::Normal,
        frames: 0,
        bytes: 0,
        arrival_ns: 0,
    };

    fn new() -> Self {
        ChunkTally {
            runs: ArrayVec::new(),
            current: Self::NO_RUN,
            wire_bytes: 0,
        }
    }

    /// Adds a staged frame of the chunk (at most [`WRITE_CHUNK`] of them).
    #[inline]
    fn add_staged(&mut self, frame: &burst::Staged) {
        self.add(frame.class, frame.len, frame.arrival_ns, frame.wire_bytes);
    }

    /// Adds a frame of the chunk (at most [`WRITE_CHUNK`] of them): its class, length,
    /// arrival and bytes on the wire.
    #[inline]
    fn add(&mut self, class: Class, len: usize, arrival_ns: u64, wire_bytes: u64) {
        self.wire_bytes += wire_bytes;
        let run = &mut self.current;
        // An empty run takes any frame: its count starts from nothing.
        if run.class == class && run.arrival_ns == arrival_ns {
            run.frames += 1;
            run.bytes += len as u64;
        } else {
            self.start_run(WrittenRun::one(class, len, arrival_ns));
        }
    }

    /// Ends the current run (if it has frames) and starts `run`.
    #[cold]
    fn start_run(&mut self, run: WrittenRun) {
        if self.current.frames > 0 {
            // A chunk's frames make at most as many runs as the chunk has slots.
            let _ = self.runs.try_push(self.current);
        }
        self.current = run;
    }

    /// Ends the chunk: its runs and its bytes on the wire. [`ChunkTally::clear`] before
    /// the next chunk.
    fn finish(&mut self) -> (&[WrittenRun], u64) {
        self.start_run(Self::NO_RUN);
        (&self.runs, self.wire_bytes)
    }

    fn clear(&mut self) {
        self.runs.clear();
        self.current = Self::NO_RUN;
        self.wire_bytes = 0;
    }
}

/// Counts on `queue` that the parser could not finish the frame `decision` is for.
fn count_parse_error(queue: &RxQueue, decision: &Decision) {
    if decision.parse_error.is_some() {
        stats::inc(&queue.counters.rx_parse_errors);
    }
}
