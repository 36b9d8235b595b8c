//! Transport sessions: one keypair agreed by a handshake, sealing and
//! opening batches of packets in place.
//!
//! A packet travels in a [`PacketBuf`]: a buffer with the packet somewhere
//! inside it. Sealing grows the packet into its headroom (the 16-byte
//! transport header) and tailroom (padding and the 16-byte tag); opening
//! shrinks it back to the plaintext. No byte of payload is copied and
//! nothing is allocated.

use std::time::Instant;

use zerocopy::little_endian::{U32, U64};
use zerocopy::IntoBytes;

use super::crypto::{AeadKey, CryptoError, TAG_LEN};
use super::handshake::SessionKeys;
use super::messages::{
    self, TransportHeader, TRANSPORT_HEADER_LEN, TRANSPORT_MIN_LEN, TYPE_TRANSPORT,
};
use super::replay::{ReplayWindow, REJECT_AFTER_MESSAGES};

/// A packet inside a buffer, with room before and after it.
#[derive(Debug, Clone)]
pub struct PacketBuf<B> {
    buf: B,
    start: usize,
    len: usize,
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> PacketBuf<B> {
    /// Wraps `buf` with the packet at `start..start + len`; `None` if that
    /// range is not inside the buffer.
    pub fn new(buf: B, start: usize, len: usize) -> Option<Self> {
        (start.checked_add(len)? <= buf.as_ref().len()).then_some(Self { buf, start, len })
    }

    /// The packet's bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buf.as_ref()[self.start..self.start + self.len]
    }

    /// The packet's bytes, writable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        let (s, l) = (self.start, self.len);
        &mut self.buf.as_mut()[s..s + l]
    }

    /// Bytes free before the packet.
    #[inline]
    pub fn headroom(&self) -> usize {
        self.start
    }

    /// Bytes free after the packet.
    #[inline]
    pub fn tailroom(&self) -> usize {
        self.buf.as_ref().len() - self.start - self.len
    }

    /// Offset of the packet in the buffer.
    #[inline]
    pub fn start(&self) -> usize {
        self.start
    }

    /// Length of the packet.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the packet is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Moves the packet's bounds; `false` (and no change) if out of range.
    pub fn set_bounds(&mut self, start: usize, len: usize) -> bool {
        match start.checked_add(len) {
            Some(end) if end <= self.buf.as_ref().len() => {
                self.start = start;
                self.len = len;
                true
            }
            _ => false,
        }
    }

    /// Shortens the packet to `len` bytes (e.g. to the IP total length).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// The whole underlying buffer.
    pub fn buffer(&self) -> &B {
        &self.buf
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> B {
        self.buf
    }
}

/// Why a packet could not be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The buffer lacks headroom for the header or tailroom for padding and tag.
    #[error("packet buffer lacks headroom or tailroom")]
    NoRoom,
    /// The session has used up its nonces (REJECT_AFTER_MESSAGES).
    #[error("session nonces exhausted")]
    Exhausted,
}

/// Why a transport message was not accepted. Counted and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Not a well-formed transport message.
    #[error("malformed transport message")]
    Malformed,
    /// Counter already seen or too far behind the window.
    #[error("replayed or too old counter")]
    Replay,
    /// Did not authenticate under this session's key.
    #[error("transport message failed authentication")]
    Auth,
}

/// A transport message accepted by [`Session::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Opened {
    /// Its nonce counter.
    pub counter: u64,
    /// Plaintext length (still padded); 0 for a keepalive.
    pub len: usize,
}

/// One direction pair of transport keys with its counters.
pub struct Session {
    /// Our index: inbound messages carry it as receiver.
    pub local_index: u32,
    /// The peer's index: outbound messages carry it as receiver.
    pub remote_index: u32,
    /// When the handshake that made it completed.
    pub created: Instant,
    /// Whether we were the initiator of that handshake.
    pub initiator: bool,
    send: AeadKey,
    recv: AeadKey,
    next_send: u64,
    replay: ReplayWindow,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("created", &self.created)
            .field("initiator", &self.initiator)
            .field("next_send", &self.next_send)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Starts a session from handshake output; the key bytes are wiped
    /// when `keys` drops here.
    pub fn new(keys: SessionKeys, now: Instant) -> Self {
        Self {
            local_index: keys.local_index,
            remote_index: keys.remote_index,
            created: now,
            initiator: keys.initiator,
            send: AeadKey::new(&keys.send),
            recv: AeadKey::new(&keys.recv),
            next_send: 0,
            replay: ReplayWindow::new(),
        }
    }

    /// The counter the next sealed packet will use.
    pub fn send_counter(&self) -> u64 {
        self.next_send
    }

    /// Jumps the send counter, so tests can reach the message limits
    /// without sending 2^60 packets.
    #[cfg(test)]
    pub(crate) fn set_send_counter(&mut self, counter: u64) {
        self.next_send = counter;
    }

    /// The highest counter received so far.
    pub fn highest_received(&self) -> Option<u64> {
        self.replay.highest()
    }

    /// Seals every packet of `pkts` in place, in order, with consecutive
    /// counters: pads the plaintext to a multiple of 16 (not past `mtu`),
    /// writes the transport header into the headroom and the tag into the
    /// tailroom. Returns how many were sealed; fewer than `pkts.len()` only
    /// with an error, and then the rest are untouched.
    pub fn seal_batch<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        pkts: &mut [PacketBuf<B>],
        mtu: usize,
    ) -> Result<usize, (usize, SealError)> {
        for (i, pkt) in pkts.iter_mut().enumerate() {
            self.seal(pkt, mtu).map_err(|e| (i, e))?;
        }
        Ok(pkts.len())
    }

    /// Seals one packet in place (see [`Self::seal_batch`]).
    #[inline]
    pub fn seal<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        pkt: &mut PacketBuf<B>,
        mtu: usize,
    ) -> Result<(), SealError> {
        let counter = self.next_send;
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(SealError::Exhausted);
        }
        let len = pkt.len;
        let padded = messages::padded_len(len, mtu);
        if pkt.start < TRANSPORT_HEADER_LEN || pkt.tailroom() < padded - len + TAG_LEN {
            return Err(SealError::NoRoom);
        }
        let start = pkt.start - TRANSPORT_HEADER_LEN;
        let total = TRANSPORT_HEADER_LEN + padded + TAG_LEN;
        let out = &mut pkt.buf.as_mut()[start..start + total];
        let (header, rest) = out.split_at_mut(TRANSPORT_HEADER_LEN);
        let (body, tag) = rest.split_at_mut(padded);
        body[len..].fill(0);
        let h = TransportHeader {
            msg_type: U32::new(TYPE_TRANSPORT),
            receiver: U32::new(self.remote_index),
            counter: U64::new(counter),
        };
        header.copy_from_slice(h.as_bytes());
        tag.copy_from_slice(&self.send.seal_in_place(counter, &[], body));
        self.next_send = counter + 1;
        pkt.start = start;
        pkt.len = total;
        Ok(())
    }

    /// Opens one transport message in place. On success the packet is
    /// shrunk to the (padded) plaintext; on failure it is left as it was
    /// and the replay window has not moved.
    #[inline]
    pub fn open<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        pkt: &mut PacketBuf<B>,
    ) -> Result<Opened, OpenError> {
        if pkt.len < TRANSPORT_MIN_LEN {
            return Err(OpenError::Malformed);
        }
        let data = pkt.data_mut();
        let mut counter_bytes = [0u8; 8];
        counter_bytes.copy_from_slice(&data[8..16]);
        let counter = u64::from_le_bytes(counter_bytes);
        if !self.replay.check(counter) {
            return Err(OpenError::Replay);
        }
        let len = self
            .recv
            .open_in_place(counter, &[], &mut data[TRANSPORT_HEADER_LEN..])
            .map_err(|_: CryptoError| OpenError::Auth)?;
        // A duplicate inside one batch passes `check` twice; `update` is
        // the authoritative test.
        if !self.replay.update(counter) {
            return Err(OpenError::Replay);
        }
        pkt.start += TRANSPORT_HEADER_LEN;
        pkt.len = len;
        Ok(Opened { counter, len })
    }

    /// Opens every packet of `pkts` in place, writing one result per packet.
    pub fn open_batch<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        pkts: &mut [PacketBuf<B>],
        results: &mut [Result<Opened, OpenError>],
    ) {
        for (pkt, res) in pkts.iter_mut().zip(results.iter_mut()) {
            *res = self.open(pkt);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::messages::{HEADROOM, TAILROOM};
    use zeroize::Zeroizing;

    fn pair(now: Instant) -> (Session, Session) {
        let k1 = Zeroizing::new([1u8; 32]);
        let k2 = Zeroizing::new([2u8; 32]);
        let a = Session::new(
            SessionKeys {
                send: k1.clone(),
                recv: k2.clone(),
                local_index: 10,
                remote_index: 20,
                initiator: true,
            },
            now,
        );
        let b = Session::new(
            SessionKeys {
                send: k2,
                recv: k1,
                local_index: 20,
                remote_index: 10,
                initiator: false,
            },
            now,
        );
        (a, b)
    }

    fn buf(payload: &[u8]) -> PacketBuf<Vec<u8>> {
        let mut v = vec![0xAAu8; HEADROOM + payload.len() + TAILROOM];
        v[HEADROOM..HEADROOM + payload.len()].copy_from_slice(payload);
        PacketBuf::new(v, HEADROOM, payload.len()).unwrap()
    }

    #[test]
    fn batch_round_trip_in_place() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let payloads: Vec<Vec<u8>> = [0usize, 1, 15, 16, 17, 64, 1420]
            .iter()
            .map(|&n| (0..n).map(|i| i as u8).collect())
            .collect();
        let mut pkts: Vec<_> = payloads.iter().map(|p| buf(p)).collect();
        assert_eq!(a.seal_batch(&mut pkts, 1420).unwrap(), pkts.len());
        for (i, (p, pl)) in pkts.iter().zip(&payloads).enumerate() {
            let d = p.data();
            assert_eq!(p.start(), 0, "header written into the headroom");
            assert_eq!(&d[..4], &[4, 0, 0, 0]);
            assert_eq!(&d[4..8], &20u32.to_le_bytes());
            assert_eq!(&d[8..16], &(i as u64).to_le_bytes());
            let padded = messages::padded_len(pl.len(), 1420);
            assert_eq!(d.len(), 16 + padded + 16);
        }
        let mut results = vec![Err(OpenError::Malformed); pkts.len()];
        b.open_batch(&mut pkts, &mut results);
        for ((p, r), pl) in pkts.iter().zip(&results).zip(&payloads) {
            let r = r.unwrap();
            assert_eq!(&p.data()[..pl.len()], &pl[..]);
            assert!(p.data()[pl.len()..].iter().all(|&x| x == 0), "zero padding");
            assert_eq!(r.len, p.len());
        }
        assert_eq!(a.send_counter(), payloads.len() as u64);
    }

    #[test]
    fn replays_and_forgeries_are_refused_without_side_effects() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let mut p = buf(b"hello");
        a.seal(&mut p, 1420).unwrap();
        let sealed = p.clone();
        b.open(&mut p).unwrap();
        let mut again = sealed.clone();
        assert_eq!(b.open(&mut again), Err(OpenError::Replay));

        let mut q = buf(b"world");
        a.seal(&mut q, 1420).unwrap();
        let mut forged = q.clone();
        forged.data_mut()[20] ^= 1;
        let before = forged.data().to_vec();
        assert_eq!(b.open(&mut forged), Err(OpenError::Auth));
        assert_eq!(forged.len(), before.len());
        // The forgery did not consume counter 1: the genuine one opens.
        b.open(&mut q).unwrap();
        assert_eq!(b.highest_received(), Some(1));

        let mut short = PacketBuf::new(vec![4u8; 31], 0, 31).unwrap();
        assert_eq!(b.open(&mut short), Err(OpenError::Malformed));
    }

    #[test]
    fn duplicates_inside_one_batch_are_caught() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let mut p = buf(b"dup");
        a.seal(&mut p, 1420).unwrap();
        let mut pkts = vec![p.clone(), p];
        let mut results = vec![Err(OpenError::Malformed); 2];
        b.open_batch(&mut pkts, &mut results);
        assert!(results[0].is_ok());
        assert_eq!(results[1], Err(OpenError::Replay));
    }

    #[test]
    fn seal_needs_room_and_nonces() {
        let now = Instant::now();
        let (mut a, _) = pair(now);
        let mut no_head = PacketBuf::new(vec![0u8; 64], 0, 16).unwrap();
        assert_eq!(a.seal(&mut no_head, 1420), Err(SealError::NoRoom));
        let mut no_tail = PacketBuf::new(vec![0u8; 40], 16, 17).unwrap();
        assert_eq!(a.seal(&mut no_tail, 1420), Err(SealError::NoRoom));
        assert_eq!(a.send_counter(), 0, "failed seals use no nonce");
        a.next_send = REJECT_AFTER_MESSAGES;
        let mut p = buf(b"x");
        assert_eq!(a.seal(&mut p, 1420), Err(SealError::Exhausted));
    }

    #[test]
    fn packetbuf_bounds() {
        assert!(PacketBuf::new(vec![0u8; 8], 4, 5).is_none());
        assert!(PacketBuf::new(vec![0u8; 8], usize::MAX, 2).is_none());
        let mut p = PacketBuf::new(vec![0u8; 8], 2, 4).unwrap();
        assert_eq!((p.headroom(), p.tailroom()), (2, 2));
        assert!(!p.set_bounds(7, 2));
        assert!(p.set_bounds(0, 8));
        p.truncate(3);
        assert_eq!(p.len(), 3);
    }
}
