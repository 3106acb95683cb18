//! A bound client session (RFC 6120 §7 onwards): client stanzas in, routed
//! stanzas out, XEP-0198 stream management (its state is `c2s::sm`; this
//! task does the I/O: acks deferred until what they count is safe, an ack
//! request after each burst, resumption on this node, also while the old
//! connection is half-open), XEP-0352 client state, whitespace keepalives,
//! the replicated queue (messages it holds are delivered once, removed when
//! the client has them, pulled when no live copy came), and the clean end
//! of a session for any reason (unavailable presence, binding removed).
//!
//! This file is the session's loop and its shared helpers; binding
//! (`bind`, and XEP-0386 Bind 2 in `bind2`), the client's side (`client`), local resumption (`resume`) and
//! the end (`end`) are its child modules.
mod bind;
mod bind2;
mod client;
mod effects;
mod end;
mod pull;
mod resume;

pub(in crate::c2s) use bind::commit_binding;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use starling_raft::command::{Command, Response, SessionBinding};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::negotiate::Resumption;
use super::seen::{RecentlyAcked, Seen};
use super::sm::{Outbound, StreamMgmt};
use super::stream::{Conn, ConnError};
use super::Shared;
use crate::clock::now_ms;
use crate::router::takeover::Takeover;
use crate::router::{queued_id, GuardDone, Guarded, Notify, ToSession};
use crate::xmpp::jid::{BareJid, FullJid};
use crate::xmpp::{ns, Element, StreamCondition, StreamError};

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
    /// The admission slot of the connection this session runs on (the
    /// one it was bound on, then the one it last resumed on): given back
    /// when that connection is replaced or the session ends.
    pub(super) admission: Option<super::Ticket>,
    /// A peer asks this resumable session to move there (the client
    /// resumes it on that node; see `router::takeover`).
    pub(super) takeover_rx: Option<mpsc::Receiver<Takeover>>,
    /// Queued messages written to this session (see [`Seen`]).
    pub(crate) seen: Seen,
    /// What the client acknowledged lately (see [`RecentlyAcked`]).
    pub(crate) recently_acked: RecentlyAcked,
    /// Queued messages written without stream management: removed from the
    /// queue once the write is flushed.
    pub(super) written_unflushed: Vec<String>,
    /// Where guards report the outcome of this session's messages.
    guard_tx: mpsc::UnboundedSender<GuardDone>,
    /// Commits this session's guards in the order it sent the messages.
    pipeline: crate::router::GuardPipeline,
    pub(super) guard_rx: mpsc::UnboundedReceiver<GuardDone>,
    /// Guards started by this session and not finished (an archive commit
    /// counts as one: see `archive_started`).
    pub(super) guards_running: usize,
    /// XEP-0198 counts of messages that wait for more than one outcome
    /// (their guard and their archive commit, `router::archiver`): how
    /// many `Safe` outcomes each still needs before it is safe.
    outcomes_owed: HashMap<u64, u8>,
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
        self.shared
            .router
            .metrics()
            .stanzas_out
            .inc(crate::metrics::StanzaKind::of(el.name()));
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

    /// The message routed with `notify` went to the archiver too: its
    /// count is safe only once both its guard (if any) and its archive
    /// commit said so.
    pub(crate) fn archive_started(&mut self, notify: &Notify) {
        self.guards_running += 1;
        if let Some(c) = notify.count {
            *self.outcomes_owed.entry(c).or_insert(1) += 1;
        }
    }

    /// The stanza routed with `notify` was not guarded after all.
    pub(crate) fn guard_not_started(&mut self, notify: Notify) {
        self.guards_running -= 1;
        match notify.count.and_then(|c| self.outcomes_owed.get_mut(&c)) {
            // Archived but not guarded: the archive commit alone decides.
            Some(owed) => *owed -= 1,
            None => self.ticket = notify.count,
        }
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
            Guarded::Safe => {
                if let Some(c) = done.count {
                    if let Some(owed) = self.outcomes_owed.get_mut(&c) {
                        *owed = owed.saturating_sub(1);
                        if *owed > 0 {
                            return;
                        }
                        self.outcomes_owed.remove(&c);
                    }
                }
            }
            Guarded::Refused(err) => {
                // Safe as far as the archive goes: the refusal decides.
                if let Some(c) = done.count {
                    self.outcomes_owed.remove(&c);
                }
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
                            self.pull(all);
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
                    // A WebSocket's pings and pongs count as traffic too.
                    if let Some(t) = self.conn.last_heard().filter(|t| *t > last_read) {
                        last_read = t;
                        pinged = false;
                    }
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
            self.pull(false);
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
                if self.inactive {
                    self.push_if_worthy(&el);
                }
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

    /// XEP-0357: a message reached this session while it is dormant
    /// (detached or inactive): its node decides the pushes of the
    /// registrations it enabled (`router::push`). A second copy of a
    /// queued message (not written) makes none.
    pub(super) fn push_if_worthy(&self, el: &Element) {
        if el.name() != "message" {
            return;
        }
        if queued_id(el, self.bare.as_str()).is_some_and(|id| self.seen.contains(&id)) {
            return;
        }
        self.shared.router.push_for_session(self.full.as_str(), el);
    }

    pub(crate) fn flush_held_presence(&mut self) {
        let held: Vec<Element> = self.held_presence.drain().map(|(_, e)| e).collect();
        for el in held {
            self.write_stanza(el);
        }
    }
}

/// The next resumption for a resumable session (pending forever for one
/// that is not resumable).
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
