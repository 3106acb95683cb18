//! Starling: a clustered XMPP server.
//!
//! # Layout
//! - [`config`]: the node's TOML configuration, validated before any port is bound.
//! - [`node`]: runs one node: sled store -> openraft -> raft gRPC server ->
//!   admin gRPC server, and forms a new cluster from `initial_cluster`.
//! - [`admin`]: the admin gRPC service (with health and reflection) and the
//!   client that `ctl` and `dev` use.
//! - [`ctl`]: `starling ctl`, the operator CLI over the admin API.
//! - [`dev`]: `starling dev`, a local N-node cluster as child processes.
//! - [`raft_bench`]: `starling raft-bench`, replicated write latency,
//!   throughput and failover time, printed as figures.
//!
//! The replicated state itself (commands, state machine, sled storage, raft
//! network) lives in the `starling-raft` crate; the .proto files in
//! `starling-proto`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod c2s;
pub mod config;
pub mod ctl;
pub mod dev;
pub mod node;
pub mod raft_bench;
pub mod xmpp;
