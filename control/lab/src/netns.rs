//! Network namespaces and netserver in them, for the lab and `netperf-harness`.
//!
//! Everything here goes through `ip netns` and `ip -n`, so it only ever touches the namespaces
//! it is given: never the machine's own.

use std::time::{Duration, Instant};

use xylem_dataplane::tables::MacAddr;

use crate::error::Error;
use crate::process::{self, ChildGuard};

/// netperf's control port, on which netserver listens.
pub const NETSERVER_PORT: u16 = 12865;

/// `ip netns exec NS ARGS...` as an argument vector.
pub fn exec_args<'a>(ns: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    v
}

/// Creates namespace `name` and brings its loopback up; if that fails, the namespace is
/// removed again. The namespace stays after the call (see [`Netns`] for one that goes away).
pub fn add(name: &str) -> Result<(), Error> {
    Netns::create(name).map(Netns::keep)
}

/// The namespaces whose names start with `prefix` (`""`: all of them). An `ip netns list` that
/// fails lists none.
pub fn list(prefix: &str) -> Vec<String> {
    process::run(&["ip", "netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// The processes running in namespace `name` (none if it does not exist).
pub fn pids(name: &str) -> Vec<libc::pid_t> {
    process::run(&["ip", "netns", "pids", name])
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Sends `sig` to every process in the namespaces `names`; whether there was any.
fn signal_all(names: &[String], sig: libc::c_int) -> bool {
    let mut any = false;
    for ns in names {
        for pid in pids(ns) {
            any = true;
            // SAFETY: kill(2) has no memory-safety preconditions; the pid was just listed in a
            // namespace the caller created and owns, so only its own processes are signalled.
            unsafe { libc::kill(pid, sig) };
        }
    }
    any
}

/// Kills every process in namespace `name` with SIGKILL and deletes it. Errors are ignored: this
/// runs from `Drop` and from final sweeps, where nothing could report them.
pub fn remove(name: &str) {
    let names = [name.to_string()];
    for _ in 0..3 {
        if !signal_all(&names, libc::SIGKILL) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = process::run(&["ip", "netns", "del", name]);
}

/// Stops every process in the namespaces `names` — SIGTERM, and SIGKILL for whatever is still
/// there after 5 s, so a well-behaved process (the agent) can clean up — then deletes the
/// namespaces, which destroys their interfaces. Fails at the first namespace that cannot be
/// deleted.
pub fn remove_all(names: &[String]) -> Result<(), Error> {
    for sig in [libc::SIGTERM, libc::SIGKILL] {
        if !signal_all(names, sig) {
            break;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && names.iter().any(|ns| !pids(ns).is_empty()) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for ns in names {
        process::run(&["ip", "netns", "delete", ns])?;
    }
    Ok(())
}

/// A network namespace owned by its creator: dropping it (also while unwinding from a panic)
/// kills whatever runs in it and deletes it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace and brings its loopback up.
    pub fn create(name: &str) -> Result<Netns, Error> {
        process::run(&["ip", "netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (usable with `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS...`.
    pub fn ip(&self, args: &[&str]) -> Result<String, Error> {
        let mut v = vec!["ip", "-n", self.name.as_str()];
        v.extend_from_slice(args);
        process::run(&v)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Result<String, Error> {
        process::run(&exec_args(&self.name, args))
    }

    /// Gives up ownership: the namespace stays, and the caller removes it later (the lab's
    /// namespaces outlive the command that made them, until `lab down`).
    fn keep(mut self) {
        // An empty name makes `drop` a no-op; `forget` would do too, but would leak the name.
        self.name.clear();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.name.is_empty() {
            remove(&self.name);
        }
    }
}

/// The MAC address of `ifname` in namespace `netns`.
pub(crate) fn read_mac(netns: &str, ifname: &str) -> Result<MacAddr, Error> {
    let out = process::run(&["ip", "-n", netns, "-j", "link", "show", ifname])?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| Error::Command {
        command: format!("ip -n {netns} -j link show {ifname}"),
        detail: e.to_string(),
    })?;
    v.get(0)
        .and_then(|l| l.get("address"))
        .and_then(|a| a.as_str())
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| Error::Command {
            command: format!("ip -n {netns} -j link show {ifname}"),
            detail: "no MAC address in the output".into(),
        })
}

/// Starts `netserver` (it daemonizes) in network namespace `netns` and returns once it
/// listens, so a netperf started right after never races it. Nothing owns the daemon: `lab
/// down` stops it with the lab's other processes.
pub fn start_netserver(netns: &str) -> Result<(), Error> {
    let port = NETSERVER_PORT.to_string();
    let args = exec_args(netns, &["netserver", "-4", "-p", &port]);
    process::run(&args)?;
    // A daemon that failed after forking is only seen as not listening: give it long enough
    // that a slow machine is not mistaken for a failure.
    wait_listening(
        netns,
        &process::cmd_line(&args),
        None,
        Duration::from_secs(10),
    )
}

/// Runs `netserver` in the foreground in namespace `netns`, pinned to the CPU list `cpus` (as
/// `taskset -c` takes it), and returns once it listens; dropping the guard stops it, which must
/// happen before its namespace is deleted.
pub fn spawn_netserver(netns: &str, cpus: &str) -> Result<ChildGuard, Error> {
    let port = NETSERVER_PORT.to_string();
    let args = exec_args(
        netns,
        &["taskset", "-c", cpus, "netserver", "-D", "-p", &port],
    );
    let mut guard = process::spawn(&args)?;
    // An exit is seen at once here, so the limit only bounds a start that hangs.
    let cmd = guard.cmd().to_string();
    wait_listening(netns, &cmd, Some(&mut guard), Duration::from_secs(5))?;
    Ok(guard)
}

/// Polls `ss` in `netns` until something listens on [`NETSERVER_PORT`]; fails after `limit`, or
/// as soon as `child` (the netserver, when the caller owns it) has exited.
fn wait_listening(
    netns: &str,
    command: &str,
    mut child: Option<&mut ChildGuard>,
    limit: Duration,
) -> Result<(), Error> {
    let filter = format!("sport = :{NETSERVER_PORT}");
    let start = Instant::now();
    loop {
        let listening = process::run(&exec_args(netns, &["ss", "-Hltn", &filter]))
            .is_ok_and(|s| !s.trim().is_empty());
        if listening {
            return Ok(());
        }
        let exited = child.as_mut().is_some_and(|c| c.exited());
        if exited || start.elapsed() > limit {
            return Err(Error::NotListening {
                command: command.to_string(),
                port: NETSERVER_PORT,
                secs: limit.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_args_prefix() {
        assert_eq!(
            exec_args("ns", &["ss", "-lt"]),
            vec!["ip", "netns", "exec", "ns", "ss", "-lt"]
        );
    }
}
