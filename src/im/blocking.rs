//! XEP-0191 Blocking Command, the protocol side: the block list iqs
//! (§3.2 retrieve, §3.3 block, §3.4 unblock, §3.5 unblock all), the pushes
//! of a change to the user's resources, and the presence a change sends to
//! the contacts it concerns.
//!
//! The list is replicated state ([`Command::Block`], [`Command::Unblock`];
//! at most `xmpp.max_block_items` items, more is `resource-constraint`),
//! so every node reads the same list; what a list stops is decided when a
//! stanza is routed, on the sender's node (`router::blocking`).
//!
//! # Pushes
//! §3.3: the server pushes a change "to all of the user's resources that
//! have requested the blocklist". Which sessions asked is per-session state
//! other nodes cannot see, so a change is pushed to every bound resource of
//! the user, on every node: a superset. A client that does not know the
//! namespace answers the push with an error, which the server ignores (iq
//! results and errors to the server are dropped, see `im::handle_iq`).
use starling_raft::command::{Budget, Command, Response};
use tracing::warn;

use super::{error_reply, iq_result, Ctx, Effects, Me};
use crate::router::blocking::list_blocks;
use crate::router::Router;
use crate::xmpp::id::random_id;
use crate::xmpp::jid::Jid;
use crate::xmpp::{ns, Element, StanzaCondition, StanzaError};

pub async fn handle(ctx: &Ctx<'_>, me: &Me<'_>, el: Element) -> Effects {
    let Some(child) = el.children().next() else {
        return Effects::none();
    };
    match (child.name(), el.attr("type")) {
        ("blocklist", Some("get")) => get(ctx, me, &el),
        ("block", Some("set")) => match items(child) {
            Ok(jids) if jids.is_empty() => {
                // §3.3: a block without items is a bad request.
                error_reply(
                    ctx.domain,
                    me,
                    &el,
                    StanzaError::new(StanzaCondition::BadRequest),
                )
            }
            Ok(jids) => block(ctx, me, &el, jids).await,
            Err(e) => error_reply(ctx.domain, me, &el, e),
        },
        ("unblock", Some("set")) => match items(child) {
            Ok(jids) => unblock(ctx, me, &el, jids).await,
            Err(e) => error_reply(ctx.domain, me, &el, e),
        },
        _ => error_reply(
            ctx.domain,
            me,
            &el,
            StanzaError::new(StanzaCondition::BadRequest),
        ),
    }
}

/// The JIDs of the `<item/>`s of a `<block/>` or `<unblock/>`, normalized
/// (nodeprep, nameprep, resourceprep), without repeats, in order; a JID
/// that is missing or invalid is `jid-malformed` (§3.3).
pub fn items(parent: &Element) -> Result<Vec<String>, StanzaError> {
    let mut out: Vec<String> = Vec::new();
    for item in parent.children().filter(|c| c.is("item", ns::BLOCKING)) {
        let jid = item
            .attr("jid")
            .and_then(|j| Jid::new(j).ok())
            .ok_or_else(|| StanzaError::new(StanzaCondition::JidMalformed))?
            .to_string();
        if !out.contains(&jid) {
            out.push(jid);
        }
    }
    Ok(out)
}

/// An element of the blocking namespace with one `<item/>` per JID.
fn with_items(name: &str, jids: &[String]) -> Element {
    let mut e = Element::new(name, ns::BLOCKING);
    for j in jids {
        e.push(Element::new("item", ns::BLOCKING).with_attr("jid", j.clone()));
    }
    e
}

/// §3.2: the list, possibly empty.
fn get(ctx: &Ctx<'_>, me: &Me<'_>, el: &Element) -> Effects {
    let jids: Vec<String> = {
        let state = ctx.cluster.state().read();
        state.data.blocklist_of(me.bare.as_str()).cloned().collect()
    };
    Effects::write(iq_result(me, el).with_child(with_items("blocklist", &jids)))
}

/// Commits `cmd`; the stanza error for the client if it was refused or
/// its outcome is not known.
async fn commit(ctx: &Ctx<'_>, cmd: Command) -> Result<(), StanzaError> {
    match ctx.cluster.write(cmd).await {
        Ok(a) => match a.response {
            Response::BlockListChanged { .. } => Ok(()),
            // RFC 6120 §8.3.3.18: the list is at its cap.
            Response::OverBudget {
                budget: Budget::BlockItems,
                cap,
            } => Err(StanzaError::with_text(
                StanzaCondition::ResourceConstraint,
                format!("the block list is full ({cap} items)"),
            )),
            other => {
                warn!(?other, "unexpected block list result");
                Err(StanzaError::new(StanzaCondition::InternalServerError))
            }
        },
        Err(e) => {
            warn!(error = %e, "block list change not committed");
            Err(StanzaError::new(StanzaCondition::InternalServerError))
        }
    }
}

/// §3.3: block `jids`; the result, the pushes, and unavailable presence
/// to the contacts it blocks.
async fn block(ctx: &Ctx<'_>, me: &Me<'_>, el: &Element, jids: Vec<String>) -> Effects {
    let cmd = Command::Block {
        owner: me.bare.to_string(),
        jids: jids.clone(),
        max_items: ctx.max_block_items,
    };
    if let Err(e) = commit(ctx, cmd).await {
        return error_reply(ctx.domain, me, el, e);
    }
    push(ctx.router, me.bare.as_str(), with_items("block", &jids)).await;
    // §3.3: "the user's server MUST send unavailable presence information
    // to the contact (but only if the contact is allowed to receive
    // presence notifications [...])": to the available sessions of the
    // watchers (subscription from/both) the new items match.
    for (src, target) in watcher_pairs(ctx.router, me.bare.as_str(), &jids) {
        let p = Element::new("presence", ns::CLIENT)
            .with_attr("type", "unavailable")
            .with_attr("from", src)
            .with_attr("to", target.full.clone());
        let _ = ctx.router.deliver(&target, p).await;
    }
    Effects::write(iq_result(me, el))
}

/// §3.4 / §3.5: unblock `jids` (none: all); the result, the pushes, and
/// the user's current presence to the contacts it unblocks.
async fn unblock(ctx: &Ctx<'_>, me: &Me<'_>, el: &Element, jids: Vec<String>) -> Effects {
    let removed: Vec<String> = if jids.is_empty() {
        let state = ctx.cluster.state().read();
        state.data.blocklist_of(me.bare.as_str()).cloned().collect()
    } else {
        jids.clone()
    };
    let cmd = Command::Unblock {
        owner: me.bare.to_string(),
        jids: jids.clone(),
    };
    if let Err(e) = commit(ctx, cmd).await {
        return error_reply(ctx.domain, me, el, e);
    }
    // §3.5: unblocking all is pushed as an `<unblock/>` without items.
    push(ctx.router, me.bare.as_str(), with_items("unblock", &jids)).await;
    // §3.4: "the user's server MUST send the current presence information
    // to the contact (but only if the contact is allowed to receive
    // presence notifications)", unless another item still blocks it.
    for (src, target) in watcher_pairs(ctx.router, me.bare.as_str(), &removed) {
        if ctx.router.blocked(&src, &target.full).is_some() {
            continue;
        }
        for p in super::presence::presences_of(ctx.router, me.bare.as_str(), &target.full) {
            if p.attr("from") == Some(src.as_str()) {
                let _ = ctx.router.deliver(&target, p).await;
            }
        }
    }
    Effects::write(iq_result(me, el))
}

/// Pairs (an available resource of `owner`, an available session of a
/// contact with a from/both subscription that `entries` match).
fn watcher_pairs(
    router: &Router,
    owner: &str,
    entries: &[String],
) -> Vec<(String, crate::router::Target)> {
    let watchers: Vec<String> = {
        let state = router.cluster().state().read();
        state
            .data
            .roster_of(owner)
            .filter(|i| i.has_from())
            .map(|i| i.jid.clone())
            .collect()
    };
    let sources: Vec<String> = router
        .sessions_of(owner, None)
        .into_iter()
        .filter(|t| t.binding.available)
        .map(|t| t.full)
        .collect();
    let mut out = Vec::new();
    for w in watchers {
        for t in router.sessions_of(&w, None) {
            let matched = Jid::new(&t.full)
                .is_ok_and(|j| list_blocks(|e| entries.iter().any(|x| x == e), &j));
            if t.binding.available && matched {
                out.extend(sources.iter().map(|s| (s.clone(), t.clone())));
            }
        }
    }
    out
}

/// Pushes `payload` (`<block/>` or `<unblock/>`) to every session of
/// `owner`, wherever it is (see the module doc).
async fn push(router: &Router, owner: &str, payload: Element) {
    for t in router.sessions_of(owner, None) {
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("type", "set")
            .with_attr("id", format!("block-{}", random_id()))
            .with_attr("to", t.full.clone())
            .with_child(payload.clone());
        let _ = router.deliver(&t, iq).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_of(jids: &[&str]) -> Element {
        let mut b = Element::new("block", ns::BLOCKING);
        for j in jids {
            b.push(Element::new("item", ns::BLOCKING).with_attr("jid", *j));
        }
        b
    }

    #[test]
    fn items_are_normalized_deduplicated_and_checked() {
        assert_eq!(
            items(&block_of(&[
                "Bob@Localhost",
                "bob@localhost",
                "evil.example"
            ])),
            Ok(vec![
                "bob@localhost".to_string(),
                "evil.example".to_string()
            ])
        );
        assert_eq!(items(&block_of(&[])), Ok(vec![]));
        let bad = |jids: &[&str]| items(&block_of(jids)).map_err(|e| e.condition);
        assert_eq!(bad(&["a@b@c"]), Err(StanzaCondition::JidMalformed));
        assert_eq!(bad(&[""]), Err(StanzaCondition::JidMalformed));
        let mut missing = Element::new("block", ns::BLOCKING);
        missing.push(Element::new("item", ns::BLOCKING));
        assert_eq!(
            items(&missing).map_err(|e| e.condition),
            Err(StanzaCondition::JidMalformed)
        );
    }
}
