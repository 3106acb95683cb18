//! XEP-0386 Bind 2 inside SASL2: a session bound with a server-generated
//! resource, committed as RFC 6120 binding commits it (`bind::attach`),
//! with the features the client asked to enable inline (XEP-0198, XEP-0280
//! carbons, XEP-0352 client state), answered in SASL2's `<success/>`.
use std::sync::Arc;

use tracing::warn;

use super::bind::attach;
use super::Session;
use crate::c2s::sasl2::{bound, bound_features, resource, success, BindRequest};
use crate::c2s::stream::Conn;
use crate::c2s::Shared;
use crate::xmpp::id::random_id;
use crate::xmpp::jid::FullJid;
use crate::xmpp::{StreamCondition, StreamError};

impl Session {
    /// Binds a session of `bare` for `request`, and answers the SASL2
    /// authentication with `<success/>` (carrying `additional`, then
    /// `inline`: a failed inline resumption's `<failed/>`), `<bound/>` and
    /// the features of the bound stream. `had`: see [`Session::bound`].
    /// `None`: the stream was closed.
    pub async fn bind2(
        shared: Arc<Shared>,
        mut conn: Conn,
        bare: &str,
        request: BindRequest,
        additional: &[u8],
        inline: &str,
        had: Vec<String>,
    ) -> Option<Session> {
        // §"Resource identifier generation": "[client tag]/[server
        // generated identifier]"; a tag that cannot be in a resource is
        // left out rather than failing the login.
        let random = random_id();
        let with_tag = resource(request.tag.as_deref(), &random);
        let full = FullJid::new(&format!("{bare}/{with_tag}"))
            .or_else(|_| FullJid::new(&format!("{bare}/{random}")));
        let Ok(full) = full else {
            warn!("cannot make a full JID for a Bind 2 request");
            return None;
        };
        // XEP-0386: "If the client included a XEP-0280 <enable/> element
        // in the requested features, Message Carbons MUST be enabled at
        // this point": in the binding committed.
        let Ok((id, rx)) = attach(&shared, &full, request.carbons).await else {
            let e = StreamError::with_text(
                StreamCondition::InternalServerError,
                "the cluster cannot bind sessions right now",
            );
            conn.fail(&e, &shared.domain).await;
            return None;
        };
        let mut s = Session::bound(shared, conn, full, id, rx, had);
        s.carbons = request.carbons;
        // "If the client included a XEP-0352 <active/> or <inactive/>
        // element, the session must begin in that state."
        s.inactive = request.inactive;
        // "If the client included a XEP-0198 <enable/> element ... The
        // <bound/> response MUST contain the resulting XEP-0198 <enabled/>
        // (or <failed/>) element."
        let enabled = request.sm.map(|resume| s.start_sm(resume));
        let mut answer = String::from(inline);
        answer.push_str(&bound(enabled.as_deref()));
        // XEP-0388 §"Success": the full JID "unless resource binding has
        // occurred", then the stream's features (no restart).
        let xml = success(additional, s.full.as_str(), &answer);
        s.conn.queue(&xml);
        s.conn.queue(&bound_features(enabled.is_some()));
        s.flushed().await
    }
}
