//! SASL authentication for client connections (RFC 6120 §6), server side,
//! pure: bytes in, bytes out, no I/O and no clock of its own.
//!
//! This module owns:
//!
//! * the mechanisms Starling offers: SCRAM-SHA-256 (RFC 7677), SCRAM-SHA-1
//!   (RFC 5802) and PLAIN (RFC 4616), as a [`SaslSession`] state machine fed
//!   with the decoded payloads of `<auth/>` and `<response/>` and answering
//!   with a [`Step`] (challenge, success with additional data, or failure);
//! * the RFC 6120 §6.5 failure conditions ([`SaslFailure`]);
//! * the base64 convention of RFC 6120 §6.4.2 ([`decode_payload`],
//!   [`encode_payload`]).
//!
//! Limiting failed attempts is not SASL's job: see
//! [`crate::c2s::auth_limit`].
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
//! [`Credentials::derive`] does.
//!
//! Unknown users are not distinguishable from wrong passwords before the last
//! step: SCRAM answers with a fake but stable salt (an HMAC of the username
//! under a per-process random secret) and the default iteration count, and
//! PLAIN runs the same PBKDF2 against fake keys.
use std::fmt;
use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rand::RngCore;
use starling_raft::credentials::{h, hmac, Credentials, ScramHash, ScramKeys, DEFAULT_ITERATIONS};
use subtle::ConstantTimeEq;

/// Longest SASL message (after base64 decoding) a session accepts. Client
/// messages of all three mechanisms are a few hundred bytes at most.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// Length of the server part of the SCRAM nonce, in random bytes (encoded
/// as base64, so 24 characters).
const SERVER_NONCE_BYTES: usize = 18;

/// Salt length of fake SCRAM credentials; the same as real ones
/// (`Credentials::derive` uses 16 random bytes).
const FAKE_SALT_LEN: usize = 16;

// ---------------------------------------------------------------------------
// Mechanisms and outcomes
// ---------------------------------------------------------------------------

/// A SASL mechanism Starling implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    ScramSha256,
    ScramSha1,
    Plain,
}

impl Mechanism {
    /// Every mechanism, strongest first (the order to advertise them in).
    pub const ALL: [Mechanism; 3] = [
        Mechanism::ScramSha256,
        Mechanism::ScramSha1,
        Mechanism::Plain,
    ];

    /// The registered mechanism name, as in `<mechanism/>` and
    /// `<auth mechanism='...'/>`.
    pub fn name(&self) -> &'static str {
        match self {
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::Plain => "PLAIN",
        }
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
        matches!(self, Mechanism::Plain)
    }

    /// The SCRAM hash function, or `None` for PLAIN.
    pub fn scram_hash(&self) -> Option<ScramHash> {
        match self {
            Mechanism::ScramSha256 => Some(ScramHash::Sha256),
            Mechanism::ScramSha1 => Some(ScramHash::Sha1),
            Mechanism::Plain => None,
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

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

/// One SASL negotiation on one stream.
pub struct SaslSession {
    mechanism: Mechanism,
    domain: String,
    /// Server nonce to use instead of a random one (test vectors).
    server_nonce: Option<String>,
    authcid: Option<String>,
    state: State,
}

enum State {
    /// `<auth/>` carried no initial response; an empty challenge was sent
    /// and the client's first message comes as a `<response/>`.
    AwaitingFirst,
    /// SCRAM server-first was sent; waiting for client-final.
    ScramFinal(Box<ScramPending>),
    /// Success or failure was returned.
    Done,
}

struct ScramPending {
    hash: ScramHash,
    username: String,
    /// The gs2-header exactly as the client sent it, e.g. `n,,`.
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    /// Client nonce followed by server nonce.
    nonce: String,
    keys: ScramKeys,
    /// False when `keys` are fake (unknown user): the exchange runs to the
    /// end and then fails with not-authorized.
    known: bool,
}

impl fmt::Debug for SaslSession {
    // Hand-written so that keys never end up in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::AwaitingFirst => "awaiting-first",
            State::ScramFinal(_) => "awaiting-client-final",
            State::Done => "done",
        };
        f.debug_struct("SaslSession")
            .field("mechanism", &self.mechanism)
            .field("authcid", &self.authcid)
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
        Self::start_inner(mechanism, domain, initial, store, None)
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
        )
    }

    fn start_inner(
        mechanism: Mechanism,
        domain: &str,
        initial: Option<&[u8]>,
        store: &dyn CredentialStore,
        server_nonce: Option<String>,
    ) -> (Self, Step) {
        let mut session = SaslSession {
            mechanism,
            domain: domain.to_owned(),
            server_nonce,
            authcid: None,
            state: State::AwaitingFirst,
        };
        let step = match initial {
            // Both SCRAM and PLAIN are client-first; without an initial
            // response the server sends an empty challenge (RFC 4422 §5) and
            // the client's first message comes in the <response/>.
            None => Step::Challenge(Vec::new()),
            Some(data) => session.first_message(data, store),
        };
        (session, step)
    }

    /// Feeds the decoded content of a `<response/>`.
    pub fn step(&mut self, response: &[u8], store: &dyn CredentialStore) -> Step {
        match std::mem::replace(&mut self.state, State::Done) {
            State::AwaitingFirst => self.first_message(response, store),
            State::ScramFinal(pending) => finish_scram(&pending, response),
            // RFC 6120 §6.4.6: after <success/> or <failure/> the
            // negotiation is over; anything more is a protocol error.
            State::Done => Step::Failure(SaslFailure::MalformedRequest),
        }
    }

    /// The client sent `<abort/>` (RFC 6120 §6.4.4): the answer is
    /// `<failure><aborted/></failure>`.
    pub fn abort(&mut self) -> Step {
        self.state = State::Done;
        Step::Failure(SaslFailure::Aborted)
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// The authcid the client claimed, once its first message was parsed
    /// (whether or not it exists or authenticated). For rate limiting.
    pub fn authcid(&self) -> Option<&str> {
        self.authcid.as_deref()
    }

    /// True once success or failure was returned.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn first_message(&mut self, data: &[u8], store: &dyn CredentialStore) -> Step {
        let step = match self.mechanism.scram_hash() {
            Some(hash) => self.scram_first(hash, data, store),
            None => self.plain(data, store),
        };
        if !matches!(step, Step::Challenge(_)) {
            self.state = State::Done;
        }
        step
    }

    // -- PLAIN ------------------------------------------------------------

    fn plain(&mut self, data: &[u8], store: &dyn CredentialStore) -> Step {
        let msg = match parse_plain(data) {
            Ok(msg) => msg,
            Err(failure) => return Step::Failure(failure),
        };
        self.authcid = Some(msg.authcid.to_owned());
        // RFC 4616 §2: the server verifies authcid and password, and "that
        // the authentication credentials permit the client to act as the
        // (presented or derived) authorization identity". A user may only
        // act as itself.
        if let Some(authzid) = msg.authzid {
            if !authzid_matches(authzid, msg.authcid, &self.domain) {
                return Step::Failure(SaslFailure::InvalidAuthzid);
            }
        }
        match store.credentials(msg.authcid) {
            Some(credentials) => {
                if credentials.verify_password(msg.passwd) {
                    Step::Success {
                        username: msg.authcid.to_owned(),
                        additional: Vec::new(),
                    }
                } else {
                    Step::Failure(SaslFailure::NotAuthorized)
                }
            }
            None => {
                // Same PBKDF2 work as for a real account, so that the
                // answer time does not tell unknown users apart.
                let fake = fake_keys(ScramHash::Sha256, msg.authcid);
                std::hint::black_box(fake.verify_password(ScramHash::Sha256, msg.passwd));
                Step::Failure(SaslFailure::NotAuthorized)
            }
        }
    }

    // -- SCRAM ------------------------------------------------------------

    fn scram_first(&mut self, hash: ScramHash, data: &[u8], store: &dyn CredentialStore) -> Step {
        let first = match parse_client_first(data) {
            Ok(first) => first,
            Err(failure) => return Step::Failure(failure),
        };
        self.authcid = Some(first.username.clone());
        if let Some(authzid) = &first.authzid {
            if !authzid_matches(authzid, &first.username, &self.domain) {
                return Step::Failure(SaslFailure::InvalidAuthzid);
            }
        }
        let (keys, known) = match store.credentials(&first.username) {
            Some(credentials) => (credentials.keys(hash).clone(), true),
            None => (fake_keys(hash, &first.username), false),
        };
        let server_nonce = self.server_nonce.take().unwrap_or_else(random_nonce);
        // RFC 5802 §5.1: "r: ... the server MUST verify that the nonce sent
        // by the client in the second message is the same as the one sent by
        // the server in its first message", which is the client nonce with
        // the server's appended ("server-first-message = [reserved-mext ","]
        // nonce "," salt "," iteration-count ["," extensions]").
        let nonce = format!("{}{}", first.client_nonce, server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&keys.salt),
            keys.iterations
        );
        let challenge = server_first.clone().into_bytes();
        self.state = State::ScramFinal(Box::new(ScramPending {
            hash,
            username: first.username,
            gs2_header: first.gs2_header,
            client_first_bare: first.bare,
            server_first,
            nonce,
            keys,
            known,
        }));
        Step::Challenge(challenge)
    }
}

fn finish_scram(pending: &ScramPending, data: &[u8]) -> Step {
    let last = match parse_client_final(data) {
        Ok(last) => last,
        Err(failure) => return Step::Failure(failure),
    };
    // RFC 5802 §5.1, "c": "This REQUIRED attribute specifies the base64-
    // encoded GS2 header and channel binding data." Without channel binding
    // that is the gs2-header alone, so it must equal the client-first's.
    if last.channel_binding != pending.gs2_header.as_bytes() {
        return Step::Failure(SaslFailure::NotAuthorized);
    }
    if last.nonce != pending.nonce {
        return Step::Failure(SaslFailure::NotAuthorized);
    }
    let hash = pending.hash;
    if last.proof.len() != pending.keys.stored_key.len() {
        return Step::Failure(SaslFailure::MalformedRequest);
    }
    // RFC 5802 §3:
    //   AuthMessage     := client-first-message-bare + "," +
    //                      server-first-message + "," +
    //                      client-final-message-without-proof
    //   ClientSignature := HMAC(StoredKey, AuthMessage)
    //   ClientProof     := ClientKey XOR ClientSignature
    // "The server authenticates the client by computing the
    // ClientSignature, exclusive-ORing that with the ClientProof to recover
    // the ClientKey and verifying the correctness of the ClientKey by
    // applying the hash function and comparing the result to the
    // StoredKey."
    let auth_message = format!(
        "{},{},{}",
        pending.client_first_bare, pending.server_first, last.without_proof
    );
    let client_signature = hmac(hash, &pending.keys.stored_key, auth_message.as_bytes());
    let client_key: Vec<u8> = last
        .proof
        .iter()
        .zip(&client_signature)
        .map(|(p, s)| p ^ s)
        .collect();
    let matches: bool = h(hash, &client_key).ct_eq(&pending.keys.stored_key).into();
    if !(matches && pending.known) {
        return Step::Failure(SaslFailure::NotAuthorized);
    }
    // "ServerSignature := HMAC(ServerKey, AuthMessage)", sent as
    // "server-final-message = (server-error / verifier) ["," extensions]",
    // "verifier = "v=" base64".
    let server_signature = hmac(hash, &pending.keys.server_key, auth_message.as_bytes());
    Step::Success {
        username: pending.username.clone(),
        additional: format!("v={}", B64.encode(server_signature)).into_bytes(),
    }
}

/// The authcid a client's first message claims, without verifying
/// anything (no store lookup, no hashing). Lets the caller consult the
/// [`AuthLimiter`](crate::c2s::auth_limit::AuthLimiter) for the account
/// before [`SaslSession::start`] runs PLAIN's PBKDF2.
pub fn peek_authcid(mechanism: Mechanism, initial: &[u8]) -> Option<String> {
    match mechanism {
        Mechanism::Plain => parse_plain(initial).ok().map(|m| m.authcid.to_owned()),
        Mechanism::ScramSha1 | Mechanism::ScramSha256 => {
            parse_client_first(initial).ok().map(|f| f.username)
        }
    }
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

struct PlainMessage<'a> {
    authzid: Option<&'a str>,
    authcid: &'a str,
    passwd: &'a str,
}

/// RFC 4616 §2:
/// ```text
/// message   = [authzid] UTF8NUL authcid UTF8NUL passwd
/// authcid   = 1*SAFE ; MUST accept up to 255 octets
/// authzid   = 1*SAFE ; MUST accept up to 255 octets
/// passwd    = 1*SAFE ; MUST accept up to 255 octets
/// ```
fn parse_plain(data: &[u8]) -> Result<PlainMessage<'_>, SaslFailure> {
    if data.len() > MAX_MESSAGE_LEN {
        return Err(SaslFailure::MalformedRequest);
    }
    let text = std::str::from_utf8(data).map_err(|_| SaslFailure::MalformedRequest)?;
    let mut parts = text.split('\0');
    let (Some(authzid), Some(authcid), Some(passwd), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslFailure::MalformedRequest);
    };
    if authcid.is_empty() || passwd.is_empty() {
        return Err(SaslFailure::MalformedRequest);
    }
    Ok(PlainMessage {
        authzid: (!authzid.is_empty()).then_some(authzid),
        authcid,
        passwd,
    })
}

struct ClientFirst {
    gs2_header: String,
    authzid: Option<String>,
    username: String,
    client_nonce: String,
    bare: String,
}

/// RFC 5802 §7:
/// ```text
/// client-first-message = gs2-header client-first-message-bare
/// gs2-header      = gs2-cbind-flag "," [ authzid ] ","
/// gs2-cbind-flag  = ("p=" cb-name) / "n" / "y"
/// authzid         = "a=" saslname
/// client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
/// username        = "n=" saslname
/// nonce           = "r=" c-nonce [s-nonce]
/// ```
fn parse_client_first(data: &[u8]) -> Result<ClientFirst, SaslFailure> {
    use SaslFailure::MalformedRequest;
    if data.len() > MAX_MESSAGE_LEN {
        return Err(MalformedRequest);
    }
    let text = std::str::from_utf8(data).map_err(|_| MalformedRequest)?;
    let (cbind_flag, rest) = text.split_once(',').ok_or(MalformedRequest)?;
    match cbind_flag {
        // RFC 5802 §6: "n" - the client doesn't support channel binding;
        // "y" - the client does support channel binding but thinks the server
        // does not. "If the flag is set to "y" and the server supports
        // channel binding, the server MUST fail authentication." Starling
        // offers no -PLUS mechanism, so both are fine.
        "n" | "y" => {}
        // "p=" means the client requires channel binding, which goes with
        // the -PLUS variants (RFC 5802 §6); Starling advertises none, so the
        // message does not fit the selected mechanism.
        _ => return Err(MalformedRequest),
    }
    let (authzid_field, bare) = rest.split_once(',').ok_or(MalformedRequest)?;
    let authzid = if authzid_field.is_empty() {
        None
    } else {
        let value = authzid_field.strip_prefix("a=").ok_or(MalformedRequest)?;
        Some(decode_saslname(value)?)
    };
    let gs2_header = text[..text.len() - bare.len()].to_owned();

    let mut attrs = bare.split(',');
    let first = attrs.next().ok_or(MalformedRequest)?;
    // RFC 5802 §5.1: "m: This attribute is reserved for future
    // extensibility. In this version of SCRAM, its presence in a client or a
    // server message MUST cause authentication failure when the attribute is
    // parsed by the other end." A leading "m=" fails the "n=" test below.
    let username = first.strip_prefix("n=").ok_or(MalformedRequest)?;
    let username = decode_saslname(username)?;
    let nonce = attrs.next().ok_or(MalformedRequest)?;
    let client_nonce = nonce.strip_prefix("r=").ok_or(MalformedRequest)?;
    if !is_valid_nonce(client_nonce) {
        return Err(MalformedRequest);
    }
    for ext in attrs {
        check_extension(ext)?;
    }
    Ok(ClientFirst {
        gs2_header,
        authzid,
        username,
        client_nonce: client_nonce.to_owned(),
        bare: bare.to_owned(),
    })
}

struct ClientFinal<'a> {
    channel_binding: Vec<u8>,
    nonce: &'a str,
    proof: Vec<u8>,
    without_proof: &'a str,
}

/// RFC 5802 §7:
/// ```text
/// client-final-message-without-proof = channel-binding "," nonce ["," extensions]
/// client-final-message = client-final-message-without-proof "," proof
/// channel-binding = "c=" base64
/// proof           = "p=" base64
/// ```
fn parse_client_final(data: &[u8]) -> Result<ClientFinal<'_>, SaslFailure> {
    use SaslFailure::MalformedRequest;
    if data.len() > MAX_MESSAGE_LEN {
        return Err(MalformedRequest);
    }
    let text = std::str::from_utf8(data).map_err(|_| MalformedRequest)?;
    // No attribute value contains ",": base64 has none, nonces and
    // extension values exclude it.
    let (without_proof, proof) = text.rsplit_once(',').ok_or(MalformedRequest)?;
    let proof = proof.strip_prefix("p=").ok_or(MalformedRequest)?;
    let mut attrs = without_proof.split(',');
    let cbind = attrs
        .next()
        .and_then(|a| a.strip_prefix("c="))
        .ok_or(MalformedRequest)?;
    let nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or(MalformedRequest)?;
    if !is_valid_nonce(nonce) {
        return Err(MalformedRequest);
    }
    for ext in attrs {
        check_extension(ext)?;
    }
    let channel_binding = B64.decode(cbind).map_err(|_| MalformedRequest)?;
    let proof = B64.decode(proof).map_err(|_| MalformedRequest)?;
    Ok(ClientFinal {
        channel_binding,
        nonce,
        proof,
        without_proof,
    })
}

/// RFC 5802 §7:
/// ```text
/// saslname        = 1*(value-safe-char / "=2C" / "=3D")
/// value-safe-char = %x01-2B / %x2D-3C / %x3E-7F / UTF8-2 / UTF8-3 / UTF8-4
/// ```
/// §5.1: "If the server receives a username that contains '=' not followed
/// by either '2C' or '3D', then the server MUST fail the authentication."
fn decode_saslname(value: &str) -> Result<String, SaslFailure> {
    if value.is_empty() || value.contains('\0') {
        return Err(SaslFailure::MalformedRequest);
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(pos) = rest.find('=') {
        out.push_str(&rest[..pos]);
        let escape = rest.get(pos..pos + 3);
        match escape {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(SaslFailure::MalformedRequest),
        }
        rest = &rest[pos + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// RFC 5802 §7: `printable = %x21-2B / %x2D-7E ;; Printable ASCII except ","`,
/// `c-nonce = printable`.
fn is_valid_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// RFC 5802 §7: `extensions = attr-val *("," attr-val)`,
/// `attr-val = ALPHA "=" value`. Unknown extensions are ignored, except that
/// the reserved `m` is never valid here ("m" is only allowed first in
/// client-first, which the parser rejects as a missing username).
fn check_extension(ext: &str) -> Result<(), SaslFailure> {
    let bytes = ext.as_bytes();
    match bytes {
        [name, b'=', ..] if name.is_ascii_alphabetic() && *name != b'm' => Ok(()),
        _ => Err(SaslFailure::MalformedRequest),
    }
}

/// Whether `authzid` names the authcid's own account: RFC 6120 §6.3.8
/// wants a bare JID (`localpart@domainpart`); a bare authcid is accepted
/// too. Anything else would be acting for another entity, which Starling
/// does not allow.
fn authzid_matches(authzid: &str, authcid: &str, domain: &str) -> bool {
    if authzid == authcid {
        return true;
    }
    match authzid.rsplit_once('@') {
        Some((local, dom)) => local == authcid && dom.eq_ignore_ascii_case(domain),
        None => false,
    }
}

// ---------------------------------------------------------------------------
// Nonces and fake credentials
// ---------------------------------------------------------------------------

fn random_nonce() -> String {
    let mut bytes = [0u8; SERVER_NONCE_BYTES];
    rand::thread_rng().fill_bytes(&mut bytes);
    // Standard base64 without "," (and 18 bytes need no padding).
    B64.encode(bytes)
}

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
fn fake_keys(hash: ScramHash, username: &str) -> ScramKeys {
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

#[cfg(test)]
mod tests {
    use super::*;
    use starling_raft::credentials::salted_password;
    use std::collections::HashMap;

    const DOMAIN: &str = "example.org";

    struct Store(HashMap<String, Credentials>);

    impl CredentialStore for Store {
        fn credentials(&self, username: &str) -> Option<Credentials> {
            self.0.get(username).cloned()
        }
    }

    fn store_with(username: &str, credentials: Credentials) -> Store {
        Store(HashMap::from([(username.to_owned(), credentials)]))
    }

    /// The RFC 5802 / RFC 7677 user: "user", password "pencil".
    fn rfc_store() -> Store {
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

    fn challenge(step: Step) -> String {
        match step {
            Step::Challenge(data) => String::from_utf8(data).unwrap(),
            other => panic!("expected a challenge, got {other:?}"),
        }
    }

    /// RFC 5802 §5: the SCRAM-SHA-1 example exchange, byte for byte.
    #[test]
    fn rfc5802_exchange() {
        let store = rfc_store();
        let (mut session, step) = SaslSession::start_with_nonce(
            Mechanism::ScramSha1,
            DOMAIN,
            Some(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL"),
            &store,
            "3rfcNHYJY1ZVvWVs7j",
        );
        assert_eq!(
            challenge(step),
            "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
        );
        assert_eq!(session.authcid(), Some("user"));
        let step = session.step(
            b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
            &store,
        );
        assert_eq!(
            step,
            Step::Success {
                username: "user".into(),
                additional: b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=".to_vec(),
            }
        );
        assert!(session.is_done());
        // Nothing more is accepted.
        assert_eq!(
            session.step(b"c=biws", &store),
            Step::Failure(SaslFailure::MalformedRequest)
        );
    }

    /// RFC 7677 §3: the SCRAM-SHA-256 example exchange, byte for byte.
    #[test]
    fn rfc7677_exchange() {
        let store = rfc_store();
        let (mut session, step) = SaslSession::start_with_nonce(
            Mechanism::ScramSha256,
            DOMAIN,
            Some(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"),
            &store,
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        );
        assert_eq!(
            challenge(step),
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let step = session.step(
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            &store,
        );
        assert_eq!(
            step,
            Step::Success {
                username: "user".into(),
                additional: b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".to_vec(),
            }
        );
    }

    /// A SCRAM client, computing everything from the password.
    struct Client {
        hash: ScramHash,
        gs2_header: String,
        bare: String,
        client_nonce: String,
    }

    struct ServerFirst {
        nonce: String,
        salt: Vec<u8>,
        iterations: u32,
        raw: String,
    }

    impl Client {
        fn new(hash: ScramHash, gs2_header: &str, escaped_user: &str) -> Self {
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

        fn first(&self) -> Vec<u8> {
            format!("{}{}", self.gs2_header, self.bare).into_bytes()
        }

        fn parse_server_first(&self, server_first: &str) -> ServerFirst {
            let mut nonce = None;
            let mut salt = None;
            let mut iterations = None;
            for attr in server_first.split(',') {
                let (k, v) = attr.split_once('=').unwrap();
                match k {
                    "r" => nonce = Some(v.to_owned()),
                    "s" => salt = Some(B64.decode(v).unwrap()),
                    "i" => iterations = Some(v.parse().unwrap()),
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
                raw: server_first.to_owned(),
            }
        }

        /// client-final for `password`, with optional tampering; returns it
        /// and the expected server-final.
        fn last(
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

    fn random_password() -> String {
        let mut bytes = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut bytes);
        format!("pä{}", B64.encode(bytes))
    }

    fn scram_mechs() -> [(Mechanism, ScramHash); 2] {
        [
            (Mechanism::ScramSha256, ScramHash::Sha256),
            (Mechanism::ScramSha1, ScramHash::Sha1),
        ]
    }

    /// Runs a full exchange; returns the final step and the expected
    /// server-final.
    fn run(
        mech: Mechanism,
        store: &Store,
        client: &Client,
        password: &str,
        tamper: impl Fn(&ServerFirst) -> (Vec<u8>, String),
    ) -> (Step, Vec<u8>) {
        let (mut session, step) = SaslSession::start(mech, DOMAIN, Some(&client.first()), store);
        let sf = client.parse_server_first(&challenge(step));
        let (cbind, nonce) = tamper(&sf);
        let (last, expected) = client.last(&sf, password, &cbind, &nonce);
        (session.step(&last, store), expected)
    }

    fn honest(client: &Client) -> impl Fn(&ServerFirst) -> (Vec<u8>, String) + '_ {
        |sf| (client.gs2_header.as_bytes().to_vec(), sf.nonce.clone())
    }

    #[test]
    fn random_password_succeeds() {
        for (mech, hash) in scram_mechs() {
            let password = random_password();
            let store = store_with("juliet", Credentials::derive(&password, 64));
            for gs2 in [
                "n,,",
                "y,,",
                "n,a=juliet@example.org,",
                "n,a=juliet@EXAMPLE.org,",
            ] {
                let client = Client::new(hash, gs2, "juliet");
                let (step, expected) = run(mech, &store, &client, &password, honest(&client));
                assert_eq!(
                    step,
                    Step::Success {
                        username: "juliet".into(),
                        additional: expected
                    },
                    "{mech} {gs2}"
                );
            }
        }
    }

    #[test]
    fn escaped_username() {
        let password = random_password();
        let store = store_with("a,b=c", Credentials::derive(&password, 64));
        let client = Client::new(ScramHash::Sha256, "n,,", "a=2Cb=3Dc");
        let (step, _) = run(
            Mechanism::ScramSha256,
            &store,
            &client,
            &password,
            honest(&client),
        );
        assert!(
            matches!(step, Step::Success { ref username, .. } if username == "a,b=c"),
            "{step:?}"
        );
    }

    #[test]
    fn wrong_password_fails() {
        for (mech, hash) in scram_mechs() {
            let store = store_with("juliet", Credentials::derive("right", 64));
            let client = Client::new(hash, "n,,", "juliet");
            let (step, _) = run(mech, &store, &client, "wrong", honest(&client));
            assert_eq!(step, Step::Failure(SaslFailure::NotAuthorized));
        }
    }

    #[test]
    fn unknown_user_looks_like_wrong_password() {
        for (mech, hash) in scram_mechs() {
            let store = Store(HashMap::new());
            let client = Client::new(hash, "n,,", "romeo");
            let (mut session, step) =
                SaslSession::start(mech, DOMAIN, Some(&client.first()), &store);
            let sf = client.parse_server_first(&challenge(step));
            assert_eq!(sf.iterations, DEFAULT_ITERATIONS);
            assert_eq!(sf.salt.len(), FAKE_SALT_LEN);
            // The fake salt is stable for the user, differs between users
            // and between mechanisms.
            let again = Client::new(hash, "n,,", "romeo");
            let (_, step2) = SaslSession::start(mech, DOMAIN, Some(&again.first()), &store);
            assert_eq!(again.parse_server_first(&challenge(step2)).salt, sf.salt);
            let other = Client::new(hash, "n,,", "benvolio");
            let (_, step3) = SaslSession::start(mech, DOMAIN, Some(&other.first()), &store);
            assert_ne!(other.parse_server_first(&challenge(step3)).salt, sf.salt);
            assert_ne!(
                fake_keys(ScramHash::Sha1, "romeo").salt,
                fake_keys(ScramHash::Sha256, "romeo").salt
            );
            let (last, _) = client.last(&sf, "anything", b"n,,", &sf.nonce);
            assert_eq!(
                session.step(&last, &store),
                Step::Failure(SaslFailure::NotAuthorized)
            );
            assert_eq!(session.authcid(), Some("romeo"));
        }
    }

    #[test]
    fn tampered_nonce_fails() {
        for (mech, hash) in scram_mechs() {
            let password = random_password();
            let store = store_with("juliet", Credentials::derive(&password, 64));
            let client = Client::new(hash, "n,,", "juliet");
            // Correct proof over a different nonce.
            let (step, _) = run(mech, &store, &client, &password, |sf| {
                (b"n,,".to_vec(), format!("{}x", sf.nonce))
            });
            assert_eq!(step, Step::Failure(SaslFailure::NotAuthorized));
            // The client nonce alone.
            let (step, _) = run(mech, &store, &client, &password, |_| {
                (b"n,,".to_vec(), client.client_nonce.clone())
            });
            assert_eq!(step, Step::Failure(SaslFailure::NotAuthorized));
        }
    }

    #[test]
    fn bad_channel_binding_fails() {
        for (mech, hash) in scram_mechs() {
            let password = random_password();
            let store = store_with("juliet", Credentials::derive(&password, 64));
            let client = Client::new(hash, "n,,", "juliet");
            for cbind in [&b"y,,"[..], b"p=tls-unique,,", b"n,a=juliet,", b""] {
                let (step, _) = run(mech, &store, &client, &password, |sf| {
                    (cbind.to_vec(), sf.nonce.clone())
                });
                assert_eq!(step, Step::Failure(SaslFailure::NotAuthorized), "{cbind:?}");
            }
        }
    }

    #[test]
    fn tampered_proof_fails() {
        let password = random_password();
        let store = store_with("juliet", Credentials::derive(&password, 64));
        let client = Client::new(ScramHash::Sha256, "n,,", "juliet");
        let (mut session, step) = SaslSession::start(
            Mechanism::ScramSha256,
            DOMAIN,
            Some(&client.first()),
            &store,
        );
        let sf = client.parse_server_first(&challenge(step));
        let (last, _) = client.last(&sf, &password, b"n,,", &sf.nonce);
        let text = String::from_utf8(last).unwrap();
        let (head, proof) = text.rsplit_once(",p=").unwrap();
        let mut proof = B64.decode(proof).unwrap();
        proof[0] ^= 1;
        let tampered = format!("{head},p={}", B64.encode(&proof));
        assert_eq!(
            session.step(tampered.as_bytes(), &store),
            Step::Failure(SaslFailure::NotAuthorized)
        );
        // A proof of the wrong length is malformed.
        let (mut session, step) = SaslSession::start(
            Mechanism::ScramSha256,
            DOMAIN,
            Some(&client.first()),
            &store,
        );
        let sf = client.parse_server_first(&challenge(step));
        let short = format!("c=biws,r={},p={}", sf.nonce, B64.encode([0u8; 20]));
        assert_eq!(
            session.step(short.as_bytes(), &store),
            Step::Failure(SaslFailure::MalformedRequest)
        );
    }

    #[test]
    fn final_message_with_extension_is_accepted() {
        let password = random_password();
        let store = store_with("juliet", Credentials::derive(&password, 64));
        let client = Client::new(ScramHash::Sha256, "n,,", "juliet");
        let (mut session, step) = SaslSession::start(
            Mechanism::ScramSha256,
            DOMAIN,
            Some(&client.first()),
            &store,
        );
        let sf = client.parse_server_first(&challenge(step));
        // Build client-final by hand with an extension before the proof.
        let salted = salted_password(
            ScramHash::Sha256,
            password.as_bytes(),
            &sf.salt,
            sf.iterations,
        );
        let client_key = hmac(ScramHash::Sha256, &salted, b"Client Key");
        let stored_key = h(ScramHash::Sha256, &client_key);
        let without_proof = format!("c=biws,r={},x=ext", sf.nonce);
        let auth = format!("{},{},{}", client.bare, sf.raw, without_proof);
        let sig = hmac(ScramHash::Sha256, &stored_key, auth.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        let last = format!("{without_proof},p={}", B64.encode(proof));
        assert!(matches!(
            session.step(last.as_bytes(), &store),
            Step::Success { .. }
        ));
    }

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
    fn malformed_client_first() {
        let store = store_with("user", Credentials::derive("pw", 16));
        let cases: &[&[u8]] = &[
            b"",
            b"n",
            b"n,",
            b"n,,",
            b"x,,n=user,r=abc",
            b"p=tls-unique,,n=user,r=abc",
            b"n,b=user,n=user,r=abc",
            b"n,a=,n=user,r=abc",
            b"n,,m=ext,n=user,r=abc",
            b"n,,n=,r=abc",
            b"n,,n=user",
            b"n,,n=user,",
            b"n,,n=user,r=",
            b"n,,r=abc,n=user",
            b"n,,user,r=abc",
            b"n,,n=user,abc",
            b"n,,n=us=er,r=abc",
            b"n,,n=us=2,r=abc",
            b"n,,n=us=2c,r=abc",
            b"n,,n=user=,r=abc",
            b"n,,n=us\0er,r=abc",
            b"n,,n=user,r=ab\x7fc",
            b"n,,n=user,r=ab c",
            b"n,,n=user,r=abc,m=x",
            b"n,,n=user,r=abc,1=x",
            b"n,,n=user,r=abc,x",
            b"n,,n=\xff\xfe,r=abc",
        ];
        for case in cases {
            for mech in [Mechanism::ScramSha256, Mechanism::ScramSha1] {
                let (session, step) = SaslSession::start(mech, DOMAIN, Some(case), &store);
                assert_eq!(
                    step,
                    Step::Failure(SaslFailure::MalformedRequest),
                    "{}",
                    String::from_utf8_lossy(case)
                );
                assert!(session.is_done());
            }
        }
        let long = format!("n,,n=user,r={}", "a".repeat(MAX_MESSAGE_LEN));
        let (_, step) = SaslSession::start(
            Mechanism::ScramSha256,
            DOMAIN,
            Some(long.as_bytes()),
            &store,
        );
        assert_eq!(step, Step::Failure(SaslFailure::MalformedRequest));
    }

    #[test]
    fn malformed_client_final() {
        let store = store_with("user", Credentials::derive("pw", 16));
        let nonce = "cnonce";
        let full = "cnonceSNONCE";
        let proof = B64.encode([0u8; 32]);
        let cases: Vec<String> = vec![
            String::new(),
            "c=biws".into(),
            format!("c=biws,r={full}"),
            format!("c=biws,p={proof}"),
            format!("r={full},p={proof}"),
            format!("c=biws,r={full},p={proof},x=y"),
            format!("r={full},c=biws,p={proof}"),
            format!("c=biws,r=,p={proof}"),
            format!("c=!!!,r={full},p={proof}"),
            format!("c=biws,r={full},p=!!!"),
            format!("c=biws,r={full},p="),
            format!("c=biws,r={full},7=x,p={proof}"),
            format!("c=biws,r={full},m=x,p={proof}"),
            format!("c=biws,r={full},p={proof}\u{0}"),
            format!("x=biws,r={full},p={proof}"),
            format!("c=biws,x={full},p={proof}"),
            format!("c=biws,r={full},q={proof}"),
            format!("c=biws,r={full},{}", "x=y,".repeat(MAX_MESSAGE_LEN / 4)),
        ];
        for case in &cases {
            let first = format!("n,,n=user,r={nonce}");
            let (mut session, step) = SaslSession::start_with_nonce(
                Mechanism::ScramSha256,
                DOMAIN,
                Some(first.as_bytes()),
                &store,
                "SNONCE",
            );
            assert!(matches!(step, Step::Challenge(_)));
            assert_eq!(
                session.step(case.as_bytes(), &store),
                Step::Failure(SaslFailure::MalformedRequest),
                "{case}"
            );
            assert!(session.is_done());
        }
        // Non-UTF-8.
        let (mut session, _) = SaslSession::start(
            Mechanism::ScramSha1,
            DOMAIN,
            Some(b"n,,n=user,r=abc"),
            &store,
        );
        assert_eq!(
            session.step(b"c=biws,r=\xff,p=AAAA", &store),
            Step::Failure(SaslFailure::MalformedRequest)
        );
    }

    #[test]
    fn malformed_with_unknown_user_is_the_same() {
        let store = Store(HashMap::new());
        let (mut session, step) = SaslSession::start(
            Mechanism::ScramSha256,
            DOMAIN,
            Some(b"n,,n=ghost,r=abc"),
            &store,
        );
        assert!(matches!(step, Step::Challenge(_)));
        assert_eq!(
            session.step(b"c=biws", &store),
            Step::Failure(SaslFailure::MalformedRequest)
        );
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
    fn plain() {
        let password = random_password();
        let store = store_with("juliet", Credentials::derive(&password, 64));
        let ok = |msg: String| {
            let (session, step) =
                SaslSession::start(Mechanism::Plain, DOMAIN, Some(msg.as_bytes()), &store);
            assert!(session.is_done());
            step
        };
        let success = Step::Success {
            username: "juliet".into(),
            additional: Vec::new(),
        };
        assert_eq!(ok(format!("\0juliet\0{password}")), success);
        assert_eq!(
            ok(format!("juliet@example.org\0juliet\0{password}")),
            success
        );
        assert_eq!(ok(format!("juliet\0juliet\0{password}")), success);
        assert_eq!(
            ok(format!("\0juliet\0{password}x")),
            Step::Failure(SaslFailure::NotAuthorized)
        );
        assert_eq!(
            ok(format!("\0romeo\0{password}")),
            Step::Failure(SaslFailure::NotAuthorized)
        );
        assert_eq!(
            ok(format!("romeo@example.org\0juliet\0{password}")),
            Step::Failure(SaslFailure::InvalidAuthzid)
        );
        for bad in [
            String::new(),
            "juliet".into(),
            format!("\0juliet{password}"),
            format!("\0\0{password}"),
            "\0juliet\0".into(),
            format!("\0juliet\0{password}\0"),
            format!("\0\0juliet\0{password}"),
            format!("\0juliet\0{}", "x".repeat(MAX_MESSAGE_LEN)),
        ] {
            assert_eq!(
                ok(bad.clone()),
                Step::Failure(SaslFailure::MalformedRequest),
                "{bad:?}"
            );
        }
        let (_, step) =
            SaslSession::start(Mechanism::Plain, DOMAIN, Some(b"\0juliet\0\xff"), &store);
        assert_eq!(step, Step::Failure(SaslFailure::MalformedRequest));
    }

    #[test]
    fn closure_store() {
        let credentials = Credentials::derive("pw", 16);
        let store = move |name: &str| (name == "juliet").then(|| credentials.clone());
        let (_, step) = SaslSession::start(Mechanism::Plain, DOMAIN, Some(b"\0juliet\0pw"), &store);
        assert!(matches!(step, Step::Success { .. }));
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
        assert_eq!(Mechanism::from_name("SCRAM-SHA-1-PLUS"), None);
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

    #[test]
    fn random_nonces_are_valid_and_fresh() {
        let a = random_nonce();
        assert!(is_valid_nonce(&a));
        assert_eq!(a.len(), 24);
        assert_ne!(a, random_nonce());
    }
}
