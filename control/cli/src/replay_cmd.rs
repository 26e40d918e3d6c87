//! `xylem replay`: runs a capture through the replay and renders each frame's fate as a table
//! or as JSON, with a progress bar on a terminal.

use crate::ReplayArgs;
use crate::output::Format;
use xylem_dataplane::tables::Mode;
use xylem_replay::{self as replay, Error};

pub(crate) fn replay(a: &ReplayArgs) -> Result<(), Error> {
    use std::io::IsTerminal;
    use xylem_dataplane::io::pcap::TxWriter;
    use xylem_replay::{self, HostPort, ReplayConfig};

    let mut cfg = ReplayConfig::new();
    cfg.gateway.ip = a.gateway_ip;
    cfg.gateway.mac = a.gateway_mac;
    cfg.mode = a.mode;
    cfg.ingress = a.ingress.clone();
    if let Some(p) = &a.endpoints {
        cfg.endpoints = replay::load_endpoints(p)?;
    }
    if let (Some(ip), Some(mac)) = (a.host_ip, a.host_mac) {
        cfg.host = Some(HostPort { ip, mac });
    }
    if let Some(p) = &a.policy {
        cfg.policies = replay::load_policies(p)?;
    }
    let tx = match &a.write {
        None => None,
        Some(path) => {
            let f = std::fs::File::create(path).map_err(|source| {
                Error::File(xylem_api::FileError {
                    what: "creating",
                    path: path.clone(),
                    source,
                })
            })?;
            let names = replay::port_interfaces(&cfg)?;
            Some(TxWriter::new(std::io::BufWriter::new(f), &names)?)
        }
    };
    let bytes = std::fs::read(&a.file).map_err(|source| {
        Error::File(xylem_api::FileError {
            what: "reading the capture",
            path: a.file.clone(),
            source,
        })
    })?;
    // A progress bar for long captures, on stderr, only when a person watches stdout.
    let bar = (std::io::stdout().is_terminal() && bytes.len() > 1 << 20).then(|| {
        let b = indicatif::ProgressBar::new(bytes.len() as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "replaying {bar:40} {bytes}/{total_bytes} ({eta} left)",
        ) {
            b.set_style(style);
        }
        b
    });
    let mut out = ReplayPrinter {
        format: a.output,
        out: std::io::BufWriter::new(std::io::stdout().lock()),
        bar,
        tx,
        widths: Vec::new(),
        first: true,
        pending: String::new(),
    };
    let (head, summary) = replay::replay_stream(bytes, &a.file, &cfg, &mut out)?;
    out.finish(&head, &summary)?;
    if let (Some(w), Some(path)) = (out.tx.take(), &a.write) {
        use std::io::Write;
        w.into_inner().flush().map_err(|source| {
            Error::File(xylem_api::FileError {
                what: "writing",
                path: path.clone(),
                source,
            })
        })?;
    }
    let ok = summary.frame_accounting == "ok" && !summary.verdicts.contains_key("unknown");
    if !ok {
        eprintln!(
            "xylem: the replay of {} found the dataplane's accounting broken (frame accounting: \
             {}; see the frames with verdict `unknown`): this is a bug in Xylem, please report \
             it with the capture",
            head.file, summary.frame_accounting
        );
        std::process::exit(1);
    }
    Ok(())
}

/// Prints a replay as it runs: a table with columns sized from what is known before the first
/// frame (wider cells push their line out), or one JSON document written piece by piece, so a
/// capture of millions of frames needs no more memory than one.
pub(crate) struct ReplayPrinter<W: std::io::Write> {
    format: Format,
    out: W,
    bar: Option<indicatif::ProgressBar>,
    tx: Option<xylem_dataplane::io::pcap::TxWriter<std::io::BufWriter<std::fs::File>>>,
    widths: Vec<usize>,
    first: bool,
    /// Text waiting to be written past the progress bar.
    pending: String,
}

/// `v` as pretty JSON, its lines after the first indented by `indent` spaces.
pub(crate) fn json_indented<T: serde::Serialize>(v: &T, indent: usize) -> Result<String, Error> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Error::Io {
        what: "encoding the replay as JSON".into(),
        source: std::io::Error::other(e),
    })?;
    Ok(s.replace('\n', &format!("\n{}", " ".repeat(indent))))
}

pub(crate) const REPLAY_HEADER: [&str; 9] = [
    "#", "TIME", "INGRESS", "FLOW", "VERDICT", "EGRESS", "REASON", "CT", "REWRITE",
];

impl<W: std::io::Write> ReplayPrinter<W> {
    fn write(&mut self, text: &str) -> Result<(), Error> {
        let r = match &self.bar {
            // Gathered, then written through the bar in chunks, which hides it while the
            // text goes out and redraws it below (once per chunk, not per line).
            Some(b) => {
                self.pending.push_str(text);
                if self.pending.len() < 1 << 16 {
                    return Ok(());
                }
                let chunk = std::mem::take(&mut self.pending);
                b.suspend(|| std::io::Write::write_all(&mut std::io::stdout(), chunk.as_bytes()))
            }
            None => self.out.write_all(text.as_bytes()),
        };
        r.map_err(|source| Error::Io {
            what: "writing the replay".into(),
            source,
        })
    }

    fn row(&self, cells: &[String]) -> String {
        let mut line = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                line.push_str(c);
            } else {
                let w = self.widths.get(i).copied().unwrap_or(0);
                line.push_str(&format!("{c:<w$}  "));
            }
        }
        let mut line = line.trim_end().to_string();
        line.push('\n');
        line
    }

    fn finish(
        &mut self,
        head: &xylem_replay::Head,
        s: &xylem_replay::Summary,
    ) -> Result<(), Error> {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        let pending = std::mem::take(&mut self.pending);
        self.write(&pending)?;
        let text = match self.format {
            Format::Json => format!(
                "{}],\n  \"summary\": {}\n}}\n",
                if self.first { "" } else { "\n  " },
                json_indented(s, 2)?
            ),
            Format::Table => {
                let join = |m: &std::collections::BTreeMap<String, u64>| {
                    if m.is_empty() {
                        "-".to_string()
                    } else {
                        m.iter()
                            .map(|(k, v)| format!("{k} {v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                };
                let verdicts: Vec<String> =
                    s.verdicts.iter().map(|(k, v)| format!("{v} {k}")).collect();
                format!(
                    "\n{} ({}, {} mode): {} frames: {}\ndrops: {}\nnot processed: {}\nframe \
                     accounting: {}\n",
                    head.file,
                    head.format,
                    match head.mode {
                        Mode::Full => "full",
                        Mode::Passthrough => "passthrough",
                    },
                    s.frames,
                    if verdicts.is_empty() {
                        "-".into()
                    } else {
                        verdicts.join(", ")
                    },
                    join(&s.drops),
                    join(&s.not_processed),
                    s.frame_accounting
                )
            }
        };
        self.write(&text)?;
        self.out.flush().map_err(|source| Error::Io {
            what: "writing the replay".into(),
            source,
        })
    }
}

impl<W: std::io::Write> xylem_replay::Sink for ReplayPrinter<W> {
    fn start(&mut self, head: &xylem_replay::Head) -> Result<(), Error> {
        let text = match self.format {
            Format::Json => format!(
                "{{\n  \"file\": {},\n  \"format\": {},\n  \"mode\": {},\n  \"ports\": {},\n  \
                 \"frames\": [",
                json_indented(&head.file, 2)?,
                json_indented(&head.format, 2)?,
                json_indented(&head.mode, 2)?,
                json_indented(&head.ports, 2)?
            ),
            Format::Table => {
                let names = head
                    .ports
                    .iter()
                    .map(|p| p.endpoint.len())
                    .max()
                    .unwrap_or(0);
                // Frame number, time, endpoints, the longest usual flow (an ICMP echo between
                // two addresses of 15 characters), verdict, reason and state names.
                self.widths = vec![6, 11, names, 60, 13, names, 23, 25];
                for (w, h) in self.widths.iter_mut().zip(REPLAY_HEADER) {
                    *w = (*w).max(h.len());
                }
                self.row(&REPLAY_HEADER.map(String::from))
            }
        };
        self.write(&text)
    }

    fn frame(&mut self, f: xylem_replay::FrameReport) -> Result<(), Error> {
        let text = match self.format {
            Format::Json => {
                let sep = if self.first { "\n    " } else { ",\n    " };
                self.first = false;
                format!("{sep}{}", json_indented(&f, 4)?)
            }
            Format::Table => {
                let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
                let (egress, rewrite) = match &f.answer {
                    Some(a) => (
                        a.egress.endpoint.clone(),
                        format!("answered: {}", a.flow.summary),
                    ),
                    None => (
                        f.egress.as_ref().map_or("-".into(), |e| e.endpoint.clone()),
                        f.rewrite
                            .iter()
                            .map(|c| format!("{} {}→{}", c.field, c.from, c.to))
                            .collect::<Vec<_>>()
                            .join(", "),
                    ),
                };
                self.row(&[
                    f.number.to_string(),
                    format!("{:.6}", f.time),
                    f.ingress
                        .as_ref()
                        .map_or("-".into(), |p| p.endpoint.clone()),
                    f.flow.summary.clone(),
                    f.verdict.to_string(),
                    egress,
                    opt(&f.reason),
                    match (f.ct, f.ct_state) {
                        (Some(c), Some(s)) => format!("{c} ({s})"),
                        (Some(c), None) => c.to_string(),
                        _ => "-".into(),
                    },
                    if rewrite.is_empty() {
                        "-".into()
                    } else {
                        rewrite
                    },
                ])
            }
        };
        self.write(&text)
    }

    fn sent(&mut self, f: &xylem_dataplane::io::pcap::SentFrame) -> Result<(), Error> {
        match &mut self.tx {
            Some(w) => Ok(w.write(f)?),
            None => Ok(()),
        }
    }

    fn progress(&mut self, read: usize, _total: usize) {
        if let Some(b) = &self.bar {
            b.set_position(read as u64);
        }
    }
}
