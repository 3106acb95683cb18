//! SCRAM-SHA-1 (RFC 5802) and SCRAM-SHA-256 (RFC 7677), server side, and
//! their channel-binding -PLUS variants (RFC 5802 §6): server-first from
//! the stored keys (or fake ones for an unknown user), then the channel
//! binding and the proof checked in constant time and the server signature
//! from the ServerKey. The client messages are parsed in
//! [`super::message`]; the channel-binding data comes from the connection
//! ([`super::binding`]).
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rand::RngCore;
use starling_raft::credentials::{h, hmac, ScramHash, ScramKeys};
use subtle::ConstantTimeEq;

use super::binding::{CbType, ChannelBindings};
use super::exchange::{
    authzid_matches, Context, CredentialStore, Definition, Exchange, SaslFailure, Step,
};
use super::fake::fake_keys;
use super::message::{parse_client_final, parse_client_first, CbFlag};

/// Length of the server part of the SCRAM nonce, in random bytes (encoded
/// as base64, so 24 characters).
const SERVER_NONCE_BYTES: usize = 18;

/// SCRAM-SHA-256-PLUS's entry in the mechanism list (RFC 7677 §3).
pub(super) const SCRAM_SHA_256_PLUS: Definition = Definition {
    name: "SCRAM-SHA-256-PLUS",
    requires_tls: false,
    channel_binding: true,
    start: |context| Box::new(Scram::new(ScramHash::Sha256, true, context)),
    peek_authcid,
};

/// SCRAM-SHA-1-PLUS's entry in the mechanism list (RFC 5802 §4).
pub(super) const SCRAM_SHA_1_PLUS: Definition = Definition {
    name: "SCRAM-SHA-1-PLUS",
    requires_tls: false,
    channel_binding: true,
    start: |context| Box::new(Scram::new(ScramHash::Sha1, true, context)),
    peek_authcid,
};

/// SCRAM-SHA-256's entry in the mechanism list.
pub(super) const SCRAM_SHA_256: Definition = Definition {
    name: "SCRAM-SHA-256",
    requires_tls: false,
    channel_binding: false,
    start: |context| Box::new(Scram::new(ScramHash::Sha256, false, context)),
    peek_authcid,
};

/// SCRAM-SHA-1's entry in the mechanism list.
pub(super) const SCRAM_SHA_1: Definition = Definition {
    name: "SCRAM-SHA-1",
    requires_tls: false,
    channel_binding: false,
    start: |context| Box::new(Scram::new(ScramHash::Sha1, false, context)),
    peek_authcid,
};

fn peek_authcid(initial: &[u8]) -> Option<String> {
    parse_client_first(initial).ok().map(|f| f.username)
}

/// One SCRAM exchange: client-first, server-first, client-final,
/// server-final.
struct Scram {
    hash: ScramHash,
    /// The -PLUS variant: channel binding required.
    plus: bool,
    /// The connection's channel-binding data (empty without TLS).
    bindings: ChannelBindings,
    domain: String,
    /// Server nonce to use instead of a random one (test vectors).
    server_nonce: Option<String>,
    authcid: Option<String>,
    state: State,
}

enum State {
    /// Waiting for client-first.
    First,
    /// Server-first was sent; waiting for client-final.
    Final(Box<ScramPending>),
    /// Success or failure was returned.
    Done,
}

struct ScramPending {
    hash: ScramHash,
    username: String,
    /// What client-final's `c=` must decode to: the gs2-header exactly as
    /// the client sent it (e.g. `n,,`), followed by the channel-binding
    /// data for `p=`.
    cbind_input: Vec<u8>,
    client_first_bare: String,
    server_first: String,
    /// Client nonce followed by server nonce.
    nonce: String,
    keys: ScramKeys,
    /// False when `keys` are fake (unknown user): the exchange runs to the
    /// end and then fails with not-authorized.
    known: bool,
}

impl Exchange for Scram {
    fn respond(&mut self, data: &[u8], store: &dyn CredentialStore) -> Step {
        match std::mem::replace(&mut self.state, State::Done) {
            State::First => self.first(data, store),
            State::Final(pending) => finish_scram(&pending, data),
            State::Done => Step::Failure(SaslFailure::MalformedRequest),
        }
    }

    fn authcid(&self) -> Option<&str> {
        self.authcid.as_deref()
    }

    fn state(&self) -> &'static str {
        match self.state {
            State::First => "awaiting-first",
            State::Final(_) => "awaiting-client-final",
            State::Done => "done",
        }
    }
}

impl Scram {
    fn new(hash: ScramHash, plus: bool, context: Context) -> Self {
        Scram {
            hash,
            plus,
            bindings: context.bindings,
            domain: context.domain,
            server_nonce: context.server_nonce,
            authcid: None,
            state: State::First,
        }
    }

    fn first(&mut self, data: &[u8], store: &dyn CredentialStore) -> Step {
        let hash = self.hash;
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
        let cb_data = match self.channel_binding_data(&first.cbind) {
            Ok(data) => data,
            Err(failure) => return Step::Failure(failure),
        };
        let mut cbind_input = first.gs2_header.into_bytes();
        cbind_input.extend_from_slice(cb_data);
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
        self.state = State::Final(Box::new(ScramPending {
            hash,
            username: first.username,
            cbind_input,
            client_first_bare: first.bare,
            server_first,
            nonce,
            keys,
            known,
        }));
        Step::Challenge(challenge)
    }

    /// The channel-binding data the client's gs2-cbind-flag asks for, if
    /// the flag fits the mechanism and the connection.
    ///
    /// # The rule for "y" and "n" (decided here)
    ///
    /// RFC 5802 gives "y" to a client that supports channel binding but
    /// thinks the server does not (§5.1, §7), and §6 says: "If the flag
    /// is set to "y" and the server supports channel binding, the server
    /// MUST fail authentication. This is because if the client sets the channel
    /// binding flag to "y", then the client must have believed that the
    /// server did not support channel binding -- if the server did in fact
    /// support channel binding, then this is an indication that there has
    /// been a downgrade attack (e.g., an attacker changed the server's
    /// mechanism list to exclude the -PLUS suffixed SCRAM mechanism
    /// name(s))."
    ///
    /// "Supports" is judged per connection, by what this server offered on
    /// it: the -PLUS mechanisms and the XEP-0440 types are advertised
    /// exactly when the connection has channel-binding data (never on
    /// plaintext, nor on TLS 1.2 with a certificate RFC 5929 gives no
    /// end-point hash), so "y" is refused exactly there.
    ///
    /// Relaxing "y" for a client that supports none of the advertised
    /// types is not what the XEPs ask for, and the server could not tell
    /// such a client anyway ("y" names no type). XEP-0440 (1.0.0)
    /// §"Business Rules" has the client send "y" only in this case: "If
    /// the client supports channel-binding, but the server announced
    /// neither SASL mechanisms supporting channel-binding nor
    /// channel-binding types (via this specification), it MUST send "y"";
    /// a client that saw them but shares no type with them must abort,
    /// "if tls-server-end-point is also not advertised by the server"
    /// (which Starling advertises wherever RFC 5929 defines it, as
    /// XEP-0440 requires: "Servers MUST implement tls-server-end-point and
    /// enable/advertise it"). Its Security Considerations assume servers
    /// refuse: "the client can't send "y" in the GSS-header, because the
    /// server would then abort the authentication because it advertised
    /// channel-bindings. Sending "n" and continuing without
    /// channel-binding is fine in this case". So a "y" on a connection
    /// where -PLUS was offered always means the client did not see the
    /// offer: the stripped list the flag exists to catch. Prosody
    /// (util/sasl/scram.lua: "y" fails wherever the connection has a
    /// channel-binding handler), ejabberd (xmpp_sasl_scram.erl: "y" fails
    /// on an encrypted stream unless every -PLUS mechanism is disabled)
    /// and Openfire refuse it the same way.
    ///
    /// "n" with a -PLUS mechanism is accepted and runs unbound, as in
    /// Prosody (which only logs "Client unexpectedly doesn't support
    /// channel binding"). XEP-0474 (0.5.0) §"Business Rules", new rule 6,
    /// asks this of a client that "would pick a 'SCRAM-*-PLUS' method, but
    /// none of these announced channel-binding types are supported by it,
    /// it SHOULD continue authentication by sending "n" in the GSS-header"
    /// (and then check the XEP-0474 hash, which Starling does not send
    /// yet). slixmpp 1.8.5 does exactly this where Python's ssl module
    /// has no `tls-exporter` (3.11: `CHANNEL_BINDING_TYPES` is only
    /// `tls-unique`, undefined on TLS 1.3): it picks SCRAM-SHA-256-PLUS
    /// and sends "n,,". Refusing it would protect nothing: the mechanism
    /// name is not covered by the client proof, so an attacker
    /// could as well rename the mechanism to SCRAM-SHA-256, where "n" is
    /// accepted over TLS, and "n" cannot be put in place of a client's
    /// "p=" either, since `c=` carries the gs2-header the client really
    /// sent (checked in [`finish_scram`]).
    fn channel_binding_data(&self, flag: &CbFlag) -> Result<&[u8], SaslFailure> {
        match (flag, self.plus) {
            (CbFlag::Required(name), true) => {
                // RFC 5802 §6: "If the channel binding flag was "p" and the
                // server does not support the indicated channel binding
                // type, then the server MUST fail authentication." (§7's
                // server-error "unsupported-channel-binding-type";
                // RFC 6120 has no such condition: not-authorized.)
                CbType::from_name(name)
                    .and_then(|t| self.bindings.get(t))
                    .ok_or(SaslFailure::NotAuthorized)
            }
            // "p=" asks for channel binding, which only the -PLUS
            // mechanisms do (RFC 5802 §6); "y" with a -PLUS mechanism says
            // the client thinks the server cannot bind while naming the
            // server's binding mechanism. Both contradict themselves.
            (CbFlag::Required(_), false) | (CbFlag::Supported, true) => {
                Err(SaslFailure::MalformedRequest)
            }
            // The downgrade RFC 5802 §6 detects (see above).
            (CbFlag::Supported, false) if !self.bindings.is_empty() => {
                Err(SaslFailure::NotAuthorized)
            }
            // "n" on any SCRAM mechanism (unbound, see above), and "y"
            // where this connection offered no channel binding.
            (CbFlag::No, _) | (CbFlag::Supported, false) => Ok(&[]),
        }
    }
}

fn finish_scram(pending: &ScramPending, data: &[u8]) -> Step {
    let last = match parse_client_final(data) {
        Ok(last) => last,
        Err(failure) => return Step::Failure(failure),
    };
    // RFC 5802 §5.1, "c": "This REQUIRED attribute specifies the base64-
    // encoded GS2 header and channel binding data." The gs2-header must be
    // client-first's, and with "p=" the data must be this connection's: a
    // man in the middle terminates TLS itself, so what its client got is
    // not ours (RFC 5802 §6; compared in constant time).
    let same_binding = last.channel_binding.len() == pending.cbind_input.len()
        && bool::from(last.channel_binding.ct_eq(&pending.cbind_input));
    if !same_binding {
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

fn random_nonce() -> String {
    let mut bytes = [0u8; SERVER_NONCE_BYTES];
    rand::thread_rng().fill_bytes(&mut bytes);
    // Standard base64 without "," (and 18 bytes need no padding).
    B64.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::super::fake::{fake_keys, FAKE_SALT_LEN};
    use super::super::message::is_valid_nonce;
    use super::super::testing::*;
    use super::super::*;
    use super::*;
    use starling_raft::credentials::{salted_password, Credentials, DEFAULT_ITERATIONS};
    use std::collections::HashMap;

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

    fn plus_mechs() -> [(Mechanism, ScramHash); 2] {
        [
            (Mechanism::ScramSha256Plus, ScramHash::Sha256),
            (Mechanism::ScramSha1Plus, ScramHash::Sha1),
        ]
    }

    const EXPORTER: [u8; 32] = [0xe5; 32];
    const END_POINT: [u8; 32] = [0x5e; 32];

    fn tls_bindings() -> ChannelBindings {
        ChannelBindings {
            tls_exporter: Some(EXPORTER.to_vec()),
            tls_server_end_point: Some(END_POINT.to_vec()),
        }
    }

    /// A full exchange on a connection with `bindings`; `cbind` is what
    /// the client puts (base64) in `c=`.
    fn run_bound(
        mech: Mechanism,
        bindings: ChannelBindings,
        client: &Client,
        password: &str,
        cbind: &[u8],
    ) -> (Step, Vec<u8>) {
        let store = store_with("juliet", Credentials::derive(password, 64));
        let (mut session, step) =
            SaslSession::start_bound(mech, DOMAIN, Some(&client.first()), &store, bindings);
        let sf = client.parse_server_first(&challenge(step));
        let (last, expected) = client.last(&sf, password, cbind, &sf.nonce);
        (session.step(&last, &store), expected)
    }

    fn start_step(mech: Mechanism, bindings: ChannelBindings, gs2: &str) -> Step {
        let store = store_with("juliet", Credentials::derive("pw", 16));
        let first = format!("{gs2}n=juliet,r=abc");
        SaslSession::start_bound(mech, DOMAIN, Some(first.as_bytes()), &store, bindings).1
    }

    /// SCRAM-SHA-256-PLUS with tls-exporter, every byte fixed: the client
    /// proof computed here from the password with the RFC 5802 §3 formulas
    /// over `c=base64("p=tls-exporter,," + cb-data)`.
    #[test]
    fn plus_fixed_vector() {
        let store = rfc_store();
        let gs2 = "p=tls-exporter,,";
        let (mut session, step) = SaslSession::start_inner(
            Mechanism::ScramSha256Plus,
            DOMAIN,
            Some(format!("{gs2}n=user,r=rOprNGfwEbeRWgbNEkqO").as_bytes()),
            &store,
            Some("%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".to_owned()),
            Some(tls_bindings()),
        );
        let server_first =
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        assert_eq!(challenge(step), server_first);
        let hash = ScramHash::Sha256;
        let salted = salted_password(
            hash,
            b"pencil",
            &B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap(),
            4096,
        );
        let client_key = hmac(hash, &salted, b"Client Key");
        let mut cbind = gs2.as_bytes().to_vec();
        cbind.extend_from_slice(&EXPORTER);
        let without_proof = format!(
            "c={},r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            B64.encode(&cbind)
        );
        let auth = format!("n=user,r=rOprNGfwEbeRWgbNEkqO,{server_first},{without_proof}");
        let sig = hmac(hash, &h(hash, &client_key), auth.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        let last = format!("{without_proof},p={}", B64.encode(proof));
        let server_sig = hmac(hash, &hmac(hash, &salted, b"Server Key"), auth.as_bytes());
        assert_eq!(
            session.step(last.as_bytes(), &store),
            Step::Success {
                username: "user".into(),
                additional: format!("v={}", B64.encode(server_sig)).into_bytes(),
            }
        );
        // The same exchange with the end-point data in c= fails: it is
        // not the binding the client named.
        let (mut session, step) = SaslSession::start_inner(
            Mechanism::ScramSha256Plus,
            DOMAIN,
            Some(format!("{gs2}n=user,r=rOprNGfwEbeRWgbNEkqO").as_bytes()),
            &store,
            Some("%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".to_owned()),
            Some(tls_bindings()),
        );
        assert_eq!(challenge(step), server_first);
        let tampered = last.replace(
            &B64.encode(&cbind),
            &B64.encode([gs2.as_bytes(), &END_POINT].concat()),
        );
        assert_eq!(
            session.step(tampered.as_bytes(), &store),
            Step::Failure(SaslFailure::NotAuthorized)
        );
    }

    #[test]
    fn plus_succeeds_with_the_connections_binding() {
        for (mech, hash) in plus_mechs() {
            for (cb, data) in [
                ("tls-exporter", EXPORTER),
                ("tls-server-end-point", END_POINT),
            ] {
                let password = random_password();
                let gs2 = format!("p={cb},,");
                let client = Client::new(hash, &gs2, "juliet");
                let cbind = [gs2.as_bytes(), &data].concat();
                let (step, expected) = run_bound(mech, tls_bindings(), &client, &password, &cbind);
                assert_eq!(
                    step,
                    Step::Success {
                        username: "juliet".into(),
                        additional: expected
                    },
                    "{mech} {cb}"
                );
            }
        }
    }

    /// A man in the middle terminating TLS has other channel-binding data
    /// than the server: whatever its client binds to does not match.
    #[test]
    fn plus_fails_with_other_binding_data() {
        for (mech, hash) in plus_mechs() {
            let password = random_password();
            let gs2 = "p=tls-exporter,,";
            let client = Client::new(hash, gs2, "juliet");
            let mut other = EXPORTER;
            other[31] ^= 1;
            for cbind in [
                [gs2.as_bytes(), &other].concat(),
                [gs2.as_bytes(), &END_POINT].concat(),
                [gs2.as_bytes(), &EXPORTER[..31]].concat(),
                gs2.as_bytes().to_vec(),
                [b"p=tls-server-end-point,,".as_slice(), &END_POINT].concat(),
            ] {
                let (step, _) = run_bound(mech, tls_bindings(), &client, &password, &cbind);
                assert_eq!(step, Step::Failure(SaslFailure::NotAuthorized), "{mech}");
            }
        }
    }

    /// XEP-0474 rule 6, slixmpp on a Python without `tls-exporter`: a
    /// -PLUS mechanism with "n" runs unbound and logs in; `c=` must then
    /// be the bare "n,," (no binding data, nor another gs2-header).
    #[test]
    fn plus_with_n_flag_logs_in_unbound() {
        for (mech, hash) in plus_mechs() {
            let password = random_password();
            for gs2 in ["n,,", "n,a=juliet@example.org,"] {
                let client = Client::new(hash, gs2, "juliet");
                let (step, expected) =
                    run_bound(mech, tls_bindings(), &client, &password, gs2.as_bytes());
                assert_eq!(
                    step,
                    Step::Success {
                        username: "juliet".into(),
                        additional: expected
                    },
                    "{mech} {gs2}"
                );
            }
            let client = Client::new(hash, "n,,", "juliet");
            for cbind in [
                [b"n,,".as_slice(), &EXPORTER].concat(),
                [b"n,,".as_slice(), &END_POINT].concat(),
                [b"p=tls-exporter,,".as_slice(), &EXPORTER].concat(),
                b"y,,".to_vec(),
            ] {
                let (step, _) = run_bound(mech, tls_bindings(), &client, &password, &cbind);
                assert_eq!(step, Step::Failure(SaslFailure::NotAuthorized), "{mech}");
            }
        }
    }

    #[test]
    fn y_flag_is_a_downgrade_where_plus_is_offered() {
        for (mech, _) in scram_mechs() {
            // RFC 5802 §6: the server supports channel binding here.
            assert_eq!(
                start_step(mech, tls_bindings(), "y,,"),
                Step::Failure(SaslFailure::NotAuthorized),
                "{mech}"
            );
            let only_end_point = ChannelBindings {
                tls_exporter: None,
                tls_server_end_point: Some(END_POINT.to_vec()),
            };
            assert_eq!(
                start_step(mech, only_end_point, "y,a=juliet,"),
                Step::Failure(SaslFailure::NotAuthorized)
            );
            // "n" is fine over TLS, and "y" where no binding is possible.
            assert!(matches!(
                start_step(mech, tls_bindings(), "n,,"),
                Step::Challenge(_)
            ));
            assert!(matches!(
                start_step(mech, ChannelBindings::default(), "y,,"),
                Step::Challenge(_)
            ));
        }
    }

    #[test]
    fn plus_flag_must_fit_the_mechanism_and_connection() {
        for (mech, _) in plus_mechs() {
            // "y" names the server's binding mechanism while saying the
            // server cannot bind.
            for gs2 in ["y,,", "y,a=juliet,"] {
                assert_eq!(
                    start_step(mech, tls_bindings(), gs2),
                    Step::Failure(SaslFailure::MalformedRequest),
                    "{mech} {gs2}"
                );
            }
            // Types the server does not have (RFC 5802 §6).
            let only_end_point = ChannelBindings {
                tls_exporter: None,
                tls_server_end_point: Some(END_POINT.to_vec()),
            };
            for (bindings, gs2) in [
                (tls_bindings(), "p=tls-unique,,"),
                (only_end_point, "p=tls-exporter,,"),
            ] {
                assert_eq!(
                    start_step(mech, bindings, gs2),
                    Step::Failure(SaslFailure::NotAuthorized),
                    "{mech} {gs2}"
                );
            }
            // Not offered without TLS.
            assert_eq!(
                start_step(mech, ChannelBindings::default(), "p=tls-exporter,,"),
                Step::Failure(SaslFailure::InvalidMechanism)
            );
        }
        for (mech, _) in scram_mechs() {
            assert_eq!(
                start_step(mech, tls_bindings(), "p=tls-exporter,,"),
                Step::Failure(SaslFailure::MalformedRequest)
            );
        }
    }

    #[test]
    fn random_nonces_are_valid_and_fresh() {
        let a = random_nonce();
        assert!(is_valid_nonce(&a));
        assert_eq!(a.len(), 24);
        assert_ne!(a, random_nonce());
    }
}
