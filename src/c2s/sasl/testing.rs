//! Test helpers shared by the SASL test modules: a credential store with
//! the RFC 5802 / RFC 7677 user, and a SCRAM client computing everything
//! from the password.
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rand::RngCore;
use starling_raft::credentials::{h, hmac, salted_password, Credentials, ScramHash, ScramKeys};
use std::collections::HashMap;

use super::{CredentialStore, Step};

pub(super) const DOMAIN: &str = "example.org";

pub(super) struct Store(pub(super) HashMap<String, Credentials>);

impl CredentialStore for Store {
    fn credentials(&self, username: &str) -> Option<Credentials> {
        self.0.get(username).cloned()
    }
}

pub(super) fn store_with(username: &str, credentials: Credentials) -> Store {
    Store(HashMap::from([(username.to_owned(), credentials)]))
}

/// The RFC 5802 / RFC 7677 user: "user", password "pencil".
pub(super) fn rfc_store() -> Store {
    let sha1 = ScramKeys::derive(
        ScramHash::Sha1,
        "pencil",
        B64.decode("QSXCR+Q6sek8bf92").unwrap(),
        4096,
    );
    let sha256 = ScramKeys::derive(
        ScramHash::Sha256,
        "pencil",
        B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap(),
        4096,
    );
    store_with("user", Credentials { sha1, sha256 })
}

pub(super) fn challenge(step: Step) -> String {
    match step {
        Step::Challenge(data) => String::from_utf8(data).unwrap(),
        other => panic!("expected a challenge, got {other:?}"),
    }
}

/// A SCRAM client, computing everything from the password.
pub(super) struct Client {
    pub(super) hash: ScramHash,
    pub(super) gs2_header: String,
    pub(super) bare: String,
    pub(super) client_nonce: String,
}

pub(super) struct ServerFirst {
    pub(super) nonce: String,
    pub(super) salt: Vec<u8>,
    pub(super) iterations: u32,
    /// XEP-0474's `h`, decoded.
    pub(super) ssdp: Option<Vec<u8>>,
    pub(super) raw: String,
}

impl Client {
    pub(super) fn new(hash: ScramHash, gs2_header: &str, escaped_user: &str) -> Self {
        let mut nonce_bytes = [0u8; 18];
        rand::thread_rng().fill_bytes(&mut nonce_bytes);
        let client_nonce = B64.encode(nonce_bytes);
        Client {
            hash,
            gs2_header: gs2_header.to_owned(),
            bare: format!("n={escaped_user},r={client_nonce}"),
            client_nonce,
        }
    }

    pub(super) fn first(&self) -> Vec<u8> {
        format!("{}{}", self.gs2_header, self.bare).into_bytes()
    }

    pub(super) fn parse_server_first(&self, server_first: &str) -> ServerFirst {
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        let mut ssdp = None;
        for attr in server_first.split(',') {
            let (k, v) = attr.split_once('=').unwrap();
            match k {
                "r" => nonce = Some(v.to_owned()),
                "s" => salt = Some(B64.decode(v).unwrap()),
                "i" => iterations = Some(v.parse().unwrap()),
                "h" => ssdp = Some(B64.decode(v).unwrap()),
                _ => panic!("unexpected attribute {attr}"),
            }
        }
        let nonce = nonce.unwrap();
        assert!(nonce.starts_with(&self.client_nonce));
        assert!(nonce.len() > self.client_nonce.len());
        ServerFirst {
            nonce,
            salt: salt.unwrap(),
            iterations: iterations.unwrap(),
            ssdp,
            raw: server_first.to_owned(),
        }
    }

    /// client-final for `password`, with optional tampering; returns it
    /// and the expected server-final.
    pub(super) fn last(
        &self,
        sf: &ServerFirst,
        password: &str,
        cbind: &[u8],
        nonce: &str,
    ) -> (Vec<u8>, Vec<u8>) {
        let hash = self.hash;
        let salted = salted_password(hash, password.as_bytes(), &sf.salt, sf.iterations);
        let client_key = hmac(hash, &salted, b"Client Key");
        let stored_key = h(hash, &client_key);
        let server_key = hmac(hash, &salted, b"Server Key");
        let without_proof = format!("c={},r={nonce}", B64.encode(cbind));
        let auth_message = format!("{},{},{without_proof}", self.bare, sf.raw);
        let signature = hmac(hash, &stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_signature = hmac(hash, &server_key, auth_message.as_bytes());
        (
            format!("{without_proof},p={}", B64.encode(proof)).into_bytes(),
            format!("v={}", B64.encode(server_signature)).into_bytes(),
        )
    }
}

pub(super) fn random_password() -> String {
    let mut bytes = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("pä{}", B64.encode(bytes))
}
