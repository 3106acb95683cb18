//! Issue 13, parts 1-3 and 6, on real `starling serve` processes: RFC 7395
//! XMPP over WebSocket at wire level (open/features/SASL/bind, the stream
//! restart by a new `<open/>`, a WebSocket user and a TCP user on another
//! node chatting both ways, XEP-0198 resumption over WebSocket on another
//! node, SASL2 with a FAST token, `wss://` with channel binding), its
//! refusals (Origin, subprotocol, framing namespace, a message too big or
//! not one element, binary), `<close/>`; XEP-0156 host-meta listing every
//! node; `/healthz` and `/readyz` (not ready once the node lost its
//! cluster), and `ctl status` saying the same.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use common::ws::{http_get, tls_to, ws_url, WsClient, FRAMING};
use common::xmpp::{body_of, RawClient};
use common::{addr, ctl, fast_raft, free_ports, rt, TestCluster};
use starling::xmpp::ns;

/// A cluster of `n` with an HTTP listener on every node (plain, loopback)
/// listing every node's endpoint; `alice`, `bob`, `carol` exist.
async fn cluster(
    n: u64,
    tweak: impl Fn(&mut starling::config::Config),
) -> (TestCluster, Vec<SocketAddr>) {
    let ports = free_ports(n as usize);
    let http: Vec<SocketAddr> = ports.iter().map(|p| addr(*p)).collect();
    let urls: Vec<String> = http.iter().map(|a| ws_url(*a)).collect();
    let c = TestCluster::start_with(n, fast_raft(), |cfg| {
        cfg.http.addr = Some(http[cfg.node_id as usize - 1]);
        cfg.http.tls = false;
        cfg.http.websocket_urls = urls.clone();
        cfg.http.allowed_origins = vec!["https://chat.example".into()];
        cfg.xmpp.max_stanzas_per_second = 10_000;
        tweak(cfg);
    });
    c.wait_leader(1, Duration::from_secs(20)).await;
    for u in ["alice", "bob", "carol"] {
        c.create_user(1, u).await.unwrap();
    }
    // Every node serves (its /readyz) before the test goes on.
    for a in &http {
        wait_ready(*a, true).await;
    }
    (c, http)
}

async fn wait_ready(http: SocketAddr, ready: bool) -> String {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let r = tokio::net::TcpStream::connect(http).await;
        if r.is_ok() {
            let (status, _, body) = http_get(http, "/readyz").await;
            if (status == 200) == ready {
                return body;
            }
        }
        assert!(
            Instant::now() < until,
            "{http} /readyz did not become {}",
            if ready { "ready" } else { "not ready" }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn chat(to: &str, body: &str) -> String {
    format!("<message xmlns='jabber:client' to='{to}' type='chat' id='{body}'><body>{body}</body></message>")
}

/// Open, features, PLAIN, a new `<open/>` (no restart bytes), bind, a
/// message to a TCP user on another node and back, `<close/>`.
#[test]
fn websocket_session_chats_with_a_tcp_session_on_another_node() {
    rt().block_on(async {
        let (c, http) = cluster(3, |_| {}).await;
        let mut ws = WsClient::connect(&ws_url(http[0]), None).await.unwrap();
        assert_eq!(ws.protocol.as_deref(), Some("xmpp"), "subprotocol");
        let (open, f) = ws.open().await;
        assert_eq!(open.attr("from"), Some("localhost"));
        assert_eq!(open.attr("version"), Some("1.0"));
        assert!(open.attr("id").is_some_and(|i| !i.is_empty()), "{open}");
        // RFC 7395 §3.9: no STARTTLS over WebSocket; SASL and SASL2 are
        // offered as after TLS.
        assert!(!f.has_child("starttls", ns::TLS), "{f}");
        assert!(f.has_child("mechanisms", ns::SASL), "{f}");
        assert!(f.has_child("authentication", ns::SASL2), "{f}");
        let r = ws.auth_plain("alice", "pw-alice").await;
        assert!(r.is("success", ns::SASL), "{r}");
        let (_, f) = ws.open().await;
        assert!(f.has_child("bind", ns::BIND), "{f}");
        assert!(f.has_child("sm", ns::SM), "{f}");
        ws.bind("web").await;
        ws.send("<presence xmlns='jabber:client'/>").await;

        let mut bob = RawClient::login(c.client_addr(2), "bob", "pw-bob", "tcp").await;
        bob.send("<presence/>").await;
        bob.sync().await;
        ws.sync().await;

        ws.send(&chat("bob@localhost/tcp", "from-web")).await;
        let m = bob
            .expect("the web message", |e| {
                e.name() == "message" && body_of(e).is_some()
            })
            .await;
        assert_eq!(body_of(&m).as_deref(), Some("from-web"));
        assert_eq!(m.attr("from"), Some("alice@localhost/web"));

        bob.send(
            "<message to='alice@localhost/web' type='chat' id='b1'><body>from-tcp</body></message>",
        )
        .await;
        let m = ws
            .expect("the tcp message", |e| {
                e.name() == "message" && body_of(e).is_some()
            })
            .await;
        // Parsed on its own: the message declared jabber:client itself.
        assert_eq!(m.ns(), ns::CLIENT, "{m}");
        assert_eq!(body_of(&m).as_deref(), Some("from-tcp"));
        assert_eq!(m.attr("from"), Some("bob@localhost/tcp"));

        // RFC 7395 §3.6: the client's <close/> is answered by the
        // server's, then the WebSocket ends.
        ws.send(&format!("<close xmlns='{FRAMING}'/>")).await;
        let cl = ws.expect("close", |e| e.is("close", FRAMING)).await;
        assert!(cl.is("close", FRAMING));
        ws.expect_closed().await;
    });
}

/// XEP-0198 over WebSocket: a resumable session whose WebSocket drops is
/// resumed on another node's WebSocket, and what it had not acknowledged
/// comes again.
#[test]
fn websocket_session_resumes_on_another_node() {
    rt().block_on(async {
        let (c, http) = cluster(3, |_| {}).await;
        let mut ws = WsClient::login(&ws_url(http[0]), "alice", "pw-alice", "web").await;
        ws.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>").await;
        let e = ws.expect("enabled", |e| e.is("enabled", ns::SM)).await;
        let id = e.attr("id").unwrap().to_string();
        ws.send("<presence xmlns='jabber:client'/>").await;
        ws.sync().await;

        let mut bob = RawClient::login(c.client_addr(2), "bob", "pw-bob", "tcp").await;
        for i in 0..3 {
            bob.send(&format!(
                "<message to='alice@localhost/web' type='chat' id='m{i}'><body>m{i}</body></message>"
            ))
            .await;
        }
        for i in 0..3 {
            let m = ws
                .expect("a message", |e| e.name() == "message" && body_of(e).is_some())
                .await;
            assert_eq!(body_of(&m), Some(format!("m{i}")));
        }
        // Not acknowledged; the network goes.
        ws.drop_connection();

        let mut again = WsClient::connect(&ws_url(http[2]), None).await.unwrap();
        again.open().await;
        let r = again.auth_plain("alice", "pw-alice").await;
        assert!(r.is("success", ns::SASL), "{r}");
        again.open().await;
        again
            .send(&format!("<resume xmlns='urn:xmpp:sm:3' h='0' previd='{id}'/>"))
            .await;
        let r = again
            .expect("resumed", |e| e.is("resumed", ns::SM) || e.is("failed", ns::SM))
            .await;
        assert!(r.is("resumed", ns::SM), "{r}");
        let mut bodies = Vec::new();
        while bodies.len() < 3 {
            let m = again.next().await;
            if m.name() == "message" {
                if let Some(b) = body_of(&m) {
                    bodies.push(b);
                }
            }
        }
        assert_eq!(bodies, ["m0", "m1", "m2"]);
        // The resumed session is live: bob reaches it on node 3.
        bob.send("<message to='alice@localhost/web' type='chat' id='m3'><body>m3</body></message>")
            .await;
        let m = again
            .expect("m3", |e| e.name() == "message" && body_of(e).is_some())
            .await;
        assert_eq!(body_of(&m).as_deref(), Some("m3"));
    });
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// XEP-0388 SASL2 with Bind 2 and a XEP-0484 FAST token over WebSocket
/// (no stream restart after `<success/>`), then a FAST login with it.
#[test]
fn sasl2_and_fast_over_websocket() {
    rt().block_on(async {
        let (_c, http) = cluster(1, |_| {}).await;
        const SASL2: &str = "urn:xmpp:sasl:2";
        const FAST: &str = "urn:xmpp:fast:0";
        const UA: &str = "<user-agent id='d4565fa7-4d72-4749-b3d3-740edbf87770'><software>ws-test</software></user-agent>";
        let mut ws = WsClient::connect(&ws_url(http[0]), None).await.unwrap();
        ws.open().await;
        ws.send(&format!(
            "<authenticate xmlns='{SASL2}' mechanism='PLAIN'><initial-response>{}</initial-response>{UA}\
             <request-token xmlns='{FAST}' mechanism='HT-SHA-256-NONE'/>\
             <bind xmlns='urn:xmpp:bind:0'><tag>web</tag></bind></authenticate>",
            b64(b"\0alice\0pw-alice")
        ))
        .await;
        let s = ws.next().await;
        assert!(s.is("success", SASL2), "{s}");
        assert!(s.has_child("bound", "urn:xmpp:bind:0"), "{s}");
        let token = s
            .get_child("token", FAST)
            .and_then(|t| t.attr("token"))
            .unwrap_or_else(|| panic!("no token: {s}"))
            .to_string();
        let f = ws.next().await;
        assert!(f.is("features", ns::STREAM), "{f}");
        ws.sync().await;

        let mut ws = WsClient::connect(&ws_url(http[0]), None).await.unwrap();
        ws.open().await;
        let mut msg = b"alice\0".to_vec();
        msg.extend(starling_raft::credentials::hmac(
            starling_raft::credentials::ScramHash::Sha256,
            token.as_bytes(),
            b"Initiator",
        ));
        ws.send(&format!(
            "<authenticate xmlns='{SASL2}' mechanism='HT-SHA-256-NONE'><initial-response>{}</initial-response>{UA}\
             <fast xmlns='{FAST}'/><bind xmlns='urn:xmpp:bind:0'><tag>web</tag></bind></authenticate>",
            b64(&msg)
        ))
        .await;
        let s = ws.next().await;
        assert!(s.is("success", SASL2), "FAST login: {s}");
        ws.sync().await;
    });
}

/// `wss://`: the node's certificate, and SCRAM-*-PLUS offered (channel
/// binding from the TLS under the WebSocket).
#[test]
fn wss_with_the_node_certificate() {
    rt().block_on(async {
        let port = free_ports(1)[0];
        let c = TestCluster::one_node(&["alice"], |cfg| {
            cfg.http.addr = Some(addr(port));
            cfg.http.tls = true;
        })
        .await;
        let _ = &c;
        let https = addr(port);
        wait_until_listening(https).await;
        let tls = tls_to(https).await;
        let url = format!("wss://localhost:{port}/xmpp-websocket");
        let mut ws = WsClient::connect_with(&url, None, Some("xmpp"), Some(tls))
            .await
            .unwrap();
        let (_, f) = ws.open().await;
        let mechs: Vec<String> = f
            .get_child("mechanisms", ns::SASL)
            .unwrap()
            .children()
            .map(|m| m.text())
            .collect();
        assert!(mechs.iter().any(|m| m == "SCRAM-SHA-256-PLUS"), "{f}");
        let r = ws.auth_plain("alice", "pw-alice").await;
        assert!(r.is("success", ns::SASL), "{r}");
        ws.open().await;
        ws.bind("wss").await;
        ws.sync().await;
    });
}

async fn wait_until_listening(a: SocketAddr) {
    let until = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(a).await.is_err() {
        assert!(Instant::now() < until, "{a} not listening");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What is refused, and how: Origin (403), no `xmpp` subprotocol (400),
/// the wrong framing namespace, TCP framing, two elements in one message,
/// a binary message, a message over `max_stanza_bytes` (stream errors,
/// each followed by `<close/>` and the end of the WebSocket).
#[test]
fn bad_requests_and_bad_framing_are_refused() {
    rt().block_on(async {
        let (_c, http) = cluster(1, |cfg| {
            cfg.xmpp.max_stanza_bytes = 20_000;
            // PEP items and vCards must fit in a stanza (validated).
            cfg.pep.max_item_bytes = 20_000;
            cfg.pep.max_vcard_bytes = 20_000;
        })
        .await;
        let url = ws_url(http[0]);

        // Origins: another site refused; the allowed one, the listener's
        // own, and none (a native client) accepted.
        assert_eq!(
            WsClient::connect(&url, Some("https://evil.example")).await.err(),
            Some(403)
        );
        for ok in ["https://chat.example", &format!("http://{}", http[0])] {
            let mut ws = WsClient::connect(&url, Some(ok)).await.unwrap_or_else(|s| panic!("{ok}: {s}"));
            ws.open().await;
        }
        // No subprotocol.
        assert_eq!(
            WsClient::connect_with(&url, None, None, None).await.err(),
            Some(400)
        );

        let error_after = |first: Option<&'static str>, then: String| {
            let url = url.clone();
            async move {
                let mut ws = WsClient::connect(&url, None).await.unwrap();
                if first.is_some() {
                    ws.open().await;
                }
                ws.send(&then).await;
                ws.expect_stream_error().await
            }
        };
        // The wrong framing namespace, and TCP's stream header.
        assert_eq!(
            error_after(None, "<open xmlns='jabber:client' to='localhost' version='1.0'/>".into()).await,
            "invalid-namespace"
        );
        assert_eq!(
            error_after(
                None,
                "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>".into()
            )
            .await,
            "invalid-namespace"
        );
        // A domain not served: as on TCP.
        assert_eq!(
            error_after(None, format!("<open xmlns='{FRAMING}' to='elsewhere.example' version='1.0'/>")).await,
            "host-unknown"
        );
        // Two elements in one message; half an element.
        assert_eq!(
            error_after(Some("open"), "<presence xmlns='jabber:client'/><presence xmlns='jabber:client'/>".into()).await,
            "bad-format"
        );
        assert_eq!(
            error_after(Some("open"), "<presence xmlns='jabber:client'>".into()).await,
            "bad-format"
        );
        // Over the stanza limit.
        let big = format!(
            "<message xmlns='jabber:client' to='bob@localhost'><body>{}</body></message>",
            "x".repeat(30_000)
        );
        assert_eq!(error_after(Some("open"), big).await, "policy-violation");

        // Binary.
        let mut ws = WsClient::connect(&url, None).await.unwrap();
        ws.open().await;
        ws.send_binary(b"<presence/>").await;
        assert_eq!(ws.expect_stream_error().await, "bad-format");
    });
}

/// XEP-0156: both host-meta forms list every node's endpoint, on every
/// node; `/healthz` answers; `/readyz` is ready on a healthy cluster and
/// not on a node whose two peers stopped, while `/healthz` still answers,
/// and `ctl status` says the same as `/readyz`.
#[test]
fn discovery_lists_every_node_and_readiness_follows_the_cluster() {
    rt().block_on(async {
        let (c, http) = cluster(3, |_| {}).await;
        let urls: Vec<String> = http.iter().map(|a| ws_url(*a)).collect();
        for a in &http {
            let (status, head, body) = http_get(*a, "/.well-known/host-meta").await;
            assert_eq!(status, 200);
            assert!(head.contains("content-type: application/xrd+xml"), "{head}");
            assert!(head.contains("access-control-allow-origin: *"), "{head}");
            let x = common::ws::parse_alone(
                body.trim_start_matches("<?xml version='1.0' encoding='utf-8'?>")
                    .trim(),
            );
            assert!(
                x.is("XRD", "http://docs.oasis-open.org/ns/xri/xrd-1.0"),
                "{body}"
            );
            let hrefs: Vec<String> = x
                .children()
                .filter(|l| l.attr("rel") == Some("urn:xmpp:alt-connections:websocket"))
                .filter_map(|l| l.attr("href").map(str::to_string))
                .collect();
            assert_eq!(hrefs, urls, "{body}");

            let (status, head, body) = http_get(*a, "/.well-known/host-meta.json").await;
            assert_eq!(status, 200);
            assert!(head.contains("content-type: application/json"), "{head}");
            let j: serde_json::Value = serde_json::from_str(&body).unwrap();
            let hrefs: Vec<String> = j["links"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|l| l["rel"] == "urn:xmpp:alt-connections:websocket")
                .map(|l| l["href"].as_str().unwrap().to_string())
                .collect();
            assert_eq!(hrefs, urls, "{body}");

            assert_eq!(http_get(*a, "/healthz").await.0, 200);
            assert_eq!(http_get(*a, "/readyz").await.0, 200);
        }
        let (ok, out, err) = ctl(&["--addr", &c.admin_addr(1), "status"]);
        assert!(ok, "{err}");
        assert!(out.contains("ready: yes"), "{out}");

        // Node 1 loses its cluster.
        c.signal(2, nix::sys::signal::Signal::SIGSTOP);
        c.signal(3, nix::sys::signal::Signal::SIGSTOP);
        let why = wait_ready(http[0], false).await;
        assert!(why.contains("not ready"), "{why}");
        assert_eq!(http_get(http[0], "/healthz").await.0, 200);
        let (ok, out, err) = ctl(&["--addr", &c.admin_addr(1), "status"]);
        assert!(ok, "{err}");
        assert!(out.contains("ready: no"), "{out}");

        // And back.
        c.signal(2, nix::sys::signal::Signal::SIGCONT);
        c.signal(3, nix::sys::signal::Signal::SIGCONT);
        wait_ready(http[0], true).await;
    });
}
