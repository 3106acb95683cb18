//! The receiving side of links (`Mesh` gRPC service): envelopes in, acks
//! out, each stanza handed to the node's [`Host`] (its session, or the
//! fallback); a peer's takeover request for a resumable session here
//! (`router::takeover`).
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use starling_proto::mesh::mesh_server::{Mesh, MeshServer};
use starling_proto::mesh::{Ack, Envelope, Kind, TakeoverReply, TakeoverRequest};
use starling_raft::network::{CheckSecret, MAX_MESSAGE_BYTES};
use starling_raft::ClusterHandle;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn, Instrument};

use super::wire::{Key, Notice};
use super::Host;

/// The receiving side of links.
pub struct MeshService {
    host: Arc<dyn Host>,
    /// For waiting until what a sender knew is applied here.
    cluster: ClusterHandle,
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
        let span = tracing::info_span!("mesh_in", node_id = self.cluster.id());
        tokio::spawn(
            receive(self.host.clone(), self.cluster.clone(), inbound, tx).instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn takeover(
        &self,
        request: Request<TakeoverRequest>,
    ) -> Result<Response<TakeoverReply>, Status> {
        let r = request.into_inner();
        let state = self.host.take_over(&r.bare, &r.previd, r.h).await;
        let had = match state {
            Some(_) => Vec::new(),
            None => self.host.hinted(&r.bare, &r.previd, r.h),
        };
        Ok(Response::new(TakeoverReply {
            found: state.is_some(),
            session: state.unwrap_or_default(),
            had,
        }))
    }
}

async fn receive(
    host: Arc<dyn Host>,
    cluster: ClusterHandle,
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
                host.custody_notice(Notice {
                    safe,
                    ..Notice::default()
                });
            }
            let kind = Kind::try_from(env.kind);
            if matches!(kind, Ok(Kind::Stanza | Kind::Kick)) {
                catch_up(&cluster, env.applied_index).await;
            }
            match kind {
                Ok(Kind::Stanza) => match crate::xmpp::parse_stanza(&env.xml) {
                    Ok(el) => {
                        if env.holders.is_empty() || env.queue_id.is_empty() {
                            host.stanza(&env.to, env.session, el).await
                        } else {
                            // Held before it is acknowledged (the ack is
                            // the sender's confirmation of this copy), and
                            // written once the sender's node says it is
                            // safe (`router::custody`).
                            if env.safe_on_ack {
                                let bare = crate::xmpp::jid::bare_of(&env.to).to_string();
                                waiting.push_back((env.seq, (bare, env.queue_id.clone())));
                            }
                            host.custody_arrived(
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
                Ok(Kind::Hold) => host.custody_hold(&env.to, &env.queue_id, env.xml, &env.holders),
                Ok(Kind::Done) => match serde_json::from_str::<Notice>(&env.xml) {
                    Ok(notice) => {
                        if !notice.late.is_empty() {
                            waiting.retain(|(_, k)| !notice.late.contains(k));
                        }
                        host.custody_notice(notice)
                    }
                    Err(e) => warn!(error = %e, "unreadable custody notice"),
                },
                Ok(Kind::Kick) => host.kick(&env.to, env.session).await,
                Ok(Kind::Hint) => match serde_json::from_str(&env.xml) {
                    Ok(h) => host.hint(h),
                    Err(e) => warn!(error = %e, "unreadable delivery hint"),
                },
                Ok(Kind::AuthBlock) => match env.to.parse::<std::net::IpAddr>() {
                    Ok(key) => host.auth_block(key, std::time::Duration::from_secs(env.session)),
                    Err(_) => warn!(to = %env.to, "unreadable address in an auth block"),
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
async fn catch_up(cluster: &ClusterHandle, index: u64) {
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

/// The mesh service for the raft port's gRPC server (cluster secret
/// checked): what arrives goes to `host`.
pub fn serve_mesh(
    host: Arc<dyn Host>,
    cluster: ClusterHandle,
    secret: &str,
) -> InterceptedService<MeshServer<MeshService>, CheckSecret> {
    let svc = MeshServer::new(MeshService { host, cluster })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    InterceptedService::new(svc, CheckSecret::new(secret))
}
