//! Watching our TUN link through rtnetlink.
//!
//! Two things happen to the link behind the daemon's back, and both matter:
//! wg-quick sets the MTU right after launching the daemon (`ip link set mtu
//! ... up`), and `wg-quick down` deletes the link (`ip link del`), after
//! which the daemon must exit. [`LinkMonitor`] subscribes to `RTMGRP_LINK`
//! and turns the kernel's link messages for one ifindex into
//! [`LinkEvent`]s.
//!
//! The kernel sends `RTM_NEWLINK` for every change to a link (flags,
//! carrier, statistics, ...), so events are reported only when the value we
//! care about differs from the last one seen. To not miss a change made
//! before the monitor existed, [`LinkMonitor::new`] also asks for the link's
//! current state; and when the socket overflows (ENOBUFS, lost messages on
//! a busy host) it asks again, so the reported state always converges.
//!
//! Parsing is bounds-checked throughout: a malformed or truncated message
//! is skipped, never a panic.

use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use super::sys;

/// A change to the watched link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEvent {
    /// The MTU is now this (also reported once for the initial state).
    Mtu(u32),
    /// The link is administratively up (`IFF_UP`).
    Up,
    /// The link is administratively down.
    Down,
    /// The link was deleted (or moved to another network namespace).
    Deleted,
}

// Wire layout (linux/netlink.h, linux/rtnetlink.h); spelled out here
// because parsing is done on plain bytes.
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const IFINFOMSG_LEN: usize = 16;
const RTA_HDRLEN: usize = 4;
const IFLA_MTU: u16 = 4;
/// Strips NLA_F_NESTED and NLA_F_NET_BYTEORDER from an attribute type.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// Receive buffer: one `recv` returns one datagram holding one or more
/// messages; link messages with all their attributes are a few KiB.
const RECV_BUF_LEN: usize = 64 * 1024;

/// Sequence number of our own `RTM_GETLINK` requests.
const QUERY_SEQ: u32 = 0x636f_7265; // "core"

/// Watches one link (by ifindex) for MTU, up/down and deletion.
#[derive(Debug)]
pub struct LinkMonitor {
    fd: OwnedFd,
    state: LinkState,
    buf: Vec<u8>,
}

/// What has been reported so far; the pure parsing state.
#[derive(Debug, Default)]
struct LinkState {
    ifindex: u32,
    mtu: Option<u32>,
    up: Option<bool>,
    deleted: bool,
}

impl LinkMonitor {
    /// Opens a nonblocking, close-on-exec `NETLINK_ROUTE` socket subscribed
    /// to link notifications and requests the link's current state, which
    /// the first [`poll_events`](Self::poll_events) reports.
    pub fn new(ifindex: u32) -> io::Result<LinkMonitor> {
        let fd = sys::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE)?;
        // Best effort: a larger buffer means fewer overflows on hosts with
        // many links; ENOBUFS is handled anyway.
        let _ = sys::setsockopt_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, 1 << 20);

        // SAFETY: sockaddr_nl is plain integers; all-zero is valid.
        let mut sa: libc::sockaddr_nl = unsafe { mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        sa.nl_groups = libc::RTMGRP_LINK as u32;
        // SAFETY: pointer and length describe `sa`, a live sockaddr_nl.
        sys::cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        })?;

        let monitor = LinkMonitor {
            fd,
            state: LinkState {
                ifindex,
                ..LinkState::default()
            },
            buf: vec![0; RECV_BUF_LEN],
        };
        monitor.request_link()?;
        Ok(monitor)
    }

    /// The netlink socket, to poll for readability.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The watched ifindex.
    pub fn ifindex(&self) -> u32 {
        self.state.ifindex
    }

    /// Reads every pending message without blocking and returns the events
    /// for our link, oldest first (empty if nothing changed). After
    /// [`LinkEvent::Deleted`] nothing more is reported.
    pub fn poll_events(&mut self) -> io::Result<Vec<LinkEvent>> {
        let mut events = Vec::new();
        let mut overflowed = false;
        loop {
            // SAFETY: sockaddr_nl is plain integers; all-zero is valid.
            let mut from: libc::sockaddr_nl = unsafe { mem::zeroed() };
            let mut from_len = mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
            let buf = &mut self.buf;
            let n = sys::retry_eintr(|| {
                // SAFETY: the buffer pointer and length describe `buf`; the
                // address pointer and length describe `from`.
                let n = unsafe {
                    libc::recvfrom(
                        self.fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        (&mut from as *mut libc::sockaddr_nl).cast(),
                        &mut from_len,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match n {
                Ok(n) => {
                    // Only the kernel (port id 0) speaks for the links; a
                    // datagram from another process is ignored.
                    if from.nl_pid == 0 {
                        self.state
                            .parse(&self.buf[..n.min(self.buf.len())], &mut events);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => overflowed = true,
                Err(e) => return Err(e),
            }
        }
        if overflowed && !self.state.deleted {
            // Messages were dropped: ask for the current state; its answer
            // arrives with the next poll.
            self.request_link()?;
        }
        Ok(events)
    }

    /// Sends `RTM_GETLINK` for our ifindex. The answer is an `RTM_NEWLINK`,
    /// or an `NLMSG_ERROR` with ENODEV if the link is gone.
    fn request_link(&self) -> io::Result<()> {
        let msg = getlink_request(self.state.ifindex);
        // SAFETY: sockaddr_nl is plain integers; all-zero is valid.
        let mut to: libc::sockaddr_nl = unsafe { mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        sys::retry_eintr(|| {
            // SAFETY: the buffer pointer and length describe `msg`; the
            // address pointer and length describe `to`.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    msg.as_ptr().cast(),
                    msg.len(),
                    0,
                    (&to as *const libc::sockaddr_nl).cast(),
                    mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        })
    }
}

impl AsFd for LinkMonitor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for LinkMonitor {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// An `RTM_GETLINK` request for one ifindex: nlmsghdr + ifinfomsg.
fn getlink_request(ifindex: u32) -> [u8; NLMSG_HDRLEN + IFINFOMSG_LEN] {
    const LEN: usize = NLMSG_HDRLEN + IFINFOMSG_LEN;
    let mut m = [0u8; LEN];
    m[0..4].copy_from_slice(&(LEN as u32).to_ne_bytes());
    m[4..6].copy_from_slice(&libc::RTM_GETLINK.to_ne_bytes());
    m[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m[8..12].copy_from_slice(&QUERY_SEQ.to_ne_bytes());
    // nlmsg_pid 0: the kernel fills in our port id. ifinfomsg: family
    // AF_UNSPEC, then ifi_index at offset 4.
    m[NLMSG_HDRLEN + 4..NLMSG_HDRLEN + 8].copy_from_slice(&ifindex.to_ne_bytes());
    m
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Netlink's 4-byte alignment, saturating instead of overflowing.
fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

impl LinkState {
    /// Parses one datagram (any number of messages), appending events.
    fn parse(&mut self, mut buf: &[u8], events: &mut Vec<LinkEvent>) {
        while buf.len() >= NLMSG_HDRLEN && !self.deleted {
            let (Some(len), Some(ty), Some(seq)) = (u32_at(buf, 0), u16_at(buf, 4), u32_at(buf, 8))
            else {
                return;
            };
            let len = len as usize;
            if len < NLMSG_HDRLEN || len > buf.len() {
                // Corrupt length: the rest of the datagram cannot be framed.
                return;
            }
            let payload = &buf[NLMSG_HDRLEN..len];
            let gone = match ty {
                libc::RTM_NEWLINK => {
                    self.on_newlink(payload, events);
                    false
                }
                libc::RTM_DELLINK => ifi_index(payload) == Some(self.ifindex),
                // nlmsgerr: a negative errno (0 is an ACK), then the
                // request's header. ENODEV answering our own query means the
                // link is gone.
                NLMSG_ERROR => {
                    seq == QUERY_SEQ && u32_at(payload, 0) == Some((-libc::ENODEV) as u32)
                }
                // NLMSG_NOOP, NLMSG_DONE and anything else: nothing to learn.
                _ => false,
            };
            if gone {
                self.deleted = true;
                events.push(LinkEvent::Deleted);
            }
            buf = buf.get(align4(len)..).unwrap_or(&[]);
        }
    }

    fn on_newlink(&mut self, payload: &[u8], events: &mut Vec<LinkEvent>) {
        if ifi_index(payload) != Some(self.ifindex) {
            return;
        }
        // ifinfomsg: family u8, pad u8, type u16, index i32, flags u32,
        // change u32.
        if let Some(flags) = u32_at(payload, 8) {
            let up = flags & libc::IFF_UP as u32 != 0;
            if self.up != Some(up) {
                self.up = Some(up);
                events.push(if up { LinkEvent::Up } else { LinkEvent::Down });
            }
        }
        if let Some(mtu) = find_attr(payload.get(IFINFOMSG_LEN..).unwrap_or(&[]), IFLA_MTU)
            .and_then(|v| u32_at(v, 0))
        {
            if self.mtu != Some(mtu) {
                self.mtu = Some(mtu);
                events.push(LinkEvent::Mtu(mtu));
            }
        }
    }
}

/// `ifi_index` of an ifinfomsg payload.
fn ifi_index(payload: &[u8]) -> Option<u32> {
    if payload.len() < IFINFOMSG_LEN {
        return None;
    }
    u32_at(payload, 4)
}

/// The value of the first top-level attribute of type `ty`.
fn find_attr(mut attrs: &[u8], ty: u16) -> Option<&[u8]> {
    while attrs.len() >= RTA_HDRLEN {
        let len = usize::from(u16_at(attrs, 0)?);
        let this = u16_at(attrs, 2)? & NLA_TYPE_MASK;
        if len < RTA_HDRLEN || len > attrs.len() {
            return None;
        }
        if this == ty {
            return Some(&attrs[RTA_HDRLEN..len]);
        }
        attrs = attrs.get(align4(len)..).unwrap_or(&[]);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link message: header, ifinfomsg, then `attrs` as (type, value).
    fn link_msg(ty: u16, ifindex: u32, flags: u32, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut m = vec![0u8; NLMSG_HDRLEN + IFINFOMSG_LEN];
        m[4..6].copy_from_slice(&ty.to_ne_bytes());
        m[NLMSG_HDRLEN + 4..NLMSG_HDRLEN + 8].copy_from_slice(&ifindex.to_ne_bytes());
        m[NLMSG_HDRLEN + 8..NLMSG_HDRLEN + 12].copy_from_slice(&flags.to_ne_bytes());
        for (t, v) in attrs {
            let len = (RTA_HDRLEN + v.len()) as u16;
            m.extend_from_slice(&len.to_ne_bytes());
            m.extend_from_slice(&t.to_ne_bytes());
            m.extend_from_slice(v);
            m.resize(align4(m.len()), 0);
        }
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        m
    }

    fn state(ifindex: u32) -> LinkState {
        LinkState {
            ifindex,
            ..LinkState::default()
        }
    }

    #[test]
    fn reports_changes_only() {
        let mut s = state(7);
        let mut ev = Vec::new();
        let name: &[u8] = b"wg0\0";
        let mut dgram = link_msg(
            libc::RTM_NEWLINK,
            7,
            0,
            &[(3, name), (IFLA_MTU, &1420u32.to_ne_bytes())],
        );
        dgram.extend(link_msg(
            libc::RTM_NEWLINK,
            7,
            0,
            &[(IFLA_MTU, &1420u32.to_ne_bytes())],
        ));
        dgram.extend(link_msg(
            libc::RTM_NEWLINK,
            8,
            1,
            &[(IFLA_MTU, &9000u32.to_ne_bytes())],
        ));
        dgram.extend(link_msg(
            libc::RTM_NEWLINK,
            7,
            1,
            &[(IFLA_MTU, &1380u32.to_ne_bytes())],
        ));
        s.parse(&dgram, &mut ev);
        assert_eq!(
            ev,
            [
                LinkEvent::Down,
                LinkEvent::Mtu(1420),
                LinkEvent::Up,
                LinkEvent::Mtu(1380)
            ]
        );
    }

    #[test]
    fn deletion_by_dellink_or_enodev() {
        let mut s = state(7);
        let mut ev = Vec::new();
        s.parse(&link_msg(libc::RTM_DELLINK, 8, 0, &[]), &mut ev);
        assert!(ev.is_empty());
        let mut dgram = link_msg(libc::RTM_DELLINK, 7, 0, &[]);
        dgram.extend(link_msg(libc::RTM_NEWLINK, 7, 1, &[]));
        s.parse(&dgram, &mut ev);
        assert_eq!(ev, [LinkEvent::Deleted]);

        let mut s = state(7);
        let mut err = vec![0u8; NLMSG_HDRLEN + 4 + NLMSG_HDRLEN];
        let err_len = err.len() as u32;
        err[0..4].copy_from_slice(&err_len.to_ne_bytes());
        err[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err[8..12].copy_from_slice(&QUERY_SEQ.to_ne_bytes());
        err[16..20].copy_from_slice(&(-libc::ENODEV).to_ne_bytes());
        let mut ev = Vec::new();
        s.parse(&err, &mut ev);
        assert_eq!(ev, [LinkEvent::Deleted]);
    }

    #[test]
    fn malformed_input_is_ignored() {
        let good = link_msg(
            libc::RTM_NEWLINK,
            7,
            1,
            &[(IFLA_MTU, &1280u32.to_ne_bytes())],
        );
        // Every truncation, and a few corrupt lengths.
        for cut in 0..good.len() {
            let mut s = state(7);
            s.parse(&good[..cut], &mut Vec::new());
        }
        for bad_len in [0u32, 1, 15, 17, u32::MAX] {
            let mut m = good.clone();
            m[0..4].copy_from_slice(&bad_len.to_ne_bytes());
            state(7).parse(&m, &mut Vec::new());
        }
        // A zero-length attribute must not loop forever.
        let mut m = good.clone();
        m[NLMSG_HDRLEN + IFINFOMSG_LEN..NLMSG_HDRLEN + IFINFOMSG_LEN + 2]
            .copy_from_slice(&0u16.to_ne_bytes());
        let mut ev = Vec::new();
        state(7).parse(&m, &mut ev);
        assert_eq!(ev, [LinkEvent::Up]);
        // A short MTU attribute is skipped.
        let m = link_msg(libc::RTM_NEWLINK, 7, 0, &[(IFLA_MTU, &[1, 2])]);
        let mut ev = Vec::new();
        state(7).parse(&m, &mut ev);
        assert_eq!(ev, [LinkEvent::Down]);
    }

    #[test]
    fn getlink_request_layout() {
        let m = getlink_request(42);
        assert_eq!(u32_at(&m, 0), Some(32));
        assert_eq!(u16_at(&m, 4), Some(libc::RTM_GETLINK));
        assert_eq!(ifi_index(&m[NLMSG_HDRLEN..]), Some(42));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            state(7).parse(&bytes, &mut Vec::new());
        }
    }
}
