//! The stanza mesh: live stanzas between nodes over gRPC (`mesh.proto`).
//!
//! Each node keeps one long-lived bidirectional `Link` stream to each peer
//! it sends to, opened on first use over the same HTTP/2 channel as raft
//! (so it is authenticated by the cluster secret). A bounded queue in front
//! of each link and HTTP/2 flow control behind it give backpressure. The
//! receiver acknowledges envelopes once handed to a session (or to the
//! fallback). For a message in custody (`router::custody`) that ack is the
//! peer's confirmation that it holds a copy; the peer writes the copy to
//! its session only once it knows the confirmation arrived: every envelope
//! carries the acks its sender has acted on (`acks_seen`, or a `SEEN`
//! envelope alone when nothing else goes). When a link breaks, copies in
//! custody are committed to their queue, and other envelopes not
//! acknowledged are routed again as if the peer's sessions did not exist.
//!
//! The mesh is transport: what arrives, and what becomes of what was sent,
//! goes to the node's [`Host`] (the router, attached at node wiring); the
//! payloads the router reads and writes are in [`wire`]. The mesh does not
//! import the router: the router sends through the mesh, never the other
//! way round.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use starling_proto::mesh::mesh_client::MeshClient;
use starling_proto::mesh::TakeoverRequest;
use starling_raft::network::{Peers, MAX_MESSAGE_BYTES};
use starling_raft::{ClusterHandle, NodeId};
use tokio::sync::{mpsc, OnceCell};
use tracing::{debug, Instrument};

mod host;
mod link;
mod service;
pub mod wire;

pub use host::Host;
pub use service::{serve_mesh, MeshService};
pub use wire::{Hint, Key, Notice, Tag};

use link::{fail_all, run_link};

use crate::xmpp::Element;

/// Stanzas queued for one peer before senders wait (backpressure).
const LINK_QUEUE: usize = 4096;
/// After a failed connect, stanzas for that peer go straight to the
/// fallback for this long before the next attempt.
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// A link with an envelope unacknowledged this long counts as down for
/// choosing custody keepers.
const SLOW: Duration = Duration::from_millis(300);

#[derive(Default)]
struct Health {
    /// The link failed; new work skips the peer until then.
    down_until: Option<Instant>,
    /// When the oldest unacknowledged envelope was sent.
    oldest_unacked: Option<Instant>,
}

/// How long opening a link may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(2);
/// Custody notices (`DONE`) wait this long for others to the same peer and
/// go as one envelope: a recipient that reads acknowledges message by
/// message, and a notice per message doubled the envelopes on the mesh.
/// Nothing waits for a notice but the other holders' memory.
const DONE_BATCH: Duration = Duration::from_millis(5);
/// ... unless this many keys are waiting.
const DONE_BATCH_KEYS: usize = 2048;
/// A `DONE` notice the peer has not acknowledged this long (a cut link
/// says nothing for seconds) has what it says was delivered removed
/// through raft (see [`Host::custody_undelivered_notice`]).
const DONE_UNACKED: Duration = Duration::from_millis(200);

enum Outgoing {
    Stanza {
        to: String,
        session: u64,
        el: Element,
    },
    /// A message in custody for session `session` of `to`, serialized
    /// once by the router (the same xml is its custody copy): the peer's
    /// ack confirms its copy.
    Custody {
        to: String,
        session: u64,
        tag: Tag,
        xml: String,
    },
    /// Custody: keep a copy of `xml`.
    Hold {
        tag: Tag,
        xml: String,
    },
    /// Custody: drop these copies (or write them: `safe`). Notices given
    /// to a link within [`DONE_BATCH`] of each other travel as one
    /// envelope; an urgent one (`safe`: a recipient waits) goes at once,
    /// with whatever waited in the batch.
    Done {
        notice: Notice,
        /// When it was first given to the link (for [`DEFERRED_AGE`]).
        since: Instant,
    },
    Kick {
        to: String,
        session: u64,
    },
    /// An address this node blocked (see `Kind::AuthBlock`).
    AuthBlock {
        key: std::net::IpAddr,
        secs: u64,
    },
    Hint {
        bare: String,
        acked: u64,
        json: String,
        /// Told when the peer acknowledged it (dropped if it never does).
        ack: Option<tokio::sync::oneshot::Sender<()>>,
    },
    /// Only `acks_seen`: the peer waits for it to write copies.
    Seen,
}

struct Inner {
    node: NodeId,
    peers: Peers,
    cluster: ClusterHandle,
    links: Mutex<HashMap<NodeId, mpsc::Sender<Outgoing>>>,
    /// How each peer's link is doing.
    health: Mutex<HashMap<NodeId, Health>>,
    /// Where what arrives goes, and what becomes of what was sent: set
    /// once the router exists. Weak: the router holds this handle, and
    /// the node (and each running link task) keeps the router alive.
    host: OnceCell<Weak<dyn Host>>,
}

/// Outbound links to peers, one task each.
#[derive(Clone)]
pub struct MeshLinks(Arc<Inner>);

/// A peer's answer to a takeover request.
#[derive(Debug, Default)]
pub struct TakeoverAnswer {
    /// The session's state as JSON, if the peer had it and handed it over.
    pub session: Option<String>,
    /// Else: the queued messages the peer's delivery hints say the client
    /// had (see `router::hints`).
    pub had: Vec<String>,
}

impl MeshLinks {
    pub fn new(cluster: ClusterHandle, peers: Peers) -> Self {
        MeshLinks(Arc::new(Inner {
            node: cluster.id(),
            peers,
            cluster,
            links: Mutex::new(HashMap::new()),
            health: Mutex::new(HashMap::new()),
            host: OnceCell::new(),
        }))
    }

    /// Attaches the node the mesh works for (once; later calls change
    /// nothing). Until then, and once the caller dropped every handle on
    /// it, nothing is sent.
    pub fn attach(&self, host: &Arc<dyn Host>) {
        let _ = self.0.host.set(Arc::downgrade(host));
    }

    /// The queue of the link to `node`, opened (its task started) if need
    /// be, with the host its task reports to; none without a host (see
    /// [`MeshLinks::attach`]).
    fn link(&self, node: NodeId) -> Option<(mpsc::Sender<Outgoing>, Arc<dyn Host>)> {
        let host = self.0.host.get()?.upgrade()?;
        let mut links = self.0.links.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = links.get(&node) {
            if !tx.is_closed() {
                return Some((tx.clone(), host));
            }
        }
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let span = tracing::info_span!("mesh_link", node_id = self.0.node, peer = node);
        tokio::spawn(run_link(self.clone(), host.clone(), node, rx).instrument(span));
        links.insert(node, tx.clone());
        Some((tx, host))
    }

    /// Queues a stanza for session `session` of `to` on `node`.
    pub async fn send_stanza(&self, node: NodeId, to: &str, session: u64, el: Element) {
        let item = Outgoing::Stanza {
            to: to.to_string(),
            session,
            el,
        };
        self.queue(node, item).await;
    }

    /// Queues a message in custody (`xml`, its standalone serialization)
    /// for session `session` of `to` on `node`.
    pub async fn send_custody(&self, node: NodeId, to: &str, session: u64, tag: Tag, xml: String) {
        let item = Outgoing::Custody {
            to: to.to_string(),
            session,
            tag,
            xml,
        };
        self.queue(node, item).await;
    }

    async fn queue(&self, node: NodeId, item: Outgoing) {
        let Some((tx, host)) = self.link(node) else {
            return;
        };
        if let Err(e) = tx.send(item).await {
            fail_all(host.as_ref(), node, [e.0]).await;
        }
    }

    /// Asks `node` to keep a copy of a message in custody.
    /// Never waits: a link too busy to take it makes the copy
    /// unconfirmed (the message goes to its queue instead).
    pub async fn send_hold(&self, node: NodeId, tag: Tag, xml: String) {
        let Some((tx, host)) = self.link(node) else {
            return;
        };
        if let Err(e) = tx.try_send(Outgoing::Hold { tag, xml }) {
            let item = match e {
                mpsc::error::TrySendError::Full(i) | mpsc::error::TrySendError::Closed(i) => i,
            };
            fail_all(host.as_ref(), node, [item]).await;
        }
    }

    /// Tells `node` that these custody copies are done. Never waits (a
    /// lost notice only costs the peer a commit and the client a copy).
    pub fn send_done(&self, node: NodeId, notice: Notice) {
        let Some((tx, _)) = self.link(node) else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(item)) = tx.try_send(Outgoing::Done {
            notice,
            since: Instant::now(),
        }) {
            tokio::spawn(async move {
                let _ = tx.send(item).await;
            });
        }
    }

    /// Whether the link to `node` failed lately, or has an envelope
    /// unacknowledged for longer than [`SLOW`] (a paused or cut-off peer):
    /// custody picks another keeper.
    pub fn is_down(&self, node: NodeId) -> bool {
        let health = self.0.health.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        health.get(&node).is_some_and(|h| {
            h.down_until.is_some_and(|t| now < t)
                || h.oldest_unacked
                    .is_some_and(|t| now.duration_since(t) > SLOW)
        })
    }

    /// Each peer's link for `/metrics`: `(peer, up, envelopes queued
    /// for it)`, over the voters and learners of the membership.
    pub fn link_report(&self) -> Vec<(NodeId, bool, usize)> {
        let m = self.0.cluster.raft().metrics().borrow().clone();
        let peers: Vec<NodeId> = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .filter(|id| *id != self.0.node)
            .collect();
        let queued: Vec<usize> = {
            let links = self.0.links.lock().unwrap_or_else(|p| p.into_inner());
            peers
                .iter()
                .map(|p| {
                    links
                        .get(p)
                        .map_or(0, |tx| tx.max_capacity() - tx.capacity())
                })
                .collect()
        };
        peers
            .into_iter()
            .zip(queued)
            .map(|(p, q)| (p, !self.is_down(p), q))
            .collect()
    }

    fn set_down(&self, node: NodeId, until: Option<Instant>) {
        let mut health = self.0.health.lock().unwrap_or_else(|p| p.into_inner());
        let h = health.entry(node).or_default();
        h.down_until = until;
        if until.is_some() {
            h.oldest_unacked = None;
        }
    }

    fn set_oldest(&self, node: NodeId, at: Option<Instant>) {
        let mut health = self.0.health.lock().unwrap_or_else(|p| p.into_inner());
        health.entry(node).or_default().oldest_unacked = at;
    }

    /// Gives `node` a delivery hint; dropped if its link is busy (a hint
    /// only saves a duplicate).
    /// Queues a delivery hint for `node`; `ack` is told when the peer
    /// acknowledged it (dropped if it never does).
    pub fn send_hint(&self, node: NodeId, hint: &Hint, ack: tokio::sync::oneshot::Sender<()>) {
        let Ok(json) = serde_json::to_string(hint) else {
            return;
        };
        let Some((tx, _)) = self.link(node) else {
            return;
        };
        let _ = tx.try_send(Outgoing::Hint {
            bare: hint.bare.clone(),
            acked: u64::from(hint.acked),
            json,
            ack: Some(ack),
        });
    }

    /// Asks `node` to hand over its resumable session `previd` of `bare`
    /// (see `router::takeover`), which may take the peer up to `handoff`.
    /// `None` if the peer did not answer (in time).
    pub async fn request_takeover(
        &self,
        node: NodeId,
        bare: &str,
        previd: &str,
        h: u32,
        handoff: Duration,
    ) -> Option<TakeoverAnswer> {
        let addr = self.0.cluster.member_node(node)?.raft_addr;
        let channel = self.0.peers.channel(&addr).ok()?;
        let mut client = MeshClient::with_interceptor(channel, self.0.peers.add_secret())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let req = TakeoverRequest {
            bare: bare.to_string(),
            previd: previd.to_string(),
            h,
        };
        let limit = handoff + Duration::from_millis(500);
        match tokio::time::timeout(limit, client.takeover(req)).await {
            Ok(Ok(reply)) => {
                let r = reply.into_inner();
                Some(TakeoverAnswer {
                    session: r.found.then_some(r.session),
                    had: r.had,
                })
            }
            Ok(Err(e)) => {
                debug!(peer = node, error = %e, "takeover request failed");
                None
            }
            Err(_) => {
                debug!(peer = node, "takeover request timed out");
                None
            }
        }
    }

    /// Tells every other member that this node blocked address `key` for
    /// `duration` (best effort: a full or broken link drops it; blocks are
    /// soft state, and a peer that misses one still counts failures
    /// itself).
    pub fn broadcast_auth_block(&self, key: std::net::IpAddr, duration: Duration) {
        for node in self.0.cluster.voter_ids() {
            if node == self.0.node {
                continue;
            }
            if let Some((tx, _)) = self.link(node) {
                let _ = tx.try_send(Outgoing::AuthBlock {
                    key,
                    secs: duration.as_secs(),
                });
            }
        }
    }

    /// Asks `node` to end session `session` of `to` with `conflict`.
    pub async fn send_kick(&self, node: NodeId, to: &str, session: u64) {
        let Some((tx, _)) = self.link(node) else {
            return;
        };
        let _ = tx
            .send(Outgoing::Kick {
                to: to.to_string(),
                session,
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    /// Dependencies point one way: the router sends through the mesh, and
    /// the mesh reaches the router only through [`super::Host`].
    #[test]
    fn the_mesh_does_not_import_the_router() {
        let needle = concat!("crate::", "router");
        for (file, text) in [
            ("mod.rs", include_str!("mod.rs")),
            ("host.rs", include_str!("host.rs")),
            ("link.rs", include_str!("link.rs")),
            ("service.rs", include_str!("service.rs")),
            ("wire.rs", include_str!("wire.rs")),
        ] {
            assert!(!text.contains(needle), "src/mesh/{file} names {needle}");
        }
    }
}
