//! Black-box XMPP tests against real `starling serve` processes: the
//! offline-queue promise under `kill -9`, and bad input answered with the
//! right RFC 6120 stream or stanza error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::xmpp::{body_of, stanza_error, RawClient};
use common::{fast_raft, rt, TestCluster};
use starling::xmpp::ns;

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
        RawClient::login(c.client_addr(sender_node), "alice", "pw-alice", "phone").await;
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

    let mut bob = RawClient::login(c.client_addr(reader_node), "bob", "pw-bob", "laptop").await;
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
    let mut bob2 = RawClient::login(c.client_addr(reader_node), "bob", "pw-bob", "tablet").await;
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
        // An address is blocked after 6 failed logins (default 20), so the
        // burst below is short.
        let c = TestCluster::start_with(1, fast_raft(), |cfg| {
            cfg.xmpp.auth_failures_per_address = 6;
        });
        c.wait_leader(1, Duration::from_secs(20)).await;
        for u in ["alice", "bob"] {
            c.create_user(1, u).await.unwrap();
        }
        let addr = c.client_addr(1);

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

        // A wrong password, then a burst from the same address (127.0.0.2,
        // not exempt from the limits as 127.0.0.1 is): slowed, then the
        // address is refused for a while (RFC 6120 §6.5.10).
        let guesser: std::net::IpAddr = "127.0.0.2".parse().unwrap();
        let (_x, r) = RawClient::auth_from(addr, guesser, "alice", "wrong").await;
        assert!(r.is("failure", ns::SASL) && r.has_child("not-authorized", ns::SASL), "{r}");
        let mut temporary = false;
        for _ in 0..8 {
            let (_y, r) = RawClient::auth_from(addr, guesser, "alice", "wrong-again").await;
            assert!(r.is("failure", ns::SASL), "{r}");
            if r.has_child("temporary-auth-failure", ns::SASL) {
                temporary = true;
                break;
            }
        }
        assert!(temporary, "a burst of wrong passwords must hit the limit");
        // The address is blocked, never the account: alice logs in from
        // another address, and bob too.
        let other: std::net::IpAddr = "127.0.0.3".parse().unwrap();
        let _alice = RawClient::login_from(addr, other, "alice", "pw-alice", "ok").await;
        let _bob = RawClient::login_from(addr, other, "bob", "pw-bob", "ok").await;

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
        let mut old = RawClient::login(addr, "bob", "pw-bob", "same").await;
        old.sync().await;
        let mut new = RawClient::login(addr, "bob", "pw-bob", "same").await;
        assert_eq!(old.expect_stream_error().await, "conflict");
        // The new session works.
        new.sync().await;
    });
}

#[test]
fn a_dead_nodes_sessions_are_dropped_and_its_users_messages_go_offline() {
    rt().block_on(async {
        let mut c = TestCluster::start_with(3, fast_raft(), |cfg| {
            cfg.xmpp.node_dead_after_ms = 1500;
        });
        c.wait_leader(1, Duration::from_secs(20)).await;
        for u in ["alice", "bob"] {
            c.create_user(1, u).await.unwrap();
        }
        let leader = c.wait_leader(1, Duration::from_secs(20)).await;
        // bob sits on a node that is not the leader (so raft goes on).
        let bobs_node = [1, 2, 3].into_iter().find(|n| *n != leader).unwrap();
        let alices_node = [1, 2, 3].into_iter().find(|n| *n != bobs_node).unwrap();
        let mut bob = RawClient::login(c.client_addr(bobs_node), "bob", "pw-bob", "laptop").await;
        bob.send("<presence/>").await;
        bob.sync().await;
        let mut alice =
            RawClient::login(c.client_addr(alices_node), "alice", "pw-alice", "phone").await;
        alice.send("<presence/>").await;
        alice
            .send("<message to='bob@localhost' type='chat'><body>live</body></message>")
            .await;
        let m = bob.expect("live message", |e| e.name() == "message").await;
        assert_eq!(body_of(&m).as_deref(), Some("live"));
        let live_id = starling::router::stanza_id_of(&m, "bob@localhost").expect("stanza id");

        c.kill(bobs_node);
        // The binding leaves the shared table within seconds.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let s = c.conn(alices_node).await;
            let r = s
                .client
                .clone()
                .list_sessions(s.req(starling_proto::admin::ListSessionsRequest { node_id: 0 }))
                .await
                .unwrap()
                .into_inner();
            if r.sessions.iter().all(|x| !x.full_jid.starts_with("bob@")) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "bob's binding on the dead node is still there: {:?}",
                r.sessions
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for i in 0..5 {
            alice
                .send(&format!(
                    "<message to='bob@localhost' type='chat'><body>while-dead-{i}</body></message>"
                ))
                .await;
        }
        alice.sync().await;
        // bob logs in on a surviving node, with the same resource, at once.
        let mut bob = RawClient::login(c.client_addr(alices_node), "bob", "pw-bob", "laptop").await;
        bob.send("<presence/>").await;
        let mut got = Vec::new();
        while got.len() < 5 {
            let el = bob.next().await;
            if el.name() == "message" {
                assert!(el.has_child("delay", ns::DELAY), "{el}");
                let body = body_of(&el).unwrap_or_default();
                if body == "live" {
                    // Delivery is at least once: if the node died before its
                    // mesh ack reached the sender, the sender stored the
                    // message too. The copy carries the same XEP-0359 id, so
                    // the client can tell it is the same message.
                    assert!(got.is_empty(), "the duplicate comes first: {got:?}");
                    assert_eq!(
                        starling::router::stanza_id_of(&el, "bob@localhost").as_deref(),
                        Some(live_id.as_str()),
                        "a redelivered message keeps its stanza id"
                    );
                    continue;
                }
                got.push(body);
            }
        }
        let want: Vec<String> = (0..5).map(|i| format!("while-dead-{i}")).collect();
        assert_eq!(
            got,
            want,
            "log of node {alices_node}:\n{}",
            c.log_of(alices_node)
        );
    });
}

#[test]
fn stream_management_resumes_and_keeps_unacknowledged_messages() {
    rt().block_on(async {
        let c = TestCluster::start_with(1, fast_raft(), |cfg| {
            cfg.xmpp.sm_resume_timeout_secs = 2;
        });
        c.wait_leader(1, Duration::from_secs(20)).await;
        for u in ["alice", "bob"] {
            c.create_user(1, u).await.unwrap();
        }
        let addr = c.client_addr(1);
        let mut alice = RawClient::login(addr, "alice", "pw-alice", "phone").await;
        let say =
            |n: &str| format!("<message to='bob@localhost' type='chat'><body>{n}</body></message>");

        // 1. Resumption: a message sent while bob's connection is gone is
        //    there when he resumes, as is the one he never acknowledged.
        let mut bob = RawClient::login(addr, "bob", "pw-bob", "laptop").await;
        bob.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
            .await;
        let enabled = bob.expect("enabled", |e| e.is("enabled", ns::SM)).await;
        let id = enabled.attr("id").unwrap().to_string();
        bob.send("<presence/>").await;
        bob.sync().await;
        alice.send(&say("one")).await;
        bob.expect("one", |e| body_of(e).as_deref() == Some("one"))
            .await;
        drop(bob); // the connection dies without a stream close
        tokio::time::sleep(Duration::from_millis(200)).await;
        alice.send(&say("two")).await;
        alice.sync().await;
        let mut bob = RawClient::connect(addr).await;
        bob.open().await;
        bob.starttls().await;
        bob.open().await;
        assert!(bob
            .auth_plain("bob", "pw-bob")
            .await
            .is("success", ns::SASL));
        bob.open().await;
        bob.send(&format!(
            "<resume xmlns='urn:xmpp:sm:3' h='0' previd='{id}'/>"
        ))
        .await;
        let r = bob.expect("resumed", |e| e.is("resumed", ns::SM)).await;
        assert_eq!(r.attr("previd"), Some(id.as_str()));
        let m1 = bob.expect("one again", |e| e.name() == "message").await;
        assert_eq!(body_of(&m1).as_deref(), Some("one"));
        let m2 = bob.expect("two", |e| e.name() == "message").await;
        assert_eq!(body_of(&m2).as_deref(), Some("two"));
        // bob acknowledges the 4 stanzas he got since enabling: his
        // presence echo, the ping result, "one" and "two".
        bob.send("<a xmlns='urn:xmpp:sm:3' h='4'/>").await;
        bob.sync().await;

        // 2. Session lost for good: what bob did not acknowledge goes to
        //    his offline queue, not to /dev/null.
        alice.send(&say("three")).await;
        bob.expect("three", |e| body_of(e).as_deref() == Some("three"))
            .await;
        drop(bob);
        tokio::time::sleep(Duration::from_secs(4)).await; // past the 2 s resume window
        let mut bob = RawClient::login(addr, "bob", "pw-bob", "desk").await;
        bob.send("<presence/>").await;
        let m = bob
            .expect("three from offline", |e| e.name() == "message")
            .await;
        assert_eq!(body_of(&m).as_deref(), Some("three"));
        assert!(m.has_child("delay", ns::DELAY), "{m}");
    });
}

#[test]
fn carbons_and_roster_pushes_reach_every_resource_across_nodes() {
    rt().block_on(async {
        let c = TestCluster::start(3, fast_raft());
        c.wait_leader(1, Duration::from_secs(20)).await;
        for u in ["alice", "bob"] {
            c.create_user(1, u).await.unwrap();
        }
        let mut phone = RawClient::login(c.client_addr(1), "alice", "pw-alice", "phone").await;
        let mut desk = RawClient::login(c.client_addr(2), "alice", "pw-alice", "desk").await;
        let mut bob = RawClient::login(c.client_addr(3), "bob", "pw-bob", "b").await;
        for cl in [&mut phone, &mut desk, &mut bob] {
            cl.send("<iq type='set' id='c1'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
                .await;
            let r = cl.expect("carbons on", |e| e.attr("id") == Some("c1")).await;
            assert_eq!(r.attr("type"), Some("result"), "{r}");
            cl.send("<presence/>").await;
            cl.sync().await;
        }
        // bob -> alice/phone: alice/desk gets a `received` carbon.
        bob.send("<message to='alice@localhost/phone' type='chat'><body>to phone</body></message>")
            .await;
        phone.expect("direct", |e| body_of(e).as_deref() == Some("to phone")).await;
        let carbon = desk
            .expect("received carbon", |e| e.has_child("received", ns::CARBONS))
            .await;
        assert_eq!(carbon.attr("from"), Some("alice@localhost"));
        // alice/phone -> bob: alice/desk gets a `sent` carbon.
        phone.send("<message to='bob@localhost' type='chat'><body>from phone</body></message>")
            .await;
        bob.expect("message", |e| body_of(e).as_deref() == Some("from phone")).await;
        desk.expect("sent carbon", |e| e.has_child("sent", ns::CARBONS)).await;

        // A roster change on node 1 is pushed to the resource on node 2.
        phone.send("<iq type='set' id='r1'><query xmlns='jabber:iq:roster'><item jid='carol@localhost' name='Carol'><group>Friends</group></item></query></iq>").await;
        let r = phone.expect("roster set result", |e| e.attr("id") == Some("r1")).await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        let push = desk
            .expect("roster push", |e| {
                e.name() == "iq"
                    && e.attr("type") == Some("set")
                    && e.has_child("query", ns::ROSTER)
            })
            .await;
        let item = push
            .get_child("query", ns::ROSTER)
            .and_then(|q| q.get_child("item", ns::ROSTER))
            .unwrap();
        assert_eq!(item.attr("jid"), Some("carol@localhost"));
        assert_eq!(item.attr("name"), Some("Carol"));
        // And a roster get on node 2 sees it.
        desk.send("<iq type='get' id='r2'><query xmlns='jabber:iq:roster'/></iq>")
            .await;
        let r = desk.expect("roster", |e| e.attr("id") == Some("r2")).await;
        let items: Vec<_> = r
            .get_child("query", ns::ROSTER)
            .unwrap()
            .children()
            .map(|i| i.attr("jid").unwrap_or_default().to_string())
            .collect();
        assert_eq!(items, ["carol@localhost"]);
    });
}

#[test]
fn direct_tls_client_state_indication_and_requests_kept_for_offline_contacts() {
    rt().block_on(async {
        let direct = common::free_ports(1)[0];
        let c = TestCluster::start_with(1, fast_raft(), move |cfg| {
            cfg.xmpp.direct_tls_addr = Some(common::addr(direct));
        });
        c.wait_leader(1, Duration::from_secs(20)).await;
        for u in ["alice", "bob", "carol"] {
            c.create_user(1, u).await.unwrap();
        }
        let addr = c.client_addr(1);

        // XEP-0368: TLS from the first byte; no STARTTLS offered inside.
        let mut d = RawClient::connect_direct_tls(common::addr(direct)).await;
        let f = d.open().await;
        assert!(!f.has_child("starttls", ns::TLS), "{f}");
        assert!(f.has_child("mechanisms", ns::SASL), "{f}");
        let r = d.auth_plain("carol", "pw-carol").await;
        assert!(r.is("success", ns::SASL), "{r}");

        // RFC 6121 §3.1.3: a request to a contact with no available
        // resource is kept and delivered when the contact comes online.
        let mut alice = RawClient::login(addr, "alice", "pw-alice", "a").await;
        alice.send("<presence/>").await;
        alice
            .send("<presence to='bob@localhost' type='subscribe'/>")
            .await;
        alice.sync().await;
        let mut bob = RawClient::login(addr, "bob", "pw-bob", "b").await;
        bob.send("<presence/>").await;
        let req = bob
            .expect("stored subscription request", |e| {
                e.name() == "presence" && e.attr("type") == Some("subscribe")
            })
            .await;
        assert_eq!(req.attr("from"), Some("alice@localhost"));
        // A pending request is not a roster item yet (§3.1.3).
        bob.send("<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>")
            .await;
        let roster = bob.expect("roster", |e| e.attr("id") == Some("r")).await;
        assert_eq!(
            roster
                .get_child("query", ns::ROSTER)
                .unwrap()
                .children()
                .count(),
            0,
            "{roster}"
        );
        bob.send("<presence to='alice@localhost' type='subscribed'/>")
            .await;
        alice
            .expect("subscribed", |e| {
                e.name() == "presence" && e.attr("type") == Some("subscribed")
            })
            .await;

        // XEP-0352: while alice (who sees bob's presence) is inactive,
        // bob's presence updates are held (only the latest kept) and come
        // when she is active again.
        alice.sync().await;
        alice.send("<inactive xmlns='urn:xmpp:csi:0'/>").await;
        alice.sync().await;
        bob.send("<presence><status>one</status></presence>").await;
        bob.send("<presence><status>two</status></presence>").await;
        bob.sync().await;
        let held = alice.sync().await;
        assert!(
            held.iter().all(|e| e.name() != "presence"),
            "presence reached an inactive client: {held:?}"
        );
        alice.send("<active xmlns='urn:xmpp:csi:0'/>").await;
        let after = alice.sync().await;
        let statuses: Vec<String> = after
            .iter()
            .filter(|e| e.name() == "presence")
            .filter_map(|e| e.get_child("status", ns::CLIENT).map(|s| s.text()))
            .collect();
        assert_eq!(statuses, ["two"], "only the latest presence: {after:?}");
    });
}

/// A client that reconnects with the session ticket of its last
/// connection resumes the TLS session (no certificate, no signature), on
/// the direct TLS port and after STARTTLS, and the XMPP stream goes on
/// over it; a ticket is refused by a node that did not issue it (a full
/// handshake, not an error).
#[test]
fn tls_sessions_resume_with_the_tickets_a_node_issued() {
    use rustls::HandshakeKind;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const HEADER: &str = "<?xml version='1.0'?><stream:stream to='localhost' \
        xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";

    /// Direct TLS (`starttls`: false) or STARTTLS to `addr` with `config`;
    /// the handshake's kind, once the stream's features came over TLS.
    async fn connect(
        addr: std::net::SocketAddr,
        config: Arc<rustls::ClientConfig>,
        starttls: bool,
    ) -> HandshakeKind {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        if starttls {
            tcp.write_all(HEADER.as_bytes()).await.unwrap();
            read_until(&mut tcp, "</stream:features>").await;
            tcp.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
                .await
                .unwrap();
            read_until(&mut tcp, "<proceed").await;
        }
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        let kind = tls.get_ref().1.handshake_kind().expect("handshake done");
        tls.write_all(HEADER.as_bytes()).await.unwrap();
        let features = read_until(&mut tls, "</stream:features>").await;
        assert!(features.contains("mechanisms"), "{features}");
        kind
    }

    async fn read_until<S: tokio::io::AsyncRead + Unpin>(s: &mut S, end: &str) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains(end) {
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .expect("answer in time")
                .unwrap();
            assert!(
                n > 0,
                "closed before {end}: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    rt().block_on(async {
        let direct = common::free_ports(2);
        let c = TestCluster::start_with(2, fast_raft(), |cfg| {
            let port = direct[cfg.node_id as usize - 1];
            cfg.xmpp.direct_tls_addr = Some(common::addr(port));
            cfg.xmpp.accepts_per_second_per_address = 10_000;
            cfg.xmpp.accept_burst_per_address = 10_000;
        });
        c.wait_leader(1, Duration::from_secs(20)).await;
        let (d1, d2) = (common::addr(direct[0]), common::addr(direct[1]));

        let config = common::tls::insecure_tls_config().unwrap();
        let direct_config = common::tls::insecure_direct_tls_config().unwrap();
        assert_eq!(
            connect(d1, direct_config.clone(), false).await,
            HandshakeKind::Full
        );
        assert_eq!(
            connect(d1, direct_config.clone(), false).await,
            HandshakeKind::Resumed,
            "the second connection resumes"
        );
        // However many other clients came since: tickets are stateless,
        // not entries of a bounded session cache (rustls' default keeps
        // 256 sessions, and a storm of reconnecting phones is thousands).
        for _ in 0..300 {
            let other = common::tls::insecure_direct_tls_config().unwrap();
            connect(d1, other, false).await;
        }
        assert_eq!(
            connect(d1, direct_config.clone(), false).await,
            HandshakeKind::Resumed,
            "resumes after 300 other clients' sessions"
        );
        // Node 2 did not issue the ticket: a full handshake.
        assert_eq!(
            connect(d2, direct_config.clone(), false).await,
            HandshakeKind::Full
        );

        let plain = c.client_addr(1);
        assert_eq!(
            connect(plain, config.clone(), true).await,
            HandshakeKind::Full
        );
        assert_eq!(
            connect(plain, config.clone(), true).await,
            HandshakeKind::Resumed,
            "STARTTLS resumes too"
        );
    });
}

#[test]
fn in_band_password_change_and_account_removal() {
    rt().block_on(async {
        let c = TestCluster::start(1, fast_raft());
        c.wait_leader(1, Duration::from_secs(20)).await;
        c.create_user(1, "dave").await.unwrap();
        let addr = c.client_addr(1);
        // XEP-0077 §3.3: change the password; the new one works, the old not.
        let mut d = RawClient::login(addr, "dave", "pw-dave", "r").await;
        d.send("<iq type='set' id='p1'><query xmlns='jabber:iq:register'><username>dave</username><password>new-secret</password></query></iq>").await;
        let r = d.expect("password changed", |e| e.attr("id") == Some("p1")).await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        // Someone else's password cannot be changed.
        d.send("<iq type='set' id='p2'><query xmlns='jabber:iq:register'><username>erin</username><password>x</password></query></iq>").await;
        let r = d.expect("refused", |e| e.attr("id") == Some("p2")).await;
        assert_eq!(stanza_error(&r).as_deref(), Some("not-allowed"), "{r}");
        let mut old = RawClient::connect(addr).await;
        old.open().await;
        old.starttls().await;
        old.open().await;
        let r = old.auth_plain("dave", "pw-dave").await;
        assert!(r.is("failure", ns::SASL), "old password still works: {r}");
        let mut d2 = RawClient::login(addr, "dave", "new-secret", "r2").await;
        // XEP-0077 §3.2: cancel the registration; the session ends and the
        // account is gone.
        d2.send("<iq type='set' id='c1'><query xmlns='jabber:iq:register'><remove/></query></iq>")
            .await;
        let r = d2.expect("removed", |e| e.attr("id") == Some("c1")).await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        assert_eq!(d2.expect_stream_error().await, "not-authorized");
        assert!(!c.users(1).await.contains(&"dave@localhost".to_string()));
    });
}
