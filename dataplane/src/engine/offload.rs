//! TUN offload, sans IO: the virtio-net header, segmentation of the
//! super-packets the kernel reads out to us (TSO/USO), and coalescing of the
//! packets we write back into super-packets (GRO).
//!
//! A TUN opened with `IFF_VNET_HDR` and configured with `TUNSETOFFLOAD`
//! ([`TUN_OFFLOADS`]) lets the kernel skip segmentation and checksumming for
//! traffic routed into the tunnel: one read can return a 64 KiB TCP or UDP
//! "super-packet". WireGuard encrypts IP packets one by one, so the worker
//! must cut it back into MTU-sized packets with complete checksums (the peer's
//! kernel verifies them after decryption). In the other direction, writing a
//! burst of segments of one flow as a single super-packet saves the kernel
//! almost all of its per-packet receive work. This module does the byte work
//! for both directions and performs no syscalls; the worker owns the fds.
//!
//! Modules, one per seam: [`virtio`] (the 10-byte header), `split`
//! (segmentation of reads and the checksum-only case), `coalesce` (GRO for
//! writes), `checksum` (the internet checksum) and `ip` (the few IP, TCP and
//! UDP header fields both directions touch).
//!
//! # How the worker uses it
//!
//! Setup, on every queue: `TUNSETIFF` with `IFF_VNET_HDR` added to the queue
//! flags, then `TUNSETOFFLOAD` with [`TUN_OFFLOADS`]. Kernels before 6.2 do
//! not know USO and fail that ioctl with `EINVAL`: retry with
//! [`TUN_OFFLOADS_NO_USO`] and build the [`Coalescer`] with `udp = false`,
//! since such a kernel also rejects `GSO_UDP_L4` on writes. The header size
//! must stay the default 10 bytes (never `TUNSETVNETHDRSZ`). The header
//! fields use the host's byte order for a legacy virtio-net header; this
//! module reads and writes little-endian, which is the host order on x86-64
//! and little-endian arm64. A big-endian host must call `TUNSETVNETLE(1)`.
//!
//! Reads: every read starts with a [`VirtioNetHdr`], also for plain packets,
//! and can be `VNET_HDR_LEN + 65535` bytes long. Read into a pool buffer
//! (`pool::BUF_SIZE` has room) at `HEADROOM - VNET_HDR_LEN` so that the IP
//! packet lands at `HEADROOM`, ready to be sealed in place, then call
//! [`parse_read`] on exactly the bytes read:
//! - [`TunRead::Packet`]: one packet, sealed where it lies (its checksum was
//!   completed in place if the kernel left it partial);
//! - [`TunRead::Segments`]: for each [`Segment`], take a pool buffer and call
//!   [`Segment::write`] with `&mut buf[HEADROOM..]`; the segment's length
//!   is [`Segment::len`]. The read buffer can be reused once all are written.
//! - an error: drop the read (count it); it never panics on any input.
//!
//! Writes: collect the decrypted packets of one batch (in arrival order),
//! call [`Coalescer::plan_with`] (or [`Coalescer::plan`]) and issue one
//! write per [`TunWrite`] it yields, of [`TunWrite::header`] followed by
//! `packet[m][skip..]` for each `m` in [`TunWrite::members`]. The header is
//! 10 zero bytes for a packet written alone, or the vnet header plus the
//! rewritten IP and TCP/UDP headers for a super-packet; payloads are never
//! copied. The header is always `VNET_HDR_LEN + skip` bytes, exactly what
//! it replaces in the first member plus 10, so with io_uring (where iovecs
//! must outlive the call) the worker copies it into the first member's
//! buffer, ending where that packet's payload starts (it needs only the 10
//! bytes of headroom every decrypted packet has), and submits one `WRITEV`
//! of `[first buffer from packet start - 10 to its end, other members'
//! [skip..]]`, or a plain `WRITE` for a packet alone. The plan can then be
//! dropped and the [`Coalescer`] reused at once. [`TunWrite::copy_to`]
//! builds the whole write in one buffer instead.

mod checksum;
mod coalesce;
mod ip;
mod split;
pub mod virtio;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;

pub use checksum::checksum;
pub use coalesce::{Coalescer, TunWrite, Writes};
pub use ip::{destination, is_own_datagram};
pub use split::{complete_checksum, parse_read, Segment, Segments, TunRead};
pub use virtio::{VirtioNetHdr, VNET_HDR_LEN};

/// `TUNSETOFFLOAD` flags this module handles: checksum offload, TSO for IPv4
/// and IPv6, and USO for IPv4 and IPv6 (Linux 6.2+). `TUN_F_TSO_ECN` is
/// handled too (CWR stays on the first segment) and may be added.
pub const TUN_OFFLOADS: libc::c_uint =
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_USO4 | libc::TUN_F_USO6;

/// [`TUN_OFFLOADS`] without USO, for kernels older than 6.2.
pub const TUN_OFFLOADS_NO_USO: libc::c_uint =
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;

/// Most packets merged into one super-packet (with MTU-sized TCP segments
/// the 64 KiB limit is reached first anyway).
pub use super::limits::MAX_SEGMENTS;

/// Largest IP packet, and so largest super-packet: the IPv4 total length and
/// the IPv6 payload length are 16-bit (no jumbograms through a TUN).
pub const MAX_PACKET_LEN: usize = 65535;

/// Why a TUN read could not be turned into packets. The caller drops it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// The read is shorter than the 10-byte virtio-net header.
    #[error("read of {0} bytes is shorter than the virtio-net header")]
    ShortVnetHeader(usize),
    /// The GSO type is not TCPv4, TCPv6 or UDP_L4 (e.g. legacy UFO).
    #[error("unsupported virtio GSO type {0:#04x}")]
    UnsupportedGsoType(u8),
    /// A GSO packet with a segment size of zero.
    #[error("GSO packet with gso_size 0")]
    ZeroGsoSize,
    /// `hdr_len` claims more header bytes than the packet has.
    #[error("virtio hdr_len {hdr_len} exceeds the packet length {len}")]
    HdrLenOutOfRange {
        /// The header's `hdr_len`.
        hdr_len: u16,
        /// The packet's length.
        len: usize,
    },
    /// The GSO type does not match the IP version or transport protocol.
    #[error("GSO type {gso_type:#04x} does not match IPv{version} protocol {protocol}")]
    GsoTypeMismatch {
        /// The header's `gso_type`.
        gso_type: u8,
        /// The packet's IP version.
        version: u8,
        /// The packet's transport protocol.
        protocol: u8,
    },
    /// `csum_start`/`csum_offset` do not point at the TCP or UDP checksum.
    #[error("checksum at {start}+{offset} is not the transport checksum")]
    ChecksumOffsetMismatch {
        /// The header's `csum_start`.
        start: u16,
        /// The header's `csum_offset`.
        offset: u16,
    },
    /// `csum_start + csum_offset + 2` is beyond the packet.
    #[error("checksum at {start}+{offset} is outside a packet of {len} bytes")]
    ChecksumOutOfRange {
        /// The header's `csum_start`.
        start: u16,
        /// The header's `csum_offset`.
        offset: u16,
        /// The packet's length.
        len: usize,
    },
    /// The first byte's version nibble is neither 4 nor 6.
    #[error("IP version {0} is neither 4 nor 6")]
    BadIpVersion(u8),
    /// The packet ends inside its IP header.
    #[error("packet ends inside its IP header")]
    TruncatedIp,
    /// The IPv4 header length field is below 5 words (20 bytes).
    #[error("IPv4 header length {0} words is below the minimum of 5")]
    BadIpv4HeaderLen(u8),
    /// An IPv4 fragment cannot be segmented.
    #[error("IPv4 fragment in a GSO packet")]
    Fragment,
    /// An IPv6 extension header sits before the transport header.
    #[error("IPv6 extension header {0} is not supported")]
    Ipv6ExtensionHeader(u8),
    /// The transport protocol is neither TCP nor UDP.
    #[error("transport protocol {0} is neither TCP nor UDP")]
    UnsupportedProtocol(u8),
    /// The packet ends inside its TCP or UDP header.
    #[error("packet ends inside its transport header")]
    TruncatedTransport,
    /// The TCP data offset is below 5 words (20 bytes).
    #[error("TCP header length {0} words is below the minimum of 5")]
    BadTcpHeaderLen(u8),
    /// A GSO packet with no payload after its headers.
    #[error("GSO packet without payload")]
    EmptyPayload,
    /// The MTU leaves no room for payload after the headers.
    #[error("MTU {mtu} leaves no room after {headers} header bytes")]
    MtuTooSmall {
        /// The MTU passed in.
        mtu: usize,
        /// IP plus transport header bytes.
        headers: usize,
    },
    /// A UDP datagram of the super-packet would exceed the MTU; datagrams
    /// are the application's messages, so they are never cut smaller.
    #[error("UDP datagrams of {len} bytes exceed the MTU {mtu}")]
    DatagramTooBig {
        /// Length of one datagram as an IP packet.
        len: usize,
        /// The MTU passed in.
        mtu: usize,
    },
    /// The caller's buffer cannot hold the segment or write.
    #[error("buffer of {available} bytes is too small for {needed}")]
    BufferTooSmall {
        /// Bytes required.
        needed: usize,
        /// Bytes offered.
        available: usize,
    },
}
