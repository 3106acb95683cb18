//! The contact gate: before a session writes messages from its (local,
//! possibly stale) copy of the replicated queue, this node confirms it is
//! in touch with a leader that has a quorum *now*, by a raft read index
//! (`ClusterHandle::confirm_contact`).
//!
//! Why: a node cut off from the majority cannot commit the removal of what
//! its client acknowledges, so the client gets those messages again at its
//! next session on another node. The cheap check (an append or a quorum
//! ack within ten heartbeats) is blind for up to 500 ms after a cut; most
//! of jepsen-lite's partition copies were queued messages written within
//! 40 ms of one. A confirmation costs a round of heartbeats (one round trip
//! to the leader from a follower), and is shared: one is in flight at a
//! time for the whole node, and every session that waits for one started
//! after its own request is woken by it. Pulls are not on the live path.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use starling_raft::cluster::ClusterHandle;
use tokio::sync::watch;

/// How long a confirmation may take before it counts as failed (the
/// session tries again at its next tick).
const CONFIRM_LIMIT: Duration = Duration::from_secs(1);

/// Cloneable handle on the node's gate.
#[derive(Clone)]
pub struct ContactGate(Arc<Inner>);

struct Inner {
    cluster: ClusterHandle,
    state: Mutex<State>,
    /// Bumped after every successful confirmation.
    confirmed: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    in_flight: bool,
    /// When the last successful confirmation was *started* (contact was
    /// proven at some moment after it).
    confirmed_from: Option<Instant>,
}

impl ContactGate {
    pub fn new(cluster: ClusterHandle) -> ContactGate {
        ContactGate(Arc::new(Inner {
            cluster,
            state: Mutex::new(State::default()),
            confirmed: watch::channel(0).0,
        }))
    }

    /// Whether a confirmation that started at or after `since` succeeded.
    /// If not, one is started (unless one is in flight); subscribers are
    /// woken when it succeeds.
    pub fn confirmed_since(&self, since: Instant) -> bool {
        let mut st = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.confirmed_from.is_some_and(|t| t >= since) {
            return true;
        }
        if !st.in_flight {
            st.in_flight = true;
            let inner = self.0.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let ok = inner.cluster.confirm_contact(CONFIRM_LIMIT).await;
                {
                    let mut st = inner.state.lock().unwrap_or_else(|p| p.into_inner());
                    st.in_flight = false;
                    if ok {
                        st.confirmed_from = Some(started);
                    }
                }
                if ok {
                    inner.confirmed.send_modify(|n| *n = n.wrapping_add(1));
                } else {
                    tracing::debug!("not in contact with a quorum: queued messages wait");
                }
            });
        }
        false
    }

    /// Woken after each successful confirmation.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.confirmed.subscribe()
    }
}
