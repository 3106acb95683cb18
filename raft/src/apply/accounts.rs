//! Account commands: create, delete (with everything of the account), set
//! password.
use std::ops::Bound;

use crate::command::{Response, RosterItem, UserRecord};
use crate::credentials::Credentials;
use crate::state::StateData;
use crate::table::Table;

/// [`crate::Command::CreateUser`]: an account that exists is left alone.
pub(super) fn create_user(
    data: &mut StateData,
    jid: String,
    credentials: Credentials,
    created_ms: u64,
) -> Response {
    let t = &mut data.tracker;
    if data.users.get(&jid).is_some() {
        return Response::UserExists;
    }
    data.users.insert(
        jid,
        UserRecord {
            credentials,
            created_ms,
        },
        t,
    );
    Response::UserCreated
}

/// [`crate::Command::DeleteUser`]: the account, its roster, offline queue
/// (with its id index, removed ids and next sequence number), its block
/// list, its push registrations, its message archive and preferences, its
/// PEP nodes, vCard and private XML, its XEP-0045 affiliations (bans
/// excepted), and the bindings of its resources.
pub(super) fn delete_user(data: &mut StateData, jid: String) -> Response {
    let t = &mut data.tracker;
    if data.users.remove(&jid, t).is_none() {
        return Response::NoSuchUser;
    }
    let roster: Vec<_> = owner_range(&data.roster, &jid);
    for k in &roster {
        data.roster.remove(k, t);
    }
    let queued = super::offline::remove_queue(data, &jid, u64::MAX);
    super::blocking::remove_list(data, &jid);
    super::push::remove_all(data, &jid);
    super::pep::remove_all(data, &jid);
    let done: Vec<(String, String)> = data
        .offline_done
        .range((jid.clone(), String::new())..)
        .take_while(|((o, _), _)| *o == jid)
        .map(|(k, _)| k.clone())
        .collect();
    let t = &mut data.tracker;
    for k in &done {
        data.offline_done.remove(k, t);
    }
    data.offline_next.remove(&jid, t);
    let prefix = format!("{jid}/");
    let sessions: Vec<String> = data
        .sessions
        .range::<(Bound<&String>, Bound<&String>)>((Bound::Included(&prefix), Bound::Unbounded))
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, _)| k.clone())
        .collect();
    for k in &sessions {
        data.sessions.remove(k, t);
    }
    super::fast::remove_all(data, &jid);
    super::archive::remove_all(data, &jid);
    super::muc::remove_user(data, &jid);
    Response::UserDeleted {
        roster_items: roster.len() as u32,
        queued,
        sessions: sessions.len() as u32,
    }
}

/// [`crate::Command::SetPassword`]. The account's XEP-0484 FAST tokens go
/// with the old password: a password is changed after it leaked, and the
/// tokens a thief got with it must not outlive it.
pub(super) fn set_password(
    data: &mut StateData,
    jid: String,
    credentials: Credentials,
) -> Response {
    let t = &mut data.tracker;
    let Some(mut user) = data.users.get(&jid).cloned() else {
        return Response::NoSuchUser;
    };
    user.credentials = credentials;
    data.users.insert(jid.clone(), user, t);
    super::fast::remove_all(data, &jid);
    Response::PasswordChanged
}

fn owner_range(roster: &Table<(String, String), RosterItem>, owner: &str) -> Vec<(String, String)> {
    roster
        .range((owner.to_string(), String::new())..)
        .take_while(|((o, _), _)| o == owner)
        .map(|(k, _)| k.clone())
        .collect()
}
