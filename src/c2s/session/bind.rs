//! Resource binding (RFC 6120 §7): a new session for an authenticated
//! stream, its binding committed to the shared table, and the session it
//! replaces ended (§7.7.2.2).
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use starling_raft::command::{Command, Response, SessionBinding};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::Session;
use crate::c2s::seen::Seen;
use crate::c2s::stream::Conn;
use crate::c2s::Shared;
use crate::clock::now_ms;
use crate::router::{LocalSession, ToSession, SESSION_QUEUE};
use crate::xmpp::id::random_id;
use crate::xmpp::jid::FullJid;
use crate::xmpp::{ns, Element, StanzaCondition, StanzaError};

impl Session {
    /// Binds `bare`/resource for the bind request `iq` (RFC 6120 §7), and
    /// commits the binding. `None`: the stream was closed with an error.
    pub async fn bind(
        shared: Arc<Shared>,
        mut conn: Conn,
        bare: &str,
        iq: Element,
        had: Vec<String>,
    ) -> Option<Session> {
        let requested = iq
            .get_child("bind", ns::BIND)
            .and_then(|b| b.get_child("resource", ns::BIND))
            .map(|r| r.text())
            .filter(|r| !r.trim().is_empty());
        let resource = requested.unwrap_or_else(random_id);
        // §7.7.2.1: a resource that fails resourceprep is bad-request.
        let full = match FullJid::new(&format!("{bare}/{resource}")) {
            Ok(j) => j,
            Err(e) => {
                let reply = StanzaError::with_text(StanzaCondition::BadRequest, e.to_string())
                    .reply_to(&iq)
                    .unwrap_or(iq);
                let _ = conn.send(&reply.to_xml(ns::CLIENT)).await;
                conn.close().await;
                return None;
            }
        };
        let (id, rx) = match attach(&shared, &full, false).await {
            Ok(x) => x,
            Err(()) => {
                let reply = StanzaError::with_text(
                    StanzaCondition::InternalServerError,
                    "the cluster cannot bind sessions right now",
                )
                .reply_to(&iq)
                .unwrap_or(iq);
                let _ = conn.send(&reply.to_xml(ns::CLIENT)).await;
                conn.close().await;
                return None;
            }
        };
        let reply = Element::new("iq", ns::CLIENT)
            .with_attr("type", "result")
            .with_opt_attr("id", iq.attr("id"))
            .with_child(
                Element::new("bind", ns::BIND)
                    .with_child(Element::new("jid", ns::BIND).with_text(full.to_string())),
            );
        conn.queue(&reply.to_xml(ns::CLIENT));
        Session::bound(shared, conn, full, id, rx, had)
            .flushed()
            .await
    }

    /// The session of `full`, bound (see [`attach`]) as session `id`, its
    /// answer queued on `conn`. `had`: queued messages the client already
    /// had on a stream it could not resume: not written again, and removed
    /// from the queue. Removed for good at once (a tombstone): the copy
    /// custody holds elsewhere for the dead node's session may be committed
    /// to the queue only later, and were this node to die before that, the
    /// client's next session would get it again (jepsen-lite
    /// 3n-kill-recipient-s1: the keeper committed it after the node that
    /// knew the client had it was killed too).
    pub(super) fn bound(
        shared: Arc<Shared>,
        conn: Conn,
        full: FullJid,
        id: u64,
        rx: mpsc::Receiver<ToSession>,
        had: Vec<String>,
    ) -> Session {
        let mut seen = Seen::default();
        if !had.is_empty() {
            debug!(count = had.len(), "skipping queued messages the client had");
        }
        let bare = full.to_bare();
        for id in &had {
            seen.insert(id);
            shared.router.remover().tombstone(bare.as_str(), id.clone());
        }
        shared.router.delivered(bare.as_str(), had);
        Session::new(shared, conn, full, id, rx, seen)
    }

    /// Sends what a just-bound session queued (its bind answer); a session
    /// whose client is gone already is unbound again.
    pub(super) async fn flushed(mut self) -> Option<Session> {
        if self.conn.flush().await.is_err() {
            let router = &self.shared.router;
            router.unregister(&self.full, self.id);
            let _ = self
                .shared
                .cluster
                .write(Command::UnbindSession {
                    full_jid: self.full.to_string(),
                    node: router.node(),
                    session: self.id,
                })
                .await;
            return None;
        }
        tracing::Span::current().record("jid", self.full.to_string());
        info!("session bound");
        Some(self)
    }

    /// A bound session, not yet available, without stream management.
    pub(in crate::c2s) fn new(
        shared: Arc<Shared>,
        conn: Conn,
        full: FullJid,
        id: u64,
        rx: mpsc::Receiver<ToSession>,
        seen: Seen,
    ) -> Session {
        let (guard_tx, guard_rx) = mpsc::unbounded_channel();
        let router = shared.router.clone();
        Session {
            shared,
            conn,
            bare: full.to_bare(),
            full,
            id,
            rx,
            available: false,
            priority: 0,
            presence: None,
            carbons: false,
            inactive: false,
            held_presence: HashMap::new(),
            directed: HashSet::new(),
            sm: None,
            resume_rx: None,
            admission: None,
            takeover_rx: None,
            seen,
            written_unflushed: Vec::new(),
            guard_tx,
            guard_rx,
            pipeline: router.guard_pipeline(),
            guards_running: 0,
            outcomes_owed: HashMap::new(),
            ticket: None,
            recently_acked: Default::default(),
            more_queued: false,
            awaiting_contact: None,
            pending_hint: None,
            pulled: false,
            contact_rx: router.contact().subscribe(),
            hinted: 0,
            rate_window: (Instant::now(), 0),
        }
    }
}

/// Registers a new session of `full` on this node (ending a local one of
/// the same full JID, RFC 6120 §7.7.2.2) and commits its binding, not yet
/// available, with XEP-0280 carbons on when `carbons`. `Err`: the cluster
/// could not commit it (logged; nothing is left registered).
pub(super) async fn attach(
    shared: &Shared,
    full: &FullJid,
    carbons: bool,
) -> Result<(u64, mpsc::Receiver<ToSession>), ()> {
    let id: u64 = rand::random::<u64>() | 1;
    let (tx, rx) = mpsc::channel(SESSION_QUEUE);
    let router = &shared.router;
    let local = LocalSession {
        id,
        tx,
        since: Instant::now(),
    };
    if let Some(old) = router.register(full, local) {
        // §7.7.2.2: the older session of the same full JID ends.
        old.kick(crate::router::replaced());
    }
    let binding = SessionBinding {
        node: router.node(),
        session: id,
        priority: 0,
        available: false,
        carbons,
        presence: None,
        bound_ms: now_ms(),
    };
    if let Err(e) = commit_binding(shared, full, binding).await {
        warn!(error = %e, "cannot commit the session binding");
        router.unregister(full, id);
        return Err(());
    }
    Ok((id, rx))
}

/// Commits `binding` for `full` and kicks the session it replaced, if that
/// is another session: RFC 6120 §7.7.2.2, the older session of the same
/// full JID ends (on whatever node it lives).
pub(in crate::c2s) async fn commit_binding(
    shared: &Shared,
    full: &FullJid,
    binding: SessionBinding,
) -> Result<(), starling_raft::ProposeError> {
    let id = binding.session;
    let applied = shared
        .cluster
        .write(Command::BindSession {
            full_jid: full.to_string(),
            binding,
        })
        .await?;
    if let Response::Bound {
        replaced: Some(old),
    } = applied.response
    {
        if old.session != id {
            shared.router.kick(full.as_str(), &old).await;
        }
    }
    Ok(())
}
