//! A resumable session moving between nodes (XEP-0198 §5 across the
//! cluster; the protocol is `router::takeover`): what the old node hands
//! over, how it lets the session go, and how the new node adopts it.
//!
//! The old node (`move_out`) waits for the session's running guards, so
//! its `h` counts everything the client sent, applies the client's `h`
//! (what it releases leaves the queue before the answer), commits what
//! custody held for the account, and hands over the counters, the stanzas
//! not acknowledged and the presence facts. The new node (`adopt`) binds
//! the same full JID with those facts (no unavailable-then-available for
//! contacts), answers `<resumed/>` and writes again what the client had not
//! acknowledged. Every message among those is in the replicated queue (or
//! on its way there), so if the new node dies before the client has them,
//! the next session gets them from the queue: the move never holds the
//! only copy of a message.
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use starling_raft::command::SessionBinding;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::sasl2::ResumeReply;
use super::seen::Seen;
use super::session::Session;
use super::sm::{Outbound, SmHandoff, StreamMgmt};
use super::stream::Conn;
use super::Shared;
use crate::clock::now_ms;
use crate::router::takeover::Takeover;
use crate::router::{LocalSession, SESSION_QUEUE};
use crate::xmpp::jid::{bare_of, FullJid};
use crate::xmpp::{ns, parse_stanza, Element};

/// How long the old node waits for the session's guards (messages from
/// the client still being made safe) before it refuses to hand over.
const GUARD_WAIT: Duration = Duration::from_millis(1500);
/// How long it waits for custody's commits and the queue removals the
/// client's `h` asked for.
const SETTLE_WAIT: Duration = Duration::from_millis(700);

/// The session's state, as one node hands it to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionHandoff {
    pub full: String,
    pub sm: SmHandoff,
    pub available: bool,
    pub priority: i8,
    /// The last available presence, as XML.
    pub presence: Option<String>,
    pub carbons: bool,
    /// XEP-0352 inactive, and the presence held back meanwhile (by sender).
    pub inactive: bool,
    pub held_presence: Vec<(String, String)>,
    /// RFC 6121 §4.6 directed presence targets.
    pub directed: Vec<String>,
    /// Queued messages the client has and whose removal the old node had
    /// not committed yet (its leader paused, say): the new node skips them
    /// and removes them too (removal is idempotent).
    #[serde(default)]
    pub removing: Vec<String>,
    /// What the client acknowledged lately (`RecentlyAcked`): a live
    /// copy's other holder may have queued it while the old node could not
    /// tell it. The new node skips them, and removes those its queue holds
    /// now (not the rest: the remover would wait for them, and a clean
    /// close waits for the remover).
    #[serde(default)]
    pub acked_lately: Vec<String>,
}

impl SessionHandoff {
    pub fn from_json(json: &str) -> Option<SessionHandoff> {
        serde_json::from_str(json).ok()
    }
}

impl Session {
    /// A peer asks for this session, its client resuming it there with
    /// `h`: hands it over and answers the peer. True when the session
    /// moved (it then ends here without telling contacts); false when it
    /// could not (the peer's client gets `<failed/>`) and goes on here.
    pub(super) async fn move_out(&mut self, t: Takeover) -> bool {
        let state = self.hand_off(t.h).await;
        let moved = state.is_some();
        if t.reply.send(state).is_err() && moved {
            // The peer gave up waiting. The session is gone from here
            // anyway: what it had not delivered is in the queue, which
            // the client's next session reads.
            warn!("the node that asked for the session stopped waiting");
        }
        moved
    }

    async fn hand_off(&mut self, h: u32) -> Option<String> {
        if !self.sm.as_ref().is_some_and(|sm| sm.resumable()) {
            return None;
        }
        let until = tokio::time::Instant::now() + GUARD_WAIT;
        while self.guards_running > 0 {
            match tokio::time::timeout_at(until, self.guard_rx.recv()).await {
                Ok(Some(d)) => self.guard_done(d),
                _ => break,
            }
        }
        let sm = self.sm.as_ref()?;
        if !sm.all_safe() || !sm.ack_valid(h) {
            debug!(
                unsafe_stanzas = sm.unsafe_count(),
                h, "session not handed over"
            );
            return None;
        }
        // From here on stanzas for this session go to the queue (custody
        // commits them), where the new node's pull finds them.
        let router = self.shared.router.clone();
        router.unregister(&self.full, self.id);
        self.rx.close();
        while let Ok(m) = self.rx.try_recv() {
            // A kick meanwhile: the client resumes, the newer binding
            // replaces this one on the new node or the kick comes again.
            let _ = self.handle_routed(m);
        }
        // Cannot fail: `h` was checked, and more written since only widens
        // what it may count.
        let (released, sm_state) = self.sm.as_mut()?.hand_off(h).ok()?;
        self.sm = None;
        self.unregister_resumable(sm_state.id.clone());
        let ids: Vec<String> = released.into_iter().filter_map(|o| o.queued_id).collect();
        self.recently_acked.note(&ids);
        router.delivered(self.bare.as_str(), ids);
        router
            .custody_settle_account(self.bare.as_str(), SETTLE_WAIT)
            .await;
        router.remover().sync(self.bare.as_str(), SETTLE_WAIT).await;
        self.conn.out().clear();
        let state = SessionHandoff {
            full: self.full.to_string(),
            sm: sm_state,
            available: self.available,
            priority: self.priority,
            presence: self.presence.as_ref().map(|p| p.to_standalone_xml()),
            carbons: self.carbons,
            inactive: self.inactive,
            held_presence: self
                .held_presence
                .drain()
                .map(|(from, el)| (from, el.to_standalone_xml()))
                .collect(),
            directed: self.directed.drain().collect(),
            removing: router.remover().pending_of(self.bare.as_str()),
            acked_lately: self.recently_acked.ids(),
        };
        info!(
            unacked = state.sm.unacked.len(),
            "session handed over to another node"
        );
        serde_json::to_string(&state).ok()
    }

    /// Forgets this session's XEP-0198 id: it cannot be resumed or taken
    /// over any more.
    pub(super) fn unregister_resumable(&mut self, sm_id: String) {
        self.shared
            .resumable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&sm_id);
        self.shared.router.takeovers().unregister(&sm_id);
        self.resume_rx = None;
        self.takeover_rx = None;
    }

    /// The client of `bare` resumed here a session another node handed
    /// over: binds it here and answers `<resumed/>` (XEP-0198 §5). `None`:
    /// the binding could not be committed; the client got `<failed/>` and
    /// the stream is closed (what it had not acknowledged is in its queue).
    pub async fn adopt(
        shared: Arc<Shared>,
        mut conn: Conn,
        bare: &str,
        state: SessionHandoff,
        reply: ResumeReply,
    ) -> Option<Session> {
        // `belongs_to` checked it names the account; a JID that does not
        // parse was not sent by a Starling node.
        let Ok(full) = FullJid::new(&state.full) else {
            warn!(full = %state.full, "a handed-over session with a malformed JID");
            let _ = conn
                .send(&format!(
                    "<failed xmlns='{}'><internal-server-error xmlns='{}'/></failed>",
                    ns::SM,
                    ns::STANZA_ERRORS
                ))
                .await;
            conn.close().await;
            return None;
        };
        let id: u64 = rand::random::<u64>() | 1;
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        let router = shared.router.clone();
        if let Some(old) = router.register(
            &full,
            LocalSession {
                id,
                tx,
                since: std::time::Instant::now(),
            },
        ) {
            old.kick(crate::router::replaced());
        }
        let binding = SessionBinding {
            node: router.node(),
            session: id,
            priority: state.priority,
            available: state.available,
            carbons: state.carbons,
            presence: state.presence.clone(),
            bound_ms: now_ms(),
        };
        // The binding replaced is the old node's (it unbinds itself too), or
        // a session bound meanwhile with the same resource.
        if let Err(e) = super::session::commit_binding(&shared, &full, binding).await {
            warn!(error = %e, "cannot commit the binding of a session moved here");
            router.unregister(&full, id);
            let _ = conn
                .send(&format!(
                    "<failed xmlns='{}'><internal-server-error xmlns='{}'/></failed>",
                    ns::SM,
                    ns::STANZA_ERRORS
                ))
                .await;
            conn.close().await;
            return None;
        }
        tracing::Span::current().record("jid", full.to_string());
        let mut seen = Seen::default();
        // What the client has and the old node is still removing: never
        // written again here, and removed from here as well.
        for id in &state.removing {
            seen.insert(id);
            router.remover().delivered(bare, id.clone());
        }
        let queued_now: Vec<&String> = {
            let st = shared.cluster.state().read();
            state
                .acked_lately
                .iter()
                .filter(|id| {
                    st.data
                        .offline_ids
                        .get(&(bare.to_string(), (*id).clone()))
                        .is_some()
                })
                .collect()
        };
        for id in &state.acked_lately {
            seen.insert(id);
        }
        for id in queued_now {
            router.remover().delivered(bare, id.clone());
        }
        let unacked: Vec<Outbound> = state
            .sm
            .unacked
            .iter()
            .filter_map(|(xml, queued_id)| {
                let el = parse_stanza(xml).ok()?;
                if let Some(q) = queued_id {
                    seen.insert(q);
                }
                Some(Outbound {
                    el,
                    queued_id: queued_id.clone(),
                })
            })
            .collect();
        let again: Vec<Element> = unacked.iter().map(|o| o.el.clone()).collect();
        let sm_id = state.sm.id.clone();
        let sm = StreamMgmt::adopt(sm_id.clone(), state.sm.received, state.sm.sent, unacked);
        let resumed = format!(
            "<resumed xmlns='{}' h='{}' previd='{}'/>",
            ns::SM,
            sm.h(),
            sm_id
        );
        // Inside SASL2's `<success/>` when resumed inline (XEP-0198
        // §"Inline Stream Resumption").
        let reply = reply.wrap(&resumed, full.as_str());
        let mut s = Session::new(shared.clone(), conn, full, id, rx, seen);
        s.available = state.available;
        s.priority = state.priority;
        s.presence = state.presence.as_deref().and_then(|p| parse_stanza(p).ok());
        s.carbons = state.carbons;
        s.inactive = state.inactive;
        s.held_presence = state
            .held_presence
            .iter()
            .filter_map(|(from, xml)| Some((from.clone(), parse_stanza(xml).ok()?)))
            .collect::<HashMap<_, _>>();
        s.directed = state.directed.into_iter().collect::<HashSet<_>>();
        // Resumable here from now on, and movable again.
        let (rtx, resume_rx) = mpsc::channel(1);
        shared
            .resumable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sm_id.clone(), (bare.to_string(), rtx));
        s.resume_rx = Some(resume_rx);
        let (ttx, takeover_rx) = mpsc::channel(1);
        router.takeovers().register(&sm_id, bare, ttx);
        s.takeover_rx = Some(takeover_rx);
        s.sm = Some(sm);
        // The queued ones among them are hinted to the peers again (their
        // numbers changed hands): from the start.
        s.hinted = 0;
        s.conn.queue(&reply);
        // XEP-0198 §5: what the client did not acknowledge, again.
        for el in &again {
            el.write_to(s.conn.out(), ns::CLIENT);
        }
        if s.sm.as_mut().is_some_and(|sm| sm.wants_request()) {
            s.conn.request_ack();
        }
        info!(resent = again.len(), "session resumed from another node");
        if s.available {
            s.pull(true);
        }
        s.share_hints();
        s.await_hint().await;
        let limit = Duration::from_secs(shared.config.write_timeout_secs);
        if s.conn.flush_within(limit).await.is_err() {
            // Lost again at once: the session detaches and waits for the
            // next resumption like any other.
            debug!("connection lost right after resuming");
        }
        Some(s)
    }
}

/// Whether `state` is a session of `bare` with XEP-0198 id `previd`.
pub fn belongs_to(state: &SessionHandoff, bare: &str, previd: &str) -> bool {
    bare_of(&state.full) == bare && state.sm.id == previd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handoff_is_for_one_account_and_stream() {
        let state = SessionHandoff {
            full: "bob@x/phone".into(),
            sm: SmHandoff {
                id: "sm1".into(),
                received: 3,
                sent: 5,
                unacked: vec![("<message xmlns='jabber:client' id='m5'/>".into(), None)],
            },
            available: true,
            priority: 5,
            presence: Some("<presence xmlns='jabber:client'/>".into()),
            carbons: false,
            inactive: false,
            held_presence: Vec::new(),
            directed: vec!["alice@x/pc".into()],
            removing: vec!["q1".into()],
            acked_lately: vec!["q2".into()],
        };
        let json = serde_json::to_string(&state).unwrap();
        let back = SessionHandoff::from_json(&json).unwrap();
        assert_eq!(back, state);
        assert!(belongs_to(&back, "bob@x", "sm1"));
        assert!(!belongs_to(&back, "eve@x", "sm1"));
        assert!(!belongs_to(&back, "bob@x", "sm2"));
        assert!(SessionHandoff::from_json("{\"full\":1}").is_none());
    }
}
