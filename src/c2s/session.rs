//! A bound client session (RFC 6120 §7 onwards): client stanzas in, routed
//! stanzas out, XEP-0198 stream management (its state is `c2s::sm`; this
//! task does the I/O: acks deferred until what they count is safe, an ack
//! request after each burst, resumption on this node, also while the old
//! connection is half-open), XEP-0352 client state, whitespace keepalives,
//! the replicated queue (messages it holds are delivered once, removed when
//! the client has them, pulled when no live copy came), and the clean end
//! of a session for any reason (unavailable presence, binding removed).
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use starling_raft::command::{Command, Response, SessionBinding};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::negotiate::Resumption;
use super::seen::Seen;
use super::sm::{Outbound, StreamMgmt};
use super::stream::{Conn, ConnError};
use super::Shared;
use crate::clock::now_ms;
use crate::router::takeover::Takeover;
use crate::router::{
    queued_id, GuardDone, Guarded, LocalSession, Notify, ToSession, SESSION_QUEUE,
};
use crate::xmpp::id::random_id;
use crate::xmpp::jid::{BareJid, FullJid};
use crate::xmpp::{ns, Element, StanzaCondition, StanzaError, StreamCondition, StreamError};

/// Guarded messages of one session whose outcome is not known yet, at
/// most; beyond it the session stops reading its client (backpressure
/// while the cluster cannot commit).
const MAX_UNSAFE: usize = 512;
/// Received stanzas behind an unsafe one (kept so a resumption does not
/// handle them twice), at most; beyond it the session stops reading.
const MAX_TAIL: usize = 4096;
pub struct Session {
    pub(crate) shared: Arc<Shared>,
    pub(crate) conn: Conn,
    pub(crate) full: FullJid,
    pub(crate) bare: BareJid,
    pub(crate) id: u64,
    pub(crate) rx: mpsc::Receiver<ToSession>,
    /// Sent initial presence and not unavailable since (RFC 6121 §4.2).
    pub(crate) available: bool,
    pub(crate) priority: i8,
    /// The last available presence (for probes, via the shared table).
    pub(crate) presence: Option<Element>,
    pub(crate) carbons: bool,
    /// XEP-0352: the client is inactive; presence is held back.
    pub(crate) inactive: bool,
    pub(crate) held_presence: HashMap<String, Element>,
    /// JIDs this session sent directed presence to (RFC 6121 §4.6).
    pub(crate) directed: HashSet<String>,
    pub(crate) sm: Option<StreamMgmt>,
    pub(super) resume_rx: Option<mpsc::Receiver<Resumption>>,
    /// A peer asks this resumable session to move there (the client
    /// resumes it on that node; see `router::takeover`).
    pub(super) takeover_rx: Option<mpsc::Receiver<Takeover>>,
    /// Queued messages written to this session (see [`Seen`]).
    pub(crate) seen: Seen,
    /// Queued messages written without stream management: removed from the
    /// queue once the write is flushed.
    pub(super) written_unflushed: Vec<String>,
    /// Where guards report the outcome of this session's messages.
    guard_tx: mpsc::UnboundedSender<GuardDone>,
    /// Commits this session's guards in the order it sent the messages.
    pipeline: crate::router::GuardPipeline,
    pub(super) guard_rx: mpsc::UnboundedReceiver<GuardDone>,
    /// Guards started by this session and not finished.
    pub(super) guards_running: usize,
    /// The XEP-0198 count of the stanza being handled, until a guard takes
    /// it (then the stanza is safe only when the guard says so).
    ticket: Option<u64>,
    /// The queue may hold more for this session than the last pull took.
    more_queued: bool,
    /// A pull found queued messages to write and waits for the node to
    /// confirm quorum contact (`router::contact`): since when, and whether
    /// it was a pull of everything.
    awaiting_contact: Option<(Instant, bool)>,
    /// The delivery hint of the last burst, until a peer acknowledged it.
    pending_hint: Option<tokio::sync::oneshot::Receiver<()>>,
    /// A pull wrote queued messages since the last hint.
    pulled: bool,
    contact_rx: tokio::sync::watch::Receiver<u64>,
    /// The last XEP-0198 number told to peers in a delivery hint.
    pub(super) hinted: u64,
    rate_window: (Instant, u32),
}

pub(super) enum Ended {
    /// The client closed the stream: close ours.
    ClosedByClient,
    /// The connection dropped (may be resumed with XEP-0198).
    Lost,
    /// We end it with this stream error.
    Error(StreamError),
    /// The server is shutting down.
    Shutdown,
    /// A new connection resumes this session while the old one is still
    /// open here (half-open: the client saw it die, this node did not).
    Takeover(Box<Resumption>),
    /// The client resumes this session on another node, which asks for it.
    Move(Takeover),
    /// The session moved to another node (see `handoff`): it ends here
    /// without telling contacts, who still see it there.
    Moved,
}

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
        let id: u64 = rand::random::<u64>() | 1;
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        let router = shared.router.clone();
        if let Some(old) = router.register(
            &full,
            LocalSession {
                id,
                tx,
                since: Instant::now(),
            },
        ) {
            // §7.7.2.2: the older session of the same full JID ends.
            old.kick(crate::router::replaced());
        }
        let binding = SessionBinding {
            node: router.node(),
            session: id,
            priority: 0,
            available: false,
            carbons: false,
            presence: None,
            bound_ms: now_ms(),
        };
        if let Err(e) = commit_binding(&shared, &full, binding).await {
            warn!(error = %e, "cannot commit the session binding");
            router.unregister(&full, id);
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
        let reply = Element::new("iq", ns::CLIENT)
            .with_attr("type", "result")
            .with_opt_attr("id", iq.attr("id"))
            .with_child(
                Element::new("bind", ns::BIND)
                    .with_child(Element::new("jid", ns::BIND).with_text(full.to_string())),
            );
        conn.queue(&reply.to_xml(ns::CLIENT));
        if conn.flush().await.is_err() {
            router.unregister(&full, id);
            let _ = shared
                .cluster
                .write(Command::UnbindSession {
                    full_jid: full.to_string(),
                    node: router.node(),
                    session: id,
                })
                .await;
            return None;
        }
        tracing::Span::current().record("jid", full.to_string());
        info!("session bound");
        // Queued messages the client already had on a stream it could not
        // resume: not written again, and removed from the queue.
        let mut seen = Seen::default();
        if !had.is_empty() {
            debug!(count = had.len(), "skipping queued messages the client had");
        }
        for id in &had {
            seen.insert(id);
        }
        router.delivered(bare, had);
        Some(Session::new(shared, conn, full, id, rx, seen))
    }

    /// A bound session, not yet available, without stream management.
    pub(super) fn new(
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
            takeover_rx: None,
            seen,
            written_unflushed: Vec::new(),
            guard_tx,
            guard_rx,
            pipeline: router.guard_pipeline(),
            guards_running: 0,
            ticket: None,
            more_queued: false,
            awaiting_contact: None,
            pending_hint: None,
            pulled: false,
            contact_rx: router.contact().subscribe(),
            hinted: 0,
            rate_window: (Instant::now(), 0),
        }
    }

    /// The session's binding as it should be in the shared table now.
    pub(crate) fn binding(&self) -> SessionBinding {
        SessionBinding {
            node: self.shared.router.node(),
            session: self.id,
            priority: self.priority,
            available: self.available,
            carbons: self.carbons,
            presence: self.presence.as_ref().map(|p| p.to_standalone_xml()),
            bound_ms: now_ms(),
        }
    }

    /// Commits the session's presence facts to the shared table.
    pub(crate) async fn publish_binding(&self) -> bool {
        // Only this session's own binding: if it was replaced meanwhile,
        // the newer session's binding stays (RFC 6120 §7.7.2.2).
        let cmd = Command::UpdateSession {
            full_jid: self.full.to_string(),
            binding: self.binding(),
        };
        match self.shared.cluster.write(cmd).await {
            Ok(a) => matches!(a.response, Response::SessionUpdated { updated: true }),
            Err(e) => {
                warn!(error = %e, "cannot update the session binding");
                false
            }
        }
    }

    /// Queues a stanza for the client (XEP-0198 counted). A message the
    /// replicated queue holds for this account is written once: a second
    /// copy (live after queued, or queued after live) is dropped.
    pub(crate) fn write_stanza(&mut self, el: Element) {
        let queued_id = queued_id(&el, self.bare.as_str());
        if let Some(id) = &queued_id {
            if !self.seen.insert(id) {
                debug!(id = %id, "second copy of a queued message not written");
                return;
            }
        }
        el.write_to(self.conn.out(), ns::CLIENT);
        match self.sm.as_mut() {
            Some(sm) => sm.on_sent(Outbound { el, queued_id }),
            None => self.written_unflushed.extend(queued_id),
        }
    }

    /// Whether the next pull may take `id` (not written here already).
    pub(crate) fn may_pull(&self, id: &str) -> bool {
        !self.seen.contains(id)
            && !self
                .shared
                .router
                .remover()
                .is_pending(self.bare.as_str(), id)
    }

    /// Room for queued messages before the unacknowledged limit.
    pub(crate) fn pull_room(&self) -> usize {
        let max = self.shared.config.sm_max_unacked;
        match &self.sm {
            // Leave half the window for live stanzas.
            Some(sm) => (max / 2).saturating_sub(sm.unacked_len()),
            None => max / 2,
        }
    }

    /// The last pull stopped at its limit: pull again when there is room.
    pub(crate) fn set_more_queued(&mut self, more: bool) {
        self.more_queued = more;
    }

    /// Whether the node confirmed quorum contact since this session's pull
    /// first found something to write; if not, the pull waits for it (and
    /// is run again, as a pull of everything if `all`, once it comes).
    pub(crate) fn contact_confirmed(&mut self, all: bool) -> bool {
        let (since, all) = match self.awaiting_contact {
            Some((since, was_all)) => (since, was_all || all),
            None => (Instant::now(), all),
        };
        if self.shared.router.contact().confirmed_since(since) {
            self.awaiting_contact = None;
            return true;
        }
        self.awaiting_contact = Some((since, all));
        false
    }

    /// A guard took the current stanza's XEP-0198 count.
    pub(crate) fn guard_notify(&mut self) -> Notify {
        self.guards_running += 1;
        Notify {
            tx: self.guard_tx.clone(),
            count: self.ticket.take(),
            pipeline: self.pipeline.clone(),
        }
    }

    /// The stanza routed with `notify` was not guarded after all.
    pub(crate) fn guard_not_started(&mut self, notify: Notify) {
        self.guards_running -= 1;
        self.ticket = notify.count;
    }

    /// Stanza `count` from the client is safe: send an ack owed for it.
    fn mark_safe(&mut self, count: u64) {
        if let Some(sm) = self.sm.as_mut() {
            if let Some(h) = sm.on_safe(count) {
                self.conn.ack(h);
            }
        }
    }

    pub(super) fn guard_done(&mut self, done: GuardDone) {
        self.guards_running = self.guards_running.saturating_sub(1);
        match done.outcome {
            Guarded::Safe => {}
            Guarded::Refused(err) => {
                // The sender hears of the failure before the ack that
                // counts the message (RFC 6120 §8.3: an error reply).
                if let Some(mut reply) = done.message.as_ref().and_then(|m| err.reply_to(m)) {
                    reply.set_attr("to", self.full.to_string());
                    self.write_stanza(reply);
                }
            }
            // Stopping: the outcome stays unknown, the ack never comes.
            Guarded::Unknown => return,
        }
        if let Some(c) = done.count {
            self.mark_safe(c);
        }
    }

    /// Runs the session until it ends, then cleans up.
    pub async fn run(mut self) {
        let ended = self.run_loop().await;
        self.finish(ended).await;
    }

    async fn run_loop(&mut self) -> Ended {
        loop {
            let ended = self.serve_connection().await;
            match ended {
                Ended::Takeover(r) => {
                    info!("resumed on a new connection while the old one was still open");
                    self.conn.shutdown().await;
                    if self.resume(*r).await {
                        continue;
                    }
                    return Ended::Lost;
                }
                Ended::Move(t) => {
                    // The client is on the other node: this connection is
                    // half-open.
                    self.conn.shutdown().await;
                    if self.move_out(t).await {
                        return Ended::Moved;
                    }
                    match self.wait_for_resumption().await {
                        None => continue,
                        Some(e) => return e,
                    }
                }
                Ended::Lost if self.resume_rx.is_some() => match self.wait_for_resumption().await {
                    None => continue,
                    Some(e) => return e,
                },
                other => return other,
            }
        }
    }

    async fn serve_connection(&mut self) -> Ended {
        let idle = Duration::from_secs(self.shared.config.idle_timeout_secs);
        let write_limit = Duration::from_secs(self.shared.config.write_timeout_secs);
        let mut ticker = tokio::time::interval(idle.min(Duration::from_secs(5)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_read = Instant::now();
        let mut pinged = false;
        let mut shutdown = self.shared.shutdown.clone();
        loop {
            // Backpressure: while too many of this client's messages wait
            // for the cluster, do not read more of them.
            let may_read = self.guards_running < MAX_UNSAFE
                && self.sm.as_ref().is_none_or(|sm| sm.tail_len() < MAX_TAIL);
            let step = tokio::select! {
                _ = stopped(&mut shutdown) => return Ended::Shutdown,
                msg = self.rx.recv() => match msg {
                    Some(m) => self.handle_routed(m),
                    None => Err(Ended::Error(StreamError::new(StreamCondition::InternalServerError))),
                },
                done = self.guard_rx.recv() => {
                    if let Some(d) = done {
                        self.guard_done(d);
                    }
                    Ok(())
                }
                _ = self.contact_rx.changed(), if self.awaiting_contact.is_some() => {
                    if let Some((_, all)) = self.awaiting_contact {
                        if self.available {
                            crate::im::offline::pull(self, all);
                        } else {
                            self.awaiting_contact = None;
                        }
                    }
                    Ok(())
                }
                r = recv_resumption(&mut self.resume_rx) => match r {
                    Some(r) => Err(Ended::Takeover(Box::new(r))),
                    None => {
                        self.resume_rx = None;
                        Ok(())
                    }
                },
                t = recv_takeover(&mut self.takeover_rx) => match t {
                    Some(t) => Err(Ended::Move(t)),
                    None => {
                        self.takeover_rx = None;
                        Ok(())
                    }
                },
                ev = self.conn.next_event(), if may_read => {
                    last_read = Instant::now();
                    pinged = false;
                    match ev {
                        Ok(crate::xmpp::framer::Event::Stanza(el)) => self.handle_client(el).await,
                        Ok(crate::xmpp::framer::Event::StreamClose) => Err(Ended::ClosedByClient),
                        Ok(crate::xmpp::framer::Event::StreamOpen { .. }) => Err(Ended::Error(
                            StreamError::with_text(StreamCondition::NotWellFormed, "unexpected stream header"),
                        )),
                        Err(ConnError::Stream(e)) => Err(Ended::Error(e)),
                        Err(ConnError::Closed) => Err(Ended::ClosedByClient),
                        Err(_) => Err(Ended::Lost),
                    }
                }
                _ = ticker.tick() => {
                    let silent = last_read.elapsed();
                    if silent >= idle * 2 {
                        Err(Ended::Error(StreamError::with_text(
                            StreamCondition::ConnectionTimeout,
                            "no traffic from the client",
                        )))
                    } else {
                        if silent >= idle && !pinged {
                            // A whitespace keepalive (RFC 6120 §4.6.1), or
                            // an ack request when stream management is on.
                            if self.sm.is_some() {
                                self.conn.request_ack();
                            } else {
                                self.conn.queue(" ");
                            }
                            pinged = true;
                        }
                        self.on_tick();
                        Ok(())
                    }
                }
            };
            if let Err(e) = step {
                return e;
            }
            // Batch: take whatever else is already routed to us before
            // writing, so many stanzas go out in one write.
            let mut n = 0;
            while n < 64 {
                match self.rx.try_recv() {
                    Ok(m) => {
                        if let Err(e) = self.handle_routed(m) {
                            return e;
                        }
                    }
                    Err(_) => break,
                }
                n += 1;
            }
            while let Ok(d) = self.guard_rx.try_recv() {
                self.guard_done(d);
            }
            if let Some(sm) = self.sm.as_mut() {
                if sm.unacked_len() > self.shared.config.sm_max_unacked {
                    return Ended::Error(StreamError::with_text(
                        StreamCondition::PolicyViolation,
                        "too many unacknowledged stanzas",
                    ));
                }
                // After each burst, ask for an ack: a client that closes
                // right after reading has then acknowledged what it read.
                if sm.wants_request() {
                    self.conn.request_ack();
                }
            }
            self.share_hints();
            self.await_hint().await;
            if self.conn.flush_within(write_limit).await.is_err() {
                return Ended::Lost;
            }
            self.written_flushed();
        }
    }

    /// Periodic work: overdue acks, forgetting old ids, pulling queued
    /// messages no live copy brought.
    fn on_tick(&mut self) {
        let now = Instant::now();
        if let Some(sm) = self.sm.as_mut() {
            if let Some(h) = sm.overdue_ack(now) {
                self.conn.ack(h);
            }
        }
        let unacked = self
            .sm
            .iter()
            .flat_map(|sm| sm.unacked())
            .filter_map(|o| o.queued_id.as_deref());
        self.seen.prune(unacked, now);
        if self.available {
            crate::im::offline::pull(self, false);
        }
    }

    /// A resumable stream tells the other nodes which queued messages it
    /// is writing, by number (see `router::hints`), before writing them.
    pub(super) fn share_hints(&mut self) {
        let pulled = std::mem::take(&mut self.pulled);
        let Some(sm) = self.sm.as_ref().filter(|sm| sm.resumable()) else {
            return;
        };
        if sm.sent_number() <= self.hinted {
            return;
        }
        let written = sm.queued_after(self.hinted);
        self.hinted = sm.sent_number();
        if written.is_empty() {
            return;
        }
        let hint = crate::router::hints::Hint {
            sm: sm.id().to_string(),
            bare: self.bare.to_string(),
            written,
            acked: sm.acked_number(),
        };
        let ack = self.shared.router.share_hint(&hint);
        if pulled {
            self.pending_hint = Some(ack);
        }
    }

    /// A pull wrote queued messages in this burst (see `await_hint`).
    pub(crate) fn note_pulled(&mut self) {
        self.pulled = true;
    }

    /// Before queued messages go to the client, a peer must have the hint
    /// naming them: were this node killed right after the write, the
    /// client's resumption elsewhere would otherwise not know it had them,
    /// and they would come again from the queue (jepsen-lite
    /// 3n-pause-kill-s1: 2 copies, written within milliseconds of a kill).
    /// Bounded by `router::HINT_WAIT`; only pulls of queued messages wait
    /// (a live copy is not held up: its node's death is what its other
    /// holders' commit covers, and a copy then is rare and allowed).
    pub(super) async fn await_hint(&mut self) {
        if let Some(rx) = self.pending_hint.take() {
            let _ = tokio::time::timeout(crate::router::HINT_WAIT, rx).await;
        }
    }

    /// Without stream management, a queued message counts as delivered
    /// once written to the socket: remove it from the queue.
    fn written_flushed(&mut self) {
        if self.written_unflushed.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut self.written_unflushed);
        self.shared.router.delivered(self.bare.as_str(), ids);
    }

    pub(super) fn handle_routed(&mut self, m: ToSession) -> Result<(), Ended> {
        match m {
            ToSession::Stanza(el) => {
                let el = *el;
                if self.inactive && el.name() == "presence" {
                    // XEP-0352: hold presence while the client is inactive;
                    // only the latest per sender matters.
                    let from = el.attr("from").unwrap_or_default().to_string();
                    self.held_presence.insert(from, el);
                    return Ok(());
                }
                if self.inactive && !self.held_presence.is_empty() && el.name() == "message" {
                    self.flush_held_presence();
                }
                self.write_stanza(el);
                Ok(())
            }
            ToSession::Kick(e) => Err(Ended::Error(e)),
        }
    }

    pub(crate) fn flush_held_presence(&mut self) {
        let held: Vec<Element> = self.held_presence.drain().map(|(_, e)| e).collect();
        for el in held {
            self.write_stanza(el);
        }
    }

    /// Paces a client to `max_stanzas_per_second` by not reading faster.
    async fn pace(&mut self) {
        let max = self.shared.config.max_stanzas_per_second;
        let (start, count) = &mut self.rate_window;
        if start.elapsed() >= Duration::from_secs(1) {
            *start = Instant::now();
            *count = 0;
        }
        *count += 1;
        if *count > max {
            let wait = Duration::from_secs(1).saturating_sub(start.elapsed());
            tokio::time::sleep(wait).await;
            self.rate_window = (Instant::now(), 0);
        }
    }

    async fn handle_client(&mut self, mut el: Element) -> Result<(), Ended> {
        match (el.name(), el.ns()) {
            ("r", ns::SM) if self.sm.is_some() => {
                if let Some(h) = self
                    .sm
                    .as_mut()
                    .and_then(|sm| sm.on_request(Instant::now()))
                {
                    self.conn.ack(h);
                }
                return Ok(());
            }
            ("a", ns::SM) if self.sm.is_some() => {
                let h = el.attr("h").and_then(|h| h.parse::<u32>().ok());
                return match h {
                    Some(h) => self.acked(h),
                    None => Err(Ended::Error(StreamError::with_text(
                        StreamCondition::UndefinedCondition,
                        "bad <a/>",
                    ))),
                };
            }
            ("enable", ns::SM) => {
                self.enable_sm(&el);
                return Ok(());
            }
            ("active", ns::CSI) => {
                self.inactive = false;
                self.flush_held_presence();
                return Ok(());
            }
            ("inactive", ns::CSI) => {
                self.inactive = true;
                return Ok(());
            }
            ("message" | "presence" | "iq", ns::CLIENT) => {}
            _ => {
                // RFC 6120 §4.9.3.23.
                return Err(Ended::Error(StreamError::with_text(
                    StreamCondition::UnsupportedStanzaType,
                    format!(
                        "<{}/> in {} is not a stanza this server knows",
                        el.name(),
                        el.ns()
                    ),
                )));
            }
        }
        // XEP-0198 §5: after a resumption the client sends again what our
        // `h` did not count yet (its guard was still running): it was
        // handled, and is not routed twice.
        if let Some(sm) = self.sm.as_mut() {
            if sm.is_resent(el.attr("id")) {
                debug!(id = ?el.attr("id"), "stanza sent again after resumption skipped");
                return Ok(());
            }
        }
        self.pace().await;
        // RFC 6120 §8.1.2.1: the server stamps `from` with the full JID; a
        // client that claims another is refused with invalid-from.
        if let Some(from) = el.attr("from") {
            if from != self.full.as_str() && from != self.bare.as_str() {
                let ok = jid::Jid::new(from)
                    .map(|j| j == self.full || j == self.bare)
                    .unwrap_or(false);
                if !ok {
                    return Err(Ended::Error(StreamError::with_text(
                        StreamCondition::InvalidFrom,
                        "the from address does not match this session",
                    )));
                }
            }
        }
        el.set_attr("from", self.full.to_string());
        // Counted now, safe when its handler is done, or for a guarded
        // message, when its guard is (`guard_notify` takes the ticket).
        let id = el.attr("id").map(str::to_string);
        self.ticket = self.sm.as_mut().map(|sm| sm.on_received(false, id));
        crate::im::handle_stanza(self, el).await;
        if let Some(c) = self.ticket.take() {
            self.mark_safe(c);
        }
        Ok(())
    }

    fn enable_sm(&mut self, el: &Element) {
        if self.sm.is_some() {
            self.conn.queue(&format!(
                "<failed xmlns='{}'><unexpected-request xmlns='{}'/></failed>",
                ns::SM,
                ns::STANZA_ERRORS
            ));
            return;
        }
        let resume = matches!(el.attr("resume"), Some("true" | "1"));
        let id = random_id();
        if resume {
            let (tx, resume_rx) = mpsc::channel(1);
            let mut map = self
                .shared
                .resumable
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            map.insert(id.clone(), (self.bare.to_string(), tx));
            self.resume_rx = Some(resume_rx);
            let (tx, takeover_rx) = mpsc::channel(1);
            self.shared
                .router
                .takeovers()
                .register(&id, self.bare.as_str(), tx);
            self.takeover_rx = Some(takeover_rx);
        }
        let max = self.shared.config.sm_resume_timeout_secs;
        let reply = if resume {
            format!(
                "<enabled xmlns='{}' id='{id}' resume='true' max='{max}'/>",
                ns::SM
            )
        } else {
            format!("<enabled xmlns='{}' id='{id}'/>", ns::SM)
        };
        self.conn.queue(&reply);
        // Stanzas written before SM was on count as delivered (their
        // queued copies go once the write is flushed).
        self.sm = Some(StreamMgmt::new(id, resume));
    }

    /// The client acknowledged everything up to its count `h`: what it has
    /// leaves the replicated queue, and a pull that stopped at its limit
    /// goes on.
    fn acked(&mut self, h: u32) -> Result<(), Ended> {
        let Some(sm) = self.sm.as_mut() else {
            return Ok(());
        };
        let released = sm.on_ack(h).map_err(|e| {
            Ended::Error(StreamError::with_text(
                StreamCondition::UndefinedCondition,
                e.to_string(),
            ))
        })?;
        let ids = released.into_iter().filter_map(|o| o.queued_id).collect();
        self.shared.router.delivered(self.bare.as_str(), ids);
        if self.more_queued && self.available && self.pull_room() > 0 {
            crate::im::offline::pull(self, true);
        }
        Ok(())
    }

    /// Detached (XEP-0198 §5): keep the session for `sm_resume_timeout_secs`
    /// while stanzas keep arriving. `None` when a new connection resumed it
    /// here; else how it ended (not resumed in time, or moved to the node
    /// the client resumed it on).
    async fn wait_for_resumption(&mut self) -> Option<Ended> {
        let timeout = Duration::from_secs(self.shared.config.sm_resume_timeout_secs);
        let deadline = tokio::time::Instant::now() + timeout;
        debug!("session detached, waiting for resumption");
        let mut shutdown = self.shared.shutdown.clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Some(Ended::Lost),
                _ = stopped(&mut shutdown) => return Some(Ended::Lost),
                r = recv_resumption(&mut self.resume_rx) => {
                    let Some(r) = r else { return Some(Ended::Lost) };
                    return if self.resume(r).await { None } else { Some(Ended::Lost) };
                }
                t = recv_takeover(&mut self.takeover_rx) => {
                    let Some(t) = t else {
                        self.takeover_rx = None;
                        continue;
                    };
                    if self.move_out(t).await {
                        return Some(Ended::Moved);
                    }
                }
                m = self.rx.recv() => match m {
                    Some(ToSession::Stanza(el)) => self.write_stanza(*el),
                    Some(ToSession::Kick(_)) | None => return Some(Ended::Lost),
                },
                d = self.guard_rx.recv() => {
                    if let Some(d) = d {
                        self.guard_done(d);
                    }
                }
            }
            // Nothing can be written while detached.
            self.conn.out().clear();
        }
    }

    async fn resume(&mut self, r: Resumption) -> bool {
        self.conn = r.conn;
        let Some(sm) = self.sm.as_mut() else {
            return false;
        };
        let reply = format!(
            "<resumed xmlns='{}' h='{}' previd='{}'/>",
            ns::SM,
            sm.h(),
            sm.id()
        );
        let (released, again) = match sm.on_resume(r.h) {
            Ok(x) => x,
            Err(e) => {
                let _ = self
                    .conn
                    .fail(
                        &StreamError::with_text(StreamCondition::UndefinedCondition, e.to_string()),
                        &self.shared.domain,
                    )
                    .await;
                return false;
            }
        };
        self.conn.queue(&reply);
        let ids = released.into_iter().filter_map(|o| o.queued_id).collect();
        self.shared.router.delivered(self.bare.as_str(), ids);
        // Retransmit what the client did not get (XEP-0198 §5), then ask.
        for el in &again {
            el.write_to(self.conn.out(), ns::CLIENT);
        }
        if self.sm.as_mut().is_some_and(|sm| sm.wants_request()) {
            self.conn.request_ack();
        }
        info!(resent = again.len(), "session resumed");
        let limit = Duration::from_secs(self.shared.config.write_timeout_secs);
        self.conn.flush_within(limit).await.is_ok()
    }

    /// Ends the session: stream closed or failed, binding removed, contacts
    /// told. Messages it did not deliver stay in the replicated queue (each
    /// was written there by its guard) for the next session of the account
    /// (RFC 6121 §4.5.2, XEP-0198 §5).
    async fn finish(mut self, ended: Ended) {
        match &ended {
            Ended::ClosedByClient => {
                // What the client acknowledged leaves its queue before the
                // stream is closed: logging in again at once does not bring
                // it a second time.
                let remover = self.shared.router.remover().clone();
                remover
                    .sync(self.bare.as_str(), Duration::from_secs(2))
                    .await;
                self.conn.close().await
            }
            Ended::Error(e) => {
                debug!(error = %e, "ending session");
                self.conn.fail(e, &self.shared.domain).await
            }
            Ended::Shutdown => {
                self.conn
                    .fail(
                        &StreamError::new(StreamCondition::SystemShutdown),
                        &self.shared.domain,
                    )
                    .await
            }
            Ended::Lost | Ended::Takeover(_) | Ended::Move(_) | Ended::Moved => {
                self.conn.shutdown().await
            }
        }
        let router = self.shared.router.clone();
        if let Some(sm) = &self.sm {
            self.unregister_resumable(sm.id().to_string());
        }
        router.unregister(&self.full, self.id);
        // A moved session's contacts see it on its new node: no
        // unavailable presence (RFC 6121 §4.5 is for a session that ends).
        if self.available && !matches!(ended, Ended::Moved) {
            crate::im::presence::broadcast_unavailable(&mut self).await;
        }
        self.unbind().await;
        // Stanzas routed to us but never acknowledged (or never written).
        // Messages for the account are in its replicated queue already (or
        // their sender was never acknowledged): nothing to do. Other
        // routable messages go to another resource if there is one.
        let mut leftovers: Vec<Element> = Vec::new();
        if let Some(sm) = self.sm.take() {
            leftovers.extend(
                sm.into_unacked()
                    .into_iter()
                    .filter(|o| o.queued_id.is_none())
                    .map(|o| o.el),
            );
        }
        self.rx.close();
        while let Ok(m) = self.rx.try_recv() {
            if let ToSession::Stanza(el) = m {
                if queued_id(&el, self.bare.as_str()).is_none() {
                    leftovers.push(*el);
                }
            }
        }
        for el in leftovers {
            let t = el.attr("type").unwrap_or("normal");
            if el.name() == "message" && matches!(t, "normal" | "chat") {
                router.undeliverable_here(el).await;
            }
        }
        // Copies in custody for the account here go to its queue now, for
        // its next session wherever it logs in (see `router::custody`).
        router.custody_release_account(self.bare.as_str());
        info!(ended = ended.kind(), "session ended");
    }
}

impl Session {
    /// Removes this session's binding, retrying (the command is idempotent)
    /// so no ghost resource is left to answer probes and take messages. If
    /// the cluster stays unavailable, the leader's liveness check or this
    /// node's reconciliation at its next start removes it.
    async fn unbind(&self) {
        let cmd = Command::UnbindSession {
            full_jid: self.full.to_string(),
            node: self.shared.router.node(),
            session: self.id,
        };
        let mut wait = Duration::from_millis(50);
        for _ in 0..8 {
            match self.shared.cluster.write(cmd.clone()).await {
                Ok(_) => return,
                Err(e) => {
                    debug!(error = %e, "unbind not committed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }
        warn!("could not remove the session binding");
    }
}

/// The next resumption for a resumable session (pending forever for one
/// that is not resumable).
/// Commits `binding` for `full` and kicks the session it replaced, if that
/// is another session: RFC 6120 §7.7.2.2, the older session of the same
/// full JID ends (on whatever node it lives).
pub(super) async fn commit_binding(
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

async fn recv_resumption(rx: &mut Option<mpsc::Receiver<Resumption>>) -> Option<Resumption> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The next takeover request from a peer (pending forever for a session
/// that is not resumable).
async fn recv_takeover(rx: &mut Option<mpsc::Receiver<Takeover>>) -> Option<Takeover> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the server shuts down (the watch guard is not kept).
async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

impl Ended {
    fn kind(&self) -> &'static str {
        match self {
            Ended::ClosedByClient => "closed",
            Ended::Lost => "lost",
            Ended::Error(_) => "error",
            Ended::Shutdown => "shutdown",
            Ended::Takeover(_) => "taken over",
            Ended::Move(_) | Ended::Moved => "moved to another node",
        }
    }
}
