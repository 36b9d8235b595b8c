//! Batched UDP I/O for the generator and the LAN: `sendmmsg` with a source
//! address per datagram (`IP_PKTINFO`, with `IP_TRANSPARENT` so that one
//! socket speaks for K endpoint addresses) and GSO (`UDP_SEGMENT`: one
//! message carries several equal-sized datagrams of one peer), `recvmmsg`
//! with each datagram's destination address. The arrays are allocated once;
//! a send or a receive allocates nothing.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// `UDP_SEGMENT` (linux/udp.h), in `SOL_UDP` control messages.
const UDP_SEGMENT: libc::c_int = 103;
/// Control bytes per message: an `in_pktinfo` and a `u16`, each with its
/// header, 8-byte aligned.
const CTRL: usize = 64;
/// Bytes a received datagram may have (the hubs send at most ~1.5 KB).
pub const SLOT: usize = 2048;
/// Socket buffers asked for (with the `FORCE` options: root).
const SOCKET_BUFFER: libc::c_int = 64 << 20;

/// A UDP socket (blocking sends; receives wait with a bounded poll).
#[derive(Debug)]
pub struct UdpSock {
    fd: OwnedFd,
}

fn check(ret: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if ret < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(ret)
}

fn setsockopt(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
    what: &str,
) -> io::Result<()> {
    // SAFETY: an int option, pointer and length of a local.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const v).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    check(r, what).map(|_| ())
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; all-zero is valid.
    let mut s: libc::sockaddr_in = unsafe { zeroed() };
    s.sin_family = libc::AF_INET as libc::sa_family_t;
    s.sin_port = a.port().to_be();
    s.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    s
}

impl UdpSock {
    /// Binds `addr` in the calling thread's namespace; `transparent` lets
    /// it send from any address (`IP_TRANSPARENT`, CAP_NET_ADMIN).
    pub fn bind(addr: SocketAddrV4, transparent: bool) -> io::Result<UdpSock> {
        // SAFETY: socket(2) with constant arguments; the fd is owned at once.
        let fd = check(
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) },
            "socket",
        )?;
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let sock = UdpSock {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        };
        setsockopt(fd, libc::SOL_IP, libc::IP_PKTINFO, 1, "IP_PKTINFO")?;
        if transparent {
            setsockopt(fd, libc::SOL_IP, libc::IP_TRANSPARENT, 1, "IP_TRANSPARENT")?;
        }
        setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            SOCKET_BUFFER,
            "SO_RCVBUFFORCE",
        )?;
        setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            SOCKET_BUFFER,
            "SO_SNDBUFFORCE",
        )?;
        let sa = sockaddr(addr);
        // SAFETY: bind(2) with a sockaddr_in we own and its size.
        let r = unsafe {
            libc::bind(
                fd,
                (&raw const sa).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        check(r, &format!("bind {addr}"))?;
        Ok(sock)
    }

    fn raw(&self) -> libc::c_int {
        self.fd.as_raw_fd()
    }

    /// Waits up to `timeout` until a datagram is queued.
    fn wait_readable(&self, timeout: Duration) -> bool {
        let mut p = libc::pollfd {
            fd: self.raw(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one pollfd we own.
        unsafe { libc::poll(&mut p, 1, ms) > 0 }
    }
}

/// A message header with one iovec and a control buffer of [`CTRL`]
/// bytes (no address). The pointers are valid while both borrows are.
fn msghdr(iov: &mut libc::iovec, ctrl: &mut [u64; CTRL / 8]) -> libc::msghdr {
    // SAFETY: msghdr is plain data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctrl.as_mut_ptr().cast();
    msg.msg_controllen = CTRL as _;
    msg
}

/// `cap` zeroed message headers and iovecs (filled before each call).
fn empty_headers(cap: usize) -> (Vec<libc::mmsghdr>, Vec<libc::iovec>) {
    // SAFETY: mmsghdr is plain data; all-zero is a valid value.
    let hdr: libc::mmsghdr = unsafe { zeroed() };
    let iov = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    (vec![hdr; cap], vec![iov; cap])
}

/// One datagram (or GSO burst) to send.
#[derive(Debug, Clone, Copy)]
pub struct Out<'a> {
    /// The bytes: one datagram, or `data.len() / segment` of them.
    pub data: &'a [u8],
    pub dst: SocketAddrV4,
    /// The source address (must be local, or the socket transparent).
    pub src: Option<Ipv4Addr>,
    /// GSO segment size; 0 for a single datagram.
    pub segment: u16,
}

/// The arrays of one `sendmmsg` (at most `cap` messages).
pub struct SendBatch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_in>,
    ctrl: Vec<[u64; CTRL / 8]>,
}

// SAFETY: the raw pointers inside are rebuilt on every send from data the
// caller lends for that call; nothing points anywhere between calls.
unsafe impl Send for SendBatch {}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch")
            .field("capacity", &self.hdrs.len())
            .finish_non_exhaustive()
    }
}

impl SendBatch {
    pub fn new(cap: usize) -> SendBatch {
        let (hdrs, iovs) = empty_headers(cap);
        SendBatch {
            hdrs,
            iovs,
            names: vec![sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)); cap],
            ctrl: vec![[0; CTRL / 8]; cap],
        }
    }

    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// Sends every item (at most [`capacity`](Self::capacity)), blocking
    /// while the socket buffer is full; returns the datagrams sent (GSO
    /// bursts count their segments). A datagram the kernel refuses ends the
    /// call with the error.
    pub fn send(&mut self, sock: &UdpSock, items: &[Out<'_>]) -> io::Result<u64> {
        let n = items.len().min(self.hdrs.len());
        let mut datagrams = 0u64;
        for (i, item) in items[..n].iter().enumerate() {
            self.names[i] = sockaddr(item.dst);
            self.iovs[i] = libc::iovec {
                iov_base: item.data.as_ptr().cast_mut().cast(),
                iov_len: item.data.len(),
            };
            let ctrl = &mut self.ctrl[i];
            *ctrl = [0; CTRL / 8];
            let mut msg = msghdr(&mut self.iovs[i], ctrl);
            msg.msg_name = (&raw mut self.names[i]).cast();
            msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let mut used = 0usize;
            // SAFETY: CMSG_* walk the control buffer we just pointed msg at
            // (CTRL bytes, room for both messages).
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&msg);
                if let Some(src) = item.src {
                    let info = libc::in_pktinfo {
                        ipi_ifindex: 0,
                        ipi_spec_dst: libc::in_addr {
                            s_addr: u32::from(src).to_be(),
                        },
                        ipi_addr: libc::in_addr { s_addr: 0 },
                    };
                    (*c).cmsg_level = libc::SOL_IP;
                    (*c).cmsg_type = libc::IP_PKTINFO;
                    (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast(), info);
                    used += libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as usize;
                    c = libc::CMSG_NXTHDR(&msg, c);
                }
                if item.segment > 0 && item.data.len() > usize::from(item.segment) {
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast(), item.segment);
                    used += libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
                }
            }
            msg.msg_controllen = used as _;
            if used == 0 {
                msg.msg_control = std::ptr::null_mut();
            }
            self.hdrs[i] = libc::mmsghdr {
                msg_hdr: msg,
                msg_len: 0,
            };
            datagrams += if item.segment > 0 {
                item.data.len().div_ceil(usize::from(item.segment)) as u64
            } else {
                1
            };
        }
        let mut done = 0;
        while done < n {
            // SAFETY: sendmmsg over our headers from `done`; every pointer
            // in them is into our arrays or the items borrowed for this call.
            let r = unsafe {
                libc::sendmmsg(
                    sock.raw(),
                    self.hdrs.as_mut_ptr().add(done),
                    (n - done) as u32,
                    0,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            done += r as usize;
        }
        Ok(datagrams)
    }
}

/// The arrays and buffers of one `recvmmsg`.
pub struct RecvBatch {
    bufs: Vec<u8>,
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    ctrl: Vec<[u64; CTRL / 8]>,
    /// Per received datagram: its length and destination address.
    meta: Vec<(usize, Ipv4Addr)>,
}

// SAFETY: as for SendBatch: the pointers are rebuilt on every receive.
unsafe impl Send for RecvBatch {}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("capacity", &self.hdrs.len())
            .finish_non_exhaustive()
    }
}

impl RecvBatch {
    pub fn new(cap: usize) -> RecvBatch {
        let (hdrs, iovs) = empty_headers(cap);
        RecvBatch {
            bufs: vec![0; cap * SLOT],
            hdrs,
            iovs,
            ctrl: vec![[0; CTRL / 8]; cap],
            meta: Vec::with_capacity(cap),
        }
    }

    /// Receives what is queued (waiting up to `wait` for the first);
    /// returns how many datagrams arrived.
    pub fn recv(&mut self, sock: &UdpSock, wait: Duration) -> io::Result<usize> {
        self.meta.clear();
        let cap = self.hdrs.len();
        for i in 0..cap {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i * SLOT..].as_mut_ptr().cast(),
                iov_len: SLOT,
            };
            let msg = msghdr(&mut self.iovs[i], &mut self.ctrl[i]);
            self.hdrs[i] = libc::mmsghdr {
                msg_hdr: msg,
                msg_len: 0,
            };
        }
        // SAFETY: recvmmsg into our headers, buffers and control arrays.
        let mut r = unsafe {
            libc::recvmmsg(
                sock.raw(),
                self.hdrs.as_mut_ptr(),
                cap as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) {
                return Err(e);
            }
            if !sock.wait_readable(wait) {
                return Ok(0);
            }
            // SAFETY: as above.
            r = unsafe {
                libc::recvmmsg(
                    sock.raw(),
                    self.hdrs.as_mut_ptr(),
                    cap as u32,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if r < 0 {
                return Ok(0);
            }
        }
        for i in 0..r as usize {
            let h = &self.hdrs[i];
            let mut dst = Ipv4Addr::UNSPECIFIED;
            // SAFETY: the kernel filled msg_control up to msg_controllen.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_IP && (*c).cmsg_type == libc::IP_PKTINFO {
                        let info: libc::in_pktinfo =
                            std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                        dst = Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr));
                    }
                    c = libc::CMSG_NXTHDR(&h.msg_hdr, c);
                }
            }
            self.meta.push(((h.msg_len as usize).min(SLOT), dst));
        }
        Ok(self.meta.len())
    }

    /// The i-th datagram of the last receive and its destination address.
    pub fn get(&self, i: usize) -> Option<(&[u8], Ipv4Addr)> {
        let &(len, dst) = self.meta.get(i)?;
        Some((&self.bufs[i * SLOT..i * SLOT + len], dst))
    }
}
