//! Daemonizing the way wg-quick needs it.
//!
//! wg-quick runs `corewire IFNAME` and immediately configures the interface,
//! so the launching process may exit only when the TUN device and the UAPI
//! socket exist, with status 0, or with a non-zero status and a one-line
//! reason when setup failed. We fork before anything else (a process with
//! threads cannot fork safely): the child sets everything up and reports
//! over a pipe; the parent waits for that report and exits with it. Once
//! ready, the child points its stdio at /dev/null, so a caller capturing
//! wg-quick's output (`$(wg-quick up x)`, a CI log) is not held open by the
//! daemon.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The child's end of the readiness pipe.
#[derive(Debug)]
pub struct Readiness {
    pipe: Option<File>,
    keep_stderr: bool,
}

impl Readiness {
    /// No parent waits (foreground mode).
    pub fn foreground() -> Self {
        Self {
            pipe: None,
            keep_stderr: true,
        }
    }

    /// Whether stderr stays open once ready (the log goes on there, as
    /// wireguard-go's does when `LOG_LEVEL` is set: under systemd that is
    /// the journal). stdin and stdout are detached either way, so
    /// `$(wg-quick up x)` does not wait for the daemon.
    pub fn keep_stderr(&mut self, keep: bool) {
        self.keep_stderr |= keep;
    }

    /// Setup finished: tell the parent, then detach stdio.
    pub fn ready(&mut self) {
        if let Some(mut p) = self.pipe.take() {
            let _ = p.write_all(b"ok\n");
            drop(p);
            detach_stdio(self.keep_stderr);
        }
    }

    /// Setup failed: give the parent the reason (it prints it and exits 1).
    pub fn fail(&mut self, reason: &str) {
        match self.pipe.take() {
            Some(mut p) => {
                let _ = p.write_all(format!("{reason}\n").as_bytes());
            }
            None => eprintln!("corewire: {reason}"),
        }
    }
}

fn pipe() -> std::io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: fds points to two ints for the kernel to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nothing else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((File::from(r), File::from(w)))
}

/// Forks. Returns in the child with its end of the pipe; in the parent it
/// waits for the child's report and exits the process with it.
pub fn daemonize() -> std::io::Result<Readiness> {
    let (mut read, write) = pipe()?;
    // SAFETY: called before any thread is started (main calls this first),
    // so the child is a faithful single-threaded copy.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            drop(read);
            close_inherited_fds(write.as_raw_fd());
            // SAFETY: plain syscalls on the calling process.
            unsafe {
                libc::setsid();
            }
            let _ = std::env::set_current_dir("/");
            Ok(Readiness {
                pipe: Some(write),
                keep_stderr: false,
            })
        }
        child => {
            drop(write);
            let mut report = String::new();
            let _ = read.read_to_string(&mut report);
            let report = report.trim_end();
            if report == "ok" {
                std::process::exit(0);
            }
            if report.is_empty() {
                // The child died without a word: collect its status.
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(child, &mut status, 0) };
                eprintln!("corewire: the daemon exited during startup (status {status})");
            } else {
                eprintln!("corewire: {report}");
            }
            std::process::exit(1);
        }
    }
}

/// Closes every descriptor from 3 up except `keep`. A daemon that kept its
/// launcher's descriptors would hold the caller's pipes and locks open for
/// as long as it runs (a shell waiting for EOF, a `flock` on fd 9).
fn close_inherited_fds(keep: RawFd) {
    let keep = keep as libc::c_uint;
    // SAFETY: closing descriptors this fresh, single-threaded child owns;
    // nothing in it refers to them any more.
    unsafe {
        if keep > 3 {
            libc::close_range(3, keep - 1, 0);
        }
        libc::close_range(keep + 1, libc::c_uint::MAX, 0);
    }
}

/// Points stdin, stdout and (unless `keep_stderr`) stderr at /dev/null.
fn detach_stdio(keep_stderr: bool) {
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return;
    };
    let last = if keep_stderr { 2 } else { 3 };
    for fd in 0..last {
        // SAFETY: dup2 onto the standard descriptors, which we own.
        unsafe { libc::dup2(null.as_raw_fd(), fd) };
    }
}
