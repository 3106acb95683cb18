//! Roster management (RFC 6121 §2): get, set, remove, and roster pushes to
//! every resource of the user on every node.
//!
//! A roster is bounded, so that one roster result is too: at most
//! `xmpp.max_roster_items` items (the replicated state refuses one more,
//! and the set is answered `resource-constraint`, RFC 6120 §8.3.3.18), and
//! an item's name and groups together at most [`MAX_ITEM_TEXT_BYTES`]
//! (longer: `not-acceptable`, as RFC 6121 §2.3.3 has for a name or a group
//! longer than the server's limit).
use starling_raft::command::{Budget, Command, Response, RosterItem, SubAction, Subscription};

use super::{error_reply, iq_result, Ctx, Effects, Me};
use crate::router::Router;
use crate::xmpp::id::random_id;
use crate::xmpp::jid::BareJid;
use crate::xmpp::{ns, Element, StanzaCondition, StanzaError};

/// Most bytes of a roster item's name and group names together: 1000
/// items of it make a roster result of a few MB at most.
pub const MAX_ITEM_TEXT_BYTES: usize = 2048;

/// The stanza error for a roster change refused by the replicated state.
pub(crate) fn refusal(response: &Response) -> Option<StanzaError> {
    match response {
        Response::OverBudget {
            budget: Budget::RosterItems,
            cap,
        } => Some(StanzaError::with_text(
            StanzaCondition::ResourceConstraint,
            format!("the roster is full ({cap} items)"),
        )),
        _ => None,
    }
}

/// The `<item/>` of a roster item (RFC 6121 §2.1.2).
pub fn item_element(item: &RosterItem) -> Element {
    let sub = match item.subscription {
        Subscription::None => "none",
        Subscription::To => "to",
        Subscription::From => "from",
        Subscription::Both => "both",
    };
    let mut e = Element::new("item", ns::ROSTER)
        .with_attr("jid", item.jid.clone())
        .with_opt_attr("name", item.name.clone())
        .with_attr("subscription", sub);
    if item.ask {
        e.set_attr("ask", "subscribe");
    }
    if item.approved {
        e.set_attr("approved", "true");
    }
    for g in &item.groups {
        e.push(Element::new("group", ns::ROSTER).with_text(g.clone()));
    }
    e
}

/// Sends a roster push (§2.1.6) for `item` (or its removal) to every
/// session of `owner`, wherever it is.
pub async fn push(router: &Router, owner: &str, item: Option<&RosterItem>, contact: &str) {
    let el = match item {
        Some(i) if !i.stub => item_element(i),
        _ => Element::new("item", ns::ROSTER)
            .with_attr("jid", contact)
            .with_attr("subscription", "remove"),
    };
    for t in router.sessions_of(owner, None) {
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("type", "set")
            .with_attr("id", format!("push-{}", random_id()))
            .with_attr("to", t.full.clone())
            .with_child(Element::new("query", ns::ROSTER).with_child(el.clone()));
        let _ = router.deliver(&t, iq).await;
    }
}

pub async fn handle(ctx: &Ctx<'_>, me: &Me<'_>, el: Element) -> Effects {
    match el.attr("type") {
        Some("get") => get(ctx, me, &el),
        Some("set") => set(ctx, me, &el).await,
        _ => Effects::none(),
    }
}

fn get(ctx: &Ctx<'_>, me: &Me<'_>, el: &Element) -> Effects {
    let items: Vec<Element> = {
        let state = ctx.cluster.state().read();
        state
            .data
            .roster_of(me.bare.as_str())
            .filter(|i| !i.stub)
            .map(item_element)
            .collect()
    };
    let mut query = Element::new("query", ns::ROSTER);
    for i in items {
        query.push(i);
    }
    Effects::write(iq_result(me, el).with_child(query))
}

async fn set(ctx: &Ctx<'_>, me: &Me<'_>, el: &Element) -> Effects {
    let Some(query) = el.get_child("query", ns::ROSTER) else {
        return Effects::none();
    };
    let bad = |c| error_reply(ctx.domain, me, el, StanzaError::new(c));
    // §2.3.3: exactly one item.
    let items: Vec<&Element> = query
        .children()
        .filter(|c| c.is("item", ns::ROSTER))
        .collect();
    let [item] = items.as_slice() else {
        return bad(StanzaCondition::BadRequest);
    };
    let Some(contact) = item.attr("jid").and_then(|j| BareJid::new(j).ok()) else {
        return bad(StanzaCondition::JidMalformed);
    };
    if item.attr("subscription") == Some("remove") {
        return remove(ctx, me, el, &contact).await;
    }
    let contact = contact.to_string();
    let mut groups: Vec<String> = Vec::new();
    for g in item.children().filter(|c| c.is("group", ns::ROSTER)) {
        let name = g.text();
        // §2.3.3: empty group names are not-acceptable, duplicates bad-request.
        if name.trim().is_empty() {
            return bad(StanzaCondition::NotAcceptable);
        }
        if groups.contains(&name) {
            return bad(StanzaCondition::BadRequest);
        }
        groups.push(name);
    }
    let name = item
        .attr("name")
        .filter(|n| !n.is_empty())
        .map(str::to_string);
    let text = name.as_ref().map_or(0, String::len) + groups.iter().map(String::len).sum::<usize>();
    if text > MAX_ITEM_TEXT_BYTES {
        return error_reply(
            ctx.domain,
            me,
            el,
            StanzaError::with_text(
                StanzaCondition::NotAcceptable,
                format!("a roster item's name and groups: at most {MAX_ITEM_TEXT_BYTES} bytes"),
            ),
        );
    }
    let existing = {
        let state = ctx.cluster.state().read();
        state
            .data
            .roster
            .get(&(me.bare.to_string(), contact.clone()))
            .cloned()
    };
    // §2.1.2.5: a client cannot set subscription state; it is kept.
    let mut new = existing.unwrap_or_else(|| RosterItem {
        jid: contact.clone(),
        ..RosterItem::default()
    });
    new.stub = false;
    new.name = name;
    new.groups = groups;
    let cmd = Command::SetRosterItem {
        owner: me.bare.to_string(),
        item: new.clone(),
        max_items: ctx.max_roster_items,
    };
    match ctx.cluster.write(cmd).await {
        Ok(a) => {
            if let Some(e) = refusal(&a.response) {
                return error_reply(ctx.domain, me, el, e);
            }
            // The result first, then the pushes (this session's through its
            // queue, so after the result on the wire: §2.3.2).
            push(ctx.router, me.bare.as_str(), Some(&new), &contact).await;
            Effects::write(iq_result(me, el))
        }
        Err(_) => bad(StanzaCondition::InternalServerError),
    }
}

/// §2.5: removing an item cancels both subscriptions first.
async fn remove(ctx: &Ctx<'_>, me: &Me<'_>, el: &Element, contact_jid: &BareJid) -> Effects {
    let contact = contact_jid.as_str();
    let existed = {
        let state = ctx.cluster.state().read();
        state
            .data
            .roster
            .get(&(me.bare.to_string(), contact.to_string()))
            .cloned()
    };
    let Some(existing) = existed.filter(|i| !i.stub) else {
        // §2.5.3: removing an item that is not there.
        return error_reply(
            ctx.domain,
            me,
            el,
            StanzaError::new(StanzaCondition::ItemNotFound),
        );
    };
    if ctx.router.user_exists(contact_jid) {
        if existing.has_to() || existing.ask {
            // Cancelling adds no item: never refused.
            let _ =
                super::presence::subscription(ctx, me.bare, contact, SubAction::Unsubscribe).await;
        }
        if existing.has_from() || existing.pending_in {
            let _ =
                super::presence::subscription(ctx, me.bare, contact, SubAction::Unsubscribed).await;
        }
    }
    let cmd = Command::RemoveRosterItem {
        owner: me.bare.to_string(),
        contact: contact.to_string(),
    };
    match ctx.cluster.write(cmd).await {
        Ok(_) => {
            push(ctx.router, me.bare.as_str(), None, contact).await;
            Effects::write(iq_result(me, el))
        }
        Err(_) => error_reply(
            ctx.domain,
            me,
            el,
            StanzaError::new(StanzaCondition::InternalServerError),
        ),
    }
}
