//! Roster commands (RFC 6121 §2): set or remove one item, and a presence
//! subscription stanza, which changes both users' items at once by the
//! state tables of RFC 6121 Appendix A (see [`crate::subscription`]).
use crate::command::{Response, RosterItem, SubAction};
use crate::state::StateData;

/// [`crate::Command::SetRosterItem`].
pub(super) fn set_item(data: &mut StateData, owner: String, item: RosterItem) -> Response {
    let key = (owner, item.jid.clone());
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
