//! Starling: a clustered XMPP server.
//!
//! # Layout
//! - [`config`]: the node's TOML configuration, validated before any port is bound.
//! - [`accept`]: the accept loop of the listeners that run their own
//!   connections (c2s, HTTP), with back-off on accept errors.
//! - [`node`]: runs one node: sled store -> openraft -> raft gRPC server ->
//!   admin gRPC server, and forms a new cluster from `initial_cluster`.
//! - [`admin`]: the admin gRPC service (with health and reflection) and the
//!   client that `ctl` and `dev` use.
//! - [`xmpp`]: the XMPP wire protocol without I/O: element tree, framer,
//!   namespaces, typed JIDs, ids, RFC 6120 error conditions.
//! - [`cluster_tls`]: mutual TLS between nodes: loading `[cluster_tls]`,
//!   and a cluster CA with node certificates for `dev` and tests.
//! - [`clock`]: Unix milliseconds and XEP-0082 date-times.
//! - [`c2s`]: client connections: listeners, TLS, SASL, binding, sessions.
//! - [`im`]: roster, presence, subscriptions, offline messages, disco,
//!   registration (RFC 6121 and the XEPs), one module each; XEP-0045
//!   multi-user chat (`im::muc`), a service the router hands its domain to.
//! - [`router`]: who is where (the shared session table) and where a
//!   stanza goes: a local session, the mesh, the offline queue, an error.
//! - [`mesh`]: the gRPC stanza mesh between nodes: the router's transport,
//!   handing what arrives to the router through the `mesh::Host` trait.
//! - [`http`]: the HTTP listener: RFC 7395 XMPP over WebSocket (handed to
//!   `c2s`), XEP-0156 host-meta, `/healthz`, `/readyz` and `/metrics`.
//! - [`metrics`]: the node's hot-path counters (atomics) and the Prometheus
//!   text format `/metrics` writes.
//! - [`readiness`]: whether the node should get traffic (`/readyz`,
//!   `ctl status`).
//! - [`ctl`]: `starling ctl`, the operator CLI over the admin API.
//! - [`dev`]: `starling dev`, a local N-node cluster as child processes.
//! - [`private_files`]: configs and data only their owner may read (0600
//!   files, 0700 directories, umask 0077).
//! - [`raft_bench`]: `starling raft-bench`, replicated write latency,
//!   throughput and failover time, printed as figures.
//!
//! The replicated state itself (commands, state machine, sled storage, raft
//! network) lives in the `starling-raft` crate; the .proto files in
//! `starling-proto`; the XMPP load generator in `starling-bench` (`bench/`).
#![forbid(unsafe_code)]

pub mod accept;
pub mod admin;
pub mod c2s;
pub mod clock;
pub mod cluster_tls;
pub mod config;
pub mod ctl;
pub mod dev;
pub mod http;
pub mod im;
pub mod mesh;
pub mod metrics;
pub mod node;
pub mod private_files;
pub mod raft_bench;
pub mod readiness;
pub mod router;
pub mod xmpp;
