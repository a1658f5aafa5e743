//! virtio-net offload semantics: the header a guest puts before each frame, checksum
//! completion and software TSO.
//!
//! API:
//! - [`Offload::from_virtio_hdr`]`(hdr: &[u8], frame: &[u8]) -> Result<Offload, OffloadError>`
//!   parses the 12-byte `virtio_net_hdr_v1` a guest sent and checks it against the frame once;
//!   what comes out is safe to act on ([`CsumRequest`] lies inside the frame, a
//!   [`GsoRequest`] names a real TCP/IPv4 or TCP/IPv6 frame whose checksum request points at
//!   the TCP checksum, and carries the header length recomputed from the frame, not the
//!   guest's hint).
//! - [`Offload::rx_plan`]`(&self, &GuestOffloads) -> RxPlan` decides, for a receiving guest's
//!   negotiated features, whether the frame can be delivered as is, needs its checksum
//!   completed, or must be segmented, and which header the guest should then see.
//! - [`Offload::write_virtio_hdr`]`(&self, out: &mut VirtioNetHdrBytes, num_buffers: u16)` writes it.
//! - [`complete_checksum`]`(frame: &mut [u8], &CsumRequest) -> Result<(), OffloadError>` folds
//!   the partial checksum the sender left (Linux's `CHECKSUM_PARTIAL`).
//! - [`segment`]`(frame, &GsoRequest, scratch: &mut [u8], emit: impl FnMut(&[u8]))
//!   -> Result<usize, OffloadError>` is software TSO: it writes each segment into `scratch`
//!   (which must hold [`GsoRequest::hdr_len`]` + size` bytes, see [`segment_buffer_len`]) and
//!   hands it to `emit`; returns the number of segments. No allocation.
//!
//! Every rejection is its own [`OffloadError`] variant so the port can count each reason.

use super::checksum;
use super::headers::{IpVersion, Layers, LocateError, locate_l4};
use super::ip_proto;
use super::ipv4::Ipv4Packet;
use super::ipv6::{self, Ipv6Packet};
use super::tcp::{self, TcpPacket};

/// Length of `struct virtio_net_hdr_v1` (VIRTIO_F_VERSION_1 / MRG_RXBUF layout): always 12
/// bytes, whether or not MRG_RXBUF was negotiated. The one definition for every port.
pub const VIRTIO_NET_HDR_LEN: usize = 12;

/// A `virtio_net_hdr_v1` as bytes, as rings and ports pass it.
pub type VirtioNetHdrBytes = [u8; VIRTIO_NET_HDR_LEN];

/// `virtio_net_hdr.flags` bits.
pub mod hdr_flags {
    pub const NEEDS_CSUM: u8 = 1;
    pub const DATA_VALID: u8 = 2;
    pub const RSC_INFO: u8 = 4;
}

/// `virtio_net_hdr.gso_type` values.
pub mod gso_type {
    pub const NONE: u8 = 0;
    pub const TCPV4: u8 = 1;
    pub const UDP: u8 = 3;
    pub const TCPV6: u8 = 4;
    pub const UDP_L4: u8 = 5;
    pub const ECN: u8 = 0x80;
}

/// What a virtio-net header asks for, checked against the frame once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsumRequest {
    /// Offset in the frame where checksumming starts (the transport header).
    pub start: u16,
    /// Offset of the checksum field from `start`.
    pub offset: u16,
}

/// The GSO types we segment (VIRTIO_NET_HDR_GSO_TCPV4 / TCPV6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsoKind {
    Tcp4,
    Tcp6,
}

/// A TSO request, validated against the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GsoRequest {
    pub kind: GsoKind,
    /// VIRTIO_NET_HDR_GSO_ECN: the flow uses ECN (CWR may be set on the first segment).
    pub ecn: bool,
    /// The MSS: payload bytes per segment (never 0).
    pub size: u16,
    /// Ethernet + VLAN + IP + TCP header length, recomputed from the frame.
    pub hdr_len: u16,
}

/// The virtio-net header of a frame delivered as it is ([`Offload::is_plain`]) in one
/// buffer: no flags, no GSO, `num_buffers` 1. What `rx_plan` and `write_virtio_hdr` give for it.
pub const PLAIN_RX_HEADER: [u8; VIRTIO_NET_HDR_LEN] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];

/// The offloads of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offload {
    pub csum: Option<CsumRequest>,
    pub gso: Option<GsoRequest>,
    /// VIRTIO_NET_HDR_F_DATA_VALID: the checksums are known good.
    pub data_valid: bool,
}

/// Why a virtio-net header or a frame was refused. One variant per drop counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    #[error("virtio-net header is {len} bytes, need {VIRTIO_NET_HDR_LEN}")]
    HeaderTooShort { len: usize },
    #[error("unknown virtio-net header flags {flags:#04x}")]
    UnknownFlags { flags: u8 },
    #[error("RSC_INFO flag set by the driver (only a device may set it)")]
    RscInfoFromDriver,
    #[error("unsupported GSO type {gso_type:#04x}")]
    UnsupportedGsoType { gso_type: u8 },
    #[error("GSO ECN bit without a GSO type")]
    EcnWithoutGso,
    #[error("GSO requested without NEEDS_CSUM")]
    GsoWithoutCsum,
    #[error("GSO size is 0")]
    GsoSizeZero,
    #[error("checksum at {start}+{offset} does not fit a {frame_len}-byte frame")]
    CsumOutOfFrame {
        start: u16,
        offset: u16,
        frame_len: usize,
    },
    #[error("GSO frame is not IPv4 or IPv6")]
    NotIp,
    #[error("GSO type says IPv{expected} but the frame is IPv{found}")]
    GsoIpVersionMismatch { expected: u8, found: u8 },
    #[error("GSO frame carries protocol {protocol}, not TCP")]
    NotTcp { protocol: u8 },
    #[error("GSO frame is an IP fragment")]
    Fragmented,
    #[error("TSO checksum at {start}+{offset}, but the TCP checksum is at {tcp_offset}+16")]
    TsoCsumMismatch {
        start: u16,
        offset: u16,
        tcp_offset: usize,
    },
    #[error("a header of the GSO frame (or its IP length) extends beyond the frame")]
    HeaderLengthBeyondFrame,
    #[error("a header of the GSO frame has an impossible field")]
    MalformedHeaders,
    #[error("scratch buffer of {have} bytes, a segment needs {needed}")]
    ScratchTooSmall { needed: usize, have: usize },
}

impl OffloadError {
    /// Number of variants (the length of a per-reason counter array).
    pub const COUNT: usize = 16;

    /// Stable snake_case names, in [`index`](Self::index) order, for counters.
    pub const NAMES: [&'static str; Self::COUNT] = [
        "header_too_short",
        "unknown_flags",
        "rsc_info_from_driver",
        "unsupported_gso_type",
        "ecn_without_gso",
        "gso_without_csum",
        "gso_size_zero",
        "csum_out_of_frame",
        "not_ip",
        "gso_ip_version_mismatch",
        "not_tcp",
        "fragmented",
        "tso_csum_mismatch",
        "header_length_beyond_frame",
        "malformed_headers",
        "scratch_too_small",
    ];

    /// A dense index in `0..COUNT`, for per-reason drop counters.
    pub fn index(&self) -> usize {
        match self {
            OffloadError::HeaderTooShort { .. } => 0,
            OffloadError::UnknownFlags { .. } => 1,
            OffloadError::RscInfoFromDriver => 2,
            OffloadError::UnsupportedGsoType { .. } => 3,
            OffloadError::EcnWithoutGso => 4,
            OffloadError::GsoWithoutCsum => 5,
            OffloadError::GsoSizeZero => 6,
            OffloadError::CsumOutOfFrame { .. } => 7,
            OffloadError::NotIp => 8,
            OffloadError::GsoIpVersionMismatch { .. } => 9,
            OffloadError::NotTcp { .. } => 10,
            OffloadError::Fragmented => 11,
            OffloadError::TsoCsumMismatch { .. } => 12,
            OffloadError::HeaderLengthBeyondFrame => 13,
            OffloadError::MalformedHeaders => 14,
            OffloadError::ScratchTooSmall { .. } => 15,
        }
    }

    /// The reason's counter name.
    pub fn name(&self) -> &'static str {
        Self::NAMES[self.index()]
    }
}

impl From<LocateError> for OffloadError {
    fn from(error: LocateError) -> Self {
        match error {
            LocateError::NotIp => OffloadError::NotIp,
            LocateError::Truncated => OffloadError::HeaderLengthBeyondFrame,
            LocateError::Malformed => OffloadError::MalformedHeaders,
        }
    }
}

impl From<super::Error> for OffloadError {
    fn from(error: super::Error) -> Self {
        OffloadError::from(LocateError::from(error))
    }
}

/// The receive offloads a guest negotiated (VIRTIO_NET_F_GUEST_CSUM, _GUEST_TSO4, _GUEST_TSO6,
/// _GUEST_ECN).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GuestOffloads {
    pub csum: bool,
    pub tso4: bool,
    pub tso6: bool,
    pub ecn: bool,
}

impl GuestOffloads {
    /// The offloads as four bits (csum, tso4, tso6, ecn), to keep them in an atomic.
    pub fn to_bits(self) -> u8 {
        u8::from(self.csum)
            | u8::from(self.tso4) << 1
            | u8::from(self.tso6) << 2
            | u8::from(self.ecn) << 3
    }

    pub fn from_bits(bits: u8) -> Self {
        GuestOffloads {
            csum: bits & 1 != 0,
            tso4: bits & 2 != 0,
            tso6: bits & 4 != 0,
            ecn: bits & 8 != 0,
        }
    }
}

/// What the device must do to a frame before a guest may receive it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxAction {
    /// Deliver the frame unchanged.
    Deliver,
    /// Run [`complete_checksum`] first.
    CompleteChecksum,
    /// Run [`segment`] and deliver each segment.
    Segment,
}

/// [`Offload::rx_plan`]'s answer: the action and the header each delivered frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxPlan {
    pub action: RxAction,
    pub header: Offload,
}

fn le16(hdr: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([hdr[at], hdr[at + 1]])
}

impl Offload {
    /// Whether [`from_virtio_hdr`](Self::from_virtio_hdr) reads the frame (its headers or
    /// length) for this header: for a checksum or GSO request. When it does not, the frame
    /// passed may be any prefix of it.
    pub fn reads_frame(hdr: &[u8]) -> bool {
        match hdr {
            [flags, gso_type, ..] => flags & hdr_flags::NEEDS_CSUM != 0 || *gso_type != 0,
            _ => true,
        }
    }

    /// Parses the 12-byte `virtio_net_hdr_v1` (flags u8, gso_type u8, hdr_len le16, gso_size
    /// le16, csum_start le16, csum_offset le16, num_buffers le16) a guest sent with `frame`
    /// after it, and validates it against the frame. `hdr_len` from the guest is ignored (Linux
    /// guests send it as a hint only); the real header length is recomputed from the frame.
    #[inline]
    pub fn from_virtio_hdr(hdr: &[u8], frame: &[u8]) -> Result<Offload, OffloadError> {
        // Most frames ask for nothing (no flags, no GSO): decided inline, so the caller gets
        // a constant rather than a result copied out of memory (a copy whose loads could not
        // be forwarded from its stores: a twentieth of the 64-byte TX path).
        if Self::asks_nothing(hdr) {
            return Ok(Offload::default());
        }
        Self::parse_virtio_hdr(hdr, frame)
    }

    /// Whether `hdr` is a whole virtio-net header that asks for nothing (no flags, no GSO):
    /// its [`Offload`] is the default, whatever the frame. A hot path tests this first and
    /// keeps the default in place, rather than moving a parsed result out of a `Result`.
    #[inline]
    pub fn asks_nothing(hdr: &[u8]) -> bool {
        hdr.len() >= VIRTIO_NET_HDR_LEN && hdr[0] == 0 && hdr[1] == 0
    }

    /// [`from_virtio_hdr`](Self::from_virtio_hdr) for headers that ask for something.
    #[inline(never)]
    fn parse_virtio_hdr(hdr: &[u8], frame: &[u8]) -> Result<Offload, OffloadError> {
        if hdr.len() < VIRTIO_NET_HDR_LEN {
            return Err(OffloadError::HeaderTooShort { len: hdr.len() });
        }
        let flags = hdr[0];
        let raw_gso_type = hdr[1];
        let gso_size = le16(hdr, 4);
        let csum_start = le16(hdr, 6);
        let csum_offset = le16(hdr, 8);

        let known = hdr_flags::NEEDS_CSUM | hdr_flags::DATA_VALID | hdr_flags::RSC_INFO;
        if flags & !known != 0 {
            return Err(OffloadError::UnknownFlags { flags });
        }
        if flags & hdr_flags::RSC_INFO != 0 {
            return Err(OffloadError::RscInfoFromDriver);
        }
        let ecn = raw_gso_type & gso_type::ECN != 0;
        let kind = match raw_gso_type & !gso_type::ECN {
            gso_type::NONE if ecn => return Err(OffloadError::EcnWithoutGso),
            gso_type::NONE => None,
            gso_type::TCPV4 => Some(GsoKind::Tcp4),
            gso_type::TCPV6 => Some(GsoKind::Tcp6),
            _ => {
                return Err(OffloadError::UnsupportedGsoType {
                    gso_type: raw_gso_type,
                });
            }
        };

        let csum = if flags & hdr_flags::NEEDS_CSUM != 0 {
            let end = usize::from(csum_start) + usize::from(csum_offset) + 2;
            if end > frame.len() {
                return Err(OffloadError::CsumOutOfFrame {
                    start: csum_start,
                    offset: csum_offset,
                    frame_len: frame.len(),
                });
            }
            Some(CsumRequest {
                start: csum_start,
                offset: csum_offset,
            })
        } else {
            None
        };

        let gso = match kind {
            None => None,
            Some(kind) => {
                if csum.is_none() {
                    return Err(OffloadError::GsoWithoutCsum);
                }
                if gso_size == 0 {
                    return Err(OffloadError::GsoSizeZero);
                }
                let tcp = locate_tcp(frame, kind)?;
                // The receiver of a delivered TSO frame (or our segmentation) relies on the
                // checksum request naming the TCP checksum; a guest that says otherwise sent an
                // inconsistent header (Linux and DPDK both send start = TCP header, offset 16).
                if let Some(request) = csum
                    && (usize::from(request.start) != tcp.layers.l4_offset
                        || usize::from(request.offset) != tcp::CHECKSUM_OFFSET)
                {
                    return Err(OffloadError::TsoCsumMismatch {
                        start: request.start,
                        offset: request.offset,
                        tcp_offset: tcp.layers.l4_offset,
                    });
                }
                let hdr_len = u16::try_from(tcp.header_end)
                    .map_err(|_| OffloadError::HeaderLengthBeyondFrame)?;
                Some(GsoRequest {
                    kind,
                    ecn,
                    size: gso_size,
                    hdr_len,
                })
            }
        };

        Ok(Offload {
            csum,
            gso,
            data_valid: flags & hdr_flags::DATA_VALID != 0,
        })
    }

    /// Decides how to hand this frame to a guest that negotiated `guest`, and which header the
    /// delivered frame(s) carry. Segments and completed checksums are marked DATA_VALID when
    /// the guest negotiated checksum offload (the spec allows DATA_VALID only then).
    pub fn rx_plan(&self, guest: &GuestOffloads) -> RxPlan {
        let verified = Offload {
            csum: None,
            gso: None,
            data_valid: guest.csum,
        };
        if let Some(gso) = self.gso {
            let kind_ok = match gso.kind {
                GsoKind::Tcp4 => guest.tso4,
                GsoKind::Tcp6 => guest.tso6,
            };
            if guest.csum && kind_ok && (!gso.ecn || guest.ecn) {
                return RxPlan {
                    action: RxAction::Deliver,
                    header: *self,
                };
            }
            return RxPlan {
                action: RxAction::Segment,
                header: verified,
            };
        }
        if self.csum.is_some() {
            if guest.csum {
                return RxPlan {
                    action: RxAction::Deliver,
                    header: *self,
                };
            }
            return RxPlan {
                action: RxAction::CompleteChecksum,
                header: verified,
            };
        }
        let header = Offload {
            data_valid: self.data_valid && guest.csum,
            ..*self
        };
        RxPlan {
            action: RxAction::Deliver,
            header,
        }
    }

    /// Whether this frame asks for nothing and claims nothing (no checksum request, no GSO,
    /// not DATA_VALID): every receiving guest then gets it as it is, under
    /// [`PLAIN_RX_HEADER`], whatever it negotiated.
    #[inline]
    pub fn is_plain(&self) -> bool {
        self.csum.is_none() && self.gso.is_none() && !self.data_valid
    }

    /// Writes the `virtio_net_hdr_v1` a receiving guest should see for this frame.
    pub fn write_virtio_hdr(&self, out: &mut [u8; VIRTIO_NET_HDR_LEN], num_buffers: u16) {
        let mut flags = 0;
        if self.csum.is_some() {
            flags |= hdr_flags::NEEDS_CSUM;
        }
        if self.data_valid {
            flags |= hdr_flags::DATA_VALID;
        }
        let (raw_gso_type, hdr_len, gso_size) = match self.gso {
            None => (gso_type::NONE, 0, 0),
            Some(gso) => {
                let base = match gso.kind {
                    GsoKind::Tcp4 => gso_type::TCPV4,
                    GsoKind::Tcp6 => gso_type::TCPV6,
                };
                let ecn = if gso.ecn { gso_type::ECN } else { 0 };
                (base | ecn, gso.hdr_len, gso.size)
            }
        };
        let (csum_start, csum_offset) = self.csum.map_or((0, 0), |c| (c.start, c.offset));
        out[0] = flags;
        out[1] = raw_gso_type;
        out[2..4].copy_from_slice(&hdr_len.to_le_bytes());
        out[4..6].copy_from_slice(&gso_size.to_le_bytes());
        out[6..8].copy_from_slice(&csum_start.to_le_bytes());
        out[8..10].copy_from_slice(&csum_offset.to_le_bytes());
        out[10..12].copy_from_slice(&num_buffers.to_le_bytes());
    }
}

/// A TCP frame's layout, checked for segmentation.
struct TcpLayout {
    layers: Layers,
    /// Offset one past the TCP header (options included): the start of the payload.
    header_end: usize,
}

/// Checks that `frame` is a whole, unfragmented TCP packet over the IP version `kind` names.
fn locate_tcp(frame: &[u8], kind: GsoKind) -> Result<TcpLayout, OffloadError> {
    let layers = locate_l4(frame)?;
    let (expected, found) = match (kind, layers.ip) {
        (GsoKind::Tcp4, IpVersion::V4) | (GsoKind::Tcp6, IpVersion::V6) => (0, 0),
        (GsoKind::Tcp4, IpVersion::V6) => (4, 6),
        (GsoKind::Tcp6, IpVersion::V4) => (6, 4),
    };
    if expected != found {
        return Err(OffloadError::GsoIpVersionMismatch { expected, found });
    }
    if layers.protocol != ip_proto::TCP {
        return Err(OffloadError::NotTcp {
            protocol: layers.protocol,
        });
    }
    if layers.fragment {
        return Err(OffloadError::Fragmented);
    }
    let segment = frame
        .get(layers.l4_offset..layers.ip_end)
        .ok_or(OffloadError::HeaderLengthBeyondFrame)?;
    let tcp = TcpPacket::new_checked(segment)?;
    Ok(TcpLayout {
        layers,
        header_end: layers.l4_offset + tcp.header_len(),
    })
}

/// Fills in the checksum the sender left partial. As Linux leaves it, the checksum field
/// already holds the pseudo-header sum, so the answer is the folded, complemented sum of
/// `frame[start..]` (to the end of the frame, like `skb_checksum_help`), stored at
/// `start + offset`. A result of 0 is stored as 0xffff (equal in one's complement; UDP reserves
/// 0 for "no checksum").
pub fn complete_checksum(frame: &mut [u8], csum: &CsumRequest) -> Result<(), OffloadError> {
    let start = usize::from(csum.start);
    let field = start + usize::from(csum.offset);
    if field + 2 > frame.len() {
        return Err(OffloadError::CsumOutOfFrame {
            start: csum.start,
            offset: csum.offset,
            frame_len: frame.len(),
        });
    }
    let value = match checksum::finish(checksum::sum(&frame[start..])) {
        0 => 0xffff,
        value => value,
    };
    frame[field..field + 2].copy_from_slice(&value.to_be_bytes());
    Ok(())
}

/// The scratch length [`segment`] needs for this request.
pub fn segment_buffer_len(gso: &GsoRequest) -> usize {
    usize::from(gso.hdr_len) + usize::from(gso.size)
}

/// Software TSO: cuts a GSO frame into segments of at most `gso.size` payload bytes, each a
/// complete frame with its own IPv4 total length, id (incrementing from the original) and
/// header checksum, or IPv6 payload length; its own TCP sequence number; FIN and PSH only on
/// the last segment and CWR only on the first; and a full TCP checksum. Each segment is
/// written into `scratch` and passed to `emit`. VLAN tags, IPv4 options, IPv6 extension
/// headers and TCP options are copied into every segment. A frame whose payload already fits
/// one segment comes out as one segment with its checksums filled in. Returns the number of
/// segments emitted. The frame is re-validated here (the request may not come from
/// [`Offload::from_virtio_hdr`]); `gso.hdr_len` is not trusted.
pub fn segment(
    frame: &[u8],
    gso: &GsoRequest,
    scratch: &mut [u8],
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, OffloadError> {
    if gso.size == 0 {
        return Err(OffloadError::GsoSizeZero);
    }
    let layout = locate_tcp(frame, gso.kind)?;
    let layers = layout.layers;
    let header_end = layout.header_end;
    let payload = &frame[header_end..layers.ip_end];
    let mss = usize::from(gso.size);

    let largest_chunk = mss.min(payload.len());
    let needed = header_end + largest_chunk;
    if scratch.len() < needed {
        return Err(OffloadError::ScratchTooSmall {
            needed,
            have: scratch.len(),
        });
    }
    // A segment's IP length is at most the original packet's, which came from a 16-bit field,
    // so the narrowing casts below cannot truncate.
    let ip_fixed = match layers.ip {
        IpVersion::V4 => 0,
        IpVersion::V6 => ipv6::HEADER_LEN,
    };

    let original_tcp = TcpPacket::new_checked(&frame[layers.l4_offset..header_end])?;
    let first_seq = original_tcp.seq_number();
    let original_flags = original_tcp.flags();
    let (first_ident, src4, dst4) = match layers.ip {
        IpVersion::V4 => {
            let ip = Ipv4Packet::new_checked_header(&frame[layers.l3_offset..])?;
            (ip.ident(), ip.src_addr(), ip.dst_addr())
        }
        IpVersion::V6 => (0, [0; 4], [0; 4]),
    };
    let (src6, dst6) = match layers.ip {
        IpVersion::V6 => {
            let ip = Ipv6Packet::new_checked_header(&frame[layers.l3_offset..])?;
            (ip.src_addr(), ip.dst_addr())
        }
        IpVersion::V4 => ([0; 16], [0; 16]),
    };

    let count = payload.len().div_ceil(mss).max(1);
    for index in 0..count {
        let chunk_start = index * mss;
        let chunk = &payload[chunk_start..(chunk_start + mss).min(payload.len())];
        let segment_len = header_end + chunk.len();
        let out = &mut scratch[..segment_len];
        out[..header_end].copy_from_slice(&frame[..header_end]);
        super::copy::copy_slice(&mut out[header_end..], chunk);

        let ip_len = (segment_len - layers.l3_offset - ip_fixed) as u16;
        match layers.ip {
            IpVersion::V4 => {
                let mut ip = Ipv4Packet::new_checked_header(&mut out[layers.l3_offset..])?;
                ip.set_total_len(ip_len);
                ip.set_ident(first_ident.wrapping_add(index as u16));
                ip.fill_checksum();
            }
            IpVersion::V6 => {
                let mut ip = Ipv6Packet::new_checked_header(&mut out[layers.l3_offset..])?;
                ip.set_payload_len(ip_len);
            }
        }

        let last = index + 1 == count;
        let mut flags = original_flags;
        if !last {
            flags &= !(tcp::flags::FIN | tcp::flags::PSH);
        }
        if index != 0 {
            flags &= !tcp::flags::CWR;
        }
        let tcp_len = segment_len - layers.l4_offset;
        let pseudo = match layers.ip {
            IpVersion::V4 => checksum::pseudo_header_v4(src4, dst4, 6, tcp_len as u16),
            IpVersion::V6 => checksum::pseudo_header_v6(src6, dst6, 6, tcp_len as u32),
        };
        let mut segment_tcp = TcpPacket::new_checked(&mut out[layers.l4_offset..])?;
        segment_tcp.set_seq_number(first_seq.wrapping_add(chunk_start as u32));
        segment_tcp.set_flags(flags);
        segment_tcp.set_checksum(0);
        let value = checksum::finish(pseudo + checksum::sum(&out[layers.l4_offset..]));
        let mut segment_tcp = TcpPacket::new_checked(&mut out[layers.l4_offset..])?;
        segment_tcp.set_checksum(value);

        emit(out);
    }
    Ok(count)
}

#[cfg(test)]
mod tests;
