//! Interfaces that come and go under the running agent.
//!
//! A pod's node-side veth can disappear without the API hearing of it: `ip link del`, or the
//! pod's network namespace deleted (which destroys the pair). Its port would keep every
//! worker's frames on its fill ring and its index taken. A thread of the control side (never a
//! worker) watches the links: it sleeps on a netlink socket subscribed to link notifications,
//! and checks every port's interface by name and index when one arrives, and at least every
//! [`LINK_CHECK`] (which also covers notifications lost to a full socket buffer).
//!
//! - An interface gone (no interface by that name, or another one: deleted and made again
//!   between two checks) loses its route, then its port is closed on every worker as endpoint
//!   delete does, so its frames come back. The endpoint's record is kept, in the state store
//!   and in the list of missing ports: `GET /v1/endpoints` and `xylem status` show it.
//! - An interface of a missing port that exists again is attached anew, as when it was first
//!   added: a socket on every worker, the XDP program, the XSKMAP, then its route.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use xylem_api::MissingInterface;
use xylem_api::config::{PortConfig, PortKind};

use super::endpoints::endpoint_key;
use super::{AgentState, Error, ifindex};

/// The longest the agent goes without checking its ports' interfaces.
pub const LINK_CHECK: Duration = Duration::from_secs(1);

/// A port whose interface disappeared: what it was, to attach it again when the interface is
/// back.
#[derive(Clone, Debug)]
pub(super) struct MissingPort {
    /// The port as it was opened (kept in `AgentState::ports`).
    record: PortConfig,
    /// What it served: an endpoint, or nothing.
    binding: Option<PortConfig>,
}

impl MissingPort {
    /// The port's endpoint, if it served one.
    pub(super) fn endpoint(&self) -> Option<&PortConfig> {
        self.binding.as_ref()
    }

    /// As the status reports it.
    pub(super) fn view(&self) -> MissingInterface {
        MissingInterface {
            ifname: self.record.ifname.clone(),
            endpoint: match (self.record.kind, &self.binding) {
                (PortKind::Host, _) => "host".into(),
                (PortKind::Uplink, _) => "uplink".into(),
                (_, None) => "-".into(),
                (_, Some(b)) => endpoint_key(b),
            },
        }
    }
}

/// How long the watcher waits for a notification before it looks at its stop flag (and, once
/// [`LINK_CHECK`] has passed, checks the ports anyway).
const WAKE: Duration = Duration::from_millis(200);

/// A netlink socket that receives the kernel's link notifications (`RTMGRP_LINK`), and gives
/// up waiting after [`WAKE`].
fn link_notifications() -> Result<OwnedFd, Error> {
    let io = |what: &str| Error::Io {
        what: what.into(),
        source: std::io::Error::last_os_error(),
    };
    // SAFETY: socket(2) with constant arguments; the result is checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io("opening a netlink socket for link notifications"));
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_nl is valid (pid 0: the kernel assigns one).
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = libc::RTMGRP_LINK as u32;
    // SAFETY: `addr` is a valid sockaddr_nl of the length given, read by the call only.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::from_ref(&addr).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io("subscribing to link notifications"));
    }
    let timeout = libc::timeval {
        tv_sec: WAKE.as_secs() as libc::time_t,
        tv_usec: WAKE.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: `timeout` is a valid timeval of the length given, read by the call only.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::from_ref(&timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io("setting the link notifications' timeout"));
    }
    Ok(fd)
}

/// Starts the thread that watches the agent's interfaces (see the module documentation) until
/// `stop` is set or the agent is gone.
pub(super) fn watch_links(
    agent: Weak<AgentState>,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, Error> {
    let sock = link_notifications()?;
    std::thread::Builder::new()
        .name("xylem-links".into())
        .spawn(move || {
            // What a notification says does not matter: any of them is a reason to check every
            // port. The buffer only has to take one datagram.
            let mut buf = vec![0u8; 16 * 1024];
            let mut last = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: `buf` is valid for writes of its length for the whole call.
                let n =
                    unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                // A timeout is the only answer that says nothing happened: a notification, or
                // an error such as ENOBUFS (notifications were lost), is checked at once.
                let timed_out = n < 0
                    && matches!(
                        std::io::Error::last_os_error().kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                    );
                if timed_out && last.elapsed() < LINK_CHECK {
                    continue;
                }
                let Some(agent) = agent.upgrade() else { break };
                agent.check_links();
                last = Instant::now();
            }
        })
        .map_err(|source| Error::Io {
            what: "starting the link watcher".into(),
            source,
        })
}

impl AgentState {
    /// Closes the ports whose interface is gone, and attaches anew the missing ones that are
    /// back.
    pub(super) fn check_links(&self) {
        for (port, p) in self.ports_snapshot().iter().enumerate() {
            if let Some((record, idx, _)) = p
                && ifindex(&record.ifname).ok() != Some(*idx)
            {
                self.interface_gone(port, *idx);
            }
        }
        let back: Vec<String> = self
            .missing
            .lock()
            .map(|m| m.iter().map(|m| m.record.ifname.clone()).collect())
            .unwrap_or_default();
        for ifname in back {
            if ifindex(&ifname).is_ok() {
                self.interface_back(&ifname);
            }
        }
    }

    /// Port `port`'s interface (index `idx`) is gone: its route goes, then the port, on every
    /// worker; the endpoint's record stays.
    fn interface_gone(&self, port: usize, idx: u32) {
        let Ok(mut bindings) = self.bindings.lock() else {
            return;
        };
        // Checked again under the lock: the API may have closed the port meanwhile.
        let record = match self.ports_snapshot().get(port) {
            Some(Some((record, i, _))) if *i == idx => record.clone(),
            _ => return,
        };
        let ifname = record.ifname.clone();
        let binding = bindings.get(port).cloned().flatten();
        let mut next = bindings.clone();
        if let Some(b) = next.get_mut(port) {
            *b = None;
        }
        let published = self.lock_policy().map_err(|r| r.why).and_then(|mut ps| {
            self.publish(&next, &mut ps, None, Vec::new())
                .map_err(|e| e.rejected(super::Refusal::Failed, "-").why)
        });
        if let Err(why) = published {
            tracing::error!(%ifname, %why, "interface gone, but its route could not be removed");
            return;
        }
        *bindings = next;
        if let Err(e) = self.close_port(port) {
            // The workers closed it all the same unless they said otherwise; the redirector's
            // state of a deleted interface went with it.
            tracing::warn!(%ifname, error = %e, "closing the port of a deleted interface");
        }
        let endpoint = binding.as_ref().map(endpoint_key);
        tracing::warn!(
            %ifname,
            port,
            endpoint = endpoint.as_deref().unwrap_or("-"),
            "interface deleted under the agent: its port is closed and its frames are back; \
             it is attached again if it comes back"
        );
        if let Ok(mut missing) = self.missing.lock() {
            missing.retain(|m| m.record.ifname != ifname);
            missing.push(MissingPort { record, binding });
        }
    }

    /// The interface of missing port `ifname` exists again: opens its port, then restores what
    /// it served.
    fn interface_back(&self, ifname: &str) {
        let Ok(mut bindings) = self.bindings.lock() else {
            return;
        };
        // Taken under the bindings lock: the API may have put or deleted the endpoint meanwhile.
        let Some(m) = self.take_missing(ifname) else {
            return;
        };
        if let Some(b) = &m.binding
            && let Err(r) =
                super::endpoints::check_conflicts(&bindings, &endpoint_key(b), b.ip, None)
        {
            tracing::warn!(%ifname, why = %r.why, "interface back, but its endpoint was replaced");
            return;
        }
        let port = match self.open_port(m.record.clone()) {
            Ok(port) => port,
            Err(e) => {
                tracing::error!(%ifname, error = %e, "interface back, but its port did not open");
                self.put_missing(m);
                return;
            }
        };
        let mut next = bindings.clone();
        if next.len() <= port {
            next.resize(port + 1, None);
        }
        next[port] = m.binding.clone();
        let published = self.lock_policy().map_err(|r| r.why).and_then(|mut ps| {
            self.publish(&next, &mut ps, None, Vec::new())
                .map_err(|e| e.rejected(super::Refusal::Failed, "-").why)
        });
        match published {
            Ok(revision) => {
                *bindings = next;
                tracing::info!(%ifname, port, revision, "interface back: attached anew");
            }
            Err(why) => {
                tracing::error!(%ifname, %why, "interface back, but its route was not published");
                if let Err(e) = self.close_port(port) {
                    tracing::error!(%ifname, error = %e, "closing it again failed");
                }
                self.put_missing(m);
            }
        }
    }

    /// Removes and returns the missing port of `ifname`.
    pub(super) fn take_missing(&self, ifname: &str) -> Option<MissingPort> {
        let mut missing = self.missing.lock().ok()?;
        let i = missing.iter().position(|m| m.record.ifname == ifname)?;
        Some(missing.swap_remove(i))
    }

    fn put_missing(&self, m: MissingPort) {
        if let Ok(mut missing) = self.missing.lock() {
            missing.push(m);
        }
    }

    /// Forgets the missing ports that served endpoint `key`, or had interface `ifname`: the
    /// API replaced or deleted them. Returns whether there was one.
    pub(super) fn forget_missing(&self, key: &str, ifname: Option<&str>) -> bool {
        let Ok(mut missing) = self.missing.lock() else {
            return false;
        };
        let before = missing.len();
        missing.retain(|m| {
            m.endpoint().is_none_or(|b| endpoint_key(b) != key)
                && ifname.is_none_or(|i| m.record.ifname != i)
        });
        missing.len() != before
    }

    /// The missing ports, as the status and the endpoint list report them.
    pub(super) fn missing_snapshot(&self) -> Vec<MissingPort> {
        self.missing.lock().map(|m| m.clone()).unwrap_or_default()
    }
}
