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

/// Writes a valid configuration plus `extra` and runs the agent on it with `flags`.
fn agent_with(name: &str, extra: &str, flags: &[&str]) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("xylem-agent-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("agent.yaml");
    std::fs::write(
        &cfg,
        format!(
            "node_name: n1\n\
             pod_cidr: 10.200.0.0/24\n\
             gateway: {{ip: 10.200.0.1, mac: '0e:78:79:6c:00:01'}}\n\
             ports: [{{ifname: xylem-test-none, kind: pod, ip: 10.200.0.10, mac: '02:00:00:00:00:0a'}}]\n\
             state_dir: {}\n\
             api_socket: {}\n\
             {extra}",
            dir.join("state").display(),
            dir.join("agent.sock").display()
        ),
    )
    .unwrap();
    let mut args = vec!["--config", cfg.to_str().unwrap()];
    args.extend_from_slice(flags);
    let out = agent(&args);
    let _ = std::fs::remove_dir_all(&dir);
    out
}

#[test]
fn a_maglev_table_size_that_is_not_a_supported_prime_stops_the_start() {
    let (ok, err) = agent_with("m", "services: {maglev_table_size: 16384}\n", &[]);
    assert!(!ok);
    assert!(
        err.contains("invalid configuration: services.maglev_table_size") && err.contains("16381"),
        "{err}"
    );
    // The flag overrides the file, and is checked the same way.
    let (ok, err) = agent_with("m-flag", "", &["--maglev-table-size", "1000"]);
    assert!(!ok);
    assert!(
        err.contains("services.maglev_table_size") && err.contains("1000"),
        "{err}"
    );
}

#[test]
fn an_unknown_load_balancing_algorithm_stops_the_start() {
    let (ok, err) = agent_with("alg", "services: {algorithm: roundrobin}\n", &[]);
    assert!(!ok);
    assert!(
        err.contains("services.algorithm") && err.contains("maglev"),
        "{err}"
    );
    let (ok, err) = agent_with("alg-flag", "", &["--lb-algorithm", "roundrobin"]);
    assert!(!ok);
    assert!(
        err.contains("lb-algorithm") && err.contains("maglev") && err.contains("random"),
        "{err}"
    );
}

#[test]
fn a_bad_fqdn_setting_stops_the_start_naming_the_field() {
    let (ok, err) = agent_with("fq-max", "fqdn: {max_ips_per_name: 0}\n", &[]);
    assert!(!ok);
    assert!(
        err.contains("invalid configuration: fqdn.max_ips_per_name"),
        "{err}"
    );
    let (ok, err) = agent_with("fq-rcode", "fqdn: {reject_response: servfail}\n", &[]);
    assert!(!ok);
    assert!(
        err.contains("fqdn.reject_response") && err.contains("refused"),
        "{err}"
    );
    let (ok, err) = agent_with("fq-typo", "fqdn: {min_ttl: 3600}\n", &[]);
    assert!(!ok);
    assert!(err.contains("min_ttl"), "{err}");
    // Cilium's flags override the file, and are checked the same way.
    let (ok, err) = agent_with(
        "fq-flag-max",
        "",
        &["--tofqdns-endpoint-max-ip-per-hostname", "0"],
    );
    assert!(!ok);
    assert!(err.contains("fqdn.max_ips_per_name"), "{err}");
    let (ok, err) = agent_with(
        "fq-flag-rcode",
        "",
        &["--tofqdns-dns-reject-response-code", "servfail"],
    );
    assert!(!ok);
    assert!(
        err.contains("tofqdns-dns-reject-response-code") && err.contains("nameError"),
        "{err}"
    );
    let (ok, err) = agent_with("fq-flag-ttl", "", &["--tofqdns-min-ttl=soon"]);
    assert!(!ok);
    assert!(err.contains("tofqdns-min-ttl"), "{err}");
}
