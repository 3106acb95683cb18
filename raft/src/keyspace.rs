//! The key space, declared once: every sled tree of a node's database and,
//! in the state machine tree, every table's prefix byte, each with its
//! key -> value layout (after continuwuity's one list of maps,
//! `src/database/maps.rs`). The store and the state name trees, tables and
//! keys through these constants, never by literal.
//!
//! Values are MessagePack ([`crate::codec`]); keys are raw bytes encoded so
//! that byte order is key order ([`crate::table::TableKey`]). These names,
//! prefixes and encodings are the on-disk and snapshot format: existing data
//! directories are read with them, so never rename or renumber one; a new
//! table takes a new prefix.

/// One sled tree of a node's database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeSpec {
    /// The sled tree name.
    pub name: &'static str,
    /// What a key is.
    pub key: &'static str,
    /// What a value is.
    pub value: &'static str,
}

/// One table of the state machine tree ([`SM`]): its rows are stored under
/// `prefix` followed by the encoded key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSpec {
    pub prefix: u8,
    /// The table's field name in [`crate::state::StateData`].
    pub name: &'static str,
    /// What a key is, as encoded after the prefix.
    pub key: &'static str,
    /// What a value is.
    pub value: &'static str,
}

/// The raft log.
pub const LOG: TreeSpec = TreeSpec {
    name: "log",
    key: "log index, u64 big-endian",
    value: "openraft Entry",
};

/// Raft bookkeeping of the log store.
pub const RAFT: TreeSpec = TreeSpec {
    name: "raft",
    key: "VOTE | COMMITTED | PURGED | NODE_ID",
    value: "Vote | Option<LogId> | LogId | NodeId",
};

/// The state machine: the rows of every table of [`TABLES`], plus the
/// state machine's own bookkeeping under [`META_PREFIX`].
pub const SM: TreeSpec = TreeSpec {
    name: "sm",
    key: "table prefix ++ table key, or APPLIED | MEMBERSHIP",
    value: "the table's value, or Option<LogId> | StoredMembership",
};

/// The last snapshot built or installed.
pub const SNAPSHOT: TreeSpec = TreeSpec {
    name: "snapshot",
    key: "SNAP_META | SNAP_DATA",
    value: "SnapshotMeta | StoredSnapshot (meta and the snapshot's bytes)",
};

/// Every tree of the database.
pub const TREES: &[TreeSpec] = &[LOG, RAFT, SM, SNAPSHOT];

/// Keys of the [`RAFT`] tree.
pub const VOTE: &[u8] = b"vote";
pub const COMMITTED: &[u8] = b"committed";
pub const PURGED: &[u8] = b"purged";
/// The node id a data directory belongs to, stamped when it is created.
pub const NODE_ID: &[u8] = b"node_id";

/// Keys of the [`SNAPSHOT`] tree.
pub const SNAP_META: &[u8] = b"meta";
pub const SNAP_DATA: &[u8] = b"data";

/// Accounts.
pub const USERS: TableSpec = TableSpec {
    prefix: b'u',
    name: "users",
    key: "bare JID",
    value: "UserRecord",
};

/// Session bindings: which node holds a full JID.
pub const SESSIONS: TableSpec = TableSpec {
    prefix: b's',
    name: "sessions",
    key: "full JID",
    value: "SessionBinding",
};

/// Roster items.
pub const ROSTER: TableSpec = TableSpec {
    prefix: b'r',
    name: "roster",
    key: "owner bare JID \\0 contact bare JID",
    value: "RosterItem",
};

/// Offline queues.
pub const OFFLINE: TableSpec = TableSpec {
    prefix: b'q',
    name: "offline",
    key: "bare JID \\0 seq, u64 big-endian",
    value: "OfflineMessage",
};

/// The next sequence number of each offline queue.
pub const OFFLINE_NEXT: TableSpec = TableSpec {
    prefix: b'n',
    name: "offline_next",
    key: "bare JID",
    value: "next seq, u64",
};

/// The queued message ids of each offline queue.
pub const OFFLINE_IDS: TableSpec = TableSpec {
    prefix: b'i',
    name: "offline_ids",
    key: "bare JID \\0 message id",
    value: "seq, u64",
};

/// Message ids removed from each offline queue.
pub const OFFLINE_DONE: TableSpec = TableSpec {
    prefix: b'd',
    name: "offline_done",
    key: "bare JID \\0 message id",
    value: "log index of the removal, u64",
};

/// Registration invitations (XEP-0401/0445 tokens), by the token's hash:
/// the token itself is never stored.
pub const INVITES: TableSpec = TableSpec {
    prefix: b'v',
    name: "invites",
    key: "SHA-256 of the token, 64 hex digits",
    value: "Invite",
};

/// Block lists (XEP-0191): one row per blocked JID of an account.
pub const BLOCKLIST: TableSpec = TableSpec {
    prefix: b'b',
    name: "blocklist",
    key: "owner bare JID \\0 blocked JID (full, bare or domain)",
    value: "nothing (unit)",
};

/// XEP-0484 FAST tokens per client: their verifiers, never the tokens.
pub const FAST_TOKENS: TableSpec = TableSpec {
    prefix: b'f',
    name: "fast_tokens",
    key: "bare JID \\0 SASL2 user-agent id",
    value: "FastClient (current and new FastToken)",
};

/// XEP-0357 push registrations: one row per app server (service JID and
/// node) an account enabled.
pub const PUSH: TableSpec = TableSpec {
    prefix: b'p',
    name: "push",
    key: "owner bare JID \\0 service JID \\0 pubsub node",
    value: "PushRegistration",
};

/// XEP-0313 message archives: one row per archived message of an account,
/// in time order (see [`crate::archive`]).
pub const ARCHIVE: TableSpec = TableSpec {
    prefix: b'a',
    name: "archive",
    key: "owner bare JID \\0 seq (stamp in µs, made unique per owner), u64 big-endian",
    value: "ArchivedMessage",
};

/// The archive ids (XEP-0359 stanza ids) of each archive. In snapshots
/// and the digest like every table, but **not stored in the [`SM`] tree**
/// (see [`is_derived`]): every row mirrors an [`ARCHIVE`] row (its
/// message's id -> its seq), so loading the archive rebuilds it, and an
/// archived message costs one sled insert on each node instead of two.
pub const ARCHIVE_IDS: TableSpec = TableSpec {
    prefix: b'h',
    name: "archive_ids",
    key: "owner bare JID \\0 archive id",
    value: "seq, u64",
};

/// XEP-0313 §6 archiving preferences (no row: the server's default).
pub const ARCHIVE_PREFS: TableSpec = TableSpec {
    prefix: b'o',
    name: "archive_prefs",
    key: "owner bare JID",
    value: "ArchivePrefs",
};

/// XEP-0045 rooms: definition, configuration, subject and present
/// occupants (see [`crate::muc`]).
pub const MUC_ROOMS: TableSpec = TableSpec {
    prefix: b'M',
    name: "muc_rooms",
    key: "room bare JID",
    value: "Room",
};

/// XEP-0045 affiliations of each room (no row: `none`).
pub const MUC_AFFILIATIONS: TableSpec = TableSpec {
    prefix: b'N',
    name: "muc_affiliations",
    key: "room bare JID \\0 user bare JID",
    value: "AffiliationRecord",
};

/// XEP-0163 PEP nodes of each account, with their configuration.
pub const PEP_NODES: TableSpec = TableSpec {
    prefix: b'e',
    name: "pep_nodes",
    key: "owner bare JID \\0 node name",
    value: "PepNode",
};

/// The items of each PEP node.
pub const PEP_ITEMS: TableSpec = TableSpec {
    prefix: b'E',
    name: "pep_items",
    key: "owner bare JID \\0 node name \\0 item id",
    value: "PepItem",
};

/// XEP-0115 capabilities: which PEP nodes a client version (`hash ver`,
/// verified) wants notifications of (`+notify`).
pub const CAPS: TableSpec = TableSpec {
    prefix: b'k',
    name: "caps",
    key: "hash function name, space, ver string; or \"jid \" and a full JID (a session's unverified caps, removed with its binding)",
    value: "node names, Vec<String>",
};

/// XEP-0054 vCards: one per account.
pub const VCARDS: TableSpec = TableSpec {
    prefix: b'V',
    name: "vcards",
    key: "owner bare JID",
    value: "the vCard, serialized XML",
};

/// XEP-0049 private XML storage: one element per (namespace, name).
pub const PRIVATE: TableSpec = TableSpec {
    prefix: b'x',
    name: "private",
    key: "owner bare JID \\0 namespace \\0 element name",
    value: "the element, serialized XML",
};

/// Every table of the [`SM`] tree, in the order their rows go into a
/// snapshot.
pub const TABLES: &[TableSpec] = &[
    USERS,
    SESSIONS,
    ROSTER,
    OFFLINE,
    OFFLINE_NEXT,
    OFFLINE_IDS,
    OFFLINE_DONE,
    INVITES,
    BLOCKLIST,
    FAST_TOKENS,
    PUSH,
    ARCHIVE,
    ARCHIVE_IDS,
    ARCHIVE_PREFS,
    MUC_ROOMS,
    MUC_AFFILIATIONS,
    PEP_NODES,
    PEP_ITEMS,
    CAPS,
    VCARDS,
    PRIVATE,
];

/// Whether a state machine row (its full key) belongs to a table that the
/// [`SM`] tree does not store, because loading rebuilds it from another
/// ([`ARCHIVE_IDS`], from [`ARCHIVE`]). Data directories of builds that
/// stored it still hold such rows; loading skips and deletes them.
pub fn is_derived(key: &[u8]) -> bool {
    key.first() == Some(&ARCHIVE_IDS.prefix)
}

/// The prefix of the state machine store's bookkeeping keys in the [`SM`]
/// tree (written by the store, not by any table).
pub const META_PREFIX: u8 = b'm';

/// Keys of the [`SM`] tree's bookkeeping: the last applied log id, the
/// membership.
pub const APPLIED: &[u8] = b"mapplied";
pub const MEMBERSHIP: &[u8] = b"mmembership";

const _: () = assert!(APPLIED[0] == META_PREFIX && MEMBERSHIP[0] == META_PREFIX);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_prefixes_are_distinct() {
        let mut prefixes: Vec<u8> = TABLES.iter().map(|t| t.prefix).collect();
        prefixes.push(META_PREFIX);
        let n = prefixes.len();
        prefixes.sort_unstable();
        prefixes.dedup();
        assert_eq!(prefixes.len(), n);
        let mut names: Vec<&str> = TREES.iter().map(|t| t.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), TREES.len());
    }
}
