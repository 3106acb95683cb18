//! Service discovery (XEP-0030) for the server and for accounts, software
//! version (XEP-0092).
//!
//! Which entity a disco#info asks about: the domain is the server; the
//! user's own bare JID, or no `to` at all (RFC 6120 §10.3.3: handled by
//! the server on behalf of the account), is the account (identity
//! `account/registered`); another user's bare JID is that account. Neither
//! has any node: a request for one is `item-not-found` (XEP-0030 §3.1,
//! "If the JID ... or node ... does not exist, the responding entity MUST
//! return an <item-not-found/> error").
use super::{error_reply, iq_result, Ctx, Effects, Me};
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
    for f in features {
        q.push(feature(f));
    }
    Effects::write(iq_result(me, iq).with_child(q))
}

/// disco#info of an account (XEP-0030 §3, identity account/registered).
pub fn account_info(ctx: &Ctx<'_>, me: &Me<'_>, iq: &Element) -> Effects {
    if let Some(e) = unknown_node(ctx, me, iq) {
        return e;
    }
    let mut q = Element::new("query", ns::DISCO_INFO)
        .with_child(
            Element::new("identity", ns::DISCO_INFO)
                .with_attr("category", "account")
                .with_attr("type", "registered"),
        )
        .with_child(feature(ns::DISCO_INFO))
        .with_child(feature(ns::SID))
        .with_child(feature(ns::BLOCKING))
        // XEP-0357 §4: the account supports push notifications.
        .with_child(feature(ns::PUSH));
    // XEP-0313 only where archiving is on (`[archive] enabled`).
    if ctx.router.archiver().is_some() {
        q = q
            .with_child(feature(ns::MAM))
            .with_child(feature(ns::MAM_EXTENDED));
    }
    Effects::write(iq_result(me, iq).with_child(q))
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
