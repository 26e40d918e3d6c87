//! The service tables: what the pipeline's service stage reads to balance a new connection to a
//! virtual IP and to translate the packets of a balanced one.
//!
//! What it does: [`ServiceTables`] maps a frontend (virtual IP, port, protocol) to the
//! backends that take its new connections, each frontend with its own Maglev table
//! ([`crate::maglev`]) behind an `Arc`, so the control side can carry an unchanged service's
//! table into the next revision without building it again. It also maps the two ids a tracked
//! connection keeps back to addresses: a [`BackendId`] (the backend an original-direction
//! packet is sent to) and a [`FrontendId`] (the virtual address a reply is given back, reverse
//! NAT). Ids are the control side's: stable for as long as the backend or frontend exists, so
//! an established connection keeps its backend across any number of revisions, and never 0 (an
//! entry's `ext` of 0 means "no translation"). Lookups are hash-map reads: no allocation, no
//! lock.
//!
//! What it does not do: it parses no Kubernetes object, allocates no id, probes no backend and
//! decides no backend's state (the control side does all of that and gives each frontend only
//! the backends new connections may use), and it rewrites no packet (the pipeline's service and
//! NAT stages do).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::conntrack::Conntrack;
use crate::error::Error;
use crate::maglev::{MaglevBackend, MaglevTable};
use crate::wire::ip::proto;

/// A backend's id: what a tracked connection's service entry holds to find its backend again.
/// `1..=`[`MAX_ID`].
pub type BackendId = u32;

/// A frontend's id (Cilium's reverse-NAT index): what a tracked connection's entry holds to give
/// replies their virtual address back. `1..=`[`MAX_ID`].
pub type FrontendId = u32;

/// The largest id: ids live in a conntrack entry's `ext` field.
pub const MAX_ID: u32 = Conntrack::MAX_EXT;

/// How a new connection picks its backend among a frontend's.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// Maglev consistent hashing of the 5-tuple: every worker and every node picks the same
    /// backend for a flow, and few flows move when the backend set changes.
    #[default]
    Maglev,
    /// A uniformly random slot of the same weighted table: weights are honoured, the flow's
    /// tuple plays no part.
    Random,
}

impl Algorithm {
    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Maglev => "maglev",
            Self::Random => "random",
        }
    }
}

impl std::str::FromStr for Algorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "maglev" => Ok(Self::Maglev),
            "random" => Ok(Self::Random),
            other => Err(format!(
                "unknown load-balancing algorithm {other:?}: use \"maglev\" or \"random\""
            )),
        }
    }
}

/// A backend as a frontend's selection sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Its id (see [`BackendId`]).
    pub id: BackendId,
    /// Where its connections go.
    pub addr: SocketAddrV4,
}

/// A frontend and what its new connections may reach.
#[derive(Clone, Debug)]
pub struct Frontend {
    /// Its id (see [`FrontendId`]).
    pub id: FrontendId,
    /// The virtual address and port.
    pub addr: SocketAddrV4,
    /// [`proto::TCP`] or [`proto::UDP`].
    pub proto: u8,
    /// Session affinity (`ClientIP`): how long a client keeps its backend, in nanoseconds;
    /// 0 for none.
    pub affinity_timeout_ns: u64,
    /// The backends new connections may go to, in the order the Maglev table indexes them.
    /// Empty: the service has no usable backend, and a new connection is refused
    /// (`no-service-backend`).
    pub backends: Arc<[Backend]>,
    /// The Maglev table over `backends`, `None` when `backends` is empty.
    pub maglev: Option<Arc<MaglevTable>>,
}

impl Frontend {
    /// A frontend whose new connections go to `backends`, each with its weight, through a
    /// Maglev table of `table_size` slots built here (none for no backend). The control side,
    /// which keeps tables from one revision to the next, fills the fields itself instead.
    pub fn with_table(
        id: FrontendId,
        addr: SocketAddrV4,
        proto: u8,
        affinity_timeout_ns: u64,
        backends: &[(Backend, u32)],
        table_size: u32,
    ) -> Result<Self, Error> {
        let maglev = if backends.is_empty() {
            None
        } else {
            let list: Vec<MaglevBackend> = backends
                .iter()
                .map(|&(b, weight)| MaglevBackend {
                    key: b.addr,
                    weight,
                })
                .collect();
            Some(Arc::new(MaglevTable::new(&list, table_size)?))
        };
        Ok(Frontend {
            id,
            addr,
            proto,
            affinity_timeout_ns,
            backends: backends.iter().map(|&(b, _)| b).collect(),
            maglev,
        })
    }

    /// The backend for a new connection whose selection hash is `hash`; `None` if the frontend
    /// has no usable backend.
    #[inline]
    pub fn select(&self, hash: u32) -> Option<Backend> {
        let table = self.maglev.as_ref()?;
        self.backends.get(table.lookup(hash)).copied()
    }
}

/// The key of a frontend in [`ServiceTables`]: address, port and protocol in one word.
#[inline(always)]
fn frontend_key(ip: Ipv4Addr, port: u16, protocol: u8) -> u64 {
    (u64::from(ip.to_bits()) << 32) | (u64::from(port) << 8) | u64::from(protocol)
}

/// One revision's services. See the module documentation.
#[derive(Clone, Debug, Default)]
pub struct ServiceTables {
    algorithm: Algorithm,
    frontends: FxHashMap<u64, Frontend>,
    /// Every frontend's address by id, for reverse NAT.
    by_frontend_id: FxHashMap<FrontendId, SocketAddrV4>,
    /// Every backend of every service by id, whatever its state: a connection established to a
    /// backend that no longer takes new ones (terminating, in maintenance, failing its health
    /// check) keeps it.
    by_backend_id: FxHashMap<BackendId, SocketAddrV4>,
}

fn check_id(what: &str, id: u32) -> Result<(), Error> {
    if id == 0 || id > MAX_ID {
        return Err(Error::InvalidTable(format!(
            "{what} id {id} is out of range: ids run from 1 to {MAX_ID}"
        )));
    }
    Ok(())
}

impl ServiceTables {
    /// No services; new connections pick with `algorithm`.
    pub fn new(algorithm: Algorithm) -> Self {
        Self {
            algorithm,
            ..Self::default()
        }
    }

    /// How new connections pick their backend.
    #[inline]
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Whether there is no frontend at all (the service stage then costs one test).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.frontends.is_empty()
    }

    /// Adds a frontend. Refused: an id out of range or already used by another address, a
    /// protocol other than TCP and UDP, the same address, port and protocol twice, a backend
    /// list and Maglev table that do not go together, or a backend not added with
    /// [`Self::add_backend`] first.
    pub fn add_frontend(&mut self, f: Frontend) -> Result<(), Error> {
        check_id("frontend", f.id)?;
        if f.proto != proto::TCP && f.proto != proto::UDP {
            return Err(Error::InvalidTable(format!(
                "frontend {}: protocol {} is neither TCP nor UDP",
                f.addr, f.proto
            )));
        }
        match (&f.maglev, f.backends.len()) {
            (None, 0) => {}
            (Some(t), n) if t.backends() == n && n > 0 => {}
            _ => {
                return Err(Error::InvalidTable(format!(
                    "frontend {}: its Maglev table was not built over its {} backends",
                    f.addr,
                    f.backends.len()
                )));
            }
        }
        for b in f.backends.iter() {
            if self.by_backend_id.get(&b.id) != Some(&b.addr) {
                return Err(Error::InvalidTable(format!(
                    "frontend {}: backend {} (id {}) was not added first",
                    f.addr, b.addr, b.id
                )));
            }
        }
        if let Some(other) = self.by_frontend_id.get(&f.id)
            && *other != f.addr
        {
            return Err(Error::InvalidTable(format!(
                "frontend id {} is already {other}, asked for {}",
                f.id, f.addr
            )));
        }
        let key = frontend_key(*f.addr.ip(), f.addr.port(), f.proto);
        if self.frontends.contains_key(&key) {
            return Err(Error::InvalidTable(format!(
                "duplicate frontend {} ({})",
                f.addr,
                if f.proto == proto::TCP { "TCP" } else { "UDP" }
            )));
        }
        self.by_frontend_id.insert(f.id, f.addr);
        self.frontends.insert(key, f);
        Ok(())
    }

    /// Adds a backend (any state) under `id`. Adding the same id and address again is a no-op
    /// (a backend may serve several frontends); the same id for another address is refused.
    pub fn add_backend(&mut self, id: BackendId, addr: SocketAddrV4) -> Result<(), Error> {
        check_id("backend", id)?;
        match self.by_backend_id.insert(id, addr) {
            Some(old) if old != addr => {
                self.by_backend_id.insert(id, old);
                Err(Error::InvalidTable(format!(
                    "backend id {id} is already {old}, asked for {addr}"
                )))
            }
            _ => Ok(()),
        }
    }

    /// The frontend of a packet to `ip:port` over `protocol`, if that is one.
    #[inline]
    pub fn frontend(&self, ip: Ipv4Addr, port: u16, protocol: u8) -> Option<&Frontend> {
        self.frontends.get(&frontend_key(ip, port, protocol))
    }

    /// The address of backend `id`, if it still exists.
    #[inline]
    pub fn backend(&self, id: BackendId) -> Option<SocketAddrV4> {
        self.by_backend_id.get(&id).copied()
    }

    /// The virtual address of frontend `id`, if it still exists.
    #[inline]
    pub fn frontend_addr(&self, id: FrontendId) -> Option<SocketAddrV4> {
        self.by_frontend_id.get(&id).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn frontend(id: u32, addr: &str, backends: &[Backend]) -> Frontend {
        let weighted: Vec<_> = backends.iter().map(|&b| (b, 1)).collect();
        Frontend::with_table(id, sa(addr), proto::TCP, 0, &weighted, 251).unwrap()
    }

    #[test]
    fn frontends_backends_and_ids_are_found_and_checked() {
        let b1 = Backend {
            id: 1,
            addr: sa("10.200.0.11:8080"),
        };
        let b2 = Backend {
            id: 2,
            addr: sa("10.200.0.12:8080"),
        };
        let mut t = ServiceTables::new(Algorithm::Maglev);
        assert!(t.is_empty());
        let e = t
            .add_frontend(frontend(1, "10.96.0.10:80", &[b1]))
            .unwrap_err();
        assert!(e.to_string().contains("was not added first"), "{e}");
        t.add_backend(1, b1.addr).unwrap();
        t.add_backend(2, b2.addr).unwrap();
        t.add_backend(2, b2.addr).unwrap();
        let e = t.add_backend(2, b1.addr).unwrap_err();
        assert!(e.to_string().contains("already 10.200.0.12:8080"), "{e}");
        assert!(t.add_backend(0, b1.addr).is_err());
        t.add_frontend(frontend(1, "10.96.0.10:80", &[b1, b2]))
            .unwrap();
        let e = t
            .add_frontend(frontend(2, "10.96.0.10:80", &[]))
            .unwrap_err();
        assert!(e.to_string().contains("duplicate frontend"), "{e}");
        let e = t
            .add_frontend(frontend(1, "10.96.0.11:80", &[]))
            .unwrap_err();
        assert!(e.to_string().contains("already 10.96.0.10:80"), "{e}");
        t.add_frontend(frontend(3, "10.96.0.11:53", &[])).unwrap();

        let vip = Ipv4Addr::new(10, 96, 0, 10);
        let f = t.frontend(vip, 80, proto::TCP).unwrap();
        assert_eq!(f.id, 1);
        assert!(t.frontend(vip, 80, proto::UDP).is_none());
        assert!(t.frontend(vip, 81, proto::TCP).is_none());
        let picked: std::collections::HashSet<_> = (0..1000u32)
            .filter_map(|h| f.select(h.wrapping_mul(2_654_435_761)))
            .collect();
        assert_eq!(picked.len(), 2);
        let empty = t.frontend(Ipv4Addr::new(10, 96, 0, 11), 53, proto::TCP);
        assert_eq!(empty.unwrap().select(7), None);
        assert_eq!(t.backend(2), Some(b2.addr));
        assert_eq!(t.backend(9), None);
        assert_eq!(t.frontend_addr(1), Some(sa("10.96.0.10:80")));
        assert_eq!("random".parse::<Algorithm>(), Ok(Algorithm::Random));
        assert!("roundrobin".parse::<Algorithm>().is_err());
    }
}
