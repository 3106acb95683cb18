//! The message archive (XEP-0313 Message Archive Management) as replicated
//! data: what one archived message is, an account's preferences, the
//! limits an append is applied under, and the pure reads a query makes
//! (filter by correspondent and time, page by archive id: XEP-0059 RSM).
//! No XML here: a stanza is an opaque string, a JID an already normalized
//! one; the protocol is the server's (`im::mam`).
//!
//! # Layout (see [`crate::keyspace`])
//! - `archive` (`a`): (owner bare JID, seq) -> [`ArchivedMessage`]. `seq`
//!   is time-ordered: the message's stamp in microseconds, raised to one
//!   past the owner's last seq when it would not be larger (stamps from
//!   different proposers may be out of order by a few ms), so a range scan
//!   of one owner is in archive order, and `seq / 1000` is never before
//!   the message's stamp.
//! - `archive_ids` (`h`): (owner, archive id) -> seq, for RSM `after` and
//!   `before` by id and for idempotence: an entry whose id the owner's
//!   archive holds is not stored again (a retried batch). In snapshots
//!   and the digest, but not in the sled tree: loading rebuilds it from
//!   `archive` ([`crate::keyspace::is_derived`]), so an archived message
//!   is one sled insert per owner and node, not two.
//! - `archive_prefs` (`o`): owner -> [`ArchivePrefs`]; no row: the
//!   server's default.
//!
//! # Its own lock
//! `archive` and `archive_ids` are [`ArchiveTables`], held in
//! [`crate::StateData`] behind a lock of their own ([`ArchiveCell`]). An
//! archive append is the most frequent write of a busy cluster, and
//! routing reads the rest of the state for every stanza: the store applies
//! an archive-only entry under a *read* lock of the state and the write
//! lock of the archive, so a stanza never waits behind an append (the
//! applier is the only writer of both, so nothing changes in between).
//! The preferences stay with the rest of the state: routing reads them
//! for every archived message.
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::{Deserialize, Serialize};

use crate::keyspace;
use crate::table::{Measured, Table, Tracker, Writes};

/// One message to archive in `owner`'s archive (an entry of
/// [`crate::Command::ArchiveAppend`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveEntry {
    /// The bare JID whose archive it goes in.
    pub owner: String,
    pub message: ArchivedMessage,
}

/// A message in an archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedMessage {
    /// The archive id: the recipient's XEP-0359 stanza id, in both the
    /// sender's and the recipient's archive.
    pub id: String,
    /// The other party, as a full JID when known (the sender's full JID
    /// in the recipient's archive, the `to` in the sender's).
    pub with: String,
    /// When the server took it, ms since the Unix epoch.
    pub stamp_ms: u64,
    /// The message, serialized.
    pub stanza: String,
    /// The id its sender gave it (XEP-0359 origin-id, else its `id`), by
    /// which the sender retracts it (XEP-0424).
    #[serde(default)]
    pub sender_id: Option<String>,
    /// Sent by the archive's owner (else received).
    #[serde(default)]
    pub outgoing: bool,
}

/// XEP-0424: `by` retracts the message it sent to `peer` with sender id
/// `sender_id`; in both archives its entry keeps its id, stamp and place
/// and its stanza becomes `tombstone`.
///
/// XEP-0425 (a room's moderator): with `archive_id`, the entry of that
/// archive id in `by`'s archive (the room's) becomes `tombstone`, whoever
/// sent it; `peer` and `sender_id` are not used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveRetraction {
    /// The retracting sender's bare JID (the room's, for a moderation).
    pub by: String,
    /// The recipient's bare JID.
    pub peer: String,
    pub sender_id: String,
    /// What the entry's stanza becomes (built by the server).
    pub tombstone: String,
    /// A moderation's target, by archive id (absent from the encoding of
    /// a sender's retraction, which is as before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_id: Option<String>,
}

/// The limits an append is applied under, chosen by the proposer (its
/// config and its clock), so every node trims alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveLimits {
    /// Most messages kept per account; older ones are dropped first. 0: no
    /// cap.
    pub max_entries: u32,
    /// Messages older than this (ms) are dropped. 0: kept forever.
    pub max_age_ms: u64,
    /// The proposer's clock when it proposed (ms since the Unix epoch).
    pub now_ms: u64,
}

/// XEP-0313 §6 preferences: `default` decides for a JID in neither list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArchiveDefault {
    /// Every message is archived.
    Always,
    /// No message is archived.
    Never,
    /// Only messages with a JID in the owner's roster.
    Roster,
}

impl ArchiveDefault {
    pub fn as_str(self) -> &'static str {
        match self {
            ArchiveDefault::Always => "always",
            ArchiveDefault::Never => "never",
            ArchiveDefault::Roster => "roster",
        }
    }

    pub fn parse(s: &str) -> Option<ArchiveDefault> {
        match s {
            "always" => Some(ArchiveDefault::Always),
            "never" => Some(ArchiveDefault::Never),
            "roster" => Some(ArchiveDefault::Roster),
            _ => None,
        }
    }
}

/// An account's archiving preferences (XEP-0313 §6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivePrefs {
    pub default: ArchiveDefault,
    /// Bare JIDs always archived.
    #[serde(default)]
    pub always: Vec<String>,
    /// Bare JIDs never archived (wins over `always`).
    #[serde(default)]
    pub never: Vec<String>,
}

impl ArchivePrefs {
    /// The preferences of an account that never set any.
    pub fn with_default(default: ArchiveDefault) -> ArchivePrefs {
        ArchivePrefs {
            default,
            always: Vec::new(),
            never: Vec::new(),
        }
    }

    /// Whether a message with `peer` (a bare JID) is archived; `in_roster`
    /// says whether `peer` is in the owner's roster (for `roster`).
    pub fn archives(&self, peer: &str, in_roster: impl FnOnce() -> bool) -> bool {
        if self.never.iter().any(|j| j == peer) {
            return false;
        }
        if self.always.iter().any(|j| j == peer) {
            return true;
        }
        match self.default {
            ArchiveDefault::Always => true,
            ArchiveDefault::Never => false,
            ArchiveDefault::Roster => in_roster(),
        }
    }
}

/// Most JIDs in one preferences list (a set beyond it is refused).
pub const MAX_PREFS_JIDS: usize = 1000;

/// What a query asks (XEP-0313 §4.1 form fields and XEP-0059 RSM).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveQuery {
    /// Only messages with this JID: a bare JID matches every resource of
    /// it, a full JID only itself (XEP-0313 §4.1.1).
    pub with: Option<String>,
    /// Only messages stamped at or after (ms).
    pub start_ms: Option<u64>,
    /// Only messages stamped at or before (ms).
    pub end_ms: Option<u64>,
    /// Only messages after this archive id (form field `after-id`).
    pub after_id: Option<String>,
    /// Only messages before this archive id (form field `before-id`).
    pub before_id: Option<String>,
    /// Only these archive ids (form field `ids`).
    pub ids: Option<Vec<String>>,
    /// The page.
    pub page: PageRequest,
}

/// XEP-0059 paging of a result set in archive order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRequest {
    /// Most items in the page (the server has capped it already).
    pub max: usize,
    /// The page after this id (`<after/>`).
    pub after: Option<String>,
    /// The page before this id (`<before>id</before>`), or the last page
    /// (`<before/>`: `Some("")`).
    pub before: Option<String>,
}

/// One page of a query's result set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The messages, in archive order.
    pub items: Vec<ArchivedMessage>,
    /// XEP-0313 §4.2 `complete`: the page reaches the end of the result
    /// set in the direction paged (the last item, or the first when
    /// paging backwards).
    pub complete: bool,
    /// The size of the whole result set (RSM `<count/>`).
    pub count: usize,
    /// The position of the page's first item in the result set (RSM
    /// `<first index>`).
    pub first_index: usize,
}

/// Why a query has no page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    /// An id named in `after`, `before`, `after-id` or `before-id` is not
    /// in the archive (XEP-0313 §4.1.2: `item-not-found`).
    UnknownId(String),
}

fn bare(jid: &str) -> &str {
    jid.split_once('/').map_or(jid, |(b, _)| b)
}

impl ArchiveQuery {
    fn matches(&self, m: &ArchivedMessage) -> bool {
        if let Some(w) = &self.with {
            let hit = if w.contains('/') {
                m.with == *w
            } else {
                bare(&m.with) == w
            };
            if !hit {
                return false;
            }
        }
        if self.start_ms.is_some_and(|s| m.stamp_ms < s)
            || self.end_ms.is_some_and(|e| m.stamp_ms > e)
        {
            return false;
        }
        if let Some(ids) = &self.ids {
            if !ids.contains(&m.id) {
                return false;
            }
        }
        true
    }
}

/// The archive's rows (see the module doc).
#[derive(Debug, Clone)]
pub struct ArchiveTables {
    /// XEP-0313 archives: (owner, seq), counted per owner.
    pub archive: Measured<(String, u64), ArchivedMessage>,
    /// (owner, archive id) -> seq.
    pub archive_ids: Table<(String, String), u64>,
    /// The writes of these tables and their share of the state's digest.
    pub(crate) tracker: Tracker,
}

impl Default for ArchiveTables {
    fn default() -> Self {
        ArchiveTables {
            archive: Measured::new(keyspace::ARCHIVE.prefix, |_| 1),
            archive_ids: Table::new(keyspace::ARCHIVE_IDS.prefix),
            tracker: Tracker::default(),
        }
    }
}

/// [`ArchiveTables`] under their own lock. A clone copies the tables.
#[derive(Debug, Default)]
pub struct ArchiveCell(RwLock<ArchiveTables>);

impl Clone for ArchiveCell {
    fn clone(&self) -> Self {
        ArchiveCell(RwLock::new(self.read().clone()))
    }
}

impl ArchiveCell {
    /// Read access; do not hold it across an `.await`. A poisoned lock
    /// means a panic while applying; the rows are still those of the last
    /// consistent entry, as with the state's lock.
    pub fn read(&self) -> RwLockReadGuard<'_, ArchiveTables> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Write access, for the applier only.
    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, ArchiveTables> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Without locking, through exclusive access to the state.
    pub(crate) fn get_mut(&mut self) -> &mut ArchiveTables {
        self.0.get_mut().unwrap_or_else(|p| p.into_inner())
    }
}

impl ArchiveTables {
    /// Takes the writes recorded since the last call.
    pub(crate) fn take_writes(&mut self) -> Result<Writes, crate::codec::CodecError> {
        if let Some(e) = self.tracker.error.take() {
            self.tracker.writes = Writes::default();
            return Err(e);
        }
        Ok(std::mem::take(&mut self.tracker.writes))
    }

    /// Fills `archive_ids` from `archive` (each message's id -> its seq),
    /// as loading the rows would have; returns their share of the digest.
    pub(crate) fn rebuild_ids(&mut self) -> Result<u128, crate::codec::CodecError> {
        use crate::table::TableKey;
        let mut digest = 0u128;
        let mut key = Vec::new();
        for ((owner, seq), m) in self.archive.iter() {
            key.clear();
            (owner.clone(), m.id.clone()).encode(&mut key);
            let value = crate::codec::encode(seq)?;
            digest = digest.wrapping_add(self.archive_ids.load_row(&key, &value)?);
        }
        Ok(digest)
    }

    /// The archive of `owner`, oldest first, with archive seqs.
    pub fn archive_of<'a>(
        &'a self,
        owner: &str,
    ) -> impl DoubleEndedIterator<Item = (u64, &'a ArchivedMessage)> + 'a {
        let o = owner.to_string();
        self.archive
            .range((o.clone(), 0)..=(o, u64::MAX))
            .map(|((_, seq), m)| (*seq, m))
    }

    /// Number of messages in `owner`'s archive.
    pub fn archive_len(&self, owner: &str) -> u64 {
        self.archive.of_owner(owner)
    }

    /// The seq of archive id `id` in `owner`'s archive.
    pub fn archive_seq(&self, owner: &str, id: &str) -> Option<u64> {
        self.archive_ids
            .get(&(owner.to_string(), id.to_string()))
            .copied()
    }

    /// One page of `owner`'s archive for `q` (a linear scan of the
    /// owner's archive, which is bounded by its retention cap).
    pub fn archive_page(&self, owner: &str, q: &ArchiveQuery) -> Result<Page, QueryError> {
        let seq_of = |id: &str| {
            self.archive_seq(owner, id)
                .ok_or_else(|| QueryError::UnknownId(id.to_string()))
        };
        let lo = q.after_id.as_deref().map(seq_of).transpose()?;
        let hi = q.before_id.as_deref().map(seq_of).transpose()?;
        let after = q.page.after.as_deref().map(seq_of).transpose()?;
        let before = match q.page.before.as_deref() {
            None | Some("") => None,
            Some(id) => Some(seq_of(id)?),
        };
        let set: Vec<(u64, &ArchivedMessage)> = self
            .archive_of(owner)
            .filter(|(s, _)| lo.is_none_or(|lo| *s > lo) && hi.is_none_or(|hi| *s < hi))
            .filter(|(_, m)| q.matches(m))
            .collect();
        let count = set.len();
        let max = q.page.max;
        let (from, to, complete) = if q.page.before.is_some() {
            // Backwards: the `max` items before `before` (or the last).
            let end = before.map_or(count, |b| set.partition_point(|(s, _)| *s < b));
            let from = end.saturating_sub(max);
            (from, end, from == 0)
        } else {
            let from = after.map_or(0, |a| set.partition_point(|(s, _)| *s <= a));
            let to = (from + max).min(count);
            (from, to, to == count)
        };
        Ok(Page {
            items: set[from..to].iter().map(|(_, m)| (*m).clone()).collect(),
            complete,
            count,
            first_index: from,
        })
    }
}

impl crate::state::StateData {
    /// `owner`'s preferences, if set.
    pub fn archive_prefs_of(&self, owner: &str) -> Option<&ArchivePrefs> {
        self.archive_prefs.get(&owner.to_string())
    }

    /// One page of `owner`'s archive for `q`, read under the archive's
    /// lock (see [`ArchiveTables::archive_page`]).
    pub fn archive_page(&self, owner: &str, q: &ArchiveQuery) -> Result<Page, QueryError> {
        self.archive.read().archive_page(owner, q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, Response};
    use crate::credentials::Credentials;
    use crate::state::StateData;

    fn entry(owner: &str, id: &str, with: &str, stamp_ms: u64) -> ArchiveEntry {
        ArchiveEntry {
            owner: owner.into(),
            message: ArchivedMessage {
                id: id.into(),
                with: with.into(),
                stamp_ms,
                stanza: format!("<message id='{id}'/>"),
                sender_id: Some(format!("s-{id}")),
                outgoing: false,
            },
        }
    }

    fn limits() -> ArchiveLimits {
        ArchiveLimits {
            max_entries: 0,
            max_age_ms: 0,
            now_ms: 1_000,
        }
    }

    fn state() -> StateData {
        let mut d = StateData::default();
        for u in ["a@x", "b@x"] {
            d.apply(Command::CreateUser {
                jid: u.into(),
                credentials: Credentials::derive("pw", 2),
                created_ms: 1,
            });
        }
        d
    }

    fn append(d: &mut StateData, entries: Vec<ArchiveEntry>, limits: ArchiveLimits) -> Response {
        d.apply(Command::ArchiveAppend {
            entries,
            retractions: Vec::new(),
            limits,
        })
    }

    #[test]
    fn a_sender_retracts_its_own_messages_in_both_archives_and_nothing_else() {
        let mut d = state();
        conversation(&mut d);
        let retract = |by: &str, peer: &str, id: &str| ArchiveRetraction {
            archive_id: None,
            by: by.into(),
            peer: peer.into(),
            sender_id: format!("s-{id}"),
            tombstone: "<message><retracted/></message>".into(),
        };
        let stanza = |d: &StateData, owner: &str, id: &str| {
            let seq = d.archive.read().archive_seq(owner, id).unwrap();
            d.archive
                .read()
                .archive_of(owner)
                .find(|(s, _)| *s == seq)
                .map(|(_, m)| m.stanza.clone())
                .unwrap()
        };
        // m2 is a's (even: a to b). b cannot retract it, nor a retract b's m3.
        let r = d.apply(Command::ArchiveAppend {
            entries: Vec::new(),
            retractions: vec![retract("b@x", "a@x", "m2"), retract("a@x", "b@x", "m3")],
            limits: limits(),
        });
        assert_eq!(
            r,
            Response::Archived {
                stored: 0,
                duplicates: 0
            }
        );
        assert_eq!(stanza(&d, "a@x", "m2"), "<message id='m2'/>");
        assert_eq!(stanza(&d, "b@x", "m3"), "<message id='m3'/>");
        let before = d.digest();
        d.apply(Command::ArchiveAppend {
            entries: Vec::new(),
            retractions: vec![retract("a@x", "b@x", "m2")],
            limits: limits(),
        });
        assert_ne!(d.digest(), before);
        for owner in ["a@x", "b@x"] {
            assert_eq!(stanza(&d, owner, "m2"), "<message><retracted/></message>");
            assert_eq!(
                d.archive.read().archive_len(owner),
                10,
                "the entry keeps its place"
            );
        }
        // Again: nothing changes.
        let after = d.digest();
        d.apply(Command::ArchiveAppend {
            entries: Vec::new(),
            retractions: vec![retract("a@x", "b@x", "m2")],
            limits: limits(),
        });
        assert_eq!(d.digest(), after);
    }

    #[test]
    fn a_moderator_retracts_one_entry_of_one_archive_by_its_id() {
        let mut d = state();
        conversation(&mut d);
        let moderate = |id: &str| Command::ArchiveAppend {
            entries: Vec::new(),
            retractions: vec![ArchiveRetraction {
                by: "a@x".into(),
                peer: String::new(),
                sender_id: String::new(),
                tombstone: "<message><retracted><moderated/></retracted></message>".into(),
                archive_id: Some(id.into()),
            }],
            limits: limits(),
        };
        let stanza = |d: &StateData, owner: &str, id: &str| {
            let ar = d.archive.read();
            let seq = ar.archive_seq(owner, id).unwrap();
            let m = ar
                .archive_of(owner)
                .find(|(s, _)| *s == seq)
                .map(|(_, m)| m.stanza.clone())
                .unwrap();
            m
        };
        // m3 is b's message to a: a moderator retracts whoever sent it,
        // in the one archive named.
        d.apply(moderate("m3"));
        assert_eq!(
            stanza(&d, "a@x", "m3"),
            "<message><retracted><moderated/></retracted></message>"
        );
        assert_eq!(stanza(&d, "b@x", "m3"), "<message id='m3'/>");
        assert_eq!(d.archive.read().archive_len("a@x"), 10);
        // An id the archive does not hold changes nothing, nor a retry.
        let before = d.digest();
        d.apply(moderate("nope"));
        d.apply(moderate("m3"));
        assert_eq!(d.digest(), before);
    }

    fn ids(p: &Page) -> Vec<&str> {
        p.items.iter().map(|m| m.id.as_str()).collect()
    }

    fn query(max: usize) -> ArchiveQuery {
        ArchiveQuery {
            page: PageRequest {
                max,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// Ten messages m0..m9 between a and b (even: a to b, odd: b to a),
    /// stamped 100, 110, ... ms.
    fn conversation(d: &mut StateData) {
        let mut entries = Vec::new();
        for i in 0..10u64 {
            let id = format!("m{i}");
            let (from, to) = if i % 2 == 0 {
                ("a@x/p", "b@x/l")
            } else {
                ("b@x/l", "a@x/p")
            };
            let mut sent = entry(bare(from), &id, to, 100 + 10 * i);
            sent.message.outgoing = true;
            entries.push(sent);
            entries.push(entry(bare(to), &id, from, 100 + 10 * i));
        }
        assert_eq!(
            append(d, entries, limits()),
            Response::Archived {
                stored: 20,
                duplicates: 0
            }
        );
    }

    #[test]
    fn a_retried_batch_is_stored_once() {
        let mut d = state();
        let batch = vec![
            entry("a@x", "m1", "b@x/l", 100),
            entry("b@x", "m1", "a@x/p", 100),
            entry("a@x", "m2", "b@x/l", 101),
            entry("nobody@x", "m2", "a@x/p", 101),
        ];
        assert_eq!(
            append(&mut d, batch.clone(), limits()),
            Response::Archived {
                stored: 3,
                duplicates: 0
            }
        );
        let digest = d.digest();
        // The same batch again (its first outcome was unknown): nothing new.
        assert_eq!(
            append(&mut d, batch, limits()),
            Response::Archived {
                stored: 0,
                duplicates: 3
            }
        );
        assert_eq!(d.digest(), digest);
        assert_eq!(d.archive.read().archive_len("a@x"), 2);
        assert_eq!(d.archive.read().archive_len("b@x"), 1);
        // A message to oneself is one entry.
        let self_msg = vec![
            entry("a@x", "m3", "a@x/p", 102),
            entry("a@x", "m3", "a@x/q", 102),
        ];
        append(&mut d, self_msg, limits());
        assert_eq!(d.archive.read().archive_len("a@x"), 3);
    }

    #[test]
    fn seqs_are_time_ordered_and_increase_per_owner() {
        let mut d = state();
        // Stamps out of order by a few ms (two proposers' clocks).
        append(
            &mut d,
            vec![
                entry("a@x", "m1", "b@x", 200),
                entry("a@x", "m2", "b@x", 199),
                entry("a@x", "m3", "b@x", 250),
            ],
            limits(),
        );
        let seqs: Vec<u64> = d.archive.read().archive_of("a@x").map(|(s, _)| s).collect();
        assert_eq!(seqs, [200_000, 200_001, 250_000]);
        let ids: Vec<String> = d
            .archive
            .read()
            .archive_of("a@x")
            .map(|(_, m)| m.id.clone())
            .collect();
        assert_eq!(ids, ["m1", "m2", "m3"], "archive order is commit order");
    }

    #[test]
    fn pages_forwards_backwards_and_filters() {
        let mut d = state();
        conversation(&mut d);
        // First page, then after its last.
        let p = d.archive_page("a@x", &query(4)).unwrap();
        assert_eq!(
            (ids(&p), p.complete, p.count, p.first_index),
            (vec!["m0", "m1", "m2", "m3"], false, 10, 0)
        );
        let mut q = query(4);
        q.page.after = Some("m7".into());
        let p = d.archive_page("a@x", &q).unwrap();
        assert_eq!(
            (ids(&p), p.complete, p.first_index),
            (vec!["m8", "m9"], true, 8)
        );
        // The last page (empty before), then the one before it.
        let mut q = query(4);
        q.page.before = Some(String::new());
        let p = d.archive_page("a@x", &q).unwrap();
        assert_eq!(
            (ids(&p), p.complete, p.first_index),
            (vec!["m6", "m7", "m8", "m9"], false, 6)
        );
        q.page.before = Some("m2".into());
        let p = d.archive_page("a@x", &q).unwrap();
        assert_eq!((ids(&p), p.complete), (vec!["m0", "m1"], true));
        // Unknown ids.
        q.page.before = Some("nope".into());
        assert_eq!(
            d.archive_page("a@x", &q),
            Err(QueryError::UnknownId("nope".into()))
        );
        // Time range, both ends included.
        let mut q = query(100);
        q.start_ms = Some(120);
        q.end_ms = Some(150);
        let p = d.archive_page("b@x", &q).unwrap();
        assert_eq!(
            (ids(&p), p.complete, p.count),
            (vec!["m2", "m3", "m4", "m5"], true, 4)
        );
        // with: bare matches every resource, full only itself.
        let mut q = query(100);
        q.with = Some("b@x".into());
        assert_eq!(d.archive_page("a@x", &q).unwrap().count, 10);
        q.with = Some("b@x/other".into());
        assert_eq!(d.archive_page("a@x", &q).unwrap().count, 0);
        q.with = Some("c@x".into());
        assert_eq!(d.archive_page("a@x", &q).unwrap().count, 0);
        // after-id / before-id / ids form fields.
        let mut q = query(100);
        q.after_id = Some("m2".into());
        q.before_id = Some("m6".into());
        assert_eq!(ids(&d.archive_page("a@x", &q).unwrap()), ["m3", "m4", "m5"]);
        let mut q = query(100);
        q.ids = Some(vec!["m9".into(), "m1".into()]);
        assert_eq!(ids(&d.archive_page("a@x", &q).unwrap()), ["m1", "m9"]);
        // max 0: the count only.
        let p = d.archive_page("a@x", &query(0)).unwrap();
        assert!(p.items.is_empty() && p.count == 10 && !p.complete);
        // Another account's archive is not searched for ids.
        let mut q = query(5);
        q.page.after = Some("m1".into());
        assert!(d.archive_page("c@x", &q).is_err());
    }

    #[test]
    fn retention_drops_the_oldest_and_the_expired() {
        let mut d = state();
        conversation(&mut d);
        let capped = ArchiveLimits {
            max_entries: 4,
            max_age_ms: 0,
            now_ms: 1_000,
        };
        append(&mut d, vec![entry("a@x", "n1", "b@x", 300)], capped);
        let left: Vec<String> = d
            .archive
            .read()
            .archive_of("a@x")
            .map(|(_, m)| m.id.clone())
            .collect();
        assert_eq!(left, ["m7", "m8", "m9", "n1"]);
        assert_eq!(d.archive.read().archive_len("a@x"), 4);
        assert!(
            d.archive.read().archive_seq("a@x", "m0").is_none(),
            "the id index goes too"
        );
        // b's archive was not touched by a's append.
        assert_eq!(d.archive.read().archive_len("b@x"), 10);
        let aged = ArchiveLimits {
            max_entries: 0,
            max_age_ms: 100,
            now_ms: 280,
        };
        // Expired already when proposed: not stored (a late retry).
        assert_eq!(
            append(&mut d, vec![entry("b@x", "old", "a@x", 150)], aged),
            Response::Archived {
                stored: 0,
                duplicates: 0
            }
        );
        append(&mut d, vec![entry("b@x", "n2", "a@x", 280)], aged);
        let left: Vec<String> = d
            .archive
            .read()
            .archive_of("b@x")
            .map(|(_, m)| m.id.clone())
            .collect();
        assert_eq!(left, ["m8", "m9", "n2"]);
        // A trim of every archive.
        d.apply(Command::ArchiveTrim {
            limits: ArchiveLimits {
                max_entries: 2,
                max_age_ms: 0,
                now_ms: 300,
            },
        });
        assert_eq!(
            (
                d.archive.read().archive_len("a@x"),
                d.archive.read().archive_len("b@x")
            ),
            (2, 2)
        );
    }

    #[test]
    fn prefs_and_archives_go_with_the_account_and_survive_a_snapshot() {
        let mut d = state();
        conversation(&mut d);
        let prefs = ArchivePrefs {
            default: ArchiveDefault::Roster,
            always: vec!["c@x".into()],
            never: vec!["b@x".into()],
        };
        assert_eq!(
            d.apply(Command::SetArchivePrefs {
                owner: "a@x".into(),
                prefs: prefs.clone()
            }),
            Response::ArchivePrefsSet
        );
        assert!(!prefs.archives("b@x", || true));
        assert!(prefs.archives("c@x", || false));
        assert!(!prefs.archives("d@x", || false));
        assert!(prefs.archives("d@x", || true));
        let back = StateData::from_snapshot(&d.to_snapshot().unwrap()).unwrap();
        assert_eq!(back.digest(), d.digest());
        assert_eq!(back.archive.read().archive_len("a@x"), 10);
        assert_eq!(back.archive_prefs_of("a@x"), Some(&prefs));
        assert_eq!(
            back.archive.read().archive_seq("b@x", "m3"),
            d.archive.read().archive_seq("b@x", "m3")
        );
        d.apply(Command::DeleteUser { jid: "a@x".into() });
        assert_eq!(d.archive.read().archive_len("a@x"), 0);
        assert!(d.archive_prefs_of("a@x").is_none());
        d.apply(Command::DeleteUser { jid: "b@x".into() });
        let mut e2 = state();
        e2.apply(Command::DeleteUser { jid: "a@x".into() });
        e2.apply(Command::DeleteUser { jid: "b@x".into() });
        assert_eq!(d.digest(), e2.digest(), "nothing of theirs is left");
    }
}
