//! Raft RPCs between nodes over tonic, both directions.
//!
//! - [`Peers`]: one lazily connected gRPC channel per peer address, every
//!   call stamped with the cluster secret; with [`Peers::with_tls`], over
//!   mutual TLS (see [`crate::tls`]), so the secret never travels in clear.
//! - [`RaftNet`]: openraft's `RaftNetworkFactory` over [`Peers`].
//! - [`RaftRpc`]: the server side: hands incoming RPCs to the local `Raft`
//!   and answers forwarded proposals and reports. Wrapped by [`serve_raft`]
//!   in an interceptor that rejects any call without the secret.
//!
//! Payloads are openraft's own types in MessagePack (see `raft.proto`).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::RPCTypes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use starling_proto::raft::raft_service_client::RaftServiceClient;
use starling_proto::raft::raft_service_server::{RaftService, RaftServiceServer};
use starling_proto::raft::{Empty, Payload};
use subtle::ConstantTimeEq;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

use crate::cluster::{ClusterHandle, ForwardedProposal};
use crate::codec;
use crate::tls::ClusterTls;
use crate::types::{NodeId, StarlingNode, TypeConfig};

/// The metadata key that carries the cluster secret on every intra-cluster call.
pub const SECRET_HEADER: &str = "x-starling-cluster-secret";

/// Largest gRPC message a node sends or accepts between peers. Snapshot
/// chunks are far smaller (see `snapshot_max_chunk_size` in the node config);
/// the bound is for append batches of large offline stanzas.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Largest append RPC sent in one piece. openraft 0.9 gives every append
/// the heartbeat interval (50 ms by default) to be answered, whatever its
/// size; a follower catching up on large offline stanzas got batches it
/// could not store in that time, timed out on every retry and never caught
/// up. Larger batches are cut (see `append_entries`).
pub const APPEND_BUDGET_BYTES: usize = 1 << 20;

/// The secret is not a valid gRPC metadata value (visible ASCII only).
#[derive(Debug, thiserror::Error)]
#[error("cluster secret must be printable ASCII")]
pub struct InvalidSecret;

/// Adds the cluster secret to outgoing calls.
#[derive(Clone)]
pub struct AddSecret(MetadataValue<Ascii>);

impl Interceptor for AddSecret {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert(SECRET_HEADER, self.0.clone());
        Ok(req)
    }
}

/// Rejects incoming calls that lack the cluster secret.
#[derive(Clone)]
pub struct CheckSecret(Arc<[u8]>);

impl CheckSecret {
    pub fn new(secret: &str) -> Self {
        CheckSecret(Arc::from(secret.as_bytes()))
    }
}

impl Interceptor for CheckSecret {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        match req.metadata().get(SECRET_HEADER) {
            Some(v) if bool::from(v.as_bytes().ct_eq(&self.0)) => Ok(req),
            _ => Err(Status::unauthenticated("missing or wrong cluster secret")),
        }
    }
}

pub type PeerClient = RaftServiceClient<InterceptedService<Channel, AddSecret>>;

/// gRPC channels to peers, shared by raft replication and forwarding.
#[derive(Clone)]
pub struct Peers {
    secret: MetadataValue<Ascii>,
    tls: Option<ClientTlsConfig>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Peers {
    pub fn new(secret: &str) -> Result<Self, InvalidSecret> {
        let secret = MetadataValue::try_from(secret).map_err(|_| InvalidSecret)?;
        Ok(Peers {
            secret,
            tls: None,
            channels: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// Channels made from now on use mutual TLS: our certificate, and only
    /// a server certificate signed by the cluster CA is accepted.
    pub fn with_tls(mut self, tls: &ClusterTls) -> Self {
        self.tls = Some(tls.client());
        self
    }

    /// The interceptor that stamps the secret, for other services on the
    /// same channels (the stanza mesh).
    pub fn add_secret(&self) -> AddSecret {
        AddSecret(self.secret.clone())
    }

    /// The shared channel to the node at `addr`.
    /// Connects lazily and reconnects by itself; a bad address is an error.
    pub fn channel(&self, addr: &str) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(addr) {
            Some(c) => c.clone(),
            None => {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                let mut endpoint =
                    Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(|e| {
                        Status::invalid_argument(format!("bad peer address {addr}: {e}"))
                    })?;
                if let Some(tls) = &self.tls {
                    endpoint = endpoint.tls_config(tls.clone()).map_err(|e| {
                        Status::invalid_argument(format!("cluster TLS for {addr}: {e}"))
                    })?;
                }
                let endpoint = endpoint
                    .connect_timeout(Duration::from_millis(500))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(5));
                let c = endpoint.connect_lazy();
                channels.insert(addr.to_string(), c.clone());
                c
            }
        };
        Ok(channel)
    }

    /// A raft client for the node at `addr` (host:port).
    pub fn client(&self, addr: &str) -> Result<PeerClient, Status> {
        let channel = self.channel(addr)?;
        Ok(
            RaftServiceClient::with_interceptor(channel, AddSecret(self.secret.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
    }
}

/// True when a call failed before the request could have reached the peer
/// (no connection): safe to retry, the peer did nothing.
pub fn not_sent(status: &Status) -> bool {
    if status.code() != tonic::Code::Unavailable {
        return false;
    }
    let mut text = status.message().to_string();
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = src {
        text.push_str(&e.to_string());
        src = e.source();
    }
    let text = text.to_ascii_lowercase();
    text.contains("connect") || text.contains("refused")
}

/// openraft's network factory: one [`PeerNet`] per target node.
#[derive(Clone)]
pub struct RaftNet {
    pub id: NodeId,
    pub peers: Peers,
}

impl RaftNetworkFactory<TypeConfig> for RaftNet {
    type Network = PeerNet;

    async fn new_client(&mut self, target: NodeId, node: &StarlingNode) -> PeerNet {
        PeerNet {
            id: self.id,
            target,
            client: self.peers.client(&node.raft_addr),
        }
    }
}

/// The connection to one peer, as openraft's replication task sees it.
pub struct PeerNet {
    id: NodeId,
    target: NodeId,
    client: Result<PeerClient, Status>,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, StarlingNode, RaftError<NodeId, E>>>;

impl PeerNet {
    async fn call<Req, Resp, E>(
        &mut self,
        kind: RPCTypes,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        if let Err(s) = &self.client {
            return Err(RPCError::Unreachable(Unreachable::new(s)));
        }
        let data = codec::encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.call_encoded(kind, data, option).await
    }

    /// Sends an already encoded request.
    async fn call_encoded<Resp, E>(
        &mut self,
        kind: RPCTypes,
        data: Vec<u8>,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(c) => c,
            Err(s) => return Err(RPCError::Unreachable(Unreachable::new(s))),
        };
        let payload = Payload { data };
        let ttl = option.hard_ttl();
        let fut = async {
            match kind {
                RPCTypes::Vote => client.vote(payload).await,
                RPCTypes::AppendEntries => client.append_entries(payload).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(payload).await,
            }
        };
        let reply = match tokio::time::timeout(ttl, fut).await {
            Err(_) => {
                return Err(RPCError::Timeout(Timeout {
                    action: kind,
                    id: self.id,
                    target: self.target,
                    timeout: ttl,
                }))
            }
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                return Err(RPCError::Unreachable(Unreachable::new(&status)))
            }
            Ok(Err(status)) => return Err(RPCError::Network(NetworkError::new(&status))),
            Ok(Ok(r)) => r.into_inner(),
        };
        let res: Result<Resp, RaftError<NodeId, E>> =
            codec::decode(&reply.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerNet {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        let (mut rpc, data) = if rpc.entries.is_empty() {
            let data = codec::encode(&rpc);
            (rpc, data)
        } else {
            // Entries (an archive batch is up to 512 KiB) are encoded on a
            // blocking thread: milliseconds on a runtime worker would hold
            // up the sessions and mesh tasks queued behind them.
            tokio::task::spawn_blocking(move || {
                let data = codec::encode(&rpc);
                (rpc, data)
            })
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?
        };
        let data = data.map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if data.len() <= APPEND_BUDGET_BYTES || rpc.entries.len() <= 1 {
            return self
                .call_encoded(RPCTypes::AppendEntries, data, &option)
                .await;
        }
        // Too large to be sure of an answer within openraft's bound (the
        // heartbeat interval, whatever the size): send the first entries
        // that fit (at least one) and report a partial success, so the
        // leader goes on from there instead of resending the same
        // oversized batch forever (a lagging follower never caught up).
        let mut sizes = Vec::with_capacity(rpc.entries.len());
        for e in &rpc.entries {
            let size = codec::encode(e)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?
                .len();
            sizes.push(size);
        }
        rpc.entries
            .truncate(entries_within(&sizes, APPEND_BUDGET_BYTES));
        let last = rpc.entries.last().map(|e| e.log_id);
        let data = codec::encode(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        match self
            .call_encoded(RPCTypes::AppendEntries, data, &option)
            .await?
        {
            AppendEntriesResponse::Success => Ok(AppendEntriesResponse::PartialSuccess(last)),
            other => Ok(other),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(RPCTypes::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call(RPCTypes::Vote, &rpc, &option).await
    }
}

/// How many of the first entries (of these encoded sizes) fit in `budget`
/// bytes; always at least one, so an entry larger than the budget still
/// goes, alone.
fn entries_within(sizes: &[usize], budget: usize) -> usize {
    let mut bytes = 0usize;
    let mut keep = 0;
    for &size in sizes {
        if keep > 0 && bytes + size > budget {
            break;
        }
        bytes += size;
        keep += 1;
    }
    keep
}

/// The server side of `raft.proto`.
pub struct RaftRpc {
    cluster: ClusterHandle,
}

fn decode_req<T: DeserializeOwned>(req: Request<Payload>) -> Result<T, Status> {
    decode_payload(&req.into_inner().data)
}

fn decode_payload<T: DeserializeOwned>(data: &[u8]) -> Result<T, Status> {
    codec::decode(data).map_err(|e| Status::invalid_argument(format!("undecodable payload: {e}")))
}

/// From this size on, an append request is decoded on a blocking thread.
const BLOCKING_DECODE_BYTES: usize = 16 * 1024;

fn encode_reply<T: Serialize>(value: &T) -> Result<tonic::Response<Payload>, Status> {
    let data = codec::encode(value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(tonic::Response::new(Payload { data }))
}

#[tonic::async_trait]
impl RaftService for RaftRpc {
    async fn append_entries(
        &self,
        req: Request<Payload>,
    ) -> Result<tonic::Response<Payload>, Status> {
        let data = req.into_inner().data;
        // A large request (entries) is decoded on a blocking thread, as the
        // sender encoded it; a heartbeat where it is.
        let rpc: AppendEntriesRequest<TypeConfig> = if data.len() < BLOCKING_DECODE_BYTES {
            decode_payload(&data)?
        } else {
            tokio::task::spawn_blocking(move || decode_payload(&data))
                .await
                .map_err(|e| Status::internal(e.to_string()))??
        };
        let leader_commit = rpc.leader_commit.map(|l| l.index);
        let reply = self.cluster.raft().append_entries(rpc).await;
        if matches!(
            reply,
            Ok(AppendEntriesResponse::Success
                | AppendEntriesResponse::PartialSuccess(_)
                | AppendEntriesResponse::Conflict)
        ) {
            // Taken from the leader of our term: we are in touch with it.
            self.cluster.leader_contact(leader_commit);
        }
        encode_reply(&reply)
    }

    async fn vote(&self, req: Request<Payload>) -> Result<tonic::Response<Payload>, Status> {
        let rpc: VoteRequest<NodeId> = decode_req(req)?;
        encode_reply(&self.cluster.raft().vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<Payload>,
    ) -> Result<tonic::Response<Payload>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode_req(req)?;
        encode_reply(&self.cluster.raft().install_snapshot(rpc).await)
    }

    async fn propose(&self, req: Request<Payload>) -> Result<tonic::Response<Payload>, Status> {
        let data = req.into_inner().data;
        // An archive batch forwarded by a follower is large: decoded on a
        // blocking thread, as an append is.
        let fwd: ForwardedProposal = if data.len() < BLOCKING_DECODE_BYTES {
            decode_payload(&data)?
        } else {
            tokio::task::spawn_blocking(move || decode_payload(&data))
                .await
                .map_err(|e| Status::internal(e.to_string()))??
        };
        // A peer already chose us as leader: propose here or say who is.
        // A tool outside the cluster (from = 0) gets full forwarding.
        let result = if fwd.from == 0 {
            self.cluster.propose(fwd.proposal).await
        } else {
            self.cluster.propose_here(fwd.proposal).await
        };
        encode_reply(&result)
    }

    async fn node_info(&self, _req: Request<Empty>) -> Result<tonic::Response<Payload>, Status> {
        encode_reply(&self.cluster.report())
    }
}

/// The raft gRPC service for this node, guarded by the cluster secret.
pub fn serve_raft(
    cluster: ClusterHandle,
    secret: &str,
) -> InterceptedService<RaftServiceServer<RaftRpc>, CheckSecret> {
    let svc = RaftServiceServer::new(RaftRpc { cluster })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    InterceptedService::new(svc, CheckSecret(Arc::from(secret.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_are_cut_at_the_budget_but_never_empty() {
        assert_eq!(entries_within(&[400, 400, 400], 1000), 2);
        assert_eq!(entries_within(&[400, 600, 1], 1000), 2);
        assert_eq!(
            entries_within(&[5000, 10], 1000),
            1,
            "one oversized entry goes alone"
        );
        assert_eq!(entries_within(&[10; 5], 1000), 5);
        assert_eq!(entries_within(&[], 1000), 0);
    }
}
