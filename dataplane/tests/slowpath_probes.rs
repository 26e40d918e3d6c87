//! Health-check probes through the real worker on the in-memory backend: a probe's connection
//! from the gateway passes conntrack and the backend's ingress policy as a pod's would, is
//! committed so that the backend's SYN-ACK comes back as a tracked reply, and is not sent (and
//! is counted) when the policy does not let the node in. No root needed.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::queue::ArrayQueue;
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use xylem_dataplane::io::memory::MemoryBackend;
use xylem_dataplane::policy::{PolicyTablesBuilder, RuleOrigin, Section, identity};
use xylem_dataplane::slowpath::probe::{
    PROBE_PORTS, ProbeKind, ProbeOutcome, ProbeQueues, ProbeRequest,
};
use xylem_dataplane::slowpath::{Signal, SlowPath, SlowPathLink, SlowPathStats};
use xylem_dataplane::tables::{Gateway, MacAddr, Mode, Neighbor, Tables};
use xylem_dataplane::worker::{Placement, Worker, WorkerConfig, WorkerLink};

const GW_MAC: [u8; 6] = [0x0e, 0x78, 0x79, 0x6c, 0, 1];
const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
const BACKEND_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
const BACKEND_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 11);
const BACKEND_ID: u32 = 301;
/// The port the probes' entries are owned by (the host port in the agent).
const OWNER: u16 = 1;

struct Rig {
    worker: Worker<MemoryBackend>,
    link: WorkerLink,
    slow: SlowPath,
    probes: ProbeQueues,
}

/// A worker with the backend on port 0 (its ingress enforced; `allow_host` adds a rule for the
/// `host` identity on TCP 8080) and an empty port 1, and the slow path serving probes.
fn rig(allow_host: bool) -> Rig {
    let mut t = Tables::new(
        1,
        Mode::Full,
        Gateway {
            mac: MacAddr(GW_MAC),
            ipv4: GW_IP,
        },
    );
    let n = Neighbor {
        port: 0,
        mac: MacAddr(BACKEND_MAC),
    };
    t.add_route(BACKEND_IP, n).unwrap();
    let mut b = PolicyTablesBuilder::new(1);
    b.add_endpoint(BACKEND_IP, BACKEND_ID);
    b.add_address(GW_IP, identity::HOST);
    let rule = b.add_origin(RuleOrigin {
        policy: "default/web".into(),
        spec: 0,
        section: Section::Ingress,
        index: 0,
    });
    let p = b.endpoint_policy(BACKEND_ID);
    p.ingress.set_enforced(true);
    if allow_host {
        p.ingress
            .add(identity::HOST, 6, Some((8080, 8080)), false, rule);
    }
    t.set_policy(b.build());
    let tables = Arc::new(ArcSwap::from_pointee(t));
    let to_slow = Arc::new(ArrayQueue::new(1024));
    let signal = Arc::new(Signal::default());
    let link = WorkerLink::new(
        Arc::clone(&tables),
        Arc::clone(&to_slow),
        Arc::clone(&signal),
    );
    let backend = MemoryBackend::new(2, 256, 2 * 2 * 256 + 256, 2048);
    let cfg = WorkerConfig {
        placement: Placement::Dedicated,
        batch_size: 64,
        ..WorkerConfig::default()
    };
    let worker = Worker::new(cfg, backend, link.clone()).unwrap();
    let mut slow = SlowPath::new(
        SlowPathLink {
            inbox: to_slow,
            outbox: Arc::clone(&link.from_slow),
            waker: None,
            tables,
            signal: Arc::clone(&signal),
            stats: Arc::new(SlowPathStats::default()),
            neighbors: Default::default(),
        },
        24,
    );
    let probes = ProbeQueues::new(4, signal);
    slow.serve_probes(probes.clone(), OWNER);
    Rig {
        worker,
        link,
        slow,
        probes,
    }
}

impl Rig {
    /// Runs the worker, the fake kernel and the slow path a few rounds.
    fn settle(&mut self, now: u64) {
        for _ in 0..16 {
            self.slow.poll();
            self.worker.run_once(now);
            self.worker.backend_mut().deliver();
        }
    }

    fn probe(&self, timeout_ms: u64) {
        self.probes
            .submit(ProbeRequest {
                id: 1,
                target: SocketAddrV4::new(BACKEND_IP, 8080),
                kind: ProbeKind::Tcp,
                timeout: Duration::from_millis(timeout_ms),
            })
            .unwrap();
    }

    /// The TCP segments the backend received: (source port, seq, flags byte).
    fn tcp_to_backend(&mut self) -> Vec<(u16, u32, bool, bool)> {
        self.worker
            .backend_mut()
            .take_wire(0)
            .iter()
            .filter_map(|f| {
                let p = SlicedPacket::from_ethernet(f).ok()?;
                match p.transport? {
                    TransportSlice::Tcp(t) => {
                        Some((t.source_port(), t.sequence_number(), t.syn(), t.ack()))
                    }
                    _ => None,
                }
            })
            .collect()
    }
}

#[test]
fn a_probe_the_backends_policy_allows_is_committed_and_its_syn_ack_comes_back_as_a_reply() {
    let mut r = rig(true);
    r.probe(2000);
    r.settle(1_000_000);
    let sent = r.tcp_to_backend();
    let &(sport, seq, syn, ack) = sent.first().expect("the probe's SYN reached the backend");
    assert!(syn && !ack, "{sent:?}");
    assert!(PROBE_PORTS.contains(&sport));
    assert_eq!(r.worker.conntrack().owned_by(OWNER), 1, "committed, owned");
    assert_eq!(
        r.worker.conntrack().owned_by(0),
        0,
        "not the backend's share"
    );

    // The backend answers: a tracked reply, passed to the slow path, which completes the
    // handshake; the probe is healthy.
    let mut syn_ack = Vec::new();
    PacketBuilder::ethernet2(BACKEND_MAC, GW_MAC)
        .ipv4(BACKEND_IP.octets(), GW_IP.octets(), 64)
        .tcp(8080, sport, 7000, 64240)
        .syn()
        .ack(seq.wrapping_add(1))
        .write(&mut syn_ack, &[])
        .unwrap();
    assert!(r.worker.backend_mut().inject(0, &syn_ack));
    let deadline = Instant::now() + Duration::from_secs(2);
    let result = loop {
        r.settle(2_000_000);
        if let Some(res) = r.probes.take_result() {
            break res;
        }
        assert!(Instant::now() < deadline, "no result");
    };
    assert_eq!(result.outcome, ProbeOutcome::Healthy);
    let after = r.tcp_to_backend();
    assert!(
        after.iter().any(|s| s.0 == sport && s.3),
        "the handshake's ACK: {after:?}"
    );
    assert_eq!(r.link.stats.slowpath_probes_denied.get(), 0);
}

#[test]
fn a_probe_the_backends_policy_refuses_is_not_sent_and_is_counted() {
    let mut r = rig(false);
    r.probe(200);
    let deadline = Instant::now() + Duration::from_secs(2);
    let result = loop {
        r.settle(1_000_000);
        if let Some(res) = r.probes.take_result() {
            break res;
        }
        assert!(Instant::now() < deadline, "no result");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(result.outcome, ProbeOutcome::TimedOut);
    assert!(
        r.tcp_to_backend().is_empty(),
        "a denied probe reached the backend"
    );
    assert!(r.link.stats.slowpath_probes_denied.get() >= 1);
    assert_eq!(r.worker.conntrack().owned_by(OWNER), 0);
}
