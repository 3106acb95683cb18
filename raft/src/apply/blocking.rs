//! Block list commands (XEP-0191): add JIDs to an account's block list,
//! remove some or all of them. The list is a set, so both are idempotent:
//! a JID already there (or already gone) changes nothing.
//!
//! Lists are bounded: a block that would take `owner`'s list over
//! `max_items` is refused whole ([`Response::OverBudget`]), nothing added.
//! Unblocking is never refused. What a JID in the list matches (a full JID,
//! a bare JID, a domain) is the server's business (XEP-0191 §6 / XEP-0016
//! §2.1): here a JID is an opaque, already normalized string.
use std::collections::BTreeSet;

use crate::command::{Budget, Response};
use crate::state::StateData;

/// [`crate::Command::Block`].
pub(super) fn block(
    data: &mut StateData,
    owner: String,
    jids: Vec<String>,
    max_items: u32,
) -> Response {
    if data.users.get(&owner).is_none() {
        return Response::NoSuchUser;
    }
    let new: BTreeSet<String> = jids
        .into_iter()
        .filter(|j| !data.blocklist_has(&owner, j))
        .collect();
    let after = data.blocklist_len(&owner) + new.len() as u64;
    if !new.is_empty() && after > u64::from(max_items) {
        return Response::OverBudget {
            budget: Budget::BlockItems,
            cap: u64::from(max_items),
        };
    }
    let changed = new.len() as u32;
    for jid in new {
        data.blocklist
            .insert((owner.clone(), jid), (), &mut data.tracker);
    }
    Response::BlockListChanged { changed }
}

/// [`crate::Command::Unblock`]: no JIDs means every item.
pub(super) fn unblock(data: &mut StateData, owner: String, jids: Vec<String>) -> Response {
    let keys: Vec<(String, String)> = if jids.is_empty() {
        data.blocklist_of(&owner)
            .map(|j| (owner.clone(), j.clone()))
            .collect()
    } else {
        jids.into_iter().map(|j| (owner.clone(), j)).collect()
    };
    let mut changed = 0;
    for k in &keys {
        if data.blocklist.remove(k, &mut data.tracker).is_some() {
            changed += 1;
        }
    }
    Response::BlockListChanged { changed }
}

/// Removes `owner`'s whole list (the account is deleted); returns how many
/// items it had.
pub(super) fn remove_list(data: &mut StateData, owner: &str) -> u32 {
    match unblock(data, owner.to_string(), Vec::new()) {
        Response::BlockListChanged { changed } => changed,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use crate::command::{Budget, Command, Response};
    use crate::credentials::Credentials;
    use crate::state::StateData;

    fn block(d: &mut StateData, jids: &[&str], cap: u32) -> Response {
        d.apply(Command::Block {
            owner: "a@x".into(),
            jids: jids.iter().map(|j| j.to_string()).collect(),
            max_items: cap,
        })
    }

    fn unblock(d: &mut StateData, jids: &[&str]) -> Response {
        d.apply(Command::Unblock {
            owner: "a@x".into(),
            jids: jids.iter().map(|j| j.to_string()).collect(),
        })
    }

    fn list(d: &StateData) -> Vec<String> {
        d.blocklist_of("a@x").cloned().collect()
    }

    fn changed(n: u32) -> Response {
        Response::BlockListChanged { changed: n }
    }

    #[test]
    fn block_and_unblock_are_idempotent_capped_and_gone_with_the_account() {
        let mut d = StateData::default();
        assert_eq!(block(&mut d, &["b@x"], 3), Response::NoSuchUser);
        d.apply(Command::CreateUser {
            jid: "a@x".into(),
            credentials: Credentials::derive("pw", 2),
            created_ms: 1,
        });
        let empty = d.digest();
        assert_eq!(block(&mut d, &["b@x", "y", "b@x"], 3), changed(2));
        // A retry adds nothing and is not refused, even at the cap.
        assert_eq!(block(&mut d, &["b@x", "y"], 2), changed(0));
        assert_eq!(list(&d), ["b@x", "y"]);
        // Over the cap: refused whole.
        let full = Response::OverBudget {
            budget: Budget::BlockItems,
            cap: 3,
        };
        assert_eq!(block(&mut d, &["c@x", "d@x"], 3), full);
        assert_eq!(d.blocklist_len("a@x"), 2);
        assert_eq!(block(&mut d, &["c@x/r"], 3), changed(1));
        assert_eq!(unblock(&mut d, &["y", "nope"]), changed(1));
        assert_eq!(unblock(&mut d, &["y"]), changed(0));
        assert_eq!(list(&d), ["b@x", "c@x/r"]);
        // Unblock all.
        assert_eq!(unblock(&mut d, &[]), changed(2));
        assert!(list(&d).is_empty());
        assert_eq!(d.digest(), empty, "an emptied list leaves no trace");
        block(&mut d, &["b@x"], 3);
        d.apply(Command::DeleteUser { jid: "a@x".into() });
        assert!(d.blocklist.is_empty() && d.blocklist_len("a@x") == 0);
    }

    #[test]
    fn block_lists_are_in_the_snapshot_and_the_digest() {
        let mut d = StateData::default();
        d.apply(Command::CreateUser {
            jid: "a@x".into(),
            credentials: Credentials::derive("pw", 2),
            created_ms: 1,
        });
        let before = d.digest();
        block(&mut d, &["b@x", "evil.example"], 10);
        assert_ne!(d.digest(), before);
        let bytes = d.to_snapshot().expect("snapshot");
        let back = StateData::from_snapshot(&bytes).expect("restore");
        assert_eq!(back.digest(), d.digest());
        assert_eq!(list(&back), ["b@x", "evil.example"]);
        assert_eq!(back.blocklist_len("a@x"), 2);
    }
}
