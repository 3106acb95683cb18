//! What an unauthenticated stream may do besides authenticating: XEP-0077
//! in-band registration (limited per address by `register_limit`, or only
//! with an XEP-0445 invitation token it presented first). Called from
//! `negotiate`'s loop.
use std::sync::Arc;
use std::time::Instant;

use tracing::debug;

use super::Shared;
use crate::config::Registration;
use crate::xmpp::{ns, Element, StanzaCondition, StanzaError};

fn error_reply(iq: &Element, e: StanzaError) -> Element {
    e.reply_to(iq)
        .unwrap_or_else(|| Element::new("iq", ns::CLIENT))
}

/// XEP-0445 §5: the client presents an invitation token before
/// registering. Checked against this node's replicated state, expiry
/// included (and only here: §5 says a later step must not fail for it);
/// not used up until an account is registered with it.
pub(super) fn present_invite(
    shared: &Shared,
    iq: &Element,
    preauth: &mut Option<String>,
) -> Element {
    if shared.config.registration != Registration::Token {
        return error_reply(iq, StanzaError::new(StanzaCondition::ServiceUnavailable));
    }
    if iq.attr("type") != Some("set") {
        return error_reply(iq, StanzaError::new(StanzaCondition::BadRequest));
    }
    let token = iq
        .get_child("preauth", ns::PARS)
        .and_then(|p| p.attr("token"))
        .unwrap_or_default();
    let hash = starling_raft::command::invite_hash(token);
    let usable = !token.is_empty() && {
        let state = shared.cluster.state().read();
        state
            .data
            .invites
            .get(&hash)
            .is_some_and(|i| i.usable_at(crate::clock::now_ms()))
    };
    if !usable {
        debug!("an invitation token was refused");
        return error_reply(
            iq,
            StanzaError::with_text(
                StanzaCondition::ItemNotFound,
                "The provided token is invalid or expired",
            ),
        );
    }
    *preauth = Some(hash);
    Element::new("iq", ns::CLIENT)
        .with_attr("type", "result")
        .with_opt_attr("id", iq.attr("id"))
}

/// XEP-0077 before authentication. `open`: within the address's
/// registration limit (`register_limit`): a new account takes a slot first
/// and gives it back if it was not created. `token`: only with the
/// invitation the connection presented (`preauth`), which is the limit.
pub(super) async fn register(
    shared: &Arc<Shared>,
    ip: std::net::IpAddr,
    iq: &Element,
    preauth: &mut Option<String>,
) -> Element {
    let creates = shared.config.registration.enabled()
        && iq.attr("type") == Some("set")
        && iq
            .get_child("query", ns::REGISTER)
            .is_some_and(|q| !q.has_child("remove", ns::REGISTER));
    if !creates {
        return crate::im::register::handle_unauthenticated(&shared.im(), iq, None).await;
    }
    if shared.config.registration == Registration::Token {
        let Some(hash) = preauth.clone() else {
            return error_reply(
                iq,
                StanzaError::with_text(
                    StanzaCondition::Forbidden,
                    "registration needs an invitation token (XEP-0445): \
                     present it with <preauth xmlns='urn:xmpp:pars:0' token='...'/> first",
                ),
            );
        };
        let reply =
            crate::im::register::handle_unauthenticated(&shared.im(), iq, Some(&hash)).await;
        if reply.attr("type") == Some("result") {
            // One account per presentation.
            *preauth = None;
        }
        return reply;
    }
    let taken = {
        let mut l = shared
            .registrations
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        l.take(ip, Instant::now())
    };
    let slot = match taken {
        Ok(slot) => slot,
        Err(wait) => {
            debug!(
                retry_secs = wait.as_secs(),
                "registration refused: the address's limit is reached"
            );
            // XEP-0077 §3.1.1 (Registration with a Server): "a server MAY
            // return a <not-acceptable/> stanza error if an unregistered
            // entity attempts to register too many times before
            // authenticating". Type `wait` (RFC 6120 §8.3.2): the limit
            // lifts with time, and the text says when.
            let e = StanzaError::with_text(
                StanzaCondition::NotAcceptable,
                format!(
                    "too many accounts registered from your address; try again in {} s",
                    wait.as_secs().max(1)
                ),
            )
            .of_type("wait");
            return error_reply(iq, e);
        }
    };
    let reply = crate::im::register::handle_unauthenticated(&shared.im(), iq, None).await;
    if reply.attr("type") != Some("result") {
        let mut l = shared
            .registrations
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        l.give_back(slot);
    }
    reply
}
