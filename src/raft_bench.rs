//! `starling raft-bench`: figures for the replicated core, measured on a
//! fresh local cluster of child processes (real sockets, real disks).
//!
//! - Replicated write latency (p50/p90/p99/p99.9/max) and throughput with
//!   each given number of concurrent writers. A write is a session bind or
//!   unbind proposed to the leader's raft port; it returns after commit, so
//!   it includes the leader's fsync, replication to a quorum and apply.
//! - Failover: `kill -9` of the leader, then the time until the next write
//!   commits through a surviving node. Repeated, restarting the killed node
//!   in between.
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;
use starling_raft::cluster::{propose_at, Proposal};
use starling_raft::command::Command;
use starling_raft::network::Peers;
use tokio::process::Child;

use crate::admin::client::AdminConn;
use crate::config::{Config, RaftSection};
use crate::dev;
use starling_proto::admin::StatusRequest;

#[derive(Args, Debug, Clone)]
pub struct RaftBenchArgs {
    /// Concurrent writers, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    pub writers: Vec<usize>,
    /// Seconds per writer count.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Leader kills to measure failover.
    #[arg(long, default_value_t = 3)]
    pub failovers: usize,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Node i gets raft port BASE+i and admin port BASE+100+i.
    #[arg(long, default_value_t = 7400)]
    pub base_port: u16,
    /// Where the cluster's data goes (default: a new temporary directory,
    /// removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Run the cluster links in clear text instead of mTLS (to measure
    /// what TLS costs; the cluster is on loopback).
    #[arg(long)]
    pub plain_cluster: bool,
}

struct Bench {
    configs: Vec<Config>,
    children: Vec<(Config, Child, PathBuf)>,
    peers: Peers,
    dir: PathBuf,
    exe: PathBuf,
}

impl Bench {
    fn raft_addr(&self, id: u64) -> String {
        self.configs
            .iter()
            .find(|c| c.node_id == id)
            .map(|c| c.raft_addr.to_string())
            .unwrap_or_default()
    }

    fn token(&self) -> Option<&str> {
        self.configs.first().and_then(|c| c.admin_token.as_deref())
    }

    fn admin_addrs(&self) -> Vec<String> {
        self.configs
            .iter()
            .map(|c| c.admin_addr.to_string())
            .collect()
    }

    fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let c = self
            .configs
            .iter()
            .find(|c| c.node_id == id)
            .cloned()
            .ok_or_else(|| anyhow!("no node {id}"))?;
        let log = self.dir.join(format!("node{id}.log"));
        let child = dev::spawn_node(&self.exe, &dev::config_path(&self.dir, id), &log)?;
        self.children.retain(|(cfg, _, _)| cfg.node_id != id);
        self.children.push((c, child, log));
        Ok(())
    }

    async fn leader(&self) -> anyhow::Result<u64> {
        dev::wait_for_cluster(&self.admin_addrs(), self.token(), Duration::from_secs(30)).await
    }

    /// Waits until every node has applied the same index with the same
    /// digest: a healthy cluster to start the next measurement from.
    async fn converged(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let conn =
                AdminConn::connect(&self.admin_addrs(), self.token(), Duration::from_secs(2))
                    .await?;
            let s = conn
                .client
                .clone()
                .status(conn.req(StatusRequest {}))
                .await?
                .into_inner();
            let first = s.members.first();
            let same = first.is_some_and(|f| {
                s.members.iter().all(|m| {
                    m.reachable
                        && m.has_applied
                        && m.applied_index == f.applied_index
                        && m.state_digest == f.state_digest
                })
            });
            if s.has_leader && same && s.members.len() == self.configs.len() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(anyhow!("cluster did not converge in 30 s"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn bind_cmd(writer: usize, i: u64) -> Command {
    let full_jid = format!("bench{writer}@bench/r");
    if i.is_multiple_of(2) {
        Command::BindSession {
            full_jid,
            binding: starling_raft::command::SessionBinding {
                node: 1,
                session: writer as u64,
                priority: 0,
                available: true,
                carbons: false,
                presence: None,
                bound_ms: i,
            },
        }
    } else {
        Command::UnbindSession {
            full_jid,
            node: 1,
            session: writer as u64,
        }
    }
}

struct RunFigures {
    writers: usize,
    ok: u64,
    errors: u64,
    secs: f64,
    hist: Histogram<u64>,
}

async fn run_writers(
    bench: &Bench,
    leader: u64,
    writers: usize,
    secs: u64,
) -> anyhow::Result<RunFigures> {
    let addr = bench.raft_addr(leader);
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let peers = bench.peers.clone();
        let addr = addr.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
            let mut i = 0u64;
            while Instant::now() < end {
                let t0 = Instant::now();
                match propose_at(&peers, &addr, 0, Proposal::Command(bind_cmd(w, i))).await {
                    Ok(_) => {
                        let _ = hist.record(t0.elapsed().as_micros().max(1) as u64);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += 1;
            }
            hist
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for t in tasks {
        hist.add(t.await?)?;
    }
    Ok(RunFigures {
        writers,
        ok: hist.len(),
        errors: errors.load(Ordering::Relaxed),
        secs: start.elapsed().as_secs_f64(),
        hist,
    })
}

/// Kills the leader and returns (killed id, ms until a write commits via a survivor).
async fn failover_once(bench: &mut Bench, round: u64) -> anyhow::Result<(u64, f64)> {
    bench.converged().await?;
    let leader = bench.leader().await?;
    let survivor = bench
        .configs
        .iter()
        .map(|c| c.node_id)
        .find(|id| *id != leader)
        .ok_or_else(|| anyhow!("failover needs at least 2 nodes"))?;
    let survivor_addr = bench.raft_addr(survivor);
    // Warm the connection to the survivor so the figure is raft's, not TCP's.
    propose_at(
        &bench.peers,
        &survivor_addr,
        0,
        Proposal::Command(bind_cmd(10_000, 0)),
    )
    .await
    .map_err(|e| anyhow!("warm-up write failed: {e}"))?;
    let child = bench
        .children
        .iter_mut()
        .find(|(c, _, _)| c.node_id == leader)
        .ok_or_else(|| anyhow!("leader {leader} is not one of ours"))?;
    child.1.start_kill().context("kill -9 the leader")?;
    let killed_at = Instant::now();
    let _ = child.1.wait().await;
    let mut i = round * 1000;
    loop {
        i += 1;
        match propose_at(
            &bench.peers,
            &survivor_addr,
            0,
            Proposal::Command(bind_cmd(10_001, i)),
        )
        .await
        {
            Ok(_) => break,
            Err(e) => {
                if killed_at.elapsed() > Duration::from_secs(30) {
                    return Err(anyhow!(
                        "no write committed 30 s after killing the leader: {e}"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    let ms = killed_at.elapsed().as_secs_f64() * 1000.0;
    bench.spawn(leader)?;
    bench.leader().await?;
    Ok((leader, ms))
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

pub async fn run(args: RaftBenchArgs) -> anyhow::Result<()> {
    let (dir, temp) = match &args.dir {
        Some(d) => (std::path::absolute(d)?, false),
        None => {
            let d =
                std::env::temp_dir().join(format!("starling-raft-bench-{}", std::process::id()));
            (d, true)
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    let mut configs = dev::plan(
        &dir,
        args.nodes,
        args.base_port,
        "bench",
        RaftSection::default(),
    )?;
    if args.plain_cluster {
        for c in &mut configs {
            c.cluster_tls = None;
        }
    }
    dev::write_configs(&dir, &configs)?;
    // The bench speaks to the raft ports as a member would: with node 1's
    // certificate when the cluster runs mTLS (dev::plan turns it on).
    let mut peers = Peers::new(&configs[0].cluster_secret)?;
    if let Some(section) = &configs[0].cluster_tls {
        peers = peers.with_tls(&crate::cluster_tls::load(section)?);
    }
    let mut bench = Bench {
        configs: configs.clone(),
        children: Vec::new(),
        peers,
        dir: dir.clone(),
        exe: std::env::current_exe()?,
    };
    for c in &configs {
        bench.spawn(c.node_id)?;
    }
    let result = measure(&mut bench, &args).await;
    dev::stop_all(&mut bench.children).await;
    if temp {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn measure(bench: &mut Bench, args: &RaftBenchArgs) -> anyhow::Result<()> {
    let leader = bench.leader().await?;
    if !args.json {
        println!(
            "{}-node cluster on loopback, leader node {leader}; {} s per run; writes proposed to the leader",
            args.nodes, args.seconds
        );
    }
    let mut runs = Vec::new();
    for &w in &args.writers {
        let f = run_writers(bench, leader, w.max(1), args.seconds).await?;
        runs.push(f);
    }
    let mut failovers = Vec::new();
    for round in 0..args.failovers {
        failovers.push(failover_once(bench, round as u64).await?);
    }
    if args.json {
        let v = json!({
            "nodes": args.nodes,
            "runs": runs.iter().map(|r| json!({
                "writers": r.writers, "ok": r.ok, "errors": r.errors, "seconds": r.secs,
                "ops_per_sec": r.ok as f64 / r.secs,
                "p50_ms": ms(r.hist.value_at_quantile(0.5)), "p90_ms": ms(r.hist.value_at_quantile(0.9)),
                "p99_ms": ms(r.hist.value_at_quantile(0.99)), "p999_ms": ms(r.hist.value_at_quantile(0.999)),
                "max_ms": ms(r.hist.max()),
            })).collect::<Vec<_>>(),
            "failover_ms": failovers.iter().map(|(id, ms)| json!({"killed": id, "ms": ms})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.writers.to_string(),
                r.ok.to_string(),
                r.errors.to_string(),
                format!("{:.0}", r.ok as f64 / r.secs),
                format!("{:.2}", ms(r.hist.value_at_quantile(0.5))),
                format!("{:.2}", ms(r.hist.value_at_quantile(0.9))),
                format!("{:.2}", ms(r.hist.value_at_quantile(0.99))),
                format!("{:.2}", ms(r.hist.value_at_quantile(0.999))),
                format!("{:.2}", ms(r.hist.max())),
            ]
        })
        .collect();
    print!(
        "{}",
        crate::ctl::table(
            &[
                "WRITERS",
                "COMMITTED",
                "ERRORS",
                "WRITES/S",
                "P50_MS",
                "P90_MS",
                "P99_MS",
                "P99.9_MS",
                "MAX_MS"
            ],
            &rows
        )
    );
    for (id, ms) in &failovers {
        println!("failover: kill -9 leader node {id} -> next committed write after {ms:.0} ms");
    }
    Ok(())
}
