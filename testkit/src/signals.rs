//! A stop request: Ctrl-C (SIGINT), SIGTERM and SIGHUP set a flag instead
//! of killing the process, so the guards can clean up. Every bounded wait
//! in this crate returns early once the flag is set, and the caller checks
//! it with [`check`]. Only netbench installs the handler; in tests the flag
//! is never set and a Ctrl-C ends the test process as usual.
//!
//! Once the handler is installed, children are started in their own process
//! group, so the terminal's SIGINT reaches only this process, which stops
//! them in order. Without it (tests) children stay in our group and die
//! with us if the run is interrupted.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static INSTALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the handler for SIGINT, SIGTERM and SIGHUP.
pub fn install() -> std::io::Result<()> {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe; glibc's signal() installs it with SA_RESTART.
        let previous = unsafe { libc::signal(signal, handler) };
        if previous == libc::SIG_ERR {
            return Err(std::io::Error::last_os_error());
        }
    }
    INSTALLED.store(true, Ordering::SeqCst);
    Ok(())
}

/// Whether [`install`] ran: then children get their own process group.
pub fn installed() -> bool {
    INSTALLED.load(Ordering::SeqCst)
}

/// Whether a stop was asked for.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// [`Error::Interrupted`](crate::Error::Interrupted) if a stop was asked
/// for: `?` it between steps and after a wait that returned early.
pub fn check() -> crate::Result<()> {
    if interrupted() {
        return Err(crate::Error::Interrupted);
    }
    Ok(())
}
