//! Push registration commands (XEP-0357 §5, §6): enable pushes to an app
//! server (its JID and pubsub node), disable those of a JID or of one of
//! its nodes. A registration is keyed by its JID and node, so enabling
//! again (a device's new session, a retry) replaces it: idempotent.
//!
//! Registrations are bounded: a new one beyond `max_registrations` for
//! its account is refused ([`Response::OverBudget`]); replacing one is
//! never refused, nor is disabling.
use crate::command::{Budget, PushRegistration, Response};
use crate::state::StateData;

/// [`crate::Command::EnablePush`].
pub(super) fn enable(
    data: &mut StateData,
    owner: String,
    registration: PushRegistration,
    max_registrations: u32,
) -> Response {
    if data.users.get(&owner).is_none() {
        return Response::NoSuchUser;
    }
    let key = (
        owner,
        PushRegistration::key(&registration.jid, &registration.node),
    );
    let replaced = data.push.get(&key).is_some();
    if !replaced && data.push_len(&key.0) >= u64::from(max_registrations) {
        return Response::OverBudget {
            budget: Budget::PushRegistrations,
            cap: u64::from(max_registrations),
        };
    }
    data.push.insert(key, registration, &mut data.tracker);
    Response::PushEnabled { replaced }
}

/// [`crate::Command::DisablePush`]: `node` none means every node of `jid`.
pub(super) fn disable(
    data: &mut StateData,
    owner: String,
    jid: String,
    node: Option<String>,
) -> Response {
    let keys: Vec<(String, String)> = data
        .push_of(&owner)
        .filter(|r| r.jid == jid && node.as_ref().is_none_or(|n| *n == r.node))
        .map(|r| (owner.clone(), PushRegistration::key(&r.jid, &r.node)))
        .collect();
    let mut removed = 0;
    for k in &keys {
        if data.push.remove(k, &mut data.tracker).is_some() {
            removed += 1;
        }
    }
    Response::PushDisabled { removed }
}

/// Removes every registration of `owner` (the account is deleted).
pub(super) fn remove_all(data: &mut StateData, owner: &str) {
    let keys: Vec<(String, String)> = data
        .push_of(owner)
        .map(|r| (owner.to_string(), PushRegistration::key(&r.jid, &r.node)))
        .collect();
    for k in &keys {
        data.push.remove(k, &mut data.tracker);
    }
}

#[cfg(test)]
mod tests {
    use crate::command::{Budget, Command, FormField, PushRegistration, Response};
    use crate::credentials::Credentials;
    use crate::state::StateData;

    fn reg(jid: &str, node: &str, resource: &str) -> PushRegistration {
        PushRegistration {
            jid: jid.into(),
            node: node.into(),
            resource: resource.into(),
            options: vec![FormField {
                var: "secret".into(),
                kind: None,
                values: vec!["s".into()],
            }],
            include_body: false,
            enabled_ms: 1,
        }
    }

    fn enable(d: &mut StateData, r: PushRegistration, cap: u32) -> Response {
        d.apply(Command::EnablePush {
            owner: "a@x".into(),
            registration: r,
            max_registrations: cap,
        })
    }

    fn disable(d: &mut StateData, jid: &str, node: Option<&str>) -> Response {
        d.apply(Command::DisablePush {
            owner: "a@x".into(),
            jid: jid.into(),
            node: node.map(str::to_string),
        })
    }

    fn nodes(d: &StateData) -> Vec<String> {
        d.push_of("a@x").map(|r| r.node.clone()).collect()
    }

    #[test]
    fn enable_replaces_by_jid_and_node_is_capped_and_goes_with_the_account() {
        let mut d = StateData::default();
        assert_eq!(
            enable(&mut d, reg("p@x/a", "n1", "a@x/r"), 2),
            Response::NoSuchUser
        );
        d.apply(Command::CreateUser {
            jid: "a@x".into(),
            credentials: Credentials::derive("pw", 2),
            created_ms: 1,
        });
        let empty = d.digest();
        let enabled = |replaced| Response::PushEnabled { replaced };
        assert_eq!(
            enable(&mut d, reg("p@x/a", "n1", "a@x/r"), 2),
            enabled(false)
        );
        assert_eq!(
            enable(&mut d, reg("p@x/a", "n2", "a@x/r"), 2),
            enabled(false)
        );
        // At the cap: a new one is refused, a replacement is not.
        let full = Response::OverBudget {
            budget: Budget::PushRegistrations,
            cap: 2,
        };
        assert_eq!(enable(&mut d, reg("q@x", "n1", "a@x/r"), 2), full);
        assert_eq!(
            enable(&mut d, reg("p@x/a", "n1", "a@x/s"), 2),
            enabled(true)
        );
        assert_eq!(d.push_len("a@x"), 2);
        let first = d.push_of("a@x").next().map(|r| r.resource.clone());
        assert_eq!(
            first.as_deref(),
            Some("a@x/s"),
            "replaced with the new session"
        );
        // Disable one node, then every node of a JID.
        assert_eq!(
            disable(&mut d, "p@x/a", Some("n1")),
            Response::PushDisabled { removed: 1 }
        );
        assert_eq!(nodes(&d), ["n2"]);
        assert_eq!(
            disable(&mut d, "other@x", None),
            Response::PushDisabled { removed: 0 }
        );
        assert_eq!(
            disable(&mut d, "p@x/a", None),
            Response::PushDisabled { removed: 1 }
        );
        assert_eq!(d.digest(), empty, "nothing left behind");
        enable(&mut d, reg("p@x/a", "n1", "a@x/r"), 2);
        d.apply(Command::DeleteUser { jid: "a@x".into() });
        assert!(d.push.is_empty() && d.push_len("a@x") == 0);
    }

    #[test]
    fn registrations_are_in_the_snapshot_and_the_digest() {
        let mut d = StateData::default();
        d.apply(Command::CreateUser {
            jid: "a@x".into(),
            credentials: Credentials::derive("pw", 2),
            created_ms: 1,
        });
        let before = d.digest();
        enable(&mut d, reg("p@x", "n1", "a@x/r"), 10);
        assert_ne!(d.digest(), before);
        let bytes = d.to_snapshot().expect("snapshot");
        let back = StateData::from_snapshot(&bytes).expect("restore");
        assert_eq!(back.digest(), d.digest());
        assert_eq!(
            back.push_of("a@x").cloned().collect::<Vec<_>>(),
            [reg("p@x", "n1", "a@x/r")]
        );
        assert_eq!(back.push_len("a@x"), 1);
    }
}
