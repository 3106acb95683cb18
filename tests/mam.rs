//! Black-box tests of XEP-0313 Message Archive Management on a 3-node
//! cluster of real `starling serve` processes driven by raw XMPP clients:
//! a conversation across two nodes paged on a third (RSM max, after,
//! before, the last page; `with`, `start`, `end`; `complete`, `count`),
//! both parties' archives with the recipient's stanza ids as archive ids,
//! offline messages archived too, an unknown id, bad forms, form
//! discovery and disco, preferences (`never`, `always`), and the archive
//! surviving the death of the node that wrote it right after the ack.
//! (A retried batch stored once is tested where it is applied:
//! `raft/src/archive.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::xmpp::{enable_sm, read_messages, send_acked, stanza_error, RawClient};
use common::{fast_raft, rt, TestCluster};
use starling::xmpp::{ns, Element};

const MAM: &str = "urn:xmpp:mam:2";
const RSM: &str = "http://jabber.org/protocol/rsm";
const FORWARD: &str = "urn:xmpp:forward:0";
const RETRACT: &str = "urn:xmpp:message-retract:1";

/// One archived message as a query returned it.
#[derive(Debug, Clone)]
struct Item {
    id: String,
    body: String,
    stamp: String,
    /// An XEP-0424 tombstone: `<retracted/>` in place of the message.
    retracted: bool,
}

/// The end of a query: `complete`, RSM first, last, count.
#[derive(Debug)]
struct Fin {
    complete: bool,
    first: Option<String>,
    last: Option<String>,
    count: Option<usize>,
}

/// Sends a MAM query with `form` fields and `rsm` set children; returns
/// its items and its `<fin>`, or the iq error.
async fn query(
    c: &mut RawClient,
    id: &str,
    form: &str,
    rsm: &str,
) -> Result<(Vec<Item>, Fin), Element> {
    let x = if form.is_empty() {
        String::new()
    } else {
        format!(
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>\
             <value>{MAM}</value></field>{form}</x>"
        )
    };
    let set = if rsm.is_empty() {
        String::new()
    } else {
        format!("<set xmlns='{RSM}'>{rsm}</set>")
    };
    c.send(&format!(
        "<iq type='set' id='{id}'><query xmlns='{MAM}' queryid='q-{id}'>{x}{set}</query></iq>"
    ))
    .await;
    let mut items = Vec::new();
    loop {
        let el = c.next().await;
        if el.name() == "iq" && el.attr("id") == Some(id) {
            if el.attr("type") != Some("result") {
                return Err(el);
            }
            let fin = el
                .get_child("fin", MAM)
                .unwrap_or_else(|| panic!("no fin: {el}"));
            assert_eq!(fin.attr("queryid"), Some(format!("q-{id}").as_str()));
            let set = fin
                .get_child("set", RSM)
                .unwrap_or_else(|| panic!("no set: {el}"));
            let text = |n: &str| set.get_child(n, RSM).map(|e| e.text());
            return Ok((
                items,
                Fin {
                    complete: fin.attr("complete") == Some("true"),
                    first: text("first"),
                    last: text("last"),
                    count: text("count").and_then(|c| c.parse().ok()),
                },
            ));
        }
        let Some(r) = el.get_child("result", MAM) else {
            continue;
        };
        assert_eq!(r.attr("queryid"), Some(format!("q-{id}").as_str()), "{el}");
        let fwd = r
            .get_child("forwarded", FORWARD)
            .unwrap_or_else(|| panic!("{el}"));
        let m = fwd
            .get_child("message", ns::CLIENT)
            .unwrap_or_else(|| panic!("{el}"));
        items.push(Item {
            id: r.attr("id").unwrap().to_string(),
            body: m
                .get_child("body", ns::CLIENT)
                .map(|b| b.text())
                .unwrap_or_default(),
            retracted: m.has_child("retracted", RETRACT),
            stamp: fwd
                .get_child("delay", ns::DELAY)
                .and_then(|d| d.attr("stamp"))
                .unwrap_or_else(|| panic!("no delay: {el}"))
                .to_string(),
        });
    }
}

fn bodies(items: &[Item]) -> Vec<&str> {
    items.iter().map(|i| i.body.as_str()).collect()
}

fn field(var: &str, value: &str) -> String {
    format!("<field var='{var}'><value>{value}</value></field>")
}

/// Sends an iq and returns its answer.
async fn iq(c: &mut RawClient, id: &str, xml: &str) -> Element {
    c.send(xml).await;
    c.expect(&format!("answer to iq {id}"), |e| {
        e.name() == "iq" && e.attr("id") == Some(id)
    })
    .await
}

async fn online(c: &TestCluster, node: u64, user: &str, resource: &str) -> RawClient {
    let mut cl = RawClient::login(c.client_addr(node), user, &format!("pw-{user}"), resource).await;
    cl.send("<presence/>").await;
    cl
}

#[test]
fn a_conversation_across_nodes_is_paged_on_a_third_from_both_archives() {
    rt().block_on(async {
        let c = TestCluster::start_with(3, fast_raft(), |cfg| cfg.archive.enabled = true);
        c.wait_leader(1, Duration::from_secs(20)).await;
        for u in ["alice", "bob", "carol"] {
            c.create_user(1, u).await.unwrap();
        }
        let mut alice = online(&c, 1, "alice", "desk").await;
        let mut bob = online(&c, 2, "bob", "phone").await;
        enable_sm(&mut alice, false).await;
        enable_sm(&mut bob, false).await;
        // a1 b1 a2 b2 a3 b3, each acknowledged before the next is sent.
        let mut bob_ids = Vec::new();
        for i in 1..=3u32 {
            send_acked(&mut alice, "bob@localhost", &[format!("a{i}")], i - 1).await;
            let got = read_messages(&mut bob, 1, "bob@localhost", false, Duration::from_secs(10)).await;
            bob_ids.push(got[0].1.clone());
            tokio::time::sleep(Duration::from_millis(20)).await;
            send_acked(&mut bob, "alice@localhost", &[format!("b{i}")], i - 1).await;
            read_messages(&mut alice, 1, "alice@localhost", false, Duration::from_secs(10)).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // carol is offline: her message is queued, and archived all the same.
        send_acked(&mut alice, "carol@localhost", &["to-carol".to_string()], 3).await;

        // alice pages through her archive from node 3.
        let mut a3 = RawClient::login(c.client_addr(3), "alice", "pw-alice", "tablet").await;
        let all = ["a1", "b1", "a2", "b2", "a3", "b3", "to-carol"];
        let (items, fin) = query(&mut a3, "all", "", "").await.unwrap();
        assert_eq!(bodies(&items), all);
        assert!(fin.complete);
        assert_eq!(fin.count, Some(7));
        // The archive id of a message to bob is bob's stanza id.
        assert_eq!(items[0].id, bob_ids[0]);
        assert_eq!(items[2].id, bob_ids[1]);

        let (p1, f1) = query(&mut a3, "p1", "", "<max>2</max>").await.unwrap();
        assert_eq!(bodies(&p1), ["a1", "b1"]);
        assert!(!f1.complete);
        assert_eq!((f1.first.as_deref(), f1.last.as_deref()), (Some(p1[0].id.as_str()), Some(p1[1].id.as_str())));
        assert_eq!(f1.count, Some(7));
        let after = format!("<max>2</max><after>{}</after>", f1.last.unwrap());
        let (p2, f2) = query(&mut a3, "p2", "", &after).await.unwrap();
        assert_eq!(bodies(&p2), ["a2", "b2"]);
        assert!(!f2.complete);
        let after = format!("<max>4</max><after>{}</after>", f2.last.unwrap());
        let (p3, f3) = query(&mut a3, "p3", "", &after).await.unwrap();
        assert_eq!(bodies(&p3), ["a3", "b3", "to-carol"]);
        assert!(f3.complete);

        // Backwards from the last page.
        let (l1, g1) = query(&mut a3, "l1", "", "<max>2</max><before/>").await.unwrap();
        assert_eq!(bodies(&l1), ["b3", "to-carol"]);
        assert!(!g1.complete);
        let before = format!("<max>3</max><before>{}</before>", g1.first.unwrap());
        let (l2, g2) = query(&mut a3, "l2", "", &before).await.unwrap();
        assert_eq!(bodies(&l2), ["a2", "b2", "a3"]);
        assert!(!g2.complete);
        let before = format!("<max>3</max><before>{}</before>", g2.first.unwrap());
        let (l3, g3) = query(&mut a3, "l3", "", &before).await.unwrap();
        assert_eq!(bodies(&l3), ["a1", "b1"]);
        assert!(g3.complete);

        // with, start, end.
        let (w, wf) = query(&mut a3, "w1", &field("with", "bob@localhost"), "").await.unwrap();
        assert_eq!((w.len(), wf.count, wf.complete), (6, Some(6), true));
        let (w, _) = query(&mut a3, "w2", &field("with", "bob@localhost/phone"), "").await.unwrap();
        assert_eq!(bodies(&w), ["b1", "b2", "b3"], "a full JID matches only itself");
        let (w, wf) = query(&mut a3, "w3", &field("with", "dave@localhost"), "").await.unwrap();
        assert!(w.is_empty() && wf.complete && wf.count == Some(0));
        let range = format!("{}{}", field("start", &items[2].stamp), field("end", &items[4].stamp));
        let (r, rf) = query(&mut a3, "t1", &range, "<max>2</max>").await.unwrap();
        assert_eq!(bodies(&r), ["a2", "b2"]);
        assert_eq!((rf.count, rf.complete), (Some(3), false));
        let (r, _) = query(&mut a3, "t2", &field("start", &items[5].stamp), "").await.unwrap();
        assert_eq!(bodies(&r), ["b3", "to-carol"]);

        // Bob's archive has the same messages under the same ids.
        let mut b3 = RawClient::login(c.client_addr(3), "bob", "pw-bob", "tablet").await;
        let (bi, bf) = query(&mut b3, "b", "", "").await.unwrap();
        assert_eq!(bodies(&bi), ["a1", "b1", "a2", "b2", "a3", "b3"]);
        assert_eq!(bf.count, Some(6));
        let ids = |v: &[Item]| v.iter().map(|i| i.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&bi), ids(&items[..6]));
        // Carol's, with what was queued for her.
        let mut carol = RawClient::login(c.client_addr(2), "carol", "pw-carol", "x").await;
        let (ci, _) = query(&mut carol, "c", "", "").await.unwrap();
        assert_eq!(bodies(&ci), ["to-carol"]);

        // An unknown id: item-not-found; bad forms: bad-request.
        let e = query(&mut a3, "u1", "", "<after>no-such-id</after>").await.unwrap_err();
        assert_eq!(stanza_error(&e).as_deref(), Some("item-not-found"), "{e}");
        let e = query(&mut a3, "u2", "", "<before>no-such-id</before>").await.unwrap_err();
        assert_eq!(stanza_error(&e).as_deref(), Some("item-not-found"), "{e}");
        let e = query(&mut a3, "u3", &field("colour", "red"), "").await.unwrap_err();
        assert_eq!(stanza_error(&e).as_deref(), Some("bad-request"), "{e}");
        let e = query(&mut a3, "u4", &field("start", "last tuesday"), "").await.unwrap_err();
        assert_eq!(stanza_error(&e).as_deref(), Some("bad-request"), "{e}");

        // Form discovery and disco#info of the account.
        let f = iq(&mut a3, "f", &format!("<iq type='get' id='f'><query xmlns='{MAM}'/></iq>")).await;
        let x = f
            .get_child("query", MAM)
            .and_then(|q| q.get_child("x", ns::XDATA))
            .unwrap_or_else(|| panic!("{f}"));
        let vars: Vec<&str> = x.children().filter_map(|f| f.attr("var")).collect();
        for v in ["FORM_TYPE", "with", "start", "end"] {
            assert!(vars.contains(&v), "{v} in {f}");
        }
        let d = iq(
            &mut a3,
            "d",
            "<iq type='get' id='d' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        )
        .await;
        let q = d.get_child("query", ns::DISCO_INFO).unwrap_or_else(|| panic!("{d}"));
        assert!(q.children().any(|f| f.attr("var") == Some(MAM)), "{d}");
    });
}

#[test]
fn preferences_decide_what_is_archived() {
    rt().block_on(async {
        let c = TestCluster::start_with(3, fast_raft(), |cfg| cfg.archive.enabled = true);
        c.wait_leader(1, Duration::from_secs(20)).await;
        for u in ["dave", "erin"] {
            c.create_user(1, u).await.unwrap();
        }
        let mut erin = online(&c, 2, "erin", "r").await;
        let prefs = |id: &str, inner: &str| {
            format!("<iq type='set' id='{id}'><prefs xmlns='{MAM}' {inner}</prefs></iq>")
        };
        let r = iq(
            &mut erin,
            "p1",
            &prefs("p1", "default='never'><always/><never/>"),
        )
        .await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        // Read back on another node.
        let mut erin3 = RawClient::login(c.client_addr(3), "erin", "pw-erin", "s").await;
        let g = iq(
            &mut erin3,
            "g",
            &format!("<iq type='get' id='g'><prefs xmlns='{MAM}'/></iq>"),
        )
        .await;
        assert_eq!(
            g.get_child("prefs", MAM).and_then(|p| p.attr("default")),
            Some("never"),
            "{g}"
        );

        let mut dave = online(&c, 1, "dave", "r").await;
        enable_sm(&mut dave, false).await;
        send_acked(&mut dave, "erin@localhost", &["one".to_string()], 0).await;
        // Never for erin, but dave's default is always.
        let (d, _) = query(&mut dave, "d1", "", "").await.unwrap();
        assert_eq!(bodies(&d), ["one"]);
        let (e, ef) = query(&mut erin3, "e1", "", "").await.unwrap();
        assert!(e.is_empty() && ef.count == Some(0), "{e:?}");
        // Always dave, never anyone else.
        let r = iq(
            &mut erin,
            "p2",
            &prefs(
                "p2",
                "default='never'><always><jid>dave@localhost</jid></always><never/>",
            ),
        )
        .await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        // h: "one" and the query before.
        send_acked(&mut dave, "erin@localhost", &["two".to_string()], 2).await;
        let (e, _) = query(&mut erin3, "e2", "", "").await.unwrap();
        assert_eq!(bodies(&e), ["two"]);
        // A bad default is refused.
        let r = iq(&mut erin, "p3", &prefs("p3", "default='sometimes'>")).await;
        assert_eq!(stanza_error(&r).as_deref(), Some("bad-request"), "{r}");
    });
}

#[test]
fn the_archive_survives_the_death_of_the_node_that_wrote_it() {
    rt().block_on(async {
        // Archive batches wait 300 ms: an ack that did not wait for the
        // archive commit would come before it, and the kill below would
        // lose the entries.
        let mut c = TestCluster::start_with(3, fast_raft(), |cfg| {
            cfg.archive.enabled = true;
            cfg.archive.batch_ms = 300;
        });
        c.wait_leader(1, Duration::from_secs(20)).await;
        for u in ["alice", "bob"] {
            c.create_user(1, u).await.unwrap();
        }
        let mut bob = online(&c, 2, "bob", "phone").await;
        let mut alice = online(&c, 1, "alice", "desk").await;
        enable_sm(&mut alice, false).await;
        let sent: Vec<String> = (0..5).map(|i| format!("m{i}")).collect();
        send_acked(&mut alice, "bob@localhost", &sent, 0).await;
        c.kill(1);
        let got = read_messages(&mut bob, 5, "bob@localhost", false, Duration::from_secs(10)).await;
        let mut b3 = RawClient::login(c.client_addr(3), "bob", "pw-bob", "tablet").await;
        let (items, _) = query(&mut b3, "b", "", "").await.unwrap();
        assert_eq!(bodies(&items), ["m0", "m1", "m2", "m3", "m4"]);
        let ids: Vec<String> = got.iter().map(|(_, id)| id.clone()).collect();
        assert_eq!(items.iter().map(|i| i.id.clone()).collect::<Vec<_>>(), ids);
        let mut a2 = RawClient::login(c.client_addr(2), "alice", "pw-alice", "tablet").await;
        let (items, _) = query(&mut a2, "a", "", "").await.unwrap();
        assert_eq!(bodies(&items), ["m0", "m1", "m2", "m3", "m4"]);
    });
}

/// Sends `xml` then `<r/>` and waits for the ack `h == want`.
async fn send_raw_acked(c: &mut RawClient, xml: &str, want: u32) {
    c.send(&format!("{xml}<r xmlns='urn:xmpp:sm:3'/>")).await;
    loop {
        let a = c.expect("sm ack", |e| e.is("a", ns::SM)).await;
        let h: u32 = a.attr("h").and_then(|h| h.parse().ok()).unwrap();
        if h == want {
            return;
        }
        assert!(h < want, "acked more than was sent: {a}");
    }
}

fn retraction(to: &str, id: &str, target: &str) -> String {
    format!(
        "<message to='{to}' type='chat' id='{id}'><retract xmlns='{RETRACT}' id='{target}'/>\
         <fallback xmlns='urn:xmpp:fallback:0' for='{RETRACT}'/>\
         <body>retracted {target}</body></message>"
    )
}

#[test]
fn a_sender_retracts_its_own_message_from_both_archives_and_no_one_elses() {
    rt().block_on(async {
        let c = TestCluster::start_with(3, fast_raft(), |cfg| cfg.archive.enabled = true);
        c.wait_leader(1, Duration::from_secs(20)).await;
        for u in ["alice", "bob"] {
            c.create_user(1, u).await.unwrap();
        }
        let mut alice = online(&c, 1, "alice", "desk").await;
        let mut bob = online(&c, 2, "bob", "phone").await;
        enable_sm(&mut alice, false).await;
        enable_sm(&mut bob, false).await;
        let sent = ["keep".to_string(), "oops".to_string()];
        send_acked(&mut alice, "bob@localhost", &sent, 0).await;
        // bob cannot retract alice's message.
        send_raw_acked(&mut bob, &retraction("alice@localhost", "r0", "keep"), 1).await;
        // alice retracts hers (by the id she sent it with).
        send_raw_acked(&mut alice, &retraction("bob@localhost", "r1", "oops"), 3).await;
        for user in ["alice", "bob"] {
            let pw = format!("pw-{user}");
            let mut cl = RawClient::login(c.client_addr(3), user, &pw, "tablet").await;
            let (items, _) = query(&mut cl, "x", "", "").await.unwrap();
            let seen: Vec<(&str, bool)> = items
                .iter()
                .map(|i| (i.body.as_str(), i.retracted))
                .collect();
            let want = [
                ("keep", false),
                ("", true),
                ("retracted keep", false),
                ("retracted oops", false),
            ];
            assert_eq!(seen, want, "{user}'s archive");
        }
    });
}

/// A query right after the ack, on the other nodes, sees the message:
/// the archive entry was committed before the ack, and a query first
/// confirms a read index, so a follower that has not applied it yet
/// catches up before it answers.
#[test]
fn a_query_right_after_the_ack_sees_the_message_on_every_node() {
    rt().block_on(async {
        let c = TestCluster::start_with(3, fast_raft(), |cfg| cfg.archive.enabled = true);
        c.wait_leader(1, Duration::from_secs(20)).await;
        for u in ["alice", "bob"] {
            c.create_user(1, u).await.unwrap();
        }
        let mut alice = online(&c, 1, "alice", "desk").await;
        enable_sm(&mut alice, false).await;
        let mut readers = Vec::new();
        for node in [2, 3] {
            readers.push(
                RawClient::login(
                    c.client_addr(node),
                    "alice",
                    "pw-alice",
                    &format!("r{node}"),
                )
                .await,
            );
        }
        for i in 0..20u32 {
            let body = format!("n{i}");
            send_acked(&mut alice, "bob@localhost", std::slice::from_ref(&body), i).await;
            for (k, r) in readers.iter_mut().enumerate() {
                let id = format!("q{i}-{k}");
                let (items, _) = query(r, &id, "", "<max>1</max><before/>").await.unwrap();
                assert_eq!(
                    bodies(&items),
                    [body.as_str()],
                    "query {id} right after the ack"
                );
            }
        }
    });
}
