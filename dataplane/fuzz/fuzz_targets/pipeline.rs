//! Fuzzes `xylem_dataplane::pipeline::process` with arbitrary frames against a fixed table.
//!
//! Input layout: the first byte chooses the buffer's spare capacity (0..=127 bytes beyond the
//! frame, so the "no room for the ICMP error" path is reached) and the mode (high bit); the rest
//! is the frame, starting at the Ethernet header.
//!
//! Checks, beyond "does not panic": exactly one verdict counter moves, the frame stays within
//! its buffer, and every frame sent on (`Verdict::Forward`) carries a valid IPv4 header checksum.
#![no_main]

use std::net::Ipv4Addr;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use xylem_dataplane::checksum;
use xylem_dataplane::pipeline::{Frame, Verdict, process};
use xylem_dataplane::stats::{DropReason, WorkerStats};
use xylem_dataplane::tables::{Gateway, MacAddr, Mode, Neighbor, Tables};

fn table(mode: Mode) -> Tables {
    let mut t = Tables::new(
        1,
        mode,
        Gateway {
            // Seeds are easiest to write with these: gateway 02:00:00:00:00:01 / 10.0.0.1,
            // pods 10.0.0.2..=10.0.0.9 behind ports 0..=7.
            mac: MacAddr([0x02, 0, 0, 0, 0, 0x01]),
            ipv4: Ipv4Addr::new(10, 0, 0, 1),
        },
    );
    for i in 2..10u8 {
        t.add_route(
            Ipv4Addr::new(10, 0, 0, i),
            Neighbor {
                port: u16::from(i - 2),
                mac: MacAddr([0x02, 0, 0, 0, 0, i]),
            },
        )
        .expect("distinct routes");
    }
    t
}

fn tables(full: bool) -> &'static Tables {
    static PASSTHROUGH: OnceLock<Tables> = OnceLock::new();
    static FULL: OnceLock<Tables> = OnceLock::new();
    if full {
        FULL.get_or_init(|| table(Mode::Full))
    } else {
        PASSTHROUGH.get_or_init(|| table(Mode::Passthrough))
    }
}

fn verdict_counters(s: &WorkerStats) -> u64 {
    s.forwarded.get()
        + s.to_slowpath.get()
        + DropReason::ALL.iter().map(|&r| s.drops_of(r)).sum::<u64>()
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, frame)) = data.split_first() else {
        return;
    };
    let spare = usize::from(control & 0x7f);
    let t = tables(control & 0x80 != 0);
    let mut buf = vec![0u8; frame.len() + spare];
    buf[..frame.len()].copy_from_slice(frame);
    let capacity = buf.len();
    let stats = WorkerStats::default();
    let mut f = Frame::new(&mut buf, frame.len());
    let mut ct = xylem_dataplane::conntrack::Conntrack::new(&xylem_dataplane::conntrack::CtConfig { capacity: 1024, ..Default::default() });
    let v = process(0, 0, &mut f, t, &mut ct, &stats);
    assert_eq!(verdict_counters(&stats), 1, "{v:?}");
    assert!(f.len() <= capacity);
    match v {
        Verdict::Forward(port) => {
            assert!(port < 8);
            let out = f.data();
            assert!(out.len() >= 34);
            let ihl = usize::from(out[14] & 0x0f) * 4;
            assert!(
                checksum::verify(&out[14..14 + ihl]),
                "forwarded a bad IPv4 header"
            );
            assert_eq!(&out[6..12], &t.gateway().mac.0);
        }
        Verdict::SlowPath => assert_eq!(stats.to_slowpath.get(), 1),
        Verdict::Drop(r) => assert_eq!(stats.drops_of(r), 1),
    }
});
