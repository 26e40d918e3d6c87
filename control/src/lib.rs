//! # xylem-control
//!
//! The control side of Xylem: the `xylem-agent` daemon that runs a node's dataplane, and the
//! `xylem` command-line tool, including the lab that builds a node and its pods in network
//! namespaces on one machine.
//!
//! What it does: reads the agent's configuration, attaches the XDP redirector, binds the AF_XDP
//! sockets, starts pinned workers and the slow path, serves a local JSON API on a unix socket,
//! and shuts all of that down cleanly on SIGTERM. The CLI talks to that API; `xylem lab` creates
//! and removes namespaces, veths and agents.
//!
//! What it does not do: it decides nothing per packet (that is `xylem-dataplane`, which also
//! enforces the policy this crate compiles into tables) and holds no XDP code (that is
//! `xdp-redirector`).
//!
//! It keeps the objects it is given in a [`state`] store, compiles CiliumNetworkPolicy YAML into
//! the workers' [`policy`] tables, serves Prometheus [`metrics`] and streams flow events from the
//! workers' monitor rings. [`replay`] runs a capture file through
//! a real worker against the tables an agent would build, without a node (`xylem replay`).

pub mod agent;
pub mod api;
pub mod error;
pub mod lab;
pub mod metrics;
pub mod output;
pub mod replay;
pub mod state;

pub use error::Error;
/// The agent's configuration file, which the lab writes too.
pub use xylem_api::config;
/// The policy compiler, which the agent, the replay and the CLI share.
pub use xylem_policy as policy;
