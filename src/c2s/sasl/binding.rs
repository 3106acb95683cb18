//! Channel-binding data for the SCRAM-*-PLUS mechanisms (RFC 5802 §6,
//! RFC 5056), pure: the two channel-binding types Starling supports, the
//! values of one TLS connection ([`ChannelBindings`], filled by the caller
//! from rustls), and the RFC 5929 §4.1 hash of a server certificate.
//!
//! * `tls-exporter` (RFC 9266 §2): the 32-byte keying material exported
//!   with the label "EXPORTER-Channel-Binding" and an empty context.
//! * `tls-server-end-point` (RFC 5929 §4): a hash of the server's
//!   certificate, computed once per certificate with
//!   [`server_end_point`].
use sha2::{Digest, Sha256, Sha384, Sha512};

/// A channel-binding type (the `cb-name` of RFC 5802 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CbType {
    /// RFC 9266.
    TlsExporter,
    /// RFC 5929 §4.
    TlsServerEndPoint,
}

impl CbType {
    /// Every type, in the order to advertise them (XEP-0440).
    pub const ALL: [CbType; 2] = [CbType::TlsExporter, CbType::TlsServerEndPoint];

    /// The registered name, as in `p=<cb-name>` and XEP-0440's `type`.
    pub fn name(self) -> &'static str {
        match self {
            CbType::TlsExporter => "tls-exporter",
            CbType::TlsServerEndPoint => "tls-server-end-point",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        CbType::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// RFC 9266 §2: the exporter label of `tls-exporter`.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-Channel-Binding";
/// RFC 9266 §2: "Length: 32 bytes".
pub const EXPORTER_LEN: usize = 32;

/// The channel-binding values of one TLS connection; empty on plaintext.
/// The server offers the -PLUS mechanisms exactly when one is present.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ChannelBindings {
    pub tls_exporter: Option<Vec<u8>>,
    pub tls_server_end_point: Option<Vec<u8>>,
}

impl std::fmt::Debug for ChannelBindings {
    // The values are secrets of the connection (the exporter): types only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.types().map(CbType::name))
            .finish()
    }
}

impl ChannelBindings {
    /// The value of `cb_type` on this connection, if available.
    pub fn get(&self, cb_type: CbType) -> Option<&[u8]> {
        match cb_type {
            CbType::TlsExporter => self.tls_exporter.as_deref(),
            CbType::TlsServerEndPoint => self.tls_server_end_point.as_deref(),
        }
    }

    /// The types available on this connection.
    pub fn types(&self) -> impl Iterator<Item = CbType> + '_ {
        CbType::ALL.into_iter().filter(|t| self.get(*t).is_some())
    }

    /// No channel binding is possible (plaintext): no -PLUS mechanism.
    pub fn is_empty(&self) -> bool {
        self.types().next().is_none()
    }
}

/// The `tls-server-end-point` value of a DER certificate, or `None` when
/// RFC 5929 §4.1 defines none for its signature algorithm.
///
/// RFC 5929 §4.1: "if the certificate's signatureAlgorithm uses a single
/// hash function and that hash function is either MD5 or SHA-1, then use
/// SHA-256; if the certificate's signatureAlgorithm uses a single hash
/// function and that hash function neither MD5 nor SHA-1, then use the hash
/// function associated with the certificate's signatureAlgorithm; if the
/// certificate's signatureAlgorithm uses no hash functions or uses
/// multiple hash functions, then this channel binding type's channel
/// bindings are undefined at this time". So Ed25519 (no separate hash) and
/// RSA-PSS (hash in the parameters: not parsed here) get none.
pub fn server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    let oid = signature_algorithm_oid(cert_der)?;
    Some(match hash_of_signature(oid)? {
        Hash::Sha256 => Sha256::digest(cert_der).to_vec(),
        Hash::Sha384 => Sha384::digest(cert_der).to_vec(),
        Hash::Sha512 => Sha512::digest(cert_der).to_vec(),
    })
}

enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

/// The hash RFC 5929 §4.1 assigns to a signature algorithm (DER OID
/// content bytes).
fn hash_of_signature(oid: &[u8]) -> Option<Hash> {
    // 1.2.840.113549.1.1.x (PKCS #1) and 1.2.840.10045.4.x (ECDSA).
    const PKCS1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    if let Some(rest) = oid.strip_prefix(PKCS1) {
        return match rest {
            // md5WithRSA (4), sha1WithRSA (5): SHA-256.
            [4] | [5] | [11] => Some(Hash::Sha256),
            [12] => Some(Hash::Sha384),
            [13] => Some(Hash::Sha512),
            _ => None,
        };
    }
    if oid == ECDSA_SHA1 {
        return Some(Hash::Sha256);
    }
    match oid.strip_prefix(ECDSA_SHA2)? {
        [2] => Some(Hash::Sha256),
        [3] => Some(Hash::Sha384),
        [4] => Some(Hash::Sha512),
        _ => None,
    }
}

/// The OID of `Certificate.signatureAlgorithm` (RFC 5280 §4.1:
/// `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm
/// AlgorithmIdentifier, signatureValue }`,
/// `AlgorithmIdentifier ::= SEQUENCE { algorithm OBJECT IDENTIFIER, ... }`).
fn signature_algorithm_oid(der: &[u8]) -> Option<&[u8]> {
    let (certificate, _) = der_element(der, 0x30)?;
    let (_tbs, rest) = der_any(certificate)?;
    let (algorithm_identifier, _) = der_element(rest, 0x30)?;
    let (oid, _) = der_element(algorithm_identifier, 0x06)?;
    Some(oid)
}

/// One DER element with tag `tag`: its content and what follows it.
fn der_element(data: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *data.first()? != tag {
        return None;
    }
    der_any(data)
}

/// One DER element of any (single-byte) tag: its content and the rest.
fn der_any(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let first_len = *data.get(1)?;
    let (len, header) = if first_len < 0x80 {
        (usize::from(first_len), 2)
    } else {
        let n = usize::from(first_len & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = data.get(2..2 + n)?;
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((data.get(header..end)?, data.get(end..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn end_point_hash_follows_the_signature_algorithm() {
        let der = cert(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(server_end_point(&der), Some(Sha256::digest(&der).to_vec()));
        let der = cert(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(server_end_point(&der), Some(Sha384::digest(&der).to_vec()));
        // Ed25519 uses no separate hash: undefined (RFC 5929 §4.1).
        assert_eq!(server_end_point(&cert(&rcgen::PKCS_ED25519)), None);
        assert_eq!(server_end_point(b""), None);
        assert_eq!(server_end_point(&[0x30, 0x82, 0xff]), None);
    }

    #[test]
    fn hashes_by_oid() {
        let sha1_rsa = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 5];
        assert!(matches!(hash_of_signature(&sha1_rsa), Some(Hash::Sha256)));
        let sha512_rsa = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 13];
        assert!(matches!(hash_of_signature(&sha512_rsa), Some(Hash::Sha512)));
        let pss = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 10];
        assert!(hash_of_signature(&pss).is_none());
    }

    #[test]
    fn names_and_availability() {
        for t in CbType::ALL {
            assert_eq!(CbType::from_name(t.name()), Some(t));
        }
        assert_eq!(CbType::from_name("tls-unique"), None);
        let none = ChannelBindings::default();
        assert!(none.is_empty());
        let some = ChannelBindings {
            tls_exporter: None,
            tls_server_end_point: Some(vec![1]),
        };
        assert!(!some.is_empty());
        assert_eq!(
            some.types().collect::<Vec<_>>(),
            [CbType::TlsServerEndPoint]
        );
        assert_eq!(format!("{some:?}"), "[\"tls-server-end-point\"]");
    }
}
