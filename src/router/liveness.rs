//! Sessions of dead nodes leave the shared table within seconds.
//!
//! - The leader asks every member for its report every 500 ms; a member
//!   that has not answered for `node_dead_after_ms` and still holds
//!   bindings gets them dropped (one replicated command), and its users'
//!   contacts receive unavailable presence (sent by `im`, told through a
//!   channel: the router does not depend on `im`). From then on messages to those
//!   users go to the offline queue and the users can log in elsewhere.
//! - Every node checks that its own sessions are still its own in the
//!   table; one whose binding was dropped or taken over is ended, so the
//!   client reconnects and sees the offline queue.
//! - A starting node drops its own stale bindings before serving clients
//!   (see `node.rs`).
use std::collections::HashMap;
use std::time::{Duration, Instant};

use starling_raft::command::{Command, Response};
use starling_raft::NodeId;
use tracing::{info, warn};

use super::Router;
use crate::xmpp::{StreamCondition, StreamError};

/// Where the full JIDs of sessions dropped with their dead node go, to be
/// announced to their contacts.
pub type LostSessions = tokio::sync::mpsc::UnboundedSender<Vec<String>>;

const PROBE_EVERY: Duration = Duration::from_millis(500);
/// A local session younger than this may not be committed yet.
const BIND_GRACE: Duration = Duration::from_secs(10);

pub async fn run(router: Router, dead_after: Duration, lost_tx: LostSessions) {
    let mut last_ok: HashMap<NodeId, Instant> = HashMap::new();
    let mut was_leader = false;
    let mut ticker = tokio::time::interval(PROBE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        reconcile_local(&router).await;
        let cluster = router.cluster().clone();
        let (leader, term) = {
            let m = cluster.raft().metrics().borrow().clone();
            (m.current_leader == Some(router.node()), m.current_term)
        };
        if !leader {
            was_leader = false;
            continue;
        }
        let members: Vec<(NodeId, String)> = {
            let m = cluster.raft().metrics().borrow().membership_config.clone();
            m.membership()
                .nodes()
                .filter(|(id, _)| **id != router.node())
                .map(|(id, n)| (*id, n.raft_addr.clone()))
                .collect()
        };
        let now = Instant::now();
        if !was_leader {
            // A new leader gives every member a full grace period.
            last_ok.clear();
            was_leader = true;
        }
        let probes = members.iter().map(|(id, addr)| {
            let cluster = cluster.clone();
            async move {
                let ok = cluster
                    .peer_report(addr, Duration::from_millis(400))
                    .await
                    .is_ok();
                (*id, ok)
            }
        });
        for (id, ok) in futures::future::join_all(probes).await {
            let seen = last_ok.entry(id).or_insert(now);
            if ok {
                *seen = Instant::now();
            }
        }
        // Probing took time: a leader deposed meanwhile (a partition that
        // healed) decides nothing on what it saw.
        let still = {
            let m = cluster.raft().metrics().borrow().clone();
            m.current_leader == Some(router.node()) && m.current_term == term
        };
        if !still {
            was_leader = false;
            continue;
        }
        // Bindings held by nodes that are dead or no longer members.
        let holders = cluster.state().read().data.session_count_by_node();
        for (node, count) in holders {
            if node == router.node() || count == 0 {
                continue;
            }
            let member = members.iter().any(|(id, _)| *id == node);
            let dead = last_ok
                .get(&node)
                .is_some_and(|t| t.elapsed() >= dead_after);
            if member && !dead {
                continue;
            }
            drop_node(&router, node, count, term, &lost_tx).await;
        }
    }
}

/// Drops `node`'s bindings with a command valid only in `term` (the term in
/// which this node, as leader, found `node` dead), proposed here only: never
/// forwarded to a later leader, and rejected by apply if it lands in
/// another term.
async fn drop_node(router: &Router, node: NodeId, count: usize, term: u64, lost_tx: &LostSessions) {
    let lost: Vec<String> = {
        let state = router.cluster().state().read();
        state
            .data
            .sessions
            .iter()
            .filter(|(_, b)| b.node == node && b.available)
            .map(|(k, _)| k.clone())
            .collect()
    };
    let cmd = Command::DropNodeSessions {
        node,
        term: Some(term),
    };
    match router
        .cluster()
        .propose_here(starling_raft::cluster::Proposal::Command(cmd))
        .await
    {
        Ok(a) if matches!(a.response, Response::Rejected { .. }) => {
            info!(node, ?a.response, "stale liveness decision rejected");
        }
        Ok(_) => {
            info!(
                node,
                sessions = count,
                "dropped the session bindings of an unreachable node"
            );
            // Their contacts get unavailable presence (RFC 6121 §4.5.2):
            // presence is `im`'s business (`im::presence::announce_lost_sessions`).
            let _ = lost_tx.send(lost);
            // Their room occupancies too (XEP-0045: the rooms live on).
            router.muc_node_lost(node).await;
        }
        Err(e) => warn!(node, error = %e, "cannot drop the bindings of an unreachable node"),
    }
}

/// Ends local sessions whose binding is no longer this session's.
async fn reconcile_local(router: &Router) {
    let mut gone = Vec::new();
    {
        let state = router.cluster().state().read();
        for (full, id, since) in router.local_sessions_with_age() {
            if since.elapsed() < BIND_GRACE {
                continue;
            }
            let mine = state
                .data
                .sessions
                .get(&full)
                .is_some_and(|b| b.node == router.node() && b.session == id);
            if !mine {
                gone.push(full);
            }
        }
    }
    for full in gone {
        if let Some(s) = router.local_session(&full) {
            s.kick(StreamError::with_text(
                StreamCondition::UndefinedCondition,
                "this session's binding was dropped by the cluster; please reconnect",
            ));
        }
    }
}
