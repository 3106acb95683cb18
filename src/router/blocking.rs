//! XEP-0191 block lists as routing reads them: which entries of a list a
//! JID matches, and whether a stanza between two JIDs crosses a list. The
//! lists are replicated state (`starling_raft`'s `blocklist` table), read
//! from this node's applied copy, so the same answer is given on every node
//! whichever node the sender or the recipient is on. The iq protocol that
//! edits the lists is `im::blocking`.
//!
//! # Matching (XEP-0191 §6: "the JID matching rules of XEP-0016 apply")
//! XEP-0016 §2.1: an item of the form
//! - `user@domain/resource` matches only that full JID;
//! - `user@domain` matches that bare JID and any full JID of it;
//! - `domain/resource` matches only that JID;
//! - `domain` matches the domain itself and any JID at it.
//!
//! So a JID is blocked when the list holds the JID itself, its bare form
//! (when it has a localpart) or its domain: at most three exact lookups.
use starling_raft::state::StateData;

use super::stanza::stanza_type;
use super::Router;
use crate::xmpp::jid::Jid;
use crate::xmpp::{ns, Element, StanzaCondition, StanzaError};

/// The list entries that match `jid` (XEP-0016 §2.1), most specific first,
/// without repeats.
pub fn matching_entries(jid: &Jid) -> Vec<String> {
    let mut out = vec![jid.to_string()];
    if jid.resource().is_some() && jid.node().is_some() {
        out.push(jid.to_bare().to_string());
    }
    let domain = jid.domain().to_string();
    if !out.contains(&domain) {
        out.push(domain);
    }
    out
}

/// Whether a list (told by `has`: does it hold this exact entry?) blocks
/// `jid`.
pub fn list_blocks(has: impl Fn(&str) -> bool, jid: &Jid) -> bool {
    matching_entries(jid).iter().any(|e| has(e))
}

/// Which block list stops a stanza.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// The sender blocked the recipient: XEP-0191 §3.3, the sender gets
    /// `not-acceptable` with `<blocked xmlns='urn:xmpp:blocking:errors'/>`.
    BySender,
    /// The recipient blocked the sender: XEP-0191 §3.3, presence dropped
    /// silently, message and iq get/set answered `service-unavailable` (the
    /// recipient looks offline), other iqs dropped.
    ByRecipient,
}

/// Whether a stanza from `from` to `to` crosses a block list of an
/// account of `domain`: the sender's (if the sender is an account here)
/// first, since it tells the sender why; then the recipient's.
pub fn check(state: &StateData, domain: &str, from: &Jid, to: &Jid) -> Option<Blocked> {
    let account = |j: &Jid| {
        (j.domain().as_str() == domain && j.node().is_some()).then(|| j.to_bare().to_string())
    };
    // An account without a list (most) costs one map lookup, not the
    // entries' strings.
    let listed = |owner: &String| state.blocklist.of_owner(owner) > 0;
    if let Some(owner) = account(from).filter(listed) {
        if list_blocks(|e| state.blocklist_has(&owner, e), to) {
            return Some(Blocked::BySender);
        }
    }
    if let Some(owner) = account(to).filter(listed) {
        if list_blocks(|e| state.blocklist_has(&owner, e), from) {
            return Some(Blocked::ByRecipient);
        }
    }
    None
}

/// The error a stanza refused by a block list gets, if any (XEP-0191 §3.3):
/// iq results and errors are dropped, and presence the recipient blocked.
pub fn refusal(el: &Element, blocked: Blocked) -> Option<StanzaError> {
    if el.name() == "iq" && !matches!(stanza_type(el), "get" | "set") {
        return None;
    }
    match (blocked, el.name()) {
        // "For presence stanzas (including notifications, subscriptions,
        // and probes), the server MUST NOT respond and MUST NOT return an
        // error."
        (Blocked::ByRecipient, "presence") => None,
        // "For message stanzas, the server SHOULD return an error, which
        // SHOULD be <service-unavailable/>"; iq get/set: MUST.
        (Blocked::ByRecipient, _) => Some(StanzaError::new(StanzaCondition::ServiceUnavailable)),
        // "the user's server MUST NOT route the stanza to the contact but
        // instead MUST return a <not-acceptable/> error" with <blocked/>.
        (Blocked::BySender, _) => Some(blocked_error()),
    }
}

/// `not-acceptable` with XEP-0191's `<blocked/>`.
pub fn blocked_error() -> StanzaError {
    StanzaError::new(StanzaCondition::NotAcceptable)
        .with_app(Element::new("blocked", ns::BLOCKING_ERRORS))
}

impl Router {
    /// Whether a stanza from `from` to `to` (JIDs as strings; anything
    /// that does not parse is not blocked here) crosses a block list, read
    /// from this node's applied state.
    pub fn blocked(&self, from: &str, to: &str) -> Option<Blocked> {
        let state = self.cluster().state().read();
        // Every message asks (twice): with no list anywhere, nothing to
        // parse.
        if state.data.blocklist.total() == 0 {
            return None;
        }
        let (Ok(from), Ok(to)) = (Jid::new(from), Jid::new(to)) else {
            return None;
        };
        check(&state.data, self.domain(), &from, &to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn jid(s: &str) -> Jid {
        Jid::new(s).expect("jid")
    }

    fn blocks(list: &[&str], who: &str) -> bool {
        let set: BTreeSet<&str> = list.iter().copied().collect();
        list_blocks(|e| set.contains(e), &jid(who))
    }

    #[test]
    fn a_full_jid_entry_matches_only_that_resource() {
        assert!(blocks(&["bob@x/phone"], "bob@x/phone"));
        assert!(!blocks(&["bob@x/phone"], "bob@x/laptop"));
        assert!(!blocks(&["bob@x/phone"], "bob@x"));
    }

    #[test]
    fn a_bare_jid_entry_matches_it_and_every_resource() {
        assert!(blocks(&["bob@x"], "bob@x"));
        assert!(blocks(&["bob@x"], "bob@x/any"));
        assert!(!blocks(&["bob@x"], "bobby@x/any"));
        assert!(!blocks(&["bob@x"], "bob@y/any"));
        assert!(!blocks(&["bob@x"], "x"));
    }

    #[test]
    fn a_domain_resource_entry_matches_only_that_jid() {
        assert!(blocks(&["x/svc"], "x/svc"));
        assert!(!blocks(&["x/svc"], "x"));
        assert!(!blocks(&["x/svc"], "bob@x/svc"));
    }

    #[test]
    fn a_domain_entry_matches_everything_at_it() {
        for who in ["x", "x/r", "bob@x", "bob@x/r"] {
            assert!(blocks(&["x"], who), "{who}");
        }
        assert!(!blocks(&["x"], "bob@sub.x/r"));
        assert!(!blocks(&[], "bob@x/r"));
    }

    #[test]
    fn the_senders_list_is_read_before_the_recipients() {
        use starling_raft::command::Command;
        let mut d = StateData::default();
        for u in ["a@x", "b@x"] {
            d.apply(Command::CreateUser {
                jid: u.into(),
                credentials: starling_raft::credentials::Credentials::derive("pw", 2),
                created_ms: 1,
            });
        }
        let block = |d: &mut StateData, owner: &str, j: &str| {
            d.apply(Command::Block {
                owner: owner.into(),
                jids: vec![j.into()],
                max_items: 10,
            })
        };
        let c = |d: &StateData, f: &str, t: &str| check(d, "x", &jid(f), &jid(t));
        assert_eq!(c(&d, "a@x/r", "b@x"), None);
        block(&mut d, "b@x", "a@x");
        assert_eq!(c(&d, "a@x/r", "b@x"), Some(Blocked::ByRecipient));
        assert_eq!(c(&d, "b@x/r", "a@x/r"), Some(Blocked::BySender));
        block(&mut d, "a@x", "b@x");
        assert_eq!(c(&d, "a@x/r", "b@x"), Some(Blocked::BySender));
        // A JID of another domain is no account here: only its
        // correspondent's list counts.
        block(&mut d, "a@x", "evil.example");
        assert_eq!(c(&d, "a@x/r", "m@evil.example"), Some(Blocked::BySender));
        assert_eq!(c(&d, "m@evil.example/r", "a@x"), Some(Blocked::ByRecipient));
        assert_eq!(c(&d, "m@evil.example/r", "b@x"), None);
    }

    #[test]
    fn refusals_follow_xep_0191() {
        let msg = Element::new("message", ns::CLIENT);
        let get = Element::new("iq", ns::CLIENT).with_attr("type", "get");
        let result = Element::new("iq", ns::CLIENT).with_attr("type", "result");
        let pres = Element::new("presence", ns::CLIENT);
        let cond = |el: &Element, b| refusal(el, b).map(|e| e.condition);
        use Blocked::*;
        assert_eq!(
            cond(&msg, ByRecipient),
            Some(StanzaCondition::ServiceUnavailable)
        );
        assert_eq!(
            cond(&get, ByRecipient),
            Some(StanzaCondition::ServiceUnavailable)
        );
        assert_eq!(cond(&pres, ByRecipient), None);
        assert_eq!(cond(&result, ByRecipient), None);
        assert_eq!(cond(&result, BySender), None);
        let out = refusal(&msg, BySender).expect("an error");
        assert_eq!(out.condition, StanzaCondition::NotAcceptable);
        assert!(out.element(None).has_child("blocked", ns::BLOCKING_ERRORS));
        assert!(refusal(&pres, BySender).is_some());
    }

    #[test]
    fn entries_are_normalized_jids() {
        // Lookups use the JID's normalized form, as stored entries are.
        assert!(blocks(&["bob@x"], "Bob@X/r"));
        assert_eq!(matching_entries(&jid("bob@x/r")), ["bob@x/r", "bob@x", "x"]);
        assert_eq!(matching_entries(&jid("x")), ["x"]);
        assert_eq!(matching_entries(&jid("x/r")), ["x/r", "x"]);
    }
}
