//! The one routing table the workers share: every peer's allowed IPs ->
//! its public key, kept by the engine from the configuration changes and
//! read by the workers.
//!
//! A worker that reads a TUN packet for a peer it does not own (no TUN
//! steering, or a packet that raced a change) looks the destination up
//! here to find the owner. Each worker used to keep its own copy of the
//! other workers' prefixes, so a peer's routes were stored once per worker;
//! now they are stored once (plus the owning shard's own table).
//!
//! The table sits behind a [`ShardedLock`]: a reader locks only its own
//! thread's shard (no cache line bounces between workers that only read),
//! the engine locks them all to change the table in place, a chunk of
//! changes at a time ([`APPLY_CHUNK`]), so a bulk load never holds the
//! workers for long and a single change (one peer removed) costs only that
//! change.

use std::net::IpAddr;
use std::sync::Arc;

use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard};

use super::config::{Change, Prefix};
use super::limits::APPLY_CHUNK;
use crate::proto::allowedips::AllowedIps;
use crate::proto::keys::PublicKey;

/// The table as the workers hold it: read-only for them.
pub type SharedRoutes = Arc<ShardedLock<AllowedIps<PublicKey>>>;

/// Reads `routes` (a writer that panicked left it as it was: still a
/// table, so it is read anyway).
pub fn read(routes: &SharedRoutes) -> ShardedLockReadGuard<'_, AllowedIps<PublicKey>> {
    routes.read().unwrap_or_else(|e| e.into_inner())
}

/// The engine's side: the table.
#[derive(Debug, Default)]
pub struct Routes {
    table: SharedRoutes,
    /// A peer's previous prefixes while a change is applied (scratch).
    old: Vec<Prefix>,
}

impl Routes {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The table, for a worker.
    pub fn shared(&self) -> SharedRoutes {
        self.table.clone()
    }

    /// Applies the route part of `changes`; for every prefix whose owner
    /// changed, calls `moved(addr, len, new owner or None)`.
    pub fn apply(
        &mut self,
        changes: &[Change],
        mut moved: impl FnMut(IpAddr, u8, Option<PublicKey>),
    ) {
        for chunk in changes.chunks(APPLY_CHUNK) {
            if !chunk
                .iter()
                .any(|c| matches!(c, Change::Peer(_) | Change::RemovePeer(_)))
            {
                continue;
            }
            let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
            for change in chunk {
                Self::apply_one(&mut table, &mut self.old, change, &mut moved);
            }
        }
    }

    fn apply_one(
        table: &mut AllowedIps<PublicKey>,
        old: &mut Vec<Prefix>,
        change: &Change,
        moved: &mut impl FnMut(IpAddr, u8, Option<PublicKey>),
    ) {
        {
            let (key, new): (PublicKey, &[Prefix]) = match change {
                Change::Peer(cfg) => (cfg.public_key, &cfg.allowed_ips),
                Change::RemovePeer(key) => (*key, &[]),
                _ => return,
            };
            old.clear();
            old.extend(table.prefixes_of(key));
            if old.as_slice() == new {
                return;
            }
            table.remove_value(key);
            for &(addr, len) in new {
                // The control plane validated every prefix.
                let _ = table.insert(addr, len, key);
                moved(addr, len, Some(key));
            }
            for &(addr, len) in old.iter() {
                if !new.contains(&(addr, len)) {
                    // Another peer may hold it now (or hold it still).
                    let owner = table.get(addr, len).ok().flatten();
                    moved(addr, len, owner);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::config::PeerConfig;
    use crate::proto::keys::PresharedKey;

    fn peer(b: u8, ips: &[&str]) -> Change {
        Change::Peer(PeerConfig {
            public_key: PublicKey::from_bytes([b; 32]),
            preshared_key: PresharedKey::from_bytes([0; 32]),
            endpoint: None,
            persistent_keepalive: 0,
            allowed_ips: ips
                .iter()
                .map(|s| {
                    let (a, l) = s.split_once('/').unwrap();
                    (a.parse().unwrap(), l.parse().unwrap())
                })
                .collect(),
        })
    }

    #[test]
    fn the_shared_table_follows_changes_and_reports_moves() {
        let mut routes = Routes::new();
        let shared = routes.shared();
        let mut moves = Vec::new();
        routes.apply(&[peer(1, &["10.0.0.0/24", "fd00::/64"])], |a, l, o| {
            moves.push((a, l, o))
        });
        assert_eq!(moves.len(), 2);
        // The same configuration again changes nothing.
        routes.apply(&[peer(1, &["10.0.0.0/24", "fd00::/64"])], |_, _, _| {
            panic!("nothing moved")
        });
        // Peer 2 takes the IPv4 prefix; peer 1 keeps only IPv6.
        moves.clear();
        routes.apply(
            &[peer(2, &["10.0.0.0/24"]), peer(1, &["fd00::/64"])],
            |a, l, o| moves.push((a, l, o)),
        );
        let k2 = PublicKey::from_bytes([2; 32]);
        assert!(moves.contains(&("10.0.0.0".parse().unwrap(), 24, Some(k2))));
        // A worker's handle sees the change.
        assert_eq!(read(&shared).lookup("10.0.0.7".parse().unwrap()), Some(k2));
        moves.clear();
        routes.apply(&[Change::RemovePeer(k2)], |a, l, o| moves.push((a, l, o)));
        assert_eq!(moves, vec![("10.0.0.0".parse().unwrap(), 24, None)]);
        assert_eq!(read(&shared).len(), 1);
    }
}
