//! Before anything is created: root, /dev/net/tun, and every tool the chosen
//! implementations and cases need, found on disk. One message lists all that
//! is missing and how to install it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use corewire_testkit::{find_binary, WgImpl};

use super::impls::Impl;

/// Paths of the programs a run uses.
#[derive(Debug, Clone)]
pub struct Tools {
    pub ip: PathBuf,
    pub wg: PathBuf,
    /// Only when a case needs it (netbench's).
    pub iperf3: Option<PathBuf>,
    pub wireguard_go: Option<PathBuf>,
    pub boringtun: Option<PathBuf>,
    pub gotatun: Option<PathBuf>,
    pub corewire: Option<PathBuf>,
}

impl Tools {
    /// The daemon binary of a tunnel implementation (None for `veth`).
    pub fn binary(&self, imp: Impl) -> Option<&Path> {
        imp.wg().and_then(|wg| self.daemon(wg))
    }

    /// The daemon binary of a WireGuard implementation, if checked.
    pub fn daemon(&self, imp: WgImpl) -> Option<&Path> {
        match imp {
            WgImpl::Corewire => self.corewire.as_deref(),
            WgImpl::WireguardGo => self.wireguard_go.as_deref(),
            WgImpl::Boringtun => self.boringtun.as_deref(),
            WgImpl::Gotatun => self.gotatun.as_deref(),
        }
    }
}

/// The workspace root this binary was built from (for `.tools/bin` and
/// `target/release`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// Checks everything netbench needs; `corewire` overrides where the
/// corewire binary is.
pub fn check(impls: &[Impl], corewire: Option<PathBuf>) -> Result<Tools> {
    let wg: Vec<WgImpl> = impls.iter().filter_map(|i| i.wg()).collect();
    check_for("netbench", &wg, true, corewire)
}

/// Checks what `program` needs: root, TUN, `ip` and `wg`, iperf3 if
/// `iperf3`, and the daemons of `impls`.
pub fn check_for(
    program: &str,
    impls: &[WgImpl],
    iperf3: bool,
    corewire: Option<PathBuf>,
) -> Result<Tools> {
    let mut problems: Vec<String> = Vec::new();
    if effective_uid() != 0 {
        problems.push(format!(
            "{program} must run as root: it creates network namespaces, veth links and TUN \
             devices (run it from a root shell, or sudo the built target/release/{program})"
        ));
    }
    if !impls.is_empty() && !Path::new("/dev/net/tun").exists() {
        problems.push("no /dev/net/tun: the tunnel implementations need TUN devices".to_owned());
    }
    let root = workspace_root();
    let tools_dir = root.join(".tools/bin");
    let mut need = |file: &str, dirs: &[PathBuf], hint: &str| -> Option<PathBuf> {
        let found = find_binary(file, dirs);
        if found.is_none() {
            problems.push(format!("`{file}` not found: {hint}"));
        }
        found
    };
    let ip = need("ip", &[], "apt-get install iproute2");
    let wg = need("wg", &[], "apt-get install wireguard-tools");
    let iperf3 = iperf3
        .then(|| need("iperf3", &[], "apt-get install iperf3"))
        .flatten();
    let uses = |i: WgImpl| impls.contains(&i);
    let cargo_tools = "cargo install --root .tools --locked boringtun-cli gotatun-cli \
                       (run in the workspace root; the benchmarks look in ./.tools/bin, then PATH)";
    let wireguard_go = uses(WgImpl::WireguardGo)
        .then(|| need("wireguard-go", &[], "apt-get install wireguard-go"))
        .flatten();
    let boringtun = uses(WgImpl::Boringtun)
        .then(|| {
            need(
                "boringtun-cli",
                std::slice::from_ref(&tools_dir),
                cargo_tools,
            )
        })
        .flatten();
    let gotatun = uses(WgImpl::Gotatun)
        .then(|| need("gotatun", std::slice::from_ref(&tools_dir), cargo_tools))
        .flatten();
    let corewire = if uses(WgImpl::Corewire) {
        let candidate = corewire.unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target"));
            target.join("release/corewire")
        });
        if candidate.is_file() {
            Some(candidate)
        } else {
            problems.push(format!(
                "corewire not found at {}: build it with `cargo build --release -p corewire` \
                 (or pass --corewire PATH)",
                candidate.display()
            ));
            None
        }
    } else {
        None
    };
    if !problems.is_empty() {
        // The apt packages named in the problems, for one command.
        let packages: Vec<&str> = problems
            .iter()
            .filter_map(|p| p.split_once("apt-get install "))
            .filter_map(|(_, rest)| rest.split_whitespace().next())
            .collect();
        let apt = if packages.len() > 1 {
            format!(
                "\n(all apt packages at once: apt-get install {})",
                packages.join(" ")
            )
        } else {
            String::new()
        };
        bail!("cannot start:\n  - {}{apt}", problems.join("\n  - "));
    }
    match (ip, wg) {
        (Some(ip), Some(wg)) => Ok(Tools {
            ip,
            wg,
            iperf3,
            wireguard_go,
            boringtun,
            gotatun,
            corewire,
        }),
        _ => bail!("cannot start: a required tool is missing"),
    }
}
