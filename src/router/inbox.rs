//! The delivery guarantee's replicated half: every message routed to an
//! account (type `chat` or `normal`, RFC 6121 §8.5.2.1.1 and §8.5.3) is
//! written to the recipient's replicated queue *while* it is delivered live,
//! and leaves the queue once the recipient's client has it.
//!
//! - [`guard`] commits the message to the queue (`EnqueueOffline`, keyed by
//!   its XEP-0359 stanza id so a retry is idempotent) and retries an
//!   unknown outcome until it knows; the sender's XEP-0198 `h` counts the
//!   message only then (`c2s::sm`). So an acknowledged message is in a
//!   majority of the nodes' logs before the sender hears "ack", whatever
//!   happens to the live copy. A definite refusal (queue full, account
//!   deleted) goes back to the sender as a stanza error *before* its ack.
//! - [`Remover`] takes the ids of messages the recipient's client has
//!   (acknowledged with XEP-0198, or written to a session without it) and
//!   removes them from the queue once this node has applied their enqueue
//!   (so a removal never overtakes the write it removes).
//!
//! Consensus stays off the live path: the recipient sees the message as
//! soon as the mesh carries it; only the sender's ack waits for the commit.
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use starling_raft::command::{Command, OfflineMessage, Response};
use starling_raft::ClusterHandle;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::xmpp::{StanzaCondition, StanzaError};

/// What became of a guarded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guarded {
    /// In the recipient's replicated queue (or already delivered from it).
    Safe,
    /// Definitely not stored: the sender gets this error.
    Refused(StanzaError),
    /// The node is stopping before the outcome was known: neither success
    /// nor failure is reported (the sender's ack never comes).
    Unknown,
}

/// The first retry waits this long, doubling up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(25);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// Commits `message` to `to`'s replicated queue, retrying any outcome that
/// is not definite (no leader, timeout, lost connection) with the same
/// command: `EnqueueOffline` recognises a message id it already holds.
pub async fn guard(
    cluster: &ClusterHandle,
    mut shutdown: watch::Receiver<bool>,
    to: &str,
    message: OfflineMessage,
    max_queue: u32,
) -> Guarded {
    let cmd = Command::EnqueueOffline {
        to: to.to_string(),
        message,
        max_queue,
    };
    let mut wait = RETRY_FIRST;
    loop {
        let outcome = tokio::select! {
            r = cluster.write(cmd.clone()) => r,
            _ = shutdown.wait_for(|s| *s) => return Guarded::Unknown,
        };
        match outcome {
            Ok(a) => {
                return match a.response {
                    Response::Queued { .. } => Guarded::Safe,
                    Response::QueueFull { cap } => Guarded::Refused(StanzaError::with_text(
                        StanzaCondition::ResourceConstraint,
                        format!("the recipient's offline queue is full ({cap} messages)"),
                    )),
                    Response::NoSuchUser => {
                        Guarded::Refused(StanzaError::new(StanzaCondition::ServiceUnavailable))
                    }
                    other => {
                        warn!(?other, "unexpected offline enqueue result");
                        Guarded::Refused(StanzaError::new(StanzaCondition::InternalServerError))
                    }
                };
            }
            Err(e) => {
                debug!(error = %e, retry_in = ?wait, "offline enqueue not known to be committed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.wait_for(|s| *s) => return Guarded::Unknown,
                }
                wait = (wait * 2).min(RETRY_MAX);
            }
        }
    }
}

/// How long a removal waits for its enqueue to be applied here before it
/// is given up (the enqueue never committed: its sender was not acked).
const REMOVE_WAIT: Duration = Duration::from_secs(120);
/// How often waiting removals are looked at.
const REMOVE_TICK: Duration = Duration::from_millis(20);
/// Most ids in one removal command.
const REMOVE_BATCH: usize = 256;

/// Cloneable handle on the node's removal task.
#[derive(Clone)]
pub struct Remover {
    tx: mpsc::UnboundedSender<(String, String)>,
}

impl Remover {
    /// Starts the removal task of this node.
    pub fn start(cluster: ClusterHandle) -> Remover {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_remover(cluster, rx));
        Remover { tx }
    }

    /// The client of `bare` has message `id`: remove it from the queue.
    pub fn delivered(&self, bare: &str, id: String) {
        let _ = self.tx.send((bare.to_string(), id));
    }
}

async fn run_remover(cluster: ClusterHandle, mut rx: mpsc::UnboundedReceiver<(String, String)>) {
    // (bare, id) -> when it was handed in.
    let mut waiting: HashMap<(String, String), Instant> = HashMap::new();
    let mut ticker = tokio::time::interval(REMOVE_TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            item = rx.recv() => match item {
                Some(k) => {
                    waiting.entry(k).or_insert_with(Instant::now);
                    while let Ok(k) = rx.try_recv() {
                        waiting.entry(k).or_insert_with(Instant::now);
                    }
                }
                None => return,
            },
            _ = ticker.tick() => {}
        }
        if waiting.is_empty() {
            continue;
        }
        // Ready: queued here. Gone: never committed within REMOVE_WAIT.
        let mut ready: BTreeMap<String, Vec<String>> = BTreeMap::new();
        {
            let state = cluster.state().read();
            waiting.retain(|(bare, id), since| {
                if state
                    .data
                    .offline_ids
                    .get(&(bare.clone(), id.clone()))
                    .is_some()
                {
                    ready.entry(bare.clone()).or_default().push(id.clone());
                    return false;
                }
                since.elapsed() < REMOVE_WAIT
            });
        }
        let writes = ready.into_iter().flat_map(|(to, ids)| {
            ids.chunks(REMOVE_BATCH)
                .map(|c| Command::RemoveOffline {
                    to: to.clone(),
                    ids: c.to_vec(),
                })
                .collect::<Vec<_>>()
        });
        let results = futures::future::join_all(writes.map(|cmd| {
            let cluster = cluster.clone();
            async move {
                let r = cluster.write(cmd.clone()).await;
                (cmd, r)
            }
        }))
        .await;
        for (cmd, r) in results {
            if let Err(e) = r {
                // Idempotent: try again at the next tick (if still queued).
                debug!(error = %e, "offline removal not committed; retrying");
                if let Command::RemoveOffline { to, ids } = cmd {
                    for id in ids {
                        waiting.insert((to.clone(), id), Instant::now());
                    }
                }
            }
        }
    }
}
