//! TLS configuration for client connections.
