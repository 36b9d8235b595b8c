//! systemd's readiness protocol (`sd_notify`), without libsystemd: when a
//! `Type=notify` unit starts the daemon, systemd puts a datagram socket's
//! path in `NOTIFY_SOCKET`; the daemon sends `READY=1` there once the
//! interface and its UAPI socket exist, and `STOPPING=1` when it leaves.
//! Without the variable nothing is sent.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Where systemd listens, if it does: a path, or an abstract name (`@...`).
fn socket() -> Option<SocketAddr> {
    let path = std::env::var_os("NOTIFY_SOCKET")?;
    let bytes = path.as_encoded_bytes();
    match bytes.split_first() {
        Some((b'@', name)) => SocketAddr::from_abstract_name(name).ok(),
        Some(_) => SocketAddr::from_pathname(&path).ok(),
        None => None,
    }
}

/// Sends `state` (newline-separated `KEY=value` lines); a failure is only
/// logged, since the daemon works the same without a supervisor.
fn send(state: &str) {
    let Some(addr) = socket() else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|s| s.send_to_addr(state.as_bytes(), &addr));
    if let Err(e) = sent {
        tracing::warn!("cannot notify systemd ({state:?}): {e}");
    }
}

/// The interface and its UAPI socket exist.
pub fn ready() {
    send(&format!(
        "READY=1\nMAINPID={}\nSTATUS=serving",
        std::process::id()
    ));
}

/// The daemon is leaving.
pub fn stopping() {
    send("STOPPING=1");
}
