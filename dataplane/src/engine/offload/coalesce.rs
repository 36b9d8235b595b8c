//! Writes: merging consecutive segments of one TCP or UDP flow into one
//! super-packet (GRO) before they go to the TUN.
//!
//! The kernel accepts a super-packet written with a virtio-net header
//! (`gso_type`, `gso_size`, `NEEDS_CSUM` with the pseudo-header sum in the
//! checksum field) and processes it once instead of once per segment; if it
//! forwards it, it re-segments it (or lets the NIC do so). So a merge is
//! only allowed when re-segmentation gives back the packets that were
//! merged. The rules follow the kernel's own GRO (`tcp_gro_receive`,
//! `inet_gro_receive`, `ipv6_gro_receive`, `udp_gro_receive_segment`):
//! - same flow: IP version, addresses, protocol and ports;
//! - identical IP headers apart from the length, IPv4 ID and checksum:
//!   TOS/traffic class (so ECN too), TTL/hop limit, DF, IPv4 options,
//!   IPv6 flow label; IPv4 IDs consecutive unless DF is set (re-segmenting
//!   numbers them first + index; with DF the ID carries no meaning);
//! - TCP: contiguous sequence numbers, same ACK, window, header length and
//!   option bytes, only ACK (plus ECE as the first has it) with PSH allowed
//!   on the last segment and CWR on the first; no SYN, FIN, RST or URG;
//! - payloads of the first segment's size (`gso_size`), the last may be
//!   smaller, none larger; at most [`MAX_SEGMENTS`] packets and
//!   [`MAX_PACKET_LEN`] bytes;
//! - never IPv4 fragments, IPv6 extension headers or packets whose length
//!   fields disagree with their size; UDP only when the kernel accepts
//!   `GSO_UDP_L4` writes, and never datagrams without a checksum;
//! - valid checksums on every merged packet (checked only once a merge
//!   happens): the merged packet gets a fresh checksum, so merging a
//!   corrupt packet would launder it. Packets written alone are passed
//!   as-is for the kernel to judge.
//!
//! Order: each flow has at most one open super-packet, which only the next
//! packets of that flow can join; any packet of the flow that cannot join
//! closes it. Writes are emitted in the order of their first packets, so
//! packets of one flow never overtake each other (different flows may).

use std::collections::HashMap;

use foldhash::fast::RandomState as FoldState;

use super::checksum::{checksum, Csum};
use super::ip::{
    self, Headers, IPV4_DF, TCP_ACK, TCP_CWR, TCP_FIN, TCP_FLAGS, TCP_PSH, TCP_RST, TCP_SYN,
    TCP_URG,
};
use super::virtio::{
    VirtioNetHdr, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP_L4, VNET_HDR_LEN,
};
use super::{OffloadError, MAX_PACKET_LEN, MAX_SEGMENTS};

/// Longest IP plus transport header: 60 bytes of IPv4 or 40 of IPv6, and
/// 60 of TCP.
const MAX_HEADERS: usize = 60 + 60;

/// The header of a packet written alone.
static NONE_HDR: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

/// Identity of a flow: only its packets may be merged with each other.
///
/// Five machine words, so that comparing two keys (done for every packet
/// against the last flow's) is a few word compares, not a `memcmp`: the
/// source and destination addresses back to back (IPv4 uses the first
/// word), then the source and destination ports, the protocol and the IP
/// version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey([u64; 5]);

impl FlowKey {
    /// A key no packet has: its protocol byte is 0, and a packet's key is
    /// only taken once its headers parsed as TCP or UDP.
    const NONE: Self = Self([0; 5]);

    /// The key of a packet whose headers `h` describes (so its addresses
    /// and ports are within bounds).
    #[inline(always)]
    fn new(pkt: &[u8], h: &Headers) -> Self {
        let mut w = [0u64; 5];
        if h.v6 {
            w[0] = ne64(pkt, 8);
            w[1] = ne64(pkt, 16);
            w[2] = ne64(pkt, 24);
            w[3] = ne64(pkt, 32);
        } else {
            w[0] = ne64(pkt, 12);
        }
        let ports = ne32(pkt, h.l3_len);
        w[4] = u64::from(ports) | u64::from(h.proto) << 32 | u64::from(h.v6) << 40;
        Self(w)
    }

    /// `self == other`, as word compares folded into one branch (the
    /// derived `==` on the array calls `memcmp`).
    #[inline]
    fn is(&self, other: &Self) -> bool {
        let [a0, a1, a2, a3, a4] = self.0;
        let [b0, b1, b2, b3, b4] = other.0;
        (a0 ^ b0) | (a1 ^ b1) | (a2 ^ b2) | (a3 ^ b3) | (a4 ^ b4) == 0
    }
}

/// A packet that could be (part of) a super-packet.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    h: Headers,
    payload: usize,
    seq: u32,
    flags: u8,
}

/// One write: a packet alone, or a super-packet of `count` packets.
#[derive(Debug, Clone)]
struct Group {
    /// Batch index of the first packet.
    first: u32,
    count: u32,
    /// Offset of this group's member list in `Coalescer::members`.
    start: u32,
    /// Headers shared by all members (meaningless for a packet alone).
    h: Headers,
    /// Payload length of the first packet, the largest allowed.
    gso_size: usize,
    /// Payload bytes of all members.
    payload: usize,
    /// TCP sequence number the next member must have.
    next_seq: u32,
    /// TCP flags of the first packet.
    flags: u8,
    /// A member had PSH (it was the last).
    psh: bool,
    /// The first packet's transport checksum has been checked.
    verified: bool,
    /// Bytes of `hdr` in use: 0 for a packet alone.
    hdr_len: usize,
    /// Virtio-net header plus rewritten IP and transport headers.
    hdr: [u8; VNET_HDR_LEN + MAX_HEADERS],
}

/// What happened when a packet met its flow's open group.
enum Append {
    /// Merged; the group can take more.
    Open,
    /// Merged; the group is complete (PSH, short segment or full).
    Closed,
    /// Not mergeable with this group: start a new one.
    Restart,
    /// The packet's checksum is wrong: write it alone.
    Alone,
}

/// Plans TUN writes for a batch of decrypted packets, merging runs of one
/// flow into GRO super-packets. Reused across batches: after warm-up it
/// allocates nothing.
#[derive(Debug)]
pub struct Coalescer {
    udp: bool,
    /// The open group of each flow but the last one seen.
    flows: HashMap<FlowKey, u32, FoldState>,
    /// The last flow seen (or [`FlowKey::NONE`]), kept out of `flows`:
    /// consecutive packets of one flow, the common case, find their group
    /// without hashing the key.
    last_key: FlowKey,
    /// The last flow's open group, if it has one.
    last_group: Option<u32>,
    groups: Vec<Group>,
    /// Group of each packet of the batch.
    assign: Vec<u32>,
    /// Batch indexes grouped by write, in order.
    members: Vec<u32>,
}

impl Coalescer {
    /// A coalescer; `udp` enables UDP merges (`GSO_UDP_L4`), which needs
    /// Linux 6.2+: pass whether `TUNSETOFFLOAD` accepted the USO flags.
    pub fn new(udp: bool) -> Self {
        Self {
            udp,
            flows: HashMap::with_capacity_and_hasher(64, FoldState::default()),
            last_key: FlowKey::NONE,
            last_group: None,
            groups: Vec::with_capacity(128),
            assign: Vec::with_capacity(128),
            members: Vec::with_capacity(128),
        }
    }

    /// Plans the writes for `packets` (IP packets, in the order they are to
    /// reach the TUN). Every packet appears in exactly one write.
    pub fn plan<P: AsRef<[u8]>>(&mut self, packets: &[P]) -> Writes<'_> {
        self.plan_with(packets.len(), |i| packets[i].as_ref())
    }

    /// [`Coalescer::plan`] for packets that are not in a slice: packet `i`
    /// of `n` is `packet(i)`. The [`TunWrite`]s name packets by this index.
    pub fn plan_with<'p, F>(&mut self, n: usize, packet: F) -> Writes<'_>
    where
        F: Fn(usize) -> &'p [u8],
    {
        self.forget_flows();
        self.groups.clear();
        self.assign.clear();
        self.members.clear();
        for i in 0..n {
            let g = self.push(&packet, i);
            self.assign.push(g);
        }
        self.forget_flows();
        self.finish(&packet);
        Writes {
            groups: &self.groups,
            members: &self.members,
            next: 0,
        }
    }

    /// Forgets every flow's open group.
    fn forget_flows(&mut self) {
        if !self.flows.is_empty() {
            self.flows.clear();
        }
        self.last_key = FlowKey::NONE;
        self.last_group = None;
    }

    /// The open group of flow `key` (`None`: it has none), to read or set.
    /// Makes `key` the last flow, moving the previous last one's group
    /// into the map; only a change of flow hashes.
    #[inline]
    fn flow(&mut self, key: &FlowKey) -> &mut Option<u32> {
        if !self.last_key.is(key) {
            self.switch_flow(key);
        }
        &mut self.last_group
    }

    #[cold]
    #[inline(never)]
    fn switch_flow(&mut self, key: &FlowKey) {
        if let Some(g) = self.last_group.take() {
            self.flows.insert(self.last_key, g);
        }
        self.last_key = *key;
        if !self.flows.is_empty() {
            self.last_group = self.flows.remove(key);
        }
    }

    /// Places packet `i` in a group and returns the group.
    fn push<'p>(&mut self, packet: &impl Fn(usize) -> &'p [u8], i: usize) -> u32 {
        let pkt = packet(i);
        let Ok(h) = Headers::parse(pkt) else {
            return self.open_alone(i);
        };
        let key = FlowKey::new(pkt, &h);
        let Some(c) = candidate(pkt, h, self.udp) else {
            // A packet of the flow written alone: later packets of the flow
            // must not join an earlier write and overtake it.
            *self.flow(&key) = None;
            return self.open_alone(i);
        };
        if let Some(g) = *self.flow(&key) {
            match self.try_append(packet, g, pkt, &c) {
                Append::Open => return g,
                Append::Closed => {
                    self.last_group = None;
                    return g;
                }
                Append::Alone => {
                    self.last_group = None;
                    return self.open_alone(i);
                }
                Append::Restart => {}
            }
        }
        let g = self.open(i, &c);
        // PSH ends a super-packet; it can only be a last segment.
        self.last_group = (c.flags & TCP_PSH == 0).then_some(g);
        g
    }

    fn open_alone(&mut self, i: usize) -> u32 {
        let c = Candidate {
            h: Headers {
                v6: false,
                l3_len: 0,
                proto: 0,
                l4_len: 0,
            },
            payload: 0,
            seq: 0,
            flags: 0,
        };
        self.open(i, &c)
    }

    fn open(&mut self, i: usize, c: &Candidate) -> u32 {
        let g = self.groups.len() as u32;
        self.groups.push(Group {
            first: i as u32,
            count: 1,
            start: 0,
            h: c.h,
            gso_size: c.payload,
            payload: c.payload,
            next_seq: c.seq.wrapping_add(c.payload as u32),
            flags: c.flags,
            psh: c.flags & TCP_PSH != 0,
            verified: false,
            hdr_len: 0,
            hdr: [0; VNET_HDR_LEN + MAX_HEADERS],
        });
        g
    }

    fn try_append<'p>(
        &mut self,
        packet: &impl Fn(usize) -> &'p [u8],
        g: u32,
        pkt: &[u8],
        c: &Candidate,
    ) -> Append {
        let grp = &mut self.groups[g as usize];
        let first = packet(grp.first as usize);
        if grp.h != c.h
            || c.payload > grp.gso_size
            || grp.h.len() + grp.payload + c.payload > MAX_PACKET_LEN
            || !ip_fields_match(first, pkt, &c.h, grp.count)
            || (c.h.is_tcp() && !tcp_fields_match(first, pkt, grp, c))
        {
            return Append::Restart;
        }
        // Checked only now: most packets written alone never pay for it.
        if !grp.verified {
            if !l4_csum_ok(first, &grp.h) {
                return Append::Restart;
            }
            grp.verified = true;
        }
        if !l4_csum_ok(pkt, &c.h) {
            return Append::Alone;
        }
        grp.count += 1;
        grp.payload += c.payload;
        grp.next_seq = grp.next_seq.wrapping_add(c.payload as u32);
        grp.psh = c.flags & TCP_PSH != 0;
        if grp.psh || c.payload < grp.gso_size || grp.count as usize >= MAX_SEGMENTS {
            Append::Closed
        } else {
            Append::Open
        }
    }

    /// Lays out member lists and builds the super-packet headers.
    fn finish<'p>(&mut self, packet: &impl Fn(usize) -> &'p [u8]) {
        let mut off = 0u32;
        for g in &mut self.groups {
            g.start = off;
            off += g.count;
        }
        self.members.resize(off as usize, 0);
        // Counting sort of the batch by group, using `start` as a cursor
        // and restoring it afterwards.
        for (i, &g) in self.assign.iter().enumerate() {
            let grp = &mut self.groups[g as usize];
            self.members[grp.start as usize] = i as u32;
            grp.start += 1;
        }
        for g in &mut self.groups {
            g.start -= g.count;
            if g.count > 1 {
                build_header(g, packet(g.first as usize));
            }
        }
    }
}

/// Whether `pkt` may be merged at all, and its merge-relevant fields.
fn candidate(pkt: &[u8], h: Headers, udp: bool) -> Option<Candidate> {
    let l3 = h.l3_len;
    if pkt.len() > MAX_PACKET_LEN {
        return None;
    }
    if h.v6 {
        if usize::from(ip::be16(pkt, 4)) != pkt.len() - l3 {
            return None;
        }
    } else if usize::from(ip::be16(pkt, 2)) != pkt.len() || checksum(&pkt[..l3]) != 0 {
        // A wrong header checksum would be replaced by a right one.
        return None;
    }
    let payload = pkt.len() - h.len();
    if payload == 0 {
        return None;
    }
    let (seq, flags) = if h.is_tcp() {
        let flags = pkt[l3 + TCP_FLAGS];
        if flags & TCP_ACK == 0 || flags & (TCP_SYN | TCP_FIN | TCP_RST | TCP_URG) != 0 {
            return None;
        }
        (ip::be32(pkt, l3 + 4), flags)
    } else {
        if !udp
            || usize::from(ip::be16(pkt, l3 + 4)) != pkt.len() - l3
            || ip::be16(pkt, l3 + 6) == 0
        {
            return None;
        }
        (0, 0)
    };
    Some(Candidate {
        h,
        payload,
        seq,
        flags,
    })
}

/// Whether two byte strings are equal, compared 8 bytes at a time without
/// a call to `memcmp` (these are short header ranges of varying length).
#[inline(always)]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (aw, at) = a.as_chunks::<8>();
    let (bw, bt) = b.as_chunks::<8>();
    let mut diff = 0u64;
    for (x, y) in aw.iter().zip(bw) {
        diff |= u64::from_ne_bytes(*x) ^ u64::from_ne_bytes(*y);
    }
    for (x, y) in at.iter().zip(bt) {
        diff |= u64::from(x ^ y);
    }
    diff == 0
}

/// Reads 4 bytes at `at` as a native-order word; callers checked bounds.
#[inline(always)]
fn ne32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads 8 bytes at `at` as a native-order word; callers checked bounds.
#[inline(always)]
fn ne64(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes([
        b[at],
        b[at + 1],
        b[at + 2],
        b[at + 3],
        b[at + 4],
        b[at + 5],
        b[at + 6],
        b[at + 7],
    ])
}

/// IP header fields that must be equal (or, for the IPv4 ID, consecutive)
/// between a group's first packet and one that joins as member `count`.
#[inline]
fn ip_fields_match(first: &[u8], pkt: &[u8], h: &Headers, count: u32) -> bool {
    if h.v6 {
        // Version, traffic class, flow label; next header, hop limit,
        // addresses. Only the payload length may differ.
        ne32(first, 0) == ne32(pkt, 0) && same_bytes(&first[6..40], &pkt[6..40])
    } else {
        let l3 = h.l3_len;
        let id_ok = first[6] & IPV4_DF != 0
            || ip::be16(pkt, 4) == ip::be16(first, 4).wrapping_add(count as u16);
        // Version/IHL, TOS; flags, TTL, protocol; addresses and options.
        first[0..2] == pkt[0..2]
            && ne32(first, 6) == ne32(pkt, 6)
            && same_bytes(&first[12..l3], &pkt[12..l3])
            && id_ok
    }
}

/// TCP header fields that must follow on from the group.
#[inline]
fn tcp_fields_match(first: &[u8], pkt: &[u8], grp: &Group, c: &Candidate) -> bool {
    let (l3, l4) = (c.h.l3_len, c.h.l4_len);
    let a = &first[l3..l3 + l4];
    let b = &pkt[l3..l3 + l4];
    // CWR only on a first segment; otherwise the flags (ECE included) must
    // be the first's, PSH aside.
    let flags_ok = c.flags & TCP_CWR == 0 && (c.flags ^ grp.flags) & !(TCP_PSH | TCP_CWR) == 0;
    c.seq == grp.next_seq
        && flags_ok
        // ACK number and data offset byte; window; urgent pointer (unused
        // without URG, but kept so re-segmenting is exact) and options.
        && ne32(a, 8) == ne32(b, 8)
        && a[12] == b[12]
        && a[14..16] == b[14..16]
        && same_bytes(&a[18..], &b[18..])
}

/// Whether the transport checksum of a packet is right.
fn l4_csum_ok(pkt: &[u8], h: &Headers) -> bool {
    let l3 = h.l3_len;
    h.pseudo(pkt)
        .add_u32((pkt.len() - l3) as u32)
        .add_bytes(&pkt[l3..])
        .fold()
        == 0xffff
}

/// Writes a merged group's virtio-net header and rewritten headers.
fn build_header(g: &mut Group, first: &[u8]) {
    let h = g.h;
    let (l3, hlen) = (h.l3_len, h.len());
    let total = hlen + g.payload;
    let gso_type = match (h.is_tcp(), h.v6) {
        (false, _) => VIRTIO_NET_HDR_GSO_UDP_L4,
        (true, false) => VIRTIO_NET_HDR_GSO_TCPV4,
        (true, true) => VIRTIO_NET_HDR_GSO_TCPV6,
    };
    // Like tcp_gro_complete: CWR on the first segment marks an ECN flow.
    let ecn = if h.is_tcp() && g.flags & TCP_CWR != 0 {
        VIRTIO_NET_HDR_GSO_ECN
    } else {
        0
    };
    let vnet = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: gso_type | ecn,
        hdr_len: hlen as u16,
        gso_size: g.gso_size as u16,
        csum_start: l3 as u16,
        csum_offset: h.csum_offset() as u16,
    };
    g.hdr[..VNET_HDR_LEN].copy_from_slice(&vnet.to_bytes());
    let out = &mut g.hdr[VNET_HDR_LEN..VNET_HDR_LEN + hlen];
    out.copy_from_slice(&first[..hlen]);
    if h.v6 {
        ip::put16(out, 4, (total - l3) as u16);
    } else {
        ip::put16(out, 2, total as u16);
        ip::put16(out, 10, 0);
        let c = checksum(&out[..l3]);
        ip::put16(out, 10, c);
    }
    if h.is_tcp() {
        if g.psh {
            out[l3 + TCP_FLAGS] |= TCP_PSH;
        }
    } else {
        ip::put16(out, l3 + 4, (total - l3) as u16);
    }
    // CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum (with
    // the super-packet's length) and the kernel adds the rest per segment.
    let partial: Csum = h.pseudo(first).add_u32((total - l3) as u32);
    ip::put16(out, l3 + h.csum_offset(), partial.fold());
    g.hdr_len = VNET_HDR_LEN + hlen;
}

/// The writes of one planned batch, in order.
#[derive(Debug, Clone)]
pub struct Writes<'c> {
    groups: &'c [Group],
    members: &'c [u32],
    next: usize,
}

impl<'c> Iterator for Writes<'c> {
    type Item = TunWrite<'c>;

    fn next(&mut self) -> Option<TunWrite<'c>> {
        let g = self.groups.get(self.next)?;
        self.next += 1;
        let start = g.start as usize;
        let members = &self.members[start..start + g.count as usize];
        Some(if g.hdr_len == 0 {
            TunWrite {
                header: &NONE_HDR,
                members,
                skip: 0,
            }
        } else {
            TunWrite {
                header: &g.hdr[..g.hdr_len],
                members,
                skip: g.h.len(),
            }
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.groups.len() - self.next;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Writes<'_> {}

/// One TUN write: [`TunWrite::header`], then for each index in
/// [`TunWrite::members`] that packet's bytes from [`TunWrite::skip`] on.
/// With an iovec list that is `1 + members().len()` entries and no copy;
/// or, since `header().len() == VNET_HDR_LEN + skip()`, the header copied
/// over the first member's headers and 10 bytes of its headroom, and
/// `members().len()` entries.
#[derive(Debug, Clone, Copy)]
pub struct TunWrite<'c> {
    header: &'c [u8],
    members: &'c [u32],
    skip: usize,
}

impl<'c> TunWrite<'c> {
    /// Bytes to write first: the zero virtio-net header for a packet
    /// alone, or the super-packet's virtio-net, IP and transport headers.
    pub fn header(&self) -> &'c [u8] {
        self.header
    }

    /// Batch indexes of the packets whose bytes follow, in order.
    pub fn members(&self) -> &'c [u32] {
        self.members
    }

    /// Leading bytes of each member to leave out: 0 for a packet alone,
    /// its headers (replaced by [`TunWrite::header`]) for a super-packet.
    pub fn skip(&self) -> usize {
        self.skip
    }

    /// Whether this writes one packet as it is (header all zero).
    pub fn is_single(&self) -> bool {
        self.members.len() == 1
    }

    /// The slices to write after the header, given the batch as passed to
    /// [`Coalescer::plan_with`] (`packet(i)` is packet `i`). A packet
    /// shorter than `skip` (not the planned batch) yields an empty slice.
    pub fn parts<'p, F>(&self, packet: F) -> impl Iterator<Item = &'p [u8]> + use<'c, 'p, F>
    where
        F: Fn(usize) -> &'p [u8],
    {
        let skip = self.skip;
        self.members
            .iter()
            .map(move |&m| packet(m as usize).get(skip..).unwrap_or_default())
    }

    /// Total bytes of the write, header included.
    pub fn total_len<'p>(&self, packet: impl Fn(usize) -> &'p [u8]) -> usize {
        self.header.len() + self.parts(packet).map(<[u8]>::len).sum::<usize>()
    }

    /// Copies the whole write (header and parts) to the start of `out`, for
    /// a write path without iovecs; returns its length.
    pub fn copy_to<'p>(
        &self,
        packet: impl Fn(usize) -> &'p [u8],
        out: &mut [u8],
    ) -> Result<usize, OffloadError> {
        let needed = self.total_len(&packet);
        if out.len() < needed {
            return Err(OffloadError::BufferTooSmall {
                needed,
                available: out.len(),
            });
        }
        out[..self.header.len()].copy_from_slice(self.header);
        let mut at = self.header.len();
        for part in self.parts(&packet) {
            out[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        Ok(at)
    }
}

#[cfg(test)]
mod tests;
