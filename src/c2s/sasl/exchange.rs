//! The vocabulary every SASL mechanism's server side speaks (RFC 6120 §6):
//! what the server sends next ([`Step`]), the RFC 6120 §6.5 failure
//! conditions ([`SaslFailure`]), where credentials come from
//! ([`CredentialStore`]), the size limit of a client message and the one
//! authorization-identity rule all mechanisms apply.
use std::fmt;

use starling_raft::credentials::Credentials;

/// Longest SASL message (after base64 decoding) a session accepts. Client
/// messages of all three mechanisms are a few hundred bytes at most.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// RFC 6120 §6.5 failure conditions, sent as the child of `<failure/>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SaslFailure {
    Aborted,
    AccountDisabled,
    CredentialsExpired,
    EncryptionRequired,
    IncorrectEncoding,
    InvalidAuthzid,
    InvalidMechanism,
    MalformedRequest,
    MechanismTooWeak,
    NotAuthorized,
    TemporaryAuthFailure,
}

impl SaslFailure {
    /// The element name of the condition, e.g. `"not-authorized"`.
    pub fn condition(&self) -> &'static str {
        match self {
            SaslFailure::Aborted => "aborted",
            SaslFailure::AccountDisabled => "account-disabled",
            SaslFailure::CredentialsExpired => "credentials-expired",
            SaslFailure::EncryptionRequired => "encryption-required",
            SaslFailure::IncorrectEncoding => "incorrect-encoding",
            SaslFailure::InvalidAuthzid => "invalid-authzid",
            SaslFailure::InvalidMechanism => "invalid-mechanism",
            SaslFailure::MalformedRequest => "malformed-request",
            SaslFailure::MechanismTooWeak => "mechanism-too-weak",
            SaslFailure::NotAuthorized => "not-authorized",
            SaslFailure::TemporaryAuthFailure => "temporary-auth-failure",
        }
    }
}

impl fmt::Display for SaslFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.condition())
    }
}

/// What the server sends next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send `<challenge/>` with these bytes (base64 by the caller, see
    /// [`encode_payload`]).
    Challenge(Vec<u8>),
    /// Authentication succeeded for `username` (the SASL authcid as the
    /// client sent it, SCRAM escapes undone). Send `<success/>` carrying
    /// `additional` (SCRAM's server-final `v=...`), or an empty `<success/>`
    /// when it is empty (PLAIN).
    Success {
        username: String,
        additional: Vec<u8>,
    },
    /// Send `<failure/>` with this condition. The session is over.
    Failure(SaslFailure),
}

/// Looks up credentials by the authcid the client sent.
pub trait CredentialStore {
    /// The credentials of `username`, or `None` for an unknown user.
    fn credentials(&self, username: &str) -> Option<Credentials>;
}

impl<F> CredentialStore for F
where
    F: Fn(&str) -> Option<Credentials>,
{
    fn credentials(&self, username: &str) -> Option<Credentials> {
        self(username)
    }
}

/// Whether `authzid` names the authcid's own account: RFC 6120 §6.3.8
/// wants a bare JID (`localpart@domainpart`); a bare authcid is accepted
/// too. Anything else would be acting for another entity, which Starling
/// does not allow.
pub(super) fn authzid_matches(authzid: &str, authcid: &str, domain: &str) -> bool {
    if authzid == authcid {
        return true;
    }
    match authzid.rsplit_once('@') {
        Some((local, dom)) => local == authcid && dom.eq_ignore_ascii_case(domain),
        None => false,
    }
}
