//! Processes, signals and CPU pinning: the only place the harness talks to the OS directly.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs SIGINT and SIGTERM handlers that only set a flag; the harness polls it and unwinds,
/// so every RAII guard removes what it created.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `sigaction` is zero-initialisable plain data; the handler only performs an
        // atomic store, which is async-signal-safe; the pointers passed are valid for the call.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Whether SIGINT or SIGTERM has arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Returns [`Error::Interrupted`] once a signal has arrived.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}

/// Whether the effective user is root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Finds `tool` on `PATH`.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// A command line as text, for logs and the report.
pub fn cmd_line<S: AsRef<str>>(args: &[S]) -> String {
    args.iter()
        .map(|a| {
            let a = a.as_ref();
            if a.is_empty() || a.contains([' ', '"', '\'', '*', '$']) {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn command(args: &[&str]) -> Result<Command> {
    let (prog, rest) = args
        .split_first()
        .ok_or_else(|| Error::Usage("empty command".into()))?;
    let mut c = Command::new(prog);
    c.args(rest);
    // The harness pins itself off the pod cores; children must not inherit that (the lab counts
    // the CPUs it may use, and taskset/netperf set their own pinning).
    // SAFETY: the closure only calls sched_setaffinity, an async-signal-safe syscall, on a
    // stack-local, fully initialised cpu_set_t; it allocates nothing.
    unsafe {
        c.pre_exec(|| {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for cpu in 0..libc::CPU_SETSIZE as usize {
                libc::CPU_SET(cpu, &mut set);
            }
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            Ok(())
        });
    }
    Ok(c)
}

/// Runs a short helper command (ip, ethtool, sysctl...) and returns its stdout; fails with its
/// stderr if it exits non-zero.
pub fn run(args: &[&str]) -> Result<String> {
    run_with_input(args, None)
}

/// Like [`run`], feeding `input` on stdin.
pub fn run_with_input(args: &[&str], input: Option<&str>) -> Result<String> {
    let cmd = cmd_line(args);
    let mut c = command(args)?;
    c.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().map_err(|source| Error::Spawn {
        cmd: cmd.clone(),
        source,
    })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|source| Error::Spawn {
                cmd: cmd.clone(),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| Error::Spawn {
        cmd: cmd.clone(),
        source,
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(Error::Command {
            cmd,
            status: out.status.to_string(),
            stderr: if stderr.is_empty() {
                stdout.trim().to_string()
            } else {
                stderr
            },
        })
    }
}

/// Output of a command run with [`run_timed`].
#[derive(Debug)]
pub struct Finished {
    /// Whether it exited with status 0.
    pub success: bool,
    /// The exit status as text.
    pub status: String,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

fn drain(mut r: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        // A read error just truncates the captured text.
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs a command to completion, killing it after `timeout` or when a signal arrives.
///
/// The wait polls every 200 ms: a few wake-ups per second on the harness's own core, which is
/// kept off the pod cores.
pub fn run_timed(args: &[&str], timeout: Duration) -> Result<Finished> {
    run_timed_env(args, &[], timeout)
}

/// [`run_timed`] with extra environment variables.
pub fn run_timed_env(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Result<Finished> {
    let cmd = cmd_line(args);
    let mut c = command(args)?;
    c.envs(env.iter().copied());
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().map_err(|source| Error::Spawn {
        cmd: cmd.clone(),
        source,
    })?;
    let mut guard = ChildGuard::new(child, cmd.clone());
    let out = guard.child.stdout.take().map(drain);
    let err = guard.child.stderr.take().map(drain);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = guard.child.try_wait().map_err(|source| Error::Spawn {
            cmd: cmd.clone(),
            source,
        })? {
            break status;
        }
        if interrupted() {
            return Err(Error::Interrupted);
        }
        if start.elapsed() > timeout {
            return Err(Error::Timeout {
                cmd,
                secs: timeout.as_secs(),
            });
        }
        thread::sleep(Duration::from_millis(200));
    };
    guard.reaped = true;
    let join =
        |h: Option<thread::JoinHandle<String>>| h.and_then(|h| h.join().ok()).unwrap_or_default();
    Ok(Finished {
        success: status.success(),
        status: status.to_string(),
        stdout: join(out),
        stderr: join(err),
    })
}

/// Spawns a long-running process (netserver, a spinner) with its output discarded.
pub fn spawn(args: &[&str]) -> Result<ChildGuard> {
    let cmd = cmd_line(args);
    let mut c = command(args)?;
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = c.spawn().map_err(|source| Error::Spawn {
        cmd: cmd.clone(),
        source,
    })?;
    Ok(ChildGuard::new(child, cmd))
}

/// Spawns a long-running process whose standard output and error the caller reads (the
/// `xylem monitor` client). The caller must keep reading both, or the process blocks on a full
/// pipe.
pub fn spawn_piped(args: &[&str]) -> Result<(ChildGuard, ChildStdout, ChildStderr)> {
    let cmd = cmd_line(args);
    let mut c = command(args)?;
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().map_err(|source| Error::Spawn {
        cmd: cmd.clone(),
        source,
    })?;
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        // Unreachable with both set to piped; the guard below still reaps the child.
        let _guard = ChildGuard::new(child, cmd.clone());
        return Err(Error::Spawn {
            cmd,
            source: std::io::Error::other("no stdout/stderr pipe"),
        });
    };
    Ok((ChildGuard::new(child, cmd), out, err))
}

/// Asks for a pipe of `bytes` (Linux caps it at `/proc/sys/fs/pipe-max-size`, 1 MiB by default,
/// for non-root); returns the size granted, or `None` if the kernel refused.
pub fn grow_pipe(pipe: &impl AsRawFd, bytes: usize) -> Option<usize> {
    let bytes = libc::c_int::try_from(bytes).ok()?;
    // SAFETY: F_SETPIPE_SZ takes an int argument and only changes the pipe's capacity; the fd is
    // open for as long as `pipe` is borrowed.
    let got = unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, bytes) };
    usize::try_from(got).ok()
}

/// Owns a child process; dropping it sends SIGTERM, then SIGKILL after a second, and reaps it.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    cmd: String,
    reaped: bool,
}

impl ChildGuard {
    fn new(child: Child, cmd: String) -> ChildGuard {
        ChildGuard {
            child,
            cmd,
            reaped: false,
        }
    }

    /// The command line, for messages.
    pub fn cmd(&self) -> &str {
        &self.cmd
    }

    /// Whether the process has already exited (it is then reaped).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Sends `sig` to the process, unless it has already exited (and been reaped).
    pub fn signal(&mut self, sig: libc::c_int) -> bool {
        if self.exited() {
            return false;
        }
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
            return false;
        };
        // SAFETY: `pid` is our own unreaped child (checked just above, and only this guard
        // reaps it), so the id cannot have been reused.
        unsafe { libc::kill(pid, sig) == 0 }
    }

    /// Waits up to `timeout` for the process to exit, polling every 20 ms; `None` if it is
    /// still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if start.elapsed() < timeout => thread::sleep(Duration::from_millis(20)),
                _ => return None,
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.reaped || matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: `pid` is our own unreaped child, so the id cannot have been reused.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(1) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses a CPU list such as `0`, `1-3` or `0,2-3`.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in s.trim().split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || Error::Usage(format!("bad CPU list `{s}`"));
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b {
                    return Err(bad());
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().map_err(|_| bad())?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Formats CPUs as a comma-separated list for `taskset -c`.
pub fn cpu_list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Pins the calling process (all future threads) to `cpus`.
pub fn pin_self(cpus: &[usize]) -> Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write within it; sched_setaffinity reads
    // `size_of::<cpu_set_t>()` bytes from a valid pointer.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(Error::Spawn {
            cmd: format!("sched_setaffinity({})", cpu_list(cpus)),
            source: std::io::Error::last_os_error(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() -> Result<()> {
        assert_eq!(parse_cpu_list("0")?, vec![0]);
        assert_eq!(parse_cpu_list("0,2-4")?, vec![0, 2, 3, 4]);
        assert_eq!(parse_cpu_list("")?, Vec::<usize>::new());
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
        assert_eq!(cpu_list(&[0, 1]), "0,1");
        Ok(())
    }

    #[test]
    fn command_lines_are_quoted() {
        assert_eq!(
            cmd_line(&["ip", "netns", "exec", "a b"]),
            "ip netns exec 'a b'"
        );
    }
}
