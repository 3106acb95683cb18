//! Test harness: real `starling serve` processes on loopback ports, each
//! with its own data directory, driven through the admin API.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use starling::admin::client::AdminConn;
use starling::config::{Config, Member, RaftSection, XmppSection};
use starling_proto::admin::*;

pub mod tls;
pub mod ws;
pub mod xmpp;

pub const BIN: &str = env!("CARGO_BIN_EXE_starling");

/// The admin token of every test cluster (the nodes require one).
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// Loopback ports that were free a moment ago, all distinct.
///
/// They are taken below the kernel's ephemeral range (32768-60999 by
/// default): a port `bind(0)` handed out and released can be reused at once
/// as the local port of some other test's outgoing connection before the node
/// under test binds it, and the node then fails to start. Each test process
/// starts at its own offset and walks a shared counter, so tests running in
/// parallel threads do not pick the same port either.
pub fn free_ports(n: usize) -> Vec<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 12_000;
    const SPAN: u32 = 20_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7919)) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    let mut out = Vec::with_capacity(n);
    let mut tries = 0;
    while out.len() < n {
        tries += 1;
        assert!(
            tries < 10 * SPAN,
            "no free loopback port in {LOW}..{}",
            LOW + SPAN
        );
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        // Free as a listener now; nothing else in this process holds it.
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && !out.contains(&port) {
            out.push(port);
        }
    }
    out
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub struct TestNode {
    pub config: Config,
    pub config_path: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
}

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<TestNode>,
    pub secret: String,
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

pub fn node_config(
    dir: &Path,
    id: u64,
    raft: u16,
    admin: u16,
    secret: &str,
    initial: &[Member],
    raft_section: &RaftSection,
) -> Config {
    Config {
        node_id: id,
        data_dir: dir.join(format!("node{id}")),
        domain: "localhost".into(),
        raft_addr: addr(raft),
        admin_addr: addr(admin),
        cluster_secret: secret.into(),
        admin_token: Some(ADMIN_TOKEN.into()),
        admin_insecure_no_token: false,
        initial_cluster: initial.to_vec(),
        raft: raft_section.clone(),
        xmpp: XmppSection {
            client_addr: addr(free_ports(1)[0]),
            registration: starling::config::Registration::Open,
            ..XmppSection::default()
        },
        archive: Default::default(),
        muc: Default::default(),
        pep: Default::default(),
        server_info: Default::default(),
        cluster_tls: Some(cluster_tls_of(dir, id)),
        insecure_plaintext_cluster: false,
        http: Default::default(),
    }
}

/// Node ids a test cluster has certificates for (members joining later
/// included): see [`write_cluster_tls`].
pub const TLS_NODE_IDS: std::ops::RangeInclusive<u64> = 1..=9;

/// A cluster CA and node certificates for ids [`TLS_NODE_IDS`] in
/// `dir/cluster-tls`: test clusters run mTLS between nodes, as production.
pub fn write_cluster_tls(dir: &Path) {
    let ids: Vec<u64> = TLS_NODE_IDS.collect();
    starling::cluster_tls::write_cluster(&dir.join("cluster-tls"), &ids).unwrap();
}

/// Node `id`'s `[cluster_tls]` from [`write_cluster_tls`].
pub fn cluster_tls_of(dir: &Path, id: u64) -> starling::config::ClusterTlsSection {
    assert!(
        TLS_NODE_IDS.contains(&id),
        "no test certificate for node {id}"
    );
    let tls = dir.join("cluster-tls");
    starling::config::ClusterTlsSection {
        ca: tls.join("ca.pem"),
        cert: tls.join(format!("node{id}.pem")),
        key: tls.join(format!("node{id}-key.pem")),
        server_name: starling_raft::tls::DEFAULT_SERVER_NAME.into(),
    }
}

/// The tests' runtime: two workers, like the machine CI runs on.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

impl TestCluster {
    /// The XMPP client address (STARTTLS port) of node `id`.
    pub fn client_addr(&self, id: u64) -> SocketAddr {
        self.nodes
            .iter()
            .find(|n| n.config.node_id == id)
            .unwrap()
            .config
            .xmpp
            .client_addr
    }

    /// Writes configs for `n` initial members and starts them.
    pub fn start(n: u64, raft: RaftSection) -> TestCluster {
        Self::start_with(n, raft, |_| {})
    }

    pub fn start_with(n: u64, raft: RaftSection, tweak: impl Fn(&mut Config)) -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        write_cluster_tls(dir.path());
        let secret = "test-cluster-secret-0123456789".to_string();
        let ports = free_ports(2 * n as usize);
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                id: i + 1,
                raft_addr: addr(ports[2 * i as usize]),
                admin_addr: addr(ports[2 * i as usize + 1]),
            })
            .collect();
        let mut cluster = TestCluster {
            dir,
            nodes: Vec::new(),
            secret: secret.clone(),
        };
        for m in &members {
            let mut c = node_config(
                cluster.dir.path(),
                m.id,
                m.raft_addr.port(),
                m.admin_addr.port(),
                &secret,
                &members,
                &raft,
            );
            tweak(&mut c);
            cluster.add_config(c);
        }
        for i in 0..cluster.nodes.len() {
            cluster.spawn_index(i);
        }
        cluster
    }

    /// Registers a node config (written to disk) without starting it.
    pub fn add_config(&mut self, c: Config) {
        let path = self.dir.path().join(format!("node{}.toml", c.node_id));
        starling::private_files::write_private(
            &path,
            toml::to_string_pretty(&c).unwrap().as_bytes(),
        )
        .unwrap();
        let log = self.dir.path().join(format!("node{}.log", c.node_id));
        self.nodes.push(TestNode {
            config: c,
            config_path: path,
            log,
            child: None,
        });
    }

    fn index(&self, id: u64) -> usize {
        self.nodes
            .iter()
            .position(|n| n.config.node_id == id)
            .expect("known node")
    }

    fn spawn_index(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&n.config_path)
            .arg("--exit-on-stdin-eof")
            .stdin(Stdio::piped())
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        n.child = Some(child);
    }

    pub fn start_node(&mut self, id: u64) {
        let i = self.index(id);
        assert!(self.nodes[i].child.is_none(), "node {id} already running");
        self.spawn_index(i);
    }

    /// The process id of node `id` (running).
    pub fn pid_of(&self, id: u64) -> nix::unistd::Pid {
        let n = self.nodes.iter().find(|n| n.config.node_id == id).unwrap();
        nix::unistd::Pid::from_raw(n.child.as_ref().expect("running").id() as i32)
    }

    /// Sends `sig` to node `id`; a SIGSTOP returns once every thread of the
    /// node is stopped (kill(2) returns before that: a node still running for
    /// a moment answered a custody copy the test meant to go unanswered).
    pub fn signal(&self, id: u64, sig: nix::sys::signal::Signal) {
        let pid = self.pid_of(id);
        nix::sys::signal::kill(pid, sig).unwrap();
        if sig != nix::sys::signal::Signal::SIGSTOP {
            return;
        }
        let stopped = || {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                return false;
            };
            tasks.flatten().all(|t| {
                std::fs::read_to_string(t.path().join("stat")).is_ok_and(|s| {
                    // The state follows the command name's closing parenthesis.
                    s.rsplit_once(')')
                        .and_then(|(_, rest)| rest.trim_start().chars().next())
                        .is_some_and(|st| st == 'T' || st == 't')
                })
            })
        };
        let until = Instant::now() + Duration::from_secs(2);
        while !stopped() {
            assert!(Instant::now() < until, "node {id} did not stop");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// `kill -9`.
    pub fn kill(&mut self, id: u64) {
        let i = self.index(id);
        if let Some(mut c) = self.nodes[i].child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited 0.
    pub fn stop(&mut self, id: u64) -> bool {
        let i = self.index(id);
        let Some(mut c) = self.nodes[i].child.take() else {
            return true;
        };
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn admin_addr(&self, id: u64) -> String {
        self.nodes[self.index(id)].config.admin_addr.to_string()
    }

    pub fn raft_addr(&self, id: u64) -> String {
        self.nodes[self.index(id)].config.raft_addr.to_string()
    }

    /// Every node's log, each under a header: a node that failed to start
    /// is usually why another waits.
    pub fn all_logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let id = n.config.node_id;
                format!("===== node {id} =====\n{}", self.log_of(id))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn log_of(&self, id: u64) -> String {
        std::fs::read_to_string(&self.nodes[self.index(id)].log).unwrap_or_default()
    }

    pub async fn conn(&self, id: u64) -> AdminConn {
        let addr = self.admin_addr(id);
        let token = self.nodes[self.index(id)].config.admin_token.clone();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match AdminConn::connect(
                std::slice::from_ref(&addr),
                token.as_deref(),
                Duration::from_secs(10),
            )
            .await
            {
                Ok(c) => return c,
                Err(e) if Instant::now() > deadline => {
                    panic!("node {id} admin unreachable: {e}\n{}", self.log_of(id))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    pub async fn status(&self, id: u64) -> StatusReply {
        let c = self.conn(id).await;
        c.client
            .clone()
            .status(c.req(StatusRequest {}))
            .await
            .unwrap()
            .into_inner()
    }

    /// One node (raft timings of [`fast_raft`], config changed by
    /// `tweak`) with a leader and the accounts `users` (password
    /// `pw-<name>`).
    pub async fn one_node(users: &[&str], tweak: impl Fn(&mut Config)) -> TestCluster {
        let c = TestCluster::start_with(1, fast_raft(), tweak);
        c.wait_leader(1, Duration::from_secs(20)).await;
        for u in users {
            c.create_user(1, u).await.unwrap();
        }
        c
    }

    /// Waits until node `via` sees a leader, and returns its id.
    pub async fn wait_leader(&self, via: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status(via).await;
            let leader_up = s
                .members
                .iter()
                .any(|m| m.id == s.leader_id && m.reachable && m.role == "leader");
            if s.has_leader && leader_up {
                return s.leader_id;
            }
            assert!(
                Instant::now() < deadline,
                "no leader after {timeout:?}: {s:?}\n{}",
                self.all_logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until node `id` says it is ready (its `/readyz`): in touch
    /// with a leader, caught up, and serving XMPP clients. A restarted node
    /// serves clients only once it committed the removal of its previous
    /// life's sessions, which can come after its log caught up.
    pub async fn wait_ready(&self, id: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status(id).await;
            if s.ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} not ready after {timeout:?}: {}",
                s.not_ready
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every listed node is reachable and all have applied the
    /// same index with the same digest; returns that digest.
    pub async fn wait_converged(&self, via: u64, ids: &[u64], timeout: Duration) -> (u64, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status(via).await;
            let ms: Vec<&MemberStatus> = s.members.iter().filter(|m| ids.contains(&m.id)).collect();
            let all = ms.len() == ids.len() && ms.iter().all(|m| m.reachable && m.has_applied);
            if all {
                let first = ms[0];
                if ms.iter().all(|m| {
                    m.applied_index == first.applied_index && m.state_digest == first.state_digest
                }) {
                    return (first.applied_index, first.state_digest.clone());
                }
            }
            assert!(
                Instant::now() < deadline,
                "not converged after {timeout:?}: {:#?}",
                s.members
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn create_user(&self, via: u64, name: &str) -> Result<UserReply, tonic::Status> {
        let c = self.conn(via).await;
        c.client
            .clone()
            .create_user(c.req(CreateUserRequest {
                jid: name.into(),
                password: format!("pw-{name}"),
            }))
            .await
            .map(|r| r.into_inner())
    }

    pub async fn users(&self, via: u64) -> Vec<String> {
        let c = self.conn(via).await;
        let r = c
            .client
            .clone()
            .list_users(c.req(ListUsersRequest {}))
            .await
            .unwrap()
            .into_inner();
        r.users.into_iter().map(|u| u.jid).collect()
    }
}

/// Fast timing for tests: quick elections, frequent snapshots when asked.
pub fn fast_raft() -> RaftSection {
    RaftSection {
        heartbeat_ms: 50,
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
        ..Default::default()
    }
}

/// Runs `starling ctl ARGS` with the test clusters' admin token in the
/// environment and returns (success, stdout, stderr).
pub fn ctl(args: &[&str]) -> (bool, String, String) {
    ctl_as(args, Some(ADMIN_TOKEN), "")
}

/// Runs `starling ctl ARGS` with `token` (if any) in `STARLING_ADMIN_TOKEN`
/// and `stdin` on its standard input (how passwords are given).
pub fn ctl_as(args: &[&str], token: Option<&str>, stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut cmd = Command::new(BIN);
    cmd.arg("ctl")
        .args(args)
        .env_remove("STARLING_ADMIN_TOKEN")
        .env_remove("STARLING_ADMIN_TOKEN_FILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(t) = token {
        cmd.env("STARLING_ADMIN_TOKEN", t);
    }
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
