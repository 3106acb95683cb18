//! Replicated commands and their typed results.
//!
//! Every input that `apply` needs is inside the command: timestamps, unique
//! ids and limits are chosen by the proposer *before* proposing, so applying
//! the same log on any node gives the same state (no clock, no randomness).
use serde::{Deserialize, Serialize};

use crate::credentials::Credentials;
use crate::types::NodeId;

/// A change to the replicated state. JIDs arrive already normalized by the
/// proposer (nodeprep/resourceprep via the `jid` crate in the server).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Create an account with SCRAM credentials (salted and hashed).
    CreateUser {
        jid: String,
        credentials: Credentials,
        created_ms: u64,
    },
    /// Delete an account with its roster, offline queue and session bindings.
    DeleteUser { jid: String },
    /// Replace an account's credentials.
    SetPassword {
        jid: String,
        credentials: Credentials,
    },
    /// Record that `full_jid` is connected to `node`.
    BindSession {
        full_jid: String,
        node: NodeId,
        priority: i8,
        bound_ms: u64,
    },
    /// Forget a binding, but only if it still points at `node`: a late unbind
    /// from a node the user already left must not remove the newer binding.
    UnbindSession { full_jid: String, node: NodeId },
    /// Forget every binding held by `node` (it died, or restarted).
    DropNodeSessions { node: NodeId },
    /// Add or replace one roster item of `owner`.
    SetRosterItem { owner: String, item: RosterItem },
    /// Remove one roster item of `owner`.
    RemoveRosterItem { owner: String, contact: String },
    /// Append a stanza to the offline queue of bare JID `to`. `message.id` is
    /// unique and chosen before proposing: a retried proposal of the same id
    /// is recognised and not queued twice.
    EnqueueOffline {
        to: String,
        message: OfflineMessage,
        /// Per-user cap, from the proposer's config.
        max_queue: u32,
    },
    /// Remove the entries of `to`'s queue with sequence number <= `up_to`
    /// (they were delivered).
    AckOffline { to: String, up_to: u64 },
    /// Several commands proposed at about the same time, committed as one
    /// log entry (one fsync) and applied in order, each with its own result
    /// in [`Response::Batch`]. A batch inside a batch is not applied.
    Batch { commands: Vec<Command> },
}

impl Command {
    /// A cheap estimate of the encoded size, for bounding batches.
    pub fn size_hint(&self) -> usize {
        match self {
            Command::EnqueueOffline { message, .. } => 128 + message.stanza.len(),
            Command::Batch { commands } => commands.iter().map(Command::size_hint).sum(),
            Command::CreateUser { .. } | Command::SetPassword { .. } => 256,
            _ => 128,
        }
    }
}

/// The result of applying one log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// Result of a membership or blank entry.
    Done,
    UserCreated,
    UserExists,
    NoSuchUser,
    UserDeleted {
        roster_items: u32,
        queued: u32,
        sessions: u32,
    },
    PasswordChanged,
    Bound {
        /// The node that held this full JID before, if any.
        replaced: Option<NodeId>,
    },
    Unbound {
        existed: bool,
    },
    NodeSessionsDropped {
        count: u32,
    },
    RosterUpdated {
        previous: Option<RosterItem>,
    },
    RosterRemoved {
        existed: bool,
    },
    Queued {
        seq: u64,
        /// The same message id was already queued (a retried proposal).
        duplicate: bool,
    },
    QueueFull {
        cap: u32,
    },
    Acked {
        removed: u32,
    },
    /// One result per command of a [`Command::Batch`], in order.
    Batch {
        responses: Vec<Response>,
    },
    /// A command that cannot be applied (a batch nested in a batch).
    Rejected {
        reason: String,
    },
}

/// RFC 6121 §2.1.2.5 subscription attribute values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Subscription {
    #[default]
    None,
    To,
    From,
    Both,
}

/// One roster item (RFC 6121 §2.1.2), with the pending states of Appendix A.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterItem {
    /// The contact's bare JID.
    pub jid: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub subscription: Subscription,
    /// Pending-out: the owner asked to see the contact's presence.
    #[serde(default)]
    pub ask: bool,
    /// Pending-in: the contact asked to see the owner's presence.
    #[serde(default)]
    pub pending_in: bool,
    /// Pre-approved (RFC 6121 §3.4).
    #[serde(default)]
    pub approved: bool,
}

/// A stanza waiting in an offline queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfflineMessage {
    /// Unique id chosen by the proposer (the XEP-0359 stanza id).
    pub id: String,
    /// When the server accepted it (ms since the Unix epoch), for XEP-0203.
    pub stamp_ms: u64,
    /// The serialized stanza.
    pub stanza: String,
}

/// A session binding: which node holds a full JID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionBinding {
    pub node: NodeId,
    pub priority: i8,
    pub bound_ms: u64,
}

/// An account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub credentials: Credentials,
    pub created_ms: u64,
}
