//! Compiles the eBPF programs in `src/bpf/` with clang into `OUT_DIR`,
//! where `src/*.rs` embed them. Rust-written eBPF would need rust-src and a
//! nightly toolchain; C needs clang and the kernel's and libbpf's headers.
//!
//! The compiler is `$CLANG`, else the first of `clang-19` and `clang` found.
//! Without one the build stops with a single line saying what to install.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const PROGRAMS: [&str; 3] = ["steer_udp", "steer_tun", "xdp_guard"];
const INSTALL: &str = "scripts/install-deps.sh (or: apt-get install --no-install-recommends clang-19 libbpf-dev linux-libc-dev)";

fn clang() -> Option<String> {
    if let Ok(c) = env::var("CLANG") {
        return Some(c);
    }
    ["clang-19", "clang"]
        .into_iter()
        .map(String::from)
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

/// Fails the build with `msg` as its one error line (cargo fails a build
/// script that printed `cargo::error`, with no dump of its output).
fn fail(msg: &str) -> ! {
    println!("cargo::error={msg}");
    std::process::exit(0);
}

fn main() {
    println!("cargo::rerun-if-changed=src/bpf");
    println!("cargo::rerun-if-env-changed=CLANG");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let Some(clang) = clang() else {
        fail(&format!(
            "clang not found (it builds the eBPF programs): run {INSTALL}"
        ));
    };
    // Debian keeps asm/ headers under the multiarch directory.
    let multiarch = format!(
        "/usr/include/{}-linux-gnu",
        env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default()
    );
    for name in PROGRAMS {
        let src = Path::new("src/bpf").join(format!("{name}.c"));
        let obj = out.join(format!("{name}.o"));
        let result = Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
            .arg(format!("-I{multiarch}"))
            .arg("-c")
            .arg(&src)
            .arg("-o")
            .arg(&obj)
            .output();
        match result {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                let stderr = String::from_utf8_lossy(&o.stderr);
                if stderr.contains("file not found") {
                    fail(&format!(
                        "kernel or libbpf headers missing for {}: run {INSTALL}",
                        src.display()
                    ));
                }
                let first = stderr.lines().find(|l| l.contains("error")).unwrap_or("");
                fail(&format!("clang failed on {}: {first}", src.display()));
            }
            Err(e) => fail(&format!("cannot run {clang} ({e}): run {INSTALL}")),
        }
    }
}
