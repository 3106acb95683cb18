//! Who hears of a PEP change, and what they get (XEP-0163 §4.3, XEP-0060
//! §7.1.2.1 / §7.2.2.1 / §8.4.2): the owner's available sessions and, for
//! the `presence` and `open` models, the available sessions of every
//! contact with a presence subscription to the owner (from/both in the
//! owner's roster), each only if its XEP-0115 caps list `node+notify`
//! (XEP-0163 §4.3.1 "filtered notifications"), never across a block list.
//! A `whitelist` node (the owner alone on the list) tells only the owner.
//!
//! Sessions on other nodes are reached through the router (the mesh), as
//! any stanza. The caps a session announced are in its last presence in
//! the shared session table; what a `ver` wants is the replicated caps
//! table ([`super::caps`]).
use starling_raft::command::{PepAccess, PepItem};
use starling_raft::state::StateData;

use super::super::Ctx;
use super::caps;
use crate::router::Target;
use crate::xmpp::{ns, Element};

/// The caps key under which the session `full` (last presence `presence`)
/// has its interests: its verified `ver`, else its own (unverified) row.
pub fn caps_key_of(data: &StateData, full: &str, presence: Option<&str>) -> Option<String> {
    if let Some(key) = presence.and_then(caps::key_of_presence_xml) {
        if data.caps.get(&key).is_some() {
            return Some(key);
        }
    }
    let own = starling_raft::pep::session_caps_key(full);
    data.caps.get(&own).is_some().then_some(own)
}

/// Whether the session `full`, whose last presence is `presence`, wants
/// `node`.
pub fn wants(data: &StateData, full: &str, presence: Option<&str>, node: &str) -> bool {
    caps_key_of(data, full, presence)
        .and_then(|k| data.caps.get(&k))
        .is_some_and(|nodes| nodes.iter().any(|n| n == node))
}

/// The sessions a change of `owner`'s `node` is notified to.
pub fn recipients(ctx: &Ctx<'_>, owner: &str, node: &str) -> Vec<Target> {
    let bares: Vec<String> = {
        let state = ctx.cluster.state().read();
        let access = state
            .data
            .pep_nodes
            .get(&(owner.to_string(), node.to_string()))
            .map_or(PepAccess::Presence, |n| n.config.access);
        let mut bares = vec![owner.to_string()];
        if access != PepAccess::Whitelist {
            bares.extend(
                state
                    .data
                    .roster_of(owner)
                    .filter(|i| i.has_from())
                    .map(|i| i.jid.clone()),
            );
        }
        bares
    };
    let mut targets = Vec::new();
    for bare in bares {
        for t in ctx.router.sessions_of(&bare, None) {
            if t.binding.available && ctx.router.blocked(owner, &t.full).is_none() {
                targets.push(t);
            }
        }
    }
    let state = ctx.cluster.state().read();
    targets.retain(|t| wants(&state.data, &t.full, t.binding.presence.as_deref(), node));
    targets
}

/// An `<item/>` of `item_ns` (pubsub or pubsub#event) with its payload.
pub fn item_element(item_ns: &str, id: &str, item: &PepItem) -> Element {
    let mut el = Element::new("item", item_ns).with_attr("id", id);
    if !item.payload.is_empty() {
        if let Ok(p) = crate::xmpp::parse_stanza(&item.payload) {
            el.push(p);
        }
    }
    el
}

/// The event message (XEP-0060 §7.1.2.1) `from` the owner's bare JID.
pub fn event_message(owner: &str, to: &str, event: &Element) -> Element {
    Element::new("message", ns::CLIENT)
        .with_attr("from", owner)
        .with_attr("to", to)
        .with_attr("type", "headline")
        .with_attr("id", crate::xmpp::id::random_id())
        .with_child(Element::new("event", ns::PUBSUB_EVENT).with_child(event.clone()))
}

/// One event message per target.
pub fn events(owner: &str, targets: &[Target], event: &Element) -> Vec<(Target, Element)> {
    targets
        .iter()
        .map(|t| (t.clone(), event_message(owner, &t.full, event)))
        .collect()
}

/// XEP-0163 §4.3.2 (XEP-0060 §7.1.2.? `send_last_published_item`
/// `on_sub_and_presence`): for a session of `bare` coming online with caps
/// `caps_key`, the last item of every node it wants of the accounts whose
/// presence it receives (and of its own account), that it may read.
pub fn last_items(data: &StateData, bare: &str, full: &str, caps_key: &str) -> Vec<Element> {
    let mut owners = vec![bare.to_string()];
    owners.extend(
        data.roster_of(bare)
            .filter(|i| i.has_to())
            .map(|i| i.jid.clone()),
    );
    owners
        .iter()
        .flat_map(|owner| last_items_of(data, owner, bare, full, caps_key))
        .collect()
}

/// The last items of `owner`'s nodes that the session `full` of `bare`
/// (caps `caps_key`) wants and may read (`bare` receives `owner`'s
/// presence, or is the owner).
fn last_items_of(
    data: &StateData,
    owner: &str,
    bare: &str,
    full: &str,
    caps_key: &str,
) -> Vec<Element> {
    let Some(wanted) = data.caps.get(&caps_key.to_string()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (node, n) in data.pep_nodes_of(owner) {
        if !n.config.send_last || !wanted.iter().any(|w| w == node) {
            continue;
        }
        if n.config.access == PepAccess::Whitelist && owner != bare {
            continue;
        }
        if let Some((id, item)) = data.pep_items_of(owner, node).pop() {
            let event = Element::new("items", ns::PUBSUB_EVENT)
                .with_attr("node", node.clone())
                .with_child(item_element(ns::PUBSUB_EVENT, &id, item));
            out.push(event_message(owner, full, &event));
        }
    }
    out
}

/// XEP-0163 §4.3.2 when a subscription starts: `subscriber` now receives
/// `owner`'s presence, so each of its available sessions gets the last
/// items of `owner`'s nodes it wants (as at its initial presence).
pub async fn on_new_subscriber(ctx: &Ctx<'_>, owner: &str, subscriber: &str) {
    let mut out = Vec::new();
    for t in ctx.router.sessions_of(subscriber, None) {
        if !t.binding.available || ctx.router.blocked(owner, &t.full).is_some() {
            continue;
        }
        let state = ctx.cluster.state().read();
        let Some(key) = caps_key_of(&state.data, &t.full, t.binding.presence.as_deref()) else {
            continue;
        };
        for el in last_items_of(&state.data, owner, subscriber, &t.full, &key) {
            out.push((t.clone(), el));
        }
    }
    for (t, el) in out {
        let _ = ctx.router.deliver(&t, el).await;
    }
}
