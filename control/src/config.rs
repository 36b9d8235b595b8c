//! The authoritative device configuration, as set through the UAPI.
//!
//! The control thread owns one [`DeviceConfig`]. A UAPI `set` is computed
//! against it without touching it (see `uapi::apply`), sent to the engine as
//! a list of [`Change`]s, and committed here only when the engine accepted
//! them, so a refused `set` leaves this (and `get`) exactly as it was.
//!
//! # Peer table layout (sized for 1,000,000 peers)
//!
//! - `slots: Vec<Slot>`: each slot holds one [`PeerEntry`] (or nothing) plus
//!   `prev`/`next` slot numbers. The links form a doubly linked list in
//!   insertion order; iteration follows it. A removed peer's slot goes on a
//!   free list and is reused by a later peer, which is linked at the tail, so
//!   the order stays "insertion order" without ever compacting: removal is
//!   O(1 + number of the peer's allowed IPs), worst case, not amortised.
//! - `by_key: HashMap<PublicKey, u32>` (a keyed multiply-fold hash, see
//!   [`FastState`]): public key -> slot, O(1) lookup.
//! - `owners: HashMap<Prefix, u32>`: allowed IP prefix (host bits cleared)
//!   -> owning slot. It enforces "an allowed IP belongs to at most one peer"
//!   and lets a `set` find the peer it takes a prefix away from in O(1).
//!
//! A re-set of an existing peer updates its slot in place, so it keeps its
//! place in the order. Memory per peer with one allowed IP is about 300
//! bytes all in (slot ~150, two hash entries ~40-90 each at the table's load
//! factor, one small heap block for the allowed-IP list); the test
//! `memory_per_peer_is_small` prints the figures.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use corewire_dataplane::engine::config::{PeerConfig, Prefix};
use corewire_dataplane::proto::keys::{PresharedKey, PrivateKey, PublicKey};

/// Builds [`FastHasher`]s: a keyed multiply-fold hash for the tables keyed
/// by public keys and prefixes. Those keys come from the root-only UAPI
/// socket, not from the network, so SipHash's flooding resistance buys
/// nothing here; the key is still random per table so layouts differ.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FastState {
    seed: u64,
    mul: u64,
}

impl Default for FastState {
    fn default() -> Self {
        let keys = std::collections::hash_map::RandomState::new();
        Self {
            seed: keys.hash_one(0x5eed_u64),
            mul: keys.hash_one(0x0dd_u64) | 1,
        }
    }
}

impl BuildHasher for FastState {
    type Hasher = FastHasher;

    fn build_hasher(&self) -> FastHasher {
        FastHasher {
            acc: self.seed,
            mul: self.mul,
        }
    }
}

/// Hasher state of [`FastState`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct FastHasher {
    acc: u64,
    mul: u64,
}

impl FastHasher {
    #[inline]
    fn mix(&mut self, word: u64) {
        // Full 128-bit product folded: every input bit reaches both the low
        // bits (bucket) and the high bits (hashbrown's tag).
        let p = u128::from(self.acc ^ word) * u128::from(self.mul);
        self.acc = (p as u64) ^ ((p >> 64) as u64);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.acc
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.mix(u64::from(n) | 0x100);
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.mix(u64::from(n) | (1 << 40));
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }
}

/// A hash map with [`FastState`].
pub(crate) type FastMap<K, V> = HashMap<K, V, FastState>;

/// Most peers one device may have: the Linux kernel's limit
/// (`MAX_PEERS_PER_DEVICE`, 2^20); more is refused with -ENOMEM as there.
pub const MAX_PEERS: usize = 1 << 20;

/// "No slot" in the linked list.
const NIL: u32 = u32::MAX;

/// Clears the host bits of a prefix, as the kernel and wireguard-go do when
/// they store an allowed IP. `len` must already be in range for the family
/// (longer values are clamped).
pub fn mask_prefix(addr: IpAddr, len: u8) -> Prefix {
    match addr {
        IpAddr::V4(a) => {
            let len = len.min(32);
            let bits = u32::from(a);
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            (IpAddr::V4(Ipv4Addr::from(bits & mask)), len)
        }
        IpAddr::V6(a) => {
            let len = len.min(128);
            let bits = u128::from(a);
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            (IpAddr::V6(Ipv6Addr::from(bits & mask)), len)
        }
    }
}

/// The configuration of one peer, as last set through the UAPI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEntry {
    /// The peer's public key: its identity.
    pub public_key: PublicKey,
    /// Preshared key; all zeros means none.
    pub preshared_key: PresharedKey,
    /// The endpoint last given in a `set` (not one learned by roaming).
    pub endpoint: Option<SocketAddr>,
    /// Persistent keepalive interval in seconds; 0 is off.
    pub persistent_keepalive: u16,
    /// Allowed IPs, host bits cleared, no duplicates, in the order given.
    /// No prefix appears in two peers' lists.
    pub allowed_ips: Vec<Prefix>,
}

impl PeerEntry {
    /// A peer as the UAPI creates it: no preshared key, no endpoint, no
    /// keepalive, no allowed IPs.
    pub fn new(public_key: PublicKey) -> Self {
        Self {
            public_key,
            preshared_key: PresharedKey::default(),
            endpoint: None,
            persistent_keepalive: 0,
            allowed_ips: Vec::new(),
        }
    }

    /// The engine's view of this peer; `endpoint` as given (the engine sets
    /// the endpoint only when it is `Some`).
    pub fn to_peer_config(&self, endpoint: Option<SocketAddr>) -> PeerConfig {
        PeerConfig {
            public_key: self.public_key,
            preshared_key: self.preshared_key.clone(),
            endpoint,
            persistent_keepalive: self.persistent_keepalive,
            allowed_ips: self.allowed_ips.clone(),
        }
    }
}

#[derive(Debug)]
struct Slot {
    peer: Option<PeerEntry>,
    prev: u32,
    next: u32,
}

/// The whole device configuration. See the module documentation for the
/// peer table's layout and costs.
#[derive(Debug)]
pub struct DeviceConfig {
    private_key: Option<PrivateKey>,
    /// Cached public half of `private_key` (X25519 is not free).
    public_key: Option<PublicKey>,
    listen_port: u16,
    fwmark: u32,
    slots: Vec<Slot>,
    free: Vec<u32>,
    head: u32,
    tail: u32,
    by_key: FastMap<PublicKey, u32>,
    owners: FastMap<Prefix, u32>,
    /// Bumped by every mutation; a computed `set` commits only onto the
    /// state it was computed from.
    generation: u64,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceConfig {
    /// An empty configuration: no key, port 0 (random), no mark, no peers.
    pub fn new() -> Self {
        Self {
            private_key: None,
            public_key: None,
            listen_port: 0,
            fwmark: 0,
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            by_key: FastMap::default(),
            owners: FastMap::default(),
            generation: 0,
        }
    }

    /// The private key, if one is set.
    pub fn private_key(&self) -> Option<&PrivateKey> {
        self.private_key.as_ref()
    }

    /// The device's public key (derived from the private key).
    pub fn public_key(&self) -> Option<PublicKey> {
        self.public_key
    }

    /// The configured listen port (0: the engine picks one).
    pub fn listen_port(&self) -> u16 {
        self.listen_port
    }

    /// The configured firewall mark (0: none).
    pub fn fwmark(&self) -> u32 {
        self.fwmark
    }

    /// Number of peers.
    pub fn peer_count(&self) -> usize {
        self.by_key.len()
    }

    /// The peer with this public key.
    #[cfg(test)]
    pub fn peer(&self, key: &PublicKey) -> Option<&PeerEntry> {
        let slot = *self.by_key.get(key)?;
        self.slot_peer(slot)
    }

    /// True if a peer with this public key exists.
    pub fn contains_peer(&self, key: &PublicKey) -> bool {
        self.by_key.contains_key(key)
    }

    /// The peers in their stable order (insertion order; a re-set peer keeps
    /// its place).
    pub fn peers(&self) -> Peers<'_> {
        Peers {
            config: self,
            at: self.head,
        }
    }

    /// Where a walk over the peers in their stable order starts (see
    /// [`DeviceConfig::peer_at`]).
    pub fn first_peer(&self) -> PeerCursor {
        PeerCursor(self.head)
    }

    /// The peer at `cursor` and the cursor of the one after it; `None` at
    /// the end. A cursor stays valid only while the configuration does not
    /// change (same [`DeviceConfig::generation`]).
    pub fn peer_at(&self, cursor: PeerCursor) -> Option<(&PeerEntry, PeerCursor)> {
        let slot = self.slots.get(cursor.0 as usize)?;
        Some((slot.peer.as_ref()?, PeerCursor(slot.next)))
    }

    /// The public key of the peer that owns this exact prefix (host bits
    /// cleared), if any.
    #[cfg(test)]
    pub fn prefix_owner(&self, prefix: &Prefix) -> Option<PublicKey> {
        let slot = *self.owners.get(prefix)?;
        self.slot_peer(slot).map(|p| p.public_key)
    }

    /// A counter bumped by every change of the configuration.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Total number of allowed-IP prefixes over all peers.
    #[cfg(test)]
    pub fn prefix_count(&self) -> usize {
        self.owners.len()
    }

    // ---- Crate-internal access for the UAPI transaction. ----

    /// The slot a peer lives in.
    pub(crate) fn slot_of(&self, key: &PublicKey) -> Option<u32> {
        self.by_key.get(key).copied()
    }

    /// The peer in a slot.
    pub(crate) fn slot_peer(&self, slot: u32) -> Option<&PeerEntry> {
        self.slots.get(slot as usize).and_then(|s| s.peer.as_ref())
    }

    /// The slot that owns a prefix.
    pub(crate) fn prefix_owner_slot(&self, prefix: &Prefix) -> Option<u32> {
        self.owners.get(prefix).copied()
    }

    // ---- Mutations. Each keeps every invariant documented above. ----

    /// Sets or (with `None`) clears the private key, and removes a peer
    /// whose public key equals the device's new public key (the kernel and
    /// wireguard-go do the same). Returns that peer's key if one was removed.
    #[cfg(test)]
    pub fn set_private_key(&mut self, key: Option<PrivateKey>) -> Option<PublicKey> {
        let public = key.as_ref().map(PrivateKey::public_key);
        self.set_private_key_with_public(key, public)
    }

    /// [`Self::set_private_key`] with the public key already computed.
    pub(crate) fn set_private_key_with_public(
        &mut self,
        key: Option<PrivateKey>,
        public: Option<PublicKey>,
    ) -> Option<PublicKey> {
        self.generation += 1;
        self.private_key = key;
        self.public_key = public;
        let own = public?;
        self.remove_peer(&own).map(|p| p.public_key)
    }

    /// Sets the configured listen port.
    pub fn set_listen_port(&mut self, port: u16) {
        self.generation += 1;
        self.listen_port = port;
    }

    /// Sets the firewall mark.
    pub fn set_fwmark(&mut self, mark: u32) {
        self.generation += 1;
        self.fwmark = mark;
    }

    /// Removes a peer and its allowed IPs. O(1 + its allowed IPs).
    pub fn remove_peer(&mut self, key: &PublicKey) -> Option<PeerEntry> {
        let slot = self.by_key.remove(key)?;
        self.generation += 1;
        let idx = slot as usize;
        let (prev, next, peer) = {
            let s = self.slots.get_mut(idx)?;
            (s.prev, s.next, s.peer.take())
        };
        let peer = peer?;
        for prefix in &peer.allowed_ips {
            if self.owners.get(prefix) == Some(&slot) {
                self.owners.remove(prefix);
            }
        }
        self.unlink(prev, next);
        if let Some(s) = self.slots.get_mut(idx) {
            s.prev = NIL;
            s.next = NIL;
        }
        self.free.push(slot);
        Some(peer)
    }

    /// Adds a peer at the end of the order, or replaces an existing peer's
    /// configuration in place (it keeps its place). The peer's allowed IPs
    /// are taken away from any other peer that had them, and cleaned the
    /// same way a `set` cleans them (host bits cleared, duplicates dropped).
    /// Refuses a peer with the device's own public key and a new peer beyond
    /// [`MAX_PEERS`] (returns false).
    #[cfg(test)]
    pub fn upsert_peer(&mut self, mut entry: PeerEntry) -> bool {
        if Some(entry.public_key) == self.public_key {
            return false;
        }
        let mut seen = std::collections::HashSet::with_capacity(entry.allowed_ips.len());
        entry.allowed_ips = entry
            .allowed_ips
            .iter()
            .map(|&(a, l)| mask_prefix(a, l))
            .filter(|p| seen.insert(*p))
            .collect();
        let own_slot = self.slot_of(&entry.public_key);
        if own_slot.is_none() && self.peer_count() >= MAX_PEERS {
            return false;
        }
        // Take the prefixes from their current owners first.
        for prefix in &entry.allowed_ips {
            if let Some(&owner) = self.owners.get(prefix) {
                if Some(owner) != own_slot {
                    if let Some(p) = self
                        .slots
                        .get_mut(owner as usize)
                        .and_then(|s| s.peer.as_mut())
                    {
                        p.allowed_ips.retain(|q| q != prefix);
                    }
                }
            }
        }
        self.put_peer(entry);
        true
    }

    /// Stores a peer whose allowed IPs are already clean and disjoint from
    /// every other peer's *final* list (the transaction guarantees this):
    /// in place when it exists, else at the tail.
    pub(crate) fn put_peer(&mut self, entry: PeerEntry) {
        self.generation += 1;
        match self.slot_of(&entry.public_key) {
            Some(slot) => {
                let Some(old) = self
                    .slots
                    .get_mut(slot as usize)
                    .and_then(|s| s.peer.take())
                else {
                    return;
                };
                for prefix in &old.allowed_ips {
                    if self.owners.get(prefix) == Some(&slot) {
                        self.owners.remove(prefix);
                    }
                }
                for prefix in &entry.allowed_ips {
                    self.owners.insert(*prefix, slot);
                }
                if let Some(s) = self.slots.get_mut(slot as usize) {
                    s.peer = Some(entry);
                }
            }
            None => {
                let slot = match self.free.pop() {
                    Some(slot) => slot,
                    None => {
                        // Bounded by MAX_PEERS, far below u32::MAX.
                        let slot = u32::try_from(self.slots.len()).unwrap_or(NIL - 1);
                        self.slots.push(Slot {
                            peer: None,
                            prev: NIL,
                            next: NIL,
                        });
                        slot
                    }
                };
                for prefix in &entry.allowed_ips {
                    self.owners.insert(*prefix, slot);
                }
                self.by_key.insert(entry.public_key, slot);
                let tail = self.tail;
                if let Some(s) = self.slots.get_mut(slot as usize) {
                    s.peer = Some(entry);
                    s.prev = tail;
                    s.next = NIL;
                }
                match self.slots.get_mut(tail as usize) {
                    Some(t) => t.next = slot,
                    None => self.head = slot,
                }
                self.tail = slot;
            }
        }
    }

    /// Pre-sizes the tables for `additional` more peers.
    pub(crate) fn reserve(&mut self, additional: usize) {
        let grow = additional.saturating_sub(self.free.len());
        self.slots.reserve(grow);
        self.by_key.reserve(additional);
    }

    fn unlink(&mut self, prev: u32, next: u32) {
        match self.slots.get_mut(prev as usize) {
            Some(p) => p.next = next,
            None => self.head = next,
        }
        match self.slots.get_mut(next as usize) {
            Some(n) => n.prev = prev,
            None => self.tail = prev,
        }
    }
}

/// A position in the peers' stable order, for a walk that is resumed later
/// (a `get` reply written as the client reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCursor(u32);

/// Iterator over the peers in their stable order.
#[derive(Debug)]
pub struct Peers<'a> {
    config: &'a DeviceConfig,
    at: u32,
}

impl<'a> Iterator for Peers<'a> {
    type Item = &'a PeerEntry;

    fn next(&mut self) -> Option<&'a PeerEntry> {
        let slot = self.config.slots.get(self.at as usize)?;
        self.at = slot.next;
        slot.peer.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> PublicKey {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&n.to_be_bytes());
        b[31] = 0x55;
        PublicKey::from_bytes(b)
    }

    fn v4(s: &str, len: u8) -> Prefix {
        (s.parse().unwrap(), len)
    }

    fn order(c: &DeviceConfig) -> Vec<PublicKey> {
        c.peers().map(|p| p.public_key).collect()
    }

    #[test]
    fn masking_clears_host_bits() {
        assert_eq!(
            mask_prefix("10.1.2.3".parse().unwrap(), 8),
            v4("10.0.0.0", 8)
        );
        assert_eq!(
            mask_prefix("10.1.2.3".parse().unwrap(), 0),
            v4("0.0.0.0", 0)
        );
        assert_eq!(
            mask_prefix("10.1.2.3".parse().unwrap(), 32),
            v4("10.1.2.3", 32)
        );
        assert_eq!(
            mask_prefix("2001:db8::1".parse().unwrap(), 32),
            ("2001:db8::".parse().unwrap(), 32)
        );
        assert_eq!(
            mask_prefix("2001:db8::1".parse().unwrap(), 128),
            ("2001:db8::1".parse().unwrap(), 128)
        );
    }

    #[test]
    fn order_is_stable_across_removal_reuse_and_reset() {
        let mut c = DeviceConfig::new();
        for n in 0..5 {
            assert!(c.upsert_peer(PeerEntry::new(key(n))));
        }
        assert_eq!(order(&c), (0..5).map(key).collect::<Vec<_>>());
        // Re-set keeps the place.
        let mut e = PeerEntry::new(key(2));
        e.persistent_keepalive = 25;
        assert!(c.upsert_peer(e));
        assert_eq!(order(&c), (0..5).map(key).collect::<Vec<_>>());
        // Remove head, middle, tail; the slots get reused by new peers that
        // still go at the end.
        assert!(c.remove_peer(&key(0)).is_some());
        assert!(c.remove_peer(&key(2)).is_some());
        assert!(c.remove_peer(&key(4)).is_some());
        assert!(c.remove_peer(&key(4)).is_none());
        assert_eq!(order(&c), vec![key(1), key(3)]);
        assert!(c.upsert_peer(PeerEntry::new(key(7))));
        assert!(c.upsert_peer(PeerEntry::new(key(8))));
        assert_eq!(order(&c), vec![key(1), key(3), key(7), key(8)]);
        assert_eq!(c.slots.len(), 5, "freed slots are reused");
        assert!(c.remove_peer(&key(1)).is_some());
        assert!(c.remove_peer(&key(3)).is_some());
        assert!(c.remove_peer(&key(7)).is_some());
        assert!(c.remove_peer(&key(8)).is_some());
        assert_eq!(order(&c), vec![]);
        assert!(c.upsert_peer(PeerEntry::new(key(9))));
        assert_eq!(order(&c), vec![key(9)]);
        assert_eq!(c.peer(&key(9)).map(|p| p.public_key), Some(key(9)));
    }

    #[test]
    fn allowed_ips_move_between_peers() {
        let mut c = DeviceConfig::new();
        let mut a = PeerEntry::new(key(1));
        a.allowed_ips = vec![v4("10.0.0.1", 24), v4("10.0.0.0", 24), v4("10.9.0.1", 32)];
        assert!(c.upsert_peer(a));
        assert_eq!(
            c.peer(&key(1)).unwrap().allowed_ips,
            vec![v4("10.0.0.0", 24), v4("10.9.0.1", 32)],
            "masked and deduplicated"
        );
        let mut b = PeerEntry::new(key(2));
        b.allowed_ips = vec![v4("10.0.0.0", 24)];
        assert!(c.upsert_peer(b));
        assert_eq!(
            c.peer(&key(1)).unwrap().allowed_ips,
            vec![v4("10.9.0.1", 32)]
        );
        assert_eq!(c.prefix_owner(&v4("10.0.0.0", 24)), Some(key(2)));
        assert!(c.remove_peer(&key(2)).is_some());
        assert_eq!(c.prefix_owner(&v4("10.0.0.0", 24)), None);
        assert_eq!(c.prefix_count(), 1);
    }

    #[test]
    fn private_key_removes_the_peer_with_the_same_public_key() {
        let mut c = DeviceConfig::new();
        let sk = PrivateKey::generate();
        let own = sk.public_key();
        assert!(c.upsert_peer(PeerEntry::new(own)));
        assert!(c.upsert_peer(PeerEntry::new(key(1))));
        assert_eq!(c.set_private_key(Some(sk)), Some(own));
        assert_eq!(order(&c), vec![key(1)]);
        assert!(!c.upsert_peer(PeerEntry::new(own)), "own key is refused");
    }

    #[test]
    fn memory_per_peer_is_small() {
        let slot = std::mem::size_of::<Slot>();
        let key_entry = std::mem::size_of::<(PublicKey, u32)>() + 1;
        let owner_entry = std::mem::size_of::<(Prefix, u32)>() + 1;
        let prefix = std::mem::size_of::<Prefix>();
        // Hash tables run between 7/16 and 7/8 full; count them at the
        // worst case (7/16) and the heap block for one prefix at 32 bytes.
        let worst = slot + (key_entry + owner_entry) * 16 / 7 + 32;
        println!(
            "slot {slot} B, key entry {key_entry} B, owner entry {owner_entry} B, prefix {prefix} B, \
             worst case per peer with one allowed IP ~{worst} B"
        );
        assert!(worst < 512, "{worst}");
    }
}
