//! The network-namespace tests' view of `corewire-testkit`: its helpers
//! with panics instead of errors (a failing helper fails the test), plus
//! what only these tests use (`enabled`, `Timed`, ping). Needs root;
//! scripts/test.sh installs every tool (Debian: wireguard-tools,
//! wireguard-go, iperf3, iproute2, iputils-ping; cargo: boringtun-cli and
//! gotatun-cli into ./.tools/bin). The launch recipes of each WireGuard
//! implementation are documented in testkit's `daemon` module.
//!
//! Cleanup. Every resource is a guard whose `Drop` removes it, also while a
//! failing test unwinds (no `Drop` can panic, so a second panic never
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
//! namespaces share. Every wait is bounded.

// A test support module: its helpers fail the test by panicking. Each test
// file uses a different subset of it.
#![allow(dead_code, unused_imports)]

use std::ffi::OsStr;
use std::fmt::Display;
use std::fs;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use corewire_testkit as kit;

pub mod sim;
pub mod stats;

pub use kit::serde_json::Value as Json;
pub use kit::{
    cmdline, fd_target, find_daemon, pid_alive, socket_addr, socket_path, stop_pids, uapi_get,
    unix_now, wait_until, Iperf3Result, Launch, Proc, WgDump, WgImpl, WgPeerDump, COMMAND_TIMEOUT,
    SOCKET_DIR, STALE_AFTER, START_TIMEOUT, STOP_GRACE,
};

/// The value, or a panic with the error's message (command, output, log).
fn ok<T, E: Display>(result: Result<T, E>) -> T {
    result.unwrap_or_else(|e| panic!("{e}"))
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

// --- Commands and names ------------------------------------------------------

/// Runs `cmd` to completion within `timeout` (killed after it; a panic);
/// any exit status. Output goes through files, so a daemon that inherits
/// stdout/stderr cannot make us wait for it.
pub fn run(cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    ok(kit::run(cmd, stdin, timeout))
}

/// Runs `cmd`, panics unless it succeeds, returns its stdout.
pub fn run_ok(cmd: Command, stdin: Option<&[u8]>) -> String {
    ok(kit::run_ok(cmd, stdin))
}

/// A fresh interface name (see `corewire_testkit::unique_ifname`).
pub fn unique_ifname(prefix: &str) -> String {
    ok(kit::unique_ifname(prefix))
}

/// Whether a namespace of that name exists (`ip netns list`).
pub fn netns_exists(name: &str) -> bool {
    ok(kit::netns_exists(name))
}

// --- Guards ------------------------------------------------------------------

/// A network namespace owned by the test (see `corewire_testkit::Netns`).
#[derive(Debug)]
pub struct Netns(kit::Netns);

impl Netns {
    /// Creates `cwt-<prefix>-<pid>-<n>-<unix time>` with `lo` up.
    pub fn new(prefix: &str) -> Netns {
        Netns(ok(kit::Netns::new(prefix)))
    }

    /// Runs a program in the namespace (bounded); any exit status.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        ok(self.0.exec(program, args))
    }

    /// [`Netns::exec`] that panics unless the program succeeds; returns stdout.
    pub fn exec_ok(&self, program: &str, args: &[&str]) -> String {
        ok(self.0.exec_ok(program, args))
    }

    /// `ip -n <ns> args...`; any exit status.
    pub fn ip(&self, args: &[&str]) -> Output {
        ok(self.0.ip(args))
    }

    /// `ip -n <ns> args...`; panics unless it succeeds; returns stdout.
    pub fn ip_ok(&self, args: &[&str]) -> String {
        ok(self.0.ip_ok(args))
    }

    /// Starts a long-running program in the namespace, logged to a file;
    /// the guard stops it by PID.
    pub fn spawn(&self, program: impl AsRef<OsStr>, args: &[&str], env: &[(&str, &str)]) -> Proc {
        ok(self.0.spawn(program, args, env))
    }
}

impl Deref for Netns {
    type Target = kit::Netns;
    fn deref(&self) -> &kit::Netns {
        &self.0
    }
}

/// A veth pair between two namespaces, up, with addresses.
#[derive(Debug)]
pub struct Veth(kit::Veth);

impl Veth {
    /// `addrs_a`/`addrs_b`: CIDRs such as "10.99.0.1/24" and "fd00::1/64".
    pub fn pair(a: &Netns, b: &Netns, addrs_a: &[&str], addrs_b: &[&str]) -> Veth {
        Veth(ok(kit::Veth::pair(a, b, addrs_a, addrs_b)))
    }
}

impl Deref for Veth {
    type Target = kit::Veth;
    fn deref(&self) -> &kit::Veth {
        &self.0
    }
}

/// A temporary directory (mode 0700), removed on drop.
#[derive(Debug)]
pub struct TempDir(kit::TempDir);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        TempDir(ok(kit::TempDir::new(prefix)))
    }

    /// Writes a file with mode 0600 (for keys and configs).
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        ok(self.0.write(name, contents))
    }
}

impl Deref for TempDir {
    type Target = kit::TempDir;
    fn deref(&self) -> &kit::TempDir {
        &self.0
    }
}

// --- WireGuard implementations -------------------------------------------------

/// Starting an implementation the way these tests do: the binary from this
/// build (corewire) or ./.tools/bin, then PATH.
pub trait WgStart {
    /// The executable: corewire from this build, ./.tools/bin first for the
    /// cargo-installed ones, then PATH.
    fn binary(self) -> PathBuf;
    /// Starts it on a new interface `ifname` in `ns` with
    /// [`WgImpl::default_launch`]; returns once the link exists and the UAPI
    /// socket answers.
    fn start(self, ns: &Netns, ifname: &str) -> WgDevice;
    fn start_with(self, ns: &Netns, ifname: &str, launch: Launch) -> WgDevice;
    /// In the foreground with `extra` arguments before the interface name.
    fn start_args(self, ns: &Netns, ifname: &str, extra: &[&str]) -> WgDevice;
}

impl WgStart for WgImpl {
    fn binary(self) -> PathBuf {
        if self == WgImpl::Corewire {
            return PathBuf::from(env!("CARGO_BIN_EXE_corewire"));
        }
        let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin");
        let file = self.program();
        kit::find_binary(file, &[tools]).unwrap_or_else(|| {
            panic!("{file} not found in ./.tools/bin or PATH; run scripts/test.sh to install it")
        })
    }

    fn start(self, ns: &Netns, ifname: &str) -> WgDevice {
        self.start_with(ns, ifname, self.default_launch())
    }

    fn start_with(self, ns: &Netns, ifname: &str, launch: Launch) -> WgDevice {
        WgDevice(ok(kit::WgImpl::launch(
            self,
            &self.binary(),
            ns,
            ifname,
            launch,
        )))
    }

    fn start_args(self, ns: &Netns, ifname: &str, extra: &[&str]) -> WgDevice {
        WgDevice(ok(kit::WgImpl::launch_with(
            self,
            &self.binary(),
            ns,
            ifname,
            Launch::Foreground,
            extra,
        )))
    }
}

/// A running implementation serving one interface (see
/// `corewire_testkit::WgDevice`: dropping it stops the daemon by PID and
/// removes what it left).
#[derive(Debug)]
pub struct WgDevice(kit::WgDevice);

impl WgDevice {
    /// Takes charge of a daemon someone else started (wg-quick): finds it by
    /// PID, so that `Drop` cleans up after it if the test fails.
    pub fn adopt(imp: WgImpl, ns: &Netns, ifname: &str) -> WgDevice {
        WgDevice(ok(kit::WgDevice::adopt(imp, ns, ifname)))
    }

    pub fn pid(&self) -> Option<u32> {
        self.0.pid()
    }
}

impl Deref for WgDevice {
    type Target = kit::WgDevice;
    fn deref(&self) -> &kit::WgDevice {
        &self.0
    }
}

impl DerefMut for WgDevice {
    fn deref_mut(&mut self) -> &mut kit::WgDevice {
        &mut self.0
    }
}

// --- wg --------------------------------------------------------------------

/// A key pair from `wg genkey` and `wg pubkey` (base64): `.private`, `.public`.
#[derive(Debug, Clone)]
pub struct Keypair(kit::Keypair);

impl Keypair {
    pub fn generate() -> Keypair {
        Keypair(ok(kit::Keypair::generate()))
    }
}

impl Deref for Keypair {
    type Target = kit::Keypair;
    fn deref(&self) -> &kit::Keypair {
        &self.0
    }
}

/// `wg args...` in the namespace; panics unless it succeeds; returns stdout.
pub fn wg(ns: &Netns, args: &[&str]) -> String {
    ok(kit::wg(ns, args))
}

/// `wg set <ifname> args...`.
pub fn wg_set(ns: &Netns, ifname: &str, args: &[&str]) {
    ok(kit::wg_set(ns, ifname, args));
}

/// `wg set <ifname> private-key /dev/stdin args...`, the key on stdin: one
/// UAPI transaction (see `corewire_testkit::wg_set_private_key` for why).
pub fn wg_set_private_key(ns: &Netns, ifname: &str, private_key: &str, args: &[&str]) {
    ok(kit::wg_set_private_key(ns, ifname, private_key, args));
}

pub fn wg_show_dump(ns: &Netns, ifname: &str) -> WgDump {
    ok(kit::wg_show_dump(ns, ifname))
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

/// A one-off iperf3 server (`-s -1 -J`) bound to an address in a namespace.
#[derive(Debug)]
pub struct Iperf3Server(kit::Iperf3Server);

/// Starts `iperf3 -s -1 -J -B bind -p port` and waits (bounded) until it listens.
pub fn iperf3_server(ns: &Netns, bind: &str, port: u16) -> Iperf3Server {
    Iperf3Server(ok(kit::Iperf3Server::start(ns, bind, port)))
}

impl Iperf3Server {
    /// Waits (bounded) for the one-off server to finish; its view of the test.
    pub fn result(self, timeout: Duration) -> Iperf3Result {
        ok(self.0.finish(timeout))
    }
}

/// `iperf3 -c server -p port -t seconds -J` plus `extra` (e.g. "-R", "-u"),
/// bounded by `seconds` + 20 s. An iperf3 error is in the result's `error`.
pub fn iperf3_client(
    ns: &Netns,
    server: &str,
    port: u16,
    seconds: u32,
    extra: &[&str],
) -> Iperf3Result {
    ok(kit::iperf3_client(ns, server, port, seconds, extra))
}

// --- Byte-exact TCP transfers ----------------------------------------------

/// Receives one TCP connection and prints the SHA-256 and length of
/// everything that came before EOF. It waits up to 60 s for data: an 8 s
/// underlay outage plus TCP's doubling retransmission timeout can leave a
/// connection silent for well over 30 s on a loaded machine.
pub const TCP_RECEIVER: &str = r#"
import hashlib, socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
s.settimeout(60)
c, _ = s.accept()
c.settimeout(60)
h, n = hashlib.sha256(), 0
while True:
    b = c.recv(1 << 20)
    if not b:
        break
    h.update(b)
    n += len(b)
print(h.hexdigest(), n, flush=True)
"#;

/// Sends `n` seeded pseudo-random bytes over TCP; prints what the receiver
/// must print.
pub const TCP_SENDER: &str = r#"
import hashlib, random, socket, sys
data = random.Random(7).randbytes(int(sys.argv[3]))
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
view = memoryview(data)
for i in range(0, len(data), 1 << 18):
    c.sendall(view[i:i + (1 << 18)])
c.shutdown(socket.SHUT_WR)
c.recv(1)
print(hashlib.sha256(data).hexdigest(), len(data), flush=True)
"#;

/// Waits for a helper script for at most `timeout` and returns its last
/// line of output; panics with its log if it failed or did not finish.
pub fn finish(p: Proc, what: &str, timeout: Duration) -> String {
    finish_or_tell(p, what, timeout, String::new)
}

/// [`finish`], with `more()` (say, the other end's output) added to the
/// failure message.
fn finish_or_tell(
    mut p: Proc,
    what: &str,
    timeout: Duration,
    more: impl FnOnce() -> String,
) -> String {
    let status = p.wait_exit(timeout);
    let log = p.log();
    assert!(
        status.is_some_and(|s| s.success()),
        "{what} did not finish within {timeout:?} ({status:?}): {log}{}",
        more()
    );
    log.lines().last().unwrap_or_default().trim().to_owned()
}

/// Streams `bytes` seeded pseudo-random bytes over TCP from `from` to
/// `dst:port` in `to` (python3 on both ends) and checks that the receiver
/// got exactly the bytes sent (SHA-256 and length).
pub fn tcp_transfer(
    from: &Netns,
    to: &Netns,
    dst: &str,
    port: u16,
    bytes: usize,
    timeout: Duration,
) {
    let rx = to.spawn(
        "python3",
        &["-c", TCP_RECEIVER, dst, &port.to_string()],
        &[],
    );
    let listening = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        to.exec_ok("ss", &["-Htln", &format!("sport = :{port}")])
            .contains("LISTEN")
    });
    assert!(listening, "the TCP receiver did not start: {}", rx.log());
    let tx = from.spawn(
        "python3",
        &["-c", TCP_SENDER, dst, &port.to_string(), &bytes.to_string()],
        &[],
    );
    let sent = finish_or_tell(tx, "the TCP sender", timeout, || {
        format!("\nthe receiver's output: {}", rx.log())
    });
    let got = finish(rx, "the TCP receiver", timeout);
    assert_eq!(got, sent, "TCP to {dst}: received bytes differ from sent");
}
