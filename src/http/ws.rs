//! The `/xmpp-websocket` endpoint: the RFC 7395 handshake (§3.1: the
//! `xmpp` subprotocol), the browser `Origin` check (`[http]
//! allowed_origins`), c2s admission, then the upgraded connection handed
//! to `c2s::serve_websocket`.
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use tracing::debug;

use super::{ConnInfo, HttpState};
use crate::c2s::admission::Refusal;
use crate::c2s::websocket::WsTransport;

/// RFC 7395 §3.1: the subprotocol name.
pub const SUBPROTOCOL: &str = "xmpp";

/// Room past `[xmpp] max_stanza_bytes` the WebSocket layer takes, so a
/// message just over the limit gets a stream error, not a bare close.
const MESSAGE_SLACK: usize = 64 * 1024;

pub async fn upgrade(
    State(st): State<HttpState>,
    Extension(info): Extension<ConnInfo>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    // RFC 7395 §3.1: the client's handshake "MUST include" `xmpp` in
    // Sec-WebSocket-Protocol; without it this is not an XMPP client.
    let offered = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL);
    if !offered {
        return (
            StatusCode::BAD_REQUEST,
            "the WebSocket subprotocol 'xmpp' is required (RFC 7395)\n",
        )
            .into_response();
    }
    if !origin_allowed(&st, &headers) {
        debug!(peer = %info.peer, origin = ?headers.get(header::ORIGIN), "WebSocket origin refused");
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    }
    if !st.c2s.serving.load(std::sync::atomic::Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not serving clients yet\n").into_response();
    }
    let (ticket, evicted) = match st.c2s.admit(info.peer.ip()) {
        Ok(t) => t,
        Err(why) => {
            let status = match why {
                Refusal::AcceptRate => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            return (status, "too many connections\n").into_response();
        }
    };
    let max = st.c2s.config.max_stanza_bytes;
    let ping = Duration::from_secs(st.config.ws_ping_secs);
    let shared = st.c2s.clone();
    ws.protocols([SUBPROTOCOL])
        .max_message_size(max + MESSAGE_SLACK)
        .max_frame_size(max + MESSAGE_SLACK)
        // Allocated per connection whether it reads or idles: tungstenite's
        // 128 KiB default cost ~120 KiB per idle session.
        .read_buffer_size(st.config.ws_read_buffer_bytes)
        .on_upgrade(move |socket| {
            let transport = WsTransport::new(socket, ping, max);
            crate::c2s::serve_websocket(
                shared,
                transport,
                info.peer,
                info.bindings,
                ticket,
                evicted,
            )
        })
}

/// A request without `Origin` (not a browser), one from the listener's
/// own origin, or one from an allowed origin.
fn origin_allowed(st: &HttpState, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let allowed = &st.config.allowed_origins;
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let scheme = if st.tls { "https" } else { "http" };
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|host| origin.eq_ignore_ascii_case(&format!("{scheme}://{host}")))
}
