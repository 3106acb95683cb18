//! Starling's replicated state, built on openraft 0.9 with sled storage.
//!
//! # Layout
//! - [`types`]: the openraft type configuration and the node description every
//!   member of the membership carries.
//! - [`command`]: replicated commands and their typed results. Domain
//!   operations only (accounts, session bindings, rosters, offline queues),
//!   never XML.
//! - [`archive`]: the XEP-0313 message archive as data: entries, preferences,
//!   retention limits, and the pure paged query over one account's archive.
//! - [`muc`]: XEP-0045 rooms as data: configuration, occupants,
//!   affiliations and roles (what they allow is the server's).
//! - [`pep`]: XEP-0163 PEP nodes and items, XEP-0115 caps, vCards and private
//!   XML as data (payloads opaque XML strings).
//! - [`credentials`]: SCRAM credentials derived from a password before it is
//!   proposed; the password itself is never replicated.
//! - [`state`]: the state machine's data (every table in memory), its
//!   snapshot form and its reads.
//! - `apply` (private): the pure, deterministic `StateData::apply`; one file
//!   per command family (accounts, sessions, roster, offline queues).
//! - [`table`]: the generic table the state is made of, the incrementally
//!   maintained digest of the whole state, and the measured table whose
//!   per-account sums (queue bytes, roster items) the budgets check.
//! - [`keyspace`]: the one list of sled trees, state tables (prefix bytes)
//!   and keys, with their key -> value layouts.
//! - [`store`]: the sled log store and state machine store (openraft storage v2).
//! - [`network`]: raft RPCs over tonic, authenticated by a cluster secret; the
//!   server side of those RPCs and of forwarded proposals.
//! - [`tls`]: mutual TLS between nodes (the cluster CA, this node's
//!   certificate) as tonic client and server configurations.
//! - [`cluster`]: [`cluster::ClusterHandle`], what the rest of Starling uses:
//!   propose a command (forwarded to the leader when needed), read the state,
//!   report on the node. The proposal types and outcomes are in `proposal`,
//!   the group-commit batcher in `batcher` (both private, re-exported or
//!   used by `cluster`).
//! - [`latency`]: the lock-free histogram of proposal latency (`/metrics`).
#![forbid(unsafe_code)]

mod apply;
pub mod archive;
mod batcher;
pub mod cluster;
pub mod codec;
pub mod command;
pub mod credentials;
pub mod keyspace;
pub mod latency;
pub mod muc;
pub mod network;
pub mod pep;
mod proposal;
pub mod state;
pub mod store;
pub mod subscription;
pub mod table;
pub mod tls;
pub mod types;

pub use cluster::{ClusterHandle, ProposeError};
pub use command::{Command, Response};
pub use types::{NodeId, StarlingNode, TypeConfig};
