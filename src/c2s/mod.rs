//! Client-to-server connections (RFC 6120): TLS, SASL, resource binding and
//! the session loop.

pub mod sasl;
pub mod tls;
