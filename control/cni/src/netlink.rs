//! Links, addresses and routes over rtnetlink, in the namespace of the thread that opens the
//! connection, and the few settings rtnetlink does not carry (an interface's sysctls, its TX
//! checksum offload).
//!
//! The plugin runs in the node's namespace; [`in_netns`] runs a closure on a thread that has
//! joined the pod's, so the process's own namespace never changes.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkMessage,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::error::CniError;
use crate::result::IpNet;

/// The kernel's main routing table (`RT_TABLE_MAIN`), where a pod's routes go.
const RT_TABLE_MAIN: u8 = 254;

/// What the plugin reads of a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Its index in its namespace.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Its MAC address (`0e:…`), if it has one.
    pub mac: Option<String>,
    /// Its MTU.
    pub mtu: Option<u32>,
    /// Whether it is administratively up.
    pub up: bool,
    /// For a veth: its peer's index, in the peer's namespace.
    pub peer_index: Option<u32>,
    /// Whether it is a veth.
    pub veth: bool,
}

/// An IPv4 route of the main table, as far as the plugin checks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    /// Destination.
    pub dst: IpNet,
    /// Gateway.
    pub gw: Option<Ipv4Addr>,
    /// Output interface.
    pub oif: Option<u32>,
    /// Whether the route is link-scoped (no gateway needed: `scope link`).
    pub link_scope: bool,
}

/// An rtnetlink connection in the namespace the calling thread is in when it is opened.
#[derive(Debug)]
pub struct Netlink {
    rt: tokio::runtime::Runtime,
    handle: Handle,
}

fn nl_err(what: &str) -> impl Fn(rtnetlink::Error) -> CniError + '_ {
    move |e| CniError::netlink(what.to_string(), e)
}

/// The errno of a netlink error answer (positive), if it is one.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

impl Netlink {
    /// Opens a connection in the calling thread's network namespace. The socket stays in that
    /// namespace whatever the thread does next.
    pub fn open() -> Result<Netlink, CniError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| CniError::io("starting the netlink runtime", e))?;
        let handle = {
            let _entered = rt.enter();
            let (conn, handle, _) = rtnetlink::new_connection()
                .map_err(|e| CniError::netlink("opening an rtnetlink socket", e))?;
            rt.spawn(conn);
            handle
        };
        Ok(Netlink { rt, handle })
    }

    /// The link called `name`, if there is one.
    pub fn link(&self, name: &str) -> Result<Option<Link>, CniError> {
        let h = self.handle.clone();
        let name = name.to_string();
        self.rt.block_on(async move {
            let mut s = h.link().get().match_name(name.clone()).execute();
            match s.try_next().await {
                Ok(m) => Ok(m.map(link_of)),
                Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
                Err(e) => Err(CniError::netlink(format!("reading link {name}"), e)),
            }
        })
    }

    /// The link with index `index`, if there is one.
    pub fn link_by_index(&self, index: u32) -> Result<Option<Link>, CniError> {
        let h = self.handle.clone();
        self.rt.block_on(async move {
            let mut s = h.link().get().match_index(index).execute();
            match s.try_next().await {
                Ok(m) => Ok(m.map(link_of)),
                Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
                Err(e) => Err(CniError::netlink(format!("reading link {index}"), e)),
            }
        })
    }

    /// Every link's name.
    pub fn link_names(&self) -> Result<Vec<String>, CniError> {
        let h = self.handle.clone();
        self.rt.block_on(async move {
            let links: Vec<LinkMessage> = h
                .link()
                .get()
                .execute()
                .try_collect()
                .await
                .map_err(nl_err("listing links"))?;
            Ok(links.into_iter().map(link_of).map(|l| l.name).collect())
        })
    }

    /// Creates veth `name` here with its peer `peer` in the namespace open as `peer_ns`, both
    /// with `queues` RX and TX queues (the agent gives each worker a queue of every port) and
    /// MTU `mtu`. The peer is made in its namespace directly, so no interface of that name
    /// ever appears here.
    pub fn add_veth(
        &self,
        name: &str,
        peer: &str,
        peer_ns: &File,
        queues: u32,
        mtu: u32,
    ) -> Result<(), CniError> {
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .mtu(mtu)
            .setns_by_fd(peer_ns.as_fd().as_raw_fd())
            .append_extra_attribute(LinkAttribute::NumTxQueues(queues))
            .append_extra_attribute(LinkAttribute::NumRxQueues(queues))
            .build();
        let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(name.to_string())
            .mtu(mtu)
            .append_extra_attribute(LinkAttribute::NumTxQueues(queues))
            .append_extra_attribute(LinkAttribute::NumRxQueues(queues))
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        let h = self.handle.clone();
        self.rt.block_on(async move {
            h.link().add(msg).execute().await.map_err(|e| {
                let hint = if errno(&e) == Some(libc::EEXIST) {
                    format!(" ({name} here or {peer} in the pod's namespace exists already)")
                } else {
                    String::new()
                };
                CniError::netlink(format!("creating veth {name} / {peer}{hint}"), e)
            })
        })
    }

    /// Deletes link `index`; a link already gone is not an error.
    pub fn delete_link(&self, index: u32) -> Result<(), CniError> {
        let h = self.handle.clone();
        self.rt.block_on(async move {
            match h.link().del(index).execute().await {
                Ok(()) => Ok(()),
                Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
                Err(e) => Err(CniError::netlink(format!("deleting link {index}"), e)),
            }
        })
    }

    /// Sets link `index` up, or to NOARP.
    fn set(&self, msg: LinkMessage, what: String) -> Result<(), CniError> {
        let h = self.handle.clone();
        self.rt
            .block_on(async move { h.link().set(msg).execute().await })
            .map_err(|e| CniError::netlink(what, e))
    }

    /// Brings link `index` up.
    pub fn set_up(&self, index: u32) -> Result<(), CniError> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.set(msg, format!("setting link {index} up"))
    }

    /// Turns ARP off on link `index` (the kernel then drops every ARP frame it receives).
    pub fn set_noarp(&self, index: u32) -> Result<(), CniError> {
        let msg = LinkUnspec::new_with_index(index).arp(false).build();
        self.set(msg, format!("turning ARP off on link {index}"))
    }

    /// The IPv4 address messages of link `index`.
    async fn address_msgs(h: &Handle, index: u32) -> Result<Vec<AddressMessage>, CniError> {
        let msgs: Vec<AddressMessage> = h
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(nl_err("listing addresses"))?;
        Ok(msgs
            .into_iter()
            .filter(|m| m.header.index == index && m.header.family == AddressFamily::Inet)
            .collect())
    }

    /// The IPv4 addresses on link `index`.
    pub fn addresses(&self, index: u32) -> Result<Vec<IpNet>, CniError> {
        let h = self.handle.clone();
        self.rt.block_on(async move {
            Ok(Self::address_msgs(&h, index)
                .await?
                .into_iter()
                .filter_map(|m| {
                    let prefix = m.header.prefix_len;
                    m.attributes.into_iter().find_map(|a| match a {
                        AddressAttribute::Address(IpAddr::V4(addr)) => Some(IpNet { addr, prefix }),
                        _ => None,
                    })
                })
                .collect())
        })
    }

    /// Adds `addr` on link `index`.
    pub fn add_address(&self, index: u32, addr: IpNet) -> Result<(), CniError> {
        let h = self.handle.clone();
        self.rt
            .block_on(async move {
                h.address()
                    .add(index, IpAddr::V4(addr.addr), addr.prefix)
                    .execute()
                    .await
            })
            .map_err(|e| CniError::netlink(format!("adding address {addr}"), e))
    }

    /// Deletes every IPv4 address of link `index`.
    pub fn flush_addresses(&self, index: u32) -> Result<(), CniError> {
        let h = self.handle.clone();
        self.rt.block_on(async move {
            for m in Self::address_msgs(&h, index).await? {
                h.address()
                    .del(m)
                    .execute()
                    .await
                    .map_err(nl_err("deleting an address"))?;
            }
            Ok(())
        })
    }

    /// Adds a route to `dst` out of link `oif`: through `gw`, or link-scoped without one.
    pub fn add_route(&self, dst: IpNet, gw: Option<Ipv4Addr>, oif: u32) -> Result<(), CniError> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.addr, dst.prefix)
            .output_interface(oif);
        b = match gw {
            Some(gw) => b.gateway(gw),
            None => b.scope(RouteScope::Link),
        };
        let msg = b.build();
        let h = self.handle.clone();
        self.rt
            .block_on(async move { h.route().add(msg).execute().await })
            .map_err(|e| CniError::netlink(format!("adding route to {dst}"), e))
    }

    /// The IPv4 route messages of the main table.
    async fn main_table_routes(h: &Handle) -> Result<Vec<RouteMessage>, CniError> {
        let filter = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let msgs: Vec<RouteMessage> = h
            .route()
            .get(filter)
            .execute()
            .try_collect()
            .await
            .map_err(nl_err("listing routes"))?;
        Ok(msgs
            .into_iter()
            .filter(|m| m.header.table == RT_TABLE_MAIN)
            .collect())
    }

    /// The IPv4 routes of the main table.
    pub fn routes(&self) -> Result<Vec<RouteEntry>, CniError> {
        let h = self.handle.clone();
        self.rt.block_on(async move {
            Ok(Self::main_table_routes(&h)
                .await?
                .into_iter()
                .map(|m| {
                    let mut r = RouteEntry {
                        dst: IpNet {
                            addr: Ipv4Addr::UNSPECIFIED,
                            prefix: m.header.destination_prefix_length,
                        },
                        gw: None,
                        oif: None,
                        link_scope: m.header.scope == RouteScope::Link,
                    };
                    for a in m.attributes {
                        match a {
                            RouteAttribute::Destination(RouteAddress::Inet(d)) => r.dst.addr = d,
                            RouteAttribute::Gateway(RouteAddress::Inet(g)) => r.gw = Some(g),
                            RouteAttribute::Oif(i) => r.oif = Some(i),
                            _ => {}
                        }
                    }
                    r
                })
                .collect())
        })
    }

    /// Deletes the routes out of link `oif` (a previous plugin's, replaced by Xylem's).
    pub fn flush_routes(&self, oif: u32) -> Result<(), CniError> {
        let h = self.handle.clone();
        self.rt.block_on(async move {
            for m in Self::main_table_routes(&h)
                .await?
                .into_iter()
                .filter(|m| m.attributes.contains(&RouteAttribute::Oif(oif)))
            {
                match h.route().del(m).execute().await {
                    Ok(()) => {}
                    Err(e) if errno(&e) == Some(libc::ESRCH) => {}
                    Err(e) => return Err(CniError::netlink("deleting a route", e)),
                }
            }
            Ok(())
        })
    }
}

fn link_of(m: LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        mac: None,
        mtu: None,
        up: m.header.flags.contains(LinkFlags::Up),
        peer_index: None,
        veth: false,
    };
    for a in m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n,
            LinkAttribute::Address(a) if a.len() == 6 => {
                l.mac = Some(
                    a.iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(":"),
                );
            }
            LinkAttribute::Mtu(m) => l.mtu = Some(m),
            LinkAttribute::Link(p) => l.peer_index = Some(p),
            LinkAttribute::LinkInfo(infos) => {
                l.veth = infos.iter().any(|i| {
                    matches!(
                        i,
                        rtnetlink::packet_route::link::LinkInfo::Kind(InfoKind::Veth)
                    )
                });
            }
            _ => {}
        }
    }
    l
}

/// Opens the network namespace at `path` (`CNI_NETNS`): `Ok(None)` if it no longer exists.
pub fn open_netns(path: &str) -> Result<Option<File>, CniError> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CniError::io(format!("opening network namespace {path}"), e)),
    }
}

/// Runs `f` on a thread that has joined the network namespace `ns`, and returns what it
/// returns. Only that thread changes namespace, and it ends with `f`.
pub fn in_netns<T: Send>(
    ns: &File,
    f: impl FnOnce() -> Result<T, CniError> + Send,
) -> Result<T, CniError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                CniError::io(
                    "joining the pod's network namespace",
                    format!("{e}: is CNI_NETNS a network namespace?"),
                )
            })?;
            f()
        })
        .join()
        .unwrap_or_else(|_| {
            Err(CniError::io(
                "a step in the pod's network namespace panicked",
                "this is a bug in xylem-cni",
            ))
        })
    })
}

/// Writes `value` to `/proc/sys/<key with dots as slashes>` in the calling thread's network
/// namespace (as `sysctl -w` would).
pub fn sysctl(key: &str, value: &str) -> Result<(), CniError> {
    let path = Path::new("/proc/sys").join(key.replace('.', "/"));
    std::fs::write(&path, value).map_err(|e| CniError::io(format!("setting {key}={value}"), e))
}

/// The interface name as the sysctl tree spells it inside a key (`.` turned into `/`).
pub fn sysctl_ifname(ifname: &str) -> String {
    ifname.replace('.', "/")
}

/// `ETHTOOL_STXCSUM` (linux/ethtool.h): set TX checksum offload.
const ETHTOOL_STXCSUM: u32 = 0x17;

/// `struct ethtool_value` (linux/ethtool.h).
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// Turns TX checksum offload off on `ifname` in the calling thread's namespace, as
/// `ethtool -K <if> tx off` does: AF_XDP forwards a frame's bytes, not an skb whose checksum
/// the kernel would complete later, so a pod's frames must leave with full checksums.
pub fn tx_checksum_off(ifname: &str) -> Result<(), CniError> {
    let what = || format!("turning TX checksum offload off on {ifname}");
    if ifname.len() >= libc::IFNAMSIZ {
        return Err(CniError::io(what(), "interface name too long"));
    }
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(CniError::io(what(), std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: 0,
    };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&raw mut value).cast();
    // SAFETY: SIOCETHTOOL reads `req` (a NUL-terminated name shorter than IFNAMSIZ, checked
    // above, and a pointer to `value`, an ethtool_value that outlives the call) and writes
    // nothing beyond them.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) };
    if rc < 0 {
        return Err(CniError::io(what(), std::io::Error::last_os_error()));
    }
    Ok(())
}
