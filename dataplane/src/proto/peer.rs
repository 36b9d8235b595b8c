//! The per-peer state machine: handshakes, the three sessions (previous,
//! current, next), timers and counters of one peer.
//!
//! A peer is small while idle (keys, endpoint, counters: a few hundred
//! bytes); its handshake state, sessions, replay windows, timers and cookie
//! live in one boxed [`Active`] that exists only while the peer talks, and
//! is dropped when its key material is erased. That keeps a concentrator
//! with a million configured peers in memory.
//!
//! Session rotation follows the protocol: the initiator moves a fresh
//! session straight to `current`; the responder keeps its fresh session in
//! `next` until the first transport message under it proves the initiator
//! has it too, and only then makes it `current`.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use zerocopy::FromZeros;

use super::cookie::{CookieError, CookieJar};
use super::handshake::{
    self, HandshakeError, Identity, InitiatorState, OpenedInitiation, PeerKeys,
};
use super::index::IndexTable;
use super::keys::{PresharedKey, PublicKey};
use super::messages::{
    ControlMsg, CookieReply, Initiation, Response, HEADROOM, INITIATION_LEN, RESPONSE_LEN,
};
use super::session::{OpenError, PacketBuf, SealError, Session};
use super::tai64n::Tai64N;
use super::timers::{self, Timers};

/// A peer's handle inside an interface.
pub type PeerId = u32;

/// Maps the core's monotonic `now` to wall-clock time, for TAI64N
/// timestamps and for reporting handshake times. Set once from a pair of
/// readings taken together, so the core itself never reads a clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
    wall: SystemTime,
}

impl Clock {
    /// Anchors the mapping: `wall` is the wall-clock time at `base`.
    pub fn new(base: Instant, wall: SystemTime) -> Self {
        Self { base, wall }
    }

    /// The wall-clock time at `now`.
    pub fn wall_at(&self, now: Instant) -> SystemTime {
        match now.checked_duration_since(self.base) {
            Some(d) => self.wall + d,
            None => self.wall - self.base.duration_since(now),
        }
    }
}

/// What a peer operation needs from its interface.
#[derive(Debug)]
pub struct Ctx<'a> {
    /// The interface's key; handshakes are impossible without one.
    pub identity: Option<&'a Identity>,
    /// Where session indexes are allocated.
    pub indexes: &'a mut IndexTable<PeerId>,
    /// The worker that owns this peer (low bits of its indexes).
    pub worker: u32,
    /// Monotonic to wall-clock mapping.
    pub clock: &'a Clock,
}

/// Why an incoming message was refused by the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The handshake did not authenticate.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// An initiation whose timestamp is not newer than the last accepted.
    #[error("replayed handshake initiation")]
    ReplayedInitiation,
    /// Initiations from this peer arrive faster than 50 per second.
    #[error("handshake initiation flood")]
    InitiationFlood,
    /// A response or transport message for no handshake or session we have.
    #[error("no handshake or session under that index")]
    UnknownIndex,
    /// The session under that index has expired.
    #[error("session expired")]
    Expired,
    /// A transport message was refused.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// A cookie reply was refused.
    #[error(transparent)]
    Cookie(#[from] CookieError),
    /// The interface has no private key.
    #[error("interface has no private key")]
    NoIdentity,
    /// Every receiver index of this worker is in use.
    #[error("no free receiver index")]
    IndexesExhausted,
}

/// Which of the three session slots a message used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Current,
    Previous,
    Next,
}

/// State that exists only while the peer is active.
#[derive(Debug, Default)]
struct Active {
    handshake: Option<InitiatorState>,
    last_initiation_sent: Option<Instant>,
    current: Option<Session>,
    previous: Option<Session>,
    next: Option<Session>,
    timers: Timers,
    cookies: CookieJar,
}

impl Active {
    fn slot(&mut self, slot: Slot) -> &mut Option<Session> {
        match slot {
            Slot::Current => &mut self.current,
            Slot::Previous => &mut self.previous,
            Slot::Next => &mut self.next,
        }
    }

    fn find(&self, local_index: u32) -> Option<Slot> {
        let is = |s: &Option<Session>| s.as_ref().is_some_and(|s| s.local_index == local_index);
        if is(&self.current) {
            Some(Slot::Current)
        } else if is(&self.next) {
            Some(Slot::Next)
        } else if is(&self.previous) {
            Some(Slot::Previous)
        } else {
            None
        }
    }
}

/// Frees the index of a session being dropped.
fn retire(indexes: &mut IndexTable<PeerId>, session: Option<Session>) {
    if let Some(s) = session {
        indexes.remove(s.local_index);
    }
}

/// Result of [`Peer::encrypt_batch`].
#[derive(Debug, Default)]
pub struct SendOutcome {
    /// How many packets from the front of the batch were sealed.
    pub sealed: usize,
    /// A handshake initiation to send to the endpoint first, if one is due.
    pub handshake: Option<ControlMsg>,
}

/// Result of a transport message accepted by [`Peer::decrypt`].
#[derive(Debug)]
pub struct Decrypted {
    /// Plaintext length (still padded); 0 for a keepalive.
    pub len: usize,
    /// The message confirmed a new responder session: send staged packets.
    pub confirmed: bool,
    /// An initiation to send (rekey on receive), if one is due.
    pub handshake: Option<ControlMsg>,
}

/// Result of [`Peer::tick`].
#[derive(Debug, Default)]
pub struct TickOutcome {
    /// Datagrams to send to the peer's endpoint, in order.
    pub send: [Option<ControlMsg>; 2],
    /// The handshake was given up: drop any packets staged for the peer.
    pub drop_staged: bool,
}

/// One configured peer.
#[derive(Debug)]
pub struct Peer {
    id: PeerId,
    keys: PeerKeys,
    endpoint: Option<SocketAddr>,
    persistent_keepalive: u16,
    last_timestamp: Tai64N,
    last_initiation_consumed: Option<Instant>,
    last_handshake: Option<SystemTime>,
    rx_bytes: u64,
    tx_bytes: u64,
    /// Datagrams of this peer refused (see [`Self::count_refused`]).
    refused: u64,
    /// Handshake messages of this peer refused.
    handshake_failures: u32,
    /// The endpoint changed on receive since [`Self::take_moved`] last asked.
    moved: bool,
    active: Option<Box<Active>>,
}

impl Peer {
    /// A peer with static key `remote`, known to its interface as `id`.
    pub fn new(id: PeerId, remote: PublicKey, psk: PresharedKey) -> Self {
        Self {
            id,
            keys: PeerKeys::new(remote, psk),
            endpoint: None,
            persistent_keepalive: 0,
            last_timestamp: Tai64N::ZERO,
            last_initiation_consumed: None,
            last_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
            refused: 0,
            handshake_failures: 0,
            moved: false,
            active: None,
        }
    }

    /// The peer's handle.
    pub fn id(&self) -> PeerId {
        self.id
    }

    /// The peer's static public key.
    pub fn public_key(&self) -> &PublicKey {
        self.keys.remote()
    }

    /// The preshared key (all zeros when none).
    pub fn preshared_key(&self) -> &PresharedKey {
        self.keys.preshared_key()
    }

    /// Replaces the preshared key (takes effect at the next handshake).
    pub fn set_preshared_key(&mut self, psk: PresharedKey) {
        self.keys.set_preshared_key(psk);
    }

    /// Where the peer was last heard from, or was configured to be.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint
    }

    /// Sets the endpoint (configuration or roaming).
    pub fn set_endpoint(&mut self, endpoint: Option<SocketAddr>) {
        self.endpoint = endpoint;
    }

    /// Takes the endpoint from an authenticated message from `src`
    /// (roaming), noting whether it moved.
    fn learn_endpoint(&mut self, src: SocketAddr) {
        if self.endpoint != Some(src) {
            self.moved |= self.endpoint.is_some();
            self.endpoint = Some(src);
        }
    }

    /// Whether the endpoint moved (an authenticated message came from a
    /// new address) since the last call.
    pub fn take_moved(&mut self) -> bool {
        std::mem::take(&mut self.moved)
    }

    /// Counts a datagram of this peer that was refused; `handshake` when
    /// it was a handshake message.
    pub fn count_refused(&mut self, handshake: bool) {
        self.refused += 1;
        if handshake {
            self.handshake_failures = self.handshake_failures.saturating_add(1);
        }
    }

    /// Datagrams of this peer refused (replays, failed authentication,
    /// expired sessions, inner sources it may not use, handshake failures).
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Handshake messages of this peer refused.
    pub fn handshake_failures(&self) -> u64 {
        u64::from(self.handshake_failures)
    }

    /// Persistent keepalive interval in seconds (0 = off).
    pub fn persistent_keepalive(&self) -> u16 {
        self.persistent_keepalive
    }

    /// Sets the persistent keepalive interval (0 = off).
    pub fn set_persistent_keepalive(&mut self, interval: u16, now: Instant) {
        self.persistent_keepalive = interval;
        if let Some(a) = self.active.as_mut() {
            a.timers.set_persistent_keepalive(now, interval);
        }
    }

    /// Wall-clock time of the last completed handshake.
    pub fn last_handshake(&self) -> Option<SystemTime> {
        self.last_handshake
    }

    /// Bytes received from the peer, as datagrams on the wire.
    pub fn rx_bytes(&self) -> u64 {
        self.rx_bytes
    }

    /// Bytes sent to the peer, as datagrams on the wire.
    pub fn tx_bytes(&self) -> u64 {
        self.tx_bytes
    }

    /// Whether the peer holds any handshake or session state.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Whether a session is ready to send now.
    pub fn can_send(&self, now: Instant) -> bool {
        self.active
            .as_ref()
            .and_then(|a| a.current.as_ref())
            .is_some_and(|s| usable_for_send(s, now))
    }

    /// The earliest time [`Self::tick`] has work, for the engine's wheel.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.active.as_ref().and_then(|a| a.timers.next_deadline())
    }

    fn active(&mut self) -> &mut Active {
        self.active.get_or_insert_with(Box::default)
    }

    /// Starts a handshake. At most one initiation leaves per REKEY_TIMEOUT;
    /// `retry` marks a retransmission, which keeps the attempt count.
    pub fn initiate(&mut self, ctx: &mut Ctx<'_>, now: Instant, retry: bool) -> Option<ControlMsg> {
        let identity = ctx.identity?;
        let interval = self.persistent_keepalive;
        let a = self.active.get_or_insert_with(Box::default);
        if !retry {
            a.timers.handshake_attempts = 0;
        }
        if a.last_initiation_sent
            .is_some_and(|t| now.saturating_duration_since(t) < timers::REKEY_TIMEOUT)
        {
            return None;
        }
        if let Some(old) = a.handshake.take() {
            ctx.indexes.remove(old.local_index);
        }
        // A full index space (never reached by a real configuration) means
        // no handshake now, not a panic.
        let index = ctx.indexes.try_allocate(ctx.worker, self.id).ok()?;
        let mut msg = Initiation::new_zeroed();
        let stamp = Tai64N::from_system_time(ctx.clock.wall_at(now));
        match handshake::create_initiation(identity, &mut self.keys, index, stamp, &mut msg) {
            Ok(state) => a.handshake = Some(state),
            Err(_) => {
                // Only a low-order peer key gets here: it can never handshake.
                ctx.indexes.remove(index);
                return None;
            }
        }
        a.cookies.stamp(self.keys.remote(), &mut msg, now);
        a.last_initiation_sent = Some(now);
        a.timers.any_authenticated_traversal(now, interval);
        a.timers.any_authenticated_sent();
        a.timers.handshake_initiated(now);
        self.tx_bytes += INITIATION_LEN as u64;
        Some(ControlMsg::new(zerocopy::IntoBytes::as_bytes(&msg)))
    }

    /// Seals a batch of plaintext packets for this peer, in place, with the
    /// current session. Without a usable session nothing is sealed and an
    /// initiation is returned (when one may be sent): the caller stages the
    /// packets and sends them when the handshake completes.
    pub fn encrypt_batch<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        ctx: &mut Ctx<'_>,
        pkts: &mut [PacketBuf<B>],
        mtu: usize,
        now: Instant,
    ) -> SendOutcome {
        let data = pkts.iter().any(|p| !p.is_empty());
        let sealed = match self.seal_with_current(pkts, mtu, now) {
            Some(n) => n,
            None => {
                return SendOutcome {
                    sealed: 0,
                    handshake: self.initiate(ctx, now, false),
                }
            }
        };
        if sealed > 0 {
            let interval = self.persistent_keepalive;
            let a = self.active();
            if data {
                a.timers.data_sent(now);
            }
            a.timers.any_authenticated_sent();
            a.timers.any_authenticated_traversal(now, interval);
        }
        SendOutcome {
            sealed,
            handshake: self.keep_fresh_sending(ctx, now),
        }
    }

    /// Seals with the current session; `None` when there is none usable.
    fn seal_with_current<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        pkts: &mut [PacketBuf<B>],
        mtu: usize,
        now: Instant,
    ) -> Option<usize> {
        let session = self.active.as_mut()?.current.as_mut()?;
        if !usable_for_send(session, now) {
            return None;
        }
        let sealed = match session.seal_batch(pkts, mtu) {
            Ok(n) => n,
            Err((n, SealError::Exhausted | SealError::NoRoom)) => n,
        };
        self.tx_bytes += pkts[..sealed].iter().map(|p| p.len() as u64).sum::<u64>();
        Some(sealed)
    }

    /// A keepalive sealed with the current session, then an initiation if
    /// one is due (no session to seal with, or the session needs a rekey).
    pub fn keepalive(&mut self, ctx: &mut Ctx<'_>, now: Instant) -> [Option<ControlMsg>; 2] {
        let mut buf = [0u8; INITIATION_LEN];
        let Some(mut pkt) = PacketBuf::new(&mut buf[..], HEADROOM, 0) else {
            return [None, None];
        };
        let out = self.encrypt_batch(ctx, std::slice::from_mut(&mut pkt), 0, now);
        let keepalive = (out.sealed == 1).then(|| ControlMsg::new(pkt.data()));
        [keepalive, out.handshake]
    }

    /// Initiator rekeys when the session is old or has sent too much.
    fn keep_fresh_sending(&mut self, ctx: &mut Ctx<'_>, now: Instant) -> Option<ControlMsg> {
        let s = self.active.as_ref()?.current.as_ref()?;
        let stale = s.initiator
            && (s.send_counter() > timers::REKEY_AFTER_MESSAGES
                || now.saturating_duration_since(s.created) > timers::REKEY_AFTER_TIME);
        if stale {
            self.initiate(ctx, now, false)
        } else {
            None
        }
    }

    /// Responder: answers an initiation from this peer (step 1 already
    /// identified the peer). Returns the response to send back to `src`.
    pub fn consume_initiation(
        &mut self,
        ctx: &mut Ctx<'_>,
        opened: OpenedInitiation,
        msg: &Initiation,
        src: SocketAddr,
        now: Instant,
    ) -> Result<ControlMsg, PeerError> {
        let identity = ctx.identity.ok_or(PeerError::NoIdentity)?;
        let verified = opened.verify(identity, &mut self.keys, msg)?;
        if verified.timestamp <= self.last_timestamp {
            return Err(PeerError::ReplayedInitiation);
        }
        if self
            .last_initiation_consumed
            .is_some_and(|t| now.saturating_duration_since(t) < timers::INITIATION_MIN_INTERVAL)
        {
            return Err(PeerError::InitiationFlood);
        }
        self.last_timestamp = verified.timestamp;
        self.last_initiation_consumed = Some(now);
        self.rx_bytes += INITIATION_LEN as u64;

        let index = ctx
            .indexes
            .try_allocate(ctx.worker, self.id)
            .map_err(|_| PeerError::IndexesExhausted)?;
        let mut resp = Response::new_zeroed();
        let keys = match handshake::create_response(verified, &self.keys, index, &mut resp) {
            Ok(k) => k,
            Err(e) => {
                ctx.indexes.remove(index);
                return Err(e.into());
            }
        };
        self.learn_endpoint(src);
        let interval = self.persistent_keepalive;
        let a = self.active.get_or_insert_with(Box::default);
        a.cookies.stamp(self.keys.remote(), &mut resp, now);
        // A response counts as a handshake sent (as in the kernel and
        // wireguard-go): no initiation of ours crosses the one we answered.
        a.last_initiation_sent = Some(now);
        retire(ctx.indexes, a.next.replace(Session::new(keys, now)));
        retire(ctx.indexes, a.previous.take());
        a.timers.session_derived(now);
        a.timers.any_authenticated_traversal(now, interval);
        a.timers.any_authenticated_sent();
        self.tx_bytes += RESPONSE_LEN as u64;
        Ok(ControlMsg::new(zerocopy::IntoBytes::as_bytes(&resp)))
    }

    /// Initiator: completes our handshake with its response. Returns a
    /// keepalive sealed under the new session, which the caller sends
    /// unless it has staged packets to send instead (either confirms the
    /// session to the responder).
    pub fn consume_response(
        &mut self,
        ctx: &mut Ctx<'_>,
        msg: &Response,
        src: SocketAddr,
        now: Instant,
    ) -> Result<ControlMsg, PeerError> {
        let identity = ctx.identity.ok_or(PeerError::NoIdentity)?;
        let a = self.active.as_mut().ok_or(PeerError::UnknownIndex)?;
        let state = a.handshake.as_ref().ok_or(PeerError::UnknownIndex)?;
        let keys = handshake::consume_response(state, identity, &self.keys, msg)?;
        // The handshake's index now names the session.
        a.handshake = None;
        let session = Session::new(keys, now);
        match a.next.take() {
            Some(next) => {
                retire(ctx.indexes, a.previous.replace(next));
                retire(ctx.indexes, a.current.take());
            }
            None => retire(
                ctx.indexes,
                std::mem::replace(&mut a.previous, a.current.take()),
            ),
        }
        a.current = Some(session);
        a.timers.session_derived(now);
        a.timers.handshake_complete();
        a.timers.any_authenticated_received();
        a.timers
            .any_authenticated_traversal(now, self.persistent_keepalive);
        self.learn_endpoint(src);
        self.rx_bytes += RESPONSE_LEN as u64;
        self.last_handshake = Some(ctx.clock.wall_at(now));
        let [keepalive, _] = self.keepalive(ctx, now);
        keepalive.ok_or(PeerError::Expired)
    }

    /// Takes in a cookie reply addressed to one of our handshake messages.
    pub fn consume_cookie(&mut self, reply: &CookieReply, now: Instant) -> Result<(), PeerError> {
        let a = self.active.as_mut().ok_or(PeerError::UnknownIndex)?;
        a.cookies.consume(self.keys.remote(), reply, now)?;
        Ok(())
    }

    /// Opens a transport message addressed to our index `local_index`, in
    /// place. On success `src` becomes the endpoint (roaming).
    pub fn decrypt<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        ctx: &mut Ctx<'_>,
        local_index: u32,
        pkt: &mut PacketBuf<B>,
        src: SocketAddr,
        now: Instant,
    ) -> Result<Decrypted, PeerError> {
        let wire_len = pkt.len() as u64;
        let a = self.active.as_mut().ok_or(PeerError::UnknownIndex)?;
        let slot = a.find(local_index).ok_or(PeerError::UnknownIndex)?;
        let session = a.slot(slot).as_mut().ok_or(PeerError::UnknownIndex)?;
        if now.saturating_duration_since(session.created) >= timers::REJECT_AFTER_TIME {
            return Err(PeerError::Expired);
        }
        let opened = session.open(pkt)?;
        let (confirmed, handshake) =
            self.authenticated(ctx, slot, src, wire_len, opened.len > 0, now);
        Ok(Decrypted {
            len: opened.len,
            confirmed,
            handshake,
        })
    }

    /// What authenticated transport data from `src` (`bytes` on the wire,
    /// `data` if not only keepalives) under the session in `slot` does:
    /// the endpoint follows it (roaming), it counts, it confirms a `next`
    /// session, it feeds the timers, and it may start the initiator's
    /// rekey on receive (returned).
    fn authenticated(
        &mut self,
        ctx: &mut Ctx<'_>,
        slot: Slot,
        src: SocketAddr,
        bytes: u64,
        data: bool,
        now: Instant,
    ) -> (bool, Option<ControlMsg>) {
        self.learn_endpoint(src);
        self.rx_bytes += bytes;
        let Some(a) = self.active.as_mut() else {
            return (false, None);
        };
        let confirmed = slot == Slot::Next;
        if confirmed {
            let next = a.next.take();
            let old_current = std::mem::replace(&mut a.current, next);
            retire(ctx.indexes, std::mem::replace(&mut a.previous, old_current));
            a.timers.handshake_complete();
            self.last_handshake = Some(ctx.clock.wall_at(now));
        }
        a.timers.any_authenticated_received();
        a.timers
            .any_authenticated_traversal(now, self.persistent_keepalive);
        if data {
            a.timers.data_received(now);
        }
        (confirmed, self.keep_fresh_receiving(ctx, now))
    }

    /// Opens a run of transport messages addressed to our index
    /// `local_index` (one GRO burst), in place, writing one result per
    /// packet (the plaintext length, 0 for a keepalive). The session is
    /// found, checked for expiry, and the endpoint, counters and timers
    /// updated once for the run rather than once per packet; each packet
    /// still passes the replay window and authentication on its own, and a
    /// refused one leaves the others untouched. Returns what [`decrypt`]
    /// returns once: whether the run confirmed a new session, and a rekey
    /// initiation if due (both only if at least one packet opened).
    ///
    /// [`decrypt`]: Self::decrypt
    pub fn decrypt_run<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        ctx: &mut Ctx<'_>,
        local_index: u32,
        pkts: &mut [PacketBuf<B>],
        src: SocketAddr,
        now: Instant,
        results: &mut Vec<Result<usize, PeerError>>,
    ) -> (bool, Option<ControlMsg>) {
        let session = self
            .active
            .as_mut()
            .and_then(|a| a.find(local_index).map(|slot| (slot, a)));
        let Some((slot, a)) = session else {
            results.extend(pkts.iter().map(|_| Err(PeerError::UnknownIndex)));
            return (false, None);
        };
        let Some(session) = a.slot(slot).as_mut() else {
            results.extend(pkts.iter().map(|_| Err(PeerError::UnknownIndex)));
            return (false, None);
        };
        if now.saturating_duration_since(session.created) >= timers::REJECT_AFTER_TIME {
            results.extend(pkts.iter().map(|_| Err(PeerError::Expired)));
            return (false, None);
        }
        let (mut bytes, mut opened_any, mut data) = (0u64, false, false);
        for pkt in pkts.iter_mut() {
            let wire_len = pkt.len() as u64;
            match session.open(pkt) {
                Ok(o) => {
                    bytes += wire_len;
                    opened_any = true;
                    data |= o.len > 0;
                    results.push(Ok(o.len));
                }
                Err(e) => results.push(Err(e.into())),
            }
        }
        if !opened_any {
            return (false, None);
        }
        self.authenticated(ctx, slot, src, bytes, data, now)
    }

    /// Initiator rekeys on receive in the last minute before its session
    /// would expire under the responder, once per session.
    /// Inlined into every receive: all but an initiator that has not yet
    /// rekeyed on receive leave at the first checks, without a call.
    #[inline]
    fn keep_fresh_receiving(&mut self, ctx: &mut Ctx<'_>, now: Instant) -> Option<ControlMsg> {
        let a = self.active.as_mut()?;
        if a.timers.sent_last_minute_handshake {
            return None;
        }
        let s = a.current.as_ref()?;
        if s.initiator && now.saturating_duration_since(s.created) > timers::REKEY_ON_RECEIVE_AGE {
            a.timers.sent_last_minute_handshake = true;
            return self.initiate(ctx, now, false);
        }
        None
    }

    /// Runs the timers that `now` has reached.
    pub fn tick(&mut self, ctx: &mut Ctx<'_>, now: Instant) -> TickOutcome {
        let mut out = TickOutcome::default();
        let Some(a) = self.active.as_mut() else {
            return out;
        };
        let fired = a.timers.expired(now);
        if fired.zero_key_material {
            self.erase_keys(ctx.indexes);
            return out;
        }
        let mut push = |msg: Option<ControlMsg>| {
            if let Some(m) = msg {
                if let Some(slot) = out.send.iter_mut().find(|s| s.is_none()) {
                    *slot = Some(m);
                }
            }
        };
        if fired.retransmit_handshake {
            // As in the kernel: retry while attempts <= MAX, so the last
            // retry leaves about REKEY_ATTEMPT_TIME after the first.
            if a.timers.handshake_attempts > timers::MAX_HANDSHAKE_ATTEMPTS {
                // Gave up after REKEY_ATTEMPT_TIME: stop, drop what waits,
                // and let the keys age out.
                if let Some(h) = a.handshake.take() {
                    ctx.indexes.remove(h.local_index);
                }
                a.timers.stop_retransmit();
                a.timers.handshake_attempts = 0;
                out.drop_staged = true;
            } else {
                a.timers.handshake_attempts += 1;
                push(self.initiate(ctx, now, true));
            }
        }
        if fired.send_keepalive || fired.persistent_keepalive {
            let [keepalive, handshake] = self.keepalive(ctx, now);
            push(keepalive);
            push(handshake);
        }
        if fired.new_handshake {
            push(self.initiate(ctx, now, false));
        }
        out
    }

    /// Erases every session and handshake (3 x REJECT_AFTER_TIME without a
    /// new session, a key change, or removal). Counters and the last
    /// timestamp stay: they describe the peer, not a session.
    pub fn erase_keys(&mut self, indexes: &mut IndexTable<PeerId>) {
        if let Some(mut a) = self.active.take() {
            for slot in [Slot::Current, Slot::Previous, Slot::Next] {
                retire(indexes, a.slot(slot).take());
            }
            if let Some(h) = a.handshake.take() {
                indexes.remove(h.local_index);
            }
        }
    }

    /// Forgets cached key material that depends on the interface key.
    pub fn interface_key_changed(&mut self, indexes: &mut IndexTable<PeerId>) {
        self.keys.forget_cached();
        self.erase_keys(indexes);
    }

    /// Jumps the current session's send counter (message-limit tests).
    #[cfg(test)]
    pub(crate) fn set_current_send_counter(&mut self, counter: u64) {
        if let Some(s) = self.active.as_mut().and_then(|a| a.current.as_mut()) {
            s.set_send_counter(counter);
        }
    }

    /// The age of the current session (for tests and metrics).
    pub fn current_session_age(&self, now: Instant) -> Option<Duration> {
        let s = self.active.as_ref()?.current.as_ref()?;
        Some(now.saturating_duration_since(s.created))
    }
}

fn usable_for_send(s: &Session, now: Instant) -> bool {
    now.saturating_duration_since(s.created) < timers::REJECT_AFTER_TIME
        && s.send_counter() < timers::REJECT_AFTER_MESSAGES
}
