//! Privileged smoke test of `netperf-harness dns`: one short repetition of the inspected setup
//! and the kernel reference, one throughput step, then no leftovers. Also checks that a bad
//! argument is refused with a message saying what to pass.
//!
//! Skips (and says why) when not root or when dnsperf, dnsmasq or dig is missing. Without a
//! `xylem` binary it measures only the veth setup.

use std::path::{Path, PathBuf};
use std::process::Command;

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// $XYLEM_BIN, else target/release/xylem, else `xylem` next to the harness binary.
fn xylem_bin(harness: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("XYLEM_BIN") {
        return PathBuf::from(p);
    }
    let dir = harness.parent().map(Path::to_path_buf).unwrap_or_default();
    let release = dir.parent().map(|t| t.join("release").join("xylem"));
    match release {
        Some(r) if r.is_file() => r,
        _ => dir.join("xylem"),
    }
}

#[test]
fn bad_rates_are_refused_with_what_to_pass() {
    let harness = env!("CARGO_BIN_EXE_netperf-harness");
    let o = Command::new(harness)
        .args(["dns", "--rates", "20000,10000"])
        .output()
        .expect("harness starts");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--rates must be ascending"), "{err}");
    let help = Command::new(harness)
        .args(["dns", "--help"])
        .output()
        .expect("harness starts");
    let text = String::from_utf8_lossy(&help.stdout);
    for word in [
        "passthrough",
        "inspected",
        "--throughput-passes",
        "results.json",
    ] {
        assert!(text.contains(word), "`dns --help` lacks {word}:\n{text}");
    }
}

#[test]
fn a_short_dns_run_measures_and_cleans_up() {
    let test = "a_short_dns_run_measures_and_cleans_up";
    if !xylem_testkit::root_or_skip(test) {
        return;
    }
    if let Some(t) = ["dnsperf", "dnsmasq", "dig", "netserver"]
        .into_iter()
        .find(|t| !on_path(t))
    {
        xylem_testkit::skip(test, &format!("{t} is not installed"));
        return;
    }
    let harness = PathBuf::from(env!("CARGO_BIN_EXE_netperf-harness"));
    let xylem = xylem_bin(&harness);
    let setups = if xylem.is_file() {
        "inspected,veth"
    } else {
        eprintln!(
            "NOTE: no xylem binary at {}: measuring veth only",
            xylem.display()
        );
        "veth"
    };
    let out = std::env::temp_dir().join(format!("netperf-harness-dns-{}", std::process::id()));
    let mut child = Command::new(&harness)
        .args(["dns", "--setups", setups, "--repeat", "1"])
        .args(["--latency-qps", "500", "--latency-duration", "1"])
        .args(["--rates", "2000", "--step-duration", "1", "--out"])
        .arg(&out)
        .arg("--xylem-bin")
        .arg(&xylem)
        .spawn()
        .expect("harness starts");
    let pid = child.id();
    let status = child.wait().expect("harness runs");
    assert!(status.success(), "harness exited with {status}");

    let text = std::fs::read_to_string(out.join("results.json")).expect("results.json written");
    let v: serde_json::Value = serde_json::from_str(&text).expect("results.json is JSON");
    assert_eq!(
        v["errors"].as_array().map(Vec::len),
        Some(0),
        "{}",
        v["errors"]
    );
    for setup in setups.split(',') {
        let run = v["latency"]
            .as_array()
            .and_then(|l| l.iter().find(|r| r["setup"] == setup))
            .unwrap_or_else(|| panic!("no latency run for {setup}"));
        assert!(run["latency"]["p99_us"].is_number(), "{run}");
        assert!(run["latency"]["n"].as_u64().unwrap_or(0) > 100, "{run}");
        let step = v["throughput"]
            .as_array()
            .and_then(|l| l.iter().find(|r| r["setup"] == setup))
            .unwrap_or_else(|| panic!("no throughput step for {setup}"));
        assert!(
            step["summary"]["completed"].as_u64().unwrap_or(0) > 0,
            "{step}"
        );
        if setup == "inspected" {
            // The dataplane parsed every answer of the run.
            let answers = run["counters"]["dns:answers"].as_u64().unwrap_or(0);
            assert!(answers > 100, "the DNS stage saw no answer: {run}");
            assert!(v["conditions"]["xdp"]["mode_in_effect"].is_string());
        }
    }
    for f in [
        "report.md",
        "chart.svg",
        "chart.png",
        "lab-dns.yaml",
        "policy-inspected.yaml",
    ] {
        assert!(out.join(f).is_file(), "{f} written");
    }
    let own = [format!("xnh{pid}-"), format!("xylem-xnh{pid}-")];
    let listed = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let left: Vec<&str> = listed
        .lines()
        .filter(|l| own.iter().any(|p| l.starts_with(p.as_str())))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    let _ = std::fs::remove_dir_all(&out);
}
