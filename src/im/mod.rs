//! Instant messaging on a bound session (RFC 6121 and the XEPs), one
//! module per feature:
//!
//! - [`roster`]: roster get/set/remove and pushes (RFC 6121 §2).
//! - [`blocking`]: XEP-0191 block lists (what they stop: `router::blocking`).
//! - [`push`]: XEP-0357 push registrations (the pushes: `router::push`).
//! - [`presence`]: presence broadcast, probes, directed presence and
//!   subscriptions (RFC 6121 §3, §4).
//! - [`offline`]: the XEP-0203 stamp of messages from the replicated queue
//!   (XEP-0160).
//! - [`disco`]: XEP-0030 disco, XEP-0092 version, XEP-0199 ping.
//! - [`register`]: XEP-0077 in-band registration, password change, removal.
//! - [`mam`]: XEP-0313 queries of the account's message archive and its
//!   preferences (what is archived: `router::archiver`).
//! - [`muc`]: XEP-0045 multi-user chat, a service of its own on
//!   `conference.<domain>` (the router hands it what is addressed there).
//! - [`pep`]: XEP-0163 PEP (publish, retract, items, configure, delete;
//!   notifications filtered by XEP-0115 caps).
//! - [`vcard`]: XEP-0054 vcard-temp and the XEP-0153 photo hash.
//! - [`private`]: XEP-0049 private XML storage.
//! - [`effect`]: what a handler asks of the session that sent the stanza.
//!
//! [`handle_stanza`] is the entry point for every stanza a client sends,
//! with `from` already stamped by the session.
//!
//! # Handlers return effects
//! A handler never holds the session. It gets the node's services
//! ([`Ctx`]: the router and the replicated state, which it may read, write
//! through raft and deliver through to *other* sessions) and a read-only
//! view of the sending session ([`Me`]), and returns [`Effects`]: what is
//! written to this session's client, what it routes, and how its own state
//! changes (presence, carbons, directed presence, its binding). The session
//! (`c2s::session::effects`) carries them out in order. So `im` does not
//! depend on `c2s`, and a handler's decisions can be tested as data.
pub mod blocking;
pub mod disco;
pub mod effect;
pub mod mam;
pub mod muc;
pub mod offline;
pub mod pep;
pub mod presence;
pub mod private;
pub mod push;
pub mod register;
pub mod roster;
pub mod vcard;

use std::collections::HashSet;

use starling_raft::ClusterHandle;

pub use effect::{Effect, Effects};

use crate::router::{strip_stanza_ids, Router};
use crate::xmpp::jid::{BareJid, FullJid, Jid};
use crate::xmpp::{ns, Element, StanzaCondition, StanzaError};

/// The node's services a handler may use.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    /// The domain this node serves.
    pub domain: &'a str,
    /// XEP-0077 in-band registration is on (advertised in disco).
    pub registration: bool,
    pub router: &'a Router,
    pub cluster: &'a ClusterHandle,
    /// Most items in one roster (`xmpp.max_roster_items`).
    pub max_roster_items: u32,
    /// Most items in one block list (`xmpp.max_block_items`).
    pub max_block_items: u32,
    /// Most push registrations of one account (`xmpp.max_push_registrations`).
    pub max_push_registrations: u32,
    /// What handlers keep per node.
    pub services: &'a Services,
}

/// What the handlers of one node share beside the router and raft: the
/// `[pep]` limits, the XEP-0115 queries waiting for answers, the
/// `[server_info]` for disco.
pub struct Services {
    pub pep: crate::config::PepSection,
    pub server_info: crate::config::ServerInfoSection,
    pub caps: pep::caps::CapsQueries,
}

impl Services {
    pub fn new(
        pep: crate::config::PepSection,
        server_info: crate::config::ServerInfoSection,
    ) -> Self {
        Services {
            pep,
            server_info,
            caps: pep::caps::CapsQueries::default(),
        }
    }
}

/// What a handler may know of the session that sent the stanza.
#[derive(Clone, Copy)]
pub struct Me<'a> {
    pub full: &'a FullJid,
    pub bare: &'a BareJid,
    /// Sent initial presence and not unavailable since (RFC 6121 §4.2).
    pub available: bool,
    /// JIDs this session sent directed presence to (RFC 6121 §4.6).
    pub directed: &'a HashSet<String>,
}

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

pub(crate) fn addressee(domain: &str, me: &Me<'_>, el: &Element) -> Result<Addressee, StanzaError> {
    let Some(to) = el.attr("to") else {
        return Ok(Addressee::Server);
    };
    let jid = Jid::new(to).map_err(|_| StanzaError::new(StanzaCondition::JidMalformed))?;
    if jid.domain().as_str() != domain {
        return Ok(Addressee::Other(jid));
    }
    match (jid.node(), jid.resource()) {
        (None, None) => Ok(Addressee::Server),
        (None, Some(_)) | (Some(_), Some(_)) => Ok(Addressee::Other(jid)),
        (Some(_), None) => {
            let bare = jid.into_bare();
            if &bare == me.bare {
                Ok(Addressee::OwnAccount)
            } else {
                Ok(Addressee::Account(bare))
            }
        }
    }
}

/// The error reply for `el`, for the client itself (none for a stanza that
/// must not be answered with an error, RFC 6120 §8.3.1).
///
/// The error comes from where the stanza was going: its `to`, or, for a
/// stanza without one, nobody. RFC 6120 §10.3.3: a stanza with no `to` is
/// handled by the server on behalf of the account, and §8.1.2.1: what the
/// server sends on the account's behalf "MUST either (a) not include a
/// 'from' attribute or (b) include a 'from' attribute whose value is the
/// account's bare JID" (a reply from the domain is dropped by clients
/// that check, aioxmpp among them). `_domain` is kept for the callers.
pub(crate) fn error_reply(_domain: &str, me: &Me<'_>, el: &Element, err: StanzaError) -> Effects {
    let Some(mut reply) = err.reply_to(el) else {
        return Effects::none();
    };
    reply.set_attr("to", me.full.to_string());
    Effects::write(reply)
}

/// XEP-0191 §3.3 for a stanza from this session to `to`: the effects when
/// a block list (the user's, or the recipient's) stops it. Also checked
/// where stanzas are routed; here it comes first, so a refused message
/// makes no carbons and an iq to a bare JID is not answered for a user
/// who blocked its sender.
pub(crate) fn blocked(ctx: &Ctx<'_>, me: &Me<'_>, el: &Element, to: &str) -> Option<Effects> {
    let b = ctx.router.blocked(me.full.as_str(), to)?;
    Some(match crate::router::blocking::refusal(el, b) {
        Some(err) => error_reply(ctx.domain, me, el, err),
        None => Effects::none(),
    })
}

/// An empty `result` for an iq.
pub(crate) fn iq_result(me: &Me<'_>, iq: &Element) -> Element {
    Element::new("iq", ns::CLIENT)
        .with_attr("type", "result")
        .with_opt_attr("id", iq.attr("id"))
        .with_opt_attr("from", iq.attr("to"))
        .with_attr("to", me.full.to_string())
}

/// Handles one stanza from the session's client.
pub async fn handle_stanza(ctx: &Ctx<'_>, me: &Me<'_>, el: Element) -> Effects {
    match el.name() {
        "message" => handle_message(ctx, me, el).await,
        "presence" => presence::handle(ctx, me, el).await,
        "iq" => handle_iq(ctx, me, el).await,
        _ => Effects::none(),
    }
}

async fn handle_message(ctx: &Ctx<'_>, me: &Me<'_>, mut el: Element) -> Effects {
    let target = match addressee(ctx.domain, me, &el) {
        Ok(t) => t,
        Err(e) => return error_reply(ctx.domain, me, &el, e),
    };
    let to = match target {
        // RFC 6120 §10.3.1: no `to` means the sender's own bare JID.
        Addressee::OwnAccount | Addressee::Server if el.attr("to").is_none() => me.bare.to_string(),
        Addressee::Server => {
            // Messages to the server itself: nothing here takes them.
            if matches!(el.attr("type"), Some("error" | "headline")) {
                return Effects::none();
            }
            return error_reply(
                ctx.domain,
                me,
                &el,
                StanzaError::new(StanzaCondition::ServiceUnavailable),
            );
        }
        Addressee::OwnAccount => me.bare.to_string(),
        Addressee::Account(b) => b.to_string(),
        Addressee::Other(j) => j.to_string(),
    };
    el.set_attr("to", to.clone());
    if let Some(refused) = blocked(ctx, me, &el, &to) {
        return refused;
    }
    // XEP-0359 §5: a client must not set the recipient's stanza id.
    strip_stanza_ids(&mut el, crate::xmpp::jid::bare_of(&to));
    ctx.router.sent_carbons(me.full.as_str(), &el).await;
    // A message for an account is safe (and acknowledged) once its guard
    // has it in the replicated queue; anything else once routed.
    Effects::one(Effect::RouteGuarded(el))
}

async fn handle_iq(ctx: &Ctx<'_>, me: &Me<'_>, el: Element) -> Effects {
    let ty = el.attr("type").unwrap_or("");
    let is_request = matches!(ty, "get" | "set");
    if !matches!(ty, "get" | "set" | "result" | "error") || el.attr("id").is_none() {
        // RFC 6120 §8.2.3: iq needs an id and one of the four types.
        return error_reply(
            ctx.domain,
            me,
            &el,
            StanzaError::new(StanzaCondition::BadRequest),
        );
    }
    if is_request && el.children().count() != 1 {
        // §8.2.3: a get or set has exactly one child.
        return error_reply(
            ctx.domain,
            me,
            &el,
            StanzaError::new(StanzaCondition::BadRequest),
        );
    }
    let target = match addressee(ctx.domain, me, &el) {
        Ok(t) => t,
        Err(e) => return error_reply(ctx.domain, me, &el, e),
    };
    match target {
        Addressee::Server | Addressee::OwnAccount => {
            if !is_request {
                // Results and errors for the server: a client's answer to
                // an XEP-0115 caps query; others (roster push acks...) are
                // dropped.
                return pep::caps::on_reply(ctx, me, &el)
                    .await
                    .unwrap_or_else(Effects::none);
            }
            let own = matches!(target, Addressee::OwnAccount);
            handle_server_iq(ctx, me, el, own).await
        }
        Addressee::Account(bare) => {
            if !is_request {
                // An app server's answer to a push on this account's
                // behalf (XEP-0357 §7, see `router::push`); others are
                // dropped.
                let mut el = el;
                el.set_attr("to", bare.to_string());
                ctx.router.push_reply(&el);
                return Effects::none();
            }
            if let Some(refused) = blocked(ctx, me, &el, bare.as_str()) {
                return refused;
            }
            let kind = el
                .children()
                .next()
                .map(|c| (c.name() == "pubsub", c.ns().to_string()));
            match kind.as_ref().map(|(p, n)| (*p, n.as_str())) {
                // XEP-0163: the account's PEP service. A missing account
                // looks like a missing node.
                Some((true, ns::PUBSUB | ns::PUBSUB_OWNER)) => {
                    if !ctx.router.user_exists(&bare) {
                        return error_reply(
                            ctx.domain,
                            me,
                            &el,
                            StanzaError::new(StanzaCondition::ItemNotFound),
                        );
                    }
                    return pep::handle(ctx, me, el, &bare).await;
                }
                // XEP-0049 §2.3: another user's private data is forbidden.
                Some((false, ns::PRIVATE)) => {
                    return error_reply(
                        ctx.domain,
                        me,
                        &el,
                        StanzaError::new(StanzaCondition::Forbidden),
                    );
                }
                _ => {}
            }
            // RFC 6121 §8.5.2.1.3 / §8.5.1: an iq to a bare JID is answered
            // by the server on the account's behalf.
            if !ctx.router.user_exists(&bare) {
                return error_reply(
                    ctx.domain,
                    me,
                    &el,
                    StanzaError::new(StanzaCondition::ServiceUnavailable),
                );
            }
            let child = el.children().next().map(|c| (c.name(), c.ns()));
            match child {
                // XEP-0030 for another account: only its contacts (with a
                // presence subscription) learn anything; anyone else gets
                // the answer a missing account gets, so the existence of an
                // account is not revealed.
                Some(("query", ns::DISCO_INFO)) if ty == "get" => {
                    if disco::is_contact(ctx, &bare, me) {
                        disco::account_info(ctx, me, &el, &bare)
                    } else {
                        error_reply(
                            ctx.domain,
                            me,
                            &el,
                            StanzaError::new(StanzaCondition::ServiceUnavailable),
                        )
                    }
                }
                Some(("vCard", ns::VCARD)) if ty == "get" => {
                    vcard::get_other(ctx, me, &el, &bare).await
                }
                Some(("ping", ns::PING)) if ty == "get" => Effects::write(iq_result(me, &el)),
                _ => error_reply(
                    ctx.domain,
                    me,
                    &el,
                    StanzaError::new(StanzaCondition::ServiceUnavailable),
                ),
            }
        }
        Addressee::Other(to) => {
            let mut el = el;
            el.set_attr("to", to.to_string());
            Effects::one(Effect::Route(el))
        }
    }
}

/// An iq for the server or for the account itself (`own`: addressed to
/// the user's bare JID).
async fn handle_server_iq(ctx: &Ctx<'_>, me: &Me<'_>, el: Element, own: bool) -> Effects {
    // RFC 6120 §10.3.3: no `to` is handled on behalf of the account.
    let account = own || el.attr("to").is_none();
    let ty = el.attr("type").unwrap_or("").to_string();
    let Some(child) = el.children().next() else {
        return Effects::none();
    };
    let key = (child.name().to_string(), child.ns().to_string());
    match (key.0.as_str(), key.1.as_str(), ty.as_str()) {
        ("query", ns::ROSTER, _) => roster::handle(ctx, me, el).await,
        ("ping", ns::PING, "get") => Effects::write(iq_result(me, &el)),
        // RFC 3921 session establishment: a no-op today.
        ("session", ns::SESSION, "set") => Effects::write(iq_result(me, &el)),
        ("blocklist" | "block" | "unblock", ns::BLOCKING, _) => blocking::handle(ctx, me, el).await,
        ("enable" | "disable", ns::PUSH, _) => push::handle(ctx, me, el).await,
        // XEP-0313: the account's own archive (no `to`, or its bare JID).
        ("query" | "prefs", ns::MAM, _) if account && ctx.router.archiver().is_some() => {
            mam::handle(ctx, me, el).await
        }
        // XEP-0163: the account's own PEP service.
        ("pubsub", ns::PUBSUB | ns::PUBSUB_OWNER, _) if account => {
            let owner = me.bare.clone();
            pep::handle(ctx, me, el, &owner).await
        }
        // XEP-0054: the user's own vCard.
        ("vCard", ns::VCARD, _) if account => vcard::handle(ctx, me, el).await,
        // XEP-0049: the user's private XML.
        ("query", ns::PRIVATE, _) if account => private::handle(ctx, me, el).await,
        // XEP-0092 asks the server (clients also send it without `to`).
        ("query", ns::VERSION, "get") if !own => Effects::write(disco::version(me, &el)),
        // XEP-0030: no `to` (RFC 6120 §10.3.3) or the own bare JID asks
        // about the account; the domain, about the server.
        ("query", ns::DISCO_INFO, "get") => {
            if account {
                disco::account_info(ctx, me, &el, me.bare)
            } else {
                disco::server_info(ctx, me, &el)
            }
        }
        ("query", ns::DISCO_ITEMS, "get") if account => disco::account_items(ctx, me, &el),
        ("query", ns::DISCO_ITEMS, "get") => Effects::write(disco::items(ctx, me, &el, true)),
        ("query", ns::REGISTER, _) => register::handle_authenticated(ctx, me, el).await,
        ("enable" | "disable", ns::CARBONS, "set") => {
            // XEP-0280 §4: enabling is per session, and other nodes need to
            // know (they send `received` copies), so it is in the binding.
            let failed = error_reply(
                ctx.domain,
                me,
                &el,
                StanzaError::new(StanzaCondition::InternalServerError),
            );
            Effects::one(Effect::Carbons {
                enable: key.0 == "enable",
                reply: iq_result(me, &el),
                failed: failed.into_write(),
            })
        }
        // Already bound (RFC 6120 §7.7.2.3 resource binding once).
        ("bind", ns::BIND, _) => error_reply(
            ctx.domain,
            me,
            &el,
            StanzaError::new(StanzaCondition::NotAllowed),
        ),
        // RFC 6120 §8.4: an unknown payload namespace.
        _ => error_reply(
            ctx.domain,
            me,
            &el,
            StanzaError::new(StanzaCondition::ServiceUnavailable),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me_parts() -> (FullJid, BareJid, HashSet<String>) {
        let full = FullJid::new("juliet@localhost/balcony").expect("jid");
        let bare = full.to_bare();
        (full, bare, HashSet::new())
    }

    #[test]
    fn addressee_classifies_the_to_address() {
        let (full, bare, directed) = me_parts();
        let me = Me {
            full: &full,
            bare: &bare,
            available: true,
            directed: &directed,
        };
        let to = |to: Option<&str>| {
            let el = Element::new("message", ns::CLIENT).with_opt_attr("to", to);
            addressee("localhost", &me, &el)
        };
        assert!(matches!(to(None), Ok(Addressee::Server)));
        assert!(matches!(to(Some("localhost")), Ok(Addressee::Server)));
        assert!(matches!(
            to(Some("juliet@localhost")),
            Ok(Addressee::OwnAccount)
        ));
        assert!(matches!(
            to(Some("Juliet@LOCALHOST")),
            Ok(Addressee::OwnAccount)
        ));
        assert!(
            matches!(to(Some("romeo@localhost")), Ok(Addressee::Account(b)) if b.as_str() == "romeo@localhost")
        );
        assert!(matches!(
            to(Some("romeo@localhost/r")),
            Ok(Addressee::Other(_))
        ));
        assert!(matches!(to(Some("localhost/x")), Ok(Addressee::Other(_))));
        assert!(matches!(
            to(Some("romeo@elsewhere")),
            Ok(Addressee::Other(_))
        ));
        assert!(
            matches!(to(Some("a@b@c")), Err(e) if e.condition == StanzaCondition::JidMalformed)
        );
    }

    #[test]
    fn error_replies_come_from_the_target_or_nobody_and_never_answer_errors() {
        let (full, bare, directed) = me_parts();
        let me = Me {
            full: &full,
            bare: &bare,
            available: true,
            directed: &directed,
        };
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("type", "get")
            .with_attr("id", "q1")
            .with_attr("to", "romeo@localhost");
        let reply = error_reply(
            "localhost",
            &me,
            &iq,
            StanzaError::new(StanzaCondition::ServiceUnavailable),
        )
        .into_write()
        .expect("an error reply");
        assert_eq!(reply.attr("from"), Some("romeo@localhost"));
        assert_eq!(reply.attr("to"), Some("juliet@localhost/balcony"));
        assert_eq!(reply.attr("id"), Some("q1"));
        let no_to = Element::new("iq", ns::CLIENT)
            .with_attr("type", "set")
            .with_attr("id", "q2");
        let reply = error_reply(
            "localhost",
            &me,
            &no_to,
            StanzaError::new(StanzaCondition::BadRequest),
        )
        .into_write()
        .expect("an error reply");
        // RFC 6120 §8.1.2.1: on the account's behalf, no `from` (a reply
        // from the domain is dropped by clients that check).
        assert_eq!(reply.attr("from"), None);
        // RFC 6120 §8.3.1: an error is never answered with an error.
        let err = Element::new("message", ns::CLIENT).with_attr("type", "error");
        assert!(error_reply(
            "localhost",
            &me,
            &err,
            StanzaError::new(StanzaCondition::BadRequest)
        )
        .is_empty());
    }
}
