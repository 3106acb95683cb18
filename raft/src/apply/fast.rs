//! XEP-0484 FAST token commands: issue into a client's `new` slot, use
//! (promote `new` to `current`, rotate), revoke. Only verifiers are
//! stored (see [`FastToken`]); the server checks expiry and mechanism when
//! a client presents a token, as it reads the slots.
use crate::command::{FastClient, FastToken, Response};
use crate::state::StateData;

/// Clients (user-agent ids) with tokens per account, at most: a token for
/// one more replaces the tokens of the client whose newest token is the
/// oldest (any authenticated client may name a new id at each login).
pub const MAX_FAST_CLIENTS: usize = 32;

/// [`crate::Command::IssueFastToken`]: only for an existing account.
pub(super) fn issue(
    data: &mut StateData,
    user: String,
    client: String,
    token: FastToken,
) -> Response {
    if data.users.get(&user).is_none() {
        return Response::NoSuchUser;
    }
    let key = (user, client);
    if data.fast_tokens.get(&key).is_none() {
        let clients = keys_of(data, &key.0);
        if clients.len() >= MAX_FAST_CLIENTS {
            let newest = |k: &(String, String)| {
                data.fast_tokens.get(k).map_or(0, |c| {
                    let issued = |t: &Option<FastToken>| t.as_ref().map_or(0, |t| t.issued_ms);
                    issued(&c.current).max(issued(&c.new))
                })
            };
            // The least recently issued; ties broken by key (deterministic).
            let evict = clients
                .iter()
                .min_by_key(|k| (newest(k), (*k).clone()))
                .cloned();
            if let Some(evict) = evict {
                data.fast_tokens.remove(&evict, &mut data.tracker);
            }
        }
    }
    let mut slots = data.fast_tokens.get(&key).cloned().unwrap_or_default();
    // A `current` token that expired before this one was issued can never
    // be used again: dropped now rather than kept forever.
    if slots
        .current
        .as_ref()
        .is_some_and(|c| c.expires_ms <= token.issued_ms)
    {
        slots.current = None;
    }
    slots.new = Some(token);
    data.fast_tokens.insert(key, slots, &mut data.tracker);
    Response::FastTokenIssued
}

/// [`crate::Command::UseFastToken`].
pub(super) fn use_token(
    data: &mut StateData,
    user: String,
    client: String,
    verifier: String,
    next: Option<FastToken>,
) -> Response {
    let key = (user, client);
    let Some(mut slots) = data.fast_tokens.get(&key).cloned() else {
        return Response::FastTokenUsed { found: false };
    };
    let in_new = slots.new.as_ref().is_some_and(|t| t.verifier == verifier);
    let in_current = slots
        .current
        .as_ref()
        .is_some_and(|t| t.verifier == verifier);
    if in_new {
        slots.current = slots.new.take();
    } else if !in_current {
        return Response::FastTokenUsed { found: false };
    }
    if let Some(next) = next {
        // A retried proposal carries the same `next`: the same state.
        if slots.current.as_ref().map(|t| &t.verifier) != Some(&next.verifier) {
            slots.new = Some(next);
        }
    }
    data.fast_tokens.insert(key, slots, &mut data.tracker);
    Response::FastTokenUsed { found: true }
}

/// [`crate::Command::RevokeFastTokens`].
pub(super) fn revoke(
    data: &mut StateData,
    user: String,
    client: Option<String>,
    verifier: Option<String>,
) -> Response {
    let keys: Vec<(String, String)> = match &client {
        Some(c) => vec![(user.clone(), c.clone())],
        None => keys_of(data, &user),
    };
    let t = &mut data.tracker;
    let mut count = 0u32;
    for key in keys {
        let Some(mut slots) = data.fast_tokens.get(&key).cloned() else {
            continue;
        };
        let Some(v) = &verifier else {
            count += slots.current.is_some() as u32 + slots.new.is_some() as u32;
            data.fast_tokens.remove(&key, t);
            continue;
        };
        let before = slots.clone();
        for slot in [&mut slots.current, &mut slots.new] {
            if slot.as_ref().is_some_and(|tok| &tok.verifier == v) {
                *slot = None;
                count += 1;
            }
        }
        if slots == FastClient::default() {
            data.fast_tokens.remove(&key, t);
        } else if slots != before {
            data.fast_tokens.insert(key, slots, t);
        }
    }
    Response::FastTokensRevoked { count }
}

/// Every token of `user` goes (the account is deleted).
pub(super) fn remove_all(data: &mut StateData, user: &str) {
    for key in keys_of(data, user) {
        data.fast_tokens.remove(&key, &mut data.tracker);
    }
}

fn keys_of(data: &StateData, user: &str) -> Vec<(String, String)> {
    data.fast_tokens
        .range((user.to_string(), String::new())..)
        .take_while(|((u, _), _)| u == user)
        .map(|(k, _)| k.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::command::{Command, FastToken, Response};
    use crate::credentials::{Credentials, ScramHash, ScramKeys};
    use crate::state::StateData;

    fn token(v: &str, issued_ms: u64) -> FastToken {
        FastToken {
            verifier: v.into(),
            responder: format!("r-{v}"),
            mechanism: "HT-SHA-256-NONE".into(),
            issued_ms,
            expires_ms: issued_ms + 100,
        }
    }

    fn state() -> StateData {
        let mut s = StateData::default();
        s.apply(Command::CreateUser {
            jid: "a@x".into(),
            credentials: Credentials {
                sha1: ScramKeys::derive(ScramHash::Sha1, "pw", vec![1; 16], 2),
                sha256: ScramKeys::derive(ScramHash::Sha256, "pw", vec![2; 16], 2),
            },
            created_ms: 1,
        });
        s
    }

    fn issue(v: &str, at: u64) -> Command {
        Command::IssueFastToken {
            user: "a@x".into(),
            client: "c1".into(),
            token: token(v, at),
        }
    }

    fn use_(v: &str, next: Option<FastToken>) -> Command {
        Command::UseFastToken {
            user: "a@x".into(),
            client: "c1".into(),
            verifier: v.into(),
            next,
        }
    }

    fn slots(s: &StateData) -> (Option<String>, Option<String>) {
        let c = s
            .fast_tokens
            .get(&("a@x".into(), "c1".into()))
            .cloned()
            .unwrap_or_default();
        (c.current.map(|t| t.verifier), c.new.map(|t| t.verifier))
    }

    #[test]
    fn tokens_rotate_through_the_two_slots() {
        let mut s = state();
        assert_eq!(s.apply(issue("t1", 10)), Response::FastTokenIssued);
        assert_eq!(slots(&s), (None, Some("t1".into())));
        // Used with a rotation: t1 current, t2 new; both valid until t2 is
        // used (the client may not have received t2).
        assert_eq!(
            s.apply(use_("t1", Some(token("t2", 20)))),
            Response::FastTokenUsed { found: true }
        );
        assert_eq!(slots(&s), (Some("t1".into()), Some("t2".into())));
        // Applied again (a retried proposal): the same state.
        let digest = s.digest();
        assert_eq!(
            s.apply(use_("t1", Some(token("t2", 20)))),
            Response::FastTokenUsed { found: true }
        );
        assert_eq!(s.digest(), digest);
        // t2 used: t1 is invalidated.
        assert_eq!(
            s.apply(use_("t2", None)),
            Response::FastTokenUsed { found: true }
        );
        assert_eq!(slots(&s), (Some("t2".into()), None));
        assert_eq!(
            s.apply(use_("t1", None)),
            Response::FastTokenUsed { found: false }
        );
        // Another client's token, an unknown account.
        let other = Command::UseFastToken {
            user: "a@x".into(),
            client: "c2".into(),
            verifier: "t2".into(),
            next: None,
        };
        assert_eq!(s.apply(other), Response::FastTokenUsed { found: false });
        let nobody = Command::IssueFastToken {
            user: "b@x".into(),
            client: "c1".into(),
            token: token("t9", 1),
        };
        assert_eq!(s.apply(nobody), Response::NoSuchUser);
    }

    #[test]
    fn clients_per_account_are_bounded_the_least_recent_goes() {
        let mut s = state();
        for i in 0..super::MAX_FAST_CLIENTS as u64 + 1 {
            let cmd = Command::IssueFastToken {
                user: "a@x".into(),
                client: format!("c{i:02}"),
                token: token(&format!("t{i}"), 100 + i),
            };
            assert_eq!(s.apply(cmd), Response::FastTokenIssued);
        }
        assert_eq!(s.fast_tokens.len(), super::MAX_FAST_CLIENTS);
        assert!(s.fast_tokens.get(&("a@x".into(), "c00".into())).is_none());
        assert!(s.fast_tokens.get(&("a@x".into(), "c32".into())).is_some());
    }

    #[test]
    fn an_unused_new_token_is_replaced_and_an_expired_current_dropped() {
        let mut s = state();
        s.apply(issue("t1", 10));
        s.apply(issue("t2", 20));
        assert_eq!(slots(&s), (None, Some("t2".into())));
        s.apply(use_("t2", None));
        // t2 expires at 120: issued after that, it goes.
        s.apply(issue("t3", 500));
        assert_eq!(slots(&s), (None, Some("t3".into())));
    }

    #[test]
    fn revocation_by_token_client_or_account_and_with_the_password_or_account() {
        let mut s = state();
        s.apply(issue("t1", 10));
        s.apply(use_("t1", Some(token("t2", 20))));
        let one = Command::RevokeFastTokens {
            user: "a@x".into(),
            client: Some("c1".into()),
            verifier: Some("t1".into()),
        };
        assert_eq!(s.apply(one), Response::FastTokensRevoked { count: 1 });
        assert_eq!(slots(&s), (None, Some("t2".into())));
        let all = Command::RevokeFastTokens {
            user: "a@x".into(),
            client: None,
            verifier: None,
        };
        assert_eq!(s.apply(all), Response::FastTokensRevoked { count: 1 });
        assert!(s.fast_tokens.is_empty());
        s.apply(issue("t3", 30));
        let creds = s.users.get(&"a@x".to_string()).unwrap().credentials.clone();
        s.apply(Command::SetPassword {
            jid: "a@x".into(),
            credentials: creds,
        });
        assert!(
            s.fast_tokens.is_empty(),
            "a new password revokes the tokens"
        );
        s.apply(issue("t4", 40));
        s.apply(Command::DeleteUser { jid: "a@x".into() });
        assert!(s.fast_tokens.is_empty());
    }
}
