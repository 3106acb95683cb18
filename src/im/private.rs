//! XEP-0049 private XML storage: elements a user stores on the server for
//! itself, keyed by namespace and name, replicated ([`Command::SetPrivate`]),
//! at most `pep.max_private_bytes` per account (`resource-constraint`
//! beyond). Another user's data is `forbidden` (§2.3, handled where the
//! iq is addressed); a query with no child is `not-acceptable` (§2.3, as
//! the XEP's example does); reserved namespaces (`jabber:*`,
//! `http://jabber.org/*`, `vcard-temp`: §2.3 makes refusing them optional)
//! are `not-acceptable`, so nothing stored here passes for a protocol
//! element.
//!
//! XEP-0411 (mirroring XEP-0048 bookmarks stored here into PEP) is not
//! done: clients of today use XEP-0402 bookmarks in PEP directly.
use starling_raft::command::{Budget, Command, Response};
use starling_raft::pep::private_key;

use super::{error_reply, iq_result, Ctx, Effects, Me};
use crate::xmpp::{ns, Element, StanzaCondition, StanzaError};

fn reserved(namespace: &str) -> bool {
    namespace.starts_with("jabber:")
        || namespace.starts_with("http://jabber.org/")
        || namespace == ns::VCARD
        || namespace.is_empty()
}

pub async fn handle(ctx: &Ctx<'_>, me: &Me<'_>, iq: Element) -> Effects {
    match run(ctx, me, &iq).await {
        Ok(e) => e,
        Err(e) => error_reply(ctx.domain, me, &iq, e),
    }
}

async fn run(ctx: &Ctx<'_>, me: &Me<'_>, iq: &Element) -> Result<Effects, StanzaError> {
    let query = iq
        .children()
        .next()
        .ok_or_else(|| StanzaError::new(StanzaCondition::BadRequest))?;
    let children: Vec<&Element> = query.children().collect();
    let Some(first) = children.first() else {
        return Err(StanzaError::with_text(
            StanzaCondition::NotAcceptable,
            "a child element names what to store or get",
        ));
    };
    if children.iter().any(|c| reserved(c.ns())) {
        return Err(StanzaError::with_text(
            StanzaCondition::NotAcceptable,
            "that namespace is reserved",
        ));
    }
    let owner = me.bare.to_string();
    if iq.attr("type") == Some("get") {
        if children.len() != 1 {
            return Err(StanzaError::with_text(
                StanzaCondition::NotAcceptable,
                "one namespace per get",
            ));
        }
        super::pep::read_index(ctx).await.map_err(|e| e.stanza())?;
        let key = private_key(first.name(), first.ns());
        let stored = {
            let state = ctx.cluster.state().read();
            state.data.private.get(&(owner, key)).cloned()
        };
        let el = stored
            .and_then(|x| crate::xmpp::parse_stanza(&x).ok())
            .unwrap_or_else(|| Element::new(first.name(), first.ns()));
        return Ok(Effects::write(
            iq_result(me, iq).with_child(Element::new("query", ns::PRIVATE).with_child(el)),
        ));
    }
    // A set may carry several elements (§2.2); each is stored.
    for c in children {
        let cmd = Command::SetPrivate {
            owner: owner.clone(),
            key: private_key(c.name(), c.ns()),
            xml: c.to_standalone_xml(),
            max_bytes: ctx.services.pep.max_private_bytes,
        };
        match super::pep::commit(ctx, cmd).await.map_err(|e| e.stanza())? {
            Response::PrivateSet => {}
            Response::OverBudget {
                budget: Budget::PrivateBytes,
                cap,
            } => {
                return Err(StanzaError::with_text(
                    StanzaCondition::ResourceConstraint,
                    format!("private storage is limited to {cap} bytes per account"),
                ))
            }
            _ => return Err(StanzaError::new(StanzaCondition::InternalServerError)),
        }
    }
    Ok(Effects::write(iq_result(me, iq)))
}
