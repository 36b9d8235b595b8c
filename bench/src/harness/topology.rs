//! The topology: two network namespaces joined by a veth pair (see the
//! drawing in the module doc of `harness`), built from corewire-testkit's
//! guards. Dropping it deletes the pair, then stops every process still in
//! each namespace (by PID) and deletes the namespaces.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use corewire_testkit::{Netns, Veth};

/// veth addresses (a side, b side), /24.
pub const VETH_A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const VETH_B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

/// The two namespaces and the veth between them. Field order is drop
/// order: the veth first, then the namespaces.
#[derive(Debug)]
pub struct Topology {
    /// Held for its `Drop`.
    _veth: Veth,
    pub a: Netns,
    pub b: Netns,
}

impl Topology {
    pub fn create() -> Result<Topology> {
        let a = Netns::new("nb-a")?;
        let b = Netns::new("nb-b")?;
        let veth = Veth::pair(
            &a,
            &b,
            &[&format!("{VETH_A}/24")],
            &[&format!("{VETH_B}/24")],
        )
        .context("creating the veth pair")?;
        Ok(Topology { _veth: veth, a, b })
    }

    /// The veth's interface name in side a's namespace, then in side b's.
    pub fn veth_names(&self) -> [&str; 2] {
        [self._veth.name_a(), self._veth.name_b()]
    }
}
