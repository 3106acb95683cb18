//! In-band registration (XEP-0077): account creation before
//! authentication (when enabled in the config), and for an authenticated
//! user: password change and account removal.
use std::sync::Arc;

use starling_raft::command::{Command, Response};
use starling_raft::credentials::{Credentials, DEFAULT_ITERATIONS};
use tracing::info;

use super::{iq_result, reply_error};
use crate::c2s::negotiate::account_jid;
use crate::c2s::session::Session;
use crate::c2s::Shared;
use crate::clock::now_ms;
use crate::router::ToSession;
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

/// XEP-0077 §3.1 before authentication.
pub async fn handle_unauthenticated(shared: &Arc<Shared>, iq: &Element) -> Element {
    if !shared.config.registration {
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
            let Some(bare) = account_jid(&user, &shared.domain) else {
                return error(
                    iq,
                    StanzaError::with_text(StanzaCondition::JidMalformed, "invalid username"),
                );
            };
            let Some(credentials) = derive(password).await else {
                return error(iq, StanzaError::new(StanzaCondition::InternalServerError));
            };
            let cmd = Command::CreateUser {
                jid: bare.clone(),
                credentials,
                created_ms: now_ms(),
            };
            match shared.cluster.write(cmd).await {
                Ok(a) => match a.response {
                    Response::UserCreated => {
                        info!(jid = %bare, "account registered");
                        result(iq)
                    }
                    // XEP-0077 §3.1: the username is taken.
                    Response::UserExists => error(iq, StanzaError::new(StanzaCondition::Conflict)),
                    _ => error(iq, StanzaError::new(StanzaCondition::InternalServerError)),
                },
                Err(_) => error(iq, StanzaError::new(StanzaCondition::InternalServerError)),
            }
        }
        _ => error(iq, StanzaError::new(StanzaCondition::BadRequest)),
    }
}

/// XEP-0077 §3.2 (cancel) and §3.3 (password change) for a bound session.
pub async fn handle_authenticated(s: &mut Session, iq: Element) {
    let Some(q) = iq.get_child("query", ns::REGISTER) else {
        return;
    };
    let username = s.bare.node().map(|n| n.to_string()).unwrap_or_default();
    match iq.attr("type") {
        Some("get") => {
            let reply = iq_result(s, &iq).with_child(
                Element::new("query", ns::REGISTER)
                    .with_child(Element::new("registered", ns::REGISTER))
                    .with_child(Element::new("username", ns::REGISTER).with_text(username))
                    .with_child(Element::new("password", ns::REGISTER)),
            );
            s.write_stanza(reply);
        }
        Some("set") if q.has_child("remove", ns::REGISTER) => {
            let cmd = Command::DeleteUser {
                jid: s.bare.to_string(),
            };
            match s.shared.cluster.write(cmd).await {
                Ok(_) => {
                    info!(jid = %s.bare, "account removed by its user");
                    let reply = iq_result(s, &iq);
                    s.write_stanza(reply);
                    // §3.2: the account is gone; so is the session.
                    if let Some(me) = s.shared.router.local_session(s.full.as_str()) {
                        let _ = me.tx.try_send(ToSession::Kick(StreamError::with_text(
                            StreamCondition::NotAuthorized,
                            "account removed",
                        )));
                    }
                }
                Err(_) => reply_error(
                    s,
                    &iq,
                    StanzaError::new(StanzaCondition::InternalServerError),
                ),
            }
        }
        Some("set") => {
            let (Some(user), Some(password)) = (field(q, "username"), field(q, "password")) else {
                return reply_error(s, &iq, StanzaError::new(StanzaCondition::BadRequest));
            };
            if account_jid(&user, &s.shared.domain).as_deref() != Some(s.bare.as_str())
                || password.is_empty()
            {
                return reply_error(s, &iq, StanzaError::new(StanzaCondition::NotAllowed));
            }
            let Some(credentials) = derive(password).await else {
                return reply_error(
                    s,
                    &iq,
                    StanzaError::new(StanzaCondition::InternalServerError),
                );
            };
            let cmd = Command::SetPassword {
                jid: s.bare.to_string(),
                credentials,
            };
            match s.shared.cluster.write(cmd).await {
                Ok(_) => {
                    let reply = iq_result(s, &iq);
                    s.write_stanza(reply);
                }
                Err(_) => reply_error(
                    s,
                    &iq,
                    StanzaError::new(StanzaCondition::InternalServerError),
                ),
            }
        }
        _ => reply_error(s, &iq, StanzaError::new(StanzaCondition::BadRequest)),
    }
}
