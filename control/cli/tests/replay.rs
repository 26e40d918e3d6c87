//! `xylem replay` on the captures committed in `tests/captures/` (real lab traffic; see its
//! README): the verdicts, drop reasons, connection states and rewrites the replay reports,
//! checked against what the live agent did with the same traffic, and the CLI's output and
//! errors. No root needed: the replay runs the real worker on the pcap backend.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use xylem_dataplane::checksum;
use xylem_dataplane::io::pcap::{Capture, SentFrame, TxWriter};
use xylem_replay::{
    self as replay, FrameReport, HostPort, ReplayConfig, Report, load_endpoints, load_policies,
};

const POD_A: &str = "d6:d8:c2:f3:02:29";
const POD_B: &str = "7e:ad:6f:17:b7:84";
const POD_C: &str = "3e:d3:58:de:f0:01";
const HOST: &str = "42:02:b8:6f:63:eb";
const GW: &str = "0e:78:79:6c:00:01";

fn captures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/captures")
}

fn config() -> ReplayConfig {
    let mut cfg = ReplayConfig::new();
    cfg.endpoints = load_endpoints(&captures().join("endpoints.json")).unwrap();
    // A small table: these captures hold a handful of connections.
    cfg.ct_capacity = 1024;
    cfg
}

/// Replays `file` and returns the report and what the worker transmitted.
fn run(file: &str, cfg: &ReplayConfig) -> (Report, Vec<SentFrame>) {
    let mut sent = Vec::new();
    let report = replay::replay_file(&captures().join(file), cfg, &mut |_, _| {}, &mut |f| {
        sent.push(f.clone());
        Ok(())
    })
    .unwrap();
    assert_eq!(report.summary.frame_accounting, "ok");
    assert!(report.ok());
    (report, sent)
}

fn frame(r: &Report, n: u64) -> &FrameReport {
    &r.frames[n as usize - 1]
}

/// (field, from, to) of a frame's rewrite.
fn changes(f: &FrameReport) -> Vec<(&str, &str, &str)> {
    f.rewrite
        .iter()
        .map(|c| (c.field.as_str(), c.from.as_str(), c.to.as_str()))
        .collect()
}

/// Checks a forwarded frame: from `from` to the endpoint `to` whose MAC is `to_mac`, with
/// exactly the routing rewrite (MACs, TTL 64 → 63, header checksum).
fn assert_routed(f: &FrameReport, from: &str, to: &str, src_mac: &str, to_mac: &str) {
    assert_eq!(f.verdict, "forwarded", "frame {}: {f:?}", f.number);
    assert_eq!(
        f.ingress.as_ref().unwrap().endpoint,
        from,
        "frame {}",
        f.number
    );
    assert_eq!(
        f.egress.as_ref().unwrap().endpoint,
        to,
        "frame {}",
        f.number
    );
    let c = changes(f);
    assert_eq!(c.len(), 4, "frame {}: {c:?}", f.number);
    assert_eq!(c[0], ("eth.dst", GW, to_mac));
    assert_eq!(c[1], ("eth.src", src_mac, GW));
    assert_eq!(c[2], ("ip.ttl", "64", "63"));
    assert_eq!(c[3].0, "ip.csum");
}

#[test]
fn basic_traffic_is_routed_with_ttl_and_macs_rewritten_and_replies_pass_as_replies() {
    let mut cfg = config();
    cfg.host = Some(HostPort {
        ip: "10.200.0.254".parse().unwrap(),
        mac: HOST.parse().unwrap(),
    });
    let (r, sent) = run("basic.pcapng", &cfg);
    assert_eq!(r.format, "pcapng");
    assert_eq!(r.frames.len(), 20);
    let (a, b, host) = ("default/pod-a", "default/pod-b", "host");
    // ARP for the gateway and the ping to the gateway go to the slow path.
    for n in [1, 3, 7, 8] {
        assert_eq!(frame(&r, n).verdict, "slowpath", "frame {n}");
    }
    assert_eq!(
        frame(&r, 1).flow.summary,
        "ARP who-has 10.200.0.1 tell 10.200.0.10"
    );
    assert_eq!(frame(&r, 7).ct, Some("new"));
    // Pings pod-a ↔ pod-b: the first request is new, the replies are replies, the second
    // request belongs to the same tracked flow.
    assert_routed(frame(&r, 2), a, b, POD_A, POD_B);
    assert_routed(frame(&r, 4), b, a, POD_B, POD_A);
    assert_routed(frame(&r, 5), a, b, POD_A, POD_B);
    assert_routed(frame(&r, 6), b, a, POD_B, POD_A);
    let ct: Vec<_> = [2, 4, 5, 6].map(|n| frame(&r, n).ct).to_vec();
    assert_eq!(
        ct,
        [
            Some("new"),
            Some("reply"),
            Some("established"),
            Some("reply")
        ]
    );
    // The node pings pod-a through the host port.
    assert_routed(frame(&r, 9), host, a, HOST, POD_A);
    assert_routed(frame(&r, 10), a, host, POD_A, HOST);
    // TCP: the handshake walks the states, data and FINs pass as established and replies.
    let tcp: Vec<_> = (11..=18)
        .map(|n| {
            let f = frame(&r, n);
            (
                f.flow.tcp_flags.clone().unwrap(),
                f.ct.unwrap(),
                f.ct_state.unwrap(),
            )
        })
        .collect();
    let want = [
        ("S", "new", "syn-sent"),
        ("S.", "reply", "syn-recv"),
        (".", "established", "established"),
        ("P.", "established", "established"),
        // One side's FIN half-closes; the other's closes.
        ("F.", "established", "half-closed-orig"),
        (".", "reply", "half-closed-orig"),
        ("F.", "reply", "fin"),
        (".", "established", "fin"),
    ];
    for (got, want) in tcp.iter().zip(want) {
        assert_eq!((got.0.as_str(), got.1, got.2), want);
    }
    for n in 11..=18 {
        let f = frame(&r, n);
        let (from, to, fm, tm) = if f.flow.src == Some("10.200.0.10".parse().unwrap()) {
            (a, b, POD_A, POD_B)
        } else {
            (b, a, POD_B, POD_A)
        };
        assert_routed(f, from, to, fm, tm);
    }
    // UDP and its answer.
    assert_routed(frame(&r, 19), a, b, POD_A, POD_B);
    assert_routed(frame(&r, 20), b, a, POD_B, POD_A);
    assert_eq!(
        (frame(&r, 19).ct, frame(&r, 20).ct),
        (Some("new"), Some("reply"))
    );
    assert_eq!(r.summary.verdicts["forwarded"], 16);
    assert_eq!(r.summary.verdicts["slowpath"], 4);
    assert!(r.summary.drops.is_empty() && r.summary.not_processed.is_empty());
    // What was transmitted: one frame per forward, each with a valid IPv4 header checksum and
    // the timestamp of the frame it came from.
    assert_eq!(sent.len(), 16);
    for s in &sent {
        assert!(checksum::verify(&s.data[14..34]), "{s:?}");
    }
    assert_eq!(
        sent[0].timestamp.as_nanos() as u64,
        frame(&r, 2).timestamp_ns
    );
}

#[test]
fn frames_without_an_ingress_are_reported_not_skipped() {
    // Without the host port, the node's frames have no ingress, and pod-a's answer to the
    // node's address has no route.
    let (r, _) = run("basic.pcapng", &config());
    for n in [8, 9] {
        let f = frame(&r, n);
        assert_eq!(f.verdict, "not-processed");
        assert_eq!(f.reason.as_deref(), Some("no-ingress"));
        assert!(f.note.as_ref().unwrap().contains(HOST), "{:?}", f.note);
        assert!(f.ingress.is_none());
    }
    let f = frame(&r, 10);
    assert_eq!(
        (f.verdict, f.reason.as_deref()),
        ("dropped", Some("no-route"))
    );
    assert_eq!(r.summary.not_processed["no-ingress"], 2);
    assert_eq!(r.summary.frames, 20);
}

#[test]
fn a_policy_drops_denied_flows_as_the_agent_did_and_lets_replies_of_allowed_ones_through() {
    let mut cfg = config();
    cfg.policies = load_policies(&captures().join("policy.yaml")).unwrap();
    let (r, _) = run("policy.pcapng", &cfg);
    // The live agent counted `policy-denied` 3 for this traffic: pod-c's SYN to 8080, pod-a's
    // SYN to 9090 and pod-a's ping to pod-b.
    for (n, src, what) in [
        (11, "default/pod-c", "[S]"),
        (12, "default/pod-a", "[S]"),
        (13, "default/pod-a", "echo-request"),
    ] {
        let f = frame(&r, n);
        assert_eq!(
            (f.verdict, f.reason.as_deref()),
            ("dropped", Some("policy-denied")),
            "frame {n}"
        );
        assert_eq!(f.ingress.as_ref().unwrap().endpoint, src);
        assert!(f.flow.summary.contains(what), "{}", f.flow.summary);
        assert!(f.egress.is_none() && f.rewrite.is_empty());
    }
    assert_eq!(r.summary.drops.len(), 1);
    assert_eq!(r.summary.drops["policy-denied"], 3);
    // The allowed TCP connection and UDP exchange: pod-b's answers pass as replies although
    // pod-b's ingress is default-deny and nothing allows pod-b → pod-a explicitly.
    let cts: Vec<_> = (1..=10).map(|n| frame(&r, n).ct.unwrap()).collect();
    assert_eq!(
        cts,
        [
            "new",
            "reply",
            "established",
            "established",
            "established",
            "reply",
            "reply",
            "established",
            "new",
            "reply"
        ]
    );
    for n in (1..=10).chain([14, 15]) {
        assert_eq!(frame(&r, n).verdict, "forwarded", "frame {n}");
    }
    // pod-c → pod-a is not restricted.
    assert_routed(
        frame(&r, 14),
        "default/pod-c",
        "default/pod-a",
        POD_C,
        POD_A,
    );
    assert_routed(
        frame(&r, 15),
        "default/pod-a",
        "default/pod-c",
        POD_A,
        POD_C,
    );

    // The same traffic without the policy: everything is forwarded.
    let (r, _) = run("policy.pcapng", &config());
    assert_eq!(r.summary.verdicts["forwarded"], 15);
    // In passthrough mode nothing is tracked either.
    let mut cfg = config();
    cfg.policies = load_policies(&captures().join("policy.yaml")).unwrap();
    cfg.mode = xylem_dataplane::tables::Mode::Passthrough;
    let (r, _) = run("policy.pcapng", &cfg);
    assert_eq!(r.summary.verdicts["forwarded"], 15);
    assert!(r.frames.iter().all(|f| f.ct.is_none()));
}

#[test]
fn malformed_frames_get_the_agents_drop_reasons_and_the_ttl_answer_matches_the_live_one() {
    let mut cfg = config();
    cfg.ingress = Some("pod-a".into());
    let (r, sent) = run("malformed.pcap", &cfg);
    assert_eq!(r.format, "pcap");
    let want = [
        (1, "dropped", "ttl-exceeded"),
        (2, "not-processed", "from-gateway"),
        (3, "dropped", "ipv4-bad-checksum"),
        (4, "dropped", "ipv4-bad-total-length"),
        (5, "dropped", "ipv4-bad-ihl"),
        (6, "dropped", "ipv4-truncated"),
        (7, "dropped", "unsupported-ethertype"),
        (8, "dropped", "ipv6-unsupported"),
        (9, "dropped", "not-for-gateway"),
        (10, "dropped", "no-route"),
        (11, "dropped", "arp-not-for-gateway"),
    ];
    for (n, verdict, reason) in want {
        let f = frame(&r, n);
        assert_eq!(
            (f.verdict, f.reason.as_deref()),
            (verdict, Some(reason)),
            "frame {n}"
        );
    }
    // The TTL-1 datagram is answered with ICMP time exceeded towards pod-a; the live dataplane
    // sent it too (frame 2 of the capture, taken in both directions): byte for byte the same.
    let answer = frame(&r, 1).answer.as_ref().unwrap();
    assert_eq!(answer.egress.endpoint, "default/pod-a");
    assert_eq!(
        (answer.flow.icmp_type, answer.flow.icmp_code),
        (Some(11), Some(0))
    );
    assert_eq!(sent.len(), 1);
    let mut cap =
        Capture::from_bytes(std::fs::read(captures().join("malformed.pcap")).unwrap()).unwrap();
    cap.next_frame().unwrap();
    let live = cap.next_frame().unwrap().unwrap();
    assert_eq!(sent[0].data, live.data);
    // Every drop reason once: the nine the agent counted when the capture was taken, and
    // frame 7's `unsupported-ethertype` (every ethertype reaches the dataplane).
    assert_eq!(r.summary.drops.len(), 10);
    assert!(r.summary.drops.values().all(|&n| n == 1));
    assert_eq!(r.summary.not_processed.len(), 1);

    // Without --ingress the frames enter by pod-a's port all the same: their source MAC.
    let (r2, _) = run("malformed.pcap", &config());
    assert_eq!(r2.summary, r.summary);
}

/// Writes `frames` (captured frame, new timestamp) as a pcapng capture.
fn capture_of(frames: &[(&[u8], Duration)]) -> Vec<u8> {
    let mut w = TxWriter::new(Vec::new(), &["eth0".into()]).unwrap();
    for (data, ts) in frames {
        w.write(&SentFrame {
            port: 0,
            timestamp: *ts,
            data: data.to_vec(),
        })
        .unwrap();
    }
    w.into_inner()
}

#[test]
fn connection_tracking_times_out_in_capture_time() {
    // pod-a's ingress is default-deny: pod-b's UDP answer passes only as the reply of a live
    // tracked flow. The request and answer of basic.pcapng, replayed with the answer 59 s and
    // then 61 s after the request (UDP entries live 60 s).
    let mut cap =
        Capture::from_bytes(std::fs::read(captures().join("basic.pcapng")).unwrap()).unwrap();
    let mut all = Vec::new();
    while let Some(f) = cap.next_frame().unwrap() {
        all.push(f.data.to_vec());
    }
    let (req, ans) = (&all[18], &all[19]);
    let mut cfg = config();
    cfg.policies = xylem_policy::parse_policies(
        "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a-closed, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: pod-a}}
  ingress: [{}]
",
    )
    .unwrap();
    let t0 = Duration::from_secs(1_800_000_000);
    for (after, verdict, ct) in [(59, "forwarded", Some("reply")), (61, "dropped", None)] {
        let bytes = capture_of(&[(req, t0), (ans, t0 + Duration::from_secs(after))]);
        let r = replay::replay_bytes(
            bytes,
            Path::new("udp.pcapng"),
            &cfg,
            &mut |_, _| {},
            &mut |_| Ok(()),
        )
        .unwrap();
        assert_eq!(r.frames[0].ct, Some("new"));
        assert_eq!(r.frames[1].time, after as f64);
        assert_eq!(
            (r.frames[1].verdict, r.frames[1].ct),
            (verdict, ct),
            "{after} s"
        );
        if verdict == "dropped" {
            assert_eq!(r.frames[1].reason.as_deref(), Some("policy-denied"));
        }
        assert!(r.ok());
    }
}

#[test]
fn a_timestamp_beyond_the_replay_clock_is_replayed_at_its_bound_and_said_so() {
    // Two centuries between two frames (another clock, or a corrupt timestamp): the clock
    // stops at its bound (so conntrack's expiry times cannot overflow) and the frame says so.
    let mut cap =
        Capture::from_bytes(std::fs::read(captures().join("basic.pcapng")).unwrap()).unwrap();
    let mut all = Vec::new();
    while let Some(f) = cap.next_frame().unwrap() {
        all.push(f.data.to_vec());
    }
    let t0 = Duration::from_secs(1_000_000_000);
    let later = t0 + Duration::from_secs(200 * 365 * 86_400);
    let bytes = capture_of(&[(&all[18], t0), (&all[19], later), (&all[18], later)]);
    let r = replay::replay_bytes(
        bytes,
        Path::new("far.pcapng"),
        &config(),
        &mut |_, _| {},
        &mut |_| Ok(()),
    )
    .unwrap();
    assert!(r.ok());
    let note = r.frames[1].note.as_deref().unwrap();
    assert!(note.contains("replayed at 4611686018 s"), "{note}");
    assert_eq!(r.frames[1].time, r.frames[2].time);
    // The UDP entry expired long before: the answer starts a new flow (no policy: allowed).
    assert_eq!(
        [r.frames[1].verdict, r.frames[2].verdict],
        ["forwarded", "forwarded"]
    );
    assert_eq!(r.frames[1].ct, Some("new"));
    assert_eq!(r.frames[2].ct, Some("reply"));
}

/// Runs the CLI binary.
fn xylem(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_xylem"))
        .args(args)
        .current_dir(captures())
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn the_cli_prints_json_and_a_table_and_writes_what_was_sent() {
    let (ok, out, err) = xylem(&[
        "replay",
        "policy.pcapng",
        "--endpoints",
        "endpoints.json",
        "--policy",
        "policy.yaml",
        "-o",
        "json",
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["summary"]["drops"]["policy-denied"], 3);
    assert_eq!(v["summary"]["verdicts"]["forwarded"], 12);
    assert_eq!(v["summary"]["frame_accounting"], "ok");
    let f = &v["frames"][10];
    assert_eq!(f["number"], 11);
    assert_eq!(f["verdict"], "dropped");
    assert_eq!(f["reason"], "policy-denied");
    assert_eq!(f["ingress"]["endpoint"], "default/pod-c");
    assert_eq!(f["flow"]["proto"], "TCP");
    assert_eq!(f["flow"]["dport"], 8080);
    assert_eq!(v["frames"][0]["rewrite"][2]["field"], "ip.ttl");

    let out_file = std::env::temp_dir().join(format!("xylem-replay-{}.pcapng", std::process::id()));
    let (ok, out, err) = xylem(&[
        "replay",
        "basic.pcapng",
        "--endpoints",
        "endpoints.json",
        "--host-ip",
        "10.200.0.254",
        "--host-mac",
        HOST,
        "-w",
        out_file.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .next()
            .unwrap()
            .starts_with("#       TIME         INGRESS"),
        "{out}"
    );
    assert!(out.contains("ip.ttl 64→63"), "{out}");
    assert!(out.contains("basic.pcapng (pcapng, full mode): 20 frames: 16 forwarded, 4 slowpath"));
    assert!(out.contains("frame accounting: ok"));
    // The transmitted frames, read back: 16, with the rewritten TTL.
    let mut cap = Capture::from_bytes(std::fs::read(&out_file).unwrap()).unwrap();
    let mut n = 0;
    while let Some(f) = cap.next_frame().unwrap() {
        assert_eq!(f.data[22], 63);
        n += 1;
    }
    assert_eq!(n, 16);
    let _ = std::fs::remove_file(&out_file);
}

#[test]
fn bad_files_and_options_are_errors_naming_the_file_and_what_to_do() {
    let dir = std::env::temp_dir().join(format!("xylem-replay-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = std::fs::read(captures().join("malformed.pcap")).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_string()
    };
    let eps = captures().join("endpoints.json");
    let eps = eps.to_str().unwrap();
    let mut sll = good.clone();
    sll[20..24].copy_from_slice(&113u32.to_le_bytes());
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            write("text.pcap", b"09:47:21.807816 IP 10.200.0.10 > 10.200.0.11"),
            vec!["not a pcap or pcapng capture", "tcpdump -w"],
        ),
        (
            write("cut.pcap", &good[..good.len() - 10]),
            vec![
                "frame 11 (byte",
                "cut short",
                "the 10 frames before it are whole",
            ],
        ),
        (
            write("any.pcap", &sll),
            vec!["LINUX_SLL (113), not Ethernet", "-i any"],
        ),
        (
            dir.join("missing.pcap").to_str().unwrap().to_string(),
            vec!["reading the capture", "No such file"],
        ),
    ];
    for (file, want) in &cases {
        let (ok, _, err) = xylem(&["replay", file, "--endpoints", eps]);
        assert!(!ok, "{file}");
        assert!(err.contains(file.as_str()), "{err}");
        for w in want {
            assert!(err.contains(w), "{file}: {err}");
        }
    }
    let (ok, _, err) = xylem(&[
        "replay",
        "malformed.pcap",
        "--endpoints",
        eps,
        "--ingress",
        "web",
    ]);
    assert!(!ok);
    assert!(
        err.contains("no endpoint web: use one of default/pod-a, default/pod-b, default/pod-c"),
        "{err}"
    );
    let (ok, _, err) = xylem(&["replay", "malformed.pcap"]);
    assert!(!ok);
    assert!(err.contains("no endpoint to replay against"), "{err}");
    let bad_eps = write("eps.json", br#"[{"name": "a", "namespace": "default", "labels": {}, "ip": "10.200.0.10", "interface": "xyp0", "mac": "zz"}]"#);
    let (ok, _, err) = xylem(&["replay", "malformed.pcap", "--endpoints", &bad_eps]);
    assert!(!ok);
    assert!(err.contains("endpoints[0].mac"), "{err}");
    let bad_policy = write("p.yaml", b"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\nspec: {endpointSelector: {}, ingres: []}\n");
    let (ok, _, err) = xylem(&[
        "replay",
        "malformed.pcap",
        "--endpoints",
        eps,
        "--policy",
        &bad_policy,
    ]);
    assert!(!ok);
    assert!(
        err.contains("invalid policy") && err.contains("ingres"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
