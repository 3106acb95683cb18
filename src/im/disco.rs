//! Service discovery (XEP-0030) for the server and for accounts, software
//! version (XEP-0092).
//!
//! Which entity a disco#info asks about: the domain is the server; the
//! user's own bare JID, or no `to` at all (RFC 6120 §10.3.3: handled by
//! the server on behalf of the account), is the account (identity
//! `account/registered`); another user's bare JID is that account. Neither
//! has any node but an account's PEP nodes (XEP-0163): a request for
//! another is `item-not-found` (XEP-0030 §3.1, "If the JID ... or node ...
//! does not exist, the responding entity MUST return an <item-not-found/>
//! error").
//!
//! Another account is described only to its contacts (a presence
//! subscription to it): anyone else gets `service-unavailable`, the answer
//! for a missing account (RFC 6121 §8.5.1), so disco does not reveal which
//! accounts exist.
//!
//! The server's answer carries XEP-0128 extended forms from
//! `[server_info]`: XEP-0157 contact addresses and XEP-0455 status pages.
use super::{error_reply, iq_result, Ctx, Effects, Me};
use crate::xmpp::jid::BareJid;
use crate::xmpp::{ns, Element, StanzaCondition, StanzaError};

fn feature(var: &str) -> Element {
    Element::new("feature", ns::DISCO_INFO).with_attr("var", var)
}

/// `item-not-found` for a disco#info naming a node (none exist here).
fn unknown_node(ctx: &Ctx<'_>, me: &Me<'_>, iq: &Element) -> Option<Effects> {
    iq.get_child("query", ns::DISCO_INFO)
        .and_then(|q| q.attr("node"))
        .map(|_| {
            error_reply(
                ctx.domain,
                me,
                iq,
                StanzaError::new(StanzaCondition::ItemNotFound),
            )
        })
}

/// disco#info of the server (XEP-0030 §3.1).
pub fn server_info(ctx: &Ctx<'_>, me: &Me<'_>, iq: &Element) -> Effects {
    if let Some(e) = unknown_node(ctx, me, iq) {
        return e;
    }
    let mut q = Element::new("query", ns::DISCO_INFO).with_child(
        Element::new("identity", ns::DISCO_INFO)
            .with_attr("category", "server")
            .with_attr("type", "im")
            .with_attr("name", "Starling"),
    );
    let mut features = vec![
        ns::DISCO_INFO,
        ns::DISCO_ITEMS,
        ns::VERSION,
        ns::PING,
        ns::CARBONS,
        ns::SID,
        ns::DELAY,
        // XEP-0191 §3.1: clients ask the server.
        ns::BLOCKING,
        "msgoffline",
    ];
    if ctx.registration {
        features.push(ns::REGISTER);
    }
    // XEP-0054 §2 and XEP-0049: the server stores vCards and private XML.
    features.push(ns::VCARD);
    features.push(ns::PRIVATE);
    for f in features {
        q.push(feature(f));
    }
    let info = &ctx.services.server_info;
    // XEP-0157 §2: the addresses, one list-multi field each.
    if let Some(form) = extended_form(ns::SERVERINFO, &info.contact_fields()) {
        q.push(form);
    }
    // XEP-0455 §4: where to look when the server is down.
    if let Some(form) = extended_form(
        ns::SOS,
        &[("external-status-addresses", info.outage_status.as_slice())],
    ) {
        q.push(form);
    }
    Effects::write(iq_result(me, iq).with_child(q))
}

/// An XEP-0128 form of `form_type` with a list-multi field per non-empty
/// list; none when every list is empty.
fn extended_form(form_type: &str, fields: &[(&str, &[String])]) -> Option<Element> {
    if fields.iter().all(|(_, v)| v.is_empty()) {
        return None;
    }
    let mut x = Element::new("x", ns::XDATA)
        .with_attr("type", "result")
        .with_child(
            Element::new("field", ns::XDATA)
                .with_attr("var", "FORM_TYPE")
                .with_attr("type", "hidden")
                .with_child(Element::new("value", ns::XDATA).with_text(form_type)),
        );
    for (var, values) in fields.iter().filter(|(_, v)| !v.is_empty()) {
        let mut f = Element::new("field", ns::XDATA)
            .with_attr("var", *var)
            .with_attr("type", "list-multi");
        for v in values.iter() {
            f.push(Element::new("value", ns::XDATA).with_text(v.clone()));
        }
        x.push(f);
    }
    Some(x)
}

/// Whether `me` is a contact of `owner`: receives its presence (from/both
/// in `owner`'s roster). The owner is its own contact.
pub fn is_contact(ctx: &Ctx<'_>, owner: &BareJid, me: &Me<'_>) -> bool {
    if owner == me.bare {
        return true;
    }
    let state = ctx.cluster.state().read();
    state
        .data
        .roster
        .get(&(owner.to_string(), me.bare.to_string()))
        .is_some_and(|i| i.has_from())
}

/// XEP-0163 §6 / XEP-0060 §5.2: the user's own PEP nodes, as items of the
/// account.
pub fn account_items(ctx: &Ctx<'_>, me: &Me<'_>, iq: &Element) -> Effects {
    let node = iq
        .get_child("query", ns::DISCO_ITEMS)
        .and_then(|q| q.attr("node"));
    let mut q = Element::new("query", ns::DISCO_ITEMS).with_opt_attr("node", node);
    if node.is_none() {
        let state = ctx.cluster.state().read();
        for (name, _) in state.data.pep_nodes_of(me.bare.as_str()) {
            q.push(
                Element::new("item", ns::DISCO_ITEMS)
                    .with_attr("jid", me.bare.to_string())
                    .with_attr("node", name.clone()),
            );
        }
    }
    Effects::write(iq_result(me, iq).with_child(q))
}

/// The features of a PEP service (XEP-0163 §6, XEP-0060 §10).
const PEP_FEATURES: &[&str] = &[
    "http://jabber.org/protocol/pubsub#access-open",
    "http://jabber.org/protocol/pubsub#access-presence",
    "http://jabber.org/protocol/pubsub#access-whitelist",
    "http://jabber.org/protocol/pubsub#auto-create",
    "http://jabber.org/protocol/pubsub#auto-subscribe",
    "http://jabber.org/protocol/pubsub#config-node",
    "http://jabber.org/protocol/pubsub#create-and-configure",
    "http://jabber.org/protocol/pubsub#create-nodes",
    "http://jabber.org/protocol/pubsub#delete-items",
    "http://jabber.org/protocol/pubsub#delete-nodes",
    "http://jabber.org/protocol/pubsub#filtered-notifications",
    "http://jabber.org/protocol/pubsub#item-ids",
    "http://jabber.org/protocol/pubsub#last-published",
    "http://jabber.org/protocol/pubsub#multi-items",
    "http://jabber.org/protocol/pubsub#persistent-items",
    "http://jabber.org/protocol/pubsub#presence-notifications",
    "http://jabber.org/protocol/pubsub#publish",
    "http://jabber.org/protocol/pubsub#publish-options",
    "http://jabber.org/protocol/pubsub#retract-items",
    "http://jabber.org/protocol/pubsub#retrieve-items",
];

/// disco#info of an account (XEP-0030 §3, identity account/registered),
/// with its PEP service (XEP-0163 §6: identity pubsub/pep); of one of its
/// PEP nodes with `node` (XEP-0060 §5.3: identity pubsub/leaf).
pub fn account_info(ctx: &Ctx<'_>, me: &Me<'_>, iq: &Element, owner: &BareJid) -> Effects {
    let node = iq
        .get_child("query", ns::DISCO_INFO)
        .and_then(|q| q.attr("node"));
    if let Some(node) = node {
        let exists = {
            let state = ctx.cluster.state().read();
            state
                .data
                .pep_nodes
                .get(&(owner.to_string(), node.to_string()))
                .is_some()
        };
        if !exists {
            return unknown_node(ctx, me, iq).unwrap_or_else(Effects::none);
        }
        let q = Element::new("query", ns::DISCO_INFO)
            .with_attr("node", node)
            .with_child(
                Element::new("identity", ns::DISCO_INFO)
                    .with_attr("category", "pubsub")
                    .with_attr("type", "leaf"),
            )
            .with_child(feature(ns::PUBSUB));
        return Effects::write(with_from(iq_result(me, iq).with_child(q), iq, owner));
    }
    let mut q = Element::new("query", ns::DISCO_INFO)
        .with_child(
            Element::new("identity", ns::DISCO_INFO)
                .with_attr("category", "account")
                .with_attr("type", "registered"),
        )
        .with_child(
            Element::new("identity", ns::DISCO_INFO)
                .with_attr("category", "pubsub")
                .with_attr("type", "pep"),
        )
        .with_child(feature(ns::DISCO_INFO))
        .with_child(feature(ns::DISCO_ITEMS))
        .with_child(feature(ns::SID))
        .with_child(feature(ns::BLOCKING))
        // XEP-0357 §4: the account supports push notifications.
        .with_child(feature(ns::PUSH))
        .with_child(feature(ns::PUBSUB));
    for f in PEP_FEATURES {
        q.push(feature(f));
    }
    // XEP-0313 only where archiving is on (`[archive] enabled`).
    if ctx.router.archiver().is_some() {
        q = q
            .with_child(feature(ns::MAM))
            .with_child(feature(ns::MAM_EXTENDED));
    }
    Effects::write(with_from(iq_result(me, iq).with_child(q), iq, owner))
}

/// An answer about another account comes from it.
fn with_from(mut reply: Element, iq: &Element, owner: &BareJid) -> Element {
    if iq.attr("to").is_some() {
        reply.set_attr("from", owner.to_string());
    }
    reply
}

/// disco#items of the server: the multi-user chat service, if it is on
/// (XEP-0045 §6.1: clients find it among the server's items); of an
/// account or a node: none.
pub fn items(ctx: &Ctx<'_>, me: &Me<'_>, iq: &Element, server: bool) -> Element {
    let node = iq
        .get_child("query", ns::DISCO_ITEMS)
        .and_then(|q| q.attr("node"));
    let mut q = Element::new("query", ns::DISCO_ITEMS).with_opt_attr("node", node);
    if let (true, None, Some(muc)) = (server, node, ctx.router.muc_domain()) {
        q.push(
            Element::new("item", ns::DISCO_ITEMS)
                .with_attr("jid", muc)
                .with_attr("name", "Chatrooms"),
        );
    }
    iq_result(me, iq).with_child(q)
}

/// XEP-0092 software version (no OS: it helps attackers more than users).
pub fn version(me: &Me<'_>, iq: &Element) -> Element {
    iq_result(me, iq).with_child(
        Element::new("query", ns::VERSION)
            .with_child(Element::new("name", ns::VERSION).with_text("Starling"))
            .with_child(Element::new("version", ns::VERSION).with_text(env!("CARGO_PKG_VERSION"))),
    )
}
