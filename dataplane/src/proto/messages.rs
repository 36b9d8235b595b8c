//! Wire formats: the four WireGuard messages as typed, zero-copy structs,
//! and every size and limit of the protocol in one place.
//!
//! Parsing never panics and never allocates: [`parse`] checks the type word
//! and the exact length for the type, and hands out references into the
//! datagram. Fields are byte arrays or little-endian integers, so the structs
//! have alignment 1 and can overlay any buffer.

use std::mem::{offset_of, size_of};

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::crypto::{MAC_LEN, TAG_LEN, XNONCE_LEN};
use super::keys::KEY_LEN;

/// Message type of a handshake initiation.
pub const TYPE_INITIATION: u32 = 1;
/// Message type of a handshake response.
pub const TYPE_RESPONSE: u32 = 2;
/// Message type of a cookie reply.
pub const TYPE_COOKIE_REPLY: u32 = 3;
/// Message type of a transport data message.
pub const TYPE_TRANSPORT: u32 = 4;

/// Length of a TAI64N timestamp.
pub const TIMESTAMP_LEN: usize = 12;
/// Length of the transport header: type, receiver index, counter.
pub const TRANSPORT_HEADER_LEN: usize = size_of::<TransportHeader>();
/// Smallest transport message: a header and the tag of an empty payload (a keepalive).
pub const TRANSPORT_MIN_LEN: usize = TRANSPORT_HEADER_LEN + TAG_LEN;
/// Plaintext is zero-padded to a multiple of this.
pub const PADDING_MULTIPLE: usize = 16;
/// Bytes a packet may need after its plaintext: padding up to 15 plus the tag.
pub const TAILROOM: usize = PADDING_MULTIPLE - 1 + TAG_LEN;
/// Bytes a packet needs before its plaintext for the transport header.
pub const HEADROOM: usize = TRANSPORT_HEADER_LEN;
/// Largest UDP payload corewire will parse or produce.
pub const MAX_DATAGRAM_LEN: usize = 65535 - 8;

/// Handshake initiation (type 1), 148 bytes.
#[derive(Debug, Clone, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Initiation {
    /// Type word: 1 then three zero bytes.
    pub msg_type: U32,
    /// The initiator's index for this handshake.
    pub sender: U32,
    /// The initiator's ephemeral public key.
    pub ephemeral: [u8; KEY_LEN],
    /// The initiator's static public key, sealed.
    pub encrypted_static: [u8; KEY_LEN + TAG_LEN],
    /// TAI64N timestamp, sealed.
    pub encrypted_timestamp: [u8; TIMESTAMP_LEN + TAG_LEN],
    /// MAC keyed with the responder's public key.
    pub mac1: [u8; MAC_LEN],
    /// MAC keyed with a cookie, or zeros.
    pub mac2: [u8; MAC_LEN],
}

/// Handshake response (type 2), 92 bytes.
#[derive(Debug, Clone, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Response {
    /// Type word: 2 then three zero bytes.
    pub msg_type: U32,
    /// The responder's index for this session.
    pub sender: U32,
    /// The initiator's index, echoed.
    pub receiver: U32,
    /// The responder's ephemeral public key.
    pub ephemeral: [u8; KEY_LEN],
    /// An empty plaintext, sealed: proves the responder derived the keys.
    pub encrypted_nothing: [u8; TAG_LEN],
    /// MAC keyed with the initiator's public key.
    pub mac1: [u8; MAC_LEN],
    /// MAC keyed with a cookie, or zeros.
    pub mac2: [u8; MAC_LEN],
}

/// Cookie reply (type 3), 64 bytes.
#[derive(Debug, Clone, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct CookieReply {
    /// Type word: 3 then three zero bytes.
    pub msg_type: U32,
    /// The sender index of the message that triggered the reply.
    pub receiver: U32,
    /// Random XChaCha20 nonce.
    pub nonce: [u8; XNONCE_LEN],
    /// The cookie, sealed with the mac1 of the triggering message as AAD.
    pub encrypted_cookie: [u8; MAC_LEN + TAG_LEN],
}

/// Header of a transport message (type 4); ciphertext and tag follow.
#[derive(Debug, Clone, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct TransportHeader {
    /// Type word: 4 then three zero bytes.
    pub msg_type: U32,
    /// The receiver's session index.
    pub receiver: U32,
    /// The nonce counter.
    pub counter: U64,
}

/// Size of a handshake initiation.
pub const INITIATION_LEN: usize = size_of::<Initiation>();
/// Size of a handshake response.
pub const RESPONSE_LEN: usize = size_of::<Response>();
/// Size of a cookie reply.
pub const COOKIE_REPLY_LEN: usize = size_of::<CookieReply>();

const _: () = assert!(INITIATION_LEN == 148);
const _: () = assert!(RESPONSE_LEN == 92);
const _: () = assert!(COOKIE_REPLY_LEN == 64);
const _: () = assert!(TRANSPORT_HEADER_LEN == 16);
const _: () = assert!(offset_of!(Initiation, mac1) == 116);
const _: () = assert!(offset_of!(Response, mac1) == 60);

/// A handshake message that carries mac1 and mac2 at its end.
pub trait MacProtected: IntoBytes + Immutable {
    /// Offset of mac1: everything before it is covered by mac1.
    const MAC1_OFFSET: usize;
    /// Offset of mac2: everything before it is covered by mac2.
    const MAC2_OFFSET: usize = Self::MAC1_OFFSET + MAC_LEN;
    /// The sender index, to address a cookie reply.
    fn sender(&self) -> u32;
    /// The mac1 field.
    fn mac1(&self) -> &[u8; MAC_LEN];
    /// The mac1 field, writable.
    fn mac1_mut(&mut self) -> &mut [u8; MAC_LEN];
    /// The mac2 field, writable.
    fn mac2_mut(&mut self) -> &mut [u8; MAC_LEN];
    /// The mac2 field.
    fn mac2(&self) -> &[u8; MAC_LEN];
}

/// Both handshake messages carry `sender`, `mac1` and `mac2` under the same
/// names, so one implementation serves them.
macro_rules! mac_protected {
    ($msg:ident) => {
        impl MacProtected for $msg {
            const MAC1_OFFSET: usize = offset_of!($msg, mac1);
            fn sender(&self) -> u32 {
                self.sender.get()
            }
            fn mac1(&self) -> &[u8; MAC_LEN] {
                &self.mac1
            }
            fn mac1_mut(&mut self) -> &mut [u8; MAC_LEN] {
                &mut self.mac1
            }
            fn mac2_mut(&mut self) -> &mut [u8; MAC_LEN] {
                &mut self.mac2
            }
            fn mac2(&self) -> &[u8; MAC_LEN] {
                &self.mac2
            }
        }
    };
}
mac_protected!(Initiation);
mac_protected!(Response);

/// A small datagram the core asks to send: a handshake message, a cookie
/// reply or a keepalive. Owned and inline (148 bytes at most), so producing
/// one allocates nothing.
#[derive(Clone)]
pub struct ControlMsg {
    bytes: [u8; INITIATION_LEN],
    len: u8,
}

impl ControlMsg {
    /// Copies a message (at most 148 bytes) in.
    pub fn new(msg: &[u8]) -> Self {
        let mut bytes = [0u8; INITIATION_LEN];
        let len = msg.len().min(INITIATION_LEN);
        bytes[..len].copy_from_slice(&msg[..len]);
        Self {
            bytes,
            len: len as u8,
        }
    }

    /// The datagram's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The message type word of the datagram.
    pub fn msg_type(&self) -> u32 {
        u32::from(self.bytes[0])
    }
}

impl std::fmt::Debug for ControlMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ControlMsg(type {}, {} bytes)", self.bytes[0], self.len)
    }
}

/// Why a datagram is not a WireGuard message. Each is counted by the
/// engine and the datagram is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than the 4-byte type word.
    #[error("datagram shorter than a message type")]
    TooShort,
    /// Type byte not 1..=4, or the three reserved bytes not zero.
    #[error("unknown message type")]
    UnknownType,
    /// Length does not match the message type.
    #[error("wrong length for the message type")]
    BadLength,
}

/// A parsed datagram: references into the caller's bytes.
#[derive(Debug)]
pub enum Message<'a> {
    /// Handshake initiation.
    Initiation(&'a Initiation),
    /// Handshake response.
    Response(&'a Response),
    /// Cookie reply.
    CookieReply(&'a CookieReply),
    /// Transport data: header, then ciphertext with tag (at least 16 bytes).
    Transport(&'a TransportHeader, &'a [u8]),
}

/// The message type of a datagram, checking only the type word.
pub fn message_type(datagram: &[u8]) -> Result<u32, ParseError> {
    let word = datagram.get(..4).ok_or(ParseError::TooShort)?;
    let t = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
    match t {
        TYPE_INITIATION..=TYPE_TRANSPORT => Ok(t),
        _ => Err(ParseError::UnknownType),
    }
}

/// Parses one datagram, checking the type word and the exact size.
pub fn parse(datagram: &[u8]) -> Result<Message<'_>, ParseError> {
    fn exact<T: FromBytes + KnownLayout + Immutable>(d: &[u8]) -> Result<&T, ParseError> {
        T::ref_from_bytes(d).map_err(|_| ParseError::BadLength)
    }
    match message_type(datagram)? {
        TYPE_INITIATION => exact(datagram).map(Message::Initiation),
        TYPE_RESPONSE => exact(datagram).map(Message::Response),
        TYPE_COOKIE_REPLY => exact(datagram).map(Message::CookieReply),
        _ => {
            if datagram.len() < TRANSPORT_MIN_LEN || datagram.len() > MAX_DATAGRAM_LEN {
                return Err(ParseError::BadLength);
            }
            let (header, body) =
                TransportHeader::ref_from_prefix(datagram).map_err(|_| ParseError::BadLength)?;
            Ok(Message::Transport(header, body))
        }
    }
}

/// The receiver index of a transport message, or `None` if the datagram is
/// not a well-formed transport message. This is the hot-path check the
/// engine uses to pick the owning peer before decrypting in place.
#[inline]
pub fn transport_receiver(datagram: &[u8]) -> Option<u32> {
    if datagram.len() < TRANSPORT_MIN_LEN || datagram.len() > MAX_DATAGRAM_LEN {
        return None;
    }
    let (header, _) = TransportHeader::ref_from_prefix(datagram).ok()?;
    (header.msg_type.get() == TYPE_TRANSPORT).then(|| header.receiver.get())
}

/// Length of `len` bytes of plaintext once padded (capped at `mtu` when the
/// unpadded packet already fits it, as the kernel does).
#[inline]
pub fn padded_len(len: usize, mtu: usize) -> usize {
    let padded = len.next_multiple_of(PADDING_MULTIPLE);
    if len <= mtu {
        padded.min(mtu)
    } else {
        padded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_offsets_match_the_protocol() {
        assert_eq!(<Initiation as MacProtected>::MAC2_OFFSET, 132);
        assert_eq!(<Response as MacProtected>::MAC2_OFFSET, 76);
        assert_eq!(offset_of!(Initiation, ephemeral), 8);
        assert_eq!(offset_of!(Initiation, encrypted_static), 40);
        assert_eq!(offset_of!(Initiation, encrypted_timestamp), 88);
        assert_eq!(offset_of!(Response, receiver), 8);
        assert_eq!(offset_of!(Response, ephemeral), 12);
        assert_eq!(offset_of!(Response, encrypted_nothing), 44);
        assert_eq!(offset_of!(CookieReply, nonce), 8);
        assert_eq!(offset_of!(CookieReply, encrypted_cookie), 32);
    }

    #[test]
    fn parse_accepts_exact_sizes_only() {
        let mut init = [0u8; INITIATION_LEN];
        init[0] = 1;
        assert!(matches!(parse(&init), Ok(Message::Initiation(_))));
        assert_eq!(parse(&init[..147]).unwrap_err(), ParseError::BadLength);
        let mut longer = [0u8; INITIATION_LEN + 1];
        longer[0] = 1;
        assert_eq!(parse(&longer).unwrap_err(), ParseError::BadLength);

        let mut resp = [0u8; RESPONSE_LEN];
        resp[0] = 2;
        assert!(matches!(parse(&resp), Ok(Message::Response(_))));
        let mut cookie = [0u8; COOKIE_REPLY_LEN];
        cookie[0] = 3;
        assert!(matches!(parse(&cookie), Ok(Message::CookieReply(_))));

        let mut ka = [0u8; TRANSPORT_MIN_LEN];
        ka[0] = 4;
        ka[4..8].copy_from_slice(&77u32.to_le_bytes());
        match parse(&ka) {
            Ok(Message::Transport(h, body)) => {
                assert_eq!(h.receiver.get(), 77);
                assert_eq!(body.len(), TAG_LEN);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(transport_receiver(&ka), Some(77));
        assert_eq!(parse(&ka[..31]).unwrap_err(), ParseError::BadLength);
        assert_eq!(transport_receiver(&ka[..31]), None);
    }

    #[test]
    fn parse_rejects_bad_type_words() {
        assert_eq!(parse(&[]).unwrap_err(), ParseError::TooShort);
        assert_eq!(parse(&[1, 0, 0]).unwrap_err(), ParseError::TooShort);
        let mut m = [0u8; INITIATION_LEN];
        for bad in [0u8, 5, 255] {
            m[0] = bad;
            assert_eq!(parse(&m).unwrap_err(), ParseError::UnknownType);
        }
        m[0] = 1;
        m[2] = 1; // reserved bytes must be zero
        assert_eq!(parse(&m).unwrap_err(), ParseError::UnknownType);
        let mut t = [0u8; 64];
        t[0] = 4;
        t[3] = 1;
        assert_eq!(transport_receiver(&t), None);
    }

    #[test]
    fn padding() {
        assert_eq!(padded_len(0, 1420), 0);
        assert_eq!(padded_len(1, 1420), 16);
        assert_eq!(padded_len(16, 1420), 16);
        assert_eq!(padded_len(17, 1420), 32);
        // Never pad past the MTU when the packet fits it.
        assert_eq!(padded_len(1419, 1420), 1420);
        assert_eq!(padded_len(1415, 1419), 1419);
        // A packet over the MTU (GSO segments never are) is padded normally.
        assert_eq!(padded_len(1421, 1420), 1424);
    }
}
