//! A UAPI `set` as a transaction: compute, hand to the engine, commit.
//!
//! [`Transaction`] takes the parsed lines of one `set` and records their
//! effect in an overlay over the (untouched) [`DeviceConfig`]: the peers the
//! request touches, and which peer each touched allowed-IP prefix now
//! belongs to. [`Transaction::finish`] turns the overlay into a [`Plan`]: the
//! minimal list of [`Change`]s for the engine, and a [`Commit`] that makes
//! the same edits to the `DeviceConfig`. [`execute`] runs the whole thing:
//! the engine gets the changes only after the entire request was validated,
//! and the configuration is committed only when the engine accepted them;
//! otherwise both stay as they were (principle 6: all or nothing).
//!
//! # Semantics (checked against wireguard-go `device/uapi.go` f333402b and the
//! Linux kernel's `drivers/net/wireguard/netlink.c`)
//!
//! - Device keys: the last value wins. A key, port or mark equal to the
//!   configured one produces no change. `listen_port` is compared with the
//!   *configured* port, so `wg syncconf`/`setconf` re-sending `listen_port=0`
//!   keeps the port picked at random (the kernel and wireguard-go would
//!   rebind to a new random port and disturb traffic).
//! - A new private key whose public key is a peer's removes that peer; a
//!   peer section with the device's own public key is validated and ignored
//!   (both as in wireguard-go and the kernel).
//! - `replace_peers=true`: peers not named again in the request are removed.
//!   Peers named again keep their place and their sessions: only what
//!   differs from their configuration is changed (wireguard-go and the kernel
//!   drop and re-create every peer). Their configuration restarts from a
//!   fresh peer (no preshared key, keepalive or allowed IPs unless given),
//!   exactly as after a re-create.
//! - `remove=true` and `update_only=true` apply to their whole peer section,
//!   wherever in it they appear (the kernel's flag semantics): a removed
//!   peer's other lines are ignored; an `update_only` section for a peer that
//!   does not exist (yet, at that point of the request) does nothing. A
//!   peer removed and named again in the same request is re-created (removed
//!   and added, placed last), as if the two had been separate requests.
//! - Other peer lines apply in order: `replace_allowed_ips=true` clears the
//!   allowed IPs given before it (wireguard-go; `wg` always sends it first).
//! - `allowed_ip=P` takes P away from any other peer that had it; that peer
//!   gets a [`Change::Peer`] with its reduced list. `allowed_ip=-P` removes P
//!   only from this peer. Prefixes are stored with host bits cleared and
//!   without duplicates.
//! - A re-set peer that ends up identical to its configuration produces no
//!   change at all (so `wg syncconf` with an unchanged file is free).
//! - `endpoint`: `PeerConfig::endpoint` is `Some` only when the configured
//!   endpoint changes (a new peer, a different address, or a re-created
//!   peer). Sending the configured endpoint again does not pull a peer that
//!   roamed back to it; change it, or remove and re-add the peer, to force
//!   that. A peer re-stated under `replace_peers` without the endpoint it had
//!   is re-created (RemovePeer + Peer), the only way to make the engine
//!   forget an endpoint, as the kernel would have.
//! - Change order: ListenPort, Fwmark (socket changes first, so an engine
//!   failure there means nothing was applied), PrivateKey, then every
//!   RemovePeer, then every Peer. Each prefix appears in at most one
//!   `Peer`'s final list; the engine must let a `Peer` take a prefix from
//!   its previous owner and remove a peer's old prefixes only where it still
//!   owns them.

use std::collections::HashSet;

use corewire_dataplane::engine::config::{Change, Device, Prefix};
use corewire_dataplane::proto::keys::{PrivateKey, PublicKey};

use super::error::UapiError;
use super::request::{RequestParser, SetLine};
use crate::config::{DeviceConfig, FastMap, PeerEntry, MAX_PEERS};

/// Most `allowed_ip` lines in one request (bounds the memory one request can
/// make the control thread allocate, about 100 bytes per line).
pub const MAX_ALLOWED_IP_LINES: usize = 1 << 24;

/// `claims` value for "nobody owns this prefix now".
const UNOWNED: u32 = u32::MAX;

/// Who owns a prefix in the overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// A peer the request touched (index into `works`).
    Work(u32),
    /// An untouched peer of the base configuration (its slot).
    Base(u32),
}

/// A peer touched by the request.
#[derive(Debug)]
struct Work {
    key: PublicKey,
    /// Its state after the lines so far; `None`: it does not exist.
    entry: Option<PeerEntry>,
    /// Its slot in the base configuration, if it is there.
    base_slot: Option<u32>,
    /// Removed by `remove=true` at some point in this request.
    removed: bool,
    /// Removed and then added again: re-create it.
    recreate: bool,
    /// Another peer took (or this one dropped) a prefix still in `entry`'s
    /// list: filter the list by ownership at the end.
    needs_filter: bool,
}

/// The peer section being read (its lines wait until it ends, because
/// `remove` and `update_only` apply to the whole section).
#[derive(Debug)]
struct Section {
    key: PublicKey,
    remove: bool,
    update_only: bool,
    /// The device's own public key: validate, then ignore.
    ignored: bool,
}

/// The effect of one `set` request, computed over a [`DeviceConfig`] that
/// stays untouched until [`Commit::apply_to`].
#[derive(Debug, Default)]
pub struct Transaction {
    parser: RequestParser,
    private_key: Option<Option<PrivateKey>>,
    listen_port: Option<u16>,
    fwmark: Option<u32>,
    replace_peers: bool,
    in_peers: bool,
    own_public: Option<PublicKey>,
    own_public_changed: bool,
    section: Option<Section>,
    section_lines: Vec<SetLine>,
    works: Vec<Work>,
    touched: FastMap<PublicKey, u32>,
    claims: FastMap<Prefix, u32>,
    allowed_ip_lines: usize,
}

impl Transaction {
    /// An empty transaction (a `set` with no lines changes nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses and records one line of the request body (without `\n`).
    /// After an error the transaction must be dropped.
    pub fn feed_line(&mut self, base: &DeviceConfig, line: &[u8]) -> Result<(), UapiError> {
        let parsed = self.parser.parse(line)?;
        self.feed(base, parsed)
    }

    /// Records one parsed line. The caller keeps device keys before peer
    /// keys ([`RequestParser`] does).
    pub fn feed(&mut self, base: &DeviceConfig, line: SetLine) -> Result<(), UapiError> {
        match line {
            SetLine::PrivateKey(k) => self.private_key = Some(k),
            SetLine::ListenPort(p) => self.listen_port = Some(p),
            SetLine::Fwmark(m) => self.fwmark = Some(m),
            SetLine::ReplacePeers => self.replace_peers = true,
            SetLine::PublicKey(key) => {
                self.end_section(base)?;
                if !self.in_peers {
                    self.enter_peers(base);
                }
                self.section = Some(Section {
                    key,
                    remove: false,
                    update_only: false,
                    ignored: Some(key) == self.own_public,
                });
            }
            SetLine::Remove | SetLine::UpdateOnly => {
                let Some(section) = self.section.as_mut() else {
                    return Err(UapiError::PeerKeyOutsidePeer(line.key()));
                };
                match line {
                    SetLine::Remove => section.remove = true,
                    _ => section.update_only = true,
                }
            }
            other => {
                if self.section.is_none() {
                    return Err(UapiError::PeerKeyOutsidePeer(other.key()));
                }
                if matches!(other, SetLine::AllowedIp(_) | SetLine::RemoveAllowedIp(_)) {
                    self.allowed_ip_lines += 1;
                    if self.allowed_ip_lines > MAX_ALLOWED_IP_LINES {
                        return Err(UapiError::TooManyAllowedIps(MAX_ALLOWED_IP_LINES));
                    }
                }
                self.section_lines.push(other);
            }
        }
        Ok(())
    }

    /// Ends the request: the changes for the engine and the commit.
    pub fn finish(mut self, base: &DeviceConfig) -> Result<Plan, UapiError> {
        self.end_section(base)?;
        if !self.in_peers {
            self.enter_peers(base);
        }
        self.filter_lists(base);

        // Peer count after the request.
        let mut count: isize = if self.replace_peers {
            0
        } else {
            base.peer_count() as isize
        };
        for w in &self.works {
            let was = w.base_slot.is_some() && !self.replace_peers;
            count += isize::from(w.entry.is_some()) - isize::from(was);
        }
        if count > MAX_PEERS as isize {
            return Err(UapiError::TooManyPeers(MAX_PEERS));
        }

        let mut changes = Vec::with_capacity(3 + self.works.len());
        let mut commit = Commit {
            generation: base.generation(),
            ..Commit::default()
        };
        if let Some(port) = self.listen_port.filter(|&p| p != base.listen_port()) {
            changes.push(Change::ListenPort(port));
            commit.listen_port = Some(port);
        }
        if let Some(mark) = self.fwmark.filter(|&m| m != base.fwmark()) {
            changes.push(Change::Fwmark(mark));
            commit.fwmark = Some(mark);
        }
        if self.own_public_changed {
            if let Some(key) = self.private_key.take() {
                changes.push(Change::PrivateKey(key.clone()));
                commit.private_key = Some((key, self.own_public));
            }
        }

        let mut peer_changes: Vec<Change> = Vec::with_capacity(self.works.len());
        commit.appends.reserve(
            self.works
                .iter()
                .filter(|w| w.base_slot.is_none() || w.recreate)
                .count(),
        );
        for w in self.works.drain(..) {
            let old = w.base_slot.and_then(|s| base.slot_peer(s));
            match (old, w.entry) {
                (None, None) => {}
                (None, Some(e)) => {
                    peer_changes.push(Change::Peer(e.to_peer_config(e.endpoint)));
                    commit.appends.push(e);
                }
                (Some(_), None) => {
                    changes.push(Change::RemovePeer(w.key));
                    commit.removes.push(w.key);
                }
                (Some(old), Some(e)) => {
                    if w.recreate {
                        changes.push(Change::RemovePeer(w.key));
                        peer_changes.push(Change::Peer(e.to_peer_config(e.endpoint)));
                        commit.removes.push(w.key);
                        commit.appends.push(e);
                    } else if old.endpoint.is_some() && e.endpoint.is_none() {
                        changes.push(Change::RemovePeer(w.key));
                        peer_changes.push(Change::Peer(e.to_peer_config(None)));
                        commit.updates.push(e);
                    } else if *old != e {
                        let endpoint = if e.endpoint != old.endpoint {
                            e.endpoint
                        } else {
                            None
                        };
                        peer_changes.push(Change::Peer(e.to_peer_config(endpoint)));
                        commit.updates.push(e);
                    }
                }
            }
        }
        if self.replace_peers {
            for p in base.peers() {
                if !self.touched.contains_key(&p.public_key) {
                    changes.push(Change::RemovePeer(p.public_key));
                    commit.removes.push(p.public_key);
                }
            }
        }
        changes.append(&mut peer_changes);
        Ok(Plan { changes, commit })
    }

    // ---- Internals. ----

    /// First `public_key` (or the end of a request without peers): the
    /// device section is complete, so the device's final public key is known.
    fn enter_peers(&mut self, base: &DeviceConfig) {
        self.in_peers = true;
        match &self.private_key {
            Some(new) if new.as_ref() != base.private_key() => {
                self.own_public = new.as_ref().map(PrivateKey::public_key);
                self.own_public_changed = true;
                // A peer with the device's new public key goes away.
                if let Some(own) = self.own_public {
                    if self.exists(base, &own) {
                        self.remove_peer(base, own);
                    }
                }
            }
            _ => self.own_public = base.public_key(),
        }
    }

    fn end_section(&mut self, base: &DeviceConfig) -> Result<(), UapiError> {
        let Some(section) = self.section.take() else {
            return Ok(());
        };
        let lines = std::mem::take(&mut self.section_lines);
        if section.ignored {
            // Reuse the allocation.
            self.section_lines = lines;
            self.section_lines.clear();
            return Ok(());
        }
        let exists = self.exists(base, &section.key);
        if section.remove {
            if exists {
                self.remove_peer(base, section.key);
            }
        } else if exists || !section.update_only {
            let idx = self.create_or_get(base, section.key);
            for line in &lines {
                self.apply_peer_line(base, idx, line);
            }
        }
        self.section_lines = lines;
        self.section_lines.clear();
        if self.works.len() > base.peer_count().saturating_add(MAX_PEERS) {
            return Err(UapiError::TooManyPeers(MAX_PEERS));
        }
        Ok(())
    }

    fn apply_peer_line(&mut self, base: &DeviceConfig, idx: u32, line: &SetLine) {
        match line {
            SetLine::PresharedKey(k) => {
                if let Some(e) = self.entry_mut(idx) {
                    e.preshared_key = k.clone();
                }
            }
            SetLine::Endpoint(a) => {
                if let Some(e) = self.entry_mut(idx) {
                    e.endpoint = Some(*a);
                }
            }
            SetLine::PersistentKeepalive(s) => {
                if let Some(e) = self.entry_mut(idx) {
                    e.persistent_keepalive = *s;
                }
            }
            SetLine::ReplaceAllowedIps => self.clear_prefixes(base, idx),
            SetLine::AllowedIp(p) => self.add_prefix(base, idx, *p),
            SetLine::RemoveAllowedIp(p) if self.owner(base, p) == Some(Owner::Work(idx)) => {
                self.claims.insert(*p, UNOWNED);
                if let Some(w) = self.works.get_mut(idx as usize) {
                    w.needs_filter = true;
                }
            }
            // Device keys cannot reach here (the parser refuses them in a
            // peer section); the others need no action.
            _ => {}
        }
    }

    fn entry_mut(&mut self, idx: u32) -> Option<&mut PeerEntry> {
        self.works.get_mut(idx as usize)?.entry.as_mut()
    }

    /// Does the peer exist at this point of the request?
    fn exists(&self, base: &DeviceConfig, key: &PublicKey) -> bool {
        match self.touched.get(key) {
            Some(&i) => self
                .works
                .get(i as usize)
                .is_some_and(|w| w.entry.is_some()),
            None => !self.replace_peers && base.contains_peer(key),
        }
    }

    /// The overlay entry for a peer, made from the base on first touch.
    fn touch(&mut self, base: &DeviceConfig, key: PublicKey) -> u32 {
        if let Some(&i) = self.touched.get(&key) {
            return i;
        }
        let base_slot = base.slot_of(&key);
        let entry = if self.replace_peers {
            None
        } else {
            base_slot.and_then(|s| base.slot_peer(s)).cloned()
        };
        // Bounded by MAX_PEERS (+ base) through end_section's check.
        let idx = u32::try_from(self.works.len()).unwrap_or(UNOWNED - 1);
        self.works.push(Work {
            key,
            entry,
            base_slot,
            removed: false,
            recreate: false,
            needs_filter: false,
        });
        self.touched.insert(key, idx);
        idx
    }

    fn create_or_get(&mut self, base: &DeviceConfig, key: PublicKey) -> u32 {
        let idx = self.touch(base, key);
        if let Some(w) = self.works.get_mut(idx as usize) {
            if w.entry.is_none() {
                w.entry = Some(PeerEntry::new(key));
                w.recreate = w.removed && w.base_slot.is_some();
                w.needs_filter = false;
            }
        }
        idx
    }

    fn remove_peer(&mut self, base: &DeviceConfig, key: PublicKey) {
        let idx = self.touch(base, key);
        let Some(entry) = self
            .works
            .get_mut(idx as usize)
            .and_then(|w| w.entry.take())
        else {
            return;
        };
        for p in &entry.allowed_ips {
            if self.owner(base, p) == Some(Owner::Work(idx)) {
                self.claims.insert(*p, UNOWNED);
            }
        }
        if let Some(w) = self.works.get_mut(idx as usize) {
            w.removed = true;
            w.recreate = false;
            w.needs_filter = false;
        }
    }

    fn clear_prefixes(&mut self, base: &DeviceConfig, idx: u32) {
        let Some(list) = self
            .entry_mut(idx)
            .map(|e| std::mem::take(&mut e.allowed_ips))
        else {
            return;
        };
        for p in &list {
            if self.owner(base, p) == Some(Owner::Work(idx)) {
                self.claims.insert(*p, UNOWNED);
            }
        }
        if let Some(w) = self.works.get_mut(idx as usize) {
            w.needs_filter = false;
            if let Some(e) = w.entry.as_mut() {
                // Keep the capacity for the lines that usually follow.
                let mut list = list;
                list.clear();
                e.allowed_ips = list;
            }
        }
    }

    fn add_prefix(&mut self, base: &DeviceConfig, idx: u32, prefix: Prefix) {
        match self.owner(base, &prefix) {
            Some(Owner::Work(i)) if i == idx => return,
            Some(Owner::Work(i)) => {
                if let Some(w) = self.works.get_mut(i as usize) {
                    w.needs_filter = true;
                }
            }
            Some(Owner::Base(slot)) => {
                if let Some(key) = base.slot_peer(slot).map(|p| p.public_key) {
                    let i = self.touch(base, key);
                    if let Some(w) = self.works.get_mut(i as usize) {
                        w.needs_filter = true;
                    }
                }
            }
            None => {}
        }
        if let Some(e) = self.entry_mut(idx) {
            e.allowed_ips.push(prefix);
            self.claims.insert(prefix, idx);
        }
    }

    /// Who owns `prefix` at this point of the request.
    fn owner(&self, base: &DeviceConfig, prefix: &Prefix) -> Option<Owner> {
        if let Some(&c) = self.claims.get(prefix) {
            return (c != UNOWNED).then_some(Owner::Work(c));
        }
        if self.replace_peers {
            return None;
        }
        let slot = base.prefix_owner_slot(prefix)?;
        let key = base.slot_peer(slot)?.public_key;
        Some(match self.touched.get(&key) {
            Some(&i) => Owner::Work(i),
            None => Owner::Base(slot),
        })
    }

    /// Drops from each list the prefixes its peer no longer owns, and
    /// duplicates left by a take-back (first occurrence kept).
    fn filter_lists(&mut self, base: &DeviceConfig) {
        for i in 0..self.works.len() {
            let Some(w) = self.works.get_mut(i) else {
                continue;
            };
            if !w.needs_filter {
                continue;
            }
            let Some(mut entry) = w.entry.take() else {
                continue;
            };
            let idx = i as u32;
            let mut seen = HashSet::with_capacity(entry.allowed_ips.len());
            entry
                .allowed_ips
                .retain(|p| self.owner(base, p) == Some(Owner::Work(idx)) && seen.insert(*p));
            if let Some(w) = self.works.get_mut(i) {
                w.entry = Some(entry);
            }
        }
    }
}

/// The outcome of a [`Transaction`]: changes for the engine and the
/// matching edits of the configuration.
#[derive(Debug)]
pub struct Plan {
    /// The changes for the engine, in order (empty: nothing to do).
    pub changes: Vec<Change>,
    /// The edits of the configuration, to apply once the engine accepted.
    pub commit: Commit,
}

/// Edits of a [`DeviceConfig`] computed by a [`Transaction`] against one
/// exact state of it.
#[derive(Debug, Default)]
pub struct Commit {
    generation: u64,
    private_key: Option<(Option<PrivateKey>, Option<PublicKey>)>,
    listen_port: Option<u16>,
    fwmark: Option<u32>,
    removes: Vec<PublicKey>,
    updates: Vec<PeerEntry>,
    appends: Vec<PeerEntry>,
}

impl Commit {
    /// Applies the edits. Refused (nothing applied) if `config` changed
    /// since the transaction was computed.
    pub fn apply_to(self, config: &mut DeviceConfig) -> Result<(), UapiError> {
        if config.generation() != self.generation {
            return Err(UapiError::StaleCommit);
        }
        self.log_peers();
        for key in &self.removes {
            config.remove_peer(key);
        }
        if let Some((key, public)) = self.private_key {
            config.set_private_key_with_public(key, public);
        }
        if let Some(port) = self.listen_port {
            config.set_listen_port(port);
        }
        if let Some(mark) = self.fwmark {
            config.set_fwmark(mark);
        }
        for e in self.updates {
            config.put_peer(e);
        }
        config.reserve(self.appends.len());
        for e in self.appends {
            config.put_peer(e);
        }
        Ok(())
    }

    /// Logs the peers this commit adds and removes (a re-created peer is
    /// in both lists and neither added nor removed).
    fn log_peers(&self) {
        if !tracing::enabled!(tracing::Level::INFO)
            || (self.removes.is_empty() && self.appends.is_empty())
        {
            return;
        }
        let appends = self.appends.iter().map(|e| e.public_key);
        let removes = self.removes.iter().copied();
        // Only a commit that both removes and appends can re-create a
        // peer; the others (a bulk `wg addconf`) need no lookup sets.
        if self.removes.is_empty() || self.appends.is_empty() {
            crate::peer_log::peers_changed(appends, removes);
            return;
        }
        let removed: HashSet<&PublicKey> = self.removes.iter().collect();
        let appended: HashSet<&PublicKey> = self.appends.iter().map(|e| &e.public_key).collect();
        crate::peer_log::peers_changed(
            appends.filter(|k| !removed.contains(k)),
            removes.filter(|k| !appended.contains(k)),
        );
    }
}

/// Runs a complete transaction: engine first, then the configuration. On an
/// engine error the configuration is left as it was.
pub fn execute(
    txn: Transaction,
    config: &mut DeviceConfig,
    device: &mut dyn Device,
) -> Result<(), UapiError> {
    let Plan { changes, commit } = txn.finish(config)?;
    if changes.is_empty() {
        return Ok(());
    }
    device.apply(changes).map_err(UapiError::Engine)?;
    commit.apply_to(config)
}

/// Applies the body of a `set=1` request given as text (lines up to the
/// first empty line or the end). For tests and in-memory device setups.
#[cfg(test)]
pub fn set_from_text(
    config: &mut DeviceConfig,
    device: &mut dyn Device,
    body: &str,
) -> Result<(), UapiError> {
    let mut txn = Transaction::new();
    for line in body.split('\n') {
        if line.is_empty() {
            break;
        }
        txn.feed_line(config, line.as_bytes())?;
    }
    execute(txn, config, device)
}
