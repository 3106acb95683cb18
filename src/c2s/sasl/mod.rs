//! SASL authentication for client connections (RFC 6120 §6), server side,
//! pure: bytes in, bytes out, no I/O and no clock of its own.
//!
//! This module owns:
//!
//! * the mechanisms Starling offers: SCRAM-SHA-256 (RFC 7677), SCRAM-SHA-1
//!   (RFC 5802), their channel-binding -PLUS variants (RFC 5802 §6, with
//!   `tls-exporter` and `tls-server-end-point`, offered only over TLS) and
//!   PLAIN (RFC 4616), as a [`SaslSession`] state machine fed
//!   with the decoded payloads of `<auth/>` and `<response/>` and answering
//!   with a [`Step`] (challenge, success with additional data, or failure);
//! * the RFC 6120 §6.5 failure conditions ([`SaslFailure`]);
//! * the base64 convention of RFC 6120 §6.4.2 ([`decode_payload`],
//!   [`encode_payload`]).
//!
//! Limiting failed attempts is not SASL's job: see
//! [`crate::c2s::auth_limit`].
//!
//! Layout (one mechanism per file, as in xmpp-rs's
//! `sasl/src/server/mechanisms/`):
//!
//! * `mod.rs`: the mechanism list (`mechanisms!`), [`SaslSession`], which
//!   drives the selected mechanism, and the §6.4.2 payload encoding;
//! * `exchange.rs`: the `Exchange` trait every mechanism implements (bytes
//!   in, a [`Step`] out, no I/O) and the `Definition` it declares, with
//!   [`Step`], [`SaslFailure`], [`CredentialStore`], the message size limit
//!   and the authzid rule;
//! * `scram.rs`: SCRAM-SHA-1 and SCRAM-SHA-256 and their -PLUS variants,
//!   with the parsers of their client messages in `message.rs`;
//! * `binding.rs`: the channel-binding types and the values of one TLS
//!   connection (which the caller reads from rustls);
//! * `plain.rs`: PLAIN;
//! * `fake.rs`: the fake credentials of unknown users.
//!
//! The caller owns the XML, the choice of mechanisms to advertise (PLAIN only
//! over TLS: see [`Mechanism::requires_tls`]) and the mapping of the
//! authenticated username to a JID. Credentials are the salted SCRAM keys of
//! [`starling_raft::credentials`]; plaintext passwords are never stored.
//!
//! Usernames are used as the client sent them (after SCRAM's `=2C`/`=3D`
//! unescaping); SASLprep (RFC 4013) is not applied here: the
//! [`CredentialStore`] decides how names are normalised, and passwords are
//! hashed as the raw UTF-8 the client sent, exactly like
//! [`Credentials::derive`](starling_raft::credentials::Credentials::derive)
//! does.
//!
//! Unknown users are not distinguishable from wrong passwords before the last
//! step: SCRAM answers with a fake but stable salt (an HMAC of the username
//! under a per-process random secret) and the default iteration count, and
//! PLAIN runs the same PBKDF2 against fake keys.
use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

mod binding;
mod exchange;
mod fake;
mod message;
mod plain;
mod scram;
#[cfg(test)]
mod testing;

pub use binding::{server_end_point, CbType, ChannelBindings, EXPORTER_LABEL, EXPORTER_LEN};
use exchange::{Context, Definition, Exchange};
pub use exchange::{CredentialStore, SaslFailure, Step, MAX_MESSAGE_LEN};

// ---------------------------------------------------------------------------
// Mechanisms
// ---------------------------------------------------------------------------

/// Declares [`Mechanism`], one variant per line, with the [`Definition`]
/// its file exports; the order of the lines is [`Mechanism::ALL`]'s.
macro_rules! mechanisms {
    ($($(#[$doc:meta])* $variant:ident => $definition:path,)+) => {
        /// A SASL mechanism Starling implements.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Mechanism {
            $($(#[$doc])* $variant,)+
        }

        impl Mechanism {
            /// Every mechanism, strongest first (the order to advertise
            /// them in).
            pub const ALL: [Mechanism; [$(stringify!($variant)),+].len()] =
                [$(Mechanism::$variant),+];

            fn definition(&self) -> &'static Definition {
                match self {
                    $(Mechanism::$variant => &$definition,)+
                }
            }
        }
    };
}

mechanisms! {
    /// SCRAM-SHA-256-PLUS (RFC 7677, RFC 5802 §6 channel binding).
    ScramSha256Plus => scram::SCRAM_SHA_256_PLUS,
    /// SCRAM-SHA-1-PLUS (RFC 5802 §6 channel binding).
    ScramSha1Plus => scram::SCRAM_SHA_1_PLUS,
    /// SCRAM-SHA-256 (RFC 7677).
    ScramSha256 => scram::SCRAM_SHA_256,
    /// SCRAM-SHA-1 (RFC 5802).
    ScramSha1 => scram::SCRAM_SHA_1,
    /// PLAIN (RFC 4616).
    Plain => plain::PLAIN,
}

impl Mechanism {
    /// The registered mechanism name, as in `<mechanism/>` and
    /// `<auth mechanism='...'/>`.
    pub fn name(&self) -> &'static str {
        self.definition().name
    }

    /// Parses a mechanism name. Names are matched exactly: RFC 4422 §3.1
    /// names consist of upper-case letters, digits, hyphens and underscores.
    pub fn from_name(name: &str) -> Option<Self> {
        Mechanism::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Whether the mechanism sends the password in the clear, so that it must
    /// only be offered over TLS (RFC 4616 §1 and §6: PLAIN is meant to be
    /// used under a confidentiality layer such as TLS).
    pub fn requires_tls(&self) -> bool {
        self.definition().requires_tls
    }

    /// Whether the mechanism needs channel-binding data from the
    /// connection (the SCRAM -PLUS variants): offer it only where
    /// [`ChannelBindings`] are not empty.
    pub fn requires_channel_binding(&self) -> bool {
        self.definition().channel_binding
    }

    /// The mechanisms to offer on a connection with these channel-binding
    /// data: the -PLUS ones only where channel binding is possible.
    pub fn offered(bindings: &ChannelBindings) -> impl Iterator<Item = Mechanism> + '_ {
        Mechanism::ALL
            .into_iter()
            .filter(|m| !m.requires_channel_binding() || !bindings.is_empty())
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// ---------------------------------------------------------------------------
// RFC 6120 §6.4.2 payload encoding
// ---------------------------------------------------------------------------

/// Decodes the character data of `<auth/>` or `<response/>`.
///
/// RFC 6120 §6.4.2: "If the initiating entity needs to send a zero-length
/// initial response, it MUST transmit the response as a single equals sign
/// character ("="), which indicates that the response is present but
/// contains no data." So empty text is `Ok(None)` (no data; for `<auth/>`:
/// no initial response), `=` is `Ok(Some(vec![]))`. XML whitespace is
/// ignored. Bad base64 is [`SaslFailure::IncorrectEncoding`] (§6.5.5).
pub fn decode_payload(text: &str) -> Result<Option<Vec<u8>>, SaslFailure> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    match compact.as_str() {
        "" => Ok(None),
        "=" => Ok(Some(Vec::new())),
        data => B64
            .decode(data)
            .map(Some)
            .map_err(|_| SaslFailure::IncorrectEncoding),
    }
}

/// Encodes challenge or success data: base64, and `=` for zero-length data
/// (the §6.4.2 convention). For a `<success/>` without additional data send
/// an empty element instead.
pub fn encode_payload(data: &[u8]) -> String {
    if data.is_empty() {
        "=".to_owned()
    } else {
        B64.encode(data)
    }
}

// ---------------------------------------------------------------------------
// The session
// ---------------------------------------------------------------------------

/// One SASL negotiation on one stream: drives the selected mechanism's
/// [`Exchange`] and ends it after success or failure.
pub struct SaslSession {
    mechanism: Mechanism,
    exchange: Box<dyn Exchange>,
    /// Success or failure was returned.
    done: bool,
}

impl fmt::Debug for SaslSession {
    // Hand-written so that keys never end up in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.done {
            "done"
        } else {
            self.exchange.state()
        };
        f.debug_struct("SaslSession")
            .field("mechanism", &self.mechanism)
            .field("authcid", &self.exchange.authcid())
            .field("state", &state)
            .finish()
    }
}

impl SaslSession {
    /// Starts a negotiation on `<auth mechanism='...'>`.
    ///
    /// `domain` is the stream's domain (accepted authzid: `authcid@domain`);
    /// `initial` is the decoded initial response (`None` when the element was
    /// empty, see [`decode_payload`]).
    pub fn start(
        mechanism: Mechanism,
        domain: &str,
        initial: Option<&[u8]>,
        store: &dyn CredentialStore,
    ) -> (Self, Step) {
        Self::start_inner(mechanism, domain, initial, store, None, None)
    }

    /// [`SaslSession::start`] on a connection with channel-binding data
    /// (TLS): the -PLUS mechanisms bind to it, and a non-PLUS SCRAM client
    /// that says it supports channel binding ("y") is refused, since the
    /// -PLUS mechanisms were offered (RFC 5802 §6).
    pub fn start_bound(
        mechanism: Mechanism,
        domain: &str,
        initial: Option<&[u8]>,
        store: &dyn CredentialStore,
        bindings: ChannelBindings,
    ) -> (Self, Step) {
        Self::start_inner(mechanism, domain, initial, store, None, Some(bindings))
    }

    /// [`SaslSession::start`] with a fixed SCRAM server nonce instead of a
    /// random one. Only for reproducing test vectors: a predictable nonce
    /// enables replay. `server_nonce` must be printable ASCII without `,`.
    pub fn start_with_nonce(
        mechanism: Mechanism,
        domain: &str,
        initial: Option<&[u8]>,
        store: &dyn CredentialStore,
        server_nonce: &str,
    ) -> (Self, Step) {
        Self::start_inner(
            mechanism,
            domain,
            initial,
            store,
            Some(server_nonce.to_owned()),
            None,
        )
    }

    fn start_inner(
        mechanism: Mechanism,
        domain: &str,
        initial: Option<&[u8]>,
        store: &dyn CredentialStore,
        server_nonce: Option<String>,
        bindings: Option<ChannelBindings>,
    ) -> (Self, Step) {
        let bindings = bindings.unwrap_or_default();
        let unavailable = mechanism.requires_channel_binding() && bindings.is_empty();
        let context = Context {
            domain: domain.to_owned(),
            server_nonce,
            bindings,
        };
        let mut session = SaslSession {
            mechanism,
            exchange: (mechanism.definition().start)(context),
            done: false,
        };
        if unavailable {
            // Not offered on this connection (RFC 6120 §6.4.2: "the
            // mechanism is not supported" is <invalid-mechanism/>).
            session.done = true;
            return (session, Step::Failure(SaslFailure::InvalidMechanism));
        }
        let step = match initial {
            // Every mechanism here is client-first; without an initial
            // response the server sends an empty challenge (RFC 4422 §5) and
            // the client's first message comes in the <response/>.
            None => Step::Challenge(Vec::new()),
            Some(data) => session.respond(data, store),
        };
        (session, step)
    }

    /// Feeds the decoded content of a `<response/>`.
    pub fn step(&mut self, response: &[u8], store: &dyn CredentialStore) -> Step {
        if self.done {
            // RFC 6120 §6.4.6: after <success/> or <failure/> the
            // negotiation is over; anything more is a protocol error.
            return Step::Failure(SaslFailure::MalformedRequest);
        }
        self.respond(response, store)
    }

    /// The client sent `<abort/>` (RFC 6120 §6.4.4): the answer is
    /// `<failure><aborted/></failure>`.
    pub fn abort(&mut self) -> Step {
        self.done = true;
        Step::Failure(SaslFailure::Aborted)
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// The authcid the client claimed, once its first message was parsed
    /// (whether or not it exists or authenticated). For rate limiting.
    pub fn authcid(&self) -> Option<&str> {
        self.exchange.authcid()
    }

    /// True once success or failure was returned.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn respond(&mut self, data: &[u8], store: &dyn CredentialStore) -> Step {
        let step = self.exchange.respond(data, store);
        if !matches!(step, Step::Challenge(_)) {
            self.done = true;
        }
        step
    }
}

/// The authcid a client's first message claims, without verifying
/// anything (no store lookup, no hashing). Lets the caller consult the
/// [`AuthLimiter`](crate::c2s::auth_limit::AuthLimiter) for the account
/// before [`SaslSession::start`] runs PLAIN's PBKDF2.
pub fn peek_authcid(mechanism: Mechanism, initial: &[u8]) -> Option<String> {
    (mechanism.definition().peek_authcid)(initial)
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use starling_raft::credentials::{Credentials, ScramHash};
    use std::collections::HashMap;

    #[test]
    fn invalid_authzid() {
        let store = store_with("juliet", Credentials::derive("pw", 16));
        for first in [
            &b"n,a=romeo@example.org,n=juliet,r=abc"[..],
            b"n,a=juliet@example.net,n=juliet,r=abc",
            b"n,a=juliet@example.org/balcony,n=juliet,r=abc",
            b"n,a=romeo,n=juliet,r=abc",
        ] {
            let (session, step) =
                SaslSession::start(Mechanism::ScramSha256, DOMAIN, Some(first), &store);
            assert_eq!(
                step,
                Step::Failure(SaslFailure::InvalidAuthzid),
                "{first:?}"
            );
            assert!(session.is_done());
        }
        let (_, step) =
            SaslSession::start(Mechanism::Plain, DOMAIN, Some(b"romeo\0juliet\0pw"), &store);
        assert_eq!(step, Step::Failure(SaslFailure::InvalidAuthzid));
    }

    #[test]
    fn no_initial_response() {
        let password = random_password();
        let store = store_with("juliet", Credentials::derive(&password, 64));
        // SCRAM: empty challenge, then client-first as a response.
        let client = Client::new(ScramHash::Sha256, "n,,", "juliet");
        let (mut session, step) = SaslSession::start(Mechanism::ScramSha256, DOMAIN, None, &store);
        assert_eq!(step, Step::Challenge(Vec::new()));
        assert_eq!(session.authcid(), None);
        let sf = client.parse_server_first(&challenge(session.step(&client.first(), &store)));
        let (last, expected) = client.last(&sf, &password, b"n,,", &sf.nonce);
        assert_eq!(
            session.step(&last, &store),
            Step::Success {
                username: "juliet".into(),
                additional: expected
            }
        );
        // PLAIN.
        let (mut session, step) = SaslSession::start(Mechanism::Plain, DOMAIN, None, &store);
        assert_eq!(step, Step::Challenge(Vec::new()));
        let msg = format!("\0juliet\0{password}");
        assert!(matches!(
            session.step(msg.as_bytes(), &store),
            Step::Success { .. }
        ));
        // An empty initial response ("=") is a malformed message.
        let (_, step) = SaslSession::start(Mechanism::ScramSha1, DOMAIN, Some(b""), &store);
        assert_eq!(step, Step::Failure(SaslFailure::MalformedRequest));
    }

    #[test]
    fn abort() {
        let store = Store(HashMap::new());
        let (mut session, _) = SaslSession::start(Mechanism::ScramSha1, DOMAIN, None, &store);
        assert_eq!(session.abort(), Step::Failure(SaslFailure::Aborted));
        assert!(session.is_done());
        assert_eq!(session.mechanism(), Mechanism::ScramSha1);
    }

    #[test]
    fn peek() {
        assert_eq!(
            peek_authcid(Mechanism::Plain, b"\0juliet\0pw").as_deref(),
            Some("juliet")
        );
        assert_eq!(
            peek_authcid(Mechanism::ScramSha1, b"n,,n=a=2Cb,r=x").as_deref(),
            Some("a,b")
        );
        assert_eq!(peek_authcid(Mechanism::ScramSha256, b"n,,r=x"), None);
    }

    #[test]
    fn names_and_conditions() {
        for mech in Mechanism::ALL {
            assert_eq!(Mechanism::from_name(mech.name()), Some(mech));
            assert_eq!(mech.to_string(), mech.name());
        }
        assert_eq!(Mechanism::from_name("scram-sha-1"), None);
        assert_eq!(
            Mechanism::from_name("SCRAM-SHA-1-PLUS"),
            Some(Mechanism::ScramSha1Plus)
        );
        assert!(Mechanism::ScramSha256Plus.requires_channel_binding());
        assert!(!Mechanism::ScramSha256.requires_channel_binding());
        let plain_text: Vec<_> = Mechanism::offered(&ChannelBindings::default()).collect();
        assert_eq!(
            plain_text,
            [
                Mechanism::ScramSha256,
                Mechanism::ScramSha1,
                Mechanism::Plain
            ]
        );
        assert!(Mechanism::Plain.requires_tls());
        assert!(!Mechanism::ScramSha1.requires_tls());
        assert!(!Mechanism::ScramSha256.requires_tls());
        assert_eq!(SaslFailure::NotAuthorized.condition(), "not-authorized");
        assert_eq!(
            SaslFailure::TemporaryAuthFailure.to_string(),
            "temporary-auth-failure"
        );
        assert_eq!(SaslFailure::InvalidAuthzid.condition(), "invalid-authzid");
    }

    #[test]
    fn payload_encoding() {
        assert_eq!(decode_payload(""), Ok(None));
        assert_eq!(decode_payload(" \n"), Ok(None));
        assert_eq!(decode_payload("="), Ok(Some(Vec::new())));
        assert_eq!(decode_payload("biws"), Ok(Some(b"n,,".to_vec())));
        assert_eq!(decode_payload("bi\nws"), Ok(Some(b"n,,".to_vec())));
        assert_eq!(decode_payload("biw"), Err(SaslFailure::IncorrectEncoding));
        assert_eq!(decode_payload("b!ws"), Err(SaslFailure::IncorrectEncoding));
        assert_eq!(encode_payload(b""), "=");
        assert_eq!(encode_payload(b"n,,"), "biws");
    }

    #[test]
    fn debug_hides_keys() {
        let store = rfc_store();
        let (session, _) = SaslSession::start(
            Mechanism::ScramSha256,
            DOMAIN,
            Some(b"n,,n=user,r=abc"),
            &store,
        );
        let debug = format!("{session:?}");
        assert!(debug.contains("awaiting-client-final"), "{debug}");
        assert!(!debug.contains("stored"), "{debug}");
    }
}
