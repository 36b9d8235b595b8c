//! `corewire genkey`, `corewire pubkey` and `corewire genpsk`.
//!
//! Output is byte-compatible with `wg genkey`, `wg pubkey` and `wg genpsk`:
//! 44 characters of base64 and a newline. Secrets never appear in messages.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;

use anyhow::Context as _;
use corewire_dataplane::proto::keys::{PresharedKey, PrivateKey, PublicKey};
use zeroize::Zeroizing;

/// Length of a key in base64, as `wg` prints it.
const BASE64_KEY_LEN: usize = 44;

/// `pubkey` reads at most this many bytes of stdin; a key with any sane
/// amount of surrounding whitespace is far shorter. (`wg pubkey` reads until
/// end of file, so it never finishes on an endless stream; we refuse instead.)
const STDIN_LIMIT: u64 = 4096;

/// `corewire genkey`: a random clamped private key.
pub fn genkey() -> anyhow::Result<()> {
    warn_if_stdout_is_world_accessible("genkey");
    let key = PrivateKey::generate();
    print_secret_line(&key.to_base64())
}

/// `corewire genpsk`: 32 random bytes.
pub fn genpsk() -> anyhow::Result<()> {
    warn_if_stdout_is_world_accessible("genpsk");
    let key = PresharedKey::generate();
    print_secret_line(&key.to_base64())
}

/// `corewire pubkey`: private key on stdin, public key on stdout.
pub fn pubkey() -> anyhow::Result<()> {
    let mut input = Zeroizing::new(Vec::with_capacity(64));
    io::stdin()
        .lock()
        .take(STDIN_LIMIT + 1)
        .read_to_end(&mut input)
        .context("cannot read stdin")?;
    if input.len() as u64 > STDIN_LIMIT {
        anyhow::bail!(
            "stdin is longer than {STDIN_LIMIT} bytes, so it is not a private key; \
             pipe in one key as printed by `corewire genkey`"
        );
    }
    let public = public_key_from_input(&input)?;
    print_line(&public.to_base64())
}

/// Why `pubkey` refused its input. Messages describe the input without
/// quoting it, because it is meant to be a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PubkeyInputError {
    /// Nothing but whitespace.
    Empty,
    /// Not valid UTF-8, so certainly not base64.
    NotText,
    /// Looks like the 64-hex-digit UAPI form.
    Hex,
    /// Wrong number of characters after trimming whitespace.
    Length(usize),
    /// 44 characters, but not the base64 of 32 bytes.
    Format,
}

impl std::error::Error for PubkeyInputError {}

impl std::fmt::Display for PubkeyInputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const EXPECTED: &str = "expected 44 characters of base64 ending in '=', \
                                as printed by `corewire genkey` or `wg genkey`";
        match self {
            Self::Empty => write!(
                f,
                "stdin is empty; pipe a private key into it, e.g. `corewire genkey | corewire pubkey`"
            ),
            Self::NotText => write!(
                f,
                "stdin is not a base64 WireGuard private key (it is not text; {EXPECTED})"
            ),
            Self::Hex => write!(
                f,
                "stdin looks like a hex key (the UAPI form), not a base64 WireGuard private key \
                 ({EXPECTED}); convert it with `xxd -r -p | base64`"
            ),
            Self::Length(n) => write!(
                f,
                "stdin is not a base64 WireGuard private key (got {n} characters, {EXPECTED})"
            ),
            Self::Format => write!(
                f,
                "stdin is not a base64 WireGuard private key (44 characters, but not valid \
                 base64 of 32 bytes; {EXPECTED})"
            ),
        }
    }
}

/// Parses what `pubkey` read: one base64 private key, optionally surrounded
/// by whitespace (and NUL bytes, which `wg pubkey` also skips after the key).
pub fn public_key_from_input(input: &[u8]) -> Result<PublicKey, PubkeyInputError> {
    let text = std::str::from_utf8(input).map_err(|_| PubkeyInputError::NotText)?;
    let text = text.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\0');
    if text.is_empty() {
        return Err(PubkeyInputError::Empty);
    }
    let chars = text.chars().count();
    if chars != BASE64_KEY_LEN {
        if chars == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(PubkeyInputError::Hex);
        }
        return Err(PubkeyInputError::Length(chars));
    }
    let private = PrivateKey::from_base64(text).map_err(|_| PubkeyInputError::Format)?;
    Ok(private.public_key())
}

/// Writes `line` and a newline to stdout, reporting failures (such as a
/// closed pipe) instead of panicking.
fn print_line(line: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(line.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

/// Like [`print_line`], for a secret: the text is wiped after writing.
fn print_secret_line(line: &str) -> anyhow::Result<()> {
    let mut buf = Zeroizing::new(String::with_capacity(line.len() + 1));
    buf.push_str(line);
    buf.push('\n');
    let mut out = io::stdout().lock();
    out.write_all(buf.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

/// Warns, as `wg genkey` does, when stdout is a regular file that users
/// other than the owner may access.
fn warn_if_stdout_is_world_accessible(command: &str) {
    let Ok(fd) = io::stdout().as_fd().try_clone_to_owned() else {
        return;
    };
    let Ok(meta) = File::from(fd).metadata() else {
        return;
    };
    if meta.file_type().is_file() && meta.permissions().mode() & 0o007 != 0 {
        eprintln!(
            "corewire {command}: warning: writing to a world-accessible file; \
             set `umask 077` and create the file again"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC7748_PRIVATE: &str = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=";
    const RFC7748_PUBLIC: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";

    #[test]
    fn known_answer_with_surrounding_whitespace() {
        for input in [
            RFC7748_PRIVATE.to_string(),
            format!("{RFC7748_PRIVATE}\n"),
            format!("{RFC7748_PRIVATE}\r\n"),
            format!("  \t{RFC7748_PRIVATE} \n\n"),
            format!("{RFC7748_PRIVATE}\0\n"),
        ] {
            let public = public_key_from_input(input.as_bytes()).unwrap();
            assert_eq!(public.to_base64(), RFC7748_PUBLIC, "{input:?}");
        }
    }

    #[test]
    fn refusals_say_why() {
        use PubkeyInputError::*;
        let cases: [(&[u8], PubkeyInputError); 8] = [
            (b"", Empty),
            (b" \n\t", Empty),
            (b"\xff\xfe", NotText),
            (b"abc", Length(3)),
            (&[b'A'; 45], Length(45)),
            (&[b'a'; 64], Hex),
            (b"!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!=", Format),
            (b"dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCoA", Format),
        ];
        for (input, want) in cases {
            assert_eq!(public_key_from_input(input), Err(want), "{input:?}");
        }
        // Two keys are not one key.
        let two = format!("{RFC7748_PRIVATE}\n{RFC7748_PRIVATE}\n");
        assert_eq!(public_key_from_input(two.as_bytes()), Err(Length(89)));
    }

    #[test]
    fn messages_never_quote_the_input() {
        let secretish = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo";
        let err = public_key_from_input(secretish.as_bytes()).unwrap_err();
        assert!(!err.to_string().contains(secretish));
    }
}
