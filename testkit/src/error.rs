//! The one error type of the crate. Callers that want a panic (tests) turn
//! it into one with its `Display`, which carries the command, its output or
//! the end of a log; netbench records it for the measurement and goes on.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// What went wrong while running a tool, a daemon or a namespace.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A program could not be started.
    #[error("spawn {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A file or directory could not be created, written or read.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A command was still running at its time limit and was killed.
    #[error("{what}: still running after {timeout:?}; killed\nstdout: {stdout}\nstderr: {stderr}")]
    Timeout {
        what: String,
        timeout: Duration,
        stdout: String,
        stderr: String,
    },
    /// A command exited unsuccessfully.
    #[error("{what} failed ({status}): {}{}", stderr.trim(), stdout.trim())]
    Failed {
        what: String,
        status: ExitStatus,
        stdout: String,
        stderr: String,
    },
    /// A stop was asked for (Ctrl-C under netbench) during a wait.
    #[error("interrupted")]
    Interrupted,
    /// A WireGuard daemon did not come up as its launch recipe promises.
    #[error("{what}: {problem}; last log lines:\n{log}")]
    Daemon {
        what: String,
        problem: String,
        log: String,
    },
    /// A veth link did not come up, a server did not listen, and the like.
    #[error("{0}")]
    NotReady(String),
    /// Output of a tool (iperf3 JSON, `wg show dump`) that does not parse.
    #[error("{what}: {problem}")]
    Parse { what: &'static str, problem: String },
    /// iperf3 reported an error, or a report without a receiver's view.
    #[error("iperf3: {0}")]
    Iperf3(String),
    /// A flood could not be set up (namespace, sockets) or its thread died.
    #[error("flood: {0}")]
    Flood(String),
    /// No unused interface name was left for a prefix.
    #[error("no free interface name with prefix {0}")]
    NoFreeName(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Error {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
