//! Issue 11 item 3 on a real `starling serve` process over the wire:
//! SCRAM-SHA-256-PLUS and SCRAM-SHA-1-PLUS (RFC 5802 §6) bound to the TLS
//! connection with `tls-exporter` (RFC 9266) and `tls-server-end-point`
//! (RFC 5929 §4), in RFC 6120 SASL and XEP-0388 SASL2; the XEP-0440
//! channel-binding types in the features; a client whose binding data is
//! not the server's (a man in the middle) and a client that says "y" while
//! -PLUS is offered (a stripped mechanism list) are refused; a -PLUS
//! mechanism with "n" (slixmpp without `tls-exporter`, XEP-0474 rule 6)
//! logs in unbound, and "y" where nothing was offered (plaintext) is no
//! downgrade. The rule and its reasons: `channel_binding_data` in
//! src/c2s/sasl/scram.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use base64::Engine;
use common::xmpp::RawClient;
use common::{fast_raft, rt, TestCluster};
use sha2::{Digest, Sha256};
use starling::xmpp::{ns, Element};
use starling_raft::credentials::{h, hmac, salted_password, ScramHash};

const SASL2: &str = "urn:xmpp:sasl:2";
const SASL_CB: &str = "urn:xmpp:sasl-cb:0";
const UA: &str = "<user-agent id='d4565fa7-4d72-4749-b3d3-740edbf87770'/>";

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn unb64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .unwrap()
}

async fn one_node() -> TestCluster {
    one_node_with(|_| {}).await
}

async fn one_node_with(tweak: impl Fn(&mut starling::config::Config)) -> TestCluster {
    let c = TestCluster::start_with(1, fast_raft(), tweak);
    c.wait_leader(1, Duration::from_secs(20)).await;
    c.create_user(1, "alice").await.unwrap();
    c
}

/// A STARTTLS stream; the client and the features after TLS.
async fn tls_stream(addr: std::net::SocketAddr) -> (RawClient, Element) {
    let mut c = RawClient::connect(addr).await;
    c.open().await;
    c.starttls().await;
    let f = c.open().await;
    (c, f)
}

#[derive(Clone, Copy, PartialEq)]
enum Profile {
    /// RFC 6120 §6.
    Legacy,
    /// XEP-0388.
    Sasl2,
}

/// One SCRAM exchange: `mech` with the gs2-header `gs2` and `cb_data`
/// after it in `c=`. Returns the server's last answer (a `<failure/>` may
/// come instead of the challenge); a success's server signature is
/// checked.
#[allow(clippy::too_many_arguments)]
async fn scram(
    c: &mut RawClient,
    profile: Profile,
    mech: &str,
    hash: ScramHash,
    gs2: &str,
    cb_data: &[u8],
    user: &str,
    pw: &str,
) -> Element {
    let cnonce = b64(&rand::random::<[u8; 18]>());
    let first_bare = format!("n={user},r={cnonce}");
    let initial = b64(format!("{gs2}{first_bare}").as_bytes());
    let (xmlns, start) = match profile {
        Profile::Legacy => (
            ns::SASL,
            format!("<auth xmlns='{}' mechanism='{mech}'>{initial}</auth>", ns::SASL),
        ),
        Profile::Sasl2 => (
            SASL2,
            format!(
                "<authenticate xmlns='{SASL2}' mechanism='{mech}'><initial-response>{initial}</initial-response>{UA}</authenticate>"
            ),
        ),
    };
    c.send(&start).await;
    let ch = c.next().await;
    if !ch.is("challenge", xmlns) {
        return ch;
    }
    let server_first = String::from_utf8(unb64(&ch.text())).unwrap();
    let (mut nonce, mut salt, mut iterations) = ("", Vec::new(), 0u32);
    for part in server_first.split(',') {
        if let Some(v) = part.strip_prefix("r=") {
            nonce = v;
        } else if let Some(v) = part.strip_prefix("s=") {
            salt = unb64(v);
        } else if let Some(v) = part.strip_prefix("i=") {
            iterations = v.parse().unwrap();
        }
    }
    assert!(nonce.starts_with(&cnonce), "{server_first}");
    // RFC 5802 §7: c = base64(gs2-header [cbind-data]).
    let cbind = [gs2.as_bytes(), cb_data].concat();
    let without_proof = format!("c={},r={nonce}", b64(&cbind));
    let salted = salted_password(hash, pw.as_bytes(), &salt, iterations);
    let client_key = hmac(hash, &salted, b"Client Key");
    let auth_message = format!("{first_bare},{server_first},{without_proof}");
    let sig = hmac(hash, &h(hash, &client_key), auth_message.as_bytes());
    let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
    c.send(&format!(
        "<response xmlns='{xmlns}'>{}</response>",
        b64(format!("{without_proof},p={}", b64(&proof)).as_bytes())
    ))
    .await;
    let r = c.next().await;
    if r.is("success", xmlns) {
        let data = match profile {
            Profile::Legacy => r.text(),
            Profile::Sasl2 => r.get_child("additional-data", SASL2).unwrap().text(),
        };
        let fin = String::from_utf8(unb64(&data)).unwrap();
        let server_key = hmac(hash, &salted, b"Server Key");
        let want = hmac(hash, &server_key, auth_message.as_bytes());
        assert_eq!(
            unb64(fin.strip_prefix("v=").unwrap()),
            want,
            "server signature"
        );
    }
    r
}

fn condition(el: &Element) -> String {
    assert_eq!(el.name(), "failure", "expected a failure: {el}");
    el.children()
        .find(|c| c.ns() == ns::SASL)
        .map(|c| c.name().to_string())
        .unwrap_or_default()
}

fn mechanisms(f: &Element) -> (Vec<String>, Vec<String>) {
    let names = |el: Option<&Element>| -> Vec<String> {
        el.map(|el| {
            el.children()
                .filter(|m| m.name() == "mechanism")
                .map(|m| m.text())
                .collect()
        })
        .unwrap_or_default()
    };
    (
        names(f.get_child("mechanisms", ns::SASL)),
        names(f.get_child("authentication", SASL2)),
    )
}

/// The -PLUS mechanisms and the XEP-0440 types are offered after TLS, in
/// both profiles, and the client's TLS 1.3 connection has both values.
#[test]
fn plus_mechanisms_and_channel_binding_types_are_advertised_over_tls() {
    rt().block_on(async {
        let c = one_node().await;
        let (cl, f) = tls_stream(c.client_addr(1)).await;
        let (legacy, sasl2) = mechanisms(&f);
        for m in ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256"] {
            assert!(legacy.iter().any(|x| x == m), "{m} in {legacy:?}");
            assert!(sasl2.iter().any(|x| x == m), "{m} in SASL2 {sasl2:?}");
        }
        let cb = f
            .get_child("sasl-channel-binding", SASL_CB)
            .unwrap_or_else(|| panic!("no XEP-0440 feature: {f}"));
        let types: Vec<&str> = cb
            .children()
            .filter(|t| t.name() == "channel-binding")
            .filter_map(|t| t.attr("type"))
            .collect();
        assert_eq!(types, ["tls-exporter", "tls-server-end-point"], "{cb}");
        assert!(
            cl.tls_exporter.is_some(),
            "the test client negotiated TLS 1.3"
        );
    });
}

/// RFC 6120 SASL with SCRAM-SHA-256-PLUS and `tls-exporter`; SASL2 with
/// SCRAM-SHA-1-PLUS and `tls-server-end-point` (SHA-256 of the node's
/// ECDSA-P256-SHA256 certificate, RFC 5929 §4.1) and with
/// SCRAM-SHA-256-PLUS and `tls-exporter`.
#[test]
fn plus_logs_in_with_tls_exporter_and_tls_server_end_point() {
    rt().block_on(async {
        let c = one_node().await;
        let addr = c.client_addr(1);

        let (mut cl, _) = tls_stream(addr).await;
        let exporter = cl.tls_exporter.clone().unwrap();
        let r = scram(
            &mut cl,
            Profile::Legacy,
            "SCRAM-SHA-256-PLUS",
            ScramHash::Sha256,
            "p=tls-exporter,,",
            &exporter,
            "alice",
            "pw-alice",
        )
        .await;
        assert!(r.is("success", ns::SASL), "legacy tls-exporter: {r}");

        let (mut cl, _) = tls_stream(addr).await;
        let end_point = Sha256::digest(cl.server_cert.clone().unwrap()).to_vec();
        let r = scram(
            &mut cl,
            Profile::Sasl2,
            "SCRAM-SHA-1-PLUS",
            ScramHash::Sha1,
            "p=tls-server-end-point,,",
            &end_point,
            "alice",
            "pw-alice",
        )
        .await;
        assert!(r.is("success", SASL2), "SASL2 tls-server-end-point: {r}");

        let (mut cl, _) = tls_stream(addr).await;
        let exporter = cl.tls_exporter.clone().unwrap();
        let r = scram(
            &mut cl,
            Profile::Sasl2,
            "SCRAM-SHA-256-PLUS",
            ScramHash::Sha256,
            "p=tls-exporter,,",
            &exporter,
            "alice",
            "pw-alice",
        )
        .await;
        assert!(r.is("success", SASL2), "SASL2 tls-exporter: {r}");

        let (mut cl, _) = tls_stream(addr).await;
        let end_point = Sha256::digest(cl.server_cert.clone().unwrap()).to_vec();
        let r = scram(
            &mut cl,
            Profile::Legacy,
            "SCRAM-SHA-256-PLUS",
            ScramHash::Sha256,
            "p=tls-server-end-point,,",
            &end_point,
            "alice",
            "pw-alice",
        )
        .await;
        assert!(
            r.is("success", ns::SASL),
            "legacy tls-server-end-point: {r}"
        );
    });
}

/// Channel binding mismatch = downgrade attack detected: a man in the middle
/// terminating TLS gets other exporter values and another certificate than
/// the server's, and the right password does not log its client in.
#[test]
fn another_connections_binding_is_not_authorized() {
    rt().block_on(async {
        let c = one_node().await;
        let addr = c.client_addr(1);
        // The data of another TLS connection to the same server.
        let (other, _) = tls_stream(addr).await;
        let stolen = other.tls_exporter.clone().unwrap();
        for profile in [Profile::Legacy, Profile::Sasl2] {
            let (mut cl, _) = tls_stream(addr).await;
            assert_ne!(cl.tls_exporter.as_ref(), Some(&stolen));
            let r = scram(
                &mut cl,
                profile,
                "SCRAM-SHA-256-PLUS",
                ScramHash::Sha256,
                "p=tls-exporter,,",
                &stolen,
                "alice",
                "pw-alice",
            )
            .await;
            assert_eq!(condition(&r), "not-authorized", "{r}");

            let (mut cl, _) = tls_stream(addr).await;
            let mut end_point = Sha256::digest(cl.server_cert.clone().unwrap()).to_vec();
            end_point[0] ^= 1;
            let r = scram(
                &mut cl,
                profile,
                "SCRAM-SHA-1-PLUS",
                ScramHash::Sha1,
                "p=tls-server-end-point,,",
                &end_point,
                "alice",
                "pw-alice",
            )
            .await;
            assert_eq!(condition(&r), "not-authorized", "{r}");
        }
    });
}

/// RFC 5802 §6: "y" (the client supports channel binding but thinks the
/// server does not) while -PLUS is offered means the list was stripped:
/// refused, with the right password; "n" still logs in.
#[test]
fn y_flag_while_plus_is_offered_is_refused() {
    rt().block_on(async {
        let c = one_node().await;
        let addr = c.client_addr(1);
        for profile in [Profile::Legacy, Profile::Sasl2] {
            for (mech, hash) in [
                ("SCRAM-SHA-256", ScramHash::Sha256),
                ("SCRAM-SHA-1", ScramHash::Sha1),
            ] {
                let (mut cl, _) = tls_stream(addr).await;
                let r = scram(
                    &mut cl, profile, mech, hash, "y,,", b"", "alice", "pw-alice",
                )
                .await;
                assert_eq!(condition(&r), "not-authorized", "{mech}: {r}");
                // The same client without the flag on the same stream.
                let r = scram(
                    &mut cl, profile, mech, hash, "n,,", b"", "alice", "pw-alice",
                )
                .await;
                assert_eq!(r.name(), "success", "{mech} with n: {r}");
            }
        }
    });
}

/// The exchange slixmpp 1.8.5 makes on a Python whose ssl module has no
/// `tls-exporter` (TLS 1.3): it picks SCRAM-SHA-256-PLUS, sends "n,," and
/// `c=biws`. XEP-0474 rule 6 asks a client without a mutual type for
/// exactly that; it logs in, unbound, in both profiles. "y" with a -PLUS
/// mechanism contradicts itself: malformed-request.
#[test]
fn plus_mechanism_with_n_flag_logs_in_unbound() {
    rt().block_on(async {
        let c = one_node().await;
        let addr = c.client_addr(1);
        for profile in [Profile::Legacy, Profile::Sasl2] {
            for (mech, hash) in [
                ("SCRAM-SHA-256-PLUS", ScramHash::Sha256),
                ("SCRAM-SHA-1-PLUS", ScramHash::Sha1),
            ] {
                let (mut cl, _) = tls_stream(addr).await;
                let r = scram(
                    &mut cl, profile, mech, hash, "y,,", b"", "alice", "pw-alice",
                )
                .await;
                assert_eq!(condition(&r), "malformed-request", "{mech} with y: {r}");
                let r = scram(
                    &mut cl, profile, mech, hash, "n,,", b"", "alice", "pw-alice",
                )
                .await;
                assert_eq!(r.name(), "success", "{mech} with n: {r}");
            }
        }
    });
}

/// RFC 5802 §6 fails "y" only where "the server supports channel
/// binding": on a connection where no -PLUS mechanism and no XEP-0440
/// type was offered (plaintext, allowed here), "y" is what an honest
/// client sends (XEP-0440 §"Business Rules") and logs in.
#[test]
fn y_flag_where_no_channel_binding_is_offered_logs_in() {
    rt().block_on(async {
        let c = one_node_with(|cfg| cfg.xmpp.allow_plaintext = true).await;
        let mut cl = RawClient::connect(c.client_addr(1)).await;
        let f = cl.open().await;
        let (legacy, _) = mechanisms(&f);
        assert!(legacy.iter().any(|m| m == "SCRAM-SHA-256"), "{f}");
        assert!(!legacy.iter().any(|m| m.ends_with("-PLUS")), "{f}");
        assert!(
            f.get_child("sasl-channel-binding", SASL_CB).is_none(),
            "{f}"
        );
        let r = scram(
            &mut cl,
            Profile::Legacy,
            "SCRAM-SHA-256",
            ScramHash::Sha256,
            "y,,",
            b"",
            "alice",
            "pw-alice",
        )
        .await;
        assert!(r.is("success", ns::SASL), "y without -PLUS offered: {r}");
    });
}
