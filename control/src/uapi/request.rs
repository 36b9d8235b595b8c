//! Parsing the lines of a UAPI `set=1` request into typed [`SetLine`]s.
//!
//! Syntax and structure are checked here, line by line, so a request can be
//! streamed: [`RequestParser`] knows whether it is in the device section or
//! a peer section and refuses keys in the wrong one. The meaning of the lines
//! (which peer exists, who owns an allowed IP) is `apply`'s job.
//!
//! Value syntax follows wireguard-go (`device/uapi.go`, checked at commit
//! f333402b): keys are exactly 64 hex digits in either case; `listen_port`,
//! `fwmark` and `persistent_keepalive_interval` are plain decimal (Go's
//! `ParseUint(v, 10, n)`: digits only, no sign, no `0x`; `wg` sends `%u`);
//! booleans are exactly `true` (wireguard-go refuses `false` too);
//! `protocol_version` must be `1`; `endpoint` is what Go's
//! `netip.ParseAddrPort` takes (`1.2.3.4:51820`, `[v6]:port`, `[v6%zone]:port`,
//! no host names: `wg` resolves names before it sends); `allowed_ip` is what
//! Go's `netip.ParsePrefix` takes (`ip/len`, the length in decimal without
//! leading zeros, no zone), optionally prefixed by `-` to remove it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use corewire_dataplane::engine::config::Prefix;
use corewire_dataplane::proto::keys::{PresharedKey, PrivateKey, PublicKey};

use super::error::UapiError;
use crate::config::mask_prefix;

/// One parsed line of a `set=1` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetLine {
    /// `private_key=`: the new key, or `None` for all zeros (remove it).
    PrivateKey(Option<PrivateKey>),
    /// `listen_port=` (0: let the engine pick).
    ListenPort(u16),
    /// `fwmark=` (0: none).
    Fwmark(u32),
    /// `replace_peers=true`.
    ReplacePeers,
    /// `public_key=`: starts a peer section.
    PublicKey(PublicKey),
    /// `remove=true`.
    Remove,
    /// `update_only=true`.
    UpdateOnly,
    /// `preshared_key=` (all zeros: none).
    PresharedKey(PresharedKey),
    /// `endpoint=`.
    Endpoint(SocketAddr),
    /// `persistent_keepalive_interval=` (0: off).
    PersistentKeepalive(u16),
    /// `replace_allowed_ips=true`.
    ReplaceAllowedIps,
    /// `allowed_ip=ip/len`, host bits cleared.
    AllowedIp(Prefix),
    /// `allowed_ip=-ip/len`, host bits cleared.
    RemoveAllowedIp(Prefix),
    /// `protocol_version=1`.
    ProtocolVersion,
}

impl SetLine {
    /// True for the keys of the device section.
    pub fn is_device_key(&self) -> bool {
        matches!(
            self,
            SetLine::PrivateKey(_)
                | SetLine::ListenPort(_)
                | SetLine::Fwmark(_)
                | SetLine::ReplacePeers
        )
    }

    /// The UAPI key of this line.
    pub fn key(&self) -> &'static str {
        match self {
            SetLine::PrivateKey(_) => "private_key",
            SetLine::ListenPort(_) => "listen_port",
            SetLine::Fwmark(_) => "fwmark",
            SetLine::ReplacePeers => "replace_peers",
            SetLine::PublicKey(_) => "public_key",
            SetLine::Remove => "remove",
            SetLine::UpdateOnly => "update_only",
            SetLine::PresharedKey(_) => "preshared_key",
            SetLine::Endpoint(_) => "endpoint",
            SetLine::PersistentKeepalive(_) => "persistent_keepalive_interval",
            SetLine::ReplaceAllowedIps => "replace_allowed_ips",
            SetLine::AllowedIp(_) | SetLine::RemoveAllowedIp(_) => "allowed_ip",
            SetLine::ProtocolVersion => "protocol_version",
        }
    }
}

/// Parses `set` lines in order and checks that each key is in its section
/// (device keys only before the first `public_key`, peer keys only after).
#[derive(Debug, Default)]
pub struct RequestParser {
    in_peer: bool,
}

impl RequestParser {
    /// A parser at the start of a request (device section).
    #[cfg(test)]
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses one line (without its `\n`; a trailing `\r` is dropped, as Go's
    /// line scanner does).
    pub fn parse(&mut self, line: &[u8]) -> Result<SetLine, UapiError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let parsed = parse_line(line)?;
        match &parsed {
            SetLine::PublicKey(_) => self.in_peer = true,
            l if l.is_device_key() && self.in_peer => {
                return Err(UapiError::DeviceKeyInPeer(l.key()))
            }
            l if !l.is_device_key() && !self.in_peer => {
                return Err(UapiError::PeerKeyOutsidePeer(l.key()))
            }
            _ => {}
        }
        Ok(parsed)
    }
}

/// Parses one `key=value` line on its own, without section checks.
pub fn parse_line(line: &[u8]) -> Result<SetLine, UapiError> {
    let eq = line
        .iter()
        .position(|&b| b == b'=')
        .ok_or(UapiError::NotKeyValue)?;
    let (key, value) = (&line[..eq], &line[eq + 1..]);
    let value = std::str::from_utf8(value).map_err(|_| UapiError::NotUtf8)?;
    let invalid =
        |key: &'static str, expected: &'static str| UapiError::InvalidValue { key, expected };
    Ok(match key {
        b"private_key" => {
            let k = PrivateKey::from_hex(value).map_err(|_| invalid("private_key", HEX))?;
            SetLine::PrivateKey(if k.is_zero() { None } else { Some(k) })
        }
        b"listen_port" => SetLine::ListenPort(
            parse_decimal(value, u64::from(u16::MAX))
                .and_then(|n| u16::try_from(n).ok())
                .ok_or(invalid("listen_port", "a port number 0-65535"))?,
        ),
        b"fwmark" => SetLine::Fwmark(
            parse_decimal(value, u64::from(u32::MAX))
                .and_then(|n| u32::try_from(n).ok())
                .ok_or(invalid("fwmark", "a decimal number 0-4294967295"))?,
        ),
        b"replace_peers" => {
            expect_true(value, "replace_peers")?;
            SetLine::ReplacePeers
        }
        b"public_key" => {
            SetLine::PublicKey(PublicKey::from_hex(value).map_err(|_| invalid("public_key", HEX))?)
        }
        b"remove" => {
            expect_true(value, "remove")?;
            SetLine::Remove
        }
        b"update_only" => {
            expect_true(value, "update_only")?;
            SetLine::UpdateOnly
        }
        b"preshared_key" => SetLine::PresharedKey(
            PresharedKey::from_hex(value).map_err(|_| invalid("preshared_key", HEX))?,
        ),
        b"endpoint" => SetLine::Endpoint(
            parse_endpoint(value).ok_or(invalid("endpoint", "ip:port or [ipv6%zone]:port"))?,
        ),
        b"persistent_keepalive_interval" => SetLine::PersistentKeepalive(
            parse_decimal(value, u64::from(u16::MAX))
                .and_then(|n| u16::try_from(n).ok())
                .ok_or(invalid("persistent_keepalive_interval", "seconds 0-65535"))?,
        ),
        b"replace_allowed_ips" => {
            expect_true(value, "replace_allowed_ips")?;
            SetLine::ReplaceAllowedIps
        }
        b"allowed_ip" => match value.strip_prefix('-') {
            Some(rest) => SetLine::RemoveAllowedIp(
                parse_prefix(rest).ok_or(invalid("allowed_ip", "[-]ip/len"))?,
            ),
            None => {
                SetLine::AllowedIp(parse_prefix(value).ok_or(invalid("allowed_ip", "[-]ip/len"))?)
            }
        },
        b"protocol_version" => {
            if value != "1" {
                return Err(invalid("protocol_version", "1"));
            }
            SetLine::ProtocolVersion
        }
        other => {
            // Keep the echo short and printable.
            let shown: String = String::from_utf8_lossy(&other[..other.len().min(64)])
                .chars()
                .map(|c| if c.is_ascii_graphic() { c } else { '?' })
                .collect();
            return Err(UapiError::UnknownKey(shown));
        }
    })
}

const HEX: &str = "64 hex digits";

fn expect_true(value: &str, key: &'static str) -> Result<(), UapiError> {
    if value == "true" {
        Ok(())
    } else {
        Err(UapiError::InvalidValue {
            key,
            expected: "true",
        })
    }
}

/// Plain decimal: at least one ASCII digit and nothing else (no sign, no
/// spaces, no `0x`), at most `max`.
pub fn parse_decimal(text: &str, max: u64) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for b in text.bytes() {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        if n > max {
            return None;
        }
    }
    Some(n)
}

/// `ip/len` with the host bits cleared, or `None`.
pub fn parse_prefix(text: &str) -> Option<Prefix> {
    let (ip, len) = text.split_once('/')?;
    // Go's ParsePrefix: decimal, no sign, no leading zero (except "0").
    if len.len() > 1 && len.starts_with('0') {
        return None;
    }
    let len = parse_decimal(len, 128)?;
    let addr: IpAddr = if ip.contains(':') {
        IpAddr::V6(ip.parse::<Ipv6Addr>().ok()?)
    } else {
        IpAddr::V4(ip.parse::<Ipv4Addr>().ok()?)
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max {
        return None;
    }
    Some(mask_prefix(addr, u8::try_from(len).ok()?))
}

/// `a.b.c.d:port`, `[v6]:port` or `[v6%zone]:port` (zone: an interface name
/// or a numeric scope id), or `None`. Host names are refused.
pub fn parse_endpoint(text: &str) -> Option<SocketAddr> {
    let (host, port) = text.rsplit_once(':')?;
    let port = u16::try_from(parse_decimal(port, u64::from(u16::MAX))?).ok()?;
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']')?;
        let (addr, zone) = match inner.split_once('%') {
            Some((addr, zone)) => (addr, Some(zone)),
            None => (inner, None),
        };
        // An IPv4 address in brackets is refused, as by Go's ParseAddrPort.
        let addr: Ipv6Addr = addr.parse().ok()?;
        let scope_id = match zone {
            None => 0,
            Some(zone) => zone_index(zone)?,
        };
        Some(SocketAddr::V6(SocketAddrV6::new(addr, port, 0, scope_id)))
    } else {
        // IPv6 without brackets is refused (Go: "IPv6 address without brackets").
        let addr: Ipv4Addr = host.parse().ok()?;
        Some(SocketAddr::V4(SocketAddrV4::new(addr, port)))
    }
}

/// A zone: a numeric scope id, or an interface name that exists now.
fn zone_index(zone: &str) -> Option<u32> {
    if zone.is_empty() {
        return None;
    }
    if zone.bytes().all(|b| b.is_ascii_digit()) {
        return u32::try_from(parse_decimal(zone, u64::from(u32::MAX))?).ok();
    }
    // IFNAMSIZ is 16 including the NUL.
    if zone.len() > 15 || zone.bytes().any(|b| b == 0) {
        return None;
    }
    let mut name = [0u8; 16];
    name[..zone.len()].copy_from_slice(zone.as_bytes());
    // SAFETY: `name` is NUL-terminated (at most 15 bytes of text in 16) and
    // lives across the call; if_nametoindex only reads it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr().cast()) };
    (index != 0).then_some(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";

    fn p(line: &str) -> Result<SetLine, UapiError> {
        parse_line(line.as_bytes())
    }

    fn invalid(line: &str) {
        let e = p(line).expect_err(line);
        assert_eq!(e.errno(), -libc::EINVAL, "{line}: {e}");
    }

    #[test]
    fn keys_hex_either_case() {
        let lower = p(&format!("public_key={K1}")).unwrap();
        let upper = p(&format!("public_key={}", K1.to_uppercase())).unwrap();
        assert_eq!(lower, upper);
        assert_eq!(lower, SetLine::PublicKey(PublicKey::from_hex(K1).unwrap()));
        invalid(&format!("public_key={}", &K1[..62]));
        invalid(&format!("public_key={K1}00"));
        invalid(&format!("public_key={}g", &K1[..63]));
        invalid("public_key=");
        invalid(&format!("public_key= {}", &K1[..63]));
    }

    #[test]
    fn private_key_zero_means_remove() {
        assert_eq!(
            p(&format!("private_key={}", "0".repeat(64))).unwrap(),
            SetLine::PrivateKey(None)
        );
        let k = PrivateKey::generate();
        assert_eq!(
            p(&format!("private_key={}", k.to_hex())).unwrap(),
            SetLine::PrivateKey(Some(k))
        );
        invalid("private_key=abc");
    }

    #[test]
    fn preshared_key() {
        let k = PresharedKey::generate();
        assert_eq!(
            p(&format!("preshared_key={}", k.to_hex())).unwrap(),
            SetLine::PresharedKey(k)
        );
        assert_eq!(
            p(&format!("preshared_key={}", "0".repeat(64))).unwrap(),
            SetLine::PresharedKey(PresharedKey::default())
        );
        invalid("preshared_key=00");
    }

    #[test]
    fn numbers() {
        assert_eq!(p("listen_port=51820").unwrap(), SetLine::ListenPort(51820));
        assert_eq!(p("listen_port=0").unwrap(), SetLine::ListenPort(0));
        assert_eq!(p("listen_port=065535").unwrap(), SetLine::ListenPort(65535));
        invalid("listen_port=65536");
        invalid("listen_port=-1");
        invalid("listen_port=+1");
        invalid("listen_port=");
        invalid("listen_port= 1");
        invalid("listen_port=1 ");
        assert_eq!(p("fwmark=4294967295").unwrap(), SetLine::Fwmark(u32::MAX));
        assert_eq!(p("fwmark=0").unwrap(), SetLine::Fwmark(0));
        invalid("fwmark=4294967296");
        invalid("fwmark=0x10");
        invalid("fwmark=off");
        assert_eq!(
            p("persistent_keepalive_interval=25").unwrap(),
            SetLine::PersistentKeepalive(25)
        );
        invalid("persistent_keepalive_interval=65536");
        invalid("persistent_keepalive_interval=99999999999999999999999");
    }

    #[test]
    fn booleans_are_exactly_true() {
        assert_eq!(p("replace_peers=true").unwrap(), SetLine::ReplacePeers);
        assert_eq!(p("remove=true").unwrap(), SetLine::Remove);
        assert_eq!(p("update_only=true").unwrap(), SetLine::UpdateOnly);
        assert_eq!(
            p("replace_allowed_ips=true").unwrap(),
            SetLine::ReplaceAllowedIps
        );
        for key in [
            "replace_peers",
            "remove",
            "update_only",
            "replace_allowed_ips",
        ] {
            for v in ["false", "TRUE", "1", "", "true "] {
                invalid(&format!("{key}={v}"));
            }
        }
    }

    #[test]
    fn protocol_version() {
        assert_eq!(p("protocol_version=1").unwrap(), SetLine::ProtocolVersion);
        invalid("protocol_version=2");
        invalid("protocol_version=0");
        invalid("protocol_version=");
    }

    #[test]
    fn endpoints() {
        let ep = |s: &str| match p(&format!("endpoint={s}")) {
            Ok(SetLine::Endpoint(e)) => Some(e),
            _ => None,
        };
        assert_eq!(ep("1.2.3.4:51820"), Some("1.2.3.4:51820".parse().unwrap()));
        assert_eq!(
            ep("[2001:db8::1]:51820"),
            Some("[2001:db8::1]:51820".parse().unwrap())
        );
        assert_eq!(
            ep("[::ffff:1.2.3.4]:1"),
            Some("[::ffff:1.2.3.4]:1".parse().unwrap())
        );
        assert_eq!(ep("1.2.3.4:0"), Some("1.2.3.4:0".parse().unwrap()));
        let zoned = ep("[fe80::1%7]:51820").unwrap();
        assert_eq!(
            zoned,
            SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 51820, 0, 7))
        );
        let lo = ep("[fe80::1%lo]:51820").unwrap();
        match lo {
            SocketAddr::V6(a) => assert_ne!(a.scope_id(), 0),
            SocketAddr::V4(_) => panic!("v4"),
        }
        for bad in [
            "example.com:51820",
            "localhost:1",
            "1.2.3.4",
            "1.2.3.4:",
            "1.2.3.4:65536",
            "1.2.3.4:-1",
            "1.2.3:1",
            "01.2.3.4:1",
            "2001:db8::1:51820",
            "[2001:db8::1]",
            "[2001:db8::1]51820",
            "[1.2.3.4]:1",
            "[fe80::1%]:1",
            "[fe80::1%nosuchif0]:1",
            "[fe80::1%4294967296]:1",
            "",
        ] {
            assert_eq!(ep(bad), None, "{bad}");
            invalid(&format!("endpoint={bad}"));
        }
    }

    #[test]
    fn prefixes() {
        let v = |s: &str| p(&format!("allowed_ip={s}"));
        assert_eq!(
            v("10.1.2.3/8").unwrap(),
            SetLine::AllowedIp(("10.0.0.0".parse().unwrap(), 8))
        );
        assert_eq!(
            v("-10.1.2.3/32").unwrap(),
            SetLine::RemoveAllowedIp(("10.1.2.3".parse().unwrap(), 32))
        );
        assert_eq!(
            v("0.0.0.0/0").unwrap(),
            SetLine::AllowedIp(("0.0.0.0".parse().unwrap(), 0))
        );
        assert_eq!(
            v("2001:db8::1/32").unwrap(),
            SetLine::AllowedIp(("2001:db8::".parse().unwrap(), 32))
        );
        assert_eq!(
            v("::/0").unwrap(),
            SetLine::AllowedIp(("::".parse().unwrap(), 0))
        );
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0",
            "10.0.0.0/",
            "10.0.0.0/08",
            "10.0.0.0/+8",
            "10.0.0.0/-8",
            "10.0.0/8",
            "fe80::1%eth0/64",
            "--10.0.0.0/8",
            "+10.0.0.0/8",
            "host/32",
            "10.0.0.0/8/8",
            "",
        ] {
            invalid(&format!("allowed_ip={bad}"));
        }
    }

    #[test]
    fn unknown_and_malformed_lines() {
        assert_eq!(p("listen_port").unwrap_err().errno(), -libc::EPROTO);
        assert_eq!(p("").unwrap_err().errno(), -libc::EPROTO);
        invalid("listenport=1");
        invalid("=1");
        invalid("LISTEN_PORT=1");
        invalid("get=1");
        assert!(matches!(p("x\u{1}y=1"), Err(UapiError::UnknownKey(k)) if k == "x?y"));
        assert_eq!(
            parse_line(b"endpoint=\xff").unwrap_err(),
            UapiError::NotUtf8
        );
    }

    #[test]
    fn sections() {
        let mut r = RequestParser::new();
        assert!(r.parse(b"listen_port=1").is_ok());
        assert_eq!(
            r.parse(b"remove=true"),
            Err(UapiError::PeerKeyOutsidePeer("remove"))
        );
        assert!(
            r.parse(format!("public_key={K1}\r").as_bytes()).is_ok(),
            "CR dropped"
        );
        assert!(r.parse(b"allowed_ip=10.0.0.0/8").is_ok());
        assert_eq!(
            r.parse(b"listen_port=1"),
            Err(UapiError::DeviceKeyInPeer("listen_port"))
        );
        assert_eq!(
            r.parse(b"replace_peers=true"),
            Err(UapiError::DeviceKeyInPeer("replace_peers"))
        );
    }

    #[test]
    fn error_messages_never_echo_secrets() {
        let secret = format!("{}zz", &K1[..62]);
        let e = p(&format!("private_key={secret}")).unwrap_err();
        assert!(!format!("{e} {e:?}").contains(&secret[..20]));
        let e = p(&format!("preshared_key={secret}")).unwrap_err();
        assert!(!format!("{e} {e:?}").contains(&secret[..20]));
    }
}
