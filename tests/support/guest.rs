//! `TestGuest`: a fake virtio-net driver attached to the daemon over vhost-user, with guest
//! memory on a memfd and split virtqueues the harness lays out itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vhost::vhost_user::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use virtio_bindings::virtio_config::{VIRTIO_F_IN_ORDER, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use super::frames::{VIRTIO_NET_HDR_LEN, VirtioNetHdr};
use super::guest_memory::GuestRam;
use super::vhost_user::{VhostUserConnection, VringAddrMsg};
use super::virtqueue::{ChainBuf, Completion, Desc, InFlight, SplitQueue, UsedEntry};
use super::{HarnessError, Result, TIMEOUT, wait_for};

/// Feature bits as masks, named after the virtio constants.
pub mod feature {
    use super::*;
    pub const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
    pub const IN_ORDER: u64 = 1 << VIRTIO_F_IN_ORDER;
    pub const MQ: u64 = 1 << VIRTIO_NET_F_MQ;
    pub const MRG_RXBUF: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;
    pub const EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
    pub const INDIRECT_DESC: u64 = 1 << VIRTIO_RING_F_INDIRECT_DESC;
    pub const CSUM: u64 = 1 << VIRTIO_NET_F_CSUM;
    pub const GUEST_CSUM: u64 = 1 << VIRTIO_NET_F_GUEST_CSUM;
    pub const GUEST_TSO4: u64 = 1 << VIRTIO_NET_F_GUEST_TSO4;
    pub const GUEST_TSO6: u64 = 1 << VIRTIO_NET_F_GUEST_TSO6;
    pub const GUEST_ECN: u64 = 1 << VIRTIO_NET_F_GUEST_ECN;
    pub const HOST_TSO4: u64 = 1 << VIRTIO_NET_F_HOST_TSO4;
    pub const HOST_TSO6: u64 = 1 << VIRTIO_NET_F_HOST_TSO6;
    pub const HOST_ECN: u64 = 1 << VIRTIO_NET_F_HOST_ECN;
    pub const PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

    /// Everything the daemon is specified to offer.
    pub const DAEMON_OFFERS: u64 = VERSION_1
        | IN_ORDER
        | MQ
        | MRG_RXBUF
        | EVENT_IDX
        | INDIRECT_DESC
        | CSUM
        | GUEST_CSUM
        | GUEST_TSO4
        | GUEST_TSO6
        | GUEST_ECN
        | HOST_TSO4
        | HOST_TSO6
        | HOST_ECN
        | PROTOCOL_FEATURES;
}

/// Protocol features the harness asks for (QEMU's virtio-net asks for these and more).
pub const WANTED_PROTOCOL_FEATURES: u64 = VhostUserProtocolFeatures::MQ.bits()
    | VhostUserProtocolFeatures::REPLY_ACK.bits()
    | VhostUserProtocolFeatures::CONFIG.bits();

/// How a TX frame is laid out in descriptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxLayout {
    /// Header and frame in one readable descriptor (Linux with ANY_LAYOUT/VERSION_1).
    Contiguous,
    /// Header in its own descriptor, frame in the next (legacy drivers).
    HeaderSeparate,
    /// Header + frame cut into descriptors of at most this many bytes.
    Scattered(usize),
    /// One indirect descriptor pointing at a table: header, then the frame.
    Indirect,
}

#[derive(Clone, Debug)]
pub struct GuestOptions {
    /// Guest number: MAC 52:54:00:12:34:<id>, IP 10.0.0.<id>.
    pub id: u8,
    /// Features the driver would like; it acknowledges `wanted & offered`, like QEMU.
    pub wanted_features: u64,
    pub queue_size: u16,
    /// Queue pairs to set up; `None`: as many as GET_QUEUE_NUM reports.
    pub pairs: Option<u16>,
    /// Pairs enabled at start (the first n); `None`: all that are set up.
    pub enabled_pairs: Option<u16>,
    /// Repeat the feature negotiation once per pair, as QEMU does with `queues=N`.
    pub qemu_repeats: bool,
}

impl GuestOptions {
    /// The features a Linux 6.1 virtio-net driver acknowledges when all are offered.
    pub fn linux(id: u8) -> Self {
        GuestOptions {
            id,
            wanted_features: feature::DAEMON_OFFERS,
            queue_size: 256,
            pairs: None,
            enabled_pairs: None,
            qemu_repeats: true,
        }
    }

    pub fn with(mut self, features: u64) -> Self {
        self.wanted_features |= features;
        self
    }

    pub fn without(mut self, features: u64) -> Self {
        self.wanted_features &= !features;
        self
    }

    pub fn queue_size(mut self, size: u16) -> Self {
        self.queue_size = size;
        self
    }

    pub fn pairs(mut self, pairs: u16) -> Self {
        self.pairs = Some(pairs);
        self
    }

    pub fn enabled_pairs(mut self, pairs: u16) -> Self {
        self.enabled_pairs = Some(pairs);
        self
    }
}

/// A frame received on an RX queue, reassembled from its buffers.
#[derive(Clone, Debug)]
pub struct RxFrame {
    pub pair: u16,
    pub hdr: [u8; VIRTIO_NET_HDR_LEN],
    pub frame: Vec<u8>,
    /// Used lengths of the buffers it arrived in, in order.
    pub used_lens: Vec<u32>,
}

impl RxFrame {
    pub fn net_hdr(&self) -> VirtioNetHdr {
        VirtioNetHdr::from_bytes(&self.hdr)
    }
}

/// A mergeable frame whose buffers have not all been used yet.
struct PartialFrame {
    hdr: [u8; VIRTIO_NET_HDR_LEN],
    frame: Vec<u8>,
    used_lens: Vec<u32>,
    buffers_left: u16,
}

/// What the handshake learned.
#[derive(Clone, Copy, Debug)]
pub struct Negotiated {
    pub offered_features: u64,
    pub acked_features: u64,
    pub offered_protocol_features: u64,
    pub acked_protocol_features: u64,
    /// GET_QUEUE_NUM's answer (queue pairs), if MQ was negotiated.
    pub queue_num: Option<u64>,
}

pub struct TestGuest {
    socket: PathBuf,
    opts: GuestOptions,
    conn: VhostUserConnection,
    ram: GuestRam,
    /// Indexed by vring number: RX of pair p is 2p, TX is 2p + 1.
    queues: Vec<SplitQueue>,
    negotiated: Negotiated,
    pairs: u16,
    /// Raw used entries per vring, for `used_entries`.
    used_log: HashMap<u16, Vec<UsedEntry>>,
    partial: HashMap<u16, PartialFrame>,
    /// Frames already reassembled but not yet handed out, per pair.
    rx_ready: HashMap<u16, Vec<RxFrame>>,
}

impl TestGuest {
    /// Connects and brings the device up as QEMU 10 does for a multi-queue virtio-net.
    pub fn connect(socket: &Path, opts: GuestOptions) -> Result<Self> {
        // A daemon recreates its listener between connections: a connection queued on the
        // listener being torn down is closed unanswered. Retry like QEMU's reconnect does.
        let (mut conn, first_features) =
            wait_for("the backend to answer GET_FEATURES", TIMEOUT, || {
                let mut conn = VhostUserConnection::connect(socket, TIMEOUT)?;
                match conn.get_features() {
                    Ok(features) => Ok(Some((conn, features))),
                    Err(e) if e.is_backend_refusal() => Ok(None),
                    Err(e) => Err(e),
                }
            })?;
        let negotiated = Self::negotiate(&mut conn, &opts, first_features)?;
        let offered_pairs = negotiated.queue_num.unwrap_or(1);
        let pairs = opts.pairs.map(u64::from).unwrap_or(offered_pairs);
        let pairs = u16::try_from(pairs).map_err(|_| HarnessError::BadReply {
            request: "GET_QUEUE_NUM",
            detail: format!("{pairs} queue pairs"),
        })?;
        let mut guest = TestGuest {
            socket: socket.to_path_buf(),
            opts,
            conn,
            ram: GuestRam::new()?,
            queues: Vec::new(),
            negotiated,
            pairs,
            used_log: HashMap::new(),
            partial: HashMap::new(),
            rx_ready: HashMap::new(),
        };
        guest.early_enable()?;
        guest.start()?;
        Ok(guest)
    }

    /// GET_FEATURES .. SET_OWNER, repeated per pair as QEMU does.
    fn negotiate(
        conn: &mut VhostUserConnection,
        opts: &GuestOptions,
        first_features: u64,
    ) -> Result<Negotiated> {
        let mut n = Negotiated {
            offered_features: 0,
            acked_features: 0,
            offered_protocol_features: 0,
            acked_protocol_features: 0,
            queue_num: None,
        };
        let mut round = 0u64;
        loop {
            n.offered_features = if round == 0 {
                first_features
            } else {
                conn.get_features()?
            };
            if n.offered_features & feature::PROTOCOL_FEATURES != 0 {
                n.offered_protocol_features = conn.get_protocol_features()?;
                n.acked_protocol_features = n.offered_protocol_features & WANTED_PROTOCOL_FEATURES;
                conn.set_protocol_features(n.acked_protocol_features)?;
            }
            if round == 0 {
                if n.acked_protocol_features & VhostUserProtocolFeatures::MQ.bits() != 0 {
                    n.queue_num = Some(conn.get_queue_num()?);
                }
                conn.set_owner()?;
            }
            round += 1;
            let pairs = opts.pairs.map(u64::from).or(n.queue_num).unwrap_or(1);
            if !opts.qemu_repeats || round >= pairs {
                break;
            }
        }
        n.acked_features = opts.wanted_features & n.offered_features;
        Ok(n)
    }

    /// QEMU enables pair 0 and disables the others while realizing the device, before
    /// SET_FEATURES. A backend checking PROTOCOL_FEATURES against the *acked* features
    /// refuses this; the refusal surfaces here.
    fn early_enable(&mut self) -> Result<()> {
        if self.negotiated.offered_features & feature::PROTOCOL_FEATURES == 0 {
            return Ok(());
        }
        for vring in 0..2 * u32::from(self.pairs) {
            self.conn.set_vring_enable(vring, vring < 2)?;
        }
        Ok(())
    }

    /// SET_FEATURES, SET_MEM_TABLE, rings, enables: what QEMU does when the driver sets
    /// DRIVER_OK (and again after a reset).
    fn start(&mut self) -> Result<()> {
        let repeats = if self.opts.qemu_repeats {
            self.pairs.max(1)
        } else {
            1
        };
        for _ in 0..repeats {
            self.conn.set_features(self.negotiated.acked_features)?;
        }
        let regions = self.ram.region_messages()?;
        self.conn.set_mem_table(&regions)?;
        let event_idx = self.has(feature::EVENT_IDX);
        for vring in 0..2 * self.pairs {
            let q = SplitQueue::new(&mut self.ram, vring, self.opts.queue_size, event_idx)?;
            let v = u32::from(vring);
            // QEMU's vhost_virtqueue_start order.
            program_vring(&mut self.conn, &self.ram, v, &q, 0)?;
            self.queues.push(q);
        }
        let enabled = self
            .opts
            .enabled_pairs
            .unwrap_or(self.pairs)
            .min(self.pairs);
        if self.negotiated.offered_features & feature::PROTOCOL_FEATURES != 0 {
            for pair in 0..self.pairs {
                self.set_pair_enabled(pair, pair < enabled)?;
            }
        }
        Ok(())
    }

    pub fn id(&self) -> u8 {
        self.opts.id
    }

    pub fn mac(&self) -> [u8; 6] {
        super::frames::mac(self.opts.id)
    }

    pub fn negotiated(&self) -> Negotiated {
        self.negotiated
    }

    pub fn has(&self, features: u64) -> bool {
        self.negotiated.acked_features & features == features
    }

    /// Queue pairs set up.
    pub fn pairs(&self) -> u16 {
        self.pairs
    }

    pub fn rx_vring(pair: u16) -> u16 {
        2 * pair
    }

    pub fn tx_vring(pair: u16) -> u16 {
        2 * pair + 1
    }

    fn queue(&mut self, vring: u16) -> Result<&mut SplitQueue> {
        self.queues
            .get_mut(usize::from(vring))
            .ok_or_else(|| HarnessError::Queue {
                vring,
                detail: "not set up".into(),
            })
    }

    /// Raw access for tests writing their own descriptors.
    pub fn raw(&mut self, vring: u16) -> Result<RawRing<'_>> {
        let queue = self
            .queues
            .get_mut(usize::from(vring))
            .ok_or_else(|| HarnessError::Queue {
                vring,
                detail: "not set up".into(),
            })?;
        Ok(RawRing {
            queue,
            ram: &mut self.ram,
        })
    }

    /// Sends `frame` with `hdr` on TX queue `pair`, header and frame in one descriptor.
    pub fn send(&mut self, pair: u16, hdr: VirtioNetHdr, frame: &[u8]) -> Result<u16> {
        self.send_layout(pair, hdr, frame, TxLayout::Contiguous)
    }

    pub fn send_layout(
        &mut self,
        pair: u16,
        hdr: VirtioNetHdr,
        frame: &[u8],
        layout: TxLayout,
    ) -> Result<u16> {
        let vring = Self::tx_vring(pair);
        let mut bytes = hdr.to_bytes().to_vec();
        bytes.extend_from_slice(frame);
        let pieces: Vec<Vec<u8>> = match layout {
            TxLayout::Contiguous => vec![bytes],
            TxLayout::HeaderSeparate | TxLayout::Indirect => {
                vec![hdr.to_bytes().to_vec(), frame.to_vec()]
            }
            TxLayout::Scattered(max) => bytes.chunks(max.max(1)).map(<[u8]>::to_vec).collect(),
        };
        let needed = if layout == TxLayout::Indirect {
            1
        } else {
            pieces.len()
        };
        // Reclaim completed chains until there is room: the device completes TX on its own.
        self.wait_tx_room(pair, needed)?;
        let (queue, ram) = self.queue_and_ram(vring)?;
        let head = if layout == TxLayout::Indirect {
            queue.add_indirect_readable(ram, &pieces)?
        } else {
            let bufs: Vec<ChainBuf> = pieces.into_iter().map(ChainBuf::Readable).collect();
            queue.add_chain(ram, &bufs)?
        };
        queue.kick()?;
        Ok(head)
    }

    /// Sends `frames` (plain headers, one descriptor each) on TX queue `pair` with one kick
    /// for all of them, so the device reads them as one batch.
    pub fn send_batch(&mut self, pair: u16, frames: &[Vec<u8>]) -> Result<Vec<u16>> {
        let heads = self.queue_batch(pair, frames)?;
        self.kick_tx(pair)?;
        Ok(heads)
    }

    /// Makes `frames` (plain headers, one descriptor each) available on TX queue `pair`
    /// without a kick: a device that is not polling sees them at the next kick.
    pub fn queue_batch(&mut self, pair: u16, frames: &[Vec<u8>]) -> Result<Vec<u16>> {
        let vring = Self::tx_vring(pair);
        self.wait_tx_room(pair, frames.len())?;
        let (queue, ram) = self.queue_and_ram(vring)?;
        frames
            .iter()
            .map(|frame| {
                let mut bytes = VirtioNetHdr::plain().to_bytes().to_vec();
                bytes.extend_from_slice(frame);
                queue.add_chain(ram, &[ChainBuf::Readable(bytes)])
            })
            .collect()
    }

    /// Kicks TX queue `pair`.
    pub fn kick_tx(&mut self, pair: u16) -> Result<()> {
        self.queue(Self::tx_vring(pair))?.kick()
    }

    fn queue_and_ram(&mut self, vring: u16) -> Result<(&mut SplitQueue, &mut GuestRam)> {
        let queue = self
            .queues
            .get_mut(usize::from(vring))
            .ok_or_else(|| HarnessError::Queue {
                vring,
                detail: "not set up".into(),
            })?;
        Ok((queue, &mut self.ram))
    }

    fn wait_tx_room(&mut self, pair: u16, needed: usize) -> Result<()> {
        let vring = Self::tx_vring(pair);
        wait_for(
            &format!("room for {needed} descriptors on TX vring {vring}"),
            TIMEOUT,
            || {
                self.poll(vring)?;
                Ok((self.queue(vring)?.free_descriptors() >= needed).then_some(()))
            },
        )
    }

    /// Polls the used ring of `vring`, logging the entries and reassembling RX frames.
    fn poll(&mut self, vring: u16) -> Result<()> {
        let (queue, ram) = self.queue_and_ram(vring)?;
        let done = queue.poll_used(ram)?;
        for completion in done {
            self.used_log
                .entry(vring)
                .or_default()
                .push(completion.entry);
            if vring.is_multiple_of(2) {
                self.assemble(vring / 2, completion)?;
            }
        }
        Ok(())
    }

    fn assemble(&mut self, pair: u16, completion: Completion) -> Result<()> {
        let vring = Self::rx_vring(pair);
        let len = completion.entry.len;
        let data = completion.written;
        let bad = |detail: String| HarnessError::Queue { vring, detail };
        if let Some(mut partial) = self.partial.remove(&vring) {
            partial.frame.extend_from_slice(&data);
            partial.used_lens.push(len);
            partial.buffers_left -= 1;
            if partial.buffers_left == 0 {
                self.rx_ready.entry(pair).or_default().push(RxFrame {
                    pair,
                    hdr: partial.hdr,
                    frame: partial.frame,
                    used_lens: partial.used_lens,
                });
            } else {
                self.partial.insert(vring, partial);
            }
            return Ok(());
        }
        if len == 0 {
            // A chain given back unused (e.g. rejected as malformed): no frame.
            return Ok(());
        }
        let hdr: [u8; VIRTIO_NET_HDR_LEN] = data
            .get(..VIRTIO_NET_HDR_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| bad(format!("used len {len} shorter than the virtio-net header")))?;
        let frame = data[VIRTIO_NET_HDR_LEN..].to_vec();
        let num_buffers = VirtioNetHdr::from_bytes(&hdr).num_buffers;
        let buffers = if self.has(feature::MRG_RXBUF) {
            if num_buffers == 0 {
                return Err(bad("num_buffers 0 with MRG_RXBUF".into()));
            }
            num_buffers
        } else {
            1
        };
        if buffers == 1 {
            self.rx_ready.entry(pair).or_default().push(RxFrame {
                pair,
                hdr,
                frame,
                used_lens: vec![len],
            });
        } else {
            self.partial.insert(
                vring,
                PartialFrame {
                    hdr,
                    frame,
                    used_lens: vec![len],
                    buffers_left: buffers - 1,
                },
            );
        }
        Ok(())
    }

    /// Waits until TX chain `head` on `pair` is completed and returns its used entry.
    pub fn wait_tx_done(&mut self, pair: u16, head: u16) -> Result<UsedEntry> {
        let vring = Self::tx_vring(pair);
        wait_for(
            &format!("completion of head {head} on TX vring {vring}"),
            TIMEOUT,
            || {
                self.poll(vring)?;
                if self.queue(vring)?.is_in_flight(head) {
                    return Ok(None);
                }
                // Completed: find its (last) used entry in the log.
                let found = self
                    .used_log
                    .get(&vring)
                    .and_then(|log| log.iter().rev().find(|e| e.head == head).copied());
                Ok(found)
            },
        )
    }

    /// Waits until every TX chain of `pair` is completed.
    pub fn flush_tx(&mut self, pair: u16) -> Result<()> {
        let vring = Self::tx_vring(pair);
        wait_for(&format!("TX vring {vring} to drain"), TIMEOUT, || {
            self.poll(vring)?;
            Ok((self.queue(vring)?.in_flight() == 0).then_some(()))
        })
    }

    /// Posts `count` single-descriptor RX buffers of `size` bytes on `pair` and kicks.
    pub fn post_rx_buffers(&mut self, pair: u16, count: usize, size: u32) -> Result<Vec<u16>> {
        let heads = self.post_rx_buffers_without_kick(pair, count, size)?;
        self.queue(Self::rx_vring(pair))?.kick()?;
        Ok(heads)
    }

    /// Posts `count` single-descriptor RX buffers of `size` bytes on `pair`, and kicks only
    /// if the device asked for it (see `SplitQueue::kick_if_asked`); whether it kicked.
    pub fn post_rx_buffers_as_driver(
        &mut self,
        pair: u16,
        count: usize,
        size: u32,
    ) -> Result<bool> {
        let old_avail = self.queue(Self::rx_vring(pair))?.avail_idx();
        self.post_rx_buffers_without_kick(pair, count, size)?;
        let (queue, ram) = self.queue_and_ram(Self::rx_vring(pair))?;
        queue.kick_if_asked(ram, old_avail)
    }

    /// Posts `count` single-descriptor RX buffers of `size` bytes on `pair`, and no kick.
    pub fn post_rx_buffers_without_kick(
        &mut self,
        pair: u16,
        count: usize,
        size: u32,
    ) -> Result<Vec<u16>> {
        let (queue, ram) = self.queue_and_ram(Self::rx_vring(pair))?;
        (0..count)
            .map(|_| queue.add_chain(ram, &[ChainBuf::Writable(size)]))
            .collect()
    }

    /// Whether the device asks for a kick when the next RX buffer on `pair` is posted.
    pub fn rx_asks_for_kick(&mut self, pair: u16) -> Result<bool> {
        let (queue, ram) = self.queue_and_ram(Self::rx_vring(pair))?;
        queue.asks_for_kick(ram)
    }

    /// Posts RX buffers on every pair.
    pub fn post_rx_buffers_all(&mut self, count: usize, size: u32) -> Result<()> {
        for pair in 0..self.pairs {
            self.post_rx_buffers(pair, count, size)?;
        }
        Ok(())
    }

    /// Posts one RX chain made of writable descriptors of the given sizes (what a driver
    /// without MRG_RXBUF does for big packets).
    pub fn post_rx_chain(&mut self, pair: u16, sizes: &[u32]) -> Result<u16> {
        let vring = Self::rx_vring(pair);
        let (queue, ram) = self.queue_and_ram(vring)?;
        let bufs: Vec<ChainBuf> = sizes.iter().map(|s| ChainBuf::Writable(*s)).collect();
        let head = queue.add_chain(ram, &bufs)?;
        queue.kick()?;
        Ok(head)
    }

    /// Frames received on `pair` so far, without waiting.
    pub fn try_recv(&mut self, pair: u16) -> Result<Vec<RxFrame>> {
        self.poll(Self::rx_vring(pair))?;
        Ok(self.rx_ready.remove(&pair).unwrap_or_default())
    }

    /// Waits up to `timeout` for at least one complete frame on `pair`; returns all complete
    /// frames (empty after a timeout: a test asserting arrival checks the length).
    pub fn recv(&mut self, pair: u16, timeout: Duration) -> Result<Vec<RxFrame>> {
        let deadline = Instant::now() + timeout;
        loop {
            let frames = self.try_recv(pair)?;
            let now = Instant::now();
            if !frames.is_empty() || now >= deadline {
                return Ok(frames);
            }
            // Wake on the call eventfd, but re-check the ring at least every 100 ms: a
            // missed notification shows up as slowness, not as a false failure.
            let slice = (deadline - now).min(Duration::from_millis(100));
            self.queue(Self::rx_vring(pair))?.wait_call(slice)?;
        }
    }

    /// Waits until `n` frames have arrived in total over all pairs (or `timeout`); returns
    /// everything received, possibly more than `n`.
    pub fn recv_any(&mut self, n: usize, timeout: Duration) -> Result<Vec<RxFrame>> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            for pair in 0..self.pairs {
                got.extend(self.try_recv(pair)?);
            }
            let now = Instant::now();
            if got.len() >= n || now >= deadline {
                return Ok(got);
            }
            let slice = (deadline - now).min(Duration::from_millis(100));
            let calls: Vec<_> = (0..self.pairs)
                .map(|p| &self.queues[usize::from(Self::rx_vring(p))].call)
                .collect();
            super::virtqueue::wait_any_call(&calls, slice)?;
        }
    }

    /// Like [`recv_any`](Self::recv_any) but fails unless at least `n` frames arrive.
    pub fn expect_frames(&mut self, n: usize) -> Result<Vec<RxFrame>> {
        let got = self.recv_any(n, TIMEOUT)?;
        if got.len() < n {
            return Err(HarnessError::Timeout {
                what: format!("{n} frames on guest {} (got {})", self.opts.id, got.len()),
                timeout: TIMEOUT,
            });
        }
        Ok(got)
    }

    /// Forgets any pending signal on the RX call eventfd of `pair`.
    pub fn clear_rx_call(&mut self, pair: u16) -> Result<()> {
        self.queue(Self::rx_vring(pair))?
            .wait_call(Duration::ZERO)
            .map(|_| ())
    }

    /// Waits for the device to signal the RX call eventfd of `pair`; true if it did.
    pub fn wait_rx_call(&mut self, pair: u16, timeout: Duration) -> Result<bool> {
        self.queue(Self::rx_vring(pair))?.wait_call(timeout)
    }

    /// Used entries seen on `vring` since the last call (polls first).
    pub fn used_entries(&mut self, vring: u16) -> Result<Vec<UsedEntry>> {
        self.poll(vring)?;
        Ok(self.used_log.remove(&vring).unwrap_or_default())
    }

    /// The used index the device has published on `vring` (without consuming anything).
    pub fn device_used_idx(&self, vring: u16) -> Result<u16> {
        let queue = self
            .queues
            .get(usize::from(vring))
            .ok_or_else(|| HarnessError::Queue {
                vring,
                detail: "not set up".into(),
            })?;
        self.ram.load_u16_acquire(queue.used_ring + 2)
    }

    pub fn set_vring_enabled(&mut self, vring: u16, enable: bool) -> Result<()> {
        self.conn.set_vring_enable(u32::from(vring), enable)
    }

    fn set_pair_enabled(&mut self, pair: u16, enable: bool) -> Result<()> {
        self.set_vring_enabled(Self::rx_vring(pair), enable)?;
        self.set_vring_enabled(Self::tx_vring(pair), enable)
    }

    pub fn disable_pair(&mut self, pair: u16) -> Result<()> {
        self.set_pair_enabled(pair, false)
    }

    pub fn enable_pair(&mut self, pair: u16) -> Result<()> {
        self.set_pair_enabled(pair, true)
    }

    /// A guest reset as QEMU performs it: GET_VRING_BASE on every vring (stopping them), then
    /// the whole start sequence again on fresh rings. Buffers the device held are lost.
    /// Returns the bases the device reported, by vring.
    pub fn reset(&mut self) -> Result<Vec<u32>> {
        let mut bases = Vec::new();
        for vring in 0..2 * u32::from(self.pairs) {
            bases.push(self.conn.get_vring_base(vring)?);
        }
        for queue in self.queues.drain(..) {
            queue.release(&mut self.ram);
        }
        self.used_log.clear();
        self.partial.clear();
        self.rx_ready.clear();
        self.start()?;
        Ok(bases)
    }

    /// Stops `vring` (GET_VRING_BASE) and starts it again on a fresh ring of `size` entries
    /// that resumes at the base the device reported, as QEMU restarts a vhost ring without a
    /// device reset; buffers the device held are lost. Returns the base.
    pub fn restart_vring(&mut self, vring: u16, size: u16) -> Result<u32> {
        let v = u32::from(vring);
        let base = self.conn.get_vring_base(v)?;
        let event_idx = self.has(feature::EVENT_IDX);
        let fresh = SplitQueue::new(&mut self.ram, vring, size, event_idx)?
            .starting_at(&self.ram, base as u16)?;
        let old = std::mem::replace(self.queue(vring)?, fresh);
        old.release(&mut self.ram);
        self.used_log.remove(&vring);
        self.partial.remove(&vring);
        let q = &self.queues[usize::from(vring)];
        program_vring(&mut self.conn, &self.ram, v, q, base)?;
        if self.negotiated.offered_features & feature::PROTOCOL_FEATURES != 0 {
            self.conn.set_vring_enable(v, true)?;
        }
        Ok(base)
    }

    /// Closes the connection (as when QEMU exits) and returns what is needed to reconnect.
    pub fn disconnect(self) -> (PathBuf, GuestOptions) {
        (self.socket, self.opts)
    }

    /// Disconnects and connects again on the same socket with the same options, with new
    /// guest memory (as a restarted QEMU would).
    pub fn reconnect(self) -> Result<Self> {
        let (socket, opts) = self.disconnect();
        TestGuest::connect(&socket, opts)
    }

    /// The SET_MEM_TABLE description of this guest's memory, for tests that send their own.
    pub fn memory_regions(&self) -> Result<Vec<super::vhost_user::MemoryRegionMsg>> {
        self.ram.region_messages()
    }

    /// Direct access to the vhost-user connection, for protocol-level tests.
    pub fn connection(&mut self) -> &mut VhostUserConnection {
        &mut self.conn
    }
}

/// One ring plus guest memory, for tests that write descriptors themselves.
pub struct RawRing<'a> {
    pub queue: &'a mut SplitQueue,
    pub ram: &'a mut GuestRam,
}

impl RawRing<'_> {
    /// Copies `data` into freshly allocated guest memory and returns its address. The
    /// allocation is recorded in `chain` so it is freed when the chain completes.
    pub fn buffer(&mut self, chain: &mut InFlight, data: &[u8]) -> Result<u64> {
        let addr = self.ram.alloc(data.len() as u64)?;
        self.ram.write(addr, data)?;
        chain.allocations.push((addr, data.len() as u64));
        Ok(addr)
    }

    /// Allocates `len` bytes of writable room, recorded in `chain`.
    pub fn room(&mut self, chain: &mut InFlight, len: u32) -> Result<u64> {
        let addr = self.ram.alloc(u64::from(len))?;
        chain.allocations.push((addr, u64::from(len)));
        chain.writable.push((addr, len));
        Ok(addr)
    }

    pub fn reserve(&mut self, n: usize) -> Result<Vec<u16>> {
        self.queue.reserve(n)
    }

    pub fn write_desc(&mut self, index: u16, desc: Desc) -> Result<()> {
        self.queue.write_desc(self.ram, index, desc)
    }

    /// Writes a descriptor into an indirect table at guest address `table`.
    pub fn write_indirect_desc(&mut self, table: u64, index: u16, desc: Desc) -> Result<()> {
        self.ram
            .write(table + 16 * u64::from(index), &desc.to_bytes())
    }

    pub fn publish(&mut self, head: u16, chain: InFlight) -> Result<()> {
        self.queue.publish(self.ram, head, chain)
    }

    pub fn kick(&self) -> Result<()> {
        self.queue.kick()
    }
}

/// Hands one ring to the device in QEMU's vhost_virtqueue_start order: size, base, addresses,
/// kick and call.
fn program_vring(
    conn: &mut VhostUserConnection,
    ram: &GuestRam,
    v: u32,
    q: &SplitQueue,
    base: u32,
) -> Result<()> {
    conn.set_vring_num(v, u32::from(q.size))?;
    conn.set_vring_base(v, base)?;
    conn.set_vring_addr(
        v,
        &VringAddrMsg {
            desc_user_addr: ram.user_addr(q.desc_table)?,
            used_user_addr: ram.user_addr(q.used_ring)?,
            avail_user_addr: ram.user_addr(q.avail_ring)?,
        },
    )?;
    conn.set_vring_kick(v, &q.kick)?;
    conn.set_vring_call(v, &q.call)?;
    Ok(())
}
