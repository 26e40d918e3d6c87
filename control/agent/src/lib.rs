//! # xylem-agent
//!
//! The daemon that runs a node's dataplane: it reads the agent's configuration, attaches the
//! XDP redirector, binds the AF_XDP sockets, starts pinned workers and the slow path, serves a
//! local JSON API on a unix socket ([`server`]) and Prometheus [`metrics`], streams flow events
//! from the workers' monitor rings, and shuts all of that down cleanly on SIGTERM.
//!
//! It keeps the objects it is given in a [`state`] store, and every change (an endpoint, a
//! policy) goes through one transaction: next revision, tables built (`xylem-tables`), durable
//! writes, atomic swap, workers woken.
//!
//! What it does not do: decide anything per packet (that is `xylem-dataplane`), hold XDP code
//! (`xdp-redirector`), parse or compile policy (`xylem-policy`) or define the API's types
//! (`xylem-api`).

pub mod agent;
pub mod error;
pub mod metrics;
pub mod server;
pub mod state;

pub use error::Error;
