//! `starling dev`: a local cluster of N nodes on loopback, each a child
//! process of this one (so any can be `kill -9`ed), with its configs, data,
//! logs and a `cluster.json` in one directory. Run again on the same
//! directory, it brings the same cluster back with its data.
//!
//! The directory is its owner's only (0700; configs and the admin token
//! file 0600): the configs hold the cluster secret and the admin token,
//! which `dev` generates and writes to `DIR/admin-token` for
//! `starling ctl --cluster DIR/cluster.json` to read.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use rand::Rng;
use serde::Serialize;
use starling_proto::admin::StatusRequest;
use tokio::process::{Child, Command};

use crate::admin::client::AdminConn;
use crate::config::{Config, Member, RaftSection, XmppSection};

#[derive(Args, Debug, Clone)]
pub struct DevArgs {
    /// Number of nodes (for a new cluster; an existing DIR keeps its own).
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Directory for configs, data, logs and cluster.json.
    #[arg(long, default_value = ".starling-dev")]
    pub dir: PathBuf,
    /// Node i gets raft port BASE+i and admin port BASE+100+i.
    #[arg(long, default_value_t = 7000)]
    pub base_port: u16,
    /// XMPP domain of a new cluster.
    #[arg(long, default_value = "localhost")]
    pub domain: String,
}

/// One node as `cluster.json` describes it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeEntry {
    pub id: u64,
    pub pid: u32,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub raft_addr: String,
    pub admin_addr: String,
    /// XMPP client port (STARTTLS).
    pub client_addr: String,
    /// XMPP direct TLS port (XEP-0368).
    pub direct_tls_addr: String,
    /// RFC 7395 WebSocket endpoint (`ws://`, loopback), on the node's HTTP
    /// listener with host-meta, `/healthz` and `/readyz`.
    pub websocket_url: String,
}

/// Configs for a new `n`-node loopback cluster.
pub fn plan(
    dir: &Path,
    n: u64,
    base_port: u16,
    domain: &str,
    raft: RaftSection,
) -> anyhow::Result<Vec<Config>> {
    if n == 0 {
        bail!("--nodes must be at least 1");
    }
    if u64::from(base_port) + 400 + n > 65535 {
        bail!("--base-port {base_port} leaves no room for {n} nodes");
    }
    let secret = random_secret(32);
    let token = random_secret(32);
    let addr = |port: u64| SocketAddr::from(([127, 0, 0, 1], port as u16));
    let members: Vec<Member> = (1..=n)
        .map(|i| Member {
            id: i,
            raft_addr: addr(u64::from(base_port) + i),
            admin_addr: addr(u64::from(base_port) + 100 + i),
        })
        .collect();
    // A cluster CA and node certificates for mTLS between the nodes, in
    // DIR/cluster-tls (every file 0600), as production would run.
    let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    let tls = crate::cluster_tls::write_cluster(&dir.join("cluster-tls"), &ids)?;
    // Plain HTTP on loopback (allowed there): a browser on this machine
    // takes ws:// without a certificate warning. Every node's endpoint is
    // listed by each node's XEP-0156 host-meta.
    let http_addr = |id: u64| addr(u64::from(base_port) + 400 + id);
    let websocket_urls: Vec<String> = members
        .iter()
        .map(|m| websocket_url(http_addr(m.id), false))
        .collect();
    let configs = members
        .iter()
        .zip(tls)
        .map(|(m, tls)| Config {
            node_id: m.id,
            data_dir: dir.join(format!("node{}", m.id)),
            domain: domain.to_string(),
            raft_addr: m.raft_addr,
            admin_addr: m.admin_addr,
            cluster_secret: secret.clone(),
            admin_token: Some(token.clone()),
            admin_insecure_no_token: false,
            initial_cluster: members.clone(),
            raft: raft.clone(),
            xmpp: XmppSection {
                client_addr: addr(u64::from(base_port) + 200 + m.id),
                direct_tls_addr: Some(addr(u64::from(base_port) + 300 + m.id)),
                registration: crate::config::Registration::Open,
                ..XmppSection::default()
            },
            archive: Default::default(),
            muc: Default::default(),
            pep: Default::default(),
            server_info: Default::default(),
            cluster_tls: Some(tls),
            insecure_plaintext_cluster: false,
            http: crate::config::HttpSection {
                addr: Some(http_addr(m.id)),
                tls: false,
                websocket_urls: websocket_urls.clone(),
                ..Default::default()
            },
        })
        .collect::<Vec<_>>();
    for c in &configs {
        c.validate()?;
    }
    Ok(configs)
}

/// The RFC 7395 endpoint of an HTTP listener at `addr`.
pub fn websocket_url(addr: SocketAddr, tls: bool) -> String {
    format!("{}://{addr}/xmpp-websocket", crate::http::ws_scheme(tls))
}

/// `n` random alphanumeric characters (about 5.95 bits each).
pub fn random_secret(n: usize) -> String {
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

pub fn config_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("node{id}.toml"))
}

/// The file `dev` writes the admin token to (0600), named in cluster.json.
pub fn token_path(dir: &Path) -> PathBuf {
    dir.join("admin-token")
}

/// Writes `configs` as `DIR/node<i>.toml` (0600, in a 0700 `DIR`), and the
/// admin token, if any, as `DIR/admin-token` (0600).
pub fn write_configs(dir: &Path, configs: &[Config]) -> anyhow::Result<()> {
    crate::private_files::create_private_dir(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    for c in configs {
        let text = toml::to_string_pretty(c)?;
        let path = config_path(dir, c.node_id);
        crate::private_files::write_private(&path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(token) = configs.iter().find_map(|c| c.admin_token.as_deref()) {
        let path = token_path(dir);
        crate::private_files::write_private(&path, format!("{token}\n").as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Gives configs from before the admin token was required one token
/// (shared by the cluster): they could not start otherwise.
fn ensure_token(configs: &mut [Config]) {
    let missing = configs
        .iter()
        .any(|c| c.admin_token.is_none() && !c.admin_insecure_no_token);
    if !missing {
        return;
    }
    let token = configs
        .iter()
        .find_map(|c| c.admin_token.clone())
        .unwrap_or_else(|| random_secret(32));
    for c in configs.iter_mut() {
        if c.admin_token.is_none() && !c.admin_insecure_no_token {
            c.admin_token = Some(token.clone());
        }
    }
}

/// Loads the `node<i>.toml` files already in `dir`, if any.
fn existing_configs(dir: &Path) -> anyhow::Result<Vec<Config>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    for e in entries {
        let path = e?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with("node") && name.ends_with(".toml") {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let c: Config =
                toml::from_str(&text).with_context(|| format!("config file {}", path.display()))?;
            out.push(c);
        }
    }
    out.sort_by_key(|c| c.node_id);
    ensure_token(&mut out);
    for c in &out {
        c.validate()
            .with_context(|| format!("node{}.toml", c.node_id))?;
    }
    Ok(out)
}

/// Starts `starling serve --config PATH` as a child, logging to `log`. The
/// child stops when our end of its stdin closes, so it never outlives us.
pub fn spawn_node(exe: &Path, config: &Path, log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let err = out.try_clone()?;
    Command::new(exe)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .arg("--exit-on-stdin-eof")
        .stdin(Stdio::piped())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))
}

/// Polls the admin API until a leader is known and every member answers,
/// or `timeout` passes.
pub async fn wait_for_cluster(
    admin_addrs: &[String],
    token: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<u64> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        match AdminConn::connect(admin_addrs, token, Duration::from_secs(2)).await {
            Ok(conn) => match conn.client.clone().status(conn.req(StatusRequest {})).await {
                Ok(r) => {
                    let r = r.into_inner();
                    let all = r.members.len() == admin_addrs.len()
                        && r.members.iter().all(|m| m.reachable);
                    if r.has_leader && all {
                        return Ok(r.leader_id);
                    }
                    last = format!(
                        "leader: {}, reachable: {}/{}",
                        if r.has_leader {
                            r.leader_id.to_string()
                        } else {
                            "none".into()
                        },
                        r.members.iter().filter(|m| m.reachable).count(),
                        admin_addrs.len()
                    );
                }
                Err(s) => last = s.message().to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(anyhow!("cluster not ready after {timeout:?}: {last}"))
}

fn port_free(addr: SocketAddr) -> bool {
    std::net::TcpListener::bind(addr).is_ok()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let dir = std::path::absolute(&args.dir)
        .with_context(|| format!("bad --dir {}", args.dir.display()))?;
    let mut configs = existing_configs(&dir)?;
    if configs.is_empty() {
        configs = plan(
            &dir,
            args.nodes,
            args.base_port,
            &args.domain,
            RaftSection::default(),
        )?;
        write_configs(&dir, &configs)?;
        println!("new {}-node cluster in {}", configs.len(), dir.display());
    } else {
        // Rewritten every time: a directory from an older version gets
        // its admin token and its files made private.
        write_configs(&dir, &configs)?;
        crate::private_files::tighten_tree(&dir)
            .with_context(|| format!("cannot secure {}", dir.display()))?;
        println!(
            "restarting the {}-node cluster in {} with its data",
            configs.len(),
            dir.display()
        );
    }
    let token = configs.iter().find_map(|c| c.admin_token.clone());
    for c in &configs {
        let listen = [c.raft_addr, c.admin_addr, c.xmpp.client_addr]
            .into_iter()
            .chain(c.xmpp.direct_tls_addr)
            .chain(c.http.addr);
        for addr in listen {
            if !port_free(addr) {
                bail!("{addr} (node {}) is already in use: is another cluster running? (use --base-port or stop it)", c.node_id);
            }
        }
    }
    let exe = std::env::current_exe().context("cannot find the starling binary")?;
    let mut children: Vec<(Config, Child, PathBuf)> = Vec::new();
    for c in configs {
        let log = dir.join(format!("node{}.log", c.node_id));
        let child = spawn_node(&exe, &config_path(&dir, c.node_id), &log)?;
        children.push((c, child, log));
    }
    let admin_addrs: Vec<String> = children
        .iter()
        .map(|(c, _, _)| c.admin_addr.to_string())
        .collect();

    let ready = tokio::select! {
        r = wait_for_cluster(&admin_addrs, token.as_deref(), Duration::from_secs(60)) => r,
        dead = first_exit(&mut children) => Err(dead),
    };
    let leader = match ready {
        Ok(l) => l,
        Err(e) => {
            stop_all(&mut children).await;
            return Err(e);
        }
    };

    let entries: Vec<NodeEntry> = children
        .iter()
        .map(|(c, child, log)| NodeEntry {
            id: c.node_id,
            pid: child.id().unwrap_or(0),
            config: config_path(&dir, c.node_id),
            data_dir: c.data_dir.clone(),
            log: log.clone(),
            raft_addr: c.raft_addr.to_string(),
            admin_addr: c.admin_addr.to_string(),
            client_addr: c.xmpp.client_addr.to_string(),
            direct_tls_addr: c
                .xmpp
                .direct_tls_addr
                .map(|a| a.to_string())
                .unwrap_or_default(),
            websocket_url: c
                .http
                .addr
                .map(|a| websocket_url(a, c.http.tls))
                .unwrap_or_default(),
        })
        .collect();
    let json_path = dir.join("cluster.json");
    let domain = children
        .first()
        .map(|(c, _, _)| c.domain.clone())
        .unwrap_or_default();
    let token_file = token.as_ref().map(|_| token_path(&dir));
    let doc = serde_json::json!({
        "domain": domain,
        "leader_at_start": leader,
        "admin_token_file": token_file,
        "nodes": entries,
    });
    crate::private_files::write_private(&json_path, serde_json::to_string_pretty(&doc)?.as_bytes())
        .with_context(|| format!("cannot write {}", json_path.display()))?;

    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.id.to_string(),
                e.pid.to_string(),
                e.client_addr.clone(),
                e.direct_tls_addr.clone(),
                e.websocket_url.clone(),
                e.raft_addr.clone(),
                e.admin_addr.clone(),
                if e.id == leader {
                    "leader".into()
                } else {
                    String::new()
                },
                e.log.display().to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        crate::ctl::table(
            &[
                "NODE",
                "PID",
                "XMPP",
                "XMPP-TLS",
                "WEBSOCKET",
                "RAFT",
                "ADMIN",
                "",
                "LOG"
            ],
            &rows
        )
    );
    println!(
        "each node's HTTP listener also serves /.well-known/host-meta[.json] (XEP-0156), /healthz and /readyz"
    );
    println!("cluster described in {}", json_path.display());
    println!(
        "try:  starling ctl --cluster {} status",
        json_path.display()
    );
    println!("Ctrl-C stops every node.");

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut reported = vec![false; children.len()];
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                for (i, (c, child, log)) in children.iter_mut().enumerate() {
                    if reported[i] {
                        continue;
                    }
                    if let Ok(Some(status)) = child.try_wait() {
                        reported[i] = true;
                        println!(
                            "node {} exited ({status}); log: {}; restart it with: {} serve --config {}",
                            c.node_id,
                            log.display(),
                            exe.display(),
                            config_path(&dir, c.node_id).display()
                        );
                    }
                }
            }
        }
    }
    println!("stopping {} nodes...", children.len());
    stop_all(&mut children).await;
    println!("stopped");
    Ok(())
}

/// Resolves with an error describing the first child that exits.
async fn first_exit(children: &mut [(Config, Child, PathBuf)]) -> anyhow::Error {
    loop {
        for (c, child, log) in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                return anyhow!(
                    "node {} exited during start-up ({status}); last lines of {}:\n{}",
                    c.node_id,
                    log.display(),
                    tail(log, 15)
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGTERM to every child, then SIGKILL to any still running after 10 s.
pub async fn stop_all(children: &mut [(Config, Child, PathBuf)]) {
    for (_, child, _) in children.iter_mut() {
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    for (c, child, _) in children.iter_mut() {
        match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("node {} did not stop in 10 s: killing it", c.node_id);
                let _ = child.kill().await;
            }
        }
    }
}
