//! Who is where, and where a stanza goes (RFC 6121 §8.5).
//!
//! The shared session table (replicated, read from the local applied state)
//! says which node holds each full JID and whether it is available; this
//! node's own sessions are in [`Router`]'s local registry, which is
//! authoritative for them. A stanza is handed to a local session's channel,
//! to the stanza mesh for a session on another node, or — when no session
//! can take it — to the replicated offline queue or back to its sender as
//! an error.
//!
//! A message for an account is made safe while it is delivered live: held
//! in memory by a majority of the nodes ([`custody`]) when the recipient is
//! online, else written to its replicated queue ([`inbox`]); the sender's
//! ack waits for that, the recipient does not. Consensus is beside the live
//! path, and for a recipient who reads, not used at all.
//!
//! The XEP-0313 archive is written beside it too: [`archiver`] commits the
//! entries of the messages routed here in batches, and the sender's ack
//! waits for that commit as well.
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use starling_raft::command::SessionBinding;
use starling_raft::{ClusterHandle, NodeId};
use tokio::sync::{mpsc, watch};

pub mod archiver;
pub mod blocking;
pub mod contact;
pub mod custody;
pub mod hints;
pub mod inbox;
mod keeper;
pub mod liveness;
mod mesh_host;
mod parked;
pub mod push;
mod route;
mod stanza;
pub mod takeover;

pub use inbox::{GuardPipeline, Guarded, QueueCaps, Remover};
pub use stanza::{queued_id, queued_key, stanza_id_of, strip_stanza_ids};

use crate::mesh::{MeshLinks, TakeoverAnswer};
use crate::xmpp::jid::{bare_of, BareJid, FullJid};
use crate::xmpp::{Element, StreamCondition, StreamError};

/// What a session task receives.
#[derive(Debug)]
pub enum ToSession {
    /// A stanza to write to the client (boxed: the channel's slots stay
    /// small, and an idle session's queue costs little memory).
    Stanza(Box<Element>),
    /// End the session with this stream error.
    Kick(StreamError),
}

/// Where the outcome of a guarded message goes: the sending session, with
/// the XEP-0198 count of the stanza (none without stream management).
#[derive(Debug, Clone)]
pub struct Notify {
    pub tx: mpsc::UnboundedSender<GuardDone>,
    pub count: Option<u64>,
    /// The sending session's guards, committed in its order.
    pub pipeline: GuardPipeline,
}

/// What routing a message from a local client started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Routed {
    /// A guard took it: its outcome goes to the `Notify`.
    pub guarded: bool,
    /// Its archive entries went to the archiver, which also reports to
    /// the `Notify` once they are committed (see [`archiver`]).
    pub archived: bool,
}

/// A guarded message's outcome, for the session that sent it.
#[derive(Debug)]
pub struct GuardDone {
    pub count: Option<u64>,
    pub outcome: Guarded,
    /// The message as routed (for the error reply when refused).
    pub message: Option<Element>,
}

/// A session of this node, as the router sees it.
#[derive(Debug, Clone)]
pub struct LocalSession {
    pub id: u64,
    pub tx: mpsc::Sender<ToSession>,
    /// When it was registered.
    pub since: std::time::Instant,
}

impl LocalSession {
    /// Ends this session with `error`. Never waits: a session whose queue
    /// is full (its client does not read) gets the kick from a task of its
    /// own, so no shared task (mesh receiver, liveness) stalls on it.
    pub fn kick(&self, error: StreamError) {
        match self.tx.try_send(ToSession::Kick(error)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(m)) => {
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(m).await;
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// Capacity of a session's inbound channel. A client that does not read
/// fills it; then its messages go to the offline queue instead.
pub const SESSION_QUEUE: usize = 1024;

/// A resumable session writes the queued messages of a pull only once a
/// peer has the delivery hint naming them (see [`hints`]): at most this
/// long after the hint left...
pub const HINT_WAIT: std::time::Duration = std::time::Duration::from_millis(300);
/// ... and at most this long after the first peer acknowledged it, for the
/// others (a paused peer must not hold the pull up).
pub const HINT_GRACE: std::time::Duration = std::time::Duration::from_millis(20);

struct Inner {
    node: NodeId,
    domain: String,
    cluster: ClusterHandle,
    local: RwLock<HashMap<String, LocalSession>>,
    mesh: MeshLinks,
    /// The caps of the replicated queue (from the config).
    queue_caps: inbox::QueueCaps,
    remover: Remover,
    shutdown: watch::Receiver<bool>,
    /// Guards still running (a graceful stop waits for them).
    guards: tokio_util::task::TaskTracker,
    hints: hints::Hints,
    /// Confirms quorum contact before queued messages are written.
    contact: contact::ContactGate,
    /// Resumable sessions here that a peer may take over.
    takeovers: takeover::Registry,
    /// Messages in custody here (see [`custody`]).
    custody: Mutex<keeper::CustodyBook>,
    /// Copies in custody kept back from sessions here until released.
    parked: Mutex<parked::Parked>,
    /// Commits of copies custody gives to the queue (one node-wide
    /// pipeline; its task ends with the router).
    custody_pipeline: GuardPipeline,
    /// Where address blocks from peers go (the client listener's
    /// authentication throttling, which the router does not know): set
    /// once at start (`Router::on_auth_block`).
    auth_blocks: std::sync::OnceLock<AuthBlockSink>,
    /// XEP-0357 pushes this node decides (see [`push`]).
    pushes: push::Pushes,
    /// The XEP-0313 archiver (set once at start: `attach_archiver`).
    archiver: std::sync::OnceLock<archiver::Archiver>,
    /// The node's counters (`/metrics`).
    metrics: Arc<crate::metrics::Metrics>,
    /// The multi-user chat service and its domain (set once at start:
    /// `attach_muc`).
    muc: std::sync::OnceLock<(String, Arc<dyn MucHost>)>,
}

/// The XEP-0045 multi-user chat service as the router sees it (`im::muc`
/// implements it; the router does not import `im`): what is addressed to
/// the service's domain goes to it, never to the session table.
#[tonic::async_trait]
pub trait MucHost: Send + Sync {
    /// A stanza a local client sent to the service or one of its rooms
    /// (its `from` stamped by the session).
    async fn client_stanza(&self, el: Element);
    /// A room's broadcast a peer fanned out to this node's occupants
    /// (`room`: the room's bare JID).
    async fn peer_fanout(&self, room: &str, el: Element);
    /// The local session `full` ended: it leaves every room.
    async fn session_ended(&self, full: &str);
    /// This node, as leader, dropped the bindings of dead node `node`: its
    /// occupants leave their rooms.
    async fn node_lost(&self, node: NodeId);
}

/// Takes an address block a peer announced (see [`Router::on_auth_block`]).
pub type AuthBlockSink = Box<dyn Fn(std::net::IpAddr, std::time::Duration) + Send + Sync>;

/// Cloneable handle on the routing layer.
#[derive(Clone)]
pub struct Router(Arc<Inner>);

/// A session target chosen from the shared table.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub full: String,
    pub binding: SessionBinding,
}

impl Router {
    pub fn new(
        cluster: ClusterHandle,
        domain: &str,
        mesh: MeshLinks,
        queue_caps: inbox::QueueCaps,
        push_limits: push::PushLimits,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let custody_pipeline = GuardPipeline::start(
            cluster.clone(),
            shutdown.clone(),
            &tokio_util::task::TaskTracker::new(),
        );
        let router = Router(Arc::new(Inner {
            node: cluster.id(),
            domain: domain.to_string(),
            remover: Remover::start(cluster.clone()),
            contact: contact::ContactGate::new(cluster.clone()),
            takeovers: takeover::Registry::default(),
            cluster,
            local: RwLock::new(HashMap::new()),
            mesh,
            queue_caps,
            shutdown,
            guards: tokio_util::task::TaskTracker::new(),
            // As long as a resumption could come (the default resume window).
            hints: hints::Hints::new(std::time::Duration::from_secs(600)),
            custody: Mutex::new(custody::Book::new(
                keeper::MAX_CUSTODY_BYTES,
                custody::Timeouts::default(),
            )),
            parked: Mutex::new(Default::default()),
            custody_pipeline,
            auth_blocks: std::sync::OnceLock::new(),
            pushes: push::Pushes::new(push_limits),
            archiver: std::sync::OnceLock::new(),
            metrics: Default::default(),
            muc: std::sync::OnceLock::new(),
        }));
        tokio::spawn(keeper::run_ticker(Arc::downgrade(&router.0)));
        router
    }

    /// The node's counters (`/metrics`).
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.0.metrics
    }

    /// Routes stanzas for `domain` to the multi-user chat service (set once;
    /// later calls change nothing).
    pub fn attach_muc(&self, domain: String, host: Arc<dyn MucHost>) {
        let _ = self.0.muc.set((domain, host));
    }

    /// The multi-user chat service, if `domain` is its domain.
    pub(crate) fn muc_for(&self, domain: &str) -> Option<&Arc<dyn MucHost>> {
        self.0
            .muc
            .get()
            .filter(|(d, _)| d.eq_ignore_ascii_case(domain))
            .map(|(_, h)| h)
    }

    /// The multi-user chat service's domain, if it is on.
    pub fn muc_domain(&self) -> Option<&str> {
        self.0.muc.get().map(|(d, _)| d.as_str())
    }

    /// The local session `full` ended: the chat service is told (it leaves
    /// its rooms).
    pub async fn muc_session_ended(&self, full: &str) {
        if let Some((_, h)) = self.0.muc.get() {
            h.session_ended(full).await;
        }
    }

    /// Dead node `node`'s bindings were dropped here (see [`liveness`]).
    pub(crate) async fn muc_node_lost(&self, node: NodeId) {
        if let Some((_, h)) = self.0.muc.get() {
            h.node_lost(node).await;
        }
    }

    /// Sends `el` to every other member for `to` (no session: the peer
    /// hands it to the service `to` belongs to, see [`MucHost`]), in this
    /// node's order per peer (each link is one ordered stream).
    pub async fn to_every_peer(&self, to: &str, el: &Element) {
        for node in self.peers() {
            if !self.0.mesh.is_down(node) {
                self.0.mesh.send_stanza(node, to, 0, el.clone()).await;
            }
        }
    }

    /// The task that removes delivered messages from replicated queues.
    pub fn remover(&self) -> &Remover {
        &self.0.remover
    }

    /// Delivery hints from peers (see [`hints`]).
    pub fn hints(&self) -> &hints::Hints {
        &self.0.hints
    }

    /// This node's resumable sessions, for peers that take one over.
    pub fn takeovers(&self) -> &takeover::Registry {
        &self.0.takeovers
    }

    /// The other members of the current membership config (voters and
    /// learners), as this node's raft sees it.
    fn peers(&self) -> Vec<NodeId> {
        let m = self
            .0
            .cluster
            .raft()
            .metrics()
            .borrow()
            .membership_config
            .clone();
        m.membership()
            .nodes()
            .map(|(id, _)| *id)
            .filter(|id| *id != self.0.node)
            .collect()
    }

    /// A client resumes here session `previd`, which is not here: asks
    /// every reachable peer to hand it over (see [`takeover`]). The state
    /// as JSON if a peer handed it over; else what every peer's delivery
    /// hints say the client had, with this node's (see [`hints`]): the
    /// hints of a node that restarted, or whose link was down when the
    /// stream wrote, are with the others.
    pub async fn take_over_remote(&self, bare: &str, previd: &str, h: u32) -> TakeoverAnswer {
        let peers: Vec<NodeId> = self
            .peers()
            .into_iter()
            .filter(|id| !self.0.mesh.is_down(*id))
            .collect();
        let mut asks: futures::stream::FuturesUnordered<_> = peers
            .into_iter()
            .map(|n| {
                self.0
                    .mesh
                    .request_takeover(n, bare, previd, h, takeover::HANDOFF_LIMIT)
            })
            .collect();
        use futures::StreamExt;
        let mut had: HashSet<String> = self.hints().take(previd, bare, h).into_iter().collect();
        while let Some(r) = asks.next().await {
            match r {
                Some(TakeoverAnswer {
                    session: Some(state),
                    ..
                }) => {
                    return TakeoverAnswer {
                        session: Some(state),
                        had: Vec::new(),
                    }
                }
                Some(a) => had.extend(a.had),
                None => {}
            }
        }
        TakeoverAnswer {
            session: None,
            had: had.into_iter().collect(),
        }
    }

    /// The gate a pull passes before writing queued messages (see
    /// [`contact`]).
    pub fn contact(&self) -> &contact::ContactGate {
        &self.0.contact
    }

    /// Sends `hint` to every other member. The returned receiver is told
    /// once every peer acknowledged it, or [`HINT_GRACE`] after the first
    /// did, or [`HINT_WAIT`] after it was sent, whichever comes first (it
    /// is dropped if no peer can take it).
    pub fn share_hint(&self, hint: &hints::Hint) -> tokio::sync::oneshot::Receiver<()> {
        let peers = self.peers();
        let mut acks = futures::stream::FuturesUnordered::new();
        for node in peers {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.0.mesh.send_hint(node, hint, tx);
            acks.push(rx);
        }
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            use futures::StreamExt;
            let wait = tokio::time::sleep(HINT_WAIT);
            tokio::pin!(wait);
            let mut any = false;
            loop {
                tokio::select! {
                    r = acks.next() => match r {
                        Some(Ok(())) => {
                            if !any {
                                any = true;
                                let grace = tokio::time::Instant::now() + HINT_GRACE;
                                if grace < wait.deadline() {
                                    wait.as_mut().reset(grace);
                                }
                            }
                        }
                        Some(Err(_)) => {}
                        None => break,
                    },
                    _ = &mut wait => break,
                }
            }
            if any {
                let _ = done_tx.send(());
            }
        });
        done_rx
    }

    /// A new guard pipeline, for one sending session.
    pub fn guard_pipeline(&self) -> GuardPipeline {
        GuardPipeline::start(
            self.0.cluster.clone(),
            self.0.shutdown.clone(),
            &self.0.guards,
        )
    }

    /// Waits (at most `limit`) for running guards to learn their outcome.
    /// Copies in custody are committed to their queues first.
    pub async fn wait_for_guards(&self, limit: std::time::Duration) {
        self.custody_release_all(limit).await;
        self.0.guards.close();
        let _ = tokio::time::timeout(limit, self.0.guards.wait()).await;
    }

    pub fn node(&self) -> NodeId {
        self.0.node
    }

    pub fn domain(&self) -> &str {
        &self.0.domain
    }

    pub fn cluster(&self) -> &ClusterHandle {
        &self.0.cluster
    }

    /// Where address blocks peers announce over the mesh go (set once;
    /// later calls change nothing). Until set, they are dropped.
    pub fn on_auth_block(&self, sink: AuthBlockSink) {
        let _ = self.0.auth_blocks.set(sink);
    }

    /// A peer blocked `key` for `duration`.
    pub(crate) fn auth_block_from_peer(
        &self,
        key: std::net::IpAddr,
        duration: std::time::Duration,
    ) {
        if let Some(sink) = self.0.auth_blocks.get() {
            sink(key, duration);
        }
    }

    pub fn mesh(&self) -> &MeshLinks {
        &self.0.mesh
    }

    /// Registers a local session; returns the one it replaces on this node.
    pub fn register(&self, full: &FullJid, session: LocalSession) -> Option<LocalSession> {
        let mut local = self.0.local.write().unwrap_or_else(|p| p.into_inner());
        local.insert(full.to_string(), session)
    }

    /// Forgets a local session (only if it is still session `id`).
    pub fn unregister(&self, full: &FullJid, id: u64) {
        let full = full.as_str();
        let mut local = self.0.local.write().unwrap_or_else(|p| p.into_inner());
        if local.get(full).is_some_and(|s| s.id == id) {
            local.remove(full);
        }
    }

    pub fn local_session(&self, full: &str) -> Option<LocalSession> {
        let local = self.0.local.read().unwrap_or_else(|p| p.into_inner());
        local.get(full).cloned()
    }

    /// Every local session (full JID, id).
    pub fn local_sessions(&self) -> Vec<(String, u64)> {
        let local = self.0.local.read().unwrap_or_else(|p| p.into_inner());
        local.iter().map(|(k, v)| (k.clone(), v.id)).collect()
    }

    /// Every local session with its registration time.
    pub fn local_sessions_with_age(&self) -> Vec<(String, u64, std::time::Instant)> {
        let local = self.0.local.read().unwrap_or_else(|p| p.into_inner());
        local
            .iter()
            .map(|(k, v)| (k.clone(), v.id, v.since))
            .collect()
    }

    pub fn user_exists(&self, bare: &BareJid) -> bool {
        self.0
            .cluster
            .state()
            .read()
            .data
            .users
            .get(&bare.to_string())
            .is_some()
    }

    /// The sessions of `bare` in the shared table, minus those that cannot
    /// take a stanza: a binding to this node that is not in the local
    /// registry is stale (this node is authoritative for its own), and
    /// bindings on `avoid` (a node found unreachable) are skipped.
    pub fn sessions_of(&self, bare: &str, avoid: Option<NodeId>) -> Vec<Target> {
        let state = self.0.cluster.state().read();
        let found: Vec<Target> = state
            .data
            .sessions_of(bare)
            .filter(|(_, b)| Some(b.node) != avoid)
            .map(|(full, b)| Target {
                full: full.clone(),
                binding: b.clone(),
            })
            .collect();
        drop(state);
        found
            .into_iter()
            .filter(|t| t.binding.node != self.0.node || self.is_local(&t.full, t.binding.session))
            .collect()
    }

    fn is_local(&self, full: &str, session: u64) -> bool {
        let local = self.0.local.read().unwrap_or_else(|p| p.into_inner());
        local.get(full).is_some_and(|s| s.id == session)
    }

    /// The binding of one full JID, if it can take stanzas.
    pub fn binding_of(&self, full: &str, avoid: Option<NodeId>) -> Option<Target> {
        self.sessions_of(bare_of(full), avoid)
            .into_iter()
            .find(|t| t.full == full)
    }

    /// Hands `el` to one session. Local: its channel; remote: the mesh.
    /// Returns the stanza back when a local session cannot take it.
    pub async fn deliver(&self, target: &Target, el: Element) -> Result<(), Element> {
        if target.binding.node == self.0.node {
            return self.deliver_local(&target.full, target.binding.session, el);
        }
        self.0
            .mesh
            .send_stanza(
                target.binding.node,
                &target.full,
                target.binding.session,
                el,
            )
            .await;
        Ok(())
    }

    /// Hands `el` to a local session (`session` 0: whichever holds `full`).
    pub fn deliver_local(&self, full: &str, session: u64, el: Element) -> Result<(), Element> {
        let Some(s) = self.local_session(full) else {
            return Err(el);
        };
        if session != 0 && s.id != session {
            return Err(el);
        }
        match s.tx.try_send(ToSession::Stanza(Box::new(el))) {
            Ok(()) => Ok(()),
            Err(e) => match e.into_inner() {
                ToSession::Stanza(el) => Err(*el),
                ToSession::Kick(_) => Ok(()),
            },
        }
    }

    /// Ends the session `target` (wherever it is) with `conflict`: the same
    /// full JID was bound again (RFC 6120 §7.7.2.2).
    pub async fn kick(&self, full: &str, binding: &SessionBinding) {
        if binding.node == self.0.node {
            self.kick_local(full, binding.session).await
        } else {
            self.0
                .mesh
                .send_kick(binding.node, full, binding.session)
                .await;
        }
    }

    /// Ends local session `session` of `full` (if it is still that one)
    /// with `conflict`; also how a kick from the mesh arrives.
    pub async fn kick_local(&self, full: &str, session: u64) {
        if let Some(s) = self.local_session(full) {
            if s.id == session {
                s.kick(replaced());
            }
        }
    }
}

/// The stream error that ends a session whose full JID was bound again
/// (RFC 6120 §7.7.2.2: the server terminates the older session).
pub fn replaced() -> StreamError {
    StreamError::with_text(
        StreamCondition::Conflict,
        "this resource was bound by a new session",
    )
}
