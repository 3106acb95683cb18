//! The delivery guarantee's replicated half: a message for an account
//! (type `chat` or `normal`, RFC 6121 §8.5.2.1.1 and §8.5.3) that custody
//! cannot hold (no session online, custody full) is written to the
//! recipient's replicated queue *while* it is delivered live, and so is a
//! copy custody gives up on (`router::custody`); it leaves the queue once
//! the recipient's client has it.
//!
//! - a [`GuardPipeline`] (one per sending session, and one for custody's
//!   commits) commits the message to
//!   the queue (`EnqueueOffline`, keyed by its XEP-0359 stanza id so a retry
//!   is idempotent; several in one `EnqueueMany`, in order) and retries an
//!   unknown outcome until it knows; the sender's XEP-0198 `h` counts the
//!   message only then (`c2s::sm`). So an acknowledged message is in a
//!   majority of the nodes' logs before the sender hears "ack", whatever
//!   happens to the live copy. A definite refusal (queue full: its message
//!   or byte cap, or the byte cap of all queues, see [`QueueCaps`]; account
//!   deleted) goes back to the sender as a stanza error *before* its ack.
//! - [`Remover`] takes the ids of messages the recipient's client has
//!   (acknowledged with XEP-0198, or written to a session without it) and
//!   removes them from the queue once this node has applied their enqueue
//!   (so a removal never overtakes the write it removes).
//!
//! Consensus stays off the live path: the recipient sees the message as
//! soon as the mesh carries it; only the sender's ack waits for the commit.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use starling_raft::command::{Budget, ByteCaps, Command, Enqueue, OfflineMessage, Response};
use starling_raft::ClusterHandle;
use tokio::sync::{mpsc, oneshot, watch};
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
/// Most messages of one sender in one command, and their bytes.
const PIPELINE_BATCH: usize = 256;
const PIPELINE_BYTES: usize = 512 * 1024;

/// The caps a message is queued under (`xmpp.max_offline_messages`,
/// `max_offline_bytes`, `max_offline_bytes_total`): they go in each
/// enqueue command, so every node's apply decides alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCaps {
    /// Messages in one account's queue.
    pub messages: u32,
    /// Bytes in one account's queue, and in all queues.
    pub bytes: ByteCaps,
}

impl QueueCaps {
    /// The caps for a message that also goes live (or a custody copy):
    /// the per-account caps count double, as a recipient that reads keeps
    /// its queue short and a live copy should not be refused because older
    /// ones are still unacknowledged. The cap of all queues stays.
    pub fn live(self) -> QueueCaps {
        QueueCaps {
            messages: self.messages.saturating_mul(2),
            bytes: ByteCaps {
                per_user: self.bytes.per_user.saturating_mul(2),
                total: self.bytes.total,
            },
        }
    }
}

/// One message to guard, and where its outcome goes.
pub struct GuardJob {
    pub to: String,
    pub message: OfflineMessage,
    pub caps: QueueCaps,
    /// Called with the outcome (in the order the jobs were submitted).
    pub done: Box<dyn FnOnce(Guarded) + Send>,
}

/// The guards of one sending session, committed in the order it sent its
/// messages: one command in flight at a time, carrying every message that
/// queued up meanwhile (group commit per sender, so a fast sender is not
/// held to one message per round trip, and its messages keep their order
/// in every recipient's queue: RFC 6120 §10.1, in-order processing).
#[derive(Clone, Debug)]
pub struct GuardPipeline {
    tx: mpsc::UnboundedSender<GuardJob>,
}

impl GuardPipeline {
    /// Starts the pipeline task on `tracker` (a graceful stop waits for
    /// it); it ends once every handle is dropped and its jobs are done.
    pub fn start(
        cluster: ClusterHandle,
        shutdown: watch::Receiver<bool>,
        tracker: &tokio_util::task::TaskTracker,
    ) -> GuardPipeline {
        let (tx, rx) = mpsc::unbounded_channel();
        tracker.spawn(run_pipeline(cluster, shutdown, rx));
        GuardPipeline { tx }
    }

    pub fn submit(&self, job: GuardJob) {
        if let Err(e) = self.tx.send(job) {
            // The task is gone (the node is stopping): unknown outcome.
            (e.0.done)(Guarded::Unknown);
        }
    }
}

async fn run_pipeline(
    cluster: ClusterHandle,
    shutdown: watch::Receiver<bool>,
    mut rx: mpsc::UnboundedReceiver<GuardJob>,
) {
    while let Some(first) = rx.recv().await {
        let mut bytes = first.message.stanza.len();
        let mut jobs = vec![first];
        while jobs.len() < PIPELINE_BATCH && bytes < PIPELINE_BYTES {
            match rx.try_recv() {
                Ok(j) => {
                    bytes += j.message.stanza.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        let cmd = if jobs.len() == 1 {
            Command::EnqueueOffline {
                to: jobs[0].to.clone(),
                message: jobs[0].message.clone(),
                max_queue: jobs[0].caps.messages,
                max_bytes: jobs[0].caps.bytes,
            }
        } else {
            Command::EnqueueMany {
                items: jobs
                    .iter()
                    .map(|j| Enqueue {
                        to: j.to.clone(),
                        message: j.message.clone(),
                        max_queue: j.caps.messages,
                        max_bytes: j.caps.bytes,
                    })
                    .collect(),
            }
        };
        let outcomes = commit(&cluster, shutdown.clone(), cmd, jobs.len()).await;
        for (job, outcome) in jobs.into_iter().zip(outcomes) {
            (job.done)(outcome);
        }
    }
}

/// Commits `cmd` (an enqueue of `n` messages), retrying any outcome that is
/// not definite (no leader, timeout, lost connection) with the same
/// command: `EnqueueOffline` recognises a message id it already holds.
async fn commit(
    cluster: &ClusterHandle,
    mut shutdown: watch::Receiver<bool>,
    cmd: Command,
    n: usize,
) -> Vec<Guarded> {
    let mut wait = RETRY_FIRST;
    loop {
        let outcome = tokio::select! {
            r = cluster.write(cmd.clone()) => r,
            _ = shutdown.wait_for(|s| *s) => return vec![Guarded::Unknown; n],
        };
        match outcome {
            Ok(a) => {
                let responses = match a.response {
                    Response::Batch { responses } if responses.len() == n => responses,
                    r if n == 1 => vec![r],
                    other => {
                        warn!(?other, "unexpected offline enqueue result");
                        let e = StanzaError::new(StanzaCondition::InternalServerError);
                        return vec![Guarded::Refused(e); n];
                    }
                };
                return responses.into_iter().map(outcome_of).collect();
            }
            Err(e) => {
                debug!(error = %e, retry_in = ?wait, "offline enqueue not known to be committed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.wait_for(|s| *s) => return vec![Guarded::Unknown; n],
                }
                wait = (wait * 2).min(RETRY_MAX);
            }
        }
    }
}

fn outcome_of(r: Response) -> Guarded {
    match r {
        Response::Queued { .. } => Guarded::Safe,
        Response::QueueFull { cap } => Guarded::Refused(StanzaError::with_text(
            StanzaCondition::ResourceConstraint,
            format!("the recipient's offline queue is full ({cap} messages)"),
        )),
        // RFC 6120 §8.3.3.18: the server lacks the resources to store it.
        Response::OverBudget { budget, cap } => Guarded::Refused(StanzaError::with_text(
            StanzaCondition::ResourceConstraint,
            match budget {
                Budget::TotalQueueBytes => {
                    format!("the server's offline storage is full ({cap} bytes)")
                }
                _ => format!("the recipient's offline queue is full ({cap} bytes)"),
            },
        )),
        Response::NoSuchUser => {
            Guarded::Refused(StanzaError::new(StanzaCondition::ServiceUnavailable))
        }
        other => {
            warn!(?other, "unexpected offline enqueue result");
            Guarded::Refused(StanzaError::new(StanzaCondition::InternalServerError))
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

/// What the removal task is asked.
enum ToRemover {
    /// The client of `.0` has message `.1`.
    Delivered(String, String),
    /// As `Delivered`, and the removal is committed even if the message is
    /// not queued (yet): a holder that did not hear it was delivered may
    /// still commit it, and the queue then drops it (`offline_done`).
    Tombstone(String, String),
    /// Tell once every removal of `.0` asked before is committed (or given
    /// up).
    Sync(String, oneshot::Sender<()>),
}

/// Cloneable handle on the node's removal task.
#[derive(Clone)]
pub struct Remover {
    tx: mpsc::UnboundedSender<ToRemover>,
    /// Delivered and not yet removed (bare, id): a pull on this node skips
    /// them, so a new session of the account does not get them again while
    /// their removal waits for its enqueue or its commit.
    pending: Arc<Mutex<HashSet<(String, String)>>>,
}

impl Remover {
    /// Starts the removal task of this node.
    pub fn start(cluster: ClusterHandle) -> Remover {
        let (tx, rx) = mpsc::unbounded_channel();
        let pending = Arc::new(Mutex::new(HashSet::new()));
        tokio::spawn(run_remover(cluster, rx, pending.clone()));
        Remover { tx, pending }
    }

    /// The client of `bare` has message `id`: remove it from the queue.
    pub fn delivered(&self, bare: &str, id: String) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((bare.to_string(), id.clone()));
        let _ = self.tx.send(ToRemover::Delivered(bare.to_string(), id));
    }

    /// The client of `bare` has message `id`, and another holder of its
    /// custody copy may not hear it (its link is down): the removal is
    /// committed now, so that holder's later commit of it is dropped.
    pub fn tombstone(&self, bare: &str, id: String) {
        let _ = self.tx.send(ToRemover::Tombstone(bare.to_string(), id));
    }

    /// The ids of `bare` delivered and not yet removed: a session moving to
    /// another node takes them along, so the new node neither pulls them
    /// again nor leaves them queued if this node cannot commit their
    /// removal (a leader paused just then).
    pub fn pending_of(&self, bare: &str) -> Vec<String> {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(b, _)| b == bare)
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// Whether message `id` of `bare` was delivered and is being removed.
    pub fn is_pending(&self, bare: &str, id: &str) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(bare.to_string(), id.to_string()))
    }

    /// Waits (at most `limit`) until the removals asked for `bare` so far
    /// are committed: a client that closes its stream and logs in again at
    /// once does not get what it acknowledged a second time.
    pub async fn sync(&self, bare: &str, limit: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(ToRemover::Sync(bare.to_string(), tx)).is_ok() {
            let _ = tokio::time::timeout(limit, rx).await;
        }
    }
}

/// A removal waiting: when it was handed in, and whether it is a
/// tombstone (committed even if the message is not queued).
type Waiting = (Instant, bool);

async fn run_remover(
    cluster: ClusterHandle,
    mut rx: mpsc::UnboundedReceiver<ToRemover>,
    pending: Arc<Mutex<HashSet<(String, String)>>>,
) {
    let mut waiting: HashMap<(String, String), Waiting> = HashMap::new();
    let mut syncs: Vec<(String, Instant, oneshot::Sender<()>)> = Vec::new();
    let mut ticker = tokio::time::interval(REMOVE_TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let take = |m: ToRemover,
                waiting: &mut HashMap<(String, String), Waiting>,
                syncs: &mut Vec<(String, Instant, oneshot::Sender<()>)>| match m {
        ToRemover::Delivered(bare, id) => {
            waiting
                .entry((bare, id))
                .or_insert_with(|| (Instant::now(), false));
        }
        ToRemover::Tombstone(bare, id) => {
            waiting
                .entry((bare, id))
                .or_insert_with(|| (Instant::now(), true))
                .1 = true;
        }
        ToRemover::Sync(bare, tx) => syncs.push((bare, Instant::now(), tx)),
    };
    loop {
        tokio::select! {
            item = rx.recv() => match item {
                Some(m) => {
                    take(m, &mut waiting, &mut syncs);
                    while let Ok(m) = rx.try_recv() {
                        take(m, &mut waiting, &mut syncs);
                    }
                }
                None => return,
            },
            _ = ticker.tick() => {}
        }
        if !waiting.is_empty() {
            remove_ready(&cluster, &mut waiting).await;
            let mut p = pending.lock().unwrap_or_else(|p| p.into_inner());
            p.retain(|k| waiting.contains_key(k));
        }
        // A sync is answered once nothing of its account asked before it
        // is still waiting (what was ready was committed just above).
        let (keep, done): (Vec<_>, Vec<_>) =
            std::mem::take(&mut syncs)
                .into_iter()
                .partition(|(bare, at, _)| {
                    waiting
                        .iter()
                        .any(|((b, _), (since, _))| b == bare && since <= at)
                });
        syncs = keep;
        for (_, _, tx) in done {
            let _ = tx.send(());
        }
    }
}

/// Proposes the removal of every waiting id whose enqueue is applied here,
/// and of every tombstone; drops ids that waited [`REMOVE_WAIT`] (never
/// committed).
async fn remove_ready(cluster: &ClusterHandle, waiting: &mut HashMap<(String, String), Waiting>) {
    let mut ready: BTreeMap<String, Vec<(String, Waiting)>> = BTreeMap::new();
    {
        let state = cluster.state().read();
        waiting.retain(|(bare, id), (since, tomb)| {
            if *tomb
                || state
                    .data
                    .offline_ids
                    .get(&(bare.clone(), id.clone()))
                    .is_some()
            {
                ready
                    .entry(bare.clone())
                    .or_default()
                    .push((id.clone(), (*since, *tomb)));
                return false;
            }
            since.elapsed() < REMOVE_WAIT
        });
    }
    let writes = ready.into_iter().flat_map(|(to, ids)| {
        ids.chunks(REMOVE_BATCH)
            .map(|c| (to.clone(), c.to_vec()))
            .collect::<Vec<_>>()
    });
    let results = futures::future::join_all(writes.map(|(to, ids)| {
        let cluster = cluster.clone();
        async move {
            let cmd = Command::RemoveOffline {
                to: to.clone(),
                ids: ids.iter().map(|(i, _)| i.clone()).collect(),
            };
            let r = cluster.write(cmd).await;
            (to, ids, r)
        }
    }))
    .await;
    for (to, ids, r) in results {
        if let Err(e) = r {
            // Idempotent: try again at the next tick (if still queued).
            debug!(error = %e, "offline removal not committed; retrying");
            for (id, (since, tomb)) in ids {
                if since.elapsed() < REMOVE_WAIT {
                    waiting.insert((to.clone(), id), (since, tomb));
                }
            }
        }
    }
}
