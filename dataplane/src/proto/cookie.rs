//! MAC1, MAC2 and cookie replies (whitepaper section 5.4.4 and 5.4.7).
//!
//! Two halves, one per role:
//! - [`CookieChecker`] belongs to the interface that receives handshakes:
//!   it verifies mac1 (always), mac2 (when under load) and writes cookie
//!   replies. Its secret rotates every two minutes, so a cookie is only good
//!   for that long.
//! - [`CookieJar`] belongs to a peer we send handshakes to: it stamps mac1
//!   and mac2 on outgoing messages and takes in the cookie replies the peer
//!   sends us.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use super::crypto::{self, CryptoError, HASH_LEN, MAC_LEN};
use super::keys::PublicKey;
use super::messages::{CookieReply, MacProtected, TYPE_COOKIE_REPLY};

/// Label hashed with a public key to make the mac1 key.
const LABEL_MAC1: &[u8] = b"mac1----";
/// Label hashed with a public key to make the cookie encryption key.
const LABEL_COOKIE: &[u8] = b"cookie--";
/// How long a cookie secret (responder) lives before it is replaced.
pub const COOKIE_SECRET_MAX_AGE: Duration = Duration::from_secs(120);
/// A received cookie is used for mac2 only this long, a little less than
/// the secret's life so a cookie never arrives already stale.
pub const COOKIE_REFRESH_TIME: Duration = Duration::from_secs(120 - 5);

/// The key that mac1 of a message sent to `receiver` is keyed with.
pub fn mac1_key(receiver: &PublicKey) -> [u8; HASH_LEN] {
    crypto::hash(&[LABEL_MAC1, receiver.as_bytes()])
}

/// The key that cookie replies from `sender` are sealed with.
pub fn cookie_key(sender: &PublicKey) -> [u8; HASH_LEN] {
    crypto::hash(&[LABEL_COOKIE, sender.as_bytes()])
}

fn mac1_of<M: MacProtected>(key: &[u8; HASH_LEN], msg: &M) -> [u8; MAC_LEN] {
    crypto::mac(key, &[&msg.as_bytes()[..M::MAC1_OFFSET]])
}

fn mac2_of<M: MacProtected>(cookie: &[u8; MAC_LEN], msg: &M) -> [u8; MAC_LEN] {
    crypto::mac(cookie, &[&msg.as_bytes()[..M::MAC2_OFFSET]])
}

/// What a handshake message's MACs say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacVerdict {
    /// mac1 is wrong: drop silently.
    BadMac1,
    /// mac1 is right and mac2 is absent or wrong.
    Mac1Only,
    /// Both are right: the sender proved it owns its source address.
    Mac1AndMac2,
}

/// Where a responder's cookie secrets come from: a random seed and a
/// start time shared by every worker of a device, so that a cookie one
/// worker hands out is good at all of them (a peer's next attempt may land
/// on another worker, or be handed to the worker that owns its key). The
/// secret of each [`COOKIE_SECRET_MAX_AGE`] period since the start is
/// HMAC(seed, period number): it changes every two minutes as a freshly
/// drawn one would, and the workers share nothing they write.
#[derive(Clone)]
pub struct CookieSeed {
    seed: Zeroizing<[u8; HASH_LEN]>,
    base: Instant,
}

impl std::fmt::Debug for CookieSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieSeed").finish_non_exhaustive()
    }
}

impl CookieSeed {
    /// A fresh random seed; periods count from `base`.
    pub fn generate(base: Instant) -> Self {
        let mut seed = Zeroizing::new([0u8; HASH_LEN]);
        OsRng.fill_bytes(&mut seed[..]);
        Self { seed, base }
    }

    /// The number of the secret's period at `now`.
    fn period(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.base).as_secs() / COOKIE_SECRET_MAX_AGE.as_secs()
    }
}

/// Responder side: checks MACs on incoming handshakes and makes cookies.
pub struct CookieChecker {
    mac1_key: [u8; HASH_LEN],
    cookie_key: Zeroizing<[u8; HASH_LEN]>,
    seed: CookieSeed,
    secret: Zeroizing<[u8; HASH_LEN]>,
    /// The period `secret` belongs to.
    period: Option<u64>,
}

impl std::fmt::Debug for CookieChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieChecker")
            .field("period", &self.period)
            .finish_non_exhaustive()
    }
}

impl CookieChecker {
    /// A checker for the interface whose public key is `local`, with the
    /// device's cookie `seed`.
    pub fn new(local: &PublicKey, seed: CookieSeed) -> Self {
        Self {
            mac1_key: mac1_key(local),
            cookie_key: Zeroizing::new(cookie_key(local)),
            seed,
            secret: Zeroizing::new([0; HASH_LEN]),
            period: None,
        }
    }

    /// Classifies a handshake message received from `src` at `now`.
    /// mac2 is only computed when mac1 is right, so garbage costs one MAC.
    pub fn verify<M: MacProtected>(
        &mut self,
        msg: &M,
        src: SocketAddr,
        now: Instant,
    ) -> MacVerdict {
        if !crypto::ct_eq(&mac1_of(&self.mac1_key, msg), msg.mac1()) {
            return MacVerdict::BadMac1;
        }
        let cookie = self.cookie_for(src, now);
        if crypto::ct_eq(&mac2_of(&cookie, msg), msg.mac2()) {
            MacVerdict::Mac1AndMac2
        } else {
            MacVerdict::Mac1Only
        }
    }

    /// Writes a cookie reply for `msg` (whose mac1 was valid) from `src`.
    pub fn reply<M: MacProtected>(
        &mut self,
        msg: &M,
        src: SocketAddr,
        now: Instant,
        out: &mut CookieReply,
    ) {
        let cookie = self.cookie_for(src, now);
        out.msg_type.set(TYPE_COOKIE_REPLY);
        out.receiver.set(msg.sender());
        OsRng.fill_bytes(&mut out.nonce);
        crypto::xaead_seal(
            &self.cookie_key,
            &out.nonce,
            &cookie,
            msg.mac1(),
            &mut out.encrypted_cookie,
        );
    }

    /// τ = MAC(R, source address || source port), R the secret of the
    /// current period (see [`CookieSeed`]).
    fn cookie_for(&mut self, src: SocketAddr, now: Instant) -> [u8; MAC_LEN] {
        let period = self.seed.period(now);
        if self.period != Some(period) {
            *self.secret = crypto::hmac(&self.seed.seed, &[&period.to_le_bytes()]);
            self.period = Some(period);
        }
        let port = src.port().to_be_bytes();
        match src.ip() {
            IpAddr::V4(ip) => crypto::mac(&self.secret[..], &[&ip.octets(), &port]),
            IpAddr::V6(ip) => crypto::mac(&self.secret[..], &[&ip.octets(), &port]),
        }
    }
}

/// Why a cookie reply was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    /// We have sent no handshake message this reply could answer.
    #[error("cookie reply without a handshake message to answer")]
    Unexpected,
    /// The reply did not decrypt with the mac1 we last sent.
    #[error("cookie reply failed authentication")]
    Auth,
}

/// Initiator side, one per peer: stamps MACs and keeps the peer's cookie.
#[derive(Default)]
pub struct CookieJar {
    cookie: Zeroizing<[u8; MAC_LEN]>,
    cookie_received: Option<Instant>,
    last_mac1: Option<[u8; MAC_LEN]>,
}

impl std::fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieJar")
            .field("cookie_received", &self.cookie_received)
            .finish_non_exhaustive()
    }
}

impl CookieJar {
    /// Writes mac1 and (with a fresh cookie) mac2 into `msg` bound for `remote`.
    pub fn stamp<M: MacProtected>(&mut self, remote: &PublicKey, msg: &mut M, now: Instant) {
        let mac1 = mac1_of(&mac1_key(remote), msg);
        *msg.mac1_mut() = mac1;
        self.last_mac1 = Some(mac1);
        let fresh = self
            .cookie_received
            .is_some_and(|t| now.saturating_duration_since(t) < COOKIE_REFRESH_TIME);
        *msg.mac2_mut() = if fresh {
            mac2_of(&self.cookie, msg)
        } else {
            [0; MAC_LEN]
        };
    }

    /// Takes in a cookie reply that `remote` sent us. Never moves endpoints
    /// and changes nothing unless the reply authenticates.
    pub fn consume(
        &mut self,
        remote: &PublicKey,
        reply: &CookieReply,
        now: Instant,
    ) -> Result<(), CookieError> {
        let aad = self.last_mac1.ok_or(CookieError::Unexpected)?;
        let mut cookie = Zeroizing::new([0u8; MAC_LEN]);
        crypto::xaead_open(
            &cookie_key(remote),
            &reply.nonce,
            &reply.encrypted_cookie,
            &aad,
            &mut cookie[..],
        )
        .map_err(|_: CryptoError| CookieError::Auth)?;
        self.cookie = cookie;
        self.cookie_received = Some(now);
        // One reply per message we sent: a replayed reply finds no mac1.
        self.last_mac1 = None;
        Ok(())
    }

    /// Whether a cookie is held and fresh enough for mac2.
    pub fn has_fresh_cookie(&self, now: Instant) -> bool {
        self.cookie_received
            .is_some_and(|t| now.saturating_duration_since(t) < COOKIE_REFRESH_TIME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::keys::PrivateKey;
    use crate::proto::messages::Initiation;
    use zerocopy::FromZeros;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cookie_round_trip_enables_mac2() {
        let responder = PrivateKey::generate().public_key();
        let mut checker = CookieChecker::new(&responder, CookieSeed::generate(Instant::now()));
        let mut jar = CookieJar::default();
        let now = Instant::now() + Duration::from_secs(1);
        let src = addr("192.0.2.1:51820");

        let mut msg = Initiation::new_zeroed();
        msg.msg_type.set(1);
        msg.sender.set(42);
        jar.stamp(&responder, &mut msg, now);
        assert_eq!(msg.mac2, [0; 16]);
        assert_eq!(checker.verify(&msg, src, now), MacVerdict::Mac1Only);

        let mut reply = CookieReply::new_zeroed();
        checker.reply(&msg, src, now, &mut reply);
        assert_eq!(reply.receiver.get(), 42);
        jar.consume(&responder, &reply, now).unwrap();
        // A second copy of the same reply is refused.
        assert_eq!(
            jar.consume(&responder, &reply, now),
            Err(CookieError::Unexpected)
        );

        jar.stamp(&responder, &mut msg, now);
        assert_ne!(msg.mac2, [0; 16]);
        assert_eq!(checker.verify(&msg, src, now), MacVerdict::Mac1AndMac2);
        // The cookie is bound to the source address and port.
        assert_eq!(
            checker.verify(&msg, addr("192.0.2.1:51821"), now),
            MacVerdict::Mac1Only
        );
        assert_eq!(
            checker.verify(&msg, addr("[2001:db8::1]:51820"), now),
            MacVerdict::Mac1Only
        );
    }

    #[test]
    fn workers_with_one_seed_accept_each_others_cookies() {
        let responder = PrivateKey::generate().public_key();
        let seed = CookieSeed::generate(Instant::now());
        let (mut a, mut b) = (
            CookieChecker::new(&responder, seed.clone()),
            CookieChecker::new(&responder, seed),
        );
        let mut other = CookieChecker::new(&responder, CookieSeed::generate(Instant::now()));
        let mut jar = CookieJar::default();
        let now = Instant::now();
        let src = addr("192.0.2.1:51820");
        let mut msg = Initiation::new_zeroed();
        jar.stamp(&responder, &mut msg, now);
        let mut reply = CookieReply::new_zeroed();
        a.reply(&msg, src, now, &mut reply);
        jar.consume(&responder, &reply, now).unwrap();
        jar.stamp(&responder, &mut msg, now);
        assert_eq!(b.verify(&msg, src, now), MacVerdict::Mac1AndMac2);
        assert_eq!(other.verify(&msg, src, now), MacVerdict::Mac1Only);
    }

    #[test]
    fn bad_mac1_is_detected_and_cookies_expire() {
        let responder = PrivateKey::generate().public_key();
        let other = PrivateKey::generate().public_key();
        let mut checker = CookieChecker::new(&responder, CookieSeed::generate(Instant::now()));
        let mut jar = CookieJar::default();
        let now = Instant::now() + Duration::from_secs(1);
        let src = addr("192.0.2.1:1");
        let mut msg = Initiation::new_zeroed();
        jar.stamp(&other, &mut msg, now);
        assert_eq!(checker.verify(&msg, src, now), MacVerdict::BadMac1);

        jar.stamp(&responder, &mut msg, now);
        let mut reply = CookieReply::new_zeroed();
        checker.reply(&msg, src, now, &mut reply);
        // A tampered reply is refused and changes nothing.
        let mut bad = reply.clone();
        bad.encrypted_cookie[0] ^= 1;
        assert_eq!(jar.consume(&responder, &bad, now), Err(CookieError::Auth));
        assert!(!jar.has_fresh_cookie(now));
        jar.consume(&responder, &reply, now).unwrap();
        assert!(jar.has_fresh_cookie(now + Duration::from_secs(114)));
        assert!(!jar.has_fresh_cookie(now + COOKIE_REFRESH_TIME));
        // After the responder's secret rotates, the old cookie no longer
        // verifies as mac2.
        let later = now + COOKIE_SECRET_MAX_AGE;
        jar.stamp(&responder, &mut msg, now + Duration::from_secs(1));
        assert_eq!(checker.verify(&msg, src, later), MacVerdict::Mac1Only);
    }
}
