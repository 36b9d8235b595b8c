//! The engine's system layer against the real kernel: TUN devices
//! (`engine::tun`), UDP socket groups (`engine::udp`) and link monitoring
//! (`engine::netlink`).
//!
//! The TUN, netlink and fwmark tests create real interfaces in the current
//! network namespace or set privileged options, so they need root (CI runs
//! as root) and skip with a message otherwise; the plain UDP tests run
//! unprivileged too.
//! Interface names are `cwt<pid><tag>`, unique per test and run, and a
//! [`LinkGuard`] deletes the interface when a test ends, also on failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::process::Command;
use std::time::{Duration, Instant};

use corewire_dataplane::engine::config::ApplyError;
use corewire_dataplane::engine::netlink::{LinkEvent, LinkMonitor};
use corewire_dataplane::engine::tun::{Tun, TunError, DEFAULT_MTU};
use corewire_dataplane::engine::udp::{BindError, SockAddrBuf, UdpGroup};

/// True if running as root; otherwise prints why the test is skipped.
fn is_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipping {test}: needs root (CAP_NET_ADMIN)");
    }
    root
}

/// A unique interface name for this process and test (at most 15 bytes).
fn ifname(tag: &str) -> String {
    let name = format!("cwt{}{tag}", std::process::id());
    assert!(name.len() <= 15, "{name} too long");
    name
}

fn link_exists(name: &str) -> bool {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: `c` is a valid C string for the duration of the call.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

/// Waits (up to 2 s) for the interface to disappear.
///
/// Closing the last queue fd unregisters a TUN device inside close(2), but
/// only if that fd held the last reference to the open file: a `fork` in
/// another thread (here: the `ip` commands of tests running in parallel)
/// holds a copy of every fd, close-on-exec or not, until the child execs.
fn gone_soon(name: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while link_exists(name) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Runs `ip ARGS`, returning its stdout, or an error with its stderr.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Deletes the interface on drop if it still exists. Declare it before the
/// `Tun` so that the `Tun` is dropped (and the device gone) first.
struct LinkGuard(String);

impl Drop for LinkGuard {
    fn drop(&mut self) {
        if link_exists(&self.0) {
            let _ = ip(&["link", "del", "dev", &self.0]);
        }
    }
}

/// Waits until one of `fds` is readable; returns its index.
fn wait_readable(fds: &[BorrowedFd<'_>], timeout: Duration) -> Option<usize> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `pfds` is a live array of `pfds.len()` pollfds.
    let n = unsafe {
        libc::poll(
            pfds.as_mut_ptr(),
            pfds.len() as libc::nfds_t,
            timeout.as_millis() as i32,
        )
    };
    if n <= 0 {
        return None;
    }
    pfds.iter().position(|p| p.revents & libc::POLLIN != 0)
}

fn getsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int) -> libc::c_int {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: pointer and length describe `v`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0, "getsockopt: {}", io::Error::last_os_error());
    v
}

fn fd_flags(fd: RawFd) -> (bool, bool) {
    // SAFETY: fcntl queries on a valid fd.
    let (fl, fdfl) = unsafe {
        (
            libc::fcntl(fd, libc::F_GETFL),
            libc::fcntl(fd, libc::F_GETFD),
        )
    };
    (fl & libc::O_NONBLOCK != 0, fdfl & libc::FD_CLOEXEC != 0)
}

fn local_addr(fd: RawFd) -> SocketAddr {
    let mut buf = SockAddrBuf::new();
    // SAFETY: `buf` provides the storage and its length.
    let r = unsafe { libc::getsockname(fd, buf.as_mut_ptr(), buf.len_mut()) };
    assert_eq!(r, 0);
    buf.to_socket_addr().unwrap()
}

/// Collects monitor events until `want` shows up or 2 s pass.
fn wait_event(mon: &mut LinkMonitor, want: LinkEvent) -> Vec<LinkEvent> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut seen = Vec::new();
    while !seen.contains(&want) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        wait_readable(&[mon.fd()], left);
        seen.extend(mon.poll_events().unwrap());
    }
    seen
}

#[test]
fn tun_lifecycle() {
    if !is_root("tun_lifecycle") {
        return;
    }
    let name = ifname("a");
    let _guard = LinkGuard(name.clone());
    let tun = Tun::create(&name, 2).unwrap();

    assert_eq!(tun.name(), name);
    assert!(tun.ifindex() > 0);
    assert_eq!(tun.queue_fds().len(), 2);
    for fd in tun.queue_fds() {
        assert_eq!(
            fd_flags(fd.as_raw_fd()),
            (true, true),
            "queues must be nonblocking + cloexec"
        );
    }
    let shown = ip(&["-d", "link", "show", "dev", &name]).unwrap();
    assert!(shown.contains(&name), "{shown}");
    assert!(shown.contains("multi_queue"), "{shown}");
    assert!(shown.contains("tun"), "{shown}");
    assert!(shown.contains("vnet_hdr on"), "{shown}");
    // Linux 6.2+ takes checksum, TSO and USO offload.
    assert_eq!(
        tun.offload(),
        corewire_dataplane::engine::tun::Offload {
            tso: true,
            uso: true
        }
    );

    assert_eq!(tun.mtu().unwrap(), DEFAULT_MTU);
    tun.set_mtu(1380).unwrap();
    assert_eq!(tun.mtu().unwrap(), 1380);
    assert!(ip(&["link", "show", "dev", &name])
        .unwrap()
        .contains("mtu 1380"));
    assert!(tun.set_mtu(10).is_err(), "below the IPv4 minimum");

    // Nonblocking: while the link is down nothing is queued (once up, the
    // kernel may send IPv6 MLD/RS packets into it), so a read would block.
    let mut buf = [0u8; 2048];
    // SAFETY: `buf` is a live writable buffer of the given length.
    let n = unsafe {
        libc::read(
            tun.queue_fds()[0].as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(n, -1);
    assert_eq!(
        io::Error::last_os_error().raw_os_error(),
        Some(libc::EAGAIN)
    );

    assert!(!tun.is_up().unwrap());
    ip(&["link", "set", "dev", &name, "up"]).unwrap();
    assert!(tun.is_up().unwrap());

    // A second device of the same name is refused, and does not disturb the
    // first.
    let err = Tun::create(&name, 2).unwrap_err();
    assert!(
        matches!(err, TunError::AlreadyExists(ref n) if *n == name),
        "{err:?}"
    );
    assert_eq!(err.to_string(), format!("interface {name} already exists"));
    assert_eq!(tun.mtu().unwrap(), 1380);

    // Non-persistent: releasing the last queue unregisters the device.
    drop(tun);
    assert!(gone_soon(&name), "interface survived its queues");
}

#[test]
fn tun_dropping_some_queue_dups_keeps_device() {
    if !is_root("tun_dropping_some_queue_dups_keeps_device") {
        return;
    }
    let name = ifname("b");
    let _guard = LinkGuard(name.clone());
    let tun = Tun::create(&name, 1).unwrap();
    let dup: OwnedFd = tun.queue_fds()[0].try_clone().unwrap();
    drop(tun);
    assert!(link_exists(&name), "a duplicated queue fd keeps the device");
    drop(dup);
    assert!(gone_soon(&name));
}

#[test]
fn tun_name_validation() {
    for bad in [
        "",
        ".",
        "..",
        "a/b",
        "a b",
        "tab\there",
        "wg%d",
        "wg0:1",
        "sixteen-bytes-xx",
    ] {
        let err = Tun::create(bad, 1).unwrap_err();
        assert!(
            matches!(err, TunError::InvalidName { .. }),
            "{bad:?}: {err:?}"
        );
    }
    assert!(matches!(
        Tun::create("cwtq", 0),
        Err(TunError::InvalidQueueCount(0))
    ));
    assert!(matches!(
        Tun::create("cwtq", 257),
        Err(TunError::InvalidQueueCount(257))
    ));
}

/// Whether the process has CAP_NET_ADMIN (bit 12 of CapEff).
fn has_net_admin() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 12) != 0)
}

/// The counterpart of the root-only tests: without the capability the
/// error says what to do. (Runs only unprivileged, e.g. a developer's
/// `cargo test`; CI runs as root and skips it.)
#[test]
fn tun_without_privilege_is_permission_denied() {
    if has_net_admin() {
        eprintln!("skipping tun_without_privilege_is_permission_denied: has CAP_NET_ADMIN");
        return;
    }
    let name = ifname("p");
    let _guard = LinkGuard(name.clone());
    match Tun::create(&name, 1) {
        Err(err @ TunError::PermissionDenied(_)) => assert_eq!(
            err.to_string(),
            format!("permission denied creating {name}: run as root or with CAP_NET_ADMIN")
        ),
        // A host without the driver says so instead; also fine here.
        Err(TunError::TunMissing) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn tun_refuses_existing_devices() {
    if !is_root("tun_refuses_existing_devices") {
        return;
    }
    // A persistent multi-queue TUN with no queue attached: TUNSETIFF alone
    // would attach to it. It must be refused.
    let name = ifname("c");
    let _guard = LinkGuard(name.clone());
    ip(&["tuntap", "add", "dev", &name, "mode", "tun", "multi_queue"]).unwrap();
    let err = Tun::create(&name, 2).unwrap_err();
    assert!(matches!(err, TunError::AlreadyExists(_)), "{err:?}");
    assert!(link_exists(&name), "the existing device is untouched");

    // A device of another kind.
    let name = ifname("d");
    let _guard = LinkGuard(name.clone());
    match ip(&["link", "add", "dev", &name, "type", "dummy"]) {
        Ok(_) => {
            let err = Tun::create(&name, 1).unwrap_err();
            assert!(matches!(err, TunError::AlreadyExists(_)), "{err:?}");
        }
        Err(e) => eprintln!("dummy links unavailable, part skipped: {e}"),
    }
}

#[test]
fn link_monitor_sees_mtu_up_and_delete() {
    if !is_root("link_monitor_sees_mtu_up_and_delete") {
        return;
    }
    let name = ifname("e");
    let _guard = LinkGuard(name.clone());
    let tun = Tun::create(&name, 2).unwrap();
    let mut mon = LinkMonitor::new(tun.ifindex()).unwrap();
    assert_eq!(mon.ifindex(), tun.ifindex());

    // The initial state is reported first.
    let seen = wait_event(&mut mon, LinkEvent::Mtu(DEFAULT_MTU));
    assert!(seen.contains(&LinkEvent::Mtu(DEFAULT_MTU)), "{seen:?}");
    assert!(seen.contains(&LinkEvent::Down), "{seen:?}");

    ip(&["link", "set", "dev", &name, "mtu", "1380"]).unwrap();
    let seen = wait_event(&mut mon, LinkEvent::Mtu(1380));
    assert_eq!(seen, [LinkEvent::Mtu(1380)]);

    ip(&["link", "set", "dev", &name, "up"]).unwrap();
    let seen = wait_event(&mut mon, LinkEvent::Up);
    assert_eq!(seen, [LinkEvent::Up]);

    // Nothing changed: no event.
    assert!(mon.poll_events().unwrap().is_empty());

    ip(&["link", "del", "dev", &name]).unwrap();
    let seen = wait_event(&mut mon, LinkEvent::Deleted);
    assert_eq!(seen.last(), Some(&LinkEvent::Deleted), "{seen:?}");
    assert!(gone_soon(&name));

    // The queues outlive the device; I/O on them now fails with EBADFD.
    let mut buf = [0u8; 64];
    // SAFETY: `buf` is a live writable buffer of the given length.
    let n = unsafe {
        libc::read(
            tun.queue_fds()[0].as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(n, -1);
    assert_eq!(
        io::Error::last_os_error().raw_os_error(),
        Some(libc::EBADFD)
    );
}

#[test]
fn link_monitor_reports_missing_link() {
    if !is_root("link_monitor_reports_missing_link") {
        return;
    }
    // An ifindex nobody has: the initial query answers ENODEV.
    let mut mon = LinkMonitor::new(0x7fff_fff0).unwrap();
    let seen = wait_event(&mut mon, LinkEvent::Deleted);
    assert_eq!(seen, [LinkEvent::Deleted]);
}

#[test]
fn udp_port_zero_shares_one_port() {
    // Needs no privilege.
    let group = UdpGroup::bind(0, 2, 0).unwrap();
    let port = group.port();
    assert_ne!(port, 0);
    assert_eq!(group.v4_fds().len(), 2);
    if group.ipv4_only() {
        eprintln!("host has no IPv6: checked IPv4 only");
        assert!(group.v6_fds().is_empty());
    } else {
        assert_eq!(group.v6_fds().len(), 2);
    }
    for fd in group.v4_fds().iter().chain(group.v6_fds()) {
        let raw = fd.as_raw_fd();
        let addr = local_addr(raw);
        assert_eq!(addr.port(), port);
        assert!(addr.ip().is_unspecified());
        assert_eq!(getsockopt_int(raw, libc::SOL_SOCKET, libc::SO_REUSEPORT), 1);
        assert_eq!(fd_flags(raw), (true, true));
        // With CAP_NET_ADMIN the buffer may exceed rmem_max (the kernel
        // doubles the value asked for); without, it is capped by the sysctl.
        if has_net_admin() {
            assert!(getsockopt_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUF) >= 8 << 20);
        }
    }
    for fd in group.v6_fds() {
        assert!(local_addr(fd.as_raw_fd()).is_ipv6());
        assert_eq!(
            getsockopt_int(fd.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY),
            1
        );
    }

    // The port is free again once the group is dropped.
    drop(group);
    let again = UdpGroup::bind(port, 1, 0).unwrap();
    assert_eq!(again.port(), port);
}

#[test]
fn udp_port_in_use() {
    // Needs no privilege.
    let holder = UdpSocket::bind("0.0.0.0:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let err = UdpGroup::bind(port, 2, 0).unwrap_err();
    assert!(
        matches!(err, BindError::AddressInUse(p) if p == port),
        "{err:?}"
    );
    assert_eq!(ApplyError::from(err), ApplyError::AddressInUse(port));

    // Held for IPv6 only, also refused (if the host has IPv6).
    if let Ok(holder6) = UdpSocket::bind("[::1]:0") {
        let port6 = holder6.local_addr().unwrap().port();
        let err = UdpGroup::bind(port6, 1, 0).unwrap_err();
        assert!(
            matches!(err, BindError::AddressInUse(p) if p == port6),
            "{err:?}"
        );
    }

    // Another group (a second daemon, same user, also SO_REUSEPORT) must not
    // silently join ours.
    let ours = UdpGroup::bind(0, 1, 0).unwrap();
    let err = UdpGroup::bind(ours.port(), 1, 0).unwrap_err();
    assert!(matches!(err, BindError::AddressInUse(_)), "{err:?}");
}

#[test]
fn udp_fwmark() {
    if !is_root("udp_fwmark") {
        return;
    }
    let marks = |g: &UdpGroup| -> Vec<u32> {
        g.v4_fds()
            .iter()
            .chain(g.v6_fds())
            .map(|fd| getsockopt_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_MARK) as u32)
            .collect()
    };
    let mut group = UdpGroup::bind(0, 2, 0).unwrap();
    assert!(marks(&group).iter().all(|&m| m == 0));
    group.set_fwmark(0x1234).unwrap();
    assert_eq!(group.fwmark(), 0x1234);
    assert!(
        marks(&group).iter().all(|&m| m == 0x1234),
        "{:x?}",
        marks(&group)
    );
    group.set_fwmark(0xffff_fff0).unwrap();
    assert!(marks(&group).iter().all(|&m| m == 0xffff_fff0));
    group.set_fwmark(0).unwrap();
    assert!(marks(&group).iter().all(|&m| m == 0));

    let marked = UdpGroup::bind(0, 1, 51820).unwrap();
    assert!(marks(&marked).iter().all(|&m| m == 51820));
}

/// Sends one datagram to `to` and checks it arrives on one of `fds` with
/// the sender's address.
fn check_delivery(fds: &[OwnedFd], sender: &UdpSocket, to: SocketAddr) {
    let payload = b"corewire sys test";
    sender.send_to(payload, to).unwrap();
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|fd| fd.as_fd()).collect();
    let i = wait_readable(&borrowed, Duration::from_secs(2)).expect("datagram did not arrive");

    let mut buf = [0u8; 256];
    let mut from = SockAddrBuf::new();
    // SAFETY: `buf` and `from` are live buffers with their lengths.
    let n = unsafe {
        libc::recvfrom(
            fds[i].as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            0,
            from.as_mut_ptr(),
            from.len_mut(),
        )
    };
    assert_eq!(n, payload.len() as isize, "{}", io::Error::last_os_error());
    assert_eq!(&buf[..payload.len()], payload);
    assert_eq!(from.to_socket_addr(), Some(sender.local_addr().unwrap()));
}

#[test]
fn udp_receives_datagrams() {
    // Needs no privilege.
    let group = UdpGroup::bind(0, 2, 0).unwrap();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    check_delivery(
        group.v4_fds(),
        &sender,
        SocketAddr::from(([127, 0, 0, 1], group.port())),
    );
    if !group.ipv4_only() {
        if let Ok(sender6) = UdpSocket::bind("[::1]:0") {
            let to: SocketAddr = format!("[::1]:{}", group.port()).parse().unwrap();
            check_delivery(group.v6_fds(), &sender6, to);
        }
    }
}

/// Sends `msg` from `sender` and returns which socket of `fds` got it
/// (reading it out).
fn receiver_of(fds: &[OwnedFd], sender: &UdpSocket, to: SocketAddr, msg: &[u8]) -> usize {
    sender.send_to(msg, to).unwrap();
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|fd| fd.as_fd()).collect();
    let i = wait_readable(&borrowed, Duration::from_secs(2)).expect("datagram did not arrive");
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is a live buffer of its length.
    let n = unsafe { libc::recv(fds[i].as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    assert_eq!(n, msg.len() as isize, "{}", io::Error::last_os_error());
    i
}

#[test]
fn udp_steering_puts_datagrams_on_their_owner() {
    // Needs no privilege. Four sockets: the index's low two bits name one.
    let group = UdpGroup::bind(0, 4, 0).unwrap();
    group.steer_to_owners(2).unwrap();
    let to = SocketAddr::from(([127, 0, 0, 1], group.port()));
    // Several senders, so the kernel's own hash would spread them.
    let senders: Vec<UdpSocket> = (0..8)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    for (n, sender) in senders.iter().enumerate() {
        for owner in 0..4u8 {
            // Random high bits: only the low two count.
            let index = u32::from(owner) | ((n as u32).wrapping_mul(0x9e37_79b9) << 2);
            let mut data = [0u8; 32];
            data[0] = 4;
            data[4..8].copy_from_slice(&index.to_le_bytes());
            assert_eq!(
                receiver_of(group.v4_fds(), sender, to, &data),
                usize::from(owner)
            );
            let mut cookie = [0u8; 64];
            cookie[0] = 3;
            cookie[4..8].copy_from_slice(&index.to_le_bytes());
            assert_eq!(
                receiver_of(group.v4_fds(), sender, to, &cookie),
                usize::from(owner)
            );
            let mut response = [0u8; 92];
            response[0] = 2;
            response[4..8].copy_from_slice(&0xffu32.to_le_bytes()); // sender index
            response[8..12].copy_from_slice(&index.to_le_bytes());
            assert_eq!(
                receiver_of(group.v4_fds(), sender, to, &response),
                usize::from(owner)
            );
        }
    }
    // Initiations and anything else go by the kernel's hash: all arrive,
    // and across the senders more than one socket gets them.
    let mut seen = std::collections::BTreeSet::new();
    for sender in &senders {
        let mut initiation = [0u8; 148];
        initiation[0] = 1;
        seen.insert(receiver_of(group.v4_fds(), sender, to, &initiation));
        receiver_of(group.v4_fds(), sender, to, b"x");
    }
    assert!(seen.len() > 1, "initiations all went to {seen:?}");
    if !group.ipv4_only() {
        if let Ok(sender6) = UdpSocket::bind("[::1]:0") {
            let to6: SocketAddr = format!("[::1]:{}", group.port()).parse().unwrap();
            let mut data = [0u8; 32];
            data[0] = 4;
            data[4] = 0xfe; // low bits 2
            assert_eq!(receiver_of(group.v6_fds(), &sender6, to6, &data), 2);
        }
    }
}
