//! Frames built byte by byte, and the raw packet sockets that send and capture them inside a
//! namespace: what an attacker in a pod has, and what the attack tests watch with.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use super::in_netns;

/// 802.1Q.
const VLAN: u16 = 0x8100;

/// The Internet checksum of `parts` laid end to end (each part of even length but the last).
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for p in parts {
        for w in p.chunks(2) {
            let hi = u32::from(w[0]) << 8;
            sum += hi | w.get(1).map_or(0, |&b| u32::from(b));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame; `vlan_tci` adds an 802.1Q tag with that TCI (0: VLAN 0, priority 0).
pub fn eth(
    dst: [u8; 6],
    src: [u8; 6],
    vlan_tci: Option<u16>,
    ethertype: u16,
    body: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    if let Some(tci) = vlan_tci {
        f.extend_from_slice(&VLAN.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(body);
    f
}

/// An IPv4 packet, header checksum computed.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    ipv4_fragment(src, dst, proto, 0, 0, false, l4)
}

/// One fragment of an IPv4 packet (IP ID `id`, `offset` bytes into the payload, a multiple of
/// 8, more to come if `more`) carrying `bytes` of the payload, header checksum computed.
pub fn ipv4_fragment(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    id: u16,
    offset: usize,
    more: bool,
    bytes: &[u8],
) -> Vec<u8> {
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + bytes.len()) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    let frag = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
    ip[6..8].copy_from_slice(&frag.to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut p = ip.to_vec();
    p.extend_from_slice(bytes);
    p
}

/// A UDP segment from port 40000 to `dport` carrying `payload`; checksum 0 (none, which IPv4
/// allows).
pub fn udp(dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&40000u16.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// A UDP datagram from port 40000 in an IPv4 packet; UDP checksum 0 (none, which IPv4 allows).
pub fn udp4(src: Ipv4Addr, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    ipv4(src, dst, 17, &udp(dport, payload))
}

/// A TCP SYN from port 40001 in an IPv4 packet, checksums computed.
pub fn tcp_syn(src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut t = [0u8; 20];
    t[0..2].copy_from_slice(&40001u16.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x02;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    let c = checksum(&[&pseudo, &t]);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    ipv4(src, dst, 6, &t)
}

/// An Ethernet/IPv4 ARP packet (`op` 1: request, 2: reply).
pub fn arp(op: u16, sender: ([u8; 6], Ipv4Addr), target: ([u8; 6], Ipv4Addr)) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sender.0);
    a.extend_from_slice(&sender.1.octets());
    a.extend_from_slice(&target.0);
    a.extend_from_slice(&target.1.octets());
    a
}

/// An ICMPv6 echo request in an IPv6 packet, checksum computed.
pub fn icmpv6_echo(src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let mut icmp = vec![128, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend_from_slice(b"xylem");
    let len = icmp.len() as u32;
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&len.to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    let c = checksum(&[&pseudo, &icmp]);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(len as u16).to_be_bytes());
    p.extend_from_slice(&[58, 255]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&icmp);
    p
}

/// The IPv6 link-local address a kernel derives from `mac` (EUI-64).
pub fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        u16::from_be_bytes([mac[0] ^ 2, mac[1]]),
        u16::from_be_bytes([mac[2], 0xff]),
        u16::from_be_bytes([0xfe, mac[3]]),
        u16::from_be_bytes([mac[4], mac[5]]),
    )
}

/// A packet socket for every protocol on `ifname` of the calling thread's namespace.
pub struct PacketSocket {
    fd: std::os::fd::OwnedFd,
    addr: libc::sockaddr_ll,
}

impl PacketSocket {
    /// Opens it; call it on a thread inside the namespace (see [`in_netns`]).
    pub fn open(ifname: &str) -> PacketSocket {
        use std::os::fd::FromRawFd as _;
        let name = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: `name` is a valid C string for the duration of the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(ifindex > 0, "no {ifname} here");
        let all = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(all)) };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; all-zero is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = all;
        addr.sll_ifindex = ifindex as i32;
        PacketSocket { fd, addr }
    }

    /// Sends `frame` as it is; false if the kernel refused it (a full queue, say).
    pub fn send(&self, frame: &[u8]) -> bool {
        use std::os::fd::AsRawFd as _;
        // SAFETY: the buffer and the address outlive the call, with the lengths given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const self.addr).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        n == frame.len() as isize
    }

    /// The socket, for reading.
    fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.fd)
    }
}

/// Sends each of `frames` as it is from `eth0` of pod namespace `ns`, through a raw packet
/// socket: what an attacker inside a pod can do.
pub fn send_frames(ns: &str, frames: Vec<Vec<u8>>) {
    in_netns(ns, move || send_all(&frames)).join().unwrap();
}

/// As [`send_frames`], from a thread running on CPU `cpu`, so that (with XPS set) they take
/// that CPU's transmit queue of the pod's veth.
pub fn send_frames_on_cpu(ns: &str, cpu: usize, frames: Vec<Vec<u8>>) {
    in_netns(ns, move || {
        // SAFETY: cpu_set_t is plain data, all-zero is the empty set; sched_setaffinity(2) of
        // the calling thread reads the set for the duration of the call.
        let pinned = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
        };
        assert_eq!(pinned, 0, "{}", std::io::Error::last_os_error());
        send_all(&frames);
    })
    .join()
    .unwrap();
}

fn send_all(frames: &[Vec<u8>]) {
    let sock = PacketSocket::open("eth0");
    for f in frames {
        assert!(sock.send(f), "{}", std::io::Error::last_os_error());
    }
}

/// The bytes of a MAC address written `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap_or_else(|_| panic!("not a MAC: {s}")))
        .collect();
    v.try_into().unwrap_or_else(|_| panic!("not a MAC: {s}"))
}

/// Every frame `eth0` of namespace `ns` receives (not the ones it sends) during `dur`, from the
/// moment this returns.
pub fn capture(ns: &str, dur: Duration) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = in_netns(ns, move || {
        let sock = PacketSocket::open("eth0");
        let fd = sock.raw_fd();
        // SAFETY: `sock.addr` is a valid sockaddr_ll for the length given.
        let rc = unsafe {
            libc::bind(
                fd,
                (&raw const sock.addr).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: `tv` is a live timeval of the length given.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        ready_tx.send(()).unwrap();
        let end = Instant::now() + dur;
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while Instant::now() < end {
            // SAFETY: sockaddr_ll is plain data; all-zero is valid.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `buf` and `from` are writable for the lengths given.
            let n = unsafe {
                libc::recvfrom(
                    fd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&raw mut from).cast(),
                    &mut len,
                )
            };
            if let Ok(n) = usize::try_from(n)
                && from.sll_pkttype != libc::PACKET_OUTGOING
            {
                got.push(buf[..n].to_vec());
            }
        }
        got
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    h
}

/// Datagrams a listener heard: (source, payload).
pub type Heard = Vec<(Ipv4Addr, Vec<u8>)>;

/// A UDP socket on 0.0.0.0:`port` in namespace `ns`: every datagram to any of its
/// addresses, broadcast and multicast included, for `dur` from the moment this returns.
pub fn listen_udp(ns: &str, port: u16, dur: Duration) -> std::thread::JoinHandle<Heard> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = in_netns(ns, move || {
        let s = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let end = Instant::now() + dur;
        let mut heard = Vec::new();
        let mut buf = [0u8; 256];
        while Instant::now() < end {
            if let Ok((n, std::net::SocketAddr::V4(from))) = s.recv_from(&mut buf) {
                heard.push((*from.ip(), buf[..n].to_vec()));
            }
        }
        heard
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    h
}
