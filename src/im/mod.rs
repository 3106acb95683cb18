//! Instant messaging on a bound session (RFC 6121 and the XEPs), one
//! module per feature:
//!
//! - [`roster`]: roster get/set/remove and pushes (RFC 6121 §2).
//! - [`presence`]: presence broadcast, probes, directed presence and
//!   subscriptions (RFC 6121 §3, §4).
//! - [`offline`]: offline messages with XEP-0203 delay (XEP-0160).
//! - [`disco`]: XEP-0030 disco, XEP-0092 version, XEP-0199 ping.
//! - [`register`]: XEP-0077 in-band registration, password change, removal.
//!
//! [`handle_stanza`] is the entry point for every stanza a client sends,
//! with `from` already stamped by the session.
pub mod disco;
pub mod offline;
pub mod presence;
pub mod register;
pub mod roster;

use crate::c2s::session::Session;
use crate::router::strip_stanza_ids;
use crate::xmpp::jid::{BareJid, Jid};
use crate::xmpp::{ns, Element, StanzaCondition, StanzaError};

/// Where a stanza's `to` points, from the sender's point of view.
pub(crate) enum Addressee {
    /// No `to`, the domain, or the sender's own bare JID: the server
    /// answers on the account's behalf.
    Server,
    OwnAccount,
    /// Another bare JID of this domain.
    Account(BareJid),
    /// A full JID, or another domain: routed.
    Other(Jid),
}

pub(crate) fn addressee(s: &Session, el: &Element) -> Result<Addressee, StanzaError> {
    let Some(to) = el.attr("to") else {
        return Ok(Addressee::Server);
    };
    let jid = Jid::new(to).map_err(|_| StanzaError::new(StanzaCondition::JidMalformed))?;
    if jid.domain().as_str() != s.shared.domain {
        return Ok(Addressee::Other(jid));
    }
    match (jid.node(), jid.resource()) {
        (None, None) => Ok(Addressee::Server),
        (None, Some(_)) | (Some(_), Some(_)) => Ok(Addressee::Other(jid)),
        (Some(_), None) => {
            let bare = jid.into_bare();
            if bare == s.bare {
                Ok(Addressee::OwnAccount)
            } else {
                Ok(Addressee::Account(bare))
            }
        }
    }
}

/// Sends the error reply for `el` to the client itself.
pub(crate) fn reply_error(s: &mut Session, el: &Element, err: StanzaError) {
    if let Some(mut reply) = err.reply_to(el) {
        // The error comes from where the stanza was going.
        if reply.attr("from").is_none() {
            reply.set_attr("from", s.shared.domain.clone());
        }
        reply.set_attr("to", s.full.to_string());
        s.write_stanza(reply);
    }
}

/// An empty `result` for an iq.
pub(crate) fn iq_result(s: &Session, iq: &Element) -> Element {
    Element::new("iq", ns::CLIENT)
        .with_attr("type", "result")
        .with_opt_attr("id", iq.attr("id"))
        .with_opt_attr("from", iq.attr("to"))
        .with_attr("to", s.full.to_string())
}

pub async fn handle_stanza(s: &mut Session, el: Element) {
    match el.name() {
        "message" => handle_message(s, el).await,
        "presence" => presence::handle(s, el).await,
        "iq" => handle_iq(s, el).await,
        _ => {}
    }
}

async fn handle_message(s: &mut Session, mut el: Element) {
    let target = match addressee(s, &el) {
        Ok(t) => t,
        Err(e) => return reply_error(s, &el, e),
    };
    let to = match target {
        // RFC 6120 §10.3.1: no `to` means the sender's own bare JID.
        Addressee::OwnAccount | Addressee::Server if el.attr("to").is_none() => {
            el.set_attr("to", s.bare.to_string());
            s.bare.to_string()
        }
        Addressee::Server => {
            // Messages to the server itself: nothing here takes them.
            if !matches!(el.attr("type"), Some("error" | "headline")) {
                reply_error(
                    s,
                    &el,
                    StanzaError::new(StanzaCondition::ServiceUnavailable),
                );
            }
            return;
        }
        Addressee::OwnAccount => s.bare.to_string(),
        Addressee::Account(b) => b.to_string(),
        Addressee::Other(j) => j.to_string(),
    };
    el.set_attr("to", to.clone());
    // XEP-0359 §5: a client must not set the recipient's stanza id.
    strip_stanza_ids(&mut el, crate::xmpp::jid::bare_of(&to));
    let router = s.shared.router.clone();
    router.sent_carbons(s.full.as_str(), &el).await;
    // A message for an account is safe (and acknowledged) once its guard
    // has it in the replicated queue; anything else once routed.
    let notify = s.guard_notify();
    if !router.route_guarded(el, notify.clone()).await {
        s.guard_not_started(notify);
    }
}

async fn handle_iq(s: &mut Session, el: Element) {
    let ty = el.attr("type").unwrap_or("");
    let is_request = matches!(ty, "get" | "set");
    if !matches!(ty, "get" | "set" | "result" | "error") || el.attr("id").is_none() {
        // RFC 6120 §8.2.3: iq needs an id and one of the four types.
        return reply_error(s, &el, StanzaError::new(StanzaCondition::BadRequest));
    }
    if is_request && el.children().count() != 1 {
        // §8.2.3: a get or set has exactly one child.
        return reply_error(s, &el, StanzaError::new(StanzaCondition::BadRequest));
    }
    let target = match addressee(s, &el) {
        Ok(t) => t,
        Err(e) => return reply_error(s, &el, e),
    };
    match target {
        Addressee::Server | Addressee::OwnAccount => {
            if !is_request {
                // Results and errors for the server (roster push acks...).
                return;
            }
            let own = matches!(target, Addressee::OwnAccount);
            handle_server_iq(s, el, own).await
        }
        Addressee::Account(bare) => {
            if !is_request {
                return;
            }
            // RFC 6121 §8.5.2.1.3 / §8.5.1: an iq to a bare JID is answered
            // by the server on the account's behalf.
            let router = s.shared.router.clone();
            if !router.user_exists(&bare) {
                return reply_error(
                    s,
                    &el,
                    StanzaError::new(StanzaCondition::ServiceUnavailable),
                );
            }
            let child = el
                .children()
                .next()
                .map(|c| (c.name().to_string(), c.ns().to_string()));
            match child.as_ref().map(|(n, ns_)| (n.as_str(), ns_.as_str())) {
                Some(("query", ns::DISCO_INFO)) if ty == "get" => {
                    let reply = disco::account_info(s, &el);
                    s.write_stanza(reply);
                }
                Some(("ping", ns::PING)) if ty == "get" => {
                    let reply = iq_result(s, &el);
                    s.write_stanza(reply);
                }
                _ => reply_error(
                    s,
                    &el,
                    StanzaError::new(StanzaCondition::ServiceUnavailable),
                ),
            }
        }
        Addressee::Other(to) => {
            let mut el = el;
            el.set_attr("to", to.to_string());
            s.shared.router.clone().route(el).await
        }
    }
}

async fn handle_server_iq(s: &mut Session, el: Element, own: bool) {
    let ty = el.attr("type").unwrap_or("").to_string();
    let Some(child) = el.children().next() else {
        return;
    };
    let key = (child.name().to_string(), child.ns().to_string());
    match (key.0.as_str(), key.1.as_str(), ty.as_str()) {
        ("query", ns::ROSTER, _) => roster::handle(s, el).await,
        ("ping", ns::PING, "get") => {
            let reply = iq_result(s, &el);
            s.write_stanza(reply);
        }
        ("session", ns::SESSION, "set") => {
            // RFC 3921 session establishment: a no-op today.
            let reply = iq_result(s, &el);
            s.write_stanza(reply);
        }
        ("query", ns::VERSION, "get") if !own => {
            let reply = disco::version(s, &el);
            s.write_stanza(reply);
        }
        ("query", ns::DISCO_INFO, "get") => {
            let reply = if own {
                disco::account_info(s, &el)
            } else {
                disco::server_info(s, &el)
            };
            s.write_stanza(reply);
        }
        ("query", ns::DISCO_ITEMS, "get") => {
            let reply = disco::items(s, &el);
            s.write_stanza(reply);
        }
        ("query", ns::REGISTER, _) => register::handle_authenticated(s, el).await,
        ("enable" | "disable", ns::CARBONS, "set") => {
            // XEP-0280 §4: enabling is per session, and other nodes need to
            // know (they send `received` copies), so it is in the binding.
            s.carbons = key.0 == "enable";
            if s.publish_binding().await {
                let reply = iq_result(s, &el);
                s.write_stanza(reply);
            } else {
                reply_error(
                    s,
                    &el,
                    StanzaError::new(StanzaCondition::InternalServerError),
                );
            }
        }
        ("bind", ns::BIND, _) => {
            // Already bound (RFC 6120 §7.7.2.3 resource binding once).
            reply_error(s, &el, StanzaError::new(StanzaCondition::NotAllowed));
        }
        _ => {
            // RFC 6120 §8.4: an unknown payload namespace.
            reply_error(
                s,
                &el,
                StanzaError::new(StanzaCondition::ServiceUnavailable),
            );
        }
    }
}
