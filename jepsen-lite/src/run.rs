//! One run: start the cluster, create the users, start the workloads and the
//! nemesis, stop the faults after `--time`, heal, let the senders finish,
//! drain every recipient, read the rosters, wait for convergence, stop the
//! cluster, then check the history and write the results and the report.
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

use crate::cluster::{Cluster, NodeOptions};
use crate::nemesis::{needs_partitions, Nemesis};
use crate::net::Net;
use crate::workload::{self, queue, register, roster, Ctx, Stage};
use jepsen_lite::history::{Entry, Recorder};
use jepsen_lite::results::{Results, RunInfo};

#[derive(Debug, Clone)]
pub struct RunArgs {
    pub nodes: u64,
    pub nemesis: String,
    pub seed: u64,
    pub time_s: u64,
    pub pairs: usize,
    pub rate: f64,
    /// The nodes run with the message archive on (`--archive`).
    pub archive: bool,
    pub dir: PathBuf,
    pub binary: PathBuf,
    pub command: String,
}

const REGISTER_CLIENTS: usize = 3;
const ROSTER_USERS: usize = 4;

pub async fn run(args: RunArgs, net: Net) -> anyhow::Result<Results> {
    let started = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let rec = Recorder::create(&args.dir.join("history.jsonl"))?;
    let phase = |name: &str| {
        rec.record(Entry::Phase {
            t_us: rec.now(),
            name: name.to_string(),
        })
    };
    phase("setup");
    let net_name = net.name().to_string();
    let partitions_skipped = needs_partitions(&args.nemesis) && !matches!(net, Net::Netns(_));
    if partitions_skipped {
        eprintln!(
            "WARNING: nemesis {} needs network namespaces (root and `ip netns`); \
             running on loopback, PARTITIONS SKIPPED",
            args.nemesis
        );
    }
    let opts = NodeOptions {
        node_dead_after_ms: 3000,
        sm_resume_timeout_secs: 300,
        archive: args.archive,
    };
    let mut cluster = Cluster::plan(&args.dir, args.nodes, net, args.binary.clone(), &opts)?;
    for id in cluster.ids() {
        cluster.start(id)?;
    }
    let leader = cluster.wait_ready(Duration::from_secs(60)).await?;
    eprintln!("cluster of {} up, leader n{leader}", args.nodes);
    let admin = cluster.admin_handle();
    let catchup = args.nemesis == "catchup";
    let qopts = queue::QueueOptions {
        pairs: args.pairs,
        rate: args.rate,
        window: 64,
        ack_timeout: Duration::from_secs(5),
        offline_receivers: (args.pairs / 3).max(1),
        bulk_bytes: 0,
    };
    // The catch-up schedule adds one pair that writes large messages to a
    // recipient who stays offline: megabytes of state while a node is down.
    let bulk = queue::QueueOptions {
        pairs: args.pairs + 1,
        rate: 8.0,
        window: 16,
        ack_timeout: Duration::from_secs(8),
        offline_receivers: args.pairs + 1,
        bulk_bytes: 250_000,
    };
    let mut users = queue::users(&bulk);
    users.extend(roster::users(ROSTER_USERS));
    workload::create_users(&admin, &cluster.ids(), &users).await?;

    let (stage_tx, stage_rx) = watch::channel(Stage::Faults);
    let ctx = Ctx {
        rec: rec.clone(),
        nodes: cluster.nodes.iter().map(|n| (n.id, n.tls)).collect(),
        admin: admin.clone(),
        run_id: format!("m{}", args.seed),
        seed: args.seed,
        stage: stage_rx.clone(),
    };
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for i in 0..args.pairs {
        senders.push(tokio::spawn(queue::sender(ctx.clone(), i, qopts.clone())));
        receivers.push(tokio::spawn(queue::receiver(ctx.clone(), i, qopts.clone())));
    }
    if catchup {
        let i = args.pairs;
        senders.push(tokio::spawn(queue::sender(ctx.clone(), i, bulk.clone())));
        receivers.push(tokio::spawn(queue::receiver(ctx.clone(), i, bulk.clone())));
    }
    let mut others = Vec::new();
    for i in 0..REGISTER_CLIENTS {
        others.push(tokio::spawn(register::client(ctx.clone(), i, 4.0)));
    }
    for i in 0..ROSTER_USERS {
        others.push(tokio::spawn(roster::client(
            ctx.clone(),
            i,
            ROSTER_USERS,
            1.0,
        )));
    }
    phase("faults");
    let mut nemesis = Nemesis::new(cluster, rec.clone(), args.seed, &args.dir, args.pairs)?;
    let kind = args.nemesis.clone();
    let nem_stage = stage_rx.clone();
    let nem_task = tokio::spawn(async move {
        let skipped = nemesis.run(&kind, nem_stage).await;
        (nemesis, skipped)
    });
    tokio::time::sleep(Duration::from_secs(args.time_s)).await;
    let _ = stage_tx.send(Stage::Finish);
    let (mut nemesis, _skipped) = nem_task.await?;
    let crashed = nemesis.cluster.crashed();
    nemesis.heal_everything().await;
    phase("heal");
    eprintln!("healed; waiting for the cluster");
    let ready = nemesis.cluster.wait_ready(Duration::from_secs(60)).await;
    if let Err(e) = &ready {
        eprintln!("cluster not ready after heal: {e:#}");
    }
    for s in senders {
        let _ = s.await;
    }
    for o in others {
        let _ = o.await;
    }
    phase("drain");
    let _ = stage_tx.send(Stage::Drain);
    for r in receivers {
        let _ = r.await;
    }
    for u in roster::users(ROSTER_USERS) {
        roster::read_final(&ctx, &u).await;
    }
    let (converged, waited_ms, members) = admin.wait_converged(Duration::from_secs(30)).await;
    // After convergence every node holds the same queues: ask one.
    for id in admin.addrs.iter().map(|(id, _)| *id) {
        if let Ok(queues) = admin.queues(id).await {
            rec.record(Entry::QueuesAfterDrain {
                t_us: rec.now(),
                node: id,
                queues,
            });
            break;
        }
    }
    rec.record(Entry::Convergence {
        t_us: rec.now(),
        converged,
        waited_ms,
        members,
    });
    phase("done");
    let crashed_late = nemesis.cluster.crashed();
    nemesis.cluster.stop_all().await;
    let history = rec.finish();
    let info = RunInfo {
        nodes: args.nodes,
        nemesis: args.nemesis.clone(),
        seed: args.seed,
        time_s: args.time_s,
        net: net_name,
        partitions_skipped,
        command: args.command.clone(),
        started,
    };
    let mut results = jepsen_lite::checker::check(&history, info);
    for (id, status) in crashed.iter().chain(&crashed_late) {
        results.verdict.valid = false;
        results
            .verdict
            .failures
            .push(format!("n{id} exited on its own ({status}); see n{id}.log"));
    }
    if let Err(e) = ready {
        results.verdict.valid = false;
        results
            .verdict
            .failures
            .push(format!("cluster not ready 60 s after healing: {e:#}"));
    }
    std::fs::write(
        args.dir.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    jepsen_lite::report::write_report(&args.dir, &results, &history)?;
    Ok(results)
}
