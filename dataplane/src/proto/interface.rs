//! One WireGuard interface, sans-IO: its key, its peers, their allowed
//! IPs and session indexes, and the dispatch of incoming datagrams.
//!
//! [`Interface::receive`] takes one datagram from the network and says
//! what to do with it; [`Interface::encrypt_batch`] seals packets for a
//! peer; [`Interface::tick`] runs timers. The engine around it owns sockets,
//! TUN queues, buffers and clocks, and stages packets while a handshake is
//! under way.
//!
//! Denial of service: mac1 is checked before any public-key work. When the
//! engine signals load ([`Interface::signal_load`]), handshakes without a
//! valid mac2 get a cookie reply instead of an answer, and those with one
//! pass a per-source token bucket.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use zerocopy::{FromZeros, IntoBytes};

use super::allowedips::{AllowedIps, AllowedIpsError};
use super::cookie::{CookieChecker, CookieSeed, MacVerdict};
use super::handshake::{self, Identity};
use super::index::IndexTable;
use super::keys::{PresharedKey, PrivateKey, PublicKey};
use super::messages::{self, ControlMsg, CookieReply, MacProtected, Message};
use super::peer::{Clock, Ctx, Peer, PeerError, PeerId, SendOutcome, TickOutcome};
use super::ratelimiter::RateLimiter;
use super::session::PacketBuf;

/// How long the interface stays "under load" after the engine last said so.
pub const UNDER_LOAD_HOLD: Duration = Duration::from_secs(1);

/// Why a datagram was dropped. The engine counts each kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Drop {
    /// Not a WireGuard message.
    #[error("malformed: {0}")]
    Malformed(#[from] messages::ParseError),
    /// mac1 did not verify.
    #[error("bad mac1")]
    BadMac,
    /// Under load and over the source's handshake rate.
    #[error("handshake rate limited")]
    RateLimited,
    /// The interface has no private key.
    #[error("no private key")]
    NoIdentity,
    /// The initiator's static key is not a configured peer.
    #[error("unknown peer")]
    UnknownPeer,
    /// The receiver index names no live handshake or session.
    #[error("unknown receiver index")]
    UnknownIndex,
    /// The peer refused it (authentication, replay, expiry...).
    #[error("{0}")]
    Peer(#[from] PeerError),
    /// Decrypted, but not an IPv4 or IPv6 packet.
    #[error("inner packet is not IP")]
    NotIp,
    /// Decrypted, but its source address is not allowed for the sending peer.
    #[error("inner source not allowed for the peer")]
    SourceNotAllowed,
}

/// What to do with a datagram handed to [`Interface::receive`].
#[derive(Debug)]
pub enum Received {
    /// The buffer now holds an IP packet from `peer` to write to the TUN.
    Data {
        /// The sender.
        peer: PeerId,
        /// It confirmed a new session: send packets staged for the peer.
        confirmed: bool,
        /// An initiation to send to the peer (rekey), if due.
        handshake: Option<ControlMsg>,
    },
    /// A keepalive from `peer`: nothing to deliver.
    Keepalive {
        /// The sender.
        peer: PeerId,
        /// It confirmed a new session: send packets staged for the peer.
        confirmed: bool,
        /// An initiation to send to the peer (rekey), if due.
        handshake: Option<ControlMsg>,
    },
    /// Send `reply` back to the datagram's source (a handshake response
    /// for `peer`, or a cookie reply when `peer` is `None`).
    Reply {
        /// The peer answered, if the reply is a handshake response.
        peer: Option<PeerId>,
        /// The datagram to send.
        reply: ControlMsg,
    },
    /// Our handshake with `peer` completed: send its staged packets, or
    /// `keepalive` if none are staged.
    HandshakeComplete {
        /// The peer.
        peer: PeerId,
        /// A keepalive under the new session.
        keepalive: ControlMsg,
    },
    /// An authenticated initiation from a peer this interface does not
    /// hold: with sharded workers, the engine hands the datagram to the
    /// worker that owns `key` (or drops it if no worker does).
    Foreign {
        /// The initiator's static public key.
        key: PublicKey,
    },
    /// A cookie reply was taken in; the next initiation will carry mac2.
    CookieAccepted {
        /// The peer that sent it.
        peer: PeerId,
    },
    /// Dropped, for the given reason.
    Dropped(Drop),
}

/// Why a configuration change was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// No peer with that handle.
    #[error("no such peer")]
    NoSuchPeer,
    /// The peer's public key is the interface's own.
    #[error("a peer cannot have the interface's own public key")]
    OwnKey,
    /// A bad allowed-IP prefix.
    #[error(transparent)]
    AllowedIps(#[from] AllowedIpsError),
}

/// A WireGuard interface's protocol state.
#[derive(Debug)]
pub struct Interface {
    identity: Option<Identity>,
    checker: Option<CookieChecker>,
    /// Where the checker's cookie secrets come from (shared by the device's
    /// shards).
    cookies: CookieSeed,
    peers: Vec<Option<Peer>>,
    free: Vec<PeerId>,
    by_key: HashMap<PublicKey, PeerId>,
    indexes: IndexTable<PeerId>,
    allowed: AllowedIps<PeerId>,
    /// The last inner source address looked up in `allowed` on receive,
    /// with the answer: consecutive packets mostly come from one host.
    /// Cleared by every change to `allowed` (all go through `allowed_mut`).
    last_source: Option<(IpAddr, Option<PeerId>)>,
    limiter: RateLimiter,
    under_load_until: Option<Instant>,
    clock: Clock,
    worker: u32,
    /// Peers that may hold handshake or session state: the only ones whose
    /// timers can be armed. A peer enters when it starts or answers a
    /// handshake and leaves when its keys are erased, so a concentrator's
    /// idle peers cost nothing per tick.
    active: HashSet<PeerId>,
    tick_scratch: Vec<PeerId>,
}

impl Interface {
    /// An interface without a key or peers. `now` and `wall` are read
    /// together once by the caller to map monotonic to wall-clock time.
    pub fn new(now: Instant, wall: SystemTime) -> Self {
        Self::new_shard(now, wall, 0, 0, CookieSeed::generate(now))
    }

    /// One worker's shard of an interface: session indexes it allocates
    /// carry `worker` in their low `worker_bits` bits, so any worker can
    /// tell which one owns a session from the index alone. Every shard of
    /// one device gets the same `cookies` seed, so they accept each other's
    /// cookies.
    pub fn new_shard(
        now: Instant,
        wall: SystemTime,
        worker: u32,
        worker_bits: u8,
        cookies: CookieSeed,
    ) -> Self {
        Self {
            identity: None,
            checker: None,
            cookies,
            peers: Vec::new(),
            free: Vec::new(),
            by_key: HashMap::new(),
            indexes: IndexTable::new(worker_bits),
            allowed: AllowedIps::new(),
            last_source: None,
            limiter: RateLimiter::new(),
            under_load_until: None,
            clock: Clock::new(now, wall),
            worker,
            active: HashSet::new(),
            tick_scratch: Vec::new(),
        }
    }

    /// Sets, replaces or (with `None`) removes the private key. Every
    /// session is erased, since they were made under the old key; a peer
    /// whose public key equals the new one is removed, as in the kernel.
    pub fn set_private_key(&mut self, key: Option<PrivateKey>) {
        let identity = key.filter(|k| !k.is_zero()).map(Identity::new);
        if identity.as_ref().map(|i| i.public_key())
            == self.identity.as_ref().map(|i| i.public_key())
        {
            return;
        }
        self.checker = identity
            .as_ref()
            .map(|i| CookieChecker::new(i.public_key(), self.cookies.clone()));
        if let Some(own) = identity
            .as_ref()
            .and_then(|i| self.by_key.get(i.public_key()).copied())
        {
            let _ = self.remove_peer(own);
        }
        self.identity = identity;
        for peer in self.peers.iter_mut().flatten() {
            peer.interface_key_changed(&mut self.indexes);
        }
    }

    /// The interface's public key, if it has a private key.
    pub fn public_key(&self) -> Option<&PublicKey> {
        self.identity.as_ref().map(|i| i.public_key())
    }

    /// The interface's private key.
    pub fn private_key(&self) -> Option<&PrivateKey> {
        self.identity.as_ref().map(|i| i.private_key())
    }

    /// Adds a peer, or returns the existing one with that key.
    pub fn add_peer(&mut self, key: PublicKey) -> Result<PeerId, ConfigError> {
        if self.public_key() == Some(&key) {
            return Err(ConfigError::OwnKey);
        }
        if let Some(&id) = self.by_key.get(&key) {
            return Ok(id);
        }
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.peers.push(None);
                (self.peers.len() - 1) as PeerId
            }
        };
        self.peers[id as usize] = Some(Peer::new(id, key, PresharedKey::default()));
        self.by_key.insert(key, id);
        Ok(id)
    }

    /// Removes a peer with its sessions and allowed IPs.
    pub fn remove_peer(&mut self, id: PeerId) -> Result<(), ConfigError> {
        let mut peer = self
            .peers
            .get_mut(id as usize)
            .and_then(Option::take)
            .ok_or(ConfigError::NoSuchPeer)?;
        peer.erase_keys(&mut self.indexes);
        self.active.remove(&id);
        self.by_key.remove(peer.public_key());
        self.allowed_mut().remove_value(id);
        self.free.push(id);
        Ok(())
    }

    /// The peer with that public key.
    pub fn peer_by_key(&self, key: &PublicKey) -> Option<PeerId> {
        self.by_key.get(key).copied()
    }

    /// A peer by handle.
    pub fn peer(&self, id: PeerId) -> Option<&Peer> {
        self.peers.get(id as usize).and_then(Option::as_ref)
    }

    /// A peer by handle, for configuration.
    pub fn peer_mut(&mut self, id: PeerId) -> Option<&mut Peer> {
        self.peers.get_mut(id as usize).and_then(Option::as_mut)
    }

    /// Every peer, in handle order.
    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.peers.iter().flatten()
    }

    /// The receiver indexes of this interface's handshakes and sessions
    /// (a mirror outside may record their changes).
    pub fn indexes_mut(&mut self) -> &mut IndexTable<PeerId> {
        &mut self.indexes
    }

    /// Peer handles in use or free: every peer's handle is below this.
    pub fn peer_slots(&self) -> usize {
        self.peers.len()
    }

    /// Number of peers.
    pub fn peer_count(&self) -> usize {
        self.by_key.len()
    }

    /// Gives `addr/cidr` to `peer`, taking it from any other peer.
    pub fn allow(&mut self, peer: PeerId, addr: IpAddr, cidr: u8) -> Result<(), ConfigError> {
        self.peer(peer).ok_or(ConfigError::NoSuchPeer)?;
        self.allowed_mut().insert(addr, cidr, peer)?;
        Ok(())
    }

    /// Takes `addr/cidr` from `peer` (no-op if another peer has it).
    pub fn disallow(&mut self, peer: PeerId, addr: IpAddr, cidr: u8) -> Result<(), ConfigError> {
        if self.allowed.get(addr, cidr)? == Some(peer) {
            self.allowed_mut().remove(addr, cidr)?;
        }
        Ok(())
    }

    /// Removes every allowed IP of `peer`.
    pub fn clear_allowed(&mut self, peer: PeerId) {
        self.allowed_mut().remove_value(peer);
    }

    /// The allowed IPs of `peer`, in the order they were given.
    pub fn allowed_ips(&self, peer: PeerId) -> impl Iterator<Item = (IpAddr, u8)> + '_ {
        self.allowed.prefixes_of(peer)
    }

    /// The peer that packets to `dst` go to (longest prefix match).
    #[inline]
    pub fn route(&self, dst: IpAddr) -> Option<PeerId> {
        self.allowed.lookup(dst)
    }

    /// Like [`Self::route`], with the matching prefix's length, so that a
    /// sharded engine can compare it with other shards' matches.
    #[inline]
    pub fn route_with_len(&self, dst: IpAddr) -> Option<(PeerId, u8)> {
        self.allowed.lookup_with_len(dst)
    }

    /// The engine's handshake queue is filling up: treat handshakes as
    /// under load for the next second.
    pub fn signal_load(&mut self, now: Instant) {
        self.under_load_until = Some(now + UNDER_LOAD_HOLD);
    }

    /// Whether handshakes are treated as under load at `now` (see
    /// [`Self::signal_load`]).
    pub fn under_load(&self, now: Instant) -> bool {
        self.under_load_until.is_some_and(|t| now < t)
    }

    /// Splits the borrow: the context for one peer operation, and the peer.
    fn ctx_and_peer(&mut self, id: PeerId) -> Option<(Ctx<'_>, &mut Peer)> {
        let peer = self.peers.get_mut(id as usize)?.as_mut()?;
        Some((
            Ctx {
                identity: self.identity.as_ref(),
                indexes: &mut self.indexes,
                worker: self.worker,
                clock: &self.clock,
            },
            peer,
        ))
    }

    /// Seals a batch of packets for `peer` (see [`Peer::encrypt_batch`]).
    pub fn encrypt_batch<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        peer: PeerId,
        pkts: &mut [PacketBuf<B>],
        mtu: usize,
        now: Instant,
    ) -> SendOutcome {
        let out = match self.ctx_and_peer(peer) {
            Some((mut ctx, p)) => p.encrypt_batch(&mut ctx, pkts, mtu, now),
            None => return SendOutcome::default(),
        };
        self.mark_active(peer);
        out
    }

    fn mark_active(&mut self, peer: PeerId) {
        if self.peer(peer).is_some_and(Peer::is_active) {
            self.active.insert(peer);
        }
    }

    /// Starts a handshake with `peer` now (rate limited per REKEY_TIMEOUT).
    pub fn initiate(&mut self, peer: PeerId, now: Instant) -> Option<ControlMsg> {
        let (mut ctx, p) = self.ctx_and_peer(peer)?;
        let msg = p.initiate(&mut ctx, now, false);
        self.mark_active(peer);
        msg
    }

    /// A keepalive for `peer` (or an initiation if it has no session).
    pub fn keepalive(&mut self, peer: PeerId, now: Instant) -> [Option<ControlMsg>; 2] {
        let out = match self.ctx_and_peer(peer) {
            Some((mut ctx, p)) => p.keepalive(&mut ctx, now),
            None => return [None, None],
        };
        self.mark_active(peer);
        out
    }

    /// Runs `peer`'s timers.
    pub fn tick_peer(&mut self, peer: PeerId, now: Instant) -> TickOutcome {
        match self.ctx_and_peer(peer) {
            Some((mut ctx, p)) => p.tick(&mut ctx, now),
            None => TickOutcome::default(),
        }
    }

    /// Runs the timers of every active peer, calling `out` for each peer
    /// with something to do. Idle peers cost nothing here.
    pub fn tick(
        &mut self,
        now: Instant,
        mut out: impl FnMut(PeerId, Option<SocketAddr>, TickOutcome),
    ) {
        let mut ids = std::mem::take(&mut self.tick_scratch);
        ids.extend(self.active.iter().copied());
        for &id in &ids {
            let due = self
                .peer(id)
                .and_then(Peer::next_deadline)
                .is_some_and(|t| t <= now);
            if due {
                let res = self.tick_peer(id, now);
                if res.drop_staged || res.send.iter().any(Option::is_some) {
                    let endpoint = self.peer(id).and_then(Peer::endpoint);
                    out(id, endpoint, res);
                }
            }
            if !self.peer(id).is_some_and(Peer::is_active) {
                self.active.remove(&id);
            }
        }
        ids.clear();
        self.tick_scratch = ids;
        self.limiter.gc(now);
    }

    /// Handles one datagram from `src`. For transport data the packet is
    /// decrypted in place and shrunk to the inner IP packet.
    pub fn receive<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        src: SocketAddr,
        pkt: &mut PacketBuf<B>,
        now: Instant,
    ) -> Received {
        // Transport data, nearly every datagram, goes straight to its
        // session; handshake messages take the general path.
        let result = match messages::transport_receiver(pkt.data()) {
            Some(index) => self.receive_transport(index, src, pkt, now),
            None => self.receive_inner(src, pkt, now, None),
        };
        match result {
            Ok(r) => r,
            Err(d) => Received::Dropped(d),
        }
    }

    /// [`Self::receive`] for a handshake message whose MACs the caller
    /// already checked ([`Self::mac_verdict`]), so they are not computed
    /// twice.
    pub fn receive_handshake<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        src: SocketAddr,
        pkt: &mut PacketBuf<B>,
        now: Instant,
        verdict: MacVerdict,
    ) -> Received {
        self.receive_inner(src, pkt, now, Some(verdict))
            .unwrap_or_else(Received::Dropped)
    }

    /// A run of transport messages from `src` for receiver `index` (one GRO
    /// burst), opened in place with one index lookup and one session
    /// search ([`Peer::decrypt_run`]). Writes one result per packet:
    /// `Ok(len)` with the packet shrunk to its inner IP packet (`len` 0 for
    /// a keepalive), or why it was dropped. Returns the peer (if the index
    /// names one), whether the run confirmed a new session, and a rekey
    /// initiation if one is due: what [`Received::Data`] carries, once.
    pub fn receive_transport_run<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        index: u32,
        src: SocketAddr,
        pkts: &mut [PacketBuf<B>],
        now: Instant,
        opened: &mut Vec<Result<usize, PeerError>>,
        results: &mut Vec<Result<usize, Drop>>,
    ) -> (Option<PeerId>, bool, Option<ControlMsg>) {
        let found = self.indexes.get(index).copied();
        let Some((id, (mut ctx, peer))) = found.and_then(|id| Some((id, self.ctx_and_peer(id)?)))
        else {
            results.extend(pkts.iter().map(|_| Err(Drop::UnknownIndex)));
            return (None, false, None);
        };
        opened.clear();
        let (confirmed, handshake) = peer.decrypt_run(&mut ctx, index, pkts, src, now, opened);
        let mut refused = 0;
        for (pkt, res) in pkts.iter_mut().zip(opened.drain(..)) {
            let r = match res {
                Ok(0) => Ok(0),
                Ok(_) => self.deliverable(id, pkt),
                Err(e) => Err(Drop::Peer(e)),
            };
            refused += usize::from(r.is_err());
            results.push(r);
        }
        if let Some(peer) = self.peer_mut(id) {
            for _ in 0..refused {
                peer.count_refused(false);
            }
        }
        (Some(id), confirmed, handshake)
    }

    /// [`Self::receive`] for everything but transport data; `verdict` is a
    /// handshake message's MAC check if already done.
    fn receive_inner<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        src: SocketAddr,
        pkt: &mut PacketBuf<B>,
        now: Instant,
        verdict: Option<MacVerdict>,
    ) -> Result<Received, Drop> {
        match messages::parse(pkt.data())? {
            Message::Initiation(msg) => {
                if let Some(reply) = self.screen(msg, src, now, verdict)? {
                    return Ok(reply);
                }
                let identity = self.identity.as_ref().ok_or(Drop::NoIdentity)?;
                let opened =
                    handshake::open_initiation(identity, msg).map_err(|e| Drop::Peer(e.into()))?;
                let Some(id) = self.peer_by_key(opened.remote()) else {
                    return Ok(Received::Foreign {
                        key: *opened.remote(),
                    });
                };
                let (mut ctx, peer) = self.ctx_and_peer(id).ok_or(Drop::UnknownPeer)?;
                let reply = peer
                    .consume_initiation(&mut ctx, opened, msg, src, now)
                    .inspect_err(|_| peer.count_refused(true))?;
                self.mark_active(id);
                Ok(Received::Reply {
                    peer: Some(id),
                    reply,
                })
            }
            Message::Response(msg) => {
                if let Some(reply) = self.screen(msg, src, now, verdict)? {
                    return Ok(reply);
                }
                let id = *self
                    .indexes
                    .get(msg.receiver.get())
                    .ok_or(Drop::UnknownIndex)?;
                let (mut ctx, peer) = self.ctx_and_peer(id).ok_or(Drop::UnknownIndex)?;
                let keepalive = peer
                    .consume_response(&mut ctx, msg, src, now)
                    .inspect_err(|_| peer.count_refused(true))?;
                Ok(Received::HandshakeComplete {
                    peer: id,
                    keepalive,
                })
            }
            Message::CookieReply(msg) => {
                let id = *self
                    .indexes
                    .get(msg.receiver.get())
                    .ok_or(Drop::UnknownIndex)?;
                let peer = self.peer_mut(id).ok_or(Drop::UnknownIndex)?;
                peer.consume_cookie(msg, now)?;
                Ok(Received::CookieAccepted { peer: id })
            }
            // transport_receiver already took every well-formed transport message.
            Message::Transport(..) => Err(Drop::Malformed(messages::ParseError::BadLength)),
        }
    }

    /// How a handshake message's MACs check out (mac1 against our key, mac2
    /// against the cookie `src` would have), without taking it in: two
    /// keyed BLAKE2s at most. The engine sorts handshake messages by it
    /// before they queue for X25519. `None` for any other message, or
    /// without a private key.
    pub fn mac_verdict(
        &mut self,
        data: &[u8],
        src: SocketAddr,
        now: Instant,
    ) -> Option<MacVerdict> {
        let checker = self.checker.as_mut()?;
        match messages::parse(data).ok()? {
            Message::Initiation(m) => Some(checker.verify(m, src, now)),
            Message::Response(m) => Some(checker.verify(m, src, now)),
            _ => None,
        }
    }

    /// mac1 always; under load, mac2 or a cookie reply, then the rate limit.
    /// `verdict` is the MAC check if the caller already did it.
    fn screen<M: MacProtected>(
        &mut self,
        msg: &M,
        src: SocketAddr,
        now: Instant,
        verdict: Option<MacVerdict>,
    ) -> Result<Option<Received>, Drop> {
        let under_load = self.under_load(now);
        let checker = self.checker.as_mut().ok_or(Drop::NoIdentity)?;
        match verdict.unwrap_or_else(|| checker.verify(msg, src, now)) {
            MacVerdict::BadMac1 => Err(Drop::BadMac),
            MacVerdict::Mac1Only if under_load => {
                let mut reply = CookieReply::new_zeroed();
                checker.reply(msg, src, now, &mut reply);
                Ok(Some(Received::Reply {
                    peer: None,
                    reply: ControlMsg::new(reply.as_bytes()),
                }))
            }
            MacVerdict::Mac1AndMac2 if under_load && !self.limiter.allow(src.ip(), now) => {
                Err(Drop::RateLimited)
            }
            _ => Ok(None),
        }
    }

    /// The allowed IPs, to change: every change goes through here, which
    /// forgets the answer [`Self::allowed_source`] remembers.
    fn allowed_mut(&mut self) -> &mut AllowedIps<PeerId> {
        self.last_source = None;
        &mut self.allowed
    }

    /// The peer allowed to send from `source` (`self.allowed.lookup`),
    /// remembering the last answer.
    #[inline]
    fn allowed_source(&mut self, source: IpAddr) -> Option<PeerId> {
        match self.last_source {
            Some((last, peer)) if last == source => peer,
            _ => {
                let peer = self.allowed.lookup(source);
                self.last_source = Some((source, peer));
                peer
            }
        }
    }

    /// Checks that decrypted `pkt` is an IP packet `id` may send (its
    /// source in the peer's allowed IPs) and drops its padding (the IP
    /// header says how long it is); returns that length.
    #[inline]
    fn deliverable<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        id: PeerId,
        pkt: &mut PacketBuf<B>,
    ) -> Result<usize, Drop> {
        let (source, total) = inner_source(pkt.data()).ok_or(Drop::NotIp)?;
        if self.allowed_source(source) != Some(id) {
            return Err(Drop::SourceNotAllowed);
        }
        pkt.truncate(total);
        Ok(total)
    }

    #[inline]
    fn receive_transport<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        index: u32,
        src: SocketAddr,
        pkt: &mut PacketBuf<B>,
        now: Instant,
    ) -> Result<Received, Drop> {
        let id = *self.indexes.get(index).ok_or(Drop::UnknownIndex)?;
        let (mut ctx, peer) = self.ctx_and_peer(id).ok_or(Drop::UnknownIndex)?;
        let d = peer
            .decrypt(&mut ctx, index, pkt, src, now)
            .inspect_err(|_| peer.count_refused(false))?;
        if d.len == 0 {
            return Ok(Received::Keepalive {
                peer: id,
                confirmed: d.confirmed,
                handshake: d.handshake,
            });
        }
        if let Err(e) = self.deliverable(id, pkt) {
            if let Some(peer) = self.peer_mut(id) {
                peer.count_refused(false);
            }
            return Err(e);
        }
        Ok(Received::Data {
            peer: id,
            confirmed: d.confirmed,
            handshake: d.handshake,
        })
    }
}

/// The source address and total length of an IPv4 or IPv6 packet, if the
/// header is complete and the stated length fits in `packet`.
pub fn inner_source(packet: &[u8]) -> Option<(IpAddr, usize)> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
            let src: [u8; 4] = packet[12..16].try_into().ok()?;
            (total >= 20 && total <= packet.len()).then(|| (IpAddr::V4(Ipv4Addr::from(src)), total))
        }
        6 if packet.len() >= 40 => {
            let total = 40 + usize::from(u16::from_be_bytes([packet[4], packet[5]]));
            let src: [u8; 16] = packet[8..24].try_into().ok()?;
            (total <= packet.len()).then(|| (IpAddr::V6(Ipv6Addr::from(src)), total))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::messages::{HEADROOM, TAILROOM, TYPE_INITIATION};
    use crate::proto::session::OpenError;
    use crate::proto::timers::{REJECT_AFTER_MESSAGES, REKEY_AFTER_MESSAGES, REKEY_TIMEOUT};

    fn buf(len: usize) -> PacketBuf<Vec<u8>> {
        let mut v = vec![0u8; HEADROOM + len + TAILROOM];
        v[HEADROOM] = 0x45;
        PacketBuf::new(v, HEADROOM, len).unwrap()
    }

    /// The addresses of `a` and `b` in [`handshaken`].
    fn addrs() -> (SocketAddr, SocketAddr) {
        (
            "192.0.2.1:1".parse().unwrap(),
            "192.0.2.2:2".parse().unwrap(),
        )
    }

    /// Two interfaces after a handshake that `a` initiated and completed;
    /// `b`'s session waits in `next` for `a`'s first message, which is the
    /// keepalive returned.
    fn handshaken(now: Instant) -> (Interface, PeerId, Interface, PeerId, ControlMsg) {
        let wall = SystemTime::now();
        let (ka, kb) = (PrivateKey::generate(), PrivateKey::generate());
        let (pa, pb) = (ka.public_key(), kb.public_key());
        let mut a = Interface::new(now, wall);
        let mut b = Interface::new(now, wall);
        a.set_private_key(Some(ka));
        b.set_private_key(Some(kb));
        let ia = a.add_peer(pb).unwrap();
        let ib = b.add_peer(pa).unwrap();
        let (sa, sb) = addrs();
        let init = a.initiate(ia, now).unwrap();
        let mut p = PacketBuf::new(init.as_bytes().to_vec(), 0, 148).unwrap();
        let Received::Reply { reply, .. } = b.receive(sa, &mut p, now) else {
            panic!("no response")
        };
        let mut p = PacketBuf::new(reply.as_bytes().to_vec(), 0, 92).unwrap();
        let Received::HandshakeComplete { keepalive, .. } = a.receive(sb, &mut p, now) else {
            panic!("no completion")
        };
        (a, ia, b, ib, keepalive)
    }

    /// Two interfaces with a completed handshake, a initiating.
    fn pair(now: Instant) -> (Interface, PeerId, Interface, PeerId) {
        let (a, ia, mut b, ib, keepalive) = handshaken(now);
        let mut p = PacketBuf::new(keepalive.as_bytes().to_vec(), 0, 32).unwrap();
        assert!(matches!(
            b.receive(addrs().0, &mut p, now),
            Received::Keepalive {
                confirmed: true,
                ..
            }
        ));
        (a, ia, b, ib)
    }

    /// An IPv4 packet from `src` of `len` bytes in all.
    fn ip_from(src: [u8; 4], len: usize) -> PacketBuf<Vec<u8>> {
        let mut p = buf(len);
        let d = p.data_mut();
        d[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        d[12..16].copy_from_slice(&src);
        p
    }

    #[test]
    fn a_run_of_transport_messages_is_opened_together() {
        let now = Instant::now();
        // b's session waits in `next` for a's first message.
        let (mut a, ia, mut b, ib, ka_msg) = handshaken(now);
        b.allow(ib, IpAddr::V4([10, 0, 0, 1].into()), 32).unwrap();
        let (sa, _) = addrs();
        // A burst: the keepalive, three packets (one from a source b does
        // not allow), then one tampered with and one replayed.
        let mut sealed = [
            ip_from([10, 0, 0, 1], 100),
            ip_from([10, 0, 0, 9], 60),
            ip_from([10, 0, 0, 1], 1000),
        ];
        assert_eq!(a.encrypt_batch(ia, &mut sealed, 1420, now).sealed, 3);
        let mut burst: Vec<PacketBuf<Vec<u8>>> = std::iter::once(ka_msg.as_bytes().to_vec())
            .chain(sealed.iter().map(|p| p.data().to_vec()))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|d| {
                let n = d.len();
                PacketBuf::new(d, 0, n).unwrap()
            })
            .collect();
        let mut tampered = burst[3].data().to_vec();
        *tampered.last_mut().unwrap() ^= 1;
        burst.push(PacketBuf::new(tampered.clone(), 0, tampered.len()).unwrap());
        let replayed = burst[1].data().to_vec();
        burst.push(PacketBuf::new(replayed.clone(), 0, replayed.len()).unwrap());
        // The tampered copy of the last packet comes before it.
        burst.swap(3, 4);
        let index = messages::transport_receiver(burst[0].data()).unwrap();
        let (mut opened, mut results) = (Vec::new(), Vec::new());
        let (peer, confirmed, handshake) =
            b.receive_transport_run(index, sa, &mut burst, now, &mut opened, &mut results);
        assert_eq!(
            (peer, confirmed, handshake.is_none()),
            (Some(ib), true, true)
        );
        assert_eq!(
            results,
            [
                Ok(0),
                Ok(100),
                Err(Drop::SourceNotAllowed),
                Err(Drop::Peer(PeerError::Open(OpenError::Auth))),
                Ok(1000),
                Err(Drop::Peer(PeerError::Open(OpenError::Replay))),
            ]
        );
        assert_eq!(burst[1].len(), 100, "trimmed to the IP packet");
        let p = b.peer(ib).unwrap();
        assert_eq!(p.endpoint(), Some(sa));
        assert!(p.last_handshake().is_some());
        // The next run uses the confirmed session: nothing to confirm.
        let mut more = [ip_from([10, 0, 0, 1], 40)];
        a.encrypt_batch(ia, &mut more, 1420, now);
        let mut run = [PacketBuf::new(more[0].data().to_vec(), 0, more[0].len()).unwrap()];
        results.clear();
        let (_, confirmed, _) =
            b.receive_transport_run(index, sa, &mut run, now, &mut opened, &mut results);
        assert_eq!((confirmed, results.as_slice()), (false, &[Ok(40)][..]));
        // An index nobody holds refuses the whole run.
        results.clear();
        let (peer, ..) =
            b.receive_transport_run(index ^ 1, sa, &mut run, now, &mut opened, &mut results);
        assert_eq!(
            (peer, results.as_slice()),
            (None, &[Err(Drop::UnknownIndex)][..])
        );
    }

    #[test]
    fn rekey_after_messages_on_send() {
        let now = Instant::now();
        let (mut a, ia, _, _) = pair(now);
        let later = now + REKEY_TIMEOUT;
        a.peers[ia as usize]
            .as_mut()
            .unwrap()
            .set_current_send_counter(REKEY_AFTER_MESSAGES - 1);
        let mut p = [buf(20)];
        let out = a.encrypt_batch(ia, &mut p, 1420, later);
        assert_eq!(out.sealed, 1);
        assert!(out.handshake.is_none(), "next nonce is 2^60: not yet");
        let mut p = [buf(20)];
        let out = a.encrypt_batch(ia, &mut p, 1420, later);
        assert_eq!(out.sealed, 1, "still sends on the old session");
        assert_eq!(out.handshake.unwrap().msg_type(), TYPE_INITIATION);
    }

    #[test]
    fn reject_after_messages_stops_sending() {
        let now = Instant::now();
        let (mut a, ia, _, _) = pair(now);
        let later = now + REKEY_TIMEOUT;
        a.peers[ia as usize]
            .as_mut()
            .unwrap()
            .set_current_send_counter(REJECT_AFTER_MESSAGES - 1);
        let mut p = [buf(20), buf(20)];
        let out = a.encrypt_batch(ia, &mut p, 1420, later);
        assert_eq!(out.sealed, 1, "the last nonce is used, the next is not");
        assert!(!a.peer(ia).unwrap().can_send(later));
        let mut p = [buf(20)];
        let out = a.encrypt_batch(ia, &mut p, 1420, later + REKEY_TIMEOUT);
        assert_eq!(out.sealed, 0);
        assert_eq!(out.handshake.unwrap().msg_type(), TYPE_INITIATION);
    }

    #[test]
    fn only_active_peers_are_ticked() {
        let now = Instant::now();
        let (mut a, ia, _, _) = pair(now);
        // A configured peer that never talked is not tracked.
        let idle = a.add_peer(PrivateKey::generate().public_key()).unwrap();
        assert!(a.active.contains(&ia));
        assert!(!a.active.contains(&idle));
        // Once its keys are erased the peer leaves the set.
        let later = now + crate::proto::timers::ZERO_KEYS_AFTER + Duration::from_secs(1);
        a.tick(later, |_, _, _| {});
        assert!(!a.peer(ia).unwrap().is_active());
        assert!(a.active.is_empty());
    }

    #[test]
    fn allowed_source_follows_allowed_ip_changes() {
        let now = Instant::now();
        let (mut a, ia, mut b, ib) = pair(now);
        let from: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let mut send = |b: &mut Interface| {
            let mut p = buf(20);
            p.data_mut()[3] = 20;
            p.data_mut()[12..16].copy_from_slice(&[10, 0, 0, 1]);
            let mut ps = [p];
            assert_eq!(a.encrypt_batch(ia, &mut ps, 1420, now).sealed, 1);
            let [mut p] = ps;
            match b.receive(from, &mut p, now) {
                Received::Data { .. } => Ok(()),
                Received::Dropped(d) => Err(d),
                other => panic!("{other:?}"),
            }
        };
        let (host, other_net) = ("10.0.0.1".parse().unwrap(), "10.0.0.0".parse().unwrap());
        assert_eq!(send(&mut b), Err(Drop::SourceNotAllowed));
        b.allow(ib, host, 32).unwrap();
        assert_eq!(send(&mut b), Ok(()));
        assert_eq!(send(&mut b), Ok(()));
        b.disallow(ib, host, 32).unwrap();
        assert_eq!(send(&mut b), Err(Drop::SourceNotAllowed));
        b.allow(ib, other_net, 8).unwrap();
        assert_eq!(send(&mut b), Ok(()));
        b.clear_allowed(ib);
        assert_eq!(send(&mut b), Err(Drop::SourceNotAllowed));
        b.allow(ib, other_net, 8).unwrap();
        assert_eq!(send(&mut b), Ok(()));
        // A more specific prefix for another peer takes the address, until
        // that peer is removed.
        let other = b.add_peer(PrivateKey::generate().public_key()).unwrap();
        b.allow(other, host, 32).unwrap();
        assert_eq!(send(&mut b), Err(Drop::SourceNotAllowed));
        b.remove_peer(other).unwrap();
        assert_eq!(send(&mut b), Ok(()));
    }

    #[test]
    fn inner_source_parsing() {
        let mut v4 = [0u8; 28];
        v4[0] = 0x45;
        v4[3] = 28;
        v4[12..16].copy_from_slice(&[10, 0, 0, 1]);
        assert_eq!(
            inner_source(&v4),
            Some((IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 28))
        );
        v4[3] = 29; // claims more than is there
        assert_eq!(inner_source(&v4), None);
        v4[3] = 19; // shorter than its header
        assert_eq!(inner_source(&v4), None);
        let mut v6 = [0u8; 48];
        v6[0] = 0x60;
        v6[5] = 8;
        v6[8] = 0x20;
        assert_eq!(inner_source(&v6).map(|(_, l)| l), Some(48));
        v6[5] = 9;
        assert_eq!(inner_source(&v6), None);
        assert_eq!(inner_source(&[]), None);
        assert_eq!(inner_source(&[0x50; 60]), None);
    }

    #[test]
    fn private_key_change_erases_sessions_and_drops_own_key_peer() {
        let now = Instant::now();
        let (mut a, ia, b, _) = pair(now);
        assert!(a.peer(ia).unwrap().can_send(now));
        let bkey = b.private_key().unwrap().clone();
        a.set_private_key(Some(PrivateKey::generate()));
        assert!(!a.peer(ia).unwrap().is_active());
        // Taking the peer's own key removes that peer, as the kernel does.
        a.set_private_key(Some(bkey));
        assert!(a.peer(ia).is_none());
        assert_eq!(a.peer_count(), 0);
    }

    #[test]
    fn peer_removal_frees_indexes_and_allowed_ips() {
        let now = Instant::now();
        let (mut a, ia, _, _) = pair(now);
        a.allow(ia, "10.0.0.0".parse().unwrap(), 8).unwrap();
        assert!(!a.indexes.is_empty());
        a.remove_peer(ia).unwrap();
        assert!(a.indexes.is_empty());
        assert_eq!(a.route("10.1.2.3".parse().unwrap()), None);
        assert_eq!(a.remove_peer(ia), Err(ConfigError::NoSuchPeer));
    }
}
