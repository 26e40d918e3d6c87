//! A minimal rtnetlink client: read a device's XDP attachment (`RTM_GETLINK`,
//! `IFLA_XDP`) and clear one attached through netlink (`RTM_SETLINK` with
//! `IFLA_XDP_FD = -1`).
//!
//! The socket is opened in the calling thread's network namespace, so the
//! interface index refers to a device of that namespace.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const IFLA_XDP: u16 = 43;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_FLAGS: u16 = 3;
const IFLA_XDP_DRV_PROG_ID: u16 = 5;
const IFLA_XDP_SKB_PROG_ID: u16 = 6;
const IFLA_XDP_HW_PROG_ID: u16 = 7;
/// `NLA_F_NESTED | NLA_F_NET_BYTEORDER`, masked off attribute types.
const NLA_TYPE_MASK: u16 = !(0x8000 | 0x4000);
const NLA_F_NESTED: u16 = 0x8000;

/// `XDP_FLAGS_SKB_MODE` from `linux/if_link.h`.
pub(crate) const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// `XDP_FLAGS_DRV_MODE`.
pub(crate) const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
/// `XDP_FLAGS_HW_MODE`.
pub(crate) const XDP_FLAGS_HW_MODE: u32 = 1 << 3;

const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const RECV_BUF: usize = 64 * 1024;

/// The XDP programs attached to one device, by mode (program ids).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct XdpState {
    /// Native (driver) mode program.
    pub(crate) drv: Option<u32>,
    /// Generic (skb) mode program.
    pub(crate) skb: Option<u32>,
    /// Hardware-offloaded program.
    pub(crate) hw: Option<u32>,
}

impl XdpState {
    /// `(program id, XDP_FLAGS_*_MODE)` for every attached program.
    pub(crate) fn attached(&self) -> impl Iterator<Item = (u32, u32)> {
        [
            (self.drv, XDP_FLAGS_DRV_MODE),
            (self.skb, XDP_FLAGS_SKB_MODE),
            (self.hw, XDP_FLAGS_HW_MODE),
        ]
        .into_iter()
        .filter_map(|(id, flags)| id.map(|id| (id, flags)))
    }
}

/// Reads which XDP programs are attached to `ifindex`.
pub(crate) fn xdp_state(ifindex: u32) -> io::Result<XdpState> {
    let mut msg = Message::new(libc::RTM_GETLINK, libc::NLM_F_REQUEST as u16, ifindex);
    let sock = NlSocket::open()?;
    let payload = sock.transact(msg.finish(), true)?;
    let payload = payload.ok_or_else(|| io::Error::other("RTM_GETLINK returned no RTM_NEWLINK"))?;
    let attrs = payload.get(IFINFOMSG_LEN..).unwrap_or_default();
    let mut state = XdpState::default();
    for (ty, val) in Attrs(attrs) {
        if ty != IFLA_XDP {
            continue;
        }
        for (ty, val) in Attrs(val) {
            let id = read_u32(val).filter(|&id| id != 0);
            match ty {
                IFLA_XDP_DRV_PROG_ID => state.drv = id,
                IFLA_XDP_SKB_PROG_ID => state.skb = id,
                IFLA_XDP_HW_PROG_ID => state.hw = id,
                _ => {}
            }
        }
    }
    Ok(state)
}

/// Detaches the netlink-attached XDP program of `ifindex` in the mode given by
/// `mode_flags` (one of the `XDP_FLAGS_*_MODE`). Fails with `EBUSY` when the
/// program is owned by a bpf_link (netlink cannot replace a link).
pub(crate) fn clear_xdp(ifindex: u32, mode_flags: u32) -> io::Result<()> {
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    let mut msg = Message::new(libc::RTM_SETLINK, flags, ifindex);
    let nest = msg.begin_nest(IFLA_XDP);
    msg.put(IFLA_XDP_FD, &(-1i32).to_ne_bytes());
    msg.put(IFLA_XDP_FLAGS, &mode_flags.to_ne_bytes());
    msg.end_nest(nest);
    let sock = NlSocket::open()?;
    sock.transact(msg.finish(), false).map(drop)
}

fn read_u32(val: &[u8]) -> Option<u32> {
    val.get(..4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_ne_bytes)
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Iterator over `(type, payload)` of a run of netlink attributes.
struct Attrs<'a>(&'a [u8]);

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let buf = self.0;
        let len = usize::from(u16::from_ne_bytes(buf.get(0..2)?.try_into().ok()?));
        let ty = u16::from_ne_bytes(buf.get(2..4)?.try_into().ok()?) & NLA_TYPE_MASK;
        if len < 4 {
            return None;
        }
        let val = buf.get(4..len)?;
        self.0 = buf.get(align4(len)..).unwrap_or_default();
        Some((ty, val))
    }
}

/// A netlink request under construction: header, `ifinfomsg`, attributes.
struct Message {
    buf: Vec<u8>,
}

impl Message {
    fn new(ty: u16, flags: u16, ifindex: u32) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, set by finish()
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&1u32.to_ne_bytes()); // nlmsg_seq
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: kernel assigns
        // struct ifinfomsg { u8 family; u8 pad; u16 type; i32 index; u32 flags; u32 change; }
        buf.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
        buf.extend_from_slice(&ifindex.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        Self { buf }
    }

    fn put(&mut self, ty: u16, val: &[u8]) {
        let len = 4 + val.len();
        // Attribute payloads here are a few bytes: the length always fits.
        self.buf
            .extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(val);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    fn begin_nest(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn end_nest(&mut self, at: usize) {
        let len = u16::try_from(self.buf.len() - at).unwrap_or(u16::MAX);
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn finish(&mut self) -> &[u8] {
        let len = u32::try_from(self.buf.len()).unwrap_or(u32::MAX);
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        &self.buf
    }
}

struct NlSocket(OwnedFd);

impl NlSocket {
    fn open() -> io::Result<Self> {
        // SAFETY: socket(2) takes no pointers; the result is checked below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        let sock = Self(unsafe { OwnedFd::from_raw_fd(fd) });
        // Never hang the agent on a kernel that does not answer.
        let tv = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: `tv` is a valid timeval that outlives the call; the length matches.
        let rc = unsafe {
            libc::setsockopt(
                sock.0.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sock)
    }

    /// Sends `req` and reads until the kernel's answer: the first
    /// `RTM_NEWLINK` payload when `want_link`, otherwise the ack.
    fn transact(&self, req: &[u8], want_link: bool) -> io::Result<Option<Vec<u8>>> {
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `req` and `addr` are valid for the given lengths during the call.
        let rc = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            let mut msgs = buf.get(..n.unsigned_abs()).unwrap_or_default();
            while msgs.len() >= NLMSG_HDRLEN {
                let len = read_u32(msgs).map_or(0, |l| l as usize);
                let ty = u16::from_ne_bytes([msgs[4], msgs[5]]);
                if len < NLMSG_HDRLEN || len > msgs.len() {
                    return Err(io::Error::other("truncated netlink message"));
                }
                let payload = &msgs[NLMSG_HDRLEN..len];
                match ty {
                    t if t == libc::NLMSG_ERROR as u16 => {
                        let code = payload
                            .get(..4)
                            .and_then(|b| b.try_into().ok())
                            .map_or(0, i32::from_ne_bytes);
                        if code < 0 {
                            return Err(io::Error::from_raw_os_error(-code));
                        }
                        return Ok(None);
                    }
                    t if t == libc::NLMSG_DONE as u16 => return Ok(None),
                    libc::RTM_NEWLINK if want_link => return Ok(Some(payload.to_vec())),
                    _ => {}
                }
                msgs = msgs.get(align4(len)..).unwrap_or_default();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_walks_nested_and_stops_on_garbage() {
        let mut m = Message::new(0, 0, 7);
        let nest = m.begin_nest(IFLA_XDP);
        m.put(IFLA_XDP_SKB_PROG_ID, &42u32.to_ne_bytes());
        m.put(IFLA_XDP_FLAGS, &[1, 2, 3]);
        m.end_nest(nest);
        let attrs = &m.finish()[NLMSG_HDRLEN + IFINFOMSG_LEN..];
        let outer: Vec<_> = Attrs(attrs).collect();
        assert_eq!(outer.len(), 1);
        assert_eq!(outer[0].0, IFLA_XDP);
        let inner: Vec<_> = Attrs(outer[0].1).collect();
        assert_eq!(inner[0], (IFLA_XDP_SKB_PROG_ID, &42u32.to_ne_bytes()[..]));
        assert_eq!(inner[1], (IFLA_XDP_FLAGS, &[1u8, 2, 3][..]));
        assert_eq!(Attrs(&[0xff, 0xff, 1, 0]).count(), 0);
        assert_eq!(Attrs(&[2, 0, 1, 0]).count(), 0);
    }
}
