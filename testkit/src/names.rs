//! Names that must not collide: interface names (unique per process and
//! per call, since every userspace implementation puts its UAPI socket in
//! the one /var/run/wireguard that all namespaces share), temporary file
//! names, and the small formatting helpers that go with addresses and time.
//! The only global state is a counter.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::uapi::socket_path;
use crate::{Error, Result};

/// Linux's limit on an interface name (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A number unique within this process.
pub fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// `n` in base 36 (digits, then lower-case letters).
pub fn base36(mut n: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(char::from(DIGITS[(n % 36) as usize]));
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.iter().rev().collect()
}

/// A fresh interface name, `<prefix><pid, 5 digits base 36><counter base 36>`:
/// unique among the names of this run and of concurrent runs (other PIDs),
/// 8 to 10 characters for a 2-character prefix. Names whose UAPI socket
/// already exists are skipped.
pub fn unique_ifname(prefix: &str) -> Result<String> {
    for _ in 0..1000 {
        // The PID is padded to 5 digits (36^5 > pid_max), so no two
        // (pid, counter) pairs give the same name.
        let name = format!(
            "{prefix}{:0>5}{}",
            base36(std::process::id()),
            base36(next_id())
        );
        if name.len() > IFNAME_MAX {
            return Err(Error::NoFreeName(format!(
                "{prefix} (interface name {name} is too long)"
            )));
        }
        if !socket_path(&name).exists() {
            return Ok(name);
        }
    }
    Err(Error::NoFreeName(prefix.to_owned()))
}

/// A fresh path in the temporary directory, `cwt-<kind>-<pid>-<n>.<ext>`
/// (nothing is created).
pub fn temp_path(kind: &str, ext: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "cwt-{kind}-{}-{}.{ext}",
        std::process::id(),
        next_id()
    ))
}

/// `ip:port`, bracketed for IPv6.
pub fn socket_addr(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// Seconds since the Unix epoch (what `wg show dump` reports handshakes in).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_digits() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }

    #[test]
    fn ifnames_are_unique_and_short() {
        let a = unique_ifname("cw").expect("a name");
        let b = unique_ifname("cw").expect("a name");
        assert_ne!(a, b);
        assert!(a.len() <= IFNAME_MAX && a.starts_with("cw"));
    }

    #[test]
    fn socket_addrs() {
        assert_eq!(socket_addr("10.0.0.1", 1), "10.0.0.1:1");
        assert_eq!(socket_addr("fd00::1", 2), "[fd00::1]:2");
    }
}
