//! Reads: turning what the TUN hands over into IP packets WireGuard can
//! encrypt one by one.
//!
//! A read is a plain packet, a plain packet whose transport checksum was
//! left partial (`NEEDS_CSUM`, completed in place), or a super-packet
//! (`gso_type` TCPv4/TCPv6/UDP_L4) cut here into segments of `gso_size`
//! payload bytes, the way the kernel's `tcp_gso_segment` and
//! `__udp_gso_segment` would: every segment gets a copy of the headers with
//! its own IPv4 total length, IPv4 ID (first + index), IPv4 header
//! checksum, IPv6 payload length, TCP sequence number, FIN/PSH only on the
//! last segment, CWR only on the first, UDP length, and a full transport
//! checksum. Checksums must be complete because the peer's kernel verifies
//! them after decryption; there is no offload on the far side of a tunnel.
//!
//! Segmenting costs one copy per segment, which the packet buffers need
//! anyway (each segment is sealed in its own buffer); the payload's
//! checksum is summed during that copy, and the header fields' share comes
//! from sums taken once per super-packet. [`Segments`] yields
//! lazy [`Segment`]s so the worker picks the buffer and offset; nothing is
//! allocated.

use super::checksum::Csum;
use super::ip::{self, Headers, PROTO_UDP, TCP_CWR, TCP_FIN, TCP_FLAGS, TCP_PSH};
use super::virtio::{
    VirtioNetHdr, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP_L4,
    VNET_HDR_LEN,
};
use super::{OffloadError, MAX_PACKET_LEN};

/// What one TUN read contains.
#[derive(Debug)]
pub enum TunRead<'a> {
    /// One IP packet (the read after its virtio-net header), complete: a
    /// partial checksum has been filled in.
    Packet(&'a mut [u8]),
    /// A super-packet; write each segment into its own buffer.
    Segments(Segments<'a>),
}

/// Interprets one TUN read: `read` is exactly the bytes `read(2)` returned
/// (virtio-net header, then the packet), and `mtu` is the largest IP packet
/// to emit (the TUN's MTU). Completes a partial checksum in place. Errors
/// mean the read is malformed or unsupported and should be dropped.
pub fn parse_read(read: &mut [u8], mtu: usize) -> Result<TunRead<'_>, OffloadError> {
    let hdr = VirtioNetHdr::parse(read)?;
    let pkt = &mut read[VNET_HDR_LEN..];
    if hdr.is_gso() {
        Ok(TunRead::Segments(Segments::new(&hdr, pkt, mtu)?))
    } else {
        complete_checksum(&hdr, pkt)?;
        Ok(TunRead::Packet(pkt))
    }
}

/// Completes the checksum of a non-GSO packet flagged `NEEDS_CSUM`: sums
/// `pkt[csum_start..]` (whose checksum field holds the pseudo-header sum)
/// and stores the result at `csum_start + csum_offset`. Does nothing
/// without the flag. Generic over the protocol, like the kernel's
/// `skb_checksum_help`, including its rule that a zero result is stored as
/// 0xffff (required for UDP, equivalent for TCP).
pub fn complete_checksum(hdr: &VirtioNetHdr, pkt: &mut [u8]) -> Result<(), OffloadError> {
    if !hdr.needs_csum() {
        return Ok(());
    }
    let start = usize::from(hdr.csum_start);
    let at = start + usize::from(hdr.csum_offset);
    if at + 2 > pkt.len() {
        return Err(OffloadError::ChecksumOutOfRange {
            start: hdr.csum_start,
            offset: hdr.csum_offset,
            len: pkt.len(),
        });
    }
    let c = match Csum::default().add_bytes(&pkt[start..]).finish() {
        0 => 0xffff,
        c => c,
    };
    ip::put16(pkt, at, c);
    Ok(())
}

/// What every segment shares, computed once per super-packet.
#[derive(Debug, Clone, Copy)]
struct Template {
    h: Headers,
    /// Payload bytes per segment (the last may be shorter).
    seg_size: usize,
    /// TCP sequence number of the first payload byte.
    seq: u32,
    /// IPv4 ID of the first segment.
    id: u16,
    /// Pseudo-header sum without the length.
    pseudo: Csum,
    /// Sum of the IPv4 header without its per-segment fields (total
    /// length, ID, checksum); unused for IPv6.
    ip_sum: Csum,
    /// Sum of the transport header without its per-segment fields (TCP:
    /// sequence number, the data-offset and flags word, checksum; UDP:
    /// length, checksum).
    l4_sum: Csum,
    /// The TCP data-offset byte, which shares a 16-bit word with the flags.
    tcp_doff: u8,
}

/// The segments of one super-packet, in order. An [`ExactSizeIterator`]:
/// `len()` tells the worker how many buffers it needs before it starts.
#[derive(Debug, Clone)]
pub struct Segments<'a> {
    pkt: &'a [u8],
    t: Template,
    /// Offset in `pkt` of the next segment's payload.
    next: usize,
    index: usize,
}

impl<'a> Segments<'a> {
    /// Validates a super-packet (`pkt` is the IP packet after the header)
    /// and prepares to segment it. TCP segments carry at most `gso_size`
    /// payload bytes and are cut smaller if needed to fit `mtu`; UDP
    /// datagrams are always `gso_size` (the application chose those
    /// boundaries), so datagrams that do not fit `mtu` are an error.
    ///
    /// `hdr_len` is not trusted beyond "not longer than the packet": the
    /// kernel sets it to the length of its linear buffer, which for
    /// forwarded traffic can include payload. The header length comes from
    /// parsing the headers, and `csum_start`/`csum_offset` must agree with it.
    pub fn new(hdr: &VirtioNetHdr, pkt: &'a [u8], mtu: usize) -> Result<Self, OffloadError> {
        let want = match hdr.gso_kind() {
            VIRTIO_NET_HDR_GSO_TCPV4 => Some(false),
            VIRTIO_NET_HDR_GSO_TCPV6 => Some(true),
            VIRTIO_NET_HDR_GSO_UDP_L4 => None,
            _ => return Err(OffloadError::UnsupportedGsoType(hdr.gso_type)),
        };
        if hdr.gso_size == 0 {
            return Err(OffloadError::ZeroGsoSize);
        }
        if usize::from(hdr.hdr_len) > pkt.len() {
            return Err(OffloadError::HdrLenOutOfRange {
                hdr_len: hdr.hdr_len,
                len: pkt.len(),
            });
        }
        let h = Headers::parse(pkt)?;
        let matches = match want {
            Some(v6) => h.is_tcp() && h.v6 == v6,
            None => h.proto == PROTO_UDP,
        };
        if !matches {
            return Err(OffloadError::GsoTypeMismatch {
                gso_type: hdr.gso_type,
                version: if h.v6 { 6 } else { 4 },
                protocol: h.proto,
            });
        }
        if hdr.needs_csum()
            && (usize::from(hdr.csum_start) != h.l3_len
                || usize::from(hdr.csum_offset) != h.csum_offset())
        {
            return Err(OffloadError::ChecksumOffsetMismatch {
                start: hdr.csum_start,
                offset: hdr.csum_offset,
            });
        }
        if pkt.len() == h.len() {
            return Err(OffloadError::EmptyPayload);
        }
        // Every segment's lengths must fit the 16-bit IP length fields.
        let mtu = mtu.min(MAX_PACKET_LEN);
        let gso_size = usize::from(hdr.gso_size);
        let seg_size = if h.is_tcp() {
            let room = mtu.saturating_sub(h.len());
            if room == 0 {
                return Err(OffloadError::MtuTooSmall {
                    mtu,
                    headers: h.len(),
                });
            }
            gso_size.min(room)
        } else {
            if h.len() + gso_size > mtu {
                return Err(OffloadError::DatagramTooBig {
                    len: h.len() + gso_size,
                    mtu,
                });
            }
            gso_size
        };
        let t = Template {
            h,
            seg_size,
            seq: if h.is_tcp() {
                ip::be32(pkt, h.l3_len + 4)
            } else {
                0
            },
            id: if h.v6 { 0 } else { ip::be16(pkt, 4) },
            pseudo: h.pseudo(pkt),
            ip_sum: if h.v6 {
                Csum::default()
            } else {
                Csum::default()
                    .add_bytes(&pkt[0..2])
                    .add_bytes(&pkt[6..10])
                    .add_bytes(&pkt[12..h.l3_len])
            },
            l4_sum: {
                let l4 = &pkt[h.l3_len..h.len()];
                if h.is_tcp() {
                    Csum::default()
                        .add_bytes(&l4[0..4])
                        .add_bytes(&l4[8..12])
                        .add_bytes(&l4[14..16])
                        .add_bytes(&l4[18..])
                } else {
                    Csum::default().add_bytes(&l4[0..4])
                }
            },
            tcp_doff: if h.is_tcp() { pkt[h.l3_len + 12] } else { 0 },
        };
        Ok(Self {
            pkt,
            t,
            next: h.len(),
            index: 0,
        })
    }

    /// Payload bytes per segment; the last segment may carry fewer.
    pub fn segment_size(&self) -> usize {
        self.t.seg_size
    }

    /// Length of the headers copied into every segment.
    pub fn header_len(&self) -> usize {
        self.t.h.len()
    }
}

impl<'a> Iterator for Segments<'a> {
    type Item = Segment<'a>;

    fn next(&mut self) -> Option<Segment<'a>> {
        if self.next >= self.pkt.len() {
            return None;
        }
        let end = (self.next + self.t.seg_size).min(self.pkt.len());
        let seg = Segment {
            pkt: self.pkt,
            t: self.t,
            start: self.next,
            end,
            index: self.index,
        };
        self.next = end;
        self.index += 1;
        Some(seg)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = (self.pkt.len() - self.next).div_ceil(self.t.seg_size);
        (n, Some(n))
    }
}

impl ExactSizeIterator for Segments<'_> {}

/// One segment of a super-packet, not yet materialised.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    pkt: &'a [u8],
    t: Template,
    /// Payload range in `pkt`.
    start: usize,
    end: usize,
    index: usize,
}

impl<'a> Segment<'a> {
    /// Length of the segment as an IP packet: what [`Segment::write`] writes.
    pub fn len(&self) -> usize {
        self.t.h.len() + self.end - self.start
    }

    /// Always false: a segment has headers and at least one payload byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Position of this segment in the super-packet, from 0.
    pub fn index(&self) -> usize {
        self.index
    }

    /// This segment's payload, borrowed from the super-packet.
    pub fn payload(&self) -> &'a [u8] {
        &self.pkt[self.start..self.end]
    }

    /// Writes the segment as a complete IP packet at the start of `out`
    /// and returns its length ([`Segment::len`]). `out` is typically a pool
    /// buffer from the WireGuard headroom onwards; bytes after the segment
    /// are left alone.
    pub fn write(&self, out: &mut [u8]) -> Result<usize, OffloadError> {
        let n = self.len();
        let available = out.len();
        let out = out.get_mut(..n).ok_or(OffloadError::BufferTooSmall {
            needed: n,
            available,
        })?;
        let t = &self.t;
        let (l3, hlen) = (t.h.l3_len, t.h.len());
        let l4_len = (n - l3) as u16;
        let (hdr, body) = out.split_at_mut(hlen);
        hdr.copy_from_slice(&self.pkt[..hlen]);
        // The payload is copied and summed in one pass. The checksums are
        // then put together from the template's header sums and the values
        // written here, never by reading back the bytes just written.
        let payload = Csum::default().add_copy(body, self.payload());
        let last = self.end == self.pkt.len();

        // IP: lengths, and for IPv4 the ID and header checksum. The kernel
        // increments the ID per segment (no FIXEDID through virtio).
        if t.h.v6 {
            ip::put16(hdr, 4, l4_len);
        } else {
            let id = t.id.wrapping_add(self.index as u16);
            ip::put16(hdr, 2, n as u16);
            ip::put16(hdr, 4, id);
            let c = t.ip_sum.add_u16(n as u16).add_u16(id).finish();
            ip::put16(hdr, 10, c);
        }

        // Transport: sequence number and flags, or the UDP length; the full
        // checksum over the pseudo-header and the segment.
        let mut sum = t
            .pseudo
            .add_u32(u32::from(l4_len))
            .add_sum(t.l4_sum)
            .add_sum(payload);
        if t.h.is_tcp() {
            let seq = t.seq.wrapping_add((self.start - hlen) as u32);
            ip::put32(hdr, l3 + 4, seq);
            let mut flags = self.pkt[l3 + TCP_FLAGS];
            if !last {
                // FIN and PSH describe the end of the data: last segment only.
                flags &= !(TCP_FIN | TCP_PSH);
            }
            if self.index > 0 {
                // CWR answers ECE once, on the first segment only.
                flags &= !TCP_CWR;
            }
            hdr[l3 + TCP_FLAGS] = flags;
            sum = sum
                .add_u32(seq)
                .add_u16(u16::from_be_bytes([t.tcp_doff, flags]));
        } else {
            ip::put16(hdr, l3 + 4, l4_len);
            sum = sum.add_u16(l4_len);
        }
        let at = l3 + t.h.csum_offset();
        let mut c = sum.finish();
        if !t.h.is_tcp() && c == 0 {
            // UDP reserves 0 for "no checksum" (and IPv6 forbids it).
            c = 0xffff;
        }
        ip::put16(hdr, at, c);
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
