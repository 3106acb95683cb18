//! XEP-0045 multi-user chat rooms as replicated data: a room's definition
//! (configuration, subject, its occupants) and its affiliations. What an
//! affiliation or a role *allows* is the server's (`im::muc`); here they
//! are values, and `apply` (`apply/muc.rs`) keeps the few invariants that
//! concurrent proposals on different nodes could break: one occupant per
//! nick, the occupant cap, outcasts and members-only rooms kept out, the
//! rooms-per-user cap.
//!
//! Occupants are replicated (a join, a leave, a nick or role change is one
//! command) so that any node can fan a room's messages out, and a room
//! keeps working when the node that took a join dies. Messages are not:
//! they travel over the mesh (see `im::muc`).
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// XEP-0045 §5.2 affiliations (`None` is the absence of a row).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Affiliation {
    Outcast,
    None,
    Member,
    Admin,
    Owner,
}

impl Affiliation {
    pub fn as_str(self) -> &'static str {
        match self {
            Affiliation::Outcast => "outcast",
            Affiliation::None => "none",
            Affiliation::Member => "member",
            Affiliation::Admin => "admin",
            Affiliation::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "outcast" => Affiliation::Outcast,
            "none" => Affiliation::None,
            "member" => Affiliation::Member,
            "admin" => Affiliation::Admin,
            "owner" => Affiliation::Owner,
            _ => return None,
        })
    }
}

/// XEP-0045 §5.1 roles of a present occupant (`none`: not in the room).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Visitor,
    Participant,
    Moderator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Visitor => "visitor",
            Role::Participant => "participant",
            Role::Moderator => "moderator",
        }
    }
}

/// A room's configuration (the muc#roomconfig form, XEP-0045 §10.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomConfig {
    pub name: String,
    pub description: String,
    /// Kept when the last occupant leaves (§10.2, `muc#roomconfig_persistentroom`).
    pub persistent: bool,
    /// Listed in the service's disco#items.
    pub public: bool,
    pub members_only: bool,
    /// Only occupants with voice may speak; newcomers without an
    /// affiliation are visitors.
    pub moderated: bool,
    /// Entering needs this password (none: an open room). Stored as given:
    /// every member of the cluster holds the replicated state anyway.
    pub password: Option<String>,
    /// Most occupants at once (0: the server's cap).
    pub max_occupants: u32,
    /// Messages sent to a newcomer (`muc#maxhistoryfetch`).
    pub max_history: u32,
    /// Full JIDs shown to every occupant (non-anonymous), else only to
    /// moderators (semi-anonymous).
    pub whois_anyone: bool,
    /// Participants may change the subject.
    pub change_subject: bool,
    /// Occupants (not only admins) may invite.
    pub allow_invites: bool,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            name: String::new(),
            description: String::new(),
            persistent: false,
            public: true,
            members_only: false,
            moderated: false,
            password: None,
            max_occupants: 0,
            max_history: 20,
            whois_anyone: false,
            change_subject: false,
            allow_invites: false,
        }
    }
}

/// A room's subject (XEP-0045 §8.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    pub text: String,
    /// The nick of who set it.
    pub by: String,
    pub stamp_ms: u64,
}

/// A present occupant: which session, on which node, with which role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Occupant {
    /// The occupant's full JID.
    pub full: String,
    /// The node that holds its session: fan-out goes there.
    pub node: NodeId,
    pub role: Role,
    pub joined_ms: u64,
    /// What its presence says (`<show/>`, `<status/>`, caps), serialized:
    /// newcomers get it with the occupant's presence (§7.2.3). Bounded by
    /// the proposer.
    #[serde(default)]
    pub presence: String,
}

/// One room: definition, configuration, subject and present occupants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Room {
    pub config: RoomConfig,
    #[serde(default)]
    pub subject: Option<Subject>,
    /// The bare JID that created it (counted for `max_rooms`).
    pub creator: String,
    pub created_ms: u64,
    /// XEP-0045 §10.1.2: a reserved room is locked (nobody else may enter)
    /// until its owner submits the configuration form.
    pub locked: bool,
    /// Chosen by the proposer at creation: the XEP-0421 occupant ids are
    /// derived from it, so they are stable per user but not guessable.
    pub salt: String,
    /// Present occupants by nick.
    pub occupants: BTreeMap<String, Occupant>,
}

impl Room {
    /// The nick `full` is present under, if any.
    pub fn nick_of(&self, full: &str) -> Option<&str> {
        self.occupants
            .iter()
            .find(|(_, o)| o.full == full)
            .map(|(n, _)| n.as_str())
    }
}

/// An affiliation row (XEP-0045 §9, §10): the JID is in the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AffiliationRecord {
    pub affiliation: Affiliation,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Creating a room, in a [`crate::Command::MucJoin`] for a room that does
/// not exist yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInit {
    pub config: RoomConfig,
    pub locked: bool,
    pub salt: String,
    /// Most rooms one user may have created (`resource-constraint`).
    pub max_rooms: u32,
}

/// Why a join was refused (each is an XEP-0045 §7.2 error condition).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MucRefusal {
    /// No such room (and no creation asked), or a locked one.
    NoRoom,
    /// The nick is someone else's (§7.2.9 `conflict`).
    NickTaken,
    /// An outcast (§7.2.7 `forbidden`).
    Banned,
    /// A members-only room, not a member (§7.2.6 `registration-required`).
    MembersOnly,
    /// At its occupant cap (§7.2.10 `service-unavailable`).
    Full,
    /// The creator's room cap (`resource-constraint`).
    TooManyRooms,
    /// The occupant is not present (a nick change or role change).
    NotPresent,
    /// A password-protected room, no or the wrong password (§7.2.5
    /// `not-authorized`).
    Password,
}

/// One affiliation change of a [`crate::Command::MucSetAffiliations`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AffiliationChange {
    /// A bare JID.
    pub jid: String,
    pub affiliation: Affiliation,
    #[serde(default)]
    pub reason: Option<String>,
}
