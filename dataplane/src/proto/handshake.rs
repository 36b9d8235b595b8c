//! The Noise_IKpsk2 handshake (whitepaper section 5.4.2 and 5.4.3).
//!
//! Pure functions over messages and keys: the initiator writes an
//! initiation and later consumes the response; the responder opens an
//! initiation in two steps (first the initiator's static key, to find the
//! peer; then, with that peer's keys, the timestamp) and writes a response.
//! Both ends come out with a [`SessionKeys`]. Which peer, which index, which
//! time and whether to accept a timestamp is decided by the caller
//! ([`super::peer`]); MACs are stamped and checked by [`super::cookie`].

use std::sync::LazyLock;

use rand_core::OsRng;
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use super::crypto::{self, CryptoError, SecretKey, HASH_LEN};
use super::keys::{PresharedKey, PrivateKey, PublicKey, KEY_LEN};
use super::messages::{Initiation, Response, TIMESTAMP_LEN, TYPE_INITIATION, TYPE_RESPONSE};
use super::tai64n::Tai64N;

const CONSTRUCTION: &[u8] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";

/// C0 = HASH(CONSTRUCTION).
static INITIAL_CHAIN: LazyLock<[u8; HASH_LEN]> = LazyLock::new(|| crypto::hash(&[CONSTRUCTION]));
/// H0 = HASH(C0 || IDENTIFIER).
static INITIAL_HASH: LazyLock<[u8; HASH_LEN]> =
    LazyLock::new(|| crypto::hash(&[&INITIAL_CHAIN[..], IDENTIFIER]));

/// Why a handshake message was refused. The variants exist for counters
/// and tests; none is ever reported to the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// A sealed field did not authenticate (wrong keys or tampering).
    #[error("handshake message failed authentication")]
    Decrypt,
    /// A Diffie-Hellman result was all zeros (a low-order key was sent).
    #[error("low-order public key in handshake")]
    LowOrder,
    /// The message's type word is not the expected one.
    #[error("not the expected handshake message type")]
    WrongType,
    /// A response names an index we have no handshake under.
    #[error("response for a handshake we did not start")]
    UnknownIndex,
}

impl From<CryptoError> for HandshakeError {
    fn from(e: CryptoError) -> Self {
        match e {
            CryptoError::LowOrder => HandshakeError::LowOrder,
            CryptoError::Auth | CryptoError::Short => HandshakeError::Decrypt,
        }
    }
}

/// The interface's own static key with what the handshake derives from it.
pub struct Identity {
    private: PrivateKey,
    public: PublicKey,
    /// HASH(H0 || our public key): where a responder's transcript starts.
    responder_hash: [u8; HASH_LEN],
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Builds the identity of the interface that owns `private`.
    pub fn new(private: PrivateKey) -> Self {
        let public = private.public_key();
        let responder_hash = crypto::hash(&[&INITIAL_HASH[..], public.as_bytes()]);
        Self {
            private,
            public,
            responder_hash,
        }
    }

    /// Our public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Our private key.
    pub fn private_key(&self) -> &PrivateKey {
        &self.private
    }
}

/// What one peer contributes to every handshake with it. The static-static
/// DH is computed on first use and cached: it costs an X25519 that a bulk
/// `wg addconf` of many peers should not pay up front.
#[derive(Debug)]
pub struct PeerKeys {
    remote: PublicKey,
    psk: PresharedKey,
    static_static: Option<SecretKey>,
}

impl PeerKeys {
    /// Keys for the peer whose static public key is `remote`.
    pub fn new(remote: PublicKey, psk: PresharedKey) -> Self {
        Self {
            remote,
            psk,
            static_static: None,
        }
    }

    /// The peer's static public key.
    pub fn remote(&self) -> &PublicKey {
        &self.remote
    }

    /// The preshared key (all zeros when none is set).
    pub fn preshared_key(&self) -> &PresharedKey {
        &self.psk
    }

    /// Replaces the preshared key.
    pub fn set_preshared_key(&mut self, psk: PresharedKey) {
        self.psk = psk;
    }

    /// Forgets the cached DH; call when the interface's private key changes.
    pub fn forget_cached(&mut self) {
        self.static_static = None;
    }

    fn static_static(&mut self, id: &Identity) -> Result<&SecretKey, HandshakeError> {
        if self.static_static.is_none() {
            self.static_static = Some(crypto::dh(&id.private, &self.remote)?);
        }
        self.static_static.as_ref().ok_or(HandshakeError::LowOrder)
    }
}

/// The transcript state both ends carry: chaining key and hash.
struct Transcript {
    chain: SecretKey,
    hash: [u8; HASH_LEN],
}

impl Transcript {
    fn mix_hash(&mut self, data: &[u8]) {
        self.hash = crypto::hash(&[&self.hash, data]);
    }

    /// C = KDF1(C, input).
    fn mix_chain(&mut self, input: &[u8]) {
        self.chain = crypto::kdf1(&self.chain, input);
    }

    /// (C, k) = KDF2(C, input): returns the key for the next sealed field.
    fn mix_key(&mut self, input: &[u8]) -> SecretKey {
        let (c, k) = crypto::kdf2(&self.chain, input);
        self.chain = c;
        k
    }

    fn seal(&mut self, key: &SecretKey, plaintext: &[u8], out: &mut [u8]) {
        crypto::aead_seal(key, 0, plaintext, &self.hash, out);
        self.mix_hash(out);
    }

    fn open(
        &mut self,
        key: &SecretKey,
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<(), HandshakeError> {
        crypto::aead_open(key, 0, ciphertext, &self.hash, out)?;
        self.mix_hash(ciphertext);
        Ok(())
    }

    /// The psk step: (C, τ, k) = KDF3(C, Q); H = HASH(H || τ).
    fn mix_psk(&mut self, psk: &PresharedKey) -> SecretKey {
        let (c, tau, k) = crypto::kdf3(&self.chain, psk.as_bytes());
        self.chain = c;
        self.mix_hash(&tau[..]);
        k
    }

    /// (T_initiator_send, T_responder_send) = KDF2(C, empty).
    fn split(&self) -> (SecretKey, SecretKey) {
        crypto::kdf2(&self.chain, &[])
    }
}

/// Transport keys agreed by a handshake, with the indexes that address them.
pub struct SessionKeys {
    /// Key for what we send.
    pub send: SecretKey,
    /// Key for what we receive.
    pub recv: SecretKey,
    /// Our index: the peer puts it in the receiver field of what it sends us.
    pub local_index: u32,
    /// The peer's index, which we put in the receiver field.
    pub remote_index: u32,
    /// Whether we initiated (only the initiator rekeys on age).
    pub initiator: bool,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeys")
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("initiator", &self.initiator)
            .finish_non_exhaustive()
    }
}

/// What an initiator keeps between sending an initiation and its response.
pub struct InitiatorState {
    transcript: Transcript,
    ephemeral: StaticSecret,
    /// The index the response will be addressed to.
    pub local_index: u32,
}

impl std::fmt::Debug for InitiatorState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitiatorState")
            .field("local_index", &self.local_index)
            .finish_non_exhaustive()
    }
}

/// Writes an initiation to the peer into `msg` (all but mac1/mac2) and
/// returns what is needed to take its response.
pub fn create_initiation(
    id: &Identity,
    peer: &mut PeerKeys,
    local_index: u32,
    timestamp: Tai64N,
    msg: &mut Initiation,
) -> Result<InitiatorState, HandshakeError> {
    let mut t = Transcript {
        chain: Zeroizing::new(*INITIAL_CHAIN),
        hash: *INITIAL_HASH,
    };
    t.mix_hash(peer.remote.as_bytes());

    let ephemeral = StaticSecret::random_from_rng(OsRng);
    let ephemeral_public = crypto::public_of(&ephemeral);
    msg.msg_type.set(TYPE_INITIATION);
    msg.sender.set(local_index);
    msg.ephemeral = *ephemeral_public.as_bytes();
    t.mix_chain(&msg.ephemeral);
    t.mix_hash(&msg.ephemeral);

    let es = crypto::dh_secret(&ephemeral, &peer.remote)?;
    let k = t.mix_key(&es[..]);
    t.seal(&k, id.public.as_bytes(), &mut msg.encrypted_static);

    let k = t.mix_key(&peer.static_static(id)?[..]);
    t.seal(&k, &timestamp.0, &mut msg.encrypted_timestamp);

    Ok(InitiatorState {
        transcript: t,
        ephemeral,
        local_index,
    })
}

/// An initiation whose sender we have identified but not yet verified.
pub struct OpenedInitiation {
    transcript: Transcript,
    remote: PublicKey,
    remote_ephemeral: PublicKey,
    remote_index: u32,
}

impl std::fmt::Debug for OpenedInitiation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedInitiation")
            .field("remote", &self.remote)
            .field("remote_index", &self.remote_index)
            .finish_non_exhaustive()
    }
}

/// Responder, step 1: recovers the initiator's static public key, so the
/// caller can look the peer up. Costs one X25519.
pub fn open_initiation(
    id: &Identity,
    msg: &Initiation,
) -> Result<OpenedInitiation, HandshakeError> {
    if msg.msg_type.get() != TYPE_INITIATION {
        return Err(HandshakeError::WrongType);
    }
    let mut t = Transcript {
        chain: Zeroizing::new(*INITIAL_CHAIN),
        hash: id.responder_hash,
    };
    let remote_ephemeral = PublicKey::from_bytes(msg.ephemeral);
    t.mix_chain(&msg.ephemeral);
    t.mix_hash(&msg.ephemeral);

    let es = crypto::dh(&id.private, &remote_ephemeral)?;
    let k = t.mix_key(&es[..]);
    let mut remote = [0u8; KEY_LEN];
    t.open(&k, &msg.encrypted_static, &mut remote)?;
    Ok(OpenedInitiation {
        transcript: t,
        remote: PublicKey::from_bytes(remote),
        remote_ephemeral,
        remote_index: msg.sender.get(),
    })
}

impl OpenedInitiation {
    /// The initiator's static public key (authenticated only once
    /// [`Self::verify`] succeeds).
    pub fn remote(&self) -> &PublicKey {
        &self.remote
    }

    /// Responder, step 2: with the peer's keys, authenticates the message
    /// and returns its timestamp. The caller checks that the timestamp is
    /// newer than the last accepted one before answering.
    pub fn verify(
        mut self,
        id: &Identity,
        peer: &mut PeerKeys,
        msg: &Initiation,
    ) -> Result<VerifiedInitiation, HandshakeError> {
        debug_assert_eq!(peer.remote, self.remote);
        let k = self.transcript.mix_key(&peer.static_static(id)?[..]);
        let mut ts = [0u8; TIMESTAMP_LEN];
        self.transcript
            .open(&k, &msg.encrypted_timestamp, &mut ts)?;
        Ok(VerifiedInitiation {
            transcript: self.transcript,
            remote_ephemeral: self.remote_ephemeral,
            remote_index: self.remote_index,
            timestamp: Tai64N(ts),
        })
    }
}

/// An authenticated initiation, ready to be answered.
pub struct VerifiedInitiation {
    transcript: Transcript,
    remote_ephemeral: PublicKey,
    remote_index: u32,
    /// The initiator's TAI64N timestamp.
    pub timestamp: Tai64N,
}

impl std::fmt::Debug for VerifiedInitiation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedInitiation")
            .field("remote_index", &self.remote_index)
            .field("timestamp", &self.timestamp)
            .finish_non_exhaustive()
    }
}

/// Responder, step 3: writes the response (all but mac1/mac2) and returns
/// the session keys.
pub fn create_response(
    init: VerifiedInitiation,
    peer: &PeerKeys,
    local_index: u32,
    msg: &mut Response,
) -> Result<SessionKeys, HandshakeError> {
    let mut t = init.transcript;
    let ephemeral = StaticSecret::random_from_rng(OsRng);
    let ephemeral_public = crypto::public_of(&ephemeral);
    msg.msg_type.set(TYPE_RESPONSE);
    msg.sender.set(local_index);
    msg.receiver.set(init.remote_index);
    msg.ephemeral = *ephemeral_public.as_bytes();
    t.mix_chain(&msg.ephemeral);
    t.mix_hash(&msg.ephemeral);
    t.mix_chain(&crypto::dh_secret(&ephemeral, &init.remote_ephemeral)?[..]);
    t.mix_chain(&crypto::dh_secret(&ephemeral, &peer.remote)?[..]);
    let k = t.mix_psk(&peer.psk);
    t.seal(&k, &[], &mut msg.encrypted_nothing);
    let (initiator_send, responder_send) = t.split();
    Ok(SessionKeys {
        send: responder_send,
        recv: initiator_send,
        local_index,
        remote_index: init.remote_index,
        initiator: false,
    })
}

/// Initiator: authenticates a response to `state` and returns the session
/// keys. On error `state` is untouched, so a forged response cannot end a
/// handshake that a genuine one could still complete.
pub fn consume_response(
    state: &InitiatorState,
    id: &Identity,
    peer: &PeerKeys,
    msg: &Response,
) -> Result<SessionKeys, HandshakeError> {
    if msg.msg_type.get() != TYPE_RESPONSE {
        return Err(HandshakeError::WrongType);
    }
    if msg.receiver.get() != state.local_index {
        return Err(HandshakeError::UnknownIndex);
    }
    let mut t = Transcript {
        chain: state.transcript.chain.clone(),
        hash: state.transcript.hash,
    };
    let remote_ephemeral = PublicKey::from_bytes(msg.ephemeral);
    t.mix_chain(&msg.ephemeral);
    t.mix_hash(&msg.ephemeral);
    t.mix_chain(&crypto::dh_secret(&state.ephemeral, &remote_ephemeral)?[..]);
    t.mix_chain(&crypto::dh(&id.private, &remote_ephemeral)?[..]);
    let k = t.mix_psk(&peer.psk);
    t.open(&k, &msg.encrypted_nothing, &mut [])?;
    let (initiator_send, responder_send) = t.split();
    Ok(SessionKeys {
        send: initiator_send,
        recv: responder_send,
        local_index: state.local_index,
        remote_index: msg.sender.get(),
        initiator: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromZeros;

    struct Side {
        id: Identity,
        peer: PeerKeys,
    }

    fn pair(psk: PresharedKey) -> (Side, Side) {
        let a = PrivateKey::generate();
        let b = PrivateKey::generate();
        let (pa, pb) = (a.public_key(), b.public_key());
        (
            Side {
                id: Identity::new(a),
                peer: PeerKeys::new(pb, psk.clone()),
            },
            Side {
                id: Identity::new(b),
                peer: PeerKeys::new(pa, psk),
            },
        )
    }

    fn run(
        i: &mut Side,
        r: &mut Side,
    ) -> Result<(SessionKeys, SessionKeys, Tai64N), HandshakeError> {
        let ts = Tai64N::from_system_time(std::time::SystemTime::now());
        let mut init = Initiation::new_zeroed();
        let state = create_initiation(&i.id, &mut i.peer, 7, ts, &mut init)?;
        let opened = open_initiation(&r.id, &init)?;
        assert_eq!(opened.remote(), i.id.public_key());
        let verified = opened.verify(&r.id, &mut r.peer, &init)?;
        let got_ts = verified.timestamp;
        let mut resp = Response::new_zeroed();
        let rk = create_response(verified, &r.peer, 9, &mut resp)?;
        let ik = consume_response(&state, &i.id, &i.peer, &resp)?;
        Ok((ik, rk, got_ts))
    }

    #[test]
    fn both_ends_agree_on_keys() {
        for psk in [PresharedKey::default(), PresharedKey::generate()] {
            let (mut i, mut r) = pair(psk);
            let (ik, rk, _) = run(&mut i, &mut r).unwrap();
            assert_eq!(*ik.send, *rk.recv);
            assert_eq!(*ik.recv, *rk.send);
            assert_ne!(*ik.send, *ik.recv);
            assert_eq!((ik.local_index, ik.remote_index), (7, 9));
            assert_eq!((rk.local_index, rk.remote_index), (9, 7));
            assert!(ik.initiator && !rk.initiator);
        }
    }

    #[test]
    fn timestamp_is_carried() {
        let (mut i, mut r) = pair(PresharedKey::default());
        let before = Tai64N::from_system_time(std::time::SystemTime::now());
        let (_, _, ts) = run(&mut i, &mut r).unwrap();
        assert!(ts >= before);
    }

    #[test]
    fn mismatched_psk_fails_at_the_response() {
        let (mut i, mut r) = pair(PresharedKey::generate());
        r.peer.set_preshared_key(PresharedKey::generate());
        assert_eq!(run(&mut i, &mut r).unwrap_err(), HandshakeError::Decrypt);
    }

    #[test]
    fn wrong_responder_cannot_open() {
        let (mut i, _) = pair(PresharedKey::default());
        let stranger = Identity::new(PrivateKey::generate());
        let mut init = Initiation::new_zeroed();
        create_initiation(&i.id, &mut i.peer, 1, Tai64N::ZERO, &mut init).unwrap();
        assert_eq!(
            open_initiation(&stranger, &init).unwrap_err(),
            HandshakeError::Decrypt
        );
    }

    #[test]
    fn tampered_initiation_and_response_fail() {
        let (mut i, mut r) = pair(PresharedKey::default());
        let mut init = Initiation::new_zeroed();
        let state = create_initiation(&i.id, &mut i.peer, 1, Tai64N::ZERO, &mut init).unwrap();
        let mut bad = init.clone();
        bad.encrypted_timestamp[0] ^= 1;
        let opened = open_initiation(&r.id, &bad).unwrap();
        assert!(opened.verify(&r.id, &mut r.peer, &bad).is_err());

        let opened = open_initiation(&r.id, &init).unwrap();
        let v = opened.verify(&r.id, &mut r.peer, &init).unwrap();
        let mut resp = Response::new_zeroed();
        create_response(v, &r.peer, 2, &mut resp).unwrap();
        let mut bad = resp.clone();
        bad.encrypted_nothing[0] ^= 1;
        assert!(consume_response(&state, &i.id, &i.peer, &bad).is_err());
        let mut wrong_index = resp.clone();
        wrong_index.receiver.set(99);
        assert_eq!(
            consume_response(&state, &i.id, &i.peer, &wrong_index).unwrap_err(),
            HandshakeError::UnknownIndex
        );
        // The genuine response still completes after the forgeries.
        consume_response(&state, &i.id, &i.peer, &resp).unwrap();
    }

    #[test]
    fn low_order_ephemeral_is_refused() {
        let (_, r) = pair(PresharedKey::default());
        let mut init = Initiation::new_zeroed();
        init.msg_type.set(TYPE_INITIATION);
        // All-zero point is of low order.
        assert_eq!(
            open_initiation(&r.id, &init).unwrap_err(),
            HandshakeError::LowOrder
        );
    }
}
