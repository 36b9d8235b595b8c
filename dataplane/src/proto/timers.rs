//! Every timer of the whitepaper (section 6), as deadlines a peer carries.
//!
//! There is no clock here: events move deadlines, and [`Timers::expired`]
//! reports which deadlines `now` has passed. The peer turns those into
//! handshakes and keepalives. The timers, what arms them and what they do:
//!
//! | timer | armed by | on expiry |
//! |---|---|---|
//! | retransmit handshake | sending an initiation: REKEY_TIMEOUT + jitter | resend, up to REKEY_ATTEMPT_TIME; then give up and drop staged packets |
//! | send keepalive | receiving data, if not armed: KEEPALIVE_TIMEOUT | send a keepalive (and once more if data came meanwhile) |
//! | new handshake | sending data, if not armed: KEEPALIVE + REKEY_TIMEOUT + jitter; cleared by any authenticated receive | initiate: we spoke and heard nothing back |
//! | zero key material | a new session: 3 x REJECT_AFTER_TIME | erase every session and handshake |
//! | persistent keepalive | any authenticated packet in or out: the interval | send a keepalive |
//!
//! Sending clears the keepalive timer (the packet we sent is the keepalive);
//! completing a handshake clears the retransmission.
//! Rekeying by age and by message count is checked on send and receive
//! (see [`super::peer`]), not by timers, as in the kernel.

use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};

/// Initiate a new session after this many messages (initiator).
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// Never use a session for more messages than this.
pub use super::replay::REJECT_AFTER_MESSAGES;
/// Initiate a new session once the current one is this old (initiator).
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// Never use a session older than this.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// Keep retrying a handshake for this long before giving up.
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// Wait this long for a handshake response before retrying.
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound of the random jitter added to REKEY_TIMEOUT.
pub const REKEY_TIMEOUT_JITTER_MAX: Duration = Duration::from_millis(333);
/// Send a keepalive when data came in and nothing went out for this long.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How many initiations fit in REKEY_ATTEMPT_TIME.
pub const MAX_HANDSHAKE_ATTEMPTS: u32 =
    (REKEY_ATTEMPT_TIME.as_secs() / REKEY_TIMEOUT.as_secs()) as u32;
/// Accept at most one initiation from a peer per this interval (flood guard).
pub const INITIATION_MIN_INTERVAL: Duration = Duration::from_millis(1000 / 50);
/// Erase key material when no new session came for this long.
pub const ZERO_KEYS_AFTER: Duration = Duration::from_secs(3 * 180);
/// Age at which an initiator rekeys on receive: the last minute to do so
/// before the session expires under the peer (REJECT - KEEPALIVE - REKEY_TIMEOUT).
pub const REKEY_ON_RECEIVE_AGE: Duration = Duration::from_secs(180 - 10 - 5);

/// A random REKEY_TIMEOUT jitter in [0, 333 ms].
pub fn jitter() -> Duration {
    let max = REKEY_TIMEOUT_JITTER_MAX.as_millis() as u32 + 1;
    Duration::from_millis(u64::from(OsRng.next_u32() % max))
}

/// Which timers have fired, as returned by [`Timers::expired`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fired {
    /// No response to our initiation: retry or give up.
    pub retransmit_handshake: bool,
    /// Data came in and we have not answered: send a keepalive.
    pub send_keepalive: bool,
    /// Data went out and nothing came back: start a new handshake.
    pub new_handshake: bool,
    /// No new session for 9 minutes: erase keys.
    pub zero_key_material: bool,
    /// The persistent keepalive interval elapsed.
    pub persistent_keepalive: bool,
}

impl Fired {
    /// Whether anything fired.
    pub fn any(&self) -> bool {
        self.retransmit_handshake
            || self.send_keepalive
            || self.new_handshake
            || self.zero_key_material
            || self.persistent_keepalive
    }
}

/// A peer's timer deadlines.
#[derive(Debug, Clone, Default)]
pub struct Timers {
    retransmit_handshake: Option<Instant>,
    send_keepalive: Option<Instant>,
    new_handshake: Option<Instant>,
    zero_key_material: Option<Instant>,
    persistent_keepalive: Option<Instant>,
    need_another_keepalive: bool,
    /// Initiations sent for the current handshake attempt.
    pub handshake_attempts: u32,
    /// Whether the last-minute rekey on receive has been tried for this session.
    pub sent_last_minute_handshake: bool,
}

impl Timers {
    /// Data (not a keepalive) was sent.
    pub fn data_sent(&mut self, now: Instant) {
        if self.new_handshake.is_none() {
            self.new_handshake = Some(now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + jitter());
        }
    }

    /// Data (not a keepalive) was received.
    pub fn data_received(&mut self, now: Instant) {
        if self.send_keepalive.is_none() {
            self.send_keepalive = Some(now + KEEPALIVE_TIMEOUT);
        } else {
            self.need_another_keepalive = true;
        }
    }

    /// Any authenticated packet (data, keepalive or handshake) was sent.
    pub fn any_authenticated_sent(&mut self) {
        self.send_keepalive = None;
    }

    /// Any authenticated packet was received.
    pub fn any_authenticated_received(&mut self) {
        self.new_handshake = None;
    }

    /// Any authenticated packet went either way; `interval` is the
    /// persistent keepalive setting (0 = off).
    pub fn any_authenticated_traversal(&mut self, now: Instant, interval: u16) {
        if interval > 0 {
            self.persistent_keepalive = Some(now + Duration::from_secs(u64::from(interval)));
        }
    }

    /// An initiation was sent.
    pub fn handshake_initiated(&mut self, now: Instant) {
        self.retransmit_handshake = Some(now + REKEY_TIMEOUT + jitter());
    }

    /// A handshake completed (response consumed, or first data on a new
    /// responder session).
    pub fn handshake_complete(&mut self) {
        self.retransmit_handshake = None;
        self.handshake_attempts = 0;
        self.sent_last_minute_handshake = false;
    }

    /// A new session was derived.
    pub fn session_derived(&mut self, now: Instant) {
        self.zero_key_material = Some(now + ZERO_KEYS_AFTER);
    }

    /// The persistent keepalive interval changed.
    pub fn set_persistent_keepalive(&mut self, now: Instant, interval: u16) {
        self.persistent_keepalive =
            (interval > 0).then(|| now + Duration::from_secs(u64::from(interval)));
    }

    /// Stops retransmitting (the attempt was abandoned).
    pub fn stop_retransmit(&mut self) {
        self.retransmit_handshake = None;
    }

    /// Clears every timer but the key-erasure one (used when keys are erased).
    pub fn clear(&mut self) {
        *self = Timers::default();
    }

    /// Takes the timers that `now` has reached, disarming them (a fired
    /// send-keepalive re-arms itself if data arrived meanwhile).
    pub fn expired(&mut self, now: Instant) -> Fired {
        fn take(slot: &mut Option<Instant>, now: Instant) -> bool {
            if slot.is_some_and(|t| t <= now) {
                *slot = None;
                true
            } else {
                false
            }
        }
        let fired = Fired {
            retransmit_handshake: take(&mut self.retransmit_handshake, now),
            send_keepalive: take(&mut self.send_keepalive, now),
            new_handshake: take(&mut self.new_handshake, now),
            zero_key_material: take(&mut self.zero_key_material, now),
            persistent_keepalive: take(&mut self.persistent_keepalive, now),
        };
        if fired.send_keepalive && self.need_another_keepalive {
            self.need_another_keepalive = false;
            self.send_keepalive = Some(now + KEEPALIVE_TIMEOUT);
        }
        fired
    }

    /// The earliest armed deadline, for the engine's timer wheel.
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.retransmit_handshake,
            self.send_keepalive,
            self.new_handshake,
            self.zero_key_material,
            self.persistent_keepalive,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_match_the_whitepaper() {
        assert_eq!(MAX_HANDSHAKE_ATTEMPTS, 18);
        assert_eq!(REJECT_AFTER_MESSAGES, u64::MAX - (1 << 13));
        assert_eq!(ZERO_KEYS_AFTER, REJECT_AFTER_TIME * 3);
        assert_eq!(
            REKEY_ON_RECEIVE_AGE,
            REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
        );
    }

    #[test]
    fn jitter_is_bounded() {
        for _ in 0..1000 {
            assert!(jitter() <= REKEY_TIMEOUT_JITTER_MAX);
        }
    }

    #[test]
    fn keepalive_rearms_once_when_more_data_arrived() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.data_received(t0);
        t.data_received(t0 + Duration::from_secs(1));
        assert_eq!(t.next_deadline(), Some(t0 + KEEPALIVE_TIMEOUT));
        let f = t.expired(t0 + KEEPALIVE_TIMEOUT);
        assert!(f.send_keepalive);
        assert_eq!(t.next_deadline(), Some(t0 + KEEPALIVE_TIMEOUT * 2));
        assert!(t.expired(t0 + KEEPALIVE_TIMEOUT * 2).send_keepalive);
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn sending_cancels_keepalive_and_receiving_cancels_new_handshake() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.data_received(t0);
        t.any_authenticated_sent();
        t.data_sent(t0);
        t.any_authenticated_received();
        assert!(!t.expired(t0 + Duration::from_secs(60)).any());
    }

    #[test]
    fn new_handshake_deadline_has_jitter_bounds() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.data_sent(t0);
        let d = t.next_deadline().unwrap() - t0;
        assert!(d >= KEEPALIVE_TIMEOUT + REKEY_TIMEOUT);
        assert!(d <= KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX);
        // A second send does not push the deadline out.
        t.data_sent(t0 + Duration::from_secs(3));
        assert_eq!(t.next_deadline().unwrap() - t0, d);
    }
}
