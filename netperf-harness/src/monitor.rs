//! The `xylem monitor` client of the `xylem-monitored` path.
//!
//! For each test, the runner attaches `xylem --socket <lab api socket> monitor -o json` (every
//! event type: a trace event per forwarded frame, policy verdicts, drops), waits until it prints
//! `Listening for events` on stderr (the agent has attached it: from then on no event is missed
//! silently), runs netperf, waits until the monitor's output has been quiet for [`QUIET`] (the
//! agent's backlog has reached it), and stops it with SIGINT. A thread drains its stdout while
//! it runs, counting lines; the last line is the monitor's own summary, `{"events":N,"lost":M}`.
//!
//! The drain thread is a cheap consumer, so that what is measured is the monitor's cost, not the
//! harness's: it runs pinned with the harness (off the pod cores; on a 2-CPU machine that is the
//! dedicated worker's core), and instead of waking for every line the client writes, it reads
//! what has accumulated in a 1 MiB pipe every [`DRAIN_PAUSE`] (the pipe holds thousands of lines,
//! more than the client writes in that time).
//!
//! The client is not pinned (children of the harness get every CPU back): it runs wherever the
//! scheduler puts it, like a user's `xylem monitor` in a shell on the node.
//!
//! Line counting and summary parsing are pure ([`Lines`], [`counts_from`]) and unit-tested.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{ChildStderr, ChildStdout};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use xylem_lab::process::{self, ChildGuard};

use crate::error::{Error, Result};
use crate::sys;

/// The line the monitor prints on stderr once the agent has attached it.
pub const LISTENING: &str = "Listening for events";
/// How long the monitor may take to attach.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(15);
/// After netperf ends, the monitor is stopped once no line has arrived for this long.
pub const QUIET: Duration = Duration::from_millis(100);
/// ... or after this long, if events keep coming.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(3);
/// The drain thread sleeps this long after a read that did not fill its buffer.
pub const DRAIN_PAUSE: Duration = Duration::from_millis(5);
/// The capacity asked for the monitor's stdout pipe.
pub const PIPE_BYTES: usize = 1 << 20;
/// How long the monitor may take to exit after SIGINT.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// What one monitor client carried during one test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonitorCounts {
    /// Event lines read from the monitor's stdout.
    pub events: u64,
    /// Events the agent or the client dropped, as the monitor's summary line reports them.
    pub lost: u64,
}

/// Counts newline-terminated lines of a byte stream and keeps the last complete one, without
/// keeping the others (the monitor prints hundreds of thousands of lines a second).
#[derive(Debug, Default)]
pub struct Lines {
    count: u64,
    last: Vec<u8>,
    partial: Vec<u8>,
}

/// A line longer than this is not a summary line: its bytes are not kept, but it is counted.
const MAX_KEPT: usize = 64 * 1024;

impl Lines {
    /// Consumes the next chunk of the stream.
    pub fn feed(&mut self, chunk: &[u8]) {
        let Some(last_nl) = chunk.iter().rposition(|&b| b == b'\n') else {
            self.keep_partial(chunk);
            return;
        };
        self.count += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        let start = match chunk[..last_nl].iter().rposition(|&b| b == b'\n') {
            // The partial line ended inside this chunk, before another complete line.
            Some(p) => {
                self.partial.clear();
                p + 1
            }
            None => 0,
        };
        self.last.clear();
        self.last.append(&mut self.partial);
        self.last.extend_from_slice(&chunk[start..last_nl]);
        self.keep_partial(&chunk[last_nl + 1..]);
    }

    fn keep_partial(&mut self, bytes: &[u8]) {
        if self.partial.len() + bytes.len() <= MAX_KEPT {
            self.partial.extend_from_slice(bytes);
        } else {
            self.partial.clear();
        }
    }

    /// Complete lines so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// At the end of the stream: the number of lines (an unterminated last line counts) and the
    /// last one.
    pub fn finish(mut self) -> (u64, String) {
        if !self.partial.is_empty() {
            self.count += 1;
            self.last = std::mem::take(&mut self.partial);
        }
        (self.count, String::from_utf8_lossy(&self.last).into_owned())
    }
}

/// The monitor's summary line, `{"events":N,"lost":M}` (an event line has a `type`).
pub fn parse_summary(line: &str) -> Option<(u64, u64)> {
    let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    if v.get("type").is_some() {
        return None;
    }
    Some((v.get("events")?.as_u64()?, v.get("lost")?.as_u64()?))
}

/// The counts of a finished monitor: `lines` read from its stdout, the last of which must be its
/// summary, whose event count must agree with the lines before it.
pub fn counts_from(lines: u64, last: &str) -> std::result::Result<MonitorCounts, String> {
    let Some((reported, lost)) = parse_summary(last) else {
        return Err(format!(
            "no `{{\"events\":N,\"lost\":M}}` summary at the end of its output (last line: {:?})",
            last.chars().take(200).collect::<String>()
        ));
    };
    let events = lines.saturating_sub(1);
    if reported != events {
        return Err(format!(
            "it reported {reported} events but printed {events} event lines"
        ));
    }
    Ok(MonitorCounts { events, lost })
}

/// A running `xylem monitor` client; stop it with [`Monitor::stop`] (dropping it sends SIGTERM).
#[derive(Debug)]
pub struct Monitor {
    child: ChildGuard,
    seen: Arc<AtomicU64>,
    stdout: JoinHandle<Lines>,
    stderr: JoinHandle<String>,
}

fn drain_stdout(mut out: ChildStdout, seen: Arc<AtomicU64>) -> JoinHandle<Lines> {
    thread::spawn(move || {
        let mut lines = Lines::default();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match out.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    lines.feed(&buf[..n]);
                    seen.store(lines.count(), Ordering::Relaxed);
                    if n < buf.len() {
                        // Let lines accumulate rather than wake for each one.
                        thread::sleep(DRAIN_PAUSE);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // A read error ends the count; `counts_from` then finds no summary.
                Err(_) => break,
            }
        }
        lines
    })
}

/// Reads stderr line by line, signals `listening` at the [`LISTENING`] line, and returns the
/// other lines (the first few kilobytes), for error messages.
fn drain_stderr(err: ChildStderr, listening: mpsc::Sender<()>) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            if line.contains(LISTENING) {
                let _ = listening.send(());
            } else if text.len() < 4096 {
                text.push_str(line.trim());
                text.push(' ');
            }
        }
        text.trim().to_string()
    })
}

impl Monitor {
    /// The command line: every event type, JSON lines.
    pub fn args<'a>(bin: &'a str, socket: &'a str) -> [&'a str; 6] {
        [bin, "--socket", socket, "monitor", "-o", "json"]
    }

    /// Starts the client and returns once the agent has attached it.
    pub fn attach(bin: &Path, socket: &Path) -> Result<Monitor> {
        let bin = bin.to_string_lossy();
        let socket = socket.to_string_lossy();
        let (child, out, err) = process::spawn_piped(&Self::args(&bin, &socket))?;
        // Best effort: with the default 64 KiB the client would block on a full pipe between two
        // reads of the drain thread at high event rates.
        let _ = sys::grow_pipe(&out, PIPE_BYTES);
        let seen = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel();
        let mut mon = Monitor {
            child,
            seen: Arc::clone(&seen),
            stdout: drain_stdout(out, seen),
            stderr: drain_stderr(err, tx),
        };
        let start = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(()) => return Ok(mon),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stderr closed without the line: the client has exited.
                    let status = mon.child.wait_timeout(Duration::from_secs(1));
                    let text = mon.stderr.join().unwrap_or_default();
                    return Err(Error::Monitor(format!(
                        "`{}` exited ({}) before attaching: {text}",
                        mon.child.cmd(),
                        status.map_or("still running".into(), |s| s.to_string()),
                    )));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            sys::check_interrupted()?;
            if start.elapsed() > ATTACH_TIMEOUT {
                return Err(Error::Monitor(format!(
                    "`{}` did not print `{LISTENING}` within {} s",
                    mon.child.cmd(),
                    ATTACH_TIMEOUT.as_secs()
                )));
            }
        }
    }

    /// After the measurement: checks the client stayed attached, lets its backlog arrive, stops
    /// it with SIGINT and returns what it carried.
    pub fn stop(mut self) -> Result<MonitorCounts> {
        if let Some(status) = self.child.wait_timeout(Duration::ZERO) {
            let text = self.stderr.join().unwrap_or_default();
            return Err(Error::Monitor(format!(
                "`{}` exited ({status}) before the end of the test, so the test was not monitored throughout: {text}",
                self.child.cmd()
            )));
        }
        let start = Instant::now();
        let mut last = self.seen.load(Ordering::Relaxed);
        let mut quiet_since = Instant::now();
        while start.elapsed() < DRAIN_LIMIT && quiet_since.elapsed() < QUIET {
            thread::sleep(Duration::from_millis(20));
            let now = self.seen.load(Ordering::Relaxed);
            if now != last {
                last = now;
                quiet_since = Instant::now();
            }
        }
        self.child.signal(libc::SIGINT);
        let Some(status) = self.child.wait_timeout(EXIT_TIMEOUT) else {
            return Err(Error::Monitor(format!(
                "`{}` did not exit within {} s of SIGINT",
                self.child.cmd(),
                EXIT_TIMEOUT.as_secs()
            )));
        };
        let (lines, last_line) = self
            .stdout
            .join()
            .map(Lines::finish)
            .unwrap_or_else(|_| (0, String::new()));
        let text = self.stderr.join().unwrap_or_default();
        if !status.success() {
            return Err(Error::Monitor(format!(
                "`{}` exited {status} after SIGINT: {text}",
                self.child.cmd()
            )));
        }
        counts_from(lines, &last_line)
            .map_err(|e| Error::Monitor(format!("`{}`: {e}", self.child.cmd())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(chunks: &[&[u8]]) -> (u64, String) {
        let mut l = Lines::default();
        for c in chunks {
            l.feed(c);
        }
        l.finish()
    }

    #[test]
    fn lines_are_counted_across_chunk_boundaries() {
        assert_eq!(feed_all(&[]), (0, String::new()));
        assert_eq!(feed_all(&[b"a\nb\nc\n"]), (3, "c".into()));
        assert_eq!(feed_all(&[b"a\nb", b"c\n"]), (2, "bc".into()));
        assert_eq!(feed_all(&[b"a", b"b", b"c\n"]), (1, "abc".into()));
        assert_eq!(feed_all(&[b"a\nb", b"c\nd", b"e\n"]), (3, "de".into()));
        assert_eq!(feed_all(&[b"a\nlong", b"er\nx\n"]), (3, "x".into()));
        assert_eq!(
            feed_all(&[b"a\n", b"tail"]),
            (2, "tail".into()),
            "an unterminated last line counts"
        );
        assert_eq!(feed_all(&[b"\n\n"]), (2, String::new()));
    }

    #[test]
    fn a_huge_line_is_counted_but_not_kept() {
        let big = vec![b'x'; MAX_KEPT + 10];
        let mut l = Lines::default();
        l.feed(&big);
        l.feed(b"\n{\"events\":1,\"lost\":0}\n");
        assert_eq!(l.finish(), (2, "{\"events\":1,\"lost\":0}".into()));
    }

    #[test]
    fn the_summary_line_is_told_from_events() {
        assert_eq!(parse_summary(r#"{"events":12,"lost":3}"#), Some((12, 3)));
        assert_eq!(parse_summary(" {\"events\":0,\"lost\":0}\n"), Some((0, 0)));
        assert_eq!(
            parse_summary(r#"{"type":"trace","events":1,"lost":0}"#),
            None,
            "event lines have a type"
        );
        assert_eq!(parse_summary(r#"{"events":1}"#), None);
        assert_eq!(parse_summary("12 events shown, 0 events lost"), None);
    }

    #[test]
    fn counts_need_a_summary_that_agrees() {
        assert_eq!(
            counts_from(4, r#"{"events":3,"lost":7}"#),
            Ok(MonitorCounts { events: 3, lost: 7 })
        );
        assert!(counts_from(4, r#"{"events":5,"lost":0}"#).is_err());
        assert!(counts_from(3, r#"{"type":"trace"}"#).is_err());
        assert!(counts_from(0, "").is_err());
    }
}
