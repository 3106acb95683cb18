//! JIDs (RFC 7622) as the server handles them. Typed JIDs come from the
//! `jid` crate (`Jid`, `BareJid`, `FullJid`: parsed, PRECIS-normalised
//! once, so a bare JID cannot be mistaken for a full one); this module adds
//! what the server needs on top.

pub use jid::{BareJid, FullJid, Jid};

/// The bare part of a JID string from the wire or from storage that has not
/// been parsed (`a@b/c` -> `a@b`).
pub fn bare_of(jid: &str) -> &str {
    jid.split_once('/').map(|(b, _)| b).unwrap_or(jid)
}

/// The normalized bare JID of a local account named `username` (a SASL
/// or XEP-0077 username: a localpart, so no `@` or `/`).
pub fn account_jid(username: &str, domain: &str) -> Option<String> {
    if username.is_empty() || username.contains(['@', '/']) {
        return None;
    }
    let jid = BareJid::new(&format!("{username}@{domain}")).ok()?;
    Some(jid.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_of_strips_resource() {
        assert_eq!(bare_of("a@x/r/s"), "a@x");
        assert_eq!(bare_of("a@x"), "a@x");
    }
}
