//! XEP-0045 room commands: join (creating the room if asked), leave, nick
//! and role changes, affiliations, configuration, subject, destruction,
//! and the occupants of a dead node. Every one is idempotent: a retried
//! join finds its occupant present and answers as the first did (bar
//! `created`), a retried leave finds nobody.
//!
//! What `apply` decides here is what a race between two nodes could get
//! wrong if the proposer decided it alone: the nick is free, the room is
//! not full, the joiner is not an outcast, a members-only room admits
//! only members, the creator's room cap. Everything else (passwords,
//! who may kick whom) is checked by the proposer against the same state.
use crate::command::Response;
use crate::muc::{
    Affiliation, AffiliationChange, AffiliationRecord, MucRefusal, Occupant, Role, Room,
    RoomConfig, RoomInit, Subject,
};
use crate::state::StateData;
use crate::types::NodeId;

fn bare(full: &str) -> &str {
    full.split('/').next().unwrap_or(full)
}

fn refused(reason: MucRefusal) -> Response {
    Response::MucRefused { reason }
}

/// The role an occupant with `aff` gets on entering (XEP-0045 §5.1.2).
pub(crate) fn default_role(config: &RoomConfig, aff: Affiliation) -> Role {
    match aff {
        Affiliation::Owner | Affiliation::Admin => Role::Moderator,
        Affiliation::Member => Role::Participant,
        _ if config.moderated => Role::Visitor,
        _ => Role::Participant,
    }
}

/// Removes `room` if it is empty and not persistent (§10.1.3: a temporary
/// room is destroyed when the last occupant leaves), with its affiliations.
fn gc(data: &mut StateData, room: &str) -> bool {
    let gone = data
        .muc_rooms
        .get(&room.to_string())
        .is_some_and(|r| r.occupants.is_empty() && !r.config.persistent);
    if gone {
        destroy(data, room.to_string());
    }
    gone
}

/// [`crate::Command::MucJoin`].
pub(super) fn join(
    data: &mut StateData,
    room: String,
    nick: String,
    mut occupant: Occupant,
    create: Option<RoomInit>,
    max_occupants: u32,
    password: Option<String>,
) -> Response {
    let joiner = bare(&occupant.full).to_string();
    let mut created = false;
    let mut r = match data.muc_rooms.get(&room) {
        Some(r) => r.clone(),
        None => {
            let Some(init) = create else {
                return refused(MucRefusal::NoRoom);
            };
            if data.muc_rooms_of(&joiner) >= u64::from(init.max_rooms) {
                return refused(MucRefusal::TooManyRooms);
            }
            created = true;
            data.muc_affiliations.insert(
                (room.clone(), joiner.clone()),
                AffiliationRecord {
                    affiliation: Affiliation::Owner,
                    reason: None,
                },
                &mut data.tracker,
            );
            Room {
                config: init.config,
                subject: None,
                creator: joiner.clone(),
                created_ms: occupant.joined_ms,
                locked: init.locked,
                salt: init.salt,
                occupants: Default::default(),
            }
        }
    };
    let aff = data.muc_affiliation(&room, &joiner);
    if let Some(o) = r.occupants.get_mut(&nick) {
        if bare(&o.full) != joiner {
            return refused(MucRefusal::NickTaken);
        }
        // A retry, the same session entering again (from another node
        // after a resumption there), or another session of the same user
        // (reconnected after its node died): the nick follows the newest.
        let role = o.role;
        if o.full != occupant.full || o.node != occupant.node || o.presence != occupant.presence {
            o.full = occupant.full;
            o.node = occupant.node;
            o.presence = occupant.presence;
            data.muc_rooms.insert(room, r, &mut data.tracker);
        }
        return Response::MucJoined {
            created: false,
            role,
        };
    }
    if aff == Affiliation::Outcast {
        return refused(MucRefusal::Banned);
    }
    // §7.2.5 (owners too: the XEP makes no exception).
    if r.config.password.is_some() && r.config.password != password {
        return refused(MucRefusal::Password);
    }
    if r.locked && aff != Affiliation::Owner {
        return refused(MucRefusal::NoRoom);
    }
    if r.config.members_only && aff < Affiliation::Member {
        return refused(MucRefusal::MembersOnly);
    }
    let cap = match r.config.max_occupants {
        0 => max_occupants,
        n => n.min(max_occupants),
    };
    // §7.2.10: owners and admins may enter a full room.
    if r.occupants.len() as u64 >= u64::from(cap) && aff < Affiliation::Admin {
        return refused(MucRefusal::Full);
    }
    // The same session under another nick leaves it (one nick per session).
    r.occupants.retain(|_, o| o.full != occupant.full);
    occupant.role = default_role(&r.config, aff);
    let role = occupant.role;
    r.occupants.insert(nick, occupant);
    data.muc_rooms.insert(room, r, &mut data.tracker);
    Response::MucJoined { created, role }
}

/// [`crate::Command::MucLeave`].
pub(super) fn leave(data: &mut StateData, room: String, full: String) -> Response {
    let Some(mut r) = data.muc_rooms.get(&room).cloned() else {
        return Response::MucDone;
    };
    let before = r.occupants.len();
    r.occupants.retain(|_, o| o.full != full);
    if r.occupants.len() != before {
        data.muc_rooms.insert(room.clone(), r, &mut data.tracker);
        gc(data, &room);
    }
    Response::MucDone
}

/// [`crate::Command::MucNick`]: `full` present under another nick takes `nick`.
pub(super) fn nick(data: &mut StateData, room: String, full: String, nick: String) -> Response {
    let Some(mut r) = data.muc_rooms.get(&room).cloned() else {
        return refused(MucRefusal::NoRoom);
    };
    if let Some(o) = r.occupants.get(&nick) {
        return if o.full == full {
            Response::MucDone
        } else {
            refused(MucRefusal::NickTaken)
        };
    }
    let Some(old) = r.nick_of(&full).map(str::to_string) else {
        return refused(MucRefusal::NotPresent);
    };
    if let Some(o) = r.occupants.remove(&old) {
        r.occupants.insert(nick, o);
    }
    data.muc_rooms.insert(room, r, &mut data.tracker);
    Response::MucDone
}

/// [`crate::Command::MucSetRole`]: `None` removes the occupant (a kick).
pub(super) fn set_role(
    data: &mut StateData,
    room: String,
    nick: String,
    role: Option<Role>,
) -> Response {
    let Some(mut r) = data.muc_rooms.get(&room).cloned() else {
        return refused(MucRefusal::NoRoom);
    };
    match role {
        None => {
            if r.occupants.remove(&nick).is_none() {
                return refused(MucRefusal::NotPresent);
            }
        }
        Some(role) => match r.occupants.get_mut(&nick) {
            Some(o) => o.role = role,
            None => return refused(MucRefusal::NotPresent),
        },
    }
    data.muc_rooms.insert(room.clone(), r, &mut data.tracker);
    gc(data, &room);
    Response::MucDone
}

/// Brings present occupants in line with the affiliations and the
/// configuration: outcasts and (members-only) non-members out, roles of
/// changed affiliations to their defaults.
fn settle(data: &mut StateData, room: &str, changed: &[String]) {
    let Some(mut r) = data.muc_rooms.get(&room.to_string()).cloned() else {
        return;
    };
    let before = r.clone();
    let affs: Vec<(String, Affiliation)> = r
        .occupants
        .values()
        .map(|o| {
            let b = bare(&o.full).to_string();
            let a = data.muc_affiliation(room, &b);
            (b, a)
        })
        .collect();
    let config = r.config.clone();
    r.occupants.retain(|_, o| {
        let a = affs
            .iter()
            .find(|(b, _)| b == bare(&o.full))
            .map_or(Affiliation::None, |(_, a)| *a);
        !(a == Affiliation::Outcast || (config.members_only && a < Affiliation::Member))
    });
    for o in r.occupants.values_mut() {
        let b = bare(&o.full);
        if changed.iter().any(|c| c == b) {
            let a = affs
                .iter()
                .find(|(x, _)| x == b)
                .map_or(Affiliation::None, |(_, a)| *a);
            o.role = default_role(&config, a);
        }
    }
    if r != before {
        data.muc_rooms
            .insert(room.to_string(), r, &mut data.tracker);
        gc(data, room);
    }
}

/// [`crate::Command::MucSetAffiliations`]: `none` removes the row.
pub(super) fn set_affiliations(
    data: &mut StateData,
    room: String,
    changes: Vec<AffiliationChange>,
) -> Response {
    if data.muc_rooms.get(&room).is_none() {
        return refused(MucRefusal::NoRoom);
    }
    let mut changed = Vec::new();
    for c in changes {
        let key = (room.clone(), c.jid.clone());
        if c.affiliation == Affiliation::None {
            data.muc_affiliations.remove(&key, &mut data.tracker);
        } else {
            data.muc_affiliations.insert(
                key,
                AffiliationRecord {
                    affiliation: c.affiliation,
                    reason: c.reason,
                },
                &mut data.tracker,
            );
        }
        changed.push(c.jid);
    }
    settle(data, &room, &changed);
    Response::MucDone
}

/// [`crate::Command::MucConfigure`].
pub(super) fn configure(
    data: &mut StateData,
    room: String,
    config: RoomConfig,
    unlock: bool,
) -> Response {
    let Some(mut r) = data.muc_rooms.get(&room).cloned() else {
        return refused(MucRefusal::NoRoom);
    };
    r.config = config;
    if unlock {
        r.locked = false;
    }
    data.muc_rooms.insert(room.clone(), r, &mut data.tracker);
    settle(data, &room, &[]);
    Response::MucDone
}

/// [`crate::Command::MucSubject`].
pub(super) fn subject(data: &mut StateData, room: String, subject: Subject) -> Response {
    let Some(mut r) = data.muc_rooms.get(&room).cloned() else {
        return refused(MucRefusal::NoRoom);
    };
    r.subject = (!subject.text.is_empty()).then_some(subject);
    data.muc_rooms.insert(room, r, &mut data.tracker);
    Response::MucDone
}

/// [`crate::Command::MucDestroy`]: the room and its affiliations.
pub(super) fn destroy(data: &mut StateData, room: String) -> Response {
    data.muc_rooms.remove(&room, &mut data.tracker);
    // Its XEP-0313 archive goes with it.
    super::archive::remove_all(data, &room);
    let keys: Vec<(String, String)> = data
        .muc_affiliations
        .range((room.clone(), String::new())..)
        .take_while(|((r, _), _)| *r == room)
        .map(|(k, _)| k.clone())
        .collect();
    for k in &keys {
        data.muc_affiliations.remove(k, &mut data.tracker);
    }
    Response::MucDone
}

/// A deleted account's affiliations: its owner, admin and member rights go
/// with it, so whoever registers the JID next does not inherit them; a ban
/// (`outcast`) stays, as it protects the room rather than grants anything.
/// Its occupants leave through their sessions' teardown, which tells the
/// room (XEP-0045 §7.14), so they are not removed here. A scan of every
/// affiliation: accounts are deleted rarely.
pub(super) fn remove_user(data: &mut StateData, jid: &str) -> u32 {
    let keys: Vec<(String, String)> = data
        .muc_affiliations
        .iter()
        .filter(|((_, u), a)| u == jid && a.affiliation != Affiliation::Outcast)
        .map(|(k, _)| k.clone())
        .collect();
    for k in &keys {
        data.muc_affiliations.remove(k, &mut data.tracker);
    }
    keys.len() as u32
}

/// [`crate::Command::MucDropNode`]: occupants whose session was on `node`
/// (it died, or restarted) leave every room.
pub(super) fn drop_node(data: &mut StateData, node: NodeId) -> Response {
    let rooms: Vec<String> = data
        .muc_rooms
        .iter()
        .filter(|(_, r)| r.occupants.values().any(|o| o.node == node))
        .map(|(k, _)| k.clone())
        .collect();
    for room in rooms {
        if let Some(mut r) = data.muc_rooms.get(&room).cloned() {
            r.occupants.retain(|_, o| o.node != node);
            data.muc_rooms.insert(room.clone(), r, &mut data.tracker);
            gc(data, &room);
        }
    }
    Response::MucDone
}

#[cfg(test)]
mod tests {
    use crate::command::{Command, Response};
    use crate::muc::*;
    use crate::state::StateData;

    fn occ(full: &str, node: u64) -> Occupant {
        Occupant {
            full: full.into(),
            node,
            role: Role::Participant,
            joined_ms: 1,
            presence: String::new(),
        }
    }

    fn join(d: &mut StateData, nick: &str, full: &str, create: bool) -> Response {
        d.apply(Command::MucJoin {
            room: "r@muc.x".into(),
            nick: nick.into(),
            occupant: occ(full, 1),
            create: create.then(|| RoomInit {
                config: RoomConfig::default(),
                locked: false,
                salt: "s".into(),
                max_rooms: 1,
            }),
            max_occupants: 2,
            password: None,
        })
    }

    #[test]
    fn join_leave_nick_conflict_cap_and_temporary_rooms() {
        let mut d = StateData::default();
        let empty = d.digest();
        assert_eq!(
            join(&mut d, "a", "a@x/1", false),
            Response::MucRefused {
                reason: MucRefusal::NoRoom
            }
        );
        assert_eq!(
            join(&mut d, "a", "a@x/1", true),
            Response::MucJoined {
                created: true,
                role: Role::Moderator
            }
        );
        // A retry answers the same (not created twice).
        assert_eq!(
            join(&mut d, "a", "a@x/1", true),
            Response::MucJoined {
                created: false,
                role: Role::Moderator
            }
        );
        assert_eq!(
            join(&mut d, "a", "b@x/1", false),
            Response::MucRefused {
                reason: MucRefusal::NickTaken
            }
        );
        assert!(matches!(
            join(&mut d, "b", "b@x/1", false),
            Response::MucJoined { .. }
        ));
        assert_eq!(
            join(&mut d, "c", "c@x/1", false),
            Response::MucRefused {
                reason: MucRefusal::Full
            }
        );
        // The creator's room cap (1).
        let other = d.apply(Command::MucJoin {
            room: "s@muc.x".into(),
            nick: "a".into(),
            occupant: occ("a@x/1", 1),
            create: Some(RoomInit {
                config: RoomConfig::default(),
                locked: false,
                salt: "s".into(),
                max_rooms: 1,
            }),
            max_occupants: 2,
            password: None,
        });
        assert_eq!(
            other,
            Response::MucRefused {
                reason: MucRefusal::TooManyRooms
            }
        );
        d.apply(Command::MucNick {
            room: "r@muc.x".into(),
            full: "b@x/1".into(),
            nick: "bee".into(),
        });
        let r = d.muc_rooms.get(&"r@muc.x".to_string()).expect("room");
        assert_eq!(r.nick_of("b@x/1"), Some("bee"));
        // Ban: the outcast leaves at once and cannot come back.
        d.apply(Command::MucSetAffiliations {
            room: "r@muc.x".into(),
            changes: vec![AffiliationChange {
                jid: "b@x".into(),
                affiliation: Affiliation::Outcast,
                reason: None,
            }],
        });
        let r = d.muc_rooms.get(&"r@muc.x".to_string()).expect("room");
        assert_eq!(r.nick_of("b@x/1"), None);
        assert_eq!(
            join(&mut d, "b", "b@x/1", false),
            Response::MucRefused {
                reason: MucRefusal::Banned
            }
        );
        // A dead node's occupants go; the temporary room with them.
        d.apply(Command::MucDropNode { node: 1 });
        assert!(d.muc_rooms.is_empty() && d.muc_affiliations.is_empty());
        assert_eq!(d.digest(), empty, "nothing left behind");
    }

    #[test]
    fn a_deleted_account_loses_its_rights_but_not_its_bans() {
        let mut d = StateData::default();
        for jid in ["a@x", "b@x", "c@x"] {
            d.apply(Command::CreateUser {
                jid: jid.into(),
                credentials: crate::credentials::Credentials::derive(jid, 2),
                created_ms: 1,
            });
        }
        join(&mut d, "a", "a@x/1", true);
        let change = |jid: &str, affiliation| AffiliationChange {
            jid: jid.into(),
            affiliation,
            reason: None,
        };
        d.apply(Command::MucSetAffiliations {
            room: "r@muc.x".into(),
            changes: vec![
                change("b@x", Affiliation::Admin),
                change("c@x", Affiliation::Outcast),
            ],
        });
        for jid in ["a@x", "b@x", "c@x"] {
            d.apply(Command::DeleteUser { jid: jid.into() });
        }
        // Whoever registers a@x or b@x next is nobody in the room; c@x
        // stays banned.
        assert_eq!(d.muc_affiliation("r@muc.x", "a@x"), Affiliation::None);
        assert_eq!(d.muc_affiliation("r@muc.x", "b@x"), Affiliation::None);
        assert_eq!(d.muc_affiliation("r@muc.x", "c@x"), Affiliation::Outcast);
    }

    #[test]
    fn rooms_are_in_the_snapshot() {
        let mut d = StateData::default();
        join(&mut d, "a", "a@x/1", true);
        let back = StateData::from_snapshot(&d.to_snapshot().expect("snap")).expect("load");
        assert_eq!(back.digest(), d.digest());
        assert_eq!(back.muc_affiliation("r@muc.x", "a@x"), Affiliation::Owner);
        assert_eq!(back.muc_rooms_of("a@x"), 1);
    }
}
