//! Black-box tests of XEP-0357 push notifications on real `starling serve`
//! processes driven by raw XMPP clients. The app server is a client of its
//! own: a local account's full JID (`app@localhost/push`), which the
//! router delivers the pushes to and which answers them (there is no s2s
//! and no XEP-0114 component to run a real one on another domain).
//!
//! - enable/disable on the wire, their errors, the per-account cap, disco;
//! - a detached (XEP-0198) recipient, a sender and the app server on three
//!   different nodes: none while the recipient was active; one push at
//!   detach for the message it had not acknowledged; exactly one push for
//!   a message to the detached session, with the summary and no body; the registration survives killing the
//!   recipient's node (the routing node pushes for the queued message);
//! - an inactive (XEP-0352) recipient: pushes with the body when asked,
//!   the publish-options, a burst coalesced into one push with its count,
//!   none once active again, a `wait` error keeps the registration and
//!   any other error disables it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::xmpp::{body_of, enable_sm, stanza_error, RawClient};
use common::{fast_raft, rt, TestCluster};
use starling::xmpp::{ns, Element};

const PUSH: &str = "urn:xmpp:push:0";
const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const APP: &str = "app@localhost/push";

/// Sends an iq and returns its answer (skipping anything before it).
async fn iq(c: &mut RawClient, id: &str, xml: &str) -> Element {
    c.send(xml).await;
    c.expect(&format!("answer to iq {id}"), |e| {
        e.name() == "iq" && e.attr("id") == Some(id)
    })
    .await
}

/// `<enable/>` with these attributes (raw) and form (raw, may be empty).
async fn enable(c: &mut RawClient, id: &str, attrs: &str, form: &str) -> Element {
    iq(
        c,
        id,
        &format!("<iq type='set' id='{id}'><enable xmlns='{PUSH}' {attrs}>{form}</enable></iq>"),
    )
    .await
}

async fn disable(c: &mut RawClient, id: &str, attrs: &str) -> Element {
    iq(
        c,
        id,
        &format!("<iq type='set' id='{id}'><disable xmlns='{PUSH}' {attrs}/></iq>"),
    )
    .await
}

fn is_push(e: &Element) -> bool {
    e.name() == "iq" && e.attr("type") == Some("set") && e.has_child("pubsub", PUBSUB)
}

/// The next push the app server gets.
async fn expect_push(app: &mut RawClient) -> Element {
    app.expect("a push", is_push).await
}

/// Answers a push with a result, or with an error of type `kind`.
async fn answer(app: &mut RawClient, push: &Element, error: Option<&str>) {
    let id = push.attr("id").unwrap();
    let to = push.attr("from").unwrap();
    let xml = match error {
        None => format!("<iq type='result' id='{id}' to='{to}'/>"),
        Some(kind) => format!(
            "<iq type='error' id='{id}' to='{to}'><error type='{kind}'>\
             <item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        ),
    };
    app.send(&xml).await;
}

/// Waits `quiet`, then returns the pushes that came meanwhile.
async fn pushes_within(app: &mut RawClient, quiet: Duration) -> Vec<Element> {
    tokio::time::sleep(quiet).await;
    app.sync().await.into_iter().filter(is_push).collect()
}

/// The node a push publishes to, and its summary form's fields.
fn summary(push: &Element) -> (String, HashMap<String, String>) {
    let publish = push
        .get_child("pubsub", PUBSUB)
        .and_then(|p| p.get_child("publish", PUBSUB))
        .unwrap_or_else(|| panic!("no publish: {push}"));
    let form = publish
        .get_child("item", PUBSUB)
        .and_then(|i| i.get_child("notification", PUSH))
        .and_then(|n| n.get_child("x", ns::XDATA))
        .unwrap_or_else(|| panic!("no notification form: {push}"));
    let fields = form
        .children()
        .filter_map(|f| {
            let v = f.get_child("value", ns::XDATA)?.text();
            Some((f.attr("var")?.to_string(), v))
        })
        .collect();
    (publish.attr("node").unwrap_or_default().to_string(), fields)
}

/// The publish-options fields of a push (var -> first value).
fn publish_options(push: &Element) -> HashMap<String, String> {
    push.get_child("pubsub", PUBSUB)
        .and_then(|p| p.get_child("publish-options", PUBSUB))
        .and_then(|o| o.get_child("x", ns::XDATA))
        .map(|x| {
            x.children()
                .filter_map(|f| {
                    let v = f.get_child("value", ns::XDATA)?.text();
                    Some((f.attr("var")?.to_string(), v))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn chat(to: &str, body: &str) -> String {
    format!("<message to='{to}' type='chat' id='{body}'><body>{body}</body></message>")
}

async fn online(c: &TestCluster, node: u64, user: &str, resource: &str) -> RawClient {
    let mut cl = RawClient::login(c.client_addr(node), user, &format!("pw-{user}"), resource).await;
    cl.send("<presence/>").await;
    cl.sync().await;
    cl
}

#[test]
fn enable_and_disable_on_the_wire_with_their_errors_and_the_cap() {
    rt().block_on(async {
        let c = TestCluster::one_node(&["alice", "bob", "app"], |cfg| {
            cfg.xmpp.max_push_registrations = 2;
            cfg.xmpp.push_coalesce_ms = 50;
            cfg.xmpp.push_min_interval_ms = 200;
        })
        .await;
        let mut alice = online(&c, 1, "alice", "phone").await;
        let mut bob = online(&c, 1, "bob", "laptop").await;
        let mut app = online(&c, 1, "app", "push").await;

        // §4: the account says it supports push.
        let info = iq(
            &mut alice,
            "d1",
            "<iq type='get' id='d1'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        )
        .await;
        let q = info.get_child("query", ns::DISCO_INFO).expect("disco");
        assert!(q.children().any(|f| f.attr("var") == Some(PUSH)), "{info}");

        // Errors: no jid, no node, a malformed jid, another domain, this
        // account, no such account, the domain, a form that is no submit.
        for (id, attrs, form, want) in [
            ("e1", "node='n1'", "", "bad-request"),
            ("e2", "jid='app@localhost/push'", "", "bad-request"),
            ("e3", "jid='a@b@c' node='n1'", "", "jid-malformed"),
            (
                "e4",
                "jid='push.example.net' node='n1'",
                "",
                "remote-server-not-found",
            ),
            ("e5", "jid='alice@localhost' node='n1'", "", "bad-request"),
            (
                "e6",
                "jid='nobody@localhost/x' node='n1'",
                "",
                "item-not-found",
            ),
            ("e7", "jid='localhost' node='n1'", "", "service-unavailable"),
            (
                "e7b",
                "jid='app@localhost' node='n1'",
                "",
                "service-unavailable",
            ),
            (
                "e8",
                "jid='app@localhost/push' node='n1'",
                "<x xmlns='jabber:x:data' type='form'/>",
                "bad-request",
            ),
        ] {
            let r = enable(&mut alice, id, attrs, form).await;
            assert_eq!(stanza_error(&r).as_deref(), Some(want), "{id}: {r}");
        }
        let r = disable(&mut alice, "e9", "node='n1'").await;
        assert_eq!(stanza_error(&r).as_deref(), Some("bad-request"), "{r}");

        // The cap: two registrations; a third is refused, replacing one
        // is not, and disabling makes room.
        for (id, node) in [("a1", "n1"), ("a2", "n2")] {
            let r = enable(&mut alice, id, &format!("jid='{APP}' node='{node}'"), "").await;
            assert_eq!(r.attr("type"), Some("result"), "{r}");
        }
        let r = enable(&mut alice, "a3", &format!("jid='{APP}' node='n3'"), "").await;
        assert_eq!(
            stanza_error(&r).as_deref(),
            Some("resource-constraint"),
            "{r}"
        );
        let r = enable(&mut alice, "a4", &format!("jid='{APP}' node='n1'"), "").await;
        assert_eq!(r.attr("type"), Some("result"), "replacing: {r}");
        let r = disable(&mut alice, "x1", &format!("jid='{APP}' node='n2'")).await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        let r = enable(&mut alice, "a5", &format!("jid='{APP}' node='n3'"), "").await;
        assert_eq!(r.attr("type"), Some("result"), "room again: {r}");

        // Both push (n1, n3) while alice is inactive.
        alice.send("<inactive xmlns='urn:xmpp:csi:0'/>").await;
        alice.sync().await;
        bob.send(&chat("alice@localhost", "one")).await;
        let mut nodes = Vec::new();
        for _ in 0..2 {
            let p = expect_push(&mut app).await;
            answer(&mut app, &p, None).await;
            nodes.push(summary(&p).0);
        }
        nodes.sort();
        assert_eq!(nodes, ["n1", "n3"]);

        // The app server's resource is gone for a while: the pushes meant
        // for it are lost (this server's own error), the registrations
        // stay.
        drop(app);
        tokio::time::sleep(Duration::from_millis(500)).await;
        bob.send(&chat("alice@localhost", "lost")).await;
        bob.sync().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut app = online(&c, 1, "app", "push").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        bob.send(&chat("alice@localhost", "back")).await;
        for _ in 0..2 {
            let p = expect_push(&mut app).await;
            answer(&mut app, &p, None).await;
        }

        // Disabling every node of the JID stops them.
        let r = disable(&mut alice, "x2", &format!("jid='{APP}'")).await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        bob.send(&chat("alice@localhost", "two")).await;
        let got = pushes_within(&mut app, Duration::from_millis(1500)).await;
        assert!(got.is_empty(), "pushes after disable: {got:?}");
        // A disable of nothing is answered too.
        let r = disable(&mut alice, "x3", &format!("jid='{APP}'")).await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");
    });
}

#[test]
fn a_detached_recipient_gets_exactly_one_push_and_the_registration_survives_its_node() {
    rt().block_on(async {
        let mut c = TestCluster::start_with(3, fast_raft(), |cfg| {
            cfg.xmpp.node_dead_after_ms = 1500;
            cfg.xmpp.push_coalesce_ms = 100;
            cfg.xmpp.push_min_interval_ms = 500;
        });
        c.wait_leader(1, Duration::from_secs(20)).await;
        for u in ["alice", "bob", "app"] {
            c.create_user(1, u).await.unwrap();
        }
        // alice on a node that is not the leader (it is killed below; raft
        // goes on), bob on the leader, the app server on the third.
        let leader = c.wait_leader(1, Duration::from_secs(20)).await;
        let others: Vec<u64> = [1, 2, 3].into_iter().filter(|n| *n != leader).collect();
        let (alices_node, bobs_node, apps_node) = (others[0], leader, others[1]);
        let mut app = online(&c, apps_node, "app", "push").await;
        let mut alice = online(&c, alices_node, "alice", "phone").await;
        enable_sm(&mut alice, true).await;
        let r = enable(&mut alice, "p1", &format!("jid='{APP}' node='dev1'"), "").await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        let mut bob = online(&c, bobs_node, "bob", "laptop").await;

        // Active: delivered, not pushed.
        bob.send(&chat("alice@localhost", "m0")).await;
        let m = alice.expect("m0", |e| e.name() == "message").await;
        assert_eq!(body_of(&m).as_deref(), Some("m0"));
        let got = pushes_within(&mut app, Duration::from_millis(800)).await;
        assert!(got.is_empty(), "a push while active: {got:?}");

        // Detached (the TCP connection dies without a stream close): m0,
        // written but never acknowledged, is pushed at once.
        drop(alice);
        let p = expect_push(&mut app).await;
        answer(&mut app, &p, None).await;
        let (node, fields) = summary(&p);
        assert_eq!(node, "dev1");
        assert_eq!(fields.get("message-count").map(String::as_str), Some("1"));
        tokio::time::sleep(Duration::from_millis(700)).await;
        // A message to the detached session: pushed by its node.
        bob.send(&chat("alice@localhost", "m1")).await;
        let p = expect_push(&mut app).await;
        answer(&mut app, &p, None).await;
        assert_eq!(p.attr("from"), Some("alice@localhost"), "{p}");
        let (node, fields) = summary(&p);
        assert_eq!(node, "dev1");
        assert_eq!(
            fields.get("FORM_TYPE").map(String::as_str),
            Some("urn:xmpp:push:summary")
        );
        assert_eq!(fields.get("message-count").map(String::as_str), Some("1"));
        assert_eq!(
            fields.get("last-message-sender").map(String::as_str),
            Some("bob@localhost/laptop")
        );
        assert!(
            !fields.contains_key("last-message-body"),
            "no body unless asked: {p}"
        );
        // Exactly one: no other node pushed it.
        let got = pushes_within(&mut app, Duration::from_millis(1500)).await;
        assert!(got.is_empty(), "more than one push: {got:?}");

        // The node where push was enabled (and alice's session is) dies.
        // The registration is replicated: once the binding is gone, the
        // routing node (bob's) pushes for the queued message.
        c.kill(alices_node);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let s = c.conn(bobs_node).await;
            let r = s
                .client
                .clone()
                .list_sessions(s.req(starling_proto::admin::ListSessionsRequest { node_id: 0 }))
                .await
                .map(|r| r.into_inner().sessions);
            if let Ok(sessions) = r {
                if sessions.iter().all(|x| !x.full_jid.starts_with("alice@")) {
                    break;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "alice's binding on the dead node is still there"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bob.send(&chat("alice@localhost", "m2")).await;
        let p = expect_push(&mut app).await;
        answer(&mut app, &p, None).await;
        let (node, fields) = summary(&p);
        assert_eq!(node, "dev1");
        assert_eq!(fields.get("message-count").map(String::as_str), Some("1"));
        let got = pushes_within(&mut app, Duration::from_millis(1500)).await;
        assert!(got.is_empty(), "more than one push: {got:?}");
    });
}

#[test]
fn an_inactive_recipient_gets_bodies_when_asked_bursts_coalesce_and_errors_disable() {
    rt().block_on(async {
        let c = TestCluster::one_node(&["alice", "bob", "app"], |cfg| {
            cfg.xmpp.push_coalesce_ms = 100;
            cfg.xmpp.push_min_interval_ms = 1500;
        })
        .await;
        let mut app = online(&c, 1, "app", "push").await;
        let mut alice = online(&c, 1, "alice", "phone").await;
        let mut bob = online(&c, 1, "bob", "laptop").await;
        let form = "<x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
             <field var='secret'><value>s3cr3t</value></field>\
             <field var='include-body'><value>true</value></field></x>";
        let r = enable(&mut alice, "p1", &format!("jid='{APP}' node='dev1'"), form).await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");

        // XEP-0352 inactive: pushed, with the body it asked for and the
        // publish-options (without Starling's include-body).
        alice.send("<inactive xmlns='urn:xmpp:csi:0'/>").await;
        alice.sync().await;
        bob.send(&chat("alice@localhost", "b1")).await;
        let p = expect_push(&mut app).await;
        answer(&mut app, &p, None).await;
        let (_, fields) = summary(&p);
        assert_eq!(
            fields.get("last-message-body").map(String::as_str),
            Some("b1"),
            "{p}"
        );
        let opts = publish_options(&p);
        assert_eq!(opts.get("secret").map(String::as_str), Some("s3cr3t"), "{p}");
        assert!(!opts.contains_key("include-body"), "{p}");

        // A burst within the interval: one push, counting them all.
        let burst: String = (2..=6).map(|i| chat("alice@localhost", &format!("b{i}"))).collect();
        bob.send(&burst).await;
        let p = expect_push(&mut app).await;
        answer(&mut app, &p, None).await;
        let (_, fields) = summary(&p);
        assert_eq!(fields.get("message-count").map(String::as_str), Some("5"), "{p}");
        assert_eq!(
            fields.get("last-message-body").map(String::as_str),
            Some("b6"),
            "{p}"
        );
        let got = pushes_within(&mut app, Duration::from_millis(2500)).await;
        assert!(got.is_empty(), "the burst made more than one push: {got:?}");

        // Active again: no push.
        alice.send("<active xmlns='urn:xmpp:csi:0'/>").await;
        alice.sync().await;
        bob.send(&chat("alice@localhost", "b7")).await;
        let got = pushes_within(&mut app, Duration::from_millis(2000)).await;
        assert!(got.is_empty(), "a push while active: {got:?}");

        // A `wait` error from the app server keeps the registration; any
        // other disables it.
        alice.send("<inactive xmlns='urn:xmpp:csi:0'/>").await;
        alice.sync().await;
        bob.send(&chat("alice@localhost", "b8")).await;
        let p = expect_push(&mut app).await;
        answer(&mut app, &p, Some("wait")).await;
        tokio::time::sleep(Duration::from_millis(1600)).await;
        bob.send(&chat("alice@localhost", "b8b")).await;
        let p = expect_push(&mut app).await;
        let (_, fields) = summary(&p);
        assert_eq!(
            fields.get("last-message-body").map(String::as_str),
            Some("b8b"),
            "{p}"
        );
        answer(&mut app, &p, Some("cancel")).await;
        tokio::time::sleep(Duration::from_millis(2000)).await;
        bob.send(&chat("alice@localhost", "b9")).await;
        let got = pushes_within(&mut app, Duration::from_millis(2500)).await;
        assert!(got.is_empty(), "pushed after an error: {got:?}");
    });
}
