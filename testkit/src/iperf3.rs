//! iperf3: a one-off server (`-s -1 -J`), a client (`-c ... -J`), and their
//! JSON reports, read with `serde_json`. A report is read leniently (absent
//! figures are 0, an `error` is kept as a field), so a test can assert on
//! it; [`Iperf3Result::check`] is the strict reading a benchmark wants.

use std::fs;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::command::wait_until;
use crate::names::temp_path;
use crate::netns::Netns;
use crate::process::{read_lossy, Proc};
use crate::{signals, Error, Result};

/// How long a server gets to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(5);
/// How much longer than its test a client may run.
const CLIENT_SLACK: Duration = Duration::from_secs(20);

/// What a client sends (its extra flags, see [`Flow::args`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// TCP with this many parallel streams (`-P`).
    Tcp { streams: u32 },
    /// UDP as fast as it can (`-u -b 0`) with datagrams of `len` bytes (`-l`).
    Udp { len: u32 },
}

impl Flow {
    pub fn args(self) -> Vec<String> {
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

/// The figures of one iperf3 `-J` report. `sent_*` come from
/// `end.sum_sent`, `received_*` from `end.sum_received` (UDP: `end.sum`
/// for whichever is missing).
#[derive(Debug, Clone)]
pub struct Iperf3Result {
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub sent_bps: f64,
    pub received_bps: f64,
    /// The sender's test length.
    pub seconds: f64,
    /// The receiver's test length.
    pub received_seconds: f64,
    /// TCP only: segments the sender retransmitted.
    pub retransmits: Option<u64>,
    /// UDP only: datagrams that arrived (sent minus lost).
    pub received_packets: Option<u64>,
    /// UDP only: the receiver's loss in percent.
    pub lost_percent: Option<f64>,
    /// The report's `error`, also set when iperf3 exited non-zero.
    pub error: Option<String>,
    pub json: Value,
}

impl Iperf3Result {
    /// Reads a `-J` report. Stray text around the JSON object (warnings,
    /// stderr sharing a log) is ignored; only text without a JSON object is
    /// an error.
    pub fn parse(text: &str) -> Result<Iperf3Result> {
        let bad = |problem: String| Error::Parse {
            what: "iperf3 output",
            problem,
        };
        let start = text.find('{').ok_or_else(|| bad("no JSON".to_owned()))?;
        let end = text.rfind('}').ok_or_else(|| bad("no JSON".to_owned()))?;
        let json: Value = serde_json::from_str(text.get(start..=end).unwrap_or_default())
            .map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let error = json.get("error").and_then(Value::as_str).map(str::to_owned);
        let sum = |key: &str| {
            json.get("end")
                .and_then(|e| e.get(key).or_else(|| e.get("sum")))
        };
        let (sent, received) = (sum("sum_sent"), sum("sum_received"));
        let num = |s: Option<&Value>, key: &str| s.and_then(|s| s.get(key)).and_then(Value::as_f64);
        let packets = num(received, "packets");
        let lost = num(received, "lost_packets");
        Ok(Iperf3Result {
            sent_bytes: num(sent, "bytes").unwrap_or(0.0) as u64,
            received_bytes: num(received, "bytes").unwrap_or(0.0) as u64,
            sent_bps: num(sent, "bits_per_second").unwrap_or(0.0),
            received_bps: num(received, "bits_per_second").unwrap_or(0.0),
            seconds: num(sent, "seconds").unwrap_or(0.0),
            received_seconds: num(received, "seconds").unwrap_or(0.0),
            retransmits: num(sent, "retransmits").map(|r| r as u64),
            received_packets: match (packets, lost) {
                (Some(p), Some(l)) => Some((p - l).max(0.0) as u64),
                _ => None,
            },
            lost_percent: num(received, "lost_percent"),
            error,
            json,
        })
    }

    /// The strict reading: an error if iperf3 reported one, or if the report
    /// has no receiver's view covering some time.
    pub fn check(self) -> Result<Iperf3Result> {
        if let Some(error) = &self.error {
            return Err(Error::Iperf3(error.clone()));
        }
        let end = self.json.get("end");
        if end
            .and_then(|e| e.get("sum_received").or_else(|| e.get("sum")))
            .is_none()
        {
            return Err(Error::Iperf3("report has no end.sum_received".to_owned()));
        }
        if self.received_seconds.is_nan() || self.received_seconds <= 0.0 {
            return Err(Error::Iperf3(format!(
                "report covers {} s",
                self.received_seconds
            )));
        }
        Ok(self)
    }
}

/// A one-off server; dropping it stops it.
#[derive(Debug)]
pub struct Iperf3Server {
    proc_: Proc,
}

impl Iperf3Server {
    /// Starts `iperf3 -s -1 -J -B bind -p port` in `ns` and waits (bounded)
    /// until it listens.
    pub fn start(ns: &Netns, bind: &str, port: u16) -> Result<Iperf3Server> {
        let addr: IpAddr = bind.parse().map_err(|e| Error::Parse {
            what: "iperf3 bind address",
            problem: format!("{bind:?}: {e}"),
        })?;
        let port_s = port.to_string();
        let mut proc_ = ns.spawn(
            "iperf3",
            &["-s", "-1", "-J", "-B", bind, "-p", &port_s],
            &[],
        )?;
        let pid = proc_.pid();
        let listening = wait_until(LISTEN_TIMEOUT, Duration::from_millis(10), || {
            proc_.is_running() && listens(pid, addr, port)
        });
        if !listening {
            signals::check()?;
            return Err(Error::NotReady(format!(
                "iperf3 server on {bind}:{port} in {} not listening within {LISTEN_TIMEOUT:?}:\n{}",
                ns.name(),
                proc_.log_tail(10)
            )));
        }
        Ok(Iperf3Server { proc_ })
    }

    pub fn pid(&self) -> u32 {
        self.proc_.pid()
    }

    /// Waits (bounded) for the one-off server to exit after its test, and
    /// reads its report (its view of the test).
    pub fn finish(mut self, timeout: Duration) -> Result<Iperf3Result> {
        if self.proc_.wait_exit(timeout).is_none() {
            signals::check()?;
            return Err(Error::NotReady(format!(
                "iperf3 server still running {timeout:?} after the client finished:\n{}",
                self.proc_.log_tail(10)
            )));
        }
        let log = self.proc_.log();
        Iperf3Result::parse(&log)
    }
}

/// Whether process `pid` (in its namespace) has a TCP socket listening on
/// `addr:port`, from `/proc/PID/net/tcp{,6}` (no extra process needed).
fn listens(pid: u32, addr: IpAddr, port: u16) -> bool {
    // The kernel prints the address as native-endian u32s of its bytes.
    let (table, hex) = match addr {
        IpAddr::V4(a) => ("tcp", format!("{:08X}", u32::from_ne_bytes(a.octets()))),
        IpAddr::V6(a) => (
            "tcp6",
            a.octets()
                .chunks(4)
                .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
                .collect(),
        ),
    };
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
        return false;
    };
    let local = format!("{hex}:{port:04X}");
    text.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let local_field = fields.nth(1);
        let state = fields.nth(1);
        local_field == Some(local.as_str()) && state == Some("0A")
    })
}

/// A running client; its report goes to a file, removed on drop.
#[derive(Debug)]
pub struct Iperf3Client {
    proc_: Proc,
    json: PathBuf,
    stderr: PathBuf,
    limit: Duration,
}

impl Iperf3Client {
    /// Starts `iperf3 -c server -p port -t seconds -J --connect-timeout 3000`
    /// plus `extra` (e.g. "-R", "-u", or [`Flow::args`]) in `ns`.
    pub fn start(
        ns: &Netns,
        server: &str,
        port: u16,
        seconds: u32,
        extra: &[impl AsRef<str>],
    ) -> Result<Iperf3Client> {
        let (port_s, secs) = (port.to_string(), seconds.to_string());
        let mut args = vec![
            "-c",
            server,
            "-p",
            &port_s,
            "-t",
            &secs,
            "-J",
            "--connect-timeout",
            "3000",
        ];
        args.extend(extra.iter().map(AsRef::as_ref));
        let json = temp_path("iperf3", "json");
        let stderr = temp_path("iperf3", "err");
        let cmd = ns.command("iperf3", &args);
        let what = format!("iperf3 {}", args.join(" "));
        let proc_ = Proc::spawn_to(cmd, &what, &json, &stderr);
        let client = Iperf3Client {
            proc_: match proc_ {
                Ok(p) => p,
                Err(e) => {
                    let _ = fs::remove_file(&json);
                    let _ = fs::remove_file(&stderr);
                    return Err(e);
                }
            },
            json,
            stderr,
            limit: Duration::from_secs(u64::from(seconds)) + CLIENT_SLACK,
        };
        Ok(client)
    }

    pub fn pid(&self) -> u32 {
        self.proc_.pid()
    }

    /// Waits for the client (its test length + 20 s at most) and reads its
    /// report; a non-zero exit without an `error` in the report becomes one.
    pub fn finish(mut self) -> Result<Iperf3Result> {
        let status = self.proc_.wait_exit(self.limit);
        let text = read_lossy(&self.json);
        let Some(status) = status else {
            signals::check()?;
            return Err(Error::NotReady(format!(
                "iperf3 client still running after {:?}",
                self.limit
            )));
        };
        let mut result = Iperf3Result::parse(&text).map_err(|e| Error::Parse {
            what: "iperf3 client",
            problem: format!("({status}) {e}\n{text}{}", self.proc_.log_tail(5)),
        })?;
        if !status.success() && result.error.is_none() {
            result.error = Some(format!("iperf3 exited with {status}"));
        }
        Ok(result)
    }
}

impl Drop for Iperf3Client {
    fn drop(&mut self) {
        self.proc_.stop();
        if !std::thread::panicking() {
            let _ = fs::remove_file(&self.json);
            let _ = fs::remove_file(&self.stderr);
        }
    }
}

/// Runs a client to the end: [`Iperf3Client::start`], then `finish`.
pub fn iperf3_client(
    ns: &Netns,
    server: &str,
    port: u16,
    seconds: u32,
    extra: &[impl AsRef<str>],
) -> Result<Iperf3Result> {
    Iperf3Client::start(ns, server, port, seconds, extra)?.finish()
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
        let r = Iperf3Result::parse(UDP)
            .and_then(Iperf3Result::check)
            .expect("valid report");
        assert_eq!(r.received_bytes, 60);
        assert_eq!(r.received_bps, 240.0);
        assert_eq!(r.received_seconds, 2.004);
        assert_eq!(r.received_packets, Some(6));
        assert_eq!(r.lost_percent, Some(40.0));
        assert_eq!(r.retransmits, None);
        assert_eq!(r.sent_bytes, 100);
    }

    #[test]
    fn parses_tcp() {
        let r = Iperf3Result::parse(TCP)
            .and_then(Iperf3Result::check)
            .expect("valid report");
        assert_eq!(r.received_bps, 1580.0);
        assert_eq!(r.seconds, 5.0);
        assert_eq!(r.retransmits, Some(7));
        assert_eq!(r.received_packets, None);
        assert_eq!(r.error, None);
    }

    #[test]
    fn errors_are_kept_then_rejected() {
        let r = Iperf3Result::parse(r#"{"error": "unable to connect"}"#).expect("parses");
        assert_eq!(r.error.as_deref(), Some("unable to connect"));
        assert_eq!(r.received_bytes, 0);
        assert!(r.check().is_err());
        assert!(Iperf3Result::parse("iperf3: error").is_err());
        assert!(Iperf3Result::parse("{not json}").is_err());
        let empty = Iperf3Result::parse(r#"{"end": {}}"#).expect("parses");
        assert!(empty.check().is_err());
    }

    #[test]
    fn flow_flags() {
        assert!(Flow::Tcp { streams: 1 }.args().is_empty());
        assert_eq!(Flow::Tcp { streams: 4 }.args(), ["-P", "4"]);
        assert_eq!(Flow::Udp { len: 64 }.args(), ["-u", "-b", "0", "-l", "64"]);
    }
}
