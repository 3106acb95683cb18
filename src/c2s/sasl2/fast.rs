//! XEP-0484 Fast Authentication Streamlining Tokens (FAST,
//! `urn:xmpp:fast:0`) with the HT-SHA-256-NONE mechanism of
//! draft-schmaus-kitten-sasl-ht, without I/O: what the client asks for,
//! minting a token (what the client gets, and what is stored: verifiers,
//! never the token, see `starling_raft::command::FastToken`), checking a
//! presented proof against a client's two slots in constant time.
//!
//! HT-SHA-256-NONE (draft-schmaus-kitten-sasl-ht §3): the client's only
//! message is `authcid NUL HMAC-SHA-256(token, "Initiator" || cb-data)`,
//! the server's additional data on success `HMAC-SHA-256(token,
//! "Responder" || cb-data)`; with `-NONE` there is no channel binding and
//! cb-data is empty. One round trip, no PBKDF2.
use starling_raft::command::{fast_verifier, FastClient, FastToken};
use starling_raft::credentials::{hmac, ScramHash};
use subtle::ConstantTimeEq;

use crate::c2s::sasl::SaslFailure;
use crate::clock::datetime;
use crate::xmpp::element::escape_into;

pub const NS: &str = "urn:xmpp:fast:0";
/// The one FAST mechanism offered (no channel binding: tls-exporter and
/// tls-server-end-point are not implemented).
pub const HT_SHA_256_NONE: &str = "HT-SHA-256-NONE";

/// XEP-0484 §"Client authenticates using FAST": the `<fast/>` element of
/// a token login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FastUse {
    /// §"Client requests token invalidation": `invalidate='true'`.
    pub invalidate: bool,
}

/// `authcid NUL proof` (draft-schmaus-kitten-sasl-ht §3.1).
pub fn parse_initial(data: &[u8]) -> Result<(String, Vec<u8>), SaslFailure> {
    let nul = data
        .iter()
        .position(|b| *b == 0)
        .ok_or(SaslFailure::MalformedRequest)?;
    let authcid = std::str::from_utf8(&data[..nul]).map_err(|_| SaslFailure::MalformedRequest)?;
    let proof = &data[nul + 1..];
    if authcid.is_empty() || proof.len() != 32 {
        return Err(SaslFailure::MalformedRequest);
    }
    Ok((authcid.to_string(), proof.to_vec()))
}

/// The client's proof for `token`.
pub fn initiator_proof(token: &str) -> Vec<u8> {
    hmac(ScramHash::Sha256, token.as_bytes(), b"Initiator")
}

/// A new token: the secret for the client, and what the state keeps.
pub struct Minted {
    pub token: String,
    pub stored: FastToken,
}

/// Mints a random 256-bit token issued at `now_ms` for `lifetime_ms`.
pub fn mint(now_ms: u64, lifetime_ms: u64) -> Minted {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let responder = hmac(ScramHash::Sha256, token.as_bytes(), b"Responder");
    let stored = FastToken {
        verifier: fast_verifier(&initiator_proof(&token)),
        responder: hex(&responder),
        mechanism: HT_SHA_256_NONE.to_string(),
        issued_ms: now_ms,
        expires_ms: now_ms.saturating_add(lifetime_ms),
    };
    Minted { token, stored }
}

/// A token that matched a proof: its verifier (for the raft command) and
/// the server's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    pub verifier: String,
    pub responder: Vec<u8>,
}

/// Checks `proof` for `mechanism` against the client's slots at `now_ms`
/// (§"Server-side handling of multiple active tokens": "it needs to check
/// not just the token itself, but also that the token has not expired,
/// that the correct mechanism was used"; "Token hash comparison itself
/// MUST be performed using constant-time comparison functions"). An
/// expired or revoked token is `credentials-expired` (§"Server
/// responsibilities": "If the server no longer trusts a token, it MUST
/// instead fail the authentication (returning the SASL
/// 'credentials-expired' error condition)"); one never issued is
/// `not-authorized`.
pub fn verify(
    slots: Option<&FastClient>,
    proof: &[u8],
    mechanism: &str,
    now_ms: u64,
) -> Result<Matched, SaslFailure> {
    let verifier = fast_verifier(proof);
    let Some(slots) = slots else {
        return Err(SaslFailure::NotAuthorized);
    };
    for t in [&slots.new, &slots.current].into_iter().flatten() {
        let same: bool = t.verifier.as_bytes().ct_eq(verifier.as_bytes()).into();
        if !same {
            continue;
        }
        if t.mechanism != mechanism || now_ms >= t.expires_ms {
            return Err(SaslFailure::CredentialsExpired);
        }
        let Some(responder) = unhex(&t.responder) else {
            return Err(SaslFailure::TemporaryAuthFailure);
        };
        return Ok(Matched {
            verifier,
            responder,
        });
    }
    Err(SaslFailure::NotAuthorized)
}

/// §"Server provides token to client": `<token expiry token/>`.
pub fn token_xml(token: &str, expires_ms: u64) -> String {
    let mut s = format!(
        "<token xmlns='{NS}' expiry='{}' token='",
        datetime(expires_ms)
    );
    escape_into(&mut s, token, true);
    s.push_str("'/>");
    s
}

/// The inline `<fast/>` feature (§"Server advertises support for FAST").
pub fn feature() -> String {
    format!("<fast xmlns='{NS}'><mechanism>{HT_SHA_256_NONE}</mechanism></fast>")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_verifies_in_either_slot_until_it_expires() {
        let m = mint(1_000, 500);
        assert!(
            !m.stored.verifier.contains(&m.token),
            "the token is not stored"
        );
        let proof = initiator_proof(&m.token);
        let slots = FastClient {
            current: None,
            new: Some(m.stored.clone()),
        };
        let ok = verify(Some(&slots), &proof, HT_SHA_256_NONE, 1_200).unwrap();
        assert_eq!(ok.verifier, m.stored.verifier);
        assert_eq!(
            ok.responder,
            hmac(ScramHash::Sha256, m.token.as_bytes(), b"Responder")
        );
        let slots = FastClient {
            current: Some(m.stored.clone()),
            new: Some(mint(1_100, 500).stored),
        };
        assert!(verify(Some(&slots), &proof, HT_SHA_256_NONE, 1_200).is_ok());
        // Expired, another mechanism, a wrong token, no token at all.
        assert_eq!(
            verify(Some(&slots), &proof, HT_SHA_256_NONE, 1_500),
            Err(SaslFailure::CredentialsExpired)
        );
        assert_eq!(
            verify(Some(&slots), &proof, "HT-SHA-256-ENDP", 1_200),
            Err(SaslFailure::CredentialsExpired)
        );
        let wrong = initiator_proof("not-the-token");
        assert_eq!(
            verify(Some(&slots), &wrong, HT_SHA_256_NONE, 1_200),
            Err(SaslFailure::NotAuthorized)
        );
        assert_eq!(
            verify(None, &proof, HT_SHA_256_NONE, 1_200),
            Err(SaslFailure::NotAuthorized)
        );
    }

    #[test]
    fn the_initial_message_is_authcid_nul_proof() {
        let mut data = b"alice\0".to_vec();
        data.extend([7u8; 32]);
        assert_eq!(parse_initial(&data), Ok(("alice".into(), vec![7u8; 32])));
        assert_eq!(parse_initial(b"alice"), Err(SaslFailure::MalformedRequest));
        assert_eq!(parse_initial(b"\0abc"), Err(SaslFailure::MalformedRequest));
        assert_eq!(
            parse_initial(b"alice\0short"),
            Err(SaslFailure::MalformedRequest)
        );
    }

    #[test]
    fn hex_round_trips_and_the_token_element_escapes() {
        assert_eq!(unhex(&hex(&[0, 1, 254, 255])), Some(vec![0, 1, 254, 255]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
        let x = token_xml("a'b", 0);
        assert!(x.contains("token='a&apos;b'"), "{x}");
        assert!(x.contains("expiry='1970-01-01T00:00:00"), "{x}");
    }
}
