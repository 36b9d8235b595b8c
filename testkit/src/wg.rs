//! The `wg` tool: key pairs, `wg set` in one transaction with the private
//! key on stdin, and `wg show <if> dump` parsed.

use std::time::Duration;

use crate::command::{command, run_ok};
use crate::names::unix_now;
use crate::netns::Netns;
use crate::{Error, Result};

/// A key pair from `wg genkey` and `wg pubkey` (base64).
#[derive(Debug, Clone)]
pub struct Keypair {
    pub private: String,
    pub public: String,
}

impl Keypair {
    /// Runs `wg genkey` and `wg pubkey` (from PATH).
    pub fn generate() -> Result<Keypair> {
        let private = run_ok(command("wg", &["genkey"]), None)?.trim().to_owned();
        let public = run_ok(
            command("wg", &["pubkey"]),
            Some(format!("{private}\n").as_bytes()),
        )?
        .trim()
        .to_owned();
        if private.is_empty() || public.is_empty() {
            return Err(Error::Parse {
                what: "wg genkey/pubkey",
                problem: "printed nothing".to_owned(),
            });
        }
        Ok(Keypair { private, public })
    }

    /// The public key's 32 bytes; an error if it is not base64 of 32
    /// bytes (which `wg pubkey` never prints).
    pub fn public_bytes(&self) -> Result<[u8; 32]> {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(self.public.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Error::Parse {
                what: "public key",
                problem: format!("{:?} is not base64 of 32 bytes", self.public),
            })
    }
}

/// `wg args...` in the namespace; an error unless it succeeds; stdout.
pub fn wg(ns: &Netns, args: &[&str]) -> Result<String> {
    ns.exec_ok("wg", args)
}

/// `wg set <ifname> args...`.
pub fn wg_set(ns: &Netns, ifname: &str, args: &[&str]) -> Result<()> {
    let mut all = vec!["set", ifname];
    all.extend_from_slice(args);
    wg(ns, &all).map(drop)
}

/// `wg set <ifname> private-key /dev/stdin args...`, the key on stdin (no
/// key file). Pass the rest of the configuration (`listen-port`, `peer ...`)
/// in `args`: one `wg set` is one UAPI transaction. gotatun 0.10.2 shuts down
/// about one time in eight ("Unexpected error on tun interface: channel
/// closed") when a peer is added by a second `wg set` right after the
/// private key was set by a first.
pub fn wg_set_private_key(
    ns: &Netns,
    ifname: &str,
    private_key: &str,
    args: &[&str],
) -> Result<()> {
    let mut all = vec!["set", ifname, "private-key", "/dev/stdin"];
    all.extend_from_slice(args);
    run_ok(
        ns.command("wg", &all),
        Some(format!("{private_key}\n").as_bytes()),
    )
    .map(drop)
}

/// `wg show <ifname> dump`, parsed.
pub fn wg_show_dump(ns: &Netns, ifname: &str) -> Result<WgDump> {
    let text = wg(ns, &["show", ifname, "dump"])?;
    WgDump::parse(&text).map_err(|problem| Error::Parse {
        what: "wg show dump",
        problem: format!("{ifname}: {problem}\n{text}"),
    })
}

/// `wg show <ifname> dump`: the interface line and one line per peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgDump {
    pub private_key: String,
    pub public_key: String,
    pub listen_port: u16,
    /// None for "off".
    pub fwmark: Option<u32>,
    pub peers: Vec<WgPeerDump>,
}

/// One peer line of [`WgDump`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgPeerDump {
    pub public_key: String,
    /// None for "(none)".
    pub preshared_key: Option<String>,
    /// "10.99.0.2:51820" or "[fd00::2]:51820"; None for "(none)".
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
    /// Unix seconds; 0 = never.
    pub latest_handshake: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Seconds; None for "off".
    pub persistent_keepalive: Option<u16>,
}

impl WgPeerDump {
    /// Time since the latest handshake; None if there was none. (boringtun
    /// reports it differently: see `WgImpl::handshake_age`.)
    pub fn handshake_age(&self) -> Option<Duration> {
        if self.latest_handshake == 0 {
            return None;
        }
        Some(Duration::from_secs(
            unix_now().saturating_sub(self.latest_handshake),
        ))
    }
}

impl WgDump {
    pub fn parse(text: &str) -> Result<WgDump, String> {
        let mut lines = text.lines().filter(|l| !l.is_empty());
        let head: Vec<&str> = lines.next().ok_or("empty dump")?.split('\t').collect();
        let [private_key, public_key, port, fwmark] = head[..] else {
            return Err(format!("interface line has {} fields, not 4", head.len()));
        };
        let num = |s: &str| s.parse::<u64>().map_err(|e| format!("{s:?}: {e}"));
        let none = |s: &str| (s != "(none)").then(|| s.to_owned());
        let mut peers = Vec::new();
        for line in lines {
            let f: Vec<&str> = line.split('\t').collect();
            let [pk, psk, endpoint, allowed, handshake, rx, tx, keepalive] = f[..] else {
                return Err(format!("peer line has {} fields, not 8: {line:?}", f.len()));
            };
            peers.push(WgPeerDump {
                public_key: pk.to_owned(),
                preshared_key: none(psk),
                endpoint: none(endpoint),
                allowed_ips: if allowed == "(none)" {
                    Vec::new()
                } else {
                    allowed.split(',').map(str::to_owned).collect()
                },
                latest_handshake: num(handshake)?,
                rx_bytes: num(rx)?,
                tx_bytes: num(tx)?,
                persistent_keepalive: if keepalive == "off" {
                    None
                } else {
                    Some(
                        keepalive
                            .parse()
                            .map_err(|e| format!("{keepalive:?}: {e}"))?,
                    )
                },
            });
        }
        Ok(WgDump {
            private_key: private_key.to_owned(),
            public_key: public_key.to_owned(),
            listen_port: port.parse().map_err(|e| format!("{port:?}: {e}"))?,
            fwmark: match fwmark {
                "off" => None,
                hex => Some(
                    u32::from_str_radix(hex.trim_start_matches("0x"), 16)
                        .map_err(|e| format!("{hex:?}: {e}"))?,
                ),
            },
            peers,
        })
    }

    pub fn peer(&self, public_key: &str) -> Option<&WgPeerDump> {
        self.peers.iter().find(|p| p.public_key == public_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_dump() {
        let text = "priv\tpub\t51820\toff\n\
                    peer1\t(none)\t10.0.0.2:51820\t10.0.0.2/32,fd00::2/128\t0\t1\t2\t25\n\
                    peer2\tpsk\t(none)\t(none)\t1700000000\t0\t0\toff\n";
        let dump = WgDump::parse(text).expect("parses");
        assert_eq!(dump.listen_port, 51820);
        assert_eq!(dump.fwmark, None);
        let p1 = dump.peer("peer1").expect("peer1");
        assert_eq!(p1.allowed_ips, ["10.0.0.2/32", "fd00::2/128"]);
        assert_eq!(p1.persistent_keepalive, Some(25));
        assert_eq!(p1.handshake_age(), None);
        let p2 = dump.peer("peer2").expect("peer2");
        assert_eq!(p2.preshared_key.as_deref(), Some("psk"));
        assert!(p2.allowed_ips.is_empty() && p2.endpoint.is_none());
        assert!(WgDump::parse("a\tb\t1\t0x10\n").is_ok_and(|d| d.fwmark == Some(16)));
        assert!(WgDump::parse("").is_err());
        assert!(WgDump::parse("a\tb\t1\toff\nshort\tline\n").is_err());
    }
}
