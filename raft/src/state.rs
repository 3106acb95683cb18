//! The replicated state and its pure, deterministic `apply`.
//!
//! [`StateData`] holds every table in memory (the working copy that reads and
//! routing use) and records, while a batch of commands applies, the exact
//! key/value writes that the sled store must persist in one atomic batch.
//! No I/O happens here: `apply` is a function of the state and the command;
//! it is implemented in the `apply` module (`raft/src/apply/`).
//!
//! The tables, their prefixes in the state machine's sled tree and their
//! key -> value layouts are listed in [`crate::keyspace`].
//!
//! The generic table and the digest over all of them are in [`crate::table`].
//!
//! # Budgets
//! The offline queues and the rosters are [`Measured`] tables: their bytes
//! (the serialized stanzas) and their items are summed per account and in
//! all as rows change, and rebuilt from the rows when a state is loaded, so
//! `apply` checks a budget in O(1): per-account queue bytes and roster
//! items, and the bytes of every queue together (what each node holds).
//! The caps come in the commands, as the message cap does.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::archive::{ArchiveCell, ArchivePrefs, ArchiveTables};
use crate::codec::{self, CodecError};
use crate::command::{
    FastClient, Invite, OfflineMessage, PushRegistration, RosterItem, SessionBinding, UserRecord,
};
use crate::keyspace::{self, TABLES};
use crate::muc::{Affiliation, AffiliationRecord, Room};
use crate::pep::{PepItem, PepNode};
use crate::table::{Measured, Row, StoredTable, Table, Tracker, Writes};
use crate::types::NodeId;

/// All replicated tables. Serialized whole as a snapshot.
#[derive(Debug, Clone)]
pub struct StateData {
    pub users: Table<String, UserRecord>,
    pub sessions: Table<String, SessionBinding>,
    /// Roster items, counted per owner (stubs included).
    pub roster: Measured<(String, String), RosterItem>,
    /// Queued messages, their stanza bytes summed per account and in all.
    pub offline: Measured<(String, u64), OfflineMessage>,
    pub offline_next: Table<String, u64>,
    pub offline_ids: Table<(String, String), u64>,
    /// Ids removed from a queue (delivered), so that a late retry of their
    /// enqueue (an outcome that was unknown, proposed again) does not queue
    /// them a second time. At most [`MAX_DONE`] per account, oldest pruned.
    pub offline_done: Table<(String, String), u64>,
    /// Registration invitations by the SHA-256 of their token.
    pub invites: Table<String, Invite>,
    /// Block lists (XEP-0191): (owner, blocked JID), counted per owner.
    pub blocklist: Measured<(String, String), ()>,
    /// XEP-0484 FAST tokens by (account, user-agent id).
    pub fast_tokens: Table<(String, String), FastClient>,
    /// XEP-0357 push registrations: (owner, service JID \0 node),
    /// counted per owner.
    pub push: Measured<(String, String), PushRegistration>,
    /// XEP-0313 archives and their ids, under a lock of their own
    /// (see [`crate::archive`]).
    pub archive: ArchiveCell,
    /// XEP-0313 preferences per account.
    pub archive_prefs: Table<String, ArchivePrefs>,
    /// XEP-0045 rooms by room bare JID.
    pub muc_rooms: Table<String, Room>,
    /// XEP-0045 affiliations: (room, user bare JID).
    pub muc_affiliations: Table<(String, String), AffiliationRecord>,
    /// XEP-0163 PEP nodes: (owner, node), counted per owner.
    pub pep_nodes: Measured<(String, String), PepNode>,
    /// PEP items: (owner, node \0 item id), payload bytes per owner.
    pub pep_items: Measured<(String, String), PepItem>,
    /// XEP-0115 verified caps: "hash ver" -> the `+notify` nodes.
    pub caps: Table<String, Vec<String>>,
    /// XEP-0054 vCards per account.
    pub vcards: Table<String, String>,
    /// XEP-0049 private XML: (owner, ns \0 name), bytes per owner.
    pub private: Measured<(String, String), String>,
    pub(crate) tracker: Tracker,
    /// The term of the log entry being applied (not stored: an input).
    pub(crate) entry_term: u64,
    /// The index of the log entry being applied (not stored: an input).
    pub(crate) entry_index: u64,
}

impl Default for StateData {
    fn default() -> Self {
        StateData {
            users: Table::new(keyspace::USERS.prefix),
            sessions: Table::new(keyspace::SESSIONS.prefix),
            roster: Measured::new(keyspace::ROSTER.prefix, |_| 1),
            offline: Measured::new(keyspace::OFFLINE.prefix, |m| m.stanza.len() as u64),
            offline_next: Table::new(keyspace::OFFLINE_NEXT.prefix),
            offline_ids: Table::new(keyspace::OFFLINE_IDS.prefix),
            offline_done: Table::new(keyspace::OFFLINE_DONE.prefix),
            invites: Table::new(keyspace::INVITES.prefix),
            blocklist: Measured::new(keyspace::BLOCKLIST.prefix, |_| 1),
            fast_tokens: Table::new(keyspace::FAST_TOKENS.prefix),
            push: Measured::new(keyspace::PUSH.prefix, |_| 1),
            archive: ArchiveCell::default(),
            archive_prefs: Table::new(keyspace::ARCHIVE_PREFS.prefix),
            muc_rooms: Table::new(keyspace::MUC_ROOMS.prefix),
            muc_affiliations: Table::new(keyspace::MUC_AFFILIATIONS.prefix),
            pep_nodes: Measured::new(keyspace::PEP_NODES.prefix, |_| 1),
            pep_items: Measured::new(keyspace::PEP_ITEMS.prefix, |i| i.payload.len() as u64),
            caps: Table::new(keyspace::CAPS.prefix),
            vcards: Table::new(keyspace::VCARDS.prefix),
            private: Measured::new(keyspace::PRIVATE.prefix, |x| x.len() as u64),
            tracker: Tracker::default(),
            entry_term: 0,
            entry_index: 0,
        }
    }
}

/// Snapshot wire form: every row as stored (key, value) bytes.
#[derive(Serialize, Deserialize)]
struct SnapshotRow {
    #[serde(with = "crate::codec::bytes")]
    k: Vec<u8>,
    #[serde(with = "crate::codec::bytes")]
    v: Vec<u8>,
}

impl StateData {
    /// The digest of the whole state, as 32 hex digits.
    pub fn digest_hex(&self) -> String {
        format!("{:032x}", self.digest())
    }

    /// The sum of every row's hash: the archive's share is kept by its own
    /// tracker (it changes under its own lock), and the sum is the same
    /// whichever tracker counted a row.
    pub fn digest(&self) -> u128 {
        self.tracker
            .digest
            .wrapping_add(self.archive.read().tracker.digest)
    }

    /// Takes the writes recorded since the last call (or the first codec
    /// error met while recording them), the archive's included.
    pub fn take_writes(&mut self) -> Result<Writes, CodecError> {
        let archive = self.archive.get_mut().take_writes();
        if let Some(e) = self.tracker.error.take() {
            self.tracker.writes = Writes::default();
            return Err(e);
        }
        let mut writes = std::mem::take(&mut self.tracker.writes);
        writes.ops.extend(archive?.ops);
        Ok(writes)
    }

    /// Loads one row of the state machine tree (not a meta row).
    pub fn load_row(&mut self, key: &[u8], value: &[u8]) -> Result<(), CodecError> {
        let (prefix, rest) = key
            .split_first()
            .ok_or_else(|| CodecError::msg("empty key".into()))?;
        let table = self
            .tables_mut()
            .into_iter()
            .find(|t| t.prefix() == *prefix)
            .ok_or_else(|| CodecError::msg(format!("unknown table prefix {prefix:#x}")))?;
        let h = table.load_row(rest, value)?;
        self.tracker.digest = self.tracker.digest.wrapping_add(h);
        Ok(())
    }

    /// Rebuilds the tables [`keyspace::is_derived`] names from the rows
    /// they mirror, after loading the stored rows (which do not hold them):
    /// the same rows, hence the same digest, as applying made.
    pub fn rebuild_derived(&mut self) -> Result<(), CodecError> {
        let digest = self.archive.get_mut().rebuild_ids()?;
        self.tracker.digest = self.tracker.digest.wrapping_add(digest);
        Ok(())
    }

    /// Every row as it is stored, in key order within each table.
    pub fn rows(&self) -> Result<Vec<Row>, CodecError> {
        let mut out = Vec::new();
        let archive = self.archive.read();
        for table in self.tables(&archive) {
            table.rows(&mut out)?;
        }
        Ok(out)
    }

    /// Every table, in the order of [`keyspace::TABLES`], the archive's
    /// from `archive` (a guard of `self.archive`).
    fn tables<'a>(&'a self, archive: &'a ArchiveTables) -> [&'a dyn StoredTable; TABLES.len()] {
        [
            &self.users,
            &self.sessions,
            &self.roster,
            &self.offline,
            &self.offline_next,
            &self.offline_ids,
            &self.offline_done,
            &self.invites,
            &self.blocklist,
            &self.fast_tokens,
            &self.push,
            &archive.archive,
            &archive.archive_ids,
            &self.archive_prefs,
            &self.muc_rooms,
            &self.muc_affiliations,
            &self.pep_nodes,
            &self.pep_items,
            &self.caps,
            &self.vcards,
            &self.private,
        ]
    }

    /// Every table, in the order of [`keyspace::TABLES`].
    fn tables_mut(&mut self) -> [&mut dyn StoredTable; TABLES.len()] {
        let archive = self.archive.get_mut();
        [
            &mut self.users,
            &mut self.sessions,
            &mut self.roster,
            &mut self.offline,
            &mut self.offline_next,
            &mut self.offline_ids,
            &mut self.offline_done,
            &mut self.invites,
            &mut self.blocklist,
            &mut self.fast_tokens,
            &mut self.push,
            &mut archive.archive,
            &mut archive.archive_ids,
            &mut self.archive_prefs,
            &mut self.muc_rooms,
            &mut self.muc_affiliations,
            &mut self.pep_nodes,
            &mut self.pep_items,
            &mut self.caps,
            &mut self.vcards,
            &mut self.private,
        ]
    }

    /// Encodes the whole state for a snapshot.
    pub fn to_snapshot(&self) -> Result<Vec<u8>, CodecError> {
        let rows: Vec<SnapshotRow> = self
            .rows()?
            .into_iter()
            .map(|(k, v)| SnapshotRow { k, v })
            .collect();
        codec::encode(&rows)
    }

    /// Decodes a snapshot made by [`StateData::to_snapshot`].
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self, CodecError> {
        let rows: Vec<SnapshotRow> = codec::decode(bytes)?;
        let mut data = StateData::default();
        for row in rows {
            data.load_row(&row.k, &row.v)?;
        }
        Ok(data)
    }

    /// Number of messages waiting for bare JID `to`.
    pub fn queue_depth(&self, to: &str) -> usize {
        self.queue(to).count()
    }

    /// Bytes of the stanzas waiting for bare JID `to`.
    pub fn queue_bytes(&self, to: &str) -> u64 {
        self.offline.of_owner(to)
    }

    /// Bytes of the stanzas waiting in every offline queue.
    pub fn total_queue_bytes(&self) -> u64 {
        self.offline.total()
    }

    /// Number of roster items of `owner` (stubs included).
    pub fn roster_len(&self, owner: &str) -> u64 {
        self.roster.of_owner(owner)
    }

    /// `owner`'s push registrations (XEP-0357), in key order.
    pub fn push_of<'a>(&'a self, owner: &str) -> impl Iterator<Item = &'a PushRegistration> + 'a {
        let start = (owner.to_string(), String::new());
        let owner = owner.to_string();
        self.push
            .range(start..)
            .take_while(move |((o, _), _)| *o == owner)
            .map(|(_, r)| r)
    }

    /// `user`'s affiliation with `room` (XEP-0045 §5.2; no row: `none`).
    pub fn muc_affiliation(&self, room: &str, user: &str) -> Affiliation {
        self.muc_affiliations
            .get(&(room.to_string(), user.to_string()))
            .map_or(Affiliation::None, |a| a.affiliation)
    }

    /// The affiliation rows of `room`, in key order.
    pub fn muc_affiliations_of<'a>(
        &'a self,
        room: &str,
    ) -> impl Iterator<Item = (&'a String, &'a AffiliationRecord)> + 'a {
        let room = room.to_string();
        self.muc_affiliations
            .range((room.clone(), String::new())..)
            .take_while(move |((r, _), _)| *r == room)
            .map(|((_, j), a)| (j, a))
    }

    /// Number of rooms `user` created (a scan: rooms are few next to
    /// messages, and this is read only when a room is created).
    pub fn muc_rooms_of(&self, user: &str) -> u64 {
        self.muc_rooms
            .iter()
            .filter(|(_, r)| r.creator == user)
            .count() as u64
    }

    /// Number of `owner`'s push registrations.
    pub fn push_len(&self, owner: &str) -> u64 {
        self.push.of_owner(owner)
    }

    /// `owner`'s PEP nodes, in name order.
    pub fn pep_nodes_of<'a>(
        &'a self,
        owner: &str,
    ) -> impl Iterator<Item = (&'a String, &'a PepNode)> + 'a {
        let start = (owner.to_string(), String::new());
        let owner = owner.to_string();
        self.pep_nodes
            .range(start..)
            .take_while(move |((o, _), _)| *o == owner)
            .map(|((_, n), node)| (n, node))
    }

    /// The items of `owner`'s PEP node `node`, oldest first, with their ids.
    pub fn pep_items_of(&self, owner: &str, node: &str) -> Vec<(String, &PepItem)> {
        let prefix = format!("{node}\0");
        let start = (owner.to_string(), prefix.clone());
        let mut out: Vec<(String, &PepItem)> = self
            .pep_items
            .range(start..)
            .take_while(|((o, k), _)| o == owner && k.starts_with(&prefix))
            .map(|((_, k), i)| (k[prefix.len()..].to_string(), i))
            .collect();
        out.sort_by_key(|(_, i)| i.seq);
        out
    }

    /// `owner`'s XEP-0049 private XML, in key order: ((ns \0 name), xml).
    pub fn private_of<'a>(
        &'a self,
        owner: &str,
    ) -> impl Iterator<Item = (&'a String, &'a String)> + 'a {
        let start = (owner.to_string(), String::new());
        let owner = owner.to_string();
        self.private
            .range(start..)
            .take_while(move |((o, _), _)| *o == owner)
            .map(|((_, k), v)| (k, v))
    }

    /// Number of items in `owner`'s block list.
    pub fn blocklist_len(&self, owner: &str) -> u64 {
        self.blocklist.of_owner(owner)
    }

    /// Whether `owner`'s block list holds exactly `jid` (matching a
    /// sender against the list is the server's: `router::blocking`).
    pub fn blocklist_has(&self, owner: &str, jid: &str) -> bool {
        self.blocklist
            .get(&(owner.to_string(), jid.to_string()))
            .is_some()
    }

    /// The JIDs of `owner`'s block list, in key order.
    pub fn blocklist_of<'a>(&'a self, owner: &str) -> impl Iterator<Item = &'a String> + 'a {
        let start = (owner.to_string(), String::new());
        let owner = owner.to_string();
        self.blocklist
            .range(start..)
            .take_while(move |((o, _), _)| *o == owner)
            .map(|((_, jid), _)| jid)
    }

    /// The offline queue of `to`, oldest first, with sequence numbers.
    pub fn queue<'a>(&'a self, to: &str) -> impl Iterator<Item = (u64, &'a OfflineMessage)> + 'a {
        let owner = to.to_string();
        self.offline
            .range((owner.clone(), 0)..=(owner, u64::MAX))
            .map(|((_, seq), m)| (*seq, m))
    }

    /// Roster items of `owner`.
    pub fn roster_of<'a>(&'a self, owner: &str) -> impl Iterator<Item = &'a RosterItem> + 'a {
        let start = (owner.to_string(), String::new());
        let owner = owner.to_string();
        self.roster
            .range(start..)
            .take_while(move |((o, _), _)| *o == owner)
            .map(|(_, item)| item)
    }

    /// Session bindings of bare JID `bare` (every resource).
    pub fn sessions_of<'a>(
        &'a self,
        bare: &str,
    ) -> impl Iterator<Item = (&'a String, &'a SessionBinding)> + 'a {
        let prefix = format!("{bare}/");
        let start = prefix.clone();
        self.sessions
            .range(start..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
    }

    /// Nodes that hold at least one session.
    pub fn session_count_by_node(&self) -> BTreeMap<NodeId, usize> {
        let mut out = BTreeMap::new();
        for (_, b) in self.sessions.iter() {
            *out.entry(b.node).or_default() += 1;
        }
        out
    }
}

/// Most removed ids remembered per account (see `StateData::offline_done`).
pub const MAX_DONE: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Budget, ByteCaps, Command, Response, SubAction, Subscription};
    use crate::credentials::Credentials;

    fn creds() -> Credentials {
        Credentials::derive("pw", 2)
    }

    fn create(data: &mut StateData, jid: &str) -> Response {
        data.apply(Command::CreateUser {
            jid: jid.into(),
            credentials: creds(),
            created_ms: 1,
        })
    }

    fn enqueue(data: &mut StateData, to: &str, id: &str, cap: u32) -> Response {
        enqueue_sized(data, to, id, cap, 0, ByteCaps::default())
    }

    /// Enqueues a stanza of `16 + id.len() + pad` bytes under `caps`.
    fn enqueue_sized(
        data: &mut StateData,
        to: &str,
        id: &str,
        cap: u32,
        pad: usize,
        caps: ByteCaps,
    ) -> Response {
        data.apply(Command::EnqueueOffline {
            to: to.into(),
            message: OfflineMessage {
                id: id.into(),
                stamp_ms: 7,
                stanza: format!("<message id='{id}'/>{}", " ".repeat(pad)),
            },
            max_queue: cap,
            max_bytes: caps,
        })
    }

    fn set_item(data: &mut StateData, owner: &str, contact: &str, cap: u32) -> Response {
        data.apply(Command::SetRosterItem {
            owner: owner.into(),
            item: RosterItem {
                jid: contact.into(),
                ..Default::default()
            },
            max_items: cap,
        })
    }

    /// The budgets' sums recomputed from the rows: (queue bytes per
    /// account, all queue bytes, roster items per owner).
    type Sums = (BTreeMap<String, u64>, u64, BTreeMap<String, u64>);

    fn recount(d: &StateData) -> Sums {
        let mut bytes = BTreeMap::new();
        let mut total = 0;
        for ((to, _), m) in d.offline.iter() {
            *bytes.entry(to.clone()).or_default() += m.stanza.len() as u64;
            total += m.stanza.len() as u64;
        }
        let mut items = BTreeMap::new();
        for ((owner, _), _) in d.roster.iter() {
            *items.entry(owner.clone()).or_default() += 1;
        }
        (bytes, total, items)
    }

    /// The sums `d` keeps, for every account that has rows or a user row.
    fn kept(d: &StateData) -> Sums {
        let owners: Vec<String> = d
            .offline
            .iter()
            .map(|((o, _), _)| o.clone())
            .chain(d.roster.iter().map(|((o, _), _)| o.clone()))
            .chain(d.users.iter().map(|(u, _)| u.clone()))
            .collect();
        let bytes = owners
            .iter()
            .map(|o| (o.clone(), d.queue_bytes(o)))
            .filter(|(_, b)| *b > 0)
            .collect();
        let items = owners
            .iter()
            .map(|o| (o.clone(), d.roster_len(o)))
            .filter(|(_, n)| *n > 0)
            .collect();
        (bytes, d.total_queue_bytes(), items)
    }

    /// Rebuilds a state from the rows its writes produced, as the store does
    /// at start-up, and checks both agree (data and digest).
    fn reload(data: &mut StateData, disk: &mut BTreeMap<Vec<u8>, Vec<u8>>) -> StateData {
        for (k, v) in data.take_writes().unwrap().ops {
            match v {
                Some(v) => disk.insert(k, v),
                None => disk.remove(&k),
            };
        }
        let mut fresh = StateData::default();
        for (k, v) in disk.iter() {
            fresh.load_row(k, v).unwrap();
        }
        fresh
    }

    #[test]
    fn create_user_once() {
        let mut d = StateData::default();
        assert_eq!(create(&mut d, "a@x"), Response::UserCreated);
        assert_eq!(create(&mut d, "a@x"), Response::UserExists);
        assert_eq!(d.users.len(), 1);
    }

    #[test]
    fn offline_queue_order_dedup_cap_and_ack() {
        let mut d = StateData::default();
        assert_eq!(enqueue(&mut d, "b@x", "m0", 3), Response::NoSuchUser);
        create(&mut d, "b@x");
        assert_eq!(
            enqueue(&mut d, "b@x", "m1", 3),
            Response::Queued {
                seq: 1,
                duplicate: false
            }
        );
        assert_eq!(
            enqueue(&mut d, "b@x", "m2", 3),
            Response::Queued {
                seq: 2,
                duplicate: false
            }
        );
        assert_eq!(
            enqueue(&mut d, "b@x", "m1", 3),
            Response::Queued {
                seq: 1,
                duplicate: true
            }
        );
        assert_eq!(
            enqueue(&mut d, "b@x", "m3", 3),
            Response::Queued {
                seq: 3,
                duplicate: false
            }
        );
        assert_eq!(
            enqueue(&mut d, "b@x", "m4", 3),
            Response::QueueFull { cap: 3 }
        );
        let ids: Vec<_> = d.queue("b@x").map(|(_, m)| m.id.clone()).collect();
        assert_eq!(ids, ["m1", "m2", "m3"]);
        assert_eq!(
            d.apply(Command::AckOffline {
                to: "b@x".into(),
                up_to: 2
            }),
            Response::Acked { removed: 2 }
        );
        assert_eq!(d.queue_depth("b@x"), 1);
        // Sequence numbers keep growing after an ack: no reuse.
        assert_eq!(
            enqueue(&mut d, "b@x", "m5", 3),
            Response::Queued {
                seq: 4,
                duplicate: false
            }
        );
    }

    #[test]
    fn remove_by_id_takes_only_those_ids_and_survives_reload() {
        let mut d = StateData::default();
        let mut disk = BTreeMap::new();
        create(&mut d, "b@x");
        for id in ["m1", "m2", "m3"] {
            enqueue(&mut d, "b@x", id, 10);
        }
        // An id that is not queued (never was, or already removed) is
        // ignored: a removal may be retried.
        let remove = |ids: &[&str]| Command::RemoveOffline {
            to: "b@x".into(),
            ids: ids.iter().map(|i| i.to_string()).collect(),
        };
        assert_eq!(
            d.apply(remove(&["m2", "nope"])),
            Response::Acked { removed: 1 }
        );
        assert_eq!(d.apply(remove(&["m2"])), Response::Acked { removed: 0 });
        let ids: Vec<_> = d.queue("b@x").map(|(_, m)| m.id.clone()).collect();
        assert_eq!(ids, ["m1", "m3"]);
        // A late retry of a removed message's enqueue (its outcome was
        // unknown, it was proposed again) does not queue it again.
        assert_eq!(
            enqueue(&mut d, "b@x", "m2", 10),
            Response::Queued {
                seq: 0,
                duplicate: true
            }
        );
        assert_eq!(d.queue_depth("b@x"), 2);
        let fresh = reload(&mut d, &mut disk);
        assert_eq!(fresh.digest(), d.digest());
        assert_eq!(fresh.queue_depth("b@x"), 2);
        assert_eq!(fresh.offline_done.len(), 2);
        // Removed ids are bounded per account, the oldest pruned first.
        for i in 0..MAX_DONE + 10 {
            d.apply_entry(remove(&[&format!("x{i}")]), 1, 100 + i as u64);
        }
        let kept = d.offline_done.len();
        assert!(kept <= MAX_DONE && kept > MAX_DONE / 2, "{kept}");
        assert!(d.offline_done.get(&("b@x".into(), "x0".into())).is_none());
        let last = format!("x{}", MAX_DONE + 9);
        assert!(d.offline_done.get(&("b@x".into(), last)).is_some());
    }

    #[test]
    fn enqueue_many_keeps_its_order_with_one_result_each() {
        let mut d = StateData::default();
        create(&mut d, "b@x");
        let item = |id: &str| crate::command::Enqueue {
            to: "b@x".into(),
            message: OfflineMessage {
                id: id.into(),
                stamp_ms: 1,
                stanza: String::new(),
            },
            max_queue: 3,
            max_bytes: ByteCaps::default(),
        };
        enqueue(&mut d, "b@x", "m2", 3);
        let r = d.apply(Command::EnqueueMany {
            items: vec![item("m1"), item("m2"), item("m3"), item("m4")],
        });
        assert_eq!(
            r,
            Response::Batch {
                responses: vec![
                    Response::Queued {
                        seq: 2,
                        duplicate: false
                    },
                    Response::Queued {
                        seq: 1,
                        duplicate: true
                    },
                    Response::Queued {
                        seq: 3,
                        duplicate: false
                    },
                    Response::QueueFull { cap: 3 },
                ]
            }
        );
        let ids: Vec<_> = d.queue("b@x").map(|(_, m)| m.id.clone()).collect();
        assert_eq!(ids, ["m2", "m1", "m3"]);
    }

    #[test]
    fn offline_byte_budgets_per_account_and_in_all() {
        let mut d = StateData::default();
        create(&mut d, "b@x");
        create(&mut d, "c@x");
        // Stanzas of 18 + 82 = 100 bytes; 250 per account, 350 in all.
        let caps = ByteCaps {
            per_user: 250,
            total: 350,
        };
        let q = |d: &mut StateData, to: &str, id: &str| enqueue_sized(d, to, id, 100, 82, caps);
        assert!(matches!(q(&mut d, "b@x", "b1"), Response::Queued { .. }));
        assert!(matches!(q(&mut d, "b@x", "b2"), Response::Queued { .. }));
        assert_eq!(d.queue_bytes("b@x"), 200);
        let over = Response::OverBudget {
            budget: Budget::QueueBytes,
            cap: 250,
        };
        assert_eq!(q(&mut d, "b@x", "b3"), over);
        // Refused: nothing changed, and the next sequence number is not taken.
        assert_eq!(d.queue_depth("b@x"), 2);
        assert_eq!(d.offline_next.get(&"b@x".to_string()), Some(&3));
        // A retry of a queued id is answered as queued, over budget or not.
        assert_eq!(
            q(&mut d, "b@x", "b2"),
            Response::Queued {
                seq: 2,
                duplicate: true
            }
        );
        // Another account has its own budget, until all queues are full.
        assert!(matches!(q(&mut d, "c@x", "c1"), Response::Queued { .. }));
        assert_eq!(
            q(&mut d, "c@x", "c2"),
            Response::OverBudget {
                budget: Budget::TotalQueueBytes,
                cap: 350
            }
        );
        assert_eq!(d.total_queue_bytes(), 300);
        // A smaller message still fits; delivered ones give their room back.
        assert!(matches!(
            enqueue_sized(&mut d, "c@x", "c4", 100, 30, caps),
            Response::Queued { .. }
        ));
        assert_eq!(q(&mut d, "b@x", "b5"), over);
        d.apply(Command::AckOffline {
            to: "b@x".into(),
            up_to: 1,
        });
        d.apply(Command::RemoveOffline {
            to: "c@x".into(),
            ids: vec!["c1".into()],
        });
        assert_eq!(d.queue_bytes("b@x"), 100);
        assert!(matches!(q(&mut d, "b@x", "b5"), Response::Queued { .. }));
        // Deleting an account frees its bytes.
        d.apply(Command::DeleteUser { jid: "c@x".into() });
        assert_eq!(d.queue_bytes("c@x"), 0);
        assert_eq!(d.total_queue_bytes(), 200);
        assert_eq!(kept(&d), recount(&d));
        // The message cap still applies first; without byte caps (the
        // default, as entries of older builds carry none) only it does.
        assert_eq!(
            enqueue_sized(&mut d, "b@x", "b6", 2, 0, caps),
            Response::QueueFull { cap: 2 }
        );
        let big = enqueue_sized(&mut d, "b@x", "b7", 100, 1 << 20, ByteCaps::default());
        assert!(matches!(big, Response::Queued { .. }), "{big:?}");
    }

    #[test]
    fn roster_items_are_capped_per_owner() {
        let mut d = StateData::default();
        for u in ["a@x", "b@x", "c@x"] {
            create(&mut d, u);
        }
        let full = Response::OverBudget {
            budget: Budget::RosterItems,
            cap: 2,
        };
        assert!(matches!(
            set_item(&mut d, "a@x", "p@y", 2),
            Response::RosterUpdated { .. }
        ));
        assert!(matches!(
            set_item(&mut d, "a@x", "q@y", 2),
            Response::RosterUpdated { .. }
        ));
        assert_eq!(set_item(&mut d, "a@x", "r@y", 2), full);
        assert_eq!(d.roster_len("a@x"), 2);
        // Changing an item that is there is never refused.
        assert!(matches!(
            set_item(&mut d, "a@x", "q@y", 2),
            Response::RosterUpdated { previous: Some(_) }
        ));
        // A subscription that would add an item to a full roster is refused
        // whole: neither roster changes.
        let sub = |d: &mut StateData, user: &str, contact: &str, action| {
            d.apply(Command::Subscription {
                user: user.into(),
                contact: contact.into(),
                action,
                max_items: 2,
            })
        };
        assert_eq!(sub(&mut d, "a@x", "b@x", SubAction::Subscribe), full);
        assert_eq!(sub(&mut d, "b@x", "a@x", SubAction::Subscribe), full);
        assert!(d.roster.get(&("b@x".into(), "a@x".into())).is_none());
        assert!(d.roster.get(&("a@x".into(), "b@x".into())).is_none());
        // The stub of a pending request counts: c's request fills b's roster.
        set_item(&mut d, "b@x", "z@y", 2);
        assert!(matches!(
            sub(&mut d, "c@x", "b@x", SubAction::Subscribe),
            Response::Subscription { deliver: true, .. }
        ));
        assert_eq!(d.roster_len("b@x"), 2);
        // Answering it changes items that are there: allowed.
        assert!(matches!(
            sub(&mut d, "b@x", "c@x", SubAction::Subscribed),
            Response::Subscription { .. }
        ));
        assert!(d
            .roster
            .get(&("b@x".into(), "c@x".into()))
            .is_some_and(|i| i.has_from()));
        // Room again after a removal.
        d.apply(Command::RemoveRosterItem {
            owner: "a@x".into(),
            contact: "p@y".into(),
        });
        assert!(matches!(
            set_item(&mut d, "a@x", "r@y", 2),
            Response::RosterUpdated { .. }
        ));
        assert_eq!(kept(&d), recount(&d));
    }

    /// The sums kept as rows change equal the sums recounted from the rows,
    /// after any sequence of commands (a model check over random ones).
    #[test]
    fn budget_sums_match_the_rows_after_random_commands() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let users = ["a@x", "b@x", "c@x", "d@x"];
        let mut d = StateData::default();
        let mut disk = BTreeMap::new();
        for i in 0..3000u64 {
            let u = users[rng.gen_range(0..users.len())];
            let v = users[rng.gen_range(0..users.len())];
            let caps = ByteCaps {
                per_user: rng.gen_range(0..400),
                total: rng.gen_range(0..1000),
            };
            let cmd = match rng.gen_range(0..9) {
                0 => Command::CreateUser {
                    jid: u.into(),
                    credentials: creds(),
                    created_ms: 1,
                },
                1 if rng.gen_range(0..4) == 0 => Command::DeleteUser { jid: u.into() },
                2 | 3 => Command::EnqueueOffline {
                    to: u.into(),
                    message: OfflineMessage {
                        id: format!("m{}", rng.gen_range(0..50)),
                        stamp_ms: 1,
                        stanza: "x".repeat(rng.gen_range(0..120)),
                    },
                    max_queue: 8,
                    max_bytes: caps,
                },
                4 => Command::AckOffline {
                    to: u.into(),
                    up_to: rng.gen_range(0..i + 1),
                },
                5 => Command::RemoveOffline {
                    to: u.into(),
                    ids: vec![format!("m{}", rng.gen_range(0..50))],
                },
                6 => Command::SetRosterItem {
                    owner: u.into(),
                    item: RosterItem {
                        jid: format!("{}@y", rng.gen_range(0..6)),
                        ..Default::default()
                    },
                    max_items: rng.gen_range(0..5),
                },
                7 => Command::RemoveRosterItem {
                    owner: u.into(),
                    contact: format!("{}@y", rng.gen_range(0..6)),
                },
                _ => Command::Subscription {
                    user: u.into(),
                    contact: v.into(),
                    action: [
                        SubAction::Subscribe,
                        SubAction::Subscribed,
                        SubAction::Unsubscribe,
                        SubAction::Unsubscribed,
                    ][rng.gen_range(0..4)],
                    max_items: rng.gen_range(0..5),
                },
            };
            d.apply_entry(cmd, 1, i + 1);
            if i % 500 == 499 {
                assert_eq!(kept(&d), recount(&d), "after {} commands", i + 1);
                let fresh = reload(&mut d, &mut disk);
                assert_eq!(kept(&fresh), kept(&d));
            }
        }
        assert!(d.total_queue_bytes() > 0 && !d.roster.is_empty());
    }

    #[test]
    fn unbind_only_removes_binding_of_that_node() {
        let mut d = StateData::default();
        let binding = |node| SessionBinding {
            node,
            session: node * 10,
            priority: 0,
            available: false,
            carbons: false,
            presence: None,
            bound_ms: 0,
        };
        let bind = |node| Command::BindSession {
            full_jid: "a@x/r".into(),
            binding: binding(node),
        };
        assert_eq!(d.apply(bind(1)), Response::Bound { replaced: None });
        assert_eq!(
            d.apply(bind(2)),
            Response::Bound {
                replaced: Some(binding(1))
            }
        );
        assert_eq!(
            d.apply(Command::UnbindSession {
                full_jid: "a@x/r".into(),
                node: 1,
                session: 10,
            }),
            Response::Unbound { existed: false }
        );
        assert_eq!(d.sessions.len(), 1);
        // A replaced session's presence update does not overwrite its
        // successor's binding.
        let mut stale = binding(1);
        stale.available = true;
        assert_eq!(
            d.apply(Command::UpdateSession {
                full_jid: "a@x/r".into(),
                binding: stale,
            }),
            Response::SessionUpdated { updated: false }
        );
        assert_eq!(d.sessions.get(&"a@x/r".to_string()), Some(&binding(2)));
        let mut fresh = binding(2);
        fresh.available = true;
        assert_eq!(
            d.apply(Command::UpdateSession {
                full_jid: "a@x/r".into(),
                binding: fresh.clone(),
            }),
            Response::SessionUpdated { updated: true }
        );
        assert_eq!(d.sessions.get(&"a@x/r".to_string()), Some(&fresh));
        // A liveness decision made in term 3 is void in an entry of term 4
        // (a deposed leader's), valid in its own term.
        let drop = |term| Command::DropNodeSessions {
            node: 2,
            term: Some(term),
        };
        assert!(matches!(
            d.apply_in_term(drop(3), 4),
            Response::Rejected { .. }
        ));
        assert_eq!(d.sessions.len(), 1);
        assert_eq!(
            d.apply_in_term(drop(4), 4),
            Response::NodeSessionsDropped { count: 1 }
        );
        assert!(d.sessions.is_empty());
    }

    #[test]
    fn delete_user_removes_everything_of_theirs() {
        let mut d = StateData::default();
        create(&mut d, "a@x");
        create(&mut d, "ab@x");
        enqueue(&mut d, "a@x", "m1", 10);
        d.apply(Command::SetRosterItem {
            owner: "a@x".into(),
            item: RosterItem {
                jid: "c@x".into(),
                subscription: Subscription::Both,
                ..Default::default()
            },
            max_items: 10,
        });
        for full in ["a@x/1", "a@x/2", "ab@x/1"] {
            d.apply(Command::BindSession {
                full_jid: full.into(),
                binding: SessionBinding {
                    node: 1,
                    session: 1,
                    priority: 0,
                    available: false,
                    carbons: false,
                    presence: None,
                    bound_ms: 0,
                },
            });
        }
        assert_eq!(
            d.apply(Command::DeleteUser { jid: "a@x".into() }),
            Response::UserDeleted {
                roster_items: 1,
                queued: 1,
                sessions: 2
            }
        );
        assert_eq!(d.sessions.len(), 1, "ab@x's session stays");
        assert!(d.offline_ids.is_empty() && d.offline_next.is_empty());
    }

    #[test]
    fn digest_is_order_independent_and_survives_reload() {
        let mut a = StateData::default();
        let mut b = StateData::default();
        create(&mut a, "a@x");
        create(&mut b, "b@x");
        // Different credentials (random salts) would differ: give both the same.
        let c = creds();
        for (d, order) in [(&mut a, ["p@x", "q@x"]), (&mut b, ["q@x", "p@x"])] {
            for jid in order {
                d.apply(Command::CreateUser {
                    jid: jid.into(),
                    credentials: c.clone(),
                    created_ms: 1,
                });
            }
            d.apply(Command::DeleteUser { jid: "a@x".into() });
            d.apply(Command::DeleteUser { jid: "b@x".into() });
        }
        assert_eq!(a.digest_hex(), b.digest_hex());
        assert_ne!(a.digest(), StateData::default().digest());

        let mut disk = BTreeMap::new();
        enqueue(&mut a, "p@x", "m1", 5);
        set_item(&mut a, "p@x", "q@x", 5);
        let fresh = reload(&mut a, &mut disk);
        assert_eq!(fresh.digest(), a.digest());
        assert_eq!(fresh.queue_depth("p@x"), 1);
        // The budgets' sums are rebuilt from the rows.
        assert_eq!(fresh.queue_bytes("p@x"), 18);
        assert_eq!(fresh.roster_len("p@x"), 1);
        assert_eq!(kept(&fresh), kept(&a));
        // Removing everything brings the digest back to the empty state's.
        a.apply(Command::DeleteUser { jid: "p@x".into() });
        a.apply(Command::DeleteUser { jid: "q@x".into() });
        assert_eq!(a.digest(), 0);
        assert_eq!((a.total_queue_bytes(), a.roster_len("p@x")), (0, 0));
        let fresh = reload(&mut a, &mut disk);
        assert!(disk.is_empty());
        assert_eq!(fresh.digest(), 0);
        assert_eq!(fresh.total_queue_bytes(), 0);
    }

    #[test]
    fn snapshot_round_trip() {
        let mut a = StateData::default();
        create(&mut a, "a@x");
        enqueue(&mut a, "a@x", "m1", 5);
        a.apply(Command::BindSession {
            full_jid: "a@x/r".into(),
            binding: SessionBinding {
                node: 3,
                session: 1,
                priority: 5,
                available: true,
                carbons: false,
                presence: None,
                bound_ms: 9,
            },
        });
        set_item(&mut a, "a@x", "c@x", 5);
        let bytes = a.to_snapshot().unwrap();
        let b = StateData::from_snapshot(&bytes).unwrap();
        assert_eq!(a.digest(), b.digest());
        assert_eq!(kept(&b), kept(&a));
        assert_eq!(b.queue_bytes("a@x"), 18);
        assert_eq!(b.roster_len("a@x"), 1);
        assert_eq!(b.sessions.get(&"a@x/r".to_string()).unwrap().priority, 5);
        assert!(StateData::from_snapshot(b"garbage").is_err());
    }

    #[test]
    fn batch_applies_in_order_with_one_result_each() {
        let mut batched = StateData::default();
        let mut single = StateData::default();
        let c = creds();
        let cmds = vec![
            Command::CreateUser {
                jid: "a@x".into(),
                credentials: c.clone(),
                created_ms: 1,
            },
            Command::CreateUser {
                jid: "a@x".into(),
                credentials: c.clone(),
                created_ms: 2,
            },
            Command::BindSession {
                full_jid: "a@x/r".into(),
                binding: SessionBinding {
                    node: 1,
                    session: 1,
                    priority: 0,
                    available: false,
                    carbons: false,
                    presence: None,
                    bound_ms: 0,
                },
            },
            Command::Batch { commands: vec![] },
        ];
        let r = batched.apply(Command::Batch {
            commands: cmds.clone(),
        });
        let Response::Batch { responses } = r else {
            panic!("{r:?}")
        };
        assert_eq!(responses[0], Response::UserCreated);
        assert_eq!(responses[1], Response::UserExists);
        assert_eq!(responses[2], Response::Bound { replaced: None });
        assert!(matches!(responses[3], Response::Rejected { .. }));
        for cmd in cmds.into_iter().take(3) {
            single.apply(cmd);
        }
        assert_eq!(batched.digest(), single.digest());
    }

    #[test]
    fn tables_follow_the_key_space_list() {
        let d = StateData::default();
        let archive = d.archive.read();
        let prefixes: Vec<u8> = d.tables(&archive).iter().map(|t| t.prefix()).collect();
        let listed: Vec<u8> = TABLES.iter().map(|t| t.prefix).collect();
        assert_eq!(prefixes, listed);
    }
}
