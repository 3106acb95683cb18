//! Whether this node should get traffic: what `/readyz` answers for load
//! balancers and `starling ctl status` shows. Ready means a member of a
//! cluster in touch with a leader that has a quorum, caught up with what
//! that leader committed (the check SASL makes before it looks at a
//! password), and serving XMPP clients (its stale bindings dropped after
//! a restart), not stopping.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use starling_raft::ClusterHandle;
use tokio::sync::watch;

/// Within how long a leader with a quorum must have been heard from (as
/// for authentication, `c2s::auth`).
const FRESH_WITHIN: Duration = Duration::from_secs(5);
/// Entries a follower may be behind and still wait for them.
const FRESH_SLACK: u64 = 512;
/// How long a check waits for those entries.
const FRESH_WAIT: Duration = Duration::from_millis(500);

/// Why a node is not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    /// Not in touch with a leader that has a quorum.
    NoLeader,
    /// Behind the leader's commit index.
    CatchingUp,
    /// Not serving clients yet (starting).
    Starting,
    /// Shutting down.
    Stopping,
}

impl NotReady {
    pub fn as_str(self) -> &'static str {
        match self {
            NotReady::NoLeader => "not in touch with a cluster leader that has a quorum",
            NotReady::CatchingUp => "catching up with the cluster",
            NotReady::Starting => "starting: not serving XMPP clients yet",
            NotReady::Stopping => "stopping",
        }
    }
}

/// The readiness of a node, cheap to clone.
#[derive(Clone)]
pub struct Readiness {
    cluster: ClusterHandle,
    serving: Arc<AtomicBool>,
    stopping: watch::Receiver<bool>,
}

impl Readiness {
    pub fn new(
        cluster: ClusterHandle,
        serving: Arc<AtomicBool>,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        Readiness {
            cluster,
            serving,
            stopping,
        }
    }

    /// Ready, or why not.
    pub async fn check(&self) -> Result<(), NotReady> {
        if *self.stopping.borrow() {
            return Err(NotReady::Stopping);
        }
        if !self.cluster.in_quorum_contact() {
            return Err(NotReady::NoLeader);
        }
        if !self
            .cluster
            .caught_up(FRESH_WITHIN, FRESH_SLACK, FRESH_WAIT)
            .await
        {
            return Err(NotReady::CatchingUp);
        }
        if !self.serving.load(Ordering::SeqCst) {
            return Err(NotReady::Starting);
        }
        Ok(())
    }
}
