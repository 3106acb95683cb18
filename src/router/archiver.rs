//! The node's archiver (XEP-0313 message archive, writing side): the
//! router hands it the archive entries of each one-to-one message it
//! routes (the sender's and the recipient's, as their preferences say),
//! and it commits them to the replicated archive in batches
//! (`ArchiveAppend`), beside the live path.
//!
//! - Batches: one commit in flight at a time; the entries that arrive
//!   meanwhile, or within `archive.batch_ms` of the first, up to
//!   `archive.batch_entries`, go in the next (group commit: one raft entry
//!   and one fsync for many messages).
//! - Outcomes: an unknown outcome (timeout, leader change, lost
//!   connection) is retried with the same command until it is known; the
//!   apply stores an id its owner's archive holds only once, so a retry
//!   that finds its first attempt applied changes nothing.
//! - Durability: a message from a session with XEP-0198 is counted in the
//!   sender's `h` only once its entries are committed: the archiver sends
//!   the session a [`Guarded::Safe`] for it, and the session waits for
//!   that as well as for its delivery guard (`c2s::session`). So an
//!   acknowledged message is in a majority's logs, archive included, and a
//!   node's death loses no history. The recipient never waits for it.
//! - Retention: each append carries the limits and the proposer's clock;
//!   the leader also proposes an `ArchiveTrim` every hour, for archives
//!   no new message touches.
use std::sync::Arc;
use std::time::Duration;

use starling_raft::command::{
    ArchiveDefault, ArchiveEntry, ArchiveLimits, ArchiveRetraction, Command, Response,
};
use starling_raft::ClusterHandle;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::{GuardDone, Guarded};
use crate::clock::now_ms;

/// The first retry waits this long, doubling up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(25);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// How often the leader trims every archive to the retention limits.
const TRIM_EVERY: Duration = Duration::from_secs(3600);

/// The archive settings the router and the archiver use (`[archive]`).
#[derive(Debug, Clone)]
pub struct ArchiveConfig {
    pub enabled: bool,
    /// The preference of an account that set none.
    pub default: ArchiveDefault,
    /// Messages kept per account (0: no cap).
    pub max_entries: u32,
    /// Age after which messages are dropped, ms (0: never).
    pub max_age_ms: u64,
    /// Longest the first entry of a batch waits for others.
    pub batch: Duration,
    /// Most entries in one commit.
    pub batch_entries: usize,
    /// Most messages in one page of a query.
    pub max_page: usize,
    /// The page size of a query without RSM `max`.
    pub default_page: usize,
}

impl ArchiveConfig {
    /// From the `[archive]` section (validated already).
    pub fn from_section(s: &crate::config::ArchiveSection) -> ArchiveConfig {
        ArchiveConfig {
            enabled: s.enabled,
            default: s.default_prefs().unwrap_or(ArchiveDefault::Always),
            max_entries: s.max_entries,
            max_age_ms: u64::from(s.max_age_days) * 86_400_000,
            batch: Duration::from_millis(s.batch_ms),
            batch_entries: s.batch_entries.max(1),
            max_page: s.max_page as usize,
            default_page: s.default_page as usize,
        }
    }

    /// The limits of a command proposed now.
    pub fn limits(&self) -> ArchiveLimits {
        ArchiveLimits {
            max_entries: self.max_entries,
            max_age_ms: self.max_age_ms,
            now_ms: now_ms(),
        }
    }
}

/// The entries of one message, and who waits for their commit.
pub struct ArchiveJob {
    pub entries: Vec<ArchiveEntry>,
    /// XEP-0424 retractions the message carries (applied after the
    /// entries of the same commit).
    pub retractions: Vec<ArchiveRetraction>,
    /// The sending session and its XEP-0198 count of the message.
    pub done: Option<(mpsc::UnboundedSender<GuardDone>, u64)>,
}

/// Cloneable handle on the node's archiver task.
#[derive(Clone)]
pub struct Archiver {
    tx: mpsc::UnboundedSender<ArchiveJob>,
    config: Arc<ArchiveConfig>,
    cluster: ClusterHandle,
    shutdown: watch::Receiver<bool>,
}

impl Archiver {
    /// Starts the archiver task (and the hourly trim); both end with the
    /// node (`shutdown`), reporting what was not committed as unknown.
    pub fn start(
        cluster: ClusterHandle,
        config: ArchiveConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Archiver {
        let (tx, rx) = mpsc::unbounded_channel();
        let config = Arc::new(config);
        tokio::spawn(run(cluster.clone(), config.clone(), shutdown.clone(), rx));
        if config.max_age_ms > 0 || config.max_entries > 0 {
            tokio::spawn(run_trim(cluster.clone(), config.clone(), shutdown.clone()));
        }
        Archiver {
            tx,
            config,
            cluster,
            shutdown,
        }
    }

    /// Commits `retractions` now, in a command of their own, and waits
    /// until the outcome is known (retried as the batches are): for a
    /// room moderator's XEP-0425 retraction, rare, whose answer says it
    /// is done. [`Guarded::Unknown`] only when the node stops first.
    pub async fn commit_now(&self, retractions: Vec<ArchiveRetraction>) -> Guarded {
        commit(
            &self.cluster,
            &self.config,
            self.shutdown.clone(),
            Vec::new(),
            retractions,
        )
        .await
    }

    pub fn config(&self) -> &ArchiveConfig {
        &self.config
    }

    /// Queues `job` for the next batch.
    pub fn submit(&self, job: ArchiveJob) {
        if let Err(e) = self.tx.send(job) {
            // The task is gone (the node is stopping): unknown outcome.
            if let Some((tx, count)) = e.0.done {
                let _ = tx.send(GuardDone {
                    count: Some(count),
                    outcome: Guarded::Unknown,
                    message: None,
                });
            }
        }
    }
}

/// A batch stops growing past this many bytes of stanzas: one raft entry
/// must fit in an append (1 MiB, `starling_raft::network`), or a follower
/// catching up never gets past it (the catch-up test: two large messages
/// per entry, archived for both parties, stalled a follower for good), as
/// the queue's pipeline does (`inbox::PIPELINE_BYTES`).
const BATCH_BYTES: usize = 512 * 1024;

fn job_bytes(j: &ArchiveJob) -> usize {
    j.entries
        .iter()
        .map(|e| e.message.stanza.len() + e.message.with.len() + e.owner.len())
        .sum::<usize>()
        + j.retractions
            .iter()
            .map(|r| r.tombstone.len())
            .sum::<usize>()
}

async fn run(
    cluster: ClusterHandle,
    config: Arc<ArchiveConfig>,
    shutdown: watch::Receiver<bool>,
    mut rx: mpsc::UnboundedReceiver<ArchiveJob>,
) {
    while let Some(first) = rx.recv().await {
        let deadline = tokio::time::Instant::now() + config.batch;
        let mut n = first.entries.len() + first.retractions.len();
        let mut bytes = job_bytes(&first);
        let mut jobs = vec![first];
        while n < config.batch_entries && bytes < BATCH_BYTES {
            let next = match rx.try_recv() {
                Ok(j) => Some(j),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => tokio::select! {
                    j = rx.recv() => j,
                    _ = tokio::time::sleep_until(deadline) => None,
                },
            };
            match next {
                Some(j) => {
                    n += j.entries.len() + j.retractions.len();
                    bytes += job_bytes(&j);
                    jobs.push(j);
                }
                None => break,
            }
        }
        let mut entries: Vec<ArchiveEntry> = Vec::with_capacity(n);
        let mut retractions: Vec<ArchiveRetraction> = Vec::new();
        for j in &mut jobs {
            entries.append(&mut j.entries);
            retractions.append(&mut j.retractions);
        }
        let outcome = commit(&cluster, &config, shutdown.clone(), entries, retractions).await;
        for job in jobs {
            if let Some((tx, count)) = job.done {
                let _ = tx.send(GuardDone {
                    count: Some(count),
                    outcome: outcome.clone(),
                    message: None,
                });
            }
        }
    }
}

/// Commits `entries`, retrying an outcome that is not known with the same
/// command. Archiving refuses nothing a sender should hear of: any
/// committed outcome is [`Guarded::Safe`].
async fn commit(
    cluster: &ClusterHandle,
    config: &ArchiveConfig,
    mut shutdown: watch::Receiver<bool>,
    entries: Vec<ArchiveEntry>,
    retractions: Vec<ArchiveRetraction>,
) -> Guarded {
    let n = entries.len();
    let cmd = Command::ArchiveAppend {
        entries,
        retractions,
        limits: config.limits(),
    };
    let mut wait = RETRY_FIRST;
    loop {
        let outcome = tokio::select! {
            r = cluster.write(cmd.clone()) => r,
            _ = shutdown.wait_for(|s| *s) => return Guarded::Unknown,
        };
        match outcome {
            Ok(a) => {
                match a.response {
                    Response::Archived { stored, duplicates } => {
                        debug!(entries = n, stored, duplicates, "archived")
                    }
                    other => warn!(?other, "unexpected archive append result"),
                }
                return Guarded::Safe;
            }
            Err(e) => {
                debug!(error = %e, retry_in = ?wait, "archive batch not known to be committed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.wait_for(|s| *s) => return Guarded::Unknown,
                }
                wait = (wait * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Every [`TRIM_EVERY`], the leader applies the retention limits to every
/// archive (the appends trim only the archives they touch).
async fn run_trim(
    cluster: ClusterHandle,
    config: Arc<ArchiveConfig>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(TRIM_EVERY);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let leader = cluster.raft().metrics().borrow().current_leader == Some(cluster.id());
        if !leader {
            continue;
        }
        let cmd = Command::ArchiveTrim {
            limits: config.limits(),
        };
        match cluster.write(cmd).await {
            Ok(a) => debug!(result = ?a.response, "archives trimmed"),
            Err(e) => debug!(error = %e, "archive trim not committed (next hour)"),
        }
    }
}

impl super::Router {
    /// Sets the node's archiver (once, at start).
    pub fn attach_archiver(&self, archiver: Archiver) {
        let _ = self.0.archiver.set(archiver);
    }

    /// The archive settings (none before `attach_archiver`).
    pub fn archive_config(&self) -> Option<&ArchiveConfig> {
        self.0.archiver.get().map(|a| &*a.config)
    }

    /// The node's archiver, if archiving is on.
    pub fn archiver(&self) -> Option<&Archiver> {
        self.0.archiver.get().filter(|a| a.config.enabled)
    }

    /// Hands the archiver the entries of a message routed from a local
    /// session (`from` stamped) to account `to_bare` with archive id `id`
    /// (`stanza`: the message serialized): one for the sender's archive
    /// and one for the recipient's, each if its owner's preferences want
    /// it. Only messages with a `<body/>` are archived (XEP-0313 §5.1.1:
    /// no chat states or receipts alone). A message with an XEP-0424
    /// `<retract id/>` also turns the sender's message of that id (its
    /// origin-id, else its `id`) into a tombstone in both archives.
    /// Returns whether the sender's session is to wait for the commit
    /// (`notify` has an XEP-0198 count).
    pub(super) fn archive_message(
        &self,
        el: &crate::xmpp::Element,
        to_bare: &str,
        id: &str,
        stanza: &str,
        notify: &super::Notify,
    ) -> bool {
        let Some(archiver) = self.archiver() else {
            return false;
        };
        use crate::xmpp::{ns, Element};
        let retract = el
            .get_child("retract", ns::RETRACT)
            .and_then(|r| r.attr("id"));
        let has_body = el.has_child("body", ns::CLIENT);
        if !has_body && retract.is_none() {
            return false;
        }
        let Some(from) = el.attr("from") else {
            return false;
        };
        let from_bare = crate::xmpp::jid::bare_of(from);
        let to = el.attr("to").unwrap_or(to_bare);
        let stamp_ms = now_ms();
        let ty = el.attr("type").unwrap_or("normal");
        let retractions: Vec<ArchiveRetraction> = retract
            .map(|target| ArchiveRetraction {
                archive_id: None,
                by: from_bare.to_string(),
                peer: to_bare.to_string(),
                sender_id: target.to_string(),
                // XEP-0424 §"Tombstones": the message keeps its place in
                // the archive, its content replaced.
                tombstone: Element::new("message", ns::CLIENT)
                    .with_attr("from", from)
                    .with_attr("to", to)
                    .with_attr("type", ty)
                    .with_attr("id", target)
                    .with_child(
                        Element::new("retracted", ns::RETRACT)
                            .with_attr("id", id)
                            .with_attr("stamp", crate::clock::datetime(stamp_ms)),
                    )
                    .with_child(Element::new("origin-id", ns::SID).with_attr("id", target))
                    .to_standalone_xml(),
            })
            .into_iter()
            .collect();
        // The id a sender retracts it by (XEP-0424: its origin-id, else
        // its `id`).
        let sender_id = el
            .get_child("origin-id", ns::SID)
            .and_then(|o| o.attr("id"))
            .or_else(|| el.attr("id"))
            .map(str::to_string);
        let entries: Vec<ArchiveEntry> = {
            let state = self.0.cluster.state().read();
            let d = &state.data;
            let wants = |owner: &str, peer: &str| {
                let in_roster = || {
                    d.roster
                        .get(&(owner.to_string(), peer.to_string()))
                        .is_some_and(|i| !i.stub)
                };
                match d.archive_prefs_of(owner) {
                    Some(p) => p.archives(peer, in_roster),
                    None => {
                        starling_raft::command::ArchivePrefs::with_default(archiver.config.default)
                            .archives(peer, in_roster)
                    }
                }
            };
            [
                (from_bare, to_bare, to, true),
                (to_bare, from_bare, from, false),
            ]
            .into_iter()
            .filter(|_| has_body)
            .filter(|(owner, peer, _, _)| {
                d.users.get(&owner.to_string()).is_some() && wants(owner, peer)
            })
            .map(|(owner, _, with, outgoing)| ArchiveEntry {
                owner: owner.to_string(),
                message: starling_raft::command::ArchivedMessage {
                    id: id.to_string(),
                    with: with.to_string(),
                    stamp_ms,
                    stanza: stanza.to_string(),
                    sender_id: sender_id.clone(),
                    outgoing,
                },
            })
            .collect()
        };
        if entries.is_empty() && retractions.is_empty() {
            return false;
        }
        let done = notify.count.map(|c| (notify.tx.clone(), c));
        let wait = done.is_some();
        archiver.submit(ArchiveJob {
            entries,
            retractions,
            done,
        });
        wait
    }
}
