//! Byte-for-byte guard on everything the state machine stores or sends: a
//! fixed script of commands (every kind) is applied through the sled store,
//! and the bytes of the sled database, of a snapshot, of the recorded writes
//! and the digest are compared with the values this code base has always
//! produced. A data directory or a snapshot written by an earlier build must
//! keep reading the same: if this test fails, the storage format changed.
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};
use sha2::{Digest, Sha256};
use starling_raft::command::{
    ByteCaps, Enqueue, FormField, Invite, OfflineMessage, PushRegistration, RosterItem,
    SessionBinding, SubAction, Subscription,
};
use starling_raft::credentials::{Credentials, ScramHash, ScramKeys};
use starling_raft::state::StateData;
use starling_raft::store;
use starling_raft::types::{Entry, LogId};
use starling_raft::Command;

fn creds(pw: &str) -> Credentials {
    Credentials {
        sha1: ScramKeys::derive(ScramHash::Sha1, pw, vec![1; 16], 2),
        sha256: ScramKeys::derive(ScramHash::Sha256, pw, vec![2; 16], 2),
    }
}

fn binding(node: u64, session: u64) -> SessionBinding {
    SessionBinding {
        node,
        session,
        priority: 3,
        available: true,
        carbons: true,
        presence: Some("<presence/>".into()),
        bound_ms: 42,
    }
}

fn message(id: &str) -> OfflineMessage {
    OfflineMessage {
        id: id.into(),
        stamp_ms: 7,
        stanza: format!("<message id='{id}'/>"),
    }
}

/// A current-thread runtime for driving the store.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Log entries for `script` (command, term), from index 10.
fn entries_of(script: Vec<(Command, u64)>) -> Vec<Entry> {
    script
        .into_iter()
        .enumerate()
        .map(|(i, (cmd, term))| Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), 10 + i as u64),
            payload: EntryPayload::Normal(cmd),
        })
        .collect()
}

/// `open()` again until it succeeds: sled's flusher thread lets go of the
/// directory's lock a moment after the store is dropped.
fn reopen<T, E: std::fmt::Display>(open: impl Fn() -> Result<T, E>) -> T {
    let mut tries = 0;
    loop {
        match open() {
            Ok(v) => return v,
            Err(_) if tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => panic!("reopen: {e}"),
        }
    }
}

/// Every command kind, with the raft term of the entry it is applied in.
fn script() -> Vec<(Command, u64)> {
    let user = |jid: &str| Command::CreateUser {
        jid: jid.into(),
        credentials: creds(jid),
        created_ms: 5,
    };
    vec![
        (user("a@x"), 1),
        (user("b@x"), 1),
        (user("c@x"), 1),
        (user("a@x"), 1),
        (
            Command::SetPassword {
                jid: "b@x".into(),
                credentials: creds("new"),
            },
            1,
        ),
        (
            Command::BindSession {
                full_jid: "a@x/r1".into(),
                binding: binding(1, 10),
            },
            1,
        ),
        (
            Command::BindSession {
                full_jid: "b@x/r1".into(),
                binding: binding(2, 20),
            },
            1,
        ),
        (
            Command::UpdateSession {
                full_jid: "a@x/r1".into(),
                binding: binding(1, 10),
            },
            1,
        ),
        (
            Command::UnbindSession {
                full_jid: "b@x/r1".into(),
                node: 2,
                session: 21,
            },
            1,
        ),
        (
            Command::SetRosterItem {
                owner: "a@x".into(),
                item: RosterItem {
                    jid: "z@y".into(),
                    name: Some("Zed".into()),
                    groups: vec!["g".into()],
                    subscription: Subscription::To,
                    ..Default::default()
                },
                max_items: 10,
            },
            1,
        ),
        (
            Command::SetRosterItem {
                owner: "a@x".into(),
                item: RosterItem {
                    jid: "w@y".into(),
                    ..Default::default()
                },
                max_items: 10,
            },
            1,
        ),
        (
            Command::RemoveRosterItem {
                owner: "a@x".into(),
                contact: "w@y".into(),
            },
            1,
        ),
        (
            Command::Subscription {
                user: "a@x".into(),
                contact: "b@x".into(),
                action: SubAction::Subscribe,
                max_items: 10,
            },
            1,
        ),
        (
            Command::Subscription {
                user: "b@x".into(),
                contact: "a@x".into(),
                action: SubAction::Subscribed,
                max_items: 10,
            },
            1,
        ),
        (
            Command::EnqueueOffline {
                to: "b@x".into(),
                message: message("m1"),
                max_queue: 10,
                max_bytes: ByteCaps::default(),
            },
            1,
        ),
        (
            Command::EnqueueMany {
                items: ["m2", "m3", "m4", "m1"]
                    .into_iter()
                    .map(|id| Enqueue {
                        to: "b@x".into(),
                        message: message(id),
                        max_queue: 10,
                        max_bytes: ByteCaps::default(),
                    })
                    .collect(),
            },
            2,
        ),
        (
            Command::AckOffline {
                to: "b@x".into(),
                up_to: 1,
            },
            2,
        ),
        (
            Command::RemoveOffline {
                to: "b@x".into(),
                ids: vec!["m3".into(), "gone".into()],
            },
            2,
        ),
        (Command::Barrier, 2),
        (
            Command::Batch {
                commands: vec![
                    user("d@x"),
                    Command::EnqueueOffline {
                        to: "d@x".into(),
                        message: message("d1"),
                        max_queue: 10,
                        max_bytes: ByteCaps::default(),
                    },
                    Command::Batch { commands: vec![] },
                ],
            },
            2,
        ),
        (
            Command::DropNodeSessions {
                node: 1,
                term: Some(1),
            },
            2,
        ),
        (
            Command::BindSession {
                full_jid: "c@x/r".into(),
                binding: binding(3, 30),
            },
            2,
        ),
        (
            Command::DropNodeSessions {
                node: 1,
                term: Some(2),
            },
            2,
        ),
        (
            Command::DropNodeSessions {
                node: 9,
                term: None,
            },
            2,
        ),
        (Command::DeleteUser { jid: "c@x".into() }, 2),
        (
            Command::DeleteUser {
                jid: "nobody@x".into(),
            },
            2,
        ),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha(parts: impl IntoIterator<Item = Vec<u8>>) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(&p);
    }
    hex(&h.finalize())
}

const DIGEST: &str = "86a747fd7f94dc8b8676d823f1210614";
const RESPONSES: &str = "8e6c421c04fb00364cbc87ef4c3869237feebc93cc8e7c61b73da351b5f2ef8a";
const WRITES: &str = "aaec0916641e90f4a4256e7d622bf3a78603da97527f486e29ec95c20a7a3e8e";
const STATE_SNAPSHOT: &str = "3af6bb62119a7f767431cb1894a9e7dd33e0bbb2ab083967ce75bf5d31f4510e";
const DATABASE: &str = "90d4b1fd8b74d820dce5e5cbf0b660d9395f2414a31f5e29780f87c6c00eb376";
const STORE_SNAPSHOT: &str = "45ad562b46e1cdd5480f860d827e464bdca3690acfa516ec5c606cfd3ffa0f31";

#[test]
fn stored_bytes_are_unchanged() {
    // The pure state machine: digest, results, writes and snapshot bytes.
    let mut data = StateData::default();
    let mut writes = Vec::new();
    let mut responses = Vec::new();
    for (i, (cmd, term)) in script().into_iter().enumerate() {
        let r = data.apply_entry(cmd, term, 10 + i as u64);
        responses.push(serde_json::to_vec(&r).expect("json"));
        for (k, v) in data.take_writes().expect("writes").ops {
            writes.push(k);
            writes.push(v.unwrap_or_else(|| b"<deleted>".to_vec()));
        }
    }
    let snapshot = data.to_snapshot().expect("snapshot");
    let reloaded = StateData::from_snapshot(&snapshot).expect("reload");
    assert_eq!(reloaded.digest_hex(), data.digest_hex());

    // The sled store: every tree of the database after the same entries,
    // and the snapshot it builds.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db");
    let store_snapshot = runtime().block_on(async {
        let (_log, mut sm) = store::open(&path, 1).expect("open");
        sm.apply(entries_of(script())).await.expect("apply");
        let mut builder = sm.get_snapshot_builder().await;
        let snap = builder.build_snapshot().await.expect("build");
        let mut parts = vec![snap.meta.snapshot_id.clone().into_bytes()];
        parts.push(snap.snapshot.into_inner());
        sha(parts)
    });
    let db = reopen(|| sled::open(&path));
    let mut parts = Vec::new();
    let mut names = db.tree_names();
    names.sort();
    for name in names {
        let tree = db.open_tree(&name).expect("tree");
        parts.push(name.to_vec());
        for row in tree.iter() {
            let (k, v) = row.expect("row");
            parts.push(k.to_vec());
            parts.push(v.to_vec());
        }
    }
    let database = sha(parts);

    let got = [
        data.digest_hex(),
        sha(responses),
        sha(writes),
        sha([snapshot]),
        database,
        store_snapshot,
    ];
    let want = [
        DIGEST,
        RESPONSES,
        WRITES,
        STATE_SNAPSHOT,
        DATABASE,
        STORE_SNAPSHOT,
    ];
    assert_eq!(got.map(|s| s.to_string()), want.map(|s| s.to_string()));
}

/// The invitation commands (added after the script above was pinned, so
/// pinned apart: the script's bytes stay those of earlier builds).
fn invite_script() -> Vec<Command> {
    let invite = |uses, expires_ms, created_ms| Invite {
        uses_left: uses,
        expires_ms,
        created_ms,
    };
    let register = |jid: &str, hash: &str| Command::RegisterWithInvite {
        jid: jid.into(),
        credentials: creds(jid),
        created_ms: 9,
        invite: hash.into(),
    };
    let a = starling_raft::command::invite_hash("token-a");
    let b = starling_raft::command::invite_hash("token-b");
    vec![
        Command::CreateInvite {
            hash: a.clone(),
            invite: invite(2, 0, 1),
        },
        Command::CreateInvite {
            hash: b.clone(),
            invite: invite(1, 5, 2),
        },
        register("i1@x", &a),
        register("i1@x", &a),
        register("i2@x", &a),
        register("i3@x", &a),
        Command::CreateInvite {
            hash: starling_raft::command::invite_hash("token-c"),
            invite: invite(3, 100, 6),
        },
        Command::DeleteInvite { hash: b },
    ]
}

const INVITE_DIGEST: &str = "d979ba295ef8feef13907787dd16ce67";
const INVITE_RESPONSES: &str = "2340e0bbdf71ac284d9264856b6500f9aee010d1aa64e6961e390b6aef54426d";
const INVITE_WRITES: &str = "18ccb1f8e1ce5e1f05d6144a7a8833c5ac20d39b7b96b01b6f15657198be72e7";
const INVITE_SNAPSHOT: &str = "c1b0cd39b3d29c04c6858c9a928a045d58a5173d93e1c204d4c4a42393cb724c";

#[test]
fn invite_bytes_are_unchanged() {
    let mut data = StateData::default();
    let mut writes = Vec::new();
    let mut responses = Vec::new();
    for (i, cmd) in invite_script().into_iter().enumerate() {
        let r = data.apply_entry(cmd, 1, 10 + i as u64);
        responses.push(serde_json::to_vec(&r).expect("json"));
        for (k, v) in data.take_writes().expect("writes").ops {
            writes.push(k);
            writes.push(v.unwrap_or_else(|| b"<deleted>".to_vec()));
        }
    }
    let snapshot = data.to_snapshot().expect("snapshot");
    let reloaded = StateData::from_snapshot(&snapshot).expect("reload");
    assert_eq!(reloaded.digest_hex(), data.digest_hex());
    let got = [
        data.digest_hex(),
        sha(responses),
        sha(writes),
        sha([snapshot]),
    ];
    let want = [
        INVITE_DIGEST,
        INVITE_RESPONSES,
        INVITE_WRITES,
        INVITE_SNAPSHOT,
    ];
    assert_eq!(got.map(|s| s.to_string()), want.map(|s| s.to_string()));
}

/// The block list commands (added after the scripts above were pinned, so
/// pinned apart).
fn block_script() -> Vec<Command> {
    let block = |owner: &str, jids: &[&str], max_items| Command::Block {
        owner: owner.into(),
        jids: jids.iter().map(|j| j.to_string()).collect(),
        max_items,
    };
    let unblock = |owner: &str, jids: &[&str]| Command::Unblock {
        owner: owner.into(),
        jids: jids.iter().map(|j| j.to_string()).collect(),
    };
    vec![
        Command::CreateUser {
            jid: "a@x".into(),
            credentials: creds("a@x"),
            created_ms: 5,
        },
        block("a@x", &["b@x", "evil.example", "c@x/r"], 3),
        block("a@x", &["b@x"], 3),
        block("a@x", &["d@x"], 3),
        block("nobody@x", &["b@x"], 3),
        unblock("a@x", &["evil.example", "zz@x"]),
        block("a@x", &["x"], 3),
        Command::CreateUser {
            jid: "b@x".into(),
            credentials: creds("b@x"),
            created_ms: 6,
        },
        block("b@x", &["a@x", "q@y"], 5),
        unblock("b@x", &[]),
        block("b@x", &["a@x"], 5),
    ]
}

const BLOCK_DIGEST: &str = "d1c39a848db2148386c88a79f79d83f5";
const BLOCK_RESPONSES: &str = "03fad909286c2dbed1823176164d10e0ba45dd997a090e8731e58507b24a8133";
const BLOCK_WRITES: &str = "01e348f289b0b433aa6a7e1b5bbbcee8cf93b384b1be1a130e196c283f72dc78";
const BLOCK_SNAPSHOT: &str = "86041fef4d6ffb0430d5c4aaef2714d9a632c1fec30c9eed0784b3cb92f49ad2";

#[test]
fn block_list_bytes_are_unchanged() {
    let mut data = StateData::default();
    let mut writes = Vec::new();
    let mut responses = Vec::new();
    for (i, cmd) in block_script().into_iter().enumerate() {
        let r = data.apply_entry(cmd, 1, 10 + i as u64);
        responses.push(serde_json::to_vec(&r).expect("json"));
        for (k, v) in data.take_writes().expect("writes").ops {
            writes.push(k);
            writes.push(v.unwrap_or_else(|| b"<deleted>".to_vec()));
        }
    }
    assert_eq!(
        data.blocklist_of("a@x").cloned().collect::<Vec<_>>(),
        ["b@x", "c@x/r", "x"]
    );
    assert_eq!(
        data.blocklist_of("b@x").cloned().collect::<Vec<_>>(),
        ["a@x"]
    );
    let snapshot = data.to_snapshot().expect("snapshot");
    let reloaded = StateData::from_snapshot(&snapshot).expect("reload");
    assert_eq!(reloaded.digest_hex(), data.digest_hex());
    let got = [
        data.digest_hex(),
        sha(responses),
        sha(writes),
        sha([snapshot]),
    ];
    let want = [BLOCK_DIGEST, BLOCK_RESPONSES, BLOCK_WRITES, BLOCK_SNAPSHOT];
    assert_eq!(got.map(|s| s.to_string()), want.map(|s| s.to_string()));
}

/// The push registration commands (XEP-0357; added after the scripts
/// above were pinned, so pinned apart).
fn push_script() -> Vec<Command> {
    let reg = |jid: &str, node: &str, resource: &str, body: bool| PushRegistration {
        jid: jid.into(),
        node: node.into(),
        resource: resource.into(),
        options: vec![
            FormField {
                var: "FORM_TYPE".into(),
                kind: Some("hidden".into()),
                values: vec!["http://jabber.org/protocol/pubsub#publish-options".into()],
            },
            FormField {
                var: "secret".into(),
                kind: None,
                values: vec![format!("s-{node}")],
            },
        ],
        include_body: body,
        enabled_ms: 7,
    };
    let enable = |owner: &str, r: PushRegistration, max| Command::EnablePush {
        owner: owner.into(),
        registration: r,
        max_registrations: max,
    };
    let disable = |owner: &str, jid: &str, node: Option<&str>| Command::DisablePush {
        owner: owner.into(),
        jid: jid.into(),
        node: node.map(str::to_string),
    };
    vec![
        Command::CreateUser {
            jid: "a@x".into(),
            credentials: creds("a@x"),
            created_ms: 5,
        },
        enable("a@x", reg("app@x/p", "n1", "a@x/phone", false), 2),
        enable("a@x", reg("app@x/p", "n2", "a@x/tablet", true), 2),
        enable("a@x", reg("other@x", "n1", "a@x/phone", false), 2),
        enable("a@x", reg("app@x/p", "n1", "a@x/phone2", true), 2),
        enable("nobody@x", reg("app@x/p", "n1", "nobody@x/r", false), 2),
        disable("a@x", "app@x/p", Some("n2")),
        enable("a@x", reg("other@x", "n9", "a@x/phone", false), 2),
        disable("a@x", "nothing@x", None),
        Command::CreateUser {
            jid: "b@x".into(),
            credentials: creds("b@x"),
            created_ms: 6,
        },
        enable("b@x", reg("app@x/p", "m1", "b@x/r", false), 3),
        enable("b@x", reg("app@x/p", "m2", "b@x/r", false), 3),
        disable("b@x", "app@x/p", None),
        enable("b@x", reg("app@x/p", "m3", "b@x/r", false), 3),
        Command::DeleteUser { jid: "b@x".into() },
    ]
}

const PUSH_DIGEST: &str = "e0f5f9fdd102227bf694ac89ef3cae71";
const PUSH_RESPONSES: &str = "c1bf6d4e29f557fca4802f453c1627b5fa6ff6a6dde39a907a352ec86b6ead4f";
const PUSH_WRITES: &str = "f610def5462fc6789885ec56324114107a2e23f50d7d255a58955c7bfae41b6b";
const PUSH_SNAPSHOT: &str = "61272f07b52fbe5cc5b14c1fb34084a8c84fe46de6c9dbfcb6bb4891968aa88d";

#[test]
fn push_registration_bytes_are_unchanged() {
    let mut data = StateData::default();
    let mut writes = Vec::new();
    let mut responses = Vec::new();
    for (i, cmd) in push_script().into_iter().enumerate() {
        let r = data.apply_entry(cmd, 1, 10 + i as u64);
        responses.push(serde_json::to_vec(&r).expect("json"));
        for (k, v) in data.take_writes().expect("writes").ops {
            writes.push(k);
            writes.push(v.unwrap_or_else(|| b"<deleted>".to_vec()));
        }
    }
    let nodes: Vec<(String, String, bool)> = data
        .push_of("a@x")
        .map(|r| (r.node.clone(), r.resource.clone(), r.include_body))
        .collect();
    assert_eq!(
        nodes,
        [
            ("n1".to_string(), "a@x/phone2".to_string(), true),
            ("n9".to_string(), "a@x/phone".to_string(), false),
        ]
    );
    assert_eq!(data.push_len("b@x"), 0);
    let snapshot = data.to_snapshot().expect("snapshot");
    let reloaded = StateData::from_snapshot(&snapshot).expect("reload");
    assert_eq!(reloaded.digest_hex(), data.digest_hex());
    let got = [
        data.digest_hex(),
        sha(responses),
        sha(writes),
        sha([snapshot]),
    ];
    let want = [PUSH_DIGEST, PUSH_RESPONSES, PUSH_WRITES, PUSH_SNAPSHOT];
    assert_eq!(got.map(|s| s.to_string()), want.map(|s| s.to_string()));
}

/// The XEP-0313 archive commands (added after the scripts above were
/// pinned, so pinned apart): appends (a retry, an unknown owner, a cap),
/// a retraction, preferences, a trim, an account deleted with its archive.
fn archive_script() -> Vec<Command> {
    use starling_raft::command::{
        ArchiveDefault, ArchiveEntry, ArchiveLimits, ArchivePrefs, ArchiveRetraction,
        ArchivedMessage,
    };
    let limits = |max_entries, now_ms| ArchiveLimits {
        max_entries,
        max_age_ms: 1_000,
        now_ms,
    };
    let entry = |owner: &str, id: &str, with: &str, outgoing: bool, stamp_ms| ArchiveEntry {
        owner: owner.into(),
        message: ArchivedMessage {
            id: id.into(),
            with: with.into(),
            stamp_ms,
            stanza: format!("<message id='{id}'><body>{id}</body></message>"),
            sender_id: Some(format!("o-{id}")),
            outgoing,
        },
    };
    let pair = |id: &str, stamp| {
        vec![
            entry("a@x", id, "b@x", true, stamp),
            entry("b@x", id, "a@x/r", false, stamp),
        ]
    };
    let append = |entries, retractions, limits| Command::ArchiveAppend {
        entries,
        retractions,
        limits,
    };
    let user = |jid: &str| Command::CreateUser {
        jid: jid.into(),
        credentials: creds(jid),
        created_ms: 5,
    };
    vec![
        user("a@x"),
        user("b@x"),
        append(pair("m1", 100), vec![], limits(3, 150)),
        append(pair("m1", 100), vec![], limits(3, 150)),
        append(
            [
                pair("m2", 99),
                vec![entry("nobody@x", "m2", "a@x", false, 99)],
            ]
            .concat(),
            vec![],
            limits(3, 150),
        ),
        append(pair("m3", 120), vec![], limits(3, 150)),
        append(pair("m4", 130), vec![], limits(3, 150)),
        append(
            vec![],
            vec![ArchiveRetraction {
                archive_id: None,
                by: "a@x".into(),
                peer: "b@x".into(),
                sender_id: "o-m3".into(),
                tombstone: "<message><retracted/></message>".into(),
            }],
            limits(3, 150),
        ),
        Command::SetArchivePrefs {
            owner: "b@x".into(),
            prefs: ArchivePrefs {
                default: ArchiveDefault::Roster,
                always: vec!["a@x".into()],
                never: vec![],
            },
        },
        Command::ArchiveTrim {
            limits: limits(0, 1_125),
        },
        Command::DeleteUser { jid: "a@x".into() },
    ]
}

const ARCHIVE_DIGEST: &str = "7a794da3d5ac2239bd0414a51e31486f";
const ARCHIVE_RESPONSES: &str = "4d526f7fd7542d76a6c3674c0c1b78dfd775a9cf32810f1cbc3671f4193d4de4";
const ARCHIVE_WRITES: &str = "02214932abd49590e0be7b919c1497d0c7771dc8f05dc81c384e6311286fae9b";
const ARCHIVE_SNAPSHOT: &str = "60c4f4f7bf0d90d93de751e30ae2514ce6f2bb3dc474d5a77e185e677688c19c";

#[test]
fn archive_bytes_are_unchanged() {
    let mut data = StateData::default();
    let mut writes = Vec::new();
    let mut responses = Vec::new();
    for (i, cmd) in archive_script().into_iter().enumerate() {
        let r = data.apply_entry(cmd, 1, 10 + i as u64);
        responses.push(serde_json::to_vec(&r).expect("json"));
        for (k, v) in data.take_writes().expect("writes").ops {
            writes.push(k);
            writes.push(v.unwrap_or_else(|| b"<deleted>".to_vec()));
        }
    }
    let ids: Vec<String> = data
        .archive
        .read()
        .archive_of("b@x")
        .map(|(_, m)| m.id.clone())
        .collect();
    assert_eq!(ids, ["m4"], "capped at 3, then trimmed by age");
    assert_eq!(data.archive.read().archive_len("a@x"), 0);
    let snapshot = data.to_snapshot().expect("snapshot");
    let reloaded = StateData::from_snapshot(&snapshot).expect("reload");
    assert_eq!(reloaded.digest_hex(), data.digest_hex());
    let got = [
        data.digest_hex(),
        sha(responses),
        sha(writes),
        sha([snapshot]),
    ];
    let want = [
        ARCHIVE_DIGEST,
        ARCHIVE_RESPONSES,
        ARCHIVE_WRITES,
        ARCHIVE_SNAPSHOT,
    ];
    assert_eq!(got.map(|s| s.to_string()), want.map(|s| s.to_string()));

    // Through the sled store, which applies appends and trims apart (under
    // a read lock of the state and the archive's own lock): the same
    // responses, the same state, and the same state again once reopened
    // from disk (the archive's rows were persisted with the rest).
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db");
    let store_responses = runtime().block_on(async {
        let (_log, mut sm) = store::open(&path, 1).expect("open");
        let entries = entries_of(archive_script().into_iter().map(|c| (c, 1)).collect());
        // One entry per apply, then all of them at once elsewhere: both
        // ways the store is driven.
        // The causal index (what a mesh envelope carries) moves with every
        // entry but an archive-only one: a receiver never waits for an
        // archive batch to apply before delivering a stanza.
        let mut out = Vec::new();
        let mut causal = 0;
        for e in entries {
            let index = e.log_id.index;
            if !matches!(&e.payload, EntryPayload::Normal(c) if StateData::archive_only(c)) {
                causal = index;
            }
            out.extend(sm.apply([e]).await.expect("apply"));
            let st = sm.reader();
            let st = st.read();
            assert_eq!(st.last_applied.map(|l| l.index), Some(index));
            assert_eq!(st.causal_index, causal, "after entry {index}");
            // Independently of the rule above: behind after the appends
            // (12-17) and after the trim (19).
            match index {
                17 => assert_eq!(st.causal_index, 11),
                19 => assert_eq!(st.causal_index, 18),
                _ => {}
            }
        }
        // Two accounts, six appends, preferences, a trim, a deletion.
        assert_eq!(causal, 20);
        assert_eq!(sm.reader().read().data.digest_hex(), ARCHIVE_DIGEST);
        out.iter()
            .map(|r| serde_json::to_vec(r).expect("json"))
            .collect::<Vec<_>>()
    });
    assert_eq!(sha(store_responses), ARCHIVE_RESPONSES);
    // The archive ids are not stored (rebuilt when loading): only the
    // message rows are. A row an earlier build stored (and a bogus one)
    // is skipped and deleted when loading.
    let id_rows = |db: &sled::Db| -> Vec<Vec<u8>> {
        let sm = db.open_tree(starling_raft::keyspace::SM.name).expect("sm");
        sm.scan_prefix([starling_raft::keyspace::ARCHIVE_IDS.prefix])
            .keys()
            .map(|k| k.expect("key").to_vec())
            .collect()
    };
    {
        let db = reopen(|| sled::open(&path));
        assert_eq!(id_rows(&db), Vec::<Vec<u8>>::new());
        let sm = db.open_tree(starling_raft::keyspace::SM.name).expect("sm");
        let seq = starling_raft::codec::encode(&1u64).expect("encode");
        sm.insert(b"hb@x\0stale", seq).expect("insert");
        db.flush().expect("flush");
    }
    let (_log, reopened) = reopen(|| store::open(&path, 1));
    let st = reopened.reader();
    let st = st.read();
    assert_eq!(st.data.digest_hex(), ARCHIVE_DIGEST, "reloaded from sled");
    let ar = st.data.archive.read();
    let seq = ar.archive_seq("b@x", "m4").expect("m4's id rebuilt");
    assert_eq!(ar.archive_of("b@x").next().map(|(s, _)| s), Some(seq));
    assert_eq!(ar.archive_seq("b@x", "stale"), None);
    drop(ar);
    let ids: Vec<String> = st
        .data
        .archive
        .read()
        .archive_of("b@x")
        .map(|(_, m)| m.id.clone())
        .collect();
    assert_eq!(ids, ["m4"]);
    assert_eq!(
        st.last_applied.map(|l| l.index),
        Some(10 + archive_script().len() as u64 - 1)
    );
    // Not knowing better after a restart: the last applied index.
    assert_eq!(Some(st.causal_index), st.last_applied.map(|l| l.index));
    drop(st);
    drop(reopened);
    drop(_log);
    let db = reopen(|| sled::open(&path));
    assert_eq!(
        id_rows(&db),
        Vec::<Vec<u8>>::new(),
        "the stale row is deleted"
    );
}

/// The XEP-0045 room commands (added after the scripts above were pinned,
/// so pinned apart): a room created, joined, refused (nick, cap, ban,
/// members-only), configured, its subject, nick and role changes, a
/// dead node's occupants, a temporary room gone with its last occupant.
fn muc_script() -> Vec<Command> {
    use starling_raft::muc::{
        Affiliation, AffiliationChange, Occupant, Role, RoomConfig, RoomInit, Subject,
    };
    let occ = |full: &str, node: u64| Occupant {
        full: full.into(),
        node,
        role: Role::Participant,
        joined_ms: 9,
        presence: if node == 2 {
            "<presence xmlns='jabber:client'><show>away</show></presence>".into()
        } else {
            String::new()
        },
    };
    let init = || RoomInit {
        config: RoomConfig::default(),
        locked: true,
        salt: "salt".into(),
        max_rooms: 2,
    };
    let join = |room: &str, nick: &str, full: &str, node: u64, create: bool| Command::MucJoin {
        room: room.into(),
        nick: nick.into(),
        occupant: occ(full, node),
        create: create.then(init),
        max_occupants: 3,
        password: None,
    };
    let aff = |jid: &str, a: Affiliation| Command::MucSetAffiliations {
        room: "r@c.x".into(),
        changes: vec![AffiliationChange {
            jid: jid.into(),
            affiliation: a,
            reason: Some("why".into()),
        }],
    };
    vec![
        join("r@c.x", "a", "a@x/1", 1, true),
        join("r@c.x", "b", "b@x/1", 2, false),
        Command::MucConfigure {
            room: "r@c.x".into(),
            config: RoomConfig {
                persistent: true,
                name: "Room".into(),
                ..RoomConfig::default()
            },
            unlock: true,
        },
        join("r@c.x", "b", "b@x/1", 2, false),
        join("r@c.x", "b", "c@x/1", 3, false),
        join("r@c.x", "c", "c@x/1", 3, false),
        join("r@c.x", "d", "d@x/1", 3, false),
        Command::MucNick {
            room: "r@c.x".into(),
            full: "c@x/1".into(),
            nick: "see".into(),
        },
        Command::MucSetRole {
            room: "r@c.x".into(),
            nick: "see".into(),
            role: Some(Role::Visitor),
        },
        Command::MucSubject {
            room: "r@c.x".into(),
            subject: Subject {
                text: "topic".into(),
                by: "a".into(),
                stamp_ms: 11,
            },
        },
        aff("b@x", Affiliation::Outcast),
        join("r@c.x", "b", "b@x/1", 2, false),
        aff("b@x", Affiliation::None),
        aff("m@x", Affiliation::Member),
        Command::MucSetRole {
            room: "r@c.x".into(),
            nick: "see".into(),
            role: None,
        },
        join("t@c.x", "a", "a@x/1", 1, true),
        join("u@c.x", "a", "a@x/1", 1, true),
        Command::MucDropNode { node: 1 },
        join("r@c.x", "a", "a@x/2", 2, false),
        Command::MucLeave {
            room: "r@c.x".into(),
            full: "a@x/2".into(),
        },
        Command::MucDestroy {
            room: "nothing@c.x".into(),
        },
    ]
}

const MUC_DIGEST: &str = "f029dd1b8df7b57b2d285b0b75d3384c";
const MUC_RESPONSES: &str = "4fbf45a24b2c406e970b1e0b4154faf8d716ddf043fdd885238fdae4d25e9c00";
const MUC_WRITES: &str = "c5d2cab8cff1e9c23ff9ee5a4ffc8816ccccef06c9fd203d7d213a44806918d2";
const MUC_SNAPSHOT: &str = "b9ede1093bd34056db49b67f669700f2889916f0f4652200509394517caef7f1";

#[test]
fn muc_bytes_are_unchanged() {
    let mut data = StateData::default();
    let mut writes = Vec::new();
    let mut responses = Vec::new();
    for (i, cmd) in muc_script().into_iter().enumerate() {
        let r = data.apply_entry(cmd, 1, 10 + i as u64);
        responses.push(serde_json::to_vec(&r).expect("json"));
        for (k, v) in data.take_writes().expect("writes").ops {
            writes.push(k);
            writes.push(v.unwrap_or_else(|| b"<deleted>".to_vec()));
        }
    }
    let room = data
        .muc_rooms
        .get(&"r@c.x".to_string())
        .expect("the persistent room stays");
    assert!(room.occupants.is_empty() && room.config.name == "Room");
    assert_eq!(
        room.subject.as_ref().map(|s| s.text.as_str()),
        Some("topic")
    );
    assert!(data.muc_rooms.get(&"t@c.x".to_string()).is_none());
    assert_eq!(
        data.muc_affiliation("r@c.x", "m@x"),
        starling_raft::muc::Affiliation::Member
    );
    let snapshot = data.to_snapshot().expect("snapshot");
    let reloaded = StateData::from_snapshot(&snapshot).expect("reload");
    assert_eq!(reloaded.digest_hex(), data.digest_hex());
    let got = [
        data.digest_hex(),
        sha(responses),
        sha(writes),
        sha([snapshot]),
    ];
    let want = [MUC_DIGEST, MUC_RESPONSES, MUC_WRITES, MUC_SNAPSHOT];
    assert_eq!(got.map(|s| s.to_string()), want.map(|s| s.to_string()));
}

/// The XEP-0163 PEP, XEP-0115 caps, XEP-0054 vCard and XEP-0049 private
/// storage commands (added after the scripts above were pinned, so pinned
/// apart): publish (auto-create, replace, evict, a failed precondition),
/// create, configure, retract, delete a node, caps (verified and a
/// session's own, gone with its binding), a vCard, private XML, and an
/// account deleted with all of it.
fn pep_script() -> Vec<Command> {
    use starling_raft::command::{PepAccess, PepItem, PepLimits, PepNodeConfig};
    let limits = PepLimits {
        max_items: 2,
        max_nodes: 4,
        max_bytes: 1_000,
    };
    let config = |access, max_items| PepNodeConfig {
        access,
        max_items,
        ..PepNodeConfig::default()
    };
    let publish = |node: &str, id: &str, require: Option<PepNodeConfig>| Command::PepPublish {
        owner: "a@x".into(),
        node: node.into(),
        item_id: id.into(),
        item: PepItem {
            seq: 0,
            payload: format!("<p xmlns='urn:t'>{id}</p>"),
            publisher: "a@x/r".into(),
            stamp_ms: 7,
        },
        create: config(PepAccess::Presence, 2),
        require,
        limits,
    };
    vec![
        Command::CreateUser {
            jid: "a@x".into(),
            credentials: creds("a@x"),
            created_ms: 5,
        },
        publish("n", "1", None),
        publish("n", "2", None),
        publish("n", "3", None),
        publish("n", "2", None),
        publish("n", "4", Some(config(PepAccess::Open, 2))),
        publish("o", "1", Some(config(PepAccess::Open, 9))),
        Command::PepCreate {
            owner: "a@x".into(),
            node: "e".into(),
            config: config(PepAccess::Whitelist, 1),
            created_ms: 8,
            limits,
        },
        Command::PepConfigure {
            owner: "a@x".into(),
            node: "n".into(),
            config: config(PepAccess::Presence, 1),
            limits,
        },
        Command::PepRetract {
            owner: "a@x".into(),
            node: "o".into(),
            item_id: "1".into(),
        },
        Command::PepDeleteNode {
            owner: "a@x".into(),
            node: "e".into(),
        },
        Command::SetCaps {
            ver: "sha-1 abc=".into(),
            notify: vec!["n".into()],
            max_entries: 10,
        },
        Command::BindSession {
            full_jid: "a@x/r".into(),
            binding: binding(1, 3),
        },
        Command::SetCaps {
            ver: "jid a@x/r".into(),
            notify: vec!["o".into()],
            max_entries: 10,
        },
        Command::UnbindSession {
            full_jid: "a@x/r".into(),
            node: 1,
            session: 3,
        },
        Command::SetVcard {
            owner: "a@x".into(),
            vcard: Some("<vCard xmlns='vcard-temp'><FN>A</FN></vCard>".into()),
        },
        Command::SetPrivate {
            owner: "a@x".into(),
            key: "urn:p\0prefs".into(),
            xml: "<prefs xmlns='urn:p'/>".into(),
            max_bytes: 100,
        },
        Command::DeleteUser { jid: "a@x".into() },
    ]
}

const PEP_DIGEST: &str = "c9b528d0e7b3503c97399e6132911727";
const PEP_RESPONSES: &str = "12bcd896fd9a981ee796cb0f887b33e8a97a1323fa6b68a5ca4f6c35043f481a";
const PEP_WRITES: &str = "946ee99f8b2ec0b3fd488fa4fa1e147f4483f3f0b7bd9d2566e5927c87c7ee24";
const PEP_SNAPSHOT: &str = "22b9e897f71e56d21e1db34b6bd993697dd5536cb2644c3717fc840c760fdc9a";

#[test]
fn pep_bytes_are_unchanged() {
    let mut data = StateData::default();
    let mut writes = Vec::new();
    let mut responses = Vec::new();
    for (i, cmd) in pep_script().into_iter().enumerate() {
        let r = data.apply_entry(cmd, 1, 10 + i as u64);
        responses.push(serde_json::to_vec(&r).expect("json"));
        for (k, v) in data.take_writes().expect("writes").ops {
            writes.push(k);
            writes.push(v.unwrap_or_else(|| b"<deleted>".to_vec()));
        }
    }
    assert!(data.pep_nodes.is_empty() && data.pep_items.is_empty());
    assert_eq!(
        data.caps.len(),
        1,
        "the verified caps stay, the session's went"
    );
    let snapshot = data.to_snapshot().expect("snapshot");
    let reloaded = StateData::from_snapshot(&snapshot).expect("reload");
    assert_eq!(reloaded.digest_hex(), data.digest_hex());
    let got = [
        data.digest_hex(),
        sha(responses),
        sha(writes),
        sha([snapshot]),
    ];
    let want = [PEP_DIGEST, PEP_RESPONSES, PEP_WRITES, PEP_SNAPSHOT];
    assert_eq!(got.map(|s| s.to_string()), want.map(|s| s.to_string()));
}
