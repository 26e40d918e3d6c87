//! Fuzzes the replay path with arbitrary bytes as a capture file: the capture reader
//! (`xylem_dataplane::io::pcap::Capture`, pcap and pcapng through `pcap-file`), the pcap
//! backend, the real worker and pipeline, and the replay's own frame parsing (5-tuples, the
//! quoted flow of ICMP errors, the field-by-field rewrite), as `xylem replay` runs them.
//!
//! The endpoints and the policy are the committed lab ones (`control/cli/tests/captures`), so the
//! seeds (those captures, and a few cut or altered ones) reach the policy and conntrack stages
//! with real MACs and addresses.
//!
//! Checks, beyond "does not panic": every error is a capture error that names the file
//! (`Error::File`), never an internal one; every replay that completes accounts for every
//! frame (the worker's frame ledger is quiescent after it, and each processed frame moved
//! exactly one verdict counter, which the replay reports as verdict `unknown` otherwise); and
//! the totals add up to the frames reported.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use xylem_replay::{self as replay, Error, ReplayConfig};

fn config() -> &'static ReplayConfig {
    static CFG: OnceLock<ReplayConfig> = OnceLock::new();
    CFG.get_or_init(|| {
        let mut cfg = ReplayConfig::new();
        cfg.endpoints = replay::parse_endpoints(include_str!(
            "../../../control/cli/tests/captures/endpoints.json"
        ))
        .expect("the committed endpoints parse");
        cfg.policies = xylem_policy::parse_policies(include_str!(
            "../../../control/cli/tests/captures/policy.yaml"
        ))
        .expect("the committed policy parses");
        // Room for a few connections, so `ct-full` is reachable and each run allocates little.
        cfg.ct_capacity = 64;
        cfg
    })
}

fuzz_target!(|data: &[u8]| {
    let mut sent = 0usize;
    let r = replay::replay_bytes(
        data.to_vec(),
        Path::new("fuzz.pcap"),
        config(),
        &mut |read, total| assert!(read <= total),
        &mut |_| {
            sent += 1;
            Ok(())
        },
    );
    match r {
        Ok(report) => {
            assert!(
                report.ok(),
                "accounting: {}; unknown verdicts: {:?}",
                report.summary.frame_accounting,
                report
                    .frames
                    .iter()
                    .filter(|f| f.verdict == "unknown")
                    .map(|f| (f.number, f.note.clone()))
                    .collect::<Vec<_>>()
            );
            let s = &report.summary;
            assert_eq!(s.frames as usize, report.frames.len());
            assert_eq!(s.verdicts.values().sum::<u64>(), s.frames);
            let answered = report.frames.iter().filter(|f| f.answer.is_some()).count();
            assert_eq!(
                sent,
                s.verdicts.get("forwarded").copied().unwrap_or(0) as usize + answered
            );
        }
        Err(Error::File(f)) => assert_eq!(f.what, "cannot replay"),
        Err(e) => panic!("not a capture error: {e}"),
    }
});
