//! The cluster under test: real `starling serve` processes, configured as an
//! operator would (a TOML file per node), started in their namespaces, and
//! killed, paused, resumed and restarted by the nemesis. The harness knows
//! the cluster only through processes, sockets and the admin API.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use starling_proto::admin::admin_client::AdminClient;
use starling_proto::admin::{ListQueuesRequest, ListSessionsRequest, StatusReply, StatusRequest};
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};

use crate::net::Net;
use jepsen_lite::history::{MemberState, QueueDepth};

pub const DOMAIN: &str = "localhost";
const RAFT_PORT: u16 = 7000;
const ADMIN_PORT: u16 = 7100;
const CLIENT_PORT: u16 = 5222;
const TLS_PORT: u16 = 5223;

/// Lifecycle of one node process as the nemesis left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Running,
    Paused,
    Dead,
}

pub struct Node {
    pub id: u64,
    pub admin: SocketAddr,
    pub tls: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    pub state: NodeState,
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    /// Exits nobody asked for, noticed when the nemesis next touched the
    /// node (a node that died by itself, then was "killed").
    exits: Vec<(u64, String)>,
    pub net: Net,
    binary: PathBuf,
    pub token: String,
}

/// Options that shape the nodes' configs.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// `xmpp.node_dead_after_ms`.
    pub node_dead_after_ms: u64,
    /// `xmpp.sm_resume_timeout_secs`.
    pub sm_resume_timeout_secs: u64,
    /// `archive.enabled`.
    pub archive: bool,
}

impl Cluster {
    /// Writes the configs for `n` nodes into `dir`.
    pub fn plan(
        dir: &Path,
        n: u64,
        net: Net,
        binary: PathBuf,
        opts: &NodeOptions,
    ) -> anyhow::Result<Cluster> {
        let secret = random_token(32);
        let token = random_token(24);
        let ids: Vec<u64> = (1..=n).collect();
        let addr = |id: u64, port: u16| SocketAddr::new(net.addr_of(id), port);
        let mut members = String::new();
        for &id in &ids {
            members.push_str(&format!(
                "[[initial_cluster]]\nid = {id}\nraft_addr = \"{}\"\nadmin_addr = \"{}\"\n\n",
                addr(id, RAFT_PORT),
                addr(id, ADMIN_PORT)
            ));
        }
        // mTLS between the nodes, as production runs: a fresh cluster CA
        // and node certificates from the binary under test.
        let certs = dir.join("cluster-tls");
        let list = ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        let made = std::process::Command::new(&binary)
            .arg("cluster-certs")
            .arg("--dir")
            .arg(&certs)
            .arg("--nodes")
            .arg(&list)
            .output()
            .with_context(|| format!("cannot run {} cluster-certs", binary.display()))?;
        if !made.status.success() {
            bail!(
                "{} cluster-certs failed: {}",
                binary.display(),
                String::from_utf8_lossy(&made.stderr)
            );
        }
        let mut nodes = Vec::new();
        for &id in &ids {
            let data = dir.join(format!("n{id}-data"));
            let config = dir.join(format!("n{id}.toml"));
            let text = format!(
                "node_id = {id}\n\
                 data_dir = \"{}\"\n\
                 domain = \"{DOMAIN}\"\n\
                 raft_addr = \"{}\"\n\
                 admin_addr = \"{}\"\n\
                 cluster_secret = \"{secret}\"\n\
                 admin_token = \"{token}\"\n\n\
                 {members}\
                 [xmpp]\n\
                 client_addr = \"{}\"\n\
                 direct_tls_addr = \"{}\"\n\
                 registration = true\n\
                 node_dead_after_ms = {}\n\
                 sm_resume_timeout_secs = {}\n\
                 limits_exempt = [\"{}\", \"127.0.0.0/8\", \"::1\"]\n",
                data.display(),
                addr(id, RAFT_PORT),
                addr(id, ADMIN_PORT),
                addr(id, CLIENT_PORT),
                addr(id, TLS_PORT),
                opts.node_dead_after_ms,
                opts.sm_resume_timeout_secs,
                // The harness is the control node: its clients reconnect in
                // storms on purpose, which the per-address limits would
                // refuse (they are tested in tests/hardening.rs).
                net.addr_of(crate::net::CLIENT_ID),
            );
            let archive = if opts.archive {
                "\n[archive]\nenabled = true\n"
            } else {
                ""
            };
            let text = format!(
                "{text}{archive}\n[cluster_tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                certs.join("ca.pem").display(),
                certs.join(format!("node{id}.pem")).display(),
                certs.join(format!("node{id}-key.pem")).display(),
            );
            std::fs::write(&config, text)
                .with_context(|| format!("cannot write {}", config.display()))?;
            nodes.push(Node {
                id,
                admin: addr(id, ADMIN_PORT),
                tls: addr(id, TLS_PORT),
                config,
                log: dir.join(format!("n{id}.log")),
                child: None,
                state: NodeState::Dead,
            });
        }
        Ok(Cluster {
            nodes,
            exits: Vec::new(),
            net,
            binary,
            token,
        })
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    pub fn node(&self, id: u64) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    fn node_mut(&mut self, id: u64) -> anyhow::Result<&mut Node> {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .ok_or_else(|| anyhow::anyhow!("no node {id}"))
    }

    /// Records it if node `id`'s process already exited on its own.
    fn note_exit(&mut self, id: u64) {
        let mut exited = None;
        if let Some(n) = self.nodes.iter_mut().find(|n| n.id == id) {
            if let Some(c) = n.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    exited = Some(status.to_string());
                    n.child = None;
                    n.state = NodeState::Dead;
                }
            }
        }
        if let Some(status) = exited {
            self.exits.push((id, status));
        }
    }

    /// Starts node `id`'s process (its log is appended to).
    pub fn start(&mut self, id: u64) -> anyhow::Result<()> {
        self.note_exit(id);
        let prefix = self.net.exec_prefix(id);
        let binary = self.binary.clone();
        let node = self.node_mut(id)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let mut argv: Vec<String> = prefix;
        argv.push(binary.display().to_string());
        argv.extend(["serve".into(), "--config".into()]);
        argv.push(node.config.display().to_string());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env("RUST_LOG", "info")
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", argv.join(" ")))?;
        node.child = Some(child);
        node.state = NodeState::Running;
        Ok(())
    }

    fn pid(&self, id: u64) -> Option<Pid> {
        self.node(id)
            .and_then(|n| n.child.as_ref())
            .and_then(|c| c.id())
            .map(|p| Pid::from_raw(p as i32))
    }

    /// `kill -9`.
    pub async fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        self.note_exit(id);
        if let Some(pid) = self.pid(id) {
            let _ = kill(pid, Signal::SIGKILL);
        }
        let node = self.node_mut(id)?;
        if let Some(mut c) = node.child.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
        }
        node.state = NodeState::Dead;
        Ok(())
    }

    /// `SIGSTOP`.
    pub fn pause(&mut self, id: u64) -> anyhow::Result<()> {
        self.note_exit(id);
        if let Some(pid) = self.pid(id) {
            kill(pid, Signal::SIGSTOP)?;
            self.node_mut(id)?.state = NodeState::Paused;
        }
        Ok(())
    }

    /// `SIGCONT`.
    pub fn resume(&mut self, id: u64) -> anyhow::Result<()> {
        if let Some(pid) = self.pid(id) {
            kill(pid, Signal::SIGCONT)?;
        }
        let node = self.node_mut(id)?;
        if node.state == NodeState::Paused {
            node.state = NodeState::Running;
        }
        Ok(())
    }

    /// Brings every node back: resumes paused ones, starts dead ones.
    pub fn revive_all(&mut self) -> anyhow::Result<Vec<u64>> {
        let mut changed = Vec::new();
        for id in self.ids() {
            match self.node(id).map(|n| n.state) {
                Some(NodeState::Paused) => {
                    self.resume(id)?;
                    changed.push(id);
                }
                Some(NodeState::Dead) => {
                    // Keep going: one node that cannot start must not leave
                    // the others dead.
                    if let Err(e) = self.start(id) {
                        eprintln!("cannot restart n{id}: {e:#}");
                    }
                    changed.push(id);
                }
                _ => {}
            }
        }
        Ok(changed)
    }

    /// Stops everything (SIGCONT first so a paused node can die).
    pub async fn stop_all(&mut self) {
        for id in self.ids() {
            let _ = self.resume(id);
            let _ = self.kill(id).await;
        }
    }

    /// A node's process exited on its own (not by the nemesis).
    pub fn crashed(&mut self) -> Vec<(u64, String)> {
        let mut out = std::mem::take(&mut self.exits);
        for n in &mut self.nodes {
            if let Some(c) = n.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    out.push((n.id, status.to_string()));
                    n.child = None;
                    n.state = NodeState::Dead;
                }
            }
        }
        out
    }

    pub fn admin_handle(&self) -> Admin {
        Admin {
            addrs: self.nodes.iter().map(|n| (n.id, n.admin)).collect(),
            token: self.token.clone(),
        }
    }

    /// Waits until a leader is known and every node answers.
    pub async fn wait_ready(&self, bound: Duration) -> anyhow::Result<u64> {
        let admin = self.admin_handle();
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < bound {
            match admin.status(self.nodes[0].id).await {
                Ok(s) if s.has_leader && s.members.iter().all(|m| m.reachable) => {
                    return Ok(s.leader_id)
                }
                Ok(s) => last = format!("leader {} members {:?}", s.leader_id, s.members.len()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("cluster not ready after {bound:?}: {last}")
    }
}

/// A cloneable admin API client for any node.
#[derive(Clone)]
pub struct Admin {
    pub addrs: Vec<(u64, SocketAddr)>,
    token: String,
}

const ADMIN_TIMEOUT: Duration = Duration::from_secs(3);

impl Admin {
    fn addr(&self, id: u64) -> anyhow::Result<SocketAddr> {
        self.addrs
            .iter()
            .find(|(n, _)| *n == id)
            .map(|(_, a)| *a)
            .ok_or_else(|| anyhow::anyhow!("no node {id}"))
    }

    pub async fn client(&self, id: u64, timeout: Duration) -> anyhow::Result<AdminClient<Channel>> {
        let addr = self.addr(id)?;
        let ch = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(timeout)
            .timeout(timeout)
            .tcp_nodelay(true)
            .connect()
            .await?;
        Ok(AdminClient::new(ch))
    }

    pub fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Ok(v) = format!("Bearer {}", self.token).parse() {
            r.metadata_mut().insert("authorization", v);
        }
        r
    }

    pub async fn status(&self, id: u64) -> anyhow::Result<StatusReply> {
        let mut c = self.client(id, ADMIN_TIMEOUT).await?;
        let r = tokio::time::timeout(ADMIN_TIMEOUT, c.status(self.req(StatusRequest {})))
            .await
            .map_err(|_| anyhow::anyhow!("status timed out"))??;
        Ok(r.into_inner())
    }

    /// The leader as the first answering node sees it.
    pub async fn leader(&self, candidates: &[u64]) -> Option<u64> {
        for &id in candidates {
            if let Ok(s) = self.status(id).await {
                if s.has_leader {
                    return Some(s.leader_id);
                }
            }
        }
        None
    }

    /// The node holding `full_or_bare`'s session, asked of `id`.
    pub async fn session_node(&self, id: u64, bare: &str) -> Option<u64> {
        let mut c = self.client(id, ADMIN_TIMEOUT).await.ok()?;
        let r = tokio::time::timeout(
            ADMIN_TIMEOUT,
            c.list_sessions(self.req(ListSessionsRequest { node_id: 0 })),
        )
        .await
        .ok()?
        .ok()?;
        r.into_inner()
            .sessions
            .iter()
            .find(|s| s.full_jid.split('/').next() == Some(bare))
            .map(|s| s.node_id)
    }

    /// Offline queue depths as node `id` sees them.
    pub async fn queues(&self, id: u64) -> anyhow::Result<Vec<QueueDepth>> {
        let mut c = self.client(id, ADMIN_TIMEOUT).await?;
        let r = tokio::time::timeout(ADMIN_TIMEOUT, c.list_queues(self.req(ListQueuesRequest {})))
            .await
            .map_err(|_| anyhow::anyhow!("list queues timed out"))??;
        Ok(r.into_inner()
            .queues
            .into_iter()
            .map(|q| QueueDepth {
                jid: q.jid,
                depth: q.depth,
            })
            .collect())
    }

    /// Each member's own view (asked of each member itself).
    pub async fn members(&self) -> Vec<MemberState> {
        let mut out = Vec::new();
        for &(id, _) in &self.addrs {
            let m = match self.status(id).await {
                Ok(s) => s
                    .members
                    .iter()
                    .find(|m| m.id == id)
                    .map(|m| MemberState {
                        id,
                        reachable: true,
                        role: m.role.clone(),
                        applied_index: m.applied_index,
                        state_digest: m.state_digest.clone(),
                    })
                    .unwrap_or(MemberState {
                        id,
                        reachable: true,
                        role: "absent".into(),
                        applied_index: 0,
                        state_digest: String::new(),
                    }),
                Err(_) => MemberState {
                    id,
                    reachable: false,
                    role: "unreachable".into(),
                    applied_index: 0,
                    state_digest: String::new(),
                },
            };
            out.push(m);
        }
        out
    }

    /// Polls until every member reports the same applied index and digest,
    /// twice in a row, or `bound` passes.
    pub async fn wait_converged(&self, bound: Duration) -> (bool, u64, Vec<MemberState>) {
        let start = Instant::now();
        let mut prev: Option<Vec<MemberState>> = None;
        loop {
            let m = self.members().await;
            let same = m.iter().all(|x| x.reachable)
                && m.windows(2).all(|w| {
                    w[0].applied_index == w[1].applied_index
                        && w[0].state_digest == w[1].state_digest
                })
                && !m.is_empty();
            if same && prev.as_ref() == Some(&m) {
                return (true, start.elapsed().as_millis() as u64, m);
            }
            if start.elapsed() >= bound {
                return (false, start.elapsed().as_millis() as u64, m);
            }
            prev = same.then_some(m);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

pub fn random_token(n: usize) -> String {
    use rand::Rng;
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}
