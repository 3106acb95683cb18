//! The stanzas a room sends, as pure functions of the replicated room:
//! occupant presence with its `muc#user` item and status codes (XEP-0045
//! §7.2.3, §7.2.16 and the status code registry §15.6.2), XEP-0421
//! occupant ids, the subject (§7.2.15), history copies with their XEP-0203
//! stamp (§7.2.14).
use sha2::{Digest, Sha256};
use starling_raft::muc::{Affiliation, Occupant, Role, Room};

use crate::clock::datetime;
use crate::xmpp::jid::bare_of;
use crate::xmpp::{ns, Element};

use super::HistoryItem;

/// Status codes (§15.6.2).
pub const SELF: u16 = 110;
pub const NON_ANONYMOUS: u16 = 100;
pub const CREATED: u16 = 201;
pub const NEW_NICK: u16 = 303;
pub const BANNED: u16 = 301;
pub const KICKED: u16 = 307;
pub const AFFILIATION_CHANGE: u16 = 321;
pub const MEMBERS_ONLY: u16 = 322;
/// The occupant's session ended without it leaving (its node died).
pub const TECHNICAL: u16 = 333;

/// What of an occupant's presence the room keeps and shows (§7.2.3: the
/// service reflects the occupant's availability and status): `<show/>`,
/// `<status/>`, XEP-0115 caps and the XEP-0153 avatar hash, at most
/// `max_bytes` serialized (longer: kept without the status text).
pub fn kept_presence(el: &Element, max_bytes: usize) -> String {
    let mut p = Element::new("presence", ns::CLIENT);
    for c in el.children() {
        let keep = c.is("show", ns::CLIENT)
            || c.is("status", ns::CLIENT)
            || c.is("c", "http://jabber.org/protocol/caps")
            || c.is("x", "vcard-temp:x:update");
        if keep {
            p.push(c.clone());
        }
    }
    if p.children().next().is_none() {
        return String::new();
    }
    let xml = p.to_standalone_xml();
    if xml.len() <= max_bytes {
        return xml;
    }
    p.remove_children(|c| c.is("status", ns::CLIENT));
    let xml = p.to_standalone_xml();
    if xml.len() <= max_bytes {
        xml
    } else {
        String::new()
    }
}

/// XEP-0421 §3: an id stable for one user in one room, not revealing the
/// user's JID (the room's random salt is in the hash).
pub fn occupant_id(room: &Room, full: &str) -> String {
    let mut h = Sha256::new();
    h.update(room.salt.as_bytes());
    h.update([0]);
    h.update(bare_of(full).as_bytes());
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn occupant_id_el(room: &Room, full: &str) -> Element {
    Element::new("occupant-id", ns::OCCUPANT_ID).with_attr("id", occupant_id(room, full))
}

/// Whether `viewer` (an occupant's full JID, or none) sees real JIDs:
/// non-anonymous rooms show them to all, semi-anonymous ones to
/// moderators only (§4.2).
pub fn sees_jids(room: &Room, viewer: &str) -> bool {
    room.config.whois_anyone
        || room
            .occupants
            .values()
            .any(|o| o.full == viewer && o.role == Role::Moderator)
}

/// What one presence of occupant `nick` says, beyond who it is about.
#[derive(Debug, Default, Clone)]
pub struct PresenceFacts<'a> {
    pub unavailable: bool,
    pub codes: Vec<u16>,
    /// For a nick change (§7.6.3): the new nick.
    pub new_nick: Option<&'a str>,
    pub reason: Option<&'a str>,
}

/// The presence of occupant `nick` (`o`, affiliation `aff`) for `to`.
pub fn occupant_presence(
    room_jid: &str,
    room: &Room,
    nick: &str,
    o: &Occupant,
    aff: Affiliation,
    to: &str,
    facts: &PresenceFacts<'_>,
) -> Element {
    let mut item = Element::new("item", ns::MUC_USER)
        .with_attr("affiliation", aff.as_str())
        .with_attr(
            "role",
            if facts.unavailable {
                "none"
            } else {
                o.role.as_str()
            },
        );
    if sees_jids(room, to) || o.full == to {
        item.set_attr("jid", o.full.clone());
    }
    if let Some(n) = facts.new_nick {
        item.set_attr("nick", n);
    }
    if let Some(r) = facts.reason {
        item.push(Element::new("reason", ns::MUC_USER).with_text(r));
    }
    let mut x = Element::new("x", ns::MUC_USER).with_child(item);
    let mut codes = facts.codes.clone();
    if o.full == to {
        codes.push(SELF);
        if room.config.whois_anyone && !facts.unavailable {
            codes.push(NON_ANONYMOUS);
        }
    }
    codes.sort_unstable();
    codes.dedup();
    for c in codes {
        x.push(Element::new("status", ns::MUC_USER).with_attr("code", c.to_string()));
    }
    let mut p = Element::new("presence", ns::CLIENT)
        .with_attr("from", format!("{room_jid}/{nick}"))
        .with_attr("to", to);
    if facts.unavailable {
        p.set_attr("type", "unavailable");
    } else if !o.presence.is_empty() {
        if let Ok(stored) = crate::xmpp::parse_stanza(&o.presence) {
            for c in stored.children() {
                p.push(c.clone());
            }
        }
    }
    p.push(x);
    p.push(occupant_id_el(room, &o.full));
    p
}

/// §7.2.15: the subject, sent to a newcomer after the history (an empty
/// `<subject/>` when none is set).
pub fn subject_message(room_jid: &str, room: &Room, to: &str) -> Element {
    let (from, text) = match &room.subject {
        Some(s) => (format!("{room_jid}/{}", s.by), s.text.clone()),
        None => (room_jid.to_string(), String::new()),
    };
    let mut m = Element::new("message", ns::CLIENT)
        .with_attr("type", "groupchat")
        .with_attr("from", from)
        .with_attr("to", to)
        .with_attr("id", crate::xmpp::id::random_id());
    let mut subject = Element::new("subject", ns::CLIENT);
    if !text.is_empty() {
        subject.push_text(text);
    }
    m.push(subject);
    if let Some(s) = &room.subject {
        m.push(
            Element::new("delay", ns::DELAY)
                .with_attr("from", room_jid)
                .with_attr("stamp", datetime(s.stamp_ms)),
        );
    }
    m
}

/// §7.2.14: a history message for `to`, with its XEP-0203 stamp.
pub fn history_copy(room_jid: &str, item: &HistoryItem, to: &str) -> Element {
    let mut m = item.el.clone();
    m.set_attr("to", to);
    m.push(
        Element::new("delay", ns::DELAY)
            .with_attr("from", room_jid)
            .with_attr("stamp", datetime(item.stamp_ms)),
    );
    m
}

/// Which history a newcomer asked for (§7.2.14 `<history/>`): the last
/// `maxstanzas`, those newer than `seconds` or `since`; `maxchars='0'`
/// asks for none.
pub fn select_history<'a>(
    items: &'a [HistoryItem],
    request: Option<&Element>,
    cap: usize,
    now_ms: u64,
) -> &'a [HistoryItem] {
    let mut max = cap;
    let mut after_ms = 0u64;
    if let Some(h) = request {
        if let Some(n) = h.attr("maxstanzas").and_then(|v| v.parse::<usize>().ok()) {
            max = max.min(n);
        }
        if h.attr("maxchars") == Some("0") {
            max = 0;
        }
        if let Some(s) = h.attr("seconds").and_then(|v| v.parse::<u64>().ok()) {
            after_ms = now_ms.saturating_sub(s.saturating_mul(1000));
        }
    }
    let fresh: usize = items.iter().filter(|i| i.stamp_ms < after_ms).count();
    let items = &items[fresh..];
    &items[items.len().saturating_sub(max)..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_raft::muc::RoomConfig;

    fn room() -> Room {
        let mut r = Room {
            config: RoomConfig::default(),
            subject: None,
            creator: "a@x".into(),
            created_ms: 0,
            locked: false,
            salt: "salt".into(),
            occupants: Default::default(),
        };
        for (nick, full, role) in [
            ("mod", "m@x/1", Role::Moderator),
            ("p", "p@x/1", Role::Participant),
        ] {
            r.occupants.insert(
                nick.into(),
                Occupant {
                    full: full.into(),
                    node: 1,
                    role,
                    joined_ms: 0,
                    presence: String::new(),
                },
            );
        }
        r
    }

    #[test]
    fn semi_anonymous_rooms_show_jids_to_moderators_and_self_only() {
        let r = room();
        let p = &r.occupants["p"];
        let facts = PresenceFacts::default();
        let to_mod = occupant_presence("r@c", &r, "p", p, Affiliation::None, "m@x/1", &facts);
        let item = |el: &Element| {
            el.get_child("x", ns::MUC_USER)
                .and_then(|x| x.get_child("item", ns::MUC_USER))
                .and_then(|i| i.attr("jid"))
                .map(str::to_string)
        };
        assert_eq!(item(&to_mod).as_deref(), Some("p@x/1"));
        let mut other = r.clone();
        other.occupants.get_mut("mod").expect("mod").role = Role::Participant;
        let to_peer = occupant_presence("r@c", &other, "p", p, Affiliation::None, "m@x/1", &facts);
        assert_eq!(item(&to_peer), None);
        let to_self = occupant_presence("r@c", &r, "p", p, Affiliation::None, "p@x/1", &facts);
        let codes: Vec<_> = to_self
            .get_child("x", ns::MUC_USER)
            .map(|x| x.children().filter_map(|c| c.attr("code")).collect())
            .unwrap_or_default();
        assert_eq!(codes, ["110"]);
        // XEP-0421: stable per user, different across users and rooms.
        assert_eq!(occupant_id(&r, "p@x/1"), occupant_id(&r, "p@x/2"));
        assert_ne!(occupant_id(&r, "p@x/1"), occupant_id(&r, "m@x/1"));
    }

    #[test]
    fn history_selection_follows_the_request() {
        let items: Vec<HistoryItem> = (0..5)
            .map(|i| HistoryItem {
                el: Element::new("message", ns::CLIENT),
                stamp_ms: i * 1000,
                id: i.to_string(),
            })
            .collect();
        let h = |xml: &str| crate::xmpp::parse_stanza(xml).expect("xml");
        assert_eq!(select_history(&items, None, 3, 5000).len(), 3);
        let two = h("<history xmlns='http://jabber.org/protocol/muc' maxstanzas='2'/>");
        assert_eq!(select_history(&items, Some(&two), 3, 5000)[0].id, "3");
        let none = h("<history xmlns='http://jabber.org/protocol/muc' maxchars='0'/>");
        assert!(select_history(&items, Some(&none), 3, 5000).is_empty());
        let recent = h("<history xmlns='http://jabber.org/protocol/muc' seconds='2'/>");
        assert_eq!(select_history(&items, Some(&recent), 10, 5000).len(), 2);
    }
}
