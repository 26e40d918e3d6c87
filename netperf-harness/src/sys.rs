//! Signals, pipe sizes and CPU pinning: the harness's own calls to the OS. Commands, children
//! and namespaces are `xylem_lab`'s `process` and `netns` helpers, shared with the lab.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

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

/// Asks for a pipe of `bytes` (Linux caps it at `/proc/sys/fs/pipe-max-size`, 1 MiB by default,
/// for non-root); returns the size granted, or `None` if the kernel refused.
pub fn grow_pipe(pipe: &impl AsRawFd, bytes: usize) -> Option<usize> {
    let bytes = libc::c_int::try_from(bytes).ok()?;
    // SAFETY: F_SETPIPE_SZ takes an int argument and only changes the pipe's capacity; the fd is
    // open for as long as `pipe` is borrowed.
    let got = unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, bytes) };
    usize::try_from(got).ok()
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
}
