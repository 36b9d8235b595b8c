//! Small syscall helpers shared by [`tun`](super::tun), [`udp`](super::udp)
//! and [`netlink`](super::netlink).
//!
//! Each helper wraps exactly one libc call, turns the C error convention into
//! `io::Result`, and owns the only `unsafe` needed for it, so the modules
//! above stay mostly safe code.

use std::ffi::CString;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Turns a `-1 means errno` return value into an `io::Result`.
pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Runs a syscall again while it fails with EINTR.
pub(crate) fn retry_eintr<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// `socket(2)` with `SOCK_NONBLOCK | SOCK_CLOEXEC` always added: every fd
/// this crate creates is polled (never blocks a worker) and must not leak
/// into processes the daemon spawns.
pub(crate) fn socket(
    domain: libc::c_int,
    ty: libc::c_int,
    protocol: libc::c_int,
) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = cvt(unsafe {
        libc::socket(
            domain,
            ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            protocol,
        )
    })?;
    // SAFETY: `fd` was just returned by socket(2), is valid and owned by
    // nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `setsockopt(2)` with an `int` value.
pub(crate) fn setsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the pointer and length describe `value`, a live c_int.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// The index of the interface called `name`, or `None` if there is none.
///
/// `name` must not contain NUL (callers validate interface names first).
pub(crate) fn if_nametoindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

/// An all-zero `ifreq` carrying `name` (at most `IFNAMSIZ - 1` bytes, so
/// the kernel always sees a terminating NUL).
pub(crate) fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data (integers, arrays and a union of
    // them); all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { mem::zeroed() };
    for (dst, &src) in ifr
        .ifr_name
        .iter_mut()
        .take(libc::IFNAMSIZ - 1)
        .zip(name.as_bytes())
    {
        *dst = src as libc::c_char;
    }
    ifr
}

/// `ioctl(2)` whose argument is an `ifreq` (TUNSETIFF, SIOCGIFMTU, ...).
pub(crate) fn ioctl_ifreq(
    fd: BorrowedFd<'_>,
    request: libc::Ioctl,
    ifr: &mut libc::ifreq,
) -> io::Result<()> {
    // SAFETY: every request passed here takes a `struct ifreq *`; `ifr` is
    // a live, exclusively borrowed ifreq for the duration of the call.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), request, ifr as *mut libc::ifreq) }).map(drop)
}
