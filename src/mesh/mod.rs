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
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use starling_proto::mesh::mesh_client::MeshClient;
use starling_proto::mesh::mesh_server::{Mesh, MeshServer};
use starling_proto::mesh::{Ack, Envelope, Kind, TakeoverReply, TakeoverRequest};
use starling_raft::network::{CheckSecret, Peers, MAX_MESSAGE_BYTES};
use starling_raft::{ClusterHandle, NodeId};
use tokio::sync::{mpsc, OnceCell};
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn, Instrument};

use crate::router::custody::Key;
use crate::router::Notice;
use crate::router::Router;
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
/// through raft (see `Router::custody_undelivered_notice`).
const DONE_UNACKED: Duration = Duration::from_millis(200);

/// A stanza's place in custody (`router::custody`): its key and every
/// node holding a copy.
#[derive(Debug, Clone)]
pub struct Tag {
    pub key: Key,
    pub holders: Vec<NodeId>,
    /// The receiver's confirmation alone makes the copy safe: it writes
    /// the copy once this node has its ack (`acks_seen`), no `safe`
    /// notice needed.
    pub safe_on_ack: bool,
}

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
    /// Set once the router exists (the router holds this handle).
    router: OnceCell<Router>,
}

/// Outbound links to peers, one task each.
#[derive(Clone)]
pub struct MeshLinks(Arc<Inner>);

impl MeshLinks {
    pub fn new(cluster: ClusterHandle, peers: Peers) -> Self {
        MeshLinks(Arc::new(Inner {
            node: cluster.id(),
            peers,
            cluster,
            links: Mutex::new(HashMap::new()),
            health: Mutex::new(HashMap::new()),
            router: OnceCell::new(),
        }))
    }

    fn link(&self, router: &Router, node: NodeId) -> mpsc::Sender<Outgoing> {
        let _ = self.0.router.set(router.clone());
        let mut links = self.0.links.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = links.get(&node) {
            if !tx.is_closed() {
                return tx.clone();
            }
        }
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let span = tracing::info_span!("mesh_link", node_id = self.0.node, peer = node);
        tokio::spawn(run_link(self.clone(), router.clone(), node, rx).instrument(span));
        links.insert(node, tx.clone());
        tx
    }

    /// Queues a stanza for session `session` of `to` on `node`.
    pub async fn send_stanza(
        &self,
        router: Router,
        node: NodeId,
        to: &str,
        session: u64,
        el: Element,
    ) {
        let item = Outgoing::Stanza {
            to: to.to_string(),
            session,
            el,
        };
        self.queue(router, node, item).await;
    }

    /// Queues a message in custody (`xml`, its standalone serialization)
    /// for session `session` of `to` on `node`.
    pub async fn send_custody(
        &self,
        router: Router,
        node: NodeId,
        to: &str,
        session: u64,
        tag: Tag,
        xml: String,
    ) {
        let item = Outgoing::Custody {
            to: to.to_string(),
            session,
            tag,
            xml,
        };
        self.queue(router, node, item).await;
    }

    async fn queue(&self, router: Router, node: NodeId, item: Outgoing) {
        let tx = self.link(&router, node);
        if let Err(e) = tx.send(item).await {
            fail_all(&router, node, [e.0]).await;
        }
    }

    /// Asks `node` to keep a copy of a message in custody.
    /// Never waits: a link too busy to take it makes the copy
    /// unconfirmed (the message goes to its queue instead).
    pub async fn send_hold(&self, router: Router, node: NodeId, tag: Tag, xml: String) {
        let tx = self.link(&router, node);
        if let Err(e) = tx.try_send(Outgoing::Hold { tag, xml }) {
            let item = match e {
                mpsc::error::TrySendError::Full(i) | mpsc::error::TrySendError::Closed(i) => i,
            };
            fail_all(&router, node, [item]).await;
        }
    }

    /// Tells `node` that these custody copies are done. Never waits (a
    /// lost notice only costs the peer a commit and the client a copy).
    pub fn send_done(&self, router: &Router, node: NodeId, notice: Notice) {
        let tx = self.link(router, node);
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
    pub fn send_hint(
        &self,
        router: &Router,
        node: NodeId,
        hint: &crate::router::hints::Hint,
        ack: tokio::sync::oneshot::Sender<()>,
    ) {
        let Ok(json) = serde_json::to_string(hint) else {
            return;
        };
        let tx = self.link(router, node);
        let _ = tx.try_send(Outgoing::Hint {
            bare: hint.bare.clone(),
            acked: u64::from(hint.acked),
            json,
            ack: Some(ack),
        });
    }

    /// Asks `node` to hand over its resumable session `previd` of `bare`
    /// (see `router::takeover`): its state as JSON, or `None` (not there,
    /// could not, or the peer did not answer in time).
    pub async fn request_takeover(
        &self,
        node: NodeId,
        bare: &str,
        previd: &str,
        h: u32,
    ) -> Option<String> {
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
        let limit = crate::router::takeover::HANDOFF_LIMIT + Duration::from_millis(500);
        match tokio::time::timeout(limit, client.takeover(req)).await {
            Ok(Ok(reply)) => {
                let r = reply.into_inner();
                r.found.then_some(r.session)
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

    /// Asks `node` to end session `session` of `to` with `conflict`.
    pub async fn send_kick(&self, node: NodeId, to: &str, session: u64) {
        let Some(router) = self.0.router.get().cloned() else {
            return;
        };
        let tx = self.link(&router, node);
        let _ = tx
            .send(Outgoing::Kick {
                to: to.to_string(),
                session,
            })
            .await;
    }
}

/// Hands the stanzas of `items` to the fallback (the peer is unreachable):
/// a copy in custody is committed to its queue, another stanza is routed
/// again without the peer's sessions.
async fn fail_all(router: &Router, node: NodeId, items: impl IntoIterator<Item = Outgoing>) {
    let mut unconfirmed = Vec::new();
    for item in items {
        match item {
            Outgoing::Custody { tag: t, .. } | Outgoing::Hold { tag: t, .. } => {
                unconfirmed.push(t.key)
            }
            Outgoing::Stanza { el, .. } => router.undeliverable(el, node).await,
            _ => {}
        }
    }
    if !unconfirmed.is_empty() {
        router.custody_unconfirmed(unconfirmed, node);
    }
}

/// The custody keys among acknowledged items.
fn confirmed_keys(items: impl Iterator<Item = Outgoing>) -> Vec<Key> {
    items
        .filter_map(|i| match i {
            Outgoing::Custody { tag: t, .. } | Outgoing::Hold { tag: t, .. } => Some(t.key),
            _ => None,
        })
        .collect()
}

/// Custody notices (`DONE`) a peer could not be sent, kept for when it is
/// back: a lost "delivered" makes the peer commit its copy after its
/// timeout and the client get the message twice. Bounded in count and age.
#[derive(Default)]
struct Deferred(VecDeque<Outgoing>);

/// Most deferred notices per peer, and how long one is kept.
const DEFERRED_MAX: usize = 1024;
const DEFERRED_AGE: Duration = Duration::from_secs(60);

impl Deferred {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn pop(&mut self) -> Option<Outgoing> {
        self.0.pop_front()
    }

    /// Puts back a notice just taken out (the peer is still down), unless
    /// it is too old to matter.
    fn keep(&mut self, item: Outgoing) {
        if matches!(&item, Outgoing::Done { since, .. } if since.elapsed() < DEFERRED_AGE) {
            self.0.push_front(item);
        }
    }

    /// As [`fail_all`], keeping the notices (what they say was delivered
    /// is removed through raft now: see `custody_undelivered_notice`).
    async fn fail(
        &mut self,
        router: &Router,
        node: NodeId,
        items: impl IntoIterator<Item = Outgoing>,
    ) {
        let mut rest = Vec::new();
        for item in items {
            if let Outgoing::Done { notice, .. } = &item {
                router.custody_undelivered_notice(notice);
            }
            match item {
                Outgoing::Done { since, .. } if since.elapsed() < DEFERRED_AGE => {
                    if self.0.len() >= DEFERRED_MAX {
                        self.0.pop_front();
                    }
                    self.0.push_back(item);
                }
                other => rest.push(other),
            }
        }
        fail_all(router, node, rest).await;
    }
}

async fn run_link(mesh: MeshLinks, router: Router, node: NodeId, mut rx: mpsc::Receiver<Outgoing>) {
    let mut down_until: Option<Instant> = None;
    // Custody notices the peer could not take yet: sent when it is back.
    let mut deferred = Deferred::default();
    loop {
        // Wait for work before (re)connecting; retry deferred notices.
        let mut retry = false;
        let first = if deferred.is_empty() {
            rx.recv().await
        } else {
            match tokio::time::timeout(RETRY_AFTER, rx.recv()).await {
                Ok(item) => item,
                Err(_) => {
                    retry = true;
                    deferred.pop()
                }
            }
        };
        let Some(first) = first else {
            return;
        };
        mesh.set_down(node, down_until);
        if down_until.is_some_and(|t| Instant::now() < t) {
            if retry {
                deferred.keep(first);
            } else {
                deferred.fail(&router, node, [first]).await;
            }
            continue;
        }
        let addr = match mesh.0.cluster.member_node(node) {
            Some(n) => n.raft_addr,
            None => {
                // Not a member (any more): nothing to keep for it.
                fail_all(&router, node, [first]).await;
                continue;
            }
        };
        let channel = match mesh.0.peers.channel(&addr) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "bad peer address");
                fail_all(&router, node, [first]).await;
                continue;
            }
        };
        let mut client = MeshClient::with_interceptor(channel, mesh.0.peers.add_secret())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let (out_tx, out_rx) = mpsc::channel::<Envelope>(1024);
        let mut unacked: VecDeque<(u64, Instant, Outgoing)> = VecDeque::new();
        let mut seq = 0u64;
        // The peer's acks received and acted on (every envelope says so).
        let mut acks_seen = 0u64;
        let mut push =
            |item: Outgoing, unacked: &mut VecDeque<(u64, Instant, Outgoing)>, acks_seen: u64| {
                seq += 1;
                let applied = mesh.0.cluster.applied_index();
                let mut env = envelope(seq, mesh.0.node, applied, &item);
                env.acks_seen = acks_seen;
                if unacked.is_empty() {
                    mesh.set_oldest(node, Some(Instant::now()));
                }
                unacked.push_back((seq, Instant::now(), item));
                env
            };
        let env = push(first, &mut unacked, acks_seen);
        if out_tx.send(env).await.is_err() {
            deferred
                .fail(&router, node, unacked.into_iter().map(|(_, _, i)| i))
                .await;
            continue;
        }
        let opened =
            tokio::time::timeout(OPEN_TIMEOUT, client.link(ReceiverStream::new(out_rx))).await;
        let mut acks = match opened {
            Ok(Ok(resp)) => resp.into_inner(),
            Ok(Err(e)) => {
                debug!(error = %e, "mesh link refused");
                down_until = Some(Instant::now() + RETRY_AFTER);
                deferred
                    .fail(&router, node, unacked.into_iter().map(|(_, _, i)| i))
                    .await;
                continue;
            }
            Err(_) => {
                debug!("mesh link open timed out");
                down_until = Some(Instant::now() + RETRY_AFTER);
                deferred
                    .fail(&router, node, unacked.into_iter().map(|(_, _, i)| i))
                    .await;
                continue;
            }
        };
        info!("mesh link up");
        let mut flushed = true;
        while let Some(item) = deferred.pop() {
            let env = push(item, &mut unacked, acks_seen);
            if out_tx.send(env).await.is_err() {
                flushed = false;
                break;
            }
        }
        if !flushed {
            down_until = Some(Instant::now() + RETRY_AFTER);
            deferred
                .fail(&router, node, unacked.into_iter().map(|(_, _, i)| i))
                .await;
            continue;
        }
        // Notices waiting for [`DONE_BATCH`] to pass.
        let mut batch: Option<(Notice, Instant)> = None;
        // The peer waits for `acks_seen` and the next envelope is to carry it.
        let mut seen_owed = false;
        // Unacknowledged notices up to this seq were handed to raft.
        let mut tombstoned_up_to = 0u64;
        let mut check = tokio::time::interval(DONE_UNACKED / 2);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let flush_at = tokio::time::sleep(DONE_BATCH);
        tokio::pin!(flush_at);
        loop {
            tokio::select! {
                item = rx.recv() => {
                    let Some(item) = item else { return };
                    let item = match item {
                        Outgoing::Done { notice, since } => {
                            let urgent = notice.is_urgent();
                            let (b, _) = batch.get_or_insert_with(|| {
                                flush_at.as_mut().reset((Instant::now() + DONE_BATCH).into());
                                (Notice::default(), since)
                            });
                            b.merge(notice);
                            if !urgent && b.len() < DONE_BATCH_KEYS {
                                if seen_owed {
                                    seen_owed = false;
                                    let env = push(Outgoing::Seen, &mut unacked, acks_seen);
                                    if out_tx.send(env).await.is_err() {
                                        break;
                                    }
                                }
                                continue;
                            }
                            let Some((notice, since)) = batch.take() else { continue };
                            Outgoing::Done { notice, since }
                        }
                        other => other,
                    };
                    seen_owed = false;
                    let env = push(item, &mut unacked, acks_seen);
                    if out_tx.send(env).await.is_err() {
                        break;
                    }
                }
                _ = check.tick(), if !unacked.is_empty() => {
                    for (s, at, item) in unacked.iter() {
                        if at.elapsed() < DONE_UNACKED {
                            break;
                        }
                        if *s > tombstoned_up_to {
                            tombstoned_up_to = *s;
                            if let Outgoing::Done { notice, .. } = item {
                                router.custody_undelivered_notice(notice);
                            }
                        }
                    }
                }
                _ = &mut flush_at, if batch.is_some() => {
                    let Some((notice, since)) = batch.take() else { continue };
                    seen_owed = false;
                    let env = push(Outgoing::Done { notice, since }, &mut unacked, acks_seen);
                    if out_tx.send(env).await.is_err() {
                        break;
                    }
                }
                ack = acks.message() => match ack {
                    Ok(Some(Ack { up_to })) => {
                        let n = unacked.iter().take_while(|(s, _, _)| *s <= up_to).count();
                        let acked: Vec<Outgoing> = unacked.drain(..n).map(|(_, _, i)| i).collect();
                        let waits = acked.iter().any(|i| {
                            matches!(i, Outgoing::Custody { tag, .. } if tag.safe_on_ack)
                        });
                        let keys = confirmed_keys(acked.into_iter().filter_map(|i| match i {
                            Outgoing::Hint { ack: Some(tx), .. } => {
                                let _ = tx.send(());
                                None
                            }
                            other => Some(other),
                        }));
                        mesh.set_oldest(node, unacked.front().map(|u| u.1));
                        let late = if keys.is_empty() {
                            Vec::new()
                        } else {
                            router.custody_confirmed(keys, node)
                        };
                        if !late.is_empty() {
                            // Before `acks_seen` says they arrived: the
                            // peer must not write these on it.
                            let notice = Notice { late, ..Notice::default() };
                            let item = Outgoing::Done { notice, since: Instant::now() };
                            let env = push(item, &mut unacked, acks_seen);
                            if out_tx.send(env).await.is_err() {
                                break;
                            }
                        }
                        // Acted on: every later envelope says so. When the
                        // peer waits for it to write copies, the next item
                        // carries it, or one that says only that goes now
                        // (nothing queued, or a notice that waits for its
                        // batch).
                        acks_seen = acks_seen.max(up_to);
                        if waits && !rx.is_empty() {
                            seen_owed = true;
                        } else if waits {
                            seen_owed = false;
                            let env = push(Outgoing::Seen, &mut unacked, acks_seen);
                            if out_tx.send(env).await.is_err() {
                                break;
                            }
                        }
                    }
                    Ok(None) | Err(_) => break,
                },
            }
        }
        warn!(unacked = unacked.len(), "mesh link down");
        down_until = Some(Instant::now() + RETRY_AFTER);
        mesh.set_down(node, down_until);
        let batched = batch.map(|(notice, since)| Outgoing::Done { notice, since });
        deferred
            .fail(
                &router,
                node,
                unacked.into_iter().map(|(_, _, i)| i).chain(batched),
            )
            .await;
        // What the peer confirmed earlier may have died with it.
        router.custody_peer_down(node);
    }
}

fn envelope(seq: u64, from_node: NodeId, applied_index: u64, item: &Outgoing) -> Envelope {
    let none = (Vec::new(), String::new());
    let (kind, to, session, xml, (holders, queue_id)) = match item {
        Outgoing::Stanza { to, session, el } => (
            Kind::Stanza,
            to.clone(),
            *session,
            el.to_standalone_xml(),
            none,
        ),
        Outgoing::Custody {
            to,
            session,
            tag,
            xml,
        } => (
            Kind::Stanza,
            to.clone(),
            *session,
            xml.clone(),
            (tag.holders.clone(), tag.key.1.clone()),
        ),
        Outgoing::Hold { tag, xml } => (
            Kind::Hold,
            tag.key.0.clone(),
            0,
            xml.clone(),
            (tag.holders.clone(), tag.key.1.clone()),
        ),
        Outgoing::Done { notice, .. } => (
            Kind::Done,
            String::new(),
            0,
            serde_json::to_string(notice).unwrap_or_default(),
            none,
        ),
        Outgoing::Hint {
            bare, acked, json, ..
        } => (Kind::Hint, bare.clone(), *acked, json.clone(), none),
        Outgoing::Kick { to, session } => (Kind::Kick, to.clone(), *session, String::new(), none),
        Outgoing::Seen => (Kind::Seen, String::new(), 0, String::new(), none),
    };
    let safe_on_ack = matches!(item, Outgoing::Custody { tag, .. } if tag.safe_on_ack);
    Envelope {
        seq,
        kind: kind as i32,
        to,
        session,
        xml,
        from_node,
        applied_index,
        holders,
        queue_id,
        acks_seen: 0,
        safe_on_ack,
    }
}

/// The receiving side of links.
pub struct MeshService {
    router: Router,
}

type AckStream = Pin<Box<dyn Stream<Item = Result<Ack, Status>> + Send>>;

#[tonic::async_trait]
impl Mesh for MeshService {
    type LinkStream = AckStream;

    async fn link(
        &self,
        request: Request<Streaming<Envelope>>,
    ) -> Result<Response<Self::LinkStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let router = self.router.clone();
        let span = tracing::info_span!("mesh_in", node_id = router.node());
        tokio::spawn(receive(router, inbound, tx).instrument(span));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn takeover(
        &self,
        request: Request<TakeoverRequest>,
    ) -> Result<Response<TakeoverReply>, Status> {
        let r = request.into_inner();
        let state = self.router.takeovers().take(&r.bare, &r.previd, r.h).await;
        Ok(Response::new(TakeoverReply {
            found: state.is_some(),
            session: state.unwrap_or_default(),
        }))
    }
}

async fn receive(
    router: Router,
    inbound: Streaming<Envelope>,
    acks: mpsc::Sender<Result<Ack, Status>>,
) {
    // Envelopes that are already here are handled as one batch and
    // acknowledged once.
    let mut batches = inbound.ready_chunks(256);
    // Copies kept back until the sender has our ack of them (`safe_on_ack`).
    let mut waiting: VecDeque<(u64, Key)> = VecDeque::new();
    while let Some(batch) = batches.next().await {
        let mut up_to = None;
        for env in batch {
            let env = match env {
                Ok(e) => e,
                Err(e) => {
                    debug!(error = %e, "mesh link closed by peer");
                    return;
                }
            };
            up_to = Some(env.seq);
            if waiting.front().is_some_and(|(s, _)| *s <= env.acks_seen) {
                let n = waiting
                    .iter()
                    .take_while(|(s, _)| *s <= env.acks_seen)
                    .count();
                let safe = waiting.drain(..n).map(|(_, k)| k).collect();
                router.custody_notice(Notice {
                    safe,
                    ..Notice::default()
                });
            }
            let kind = Kind::try_from(env.kind);
            if matches!(kind, Ok(Kind::Stanza | Kind::Kick)) {
                catch_up(&router, env.applied_index).await;
            }
            match kind {
                Ok(Kind::Stanza) => match crate::xmpp::parse_stanza(&env.xml) {
                    Ok(el) => {
                        if env.holders.is_empty() || env.queue_id.is_empty() {
                            router.from_mesh(&env.to, env.session, el).await
                        } else {
                            // Held before it is acknowledged (the ack is
                            // the sender's confirmation of this copy), and
                            // written once the sender's node says it is
                            // safe (`router::custody`).
                            if env.safe_on_ack {
                                let bare = crate::xmpp::jid::bare_of(&env.to).to_string();
                                waiting.push_back((env.seq, (bare, env.queue_id.clone())));
                            }
                            router.custody_arrived(
                                &env.to,
                                env.session,
                                el,
                                &env.queue_id,
                                env.xml,
                                &env.holders,
                            );
                        }
                    }
                    Err(e) => warn!(error = %e, from = env.from_node, "unparseable stanza on mesh"),
                },
                Ok(Kind::Hold) => {
                    router.custody_hold(&env.to, &env.queue_id, env.xml, &env.holders, false)
                }
                Ok(Kind::Done) => match serde_json::from_str::<Notice>(&env.xml) {
                    Ok(notice) => {
                        if !notice.late.is_empty() {
                            waiting.retain(|(_, k)| !notice.late.contains(k));
                        }
                        router.custody_notice(notice)
                    }
                    Err(e) => warn!(error = %e, "unreadable custody notice"),
                },
                Ok(Kind::Kick) => router.kick_local(&env.to, env.session).await,
                Ok(Kind::Hint) => match serde_json::from_str(&env.xml) {
                    Ok(h) => router.hints().record(h),
                    Err(e) => warn!(error = %e, "unreadable delivery hint"),
                },
                Ok(Kind::Seen) => {}
                Err(_) => warn!(kind = env.kind, "unknown mesh envelope kind"),
            }
        }
        if let Some(up_to) = up_to {
            if acks.send(Ok(Ack { up_to })).await.is_err() {
                return;
            }
        }
    }
}

/// Waits (briefly) until this node has applied `index`: what the sender
/// knew when it sent the stanza is known here before it is delivered.
async fn catch_up(router: &Router, index: u64) {
    let cluster = router.cluster();
    let here = cluster.applied_index();
    if here >= index {
        return;
    }
    let r = cluster
        .raft()
        .wait(Some(CATCH_UP))
        .applied_index_at_least(Some(index), "mesh causal order")
        .await;
    if r.is_err() {
        debug!(index, here, "delivering before catching up with the sender");
    }
}

/// Longest a stanza waits for its causal predecessors to apply here.
const CATCH_UP: Duration = Duration::from_secs(2);

/// The mesh service for the raft port's gRPC server (cluster secret checked).
pub fn serve_mesh(
    router: Router,
    secret: &str,
) -> InterceptedService<MeshServer<MeshService>, CheckSecret> {
    let svc = MeshServer::new(MeshService { router })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    InterceptedService::new(svc, CheckSecret::new(secret))
}
