//! Test fixtures: network namespaces behind RAII guards, and a minimal
//! bound AF_XDP socket made with raw libc calls.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Returns early from a test that needs root when it may skip (see `xylem_testkit`).
#[macro_export]
macro_rules! require_root {
    () => {
        if !xylem_testkit::root_or_skip(std::thread::current().name().unwrap_or(module_path!())) {
            return;
        }
    };
}

/// Runs a command, panicking with its output if it fails.
pub fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A network namespace named `xyl-<tag>-<pid>-<n>`, deleted on drop (with
/// every interface in it).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("xyl-{tag}-{}-{n}", std::process::id());
        run(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> ARGS...`
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        run(&v)
    }

    /// `ip netns exec <ns> ARGS...`, returning the output whatever the status.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {args:?} in {}: {e}", self.name))
    }

    /// Pings `addr` from this namespace; true when all `count` replies came back.
    pub fn ping(&self, addr: &str, count: u32) -> bool {
        let c = count.to_string();
        self.exec(&["ping", "-c", &c, "-i", "0.2", "-W", "1", "-q", addr])
            .status
            .success()
    }

    /// Runs `f` on a fresh thread that has entered this namespace (network
    /// namespaces are per thread), re-raising its panic here.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            let handle = s.spawn(|| {
                let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: `file` is an open netns file; setns only affects this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            });
            match handle.join() {
                Ok(v) => v,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    pub fn ifindex(&self, ifname: &str) -> u32 {
        self.enter(|| {
            let c = std::ffi::CString::new(ifname).expect("no NUL in name");
            // SAFETY: `c` is a valid C string for the duration of the call.
            let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
            assert_ne!(i, 0, "{ifname} not found in {}", self.name);
            i
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Never panic here: this runs while a failed test unwinds.
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "warning: ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("warning: ip netns del {}: {e}", self.name),
        }
    }
}

/// One namespace with a veth pair `va`/`vb`, both up, no addresses.
pub fn ns_with_veth(tag: &str) -> Netns {
    let ns = Netns::new(tag);
    ns.ip(&["link", "add", "va", "type", "veth", "peer", "name", "vb"]);
    ns.ip(&["link", "set", "va", "up"]);
    ns.ip(&["link", "set", "vb", "up"]);
    ns
}

/// Two namespaces joined by a veth pair: `va` (10.77.0.1/24) in `a`,
/// `vb` (10.77.0.2/24) in `b`. TX checksum offload is off on both ends.
pub fn two_ns(tag: &str) -> (Netns, Netns) {
    let a = Netns::new(&format!("{tag}a"));
    let b = Netns::new(&format!("{tag}b"));
    a.ip(&[
        "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &b.name,
    ]);
    a.ip(&["addr", "add", "10.77.0.1/24", "dev", "va"]);
    b.ip(&["addr", "add", "10.77.0.2/24", "dev", "vb"]);
    a.ip(&["link", "set", "va", "up"]);
    b.ip(&["link", "set", "vb", "up"]);
    (a, b)
}

/// The committed BPF object.
pub fn object_path() -> String {
    format!("{}/bpf/xylem_redirect.o", env!("CARGO_MANIFEST_DIR"))
}

/// An AF_XDP socket bound (copy mode) to `ifindex` queue `queue` in the
/// calling thread's namespace, with UMEM, fill, completion and RX rings set
/// up but never mmapped or filled: frames redirected to it are dropped by the
/// kernel (no fill buffers), which is all a redirect test needs to observe.
pub struct BoundXsk {
    pub fd: OwnedFd,
    _umem: Vec<u8>,
}

pub fn bound_xsk(ifindex: u32, queue: u32) -> BoundXsk {
    const FRAME: u32 = 4096;
    const FRAMES: usize = 16;
    let mut umem = vec![0u8; FRAME as usize * (FRAMES + 1)];
    // UMEM must be page aligned.
    let off = umem.as_ptr().align_offset(FRAME as usize);
    // SAFETY: plain syscall; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    assert!(
        fd >= 0,
        "socket(AF_XDP): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let reg = libc::xdp_umem_reg {
        // SAFETY: `off` < FRAME, so the pointer stays inside `umem`.
        addr: unsafe { umem.as_mut_ptr().add(off) } as u64,
        len: u64::from(FRAME) * FRAMES as u64,
        chunk_size: FRAME,
        headroom: 0,
        flags: 0,
        tx_metadata_len: 0,
    };
    setsockopt(&fd, libc::XDP_UMEM_REG, &reg);
    let ring: libc::c_int = 64;
    setsockopt(&fd, libc::XDP_UMEM_FILL_RING, &ring);
    setsockopt(&fd, libc::XDP_UMEM_COMPLETION_RING, &ring);
    setsockopt(&fd, libc::XDP_RX_RING, &ring);
    // SAFETY: sockaddr_xdp is plain data; all-zero is valid.
    let mut sa: libc::sockaddr_xdp = unsafe { std::mem::zeroed() };
    sa.sxdp_family = libc::AF_XDP as u16;
    sa.sxdp_flags = libc::XDP_COPY;
    sa.sxdp_ifindex = ifindex;
    sa.sxdp_queue_id = queue;
    // SAFETY: `sa` is a valid sockaddr_xdp for the length given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const sa).cast(),
            size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "bind AF_XDP: {}", std::io::Error::last_os_error());
    BoundXsk { fd, _umem: umem }
}

fn setsockopt<T>(fd: &OwnedFd, opt: libc::c_int, val: &T) {
    // SAFETY: `val` points at a live T of the length given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            opt,
            (val as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt(SOL_XDP, {opt}): {}",
        std::io::Error::last_os_error()
    );
}

/// The MAC the redirect tests give `vb`.
pub const VB_MAC_TEXT: &str = "02:00:00:00:00:02";
const VB_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const VA_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
/// Precedes the index byte at the end of every test frame, so a capture can tell them apart.
const MARKER: &[u8; 8] = b"XYLEMTST";

/// One frame of each kind a pod could use to reach a node's stack, the i-th ending in
/// [`MARKER`] and `i`: IPv4, ARP, IPv6 to ff02::1, IPv4 in a VLAN 0 tag, IPv4 in 802.1ad +
/// 802.1Q tags, LLDP, and an EtherType nobody handles (0x88b5).
pub fn every_kind_of_frame() -> Vec<Vec<u8>> {
    let ipv4_udp: &[u8] = &[
        0x45, 0, 0, 38, 0, 0, 0, 0, 64, 17, 0, 0, 10, 77, 0, 1, 10, 77, 0, 2, 0x9c, 0x40, 0, 9, 0,
        18, 0, 0,
    ];
    let kinds: [(&[u8; 6], &[u8], &[u8]); 7] = [
        (&VB_MAC, &[0x08, 0x00], ipv4_udp),
        (
            &[0xff; 6],
            &[0x08, 0x06],
            &[
                0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 10, 77, 0, 1, 0, 0, 0, 0, 0, 0, 10, 77,
                0, 2,
            ],
        ),
        (
            &[0x33, 0x33, 0, 0, 0, 1],
            &[0x86, 0xdd],
            &[0x60, 0, 0, 0, 0, 9, 59, 255],
        ),
        (&VB_MAC, &[0x81, 0x00, 0, 0, 0x08, 0x00], ipv4_udp),
        (
            &VB_MAC,
            &[0x88, 0xa8, 0, 5, 0x81, 0x00, 0, 0, 0x08, 0x00],
            ipv4_udp,
        ),
        (&[0x01, 0x80, 0xc2, 0, 0, 0x0e], &[0x88, 0xcc], &[]),
        (&VB_MAC, &[0x88, 0xb5], &[]),
    ];
    kinds
        .iter()
        .enumerate()
        .map(|(i, (dst, ethertype, body))| {
            let mut f = Vec::new();
            f.extend_from_slice(*dst);
            f.extend_from_slice(&VA_MAC);
            f.extend_from_slice(ethertype);
            f.extend_from_slice(body);
            f.extend_from_slice(MARKER);
            f.push(i as u8);
            f
        })
        .collect()
}

/// A packet socket for every protocol, panicking with the error if it cannot be made.
fn packet_socket() -> OwnedFd {
    let all = i32::from((libc::ETH_P_ALL as u16).to_be());
    // SAFETY: plain syscall; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, all) };
    assert!(
        fd >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn link_addr(ifindex: u32) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data; all-zero is valid.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sa.sll_ifindex = ifindex as i32;
    sa
}

/// Sends each of `frames` as it is on `ifname` of the calling thread's namespace.
pub fn send_frames(ifname: &str, frames: &[Vec<u8>]) {
    let c = std::ffi::CString::new(ifname).expect("no NUL in name");
    // SAFETY: `c` is a valid C string for the duration of the call.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(ifindex, 0, "{ifname} not found");
    let fd = packet_socket();
    let sa = link_addr(ifindex);
    for f in frames {
        // SAFETY: the buffer and the address outlive the call, with the lengths given.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                f.as_ptr().cast(),
                f.len(),
                0,
                (&raw const sa).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(
            n,
            f.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A packet socket bound to one interface: what the kernel's stack receives there, after XDP.
pub struct Capture {
    fd: OwnedFd,
}

impl Capture {
    /// Captures on `ifindex` of the calling thread's namespace.
    pub fn open(ifindex: u32) -> Self {
        let fd = packet_socket();
        let sa = link_addr(ifindex);
        // SAFETY: `sa` is a valid sockaddr_ll for the length given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sa).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(
            rc,
            0,
            "bind packet socket: {}",
            std::io::Error::last_os_error()
        );
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 300_000,
        };
        // SAFETY: `tv` is a live timeval of the length given.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
        Self { fd }
    }

    /// The indices of the test frames received since the last call, sorted, once each; reads
    /// until nothing came for 300 ms.
    pub fn markers_seen(&self) -> Vec<u8> {
        let mut seen = Vec::new();
        let mut buf = [0u8; 2048];
        loop {
            // SAFETY: `buf` is writable for its whole length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let Ok(n) = usize::try_from(n) else { break };
            let f = &buf[..n];
            if n > MARKER.len() && &f[n - 1 - MARKER.len()..n - 1] == MARKER {
                seen.push(f[n - 1]);
            }
        }
        seen.sort_unstable();
        seen.dedup();
        seen
    }
}
