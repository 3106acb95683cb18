//! Issue 11 "Mobile-first", items 1-3, on real `starling serve` processes
//! over the wire: XEP-0388 SASL2 (SCRAM and PLAIN, failures, abort, the
//! same throttling and freshness gate as RFC 6120 SASL, no stream restart),
//! XEP-0386 Bind 2 with inline XEP-0198, carbons and CSI, and XEP-0198
//! resumption inline in `<authenticate/>`, on the same node and on another
//! one (what the client had not acknowledged comes again, with the same
//! stanza ids, and nothing twice), failed inline resumption then Bind 2.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use base64::Engine;
use common::xmpp::{body_of, chat, read_counting, send_acked, RawClient, WAIT};
use common::{ctl, fast_raft, rt, TestCluster};
use starling::xmpp::{ns, Element};
use starling_raft::credentials::{h, hmac, salted_password, ScramHash};

const SASL2: &str = "urn:xmpp:sasl:2";
const BIND2: &str = "urn:xmpp:bind:0";

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn unb64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .unwrap()
}

fn plain(user: &str, pw: &str) -> String {
    b64(format!("\0{user}\0{pw}").as_bytes())
}

const UA: &str = "<user-agent id='d4565fa7-4d72-4749-b3d3-740edbf87770'>\
                  <software>sasl2-test</software><device>CI</device></user-agent>";

/// A TLS stream at `addr`; returns it with the features after TLS.
async fn tls_stream(addr: std::net::SocketAddr) -> (RawClient, Element) {
    start_tls(RawClient::connect(addr).await).await
}

/// An address the server limits (127.0.0.1 is exempt by default).
const GUESSER: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 7));

async fn tls_stream_from_guesser(addr: std::net::SocketAddr) -> (RawClient, Element) {
    start_tls(RawClient::connect_from(addr, GUESSER).await.unwrap()).await
}

async fn start_tls(mut c: RawClient) -> (RawClient, Element) {
    let before = c.open().await;
    assert!(
        !before.has_child("authentication", SASL2),
        "SASL2 offered before TLS: {before}"
    );
    c.starttls().await;
    let f = c.open().await;
    (c, f)
}

/// `<authenticate/>` with PLAIN and `inline` (bind, resume); the answer.
async fn auth_plain2(c: &mut RawClient, user: &str, pw: &str, inline: &str) -> Element {
    c.send(&format!(
        "<authenticate xmlns='{SASL2}' mechanism='PLAIN'><initial-response>{}</initial-response>{UA}{inline}</authenticate>",
        plain(user, pw)
    ))
    .await;
    c.next().await
}

/// SCRAM over SASL2; the final answer, whose server signature is checked.
async fn auth_scram2(
    c: &mut RawClient,
    hash: ScramHash,
    user: &str,
    pw: &str,
    inline: &str,
) -> Element {
    let mech = match hash {
        ScramHash::Sha1 => "SCRAM-SHA-1",
        ScramHash::Sha256 => "SCRAM-SHA-256",
    };
    let cnonce = b64(&rand::random::<[u8; 18]>());
    let first_bare = format!("n={user},r={cnonce}");
    c.send(&format!(
        "<authenticate xmlns='{SASL2}' mechanism='{mech}'><initial-response>{}</initial-response>{UA}{inline}</authenticate>",
        b64(format!("n,,{first_bare}").as_bytes())
    ))
    .await;
    let ch = c.next().await;
    assert!(ch.is("challenge", SASL2), "expected a challenge: {ch}");
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
    let without_proof = format!("c=biws,r={nonce}");
    let salted = salted_password(hash, pw.as_bytes(), &salt, iterations);
    let client_key = hmac(hash, &salted, b"Client Key");
    let stored = h(hash, &client_key);
    let auth_message = format!("{first_bare},{server_first},{without_proof}");
    let sig = hmac(hash, &stored, auth_message.as_bytes());
    let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
    c.send(&format!(
        "<response xmlns='{SASL2}'>{}</response>",
        b64(format!("{without_proof},p={}", b64(&proof)).as_bytes())
    ))
    .await;
    let r = c.next().await;
    if r.is("success", SASL2) {
        // RFC 5802 §3: the server proves it knows the keys too.
        let server_key = hmac(hash, &salted, b"Server Key");
        let want = hmac(hash, &server_key, auth_message.as_bytes());
        let data = r
            .get_child("additional-data", SASL2)
            .expect("additional-data");
        let fin = String::from_utf8(unb64(&data.text())).unwrap();
        assert_eq!(
            unb64(fin.strip_prefix("v=").unwrap()),
            want,
            "server signature"
        );
    }
    r
}

fn authz(success: &Element) -> String {
    success
        .get_child("authorization-identifier", SASL2)
        .map(|a| a.text())
        .unwrap_or_else(|| panic!("no authorization-identifier: {success}"))
}

/// The condition of a SASL2 `<failure/>` (in the RFC 6120 namespace).
fn failure_condition(el: &Element) -> String {
    assert!(el.is("failure", SASL2), "expected a SASL2 failure: {el}");
    el.children()
        .find(|c| c.ns() == ns::SASL)
        .map(|c| c.name().to_string())
        .unwrap_or_else(|| panic!("no RFC 6120 condition: {el}"))
}

async fn no_message_within(c: &mut RawClient, within: Duration) {
    if let Ok(el) = tokio::time::timeout(within, async {
        loop {
            let el = c.next().await;
            if el.name() == "message" {
                return el;
            }
        }
    })
    .await
    {
        panic!("unexpected message: {el}");
    }
}

async fn one_node() -> TestCluster {
    let c = TestCluster::start_with(1, fast_raft(), |cfg| {
        cfg.xmpp.max_stanzas_per_second = 10_000;
    });
    c.wait_leader(1, Duration::from_secs(20)).await;
    for u in ["alice", "bob"] {
        c.create_user(1, u).await.unwrap();
    }
    c
}

/// A Bind 2 session of `user` (inline SM, resumable) at `addr`: the client,
/// its full JID and the SM id.
async fn bind2_login(
    addr: std::net::SocketAddr,
    user: &str,
    tag: &str,
) -> (RawClient, String, String) {
    let (mut c, _) = tls_stream(addr).await;
    let s = auth_plain2(
        &mut c,
        user,
        &format!("pw-{user}"),
        &format!(
            "<bind xmlns='{BIND2}'><tag>{tag}</tag><enable xmlns='urn:xmpp:sm:3' resume='true'/></bind>"
        ),
    )
    .await;
    assert!(s.is("success", SASL2), "{s}");
    let full = authz(&s);
    let enabled = s
        .get_child("bound", BIND2)
        .and_then(|b| b.get_child("enabled", ns::SM))
        .unwrap_or_else(|| panic!("no <enabled/> in <bound/>: {s}"));
    let previd = enabled.attr("id").unwrap().to_string();
    let f = c.next().await;
    assert!(f.is("features", ns::STREAM), "features after success: {f}");
    c.jid = full.clone();
    (c, full, previd)
}

/// Item 1: SASL2 is offered after TLS, next to RFC 6120 SASL, with its
/// inline features; SCRAM-SHA-256, SCRAM-SHA-1 and PLAIN log in with no
/// stream restart (features follow `<success/>` at once, and a legacy
/// bind works on the same stream); a wrong password is `not-authorized`
/// and the stream stays usable; `<abort/>` is `aborted`.
#[test]
fn sasl2_logs_in_with_scram_and_plain_and_fails_with_rfc_6120_conditions() {
    rt().block_on(async {
        let c = one_node().await;
        let addr = c.client_addr(1);

        let (mut cl, f) = tls_stream(addr).await;
        assert!(f.has_child("mechanisms", ns::SASL), "legacy SASL kept: {f}");
        let a = f.get_child("authentication", SASL2).expect("SASL2 offered");
        let mechs: Vec<String> = a.children().filter(|m| m.name() == "mechanism").map(|m| m.text()).collect();
        for m in ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"] {
            assert!(mechs.iter().any(|x| x == m), "{m} in {mechs:?}");
        }
        let inline = a.get_child("inline", SASL2).expect("inline");
        assert!(inline.has_child("sm", ns::SM), "{a}");
        let vars: Vec<&str> = inline
            .get_child("bind", BIND2)
            .and_then(|b| b.get_child("inline", BIND2))
            .expect("bind inline")
            .children()
            .filter_map(|f| f.attr("var"))
            .collect();
        for v in [ns::SM, ns::CARBONS, ns::CSI] {
            assert!(vars.contains(&v), "{v} in {vars:?}");
        }

        // SCRAM-SHA-256: a wrong password first, then the right one on the
        // same stream.
        let r = auth_scram2(&mut cl, ScramHash::Sha256, "alice", "wrong", "").await;
        assert_eq!(failure_condition(&r), "not-authorized");
        let s = auth_scram2(&mut cl, ScramHash::Sha256, "alice", "pw-alice", "").await;
        assert!(s.is("success", SASL2), "{s}");
        assert_eq!(authz(&s), "alice@localhost", "bare JID without a bind");
        // No stream restart: the authenticated stream's features at once.
        let f = cl.next().await;
        assert!(f.is("features", ns::STREAM), "{f}");
        assert!(f.has_child("bind", ns::BIND), "{f}");
        assert!(!f.has_child("authentication", SASL2), "{f}");
        let b = cl.bind(Some("desk")).await;
        assert_eq!(b.attr("type"), Some("result"), "{b}");
        cl.sync().await;
        // §"Multiple Authentication": no second one on the stream.
        cl.send(&format!("<authenticate xmlns='{SASL2}' mechanism='PLAIN'/>"))
            .await;
        cl.expect_stream_error().await;

        // SCRAM-SHA-1.
        let (mut cl, _) = tls_stream(addr).await;
        let s = auth_scram2(&mut cl, ScramHash::Sha1, "bob", "pw-bob", "").await;
        assert!(s.is("success", SASL2), "{s}");
        assert_eq!(authz(&s), "bob@localhost");

        // PLAIN: no additional data. A wrong password, an unknown user.
        let (mut cl, _) = tls_stream(addr).await;
        let r = auth_plain2(&mut cl, "alice", "nope", "").await;
        assert_eq!(failure_condition(&r), "not-authorized");
        let r = auth_plain2(&mut cl, "nobody", "nope", "").await;
        assert_eq!(failure_condition(&r), "not-authorized");
        let s = auth_plain2(&mut cl, "alice", "pw-alice", "").await;
        assert!(s.is("success", SASL2), "{s}");
        assert!(!s.has_child("additional-data", SASL2), "{s}");

        // Abort, an unknown mechanism, bad base64.
        let (mut cl, _) = tls_stream(addr).await;
        cl.send(&format!(
            "<authenticate xmlns='{SASL2}' mechanism='SCRAM-SHA-256'/>"
        ))
        .await;
        let ch = cl.next().await;
        assert!(ch.is("challenge", SASL2), "{ch}");
        cl.send(&format!("<abort xmlns='{SASL2}'/>")).await;
        assert_eq!(failure_condition(&cl.next().await), "aborted");
        cl.send(&format!("<authenticate xmlns='{SASL2}' mechanism='X-NOPE'/>"))
            .await;
        assert_eq!(failure_condition(&cl.next().await), "invalid-mechanism");
        cl.send(&format!(
            "<authenticate xmlns='{SASL2}' mechanism='PLAIN'><initial-response>!!</initial-response></authenticate>"
        ))
        .await;
        assert_eq!(failure_condition(&cl.next().await), "incorrect-encoding");
    });
}

/// Item 1: a SASL2 failure counts as a login failure for the address's
/// throttling, as RFC 6120 SASL's do: the address is blocked
/// (`temporary-auth-failure`) for both profiles, even with the right
/// password.
#[test]
fn sasl2_failures_count_toward_the_address_block() {
    rt().block_on(async {
        let c = TestCluster::start_with(1, fast_raft(), |cfg| {
            cfg.xmpp.auth_failures_per_address = 4;
        });
        c.wait_leader(1, Duration::from_secs(20)).await;
        c.create_user(1, "alice").await.unwrap();
        let addr = c.client_addr(1);
        let mut blocked = false;
        for _ in 0..8 {
            let (mut cl, _) = tls_stream_from_guesser(addr).await;
            let r = auth_plain2(&mut cl, "alice", "guess", "").await;
            let cond = failure_condition(&r);
            if cond == "temporary-auth-failure" {
                blocked = true;
                break;
            }
            assert_eq!(cond, "not-authorized");
        }
        assert!(blocked, "SASL2 guesses never blocked the address");
        let (mut cl, _) = tls_stream_from_guesser(addr).await;
        let r = auth_plain2(&mut cl, "alice", "pw-alice", "").await;
        assert_eq!(failure_condition(&r), "temporary-auth-failure");
        let r = cl.auth_plain("alice", "pw-alice").await;
        assert!(
            r.is("failure", ns::SASL) && r.has_child("temporary-auth-failure", ns::SASL),
            "RFC 6120 SASL from the blocked address: {r}"
        );
    });
}

/// Item 2: Bind 2 binds `tag/random`, enables XEP-0198 inline (answered in
/// `<bound/>`), carbons (the session gets copies of what its account's
/// other resources send) and CSI; the authorization identifier is the
/// full JID; the features that follow offer no binding.
#[test]
fn bind2_binds_with_the_tag_and_enables_sm_carbons_and_csi_inline() {
    rt().block_on(async {
        let c = one_node().await;
        let addr = c.client_addr(1);
        let (mut cl, _) = tls_stream(addr).await;
        let s = auth_scram2(
            &mut cl,
            ScramHash::Sha256,
            "alice",
            "pw-alice",
            &format!(
                "<bind xmlns='{BIND2}'><tag>Awesome</tag><enable xmlns='urn:xmpp:sm:3'/>\
                 <enable xmlns='urn:xmpp:carbons:2'/><inactive xmlns='urn:xmpp:csi:0'/></bind>"
            ),
        )
        .await;
        assert!(s.is("success", SASL2), "{s}");
        let full = authz(&s);
        assert!(full.starts_with("alice@localhost/Awesome/"), "{full}");
        assert!(full.len() > "alice@localhost/Awesome/".len(), "{full}");
        let bound = s.get_child("bound", BIND2).expect("bound");
        let enabled = bound.get_child("enabled", ns::SM).expect("enabled");
        assert!(enabled.attr("id").is_some(), "{enabled}");
        let f = cl.next().await;
        assert!(f.is("features", ns::STREAM), "{f}");
        assert!(!f.has_child("bind", ns::BIND), "{f}");
        assert!(!f.has_child("sm", ns::SM), "SM is on already: {f}");
        cl.jid = full.clone();

        // Stream management is on: the server counts the presence and the
        // ping. (Carbons go to available resources.)
        cl.send("<presence/>").await;
        cl.sync().await;
        cl.send("<r xmlns='urn:xmpp:sm:3'/>").await;
        let a = cl.expect("ack", |e| e.is("a", ns::SM)).await;
        assert_eq!(a.attr("h"), Some("2"), "{a}");

        // Carbons: what alice sends from another resource comes here.
        let mut desk = RawClient::login(addr, "alice", "pw-alice", "desk").await;
        let mut bob = RawClient::login(addr, "bob", "pw-bob", "phone").await;
        bob.send("<presence/>").await;
        bob.sync().await;
        desk.send(&chat("bob@localhost/phone", "carbon-me")).await;
        let m = bob.expect("message", |e| e.name() == "message").await;
        assert_eq!(body_of(&m).as_deref(), Some("carbon-me"));
        let sent = cl.expect("sent carbon", |e| e.name() == "message").await;
        assert!(sent.has_child("sent", ns::CARBONS), "a sent carbon: {sent}");

        // The session is bound: a direct message to the full JID arrives
        // (CSI only holds presence back).
        bob.send(&chat(&full, "to-bind2")).await;
        let m = cl
            .expect("message", |e| body_of(e).as_deref() == Some("to-bind2"))
            .await;
        assert_eq!(m.attr("to"), Some(full.as_str()));
    });
}

/// Item 3, same node: a session bound with Bind 2 loses its connection;
/// an inline `<resume/>` (with a `<bind/>`, ignored) gets `<success/>`
/// with `<resumed/>` and the full JID, no stream features, then what was
/// not acknowledged, with the same stanza ids.
#[test]
fn inline_resumption_on_the_same_node() {
    rt().block_on(async {
        let c = one_node().await;
        let addr = c.client_addr(1);
        let (mut bob, full, previd) = bind2_login(addr, "bob", "phone").await;
        bob.send("<presence/>").await;
        let before = bob.sync().await;
        let mut n = 1 + before
            .iter()
            .filter(|e| matches!(e.name(), "message" | "presence" | "iq") && e.ns() == ns::CLIENT)
            .count() as u32;
        let mut alice = RawClient::login(addr, "alice", "pw-alice", "desk").await;
        alice.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
        alice.expect("enabled", |e| e.is("enabled", ns::SM)).await;
        let bodies: Vec<String> = (1..=3).map(|i| format!("s{i}")).collect();
        send_acked(&mut alice, "bob@localhost", &bodies, 0).await;
        let got = read_counting(&mut bob, 3, "bob@localhost", false, WAIT, &mut n).await;
        drop(bob);

        let (mut bob, _) = tls_stream(addr).await;
        let h = n - 2;
        let s = auth_plain2(
            &mut bob,
            "bob",
            "pw-bob",
            &format!(
                "<resume xmlns='urn:xmpp:sm:3' h='{h}' previd='{previd}'/>\
                 <bind xmlns='{BIND2}'><tag>other</tag></bind>"
            ),
        )
        .await;
        assert!(s.is("success", SASL2), "{s}");
        let r = s
            .get_child("resumed", ns::SM)
            .unwrap_or_else(|| panic!("no <resumed/>: {s}"));
        assert_eq!(r.attr("previd"), Some(previd.as_str()));
        assert_eq!(r.attr("h"), Some("2"), "bob's presence and ping: {r}");
        assert!(!s.has_child("bound", BIND2), "the bind is ignored: {s}");
        assert_eq!(authz(&s), full);
        let mut m = h;
        let again = read_counting(&mut bob, 2, "bob@localhost", true, WAIT, &mut m).await;
        assert_eq!(again, got[1..].to_vec(), "what bob had not acknowledged");
        bob.send(&format!("<a xmlns='urn:xmpp:sm:3' h='{m}'/>"))
            .await;
        no_message_within(&mut bob, Duration::from_millis(1000)).await;
        send_acked(&mut alice, "bob@localhost", &["s4".to_string()], 3).await;
        let live = read_counting(&mut bob, 1, "bob@localhost", true, WAIT, &mut m).await;
        assert_eq!(live[0].0, "s4");
    });
}

/// Item 3, failed: an inline resumption of a session that does not exist
/// gets `<failed/>` inside `<success/>`, and the `<bind/>` next to it is
/// processed (XEP-0198 §"Failed Resumption"): a new session with SM.
#[test]
fn a_failed_inline_resumption_then_binds() {
    rt().block_on(async {
        let c = one_node().await;
        let addr = c.client_addr(1);
        let (mut bob, _) = tls_stream(addr).await;
        let s = auth_plain2(
            &mut bob,
            "bob",
            "pw-bob",
            &format!(
                "<resume xmlns='urn:xmpp:sm:3' h='3' previd='no-such-session'/>\
                 <bind xmlns='{BIND2}'><tag>phone</tag><enable xmlns='urn:xmpp:sm:3' resume='true'/></bind>"
            ),
        )
        .await;
        assert!(s.is("success", SASL2), "{s}");
        let failed = s.get_child("failed", ns::SM).unwrap_or_else(|| panic!("no <failed/>: {s}"));
        assert!(failed.has_child("item-not-found", ns::STANZA_ERRORS), "{failed}");
        assert!(!s.has_child("resumed", ns::SM), "{s}");
        let bound = s.get_child("bound", BIND2).expect("bound after a failed resumption");
        assert!(bound.has_child("enabled", ns::SM), "{bound}");
        assert!(authz(&s).starts_with("bob@localhost/phone/"), "{s}");
        let f = bob.next().await;
        assert!(f.is("features", ns::STREAM), "{f}");
        bob.sync().await;

        // Without a bind: `<failed/>`, the bare JID, and the client binds.
        let (mut bob, _) = tls_stream(addr).await;
        let s = auth_plain2(
            &mut bob,
            "bob",
            "pw-bob",
            "<resume xmlns='urn:xmpp:sm:3' h='0' previd='gone'/>",
        )
        .await;
        assert!(s.has_child("failed", ns::SM), "{s}");
        assert_eq!(authz(&s), "bob@localhost");
        let f = bob.next().await;
        assert!(f.has_child("bind", ns::BIND), "{f}");
        let b = bob.bind(Some("desk")).await;
        assert_eq!(b.attr("type"), Some("result"), "{b}");
    });
}

/// Item 3 on another node: bob's session (Bind 2, inline SM) is on one
/// node; his phone resumes it inline on another while the old node is
/// alive. The old node hands it over: `<success>` with `<resumed/>`, then
/// exactly what he had not acknowledged, with the same stanza ids, nothing
/// twice, and new messages come live. Then the freshness gate: a node cut
/// off from the cluster answers a SASL2 login `temporary-auth-failure`.
#[test]
fn inline_resumption_on_another_node_and_the_freshness_gate() {
    rt().block_on(async {
        let c = TestCluster::start_with(3, fast_raft(), |cfg| {
            cfg.xmpp.node_dead_after_ms = 1500;
            cfg.xmpp.max_stanzas_per_second = 10_000;
        });
        let leader = c.wait_leader(1, Duration::from_secs(20)).await;
        for u in ["alice", "bob"] {
            c.create_user(1, u).await.unwrap();
        }
        c.wait_converged(1, &[1, 2, 3], Duration::from_secs(20))
            .await;
        let others: Vec<u64> = [1, 2, 3].into_iter().filter(|n| *n != leader).collect();
        let (old_node, new_node) = (others[0], others[1]);

        let (mut bob, full, previd) = bind2_login(c.client_addr(old_node), "bob", "phone").await;
        bob.send("<presence/>").await;
        let before = bob.sync().await;
        let mut n = 1 + before
            .iter()
            .filter(|e| matches!(e.name(), "message" | "presence" | "iq") && e.ns() == ns::CLIENT)
            .count() as u32;
        let mut alice =
            RawClient::login(c.client_addr(new_node), "alice", "pw-alice", "desk").await;
        alice.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
        alice.expect("enabled", |e| e.is("enabled", ns::SM)).await;
        let bodies: Vec<String> = (1..=3).map(|i| format!("m{i}")).collect();
        send_acked(&mut alice, "bob@localhost", &bodies, 0).await;
        let got = read_counting(&mut bob, 3, "bob@localhost", false, WAIT, &mut n).await;
        drop(bob);

        let (mut bob, _) = tls_stream(c.client_addr(new_node)).await;
        let h = n - 2;
        let s = auth_scram2(
            &mut bob,
            ScramHash::Sha256,
            "bob",
            "pw-bob",
            &format!("<resume xmlns='urn:xmpp:sm:3' h='{h}' previd='{previd}'/>"),
        )
        .await;
        assert!(s.is("success", SASL2), "{s}");
        let r = s
            .get_child("resumed", ns::SM)
            .unwrap_or_else(|| panic!("no <resumed/>: {s}"));
        assert_eq!(r.attr("previd"), Some(previd.as_str()));
        assert_eq!(r.attr("h"), Some("2"), "{r}");
        assert_eq!(authz(&s), full);
        let mut m = h;
        let again = read_counting(&mut bob, 2, "bob@localhost", true, WAIT, &mut m).await;
        assert_eq!(
            again,
            got[1..].to_vec(),
            "what bob had not acknowledged, same ids"
        );
        bob.send(&format!("<a xmlns='urn:xmpp:sm:3' h='{m}'/>"))
            .await;
        no_message_within(&mut bob, Duration::from_millis(1500)).await;
        send_acked(&mut alice, "bob@localhost", &["m4".to_string()], 3).await;
        let live = read_counting(&mut bob, 1, "bob@localhost", true, WAIT, &mut m).await;
        assert_eq!(live[0].0, "m4");
        assert!(
            c.log_of(old_node)
                .contains("session handed over to another node"),
            "the old node handed the session over"
        );

        // A FAST token issued on one node logs in on another (the tokens'
        // verifiers are replicated).
        let (token, _) = token_after_password(c.client_addr(old_node), "alice").await;
        c.wait_converged(1, &[1, 2, 3], Duration::from_secs(20))
            .await;
        let (mut cl, _) = tls_stream(c.client_addr(new_node)).await;
        let s = fast_login(&mut cl, "alice", &token, UA_ID, "", "").await;
        assert!(s.is("success", SASL2), "a token from another node: {s}");

        // The freshness gate applies to SASL2: new_node, out of touch with
        // the leader for longer than 5 s, does not check passwords.
        use nix::sys::signal::Signal;
        c.signal(leader, Signal::SIGSTOP);
        c.signal(old_node, Signal::SIGSTOP);
        tokio::time::sleep(Duration::from_secs(6)).await;
        let (mut cl, _) = tls_stream(c.client_addr(new_node)).await;
        let r = auth_plain2(&mut cl, "alice", "pw-alice", "").await;
        c.signal(leader, Signal::SIGCONT);
        c.signal(old_node, Signal::SIGCONT);
        assert_eq!(failure_condition(&r), "temporary-auth-failure", "{r}");
    });
}

const FAST: &str = "urn:xmpp:fast:0";
const UA_ID: &str = "d4565fa7-4d72-4749-b3d3-740edbf87770";

/// The `<token/>` of a success, if any: (token, expiry).
fn token_of(s: &Element) -> Option<(String, String)> {
    let t = s.get_child("token", FAST)?;
    Some((t.attr("token")?.to_string(), t.attr("expiry")?.to_string()))
}

/// A FAST (HT-SHA-256-NONE) login with `token` from user-agent `ua_id`;
/// `fast_attrs` go on `<fast/>`. Returns the answer; on success the
/// server's HT answer is checked.
async fn fast_login(
    c: &mut RawClient,
    user: &str,
    token: &str,
    ua_id: &str,
    fast_attrs: &str,
    inline: &str,
) -> Element {
    let mut msg = format!("{user}\0").into_bytes();
    msg.extend(hmac(ScramHash::Sha256, token.as_bytes(), b"Initiator"));
    c.send(&format!(
        "<authenticate xmlns='{SASL2}' mechanism='HT-SHA-256-NONE'><initial-response>{}</initial-response>\
         <user-agent id='{ua_id}'><software>sasl2-test</software></user-agent>\
         <fast xmlns='{FAST}'{fast_attrs}/>{inline}</authenticate>",
        b64(&msg)
    ))
    .await;
    let r = c.next().await;
    if r.is("success", SASL2) {
        let data = r.get_child("additional-data", SASL2).expect("HT answer");
        let want = hmac(ScramHash::Sha256, token.as_bytes(), b"Responder");
        assert_eq!(unb64(&data.text()), want, "the server's HT answer");
    }
    r
}

/// A password login that asks for a FAST token; returns it.
async fn token_after_password(addr: std::net::SocketAddr, user: &str) -> (String, String) {
    let (mut c, f) = tls_stream(addr).await;
    let fast = f
        .get_child("authentication", SASL2)
        .and_then(|a| a.get_child("inline", SASL2))
        .and_then(|i| i.get_child("fast", FAST))
        .unwrap_or_else(|| panic!("FAST offered inline: {f}"));
    assert_eq!(
        fast.get_child("mechanism", FAST)
            .map(|m| m.text())
            .as_deref(),
        Some("HT-SHA-256-NONE")
    );
    let s = auth_scram2(
        &mut c,
        ScramHash::Sha256,
        user,
        &format!("pw-{user}"),
        &format!("<request-token xmlns='{FAST}' mechanism='HT-SHA-256-NONE'/>"),
    )
    .await;
    assert!(s.is("success", SASL2), "{s}");
    token_of(&s).unwrap_or_else(|| panic!("no token: {s}"))
}

/// Item 4: a token issued after a password login logs in with one
/// message (and Bind 2 inline); each use rotates it (the next token comes
/// in `<success/>`, the used one stays valid until the next is used, then
/// goes); a wrong token, another client's id and an invalidated token are
/// refused.
#[test]
fn fast_tokens_log_in_rotate_and_are_refused_when_wrong_or_invalidated() {
    rt().block_on(async {
        let c = one_node().await;
        let addr = c.client_addr(1);
        let (t1, expiry) = token_after_password(addr, "alice").await;
        assert!(
            expiry.ends_with('Z') && expiry.as_str() > "2026",
            "{expiry}"
        );

        // t1 logs in, with a bind; t2 comes with the success.
        let (mut cl, _) = tls_stream(addr).await;
        let s = fast_login(
            &mut cl,
            "alice",
            &t1,
            UA_ID,
            "",
            &format!("<bind xmlns='{BIND2}'><tag>fast</tag></bind>"),
        )
        .await;
        assert!(s.is("success", SASL2), "{s}");
        assert!(authz(&s).starts_with("alice@localhost/fast/"), "{s}");
        assert!(s.has_child("bound", BIND2), "{s}");
        let (t2, _) = token_of(&s).expect("the rotated token");
        assert_ne!(t1, t2);
        let f = cl.next().await;
        assert!(f.is("features", ns::STREAM), "{f}");
        cl.sync().await;

        // Wrong: another token, another client, a password as a token.
        let (mut cl, _) = tls_stream(addr).await;
        let r = fast_login(&mut cl, "alice", "not-a-token", UA_ID, "", "").await;
        assert_eq!(failure_condition(&r), "not-authorized");
        let other = "0e9f4e63-1b7c-4e8c-9d50-3c6b1c7a2f11";
        let r = fast_login(&mut cl, "alice", &t2, other, "", "").await;
        assert_eq!(failure_condition(&r), "not-authorized");
        let (mut cl, _) = tls_stream(addr).await;
        let r = fast_login(&mut cl, "bob", &t2, UA_ID, "", "").await;
        assert_eq!(failure_condition(&r), "not-authorized");

        // t1 still works (t2 may never have reached the client); t3 then.
        let (mut cl, _) = tls_stream(addr).await;
        let s = fast_login(&mut cl, "alice", &t1, UA_ID, "", "").await;
        assert!(
            s.is("success", SASL2),
            "t1 until a newer token is used: {s}"
        );
        let (t3, _) = token_of(&s).expect("token");
        // t3 used: t1 goes (and t2, replaced by t3 unused).
        let (mut cl, _) = tls_stream(addr).await;
        let s = fast_login(&mut cl, "alice", &t3, UA_ID, "", "").await;
        assert!(s.is("success", SASL2), "{s}");
        let (t4, _) = token_of(&s).expect("token");
        for (name, old) in [("t1", &t1), ("t2", &t2)] {
            let (mut cl, _) = tls_stream(addr).await;
            let r = fast_login(&mut cl, "alice", old, UA_ID, "", "").await;
            assert!(
                r.is("failure", SASL2),
                "{name} after a newer token was used: {r}"
            );
        }

        // Invalidation: success without a new token, then refused.
        let (mut cl, _) = tls_stream(addr).await;
        let s = fast_login(&mut cl, "alice", &t4, UA_ID, " invalidate='true'", "").await;
        assert!(s.is("success", SASL2), "{s}");
        assert!(token_of(&s).is_none(), "no token after invalidate: {s}");
        let (mut cl, _) = tls_stream(addr).await;
        let r = fast_login(&mut cl, "alice", &t4, UA_ID, "", "").await;
        assert!(r.is("failure", SASL2), "an invalidated token: {r}");
    });
}

/// A token issued through the leader logs in at once on a follower, before
/// the follower has learned that the token's write is committed: a miss on
/// a follower asks the leader for a read index and looks again (without
/// it, three runs of this test out of three were refused with
/// `not-authorized`, at the 1st, 5th and 7th token). Ten
/// tokens, each used at once on both followers.
#[test]
fn a_fast_token_works_at_once_on_another_node() {
    rt().block_on(async {
        let c = TestCluster::start_with(3, fast_raft(), |cfg| {
            cfg.xmpp.max_stanzas_per_second = 10_000;
        });
        let leader = c.wait_leader(1, Duration::from_secs(20)).await;
        c.create_user(leader, "alice").await.unwrap();
        c.wait_converged(leader, &[1, 2, 3], Duration::from_secs(20))
            .await;
        let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|n| *n != leader).collect();
        for i in 0..10 {
            let mut ready = Vec::new();
            for f in &followers {
                ready.push((*f, tls_stream(c.client_addr(*f)).await.0));
            }
            let (token, _) = token_after_password(c.client_addr(leader), "alice").await;
            for (f, cl) in &mut ready {
                let s = fast_login(cl, "alice", &token, UA_ID, "", "").await;
                assert!(
                    s.is("success", SASL2),
                    "token {i} issued through node {leader}, refused on node {f}: {s}"
                );
            }
        }
    });
}

/// Item 4: an expired token is refused with `credentials-expired`
/// (XEP-0484 §"Server responsibilities"), and a password login works.
#[test]
fn an_expired_fast_token_is_refused() {
    rt().block_on(async {
        let c = TestCluster::start_with(1, fast_raft(), |cfg| {
            cfg.xmpp.fast_token_lifetime_secs = 1;
        });
        c.wait_leader(1, Duration::from_secs(20)).await;
        c.create_user(1, "alice").await.unwrap();
        let addr = c.client_addr(1);
        let (t1, _) = token_after_password(addr, "alice").await;
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let (mut cl, _) = tls_stream(addr).await;
        let r = fast_login(&mut cl, "alice", &t1, UA_ID, "", "").await;
        assert_eq!(failure_condition(&r), "credentials-expired");
        let s = auth_plain2(&mut cl, "alice", "pw-alice", "").await;
        assert!(s.is("success", SASL2), "{s}");
    });
}

/// Item 4: `starling ctl user tokens list|revoke`: the operator sees an
/// account's tokens per client (never the token) and revokes them; a
/// revoked token is refused; a new password revokes them too.
#[test]
fn ctl_lists_and_revokes_fast_tokens() {
    rt().block_on(async {
        let c = one_node().await;
        let addr = c.client_addr(1);
        let admin = c.admin_addr(1);
        let (t1, _) = token_after_password(addr, "alice").await;
        let (ok, out, err) = ctl(&[
            "--addr", &admin, "--json", "user", "tokens", "list", "alice",
        ]);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let tokens = v["tokens"].as_array().unwrap();
        assert_eq!(tokens.len(), 1, "{out}");
        assert_eq!(tokens[0]["client"], UA_ID);
        assert_eq!(tokens[0]["slot"], "new");
        assert!(!out.contains(&t1), "the token itself is never shown");
        let (ok, out, err) = ctl(&["--addr", &admin, "user", "tokens", "revoke", "alice"]);
        assert!(ok, "{err}");
        assert!(out.contains("revoked 1"), "{out}");
        let (mut cl, _) = tls_stream(addr).await;
        let r = fast_login(&mut cl, "alice", &t1, UA_ID, "", "").await;
        assert_eq!(failure_condition(&r), "not-authorized", "a revoked token");

        // A password change revokes them as well.
        let (t2, _) = token_after_password(addr, "alice").await;
        let (ok, _, err) = common::ctl_as(
            &["--addr", &admin, "user", "passwd", "alice"],
            Some(common::ADMIN_TOKEN),
            "pw-alice\n",
        );
        assert!(ok, "{err}");
        let (mut cl, _) = tls_stream(addr).await;
        let r = fast_login(&mut cl, "alice", &t2, UA_ID, "", "").await;
        assert_eq!(
            failure_condition(&r),
            "not-authorized",
            "after a new password"
        );
    });
}
