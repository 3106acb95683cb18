//! In-band registration (XEP-0077): account creation before
//! authentication (when enabled in the config), with one use of an
//! invitation when the connection presented one (XEP-0445), and for an
//! authenticated user: password change and account removal. Who may
//! register (the per-address limit, the token requirement) is decided
//! before this, in `c2s::negotiate`.
use starling_raft::command::{Command, Response};
use starling_raft::credentials::{Credentials, DEFAULT_ITERATIONS};
use tracing::info;

use super::{error_reply, iq_result, Ctx, Effect, Effects, Me};
use crate::clock::now_ms;
use crate::xmpp::jid::account_jid;
use crate::xmpp::{ns, Element, StanzaCondition, StanzaError, StreamCondition, StreamError};

fn field(q: &Element, name: &str) -> Option<String> {
    q.get_child(name, ns::REGISTER).map(|e| e.text())
}

fn error(iq: &Element, e: StanzaError) -> Element {
    e.reply_to(iq)
        .unwrap_or_else(|| Element::new("iq", ns::CLIENT))
}

fn result(iq: &Element) -> Element {
    Element::new("iq", ns::CLIENT)
        .with_attr("type", "result")
        .with_opt_attr("id", iq.attr("id"))
}

/// Salted SCRAM credentials, derived off the async threads (PBKDF2).
async fn derive(password: String) -> Option<Credentials> {
    tokio::task::spawn_blocking(move || Credentials::derive(&password, DEFAULT_ITERATIONS))
        .await
        .ok()
}

/// XEP-0077 §3.1 before authentication; `invite`: the hash of the
/// invitation token the connection presented (XEP-0445), one use of which
/// the account takes.
pub async fn handle_unauthenticated(ctx: &Ctx<'_>, iq: &Element, invite: Option<&str>) -> Element {
    if !ctx.registration {
        return error(iq, StanzaError::new(StanzaCondition::ServiceUnavailable));
    }
    let Some(q) = iq.get_child("query", ns::REGISTER) else {
        return error(iq, StanzaError::new(StanzaCondition::ServiceUnavailable));
    };
    match iq.attr("type") {
        Some("get") => result(iq).with_child(
            Element::new("query", ns::REGISTER)
                .with_child(
                    Element::new("instructions", ns::REGISTER)
                        .with_text("Choose a username and password."),
                )
                .with_child(Element::new("username", ns::REGISTER))
                .with_child(Element::new("password", ns::REGISTER)),
        ),
        Some("set") => {
            if q.has_child("remove", ns::REGISTER) {
                return error(iq, StanzaError::new(StanzaCondition::NotAuthorized));
            }
            let (Some(user), Some(password)) = (field(q, "username"), field(q, "password")) else {
                return error(iq, StanzaError::new(StanzaCondition::NotAcceptable));
            };
            if password.is_empty() {
                return error(
                    iq,
                    StanzaError::with_text(StanzaCondition::NotAcceptable, "empty password"),
                );
            }
            let Some(bare) = account_jid(&user, ctx.domain) else {
                return error(
                    iq,
                    StanzaError::with_text(StanzaCondition::JidMalformed, "invalid username"),
                );
            };
            let Some(credentials) = derive(password).await else {
                return error(iq, StanzaError::new(StanzaCondition::InternalServerError));
            };
            let cmd = match invite {
                Some(hash) => Command::RegisterWithInvite {
                    jid: bare.clone(),
                    credentials,
                    created_ms: now_ms(),
                    invite: hash.to_string(),
                },
                None => Command::CreateUser {
                    jid: bare.clone(),
                    credentials,
                    created_ms: now_ms(),
                },
            };
            match ctx.cluster.write(cmd).await {
                Ok(a) => match a.response {
                    Response::UserCreated => {
                        info!(jid = %bare, invited = invite.is_some(), "account registered");
                        result(iq)
                    }
                    // XEP-0077 §3.1: the username is taken.
                    Response::UserExists => error(iq, StanzaError::new(StanzaCondition::Conflict)),
                    // Used up (or revoked) since the client presented it.
                    Response::InviteInvalid => error(
                        iq,
                        StanzaError::with_text(
                            StanzaCondition::Forbidden,
                            "the invitation token is used up or was revoked",
                        ),
                    ),
                    _ => error(iq, StanzaError::new(StanzaCondition::InternalServerError)),
                },
                Err(_) => error(iq, StanzaError::new(StanzaCondition::InternalServerError)),
            }
        }
        _ => error(iq, StanzaError::new(StanzaCondition::BadRequest)),
    }
}

/// XEP-0077 §3.2 (cancel) and §3.3 (password change) for a bound session.
pub async fn handle_authenticated(ctx: &Ctx<'_>, me: &Me<'_>, iq: Element) -> Effects {
    let Some(q) = iq.get_child("query", ns::REGISTER) else {
        return Effects::none();
    };
    let fail = |c| error_reply(ctx.domain, me, &iq, StanzaError::new(c));
    let username = me.bare.node().map(|n| n.to_string()).unwrap_or_default();
    match iq.attr("type") {
        Some("get") => Effects::write(
            iq_result(me, &iq).with_child(
                Element::new("query", ns::REGISTER)
                    .with_child(Element::new("registered", ns::REGISTER))
                    .with_child(Element::new("username", ns::REGISTER).with_text(username))
                    .with_child(Element::new("password", ns::REGISTER)),
            ),
        ),
        Some("set") if q.has_child("remove", ns::REGISTER) => {
            let cmd = Command::DeleteUser {
                jid: me.bare.to_string(),
            };
            match ctx.cluster.write(cmd).await {
                Ok(_) => {
                    info!(jid = %me.bare, "account removed by its user");
                    // §3.2: the account is gone; so is the session.
                    Effects(vec![
                        Effect::Write(iq_result(me, &iq)),
                        Effect::End(StreamError::with_text(
                            StreamCondition::NotAuthorized,
                            "account removed",
                        )),
                    ])
                }
                Err(_) => fail(StanzaCondition::InternalServerError),
            }
        }
        Some("set") => {
            let (Some(user), Some(password)) = (field(q, "username"), field(q, "password")) else {
                return fail(StanzaCondition::BadRequest);
            };
            if account_jid(&user, ctx.domain).as_deref() != Some(me.bare.as_str())
                || password.is_empty()
            {
                return fail(StanzaCondition::NotAllowed);
            }
            let Some(credentials) = derive(password).await else {
                return fail(StanzaCondition::InternalServerError);
            };
            let cmd = Command::SetPassword {
                jid: me.bare.to_string(),
                credentials,
            };
            match ctx.cluster.write(cmd).await {
                Ok(_) => Effects::write(iq_result(me, &iq)),
                Err(_) => fail(StanzaCondition::InternalServerError),
            }
        }
        _ => fail(StanzaCondition::BadRequest),
    }
}
