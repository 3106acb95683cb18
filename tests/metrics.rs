//! Issue 13, part 5, on real `starling serve` processes: every node's
//! `/metrics` scraped before and after traffic (logins on two nodes,
//! messages across nodes, one to an offline user, one to nobody, a failed
//! authentication on a third node), the values that must move checked on
//! the node where they must, the raft and mesh gauges agreeing across the
//! cluster, and `promtool check metrics` passing on each output; the alert
//! rules in `deploy/` checked (`promtool check rules`) and unit-tested
//! (`promtool test rules`), and every metric the rules and the Grafana
//! dashboard name present in a real scrape. promtool comes from Debian's
//! `prometheus` package: installed with apt-get when missing (as root), or
//! the test fails saying so. And who may scrape: `[http] metrics_allow`
//! (the TCP peer's address; a client socket bound to 127.0.0.2 is "another
//! host" on loopback) and `metrics_token_file` (a bearer token).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ws::{http_get, http_get_on, WsClient};
use common::xmpp::{body_of, RawClient};
use common::{addr, fast_raft, free_ports, rt, TestCluster};
use starling::xmpp::ns;

/// `promtool`, installed with apt-get (Debian's `prometheus`) if missing.
fn promtool() -> &'static str {
    let found = |p: &str| {
        Command::new(p)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if found("promtool") {
        return "promtool";
    }
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "prometheus"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        let _ = Command::new("apt-get").arg("update").status();
        assert!(
            install(),
            "promtool is missing and apt-get install prometheus failed: install Debian's prometheus package (as root) or run scripts/test as root"
        );
    }
    assert!(
        found("promtool"),
        "promtool still missing after installing prometheus"
    );
    "promtool"
}

/// Runs promtool with `args`, `stdin` on its input; panics with its output
/// unless it succeeds.
fn promtool_ok(args: &[&str], dir: &Path, stdin: &str) -> String {
    let mut child = Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// One scrape: the text, and each sample (`name{labels}` as written) with
/// its value.
struct Scrape {
    text: String,
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    fn get(&self, key: &str) -> f64 {
        *self
            .samples
            .get(key)
            .unwrap_or_else(|| panic!("no sample {key} in:\n{}", self.text))
    }

    /// Metric names present (histogram suffixes included).
    fn names(&self) -> BTreeSet<String> {
        self.samples
            .keys()
            .map(|k| k.split('{').next().unwrap().to_string())
            .collect()
    }
}

async fn scrape(http: SocketAddr) -> Scrape {
    let (status, head, text) = http_get(http, "/metrics").await;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            let v = match v {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap(),
            };
            (k.to_string(), v)
        })
        .collect();
    Scrape { text, samples }
}

/// Scrapes `http` until `ok` holds (state that replicates or settles).
async fn scrape_until(http: SocketAddr, what: &str, ok: impl Fn(&Scrape) -> bool) -> Scrape {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let s = scrape(http).await;
        if ok(&s) {
            return s;
        }
        assert!(
            Instant::now() < until,
            "{http}: {what} never held:\n{}",
            s.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn cluster() -> (TestCluster, Vec<SocketAddr>) {
    let http: Vec<SocketAddr> = free_ports(3).into_iter().map(addr).collect();
    let c = TestCluster::start_with(3, fast_raft(), |cfg| {
        cfg.http.addr = Some(http[cfg.node_id as usize - 1]);
        cfg.http.tls = false;
    });
    c.wait_leader(1, Duration::from_secs(20)).await;
    for u in ["alice", "bob", "carol"] {
        c.create_user(1, u).await.unwrap();
    }
    for a in &http {
        scrape_until(*a, "serving", |s| {
            s.get("starling_raft_leader_known") == 1.0 && s.get("starling_accounts") == 3.0
        })
        .await;
    }
    (c, http)
}

fn chat(to: &str, id: &str) -> String {
    format!("<message xmlns='jabber:client' to='{to}' type='chat' id='{id}'><body>{id}</body></message>")
}

#[test]
fn metrics_move_with_traffic_on_every_node() {
    rt().block_on(async {
        let (c, http) = cluster().await;
        let before: Vec<Scrape> = futures::future::join_all(http.iter().map(|a| scrape(*a))).await;

        // alice on node 1, bob on node 2 (TCP), carol never logs in.
        let mut alice = RawClient::login(c.client_addr(1), "alice", "pw-alice", "a").await;
        let mut bob = RawClient::login(c.client_addr(2), "bob", "pw-bob", "b").await;
        for who in [&mut alice, &mut bob] {
            who.send("<presence/>").await;
            who.sync().await;
        }
        for i in 0..3 {
            alice.send(&chat("bob@localhost", &format!("a{i}"))).await;
        }
        for i in 0..3 {
            let m = bob
                .expect("alice's message", |e| {
                    e.name() == "message" && body_of(e).is_some()
                })
                .await;
            assert_eq!(body_of(&m), Some(format!("a{i}")));
        }
        bob.send(&chat("alice@localhost/a", "b0")).await;
        alice
            .expect("bob's message", |e| body_of(e).as_deref() == Some("b0"))
            .await;
        // Local: to herself, on node 1.
        alice.send(&chat("alice@localhost/a", "self")).await;
        alice
            .expect("her own message", |e| body_of(e).as_deref() == Some("self"))
            .await;
        // Offline: carol has no session.
        alice.send(&chat("carol@localhost", "c0")).await;
        // Bounced: no such account (RFC 6121 §8.5.1).
        alice.send(&chat("nobody@localhost", "n0")).await;
        alice
            .expect("the bounce", |e| e.attr("type") == Some("error"))
            .await;
        alice.sync().await;
        // A failed authentication on node 3.
        let mut wrong = RawClient::connect(c.client_addr(3)).await;
        wrong.open().await;
        wrong.starttls().await;
        wrong.open().await;
        let r = wrong.auth_plain("carol", "not-her-password").await;
        assert!(r.is("failure", ns::SASL), "{r}");
        // A WebSocket connection on node 3, open while scraped.
        let ws = WsClient::connect(&common::ws::ws_url(http[2]), None)
            .await
            .unwrap();

        let after = [
            scrape_until(http[0], "the offline message replicated", |s| {
                s.get("starling_offline_messages") >= 1.0
            })
            .await,
            scrape(http[1]).await,
            scrape_until(http[2], "the WebSocket counted", |s| {
                s.get("starling_c2s_connections{transport=\"websocket\"}") == 1.0
            })
            .await,
        ];
        let grew = |node: usize, key: &str| after[node].get(key) - before[node].get(key);

        // Node 1: alice's login, 6 messages in (3 to bob, herself, carol,
        // nobody) plus presence and pings, 3 over the mesh, one local, one
        // offline, one bounced; bob's, her own and the bounce written to
        // her.
        assert_eq!(
            grew(0, "starling_auth_attempts_total{outcome=\"success\"}"),
            1.0
        );
        assert!(grew(0, "starling_stanzas_received_total{kind=\"message\"}") >= 6.0);
        assert!(grew(0, "starling_stanzas_received_total{kind=\"presence\"}") >= 1.0);
        assert!(grew(0, "starling_stanzas_received_total{kind=\"iq\"}") >= 2.0);
        assert!(grew(0, "starling_stanzas_sent_total{kind=\"message\"}") >= 3.0);
        assert!(grew(0, "starling_routed_stanzas_total{outcome=\"mesh\"}") >= 3.0);
        assert!(grew(0, "starling_routed_stanzas_total{outcome=\"offline\"}") >= 1.0);
        assert!(grew(0, "starling_routed_stanzas_total{outcome=\"bounced\"}") >= 1.0);
        assert!(grew(0, "starling_routed_stanzas_total{outcome=\"local\"}") >= 1.0);
        assert_eq!(after[0].get("starling_c2s_sessions"), 1.0);
        assert!(after[0].get("starling_c2s_connections{transport=\"tcp\"}") >= 1.0);
        // Node 2: bob's login, alice's three written to him, his one over
        // the mesh.
        assert_eq!(
            grew(1, "starling_auth_attempts_total{outcome=\"success\"}"),
            1.0
        );
        assert!(grew(1, "starling_stanzas_sent_total{kind=\"message\"}") >= 3.0);
        assert!(grew(1, "starling_routed_stanzas_total{outcome=\"mesh\"}") >= 1.0);
        assert_eq!(after[1].get("starling_c2s_sessions"), 1.0);
        // Node 3: the failure, and nothing else.
        assert_eq!(
            grew(2, "starling_auth_attempts_total{outcome=\"failure\"}"),
            1.0
        );
        assert_eq!(
            grew(2, "starling_auth_attempts_total{outcome=\"success\"}"),
            0.0
        );
        assert_eq!(after[2].get("starling_c2s_sessions"), 0.0);
        assert_eq!(
            grew(
                2,
                "starling_c2s_connections_opened_total{transport=\"websocket\"}"
            ),
            1.0
        );
        assert!(
            after[2].get("starling_c2s_admitted_connections{state=\"preauth\"}") >= 1.0,
            "the WebSocket (and the failed client) are not authenticated"
        );

        // Raft: one leader, one term, the same leader seen by all, the
        // replicated tables the same everywhere.
        let leaders: f64 = after.iter().map(|s| s.get("starling_raft_is_leader")).sum();
        assert_eq!(leaders, 1.0);
        let leader = after
            .iter()
            .position(|s| s.get("starling_raft_is_leader") == 1.0)
            .unwrap();
        for s in &after {
            assert_eq!(s.get("starling_raft_leader_id"), (leader + 1) as f64);
            assert_eq!(
                s.get("starling_raft_term"),
                after[0].get("starling_raft_term")
            );
            assert_eq!(s.get("starling_raft_voters"), 3.0);
            assert!(s.get("starling_raft_applied_index") > 0.0);
            assert!(s.get("starling_raft_last_log_index") >= s.get("starling_raft_applied_index"));
            assert!(s.get("starling_raft_commit_index") > 0.0);
            assert_eq!(s.get("starling_accounts"), 3.0);
            assert!(s.get("process_resident_memory_bytes") > 1e6);
            assert!(s.get("process_open_fds") > 3.0);
            assert!(s.get("process_max_fds") >= s.get("process_open_fds"));
            // Both peers' mesh links up.
            let links: Vec<_> = s
                .samples
                .iter()
                .filter(|(k, _)| k.starts_with("starling_mesh_link_up{"))
                .collect();
            assert_eq!(links.len(), 2, "{}", s.text);
            assert!(links.iter().all(|(_, v)| **v == 1.0), "{}", s.text);
        }
        // The leader reports each follower's matched index.
        let matched = after[leader]
            .samples
            .keys()
            .filter(|k| k.starts_with("starling_raft_follower_matched_index{"))
            .count();
        assert_eq!(matched, 2, "{}", after[leader].text);
        // Every node committed (and timed) proposals: the logins' bindings.
        for (i, s) in after.iter().enumerate() {
            let n = s.get("starling_raft_proposal_duration_seconds_count");
            assert!(n >= 1.0, "node {} timed no proposal", i + 1);
            assert_eq!(
                s.get("starling_raft_proposal_duration_seconds_bucket{le=\"+Inf\"}"),
                n
            );
        }
        let offline = scrape_until(http[2], "the offline message replicated", |s| {
            s.get("starling_offline_messages") >= 1.0
        })
        .await;
        assert!(offline.get("starling_offline_messages_size_bytes") > 0.0);

        // promtool's lint on every node's exposition.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        for s in &after {
            promtool_ok(&["check", "metrics"], dir, &s.text);
        }

        // Every metric the alert rules and the dashboard use exists.
        let names = after[leader].names();
        let mut used = String::new();
        for f in [
            "deploy/prometheus/alerts.yml",
            "deploy/grafana/starling.json",
        ] {
            used.push_str(&std::fs::read_to_string(dir.join(f)).unwrap());
        }
        let mut checked = 0;
        for word in used.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if (word.starts_with("starling_") || word.starts_with("process_"))
                && word != "starling_overview"
            {
                assert!(
                    names.contains(word),
                    "{word} is used in deploy/ but not exported"
                );
                checked += 1;
            }
        }
        assert!(checked > 20, "only {checked} metric names found in deploy/");
        drop(ws);
    });
}

/// `deploy/prometheus/prometheus.yml`, the scrape example with a bearer
/// token file, passes `promtool check config` (the token file made for it).
#[test]
fn prometheus_config_passes_promtool() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("starling.token");
    std::fs::write(&token, "scrape-token-0123456789abcdef\n").unwrap();
    let config = std::fs::read_to_string(src.join("prometheus.yml")).unwrap();
    assert!(config.contains("credentials_file: /etc/prometheus/starling.token"));
    let config = config.replace("/etc/prometheus/starling.token", token.to_str().unwrap());
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    std::fs::copy(src.join("alerts.yml"), dir.path().join("alerts.yml")).unwrap();
    let out = promtool_ok(&["check", "config", "prometheus.yml"], dir.path(), "");
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn alert_rules_pass_promtool() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    let out = promtool_ok(&["check", "rules", "alerts.yml"], &dir, "");
    assert!(out.contains("SUCCESS"), "{out}");
    let out = promtool_ok(&["test", "rules", "alerts_test.yml"], &dir, "");
    assert!(out.contains("SUCCESS"), "{out}");
}

/// A GET of `/metrics` from the local address `from`, with an
/// `Authorization` header when given: (status, lower-cased head, body).
async fn get_metrics_from(
    from: std::net::IpAddr,
    http: SocketAddr,
    authorization: Option<&str>,
) -> (u16, String, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let s = socket.connect(http).await.unwrap();
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    http_get_on(s, http, "/metrics", &auth).await
}

/// Node 1: `metrics_allow = ["127.0.0.1/32"]` and a bearer token; node 2:
/// the defaults (loopback, no token). The peer address is the connection's:
/// a request from 127.0.0.2 is refused by node 1 whatever it carries, and
/// served by node 2 (127.0.0.0/8); a missing or wrong token gets 401 with
/// `WWW-Authenticate: Bearer`; a refusal carries no metric.
#[test]
fn metrics_access_by_address_and_token() {
    rt().block_on(async {
        let secrets = tempfile::tempdir().unwrap();
        let token = "scrape-token-0123456789abcdef";
        let token_file = secrets.path().join("metrics.token");
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
        let http: Vec<SocketAddr> = free_ports(2).into_iter().map(addr).collect();
        let token_file = Arc::new(token_file);
        let c = TestCluster::start_with(2, fast_raft(), {
            let token_file = token_file.clone();
            let http = http.clone();
            move |cfg| {
                cfg.http.addr = Some(http[cfg.node_id as usize - 1]);
                cfg.http.tls = false;
                if cfg.node_id == 1 {
                    cfg.http.metrics_allow = vec!["127.0.0.1/32".into()];
                    cfg.http.metrics_token_file = Some((*token_file).clone());
                }
            }
        });
        c.wait_leader(1, Duration::from_secs(20)).await;
        let lo: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let other: std::net::IpAddr = "127.0.0.2".parse().unwrap();
        let bearer = format!("Bearer {token}");
        let served = |(status, head, body): &(u16, String, String)| {
            *status == 200
                && head.contains("content-type: text/plain; version=0.0.4")
                && body.contains("starling_raft_term")
        };
        let no_metric = |(_, _, body): &(u16, String, String)| !body.contains("starling_");

        // Node 1, from an allowed address with the token: served.
        let ok = get_metrics_from(lo, http[0], Some(&bearer)).await;
        assert!(served(&ok), "{ok:?}");
        // The scheme in any case (RFC 6750 §2.1, RFC 9110 §11.1).
        let lower = get_metrics_from(lo, http[0], Some(&format!("bearer {token}"))).await;
        assert!(served(&lower), "{lower:?}");

        // From another address: 403, even with the token.
        let r = get_metrics_from(other, http[0], Some(&bearer)).await;
        assert_eq!(r.0, 403, "{r:?}");
        assert!(no_metric(&r), "{r:?}");
        let r = get_metrics_from(other, http[0], None).await;
        assert_eq!(r.0, 403, "{r:?}");
        assert!(no_metric(&r), "{r:?}");

        // No token: 401 with the challenge.
        let r = get_metrics_from(lo, http[0], None).await;
        assert_eq!(r.0, 401, "{r:?}");
        assert!(
            r.1.contains("www-authenticate: bearer realm=\"starling metrics\""),
            "{r:?}"
        );
        assert!(no_metric(&r), "{r:?}");
        // Another scheme is no bearer token.
        let r = get_metrics_from(lo, http[0], Some(&format!("Basic {token}"))).await;
        assert_eq!(r.0, 401, "{r:?}");
        assert!(no_metric(&r), "{r:?}");

        // A wrong token (one character off, a prefix): 401, invalid_token.
        let mut off = token.to_string();
        off.pop();
        for wrong in [format!("{off}X"), off.clone(), format!("{token}0")] {
            let r = get_metrics_from(lo, http[0], Some(&format!("Bearer {wrong}"))).await;
            assert_eq!(r.0, 401, "{wrong}: {r:?}");
            assert!(r.1.contains("error=\"invalid_token\""), "{r:?}");
            assert!(no_metric(&r), "{r:?}");
        }

        // Node 2, the defaults: all of loopback, no token asked.
        for from in [lo, other] {
            let r = get_metrics_from(from, http[1], None).await;
            assert!(served(&r), "{from}: {r:?}");
        }
        // Other endpoints of the listener are not restricted.
        let (status, _, _) = http_get(http[0], "/healthz").await;
        assert_eq!(status, 200);
        drop(c);
    });
}
