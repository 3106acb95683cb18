//! Interop with slixmpp-omemo (XEP-0384 OMEMO on slixmpp, third-party
//! Python libraries) over Starling's PEP: two users on different nodes
//! publish their OMEMO bundles and device lists, exchange encrypted
//! messages both ways and decrypt them; a third device logging in later on
//! a third node is announced to the other user by a PEP notification and
//! decrypts the next message (`tests/interop/omemo_scenario.py`).
//!
//! The test makes its own Python venv (`target/omemo-venv`, slixmpp-omemo
//! from PyPI with the slixmpp it requires) when it has none; it fails,
//! never skips, when that cannot be done.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{fast_raft, rt, TestCluster};

/// The slixmpp-omemo release the scenario is written for.
const SLIXMPP_OMEMO: &str = "slixmpp-omemo==2.2.0";

/// The venv's python, made (and slixmpp-omemo installed) if missing.
fn python() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/omemo-venv");
    let py = venv.join("bin/python");
    let has = |py: &PathBuf| {
        Command::new(py)
            .args(["-c", "import slixmpp_omemo, slixmpp"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if has(&py) {
        return py;
    }
    let status = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .expect("python3 is required for the OMEMO interop test");
    assert!(status.success(), "python3 -m venv {venv:?} failed");
    let out = Command::new(venv.join("bin/pip"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            SLIXMPP_OMEMO,
        ])
        .output()
        .expect("pip");
    assert!(
        out.status.success(),
        "pip install {SLIXMPP_OMEMO} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(has(&py), "slixmpp-omemo still not importable from {py:?}");
    py
}

#[test]
fn slixmpp_omemo_devices_on_three_nodes_exchange_encrypted_messages() {
    let python = python();
    let c = TestCluster::start(3, fast_raft());
    rt().block_on(async {
        c.wait_leader(1, Duration::from_secs(20)).await;
        for u in ["alice", "bob"] {
            c.create_user(1, u).await.unwrap();
        }
    });
    let port = |id: usize| c.nodes[id].config.xmpp.client_addr.port().to_string();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/omemo_scenario.py"
    );
    let out = Command::new(&python)
        .args([script, &port(0), &port(1), &port(2)])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    if !out.status.success() {
        for n in 1..=3 {
            eprintln!("--- node {n} log ---\n{}", c.log_of(n));
        }
        panic!("OMEMO scenario failed:\n{stdout}\n{stderr}");
    }
    assert!(stdout.contains("\nOK"), "{stdout}");
}
