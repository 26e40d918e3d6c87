//! The slow path: the gateway's own presence on the pod network, and the node's ARP on the
//! underlay.
//!
//! Workers hand over only the frames addressed to the gateway itself (ARP for its IP, IPv4 to
//! its IP), and the uplink's ARP for the node's underlay address, copied into fixed-size
//! [`SlowFrame`]s on a bounded queue. The uplink's frames never reach smoltcp: they are
//! answered and learned from by [`crate::neighbor`], which also asks once a second for the
//! underlay neighbours the tables want and nobody has resolved. A control-side thread
//! feeds them to a [`smoltcp`] interface that owns the gateway's IP and MAC: it answers ARP and
//! ICMP echo, and makes the agent's health-check probes ([`probe`]: TCP connects and HTTP GETs
//! from the gateway's address, asked for and answered through bounded queues).
//! Whatever smoltcp sends goes back to a worker's reply queue, addressed by the tables alone
//! ([`address_by_tables`]): it leaves on the port the route table gives for its destination, to
//! the MAC that route names, whatever smoltcp's own neighbour cache holds. smoltcp learns the
//! sender of every ARP packet addressed to it; the workers' ingress checks let only a port's
//! own endpoint through, but even a wrong entry in that cache could steer no reply. A frame to
//! an address no route leads to is not sent (counted `tx_unroutable`).
//!
//! This runs off the worker cores. It may allocate and block; the workers never wait for it: a
//! full queue is a counted drop (`slowpath-full`), and each port's frames reach the queue at a
//! bounded rate ([`crate::ratelimit`]), so one pod cannot fill it.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use arc_swap::ArcSwap;
use crossbeam::queue::ArrayQueue;
use mio::Waker;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

pub mod probe;

use crate::neighbor::{self, Neighbors};
use crate::stats::Counter;
use crate::tables::{PortId, Tables};
use crate::worker::{SLOW_FRAME_MAX, SlowFrame};

/// Wakes the slow-path thread when a worker queues a frame for it. `notify` costs an atomic
/// swap, plus a futex wake only when the thread is actually parked.
#[derive(Debug, Default)]
pub struct Signal {
    thread: OnceLock<Thread>,
}

impl Signal {
    /// Wakes the slow-path thread if it is parked.
    #[inline]
    pub fn notify(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}

/// Counters of the slow path.
#[derive(Debug, Default)]
pub struct SlowPathStats {
    /// Frames taken from the workers.
    pub rx: Counter,
    /// Frames handed back to a worker to send.
    pub tx: Counter,
    /// Frames smoltcp wanted to send that did not fit the worker's reply queue.
    pub tx_dropped: Counter,
    /// Frames smoltcp wanted to send to an address no route leads to (not sent).
    pub tx_unroutable: Counter,
}

/// The slow path's link to the workers.
#[derive(Clone, Debug)]
pub struct SlowPathLink {
    /// Frames from the workers.
    pub inbox: Arc<ArrayQueue<SlowFrame>>,
    /// Where replies go: the reply queue of the worker that sends them, and its waker if it
    /// blocks when idle.
    pub outbox: Arc<ArrayQueue<SlowFrame>>,
    /// The outbox worker's waker (`shared` placement).
    pub waker: Option<Arc<Waker>>,
    /// The tables, for routing replies.
    pub tables: Arc<ArcSwap<Tables>>,
    /// Lets workers wake this thread.
    pub signal: Arc<Signal>,
    /// Counters.
    pub stats: Arc<SlowPathStats>,
    /// The MACs learned on the uplink ([`crate::neighbor`]).
    pub neighbors: Arc<Neighbors>,
}

impl SlowPathLink {
    /// Queues `sf` on the outbox worker's reply queue and wakes it; counted `tx`, or
    /// `tx_dropped` when the queue is full.
    fn send(&self, sf: SlowFrame) {
        if self.outbox.push(sf).is_ok() {
            self.stats.tx.inc();
            if let Some(w) = &self.waker {
                // A failed wake leaves the worker to find the frame on its next batch.
                let _ = w.wake();
            }
        } else {
            self.stats.tx_dropped.inc();
        }
    }
}

struct QueueDevice {
    link: SlowPathLink,
    /// The conntrack owner of the flows probes open ([`SlowPath::serve_probes`]).
    ct_owner: PortId,
    /// Frames the slow path gives itself, taken before the workers' ([`Self::seed_neighbor`]).
    seeded: std::collections::VecDeque<SlowFrame>,
}

impl QueueDevice {
    /// Tells smoltcp the MAC of `ip` from the tables, as an ARP reply from it, before a probe
    /// connects to it. smoltcp sends at most one ARP request a second for the whole interface
    /// (its neighbour cache's rate limit), so probes to several new backends at once would
    /// otherwise wait a second each for their neighbour and time out. The tables decide where
    /// every frame goes anyway ([`address_by_tables`]): the cache only has to let smoltcp send.
    fn seed_neighbor(&mut self, ip: Ipv4Addr) {
        let tables = self.link.tables.load();
        let (Some(n), gw) = (tables.route(ip), tables.gateway()) else {
            return;
        };
        let mut f = [0u8; 42];
        f[0..6].copy_from_slice(&gw.mac.0);
        f[6..12].copy_from_slice(&n.mac.0);
        f[12..22].copy_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
        f[22..28].copy_from_slice(&n.mac.0);
        f[28..32].copy_from_slice(&ip.octets());
        f[32..38].copy_from_slice(&gw.mac.0);
        f[38..42].copy_from_slice(&gw.ipv4.octets());
        if let Some(sf) = SlowFrame::new(n.port, &f) {
            self.seeded.push_back(sf);
        }
    }
}

impl QueueDevice {
    /// A frame from the uplink: an ARP request for the node is answered, and a wanted sender
    /// learned; anything else (the node's address has no stack behind it) is let go.
    fn on_uplink(&self, f: &SlowFrame) {
        let tables = self.link.tables.load();
        let (Some(up), Some(seen)) = (tables.uplink(), neighbor::read(f.bytes())) else {
            return;
        };
        let own = (up.ip, up.mac);
        if let Some(reply) = neighbor::handle(
            &seen,
            own,
            |ip| tables.wants_neighbor(ip),
            &self.link.neighbors,
        ) {
            self.send_raw(up.port, &reply);
        }
    }

    /// Asks by ARP for every underlay neighbour the tables want and the node does not know.
    fn resolve_neighbors(&self) {
        let tables = self.link.tables.load();
        let Some(up) = tables.uplink() else {
            return;
        };
        let wanted = tables
            .peers()
            .iter()
            .map(|p| p.node_ip)
            .chain(tables.world().map(|w| w.0));
        for ip in wanted {
            if self.link.neighbors.get(ip).is_none() {
                self.send_raw(up.port, &neighbor::request((up.ip, up.mac), ip));
            }
        }
    }

    /// Queues `bytes` for a worker to send on `port` as they are.
    fn send_raw(&self, port: PortId, bytes: &[u8]) {
        let Some(mut sf) = SlowFrame::new(port, bytes) else {
            return;
        };
        sf.owner = self.ct_owner;
        self.link.send(sf);
    }
}

struct RxTok(SlowFrame);

impl phy::RxToken for RxTok {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0.bytes())
    }
}

struct TxTok<'a> {
    link: &'a SlowPathLink,
    ct_owner: PortId,
}

/// Addresses a frame smoltcp built by the tables alone: finds the route to its destination (an
/// IPv4 packet's destination address, an ARP packet's target protocol address) and writes that
/// route's MAC as the Ethernet destination, and, in an ARP reply, as the target hardware
/// address too. An ARP request stays broadcast. Returns the port to send it on, or `None` when
/// no route leads to the destination (or the frame is neither IPv4 nor ARP), and then it must
/// not be sent: smoltcp's neighbour cache never chooses where a frame goes.
pub fn address_by_tables(frame: &mut [u8], tables: &Tables) -> Option<PortId> {
    const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
    const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];
    const ARP_REPLY: [u8; 2] = [0, 2];
    let ethertype: [u8; 2] = frame.get(12..14)?.try_into().ok()?;
    let (dst_at, arp_reply) = match ethertype {
        ETHERTYPE_IPV4 => (14 + 16, false),
        ETHERTYPE_ARP => (14 + 24, frame.get(20..22)? == ARP_REPLY),
        _ => return None,
    };
    let b: [u8; 4] = frame.get(dst_at..dst_at + 4)?.try_into().ok()?;
    let n = tables.route(Ipv4Addr::from(b))?;
    if ethertype == ETHERTYPE_IPV4 || arp_reply {
        frame[0..6].copy_from_slice(&n.mac.0);
    }
    if arp_reply {
        // Checked above: an ARP frame long enough to hold its target protocol address holds
        // the target hardware address before it.
        frame[14 + 18..14 + 24].copy_from_slice(&n.mac.0);
    }
    Some(n.port)
}

impl phy::TxToken for TxTok<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let len = len.min(SLOW_FRAME_MAX);
        let mut sf = SlowFrame {
            port: 0,
            owner: self.ct_owner,
            len: len as u16,
            data: [0; SLOW_FRAME_MAX],
        };
        let r = f(&mut sf.data[..len]);
        let Some(port) = address_by_tables(&mut sf.data[..len], &self.link.tables.load()) else {
            self.link.stats.tx_unroutable.inc();
            return r;
        };
        sf.port = port;
        self.link.send(sf);
        r
    }
}

impl Device for QueueDevice {
    type RxToken<'a> = RxTok;
    type TxToken<'a> = TxTok<'a>;

    fn receive(&mut self, _ts: SmolInstant) -> Option<(RxTok, TxTok<'_>)> {
        let frame = match self.seeded.pop_front() {
            Some(f) => f,
            None => loop {
                let f = self.link.inbox.pop()?;
                self.link.stats.rx.inc();
                // The uplink's frames are the node's on the underlay, not the gateway's: its
                // ARP is answered here, and smoltcp never sees them.
                if f.port != self.link.tables.load().uplink_port() {
                    break f;
                }
                self.on_uplink(&f);
            },
        };
        Some((
            RxTok(frame),
            TxTok {
                link: &self.link,
                ct_owner: self.ct_owner,
            },
        ))
    }

    fn transmit(&mut self, _ts: SmolInstant) -> Option<TxTok<'_>> {
        Some(TxTok {
            link: &self.link,
            ct_owner: self.ct_owner,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps.max_burst_size = Some(64);
        caps
    }
}

/// The gateway's smoltcp interface and the queues that feed it. See the module documentation.
pub struct SlowPath {
    iface: Interface,
    device: QueueDevice,
    sockets: SocketSet<'static>,
    epoch: std::time::Instant,
    prober: Option<probe::Prober>,
    /// When the unresolved underlay neighbours were last asked for.
    last_arp: Option<std::time::Instant>,
}

/// How often the slow path asks for the underlay neighbours it does not know.
const ARP_INTERVAL: Duration = Duration::from_secs(1);

impl std::fmt::Debug for SlowPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlowPath")
            .field("mac", &self.iface.hardware_addr())
            .field("ips", &self.iface.ip_addrs())
            .finish()
    }
}

impl SlowPath {
    /// A gateway interface with the tables' gateway MAC and IP, in a subnet of `prefix_len`
    /// bits (the pod CIDR's: smoltcp answers ARP only from its own subnet).
    pub fn new(link: SlowPathLink, prefix_len: u8) -> Self {
        let gw = *link.tables.load().gateway();
        let mut device = QueueDevice {
            link,
            ct_owner: 0,
            seeded: Default::default(),
        };
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(gw.mac.0)));
        config.random_seed = u64::from(std::process::id()) ^ 0x78796c656d;
        let epoch = std::time::Instant::now();
        let mut iface = Interface::new(config, &mut device, SmolInstant::from_micros(0));
        iface.update_ip_addrs(|addrs| {
            // One address on a fresh interface: the vector has room.
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(gw.ipv4), prefix_len));
        });
        SlowPath {
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            epoch,
            prober: None,
            last_arp: None,
        }
    }

    /// Makes the probes the agent queues on `queues` (see [`probe`]); their results come back
    /// on the same queues. The agent wakes this thread through the queues' signal, which must
    /// be this slow path's [`SlowPathLink::signal`].
    ///
    /// `ct_owner` is the port the probes' conntrack entries are counted against: the workers
    /// commit each probe's connection as a new flow from the gateway (see
    /// [`probe::is_probe_frame`]), and an entry needs an owner. Give a port that is not one
    /// pod's and is exempt from the per-pod limit
    /// ([`crate::conntrack::Conntrack::exempt_from_endpoint_limit`]), such as the host port:
    /// probes are the node's own connections, and a pod's share must neither pay for them nor
    /// stop them.
    pub fn serve_probes(&mut self, queues: probe::ProbeQueues, ct_owner: PortId) {
        self.prober = Some(probe::Prober::new(queues));
        self.device.ct_owner = ct_owner;
    }

    /// Probes in flight, closing ones included (each holds one smoltcp socket).
    pub fn probes_in_flight(&self) -> usize {
        self.prober.as_ref().map_or(0, probe::Prober::in_flight)
    }

    /// smoltcp sockets held (probes in flight hold one each; nothing else does).
    pub fn sockets_held(&self) -> usize {
        self.sockets.iter().count()
    }

    fn now(&self) -> SmolInstant {
        SmolInstant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// Processes everything queued: frames from the workers, new probes, and the probes in
    /// flight. Returns whether a frame was processed.
    pub fn poll(&mut self) -> bool {
        let before = self.device.link.stats.rx.get();
        if self.last_arp.is_none_or(|t| t.elapsed() >= ARP_INTERVAL) {
            self.last_arp = Some(std::time::Instant::now());
            self.device.resolve_neighbors();
        }
        if let Some(p) = &mut self.prober {
            let device = &mut self.device;
            p.start(&mut self.iface, &mut self.sockets, |ip| {
                device.seed_neighbor(ip)
            });
        }
        // A probe that closes or aborts has a FIN or RST to send: one more poll sends it, and
        // the next advance can free its socket.
        for _ in 0..3 {
            let now = self.now();
            self.iface.poll(now, &mut self.device, &mut self.sockets);
            let more = match &mut self.prober {
                Some(p) => p.advance(&mut self.sockets),
                None => false,
            };
            if !more {
                break;
            }
        }
        self.device.link.stats.rx.get() != before
    }

    /// Runs on the calling thread until `stop` is set: parks until a worker signals a frame (or
    /// smoltcp's next timer), then polls.
    pub fn run(mut self, stop: Arc<AtomicBool>) {
        let _ = self.device.link.signal.thread.set(std::thread::current());
        while !stop.load(Ordering::Relaxed) {
            self.poll();
            if self.device.link.inbox.is_empty() {
                let now = self.now();
                let probe_due = self
                    .prober
                    .as_ref()
                    .and_then(probe::Prober::next_deadline)
                    .map(|t| t.saturating_duration_since(std::time::Instant::now()));
                let delay = self
                    .iface
                    .poll_delay(now, &self.sockets)
                    .map(|d| Duration::from_micros(d.total_micros()))
                    .into_iter()
                    .chain(probe_due)
                    .min()
                    .unwrap_or(Duration::from_millis(100))
                    .min(Duration::from_millis(100))
                    .min(ARP_INTERVAL);
                std::thread::park_timeout(delay);
            }
        }
        // The backends' ends of probes still in flight get their RST rather than a
        // connection that lingers until it times out.
        if let Some(p) = &mut self.prober {
            p.abort_all(&mut self.sockets);
            let now = self.now();
            self.iface.poll(now, &mut self.device, &mut self.sockets);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::{Gateway, MacAddr, Mode, Neighbor};

    const GW_MAC: MacAddr = MacAddr([0x0e, 0, 0, 0, 0, 1]);
    const POD_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 7]);
    const LIAR_MAC: MacAddr = MacAddr([0x02, 0xee, 0xee, 0xee, 0xee, 0xee]);

    fn tables() -> Tables {
        let mut t = Tables::new(
            1,
            Mode::Full,
            Gateway {
                mac: GW_MAC,
                ipv4: Ipv4Addr::new(10, 0, 0, 1),
            },
        );
        t.add_route(
            Ipv4Addr::new(10, 0, 0, 7),
            Neighbor {
                port: 3,
                mac: POD_MAC,
            },
        )
        .unwrap();
        t
    }

    /// An Ethernet + ARP frame from the gateway, `op` 1 (request) or 2 (reply), to `eth_dst`,
    /// whose target is `tha` / `tpa`.
    fn arp(op: u8, eth_dst: MacAddr, tha: MacAddr, tpa: [u8; 4]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&eth_dst.0);
        f.extend_from_slice(&GW_MAC.0);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, op]);
        f.extend_from_slice(&GW_MAC.0);
        f.extend_from_slice(&[10, 0, 0, 1]);
        f.extend_from_slice(&tha.0);
        f.extend_from_slice(&tpa);
        f
    }

    /// An Ethernet + IPv4 header from the gateway to `dst` at `eth_dst` (no payload needed).
    fn ipv4(eth_dst: MacAddr, dst: [u8; 4]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&eth_dst.0);
        f.extend_from_slice(&GW_MAC.0);
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 20, 0, 0, 0, 0, 64, 1, 0, 0]);
        f.extend_from_slice(&[10, 0, 0, 1]);
        f.extend_from_slice(&dst);
        f
    }

    #[test]
    fn an_ipv4_frame_goes_to_the_routes_port_and_mac_whatever_smoltcp_chose() {
        let mut f = ipv4(LIAR_MAC, [10, 0, 0, 7]);
        let before = f.clone();
        assert_eq!(address_by_tables(&mut f, &tables()), Some(3));
        assert_eq!(&f[0..6], &POD_MAC.0);
        assert_eq!(&f[6..], &before[6..], "only the destination MAC changes");
    }

    #[test]
    fn an_arp_reply_names_the_routes_mac_twice_and_a_request_stays_broadcast() {
        let mut reply = arp(2, LIAR_MAC, LIAR_MAC, [10, 0, 0, 7]);
        assert_eq!(address_by_tables(&mut reply, &tables()), Some(3));
        assert_eq!(&reply[0..6], &POD_MAC.0);
        assert_eq!(&reply[32..38], &POD_MAC.0, "target hardware address");
        let mut request = arp(1, MacAddr::BROADCAST, MacAddr::default(), [10, 0, 0, 7]);
        let before = request.clone();
        assert_eq!(address_by_tables(&mut request, &tables()), Some(3));
        assert_eq!(request, before);
    }

    #[test]
    fn nothing_without_a_route_or_a_whole_header_is_sent() {
        let t = tables();
        assert_eq!(
            address_by_tables(&mut ipv4(POD_MAC, [10, 0, 0, 8]), &t),
            None
        );
        assert_eq!(
            address_by_tables(&mut arp(2, POD_MAC, POD_MAC, [10, 0, 0, 9]), &t),
            None
        );
        let whole = ipv4(POD_MAC, [10, 0, 0, 7]);
        for cut in 0..whole.len() {
            assert_eq!(address_by_tables(&mut whole[..cut].to_vec(), &t), None);
        }
        let mut ipv6 = whole.clone();
        ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(address_by_tables(&mut ipv6, &t), None);
    }
}
