//! Replicated commands and their typed results.
//!
//! Every input that `apply` needs is inside the command: timestamps, unique
//! ids and limits are chosen by the proposer *before* proposing, so applying
//! the same log on any node gives the same state (no clock, no randomness).
use serde::{Deserialize, Serialize};

pub use crate::archive::{
    ArchiveDefault, ArchiveEntry, ArchiveLimits, ArchivePrefs, ArchiveRetraction, ArchivedMessage,
};
use crate::credentials::Credentials;
pub use crate::muc::{
    Affiliation, AffiliationChange, AffiliationRecord, MucRefusal, Occupant, Role, Room,
    RoomConfig, RoomInit, Subject,
};
pub use crate::pep::{PepAccess, PepItem, PepLimits, PepNode, PepNodeConfig};
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
    /// Replace an account's credentials (its FAST tokens are revoked).
    SetPassword {
        jid: String,
        credentials: Credentials,
    },
    /// Record that `full_jid` is connected to `binding.node` (or update the
    /// presence facts of that session: the same `binding.session` again).
    BindSession {
        full_jid: String,
        binding: SessionBinding,
    },
    /// Forget a binding, but only if it is still session `session` on
    /// `node`: a late unbind from a session that was already replaced must
    /// not remove the newer binding.
    UnbindSession {
        full_jid: String,
        node: NodeId,
        session: u64,
    },
    /// Forget every binding held by `node` (it died, or restarted).
    /// `term`: the raft term in which the proposer decided, as leader, that
    /// the node is dead; applied only in an entry of that same term, so a
    /// deposed leader's stale decision (forwarded to, or re-proposed by, a
    /// later leader) changes nothing. `None`: unconditional (a node
    /// dropping its own stale bindings at start-up).
    DropNodeSessions {
        node: NodeId,
        #[serde(default)]
        term: Option<u64>,
    },
    /// Update the presence facts of `full_jid`'s binding, only if it is
    /// still session `binding.session` on `binding.node`: a session that
    /// was replaced must not overwrite its successor's binding.
    UpdateSession {
        full_jid: String,
        binding: SessionBinding,
    },
    /// Add or replace one roster item of `owner`. A new item is refused
    /// ([`Response::OverBudget`]) when `owner` already has `max_items`.
    SetRosterItem {
        owner: String,
        item: RosterItem,
        /// Per-user cap on roster items (stubs included), from the
        /// proposer's config. Absent in entries of older builds: no cap.
        #[serde(default = "no_cap_u32")]
        max_items: u32,
    },
    /// Remove one roster item of `owner`.
    RemoveRosterItem { owner: String, contact: String },
    /// A presence subscription stanza (RFC 6121 §3) sent by `user` to
    /// `contact` (both bare JIDs of this cluster's accounts): both roster
    /// items change in one step, by the state tables of RFC 6121 Appendix A.
    Subscription {
        user: String,
        contact: String,
        action: SubAction,
        /// Per-user cap on roster items: a change that would add an item
        /// (or a stub) to a roster that has `max_items` already is refused
        /// whole ([`Response::OverBudget`]). Absent in older entries: no cap.
        #[serde(default = "no_cap_u32")]
        max_items: u32,
    },
    /// Append a stanza to the offline queue of bare JID `to`. `message.id` is
    /// unique and chosen before proposing: a retried proposal of the same id
    /// is recognised and not queued twice.
    EnqueueOffline {
        to: String,
        message: OfflineMessage,
        /// Per-user cap, from the proposer's config.
        max_queue: u32,
        /// Byte caps, from the proposer's config. Absent in entries of
        /// older builds: no cap.
        #[serde(default)]
        max_bytes: ByteCaps,
    },
    /// Several [`Command::EnqueueOffline`]s of one sender, applied in order
    /// (so its messages keep their order in every queue), one result each
    /// in [`Response::Batch`]. Retrying it is as harmless as retrying each.
    EnqueueMany { items: Vec<Enqueue> },
    /// Remove the entries of `to`'s queue with sequence number <= `up_to`
    /// (they were delivered).
    AckOffline { to: String, up_to: u64 },
    /// Remove the entries of `to`'s queue whose message id is in `ids`
    /// (their recipient's client has them). Ids not queued are ignored, so
    /// a retried removal is harmless.
    RemoveOffline { to: String, ids: Vec<String> },
    /// Changes nothing. Committed and applied before a read, it makes the
    /// read linearizable: every write that finished before the read began
    /// is in the log before it (a "read barrier", raft §6.4's read index
    /// done the simple way).
    Barrier,
    /// Store a registration invitation (XEP-0401/0445) under the SHA-256 of
    /// its token ([`invite_hash`]); invitations expired before
    /// `invite.created_ms` are dropped at the same time.
    CreateInvite { hash: String, invite: Invite },
    /// Revoke an invitation.
    DeleteInvite { hash: String },
    /// Create an account with one use of invitation `invite` (its hash), in
    /// one step: no account without a use, no use without an account. The
    /// expiry was checked when the client presented the token (XEP-0445
    /// §5: not again afterwards); here only the uses left count.
    RegisterWithInvite {
        jid: String,
        credentials: Credentials,
        created_ms: u64,
        invite: String,
    },
    /// Add `jids` to `owner`'s block list (XEP-0191 §3.3). JIDs already
    /// there are left alone, so a retry changes nothing. Refused whole
    /// ([`Response::OverBudget`]) when the new ones would take the list
    /// over `max_items`.
    Block {
        owner: String,
        jids: Vec<String>,
        /// Per-user cap on block list items, from the proposer's config.
        max_items: u32,
    },
    /// Remove `jids` from `owner`'s block list; no JIDs: every item
    /// (XEP-0191 §3.5, "unblock all"). JIDs not there are ignored.
    Unblock { owner: String, jids: Vec<String> },
    /// XEP-0484 FAST: put `token` in the `new` slot of client `client` (its
    /// SASL2 user-agent id) of account `user`, replacing a token issued
    /// there and never used (§"Server initiates token rotation": "the
    /// server SHOULD invalidate any tokens previously generated that have
    /// not been used"). The token itself is never stored (see
    /// [`FastToken`]).
    IssueFastToken {
        user: String,
        client: String,
        token: FastToken,
    },
    /// XEP-0484 FAST: the client logged in with the token whose verifier is
    /// `verifier`. A token in the `new` slot moves to `current` (the older
    /// one is invalidated, §"Server initiates token rotation": "Upon
    /// successful use of any token, the server MUST invalidate all tokens
    /// issued to the same client with an earlier expiry"); then `next`, if
    /// any, goes into the `new` slot (rotation). Applied twice, the second
    /// time finds the token in `current` and changes nothing more.
    UseFastToken {
        user: String,
        client: String,
        verifier: String,
        next: Option<FastToken>,
    },
    /// XEP-0484 FAST: invalidate tokens of `user`: the one with `verifier`
    /// (client-requested invalidation), else every token of `client`,
    /// else every token of the account.
    RevokeFastTokens {
        user: String,
        client: Option<String>,
        verifier: Option<String>,
    },
    /// XEP-0357 §5: `owner` enables pushes to the app server of
    /// `registration` (its service JID and node). A registration with the
    /// same JID and node is replaced (the same device enabling again, from
    /// a new session), so a retry changes nothing more. Refused
    /// ([`Response::OverBudget`]) when it is new and `owner` already has
    /// `max_registrations`.
    EnablePush {
        owner: String,
        registration: PushRegistration,
        /// Per-user cap on registrations, from the proposer's config.
        max_registrations: u32,
    },
    /// XEP-0357 §6: remove `owner`'s registrations for service `jid`, only
    /// the one of `node` if given. Removing none is not an error.
    DisablePush {
        owner: String,
        jid: String,
        node: Option<String>,
    },
    /// XEP-0313: store a batch of messages in their owners' archives, in
    /// order. An entry whose id its owner's archive holds already is not
    /// stored again (a retried batch), nor one for an account that does
    /// not exist or older than the retention `limits`; each owner touched
    /// is trimmed to `limits` (see `apply::archive`). Then the XEP-0424
    /// `retractions`, each in the retracting sender's and its peer's
    /// archive (applying one twice changes nothing).
    ArchiveAppend {
        entries: Vec<ArchiveEntry>,
        #[serde(default)]
        retractions: Vec<ArchiveRetraction>,
        limits: ArchiveLimits,
    },
    /// XEP-0313: apply the retention `limits` to every archive.
    ArchiveTrim { limits: ArchiveLimits },
    /// XEP-0313 §6: replace `owner`'s archiving preferences.
    SetArchivePrefs { owner: String, prefs: ArchivePrefs },
    /// XEP-0045 §7.2: `occupant` enters `room` as `nick`, creating the room
    /// (its creator as owner) when it does not exist and `create` says
    /// how. Refused ([`Response::MucRefused`]) for a taken nick, an
    /// outcast, a non-member of a members-only room, a full room (cap:
    /// the room's, at most `max_occupants`), a locked room not the
    /// owner's, or a creator at `create.max_rooms`.
    MucJoin {
        room: String,
        nick: String,
        occupant: Occupant,
        create: Option<RoomInit>,
        max_occupants: u32,
        /// The password the joiner gave, checked here against the room's
        /// (so a password set on another node a moment ago holds).
        #[serde(default)]
        password: Option<String>,
    },
    /// XEP-0045 §7.14: the session `full` leaves `room` (a temporary room
    /// left empty is destroyed).
    MucLeave { room: String, full: String },
    /// XEP-0045 §7.6: the session `full` takes `nick` in `room`.
    MucNick {
        room: String,
        full: String,
        nick: String,
    },
    /// XEP-0045 §8.2, §8.4, §9.6: the occupant `nick` gets `role`; `None`
    /// removes it from the room (kicked).
    MucSetRole {
        room: String,
        nick: String,
        role: Option<Role>,
    },
    /// XEP-0045 §9, §10: affiliation changes (`none` removes a row); the
    /// present occupants follow (outcasts out, roles reset).
    MucSetAffiliations {
        room: String,
        changes: Vec<AffiliationChange>,
    },
    /// XEP-0045 §10.2: a new configuration; `unlock` opens a reserved room.
    MucConfigure {
        room: String,
        config: RoomConfig,
        unlock: bool,
    },
    /// XEP-0045 §8.1: the room's subject (empty text clears it).
    MucSubject { room: String, subject: Subject },
    /// XEP-0045 §10.9: the room and its affiliations go.
    MucDestroy { room: String },
    /// Occupants whose sessions were on `node` (dead, or restarted) leave
    /// every room.
    MucDropNode { node: NodeId },
    /// XEP-0163 / XEP-0060 §7.1: publish item `item_id` to `owner`'s node
    /// `node`. An absent node is created with `create` (§7.1.4
    /// auto-create; the publish-options' config when given). `require`:
    /// the publish-options precondition (§7.1.5), the node's config must
    /// equal it, else [`Response::PepPreconditionNotMet`] and nothing
    /// changes. An item with the same id is replaced (moved to newest);
    /// the oldest items beyond `max_items` go. A retry publishes the same
    /// item again: the same state but for the publication order.
    PepPublish {
        owner: String,
        node: String,
        item_id: String,
        item: PepItem,
        create: PepNodeConfig,
        #[serde(default)]
        require: Option<PepNodeConfig>,
        limits: PepLimits,
    },
    /// XEP-0060 §8.1: create `owner`'s node `node` with `config`, empty;
    /// [`Response::PepNodeExists`] if it exists.
    PepCreate {
        owner: String,
        node: String,
        config: PepNodeConfig,
        created_ms: u64,
        limits: PepLimits,
    },
    /// XEP-0060 §7.2: remove item `item_id` from `owner`'s node `node`.
    PepRetract {
        owner: String,
        node: String,
        item_id: String,
    },
    /// XEP-0060 §8.4: delete `owner`'s node `node` and its items.
    PepDeleteNode { owner: String, node: String },
    /// XEP-0060 §8.2: replace the configuration of `owner`'s existing node
    /// `node` (items beyond a lower `max_items` go, oldest first).
    PepConfigure {
        owner: String,
        node: String,
        config: PepNodeConfig,
        limits: PepLimits,
    },
    /// XEP-0115: remember that clients with caps `ver` ("hash ver") want
    /// notifications of `notify` (verified by the proposer, §5.4). Not
    /// stored when the table holds `max_entries` already.
    SetCaps {
        ver: String,
        notify: Vec<String>,
        max_entries: u32,
    },
    /// XEP-0054: replace `owner`'s vCard (`None`: remove it).
    SetVcard {
        owner: String,
        vcard: Option<String>,
    },
    /// XEP-0049: store `xml` as `owner`'s private element (ns \0 name)
    /// `key`, replacing what was there; refused
    /// ([`Response::OverBudget`]) when `owner`'s private XML would exceed
    /// `max_bytes`.
    SetPrivate {
        owner: String,
        key: String,
        xml: String,
        max_bytes: u64,
    },
    /// Several commands proposed at about the same time, committed as one
    /// log entry (one fsync) and applied in order, each with its own result
    /// in [`Response::Batch`]. A batch inside a batch is not applied.
    Batch { commands: Vec<Command> },
}

impl Command {
    /// Whether applying the command twice has the effect of applying it
    /// once (with the same result the second time, or one a caller may
    /// treat alike): such a command may be proposed again when the outcome
    /// of an attempt is unknown.
    pub fn is_idempotent(&self) -> bool {
        !matches!(
            self,
            Command::CreateUser { .. }
                | Command::RegisterWithInvite { .. }
                | Command::DeleteUser { .. }
                | Command::Subscription { .. }
                | Command::Batch { .. }
        )
    }

    /// A cheap estimate of the encoded size, for bounding batches.
    pub fn size_hint(&self) -> usize {
        match self {
            Command::EnqueueOffline { message, .. } => 128 + message.stanza.len(),
            Command::EnqueueMany { items } => {
                items.iter().map(|i| 128 + i.message.stanza.len()).sum()
            }
            Command::Batch { commands } => commands.iter().map(Command::size_hint).sum(),
            Command::RemoveOffline { ids, .. }
            | Command::Block { jids: ids, .. }
            | Command::Unblock { jids: ids, .. } => {
                64 + ids.iter().map(|i| i.len() + 8).sum::<usize>()
            }
            Command::EnablePush { registration, .. } => {
                256 + registration
                    .options
                    .iter()
                    .map(|f| f.var.len() + f.values.iter().map(String::len).sum::<usize>() + 16)
                    .sum::<usize>()
            }
            Command::ArchiveAppend {
                entries,
                retractions,
                ..
            } => {
                entries
                    .iter()
                    .map(|e| 96 + e.owner.len() + e.message.with.len() + e.message.stanza.len())
                    .sum::<usize>()
                    + retractions
                        .iter()
                        .map(|r| 64 + r.tombstone.len())
                        .sum::<usize>()
            }
            Command::PepPublish { item, .. } => 256 + item.payload.len(),
            Command::SetVcard { vcard, .. } => 128 + vcard.as_ref().map_or(0, String::len),
            Command::SetPrivate { xml, .. } => 128 + xml.len(),
            Command::SetCaps { notify, .. } => {
                128 + notify.iter().map(|n| n.len() + 8).sum::<usize>()
            }
            Command::CreateUser { .. }
            | Command::SetPassword { .. }
            | Command::RegisterWithInvite { .. } => 256,
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
        /// The binding this one replaced, if any (the same session when
        /// only presence facts were updated).
        replaced: Option<SessionBinding>,
    },
    Unbound {
        existed: bool,
    },
    /// Result of [`Command::UpdateSession`]: false when the binding is not
    /// (any more) that session's.
    SessionUpdated {
        updated: bool,
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
    /// Refused, nothing changed: it would take `budget` over `cap`.
    OverBudget {
        budget: Budget,
        cap: u64,
    },
    Acked {
        removed: u32,
    },
    /// One result per command of a [`Command::Batch`], in order.
    Batch {
        responses: Vec<Response>,
    },
    /// Result of [`Command::Subscription`]: the roster items after the
    /// change (`None`: unchanged), and whether the presence stanza is to be
    /// delivered to the contact (RFC 6121 Appendix A "deliver" column).
    Subscription {
        user_item: Option<RosterItem>,
        user_changed: bool,
        contact_item: Option<RosterItem>,
        contact_changed: bool,
        deliver: bool,
        /// For `subscribe`: the contact already approved (subscription from
        /// or both, or pre-approved), so the server answers `subscribed`
        /// on the contact's behalf (RFC 6121 §3.1.3).
        auto_approved: bool,
    },
    /// Result of [`Command::Block`] and [`Command::Unblock`]: how many
    /// items were added or removed (0 for a retry).
    BlockListChanged {
        changed: u32,
    },
    InviteCreated,
    InviteDeleted {
        existed: bool,
    },
    /// Result of [`Command::RegisterWithInvite`]: the invitation is unknown
    /// or used up (the account was not created).
    InviteInvalid,
    FastTokenIssued,
    /// Result of [`Command::UseFastToken`]: `found` false when the token is
    /// not (any more) valid for that client; nothing changed then.
    FastTokenUsed {
        found: bool,
    },
    FastTokensRevoked {
        count: u32,
    },
    /// Result of [`Command::EnablePush`]: `replaced` when a registration
    /// for the same JID and node was there.
    PushEnabled {
        replaced: bool,
    },
    /// Result of [`Command::DisablePush`]: how many registrations went.
    PushDisabled {
        removed: u32,
    },
    /// Result of [`Command::ArchiveAppend`]: entries stored, and entries
    /// whose id was archived already (a retry).
    Archived {
        stored: u32,
        duplicates: u32,
    },
    /// Result of [`Command::ArchiveTrim`].
    ArchiveTrimmed {
        removed: u32,
    },
    ArchivePrefsSet,
    /// Result of [`Command::MucJoin`]: in the room with `role`.
    MucJoined {
        created: bool,
        role: Role,
    },
    /// A room command refused, and why.
    MucRefused {
        reason: MucRefusal,
    },
    /// Any other room command applied (or nothing to do).
    MucDone,
    /// Result of [`Command::PepPublish`]: whether the node was created, and
    /// the ids of the items that went to make room (oldest first).
    PepPublished {
        created: bool,
        evicted: Vec<String>,
    },
    /// The publish-options precondition failed (XEP-0060 §7.1.5).
    PepPreconditionNotMet,
    /// The node does not exist.
    PepNoSuchNode,
    /// Result of [`Command::PepCreate`]: the node exists already.
    PepNodeExists,
    /// Result of [`Command::PepRetract`].
    PepRetracted {
        existed: bool,
    },
    /// Result of [`Command::PepDeleteNode`]: the ids of its items.
    PepNodeDeleted {
        items: Vec<String>,
    },
    /// Result of [`Command::PepConfigure`].
    PepConfigured {
        evicted: Vec<String>,
    },
    /// Result of [`Command::SetCaps`].
    CapsSet {
        stored: bool,
    },
    VcardSet,
    PrivateSet,
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

/// The four presence subscription stanza types (RFC 6121 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubAction {
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
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
    /// Not in the owner's roster: only a stored inbound subscription
    /// request (RFC 6121 §3.1.3: the server "MUST NOT" add the contact to
    /// the roster until approved) or a pre-approval. Hidden from roster gets.
    #[serde(default)]
    pub stub: bool,
}

impl RosterItem {
    /// Whether the owner receives the contact's presence.
    pub fn has_to(&self) -> bool {
        matches!(self.subscription, Subscription::To | Subscription::Both)
    }
    /// Whether the contact receives the owner's presence.
    pub fn has_from(&self) -> bool {
        matches!(self.subscription, Subscription::From | Subscription::Both)
    }
}

/// One message of a [`Command::EnqueueMany`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enqueue {
    pub to: String,
    pub message: OfflineMessage,
    pub max_queue: u32,
    #[serde(default)]
    pub max_bytes: ByteCaps,
}

/// The byte caps of the offline queues an enqueue is applied under: the
/// bytes of the serialized stanzas queued for one account, and for every
/// account together (what each node holds, as every node holds the whole
/// replicated state). The default is no cap (what entries written before
/// the caps existed were applied with).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteCaps {
    pub per_user: u64,
    pub total: u64,
}

impl Default for ByteCaps {
    fn default() -> Self {
        ByteCaps {
            per_user: u64::MAX,
            total: u64::MAX,
        }
    }
}

/// What a [`Response::OverBudget`] ran out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    /// The bytes queued for the recipient ([`ByteCaps::per_user`]).
    QueueBytes,
    /// The bytes queued for everyone ([`ByteCaps::total`]).
    TotalQueueBytes,
    /// The items of a roster (`max_items`).
    RosterItems,
    /// The items of a block list (`max_items` of [`Command::Block`]).
    BlockItems,
    /// The push registrations of an account (`max_registrations` of
    /// [`Command::EnablePush`]).
    PushRegistrations,
    /// The nodes of one account's PEP service.
    PepNodes,
    /// The payload bytes of one account's PEP items.
    PepBytes,
    /// The bytes of one account's private XML.
    PrivateBytes,
    /// The JIDs of one list of archiving preferences
    /// ([`crate::archive::MAX_PREFS_JIDS`]).
    ArchivePrefsJids,
}

fn no_cap_u32() -> u32 {
    u32::MAX
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

/// A session binding: which node holds a full JID, and the presence facts
/// other nodes need to route to it (RFC 6121 §8.5.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionBinding {
    pub node: NodeId,
    /// Unique per session (chosen by the binding node).
    #[serde(default)]
    pub session: u64,
    /// Presence priority (RFC 6121 §4.7.2.3); meaningful when available.
    pub priority: i8,
    /// Sent available presence (and not unavailable since).
    #[serde(default)]
    pub available: bool,
    /// Message carbons enabled (XEP-0280).
    #[serde(default)]
    pub carbons: bool,
    /// The session's last available presence, serialized, so probes are
    /// answered from this table (RFC 6121 §4.3.2) on any node.
    #[serde(default)]
    pub presence: Option<String>,
    pub bound_ms: u64,
}

/// One XEP-0357 push registration: where an account's pushes go, and
/// what they may carry. Opaque strings to the state machine; their XMPP
/// meaning is the server's (`im::push`, `router::push`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRegistration {
    /// The app server's JID (the pubsub service).
    pub jid: String,
    /// The pubsub node on it.
    pub node: String,
    /// The full JID of the session that enabled it: while a session holds
    /// that resource, its node decides the pushes (see `router::push`).
    pub resource: String,
    /// The client's XEP-0004 publish-options, sent with every push.
    pub options: Vec<FormField>,
    /// The client asked for the message body in the summary.
    pub include_body: bool,
    /// When it was enabled (ms since the Unix epoch).
    pub enabled_ms: u64,
}

/// One field of an XEP-0004 form, as submitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormField {
    pub var: String,
    /// The field's `type`, if it had one (`hidden` for `FORM_TYPE`).
    pub kind: Option<String>,
    pub values: Vec<String>,
}

impl PushRegistration {
    /// The second part of its key in [`crate::keyspace::PUSH`].
    pub fn key(jid: &str, node: &str) -> String {
        format!("{jid}\0{node}")
    }
}

/// An account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub credentials: Credentials,
    pub created_ms: u64,
}

/// A registration invitation (XEP-0401/0445), stored under the hash of its
/// token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    /// Accounts it may still create.
    pub uses_left: u32,
    /// Presented after this (ms since the Unix epoch) it is refused; 0:
    /// never expires.
    pub expires_ms: u64,
    pub created_ms: u64,
}

impl Invite {
    /// Whether a client presenting it at `now_ms` may register with it.
    pub fn usable_at(&self, now_ms: u64) -> bool {
        self.uses_left > 0 && (self.expires_ms == 0 || now_ms < self.expires_ms)
    }
}

/// The key an invitation token is stored under: its SHA-256, in hex. The
/// tokens are random (at least 128 bits), so a plain hash is enough: a
/// stolen copy of the state gives no usable token.
pub fn invite_hash(token: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An XEP-0484 FAST token as stored: neither the token nor anything a
/// client could log in with. For HT-SHA-256-NONE (draft-schmaus-kitten-
/// sasl-ht) the client proves the token with `HMAC-SHA-256(token,
/// "Initiator")`; the state keeps only the SHA-256 of that proof
/// (`verifier`), and the server's answer `HMAC-SHA-256(token,
/// "Responder")` (`responder`, hex), which proves the server to the client
/// and lets nobody log in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FastToken {
    /// SHA-256 of the initiator proof, 64 hex digits ([`fast_verifier`]).
    pub verifier: String,
    pub responder: String,
    /// The mechanism it was issued for: used with another it is refused.
    pub mechanism: String,
    pub issued_ms: u64,
    /// Refused from then on (ms since the Unix epoch).
    pub expires_ms: u64,
}

/// XEP-0484 §"Server-side handling of multiple active tokens": the two
/// slots of one client (account, user-agent id).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FastClient {
    pub current: Option<FastToken>,
    pub new: Option<FastToken>,
}

/// The verifier of an HT initiator proof: its SHA-256, in hex.
pub fn fast_verifier(proof: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(proof)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
