//! The UDP sockets: an `SO_REUSEPORT` group per address family, one socket
//! per worker (DESIGN.md principle 3), plus [`SockAddrBuf`] for the
//! `msghdr`s the workers build.
//!
//! # Why a probe before the group binds
//! Linux lets any socket of the same user join an `SO_REUSEPORT` group, and
//! an ephemeral (`port 0`) bind with `SO_REUSEPORT` may even pick a port such
//! a group already uses. A second daemon on the same port would then
//! silently receive a share of our datagrams. So before binding the group,
//! [`UdpGroup::bind`] binds plain (non-reuseport) probe sockets to the port,
//! IPv4 and IPv6: if they fail with EADDRINUSE, somebody else has the port,
//! exactly as kernel WireGuard and wireguard-go (which do not use reuseport)
//! would report. The probes are closed just before the group binds; a
//! process that grabs the port in between makes the group bind fail with
//! EADDRINUSE (or, for port 0, triggers a retry on another port).

use std::fmt;
use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use super::config::ApplyError;
use super::sys;

/// Socket buffer size asked for on every socket: several MiB so a burst
/// that arrives while a worker is busy encrypting is not dropped.
pub const SOCKET_BUFFER_BYTES: libc::c_int = 8 << 20;

/// `UDP_GRO` (Linux 5.0+; not in the `libc` crate for glibc targets): the
/// socket may receive a burst of datagrams of one flow as one read, with
/// a `UDP_GRO` control message giving the datagram size (all equal but
/// the last, which may be shorter). Group sockets turn it on.
pub const UDP_GRO: libc::c_int = 104;

/// How many random ports a `port 0` bind tries before giving up.
const PORT_ATTEMPTS: usize = 16;

/// Why a [`UdpGroup`] could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another socket holds the port (EADDRINUSE).
    #[error("UDP port {0} is already in use")]
    AddressInUse(u16),
    /// Port 0 was asked for, and no free port was found for both families.
    #[error("no UDP port free for both IPv4 and IPv6 after {PORT_ATTEMPTS} attempts")]
    NoFreePort,
    /// The worker count was 0.
    #[error("a UDP socket group needs at least one worker")]
    NoWorkers,
    /// Any other system error, with the operation that failed.
    #[error("{op}: {source}")]
    Io {
        /// The operation, e.g. `"bind"` or `"setsockopt(SO_MARK)"`.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl From<BindError> for ApplyError {
    fn from(e: BindError) -> ApplyError {
        match e {
            BindError::AddressInUse(port) => ApplyError::AddressInUse(port),
            BindError::NoFreePort => ApplyError::AddressInUse(0),
            BindError::NoWorkers => ApplyError::Io(libc::EINVAL),
            BindError::Io { source, .. } => {
                ApplyError::Io(source.raw_os_error().unwrap_or(libc::EIO))
            }
        }
    }
}

/// One bound UDP port: for each worker an IPv4 socket on `0.0.0.0:port` and
/// (unless the host has no IPv6) an IPv6-only socket on `[::]:port`, all in
/// `SO_REUSEPORT` groups, nonblocking and close-on-exec.
///
/// The sockets stay owned by the group: keep it alive while workers use the
/// raw fds (or give each worker a `try_clone` of its fds; the fwmark then
/// still applies, as it is a property of the socket, not of the fd).
#[derive(Debug)]
pub struct UdpGroup {
    port: u16,
    v4: Vec<OwnedFd>,
    v6: Vec<OwnedFd>,
    ipv4_only: bool,
    fwmark: u32,
}

impl UdpGroup {
    /// Binds `workers` sockets per family to `port` (0: a free port, the
    /// same for every socket and both families) and marks them with
    /// `fwmark` (0: no mark).
    pub fn bind(port: u16, workers: usize, fwmark: u32) -> Result<UdpGroup, BindError> {
        if workers == 0 {
            return Err(BindError::NoWorkers);
        }
        if port != 0 {
            return Self::bind_port(port, workers, fwmark);
        }
        for _ in 0..PORT_ATTEMPTS {
            let candidate = free_v4_port()?;
            match Self::bind_port(candidate, workers, fwmark) {
                // Taken for IPv6, or grabbed by someone since the probe.
                Err(BindError::AddressInUse(_)) => continue,
                other => return other,
            }
        }
        Err(BindError::NoFreePort)
    }

    fn bind_port(port: u16, workers: usize, fwmark: u32) -> Result<UdpGroup, BindError> {
        // The probes only need to exist until the group binds; see the
        // module documentation.
        let probe_v4 = bind_socket(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)), false)?;
        let probe_v6 = match bind_socket(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)), false) {
            Ok(fd) => Some(fd),
            Err(BindError::Io { source, .. }) if no_ipv6(&source) => None,
            Err(e) => return Err(e),
        };
        let ipv4_only = probe_v6.is_none();
        drop(probe_v4);
        drop(probe_v6);

        let mut group = UdpGroup {
            port,
            v4: Vec::with_capacity(workers),
            v6: Vec::with_capacity(if ipv4_only { 0 } else { workers }),
            ipv4_only,
            fwmark: 0,
        };
        for _ in 0..workers {
            let fd = bind_socket(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)), true)?;
            group.v4.push(fd);
        }
        if !ipv4_only {
            for _ in 0..workers {
                let fd = bind_socket(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)), true)?;
                group.v6.push(fd);
            }
        }
        group.set_fwmark(fwmark).map_err(|source| BindError::Io {
            op: "setsockopt(SO_MARK)",
            source,
        })?;
        Ok(group)
    }

    /// Attaches the classic steering filter ([`classic`](super::steer::classic)) to each
    /// family's reuseport group, so that each datagram reaches the socket of
    /// the worker named by the low `bits` bits of its receiver index. Only
    /// useful with more than one socket per family; does nothing otherwise.
    pub fn steer_to_owners(&self, bits: u8) -> io::Result<()> {
        for family in [&self.v4, &self.v6] {
            if let (Some(first), true) = (family.first(), family.len() > 1) {
                super::steer::classic::attach(first.as_fd(), bits)?;
            }
        }
        Ok(())
    }

    /// The bound port (never 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The IPv4 sockets, indexed by worker.
    pub fn v4_fds(&self) -> &[OwnedFd] {
        &self.v4
    }

    /// The IPv6 sockets, indexed by worker; empty if [`Self::ipv4_only`].
    pub fn v6_fds(&self) -> &[OwnedFd] {
        &self.v6
    }

    /// True when the host has no IPv6 and only IPv4 sockets were bound.
    pub fn ipv4_only(&self) -> bool {
        self.ipv4_only
    }

    /// The mark currently set on the sockets (0: none).
    pub fn fwmark(&self) -> u32 {
        self.fwmark
    }

    /// Sets `SO_MARK` on every socket (0 clears it). Needs CAP_NET_ADMIN
    /// (EPERM otherwise). All or nothing: on failure the sockets already
    /// changed get the previous mark back.
    pub fn set_fwmark(&mut self, mark: u32) -> io::Result<()> {
        if mark == self.fwmark {
            // Also keeps an unprivileged daemon working while the mark is 0:
            // even setting 0 needs the capability.
            return Ok(());
        }
        let fds: Vec<BorrowedFd<'_>> = self
            .v4
            .iter()
            .chain(&self.v6)
            .map(|fd| fd.as_fd())
            .collect();
        for (i, fd) in fds.iter().enumerate() {
            if let Err(e) = set_mark(*fd, mark) {
                for done in &fds[..i] {
                    // Best effort: it just worked with the same privileges.
                    let _ = set_mark(*done, self.fwmark);
                }
                return Err(e);
            }
        }
        self.fwmark = mark;
        Ok(())
    }
}

fn set_mark(fd: BorrowedFd<'_>, mark: u32) -> io::Result<()> {
    // SO_MARK is a u32 in the kernel; the int is reinterpreted bit for bit.
    sys::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_MARK, mark as libc::c_int)
}

/// Errors meaning "this host has no usable IPv6".
fn no_ipv6(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL | libc::EPROTONOSUPPORT)
    )
}

/// Lets the kernel pick a port that is free for IPv4 (without reuseport,
/// so a port used by anybody's reuseport group is not eligible).
fn free_v4_port() -> Result<u16, BindError> {
    let fd = bind_socket(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), false)?;
    let mut addr = SockAddrBuf::new();
    // SAFETY: `addr` provides a sockaddr_storage and its length, as
    // getsockname(2) expects.
    sys::cvt(unsafe { libc::getsockname(fd.as_raw_fd(), addr.as_mut_ptr(), addr.len_mut()) })
        .map_err(|source| BindError::Io {
            op: "getsockname",
            source,
        })?;
    match addr.to_socket_addr() {
        Some(a) if a.port() != 0 => Ok(a.port()),
        _ => Err(BindError::Io {
            op: "getsockname",
            source: io::Error::from(io::ErrorKind::InvalidData),
        }),
    }
}

/// A UDP socket bound to `addr`: nonblocking, close-on-exec, IPv6-only for
/// IPv6. A group member (`reuseport`) also gets large buffers.
fn bind_socket(addr: SocketAddr, reuseport: bool) -> Result<OwnedFd, BindError> {
    let io = |op| move |source| BindError::Io { op, source };
    let domain = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    let fd = sys::socket(domain, libc::SOCK_DGRAM, libc::IPPROTO_UDP).map_err(io("socket"))?;
    let s = fd.as_fd();
    if addr.is_ipv6() {
        // Separate v4 and v6 sockets: no v4-mapped addresses to handle, and
        // the v4 group keeps its own port regardless of net.ipv6.bindv6only.
        sys::setsockopt_int(s, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)
            .map_err(io("setsockopt(IPV6_V6ONLY)"))?;
    }
    if reuseport {
        sys::setsockopt_int(s, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)
            .map_err(io("setsockopt(SO_REUSEPORT)"))?;
        set_buffer(s, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF);
        set_buffer(s, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF);
        // Best effort: without GRO every datagram arrives on its own.
        let _ = sys::setsockopt_int(s, libc::SOL_UDP, UDP_GRO, 1);
    }
    let sa = SockAddrBuf::from_socket_addr(addr);
    // SAFETY: `sa` holds a valid sockaddr of `sa.addr_len()` bytes.
    let ret = unsafe { libc::bind(s.as_raw_fd(), sa.as_ptr(), sa.addr_len()) };
    match sys::cvt(ret) {
        Ok(_) => Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
            Err(BindError::AddressInUse(addr.port()))
        }
        Err(e) => Err(BindError::Io {
            op: "bind",
            source: e,
        }),
    }
}

/// Asks for [`SOCKET_BUFFER_BYTES`]: the `*FORCE` option ignores
/// `net.core.[rw]mem_max` but needs CAP_NET_ADMIN; without it the plain
/// option gives as much as the sysctl allows. Best effort: a small buffer
/// costs drops under load, not correctness.
fn set_buffer(fd: BorrowedFd<'_>, force: libc::c_int, plain: libc::c_int) {
    if sys::setsockopt_int(fd, libc::SOL_SOCKET, force, SOCKET_BUFFER_BYTES).is_err() {
        let _ = sys::setsockopt_int(fd, libc::SOL_SOCKET, plain, SOCKET_BUFFER_BYTES);
    }
}

/// A socket address in kernel form: a `sockaddr_storage` and its length,
/// for `msg_name`/`msg_namelen` of `recvmsg`/`sendmsg` and for `bind`.
///
/// Workers keep one per in-flight message, so the buffer must stay at a
/// stable address until the kernel is done with it.
#[derive(Clone, Copy)]
pub struct SockAddrBuf {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl SockAddrBuf {
    /// An empty buffer for the kernel to fill: zeroed, with the length set
    /// to the full capacity.
    pub fn new() -> SockAddrBuf {
        SockAddrBuf {
            // SAFETY: sockaddr_storage is plain integers; all-zero is valid
            // (family AF_UNSPEC).
            storage: unsafe { mem::zeroed() },
            len: Self::CAPACITY,
        }
    }

    /// Size of the underlying storage.
    pub const CAPACITY: libc::socklen_t =
        mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;

    /// Encodes `addr` (`sockaddr_in` or `sockaddr_in6`, with scope id and
    /// flow info passed through unchanged, as std does).
    pub fn from_socket_addr(addr: SocketAddr) -> SockAddrBuf {
        let mut buf = SockAddrBuf::new();
        match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned at
                // least as strictly as sockaddr_in.
                unsafe { buf.as_mut_ptr().cast::<libc::sockaddr_in>().write(sin) };
                buf.len = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: sockaddr_storage is larger than and aligned at
                // least as strictly as sockaddr_in6.
                unsafe { buf.as_mut_ptr().cast::<libc::sockaddr_in6>().write(sin6) };
                buf.len = mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            }
        }
        buf
    }

    /// Decodes the address, or `None` if the family is neither IPv4 nor
    /// IPv6 or the length is too short for it. A v4-mapped IPv6 address
    /// stays an IPv6 address (the IPv6 sockets are IPv6-only, so the kernel
    /// does not produce them).
    pub fn to_socket_addr(&self) -> Option<SocketAddr> {
        let len = self.len as usize;
        match libc::c_int::from(self.storage.ss_family) {
            libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
                // SAFETY: the family says the storage holds a sockaddr_in;
                // it is large and aligned enough for one.
                let sin = unsafe { &*self.as_ptr().cast::<libc::sockaddr_in>() };
                let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
                Some(SocketAddr::V4(SocketAddrV4::new(
                    ip,
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
                // SAFETY: the family says the storage holds a sockaddr_in6;
                // it is large and aligned enough for one.
                let sin6 = unsafe { &*self.as_ptr().cast::<libc::sockaddr_in6>() };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }

    /// Pointer for `bind`/`sendto`/`msg_name` (cast to `*mut c_void` for a
    /// `msghdr`).
    pub fn as_ptr(&self) -> *const libc::sockaddr {
        (&self.storage as *const libc::sockaddr_storage).cast()
    }

    /// Pointer for the kernel to write an address into (`recvmsg`'s
    /// `msg_name`, `getsockname`).
    pub fn as_mut_ptr(&mut self) -> *mut libc::sockaddr {
        (&mut self.storage as *mut libc::sockaddr_storage).cast()
    }

    /// Length of the address held (`msg_namelen` for `sendmsg`).
    pub fn addr_len(&self) -> libc::socklen_t {
        self.len
    }

    /// The length, for calls that update it in place (`getsockname`,
    /// `recvfrom`).
    pub fn len_mut(&mut self) -> &mut libc::socklen_t {
        &mut self.len
    }

    /// Records the length the kernel reported (`msg_namelen` after
    /// `recvmsg`), clamped to the capacity.
    pub fn set_addr_len(&mut self, len: libc::socklen_t) {
        self.len = len.min(Self::CAPACITY);
    }
}

impl Default for SockAddrBuf {
    fn default() -> SockAddrBuf {
        SockAddrBuf::new()
    }
}

impl fmt::Debug for SockAddrBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_socket_addr() {
            Some(a) => write!(f, "SockAddrBuf({a})"),
            None => write!(
                f,
                "SockAddrBuf(family {}, len {})",
                self.storage.ss_family, self.len
            ),
        }
    }
}

impl From<SocketAddr> for SockAddrBuf {
    fn from(addr: SocketAddr) -> SockAddrBuf {
        SockAddrBuf::from_socket_addr(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_round_trip() {
        let addrs: [SocketAddr; 5] = [
            "192.0.2.7:51820".parse().unwrap(),
            "0.0.0.0:0".parse().unwrap(),
            "[2001:db8::1]:443".parse().unwrap(),
            SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 51820, 0, 7)),
            "[::ffff:192.0.2.1]:9".parse().unwrap(),
        ];
        for a in addrs {
            let buf = SockAddrBuf::from_socket_addr(a);
            assert_eq!(buf.to_socket_addr(), Some(a));
        }
    }

    #[test]
    fn sockaddr_layout_matches_kernel() {
        let buf = SockAddrBuf::from_socket_addr("1.2.3.4:258".parse().unwrap());
        assert_eq!(buf.addr_len() as usize, mem::size_of::<libc::sockaddr_in>());
        // SAFETY: test-only view of the first bytes of the storage.
        let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), 8) };
        assert_eq!(&bytes[2..8], &[1, 2, 1, 2, 3, 4]);
    }

    #[test]
    fn sockaddr_rejects_short_or_unknown() {
        let mut buf = SockAddrBuf::from_socket_addr("[::1]:1".parse().unwrap());
        buf.set_addr_len(8);
        assert_eq!(buf.to_socket_addr(), None);
        assert_eq!(SockAddrBuf::new().to_socket_addr(), None);
        buf.set_addr_len(u32::MAX);
        assert_eq!(buf.addr_len(), SockAddrBuf::CAPACITY);
    }

    #[test]
    fn bind_error_maps_to_apply_error() {
        assert_eq!(
            ApplyError::from(BindError::AddressInUse(51820)),
            ApplyError::AddressInUse(51820)
        );
        let e = BindError::Io {
            op: "bind",
            source: io::Error::from_raw_os_error(libc::EACCES),
        };
        assert_eq!(ApplyError::from(e).errno(), -libc::EACCES);
    }
}
