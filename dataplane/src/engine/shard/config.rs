//! What the control plane and the clock ask of a shard: configuration
//! changes, stats, and the timers.

use std::net::IpAddr;
use std::time::Instant;

use super::Shard;
use crate::engine::config::{Change, PeerConfig, PeerStats};
use crate::engine::owner::owner_of_key;

impl Shard {
    /// Runs the timers of this shard's peers: handshake retries, rekeys,
    /// keepalives, and giving up (which drops what was staged).
    pub fn tick(&mut self, now: Instant) {
        self.now = now;
        self.flush_batch();
        if self.loaded {
            let spent = now.saturating_duration_since(self.last_tick);
            self.counters.under_load_ns += spent.as_nanos() as u64;
            self.loaded = self.iface.under_load(now);
            if !self.loaded {
                self.event(super::Event::UnderLoad(false));
            }
        }
        self.last_tick = now;
        let mut out = std::mem::take(&mut self.tick_out);
        self.iface
            .tick(now, |peer, endpoint, res| out.push((peer, endpoint, res)));
        for (peer, endpoint, res) in out.drain(..) {
            if res.drop_staged {
                self.drop_staged(peer, true);
            }
            for msg in res.send.iter().flatten() {
                self.send_control(endpoint, msg);
            }
        }
        self.tick_out = out;
    }

    /// Applies configuration changes in order. Every shard gets every
    /// change and keeps the peers it owns (the routes of all peers are the
    /// engine's shared table, see [`set_routes`](Shard::set_routes)).
    pub fn apply(&mut self, changes: &[Change], now: Instant) {
        self.now = now;
        self.flush_batch();
        for change in changes {
            self.apply_one(change);
        }
    }

    fn apply_one(&mut self, change: &Change) {
        match change {
            Change::PrivateKey(key) => self.iface.set_private_key(key.clone()),
            // Sockets belong to the shell; it says when they change.
            Change::ListenPort(_) | Change::Fwmark(_) => {}
            Change::Peer(cfg) => self.apply_peer(cfg),
            Change::RemovePeer(key) => {
                if let Some(id) = self.iface.peer_by_key(key) {
                    self.directory.withdraw(key);
                    let _ = self.iface.remove_peer(id);
                    self.drop_staged(id, false);
                }
            }
        }
    }

    fn apply_peer(&mut self, cfg: &PeerConfig) {
        let key = cfg.public_key;
        if owner_of_key(&key, self.workers) != self.id {
            return;
        }
        let Ok(id) = self.iface.add_peer(key) else {
            return;
        };
        self.directory.publish(key);
        let now = self.now;
        let Some(peer) = self.iface.peer_mut(id) else {
            return;
        };
        if peer.preshared_key() != &cfg.preshared_key {
            peer.set_preshared_key(cfg.preshared_key.clone());
        }
        if let Some(ep) = cfg.endpoint {
            peer.set_endpoint(Some(ep));
        }
        let keepalive_turned_on =
            cfg.persistent_keepalive > 0 && peer.persistent_keepalive() != cfg.persistent_keepalive;
        if peer.persistent_keepalive() != cfg.persistent_keepalive {
            peer.set_persistent_keepalive(cfg.persistent_keepalive, now);
        }
        let has_endpoint = peer.endpoint().is_some();
        let current: Vec<(IpAddr, u8)> = self.iface.allowed_ips(id).collect();
        if current != cfg.allowed_ips {
            self.iface.clear_allowed(id);
            for &(addr, cidr) in &cfg.allowed_ips {
                let _ = self.iface.allow(id, addr, cidr);
            }
        }
        // As wireguard-go: turning on persistent keepalive on a peer with an
        // endpoint sends a keepalive now, which starts the handshake a
        // spoke behind NAT needs to be reachable.
        if keepalive_turned_on && has_endpoint {
            let endpoint = self.iface.peer(id).and_then(|p| p.endpoint());
            for msg in self.iface.keepalive(id, now).into_iter().flatten() {
                self.send_control(endpoint, &msg);
            }
        }
    }

    /// The runtime state of this shard's peers.
    pub fn stats(&self) -> Vec<PeerStats> {
        self.iface
            .peers()
            .map(|p| PeerStats {
                public_key: *p.public_key(),
                endpoint: p.endpoint(),
                last_handshake: p.last_handshake(),
                rx_bytes: p.rx_bytes(),
                tx_bytes: p.tx_bytes(),
            })
            .collect()
    }
}
