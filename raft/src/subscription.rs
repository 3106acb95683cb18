//! Presence subscription state transitions (RFC 6121 §3 and Appendix A),
//! as a pure function of the two roster items involved.
//!
//! `user` sends a subscription stanza to `contact`; both are accounts of
//! this cluster, so the outbound processing at the user's server (Appendix
//! A.2) and the inbound processing at the contact's server (Appendix A.3)
//! happen in one replicated command, atomically.
use crate::command::{RosterItem, SubAction, Subscription};

/// What a subscription stanza does to the two roster items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The user's item for the contact afterwards (`None`: no item).
    pub user_item: Option<RosterItem>,
    pub user_changed: bool,
    /// The contact's item for the user afterwards.
    pub contact_item: Option<RosterItem>,
    pub contact_changed: bool,
    /// Deliver the stanza to the contact (Appendix A.3 "deliver").
    pub deliver: bool,
    /// A `subscribe` the contact had already approved: the server answers
    /// `subscribed` for the contact (RFC 6121 §3.1.3) and has already
    /// applied its effect to the user's item.
    pub auto_approved: bool,
}

fn blank(jid: &str) -> RosterItem {
    RosterItem {
        jid: jid.to_string(),
        stub: true,
        ..RosterItem::default()
    }
}

/// An item that carries no state any more and was never put in the roster
/// by its owner is dropped.
fn settle(item: RosterItem) -> Option<RosterItem> {
    let empty =
        item.subscription == Subscription::None && !item.ask && !item.pending_in && !item.approved;
    if item.stub && empty {
        None
    } else {
        Some(item)
    }
}

fn add_to(s: Subscription) -> Subscription {
    match s {
        Subscription::None | Subscription::To => Subscription::To,
        Subscription::From | Subscription::Both => Subscription::Both,
    }
}
fn add_from(s: Subscription) -> Subscription {
    match s {
        Subscription::None | Subscription::From => Subscription::From,
        Subscription::To | Subscription::Both => Subscription::Both,
    }
}
fn drop_to(s: Subscription) -> Subscription {
    match s {
        Subscription::None | Subscription::To => Subscription::None,
        Subscription::From | Subscription::Both => Subscription::From,
    }
}
fn drop_from(s: Subscription) -> Subscription {
    match s {
        Subscription::None | Subscription::From => Subscription::None,
        Subscription::To | Subscription::Both => Subscription::To,
    }
}

/// Applies `action` sent by `user` (bare JID) to `contact` (bare JID), given
/// the user's item for the contact and the contact's item for the user.
pub fn transition(
    action: SubAction,
    user: &str,
    contact: &str,
    user_item: Option<RosterItem>,
    contact_item: Option<RosterItem>,
) -> Outcome {
    let u0 = user_item.clone();
    let c0 = contact_item.clone();
    let mut u = user_item.unwrap_or_else(|| blank(contact));
    let mut c = contact_item.unwrap_or_else(|| blank(user));
    let mut deliver = false;
    let mut auto_approved = false;
    match action {
        SubAction::Subscribe => {
            // A.2.1 outbound subscribe: the user's server adds the contact to
            // the roster (§3.1.2) with a pending-out state, unless the user
            // already has a subscription to the contact.
            u.stub = false;
            if !u.has_to() {
                u.ask = true;
            }
            // A.3.1 inbound subscribe.
            if c.has_from() || c.approved {
                // §3.1.3: already approved (or pre-approved, §3.4): answer
                // `subscribed` on the contact's behalf, do not deliver.
                auto_approved = true;
                c.approved = false;
                c.pending_in = false;
                c.subscription = add_from(c.subscription);
                u.ask = false;
                u.subscription = add_to(u.subscription);
            } else if !c.pending_in {
                c.pending_in = true;
                deliver = true;
            }
        }
        SubAction::Subscribed => {
            // A.2.2 outbound subscribed: approve a pending request, or
            // pre-approve (§3.4) when there is none.
            if u.pending_in {
                u.pending_in = false;
                u.stub = false;
                u.subscription = add_from(u.subscription);
                // A.3.2 inbound subscribed: only meaningful with pending-out.
                if c.ask {
                    c.ask = false;
                    c.subscription = add_to(c.subscription);
                    deliver = true;
                }
            } else if !u.has_from() {
                u.approved = true;
            }
        }
        SubAction::Unsubscribe => {
            // A.2.3 outbound unsubscribe: the user gives up its subscription
            // to the contact (and any pending request).
            u.ask = false;
            u.subscription = drop_to(u.subscription);
            // A.3.3 inbound unsubscribe.
            if c.has_from() || c.pending_in {
                c.pending_in = false;
                c.subscription = drop_from(c.subscription);
                deliver = true;
            }
        }
        SubAction::Unsubscribed => {
            // A.2.4 outbound unsubscribed: cancel the contact's subscription
            // to the user, deny a pending request, drop a pre-approval.
            u.pending_in = false;
            u.approved = false;
            u.subscription = drop_from(u.subscription);
            // A.3.4 inbound unsubscribed.
            if c.has_to() || c.ask {
                c.ask = false;
                c.subscription = drop_to(c.subscription);
                deliver = true;
            }
        }
    }
    let user_item = settle(u);
    let contact_item = settle(c);
    Outcome {
        user_changed: user_item != u0,
        contact_changed: contact_item != c0,
        user_item,
        contact_item,
        deliver,
        auto_approved,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Subscription::*;

    fn item(jid: &str, s: Subscription, ask: bool, pending_in: bool) -> RosterItem {
        RosterItem {
            jid: jid.into(),
            subscription: s,
            ask,
            pending_in,
            ..RosterItem::default()
        }
    }

    fn state(i: &Option<RosterItem>) -> (Subscription, bool, bool) {
        i.as_ref()
            .map(|i| (i.subscription, i.ask, i.pending_in))
            .unwrap_or((None, false, false))
    }

    #[test]
    fn full_handshake_reaches_both() {
        // alice subscribes to bob, bob approves, bob subscribes back, alice approves.
        let o = transition(
            SubAction::Subscribe,
            "a@x",
            "b@x",
            Option::None,
            Option::None,
        );
        assert!(o.deliver && !o.auto_approved);
        assert_eq!(state(&o.user_item), (None, true, false));
        assert!(!o.user_item.as_ref().is_some_and(|i| i.stub));
        assert_eq!(state(&o.contact_item), (None, false, true));
        assert!(
            o.contact_item.as_ref().is_some_and(|i| i.stub),
            "request only: hidden"
        );

        let o = transition(
            SubAction::Subscribed,
            "b@x",
            "a@x",
            o.contact_item,
            o.user_item,
        );
        assert!(o.deliver);
        assert_eq!(state(&o.user_item), (From, false, false));
        assert!(
            !o.user_item.as_ref().is_some_and(|i| i.stub),
            "approved: listed"
        );
        assert_eq!(state(&o.contact_item), (To, false, false));

        let o = transition(
            SubAction::Subscribe,
            "b@x",
            "a@x",
            o.user_item,
            o.contact_item,
        );
        assert_eq!(state(&o.user_item), (From, true, false));
        assert_eq!(state(&o.contact_item), (To, false, true));
        let o = transition(
            SubAction::Subscribed,
            "a@x",
            "b@x",
            o.contact_item,
            o.user_item,
        );
        assert_eq!(state(&o.user_item), (Both, false, false));
        assert_eq!(state(&o.contact_item), (Both, false, false));
    }

    #[test]
    fn subscribe_to_an_approver_is_answered_by_the_server() {
        // bob already lets alice see his presence (alice lost her item).
        let o = transition(
            SubAction::Subscribe,
            "a@x",
            "b@x",
            Option::None,
            Some(item("a@x", From, false, false)),
        );
        assert!(o.auto_approved && !o.deliver);
        assert_eq!(state(&o.user_item), (To, false, false));
        assert_eq!(state(&o.contact_item), (From, false, false));
        assert!(!o.contact_changed);
    }

    #[test]
    fn pre_approval() {
        // §3.4: bob pre-approves alice, then alice's request is auto-approved.
        let o = transition(
            SubAction::Subscribed,
            "b@x",
            "a@x",
            Option::None,
            Option::None,
        );
        assert!(!o.deliver);
        assert!(o.user_item.as_ref().is_some_and(|i| i.approved && i.stub));
        let o = transition(
            SubAction::Subscribe,
            "a@x",
            "b@x",
            Option::None,
            o.user_item,
        );
        assert!(o.auto_approved);
        assert_eq!(state(&o.user_item), (To, false, false));
        assert_eq!(state(&o.contact_item), (From, false, false));
        assert!(!o.contact_item.as_ref().is_some_and(|i| i.approved));
    }

    #[test]
    fn repeated_request_is_not_redelivered() {
        let c = Some(item("a@x", None, false, true));
        let o = transition(SubAction::Subscribe, "a@x", "b@x", Option::None, c);
        assert!(!o.deliver && !o.contact_changed);
    }

    #[test]
    fn unsubscribe_and_unsubscribed() {
        let both_a = Some(item("b@x", Both, false, false));
        let both_b = Some(item("a@x", Both, false, false));
        let o = transition(
            SubAction::Unsubscribe,
            "a@x",
            "b@x",
            both_a.clone(),
            both_b.clone(),
        );
        assert!(o.deliver);
        assert_eq!(state(&o.user_item), (From, false, false));
        assert_eq!(state(&o.contact_item), (To, false, false));
        let o = transition(SubAction::Unsubscribed, "a@x", "b@x", both_a, both_b);
        assert!(o.deliver);
        assert_eq!(state(&o.user_item), (To, false, false));
        assert_eq!(state(&o.contact_item), (From, false, false));
    }

    #[test]
    fn denying_a_request_removes_the_hidden_stub() {
        let o = transition(
            SubAction::Subscribe,
            "a@x",
            "b@x",
            Option::None,
            Option::None,
        );
        let o = transition(
            SubAction::Unsubscribed,
            "b@x",
            "a@x",
            o.contact_item,
            o.user_item,
        );
        assert!(o.deliver);
        assert_eq!(o.user_item, Option::None, "stub dropped");
        assert_eq!(state(&o.contact_item), (None, false, false));
        assert!(
            o.contact_item.is_some(),
            "alice keeps the contact she added"
        );
    }

    #[test]
    fn unsubscribed_without_state_is_not_delivered() {
        let o = transition(
            SubAction::Unsubscribed,
            "a@x",
            "b@x",
            Option::None,
            Option::None,
        );
        assert!(!o.deliver);
        assert!(o.user_item.is_none() && o.contact_item.is_none());
        assert!(!o.user_changed && !o.contact_changed);
    }
}
