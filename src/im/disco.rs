//! Service discovery (XEP-0030) for the server and for accounts, software
//! version (XEP-0092).
use super::{iq_result, Ctx, Me};
use crate::xmpp::{ns, Element};

fn feature(var: &str) -> Element {
    Element::new("feature", ns::DISCO_INFO).with_attr("var", var)
}

/// disco#info of the server (XEP-0030 §3.1).
pub fn server_info(ctx: &Ctx<'_>, me: &Me<'_>, iq: &Element) -> Element {
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
        "msgoffline",
    ];
    if ctx.registration {
        features.push(ns::REGISTER);
    }
    for f in features {
        q.push(feature(f));
    }
    iq_result(me, iq).with_child(q)
}

/// disco#info of an account (XEP-0030 §3, identity account/registered).
pub fn account_info(me: &Me<'_>, iq: &Element) -> Element {
    let q = Element::new("query", ns::DISCO_INFO)
        .with_child(
            Element::new("identity", ns::DISCO_INFO)
                .with_attr("category", "account")
                .with_attr("type", "registered"),
        )
        .with_child(feature(ns::DISCO_INFO))
        .with_child(feature(ns::SID));
    iq_result(me, iq).with_child(q)
}

/// disco#items: no items (no components yet).
pub fn items(me: &Me<'_>, iq: &Element) -> Element {
    let node = iq
        .get_child("query", ns::DISCO_ITEMS)
        .and_then(|q| q.attr("node"));
    iq_result(me, iq).with_child(Element::new("query", ns::DISCO_ITEMS).with_opt_attr("node", node))
}

/// XEP-0092 software version (no OS: it helps attackers more than users).
pub fn version(me: &Me<'_>, iq: &Element) -> Element {
    iq_result(me, iq).with_child(
        Element::new("query", ns::VERSION)
            .with_child(Element::new("name", ns::VERSION).with_text("Starling"))
            .with_child(Element::new("version", ns::VERSION).with_text(env!("CARGO_PKG_VERSION"))),
    )
}
