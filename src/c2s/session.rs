//! A bound client session (RFC 6120 §7 onwards): client stanzas in, routed
//! stanzas out, XEP-0198 stream management (acks, resumption on this node,
//! unacknowledged messages to the offline queue when the session is lost),
//! XEP-0352 client state, whitespace keepalives, and the clean end of a
//! session for any reason (unavailable presence, binding removed).
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use starling_raft::command::{Command, Response, SessionBinding};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::negotiate::Resumption;
use super::stream::{Conn, ConnError};
use super::Shared;
use crate::router::{now_ms, random_id, LocalSession, ToSession, SESSION_QUEUE};
use crate::xmpp::{ns, Element, StanzaCondition, StanzaError, StreamCondition, StreamError};

/// XEP-0198 state of a session.
pub(crate) struct Sm {
    pub id: String,
    /// Stanzas received from the client and handled (our `h`).
    pub inbound: u32,
    /// Stanzas sent to the client.
    pub outbound: u32,
    /// Sent and not yet acknowledged, oldest first; the count of the first
    /// is `outbound - unacked.len() + 1`. The flag marks stanzas that came
    /// from the offline queue (still stored there until acknowledged).
    pub unacked: VecDeque<(Element, bool)>,
    pub resume_rx: mpsc::Receiver<Resumption>,
}

pub struct Session {
    pub(crate) shared: Arc<Shared>,
    pub(crate) conn: Conn,
    pub(crate) full: String,
    pub(crate) bare: String,
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
    pub(crate) sm: Option<Sm>,
    /// Offline queue entries sent: (outbound count when sent, queue seq).
    pub(crate) offline_sent: VecDeque<(u32, u64)>,
    /// Highest offline sequence number already handed to this session.
    pub(crate) offline_cursor: u64,
    rate_window: (Instant, u32),
}

enum Ended {
    /// The client closed the stream: close ours.
    ClosedByClient,
    /// The connection dropped (may be resumed with XEP-0198).
    Lost,
    /// We end it with this stream error.
    Error(StreamError),
    /// The server is shutting down.
    Shutdown,
}

impl Session {
    /// Binds `bare`/resource for the bind request `iq` (RFC 6120 §7), and
    /// commits the binding. `None`: the stream was closed with an error.
    pub async fn bind(
        shared: Arc<Shared>,
        mut conn: Conn,
        bare: &str,
        iq: Element,
    ) -> Option<Session> {
        let requested = iq
            .get_child("bind", ns::BIND)
            .and_then(|b| b.get_child("resource", ns::BIND))
            .map(|r| r.text())
            .filter(|r| !r.trim().is_empty());
        let resource = requested.unwrap_or_else(random_id);
        // §7.7.2.1: a resource that fails resourceprep is bad-request.
        let full = match jid::FullJid::new(&format!("{bare}/{resource}")) {
            Ok(j) => j.to_string(),
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
            let _ = old.tx.try_send(ToSession::Kick(crate::router::replaced()));
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
        let res = shared
            .cluster
            .write(Command::BindSession {
                full_jid: full.clone(),
                binding,
            })
            .await;
        match res {
            Ok(a) => {
                if let Response::Bound {
                    replaced: Some(old),
                } = a.response
                {
                    if old.session != id {
                        router.kick(&full, &old).await;
                    }
                }
            }
            Err(e) => {
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
        }
        let reply = Element::new("iq", ns::CLIENT)
            .with_attr("type", "result")
            .with_opt_attr("id", iq.attr("id"))
            .with_child(
                Element::new("bind", ns::BIND)
                    .with_child(Element::new("jid", ns::BIND).with_text(full.clone())),
            );
        conn.queue(&reply.to_xml(ns::CLIENT));
        if conn.flush().await.is_err() {
            router.unregister(&full, id);
            let _ = shared
                .cluster
                .write(Command::UnbindSession {
                    full_jid: full,
                    node: router.node(),
                    session: id,
                })
                .await;
            return None;
        }
        tracing::Span::current().record("jid", full.as_str());
        info!("session bound");
        Some(Session {
            shared,
            conn,
            bare: bare.to_string(),
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
            offline_sent: VecDeque::new(),
            offline_cursor: 0,
            rate_window: (Instant::now(), 0),
        })
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
        let cmd = Command::BindSession {
            full_jid: self.full.clone(),
            binding: self.binding(),
        };
        match self.shared.cluster.write(cmd).await {
            Ok(_) => true,
            Err(e) => {
                warn!(error = %e, "cannot update the session binding");
                false
            }
        }
    }

    /// Queues a stanza for the client (XEP-0198 counted).
    pub(crate) fn write_stanza(&mut self, el: Element) {
        self.write_stanza_from(el, false)
    }

    pub(crate) fn write_stanza_from(&mut self, el: Element, from_offline: bool) {
        el.write_to(self.conn.out(), ns::CLIENT);
        if let Some(sm) = self.sm.as_mut() {
            sm.outbound = sm.outbound.wrapping_add(1);
            sm.unacked.push_back((el, from_offline));
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
                Ended::Lost if self.sm.is_some() => {
                    if self.wait_for_resumption().await {
                        continue;
                    }
                    return Ended::Lost;
                }
                other => return other,
            }
        }
    }

    async fn serve_connection(&mut self) -> Ended {
        let idle = Duration::from_secs(self.shared.config.idle_timeout_secs);
        let mut ticker = tokio::time::interval(idle.min(Duration::from_secs(5)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_read = Instant::now();
        let mut pinged = false;
        let mut shutdown = self.shared.shutdown.clone();
        loop {
            let step = tokio::select! {
                _ = stopped(&mut shutdown) => return Ended::Shutdown,
                msg = self.rx.recv() => match msg {
                    Some(m) => self.handle_routed(m),
                    None => Err(Ended::Error(StreamError::new(StreamCondition::InternalServerError))),
                },
                ev = self.conn.next_event() => {
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
                                self.conn.queue(&format!("<r xmlns='{}'/>", ns::SM));
                            } else {
                                self.conn.queue(" ");
                            }
                            pinged = true;
                        }
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
            if let Some(sm) = &self.sm {
                if sm.unacked.len() > self.shared.config.sm_max_unacked {
                    return Ended::Error(StreamError::with_text(
                        StreamCondition::PolicyViolation,
                        "too many unacknowledged stanzas",
                    ));
                }
                if !sm.unacked.is_empty() && self.conn.pending_output() > 0 && sm.outbound % 5 == 0
                {
                    self.conn.queue(&format!("<r xmlns='{}'/>", ns::SM));
                }
            }
            if self.conn.flush().await.is_err() {
                return Ended::Lost;
            }
            self.finish_offline_without_sm().await;
        }
    }

    fn handle_routed(&mut self, m: ToSession) -> Result<(), Ended> {
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
                let h = self.sm.as_ref().map(|s| s.inbound).unwrap_or(0);
                self.conn.queue(&format!("<a xmlns='{}' h='{h}'/>", ns::SM));
                return Ok(());
            }
            ("a", ns::SM) if self.sm.is_some() => {
                let h = el.attr("h").and_then(|h| h.parse::<u32>().ok());
                return match h {
                    Some(h) => self.acked(h).await,
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
        self.pace().await;
        if let Some(sm) = self.sm.as_mut() {
            sm.inbound = sm.inbound.wrapping_add(1);
        }
        // RFC 6120 §8.1.2.1: the server stamps `from` with the full JID; a
        // client that claims another is refused with invalid-from.
        if let Some(from) = el.attr("from") {
            if from != self.full && from != self.bare {
                let ok = jid::Jid::new(from)
                    .map(|j| j.as_str() == self.full || j.as_str() == self.bare)
                    .unwrap_or(false);
                if !ok {
                    return Err(Ended::Error(StreamError::with_text(
                        StreamCondition::InvalidFrom,
                        "the from address does not match this session",
                    )));
                }
            }
        }
        el.set_attr("from", self.full.clone());
        crate::im::handle_stanza(self, el).await;
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
        let (tx, resume_rx) = mpsc::channel(1);
        if resume {
            let mut map = self
                .shared
                .resumable
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            map.insert(id.clone(), (self.bare.clone(), tx));
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
        // Offline messages sent before SM was on count as delivered.
        self.sm = Some(Sm {
            id,
            inbound: 0,
            outbound: 0,
            unacked: VecDeque::new(),
            resume_rx,
        });
    }

    /// The client acknowledged everything up to its count `h`.
    async fn acked(&mut self, h: u32) -> Result<(), Ended> {
        let Some(sm) = self.sm.as_mut() else {
            return Ok(());
        };
        let unacked = sm.unacked.len() as u32;
        let first = sm.outbound.wrapping_sub(unacked);
        let n = h.wrapping_sub(first);
        if n > unacked {
            // XEP-0198 §4: acknowledging more than was sent.
            return Err(Ended::Error(StreamError::with_text(
                StreamCondition::UndefinedCondition,
                "acknowledged stanzas that were never sent",
            )));
        }
        for _ in 0..n {
            sm.unacked.pop_front();
        }
        // Offline entries acknowledged: remove them from the queue.
        let mut up_to = None;
        while let Some((count, seq)) = self.offline_sent.front().copied() {
            if h.wrapping_sub(count) < u32::MAX / 2 {
                up_to = Some(seq);
                self.offline_sent.pop_front();
            } else {
                break;
            }
        }
        if let Some(up_to) = up_to {
            crate::im::offline::ack(self, up_to).await;
        }
        Ok(())
    }

    /// Without stream management, offline messages count as delivered once
    /// written to the socket.
    async fn finish_offline_without_sm(&mut self) {
        if self.sm.is_some() {
            return;
        }
        if let Some((_, seq)) = self.offline_sent.back().copied() {
            self.offline_sent.clear();
            crate::im::offline::ack(self, seq).await;
        }
    }

    /// Detached (XEP-0198 §5): keep the session for `sm_resume_timeout_secs`
    /// while stanzas keep arriving; true when a new connection resumed it.
    async fn wait_for_resumption(&mut self) -> bool {
        let timeout = Duration::from_secs(self.shared.config.sm_resume_timeout_secs);
        let deadline = tokio::time::Instant::now() + timeout;
        debug!("session detached, waiting for resumption");
        loop {
            let Some(sm) = self.sm.as_mut() else {
                return false;
            };
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return false,
                r = sm.resume_rx.recv() => {
                    let Some(r) = r else { return false };
                    if r.previd != sm.id {
                        continue;
                    }
                    return self.resume(r).await;
                }
                m = self.rx.recv() => match m {
                    Some(ToSession::Stanza(el)) => self.write_stanza(*el),
                    Some(ToSession::Kick(_)) | None => return false,
                },
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
            sm.inbound,
            sm.id
        );
        self.conn.queue(&reply);
        if self.acked(r.h).await.is_err() {
            return false;
        }
        // Retransmit what the client did not get (XEP-0198 §5).
        if let Some(sm) = self.sm.as_ref() {
            for (el, _) in &sm.unacked {
                el.write_to(self.conn.out(), ns::CLIENT);
            }
        }
        info!("session resumed");
        self.conn.flush().await.is_ok()
    }

    /// Ends the session: stream closed or failed, binding removed, contacts
    /// told, unacknowledged messages kept (RFC 6121 §4.5.2, XEP-0198 §5).
    async fn finish(mut self, ended: Ended) {
        match &ended {
            Ended::ClosedByClient => self.conn.close().await,
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
            Ended::Lost => self.conn.shutdown().await,
        }
        let router = self.shared.router.clone();
        if let Some(sm) = &self.sm {
            let mut map = self
                .shared
                .resumable
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            map.remove(&sm.id);
        }
        router.unregister(&self.full, self.id);
        if self.available {
            crate::im::presence::broadcast_unavailable(&mut self).await;
        }
        let _ = self
            .shared
            .cluster
            .write(Command::UnbindSession {
                full_jid: self.full.clone(),
                node: router.node(),
                session: self.id,
            })
            .await;
        // Stanzas routed to us but never acknowledged (or never written):
        // route them again — to another resource or the offline queue.
        let mut leftovers: Vec<Element> = Vec::new();
        if let Some(sm) = self.sm.take() {
            leftovers.extend(
                sm.unacked
                    .into_iter()
                    .filter(|(_, from_offline)| !from_offline)
                    .map(|(el, _)| el),
            );
        }
        self.rx.close();
        while let Ok(m) = self.rx.try_recv() {
            if let ToSession::Stanza(el) = m {
                leftovers.push(*el);
            }
        }
        for el in leftovers {
            let t = el.attr("type").unwrap_or("normal");
            if el.name() == "message" && matches!(t, "normal" | "chat") {
                router.route(el).await;
            }
        }
        info!(ended = ended.kind(), "session ended");
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
        }
    }
}
