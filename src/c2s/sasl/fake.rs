//! Credentials for unknown users: stable fake SCRAM keys, so that an
//! unknown user is not distinguishable from a wrong password before the
//! last step (SCRAM answers with a fake but stable salt, an HMAC of the
//! username under a per-process random secret, and the default iteration
//! count; PLAIN runs the same PBKDF2 against fake keys).
use std::sync::OnceLock;

use rand::RngCore;
use starling_raft::credentials::{hmac, ScramHash, ScramKeys, DEFAULT_ITERATIONS};

/// Salt length of fake SCRAM credentials; the same as real ones
/// (`Credentials::derive` uses 16 random bytes).
pub(super) const FAKE_SALT_LEN: usize = 16;

/// Per-process secret keying the fake salts of unknown users.
fn fake_secret() -> &'static [u8; 32] {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    SECRET.get_or_init(|| {
        let mut secret = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut secret);
        secret
    })
}

/// Stable fake SCRAM keys for an unknown `username`: the same salt every
/// time this process is asked (so that repeating the first step does not
/// reveal that the user does not exist), different per mechanism like real
/// credentials, with the default iteration count.
pub(super) fn fake_keys(hash: ScramHash, username: &str) -> ScramKeys {
    let secret = fake_secret();
    let label: &[u8] = match hash {
        ScramHash::Sha1 => b"SCRAM-SHA-1",
        ScramHash::Sha256 => b"SCRAM-SHA-256",
    };
    let derive = |purpose: &[u8]| {
        let mut input = Vec::with_capacity(purpose.len() + label.len() + username.len() + 2);
        input.extend_from_slice(purpose);
        input.push(0);
        input.extend_from_slice(label);
        input.push(0);
        input.extend_from_slice(username.as_bytes());
        input
    };
    let mut salt = hmac(ScramHash::Sha256, secret, &derive(b"salt"));
    salt.truncate(FAKE_SALT_LEN);
    ScramKeys {
        salt,
        iterations: DEFAULT_ITERATIONS,
        stored_key: hmac(hash, secret, &derive(b"stored-key")),
        server_key: hmac(hash, secret, &derive(b"server-key")),
    }
}
