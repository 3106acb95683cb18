//! XEP-0388 SASL2 over a connection: `<authenticate/>`, `<response/>` and
//! `<abort/>` during negotiation, then the inline features of a successful
//! authentication in the order XEP-0198 and XEP-0386 set: resumption
//! first, then Bind 2 (also after a failed resumption), then `<success/>`.
//! The exchange itself, its refusals, throttling and failure counting are
//! RFC 6120 SASL's (`c2s::auth`); binding and resumption are the same
//! paths as without SASL2 (`negotiate::locate_session`, `Session::bind2`
//! next to `Session::bind`, `Session::adopt`, a local `Resumption`).
//! XEP-0484 FAST: tokens issued on request after a password login, a
//! token login (HT-SHA-256-NONE) checked against the replicated slots
//! and rotated on every use, through raft.
use std::sync::Arc;

use starling_raft::command::{Command, Response};
use tracing::{debug, info, warn};

use super::fast::{self, HT_SHA_256_NONE};
use super::{sm_failed, success, Authenticate, Mech, ResumeReply};
use crate::c2s::auth::{self, Authenticated, Profile};
use crate::c2s::negotiate::{features, locate_session, Located, Outcome};
use crate::c2s::sasl::{decode_payload, SaslFailure, SaslSession, Step};
use crate::c2s::stream::{Conn, ConnError};
use crate::c2s::{Shared, Ticket};
use crate::clock::now_ms;
use crate::xmpp::jid::account_jid;
use crate::xmpp::{Element, StreamCondition, StreamError};

/// The negotiation's SASL state, shared with the RFC 6120 profile (one
/// exchange at a time, one count of failures per connection).
pub(in crate::c2s) struct Exchange<'a> {
    pub sasl: &'a mut Option<SaslSession>,
    /// The `<authenticate/>` of the exchange in progress, with the inline
    /// requests to process once it succeeds.
    pub pending: &'a mut Option<Authenticate>,
    pub failures: &'a mut u32,
}

/// What negotiation does next.
pub(in crate::c2s) enum Next {
    /// Wait for the client's next element.
    Continue,
    /// Authenticated, not bound: `<success/>` and the features of the
    /// authenticated stream were sent (no stream restart), the client
    /// binds as usual. `had`: queued messages a failed inline resumption
    /// said the client had.
    Authenticated { bare: String, had: Vec<String> },
    /// A session to bind, adopt or resume.
    Done(Box<Outcome>),
}

/// Handles one SASL2 element (`el` is in `urn:xmpp:sasl:2`) before
/// authentication.
pub(in crate::c2s) async fn handle(
    shared: &Arc<Shared>,
    conn: &mut Conn,
    ticket: &mut Ticket,
    st: &mut Exchange<'_>,
    el: &Element,
) -> Result<Next, ConnError> {
    let sasl2 = Profile::Sasl2;
    let step = match el.name() {
        "authenticate" => {
            if st.sasl.is_some() {
                // §"During Authentication": the client "MUST send only
                // <response/> elements as appropriate or an <abort/>
                // element"; "Servers MUST disconnect Clients immediately if
                // any other traffic is received."
                return Err(StreamError::with_text(
                    StreamCondition::PolicyViolation,
                    "an authentication is already in progress",
                )
                .into());
            }
            if !conn.secure {
                let f = sasl2.failure(SaslFailure::EncryptionRequired, None);
                conn.send(&f).await?;
                return Ok(Next::Continue);
            }
            if let Some(why) = auth::refusal(shared, conn.peer.ip()).await {
                auth::refuse(conn, sasl2, why, st.failures).await?;
                return Ok(Next::Continue);
            }
            let mut request = match Authenticate::parse(el) {
                Ok(r) => r,
                Err(f) => {
                    conn.send(&sasl2.failure(f, None)).await?;
                    return Ok(Next::Continue);
                }
            };
            let mechanism = match request.mechanism {
                Mech::Password(m) => m,
                Mech::Fast => return fast_login(shared, conn, ticket, st, request).await,
            };
            let initial = request.initial.take();
            let (session, step) =
                auth::start_sasl(shared, mechanism, initial, conn.channel_bindings.clone()).await;
            *st.sasl = Some(session);
            *st.pending = Some(request);
            step
        }
        "response" if st.pending.is_some() => match decode_payload(&el.text()) {
            Ok(bytes) => {
                auth::continue_sasl(
                    shared,
                    st.sasl,
                    bytes.unwrap_or_default(),
                    conn.channel_bindings.clone(),
                )
                .await
            }
            Err(f) => Step::Failure(f),
        },
        "abort" => {
            // §"Aborting": the server answers with `<aborted/>`.
            *st.sasl = None;
            *st.pending = None;
            let f = sasl2.failure(SaslFailure::Aborted, None);
            conn.send(&f).await?;
            return Ok(Next::Continue);
        }
        _ => {
            let f = sasl2.failure(SaslFailure::MalformedRequest, None);
            conn.send(&f).await?;
            return Ok(Next::Continue);
        }
    };
    let done = auth::sasl_step(shared, conn, ticket, st.sasl, step, st.failures, sasl2).await?;
    if st.sasl.is_none() {
        // Over, one way or the other.
        let request = st.pending.take();
        if let (Some(a), Some(request)) = (done, request) {
            let token = issue_requested(shared, &a.bare, &request).await;
            return inline(shared, conn, a, request, token).await;
        }
    }
    Ok(Next::Continue)
}

/// The inline features of a successful authentication. XEP-0388
/// §"Failure": "The server MUST NOT process any inline features requested
/// by the client in a failed authentication request", so only here.
/// `extra`: results of inline features already processed (a FAST token).
async fn inline(
    shared: &Arc<Shared>,
    conn: &mut Conn,
    a: Authenticated,
    request: Authenticate,
    extra: String,
) -> Result<Next, ConnError> {
    if let Some(ua) = &request.user_agent {
        debug!(id = ?ua.id, software = ?ua.software, device = ?ua.device, "SASL2 user agent");
    }
    let Authenticated { bare, additional } = a;
    let mut inline = String::new();
    let mut had = Vec::new();
    // XEP-0198 §"Inline Stream Resumption": "If the client included a
    // <resume/> element in its SASL2 <authenticate/> element, that MUST be
    // processed first by the server. If that resumption is successful, the
    // server MUST skip resource binding ... and MUST entirely ignore the
    // <bind/> request".
    match request.resume {
        Some(Ok(r)) => match locate_session(shared, &bare, &r.previd, r.h).await {
            Located::Here(permit) => {
                return Ok(Next::Done(Box::new(Outcome::Resume {
                    permit,
                    h: r.h,
                    previd: r.previd,
                    reply: ResumeReply::Sasl2 { additional, extra },
                })));
            }
            Located::Moved(state) => {
                return Ok(Next::Done(Box::new(Outcome::Adopt {
                    bare,
                    state,
                    reply: ResumeReply::Sasl2 { additional, extra },
                })));
            }
            // §"Failed Resumption": "the server MUST include the <failed/>
            // element defined by this specification in its SASL2
            // <success/> response, but also MUST continue to process the
            // <bind/> in order to establish a new session for the client."
            Located::Gone { had: known } => {
                had = known;
                inline.push_str(&sm_failed("item-not-found"));
            }
        },
        Some(Err(())) => inline.push_str(&sm_failed("bad-request")),
        None => {}
    }
    inline.push_str(&extra);
    if let Some(request) = request.bind {
        return Ok(Next::Done(Box::new(Outcome::Bind2 {
            bare,
            request,
            additional,
            inline,
            had,
        })));
    }
    // Not bound: the authorization identifier is the bare JID, and the
    // features of the authenticated stream follow at once (XEP-0388
    // §"Success": "Note that no stream restart occurs").
    let f = features(shared, conn, true);
    conn.queue(&success(&additional, &bare, &inline));
    conn.send(&f).await?;
    Ok(Next::Authenticated { bare, had })
}

/// XEP-0484 §"Client performs initial authentication": a token for the
/// client (its user-agent id) when asked for one with a mechanism offered;
/// the `<token/>` for `<success/>`, or nothing (no id, or the write did not
/// commit: the client logs in with its password next time).
async fn issue_requested(shared: &Shared, bare: &str, request: &Authenticate) -> String {
    if request.request_token.as_deref() != Some(HT_SHA_256_NONE) {
        return String::new();
    }
    let Some(client) = request.user_agent.as_ref().and_then(|u| u.id.clone()) else {
        debug!("a FAST token request without a user-agent id");
        return String::new();
    };
    let lifetime_ms = shared.config.fast_token_lifetime_secs.saturating_mul(1000);
    let minted = fast::mint(now_ms(), lifetime_ms);
    let expires_ms = minted.stored.expires_ms;
    let cmd = Command::IssueFastToken {
        user: bare.to_string(),
        client,
        token: minted.stored,
    };
    match shared.cluster.write(cmd).await {
        Ok(a) if a.response == Response::FastTokenIssued => {
            info!("FAST token issued");
            fast::token_xml(&minted.token, expires_ms)
        }
        Ok(a) => {
            warn!(response = ?a.response, "FAST token not issued");
            String::new()
        }
        Err(e) => {
            warn!(error = %e, "FAST token not issued");
            String::new()
        }
    }
}

/// XEP-0484 §"Client authenticates using FAST": one message, checked
/// against the client's token slots (no PBKDF2), then the use committed
/// (rotation: the next token goes into the `new` slot and is sent in
/// `<success/>`) or, with `invalidate`, the token revoked. Refusals,
/// throttling and failure counting are the password logins' (`auth`).
async fn fast_login(
    shared: &Arc<Shared>,
    conn: &mut Conn,
    ticket: &mut Ticket,
    st: &mut Exchange<'_>,
    mut request: Authenticate,
) -> Result<Next, ConnError> {
    let (step, token) = match fast_check(shared, &mut request).await {
        Ok((username, additional, token)) => (
            Step::Success {
                username,
                additional,
            },
            token,
        ),
        Err(f) => (Step::Failure(f), String::new()),
    };
    let sasl2 = Profile::Sasl2;
    let done = auth::sasl_step(shared, conn, ticket, st.sasl, step, st.failures, sasl2).await?;
    match done {
        Some(a) => inline(shared, conn, a, request, token).await,
        None => Ok(Next::Continue),
    }
}

/// The authcid, the server's HT answer and the `<token/>` to send, or why
/// the token login fails.
async fn fast_check(
    shared: &Shared,
    request: &mut Authenticate,
) -> Result<(String, Vec<u8>, String), SaslFailure> {
    // §"Client responsibilities": clients "MUST also provide the a SASL2
    // <user-agent> element with an 'id' attribute"; tokens are per client.
    let client = request
        .user_agent
        .as_ref()
        .and_then(|u| u.id.clone())
        .ok_or(SaslFailure::NotAuthorized)?;
    let initial = request
        .initial
        .take()
        .ok_or(SaslFailure::MalformedRequest)?;
    let (authcid, proof) = fast::parse_initial(&initial)?;
    let bare = account_jid(&authcid, &shared.domain).ok_or(SaslFailure::NotAuthorized)?;
    let now = now_ms();
    let lookup = || {
        let state = shared.cluster.state().read();
        let slots = state.data.fast_tokens.get(&(bare.clone(), client.clone()));
        fast::verify(slots, &proof, HT_SHA_256_NONE, now)
    };
    let before = shared.cluster.applied_index();
    let matched = match lookup() {
        Ok(m) => m,
        // A token issued through another node a moment ago (the phone's
        // connection dropped right after its login) may not be applied
        // here yet: look again after a read index, as for an account
        // (`auth::settle_miss`).
        Err(SaslFailure::NotAuthorized) if auth::settle_miss(shared, before).await => lookup()?,
        Err(f) => return Err(f),
    };
    let invalidate = request.fast.is_some_and(|f| f.invalidate);
    let (cmd, mut token) = if invalidate {
        // §"Client requests token invalidation": "the server MUST
        // immediately invalidate the token ... MUST NOT include a new
        // token in the response ..., unless the client also included a
        // FAST <request-token/> element".
        let cmd = Command::RevokeFastTokens {
            user: bare.clone(),
            client: Some(client),
            verifier: Some(matched.verifier),
        };
        (cmd, None)
    } else {
        let lifetime_ms = shared.config.fast_token_lifetime_secs.saturating_mul(1000);
        let next = fast::mint(now, lifetime_ms);
        let xml = fast::token_xml(&next.token, next.stored.expires_ms);
        let cmd = Command::UseFastToken {
            user: bare.clone(),
            client,
            verifier: matched.verifier,
            next: Some(next.stored),
        };
        (cmd, Some(xml))
    };
    match shared.cluster.write(cmd).await {
        Ok(a) => match a.response {
            Response::FastTokenUsed { found: true } => {}
            Response::FastTokensRevoked { count } if count > 0 => {}
            // Revoked or replaced since this node's copy was read.
            _ => return Err(SaslFailure::CredentialsExpired),
        },
        Err(e) => {
            warn!(error = %e, "a FAST login could not be committed");
            return Err(SaslFailure::TemporaryAuthFailure);
        }
    }
    if invalidate {
        token = Some(issue_requested(shared, &bare, request).await);
    }
    Ok((authcid, matched.responder, token.unwrap_or_default()))
}
