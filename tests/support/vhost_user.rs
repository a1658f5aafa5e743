//! A minimal vhost-user frontend speaking the wire protocol directly.
//!
//! Why not `vhost::vhost_user::Frontend`: it enforces the protocol on the client side, which
//! stops us from reproducing what QEMU 10 really sends and what a hostile frontend could send:
//! - its `set_vring_enable` refuses to send before SET_FEATURES acknowledged
//!   PROTOCOL_FEATURES, but QEMU 10 sends SET_VRING_ENABLE for every pair before SET_FEATURES
//!   (the very bug our patched crates fix, see .ci/crate-patches/);
//! - its `get_queue_num` stores the answer as the number of *vrings* and then refuses
//!   requests for vrings beyond it, while QEMU (and our daemon) count queue *pairs*;
//! - it refuses requests for vrings beyond that limit, so a test cannot check how the backend
//!   handles them.
//!
//! The message layouts come from the vhost-user specification
//! (docs/interop/vhost-user.rst in QEMU); the request codes from `vhost`'s message module.

use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use vhost::vhost_user::VhostUserProtocolFeatures;
use vhost::vhost_user::message::FrontendReq;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::{HarnessError, Result};

/// Header flags (spec: "Flags"): protocol version 1, reply bit, need-reply bit.
const FLAG_VERSION_1: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
const HEADER_LEN: usize = 12;
/// A reply body is never larger than this for the requests we send; a larger size field
/// means the backend sent garbage.
const MAX_REPLY_BODY: u32 = 4096;

/// Bit 8 of the SET_VRING_KICK/CALL payload: no file descriptor attached (polling mode).
pub const VRING_NOFD_FLAG: u64 = 0x100;

/// One guest memory region as SET_MEM_TABLE describes it.
#[derive(Clone, Copy, Debug)]
pub struct MemoryRegionMsg {
    pub guest_phys_addr: u64,
    pub memory_size: u64,
    /// The frontend's virtual address of the region; vring addresses are given in this space.
    pub user_addr: u64,
    /// Offset of the region in the file descriptor sent with it.
    pub mmap_offset: u64,
    pub fd: RawFd,
}

/// The addresses of one split virtqueue, in the frontend's virtual address space.
#[derive(Clone, Copy, Debug)]
pub struct VringAddrMsg {
    pub desc_user_addr: u64,
    pub used_user_addr: u64,
    pub avail_user_addr: u64,
}

/// Name of a request for error messages.
fn request_name(request: FrontendReq) -> &'static str {
    match request {
        FrontendReq::GET_FEATURES => "GET_FEATURES",
        FrontendReq::SET_FEATURES => "SET_FEATURES",
        FrontendReq::SET_OWNER => "SET_OWNER",
        FrontendReq::SET_MEM_TABLE => "SET_MEM_TABLE",
        FrontendReq::SET_VRING_NUM => "SET_VRING_NUM",
        FrontendReq::SET_VRING_ADDR => "SET_VRING_ADDR",
        FrontendReq::SET_VRING_BASE => "SET_VRING_BASE",
        FrontendReq::GET_VRING_BASE => "GET_VRING_BASE",
        FrontendReq::SET_VRING_KICK => "SET_VRING_KICK",
        FrontendReq::SET_VRING_CALL => "SET_VRING_CALL",
        FrontendReq::GET_PROTOCOL_FEATURES => "GET_PROTOCOL_FEATURES",
        FrontendReq::SET_PROTOCOL_FEATURES => "SET_PROTOCOL_FEATURES",
        FrontendReq::GET_QUEUE_NUM => "GET_QUEUE_NUM",
        FrontendReq::SET_VRING_ENABLE => "SET_VRING_ENABLE",
        FrontendReq::GET_CONFIG => "GET_CONFIG",
        FrontendReq::GET_MAX_MEM_SLOTS => "GET_MAX_MEM_SLOTS",
        _ => "request",
    }
}

/// A connected vhost-user frontend. Requests are synchronous: each one that expects a reply
/// (a GET, or any request while REPLY_ACK is negotiated) reads it before returning.
pub struct VhostUserConnection {
    stream: UnixStream,
    /// Set once SET_PROTOCOL_FEATURES acknowledged REPLY_ACK: from then on every request
    /// without a natural reply asks for an ack, so a refusal is seen where it happens.
    reply_ack: bool,
}

impl VhostUserConnection {
    /// Connects to a backend listening on `path`, retrying while the socket does not exist
    /// or refuses (the daemon recreates its listener between connections).
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self> {
        let stream = super::wait_for(
            &format!("vhost-user socket {} to accept", path.display()),
            timeout,
            || match UnixStream::connect(path) {
                Ok(stream) => Ok(Some(stream)),
                Err(e)
                    if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) =>
                {
                    Ok(None)
                }
                Err(source) => Err(HarnessError::Socket {
                    request: "connect",
                    source,
                }),
            },
        )?;
        // A hung backend must fail the test, not hang it.
        stream
            .set_read_timeout(Some(super::TIMEOUT))
            .map_err(|source| HarnessError::Socket {
                request: "connect",
                source,
            })?;
        Ok(VhostUserConnection {
            stream,
            reply_ack: false,
        })
    }

    pub fn reply_ack_enabled(&self) -> bool {
        self.reply_ack
    }

    fn send(&mut self, request: FrontendReq, flags: u32, body: &[u8], fds: &[RawFd]) -> Result<()> {
        let name = request_name(request);
        let code: u32 = request.into();
        let mut msg = Vec::with_capacity(HEADER_LEN + body.len());
        msg.extend_from_slice(&code.to_le_bytes());
        msg.extend_from_slice(&(FLAG_VERSION_1 | flags).to_le_bytes());
        msg.extend_from_slice(&(body.len() as u32).to_le_bytes());
        msg.extend_from_slice(body);
        let sent =
            self.stream
                .send_with_fds(&[&msg[..]], fds)
                .map_err(|e| HarnessError::Socket {
                    request: name,
                    source: std::io::Error::from_raw_os_error(e.errno()),
                })?;
        if sent != msg.len() {
            // SOCK_STREAM may in theory send partially; the messages are tiny, so treat it as
            // a broken connection rather than resending without the fds.
            return Err(HarnessError::BadReply {
                request: name,
                detail: format!("sent {sent} of {} bytes", msg.len()),
            });
        }
        Ok(())
    }

    fn read_exact(&mut self, request: &'static str, buf: &mut [u8]) -> Result<()> {
        self.stream.read_exact(buf).map_err(|source| {
            if source.kind() == ErrorKind::UnexpectedEof {
                HarnessError::ConnectionClosed { request }
            } else {
                HarnessError::Socket { request, source }
            }
        })
    }

    /// Reads the reply to `request` and returns its body.
    fn recv_reply(&mut self, request: FrontendReq) -> Result<Vec<u8>> {
        let name = request_name(request);
        let mut header = [0u8; HEADER_LEN];
        self.read_exact(name, &mut header)?;
        let code = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let flags = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let size = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        let expected: u32 = request.into();
        if code != expected || flags & FLAG_REPLY == 0 || size > MAX_REPLY_BODY {
            return Err(HarnessError::BadReply {
                request: name,
                detail: format!("header code {code} flags {flags:#x} size {size}"),
            });
        }
        let mut body = vec![0u8; size as usize];
        self.read_exact(name, &mut body)?;
        Ok(body)
    }

    fn recv_u64(&mut self, request: FrontendReq) -> Result<u64> {
        let body = self.recv_reply(request)?;
        let bytes: [u8; 8] = body
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| HarnessError::BadReply {
                request: request_name(request),
                detail: format!("{}-byte body, want 8", body.len()),
            })?;
        Ok(u64::from_le_bytes(bytes))
    }

    /// Sends a request that has no reply of its own; with REPLY_ACK, waits for the ack and
    /// turns a non-zero one into [`HarnessError::Nack`].
    fn request_no_reply(&mut self, request: FrontendReq, body: &[u8], fds: &[RawFd]) -> Result<()> {
        let flags = if self.reply_ack { FLAG_NEED_REPLY } else { 0 };
        self.send(request, flags, body, fds)?;
        if self.reply_ack {
            let code = self.recv_u64(request)?;
            if code != 0 {
                return Err(HarnessError::Nack {
                    request: request_name(request),
                    code,
                });
            }
        }
        Ok(())
    }

    fn request_u64(&mut self, request: FrontendReq) -> Result<u64> {
        self.send(request, 0, &[], &[])?;
        self.recv_u64(request)
    }

    pub fn get_features(&mut self) -> Result<u64> {
        self.request_u64(FrontendReq::GET_FEATURES)
    }

    pub fn set_features(&mut self, features: u64) -> Result<()> {
        self.request_no_reply(FrontendReq::SET_FEATURES, &features.to_le_bytes(), &[])
    }

    pub fn get_protocol_features(&mut self) -> Result<u64> {
        self.request_u64(FrontendReq::GET_PROTOCOL_FEATURES)
    }

    /// Acknowledges protocol features. QEMU sends this without NEED_REPLY (REPLY_ACK is
    /// not in force until it is acknowledged), and so do we.
    pub fn set_protocol_features(&mut self, features: u64) -> Result<()> {
        self.send(
            FrontendReq::SET_PROTOCOL_FEATURES,
            0,
            &features.to_le_bytes(),
            &[],
        )?;
        self.reply_ack = features & VhostUserProtocolFeatures::REPLY_ACK.bits() != 0;
        Ok(())
    }

    /// The number of queues the backend supports; for a net device QEMU reads it as queue
    /// pairs.
    pub fn get_queue_num(&mut self) -> Result<u64> {
        self.request_u64(FrontendReq::GET_QUEUE_NUM)
    }

    pub fn set_owner(&mut self) -> Result<()> {
        self.request_no_reply(FrontendReq::SET_OWNER, &[], &[])
    }

    pub fn set_mem_table(&mut self, regions: &[MemoryRegionMsg]) -> Result<()> {
        // struct { u32 nregions; u32 padding; region[nregions] } with
        // region = { u64 guest_phys_addr, memory_size, userspace_addr, mmap_offset }.
        let mut body = Vec::with_capacity(8 + regions.len() * 32);
        body.extend_from_slice(&(regions.len() as u32).to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        for region in regions {
            body.extend_from_slice(&region.guest_phys_addr.to_le_bytes());
            body.extend_from_slice(&region.memory_size.to_le_bytes());
            body.extend_from_slice(&region.user_addr.to_le_bytes());
            body.extend_from_slice(&region.mmap_offset.to_le_bytes());
        }
        let fds: Vec<RawFd> = regions.iter().map(|r| r.fd).collect();
        self.request_no_reply(FrontendReq::SET_MEM_TABLE, &body, &fds)
    }

    fn vring_state(index: u32, num: u32) -> [u8; 8] {
        let mut body = [0u8; 8];
        body[..4].copy_from_slice(&index.to_le_bytes());
        body[4..].copy_from_slice(&num.to_le_bytes());
        body
    }

    pub fn set_vring_num(&mut self, vring: u32, size: u32) -> Result<()> {
        self.request_no_reply(
            FrontendReq::SET_VRING_NUM,
            &Self::vring_state(vring, size),
            &[],
        )
    }

    pub fn set_vring_base(&mut self, vring: u32, base: u32) -> Result<()> {
        self.request_no_reply(
            FrontendReq::SET_VRING_BASE,
            &Self::vring_state(vring, base),
            &[],
        )
    }

    /// Stops the vring in the backend and returns its next available index.
    pub fn get_vring_base(&mut self, vring: u32) -> Result<u32> {
        self.send(
            FrontendReq::GET_VRING_BASE,
            0,
            &Self::vring_state(vring, 0),
            &[],
        )?;
        let body = self.recv_reply(FrontendReq::GET_VRING_BASE)?;
        let num: [u8; 4] = body
            .get(4..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| HarnessError::BadReply {
                request: "GET_VRING_BASE",
                detail: format!("{}-byte body, want 8", body.len()),
            })?;
        Ok(u32::from_le_bytes(num))
    }

    pub fn set_vring_addr(&mut self, vring: u32, addr: &VringAddrMsg) -> Result<()> {
        // struct { u32 index, flags; u64 desc, used, avail, log }.
        let mut body = Vec::with_capacity(40);
        body.extend_from_slice(&vring.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        body.extend_from_slice(&addr.desc_user_addr.to_le_bytes());
        body.extend_from_slice(&addr.used_user_addr.to_le_bytes());
        body.extend_from_slice(&addr.avail_user_addr.to_le_bytes());
        body.extend_from_slice(&0u64.to_le_bytes());
        self.request_no_reply(FrontendReq::SET_VRING_ADDR, &body, &[])
    }

    pub fn set_vring_kick(&mut self, vring: u32, fd: &impl AsRawFd) -> Result<()> {
        self.request_no_reply(
            FrontendReq::SET_VRING_KICK,
            &u64::from(vring).to_le_bytes(),
            &[fd.as_raw_fd()],
        )
    }

    pub fn set_vring_call(&mut self, vring: u32, fd: &impl AsRawFd) -> Result<()> {
        self.request_no_reply(
            FrontendReq::SET_VRING_CALL,
            &u64::from(vring).to_le_bytes(),
            &[fd.as_raw_fd()],
        )
    }

    pub fn set_vring_enable(&mut self, vring: u32, enable: bool) -> Result<()> {
        self.request_no_reply(
            FrontendReq::SET_VRING_ENABLE,
            &Self::vring_state(vring, u32::from(enable)),
            &[],
        )
    }
}
