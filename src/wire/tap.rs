//! A tap port: a host tap device as one end of the wire, so native tools in a host network
//! namespace can talk to guests.
//!
//! The tap is opened with IFF_VNET_HDR and a 12-byte header, and offloads are turned on
//! (TUNSETOFFLOAD), so GSO frames and partial checksums cross between the kernel and the
//! guests without software segmentation, as they do between virtio-net and vhost-net.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::thread;

use log::{error, warn};

use crate::nic::{GuestOffloads, GuestRxRing, RingWrite, TxFrame};
use crate::packet::offload::{Offload, VIRTIO_NET_HDR_LEN, VirtioNetHdrBytes};
use crate::port::tx::MAX_TX_CHAIN;
use crate::stats;
use crate::stats::RateLimitedLog;
use crate::switch::PortId;
use crate::switch::fabric::{Fabric, ForwardState};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUN_F_TSO_ECN: libc::c_uint = 0x08;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap device {0} does not exist (create it with: ip tuntap add dev {0} mode tap)")]
    Missing(String),
    #[error("tap device name {0:?} is not a valid interface name")]
    BadName(String),
    #[error("cannot open /dev/net/tun: {0}")]
    Open(io::Error),
    #[error("cannot attach to tap device {name}: {source}")]
    Attach { name: String, source: io::Error },
}

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An attached tap device.
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to the existing tap device `name`.
    pub fn attach(name: &str) -> Result<Tap, TapError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ']) {
            return Err(TapError::BadName(name.to_string()));
        }
        if !Path::new("/sys/class/net").join(name).exists() {
            return Err(TapError::Missing(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::Open)?;
        let attach_error = |source| TapError::Attach {
            name: name.to_string(),
            source,
        };
        let mut request = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        for (slot, byte) in request.name.iter_mut().zip(name.bytes()) {
            *slot = byte as libc::c_char;
        }
        // SAFETY: the fd is a tun device we own, and `request` is a properly sized ifreq that
        // outlives the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut request) } < 0 {
            return Err(attach_error(io::Error::last_os_error()));
        }
        let header_len: libc::c_int = VIRTIO_NET_HDR_LEN as libc::c_int;
        // SAFETY: as above; the kernel reads one int.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &header_len) } < 0 {
            return Err(attach_error(io::Error::last_os_error()));
        }
        let offloads = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
        // SAFETY: TUNSETOFFLOAD takes the flags by value.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETOFFLOAD, offloads as libc::c_ulong) } < 0 {
            return Err(attach_error(io::Error::last_os_error()));
        }
        Ok(Tap {
            file,
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The tap as a receiver: frames from the switch are written to the kernel.
pub struct TapRing {
    file: File,
}

impl GuestRxRing for TapRing {
    fn write(&self, header: &VirtioNetHdrBytes, frame: &[u8]) -> RingWrite {
        let parts = [IoSlice::new(header), IoSlice::new(frame)];
        // A tap takes a whole frame per write or nothing, so a short count cannot happen.
        match (&self.file).write_vectored(&parts) {
            Ok(written) if written == header.len() + frame.len() => RingWrite::Written,
            Ok(_) => RingWrite::NotReady,
            // The kernel's queue is full or the device is down: drop, as a NIC would.
            Err(_) => RingWrite::NotReady,
        }
    }

    fn notify(&self) {}

    fn is_enabled(&self) -> bool {
        true
    }

    fn offloads(&self) -> GuestOffloads {
        super::ALL_OFFLOADS
    }
}

/// Connects the tap to port `port` of the fabric: its receive side becomes the NIC's ring,
/// and a thread reads what the kernel sends into the switch.
pub fn start(fabric: Arc<Fabric>, port: PortId, tap: Tap) -> io::Result<thread::JoinHandle<()>> {
    let writer = tap.file.try_clone()?;
    fabric.ports[port]
        .nic
        .attach_fixed_ring(Box::new(TapRing { file: writer }));
    thread::Builder::new()
        .name(format!("tap-{}", tap.name))
        .spawn(move || read_loop(&fabric, port, tap))
}

fn read_loop(fabric: &Fabric, port: PortId, mut tap: Tap) {
    let Some(counters) = fabric.ports[port].queue_counters.first().cloned() else {
        return;
    };
    let mut buffer = vec![0u8; MAX_TX_CHAIN];
    let mut scratch = ForwardState::default();
    let log = RateLimitedLog::new();
    loop {
        let len = match tap.file.read(&mut buffer) {
            Ok(len) => len,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                error!("tap {}: read failed, port stops: {e}", tap.name);
                return;
            }
        };
        if len < VIRTIO_NET_HDR_LEN + 14 {
            stats::inc(&counters.tx_errors_frame);
            continue;
        }
        let (header, frame) = buffer[..len].split_at_mut(VIRTIO_NET_HDR_LEN);
        let mut offload = match Offload::from_virtio_hdr(header, frame) {
            Ok(offload) => offload,
            Err(e) => {
                stats::inc(&counters.tx_errors_header);
                log.warn(|| format!("tap {}: frame header rejected: {e}", tap.name));
                continue;
            }
        };
        stats::inc(&counters.tx_packets);
        stats::add(&counters.tx_bytes, frame.len() as u64);
        let mut frame = TxFrame::whole(frame);
        fabric.forward(port, &mut frame, &mut offload, &mut scratch, &counters);
        fabric.flush(&mut scratch);
        if len == buffer.len() {
            warn!("tap {}: frame filled the whole buffer", tap.name);
        }
    }
}
