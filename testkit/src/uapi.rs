//! The UAPI socket every userspace implementation serves in
//! /var/run/wireguard (one directory shared by all namespaces), and a
//! bounded `get=1` on it: how a harness knows a daemon is ready.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where every userspace implementation puts `<ifname>.sock`.
pub const SOCKET_DIR: &str = "/var/run/wireguard";
/// Time limit for one UAPI exchange.
const UAPI_TIMEOUT: Duration = Duration::from_secs(2);
/// A reply longer than this is not one we wait for.
const MAX_REPLY: usize = 1 << 20;

/// `/var/run/wireguard/<ifname>.sock`.
pub fn socket_path(ifname: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{ifname}.sock"))
}

/// Sends `get=1` on the interface's UAPI socket; the reply without the final
/// `errno=0` line, or None if there is no socket, it does not answer within
/// 2 s, or the errno is not 0.
pub fn uapi_get(ifname: &str) -> Option<String> {
    let mut sock = UnixStream::connect(socket_path(ifname)).ok()?;
    sock.set_read_timeout(Some(UAPI_TIMEOUT)).ok()?;
    sock.set_write_timeout(Some(UAPI_TIMEOUT)).ok()?;
    sock.write_all(b"get=1\n\n").ok()?;
    let deadline = Instant::now() + UAPI_TIMEOUT;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    // The connection stays open for more requests: stop at the errno line.
    while Instant::now() < deadline && reply.len() < MAX_REPLY {
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

/// Removes a socket file nobody answers on any more (gotatun leaves its
/// socket behind on SIGTERM). A live socket is left alone.
pub fn remove_dead_socket(ifname: &str) {
    let sock = socket_path(ifname);
    if sock.exists() && UnixStream::connect(&sock).is_err() {
        let _ = std::fs::remove_file(sock);
    }
}
