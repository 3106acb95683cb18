//! Roster agreement (RFC 6121): after healing, for every pair of users that
//! exchanged subscription stanzas (`RosterSend`), the two final rosters
//! (`RosterFinal`) must mirror each other: `to` on one side is `from` on
//! the other, `both` is `both`, `none` is `none`, and an absent item counts
//! as `none`. A side with a pending `ask` (it asked the other and heard no
//! answer yet) is tolerated whatever the other side shows.
use std::collections::{BTreeMap, BTreeSet};

use crate::history::{Entry, RosterItem};
use crate::results::{RosterDisagreement, RosterResult};

/// A user named by a JID or a bare name, compared without resource and
/// case-insensitively; `alice` and `alice@example.test` are the same user.
fn user_key(jid: &str) -> String {
    let bare = jid.split('/').next().unwrap_or(jid);
    bare.to_lowercase()
}

fn same_user(a: &str, b: &str) -> bool {
    let (a, b) = (user_key(a), user_key(b));
    if a.contains('@') && b.contains('@') {
        return a == b;
    }
    let local = |s: &str| s.split('@').next().unwrap_or("").to_string();
    local(&a) == local(&b)
}

/// `owner`'s item for `contact`, if any.
fn item_for<'a>(items: &'a [RosterItem], contact: &str) -> Option<&'a RosterItem> {
    items.iter().find(|i| same_user(&i.jid, contact))
}

fn describe(item: Option<&RosterItem>) -> String {
    match item {
        None => "absent".to_string(),
        Some(i) if i.ask => format!("{}+ask", i.subscription),
        Some(i) => i.subscription.clone(),
    }
}

/// What the other side must show for a given subscription.
fn mirror(sub: &str) -> Option<&'static str> {
    match sub {
        "none" => Some("none"),
        "to" => Some("from"),
        "from" => Some("to"),
        "both" => Some("both"),
        _ => None,
    }
}

/// An item's subscription; an absent item is `none`.
fn sub_of(item: Option<&RosterItem>) -> &str {
    item.map_or("none", |i| i.subscription.as_str())
}

/// Whether a's item for b and b's item for a agree.
fn agree(a: Option<&RosterItem>, b: Option<&RosterItem>) -> bool {
    if a.is_some_and(|i| i.ask) || b.is_some_and(|i| i.ask) {
        return true;
    }
    let (sa, sb) = (sub_of(a), sub_of(b));
    mirror(sa) == Some(sb) && mirror(sb).is_some()
}

/// Whether the history has any roster workload entries.
pub fn has_roster_entries(history: &[Entry]) -> bool {
    history
        .iter()
        .any(|e| matches!(e, Entry::RosterSend { .. } | Entry::RosterFinal { .. }))
}

/// Checks roster agreement over `history`.
pub fn check_roster(history: &[Entry]) -> RosterResult {
    // user key -> (name as the history spells it, last roster read)
    let mut finals: BTreeMap<String, (&str, &[RosterItem])> = BTreeMap::new();
    // unordered pairs of user keys, with the spelling of each
    let mut pairs: BTreeMap<(String, String), (&str, &str)> = BTreeMap::new();
    let mut users: BTreeMap<String, &str> = BTreeMap::new();
    for e in history {
        match e {
            Entry::RosterFinal { owner, items, .. } => {
                finals.insert(user_key(owner), (owner.as_str(), items.as_slice()));
                users.entry(user_key(owner)).or_insert(owner);
            }
            Entry::RosterSend { from, to, .. } => {
                let (ka, kb) = (user_key(from), user_key(to));
                users.entry(ka.clone()).or_insert(from);
                users.entry(kb.clone()).or_insert(to);
                if ka == kb {
                    continue;
                }
                let key = if ka < kb { (ka, kb) } else { (kb, ka) };
                let names = if key.0 == user_key(from) {
                    (from.as_str(), to.as_str())
                } else {
                    (to.as_str(), from.as_str())
                };
                pairs.entry(key).or_insert(names);
            }
            _ => {}
        }
    }
    let mut unread: BTreeSet<String> = BTreeSet::new();
    let mut disagreements = Vec::new();
    for ((ka, kb), (a, b)) in &pairs {
        let (Some((_, items_a)), Some((_, items_b))) = (finals.get(ka), finals.get(kb)) else {
            for (k, name) in [(ka, a), (kb, b)] {
                if !finals.contains_key(k) {
                    unread.insert(name.to_string());
                }
            }
            continue;
        };
        let a_item = item_for(items_a, b);
        let b_item = item_for(items_b, a);
        if !agree(a_item, b_item) {
            disagreements.push(RosterDisagreement {
                a: a.to_string(),
                b: b.to_string(),
                a_has: describe(a_item),
                b_has: describe(b_item),
            });
        }
    }
    RosterResult {
        users: users.len() as u64,
        pairs: pairs.len() as u64,
        unread: unread.into_iter().collect(),
        disagreements,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::fixture::*;

    fn pair(a: &[(&str, &str, bool)], b: &[(&str, &str, bool)]) -> RosterResult {
        check_roster(&[
            roster_send("alice", "bob"),
            roster_send("bob", "alice"),
            roster_final("alice", a),
            roster_final("bob", b),
        ])
    }

    #[test]
    fn to_and_from_agree() {
        let r = pair(&[("bob", "to", false)], &[("alice", "from", false)]);
        assert_eq!((r.users, r.pairs), (2, 1));
        assert!(r.disagreements.is_empty() && r.unread.is_empty());
        let r = pair(&[("bob", "both", false)], &[("alice", "both", false)]);
        assert!(r.disagreements.is_empty());
    }

    #[test]
    fn to_and_none_disagree() {
        let r = pair(&[("bob", "to", false)], &[("alice", "none", false)]);
        assert_eq!(r.disagreements.len(), 1);
        let d = &r.disagreements[0];
        assert_eq!(
            (d.a.as_str(), d.b.as_str()),
            ("alice@example.test", "bob@example.test")
        );
        assert_eq!((d.a_has.as_str(), d.b_has.as_str()), ("to", "none"));
    }

    #[test]
    fn to_and_to_disagree_and_both_needs_both() {
        let r = pair(&[("bob", "to", false)], &[("alice", "to", false)]);
        assert_eq!(r.disagreements.len(), 1);
        let r = pair(&[("bob", "both", false)], &[("alice", "from", false)]);
        assert_eq!(r.disagreements.len(), 1);
    }

    #[test]
    fn absent_and_none_agree() {
        let r = pair(&[], &[("alice", "none", false)]);
        assert!(r.disagreements.is_empty());
        let r = pair(&[], &[]);
        assert!(r.disagreements.is_empty());
    }

    #[test]
    fn absent_and_from_disagree() {
        let r = pair(&[], &[("alice", "from", false)]);
        assert_eq!(r.disagreements.len(), 1);
        assert_eq!(r.disagreements[0].a_has, "absent");
    }

    #[test]
    fn pending_ask_is_tolerated() {
        let r = pair(&[("bob", "none", true)], &[]);
        assert!(r.disagreements.is_empty());
        let r = pair(&[("bob", "from", true)], &[("alice", "both", false)]);
        assert!(r.disagreements.is_empty());
    }

    #[test]
    fn describe_shows_ask() {
        let r = pair(&[("bob", "none", true)], &[("alice", "none", false)]);
        assert!(r.disagreements.is_empty());
        let i = RosterItem {
            jid: "x".into(),
            subscription: "none".into(),
            ask: true,
        };
        assert_eq!(describe(Some(&i)), "none+ask");
    }

    #[test]
    fn unknown_subscription_value_disagrees() {
        let r = pair(&[("bob", "remove", false)], &[("alice", "remove", false)]);
        assert_eq!(r.disagreements.len(), 1);
    }

    #[test]
    fn unread_roster_is_listed_and_not_compared() {
        let r = check_roster(&[
            roster_send("alice", "bob"),
            roster_send("carol", "alice"),
            roster_final("alice", &[("bob", "to", false)]),
        ]);
        assert_eq!(r.unread, vec!["bob@example.test", "carol@example.test"]);
        assert!(r.disagreements.is_empty());
        assert_eq!((r.users, r.pairs), (3, 2));
    }

    #[test]
    fn pairs_not_in_roster_sends_are_not_checked() {
        let r = check_roster(&[
            roster_send("alice", "bob"),
            roster_final("alice", &[("bob", "none", false), ("carol", "to", false)]),
            roster_final("bob", &[]),
            roster_final("carol", &[]),
        ]);
        assert!(r.disagreements.is_empty());
        assert_eq!(r.pairs, 1);
    }

    #[test]
    fn jids_match_without_resource_or_case() {
        assert!(same_user("Alice@Example.test/phone", "alice@example.test"));
        assert!(same_user("alice", "alice@example.test"));
        assert!(!same_user("alice@a.test", "alice@b.test"));
    }
}
