//! Running helper commands (`ip`, `ethtool`, `netserver`, `netperf`…) with their output
//! captured, and owning long-running children. The lab and `netperf-harness` both run their
//! commands through here.
//!
//! Every child is started on every CPU of the machine, whatever the caller's own affinity: the
//! harness pins itself off the pod cores, and what it starts must not inherit that (the lab
//! counts the CPUs it may use, and `taskset`/netperf set their own pinning). A caller that wants
//! a child pinned says so with `taskset`.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::Error;

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

/// Whether process `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

/// A command line as text, for logs, messages and reports; arguments a shell would split or
/// expand are quoted, so the line can be pasted into a shell.
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

/// The command for `args`, allowed on every CPU (see the module's documentation).
fn command(args: &[&str]) -> Result<Command, Error> {
    let (prog, rest) = args.split_first().ok_or(Error::EmptyCommand)?;
    let mut c = Command::new(prog);
    c.args(rest);
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

fn spawn_failed(command: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Spawn {
        command: command.to_string(),
        source,
    }
}

/// Runs a short helper command (`ip`, `ethtool`, `sysctl`…) and returns its stdout; fails with
/// its stderr (or its stdout, if it wrote no error) when it exits non-zero.
pub fn run(args: &[&str]) -> Result<String, Error> {
    run_with_input(args, None)
}

/// Like [`run`], feeding `input` on stdin.
pub fn run_with_input(args: &[&str], input: Option<&str>) -> Result<String, Error> {
    let cmd = cmd_line(args);
    let mut c = command(args)?;
    c.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().map_err(spawn_failed(&cmd))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(spawn_failed(&cmd))?;
    }
    let out = child.wait_with_output().map_err(spawn_failed(&cmd))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(Error::Exit {
            command: cmd,
            status: out.status.to_string(),
            stderr: if stderr.is_empty() {
                stdout.trim().to_string()
            } else {
                stderr
            },
        })
    }
}

/// Starts `sh -c CMD` in namespace `netns`, detached in its own session with `env` set and its
/// output appended to `log` (its directory made if need be); returns the pid of the `sh`.
/// Nothing owns it: it outlives the command that started it, until `lab down` kills every
/// process of the lab's namespaces. The lab starts pods' `run:` commands and the world's
/// listeners this way.
pub fn spawn_detached(
    netns: &str,
    cmd: &str,
    env: &[(&str, String)],
    log: &Path,
) -> Result<u32, Error> {
    let file_err = |what: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| Error::File(xylem_api::FileError { what, path, source })
    };
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(file_err("creating a log directory", dir))?;
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(file_err("opening a command's log", log))?;
    let err = out
        .try_clone()
        .map_err(file_err("opening a command's log", log))?;
    let mut c = Command::new("ip");
    c.args(["netns", "exec", netns, "sh", "-c", cmd])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent; it detaches
    // the command from the CLI's session so that it keeps serving after the CLI exits and
    // ignores the terminal's signals.
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = c.spawn().map_err(|e| Error::Command {
        command: format!("ip netns exec {netns} sh -c {cmd:?}"),
        detail: e.to_string(),
    })?;
    Ok(child.id())
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

/// Runs a command to completion with the extra environment variables `env`, killing it after
/// `timeout` ([`Error::Timeout`]) or once `stop()` returns true ([`Error::Stopped`]; the
/// harness passes its signal flag). An unsuccessful exit is not an error here: the caller reads
/// [`Finished`].
///
/// The wait polls every 200 ms: a few wake-ups per second on the caller's core, which the
/// harness keeps off the pod cores.
pub fn run_timed(
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
    stop: impl Fn() -> bool,
) -> Result<Finished, Error> {
    let cmd = cmd_line(args);
    let mut c = command(args)?;
    c.envs(env.iter().copied());
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().map_err(spawn_failed(&cmd))?;
    let mut guard = ChildGuard::new(child, cmd.clone());
    let out = guard.child.stdout.take().map(drain);
    let err = guard.child.stderr.take().map(drain);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = guard.child.try_wait().map_err(spawn_failed(&cmd))? {
            break status;
        }
        if stop() {
            return Err(Error::Stopped { command: cmd });
        }
        if start.elapsed() > timeout {
            return Err(Error::Timeout {
                command: cmd,
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
pub fn spawn(args: &[&str]) -> Result<ChildGuard, Error> {
    let cmd = cmd_line(args);
    let mut c = command(args)?;
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = c.spawn().map_err(spawn_failed(&cmd))?;
    Ok(ChildGuard::new(child, cmd))
}

/// Spawns a long-running process whose standard output and error the caller reads (the
/// harness's `xylem monitor` client). The caller must keep reading both, or the process blocks
/// on a full pipe.
pub fn spawn_piped(args: &[&str]) -> Result<(ChildGuard, ChildStdout, ChildStderr), Error> {
    let cmd = cmd_line(args);
    let mut c = command(args)?;
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().map_err(spawn_failed(&cmd))?;
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        // Unreachable with both set to piped; the guard below still reaps the child.
        let _guard = ChildGuard::new(child, cmd.clone());
        return Err(Error::Spawn {
            command: cmd,
            source: std::io::Error::other("no stdout/stderr pipe"),
        });
    };
    Ok((ChildGuard::new(child, cmd), out, err))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_are_quoted() {
        assert_eq!(
            cmd_line(&["ip", "netns", "exec", "a b"]),
            "ip netns exec 'a b'"
        );
        assert_eq!(cmd_line(&["echo", "it's"]), "echo 'it'\\''s'");
        assert_eq!(cmd_line(&["echo", ""]), "echo ''");
    }

    #[test]
    fn run_captures_stdout_and_reports_failures() {
        assert_eq!(run(&["sh", "-c", "echo hi"]).unwrap(), "hi\n");
        match run(&["sh", "-c", "echo oops >&2; exit 3"]) {
            Err(Error::Exit { stderr, status, .. }) => {
                assert_eq!(stderr, "oops");
                assert!(status.contains('3'), "{status}");
            }
            other => panic!("{other:?}"),
        }
        // No stderr: the message falls back to stdout.
        match run(&["sh", "-c", "echo out; exit 1"]) {
            Err(Error::Exit { stderr, .. }) => assert_eq!(stderr, "out"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(run(&[]), Err(Error::EmptyCommand)));
        assert!(matches!(
            run(&["/nonexistent/xylem-no-such-tool"]),
            Err(Error::Spawn { .. })
        ));
    }

    #[test]
    fn run_with_input_feeds_stdin() {
        assert_eq!(run_with_input(&["cat"], Some("abc")).unwrap(), "abc");
    }

    #[test]
    fn run_timed_finishes_times_out_and_stops() {
        let f = run_timed(
            &["sh", "-c", "echo $X; echo e >&2; exit 2"],
            &[("X", "from-env")],
            Duration::from_secs(10),
            || false,
        )
        .unwrap();
        assert!(!f.success);
        assert_eq!(f.stdout, "from-env\n");
        assert_eq!(f.stderr, "e\n");
        assert!(matches!(
            run_timed(&["sleep", "5"], &[], Duration::ZERO, || false),
            Err(Error::Timeout { secs: 0, .. })
        ));
        assert!(matches!(
            run_timed(&["sleep", "5"], &[], Duration::from_secs(10), || true),
            Err(Error::Stopped { .. })
        ));
    }

    #[test]
    fn child_guard_kills_on_drop() {
        let mut g = spawn(&["sleep", "30"]).unwrap();
        assert!(!g.exited());
        let pid = g.child.id();
        assert!(pid_alive(pid));
        drop(g);
        assert!(!pid_alive(pid));
    }
}
