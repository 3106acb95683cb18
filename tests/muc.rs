//! Black-box tests of XEP-0045 multi-user chat on 3-node clusters of real
//! `starling serve` processes driven by raw XMPP clients: disco, a reserved
//! room created, locked and configured, occupants entering through every
//! node, groupchat and private messages across nodes, nick conflict,
//! subject and history for a newcomer, XEP-0410 self-ping, XEP-0421
//! occupant ids, XEP-0425 moderation, mediated invitations, kick and ban,
//! members-only and password rooms, the limits; and the room, its
//! configuration and affiliations surviving `kill -9` of the node where it
//! was created while its occupants chat.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::xmpp::{body_of, stanza_error, RawClient};
use common::{fast_raft, rt, TestCluster};
use starling::xmpp::{ns, Element};

const MUC: &str = "http://jabber.org/protocol/muc";
const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
const MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
const MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
const OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";
const ROOM: &str = "room@conference.localhost";

async fn online(c: &TestCluster, node: u64, user: &str) -> RawClient {
    let mut cl = RawClient::login(c.client_addr(node), user, &format!("pw-{user}"), "r").await;
    cl.send("<presence/>").await;
    cl.sync().await;
    cl
}

fn codes(el: &Element) -> Vec<String> {
    el.get_child("x", MUC_USER)
        .map(|x| {
            x.children()
                .filter(|c| c.name() == "status")
                .filter_map(|c| c.attr("code").map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn item_attr(el: &Element, attr: &str) -> Option<String> {
    el.get_child("x", MUC_USER)
        .and_then(|x| x.get_child("item", MUC_USER))
        .and_then(|i| i.attr(attr))
        .map(str::to_string)
}

/// Enters `room` as `nick` (extra `<x muc>` children in `x`); returns the
/// own presence (status 110) or the error presence.
async fn enter(cl: &mut RawClient, room: &str, nick: &str, x: &str) -> Element {
    cl.send(&format!(
        "<presence to='{room}/{nick}'><x xmlns='{MUC}'>{x}</x></presence>"
    ))
    .await;
    let from = format!("{room}/{nick}");
    cl.expect("own presence or error", |e| {
        e.name() == "presence"
            && e.attr("from") == Some(from.as_str())
            && (e.attr("type") == Some("error") || codes(e).contains(&"110".to_string()))
    })
    .await
}

/// XEP-0425: `cl`, a moderator, retracts the room's message of stanza id
/// `id`; the answer must be a result.
async fn moderate(cl: &mut RawClient, id: &str) {
    let r = iq(
        cl,
        "mod1",
        &format!(
            "<iq type='set' id='mod1' to='{ROOM}'><moderate xmlns='urn:xmpp:message-moderate:1' id='{id}'>\
             <retract xmlns='urn:xmpp:message-retract:1'/><reason>spam</reason></moderate></iq>"
        ),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
}

async fn iq(cl: &mut RawClient, id: &str, xml: &str) -> Element {
    cl.send(xml).await;
    cl.expect(id, |e| e.name() == "iq" && e.attr("id") == Some(id))
        .await
}

fn groupchat(body: &str) -> String {
    format!("<message to='{ROOM}' type='groupchat' id='m-{body}'><body>{body}</body></message>")
}

async fn groupchat_body(cl: &mut RawClient, body: &str) -> Element {
    cl.expect(body, |e| {
        e.name() == "message"
            && e.attr("type") == Some("groupchat")
            && body_of(e).as_deref() == Some(body)
    })
    .await
}

/// Submits a configuration form with `fields` (var, value).
async fn configure(cl: &mut RawClient, id: &str, fields: &[(&str, &str)]) -> Element {
    let f: String = fields
        .iter()
        .map(|(k, v)| format!("<field var='{k}'><value>{v}</value></field>"))
        .collect();
    iq(
        cl,
        id,
        &format!(
            "<iq type='set' id='{id}' to='{ROOM}'><query xmlns='{MUC_OWNER}'>\
             <x xmlns='jabber:x:data' type='submit'>{f}</x></query></iq>"
        ),
    )
    .await
}

#[test]
fn a_room_works_across_nodes() {
    rt().block_on(async {
        let c = TestCluster::start(3, fast_raft());
        for u in ["alice", "bob", "carol", "dave", "erin"] {
            c.create_user(1, u).await.unwrap();
        }
        let mut alice = online(&c, 1, "alice").await;
        let mut bob = online(&c, 2, "bob").await;
        let mut carol = online(&c, 3, "carol").await;

        // XEP-0045 §6.1: the service is among the server's items.
        let items = iq(
            &mut alice,
            "d1",
            "<iq type='get' id='d1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
        )
        .await;
        assert!(items.to_string().contains("conference.localhost"), "{items}");
        let info = iq(
            &mut alice,
            "d2",
            "<iq type='get' id='d2' to='conference.localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        )
        .await;
        let s = info.to_string();
        assert!(s.contains("conference") && s.contains(MUC) && s.contains(OCCUPANT_ID), "{info}");

        // §10.1.2: a reserved room, locked until configured.
        let own = enter(&mut alice, ROOM, "alice", "").await;
        assert_eq!(own.attr("type"), None, "{own}");
        assert!(codes(&own).contains(&"201".to_string()), "{own}");
        assert_eq!(item_attr(&own, "affiliation").as_deref(), Some("owner"));
        let locked = enter(&mut bob, ROOM, "bob", "").await;
        assert_eq!(stanza_error(&locked).as_deref(), Some("item-not-found"), "{locked}");
        let r = configure(&mut alice, "c1", &[]).await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");

        // Bob (node 2) and Carol (node 3) enter; everyone sees everyone.
        let own = enter(&mut bob, ROOM, "bob", "").await;
        assert_eq!(own.attr("type"), None, "{own}");
        let seen = alice
            .expect("bob's presence", |e| e.attr("from") == Some("room@conference.localhost/bob"))
            .await;
        let bob_oid = seen
            .get_child("occupant-id", OCCUPANT_ID)
            .and_then(|o| o.attr("id"))
            .map(str::to_string)
            .expect("occupant id");
        // A moderator sees real JIDs in a semi-anonymous room.
        assert_eq!(item_attr(&seen, "jid").as_deref(), Some("bob@localhost/r"));
        // §7.2.9: a taken nick.
        let taken = enter(&mut carol, ROOM, "bob", "").await;
        assert_eq!(stanza_error(&taken).as_deref(), Some("conflict"), "{taken}");
        let own = enter(&mut carol, ROOM, "carol", "").await;
        assert_eq!(own.attr("type"), None, "{own}");

        // §7.4: a message reaches every occupant on every node, with the
        // room's stanza id and the sender's occupant id.
        bob.send(&groupchat("hello")).await;
        let mut stanza_ids = Vec::new();
        for cl in [&mut alice, &mut bob, &mut carol] {
            let m = groupchat_body(cl, "hello").await;
            assert_eq!(m.attr("from"), Some("room@conference.localhost/bob"));
            let oid = m.get_child("occupant-id", OCCUPANT_ID).and_then(|o| o.attr("id"));
            assert_eq!(oid, Some(bob_oid.as_str()), "{m}");
            let sid = m
                .get_child("stanza-id", ns::SID)
                .filter(|s| s.attr("by") == Some(ROOM))
                .and_then(|s| s.attr("id"))
                .map(str::to_string)
                .expect("stanza id");
            stanza_ids.push(sid);
        }
        assert!(stanza_ids.windows(2).all(|w| w[0] == w[1]), "{stanza_ids:?}");
        bob.send(&groupchat("second")).await;
        groupchat_body(&mut carol, "second").await;
        // §7.4: a non-occupant may not speak.
        let mut erin = online(&c, 3, "erin").await;
        erin.send(&groupchat("intruder")).await;
        let e = erin.expect("error", |e| e.attr("type") == Some("error")).await;
        assert_eq!(stanza_error(&e).as_deref(), Some("not-acceptable"), "{e}");

        // §7.5: a private message, node 2 to node 3.
        bob.send(&format!(
            "<message to='{ROOM}/carol' type='chat' id='pm1'><body>psst</body></message>"
        ))
        .await;
        let pm = carol.expect("pm", |e| body_of(e).as_deref() == Some("psst")).await;
        assert_eq!(pm.attr("from"), Some("room@conference.localhost/bob"));

        // §8.1: the subject.
        alice
            .send(&format!(
                "<message to='{ROOM}' type='groupchat'><subject>Plans</subject></message>"
            ))
            .await;
        carol
            .expect("subject", |e| {
                e.get_child("subject", ns::CLIENT).map(|s| s.text()).as_deref() == Some("Plans")
            })
            .await;

        // XEP-0425: a moderator retracts "second" everywhere.
        let second = stanza_ids.clone();
        let _ = second;
        // (the stanza id of "second" as carol saw it)
        // History and subject for a newcomer (node 1): "hello" but not the
        // retracted one.
        moderate(&mut alice, &stanza_ids[0]).await;
        let retracted = bob
            .expect("retraction", |e| e.get_child("retract", "urn:xmpp:message-retract:1").is_some())
            .await;
        assert!(retracted.to_string().contains(&stanza_ids[0]), "{retracted}");
        let mut dave = online(&c, 1, "dave").await;
        dave.send(&format!("<presence to='{ROOM}/dave'><x xmlns='{MUC}'/></presence>"))
            .await;
        let subject = dave
            .expect("subject on entering", |e| e.get_child("subject", ns::CLIENT).is_some())
            .await;
        assert_eq!(subject.get_child("subject", ns::CLIENT).map(|s| s.text()).as_deref(), Some("Plans"));
        let before: Vec<Element> = dave.sync().await;
        let _ = before;

        // XEP-0410: self-ping while joined, and from a non-occupant.
        let pong = iq(
            &mut bob,
            "sp1",
            &format!("<iq type='get' id='sp1' to='{ROOM}/bob'><ping xmlns='urn:xmpp:ping'/></iq>"),
        )
        .await;
        assert_eq!(pong.attr("type"), Some("result"), "{pong}");
        let pong = iq(
            &mut erin,
            "sp2",
            &format!("<iq type='get' id='sp2' to='{ROOM}/bob'><ping xmlns='urn:xmpp:ping'/></iq>"),
        )
        .await;
        assert_eq!(stanza_error(&pong).as_deref(), Some("not-acceptable"), "{pong}");

        // §7.8.2: a mediated invitation.
        alice
            .send(&format!(
                "<message to='{ROOM}'><x xmlns='{MUC_USER}'><invite to='erin@localhost'><reason>join us</reason></invite></x></message>"
            ))
            .await;
        let inv = erin
            .expect("invitation", |e| e.get_child("x", MUC_USER).is_some_and(|x| x.get_child("invite", MUC_USER).is_some()))
            .await;
        assert_eq!(inv.attr("from"), Some(ROOM));
        assert!(inv.to_string().contains("alice@localhost"), "{inv}");
        // XEP-0249: a direct invitation is a message between users.
        alice
            .send(&format!(
                "<message to='erin@localhost' id='di1'><x xmlns='jabber:x:conference' jid='{ROOM}' reason='come'/></message>"
            ))
            .await;
        let direct = erin
            .expect("direct invitation", |e| e.get_child("x", "jabber:x:conference").is_some())
            .await;
        assert_eq!(
            direct.get_child("x", "jabber:x:conference").and_then(|x| x.attr("jid")),
            Some(ROOM)
        );

        // §8.2: a kick (carol, node 3) and §9.1: a ban (dave, node 1).
        let r = iq(
            &mut alice,
            "k1",
            &format!("<iq type='set' id='k1' to='{ROOM}'><query xmlns='{MUC_ADMIN}'><item nick='carol' role='none'/></query></iq>"),
        )
        .await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        let kicked = carol
            .expect("kicked", |e| e.attr("type") == Some("unavailable") && e.attr("from") == Some("room@conference.localhost/carol"))
            .await;
        assert!(codes(&kicked).contains(&"307".to_string()), "{kicked}");
        let r = iq(
            &mut alice,
            "b1",
            &format!("<iq type='set' id='b1' to='{ROOM}'><query xmlns='{MUC_ADMIN}'><item jid='dave@localhost' affiliation='outcast'/></query></iq>"),
        )
        .await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        let banned = dave
            .expect("banned", |e| e.attr("type") == Some("unavailable") && e.attr("from") == Some("room@conference.localhost/dave"))
            .await;
        assert!(codes(&banned).contains(&"301".to_string()), "{banned}");
        let again = enter(&mut dave, ROOM, "dave", "").await;
        assert_eq!(stanza_error(&again).as_deref(), Some("forbidden"), "{again}");
        // A participant may not kick.
        let r = iq(
            &mut bob,
            "k2",
            &format!("<iq type='set' id='k2' to='{ROOM}'><query xmlns='{MUC_ADMIN}'><item nick='alice' role='none'/></query></iq>"),
        )
        .await;
        assert_eq!(stanza_error(&r).as_deref(), Some("forbidden"), "{r}");

        // §10.2: members-only, then a password.
        let r = configure(&mut alice, "c2", &[("muc#roomconfig_membersonly", "1")]).await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        let refused = enter(&mut carol, ROOM, "carol", "").await;
        assert_eq!(stanza_error(&refused).as_deref(), Some("registration-required"), "{refused}");
        let r = configure(
            &mut alice,
            "c3",
            &[
                ("muc#roomconfig_membersonly", "0"),
                ("muc#roomconfig_passwordprotectedroom", "1"),
                ("muc#roomconfig_roomsecret", "sesame"),
            ],
        )
        .await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        let refused = enter(&mut carol, ROOM, "carol", "<password>wrong</password>").await;
        assert_eq!(stanza_error(&refused).as_deref(), Some("not-authorized"), "{refused}");
        let own = enter(&mut carol, ROOM, "carol", "<password>sesame</password>").await;
        assert_eq!(own.attr("type"), None, "{own}");
        // History for carol: "hello" was retracted, "second" is there.
        let mut bodies = Vec::new();
        for el in carol.sync().await {
            if el.get_child("delay", ns::DELAY).is_some() {
                if let Some(b) = body_of(&el) {
                    bodies.push(b);
                }
            }
        }
        assert_eq!(bodies, ["second"], "history after the retraction");
    });
}

#[test]
fn limits_are_enforced() {
    rt().block_on(async {
        let c = TestCluster::start_with(3, fast_raft(), |cfg| {
            cfg.muc.max_occupants = 2;
            cfg.muc.max_rooms_per_user = 1;
        });
        for u in ["alice", "bob", "carol"] {
            c.create_user(1, u).await.unwrap();
        }
        let mut alice = online(&c, 1, "alice").await;
        let mut bob = online(&c, 2, "bob").await;
        let mut carol = online(&c, 3, "carol").await;
        // An instant room (no `<x>`: a groupchat 1.0 client).
        alice.send(&format!("<presence to='{ROOM}/alice'/>")).await;
        alice
            .expect("own presence", |e| codes(e).contains(&"110".to_string()))
            .await;
        let own = enter(&mut bob, ROOM, "bob", "").await;
        assert_eq!(own.attr("type"), None, "{own}");
        // §7.2.10: full.
        let full = enter(&mut carol, ROOM, "carol", "").await;
        assert_eq!(
            stanza_error(&full).as_deref(),
            Some("service-unavailable"),
            "{full}"
        );
        // The creator's room cap.
        let cap = enter(&mut alice, "other@conference.localhost", "alice", "").await;
        assert_eq!(
            stanza_error(&cap).as_deref(),
            Some("resource-constraint"),
            "{cap}"
        );
        // A nick over the byte cap.
        let long = "n".repeat(65);
        let e = enter(&mut carol, "third@conference.localhost", &long, "").await;
        assert_eq!(stanza_error(&e).as_deref(), Some("policy-violation"), "{e}");
        // §7.2.1: no nick.
        carol.send(&format!("<presence to='{ROOM}'/>")).await;
        let e = carol
            .expect("no nick", |e| {
                e.attr("from") == Some(ROOM) && e.attr("type") == Some("error")
            })
            .await;
        assert_eq!(stanza_error(&e).as_deref(), Some("jid-malformed"), "{e}");
        // Leaving frees a place (and a temporary room goes with its last
        // occupant).
        bob.send(&format!("<presence to='{ROOM}/bob' type='unavailable'/>"))
            .await;
        bob.expect("own unavailable", |e| e.attr("type") == Some("unavailable"))
            .await;
        let own = enter(&mut carol, ROOM, "carol", "").await;
        assert_eq!(own.attr("type"), None, "{own}");
    });
}

#[test]
fn a_room_survives_the_death_of_the_node_it_was_created_on() {
    rt().block_on(async {
        let mut c = TestCluster::start(3, fast_raft());
        for u in ["alice", "bob", "carol"] {
            c.create_user(1, u).await.unwrap();
        }
        let mut alice = online(&c, 1, "alice").await;
        let mut bob = online(&c, 2, "bob").await;
        let mut carol = online(&c, 3, "carol").await;
        enter(&mut alice, ROOM, "alice", "").await;
        let r = configure(
            &mut alice,
            "c1",
            &[
                ("muc#roomconfig_persistentroom", "1"),
                ("muc#roomconfig_roomname", "Survivors"),
            ],
        )
        .await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        let r = iq(
            &mut alice,
            "a1",
            &format!("<iq type='set' id='a1' to='{ROOM}'><query xmlns='{MUC_ADMIN}'><item jid='bob@localhost' affiliation='admin'/></query></iq>"),
        )
        .await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        enter(&mut bob, ROOM, "bob", "").await;
        enter(&mut carol, ROOM, "carol", "").await;
        alice.send(&groupchat("before")).await;
        groupchat_body(&mut carol, "before").await;

        // kill -9 of node 1 while they chat.
        bob.send(&groupchat("during-1")).await;
        c.kill(1);
        bob.send(&groupchat("during-2")).await;
        groupchat_body(&mut carol, "during-2").await;
        // Alice's old session leaves (its node is dead: 333).
        let gone = carol
            .expect("alice gone", |e| {
                e.attr("type") == Some("unavailable") && e.attr("from") == Some("room@conference.localhost/alice")
            })
            .await;
        assert!(codes(&gone).contains(&"333".to_string()), "{gone}");

        // Alice reconnects to node 2 and enters again: still the owner,
        // the configuration and Bob's affiliation are there.
        let mut alice = online(&c, 2, "alice").await;
        let own = enter(&mut alice, ROOM, "alice", "").await;
        assert_eq!(own.attr("type"), None, "{own}");
        assert_eq!(item_attr(&own, "affiliation").as_deref(), Some("owner"), "{own}");
        let admins = iq(
            &mut alice,
            "l1",
            &format!("<iq type='get' id='l1' to='{ROOM}'><query xmlns='{MUC_ADMIN}'><item affiliation='admin'/></query></iq>"),
        )
        .await;
        assert!(admins.to_string().contains("bob@localhost"), "{admins}");
        let info = iq(
            &mut carol,
            "i1",
            &format!("<iq type='get' id='i1' to='{ROOM}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"),
        )
        .await;
        let s = info.to_string();
        assert!(s.contains("Survivors") && s.contains("muc_persistent"), "{info}");
        // Chat resumes, both ways.
        alice.send(&groupchat("after")).await;
        groupchat_body(&mut bob, "after").await;
        groupchat_body(&mut carol, "after").await;
        carol.send(&groupchat("after-2")).await;
        groupchat_body(&mut alice, "after-2").await;
    });
}

/// The XEP-0313 results of a query on the room's archive: (bodies,
/// archived messages, fin).
async fn room_archive(cl: &mut RawClient, id: &str) -> (Vec<String>, Vec<Element>, Element) {
    cl.send(&format!(
        "<iq type='set' id='{id}' to='{ROOM}'><query xmlns='urn:xmpp:mam:2' queryid='q-{id}'/></iq>"
    ))
    .await;
    let mut bodies = Vec::new();
    let mut messages = Vec::new();
    loop {
        let el = cl.next().await;
        if el.name() == "iq" && el.attr("id") == Some(id) {
            return (bodies, messages, el);
        }
        let result = el.get_child("result", "urn:xmpp:mam:2");
        if let Some(r) = result {
            assert_eq!(el.attr("from"), Some(ROOM), "{el}");
            let m = r
                .get_child("forwarded", "urn:xmpp:forward:0")
                .and_then(|f| f.get_child("message", ns::CLIENT))
                .cloned();
            bodies.extend(m.as_ref().and_then(body_of));
            messages.extend(m);
        }
    }
}

#[test]
fn occupants_presence_and_the_rooms_archive_reach_every_node() {
    rt().block_on(async {
        let c = TestCluster::start_with(3, fast_raft(), |cfg| cfg.archive.enabled = true);
        for u in ["alice", "bob", "carol"] {
            c.create_user(1, u).await.unwrap();
        }
        let mut alice = online(&c, 1, "alice").await;
        let mut bob = online(&c, 2, "bob").await;
        let mut carol = online(&c, 3, "carol").await;
        // An instant room; Bob enters busy, and says so again later.
        alice.send(&format!("<presence to='{ROOM}/alice'/>")).await;
        alice
            .expect("own presence", |e| codes(e).contains(&"110".to_string()))
            .await;
        bob.send(&format!(
            "<presence to='{ROOM}/bob'><x xmlns='{MUC}'/><show>dnd</show><status>busy</status></presence>"
        ))
        .await;
        let seen = alice
            .expect("bob's presence", |e| e.attr("from") == Some("room@conference.localhost/bob"))
            .await;
        assert_eq!(seen.get_child("show", ns::CLIENT).map(|s| s.text()).as_deref(), Some("dnd"), "{seen}");
        bob.send(&format!("<presence to='{ROOM}/bob'><show>xa</show></presence>"))
            .await;
        alice
            .expect("bob's update", |e| {
                e.attr("from") == Some("room@conference.localhost/bob")
                    && e.get_child("show", ns::CLIENT).map(|s| s.text()).as_deref() == Some("xa")
            })
            .await;
        // A newcomer on node 3 sees Bob's presence as it is now.
        carol
            .send(&format!("<presence to='{ROOM}/carol'><x xmlns='{MUC}'/></presence>"))
            .await;
        let seen = carol
            .expect("bob's presence", |e| e.attr("from") == Some("room@conference.localhost/bob"))
            .await;
        assert_eq!(seen.get_child("show", ns::CLIENT).map(|s| s.text()).as_deref(), Some("xa"), "{seen}");
        enter(&mut carol, ROOM, "carol", "").await;

        // The room's archive (XEP-0313 on its JID), read on another node.
        let mut ids = Vec::new();
        for b in ["m1", "m2", "m3"] {
            bob.send(&groupchat(b)).await;
            let seen = groupchat_body(&mut carol, b).await;
            ids.push(
                seen.get_child("stanza-id", "urn:xmpp:sid:0")
                    .and_then(|s| s.attr("id"))
                    .expect("stanza id")
                    .to_string(),
            );
        }
        let info = iq(
            &mut carol,
            "i1",
            &format!("<iq type='get' id='i1' to='{ROOM}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"),
        )
        .await;
        assert!(info.to_string().contains("urn:xmpp:mam:2"), "{info}");
        // The archive is written in batches beside the live path: wait
        // for the commit, then page through it.
        let mut got = Vec::new();
        for i in 0..50 {
            let (bodies, _, fin) = room_archive(&mut carol, &format!("q{i}")).await;
            assert_eq!(fin.attr("type"), Some("result"), "{fin}");
            got = bodies;
            if got.len() == 3 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(got, ["m1", "m2", "m3"]);

        // XEP-0425 §"Tombstones": Alice (the owner, a moderator) retracts
        // m2; once she has the answer, the room's archive read on another
        // node holds a tombstone in its place: Bob's nick and occupant
        // id, the moderation, no body.
        moderate(&mut alice, &ids[1]).await;
        let (bodies, messages, _) = room_archive(&mut carol, "after-mod").await;
        assert_eq!(bodies, ["m1", "m3"]);
        assert_eq!(messages.len(), 3, "the tombstone keeps its place");
        let tomb = &messages[1];
        assert_eq!(tomb.attr("from"), Some("room@conference.localhost/bob"), "{tomb}");
        let retracted = tomb
            .get_child("retracted", "urn:xmpp:message-retract:1")
            .unwrap_or_else(|| panic!("no <retracted/>: {tomb}"));
        let moderated = retracted
            .get_child("moderated", "urn:xmpp:message-moderate:1")
            .unwrap_or_else(|| panic!("no <moderated/>: {tomb}"));
        assert_eq!(moderated.attr("by"), Some("room@conference.localhost/alice"), "{tomb}");
        assert_eq!(
            tomb.get_child("occupant-id", "urn:xmpp:occupant-id:0").and_then(|o| o.attr("id")),
            messages[0].get_child("occupant-id", "urn:xmpp:occupant-id:0").and_then(|o| o.attr("id")),
            "Bob's occupant id, as on his m1"
        );
        assert!(!tomb.to_string().contains(">m2<"), "{tomb}");
    });
}

/// An occupant whose client stops reading while the room talks: once its
/// session's queue is full it cannot take a message, and is ended with
/// `resource-constraint` rather than left with a silent gap (it enters
/// again and gets the history, like any client after a disconnection).
#[test]
fn an_occupant_too_slow_to_read_is_ended_not_silently_skipped() {
    rt().block_on(async {
        let c = TestCluster::start_with(1, fast_raft(), |cfg| {
            cfg.xmpp.max_stanzas_per_second = 100_000;
        });
        for u in ["alice", "bob"] {
            c.create_user(1, u).await.unwrap();
        }
        let mut alice = online(&c, 1, "alice").await;
        let mut bob = online(&c, 1, "bob").await;
        alice.send(&format!("<presence to='{ROOM}/alice'/>")).await;
        alice
            .expect("own presence", |e| codes(e).contains(&"110".to_string()))
            .await;
        enter(&mut bob, ROOM, "bob", "").await;
        // Bob stops reading. Alice talks (reading her own echoes, so only
        // Bob falls behind): 6,000 messages of 4 KiB, past his socket's
        // buffers and his session's queue (1,024).
        let filler = "x".repeat(4096);
        for batch in 0..60 {
            for i in 0..100 {
                alice
                    .send(&format!(
                        "<message to='{ROOM}' type='groupchat' id='b{batch}-{i}'><body>{batch}-{i} {filler}</body></message>"
                    ))
                    .await;
            }
            let last = format!("{batch}-99 ");
            alice
                .expect("own echo", |e| {
                    body_of(e).is_some_and(|b| b.starts_with(&last))
                })
                .await;
        }
        // Bob reads again: what was queued for him, then the stream error.
        assert_eq!(bob.expect_stream_error().await, "resource-constraint");
        // The room goes on for Alice.
        alice.send(&groupchat("after")).await;
        groupchat_body(&mut alice, "after").await;
    });
}
