//! Presence (RFC 6121 §4) and presence subscriptions (§3).
//!
//! Availability, priority and the last presence of every session are in
//! the shared session table, so probes are answered from it on any node
//! (§4.3.2) and bare-JID message routing (§8.5.2) sees every node's
//! resources. Subscription changes are one replicated command that updates
//! both roster items (see `starling_raft::subscription`).
//!
//! XEP-0191 block lists stop presence both ways (§3.3): a contact on the
//! user's list, or whose list has the user, neither gets the user's
//! broadcasts, subscription stanzas and probe answers nor sends any; the
//! checks are where presence is addressed to a session (`to_available_sessions`,
//! `presences_of`) and where a client's typed presence starts.
use starling_raft::command::{Command, Response, RosterItem, SubAction};
use tracing::warn;

use std::collections::HashSet;

use tokio::sync::mpsc;

use super::{addressee, error_reply, Addressee, Ctx, Effect, Effects, Me};
use crate::router::{Router, Target};
use crate::xmpp::jid::{BareJid, Jid};
use crate::xmpp::{ns, Element, StanzaCondition, StanzaError};

/// Most distinct JIDs one session may send directed presence to (RFC 6121
/// §4.6); more get `resource-constraint`.
pub const MAX_DIRECTED: usize = 1000;

pub async fn handle(ctx: &Ctx<'_>, me: &Me<'_>, el: Element) -> Effects {
    let ty = el.attr("type").map(str::to_string);
    if el.attr("to").is_none() {
        return match ty.as_deref() {
            None => {
                let mut el = el;
                // XEP-0153 §4.1: the avatar's hash for contacts.
                super::vcard::add_photo_update(ctx, me.bare.as_str(), &mut el);
                let mut effects = available(ctx.domain, me, el.clone());
                if effects
                    .0
                    .iter()
                    .any(|e| matches!(e, Effect::Available { .. }))
                {
                    // XEP-0115 / XEP-0163 §4.3.2: the client's caps (asked
                    // for if unknown) and, when it comes online, the last
                    // items it wants.
                    effects
                        .0
                        .extend(super::pep::caps::on_presence(ctx, me, &el, !me.available).0);
                }
                effects
            }
            Some("unavailable") => unavailable(me, el),
            // Anything else without a `to` is meaningless: ignore.
            _ => Effects::none(),
        };
    }
    let target = match addressee(ctx.domain, me, &el) {
        Ok(t) => t,
        Err(e) => return error_reply(ctx.domain, me, &el, e),
    };
    let to: Jid = match target {
        Addressee::Server => return Effects::none(),
        Addressee::OwnAccount => Jid::from(me.bare.clone()),
        Addressee::Account(b) => Jid::from(b),
        Addressee::Other(j) => j,
    };
    // XEP-0191 §3.3: presence (subscriptions and probes included) to or
    // from a blocked JID: the user gets `not-acceptable`, the blocked
    // sender nothing.
    if let Some(refused) = super::blocked(ctx, me, &el, &to.to_string()) {
        return refused;
    }
    match ty.as_deref() {
        Some(kind @ ("subscribe" | "subscribed" | "unsubscribe" | "unsubscribed")) => {
            let action = match kind {
                "subscribe" => SubAction::Subscribe,
                "subscribed" => SubAction::Subscribed,
                "unsubscribe" => SubAction::Unsubscribe,
                _ => SubAction::Unsubscribed,
            };
            let contact = to.to_bare();
            if contact.domain().as_str() != ctx.domain {
                return error_reply(
                    ctx.domain,
                    me,
                    &el,
                    StanzaError::new(StanzaCondition::RemoteServerNotFound),
                );
            }
            if &contact == me.bare {
                return Effects::none();
            }
            if !ctx.router.user_exists(&contact) {
                // §3.1.2: the user's server adds the contact with a
                // pending-out state and pushes it, whether or not the
                // contact exists (whose server silently ignores it,
                // §3.1.3), so the request looks the same either way.
                if action != SubAction::Subscribe {
                    return Effects::none();
                }
                return match pending_out(ctx, me, contact.as_str()).await {
                    Ok(()) => Effects::none(),
                    Err(e) => error_reply(ctx.domain, me, &el, e),
                };
            }
            match subscription(ctx, me.bare, contact.as_str(), action).await {
                Ok(()) => Effects::none(),
                Err(e) => error_reply(ctx.domain, me, &el, e),
            }
        }
        Some("probe") => {
            // §4.3: probes are the server's business; answer if subscribed.
            let contact = to.to_bare().to_string();
            let subscribed = {
                let state = ctx.cluster.state().read();
                state
                    .data
                    .roster
                    .get(&(me.bare.to_string(), contact.clone()))
                    .is_some_and(|i| i.has_to())
            };
            if !subscribed {
                return Effects::none();
            }
            Effects(
                presences_of(ctx.router, &contact, me.full.as_str())
                    .into_iter()
                    .map(Effect::Write)
                    .collect(),
            )
        }
        _ => directed(ctx.domain, me, el, to.to_string(), ty.as_deref()),
    }
}

/// Directed presence (§4.6), available or unavailable, or an error: routed
/// to `to`, and the session remembers whom it owes an unavailable presence.
fn directed(domain: &str, me: &Me<'_>, mut el: Element, to: String, ty: Option<&str>) -> Effects {
    el.set_attr("to", to.clone());
    let mut effects = Effects::none();
    match ty {
        None => {
            // Bounded: each target is owed an unavailable presence at the
            // end (§4.6.3), so a session may not collect them without limit.
            if !me.directed.contains(&to) && me.directed.len() >= MAX_DIRECTED {
                return error_reply(
                    domain,
                    me,
                    &el,
                    StanzaError::with_text(
                        StanzaCondition::ResourceConstraint,
                        format!("at most {MAX_DIRECTED} directed presence targets per session"),
                    ),
                );
            }
            effects.push(Effect::DirectedAdd(to));
        }
        Some("unavailable") => effects.push(Effect::DirectedRemove(to)),
        Some(_) => {}
    }
    effects.push(Effect::Route(el));
    effects
}

/// The current presence of every available session of `contact`, addressed
/// to `to` (answering a probe from the shared table, §4.3.2); none across
/// a block list (XEP-0191 §3.3: probes from the blocked are not answered).
pub fn presences_of(router: &Router, contact: &str, to: &str) -> Vec<Element> {
    router
        .sessions_of(contact, None)
        .into_iter()
        .filter(|t| t.binding.available && router.blocked(&t.full, to).is_none())
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

/// The user's roster items (whose presence it receives: subscription
/// to/both; and pending requests).
fn watched(router: &Router, bare: &str) -> Vec<RosterItem> {
    let state = router.cluster().state().read();
    state.data.roster_of(bare).cloned().collect()
}

/// Sends `p` (from this session) to every available session of `bare`,
/// but not across a block list (XEP-0191 §3.3).
async fn to_available_sessions(router: &Router, bare: &str, p: &Element, skip: Option<&str>) {
    let from = p.attr("from").unwrap_or_default();
    for t in router.sessions_of(bare, None) {
        if !t.binding.available || Some(t.full.as_str()) == skip {
            continue;
        }
        if router.blocked(from, &t.full).is_some() {
            continue;
        }
        let mut copy = p.clone();
        copy.set_attr("to", t.full.clone());
        let _ = router.deliver(&t, copy).await;
    }
}

/// Available presence from the client: initial (§4.2) or an update (§4.4).
fn available(domain: &str, me: &Me<'_>, mut el: Element) -> Effects {
    let priority = match el.get_child("priority", ns::CLIENT) {
        Some(p) => match p.text().trim().parse::<i8>() {
            Ok(v) => v,
            Err(_) => {
                return error_reply(
                    domain,
                    me,
                    &el,
                    StanzaError::new(StanzaCondition::BadRequest),
                )
            }
        },
        None => 0,
    };
    let initial = !me.available;
    el.remove_attr("to");
    // Reflected back to the client (§4.2.2: the user's own resource
    // receives it too).
    let mut own = el.clone();
    own.set_attr("to", me.full.to_string());
    let mut effects = Effects(vec![
        Effect::Available {
            priority,
            presence: el.clone(),
        },
        Effect::PublishBinding,
        // §4.2.2 / §4.4.2: to every contact with a from/both subscription
        // and to the user's other available resources.
        Effect::Broadcast(el),
        Effect::Write(own),
    ]);
    if initial {
        // §4.2.3 / §4.3.2 / §3.1.3, then XEP-0160 offline messages when the
        // priority is not negative.
        effects.push(Effect::InitialPresence);
        if priority >= 0 {
            effects.push(Effect::PullQueue);
        }
    }
    effects
}

/// Unavailable presence from the client (§4.5).
fn unavailable(me: &Me<'_>, mut el: Element) -> Effects {
    el.remove_attr("to");
    if !me.available {
        return Effects::none();
    }
    Effects(vec![
        Effect::Unavailable,
        Effect::PublishBinding,
        Effect::Broadcast(el.clone()),
        Effect::UnavailableToDirected(el),
    ])
}

/// [`Effect::Broadcast`]: `el`, this session's presence, to the available
/// sessions of every contact with a from/both subscription and of the
/// user's other resources (§4.2.2, §4.4.2, §4.5.2).
pub async fn broadcast(router: &Router, bare: &str, full: &str, el: &Element) {
    for contact in watchers(router, bare) {
        to_available_sessions(router, &contact, el, None).await;
    }
    to_available_sessions(router, bare, el, Some(full)).await;
}

/// [`Effect::InitialPresence`]: what a session's initial presence brings
/// its client, read from the shared tables: the presence of contacts the
/// user is subscribed to (probes answered from the shared table, §4.2.3 /
/// §4.3.2), of the user's other resources, and pending subscription
/// requests (§3.1.3).
pub fn initial_presence(router: &Router, bare: &str, full: &str) -> Vec<Element> {
    let items = watched(router, bare);
    let mut out = Vec::new();
    for item in items.iter().filter(|i| i.has_to()) {
        out.extend(presences_of(router, &item.jid, full));
    }
    out.extend(
        presences_of(router, bare, full)
            .into_iter()
            .filter(|p| p.attr("from") != Some(full)),
    );
    for item in items
        .iter()
        .filter(|i| i.pending_in && router.blocked(&i.jid, full).is_none())
    {
        out.push(
            Element::new("presence", ns::CLIENT)
                .with_attr("type", "subscribe")
                .with_attr("from", item.jid.clone())
                .with_attr("to", bare),
        );
    }
    out
}

/// [`Effect::UnavailableToDirected`]: `el` to every entity that got
/// directed presence from the session (§4.6.3).
pub async fn to_directed(router: &Router, el: &Element, targets: HashSet<String>) {
    for to in targets {
        let mut copy = el.clone();
        copy.set_attr("to", to);
        router.route(copy).await;
    }
}

/// A session that was available ended: unavailable presence for it to
/// contacts, the user's other resources and directed-presence targets
/// (§4.5.2, §4.6.3).
pub async fn session_ended(router: &Router, bare: &str, full: &str, directed: HashSet<String>) {
    let el = Element::new("presence", ns::CLIENT)
        .with_attr("type", "unavailable")
        .with_attr("from", full);
    broadcast(router, bare, full, &el).await;
    to_directed(router, &el, directed).await;
}

/// A subscription stanza from this session's user to `contact` (RFC 6121
/// §3): one replicated command changes both roster items, then the pushes,
/// deliveries and presence exchanges of §3.1-§3.3 follow. A change that
/// would add an item to a full roster (the user's or the contact's, see
/// `xmpp.max_roster_items`) changes nothing: its error is returned, for
/// the sender.
pub async fn subscription(
    ctx: &Ctx<'_>,
    user: &BareJid,
    contact: &str,
    action: SubAction,
) -> Result<(), StanzaError> {
    let router = ctx.router;
    let cmd = Command::Subscription {
        user: user.to_string(),
        contact: contact.to_string(),
        action,
        max_items: ctx.max_roster_items,
    };
    let resp = match ctx.cluster.write(cmd).await {
        Ok(a) => a.response,
        Err(e) => {
            warn!(error = %e, "subscription change not committed");
            return Ok(());
        }
    };
    if let Some(e) = super::roster::refusal(&resp) {
        return Err(e);
    }
    let Response::Subscription {
        user_item,
        user_changed,
        contact_item,
        contact_changed,
        deliver,
        auto_approved,
    } = resp
    else {
        return Ok(());
    };
    let user = user.to_string();
    if user_changed {
        super::roster::push(router, &user, user_item.as_ref(), contact).await;
    }
    if contact_changed && contact_item.as_ref().is_none_or(|i| !i.stub) {
        super::roster::push(router, contact, contact_item.as_ref(), &user).await;
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
        to_available_sessions(router, contact, &stanza, None).await;
    }
    match action {
        SubAction::Subscribe if auto_approved => {
            // §3.1.3: the contact's server answers for the contact, and the
            // contact's presence follows (§3.1.5).
            let ok = Element::new("presence", ns::CLIENT)
                .with_attr("type", "subscribed")
                .with_attr("from", contact);
            to_available_sessions(router, &user, &ok, None).await;
            for t in router.sessions_of(&user, None) {
                if t.binding.available {
                    for p in presences_of(router, contact, &t.full) {
                        let _ = router.deliver(&t, p).await;
                    }
                }
            }
            super::pep::notify::on_new_subscriber(ctx, contact, &user).await;
        }
        SubAction::Subscribed if deliver => {
            // §3.1.5: the user's available resources' presence goes to the
            // contact's available resources.
            for t in router.sessions_of(contact, None) {
                if t.binding.available {
                    for p in presences_of(router, &user, &t.full) {
                        let _ = router.deliver(&t, p).await;
                    }
                }
            }
            // XEP-0163 §4.3.2: and the new subscriber gets the user's
            // last PEP items.
            super::pep::notify::on_new_subscriber(ctx, &user, contact).await;
        }
        SubAction::Unsubscribe if deliver => {
            // §3.3.3: the contact's resources go unavailable for the user.
            unavailable_from(router, contact, &user).await;
        }
        SubAction::Unsubscribed if deliver => {
            // §3.2.2: the user's resources go unavailable for the contact.
            unavailable_from(router, &user, contact).await;
        }
        _ => {}
    }
    Ok(())
}

/// RFC 6121 §3.1.2 for a contact that has no account here: `ask` on the
/// user's item (added if missing, subscription none) and a roster push;
/// nothing changes for an item that already asks or already has `to`.
async fn pending_out(ctx: &Ctx<'_>, me: &Me<'_>, contact: &str) -> Result<(), StanzaError> {
    let owner = me.bare.to_string();
    let existing = {
        let state = ctx.cluster.state().read();
        state
            .data
            .roster
            .get(&(owner.clone(), contact.to_string()))
            .cloned()
    };
    if existing
        .as_ref()
        .is_some_and(|i| !i.stub && (i.ask || i.has_to()))
    {
        return Ok(());
    }
    let mut item = existing.unwrap_or_else(|| RosterItem {
        jid: contact.to_string(),
        ..RosterItem::default()
    });
    item.stub = false;
    item.ask = true;
    let cmd = Command::SetRosterItem {
        owner: owner.clone(),
        item: item.clone(),
        max_items: ctx.max_roster_items,
    };
    let resp = match ctx.cluster.write(cmd).await {
        Ok(a) => a.response,
        Err(e) => {
            warn!(error = %e, "pending-out roster item not committed");
            return Err(StanzaError::new(StanzaCondition::InternalServerError));
        }
    };
    if let Some(e) = super::roster::refusal(&resp) {
        return Err(e);
    }
    super::roster::push(ctx.router, &owner, Some(&item), contact).await;
    Ok(())
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
    broadcast(router, &bare, full, &el).await;
}

/// Announces the sessions the router's liveness task dropped with their
/// dead node (see `router::liveness`), until the router stops sending.
pub async fn announce_lost_sessions(
    router: Router,
    mut lost: mpsc::UnboundedReceiver<Vec<String>>,
) {
    while let Some(sessions) = lost.recv().await {
        for full in sessions {
            unavailable_for_lost_session(&router, &full).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xmpp::jid::FullJid;

    fn stanza(xml: &str) -> Element {
        crate::xmpp::parse_stanza(xml).expect("test stanza parses")
    }

    fn with_me<R>(available: bool, directed: &[&str], f: impl FnOnce(&Me<'_>) -> R) -> R {
        let full = FullJid::new("juliet@localhost/balcony").expect("jid");
        let bare = full.to_bare();
        let directed: HashSet<String> = directed.iter().map(|s| s.to_string()).collect();
        f(&Me {
            full: &full,
            bare: &bare,
            available,
            directed: &directed,
        })
    }

    #[test]
    fn initial_presence_publishes_before_it_broadcasts_then_reads_contacts_then_pulls() {
        let el = stanza(
            "<presence xmlns='jabber:client' from='juliet@localhost/balcony'><priority>5</priority></presence>",
        );
        let effects = with_me(false, &[], |me| available("localhost", me, el.clone()));
        let mut own = el.clone();
        own.set_attr("to", "juliet@localhost/balcony");
        assert_eq!(
            effects.0,
            vec![
                Effect::Available {
                    priority: 5,
                    presence: el.clone()
                },
                Effect::PublishBinding,
                Effect::Broadcast(el),
                Effect::Write(own),
                Effect::InitialPresence,
                Effect::PullQueue,
            ]
        );
    }

    #[test]
    fn an_update_is_broadcast_without_initial_presence_and_negative_priority_pulls_nothing() {
        let update = stanza("<presence xmlns='jabber:client'><show>away</show></presence>");
        let effects = with_me(true, &[], |me| available("localhost", me, update));
        assert!(!effects.0.contains(&Effect::InitialPresence));
        assert!(!effects.0.contains(&Effect::PullQueue));
        // XEP-0160 / RFC 6121 §4.7.2.3: a negative priority gets no
        // offline messages.
        let negative = stanza("<presence xmlns='jabber:client'><priority>-1</priority></presence>");
        let effects = with_me(false, &[], |me| available("localhost", me, negative));
        assert!(effects.0.contains(&Effect::InitialPresence));
        assert!(!effects.0.contains(&Effect::PullQueue));
    }

    #[test]
    fn a_bad_priority_is_bad_request_and_changes_nothing() {
        let el =
            stanza("<presence xmlns='jabber:client' id='p1'><priority>high</priority></presence>");
        let effects = with_me(false, &[], |me| available("localhost", me, el));
        let [Effect::Write(err)] = effects.0.as_slice() else {
            panic!("one error reply expected, got {effects:?}");
        };
        assert_eq!(err.attr("type"), Some("error"));
        // No `to`: handled for the account, so from nobody (RFC 6120 §8.1.2.1).
        assert_eq!(err.attr("from"), None);
        assert_eq!(err.attr("to"), Some("juliet@localhost/balcony"));
        assert!(err.to_xml(ns::CLIENT).contains("bad-request"));
    }

    #[test]
    fn unavailable_only_when_available_and_then_to_directed_targets_too() {
        let el = stanza("<presence xmlns='jabber:client' type='unavailable' to='x'/>");
        assert!(with_me(false, &[], |me| unavailable(me, el.clone())).is_empty());
        let effects = with_me(true, &["romeo@localhost/r"], |me| unavailable(me, el));
        let mut sent = stanza("<presence xmlns='jabber:client' type='unavailable'/>");
        sent.remove_attr("to");
        assert_eq!(
            effects.0,
            vec![
                Effect::Unavailable,
                Effect::PublishBinding,
                Effect::Broadcast(sent.clone()),
                Effect::UnavailableToDirected(sent),
            ]
        );
    }

    #[test]
    fn directed_presence_is_remembered_forgotten_and_bounded() {
        let el = stanza("<presence xmlns='jabber:client'/>");
        let to = "romeo@montague.example/orchard".to_string();
        let effects = with_me(true, &[], |me| {
            directed("localhost", me, el.clone(), to.clone(), None)
        });
        let mut routed = el.clone();
        routed.set_attr("to", to.clone());
        assert_eq!(
            effects.0,
            vec![
                Effect::DirectedAdd(to.clone()),
                Effect::Route(routed.clone())
            ]
        );
        let gone = with_me(true, &[&to], |me| {
            directed("localhost", me, el.clone(), to.clone(), Some("unavailable"))
        });
        assert_eq!(gone.0[0], Effect::DirectedRemove(to.clone()));
        // At the cap a new target is refused; one already known is not.
        let many: Vec<String> = (0..MAX_DIRECTED).map(|i| format!("c{i}@x")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let refused = with_me(true, &many, |me| {
            directed("localhost", me, el.clone(), to.clone(), None)
        });
        let [Effect::Write(err)] = refused.0.as_slice() else {
            panic!("one error reply expected, got {refused:?}");
        };
        assert!(err.to_xml(ns::CLIENT).contains("resource-constraint"));
        let known = with_me(true, &many, |me| {
            directed("localhost", me, el.clone(), "c7@x".to_string(), None)
        });
        assert_eq!(known.0[0], Effect::DirectedAdd("c7@x".to_string()));
    }
}
