//! The implementations under test and a tunnel with both ends running the
//! same one. How each implementation is launched is corewire-testkit's
//! `daemon` module (the recipes the namespace tests use too); here every
//! end runs in the foreground as our child inside its namespace, and is
//! configured by one `wg set` (gotatun 0.10.2 sometimes dies when a peer is
//! added right after the private key in a second `wg set`).

use std::net::Ipv4Addr;

use anyhow::{bail, Context as _, Result};
use corewire_testkit::{unique_ifname, wg_set_private_key, Keypair, Launch, WgDevice, WgImpl};

use super::preflight::Tools;
use super::topology::{Topology, VETH_A, VETH_B};

/// Tunnel addresses (a side, b side), /24.
pub const TUNNEL_A: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
pub const TUNNEL_B: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
/// The tunnel MTU on both ends.
pub const TUNNEL_MTU: u32 = corewire_dataplane::engine::limits::DEFAULT_MTU;
/// The WireGuard UDP port on both ends (each end in its own namespace).
pub const LISTEN_PORT: u16 = 51820;

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

    /// The WireGuard implementation (None for the veth).
    pub fn wg(self) -> Option<WgImpl> {
        match self {
            Impl::Corewire => Some(WgImpl::Corewire),
            Impl::WireguardGo => Some(WgImpl::WireguardGo),
            Impl::Boringtun => Some(WgImpl::Boringtun),
            Impl::Gotatun => Some(WgImpl::Gotatun),
            Impl::Veth => None,
        }
    }

    pub fn name(self) -> &'static str {
        self.wg().map_or("veth", WgImpl::name)
    }

    pub fn parse(name: &str) -> Option<Impl> {
        Impl::ALL.into_iter().find(|i| i.name() == name)
    }
}

/// What the traffic runs over: a tunnel between the namespaces, or the bare
/// veth. Dropping it tears the tunnel down (each end stops its daemon by
/// PID, deletes its link and a socket left behind).
#[derive(Debug)]
pub struct Tunnel {
    imp: Impl,
    /// Side a, then side b; empty for the veth.
    ends: Vec<WgDevice>,
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
        corewire_xdp: bool,
    ) -> Result<Tunnel> {
        let mut tunnel = Tunnel {
            imp,
            ends: Vec::new(),
        };
        let (Some(wg_impl), Some(binary)) = (imp.wg(), tools.binary(imp)) else {
            return Ok(tunnel);
        };
        for (ns, veth) in [&topo.a, &topo.b].into_iter().zip(topo.veth_names()) {
            let ifname = unique_ifname("cwb")?;
            let xdp: &[&str] = if corewire_xdp && imp == Impl::Corewire {
                &["--xdp", veth]
            } else {
                &[]
            };
            let end = wg_impl.launch_with(binary, ns, &ifname, Launch::Foreground, xdp)?;
            tunnel.ends.push(end);
        }
        let sides = [
            (&topo.a, &keys.0, &keys.1, TUNNEL_A, TUNNEL_B, VETH_B),
            (&topo.b, &keys.1, &keys.0, TUNNEL_B, TUNNEL_A, VETH_A),
        ];
        for (end, (ns, own, peer, addr, peer_addr, peer_veth)) in tunnel.ends.iter().zip(sides) {
            let ifname = end.ifname();
            let port = LISTEN_PORT.to_string();
            let allowed = format!("{peer_addr}/32");
            let endpoint = format!("{peer_veth}:{LISTEN_PORT}");
            let configure = || -> corewire_testkit::Result<()> {
                let args = [
                    "listen-port",
                    &port,
                    "peer",
                    &peer.public,
                    "allowed-ips",
                    &allowed,
                    "endpoint",
                    &endpoint,
                ];
                wg_set_private_key(ns, ifname, &own.private, &args)?;
                ns.ip_ok(&["addr", "add", &format!("{addr}/24"), "dev", ifname])?;
                let mtu = TUNNEL_MTU.to_string();
                ns.ip_ok(&["link", "set", ifname, "mtu", &mtu, "up"])?;
                Ok(())
            };
            configure().with_context(|| format!("{} {ifname}: configuring", imp.name()))?;
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
            [a, b] => Some((a.pid()?, b.pid()?)),
            _ => None,
        }
    }

    /// An error (with the end of its log) if a daemon has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        for end in &mut self.ends {
            if !end.is_running() {
                bail!(
                    "{} on {} exited; last log lines:\n{}",
                    self.imp.name(),
                    end.ifname(),
                    end.log_tail(15)
                );
            }
        }
        Ok(())
    }
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
}
