//! Roster commands (RFC 6121 §2): set or remove one item, and a presence
//! subscription stanza, which changes both users' items at once by the
//! state tables of RFC 6121 Appendix A (see [`crate::subscription`]).
//!
//! Rosters are bounded: a command that would add an item (a stub of a
//! pending request included) to a roster holding `max_items` already is
//! refused whole, with [`Response::OverBudget`]. Changing or removing an
//! item is never refused.
use crate::command::{Budget, Response, RosterItem, SubAction};
use crate::state::StateData;

/// Whether `owner`'s roster has no room for one more item.
fn is_full(data: &StateData, owner: &str, max_items: u32) -> bool {
    data.roster_len(owner) >= u64::from(max_items)
}

fn refused(max_items: u32) -> Response {
    Response::OverBudget {
        budget: Budget::RosterItems,
        cap: u64::from(max_items),
    }
}

/// [`crate::Command::SetRosterItem`].
pub(super) fn set_item(
    data: &mut StateData,
    owner: String,
    item: RosterItem,
    max_items: u32,
) -> Response {
    let key = (owner, item.jid.clone());
    if data.roster.get(&key).is_none() && is_full(data, &key.0, max_items) {
        return refused(max_items);
    }
    let previous = data.roster.insert(key, item, &mut data.tracker);
    Response::RosterUpdated { previous }
}

/// [`crate::Command::RemoveRosterItem`].
pub(super) fn remove_item(data: &mut StateData, owner: String, contact: String) -> Response {
    Response::RosterRemoved {
        existed: data
            .roster
            .remove(&(owner, contact), &mut data.tracker)
            .is_some(),
    }
}

/// [`crate::Command::Subscription`]: `user` sent `action` to `contact`.
pub(super) fn subscription(
    data: &mut StateData,
    user: String,
    contact: String,
    action: SubAction,
    max_items: u32,
) -> Response {
    if data.users.get(&user).is_none() || data.users.get(&contact).is_none() {
        return Response::NoSuchUser;
    }
    let ukey = (user.clone(), contact.clone());
    let ckey = (contact.clone(), user.clone());
    let o = crate::subscription::transition(
        action,
        &user,
        &contact,
        data.roster.get(&ukey).cloned(),
        data.roster.get(&ckey).cloned(),
    );
    // Both rosters are checked before either changes.
    for (key, item, changed) in [
        (&ukey, &o.user_item, o.user_changed),
        (&ckey, &o.contact_item, o.contact_changed),
    ] {
        let adds = changed && item.is_some() && data.roster.get(key).is_none();
        if adds && is_full(data, &key.0, max_items) {
            return refused(max_items);
        }
    }
    let t = &mut data.tracker;
    for (key, item, changed) in [
        (ukey, &o.user_item, o.user_changed),
        (ckey, &o.contact_item, o.contact_changed),
    ] {
        if !changed {
            continue;
        }
        match item {
            Some(i) => {
                data.roster.insert(key, i.clone(), t);
            }
            None => {
                data.roster.remove(&key, t);
            }
        }
    }
    Response::Subscription {
        user_item: o.user_item,
        user_changed: o.user_changed,
        contact_item: o.contact_item,
        contact_changed: o.contact_changed,
        deliver: o.deliver,
        auto_approved: o.auto_approved,
    }
}
