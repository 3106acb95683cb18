//! What a stanza carries for routing: its kind and type (RFC 6121 §8.5),
//! the XEP-0359 stanza-ids the server assigns (and strips when a client
//! spoofs them, §5), the queue key of a guarded message, and XEP-0280
//! carbon copies.
use super::custody;
use crate::xmpp::id::random_id;
use crate::xmpp::jid::bare_of;
use crate::xmpp::{ns, Element};

/// Stanza kinds and types that decide routing.
pub(super) fn stanza_type(el: &Element) -> &str {
    match (el.name(), el.attr("type")) {
        ("message", None) => "normal",
        ("presence", None) => "available",
        (_, Some(t)) => t,
        (_, None) => "",
    }
}

/// Message types eligible for carbons (XEP-0280 §6.1).
pub(super) fn carbon_eligible(el: &Element) -> bool {
    let t = stanza_type(el);
    let eligible = t == "chat" || (t == "normal" && el.has_child("body", ns::CLIENT));
    eligible && !el.has_child("private", ns::CARBONS) && !el.has_child("no-copy", ns::HINTS)
}

/// Adds the XEP-0359 `<stanza-id/>` for `by` (the recipient's bare JID),
/// replacing any a client put there to spoof it (XEP-0359 §5), unless the
/// message already carries ours (a stored message sent again keeps it).
pub(super) fn add_stanza_id(el: &mut Element, by: &str) {
    if stanza_id_of(el, by).is_some() {
        return;
    }
    el.push(
        Element::new("stanza-id", ns::SID)
            .with_attr("id", random_id())
            .with_attr("by", by),
    );
}

/// The custody and queue key of a message its guard or custody keeps for
/// its recipient (a `chat` or `normal` message with the recipient's
/// XEP-0359 stanza id): (bare JID, queue id).
pub fn queued_key(el: &Element) -> Option<custody::Key> {
    let bare = bare_of(el.attr("to")?);
    let id = queued_id(el, bare)?;
    Some((bare.to_string(), id))
}

/// The queue id of a message for account `bare`: its XEP-0359 stanza id by
/// `bare`, on a `chat` or `normal` message (the types a guard stores).
pub fn queued_id(el: &Element, bare: &str) -> Option<String> {
    if el.name() != "message" || !matches!(el.attr("type").unwrap_or("normal"), "normal" | "chat") {
        return None;
    }
    stanza_id_of(el, bare)
}

/// The stanza id `by` assigned, if any.
pub fn stanza_id_of(el: &Element, by: &str) -> Option<String> {
    el.children()
        .find(|c| c.is("stanza-id", ns::SID) && c.attr("by") == Some(by))
        .and_then(|c| c.attr("id"))
        .map(str::to_string)
}

/// Removes stanza ids claiming to be from `by` (a client must not set them).
pub fn strip_stanza_ids(el: &mut Element, by: &str) {
    el.remove_children(|c| c.is("stanza-id", ns::SID) && c.attr("by") == Some(by));
}

/// A carbon copy (`received` or `sent`) of `el` for `to` (XEP-0280 §6, §7).
pub(super) fn carbon(kind: &str, bare: &str, to: &str, el: &Element) -> Element {
    Element::new("message", ns::CLIENT)
        .with_attr("from", bare)
        .with_attr("to", to)
        .with_attr("type", stanza_type(el))
        .with_child(
            Element::new(kind, ns::CARBONS)
                .with_child(Element::new("forwarded", ns::FORWARD).with_child(el.clone())),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanza_ids_are_added_once_and_spoofed_ones_removed() {
        let mut m = Element::new("message", ns::CLIENT).with_child(
            Element::new("stanza-id", ns::SID)
                .with_attr("id", "fake")
                .with_attr("by", "b@x"),
        );
        strip_stanza_ids(&mut m, "b@x");
        assert!(stanza_id_of(&m, "b@x").is_none());
        add_stanza_id(&mut m, "b@x");
        let id = stanza_id_of(&m, "b@x").expect("id");
        add_stanza_id(&mut m, "b@x");
        assert_eq!(stanza_id_of(&m, "b@x"), Some(id), "kept when sent again");
        assert_eq!(m.children().count(), 1);
    }

    #[test]
    fn carbon_rules() {
        let chat = Element::new("message", ns::CLIENT).with_attr("type", "chat");
        assert!(carbon_eligible(&chat));
        let normal = Element::new("message", ns::CLIENT);
        assert!(!carbon_eligible(&normal));
        let normal_body = normal
            .clone()
            .with_child(Element::new("body", ns::CLIENT).with_text("x"));
        assert!(carbon_eligible(&normal_body));
        let private = chat
            .clone()
            .with_child(Element::new("private", ns::CARBONS));
        assert!(!carbon_eligible(&private));
        let c = carbon("received", "a@x", "a@x/2", &chat);
        let fwd = c
            .get_child("received", ns::CARBONS)
            .and_then(|r| r.get_child("forwarded", ns::FORWARD))
            .and_then(|f| f.get_child("message", ns::CLIENT));
        assert!(fwd.is_some());
    }
}
