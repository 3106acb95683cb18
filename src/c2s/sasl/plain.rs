//! PLAIN (RFC 4616), server side: the message parser and the password
//! check against the stored SCRAM keys (the password itself is never
//! stored). Only offered over TLS (RFC 4616 §1 and §6).
use starling_raft::credentials::ScramHash;

use super::exchange::{
    authzid_matches, CredentialStore, Definition, Exchange, SaslFailure, Step, MAX_MESSAGE_LEN,
};
use super::fake::fake_keys;

/// PLAIN's entry in the mechanism list.
pub(super) const PLAIN: Definition = Definition {
    name: "PLAIN",
    requires_tls: true,
    channel_binding: false,
    start: |context| {
        Box::new(Plain {
            domain: context.domain,
            authcid: None,
        })
    },
    peek_authcid: |initial| parse_plain(initial).ok().map(|m| m.authcid.to_owned()),
};

/// One PLAIN exchange: a single client message, then success or failure.
struct Plain {
    domain: String,
    authcid: Option<String>,
}

impl Exchange for Plain {
    fn respond(&mut self, data: &[u8], store: &dyn CredentialStore) -> Step {
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

    fn authcid(&self) -> Option<&str> {
        self.authcid.as_deref()
    }

    fn state(&self) -> &'static str {
        "awaiting-first"
    }
}

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

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use starling_raft::credentials::Credentials;

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
}
