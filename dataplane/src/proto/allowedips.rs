//! AllowedIPs: longest-prefix match from an IP address to its peer.
//!
//! # Design
//!
//! Per address family there is one hash map per prefix length, keyed by the
//! masked address, plus a bitmask of the lengths that are in use. A lookup
//! probes only the lengths in use, longest first, so a concentrator whose
//! peers each own one /32 (and maybe a default route) answers with one or two
//! hash probes, independent of the number of peers, and without allocating.
//! A trie (the kernel's choice) needs up to 32/128 dependent pointer loads
//! and more memory per /32.
//!
//! Every prefix also sits in a slab slot that links it into its owner's
//! circular doubly-linked list. The owner index maps a value to the head of
//! that list, so listing or removing one peer's prefixes costs O(its prefixes),
//! and the list keeps insertion order for deterministic UAPI output.
//!
//! The map entry caches the owner next to the slab handle, so a lookup touches
//! only the hash map, never the slab. Heap use measured with a counting
//! allocator, 4-byte values, one prefix per owner: 53-63 bytes per IPv4 /32
//! (63 at exactly 1 M, where the maps were just resized) and about 105 per
//! IPv6 /128. That is map entries of 12 (IPv6: 24) bytes, slab slots of 16
//! (32) bytes and owner entries of 8 bytes, plus hashbrown's control byte and
//! load factor (44-87 %). Lookup at 1 M /32s: about 65 ns, random addresses.
//!
//! IPv4 and IPv6 are separate tables: an IPv4-mapped IPv6 address
//! (`::ffff:a.b.c.d`) is an IPv6 address here, as in the kernel.
//!
//! Hashing uses foldhash's fast keyed hash (hashbrown's own default): keys
//! are prefixes chosen by the administrator, not by the network, so a fast
//! hash is safe, and the per-table random key avoids pathological layouts.

use std::collections::hash_map::{Entry, HashMap};
use std::fmt;
use std::hash::{Hash, Hasher};

use foldhash::fast::RandomState as FoldState;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an [`AllowedIps`] operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AllowedIpsError {
    /// The prefix length exceeds the address length (32 for IPv4, 128 for IPv6).
    #[error("prefix length /{cidr} exceeds the {max}-bit address")]
    InvalidCidr {
        /// The prefix length that was given.
        cidr: u8,
        /// The address length of that family.
        max: u8,
    },
    /// One address family already holds 2^31 - 1 prefixes.
    #[error("allowed IPs table is full")]
    Full,
}

/// Slab handle of the IPv6 table; IPv4 handles have this bit clear.
const V6_TAG: u32 = 1 << 31;
/// "No slot": end of the free list.
const NIL: u32 = u32::MAX;
/// Slots per family: indexes must stay clear of [`V6_TAG`] and [`NIL`].
const MAX_SLOTS: usize = (V6_TAG - 1) as usize;
/// `cidr` of a slot on the free list (debug aid only).
const VACANT: u8 = u8::MAX;

/// An IPv6 prefix key as two words: 8-byte alignment keeps map entries at
/// 24 bytes instead of the 32 a 16-aligned `u128` would need.
#[derive(Clone, Copy, PartialEq, Eq)]
struct V6Key {
    /// Upper 64 bits of the address.
    hi: u64,
    /// Lower 64 bits of the address.
    lo: u64,
}

impl Hash for V6Key {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hi);
        state.write_u64(self.lo);
    }
}

/// What differs between the IPv4 and the IPv6 table.
trait PrefixKey: Copy + Eq + Hash {
    /// The address as an integer.
    type Raw: Copy;
    /// Address length in bits.
    const BITS: u8;
    /// Handle tag of this family's slots.
    const TAG: u32;
    /// The key of `raw` with all but the first `cidr` bits cleared (`cidr <= BITS`).
    fn masked(raw: Self::Raw, cidr: u8) -> Self;
    /// The key as an address.
    fn to_ip(self) -> IpAddr;
    /// This family's table.
    fn table<T>(ips: &AllowedIps<T>) -> &FamilyTable<Self, T>;
    /// This family's table, mutably.
    fn table_mut<T>(ips: &mut AllowedIps<T>) -> &mut FamilyTable<Self, T>;
}

impl PrefixKey for u32 {
    type Raw = u32;
    const BITS: u8 = 32;
    const TAG: u32 = 0;

    #[inline]
    fn masked(raw: u32, cidr: u8) -> u32 {
        raw & u32::MAX.checked_shl(32 - u32::from(cidr)).unwrap_or(0)
    }

    fn to_ip(self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(self))
    }

    fn table<T>(ips: &AllowedIps<T>) -> &FamilyTable<u32, T> {
        &ips.v4
    }

    fn table_mut<T>(ips: &mut AllowedIps<T>) -> &mut FamilyTable<u32, T> {
        &mut ips.v4
    }
}

impl PrefixKey for V6Key {
    type Raw = u128;
    const BITS: u8 = 128;
    const TAG: u32 = V6_TAG;

    #[inline]
    fn masked(raw: u128, cidr: u8) -> V6Key {
        let m = raw & u128::MAX.checked_shl(128 - u32::from(cidr)).unwrap_or(0);
        V6Key {
            hi: (m >> 64) as u64,
            lo: m as u64,
        }
    }

    fn to_ip(self) -> IpAddr {
        IpAddr::V6(Ipv6Addr::from(
            (u128::from(self.hi) << 64) | u128::from(self.lo),
        ))
    }

    fn table<T>(ips: &AllowedIps<T>) -> &FamilyTable<V6Key, T> {
        &ips.v6
    }

    fn table_mut<T>(ips: &mut AllowedIps<T>) -> &mut FamilyTable<V6Key, T> {
        &mut ips.v6
    }
}

/// Neighbours in the owner's circular list (handles).
#[derive(Clone, Copy)]
struct Links {
    /// Previous prefix of the same owner (the tail, from the head).
    prev: u32,
    /// Next prefix of the same owner (the head, from the tail).
    next: u32,
}

/// One stored prefix; free slots chain through `links.next`.
#[derive(Clone, Copy)]
struct Slot<K> {
    /// Masked address.
    key: K,
    /// Position in the owner's list.
    links: Links,
    /// Prefix length, or [`VACANT`].
    cidr: u8,
}

/// Hash map entry value: the owner is cached here so lookups skip the slab.
#[derive(Clone, Copy)]
struct MapVal<T> {
    /// Owner of the prefix.
    value: T,
    /// Slab index (without family tag).
    slot: u32,
}

/// The prefixes of one address family.
#[derive(Clone)]
struct FamilyTable<K, T> {
    /// `maps[cidr]`: masked address -> owner and slot.
    maps: Box<[HashMap<K, MapVal<T>, FoldState>]>,
    /// Bit `cidr` set iff `maps[cidr]` is non-empty (up to 129 lengths).
    present: [u64; 3],
    /// Where the prefixes live.
    slab: Slab<K>,
    /// Number of stored prefixes.
    len: usize,
}

/// Prefix slots with a free list; a separate struct so a slot can be taken
/// while a map entry of the same table is borrowed.
#[derive(Clone)]
struct Slab<K> {
    /// Prefix slots, indexed by handle without tag.
    slots: Vec<Slot<K>>,
    /// Head of the free-slot list.
    free: u32,
}

impl<K: Copy> Slab<K> {
    /// Takes a slot for a new prefix (links left for the caller to set).
    fn alloc(&mut self, key: K, cidr: u8) -> Result<u32, AllowedIpsError> {
        let slot = Slot {
            key,
            links: Links {
                prev: NIL,
                next: NIL,
            },
            cidr,
        };
        if self.free != NIL {
            let index = self.free;
            let entry = &mut self.slots[index as usize];
            self.free = entry.links.next;
            *entry = slot;
            return Ok(index);
        }
        let index = self.slots.len();
        if index >= MAX_SLOTS {
            return Err(AllowedIpsError::Full);
        }
        self.slots.push(slot);
        // MAX_SLOTS < 2^31, so the index fits.
        Ok(index as u32)
    }

    /// Returns a slot to the free list.
    fn release(&mut self, index: u32) {
        let entry = &mut self.slots[index as usize];
        entry.cidr = VACANT;
        entry.links.next = self.free;
        self.free = index;
    }
}

impl<K: PrefixKey, T: Copy> FamilyTable<K, T> {
    /// An empty table; hash maps allocate only when first used.
    fn new(hasher: FoldState) -> Self {
        Self {
            maps: (0..=K::BITS)
                .map(|_| HashMap::with_hasher(hasher.clone()))
                .collect(),
            present: [0; 3],
            slab: Slab {
                slots: Vec::new(),
                free: NIL,
            },
            len: 0,
        }
    }

    /// Longest-prefix match; probes only the lengths in use.
    #[inline]
    fn lookup(&self, raw: K::Raw) -> Option<T> {
        self.lookup_len(raw).map(|(v, _)| v)
    }

    /// The longest match and its prefix length.
    fn lookup_len(&self, raw: K::Raw) -> Option<(T, u8)> {
        for word in (0..self.present.len()).rev() {
            let mut bits = self.present[word];
            while bits != 0 {
                let bit = 63 - bits.leading_zeros();
                bits ^= 1 << bit;
                let cidr = word * 64 + bit as usize;
                // `present` only has bits up to K::BITS, so `cidr` fits in u8.
                if let Some(hit) = self.maps[cidr].get(&K::masked(raw, cidr as u8)) {
                    return Some((hit.value, cidr as u8));
                }
            }
        }
        None
    }

    /// Exact-prefix match.
    fn get(&self, key: K, cidr: u8) -> Option<T> {
        self.maps[usize::from(cidr)].get(&key).map(|m| m.value)
    }

    /// Records whether `maps[cidr]` is now empty.
    fn update_present(&mut self, cidr: u8) {
        let (word, bit) = (usize::from(cidr / 64), cidr % 64);
        if self.maps[usize::from(cidr)].is_empty() {
            self.present[word] &= !(1 << bit);
        } else {
            self.present[word] |= 1 << bit;
        }
    }

    /// Removes the prefix in slot `index` from its map and frees the slot;
    /// the caller has already detached it from the owner's list.
    fn remove_slot(&mut self, index: u32) {
        let Slot { key, cidr, .. } = self.slab.slots[index as usize];
        debug_assert_ne!(cidr, VACANT);
        self.maps[usize::from(cidr)].remove(&key);
        self.update_present(cidr);
        self.len -= 1;
        self.slab.release(index);
    }

    /// Forgets every prefix, keeping allocated capacity.
    fn clear(&mut self) {
        for map in self.maps.iter_mut() {
            map.clear();
        }
        self.present = [0; 3];
        self.slab.slots.clear();
        self.slab.free = NIL;
        self.len = 0;
    }
}

/// Longest-prefix-match table from IPv4/IPv6 prefixes to a value (a peer id).
#[derive(Clone)]
pub struct AllowedIps<T> {
    /// IPv4 prefixes.
    v4: FamilyTable<u32, T>,
    /// IPv6 prefixes.
    v6: FamilyTable<V6Key, T>,
    /// Owner -> handle of the first prefix in its list.
    owners: HashMap<T, u32, FoldState>,
}

impl<T: Copy + Eq + Hash> AllowedIps<T> {
    /// An empty table.
    pub fn new() -> Self {
        let hasher = FoldState::default();
        Self {
            v4: FamilyTable::new(hasher.clone()),
            v6: FamilyTable::new(hasher.clone()),
            owners: HashMap::with_hasher(hasher),
        }
    }

    /// Assigns `addr/cidr` (host bits cleared) to `value`, taking it from any
    /// previous owner, which is returned.
    ///
    /// Re-inserting a prefix under its current owner keeps its position in
    /// [`prefixes_of`](Self::prefixes_of); giving it to another owner appends
    /// it to that owner's list.
    pub fn insert(
        &mut self,
        addr: IpAddr,
        cidr: u8,
        value: T,
    ) -> Result<Option<T>, AllowedIpsError> {
        match addr {
            IpAddr::V4(a) => {
                let cidr = check_cidr(cidr, u32::BITS)?;
                self.insert_key(u32::masked(u32::from(a), cidr), cidr, value)
            }
            IpAddr::V6(a) => {
                let cidr = check_cidr(cidr, u128::BITS)?;
                self.insert_key(V6Key::masked(u128::from(a), cidr), cidr, value)
            }
        }
    }

    /// Removes `addr/cidr` (host bits cleared); returns its owner if it was present.
    pub fn remove(&mut self, addr: IpAddr, cidr: u8) -> Result<Option<T>, AllowedIpsError> {
        Ok(match addr {
            IpAddr::V4(a) => {
                let cidr = check_cidr(cidr, u32::BITS)?;
                self.remove_key(u32::masked(u32::from(a), cidr), cidr)
            }
            IpAddr::V6(a) => {
                let cidr = check_cidr(cidr, u128::BITS)?;
                self.remove_key(V6Key::masked(u128::from(a), cidr), cidr)
            }
        })
    }

    /// Removes every prefix owned by `value`; returns how many there were.
    pub fn remove_value(&mut self, value: T) -> usize {
        let Some(head) = self.owners.remove(&value) else {
            return 0;
        };
        let mut handle = head;
        let mut removed = 0;
        loop {
            let next = self.links(handle).next;
            if handle & V6_TAG != 0 {
                self.v6.remove_slot(handle & !V6_TAG);
            } else {
                self.v4.remove_slot(handle);
            }
            removed += 1;
            if next == head {
                return removed;
            }
            handle = next;
        }
    }

    /// The owner of the longest prefix containing `addr`.
    #[inline]
    pub fn lookup(&self, addr: IpAddr) -> Option<T> {
        match addr {
            IpAddr::V4(a) => self.lookup_v4(u32::from(a)),
            IpAddr::V6(a) => self.lookup_v6(u128::from(a)),
        }
    }

    /// The owner of the longest prefix containing `addr`, with that
    /// prefix's length (to compare matches from two tables).
    pub fn lookup_with_len(&self, addr: IpAddr) -> Option<(T, u8)> {
        match addr {
            IpAddr::V4(a) => self.v4.lookup_len(u32::from(a)),
            IpAddr::V6(a) => self.v6.lookup_len(u128::from(a)),
        }
    }

    /// The owner of the longest IPv4 prefix containing `addr` (host order).
    #[inline]
    pub fn lookup_v4(&self, addr: u32) -> Option<T> {
        self.v4.lookup(addr)
    }

    /// The owner of the longest IPv6 prefix containing `addr` (host order).
    #[inline]
    pub fn lookup_v6(&self, addr: u128) -> Option<T> {
        self.v6.lookup(addr)
    }

    /// The owner of exactly `addr/cidr` (host bits cleared), if any.
    pub fn get(&self, addr: IpAddr, cidr: u8) -> Result<Option<T>, AllowedIpsError> {
        Ok(match addr {
            IpAddr::V4(a) => {
                let cidr = check_cidr(cidr, u32::BITS)?;
                self.v4.get(u32::masked(u32::from(a), cidr), cidr)
            }
            IpAddr::V6(a) => {
                let cidr = check_cidr(cidr, u128::BITS)?;
                self.v6.get(V6Key::masked(u128::from(a), cidr), cidr)
            }
        })
    }

    /// The prefixes owned by `value` (network address, length), in the order
    /// they were given to it.
    pub fn prefixes_of(&self, value: T) -> Prefixes<'_, T> {
        let head = self.owners.get(&value).copied();
        Prefixes {
            table: self,
            head: head.unwrap_or(NIL),
            next: head,
        }
    }

    /// Number of prefixes (both families).
    pub fn len(&self) -> usize {
        self.v4.len + self.v6.len
    }

    /// Whether the table holds no prefix.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every prefix (keeps allocated capacity for a refill).
    pub fn clear(&mut self) {
        self.v4.clear();
        self.v6.clear();
        self.owners.clear();
    }

    /// Insert for one family, `key` already masked and `cidr` validated.
    fn insert_key<K: PrefixKey>(
        &mut self,
        key: K,
        cidr: u8,
        value: T,
    ) -> Result<Option<T>, AllowedIpsError> {
        let table = K::table_mut(self);
        match table.maps[usize::from(cidr)].entry(key) {
            Entry::Occupied(mut entry) => {
                let old = *entry.get();
                if old.value == value {
                    return Ok(Some(value));
                }
                entry.get_mut().value = value;
                let handle = old.slot | K::TAG;
                self.unlink(old.value, handle);
                self.append(value, handle);
                Ok(Some(old.value))
            }
            Entry::Vacant(entry) => {
                let slot = table.slab.alloc(key, cidr)?;
                entry.insert(MapVal { value, slot });
                table.update_present(cidr);
                table.len += 1;
                self.append(value, slot | K::TAG);
                Ok(None)
            }
        }
    }

    /// Remove for one family, `key` already masked and `cidr` validated.
    fn remove_key<K: PrefixKey>(&mut self, key: K, cidr: u8) -> Option<T> {
        let old = *K::table(self).maps[usize::from(cidr)].get(&key)?;
        self.unlink(old.value, old.slot | K::TAG);
        K::table_mut(self).remove_slot(old.slot);
        Some(old.value)
    }

    /// Slot behind a handle.
    fn describe(&self, handle: u32) -> (IpAddr, u8, Links) {
        if handle & V6_TAG != 0 {
            let s = &self.v6.slab.slots[(handle & !V6_TAG) as usize];
            (s.key.to_ip(), s.cidr, s.links)
        } else {
            let s = &self.v4.slab.slots[handle as usize];
            (s.key.to_ip(), s.cidr, s.links)
        }
    }

    /// List links of a handle.
    fn links(&self, handle: u32) -> Links {
        if handle & V6_TAG != 0 {
            self.v6.slab.slots[(handle & !V6_TAG) as usize].links
        } else {
            self.v4.slab.slots[handle as usize].links
        }
    }

    /// List links of a handle, mutably.
    fn links_mut(&mut self, handle: u32) -> &mut Links {
        if handle & V6_TAG != 0 {
            &mut self.v6.slab.slots[(handle & !V6_TAG) as usize].links
        } else {
            &mut self.v4.slab.slots[handle as usize].links
        }
    }

    /// Appends `handle` to the tail of `value`'s list.
    fn append(&mut self, value: T, handle: u32) {
        let head = match self.owners.entry(value) {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(e) => {
                e.insert(handle);
                *self.links_mut(handle) = Links {
                    prev: handle,
                    next: handle,
                };
                return;
            }
        };
        let tail = self.links(head).prev;
        self.links_mut(tail).next = handle;
        self.links_mut(head).prev = handle;
        *self.links_mut(handle) = Links {
            prev: tail,
            next: head,
        };
    }

    /// Detaches `handle` from `value`'s list.
    fn unlink(&mut self, value: T, handle: u32) {
        let Links { prev, next } = self.links(handle);
        if next == handle {
            self.owners.remove(&value);
            return;
        }
        self.links_mut(prev).next = next;
        self.links_mut(next).prev = prev;
        if let Some(head) = self.owners.get_mut(&value) {
            if *head == handle {
                *head = next;
            }
        }
    }
}

/// Validates a prefix length against the address length.
fn check_cidr(cidr: u8, bits: u32) -> Result<u8, AllowedIpsError> {
    if u32::from(cidr) > bits {
        // `bits` is 32 or 128.
        Err(AllowedIpsError::InvalidCidr {
            cidr,
            max: bits as u8,
        })
    } else {
        Ok(cidr)
    }
}

impl<T: Copy + Eq + Hash> Default for AllowedIps<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for AllowedIps<T> {
    // Counts rather than contents: a concentrator's table has millions of rows.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AllowedIps")
            .field("v4", &self.v4.len)
            .field("v6", &self.v6.len)
            .field("owners", &self.owners.len())
            .finish()
    }
}

/// Iterator over one owner's prefixes, from [`AllowedIps::prefixes_of`].
pub struct Prefixes<'a, T> {
    /// The table being read.
    table: &'a AllowedIps<T>,
    /// First handle of the list (where the walk stops).
    head: u32,
    /// Handle to yield next.
    next: Option<u32>,
}

impl<T: Copy + Eq + Hash> Iterator for Prefixes<'_, T> {
    type Item = (IpAddr, u8);

    fn next(&mut self) -> Option<(IpAddr, u8)> {
        let handle = self.next?;
        let (ip, cidr, links) = self.table.describe(handle);
        self.next = (links.next != self.head).then_some(links.next);
        Some((ip, cidr))
    }
}

impl<T> fmt::Debug for Prefixes<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prefixes").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::str::FromStr;

    fn ip(s: &str) -> IpAddr {
        IpAddr::from_str(s).unwrap()
    }

    fn prefixes(t: &AllowedIps<u32>, v: u32) -> Vec<String> {
        t.prefixes_of(v).map(|(a, c)| format!("{a}/{c}")).collect()
    }

    #[test]
    fn longest_match_v4() {
        let mut t = AllowedIps::new();
        assert_eq!(t.insert(ip("10.0.0.0"), 8, 1).unwrap(), None);
        assert_eq!(t.insert(ip("10.1.0.0"), 16, 2).unwrap(), None);
        assert_eq!(t.insert(ip("10.1.2.3"), 32, 3).unwrap(), None);
        assert_eq!(t.lookup(ip("10.9.9.9")), Some(1));
        assert_eq!(t.lookup(ip("10.1.9.9")), Some(2));
        assert_eq!(t.lookup(ip("10.1.2.3")), Some(3));
        assert_eq!(t.lookup(ip("10.1.2.4")), Some(2));
        assert_eq!(t.lookup(ip("11.0.0.0")), None);
        assert_eq!(t.lookup(ip("9.255.255.255")), None);
        assert_eq!(t.lookup(ip("10.255.255.255")), Some(1));
        assert_eq!(t.lookup_v4(0x0a01_0203), Some(3));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn longest_match_v6() {
        let mut t = AllowedIps::new();
        t.insert(ip("2001:db8::"), 32, 1).unwrap();
        t.insert(ip("2001:db8:1::"), 48, 2).unwrap();
        t.insert(ip("2001:db8:1:2::"), 64, 3).unwrap();
        t.insert(ip("2001:db8:1:2::7"), 128, 4).unwrap();
        t.insert(ip("2001:db8:1:2::6"), 127, 5).unwrap();
        assert_eq!(t.lookup(ip("2001:db8:ffff::1")), Some(1));
        assert_eq!(t.lookup(ip("2001:db8:1:ffff::1")), Some(2));
        assert_eq!(t.lookup(ip("2001:db8:1:2::1")), Some(3));
        assert_eq!(t.lookup(ip("2001:db8:1:2::7")), Some(4));
        assert_eq!(t.lookup(ip("2001:db8:1:2::6")), Some(5));
        assert_eq!(t.lookup(ip("2001:db8:1:2::8")), Some(3));
        assert_eq!(t.lookup(ip("2001:db9::")), None);
        assert_eq!(
            t.lookup_v6(0x2001_0db8_0001_0002_0000_0000_0000_0007),
            Some(4)
        );
    }

    #[test]
    fn default_routes_and_families_are_separate() {
        let mut t = AllowedIps::new();
        t.insert(ip("0.0.0.0"), 0, 1).unwrap();
        assert_eq!(t.lookup(ip("1.2.3.4")), Some(1));
        assert_eq!(t.lookup(ip("255.255.255.255")), Some(1));
        assert_eq!(t.lookup(ip("::1")), None);
        t.insert(ip("::"), 0, 2).unwrap();
        assert_eq!(t.lookup(ip("::1")), Some(2));
        assert_eq!(
            t.lookup(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")),
            Some(2)
        );
        // IPv4-mapped IPv6 is not folded into IPv4.
        t.insert(ip("10.0.0.0"), 8, 3).unwrap();
        assert_eq!(t.lookup(ip("::ffff:10.0.0.1")), Some(2));
        t.remove(ip("::"), 0).unwrap();
        assert_eq!(t.lookup(ip("::ffff:10.0.0.1")), None);
        assert_eq!(t.lookup(ip("10.0.0.1")), Some(3));
    }

    #[test]
    fn host_bits_are_masked() {
        let mut t = AllowedIps::new();
        t.insert(ip("10.1.2.3"), 8, 1).unwrap();
        t.insert(ip("2001:db8::ffff"), 64, 1).unwrap();
        assert_eq!(prefixes(&t, 1), ["10.0.0.0/8", "2001:db8::/64"]);
        assert_eq!(t.get(ip("10.200.0.0"), 8).unwrap(), Some(1));
        assert_eq!(t.remove(ip("10.9.9.9"), 8).unwrap(), Some(1));
        assert_eq!(t.remove(ip("10.9.9.9"), 8).unwrap(), None);
    }

    #[test]
    fn invalid_cidr() {
        let mut t = AllowedIps::new();
        let e4 = AllowedIpsError::InvalidCidr { cidr: 33, max: 32 };
        let e6 = AllowedIpsError::InvalidCidr {
            cidr: 129,
            max: 128,
        };
        assert_eq!(t.insert(ip("1.2.3.4"), 33, 1), Err(e4));
        assert_eq!(t.insert(ip("::1"), 129, 1), Err(e6));
        assert_eq!(t.remove(ip("1.2.3.4"), 33), Err(e4));
        assert_eq!(t.get(ip("::1"), 129), Err(e6));
        assert_eq!(t.insert(ip("::1"), 33, 1), Ok(None));
        assert!(t.insert(ip("1.2.3.4"), 255, 1).is_err());
        assert_eq!(t.len(), 1);
        assert_eq!(
            e4.to_string(),
            "prefix length /33 exceeds the 32-bit address"
        );
    }

    #[test]
    fn insert_takes_prefix_from_previous_owner() {
        let mut t = AllowedIps::new();
        t.insert(ip("10.0.0.1"), 32, 1).unwrap();
        t.insert(ip("10.0.0.2"), 32, 1).unwrap();
        t.insert(ip("10.0.0.3"), 32, 1).unwrap();
        t.insert(ip("10.0.0.9"), 32, 2).unwrap();
        assert_eq!(t.insert(ip("10.0.0.2"), 32, 2).unwrap(), Some(1));
        assert_eq!(prefixes(&t, 1), ["10.0.0.1/32", "10.0.0.3/32"]);
        assert_eq!(prefixes(&t, 2), ["10.0.0.9/32", "10.0.0.2/32"]);
        assert_eq!(t.lookup(ip("10.0.0.2")), Some(2));
        // Same owner again: returns it, order unchanged.
        assert_eq!(t.insert(ip("10.0.0.9"), 32, 2).unwrap(), Some(2));
        assert_eq!(prefixes(&t, 2), ["10.0.0.9/32", "10.0.0.2/32"]);
        // Taking the head and the last one.
        assert_eq!(t.insert(ip("10.0.0.1"), 32, 3).unwrap(), Some(1));
        assert_eq!(t.insert(ip("10.0.0.3"), 32, 3).unwrap(), Some(1));
        assert_eq!(prefixes(&t, 1), Vec::<String>::new());
        assert_eq!(prefixes(&t, 3), ["10.0.0.1/32", "10.0.0.3/32"]);
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn remove_value_and_order_across_families() {
        let mut t = AllowedIps::new();
        t.insert(ip("fd00::1"), 128, 7).unwrap();
        t.insert(ip("10.0.0.1"), 32, 7).unwrap();
        t.insert(ip("10.0.0.2"), 32, 8).unwrap();
        t.insert(ip("fd00::"), 64, 7).unwrap();
        t.insert(ip("0.0.0.0"), 0, 7).unwrap();
        assert_eq!(
            prefixes(&t, 7),
            ["fd00::1/128", "10.0.0.1/32", "fd00::/64", "0.0.0.0/0"]
        );
        t.remove(ip("10.0.0.1"), 32).unwrap();
        assert_eq!(prefixes(&t, 7), ["fd00::1/128", "fd00::/64", "0.0.0.0/0"]);
        assert_eq!(t.remove_value(7), 3);
        assert_eq!(t.remove_value(7), 0);
        assert_eq!(prefixes(&t, 7), Vec::<String>::new());
        assert_eq!(t.len(), 1);
        assert_eq!(t.lookup(ip("fd00::1")), None);
        assert_eq!(t.lookup(ip("10.0.0.2")), Some(8));
        assert_eq!(t.lookup(ip("10.0.0.3")), None);
    }

    #[test]
    fn clear_and_slot_reuse() {
        let mut t = AllowedIps::new();
        for round in 0..3u32 {
            for i in 0..1000u32 {
                t.insert(IpAddr::V4(Ipv4Addr::from(i << 8)), 24, i % 10)
                    .unwrap();
            }
            assert_eq!(t.len(), 1000);
            for v in 0..5 {
                assert_eq!(t.remove_value(v), 100);
            }
            assert_eq!(t.len(), 500);
            assert_eq!(t.lookup_v4(7 << 8 | 5), Some(7));
            assert_eq!(t.lookup_v4(3 << 8 | 5), None);
            if round == 1 {
                t.clear();
                assert!(t.is_empty());
                assert_eq!(t.lookup_v4(7 << 8), None);
                assert_eq!(t.prefixes_of(7).count(), 0);
            }
        }
        // Freed slots are reused rather than growing the slab.
        assert!(t.v4.slab.slots.len() <= 1000);
    }

    #[test]
    fn debug_is_compact() {
        let mut t = AllowedIps::new();
        t.insert(ip("10.0.0.1"), 32, 1u32).unwrap();
        assert_eq!(format!("{t:?}"), "AllowedIps { v4: 1, v6: 0, owners: 1 }");
    }

    #[test]
    fn layout_sizes() {
        // What the per-entry memory estimate in the module docs rests on.
        assert_eq!(std::mem::size_of::<(u32, MapVal<u32>)>(), 12);
        assert_eq!(std::mem::size_of::<(V6Key, MapVal<u32>)>(), 24);
        assert_eq!(std::mem::size_of::<Slot<u32>>(), 16);
        assert_eq!(std::mem::size_of::<Slot<V6Key>>(), 32);
    }

    /// Million-peer smoke test: `cargo test --release -- --ignored million`.
    #[test]
    #[ignore = "slow in debug builds"]
    fn million_slash_32() {
        let n = 1_000_000u32;
        let base = 0x0a00_0000u32;
        let mut t = AllowedIps::new();
        let start = std::time::Instant::now();
        for i in 0..n {
            t.insert(IpAddr::V4(Ipv4Addr::from(base + i)), 32, i)
                .unwrap();
        }
        let inserted = start.elapsed();
        let start = std::time::Instant::now();
        let mut hits = 0u64;
        for i in 0..n {
            hits += u64::from(
                t.lookup_v4(base + i.wrapping_mul(2_654_435_761) % n)
                    .is_some(),
            );
        }
        let looked = start.elapsed();
        assert_eq!(hits, u64::from(n));
        println!(
            "insert {:?}/entry, lookup {:?}/op",
            inserted / n,
            looked / n
        );
        for i in (0..n).step_by(2) {
            assert_eq!(t.remove_value(i), 1);
        }
        assert_eq!(t.len(), n as usize / 2);
    }

    // ---- property test against a linear reference model ----

    /// Reference: prefixes in assignment order, linear longest match.
    #[derive(Default)]
    struct Model {
        entries: Vec<(IpAddr, u8, u32)>,
    }

    /// Address bits as a bool vector, most significant first.
    fn bits(a: IpAddr) -> Vec<bool> {
        let bytes = match a {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        bytes
            .iter()
            .flat_map(|b| (0..8).rev().map(move |i| b >> i & 1 == 1))
            .collect()
    }

    fn from_bits(v6: bool, bits: &[bool]) -> IpAddr {
        let mut bytes = vec![0u8; bits.len() / 8];
        for (i, &b) in bits.iter().enumerate() {
            if b {
                bytes[i / 8] |= 0x80 >> (i % 8);
            }
        }
        if v6 {
            IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).unwrap()))
        } else {
            IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).unwrap()))
        }
    }

    /// First and last address of a prefix, the model's own way.
    fn range(a: IpAddr, cidr: u8) -> (IpAddr, IpAddr) {
        let b = bits(a);
        let lo: Vec<bool> = b
            .iter()
            .enumerate()
            .map(|(i, &x)| i < cidr as usize && x)
            .collect();
        let hi: Vec<bool> = b
            .iter()
            .enumerate()
            .map(|(i, &x)| i >= cidr as usize || x)
            .collect();
        (from_bits(a.is_ipv6(), &lo), from_bits(a.is_ipv6(), &hi))
    }

    fn max_cidr(a: IpAddr) -> u8 {
        if a.is_ipv4() {
            32
        } else {
            128
        }
    }

    fn contains(prefix: IpAddr, cidr: u8, a: IpAddr) -> bool {
        prefix.is_ipv4() == a.is_ipv4() && bits(prefix)[..cidr as usize] == bits(a)[..cidr as usize]
    }

    impl Model {
        fn insert(&mut self, a: IpAddr, cidr: u8, v: u32) -> Option<u32> {
            let p = range(a, cidr).0;
            match self.entries.iter().position(|e| e.0 == p && e.1 == cidr) {
                Some(i) => {
                    let old = self.entries[i].2;
                    if old != v {
                        self.entries.remove(i);
                        self.entries.push((p, cidr, v));
                    }
                    Some(old)
                }
                None => {
                    self.entries.push((p, cidr, v));
                    None
                }
            }
        }

        fn remove(&mut self, a: IpAddr, cidr: u8) -> Option<u32> {
            let p = range(a, cidr).0;
            let i = self.entries.iter().position(|e| e.0 == p && e.1 == cidr)?;
            Some(self.entries.remove(i).2)
        }

        fn remove_value(&mut self, v: u32) -> usize {
            let before = self.entries.len();
            self.entries.retain(|e| e.2 != v);
            before - self.entries.len()
        }

        fn lookup(&self, a: IpAddr) -> Option<u32> {
            self.lookup_with_len(a).map(|(v, _)| v)
        }

        fn lookup_with_len(&self, a: IpAddr) -> Option<(u32, u8)> {
            self.entries
                .iter()
                .filter(|e| contains(e.0, e.1, a))
                .max_by_key(|e| e.1)
                .map(|e| (e.2, e.1))
        }

        fn prefixes_of(&self, v: u32) -> Vec<(IpAddr, u8)> {
            self.entries
                .iter()
                .filter(|e| e.2 == v)
                .map(|e| (e.0, e.1))
                .collect()
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(IpAddr, u8, u32),
        Remove(IpAddr, u8),
        RemoveValue(u32),
        Lookup(IpAddr),
        Clear,
    }

    /// Addresses clustered around a few bases so prefixes overlap.
    fn addr() -> impl Strategy<Value = IpAddr> {
        let v4 = (
            prop::sample::select(vec![0u32, 0x0a00_0000, 0xc0a8_0100, u32::MAX]),
            any::<u32>(),
            0u32..=32,
        )
            .prop_map(|(base, noise, keep)| {
                let low = noise.checked_shr(keep).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(base ^ low))
            });
        let v6 = (
            prop::sample::select(vec![
                0u128,
                0x2001_0db8 << 96,
                0xfe80 << 112,
                0xffff_0a00_0000, // ::ffff:10.0.0.0
                u128::MAX,
            ]),
            any::<u128>(),
            0u32..=128,
        )
            .prop_map(|(base, noise, keep)| {
                let low = noise.checked_shr(keep).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(base ^ low))
            });
        prop_oneof![v4, v6]
    }

    /// Prefix lengths, mostly valid, biased to the usual and edge lengths.
    fn cidr_for(a: IpAddr) -> impl Strategy<Value = (IpAddr, u8)> {
        let max = max_cidr(a);
        prop_oneof![
            5 => 0..=max,
            2 => prop::sample::select(vec![0, 1, max / 4, max / 2, max - 1, max]),
            1 => (max + 1)..=max.saturating_add(10),
        ]
        .prop_map(move |c| (a, c))
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            60 => (addr().prop_flat_map(cidr_for), 0u32..6).prop_map(|((a, c), v)| Op::Insert(a, c, v)),
            20 => addr().prop_flat_map(cidr_for).prop_map(|(a, c)| Op::Remove(a, c)),
            8 => (0u32..6).prop_map(Op::RemoveValue),
            30 => addr().prop_map(Op::Lookup),
            1 => Just(Op::Clear),
        ]
    }

    /// Addresses around the edges of every model prefix.
    fn boundary_probes(model: &Model) -> Vec<IpAddr> {
        let mut out = Vec::new();
        for &(p, c, _) in &model.entries {
            let (lo, hi) = range(p, c);
            out.push(lo);
            out.push(hi);
            match (lo, hi) {
                (IpAddr::V4(lo), IpAddr::V4(hi)) => {
                    out.push(IpAddr::V4(Ipv4Addr::from(u32::from(lo).wrapping_sub(1))));
                    out.push(IpAddr::V4(Ipv4Addr::from(u32::from(hi).wrapping_add(1))));
                }
                (IpAddr::V6(lo), IpAddr::V6(hi)) => {
                    out.push(IpAddr::V6(Ipv6Addr::from(u128::from(lo).wrapping_sub(1))));
                    out.push(IpAddr::V6(Ipv6Addr::from(u128::from(hi).wrapping_add(1))));
                }
                _ => unreachable!(),
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn matches_model(ops in prop::collection::vec(op(), 1..120), probes in prop::collection::vec(addr(), 0..40)) {
            let mut t = AllowedIps::new();
            let mut m = Model::default();
            let mut seen = Vec::new();
            for op in &ops {
                match *op {
                    Op::Insert(a, c, v) => {
                        seen.push(a);
                        if c > max_cidr(a) {
                            prop_assert!(t.insert(a, c, v).is_err());
                        } else {
                            prop_assert_eq!(t.insert(a, c, v).unwrap(), m.insert(a, c, v));
                        }
                    }
                    Op::Remove(a, c) => {
                        if c > max_cidr(a) {
                            prop_assert!(t.remove(a, c).is_err());
                        } else {
                            prop_assert_eq!(t.remove(a, c).unwrap(), m.remove(a, c));
                        }
                    }
                    Op::RemoveValue(v) => prop_assert_eq!(t.remove_value(v), m.remove_value(v)),
                    Op::Lookup(a) => {
                        prop_assert_eq!(t.lookup(a), m.lookup(a));
                        prop_assert_eq!(t.lookup_with_len(a), m.lookup_with_len(a));
                    }
                    Op::Clear => {
                        t.clear();
                        m.entries.clear();
                    }
                }
                prop_assert_eq!(t.len(), m.entries.len());
            }
            let mut all = boundary_probes(&m);
            all.extend(probes);
            all.extend(seen);
            for a in all {
                let want = m.lookup(a);
                prop_assert_eq!(t.lookup(a), want, "lookup {}", a);
                let fast = match a {
                    IpAddr::V4(a) => t.lookup_v4(u32::from(a)),
                    IpAddr::V6(a) => t.lookup_v6(u128::from(a)),
                };
                prop_assert_eq!(fast, want);
            }
            for v in 0..6 {
                prop_assert_eq!(t.prefixes_of(v).collect::<Vec<_>>(), m.prefixes_of(v));
            }
            for &(p, c, v) in &m.entries {
                prop_assert_eq!(t.get(p, c).unwrap(), Some(v));
            }
        }
    }
}
