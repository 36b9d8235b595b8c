//! The implementations under test, how each is launched, and a tunnel with
//! both ends running the same one.
//!
//! Launch recipes (the same as `control/tests/netns/mod.rs`, `WgImpl`), each
//! in the foreground as our child inside its namespace:
//! - corewire: `corewire -f IF`;
//! - wireguard-go: `wireguard-go -f IF`, `LOG_LEVEL=error`;
//! - boringtun: `boringtun-cli -f --disable-drop-privileges IF` with
//!   `WG_SUDO=true` (as root without a login, dropping privileges fails);
//! - gotatun: `gotatun -f --disable-drop-privileges IF` with `WG_SUDO=true`.
//!
//! boringtun and gotatun get a private `WG_LOG_FILE` (their default in /tmp
//! is shared). Every implementation runs with its default thread count.
//! Each end is configured by one `wg set` (gotatun 0.10.2 sometimes dies when
//! a peer is added right after the private key in a second `wg set`).

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use super::netns::{Netns, Topology, VETH_A, VETH_B};
use super::preflight::Tools;
use super::process::{self, command, next_id, run_ok, wait_until, Proc, ScratchDir};

/// Where every userspace implementation puts `<ifname>.sock`.
pub const SOCKET_DIR: &str = "/var/run/wireguard";
/// Tunnel addresses (a side, b side), /24.
pub const TUNNEL_A: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
pub const TUNNEL_B: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
/// The tunnel MTU on both ends.
pub const TUNNEL_MTU: u32 = 1420;
/// The WireGuard UDP port on both ends (each end in its own namespace).
pub const LISTEN_PORT: u16 = 51820;
/// How long an implementation gets to create its TUN device and socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// An implementation under test, or the bare veth baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Impl {
    Corewire,
    WireguardGo,
    Boringtun,
    Gotatun,
    /// No tunnel: the veth link itself.
    Veth,
}

impl Impl {
    pub const ALL: [Impl; 5] = [
        Impl::Corewire,
        Impl::WireguardGo,
        Impl::Boringtun,
        Impl::Gotatun,
        Impl::Veth,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Impl::Corewire => "corewire",
            Impl::WireguardGo => "wireguard-go",
            Impl::Boringtun => "boringtun",
            Impl::Gotatun => "gotatun",
            Impl::Veth => "veth",
        }
    }

    pub fn parse(name: &str) -> Option<Impl> {
        Impl::ALL.into_iter().find(|i| i.name() == name)
    }

    /// Arguments and environment of the foreground launch on `ifname`.
    fn launch(self, ifname: &str, log: &Path) -> (Vec<String>, Vec<(&'static str, String)>) {
        let ifname = ifname.to_owned();
        let quiet_rust = || {
            vec![
                // Exactly "true": boringtun's clap rejects "1".
                ("WG_SUDO", "true".to_owned()),
                ("WG_LOG_FILE", log.display().to_string()),
            ]
        };
        match self {
            Impl::Corewire => (vec!["-f".into(), ifname], Vec::new()),
            Impl::WireguardGo => (
                vec!["-f".into(), ifname],
                vec![("LOG_LEVEL", "error".to_owned())],
            ),
            Impl::Boringtun | Impl::Gotatun => (
                vec!["-f".into(), "--disable-drop-privileges".into(), ifname],
                quiet_rust(),
            ),
            Impl::Veth => (Vec::new(), Vec::new()),
        }
    }
}

/// A key pair from `wg genkey` / `wg pubkey` (base64).
#[derive(Debug, Clone)]
pub struct Keypair {
    pub private: String,
    pub public: String,
}

impl Keypair {
    pub fn generate(wg: &Path) -> Result<Keypair> {
        let private = run_ok(command(wg, &["genkey"]), None)?.trim().to_owned();
        let public = run_ok(
            command(wg, &["pubkey"]),
            Some(format!("{private}\n").as_bytes()),
        )?
        .trim()
        .to_owned();
        if private.is_empty() || public.is_empty() {
            bail!("wg genkey/pubkey printed nothing");
        }
        Ok(Keypair { private, public })
    }
}

/// One end of a tunnel: the daemon and its interface. Dropping it stops the
/// daemon by PID, deletes the link if it is left, and removes a dead socket.
#[derive(Debug)]
struct End {
    proc_: Proc,
    ns: String,
    ifname: String,
}

impl Drop for End {
    fn drop(&mut self) {
        self.proc_.stop();
        let link = command("ip", &["-n", &self.ns, "link", "del", &self.ifname]);
        let _ = process::run(link, None, process::COMMAND_TIMEOUT);
        let sock = socket_path(&self.ifname);
        if sock.exists() && UnixStream::connect(&sock).is_err() {
            let _ = std::fs::remove_file(sock);
        }
    }
}

/// What the traffic runs over: a tunnel between the namespaces, or the bare
/// veth. Dropping it tears the tunnel down.
#[derive(Debug)]
pub struct Tunnel {
    imp: Impl,
    /// Side a, then side b; empty for the veth.
    ends: Vec<End>,
}

impl Tunnel {
    /// Brings `imp` up on both sides (for `veth`: nothing to do). Returns
    /// once both daemons answer on their UAPI socket and are configured;
    /// the caller checks that traffic passes.
    pub fn up(
        topo: &Topology,
        imp: Impl,
        tools: &Tools,
        keys: &(Keypair, Keypair),
        scratch: &ScratchDir,
    ) -> Result<Tunnel> {
        let mut tunnel = Tunnel {
            imp,
            ends: Vec::new(),
        };
        let Some(binary) = tools.binary(imp) else {
            return Ok(tunnel);
        };
        for ns in [&topo.a, &topo.b] {
            let end = start_end(ns, imp, binary, scratch)?;
            tunnel.ends.push(end);
        }
        let sides = [
            (&topo.a, &keys.0, &keys.1, TUNNEL_A, TUNNEL_B, VETH_B),
            (&topo.b, &keys.1, &keys.0, TUNNEL_B, TUNNEL_A, VETH_A),
        ];
        for (end, (ns, own, peer, addr, peer_addr, peer_veth)) in tunnel.ends.iter().zip(sides) {
            configure_end(ns, tools, end, own, peer, addr, peer_addr, peer_veth)
                .with_context(|| format!("{} {}: configuring", imp.name(), end.ifname))?;
        }
        Ok(tunnel)
    }

    /// Where traffic from side a goes: side b's tunnel (or veth) address.
    pub fn target(&self) -> Ipv4Addr {
        if self.ends.is_empty() {
            VETH_B
        } else {
            TUNNEL_B
        }
    }

    /// The daemon PIDs of side a (tx) and side b (rx); None for the veth.
    pub fn pids(&self) -> Option<(u32, u32)> {
        match &self.ends[..] {
            [a, b] => Some((a.proc_.pid(), b.proc_.pid())),
            _ => None,
        }
    }

    /// An error (with the end of its log) if a daemon has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        for end in &mut self.ends {
            if !end.proc_.is_running() {
                bail!(
                    "{} on {} exited; last log lines:\n{}",
                    self.imp.name(),
                    end.ifname,
                    end.proc_.log_tail(15)
                );
            }
        }
        Ok(())
    }
}

/// `/var/run/wireguard/<ifname>.sock`.
fn socket_path(ifname: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{ifname}.sock"))
}

/// A fresh interface name `cwb<pid, 5 digits base 36><n base 36>` (at most 15
/// characters) whose UAPI socket does not exist yet.
fn unique_ifname() -> Result<String> {
    for _ in 0..1000 {
        // The PID is padded to 5 digits (36^5 > pid_max), so no two
        // (pid, counter) pairs give the same name.
        let name = format!("cwb{:0>5}{}", base36(std::process::id()), base36(next_id()));
        if name.len() <= 15 && !socket_path(&name).exists() {
            return Ok(name);
        }
    }
    bail!("no free interface name")
}

fn base36(mut n: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(char::from(DIGITS[(n % 36) as usize]));
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.iter().rev().collect()
}

fn start_end(ns: &Netns, imp: Impl, binary: &Path, scratch: &ScratchDir) -> Result<End> {
    let ifname = unique_ifname()?;
    let log = scratch.file(&format!("{}-{ifname}", imp.name()), "log");
    let wg_log = scratch.file(&format!("{}-{ifname}-wg", imp.name()), "log");
    let (args, env) = imp.launch(&ifname, &wg_log);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = ns.command(binary, &args);
    cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    let what = format!("{} {}", imp.name(), args.join(" "));
    let proc_ = Proc::spawn(cmd, &what, &log, &log)?;
    let mut end = End {
        proc_,
        ns: ns.name().to_owned(),
        ifname,
    };
    let mut died = false;
    let ready = wait_until(START_TIMEOUT, Duration::from_millis(20), || {
        died = !end.proc_.is_running();
        died || (ns.ip(&["link", "show", "dev", &end.ifname]).is_ok() && uapi_answers(&end.ifname))
    });
    if died || !ready {
        bail!(
            "{what} in {}: {} within {START_TIMEOUT:?}; last log lines:\n{}",
            ns.name(),
            if died {
                "exited"
            } else {
                "no link or no answering UAPI socket"
            },
            end.proc_.log_tail(15)
        );
    }
    Ok(end)
}

#[allow(clippy::too_many_arguments)]
fn configure_end(
    ns: &Netns,
    tools: &Tools,
    end: &End,
    own: &Keypair,
    peer: &Keypair,
    addr: Ipv4Addr,
    peer_addr: Ipv4Addr,
    peer_veth: Ipv4Addr,
) -> Result<()> {
    let port = LISTEN_PORT.to_string();
    let allowed = format!("{peer_addr}/32");
    let endpoint = format!("{peer_veth}:{LISTEN_PORT}");
    let cmd = ns.command(
        &tools.wg,
        &[
            "set",
            &end.ifname,
            "private-key",
            "/dev/stdin",
            "listen-port",
            &port,
            "peer",
            &peer.public,
            "allowed-ips",
            &allowed,
            "endpoint",
            &endpoint,
        ],
    );
    run_ok(cmd, Some(format!("{}\n", own.private).as_bytes()))?;
    ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", &end.ifname])?;
    ns.ip(&[
        "link",
        "set",
        &end.ifname,
        "mtu",
        &TUNNEL_MTU.to_string(),
        "up",
    ])?;
    Ok(())
}

/// Whether the interface's UAPI socket answers `get=1` with `errno=0`
/// within 2 s.
fn uapi_answers(ifname: &str) -> bool {
    let Ok(mut sock) = UnixStream::connect(socket_path(ifname)) else {
        return false;
    };
    let timeout = Some(Duration::from_secs(2));
    if sock.set_read_timeout(timeout).is_err()
        || sock.set_write_timeout(timeout).is_err()
        || sock.write_all(b"get=1\n\n").is_err()
    {
        return false;
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    // The connection stays open for more requests: stop at the errno line.
    while Instant::now() < deadline && reply.len() < (1 << 20) {
        let n = match sock.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply);
        if let Some(pos) = text.find("errno=") {
            if text.ends_with("\n\n") {
                return text[pos..].trim() == "errno=0";
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for imp in Impl::ALL {
            assert_eq!(Impl::parse(imp.name()), Some(imp));
        }
        assert_eq!(Impl::parse("kernel"), None);
    }

    #[test]
    fn base36_digits() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }
}
