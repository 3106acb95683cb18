//! The admin gRPC service (`admin.proto`), with the standard health service
//! and server reflection so generic gRPC tools can discover and call it.
//!
//! Writes go through [`ClusterHandle::propose`] (forwarded to the leader,
//! answered after commit). Reads come from this node's applied state.
//! [`ProposeError`]s map to gRPC status codes in [`status_of`].
pub mod client;

use std::time::Duration;

use starling_proto::admin::admin_server::{Admin, AdminServer};
use starling_proto::admin::*;
use starling_raft::cluster::{NodeReport, Proposal, ProposeError};
use starling_raft::command::{Command, Response};
use starling_raft::credentials::{Credentials, DEFAULT_ITERATIONS};
use starling_raft::{ClusterHandle, StarlingNode};
use subtle::ConstantTimeEq;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::server::Router;
use tonic::{Request, Status};

use crate::clock::now_ms;
use crate::config::Config;

/// Longest password accepted, bytes.
const MAX_PASSWORD_BYTES: usize = 1024;

/// How long `Status` waits for each member's report.
const REPORT_TIMEOUT: Duration = Duration::from_millis(700);

/// Checks `authorization: Bearer <token>`; `None` only when the config
/// opted out (`admin_insecure_no_token`).
#[derive(Clone)]
pub struct CheckToken(Option<std::sync::Arc<[u8]>>);

/// The token of an `authorization` value `Bearer <token>`: the scheme in
/// any case and one or more spaces after it (RFC 6750 §2.1, whose scheme
/// is case-insensitive as every HTTP auth scheme, RFC 9110 §11.1).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_start_matches(' ');
    (!token.is_empty()).then_some(token)
}

impl Interceptor for CheckToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.0 else {
            return Ok(req);
        };
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        match given {
            Some(g) if bool::from(g.as_bytes().ct_eq(token)) => Ok(req),
            Some(_) => Err(Status::unauthenticated("wrong admin token")),
            None => Err(Status::unauthenticated(
                "this node requires an admin token (authorization: Bearer <token>)",
            )),
        }
    }
}

/// Builds the admin router: Admin (token-guarded), health and reflection.
pub async fn server(
    cluster: ClusterHandle,
    config: &Config,
    readiness: crate::readiness::Readiness,
) -> Result<Router, Box<dyn std::error::Error + Send + Sync>> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AdminServer<AdminService>>().await;
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let svc = AdminService {
        cluster,
        readiness,
        domain: config.domain.clone(),
    };
    let token = config
        .admin_token
        .as_ref()
        .map(|t| std::sync::Arc::from(t.as_bytes()));
    Ok(tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(InterceptedService::new(
            AdminServer::new(svc),
            CheckToken(token),
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha))
}

/// The services this port serves, as reflection lists them: the raft and
/// mesh services share the .proto descriptor set but answer only on the
/// raft port (here they would be UNIMPLEMENTED).
pub const SERVICES: [&str; 4] = [
    "starling.admin.v1.Admin",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Server reflection of this port's [`SERVICES`], for `build_v1` (grpcurl,
/// current tools) and `build_v1alpha` (Python's grpc_reflection, older
/// grpcurl and many GUI tools still ask only `grpc.reflection.v1alpha`).
fn reflection() -> tonic_reflection::server::Builder<'static> {
    let b = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(starling_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // Both versions' descriptors in both, so each lists the other.
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET);
    SERVICES.iter().fold(b, |b, s| b.with_service_name(*s))
}

pub struct AdminService {
    cluster: ClusterHandle,
    domain: String,
    readiness: crate::readiness::Readiness,
}

/// Maps a proposal failure to the gRPC status a client sees.
pub fn status_of(e: ProposeError) -> Status {
    match e {
        ProposeError::NoLeader | ProposeError::NotLeader { .. } => {
            Status::unavailable(format!("no quorum: {e}"))
        }
        ProposeError::Membership(_) => Status::failed_precondition(e.to_string()),
        ProposeError::UnknownNode(_) => Status::not_found(e.to_string()),
        ProposeError::Fatal(_) => Status::internal(e.to_string()),
        ProposeError::Unknown(_) => Status::deadline_exceeded(e.to_string()),
    }
}

impl AdminService {
    /// Makes the next local read linearizable: a no-op committed through
    /// the leader and applied here first (so a follower cut off from the
    /// leader answers `unavailable` instead of stale data).
    async fn read_barrier(&self) -> Result<(), Status> {
        let a = self
            .cluster
            .write(starling_raft::Command::Barrier)
            .await
            .map_err(status_of)?;
        if self.cluster.applied_index() < a.log_index {
            return Err(Status::unavailable(
                "this node has not caught up with the cluster; try again",
            ));
        }
        Ok(())
    }

    /// Normalizes a user argument to a bare JID of this domain: `alice` and
    /// `Alice@Localhost` both become `alice@localhost` (RFC 7622 via `jid`).
    fn user_jid(&self, given: &str) -> Result<String, Status> {
        let text = if given.contains('@') {
            given.to_string()
        } else {
            format!("{given}@{}", self.domain)
        };
        let jid = jid::BareJid::new(&text)
            .map_err(|e| Status::invalid_argument(format!("{given:?} is not a valid JID: {e}")))?;
        if jid.node().is_none() {
            return Err(Status::invalid_argument(format!(
                "{given:?} has no local part"
            )));
        }
        if jid.domain().as_str() != self.domain {
            return Err(Status::invalid_argument(format!(
                "{given:?} is not in this server's domain {}",
                self.domain
            )));
        }
        Ok(jid.to_string())
    }

    async fn credentials(password: String) -> Result<Credentials, Status> {
        if password.is_empty() {
            return Err(Status::invalid_argument("password must not be empty"));
        }
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(Status::invalid_argument(format!(
                "password longer than {MAX_PASSWORD_BYTES} bytes"
            )));
        }
        tokio::task::spawn_blocking(move || Credentials::derive(&password, DEFAULT_ITERATIONS))
            .await
            .map_err(|e| Status::internal(e.to_string()))
    }

    async fn write(&self, cmd: Command) -> Result<(u64, Response), Status> {
        let applied = self.cluster.write(cmd).await.map_err(status_of)?;
        Ok((applied.log_index, applied.response))
    }
}

fn member_status(
    id: u64,
    node: &StarlingNode,
    role_in_config: &str,
    report: Result<NodeReport, String>,
) -> MemberStatus {
    let mut m = MemberStatus {
        id,
        raft_addr: node.raft_addr.clone(),
        admin_addr: node.admin_addr.clone(),
        client_addr: node.client_addr.clone(),
        membership: role_in_config.into(),
        ..Default::default()
    };
    match report {
        Ok(r) => {
            if m.client_addr.is_empty() {
                // A member formed from `initial_cluster` has none in the
                // membership: the node says its own.
                m.client_addr = r.client_addr.clone();
            }
            m.reachable = true;
            m.role = r.role;
            m.term = r.term;
            m.leader_id = r.leader.unwrap_or(0);
            m.has_last_log = r.last_log_index.is_some();
            m.last_log_index = r.last_log_index.unwrap_or(0);
            m.has_applied = r.applied_index.is_some();
            m.applied_index = r.applied_index.unwrap_or(0);
            m.has_snapshot = r.snapshot_index.is_some();
            m.snapshot_index = r.snapshot_index.unwrap_or(0);
            m.purged_index = r.purged_index.unwrap_or(0);
            m.state_digest = r.digest;
            m.users = r.users;
            m.sessions = r.sessions;
            m.queued_messages = r.queued;
        }
        Err(e) => {
            m.role = "unreachable".into();
            m.error = e;
        }
    }
    m
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<tonic::Response<StatusReply>, Status> {
        let me = self.cluster.report();
        let mut members = Vec::new();
        let lookups = me.nodes.iter().map(|(id, node)| {
            let cluster = self.cluster.clone();
            let me = me.clone();
            async move {
                let report = if *id == me.id {
                    Ok(me.clone())
                } else {
                    cluster.peer_report(&node.raft_addr, REPORT_TIMEOUT).await
                };
                let role = if me.voters.contains(id) {
                    "voter"
                } else {
                    "learner"
                };
                member_status(*id, node, role, report)
            }
        });
        members.extend(futures::future::join_all(lookups).await);
        if !me.nodes.contains_key(&me.id) {
            // Not (yet) a member: still say who answered.
            let node = StarlingNode::default();
            members.push(member_status(me.id, &node, "none", Ok(me.clone())));
        }
        // The leader and term as the most advanced reachable member sees them.
        let best = members
            .iter()
            .filter(|m| m.reachable)
            .max_by_key(|m| (m.term, m.leader_id != 0));
        let (leader_id, term) = best.map(|m| (m.leader_id, m.term)).unwrap_or((0, me.term));
        let ready = self.readiness.check().await;
        Ok(tonic::Response::new(StatusReply {
            node_id: me.id,
            leader_id,
            has_leader: leader_id != 0,
            term,
            members,
            ready: ready.is_ok(),
            not_ready: ready
                .err()
                .map(|r| r.as_str().to_string())
                .unwrap_or_default(),
        }))
    }

    async fn add_node(
        &self,
        req: Request<AddNodeRequest>,
    ) -> Result<tonic::Response<MembershipReply>, Status> {
        let r = req.into_inner();
        if r.id == 0 {
            return Err(Status::invalid_argument(
                "node id must be a positive integer",
            ));
        }
        for (name, addr) in [("raft_addr", &r.raft_addr), ("admin_addr", &r.admin_addr)] {
            addr.parse::<std::net::SocketAddr>()
                .map_err(|e| Status::invalid_argument(format!("{name} {addr:?}: {e}")))?;
        }
        if !r.client_addr.is_empty() {
            r.client_addr.parse::<std::net::SocketAddr>().map_err(|e| {
                Status::invalid_argument(format!("client_addr {:?}: {e}", r.client_addr))
            })?;
        }
        let node = StarlingNode {
            raft_addr: r.raft_addr,
            admin_addr: r.admin_addr,
            client_addr: r.client_addr,
        };
        let applied = self
            .cluster
            .propose(Proposal::AddNode { id: r.id, node })
            .await
            .map_err(status_of)?;
        Ok(tonic::Response::new(MembershipReply {
            voters: applied.voters,
            learners: applied.learners,
            log_index: applied.log_index,
        }))
    }

    async fn remove_node(
        &self,
        req: Request<RemoveNodeRequest>,
    ) -> Result<tonic::Response<MembershipReply>, Status> {
        let id = req.into_inner().id;
        let applied = self
            .cluster
            .propose(Proposal::RemoveNode { id })
            .await
            .map_err(status_of)?;
        Ok(tonic::Response::new(MembershipReply {
            voters: applied.voters,
            learners: applied.learners,
            log_index: applied.log_index,
        }))
    }

    async fn create_user(
        &self,
        req: Request<CreateUserRequest>,
    ) -> Result<tonic::Response<UserReply>, Status> {
        let r = req.into_inner();
        let jid = self.user_jid(&r.jid)?;
        let credentials = Self::credentials(r.password).await?;
        let (log_index, resp) = self
            .write(Command::CreateUser {
                jid: jid.clone(),
                credentials,
                created_ms: now_ms(),
            })
            .await?;
        match resp {
            Response::UserCreated => Ok(tonic::Response::new(UserReply { jid, log_index })),
            Response::UserExists => {
                Err(Status::already_exists(format!("user {jid} already exists")))
            }
            other => Err(Status::internal(format!("unexpected result {other:?}"))),
        }
    }

    async fn delete_user(
        &self,
        req: Request<DeleteUserRequest>,
    ) -> Result<tonic::Response<UserReply>, Status> {
        let jid = self.user_jid(&req.into_inner().jid)?;
        let (log_index, resp) = self.write(Command::DeleteUser { jid: jid.clone() }).await?;
        match resp {
            Response::UserDeleted { .. } => Ok(tonic::Response::new(UserReply { jid, log_index })),
            Response::NoSuchUser => Err(Status::not_found(format!("no such user {jid}"))),
            other => Err(Status::internal(format!("unexpected result {other:?}"))),
        }
    }

    async fn set_password(
        &self,
        req: Request<SetPasswordRequest>,
    ) -> Result<tonic::Response<UserReply>, Status> {
        let r = req.into_inner();
        let jid = self.user_jid(&r.jid)?;
        if self.cluster.state().read().data.users.get(&jid).is_none() {
            // Cheap early answer; the command below re-checks after commit.
            return Err(Status::not_found(format!("no such user {jid}")));
        }
        let credentials = Self::credentials(r.password).await?;
        let (log_index, resp) = self
            .write(Command::SetPassword {
                jid: jid.clone(),
                credentials,
            })
            .await?;
        match resp {
            Response::PasswordChanged => Ok(tonic::Response::new(UserReply { jid, log_index })),
            Response::NoSuchUser => Err(Status::not_found(format!("no such user {jid}"))),
            other => Err(Status::internal(format!("unexpected result {other:?}"))),
        }
    }

    async fn create_invite(
        &self,
        req: Request<CreateInviteRequest>,
    ) -> Result<tonic::Response<InviteReply>, Status> {
        let r = req.into_inner();
        let uses = r.uses.max(1);
        let now = now_ms();
        let expires_ms = match r.expires_in_secs {
            0 => 0,
            s => now.saturating_add(s.saturating_mul(1000)),
        };
        // 32 alphanumerics: about 190 bits, so the stored hash needs no salt.
        let token = crate::dev::random_secret(32);
        let (log_index, resp) = self
            .write(Command::CreateInvite {
                hash: starling_raft::command::invite_hash(&token),
                invite: starling_raft::command::Invite {
                    uses_left: uses,
                    expires_ms,
                    created_ms: now,
                },
            })
            .await?;
        match resp {
            Response::InviteCreated => Ok(tonic::Response::new(InviteReply {
                uri: format!("xmpp:{}?register;preauth={token}", self.domain),
                token,
                uses,
                expires_unix_ms: expires_ms,
                log_index,
            })),
            other => Err(Status::internal(format!("unexpected result {other:?}"))),
        }
    }

    async fn delete_invite(
        &self,
        req: Request<DeleteInviteRequest>,
    ) -> Result<tonic::Response<DeleteInviteReply>, Status> {
        let token = req.into_inner().token;
        let (log_index, resp) = self
            .write(Command::DeleteInvite {
                hash: starling_raft::command::invite_hash(token.trim()),
            })
            .await?;
        match resp {
            Response::InviteDeleted { existed } => Ok(tonic::Response::new(DeleteInviteReply {
                existed,
                log_index,
            })),
            other => Err(Status::internal(format!("unexpected result {other:?}"))),
        }
    }

    async fn list_fast_tokens(
        &self,
        req: Request<ListFastTokensRequest>,
    ) -> Result<tonic::Response<ListFastTokensReply>, Status> {
        let jid = self.user_jid(&req.into_inner().jid)?;
        self.read_barrier().await?;
        let st = self.cluster.state().read();
        let mut tokens = Vec::new();
        for ((_, client), slots) in st
            .data
            .fast_tokens
            .range((jid.clone(), String::new())..)
            .take_while(|((u, _), _)| *u == jid)
        {
            for (slot, t) in [("current", &slots.current), ("new", &slots.new)] {
                if let Some(t) = t {
                    tokens.push(FastToken {
                        client: client.clone(),
                        slot: slot.into(),
                        mechanism: t.mechanism.clone(),
                        issued_unix_ms: t.issued_ms,
                        expires_unix_ms: t.expires_ms,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ListFastTokensReply { tokens }))
    }

    async fn revoke_fast_tokens(
        &self,
        req: Request<RevokeFastTokensRequest>,
    ) -> Result<tonic::Response<RevokeFastTokensReply>, Status> {
        let r = req.into_inner();
        let jid = self.user_jid(&r.jid)?;
        let client = Some(r.client).filter(|c| !c.is_empty());
        let (log_index, resp) = self
            .write(Command::RevokeFastTokens {
                user: jid,
                client,
                verifier: None,
            })
            .await?;
        match resp {
            Response::FastTokensRevoked { count } => {
                Ok(tonic::Response::new(RevokeFastTokensReply {
                    revoked: count,
                    log_index,
                }))
            }
            other => Err(Status::internal(format!("unexpected result {other:?}"))),
        }
    }

    async fn list_users(
        &self,
        _req: Request<ListUsersRequest>,
    ) -> Result<tonic::Response<ListUsersReply>, Status> {
        self.read_barrier().await?;
        let st = self.cluster.state().read();
        let users = st
            .data
            .users
            .iter()
            .map(|(jid, u)| User {
                jid: jid.clone(),
                created_unix_ms: u.created_ms,
            })
            .collect();
        Ok(tonic::Response::new(ListUsersReply { users }))
    }

    async fn list_sessions(
        &self,
        req: Request<ListSessionsRequest>,
    ) -> Result<tonic::Response<ListSessionsReply>, Status> {
        let node = req.into_inner().node_id;
        self.read_barrier().await?;
        let st = self.cluster.state().read();
        let sessions = st
            .data
            .sessions
            .iter()
            .filter(|(_, b)| node == 0 || b.node == node)
            .map(|(jid, b)| Session {
                full_jid: jid.clone(),
                node_id: b.node,
                priority: b.priority as i32,
                bound_unix_ms: b.bound_ms,
            })
            .collect();
        Ok(tonic::Response::new(ListSessionsReply { sessions }))
    }

    async fn list_queues(
        &self,
        _req: Request<ListQueuesRequest>,
    ) -> Result<tonic::Response<ListQueuesReply>, Status> {
        self.read_barrier().await?;
        let now = now_ms();
        let st = self.cluster.state().read();
        let mut queues: Vec<Queue> = Vec::new();
        for ((jid, _), msg) in st.data.offline.iter() {
            match queues.last_mut() {
                Some(q) if q.jid == *jid => q.depth += 1,
                _ => queues.push(Queue {
                    jid: jid.clone(),
                    depth: 1,
                    oldest_age_ms: now.saturating_sub(msg.stamp_ms),
                }),
            }
        }
        Ok(tonic::Response::new(ListQueuesReply { queues }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for v in ["Bearer t0k", "bearer t0k", "BEARER t0k", "bEaReR   t0k"] {
            assert_eq!(bearer_token(v), Some("t0k"), "{v}");
        }
        for v in ["Basic t0k", "Bearer", "Bearer ", "Bearert0k", "t0k"] {
            assert_eq!(bearer_token(v), None, "{v}");
        }
    }

    #[test]
    fn the_interceptor_takes_any_case_and_refuses_the_rest() {
        let mut check = CheckToken(Some(std::sync::Arc::from(&b"s3cret"[..])));
        let with = |v: &str| {
            let mut r = Request::new(());
            r.metadata_mut().insert("authorization", v.parse().unwrap());
            r
        };
        assert!(check.call(with("bearer s3cret")).is_ok());
        assert!(check.call(with("Bearer s3cret")).is_ok());
        assert!(check.call(with("Bearer wrong")).is_err());
        assert!(check.call(Request::new(())).is_err());
    }
}
