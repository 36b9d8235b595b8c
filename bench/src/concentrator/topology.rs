//! The hub, fleet and LAN namespaces (drawing in the module doc of
//! `concentrator`). Dropping it deletes the links, then stops what still
//! runs in each namespace (by PID) and deletes them.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use corewire_testkit::{Netns, Veth};

/// The fleet's end of the fleet veth (the hub routes the endpoints to it).
pub const FLEET_VETH: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
/// The hub's end of the fleet veth: where the hub listens.
pub const HUB_VETH: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 2);
/// The hub's WireGuard port.
pub const HUB_PORT: u16 = 51820;
/// The generator's UDP port (on every endpoint address).
pub const FLEET_PORT: u16 = 51821;
/// Endpoint addresses: peer i sends from `ENDPOINT_BASE + 1 + i`.
pub const ENDPOINT_BASE: Ipv4Addr = Ipv4Addr::new(10, 90, 0, 0);
/// Tunnel addresses: peer i is `TUNNEL_BASE + 1 + i` inside the tunnel.
pub const TUNNEL_BASE: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 0);
/// Both ranges are /15s.
pub const PEER_PREFIX: u8 = 15;
/// The most peers the address ranges hold.
pub const MAX_PEERS: usize = (1 << (32 - PEER_PREFIX)) - 2;
/// The hub's tunnel interface address.
pub const HUB_TUNNEL: Ipv4Addr = Ipv4Addr::new(10, 102, 0, 1);
/// The hub's end and the LAN's end of the LAN veth.
pub const HUB_LAN: Ipv4Addr = Ipv4Addr::new(10, 103, 0, 1);
pub const LAN: Ipv4Addr = Ipv4Addr::new(10, 103, 0, 2);
/// The LAN's UDP port (sink and source).
pub const LAN_PORT: u16 = 9000;

// The issue asks for 100,000 peers where a hub accepts them.
const _: () = assert!(MAX_PEERS >= 100_000);

/// Peer i's endpoint address.
pub fn endpoint(i: usize) -> Ipv4Addr {
    offset(ENDPOINT_BASE, i)
}

/// Peer i's tunnel address.
pub fn tunnel_addr(i: usize) -> Ipv4Addr {
    offset(TUNNEL_BASE, i)
}

/// The peer whose tunnel (or endpoint, with `base`) address is `addr`.
pub fn peer_of(base: Ipv4Addr, addr: Ipv4Addr) -> Option<usize> {
    let d = u32::from(addr)
        .checked_sub(u32::from(base))?
        .checked_sub(1)?;
    let i = usize::try_from(d).ok()?;
    (i < MAX_PEERS).then_some(i)
}

fn offset(base: Ipv4Addr, i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base) + 1 + i as u32)
}

/// The three namespaces and the two veths. Field order is drop order.
#[derive(Debug)]
pub struct Topology {
    _fleet_link: Veth,
    _lan_link: Veth,
    pub fleet: Netns,
    pub hub: Netns,
    pub lan: Netns,
}

impl Topology {
    pub fn create() -> Result<Topology> {
        let fleet = Netns::new("cc-fleet")?;
        let hub = Netns::new("cc-hub")?;
        let lan = Netns::new("cc-lan")?;
        let fleet_link = Veth::pair(
            &fleet,
            &hub,
            &[&format!("{FLEET_VETH}/24")],
            &[&format!("{HUB_VETH}/24")],
        )
        .context("creating the fleet veth")?;
        let lan_link = Veth::pair(
            &hub,
            &lan,
            &[&format!("{HUB_LAN}/24")],
            &[&format!("{LAN}/24")],
        )
        .context("creating the LAN veth")?;
        let peers = |base: Ipv4Addr| format!("{base}/{PEER_PREFIX}");
        // AnyIP: every endpoint address is local to the fleet (the
        // generator sends from them with IP_TRANSPARENT).
        fleet.ip_ok(&["route", "add", "local", &peers(ENDPOINT_BASE), "dev", "lo"])?;
        hub.ip_ok(&[
            "route",
            "add",
            &peers(ENDPOINT_BASE),
            "via",
            &FLEET_VETH.to_string(),
        ])?;
        lan.ip_ok(&[
            "route",
            "add",
            &peers(TUNNEL_BASE),
            "via",
            &HUB_LAN.to_string(),
        ])?;
        enable_forwarding(&hub).context("net.ipv4.ip_forward=1 in the hub namespace")?;
        Ok(Topology {
            _fleet_link: fleet_link,
            _lan_link: lan_link,
            fleet,
            hub,
            lan,
        })
    }
}

/// Sets `net.ipv4.ip_forward` in `ns` (a thread enters it: /proc/sys/net
/// shows the namespace of the thread that opens it).
fn enable_forwarding(ns: &Netns) -> Result<()> {
    std::thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            ns.enter()?;
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
            Ok(())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread panicked"))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_addresses_round_trip() {
        assert_eq!(endpoint(0), Ipv4Addr::new(10, 90, 0, 1));
        assert_eq!(tunnel_addr(299), Ipv4Addr::new(10, 100, 1, 44));
        assert_eq!(peer_of(TUNNEL_BASE, tunnel_addr(99_999)), Some(99_999));
        assert_eq!(peer_of(TUNNEL_BASE, TUNNEL_BASE), None);
        assert_eq!(peer_of(ENDPOINT_BASE, Ipv4Addr::new(10, 89, 0, 1)), None);
        assert!(u32::from(tunnel_addr(MAX_PEERS - 1)) < u32::from(HUB_TUNNEL));
    }
}
