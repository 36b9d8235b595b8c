//! What the program tests share: the root check, running a closure on a
//! thread inside a namespace, reuseport sockets, bounded receives.
//!
//! In the manner of aya's own integration tests, each test loads a program
//! into the kernel, sends it real packets inside network namespaces it
//! creates (deleted by their guards, also when the test fails), and proves
//! the program ran by reading its counters back.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use corewire_testkit::{unique_ifname, Netns, Veth};

/// The tests load eBPF programs: root (CAP_BPF, CAP_NET_ADMIN) needed.
/// CI runs as root, so anything else fails rather than skips.
pub fn require_root() {
    // SAFETY: plain syscall.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "the eBPF program tests need root (CI runs them as root)"
    );
}

/// A namespace for one test, or a panic.
pub fn netns(prefix: &str) -> Netns {
    Netns::new(prefix).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `f` on a thread inside `ns` (setns acts on one thread) and
/// returns its result; a panic in `f` fails the caller.
pub fn in_netns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter().unwrap_or_else(|e| panic!("{e}"));
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// A nonblocking UDP socket with SO_REUSEPORT bound to `addr`.
pub fn reuseport_socket(addr: SocketAddr) -> UdpSocket {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscalls on a descriptor we own; the address buffers
    // outlive the calls.
    unsafe {
        let fd = libc::socket(
            family,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let sock = UdpSocket::from_raw_fd(fd);
        let one: libc::c_int = 1;
        let r = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            (&one as *const libc::c_int).cast(),
            4,
        );
        assert_eq!(r, 0, "SO_REUSEPORT: {}", std::io::Error::last_os_error());
        let SocketAddr::V4(a) = addr else {
            panic!("IPv4 only here");
        };
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let r = libc::bind(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(r, 0, "bind {addr}: {}", std::io::Error::last_os_error());
        sock
    }
}

/// Everything each nonblocking socket receives until `expected` datagrams
/// arrived in all or `timeout` passed (then the test's counts tell what
/// is missing).
pub fn receive_all(socks: &[UdpSocket], expected: usize, timeout: Duration) -> Vec<Vec<Vec<u8>>> {
    let mut got: Vec<Vec<Vec<u8>>> = vec![Vec::new(); socks.len()];
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    while got.iter().map(Vec::len).sum::<usize>() < expected && Instant::now() < deadline {
        let mut any = false;
        for (i, s) in socks.iter().enumerate() {
            while let Ok(n) = s.recv(&mut buf) {
                got[i].push(buf[..n].to_vec());
                any = true;
            }
        }
        if !any {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    // Whatever else is already there (more than expected is a failure too).
    std::thread::sleep(Duration::from_millis(20));
    for (i, s) in socks.iter().enumerate() {
        while let Ok(n) = s.recv(&mut buf) {
            got[i].push(buf[..n].to_vec());
        }
    }
    got
}

/// A WireGuard-shaped message: `ty`, three zero bytes, then `index`
/// (little-endian) at `index_at`, `len` bytes in all.
pub fn message(ty: u8, index_at: usize, index: u32, len: usize) -> Vec<u8> {
    let mut m = vec![0u8; len];
    m[0] = ty;
    if index_at + 4 <= len {
        m[index_at..index_at + 4].copy_from_slice(&index.to_le_bytes());
    }
    m
}

/// `n` queues of a new multi-queue TUN device `name` (no packet
/// information, nonblocking), in the calling thread's namespace.
pub fn tun_queues(name: &str, n: usize) -> Vec<std::fs::File> {
    use std::os::fd::AsRawFd;
    (0..n)
        .map(|_| {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
                .unwrap();
            // SAFETY: ifreq is plain data; the ioctl reads the name and flags.
            unsafe {
                let mut ifr: libc::ifreq = std::mem::zeroed();
                for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
                    *d = s as libc::c_char;
                }
                ifr.ifr_ifru.ifru_flags =
                    (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE) as libc::c_short;
                let r = libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &mut ifr);
                assert_eq!(
                    r,
                    0,
                    "TUNSETIFF {name}: {}",
                    std::io::Error::last_os_error()
                );
                let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
                libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
            }
            f
        })
        .collect()
}

/// xorshift64*: repeatable pseudo-random numbers.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}
