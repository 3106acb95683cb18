//! SCRAM credentials (RFC 5802 §3, RFC 7677) as they are stored and replicated.
//!
//! A password is turned into salted, hashed keys on the node that receives
//! it, before anything is proposed; the replicated log and the state machine
//! only ever see `StoredKey` and `ServerKey`. The same keys verify SASL
//! PLAIN: derive `StoredKey` from the offered password and compare.
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Default PBKDF2 iteration count (RFC 7677 recommends at least 4096).
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// Hash function of a SCRAM mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScramHash {
    Sha1,
    Sha256,
}

/// The server-side keys of one SCRAM mechanism.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramKeys {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

/// Credentials for every mechanism Starling offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub sha1: ScramKeys,
    pub sha256: ScramKeys,
}

impl Credentials {
    /// Derives credentials for `password` with fresh random salts.
    pub fn derive(password: &str, iterations: u32) -> Self {
        Credentials {
            sha1: ScramKeys::derive(ScramHash::Sha1, password, random_salt(), iterations),
            sha256: ScramKeys::derive(ScramHash::Sha256, password, random_salt(), iterations),
        }
    }

    /// Checks a plaintext password (SASL PLAIN) in constant time.
    pub fn verify_password(&self, password: &str) -> bool {
        self.sha256.verify_password(ScramHash::Sha256, password)
    }

    pub fn keys(&self, hash: ScramHash) -> &ScramKeys {
        match hash {
            ScramHash::Sha1 => &self.sha1,
            ScramHash::Sha256 => &self.sha256,
        }
    }
}

fn random_salt() -> Vec<u8> {
    let mut salt = vec![0u8; 16];
    rand::thread_rng().fill_bytes(&mut salt);
    salt
}

impl ScramKeys {
    pub fn derive(hash: ScramHash, password: &str, salt: Vec<u8>, iterations: u32) -> Self {
        let salted = salted_password(hash, password.as_bytes(), &salt, iterations);
        let client_key = hmac(hash, &salted, b"Client Key");
        let stored_key = h(hash, &client_key);
        let server_key = hmac(hash, &salted, b"Server Key");
        ScramKeys {
            salt,
            iterations,
            stored_key,
            server_key,
        }
    }

    pub fn verify_password(&self, hash: ScramHash, password: &str) -> bool {
        let salted = salted_password(hash, password.as_bytes(), &self.salt, self.iterations);
        let client_key = hmac(hash, &salted, b"Client Key");
        let stored_key = h(hash, &client_key);
        stored_key.ct_eq(&self.stored_key).into()
    }
}

/// `Hi(password, salt, i)` of RFC 5802 §2.2: PBKDF2 with HMAC.
pub fn salted_password(hash: ScramHash, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    match hash {
        ScramHash::Sha1 => {
            let mut out = [0u8; 20];
            pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, iterations, &mut out);
            out.to_vec()
        }
        ScramHash::Sha256 => {
            let mut out = [0u8; 32];
            pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
            out.to_vec()
        }
    }
}

/// `HMAC(key, data)` with the mechanism's hash.
pub fn hmac(hash: ScramHash, key: &[u8], data: &[u8]) -> Vec<u8> {
    match hash {
        ScramHash::Sha1 => {
            // HMAC accepts keys of any length: new_from_slice cannot fail.
            let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key).expect("hmac takes any key");
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        ScramHash::Sha256 => {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("hmac takes any key");
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
    }
}

/// `H(data)` with the mechanism's hash.
pub fn h(hash: ScramHash, data: &[u8]) -> Vec<u8> {
    match hash {
        ScramHash::Sha1 => Sha1::digest(data).to_vec(),
        ScramHash::Sha256 => Sha256::digest(data).to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 §3 test vector: user "user", password "pencil",
    /// salt W22ZaJ0SNY7soEsUEjb6gQ==, 4096 iterations.
    #[test]
    fn rfc7677_vector() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let salt = b64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let keys = ScramKeys::derive(ScramHash::Sha256, "pencil", salt, 4096);
        // ServerSignature from the RFC's exchange, recomputed from ServerKey.
        let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let sig = hmac(ScramHash::Sha256, &keys.server_key, auth_message.as_bytes());
        assert_eq!(
            b64.encode(sig),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        assert!(keys.verify_password(ScramHash::Sha256, "pencil"));
        assert!(!keys.verify_password(ScramHash::Sha256, "pencil2"));
    }

    /// RFC 5802 §5 test vector for SCRAM-SHA-1.
    #[test]
    fn rfc5802_vector() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let salt = b64.decode("QSXCR+Q6sek8bf92").unwrap();
        let keys = ScramKeys::derive(ScramHash::Sha1, "pencil", salt, 4096);
        let auth_message = "n=user,r=fyko+d2lbbFgONRv9qkxdawL,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096,c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j";
        let sig = hmac(ScramHash::Sha1, &keys.server_key, auth_message.as_bytes());
        assert_eq!(b64.encode(sig), "rmF9pqV8S7suAoZWja4dJRkFsKQ=");
    }

    #[test]
    fn derive_uses_fresh_salts() {
        let a = Credentials::derive("secret", 16);
        let b = Credentials::derive("secret", 16);
        assert_ne!(a.sha256.salt, b.sha256.salt);
        assert!(a.verify_password("secret"));
        assert!(!a.verify_password("Secret"));
    }
}
