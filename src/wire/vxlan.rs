//! A VXLAN wire port (RFC 7348): the switch's frames carried in UDP to one or more remote
//! VTEPs (the Linux kernel's vxlan device, OVS, VPP, DPDK, or another prism-vnic), and
//! theirs brought in, on ordinary unprivileged UDP sockets.
//!
//! - Encapsulation: outer IP and UDP by the kernel's socket, then the 8-byte VXLAN header
//!   (I flag, 24-bit VNI), then the inner Ethernet frame without FCS.
//! - The outer UDP source port comes from the inner flow's hash (RFC 7348 section 5: for
//!   ECMP entropy): frames are sent from one of [`TX_SOCKETS`] sockets bound to ephemeral
//!   ports, chosen by the hash of the inner addresses and ports, so a flow keeps one source
//!   port (and its order) and different flows spread.
//! - Broadcast, multicast and unknown unicast go to every remote; unicast to a MAC seen
//!   behind one remote goes to that remote only. The switch learns the MACs behind the port
//!   like any other port's.
//! - Receive takes datagrams only from the remotes' addresses and with this port's VNI;
//!   each other datagram is counted by its reason (`vxlan_rx_*` port counters).
//! - The default UDP port is [`DEFAULT_PORT`] (8472, Linux's own default before IANA gave
//!   VXLAN 4789), so that the guests' overlay on 4789 never meets this one.
//! - MTU budget: VXLAN adds 50 bytes over IPv4 (outer IPv4 20, UDP 8, VXLAN 8, inner
//!   Ethernet 14), 70 over IPv6; a guest MTU of 1500 needs an underlay MTU of 1550. The port
//!   takes no offloads, so the switch segments a guest's TSO frames to its MSS first.
//! - Batching: recvmmsg on receive, sendmmsg for each run of a burst's frames that leave
//!   from one socket.

use std::collections::HashMap;
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::{Arc, RwLock};
use std::thread;

use log::{error, info};

use crate::nic::{BurstFrame, GuestOffloads, GuestRxRing, RingWrite, TxFrame};
use crate::packet::ip_proto;
use crate::packet::offload::{Offload, VirtioNetHdrBytes};
use crate::packet::vxlan::{FLAG_VNI_VALID, HEADER_LEN, VxlanPacket};
use crate::stats::{self, PortCounters};
use crate::switch::fabric::{Fabric, ForwardState};
use crate::switch::{Mac, PortId};

/// The UDP port a VXLAN port listens on and sends to unless told otherwise.
pub const DEFAULT_PORT: u16 = 8472;
/// Sockets frames leave from, one per outer source port.
pub const TX_SOCKETS: usize = 8;
/// Datagrams read per recvmmsg.
const RX_BATCH: usize = 32;
/// Largest inner frame taken (jumbo); a longer datagram is counted and dropped.
pub const MAX_INNER: usize = 9216 + 14;
/// MACs remembered behind remotes; beyond it, unicast to a new MAC goes to every remote.
const MAX_LEARNED: usize = 4096;
/// Bytes of outer headers over IPv4 (IPv4 20 + UDP 8 + VXLAN 8) before the inner frame.
pub const OVERHEAD_IPV4: usize = 20 + 8 + HEADER_LEN;

/// `--vxlan NAME=remote=IP[:PORT],vni=N[,local=IP:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub remotes: Vec<SocketAddr>,
    pub vni: u32,
    pub local: SocketAddr,
}

fn parse_endpoint(value: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(addr);
    }
    value
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, DEFAULT_PORT))
        .map_err(|_| format!("{value:?} is not IP or IP:PORT (IPv6 as [ADDR]:PORT)"))
}

impl std::str::FromStr for VxlanSpec {
    type Err = String;

    /// Parses `remote=IP[:PORT],vni=N[,local=IP:PORT]`, `remote=` repeatable.
    fn from_str(spec: &str) -> Result<Self, String> {
        let mut remotes = Vec::new();
        let mut vni = None;
        let mut local = None;
        for item in spec.split(',') {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?} is not KEY=VALUE"))?;
            match key {
                "remote" => {
                    remotes.push(parse_endpoint(value).map_err(|e| format!("remote: {e}"))?)
                }
                "vni" => {
                    let n: u32 =
                        value.parse().ok().filter(|n| *n < 1 << 24).ok_or_else(|| {
                            format!("vni {value:?} is not a number below 16777216")
                        })?;
                    vni = Some(n);
                }
                "local" => local = Some(parse_endpoint(value).map_err(|e| format!("local: {e}"))?),
                other => return Err(format!("unknown key {other:?} (remote, vni, local)")),
            }
        }
        let vni = vni.ok_or("vni=N is required")?;
        if remotes.is_empty() {
            return Err("at least one remote=IP[:PORT] is required".into());
        }
        let v6 = remotes[0].is_ipv6();
        if remotes.iter().any(|r| r.is_ipv6() != v6) {
            return Err("remotes mix IPv4 and IPv6".into());
        }
        if remotes
            .iter()
            .any(|r| r.ip().is_unspecified() || r.port() == 0)
        {
            return Err("a remote needs an address and a port other than 0".into());
        }
        let local = local.unwrap_or_else(|| {
            let any = if v6 {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            };
            SocketAddr::new(any, DEFAULT_PORT)
        });
        if local.is_ipv6() != v6 {
            return Err("local and remote addresses are of different IP versions".into());
        }
        Ok(VxlanSpec {
            remotes,
            vni,
            local,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VxlanError {
    #[error("VXLAN port {name}: cannot bind UDP {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("VXLAN port {name}: {source}")]
    Socket { name: String, source: io::Error },
}

/// A VXLAN port's sockets, bound.
pub struct Vxlan {
    name: String,
    spec: VxlanSpec,
    rx: UdpSocket,
    tx: Vec<UdpSocket>,
}

impl Vxlan {
    /// Binds the receiving socket on the local address and the sending sockets on ephemeral
    /// ports of the same address, so that a taken port fails at start.
    pub fn bind(name: &str, spec: &VxlanSpec) -> Result<Vxlan, VxlanError> {
        let rx = UdpSocket::bind(spec.local).map_err(|source| VxlanError::Bind {
            name: name.to_string(),
            addr: spec.local,
            source,
        })?;
        let ephemeral = SocketAddr::new(spec.local.ip(), 0);
        let tx = (0..TX_SOCKETS)
            .map(|_| {
                let socket = UdpSocket::bind(ephemeral).map_err(|source| VxlanError::Bind {
                    name: name.to_string(),
                    addr: ephemeral,
                    source,
                })?;
                // A full send buffer drops the frame (counted), as a full qdisc would,
                // rather than stalling the sender's worker.
                socket
                    .set_nonblocking(true)
                    .map_err(|source| VxlanError::Socket {
                        name: name.to_string(),
                        source,
                    })?;
                Ok(socket)
            })
            .collect::<Result<Vec<_>, VxlanError>>()?;
        Ok(Vxlan {
            name: name.to_string(),
            spec: spec.clone(),
            rx,
            tx,
        })
    }

    /// The address the port receives on (its port chosen by the kernel if 0 was given).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.rx.local_addr()
    }
}

/// Which remote each learned MAC sits behind (an index into the remotes).
type Learned = RwLock<HashMap<Mac, usize>>;

/// The port as a receiver: frames from the switch go out on the wire.
pub struct VxlanRing {
    remotes: Vec<SocketAddr>,
    header: [u8; HEADER_LEN],
    tx: Vec<UdpSocket>,
    learned: Arc<Learned>,
    counters: Arc<PortCounters>,
}

/// The VXLAN header for `vni`: the I flag, reserved bits zero.
pub fn header(vni: u32) -> [u8; HEADER_LEN] {
    let vni = vni.to_be_bytes();
    [FLAG_VNI_VALID, 0, 0, 0, vni[1], vni[2], vni[3], 0]
}

/// FNV-1a over the inner frame's flow: IP addresses, protocol and ports (TCP, UDP, SCTP)
/// where it is IP, else its MAC addresses and EtherType. One 802.1Q tag is looked through.
pub fn flow_hash(frame: &[u8]) -> u64 {
    fn fnv(hash: u64, bytes: &[u8]) -> u64 {
        bytes.iter().fold(hash, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
    }
    let basis = 0xcbf2_9ce4_8422_2325;
    let mut offset = 12;
    let mut ethertype = frame
        .get(12..14)
        .map_or(0, |t| u16::from_be_bytes([t[0], t[1]]));
    if ethertype == 0x8100 {
        offset = 16;
        ethertype = frame
            .get(16..18)
            .map_or(0, |t| u16::from_be_bytes([t[0], t[1]]));
    }
    let l3 = offset + 2;
    let (addresses, proto, l4) = match ethertype {
        0x0800 => {
            let ihl = frame.get(l3).map_or(0, |b| usize::from(b & 0x0f) * 4);
            (l3 + 12..l3 + 20, frame.get(l3 + 9).copied(), l3 + ihl)
        }
        0x86dd => (l3 + 8..l3 + 40, frame.get(l3 + 6).copied(), l3 + 40),
        _ => return fnv(basis, frame.get(..14).unwrap_or(frame)),
    };
    let Some(addresses) = frame.get(addresses) else {
        return fnv(basis, frame.get(..14).unwrap_or(frame));
    };
    let mut hash = fnv(basis, addresses);
    if let Some(proto) = proto {
        hash = fnv(hash, &[proto]);
        if matches!(proto, ip_proto::TCP | ip_proto::UDP | ip_proto::SCTP)
            && let Some(ports) = frame.get(l4..l4 + 4)
        {
            hash = fnv(hash, ports);
        }
    }
    hash
}

/// A sockaddr for sendmmsg, IPv4 or IPv6.
#[derive(Clone, Copy)]
#[repr(C)]
union RawAddr {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

fn raw_addr(addr: &SocketAddr) -> (RawAddr, libc::socklen_t) {
    match addr {
        SocketAddr::V4(a) => {
            let raw = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            (
                RawAddr { v4: raw },
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        SocketAddr::V6(a) => {
            let raw = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            (
                RawAddr { v6: raw },
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}

fn from_raw(raw: &RawAddr, len: libc::socklen_t) -> Option<SocketAddr> {
    // SAFETY: the family field is at the same place in both members, and the kernel wrote
    // a whole sockaddr of the family it names (checked against `len`).
    unsafe {
        match i32::from(raw.v4.sin_family) {
            libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
                let a = raw.v4;
                Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                    u16::from_be(a.sin_port),
                )))
            }
            libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
                let a = raw.v6;
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

impl VxlanRing {
    /// The remotes a frame goes to: the one its destination MAC was seen behind, or all.
    fn destinations(&self, frame: &[u8]) -> std::ops::Range<usize> {
        let all = 0..self.remotes.len();
        let Some(dst) = frame.get(..6) else {
            return all;
        };
        if dst[0] & 1 != 0 {
            return all;
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(dst);
        match self.learned.read().ok().and_then(|l| l.get(&mac).copied()) {
            Some(index) => index..index + 1,
            None => all,
        }
    }

    /// Sends `frames` (all leaving from socket `socket`) with one sendmmsg per call until
    /// every datagram is out or the socket refuses; returns how many frames left whole.
    fn send_run(&self, socket: &UdpSocket, frames: &[&[u8]]) -> usize {
        let addresses: Vec<(RawAddr, libc::socklen_t)> =
            self.remotes.iter().map(raw_addr).collect();
        // One datagram per frame and remote it goes to; `owner` maps it back to its frame.
        let mut iovecs: Vec<[libc::iovec; 2]> = Vec::with_capacity(frames.len());
        let mut owner: Vec<usize> = Vec::with_capacity(frames.len());
        let mut targets: Vec<usize> = Vec::with_capacity(frames.len());
        for (index, frame) in frames.iter().enumerate() {
            for remote in self.destinations(frame) {
                iovecs.push([
                    libc::iovec {
                        iov_base: self.header.as_ptr() as *mut libc::c_void,
                        iov_len: HEADER_LEN,
                    },
                    libc::iovec {
                        iov_base: frame.as_ptr() as *mut libc::c_void,
                        iov_len: frame.len(),
                    },
                ]);
                owner.push(index);
                targets.push(remote);
            }
        }
        let mut messages: Vec<libc::mmsghdr> = iovecs
            .iter_mut()
            .zip(&targets)
            .map(|(iov, &remote)| {
                // SAFETY: mmsghdr is plain data; zero is a valid value of every field.
                let mut message: libc::mmsghdr = unsafe { std::mem::zeroed() };
                message.msg_hdr.msg_name =
                    (&addresses[remote].0 as *const RawAddr).cast_mut().cast();
                message.msg_hdr.msg_namelen = addresses[remote].1;
                message.msg_hdr.msg_iov = iov.as_mut_ptr();
                message.msg_hdr.msg_iovlen = 2;
                message
            })
            .collect();
        let mut sent = 0;
        while sent < messages.len() {
            let rest = &mut messages[sent..];
            // SAFETY: every mmsghdr points at an address in `addresses`, and at iovecs in
            // `iovecs` that point at `self.header` and at frames borrowed for this call; all
            // of them outlive the call. The kernel reads them only.
            let n = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    rest.as_mut_ptr(),
                    rest.len() as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                let error = io::Error::last_os_error();
                if n < 0 && error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // The send buffer is full, or the message cannot go (too big for the path):
                // the frames from here on are dropped by the caller's accounting.
                if error.raw_os_error() == Some(libc::EMSGSIZE) {
                    stats::inc(&self.counters.vxlan_tx_errors_too_big);
                } else {
                    stats::inc(&self.counters.vxlan_tx_drops_send);
                }
                break;
            }
            sent += n as usize;
        }
        if sent == messages.len() {
            frames.len()
        } else {
            owner[sent]
        }
    }
}

impl GuestRxRing for VxlanRing {
    fn write(&self, header: &VirtioNetHdrBytes, frame: &[u8]) -> RingWrite {
        match self.write_burst(&[(header, frame)]) {
            (1, _) => RingWrite::Written,
            (_, outcome) => outcome.unwrap_or(RingWrite::NotReady),
        }
    }

    fn write_burst(&self, frames: &[BurstFrame<'_>]) -> (usize, Option<RingWrite>) {
        // Runs of consecutive frames that leave from one socket go in one sendmmsg.
        let mut done = 0;
        while done < frames.len() {
            let socket = |frame: &[u8]| (flow_hash(frame) % self.tx.len() as u64) as usize;
            let first = socket(frames[done].1);
            let run: Vec<&[u8]> = frames[done..]
                .iter()
                .map(|(_, frame)| *frame)
                .take_while(|frame| socket(frame) == first)
                .collect();
            let sent = self.send_run(&self.tx[first], &run);
            done += sent;
            if sent < run.len() {
                return (done, Some(RingWrite::NotReady));
            }
        }
        (frames.len(), None)
    }

    fn notify(&self) {}

    fn is_enabled(&self) -> bool {
        true
    }

    fn offloads(&self) -> GuestOffloads {
        // None: GSO frames are segmented and checksums completed before encapsulation, so
        // each datagram carries one frame of the guest's MTU.
        GuestOffloads::default()
    }
}

/// Connects the VXLAN sockets to port `port` of the fabric: the NIC's ring sends, and a
/// thread receives into the switch.
pub fn start(
    fabric: Arc<Fabric>,
    port: PortId,
    vxlan: Vxlan,
) -> io::Result<thread::JoinHandle<()>> {
    let learned: Arc<Learned> = Arc::default();
    let counters = fabric.ports[port].nic.port_counters.clone();
    let Vxlan { name, spec, rx, tx } = vxlan;
    info!(
        "{name}: VXLAN VNI {} on {}, remotes {:?}",
        spec.vni,
        rx.local_addr()?,
        spec.remotes
    );
    fabric.ports[port]
        .nic
        .attach_fixed_ring(Box::new(VxlanRing {
            remotes: spec.remotes.clone(),
            header: header(spec.vni),
            tx,
            learned: learned.clone(),
            counters,
        }));
    thread::Builder::new()
        .name(format!("vxlan-{name}"))
        .spawn(move || {
            if let Err(e) = receive_loop(&fabric, port, &spec, &rx, &learned) {
                error!("{name}: VXLAN receive failed, port stops receiving: {e}");
            }
        })
}

/// Why a datagram was not taken, each with its counter.
#[derive(Debug, PartialEq, Eq)]
enum Rejected {
    UnknownRemote,
    Short,
    Flags,
    Vni,
    TooBig,
}

/// Checks one datagram; returns the index of the remote it came from.
fn check(
    spec: &VxlanSpec,
    from: Option<SocketAddr>,
    datagram: &[u8],
    truncated: bool,
) -> Result<usize, Rejected> {
    let remote = from
        .and_then(|from| spec.remotes.iter().position(|r| r.ip() == from.ip()))
        .ok_or(Rejected::UnknownRemote)?;
    if truncated {
        return Err(Rejected::TooBig);
    }
    if datagram.len() < HEADER_LEN + 14 {
        return Err(Rejected::Short);
    }
    let packet = VxlanPacket::new_checked(datagram).map_err(|_| Rejected::Flags)?;
    if packet.vni() != spec.vni {
        return Err(Rejected::Vni);
    }
    Ok(remote)
}

fn receive_loop(
    fabric: &Fabric,
    port: PortId,
    spec: &VxlanSpec,
    rx: &UdpSocket,
    learned: &Learned,
) -> io::Result<()> {
    let Some(counters) = fabric.ports[port].queue_counters.first().cloned() else {
        return Ok(());
    };
    let port_counters = fabric.ports[port].nic.port_counters.clone();
    let slot = HEADER_LEN + MAX_INNER;
    let mut buffers = vec![0u8; slot * RX_BATCH];
    // SAFETY: RawAddr and mmsghdr are plain data, for which zeroed is a valid value.
    let mut addresses: Vec<RawAddr> =
        vec![unsafe { MaybeUninit::zeroed().assume_init() }; RX_BATCH];
    let mut scratch = ForwardState::default();
    loop {
        let mut iovecs: Vec<libc::iovec> = buffers
            .chunks_mut(slot)
            .map(|chunk| libc::iovec {
                iov_base: chunk.as_mut_ptr().cast(),
                iov_len: chunk.len(),
            })
            .collect();
        let mut messages: Vec<libc::mmsghdr> = iovecs
            .iter_mut()
            .zip(addresses.iter_mut())
            .map(|(iov, addr)| {
                // SAFETY: mmsghdr is plain data; zero is a valid value of every field.
                let mut message: libc::mmsghdr = unsafe { std::mem::zeroed() };
                message.msg_hdr.msg_name = (addr as *mut RawAddr).cast();
                message.msg_hdr.msg_namelen = std::mem::size_of::<RawAddr>() as libc::socklen_t;
                message.msg_hdr.msg_iov = iov;
                message.msg_hdr.msg_iovlen = 1;
                message
            })
            .collect();
        // SAFETY: each mmsghdr points at its own iovec over a distinct `slot`-byte chunk of
        // `buffers` and at its own RawAddr, all alive and not otherwise used during the call.
        let n = unsafe {
            libc::recvmmsg(
                rx.as_raw_fd(),
                messages.as_mut_ptr(),
                RX_BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        let received: Vec<(usize, Option<SocketAddr>, bool)> = messages[..n as usize]
            .iter()
            .zip(&addresses)
            .map(|(m, addr)| {
                let truncated = m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
                (
                    m.msg_len as usize,
                    from_raw(addr, m.msg_hdr.msg_namelen),
                    truncated,
                )
            })
            .collect();
        for (chunk, (len, from, truncated)) in buffers.chunks_mut(slot).zip(received) {
            let datagram = &mut chunk[..len.min(slot)];
            let remote = match check(spec, from, datagram, truncated) {
                Ok(remote) => remote,
                Err(reason) => {
                    let counter = match reason {
                        Rejected::UnknownRemote => &port_counters.vxlan_rx_drops_unknown_remote,
                        Rejected::Short => &port_counters.vxlan_rx_errors_short,
                        Rejected::Flags => &port_counters.vxlan_rx_errors_flags,
                        Rejected::Vni => &port_counters.vxlan_rx_drops_vni,
                        Rejected::TooBig => &port_counters.vxlan_rx_errors_too_big,
                    };
                    stats::inc(counter);
                    continue;
                }
            };
            let inner = &mut datagram[HEADER_LEN..];
            learn(learned, inner, remote);
            stats::inc(&counters.tx_packets);
            stats::add(&counters.tx_bytes, inner.len() as u64);
            let mut offload = Offload::default();
            let mut frame = TxFrame::whole(inner);
            fabric.forward(port, &mut frame, &mut offload, &mut scratch, &counters);
        }
        fabric.flush(&mut scratch);
    }
}

/// Remembers that the inner frame's source MAC sits behind `remote`.
fn learn(learned: &Learned, inner: &[u8], remote: usize) {
    let Some(src) = inner.get(6..12) else {
        return;
    };
    if src[0] & 1 != 0 {
        return;
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(src);
    if learned.read().ok().and_then(|l| l.get(&mac).copied()) == Some(remote) {
        return;
    }
    if let Ok(mut table) = learned.write()
        && (table.len() < MAX_LEARNED || table.contains_key(&mac))
    {
        table.insert(mac, remote);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_with_defaults_and_bad_ones_say_why() {
        let spec: VxlanSpec = "remote=10.0.0.2,remote=10.0.0.3:4790,vni=42"
            .parse()
            .unwrap();
        assert_eq!(
            spec.remotes,
            vec![
                "10.0.0.2:8472".parse::<SocketAddr>().unwrap(),
                "10.0.0.3:4790".parse().unwrap()
            ]
        );
        assert_eq!(spec.vni, 42);
        assert_eq!(spec.local, "0.0.0.0:8472".parse().unwrap());
        let spec: VxlanSpec = "remote=[fd00::2],vni=1,local=[fd00::1]:9000"
            .parse()
            .unwrap();
        assert_eq!(spec.remotes[0], "[fd00::2]:8472".parse().unwrap());
        for (bad, why) in [
            ("remote=10.0.0.2", "vni=N is required"),
            ("vni=1", "remote="),
            ("remote=10.0.0.2,vni=16777216", "below 16777216"),
            ("remote=host,vni=1", "not IP"),
            ("remote=10.0.0.2,remote=[fd00::1],vni=1", "mix"),
            (
                "remote=10.0.0.2,vni=1,local=[::]:1",
                "different IP versions",
            ),
            ("remote=10.0.0.2,vni=1,ttl=3", "unknown key"),
            ("remote=0.0.0.0,vni=1", "other than 0"),
        ] {
            let error = bad.parse::<VxlanSpec>().unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn the_header_is_rfc_7348s() {
        assert_eq!(header(0x12_3456), [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
    }

    #[test]
    fn datagrams_are_checked_for_source_length_flags_and_vni() {
        let spec: VxlanSpec = "remote=10.0.0.2,vni=42".parse().unwrap();
        let from = Some("10.0.0.2:40000".parse().unwrap());
        let mut good = header(42).to_vec();
        good.extend_from_slice(&[0u8; 60]);
        assert_eq!(check(&spec, from, &good, false), Ok(0));
        let stranger = Some("10.0.0.9:8472".parse().unwrap());
        assert_eq!(
            check(&spec, stranger, &good, false),
            Err(Rejected::UnknownRemote)
        );
        assert_eq!(check(&spec, from, &good, true), Err(Rejected::TooBig));
        assert_eq!(check(&spec, from, &good[..20], false), Err(Rejected::Short));
        let mut flags = good.clone();
        flags[0] = 0;
        assert_eq!(check(&spec, from, &flags, false), Err(Rejected::Flags));
        let mut vni = good.clone();
        vni[6] = 0x2b;
        assert_eq!(check(&spec, from, &vni, false), Err(Rejected::Vni));
    }

    #[test]
    fn a_flow_keeps_its_hash_and_flows_spread() {
        let frame = |sport: u16| {
            let mut f = vec![0u8; 64];
            f[12..14].copy_from_slice(&[0x08, 0x00]);
            f[14] = 0x45;
            f[23] = 17;
            f[26..34].copy_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
            f[34..36].copy_from_slice(&sport.to_be_bytes());
            f[36..38].copy_from_slice(&5000u16.to_be_bytes());
            f
        };
        assert_eq!(flow_hash(&frame(1000)), flow_hash(&frame(1000)));
        let sockets: std::collections::HashSet<u64> = (0..64)
            .map(|p| flow_hash(&frame(1000 + p)) % TX_SOCKETS as u64)
            .collect();
        assert_eq!(sockets.len(), TX_SOCKETS, "64 flows use every source port");
        // Short and odd frames hash too.
        let _ = flow_hash(&[1, 2, 3]);
    }
}
