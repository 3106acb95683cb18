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
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use starling_raft::command::{OfflineMessage, SessionBinding};
use starling_raft::{ClusterHandle, NodeId};
use tokio::sync::{mpsc, watch};
use tracing::debug;

pub mod contact;
pub mod custody;
pub mod hints;
pub mod inbox;
mod keeper;
pub mod liveness;
mod parked;
pub mod takeover;

pub use inbox::{GuardPipeline, Guarded, Remover};
pub use keeper::Notice;

use crate::clock::now_ms;
use crate::mesh::MeshLinks;
use crate::xmpp::id::random_id;
use crate::xmpp::jid::{bare_of, FullJid};
use crate::xmpp::{ns, Element, StanzaCondition, StanzaError, StreamCondition, StreamError};

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

/// Stanza kinds and types that decide routing.
fn stanza_type(el: &Element) -> &str {
    match (el.name(), el.attr("type")) {
        ("message", None) => "normal",
        ("presence", None) => "available",
        (_, Some(t)) => t,
        (_, None) => "",
    }
}

/// Message types eligible for carbons (XEP-0280 §6.1).
fn carbon_eligible(el: &Element) -> bool {
    let t = stanza_type(el);
    let eligible = t == "chat" || (t == "normal" && el.has_child("body", ns::CLIENT));
    eligible && !el.has_child("private", ns::CARBONS) && !el.has_child("no-copy", ns::HINTS)
}

struct Inner {
    node: NodeId,
    domain: String,
    cluster: ClusterHandle,
    local: RwLock<HashMap<String, LocalSession>>,
    mesh: MeshLinks,
    max_offline: u32,
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
}

/// Cloneable handle on the routing layer.
#[derive(Clone)]
pub struct Router(Arc<Inner>);

/// A session target chosen from the shared table.
#[derive(Debug, Clone)]
pub struct Target {
    pub full: String,
    pub binding: SessionBinding,
}

impl Router {
    pub fn new(
        cluster: ClusterHandle,
        domain: &str,
        mesh: MeshLinks,
        max_offline: u32,
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
            max_offline,
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
        }));
        tokio::spawn(keeper::run_ticker(Arc::downgrade(&router.0)));
        router
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
    /// as JSON, or `None` if no peer has it (or could hand it over).
    pub async fn take_over_remote(&self, bare: &str, previd: &str, h: u32) -> Option<String> {
        let peers: Vec<NodeId> = self
            .peers()
            .into_iter()
            .filter(|id| !self.0.mesh.is_down(*id))
            .collect();
        let mut asks: futures::stream::FuturesUnordered<_> = peers
            .into_iter()
            .map(|n| self.0.mesh.request_takeover(n, bare, previd, h))
            .collect();
        use futures::StreamExt;
        while let Some(r) = asks.next().await {
            if r.is_some() {
                return r;
            }
        }
        None
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
            self.0.mesh.send_hint(self, node, hint, tx);
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

    pub fn user_exists(&self, bare: &str) -> bool {
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
                self.clone(),
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

    /// Routes a stanza sent by a local client (its `from` already stamped)
    /// to a JID of another entity of this domain, RFC 6121 §8.5.
    pub async fn route(&self, el: Element) {
        self.route_avoiding(el, None, None).await;
    }

    /// Routes a message a local client sent: one for an account is guarded
    /// (written to the recipient's replicated queue while delivered live)
    /// and its outcome reported to `notify` (the sender's session).
    /// Returns whether it was guarded (else it is handled already).
    pub async fn route_guarded(&self, el: Element, notify: Notify) -> bool {
        self.route_avoiding(el, None, Some(notify)).await
    }

    /// As [`Router::route`], skipping sessions on `avoid` (a node that
    /// could not be reached). A stanza routed again (`notify` none) is not
    /// guarded a second time: the guard of its first routing covers it.
    async fn route_avoiding(
        &self,
        mut el: Element,
        avoid: Option<NodeId>,
        notify: Option<Notify>,
    ) -> bool {
        let Some(to) = el.attr("to").map(str::to_string) else {
            return false;
        };
        let Ok(jid) = jid::Jid::new(&to) else {
            self.bounce(&el, StanzaError::new(StanzaCondition::JidMalformed))
                .await;
            return false;
        };
        if jid.domain().as_str() != self.0.domain {
            // No server-to-server connections: RFC 6120 §8.3.3.16.
            self.bounce(
                &el,
                StanzaError::with_text(
                    StanzaCondition::RemoteServerNotFound,
                    "this server does not federate with other domains",
                ),
            )
            .await;
            return false;
        }
        let bare = jid.to_bare().to_string();
        if jid.node().is_none() {
            // Addressed to the domain itself: handled by the session layer,
            // never routed.
            return false;
        }
        if !self.user_exists(&bare) {
            // RFC 6121 §8.5.1: no such account.
            match el.name() {
                "message" | "iq" => {
                    self.bounce(&el, StanzaError::new(StanzaCondition::ServiceUnavailable))
                        .await
                }
                _ => {}
            }
            return false;
        }
        let sessions = self.sessions_of(&bare, avoid);
        let full = jid.resource().is_some().then_some(to.as_str());
        match el.name() {
            "message" => {
                if matches!(stanza_type(&el), "normal" | "chat" | "headline") {
                    add_stanza_id(&mut el, &bare);
                }
                return self.route_message(el, &bare, full, sessions, notify).await;
            }
            "presence" => {
                let targets: Vec<&Target> = sessions
                    .iter()
                    .filter(|t| match full {
                        Some(f) => t.full == f,
                        None => t.binding.available,
                    })
                    .collect();
                for t in targets {
                    let _ = self.deliver(t, el.clone()).await;
                }
            }
            "iq" => {
                let target = full.and_then(|f| sessions.iter().find(|t| t.full == f));
                match target {
                    Some(t) => {
                        if let Err(el) = self.deliver(t, el).await {
                            self.bounce(&el, StanzaError::new(StanzaCondition::ServiceUnavailable))
                                .await;
                        }
                    }
                    None => {
                        if matches!(stanza_type(&el), "get" | "set") {
                            self.bounce(&el, StanzaError::new(StanzaCondition::ServiceUnavailable))
                                .await;
                        }
                    }
                }
            }
            _ => {}
        }
        false
    }

    /// RFC 6121 §8.5.2 and §8.5.3 for a message to account `bare`. Returns
    /// whether a guard was started (its outcome goes to `notify`).
    async fn route_message(
        &self,
        mut el: Element,
        bare: &str,
        full: Option<&str>,
        sessions: Vec<Target>,
        notify: Option<Notify>,
    ) -> bool {
        let ty = stanza_type(&el).to_string();
        // §8.5.3.1: a full JID with a session gets the message.
        let exact = full.and_then(|f| sessions.iter().find(|t| t.full == f));
        let chosen: Vec<&Target> = if let Some(t) = exact {
            vec![t]
        } else {
            // §8.5.3.2.1 (no such resource) and §8.5.2 (bare JID).
            if ty == "groupchat" {
                self.bounce(&el, StanzaError::new(StanzaCondition::ServiceUnavailable))
                    .await;
                return false;
            }
            if ty == "error" {
                return false;
            }
            let available: Vec<&Target> = sessions
                .iter()
                .filter(|t| t.binding.available && t.binding.priority >= 0)
                .collect();
            match ty.as_str() {
                // §8.5.2.1.1: headline to every non-negative resource.
                "headline" => available,
                // normal and chat: the most available resource(s).
                _ => {
                    let best = available.iter().map(|t| t.binding.priority).max();
                    available
                        .into_iter()
                        .filter(|t| Some(t.binding.priority) == best)
                        .collect()
                }
            }
        };
        let carbons = carbon_eligible(&el);
        el.remove_children(|c| c.is("private", ns::CARBONS));
        // §8.5.2.2: chat and normal are stored when no resource takes them;
        // here they are made safe in any case before the sender's ack: in
        // custody (copies on a majority of the nodes, see [`custody`]) when
        // the recipient is online, else in its replicated queue (the
        // guard). Headline (and anything else) is never stored.
        let mut custody: Option<(custody::Key, keeper::Plan, String)> = None;
        // Live copies left to the guard (written once it is safe).
        let mut deferred = false;
        let guarded = match notify {
            Some(n) if matches!(ty.as_str(), "normal" | "chat") => {
                let id = stanza_id_of(&el, bare).unwrap_or_else(random_id);
                let stanza = el.to_standalone_xml();
                let plan = if chosen.is_empty() {
                    None
                } else {
                    self.custody_plan(&id, &chosen, stanza.len())
                };
                match plan {
                    Some(plan) => {
                        let key = (bare.to_string(), id);
                        let primary = chosen.iter().any(|t| t.binding.node == self.0.node);
                        // The copies for sessions here wait until the
                        // message is safe (see `custody`); parked before
                        // custody has it, as a release may come at once.
                        // (Safe at once, one node alone: written below.)
                        if plan.needed > 0 {
                            for t in chosen.iter().filter(|t| t.binding.node == self.0.node) {
                                self.park(key.clone(), &t.full, t.binding.session, el.clone());
                            }
                        }
                        let waiter = keeper::Waiter {
                            tx: n.tx,
                            count: n.count,
                        };
                        self.custody_originate(key.clone(), stanza.clone(), &plan, waiter, primary);
                        custody = Some((key, plan, stanza));
                    }
                    None => {
                        // With a live target the cap is doubled: a
                        // recipient that reads keeps its queue short, and a
                        // live copy should not be refused because older
                        // ones are still unacknowledged.
                        let cap = if chosen.is_empty() {
                            self.0.max_offline
                        } else {
                            self.0.max_offline.saturating_mul(2)
                        };
                        // The live copies go once the queue has it: a copy
                        // written before could be acknowledged on a node
                        // that cannot commit the removal, and come again
                        // from the queue at the client's next session.
                        // (Custody could not take it: no room, too few
                        // voters in reach; the message waits for raft.)
                        let live: Vec<(Target, Element)> =
                            chosen.iter().map(|t| ((*t).clone(), el.clone())).collect();
                        self.spawn_guard(bare, id, stanza, &el, cap, n, live);
                        deferred = true;
                    }
                }
                true
            }
            _ => false,
        };
        if chosen.is_empty() {
            return guarded;
        }
        if carbons {
            // XEP-0280 §6: a copy to every other interested resource.
            for t in sessions.iter().filter(|t| {
                t.binding.carbons && t.binding.available && !chosen.iter().any(|c| c.full == t.full)
            }) {
                let _ = self
                    .deliver(t, carbon("received", bare, &t.full, &el))
                    .await;
            }
        }
        if let Some((key, plan, stanza)) = &custody {
            // Keepers first: the recipient's node may ack and tell them
            // "done" before their copy arrives otherwise (see `custody`).
            self.custody_keepers(key, stanza, plan).await;
        }
        if deferred {
            return guarded;
        }
        let last = chosen.len() - 1;
        for (i, t) in chosen.iter().enumerate() {
            if let Some((key, plan, stanza)) = &custody {
                // A session here has its copy parked (above), unless safe
                // at once. The custody copy's xml is what a peer delivers
                // and keeps: serialized once, and its ack confirms its copy.
                if t.binding.node == self.0.node && plan.needed == 0 {
                    let copy = if i == last {
                        std::mem::replace(&mut el, Element::new("message", ns::CLIENT))
                    } else {
                        el.clone()
                    };
                    if self.deliver(t, copy).await.is_err() {
                        self.custody_release(key);
                    }
                } else if t.binding.node != self.0.node {
                    self.0
                        .mesh
                        .send_custody(
                            self.clone(),
                            t.binding.node,
                            &t.full,
                            t.binding.session,
                            plan.tag(key, t.binding.node),
                            stanza.clone(),
                        )
                        .await;
                }
                continue;
            }
            let copy = if i == last {
                std::mem::replace(&mut el, Element::new("message", ns::CLIENT))
            } else {
                el.clone()
            };
            let _ = self.deliver(t, copy).await;
        }
        guarded
    }

    /// Submits the guard of message `el` for `bare` to the sender's
    /// pipeline (see [`inbox`]).
    /// `live`: the copies to write once the queue has it.
    #[allow(clippy::too_many_arguments)]
    fn spawn_guard(
        &self,
        bare: &str,
        id: String,
        stanza: String,
        el: &Element,
        cap: u32,
        notify: Notify,
        live: Vec<(Target, Element)>,
    ) {
        let message = OfflineMessage {
            id,
            stamp_ms: now_ms(),
            stanza,
        };
        let el = el.clone();
        let (tx, count) = (notify.tx, notify.count);
        let router = self.clone();
        notify.pipeline.submit(inbox::GuardJob {
            to: bare.to_string(),
            message,
            max_queue: cap,
            done: Box::new(move |outcome| {
                if outcome == Guarded::Safe && !live.is_empty() {
                    // In the sender's order (outcomes come in order): a
                    // session here at once, the others through the mesh.
                    // A session that is gone or full gets it from the
                    // queue (it is there now).
                    let (here, remote): (Vec<_>, Vec<_>) = live
                        .into_iter()
                        .partition(|(t, _)| t.binding.node == router.node());
                    for (t, copy) in here {
                        let _ = router.deliver_local(&t.full, t.binding.session, copy);
                    }
                    if !remote.is_empty() {
                        tokio::spawn(async move {
                            for (t, copy) in remote {
                                let _ = router.deliver(&t, copy).await;
                            }
                        });
                    }
                }
                let _ = tx.send(GuardDone {
                    count,
                    outcome,
                    message: Some(el),
                });
            }),
        });
    }

    /// Sends `sent` carbons of a message a local client sent (XEP-0280 §7).
    pub async fn sent_carbons(&self, from_full: &str, el: &Element) {
        if !carbon_eligible(el) {
            return;
        }
        let bare = bare_of(from_full);
        for t in self.sessions_of(bare, None) {
            if t.full != from_full && t.binding.carbons && t.binding.available {
                let _ = self.deliver(&t, carbon("sent", bare, &t.full, el)).await;
            }
        }
    }

    /// Sends the error reply for `el` back to its sender.
    pub async fn bounce(&self, el: &Element, err: StanzaError) {
        let Some(mut reply) = err.reply_to(el) else {
            return;
        };
        if reply.attr("from").is_none() {
            reply.set_attr("from", self.0.domain.clone());
        }
        let Some(to) = reply.attr("to").map(str::to_string) else {
            return;
        };
        debug!(to = %to, condition = %err.condition, "bounce");
        match self.binding_of(&to, None) {
            Some(t) => {
                let _ = self.deliver(&t, reply).await;
            }
            None => {
                // The sender is gone; errors are not stored offline.
            }
        }
    }

    /// A stanza the mesh could not hand to `node`: route it again as if
    /// that node's sessions did not exist.
    pub async fn undeliverable(&self, el: Element, node: NodeId) {
        if let Some(key) = queued_key(&el) {
            // In custody here: to the queue now.
            self.custody_release(&key);
            // Its guard has it in the recipient's queue: the recipient's
            // sessions pull it. Routing it live again would make a second
            // copy whenever the first did arrive (a link declared dead
            // after its peer took the envelope).
            return;
        }
        Box::pin(self.route_avoiding(el, Some(node), None)).await;
    }

    /// A stanza a local session could not deliver: route it again without
    /// that session.
    pub async fn undeliverable_here(&self, el: Element) {
        if let Some(key) = queued_key(&el) {
            self.custody_release(&key);
            return;
        }
        Box::pin(self.route_avoiding(el, Some(self.0.node), None)).await;
    }

    /// A stanza from the mesh for a local session; if the session is gone,
    /// route it again without this node's stale binding.
    pub async fn from_mesh(&self, full: &str, session: u64, el: Element) {
        if let Err(el) = self.deliver_local(full, session, el) {
            self.undeliverable_here(el).await;
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

/// Adds the XEP-0359 `<stanza-id/>` for `by` (the recipient's bare JID),
/// replacing any a client put there to spoof it (XEP-0359 §5), unless the
/// message already carries ours (a stored message sent again keeps it).
fn add_stanza_id(el: &mut Element, by: &str) {
    if stanza_id_of(el, by).is_some() {
        return;
    }
    el.push(
        Element::new("stanza-id", ns::SID)
            .with_attr("id", random_id())
            .with_attr("by", by),
    );
}

/// The custody and queue key of a message its guard or custody keeps for
/// its recipient (a `chat` or `normal` message with the recipient's
/// XEP-0359 stanza id): (bare JID, queue id).
pub fn queued_key(el: &Element) -> Option<custody::Key> {
    let bare = bare_of(el.attr("to")?);
    let id = queued_id(el, bare)?;
    Some((bare.to_string(), id))
}

/// The queue id of a message for account `bare`: its XEP-0359 stanza id by
/// `bare`, on a `chat` or `normal` message (the types a guard stores).
pub fn queued_id(el: &Element, bare: &str) -> Option<String> {
    if el.name() != "message" || !matches!(el.attr("type").unwrap_or("normal"), "normal" | "chat") {
        return None;
    }
    stanza_id_of(el, bare)
}

/// The stanza id `by` assigned, if any.
pub fn stanza_id_of(el: &Element, by: &str) -> Option<String> {
    el.children()
        .find(|c| c.is("stanza-id", ns::SID) && c.attr("by") == Some(by))
        .and_then(|c| c.attr("id"))
        .map(str::to_string)
}

/// Removes stanza ids claiming to be from `by` (a client must not set them).
pub fn strip_stanza_ids(el: &mut Element, by: &str) {
    el.remove_children(|c| c.is("stanza-id", ns::SID) && c.attr("by") == Some(by));
}

/// A carbon copy (`received` or `sent`) of `el` for `to` (XEP-0280 §6, §7).
fn carbon(kind: &str, bare: &str, to: &str, el: &Element) -> Element {
    Element::new("message", ns::CLIENT)
        .with_attr("from", bare)
        .with_attr("to", to)
        .with_attr("type", stanza_type(el))
        .with_child(
            Element::new(kind, ns::CARBONS)
                .with_child(Element::new("forwarded", ns::FORWARD).with_child(el.clone())),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanza_ids_are_added_once_and_spoofed_ones_removed() {
        let mut m = Element::new("message", ns::CLIENT).with_child(
            Element::new("stanza-id", ns::SID)
                .with_attr("id", "fake")
                .with_attr("by", "b@x"),
        );
        strip_stanza_ids(&mut m, "b@x");
        assert!(stanza_id_of(&m, "b@x").is_none());
        add_stanza_id(&mut m, "b@x");
        let id = stanza_id_of(&m, "b@x").expect("id");
        add_stanza_id(&mut m, "b@x");
        assert_eq!(stanza_id_of(&m, "b@x"), Some(id), "kept when sent again");
        assert_eq!(m.children().count(), 1);
    }

    #[test]
    fn carbon_rules() {
        let chat = Element::new("message", ns::CLIENT).with_attr("type", "chat");
        assert!(carbon_eligible(&chat));
        let normal = Element::new("message", ns::CLIENT);
        assert!(!carbon_eligible(&normal));
        let normal_body = normal
            .clone()
            .with_child(Element::new("body", ns::CLIENT).with_text("x"));
        assert!(carbon_eligible(&normal_body));
        let private = chat
            .clone()
            .with_child(Element::new("private", ns::CARBONS));
        assert!(!carbon_eligible(&private));
        let c = carbon("received", "a@x", "a@x/2", &chat);
        let fwd = c
            .get_child("received", ns::CARBONS)
            .and_then(|r| r.get_child("forwarded", ns::FORWARD))
            .and_then(|f| f.get_child("message", ns::CLIENT));
        assert!(fwd.is_some());
    }
}
