//! io_uring operations in flight, and the memory they point into.
//!
//! The kernel reads and writes a buffer, a `msghdr`, an `iovec` and a
//! socket address of every operation until its completion arrives, so all
//! of them live in a fixed table of slots that never moves or shrinks. The
//! slot number is the operation's `user_data`. Each slot's metadata is
//! allocated once when the worker starts; a buffer is owned by the slot
//! from submission to completion and then handed back with the result.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::{opcode, squeue, types, IoUring};

use super::limits::MAX_SEGMENTS;
use super::pool::{Buf, Packet};
use super::udp::SockAddrBuf;

/// The io_uring operations the engine uses, with the kernel that brought
/// the last of them (multishot reads, 6.7).
const NEEDED: [(u8, &str); 8] = [
    (opcode::RecvMsgMulti::CODE, "RECVMSG (multishot)"),
    (opcode::ReadMulti::CODE, "READ_MULTISHOT"),
    (opcode::SendMsg::CODE, "SENDMSG"),
    (opcode::Write::CODE, "WRITE"),
    (opcode::Writev::CODE, "WRITEV"),
    (opcode::Read::CODE, "READ"),
    (opcode::Timeout::CODE, "TIMEOUT"),
    (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
];

/// A ring of `entries` on which every operation the engine needs is
/// supported; otherwise an error that says what is missing and what to do.
pub fn ring(entries: u32) -> std::io::Result<IoUring> {
    let ring = IoUring::new(entries).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "io_uring is not available ({e}): corewire needs io_uring; allow it \
                 (sysctl kernel.io_uring_disabled=0; a container's seccomp profile, \
                 such as Docker's default, must allow io_uring_setup, io_uring_enter \
                 and io_uring_register)"
            ),
        )
    })?;
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot ask the kernel which io_uring operations it has ({e}): Linux 6.7 or newer is needed"),
        )
    })?;
    if let Some((_, name)) = NEEDED.iter().find(|(code, _)| !probe.is_supported(*code)) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!("the kernel's io_uring lacks {name}: corewire needs Linux 6.7 or newer"),
        ));
    }
    Ok(ring)
}

/// What a slot's operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// Not in use.
    Free,
    /// Multishot receive on a UDP socket into provided buffers.
    UdpRecvMulti {
        /// The socket's file descriptor.
        fd: RawFd,
        /// Which socket set it belongs to.
        gen: u32,
    },
    /// Multishot read of a TUN queue into provided buffers.
    TunReadMulti,
    /// Writing a packet to the TUN queue.
    TunWrite,
    /// Writing several packets of one flow as one super-packet (GRO).
    TunWriteGso,
    /// Sending a datagram.
    UdpSend,
    /// Sending several equal-size datagrams as one UDP GSO send.
    UdpSendGso,
    /// Reading the worker's eventfd (cross-worker wake-up).
    Wake,
    /// The timer tick.
    Timer,
}

/// Kernel-visible memory of one slot.
#[repr(C)]
struct Meta {
    hdr: libc::msghdr,
    iov: libc::iovec,
    addr: SockAddrBuf,
    ts: types::Timespec,
    counter: u64,
    /// One iovec per segment of a GSO send or a coalesced TUN write.
    iovs: [libc::iovec; MAX_SEGMENTS],
    /// Control message space (u64 for alignment): the UDP_SEGMENT cmsg.
    cmsg: [u64; 4],
}

struct Slot {
    kind: OpKind,
    buf: Option<Buf>,
    /// The buffers of a GSO send, one per segment; recycled on completion
    /// (the Vec keeps its capacity, so steady state allocates nothing).
    bufs: Vec<Buf>,
    meta: Box<Meta>,
}

/// `user_data` of requests whose completion needs nothing (no slot has it).
const IGNORED: u64 = u64::MAX;

/// A finished operation.
#[derive(Debug)]
pub struct Done {
    /// What it was.
    pub kind: OpKind,
    /// Its buffer, if it had one.
    pub buf: Option<Buf>,
    /// The provided buffer the kernel filled (multishot operations).
    pub bid: Option<u16>,
    /// A multishot operation is still armed (more completions will come).
    pub more: bool,
}

/// The `msghdr` layout of multishot UDP receives: the kernel writes an
/// `io_uring_recvmsg_out` header, then `msg_namelen` bytes of source
/// address, then the datagram, into each provided buffer.
pub fn multishot_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is plain old data; zero is a valid value for every field.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_namelen = SockAddrBuf::CAPACITY;
    hdr.msg_controllen = CONTROL_SPACE;
    hdr
}

/// Room for the control messages of a multishot receive: one `UDP_GRO`
/// message (an `int`), `CMSG_SPACE(4)` = 24 bytes on 64-bit Linux, with
/// slack.
const CONTROL_SPACE: usize = 32;

/// The datagram size of a GRO receive, from its control messages: the
/// payload is then several datagrams of that size back to back (the last
/// may be shorter). `None` without a `UDP_GRO` message (one datagram).
/// Reads the `cmsghdr` chain by hand, with bounds checks, since the
/// bytes are a copy the kernel wrote into a provided buffer.
pub fn gro_segment_size(control: &[u8]) -> Option<usize> {
    const HDR: usize = std::mem::size_of::<libc::cmsghdr>();
    const ALIGN: usize = std::mem::size_of::<usize>();
    let mut at = 0;
    while let Some(h) = control.get(at..at + HDR) {
        let len = usize::from_ne_bytes(h[..ALIGN].try_into().ok()?);
        let level = i32::from_ne_bytes(h[ALIGN..ALIGN + 4].try_into().ok()?);
        let kind = i32::from_ne_bytes(h[ALIGN + 4..ALIGN + 8].try_into().ok()?);
        if len < HDR {
            return None;
        }
        if level == libc::SOL_UDP && kind == super::udp::UDP_GRO {
            let data = control.get(at + HDR..at + HDR + 4)?;
            let size = i32::from_ne_bytes(data.try_into().ok()?);
            return usize::try_from(size).ok().filter(|&s| s > 0);
        }
        at += len.div_ceil(ALIGN) * ALIGN;
    }
    None
}

/// The source address in a multishot receive's name field.
pub fn source_address(name: &[u8], len: u32) -> Option<SocketAddr> {
    let mut addr = SockAddrBuf::new();
    let n = name.len().min(SockAddrBuf::CAPACITY as usize);
    // SAFETY: copying at most CAPACITY bytes into the address storage.
    unsafe { std::ptr::copy_nonoverlapping(name.as_ptr(), addr.as_mut_ptr().cast::<u8>(), n) };
    addr.set_addr_len(len.min(n as u32));
    addr.to_socket_addr()
}

/// The slot table plus the ring's submission side.
pub struct Ops {
    slots: Vec<Slot>,
    free: Vec<u32>,
}

impl std::fmt::Debug for Ops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ops")
            .field("slots", &self.slots.len())
            .field("free", &self.free.len())
            .finish()
    }
}

/// Why an operation could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// Every slot is in flight; the caller drops the packet (back-pressure).
    #[error("no free operation slot")]
    Full,
}

fn new_meta() -> Box<Meta> {
    // SAFETY: msghdr and iovec are plain old data for which all-zero bytes
    // are a valid value (null pointers, zero lengths).
    let (hdr, iov, iovs) = unsafe { (std::mem::zeroed(), std::mem::zeroed(), std::mem::zeroed()) };
    Box::new(Meta {
        hdr,
        iov,
        addr: SockAddrBuf::new(),
        ts: types::Timespec::new(),
        counter: 0,
        iovs,
        cmsg: [0; 4],
    })
}

impl Ops {
    /// A table of `n` slots.
    pub fn new(n: usize) -> Self {
        Self {
            slots: (0..n)
                .map(|_| Slot {
                    kind: OpKind::Free,
                    buf: None,
                    bufs: Vec::new(),
                    meta: new_meta(),
                })
                .collect(),
            free: (0..n as u32).rev().collect(),
        }
    }

    /// Operations in flight (slots in use).
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Completes slot `user_data` given the completion `flags`; frees it unless it is a multishot operation that stays
    /// armed. The buffers of a GSO send go to `recycle`.
    pub fn complete(
        &mut self,
        user_data: u64,
        flags: u32,
        mut recycle: impl FnMut(Buf),
    ) -> Option<Done> {
        let slot = self.slots.get_mut(usize::try_from(user_data).ok()?)?;
        if slot.kind == OpKind::Free {
            return None;
        }
        let bid = io_uring::cqueue::buffer_select(flags);
        let multishot = matches!(
            slot.kind,
            OpKind::UdpRecvMulti { .. } | OpKind::TunReadMulti
        );
        let more = multishot && io_uring::cqueue::more(flags);
        for b in slot.bufs.drain(..) {
            recycle(b);
        }
        let kind = slot.kind;
        let buf = slot.buf.take();
        if !more {
            slot.kind = OpKind::Free;
            self.free.push(user_data as u32);
        }
        Some(Done {
            kind,
            buf,
            bid,
            more,
        })
    }

    /// Asks the kernel to cancel every multishot receive armed on sockets
    /// of another generation than `gen` (a listen port change: the old
    /// sockets stay bound while an operation holds them); returns how
    /// many. Each ends with a final completion (`ECANCELED`) that frees its
    /// slot as usual; the cancel requests' own completions are ignored.
    pub fn cancel_udp_recvs(&mut self, ring: &mut IoUring, gen: u32) -> usize {
        let mut n = 0;
        for (id, slot) in self.slots.iter().enumerate() {
            if matches!(slot.kind, OpKind::UdpRecvMulti { gen: g, .. } if g != gen) {
                let entry = opcode::AsyncCancel::new(id as u64)
                    .build()
                    .user_data(IGNORED);
                push(ring, &entry);
                n += 1;
            }
        }
        n
    }

    /// What the operation in slot `user_data` is, if one is in flight.
    pub fn kind(&self, user_data: u64) -> Option<OpKind> {
        let slot = self.slots.get(usize::try_from(user_data).ok()?)?;
        (slot.kind != OpKind::Free).then_some(slot.kind)
    }

    /// Takes back the packets of the GSO send in slot `user_data` (which
    /// the kernel refused), in order, into `out`, and returns their
    /// destination, so they can be sent again one datagram each. The slot
    /// then completes as usual, with no buffers left to recycle.
    pub fn take_gso_packets(
        &mut self,
        user_data: u64,
        out: &mut Vec<Packet>,
    ) -> Option<SocketAddr> {
        let slot = self.slots.get_mut(usize::try_from(user_data).ok()?)?;
        if slot.kind != OpKind::UdpSendGso {
            return None;
        }
        let dst = slot.meta.addr.to_socket_addr()?;
        for (buf, iov) in slot.bufs.drain(..).zip(slot.meta.iovs.iter()) {
            // Each iovec points into its buffer: the packet's bounds.
            let start = (iov.iov_base as usize).wrapping_sub(buf.as_ptr() as usize);
            out.extend(Packet::new(buf, start, iov.iov_len));
        }
        Some(dst)
    }

    /// Claims a slot for an operation of `kind` on `buf`, lets `build` make
    /// its submission entry from the slot's memory and the buffer, and
    /// queues it. The buffer comes back with the error when no slot is free.
    fn start(
        &mut self,
        ring: &mut IoUring,
        kind: OpKind,
        buf: Option<Buf>,
        build: impl FnOnce(&mut Meta, Option<&mut Buf>) -> squeue::Entry,
    ) -> Result<(), (OpError, Option<Buf>)> {
        let Some(id) = self.free.pop() else {
            return Err((OpError::Full, buf));
        };
        let slot = &mut self.slots[id as usize];
        slot.kind = kind;
        slot.buf = buf;
        // The buffer's heap memory and the boxed metadata stay where they
        // are until the completion frees the slot.
        let entry = build(&mut slot.meta, slot.buf.as_mut()).user_data(u64::from(id));
        push(ring, &entry);
        Ok(())
    }

    /// Arms a multishot receive on `fd` into buffer group `group`.
    pub fn udp_recv_multi(
        &mut self,
        ring: &mut IoUring,
        fd: RawFd,
        gen: u32,
        group: u16,
    ) -> Result<(), OpError> {
        self.start(ring, OpKind::UdpRecvMulti { fd, gen }, None, |m, _| {
            m.hdr = multishot_msghdr();
            opcode::RecvMsgMulti::new(types::Fd(fd), &m.hdr, group).build()
        })
        .map_err(|(e, _)| e)
    }

    /// Arms a multishot read of a TUN queue into buffer group `group`
    /// (each read takes its length from the provided buffer: the kernel
    /// requires the request's own length to be 0).
    pub fn tun_read_multi(
        &mut self,
        ring: &mut IoUring,
        fd: RawFd,
        group: u16,
    ) -> Result<(), OpError> {
        self.start(ring, OpKind::TunReadMulti, None, |_, _| {
            opcode::ReadMulti::new(types::Fd(fd), 0, group).build()
        })
        .map_err(|(e, _)| e)
    }

    /// Queues a write of `buf[start..start + len]` to a TUN queue.
    pub fn tun_write(
        &mut self,
        ring: &mut IoUring,
        fd: RawFd,
        buf: Buf,
        start: usize,
        len: usize,
    ) -> Result<(), (OpError, Option<Buf>)> {
        self.start(ring, OpKind::TunWrite, Some(buf), |_, buf| {
            let ptr = buf.map_or(std::ptr::null(), |b| b[start..start + len].as_ptr());
            opcode::Write::new(types::Fd(fd), ptr, len as u32).build()
        })
    }

    /// Queues one TUN write of the super-packet made of `parts`, each
    /// `(buffer, start, len)`, in order (drained on success): the first
    /// carries the virtio-net header and the super-packet's headers, the
    /// others only payload. One iovec per part, so no payload is copied.
    /// With no free slot, or more parts than [`MAX_SEGMENTS`], or a part
    /// outside its buffer, nothing is taken.
    pub fn tun_writev(
        &mut self,
        ring: &mut IoUring,
        fd: RawFd,
        parts: &mut Vec<(Buf, usize, usize)>,
    ) -> Result<(), OpError> {
        if parts.len() > MAX_SEGMENTS || parts.iter().any(|(b, s, l)| s + l > b.len()) {
            return Err(OpError::Full);
        }
        let Some(id) = self.free.pop() else {
            return Err(OpError::Full);
        };
        let slot = &mut self.slots[id as usize];
        let m = &mut *slot.meta;
        let n = parts.len();
        for (iov, (mut buf, start, len)) in m.iovs.iter_mut().zip(parts.drain(..)) {
            iov.iov_base = buf[start..].as_mut_ptr().cast();
            iov.iov_len = len;
            slot.bufs.push(buf);
        }
        slot.kind = OpKind::TunWriteGso;
        let entry = opcode::Writev::new(types::Fd(fd), m.iovs.as_ptr(), n as u32)
            .build()
            .user_data(u64::from(id));
        push(ring, &entry);
        Ok(())
    }

    /// Queues the send of `buf[start..start + len]` to `dst` on `fd`.
    pub fn udp_send(
        &mut self,
        ring: &mut IoUring,
        fd: RawFd,
        buf: Buf,
        start: usize,
        len: usize,
        dst: SocketAddr,
    ) -> Result<(), (OpError, Option<Buf>)> {
        self.start(ring, OpKind::UdpSend, Some(buf), |m, buf| {
            m.addr = SockAddrBuf::from_socket_addr(dst);
            let namelen = m.addr.addr_len();
            m.iov.iov_base = buf.map_or(std::ptr::null_mut(), |b| b[start..].as_mut_ptr().cast());
            m.iov.iov_len = len;
            m.hdr = msghdr_for(&mut m.iov, &mut m.addr, namelen);
            opcode::SendMsg::new(types::Fd(fd), &m.hdr).build()
        })
    }

    /// Queues the packets of `pkts` (drained on success) as one UDP GSO send
    /// to `dst`: the kernel cuts the concatenation into datagrams of
    /// `segment` bytes (the last may be shorter). One iovec per packet, so
    /// nothing is copied. The caller keeps the count within
    /// [`MAX_SEGMENTS`] and the bytes within
    /// [`MAX_GSO_BYTES`](super::limits::MAX_GSO_BYTES).
    pub fn udp_send_gso(
        &mut self,
        ring: &mut IoUring,
        fd: RawFd,
        pkts: &mut Vec<Packet>,
        segment: u16,
        dst: SocketAddr,
    ) -> Result<(), OpError> {
        debug_assert!(pkts.len() <= MAX_SEGMENTS);
        let Some(id) = self.free.pop() else {
            return Err(OpError::Full);
        };
        let slot = &mut self.slots[id as usize];
        let m = &mut *slot.meta;
        let n = pkts.len().min(MAX_SEGMENTS);
        for (iov, pkt) in m.iovs.iter_mut().zip(pkts.drain(..n)) {
            let (start, len) = (pkt.start(), pkt.len());
            let mut buf = pkt.into_inner();
            iov.iov_base = buf[start..].as_mut_ptr().cast();
            iov.iov_len = len;
            slot.bufs.push(buf);
        }
        m.addr = SockAddrBuf::from_socket_addr(dst);
        let namelen = m.addr.addr_len();
        m.hdr = msghdr_for(&mut m.iovs[0], &mut m.addr, namelen);
        m.hdr.msg_iovlen = n;
        set_udp_segment(&mut m.hdr, &mut m.cmsg, segment);
        slot.kind = OpKind::UdpSendGso;
        let entry = opcode::SendMsg::new(types::Fd(fd), &m.hdr)
            .build()
            .user_data(u64::from(id));
        push(ring, &entry);
        Ok(())
    }

    /// Queues a read of the worker's eventfd.
    pub fn wake_read(&mut self, ring: &mut IoUring, fd: RawFd) -> Result<(), OpError> {
        self.start(ring, OpKind::Wake, None, |m, _| {
            opcode::Read::new(types::Fd(fd), (&mut m.counter as *mut u64).cast(), 8).build()
        })
        .map_err(|(e, _)| e)
    }

    /// Queues a timeout that completes after `after`.
    pub fn timer(&mut self, ring: &mut IoUring, after: Duration) -> Result<(), OpError> {
        self.start(ring, OpKind::Timer, None, |m, _| {
            m.ts = types::Timespec::new()
                .sec(after.as_secs())
                .nsec(after.subsec_nanos());
            opcode::Timeout::new(&m.ts).build()
        })
        .map_err(|(e, _)| e)
    }
}

/// Attaches a `UDP_SEGMENT` control message with `segment` to `hdr`.
fn set_udp_segment(hdr: &mut libc::msghdr, space: &mut [u64; 4], segment: u16) {
    *space = [0; 4];
    // SAFETY: CMSG_* only compute sizes and offsets; the control buffer is
    // 32 bytes, more than CMSG_SPACE(2) (24 on 64-bit Linux), and aligned
    // for cmsghdr by being made of u64s.
    unsafe {
        hdr.msg_control = space.as_mut_ptr().cast();
        hdr.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as usize;
        let c = libc::CMSG_FIRSTHDR(hdr);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), segment);
    }
}

/// Pushes an entry, submitting first if the submission queue is full.
fn push(ring: &mut IoUring, entry: &squeue::Entry) {
    loop {
        // SAFETY: every pointer in the entry refers to slot memory (or a
        // slot-owned buffer) that stays valid and unmoved until the
        // operation's completion frees the slot.
        if unsafe { ring.submission().push(entry) }.is_ok() {
            return;
        }
        // Full: hand what is queued to the kernel and try again. A submit
        // error here (EBUSY with a full completion queue) resolves when the
        // caller drains completions; retrying after submit is bounded by it.
        if ring.submit().is_err() {
            std::thread::yield_now();
        }
    }
}

fn msghdr_for(
    iov: &mut libc::iovec,
    addr: &mut SockAddrBuf,
    namelen: libc::socklen_t,
) -> libc::msghdr {
    // SAFETY: msghdr is plain old data; zero is a valid value for every field.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_name = addr.as_mut_ptr().cast();
    hdr.msg_namelen = namelen;
    hdr.msg_iov = iov;
    hdr.msg_iovlen = 1;
    hdr
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A control area as the kernel writes it: `cmsgs` of (level, type, data).
    fn control(cmsgs: &[(i32, i32, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(level, kind, data) in cmsgs {
            // SAFETY: CMSG_LEN/CMSG_SPACE only compute sizes.
            let (len, space) = unsafe {
                (
                    libc::CMSG_LEN(data.len() as u32) as usize,
                    libc::CMSG_SPACE(data.len() as u32) as usize,
                )
            };
            let at = out.len();
            out.resize(at + space, 0);
            out[at..at + 8].copy_from_slice(&len.to_ne_bytes());
            out[at + 8..at + 12].copy_from_slice(&level.to_ne_bytes());
            out[at + 12..at + 16].copy_from_slice(&kind.to_ne_bytes());
            out[at + 16..at + 16 + data.len()].copy_from_slice(data);
        }
        out
    }

    #[test]
    fn gro_size_is_read_from_its_control_message() {
        let gro = 1452i32.to_ne_bytes();
        assert_eq!(
            gro_segment_size(&control(&[(
                libc::SOL_UDP,
                super::super::udp::UDP_GRO,
                &gro
            )])),
            Some(1452)
        );
        // After another message, as long as the chain is well formed.
        let other = [0u8; 12];
        let both = control(&[
            (libc::SOL_IP, libc::IP_PKTINFO, &other),
            (libc::SOL_UDP, super::super::udp::UDP_GRO, &gro),
        ]);
        assert_eq!(gro_segment_size(&both), Some(1452));
        // No message, a different one, or a malformed chain: one datagram.
        assert_eq!(gro_segment_size(&[]), None);
        assert_eq!(
            gro_segment_size(&control(&[(libc::SOL_IP, libc::IP_PKTINFO, &other)])),
            None
        );
        let zero = 0i32.to_ne_bytes();
        assert_eq!(
            gro_segment_size(&control(&[(
                libc::SOL_UDP,
                super::super::udp::UDP_GRO,
                &zero
            )])),
            None
        );
        let mut bad = control(&[(libc::SOL_UDP, super::super::udp::UDP_GRO, &gro)]);
        bad[..8].copy_from_slice(&3usize.to_ne_bytes());
        assert_eq!(gro_segment_size(&bad), None);
        let whole = control(&[(libc::SOL_UDP, super::super::udp::UDP_GRO, &gro)]);
        for cut in 0..whole.len() {
            let _ = gro_segment_size(&whole[..cut]);
        }
        assert_eq!(gro_segment_size(&whole[..17]), None);
    }
}
