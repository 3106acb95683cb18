//! XEP-0357 Push Notifications, the client's side: `<enable/>` (§5) with
//! its optional publish-options form, `<disable/>` (§6), and what they are
//! answered. Registrations are replicated ([`Command::EnablePush`],
//! [`Command::DisablePush`]; at most `xmpp.max_push_registrations` per
//! account, more is `resource-constraint`), so any node can push for any
//! account; which one does, and how, is `router::push`.
//!
//! A registration remembers the full JID of the session that enabled it
//! (the device): while that session is bound, its node decides its pushes.
//! Enabling the same JID and node again replaces the registration (a
//! device's new session, or new options), as Prosody's mod_cloud_notify
//! keys them.
//!
//! # The body
//! The summary carries `last-message-body` only if the client asked for
//! it, with a field `include-body` (value `1` or `true`) in its enable
//! form: a Starling extension (XEP-0357 leaves it to the server; Prosody
//! and ejabberd have a server-wide switch), stripped from the
//! publish-options the app server gets. By default the app server (and
//! the platform push service behind it) sees no message text.
//!
//! # The app server's address
//! Without server-to-server connections or components, an app server is
//! reached only as a local account's full JID, which the router delivers
//! the pushes to: a JID on another domain is refused with
//! `remote-server-not-found`; this server's own domain (no pubsub
//! service), or an account's bare JID (its iqs are the server's to
//! answer, RFC 6121 §8.5.2.1.3), with `service-unavailable`.
use starling_raft::command::{Budget, Command, FormField, PushRegistration, Response};
use tracing::{info, warn};

use super::{error_reply, iq_result, Ctx, Effects, Me};
use crate::clock::now_ms;
use crate::xmpp::jid::Jid;
use crate::xmpp::{ns, Element, StanzaCondition, StanzaError};

/// Most fields in one publish-options form, and most bytes of its values.
const MAX_OPTION_FIELDS: usize = 32;
const MAX_OPTION_BYTES: usize = 4096;
/// The enable-form field asking for message bodies in pushes.
pub const INCLUDE_BODY: &str = "include-body";

pub async fn handle(ctx: &Ctx<'_>, me: &Me<'_>, el: Element) -> Effects {
    let Some(child) = el.children().next() else {
        return Effects::none();
    };
    let parsed = match (child.name(), el.attr("type")) {
        ("enable", Some("set")) => parse_enable(ctx, me, child).map(|reg| Command::EnablePush {
            owner: me.bare.to_string(),
            registration: reg,
            max_registrations: ctx.max_push_registrations,
        }),
        ("disable", Some("set")) => parse_disable(child).map(|(jid, node)| Command::DisablePush {
            owner: me.bare.to_string(),
            jid,
            node,
        }),
        _ => Err(StanzaError::new(StanzaCondition::BadRequest)),
    };
    let cmd = match parsed {
        Ok(c) => c,
        Err(e) => return error_reply(ctx.domain, me, &el, e),
    };
    match commit(ctx, cmd).await {
        Ok(()) => Effects::write(iq_result(me, &el)),
        Err(e) => error_reply(ctx.domain, me, &el, e),
    }
}

fn bad_request(text: &str) -> StanzaError {
    StanzaError::with_text(StanzaCondition::BadRequest, text)
}

/// The app server's JID of an `<enable/>` or `<disable/>`, normalized.
fn service_jid(el: &Element) -> Result<Jid, StanzaError> {
    let jid = el.attr("jid").ok_or_else(|| bad_request("missing jid"))?;
    Jid::new(jid).map_err(|_| StanzaError::new(StanzaCondition::JidMalformed))
}

/// §5: the registration an `<enable/>` asks for, or the error to answer.
pub fn parse_enable(
    ctx: &Ctx<'_>,
    me: &Me<'_>,
    enable: &Element,
) -> Result<PushRegistration, StanzaError> {
    let jid = service_jid(enable)?;
    let node = enable
        .attr("node")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| bad_request("missing node"))?;
    check_service(ctx, me, &jid)?;
    let (options, include_body) = match enable.get_child("x", ns::XDATA) {
        Some(x) => options(x)?,
        None => (Vec::new(), false),
    };
    Ok(PushRegistration {
        jid: jid.to_string(),
        node: node.to_string(),
        resource: me.full.to_string(),
        options,
        include_body,
        enabled_ms: now_ms(),
    })
}

/// Whether pushes to `jid` could be delivered (see the module doc).
fn check_service(ctx: &Ctx<'_>, me: &Me<'_>, jid: &Jid) -> Result<(), StanzaError> {
    let s = jid.to_string();
    if s == me.bare.as_str() || s == me.full.as_str() {
        return Err(bad_request("the push service must not be this account"));
    }
    if jid.domain().as_str() != ctx.domain {
        return Err(StanzaError::with_text(
            StanzaCondition::RemoteServerNotFound,
            "this server does not federate: an app server on another domain cannot be reached",
        ));
    }
    if jid.node().is_none() {
        return Err(StanzaError::with_text(
            StanzaCondition::ServiceUnavailable,
            "this server has no pubsub service",
        ));
    }
    if jid.resource().is_none() {
        // RFC 6121 §8.5.2.1.3: an iq to a bare JID is answered by the
        // server on the account's behalf, never by the app server.
        return Err(StanzaError::with_text(
            StanzaCondition::ServiceUnavailable,
            "a local app server is addressed by its full JID",
        ));
    }
    let bare = jid.to_bare();
    if !ctx.router.user_exists(&bare) {
        return Err(StanzaError::with_text(
            StanzaCondition::ItemNotFound,
            "no such app server account",
        ));
    }
    Ok(())
}

/// The publish-options of an enable form, without `include-body`, and
/// whether it asked for bodies. The form must be a submitted
/// publish-options form (XEP-0357 §5, XEP-0060 §7.1.5), and small.
pub fn options(x: &Element) -> Result<(Vec<FormField>, bool), StanzaError> {
    if x.attr("type").is_some_and(|t| t != "submit") {
        return Err(bad_request(
            "the publish-options form must be of type submit",
        ));
    }
    let mut out = Vec::new();
    let mut include_body = false;
    let mut bytes = 0;
    for f in x.children().filter(|c| c.is("field", ns::XDATA)) {
        let var = f
            .attr("var")
            .ok_or_else(|| bad_request("a publish-options field without var"))?;
        let values: Vec<String> = f
            .children()
            .filter(|v| v.is("value", ns::XDATA))
            .map(|v| v.text())
            .collect();
        bytes += var.len() + values.iter().map(String::len).sum::<usize>();
        if var == "FORM_TYPE" && values.iter().any(|v| v != ns::PUBSUB_PUBLISH_OPTIONS) {
            return Err(bad_request("a publish-options form is expected"));
        }
        if var == INCLUDE_BODY {
            include_body = values.iter().any(|v| v == "1" || v == "true");
            continue;
        }
        out.push(FormField {
            var: var.to_string(),
            kind: f.attr("type").map(str::to_string),
            values,
        });
    }
    if out.len() > MAX_OPTION_FIELDS || bytes > MAX_OPTION_BYTES {
        return Err(StanzaError::with_text(
            StanzaCondition::NotAcceptable,
            format!(
                "publish-options too large (at most {MAX_OPTION_FIELDS} fields, {MAX_OPTION_BYTES} bytes)"
            ),
        ));
    }
    Ok((out, include_body))
}

/// §6: the JID and, if given, the node of a `<disable/>`.
pub fn parse_disable(disable: &Element) -> Result<(String, Option<String>), StanzaError> {
    let jid = service_jid(disable)?.to_string();
    let node = disable
        .attr("node")
        .filter(|n| !n.is_empty())
        .map(str::to_string);
    Ok((jid, node))
}

/// Commits `cmd`; the stanza error if it was refused or its outcome is
/// not known.
async fn commit(ctx: &Ctx<'_>, cmd: Command) -> Result<(), StanzaError> {
    match ctx.cluster.write(cmd).await {
        Ok(a) => match a.response {
            Response::PushEnabled { replaced } => {
                info!(replaced, "push notifications enabled");
                Ok(())
            }
            Response::PushDisabled { removed } => {
                info!(removed, "push notifications disabled");
                Ok(())
            }
            // RFC 6120 §8.3.3.18: the account has its cap.
            Response::OverBudget {
                budget: Budget::PushRegistrations,
                cap,
            } => Err(StanzaError::with_text(
                StanzaCondition::ResourceConstraint,
                format!("too many push registrations (at most {cap}): disable one first"),
            )),
            other => {
                warn!(?other, "unexpected push registration result");
                Err(StanzaError::new(StanzaCondition::InternalServerError))
            }
        },
        Err(e) => {
            warn!(error = %e, "push registration not committed");
            Err(StanzaError::new(StanzaCondition::InternalServerError))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stanza(xml: &str) -> Element {
        crate::xmpp::parse_stanza(xml).expect("test stanza parses")
    }

    #[test]
    fn disable_needs_a_jid_and_takes_a_node() {
        let e = parse_disable(&stanza("<disable xmlns='urn:xmpp:push:0' node='n'/>"))
            .expect_err("no jid");
        assert_eq!(e.condition, StanzaCondition::BadRequest);
        let e = parse_disable(&stanza("<disable xmlns='urn:xmpp:push:0' jid='a@b@c'/>"))
            .expect_err("bad jid");
        assert_eq!(e.condition, StanzaCondition::JidMalformed);
        assert_eq!(
            parse_disable(&stanza(
                "<disable xmlns='urn:xmpp:push:0' jid='App@Localhost/p'/>"
            )),
            Ok(("app@localhost/p".to_string(), None))
        );
        assert_eq!(
            parse_disable(&stanza(
                "<disable xmlns='urn:xmpp:push:0' jid='app@localhost' node='n1'/>"
            )),
            Ok(("app@localhost".to_string(), Some("n1".to_string())))
        );
    }

    #[test]
    fn options_keep_the_form_strip_include_body_and_are_bounded() {
        let x = stanza(
            "<x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
             <field var='secret'><value>eruio234vzxc2kla-91</value></field>\
             <field var='include-body'><value>true</value></field></x>",
        );
        let (opts, body) = options(&x).expect("valid");
        assert!(body);
        assert_eq!(
            opts.iter().map(|f| f.var.as_str()).collect::<Vec<_>>(),
            ["FORM_TYPE", "secret"]
        );
        let (_, body) = options(&stanza(
            "<x xmlns='jabber:x:data' type='submit'><field var='secret'><value>s</value></field></x>",
        ))
        .expect("valid");
        assert!(!body, "no body unless asked");
        let e = options(&stanza("<x xmlns='jabber:x:data' type='form'/>")).expect_err("form");
        assert_eq!(e.condition, StanzaCondition::BadRequest);
        let e = options(&stanza(
            "<x xmlns='jabber:x:data'><field var='FORM_TYPE'><value>urn:other</value></field></x>",
        ))
        .expect_err("other form type");
        assert_eq!(e.condition, StanzaCondition::BadRequest);
        let big = format!(
            "<x xmlns='jabber:x:data'><field var='k'><value>{}</value></field></x>",
            "v".repeat(MAX_OPTION_BYTES + 1)
        );
        let e = options(&stanza(&big)).expect_err("too large");
        assert_eq!(e.condition, StanzaCondition::NotAcceptable);
    }
}
