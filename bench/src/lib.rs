//! corewire's benchmarks: fixtures shared by the criterion micro-benchmarks
//! in `benches/`, and the report that turns criterion's estimates into the
//! ratios we track (`cargo run -p corewire-bench --bin micro-report`); the
//! netns harness behind `netbench` ([`harness`]) and the hub benchmark
//! behind `concentrator` ([`concentrator`]), which reuses its pieces.

pub mod concentrator;
pub mod harness;

use std::time::Instant;

use corewire_dataplane::proto::handshake::SessionKeys;
use corewire_dataplane::proto::messages::{padded_len, HEADROOM, TAILROOM};
use corewire_dataplane::proto::session::{PacketBuf, Session};
use ring::aead::{LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

/// Packets per batch in the session benchmarks: what one io_uring receive
/// or one GSO send carries at most.
pub const BATCH: usize = corewire_dataplane::engine::limits::MAX_SEGMENTS;
/// The tunnel MTU used for padding.
pub const MTU: usize = corewire_dataplane::engine::limits::DEFAULT_MTU as usize;

/// Fixed test keys: benchmarks need no secrecy, only realistic work.
const KEY_A: [u8; 32] = [0x11; 32];
const KEY_B: [u8; 32] = [0x22; 32];

/// A sender and a receiver session sharing keys.
pub fn session_pair() -> (Session, Session) {
    let now = Instant::now();
    let keys = |send: [u8; 32], recv: [u8; 32], initiator| SessionKeys {
        send: send.into(),
        recv: recv.into(),
        local_index: if initiator { 1 } else { 2 },
        remote_index: if initiator { 2 } else { 1 },
        initiator,
    };
    (
        Session::new(keys(KEY_A, KEY_B, true), now),
        Session::new(keys(KEY_B, KEY_A, false), now),
    )
}

/// The AEAD nonce WireGuard uses for `counter`: four zero bytes, then the
/// counter little-endian.
pub fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

/// `ring`'s raw AEAD under the sender's key: the reference we compare to.
pub fn raw_key() -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &KEY_A).expect("32-byte key"))
}

/// A batch of plaintext packets of `len` bytes with room to seal in place.
pub fn plaintext_batch(len: usize) -> Vec<PacketBuf<Vec<u8>>> {
    (0..BATCH)
        .map(|i| {
            let mut v = vec![i as u8; HEADROOM + len + TAILROOM];
            v[HEADROOM] = 0x45;
            PacketBuf::new(v, HEADROOM, len).expect("bounds inside the buffer")
        })
        .collect()
}

/// Bytes the raw AEAD encrypts for a packet of `len`: the padded plaintext,
/// so both sides of the comparison do the same cipher work.
pub fn cipher_len(len: usize) -> usize {
    padded_len(len, MTU)
}
