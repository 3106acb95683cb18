//! XEP-0156 discovery over HTTP: `/.well-known/host-meta` (RFC 6415 XRD)
//! and `/.well-known/host-meta.json` (JRD), listing the cluster's RFC 7395
//! WebSocket endpoints (`[http] websocket_urls`: every node's, so a web
//! client can fail over), or this node's own as the request reached it.
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::HttpState;

/// XEP-0156 §3: the link relation of an RFC 7395 endpoint.
pub const WEBSOCKET_REL: &str = "urn:xmpp:alt-connections:websocket";

/// The endpoints to list for a request with these headers.
fn endpoints(st: &HttpState, headers: &HeaderMap) -> Vec<String> {
    if !st.config.websocket_urls.is_empty() {
        return st.config.websocket_urls.clone();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .or_else(|| st.config.addr.map(|a| a.to_string()))
        .unwrap_or_default();
    vec![format!(
        "{}://{host}/xmpp-websocket",
        super::ws_scheme(st.tls)
    )]
}

/// RFC 6415 §3 host-meta (XRD).
pub fn xrd(urls: &[String]) -> String {
    let mut x = String::from(
        "<?xml version='1.0' encoding='utf-8'?>\n<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n",
    );
    for u in urls {
        x.push_str("  <Link rel='");
        x.push_str(WEBSOCKET_REL);
        x.push_str("' href='");
        crate::xmpp::element::escape_into(&mut x, u, true);
        x.push_str("'/>\n");
    }
    x.push_str("</XRD>\n");
    x
}

/// RFC 6415 Appendix A host-meta.json (JRD).
pub fn jrd(urls: &[String]) -> String {
    let links: Vec<_> = urls
        .iter()
        .map(|u| serde_json::json!({ "rel": WEBSOCKET_REL, "href": u }))
        .collect();
    serde_json::json!({ "links": links }).to_string()
}

/// XEP-0156 §3.2: web clients on other origins read host-meta, so it is
/// served with CORS allowing any origin (it is public information).
fn with_type(body: String, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            ),
        ],
        body,
    )
        .into_response()
}

pub async fn host_meta_xml(State(st): State<HttpState>, headers: HeaderMap) -> Response {
    with_type(xrd(&endpoints(&st, &headers)), "application/xrd+xml")
}

pub async fn host_meta_json(State(st): State<HttpState>, headers: HeaderMap) -> Response {
    with_type(jrd(&endpoints(&st, &headers)), "application/json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_list_every_url_escaped() {
        let urls = vec![
            "wss://a.example:5281/xmpp-websocket".to_string(),
            "ws://127.0.0.1:5280/xmpp-websocket?x=1&y=2".to_string(),
        ];
        let x = xrd(&urls);
        assert!(x.contains("<Link rel='urn:xmpp:alt-connections:websocket' href='wss://a.example:5281/xmpp-websocket'/>"));
        assert!(x.contains("href='ws://127.0.0.1:5280/xmpp-websocket?x=1&amp;y=2'"));
        let j: serde_json::Value = serde_json::from_str(&jrd(&urls)).unwrap();
        assert_eq!(j["links"][1]["href"], urls[1]);
        assert_eq!(j["links"][0]["rel"], WEBSOCKET_REL);
    }
}
