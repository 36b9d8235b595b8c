//! Key types: X25519 private and public keys and preshared keys.
//!
//! Secrets zeroize themselves when dropped and never print their bytes:
//! `Debug` shows only the type name (and, for a private key, its public half,
//! which is what an operator needs to tell keys apart).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use rand_core::{OsRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length in bytes of every WireGuard key.
pub const KEY_LEN: usize = 32;

/// Why a key string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not 44 characters of base64 that decode to exactly 32 bytes.
    #[error("key is not the correct length or format (expected 44 characters of base64)")]
    Base64,
    /// Not exactly 64 hexadecimal digits.
    #[error("key is not the correct length or format (expected 64 hex digits)")]
    Hex,
}

fn decode_base64(text: &str) -> Result<[u8; KEY_LEN], KeyError> {
    let text = text.trim();
    // 32 bytes are exactly 44 base64 characters with one '=' of padding.
    if text.len() != 44 || !text.ends_with('=') {
        return Err(KeyError::Base64);
    }
    let mut out = [0u8; KEY_LEN];
    match BASE64.decode_slice(text, &mut out) {
        Ok(KEY_LEN) => Ok(out),
        _ => {
            out.zeroize();
            Err(KeyError::Base64)
        }
    }
}

fn decode_hex(text: &str) -> Result<[u8; KEY_LEN], KeyError> {
    let mut out = [0u8; KEY_LEN];
    if text.len() != 2 * KEY_LEN || hex::decode_to_slice(text, &mut out).is_err() {
        out.zeroize();
        return Err(KeyError::Hex);
    }
    Ok(out)
}

/// Clamps a scalar as Curve25519 requires (RFC 7748 section 5), which is
/// also what `wg genkey` stores.
pub fn clamp(bytes: &mut [u8; KEY_LEN]) {
    bytes[0] &= 248;
    bytes[31] &= 127;
    bytes[31] |= 64;
}

/// An X25519 private key. Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct PrivateKey([u8; KEY_LEN]);

impl PrivateKey {
    /// A fresh random, clamped key (what `wg genkey` prints).
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_LEN];
        OsRng.fill_bytes(&mut bytes);
        clamp(&mut bytes);
        Self(bytes)
    }

    /// Wraps raw bytes as given (X25519 clamps when it multiplies).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Parses the base64 form used by `wg` and config files.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode_base64(text).map(Self)
    }

    /// Parses the hex form used by the UAPI.
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        decode_hex(text).map(Self)
    }

    /// The raw bytes. Handle with care: they are the secret.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// True for the all-zero key, which the UAPI uses to mean "no key".
    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|&b| b == 0)
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes())
    }

    /// Base64 text of the key (for `genkey` output only; never log it).
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }

    /// Hex text of the key (for UAPI `get` output only; never log it).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey(public={})", self.public_key())
    }
}

/// An X25519 public key: a peer's identity.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    /// Wraps raw bytes.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Parses the base64 form used by `wg` and config files.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode_base64(text).map(Self)
    }

    /// Parses the hex form used by the UAPI.
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        decode_hex(text).map(Self)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Base64 text of the key.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }

    /// Hex text of the key (UAPI form).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

/// A preshared key mixed into the handshake (Noise `psk2`). Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq, Default)]
pub struct PresharedKey([u8; KEY_LEN]);

impl PresharedKey {
    /// A fresh random key (what `wg genpsk` prints; not clamped).
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_LEN];
        OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Wraps raw bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Parses the base64 form.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode_base64(text).map(Self)
    }

    /// Parses the hex form used by the UAPI.
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        decode_hex(text).map(Self)
    }

    /// The raw bytes. Handle with care: they are the secret.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// True for the all-zero key, which means "no preshared key".
    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|&b| b == 0)
    }

    /// Base64 text (for `genpsk` output only; never log it).
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }

    /// Hex text (for UAPI `get` output only; never log it).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PresharedKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_private_keys_are_clamped() {
        for _ in 0..32 {
            let k = PrivateKey::generate();
            let b = k.as_bytes();
            assert_eq!(b[0] & 7, 0);
            assert_eq!(b[31] & 128, 0);
            assert_eq!(b[31] & 64, 64);
        }
    }

    #[test]
    fn rfc7748_public_key() {
        // RFC 7748 section 6.1, Alice.
        let sk: [u8; 32] =
            hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
                .unwrap()
                .try_into()
                .unwrap();
        let pk = PrivateKey::from_bytes(sk).public_key();
        assert_eq!(
            pk.to_hex(),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }

    #[test]
    fn base64_and_hex_round_trip() {
        let k = PrivateKey::generate();
        assert_eq!(PrivateKey::from_base64(&k.to_base64()).unwrap(), k);
        assert_eq!(PrivateKey::from_hex(&k.to_hex()).unwrap(), k);
        let p = k.public_key();
        assert_eq!(PublicKey::from_base64(&p.to_base64()).unwrap(), p);
        assert_eq!(PublicKey::from_hex(&p.to_hex()).unwrap(), p);
    }

    #[test]
    fn malformed_keys_are_refused() {
        let good = PrivateKey::generate().to_base64();
        assert_eq!(
            PublicKey::from_base64(&good[..43]),
            Err(KeyError::Base64),
            "short"
        );
        assert!(PublicKey::from_base64(&format!("{good}A")).is_err());
        assert!(PublicKey::from_base64(&good.replace('=', "A")).is_err());
        assert!(PublicKey::from_base64("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!=").is_err());
        assert_eq!(PublicKey::from_hex("00"), Err(KeyError::Hex));
        assert!(PublicKey::from_hex(&"g".repeat(64)).is_err());
        assert!(PublicKey::from_hex(&"0".repeat(66)).is_err());
    }

    #[test]
    fn debug_never_prints_secrets() {
        let k = PrivateKey::generate();
        let psk = PresharedKey::generate();
        let shown = format!("{k:?} {psk:?}");
        assert!(!shown.contains(&k.to_base64()));
        assert!(!shown.contains(&k.to_hex()));
        assert!(!shown.contains(&psk.to_base64()));
        assert!(!shown.contains(&psk.to_hex()));
    }
}
