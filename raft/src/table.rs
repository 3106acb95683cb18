//! The generic table of the replicated state and the digest over it.
//!
//! A [`Table`] is an ordered in-memory map whose rows are stored in the
//! state machine's sled tree under one prefix byte (the tables and their
//! prefixes are listed in [`crate::keyspace`]). Every change goes through a
//! `Tracker`, which records the key/value write the store persists and keeps
//! the digest.
//!
//! # Digest
//! The digest is the wrapping sum, mod 2^128, of SHA-256(key, value) over
//! every row of every table: a multiset hash, so it is updated in O(1) per
//! changed row (subtract the old row, add the new) and two nodes with the
//! same rows have the same digest whatever order they were written in.
//!
//! # Measured tables
//! A [`Measured`] table also keeps, per owner (the account a key starts
//! with) and in all, a running sum of a measure of its values: the bytes of
//! the offline queues, the items of the rosters. The sums are what the
//! budgets of `apply` compare with; they are derived from the rows (never
//! stored), so they are rebuilt by loading the rows, at start-up or from a
//! snapshot, and the storage format and the digest are unchanged.
use std::collections::{BTreeMap, HashMap};

use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::codec::{self, CodecError};

/// A key of a table, encoded so that byte order equals key order.
pub trait TableKey: Ord + Clone {
    fn encode(&self, out: &mut Vec<u8>);
    fn decode(bytes: &[u8]) -> Option<Self>;
}

impl TableKey for String {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        String::from_utf8(bytes.to_vec()).ok()
    }
}

impl TableKey for (String, String) {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.0.as_bytes());
        out.push(0);
        out.extend_from_slice(self.1.as_bytes());
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        let pos = bytes.iter().position(|b| *b == 0)?;
        let a = String::from_utf8(bytes[..pos].to_vec()).ok()?;
        let b = String::from_utf8(bytes[pos + 1..].to_vec()).ok()?;
        Some((a, b))
    }
}

impl TableKey for (String, u64) {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.0.as_bytes());
        out.push(0);
        out.extend_from_slice(&self.1.to_be_bytes());
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < 9 || bytes[bytes.len() - 9] != 0 {
            return None;
        }
        let (a, b) = bytes.split_at(bytes.len() - 9);
        let a = String::from_utf8(a.to_vec()).ok()?;
        let seq = u64::from_be_bytes(b[1..].try_into().ok()?);
        Some((a, seq))
    }
}

/// A key whose first part names the account that owns the row.
pub trait OwnedKey: TableKey {
    fn owner(&self) -> &str;
}

impl OwnedKey for (String, String) {
    fn owner(&self) -> &str {
        &self.0
    }
}

impl OwnedKey for (String, u64) {
    fn owner(&self) -> &str {
        &self.0
    }
}

/// One stored row: (key, value) bytes.
pub type Row = (Vec<u8>, Vec<u8>);

/// Writes produced by applying commands: `(key, Some(value))` is a put,
/// `(key, None)` a delete. Applied to sled in order, in one atomic batch.
#[derive(Debug, Default)]
pub struct Writes {
    pub ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// The change-tracking context every table mutation goes through.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    pub(crate) writes: Writes,
    pub(crate) digest: u128,
    /// The first encoding error met during a batch; the store turns it into
    /// a storage error (values are plain data, so this is not expected).
    pub(crate) error: Option<CodecError>,
}

fn row_hash(key: &[u8], value: &[u8]) -> u128 {
    let mut h = Sha256::new();
    h.update((key.len() as u32).to_be_bytes());
    h.update(key);
    h.update(value);
    let out = h.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&out[..16]);
    u128::from_be_bytes(first)
}

/// One table: an ordered map plus its key prefix in the sled tree.
#[derive(Debug, Clone)]
pub struct Table<K, V> {
    prefix: u8,
    map: BTreeMap<K, V>,
}

impl<K: TableKey, V: Serialize + DeserializeOwned + Clone> Table<K, V> {
    pub(crate) fn new(prefix: u8) -> Self {
        Table {
            prefix,
            map: BTreeMap::new(),
        }
    }

    fn full_key(&self, key: &K) -> Vec<u8> {
        let mut out = vec![self.prefix];
        key.encode(&mut out);
        out
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map.iter()
    }

    pub fn range<R: std::ops::RangeBounds<K>>(
        &self,
        r: R,
    ) -> impl DoubleEndedIterator<Item = (&K, &V)> {
        self.map.range(r)
    }

    pub(crate) fn insert(&mut self, key: K, value: V, t: &mut Tracker) -> Option<V> {
        let full = self.full_key(&key);
        let bytes = match codec::encode(&value) {
            Ok(b) => b,
            Err(e) => {
                t.error.get_or_insert(e);
                return self.map.get(&key).cloned();
            }
        };
        let old = self.map.insert(key, value);
        if let Some(old) = &old {
            self.unhash(&full, old, t);
        }
        t.digest = t.digest.wrapping_add(row_hash(&full, &bytes));
        t.writes.ops.push((full, Some(bytes)));
        old
    }

    pub(crate) fn remove(&mut self, key: &K, t: &mut Tracker) -> Option<V> {
        let old = self.map.remove(key)?;
        let full = self.full_key(key);
        self.unhash(&full, &old, t);
        t.writes.ops.push((full, None));
        Some(old)
    }

    fn unhash(&self, full: &[u8], old: &V, t: &mut Tracker) {
        match codec::encode(old) {
            Ok(bytes) => t.digest = t.digest.wrapping_sub(row_hash(full, &bytes)),
            Err(e) => {
                t.error.get_or_insert(e);
            }
        }
    }

    /// Loads one stored row (start-up or snapshot install); returns its hash.
    pub(crate) fn load_row(&mut self, key: &[u8], value: &[u8]) -> Result<u128, CodecError> {
        self.load_decoded(key, value).map(|(h, _, _)| h)
    }

    /// [`Table::load_row`], also giving the decoded key and the value the
    /// row replaced (none, when rows are loaded once each).
    fn load_decoded(
        &mut self,
        key: &[u8],
        value: &[u8],
    ) -> Result<(u128, K, Option<V>), CodecError> {
        let k = K::decode(key)
            .ok_or_else(|| CodecError::msg(format!("bad key in table {}", self.prefix as char)))?;
        let v: V = codec::decode(value)?;
        let old = self.map.insert(k.clone(), v);
        let mut full = vec![self.prefix];
        full.extend_from_slice(key);
        Ok((row_hash(&full, value), k, old))
    }

    /// Every row as stored bytes, for rewriting the tree from a snapshot.
    pub(crate) fn rows(&self, out: &mut Vec<Row>) -> Result<(), CodecError> {
        for (k, v) in &self.map {
            out.push((self.full_key(k), codec::encode(v)?));
        }
        Ok(())
    }
}

/// A table with its key and value types erased: what loading and listing
/// the stored rows of every table needs.
pub(crate) trait StoredTable {
    fn prefix(&self) -> u8;
    fn load_row(&mut self, key: &[u8], value: &[u8]) -> Result<u128, CodecError>;
    fn rows(&self, out: &mut Vec<Row>) -> Result<(), CodecError>;
}

impl<K: TableKey, V: Serialize + DeserializeOwned + Clone> StoredTable for Table<K, V> {
    fn prefix(&self) -> u8 {
        self.prefix
    }
    fn load_row(&mut self, key: &[u8], value: &[u8]) -> Result<u128, CodecError> {
        Table::load_row(self, key, value)
    }
    fn rows(&self, out: &mut Vec<Row>) -> Result<(), CodecError> {
        Table::rows(self, out)
    }
}

/// A [`Table`] with a running sum of `measure` over its values, per owner
/// and in all (see the module doc). Reads go to the table (`Deref`); every
/// change goes through `Measured::insert` and `Measured::remove`, which
/// keep the sums, so no change can bypass them.
#[derive(Debug, Clone)]
pub struct Measured<K, V> {
    table: Table<K, V>,
    measure: fn(&V) -> u64,
    per_owner: HashMap<String, u64>,
    total: u64,
}

impl<K: OwnedKey, V: Serialize + DeserializeOwned + Clone> Measured<K, V> {
    pub(crate) fn new(prefix: u8, measure: fn(&V) -> u64) -> Self {
        Measured {
            table: Table::new(prefix),
            measure,
            per_owner: HashMap::new(),
            total: 0,
        }
    }

    /// The sum of the measure over `owner`'s rows.
    pub fn of_owner(&self, owner: &str) -> u64 {
        self.per_owner.get(owner).copied().unwrap_or(0)
    }

    /// The sum of the measure over every row.
    pub fn total(&self) -> u64 {
        self.total
    }

    pub(crate) fn insert(&mut self, key: K, value: V, t: &mut Tracker) -> Option<V> {
        let owner = key.owner().to_string();
        let added = (self.measure)(&value);
        let old = self.table.insert(key, value, t);
        let taken = old.as_ref().map_or(0, self.measure);
        self.count(&owner, added, taken);
        old
    }

    pub(crate) fn remove(&mut self, key: &K, t: &mut Tracker) -> Option<V> {
        let old = self.table.remove(key, t);
        let taken = old.as_ref().map_or(0, self.measure);
        self.count(key.owner(), 0, taken);
        old
    }

    /// Adds `added` to `owner`'s sum and the total, and takes `taken` out.
    fn count(&mut self, owner: &str, added: u64, taken: u64) {
        self.total = (self.total + added).saturating_sub(taken);
        match self.per_owner.get_mut(owner) {
            Some(sum) => {
                *sum = (*sum + added).saturating_sub(taken);
                if *sum == 0 {
                    // An emptied owner leaves no entry behind.
                    self.per_owner.remove(owner);
                }
            }
            None if added > taken => {
                self.per_owner.insert(owner.to_string(), added - taken);
            }
            None => {}
        }
    }
}

impl<K, V> std::ops::Deref for Measured<K, V> {
    type Target = Table<K, V>;
    fn deref(&self) -> &Table<K, V> {
        &self.table
    }
}

impl<K: OwnedKey, V: Serialize + DeserializeOwned + Clone> StoredTable for Measured<K, V> {
    fn prefix(&self) -> u8 {
        self.table.prefix
    }
    fn load_row(&mut self, key: &[u8], value: &[u8]) -> Result<u128, CodecError> {
        let (h, k, old) = self.table.load_decoded(key, value)?;
        let added = self.table.get(&k).map_or(0, self.measure);
        let taken = old.as_ref().map_or(0, self.measure);
        self.count(k.owner(), added, taken);
        Ok(h)
    }
    fn rows(&self, out: &mut Vec<Row>) -> Result<(), CodecError> {
        self.table.rows(out)
    }
}

impl Clone for Tracker {
    fn clone(&self) -> Self {
        Tracker {
            writes: Writes::default(),
            digest: self.digest,
            error: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_codecs_round_trip() {
        let k = ("a@x".to_string(), 258u64);
        let mut out = Vec::new();
        k.encode(&mut out);
        assert_eq!(<(String, u64)>::decode(&out), Some(k));
        let k = ("a@x".to_string(), "b@y".to_string());
        let mut out = Vec::new();
        k.encode(&mut out);
        assert_eq!(<(String, String)>::decode(&out), Some(k));
        assert_eq!(<(String, u64)>::decode(b"short"), None);
    }
}
