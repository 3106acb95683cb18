//! Presence (RFC 6121 §4) and presence subscriptions (§3).
//!
//! Availability, priority and the last presence of every session are in
//! the shared session table, so probes are answered from it on any node
//! (§4.3.2) and bare-JID message routing (§8.5.2) sees every node's
//! resources. Subscription changes are one replicated command that updates
//! both roster items (see `starling_raft::subscription`).
use starling_raft::command::{Command, Response, RosterItem, SubAction};
use tracing::warn;

use super::{addressee, reply_error, Addressee};
use crate::c2s::session::Session;
use crate::router::{Router, Target};
use crate::xmpp::jid::Jid;
use crate::xmpp::{ns, Element, StanzaCondition, StanzaError};

/// Most distinct JIDs one session may send directed presence to (RFC 6121
/// §4.6); more get `resource-constraint`.
pub const MAX_DIRECTED: usize = 1000;

pub async fn handle(s: &mut Session, mut el: Element) {
    let ty = el.attr("type").map(str::to_string);
    if el.attr("to").is_none() {
        match ty.as_deref() {
            None => return available(s, el).await,
            Some("unavailable") => return unavailable(s, el).await,
            // Anything else without a `to` is meaningless: ignore.
            _ => return,
        }
    }
    let target = match addressee(s, &el) {
        Ok(t) => t,
        Err(e) => return reply_error(s, &el, e),
    };
    let to: Jid = match target {
        Addressee::Server => return,
        Addressee::OwnAccount => Jid::from(s.bare.clone()),
        Addressee::Account(b) => Jid::from(b),
        Addressee::Other(j) => j,
    };
    match ty.as_deref() {
        Some(kind @ ("subscribe" | "subscribed" | "unsubscribe" | "unsubscribed")) => {
            let action = match kind {
                "subscribe" => SubAction::Subscribe,
                "subscribed" => SubAction::Subscribed,
                "unsubscribe" => SubAction::Unsubscribe,
                _ => SubAction::Unsubscribed,
            };
            let contact = to.to_bare();
            if contact.domain().as_str() != s.shared.domain {
                return reply_error(
                    s,
                    &el,
                    StanzaError::new(StanzaCondition::RemoteServerNotFound),
                );
            }
            if contact == s.bare || !s.shared.router.user_exists(&contact) {
                // §3.1.3: no such contact: silently ignored.
                return;
            }
            subscription(s, contact.as_str(), action).await;
        }
        Some("probe") => {
            // §4.3: probes are the server's business; answer if subscribed.
            let contact = to.to_bare().to_string();
            let subscribed = {
                let state = s.shared.cluster.state().read();
                state
                    .data
                    .roster
                    .get(&(s.bare.to_string(), contact.clone()))
                    .is_some_and(|i| i.has_to())
            };
            if subscribed {
                let router = s.shared.router.clone();
                for p in presences_of(&router, &contact, s.full.as_str()) {
                    s.write_stanza(p);
                }
            }
        }
        _ => {
            // Directed presence (§4.6), available or unavailable, or error.
            let to = to.to_string();
            el.set_attr("to", to.clone());
            if ty.is_none() {
                // Bounded: each target is owed an unavailable presence at
                // the end (§4.6.3), so a session may not collect them
                // without limit.
                if !s.directed.contains(&to) && s.directed.len() >= MAX_DIRECTED {
                    return reply_error(
                        s,
                        &el,
                        StanzaError::with_text(
                            StanzaCondition::ResourceConstraint,
                            format!("at most {MAX_DIRECTED} directed presence targets per session"),
                        ),
                    );
                }
                s.directed.insert(to.clone());
            } else if ty.as_deref() == Some("unavailable") {
                s.directed.remove(&to);
            }
            s.shared.router.clone().route(el).await;
        }
    }
}

/// The current presence of every available session of `contact`, addressed
/// to `to` (answering a probe from the shared table, §4.3.2).
pub fn presences_of(router: &Router, contact: &str, to: &str) -> Vec<Element> {
    router
        .sessions_of(contact, None)
        .into_iter()
        .filter(|t| t.binding.available)
        .map(|t| stored_presence(&t, to))
        .collect()
}

fn stored_presence(t: &Target, to: &str) -> Element {
    let mut p = t
        .binding
        .presence
        .as_deref()
        .and_then(|x| crate::xmpp::parse_stanza(x).ok())
        .unwrap_or_else(|| Element::new("presence", ns::CLIENT));
    p.set_attr("from", t.full.clone());
    p.set_attr("to", to);
    p
}

/// Contacts that receive `bare`'s presence (subscription from/both).
fn watchers(router: &Router, bare: &str) -> Vec<String> {
    let state = router.cluster().state().read();
    state
        .data
        .roster_of(bare)
        .filter(|i| i.has_from())
        .map(|i| i.jid.clone())
        .collect()
}

/// Contacts whose presence the user receives (subscription to/both).
fn watched(s: &Session) -> Vec<RosterItem> {
    let state = s.shared.cluster.state().read();
    state.data.roster_of(s.bare.as_str()).cloned().collect()
}

/// Sends `p` (from this session) to every available session of `bare`.
async fn to_available_sessions(router: &Router, bare: &str, p: &Element, skip: Option<&str>) {
    for t in router.sessions_of(bare, None) {
        if !t.binding.available || Some(t.full.as_str()) == skip {
            continue;
        }
        let mut copy = p.clone();
        copy.set_attr("to", t.full.clone());
        let _ = router.deliver(&t, copy).await;
    }
}

/// Broadcast of available presence: initial (§4.2) or an update (§4.4).
async fn available(s: &mut Session, mut el: Element) {
    let priority = match el.get_child("priority", ns::CLIENT) {
        Some(p) => match p.text().trim().parse::<i8>() {
            Ok(v) => v,
            Err(_) => return reply_error(s, &el, StanzaError::new(StanzaCondition::BadRequest)),
        },
        None => 0,
    };
    let initial = !s.available;
    s.available = true;
    s.priority = priority;
    el.remove_attr("to");
    s.presence = Some(el.clone());
    if !s.publish_binding().await {
        warn!("presence not published to the shared table");
    }
    let router = s.shared.router.clone();
    // §4.2.2 / §4.4.2: to every contact with a from/both subscription and
    // to the user's other available resources.
    for contact in watchers(&router, s.bare.as_str()) {
        to_available_sessions(&router, &contact, &el, None).await;
    }
    to_available_sessions(&router, s.bare.as_str(), &el, Some(s.full.as_str())).await;
    // Reflect the presence back to the client (§4.2.2: the user's own
    // resource receives it too).
    let mut own = el.clone();
    own.set_attr("to", s.full.to_string());
    s.write_stanza(own);
    if !initial {
        return;
    }
    // Initial presence: the presence of contacts the user is subscribed
    // to (probes answered from the shared table, §4.2.3 / §4.3.2), of the
    // user's other resources, pending subscription requests (§3.1.3), and
    // offline messages (XEP-0160) when the priority is not negative.
    let items = watched(s);
    for item in &items {
        if item.has_to() {
            for p in presences_of(&router, &item.jid, s.full.as_str()) {
                s.write_stanza(p);
            }
        }
    }
    for p in presences_of(&router, s.bare.as_str(), s.full.as_str()) {
        if p.attr("from") != Some(s.full.as_str()) {
            s.write_stanza(p);
        }
    }
    for item in items.iter().filter(|i| i.pending_in) {
        let req = Element::new("presence", ns::CLIENT)
            .with_attr("type", "subscribe")
            .with_attr("from", item.jid.clone())
            .with_attr("to", s.bare.to_string());
        s.write_stanza(req);
    }
    if priority >= 0 {
        super::offline::pull(s, true);
    }
}

/// Unavailable presence from the client (§4.5).
async fn unavailable(s: &mut Session, mut el: Element) {
    el.remove_attr("to");
    if s.available {
        s.available = false;
        s.presence = None;
        let _ = s.publish_binding().await;
        send_unavailable(s, el).await;
    }
}

/// The session ended while available: unavailable presence for it (§4.5.2).
pub async fn broadcast_unavailable(s: &mut Session) {
    s.available = false;
    let el = Element::new("presence", ns::CLIENT)
        .with_attr("type", "unavailable")
        .with_attr("from", s.full.to_string());
    send_unavailable(s, el).await;
}

async fn send_unavailable(s: &mut Session, el: Element) {
    let router = s.shared.router.clone();
    for contact in watchers(&router, s.bare.as_str()) {
        to_available_sessions(&router, &contact, &el, None).await;
    }
    let (bare, full) = (s.bare.to_string(), s.full.to_string());
    to_available_sessions(&router, &bare, &el, Some(&full)).await;
    // §4.6.3: and to every entity that got directed presence.
    for to in std::mem::take(&mut s.directed) {
        let mut copy = el.clone();
        copy.set_attr("to", to);
        router.route(copy).await;
    }
}

/// A subscription stanza from this session's user to `contact` (RFC 6121
/// §3): one replicated command changes both roster items, then the pushes,
/// deliveries and presence exchanges of §3.1-§3.3 follow.
pub async fn subscription(s: &mut Session, contact: &str, action: SubAction) {
    let router = s.shared.router.clone();
    let cmd = Command::Subscription {
        user: s.bare.to_string(),
        contact: contact.to_string(),
        action,
    };
    let resp = match s.shared.cluster.write(cmd).await {
        Ok(a) => a.response,
        Err(e) => {
            warn!(error = %e, "subscription change not committed");
            return;
        }
    };
    let Response::Subscription {
        user_item,
        user_changed,
        contact_item,
        contact_changed,
        deliver,
        auto_approved,
    } = resp
    else {
        return;
    };
    let user = s.bare.to_string();
    if user_changed {
        super::roster::push(&router, &user, user_item.as_ref(), contact).await;
    }
    if contact_changed && contact_item.as_ref().is_none_or(|i| !i.stub) {
        super::roster::push(&router, contact, contact_item.as_ref(), &user).await;
    }
    let kind = match action {
        SubAction::Subscribe => "subscribe",
        SubAction::Subscribed => "subscribed",
        SubAction::Unsubscribe => "unsubscribe",
        SubAction::Unsubscribed => "unsubscribed",
    };
    // §3.1.2: subscription stanzas are stamped with the bare JID.
    let stanza = Element::new("presence", ns::CLIENT)
        .with_attr("type", kind)
        .with_attr("from", user.clone());
    if deliver {
        to_available_sessions(&router, contact, &stanza, None).await;
    }
    match action {
        SubAction::Subscribe if auto_approved => {
            // §3.1.3: the contact's server answers for the contact, and the
            // contact's presence follows (§3.1.5).
            let ok = Element::new("presence", ns::CLIENT)
                .with_attr("type", "subscribed")
                .with_attr("from", contact);
            to_available_sessions(&router, &user, &ok, None).await;
            for t in router.sessions_of(&user, None) {
                if t.binding.available {
                    for p in presences_of(&router, contact, &t.full) {
                        let _ = router.deliver(&t, p).await;
                    }
                }
            }
        }
        SubAction::Subscribed if deliver => {
            // §3.1.5: the user's available resources' presence goes to the
            // contact's available resources.
            for t in router.sessions_of(contact, None) {
                if t.binding.available {
                    for p in presences_of(&router, &user, &t.full) {
                        let _ = router.deliver(&t, p).await;
                    }
                }
            }
        }
        SubAction::Unsubscribe if deliver => {
            // §3.3.3: the contact's resources go unavailable for the user.
            unavailable_from(&router, contact, &user).await;
        }
        SubAction::Unsubscribed if deliver => {
            // §3.2.2: the user's resources go unavailable for the contact.
            unavailable_from(&router, &user, contact).await;
        }
        _ => {}
    }
}

/// Unavailable presence from every available session of `from_bare` to
/// the available sessions of `to_bare`.
async fn unavailable_from(router: &Router, from_bare: &str, to_bare: &str) {
    for src in router.sessions_of(from_bare, None) {
        if !src.binding.available {
            continue;
        }
        let p = Element::new("presence", ns::CLIENT)
            .with_attr("type", "unavailable")
            .with_attr("from", src.full.clone());
        to_available_sessions(router, to_bare, &p, None).await;
    }
}

/// Unavailable presence for a session that ended without its node's help
/// (the node died): to the user's watchers and other resources (§4.5.2).
pub async fn unavailable_for_lost_session(router: &Router, full: &str) {
    let bare = crate::xmpp::jid::bare_of(full).to_string();
    let el = Element::new("presence", ns::CLIENT)
        .with_attr("type", "unavailable")
        .with_attr("from", full);
    for contact in watchers(router, &bare) {
        to_available_sessions(router, &contact, &el, None).await;
    }
    to_available_sessions(router, &bare, &el, Some(full)).await;
}
