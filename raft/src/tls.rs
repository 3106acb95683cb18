//! Mutual TLS between nodes (raft and mesh share the raft port).
//!
//! Every node holds the cluster CA certificate and its own certificate and
//! key, signed by that CA. The raft port's server demands a client
//! certificate that chains to the CA (rustls' `WebPkiClientVerifier`, through
//! tonic's `client_ca_root`); a peer's channel presents its certificate and
//! accepts only a server certificate that chains to the same CA and names
//! [`ClusterTls::server_name`] (peers dial IP addresses, so a fixed DNS name
//! shared by every node certificate stands for "a member of this cluster").
//!
//! Only PEM bytes live here: reading files and generating certificates is
//! the server's business (`starling::cluster_tls`).
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The name every node certificate carries (DNS subject alternative name)
/// unless the configuration says otherwise.
pub const DEFAULT_SERVER_NAME: &str = "starling-cluster";

/// The cluster CA and this node's identity, as PEM.
#[derive(Clone)]
pub struct ClusterTls {
    /// The CA certificate(s) peers' certificates must chain to.
    pub ca_pem: Vec<u8>,
    /// This node's certificate chain (leaf first).
    pub cert_pem: Vec<u8>,
    /// This node's private key.
    pub key_pem: Vec<u8>,
    /// The DNS name a peer's certificate must carry.
    pub server_name: String,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ClusterTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClusterTls {
    /// What a peer's channel uses: present our certificate, trust only the CA.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(self.server_name.clone())
    }

    /// What the raft port serves with: our certificate, and a client
    /// certificate signed by the CA required of every connection.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(false)
    }
}
