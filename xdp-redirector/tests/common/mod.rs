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
