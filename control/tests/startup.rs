//! How the daemon starts under a supervisor and when the kernel refuses it:
//! under a `Type=notify` unit it says `READY=1` only once the interface and
//! its UAPI socket exist (and `STOPPING=1` when it leaves); with io_uring
//! denied (as Docker's default seccomp profile does) the launcher exits
//! non-zero with one line that names io_uring, instead of leaving wg-quick
//! to fail at its next step.
//!
//! Needs root (each daemon runs in a namespace of its own);
//! `COREWIRE_SKIP_NETNS=1` skips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod netns;

use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use corewire_testkit::names::temp_path;
use corewire_testkit::process::Proc;
use netns::{unique_ifname, Netns, WgImpl, WgStart};

/// The socket a `Type=notify` unit's daemon reports to, as systemd makes
/// it: a datagram socket whose path is in `NOTIFY_SOCKET`.
struct FakeSystemd {
    socket: UnixDatagram,
    path: std::path::PathBuf,
}

impl FakeSystemd {
    fn new() -> Self {
        let path = temp_path("notify", "sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        Self { socket, path }
    }

    /// The next notification, or `None` after 15 s.
    fn next(&self) -> Option<String> {
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

impl Drop for FakeSystemd {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn ready_is_notified_once_the_uapi_socket_exists() {
    let test = "ready_is_notified_once_the_uapi_socket_exists";
    if !netns::enabled(test) {
        return;
    }
    let ns = Netns::new("st");
    let ifname = unique_ifname("cw");
    let systemd = FakeSystemd::new();
    let notify = systemd.path.to_str().unwrap();
    let binary = WgImpl::Corewire.binary();
    let mut daemon = ns.spawn(
        &binary,
        &["--foreground", &ifname],
        &[("NOTIFY_SOCKET", notify)],
    );
    let uapi = Path::new("/var/run/wireguard").join(format!("{ifname}.sock"));

    let ready = systemd.next().expect("READY=1 within 15 s");
    let exists = uapi.exists();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(
        ready
            .lines()
            .any(|l| l == format!("MAINPID={}", daemon.pid())),
        "{ready:?}"
    );
    assert!(exists, "READY=1 came before {} existed", uapi.display());
    assert!(ns.link_exists(&ifname));

    let status = daemon.stop().expect("the daemon stops on SIGTERM");
    assert!(status.success(), "{status:?}: {}", daemon.log_tail(20));
    let stopping = systemd.next().expect("STOPPING=1");
    assert_eq!(stopping, "STOPPING=1");
}

/// A seccomp filter that makes `io_uring_setup` fail with EPERM, as
/// Docker's default profile does; installed in the child before it execs
/// (`ip netns exec`, and corewire after it, inherit it).
fn deny_io_uring() -> std::io::Result<()> {
    const IO_URING_SETUP: u32 = 425; // the same number on every architecture
    let filter = [
        // A = the syscall number
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
        // if A == io_uring_setup: fall through to EPERM, else skip to ALLOW
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: IO_URING_SETUP,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: plain prctl calls in the forked child; `prog` points to the
    // filter above, which the kernel copies.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[test]
fn io_uring_denied_fails_the_launch_with_a_message() {
    let test = "io_uring_denied_fails_the_launch_with_a_message";
    if !netns::enabled(test) {
        return;
    }
    let ns = Netns::new("st");
    let ifname = unique_ifname("cw");
    let binary = WgImpl::Corewire.binary();
    // As wg-quick launches it: no -f, the launcher waits for the daemon.
    let mut cmd = ns.command(&binary, &[&ifname]);
    // SAFETY: deny_io_uring only makes async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(deny_io_uring);
    }
    let log = temp_path("startup", "log");
    let mut launcher = Proc::spawn_to(cmd, "corewire (io_uring denied)", &log, &log).unwrap();
    let status = launcher
        .wait_exit(Duration::from_secs(20))
        .expect("the launcher returns");
    let out = launcher.log();
    let _ = std::fs::remove_file(&log);
    assert!(!status.success(), "exit status {status:?}; output: {out}");
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {out}");
    assert!(
        lines[0].contains("io_uring is not available") && lines[0].contains("seccomp"),
        "names io_uring and what to do: {out}"
    );
    // Nothing is left behind: no daemon, no interface, no socket.
    std::thread::sleep(Duration::from_millis(200));
    assert!(ns.pids().is_empty(), "processes left: {:?}", ns.pids());
    assert!(!ns.link_exists(&ifname));
    assert!(!Path::new("/var/run/wireguard")
        .join(format!("{ifname}.sock"))
        .exists());
}
