//! `xylem-cni`: the CNI plugin that puts a pod behind its node's Xylem agent.
//!
//! It speaks CNI 0.4.0, 1.0.0 and 1.1.0 (ADD, DEL, CHECK, STATUS, VERSION, GC). On ADD it
//! creates the pod's veth (the pod's end in the container's namespace, the node's end,
//! `xyc…`, beside the agent), gets the address from the IPAM plugin the configuration names,
//! addresses the pod as Xylem's pods are addressed (the IP as a /32, a link-scope route to the
//! gateway, the default route through it), closes the node's end to the node's own stack, and
//! registers the endpoint with the agent over its API socket, which attaches the XDP
//! redirector and opens a socket on every worker. Chained after another plugin (`ptp`,
//! `bridge`) it adopts the interface that plugin made instead.
//!
//! What it does not do: it forwards no packet and links none of the dataplane (no XDP, no
//! AF_XDP, no HTTP server: the agent does all of that); it assigns no address itself (IPAM is
//! delegated); it speaks IPv4 only, as the dataplane does.
//!
//! The library holds everything but `main`, so the protocol is tested on byte arrays and
//! fuzzed: [`conf`] and [`result`] parse untrusted input, [`env`] the protocol's variables.

pub mod commands;
pub mod conf;
pub mod env;
pub mod error;
pub mod ipam;
pub mod netlink;
pub mod result;

pub use error::{CniError, ErrorCode};
