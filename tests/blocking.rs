//! Black-box tests of XEP-0191 block lists on a 3-node cluster of real
//! `starling serve` processes driven by raw XMPP clients, and of the fixes
//! third-party clients asked for (issue 11, item 7): who an iq answered on
//! the account's behalf comes from, disco#info of the account and of
//! unknown nodes, XEP-0198's `<handled-count-too-high/>`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::xmpp::{body_of, stanza_error, stream_error, RawClient};
use common::{fast_raft, rt, TestCluster};
use starling::xmpp::{ns, Element};

const BLOCKING: &str = "urn:xmpp:blocking";
const BLOCKING_ERRORS: &str = "urn:xmpp:blocking:errors";

/// Sends an iq and returns its answer (skipping anything before it).
async fn iq(c: &mut RawClient, id: &str, xml: &str) -> Element {
    c.send(xml).await;
    c.expect(&format!("answer to iq {id}"), |e| {
        e.name() == "iq" && e.attr("id") == Some(id)
    })
    .await
}

/// The JIDs of a `<blocklist/>` result.
fn listed(result: &Element) -> Vec<String> {
    let list = result
        .get_child("blocklist", BLOCKING)
        .unwrap_or_else(|| panic!("no blocklist in {result}"));
    list.children()
        .filter(|i| i.is("item", BLOCKING))
        .filter_map(|i| i.attr("jid").map(str::to_string))
        .collect()
}

async fn blocklist(c: &mut RawClient, id: &str) -> Vec<String> {
    let r = iq(
        c,
        id,
        &format!("<iq type='get' id='{id}'><blocklist xmlns='{BLOCKING}'/></iq>"),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    listed(&r)
}

/// A block list push of `what` (`block` or `unblock`) to `c`.
async fn expect_push(c: &mut RawClient, what: &str) -> Element {
    c.expect(&format!("{what} push"), |e| {
        e.name() == "iq" && e.attr("type") == Some("set") && e.has_child(what, BLOCKING)
    })
    .await
}

fn chat(to: &str, id: &str, body: &str) -> String {
    format!("<message to='{to}' type='chat' id='{id}'><body>{body}</body></message>")
}

/// Messages among `els` whose body is `body`.
fn with_body(els: &[Element], body: &str) -> usize {
    els.iter()
        .filter(|e| e.name() == "message" && body_of(e).as_deref() == Some(body))
        .count()
}

#[test]
fn block_lists_are_replicated_and_enforced_on_every_node() {
    rt().block_on(async {
        let c = TestCluster::start(3, fast_raft());
        c.wait_leader(1, Duration::from_secs(20)).await;
        for u in ["alice", "bob"] {
            c.create_user(1, u).await.unwrap();
        }
        let mut alice = RawClient::login(c.client_addr(1), "alice", "pw-alice", "phone").await;
        let mut bob = RawClient::login(c.client_addr(2), "bob", "pw-bob", "laptop").await;
        let mut bob2 = RawClient::login(c.client_addr(3), "bob", "pw-bob", "tablet").await;
        for cl in [&mut alice, &mut bob, &mut bob2] {
            cl.send("<presence/>").await;
            cl.sync().await;
        }

        // XEP-0191 §3.1: the server says it supports it.
        let info = iq(
            &mut bob,
            "d1",
            "<iq type='get' id='d1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        )
        .await;
        let q = info.get_child("query", ns::DISCO_INFO).expect("disco");
        assert!(
            q.children().any(|f| f.attr("var") == Some(BLOCKING)),
            "{info}"
        );

        // §3.2: empty at first.
        assert!(blocklist(&mut bob, "l1").await.is_empty());

        // §3.3: a block without items is a bad request, a bad JID malformed.
        let r = iq(
            &mut bob,
            "b0",
            &format!("<iq type='set' id='b0'><block xmlns='{BLOCKING}'/></iq>"),
        )
        .await;
        assert_eq!(stanza_error(&r).as_deref(), Some("bad-request"), "{r}");
        let r = iq(
            &mut bob,
            "b1",
            &format!("<iq type='set' id='b1'><block xmlns='{BLOCKING}'><item jid='a@b@c'/></block></iq>"),
        )
        .await;
        assert_eq!(stanza_error(&r).as_deref(), Some("jid-malformed"), "{r}");

        // bob (node 2) blocks alice (node 1): the result, and a push to
        // both of bob's resources (node 2 and node 3).
        let r = iq(
            &mut bob,
            "b2",
            &format!("<iq type='set' id='b2'><block xmlns='{BLOCKING}'><item jid='Alice@localhost'/></block></iq>"),
        )
        .await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        for cl in [&mut bob, &mut bob2] {
            let p = expect_push(cl, "block").await;
            let items: Vec<_> = p
                .get_child("block", BLOCKING)
                .unwrap()
                .children()
                .filter_map(|i| i.attr("jid").map(str::to_string))
                .collect();
            assert_eq!(items, ["alice@localhost"], "{p}");
        }
        c.wait_converged(1, &[1, 2, 3], Duration::from_secs(20))
            .await;
        // The list is read on another node.
        assert_eq!(blocklist(&mut bob2, "l2").await, ["alice@localhost"]);

        // alice's message (node 1) to bob: not delivered, and alice gets
        // service-unavailable (XEP-0191 §3.3: bob looks offline).
        alice.send(&chat("bob@localhost", "m1", "blocked-1")).await;
        let err = alice
            .expect("the error for m1", |e| e.attr("id") == Some("m1"))
            .await;
        assert_eq!(
            stanza_error(&err).as_deref(),
            Some("service-unavailable"),
            "{err}"
        );
        // bob's outgoing message to alice: not-acceptable with <blocked/>.
        bob.send(&chat("alice@localhost", "m2", "to-the-blocked"))
            .await;
        let err = bob
            .expect("the error for m2", |e| e.attr("id") == Some("m2"))
            .await;
        assert_eq!(stanza_error(&err).as_deref(), Some("not-acceptable"), "{err}");
        assert!(
            err.get_child("error", ns::CLIENT)
                .is_some_and(|e| e.has_child("blocked", BLOCKING_ERRORS)),
            "{err}"
        );
        let seen = alice.sync().await;
        assert_eq!(with_body(&seen, "to-the-blocked"), 0, "{seen:?}");

        // bob offline: alice's message is refused, and not queued for him.
        for cl in [&mut bob, &mut bob2] {
            cl.send("</stream:stream>").await;
        }
        drop(bob);
        drop(bob2);
        tokio::time::sleep(Duration::from_millis(500)).await;
        alice.send(&chat("bob@localhost", "m3", "blocked-offline")).await;
        let err = alice
            .expect("the error for m3", |e| e.attr("id") == Some("m3"))
            .await;
        assert_eq!(
            stanza_error(&err).as_deref(),
            Some("service-unavailable"),
            "{err}"
        );
        let mut bob = RawClient::login(c.client_addr(3), "bob", "pw-bob", "desk").await;
        bob.send("<presence/>").await;
        let got = bob.sync().await;
        assert_eq!(with_body(&got, "blocked-1"), 0, "{got:?}");
        assert_eq!(with_body(&got, "blocked-offline"), 0, "{got:?}");

        // §3.4: unblock restores delivery.
        let r = iq(
            &mut bob,
            "u1",
            &format!("<iq type='set' id='u1'><unblock xmlns='{BLOCKING}'><item jid='alice@localhost'/></unblock></iq>"),
        )
        .await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        expect_push(&mut bob, "unblock").await;
        c.wait_converged(1, &[1, 2, 3], Duration::from_secs(20))
            .await;
        alice.send(&chat("bob@localhost", "m4", "welcome-back")).await;
        bob.expect("m4", |e| body_of(e).as_deref() == Some("welcome-back"))
            .await;

        // §3.5: unblock all, a push without items.
        iq(
            &mut bob,
            "b3",
            &format!("<iq type='set' id='b3'><block xmlns='{BLOCKING}'><item jid='x@localhost'/><item jid='evil.example'/></block></iq>"),
        )
        .await;
        assert_eq!(
            blocklist(&mut bob, "l3").await,
            ["evil.example", "x@localhost"]
        );
        let r = iq(
            &mut bob,
            "u2",
            &format!("<iq type='set' id='u2'><unblock xmlns='{BLOCKING}'/></iq>"),
        )
        .await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        let p = expect_push(&mut bob, "unblock").await;
        assert_eq!(
            p.get_child("unblock", BLOCKING).unwrap().children().count(),
            0,
            "{p}"
        );
        assert!(blocklist(&mut bob, "l4").await.is_empty());
    });
}

#[test]
fn blocking_a_watcher_sends_unavailable_and_hides_presence() {
    rt().block_on(async {
        let c = TestCluster::start(3, fast_raft());
        c.wait_leader(1, Duration::from_secs(20)).await;
        for u in ["alice", "bob"] {
            c.create_user(1, u).await.unwrap();
        }
        let mut alice = RawClient::login(c.client_addr(1), "alice", "pw-alice", "phone").await;
        let mut bob = RawClient::login(c.client_addr(2), "bob", "pw-bob", "laptop").await;
        for cl in [&mut alice, &mut bob] {
            cl.send("<presence/>").await;
            cl.sync().await;
        }
        // alice subscribes to bob's presence, bob approves.
        alice
            .send("<presence to='bob@localhost' type='subscribe'/>")
            .await;
        bob.expect("subscribe", |e| e.attr("type") == Some("subscribe"))
            .await;
        bob.send("<presence to='alice@localhost' type='subscribed'/>")
            .await;
        alice
            .expect("bob's presence", |e| {
                e.name() == "presence"
                    && e.attr("from") == Some("bob@localhost/laptop")
                    && e.attr("type").is_none()
            })
            .await;
        // bob blocks alice: she sees him go unavailable (§3.3).
        iq(
            &mut bob,
            "b1",
            &format!("<iq type='set' id='b1'><block xmlns='{BLOCKING}'><item jid='alice@localhost'/></block></iq>"),
        )
        .await;
        alice
            .expect("bob unavailable", |e| {
                e.name() == "presence"
                    && e.attr("from") == Some("bob@localhost/laptop")
                    && e.attr("type") == Some("unavailable")
            })
            .await;
        c.wait_converged(1, &[1, 2, 3], Duration::from_secs(20))
            .await;
        // bob's presence updates no longer reach her, nor her probes.
        bob.send("<presence><show>away</show></presence>").await;
        bob.sync().await;
        alice
            .send("<presence to='bob@localhost' type='probe'/>")
            .await;
        let seen = alice.sync().await;
        assert!(
            seen.iter()
                .all(|e| !(e.name() == "presence" && e.attr("from") == Some("bob@localhost/laptop"))),
            "{seen:?}"
        );
        // Unblocking sends his current presence again (§3.4).
        iq(
            &mut bob,
            "u1",
            &format!("<iq type='set' id='u1'><unblock xmlns='{BLOCKING}'/></iq>"),
        )
        .await;
        alice
            .expect("bob's presence again", |e| {
                e.name() == "presence"
                    && e.attr("from") == Some("bob@localhost/laptop")
                    && e.attr("type").is_none()
            })
            .await;
    });
}

#[test]
fn iqs_for_the_account_come_from_it_and_disco_describes_it() {
    rt().block_on(async {
        let c = TestCluster::start(1, fast_raft());
        c.wait_leader(1, Duration::from_secs(20)).await;
        c.create_user(1, "alice").await.unwrap();
        let mut alice = RawClient::login(c.client_addr(1), "alice", "pw-alice", "phone").await;

        // RFC 6120 §8.1.2.1: an iq answered on the account's behalf comes
        // from the bare JID or from nobody, errors included.
        let r = iq(
            &mut alice,
            "r1",
            "<iq type='set' id='r1'><query xmlns='jabber:iq:roster'><item jid='a@b@c'/></query></iq>",
        )
        .await;
        assert_eq!(stanza_error(&r).as_deref(), Some("jid-malformed"), "{r}");
        assert!(
            matches!(r.attr("from"), None | Some("alice@localhost")),
            "{r}"
        );
        let r = iq(
            &mut alice,
            "r2",
            "<iq type='get' id='r2'><query xmlns='jabber:iq:roster'/></iq>",
        )
        .await;
        assert!(
            matches!(r.attr("from"), None | Some("alice@localhost")),
            "{r}"
        );

        // disco#info without `to`, or to the own bare JID: the account.
        let identity = |r: &Element| {
            r.get_child("query", ns::DISCO_INFO)
                .and_then(|q| q.get_child("identity", ns::DISCO_INFO))
                .map(|i| {
                    (
                        i.attr("category").unwrap_or_default().to_string(),
                        i.attr("type").unwrap_or_default().to_string(),
                    )
                })
        };
        let account = Some(("account".to_string(), "registered".to_string()));
        for (id, to) in [("d1", ""), ("d2", " to='alice@localhost'")] {
            let r = iq(
                &mut alice,
                id,
                &format!("<iq type='get' id='{id}'{to}><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"),
            )
            .await;
            assert_eq!(identity(&r), account, "{r}");
            assert!(
                matches!(r.attr("from"), None | Some("alice@localhost")),
                "{r}"
            );
        }
        // To the server: the server.
        let r = iq(
            &mut alice,
            "d3",
            "<iq type='get' id='d3' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        )
        .await;
        assert_eq!(
            identity(&r),
            Some(("server".to_string(), "im".to_string())),
            "{r}"
        );
        // An unknown node: item-not-found (XEP-0030 §3.1), on either.
        for (id, to) in [("d4", " to='localhost'"), ("d5", "")] {
            let r = iq(
                &mut alice,
                id,
                &format!("<iq type='get' id='{id}'{to}><query xmlns='http://jabber.org/protocol/disco#info' node='nope#1'/></iq>"),
            )
            .await;
            assert_eq!(stanza_error(&r).as_deref(), Some("item-not-found"), "{r}");
        }
    });
}

#[test]
fn an_ack_of_more_than_was_sent_is_handled_count_too_high() {
    rt().block_on(async {
        let c = TestCluster::start(1, fast_raft());
        c.wait_leader(1, Duration::from_secs(20)).await;
        c.create_user(1, "alice").await.unwrap();
        let mut alice = RawClient::login(c.client_addr(1), "alice", "pw-alice", "phone").await;
        alice.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
        alice
            .expect("sm enabled", |e| e.is("enabled", ns::SM))
            .await;
        // One stanza from the server (the ping result), then h = 5.
        alice.sync().await;
        alice.send("<a xmlns='urn:xmpp:sm:3' h='5'/>").await;
        let err = alice
            .expect("a stream error", |e| stream_error(e).is_some())
            .await;
        assert_eq!(stream_error(&err).as_deref(), Some("undefined-condition"));
        let too_high = err
            .get_child("handled-count-too-high", ns::SM)
            .unwrap_or_else(|| panic!("no <handled-count-too-high/> in {err}"));
        assert_eq!(too_high.attr("h"), Some("5"), "{err}");
        assert_eq!(too_high.attr("send-count"), Some("1"), "{err}");
    });
}
