//! TLS configuration for client connections.
//!
//! This module owns the certificate a node presents to XMPP clients and the
//! rustls server configurations built from it:
//!
//! * an operator-supplied PEM certificate chain and private key (`cert` and
//!   `key` in the configuration; both or neither), or
//! * when neither is configured, a self-signed certificate kept in
//!   `<data_dir>/tls/cert.pem` and `<data_dir>/tls/key.pem`: generated with
//!   rcgen on the first start (subject alternative names: the XMPP domain
//!   and `localhost`), reused on every later one. The key file is created
//!   with mode 0600 on Unix.
//!
//! Two configurations come out, sharing the certificate:
//!
//! * [`TlsConfigs::starttls`] for STARTTLS on the ordinary c2s port
//!   (RFC 6120 §5): no ALPN;
//! * [`TlsConfigs::direct`] for direct TLS (XEP-0368): ALPN `xmpp-client`.
//!   Clients that send no ALPN extension are accepted as well; a client
//!   offering only other protocols is refused, as RFC 7301 §3.2 requires.
//!
//! The channel-binding data of a connection for SCRAM-*-PLUS
//! ([`channel_bindings`]) come from the handshake and this certificate.
//!
//! The ring crypto provider is passed explicitly, so no process-wide
//! provider has to be installed. Protocol versions are rustls' safe
//! defaults (TLS 1.2 and 1.3). Sessions resume with stateless tickets
//! (keys in memory, rotated every 6 hours), shared by the three
//! configurations.
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use sha2::{Digest, Sha256};

use super::sasl::{ChannelBindings, EXPORTER_LABEL, EXPORTER_LEN};

/// ALPN protocol identifier of XMPP client-to-server direct TLS (XEP-0368).
pub const ALPN_XMPP_CLIENT: &[u8] = b"xmpp-client";

/// Where the certificate comes from.
#[derive(Debug, Clone, Copy)]
pub struct TlsSettings<'a> {
    /// PEM certificate chain (leaf first). Set together with `key`.
    pub cert: Option<&'a Path>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Set together with `cert`.
    pub key: Option<&'a Path>,
    /// The node's data directory; the self-signed certificate lives in its
    /// `tls` subdirectory.
    pub data_dir: &'a Path,
    /// The XMPP domain, the subject of a generated certificate.
    pub domain: &'a str,
}

/// How the certificate in use was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertSource {
    /// The `cert` and `key` paths of the configuration.
    Configured,
    /// A self-signed certificate generated on an earlier start.
    Reused,
    /// A self-signed certificate generated just now.
    Generated,
}

/// The server configurations for client connections.
#[derive(Debug, Clone)]
pub struct TlsConfigs {
    /// For STARTTLS: no ALPN.
    pub starttls: Arc<ServerConfig>,
    /// For direct TLS (XEP-0368): ALPN `xmpp-client`, or none.
    pub direct: Arc<ServerConfig>,
    /// For the HTTP listener (`crate::http`, `wss://`): ALPN `http/1.1`,
    /// or none.
    pub http: Arc<ServerConfig>,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub source: CertSource,
    /// SHA-256 of the leaf certificate (DER), upper-case hex pairs joined
    /// by `:`, as browsers and `openssl x509 -fingerprint -sha256` show it.
    pub fingerprint: String,
    /// RFC 5929 §4 `tls-server-end-point` channel-binding value of the
    /// leaf certificate, for SCRAM-*-PLUS; `None` when its signature
    /// algorithm leaves it undefined (Ed25519, RSA-PSS).
    pub server_end_point: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate {} is configured but no key: set both `cert` and `key`, or neither to use a self-signed certificate", .cert.display())]
    CertWithoutKey { cert: PathBuf },
    #[error("TLS key {} is configured but no certificate: set both `cert` and `key`, or neither to use a self-signed certificate", .key.display())]
    KeyWithoutCert { key: PathBuf },
    #[error("cannot read {}: {source}", .path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("invalid PEM in {}: {source}", .path.display())]
    Pem { path: PathBuf, source: io::Error },
    #[error("no certificate (PEM \"CERTIFICATE\" block) in {}", .path.display())]
    NoCertificate { path: PathBuf },
    #[error("no private key (PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" block) in {}", .path.display())]
    NoPrivateKey { path: PathBuf },
    #[error("{} exists but {} does not: remove it to generate a new self-signed certificate, or restore the missing file", .present.display(), .missing.display())]
    Incomplete { present: PathBuf, missing: PathBuf },
    #[error("cannot generate a self-signed certificate for {domain:?}: {source}")]
    Generate {
        domain: String,
        source: rcgen::Error,
    },
    #[error("cannot create {}: {source}", .path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("certificate {} and key {} cannot be used: {source}", .cert.display(), .key.display())]
    Config {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

/// Paths of the self-signed certificate and key under `data_dir`.
pub fn self_signed_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("tls");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// Loads the configured certificate, or loads or creates the self-signed
/// one, and builds both server configurations.
pub fn load_or_create(settings: &TlsSettings) -> Result<TlsConfigs, TlsError> {
    let (cert_path, key_path, source) = match (settings.cert, settings.key) {
        (Some(cert), Some(key)) => (
            cert.to_path_buf(),
            key.to_path_buf(),
            CertSource::Configured,
        ),
        (Some(cert), None) => {
            return Err(TlsError::CertWithoutKey {
                cert: cert.to_path_buf(),
            })
        }
        (None, Some(key)) => {
            return Err(TlsError::KeyWithoutCert {
                key: key.to_path_buf(),
            })
        }
        (None, None) => {
            let (cert, key) = self_signed_paths(settings.data_dir);
            let source = match (cert.exists(), key.exists()) {
                (true, true) => CertSource::Reused,
                (false, false) => {
                    generate(settings.domain, &cert, &key)?;
                    CertSource::Generated
                }
                (true, false) => {
                    return Err(TlsError::Incomplete {
                        present: cert,
                        missing: key,
                    })
                }
                (false, true) => {
                    return Err(TlsError::Incomplete {
                        present: key,
                        missing: cert,
                    })
                }
            };
            (cert, key, source)
        }
    };
    let certs = load_certs(&cert_path)?;
    let key = load_key(&key_path)?;
    if source != CertSource::Configured {
        warn_if_key_readable(&key_path);
    }
    let fingerprint = fingerprint(&certs[0]);
    let server_end_point = super::sasl::server_end_point(&certs[0]);
    let config = server_config(certs, key).map_err(|source| TlsError::Config {
        cert: cert_path.clone(),
        key: key_path.clone(),
        source,
    })?;
    let mut direct = config.clone();
    // XEP-0368: direct TLS clients announce the ALPN protocol
    // "xmpp-client". rustls accepts a ClientHello without ALPN as well,
    // which keeps older direct-TLS clients working; one that offers only
    // other protocols gets RFC 7301 §3.2's no_application_protocol alert.
    direct.alpn_protocols = vec![ALPN_XMPP_CLIENT.to_vec()];
    // HTTP/1.1 only: RFC 7395 WebSockets use the HTTP/1.1 upgrade.
    let mut http = config.clone();
    http.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConfigs {
        starttls: Arc::new(config),
        direct: Arc::new(direct),
        http: Arc::new(http),
        cert_path,
        key_path,
        source,
        fingerprint,
        server_end_point,
    })
}

/// The channel-binding data of an accepted TLS connection.
///
/// `tls-exporter` only on TLS 1.3: RFC 9266 defines it for TLS 1.3, and
/// for TLS 1.2 only where every handshake uses the extended master secret
/// (RFC 9266 §3, "Security Considerations": unique master secrets), which
/// this configuration does not require. `tls-server-end-point`
/// (RFC 5929 §4) is the certificate's hash on either version.
pub fn channel_bindings(
    tls: &rustls::ServerConnection,
    server_end_point: Option<&[u8]>,
) -> ChannelBindings {
    let tls_exporter = match tls.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => tls
            .export_keying_material(vec![0u8; EXPORTER_LEN], EXPORTER_LABEL, Some(&[]))
            .ok(),
        _ => None,
    };
    ChannelBindings {
        tls_exporter,
        tls_server_end_point: server_end_point.map(<[u8]>::to_vec),
    }
}

fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // with_single_cert also checks that the key belongs to the leaf
    // certificate (rustls::Error::InconsistentKeys otherwise).
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    // Session resumption (RFC 8446 §2.2; RFC 5077 tickets on TLS 1.2): a
    // phone that lost its connection reconnects without the certificate,
    // its signature and the client's verification of both. rustls'
    // default resumes only from a cache of 256 sessions per node, so in a
    // reconnect storm of thousands nearly every handshake was a full one.
    // Stateless tickets instead: rustls' Ticketer encrypts the session
    // into the ticket with a key kept only in memory and rotated every 6
    // hours, so nothing is stored per session and there is no cap; a
    // ticket from another node (or from before a restart) is not accepted
    // and the handshake is a full one. Channel binding is unchanged:
    // `tls-exporter` is fresh per connection, and `tls-server-end-point`
    // is our certificate's hash either way.
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(config)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|source| TlsError::Pem {
            path: path.to_path_buf(),
            source,
        })?
        .ok_or_else(|| TlsError::NoPrivateKey {
            path: path.to_path_buf(),
        })
}

fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = Sha256::digest(cert.as_ref());
    let hex: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

/// Generates a self-signed certificate for `domain` and writes it to
/// `cert_path` and its key to `key_path` (mode 0600 on Unix).
fn generate(domain: &str, cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
    let generate_error = |source| TlsError::Generate {
        domain: domain.to_owned(),
        source,
    };
    let mut names = vec![domain.to_owned()];
    if !domain.eq_ignore_ascii_case("localhost") {
        names.push("localhost".to_owned());
    }
    let mut params = rcgen::CertificateParams::new(names).map_err(generate_error)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, domain);
    // ECDSA P-256 with SHA-256, rcgen's default.
    let key_pair = rcgen::KeyPair::generate().map_err(generate_error)?;
    let cert = params.self_signed(&key_pair).map_err(generate_error)?;

    for dir in [cert_path.parent(), key_path.parent()]
        .into_iter()
        .flatten()
    {
        fs::create_dir_all(dir).map_err(|source| TlsError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    // Key first: a crash in between leaves a key without certificate,
    // which the next start reports instead of silently replacing.
    write_atomically(key_path, key_pair.serialize_pem().as_bytes(), 0o600)?;
    write_atomically(cert_path, cert.pem().as_bytes(), 0o644)?;
    tracing::info!(
        cert = %cert_path.display(),
        key = %key_path.display(),
        domain,
        "generated a self-signed TLS certificate for client connections"
    );
    Ok(())
}

/// Writes `data` to a temporary file next to `path` created with `mode`
/// (on Unix), syncs it and renames it into place.
fn write_atomically(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    let write_error = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(write_error(e)),
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&tmp).map_err(write_error)?;
    file.write_all(data).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    drop(file);
    fs::rename(&tmp, path).map_err(write_error)
}

/// Warns when the self-signed key is readable by group or others.
fn warn_if_key_readable(key_path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(key_path) {
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    key = %key_path.display(),
                    mode = format_args!("{:o}", mode & 0o777),
                    "TLS private key is accessible to other users; chmod 600 it"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = key_path;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const DOMAIN: &str = "example.org";

    fn auto(data_dir: &Path) -> TlsSettings<'_> {
        TlsSettings {
            cert: None,
            key: None,
            data_dir,
            domain: DOMAIN,
        }
    }

    #[test]
    fn create_then_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(&auto(dir.path())).unwrap();
        assert_eq!(first.source, CertSource::Generated);
        let (cert, key) = self_signed_paths(dir.path());
        assert_eq!(first.cert_path, cert);
        assert_eq!(first.key_path, key);
        assert!(fs::read_to_string(&cert)
            .unwrap()
            .contains("BEGIN CERTIFICATE"));
        assert!(fs::read_to_string(&key).unwrap().contains("PRIVATE KEY"));
        assert_eq!(first.fingerprint.len(), 32 * 3 - 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temporary files left behind.
        let entries: Vec<_> = fs::read_dir(dir.path().join("tls")).unwrap().collect();
        assert_eq!(entries.len(), 2);

        let cert_pem = fs::read(&cert).unwrap();
        let second = load_or_create(&auto(dir.path())).unwrap();
        assert_eq!(second.source, CertSource::Reused);
        assert_eq!(second.fingerprint, first.fingerprint);
        assert_eq!(fs::read(&cert).unwrap(), cert_pem);
        assert!(first.starttls.alpn_protocols.is_empty());
        assert_eq!(first.direct.alpn_protocols, vec![b"xmpp-client".to_vec()]);
    }

    #[test]
    fn explicit_paths() {
        let generated = tempfile::tempdir().unwrap();
        let made = load_or_create(&auto(generated.path())).unwrap();
        let other = tempfile::tempdir().unwrap();
        let loaded = load_or_create(&TlsSettings {
            cert: Some(&made.cert_path),
            key: Some(&made.key_path),
            data_dir: other.path(),
            domain: DOMAIN,
        })
        .unwrap();
        assert_eq!(loaded.source, CertSource::Configured);
        assert_eq!(loaded.fingerprint, made.fingerprint);
        assert_eq!(loaded.cert_path, made.cert_path);
        // Nothing was generated in the data directory.
        assert!(!other.path().join("tls").exists());
    }

    #[test]
    fn missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let made = load_or_create(&auto(dir.path())).unwrap();
        let missing = dir.path().join("nope").join("cert.pem");
        let err = load_or_create(&TlsSettings {
            cert: Some(&missing),
            key: Some(&made.key_path),
            data_dir: dir.path(),
            domain: DOMAIN,
        })
        .unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains(&missing.display().to_string()),
            "{message}"
        );

        let missing_key = dir.path().join("nope.key");
        let err = load_or_create(&TlsSettings {
            cert: Some(&made.cert_path),
            key: Some(&missing_key),
            data_dir: dir.path(),
            domain: DOMAIN,
        })
        .unwrap_err();
        assert!(err.to_string().contains("nope.key"), "{err}");
    }

    #[test]
    fn only_one_of_cert_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pem");
        let err = load_or_create(&TlsSettings {
            cert: Some(&path),
            key: None,
            data_dir: dir.path(),
            domain: DOMAIN,
        })
        .unwrap_err();
        assert!(matches!(err, TlsError::CertWithoutKey { .. }));
        assert!(err.to_string().contains("x.pem"), "{err}");
        let err = load_or_create(&TlsSettings {
            cert: None,
            key: Some(&path),
            data_dir: dir.path(),
            domain: DOMAIN,
        })
        .unwrap_err();
        assert!(matches!(err, TlsError::KeyWithoutCert { .. }));
    }

    #[test]
    fn invalid_contents() {
        let dir = tempfile::tempdir().unwrap();
        let made = load_or_create(&auto(dir.path())).unwrap();
        let garbage = dir.path().join("garbage.pem");
        fs::write(&garbage, "not a pem file\n").unwrap();

        // No certificate in the cert file.
        let err = load_or_create(&TlsSettings {
            cert: Some(&garbage),
            key: Some(&made.key_path),
            data_dir: dir.path(),
            domain: DOMAIN,
        })
        .unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
        assert!(err.to_string().contains("garbage.pem"), "{err}");

        // A certificate where the key should be.
        let err = load_or_create(&TlsSettings {
            cert: Some(&made.cert_path),
            key: Some(&made.cert_path),
            data_dir: dir.path(),
            domain: DOMAIN,
        })
        .unwrap_err();
        assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err:?}");

        // Broken base64 inside a PEM block.
        let broken = dir.path().join("broken.pem");
        fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = load_or_create(&TlsSettings {
            cert: Some(&broken),
            key: Some(&made.key_path),
            data_dir: dir.path(),
            domain: DOMAIN,
        })
        .unwrap_err();
        assert!(matches!(err, TlsError::Pem { .. }), "{err:?}");
        assert!(err.to_string().contains("broken.pem"), "{err}");

        // A key that does not belong to the certificate.
        let other_dir = tempfile::tempdir().unwrap();
        let other = load_or_create(&auto(other_dir.path())).unwrap();
        let err = load_or_create(&TlsSettings {
            cert: Some(&made.cert_path),
            key: Some(&other.key_path),
            data_dir: dir.path(),
            domain: DOMAIN,
        })
        .unwrap_err();
        assert!(matches!(err, TlsError::Config { .. }), "{err:?}");
    }

    #[test]
    fn half_a_self_signed_pair_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let made = load_or_create(&auto(dir.path())).unwrap();
        fs::remove_file(&made.cert_path).unwrap();
        let err = load_or_create(&auto(dir.path())).unwrap_err();
        assert!(matches!(err, TlsError::Incomplete { .. }), "{err:?}");
        assert!(err.to_string().contains("cert.pem"), "{err}");
        // The key was not replaced.
        assert!(made.key_path.exists());
    }

    #[test]
    fn bad_domain_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_or_create(&TlsSettings {
            domain: "exämple.org",
            ..auto(dir.path())
        })
        .unwrap_err();
        assert!(matches!(err, TlsError::Generate { .. }), "{err:?}");
    }

    /// Handshakes a client trusting `trusted` against `server`; returns the
    /// negotiated ALPN protocol as the server and the client see it.
    async fn handshake(
        server: Arc<ServerConfig>,
        trusted: &Path,
        name: &str,
        client_alpn: &[&[u8]],
    ) -> Result<(Option<Vec<u8>>, Option<Vec<u8>>), String> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in load_certs(trusted).unwrap() {
            roots.add(cert).unwrap();
        }
        let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        client.alpn_protocols = client_alpn.iter().map(|p| p.to_vec()).collect();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();

        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server_side = async move {
            let mut tls = acceptor
                .accept(server_io)
                .await
                .map_err(|e| e.to_string())?;
            let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            let mut buf = [0u8; 5];
            tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            assert_eq!(&buf, b"hello");
            tls.write_all(b"world").await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(alpn)
        };
        let client_side = async move {
            let mut tls = connector
                .connect(server_name, client_io)
                .await
                .map_err(|e| e.to_string())?;
            let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            tls.write_all(b"hello").await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 5];
            tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            assert_eq!(&buf, b"world");
            Ok::<_, String>(alpn)
        };
        let (server_result, client_result) = tokio::join!(server_side, client_side);
        let client_alpn = client_result?;
        Ok((server_result?, client_alpn))
    }

    #[tokio::test]
    async fn handshakes() {
        let dir = tempfile::tempdir().unwrap();
        let configs = load_or_create(&auto(dir.path())).unwrap();
        let cert = configs.cert_path.clone();

        // Direct TLS: xmpp-client is negotiated.
        let (server, client) = handshake(
            configs.direct.clone(),
            &cert,
            DOMAIN,
            &[b"h2", ALPN_XMPP_CLIENT],
        )
        .await
        .unwrap();
        assert_eq!(server.as_deref(), Some(ALPN_XMPP_CLIENT));
        assert_eq!(client.as_deref(), Some(ALPN_XMPP_CLIENT));

        // Direct TLS without ALPN from the client is still accepted.
        let (server, client) = handshake(configs.direct.clone(), &cert, DOMAIN, &[])
            .await
            .unwrap();
        assert_eq!((server, client), (None, None));

        // Direct TLS refuses a client that offers only other protocols.
        let err = handshake(configs.direct.clone(), &cert, DOMAIN, &[b"h2"])
            .await
            .unwrap_err();
        assert!(err.to_lowercase().contains("application"), "{err}");

        // STARTTLS negotiates no ALPN even if the client offers it.
        let (server, client) = handshake(
            configs.starttls.clone(),
            &cert,
            "localhost",
            &[ALPN_XMPP_CLIENT],
        )
        .await
        .unwrap();
        assert_eq!((server, client), (None, None));

        // A name not in the certificate is refused by the client.
        let err = handshake(configs.starttls.clone(), &cert, "example.net", &[])
            .await
            .unwrap_err();
        assert!(err.to_lowercase().contains("certificate"), "{err}");
    }
}
