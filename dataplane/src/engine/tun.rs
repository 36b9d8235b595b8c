//! The TUN device: one multi-queue interface, one queue (fd) per worker.
//!
//! Each worker reads and writes its own queue, so packets from the kernel are
//! spread over workers without any shared lock (DESIGN.md principle 3). All
//! queues are nonblocking and close-on-exec; the io_uring workers only ever
//! see their raw fds.
//!
//! Kernel behaviour this module relies on (checked by `tests/sys.rs`):
//! - `TUNSETIFF` on a name that already belongs to a multi-queue TUN does not
//!   fail: it *attaches another queue* to that device, whoever owns it. A
//!   second daemon started for the same interface would silently steal part
//!   of the first one's traffic. [`Tun::create`] therefore refuses a name that
//!   exists (checked with `if_nametoindex`, which also gives the clearer error
//!   for non-TUN devices), and opens the first queue with `IFF_TUN_EXCL`,
//!   which makes the kernel fail with EBUSY instead of attaching, closing the
//!   race between the check and the ioctl.
//! - The device is not persistent (`TUNSETPERSIST` is never called): the
//!   kernel unregisters it when the last reference to its last queue's open
//!   file goes, inside that `close(2)`. Dropping [`Tun`] closes every queue,
//!   so the interface is normally gone when `drop` returns. Other references
//!   delay it: a `try_clone`d queue fd, or a child that another thread is
//!   forking at that moment (fork copies every fd, close-on-exec ones too,
//!   until the child execs; seen in the parallel tests as a few ms delay).
//! - `ip link del` removes the device even while queues are open; the queue
//!   fds stay valid but reads and writes on them fail with EBADFD. The daemon
//!   learns about it from [`netlink::LinkMonitor`](super::netlink::LinkMonitor).
//! - Every queue is opened with `IFF_VNET_HDR` (the kernel requires all
//!   queues of a device to agree), so every read and write starts with a
//!   10-byte virtio-net header, and `TUNSETOFFLOAD` asks for checksum, TSO
//!   and USO offload: reads then return up to 64 KiB super-packets, which
//!   the workers split ([`offload`](super::offload)). A kernel without USO
//!   (before 6.2) refuses those flags with EINVAL and gets the set without
//!   them; [`Tun::offload`] says what was accepted.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use super::sys;

/// MTU set on a new device (see [`limits`](super::limits)).
pub use super::limits::DEFAULT_MTU;

/// Most queues one TUN device can have (the kernel's `MAX_TAP_QUEUES`).
pub const MAX_QUEUES: usize = 256;

/// Longest interface name in bytes (`IFNAMSIZ` minus the NUL).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// `TUNSETIFF` flags every queue is opened with. An offload mode (e.g.
/// `IFF_VNET_HDR`) is one more bit here; the kernel requires the
/// multi-queue bit to match on every queue and takes the feature bits from
/// the queues as they attach, so all queues must share one flag set.
const QUEUE_FLAGS: libc::c_int =
    libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE | libc::IFF_VNET_HDR;

/// What the kernel hands a TUN opened by [`Tun::create`] and what it
/// accepts back: which `TUNSETOFFLOAD` flags it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offload {
    /// TCP segmentation offload (reads may be TCP super-packets; writes may
    /// be coalesced TCP super-packets).
    pub tso: bool,
    /// UDP segmentation offload (Linux 6.2+): the same for UDP.
    pub uso: bool,
}

/// Why a TUN device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    /// The name is not a usable Linux interface name.
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The queue count is 0 or above the kernel's limit.
    #[error("invalid TUN queue count {0}: must be between 1 and {MAX_QUEUES}")]
    InvalidQueueCount(usize),
    /// An interface with this name exists already (any kind of device).
    #[error("interface {0} already exists")]
    AlreadyExists(String),
    /// The kernel refused to create the device (EPERM/EACCES).
    #[error("permission denied creating {0}: run as root or with CAP_NET_ADMIN")]
    PermissionDenied(String),
    /// The TUN driver is not available (no /dev/net/tun node or no driver).
    #[error("/dev/net/tun is missing: load the tun module")]
    TunMissing,
    /// Any other system error, with the operation that failed.
    #[error("{op} for {name}: {source}")]
    Io {
        /// The operation, e.g. `"TUNSETIFF"`.
        op: &'static str,
        /// The interface name.
        name: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// A multi-queue TUN interface created by this process.
///
/// Dropping it closes every queue, which deletes the interface (see the
/// module documentation).
#[derive(Debug)]
pub struct Tun {
    name: String,
    ifindex: u32,
    queues: Vec<OwnedFd>,
    offload: Offload,
    /// An `AF_INET` datagram socket: the handle `SIOC*IF*` ioctls go through.
    ctl: OwnedFd,
}

impl Tun {
    /// Creates the interface `name` with `queues` queues (1..=[`MAX_QUEUES`])
    /// and MTU [`DEFAULT_MTU`]. The link is left down: wg-quick brings it up
    /// after configuring it.
    pub fn create(name: &str, queues: usize) -> Result<Tun, TunError> {
        validate_name(name)?;
        if queues == 0 || queues > MAX_QUEUES {
            return Err(TunError::InvalidQueueCount(queues));
        }
        if sys::if_nametoindex(name).is_some() {
            return Err(TunError::AlreadyExists(name.to_owned()));
        }

        let mut fds = Vec::with_capacity(queues);
        // The first queue creates the device; IFF_TUN_EXCL makes it fail
        // (EBUSY) instead of attaching if the name appeared meanwhile.
        fds.push(open_queue(name, QUEUE_FLAGS | libc::IFF_TUN_EXCL)?);
        for _ in 1..queues {
            // On error `fds` is dropped, which removes the half-built device.
            fds.push(open_queue(name, QUEUE_FLAGS)?);
        }

        let io_err = |op, source| TunError::Io {
            op,
            name: name.to_owned(),
            source,
        };
        let ctl = sys::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)
            .map_err(|e| io_err("socket(AF_INET)", e))?;
        let ifindex = sys::if_nametoindex(name)
            .ok_or_else(|| io_err("if_nametoindex", io::Error::last_os_error()))?;
        let offload = set_offload(&fds[0]).map_err(|e| io_err("TUNSETOFFLOAD", e))?;
        let tun = Tun {
            name: name.to_owned(),
            ifindex,
            queues: fds,
            offload,
            ctl,
        };
        tun.set_mtu(DEFAULT_MTU)
            .map_err(|e| io_err("SIOCSIFMTU", e))?;
        Ok(tun)
    }

    /// The queue fds, one per worker, in creation order. They stay owned by
    /// `self`: keep the `Tun` alive while workers use them (a duplicated fd
    /// keeps the interface alive after `Tun` is dropped).
    pub fn queue_fds(&self) -> &[OwnedFd] {
        &self.queues
    }

    /// The offloads the kernel accepted (the same for every queue).
    pub fn offload(&self) -> Offload {
        self.offload
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface index, e.g. for [`LinkMonitor`](super::netlink::LinkMonitor).
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The current MTU (`SIOCGIFMTU`).
    pub fn mtu(&self) -> io::Result<u32> {
        let mut ifr = sys::ifreq(&self.name);
        sys::ioctl_ifreq(self.ctl.as_fd(), libc::SIOCGIFMTU as libc::Ioctl, &mut ifr)?;
        // SAFETY: SIOCGIFMTU fills the `ifru_mtu` member of the union.
        let mtu = unsafe { ifr.ifr_ifru.ifru_mtu };
        u32::try_from(mtu).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
    }

    /// Sets the MTU (`SIOCSIFMTU`). The kernel accepts 68..=65535 for a TUN
    /// device and fails with EINVAL otherwise.
    pub fn set_mtu(&self, mtu: u32) -> io::Result<()> {
        let mtu =
            libc::c_int::try_from(mtu).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let mut ifr = sys::ifreq(&self.name);
        ifr.ifr_ifru.ifru_mtu = mtu;
        sys::ioctl_ifreq(self.ctl.as_fd(), libc::SIOCSIFMTU as libc::Ioctl, &mut ifr)
    }

    /// Whether the interface is administratively up (`IFF_UP`).
    pub fn is_up(&self) -> io::Result<bool> {
        let mut ifr = sys::ifreq(&self.name);
        sys::ioctl_ifreq(
            self.ctl.as_fd(),
            libc::SIOCGIFFLAGS as libc::Ioctl,
            &mut ifr,
        )?;
        // SAFETY: SIOCGIFFLAGS fills the `ifru_flags` member of the union.
        let flags = unsafe { ifr.ifr_ifru.ifru_flags };
        Ok(libc::c_int::from(flags) & libc::IFF_UP != 0)
    }
}

/// Checks `name` the way the kernel's `dev_valid_name` does, plus `%`
/// (the kernel would treat it as a `%d` template and pick another name).
fn validate_name(name: &str) -> Result<(), TunError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("\".\" and \"..\" are reserved")
    } else if name.contains('/') {
        Some("contains '/'")
    } else if name.contains(':') {
        Some("contains ':' (reserved for interface aliases)")
    } else if name.contains('%') {
        Some("contains '%' (a kernel name template)")
    } else if name.chars().any(|c| c.is_whitespace() || c == '\0') {
        Some("contains whitespace or NUL")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(TunError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Turns on checksum, TSO and (where the kernel has it) USO offload. The
/// setting belongs to the device, so one queue's fd is enough.
fn set_offload(queue: &OwnedFd) -> io::Result<Offload> {
    use super::offload::{TUN_OFFLOADS, TUN_OFFLOADS_NO_USO};
    let set = |flags: libc::c_uint| {
        // SAFETY: TUNSETOFFLOAD takes its flags as the integer argument
        // itself; no memory is passed.
        sys::cvt(unsafe {
            libc::ioctl(
                queue.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        })
    };
    match set(TUN_OFFLOADS) {
        Ok(_) => Ok(Offload {
            tso: true,
            uso: true,
        }),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => match set(TUN_OFFLOADS_NO_USO) {
            Ok(_) => Ok(Offload {
                tso: true,
                uso: false,
            }),
            // No offload at all: every read is one packet, every write
            // one packet, each behind a virtio-net header all the same.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(Offload {
                tso: false,
                uso: false,
            }),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// Opens /dev/net/tun and binds the fd to queue of `name` with `flags`.
fn open_queue(name: &str, flags: libc::c_int) -> Result<OwnedFd, TunError> {
    const PATH: &std::ffi::CStr = c"/dev/net/tun";
    // SAFETY: PATH is a valid NUL-terminated string; plain syscall.
    let raw = unsafe {
        libc::open(
            PATH.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    let fd = match sys::cvt(raw) {
        // SAFETY: `raw` was just returned by open(2) and is owned by nobody
        // else.
        Ok(_) => unsafe { OwnedFd::from_raw_fd(raw) },
        Err(e) => {
            return Err(match e.raw_os_error() {
                Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) => TunError::TunMissing,
                Some(libc::EPERM | libc::EACCES) => TunError::PermissionDenied(name.to_owned()),
                _ => TunError::Io {
                    op: "open /dev/net/tun",
                    name: name.to_owned(),
                    source: e,
                },
            })
        }
    };

    let mut ifr = sys::ifreq(name);
    // ifr_flags is a C short; IFF_TUN_EXCL (0x8000) is its sign bit, which
    // is what the kernel reads back out of it.
    ifr.ifr_ifru.ifru_flags = flags as u16 as libc::c_short;
    match sys::ioctl_ifreq(fd.as_fd(), libc::TUNSETIFF, &mut ifr) {
        Ok(()) => Ok(fd),
        Err(e) => Err(match e.raw_os_error() {
            // EBUSY: IFF_TUN_EXCL and the name exists. EINVAL: the name is
            // a non-TUN device or a TUN without multi-queue (the name itself
            // was validated). EEXIST: lost a creation race.
            Some(libc::EBUSY | libc::EINVAL | libc::EEXIST) => {
                TunError::AlreadyExists(name.to_owned())
            }
            Some(libc::EPERM | libc::EACCES) => TunError::PermissionDenied(name.to_owned()),
            _ => TunError::Io {
                op: "TUNSETIFF",
                name: name.to_owned(),
                source: e,
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel semantics `create` guards against: TUNSETIFF on an
    /// existing multi-queue TUN attaches a new queue (even while another
    /// process holds queues of it), unless IFF_TUN_EXCL is set.
    #[test]
    fn tunsetiff_attaches_unless_excl() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping tunsetiff_attaches_unless_excl: needs root");
            return;
        }
        let name = format!("cwu{}x", std::process::id());
        let owner = open_queue(&name, QUEUE_FLAGS | libc::IFF_TUN_EXCL).unwrap();
        let index = sys::if_nametoindex(&name).unwrap();

        let intruder = open_queue(&name, QUEUE_FLAGS).unwrap();
        assert_eq!(
            sys::if_nametoindex(&name),
            Some(index),
            "attached, not created"
        );
        let err = open_queue(&name, QUEUE_FLAGS | libc::IFF_TUN_EXCL).unwrap_err();
        assert!(matches!(err, TunError::AlreadyExists(_)), "{err:?}");
        // Without IFF_MULTI_QUEUE the kernel says EINVAL: also "exists".
        let err = open_queue(&name, libc::IFF_TUN | libc::IFF_NO_PI).unwrap_err();
        assert!(matches!(err, TunError::AlreadyExists(_)), "{err:?}");

        // The device lives while any queue is open.
        drop(owner);
        assert_eq!(sys::if_nametoindex(&name), Some(index));
        drop(intruder);
        // Bounded wait: a fork in a parallel test can hold the file briefly.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while sys::if_nametoindex(&name).is_some() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(sys::if_nametoindex(&name), None);
    }

    #[test]
    fn names() {
        for ok in ["wg0", "a", "corewire-15byte", "wg.0", "wg_1-x"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            "a\tb",
            "a:1",
            "wg%d",
            "a\0b",
            "sixteen-bytes-xx",
        ] {
            assert!(
                matches!(validate_name(bad), Err(TunError::InvalidName { .. })),
                "{bad:?}"
            );
        }
    }
}
