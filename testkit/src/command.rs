//! Running a command to completion within a time limit, and bounded polls.
//!
//! Output goes through temporary files rather than pipes, so nothing can
//! block on a full pipe, and a daemon that inherits our stdout/stderr
//! (wireguard-go with LOG_LEVEL set) cannot make us wait for it. A command
//! still running at its limit is killed. Every wait here is bounded.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::names::temp_path;
use crate::{signals, Error, Result};

/// Time limit for one short command (`ip`, `wg`, ...).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// A `Command` for `program args...`.
pub fn command(program: impl AsRef<OsStr>, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd
}

/// Puts a child about to be spawned in its own process group when this
/// process handles Ctrl-C itself (see [`signals`]).
pub(crate) fn own_group(cmd: &mut Command) {
    if signals::installed() {
        cmd.process_group(0);
    }
}

/// Runs `cmd` to completion within `timeout`, killing it after; stdin gets
/// `stdin` (small inputs only: keys). Any exit status is returned. Not
/// interruptible: also used by cleanup after a Ctrl-C.
pub fn run(mut cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<Output> {
    let what = format!("{cmd:?}");
    let out_path = temp_path("out", "stdout");
    let err_path = temp_path("out", "stderr");
    let status = run_into(&mut cmd, &what, stdin, timeout, &out_path, &err_path);
    let stdout = fs::read(&out_path).unwrap_or_default();
    let stderr = fs::read(&err_path).unwrap_or_default();
    let _ = fs::remove_file(&out_path);
    let _ = fs::remove_file(&err_path);
    match status? {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => Err(Error::Timeout {
            what,
            timeout,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }),
    }
}

/// `Ok(None)`: killed at the time limit.
fn run_into(
    cmd: &mut Command,
    what: &str,
    stdin: Option<&[u8]>,
    timeout: Duration,
    out_path: &Path,
    err_path: &Path,
) -> Result<Option<ExitStatus>> {
    let out = File::create(out_path).map_err(|e| Error::io("create", out_path, e))?;
    let err = File::create(err_path).map_err(|e| Error::io("create", err_path, e))?;
    cmd.stdout(out).stderr(err);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    own_group(cmd);
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        what: what.to_owned(),
        source,
    })?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // Small inputs only (keys): they fit in the pipe buffer.
        let _ = pipe.write_all(data);
    }
    let status = wait_child(&mut child, timeout, false);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    Ok(status)
}

/// Runs `cmd` within [`COMMAND_TIMEOUT`]; an error unless it exits 0.
/// Returns its stdout.
pub fn run_ok(cmd: Command, stdin: Option<&[u8]>) -> Result<String> {
    let what = format!("{cmd:?}");
    let out = run(cmd, stdin, COMMAND_TIMEOUT)?;
    if !out.status.success() {
        return Err(Error::Failed {
            what,
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits (bounded) for our own child to exit, reaping it; `None` at the
/// limit, or earlier on a stop request when `interruptible`.
pub(crate) fn wait_child(
    child: &mut Child,
    timeout: Duration,
    interruptible: bool,
) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(_) => return None,
        }
        let now = Instant::now();
        if now >= deadline || (interruptible && signals::interrupted()) {
            return None;
        }
        sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Polls `condition` every `poll` until it holds (true) or `timeout` passes
/// (false); checks once more at the deadline. Returns false early on a stop
/// request (see [`signals`]).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_reports_failure() {
        let out = run(
            command("sh", &["-c", "echo hi; exit 3"]),
            None,
            COMMAND_TIMEOUT,
        )
        .expect("sh runs");
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"hi\n");
        let err = run_ok(command("sh", &["-c", "echo oops >&2; exit 1"]), None)
            .expect_err("exit 1 is an error");
        assert!(err.to_string().contains("oops"), "{err}");
    }

    #[test]
    fn feeds_stdin() {
        let out = run_ok(command("cat", &[]), Some(b"key\n")).expect("cat runs");
        assert_eq!(out, "key\n");
    }

    #[test]
    fn kills_at_the_limit() {
        let started = Instant::now();
        let err =
            run(command("sleep", &["10"]), None, Duration::from_millis(200)).expect_err("killed");
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn waits_are_bounded() {
        let mut n = 0;
        assert!(wait_until(
            Duration::from_secs(1),
            Duration::from_millis(1),
            || {
                n += 1;
                n == 3
            }
        ));
        assert!(!wait_until(
            Duration::from_millis(30),
            Duration::from_millis(5),
            || false
        ));
    }
}
