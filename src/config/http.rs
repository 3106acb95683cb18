//! `[http]`: the node's HTTP listener (`src/http/`): RFC 7395 XMPP over
//! WebSocket at `/xmpp-websocket`, XEP-0156 discovery at
//! `/.well-known/host-meta[.json]`, `/healthz`, `/readyz` and who may read
//! `/metrics`. Its fields, their defaults and the rules checked before any
//! port is bound.
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};

/// `[http]`: the HTTP listener. Off unless `addr` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Address of the HTTP listener. Default: unset (no HTTP listener).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<SocketAddr>,
    /// Serve HTTPS (and so `wss://`) with the node's client certificate
    /// (`[xmpp] tls_cert`/`tls_key`, or the self-signed one). Default:
    /// `true`. Plain HTTP is allowed only while `addr` is loopback, or with
    /// `insecure_plaintext = true` (behind a reverse proxy that terminates
    /// TLS).
    pub tls: bool,
    /// Allow plain HTTP (`ws://`) on a non-loopback `addr`: WebSocket
    /// sessions are then treated as secure (SASL PLAIN and SASL2 offered),
    /// so only for a listener reached through a TLS-terminating proxy.
    /// Default: `false`.
    pub insecure_plaintext: bool,
    /// The `Origin` values a browser may open a WebSocket from, exactly as
    /// browsers send them (`https://chat.example.org`); `"*"` allows any.
    /// A request without `Origin` (a native client) is always allowed, and
    /// a request whose `Origin` is the listener's own (same scheme, host and
    /// port as its `Host` header) too. Default: empty (same origin only).
    pub allowed_origins: Vec<String>,
    /// The WebSocket endpoints XEP-0156 discovery lists, every node's, in
    /// order of preference (`wss://node1.example.org:5281/xmpp-websocket`),
    /// so a web client can fail over. Default: empty, which lists this
    /// node's own endpoint as the request reached it (its `Host` header).
    pub websocket_urls: Vec<String>,
    /// Most HTTP connections open at once, not counting those upgraded to
    /// WebSocket (which count against `[xmpp]`'s connection limits, as
    /// TCP clients do). Default: 10000.
    pub max_connections: usize,
    /// Time a client has to send a request's headers, on a new or an idle
    /// kept-alive connection. Seconds. Default: 10.
    pub request_timeout_secs: u64,
    /// A WebSocket ping is sent after this long without a frame from the
    /// client (RFC 7395 §3.8 prefers WebSocket pings to whitespace); the
    /// session's `[xmpp] idle_timeout_secs` ends it if nothing answers.
    /// Seconds. Default: 30.
    pub ws_ping_secs: u64,
    /// The read buffer each WebSocket connection allocates up front
    /// (tungstenite's `read_buffer_size`, whose own default of 128 KiB made
    /// an idle WebSocket session cost about 120 KiB of memory against
    /// about 2 KiB on TCP; BENCHMARKS.md "The HTTP face"). A larger message
    /// still fits: the buffer grows for it (up to `[xmpp]
    /// max_stanza_bytes`). Bytes, 256 to 1048576. Default: 4096.
    pub ws_read_buffer_bytes: usize,
    /// The address ranges (`addr/len`, or a bare address) whose requests
    /// `/metrics` answers, matched against the request's TCP peer address
    /// (never a header such as `X-Forwarded-For`: behind a reverse proxy
    /// the peer is the proxy, so list the proxy and set
    /// `metrics_token_file`). Any other peer gets 403 and no metric.
    /// IPv4-mapped IPv6 peers count as their IPv4 address. Empty:
    /// `/metrics` answers nobody. Default: `["127.0.0.0/8", "::1"]`
    /// (loopback only, as Prosody's `mod_http_openmetrics`).
    pub metrics_allow: Vec<String>,
    /// A file holding a bearer token (at least 16 printable ASCII
    /// characters; surrounding whitespace ignored) that a `/metrics`
    /// request must also carry as `Authorization: Bearer <token>` (RFC 6750
    /// §2.1; Prometheus's `authorization: credentials_file`), for a
    /// Prometheus on another host: its address in `metrics_allow` and the
    /// token, over HTTPS (`tls = true`) so the token is not sent in clear.
    /// Checked after `metrics_allow`, in constant time; a missing or wrong
    /// token gets 401 with `WWW-Authenticate: Bearer`. Read at start-up.
    /// Keep it mode 0600. Default: unset (no token asked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_token_file: Option<PathBuf>,
}

/// Shortest `/metrics` bearer token accepted.
const MIN_METRICS_TOKEN: usize = 16;

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            addr: None,
            tls: true,
            insecure_plaintext: false,
            allowed_origins: Vec::new(),
            websocket_urls: Vec::new(),
            max_connections: 10_000,
            request_timeout_secs: 10,
            ws_ping_secs: 30,
            ws_read_buffer_bytes: 4096,
            metrics_allow: vec!["127.0.0.0/8".into(), "::1".into()],
            metrics_token_file: None,
        }
    }
}

impl HttpSection {
    /// `metrics_allow`, parsed.
    pub fn metrics_allow_nets(&self) -> Result<Vec<crate::c2s::addr::IpNet>, ConfigError> {
        self.metrics_allow
            .iter()
            .enumerate()
            .map(|(i, n)| {
                n.parse().map_err(|e: crate::c2s::addr::IpNetError| {
                    invalid(format!("http.metrics_allow[{i}]"), e.to_string())
                })
            })
            .collect()
    }

    /// The `/metrics` bearer token read from `metrics_token_file`, if set.
    pub fn metrics_token(&self) -> Result<Option<String>, ConfigError> {
        let Some(path) = &self.metrics_token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            invalid(
                "http.metrics_token_file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let token = text.trim();
        if token.len() < MIN_METRICS_TOKEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "http.metrics_token_file",
                format!(
                    "{}: the token must be at least {MIN_METRICS_TOKEN} printable ASCII characters without spaces",
                    path.display()
                ),
            ));
        }
        Ok(Some(token.to_string()))
    }

    /// The checks of `[http]`; `taken`: the node's other listen addresses.
    pub fn validate(&self, taken: &[SocketAddr]) -> Result<(), ConfigError> {
        let Some(addr) = self.addr else {
            return Ok(());
        };
        self.metrics_allow_nets()?;
        self.metrics_token()?;
        if taken.contains(&addr) {
            return Err(invalid(
                "http.addr",
                "must differ from the other listen addresses",
            ));
        }
        if !self.tls && !self.insecure_plaintext && !addr.ip().is_loopback() {
            return Err(invalid(
                "http.tls",
                format!(
                    "plain HTTP on a non-loopback address ({addr}) needs insecure_plaintext = true \
                     (only behind a proxy that terminates TLS)"
                ),
            ));
        }
        for (field, v) in [
            ("http.max_connections", self.max_connections as u64),
            ("http.request_timeout_secs", self.request_timeout_secs),
            ("http.ws_ping_secs", self.ws_ping_secs),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be positive"));
            }
        }
        if !(256..=1 << 20).contains(&self.ws_read_buffer_bytes) {
            return Err(invalid(
                "http.ws_read_buffer_bytes",
                "must be between 256 and 1048576",
            ));
        }
        for (i, o) in self.allowed_origins.iter().enumerate() {
            let ok = o == "*"
                || ((o.starts_with("http://") || o.starts_with("https://"))
                    && !o.ends_with('/')
                    && !o.contains(char::is_whitespace));
            if !ok {
                return Err(invalid(
                    format!("http.allowed_origins[{i}]"),
                    format!("{o:?}: expected \"*\" or an origin like \"https://chat.example.org\" (scheme, host, optional port; no path)"),
                ));
            }
        }
        for (i, u) in self.websocket_urls.iter().enumerate() {
            let ok = (u.starts_with("ws://") || u.starts_with("wss://"))
                && !u.contains(char::is_whitespace)
                && !u.contains(['<', '>', '"', '\'', '&']);
            if !ok {
                return Err(invalid(
                    format!("http.websocket_urls[{i}]"),
                    format!("{u:?}: expected a ws:// or wss:// URL"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(addr: &str) -> HttpSection {
        HttpSection {
            addr: Some(addr.parse().unwrap()),
            ..HttpSection::default()
        }
    }

    #[test]
    fn plaintext_only_on_loopback_unless_said() {
        let mut h = with("0.0.0.0:5280");
        h.tls = false;
        assert!(h.validate(&[]).is_err());
        h.insecure_plaintext = true;
        assert!(h.validate(&[]).is_ok());
        let mut h = with("127.0.0.1:5280");
        h.tls = false;
        assert!(h.validate(&[]).is_ok());
        assert!(with("0.0.0.0:5280").validate(&[]).is_ok());
    }

    #[test]
    fn origins_and_urls_are_checked() {
        let mut h = with("127.0.0.1:5280");
        h.allowed_origins = vec!["https://a.example".into(), "*".into()];
        assert!(h.validate(&[]).is_ok());
        h.allowed_origins = vec!["a.example".into()];
        assert!(h.validate(&[]).is_err());
        h.allowed_origins.clear();
        h.websocket_urls = vec!["http://x/xmpp-websocket".into()];
        assert!(h.validate(&[]).is_err());
        h.websocket_urls = vec!["wss://x:5281/xmpp-websocket".into()];
        assert!(h.validate(&[]).is_ok());
        let taken = ["127.0.0.1:5280".parse().unwrap()];
        assert!(h.validate(&taken).is_err());
        let mut h = with("127.0.0.1:5280");
        h.ws_read_buffer_bytes = 100;
        assert!(h.validate(&[]).is_err());
    }

    #[test]
    fn metrics_access_is_checked() {
        let mut h = with("127.0.0.1:5280");
        assert_eq!(h.metrics_allow_nets().unwrap().len(), 2);
        assert_eq!(h.metrics_token().unwrap(), None);
        h.metrics_allow = vec!["10.0.0.0/33".into()];
        assert!(h.validate(&[]).is_err());
        h.metrics_allow = vec!["10.0.0.0/8".into(), "2001:db8::/32".into()];
        assert!(h.validate(&[]).is_ok());
        let dir =
            std::env::temp_dir().join(format!("starling-metrics-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        h.metrics_token_file = Some(file.clone());
        assert!(h.validate(&[]).is_err(), "a missing file");
        std::fs::write(&file, "short\n").unwrap();
        assert!(h.validate(&[]).is_err(), "a short token");
        std::fs::write(&file, "with a space in the middle\n").unwrap();
        assert!(h.validate(&[]).is_err(), "spaces");
        std::fs::write(&file, "  0123456789abcdef0123\n").unwrap();
        assert_eq!(
            h.metrics_token().unwrap().as_deref(),
            Some("0123456789abcdef0123")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
