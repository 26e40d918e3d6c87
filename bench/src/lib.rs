//! # xylem-bench
//!
//! Criterion benchmarks of Xylem's per-packet path (`cargo bench -p xylem-bench`), plus the
//! frame and table builders they share. Nothing here is used at run time.
//!
//! - `forward` and `policy` time [`xylem_dataplane::pipeline::process`] and
//!   [`xylem_dataplane::pipeline::flow_and_policy`] alone: no I/O, no rings. A frame that `process`
//!   forwarded has had its destination MAC, TTL and header checksum (and, for a partial-checksum
//!   frame, its L4 checksum) rewritten, so [`BenchFrame::reset`] restores exactly those bytes
//!   (about a dozen, not a copy of the frame) before each call; the `reset-only` benchmark
//!   measures that overhead so it can be subtracted.
//! - `worker` times a whole worker batch (`Worker::run_once`) over the in-memory backend in
//!   `Mode::Full`, with 100,000 rules and up to 1,000,000 tracked connections, with the
//!   conntrack prefetch on and off.
//! - `workers` measures the aggregate packet rate of one worker against two (one shared
//!   conntrack, or a handoff of each frame to the worker owning its flow), same set-up.
//!
//! Read results as ratios against a baseline of the same run (the machines are noisy VMs), and
//! note the CPU the run was pinned to (`taskset -c N cargo bench ...`).

use std::net::Ipv4Addr;

use xylem_dataplane::checksum;
use xylem_dataplane::pipeline::Frame;
use xylem_dataplane::tables::{Gateway, MacAddr, Mode, Neighbor, Tables};

/// The gateway's MAC.
pub const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// The gateway's IPv4 address.
pub const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The first pod address; pod `i` is `ROUTE_BASE + i`.
pub const ROUTE_BASE: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 0);

/// The address of pod `i`.
pub fn pod_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from_bits(ROUTE_BASE.to_bits() + i)
}

/// The MAC of pod `i`.
pub fn pod_mac(i: u32) -> [u8; 6] {
    let b = i.to_be_bytes();
    [0x02, 0x01, b[0], b[1], b[2], b[3]]
}

/// Tables with host routes for pods `0..routes` (pod `i` on port `i % 64`).
pub fn tables(routes: u32, mode: Mode) -> Tables {
    let mut t = Tables::new(
        1,
        mode,
        Gateway {
            mac: MacAddr(GW_MAC),
            ipv4: GW_IP,
        },
    );
    for i in 0..routes {
        let port = u16::try_from(i % 64).unwrap_or(0);
        t.add_route(
            pod_ip(i),
            Neighbor {
                port,
                mac: MacAddr(pod_mac(i)),
            },
        )
        .expect("distinct pod addresses");
    }
    t
}

/// IP protocol numbers used by the builders.
const TCP: u8 = 6;
const UDP: u8 = 17;

/// An Ethernet + IPv4 + TCP/UDP frame of exactly `frame_len` bytes (at least 54 for TCP, 42
/// for UDP) from `src` port 40000 to `dst` port 80 (TCP: PSH ACK), with correct checksums,
/// sent to the gateway's MAC.
pub fn l4_frame(protocol: u8, frame_len: usize, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    flow_frame(protocol, frame_len, (src, 40000), (dst, 80), 0x18)
}

/// As [`l4_frame`], from `src` (address, port) to `dst` (address, port), with TCP flags
/// `tcp_flags` (byte 13 of the TCP header; ignored for UDP).
pub fn flow_frame(
    protocol: u8,
    frame_len: usize,
    (src, sport): (Ipv4Addr, u16),
    (dst, dport): (Ipv4Addr, u16),
    tcp_flags: u8,
) -> Vec<u8> {
    let l4_header = if protocol == TCP { 20 } else { 8 };
    assert!(frame_len >= 14 + 20 + l4_header, "frame too short");
    let mut f = vec![0u8; frame_len];
    f[..6].copy_from_slice(&GW_MAC);
    f[6..12].copy_from_slice(&pod_mac(0));
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let total = u16::try_from(frame_len - 14).expect("frame fits an IPv4 datagram");
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = protocol;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum::checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let seg_len = total - 20;
    let seg = &mut f[34..];
    seg[0..2].copy_from_slice(&sport.to_be_bytes());
    seg[2..4].copy_from_slice(&dport.to_be_bytes());
    if protocol == TCP {
        seg[4..8].copy_from_slice(&0x1122_3344u32.to_be_bytes());
        seg[8..12].copy_from_slice(&0x5566_7788u32.to_be_bytes());
        seg[12] = 5 << 4;
        seg[13] = tcp_flags;
        seg[14..16].copy_from_slice(&64240u16.to_be_bytes());
    } else {
        seg[4..6].copy_from_slice(&seg_len.to_be_bytes());
    }
    for (i, b) in seg[l4_header..].iter_mut().enumerate() {
        *b = i.to_le_bytes()[0];
    }
    let mut c = checksum::ipv4_pseudo_header(src.octets(), dst.octets(), protocol, seg_len)
        .add_bytes(seg)
        .checksum();
    if protocol == UDP && c == 0 {
        c = 0xffff;
    }
    let field = l4_checksum_offset(protocol);
    seg[field..field + 2].copy_from_slice(&c.to_be_bytes());
    f
}

/// A UDP frame of `frame_len` bytes from pod 0 to `dst`.
pub fn udp_frame(frame_len: usize, dst: Ipv4Addr) -> Vec<u8> {
    l4_frame(UDP, frame_len, pod_ip(0), dst)
}

/// A TCP frame of `frame_len` bytes from pod 0 to `dst`.
pub fn tcp_frame(frame_len: usize, dst: Ipv4Addr) -> Vec<u8> {
    l4_frame(TCP, frame_len, pod_ip(0), dst)
}

fn l4_checksum_offset(protocol: u8) -> usize {
    if protocol == TCP { 16 } else { 6 }
}

/// Replaces the L4 checksum of a frame from [`l4_frame`] with the partial value (the folded
/// pseudo-header sum) that a pod's TX checksum offload leaves.
pub fn make_partial(f: &mut [u8]) {
    let protocol = f[23];
    let seg_len = u16::try_from(f.len() - 34).expect("fits");
    let src: [u8; 4] = f[26..30].try_into().expect("4 bytes");
    let dst: [u8; 4] = f[30..34].try_into().expect("4 bytes");
    let p = checksum::ipv4_pseudo_header(src, dst, protocol, seg_len).fold();
    let at = 34 + l4_checksum_offset(protocol);
    f[at..at + 2].copy_from_slice(&p.to_be_bytes());
}

/// A frame in a UMEM-sized buffer that can be put back into its pre-`process` state cheaply.
#[derive(Debug, Clone)]
pub struct BenchFrame {
    buf: Vec<u8>,
    len: usize,
    /// Bytes 0..12 (destination and source MAC: forwarding rewrites both, and the source is
    /// checked against the port's endpoint).
    macs: [u8; 12],
    /// Bytes 22..26 of the frame (TTL, protocol, header checksum).
    ttl_proto_csum: [u8; 4],
    /// Offset and value of the L4 checksum field.
    l4_csum: (usize, [u8; 2]),
}

impl BenchFrame {
    /// Wraps `frame` (from the builders above) in a 4096-byte buffer.
    pub fn new(frame: &[u8]) -> Self {
        let mut buf = vec![0u8; 4096];
        buf[..frame.len()].copy_from_slice(frame);
        let at = 34 + l4_checksum_offset(frame[23]);
        Self {
            macs: frame[..12].try_into().expect("12 bytes"),
            ttl_proto_csum: frame[22..26].try_into().expect("4 bytes"),
            l4_csum: (at, [frame[at], frame[at + 1]]),
            len: frame.len(),
            buf,
        }
    }

    /// Restores the bytes `process` rewrites on the forwarding path.
    #[inline(always)]
    pub fn reset(&mut self) {
        self.buf[..12].copy_from_slice(&self.macs);
        self.buf[22..26].copy_from_slice(&self.ttl_proto_csum);
        let (at, v) = self.l4_csum;
        self.buf[at..at + 2].copy_from_slice(&v);
    }

    /// The frame as `process` takes it.
    #[inline(always)]
    pub fn frame(&mut self) -> Frame<'_> {
        Frame::new(&mut self.buf, self.len)
    }
}

/// Label values `client-0` .. `client-99` that [`server_policy_yaml`]'s filler rules name.
pub const POLICY_CLIENT_LABELS: u32 = 100;

/// One CiliumNetworkPolicy selecting `app: server` with `rules` ingress rules: `rules - 1`
/// filler rules from distinct (`app: client-N` label, TCP port) pairs, then the one the
/// benchmarked client (`app: client`) matches, on 80/TCP.
pub fn server_policy_yaml(rules: u32) -> String {
    use std::fmt::Write as _;
    let mut y = String::from(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: bench}\nspec:\n  endpointSelector: {matchLabels: {app: server}}\n  ingress:\n",
    );
    for i in 0..rules.saturating_sub(1) {
        let _ = writeln!(
            y,
            "  - fromEndpoints: [{{matchLabels: {{app: client-{}}}}}]\n    toPorts: [{{ports: [{{port: \"{}\", protocol: TCP}}]}}]",
            i % POLICY_CLIENT_LABELS,
            1000 + i / POLICY_CLIENT_LABELS
        );
    }
    y.push_str(
        "  - fromEndpoints: [{matchLabels: {app: client}}]\n    toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]\n",
    );
    y
}

/// `AnonHugePages` of this process, as the kernel reports it (printed next to the conntrack
/// benchmarks: whether the table got huge pages changes its miss cost).
pub fn anon_huge_pages() -> String {
    std::fs::read_to_string("/proc/self/smaps_rollup")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("AnonHugePages:"))
                .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_else(|| "unknown".into())
}

/// A xorshift64 step: the benchmarks' cheap, reproducible choice of flows.
pub fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// The `Mode::Full` set-up of the worker benchmarks (`worker`, `workers`): the 100,000-rule
/// server policy as CiliumNetworkPolicy YAML compiled by `xylem_policy` (as in the
/// `policy` benchmark), sixteen `app=client` endpoints on port 0 that open up to 65,536
/// connections each to the server (port 1) on 80/TCP, and their ACK frames.
pub mod full {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use xylem_dataplane::conntrack::{proto, tcp_flags};
    use xylem_dataplane::tables::{Gateway, MacAddr, Mode, Neighbor, Tables};
    use xylem_policy::{EndpointSpec, IdentityAllocator, compile, parse_policies};

    use super::{GW_IP, GW_MAC, flow_frame};

    /// Ingress rules of the server's policy.
    pub const RULES: u32 = 100_000;
    /// Endpoints labelled `app=client`; each opens up to 65,536 connections (one per source
    /// port).
    pub const CLIENTS: u32 = 16;
    /// The server.
    pub const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    /// The clients' port.
    pub const CLIENT_PORT: usize = 0;
    /// The server's port.
    pub const SERVER_PORT: usize = 1;
    /// Bytes of every frame.
    pub const FRAME_LEN: usize = 64;

    /// Client `i`'s address.
    pub fn client(i: u32) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 1, i as u8)
    }

    /// Connection `i`: `(client address, source port)`.
    pub fn conn(i: u64) -> (Ipv4Addr, u16) {
        (client((i >> 16) as u32), i as u16)
    }

    /// `Mode::Full` tables: routes to the server (port 1) and the clients (port 0), and the
    /// 100,000-rule policy.
    pub fn tables() -> Tables {
        let y = super::server_policy_yaml(RULES);
        let policies = parse_policies(&y).expect("bench policy parses");
        let ep = |ip: Ipv4Addr, app: String| EndpointSpec {
            ip,
            namespace: "default".into(),
            labels: BTreeMap::from([("app".to_owned(), app)]),
        };
        let mut eps = vec![ep(SERVER, "server".into())];
        eps.extend((0..CLIENTS).map(|i| ep(client(i), "client".into())));
        eps.extend(
            (0..super::POLICY_CLIENT_LABELS)
                .map(|j| ep(Ipv4Addr::from_bits(0x0a01_0000 + j), format!("client-{j}"))),
        );
        let mut t = Tables::new(
            1,
            Mode::Full,
            Gateway {
                mac: MacAddr(GW_MAC),
                ipv4: GW_IP,
            },
        );
        let route = |t: &mut Tables, ip: Ipv4Addr, port: usize| {
            t.add_route(
                ip,
                Neighbor {
                    port: port as u16,
                    mac: MacAddr(mac_of(ip)),
                },
            )
            .expect("distinct addresses");
        };
        route(&mut t, SERVER, SERVER_PORT);
        for i in 0..CLIENTS {
            route(&mut t, client(i), CLIENT_PORT);
        }
        let c = compile(
            t.revision(),
            &policies,
            &eps,
            &[GW_IP],
            xylem_policy::AllowLocalhost::default(),
            &mut IdentityAllocator::new(),
        );
        let server = c.tables.endpoint(SERVER).expect("server").1;
        assert!(
            server.ingress.exact_keys() >= RULES as usize,
            "rules compiled"
        );
        t.set_policy(c.tables);
        t
    }

    /// The MAC of the endpoint at `ip`.
    pub fn mac_of(ip: Ipv4Addr) -> [u8; 6] {
        let mut mac = [2, 0, 0, 0, 0, 0];
        mac[2..].copy_from_slice(&ip.octets());
        mac
    }

    /// A client's ACK on connection `i` (to the server), or the server's reply, from its
    /// sender's MAC. The clients share one port (the dataplane's source check finds each by
    /// its route).
    pub fn ack(i: u64, reply: bool) -> Vec<u8> {
        let (c, sport) = conn(i);
        let (src, dst) = if reply {
            ((SERVER, 80), (c, sport))
        } else {
            ((c, sport), (SERVER, 80))
        };
        let mut f = flow_frame(proto::TCP, FRAME_LEN, src, dst, tcp_flags::ACK);
        f[6..12].copy_from_slice(&mac_of(src.0));
        f
    }

    /// The port a frame of connection `i` arrives on.
    pub fn port_of(reply: bool) -> usize {
        if reply { SERVER_PORT } else { CLIENT_PORT }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xylem_dataplane::pipeline::{Verdict, process};

    #[test]
    fn bench_frames_forward_and_reset() {
        let t = tables(256, Mode::Passthrough);
        let (mut forwarded, mut completed) = (0, 0);
        let mut ct =
            xylem_dataplane::conntrack::Conntrack::new(&xylem_dataplane::conntrack::CtConfig {
                capacity: 1024,
                ..Default::default()
            });
        for (frame, partial) in [
            (udp_frame(64, pod_ip(255)), false),
            (tcp_frame(1500, pod_ip(255)), false),
            (tcp_frame(1500, pod_ip(255)), true),
        ] {
            let mut frame = frame;
            if partial {
                make_partial(&mut frame);
            }
            let mut b = BenchFrame::new(&frame);
            for _ in 0..3 {
                b.reset();
                let o = process(0, 0, &mut b.frame(), &t, &mut ct);
                assert_eq!(o.verdict, Verdict::Forward(255 % 64));
                forwarded += 1;
                completed += u32::from(o.checksum_completed);
            }
        }
        assert_eq!((forwarded, completed), (9, 3));
    }
}
