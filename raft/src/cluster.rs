//! [`ClusterHandle`]: how the rest of Starling talks to the replicated state.
//!
//! - `propose` commits a command or a membership change and returns its
//!   result after commit. A node that is not the leader forwards the proposal
//!   to the leader over the raft port; while no leader is known it waits and
//!   retries until its deadline.
//! - Outcomes follow the jepsen convention: `Ok` (applied), a definite
//!   failure (not applied), or [`ProposeError::Unknown`] (may or may not be
//!   applied: a timeout or a connection lost after sending). An unknown
//!   outcome is never reported as either success or failure.
//! - `state` reads the locally applied state; `report` describes this node;
//!   `peer_report` asks another node for its own report.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::{ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use starling_proto::raft::Empty;
use tokio::sync::{mpsc, oneshot};

use crate::batcher::{batcher, Pending};
use crate::codec;
use crate::command::{Command, Response};
use crate::network::{not_sent, Peers};
use crate::proposal::write_error;
pub use crate::proposal::{Applied, ForwardedProposal, Proposal, ProposeError};
use crate::store::StateReader;
use crate::types::{NodeId, Raft, StarlingNode};

/// This node's view of itself, as reported to admin and peers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    pub id: NodeId,
    /// "leader", "follower", "candidate", "learner" or "shutdown".
    pub role: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    /// Digest of the whole applied state at `applied_index`.
    pub digest: String,
    pub users: u64,
    pub sessions: u64,
    pub queued: u64,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub nodes: BTreeMap<NodeId, StarlingNode>,
    /// Never voted, no log, no membership: may still be asked to initialize.
    pub pristine: bool,
    /// The node's XMPP client address as configured (a member formed from
    /// `initial_cluster` has none in the membership). Empty from a node
    /// that predates the field.
    #[serde(default)]
    pub client_addr: String,
}

struct Inner {
    id: NodeId,
    raft: Raft,
    state: StateReader,
    peers: Peers,
    propose_timeout: Duration,
    batch_tx: mpsc::Sender<Pending>,
    /// When an append from a leader was last taken (see
    /// [`ClusterHandle::in_quorum_contact`]).
    leader_contact: std::sync::Mutex<Option<Instant>>,
    /// The commit index the leader sent with its last append taken (see
    /// [`ClusterHandle::caught_up`]).
    leader_commit: AtomicU64,
    /// How long [`ClusterHandle::propose`] takes, committed and applied
    /// here (`/metrics`).
    proposal_latency: crate::latency::LatencyHistogram,
    /// This node's XMPP client address (`set_client_addr`).
    client_addr: std::sync::OnceLock<String>,
}

/// What `/metrics` reports of this node's raft, read at scrape time.
#[derive(Debug, Clone, Default)]
pub struct RaftView {
    pub term: u64,
    pub is_leader: bool,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    pub last_log_index: u64,
    /// The commit index: the leader's own, a follower's last heard from
    /// its leader.
    pub commit_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub snapshot_bytes: u64,
    pub voters: u64,
    /// On the leader: each follower's highest log index known replicated.
    pub matched: Vec<(NodeId, u64)>,
    pub sessions: u64,
    pub users: u64,
    /// Messages in offline queues, and their bytes.
    pub queued: u64,
    pub queued_bytes: u64,
}

/// Longest one attempt of an idempotent proposal waits before it is made
/// again (to the leader of the moment).
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1500);

/// A cloneable handle on this node's raft instance and applied state.
#[derive(Clone)]
pub struct ClusterHandle(Arc<Inner>);

impl ClusterHandle {
    pub fn new(
        id: NodeId,
        raft: Raft,
        state: StateReader,
        peers: Peers,
        propose_timeout: Duration,
    ) -> Self {
        let (batch_tx, batch_rx) = mpsc::channel(4096);
        tokio::spawn(batcher(raft.clone(), batch_rx));
        ClusterHandle(Arc::new(Inner {
            id,
            raft,
            state,
            peers,
            propose_timeout,
            batch_tx,
            leader_contact: std::sync::Mutex::new(None),
            leader_commit: AtomicU64::new(0),
            proposal_latency: Default::default(),
            client_addr: std::sync::OnceLock::new(),
        }))
    }

    /// A leader's append was just taken (the raft server calls this), with
    /// the leader's commit index at the time it sent it.
    pub(crate) fn leader_contact(&self, leader_commit: Option<u64>) {
        if let Some(c) = leader_commit {
            self.0.leader_commit.fetch_max(c, Ordering::Relaxed);
        }
        *self
            .0
            .leader_contact
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    pub fn id(&self) -> NodeId {
        self.0.id
    }

    pub fn raft(&self) -> &Raft {
        &self.0.raft
    }

    pub fn state(&self) -> &StateReader {
        &self.0.state
    }

    pub fn peers(&self) -> &Peers {
        &self.0.peers
    }

    /// Whether this node is the raft leader now.
    pub fn is_leader(&self) -> bool {
        self.0.raft.metrics().borrow().state == ServerState::Leader
    }

    /// The index of the last log entry this node has applied (0: none).
    pub fn applied_index(&self) -> u64 {
        self.0
            .state
            .read()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0)
    }

    /// The index of the last entry this node has applied that delivery
    /// may depend on (archive batches do not count): what a receiving
    /// node must have applied before delivering a stanza this node sends
    /// (see [`crate::store::AppliedState::causal_index`]).
    pub fn causal_index(&self) -> u64 {
        self.0.state.read().causal_index
    }

    /// Whether this node is, as far as it can tell, in touch with a leader
    /// that has a quorum: a leader a quorum acknowledged within the last ten
    /// heartbeats (at least 300 ms; it was 1.5 s, and a leader cut off from
    /// the majority delivered from its stale queue copy for that long, so
    /// the client got those messages again on its next node), or a
    /// follower (or learner) that knows its leader and took an append from
    /// it within as long. (It was enough to know a leader: a follower cut
    /// off from it by a bridge partition kept its leader, as the nodes it
    /// still reached refused it their votes, and delivered from its stale
    /// queue; jepsen-lite 5n-partition-bridge-s3, 10 copies.)
    pub fn in_quorum_contact(&self) -> bool {
        let fresh_ms = (self.0.raft.config().heartbeat_interval * 10).max(300);
        let m = self.0.raft.metrics();
        let m = m.borrow();
        self.heard_leader_within(&m, Duration::from_millis(fresh_ms))
    }

    /// A leader a quorum acknowledged within `within` (or the only voter),
    /// or a follower (learner) that knows its leader and took an append
    /// from it within as long.
    fn heard_leader_within(
        &self,
        m: &openraft::RaftMetrics<NodeId, StarlingNode>,
        within: Duration,
    ) -> bool {
        match m.state {
            ServerState::Leader => {
                m.membership_config.membership().voter_ids().count() <= 1
                    || m.millis_since_quorum_ack
                        .is_some_and(|ms| u128::from(ms) < within.as_millis())
            }
            ServerState::Follower | ServerState::Learner => {
                m.current_leader.is_some()
                    && self
                        .0
                        .leader_contact
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .is_some_and(|t| t.elapsed() < within)
            }
            _ => false,
        }
    }

    /// Whether this node's replicated state is fresh enough to check a
    /// password against (hardening issue, item 5): it heard from a leader
    /// with a quorum within `within` (a leader: a quorum acknowledged it),
    /// and a follower has applied the commit index that leader last sent,
    /// waiting up to `limit` for the last `slack` entries of it. A node
    /// restarted after writes it missed (catching up by log or snapshot), a
    /// candidate whose term climbs, or one cut off for longer than `within`
    /// is not: its accounts and passwords may be stale (an account created
    /// meanwhile refused there, an old password still taken).
    pub async fn caught_up(&self, within: Duration, slack: u64, limit: Duration) -> bool {
        let target = {
            let m = self.0.raft.metrics();
            let m = m.borrow();
            if !self.heard_leader_within(&m, within) {
                return false;
            }
            if m.state == ServerState::Leader {
                return true;
            }
            let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
            let commit = self.0.leader_commit.load(Ordering::Relaxed);
            if applied + slack < commit {
                return false;
            }
            if applied >= commit {
                return true;
            }
            commit
        };
        self.0
            .raft
            .wait(Some(limit))
            .applied_index_at_least(Some(target), "fresh enough to authenticate")
            .await
            .is_ok()
    }

    /// Whether this node is in touch with a leader that has a quorum *now*:
    /// the leader confirms its leadership with a round of heartbeats and
    /// this node applies up to the leader's commit index (a read index),
    /// within `limit`. Unlike [`in_quorum_contact`](Self::in_quorum_contact)
    /// (a window of ten heartbeats), it has no blind spot after a cut:
    /// a follower cut off 40 ms before it wrote its stale queued messages
    /// still looked in contact (jepsen-lite 3n-partition-one-s1, 33 copies).
    pub async fn confirm_contact(&self, limit: Duration) -> bool {
        if !self.in_quorum_contact() {
            return false;
        }
        matches!(
            tokio::time::timeout(limit, self.propose(Proposal::ReadIndex)).await,
            Ok(Ok(_))
        )
    }

    /// Commits a state machine command and returns its result.
    pub async fn write(&self, cmd: Command) -> Result<Applied, ProposeError> {
        self.propose(Proposal::Command(cmd)).await
    }

    /// Commits `proposal` through the leader, wherever it is, and returns
    /// once this node has applied it too: a caller that reads the local
    /// state right after a write sees the write (read-your-writes), even on
    /// a follower.
    pub async fn propose(&self, proposal: Proposal) -> Result<Applied, ProposeError> {
        let started = Instant::now();
        let applied = self.propose_committed(proposal).await;
        self.0.proposal_latency.observe(started.elapsed());
        let applied = applied?;
        let wait = self.0.propose_timeout;
        let reached = self
            .0
            .raft
            .wait(Some(wait))
            .applied_index_at_least(Some(applied.log_index), "read your writes")
            .await;
        if reached.is_err() {
            tracing::warn!(
                index = applied.log_index,
                "committed, but not applied here in time"
            );
        }
        Ok(applied)
    }

    async fn propose_committed(&self, proposal: Proposal) -> Result<Applied, ProposeError> {
        let deadline = Instant::now() + self.0.propose_timeout;
        // An idempotent command whose attempt takes too long (a leader that
        // died or was cut off after the proposal left) is proposed again to
        // whoever leads now, within the same deadline, instead of waiting
        // the whole deadline on one attempt.
        let retry = matches!(&proposal, Proposal::Command(c) if c.is_idempotent());
        let mut unknown = false;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(if unknown {
                    ProposeError::Unknown("timed out waiting for commit".into())
                } else {
                    ProposeError::NoLeader
                });
            }
            let attempt = if retry {
                remaining.min(ATTEMPT_TIMEOUT)
            } else {
                remaining
            };
            let outcome = match tokio::time::timeout(attempt, self.propose_here(proposal.clone()))
                .await
            {
                Err(_) if retry => {
                    unknown = true;
                    continue;
                }
                Err(_) => return Err(ProposeError::Unknown("timed out waiting for commit".into())),
                Ok(r) => r,
            };
            let leader = match outcome {
                Err(ProposeError::NotLeader { leader }) => leader,
                other => return other,
            };
            let node = leader
                .and_then(|l| self.member_node(l))
                .filter(|_| leader != Some(self.0.id));
            let Some(node) = node else {
                // No leader known yet (or it is us, mid-transition): wait.
                tokio::time::sleep(Duration::from_millis(25)).await;
                continue;
            };
            let forwarded = self.forward(&node, proposal.clone());
            let outcome = if retry {
                // A leader paused or cut off after the proposal left is
                // not waited on for the whole attempt: once this node
                // hears of another leader, the command goes there.
                let leader = leader.unwrap_or_default();
                tokio::select! {
                    r = tokio::time::timeout(attempt, forwarded) => r,
                    () = self.leader_moved_from(leader) => {
                        unknown = true;
                        continue;
                    }
                }
            } else {
                tokio::time::timeout(attempt, forwarded).await
            };
            match outcome {
                Err(_) if retry => unknown = true,
                Err(_) => {
                    return Err(ProposeError::Unknown(
                        "timed out waiting for the leader".into(),
                    ))
                }
                Ok(Err(ProposeError::NotLeader { .. })) | Ok(Err(ProposeError::NoLeader)) => {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Ok(Err(ProposeError::Unknown(_))) if retry => {
                    unknown = true;
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Ok(other) => return other,
            }
        }
    }

    /// Returns once this node knows of a leader other than `from`.
    async fn leader_moved_from(&self, from: NodeId) {
        let mut m = self.0.raft.metrics();
        loop {
            if m.borrow_and_update()
                .current_leader
                .is_some_and(|l| l != from)
            {
                return;
            }
            if m.changed().await.is_err() {
                // Raft stopped: the attempt's own timeout decides.
                std::future::pending::<()>().await;
            }
        }
    }

    /// The voting members, as this node's membership config says.
    pub fn voter_ids(&self) -> Vec<NodeId> {
        let m = self.0.raft.metrics();
        let m = m.borrow();
        m.membership_config.membership().voter_ids().collect()
    }

    /// The membership entry of node `id` (its addresses).
    pub fn member_node(&self, id: NodeId) -> Option<StarlingNode> {
        let m = self.0.raft.metrics().borrow().membership_config.clone();
        m.membership().get_node(&id).cloned()
    }

    async fn forward(
        &self,
        leader: &StarlingNode,
        proposal: Proposal,
    ) -> Result<Applied, ProposeError> {
        propose_at(&self.0.peers, &leader.raft_addr, self.0.id, proposal).await
    }

    /// Proposes on this node only: `NotLeader` if it is not the leader.
    pub async fn propose_here(&self, proposal: Proposal) -> Result<Applied, ProposeError> {
        let raft = &self.0.raft;
        match proposal {
            Proposal::Command(Command::Batch { .. }) => Err(ProposeError::Fatal(
                "batches are formed by the node, not proposed".into(),
            )),
            Proposal::Command(cmd) => {
                // Not the leader: say so without queueing behind other writes.
                let m = raft.metrics().borrow().clone();
                if m.state != ServerState::Leader {
                    return Err(ProposeError::NotLeader {
                        leader: m.current_leader,
                    });
                }
                let (tx, rx) = oneshot::channel();
                self.0
                    .batch_tx
                    .send(Pending { cmd, tx })
                    .await
                    .map_err(|_| ProposeError::Fatal("proposal batcher stopped".into()))?;
                rx.await.map_err(|_| {
                    ProposeError::Unknown("proposal batcher dropped the command".into())
                })?
            }
            Proposal::ReadIndex => {
                let m = raft.metrics().borrow().clone();
                if m.state != ServerState::Leader {
                    return Err(ProposeError::NotLeader {
                        leader: m.current_leader,
                    });
                }
                let (read, _) = raft.get_read_log_id().await.map_err(|e| match e {
                    RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => {
                        ProposeError::NotLeader {
                            leader: f.leader_id,
                        }
                    }
                    other => ProposeError::Unknown(other.to_string()),
                })?;
                Ok(applied_membership(read.map(|l| l.index).unwrap_or(0), None))
            }
            Proposal::AddNode { id, node } => {
                if let Some(existing) = self.member_node(id) {
                    if existing != node {
                        return Err(ProposeError::Membership(format!(
                            "node {id} is already a member with other addresses ({existing})"
                        )));
                    }
                }
                raft.add_learner(id, node, true)
                    .await
                    .map_err(write_error)?;
                let r = raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                    .map_err(write_error)?;
                Ok(applied_membership(r.log_id.index, r.membership))
            }
            Proposal::RemoveNode { id } => {
                let m = raft.metrics().borrow().membership_config.clone();
                let is_voter = m.membership().voter_ids().any(|v| v == id);
                let is_node = m.membership().get_node(&id).is_some();
                if !is_node {
                    // Only the leader's view is authoritative.
                    if raft.metrics().borrow().state != ServerState::Leader {
                        return Err(ProposeError::NotLeader {
                            leader: raft.metrics().borrow().current_leader,
                        });
                    }
                    return Err(ProposeError::UnknownNode(id));
                }
                let change = if is_voter {
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                } else {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                };
                let r = raft
                    .change_membership(change, false)
                    .await
                    .map_err(write_error)?;
                Ok(applied_membership(r.log_id.index, r.membership))
            }
        }
    }

    /// Sets this node's XMPP client address for its reports (once).
    pub fn set_client_addr(&self, addr: String) {
        let _ = self.0.client_addr.set(addr);
    }

    /// Proposal latency so far (every outcome counted).
    pub fn proposal_latency(&self) -> crate::latency::HistogramSnapshot {
        self.0.proposal_latency.snapshot()
    }

    /// Raft and table sizes for `/metrics` (cheap: no digest).
    pub fn metrics_view(&self) -> RaftView {
        let m = self.0.raft.metrics().borrow().clone();
        let st = self.0.state.read();
        let is_leader = m.state == ServerState::Leader;
        let matched = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .filter(|(id, _)| **id != self.0.id)
                    .map(|(id, l)| (*id, l.map(|l| l.index).unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        let applied_index = st.last_applied.map(|l| l.index).unwrap_or(0);
        let commit_index = if is_leader {
            // A leader applies what it committed; its commit index is at
            // least that.
            applied_index.max(self.0.leader_commit.load(Ordering::Relaxed))
        } else {
            self.0.leader_commit.load(Ordering::Relaxed)
        };
        RaftView {
            term: m.current_term,
            is_leader,
            leader: m.current_leader,
            last_log_index: m.last_log_index.unwrap_or(0),
            commit_index,
            applied_index,
            snapshot_index: st.snapshot.map(|l| l.index).unwrap_or(0),
            snapshot_bytes: st.snapshot_bytes,
            voters: m.membership_config.membership().voter_ids().count() as u64,
            matched,
            sessions: st.data.sessions.len() as u64,
            users: st.data.users.len() as u64,
            queued: st.data.offline.len() as u64,
            queued_bytes: st.data.offline.total(),
        }
    }

    /// This node's report of itself.
    pub fn report(&self) -> NodeReport {
        let m = self.0.raft.metrics().borrow().clone();
        let st = self.0.state.read();
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let learners: Vec<NodeId> = membership.learner_ids().collect();
        let nodes = membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        NodeReport {
            id: self.0.id,
            role: role.into(),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            applied_index: st.last_applied.map(|l| l.index),
            snapshot_index: st.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            digest: st.data.digest_hex(),
            users: st.data.users.len() as u64,
            sessions: st.data.sessions.len() as u64,
            queued: st.data.offline.len() as u64,
            pristine: m.last_log_index.is_none()
                && m.vote == Default::default()
                && voters.is_empty(),
            voters,
            learners,
            nodes,
            client_addr: self.0.client_addr.get().cloned().unwrap_or_default(),
        }
    }

    /// Asks the node at `raft_addr` for its report.
    pub async fn peer_report(
        &self,
        raft_addr: &str,
        timeout: Duration,
    ) -> Result<NodeReport, String> {
        let mut client = self
            .0
            .peers
            .client(raft_addr)
            .map_err(|s| s.message().to_string())?;
        let reply = tokio::time::timeout(timeout, client.node_info(Empty {}))
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
            .map_err(|s| s.message().to_string())?;
        codec::decode(&reply.into_inner().data).map_err(|e| e.to_string())
    }
}

/// Sends `proposal` to the node at `raft_addr`. A node (`from` = its id)
/// gets `NotLeader` back from a non-leader; a tool outside the cluster
/// (`from` = 0) has its proposal forwarded to the leader like any write.
pub async fn propose_at(
    peers: &Peers,
    raft_addr: &str,
    from: NodeId,
    proposal: Proposal,
) -> Result<Applied, ProposeError> {
    let mut client = peers
        .client(raft_addr)
        .map_err(|s| ProposeError::Fatal(s.message().to_string()))?;
    // Off the runtime's workers: an archive batch is up to 512 KiB.
    let data =
        tokio::task::spawn_blocking(move || codec::encode(&ForwardedProposal { from, proposal }))
            .await
            .map_err(|e| ProposeError::Fatal(e.to_string()))?
            .map_err(|e| ProposeError::Fatal(e.to_string()))?;
    match client.propose(starling_proto::raft::Payload { data }).await {
        Ok(reply) => codec::decode::<Result<Applied, ProposeError>>(&reply.into_inner().data)
            .map_err(|e| ProposeError::Unknown(format!("undecodable reply: {e}")))?,
        // The node never saw it: as good as "no leader right now".
        Err(s) if not_sent(&s) => Err(ProposeError::NotLeader { leader: None }),
        Err(s) => Err(ProposeError::Unknown(format!(
            "proposal to {raft_addr} failed: {s}"
        ))),
    }
}

fn applied_membership(
    log_index: u64,
    membership: Option<openraft::Membership<NodeId, StarlingNode>>,
) -> Applied {
    let (voters, learners) = membership
        .map(|m| (m.voter_ids().collect(), m.learner_ids().collect()))
        .unwrap_or_default();
    Applied {
        log_index,
        response: Response::Done,
        voters,
        learners,
    }
}
