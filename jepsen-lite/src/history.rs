//! The run's record, as Jepsen keeps it: every client operation's invocation
//! and completion, every message a receiver got, every nemesis event, and the
//! cluster's state after healing. One JSON object per line in
//! `history.jsonl`; the checkers read nothing else.
//!
//! Outcomes follow Jepsen's error-handling semantics: an operation is `ok`
//! (it happened), `fail` (it certainly did not) or `info`/unknown (the client
//! cannot tell: a timeout, a connection lost after sending). An unknown
//! operation may take effect at any time after its invocation, or never.
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// One line of `history.jsonl`. `t_us` is microseconds since the run began.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Entry {
    /// A phase of the run began: `setup`, `faults`, `heal`, `drain`, `done`.
    Phase { t_us: u64, name: String },

    // ---- queue workload -------------------------------------------------
    /// A sender wrote a message to its stream. `id` is unique in the run and
    /// is both the stanza's `id` attribute and its body. `session` numbers
    /// the sender's streams (a new one after each reconnect); `seq` is the
    /// message's position among everything this sender sent in the run.
    Send {
        t_us: u64,
        process: String,
        id: String,
        from: String,
        to: String,
        node: u64,
        session: u64,
        seq: u64,
    },
    /// The server acknowledged the message: an XEP-0198 `<a h>` (or
    /// `<resumed h>`) counted it.
    SendOk { t_us: u64, id: String },
    /// An error stanza came back for it before any acknowledgement.
    SendFail {
        t_us: u64,
        id: String,
        condition: String,
    },
    /// The stream died before the outcome was known.
    SendInfo {
        t_us: u64,
        id: String,
        reason: String,
    },
    /// An error stanza came back for message `id`, whenever it came (also
    /// after a `SendOk`: that is the "acked then bounced" anomaly).
    Bounce {
        t_us: u64,
        id: String,
        condition: String,
    },
    /// A receiver got message `id` (first copy or not: each copy is a line).
    Recv {
        t_us: u64,
        process: String,
        id: String,
        from: String,
        to: String,
        /// The XEP-0359 `<stanza-id by=recipient>` the server stamped.
        stanza_id: Option<String>,
        node: u64,
        /// Carried an XEP-0203 delay stamp (came from offline storage).
        delayed: bool,
    },

    // ---- register workload ---------------------------------------------
    /// A client began an operation on the account `key`.
    RegInvoke {
        t_us: u64,
        op: u64,
        process: String,
        f: RegF,
        key: String,
        via: Via,
        node: u64,
    },
    /// The operation `op` completed (or was given up as unknown).
    RegDone {
        t_us: u64,
        op: u64,
        outcome: RegOutcome,
    },

    // ---- roster workload -----------------------------------------------
    /// A client sent a subscription stanza (`subscribe`, `subscribed`,
    /// `unsubscribe`, `unsubscribed`) from `from` to `to`.
    RosterSend {
        t_us: u64,
        process: String,
        kind: String,
        from: String,
        to: String,
        node: u64,
    },
    /// `owner`'s roster as read (RFC 6121 §2.1.3) after healing.
    RosterFinal {
        t_us: u64,
        owner: String,
        node: u64,
        items: Vec<RosterItem>,
    },

    // ---- faults and the cluster ----------------------------------------
    /// A nemesis event. `fault` pairs the start of a fault with its end
    /// (a kill with its restart, a pause with its resume, a cut with its
    /// heal); `start` tells which this is.
    Nemesis {
        t_us: u64,
        fault: u64,
        start: bool,
        kind: String,
        nodes: Vec<u64>,
        detail: String,
    },
    /// The offline queues left after every recipient drained (admin
    /// `ListQueues`): anything still queued was never taken out.
    QueuesAfterDrain {
        t_us: u64,
        node: u64,
        queues: Vec<QueueDepth>,
    },
    /// Every member's view after healing, polled until they agree or the
    /// bound passes.
    Convergence {
        t_us: u64,
        converged: bool,
        waited_ms: u64,
        members: Vec<MemberState>,
    },
}

impl Entry {
    pub fn t_us(&self) -> u64 {
        match self {
            Entry::Phase { t_us, .. }
            | Entry::Send { t_us, .. }
            | Entry::SendOk { t_us, .. }
            | Entry::SendFail { t_us, .. }
            | Entry::SendInfo { t_us, .. }
            | Entry::Bounce { t_us, .. }
            | Entry::Recv { t_us, .. }
            | Entry::RegInvoke { t_us, .. }
            | Entry::RegDone { t_us, .. }
            | Entry::RosterSend { t_us, .. }
            | Entry::RosterFinal { t_us, .. }
            | Entry::Nemesis { t_us, .. }
            | Entry::QueuesAfterDrain { t_us, .. }
            | Entry::Convergence { t_us, .. } => *t_us,
        }
    }
}

/// What a register operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegF {
    /// Create the account (XEP-0077 or the admin API).
    Create,
    /// Does the account exist? (admin `ListUsers` on one node.)
    Read,
}

/// The path an operation took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    Xmpp,
    Admin,
}

/// How a register operation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", content = "detail", rename_all = "snake_case")]
pub enum RegOutcome {
    /// `create`: the account was made by this operation.
    Created,
    /// `create`: the account already existed (`conflict` / `ALREADY_EXISTS`).
    Exists,
    /// `read`: whether the account exists.
    Read(bool),
    /// Certainly not applied (e.g. refused before any write).
    Fail(String),
    /// Unknown: may have taken effect.
    Unknown(String),
}

/// One roster item as a client saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterItem {
    pub jid: String,
    /// `none`, `to`, `from` or `both` (RFC 6121 §2.1.2.5).
    pub subscription: String,
    /// `ask='subscribe'` was set.
    pub ask: bool,
}

/// One account's offline queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDepth {
    pub jid: String,
    pub depth: u64,
}

/// One member's state as its admin API reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberState {
    pub id: u64,
    pub reachable: bool,
    pub role: String,
    pub applied_index: u64,
    pub state_digest: String,
}

/// The run's clock and its history file. Cloneable; every client, the
/// nemesis and the runner write through one.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Mutex<RecorderInner>>,
    start: Instant,
}

struct RecorderInner {
    file: Option<std::io::BufWriter<std::fs::File>>,
    entries: Vec<Entry>,
}

impl Recorder {
    /// A recorder writing to `path` (and keeping every entry in memory).
    pub fn create(path: &Path) -> std::io::Result<Recorder> {
        let file = std::fs::File::create(path)?;
        Ok(Recorder {
            inner: Arc::new(Mutex::new(RecorderInner {
                file: Some(std::io::BufWriter::new(file)),
                entries: Vec::new(),
            })),
            start: Instant::now(),
        })
    }

    /// Microseconds since the run began.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Appends one entry.
    pub fn record(&self, e: Entry) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = g.file.as_mut() {
            if let Ok(line) = serde_json::to_string(&e) {
                let _ = writeln!(f, "{line}");
            }
        }
        g.entries.push(e);
    }

    /// Flushes the file and returns everything recorded, in order.
    pub fn finish(&self) -> Vec<Entry> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = g.file.as_mut() {
            let _ = f.flush();
        }
        g.entries.clone()
    }
}

/// Reads a `history.jsonl` back.
pub fn load(path: &Path) -> anyhow::Result<Vec<Entry>> {
    let text = std::fs::read_to_string(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let e: Entry = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), i + 1))?;
        out.push(e);
    }
    Ok(out)
}
