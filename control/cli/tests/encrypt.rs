//! The key manager through a running agent: no key file at start (the agent starts, without a
//! key, and says why), a key appearing, a rotation (the new key current at once, the old one in
//! grace until its period ends), and a broken file (the keys in use stay, the error is
//! reported); `xylem encrypt status` and `xylem status` say so, and never show key bytes.
//!
//! Needs root (the lab); without it the test prints why and skips.

use std::time::{Duration, Instant};

use serde_json::Value;

#[macro_use]
mod common;
use common::*;

const K1: &str = "0102030405060708090a0b0c0d0e0f1011121314";
const K2: &str = "a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4";

fn encryption(lab: &LabGuard) -> Value {
    serde_json::from_str(&lab.xylem(&["encrypt", "status", "-o", "json"])).unwrap()
}

/// Polls `encrypt status` until `ok` holds (the agent reads the key file every second).
fn wait_for(lab: &LabGuard, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let e = encryption(lab);
        if ok(&e) {
            return e;
        }
        assert!(Instant::now() < deadline, "{what}: {e}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn keys_are_loaded_rotated_with_a_grace_period_and_a_broken_file_keeps_them() {
    require_root!();
    let lab = LabGuard::up(&[]);
    let dir = std::env::temp_dir().join(format!("xylem-encrypt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("keys");
    let section = format!(
        "encryption:\n  key_file: {}\n  grace_period_s: 3\nstate_dir:",
        keys.display()
    );
    lab.restart_with_config("state_dir:", &section);

    // No file: started anyway, without a key, saying why.
    let st = lab.agent();
    assert_eq!(st["encryption"], "ipsec", "{st}");
    let e = encryption(&lab);
    assert_eq!(e["mode"], "ipsec");
    assert!(e["current_key_id"].is_null(), "{e}");
    assert!(
        e["last_error"].as_str().unwrap().contains("cannot be read"),
        "{e}"
    );
    let human = lab.xylem(&["encrypt", "status"]);
    assert!(human.contains("current key: none"), "{human}");

    // A key appears.
    std::fs::write(&keys, format!("1 rfc4106(gcm(aes)) 0x{K1} 128\n")).unwrap();
    let e = wait_for(&lab, "key 1 current", |e| e["current_key_id"] == 1);
    assert_eq!(key_states(&e), [(1, "current".into())]);
    assert!(e["last_error"].is_null(), "{e}");

    // Rotation: key 2 current at once, key 1 accepted for the grace period, then gone.
    std::fs::write(
        &keys,
        format!("1 rfc4106(gcm(aes)) 0x{K1} 128\n2 rfc4106(gcm(aes)) {K2} 128\n"),
    )
    .unwrap();
    let e = wait_for(&lab, "key 2 current", |e| e["current_key_id"] == 2);
    assert_eq!(key_states(&e), [(2, "current".into()), (1, "grace".into())]);
    wait_for(&lab, "key 1 expired", |e| {
        e["keys"].as_array().unwrap().len() == 1
    });

    // A broken file: key 2 stays, the error is reported naming the line and field.
    std::fs::write(&keys, format!("3 cbc(aes) {K1} 128\n")).unwrap();
    let e = wait_for(&lab, "the error reported", |e| !e["last_error"].is_null());
    assert_eq!(e["current_key_id"], 2, "{e}");
    assert!(
        e["last_error"]
            .as_str()
            .unwrap()
            .contains("line 1: algorithm"),
        "{e}"
    );
    let text = e.to_string() + &lab.xylem(&["encrypt", "status"]);
    assert!(
        !text.contains(K1) && !text.contains(K2),
        "key bytes shown: {text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
