//! The hubs under test: corewire with one worker and with one per core,
//! wireguard-go, boringtun-cli and gotatun-cli, each started in the hub
//! namespace with testkit's launch recipe (foreground, our child) and
//! configured with the K peers in one `wg addconf`.

use std::fs;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use corewire_testkit::{run, unique_ifname, Keypair, Launch, Netns, TempDir, WgDevice, WgImpl};

use crate::harness::cpu;
use crate::harness::preflight::Tools;

use super::topology::{HUB_PORT, HUB_TUNNEL, PEER_PREFIX, TUNNEL_BASE};

/// The tunnel MTU of the hub.
const MTU: u32 = corewire_dataplane::engine::limits::DEFAULT_MTU;
/// A hub using less CPU than this (in cores) over [`IDLE_WINDOW`] is idle.
/// CPU times have 10 ms ticks: the window must hold a few.
pub const IDLE_CORES: f64 = 0.1;
pub const IDLE_WINDOW: Duration = Duration::from_millis(200);
/// How long `wg addconf` of K peers may take.
const ADDCONF_LIMIT: Duration = Duration::from_secs(300);

/// A hub under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hub {
    /// corewire with one worker (`--threads 1`).
    Corewire1,
    /// corewire with its default: one worker per core.
    Corewire,
    WireguardGo,
    Boringtun,
    Gotatun,
}

impl Hub {
    pub const ALL: [Hub; 5] = [
        Hub::Corewire1,
        Hub::Corewire,
        Hub::WireguardGo,
        Hub::Boringtun,
        Hub::Gotatun,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Hub::Corewire1 => "corewire-1w",
            Hub::Corewire => "corewire",
            Hub::WireguardGo => "wireguard-go",
            Hub::Boringtun => "boringtun",
            Hub::Gotatun => "gotatun",
        }
    }

    pub fn parse(name: &str) -> Option<Hub> {
        Hub::ALL.into_iter().find(|h| h.name() == name)
    }

    pub fn wg(self) -> WgImpl {
        match self {
            Hub::Corewire1 | Hub::Corewire => WgImpl::Corewire,
            Hub::WireguardGo => WgImpl::WireguardGo,
            Hub::Boringtun => WgImpl::Boringtun,
            Hub::Gotatun => WgImpl::Gotatun,
        }
    }

    /// A corewire variant (compared with the others as ratios).
    pub fn is_corewire(self) -> bool {
        self.wg() == WgImpl::Corewire
    }

    /// Arguments the hub starts with, besides the launch recipe's.
    fn args(self) -> &'static [&'static str] {
        match self {
            Hub::Corewire1 => &["--threads", "1"],
            _ => &[],
        }
    }
}

/// A hub running in the hub namespace; dropping it stops it by PID.
#[derive(Debug)]
pub struct RunningHub {
    dev: WgDevice,
    pid: u32,
    /// Resident memory right after start, before any peer (bytes).
    pub rss_empty: u64,
}

/// Raises this process's soft open-file limit to its hard limit, so that
/// the hubs (our children) inherit it, and returns the limit. boringtun-cli
/// opens a connected UDP socket per peer: with the usual soft limit of 1024
/// it panics (EMFILE) at 10,000 peers, where an operator would have raised
/// the limit (systemd's `LimitNOFILE=`). Every hub gets the same limit.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
        lim.rlim_cur
    }
}

impl RunningHub {
    /// Starts `hub` in `ns`, then configures its key, port and the peers
    /// (`peers_conf`: `[Peer]` sections) with one `wg addconf`, its tunnel
    /// address and the route to the peers' tunnel addresses.
    pub fn start(
        hub: Hub,
        tools: &Tools,
        ns: &Netns,
        key: &Keypair,
        peers_conf: &str,
    ) -> Result<RunningHub> {
        let Some(binary) = tools.daemon(hub.wg()) else {
            bail!("{}: no binary (preflight)", hub.name());
        };
        let ifname = unique_ifname("cwc")?;
        let dev = hub
            .wg()
            .launch_with(binary, ns, &ifname, Launch::Foreground, hub.args())
            .with_context(|| format!("starting {}", hub.name()))?;
        let Some(pid) = dev.pid() else {
            bail!("{}: no PID", hub.name());
        };
        // Let the process settle before the baseline.
        std::thread::sleep(Duration::from_millis(200));
        let rss_empty = corewire_testkit::rss_kib(pid).map_or(0, |k| k * 1024);
        let mut running = RunningHub {
            dev,
            pid,
            rss_empty,
        };
        running
            .configure(ns, key, peers_conf)
            .with_context(|| format!("configuring {} ({ifname})", hub.name()))?;
        Ok(running)
    }

    fn configure(&mut self, ns: &Netns, key: &Keypair, peers_conf: &str) -> Result<()> {
        let ifname = self.dev.ifname().to_owned();
        let dir = TempDir::new("cc-conf")?;
        let path = dir.path().join("hub.conf");
        let conf = format!(
            "[Interface]\nPrivateKey = {}\nListenPort = {HUB_PORT}\n\n{peers_conf}",
            key.private
        );
        fs::write(&path, conf).with_context(|| format!("write {}", path.display()))?;
        let path_s = path.display().to_string();
        let out = run(
            ns.command("wg", &["addconf", &ifname, &path_s]),
            None,
            ADDCONF_LIMIT,
        )?;
        if !out.status.success() {
            bail!(
                "wg addconf failed: {}\nhub log:\n{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                self.dev.log_tail(15)
            );
        }
        ns.ip_ok(&["addr", "add", &format!("{HUB_TUNNEL}/32"), "dev", &ifname])?;
        ns.ip_ok(&["link", "set", &ifname, "mtu", &MTU.to_string(), "up"])?;
        ns.ip_ok(&[
            "route",
            "add",
            &format!("{TUNNEL_BASE}/{PEER_PREFIX}"),
            "dev",
            &ifname,
        ])?;
        self.check_alive()
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The hub's CPU seconds so far (0 if it is gone).
    pub fn cpu_seconds(&self) -> f64 {
        cpu::process_seconds(self.pid).unwrap_or(0.0)
    }

    /// Waits (up to `limit`) until the hub is quiet: under
    /// [`IDLE_CORES`] of CPU over a [`IDLE_WINDOW`]. After a storm a hub
    /// may still work through queued (retransmitted) initiations; traffic
    /// measured meanwhile would measure that backlog. Returns whether it
    /// became quiet.
    pub fn wait_idle(&self, limit: Duration) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            let before = self.cpu_seconds();
            std::thread::sleep(IDLE_WINDOW);
            if self.cpu_seconds() - before < IDLE_CORES * IDLE_WINDOW.as_secs_f64() {
                return true;
            }
        }
        false
    }

    pub fn rss(&self) -> u64 {
        corewire_testkit::rss_kib(self.pid).map_or(0, |k| k * 1024)
    }

    /// An error with the end of its log if the hub has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if !self.dev.is_running() {
            bail!(
                "{} on {} exited; last log lines:\n{}",
                self.dev.imp().name(),
                self.dev.ifname(),
                self.dev.log_tail(15)
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for hub in Hub::ALL {
            assert_eq!(Hub::parse(hub.name()), Some(hub));
        }
        assert_eq!(Hub::parse("kernel"), None);
        assert_eq!(Hub::Corewire1.args(), ["--threads", "1"]);
    }
}
