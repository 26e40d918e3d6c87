//! Helpers for the privileged tests on real AF_XDP sockets: a node namespace with pod
//! namespaces behind veths (deleted by a guard, also during a panic), entering a namespace from
//! a thread, and raw packet sockets to send and capture exact frames in a pod.
//!
//! Shared by the privileged test binaries (`xsk_accounting`, `xsk_headroom`, `xsk_realtime`), so
//! that none of them keeps a copy.

#![allow(dead_code, reason = "each test binary uses its own subset")]

use std::os::fd::AsFd;
use std::process::Command;
use std::time::{Duration, Instant};

use xdp_redirector::{Redirector, XdpModeRequest};
use xylem_dataplane::io::afxdp::{PortSpec, XskBackend, XskOptions};
use xylem_dataplane::tables::MacAddr;

/// The gateway MAC the pods' neighbour entries point at.
pub const GW_MAC: [u8; 6] = [0x0e, 0x78, 0x79, 0x6c, 0, 1];
/// The gateway address the pods route through.
pub const GW_IP: &str = "10.201.0.1";

pub use xylem_testkit::root_or_skip;

/// Runs `ip ARGS`, panicking with its stderr when it fails; returns its stdout.
pub fn ip(args: &[&str]) -> String {
    let o = Command::new("ip").args(args).output().expect("ip");
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Deletes the named namespaces (and with them their veths) when dropped.
pub struct Netns(pub Vec<String>);
impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "delete", n]).output();
        }
    }
}

/// Moves the calling thread into network namespace `netns`.
pub fn enter(netns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{netns}")).expect("netns file");
    nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

/// The MAC address of `ifname` in `netns`.
pub fn mac_of(netns: &str, ifname: &str) -> [u8; 6] {
    let out = ip(&["-n", netns, "-j", "link", "show", ifname]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let m: MacAddr = v[0]["address"].as_str().unwrap().parse().unwrap();
    m.0
}

/// The index of `name` in the calling thread's namespace (0 if there is none).
pub fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C string.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

/// Loads the XDP redirector and attaches it in native mode to each of `ifnames` in the calling
/// thread's namespace.
pub fn attach_redirector(ifnames: &[&str]) -> Result<Redirector, String> {
    let mut r = Redirector::load().map_err(|e| e.to_string())?;
    for i in ifnames {
        r.attach(i, XdpModeRequest::Native)
            .map_err(|e| format!("attaching to {i}: {e}"))?;
    }
    Ok(r)
}

/// The AF_XDP ports on queue `queue` of each of `ifnames` (calling thread's namespace).
pub fn port_specs(ifnames: &[&str], queue: u32) -> Vec<PortSpec> {
    ifnames
        .iter()
        .map(|n| PortSpec {
            ifname: n.to_string(),
            ifindex: ifindex(n),
            queue,
        })
        .collect()
}

/// Binds copy-mode AF_XDP sockets on `specs` (rings of `ring_size`, `frames_per_port` UMEM
/// frames each) and registers them in `r`'s XSKMAP.
pub fn bind_sockets(
    r: &mut Redirector,
    specs: &[PortSpec],
    ring_size: u32,
    frames_per_port: u32,
) -> Result<XskBackend, String> {
    let opts = XskOptions {
        ring_size,
        zero_copy: false,
    };
    let backend = XskBackend::new(specs, opts, frames_per_port).map_err(|e| e.to_string())?;
    for (idx, q, fd) in backend.socket_fds() {
        r.register_socket(idx, q, fd).map_err(|e| e.to_string())?;
    }
    Ok(backend)
}

/// A node namespace and one pod namespace per `(node-side veth, pod address)`, named after the
/// process id and `tag` so that tests running at once do not collide. Each pod's `eth0` has its
/// address, a route to the gateway and a permanent neighbour entry for [`GW_MAC`].
pub struct Lab {
    /// Deletes every namespace below when dropped.
    pub guard: Netns,
    /// The node's namespace, holding the dataplane ends of the veths.
    pub node: String,
    /// The pods' namespaces, in the order given.
    pub pods: Vec<String>,
}

impl Lab {
    /// Builds it (see the type's documentation).
    pub fn new(tag: &str, pods: &[(&str, &str)]) -> Lab {
        let base = format!("xy{tag}{}", std::process::id());
        let node = format!("{base}-n");
        let pod_names: Vec<String> = (0..pods.len()).map(|i| format!("{base}-{i}")).collect();
        let mut all = vec![node.clone()];
        all.extend(pod_names.iter().cloned());
        let guard = Netns(all.clone());
        for n in &all {
            ip(&["netns", "add", n]);
            ip(&["-n", n, "link", "set", "lo", "up"]);
        }
        for ((dp, addr), pod) in pods.iter().zip(&pod_names) {
            ip(&[
                "-n", &node, "link", "add", dp, "type", "veth", "peer", "name", "eth0", "netns",
                pod,
            ]);
            ip(&["-n", pod, "addr", "add", addr, "dev", "eth0"]);
            ip(&["-n", pod, "link", "set", "eth0", "up"]);
            ip(&["-n", &node, "link", "set", dp, "up"]);
            ip(&[
                "-n", pod, "route", "add", GW_IP, "dev", "eth0", "scope", "link",
            ]);
            ip(&["-n", pod, "route", "add", "default", "via", GW_IP]);
            ip(&[
                "-n",
                pod,
                "neigh",
                "add",
                GW_IP,
                "lladdr",
                &MacAddr(GW_MAC).to_string(),
                "dev",
                "eth0",
                "nud",
                "permanent",
            ]);
        }
        Lab {
            guard,
            node,
            pods: pod_names,
        }
    }
}

/// A raw `AF_PACKET` socket bound to one interface of the calling thread's namespace: sends
/// whole Ethernet frames and captures every frame the interface receives.
pub struct PacketSocket {
    fd: libc::c_int,
}

impl PacketSocket {
    /// Binds to `ifname`, capturing every protocol, with receives timing out after 50 ms.
    pub fn bind(ifname: &str) -> PacketSocket {
        let all = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the fd is closed on drop.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(all)) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let s = PacketSocket { fd };
        // SAFETY: a zeroed sockaddr_ll is valid; the fields that matter are set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = all;
        sll.sll_ifindex = ifindex(ifname) as i32;
        // SAFETY: sll is a valid sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                fd,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        // SAFETY: tv is a valid timeval of the size given.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        assert_eq!(rc, 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
        s
    }

    /// Sends one frame; true if the kernel took it.
    pub fn send(&self, frame: &[u8]) -> bool {
        // SAFETY: frame is a valid buffer of the given length.
        unsafe { libc::send(self.fd, frame.as_ptr().cast(), frame.len(), 0) > 0 }
    }

    /// Frames received (not the ones this host sent) until `until`, each passed to `keep`;
    /// stops early once `keep` returns true, and returns the frame it accepted.
    pub fn recv_until(
        &self,
        until: Instant,
        mut keep: impl FnMut(&[u8]) -> bool,
    ) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65536];
        while Instant::now() < until {
            // SAFETY: a zeroed sockaddr_ll is valid; recvfrom fills it.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut fromlen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: buf and from are valid for the lengths given.
            let n = unsafe {
                libc::recvfrom(
                    self.fd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut fromlen,
                )
            };
            if n <= 0 || from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let frame = &buf[..n as usize];
            if keep(frame) {
                return Some(frame.to_vec());
            }
        }
        None
    }
}

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // SAFETY: the fd is ours and closed once.
        unsafe { libc::close(self.fd) };
    }
}

/// Polls `done` every few milliseconds until it is true or `timeout` passes.
pub fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    done()
}
