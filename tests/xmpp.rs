//! Black-box XMPP tests against real `starling serve` processes: the
//! offline-queue promise under `kill -9`, and bad input answered with the
//! right RFC 6120 stream or stanza error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::xmpp::{body_of, stanza_error, RawClient};
use common::{fast_raft, TestCluster};
use starling::xmpp::ns;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn client_addr(c: &TestCluster, id: u64) -> std::net::SocketAddr {
    c.nodes
        .iter()
        .find(|n| n.config.node_id == id)
        .unwrap()
        .config
        .xmpp
        .client_addr
}

/// alice on `sender_node` sends 100 messages to offline bob and waits for
/// the server's XEP-0198 ack; `victim` is killed with SIGKILL; bob logs in
/// on `reader_node` and must get all 100, in order, once, with delay stamps.
async fn offline_survives_kill(
    c: &mut TestCluster,
    sender_node: u64,
    victim: u64,
    reader_node: u64,
) {
    let mut alice =
        RawClient::login(client_addr(c, sender_node), "alice", "pw-alice", "phone").await;
    alice.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    alice
        .expect("sm enabled", |e| e.is("enabled", ns::SM))
        .await;
    let mut batch = String::new();
    for i in 0..100 {
        batch.push_str(&format!(
            "<message to='bob@localhost' type='chat' id='m{i}'><body>msg-{i}</body></message>"
        ));
    }
    batch.push_str("<r xmlns='urn:xmpp:sm:3'/>");
    alice.send(&batch).await;
    // The server's ack: every message handled, i.e. committed to bob's
    // replicated offline queue.
    let a = alice.expect("sm ack", |e| e.is("a", ns::SM)).await;
    assert_eq!(a.attr("h"), Some("100"), "ack {a}");

    c.kill(victim);

    let mut bob = RawClient::login(client_addr(c, reader_node), "bob", "pw-bob", "laptop").await;
    bob.send("<presence/>").await;
    let mut got = Vec::new();
    while got.len() < 100 {
        let el = bob.next().await;
        if el.name() == "message" {
            let delay = el.get_child("delay", ns::DELAY);
            assert!(
                delay.is_some_and(|d| d.attr("stamp").is_some()),
                "no delay stamp: {el}"
            );
            assert!(
                el.get_child("stanza-id", ns::SID)
                    .is_some_and(|s| s.attr("by") == Some("bob@localhost")),
                "no stanza id: {el}"
            );
            got.push(body_of(&el).unwrap_or_default());
        }
    }
    let want: Vec<String> = (0..100).map(|i| format!("msg-{i}")).collect();
    assert_eq!(got, want, "all 100, in order");
    let extra = bob.sync().await;
    assert!(
        extra.iter().all(|e| e.name() != "message"),
        "a message came twice: {extra:?}"
    );
    bob.send("</stream:stream>").await;
    // Delivered messages left the queue: a new login gets nothing.
    let mut bob2 = RawClient::login(client_addr(c, reader_node), "bob", "pw-bob", "tablet").await;
    bob2.send("<presence/>").await;
    let again = bob2.sync().await;
    assert!(
        again.iter().all(|e| e.name() != "message"),
        "delivered messages were delivered again: {again:?}"
    );
}

#[test]
fn offline_messages_survive_kill_of_the_senders_node_and_of_the_leader() {
    rt().block_on(async {
        let mut c = TestCluster::start(3, fast_raft());
        c.wait_leader(1, Duration::from_secs(20)).await;
        for u in ["alice", "bob"] {
            c.create_user(1, u).await.unwrap();
        }
        // 1. The sender's node dies.
        offline_survives_kill(&mut c, 1, 1, 2).await;
        c.start_node(1);
        c.wait_converged(2, &[1, 2, 3], Duration::from_secs(30))
            .await;

        // 2. The raft leader dies (alice is connected to it).
        let leader = c.wait_leader(2, Duration::from_secs(20)).await;
        let other = [1, 2, 3].into_iter().find(|n| *n != leader).unwrap();
        offline_survives_kill(&mut c, leader, leader, other).await;
    });
}

#[test]
fn bad_input_gets_the_rfc_6120_errors() {
    rt().block_on(async {
        let c = TestCluster::start(1, fast_raft());
        c.wait_leader(1, Duration::from_secs(20)).await;
        for u in ["alice", "bob"] {
            c.create_user(1, u).await.unwrap();
        }
        let addr = client_addr(&c, 1);

        // Malformed XML.
        let mut x = RawClient::connect(addr).await;
        x.open().await;
        x.send("<message><body>unclosed</message>").await;
        assert_eq!(x.expect_stream_error().await, "not-well-formed");

        // A billion-laughs document: refused at the DTD, nothing expanded.
        let mut x = RawClient::connect(addr).await;
        x.send("<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;'>]><stream:stream to='localhost' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>").await;
        assert_eq!(x.expect_stream_error().await, "restricted-xml");

        // A wrong content namespace.
        let mut x = RawClient::connect(addr).await;
        x.send("<stream:stream to='localhost' xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>").await;
        assert_eq!(x.expect_stream_error().await, "invalid-namespace");

        // A domain we do not serve.
        let mut x = RawClient::connect(addr).await;
        x.send("<stream:stream to='example.org' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>").await;
        assert_eq!(x.expect_stream_error().await, "host-unknown");

        // A stanza before authentication (and before TLS).
        let mut x = RawClient::connect(addr).await;
        x.open().await;
        x.send("<message to='bob@localhost'><body>hi</body></message>")
            .await;
        assert_eq!(x.expect_stream_error().await, "not-authorized");

        // PLAIN without TLS is refused (TLS required by default).
        let mut x = RawClient::connect(addr).await;
        let f = x.open().await;
        assert!(f
            .get_child("starttls", ns::TLS)
            .is_some_and(|s| s.has_child("required", ns::TLS)));
        assert!(!f.has_child("mechanisms", ns::SASL), "no SASL before TLS: {f}");

        // A wrong password, then a burst: slowed, then refused for a while.
        let mut x = RawClient::connect(addr).await;
        x.open().await;
        x.starttls().await;
        x.open().await;
        let r = x.auth_plain("alice", "wrong").await;
        assert!(r.is("failure", ns::SASL) && r.has_child("not-authorized", ns::SASL), "{r}");
        let mut temporary = false;
        for _ in 0..8 {
            let mut y = RawClient::connect(addr).await;
            y.open().await;
            y.starttls().await;
            y.open().await;
            let r = y.auth_plain("alice", "wrong-again").await;
            assert!(r.is("failure", ns::SASL), "{r}");
            if r.has_child("temporary-auth-failure", ns::SASL) {
                temporary = true;
                break;
            }
        }
        assert!(temporary, "a burst of wrong passwords must hit the limit");
        // The limit is per account: bob is not locked out by alice's burst.
        let _bob = RawClient::login(addr, "bob", "pw-bob", "ok").await;

        // An oversized stanza (the default limit is 256 KiB).
        let mut x = RawClient::login(addr, "bob", "pw-bob", "big").await;
        let big = format!(
            "<message to='alice@localhost'><body>{}</body></message>",
            "a".repeat(300 * 1024)
        );
        let _ = x.try_send(big.as_bytes()).await;
        assert_eq!(x.expect_stream_error().await, "policy-violation");

        // A spoofed `from`.
        let mut x = RawClient::login(addr, "bob", "pw-bob", "spoof").await;
        x.send("<message from='alice@localhost/phone' to='bob@localhost'><body>hi</body></message>").await;
        assert_eq!(x.expect_stream_error().await, "invalid-from");

        // A message to an account that does not exist.
        let mut x = RawClient::login(addr, "bob", "pw-bob", "nobody").await;
        x.send("<message to='nobody@localhost' id='n1' type='chat'><body>hi</body></message>")
            .await;
        let err = x.expect("bounce", |e| e.attr("id") == Some("n1")).await;
        assert_eq!(stanza_error(&err).as_deref(), Some("service-unavailable"), "{err}");
        // An unknown iq payload namespace (RFC 6120 §8.4).
        x.send("<iq type='get' id='q1'><query xmlns='urn:example:nothing'/></iq>")
            .await;
        let err = x.expect("iq error", |e| e.attr("id") == Some("q1")).await;
        assert_eq!(stanza_error(&err).as_deref(), Some("service-unavailable"), "{err}");
        // A malformed JID.
        x.send("<message to='a@b@c' id='j1'><body>hi</body></message>")
            .await;
        let err = x.expect("jid error", |e| e.attr("id") == Some("j1")).await;
        assert_eq!(stanza_error(&err).as_deref(), Some("jid-malformed"), "{err}");
        // An unknown top-level element.
        x.send("<foo xmlns='urn:example'/>").await;
        assert_eq!(x.expect_stream_error().await, "unsupported-stanza-type");

        // A second bind of the same full JID ends the older session.
        // (alice's account is locked for a minute by the burst above.)
        let mut old = RawClient::login(addr, "bob", "pw-bob", "same").await;
        old.sync().await;
        let mut new = RawClient::login(addr, "bob", "pw-bob", "same").await;
        assert_eq!(old.expect_stream_error().await, "conflict");
        // The new session works.
        new.sync().await;
    });
}
