//! The vocabulary every SASL mechanism's server side speaks (RFC 6120 §6,
//! RFC 4422 §3): the [`Exchange`] trait a mechanism implements and the
//! [`Definition`] it declares, what the server sends next ([`Step`]), the
//! RFC 6120 §6.5 failure conditions ([`SaslFailure`]), where credentials
//! come from ([`CredentialStore`]), the size limit of a client message and
//! the one authorization-identity rule all mechanisms apply.
//!
//! A new mechanism is one file beside `scram.rs` and `plain.rs` that
//! implements [`Exchange`] and exports a [`Definition`], plus one line in
//! the `mechanisms!` list of `mod.rs`.
use std::fmt;

use starling_raft::credentials::Credentials;

use super::binding::ChannelBindings;

/// What a mechanism's file declares: its entry in the `mechanisms!` list.
pub struct Definition {
    /// The registered mechanism name (RFC 4422 §3.1), as in
    /// `<mechanism/>` and `<auth mechanism='...'/>`.
    pub name: &'static str,
    /// Whether the mechanism sends the password in the clear, so that it
    /// must only be offered over TLS.
    pub requires_tls: bool,
    /// Whether the mechanism binds the exchange to the TLS channel (the
    /// SCRAM -PLUS variants): offered only where the connection has
    /// channel-binding data.
    pub channel_binding: bool,
    /// Starts one exchange on one stream.
    pub start: fn(Context) -> Box<dyn Exchange>,
    /// The authcid a client's first message claims, without verifying
    /// anything (no store lookup, no hashing).
    pub peek_authcid: fn(&[u8]) -> Option<String>,
}

/// What the stream tells a mechanism when an exchange starts. Whatever a
/// later mechanism needs from the stream is a new field here.
pub struct Context {
    /// The stream's domain (accepted authzid: `authcid@domain`).
    pub domain: String,
    /// SCRAM server nonce to use instead of a random one. Only for
    /// reproducing test vectors: a predictable nonce enables replay.
    pub server_nonce: Option<String>,
    /// The TLS channel-binding data of the connection (empty without TLS).
    /// Non-empty also means the -PLUS mechanisms were offered, which
    /// decides the RFC 5802 §6 "y" flag.
    pub bindings: ChannelBindings,
}

/// The server side of one mechanism for one negotiation: decoded client
/// messages in, the server's next [`Step`] out. No I/O and no clock.
///
/// [`super::SaslSession`] drives it: it answers an `<auth/>` without initial
/// response with an empty challenge itself (every mechanism here is
/// client-first, RFC 4422 §5), calls [`Exchange::respond`] with each client
/// message while it returns [`Step::Challenge`], and never again once it
/// returned [`Step::Success`] or [`Step::Failure`].
pub trait Exchange: Send {
    /// One client message: the initial response, or the content of a
    /// `<response/>`.
    fn respond(&mut self, message: &[u8], store: &dyn CredentialStore) -> Step;

    /// The authcid the client claimed, once its first message was parsed
    /// (whether or not it exists or authenticated).
    fn authcid(&self) -> Option<&str>;

    /// Where the exchange stands, for `Debug` output. Never keys.
    fn state(&self) -> &'static str;
}

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
