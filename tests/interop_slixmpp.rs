//! Interop with slixmpp, a third-party Python XMPP library: in-band
//! registration, STARTTLS + SCRAM login, roster, subscriptions both ways,
//! presence, chat on one node and across nodes, disco, ping, XEP-0191
//! blocking across nodes, XEP-0313 archive paging across nodes with
//! slixmpp's MAM plugin (`tests/interop/slixmpp_scenario.py`).
//!
//! The interpreter comes from `STARLING_TEST_PYTHON`, which the README's
//! test command (`scripts/test`) sets after installing slixmpp; without it
//! the test fails and says how to get it (it never skips).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{fast_raft, TestCluster};

#[test]
fn slixmpp_registers_subscribes_and_chats_across_nodes() {
    let python = std::env::var("STARLING_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "STARLING_TEST_PYTHON is not set: run the tests with `scripts/test` \
             (it installs slixmpp), or point it at a python with slixmpp 1.8"
        )
    });
    let probe = Command::new(&python)
        .args(["-c", "import slixmpp"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    assert!(
        probe.status.success(),
        "{python} cannot import slixmpp: {}",
        String::from_utf8_lossy(&probe.stderr)
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = TestCluster::start_with(3, fast_raft(), |c| c.archive.enabled = true);
    rt.block_on(c.wait_leader(1, Duration::from_secs(20)));
    let port = |id: usize| c.nodes[id].config.xmpp.client_addr.port().to_string();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/slixmpp_scenario.py"
    );
    let out = Command::new(&python)
        .args([script, &port(0), &port(1)])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    if !out.status.success() {
        for n in 1..=3 {
            eprintln!("--- node {n} log ---\n{}", c.log_of(n));
        }
        panic!("slixmpp scenario failed:\n{stdout}\n{stderr}");
    }
    assert!(stdout.contains("\nOK"), "{stdout}");
}
