//! Messages to a room (XEP-0045 §7.4 groupchat, §8.1 subject, §7.8.2
//! mediated invitations), to an occupant (§7.5 private messages), their
//! fan-out to every node and each node's delivery to the occupants it
//! holds, the history each node keeps, and XEP-0425 moderation.
use starling_raft::command::{Command, Response};
use starling_raft::muc::{Affiliation, AffiliationChange, Role, Room, Subject};

use super::stanzas;
use super::{HistoryItem, MucError, Service};
use crate::clock::now_ms;
use crate::xmpp::id::random_id;
use crate::xmpp::jid::{bare_of, Jid};
use crate::xmpp::{ns, Element};

pub(super) async fn handle(svc: &Service, el: Element, to: Jid) {
    if el.attr("type") == Some("error") {
        return;
    }
    let room_jid = to.to_bare().to_string();
    let result = match to.resource() {
        None => to_room(svc, &el, &room_jid).await,
        Some(nick) => private(svc, &el, &room_jid, nick.as_str()).await,
    };
    if let Err(e) = result {
        svc.refuse(&el, e).await;
    }
}

/// The sender's nick and role, or `not-acceptable` (§7.4: "If the sender
/// is not an occupant of the room, the service SHOULD return a
/// <not-acceptable/> error").
fn occupant<'a>(room: &'a Room, from: &str) -> Result<(&'a str, Role), MucError> {
    room.occupants
        .iter()
        .find(|(_, o)| o.full == from)
        .map(|(n, o)| (n.as_str(), o.role))
        .ok_or(MucError::NotOccupant)
}

async fn to_room(svc: &Service, el: &Element, room_jid: &str) -> Result<(), MucError> {
    let from = el.attr("from").unwrap_or_default();
    let room = svc.room(room_jid).ok_or(MucError::NoRoom)?;
    if let Some(x) = el.get_child("x", ns::MUC_USER) {
        if let Some(invite) = x.get_child("invite", ns::MUC_USER) {
            return invite_mediated(svc, &room, room_jid, from, invite).await;
        }
    }
    if el.attr("type") != Some("groupchat") {
        return Err(MucError::BadRequest);
    }
    let (nick, role) = occupant(&room, from)?;
    let nick = nick.to_string();
    // §7.4 / §8.3: a visitor has no voice.
    if role == Role::Visitor {
        return Err(MucError::Forbidden);
    }
    let subject = el.get_child("subject", ns::CLIENT);
    if subject.is_some() && el.get_child("body", ns::CLIENT).is_none() {
        return set_subject(svc, &room, room_jid, &nick, role, el).await;
    }
    let mut out = Element::new("message", ns::CLIENT)
        .with_attr("type", "groupchat")
        .with_attr("from", format!("{room_jid}/{nick}"))
        .with_opt_attr("id", el.attr("id"));
    for c in el.children() {
        // XEP-0359 §5 / XEP-0421 §4: what the client put there is not
        // the room's to trust.
        if c.is("stanza-id", ns::SID) || c.is("occupant-id", ns::OCCUPANT_ID) {
            continue;
        }
        out.push(c.clone());
    }
    out.push(stanzas::occupant_id_el(&room, from));
    let id = random_id();
    out.push(
        Element::new("stanza-id", ns::SID)
            .with_attr("id", id.clone())
            .with_attr("by", room_jid),
    );
    super::archive::archive(svc, room_jid, &nick, &id, &out);
    fan_out(svc, room_jid, out).await;
    Ok(())
}

/// Sends a room's message to every node (this one included): each writes
/// it to the occupants it holds and keeps it in its history.
pub(super) async fn fan_out(svc: &Service, room_jid: &str, el: Element) {
    svc.router.to_every_peer(room_jid, &el).await;
    deliver_here(svc, room_jid, el);
}

/// A room's broadcast on this node: to each occupant whose session is
/// here (wherever the replicated row says it joined: a session resumed on
/// another node is found where it is now), and into this node's history.
pub(super) fn deliver_here(svc: &Service, room_jid: &str, el: Element) {
    let Some(room) = svc.room(room_jid) else {
        return;
    };
    if let Some(r) = el.get_child("retract", ns::RETRACT) {
        if let Some(id) = r.attr("id") {
            svc.forget(room_jid, id);
        }
    } else if el.get_child("body", ns::CLIENT).is_some() {
        let id = el
            .get_child("stanza-id", ns::SID)
            .and_then(|s| s.attr("id"))
            .unwrap_or_default()
            .to_string();
        let cap = (room.config.max_history as usize).min(svc.limits.max_history as usize);
        svc.remember(
            room_jid,
            &room.salt,
            HistoryItem {
                el: el.clone(),
                stamp_ms: now_ms(),
                id,
            },
            cap,
        );
    }
    for o in room.occupants.values() {
        if svc.router.local_session(&o.full).is_some() {
            let mut copy = el.clone();
            copy.set_attr("to", o.full.clone());
            // Live only (see the module doc): a session that cannot take
            // it misses it.
            let _ = svc.router.deliver_local(&o.full, 0, copy);
        }
    }
}

/// §8.1: a subject change, by a moderator, or by a participant where the
/// room allows it (`muc#roomconfig_changesubject`).
async fn set_subject(
    svc: &Service,
    room: &Room,
    room_jid: &str,
    nick: &str,
    role: Role,
    el: &Element,
) -> Result<(), MucError> {
    if role != Role::Moderator && !room.config.change_subject {
        return Err(MucError::Forbidden);
    }
    let text = el
        .get_child("subject", ns::CLIENT)
        .map(|s| s.text())
        .unwrap_or_default();
    if text.len() > svc.limits.max_subject_bytes {
        return Err(MucError::TooLong);
    }
    let cmd = Command::MucSubject {
        room: room_jid.to_string(),
        subject: Subject {
            text: text.clone(),
            by: nick.to_string(),
            stamp_ms: now_ms(),
        },
    };
    match svc.propose(cmd).await? {
        Response::MucDone => {}
        Response::MucRefused { reason } => return Err(reason.into()),
        _ => return Err(MucError::Unavailable),
    }
    let mut subject = Element::new("subject", ns::CLIENT);
    if !text.is_empty() {
        subject.push_text(text);
    }
    let out = Element::new("message", ns::CLIENT)
        .with_attr("type", "groupchat")
        .with_attr("from", format!("{room_jid}/{nick}"))
        .with_opt_attr("id", el.attr("id"))
        .with_child(subject);
    fan_out(svc, room_jid, out).await;
    Ok(())
}

/// §7.5: a private message to occupant `nick`, from the sender's occupant
/// JID.
async fn private(svc: &Service, el: &Element, room_jid: &str, nick: &str) -> Result<(), MucError> {
    let from = el.attr("from").unwrap_or_default();
    let room = svc.room(room_jid).ok_or(MucError::NoRoom)?;
    let (sender, _) = occupant(&room, from)?;
    if el.attr("type") == Some("groupchat") {
        // §7.5: "the service MUST reject the message with a <bad-request/>".
        return Err(MucError::BadRequest);
    }
    let target = room
        .occupants
        .get(nick)
        .ok_or(MucError::NoRoom)?
        .full
        .clone();
    let mut out = el.clone();
    out.set_attr("from", format!("{room_jid}/{sender}"));
    out.set_attr("to", target);
    out.remove_children(|c| c.is("x", ns::MUC_USER));
    // §7.5: marks it as a private message from a room.
    out.push(Element::new("x", ns::MUC_USER));
    out.push(stanzas::occupant_id_el(&room, from));
    svc.send(out).await;
    Ok(())
}

/// §7.8.2: an occupant asks the room to invite someone. In a members-only
/// room only admins and owners (or anyone, where the room allows
/// invitations) may, and the invitee becomes a member (§7.8.2: "the
/// service MUST add the invitee to the member list").
async fn invite_mediated(
    svc: &Service,
    room: &Room,
    room_jid: &str,
    from: &str,
    invite: &Element,
) -> Result<(), MucError> {
    occupant(room, from)?;
    let invitee = invite
        .attr("to")
        .and_then(|t| Jid::new(t).ok())
        .ok_or(MucError::BadRequest)?
        .to_string();
    let aff = svc.affiliation(room_jid, bare_of(from));
    if room.config.members_only {
        if aff < Affiliation::Admin && !room.config.allow_invites {
            return Err(MucError::Forbidden);
        }
        let current = svc.affiliation(room_jid, bare_of(&invitee));
        if current < Affiliation::Member {
            let cmd = Command::MucSetAffiliations {
                room: room_jid.to_string(),
                changes: vec![AffiliationChange {
                    jid: bare_of(&invitee).to_string(),
                    affiliation: Affiliation::Member,
                    reason: None,
                }],
            };
            svc.propose(cmd).await?;
        }
    }
    let mut inv = Element::new("invite", ns::MUC_USER).with_attr("from", bare_of(from));
    if let Some(r) = invite.get_child("reason", ns::MUC_USER) {
        inv.push(r.clone());
    }
    let mut x = Element::new("x", ns::MUC_USER).with_child(inv);
    if let Some(pw) = &room.config.password {
        x.push(Element::new("password", ns::MUC_USER).with_text(pw.clone()));
    }
    let out = Element::new("message", ns::CLIENT)
        .with_attr("from", room_jid)
        .with_attr("to", invitee)
        .with_attr("id", random_id())
        .with_child(x);
    svc.send(out).await;
    Ok(())
}

/// XEP-0425 §4: a moderator retracts message `id` (its stanza id): every
/// occupant is told, and every node drops it from its history.
pub(super) async fn moderate(
    svc: &Service,
    room_jid: &str,
    from: &str,
    moderate: &Element,
) -> Result<(), MucError> {
    let room = svc.room(room_jid).ok_or(MucError::NoRoom)?;
    let (nick, role) = occupant(&room, from)?;
    if role != Role::Moderator {
        return Err(MucError::Forbidden);
    }
    let id = moderate.attr("id").ok_or(MucError::BadRequest)?;
    if moderate.get_child("retract", ns::RETRACT).is_none() {
        return Err(MucError::BadRequest);
    }
    let moderated = Element::new("moderated", ns::MODERATE)
        .with_attr("by", format!("{room_jid}/{nick}"))
        .with_child(stanzas::occupant_id_el(&room, from));
    let mut retract = Element::new("retract", ns::RETRACT)
        .with_attr("id", id)
        .with_child(moderated);
    if let Some(r) = moderate.get_child("reason", ns::MODERATE) {
        retract.push(Element::new("reason", ns::RETRACT).with_text(r.text()));
    }
    let out = Element::new("message", ns::CLIENT)
        .with_attr("type", "groupchat")
        .with_attr("from", room_jid)
        .with_attr("id", random_id())
        .with_child(retract.clone());
    // The room's archive first: the answer says the message is retracted,
    // so it must be (XEP-0425 §"Tombstones").
    super::archive::retract(svc, &room, room_jid, id, &retract).await?;
    fan_out(svc, room_jid, out).await;
    Ok(())
}
