//! The stanza mesh: live stanzas between nodes over gRPC (`mesh.proto`).
//!
//! Each node keeps one long-lived bidirectional `Link` stream to each peer
//! it sends to, opened on first use over the same HTTP/2 channel as raft
//! (so it is authenticated by the cluster secret). A bounded queue in front
//! of each link and HTTP/2 flow control behind it give backpressure. The
//! receiver acknowledges envelopes once handed to a session (or to the
//! fallback); envelopes not acknowledged when a link breaks are routed
//! again as if the peer's sessions did not exist — messages end in the
//! offline queue instead of being lost.
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use starling_proto::mesh::mesh_client::MeshClient;
use starling_proto::mesh::mesh_server::{Mesh, MeshServer};
use starling_proto::mesh::{Ack, Envelope, Kind};
use starling_raft::network::{CheckSecret, Peers, MAX_MESSAGE_BYTES};
use starling_raft::{ClusterHandle, NodeId};
use tokio::sync::{mpsc, OnceCell};
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn, Instrument};

use crate::router::Router;
use crate::xmpp::Element;

/// Stanzas queued for one peer before senders wait (backpressure).
const LINK_QUEUE: usize = 4096;
/// After a failed connect, stanzas for that peer go straight to the
/// fallback for this long before the next attempt.
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// How long opening a link may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(2);

enum Outgoing {
    Stanza {
        to: String,
        session: u64,
        el: Element,
    },
    Kick {
        to: String,
        session: u64,
    },
    Hint {
        bare: String,
        acked: u64,
        json: String,
    },
}

struct Inner {
    node: NodeId,
    peers: Peers,
    cluster: ClusterHandle,
    links: Mutex<HashMap<NodeId, mpsc::Sender<Outgoing>>>,
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
        let tx = self.link(&router, node);
        let item = Outgoing::Stanza {
            to: to.to_string(),
            session,
            el,
        };
        if let Err(e) = tx.send(item).await {
            if let Outgoing::Stanza { el, .. } = e.0 {
                router.undeliverable(el, node).await;
            }
        }
    }

    /// Gives `node` a delivery hint; dropped if its link is busy (a hint
    /// only saves a duplicate).
    pub fn send_hint(&self, router: &Router, node: NodeId, hint: &crate::router::hints::Hint) {
        let Ok(json) = serde_json::to_string(hint) else {
            return;
        };
        let tx = self.link(router, node);
        let _ = tx.try_send(Outgoing::Hint {
            bare: hint.bare.clone(),
            acked: u64::from(hint.acked),
            json,
        });
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

/// Hands the stanzas of `items` to the fallback (the peer is unreachable).
async fn fail_all(router: &Router, node: NodeId, items: impl IntoIterator<Item = Outgoing>) {
    for item in items {
        if let Outgoing::Stanza { el, .. } = item {
            router.undeliverable(el, node).await;
        }
    }
}

async fn run_link(mesh: MeshLinks, router: Router, node: NodeId, mut rx: mpsc::Receiver<Outgoing>) {
    let mut down_until: Option<Instant> = None;
    loop {
        // Wait for work before (re)connecting.
        let Some(first) = rx.recv().await else {
            return;
        };
        if down_until.is_some_and(|t| Instant::now() < t) {
            fail_all(&router, node, [first]).await;
            continue;
        }
        let addr = match mesh.0.cluster.member_node(node) {
            Some(n) => n.raft_addr,
            None => {
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
        let mut unacked: VecDeque<(u64, Outgoing)> = VecDeque::new();
        let mut seq = 0u64;
        let mut push = |item: Outgoing, unacked: &mut VecDeque<(u64, Outgoing)>| {
            seq += 1;
            let applied = mesh.0.cluster.applied_index();
            let env = envelope(seq, mesh.0.node, applied, &item);
            unacked.push_back((seq, item));
            env
        };
        let env = push(first, &mut unacked);
        if out_tx.send(env).await.is_err() {
            fail_all(&router, node, unacked.into_iter().map(|(_, i)| i)).await;
            continue;
        }
        let opened =
            tokio::time::timeout(OPEN_TIMEOUT, client.link(ReceiverStream::new(out_rx))).await;
        let mut acks = match opened {
            Ok(Ok(resp)) => resp.into_inner(),
            Ok(Err(e)) => {
                debug!(error = %e, "mesh link refused");
                down_until = Some(Instant::now() + RETRY_AFTER);
                fail_all(&router, node, unacked.into_iter().map(|(_, i)| i)).await;
                continue;
            }
            Err(_) => {
                debug!("mesh link open timed out");
                down_until = Some(Instant::now() + RETRY_AFTER);
                fail_all(&router, node, unacked.into_iter().map(|(_, i)| i)).await;
                continue;
            }
        };
        info!("mesh link up");
        loop {
            tokio::select! {
                item = rx.recv() => {
                    let Some(item) = item else { return };
                    let env = push(item, &mut unacked);
                    if out_tx.send(env).await.is_err() {
                        break;
                    }
                }
                ack = acks.message() => match ack {
                    Ok(Some(Ack { up_to })) => {
                        while unacked.front().is_some_and(|(s, _)| *s <= up_to) {
                            unacked.pop_front();
                        }
                    }
                    Ok(None) | Err(_) => break,
                },
            }
        }
        warn!(unacked = unacked.len(), "mesh link down");
        down_until = Some(Instant::now() + RETRY_AFTER);
        fail_all(&router, node, unacked.into_iter().map(|(_, i)| i)).await;
    }
}

fn envelope(seq: u64, from_node: NodeId, applied_index: u64, item: &Outgoing) -> Envelope {
    let (kind, to, session, xml) = match item {
        Outgoing::Stanza { to, session, el } => {
            (Kind::Stanza, to.clone(), *session, el.to_standalone_xml())
        }
        Outgoing::Hint { bare, acked, json } => (Kind::Hint, bare.clone(), *acked, json.clone()),
        Outgoing::Kick { to, session } => (Kind::Kick, to.clone(), *session, String::new()),
    };
    Envelope {
        seq,
        kind: kind as i32,
        to,
        session,
        xml,
        from_node,
        applied_index,
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
}

async fn receive(
    router: Router,
    inbound: Streaming<Envelope>,
    acks: mpsc::Sender<Result<Ack, Status>>,
) {
    // Envelopes that are already here are handled as one batch and
    // acknowledged once.
    let mut batches = inbound.ready_chunks(256);
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
            if env.kind != Kind::Hint as i32 {
                catch_up(&router, env.applied_index).await;
            }
            match Kind::try_from(env.kind) {
                Ok(Kind::Stanza) => match crate::xmpp::parse_stanza(&env.xml) {
                    Ok(el) => router.from_mesh(&env.to, env.session, el).await,
                    Err(e) => warn!(error = %e, from = env.from_node, "unparseable stanza on mesh"),
                },
                Ok(Kind::Kick) => router.kick_local(&env.to, env.session).await,
                Ok(Kind::Hint) => match serde_json::from_str(&env.xml) {
                    Ok(h) => router.hints().record(h),
                    Err(e) => warn!(error = %e, "unreadable delivery hint"),
                },
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
