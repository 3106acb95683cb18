//! Who may read `/metrics` (`[http] metrics_allow`, `metrics_token_file`).
//! The HTTP port may be public for WebSocket clients, and the exposition
//! tells a stranger too much (accounts, sessions, cluster layout, load), so
//! by default only loopback may scrape, as with Prosody's
//! `mod_http_openmetrics` (`openmetrics_allow_ips`/`_cidr`).
//!
//! Two checks, both when both are configured:
//! 1. the request's TCP peer address is in an allowed range (the
//!    connection's, not `X-Forwarded-For`, which any client can write):
//!    else 403;
//! 2. with a token configured, `Authorization: Bearer <token>` (RFC 6750
//!    §2.1) carries it: compared in constant time (the SHA-256 digests, so
//!    neither the content nor the length of the token leaks through
//!    timing); else 401 with `WWW-Authenticate: Bearer` (RFC 6750 §3, with
//!    `error="invalid_token"` for a wrong one, §3.1).
//!
//! A refused request never reaches the exposition: no metric is rendered.
//! Pure: the handler passes the peer and the header.
use std::net::IpAddr;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::c2s::addr::{exempt, IpNet};
use crate::config::{ConfigError, HttpSection};

/// The realm named in `WWW-Authenticate`.
const REALM: &str = "starling metrics";

/// The `/metrics` access rules of one listener.
#[derive(Debug, Clone)]
pub struct MetricsAccess {
    allow: Vec<IpNet>,
    /// SHA-256 of the token, if one is required.
    token: Option<[u8; 32]>,
}

/// Why a scrape was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The peer address is not in `metrics_allow`.
    Address,
    /// A token is required and none was sent (or not as `Bearer`).
    NoToken,
    /// A bearer token was sent and it is not the one.
    WrongToken,
}

impl MetricsAccess {
    pub fn new(allow: Vec<IpNet>, token: Option<&str>) -> Self {
        MetricsAccess {
            allow,
            token: token.map(digest),
        }
    }

    /// From the `[http]` section (reads the token file).
    pub fn from_config(http: &HttpSection) -> Result<Self, ConfigError> {
        Ok(Self::new(
            http.metrics_allow_nets()?,
            http.metrics_token()?.as_deref(),
        ))
    }

    /// Whether a request from `peer` with this `Authorization` value may
    /// read the metrics.
    pub fn check(&self, peer: IpAddr, authorization: Option<&str>) -> Result<(), Refusal> {
        if !exempt(&self.allow, peer) {
            return Err(Refusal::Address);
        }
        let Some(want) = &self.token else {
            return Ok(());
        };
        let Some(given) = authorization.and_then(crate::admin::bearer_token) else {
            return Err(Refusal::NoToken);
        };
        if bool::from(digest(given).ct_eq(want)) {
            Ok(())
        } else {
            Err(Refusal::WrongToken)
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Address => (
                StatusCode::FORBIDDEN,
                "/metrics is not open to your address ([http] metrics_allow)\n",
            )
                .into_response(),
            Refusal::NoToken => (
                StatusCode::UNAUTHORIZED,
                [(
                    header::WWW_AUTHENTICATE,
                    format!("Bearer realm=\"{REALM}\""),
                )],
                "a bearer token is required\n",
            )
                .into_response(),
            Refusal::WrongToken => (
                StatusCode::UNAUTHORIZED,
                [(
                    header::WWW_AUTHENTICATE,
                    format!("Bearer realm=\"{REALM}\", error=\"invalid_token\""),
                )],
                "wrong bearer token\n",
            )
                .into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_default_is_loopback_only() {
        let a = MetricsAccess::from_config(&HttpSection::default()).unwrap();
        assert_eq!(a.check(ip("127.0.0.1"), None), Ok(()));
        assert_eq!(a.check(ip("127.3.2.1"), None), Ok(()));
        assert_eq!(a.check(ip("::1"), None), Ok(()));
        assert_eq!(a.check(ip("::ffff:127.0.0.1"), None), Ok(()));
        assert_eq!(a.check(ip("192.0.2.7"), None), Err(Refusal::Address));
        assert_eq!(a.check(ip("2001:db8::1"), None), Err(Refusal::Address));
    }

    #[test]
    fn the_token_is_checked_after_the_address() {
        let a = MetricsAccess::new(nets(&["10.0.0.0/8"]), Some("0123456789abcdef"));
        let good = Some("Bearer 0123456789abcdef");
        assert_eq!(a.check(ip("10.1.2.3"), good), Ok(()));
        assert_eq!(
            a.check(ip("10.1.2.3"), Some("bearer  0123456789abcdef")),
            Ok(())
        );
        assert_eq!(a.check(ip("192.0.2.1"), good), Err(Refusal::Address));
        assert_eq!(a.check(ip("10.1.2.3"), None), Err(Refusal::NoToken));
        assert_eq!(
            a.check(ip("10.1.2.3"), Some("Basic 0123456789abcdef")),
            Err(Refusal::NoToken)
        );
        for wrong in [
            "Bearer 0123456789abcdeF",
            "Bearer 0123456789abcde",
            "Bearer x",
        ] {
            assert_eq!(
                a.check(ip("10.1.2.3"), Some(wrong)),
                Err(Refusal::WrongToken)
            );
        }
    }

    #[test]
    fn an_empty_list_refuses_everyone() {
        let a = MetricsAccess::new(Vec::new(), None);
        assert_eq!(a.check(ip("127.0.0.1"), None), Err(Refusal::Address));
    }
}
