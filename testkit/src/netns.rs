//! Network namespaces and the veth pairs between them, as guards.
//!
//! Every namespace is named `cwt-<prefix>-<pid>-<n>-<unix time>`. Dropping
//! a [`Netns`] stops every process still inside it (by PID: SIGTERM, then
//! SIGKILL after a bounded wait) and deletes it, which also deletes the
//! veth and TUN links in it; dropping a [`Veth`] deletes its pair. A run
//! killed outright (SIGKILL, so no `Drop`) leaves namespaces behind;
//! [`sweep_stale`] deletes those whose creating process is gone.
//!
//! Declare the namespaces before anything that lives in them, so that they
//! are dropped last.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::command::{command, run, run_ok, wait_until, COMMAND_TIMEOUT};
use crate::names::{next_id, unique_ifname, unix_now};
use crate::process::{pid_alive, stop_pids, Proc, STOP_GRACE};
use crate::{Error, Result};

/// Every namespace this crate creates starts with this.
pub const NETNS_MARK: &str = "cwt-";
/// [`Netns::new`] deletes leftover namespaces of killed runs once this old.
pub const STALE_AFTER: Duration = Duration::from_secs(600);
/// How long a new veth gets to come up.
const LINK_UP_TIMEOUT: Duration = Duration::from_secs(5);

/// A network namespace owned by the caller, with `lo` up. Dropping it
/// stops every process still inside (by PID) and deletes it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `cwt-<prefix>-<pid>-<n>-<unix time>`, after deleting the
    /// stale namespaces of killed runs older than [`STALE_AFTER`].
    pub fn new(prefix: &str) -> Result<Netns> {
        sweep_stale(STALE_AFTER);
        let name = format!(
            "{NETNS_MARK}{prefix}-{}-{}-{}",
            std::process::id(),
            next_id(),
            unix_now()
        );
        run_ok(command("ip", &["netns", "add", &name]), None)?;
        // From here on the guard deletes it, also when `lo` fails.
        let ns = Netns { name };
        ns.ip_ok(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A `Command` for `ip netns exec <ns> program args...`. `ip netns exec`
    /// execs the program, so the child's PID is the program's.
    pub fn command(&self, program: impl AsRef<OsStr>, args: &[&str]) -> Command {
        let mut cmd = command("ip", &["netns", "exec", &self.name]);
        cmd.arg(program).args(args);
        cmd
    }

    /// Runs a program in the namespace within [`COMMAND_TIMEOUT`]; any exit
    /// status.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        run(self.command(program, args), None, COMMAND_TIMEOUT)
    }

    /// [`Netns::exec`] that is an error unless the program succeeds;
    /// returns its stdout.
    pub fn exec_ok(&self, program: &str, args: &[&str]) -> Result<String> {
        run_ok(self.command(program, args), None)
    }

    /// `ip -n <ns> args...` (cheaper than `ip netns exec`: no mount
    /// namespace); any exit status.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        run(self.ip_command(args), None, COMMAND_TIMEOUT)
    }

    /// [`Netns::ip`] that is an error unless it succeeds; returns stdout.
    pub fn ip_ok(&self, args: &[&str]) -> Result<String> {
        run_ok(self.ip_command(args), None)
    }

    fn ip_command(&self, args: &[&str]) -> Command {
        let mut cmd = command("ip", &["-n", &self.name]);
        cmd.args(args);
        cmd
    }

    /// Starts a long-running program in the namespace, `env` added; stdout
    /// and stderr go to a log file. The guard stops it by PID.
    pub fn spawn(
        &self,
        program: impl AsRef<OsStr>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Proc> {
        let program = program.as_ref();
        let what = format!("{} {}", program.to_string_lossy(), args.join(" "));
        let mut cmd = self.command(program, args);
        cmd.envs(env.iter().copied());
        Proc::spawn(cmd, &what)
    }

    /// PIDs of the (non-zombie) processes inside the namespace.
    pub fn pids(&self) -> Vec<u32> {
        netns_pids(&self.name)
    }

    /// Moves the calling thread into the namespace (`setns` acts on that
    /// thread only; sockets and devices it creates afterwards live in the
    /// namespace). Meant for a thread spawned for the purpose.
    pub fn enter(&self) -> Result<()> {
        enter(&self.name)
    }

    /// Whether a link of that name exists in the namespace.
    pub fn link_exists(&self, ifname: &str) -> bool {
        self.ip(&["link", "show", "dev", ifname])
            .is_ok_and(|out| out.status.success())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove_netns(&self.name);
    }
}

/// Moves the calling thread into the namespace `name` (see [`Netns::enter`]).
pub fn enter(name: &str) -> Result<()> {
    let path = format!("/var/run/netns/{name}");
    let f = std::fs::File::open(&path).map_err(|e| Error::io("open", Path::new(&path), e))?;
    // SAFETY: setns on this thread only, with a namespace file we opened.
    if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(Error::io("setns", Path::new(&path), e));
    }
    Ok(())
}

/// Whether a namespace of that name exists (`ip netns list`).
pub fn netns_exists(name: &str) -> Result<bool> {
    let out = run_ok(command("ip", &["netns", "list"]), None)?;
    Ok(out
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name)))
}

fn netns_pids(name: &str) -> Vec<u32> {
    match run(
        command("ip", &["netns", "pids", name]),
        None,
        COMMAND_TIMEOUT,
    ) {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|&p| pid_alive(p))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Stops what runs inside (by PID), then deletes the namespace. Never
/// panics (runs from `Drop`); problems go to stderr.
fn remove_netns(name: &str) {
    let stuck = stop_pids(&netns_pids(name), STOP_GRACE);
    if !stuck.is_empty() {
        eprintln!("[testkit] {name}: processes {stuck:?} survived SIGKILL");
    }
    if let Err(e) = run_ok(command("ip", &["netns", "del", name]), None) {
        eprintln!("[testkit] deleting namespace {name}: {e}");
    }
}

/// Deletes namespaces left by killed runs: ours by name, at least
/// `min_age` old, and created by a process that is gone. Concurrent runs
/// (live PIDs) are never touched; a `min_age` also spares runs in another
/// PID namespace that share /var/run/netns. Never fails.
pub fn sweep_stale(min_age: Duration) {
    let Ok(out) = run_ok(command("ip", &["netns", "list"]), None) else {
        return;
    };
    let now = unix_now();
    for line in out.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if !name.starts_with(NETNS_MARK) {
            continue;
        }
        let mut fields = name.rsplit('-');
        let created: Option<u64> = fields.next().and_then(|f| f.parse().ok());
        let _counter = fields.next();
        let pid: Option<u32> = fields.next().and_then(|f| f.parse().ok());
        let (Some(created), Some(pid)) = (created, pid) else {
            continue;
        };
        let old = now.saturating_sub(created) >= min_age.as_secs();
        if old && pid != std::process::id() && !pid_alive(pid) {
            eprintln!("[testkit] deleting stale namespace {name} (its run is gone)");
            remove_netns(name);
        }
    }
}

/// A veth pair from one namespace to another, up, with addresses. IPv6
/// addresses get `nodad`, so they are usable at once. Dropping it deletes
/// the pair (gone anyway with either namespace).
#[derive(Debug)]
pub struct Veth {
    ns_a: String,
    name_a: String,
    name_b: String,
}

impl Veth {
    /// A pair `va...` in `a`, `vb...` in `b`; `addrs_a`/`addrs_b`: CIDRs
    /// such as "10.99.0.1/24" and "fd00::1/64". Returns once both ends are up.
    pub fn pair(a: &Netns, b: &Netns, addrs_a: &[&str], addrs_b: &[&str]) -> Result<Veth> {
        let name_a = unique_ifname("va")?;
        let name_b = unique_ifname("vb")?;
        a.ip_ok(&[
            "link",
            "add",
            &name_a,
            "type",
            "veth",
            "peer",
            "name",
            &name_b,
            "netns",
            b.name(),
        ])?;
        // From here on the guard deletes the pair, also on an error below.
        let veth = Veth {
            ns_a: a.name().to_owned(),
            name_a,
            name_b,
        };
        for (ns, dev, addrs) in [(a, &veth.name_a, addrs_a), (b, &veth.name_b, addrs_b)] {
            for addr in addrs {
                let mut args = vec!["addr", "add", addr, "dev", dev.as_str()];
                if addr.contains(':') {
                    args.push("nodad");
                }
                ns.ip_ok(&args)?;
            }
            ns.ip_ok(&["link", "set", dev, "up"])?;
        }
        for (ns, dev) in [(a, &veth.name_a), (b, &veth.name_b)] {
            let up = wait_until(LINK_UP_TIMEOUT, Duration::from_millis(10), || {
                ns.ip_ok(&["-o", "link", "show", "dev", dev])
                    .is_ok_and(|out| out.contains("state UP"))
            });
            if !up {
                return Err(Error::NotReady(format!(
                    "veth {dev} in {} did not come up within {LINK_UP_TIMEOUT:?}",
                    ns.name()
                )));
            }
        }
        Ok(veth)
    }

    /// The end in namespace `a`.
    pub fn name_a(&self) -> &str {
        &self.name_a
    }

    /// The end in namespace `b`.
    pub fn name_b(&self) -> &str {
        &self.name_b
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let cmd = command("ip", &["-n", &self.ns_a, "link", "del", &self.name_a]);
        let _ = run(cmd, None, COMMAND_TIMEOUT);
    }
}
