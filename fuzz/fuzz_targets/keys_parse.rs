//! Key parsing never panics, and every key it accepts prints back as the
//! text it was parsed from (base64 is canonical; hex is case-insensitive).
#![no_main]

use corewire_dataplane::proto::keys::{PresharedKey, PrivateKey, PublicKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Valid UTF-8 as is; anything else through the lossy conversion, so the
    // parsers also see U+FFFD and other multi-byte characters.
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();

    if let Ok(key) = PublicKey::from_base64(text) {
        assert_eq!(key.to_base64(), text.trim());
    }
    if let Ok(key) = PrivateKey::from_base64(text) {
        assert_eq!(key.to_base64(), text.trim());
    }
    if let Ok(key) = PresharedKey::from_base64(text) {
        assert_eq!(key.to_base64(), text.trim());
    }

    if let Ok(key) = PublicKey::from_hex(text) {
        assert!(key.to_hex().eq_ignore_ascii_case(text));
    }
    if let Ok(key) = PrivateKey::from_hex(text) {
        assert!(key.to_hex().eq_ignore_ascii_case(text));
    }
    if let Ok(key) = PresharedKey::from_hex(text) {
        assert!(key.to_hex().eq_ignore_ascii_case(text));
    }
});
