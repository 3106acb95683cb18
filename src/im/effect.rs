//! What an `im` handler asks of the session that sent the stanza, as data.
//!
//! The session carries the effects out in order (`c2s::session::effects`).
//! Order matters where RFC 6121 makes it matter: a presence change is
//! published to the shared session table *before* it is broadcast and
//! before the contacts' presence is read for an initial presence (§4.2),
//! so a contact that comes online meanwhile either sees this session
//! available or is seen by it.
use crate::router::Target;
use crate::xmpp::{Element, StreamError};

/// One thing for the session to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Write a stanza to this session's client.
    Write(Element),
    /// Route a stanza from this session (RFC 6121 §8.5).
    Route(Element),
    /// Route a message with a guard: the client's XEP-0198 count of it is
    /// acknowledged only once it is safe (the delivery guarantee).
    RouteGuarded(Element),
    /// Available presence (RFC 6121 §4.2, §4.4): the session becomes
    /// available with this priority and last presence (no `to`).
    Available { priority: i8, presence: Element },
    /// Unavailable presence (RFC 6121 §4.5): the session is no longer
    /// available and has no last presence.
    Unavailable,
    /// Commit the session's presence facts to the shared session table.
    PublishBinding,
    /// XEP-0280 carbons on or off for this session, published in its
    /// binding (other nodes send the `received` copies); then `reply`, or
    /// `failed` if the binding could not be committed.
    Carbons {
        enable: bool,
        reply: Element,
        failed: Option<Element>,
    },
    /// This session's presence to the available sessions of every contact
    /// with a from/both subscription and of the user's other resources
    /// (RFC 6121 §4.2.2, §4.4.2, §4.5.2).
    Broadcast(Element),
    /// The presence of contacts the user is subscribed to, of the user's
    /// other resources, and pending subscription requests, to this client
    /// (RFC 6121 §4.2.3, §3.1.3): read after the binding is published.
    InitialPresence,
    /// Remember a directed-presence target (RFC 6121 §4.6).
    DirectedAdd(String),
    /// Forget a directed-presence target.
    DirectedRemove(String),
    /// This (unavailable) presence to every directed-presence target, which
    /// are then forgotten (RFC 6121 §4.6.3).
    UnavailableToDirected(Element),
    /// Deliver the account's queued messages (XEP-0160, at initial presence
    /// with a non-negative priority).
    PullQueue,
    /// Hand each stanza to its session (wherever it is), after what came
    /// before: stanzas the server sends on the account's behalf, such as
    /// XEP-0163 notifications after the publish's result.
    Deliver(Vec<(Target, Element)>),
    /// End the session with this stream error (after what was written).
    End(StreamError),
}

/// The effects of one stanza, in the order they are to be carried out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effects(pub Vec<Effect>);

impl Effects {
    pub fn none() -> Self {
        Effects(Vec::new())
    }

    pub fn one(e: Effect) -> Self {
        Effects(vec![e])
    }

    /// One stanza for the client.
    pub fn write(el: Element) -> Self {
        Effects::one(Effect::Write(el))
    }

    pub fn push(&mut self, e: Effect) {
        self.0.push(e);
    }

    /// The stanza of a lone [`Effect::Write`] (an error reply built to be
    /// used later), if that is what these effects are.
    pub fn into_write(self) -> Option<Element> {
        match <[Effect; 1]>::try_from(self.0) {
            Ok([Effect::Write(el)]) => Some(el),
            _ => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl IntoIterator for Effects {
    type Item = Effect;
    type IntoIter = std::vec::IntoIter<Effect>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}
