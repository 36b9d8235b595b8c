//! CPU accounting: CPU seconds of one process (for CPU seconds per
//! gigabit), and the noise check that tells whether something else took CPU
//! during a measurement.
//!
//! Noise. Between two snapshots:
//! `other = busy - ours - kernel threads`, where
//! - `busy` is every non-idle tick of `/proc/stat` (user, nice, system, irq,
//!   softirq, steal: steal is CPU another guest took from this VM);
//! - `ours` is netbench itself (`getrusage(RUSAGE_SELF)`: the echo server and
//!   RTT client are its threads), its reaped children (`RUSAGE_CHILDREN`:
//!   iperf3, `ip`, `wg`) and its live children from `/proc/PID/stat` (the
//!   daemons). Snapshots are taken only where every child is either running
//!   or reaped, so no child is counted twice or lost;
//! - kernel threads (ksoftirqd, kworkers) are left out: they mostly carry the
//!   benchmark's own packets (softirq, TUN, veth), which belong to no process.
//!
//! A measurement is noisy when `other` exceeds the threshold (default 0.10 of
//! one core) averaged over its wall time. Bias: with tick-based accounting
//! (no IRQ time accounting, as on this kernel), softirq that runs while a CPU
//! is idle is counted as busy but belongs to no process, so a packet-heavy
//! case can show some "other" time of its own; the top other processes are
//! recorded so a reader can tell a compiler from that.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::time::Instant;

use anyhow::{Context as _, Result};

/// `PF_KTHREAD` in the flags field of `/proc/PID/stat`.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Clock ticks per second of `/proc` times (USER_HZ).
fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf(3) reads a constant; no memory involved.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// One line of `/proc/PID/stat`: command name, flags, utime + stime (ticks).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProcStat {
    comm: String,
    flags: u64,
    ticks: u64,
}

fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    // The command name is in parentheses and may itself contain ')'.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    // After the name: state(0) ppid pgrp session tty_nr tpgid flags(6) minflt
    // cminflt majflt cmajflt utime(11) stime(12).
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let num = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some(ProcStat {
        comm,
        flags: num(6)?,
        ticks: num(11)?.checked_add(num(12)?)?,
    })
}

fn read_proc_stat(pid: u32) -> Option<ProcStat> {
    parse_proc_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU seconds (user + system, all threads) a live process has used.
pub fn process_seconds(pid: u32) -> Option<f64> {
    read_proc_stat(pid).map(|s| s.ticks as f64 / ticks_per_sec())
}

/// Busy and steal ticks from the first line of `/proc/stat`.
fn parse_system_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest is inside user).
    let (user, nice, system) = (*v.first()?, *v.get(1)?, *v.get(2)?);
    let (irq, softirq, steal) = (*v.get(5)?, *v.get(6)?, *v.get(7).unwrap_or(&0));
    Some((user + nice + system + irq + softirq + steal, steal))
}

/// CPU seconds (user + system) the calling thread has used.
pub fn thread_cpu_seconds() -> f64 {
    rusage_seconds(libc::RUSAGE_THREAD)
}

fn rusage_seconds(who: libc::c_int) -> f64 {
    // SAFETY: getrusage(2) fills the zeroed struct we pass; no other memory.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(who, &mut usage) != 0 {
            return 0.0;
        }
        usage
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// The state of the machine's CPU time at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    at: Instant,
    busy: f64,
    steal: f64,
    ours: f64,
    ours_pids: HashSet<u32>,
    procs: HashMap<u32, ProcStat>,
}

/// Takes a snapshot; `live_children` are netbench's children that are
/// running now (every other child must have been reaped).
pub fn snapshot(live_children: &[u32]) -> Result<Snapshot> {
    let hz = ticks_per_sec();
    let text = fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    let (busy, steal) = parse_system_stat(&text).context("parse /proc/stat")?;
    let mut procs = HashMap::new();
    for entry in fs::read_dir("/proc").context("read /proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Some(stat) = read_proc_stat(pid) {
            procs.insert(pid, stat);
        }
    }
    let children: f64 = live_children
        .iter()
        .filter_map(|pid| procs.get(pid))
        .map(|s| s.ticks as f64 / hz)
        .sum();
    let mut ours_pids: HashSet<u32> = live_children.iter().copied().collect();
    ours_pids.insert(std::process::id());
    Ok(Snapshot {
        at: Instant::now(),
        busy: busy as f64 / hz,
        steal: steal as f64 / hz,
        ours: rusage_seconds(libc::RUSAGE_SELF) + rusage_seconds(libc::RUSAGE_CHILDREN) + children,
        ours_pids,
        procs,
    })
}

/// What else used the CPU between two snapshots.
#[derive(Debug, Clone, PartialEq)]
pub struct Noise {
    pub wall_s: f64,
    /// All non-idle CPU time (`/proc/stat`), in cores.
    pub busy_cores: f64,
    /// netbench, its children and the daemons, in cores.
    pub ours_cores: f64,
    /// CPU time of everything but netbench, its children and kernel
    /// threads, in cores (CPU seconds per second).
    pub other_cores: f64,
    /// Of which stolen by the hypervisor.
    pub steal_cores: f64,
    /// Kernel threads (not counted as noise), in cores.
    pub kernel_threads_cores: f64,
    /// Cross-check of `other_cores` from the other processes seen in both
    /// snapshots or started between them (processes that exited in between
    /// are missed), in cores.
    pub others_seen_cores: f64,
    /// The busiest other processes seen: (name, CPU seconds).
    pub top: Vec<(String, f64)>,
    pub noisy: bool,
}

/// Compares two snapshots; `threshold_cores` is the noise limit.
pub fn noise(before: &Snapshot, after: &Snapshot, threshold_cores: f64) -> Noise {
    let hz = ticks_per_sec();
    let wall = after.at.duration_since(before.at).as_secs_f64().max(1e-3);
    let delta = |pid: &u32, s: &ProcStat| {
        let old = before.procs.get(pid).map_or(0, |b| b.ticks);
        s.ticks.saturating_sub(old) as f64 / hz
    };
    let kthreads: f64 = after
        .procs
        .iter()
        .filter(|(_, s)| s.flags & PF_KTHREAD != 0)
        .map(|(pid, s)| delta(pid, s))
        .sum();
    let mut top: Vec<(String, f64)> = after
        .procs
        .iter()
        .filter(|(pid, s)| {
            s.flags & PF_KTHREAD == 0
                && !before.ours_pids.contains(pid)
                && !after.ours_pids.contains(pid)
        })
        .map(|(pid, s)| (s.comm.clone(), delta(pid, s)))
        .collect();
    let others_seen: f64 = top.iter().map(|(_, secs)| secs).sum();
    top.retain(|(_, secs)| *secs >= 0.05);
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    top.truncate(3);
    let other = (after.busy - before.busy) - (after.ours - before.ours) - kthreads;
    let other_cores = other.max(0.0) / wall;
    Noise {
        wall_s: wall,
        busy_cores: (after.busy - before.busy) / wall,
        ours_cores: (after.ours - before.ours) / wall,
        other_cores,
        others_seen_cores: others_seen / wall,
        steal_cores: (after.steal - before.steal).max(0.0) / wall,
        kernel_threads_cores: kthreads / wall,
        top,
        noisy: other_cores > threshold_cores,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_pid_stat_with_odd_names() {
        let line = "123 (a b) c) S 1 123 123 0 -1 4194560 10 0 0 0 250 75 0 0 20 0 1 0";
        let s = parse_proc_stat(line).expect("valid line");
        assert_eq!(s.comm, "a b) c");
        assert_eq!(s.flags, 4_194_560);
        assert_eq!(s.ticks, 325);
        assert!(parse_proc_stat("123 (x) S 1").is_none());
        assert!(parse_proc_stat("garbage").is_none());
    }

    #[test]
    fn parses_system_stat() {
        let text = "cpu  100 5 50 1000 7 1 9 3 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(parse_system_stat(text), Some((168, 3)));
        assert_eq!(parse_system_stat("cpu0 1 2\n"), None);
    }
}
