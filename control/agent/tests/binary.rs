//! The `xylem-agent` binary refuses what it cannot run, before touching anything: a missing or
//! invalid configuration is an error that names the file or the field and says what to do,
//! with a failing exit status. No root needed: nothing is attached before the configuration
//! is accepted.
//!
//! (These tests are also why `cargo test --workspace` builds the binary, which the lab tests
//! of `xylem-cli` start next to `xylem`.)

use std::process::Command;

fn agent(args: &[&str]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_xylem-agent"))
        .args(args)
        .output()
        .expect("xylem-agent runs");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn a_missing_configuration_file_is_named() {
    let (ok, err) = agent(&["--config", "/nonexistent/xylem-agent.yaml"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/xylem-agent.yaml"), "{err}");
}

#[test]
fn an_invalid_configuration_names_the_field_and_attaches_nothing() {
    let dir = std::env::temp_dir().join(format!("xylem-agent-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("agent.yaml");
    // Everything a configuration needs, and a batch size out of range.
    std::fs::write(
        &cfg,
        "node_name: n1\n\
         pod_cidr: 10.200.0.0/24\n\
         gateway: {ip: 10.200.0.1, mac: '0e:78:79:6c:00:01'}\n\
         ports: [{ifname: xylem-test-none, kind: pod, ip: 10.200.0.10, mac: '02:00:00:00:00:0a'}]\n\
         workers: {batch_size: 0}\n",
    )
    .unwrap();
    let (ok, err) = agent(&["--config", cfg.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!ok);
    assert!(
        err.contains("invalid configuration: workers.batch_size"),
        "{err}"
    );
}
