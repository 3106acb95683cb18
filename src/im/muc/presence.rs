//! Presence to a room: entering it (XEP-0045 §7.2, creating it §10.1),
//! changing nick (§7.6), presence updates (§7.7), leaving (§7.14); and
//! occupants that go without a word: a session's end, a dead node's
//! occupants (status 333).
use starling_raft::command::{Command, Response};
use starling_raft::muc::{Occupant, Role, Room, RoomConfig, RoomInit};
use starling_raft::NodeId;

use super::stanzas::{self, PresenceFacts};
use super::{MucError, Service};
use crate::clock::now_ms;
use crate::xmpp::jid::{bare_of, Jid};
use crate::xmpp::{ns, Element};

/// Most bytes of an occupant's presence the room keeps.
const PRESENCE_BYTES: usize = 1024;

pub(super) async fn handle(svc: &Service, el: Element, to: Jid) {
    let room_jid = to.to_bare().to_string();
    let from = el.attr("from").unwrap_or_default().to_string();
    let Some(nick) = to.resource().map(|r| r.as_str().to_string()) else {
        // §7.2.1: entering needs a nick.
        if el.attr("type").is_none() {
            svc.refuse(&el, MucError::NoNick).await;
        }
        return;
    };
    match el.attr("type") {
        None => {
            if let Err(e) = available(svc, &el, &room_jid, &nick, &from).await {
                svc.refuse(&el, e).await;
            }
        }
        Some("unavailable") => leave(svc, &room_jid, &from, None).await,
        _ => {}
    }
}

async fn available(
    svc: &Service,
    el: &Element,
    room_jid: &str,
    nick: &str,
    from: &str,
) -> Result<(), MucError> {
    if nick.len() > svc.limits.max_nick_bytes {
        return Err(MucError::TooLong);
    }
    let room = svc.room(room_jid);
    if let Some(r) = &room {
        match r.nick_of(from) {
            Some(n) if n == nick => {
                // §7.7: a presence update, kept (for newcomers) and sent
                // to everyone.
                let kept = stanzas::kept_presence(el, PRESENCE_BYTES);
                let same = r.occupants.get(nick).is_some_and(|o| o.presence == kept);
                if !same {
                    let o = &r.occupants[nick];
                    let cmd = Command::MucJoin {
                        room: room_jid.to_string(),
                        nick: nick.to_string(),
                        occupant: Occupant {
                            presence: kept,
                            ..o.clone()
                        },
                        create: None,
                        max_occupants: svc.limits.max_occupants,
                        password: None,
                    };
                    match svc.propose(cmd).await? {
                        Response::MucJoined { .. } => {}
                        Response::MucRefused { reason } => return Err(reason.into()),
                        _ => return Err(MucError::Unavailable),
                    }
                }
                broadcast_occupant(svc, room_jid, nick, &PresenceFacts::default(), None).await;
                return Ok(());
            }
            Some(old) => return change_nick(svc, room_jid, old.to_string(), nick, from).await,
            None => {}
        }
    }
    let muc_x = el.get_child("x", ns::MUC);
    // §7.2.5: checked where the join is applied.
    let password = muc_x
        .and_then(|x| x.get_child("password", ns::MUC))
        .map(|p| p.text());
    let create = room.is_none().then(|| RoomInit {
        config: RoomConfig {
            max_history: svc
                .limits
                .max_history
                .min(RoomConfig::default().max_history),
            ..RoomConfig::default()
        },
        // §10.1.2: a client that speaks MUC gets a reserved room, locked
        // until configured; an old groupchat client an instant one.
        locked: muc_x.is_some(),
        salt: crate::xmpp::id::random_id(),
        max_rooms: svc.limits.max_rooms_per_user,
    });
    let cmd = Command::MucJoin {
        room: room_jid.to_string(),
        nick: nick.to_string(),
        occupant: Occupant {
            full: from.to_string(),
            node: svc.router.node(),
            role: Role::Participant,
            joined_ms: now_ms(),
            presence: stanzas::kept_presence(el, PRESENCE_BYTES),
        },
        create,
        max_occupants: svc.limits.max_occupants,
        password,
    };
    let created = match svc.propose(cmd).await? {
        Response::MucJoined { created, .. } => created,
        Response::MucRefused { reason } => return Err(reason.into()),
        _ => return Err(MucError::Unavailable),
    };
    let Some(room) = svc.room(room_jid) else {
        return Err(MucError::NoRoom);
    };
    // §7.2.3: the others' presence first, then the newcomer's own (to all,
    // itself included, 110), then the history, then the subject.
    for (n, o) in room.occupants.iter().filter(|(n, _)| *n != nick) {
        let aff = svc.affiliation(room_jid, bare_of(&o.full));
        let p =
            stanzas::occupant_presence(room_jid, &room, n, o, aff, from, &PresenceFacts::default());
        svc.send(p).await;
    }
    let facts = PresenceFacts {
        codes: if created {
            vec![stanzas::CREATED]
        } else {
            Vec::new()
        },
        ..Default::default()
    };
    broadcast_occupant(svc, room_jid, nick, &facts, None).await;
    let history = svc.history_of(room_jid, &room.salt);
    let cap = room.config.max_history as usize;
    let request = muc_x.and_then(|x| x.get_child("history", ns::MUC));
    for item in stanzas::select_history(&history, request, cap, now_ms()) {
        svc.send(stanzas::history_copy(room_jid, item, from)).await;
    }
    svc.send(stanzas::subject_message(room_jid, &room, from))
        .await;
    Ok(())
}

/// The presence of occupant `nick` (as the room is now) to every occupant,
/// and to `extra` (one who just left) with `extra_facts`.
pub(super) async fn broadcast_occupant(
    svc: &Service,
    room_jid: &str,
    nick: &str,
    facts: &PresenceFacts<'_>,
    gone: Option<(&Room, &Occupant)>,
) {
    let Some(now) = svc.room(room_jid) else {
        if let Some((room, o)) = gone {
            send_gone(svc, room_jid, room, nick, o, facts).await;
        }
        return;
    };
    match gone {
        Some((before, o)) => send_gone(svc, room_jid, before, nick, o, facts).await,
        None => {
            let Some(o) = now.occupants.get(nick) else {
                return;
            };
            let aff = svc.affiliation(room_jid, bare_of(&o.full));
            for viewer in now.occupants.values() {
                let p =
                    stanzas::occupant_presence(room_jid, &now, nick, o, aff, &viewer.full, facts);
                svc.send(p).await;
            }
        }
    }
}

/// Unavailable presence of `o` (who was `nick` in `before`) to everyone
/// who was in the room then, itself included.
async fn send_gone(
    svc: &Service,
    room_jid: &str,
    before: &Room,
    nick: &str,
    o: &Occupant,
    facts: &PresenceFacts<'_>,
) {
    let aff = svc.affiliation(room_jid, bare_of(&o.full));
    let facts = PresenceFacts {
        unavailable: true,
        ..facts.clone()
    };
    for viewer in before.occupants.values() {
        let p = stanzas::occupant_presence(room_jid, before, nick, o, aff, &viewer.full, &facts);
        svc.send(p).await;
    }
}

/// §7.6: `from`, present as `old`, becomes `nick`.
async fn change_nick(
    svc: &Service,
    room_jid: &str,
    old: String,
    nick: &str,
    from: &str,
) -> Result<(), MucError> {
    let before = svc.room(room_jid).ok_or(MucError::NoRoom)?;
    let cmd = Command::MucNick {
        room: room_jid.to_string(),
        full: from.to_string(),
        nick: nick.to_string(),
    };
    match svc.propose(cmd).await? {
        Response::MucDone => {}
        Response::MucRefused { reason } => return Err(reason.into()),
        _ => return Err(MucError::Unavailable),
    }
    // §7.6.3: unavailable for the old nick with 303 and the new one, then
    // available for the new nick.
    if let Some(o) = before.occupants.get(&old) {
        let facts = PresenceFacts {
            codes: vec![stanzas::NEW_NICK],
            new_nick: Some(nick),
            ..Default::default()
        };
        send_gone(svc, room_jid, &before, &old, o, &facts).await;
    }
    broadcast_occupant(svc, room_jid, nick, &PresenceFacts::default(), None).await;
    Ok(())
}

/// §7.14: `from` leaves `room_jid` (with `codes`, when it did not leave by
/// itself).
pub(super) async fn leave(svc: &Service, room_jid: &str, from: &str, codes: Option<Vec<u16>>) {
    let Some(before) = svc.room(room_jid) else {
        return;
    };
    let Some(nick) = before.nick_of(from).map(str::to_string) else {
        return;
    };
    let cmd = Command::MucLeave {
        room: room_jid.to_string(),
        full: from.to_string(),
    };
    if svc.propose(cmd).await.is_err() {
        return;
    }
    if let Some(o) = before.occupants.get(&nick) {
        let facts = PresenceFacts {
            codes: codes.unwrap_or_default(),
            ..Default::default()
        };
        send_gone(svc, room_jid, &before, &nick, o, &facts).await;
    }
    if svc.room(room_jid).is_none() {
        svc.drop_history(room_jid);
    }
}

/// The rooms `full` is present in.
fn rooms_of(svc: &Service, full: &str) -> Vec<String> {
    let state = svc.router.cluster().state().read();
    state
        .data
        .muc_rooms
        .iter()
        .filter(|(_, r)| r.occupants.values().any(|o| o.full == full))
        .map(|(k, _)| k.clone())
        .collect()
}

/// A session ended: it leaves every room it was in.
pub(super) async fn session_ended(svc: &Service, full: &str) {
    for room in rooms_of(svc, full) {
        leave(svc, &room, full, None).await;
    }
}

/// Dead node `node`'s occupants leave their rooms (status 333); the rooms
/// stay, and their clients enter again wherever they reconnect.
pub(super) async fn node_lost(svc: &Service, node: NodeId) {
    let before: Vec<(String, Room)> = {
        let state = svc.router.cluster().state().read();
        state
            .data
            .muc_rooms
            .iter()
            .filter(|(_, r)| r.occupants.values().any(|o| o.node == node))
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect()
    };
    if before.is_empty() {
        return;
    }
    if svc.propose(Command::MucDropNode { node }).await.is_err() {
        return;
    }
    for (room_jid, room) in before {
        let after = svc.room(&room_jid);
        for (nick, o) in room.occupants.iter().filter(|(_, o)| o.node == node) {
            let aff = svc.affiliation(&room_jid, bare_of(&o.full));
            let facts = PresenceFacts {
                unavailable: true,
                codes: vec![stanzas::TECHNICAL],
                ..Default::default()
            };
            for viewer in after.iter().flat_map(|r| r.occupants.values()) {
                let p = stanzas::occupant_presence(
                    &room_jid,
                    &room,
                    nick,
                    o,
                    aff,
                    &viewer.full,
                    &facts,
                );
                svc.send(p).await;
            }
        }
    }
}
