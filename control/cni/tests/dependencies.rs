//! The plugin runs on every node for every pod: it must not drag in the dataplane that runs.
//! Its normal dependency tree has no XDP loader (aya), no AF_XDP (xsk-rs, libxdp) and no HTTP
//! server (axum); the agent's API client (hyper's client half) is expected.

use std::process::Command;

#[test]
fn the_plugin_links_no_xdp_afxdp_or_http_server_crate() {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--manifest-path",
            manifest,
            "-p",
            "xylem-cni",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .output()
        .expect("run cargo tree");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let crates: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        crates.contains(&"xylem-api"),
        "the tree is not the plugin's: {text}"
    );
    for banned in [
        "aya",
        "aya-obj",
        "xsk-rs",
        "libxdp-sys",
        "libbpf-sys",
        "axum",
    ] {
        assert!(
            !crates.contains(&banned),
            "xylem-cni depends on {banned}: {text}"
        );
    }
}
