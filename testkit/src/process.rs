//! Processes: our own children behind a guard ([`Proc`]), and any process
//! by PID (alive or not, its command line, stopping it). Processes are only
//! ever signalled by PID, never by name; a daemon that re-executed itself in
//! the background is found by PID first (see `daemon::find_daemon`).
//!
//! Stopping is SIGTERM, then SIGKILL after a bounded grace, then a bounded
//! wait; nothing here waits forever, and nothing here panics, so it is safe
//! from `Drop` while a failing test unwinds.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::command::{own_group, wait_child};
use crate::names::temp_path;
use crate::{Error, Result};

/// How long a process gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);
/// How long a process gets to die after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(2);
/// Lines of a log printed when a guard is dropped during a panic.
const TAIL_LINES: usize = 30;

/// The resident memory of process `pid` in KiB (`VmRSS`), if it exists.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Alive and not a zombie. Daemons are reparented to PID 1, which may not
/// reap them (it does not in some containers), so they linger as zombies.
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

/// kill(2) on one PID; never on PID 0, 1 or a negative one (a group).
fn signal_pid(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid <= 1 {
        return;
    }
    // SAFETY: kill(2) with a specific positive PID; no memory involved.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Polls until none of `pids` is alive or `limit` passes. Not stopped early
/// by Ctrl-C: cleanup must finish.
fn wait_gone(pids: &[u32], limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && pids.iter().any(|&p| pid_alive(p)) {
        sleep(Duration::from_millis(20));
    }
}

/// Stops processes that are not our children (daemons, what is left in a
/// namespace): SIGTERM, up to `grace` to exit, then SIGKILL and up to 2 s
/// more. Returns the PIDs that survived (stuck in the kernel).
pub fn stop_pids(pids: &[u32], grace: Duration) -> Vec<u32> {
    let alive: Vec<u32> = pids.iter().copied().filter(|&p| pid_alive(p)).collect();
    for &pid in &alive {
        signal_pid(pid, libc::SIGTERM);
    }
    wait_gone(&alive, grace);
    let stubborn: Vec<u32> = alive.into_iter().filter(|&p| pid_alive(p)).collect();
    for &pid in &stubborn {
        signal_pid(pid, libc::SIGKILL);
    }
    wait_gone(&stubborn, KILL_WAIT);
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

/// The first `file` found in `dirs`, then on PATH.
pub fn find_binary(file: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    dirs.iter()
        .chain(path_dirs.iter())
        .map(|dir| dir.join(file))
        .find(|p| p.is_file())
}

/// Reads a file as text, empty if it cannot be read.
pub(crate) fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `lines` lines of a file.
pub(crate) fn file_tail(path: &Path, lines: usize) -> String {
    let text = read_lossy(path);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Prints what a guard was running and the end of its log (while a test
/// panics; the log file is kept).
pub(crate) fn print_log_tail(what: &str, log: &Path, ended: &str) {
    eprintln!(
        "[testkit] {what} (ended: {ended}); log kept at {}; last lines:\n{}",
        log.display(),
        file_tail(log, TAIL_LINES)
    );
}

/// A child process with its output in files. Dropping it stops it by PID
/// (SIGTERM, then SIGKILL after [`STOP_GRACE`]). While the thread panics,
/// the drop prints the end of its log and keeps the file; otherwise a log
/// created by [`Proc::spawn`] is removed.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    what: String,
    /// stderr (and stdout, when they share the file).
    log: PathBuf,
    /// Whether the log is ours to remove.
    owns_log: bool,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr into a fresh log file in the
    /// temporary directory.
    pub fn spawn(cmd: Command, what: &str) -> Result<Proc> {
        let log = temp_path("log", "log");
        let mut proc_ = Proc::spawn_to(cmd, what, &log, &log)?;
        proc_.owns_log = true;
        Ok(proc_)
    }

    /// Starts `cmd` with stdout and stderr into the given files (the same
    /// path for both is fine); the files are the caller's.
    pub fn spawn_to(mut cmd: Command, what: &str, stdout: &Path, stderr: &Path) -> Result<Proc> {
        let out = File::create(stdout).map_err(|e| Error::io("create", stdout, e))?;
        let err = if stderr == stdout {
            out.try_clone().map_err(|e| Error::io("dup", stdout, e))?
        } else {
            File::create(stderr).map_err(|e| Error::io("create", stderr, e))?
        };
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        own_group(&mut cmd);
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            what: what.to_owned(),
            source,
        })?;
        Ok(Proc {
            child,
            what: what.to_owned(),
            log: stderr.to_owned(),
            owns_log: false,
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The file with its stderr (and stdout, when they share it).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything written to the log so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.log, lines)
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.poll_status().is_none()
    }

    fn poll_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `timeout` for the process to exit by itself; its status,
    /// or `None` if it is still running (also when a stop request cut the
    /// wait short: check [`signals::check`](crate::signals::check)).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = wait_child(&mut self.child, timeout, true);
        }
        self.status
    }

    /// SIGTERM, then SIGKILL after [`STOP_GRACE`]; reaps the child and
    /// returns how it ended (`None` if even SIGKILL did not end it in 2 s).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if let Some(status) = self.poll_status() {
            return Some(status);
        }
        signal_pid(self.pid(), libc::SIGTERM);
        self.status = wait_child(&mut self.child, STOP_GRACE, false);
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = wait_child(&mut self.child, KILL_WAIT, false);
        }
        self.status
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let status = self.stop();
        if std::thread::panicking() {
            print_log_tail(&self.what, &self.log, &format!("{status:?}"));
        } else if self.owns_log {
            let _ = fs::remove_file(&self.log);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::command;

    #[test]
    fn rss_of_self() {
        assert!(rss_kib(std::process::id()).is_some_and(|k| k > 0));
        assert_eq!(rss_kib(u32::MAX), None);
    }

    #[test]
    fn proc_logs_and_stops() {
        let mut p =
            Proc::spawn(command("sh", &["-c", "echo started; exec sleep 30"]), "sh").expect("sh");
        let pid = p.pid();
        let log = p.log_path().to_owned();
        assert!(crate::wait_until(
            Duration::from_secs(5),
            Duration::from_millis(10),
            || p.log().contains("started")
        ));
        assert!(p.is_running() && pid_alive(pid));
        // The shell prints before it execs sleep: wait for the exec.
        assert!(crate::wait_until(
            Duration::from_secs(5),
            Duration::from_millis(10),
            || cmdline(pid).iter().any(|a| a == "30")
        ));
        let status = p.stop();
        assert!(status.is_some_and(|s| !s.success()));
        drop(p);
        assert!(!pid_alive(pid));
        assert!(!log.exists(), "log removed");
    }

    #[test]
    fn waits_for_exit() {
        let mut p = Proc::spawn(command("true", &[]), "true").expect("true");
        let status = p.wait_exit(Duration::from_secs(5));
        assert!(status.is_some_and(|s| s.success()));
        assert!(!p.is_running());
    }
}
