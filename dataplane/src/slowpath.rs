//! The slow path: the gateway's own presence on the pod network.
//!
//! Workers hand over only the frames addressed to the gateway itself (ARP for its IP, IPv4 to
//! its IP), copied into fixed-size [`SlowFrame`]s on a bounded queue. A control-side thread
//! feeds them to a [`smoltcp`] interface that owns the gateway's IP and MAC: it answers ARP and
//! ICMP echo now, and will carry the agent's own TCP connections (health checks) later.
//! Whatever smoltcp sends goes back to a worker's reply queue, to the port that the route table
//! gives for its destination (the port it came from when there is no route).
//!
//! This runs off the worker cores. It may allocate and block; the workers never wait for it: a
//! full queue is a counted drop (`slow-path-full`).

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
}

struct QueueDevice {
    link: SlowPathLink,
    last_port: PortId,
}

struct RxTok(SlowFrame);

impl phy::RxToken for RxTok {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0.bytes())
    }
}

struct TxTok<'a> {
    link: &'a SlowPathLink,
    fallback: PortId,
}

/// The IPv4 address a frame is going to: an ARP packet's target protocol address, or an IPv4
/// packet's destination.
fn frame_destination(frame: &[u8]) -> Option<std::net::Ipv4Addr> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let at = match ethertype {
        0x0806 => 14 + 24,
        0x0800 => 14 + 16,
        _ => return None,
    };
    let b = frame.get(at..at + 4)?;
    Some(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]))
}

impl phy::TxToken for TxTok<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let len = len.min(SLOW_FRAME_MAX);
        let mut sf = SlowFrame {
            port: self.fallback,
            len: len as u16,
            data: [0; SLOW_FRAME_MAX],
        };
        let r = f(&mut sf.data[..len]);
        if let Some(n) =
            frame_destination(sf.bytes()).and_then(|ip| self.link.tables.load().route(ip))
        {
            sf.port = n.port;
        }
        if self.link.outbox.push(sf).is_ok() {
            self.link.stats.tx.inc();
            if let Some(w) = &self.link.waker {
                // A failed wake leaves the worker to find the frame on its next batch.
                let _ = w.wake();
            }
        } else {
            self.link.stats.tx_dropped.inc();
        }
        r
    }
}

impl Device for QueueDevice {
    type RxToken<'a> = RxTok;
    type TxToken<'a> = TxTok<'a>;

    fn receive(&mut self, _ts: SmolInstant) -> Option<(RxTok, TxTok<'_>)> {
        let frame = self.link.inbox.pop()?;
        self.link.stats.rx.inc();
        self.last_port = frame.port;
        Some((
            RxTok(frame),
            TxTok {
                link: &self.link,
                fallback: self.last_port,
            },
        ))
    }

    fn transmit(&mut self, _ts: SmolInstant) -> Option<TxTok<'_>> {
        Some(TxTok {
            link: &self.link,
            fallback: self.last_port,
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
}

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
        let mut device = QueueDevice { link, last_port: 0 };
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
        }
    }

    fn now(&self) -> SmolInstant {
        SmolInstant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// Processes everything queued. Returns whether anything was processed.
    pub fn poll(&mut self) -> bool {
        let now = self.now();
        let before = self.device.link.stats.rx.get();
        self.iface.poll(now, &mut self.device, &mut self.sockets);
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
                let delay = self
                    .iface
                    .poll_delay(now, &self.sockets)
                    .map(|d| Duration::from_micros(d.total_micros()))
                    .unwrap_or(Duration::from_millis(100))
                    .min(Duration::from_millis(100));
                std::thread::park_timeout(delay);
            }
        }
    }
}
