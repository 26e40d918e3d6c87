//! Privileged smoke test: every path, one short TCP_RR repetition, then no leftovers.
//!
//! Skips (and says why) when not root or when netperf is missing. Xylem paths may fail only
//! when the `xylem` binary is absent; if it exists they must produce numbers, and
//! `xylem-monitored` must have carried events and be set against `xylem` in the results and the
//! report; `xylem-encrypted` must be set against `xylem-multinode`, its agents must have run
//! ESP with the harness's key, and that key must be gone after the run.

use std::path::{Path, PathBuf};
use std::process::Command;

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// The xylem binary the harness would use: $XYLEM_BIN, else target/release/xylem, else `xylem`
/// next to the harness binary.
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

fn names(args: &[&str]) -> Vec<String> {
    Command::new("ip")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// `xylem-monitored`'s monitor carried events, and the run and the report set it against
/// `xylem` of the same run.
fn check_monitored(v: &serde_json::Value, out: &Path) {
    let runs = v["runs"].as_array().expect("runs array");
    let monitored: Vec<&serde_json::Value> = runs
        .iter()
        .filter(|r| r["path"] == "xylem-monitored")
        .collect();
    assert!(!monitored.is_empty(), "no xylem-monitored run");
    for r in &monitored {
        let events = r["monitor_events"].as_u64().unwrap_or(0);
        eprintln!(
            "xylem-monitored {} {}: {events} events, {} lost",
            r["placement"], r["test"], r["monitor_lost"]
        );
        assert!(events > 0, "the monitor carried no events: {r}");
        assert!(r["monitor_lost"].is_u64(), "lost count recorded: {r}");
    }
    let row = v["summary"]
        .as_array()
        .and_then(|s| s.iter().find(|r| r["path"] == "xylem-monitored"))
        .expect("xylem-monitored summary row");
    for k in ["ratio_p99_vs_xylem", "ratio_rate_vs_xylem"] {
        assert!(row[k].is_number(), "{k} missing: {row}");
    }
    assert!(row["monitor_events"].as_u64().unwrap_or(0) > 0, "{row}");
    let md = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    let cell = md
        .lines()
        .find(|l| l.starts_with("| TCP_RR | shared | idle |"))
        .unwrap_or_else(|| panic!("no monitor row in report.md:\n{md}"));
    eprintln!("report: {cell}");
    let cols: Vec<&str> = cell.split('|').map(str::trim).collect();
    // | test | placement | load | P99 ×xylem | rate ×xylem | Mbit/s ×xylem | spread | events | lost | verdict |
    assert!(cols[4].ends_with('×') && cols[5].ends_with('×'), "{cell}");
    assert!(
        cols[10] == "met" || cols[10].starts_with("not met"),
        "{cell}"
    );
}

/// The two-node paths: their agents ran what was asked (ESP only on `xylem-encrypted`), the
/// results and the report set `xylem-encrypted` against `xylem-multinode`, and the harness's key
/// directory is gone.
fn check_two_nodes(v: &serde_json::Value, out: &Path, harness_pid: u32) {
    let labs = &v["conditions"]["multinode"]["labs"];
    for (key, want) in [
        ("xylem-multinode (shared)", "disabled"),
        ("xylem-encrypted (shared)", "ipsec"),
    ] {
        let agents = labs[key]["agents"]
            .as_array()
            .unwrap_or_else(|| panic!("no agents recorded for {key}: {labs}"));
        assert_eq!(agents.len(), 2, "{key}: {agents:?}");
        for a in agents {
            assert_eq!(a["encryption"], want, "{key}: {a}");
            assert_eq!(a["placement"], "shared", "{key}: {a}");
        }
    }
    let row = v["summary"]
        .as_array()
        .and_then(|s| s.iter().find(|r| r["path"] == "xylem-encrypted"))
        .expect("xylem-encrypted summary row");
    for k in ["ratio_p99_vs_multinode", "ratio_rate_vs_multinode"] {
        assert!(row[k].is_number(), "{k} missing: {row}");
    }
    let md = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    let start = md.find("### ESP's cost").expect("the ESP section");
    let cell = md[start..]
        .lines()
        .find(|l| l.starts_with("| TCP_RR | shared | idle |"))
        .unwrap_or_else(|| panic!("no ESP row in report.md:\n{md}"));
    eprintln!("report: {cell}");
    let keys: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("netperf-harness-{harness_pid}-"))
        })
        .collect();
    assert!(
        keys.is_empty(),
        "the key directory was left behind: {keys:?}"
    );
}

#[test]
fn every_path_measures_or_says_why() {
    let test = "every_path_measures_or_says_why";
    if !xylem_testkit::root_or_skip(test) {
        return;
    }
    if !on_path("netperf") || !on_path("netserver") {
        xylem_testkit::skip(test, "netperf is not installed (run docker/bootstrap.sh)");
        return;
    }
    let harness = PathBuf::from(env!("CARGO_BIN_EXE_netperf-harness"));
    let xylem = xylem_bin(&harness);
    let xylem_present = xylem.is_file();
    if !xylem_present {
        eprintln!(
            "NOTE: no xylem binary at {}: the Xylem paths are expected to report an error",
            xylem.display()
        );
    }
    let out = std::env::temp_dir().join(format!("netperf-harness-smoke-{}", std::process::id()));
    let mut child = Command::new(&harness)
        .args([
            "run",
            "--tests",
            "TCP_RR",
            "--load",
            "idle",
            "--placements",
            "shared",
        ])
        .args(["--duration", "2", "--repeat", "1", "--out"])
        .arg(&out)
        .arg("--xylem-bin")
        .arg(&xylem)
        .spawn()
        .expect("harness starts");
    // The harness names everything it creates after its own pid: `xnh<pid>-…` for its
    // namespaces and links, lab `xnh<pid>` (namespaces `xylem-xnh<pid>-…`) for the Xylem paths.
    let harness_pid = child.id();
    let status = child.wait().expect("harness runs");
    assert!(status.success(), "harness exited with {status}");

    let text = std::fs::read_to_string(out.join("results.json")).expect("results.json written");
    let v: serde_json::Value = serde_json::from_str(&text).expect("results.json is JSON");
    let summary = v["summary"].as_array().expect("summary array");
    let all = [
        "veth",
        "veth-netfilter",
        "bridge",
        "ipvlan",
        "macvlan",
        "xylem-passthrough",
        "xylem",
        "xylem-monitored",
        "xylem-multinode",
        "xylem-encrypted",
    ];
    for path in all {
        let row = summary
            .iter()
            .find(|r| r["path"] == path)
            .unwrap_or_else(|| panic!("no summary row for {path}"));
        let has_numbers = row["p99_us"].is_number() && row["rate_per_s"].is_number();
        let unavailable = row["unavailable"].as_str();
        let error = row["error"].as_str();
        eprintln!(
            "{path}: p99 {} µs, rate {} /s, unavailable {unavailable:?}, error {error:?}",
            row["p99_us"], row["rate_per_s"]
        );
        if has_numbers || unavailable.is_some_and(|u| u.starts_with("unavailable: ")) {
            continue;
        }
        let xylem_path = path.starts_with("xylem");
        assert!(
            xylem_path && !xylem_present,
            "{path} produced no numbers and no unavailable reason (error: {error:?})"
        );
        let e = error.unwrap_or_default();
        assert!(
            e.contains(path) && e.contains("xylem binary not found"),
            "{path}: unclear error {e:?}"
        );
    }
    for f in ["report.md", "chart.svg", "chart.png"] {
        assert!(out.join(f).is_file(), "{f} written");
    }
    if xylem_present {
        check_monitored(&v, &out);
        check_two_nodes(&v, &out, harness_pid);
    }

    // Nothing left behind by this harness run (other runs may be going on at the same time,
    // e.g. another test suite on the machine, so only this run's prefixes count).
    let own = format!("xnh{harness_pid}-");
    let own_lab = format!("xylem-xnh{harness_pid}-");
    let leftover = |l: &String| {
        l.split_whitespace().any(|w| {
            let w = w.trim_end_matches(':');
            w.starts_with(&own) || w.starts_with(&own_lab)
        })
    };
    let ns: Vec<String> = names(&["netns", "list"])
        .into_iter()
        .filter(leftover)
        .collect();
    assert!(ns.is_empty(), "namespaces left behind: {ns:?}");
    let links: Vec<String> = names(&["-o", "link", "show"])
        .into_iter()
        .filter(leftover)
        .collect();
    assert!(links.is_empty(), "links left behind: {links:?}");
    let _ = std::fs::remove_dir_all(&out);
}
