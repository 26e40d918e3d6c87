//! # xylem-dataplane
//!
//! The packet-processing half of Xylem: everything that touches a frame between the AF_XDP RX
//! ring of one pod-facing port and the TX ring of another.
//!
//! What it does:
//! - [`pipeline`]: the per-packet decision, a fixed order of stages (parse, conntrack lookup,
//!   policy, routing, emit, …), a function of `(now, frame, tables, flow state)` with no I/O, no
//!   clock, no allocation and no lock, returning an [`pipeline::Outcome`]. It is unit-tested and
//!   fuzzed on byte arrays.
//! - [`wire`]: zero-copy, bounds-checked views of the headers (Ethernet, ARP, IPv4, ICMP, TCP,
//!   UDP) and the builders of the packets the dataplane sends itself.
//! - [`conntrack`]: the flow table the conntrack stages read and write.
//! - [`fragments`]: what the first fragment of each IPv4 datagram said (ports, fate), for its
//!   later fragments, in one lock-free table every worker reads and writes.
//! - [`maglev`]: the Maglev consistent-hashing table a service's new connections pick a backend
//!   from (built once per backend change, looked up in O(1)).
//! - [`services`]: the frontends, backends and Maglev tables of the services the service stage
//!   balances, published inside the [`tables::Tables`].
//! - [`tables`]: the read-only tables a worker consults (routes, gateway), published to workers by
//!   an atomic pointer swap.
//! - [`io`]: the I/O backends behind one trait: real AF_XDP sockets (via `xsk-rs`, sharing one UMEM
//!   per worker) and an in-memory backend that runs the very same worker in tests, and a pcap backend for
//!   `xylem replay`.
//! - [`worker`]: the pinned worker loop in its two placements (`dedicated` busy-poll, `shared`
//!   block-when-idle through `mio`).
//! - [`learned`]: facts the workers learn from the traffic themselves (first user: the addresses
//!   in DNS answers, for DNS-aware policy), in one lock-free table every worker reads and writes.
//! - [`slowpath`]: the gateway's own presence on the pod network (a `smoltcp` interface answering
//!   ARP and ICMP echo), fed by the workers through bounded queues.
//! - [`esp`]: ESP tunnel mode with AES-GCM (RFC 4303, RFC 4106): seal and open of one packet
//!   in place, and the lock-free anti-replay window, sans-IO.
//! - [`ratelimit`]: per-port rate limits on what the workers hand the slow path and on the ICMP
//!   errors they build.
//!
//! What it does not do: it loads no XDP program (see the `xdp-redirector` crate), creates no
//! interfaces or namespaces, keeps no persistent state and serves no API (see `xylem-agent`).

pub mod checksum;
pub mod conntrack;
pub mod dns;
pub mod error;
pub mod esp;
pub mod fragments;
pub mod frame;
pub mod io;
pub mod learned;
pub mod ledger;
pub mod maglev;
pub mod mailbox;
pub mod monitor;
pub mod neighbor;
pub mod pipeline;
pub mod policy;
pub mod ratelimit;
pub mod services;
mod slotword;
pub mod slowpath;
pub mod stats;
pub mod tables;
pub mod wire;
pub mod worker;

pub use error::Error;
