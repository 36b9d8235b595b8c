//! Harness for corewire's real-network tests: network namespaces joined by
//! veth links, WireGuard implementations started inside them, and the real
//! `wg`, `wg-quick`, `ping` and `iperf3` run against them. Needs root;
//! scripts/test.sh installs every tool (Debian: wireguard-tools,
//! wireguard-go, iperf3, iproute2, iputils-ping; cargo: boringtun-cli and
//! gotatun-cli into ./.tools/bin).
//!
//! Cleanup. Every resource is a guard whose `Drop` removes it, also while a
//! failing test unwinds (no `Drop` here can panic, so a second panic never
//! aborts the run):
//! - [`Netns`] stops (by PID: SIGTERM, then SIGKILL after a bounded wait)
//!   every process still inside the namespace, then deletes it, which also
//!   deletes the veth and TUN links in it;
//! - [`Veth`] deletes its pair; [`Proc`] stops its child by PID;
//! - [`WgDevice`] stops its daemon by PID, deletes its link if the daemon
//!   left it, and removes a UAPI socket the daemon left behind;
//! - [`TempDir`] removes its directory.
//!
//! Declare the namespaces first, so they are dropped last. While a test
//! panics, each process guard prints the end of its log to stderr and keeps
//! the log file. A run killed outright (SIGKILL, so no `Drop`) leaves
//! namespaces behind; the next [`Netns::new`] deletes those that are older
//! than [`STALE_AFTER`] and whose creating process is gone.
//!
//! Parallel tests: cargo runs a file's tests on several threads. Names that
//! outlive a namespace or are seen from outside it are unique per process and
//! per call: namespace names, and interface names, because every
//! implementation puts its UAPI socket in the one /var/run/wireguard that all
//! namespaces share (same filesystem). The only global state is a counter.
//!
//! Every wait is bounded: commands run with a timeout and are killed after
//! it, and every poll loop has a deadline.
//!
//! Launch recipes (checked by hand on this machine, see [`WgImpl`]):
//! - wireguard-go: `wireguard-go -f IF` in the foreground; `wireguard-go IF`
//!   creates the TUN and the socket, re-executes itself in the background
//!   (with stdio on /dev/null unless LOG_LEVEL is set) and returns at once.
//!   Exits on SIGTERM (and removes its socket) and within ~200 ms when the
//!   link is deleted.
//! - boringtun-cli: needs `--disable-drop-privileges` or `WG_SUDO=true`
//!   (exactly `true`: clap rejects `1`) as root, or it fails with "NULL from
//!   getlogin"; `-f` for the foreground, otherwise it forks, returns once the
//!   device is up, and logs to WG_LOG_FILE (default /tmp/boringtun.out,
//!   shared, so set it). Exits on SIGTERM, on link deletion (~1 s), and when
//!   its socket is deleted (polled every few seconds).
//! - gotatun: same flags and env as boringtun (`WG_SUDO=1` works, it is
//!   clap 3); default log /tmp/gotatun.out. Exits on SIGTERM but leaves its
//!   socket behind, and does NOT exit when the link or the socket is
//!   deleted: after `wg-quick down` it keeps running. Setting the private
//!   key and then adding a peer in two quick `wg set`s sometimes kills it
//!   (see [`wg_set_private_key`]).

// A test support module: its helpers fail the test by panicking, outside
// `#[test]` functions where clippy's allow-unwrap-in-tests does not reach.
// Each test file uses a different subset of it.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where every userspace implementation puts `<ifname>.sock`.
pub const SOCKET_DIR: &str = "/var/run/wireguard";
/// Timeout for one short command (`ip`, `wg`, ...).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a process gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);
/// How long an implementation gets to create its TUN device and socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Leftover namespaces of a killed run are deleted once this old.
pub const STALE_AFTER: Duration = Duration::from_secs(600);

/// Every namespace this harness creates is named `cwt-<prefix>-<pid>-<n>-<unix time>`.
const NETNS_MARK: &str = "cwt-";

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

fn base36(mut n: u32) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(digits[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap()
}

/// `ip:port`, bracketed for IPv6.
pub fn socket_addr(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// Seconds since the Unix epoch (what `wg show dump` reports handshakes in).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh interface name, `<prefix><pid, 5 digits base 36><counter base 36>`:
/// unique among the tests of this run and of concurrent runs (other PIDs),
/// 8 to 10 characters for a 2-character prefix (Linux allows 15). Names whose UAPI
/// socket already exists are skipped.
pub fn unique_ifname(prefix: &str) -> String {
    for _ in 0..1000 {
        // The PID is padded to 5 digits (36^5 > pid_max) so that no two
        // (pid, counter) pairs give the same name.
        let name = format!(
            "{prefix}{:0>5}{}",
            base36(std::process::id()),
            base36(next_id())
        );
        assert!(name.len() <= 15, "interface name {name} is too long");
        if !socket_path(&name).exists() {
            return name;
        }
    }
    panic!("no free interface name with prefix {prefix}");
}

/// `/var/run/wireguard/<ifname>.sock`.
pub fn socket_path(ifname: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{ifname}.sock"))
}

/// Polls `condition` every `poll` until it holds (true) or `timeout` passes
/// (false). Checks once more at the deadline.
pub fn wait_until(timeout: Duration, poll: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        sleep(poll.min(deadline - now));
    }
}

/// Whether the netns tests should run: false (with a note) when
/// `COREWIRE_SKIP_NETNS=1`; panics when not root, since CI runs as root.
pub fn enabled(test: &str) -> bool {
    if std::env::var_os("COREWIRE_SKIP_NETNS").is_some_and(|v| v == "1") {
        eprintln!("{test}: skipped (COREWIRE_SKIP_NETNS=1)");
        return false;
    }
    assert!(
        effective_uid() == Some(0),
        "{test} creates network namespaces and needs root (set COREWIRE_SKIP_NETNS=1 to skip)"
    );
    assert!(
        Path::new("/dev/net/tun").exists(),
        "{test}: no /dev/net/tun, so no TUN devices (set COREWIRE_SKIP_NETNS=1 to skip)"
    );
    true
}

fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Prints how long a test took when dropped (also when it fails).
#[derive(Debug)]
pub struct Timed {
    name: String,
    start: Instant,
}

impl Timed {
    pub fn new(name: &str) -> Timed {
        Timed {
            name: name.to_owned(),
            start: Instant::now(),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        let outcome = if std::thread::panicking() {
            "FAILED"
        } else {
            "ok"
        };
        eprintln!(
            "[netns] {}: {outcome} in {:.1} s",
            self.name,
            self.start.elapsed().as_secs_f64()
        );
    }
}

// --- Running commands ------------------------------------------------------

/// Runs `cmd` to completion within `timeout`, killing it after. Output goes
/// through temporary files rather than pipes, so a daemon that inherits
/// stdout/stderr (wireguard-go with LOG_LEVEL set) cannot make us wait for it.
pub fn try_run(
    mut cmd: Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output, String> {
    let base = std::env::temp_dir().join(format!("cwt-out-{}-{}", std::process::id(), next_id()));
    let out_path = base.with_extension("stdout");
    let err_path = base.with_extension("stderr");
    let result = run_into(&mut cmd, stdin, timeout, &out_path, &err_path);
    let stdout = fs::read(&out_path).unwrap_or_default();
    let stderr = fs::read(&err_path).unwrap_or_default();
    let _ = fs::remove_file(&out_path);
    let _ = fs::remove_file(&err_path);
    match result {
        Ok(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        Err(e) => Err(format!(
            "{cmd:?}: {e}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        )),
    }
}

fn run_into(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
    out_path: &Path,
    err_path: &Path,
) -> Result<ExitStatus, String> {
    let out = File::create(out_path).map_err(|e| format!("create {}: {e}", out_path.display()))?;
    let err = File::create(err_path).map_err(|e| format!("create {}: {e}", err_path.display()))?;
    cmd.stdout(out).stderr(err);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // Small inputs only (keys): they fit in the pipe buffer.
        let _ = pipe.write_all(data);
    }
    wait_child(&mut child, timeout).ok_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        format!("still running after {timeout:?}; killed")
    })
}

/// Waits (bounded) for our own child to exit, reaping it.
fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => {
                sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(25));
            }
            _ => return None,
        }
    }
}

/// [`try_run`] that panics on a timeout.
pub fn run(cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    try_run(cmd, stdin, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `cmd`, panics unless it succeeds, returns its stdout.
pub fn run_ok(cmd: Command, stdin: Option<&[u8]>) -> String {
    let what = format!("{cmd:?}");
    let out = run(cmd, stdin, COMMAND_TIMEOUT);
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn command(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd
}

// --- Processes by PID ------------------------------------------------------

/// Alive and not a zombie. Daemons are reparented to PID 1, which may not
/// reap them (it does not in these containers), so they linger as zombies.
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Sends `signal` ("TERM", "KILL", ...) to one PID, with the shell's `kill`
/// builtin (always present, unlike procps' kill).
fn send_signal(pid: u32, signal: &str) {
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "kill -s \"$0\" \"$1\" 2>/dev/null",
        signal,
        &pid.to_string(),
    ]);
    let _ = try_run(cmd, None, Duration::from_secs(5));
}

/// Stops processes that are not our children (daemons): SIGTERM, up to
/// `grace` to exit, then SIGKILL and up to 2 s more. Returns the PIDs that
/// survived (stuck in the kernel).
pub fn stop_pids(pids: &[u32], grace: Duration) -> Vec<u32> {
    let alive: Vec<u32> = pids.iter().copied().filter(|&p| pid_alive(p)).collect();
    for &pid in &alive {
        send_signal(pid, "TERM");
    }
    let poll = Duration::from_millis(20);
    wait_until(grace, poll, || alive.iter().all(|&p| !pid_alive(p)));
    let stubborn: Vec<u32> = alive.into_iter().filter(|&p| pid_alive(p)).collect();
    for &pid in &stubborn {
        send_signal(pid, "KILL");
    }
    wait_until(Duration::from_secs(2), poll, || {
        stubborn.iter().all(|&p| !pid_alive(p))
    });
    stubborn.into_iter().filter(|&p| pid_alive(p)).collect()
}

/// Where a process's file descriptor points (`/dev/null`, `pipe:[..]`, a
/// log file): to check that a daemon detached its stdio.
pub fn fd_target(pid: u32, fd: u32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()
}

/// The command line of a process, split at NULs.
pub fn cmdline(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

// --- Namespaces ------------------------------------------------------------

/// A network namespace owned by the test, with `lo` up. Dropping it stops
/// every process still inside (by PID) and deletes it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `cwt-<prefix>-<pid>-<n>-<unix time>`.
    pub fn new(prefix: &str) -> Netns {
        sweep_stale_namespaces();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let name = format!(
            "{NETNS_MARK}{prefix}-{}-{}-{now}",
            std::process::id(),
            next_id()
        );
        run_ok(command("ip", &["netns", "add", &name]), None);
        let ns = Netns { name };
        ns.ip_ok(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A `Command` for `ip netns exec <ns> program args...`. `ip netns exec`
    /// execs the program, so the child's PID is the program's.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Command {
        let mut cmd = command("ip", &["netns", "exec", &self.name]);
        cmd.arg(program).args(args);
        cmd
    }

    /// Runs a program in the namespace (bounded by [`COMMAND_TIMEOUT`]).
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        run(self.command(program, args), None, COMMAND_TIMEOUT)
    }

    /// [`Netns::exec`] that panics unless the program succeeds; returns stdout.
    pub fn exec_ok(&self, program: &str, args: &[&str]) -> String {
        run_ok(self.command(program, args), None)
    }

    /// `ip -n <ns> args...` (cheaper than `ip netns exec`: no mount namespace).
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut cmd = command("ip", &["-n", &self.name]);
        cmd.args(args);
        run(cmd, None, COMMAND_TIMEOUT)
    }

    pub fn ip_ok(&self, args: &[&str]) -> String {
        let mut cmd = command("ip", &["-n", &self.name]);
        cmd.args(args);
        run_ok(cmd, None)
    }

    /// Starts a long-running program in the namespace; stdout and stderr go
    /// to a log file. The guard stops it by PID.
    pub fn spawn(
        &self,
        program: impl AsRef<std::ffi::OsStr>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Proc {
        let program = program.as_ref().to_owned();
        let what = format!("{} {}", program.to_string_lossy(), args.join(" "));
        let mut cmd = self.command(&program, args);
        cmd.envs(env.iter().copied());
        Proc::spawn(cmd, &what)
    }

    /// PIDs of the (non-zombie) processes inside the namespace.
    pub fn pids(&self) -> Vec<u32> {
        netns_pids(&self.name)
    }

    pub fn link_exists(&self, ifname: &str) -> bool {
        self.ip(&["link", "show", "dev", ifname]).status.success()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove_netns(&self.name);
    }
}

/// Whether a namespace of that name exists (`ip netns list`).
pub fn netns_exists(name: &str) -> bool {
    let out = run(command("ip", &["netns", "list"]), None, COMMAND_TIMEOUT);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

fn netns_pids(name: &str) -> Vec<u32> {
    match try_run(
        command("ip", &["netns", "pids", name]),
        None,
        COMMAND_TIMEOUT,
    ) {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|&p| pid_alive(p))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Never panics (runs from `Drop`).
fn remove_netns(name: &str) {
    let stuck = stop_pids(&netns_pids(name), STOP_GRACE);
    if !stuck.is_empty() {
        eprintln!("[netns] {name}: processes {stuck:?} survived SIGKILL");
    }
    if let Ok(out) = try_run(
        command("ip", &["netns", "del", name]),
        None,
        COMMAND_TIMEOUT,
    ) {
        if !out.status.success() {
            eprintln!(
                "[netns] ip netns del {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Deletes namespaces left by killed runs: ours by name, older than
/// [`STALE_AFTER`], and created by a process that is gone. Concurrent runs
/// (live PIDs, recent names) are never touched.
fn sweep_stale_namespaces() {
    let Ok(out) = try_run(command("ip", &["netns", "list"]), None, COMMAND_TIMEOUT) else {
        return;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if !name.starts_with(NETNS_MARK) {
            continue;
        }
        let mut fields = name.rsplit('-');
        let created: Option<u64> = fields.next().and_then(|f| f.parse().ok());
        let _counter = fields.next();
        let pid: Option<u32> = fields.next().and_then(|f| f.parse().ok());
        let (Some(created), Some(pid)) = (created, pid) else {
            continue;
        };
        let old = now.saturating_sub(created) > STALE_AFTER.as_secs();
        if old && pid != std::process::id() && !pid_alive(pid) {
            eprintln!("[netns] deleting stale namespace {name}");
            remove_netns(name);
        }
    }
}

/// A veth pair from one namespace to another, up, with addresses. IPv6
/// addresses get `nodad`, so they are usable at once. Dropping it deletes
/// the pair (gone anyway with either namespace).
#[derive(Debug)]
pub struct Veth {
    ns_a: String,
    name_a: String,
    name_b: String,
}

impl Veth {
    /// `addrs_a`/`addrs_b`: CIDRs such as "10.99.0.1/24" and "fd00::1/64".
    pub fn pair(a: &Netns, b: &Netns, addrs_a: &[&str], addrs_b: &[&str]) -> Veth {
        let name_a = unique_ifname("va");
        let name_b = unique_ifname("vb");
        a.ip_ok(&[
            "link",
            "add",
            &name_a,
            "type",
            "veth",
            "peer",
            "name",
            &name_b,
            "netns",
            b.name(),
        ]);
        let veth = Veth {
            ns_a: a.name().to_owned(),
            name_a,
            name_b,
        };
        for (ns, dev, addrs) in [(a, &veth.name_a, addrs_a), (b, &veth.name_b, addrs_b)] {
            for addr in addrs {
                let mut args = vec!["addr", "add", addr, "dev", dev.as_str()];
                if addr.contains(':') {
                    args.push("nodad");
                }
                ns.ip_ok(&args);
            }
            ns.ip_ok(&["link", "set", dev, "up"]);
        }
        for (ns, dev) in [(a, &veth.name_a), (b, &veth.name_b)] {
            let up = wait_until(Duration::from_secs(5), Duration::from_millis(10), || {
                let out = ns.ip(&["-o", "link", "show", "dev", dev]);
                String::from_utf8_lossy(&out.stdout).contains("state UP")
            });
            assert!(up, "veth {dev} in {} did not come up", ns.name());
        }
        veth
    }

    pub fn name_a(&self) -> &str {
        &self.name_a
    }

    pub fn name_b(&self) -> &str {
        &self.name_b
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let cmd = command("ip", &["-n", &self.ns_a, "link", "del", &self.name_a]);
        let _ = try_run(cmd, None, COMMAND_TIMEOUT);
    }
}

/// A temporary directory (mode 0700), removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let path =
            std::env::temp_dir().join(format!("cwt-{prefix}-{}-{}", std::process::id(), next_id()));
        fs::DirBuilder::new().mode(0o700).create(&path).unwrap();
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a file with mode 0600 (for keys and configs).
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path.join(name);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        f.write_all(contents.as_bytes()).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

// --- Spawned processes -----------------------------------------------------

/// A child process with its output in a log file. Dropping it stops it:
/// SIGTERM, then SIGKILL after [`STOP_GRACE`].
#[derive(Debug)]
pub struct Proc {
    child: Child,
    what: String,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    fn spawn(mut cmd: Command, what: &str) -> Proc {
        let log =
            std::env::temp_dir().join(format!("cwt-log-{}-{}.log", std::process::id(), next_id()));
        let out = File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        Proc {
            child,
            what: what.to_owned(),
            log,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the process wrote so far.
    pub fn log(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        self.poll_status().is_none()
    }

    fn poll_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = wait_child(&mut self.child, timeout);
        }
        self.status
    }

    /// SIGTERM, then SIGKILL after [`STOP_GRACE`]; returns how it ended.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if let Some(status) = self.poll_status() {
            return Some(status);
        }
        send_signal(self.pid(), "TERM");
        if let Some(status) = self.wait_exit(STOP_GRACE) {
            return Some(status);
        }
        let _ = self.child.kill();
        self.wait_exit(Duration::from_secs(2))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let status = self.stop();
        if std::thread::panicking() {
            print_log_tail(&self.what, &self.log, &format!("{status:?}"));
        } else {
            let _ = fs::remove_file(&self.log);
        }
    }
}

fn print_log_tail(what: &str, log: &Path, ended: &str) {
    let text = fs::read(log)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(30)..].join("\n");
    eprintln!(
        "[netns] {what} (ended: {ended}); log kept at {}; last lines:\n{tail}",
        log.display()
    );
}

// --- WireGuard implementations ---------------------------------------------

/// The WireGuard implementations the tests run, and how to start each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WgImpl {
    /// Debian's wireguard-go.
    WireguardGo,
    /// boringtun-cli from crates.io, in ./.tools/bin.
    Boringtun,
    /// gotatun-cli from crates.io (binary `gotatun`), in ./.tools/bin.
    Gotatun,
    /// This crate's daemon.
    Corewire,
}

/// How an implementation is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    /// `BIN -f IFNAME`: our child; we know its PID.
    Foreground,
    /// `BIN IFNAME`, as wg-quick runs it: the launcher must exit 0 only once
    /// the TUN device and the UAPI socket exist (checked); the daemon is
    /// found by PID afterwards (the process in the namespace whose arguments
    /// name the interface). Its stdio is not checked here: see [`fd_target`].
    Daemon,
}

impl WgImpl {
    pub const THIRD_PARTY: [WgImpl; 3] = [WgImpl::WireguardGo, WgImpl::Boringtun, WgImpl::Gotatun];

    pub fn name(self) -> &'static str {
        match self {
            WgImpl::WireguardGo => "wireguard-go",
            WgImpl::Boringtun => "boringtun",
            WgImpl::Gotatun => "gotatun",
            WgImpl::Corewire => "corewire",
        }
    }

    /// The executable: ./.tools/bin first for the cargo-installed ones, then PATH.
    pub fn binary(self) -> PathBuf {
        let file = match self {
            WgImpl::Corewire => return PathBuf::from(env!("CARGO_BIN_EXE_corewire")),
            WgImpl::WireguardGo => "wireguard-go",
            WgImpl::Boringtun => "boringtun-cli",
            WgImpl::Gotatun => "gotatun",
        };
        let tools = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../.tools/bin")
            .join(file);
        if tools.is_file() {
            return tools;
        }
        find_in_path(file).unwrap_or_else(|| {
            panic!("{file} not found in ./.tools/bin or PATH; run scripts/test.sh to install it")
        })
    }

    /// The age of a peer's latest handshake as `wg show dump` reports it from
    /// this implementation. boringtun 0.7.1 writes the time *since* the
    /// handshake into `last_handshake_time_sec` instead of Unix time (so `wg
    /// show` prints "55 years ago"); the others write Unix time.
    pub fn handshake_age(self, peer: &WgPeerDump) -> Option<Duration> {
        match self {
            WgImpl::Boringtun => {
                (peer.latest_handshake != 0).then(|| Duration::from_secs(peer.latest_handshake))
            }
            _ => peer.handshake_age(),
        }
    }

    /// Corewire behaves like wireguard-go under wg-quick: daemonizes. The
    /// others run in the foreground, so the test owns their PID directly.
    pub fn default_launch(self) -> Launch {
        match self {
            WgImpl::Corewire => Launch::Daemon,
            _ => Launch::Foreground,
        }
    }

    /// Arguments for a launch mode.
    fn args(self, ifname: &str, launch: Launch) -> Vec<String> {
        let mut args = Vec::new();
        if launch == Launch::Foreground {
            args.push("-f".to_owned());
        }
        if matches!(self, WgImpl::Boringtun | WgImpl::Gotatun) && launch == Launch::Foreground {
            // As root without a login (getlogin() is NULL) dropping privileges fails.
            args.push("--disable-drop-privileges".to_owned());
        }
        args.push(ifname.to_owned());
        args
    }

    /// Environment for a launch (daemon mode takes no flags, as from wg-quick).
    fn env(self, log: &Path) -> Vec<(&'static str, String)> {
        match self {
            WgImpl::Boringtun | WgImpl::Gotatun => vec![
                // Exactly "true": boringtun's clap 4 flag rejects "1".
                ("WG_SUDO", "true".to_owned()),
                // Their default log files in /tmp would be shared between tests.
                ("WG_LOG_FILE", log.display().to_string()),
            ],
            WgImpl::WireguardGo | WgImpl::Corewire => Vec::new(),
        }
    }

    /// Starts the implementation on a new interface `ifname` in `ns`, with
    /// [`WgImpl::default_launch`]; returns once the link exists and the UAPI
    /// socket answers.
    pub fn start(self, ns: &Netns, ifname: &str) -> WgDevice {
        self.start_with(ns, ifname, self.default_launch())
    }

    pub fn start_with(self, ns: &Netns, ifname: &str, launch: Launch) -> WgDevice {
        let log = std::env::temp_dir().join(format!("cwt-{}-{ifname}.log", self.name()));
        let binary = self.binary();
        let args = self.args(ifname, launch);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env = self.env(&log);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut dev = match launch {
            Launch::Foreground => {
                let proc_ = ns.spawn(&binary, &args, &env);
                // For the cargo tools the WG_LOG_FILE stays unused in the foreground.
                let log = proc_.log_path().to_owned();
                WgDevice::new(self, ns, ifname, Some(proc_), None, log)
            }
            Launch::Daemon => {
                let mut cmd = ns.command(&binary, &args);
                cmd.envs(env.iter().copied());
                let status = launch_daemon(cmd, &log);
                let mut dev = WgDevice::new(self, ns, ifname, None, None, log);
                assert!(
                    status.is_some_and(|s| s.success()),
                    "{} {ifname}: launcher ended with {status:?}; log:\n{}",
                    self.name(),
                    dev.log()
                );
                // wg-quick runs `wg setconf` as soon as the launcher returns.
                assert!(
                    ns.link_exists(ifname) && socket_path(ifname).exists(),
                    "{} {ifname}: the launcher returned before the link and the socket \
                     existed (wg-quick would fail); log:\n{}",
                    self.name(),
                    dev.log()
                );
                // The daemon may still be finishing its set-up; find it by PID.
                let found = wait_until(START_TIMEOUT, Duration::from_millis(20), || {
                    dev.daemon_pid = find_daemon(ns, ifname);
                    dev.daemon_pid.is_some()
                });
                assert!(
                    found,
                    "{} {ifname}: no daemon process in {}; log:\n{}",
                    self.name(),
                    ns.name(),
                    dev.log()
                );
                dev
            }
        };
        dev.wait_ready(START_TIMEOUT);
        dev
    }
}

/// Runs a daemonizing launcher with stdout/stderr appended to `log` and
/// waits (bounded) for it to return.
fn launch_daemon(mut cmd: Command, log: &Path) -> Option<ExitStatus> {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let err = out.try_clone().unwrap();
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let status = wait_child(&mut child, START_TIMEOUT);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    status
}

/// The process in `ns` whose arguments include `ifname` (interface names are
/// unique per test, so this is the daemon serving it).
pub fn find_daemon(ns: &Netns, ifname: &str) -> Option<u32> {
    ns.pids()
        .into_iter()
        .find(|&pid| cmdline(pid).iter().skip(1).any(|a| a == ifname))
}

fn find_in_path(file: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(file))
        .find(|p| p.is_file())
}

/// A running implementation serving one interface. Dropping it stops the
/// process by PID (SIGTERM, then SIGKILL), deletes the link if it is still
/// there and removes a socket left behind (gotatun leaves it on SIGTERM).
#[derive(Debug)]
pub struct WgDevice {
    imp: WgImpl,
    ns: String,
    ifname: String,
    proc_: Option<Proc>,
    daemon_pid: Option<u32>,
    log: PathBuf,
}

impl WgDevice {
    fn new(
        imp: WgImpl,
        ns: &Netns,
        ifname: &str,
        proc_: Option<Proc>,
        daemon_pid: Option<u32>,
        log: PathBuf,
    ) -> WgDevice {
        WgDevice {
            imp,
            ns: ns.name().to_owned(),
            ifname: ifname.to_owned(),
            proc_,
            daemon_pid,
            log,
        }
    }

    /// Takes charge of a daemon someone else started (wg-quick): finds it by
    /// PID, so that `Drop` cleans up after it if the test fails.
    pub fn adopt(imp: WgImpl, ns: &Netns, ifname: &str) -> WgDevice {
        let pid = find_daemon(ns, ifname)
            .unwrap_or_else(|| panic!("no process serving {ifname} in {}", ns.name()));
        let log = std::env::temp_dir().join(format!("cwt-{}-{ifname}.log", imp.name()));
        WgDevice::new(imp, ns, ifname, None, Some(pid), log)
    }

    pub fn imp(&self) -> WgImpl {
        self.imp
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc_.as_ref().map(Proc::pid).or(self.daemon_pid)
    }

    pub fn socket_path(&self) -> PathBuf {
        socket_path(&self.ifname)
    }

    /// Where [`WgDevice::log`] reads from (kept when a test fails).
    pub fn log_path(&self) -> PathBuf {
        match &self.proc_ {
            Some(p) => p.log_path().to_owned(),
            None => self.log.clone(),
        }
    }

    /// The implementation's output (foreground) or launcher output and
    /// WG_LOG_FILE (daemon).
    pub fn log(&self) -> String {
        match &self.proc_ {
            Some(p) => p.log(),
            None => fs::read(&self.log)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default(),
        }
    }

    pub fn is_running(&mut self) -> bool {
        match (&mut self.proc_, self.daemon_pid) {
            (Some(p), _) => p.is_running(),
            (None, Some(pid)) => pid_alive(pid),
            (None, None) => false,
        }
    }

    /// Waits up to `timeout` for the process to exit by itself (after the
    /// link or the socket was deleted, say). True when it has exited.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        match (&mut self.proc_, self.daemon_pid) {
            (Some(p), _) => p.wait_exit(timeout).is_some(),
            (None, Some(pid)) => wait_until(timeout, Duration::from_millis(20), || !pid_alive(pid)),
            (None, None) => true,
        }
    }

    /// Waits until the link exists and the UAPI socket answers `get=1`.
    fn wait_ready(&mut self, timeout: Duration) {
        let ns = self.ns.clone();
        let ifname = self.ifname.clone();
        let link = |name: &str| {
            let cmd = command("ip", &["-n", &ns, "link", "show", "dev", name]);
            try_run(cmd, None, COMMAND_TIMEOUT).is_ok_and(|o| o.status.success())
        };
        let mut died = false;
        let ready = wait_until(timeout, Duration::from_millis(20), || {
            died = !self.is_running();
            died || (link(&ifname) && uapi_get(&ifname).is_some())
        });
        assert!(
            ready && !died,
            "{} {ifname} in {ns}: {} within {timeout:?}; log:\n{}",
            self.imp.name(),
            if died {
                "exited"
            } else {
                "no link or no answering UAPI socket"
            },
            self.log()
        );
    }

    /// Stops the process (SIGTERM, then SIGKILL), removes what it left.
    /// Never panics (runs from `Drop`).
    pub fn stop(&mut self) {
        if let Some(p) = &mut self.proc_ {
            p.stop();
        }
        if let Some(pid) = self.daemon_pid {
            stop_pids(&[pid], STOP_GRACE);
        }
        let cmd = command("ip", &["-n", &self.ns, "link", "del", &self.ifname]);
        let _ = try_run(cmd, None, COMMAND_TIMEOUT);
        let sock = self.socket_path();
        if sock.exists() && UnixStream::connect(&sock).is_err() {
            let _ = fs::remove_file(sock);
        }
    }
}

impl Drop for WgDevice {
    fn drop(&mut self) {
        let was_running = self.is_running();
        self.stop();
        if self.proc_.is_none() {
            if std::thread::panicking() {
                let ended = match (self.daemon_pid, was_running) {
                    (Some(pid), true) => format!("daemon {pid} stopped by the guard"),
                    (Some(pid), false) => format!("daemon {pid} had already exited"),
                    (None, _) => "no daemon found".to_owned(),
                };
                print_log_tail(
                    &format!("{} {}", self.imp.name(), self.ifname),
                    &self.log,
                    &ended,
                );
            } else {
                let _ = fs::remove_file(&self.log);
            }
        }
        // A foreground Proc reports and removes its own log when dropped next.
    }
}

/// Sends `get=1` on the interface's UAPI socket; the reply without the final
/// `errno=0` line, or None if there is no socket, it does not answer within
/// 2 s, or the errno is not 0.
pub fn uapi_get(ifname: &str) -> Option<String> {
    let mut sock = UnixStream::connect(socket_path(ifname)).ok()?;
    sock.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    sock.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    sock.write_all(b"get=1\n\n").ok()?;
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    // The connection stays open for more requests: stop at the errno line.
    while Instant::now() < deadline && reply.len() < (1 << 20) {
        let n = sock.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply);
        if let Some(pos) = text.find("errno=") {
            if text.ends_with("\n\n") {
                return (text[pos..].trim() == "errno=0").then(|| text[..pos].to_owned());
            }
        }
    }
    None
}

// --- wg --------------------------------------------------------------------

/// A key pair from `wg genkey` and `wg pubkey` (base64).
#[derive(Debug, Clone)]
pub struct Keypair {
    pub private: String,
    pub public: String,
}

impl Keypair {
    pub fn generate() -> Keypair {
        let private = run_ok(command("wg", &["genkey"]), None).trim().to_owned();
        let public = run_ok(
            command("wg", &["pubkey"]),
            Some(format!("{private}\n").as_bytes()),
        )
        .trim()
        .to_owned();
        Keypair { private, public }
    }
}

/// `wg args...` in the namespace; panics unless it succeeds; returns stdout.
pub fn wg(ns: &Netns, args: &[&str]) -> String {
    ns.exec_ok("wg", args)
}

/// `wg set <ifname> args...`.
pub fn wg_set(ns: &Netns, ifname: &str, args: &[&str]) {
    let mut all = vec!["set", ifname];
    all.extend_from_slice(args);
    wg(ns, &all);
}

/// `wg set <ifname> private-key /dev/stdin args...`, the key on stdin (no
/// key file). Pass the rest of the configuration (`listen-port`, `peer ...`)
/// in `args`: one `wg set` is one UAPI transaction. gotatun 0.10.2 shuts down
/// about one time in eight ("Unexpected error on tun interface: channel
/// closed") when a peer is added by a second `wg set` right after the
/// private key was set by a first.
pub fn wg_set_private_key(ns: &Netns, ifname: &str, private_key: &str, args: &[&str]) {
    let mut all = vec!["set", ifname, "private-key", "/dev/stdin"];
    all.extend_from_slice(args);
    run_ok(
        ns.command("wg", &all),
        Some(format!("{private_key}\n").as_bytes()),
    );
}

/// `wg show <ifname> dump`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgDump {
    pub private_key: String,
    pub public_key: String,
    pub listen_port: u16,
    /// None for "off".
    pub fwmark: Option<u32>,
    pub peers: Vec<WgPeerDump>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgPeerDump {
    pub public_key: String,
    /// None for "(none)".
    pub preshared_key: Option<String>,
    /// "10.99.0.2:51820" or "[fd00::2]:51820"; None for "(none)".
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
    /// Unix seconds; 0 = never.
    pub latest_handshake: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Seconds; None for "off".
    pub persistent_keepalive: Option<u16>,
}

impl WgPeerDump {
    /// Time since the latest handshake; None if there was none.
    pub fn handshake_age(&self) -> Option<Duration> {
        if self.latest_handshake == 0 {
            return None;
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
        Some(Duration::from_secs(
            now.saturating_sub(self.latest_handshake),
        ))
    }
}

impl WgDump {
    pub fn parse(text: &str) -> Result<WgDump, String> {
        let mut lines = text.lines().filter(|l| !l.is_empty());
        let head: Vec<&str> = lines.next().ok_or("empty dump")?.split('\t').collect();
        let [private_key, public_key, port, fwmark] = head[..] else {
            return Err(format!("interface line has {} fields, not 4", head.len()));
        };
        let num = |s: &str| s.parse::<u64>().map_err(|e| format!("{s:?}: {e}"));
        let none = |s: &str| (s != "(none)").then(|| s.to_owned());
        let mut peers = Vec::new();
        for line in lines {
            let f: Vec<&str> = line.split('\t').collect();
            let [pk, psk, endpoint, allowed, handshake, rx, tx, keepalive] = f[..] else {
                return Err(format!("peer line has {} fields, not 8: {line:?}", f.len()));
            };
            peers.push(WgPeerDump {
                public_key: pk.to_owned(),
                preshared_key: none(psk),
                endpoint: none(endpoint),
                allowed_ips: if allowed == "(none)" {
                    Vec::new()
                } else {
                    allowed.split(',').map(str::to_owned).collect()
                },
                latest_handshake: num(handshake)?,
                rx_bytes: num(rx)?,
                tx_bytes: num(tx)?,
                persistent_keepalive: if keepalive == "off" {
                    None
                } else {
                    Some(
                        keepalive
                            .parse()
                            .map_err(|e| format!("{keepalive:?}: {e}"))?,
                    )
                },
            });
        }
        Ok(WgDump {
            private_key: private_key.to_owned(),
            public_key: public_key.to_owned(),
            listen_port: port.parse().map_err(|e| format!("{port:?}: {e}"))?,
            fwmark: match fwmark {
                "off" => None,
                hex => Some(
                    u32::from_str_radix(hex.trim_start_matches("0x"), 16)
                        .map_err(|e| format!("{hex:?}: {e}"))?,
                ),
            },
            peers,
        })
    }

    pub fn peer(&self, public_key: &str) -> Option<&WgPeerDump> {
        self.peers.iter().find(|p| p.public_key == public_key)
    }
}

pub fn wg_show_dump(ns: &Netns, ifname: &str) -> WgDump {
    let text = wg(ns, &["show", ifname, "dump"]);
    WgDump::parse(&text).unwrap_or_else(|e| panic!("wg show {ifname} dump: {e}\n{text}"))
}

// --- ping ------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct PingStats {
    /// Replies asked for (`-c`).
    pub count: u32,
    pub transmitted: u32,
    pub received: u32,
    pub output: String,
}

impl PingStats {
    /// `count` replies and no loss. (With `-c` and `-w`, ping keeps sending
    /// until `count` replies arrive, so a lost request shows as
    /// transmitted > received.)
    pub fn all_received(&self) -> bool {
        self.received >= self.count && self.received == self.transmitted
    }
}

/// `ping -c count` every 0.2 s, giving up after `timeout` (at least 1 s);
/// IPv4 or IPv6 by the address.
pub fn ping(ns: &Netns, addr: &str, count: u32, timeout: Duration) -> PingStats {
    let deadline = timeout.as_secs().max(1).to_string();
    let count_s = count.to_string();
    let cmd = ns.command(
        "ping",
        &[
            "-n", "-q", "-c", &count_s, "-i", "0.2", "-W", "1", "-w", &deadline, addr,
        ],
    );
    let out = run(cmd, None, timeout + Duration::from_secs(5));
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (mut transmitted, mut received) = (0, 0);
    if let Some(line) = output.lines().find(|l| l.contains("packets transmitted")) {
        let mut numbers = line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok());
        transmitted = numbers.next().unwrap_or(0);
        received = numbers.next().unwrap_or(0);
    }
    PingStats {
        count,
        transmitted,
        received,
        output,
    }
}

/// [`ping`] that panics unless every reply came back.
pub fn assert_ping(ns: &Netns, addr: &str, count: u32, timeout: Duration) {
    let stats = ping(ns, addr, count, timeout);
    assert!(
        stats.all_received(),
        "ping {addr} from {}:\n{}",
        ns.name(),
        stats.output
    );
}

// --- iperf3 ----------------------------------------------------------------

/// Results of one iperf3 run, from its `-J` report.
#[derive(Debug, Clone)]
pub struct Iperf3Result {
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub sent_bps: f64,
    pub received_bps: f64,
    pub seconds: f64,
    /// TCP only.
    pub retransmits: Option<u64>,
    /// The report's `error`, also when iperf3 exited non-zero.
    pub error: Option<String>,
    pub json: Json,
}

impl Iperf3Result {
    pub fn parse(text: &str) -> Result<Iperf3Result, String> {
        // Stray text (stderr shares a log) may surround the JSON object.
        let start = text.find('{').ok_or("no JSON in iperf3 output")?;
        let end = text.rfind('}').ok_or("no JSON in iperf3 output")?;
        let json = Json::parse(&text[start..=end])?;
        let error = json.get("error").and_then(Json::as_str).map(str::to_owned);
        let end = json.get("end");
        // TCP reports sum_sent/sum_received, UDP a single sum.
        let sent = end.and_then(|e| e.get("sum_sent").or_else(|| e.get("sum")));
        let received = end.and_then(|e| e.get("sum_received").or_else(|| e.get("sum")));
        let field =
            |sum: Option<&Json>, key: &str| sum.and_then(|s| s.get(key)).and_then(Json::as_f64);
        Ok(Iperf3Result {
            sent_bytes: field(sent, "bytes").unwrap_or(0.0) as u64,
            received_bytes: field(received, "bytes").unwrap_or(0.0) as u64,
            sent_bps: field(sent, "bits_per_second").unwrap_or(0.0),
            received_bps: field(received, "bits_per_second").unwrap_or(0.0),
            seconds: field(sent, "seconds").unwrap_or(0.0),
            retransmits: field(sent, "retransmits").map(|r| r as u64),
            error,
            json,
        })
    }
}

/// A one-off iperf3 server (`-s -1 -J`) bound to an address in a namespace.
#[derive(Debug)]
pub struct Iperf3Server {
    proc_: Proc,
}

/// Starts `iperf3 -s -1 -J -B bind -p port` and waits (bounded) until it listens.
pub fn iperf3_server(ns: &Netns, bind: &str, port: u16) -> Iperf3Server {
    let port_s = port.to_string();
    let mut proc_ = ns.spawn(
        "iperf3",
        &["-s", "-1", "-J", "-B", bind, "-p", &port_s],
        &[],
    );
    let listening = wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        let out = ns.exec("ss", &["-Hltn", "sport", "=", &format!(":{port}")]);
        proc_.is_running() && String::from_utf8_lossy(&out.stdout).contains(&format!(":{port}"))
    });
    assert!(
        listening,
        "iperf3 server on {bind}:{port} in {} not listening:\n{}",
        ns.name(),
        proc_.log()
    );
    Iperf3Server { proc_ }
}

impl Iperf3Server {
    /// Waits (bounded) for the one-off server to finish; its view of the test.
    pub fn result(mut self, timeout: Duration) -> Iperf3Result {
        let status = self.proc_.wait_exit(timeout);
        let log = self.proc_.log();
        assert!(
            status.is_some(),
            "iperf3 server still running after {timeout:?}:\n{log}"
        );
        Iperf3Result::parse(&log).unwrap_or_else(|e| panic!("iperf3 server: {e}\n{log}"))
    }
}

/// `iperf3 -c server -p port -t seconds -J` plus `extra` (e.g. "-R", "-u"),
/// bounded by `seconds` + 20 s.
pub fn iperf3_client(
    ns: &Netns,
    server: &str,
    port: u16,
    seconds: u32,
    extra: &[&str],
) -> Iperf3Result {
    let port_s = port.to_string();
    let secs = seconds.to_string();
    let mut args = vec![
        "-c",
        server,
        "-p",
        &port_s,
        "-t",
        &secs,
        "-J",
        "--connect-timeout",
        "3000",
    ];
    args.extend_from_slice(extra);
    let out = run(
        ns.command("iperf3", &args),
        None,
        Duration::from_secs(u64::from(seconds) + 20),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut result = Iperf3Result::parse(&text).unwrap_or_else(|e| {
        panic!(
            "iperf3 client ({}): {e}\n{text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    if !out.status.success() && result.error.is_none() {
        result.error = Some(format!("iperf3 exited with {}", out.status));
    }
    result
}

// --- A minimal JSON reader (for iperf3 -J; the crate has no serde_json) ----

#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    pub fn parse(text: &str) -> Result<Json, String> {
        let mut p = JsonParser {
            s: text.as_bytes(),
            i: 0,
        };
        let value = p.value(0)?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("trailing data at byte {}", p.i));
        }
        Ok(value)
    }

    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Follows object keys: `json.path(&["end", "sum_sent", "bytes"])`.
    pub fn path(&self, keys: &[&str]) -> Option<&Json> {
        keys.iter().try_fold(self, |v, k| v.get(k))
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Json::Number(n) => Some(*n),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Json::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Json]> {
        match self {
            Json::Array(a) => Some(a),
            _ => None,
        }
    }
}

struct JsonParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl JsonParser<'_> {
    const MAX_DEPTH: u32 = 64;

    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("JSON: {what} at byte {}", self.i))
    }

    fn eat(&mut self, b: u8) -> Result<(), String> {
        self.ws();
        if self.s.get(self.i) == Some(&b) {
            self.i += 1;
            Ok(())
        } else {
            self.err(&format!("expected {:?}", b as char))
        }
    }

    fn value(&mut self, depth: u32) -> Result<Json, String> {
        if depth > Self::MAX_DEPTH {
            return self.err("nested too deeply");
        }
        self.ws();
        match self.s.get(self.i) {
            Some(b'{') => {
                self.i += 1;
                let mut fields = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Json::Object(fields));
                }
                loop {
                    self.ws();
                    let key = self.string()?;
                    self.eat(b':')?;
                    fields.push((key, self.value(depth + 1)?));
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Object(fields));
                        }
                        _ => return self.err("expected ',' or '}'"),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Json::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Array(items));
                        }
                        _ => return self.err("expected ',' or ']'"),
                    }
                }
            }
            Some(b'"') => Ok(Json::String(self.string()?)),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.i;
                while self.i < self.s.len()
                    && matches!(
                        self.s[self.i],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
                text.parse()
                    .map(Json::Number)
                    .or_else(|_| self.err("bad number"))
            }
            _ => self.err("expected a value"),
        }
    }

    fn literal(&mut self, word: &str, value: Json) -> Result<Json, String> {
        if self.s[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Ok(value)
        } else {
            self.err("bad literal")
        }
    }

    fn string(&mut self) -> Result<String, String> {
        if self.s.get(self.i) != Some(&b'"') {
            return self.err("expected a string");
        }
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let Some(&b) = self.s.get(self.i) else {
                return self.err("unterminated string");
            };
            self.i += 1;
            match b {
                b'"' => return String::from_utf8(out).or_else(|_| self.err("invalid UTF-8")),
                b'\\' => {
                    let Some(&e) = self.s.get(self.i) else {
                        return self.err("unterminated escape");
                    };
                    self.i += 1;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hex = self
                                .s
                                .get(self.i..self.i + 4)
                                .and_then(|h| std::str::from_utf8(h).ok());
                            let code = hex.and_then(|h| u32::from_str_radix(h, 16).ok());
                            let Some(code) = code else {
                                return self.err("bad \\u escape");
                            };
                            self.i += 4;
                            // Surrogate pairs are not needed for iperf3; replace them.
                            char::from_u32(code).unwrap_or('\u{fffd}')
                        }
                        _ => return self.err("bad escape"),
                    };
                    let mut tmp = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
                }
                _ => out.push(b),
            }
        }
    }
}
