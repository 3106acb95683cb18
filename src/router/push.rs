//! XEP-0357 push notifications, the sending side: which messages are worth
//! a push, which node sends it, how pushes are coalesced and rate limited,
//! the publish itself (§7), and what an app server's error reply does.
//! (Enabling and disabling are `im::push`; the registrations are
//! replicated, raft's `push` table.)
//!
//! # Who pushes
//! Each message causes at most one push per registration, because one
//! node decides for each registration, by where the message goes:
//! - the registration's session (the full JID that enabled it) holds the
//!   message: that session's node decides, when the session is *dormant*
//!   (XEP-0198 detached, or XEP-0352 inactive) as the message reaches it,
//!   or when it detaches with the message written but not acknowledged
//!   ([`Router::push_for_session`]); a `received` carbon counts, as in
//!   Prosody's mod_cloud_notify. One full JID has one session, so one
//!   node;
//! - the message reaches no session at all (it goes to the account's
//!   replicated queue): the routing node decides for every registration,
//!   once the queue has it (`route.rs`, [`Router::push_queued`]).
//!
//! A message delivered live to an active session is not pushed, nor is
//! one for a registration whose device has no session while another of
//! the user's sessions takes the message (as mod_cloud_notify: its
//! offline hook is not run then).
//!
//! # Coalescing and rate limit
//! Per registration, on the deciding node ([`Slot`], pure): the first
//! message arms a timer `coalesce` later, and at least `min_interval`
//! after the previous push; messages until it fires are counted into the
//! same push (`message-count`, the last sender and body). So a burst gives
//! one push. The limit is per node: the deciding node of one registration
//! is the same for all its messages unless the device's session moves or
//! ends.
//!
//! # Errors from the app server
//! A push is an iq from the account's bare JID; its reply comes back to
//! that bare JID on whatever node the app server is, so the iq id carries
//! a tag of the node (`push-<tag>-<random>`) and the reply names the
//! registration without any state kept. An error reply of any type but
//! `wait` disables the registration (replicated), as ejabberd's mod_push
//! does (Prosody's counts 16 first); `wait` (and a result) changes
//! nothing, nor does an error this server made itself (the app server's
//! resource not connected: only that push is lost).
use std::collections::HashMap;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use starling_raft::command::{Command, PushRegistration};
use tracing::{debug, info, warn};

use super::Router;
use crate::xmpp::id::random_id;
use crate::xmpp::jid::bare_of;
use crate::xmpp::{ns, Element};

/// What a push tells of the messages it stands for (XEP-0357 §7 summary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The sender of the last message (`last-message-sender`).
    pub sender: String,
    /// Its body, if any (`last-message-body`, sent only where allowed).
    pub body: Option<String>,
}

/// Whether `el`, a message routed to an account, is worth a push, and its
/// summary (after mod_cloud_notify's `is_important`): `chat` or `normal`
/// with a non-empty body, an encrypted payload (OMEMO, XEP-0027, XEP-0373)
/// or a call proposal (XEP-0353); a `received` carbon of one; never a
/// `sent` carbon, a headline, an error or a groupchat message.
pub fn push_worthy(el: &Element) -> Option<Summary> {
    if !el.is("message", ns::CLIENT) {
        return None;
    }
    if el.has_child("sent", ns::CARBONS) {
        return None;
    }
    let msg = match el.get_child("received", ns::CARBONS) {
        Some(r) => r
            .get_child("forwarded", ns::FORWARD)?
            .get_child("message", ns::CLIENT)?,
        None => el,
    };
    if !matches!(msg.attr("type").unwrap_or("normal"), "chat" | "normal") {
        return None;
    }
    let body = msg
        .get_child("body", ns::CLIENT)
        .map(|b| b.text())
        .filter(|b| !b.is_empty());
    let opaque = [
        ("encrypted", "eu.siacs.conversations.axolotl"),
        ("encrypted", "urn:xmpp:omemo:2"),
        ("x", "jabber:x:encrypted"),
        ("openpgp", "urn:xmpp:openpgp:0"),
        ("propose", "urn:xmpp:jingle-message:0"),
    ]
    .iter()
    .any(|(name, ns)| msg.has_child(name, ns));
    if body.is_none() && !opaque {
        return None;
    }
    Some(Summary {
        sender: msg.attr("from").unwrap_or_default().to_string(),
        body,
    })
}

/// The tag of a pubsub node in a push's iq id (8 hex digits of SHA-256).
fn node_tag(node: &str) -> String {
    let h = Sha256::digest(node.as_bytes());
    h[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// A new iq id for a push to `node`.
pub fn push_id(node: &str) -> String {
    format!("push-{}-{}", node_tag(node), random_id())
}

/// Whether iq id `id` is one of a push to `node`.
pub fn id_names_node(id: &str, node: &str) -> bool {
    id.strip_prefix("push-")
        .and_then(|rest| rest.split_once('-'))
        .is_some_and(|(tag, _)| tag == node_tag(node))
}

fn field(var: &str, kind: Option<&str>, values: &[&str]) -> Element {
    let mut f = Element::new("field", ns::XDATA)
        .with_attr("var", var)
        .with_opt_attr("type", kind);
    for v in values {
        f.push(Element::new("value", ns::XDATA).with_text(*v));
    }
    f
}

/// The publish of a push (XEP-0357 §7): an iq set from `owner` (the
/// account's bare JID) to the app server, the summary form (the body only
/// if the registration asked for it), and the client's publish-options.
pub fn notification(
    owner: &str,
    reg: &PushRegistration,
    id: &str,
    count: u32,
    last: &Summary,
) -> Element {
    let count = count.to_string();
    let mut form = Element::new("x", ns::XDATA)
        .with_attr("type", "submit")
        .with_child(field("FORM_TYPE", Some("hidden"), &[ns::PUSH_SUMMARY]))
        .with_child(field("message-count", None, &[&count]))
        .with_child(field("last-message-sender", None, &[&last.sender]));
    if let (true, Some(body)) = (reg.include_body, &last.body) {
        form.push(field("last-message-body", None, &[body]));
    }
    let mut pubsub = Element::new("pubsub", ns::PUBSUB).with_child(
        Element::new("publish", ns::PUBSUB)
            .with_attr("node", reg.node.clone())
            .with_child(
                Element::new("item", ns::PUBSUB)
                    .with_child(Element::new("notification", ns::PUSH).with_child(form)),
            ),
    );
    if !reg.options.is_empty() {
        let mut x = Element::new("x", ns::XDATA).with_attr("type", "submit");
        for f in &reg.options {
            let values: Vec<&str> = f.values.iter().map(String::as_str).collect();
            x.push(field(&f.var, f.kind.as_deref(), &values));
        }
        pubsub.push(Element::new("publish-options", ns::PUBSUB).with_child(x));
    }
    Element::new("iq", ns::CLIENT)
        .with_attr("type", "set")
        .with_attr("id", id)
        .with_attr("from", owner)
        .with_attr("to", reg.jid.clone())
        .with_child(pubsub)
}

/// How pushes to one registration are spaced (from the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushLimits {
    /// From the first message to its push (`xmpp.push_coalesce_ms`).
    pub coalesce: Duration,
    /// Least time between two pushes (`xmpp.push_min_interval_ms`).
    pub min_interval: Duration,
}

impl Default for PushLimits {
    fn default() -> Self {
        PushLimits {
            coalesce: Duration::from_millis(250),
            min_interval: Duration::from_secs(5),
        }
    }
}

/// The coalescing rate limiter of one registration on one node, pure
/// (time is an input): messages in, pushes out.
#[derive(Debug, Default)]
pub struct Slot {
    /// Messages counted since the last push, and the last one's summary.
    pending: Option<(u32, Summary)>,
    last_sent: Option<Instant>,
    /// When the armed timer fires (none: no timer).
    due: Option<Instant>,
}

impl Slot {
    /// A message worth a push: counted. Returns when to fire, if a timer
    /// must be armed (none: one is armed already).
    pub fn on_message(&mut self, now: Instant, s: Summary, limits: PushLimits) -> Option<Instant> {
        let count = self.pending.as_ref().map_or(0, |(c, _)| *c);
        self.pending = Some((count.saturating_add(1), s));
        if self.due.is_some() {
            return None;
        }
        let mut due = now + limits.coalesce;
        if let Some(last) = self.last_sent {
            due = due.max(last + limits.min_interval);
        }
        self.due = Some(due);
        Some(due)
    }

    /// The timer fired: the push to send now, if any.
    pub fn on_due(&mut self, now: Instant) -> Option<(u32, Summary)> {
        match self.due {
            Some(d) if d <= now => {}
            _ => return None,
        }
        self.due = None;
        let p = self.pending.take()?;
        self.last_sent = Some(now);
        Some(p)
    }

    /// Nothing pending and the interval over: the slot may be forgotten.
    pub fn idle(&self, now: Instant, limits: PushLimits) -> bool {
        self.pending.is_none()
            && self.due.is_none()
            && self
                .last_sent
                .is_none_or(|t| now.duration_since(t) >= limits.min_interval)
    }
}

/// A registration's slot key: (owner, service JID \0 node).
type SlotKey = (String, String);

/// This node's push slots (in the router).
#[derive(Debug, Default)]
pub(crate) struct Pushes {
    pub(crate) limits: PushLimits,
    slots: std::sync::Mutex<HashMap<SlotKey, Slot>>,
}

impl Pushes {
    pub(crate) fn new(limits: PushLimits) -> Self {
        Pushes {
            limits,
            slots: Default::default(),
        }
    }
}

impl Router {
    /// A message reached session `full` while it is dormant (detached or
    /// inactive): pushes for the registrations that session enabled.
    pub fn push_for_session(&self, full: &str, el: &Element) {
        let owner = bare_of(full);
        let keys: Vec<SlotKey> = {
            let state = self.0.cluster.state().read();
            if state.data.push.is_empty() {
                return;
            }
            state
                .data
                .push_of(owner)
                .filter(|r| r.resource == full)
                .map(|r| (owner.to_string(), PushRegistration::key(&r.jid, &r.node)))
                .collect()
        };
        self.push_to(keys, el);
    }

    /// A message for `owner` reached no session (it is in the queue):
    /// pushes for every registration of the account.
    pub fn push_queued(&self, owner: &str, el: &Element) {
        let keys: Vec<SlotKey> = {
            let state = self.0.cluster.state().read();
            if state.data.push.is_empty() {
                return;
            }
            state
                .data
                .push_of(owner)
                .map(|r| (owner.to_string(), PushRegistration::key(&r.jid, &r.node)))
                .collect()
        };
        self.push_to(keys, el);
    }

    fn push_to(&self, keys: Vec<SlotKey>, el: &Element) {
        if keys.is_empty() {
            return;
        }
        let Some(summary) = push_worthy(el) else {
            return;
        };
        let now = Instant::now();
        let limits = self.0.pushes.limits;
        let mut armed = Vec::new();
        {
            let mut slots = self
                .0
                .pushes
                .slots
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if slots.len() > 4096 {
                slots.retain(|_, s| !s.idle(now, limits));
            }
            for key in keys {
                let slot = slots.entry(key.clone()).or_default();
                if let Some(due) = slot.on_message(now, summary.clone(), limits) {
                    armed.push((key, due));
                }
            }
        }
        for (key, due) in armed {
            let router = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(due.into()).await;
                router.push_due(key).await;
            });
        }
    }

    /// A slot's timer fired: sends its push, if the registration is still
    /// there.
    async fn push_due(&self, key: SlotKey) {
        let fired = {
            let mut slots = self
                .0
                .pushes
                .slots
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            slots.get_mut(&key).and_then(|s| s.on_due(Instant::now()))
        };
        let Some((count, last)) = fired else {
            return;
        };
        let reg = {
            let state = self.0.cluster.state().read();
            state.data.push.get(&key).cloned()
        };
        let Some(reg) = reg else {
            return;
        };
        let id = push_id(&reg.node);
        debug!(owner = %key.0, service = %reg.jid, count, "push");
        self.route(notification(&key.0, &reg, &id, count, &last))
            .await;
    }

    /// An iq result or error addressed to an account's bare JID: if it
    /// answers one of its pushes, handled here (an error other than
    /// `wait` disables the registration). Returns whether it was one.
    pub fn push_reply(&self, el: &Element) -> bool {
        self.push_answered(el, false)
    }

    /// As [`Router::push_reply`]; `local`: the error is this server's own
    /// (the app server's resource is not connected, say), which only
    /// drops this push: an app server that restarts keeps its devices.
    pub(crate) fn push_answered(&self, el: &Element, local: bool) -> bool {
        let (Some(id), Some(to), Some(from)) = (el.attr("id"), el.attr("to"), el.attr("from"))
        else {
            return false;
        };
        if el.name() != "iq" || !id.starts_with("push-") || to.contains('/') {
            return false;
        }
        let reg = {
            let state = self.0.cluster.state().read();
            let found = state
                .data
                .push_of(to)
                .find(|r| r.jid == from && id_names_node(id, &r.node))
                .cloned();
            found
        };
        let Some(reg) = reg else {
            return false;
        };
        if el.attr("type") != Some("error") {
            return true;
        }
        let kind = el
            .get_child("error", ns::CLIENT)
            .and_then(|e| e.attr("type"))
            .unwrap_or("cancel");
        if kind == "wait" || local {
            debug!(owner = %to, service = %from, local, "push not taken, registration kept");
            return true;
        }
        info!(owner = %to, service = %from, kind, "push refused: registration disabled");
        let cmd = Command::DisablePush {
            owner: to.to_string(),
            jid: reg.jid,
            node: Some(reg.node),
        };
        let cluster = self.0.cluster.clone();
        tokio::spawn(async move {
            if let Err(e) = cluster.write(cmd).await {
                warn!(error = %e, "push registration not disabled");
            }
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_raft::command::FormField;

    fn msg(xml: &str) -> Element {
        crate::xmpp::parse_stanza(xml).expect("test stanza parses")
    }

    fn reg(include_body: bool, options: Vec<FormField>) -> PushRegistration {
        PushRegistration {
            jid: "app@localhost/push".into(),
            node: "n1".into(),
            resource: "a@localhost/phone".into(),
            options,
            include_body,
            enabled_ms: 1,
        }
    }

    #[test]
    fn what_is_worth_a_push() {
        let s = push_worthy(&msg(
            "<message from='b@x/r' to='a@x' type='chat'><body>hi</body></message>",
        ));
        assert_eq!(
            s,
            Some(Summary {
                sender: "b@x/r".into(),
                body: Some("hi".into())
            })
        );
        // No body, an empty body, a headline, an error, groupchat: no.
        for xml in [
            "<message from='b@x/r' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>",
            "<message from='b@x/r' type='chat'><body/></message>",
            "<message from='b@x/r' type='headline'><body>x</body></message>",
            "<message from='b@x/r' type='error'><body>x</body></message>",
            "<message from='b@x/r' type='groupchat'><body>x</body></message>",
            "<presence from='b@x/r'/>",
        ] {
            assert_eq!(push_worthy(&msg(xml)), None, "{xml}");
        }
        // Encrypted without a body, and a call: yes, without a body.
        let s = push_worthy(&msg(
            "<message from='b@x/r'><encrypted xmlns='eu.siacs.conversations.axolotl'/></message>",
        ));
        assert_eq!(s.map(|s| s.body), Some(None));
        // Carbons: received yes (its sender), sent no.
        let fwd = |dir: &str| {
            format!("<message from='a@x' to='a@x/p' type='chat'><{dir} xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='c@x/r' to='a@x/d' type='chat'><body>yo</body></message></forwarded></{dir}></message>")
        };
        assert_eq!(
            push_worthy(&msg(&fwd("received"))).map(|s| s.sender),
            Some("c@x/r".into())
        );
        assert_eq!(push_worthy(&msg(&fwd("sent"))), None);
    }

    #[test]
    fn the_publish_carries_the_summary_the_body_only_if_asked_and_the_options() {
        let last = Summary {
            sender: "b@x/r".into(),
            body: Some("secret words".into()),
        };
        let iq = notification("a@localhost", &reg(false, vec![]), "push-1", 3, &last);
        let xml = iq.to_standalone_xml();
        assert_eq!(iq.attr("from"), Some("a@localhost"));
        assert_eq!(iq.attr("to"), Some("app@localhost/push"));
        assert!(xml.contains("urn:xmpp:push:summary"), "{xml}");
        assert!(xml.contains("<value>3</value>"), "{xml}");
        assert!(xml.contains("b@x/r"), "{xml}");
        assert!(!xml.contains("secret words"), "{xml}");
        assert!(!xml.contains("publish-options"), "{xml}");
        let opts = vec![
            FormField {
                var: "FORM_TYPE".into(),
                kind: Some("hidden".into()),
                values: vec![ns::PUBSUB_PUBLISH_OPTIONS.into()],
            },
            FormField {
                var: "secret".into(),
                kind: None,
                values: vec!["s3".into()],
            },
        ];
        let xml =
            notification("a@localhost", &reg(true, opts), "push-1", 1, &last).to_standalone_xml();
        assert!(xml.contains("secret words"), "{xml}");
        assert!(xml.contains("publish-options"), "{xml}");
        assert!(xml.contains("<value>s3</value>"), "{xml}");
    }

    #[test]
    fn push_ids_name_their_node() {
        let id = push_id("n1");
        assert!(id_names_node(&id, "n1"));
        assert!(!id_names_node(&id, "n2"));
        assert!(!id_names_node("ping-1", "n1"));
    }

    #[test]
    fn a_burst_makes_one_push_and_pushes_are_spaced() {
        let limits = PushLimits {
            coalesce: Duration::from_millis(100),
            min_interval: Duration::from_secs(2),
        };
        let s = |b: &str| Summary {
            sender: "b@x".into(),
            body: Some(b.into()),
        };
        let t0 = Instant::now();
        let mut slot = Slot::default();
        assert_eq!(
            slot.on_message(t0, s("1"), limits),
            Some(t0 + limits.coalesce)
        );
        for i in 2..=5 {
            assert_eq!(slot.on_message(t0, s(&i.to_string()), limits), None);
        }
        assert_eq!(slot.on_due(t0), None, "not due yet");
        let t1 = t0 + limits.coalesce;
        assert_eq!(slot.on_due(t1), Some((5, s("5"))));
        assert_eq!(slot.on_due(t1), None);
        // The next message waits for the interval.
        let t2 = t1 + Duration::from_millis(500);
        assert_eq!(
            slot.on_message(t2, s("6"), limits),
            Some(t1 + limits.min_interval)
        );
        assert!(!slot.idle(t2, limits));
        assert_eq!(slot.on_due(t1 + limits.min_interval), Some((1, s("6"))));
        assert!(slot.idle(t1 + limits.min_interval * 2, limits));
    }
}
