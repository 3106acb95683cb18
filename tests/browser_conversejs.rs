//! Issue 13 part 4: a real browser. Converse.js (npm `converse.js` 12.0.0,
//! served by the test from loopback with `tests/interop/conversejs.html`)
//! in headless Chromium (Debian `chromium`, driven by `playwright-core`),
//! against a three-node cluster over RFC 7395 WebSockets
//! (`tests/interop/conversejs_scenario.mjs`):
//!
//! 1. alice logs in through node 1's WebSocket, bob through node 2's;
//! 2. each adds the other (roster + subscription, approved both ways);
//! 3. they chat both ways, typed into Converse's message box;
//! 4. alice opens the page again in a fresh browser context (no local
//!    storage: a new device) through node 2 and sees the conversation,
//!    which can only come from the XEP-0313 archive (`[archive] enabled =
//!    true` in this test's config);
//! 5. a screenshot of that chat is kept in
//!    `target/artifacts/conversejs-chat.png`.
//!
//! The page's origin (`http://127.0.0.1:<port>`) is in the nodes'
//! `[http] allowed_origins`. What the test needs it installs: `chromium`
//! with apt-get when it is missing (as root; else it fails saying so),
//! converse.js and playwright-core with npm into
//! `target/interop-conversejs/` (`scripts/test` does both first). It never
//! skips. `STARLING_TEST_CHROMIUM` names another browser binary;
//! `STARLING_INTEROP_WIRE=1` prints the browser console on stderr.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{addr, fast_raft, free_ports, TestCluster};
use serde_json::Value;

const CONVERSE: &str = "converse.js@12.0.0";
const PLAYWRIGHT: &str = "playwright-core@1.56.1";

fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

fn run(cmd: &mut Command, what: &str) -> std::process::Output {
    cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {what}: {e} (the Converse.js test needs node, npm and chromium)")
    })
}

/// Chromium: `STARLING_TEST_CHROMIUM`, or Debian's, installed with
/// apt-get when missing.
fn chromium() -> String {
    if let Ok(c) = std::env::var("STARLING_TEST_CHROMIUM") {
        return c;
    }
    let found = || {
        ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .map(str::to_string)
    };
    if let Some(c) = found() {
        return c;
    }
    eprintln!("== installing chromium with apt-get");
    let ok = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    let installed = ok(&["install", "-y", "--no-install-recommends", "chromium"])
        || (ok(&["update"]) && ok(&["install", "-y", "--no-install-recommends", "chromium"]));
    found().unwrap_or_else(|| {
        panic!(
            "chromium is missing and `apt-get install chromium` {} (run as root, or install it, \
             or set STARLING_TEST_CHROMIUM)",
            if installed {
                "installed nothing usable"
            } else {
                "failed"
            }
        )
    })
}

fn version_of(dir: &Path, package: &str) -> Option<String> {
    let p = dir.join("node_modules").join(package).join("package.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()?;
    Some(v["version"].as_str()?.to_string())
}

/// converse.js and playwright-core under `target/interop-conversejs/`.
fn converse_dir() -> PathBuf {
    let dir = std::env::var_os("STARLING_TEST_CONVERSE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("interop-conversejs"));
    let want = |spec: &str| {
        let (name, v) = spec.rsplit_once('@').unwrap();
        version_of(&dir, name).as_deref() == Some(v)
    };
    if want(CONVERSE) && want(PLAYWRIGHT) {
        return dir;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let pkg = dir.join("package.json");
    if !pkg.exists() {
        std::fs::write(&pkg, "{ \"private\": true }\n").unwrap();
    }
    let npm = std::env::var("STARLING_TEST_NPM").unwrap_or_else(|_| "npm".into());
    eprintln!(
        "== installing {CONVERSE} {PLAYWRIGHT} into {}",
        dir.display()
    );
    let out = run(
        Command::new(&npm)
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .args([CONVERSE, PLAYWRIGHT]),
        &npm,
    );
    assert!(
        out.status.success() && want(CONVERSE) && want(PLAYWRIGHT),
        "npm install {CONVERSE} {PLAYWRIGHT} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

#[test]
fn conversejs_in_chromium_chats_across_nodes_and_reads_the_archive() {
    let chromium = chromium();
    let dir = converse_dir();
    let node = std::env::var("STARLING_TEST_NODE").unwrap_or_else(|_| "node".into());

    let ports = free_ports(4);
    let page_port = ports[3];
    let origin = format!("http://127.0.0.1:{page_port}");
    let http: Vec<_> = ports[..3].iter().map(|p| addr(*p)).collect();
    let ws = |i: usize| format!("ws://{}/xmpp-websocket", http[i]);
    let rt = common::rt();
    let c = TestCluster::start_with(3, fast_raft(), |cfg| {
        cfg.http.addr = Some(http[cfg.node_id as usize - 1]);
        cfg.http.tls = false;
        cfg.http.allowed_origins = vec![origin.clone()];
        cfg.archive.enabled = true;
    });
    rt.block_on(async {
        c.wait_leader(1, Duration::from_secs(20)).await;
        for u in ["alice", "bob"] {
            c.create_user(1, u).await.unwrap();
        }
        c.wait_converged(1, &[1, 2, 3], Duration::from_secs(20))
            .await;
        for a in &http {
            let until = std::time::Instant::now() + Duration::from_secs(20);
            while common::ws::http_get_opt(*a, "/readyz").await != Some(200) {
                assert!(std::time::Instant::now() < until, "{a} not ready");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });

    let artifacts = target_dir().join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("conversejs-chat.png");
    let _ = std::fs::remove_file(&shot);
    let manifest = env!("CARGO_MANIFEST_DIR");
    let out = run(
        Command::new(&node)
            .arg(format!("{manifest}/tests/interop/conversejs_scenario.mjs"))
            .env("CONVERSE_DIR", &dir)
            .env("CONVERSE_DIST", dir.join("node_modules/converse.js/dist"))
            .env("PAGE", format!("{manifest}/tests/interop/conversejs.html"))
            .env("PAGE_PORT", page_port.to_string())
            .env("WS1", ws(0))
            .env("WS2", ws(1))
            .env("CHROMIUM", &chromium)
            .env("SHOT", &shot),
        &node,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    let events: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let step = |s: &str| events.iter().find(|e| e["step"] == s);
    let fail = |why: &str| -> ! {
        eprintln!("{}", c.all_logs());
        panic!("Converse.js scenario: {why}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    };
    if !out.status.success() || step("done").is_none() {
        fail("did not finish");
    }
    let logins: Vec<_> = events.iter().filter(|e| e["step"] == "logged-in").collect();
    assert_eq!(logins.len(), 3, "{logins:?}");
    assert_eq!(logins[0]["ws"], ws(0));
    assert_eq!(logins[1]["ws"], ws(1));
    assert!(logins[0]["jid"]
        .as_str()
        .unwrap()
        .starts_with("alice@localhost/"));
    assert!(logins[1]["jid"]
        .as_str()
        .unwrap()
        .starts_with("bob@localhost/"));
    assert!(step("subscribed").is_some());
    assert!(step("bob-got").is_some() && step("alice-got").is_some());
    let history: Vec<String> = step("history").unwrap()["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    for want in [
        "Hello Bob, from Alice on node 1",
        "Hi Alice, Bob here on node 2",
    ] {
        assert!(
            history.iter().any(|t| t.contains(want)),
            "{want:?} not in {history:?}"
        );
    }
    let png =
        std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot {}: {e}", shot.display()));
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    // Nobody's page broke.
    let errors: Vec<_> = events
        .iter()
        .filter(|e| e.get("pageerror").is_some())
        .collect();
    assert!(errors.is_empty(), "page errors: {errors:?}");
}
