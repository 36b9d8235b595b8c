//! UAPI tests against a fake in-memory engine: set/get round trips, the
//! transaction rules, refusals that must leave everything untouched, the
//! unix socket server, and (ignored in debug builds) the bulk-load timing.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use corewire_dataplane::engine::config::{
    ApplyError, Change, Device, DeviceStats, PeerConfig, PeerStats,
};
use corewire_dataplane::proto::keys::{PresharedKey, PrivateKey, PublicKey};

use super::apply::{set_from_text, Transaction};
use super::error::UapiError;
use super::get::{render_get, write_get};
use super::server::{serve_connection, ConnectionEnd, Shutdown, UapiServer, SOCKET_DIR};
use crate::config::DeviceConfig;

/// Records every change list; answers configurable stats; can refuse.
#[derive(Debug, Default)]
pub(crate) struct FakeDevice {
    pub applied: Vec<Vec<Change>>,
    pub fail_with: Option<ApplyError>,
    pub stats: DeviceStats,
}

impl Device for FakeDevice {
    fn apply(&mut self, changes: Vec<Change>) -> Result<(), ApplyError> {
        if let Some(e) = self.fail_with.clone() {
            return Err(e);
        }
        self.applied.push(changes);
        Ok(())
    }

    fn stats(&mut self) -> Result<DeviceStats, ApplyError> {
        Ok(self.stats.clone())
    }
}

fn pk(n: u8) -> PublicKey {
    PublicKey::from_bytes([n; 32])
}

fn hex(n: u8) -> String {
    pk(n).to_hex()
}

fn prefix(s: &str) -> (std::net::IpAddr, u8) {
    let (a, l) = s.split_once('/').unwrap();
    (a.parse().unwrap(), l.parse().unwrap())
}

struct Fixture {
    config: DeviceConfig,
    device: FakeDevice,
}

impl Fixture {
    fn new() -> Self {
        Self {
            config: DeviceConfig::new(),
            device: FakeDevice::default(),
        }
    }

    fn set(&mut self, body: &str) -> Result<(), UapiError> {
        set_from_text(&mut self.config, &mut self.device, body)
    }

    fn ok(&mut self, body: &str) -> Vec<Change> {
        let before = self.device.applied.len();
        if let Err(e) = self.set(body) {
            panic!("set failed: {e} ({})\n{body}", e.errno());
        }
        if self.device.applied.len() == before {
            Vec::new()
        } else {
            self.device.applied.last().cloned().unwrap_or_default()
        }
    }

    fn get(&mut self) -> String {
        render_get(&self.config, &self.device.stats().unwrap())
    }

    fn order(&self) -> Vec<PublicKey> {
        self.config.peers().map(|p| p.public_key).collect()
    }

    fn ips(&self, n: u8) -> Vec<(std::net::IpAddr, u8)> {
        self.config.peer(&pk(n)).unwrap().allowed_ips.clone()
    }
}

fn peer_change(changes: &[Change], n: u8) -> Option<&PeerConfig> {
    changes.iter().find_map(|c| match c {
        Change::Peer(p) if p.public_key == pk(n) => Some(p),
        _ => None,
    })
}

#[test]
fn set_then_get_round_trip() {
    let mut f = Fixture::new();
    let sk = PrivateKey::from_bytes([0x42; 32]);
    let psk = PresharedKey::from_bytes([0x17; 32]);
    let body = format!(
        "private_key={}\nlisten_port=51820\nfwmark=4660\n\
         public_key={}\npreshared_key={}\nendpoint=192.0.2.1:51820\n\
         persistent_keepalive_interval=25\nreplace_allowed_ips=true\n\
         allowed_ip=10.0.0.1/24\nallowed_ip=2001:db8::1/64\nprotocol_version=1\n\
         public_key={}\nendpoint=[2001:db8::9]:1234\nallowed_ip=10.1.0.0/16\n",
        sk.to_hex(),
        hex(1),
        psk.to_hex(),
        hex(2)
    );
    let changes = f.ok(&body);
    assert_eq!(
        changes[..3],
        [
            Change::ListenPort(51820),
            Change::Fwmark(4660),
            Change::PrivateKey(Some(sk.clone()))
        ]
    );
    let p1 = peer_change(&changes, 1).unwrap();
    assert_eq!(p1.endpoint, Some("192.0.2.1:51820".parse().unwrap()));
    assert_eq!(
        p1.allowed_ips,
        vec![prefix("10.0.0.0/24"), prefix("2001:db8::/64")]
    );
    assert_eq!(changes.len(), 5);

    let zero = "0".repeat(64);
    let expected = format!(
        "private_key={}\nlisten_port=51820\nfwmark=4660\n\
         public_key={}\npreshared_key={}\nprotocol_version=1\nendpoint=192.0.2.1:51820\n\
         last_handshake_time_sec=0\nlast_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\n\
         persistent_keepalive_interval=25\nallowed_ip=10.0.0.0/24\nallowed_ip=2001:db8::/64\n\
         public_key={}\npreshared_key={zero}\nprotocol_version=1\nendpoint=[2001:db8::9]:1234\n\
         last_handshake_time_sec=0\nlast_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\n\
         persistent_keepalive_interval=0\nallowed_ip=10.1.0.0/16\nerrno=0\n\n",
        sk.to_hex(),
        hex(1),
        psk.to_hex(),
        hex(2)
    );
    assert_eq!(f.get(), expected);

    // Runtime state from the engine replaces configured values.
    f.device.stats = DeviceStats {
        listen_port: 51820,
        peers: vec![PeerStats {
            public_key: pk(2),
            endpoint: Some("198.51.100.7:4000".parse().unwrap()),
            last_handshake: Some(UNIX_EPOCH + Duration::new(1_700_000_123, 456)),
            rx_bytes: 1000,
            tx_bytes: 2000,
        }],
    };
    let text = f.get();
    assert!(text.contains(
        "endpoint=198.51.100.7:4000\nlast_handshake_time_sec=1700000123\n\
         last_handshake_time_nsec=456\ntx_bytes=2000\nrx_bytes=1000\n"
    ));

    // Zero keys and values remove things; get omits them.
    f.ok(&format!("private_key={zero}\nlisten_port=0\nfwmark=0\n"));
    f.device.stats = DeviceStats::default();
    assert!(f.get().starts_with("public_key="));
}

#[test]
fn listen_port_reports_the_bound_port() {
    let mut f = Fixture::new();
    f.device.stats.listen_port = 40000;
    assert_eq!(f.get(), "listen_port=40000\nerrno=0\n\n");
    // Re-sending port 0 (what setconf does without ListenPort) changes nothing.
    assert!(f.ok("listen_port=0\n").is_empty());
}

#[test]
fn peers_keep_a_stable_order() {
    let mut f = Fixture::new();
    for n in 1..=4 {
        f.ok(&format!(
            "public_key={}\nallowed_ip=10.0.0.{n}/32\n",
            hex(n)
        ));
    }
    // Re-set of an existing peer keeps its place.
    f.ok(&format!(
        "public_key={}\npersistent_keepalive_interval=5\n",
        hex(2)
    ));
    assert_eq!(f.order(), vec![pk(1), pk(2), pk(3), pk(4)]);
    // Removed peers leave; new ones go last, even into a reused slot.
    f.ok(&format!(
        "public_key={}\nremove=true\npublic_key={}\n",
        hex(1),
        hex(5)
    ));
    f.ok(&format!("public_key={}\nremove=true\n", hex(3)));
    f.ok(&format!("public_key={}\n", hex(6)));
    assert_eq!(f.order(), vec![pk(2), pk(4), pk(5), pk(6)]);
    let get = f.get();
    let positions: Vec<usize> = [2u8, 4, 5, 6]
        .iter()
        .map(|&n| get.find(&format!("public_key={}", hex(n))).unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn allowed_ip_moves_to_the_peer_that_adds_it() {
    let mut f = Fixture::new();
    f.ok(&format!(
        "public_key={}\nallowed_ip=10.0.0.0/24\nallowed_ip=10.1.0.0/16\n\
         public_key={}\nallowed_ip=10.2.0.0/16\n",
        hex(1),
        hex(2)
    ));
    // Peer 3 takes 10.0.0.0/24 (given with host bits) from peer 1.
    let changes = f.ok(&format!("public_key={}\nallowed_ip=10.0.0.77/24\n", hex(3)));
    assert_eq!(
        peer_change(&changes, 1).unwrap().allowed_ips,
        vec![prefix("10.1.0.0/16")],
        "the loser gets its reduced list"
    );
    assert_eq!(peer_change(&changes, 1).unwrap().endpoint, None);
    assert_eq!(
        peer_change(&changes, 3).unwrap().allowed_ips,
        vec![prefix("10.0.0.0/24")]
    );
    assert!(peer_change(&changes, 2).is_none(), "bystanders untouched");
    assert_eq!(f.ips(1), vec![prefix("10.1.0.0/16")]);
    assert_eq!(f.config.prefix_owner(&prefix("10.0.0.0/24")), Some(pk(3)));

    // Within one request: 2 takes from 1, then 1 takes it back.
    let changes = f.ok(&format!(
        "public_key={}\nallowed_ip=10.1.0.0/16\npublic_key={}\nallowed_ip=10.1.0.0/16\n",
        hex(2),
        hex(1)
    ));
    assert_eq!(f.ips(1), vec![prefix("10.1.0.0/16")], "no duplicate");
    assert_eq!(f.ips(2), vec![prefix("10.2.0.0/16")]);
    assert!(changes.is_empty(), "net effect nothing: {changes:?}");

    // Removal of a prefix only from its owner; duplicates collapse.
    f.ok(&format!(
        "public_key={}\nallowed_ip=-10.2.0.0/16\nallowed_ip=10.5.0.0/16\nallowed_ip=10.5.0.0/16\n",
        hex(1)
    ));
    assert_eq!(f.ips(2), vec![prefix("10.2.0.0/16")]);
    assert_eq!(f.ips(1), vec![prefix("10.1.0.0/16"), prefix("10.5.0.0/16")]);
    f.ok(&format!("public_key={}\nallowed_ip=-10.1.0.0/16\n", hex(1)));
    assert_eq!(f.ips(1), vec![prefix("10.5.0.0/16")]);

    // replace_allowed_ips clears what came before it.
    f.ok(&format!(
        "public_key={}\nallowed_ip=10.6.0.0/16\nreplace_allowed_ips=true\nallowed_ip=10.7.0.0/16\n",
        hex(1)
    ));
    assert_eq!(f.ips(1), vec![prefix("10.7.0.0/16")]);
    assert_eq!(f.config.prefix_owner(&prefix("10.6.0.0/16")), None);
    assert_eq!(f.config.prefix_owner(&prefix("10.5.0.0/16")), None);
}

#[test]
fn removed_peer_frees_its_prefixes_for_others_in_the_same_request() {
    let mut f = Fixture::new();
    f.ok(&format!("public_key={}\nallowed_ip=10.0.0.0/8\n", hex(1)));
    let changes = f.ok(&format!(
        "public_key={}\nremove=true\npublic_key={}\nallowed_ip=10.0.0.0/8\n",
        hex(1),
        hex(2)
    ));
    assert_eq!(changes[0], Change::RemovePeer(pk(1)));
    assert_eq!(changes.len(), 2);
    assert_eq!(f.config.prefix_owner(&prefix("10.0.0.0/8")), Some(pk(2)));
}

/// What `wg setconf` and `wg syncconf` send for a file, as `ipc-uapi.h` writes it.
fn conf_body(
    replace_peers: bool,
    sk: &PrivateKey,
    peers: &[(u8, Option<&str>, &[&str])],
) -> String {
    let mut s = format!("private_key={}\nlisten_port=51820\nfwmark=0\n", sk.to_hex());
    if replace_peers {
        s.push_str("replace_peers=true\n");
    }
    for (n, ep, ips) in peers {
        s.push_str(&format!("public_key={}\n", hex(*n)));
        if let Some(ep) = ep {
            s.push_str(&format!("endpoint={ep}\n"));
        }
        s.push_str("replace_allowed_ips=true\n");
        for ip in *ips {
            s.push_str(&format!("allowed_ip={ip}\n"));
        }
    }
    s
}

#[test]
fn identical_re_set_changes_nothing() {
    let mut f = Fixture::new();
    let sk = PrivateKey::from_bytes([9; 32]);
    let peers: &[(u8, Option<&str>, &[&str])] = &[
        (1, Some("192.0.2.1:51820"), &["10.0.0.1/32", "fd00::1/128"]),
        (2, None, &["10.0.0.2/32"]),
        (3, Some("[2001:db8::3]:51820"), &["10.3.0.0/16"]),
    ];
    let setconf = conf_body(true, &sk, peers);
    let first = f.ok(&setconf);
    // ListenPort and PrivateKey (fwmark=0 is already the configured mark).
    assert_eq!(first.len(), 2 + 3);
    let get = f.get();
    let applies = f.device.applied.len();

    // setconf again (replace_peers + everything): no change at all.
    assert!(f.ok(&setconf).is_empty());
    // syncconf (no replace_peers, same file): no change at all.
    assert!(f.ok(&conf_body(false, &sk, peers)).is_empty());
    // addconf of the same peers (append mode: no device keys).
    let addconf: String = conf_body(false, &sk, peers)
        .lines()
        .skip(3)
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(addconf.starts_with("public_key="));
    assert!(f.ok(&addconf).is_empty());
    assert_eq!(f.device.applied.len(), applies, "engine not even called");
    assert_eq!(f.get(), get);

    // syncconf dropping peer 2 sends remove=true for it, plus the rest.
    let mut sync = conf_body(false, &sk, &[peers[0], peers[2]]);
    sync.push_str(&format!("public_key={}\nremove=true\n", hex(2)));
    assert_eq!(f.ok(&sync), vec![Change::RemovePeer(pk(2))]);

    // setconf with one peer changed touches only that peer.
    let changed: &[(u8, Option<&str>, &[&str])] = &[
        peers[0],
        (
            3,
            Some("[2001:db8::3]:51820"),
            &["10.3.0.0/16", "10.4.0.0/16"],
        ),
    ];
    let changes = f.ok(&conf_body(true, &sk, changed));
    assert_eq!(changes.len(), 1);
    let p3 = peer_change(&changes, 3).unwrap();
    assert_eq!(p3.endpoint, None, "same endpoint is not re-sent");
    assert_eq!(p3.allowed_ips.len(), 2);
}

#[test]
fn replace_peers_removes_the_others_and_resets_the_rest() {
    let mut f = Fixture::new();
    f.ok(&format!(
        "public_key={}\nendpoint=192.0.2.1:1\npersistent_keepalive_interval=25\nallowed_ip=10.1.0.0/16\n\
         public_key={}\nallowed_ip=10.2.0.0/16\npublic_key={}\n",
        hex(1),
        hex(2),
        hex(3)
    ));
    // Peer 1 named again without its endpoint or keepalive; 2 and 3 dropped.
    let changes = f.ok(&format!(
        "replace_peers=true\npublic_key={}\nallowed_ip=10.1.0.0/16\npublic_key={}\nallowed_ip=10.2.0.0/16\n",
        hex(1),
        hex(4)
    ));
    assert_eq!(
        changes[..3],
        [
            Change::RemovePeer(pk(1)),
            Change::RemovePeer(pk(2)),
            Change::RemovePeer(pk(3))
        ],
        "peer 1 is re-created to forget its endpoint"
    );
    let p1 = peer_change(&changes, 1).unwrap();
    assert_eq!(p1.persistent_keepalive, 0);
    assert_eq!(p1.endpoint, None);
    assert_eq!(f.order(), vec![pk(1), pk(4)]);
    assert_eq!(f.config.peer(&pk(1)).unwrap().endpoint, None);
    assert_eq!(f.config.prefix_owner(&prefix("10.2.0.0/16")), Some(pk(4)));

    // update_only after replace_peers: the peer no longer exists -> no-op.
    let changes = f.ok(&format!(
        "replace_peers=true\npublic_key={}\nupdate_only=true\nallowed_ip=10.9.0.0/16\npublic_key={}\nallowed_ip=10.2.0.0/16\n",
        hex(1),
        hex(4)
    ));
    assert_eq!(changes, vec![Change::RemovePeer(pk(1))]);
    assert_eq!(f.order(), vec![pk(4)]);
}

#[test]
fn update_only_remove_and_recreate() {
    let mut f = Fixture::new();
    f.ok(&format!("public_key={}\nallowed_ip=10.1.0.0/16\n", hex(1)));
    let get = f.get();
    // update_only on an unknown peer: nothing, wherever the flag is.
    assert!(f
        .ok(&format!(
            "public_key={}\nallowed_ip=10.1.0.0/16\nupdate_only=true\n",
            hex(2)
        ))
        .is_empty());
    // remove of an unknown peer: nothing.
    assert!(f
        .ok(&format!("public_key={}\nremove=true\n", hex(9)))
        .is_empty());
    assert_eq!(f.get(), get);
    // update_only on a known peer updates it.
    let changes = f.ok(&format!(
        "public_key={}\nupdate_only=true\npersistent_keepalive_interval=7\n",
        hex(1)
    ));
    assert_eq!(peer_change(&changes, 1).unwrap().persistent_keepalive, 7);
    // A removed section ignores its other lines (kernel flag semantics).
    f.ok(&format!("public_key={}\n", hex(2)));
    let changes = f.ok(&format!(
        "public_key={}\nallowed_ip=10.1.0.0/16\nremove=true\n",
        hex(2)
    ));
    assert_eq!(changes, vec![Change::RemovePeer(pk(2))]);
    assert_eq!(f.ips(1), vec![prefix("10.1.0.0/16")]);
    // Removed and named again: re-created, placed last, fresh config.
    f.ok(&format!("public_key={}\n", hex(3)));
    let changes = f.ok(&format!(
        "public_key={}\nremove=true\npublic_key={}\nallowed_ip=10.8.0.0/16\n",
        hex(1),
        hex(1)
    ));
    assert_eq!(changes[0], Change::RemovePeer(pk(1)));
    let p1 = peer_change(&changes, 1).unwrap();
    assert_eq!(p1.persistent_keepalive, 0);
    assert_eq!(p1.allowed_ips, vec![prefix("10.8.0.0/16")]);
    assert_eq!(f.order(), vec![pk(3), pk(1)]);
}

#[test]
fn endpoint_is_sent_only_when_it_changes() {
    let mut f = Fixture::new();
    let c = f.ok(&format!("public_key={}\nendpoint=192.0.2.1:1\n", hex(1)));
    assert_eq!(
        peer_change(&c, 1).unwrap().endpoint,
        Some("192.0.2.1:1".parse().unwrap())
    );
    assert!(f
        .ok(&format!("public_key={}\nendpoint=192.0.2.1:1\n", hex(1)))
        .is_empty());
    let c = f.ok(&format!(
        "public_key={}\nendpoint=192.0.2.1:1\npersistent_keepalive_interval=1\n",
        hex(1)
    ));
    assert_eq!(peer_change(&c, 1).unwrap().endpoint, None);
    let c = f.ok(&format!("public_key={}\nendpoint=192.0.2.2:1\n", hex(1)));
    assert_eq!(
        peer_change(&c, 1).unwrap().endpoint,
        Some("192.0.2.2:1".parse().unwrap())
    );
    let ep: SocketAddr = "192.0.2.2:1".parse().unwrap();
    assert_eq!(f.config.peer(&pk(1)).unwrap().endpoint, Some(ep));
}

#[test]
fn own_public_key_is_never_a_peer() {
    let mut f = Fixture::new();
    let sk = PrivateKey::from_bytes([0x33; 32]);
    let own = sk.public_key();
    f.ok(&format!(
        "public_key={}\nallowed_ip=10.0.0.0/8\npublic_key={}\n",
        own.to_hex(),
        hex(1)
    ));
    // Setting the private key removes the peer with its public key.
    let changes = f.ok(&format!("private_key={}\n", sk.to_hex()));
    assert_eq!(
        changes,
        vec![
            Change::PrivateKey(Some(sk.clone())),
            Change::RemovePeer(own)
        ]
    );
    assert_eq!(f.order(), vec![pk(1)]);
    assert_eq!(f.config.prefix_owner(&prefix("10.0.0.0/8")), None);
    // A section for our own key is validated, then ignored.
    assert!(f
        .ok(&format!(
            "public_key={}\nallowed_ip=10.0.0.0/8\n",
            own.to_hex()
        ))
        .is_empty());
    let e = f
        .set(&format!("public_key={}\nallowed_ip=bad\n", own.to_hex()))
        .unwrap_err();
    assert_eq!(e.errno(), -22);
    // Same key again: no change, no removal.
    assert!(f.ok(&format!("private_key={}\n", sk.to_hex())).is_empty());
}

#[test]
fn refused_requests_change_nothing() {
    let mut f = Fixture::new();
    let sk = PrivateKey::from_bytes([5; 32]);
    f.ok(&format!(
        "private_key={}\nlisten_port=1000\npublic_key={}\nendpoint=192.0.2.1:1\nallowed_ip=10.1.0.0/16\n\
         public_key={}\nallowed_ip=10.2.0.0/16\n",
        sk.to_hex(),
        hex(1),
        hex(2)
    ));
    let before = f.get();
    let applies = f.device.applied.len();
    let k = hex(3);
    let cases: Vec<(String, i32)> = vec![
        (format!("public_key={}zz\n", &k[..62]), -22), // bad hex
        (format!("public_key={}\n", &k[..63]), -22),   // short key
        (format!("public_key={k}0\n"), -22),           // long key
        ("foo=bar\n".into(), -22),                     // unknown key
        (format!("public_key={k}\nlisten_port=1\n"), -22), // device key after a peer
        (format!("public_key={k}\nendpoint=example.com:1\n"), -22), // host name
        (format!("public_key={k}\nendpoint=2001:db8::1:1\n"), -22), // v6 without brackets
        (format!("public_key={k}\nallowed_ip=10.0.0.0\n"), -22), // no length
        (format!("public_key={k}\nallowed_ip=10.0.0.0/33\n"), -22), // /33
        (format!("public_key={k}\nallowed_ip=::/129\n"), -22), // /129
        ("listen_port=65536\n".into(), -22),           // port range
        (
            format!("public_key={k}\npersistent_keepalive_interval=65536\n"),
            -22,
        ),
        ("replace_peers=false\n".into(), -22), // booleans: true only
        (format!("public_key={}\nremove=false\n", hex(1)), -22),
        (format!("public_key={k}\nupdate_only=1\n"), -22),
        ("fwmark=0x10\n".into(), -22), // decimal only
        (format!("public_key={k}\nprotocol_version=2\n"), -22),
        ("allowed_ip=10.0.0.0/8\n".into(), -22), // peer key before a peer
        ("listen_port\n".into(), -71),           // not key=value
        (format!("private_key={}\n", &sk.to_hex()[..60]), -22),
        (format!("public_key={k}\npreshared_key=00\n"), -22),
        // A valid change followed by one bad line in the same request.
        (
            format!(
                "listen_port=2000\nreplace_peers=true\npublic_key={k}\nallowed_ip=10.1.0.0/16\n\
                 public_key={}\nremove=true\npersistent_keepalive_interval=x\n",
                hex(2)
            ),
            -22,
        ),
        (
            format!("public_key={k}\nallowed_ip=10.9.0.0/16\nendpoint=[fe80::1%nosuchif9]:1\n"),
            -22,
        ),
    ];
    assert!(cases.len() >= 15);
    for (body, errno) in &cases {
        let e = f.set(body).expect_err(body);
        assert_eq!(e.errno(), *errno, "{body}: {e}");
        assert_eq!(f.get(), before, "get changed after: {body}");
        assert_eq!(f.device.applied.len(), applies, "engine called for: {body}");
    }

    // The engine refusing: its errno, nothing committed.
    f.device.fail_with = Some(ApplyError::AddressInUse(2000));
    let e = f
        .set(&format!(
            "listen_port=2000\npublic_key={k}\nallowed_ip=10.1.0.0/16\n"
        ))
        .unwrap_err();
    assert_eq!(e.errno(), -libc::EADDRINUSE);
    f.device.fail_with = Some(ApplyError::Io(0));
    let e = f.set("listen_port=2000\n").unwrap_err();
    assert_eq!(e.errno(), -libc::EIO, "never a zero errno for a failure");
    f.device.fail_with = None;
    assert_eq!(f.get(), before);
    assert_eq!(f.config.listen_port(), 1000);
}

#[test]
fn too_many_peers_is_enomem() {
    // Only the count check is exercised, against a small fake limit: fill
    // a transaction past MAX_PEERS would take too long in a unit test, so
    // check the errno mapping and the boundary arithmetic instead.
    assert_eq!(UapiError::TooManyPeers(1).errno(), -libc::ENOMEM);
    assert_eq!(crate::config::MAX_PEERS, 1 << 20);
}

// ---------------------------------------------------------------------------
// Server over a real unix socket.

mod server_tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    use std::os::unix::net::UnixStream;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    pub(super) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(super) fn new(tag: &str) -> Self {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let p =
                std::env::temp_dir().join(format!("cw-uapi-{tag}-{}-{nanos}", std::process::id()));
            Self(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    /// Reads one reply: lines up to and including the empty line.
    fn reply(r: &mut BufReader<UnixStream>) -> String {
        let mut out = String::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap() == 0 {
                return out;
            }
            out.push_str(&line);
            if line == "\n" {
                return out;
            }
        }
    }

    type Served = (FakeDevice, DeviceConfig, std::io::Result<Shutdown>);

    fn spawn(
        mut server: UapiServer,
        stop: Arc<AtomicBool>,
        device: FakeDevice,
    ) -> std::thread::JoinHandle<Served> {
        std::thread::spawn(move || {
            let mut device = device;
            let mut config = DeviceConfig::new();
            let r = server.run(&mut device, &mut config, &stop);
            (device, config, r)
        })
    }

    #[test]
    fn socket_modes_and_several_requests_on_one_connection() {
        let tmp = TempDir::new("serve");
        let dir = tmp.0.join("wireguard");
        let server = UapiServer::bind(&dir, "cwt0").unwrap();
        let path = server.path().to_path_buf();
        assert_eq!(path, dir.join("cwt0.sock"));
        assert_eq!(mode(&dir), 0o755, "directory 0755");
        assert!(std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_socket());
        assert_eq!(mode(&path), 0o600, "socket srw-------");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary left behind"
        );

        // A second daemon on the same interface is refused.
        let e = UapiServer::bind(&dir, "cwt0").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);

        let stop = Arc::new(AtomicBool::new(false));
        let device = FakeDevice {
            stats: DeviceStats {
                listen_port: 51820,
                peers: vec![],
            },
            ..FakeDevice::default()
        };
        let handle = spawn(server, stop.clone(), device);

        let stream = UnixStream::connect(&path).unwrap();
        let mut w = stream.try_clone().unwrap();
        let mut r = BufReader::new(stream);
        w.write_all(b"get=1\n\n").unwrap();
        assert_eq!(reply(&mut r), "listen_port=51820\nerrno=0\n\n");
        w.write_all(format!("set=1\npublic_key={}\nallowed_ip=10.0.0.1/32\n\n", hex(1)).as_bytes())
            .unwrap();
        assert_eq!(reply(&mut r), "errno=0\n\n");
        // A bad set: the rest of it is read, the connection stays usable.
        w.write_all(
            format!(
                "set=1\nbogus=1\npublic_key={}\n{}\nallowed_ip=10.0.0.2/32\n\n",
                hex(2),
                "x".repeat(10_000)
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(reply(&mut r), "errno=-22\n\n");
        // An operation line ending in CR is not an operation: closed
        // without a reply, as wireguard-go does.
        w.write_all(b"set=1\r\n").unwrap();
        let mut rest = String::new();
        r.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "", "closed without a reply");

        // Two requests in one write; CRLF inside a set body is accepted.
        let stream = UnixStream::connect(&path).unwrap();
        let mut w = stream.try_clone().unwrap();
        let mut r = BufReader::new(stream);
        w.write_all(
            format!(
                "set=1\npublic_key={}\r\nallowed_ip=10.0.0.2/32\r\n\r\nget=1\n\n",
                hex(2)
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(reply(&mut r), "errno=0\n\n");
        let get = reply(&mut r);
        assert!(get.starts_with(&format!("listen_port=51820\npublic_key={}\n", hex(1))));
        assert!(get.contains(&format!("public_key={}\n", hex(2))));
        assert!(get.ends_with("allowed_ip=10.0.0.2/32\nerrno=0\n\n"));
        // get=1 with trailing data: -22 and closed.
        w.write_all(b"get=1\nx\n").unwrap();
        assert_eq!(reply(&mut r), "errno=-22\n\n");
        let mut rest = String::new();
        r.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "");

        // A set cut off by EOF is discarded.
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(format!("set=1\npublic_key={}\n", hex(3)).as_bytes())
            .unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = String::new();
        s.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "errno=-71\n\n");

        // Stop within about a tick.
        let t = Instant::now();
        stop.store(true, Ordering::Release);
        let (device, config, r) = handle.join().unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(r.unwrap(), Shutdown::Stopped);
        assert_eq!(device.applied.len(), 2);
        assert_eq!(
            config.peers().map(|p| p.public_key).collect::<Vec<_>>(),
            vec![pk(1), pk(2)]
        );
        assert!(!path.exists(), "socket removed when the server is dropped");
    }

    #[test]
    fn stale_socket_is_replaced_and_deletion_is_noticed() {
        let tmp = TempDir::new("stale");
        let dir = tmp.0.clone();
        std::fs::create_dir_all(&dir).unwrap();
        // A stale socket: bound, then its listener closed.
        let path = dir.join("cwt1.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let server = UapiServer::bind(&dir, "cwt1").unwrap();
        assert_eq!(mode(&path), 0o600);
        assert!(server.socket_file_intact());

        // A regular file in the way is never deleted.
        std::fs::write(dir.join("cwt2.sock"), b"x").unwrap();
        assert_eq!(
            UapiServer::bind(&dir, "cwt2").unwrap_err().kind(),
            std::io::ErrorKind::AlreadyExists
        );
        assert!(UapiServer::bind(&dir, "a/b").is_err());
        assert!(UapiServer::bind(&dir, "").is_err());

        let stop = Arc::new(AtomicBool::new(false));
        let handle = spawn(server, stop.clone(), FakeDevice::default());
        // Deleted while a silent client holds a connection: still noticed.
        let _idle = UnixStream::connect(&path).unwrap();
        std::thread::sleep(Duration::from_millis(150));
        let t = Instant::now();
        std::fs::remove_file(&path).unwrap();
        let (_, _, r) = handle.join().unwrap();
        assert_eq!(r.unwrap(), Shutdown::SocketRemoved);
        assert!(t.elapsed() < Duration::from_millis(500));
    }

    #[test]
    fn stalled_clients_delay_nobody_and_sets_queue() {
        let tmp = TempDir::new("stall");
        let server = UapiServer::bind(&tmp.0, "cwt3").unwrap();
        let path = server.path().to_path_buf();
        let stop = Arc::new(AtomicBool::new(false));
        let handle = spawn(server, stop.clone(), FakeDevice::default());

        // Ten clients that send half a set and stall: they hold no turn.
        let mut stalled: Vec<UnixStream> = (0..10)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        for s in &mut stalled {
            s.write_all(format!("set=1\npublic_key={}\n", hex(1)).as_bytes())
                .unwrap();
        }
        // An idle client and twenty half-sent gets.
        let _idle = UnixStream::connect(&path).unwrap();
        let mut half: Vec<UnixStream> = (0..20)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        for h in &mut half {
            h.write_all(b"get=1\n").unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
        // A get is answered at once, without the stalled set's peer.
        let t = Instant::now();
        let stream = UnixStream::connect(&path).unwrap();
        let mut w = stream.try_clone().unwrap();
        let mut r = BufReader::new(stream);
        w.write_all(b"get=1\n\n").unwrap();
        assert_eq!(reply(&mut r), "errno=0\n\n");
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());

        // A complete set is applied at once: the stalled one, still
        // sending its body, does not hold it up.
        let t = Instant::now();
        w.write_all(format!("set=1\npublic_key={}\n\n", hex(2)).as_bytes())
            .unwrap();
        assert_eq!(reply(&mut r), "errno=0\n\n");
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        // The stalled clients are dropped at their deadline without a
        // reply; their half sets are discarded.
        let t = Instant::now();
        for s in &mut stalled {
            let mut rest = String::new();
            s.read_to_string(&mut rest).unwrap();
            assert_eq!(rest, "");
        }
        assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
        w.write_all(b"get=1\n\n").unwrap();
        let get = reply(&mut r);
        assert!(get.contains(&hex(2)) && !get.contains(&hex(1)), "{get}");

        // Connected, silent clients do not delay a stop.
        let t = Instant::now();
        stop.store(true, Ordering::Release);
        let (device, _, r) = handle.join().unwrap();
        assert_eq!(r.unwrap(), Shutdown::Stopped);
        assert!(t.elapsed() < Duration::from_millis(500));
        assert_eq!(device.applied.len(), 1);
    }

    #[test]
    fn a_large_get_is_consistent_while_a_set_waits() {
        let tmp = TempDir::new("bigget");
        let server = UapiServer::bind(&tmp.0, "cwt4").unwrap();
        let path = server.path().to_path_buf();
        let stop = Arc::new(AtomicBool::new(false));
        let handle = spawn(server, stop.clone(), FakeDevice::default());

        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(format!("set=1\n{}\n", addconf_body(5000)).as_bytes())
            .unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        assert_eq!(reply(&mut r), "errno=0\n\n");

        // A get of 5000 peers (about 2 MB) read slowly, and a set that
        // removes a peer sent meanwhile on another connection.
        s.write_all(b"get=1\n\n").unwrap();
        let mut first = [0u8; 1000];
        r.read_exact(&mut first).unwrap();
        let mut other = UnixStream::connect(&path).unwrap();
        other
            .write_all(b"set=1\nlisten_port=1234\n\nget=1\n\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let rest = reply(&mut r);
        let get = format!("{}{rest}", String::from_utf8_lossy(&first));
        assert!(!get.contains("listen_port"), "the get saw the old state");
        assert_eq!(get.matches("public_key=").count(), 5000);
        let mut r2 = BufReader::new(other);
        assert_eq!(reply(&mut r2), "errno=0\n\n");
        assert!(reply(&mut r2).starts_with("listen_port=1234\n"));

        stop.store(true, Ordering::Release);
        let (_, config, r) = handle.join().unwrap();
        r.unwrap();
        assert_eq!(config.listen_port(), 1234);
    }

    #[test]
    fn overlong_line_and_request_are_bounded() {
        let (a, b) = UnixStream::pair().unwrap();
        let stop = AtomicBool::new(false);
        let mut w = a.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let mut body = b"set=1\nlisten_port=".to_vec();
            body.extend(std::iter::repeat_n(b'1', 1 << 20));
            body.extend_from_slice(b"\n\nget=1\n\n");
            w.write_all(&body).unwrap();
        });
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(a);
            (reply(&mut r), reply(&mut r))
        });
        let mut device = FakeDevice::default();
        let mut config = DeviceConfig::new();
        let end = serve_connection(b, &mut device, &mut config, &stop);
        assert_eq!(end, ConnectionEnd::Closed);
        writer.join().unwrap();
        let (first, second) = reader.join().unwrap();
        assert_eq!(first, "errno=-22\n\n");
        assert_eq!(second, "errno=0\n\n");

        // An endless operation line (no newline, stream kept open) ends the
        // connection instead of keeping the control thread reading.
        let (a, b) = UnixStream::pair().unwrap();
        let mut w = a.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let junk = vec![b'x'; 64 * 1024];
            for _ in 0..16 {
                if w.write_all(&junk).is_err() {
                    break;
                }
            }
        });
        let t = Instant::now();
        let end = serve_connection(b, &mut device, &mut config, &stop);
        assert_eq!(end, ConnectionEnd::Closed);
        assert!(t.elapsed() < Duration::from_secs(1));
        drop(a);
        writer.join().unwrap();
    }
}

// ---------------------------------------------------------------------------
// Bulk load: 100,000 peers with one /32 each in one `wg addconf`.

fn addconf_body(count: u32) -> String {
    let mut s = String::with_capacity(count as usize * 130);
    for i in 0..count {
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(&i.to_be_bytes());
        key[4] = 0xa5;
        let [_, b, c, d] = i.to_be_bytes();
        s.push_str("public_key=");
        s.push_str(&PublicKey::from_bytes(key).to_hex());
        s.push_str("\nreplace_allowed_ips=true\n");
        s.push_str(&format!("allowed_ip=10.{b}.{c}.{d}/32\n"));
    }
    s
}

#[test]
#[cfg_attr(debug_assertions, ignore = "timing test: run with --release")]
fn bulk_load_100k_peers() {
    for count in [100_000u32, 1_000_000] {
        let body = addconf_body(count);
        let mut f = Fixture::new();
        let t = Instant::now();
        let mut txn = Transaction::new();
        for line in body.lines() {
            txn.feed_line(&f.config, line.as_bytes()).unwrap();
        }
        let parsed = t.elapsed();
        let plan = txn.finish(&f.config).unwrap();
        let planned = t.elapsed();
        f.device.apply(plan.changes).unwrap();
        let engine = t.elapsed();
        plan.commit.apply_to(&mut f.config).unwrap();
        let load = t.elapsed();
        println!(
            "{count} peers: parse+validate {parsed:?}, plan {:?}, fake engine {:?}, commit {:?}",
            planned - parsed,
            engine - planned,
            load - engine
        );
        assert_eq!(f.config.peer_count(), count as usize);
        assert_eq!(f.device.applied.last().map(Vec::len), Some(count as usize));

        let t = Instant::now();
        let again = f.ok(&body);
        let reload = t.elapsed();
        assert!(again.is_empty());

        let t = Instant::now();
        let mut out = Vec::with_capacity(count as usize * 400);
        write_get(&f.config, &DeviceStats::default(), &mut out).unwrap();
        let get = t.elapsed();

        let victim = {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&(count / 2).to_be_bytes());
            key[4] = 0xa5;
            PublicKey::from_bytes(key)
        };
        let t = Instant::now();
        f.ok(&format!("public_key={}\nremove=true\n", victim.to_hex()));
        let remove = t.elapsed();
        assert_eq!(f.config.peer_count(), count as usize - 1);
        println!(
            "{count} peers ({} MB request): parse+apply {load:?}, identical re-set {reload:?}, \
             get {get:?} ({} MB), remove one {remove:?}",
            body.len() >> 20,
            out.len() >> 20
        );
        if count == 100_000 {
            assert!(load < Duration::from_secs(1), "{load:?}");
            assert!(remove < Duration::from_millis(1), "{remove:?}");
        }
    }
}

// ---------------------------------------------------------------------------
// The real `wg` from wireguard-tools against the server. It only talks to
// /var/run/wireguard/<ifname>.sock, so this needs root: run with
// `cargo test -p corewire --release -- --ignored wg_tools`.

mod wg_tools {
    use super::*;
    use std::process::Command;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    /// A fake engine shared with the test thread.
    #[derive(Debug, Clone, Default)]
    struct Shared(Arc<Mutex<FakeDevice>>);

    impl Device for Shared {
        fn apply(&mut self, changes: Vec<Change>) -> Result<(), ApplyError> {
            self.0
                .lock()
                .map_err(|_| ApplyError::Io(libc::EIO))?
                .apply(changes)
        }
        fn stats(&mut self) -> Result<DeviceStats, ApplyError> {
            self.0
                .lock()
                .map_err(|_| ApplyError::Io(libc::EIO))?
                .stats()
        }
    }

    fn wg(args: &[&str]) -> (bool, String, String) {
        let out = Command::new("wg").args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[test]
    #[ignore = "needs root and wg(8); talks to /var/run/wireguard"]
    fn wg_tools_interop() {
        let ifname = format!("cwt{}", std::process::id() % 100_000);
        let server = UapiServer::bind(std::path::Path::new(SOCKET_DIR), &ifname).unwrap();
        let shared = Shared::default();
        shared.0.lock().unwrap().stats.listen_port = 51820;
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let (stop, mut dev) = (stop.clone(), shared.clone());
            let mut server = server;
            std::thread::spawn(move || {
                let mut config = DeviceConfig::new();
                server.run(&mut dev, &mut config, &stop).map(|_| config)
            })
        };

        let sk = PrivateKey::generate();
        let peers: Vec<PrivateKey> = (0..3).map(|_| PrivateKey::generate()).collect();
        let psk = PresharedKey::generate();
        let conf = format!(
            "[Interface]\nPrivateKey = {}\nListenPort = 51820\nFwMark = 0x1234\n\n\
             [Peer]\nPublicKey = {}\nPresharedKey = {}\nEndpoint = 192.0.2.1:51820\n\
             AllowedIPs = 10.0.0.1/32, fd00::1/128\nPersistentKeepalive = 25\n\n\
             [Peer]\nPublicKey = {}\nEndpoint = [2001:db8::2]:51820\nAllowedIPs = 10.0.0.2/32\n\n\
             [Peer]\nPublicKey = {}\nAllowedIPs = 10.3.0.0/16\n",
            sk.to_base64(),
            peers[0].public_key().to_base64(),
            psk.to_base64(),
            peers[1].public_key().to_base64(),
            peers[2].public_key().to_base64(),
        );
        let file = std::env::temp_dir().join(format!("{ifname}.conf"));
        std::fs::write(&file, &conf).unwrap();
        let file_s = file.to_str().unwrap();

        let (ok, _, err) = wg(&["setconf", &ifname, file_s]);
        assert!(ok, "setconf: {err}");
        let (ok, shown, err) = wg(&["showconf", &ifname]);
        assert!(ok, "showconf: {err}");
        println!("{shown}");
        assert!(shown.contains(&format!("PrivateKey = {}", sk.to_base64())));
        assert!(shown.contains("ListenPort = 51820"));
        assert!(shown.contains("FwMark = 0x1234"));
        assert!(shown.contains(&format!("PresharedKey = {}", psk.to_base64())));
        assert!(shown.contains("AllowedIPs = 10.0.0.1/32, fd00::1/128"));
        assert!(shown.contains("Endpoint = [2001:db8::2]:51820"));
        assert!(shown.contains("PersistentKeepalive = 25"));
        let (ok, dump, _) = wg(&["show", &ifname, "dump"]);
        assert!(ok);
        let first = dump.lines().next().unwrap();
        assert_eq!(
            first,
            format!(
                "{}\t{}\t51820\t0x1234",
                sk.to_base64(),
                sk.public_key().to_base64()
            )
        );
        assert_eq!(dump.lines().count(), 4);
        // Peer order is the file's order.
        let order: Vec<&str> = dump
            .lines()
            .skip(1)
            .map(|l| l.split('\t').next().unwrap())
            .collect();
        let want: Vec<String> = peers.iter().map(|p| p.public_key().to_base64()).collect();
        assert_eq!(order, want);

        // syncconf and setconf with the same file: the engine hears nothing.
        let applies = shared.0.lock().unwrap().applied.len();
        assert!(wg(&["syncconf", &ifname, file_s]).0);
        assert!(wg(&["setconf", &ifname, file_s]).0);
        assert_eq!(shared.0.lock().unwrap().applied.len(), applies);

        // wg set: remove a peer, take an allowed IP.
        let p0 = peers[0].public_key().to_base64();
        let p2 = peers[2].public_key().to_base64();
        assert!(
            wg(&[
                "set",
                &ifname,
                "peer",
                &p2,
                "allowed-ips",
                "10.0.0.1/32,10.3.0.0/16"
            ])
            .0
        );
        let (_, shown, _) = wg(&["showconf", &ifname]);
        assert!(shown.contains("AllowedIPs = fd00::1/128\n"), "{shown}");
        assert!(wg(&["set", &ifname, "peer", &p0, "remove"]).0);
        let (_, dump, _) = wg(&["show", &ifname, "dump"]);
        assert_eq!(dump.lines().count(), 3);

        // The engine refusing a port: wg reports our negative errno.
        shared.0.lock().unwrap().fail_with = Some(ApplyError::AddressInUse(1234));
        let (ok, _, err) = wg(&["set", &ifname, "listen-port", "1234"]);
        assert!(!ok);
        assert!(err.contains("Address already in use"), "{err}");
        shared.0.lock().unwrap().fail_with = None;

        // wg lists the interface.
        let (_, list, _) = wg(&["show", "interfaces"]);
        assert!(list.split_whitespace().any(|i| i == ifname), "{list}");

        // Bulk: 100,000 peers with one /32 each through one `wg addconf`.
        let mut bulk = String::with_capacity(100_000 * 100);
        for i in 0u32..100_000 {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            key[4] = 0x77;
            let [_, b, c, d] = i.to_be_bytes();
            bulk.push_str(&format!(
                "[Peer]\nPublicKey = {}\nAllowedIPs = 10.{}.{c}.{d}/32\n",
                PublicKey::from_bytes(key).to_base64(),
                100 + b
            ));
        }
        std::fs::write(&file, &bulk).unwrap();
        let t = Instant::now();
        let (ok, _, err) = wg(&["addconf", &ifname, file_s]);
        let elapsed = t.elapsed();
        assert!(ok, "addconf: {err}");
        println!("wg addconf of 100000 peers, end to end: {elapsed:?}");
        let t = Instant::now();
        let (ok, dump, _) = wg(&["show", &ifname, "dump"]);
        println!(
            "wg show dump of {} lines: {:?}",
            dump.lines().count(),
            t.elapsed()
        );
        assert!(ok);
        assert_eq!(dump.lines().count(), 1 + 2 + 100_000);
        let t = Instant::now();
        assert!(wg(&["set", &ifname, "peer", &p2, "remove"]).0);
        println!("wg set ... remove among 100002 peers: {:?}", t.elapsed());

        stop.store(true, Ordering::Release);
        let config = handle.join().unwrap().unwrap();
        assert_eq!(config.peer_count(), 100_001);
        let _ = std::fs::remove_file(&file);
        assert!(!std::path::Path::new(SOCKET_DIR)
            .join(format!("{ifname}.sock"))
            .exists());
    }
}
