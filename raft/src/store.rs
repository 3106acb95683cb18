//! sled-backed storage for openraft (storage v2): the log store and the
//! state machine store. One sled database per node, in its data directory.
//!
//! The trees and their keys are listed in [`crate::keyspace`]: `log` (the
//! entries), `raft` (vote, committed, purged, node id), `sm` (the state
//! machine's rows, plus its applied log id and membership) and `snapshot`.
//!
//! Durability: a vote or an appended entry is flushed to disk before openraft
//! is told it is stored (`append` calls the callback only after the flush).
//! The state machine writes each applied batch's rows together with
//! `last_applied` and the membership in one atomic sled batch, so the stored
//! state always describes exactly the entries it says it has applied.
//! Rows of derived tables ([`keyspace::is_derived`]: the archive's id
//! index) are left out of it and rebuilt when the tree is loaded.
// openraft's storage traits return its `StorageError` (large) by value; the
// helpers here return the same type rather than boxing and unboxing it.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine};
use openraft::{
    EntryPayload, OptionalSend, RaftLogId, RaftLogReader, RaftSnapshotBuilder, StorageIOError,
};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::command::Response;
use crate::keyspace::{self, META_PREFIX};
use crate::state::StateData;
use crate::types::{
    Entry, LogId, NodeId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig, Vote,
};

/// Opening the store failed, or it belongs to another node.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored state is unreadable: {0}")]
    Codec(#[from] codec::CodecError),
    #[error(
        "data directory belongs to node {stored}, but this node is configured as {configured}"
    )]
    WrongNode { stored: NodeId, configured: NodeId },
}

fn io_err<E: std::error::Error + 'static>(
    f: fn(openraft::AnyError) -> StorageIOError<NodeId>,
) -> impl Fn(E) -> StorageError {
    move |e| f(openraft::AnyError::new(&e)).into()
}

fn write_logs_err(e: openraft::AnyError) -> StorageIOError<NodeId> {
    StorageIOError::write_logs(e)
}
fn read_logs_err(e: openraft::AnyError) -> StorageIOError<NodeId> {
    StorageIOError::read_logs(e)
}
fn write_vote_err(e: openraft::AnyError) -> StorageIOError<NodeId> {
    StorageIOError::write_vote(e)
}
fn read_vote_err(e: openraft::AnyError) -> StorageIOError<NodeId> {
    StorageIOError::read_vote(e)
}
fn write_sm_err(e: openraft::AnyError) -> StorageIOError<NodeId> {
    StorageIOError::write_state_machine(e)
}
fn read_sm_err(e: openraft::AnyError) -> StorageIOError<NodeId> {
    StorageIOError::read_state_machine(e)
}
fn write_snap_err(e: openraft::AnyError) -> StorageIOError<NodeId> {
    StorageIOError::write_snapshot(None, e)
}
fn read_snap_err(e: openraft::AnyError) -> StorageIOError<NodeId> {
    StorageIOError::read_snapshot(None, e)
}

/// Opens (or creates) the node's sled database and its two stores.
///
/// `node_id` is stamped into a fresh database and checked on every later
/// open, so a data directory cannot silently change identity.
pub fn open(
    path: &std::path::Path,
    node_id: NodeId,
) -> Result<(LogStore, StateMachineStore), OpenError> {
    let db = sled::Config::new()
        .path(path)
        .mode(sled::Mode::HighThroughput)
        .open()?;
    let raft = db.open_tree(keyspace::RAFT.name)?;
    match raft.get(keyspace::NODE_ID)? {
        Some(v) => {
            let stored: NodeId = codec::decode(&v)?;
            if stored != node_id {
                return Err(OpenError::WrongNode {
                    stored,
                    configured: node_id,
                });
            }
        }
        None => {
            raft.insert(keyspace::NODE_ID, codec::encode(&node_id)?)?;
            db.flush()?;
        }
    }
    let log = LogStore {
        db: db.clone(),
        log: db.open_tree(keyspace::LOG.name)?,
        raft,
    };
    let sm = StateMachineStore::load(db)?;
    Ok((log, sm))
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The raft log and vote, in the `log` and `raft` trees.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    raft: sled::Tree,
}

impl LogStore {
    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        err: fn(openraft::AnyError) -> StorageIOError<NodeId>,
    ) -> Result<Option<T>, StorageError> {
        match self.raft.get(key).map_err(io_err(err))? {
            Some(v) => Ok(Some(codec::decode(&v).map_err(io_err(err))?)),
            None => Ok(None),
        }
    }

    fn put_meta<T: Serialize>(
        &self,
        key: &[u8],
        value: &T,
        err: fn(openraft::AnyError) -> StorageIOError<NodeId>,
    ) -> Result<(), StorageError> {
        let bytes = codec::encode(value).map_err(io_err(err))?;
        self.raft.insert(key, bytes).map_err(io_err(err))?;
        Ok(())
    }
}

fn to_byte_range<RB: RangeBounds<u64>>(range: &RB) -> (Bound<[u8; 8]>, Bound<[u8; 8]>) {
    let start = match range.start_bound() {
        Bound::Included(i) => Bound::Included(index_key(*i)),
        Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
        Bound::Unbounded => Bound::Unbounded,
    };
    let end = match range.end_bound() {
        Bound::Included(i) => Bound::Included(index_key(*i)),
        Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
        Bound::Unbounded => Bound::Unbounded,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let mut out = Vec::new();
        for item in self.log.range(to_byte_range(&range)) {
            let (_, v) = item.map_err(io_err(read_logs_err))?;
            out.push(codec::decode::<Entry>(&v).map_err(io_err(read_logs_err))?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.get_meta(keyspace::PURGED, read_logs_err)?;
        let last = match self.log.last().map_err(io_err(read_logs_err))? {
            Some((_, v)) => Some(
                *codec::decode::<Entry>(&v)
                    .map_err(io_err(read_logs_err))?
                    .get_log_id(),
            ),
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_meta(keyspace::VOTE, vote, write_vote_err)?;
        self.db
            .flush_async()
            .await
            .map_err(io_err(write_vote_err))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(keyspace::VOTE, read_vote_err)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.put_meta(keyspace::COMMITTED, &committed, write_logs_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .get_meta::<Option<LogId>>(keyspace::COMMITTED, read_logs_err)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Encoding (an archive batch is up to 512 KiB) and sled, which may
        // block on I/O: on a blocking thread, not a runtime worker (every
        // session shares those).
        let entries: Vec<Entry> = entries.into_iter().collect();
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || {
            let mut batch = sled::Batch::default();
            for entry in &entries {
                let bytes = codec::encode(entry).map_err(io_err(write_logs_err))?;
                batch.insert(&index_key(entry.get_log_id().index), bytes);
            }
            log.apply_batch(batch).map_err(io_err(write_logs_err))
        })
        .await
        .map_err(io_err(write_logs_err))??;
        // One flush covers every entry of this call (and whatever the state
        // machine wrote before it): many commands per fsync under load.
        let flushed = self.db.flush_async().await;
        match flushed {
            Ok(_) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                callback.log_io_completed(Err(std::io::Error::other(msg)));
                Err(io_err(write_logs_err)(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for item in self.log.range(index_key(log_id.index)..) {
            let (k, _) = item.map_err(io_err(write_logs_err))?;
            batch.remove(k);
        }
        self.log
            .apply_batch(batch)
            .map_err(io_err(write_logs_err))?;
        self.db
            .flush_async()
            .await
            .map_err(io_err(write_logs_err))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: a crash half way leaves extra
        // entries below it, which are ignored, never a gap above it.
        self.put_meta(keyspace::PURGED, &log_id, write_logs_err)?;
        let mut batch = sled::Batch::default();
        for item in self.log.range(..=index_key(log_id.index)) {
            let (k, _) = item.map_err(io_err(write_logs_err))?;
            batch.remove(k);
        }
        self.log
            .apply_batch(batch)
            .map_err(io_err(write_logs_err))?;
        Ok(())
    }
}

/// What the state machine has applied, kept under one lock with the data it
/// describes so readers never see one without the other.
#[derive(Debug, Clone, Default)]
pub struct AppliedState {
    pub data: StateData,
    pub last_applied: Option<LogId>,
    /// The index of the last applied entry that delivery may depend on:
    /// every entry but an archive-only one ([`StateData::archive_only`]).
    /// A mesh envelope carries the sender's, and the receiving node
    /// delivers once it has applied that far (`mesh::service::catch_up`):
    /// a session binding, a block list or a subscription the sender knew
    /// is known where the stanza lands. Archive batches, which no delivery
    /// reads, do not count, so the live path never waits for a follower
    /// to apply the archive (it did: p99 of 56-416 ms at 5,000 msg/s cross
    /// node with the archive on). After a restart or a snapshot, the last
    /// applied index (not knowing better).
    pub causal_index: u64,
    pub membership: StoredMembership,
    /// Index of the last snapshot built or installed here.
    pub snapshot: Option<LogId>,
    /// Bytes of that snapshot's data (0 until one is built or installed
    /// by this process).
    pub snapshot_bytes: u64,
}

/// A cloneable read handle on the applied state, for everything outside raft
/// (admin queries, and later routing).
#[derive(Clone)]
pub struct StateReader(Arc<RwLock<AppliedState>>);

impl StateReader {
    /// Read access; the lock is held only as long as the guard lives, so do
    /// not keep it across an `.await`.
    pub fn read(&self) -> RwLockReadGuard<'_, AppliedState> {
        // A poisoned lock means a panic while applying; the data is still
        // the last consistent batch, so reading it is safe.
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    #[serde(with = "crate::codec::bytes")]
    data: Vec<u8>,
}

/// The state machine: applied rows in the `sm` tree, a working copy in memory.
#[derive(Clone)]
pub struct StateMachineStore {
    db: sled::Db,
    sm: sled::Tree,
    snapshots: sled::Tree,
    state: Arc<RwLock<AppliedState>>,
}

impl StateMachineStore {
    fn load(db: sled::Db) -> Result<Self, OpenError> {
        let sm = db.open_tree(keyspace::SM.name)?;
        let snapshots = db.open_tree(keyspace::SNAPSHOT.name)?;
        let mut applied = AppliedState::default();
        let mut stale = sled::Batch::default();
        let mut any_stale = false;
        for item in sm.iter() {
            let (k, v) = item?;
            if keyspace::is_derived(&k) {
                // Stored by an earlier build; rebuilt below instead.
                stale.remove(k);
                any_stale = true;
            } else if k.first() == Some(&META_PREFIX) {
                match &*k {
                    keyspace::APPLIED => {
                        applied.last_applied = codec::decode(&v)?;
                        applied.causal_index = applied.last_applied.map_or(0, |l| l.index);
                    }
                    keyspace::MEMBERSHIP => applied.membership = codec::decode(&v)?,
                    _ => {}
                }
            } else {
                applied.data.load_row(&k, &v)?;
            }
        }
        applied.data.rebuild_derived()?;
        if any_stale {
            sm.apply_batch(stale)?;
        }
        if let Some(meta) = snapshots.get(keyspace::SNAP_META)? {
            let meta: SnapshotMeta = codec::decode(&meta)?;
            applied.snapshot = meta.last_log_id;
        }
        Ok(StateMachineStore {
            db,
            sm,
            snapshots,
            state: Arc::new(RwLock::new(applied)),
        })
    }

    pub fn reader(&self) -> StateReader {
        StateReader(self.state.clone())
    }

    fn read_membership(&self) -> StoredMembership {
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        st.membership.clone()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, AppliedState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let (meta, data) = {
            let st = self.state.read().unwrap_or_else(|p| p.into_inner());
            let data = st.data.to_snapshot().map_err(io_err(read_sm_err))?;
            let id = match st.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id, l.index, st.data.digest_hex()),
                None => format!("empty-{}", st.data.digest_hex()),
            };
            let meta = SnapshotMeta {
                last_log_id: st.last_applied,
                last_membership: st.membership.clone(),
                snapshot_id: id,
            };
            (meta, data)
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let bytes = codec::encode(&stored).map_err(io_err(write_snap_err))?;
        self.snapshots
            .insert(
                keyspace::SNAP_META,
                codec::encode(&meta).map_err(io_err(write_snap_err))?,
            )
            .map_err(io_err(write_snap_err))?;
        self.snapshots
            .insert(keyspace::SNAP_DATA, bytes)
            .map_err(io_err(write_snap_err))?;
        self.db
            .flush_async()
            .await
            .map_err(io_err(write_snap_err))?;
        {
            let mut st = self.write();
            st.snapshot = meta.last_log_id;
            st.snapshot_bytes = stored.data.len() as u64;
        }
        tracing::info!(snapshot = %meta.snapshot_id, bytes = stored.data.len(), "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        Ok((st.last_applied, st.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // The state lock is taken per entry and released before the sled
        // write: routing reads the state on every stanza, and must not wait
        // behind a whole append's worth of applies and their disk write.
        let mut responses = Vec::new();
        let mut membership_changed = false;
        let mut ops = Vec::new();
        let mut last_applied = None;
        for entry in entries {
            let (term, index) = (entry.log_id.leader_id.term, entry.log_id.index);
            let payload = match entry.payload {
                EntryPayload::Normal(cmd) if StateData::archive_only(&cmd) => {
                    // An archive append (the most frequent write of a busy
                    // cluster) writes only the archive, under its own lock:
                    // applied under a read lock of the state, it never
                    // holds up routing's reads (see `crate::archive`).
                    // On a blocking thread: a batch of hundreds of entries
                    // takes milliseconds, which on a runtime worker would
                    // hold up every session and mesh task queued behind it.
                    let state = self.state.clone();
                    let r = tokio::task::spawn_blocking(move || {
                        let st = state.read().unwrap_or_else(|p| p.into_inner());
                        st.data.apply_archive(cmd)
                    })
                    .await
                    .map_err(io_err(write_sm_err))?;
                    let mut st = self.write();
                    st.last_applied = Some(entry.log_id);
                    ops.extend(st.data.take_writes().map_err(io_err(write_sm_err))?.ops);
                    last_applied = st.last_applied;
                    responses.push(r);
                    continue;
                }
                p => p,
            };
            let mut st = self.write();
            st.last_applied = Some(entry.log_id);
            st.causal_index = index;
            let r = match payload {
                EntryPayload::Blank => Response::Done,
                EntryPayload::Normal(cmd) => st.data.apply_entry(cmd, term, index),
                EntryPayload::Membership(m) => {
                    st.membership = StoredMembership::new(Some(entry.log_id), m);
                    membership_changed = true;
                    Response::Done
                }
            };
            ops.extend(st.data.take_writes().map_err(io_err(write_sm_err))?.ops);
            last_applied = st.last_applied;
            responses.push(r);
        }
        if responses.is_empty() {
            return Ok(responses);
        }
        let membership = if membership_changed {
            Some(self.read_membership())
        } else {
            None
        };
        let applied = codec::encode(&last_applied).map_err(io_err(write_sm_err))?;
        let membership = match membership {
            Some(m) => Some(codec::encode(&m).map_err(io_err(write_sm_err))?),
            None => None,
        };
        let sm = self.sm.clone();
        // The batch is built where it is written, off the runtime's
        // workers (an archive append brings thousands of rows).
        tokio::task::spawn_blocking(move || {
            let mut batch = sled::Batch::default();
            // Rows of derived tables are not stored: loading rebuilds
            // them (`keyspace::is_derived`).
            for (k, v) in ops.into_iter().filter(|(k, _)| !keyspace::is_derived(k)) {
                match v {
                    Some(v) => batch.insert(k, v),
                    None => batch.remove(k),
                }
            }
            batch.insert(keyspace::APPLIED, applied);
            if let Some(m) = membership {
                batch.insert(keyspace::MEMBERSHIP, m);
            }
            sm.apply_batch(batch)
        })
        .await
        .map_err(io_err(write_sm_err))?
        .map_err(io_err(write_sm_err))?;
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let data = StateData::from_snapshot(&bytes).map_err(io_err(read_snap_err))?;
        // Replace the whole sm tree in one atomic batch: delete every row
        // that is there, write every row of the snapshot and its meta.
        let mut batch = sled::Batch::default();
        for item in self.sm.iter().keys() {
            batch.remove(item.map_err(io_err(write_sm_err))?);
        }
        for (k, v) in data.rows().map_err(io_err(write_sm_err))? {
            if !keyspace::is_derived(&k) {
                batch.insert(k, v);
            }
        }
        batch.insert(
            keyspace::APPLIED,
            codec::encode(&meta.last_log_id).map_err(io_err(write_sm_err))?,
        );
        batch.insert(
            keyspace::MEMBERSHIP,
            codec::encode(&meta.last_membership).map_err(io_err(write_sm_err))?,
        );
        self.sm.apply_batch(batch).map_err(io_err(write_sm_err))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: bytes,
        };
        self.snapshots
            .insert(
                keyspace::SNAP_META,
                codec::encode(meta).map_err(io_err(write_snap_err))?,
            )
            .map_err(io_err(write_snap_err))?;
        self.snapshots
            .insert(
                keyspace::SNAP_DATA,
                codec::encode(&stored).map_err(io_err(write_snap_err))?,
            )
            .map_err(io_err(write_snap_err))?;
        self.db
            .flush_async()
            .await
            .map_err(io_err(write_snap_err))?;
        let mut st = self.write();
        st.data = data;
        st.last_applied = meta.last_log_id;
        st.causal_index = meta.last_log_id.map_or(0, |l| l.index);
        st.membership = meta.last_membership.clone();
        st.snapshot = meta.last_log_id;
        st.snapshot_bytes = stored.data.len() as u64;
        tracing::info!(snapshot = %meta.snapshot_id, last_log_id = ?meta.last_log_id, bytes = stored.data.len(), "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let Some(bytes) = self
            .snapshots
            .get(keyspace::SNAP_DATA)
            .map_err(io_err(read_snap_err))?
        else {
            return Ok(None);
        };
        let stored: StoredSnapshot = codec::decode(&bytes).map_err(io_err(read_snap_err))?;
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}
