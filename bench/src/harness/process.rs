//! Running commands with a time limit, child-process guards, stopping
//! processes by PID, and the run's scratch directory.
//!
//! Every child is started in its own process group, so a Ctrl-C at the
//! terminal reaches only netbench, which then stops its children in order.
//! Output goes to files rather than pipes: nothing can block on a full pipe.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use super::signals;

/// Time limit for one short command (`ip`, `wg`).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a process gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A number unique within this process (file and interface names).
pub fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A `Command` for `program args...`.
pub fn command(program: impl AsRef<OsStr>, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd
}

/// Runs `cmd` to completion within `timeout` (killed after it); stdin gets
/// `stdin` (small inputs only: keys). Not interruptible: used for short
/// commands, including those that clean up after a Ctrl-C.
pub fn run(mut cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<Output> {
    let what = format!("{cmd:?}");
    let base = std::env::temp_dir().join(format!("cwb-out-{}-{}", std::process::id(), next_id()));
    let out_path = base.with_extension("stdout");
    let err_path = base.with_extension("stderr");
    let status = run_into(&mut cmd, stdin, timeout, &out_path, &err_path);
    let stdout = fs::read(&out_path).unwrap_or_default();
    let stderr = fs::read(&err_path).unwrap_or_default();
    let _ = fs::remove_file(&out_path);
    let _ = fs::remove_file(&err_path);
    let status = status.with_context(|| {
        format!(
            "{what}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        )
    })?;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

fn run_into(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
    out_path: &Path,
    err_path: &Path,
) -> Result<ExitStatus> {
    let out = File::create(out_path).with_context(|| format!("create {}", out_path.display()))?;
    let err = File::create(err_path).with_context(|| format!("create {}", err_path.display()))?;
    cmd.stdout(out).stderr(err).process_group(0);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().context("spawn")?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // Small inputs only (keys): they fit in the pipe buffer.
        let _ = pipe.write_all(data);
    }
    match wait_child(&mut child, timeout, false) {
        Ok(Some(status)) => Ok(status),
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("still running after {timeout:?}; killed")
        }
    }
}

/// Runs `cmd` ([`COMMAND_TIMEOUT`]); an error unless it exits 0. Returns stdout.
pub fn run_ok(cmd: Command, stdin: Option<&[u8]>) -> Result<String> {
    let what = format!("{cmd:?}");
    let out = run(cmd, stdin, COMMAND_TIMEOUT)?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits (bounded) for our own child, reaping it. `Ok(None)` on timeout;
/// an error when `interruptible` and a stop was asked for.
fn wait_child(
    child: &mut Child,
    timeout: Duration,
    interruptible: bool,
) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait().context("wait")? {
            return Ok(Some(status));
        }
        if interruptible {
            signals::check()?;
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Polls `condition` every `poll` until it holds (true) or `timeout` passes
/// (false); checks once more at the deadline. Stops early on Ctrl-C (false).
pub fn wait_until(timeout: Duration, poll: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline || signals::interrupted() {
            return false;
        }
        sleep(poll.min(deadline - now));
    }
}

/// Alive and not a zombie.
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

/// Stops processes that are not our children: SIGTERM, up to `grace` to
/// exit, then SIGKILL and up to 2 s more. Returns the PIDs that survived.
pub fn stop_pids(pids: &[u32], grace: Duration) -> Vec<u32> {
    let alive: Vec<u32> = pids.iter().copied().filter(|&p| pid_alive(p)).collect();
    for &pid in &alive {
        signal_pid(pid, libc::SIGTERM);
    }
    let poll = Duration::from_millis(20);
    // Not wait_until: cleanup must not stop early on Ctrl-C.
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && alive.iter().any(|&p| pid_alive(p)) {
        sleep(poll);
    }
    let stubborn: Vec<u32> = alive.into_iter().filter(|&p| pid_alive(p)).collect();
    for &pid in &stubborn {
        signal_pid(pid, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && stubborn.iter().any(|&p| pid_alive(p)) {
        sleep(poll);
    }
    stubborn.into_iter().filter(|&p| pid_alive(p)).collect()
}

/// A child process with stdout and stderr in files. Dropping it stops it
/// by PID: SIGTERM, then SIGKILL after [`STOP_GRACE`].
#[derive(Debug)]
pub struct Proc {
    child: Child,
    stderr: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr into the given files.
    pub fn spawn(mut cmd: Command, what: &str, stdout: &Path, stderr: &Path) -> Result<Proc> {
        let out = File::create(stdout).with_context(|| format!("create {}", stdout.display()))?;
        let err = if stderr == stdout {
            out.try_clone().context("dup log file")?
        } else {
            File::create(stderr).with_context(|| format!("create {}", stderr.display()))?
        };
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd.spawn().with_context(|| format!("spawn {what}"))?;
        Ok(Proc {
            child,
            stderr: stderr.to_owned(),
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last `lines` lines of stderr (and stdout, when they share a file).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = read_lossy(&self.stderr);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status.is_none()
    }

    /// Waits up to `timeout` for the process to exit by itself; its status,
    /// or `None` if it is still running. An error on Ctrl-C.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = wait_child(&mut self.child, timeout, true)?;
        }
        Ok(self.status)
    }

    /// SIGTERM, then SIGKILL after [`STOP_GRACE`]; reaps the child.
    pub fn stop(&mut self) {
        if !self.is_running() {
            return;
        }
        signal_pid(self.pid(), libc::SIGTERM);
        if let Ok(Some(status)) = wait_child(&mut self.child, STOP_GRACE, false) {
            self.status = Some(status);
            return;
        }
        let _ = self.child.kill();
        if let Ok(Some(status)) = wait_child(&mut self.child, Duration::from_secs(2), false) {
            self.status = Some(status);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The run's scratch directory (logs, iperf3 output), mode 0700, removed
/// with everything in it on drop.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    pub fn new() -> Result<ScratchDir> {
        let path = std::env::temp_dir().join(format!("cwb-run-{}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path).with_context(|| format!("remove old {}", path.display()))?;
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("create {}", path.display()))?;
        Ok(ScratchDir { path })
    }

    /// A fresh file name in the directory: `<stem>-<n>.<ext>`.
    pub fn file(&self, stem: &str, ext: &str) -> PathBuf {
        self.path.join(format!("{stem}-{}.{ext}", next_id()))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
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
