//! The delivery guarantee, tested on real `starling serve` processes: a
//! message the server acknowledged to its sender (XEP-0198 `<a h/>`) reaches
//! its recipient, with its XEP-0359 stanza id, whatever one node does, and
//! however the recipient comes back. Each test names the failure it checks
//! (the numbered list of the delivery-guarantee issue, each reproduced on
//! the server before the guarantee was built); the tests themselves were
//! written with the fix and have not been run against the old server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::xmpp::{
    body_of, chat, enable_sm, read_counting, read_messages, send_acked, RawClient, WAIT,
};
use common::{fast_raft, rt, TestCluster};
use starling::xmpp::{ns, Element};

/// The cluster's leader and the two other nodes.
async fn roles(c: &TestCluster) -> (u64, u64, u64) {
    let leader = c.wait_leader(1, Duration::from_secs(20)).await;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|n| *n != leader).collect();
    (leader, others[0], others[1])
}

async fn three_nodes() -> TestCluster {
    let c = TestCluster::start_with(3, fast_raft(), |cfg| {
        cfg.xmpp.node_dead_after_ms = 1500;
        cfg.xmpp.max_stanzas_per_second = 10_000;
    });
    c.wait_leader(1, Duration::from_secs(20)).await;
    for u in ["alice", "bob"] {
        c.create_user(1, u).await.unwrap();
    }
    // Every node has applied the accounts before anyone logs in there (a
    // follower one entry behind answered not-authorized, now and then,
    // under load).
    c.wait_converged(1, &[1, 2, 3], Duration::from_secs(20))
        .await;
    c
}

/// Issue items 2 and the guarantee: bob (XEP-0198) reads 20 messages but
/// has not acknowledged them when his node is killed. The server had
/// acknowledged them to alice, so bob gets all 20 at his next login, on
/// another node, with the same stanza ids. (Before: the sender's node
/// forgot them once bob's node took them; they died with it.)
#[test]
fn unacknowledged_messages_survive_the_recipients_node_crash() {
    rt().block_on(async {
        let mut c = three_nodes().await;
        let (_, sender_node, recipient_node) = roles(&c).await;
        let mut bob =
            RawClient::login(c.client_addr(recipient_node), "bob", "pw-bob", "phone").await;
        enable_sm(&mut bob, false).await;
        bob.send("<presence/>").await;
        bob.sync().await;
        let mut alice =
            RawClient::login(c.client_addr(sender_node), "alice", "pw-alice", "desk").await;
        enable_sm(&mut alice, false).await;
        let bodies: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
        send_acked(&mut alice, "bob@localhost", &bodies, 0).await;
        let live = read_messages(&mut bob, 20, "bob@localhost", false, WAIT).await;

        c.kill(recipient_node);
        let third = [1, 2, 3]
            .into_iter()
            .find(|n| *n != sender_node && *n != recipient_node)
            .unwrap();
        let mut bob2 = RawClient::login(c.client_addr(third), "bob", "pw-bob", "tablet").await;
        enable_sm(&mut bob2, false).await;
        bob2.send("<presence/>").await;
        let again = read_messages(&mut bob2, 20, "bob@localhost", true, WAIT).await;
        let live: BTreeSet<_> = live.into_iter().collect();
        let again: BTreeSet<_> = again.into_iter().collect();
        assert_eq!(
            live, again,
            "the same 20 messages, with the same stanza ids"
        );
    });
}

/// Custody, same node: alice and bob are on one node, so a third node
/// keeps a copy of each message (the two holders a majority needs). bob
/// reads the 20 messages without acknowledging them and the node dies: the
/// keeper commits its copies, and bob gets all 20 at his next login on
/// another node, same stanza ids. (A custody holding copies only on the
/// sender's and recipient's nodes, one node here, loses them.)
#[test]
fn messages_between_users_of_one_node_survive_its_death() {
    rt().block_on(async {
        let mut c = three_nodes().await;
        let (_, node, _) = roles(&c).await;
        let mut bob = RawClient::login(c.client_addr(node), "bob", "pw-bob", "phone").await;
        enable_sm(&mut bob, false).await;
        bob.send("<presence/>").await;
        bob.sync().await;
        let mut alice = RawClient::login(c.client_addr(node), "alice", "pw-alice", "desk").await;
        enable_sm(&mut alice, false).await;
        let bodies: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
        send_acked(&mut alice, "bob@localhost", &bodies, 0).await;
        let live = read_messages(&mut bob, 20, "bob@localhost", false, WAIT).await;

        c.kill(node);
        let other = [1, 2, 3].into_iter().find(|n| *n != node).unwrap();
        let mut bob2 = RawClient::login(c.client_addr(other), "bob", "pw-bob", "tablet").await;
        enable_sm(&mut bob2, false).await;
        bob2.send("<presence/>").await;
        let again = read_messages(
            &mut bob2,
            20,
            "bob@localhost",
            true,
            Duration::from_secs(30),
        )
        .await;
        let live: BTreeSet<_> = live.into_iter().collect();
        let again: BTreeSet<_> = again.into_iter().collect();
        assert_eq!(
            live, again,
            "the same 20 messages, with the same stanza ids"
        );
    });
}

/// Custody never acknowledges what a majority does not hold, and never
/// writes it either: with both other nodes paused, alice's message to bob
/// (same node) is neither acknowledged to her nor written to bob, as no
/// second node holds a copy and nothing can commit. (Written then, a copy
/// bob acknowledged on a node cut off from the rest came to him again from
/// the queue at his next session elsewhere: jepsen-lite's partition runs.)
/// Once they resume it reaches bob, once, and alice's `h` counts it.
#[test]
fn no_ack_and_no_write_while_a_majority_cannot_hold_the_message() {
    rt().block_on(async {
        let c = three_nodes().await;
        let (_, node, _) = roles(&c).await;
        let mut bob = RawClient::login(c.client_addr(node), "bob", "pw-bob", "phone").await;
        enable_sm(&mut bob, false).await;
        bob.send("<presence/>").await;
        bob.sync().await;
        let mut alice = RawClient::login(c.client_addr(node), "alice", "pw-alice", "desk").await;
        enable_sm(&mut alice, false).await;
        let others: Vec<u64> = [1, 2, 3].into_iter().filter(|n| *n != node).collect();
        for n in &others {
            c.signal(*n, nix::sys::signal::Signal::SIGSTOP);
        }
        alice
            .send(&format!(
                "{}<r xmlns='urn:xmpp:sm:3'/>",
                chat("bob@localhost", "held")
            ))
            .await;
        no_message_within(&mut bob, Duration::from_secs(3), "written while unsafe").await;
        // The server answers a deferred <r/> after 2 s with what is safe.
        let until = Instant::now() + Duration::from_millis(1500);
        while let Ok(el) = tokio::time::timeout(
            until.saturating_duration_since(Instant::now()),
            alice.next(),
        )
        .await
        {
            if el.is("a", ns::SM) {
                assert_eq!(el.attr("h"), Some("0"), "acked while unsafe: {el}");
            }
        }
        for n in &others {
            c.signal(*n, nix::sys::signal::Signal::SIGCONT);
        }
        let got = read_messages(&mut bob, 1, "bob@localhost", false, WAIT).await;
        assert_eq!(got[0].0, "held", "delivered once the others are back");
        send_acked(&mut alice, "bob@localhost", &[], 1).await;
        no_message_within(&mut bob, Duration::from_secs(2), "a second copy").await;
    });
}

/// Reads `c` for `within`; fails on any message with a body (`what`).
async fn no_message_within(c: &mut RawClient, within: Duration, what: &str) {
    let until = Instant::now() + within;
    while let Ok(el) =
        tokio::time::timeout(until.saturating_duration_since(Instant::now()), c.next()).await
    {
        assert!(
            !(el.is("message", ns::CLIENT) && el.has_child("body", ns::CLIENT)),
            "{what}: {el}"
        );
    }
}

/// Issue item 1: bob's node is paused (the live copy cannot leave alice's
/// node), alice gets her ack, then alice's node is killed before the link
/// delivered anything. bob's node resumes: bob gets the message anyway.
/// (Before: acked once in the in-memory mesh queue, and lost with it.)
#[test]
fn an_acknowledged_message_survives_its_senders_node_dying_before_the_live_copy_left() {
    rt().block_on(async {
        let mut c = three_nodes().await;
        let (_, sender_node, recipient_node) = roles(&c).await;
        let mut bob =
            RawClient::login(c.client_addr(recipient_node), "bob", "pw-bob", "phone").await;
        bob.send("<presence/>").await;
        bob.sync().await;
        let mut alice =
            RawClient::login(c.client_addr(sender_node), "alice", "pw-alice", "desk").await;
        enable_sm(&mut alice, false).await;

        c.signal(recipient_node, nix::sys::signal::Signal::SIGSTOP);
        send_acked(&mut alice, "bob@localhost", &["paused".to_string()], 0).await;
        c.kill(sender_node);
        c.signal(recipient_node, nix::sys::signal::Signal::SIGCONT);

        let got = read_messages(&mut bob, 1, "bob@localhost", false, Duration::from_secs(20)).await;
        assert_eq!(got[0].0, "paused");
    });
}

/// Issue item 6: a full offline queue (1000 messages, the default cap and
/// the default unacknowledged limit) drains for a client with XEP-0198.
/// (Before: the server sent all 1000 at once, hit its own limit and closed
/// the stream with `policy-violation`, every time.)
#[test]
fn a_full_offline_queue_drains_with_stream_management() {
    rt().block_on(async {
        let c = TestCluster::one_node(&["alice", "bob"], |cfg| {
            cfg.xmpp.max_stanzas_per_second = 100_000;
        })
        .await;
        let addr = c.client_addr(1);
        let mut alice = RawClient::login(addr, "alice", "pw-alice", "desk").await;
        enable_sm(&mut alice, false).await;
        let bodies: Vec<String> = (0..1000).map(|i| format!("q{i}")).collect();
        for (i, chunk) in bodies.chunks(100).enumerate() {
            send_acked(&mut alice, "bob@localhost", chunk, (i * 100) as u32).await;
        }
        let mut bob = RawClient::login(addr, "bob", "pw-bob", "phone").await;
        enable_sm(&mut bob, false).await;
        bob.send("<presence/>").await;
        let mut h = 0;
        let got = read_counting(
            &mut bob,
            1000,
            "bob@localhost",
            true,
            Duration::from_secs(60),
            &mut h,
        )
        .await;
        let got: Vec<String> = got.into_iter().map(|(b, _)| b).collect();
        assert_eq!(got, bodies, "all 1000, in order");
        // Acknowledge the last burst too, and close.
        bob.send(&format!(
            "<a xmlns='urn:xmpp:sm:3' h='{h}'/></stream:stream>"
        ))
        .await;
        // Acknowledged messages left the queue.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut bob2 = RawClient::login(addr, "bob", "pw-bob", "tablet").await;
        bob2.send("<presence/>").await;
        let again = bob2.sync().await;
        assert!(
            again.iter().all(|e| e.name() != "message"),
            "delivered and acknowledged messages came again"
        );
    });
}

/// Issue item 7: after a burst of stanzas the server asks for an ack at
/// once, so a client that reads and closes has acknowledged what it read,
/// and its next login does not get it again. (Before: `<r/>` only every
/// fifth stanza or when idle; the message came again from storage.)
#[test]
fn the_server_asks_for_an_ack_after_each_burst() {
    rt().block_on(async {
        let c = TestCluster::one_node(&["alice", "bob"], |_| {}).await;
        let addr = c.client_addr(1);
        let mut bob = RawClient::login(addr, "bob", "pw-bob", "phone").await;
        enable_sm(&mut bob, false).await;
        bob.send("<presence/>").await;
        // Presence echo, then the server's request for it.
        bob.expect("presence", |e| e.name() == "presence").await;
        bob.expect("r after the presence", |e| e.is("r", ns::SM))
            .await;
        bob.send("<a xmlns='urn:xmpp:sm:3' h='1'/>").await;
        let mut alice = RawClient::login(addr, "alice", "pw-alice", "desk").await;
        alice.send(&chat("bob@localhost", "hello")).await;
        let m = bob.next().await;
        assert_eq!(body_of(&m).as_deref(), Some("hello"), "{m}");
        let r = tokio::time::timeout(Duration::from_secs(2), bob.next())
            .await
            .expect("an ack request right after the message");
        assert!(r.is("r", ns::SM), "expected <r/>, got {r}");
        bob.send("<a xmlns='urn:xmpp:sm:3' h='2'/></stream:stream>")
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut bob2 = RawClient::login(addr, "bob", "pw-bob", "tablet").await;
        bob2.send("<presence/>").await;
        let again = bob2.sync().await;
        assert!(
            again.iter().all(|e| e.name() != "message"),
            "an acknowledged message came again: {again:?}"
        );
    });
}

/// Logs in up to (not including) resource binding.
async fn authenticate(addr: std::net::SocketAddr, user: &str, pw: &str) -> RawClient {
    let mut c = RawClient::connect(addr).await;
    c.open().await;
    c.starttls().await;
    c.open().await;
    assert!(c.auth_plain(user, pw).await.is("success", ns::SASL));
    c.open().await;
    c
}

/// Issue item 8: resuming on another node after the session's node died
/// gets `<failed/>` and the stream stays open: the client binds on it, and
/// gets what it had not acknowledged from its queue. (Before: the stream
/// was closed after `<failed/>`; the client had to log in again from
/// scratch.)
#[test]
fn a_failed_resumption_lets_the_client_bind_on_the_same_stream() {
    rt().block_on(async {
        let mut c = three_nodes().await;
        let (_, bob_node, alice_node) = roles(&c).await;
        let mut bob = RawClient::login(c.client_addr(bob_node), "bob", "pw-bob", "phone").await;
        let previd = enable_sm(&mut bob, true).await;
        bob.send("<presence/>").await;
        bob.sync().await;
        let mut alice =
            RawClient::login(c.client_addr(alice_node), "alice", "pw-alice", "desk").await;
        enable_sm(&mut alice, false).await;
        send_acked(&mut alice, "bob@localhost", &["unread".to_string()], 0).await;
        let first = read_messages(&mut bob, 1, "bob@localhost", false, WAIT).await;
        // Gone without acknowledging, and so is the node that had it.
        drop(bob);
        c.kill(bob_node);

        let mut bob = authenticate(c.client_addr(alice_node), "bob", "pw-bob").await;
        bob.send(&format!(
            "<resume xmlns='urn:xmpp:sm:3' h='0' previd='{previd}'/>"
        ))
        .await;
        let f = bob.expect("failed", |e| e.is("failed", ns::SM)).await;
        assert!(f.has_child("item-not-found", ns::STANZA_ERRORS), "{f}");
        let b = bob.bind(Some("phone2")).await;
        assert_eq!(b.attr("type"), Some("result"), "bind after failed: {b}");
        enable_sm(&mut bob, true).await;
        bob.send("<presence/>").await;
        let again =
            read_messages(&mut bob, 1, "bob@localhost", true, Duration::from_secs(20)).await;
        assert_eq!(again, first, "the unacknowledged message, same stanza id");
    });
}

/// Issue item 8: a phone resumes its session on another node while the old
/// node is alive (its server list sent it elsewhere): the old node hands
/// the session over, and the client gets `<resumed/>` with the server's
/// count of its stanzas, then exactly what it had not acknowledged, with
/// the same stanza ids, and nothing twice; its full JID now lives on the
/// new node. (Before: `<failed/>`, a new session, and contacts saw it go
/// offline and come back.)
#[test]
fn a_session_resumes_on_another_node_while_its_node_is_alive() {
    rt().block_on(async {
        let c = three_nodes().await;
        let (_, old_node, new_node) = roles(&c).await;
        let mut bob = RawClient::login(c.client_addr(old_node), "bob", "pw-bob", "phone").await;
        let previd = enable_sm(&mut bob, true).await;
        bob.send("<presence/>").await;
        // Stanzas bob received so far: whatever came before the ping's
        // answer, and the answer.
        let before = bob.sync().await;
        let mut n = 1 + before
            .iter()
            .filter(|e| matches!(e.name(), "message" | "presence" | "iq") && e.ns() == ns::CLIENT)
            .count() as u32;
        let mut alice =
            RawClient::login(c.client_addr(new_node), "alice", "pw-alice", "desk").await;
        enable_sm(&mut alice, false).await;
        let bodies: Vec<String> = (1..=3).map(|i| format!("m{i}")).collect();
        send_acked(&mut alice, "bob@localhost", &bodies, 0).await;
        let got = read_counting(&mut bob, 3, "bob@localhost", false, WAIT, &mut n).await;
        // The connection dies; bob's phone only saw the first message.
        drop(bob);

        let mut bob = authenticate(c.client_addr(new_node), "bob", "pw-bob").await;
        let h = n - 2;
        bob.send(&format!(
            "<resume xmlns='urn:xmpp:sm:3' h='{h}' previd='{previd}'/>"
        ))
        .await;
        let r = bob
            .expect("resumed", |e| {
                e.is("resumed", ns::SM) || e.is("failed", ns::SM)
            })
            .await;
        assert!(r.is("resumed", ns::SM), "expected <resumed/>: {r}");
        assert_eq!(r.attr("previd"), Some(previd.as_str()));
        // bob sent two stanzas: his presence and the ping.
        assert_eq!(r.attr("h"), Some("2"), "{r}");
        let mut m = h;
        let again = read_counting(&mut bob, 2, "bob@localhost", true, WAIT, &mut m).await;
        assert_eq!(
            again,
            got[1..].to_vec(),
            "what bob had not acknowledged, same ids"
        );
        bob.send(&format!("<a xmlns='urn:xmpp:sm:3' h='{m}'/>"))
            .await;
        // Nothing comes a second time (the queue's copies are known here).
        no_message_within(&mut bob, Duration::from_millis(1500), "a second copy").await;
        // The session is bound here now: a new message comes live.
        send_acked(&mut alice, "bob@localhost", &["m4".to_string()], 3).await;
        let live = read_messages(&mut bob, 1, "bob@localhost", true, WAIT).await;
        assert_eq!(live[0].0, "m4");
        let old_log = c.log_of(old_node);
        assert!(
            old_log.contains("session handed over to another node"),
            "the old node handed the session over:\n{old_log}"
        );
    });
}

/// A session that moves keeps its presence (RFC 6121 §4.5 is for a session
/// that ends, and XEP-0198 §5 resumption is the same session): alice, who
/// is subscribed to bob, sees no unavailable presence from bob/phone while
/// his session moves from one node to another; his next presence comes to
/// her from the new node, and his unavailable presence when he logs out.
#[test]
fn contacts_see_no_presence_change_when_a_session_moves() {
    rt().block_on(async {
        let c = three_nodes().await;
        let (_, old_node, new_node) = roles(&c).await;
        let mut alice =
            RawClient::login(c.client_addr(new_node), "alice", "pw-alice", "desk").await;
        alice.send("<presence/>").await;
        // alice subscribes to bob's presence (RFC 6121 §3.1); bob, online,
        // approves; then he logs out.
        let mut bob = RawClient::login(c.client_addr(old_node), "bob", "pw-bob", "phone").await;
        bob.send("<presence/>").await;
        alice
            .send("<presence to='bob@localhost' type='subscribe'/>")
            .await;
        bob.expect("alice's subscription request", |e| {
            e.is("presence", ns::CLIENT) && e.attr("type") == Some("subscribe")
        })
        .await;
        bob.send("<presence to='alice@localhost' type='subscribed'/>")
            .await;
        bob.sync().await;
        bob.send("</stream:stream>").await;
        drop(bob);
        let from_bob = |e: &Element| {
            e.is("presence", ns::CLIENT) && e.attr("from") == Some("bob@localhost/phone")
        };
        alice
            .expect("bob's unavailable presence at his logout", |e| {
                from_bob(e) && e.attr("type") == Some("unavailable")
            })
            .await;

        // bob comes back, resumable, and sends presence: alice sees it.
        let mut bob = RawClient::login(c.client_addr(old_node), "bob", "pw-bob", "phone").await;
        let previd = enable_sm(&mut bob, true).await;
        bob.send("<presence/>").await;
        let p = alice.expect("bob's available presence", from_bob).await;
        assert_eq!(p.attr("type"), None, "available: {p}");
        let before = bob.sync().await;
        let n = 1 + before
            .iter()
            .filter(|e| matches!(e.name(), "message" | "presence" | "iq") && e.ns() == ns::CLIENT)
            .count() as u32;

        // bob's connection dies; he resumes on the other node.
        drop(bob);
        let mut bob = authenticate(c.client_addr(new_node), "bob", "pw-bob").await;
        bob.send(&format!(
            "<resume xmlns='urn:xmpp:sm:3' h='{n}' previd='{previd}'/>"
        ))
        .await;
        let r = bob
            .expect("resumed", |e| {
                e.is("resumed", ns::SM) || e.is("failed", ns::SM)
            })
            .await;
        assert!(r.is("resumed", ns::SM), "expected <resumed/>: {r}");

        // alice sees nothing of the move.
        let until = Instant::now() + Duration::from_millis(2000);
        while let Ok(el) = tokio::time::timeout(
            until.saturating_duration_since(Instant::now()),
            alice.next(),
        )
        .await
        {
            assert!(
                !from_bob(&el),
                "a presence from bob while his session moved: {el}"
            );
        }
        // Presence from the moved session reaches her.
        bob.send("<presence><show>away</show></presence>").await;
        let p = alice
            .expect("bob's presence after the move", from_bob)
            .await;
        assert_eq!(p.attr("type"), None, "{p}");
        assert_eq!(
            p.get_child("show", ns::CLIENT).map(|s| s.text()),
            Some("away".to_string()),
            "{p}"
        );
        // And his logout, once.
        bob.send("</stream:stream>").await;
        let p = alice.expect("bob's unavailable presence", from_bob).await;
        assert_eq!(p.attr("type"), Some("unavailable"), "{p}");
    });
}

/// Issue item 11: the old connection is half-open (the client moved on,
/// the server still reads it): a resumption on a new connection takes the
/// session over at once. (Before: it waited in a channel read only while
/// the session was detached, forever.)
#[test]
fn resumption_takes_over_a_half_open_connection() {
    rt().block_on(async {
        let c = TestCluster::one_node(&["bob"], |_| {}).await;
        let addr = c.client_addr(1);
        let mut old = RawClient::login(addr, "bob", "pw-bob", "phone").await;
        let previd = enable_sm(&mut old, true).await;
        old.sync().await;
        // `old` stays open and silent.
        let mut bob = authenticate(addr, "bob", "pw-bob").await;
        bob.send(&format!(
            "<resume xmlns='urn:xmpp:sm:3' h='1' previd='{previd}'/>"
        ))
        .await;
        let r = tokio::time::timeout(Duration::from_secs(5), bob.next())
            .await
            .expect("an answer to the resumption");
        assert!(r.is("resumed", ns::SM), "expected <resumed/>, got {r}");
        // The resumed stream works.
        bob.sync().await;
        drop(old);
    });
}

/// Issue item 12: a graceful stop (a rolling restart) keeps what detached
/// sessions had not acknowledged: the client logs in on another node and
/// gets it. (Before: the detached session's unacknowledged stanzas died
/// with the process.)
#[test]
fn a_graceful_stop_keeps_what_detached_sessions_had_not_acknowledged() {
    rt().block_on(async {
        let mut c = three_nodes().await;
        let (_, sender_node, recipient_node) = roles(&c).await;
        let mut bob =
            RawClient::login(c.client_addr(recipient_node), "bob", "pw-bob", "phone").await;
        enable_sm(&mut bob, true).await;
        bob.send("<presence/>").await;
        bob.sync().await;
        let mut alice =
            RawClient::login(c.client_addr(sender_node), "alice", "pw-alice", "desk").await;
        enable_sm(&mut alice, false).await;
        let bodies: Vec<String> = (0..5).map(|i| format!("d{i}")).collect();
        send_acked(&mut alice, "bob@localhost", &bodies, 0).await;
        let live = read_messages(&mut bob, 5, "bob@localhost", false, WAIT).await;
        drop(bob); // detached, waiting for a resumption
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(c.stop(recipient_node), "clean exit");
        let mut bob2 =
            RawClient::login(c.client_addr(sender_node), "bob", "pw-bob", "tablet").await;
        bob2.send("<presence/>").await;
        let again = read_messages(&mut bob2, 5, "bob@localhost", false, WAIT).await;
        let live: BTreeSet<_> = live.into_iter().collect();
        let again: BTreeSet<_> = again.into_iter().collect();
        assert_eq!(live, again);
    });
}

/// Issue item 9: a client that stops reading is dropped after the write
/// timeout: its session ends and unbinds. (Before: the session task waited
/// on the socket forever, outside its select loop: no idle timeout, no
/// kick, no shutdown.)
#[test]
fn a_client_that_stops_reading_is_dropped_after_the_write_timeout() {
    rt().block_on(async {
        let c = TestCluster::one_node(&["alice", "bob"], |cfg| {
            cfg.xmpp.write_timeout_secs = 2;
            cfg.xmpp.max_stanzas_per_second = 10_000;
        })
        .await;
        let addr = c.client_addr(1);
        let mut bob = RawClient::login(addr, "bob", "pw-bob", "stuck").await;
        // With stream management, what the socket took but bob never
        // acknowledged still counts as undelivered.
        enable_sm(&mut bob, false).await;
        bob.send("<presence/>").await;
        bob.sync().await;
        // bob reads nothing from now on.
        let mut alice = RawClient::login(addr, "alice", "pw-alice", "desk").await;
        let big = "x".repeat(200 * 1024);
        for i in 0..100 {
            alice
                .send(&format!(
                    "<message to='bob@localhost/stuck' type='chat' id='b{i}'><body>{big}</body></message>"
                ))
                .await;
        }
        alice.sync().await;
        let conn = c.conn(1).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut cl = conn.client.clone();
            let sessions = cl
                .list_sessions(conn.req(starling_proto::admin::ListSessionsRequest { node_id: 0 }))
                .await
                .unwrap()
                .into_inner()
                .sessions;
            if !sessions.iter().any(|s| s.full_jid == "bob@localhost/stuck") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the stuck session is still bound after 20 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // What bob never read is in his queue for his next session.
        let mut bob2 = RawClient::login(addr, "bob", "pw-bob", "fresh").await;
        enable_sm(&mut bob2, false).await;
        bob2.send("<presence/>").await;
        let got = read_messages(&mut bob2, 100, "bob@localhost", true, Duration::from_secs(60)).await;
        assert_eq!(got.len(), 100);
        drop(bob);
    });
}

/// Issue item 14: directed presence targets per session are bounded (each
/// is owed an unavailable presence when the session ends, RFC 6121 §4.6.3).
/// (Before: the set grew without limit.)
#[test]
fn directed_presence_targets_are_bounded() {
    rt().block_on(async {
        let c = TestCluster::one_node(&["alice"], |cfg| {
            cfg.xmpp.max_stanzas_per_second = 100_000;
        })
        .await;
        let mut alice = RawClient::login(c.client_addr(1), "alice", "pw-alice", "desk").await;
        let mut out = String::new();
        for i in 0..1000 {
            out.push_str(&format!("<presence to='t{i}@elsewhere.example'/>"));
        }
        alice.send(&out).await;
        let before = alice.sync().await;
        assert!(
            before.iter().all(|e| e.attr("type") != Some("error")
                || e.get_child("error", ns::CLIENT)
                    .is_some_and(|x| !x.has_child("resource-constraint", ns::STANZA_ERRORS))),
            "the first 1000 targets are accepted"
        );
        alice
            .send("<presence to='one-too-many@elsewhere.example' id='p1001'/>")
            .await;
        let e = alice
            .expect("the 1001st refused", |e| e.attr("id") == Some("p1001"))
            .await;
        assert_eq!(e.attr("type"), Some("error"), "{e}");
        assert!(
            e.get_child("error", ns::CLIENT)
                .is_some_and(|x| x.has_child("resource-constraint", ns::STANZA_ERRORS)),
            "{e}"
        );
    });
}

/// Issue item 10: a client that stops reading does not stall what the
/// mesh brings its node for everybody else. bob (node 1) reads nothing
/// while alice (node 2) sends him far more than his socket, his session's
/// buffer and its queue take; carol, on bob's node, still gets alice's
/// next message at once, long before bob's write timeout ends his session.
/// (Before: the mesh's receiving loop from a peer pushed into a local
/// session's bounded queue with `send().await`, so one stuck client held
/// up every stanza from that peer to that node.)
#[test]
fn a_stuck_client_does_not_hold_up_the_mesh_for_others() {
    rt().block_on(async {
        let c = TestCluster::start_with(3, fast_raft(), |cfg| {
            cfg.xmpp.write_timeout_secs = 60;
            cfg.xmpp.max_stanzas_per_second = 10_000;
        });
        c.wait_leader(1, Duration::from_secs(20)).await;
        for u in ["alice", "bob", "carol"] {
            c.create_user(1, u).await.unwrap();
        }
        let mut bob = RawClient::login(c.client_addr(1), "bob", "pw-bob", "stuck").await;
        bob.send("<presence/>").await;
        bob.sync().await;
        let mut carol = RawClient::login(c.client_addr(1), "carol", "pw-carol", "desk").await;
        carol.send("<presence/>").await;
        carol.sync().await;
        // bob reads nothing from now on.
        let mut alice = RawClient::login(c.client_addr(2), "alice", "pw-alice", "desk").await;
        // More than the loopback socket's buffers plus bob's session queue
        // (`SESSION_QUEUE`, 1024 stanzas) take.
        let big = "x".repeat(8 * 1024);
        let flood = 4000;
        let started = Instant::now();
        let mut out = String::new();
        for i in 0..flood {
            out.push_str(&format!(
                "<message to='bob@localhost/stuck' type='chat' id='b{i}'><body>{big}</body></message>"
            ));
            if out.len() > 1 << 20 {
                alice.send(&out).await;
                out.clear();
            }
        }
        alice.send(&out).await;
        // Give the flood time to reach node 1 and fill bob's buffers (no
        // round trip through the server here: that could wait on node 1).
        tokio::time::sleep(Duration::from_secs(3)).await;
        alice
            .send("<message to='carol@localhost/desk' type='chat' id='c1'><body>hello carol</body></message>")
            .await;
        let got = read_messages(&mut carol, 1, "carol@localhost", false, Duration::from_secs(20)).await;
        assert_eq!(got[0].0, "hello carol");
        // bob's write timeout is 60 s: only his session's end would have
        // let a held-up mesh go on.
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(20),
            "carol's message came {took:?} after the flood began: held up behind bob"
        );
        drop(bob);
    });
}

/// Issue item 3: while the leader is paused (a write's outcome is unknown
/// until a new leader is elected: the proposal may or may not commit when
/// the old one wakes), alice sends ten messages to bob, who is offline.
/// She gets her ack for all ten and no error, and bob, logging in once the
/// old leader is back, gets each exactly once with its stanza id. (Before:
/// an offline enqueue whose raft outcome was unknown was bounced to the
/// sender as an error, and later committed: "failed", then delivered.)
#[test]
fn an_unknown_raft_outcome_is_retried_never_bounced() {
    rt().block_on(async {
        let c = three_nodes().await;
        let (leader, sender_node, other) = roles(&c).await;
        let mut alice =
            RawClient::login(c.client_addr(sender_node), "alice", "pw-alice", "desk").await;
        enable_sm(&mut alice, false).await;
        c.signal(leader, nix::sys::signal::Signal::SIGSTOP);
        let bodies: Vec<String> = (0..10).map(|i| format!("u{i}")).collect();
        let mut out = String::new();
        for b in &bodies {
            out.push_str(&chat("bob@localhost", b));
        }
        out.push_str("<r xmlns='urn:xmpp:sm:3'/>");
        alice.send(&out).await;
        // Every answer alice gets until all ten are acknowledged: an ack,
        // never an error for one of them.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let el = tokio::time::timeout(left, alice.next())
                .await
                .expect("alice's ten messages acknowledged within 20 s");
            assert!(
                !(el.name() == "message" && el.attr("type") == Some("error")),
                "a message was bounced: {el}"
            );
            if el.is("a", ns::SM) {
                let h: u32 = el.attr("h").and_then(|h| h.parse().ok()).unwrap();
                if h == 10 {
                    break;
                }
                alice.send("<r xmlns='urn:xmpp:sm:3'/>").await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        // The old leader wakes up: whatever it had is now a stale term's.
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.signal(leader, nix::sys::signal::Signal::SIGCONT);
        let mut bob = RawClient::login(c.client_addr(other), "bob", "pw-bob", "phone").await;
        enable_sm(&mut bob, false).await;
        bob.send("<presence/>").await;
        let got = read_messages(&mut bob, 10, "bob@localhost", true, Duration::from_secs(20)).await;
        let bodies_got: BTreeSet<_> = got.iter().map(|(b, _)| b.clone()).collect();
        assert_eq!(bodies_got, bodies.iter().cloned().collect::<BTreeSet<_>>());
        no_message_within(&mut bob, Duration::from_secs(3), "a second copy").await;
        // Nothing bounced after the ack either.
        let until = Instant::now() + Duration::from_millis(500);
        while let Ok(el) = tokio::time::timeout(
            until.saturating_duration_since(Instant::now()),
            alice.next(),
        )
        .await
        {
            assert!(
                !(el.name() == "message" && el.attr("type") == Some("error")),
                "bounced after the ack: {el}"
            );
        }
    });
}

/// A client acknowledges five queued messages just as the leader is paused,
/// then resumes its session on another node at once (a phone that changed
/// networks). The old node cannot commit their removal yet (it forwards it
/// to the paused leader), but the resumed session must not get them again:
/// the removal goes on to the new leader as soon as the old node hears of
/// it, and the handover carries the ids still being removed, which the new
/// node skips. This is the scenario of a jepsen-lite pause run's 13 copies
/// (there the removal waited 1.5 s on the paused leader, the handover
/// 0.7 s, and the new node, just elected, wrote them again). Not seen
/// failing here without the two fixes: in this cluster the old node is
/// elected or retries before the new node's pull, so the test guards the
/// scenario rather than reproducing the race; the jepsen pause run is
/// the reproduction (RELIABILITY.md).
#[test]
fn what_a_client_acknowledged_while_the_leader_paused_does_not_come_again_after_it_moves() {
    rt().block_on(async {
        let c = three_nodes().await;
        let (leader, old_node, new_node) = roles(&c).await;
        let mut alice =
            RawClient::login(c.client_addr(new_node), "alice", "pw-alice", "desk").await;
        enable_sm(&mut alice, false).await;
        let bodies: Vec<String> = (1..=5).map(|i| format!("q{i}")).collect();
        send_acked(&mut alice, "bob@localhost", &bodies, 0).await;
        c.wait_converged(1, &[1, 2, 3], Duration::from_secs(20))
            .await;

        let mut bob = RawClient::login(c.client_addr(old_node), "bob", "pw-bob", "phone").await;
        let previd = enable_sm(&mut bob, true).await;
        bob.send("<presence/>").await;
        let mut n = 0u32;
        let got = read_counting(&mut bob, 5, "bob@localhost", false, WAIT, &mut n).await;
        assert_eq!(
            got.iter().map(|(b, _)| b.clone()).collect::<Vec<_>>(),
            bodies
        );
        // Whatever else came with them (bob's own presence) is counted too,
        // and the ping's answer.
        n += 1;
        for el in bob.sync().await {
            if matches!(el.name(), "message" | "presence" | "iq") && el.ns() == ns::CLIENT {
                n += 1;
            }
        }
        c.signal(leader, nix::sys::signal::Signal::SIGSTOP);
        bob.send(&format!("<a xmlns='urn:xmpp:sm:3' h='{n}'/>"))
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(bob);

        let mut bob = authenticate(c.client_addr(new_node), "bob", "pw-bob").await;
        bob.send(&format!(
            "<resume xmlns='urn:xmpp:sm:3' h='{n}' previd='{previd}'/>"
        ))
        .await;
        let r = bob
            .expect("resumed", |e| {
                e.is("resumed", ns::SM) || e.is("failed", ns::SM)
            })
            .await;
        assert!(r.is("resumed", ns::SM), "expected <resumed/>: {r}");
        no_message_within(&mut bob, Duration::from_secs(4), "a second copy").await;
        c.signal(leader, nix::sys::signal::Signal::SIGCONT);
    });
}

/// Delivery hints on a node that missed them (jepsen-lite 3n-kill-leader-s1
/// and 3n-pause-kill-s1, one copy class): bob reads five messages on node
/// B without acknowledging them, and B is killed. He resumes on node C with
/// an `h` that counts them: the session died with B, so the resumption
/// fails, he binds on the stream, and the five must not come again from
/// the queue. C was down while B wrote them and holds no hint of its own;
/// A's hints come with A's answer to C's takeover request. (Before: C
/// looked at its own hints only, and bob got all five a second time.)
#[test]
fn what_a_client_read_before_its_node_died_does_not_come_again_where_it_resumes() {
    rt().block_on(async {
        let mut c = three_nodes().await;
        let (a, b, cn) = roles(&c).await;
        let mut bob = RawClient::login(c.client_addr(b), "bob", "pw-bob", "phone").await;
        let previd = enable_sm(&mut bob, true).await;
        bob.send("<presence/>").await;
        let mut n = 1u32; // the ping's answer
        for el in bob.sync().await {
            if matches!(el.name(), "message" | "presence" | "iq") && el.ns() == ns::CLIENT {
                n += 1;
            }
        }
        let mut alice = RawClient::login(c.client_addr(a), "alice", "pw-alice", "desk").await;
        enable_sm(&mut alice, false).await;

        c.kill(cn);
        let bodies: Vec<String> = (1..=5).map(|i| format!("h{i}")).collect();
        send_acked(&mut alice, "bob@localhost", &bodies, 0).await;
        let got = read_counting(&mut bob, 5, "bob@localhost", false, WAIT, &mut n).await;
        assert_eq!(
            got.iter().map(|(b, _)| b.clone()).collect::<Vec<_>>(),
            bodies
        );
        c.start_node(cn);
        c.wait_converged(a, &[1, 2, 3], Duration::from_secs(20))
            .await;
        c.kill(b);
        drop(bob);

        let mut bob = authenticate(c.client_addr(cn), "bob", "pw-bob").await;
        bob.send(&format!(
            "<resume xmlns='urn:xmpp:sm:3' h='{n}' previd='{previd}'/>"
        ))
        .await;
        let f = bob.expect("failed", |e| e.is("failed", ns::SM)).await;
        assert!(f.has_child("item-not-found", ns::STANZA_ERRORS), "{f}");
        let bound = bob.bind(Some("phone2")).await;
        assert_eq!(bound.attr("type"), Some("result"), "{bound}");
        enable_sm(&mut bob, true).await;
        bob.send("<presence/>").await;
        // A commits its custody copies once B is dead (1.5 s here), and a
        // pull on C would write them.
        no_message_within(&mut bob, Duration::from_secs(6), "a second copy").await;
        send_acked(&mut alice, "bob@localhost", &["after".to_string()], 5).await;
        let after = read_messages(&mut bob, 1, "bob@localhost", false, WAIT).await;
        assert_eq!(after[0].0, "after");
        assert!(
            c.log_of(cn).contains("known=5"),
            "C should have known the five from A's hints"
        );
    });
}
