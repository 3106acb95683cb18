//! The openraft type configuration shared by every Starling node.
use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::command::{Command, Response};

/// A node's id: chosen by the operator, never reused for another node.
pub type NodeId = u64;

/// What the membership config records about each node: where to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StarlingNode {
    /// Intra-cluster address (raft RPCs, forwarded proposals, later the stanza mesh).
    pub raft_addr: String,
    /// Admin gRPC address.
    pub admin_addr: String,
    /// XMPP client-to-server address; empty when the node has none.
    #[serde(default)]
    pub client_addr: String,
}

impl fmt::Display for StarlingNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft={} admin={}", self.raft_addr, self.admin_addr)?;
        if !self.client_addr.is_empty() {
            write!(f, " client={}", self.client_addr)?;
        }
        Ok(())
    }
}

openraft::declare_raft_types!(
    /// Starling's raft types: commands in, typed results out, snapshots as bytes.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = StarlingNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, StarlingNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, StarlingNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, StarlingNode>;
