//! Which worker owns what: a peer belongs to the worker its public key
//! names, a session to the worker named by the low bits of its receiver
//! index. Pure functions of their inputs, shared by the shards and the
//! socket steering, and the one directory of configured keys that the
//! shards publish their own peers into.

use std::collections::HashSet;
use std::sync::{Arc, PoisonError, RwLock};

use crate::proto::keys::PublicKey;

/// The public keys of every configured peer of a device, one copy shared by
/// all its shards. Each shard publishes the peers it owns as it applies
/// them and withdraws them as they are removed; the others read it to tell
/// a decrypted initiation from a configured peer of another worker (handed
/// to that worker) from one for no peer at all (dropped where it was
/// decrypted, so a sender cannot choose the worker that repeats the work).
/// Written only by configuration changes, read only for initiations that
/// another worker owns.
#[derive(Clone, Default)]
pub struct Directory {
    keys: Arc<RwLock<HashSet<PublicKey>>>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("peers", &self.len())
            .finish()
    }
}

impl Directory {
    /// Records a peer that its owner holds.
    pub fn publish(&self, key: PublicKey) {
        self.keys
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key);
    }

    /// Forgets a removed peer.
    pub fn withdraw(&self, key: &PublicKey) {
        self.keys
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }

    /// Whether some shard holds the peer with `key`.
    pub fn knows(&self, key: &PublicKey) -> bool {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(key)
    }

    /// How many peers are configured.
    pub fn len(&self) -> usize {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no peer is configured.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which worker owns the peer with `key`: public keys are uniformly
/// random, so their first bytes spread peers evenly.
pub fn owner_of_key(key: &PublicKey, workers: u32) -> u32 {
    if workers <= 1 {
        return 0;
    }
    let b = key.as_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]]) % workers
}

/// Bits of a session index that name its worker.
pub fn worker_bits(workers: u32) -> u8 {
    (u32::BITS - workers.saturating_sub(1).leading_zeros()) as u8
}

/// The receiver index of a response, cookie reply or transport message.
pub fn receiver_index(data: &[u8]) -> Option<u32> {
    let at = match data.first()? {
        2 => 8,
        3 | 4 => 4,
        _ => return None,
    };
    let b = data.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_bits_cover_the_workers() {
        assert_eq!(worker_bits(1), 0);
        assert_eq!(worker_bits(2), 1);
        assert_eq!(worker_bits(3), 2);
        assert_eq!(worker_bits(4), 2);
        assert_eq!(worker_bits(5), 3);
        assert_eq!(worker_bits(256), 8);
    }

    #[test]
    fn receiver_index_of_each_type() {
        let mut m = [0u8; 32];
        m[0] = 4;
        m[4..8].copy_from_slice(&7u32.to_le_bytes());
        assert_eq!(receiver_index(&m), Some(7));
        m[0] = 3;
        assert_eq!(receiver_index(&m), Some(7));
        m[0] = 2;
        m[8..12].copy_from_slice(&9u32.to_le_bytes());
        assert_eq!(receiver_index(&m), Some(9));
        m[0] = 1;
        assert_eq!(receiver_index(&m), None);
        assert_eq!(receiver_index(&[4, 0]), None);
    }

    #[test]
    fn the_directory_is_shared_by_its_clones() {
        let a = Directory::default();
        let b = a.clone();
        let key = PublicKey::from_bytes([7; 32]);
        assert!(!b.knows(&key));
        a.publish(key);
        assert!(b.knows(&key));
        assert_eq!(b.len(), 1);
        b.withdraw(&key);
        assert!(!a.knows(&key) && a.is_empty());
    }

    #[test]
    fn owners_spread() {
        let mut counts = [0u32; 4];
        for i in 0..4000u32 {
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&(i.wrapping_mul(2_654_435_761)).to_le_bytes());
            counts[owner_of_key(&PublicKey::from_bytes(b), 4) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
