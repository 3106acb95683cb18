//! Message archive commands (XEP-0313): append a batch of entries, trim
//! every archive, set an account's preferences (the layout and the reads
//! are in [`crate::archive`]).
//!
//! An append is idempotent per entry: an id the owner's archive holds is
//! not stored again, so a batch whose outcome was unknown may be proposed
//! again as it is. Retention is applied where an append lands (the owners
//! it touched) and by [`crate::Command::ArchiveTrim`] for all of them,
//! with the limits and the clock in the command, so every node drops the
//! same rows.
//!
//! Appends and trims write only the archive's tables, through its own lock
//! ([`crate::archive::ArchiveCell`]), so they need only shared access to
//! the rest of the state (see `StateData::apply_archive`).
use std::collections::BTreeSet;

use crate::archive::{
    ArchiveEntry, ArchiveLimits, ArchivePrefs, ArchiveRetraction, ArchiveTables, MAX_PREFS_JIDS,
};
use crate::command::{Budget, Response};
use crate::state::StateData;

/// The oldest stamp `limits` keep (0: every one).
fn cutoff(limits: &ArchiveLimits) -> u64 {
    if limits.max_age_ms == 0 {
        0
    } else {
        limits.now_ms.saturating_sub(limits.max_age_ms)
    }
}

/// [`crate::Command::ArchiveAppend`].
pub(super) fn append(
    data: &StateData,
    entries: Vec<ArchiveEntry>,
    retractions: Vec<ArchiveRetraction>,
    limits: ArchiveLimits,
) -> Response {
    let oldest = cutoff(&limits);
    let mut stored = 0;
    let mut duplicates = 0;
    let mut touched = BTreeSet::new();
    let mut guard = data.archive.write();
    let ar = &mut *guard;
    for ArchiveEntry { owner, message } in entries {
        // An account's archive, or an XEP-0045 room's (XEP-0313 §5 on the
        // room's JID).
        let exists = data.users.get(&owner).is_some() || data.muc_rooms.get(&owner).is_some();
        if !exists || message.stamp_ms < oldest {
            continue;
        }
        let id_key = (owner.clone(), message.id.clone());
        if ar.archive_ids.get(&id_key).is_some() {
            duplicates += 1;
            continue;
        }
        let last = ar.archive_of(&owner).next_back().map(|(s, _)| s);
        let at = message.stamp_ms.saturating_mul(1000);
        let seq = match last {
            Some(l) if l >= at => l + 1,
            _ => at,
        };
        let t = &mut ar.tracker;
        ar.archive_ids.insert(id_key, seq, t);
        ar.archive.insert((owner.clone(), seq), message, t);
        touched.insert(owner);
        stored += 1;
    }
    for owner in touched {
        trim_owner(ar, &owner, &limits);
    }
    for r in retractions {
        retract(ar, &r);
    }
    Response::Archived { stored, duplicates }
}

/// XEP-0424: the entries of the message `r.by` sent to `r.peer` with
/// sender id `r.sender_id` become `r.tombstone`: in `by`'s archive the
/// outgoing one, in `peer`'s the incoming one from `by`. Only a sender's
/// own message matches, in either archive.
fn retract(ar: &mut ArchiveTables, r: &ArchiveRetraction) {
    if let Some(id) = &r.archive_id {
        // XEP-0425: a moderator's, by archive id, in the room's archive.
        let Some(seq) = ar.archive_seq(&r.by, id) else {
            return;
        };
        let key = (r.by.clone(), seq);
        if let Some(mut m) = ar.archive.get(&key).cloned() {
            if m.stanza != r.tombstone {
                m.stanza = r.tombstone.clone();
                ar.archive.insert(key, m, &mut ar.tracker);
            }
        }
        return;
    }
    let bare = |j: &str| j.split_once('/').map_or(j, |(b, _)| b).to_string();
    for (owner, outgoing, other) in [(&r.by, true, &r.peer), (&r.peer, false, &r.by)] {
        let hits: Vec<(u64, crate::archive::ArchivedMessage)> = ar
            .archive_of(owner)
            .rev()
            .filter(|(_, m)| {
                m.outgoing == outgoing
                    && m.sender_id.as_deref() == Some(r.sender_id.as_str())
                    && bare(&m.with) == **other
                    && m.stanza != r.tombstone
            })
            .map(|(s, m)| (s, m.clone()))
            .collect();
        for (seq, mut m) in hits {
            m.stanza = r.tombstone.clone();
            ar.archive.insert((owner.clone(), seq), m, &mut ar.tracker);
        }
    }
}

/// [`crate::Command::ArchiveTrim`]: retention over every archive.
pub(super) fn trim(data: &StateData, limits: ArchiveLimits) -> Response {
    let mut ar = data.archive.write();
    let owners: BTreeSet<String> = ar.archive.iter().map(|((o, _), _)| o.clone()).collect();
    let mut removed = 0;
    for owner in owners {
        removed += trim_owner(&mut ar, &owner, &limits);
    }
    Response::ArchiveTrimmed { removed }
}

/// Drops `owner`'s messages older than the cutoff, then the oldest past
/// the cap; returns how many.
fn trim_owner(ar: &mut ArchiveTables, owner: &str, limits: &ArchiveLimits) -> u32 {
    let oldest = cutoff(limits);
    let len = ar.archive_len(owner);
    let over = if limits.max_entries == 0 {
        0
    } else {
        len.saturating_sub(u64::from(limits.max_entries))
    };
    let doomed: Vec<(u64, String)> = ar
        .archive_of(owner)
        .enumerate()
        .take_while(|(i, (_, m))| (*i as u64) < over || m.stamp_ms < oldest)
        .map(|(_, (s, m))| (s, m.id.clone()))
        .collect();
    remove(ar, owner, &doomed)
}

fn remove(ar: &mut ArchiveTables, owner: &str, doomed: &[(u64, String)]) -> u32 {
    let t = &mut ar.tracker;
    for (seq, id) in doomed {
        ar.archive.remove(&(owner.to_string(), *seq), t);
        ar.archive_ids.remove(&(owner.to_string(), id.clone()), t);
    }
    doomed.len() as u32
}

/// [`crate::Command::SetArchivePrefs`].
pub(super) fn set_prefs(data: &mut StateData, owner: String, prefs: ArchivePrefs) -> Response {
    if data.users.get(&owner).is_none() {
        return Response::NoSuchUser;
    }
    let cap = MAX_PREFS_JIDS as u64;
    if prefs.always.len() as u64 > cap || prefs.never.len() as u64 > cap {
        return Response::OverBudget {
            budget: Budget::ArchivePrefsJids,
            cap,
        };
    }
    data.archive_prefs.insert(owner, prefs, &mut data.tracker);
    Response::ArchivePrefsSet
}

/// Removes `owner`'s archive and preferences (the account is deleted);
/// returns how many messages it had.
pub(super) fn remove_all(data: &mut StateData, owner: &str) -> u32 {
    let ar = data.archive.get_mut();
    let doomed: Vec<(u64, String)> = ar
        .archive_of(owner)
        .map(|(s, m)| (s, m.id.clone()))
        .collect();
    let n = remove(ar, owner, &doomed);
    data.archive_prefs
        .remove(&owner.to_string(), &mut data.tracker);
    n
}
