//! Where a stanza goes (RFC 6121 §8.5): to a local session, to a session
//! on another node over the mesh, to the recipient's replicated queue (a
//! guarded message: its sender's ack waits until it is safe), or back to
//! its sender as an error; carbons (XEP-0280) for the sender's other
//! resources; stanzas that come back undeliverable from a node.
use starling_raft::command::OfflineMessage;
use starling_raft::NodeId;
use tracing::debug;

use super::stanza::{add_stanza_id, carbon, carbon_eligible, stanza_type};
use super::{
    custody, inbox, keeper, queued_key, stanza_id_of, GuardDone, Guarded, Notify, Routed, Router,
    Target,
};
use crate::clock::now_ms;
use crate::xmpp::id::random_id;
use crate::xmpp::jid::bare_of;
use crate::xmpp::{ns, Element, StanzaCondition, StanzaError};

impl Router {
    /// Routes a stanza sent by a local client (its `from` already stamped)
    /// to a JID of another entity of this domain, RFC 6121 §8.5.
    pub async fn route(&self, el: Element) {
        self.route_avoiding(el, None, None).await;
    }

    /// Routes a message a local client sent: one for an account is guarded
    /// (written to the recipient's replicated queue while delivered live)
    /// and its outcome reported to `notify` (the sender's session).
    /// Returns whether it was guarded (else it is handled already) and
    /// whether it was archived (the archiver reports to `notify` too).
    pub async fn route_guarded(&self, el: Element, notify: Notify) -> Routed {
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
    ) -> Routed {
        let none = Routed::default();
        let Some(to) = el.attr("to").map(str::to_string) else {
            return none;
        };
        let Ok(jid) = jid::Jid::new(&to) else {
            self.bounce(&el, StanzaError::new(StanzaCondition::JidMalformed))
                .await;
            return none;
        };
        // XEP-0191 §3.3: neither routed, nor delivered, nor queued across a
        // block list (the sender's or the recipient's); read here, on the
        // sender's node, from the replicated lists.
        if let Some(blocked) = el.attr("from").and_then(|f| self.blocked(f, &to)) {
            debug!(to = %to, ?blocked, "blocked");
            if let Some(err) = super::blocking::refusal(&el, blocked) {
                self.bounce(&el, err).await;
            }
            return none;
        }
        if let Some(muc) = self.muc_for(jid.domain().as_str()) {
            // The chat service answers for its rooms; a stanza routed
            // again (`avoid`) came back from an occupant, never to a room.
            if avoid.is_none() {
                muc.client_stanza(el).await;
            }
            return none;
        }
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
            return none;
        }
        let bare_jid = jid.to_bare();
        let bare = bare_jid.to_string();
        if jid.node().is_none() {
            // Addressed to the domain itself: handled by the session layer,
            // never routed.
            return none;
        }
        if !self.user_exists(&bare_jid) {
            // RFC 6121 §8.5.1: no such account.
            match el.name() {
                "message" | "iq" => {
                    self.bounce(&el, StanzaError::new(StanzaCondition::ServiceUnavailable))
                        .await
                }
                _ => {}
            }
            return none;
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
                    self.count_routed(t);
                    let _ = self.deliver(t, el.clone()).await;
                }
            }
            "iq" => {
                let target = full.and_then(|f| sessions.iter().find(|t| t.full == f));
                match target {
                    Some(t) => {
                        self.count_routed(t);
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
        none
    }

    /// RFC 6121 §8.5.2 and §8.5.3 for a message to account `bare`. Returns
    /// whether a guard was started (its outcome goes to `notify`), and
    /// whether the message was archived.
    async fn route_message(
        &self,
        mut el: Element,
        bare: &str,
        full: Option<&str>,
        sessions: Vec<Target>,
        notify: Option<Notify>,
    ) -> Routed {
        let ty = stanza_type(&el).to_string();
        let mut archived = false;
        // §8.5.3.1: a full JID with a session gets the message.
        let exact = full.and_then(|f| sessions.iter().find(|t| t.full == f));
        let chosen: Vec<&Target> = if let Some(t) = exact {
            vec![t]
        } else {
            // §8.5.3.2.1 (no such resource) and §8.5.2 (bare JID).
            if ty == "groupchat" {
                self.bounce(&el, StanzaError::new(StanzaCondition::ServiceUnavailable))
                    .await;
                return Routed::default();
            }
            if ty == "error" {
                return Routed::default();
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
        for t in &chosen {
            self.count_routed(t);
        }
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
                // XEP-0313: into the sender's and the recipient's archive
                // (the sender's ack waits for that commit too).
                archived = self.archive_message(&el, bare, &id, &stanza, &n);
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
                        // With a live target the per-account caps count
                        // double (see `QueueCaps::live`).
                        let caps = if chosen.is_empty() {
                            self.0.queue_caps
                        } else {
                            self.0.queue_caps.live()
                        };
                        // The live copies go once the queue has it: a copy
                        // written before could be acknowledged on a node
                        // that cannot commit the removal, and come again
                        // from the queue at the client's next session.
                        // (Custody could not take it: no room, too few
                        // voters in reach; the message waits for raft.)
                        let live: Vec<(Target, Element)> =
                            chosen.iter().map(|t| ((*t).clone(), el.clone())).collect();
                        self.spawn_guard(bare, id, stanza, &el, caps, n, live);
                        deferred = true;
                    }
                }
                true
            }
            _ => false,
        };
        let routed = Routed { guarded, archived };
        if chosen.is_empty() {
            if guarded {
                // §8.5.2.2: stored for later delivery.
                self.0
                    .metrics
                    .routed(crate::metrics::RouteOutcome::Offline)
                    .inc();
            }
            return routed;
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
            return routed;
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
        routed
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
        caps: inbox::QueueCaps,
        notify: Notify,
        live: Vec<(Target, Element)>,
    ) {
        let message = OfflineMessage {
            id,
            stamp_ms: now_ms(),
            stanza,
        };
        let el = el.clone();
        let to = bare.to_string();
        let (tx, count) = (notify.tx, notify.count);
        let router = self.clone();
        notify.pipeline.submit(inbox::GuardJob {
            to: bare.to_string(),
            message,
            caps,
            done: Box::new(move |outcome| {
                if outcome == Guarded::Safe && live.is_empty() {
                    // No session takes it: the routing node decides the
                    // pushes (XEP-0357, see `push`).
                    router.push_queued(&to, &el);
                }
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

    /// Counts a stanza routed to `target`'s session: here, or over the
    /// mesh (however it travels: live, in custody, after its guard).
    fn count_routed(&self, target: &Target) {
        use crate::metrics::RouteOutcome;
        let outcome = if target.binding.node == self.0.node {
            RouteOutcome::Local
        } else {
            RouteOutcome::Mesh
        };
        self.0.metrics.routed(outcome).inc();
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
        self.0
            .metrics
            .routed(crate::metrics::RouteOutcome::Bounced)
            .inc();
        if self.push_answered(&reply, true) {
            // A push the app server's address could not take.
            return;
        }
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
        if session == 0 {
            // A room's fan-out for this node's occupants (see `MucHost`).
            if let Some(muc) = self.muc_for(
                jid::BareJid::new(full)
                    .map(|j| j.domain().to_string())
                    .unwrap_or_default()
                    .as_str(),
            ) {
                muc.peer_fanout(full, el).await;
                return;
            }
        }
        if let Err(el) = self.deliver_local(full, session, el) {
            self.undeliverable_here(el).await;
        }
    }
}
