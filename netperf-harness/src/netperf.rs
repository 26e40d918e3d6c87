//! netperf: the tests, the command line, and parsing of its `-o` (CSV) and `-k` (keyval) output.
//!
//! Parsing is pure (text in, [`Measurement`] out) so it is unit-tested without root or netperf.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The port netserver listens on inside the server pod's namespace (the lab's constant: the
/// harness starts netserver with the lab's helper).
pub use xylem_lab::NETSERVER_PORT;

/// Output selectors requested from netperf, in this order.
pub const SELECTORS: &[&str] = &[
    "MIN_LATENCY",
    "MEAN_LATENCY",
    "P50_LATENCY",
    "P90_LATENCY",
    "P99_LATENCY",
    "MAX_LATENCY",
    "STDDEV_LATENCY",
    "THROUGHPUT",
    "THROUGHPUT_UNITS",
    "TRANSACTION_RATE",
    "LOCAL_CPU_UTIL",
    "REMOTE_CPU_UTIL",
];

/// A netperf test the harness runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Test {
    /// TCP request/response, 1-byte request and response, one connection.
    #[serde(rename = "TCP_RR")]
    TcpRr,
    /// TCP connect/request/response: a new connection per transaction.
    #[serde(rename = "TCP_CRR")]
    TcpCrr,
    /// Bulk TCP throughput.
    #[serde(rename = "TCP_STREAM")]
    TcpStream,
    /// UDP request/response, 1-byte.
    #[serde(rename = "UDP_RR")]
    UdpRr,
}

impl Test {
    /// Every test, in report order.
    pub const ALL: [Test; 4] = [Test::TcpRr, Test::TcpCrr, Test::TcpStream, Test::UdpRr];

    /// netperf's name for the test.
    pub fn name(self) -> &'static str {
        match self {
            Test::TcpRr => "TCP_RR",
            Test::TcpCrr => "TCP_CRR",
            Test::TcpStream => "TCP_STREAM",
            Test::UdpRr => "UDP_RR",
        }
    }

    /// Request/response tests report latency and a transaction rate; streams report throughput.
    pub fn is_rr(self) -> bool {
        !matches!(self, Test::TcpStream)
    }

    /// Test-specific options (after `--`), without the output selectors.
    fn specific_args(self) -> &'static [&'static str] {
        if self.is_rr() { &["-r", "1,1"] } else { &[] }
    }
}

impl fmt::Display for Test {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Test {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Test::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                Error::Usage(format!(
                    "unknown test `{s}` (TCP_RR, TCP_CRR, TCP_STREAM, UDP_RR)"
                ))
            })
    }
}

/// The netperf argument vector (without any `ip netns exec`/`taskset` prefix).
pub fn netperf_args(test: Test, host: &str, duration_s: u32, cpu: u32) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "netperf".into(),
        "-H".into(),
        host.into(),
        "-p".into(),
        NETSERVER_PORT.to_string(),
        "-t".into(),
        test.name().into(),
        "-l".into(),
        duration_s.to_string(),
        "-T".into(),
        format!("{cpu},{cpu}"),
        "-c".into(),
        "-C".into(),
        "--".into(),
    ];
    args.extend(test.specific_args().iter().map(|s| s.to_string()));
    args.push("-k".into());
    args.push(SELECTORS.join(","));
    args
}

/// One netperf result, normalised: latencies in µs, rate in transactions/s, throughput in Mbit/s.
///
/// Fields that do not apply to the test are `None` (latency and rate for `TCP_STREAM`,
/// throughput for request/response tests).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// Minimum latency, µs.
    pub min_us: Option<f64>,
    /// Mean latency, µs.
    pub mean_us: Option<f64>,
    /// Median latency, µs.
    pub p50_us: Option<f64>,
    /// 90th percentile latency, µs.
    pub p90_us: Option<f64>,
    /// 99th percentile latency, µs.
    pub p99_us: Option<f64>,
    /// Maximum latency, µs.
    pub max_us: Option<f64>,
    /// Standard deviation of latency, µs.
    pub stddev_us: Option<f64>,
    /// Transactions per second (request/response tests).
    pub rate_per_s: Option<f64>,
    /// Throughput in 10^6 bit/s (stream tests).
    pub throughput_mbps: Option<f64>,
    /// Local (netperf side) CPU utilisation, percent of the machine, when measured.
    pub local_cpu_util: Option<f64>,
    /// Remote (netserver side) CPU utilisation, percent of the machine, when measured.
    pub remote_cpu_util: Option<f64>,
}

/// Lines netperf prints when a test could not run; the first one found becomes the error text.
const ERROR_MARKERS: &[&str] = &[
    "establish control",
    "establish_control",
    "resolve_host",
    "could not",
    "error",
    "failed",
    "refused",
    "unable",
    "timed out",
];

/// Finds netperf's own error message in its output, if it printed one.
pub fn find_error(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find(|l| {
            let lower = l.to_ascii_lowercase();
            ERROR_MARKERS.iter().any(|m| lower.contains(m))
        })
        .map(str::to_string)
}

/// Collects `KEY=VALUE` pairs (`-k` output) or a header line plus a value line (`-o` output).
///
/// CSV headers are netperf's long names ("99th Percentile Latency Microseconds"); they are mapped
/// back to selector names.
fn fields(text: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            let k = k.trim();
            if !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                map.insert(k.to_string(), v.trim().to_string());
            }
        }
    }
    if !map.is_empty() {
        return map;
    }
    // CSV: the header line is the last line whose next line has the same number of fields and
    // starts with a number.
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    for pair in lines.windows(2).rev() {
        let head: Vec<&str> = pair[0].split(',').map(str::trim).collect();
        let vals: Vec<&str> = pair[1].split(',').map(str::trim).collect();
        let numeric_first = vals.first().is_some_and(|v| v.parse::<f64>().is_ok());
        if head.len() == vals.len() && numeric_first && head.iter().any(|h| csv_key(h).is_some()) {
            for (h, v) in head.iter().zip(vals) {
                if let Some(k) = csv_key(h) {
                    map.insert(k.to_string(), v.to_string());
                }
            }
            break;
        }
    }
    map
}

/// Maps netperf's CSV header text to the selector name.
fn csv_key(header: &str) -> Option<&'static str> {
    let h = header.to_ascii_lowercase();
    Some(match h.as_str() {
        _ if h.starts_with("minimum latency") => "MIN_LATENCY",
        _ if h.starts_with("mean latency") => "MEAN_LATENCY",
        _ if h.starts_with("50th percentile latency") => "P50_LATENCY",
        _ if h.starts_with("90th percentile latency") => "P90_LATENCY",
        _ if h.starts_with("99th percentile latency") => "P99_LATENCY",
        _ if h.starts_with("maximum latency") => "MAX_LATENCY",
        _ if h.starts_with("stddev latency") => "STDDEV_LATENCY",
        "throughput" => "THROUGHPUT",
        "throughput units" => "THROUGHPUT_UNITS",
        _ if h.starts_with("transaction rate") => "TRANSACTION_RATE",
        _ if h.starts_with("local cpu util") => "LOCAL_CPU_UTIL",
        _ if h.starts_with("remote cpu util") => "REMOTE_CPU_UTIL",
        _ => return None,
    })
}

/// Latency unit factor to µs, from the CSV header ("... Microseconds"); keyval output is in µs.
fn latency_factor(text: &str) -> f64 {
    let lower = text.to_ascii_lowercase();
    if lower.contains("latency milliseconds") {
        1000.0
    } else if lower.contains("latency seconds") {
        1e6
    } else {
        1.0
    }
}

/// Converts a netperf throughput in `units` to Mbit/s, or `None` if it is not a bit/byte rate.
fn to_mbps(value: f64, units: &str) -> Option<f64> {
    let u = units.trim();
    let bits = match u {
        "10^0bits/s" => 1.0,
        "10^3bits/s" => 1e3,
        "10^6bits/s" => 1e6,
        "10^9bits/s" => 1e9,
        "Bytes/s" => 8.0,
        "KBytes/s" => 8.0 * 1024.0,
        "MBytes/s" => 8.0 * 1024.0 * 1024.0,
        "GBytes/s" => 8.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some(value * bits / 1e6)
}

/// Parses netperf's output for `test`.
///
/// `output` is stdout followed by stderr. A netperf error line ("establish control: are you sure
/// there is a netserver listening ...") with no result becomes [`Error::Netperf`].
pub fn parse(test: Test, output: &str) -> Result<Measurement> {
    let map = fields(output);
    let num = |k: &str| -> Option<f64> {
        map.get(k)
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite())
    };
    let has_result = if test.is_rr() {
        num("TRANSACTION_RATE").is_some() || num("P99_LATENCY").is_some()
    } else {
        num("THROUGHPUT").is_some()
    };
    if !has_result {
        return Err(match find_error(output) {
            Some(e) => Error::Netperf(e),
            None => Error::Parse(format!(
                "no {} result in output: {:?}",
                test.name(),
                output.chars().take(300).collect::<String>()
            )),
        });
    }
    let cpu = |k: &str| num(k).filter(|v| *v >= 0.0);
    let mut m = Measurement {
        local_cpu_util: cpu("LOCAL_CPU_UTIL"),
        remote_cpu_util: cpu("REMOTE_CPU_UTIL"),
        ..Measurement::default()
    };
    if test.is_rr() {
        let f = latency_factor(output);
        let lat = |k: &str| num(k).map(|v| v * f);
        m.min_us = lat("MIN_LATENCY");
        m.mean_us = lat("MEAN_LATENCY");
        m.p50_us = lat("P50_LATENCY");
        m.p90_us = lat("P90_LATENCY");
        m.p99_us = lat("P99_LATENCY");
        m.max_us = lat("MAX_LATENCY");
        m.stddev_us = lat("STDDEV_LATENCY");
        m.rate_per_s = num("TRANSACTION_RATE").or_else(|| {
            // Without TRANSACTION_RATE, THROUGHPUT is the rate when its unit is Trans/s.
            let units = map
                .get("THROUGHPUT_UNITS")
                .map(String::as_str)
                .unwrap_or("");
            num("THROUGHPUT").filter(|_| units.eq_ignore_ascii_case("Trans/s"))
        });
        if m.rate_per_s.is_some_and(|r| r <= 0.0) {
            return Err(Error::Netperf(format!(
                "{} completed no transactions{}",
                test.name(),
                find_error(output)
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )));
        }
    } else {
        let value = num("THROUGHPUT").unwrap_or(0.0);
        let units = map
            .get("THROUGHPUT_UNITS")
            .map(String::as_str)
            .unwrap_or("10^6bits/s");
        m.throughput_mbps = Some(
            to_mbps(value, units)
                .ok_or_else(|| Error::Parse(format!("unknown throughput unit `{units}`")))?,
        );
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV_RR: &str = "MIGRATED TCP REQUEST/RESPONSE TEST from 0.0.0.0 (0.0.0.0) port 0 AF_INET to 10.99.0.1 () port 0 AF_INET : demo : first burst 0 : cpu bind\n\
Minimum Latency Microseconds,Mean Latency Microseconds,50th Percentile Latency Microseconds,90th Percentile Latency Microseconds,99th Percentile Latency Microseconds,Maximum Latency Microseconds,Stddev Latency Microseconds,Throughput,Throughput Units,Transaction Rate Tran/s,Local CPU Util %,Remote CPU Util %\n\
12,14.26,14,15,17,1096,8.07,69886.96,Trans/s,69886.956,58.08,58.08\n";

    const KEYVAL_STREAM: &str = "MIGRATED TCP STREAM TEST from 0.0.0.0 (0.0.0.0) port 0 AF_INET to 10.99.0.1 () port 0 AF_INET : demo\n\
MIN_LATENCY=0\nMEAN_LATENCY=25.34\nP50_LATENCY=32\nP99_LATENCY=64\nTHROUGHPUT=5153.84\nTHROUGHPUT_UNITS=10^6bits/s\nTRANSACTION_RATE=1.000\nLOCAL_CPU_UTIL=63.26\nREMOTE_CPU_UTIL=63.26\n";

    #[test]
    fn parses_csv_rr() -> Result<()> {
        let m = parse(Test::TcpRr, CSV_RR)?;
        assert_eq!(m.min_us, Some(12.0));
        assert_eq!(m.p50_us, Some(14.0));
        assert_eq!(m.p90_us, Some(15.0));
        assert_eq!(m.p99_us, Some(17.0));
        assert_eq!(m.max_us, Some(1096.0));
        assert_eq!(m.stddev_us, Some(8.07));
        assert_eq!(m.rate_per_s, Some(69886.956));
        assert_eq!(m.throughput_mbps, None);
        assert_eq!(m.local_cpu_util, Some(58.08));
        Ok(())
    }

    #[test]
    fn parses_keyval_rr() -> Result<()> {
        let out = "P50_LATENCY=8\nP90_LATENCY=9\nP99_LATENCY=20\nTHROUGHPUT=115000.5\nTHROUGHPUT_UNITS=Trans/s\nTRANSACTION_RATE=115000.512\nLOCAL_CPU_UTIL=-1.00\n";
        let m = parse(Test::UdpRr, out)?;
        assert_eq!(m.p99_us, Some(20.0));
        assert_eq!(m.rate_per_s, Some(115000.512));
        assert_eq!(m.local_cpu_util, None, "netperf's -1 means not measured");
        Ok(())
    }

    #[test]
    fn stream_reports_throughput_only() -> Result<()> {
        let m = parse(Test::TcpStream, KEYVAL_STREAM)?;
        assert_eq!(m.throughput_mbps, Some(5153.84));
        assert_eq!(
            m.p99_us, None,
            "stream latency is not a request/response latency"
        );
        assert_eq!(m.rate_per_s, None);
        Ok(())
    }

    #[test]
    fn converts_throughput_units() {
        assert_eq!(to_mbps(5.0, "10^9bits/s"), Some(5000.0));
        assert_eq!(to_mbps(2000.0, "10^3bits/s"), Some(2.0));
        assert_eq!(to_mbps(1.0, "Trans/s"), None);
        let m = parse(
            Test::TcpStream,
            "THROUGHPUT=1.5\nTHROUGHPUT_UNITS=10^9bits/s\n",
        );
        assert_eq!(m.ok().and_then(|m| m.throughput_mbps), Some(1500.0));
    }

    #[test]
    fn netserver_missing_is_a_netperf_error() {
        let out = "establish control: are you sure there is a netserver listening on 10.99.0.3 at port 12865?\n\
establish_control could not establish the control connection from 0.0.0.0 port 0 address family AF_UNSPEC to 10.99.0.3 port 12865 address family AF_INET\n";
        match parse(Test::TcpRr, out) {
            Err(Error::Netperf(msg)) => {
                assert!(msg.contains("are you sure there is a netserver"), "{msg}")
            }
            other => panic!("expected a netperf error, got {other:?}"),
        }
    }

    #[test]
    fn zero_transactions_is_an_error() {
        let out = "P99_LATENCY=0\nTRANSACTION_RATE=0.000\n";
        assert!(matches!(parse(Test::UdpRr, out), Err(Error::Netperf(_))));
    }

    #[test]
    fn garbage_is_a_parse_error() {
        assert!(matches!(
            parse(Test::TcpRr, "hello\nworld\n"),
            Err(Error::Parse(_))
        ));
    }

    #[test]
    fn command_line_has_selectors_and_pinning() {
        let a = netperf_args(Test::TcpRr, "10.1.1.2", 5, 0);
        let line = a.join(" ");
        assert!(
            line.starts_with(
                "netperf -H 10.1.1.2 -p 12865 -t TCP_RR -l 5 -T 0,0 -c -C -- -r 1,1 -k MIN_LATENCY,"
            ),
            "{line}"
        );
        assert!(line.contains("P99_LATENCY") && line.contains("REMOTE_CPU_UTIL"));
        let s = netperf_args(Test::TcpStream, "h", 2, 1).join(" ");
        assert!(!s.contains("-r 1,1"));
    }

    #[test]
    fn test_names_round_trip() -> Result<()> {
        for t in Test::ALL {
            assert_eq!(t.name().parse::<Test>()?, t);
        }
        assert_eq!("tcp_crr".parse::<Test>()?, Test::TcpCrr);
        assert!("SCTP_RR".parse::<Test>().is_err());
        Ok(())
    }
}
