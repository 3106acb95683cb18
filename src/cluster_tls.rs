//! The cluster's own PKI for mutual TLS between nodes (`[cluster_tls]`).
//!
//! - [`load`]: reads the configured CA, certificate and key into the PEM
//!   bundle the raft network uses (`starling_raft::tls::ClusterTls`).
//! - [`ClusterCa`]: a fresh CA made with rcgen, and node certificates it
//!   signs; [`write_cluster`] puts a CA and one certificate per node in a
//!   directory (every file mode 0600 on Unix). `starling dev` and the test
//!   clusters use it; operators may use it or their own CA (README
//!   "Cluster TLS" has the openssl commands).
//!
//! A node certificate is valid for both ends of a link (extended key usage
//! serverAuth and clientAuth) and carries the cluster's DNS name
//! (`server_name`, default `starling-cluster`), which is what peers verify.
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use starling_raft::tls::{ClusterTls, DEFAULT_SERVER_NAME};

use crate::config::ClusterTlsSection;

/// Why the cluster certificates could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum ClusterTlsError {
    #[error("cluster_tls: cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cluster_tls: cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cluster_tls: {path} holds no PEM {what}")]
    NotPem { path: PathBuf, what: &'static str },
    #[error("cluster_tls: cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Reads the files named by `[cluster_tls]`.
pub fn load(section: &ClusterTlsSection) -> Result<ClusterTls, ClusterTlsError> {
    let read = |path: &Path, what: &'static str, marker: &str| {
        let data = std::fs::read(path).map_err(|source| ClusterTlsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if !String::from_utf8_lossy(&data).contains(marker) {
            return Err(ClusterTlsError::NotPem {
                path: path.to_path_buf(),
                what,
            });
        }
        Ok(data)
    };
    Ok(ClusterTls {
        ca_pem: read(&section.ca, "certificate", "-----BEGIN CERTIFICATE")?,
        cert_pem: read(&section.cert, "certificate", "-----BEGIN CERTIFICATE")?,
        key_pem: read(&section.key, "private key", "PRIVATE KEY-----")?,
        server_name: section.server_name.clone(),
    })
}

/// A cluster CA held in memory: its certificate and key.
pub struct ClusterCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A node certificate and its key, PEM.
pub struct NodeCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl ClusterCa {
    /// A new self-signed CA (ECDSA P-256), named after `cluster`.
    pub fn generate(cluster: &str) -> Result<Self, ClusterTlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Starling cluster CA {cluster}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(ClusterCa { cert, key })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA private key, PEM.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A certificate for node `node_id`, for `server_name`, signed by this CA.
    pub fn issue(&self, node_id: u64, server_name: &str) -> Result<NodeCert, ClusterTlsError> {
        let mut params = CertificateParams::new(vec![server_name.to_string()])?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("starling node {node_id}"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(NodeCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Makes a CA and a certificate for each of `node_ids` in `dir`
/// (`ca.pem`, `ca-key.pem`, `node<i>.pem`, `node<i>-key.pem`, all mode 0600)
/// and returns each node's `[cluster_tls]`, in the order of `node_ids`.
pub fn write_cluster(
    dir: &Path,
    node_ids: &[u64],
) -> Result<Vec<ClusterTlsSection>, ClusterTlsError> {
    std::fs::create_dir_all(dir).map_err(|source| ClusterTlsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let ca = ClusterCa::generate(&dir.display().to_string())?;
    let ca_path = dir.join("ca.pem");
    write_private(&ca_path, ca.cert_pem().as_bytes())?;
    write_private(&dir.join("ca-key.pem"), ca.key_pem().as_bytes())?;
    let mut out = Vec::with_capacity(node_ids.len());
    for &id in node_ids {
        let node = ca.issue(id, DEFAULT_SERVER_NAME)?;
        let cert = dir.join(format!("node{id}.pem"));
        let key = dir.join(format!("node{id}-key.pem"));
        write_private(&cert, node.cert_pem.as_bytes())?;
        write_private(&key, node.key_pem.as_bytes())?;
        out.push(ClusterTlsSection {
            ca: ca_path.clone(),
            cert,
            key,
            server_name: DEFAULT_SERVER_NAME.to_string(),
        });
    }
    Ok(out)
}

/// Writes `data` to `path`, created (or truncated) with mode 0600 on Unix.
fn write_private(path: &Path, data: &[u8]) -> Result<(), ClusterTlsError> {
    let err = |source| ClusterTlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path).map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_cluster_loads_and_keys_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let sections = write_cluster(dir.path(), &[1, 2]).unwrap();
        assert_eq!(sections.len(), 2);
        let tls = load(&sections[1]).unwrap();
        assert_eq!(tls.server_name, DEFAULT_SERVER_NAME);
        // tonic accepts them as they are.
        tonic::transport::Server::builder()
            .tls_config(tls.server())
            .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&sections[0].key)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_key_where_a_certificate_belongs_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = write_cluster(dir.path(), &[1]).unwrap().remove(0);
        s.ca = s.key.clone();
        let e = load(&s).unwrap_err().to_string();
        assert!(e.contains("node1-key.pem"), "{e}");
    }
}
