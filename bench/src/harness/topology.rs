//! The topology: two network namespaces joined by a veth pair (see the
//! drawing in the module doc of `harness`). Namespaces are named
//! `cwb-<pid>-<unix time>-{a,b}`; dropping one stops every process still in
//! it (by PID) and deletes it, which also deletes the links in it.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};

use super::process::{self, command, pid_alive, run, run_ok, stop_pids, wait_until};

/// Every namespace netbench creates starts with this.
pub const NETNS_MARK: &str = "cwb-";
/// veth addresses (a side, b side), /24.
pub const VETH_A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const VETH_B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

/// A network namespace with `lo` up, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    fn create(name: String) -> Result<Netns> {
        run_ok(command("ip", &["netns", "add", &name]), None)?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec <ns> program args...` (`ip` execs the program, so the
    /// child's PID is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Command {
        let mut cmd = command("ip", &["netns", "exec", &self.name]);
        cmd.arg(program).args(args);
        cmd
    }

    /// `ip -n <ns> args...`; an error unless it succeeds. Returns stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut cmd = command("ip", &["-n", &self.name]);
        cmd.args(args);
        run_ok(cmd, None)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove_netns(&self.name);
    }
}

/// PIDs of the live processes inside a namespace.
fn netns_pids(name: &str) -> Vec<u32> {
    match run(
        command("ip", &["netns", "pids", name]),
        None,
        process::COMMAND_TIMEOUT,
    ) {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|&p| pid_alive(p))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Stops what runs inside (by PID), then deletes the namespace. Never fails.
fn remove_netns(name: &str) {
    let stuck = stop_pids(&netns_pids(name), process::STOP_GRACE);
    if !stuck.is_empty() {
        eprintln!("netbench: {name}: processes {stuck:?} survived SIGKILL");
    }
    match run_ok(command("ip", &["netns", "del", name]), None) {
        Ok(_) => {}
        Err(e) => eprintln!("netbench: deleting namespace {name}: {e:#}"),
    }
}

/// Deletes namespaces left by netbench runs that were killed outright: ours
/// by name, created by a process that no longer exists.
pub fn sweep_stale() -> Result<()> {
    let out = run_ok(command("ip", &["netns", "list"]), None)?;
    for line in out.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(NETNS_MARK) else {
            continue;
        };
        let pid: Option<u32> = rest.split('-').next().and_then(|p| p.parse().ok());
        if let Some(pid) = pid {
            if pid != std::process::id() && !pid_alive(pid) {
                eprintln!("netbench: deleting stale namespace {name} (its run is gone)");
                remove_netns(name);
            }
        }
    }
    Ok(())
}

/// The two namespaces and the veth between them. Field order is drop
/// order: the veth goes with the namespaces.
#[derive(Debug)]
pub struct Topology {
    pub a: Netns,
    pub b: Netns,
    pub veth_a: String,
    pub veth_b: String,
}

impl Topology {
    pub fn create() -> Result<Topology> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let pid = std::process::id();
        let a = Netns::create(format!("{NETNS_MARK}{pid}-{now}-a"))?;
        let b = Netns::create(format!("{NETNS_MARK}{pid}-{now}-b"))?;
        let veth_a = format!("cwbva{pid}");
        let veth_b = format!("cwbvb{pid}");
        a.ip(&[
            "link", "add", &veth_a, "type", "veth", "peer", "name", &veth_b, "netns", &b.name,
        ])
        .context("creating the veth pair")?;
        let topo = Topology {
            a,
            b,
            veth_a,
            veth_b,
        };
        for (ns, dev, addr) in [
            (&topo.a, &topo.veth_a, VETH_A),
            (&topo.b, &topo.veth_b, VETH_B),
        ] {
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ns.ip(&["link", "set", dev, "up"])?;
        }
        for (ns, dev) in [(&topo.a, &topo.veth_a), (&topo.b, &topo.veth_b)] {
            let up = wait_until(Duration::from_secs(5), Duration::from_millis(10), || {
                ns.ip(&["-o", "link", "show", "dev", dev])
                    .is_ok_and(|out| out.contains("state UP"))
            });
            if !up {
                bail!("veth {dev} in {} did not come up within 5 s", ns.name());
            }
        }
        Ok(topo)
    }
}
