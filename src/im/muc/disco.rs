//! Service discovery of the chat service and its rooms (XEP-0045 §6:
//! identity `conference/text`, the room features of §15.3, public rooms
//! as the service's items), iqs to the service, and iqs to an occupant
//! (XEP-0410 self-ping; nothing else is relayed).
use super::{MucError, Service};
use crate::xmpp::{ns, Element};

fn feature(var: &str) -> Element {
    Element::new("feature", ns::DISCO_INFO).with_attr("var", var)
}

fn identity(name: &str) -> Element {
    Element::new("identity", ns::DISCO_INFO)
        .with_attr("category", "conference")
        .with_attr("type", "text")
        .with_attr("name", name)
}

/// An iq to the service itself: disco, ping; anything else
/// `service-unavailable` (RFC 6120 §8.4).
pub(super) async fn service_iq(svc: &Service, el: Element) {
    let ty = el.attr("type").unwrap_or_default();
    if !matches!(ty, "get" | "set") {
        return;
    }
    let child = el.children().next().map(|c| (c.name(), c.ns()));
    let payload = match (child, ty) {
        (Some(("query", ns::DISCO_INFO)), "get") => {
            let mut q = Element::new("query", ns::DISCO_INFO).with_child(identity("Chatrooms"));
            for f in [
                ns::DISCO_INFO,
                ns::DISCO_ITEMS,
                ns::MUC,
                ns::OCCUPANT_ID,
                ns::MODERATE,
                ns::MUC_SELF_PING,
                ns::SID,
                ns::PING,
            ] {
                q.push(feature(f));
            }
            Some(q)
        }
        (Some(("query", ns::DISCO_ITEMS)), "get") => {
            let mut q = Element::new("query", ns::DISCO_ITEMS);
            let state = svc.router.cluster().state().read();
            for (jid, room) in state.data.muc_rooms.iter() {
                // §6.3: public rooms only (hidden and locked ones are not
                // listed).
                if room.config.public && !room.locked {
                    let name = if room.config.name.is_empty() {
                        jid.split('@').next().unwrap_or_default().to_string()
                    } else {
                        room.config.name.clone()
                    };
                    q.push(
                        Element::new("item", ns::DISCO_ITEMS)
                            .with_attr("jid", jid.clone())
                            .with_attr("name", name),
                    );
                }
            }
            Some(q)
        }
        (Some(("ping", ns::PING)), "get") => None,
        _ => {
            svc.refuse(&el, MucError::ServiceUnavailable).await;
            return;
        }
    };
    let mut reply = Element::new("iq", ns::CLIENT)
        .with_attr("type", "result")
        .with_opt_attr("id", el.attr("id"))
        .with_opt_attr("from", el.attr("to"))
        .with_opt_attr("to", el.attr("from"));
    if let Some(p) = payload {
        reply.push(p);
    }
    svc.send(reply).await;
}

/// §6.4: a room's identity and features.
pub(super) fn room_info(svc: &Service, room_jid: &str) -> Result<Element, MucError> {
    let room = svc.room(room_jid).ok_or(MucError::NoRoom)?;
    let c = &room.config;
    let name = if c.name.is_empty() {
        room_jid.split('@').next().unwrap_or_default()
    } else {
        &c.name
    };
    let mut q = Element::new("query", ns::DISCO_INFO).with_child(identity(name));
    for f in [
        ns::MUC,
        ns::OCCUPANT_ID,
        ns::MODERATE,
        ns::MUC_SELF_PING,
        ns::SID,
        if c.persistent {
            "muc_persistent"
        } else {
            "muc_temporary"
        },
        if c.public { "muc_public" } else { "muc_hidden" },
        if c.members_only {
            "muc_membersonly"
        } else {
            "muc_open"
        },
        if c.moderated {
            "muc_moderated"
        } else {
            "muc_unmoderated"
        },
        if c.password.is_some() {
            "muc_passwordprotected"
        } else {
            "muc_unsecured"
        },
        if c.whois_anyone {
            "muc_nonanonymous"
        } else {
            "muc_semianonymous"
        },
    ] {
        q.push(feature(f));
    }
    if svc.router.archiver().is_some() {
        q.push(feature(ns::MAM));
    }
    let field = |var: &str, v: String| {
        Element::new("field", ns::XDATA)
            .with_attr("var", var)
            .with_child(Element::new("value", ns::XDATA).with_text(v))
    };
    q.push(
        Element::new("x", ns::XDATA)
            .with_attr("type", "result")
            .with_child(
                Element::new("field", ns::XDATA)
                    .with_attr("var", "FORM_TYPE")
                    .with_attr("type", "hidden")
                    .with_child(Element::new("value", ns::XDATA).with_text(ns::MUC_ROOMINFO)),
            )
            .with_child(field("muc#roominfo_description", c.description.clone()))
            .with_child(field(
                "muc#roominfo_subject",
                room.subject
                    .as_ref()
                    .map(|s| s.text.clone())
                    .unwrap_or_default(),
            ))
            .with_child(field(
                "muc#roominfo_occupants",
                room.occupants.len().to_string(),
            )),
    );
    Ok(q)
}

/// §6.5: a room's items (the occupants are not disclosed).
pub(super) fn room_items(svc: &Service, room_jid: &str) -> Result<Element, MucError> {
    svc.room(room_jid).ok_or(MucError::NoRoom)?;
    Ok(Element::new("query", ns::DISCO_ITEMS))
}

/// An iq to occupant `nick`. XEP-0410 §3: a ping from an occupant is
/// answered by the service (result while the sender is joined,
/// `not-acceptable` when it is not), so a client learns whether it is
/// still in the room. Other iqs are not relayed to occupants
/// (`service-unavailable`).
pub(super) fn occupant_iq(
    svc: &Service,
    el: &Element,
    room_jid: &str,
    nick: &str,
    from: &str,
) -> Result<Option<Element>, MucError> {
    let room = svc.room(room_jid).ok_or(MucError::NotOccupant)?;
    let joined = room.nick_of(from).is_some();
    let is_ping = el.get_child("ping", ns::PING).is_some() && el.attr("type") == Some("get");
    if !joined {
        return Err(MucError::NotOccupant);
    }
    if !is_ping {
        return Err(MucError::ServiceUnavailable);
    }
    if !room.occupants.contains_key(nick) {
        return Err(MucError::NoRoom);
    }
    Ok(None)
}
