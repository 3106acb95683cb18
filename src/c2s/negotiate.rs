//! Stream negotiation up to a bound resource (RFC 6120 §4-§7), XEP-0077
//! registration before authentication (limited per address, or only with
//! an XEP-0445 invitation token) and XEP-0198 resumption. SASL itself
//! (both profiles' shared steps) is `auth`; XEP-0388 SASL2 with its inline
//! Bind 2 and resumption is `sasl2`, entered from here.
//!
//! Each stream (the first, the one after STARTTLS, the one after SASL)
//! starts with the client's header, answered by ours and the features that
//! fit the state: TLS first (unless plaintext is allowed), then SASL (and
//! SASL2, which needs no new stream), then bind. Anything else before
//! authentication is a `not-authorized` stream error; before binding,
//! stanzas are refused the same way (§7.1).
//!
//! Why one file of ~580 lines: it is one async state machine over one
//! connection (the loop in `negotiate` and the steps it calls); the pure
//! parts already live elsewhere (`sasl/`, `sasl2/`, `auth_limit`,
//! `handoff`), and cutting the loop across files would hide its order of
//! steps.
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use super::auth::{self, Profile};
use super::handoff::{belongs_to, SessionHandoff};
use super::preauth;
use super::sasl::{Mechanism, SaslFailure, SaslSession, Step};
use super::sasl2::{self, BindRequest, ResumeReply};
use super::session::Session;
use super::stream::{stream_header, Conn, ConnError};
use super::{Shared, Ticket};
use crate::config::Registration;
use crate::xmpp::framer::Event;
use crate::xmpp::{ns, Element, StanzaCondition, StanzaError, StreamCondition, StreamError};

/// How a negotiation ended well.
pub enum Negotiated {
    /// A resource is bound: run the session.
    Bound(Box<Session>),
    /// The connection was handed to a detached session (XEP-0198).
    Resumed,
}

/// A new connection for a detached XEP-0198 session.
pub struct Resumption {
    pub conn: Conn,
    /// The client's count of stanzas it received (`h`).
    pub h: u32,
    pub previd: String,
    /// The connection's admission slot: it goes with the connection to the
    /// session that takes it, and is given back when that connection ends.
    pub ticket: super::Ticket,
    /// `<resumed/>` alone, or inside SASL2's `<success/>`.
    pub reply: ResumeReply,
}

pub(super) enum Outcome {
    Bind {
        bare: String,
        iq: Element,
        /// Queued messages the client had (from a failed resumption's `h`
        /// and the delivery hints): not sent again.
        had: Vec<String>,
    },
    /// A session another node handed over (the client resumed it here).
    Adopt {
        bare: String,
        state: Box<SessionHandoff>,
        reply: ResumeReply,
    },
    /// XEP-0386: bind inside SASL2's `<success/>`, which carries
    /// `additional` and, before `<bound/>`, `inline` (a failed inline
    /// resumption).
    Bind2 {
        bare: String,
        request: BindRequest,
        additional: Vec<u8>,
        inline: String,
        had: Vec<String>,
    },
    /// A detached (or half-open) session of this node takes the
    /// connection; its slot is reserved.
    Resume {
        permit: tokio::sync::mpsc::OwnedPermit<Resumption>,
        h: u32,
        previd: String,
        reply: ResumeReply,
    },
}

/// Negotiates `conn` up to a bound session; `ticket` is its admission
/// slot, moved to the session pool when SASL succeeds.
pub async fn negotiate(
    shared: &Arc<Shared>,
    mut conn: Conn,
    ticket: &mut Ticket,
) -> Option<Negotiated> {
    let timeout = Duration::from_secs(shared.config.negotiation_timeout_secs);
    let res = tokio::time::timeout(timeout, steps(shared, &mut conn, ticket)).await;
    let outcome = match res {
        Ok(Ok(o)) => o,
        Ok(Err(ConnError::Stream(e))) => {
            debug!(error = %e, "negotiation failed");
            conn.fail(&e, &shared.domain).await;
            return None;
        }
        Ok(Err(ConnError::Closed)) => {
            conn.close().await;
            return None;
        }
        Ok(Err(e)) => {
            debug!(error = %e, "connection lost during negotiation");
            return None;
        }
        Err(_) => {
            conn.fail(
                &StreamError::with_text(
                    StreamCondition::ConnectionTimeout,
                    "negotiation took too long",
                ),
                &shared.domain,
            )
            .await;
            return None;
        }
    };
    match outcome {
        Outcome::Bind { bare, iq, had } => Session::bind(shared.clone(), conn, &bare, iq, had)
            .await
            .map(|s| Negotiated::Bound(Box::new(s))),
        Outcome::Adopt { bare, state, reply } => {
            Session::adopt(shared.clone(), conn, &bare, *state, reply)
                .await
                .map(|s| Negotiated::Bound(Box::new(s)))
        }
        Outcome::Bind2 {
            bare,
            request,
            additional,
            inline,
            had,
        } => Session::bind2(
            shared.clone(),
            conn,
            &bare,
            request,
            &additional,
            &inline,
            had,
        )
        .await
        .map(|s| Negotiated::Bound(Box::new(s))),
        Outcome::Resume {
            permit,
            h,
            previd,
            reply,
        } => {
            // The session may have ended since the slot was reserved; then
            // the connection is dropped with it and the client reconnects.
            permit.send(Resumption {
                conn,
                h,
                previd,
                ticket: ticket.take(),
                reply,
            });
            Some(Negotiated::Resumed)
        }
    }
}

/// The resumption slot of session `previd` of `bare` on this node, if it
/// exists and is free (a second resumption attempt while one is being
/// handed over gets `<failed/>` rather than waiting).
fn reserve_resumption(
    shared: &Shared,
    bare: &str,
    previd: &str,
) -> Option<tokio::sync::mpsc::OwnedPermit<Resumption>> {
    let tx = {
        let map = shared.resumable.lock().unwrap_or_else(|p| p.into_inner());
        map.get(previd)
            .filter(|(owner, _)| owner == bare)
            .map(|(_, tx)| tx.clone())?
    };
    tx.try_reserve_owned().ok()
}

/// Where the session a client resumes is (XEP-0198 §5).
pub(super) enum Located {
    /// Detached (or half-open) on this node: its slot is reserved.
    Here(tokio::sync::mpsc::OwnedPermit<Resumption>),
    /// Another node handed it over (see `router::takeover`).
    Moved(Box<SessionHandoff>),
    /// Gone: it ended, or its node is unreachable or could not hand it
    /// over. The queued messages the client had (its `h` and the delivery
    /// hints) are not sent again.
    Gone { had: Vec<String> },
}

/// Finds session `previd` of `bare` for a client that counted `h`
/// stanzas, here or on another node.
pub(super) async fn locate_session(shared: &Shared, bare: &str, previd: &str, h: u32) -> Located {
    if let Some(permit) = reserve_resumption(shared, bare, previd) {
        return Located::Here(permit);
    }
    let answer = shared.router.take_over_remote(bare, previd, h).await;
    let moved = answer
        .session
        .as_deref()
        .and_then(SessionHandoff::from_json);
    if let Some(state) = moved {
        if belongs_to(&state, bare, previd) {
            return Located::Moved(Box::new(state));
        }
        warn!("a peer handed over a session that is not the one asked for");
    }
    // XEP-0198 §5: the client may bind a new session on this stream;
    // everything it did not acknowledge is in its replicated queue and
    // comes after its initial presence. What it had of that is known from
    // its `h` and the delivery hints, this node's and its peers'.
    let had = answer.had;
    info!(
        h,
        known = had.len(),
        "resumption failed: the session is not here and no peer handed it over"
    );
    Located::Gone { had }
}

fn header_error(
    name: &str,
    ns_: &str,
    default_ns: Option<&str>,
    attrs: &[(String, String)],
    domain: &str,
) -> Option<StreamError> {
    let attr = |k: &str| attrs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    // RFC 6120 §4.9.3.10: wrong stream namespace or content namespace.
    if name != "stream" || ns_ != ns::STREAM {
        return Some(StreamError::with_text(
            StreamCondition::InvalidNamespace,
            "the stream element must be <stream:stream> in http://etherx.jabber.org/streams",
        ));
    }
    if default_ns != Some(ns::CLIENT) {
        return Some(StreamError::with_text(
            StreamCondition::InvalidNamespace,
            "the content namespace must be jabber:client",
        ));
    }
    // §4.7.5: version 1.0 or higher major-compatible.
    let major = attr("version")
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok());
    if major != Some(1) {
        return Some(StreamError::with_text(
            StreamCondition::UnsupportedVersion,
            "this server speaks XMPP version 1.0",
        ));
    }
    // §4.9.3.6: a domain this server does not serve.
    if let Some(to) = attr("to") {
        let ok = jid::BareJid::new(to)
            .map(|j| j.to_string() == domain)
            .unwrap_or(false);
        if !ok {
            return Some(StreamError::with_text(
                StreamCondition::HostUnknown,
                format!("this server serves {domain}"),
            ));
        }
    }
    None
}

pub(super) fn features(shared: &Shared, conn: &Conn, authed: bool) -> String {
    let mut f = String::from("<stream:features>");
    let tls_ok = conn.secure || shared.config.allow_plaintext;
    // RFC 7395 §3.9 ("Use of TLS"): over WebSocket TLS is the
    // WebSocket's; the server "MUST NOT advertise TLS as a stream feature".
    if !conn.secure && !conn.is_websocket() {
        // RFC 6120 §5.3.1: TLS is mandatory-to-negotiate unless plaintext
        // is allowed by configuration.
        if shared.config.allow_plaintext {
            f.push_str(&format!("<starttls xmlns='{}'/>", ns::TLS));
        } else {
            f.push_str(&format!(
                "<starttls xmlns='{}'><required/></starttls>",
                ns::TLS
            ));
        }
    }
    if !authed && tls_ok {
        f.push_str(&format!("<mechanisms xmlns='{}'>", ns::SASL));
        for m in Mechanism::offered(&conn.channel_bindings) {
            f.push_str(&format!("<mechanism>{}</mechanism>", m.name()));
        }
        f.push_str("</mechanisms>");
        if conn.secure {
            // XEP-0388 §"Security Considerations": "SASL2 MUST only be
            // used by Clients or offered by Servers after TLS
            // negotiation" (so not on plaintext even where allowed).
            f.push_str(&sasl2::feature(&conn.channel_bindings));
        }
        f.push_str(&channel_binding_feature(&conn.channel_bindings));
        if shared.config.registration == Registration::Token {
            // XEP-0445 §4: invitations are accepted.
            f.push_str(&format!("<register xmlns='{}'/>", ns::IBR_TOKEN));
        }
        if shared.config.registration.enabled() {
            f.push_str(&format!("<register xmlns='{}'/>", ns::REGISTER_FEATURE));
        }
    }
    if authed {
        f.push_str(&format!("<bind xmlns='{}'/>", ns::BIND));
        f.push_str(&format!(
            "<session xmlns='{}'><optional/></session>",
            ns::SESSION
        ));
        f.push_str(&format!("<sm xmlns='{}'/>", ns::SM));
        f.push_str(&format!("<csi xmlns='{}'/>", ns::CSI));
        f.push_str(&format!("<sub xmlns='{}'/>", ns::PRE_APPROVAL));
    }
    f.push_str("</stream:features>");
    f
}

/// XEP-0440 §2: "a stream feature named <sasl-channel-binding/> qualified
/// by the 'urn:xmpp:sasl-cb:0' namespace", which "MUST contain one or more
/// <channel-binding/>" elements: one per type this connection has data
/// for, next to the mechanisms (RFC 6120 SASL and SASL2 alike); nothing
/// without TLS, where no -PLUS mechanism is offered either.
pub(super) fn channel_binding_feature(bindings: &super::sasl::ChannelBindings) -> String {
    if bindings.is_empty() {
        return String::new();
    }
    let mut f = format!("<sasl-channel-binding xmlns='{}'>", ns::SASL_CB);
    for t in bindings.types() {
        f.push_str(&format!("<channel-binding type='{}'/>", t.name()));
    }
    f.push_str("</sasl-channel-binding>");
    f
}

/// SASL payload: absent, "=" (empty) or base64 (RFC 6120 §6.4.2).
fn decode_payload(el: &Element) -> Result<Option<Vec<u8>>, super::sasl::SaslFailure> {
    let text: String = el.text().chars().filter(|c| !c.is_whitespace()).collect();
    super::sasl::decode_payload(&text)
}

async fn steps(
    shared: &Arc<Shared>,
    conn: &mut Conn,
    ticket: &mut Ticket,
) -> Result<Outcome, ConnError> {
    let mut authed: Option<String> = None;
    let mut had: Vec<String> = Vec::new();
    let mut sasl: Option<SaslSession> = None;
    // A SASL2 exchange in progress: its inline requests (see `sasl2`).
    let mut sasl2: Option<sasl2::Authenticate> = None;
    let mut sasl_failures = 0u32;
    // The hash of the invitation token this connection presented and the
    // server accepted (XEP-0445), until an account is registered with it.
    let mut preauth: Option<String> = None;
    let ip = conn.peer.ip();
    'stream: loop {
        // Every stream starts with the client's header.
        let Event::StreamOpen {
            name,
            ns: ns_,
            default_ns,
            attrs,
        } = conn.next_event().await?
        else {
            return Err(StreamError::with_text(
                StreamCondition::NotWellFormed,
                "expected a stream header",
            )
            .into());
        };
        let from = attrs
            .iter()
            .find(|(k, _)| k == "from")
            .map(|(_, v)| v.clone())
            .filter(|f| jid::Jid::new(f).is_ok());
        let id = crate::xmpp::id::random_id();
        let header = stream_header(&shared.domain, from.as_deref(), &id);
        conn.queue(&header);
        conn.header_sent = true;
        if let Some(e) = header_error(&name, &ns_, default_ns.as_deref(), &attrs, &shared.domain) {
            return Err(e.into());
        }
        let f = features(shared, conn, authed.is_some());
        conn.send(&f).await?;

        loop {
            let el = match conn.next_event().await? {
                Event::Stanza(el) => el,
                Event::StreamClose => return Err(ConnError::Closed),
                Event::StreamOpen { .. } => {
                    return Err(StreamError::with_text(
                        StreamCondition::NotWellFormed,
                        "unexpected stream header",
                    )
                    .into())
                }
            };
            let tls_ok = conn.secure || shared.config.allow_plaintext;
            match (el.name(), el.ns()) {
                ("starttls", ns::TLS) => {
                    if conn.secure {
                        // §5.4.2.2: failure, then close.
                        conn.send(&format!("<failure xmlns='{}'/>", ns::TLS))
                            .await?;
                        return Err(ConnError::Closed);
                    }
                    conn.send(&format!("<proceed xmlns='{}'/>", ns::TLS))
                        .await?;
                    // A turn at a handshake (`max_concurrent_handshakes`),
                    // within the negotiation's timeout like the rest.
                    let upgraded = shared
                        .tls_handshake(
                            Duration::from_secs(shared.config.negotiation_timeout_secs),
                            conn.upgrade_tls(
                                shared.tls.starttls.clone(),
                                shared.tls.server_end_point.as_deref(),
                            ),
                        )
                        .await;
                    match upgraded {
                        Some(r) => r?,
                        None => return Err(ConnError::Closed),
                    }
                    continue 'stream;
                }
                ("auth", ns::SASL) if authed.is_none() => {
                    let legacy = Profile::Legacy;
                    sasl2 = None;
                    if !tls_ok {
                        let f = legacy.failure(SaslFailure::EncryptionRequired, None);
                        conn.send(&f).await?;
                        continue;
                    }
                    if let Some(why) = auth::refusal(shared, ip).await {
                        auth::refuse(conn, legacy, why, &mut sasl_failures).await?;
                        continue;
                    }
                    let Some(mech) = el.attr("mechanism").and_then(Mechanism::from_name) else {
                        let f = legacy.failure(SaslFailure::InvalidMechanism, None);
                        conn.send(&f).await?;
                        continue;
                    };
                    let Ok(initial) = decode_payload(&el) else {
                        let f = legacy.failure(SaslFailure::IncorrectEncoding, None);
                        conn.send(&f).await?;
                        continue;
                    };
                    let (session, step) =
                        auth::start_sasl(shared, mech, initial, conn.channel_bindings.clone())
                            .await;
                    sasl = Some(session);
                    let done = auth::sasl_step(
                        shared,
                        conn,
                        ticket,
                        &mut sasl,
                        step,
                        &mut sasl_failures,
                        legacy,
                    )
                    .await?;
                    if let Some(a) = done {
                        authed = Some(a.bare);
                        conn.restart();
                        continue 'stream;
                    }
                }
                ("response", ns::SASL) if authed.is_none() && sasl2.is_none() => {
                    if sasl.is_none() {
                        // No exchange to answer: not a try of a password.
                        let f = Profile::Legacy.failure(SaslFailure::MalformedRequest, None);
                        conn.send(&f).await?;
                        continue;
                    }
                    let step = match decode_payload(&el) {
                        Ok(bytes) => {
                            auth::continue_sasl(
                                shared,
                                &mut sasl,
                                bytes.unwrap_or_default(),
                                conn.channel_bindings.clone(),
                            )
                            .await
                        }
                        Err(f) => Step::Failure(f),
                    };
                    let done = auth::sasl_step(
                        shared,
                        conn,
                        ticket,
                        &mut sasl,
                        step,
                        &mut sasl_failures,
                        Profile::Legacy,
                    )
                    .await?;
                    if let Some(a) = done {
                        authed = Some(a.bare);
                        conn.restart();
                        continue 'stream;
                    }
                }
                ("abort", ns::SASL) if sasl2.is_none() => {
                    sasl = None;
                    let f = Profile::Legacy.failure(SaslFailure::Aborted, None);
                    conn.send(&f).await?;
                }
                ("authenticate" | "response" | "abort", ns::SASL2) if authed.is_none() => {
                    let mut st = sasl2::flow::Exchange {
                        sasl: &mut sasl,
                        pending: &mut sasl2,
                        failures: &mut sasl_failures,
                    };
                    match sasl2::flow::handle(shared, conn, ticket, &mut st, &el).await? {
                        sasl2::flow::Next::Continue => {}
                        sasl2::flow::Next::Authenticated { bare, had: h } => {
                            authed = Some(bare);
                            had = h;
                        }
                        sasl2::flow::Next::Done(o) => return Ok(*o),
                    }
                }
                ("iq", ns::CLIENT)
                    if authed.is_none()
                        && tls_ok
                        && el.children().any(|c| c.ns() == ns::REGISTER) =>
                {
                    let reply = preauth::register(shared, ip, &el, &mut preauth).await;
                    let xml = reply.to_xml(ns::CLIENT);
                    conn.send(&xml).await?;
                }
                ("iq", ns::CLIENT)
                    if authed.is_none() && tls_ok && el.has_child("preauth", ns::PARS) =>
                {
                    let reply = preauth::present_invite(shared, &el, &mut preauth);
                    conn.send(&reply.to_xml(ns::CLIENT)).await?;
                }
                ("iq", ns::CLIENT) if authed.is_some() && el.has_child("bind", ns::BIND) => {
                    if el.attr("type") != Some("set") {
                        let reply = StanzaError::new(StanzaCondition::BadRequest)
                            .reply_to(&el)
                            .unwrap_or(el);
                        conn.send(&reply.to_xml(ns::CLIENT)).await?;
                        continue;
                    }
                    let bare = authed.take().unwrap_or_default();
                    return Ok(Outcome::Bind {
                        bare,
                        iq: el,
                        had: std::mem::take(&mut had),
                    });
                }
                ("resume", ns::SM) if authed.is_some() => {
                    let h = el.attr("h").and_then(|h| h.parse::<u32>().ok());
                    let previd = el.attr("previd").map(str::to_string);
                    let (Some(h), Some(previd)) = (h, previd) else {
                        conn.send(&sasl2::sm_failed("bad-request")).await?;
                        continue;
                    };
                    let bare = authed.clone().unwrap_or_default();
                    match locate_session(shared, &bare, &previd, h).await {
                        Located::Here(permit) => {
                            let reply = ResumeReply::Sm;
                            return Ok(Outcome::Resume {
                                permit,
                                h,
                                previd,
                                reply,
                            });
                        }
                        Located::Moved(state) => {
                            let reply = ResumeReply::Sm;
                            return Ok(Outcome::Adopt { bare, state, reply });
                        }
                        Located::Gone { had: h } => {
                            had = h;
                            conn.send(&sasl2::sm_failed("item-not-found")).await?;
                        }
                    }
                }
                ("enable", ns::SM) => {
                    // XEP-0198 §3: only after binding.
                    conn.send(&format!(
                        "<failed xmlns='{}'><unexpected-request xmlns='{}'/></failed>",
                        ns::SM,
                        ns::STANZA_ERRORS
                    ))
                    .await?;
                }
                _ if authed.is_none() => {
                    // RFC 6120 §6 / §4.9.3.12: nothing else before SASL.
                    return Err(StreamError::with_text(
                        StreamCondition::NotAuthorized,
                        if tls_ok {
                            "authenticate first"
                        } else {
                            "negotiate TLS first"
                        },
                    )
                    .into());
                }
                _ => {
                    // §7.1: no stanzas before a resource is bound.
                    return Err(StreamError::with_text(
                        StreamCondition::NotAuthorized,
                        "bind a resource first",
                    )
                    .into());
                }
            }
        }
    }
}
