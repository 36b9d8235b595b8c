//! Shared harness for the interop tests: corewire's protocol core on one
//! side, an independent WireGuard implementation (boringtun, gotatun) on
//! the other, datagrams carried between them by hand, in memory.
//!
//! The other implementation sits behind [`Remote`], a thin adapter over
//! its sans-IO tunnel API that does what that project's own device loop
//! does with each result (flush queued packets after a handshake message,
//! trim a decrypted packet to its IP length...). The corewire side is
//! driven by [`Corewire`] the way `support::Net` drives it: packets are
//! staged while a handshake runs and flushed when it completes, the
//! keepalive from `HandshakeComplete` is sent only when nothing was
//! staged, replies go back to the datagram's source.
//!
//! The test cases themselves are generic over [`Remote`] and live at the
//! bottom of this file, so every implementation runs exactly the same
//! checks; `interop_boringtun.rs` and `interop_gotatun.rs` instantiate
//! them and add implementation-specific tests.

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use corewire_dataplane::engine::config::{Change, PeerConfig};
use corewire_dataplane::engine::mem::Recorder;
use corewire_dataplane::engine::offload::VNET_HDR_LEN;
use corewire_dataplane::engine::pool::Pool;
use corewire_dataplane::engine::shard::{
    CookieSeed, Directory, Event, Shard, ShardSetup, TUN_READ_AT,
};
use corewire_dataplane::proto::handshake::HandshakeError;
use corewire_dataplane::proto::interface::{Drop, Interface};
use corewire_dataplane::proto::keys::{PresharedKey, PrivateKey};
use corewire_dataplane::proto::messages::{
    COOKIE_REPLY_LEN, INITIATION_LEN, RESPONSE_LEN, TYPE_COOKIE_REPLY, TYPE_INITIATION,
    TYPE_RESPONSE, TYPE_TRANSPORT,
};
use corewire_dataplane::proto::peer::{Peer, PeerError, PeerId};
use corewire_dataplane::proto::timers::{
    KEEPALIVE_TIMEOUT, REKEY_AFTER_TIME, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX,
};

/// Tunnel MTU on both sides.
pub const MTU: usize = corewire_dataplane::engine::limits::DEFAULT_MTU as usize;
/// Keepalive: a transport header, no plaintext, a tag.
pub const KEEPALIVE_LEN: usize = 32;

/// corewire's UDP endpoint.
pub fn cw_addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 51820)
}
/// The other implementation's UDP endpoint.
pub fn remote_addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 51821)
}
pub const CW_INNER4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const REMOTE_INNER4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const CW_INNER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
pub const REMOTE_INNER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

// ---------------------------------------------------------------------------
// Packets

/// IPv4 (with a correct header checksum) and IPv6 packets carrying
/// payloads that count up from a seed, so no payload looks like padding.
pub use corewire_testkit::packets::{ipv4_packet, ipv6_packet};

/// The packets each test sends in one direction: IPv4 and IPv6, from a
/// 1-byte payload up to a full 1420-byte packet, sizes that are and are
/// not multiples of 16 (so padding is both present and absent).
pub fn packet_mix(from_cw: bool, seed: u8) -> Vec<Vec<u8>> {
    let (s4, d4, s6, d6) = if from_cw {
        (CW_INNER4, REMOTE_INNER4, CW_INNER6, REMOTE_INNER6)
    } else {
        (REMOTE_INNER4, CW_INNER4, REMOTE_INNER6, CW_INNER6)
    };
    let mut v = Vec::new();
    for (i, len) in [1usize, 12, 27, 100, 1000, MTU - 20]
        .into_iter()
        .enumerate()
    {
        v.push(ipv4_packet(s4, d4, len, seed.wrapping_add(i as u8)));
    }
    for (i, len) in [1usize, 8, 63, 700, MTU - 40].into_iter().enumerate() {
        v.push(ipv6_packet(s6, d6, len, seed.wrapping_add(100 + i as u8)));
    }
    assert!(v.iter().any(|p| p.len() == MTU));
    v
}

/// One small IPv4 packet from corewire's or the remote's inner address.
pub fn small(from_cw: bool, seed: u8) -> Vec<u8> {
    if from_cw {
        ipv4_packet(CW_INNER4, REMOTE_INNER4, 37, seed)
    } else {
        ipv4_packet(REMOTE_INNER4, CW_INNER4, 37, seed)
    }
}

pub fn msg_type(datagram: &[u8]) -> u32 {
    u32::from_le_bytes(datagram[..4].try_into().expect("4 bytes"))
}

/// The receiver index of a response, cookie reply or transport message.
pub fn receiver_index(datagram: &[u8]) -> u32 {
    let at = if msg_type(datagram) == TYPE_RESPONSE {
        8
    } else {
        4
    };
    u32::from_le_bytes(datagram[at..at + 4].try_into().expect("4 bytes"))
}

/// The sender index of an initiation or response.
pub fn sender_index(datagram: &[u8]) -> u32 {
    u32::from_le_bytes(datagram[4..8].try_into().expect("4 bytes"))
}

pub fn assert_initiation(d: &[u8]) {
    assert_eq!(
        (msg_type(d), d.len()),
        (TYPE_INITIATION, INITIATION_LEN),
        "expected a handshake initiation"
    );
}

pub fn assert_response(d: &[u8]) {
    assert_eq!(
        (msg_type(d), d.len()),
        (TYPE_RESPONSE, RESPONSE_LEN),
        "expected a handshake response"
    );
}

pub fn assert_cookie_reply(d: &[u8]) {
    assert_eq!(
        (msg_type(d), d.len()),
        (TYPE_COOKIE_REPLY, COOKIE_REPLY_LEN),
        "expected a cookie reply"
    );
}

pub fn assert_transport(d: &[u8]) {
    assert_eq!(msg_type(d), TYPE_TRANSPORT, "expected a transport message");
    assert!(d.len() >= KEEPALIVE_LEN);
}

pub fn assert_keepalive(d: &[u8]) {
    assert_eq!(
        (msg_type(d), d.len()),
        (TYPE_TRANSPORT, KEEPALIVE_LEN),
        "expected a keepalive"
    );
}

/// mac2 of an initiation (all zeros when sent without a cookie).
pub fn initiation_mac2(d: &[u8]) -> [u8; 16] {
    assert_initiation(d);
    d[132..148].try_into().expect("16 bytes")
}

// ---------------------------------------------------------------------------
// The other implementation

/// How to build the other side.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// Its static private key.
    pub private: [u8; 32],
    /// corewire's static public key.
    pub peer_public: [u8; 32],
    pub psk: Option<[u8; 32]>,
    /// Make its rate limiter demand a cookie (mac2) on every handshake
    /// message; otherwise the limiter never considers itself under load.
    pub under_load: bool,
}

/// What the other implementation made of one datagram from the network.
#[derive(Debug)]
pub enum Rx {
    /// Datagrams to send back to the source, in order (a handshake
    /// response or cookie reply, a keepalive, then any queued data).
    Send(Vec<Vec<u8>>),
    /// A decrypted IP packet for the tunnel device, trimmed to its IP length.
    Tunnel(Vec<u8>),
    /// An authenticated transport message with empty plaintext.
    Keepalive,
    /// Accepted with nothing to do (a cookie reply).
    Done,
    /// Refused, with the implementation's reason.
    Error(String),
}

impl Rx {
    pub fn send(self) -> Vec<Vec<u8>> {
        match self {
            Rx::Send(v) => v,
            other => panic!("expected datagrams to send, got {other:?}"),
        }
    }

    pub fn tunnel(self) -> Vec<u8> {
        match self {
            Rx::Tunnel(p) => p,
            other => panic!("expected a packet for the tunnel, got {other:?}"),
        }
    }
}

/// An independent WireGuard implementation with exactly one peer:
/// corewire.
pub trait Remote: Sized {
    const NAME: &'static str;

    fn new(config: RemoteConfig) -> Self;

    /// Its static public key, as it computed it.
    fn public_key(&self) -> [u8; 32];

    /// Hands it an IP packet from its tunnel (an empty one asks for a
    /// keepalive). Returns the datagrams it wants to send: a transport
    /// message; or, without a session, an initiation (or nothing when one
    /// is already under way) while it queues the packet.
    fn send(&mut self, packet: &[u8]) -> Vec<Vec<u8>>;

    /// Hands it a datagram from `src`.
    fn receive(&mut self, src: SocketAddr, datagram: &[u8]) -> Rx;

    /// Asks for a handshake initiation; `force` starts a new one even if
    /// one is under way (what its retransmission timer does).
    fn initiate(&mut self, force: bool) -> Option<Vec<u8>>;

    /// Runs its timers (on the real clock), returning a datagram if they
    /// produced one.
    fn tick(&mut self) -> Option<Vec<u8>>;
}

// ---------------------------------------------------------------------------
// corewire, driven as an engine would

/// What corewire's `receive` said, with what the engine sent in response.
#[derive(Debug)]
pub enum CwRx {
    Data {
        packet: Vec<u8>,
        confirmed: bool,
    },
    Keepalive {
        confirmed: bool,
    },
    /// A handshake response was sent back.
    Response,
    /// A cookie reply was sent back (under load, no valid mac2).
    CookieReply,
    HandshakeComplete,
    CookieAccepted,
    /// An authenticated initiation from a key that is not a peer here.
    Foreign,
    Dropped(Drop),
}

#[derive(Debug)]
pub struct CwOut {
    pub rx: CwRx,
    /// Datagrams the engine sends as a result, in order.
    pub send: Vec<Vec<u8>>,
}

impl CwOut {
    pub fn data(self) -> Vec<u8> {
        match self.rx {
            CwRx::Data { packet, .. } => packet,
            other => panic!("expected Received::Data, got {other:?}"),
        }
    }
}

/// corewire's side: the engine's own [`Shard`] (one worker) holding one
/// peer, the remote. Packets go in through its TUN and UDP entry points
/// and its actions come out as datagrams, delivered packets and events,
/// from which each receive is classified.
pub struct Corewire {
    pub shard: Shard,
    pub peer: PeerId,
    pub now: Instant,
}

impl Corewire {
    /// Executes the shard's actions: (datagrams sent, packets written to
    /// the TUN, events).
    fn execute(&mut self) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<Event>) {
        let mut k = Recorder::default();
        k.execute(&mut self.shard);
        let sends = k.sends.into_iter().map(|(_, d)| d).collect();
        (sends, k.delivered, self.shard.events().collect())
    }

    /// The engine's send path: the packets are read from the TUN, sealed
    /// if the session allows, staged otherwise; a handshake the core asks
    /// for goes out first.
    pub fn send(&mut self, packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
        for p in packets {
            let mut buf = self.shard.pool().get().expect("a buffer under the ceiling");
            buf[TUN_READ_AT..TUN_READ_AT + VNET_HDR_LEN].fill(0);
            buf[TUN_READ_AT + VNET_HDR_LEN..TUN_READ_AT + VNET_HDR_LEN + p.len()]
                .copy_from_slice(p);
            self.shard.tun_read(buf, VNET_HDR_LEN + p.len(), self.now);
        }
        self.shard.flush(self.now);
        let (sends, writes, _) = self.execute();
        assert!(writes.is_empty());
        sends
    }

    /// The packets waiting for the handshake.
    pub fn staged(&self) -> Vec<Vec<u8>> {
        self.shard.staged(self.peer).map(<[u8]>::to_vec).collect()
    }

    /// The engine's receive path for one datagram from `src`.
    pub fn receive(&mut self, src: SocketAddr, datagram: &[u8]) -> CwOut {
        let mut buf = self.shard.pool().get().expect("a buffer under the ceiling");
        buf[..datagram.len()].copy_from_slice(datagram);
        self.shard
            .udp_received(src, buf, 0, datagram.len(), None, self.now);
        self.shard.flush(self.now);
        let (send, mut writes, events) = self.execute();
        assert!(writes.len() <= 1, "one datagram, one packet");
        let confirmed = events
            .iter()
            .any(|e| matches!(e, Event::SessionConfirmed { .. }));
        let rx = if let Some(packet) = writes.pop() {
            CwRx::Data { packet, confirmed }
        } else {
            let outcome = events.iter().find_map(|e| match *e {
                Event::Dropped { reason, .. } => Some(CwRx::Dropped(reason)),
                Event::KeepaliveReceived { peer } => {
                    assert_eq!(peer, self.peer);
                    Some(CwRx::Keepalive { confirmed })
                }
                Event::ResponseSent { peer, .. } => {
                    assert_eq!(peer, self.peer);
                    Some(CwRx::Response)
                }
                Event::CookieSent { .. } => Some(CwRx::CookieReply),
                Event::HandshakeComplete { peer } => {
                    assert_eq!(peer, self.peer);
                    Some(CwRx::HandshakeComplete)
                }
                Event::CookieAccepted { peer } => {
                    assert_eq!(peer, self.peer);
                    Some(CwRx::CookieAccepted)
                }
                // Not an outcome of its own: roaming and load come with
                // one of the above.
                Event::SessionConfirmed { .. }
                | Event::EndpointMoved { .. }
                | Event::UnderLoad(_) => None,
            });
            outcome.unwrap_or_else(|| panic!("no outcome for a datagram: {events:?}"))
        };
        CwOut { rx, send }
    }

    /// Runs the timers at `self.now`; returns what they send.
    pub fn tick(&mut self) -> Vec<Vec<u8>> {
        self.shard.tick(self.now);
        self.execute().0
    }

    pub fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    /// corewire's protocol core.
    pub fn iface(&mut self) -> &mut Interface {
        self.shard.interface_mut()
    }

    pub fn peer(&self) -> &Peer {
        self.shard.interface().peer(self.peer).expect("configured")
    }

    pub fn can_send(&self) -> bool {
        self.peer().can_send(self.now)
    }

    /// A keepalive under the current session (`Interface::keepalive`).
    pub fn keepalive(&mut self) -> Vec<Vec<u8>> {
        let (peer, now) = (self.peer, self.now);
        self.iface()
            .keepalive(peer, now)
            .into_iter()
            .flatten()
            .map(|m| m.as_bytes().to_vec())
            .collect()
    }
}

/// What [`Pair::pump`] delivered to each tunnel, and what was refused.
#[derive(Debug, Default)]
pub struct Delivered {
    pub at_cw: Vec<Vec<u8>>,
    pub at_remote: Vec<Vec<u8>>,
    pub cw_drops: Vec<Drop>,
    pub remote_errors: Vec<String>,
}

/// Both sides, configured for each other.
pub struct Pair<R> {
    pub cw: Corewire,
    pub remote: R,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Setup {
    pub cw_psk: Option<[u8; 32]>,
    pub remote_psk: Option<[u8; 32]>,
    pub remote_under_load: bool,
}

impl<R: Remote> Pair<R> {
    pub fn new(setup: Setup) -> Self {
        let now = Instant::now();
        let cw_key = PrivateKey::generate();
        let remote_key = PrivateKey::generate();
        let mut shard = Shard::new(ShardSetup {
            id: 0,
            workers: 1,
            tso: false,
            uso: false,
            clock: (now, SystemTime::now()),
            pool: Pool::new(0, 256),
            cookies: CookieSeed::generate(now),
            directory: Directory::default(),
        });
        shard.set_mtu(MTU);
        shard.set_sockets(cw_addr().port(), true);
        let peer_config = PeerConfig {
            public_key: remote_key.public_key(),
            preshared_key: setup
                .cw_psk
                .map(PresharedKey::from_bytes)
                .unwrap_or_default(),
            endpoint: Some(remote_addr()),
            persistent_keepalive: 0,
            allowed_ips: vec![
                (IpAddr::V4(REMOTE_INNER4), 32),
                (IpAddr::V6(REMOTE_INNER6), 128),
            ],
        };
        shard.apply(
            &[
                Change::PrivateKey(Some(cw_key.clone())),
                Change::Peer(peer_config),
            ],
            now,
        );
        let peer = shard
            .interface()
            .peer_by_key(&remote_key.public_key())
            .expect("peer");
        let remote = R::new(RemoteConfig {
            private: *remote_key.as_bytes(),
            peer_public: *cw_key.public_key().as_bytes(),
            psk: setup.remote_psk,
            under_load: setup.remote_under_load,
        });
        assert_eq!(
            &remote.public_key(),
            remote_key.public_key().as_bytes(),
            "{} derives the same public key from the private key bytes",
            R::NAME
        );
        Pair {
            cw: Corewire { shard, peer, now },
            remote,
        }
    }

    /// Delivers a datagram from corewire to the remote.
    pub fn remote_gets(&mut self, datagram: &[u8]) -> Rx {
        self.remote.receive(cw_addr(), datagram)
    }

    /// Delivers a datagram from the remote to corewire.
    pub fn cw_gets(&mut self, datagram: &[u8]) -> CwOut {
        self.cw.receive(remote_addr(), datagram)
    }

    /// corewire sends `packets` over an established session; each must
    /// leave at once and arrive at the remote byte for byte.
    pub fn cw_sends(&mut self, packets: &[Vec<u8>]) {
        let wire = self.cw.send(packets);
        assert!(self.cw.staged().is_empty(), "nothing staged with a session");
        assert_eq!(wire.len(), packets.len(), "one datagram per packet");
        for (d, p) in wire.iter().zip(packets) {
            assert_transport(d);
            assert_eq!(
                &self.remote_gets(d).tunnel(),
                p,
                "{} got it intact",
                R::NAME
            );
        }
    }

    /// The remote sends `packets` over an established session; each must
    /// arrive at corewire byte for byte (padding trimmed).
    pub fn remote_sends(&mut self, packets: &[Vec<u8>]) {
        for p in packets {
            let wire = self.remote.send(p);
            assert_eq!(wire.len(), 1, "{} seals at once", R::NAME);
            assert_transport(&wire[0]);
            let out = self.cw_gets(&wire[0]);
            assert!(out.send.is_empty(), "nothing to answer: {:?}", out.send);
            assert_eq!(&out.data(), p, "corewire got it intact");
        }
    }

    /// Carries datagrams both ways, in order, until none are left; each
    /// datagram reaching corewire takes 10 ms of its (simulated) time.
    pub fn pump(&mut self, to_remote: Vec<Vec<u8>>, to_cw: Vec<Vec<u8>>) -> Delivered {
        let mut wire: std::collections::VecDeque<(bool, Vec<u8>)> = to_remote
            .into_iter()
            .map(|d| (false, d))
            .chain(to_cw.into_iter().map(|d| (true, d)))
            .collect();
        let mut got = Delivered::default();
        let mut guard = 0;
        while let Some((for_cw, d)) = wire.pop_front() {
            guard += 1;
            assert!(guard < 1000, "datagram storm");
            if for_cw {
                self.cw.advance(Duration::from_millis(10));
                let out = self.cw_gets(&d);
                wire.extend(out.send.into_iter().map(|d| (false, d)));
                match out.rx {
                    CwRx::Data { packet, .. } => got.at_cw.push(packet),
                    CwRx::Dropped(drop) => got.cw_drops.push(drop),
                    _ => {}
                }
            } else {
                match self.remote_gets(&d) {
                    Rx::Send(v) => wire.extend(v.into_iter().map(|d| (true, d))),
                    Rx::Tunnel(p) => got.at_remote.push(p),
                    Rx::Error(e) => got.remote_errors.push(e),
                    Rx::Keepalive | Rx::Done => {}
                }
            }
        }
        got
    }

    /// corewire initiates with nothing staged; the remote answers and
    /// takes corewire's keepalive.
    pub fn establish_cw_initiated(&mut self) {
        let (peer, now) = (self.cw.peer, self.cw.now);
        let init = self.cw.iface().initiate(peer, now).expect("initiation");
        let resp = self.remote_gets(init.as_bytes()).send();
        assert_eq!(resp.len(), 1);
        assert_response(&resp[0]);
        let out = self.cw_gets(&resp[0]);
        assert!(matches!(out.rx, CwRx::HandshakeComplete), "{:?}", out.rx);
        assert_eq!(out.send.len(), 1);
        assert_keepalive(&out.send[0]);
        assert!(matches!(self.remote_gets(&out.send[0]), Rx::Keepalive));
        assert!(self.cw.can_send());
    }

    /// The remote initiates (asked to send `first`); corewire answers and
    /// the remote's keepalive-or-data confirms the session.
    pub fn establish_remote_initiated(&mut self) {
        let first = small(false, 0xa0);
        let wire = self.remote.send(&first);
        assert_eq!(wire.len(), 1);
        assert_initiation(&wire[0]);
        let out = self.cw_gets(&wire[0]);
        assert!(matches!(out.rx, CwRx::Response), "{:?}", out.rx);
        let back = self.remote_gets(&out.send[0]).send();
        let mut delivered = Vec::new();
        for d in back {
            match self.cw_gets(&d).rx {
                CwRx::Data { packet, .. } => delivered.push(packet),
                CwRx::Keepalive { confirmed } => assert!(confirmed),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(delivered, vec![first]);
        assert!(self.cw.can_send());
    }
}

fn assert_no_session_delivered<R: Remote>(pair: &mut Pair<R>) {
    assert!(!pair.cw.can_send(), "corewire must have no usable session");
    assert!(
        pair.cw.peer().last_handshake().is_none(),
        "corewire must not report a handshake"
    );
}

// ---------------------------------------------------------------------------
// The test cases, for any implementation

/// Case 1: corewire initiates (because it has packets to send), the remote
/// responds; every packet of the mix crosses intact in both directions.
pub fn cw_initiates<R: Remote>(setup: Setup) {
    let mut pair = Pair::<R>::new(setup);
    let to_remote = packet_mix(true, 1);
    let wire = pair.cw.send(&to_remote);
    assert_eq!(wire.len(), 1, "no session: only an initiation leaves");
    assert_initiation(&wire[0]);
    assert_eq!(pair.cw.staged().len(), to_remote.len(), "packets staged");
    assert_eq!(initiation_mac2(&wire[0]), [0; 16], "no cookie yet");

    let resp = pair.remote_gets(&wire[0]).send();
    assert_eq!(resp.len(), 1, "{} answers with one response", R::NAME);
    assert_response(&resp[0]);
    assert_eq!(
        receiver_index(&resp[0]),
        sender_index(&wire[0]),
        "the response names corewire's index"
    );

    let out = pair.cw_gets(&resp[0]);
    assert!(matches!(out.rx, CwRx::HandshakeComplete), "{:?}", out.rx);
    assert!(pair.cw.can_send());
    assert!(pair.cw.peer().last_handshake().is_some());
    // The staged packets go instead of a keepalive, and confirm the session.
    assert_eq!(out.send.len(), to_remote.len());
    for (d, p) in out.send.iter().zip(&to_remote) {
        assert_transport(d);
        assert_eq!(
            receiver_index(d),
            sender_index(&resp[0]),
            "sealed for the responder's index"
        );
        assert_eq!(
            &pair.remote_gets(d).tunnel(),
            p,
            "{} got it intact",
            R::NAME
        );
    }

    pair.remote_sends(&packet_mix(false, 2));
    pair.cw_sends(&packet_mix(true, 3));
}

/// Case 2: the remote initiates (because it has a packet to send),
/// corewire responds; the remote's keepalive and queued data confirm the
/// session; then the mix crosses both ways.
pub fn remote_initiates<R: Remote>(setup: Setup) {
    let mut pair = Pair::<R>::new(setup);
    let first = small(false, 7);
    let wire = pair.remote.send(&first);
    assert_eq!(wire.len(), 1);
    assert_initiation(&wire[0]);
    // A second packet while the handshake runs is queued, not sent.
    let second = ipv6_packet(REMOTE_INNER6, CW_INNER6, 333, 9);
    assert!(
        pair.remote.send(&second).is_empty(),
        "queued during handshake"
    );

    let out = pair.cw_gets(&wire[0]);
    assert!(matches!(out.rx, CwRx::Response), "{:?}", out.rx);
    assert_eq!(out.send.len(), 1);
    assert_response(&out.send[0]);
    assert_eq!(receiver_index(&out.send[0]), sender_index(&wire[0]));
    // The responder must not send before the initiator confirms.
    assert!(!pair.cw.can_send(), "responder waits for confirmation");

    let back = pair.remote_gets(&out.send[0]).send();
    assert!(!back.is_empty());
    let mut delivered = Vec::new();
    let mut confirmations = 0;
    for d in &back {
        assert_transport(d);
        let out = pair.cw_gets(d);
        assert!(out.send.is_empty(), "nothing staged, nothing to send");
        match out.rx {
            CwRx::Data { packet, confirmed } => {
                confirmations += usize::from(confirmed);
                delivered.push(packet);
            }
            CwRx::Keepalive { confirmed } => confirmations += usize::from(confirmed),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(confirmations, 1, "exactly the first message confirms");
    assert_eq!(
        delivered,
        vec![first, second],
        "queued packets intact, in order"
    );
    assert!(pair.cw.can_send());
    assert!(pair.cw.peer().last_handshake().is_some());

    pair.cw_sends(&packet_mix(true, 4));
    pair.remote_sends(&packet_mix(false, 5));
}

/// Case 3a: the same preshared key on both sides, both directions.
pub fn psk_match<R: Remote>() {
    let psk = *PresharedKey::generate().as_bytes();
    let setup = Setup {
        cw_psk: Some(psk),
        remote_psk: Some(psk),
        ..Setup::default()
    };
    cw_initiates::<R>(setup);
    remote_initiates::<R>(setup);
}

/// Case 3b: different preshared keys (or one side without): no handshake
/// completes in either direction and no packet gets through. Returns the
/// pair so implementation-specific tests can inspect the remote.
pub fn psk_mismatch<R: Remote>(cw_psk: Option<[u8; 32]>, remote_psk: Option<[u8; 32]>) -> Pair<R> {
    let mut pair = Pair::<R>::new(Setup {
        cw_psk,
        remote_psk,
        ..Setup::default()
    });

    // corewire initiates. The initiation does not involve the PSK, so the
    // remote answers; the response's empty payload is sealed under a key
    // that mixes the PSK in, so corewire cannot open it.
    let wire = pair.cw.send(&[small(true, 1)]);
    assert_initiation(&wire[0]);
    let resp = pair.remote_gets(&wire[0]).send();
    assert_response(&resp[0]);
    let out = pair.cw_gets(&resp[0]);
    assert!(
        matches!(
            out.rx,
            CwRx::Dropped(Drop::Peer(PeerError::Handshake(HandshakeError::Decrypt)))
        ),
        "{:?}",
        out.rx
    );
    assert!(out.send.is_empty());
    assert_no_session_delivered(&mut pair);
    assert_eq!(pair.cw.staged().len(), 1, "still waiting");

    // Whatever the remote sends now cannot reach corewire's tunnel: either
    // it has no confirmed session and initiates, or it seals under its
    // half-made responder session, which corewire never derived.
    for d in pair.remote.send(&small(false, 2)) {
        match msg_type(&d) {
            TYPE_INITIATION => {
                let out = pair.cw_gets(&d);
                assert!(matches!(out.rx, CwRx::Response), "{:?}", out.rx);
                let rx = pair.remote_gets(&out.send[0]);
                assert!(
                    matches!(rx, Rx::Error(_)),
                    "{} must refuse the response: {rx:?}",
                    R::NAME
                );
            }
            TYPE_TRANSPORT => {
                let out = pair.cw_gets(&d);
                assert!(
                    matches!(
                        out.rx,
                        CwRx::Dropped(Drop::UnknownIndex | Drop::Peer(PeerError::UnknownIndex))
                    ),
                    "{:?}",
                    out.rx
                );
            }
            t => panic!("unexpected message type {t}"),
        }
    }
    assert_no_session_delivered(&mut pair);

    // The remote initiates explicitly: corewire answers, the remote refuses
    // the response, corewire's responder session is never confirmed.
    pair.cw.advance(Duration::from_secs(1));
    let init = pair.remote.initiate(true).expect("initiation");
    let out = pair.cw_gets(&init);
    assert!(matches!(out.rx, CwRx::Response), "{:?}", out.rx);
    let rx = pair.remote_gets(&out.send[0]);
    assert!(matches!(rx, Rx::Error(_)), "{rx:?}");
    assert_no_session_delivered(&mut pair);
    pair
}

/// Case 4: the remote is under load and answers corewire's initiation with
/// a cookie reply; corewire takes it, and its retransmission (driven by
/// its own timers, REKEY_TIMEOUT later in simulated time) carries a mac2
/// the remote accepts.
pub fn remote_cookie<R: Remote>() {
    let mut pair = Pair::<R>::new(Setup {
        remote_under_load: true,
        ..Setup::default()
    });
    let packets = packet_mix(true, 11);
    let wire = pair.cw.send(&packets);
    assert_eq!(wire.len(), 1);
    assert_eq!(initiation_mac2(&wire[0]), [0; 16]);

    let cookie = pair.remote_gets(&wire[0]).send();
    assert_eq!(
        cookie.len(),
        1,
        "{} under load answers with a cookie",
        R::NAME
    );
    assert_cookie_reply(&cookie[0]);
    assert_eq!(receiver_index(&cookie[0]), sender_index(&wire[0]));

    let out = pair.cw_gets(&cookie[0]);
    assert!(matches!(out.rx, CwRx::CookieAccepted), "{:?}", out.rx);
    assert!(out.send.is_empty(), "a cookie reply is not answered");
    assert_eq!(pair.cw.peer().endpoint(), Some(remote_addr()));
    // The same reply again is refused: one reply per message sent.
    let again = pair.cw_gets(&cookie[0]);
    assert!(matches!(again.rx, CwRx::Dropped(_)), "{:?}", again.rx);

    // Nothing is resent before REKEY_TIMEOUT...
    pair.cw.advance(REKEY_TIMEOUT - Duration::from_millis(1));
    assert!(pair.cw.tick().is_empty());
    // ...then the retransmission timer resends, now with mac2.
    pair.cw
        .advance(REKEY_TIMEOUT_JITTER_MAX + Duration::from_millis(2));
    let retry = pair.cw.tick();
    assert_eq!(retry.len(), 1, "one retransmission");
    assert_ne!(initiation_mac2(&retry[0]), [0; 16], "mac2 from the cookie");

    // The mac2 is bound to corewire's address: from another host the same
    // message gets another cookie reply instead of an answer.
    let elsewhere = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)), 51820);
    let rx = pair.remote.receive(elsewhere, &retry[0]);
    match rx {
        Rx::Send(v) => assert_cookie_reply(&v[0]),
        other => panic!("expected a cookie reply, got {other:?}"),
    }

    let resp = pair.remote_gets(&retry[0]).send();
    assert_eq!(resp.len(), 1, "{} proceeds with a valid mac2", R::NAME);
    assert_response(&resp[0]);
    assert_eq!(receiver_index(&resp[0]), sender_index(&retry[0]));
    let out = pair.cw_gets(&resp[0]);
    assert!(matches!(out.rx, CwRx::HandshakeComplete), "{:?}", out.rx);
    assert_eq!(out.send.len(), packets.len());
    for (d, p) in out.send.iter().zip(&packets) {
        assert_eq!(&pair.remote_gets(d).tunnel(), p);
    }
    pair.remote_sends(&packet_mix(false, 12));
}

/// Case 5: corewire is under load and answers the remote's initiation with
/// a cookie reply; the remote takes it, and its next initiation carries a
/// mac2 corewire accepts.
pub fn cw_cookie<R: Remote>() {
    let mut pair = Pair::<R>::new(Setup::default());
    let now = pair.cw.now;
    pair.cw.iface().signal_load(now);

    let first = small(false, 21);
    let wire = pair.remote.send(&first);
    assert_initiation(&wire[0]);
    assert_eq!(initiation_mac2(&wire[0]), [0; 16]);
    let out = pair.cw_gets(&wire[0]);
    assert!(matches!(out.rx, CwRx::CookieReply), "{:?}", out.rx);
    assert_eq!(out.send.len(), 1);
    assert_cookie_reply(&out.send[0]);
    assert_eq!(receiver_index(&out.send[0]), sender_index(&wire[0]));
    assert!(
        !pair.cw.peer().is_active(),
        "no state for an unproven sender"
    );

    let rx = pair.remote_gets(&out.send[0]);
    assert!(
        matches!(rx, Rx::Done),
        "{} takes the cookie: {rx:?}",
        R::NAME
    );

    let retry = pair.remote.initiate(true).expect("initiation");
    assert_ne!(initiation_mac2(&retry), [0; 16], "{} sets mac2", R::NAME);

    // corewire binds the cookie to address and port: from another port
    // the same initiation gets another cookie reply.
    let other_port = SocketAddr::new(remote_addr().ip(), remote_addr().port() + 1);
    let out = pair.cw.receive(other_port, &retry);
    assert!(matches!(out.rx, CwRx::CookieReply), "{:?}", out.rx);

    pair.cw.advance(Duration::from_millis(100)); // still under load (1 s hold)
    let out = pair.cw_gets(&retry);
    assert!(matches!(out.rx, CwRx::Response), "{:?}", out.rx);
    let back = pair.remote_gets(&out.send[0]).send();
    let mut delivered = Vec::new();
    for d in &back {
        match pair.cw_gets(d).rx {
            CwRx::Data { packet, .. } => delivered.push(packet),
            CwRx::Keepalive { confirmed } => assert!(confirmed),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(delivered, vec![first]);
    assert!(pair.cw.can_send());
    pair.cw_sends(&packet_mix(true, 22));
}

/// Case 6: keepalives both ways. corewire's (from HandshakeComplete, from
/// its passive-keepalive timer, from `Interface::keepalive`, from its
/// persistent-keepalive timer, all in simulated time) are taken
/// by the remote as authenticated empty packets; the remote's keepalive
/// is `Received::Keepalive` at corewire. Tampered and replayed keepalives
/// are refused, so acceptance means something.
pub fn keepalives<R: Remote>() {
    let mut pair = Pair::<R>::new(Setup::default());
    // establish_cw_initiated asserts the HandshakeComplete keepalive is
    // 32 bytes and that the remote answers it with Rx::Keepalive.
    pair.establish_cw_initiated();

    // Passive keepalive: data came in and nothing went back for
    // KEEPALIVE_TIMEOUT, so corewire's timer sends a keepalive.
    pair.remote_sends(&[small(false, 29)]);
    pair.cw
        .advance(KEEPALIVE_TIMEOUT - Duration::from_millis(1));
    assert!(pair.cw.tick().is_empty());
    pair.cw.advance(Duration::from_millis(1));
    let ka = pair.cw.tick();
    assert_eq!(ka.len(), 1, "passive keepalive due");
    assert_keepalive(&ka[0]);
    assert!(matches!(pair.remote_gets(&ka[0]), Rx::Keepalive));

    let ka = pair.cw.keepalive();
    assert_eq!(ka.len(), 1, "a keepalive and no handshake");
    assert_keepalive(&ka[0]);
    let mut tampered = ka[0].clone();
    tampered[20] ^= 1;
    assert!(matches!(pair.remote_gets(&tampered), Rx::Error(_)));
    assert!(matches!(pair.remote_gets(&ka[0]), Rx::Keepalive));
    assert!(
        matches!(pair.remote_gets(&ka[0]), Rx::Error(_)),
        "a replayed keepalive is refused"
    );

    // Persistent keepalive, timer-driven in simulated time.
    let now = pair.cw.now;
    let peer = pair.cw.peer;
    pair.cw
        .iface()
        .peer_mut(peer)
        .expect("peer")
        .set_persistent_keepalive(25, now);
    pair.cw.advance(Duration::from_secs(24));
    assert!(pair.cw.tick().is_empty());
    pair.cw.advance(Duration::from_secs(1));
    let ka = pair.cw.tick();
    assert_eq!(ka.len(), 1, "persistent keepalive due");
    assert_keepalive(&ka[0]);
    assert!(matches!(pair.remote_gets(&ka[0]), Rx::Keepalive));

    // The remote's keepalive.
    let ka = pair.remote.send(&[]);
    assert_eq!(ka.len(), 1);
    assert_keepalive(&ka[0]);
    let mut tampered = ka[0].clone();
    tampered[KEEPALIVE_LEN - 1] ^= 0x80;
    assert!(matches!(
        pair.cw_gets(&tampered).rx,
        CwRx::Dropped(Drop::Peer(PeerError::Open(_)))
    ));
    let out = pair.cw_gets(&ka[0]);
    assert!(
        matches!(out.rx, CwRx::Keepalive { confirmed: false }),
        "{:?}",
        out.rx
    );
    assert!(out.send.is_empty());
    assert!(matches!(
        pair.cw_gets(&ka[0]).rx,
        CwRx::Dropped(Drop::Peer(PeerError::Open(_)))
    ));
    // Data still flows after all that.
    pair.remote_sends(&[small(false, 30)]);
    pair.cw_sends(&[small(true, 31)]);
}

/// Case 7a: corewire (the initiator) rekeys when its session passes
/// REKEY_AFTER_TIME in simulated time. The rekeying send still goes out
/// under the old session; packets of the old session in flight either way
/// are accepted after the new one is up; then both sides use the new one.
pub fn cw_rekeys<R: Remote>() {
    let mut pair = Pair::<R>::new(Setup::default());
    pair.establish_cw_initiated();
    pair.cw_sends(&[small(true, 1)]);
    let old_to_remote = {
        let w = pair.cw.send(&[small(true, 2)]);
        let idx = receiver_index(&w[0]);
        assert_eq!(pair.remote_gets(&w[0]).tunnel(), small(true, 2));
        idx
    };
    let w = pair.remote.send(&small(false, 3));
    let old_to_cw = receiver_index(&w[0]);
    assert_eq!(pair.cw_gets(&w[0]).data(), small(false, 3));

    pair.cw.advance(REKEY_AFTER_TIME + Duration::from_secs(1));
    let a = small(true, 4);
    let wire = pair.cw.send(std::slice::from_ref(&a));
    assert_eq!(wire.len(), 2, "an initiation and the packet");
    assert_initiation(&wire[0]);
    assert_transport(&wire[1]);
    assert_eq!(
        receiver_index(&wire[1]),
        old_to_remote,
        "sent on the old session"
    );
    let a_in_flight = wire[1].clone();

    // The remote sends before it hears of the rekey: old session.
    let b = small(false, 5);
    let w = pair.remote.send(&b);
    assert_eq!(receiver_index(&w[0]), old_to_cw);
    let b_in_flight = w[0].clone();

    let resp = pair.remote_gets(&wire[0]).send();
    assert_response(&resp[0]);
    let out = pair.cw_gets(&resp[0]);
    assert!(matches!(out.rx, CwRx::HandshakeComplete), "{:?}", out.rx);
    assert_keepalive(&out.send[0]);
    let new_to_remote = receiver_index(&out.send[0]);
    assert_ne!(new_to_remote, old_to_remote, "a new session");

    // Old-session packets still in flight arrive after the new session.
    assert_eq!(pair.remote_gets(&a_in_flight).tunnel(), a);
    assert_eq!(pair.cw_gets(&b_in_flight).data(), b);

    // The keepalive confirms the new session to the remote.
    assert!(matches!(pair.remote_gets(&out.send[0]), Rx::Keepalive));
    // The remote now sends under the new session...
    let c = packet_mix(false, 6);
    for p in &c {
        let w = pair.remote.send(p);
        assert_ne!(
            receiver_index(&w[0]),
            old_to_cw,
            "remote moved to the new session"
        );
        assert_eq!(&pair.cw_gets(&w[0]).data(), p);
    }
    // ...and so does corewire, without another handshake.
    let d = packet_mix(true, 7);
    let w = pair.cw.send(&d);
    assert_eq!(w.len(), d.len(), "no further initiation");
    for (x, p) in w.iter().zip(&d) {
        assert_eq!(receiver_index(x), new_to_remote);
        assert_eq!(&pair.remote_gets(x).tunnel(), p);
    }
}

/// Case 7b: the remote (the initiator) starts a new handshake while a
/// session is up (what its rekey timers do, forced here). corewire as
/// responder keeps the old session until the new one is confirmed; old
/// packets in flight either way are accepted; then both use the new one.
pub fn remote_rekeys<R: Remote>() {
    let mut pair = Pair::<R>::new(Setup::default());
    pair.establish_remote_initiated();
    let w = pair.cw.send(&[small(true, 1)]);
    let old_to_remote = receiver_index(&w[0]);
    assert_eq!(pair.remote_gets(&w[0]).tunnel(), small(true, 1));
    let w = pair.remote.send(&small(false, 2));
    let old_to_cw = receiver_index(&w[0]);
    assert_eq!(pair.cw_gets(&w[0]).data(), small(false, 2));

    pair.cw.advance(Duration::from_secs(1));
    let init = pair.remote.initiate(true).expect("initiation");
    let out = pair.cw_gets(&init);
    assert!(matches!(out.rx, CwRx::Response), "{:?}", out.rx);
    let resp = out.send[0].clone();

    // Until the remote confirms, corewire keeps sending on the old session.
    let a = small(true, 3);
    let w = pair.cw.send(std::slice::from_ref(&a));
    assert_eq!(w.len(), 1, "no handshake of its own: {w:?}");
    assert_eq!(receiver_index(&w[0]), old_to_remote);
    let a_in_flight = w[0].clone();
    // The remote sends before the response arrives: old session.
    let b = small(false, 4);
    let w = pair.remote.send(&b);
    assert_eq!(receiver_index(&w[0]), old_to_cw);
    let b_in_flight = w[0].clone();

    let back = pair.remote_gets(&resp).send();
    assert_keepalive(&back[0]);
    let new_to_cw = receiver_index(&back[0]);
    assert_ne!(new_to_cw, old_to_cw, "a new session");
    assert_eq!(new_to_cw, sender_index(&resp));
    // Old packet from corewire reaches the remote after it switched.
    assert_eq!(pair.remote_gets(&a_in_flight).tunnel(), a);
    // The keepalive confirms corewire's new session...
    let out = pair.cw_gets(&back[0]);
    assert!(
        matches!(out.rx, CwRx::Keepalive { confirmed: true }),
        "{:?}",
        out.rx
    );
    // ...and the remote's old packet is still accepted from `previous`.
    assert_eq!(pair.cw_gets(&b_in_flight).data(), b);

    // Both now use the new session.
    let c = packet_mix(true, 5);
    let w = pair.cw.send(&c);
    assert_eq!(w.len(), c.len());
    for (x, p) in w.iter().zip(&c) {
        assert_eq!(receiver_index(x), sender_index(&init), "new session");
        assert_eq!(&pair.remote_gets(x).tunnel(), p);
    }
    for p in &packet_mix(false, 6) {
        let w = pair.remote.send(p);
        assert_eq!(receiver_index(&w[0]), new_to_cw);
        assert_eq!(&pair.cw_gets(&w[0]).data(), p);
    }
}

/// Cookies on responses (1): the remote initiates, and is itself under
/// load, so corewire's response gets a cookie reply (mac2 is checked on
/// responses too). corewire must take a cookie addressed to its
/// response's index, and stamp mac2 on its next response.
pub fn remote_cookie_on_response<R: Remote>() {
    let mut pair = Pair::<R>::new(Setup {
        remote_under_load: true,
        ..Setup::default()
    });
    let first = small(false, 51);
    let init = pair.remote.send(&first);
    assert_initiation(&init[0]);
    let out = pair.cw_gets(&init[0]);
    assert!(matches!(out.rx, CwRx::Response), "{:?}", out.rx);
    let resp = &out.send[0];
    assert_eq!(&resp[76..92], &[0; 16], "no cookie yet: mac2 is zero");

    let cookie = pair.remote_gets(resp).send();
    assert_eq!(
        cookie.len(),
        1,
        "{} under load answers the response with a cookie",
        R::NAME
    );
    assert_cookie_reply(&cookie[0]);
    assert_eq!(receiver_index(&cookie[0]), sender_index(resp));
    let out = pair.cw_gets(&cookie[0]);
    assert!(matches!(out.rx, CwRx::CookieAccepted), "{:?}", out.rx);
    assert!(!pair.cw.can_send());

    // The remote's retransmission; corewire's new response carries mac2.
    pair.cw.advance(Duration::from_secs(1));
    let init = pair.remote.initiate(true).expect("initiation");
    let out = pair.cw_gets(&init);
    assert!(matches!(out.rx, CwRx::Response), "{:?}", out.rx);
    let resp = &out.send[0];
    assert_ne!(&resp[76..92], &[0; 16], "mac2 from the cookie");
    let back = pair.remote_gets(resp).send();
    let mut delivered = Vec::new();
    for d in &back {
        match pair.cw_gets(d).rx {
            CwRx::Data { packet, .. } => delivered.push(packet),
            CwRx::Keepalive { confirmed } => assert!(confirmed),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(delivered, vec![first]);
    assert!(pair.cw.can_send());
    pair.cw_sends(&[small(true, 52)]);
}

/// Cookies on responses (2): corewire initiates while under load, so the
/// remote's response gets a cookie reply from corewire. The remote takes
/// it; corewire's retransmission (REKEY_TIMEOUT later) is answered with a
/// response carrying mac2, which corewire accepts under load.
pub fn cw_cookie_on_response<R: Remote>() {
    let mut pair = Pair::<R>::new(Setup::default());
    let now = pair.cw.now;
    pair.cw.iface().signal_load(now);
    let packets = vec![small(true, 61), small(true, 62)];
    let init = pair.cw.send(&packets);
    assert_initiation(&init[0]);
    let resp = pair.remote_gets(&init[0]).send();
    assert_response(&resp[0]);
    let out = pair.cw_gets(&resp[0]);
    assert!(matches!(out.rx, CwRx::CookieReply), "{:?}", out.rx);
    assert_cookie_reply(&out.send[0]);
    assert_eq!(receiver_index(&out.send[0]), sender_index(&resp[0]));
    assert!(!pair.cw.can_send());
    let rx = pair.remote_gets(&out.send[0]);
    assert!(
        matches!(rx, Rx::Done),
        "{} takes the cookie: {rx:?}",
        R::NAME
    );

    pair.cw
        .advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX + Duration::from_millis(1));
    let now = pair.cw.now;
    pair.cw.iface().signal_load(now);
    let retry = pair.cw.tick();
    assert_eq!(retry.len(), 1);
    let resp = pair.remote_gets(&retry[0]).send();
    assert_response(&resp[0]);
    assert_ne!(&resp[0][76..92], &[0; 16], "{} stamps mac2", R::NAME);
    let out = pair.cw_gets(&resp[0]);
    assert!(matches!(out.rx, CwRx::HandshakeComplete), "{:?}", out.rx);
    assert_eq!(out.send.len(), packets.len());
    for (d, p) in out.send.iter().zip(&packets) {
        assert_eq!(&pair.remote_gets(d).tunnel(), p);
    }
    pair.remote_sends(&[small(false, 63)]);
}

/// A responder asked to send before its session is confirmed stages the
/// packet and sends nothing: in the kernel (wg_packet_send_handshake_response
/// sets last_sent_handshake) and wireguard-go (SendHandshakeResponse sets
/// lastSentHandshake) a response counts as a handshake sent for the
/// REKEY_TIMEOUT rate limit, so no initiation of its own crosses the one it
/// just answered. The first message from the initiator releases the packet.
pub fn responder_stages_until_confirmed<R: Remote>() {
    let mut pair = Pair::<R>::new(Setup::default());
    let first = small(false, 71);
    let init = pair.remote.send(&first);
    let out = pair.cw_gets(&init[0]);
    assert!(matches!(out.rx, CwRx::Response), "{:?}", out.rx);
    let resp = out.send[0].clone();

    let early = small(true, 72);
    let w = pair.cw.send(std::slice::from_ref(&early));
    assert_eq!(pair.cw.staged(), vec![early.clone()], "staged");
    assert!(
        w.is_empty(),
        "corewire sent {:?} (message types) while its response was in flight",
        w.iter().map(|d| msg_type(d)).collect::<Vec<_>>()
    );

    let back = pair.remote_gets(&resp).send();
    let got = pair.pump(Vec::new(), back);
    assert_eq!(got.at_cw, vec![first]);
    assert_eq!(got.at_remote, vec![early]);
    assert!(
        got.cw_drops.is_empty() && got.remote_errors.is_empty(),
        "{got:?}"
    );
}

/// Both sides start a handshake at the same moment (each has a packet to
/// send) and the initiations cross. Whatever sessions result, both sides
/// converge: every packet arrives exactly once, and traffic then flows
/// both ways on one session.
pub fn simultaneous_initiations<R: Remote>() {
    let mut pair = Pair::<R>::new(Setup::default());
    let pc = small(true, 81);
    let pr = small(false, 82);
    let from_cw = pair.cw.send(std::slice::from_ref(&pc));
    assert_initiation(&from_cw[0]);
    let from_remote = pair.remote.send(&pr);
    assert_initiation(&from_remote[0]);
    let got = pair.pump(from_cw, from_remote);
    assert_eq!(got.at_cw, vec![pr], "{got:?}");
    assert_eq!(got.at_remote, vec![pc], "{got:?}");
    assert!(pair.cw.can_send());
    assert!(pair.cw.staged().is_empty());
    // Afterwards both directions work without further handshakes.
    pair.cw.advance(Duration::from_secs(1));
    pair.cw_sends(&packet_mix(true, 83));
    pair.remote_sends(&packet_mix(false, 84));
}
