//! iperf3: a one-off server (`-s -1`) in namespace b, a client in namespace
//! a, and the client's `-J` report, which (iperf3 >= 3.x) carries the
//! receiver's view too (`end.sum_received`).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use super::netns::Netns;
use super::preflight::Tools;
use super::process::{wait_until, Proc, ScratchDir};

/// What the client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// TCP with this many parallel streams (`-P`).
    Tcp { streams: u32 },
    /// UDP as fast as it can (`-u -b 0`) with datagrams of `len` bytes (`-l`).
    Udp { len: u32 },
}

impl Flow {
    fn args(self) -> Vec<String> {
        match self {
            Flow::Tcp { streams: 1 } => Vec::new(),
            Flow::Tcp { streams } => vec!["-P".into(), streams.to_string()],
            Flow::Udp { len } => vec![
                "-u".into(),
                "-b".into(),
                "0".into(),
                "-l".into(),
                len.to_string(),
            ],
        }
    }
}

/// The figures netbench uses from one run.
#[derive(Debug, Clone, PartialEq)]
pub struct IperfResult {
    /// Receiver side: test length, bytes and goodput.
    pub seconds: f64,
    pub received_bytes: f64,
    pub received_bps: f64,
    /// TCP: retransmitted segments (sender).
    pub retransmits: Option<f64>,
    /// UDP: datagrams that arrived (sent minus lost) and the loss in percent.
    pub received_packets: Option<f64>,
    pub lost_percent: Option<f64>,
}

impl IperfResult {
    /// Parses a client's `-J` report. Stray text around the JSON object
    /// (warnings) is ignored; a report with an `error` is an error.
    pub fn parse(text: &str) -> Result<IperfResult> {
        let start = text.find('{').context("no JSON in iperf3 output")?;
        let end = text.rfind('}').context("no JSON in iperf3 output")?;
        let json: Value = serde_json::from_str(text.get(start..=end).unwrap_or_default())
            .context("iperf3 output is not valid JSON")?;
        if let Some(error) = json.get("error").and_then(Value::as_str) {
            bail!("iperf3: {error}");
        }
        let sum = |key: &str| json.get("end").and_then(|e| e.get(key));
        let received = sum("sum_received")
            .or_else(|| sum("sum"))
            .context("iperf3 report has no end.sum_received")?;
        let num = |v: &Value, key: &str| v.get(key).and_then(Value::as_f64);
        let seconds = num(received, "seconds").context("no receiver seconds")?;
        let received_bytes = num(received, "bytes").context("no receiver bytes")?;
        let received_bps = num(received, "bits_per_second").context("no receiver bit rate")?;
        let retransmits = sum("sum_sent").and_then(|s| num(s, "retransmits"));
        let packets = num(received, "packets");
        let lost = num(received, "lost_packets");
        let received_packets = match (packets, lost) {
            (Some(p), Some(l)) => Some((p - l).max(0.0)),
            _ => None,
        };
        if seconds.is_nan() || seconds <= 0.0 {
            bail!("iperf3 report covers {seconds} s");
        }
        Ok(IperfResult {
            seconds,
            received_bytes,
            received_bps,
            retransmits,
            received_packets,
            lost_percent: num(received, "lost_percent"),
        })
    }
}

/// A one-off server; dropping it stops it.
#[derive(Debug)]
pub struct Server {
    proc_: Proc,
}

impl Server {
    /// Starts `iperf3 -s -1 -J -B bind -p port` in `ns` and waits (bounded)
    /// until it listens.
    pub fn start(
        ns: &Netns,
        tools: &Tools,
        bind: Ipv4Addr,
        port: u16,
        scratch: &ScratchDir,
    ) -> Result<Server> {
        let log = scratch.file("iperf3-server", "log");
        let (bind_s, port_s) = (bind.to_string(), port.to_string());
        let cmd = ns.command(
            &tools.iperf3,
            &["-s", "-1", "-J", "-B", &bind_s, "-p", &port_s],
        );
        let mut proc_ = Proc::spawn(cmd, "iperf3 server", &log, &log)?;
        let pid = proc_.pid();
        let listening = wait_until(Duration::from_secs(5), Duration::from_millis(10), || {
            proc_.is_running() && listens(pid, bind, port)
        });
        if !listening {
            bail!(
                "iperf3 server on {bind}:{port} in {} not listening within 5 s:\n{}",
                ns.name(),
                proc_.log_tail(10)
            );
        }
        Ok(Server { proc_ })
    }

    pub fn pid(&self) -> u32 {
        self.proc_.pid()
    }

    /// Waits (bounded) for the one-off server to exit after its test.
    pub fn finish(mut self, timeout: Duration) -> Result<()> {
        if self.proc_.wait_exit(timeout)?.is_none() {
            bail!("iperf3 server still running {timeout:?} after the client finished");
        }
        Ok(())
    }
}

/// Whether process `pid` (in its namespace) has a TCP socket listening on
/// `addr:port`, from `/proc/PID/net/tcp` (no extra process needed).
fn listens(pid: u32, addr: Ipv4Addr, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")) else {
        return false;
    };
    // The kernel prints the address as the native-endian u32 of its bytes.
    let local = format!("{:08X}:{port:04X}", u32::from_ne_bytes(addr.octets()));
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let local_field = fields.nth(1);
        let state = fields.nth(1);
        local_field == Some(local.as_str()) && state == Some("0A")
    })
}

/// A running client; its JSON goes to a file.
#[derive(Debug)]
pub struct Client {
    proc_: Proc,
    json: PathBuf,
    seconds: u32,
}

impl Client {
    /// Starts `iperf3 -c server -p port -t seconds -J` plus the flow's flags.
    pub fn start(
        ns: &Netns,
        tools: &Tools,
        server: Ipv4Addr,
        port: u16,
        seconds: u32,
        flow: Flow,
        scratch: &ScratchDir,
    ) -> Result<Client> {
        let json = scratch.file("iperf3-client", "json");
        let err = scratch.file("iperf3-client", "err");
        let (server_s, port_s, secs) = (server.to_string(), port.to_string(), seconds.to_string());
        let mut args: Vec<String> = [
            "-c",
            &server_s,
            "-p",
            &port_s,
            "-t",
            &secs,
            "-J",
            "--connect-timeout",
            "3000",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(flow.args());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let cmd = ns.command(&tools.iperf3, &args);
        let proc_ = Proc::spawn(cmd, &format!("iperf3 {}", args.join(" ")), &json, &err)?;
        Ok(Client {
            proc_,
            json,
            seconds,
        })
    }

    /// Waits for the client (its test length + 20 s at most) and parses its
    /// report.
    pub fn finish(mut self) -> Result<IperfResult> {
        let limit = Duration::from_secs(u64::from(self.seconds) + 20);
        let status = self.proc_.wait_exit(limit)?;
        let text = std::fs::read_to_string(&self.json).unwrap_or_default();
        let Some(status) = status else {
            bail!("iperf3 client still running after {limit:?}");
        };
        IperfResult::parse(&text).with_context(|| {
            format!(
                "iperf3 client ({status}); stderr: {}",
                self.proc_.log_tail(5)
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UDP: &str = r#"warning: something
    {"start": {}, "end": {
      "sum": {"seconds": 2.0, "bytes": 100, "bits_per_second": 400.0, "packets": 10, "lost_packets": 4, "lost_percent": 40.0},
      "sum_sent": {"seconds": 2.0, "bytes": 100, "bits_per_second": 400.0, "packets": 10, "lost_packets": 0, "lost_percent": 0},
      "sum_received": {"seconds": 2.004, "bytes": 60, "bits_per_second": 240.0, "packets": 10, "lost_packets": 4, "lost_percent": 40.0}
    }}"#;

    const TCP: &str = r#"{"end": {
      "sum_sent": {"seconds": 5.0, "bytes": 1000, "bits_per_second": 1600.0, "retransmits": 7},
      "sum_received": {"seconds": 5.01, "bytes": 990, "bits_per_second": 1580.0}
    }}"#;

    #[test]
    fn parses_udp_receiver_view() {
        let r = IperfResult::parse(UDP).expect("valid report");
        assert_eq!(r.received_bytes, 60.0);
        assert_eq!(r.received_bps, 240.0);
        assert_eq!(r.received_packets, Some(6.0));
        assert_eq!(r.lost_percent, Some(40.0));
        assert_eq!(r.retransmits, None);
    }

    #[test]
    fn parses_tcp() {
        let r = IperfResult::parse(TCP).expect("valid report");
        assert_eq!(r.received_bps, 1580.0);
        assert_eq!(r.retransmits, Some(7.0));
        assert_eq!(r.received_packets, None);
    }

    #[test]
    fn rejects_errors_and_garbage() {
        assert!(IperfResult::parse(r#"{"error": "unable to connect"}"#).is_err());
        assert!(IperfResult::parse("iperf3: error").is_err());
        assert!(IperfResult::parse("{not json}").is_err());
        assert!(IperfResult::parse(r#"{"end": {}}"#).is_err());
    }

    #[test]
    fn flow_flags() {
        assert!(Flow::Tcp { streams: 1 }.args().is_empty());
        assert_eq!(Flow::Tcp { streams: 4 }.args(), ["-P", "4"]);
        assert_eq!(Flow::Udp { len: 64 }.args(), ["-u", "-b", "0", "-l", "64"]);
    }
}
