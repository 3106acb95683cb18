//! `starling dev`, the README's main command, end to end: start, inspect,
//! kill -9 a node, stop cleanly, start again on the same directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
}

/// A base port whose node ports (BASE+1..=3, BASE+101..=103) are free.
fn base_port() -> u16 {
    for _ in 0..50 {
        let p = free_ports(1)[0];
        let base = p.saturating_sub(200).max(10_000);
        let ok = (1..=3)
            .chain(101..=103)
            .all(|o| std::net::TcpListener::bind(("127.0.0.1", base + o)).is_ok());
        if ok && base < 65_000 {
            return base;
        }
    }
    panic!("no free port range");
}

struct Dev {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Dev {
    fn start(dir: &std::path::Path, base: u16) -> Dev {
        let mut child = Command::new(BIN)
            .args(["dev", "--dir"])
            .arg(dir)
            .args(["--base-port", &base.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Dev { child, lines: rx }
    }

    fn wait_line(&self, needle: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                let hit = l.contains(needle);
                seen.push(l);
                if hit {
                    return seen;
                }
            }
        }
        panic!("no line containing {needle:?} within {timeout:?}; saw: {seen:#?}");
    }

    fn sigterm_and_wait(mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "dev did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn pids(cluster_json: &std::path::Path) -> Vec<(u64, i32)> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cluster_json).unwrap()).unwrap();
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_u64().unwrap(), n["pid"].as_i64().unwrap() as i32))
        .collect()
}

#[test]
fn dev_starts_stops_and_restarts_the_same_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let base = base_port();
    let dev = Dev::start(dir.path(), base);
    let out = dev.wait_line("Ctrl-C stops every node", Duration::from_secs(60));
    let text = out.join("\n");
    assert!(text.contains("new 3-node cluster"), "{text}");
    assert!(
        text.contains(&format!("127.0.0.1:{}", base + 101)),
        "{text}"
    );
    let json = dir.path().join("cluster.json");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for n in nodes {
        for key in ["config", "raft_addr", "admin_addr", "log", "data_dir"] {
            assert!(
                n[key].as_str().is_some_and(|s| !s.is_empty()),
                "{key} missing in {n}"
            );
        }
    }
    let first = pids(&json);
    assert!(first.iter().all(|(_, p)| alive(*p)));

    // Issue 10 item 7: the secrets are the owner's only. The configs hold
    // the cluster secret and the admin token; ctl --cluster reads the token
    // from the file cluster.json names (no token in the environment here),
    // and the password from standard input.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dir.path()), 0o700);
    for id in 1..=3 {
        let config = dir.path().join(format!("node{id}.toml"));
        assert_eq!(mode(&config), 0o600, "{}", config.display());
        assert!(std::fs::read_to_string(&config)
            .unwrap()
            .contains("admin_token = "));
        assert_eq!(mode(&dir.path().join(format!("node{id}"))), 0o700);
    }
    let token_file = v["admin_token_file"].as_str().unwrap();
    assert_eq!(mode(std::path::Path::new(token_file)), 0o600);
    let json_s = json.to_str().unwrap();
    let (ok, _, err) = ctl_as(
        &["--addr", nodes[0]["admin_addr"].as_str().unwrap(), "status"],
        None,
        "",
    );
    assert!(!ok && err.contains("not authorized"), "{err}");
    let (ok, out, err) = ctl_as(
        &["--cluster", json_s, "user", "create", "dave"],
        None,
        "pw\n",
    );
    assert!(ok, "{out}{err}");
    let (ok, out, _) = ctl_as(&["--cluster", json_s, "status"], None, "");
    assert!(ok && out.contains("leader:"), "{out}");

    // kill -9 one node: dev reports it and keeps the others running.
    let (victim_id, victim) = first[2];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let seen = dev.wait_line(&format!("node {victim_id} exited"), Duration::from_secs(10));
    assert!(seen.last().unwrap().contains("serve --config"), "{seen:?}");
    let (ok, out, err) = ctl_as(
        &["--cluster", json_s, "user", "create", "erin"],
        None,
        "pw\n",
    );
    assert!(ok, "two of three nodes still form a quorum: {out}{err}");

    let status = dev.sigterm_and_wait();
    assert!(status.success(), "{status}");
    for (id, p) in &first {
        assert!(!alive(*p), "node {id} (pid {p}) outlived dev");
    }

    // Same directory: same cluster, same data, all three nodes back.
    let dev = Dev::start(dir.path(), base);
    let out = dev.wait_line("Ctrl-C stops every node", Duration::from_secs(60));
    assert!(
        out.join("\n").contains("restarting the 3-node cluster"),
        "{out:?}"
    );
    let (ok, out, _) = ctl_as(&["--cluster", json_s, "user", "list"], None, "");
    assert!(ok);
    assert!(
        out.contains("dave@localhost") && out.contains("erin@localhost"),
        "{out}"
    );
    let second = pids(&json);
    assert!(dev.sigterm_and_wait().success());
    for (_, p) in &second {
        assert!(!alive(*p));
    }
}
