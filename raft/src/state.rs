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
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::command::{Invite, OfflineMessage, RosterItem, SessionBinding, UserRecord};
use crate::keyspace::{self, TABLES};
use crate::table::{Row, StoredTable, Table, Tracker, Writes};
use crate::types::NodeId;

/// All replicated tables. Serialized whole as a snapshot.
#[derive(Debug, Clone)]
pub struct StateData {
    pub users: Table<String, UserRecord>,
    pub sessions: Table<String, SessionBinding>,
    pub roster: Table<(String, String), RosterItem>,
    pub offline: Table<(String, u64), OfflineMessage>,
    pub offline_next: Table<String, u64>,
    pub offline_ids: Table<(String, String), u64>,
    /// Ids removed from a queue (delivered), so that a late retry of their
    /// enqueue (an outcome that was unknown, proposed again) does not queue
    /// them a second time. At most [`MAX_DONE`] per account, oldest pruned.
    pub offline_done: Table<(String, String), u64>,
    /// Registration invitations by the SHA-256 of their token.
    pub invites: Table<String, Invite>,
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
            roster: Table::new(keyspace::ROSTER.prefix),
            offline: Table::new(keyspace::OFFLINE.prefix),
            offline_next: Table::new(keyspace::OFFLINE_NEXT.prefix),
            offline_ids: Table::new(keyspace::OFFLINE_IDS.prefix),
            offline_done: Table::new(keyspace::OFFLINE_DONE.prefix),
            invites: Table::new(keyspace::INVITES.prefix),
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
        format!("{:032x}", self.tracker.digest)
    }

    pub fn digest(&self) -> u128 {
        self.tracker.digest
    }

    /// Takes the writes recorded since the last call (or the first codec
    /// error met while recording them).
    pub fn take_writes(&mut self) -> Result<Writes, CodecError> {
        if let Some(e) = self.tracker.error.take() {
            self.tracker.writes = Writes::default();
            return Err(e);
        }
        Ok(std::mem::take(&mut self.tracker.writes))
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

    /// Every row as it is stored, in key order within each table.
    pub fn rows(&self) -> Result<Vec<Row>, CodecError> {
        let mut out = Vec::new();
        for table in self.tables() {
            table.rows(&mut out)?;
        }
        Ok(out)
    }

    /// Every table, in the order of [`keyspace::TABLES`].
    fn tables(&self) -> [&dyn StoredTable; TABLES.len()] {
        [
            &self.users,
            &self.sessions,
            &self.roster,
            &self.offline,
            &self.offline_next,
            &self.offline_ids,
            &self.offline_done,
            &self.invites,
        ]
    }

    /// Every table, in the order of [`keyspace::TABLES`].
    fn tables_mut(&mut self) -> [&mut dyn StoredTable; TABLES.len()] {
        [
            &mut self.users,
            &mut self.sessions,
            &mut self.roster,
            &mut self.offline,
            &mut self.offline_next,
            &mut self.offline_ids,
            &mut self.offline_done,
            &mut self.invites,
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
    use crate::command::{Command, Response, Subscription};
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
        data.apply(Command::EnqueueOffline {
            to: to.into(),
            message: OfflineMessage {
                id: id.into(),
                stamp_ms: 7,
                stanza: format!("<message id='{id}'/>"),
            },
            max_queue: cap,
        })
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
        let fresh = reload(&mut a, &mut disk);
        assert_eq!(fresh.digest(), a.digest());
        assert_eq!(fresh.queue_depth("p@x"), 1);
        // Removing everything brings the digest back to the empty state's.
        a.apply(Command::DeleteUser { jid: "p@x".into() });
        a.apply(Command::DeleteUser { jid: "q@x".into() });
        assert_eq!(a.digest(), 0);
        let fresh = reload(&mut a, &mut disk);
        assert!(disk.is_empty());
        assert_eq!(fresh.digest(), 0);
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
        let bytes = a.to_snapshot().unwrap();
        let b = StateData::from_snapshot(&bytes).unwrap();
        assert_eq!(a.digest(), b.digest());
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
        let prefixes: Vec<u8> = d.tables().iter().map(|t| t.prefix()).collect();
        let listed: Vec<u8> = TABLES.iter().map(|t| t.prefix).collect();
        assert_eq!(prefixes, listed);
    }
}
