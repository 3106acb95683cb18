//! Identifiers the server makes up: XEP-0359 stanza-ids, XEP-0198 SM ids,
//! RFC 6120 §4.7.3 stream ids and §7.6 server-generated resources.

/// A random identifier (128 bits, URL-safe base64), for stanza ids
/// (XEP-0359), SM ids and server-made resources.
pub fn random_id() -> String {
    use base64::Engine;
    let bytes: [u8; 16] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
