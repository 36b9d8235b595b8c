//! The machine and the tool versions, recorded with every report.

use std::fs;
use std::path::Path;
use std::time::Duration;

use corewire_testkit::{command, run, WgImpl};

use super::impls::Impl;
use super::preflight::Tools;

#[derive(Debug, Clone)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total_gib: f64,
    pub kernel: String,
    /// (tool, first line of its `--version`, path).
    pub tools: Vec<(String, String, String)>,
}

impl Machine {
    /// The machine, and the versions of the tools and of `impls`.
    pub fn describe(tools: &Tools, impls: &[Impl]) -> Machine {
        let wg: Vec<WgImpl> = impls.iter().filter_map(|i| i.wg()).collect();
        Machine::describe_daemons(tools, &wg)
    }

    /// The machine, and the versions of the tools and of the daemons.
    pub fn describe_daemons(tools: &Tools, impls: &[WgImpl]) -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        let mut versions = Vec::new();
        if let Some(iperf3) = &tools.iperf3 {
            versions.push(version("iperf3", iperf3, "--version"));
        }
        versions.push(version("wg", &tools.wg, "--version"));
        versions.push(version("ip", &tools.ip, "-V"));
        for &imp in impls {
            if let Some(binary) = tools.daemon(imp) {
                versions.push(version(imp.name(), binary, "--version"));
            }
        }
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            mem_total_gib: mem_kib / (1024.0 * 1024.0),
            kernel,
            tools: versions,
        }
    }
}

/// The first non-empty line of `binary flag` (`--version`).
fn version(name: &str, binary: &Path, flag: &str) -> (String, String, String) {
    let text = run(command(binary, &[flag]), None, Duration::from_secs(5))
        .map(|out| {
            let mut all = String::from_utf8_lossy(&out.stdout).into_owned();
            all.push_str(&String::from_utf8_lossy(&out.stderr));
            all
        })
        .unwrap_or_default();
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("unknown")
        .to_owned();
    (name.to_owned(), line, binary.display().to_string())
}
