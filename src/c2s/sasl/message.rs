//! Parsers of the SCRAM client messages (RFC 5802 §5.1 and §7):
//! client-first and client-final, saslname unescaping, nonce and extension
//! syntax. Shared by SCRAM-SHA-1 and SCRAM-SHA-256.
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use super::exchange::{SaslFailure, MAX_MESSAGE_LEN};

/// RFC 5802 §6 / §7 `gs2-cbind-flag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CbFlag {
    /// "n": the client does not support channel binding.
    No,
    /// "y": the client supports it but thinks the server does not.
    Supported,
    /// "p=<cb-name>": the client requires channel binding of this type.
    Required(String),
}

pub(super) struct ClientFirst {
    pub(super) cbind: CbFlag,
    pub(super) gs2_header: String,
    pub(super) authzid: Option<String>,
    pub(super) username: String,
    pub(super) client_nonce: String,
    pub(super) bare: String,
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
pub(super) fn parse_client_first(data: &[u8]) -> Result<ClientFirst, SaslFailure> {
    use SaslFailure::MalformedRequest;
    if data.len() > MAX_MESSAGE_LEN {
        return Err(MalformedRequest);
    }
    let text = std::str::from_utf8(data).map_err(|_| MalformedRequest)?;
    let (cbind_flag, rest) = text.split_once(',').ok_or(MalformedRequest)?;
    let cbind = match cbind_flag {
        "n" => CbFlag::No,
        "y" => CbFlag::Supported,
        // `cb-name = 1*(ALPHA / DIGIT / "." / "-")`; whether it fits the
        // mechanism and the connection is the exchange's decision.
        _ => match cbind_flag.strip_prefix("p=") {
            Some(name)
                if !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') =>
            {
                CbFlag::Required(name.to_owned())
            }
            _ => return Err(MalformedRequest),
        },
    };
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
        cbind,
        gs2_header,
        authzid,
        username,
        client_nonce: client_nonce.to_owned(),
        bare: bare.to_owned(),
    })
}

pub(super) struct ClientFinal<'a> {
    pub(super) channel_binding: Vec<u8>,
    pub(super) nonce: &'a str,
    pub(super) proof: Vec<u8>,
    pub(super) without_proof: &'a str,
}

/// RFC 5802 §7:
/// ```text
/// client-final-message-without-proof = channel-binding "," nonce ["," extensions]
/// client-final-message = client-final-message-without-proof "," proof
/// channel-binding = "c=" base64
/// proof           = "p=" base64
/// ```
pub(super) fn parse_client_final(data: &[u8]) -> Result<ClientFinal<'_>, SaslFailure> {
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
pub(super) fn is_valid_nonce(nonce: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use starling_raft::credentials::Credentials;
    use std::collections::HashMap;

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
            b"p=,,n=user,r=abc",
            b"p=tls_unique,,n=user,r=abc",
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
}
