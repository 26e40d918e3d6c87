//! `xylem-cni`: run by a container runtime with the CNI protocol (environment variables and the
//! network configuration on stdin); prints the result or the error on stdout.

use std::io::{Read as _, Write as _};
use std::process::ExitCode;

use xylem_cni::conf::LATEST_VERSION;
use xylem_cni::env::Env;
use xylem_cni::{CniError, commands};

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin()
        .read_to_end(&mut stdin)
        .map_err(|e| CniError::io("reading the network configuration on stdin", e));
    // Errors are written in the configuration's version where it has a supported one.
    let version = serde_json::from_slice::<serde_json::Value>(&stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(|v| v.as_str())
                .map(String::from)
        })
        .filter(|v| xylem_cni::conf::SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST_VERSION.to_string());
    let outcome = read
        .and_then(|_| Env::read(|k| std::env::var(k).ok()))
        .and_then(|env| commands::run(&env, &stdin));
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(json) => {
            if let Some(json) = json {
                let _ = writeln!(out, "{json}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(out, "{}", e.to_json(&version));
            // The runtime logs stderr; a person running the plugin by hand reads it.
            eprintln!("xylem-cni: {e}");
            ExitCode::FAILURE
        }
    }
}
