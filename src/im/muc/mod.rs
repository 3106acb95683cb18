//! XEP-0045 multi-user chat on `conference.<domain>`: a service of its own
//! that the router hands every stanza addressed to its domain
//! ([`crate::router::MucHost`]), on whichever node the sender is.
//!
//! - this file: the [`Service`], what arrives (from a local client, from a
//!   peer's fan-out, a session's end, a dead node) and its dispatch, the
//!   error type and its RFC 6120 conditions, proposing room commands.
//! - [`stanzas`]: the stanzas a room sends, built as pure functions of the
//!   replicated room (presence with its `muc#user` item and status codes,
//!   XEP-0421 occupant ids, the subject, history stamps).
//! - [`presence`]: enter (creating the room), leave, nick change (§7.1-§7.6,
//!   §7.14, §10.1).
//! - [`message`]: groupchat fan-out, history, private messages, subject,
//!   mediated invitations, XEP-0425 moderation (§7.4-§7.8, §8.1).
//! - [`admin`]: roles and affiliations (§8, §9), the configuration form
//!   and destruction (§10), their permission rules as pure functions.
//! - [`archive`]: XEP-0313 on the room's JID, when the archive is on.
//! - [`disco`]: disco#info/items of the service and its rooms (§6),
//!   XEP-0410 self-ping.
//!
//! # What is replicated, what travels
//! A room's definition, configuration, subject, affiliations and present
//! occupants (full JID, node, role) are raft state (`starling_raft::muc`):
//! a join or a kick is one command, so every node knows every room and
//! the room outlives any one node. A groupchat message is *not* written to
//! raft: the sender's node checks the sender's voice against the
//! replicated room, stamps an XEP-0359 stanza id (`by` the room), and
//! sends it once to every other node (the mesh, one ordered link per
//! peer); every node writes it to the sessions it holds of the room's
//! occupants and keeps it in its copy of the room's history. So a
//! recipient gets one sender's messages in the order they were sent
//! (per-sender order); two senders' messages may interleave differently
//! for recipients on different nodes.
//!
//! History is kept in memory on every node (each sees every message), the
//! last `max_history` per room: a node that restarts has none until new
//! messages come. A groupchat message is live only, as in every XEP-0045
//! service: an occupant whose session is gone misses it, and sees it in
//! the history when it enters again; one whose session's queue is full is
//! ended with `resource-constraint` (see `message::deliver_here`), so no
//! occupant is left with a gap it does not know of.
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use starling_raft::command::{Command, Response};
use starling_raft::muc::{MucRefusal, Room};
use starling_raft::NodeId;
use tracing::warn;

use crate::config::MucSection;
use crate::router::{MucHost, Router};
use crate::xmpp::jid::Jid;
use crate::xmpp::{Element, StanzaCondition, StanzaError};

pub mod admin;
pub mod archive;
pub mod disco;
pub mod message;
pub mod presence;
pub mod stanzas;

/// Why the service refused a stanza; each is an RFC 6120 §8.3.3 condition
/// with the XEP-0045 section that chooses it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MucError {
    #[error("no such room")]
    NoRoom,
    #[error("nick in use")]
    NickTaken,
    #[error("banned")]
    Banned,
    #[error("members only")]
    MembersOnly,
    #[error("wrong or missing password")]
    Password,
    #[error("room full")]
    Full,
    #[error("too many rooms")]
    TooManyRooms,
    #[error("not an occupant")]
    NotOccupant,
    #[error("not allowed")]
    Forbidden,
    #[error("not allowed on that occupant")]
    NotAllowed,
    #[error("bad request")]
    BadRequest,
    #[error("no nick")]
    NoNick,
    #[error("too long")]
    TooLong,
    #[error("the cluster did not answer")]
    Unavailable,
    #[error("unsupported")]
    Unsupported,
    #[error("no such service")]
    ServiceUnavailable,
}

impl MucError {
    pub fn stanza_error(&self) -> StanzaError {
        use StanzaCondition as C;
        match self {
            // §7.2.4 (locked), §7.2.5 (no such room, creation not asked).
            MucError::NoRoom => StanzaError::new(C::ItemNotFound),
            // §7.2.9.
            MucError::NickTaken => StanzaError::new(C::Conflict),
            // §7.2.7.
            MucError::Banned => StanzaError::new(C::Forbidden).of_type("auth"),
            // §7.2.6.
            MucError::MembersOnly => StanzaError::new(C::RegistrationRequired).of_type("auth"),
            // §7.2.5 password-protected rooms.
            MucError::Password => StanzaError::new(C::NotAuthorized).of_type("auth"),
            // §7.2.10.
            MucError::Full => StanzaError::new(C::ServiceUnavailable).of_type("wait"),
            MucError::TooManyRooms => StanzaError::with_text(
                C::ResourceConstraint,
                "you have created as many rooms as allowed",
            )
            .of_type("wait"),
            // §7.4 (a message from a non-occupant), XEP-0410.
            MucError::NotOccupant => StanzaError::new(C::NotAcceptable),
            MucError::Forbidden => StanzaError::new(C::Forbidden).of_type("auth"),
            // §8.2, §9.x: acting on an occupant of higher standing.
            MucError::NotAllowed => StanzaError::new(C::NotAllowed),
            MucError::BadRequest => StanzaError::new(C::BadRequest),
            // §7.2.1: "If the user does not specify a room nickname ... the
            // service MUST return a <jid-malformed/> error".
            MucError::NoNick => StanzaError::new(C::JidMalformed).of_type("modify"),
            MucError::TooLong => StanzaError::new(C::PolicyViolation).of_type("modify"),
            MucError::Unavailable => StanzaError::new(C::RemoteServerTimeout).of_type("wait"),
            MucError::Unsupported => StanzaError::new(C::FeatureNotImplemented),
            // RFC 6120 §8.4: an iq no one here answers.
            MucError::ServiceUnavailable => StanzaError::new(C::ServiceUnavailable),
        }
    }
}

impl From<MucRefusal> for MucError {
    fn from(r: MucRefusal) -> Self {
        match r {
            MucRefusal::NoRoom => MucError::NoRoom,
            MucRefusal::NickTaken => MucError::NickTaken,
            MucRefusal::Banned => MucError::Banned,
            MucRefusal::MembersOnly => MucError::MembersOnly,
            MucRefusal::Full => MucError::Full,
            MucRefusal::TooManyRooms => MucError::TooManyRooms,
            MucRefusal::NotPresent => MucError::NotOccupant,
            MucRefusal::Password => MucError::Password,
        }
    }
}

/// Every this many messages remembered, the rings of rooms that are gone
/// are dropped.
const SWEEP_EVERY: u64 = 1024;

/// One message of a room's history, as it was broadcast (no `to`).
#[derive(Debug, Clone)]
pub struct HistoryItem {
    pub el: Element,
    pub stamp_ms: u64,
    /// Its XEP-0359 stanza id (`by` the room), for XEP-0425 retraction.
    pub id: String,
}

/// The multi-user chat service of this node.
pub struct Service {
    pub(crate) router: Router,
    pub(crate) limits: MucSection,
    /// Each room's last messages, as this node saw them, with the salt of
    /// the room they belong to: a room destroyed and made again under the
    /// same name (a new salt) does not inherit the old one's history.
    history: Mutex<HashMap<String, (String, VecDeque<HistoryItem>)>>,
    /// Messages remembered, to sweep the rings of rooms that are gone now
    /// and then.
    remembered: std::sync::atomic::AtomicU64,
}

impl Service {
    pub fn new(router: Router, limits: MucSection) -> Self {
        Service {
            router,
            limits,
            history: Mutex::new(HashMap::new()),
            remembered: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// A copy of room `room` from the replicated state.
    pub(crate) fn room(&self, room: &str) -> Option<Room> {
        self.router
            .cluster()
            .state()
            .read()
            .data
            .muc_rooms
            .get(&room.to_string())
            .cloned()
    }

    /// `user`'s affiliation with `room`.
    pub(crate) fn affiliation(&self, room: &str, user: &str) -> starling_raft::muc::Affiliation {
        self.router
            .cluster()
            .state()
            .read()
            .data
            .muc_affiliation(room, user)
    }

    /// Commits a room command. Every room command is idempotent, so an
    /// unknown outcome (a timeout, a lost leader) is proposed again; after
    /// three unknowns the client is told to wait (never success or failure).
    pub(crate) async fn propose(&self, cmd: Command) -> Result<Response, MucError> {
        for _ in 0..3 {
            match self.router.cluster().write(cmd.clone()).await {
                Ok(a) => return Ok(a.response),
                Err(e) => warn!(error = %e, "room command not committed; retrying"),
            }
        }
        Err(MucError::Unavailable)
    }

    /// Routes a stanza from the service to a user.
    pub(crate) async fn send(&self, el: Element) {
        self.router.route(el).await;
    }

    /// The error reply to `el` (none for an error).
    pub(crate) async fn refuse(&self, el: &Element, err: MucError) {
        if let Some(reply) = err.stanza_error().reply_to(el) {
            self.send(reply).await;
        }
    }

    /// Appends a broadcast message to `room`'s history here (bounded).
    pub(crate) fn remember(&self, room: &str, salt: &str, item: HistoryItem, cap: usize) {
        let n = self
            .remembered
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep();
        }
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let (s, ring) = h.entry(room.to_string()).or_default();
        if s != salt {
            *s = salt.to_string();
            ring.clear();
        }
        ring.push_back(item);
        while ring.len() > cap {
            ring.pop_front();
        }
    }

    /// Drops the rings of rooms that no longer exist (destroyed on
    /// another node, or emptied there).
    fn sweep(&self) {
        let live: std::collections::HashSet<(String, String)> = {
            let state = self.router.cluster().state().read();
            state
                .data
                .muc_rooms
                .iter()
                .map(|(k, r)| (k.clone(), r.salt.clone()))
                .collect()
        };
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        h.retain(|room, (salt, _)| live.contains(&(room.clone(), salt.clone())));
    }

    /// Drops message `id` from `room`'s history here (XEP-0425).
    pub(crate) fn forget(&self, room: &str, id: &str) {
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, ring)) = h.get_mut(room) {
            ring.retain(|i| i.id != id);
        }
    }

    /// `room`'s history here, oldest first.
    pub(crate) fn history_of(&self, room: &str, salt: &str) -> Vec<HistoryItem> {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        h.get(room)
            .filter(|(s, _)| s == salt)
            .map(|(_, r)| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets the history of a room that is gone.
    pub(crate) fn drop_history(&self, room: &str) {
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        h.remove(room);
    }

    async fn dispatch(&self, el: Element) {
        let Some(to) = el.attr("to").and_then(|t| Jid::new(t).ok()) else {
            return;
        };
        if el.attr("from").is_none() {
            return;
        }
        match (el.name(), to.node().is_some()) {
            ("iq", false) => disco::service_iq(self, el).await,
            ("message", false) if el.attr("type") != Some("error") => {
                self.refuse(&el, MucError::ServiceUnavailable).await;
            }
            ("presence", false) => {}
            ("presence", true) => presence::handle(self, el, to).await,
            ("message", true) => message::handle(self, el, to).await,
            ("iq", true) => admin::room_iq(self, el, to).await,
            _ => {}
        }
    }
}

#[tonic::async_trait]
impl MucHost for Service {
    async fn client_stanza(&self, el: Element) {
        self.dispatch(el).await
    }

    async fn peer_fanout(&self, room: &str, el: Element) {
        message::deliver_here(self, room, el);
    }

    async fn session_ended(&self, full: &str) {
        presence::session_ended(self, full).await
    }

    async fn node_lost(&self, node: NodeId) {
        presence::node_lost(self, node).await
    }
}
