//! Black-box tests of XEP-0163 PEP (and the account data beside it:
//! XEP-0054 vCards, XEP-0049 private storage, XEP-0402 bookmarks) on a
//! 3-node cluster of real `starling serve` processes driven by raw XMPP
//! clients: publish and notify across nodes, notifications filtered by
//! XEP-0115 caps (the server asks the client, verifies the hash), access
//! models, publish-options preconditions, retract, max_items, size
//! limits, the last item on coming online, disco, and an item that
//! survives `kill -9` of the node that acknowledged it. Also the RFC 6121
//! §3.1.2 pending-out item for a contact that does not exist, and disco
//! of a non-contact's account revealing nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use base64::Engine;
use common::xmpp::{stanza_error, RawClient};
use common::{fast_raft, rt, TestCluster};
use sha1::Digest;
use starling::xmpp::{ns, Element};

const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
const AVATAR: &str = "urn:xmpp:avatar:metadata";
const TUNE: &str = "http://jabber.org/protocol/tune";
const DEVICES: &str = "eu.siacs.conversations.axolotl.devicelist";
const BOOKMARKS: &str = "urn:xmpp:bookmarks:1";

async fn iq(c: &mut RawClient, id: &str, xml: &str) -> Element {
    c.send(xml).await;
    c.expect(&format!("answer to iq {id}"), |e| {
        e.name() == "iq" && e.attr("id") == Some(id)
    })
    .await
}

/// The XEP-0060 application condition of an error, if any.
fn app_error(el: &Element) -> Option<String> {
    el.get_child("error", ns::CLIENT)?
        .children()
        .find(|c| c.ns() == ERRORS)
        .map(|c| c.name().to_string())
}

/// XEP-0115 §5: the ver of a client with these features.
fn caps_ver(features: &[&str]) -> String {
    let mut f: Vec<&str> = features.to_vec();
    f.sort_unstable();
    let mut s = String::from("client/pc//test<");
    for v in f {
        s.push_str(v);
        s.push('<');
    }
    base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(s.as_bytes()))
}

/// Sends initial presence with caps for `features` and answers the
/// server's disco#info query about them (if it asks). Returns what came
/// before the presence's reflection was read.
async fn online_with_caps(c: &mut RawClient, features: &[&str], answer: bool) {
    let ver = caps_ver(features);
    c.send(&format!(
        "<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://test' ver='{ver}'/></presence>"
    ))
    .await;
    if !answer {
        c.sync().await;
        return;
    }
    let q = c
        .expect("the server's caps query", |e| {
            e.name() == "iq"
                && e.attr("type") == Some("get")
                && e.get_child("query", ns::DISCO_INFO).is_some()
        })
        .await;
    let node = q
        .get_child("query", ns::DISCO_INFO)
        .and_then(|q| q.attr("node"))
        .unwrap_or_default()
        .to_string();
    assert_eq!(node, format!("https://test#{ver}"), "{q}");
    let mut feats = String::new();
    for f in features {
        feats.push_str(&format!("<feature var='{f}'/>"));
    }
    c.send(&format!(
        "<iq type='result' id='{}' to='localhost'><query xmlns='{}' node='{node}'><identity category='client' type='pc' name='test'/>{feats}</query></iq>",
        q.attr("id").unwrap(),
        ns::DISCO_INFO
    ))
    .await;
    c.sync().await;
}

fn publish(id: &str, node: &str, item: &str, payload: &str, options: &str) -> String {
    let opts = if options.is_empty() {
        String::new()
    } else {
        format!(
            "<publish-options><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
             {options}</x></publish-options>"
        )
    };
    format!(
        "<iq type='set' id='{id}'><pubsub xmlns='{PUBSUB}'><publish node='{node}'><item id='{item}'>{payload}</item></publish>{opts}</pubsub></iq>"
    )
}

fn field(var: &str, value: &str) -> String {
    format!("<field var='{var}'><value>{value}</value></field>")
}

fn items_of(to: &str, id: &str, node: &str) -> String {
    let to = if to.is_empty() {
        String::new()
    } else {
        format!(" to='{to}'")
    };
    format!("<iq type='get' id='{id}'{to}><pubsub xmlns='{PUBSUB}'><items node='{node}'/></pubsub></iq>")
}

/// The item ids of an items result.
fn item_ids(r: &Element) -> Vec<String> {
    r.get_child("pubsub", PUBSUB)
        .and_then(|p| p.get_child("items", PUBSUB))
        .map(|i| {
            i.children()
                .filter_map(|c| c.attr("id").map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Event notifications about `node` among `els`: (item or retract, id).
fn events(els: &[Element], node: &str) -> Vec<(String, String)> {
    els.iter()
        .filter(|e| e.name() == "message" && e.attr("type") == Some("headline"))
        .filter_map(|e| e.get_child("event", EVENT))
        .filter_map(|ev| ev.get_child("items", EVENT))
        .filter(|i| i.attr("node") == Some(node))
        .flat_map(|i| {
            i.children()
                .map(|c| {
                    (
                        c.name().to_string(),
                        c.attr("id").unwrap_or_default().to_string(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `x` subscribes to `y`'s presence and `y` approves.
async fn subscribe(x: &mut RawClient, x_jid: &str, y: &mut RawClient, y_jid: &str) {
    x.send(&format!("<presence to='{y_jid}' type='subscribe'/>"))
        .await;
    y.expect("subscription request", |e| {
        e.name() == "presence" && e.attr("type") == Some("subscribe")
    })
    .await;
    y.send(&format!("<presence to='{x_jid}' type='subscribed'/>"))
        .await;
    x.expect("subscribed", |e| {
        e.name() == "presence" && e.attr("type") == Some("subscribed")
    })
    .await;
}

/// Mutual presence subscription between `a` and `b`.
async fn befriend(a: &mut RawClient, a_jid: &str, b: &mut RawClient, b_jid: &str) {
    subscribe(a, a_jid, b, b_jid).await;
    subscribe(b, b_jid, a, a_jid).await;
    a.sync().await;
    b.sync().await;
}

#[test]
fn pep_publish_notify_access_models_options_and_survival() {
    rt().block_on(async {
        let mut c = TestCluster::start_with(3, fast_raft(), |cfg| {
            cfg.pep.max_item_bytes = 2048;
        });
        c.wait_leader(1, Duration::from_secs(20)).await;
        for u in ["alice", "bob", "carol"] {
            c.create_user(1, u).await.unwrap();
        }
        let mut alice = RawClient::login(c.client_addr(1), "alice", "pw-alice", "phone").await;
        let mut bob = RawClient::login(c.client_addr(2), "bob", "pw-bob", "laptop").await;
        let mut carol = RawClient::login(c.client_addr(3), "carol", "pw-carol", "pc").await;
        alice.send("<presence/>").await;
        carol.send("<presence/>").await;
        bob.send("<presence/>").await;
        for cl in [&mut alice, &mut bob, &mut carol] {
            cl.sync().await;
        }
        befriend(&mut alice, "alice@localhost", &mut bob, "bob@localhost").await;

        // Disco: the account is a PEP service with publish-options.
        let d = iq(
            &mut alice,
            "d1",
            "<iq type='get' id='d1'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        )
        .await;
        let q = d.get_child("query", ns::DISCO_INFO).expect("disco");
        assert!(q.children().any(|i| i.attr("category") == Some("pubsub")
            && i.attr("type") == Some("pep")), "{d}");
        for f in ["http://jabber.org/protocol/pubsub#publish-options", "http://jabber.org/protocol/pubsub#access-whitelist"] {
            assert!(q.children().any(|x| x.attr("var") == Some(f)), "{f}: {d}");
        }
        // A contact sees it; a non-contact gets what a missing account
        // gets (nothing revealed).
        let d = iq(&mut bob, "d2", "<iq type='get' id='d2' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
        assert_eq!(d.attr("type"), Some("result"), "{d}");
        let d = iq(&mut carol, "d3", "<iq type='get' id='d3' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
        let none = iq(&mut carol, "d4", "<iq type='get' id='d4' to='nobody@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
        assert_eq!(stanza_error(&d).as_deref(), Some("service-unavailable"), "{d}");
        assert_eq!(stanza_error(&d), stanza_error(&none), "{none}");

        // bob's client wants avatar metadata and devices, not tunes: the
        // server asks it (XEP-0115 §6.2) and remembers.
        let bob_features = [
            "http://jabber.org/protocol/caps",
            "urn:xmpp:avatar:metadata+notify",
            "eu.siacs.conversations.axolotl.devicelist+notify",
            "urn:xmpp:bookmarks:1+notify",
        ];
        online_with_caps(&mut bob, &bob_features, true).await;
        // alice's client wants her own devices.
        online_with_caps(&mut alice, &["eu.siacs.conversations.axolotl.devicelist+notify"], true).await;

        // Publish (node 1) -> result, then bob (node 2) is notified; a
        // node bob does not +notify is not sent to him.
        let r = iq(&mut alice, "p1", &publish("p1", AVATAR, "a1", "<metadata xmlns='urn:xmpp:avatar:metadata'/>", "")).await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        let r = iq(&mut alice, "p2", &publish("p2", TUNE, "t1", "<tune xmlns='http://jabber.org/protocol/tune'/>", "")).await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        let got = bob
            .expect("avatar notification", |e| !events(std::slice::from_ref(e), AVATAR).is_empty())
            .await;
        assert_eq!(got.attr("from"), Some("alice@localhost"), "{got}");
        assert_eq!(events(&[got], AVATAR), [("item".to_string(), "a1".to_string())]);
        let mut seen = bob.sync().await;
        // The tune was published after the avatar: had it been sent, it
        // would be here by now (same path, same order).
        seen.extend(alice.sync().await);
        assert!(events(&seen, TUNE).is_empty(), "tune sent without +notify: {seen:?}");

        // Access models: presence (default): the contact reads, the
        // non-contact is not authorized (XEP-0060 §6.5.9.3).
        let r = iq(&mut bob, "i1", &items_of("alice@localhost", "i1", AVATAR)).await;
        assert_eq!(item_ids(&r), ["a1"], "{r}");
        let r = iq(&mut carol, "i2", &items_of("alice@localhost", "i2", AVATAR)).await;
        assert_eq!(stanza_error(&r).as_deref(), Some("not-authorized"), "{r}");
        assert_eq!(app_error(&r).as_deref(), Some("presence-subscription-required"), "{r}");
        // An account that does not exist looks like a missing node.
        let r = iq(&mut carol, "i3", &items_of("nobody@localhost", "i3", AVATAR)).await;
        assert_eq!(stanza_error(&r).as_deref(), Some("item-not-found"), "{r}");
        // Only the owner publishes.
        let r = iq(&mut carol, "p3", &publish("p3", AVATAR, "x", "<x xmlns='y'/>", "").replace("<iq ", "<iq to='alice@localhost' ")).await;
        assert_eq!(stanza_error(&r).as_deref(), Some("forbidden"), "{r}");

        // Open (OMEMO bundles): anyone reads.
        let bundle = format!("{DEVICES}.bundles:42");
        let r = iq(&mut alice, "p4", &publish("p4", &bundle, "current", "<bundle xmlns='eu.siacs.conversations.axolotl'/>", &field("pubsub#access_model", "open"))).await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        let r = iq(&mut carol, "i4", &items_of("alice@localhost", "i4", &bundle)).await;
        assert_eq!(item_ids(&r), ["current"], "{r}");

        // publish-options that the node does not have: conflict +
        // precondition-not-met (§7.1.5); nothing published.
        let r = iq(&mut alice, "p5", &publish("p5", AVATAR, "a2", "<metadata xmlns='urn:xmpp:avatar:metadata'/>", &field("pubsub#access_model", "open"))).await;
        assert_eq!(stanza_error(&r).as_deref(), Some("conflict"), "{r}");
        assert_eq!(app_error(&r).as_deref(), Some("precondition-not-met"), "{r}");
        let r = iq(&mut alice, "i5", &items_of("", "i5", AVATAR)).await;
        assert_eq!(item_ids(&r), ["a1"], "{r}");
        // Matching options publish.
        let r = iq(&mut alice, "p6", &publish("p6", &bundle, "current", "<bundle xmlns='eu.siacs.conversations.axolotl'/>", &field("pubsub#access_model", "open"))).await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");

        // Whitelist: the owner alone; bob neither reads nor is told.
        let r = iq(&mut alice, "p7", &publish("p7", DEVICES, "current", "<list xmlns='eu.siacs.conversations.axolotl'/>", &field("pubsub#access_model", "whitelist"))).await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        alice.expect("own devicelist notification", |e| !events(std::slice::from_ref(e), DEVICES).is_empty()).await;
        let r = iq(&mut bob, "i6", &items_of("alice@localhost", "i6", DEVICES)).await;
        assert_eq!(stanza_error(&r).as_deref(), Some("not-allowed"), "{r}");
        assert_eq!(app_error(&r).as_deref(), Some("closed-node"), "{r}");
        let seen = bob.sync().await;
        assert!(events(&seen, DEVICES).is_empty(), "whitelist notified bob: {seen:?}");

        // max_items: the oldest go.
        let opts = field("pubsub#max_items", "2");
        for (i, id) in ["m1", "m2", "m3"].iter().enumerate() {
            let r = iq(&mut alice, &format!("pm{i}"), &publish(&format!("pm{i}"), "urn:test:many", id, "<x xmlns='urn:test'/>", &opts)).await;
            assert_eq!(r.attr("type"), Some("result"), "{r}");
        }
        let r = iq(&mut alice, "i7", &items_of("", "i7", "urn:test:many")).await;
        assert_eq!(item_ids(&r), ["m2", "m3"], "{r}");

        // Retract with notify: bob is told.
        let r = iq(&mut alice, "r1", &format!("<iq type='set' id='r1'><pubsub xmlns='{PUBSUB}'><retract node='{AVATAR}' notify='true'><item id='a1'/></retract></pubsub></iq>")).await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        bob.expect("retract notification", |e| {
            events(std::slice::from_ref(e), AVATAR).contains(&("retract".to_string(), "a1".to_string()))
        })
        .await;
        let r = iq(&mut alice, "r2", &format!("<iq type='set' id='r2'><pubsub xmlns='{PUBSUB}'><retract node='{AVATAR}'><item id='a1'/></retract></pubsub></iq>")).await;
        assert_eq!(stanza_error(&r).as_deref(), Some("item-not-found"), "{r}");

        // Limits: a payload over pep.max_item_bytes.
        let big = format!("<data xmlns='urn:xmpp:avatar:data'>{}</data>", "A".repeat(3000));
        let r = iq(&mut alice, "p8", &publish("p8", "urn:xmpp:avatar:data", "big", &big, "")).await;
        assert_eq!(stanza_error(&r).as_deref(), Some("not-acceptable"), "{r}");
        assert_eq!(app_error(&r).as_deref(), Some("payload-too-big"), "{r}");
        // Two payloads in one item.
        let r = iq(&mut alice, "p9", &publish("p9", TUNE, "t2", "<a xmlns='x'/><b xmlns='x'/>", "")).await;
        assert_eq!(app_error(&r).as_deref(), Some("invalid-payload"), "{r}");

        // XEP-0163 §4.3.2: a new session of bob (node 3) with the same
        // caps gets the last item of what it wants on coming online.
        let r = iq(&mut alice, "p10", &publish("p10", AVATAR, "a3", "<metadata xmlns='urn:xmpp:avatar:metadata'/>", "")).await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        let mut bob2 = RawClient::login(c.client_addr(3), "bob", "pw-bob", "tablet").await;
        online_with_caps(&mut bob2, &bob_features, false).await;
        let seen = bob2.sync().await;
        let _ = seen;
        // (The last item may come before the sync's answer or with it.)
        let mut bob2b = RawClient::login(c.client_addr(3), "bob", "pw-bob", "watch").await;
        let ver = caps_ver(&bob_features);
        bob2b.send(&format!("<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://test' ver='{ver}'/></presence>")).await;
        bob2b.expect("last avatar item on coming online", |e| {
            events(std::slice::from_ref(e), AVATAR) == [("item".to_string(), "a3".to_string())]
        })
        .await;

        // An acknowledged publish survives kill -9 of the node that
        // acknowledged it.
        let r = iq(&mut alice, "p11", &publish("p11", TUNE, "durable", "<tune xmlns='http://jabber.org/protocol/tune'><title>x</title></tune>", "")).await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        c.kill(1);
        let r = iq(&mut bob, "i8", &items_of("alice@localhost", "i8", TUNE)).await;
        assert!(item_ids(&r).contains(&"durable".to_string()), "{r}");
        let r = iq(&mut carol, "i9", &items_of("alice@localhost", "i9", &bundle)).await;
        assert_eq!(item_ids(&r), ["current"], "{r}");
    });
}

#[test]
fn vcard_private_storage_bookmarks_server_info_and_pending_out() {
    rt().block_on(async {
        let c = TestCluster::start_with(3, fast_raft(), |cfg| {
            cfg.pep.max_vcard_bytes = 2048;
            cfg.pep.max_private_bytes = 1024;
            cfg.server_info.abuse = vec!["mailto:abuse@localhost".into()];
            cfg.server_info.outage_status = vec!["https://status.localhost/".into()];
        });
        c.wait_leader(1, Duration::from_secs(20)).await;
        for u in ["alice", "bob"] {
            c.create_user(1, u).await.unwrap();
        }
        let mut alice = RawClient::login(c.client_addr(1), "alice", "pw-alice", "phone").await;
        let mut alice2 = RawClient::login(c.client_addr(3), "alice", "pw-alice", "laptop").await;
        let mut bob = RawClient::login(c.client_addr(2), "bob", "pw-bob", "laptop").await;
        for cl in [&mut alice, &mut alice2, &mut bob] {
            cl.send("<presence/>").await;
            cl.sync().await;
        }

        // Server disco: XEP-0157 and XEP-0455 forms, vcard-temp, private.
        let d = iq(&mut bob, "s1", "<iq type='get' id='s1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
        let q = d.get_child("query", ns::DISCO_INFO).expect("disco");
        let form_types: Vec<String> = q
            .children()
            .filter(|x| x.is("x", ns::XDATA))
            .flat_map(|x| x.children().filter(|f| f.attr("var") == Some("FORM_TYPE")).map(|f| f.children().map(|v| v.text()).collect::<String>()).collect::<Vec<_>>())
            .collect();
        assert_eq!(form_types, ["http://jabber.org/network/serverinfo", "urn:xmpp:sos:0"], "{d}");
        let xml = d.to_string();
        assert!(xml.contains("mailto:abuse@localhost") && xml.contains("https://status.localhost/"), "{d}");
        assert!(q.children().any(|f| f.attr("var") == Some("vcard-temp")), "{d}");

        // XEP-0054: empty at first, set on node 1, read on node 2 by
        // another user; over the limit: not-acceptable.
        let r = iq(&mut alice, "v1", "<iq type='get' id='v1'><vCard xmlns='vcard-temp'/></iq>").await;
        assert!(r.get_child("vCard", "vcard-temp").is_some_and(|v| v.children().next().is_none()), "{r}");
        let r = iq(&mut alice, "v2", "<iq type='set' id='v2'><vCard xmlns='vcard-temp'><FN>Alice</FN><PHOTO><TYPE>image/png</TYPE><BINVAL>aGVsbG8=</BINVAL></PHOTO></vCard></iq>").await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        let r = iq(&mut bob, "v3", "<iq type='get' id='v3' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>").await;
        let fn_ = r.get_child("vCard", "vcard-temp").and_then(|v| v.get_child("FN", "vcard-temp")).map(|f| f.text());
        assert_eq!(fn_.as_deref(), Some("Alice"), "{r}");
        let big = format!("<iq type='set' id='v4'><vCard xmlns='vcard-temp'><DESC>{}</DESC></vCard></iq>", "d".repeat(3000));
        let r = iq(&mut alice, "v4", &big).await;
        assert_eq!(stanza_error(&r).as_deref(), Some("not-acceptable"), "{r}");
        // XEP-0153: alice's next presence carries the photo's SHA-1.
        alice.send("<presence><show>away</show></presence>").await;
        let p = alice2
            .expect("alice's presence", |e| e.name() == "presence" && e.attr("from") == Some("alice@localhost/phone"))
            .await;
        let photo = p.get_child("x", "vcard-temp:x:update").and_then(|x| x.get_child("photo", "vcard-temp:x:update")).map(|p| p.text());
        assert_eq!(photo.as_deref(), Some("aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d"), "{p}");

        // XEP-0049: set, get (another node), reserved namespaces, no child,
        // another user's, the budget.
        let r = iq(&mut alice, "x1", "<iq type='set' id='x1'><query xmlns='jabber:iq:private'><prefs xmlns='urn:test:prefs'><nick>A</nick></prefs></query></iq>").await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        let r = iq(&mut alice2, "x2", "<iq type='get' id='x2'><query xmlns='jabber:iq:private'><prefs xmlns='urn:test:prefs'/></query></iq>").await;
        let nick = r.get_child("query", "jabber:iq:private").and_then(|q| q.get_child("prefs", "urn:test:prefs")).and_then(|p| p.get_child("nick", "urn:test:prefs")).map(|n| n.text());
        assert_eq!(nick.as_deref(), Some("A"), "{r}");
        let r = iq(&mut alice, "x3", "<iq type='set' id='x3'><query xmlns='jabber:iq:private'><vCard xmlns='vcard-temp'/></query></iq>").await;
        assert_eq!(stanza_error(&r).as_deref(), Some("not-acceptable"), "{r}");
        let r = iq(&mut alice, "x4", "<iq type='set' id='x4'><query xmlns='jabber:iq:private'><q xmlns='jabber:client'/></query></iq>").await;
        assert_eq!(stanza_error(&r).as_deref(), Some("not-acceptable"), "{r}");
        let r = iq(&mut alice, "x5", "<iq type='get' id='x5'><query xmlns='jabber:iq:private'/></iq>").await;
        assert_eq!(stanza_error(&r).as_deref(), Some("not-acceptable"), "{r}");
        let r = iq(&mut bob, "x6", "<iq type='get' id='x6' to='alice@localhost'><query xmlns='jabber:iq:private'><prefs xmlns='urn:test:prefs'/></query></iq>").await;
        assert_eq!(stanza_error(&r).as_deref(), Some("forbidden"), "{r}");
        let r = iq(&mut alice, "x7", &format!("<iq type='set' id='x7'><query xmlns='jabber:iq:private'><big xmlns='urn:test:big'>{}</big></query></iq>", "b".repeat(1200))).await;
        assert_eq!(stanza_error(&r).as_deref(), Some("resource-constraint"), "{r}");

        // XEP-0402 bookmarks: the XEP's publish-options, two bookmarks
        // kept, the owner's other client notified (it +notifies), bob
        // locked out.
        online_with_caps(&mut alice2, &["urn:xmpp:bookmarks:1+notify"], true).await;
        let opts = [
            field("pubsub#persist_items", "true"),
            field("pubsub#max_items", "max"),
            field("pubsub#send_last_published_item", "never"),
            field("pubsub#access_model", "whitelist"),
        ]
        .concat();
        for (i, room) in ["a@conference.localhost", "b@conference.localhost"].iter().enumerate() {
            let id = format!("b{i}");
            let r = iq(&mut alice, &id, &publish(&id, BOOKMARKS, room, "<conference xmlns='urn:xmpp:bookmarks:1' autojoin='true'/>", &opts)).await;
            assert_eq!(r.attr("type"), Some("result"), "{r}");
            alice2
                .expect("bookmark notification", |e| events(std::slice::from_ref(e), BOOKMARKS).contains(&("item".to_string(), room.to_string())))
                .await;
        }
        let r = iq(&mut alice2, "b9", &items_of("", "b9", BOOKMARKS)).await;
        assert_eq!(item_ids(&r), ["a@conference.localhost", "b@conference.localhost"], "{r}");
        let r = iq(&mut bob, "b10", &items_of("alice@localhost", "b10", BOOKMARKS)).await;
        assert_eq!(stanza_error(&r).as_deref(), Some("not-allowed"), "{r}");

        // RFC 6121 §3.1.2: a request to an account that does not exist
        // still puts the item, asking, in the roster and pushes it.
        alice.send("<presence to='nobody@localhost' type='subscribe'/>").await;
        let push = alice
            .expect("roster push", |e| e.name() == "iq" && e.attr("type") == Some("set") && e.get_child("query", "jabber:iq:roster").is_some())
            .await;
        let item = push.get_child("query", "jabber:iq:roster").and_then(|q| q.children().next()).cloned().expect("item");
        assert_eq!(item.attr("jid"), Some("nobody@localhost"), "{push}");
        assert_eq!(item.attr("ask"), Some("subscribe"), "{push}");
        alice2
            .expect("roster push on the other resource", |e| e.name() == "iq" && e.to_string().contains("nobody@localhost"))
            .await;
        let r = iq(&mut alice, "ro", "<iq type='get' id='ro'><query xmlns='jabber:iq:roster'/></iq>").await;
        assert!(r.to_string().contains("nobody@localhost"), "{r}");
    });
}
