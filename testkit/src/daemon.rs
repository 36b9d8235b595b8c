//! The WireGuard implementations a harness runs, how each is launched, and
//! [`WgDevice`], the guard of one running daemon.
//!
//! Launch recipes (checked by hand; what wg-quick and the projects' docs do):
//! - wireguard-go: `wireguard-go -f IF` in the foreground (with
//!   `LOG_LEVEL=error`, its default level); `wireguard-go IF` creates the
//!   TUN and the socket, re-executes itself in the background (with stdio
//!   on /dev/null unless LOG_LEVEL is set) and returns at once. Exits on
//!   SIGTERM (and removes its socket) and within ~200 ms when the link is
//!   deleted.
//! - boringtun-cli: needs `--disable-drop-privileges` or `WG_SUDO=true`
//!   (exactly `true`: clap rejects `1`) as root, or it fails with "NULL from
//!   getlogin"; `-f` for the foreground, otherwise it forks, returns once the
//!   device is up, and logs to WG_LOG_FILE (default /tmp/boringtun.out,
//!   shared, so it is always set). Exits on SIGTERM, on link deletion
//!   (~1 s), and when its socket is deleted (polled every few seconds).
//! - gotatun (`gotatun-cli`, binary `gotatun`): same flags and environment
//!   as boringtun (`WG_SUDO=1` works too, it is clap 3); default log
//!   /tmp/gotatun.out. Exits on SIGTERM but leaves its socket behind, and
//!   does NOT exit when the link or the socket is deleted: after `wg-quick
//!   down` it keeps running. Setting the private key and then adding a peer
//!   in two quick `wg set`s sometimes kills it (see `wg::wg_set_private_key`).
//! - corewire: like wireguard-go (`corewire -f IF`, or `corewire IF`, which
//!   daemonizes as wg-quick expects).
//!
//! Every implementation runs with its default thread count.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::command::{command, own_group, run, wait_child, wait_until, COMMAND_TIMEOUT};
use crate::netns::Netns;
use crate::process::{
    cmdline, file_tail, pid_alive, print_log_tail, read_lossy, stop_pids, Proc, STOP_GRACE,
};
use crate::uapi::{remove_dead_socket, socket_path, uapi_get};
use crate::wg::WgPeerDump;
use crate::{Error, Result};

/// How long an implementation gets to create its TUN device and socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Log lines an error carries.
const ERROR_TAIL: usize = 30;

/// A WireGuard implementation, and how to start it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WgImpl {
    /// This workspace's daemon.
    Corewire,
    /// Debian's wireguard-go.
    WireguardGo,
    /// boringtun-cli from crates.io.
    Boringtun,
    /// gotatun-cli from crates.io (binary `gotatun`).
    Gotatun,
}

/// How an implementation is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    /// `BIN -f IFNAME`: our child; we know its PID.
    Foreground,
    /// `BIN IFNAME`, as wg-quick runs it: the launcher must exit 0 only once
    /// the TUN device and the UAPI socket exist (checked); the daemon is
    /// found by PID afterwards (the process in the namespace whose arguments
    /// name the interface). Its stdio is not checked here: see
    /// [`fd_target`](crate::process::fd_target).
    Daemon,
}

impl WgImpl {
    pub const ALL: [WgImpl; 4] = [
        WgImpl::Corewire,
        WgImpl::WireguardGo,
        WgImpl::Boringtun,
        WgImpl::Gotatun,
    ];
    pub const THIRD_PARTY: [WgImpl; 3] = [WgImpl::WireguardGo, WgImpl::Boringtun, WgImpl::Gotatun];

    pub fn name(self) -> &'static str {
        match self {
            WgImpl::Corewire => "corewire",
            WgImpl::WireguardGo => "wireguard-go",
            WgImpl::Boringtun => "boringtun",
            WgImpl::Gotatun => "gotatun",
        }
    }

    /// The executable's file name.
    pub fn program(self) -> &'static str {
        match self {
            WgImpl::Corewire => "corewire",
            WgImpl::WireguardGo => "wireguard-go",
            WgImpl::Boringtun => "boringtun-cli",
            WgImpl::Gotatun => "gotatun",
        }
    }

    /// Whether it is installed with `cargo install` (into ./.tools/bin)
    /// rather than from the distribution.
    pub fn from_cargo(self) -> bool {
        matches!(self, WgImpl::Boringtun | WgImpl::Gotatun)
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
    /// others run in the foreground, so the caller owns their PID directly.
    pub fn default_launch(self) -> Launch {
        match self {
            WgImpl::Corewire => Launch::Daemon,
            _ => Launch::Foreground,
        }
    }

    /// Command-line arguments for a launch on `ifname`.
    pub fn args(self, ifname: &str, launch: Launch) -> Vec<String> {
        let mut args = Vec::new();
        if launch == Launch::Foreground {
            args.push("-f".to_owned());
            if self.from_cargo() {
                // As root without a login (getlogin() is NULL) dropping
                // privileges fails.
                args.push("--disable-drop-privileges".to_owned());
            }
        }
        args.push(ifname.to_owned());
        args
    }

    /// Environment for a launch; `log` is the WG_LOG_FILE of boringtun and
    /// gotatun (their default in /tmp would be shared).
    pub fn env(self, launch: Launch, log: &Path) -> Vec<(&'static str, String)> {
        match self {
            WgImpl::Boringtun | WgImpl::Gotatun => vec![
                // Exactly "true": boringtun's clap 4 flag rejects "1".
                ("WG_SUDO", "true".to_owned()),
                ("WG_LOG_FILE", log.display().to_string()),
            ],
            // Its default level; in daemon mode a set LOG_LEVEL would keep
            // the daemon's stdio on the launcher's.
            WgImpl::WireguardGo if launch == Launch::Foreground => {
                vec![("LOG_LEVEL", "error".to_owned())]
            }
            WgImpl::WireguardGo | WgImpl::Corewire => Vec::new(),
        }
    }

    /// Starts `binary` (this implementation) on a new interface `ifname` in
    /// `ns`; returns once the link exists and the UAPI socket answers. On
    /// an error, whatever was started is stopped again.
    pub fn launch(
        self,
        binary: &Path,
        ns: &Netns,
        ifname: &str,
        launch: Launch,
    ) -> Result<WgDevice> {
        self.launch_with(binary, ns, ifname, launch, &[])
    }

    /// [`launch`](Self::launch) with `extra` arguments before the interface
    /// name (corewire's `--threads 3`, `--steering off`, ...).
    pub fn launch_with(
        self,
        binary: &Path,
        ns: &Netns,
        ifname: &str,
        launch: Launch,
        extra: &[&str],
    ) -> Result<WgDevice> {
        let log = daemon_log(self, ifname);
        let mut args = self.args(ifname, launch);
        let at = args.len() - 1;
        args.splice(at..at, extra.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env = self.env(launch, &log);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut dev = match launch {
            Launch::Foreground => {
                let proc_ = ns.spawn(binary, &args, &env)?;
                WgDevice::new(self, ns, ifname, Some(proc_), None, log)
            }
            Launch::Daemon => {
                let mut cmd = ns.command(binary, &args);
                cmd.envs(env.iter().copied());
                let status = launch_daemon(cmd, &log);
                let mut dev = WgDevice::new(self, ns, ifname, None, None, log);
                let status = status?;
                if !status.is_some_and(|s| s.success()) {
                    return Err(dev.error(format!("launcher ended with {status:?}")));
                }
                // wg-quick runs `wg setconf` as soon as the launcher returns.
                if !(ns.link_exists(ifname) && socket_path(ifname).exists()) {
                    return Err(dev.error(
                        "the launcher returned before the link and the socket existed \
                         (wg-quick would fail)"
                            .to_owned(),
                    ));
                }
                // The daemon may still be finishing its set-up; find it by PID.
                let found = wait_until(START_TIMEOUT, Duration::from_millis(20), || {
                    dev.daemon_pid = find_daemon(ns, ifname);
                    dev.daemon_pid.is_some()
                });
                if !found {
                    return Err(dev.error(format!("no daemon process in {}", ns.name())));
                }
                dev
            }
        };
        dev.wait_ready(START_TIMEOUT)?;
        Ok(dev)
    }
}

/// The launcher's output and WG_LOG_FILE of a device.
fn daemon_log(imp: WgImpl, ifname: &str) -> PathBuf {
    std::env::temp_dir().join(format!("cwt-{}-{ifname}.log", imp.name()))
}

/// Runs a daemonizing launcher with stdout/stderr appended to `log` and
/// waits (bounded) for it to return; `None` if it had to be killed.
fn launch_daemon(mut cmd: Command, log: &Path) -> Result<Option<ExitStatus>> {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Error::io("open", log, e))?;
    let err = out.try_clone().map_err(|e| Error::io("dup", log, e))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    own_group(&mut cmd);
    let what = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .map_err(|source| Error::Spawn { what, source })?;
    let status = wait_child(&mut child, START_TIMEOUT, false);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    Ok(status)
}

/// The process in `ns` whose arguments include `ifname` (interface names are
/// unique, so this is the daemon serving it).
pub fn find_daemon(ns: &Netns, ifname: &str) -> Option<u32> {
    ns.pids()
        .into_iter()
        .find(|&pid| cmdline(pid).iter().skip(1).any(|a| a == ifname))
}

/// A running implementation serving one interface. Dropping it stops the
/// process by PID (SIGTERM, then SIGKILL), deletes the link if it is still
/// there and removes a socket left behind (gotatun leaves it on SIGTERM).
/// While the thread panics, the end of the daemon's log is printed and the
/// log kept.
#[derive(Debug)]
pub struct WgDevice {
    imp: WgImpl,
    ns: String,
    ifname: String,
    /// Foreground: our child.
    proc_: Option<Proc>,
    /// Daemon: found by PID.
    daemon_pid: Option<u32>,
    /// Daemon: the launcher's output and WG_LOG_FILE.
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
    /// PID, so that `Drop` cleans up after it.
    pub fn adopt(imp: WgImpl, ns: &Netns, ifname: &str) -> Result<WgDevice> {
        let pid = find_daemon(ns, ifname).ok_or_else(|| {
            Error::NotReady(format!("no process serving {ifname} in {}", ns.name()))
        })?;
        let log = daemon_log(imp, ifname);
        Ok(WgDevice::new(imp, ns, ifname, None, Some(pid), log))
    }

    pub fn imp(&self) -> WgImpl {
        self.imp
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The daemon's PID (our child's in the foreground).
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
        read_lossy(&self.log_path())
    }

    /// The last `lines` lines of [`WgDevice::log`].
    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.log_path(), lines)
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

    fn error(&self, problem: String) -> Error {
        Error::Daemon {
            what: format!("{} {} in {}", self.imp.name(), self.ifname, self.ns),
            problem,
            log: self.log_tail(ERROR_TAIL),
        }
    }

    /// Waits until the link exists and the UAPI socket answers `get=1`; an
    /// error if the process exits first or the time runs out.
    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let ns = self.ns.clone();
        let ifname = self.ifname.clone();
        let link = |name: &str| {
            let cmd = command("ip", &["-n", &ns, "link", "show", "dev", name]);
            run(cmd, None, COMMAND_TIMEOUT).is_ok_and(|o| o.status.success())
        };
        let mut died = false;
        let ready = wait_until(timeout, Duration::from_millis(20), || {
            died = !self.is_running();
            died || (link(&ifname) && uapi_get(&ifname).is_some())
        });
        if ready && !died {
            return Ok(());
        }
        crate::signals::check()?;
        Err(self.error(if died {
            format!("exited within {timeout:?}")
        } else {
            format!("no link or no answering UAPI socket within {timeout:?}")
        }))
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
        let _ = run(cmd, None, COMMAND_TIMEOUT);
        remove_dead_socket(&self.ifname);
    }
}

impl Drop for WgDevice {
    fn drop(&mut self) {
        let was_running = self.is_running();
        self.stop();
        if self.proc_.is_none() && std::thread::panicking() {
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
        } else if !std::thread::panicking() {
            // In the foreground only boringtun and gotatun may have written
            // to WG_LOG_FILE; the Proc reports and removes its own log when
            // it is dropped next.
            let _ = fs::remove_file(&self.log);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipes() {
        let log = Path::new("/tmp/x.log");
        assert_eq!(
            WgImpl::Corewire.args("cw0", Launch::Foreground),
            ["-f", "cw0"]
        );
        assert_eq!(WgImpl::Corewire.args("cw0", Launch::Daemon), ["cw0"]);
        assert_eq!(
            WgImpl::Gotatun.args("cw0", Launch::Foreground),
            ["-f", "--disable-drop-privileges", "cw0"]
        );
        assert_eq!(WgImpl::Boringtun.args("cw0", Launch::Daemon), ["cw0"]);
        let env = WgImpl::Boringtun.env(Launch::Daemon, log);
        assert!(env.contains(&("WG_SUDO", "true".to_owned())));
        assert!(env.contains(&("WG_LOG_FILE", "/tmp/x.log".to_owned())));
        assert!(WgImpl::WireguardGo.env(Launch::Daemon, log).is_empty());
        assert_eq!(WgImpl::Corewire.default_launch(), Launch::Daemon);
        assert_eq!(WgImpl::Gotatun.default_launch(), Launch::Foreground);
    }
}
