//! What the control plane tells the engine, and what it reads back.
//!
//! The control plane keeps the authoritative configuration, validates a
//! whole UAPI `set` against it, and sends the engine only the resulting
//! changes, in order. Each [`PeerConfig`] is the complete configuration of
//! one peer after the change, so applying it twice is harmless and the
//! engine never has to merge partial updates.

use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use crate::proto::keys::{PresharedKey, PrivateKey, PublicKey};

/// One prefix: address and length.
pub type Prefix = (IpAddr, u8);

/// A peer's full configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's static public key: its identity.
    pub public_key: PublicKey,
    /// Preshared key; all zeros means none.
    pub preshared_key: PresharedKey,
    /// Set the endpoint to this (a configured endpoint overrides a roamed
    /// one, as with wireguard-go); `None` leaves the current one.
    pub endpoint: Option<SocketAddr>,
    /// Persistent keepalive interval in seconds; 0 is off.
    pub persistent_keepalive: u16,
    /// The peer's allowed IPs, in the order they were given.
    pub allowed_ips: Vec<Prefix>,
}

/// One change to the running device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Set or (with `None`) remove the private key.
    PrivateKey(Option<PrivateKey>),
    /// Listen on this UDP port (0: pick a free one).
    ListenPort(u16),
    /// Mark outgoing packets (0: no mark).
    Fwmark(u32),
    /// Create or update a peer to exactly this configuration.
    Peer(PeerConfig),
    /// Remove a peer.
    RemovePeer(PublicKey),
}

/// Why the engine could not apply a change. Maps to a UAPI errno.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The listen port is taken (EADDRINUSE).
    #[error("listen port {0} is in use")]
    AddressInUse(u16),
    /// Any other system error, with its errno.
    #[error("system error: {0}")]
    Io(i32),
}

impl ApplyError {
    /// The negative errno the UAPI answers with.
    pub fn errno(&self) -> i32 {
        match self {
            ApplyError::AddressInUse(_) => -libc::EADDRINUSE,
            ApplyError::Io(e) => -e.abs(),
        }
    }
}

/// Runtime state of one peer, for UAPI `get`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    /// The peer.
    pub public_key: PublicKey,
    /// Where it is now (configured, or learned from its packets).
    pub endpoint: Option<SocketAddr>,
    /// When the last handshake completed.
    pub last_handshake: Option<SystemTime>,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Bytes sent to it.
    pub tx_bytes: u64,
}

/// Runtime state of the device, for UAPI `get`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// The UDP port actually bound (the configured one, or the one picked for 0).
    pub listen_port: u16,
    /// Per-peer runtime state, in any order.
    pub peers: Vec<PeerStats>,
}

/// The running device as the control plane sees it.
pub trait Device {
    /// Applies changes in order. If the first change that touches sockets
    /// (listen port, fwmark) fails, nothing has been applied.
    fn apply(&mut self, changes: Vec<Change>) -> Result<(), ApplyError>;
    /// Current runtime state: complete, or an error (never partial).
    fn stats(&mut self) -> Result<DeviceStats, ApplyError>;
}
