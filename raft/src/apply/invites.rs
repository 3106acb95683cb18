//! Invitation commands (XEP-0401/0445 registration tokens): create, delete,
//! and register an account with one use of an invitation, atomically.
use crate::command::{Invite, Response};
use crate::credentials::Credentials;
use crate::state::StateData;

/// [`crate::Command::CreateInvite`]: stores (or, for a retried proposal,
/// stores again) the invitation, and drops those expired before it was
/// made (their clients were already refused at presentation).
pub(super) fn create(data: &mut StateData, hash: String, invite: Invite) -> Response {
    let now = invite.created_ms;
    let expired: Vec<String> = data
        .invites
        .iter()
        .filter(|(_, i)| i.expires_ms != 0 && i.expires_ms < now)
        .map(|(k, _)| k.clone())
        .collect();
    let t = &mut data.tracker;
    for k in &expired {
        data.invites.remove(k, t);
    }
    data.invites.insert(hash, invite, t);
    Response::InviteCreated
}

/// [`crate::Command::DeleteInvite`].
pub(super) fn delete(data: &mut StateData, hash: String) -> Response {
    let existed = data.invites.remove(&hash, &mut data.tracker).is_some();
    Response::InviteDeleted { existed }
}

/// [`crate::Command::RegisterWithInvite`]: a taken name leaves the
/// invitation alone; the last use removes it.
pub(super) fn register(
    data: &mut StateData,
    jid: String,
    credentials: Credentials,
    created_ms: u64,
    hash: String,
) -> Response {
    let Some(mut invite) = data.invites.get(&hash).cloned() else {
        return Response::InviteInvalid;
    };
    if invite.uses_left == 0 {
        return Response::InviteInvalid;
    }
    if data.users.get(&jid).is_some() {
        return Response::UserExists;
    }
    let created = super::accounts::create_user(data, jid, credentials, created_ms);
    let t = &mut data.tracker;
    invite.uses_left -= 1;
    if invite.uses_left == 0 {
        data.invites.remove(&hash, t);
    } else {
        data.invites.insert(hash, invite, t);
    }
    created
}

#[cfg(test)]
mod tests {
    use crate::command::{invite_hash, Command, Invite, Response};
    use crate::credentials::{Credentials, ScramHash, ScramKeys};
    use crate::state::StateData;

    fn creds() -> Credentials {
        Credentials {
            sha1: ScramKeys::derive(ScramHash::Sha1, "pw", vec![1; 16], 2),
            sha256: ScramKeys::derive(ScramHash::Sha256, "pw", vec![2; 16], 2),
        }
    }

    fn register(jid: &str, token: &str) -> Command {
        Command::RegisterWithInvite {
            jid: jid.into(),
            credentials: creds(),
            created_ms: 5,
            invite: invite_hash(token),
        }
    }

    #[test]
    fn an_invite_creates_as_many_accounts_as_its_uses() {
        let mut d = StateData::default();
        let invite = Invite {
            uses_left: 2,
            expires_ms: 0,
            created_ms: 1,
        };
        let r = d.apply(Command::CreateInvite {
            hash: invite_hash("tok"),
            invite,
        });
        assert_eq!(r, Response::InviteCreated);
        assert_eq!(d.apply(register("a@x", "wrong")), Response::InviteInvalid);
        assert_eq!(d.apply(register("a@x", "tok")), Response::UserCreated);
        // A taken name does not use the invitation up.
        assert_eq!(d.apply(register("a@x", "tok")), Response::UserExists);
        assert_eq!(d.invites.get(&invite_hash("tok")).unwrap().uses_left, 1);
        assert_eq!(d.apply(register("b@x", "tok")), Response::UserCreated);
        assert!(d.invites.get(&invite_hash("tok")).is_none());
        assert_eq!(d.apply(register("c@x", "tok")), Response::InviteInvalid);
        assert!(d.users.get(&"c@x".to_string()).is_none());
    }

    #[test]
    fn expired_invites_are_dropped_and_deleted_ones_refused() {
        let mut d = StateData::default();
        let old = Invite {
            uses_left: 1,
            expires_ms: 10,
            created_ms: 1,
        };
        d.apply(Command::CreateInvite {
            hash: invite_hash("old"),
            invite: old.clone(),
        });
        assert!(old.usable_at(9) && !old.usable_at(10));
        d.apply(Command::CreateInvite {
            hash: invite_hash("new"),
            invite: Invite {
                uses_left: 1,
                expires_ms: 0,
                created_ms: 11,
            },
        });
        assert!(d.invites.get(&invite_hash("old")).is_none());
        assert_eq!(
            d.apply(Command::DeleteInvite {
                hash: invite_hash("new")
            }),
            Response::InviteDeleted { existed: true }
        );
        assert_eq!(d.apply(register("a@x", "new")), Response::InviteInvalid);
        let snap = d.to_snapshot().unwrap();
        assert_eq!(
            StateData::from_snapshot(&snap).unwrap().digest_hex(),
            d.digest_hex()
        );
    }
}
