//! What a proposal is and what it can come to: [`Proposal`], its forwarded
//! form, the committed result [`Applied`] and [`ProposeError`], whose
//! variants follow the jepsen convention (definitely not applied, or
//! [`ProposeError::Unknown`]); and how openraft's write errors map onto it.
use openraft::error::{ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};

use crate::command::{Command, Response};
use crate::types::{NodeId, StarlingNode};

/// A change to propose to the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Proposal {
    /// A replicated state machine command.
    Command(Command),
    /// Add a node as a learner, wait until it has caught up, make it a voter.
    AddNode { id: NodeId, node: StarlingNode },
    /// Remove a node from the voters and learners.
    RemoveNode { id: NodeId },
    /// Nothing to commit: the leader confirms with a quorum that it still
    /// leads and answers its commit index (raft's read index, §6.4 of
    /// Ongaro's thesis); `propose` returns once this node applied that
    /// far. See
    /// [`ClusterHandle::confirm_contact`](crate::cluster::ClusterHandle::confirm_contact).
    ReadIndex,
}

/// A proposal sent to the leader by a node that is not the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardedProposal {
    pub from: NodeId,
    pub proposal: Proposal,
}

/// The committed result of a proposal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub log_index: u64,
    pub response: Response,
    /// The membership after a membership change (empty otherwise).
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

/// Why a proposal did not (or may not have) taken effect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ProposeError {
    /// Definitely not applied: no leader could be found before the deadline
    /// (no quorum, or an election that did not finish).
    #[error("no leader: the cluster has no quorum or is still electing one")]
    NoLeader,
    /// Definitely not applied: this node is not the leader (internal; the
    /// caller forwards or retries).
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    /// Definitely not applied: the membership change is not allowed.
    #[error("membership change rejected: {0}")]
    Membership(String),
    /// Definitely not applied: the node id is not a member.
    #[error("node {0} is not a member of the cluster")]
    UnknownNode(NodeId),
    /// Definitely not applied: raft on this node has stopped.
    #[error("raft stopped: {0}")]
    Fatal(String),
    /// Maybe applied, maybe not: the deadline passed or a connection was
    /// lost after the proposal was sent.
    #[error("outcome unknown: {0}")]
    Unknown(String),
}

pub(crate) fn write_error(
    e: RaftError<NodeId, ClientWriteError<NodeId, StarlingNode>>,
) -> ProposeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ProposeError::NotLeader {
            leader: f.leader_id,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ProposeError::Membership(e.to_string())
        }
        RaftError::Fatal(f) => ProposeError::Fatal(f.to_string()),
    }
}
