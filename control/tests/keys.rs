//! Runs the built `corewire` binary: key commands, their refusals, and
//! byte-for-byte compatibility with `wg` from wireguard-tools.
//!
//! The `wg` comparison fails when `wg` is missing (scripts/test.sh installs
//! it) unless `COREWIRE_SKIP_WG=1` is set.

// A test crate: its helpers (outside `#[test]` functions, where clippy's
// allow-unwrap-in-tests does not reach) fail the test by panicking.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

const COREWIRE: &str = env!("CARGO_BIN_EXE_corewire");

/// RFC 7748 section 6.1, Alice's key pair.
const RFC7748_PRIVATE_HEX: &str =
    "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
const RFC7748_PUBLIC_HEX: &str = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";

fn hex_to_bytes(hex: &str) -> Vec<u8> {
    assert_eq!(hex.len() % 2, 0);
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn hex_to_base64(hex: &str) -> String {
    BASE64.encode(hex_to_bytes(hex))
}

/// Runs `program args...` with `stdin` fed in, and waits for it.
fn run(program: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    // Do not fail on a closed pipe: a command may refuse before reading.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}

fn corewire(args: &[&str], stdin: &[u8]) -> Output {
    run(Path::new(COREWIRE), args, stdin)
}

fn stdout_text(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr_text(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// Checks a successful key command's output: one line of 44 base64
/// characters decoding to 32 bytes. Returns the bytes.
fn assert_key_line(out: &Output) -> [u8; 32] {
    assert!(out.status.success(), "failed: {}", stderr_text(out));
    let text = stdout_text(out);
    assert!(text.ends_with('\n'), "no trailing newline: {text:?}");
    let line = text.strip_suffix('\n').unwrap();
    assert_eq!(line.len(), 44, "not 44 characters: {line:?}");
    assert!(!line.contains('\n'));
    BASE64.decode(line).unwrap().try_into().unwrap()
}

fn is_clamped(key: &[u8; 32]) -> bool {
    key[0] & 7 == 0 && key[31] & 0x80 == 0 && key[31] & 0x40 != 0
}

#[test]
fn genkey_prints_clamped_base64_keys() {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..8 {
        let key = assert_key_line(&corewire(&["genkey"], b""));
        assert!(is_clamped(&key), "{key:?}");
        assert!(seen.insert(key), "repeated key");
    }
}

#[test]
fn genpsk_prints_random_base64_keys() {
    let mut seen = std::collections::HashSet::new();
    let mut any_unclamped = false;
    for _ in 0..16 {
        let key = assert_key_line(&corewire(&["genpsk"], b""));
        any_unclamped |= !is_clamped(&key);
        assert!(seen.insert(key), "repeated key");
    }
    // 16 random keys are all clamped-looking with probability 2^-64.
    assert!(any_unclamped, "genpsk output looks clamped");
}

#[test]
fn pubkey_matches_rfc7748() {
    let private = hex_to_base64(RFC7748_PRIVATE_HEX);
    let public = hex_to_base64(RFC7748_PUBLIC_HEX);
    for input in [
        private.clone(),
        format!("{private}\n"),
        format!("{private}\r\n"),
        format!(" \t{private}\n\n "),
    ] {
        let out = corewire(&["pubkey"], input.as_bytes());
        assert!(out.status.success(), "{input:?}: {}", stderr_text(&out));
        assert_eq!(stdout_text(&out), format!("{public}\n"), "{input:?}");
        assert!(out.stderr.is_empty());
    }
}

#[test]
fn pubkey_of_genkey_round_trips() {
    let private = corewire(&["genkey"], b"");
    assert_key_line(&private);
    let public = corewire(&["pubkey"], &private.stdout);
    assert_key_line(&public);
}

#[test]
fn pubkey_refuses_bad_input() {
    let good = hex_to_base64(RFC7748_PRIVATE_HEX);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("whitespace only", b" \n".to_vec()),
        ("short", good.as_bytes()[..43].to_vec()),
        ("garbage", b"hello, world".to_vec()),
        ("45 chars", format!("{good}A").into_bytes()),
        ("44 chars, no padding", good.replace('=', "A").into_bytes()),
        (
            "44 chars, not base64",
            [b'!'; 43].iter().chain(b"=").copied().collect(),
        ),
        ("non-canonical", format!("{}p=", &good[..42]).into_bytes()),
        ("hex form", RFC7748_PRIVATE_HEX.as_bytes().to_vec()),
        ("two keys", format!("{good}\n{good}\n").into_bytes()),
        ("binary", vec![0xff; 44]),
        ("too long", vec![b' '; 10_000]),
    ];
    for (name, input) in cases {
        let out = corewire(&["pubkey"], &input);
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert!(out.stdout.is_empty(), "{name}: stdout {:?}", out.stdout);
        let err = stderr_text(&out);
        assert!(err.starts_with("corewire pubkey: "), "{name}: {err:?}");
        assert!(
            err.ends_with('\n') && err.lines().count() == 1,
            "{name}: {err:?}"
        );
        // The input is a would-be secret: never echo it.
        assert!(!err.contains(&good[..43]), "{name}: {err:?}");
    }
}

#[test]
fn genkey_warns_when_stdout_file_is_world_accessible() {
    let dir = std::env::temp_dir().join(format!("corewire-keys-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (mode, warns) in [(0o644, true), (0o604, true), (0o600, false), (0o640, false)] {
        for cmd in ["genkey", "genpsk"] {
            let path = dir.join(format!("{cmd}-{mode:o}"));
            let _ = std::fs::remove_file(&path);
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&path)
                .unwrap();
            // The umask may have cleared bits; set them exactly.
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .unwrap();
            let out = Command::new(COREWIRE)
                .arg(cmd)
                .stdout(file)
                .stderr(Stdio::piped())
                .output()
                .unwrap();
            assert!(out.status.success());
            let err = stderr_text(&out);
            assert_eq!(
                err.contains("world-accessible"),
                warns,
                "{cmd} {mode:o}: {err:?}"
            );
            let written = std::fs::read_to_string(&path).unwrap();
            assert_eq!(written.len(), 45, "{cmd} {mode:o}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn version_prints_name_and_version() {
    let out = corewire(&["--version"], b"");
    assert!(out.status.success());
    assert_eq!(
        stdout_text(&out),
        format!("corewire {}\n", env!("CARGO_PKG_VERSION"))
    );
}

/// A bad interface name fails before anything is created, with a one-line
/// reason, in the foreground and through the daemonizing launcher alike
/// (the name is invalid, so no device or socket can result from this test).
#[test]
fn daemon_refuses_a_bad_interface_name() {
    for args in [
        &["bad/name"][..],
        &["-f", "--threads", "2", "--no-ebpf", "bad/name"][..],
        &["-f", "this-name-is-far-too-long"][..],
    ] {
        let out = corewire(args, b"");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty());
        let err = stderr_text(&out);
        assert!(err.contains("corewire"), "{err:?}");
        assert!(err.contains("name"), "{err:?}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
    }
}

/// Finds `wg` on PATH.
fn find_wg() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("wg"))
        .find(|p| p.is_file())
}

/// `wg`, or `None` if it is missing and `COREWIRE_SKIP_WG=1` allows that.
fn wg_or_skip(test: &str) -> Option<PathBuf> {
    if let Some(wg) = find_wg() {
        return Some(wg);
    }
    if std::env::var("COREWIRE_SKIP_WG").as_deref() == Ok("1") {
        eprintln!("{test}: skipped: `wg` not found and COREWIRE_SKIP_WG=1");
        return None;
    }
    panic!(
        "`wg` not found on PATH: install wireguard-tools (scripts/test.sh does), \
         or set COREWIRE_SKIP_WG=1 to skip the compatibility tests"
    );
}

#[test]
fn pubkey_matches_wg_byte_for_byte() {
    let Some(wg) = wg_or_skip("pubkey_matches_wg_byte_for_byte") else {
        return;
    };
    let mut inputs: Vec<Vec<u8>> =
        vec![format!("{}\n", hex_to_base64(RFC7748_PRIVATE_HEX)).into_bytes()];
    for _ in 0..16 {
        inputs.push(corewire(&["genkey"], b"").stdout);
        inputs.push(run(&wg, &["genkey"], b"").stdout);
        // Unclamped private keys: both must clamp the same way.
        inputs.push(corewire(&["genpsk"], b"").stdout);
    }
    for input in &inputs {
        let ours = corewire(&["pubkey"], input);
        let theirs = run(&wg, &["pubkey"], input);
        assert!(theirs.status.success(), "wg pubkey failed on {input:?}");
        assert!(ours.status.success(), "{}", stderr_text(&ours));
        assert_eq!(ours.stdout, theirs.stdout, "input {input:?}");
    }
}

#[test]
fn wg_accepts_corewire_keys_and_refuses_what_corewire_refuses() {
    let Some(wg) = wg_or_skip("wg_accepts_corewire_keys_and_refuses_what_corewire_refuses") else {
        return;
    };
    // Output format of genkey/genpsk equals wg's: wg can read it back.
    for cmd in ["genkey", "genpsk"] {
        let ours = corewire(&[cmd], b"");
        let theirs = run(&wg, &[cmd], b"");
        assert_eq!(ours.stdout.len(), theirs.stdout.len(), "{cmd}");
        assert!(
            run(&wg, &["pubkey"], &ours.stdout).status.success(),
            "{cmd}"
        );
    }
    // Inputs both refuse (wg tolerates only trailing whitespace; corewire
    // also tolerates leading whitespace, so that is not compared here).
    let good = hex_to_base64(RFC7748_PRIVATE_HEX);
    for input in [
        String::new(),
        good[..43].to_string(),
        format!("{good}A"),
        good.replace('=', "A"),
        format!("{good}\n{good}\n"),
        format!("{}p=", &good[..42]),
        RFC7748_PRIVATE_HEX.to_string(),
    ] {
        let ours = corewire(&["pubkey"], input.as_bytes());
        let theirs = run(&wg, &["pubkey"], input.as_bytes());
        assert_eq!(ours.status.code(), Some(1), "{input:?}");
        assert_eq!(theirs.status.code(), Some(1), "{input:?}");
        assert!(ours.stdout.is_empty() && theirs.stdout.is_empty());
    }
}
