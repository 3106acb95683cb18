//! Interop with xmpp.js (`@xmpp/client` 0.14, Node.js), a third-party
//! client with SASL2, Bind 2, XEP-0198 and FAST on by default, against a
//! three-node cluster (`tests/interop/xmppjs_scenario.mjs`):
//!
//! 1. alice logs in on node 1 (`xmpp://`: TCP + STARTTLS, the only one the
//!    test cluster listens on) with her password over XEP-0388 SASL2 and
//!    XEP-0386 Bind 2 (inline XEP-0198 `<enable/>`), asking for a XEP-0484
//!    FAST token, which xmpp.js hands to its `fast.saveToken` hook.
//! 2. bob logs in on node 2 the same way; they chat both ways.
//! 3. bob sends alice 30 messages; after the first ten her TCP connection is
//!    reset (RST, no `</stream>`) while the next ten are on their way; the
//!    last ten are sent while she is gone. She comes back on node 3 with
//!    the FAST token (HT-SHA-256-NONE, the password removed from the client)
//!    and inline resumption in the same `<authenticate/>`; every message of
//!    bob's arrives exactly once (by id) and she can chat from node 3.
//!
//! The JS side only drives the clients and prints one JSON object per line
//! (what each client sent and received during authentication, messages,
//! tokens); the checks are here. TLS certificates are not verified
//! (`NODE_TLS_REJECT_UNAUTHORIZED=0`): each node has its own self-signed
//! certificate for the same name, `localhost`, and xmpp.js's STARTTLS takes
//! no trust options; `NODE_EXTRA_CA_CERTS` with the three certificates
//! verifies node 1 and refuses node 2 ("self-signed certificate": OpenSSL
//! picks the trust anchor by subject name, the same for all three).
//!
//! Node.js (>= 18; the test prefers what xmpp.js asks for, 20.10) and npm
//! are required: the test installs `@xmpp/client@0.14` with npm into
//! `target/interop-xmppjs/` when it is not there (`scripts/test` does the
//! same first) and fails, saying why, without node or npm (it never
//! skips). `STARLING_TEST_NODE` / `STARLING_TEST_NPM` name other binaries;
//! `STARLING_INTEROP_WIRE=1` prints every element on stderr.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{fast_raft, TestCluster};
use serde_json::Value;

const XMPPJS: &str = "@xmpp/client@0.14";

/// `target/` of this build: the test binary is `target/<profile>/deps/<name>`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

fn run(cmd: &mut Command, what: &str) -> std::process::Output {
    cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {what} ({e}): the xmpp.js interop test needs Node.js >= 18 and npm \
             (`apt-get install -y nodejs npm`, or set STARLING_TEST_NODE / STARLING_TEST_NPM)"
        )
    })
}

/// The node binary, checked to be >= 18.
fn node() -> String {
    let node = std::env::var("STARLING_TEST_NODE").unwrap_or_else(|_| "node".into());
    let out = run(Command::new(&node).arg("--version"), &node);
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let major: u32 = v
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        out.status.success() && major >= 18,
        "{node} --version says {v:?}: the xmpp.js interop test needs Node.js >= 18"
    );
    node
}

/// The installed `@xmpp/client` version under `dir`, if any.
fn installed(dir: &Path) -> Option<String> {
    let p = dir.join("node_modules/@xmpp/client/package.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()?;
    Some(v["version"].as_str()?.to_string())
}

/// `@xmpp/client` 0.14.x under `target/interop-xmppjs/`, installed with npm
/// if missing.
fn xmppjs_dir() -> PathBuf {
    let dir = std::env::var_os("STARLING_TEST_XMPPJS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("interop-xmppjs"));
    if installed(&dir).is_some_and(|v| v.starts_with("0.14.")) {
        return dir;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let pkg = dir.join("package.json");
    if !pkg.exists() {
        std::fs::write(&pkg, "{ \"private\": true }\n").unwrap();
    }
    let npm = std::env::var("STARLING_TEST_NPM").unwrap_or_else(|_| "npm".into());
    eprintln!("== installing {XMPPJS} into {}", dir.display());
    let out = run(
        Command::new(&npm)
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .arg(XMPPJS),
        &npm,
    );
    assert!(
        out.status.success(),
        "npm install {XMPPJS} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v = installed(&dir);
    assert!(
        v.as_deref().is_some_and(|v| v.starts_with("0.14.")),
        "npm installed @xmpp/client {v:?}, not 0.14.x"
    );
    dir
}

/// Waits for node `id`'s self-signed client certificate.
fn cert_of(c: &TestCluster, id: u64) -> String {
    let n = c.nodes.iter().find(|n| n.config.node_id == id).unwrap();
    let path = n.config.data_dir.join("tls/cert.pem");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(pem) = std::fs::read_to_string(&path) {
            if pem.contains("END CERTIFICATE") {
                return pem;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no {}\n{}",
            path.display(),
            c.all_logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The scenario's events.
struct Events(Vec<Value>);

impl Events {
    fn all<'a>(&'a self, event: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.0.iter().filter(move |e| e["event"] == event)
    }

    fn of<'a>(&'a self, event: &'a str, who: &'a str) -> Vec<&'a Value> {
        self.all(event).filter(|e| e["who"] == who).collect()
    }

    fn one<'a>(&'a self, event: &'a str) -> &'a Value {
        let v: Vec<_> = self.all(event).collect();
        assert_eq!(v.len(), 1, "one {event:?} event: {v:?}");
        v[0]
    }
}

#[test]
fn xmppjs_sasl2_bind2_fast_and_resumption_on_another_node() {
    let node = node();
    let dir = xmppjs_dir();

    let rt = common::rt();
    let c = TestCluster::start(3, fast_raft());
    rt.block_on(async {
        c.wait_leader(1, Duration::from_secs(20)).await;
        for u in ["alice", "bob"] {
            c.create_user(1, u).await.unwrap();
        }
        c.wait_converged(1, &[1, 2, 3], Duration::from_secs(20))
            .await;
    });
    for id in 1..=3 {
        cert_of(&c, id); // the client listener is up
    }

    let port = |id: u64| c.client_addr(id).port().to_string();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/xmppjs_scenario.mjs"
    );
    let out = run(
        Command::new(&node)
            .arg(script)
            .args([port(1), port(2), port(3)])
            .env("XMPPJS_DIR", &dir)
            .env("NODE_TLS_REJECT_UNAUTHORIZED", "0"),
        &node,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    let fail = |why: &str| -> ! {
        eprintln!("{}", c.all_logs());
        panic!("xmpp.js scenario: {why}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    };
    if !out.status.success() {
        fail(&format!("node exited with {}", out.status));
    }
    let ev = Events(
        stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect(),
    );
    let check = |ok: bool, why: &str| {
        if !ok {
            fail(why)
        }
    };
    check(ev.all("done").count() == 1, "the scenario did not finish");
    check(
        ev.all("rfc6120-auth").count() == 0 && ev.all("rfc6120-bind").count() == 0,
        "a client fell back to RFC 6120 SASL or resource binding",
    );
    check(ev.all("failure").count() == 0, "a SASL2 failure");

    // 1. alice: password over SASL2 + Bind 2 with inline SM, token asked
    // for and received, over TLS.
    let f = ev.of("features", "alice");
    check(
        f.iter().all(|f| {
            f["fast"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m == "HT-SHA-256-NONE")
        }),
        "FAST HT-SHA-256-NONE not advertised to alice",
    );
    let auths = ev.of("authenticate", "alice");
    let succ = ev.of("success", "alice");
    check(
        auths.len() == 2 && succ.len() == 2,
        "alice: two SASL2 logins",
    );
    let (a1, s1) = (auths[0], succ[0]);
    check(
        a1["mechanism"].as_str().unwrap().starts_with("SCRAM-")
            && a1["bind"] == true
            && a1["request_token"] == "HT-SHA-256-NONE"
            && a1["fast"] == false
            && a1["resume"] == false,
        "alice's first <authenticate/>: SCRAM, <bind/>, <request-token/>",
    );
    check(
        s1["bound"] == true && s1["sm_enabled"] == true && s1["token"] == true,
        "alice's first <success/>: <bound/> with <enabled/>, a <token/>",
    );
    check(
        s1["authorization_identifier"]
            .as_str()
            .unwrap()
            .starts_with("alice@localhost/"),
        "alice's first authorization identifier is a full JID",
    );
    let secure = ev.of("secure", "alice");
    check(
        secure.len() == 1 && secure[0]["secure"] == true && secure[0]["sm_enabled"] == true,
        "alice not on TLS with stream management",
    );
    let saved = ev.of("token-saved", "alice");
    check(
        saved.len() == 2
            && saved
                .iter()
                .all(|t| t["mechanism"] == "HT-SHA-256-NONE" && t["length"].as_u64() > Some(0)),
        "alice's fast.saveToken: the first token, then the rotated one",
    );

    // bob: SASL2 + Bind 2 too.
    let (ba, bs) = (ev.of("authenticate", "bob"), ev.of("success", "bob"));
    check(
        ba.len() == 1 && ba[0]["bind"] == true && bs.len() == 1 && bs[0]["bound"] == true,
        "bob: one SASL2 + Bind 2 login",
    );

    // 2. Both ways.
    check(ev.all("exchanged").count() == 1, "no exchange");
    let msgs: Vec<&Value> = ev.all("message").collect();
    for (to, prefix) in [("bob", "a2b-"), ("alice", "b2a-")] {
        let n = msgs
            .iter()
            .filter(|m| {
                m["to"] == to
                    && m["id"]
                        .as_str()
                        .and_then(|id| id.strip_prefix(prefix))
                        .is_some_and(|n| n.parse::<u32>().is_ok())
            })
            .count();
        check(n == 3, &format!("{to} got {n} of 3 {prefix} messages"));
    }

    // 3. The reset, then FAST + inline resumption on node 3.
    check(ev.all("killed").count() == 1, "alice's socket not killed");
    let gone = ev.one("disconnected");
    check(gone["sm_id_kept"] == true, "xmpp.js forgot the SM id");
    let (a2, s2) = (auths[1], succ[1]);
    check(
        a2["mechanism"] == "HT-SHA-256-NONE" && a2["fast"] == true && a2["resume"] == true,
        "alice's second <authenticate/>: HT-SHA-256-NONE with <fast/> and <resume/>",
    );
    check(
        s2["resumed"].is_object() && s2["bound"] == false && s2["sm_failed"] == false,
        "alice's second <success/>: <resumed/>, no new binding",
    );
    check(
        s2["authorization_identifier"] == s1["authorization_identifier"],
        "the resumed session has alice's first full JID",
    );
    check(
        ev.of("sm-resumed", "alice").len() == 1,
        "xmpp.js did not resume",
    );
    check(
        ev.of("online", "alice").len() == 1,
        "alice came online twice (a new session, not a resumption)",
    );
    let result = ev.one("result");
    let sent: Vec<&str> = result["sent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    check(sent.len() == 30, "bob sent 30");
    let counts: BTreeMap<String, u64> = result["counts"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect();
    let lost: Vec<&&str> = sent
        .iter()
        .filter(|id| !counts.contains_key(**id))
        .collect();
    let twice: Vec<(&String, &u64)> = counts.iter().filter(|(_, n)| **n != 1).collect();
    check(lost.is_empty(), &format!("lost: {lost:?}"));
    check(twice.is_empty(), &format!("not exactly once: {twice:?}"));
    check(
        counts.len() == sent.len(),
        "alice got a message bob did not send",
    );
    check(
        ev.all("after-resume-chat").count() == 1,
        "alice cannot chat after the resumption",
    );
    println!(
        "OK: {} of bob's messages read before the reset, all 30 exactly once",
        gone["bob_messages_read"]
    );
}
