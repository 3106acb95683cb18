//! `jepsen-lite`: run one fault-injection test against a fresh Starling
//! cluster, or the standard matrix of them.
//!
//! ```text
//! cargo run -p jepsen-lite --release -- --nodes 5 --nemesis partition --seed 7 --time 60
//! cargo run -p jepsen-lite --release -- --matrix
//! ```
//!
//! Network namespaces are made before the async runtime starts: the process
//! moves its only thread into the clients' namespace, and every thread made
//! after inherits it.
#![forbid(unsafe_code)]

mod cluster;
mod nemesis;
mod net;
mod run;
mod workload;
mod xmpp;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;

use jepsen_lite::results::Results;

#[derive(Parser, Debug)]
#[command(
    name = "jepsen-lite",
    about = "Attack a Starling cluster with crashes, pauses and partitions; check every acknowledged message"
)]
struct Cli {
    /// Cluster size (3 or 5 are the standard ones).
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Fault schedule: none, kill, kill-leader, kill-recipient, kill-sender,
    /// pause, pause-leader, partition (any of the partition-* kinds),
    /// partition-one, partition-leader, partition-split, partition-bridge,
    /// partition-oneway, partition-pair, pause-kill, catchup, mixed.
    #[arg(long, default_value = "kill")]
    nemesis: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds of traffic and faults before the heal.
    #[arg(long, default_value_t = 60)]
    time: u64,
    /// Sender/receiver pairs of the queue workload.
    #[arg(long, default_value_t = 6)]
    pairs: usize,
    /// Messages per second per sender.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Run directory (default: target/jepsen-lite/<time>-<nodes>n-<nemesis>-s<seed>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The `starling` binary (default: build it with cargo, release profile).
    #[arg(long)]
    starling: Option<PathBuf>,
    /// `auto` (namespaces when root), `netns`, or `loopback`.
    #[arg(long, default_value = "auto")]
    net: String,
    /// Run the nodes with the message archive on (`[archive] enabled`,
    /// XEP-0313): a sender's acknowledgement then also waits for the
    /// message's archive batch to commit, and archive batches share the raft
    /// log with everything else; the queue workload's guarantees are checked
    /// the same.
    #[arg(long)]
    archive: bool,
    /// Run the standard matrix (3 and 5 nodes x each nemesis x seeds) and
    /// write summary.md into --out.
    #[arg(long)]
    matrix: bool,
    /// Seeds per matrix cell.
    #[arg(long, default_value_t = 3)]
    matrix_seeds: u64,
    /// Only these nemeses in the matrix (comma-separated; default: all).
    #[arg(long)]
    matrix_nemeses: Option<String>,
    /// Only these cluster sizes in the matrix (comma-separated; default 3,5).
    #[arg(long, default_value = "3,5")]
    matrix_nodes: String,
    /// Anomaly classes that do not fail the exit status (comma-separated;
    /// see `checker::failure_classes`). For CI while a known bug is open:
    /// the report still shows them as failures.
    #[arg(long, value_delimiter = ',')]
    tolerate: Vec<String>,
    /// Print one matrix table of every run under these directories (run
    /// directories, or directories of them), re-checked with this checker.
    #[arg(long, num_args = 1..)]
    summarize: Vec<PathBuf>,
    /// Re-check an existing run directory's history and rewrite its results.
    #[arg(long)]
    check: Option<PathBuf>,
}

/// The matrix's nemeses: every schedule but `none` and the aggregates
/// (`partition`, `mixed`), which pick among the others.
fn matrix_nemeses() -> Vec<String> {
    nemesis::KINDS
        .iter()
        .filter(|k| !matches!(**k, "none" | "partition" | "mixed"))
        .map(|k| k.to_string())
        .collect()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The starling binary: given, or built now (so a run tests this tree).
fn starling_binary(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        if !p.exists() {
            bail!("--starling {}: no such file", p.display());
        }
        return Ok(std::fs::canonicalize(p)?);
    }
    let root = workspace_root();
    eprintln!("building starling (cargo build --release --bin starling)");
    let status = std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
        .args(["build", "--release", "-p", "starling", "--bin", "starling"])
        .current_dir(&root)
        .status()
        .context("cannot run cargo to build starling; pass --starling PATH")?;
    if !status.success() {
        bail!("building starling failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("release").join("starling");
    if !bin.exists() {
        bail!("{} missing after the build", bin.display());
    }
    Ok(std::fs::canonicalize(bin)?)
}

fn stamp() -> String {
    let t = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    t.replace([':', '-'], "").replace('T', "-").replace('Z', "")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("jepsen-lite: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<bool> {
    if !cli.summarize.is_empty() {
        return summarize(&cli.summarize);
    }
    if let Some(dir) = &cli.check {
        let history = jepsen_lite::history::load(&dir.join("history.jsonl"))?;
        let old: Results =
            serde_json::from_str(&std::fs::read_to_string(dir.join("results.json"))?)?;
        let results = jepsen_lite::checker::check(&history, old.run);
        std::fs::write(
            dir.join("results.json"),
            serde_json::to_string_pretty(&results)?,
        )?;
        jepsen_lite::report::write_report(dir, &results, &history)?;
        println!("{}", jepsen_lite::report::text_summary(&results));
        return Ok(exit_ok(&results, &cli.tolerate));
    }
    if !nemesis::KINDS.contains(&cli.nemesis.as_str()) {
        bail!(
            "unknown --nemesis {:?}; one of: {}",
            cli.nemesis,
            nemesis::KINDS.join(", ")
        );
    }
    if cli.nodes < 3 || cli.nodes > 9 {
        bail!("--nodes must be between 3 and 9");
    }
    let binary = starling_binary(cli.starling.clone())?;
    if cli.matrix {
        return matrix(&cli, &binary);
    }
    let dir = cli.out.clone().unwrap_or_else(|| {
        workspace_root().join("target/jepsen-lite").join(format!(
            "{}-{}n-{}-s{}",
            stamp(),
            cli.nodes,
            cli.nemesis,
            cli.seed
        ))
    });
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!(
            "run directory {} is not empty (a run needs fresh data directories)",
            dir.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = std::fs::canonicalize(&dir)?;
    let ids: Vec<u64> = (1..=cli.nodes).collect();
    let use_netns = match cli.net.as_str() {
        "netns" => true,
        "loopback" => false,
        "auto" => net::netns_available(),
        other => bail!("--net {other:?}: auto, netns or loopback"),
    };
    let net = if use_netns {
        let n = net::Netns::create(&ids).context("cannot create network namespaces")?;
        n.enter_client_namespace()?;
        net::Net::Netns(n)
    } else {
        net::Net::Loopback {
            k: (std::process::id() % 250) as u8 + 1,
        }
    };
    let command = format!(
        "cargo run -p jepsen-lite --release -- --nodes {} --nemesis {} --seed {} --time {} --pairs {} --rate {}{}",
        cli.nodes,
        cli.nemesis,
        cli.seed,
        cli.time,
        cli.pairs,
        cli.rate,
        if cli.archive { " --archive" } else { "" }
    );
    let args = run::RunArgs {
        nodes: cli.nodes,
        nemesis: cli.nemesis.clone(),
        seed: cli.seed,
        time_s: cli.time,
        pairs: cli.pairs,
        rate: cli.rate,
        archive: cli.archive,
        dir: dir.clone(),
        binary,
        command,
    };
    eprintln!(
        "jepsen-lite: {} nodes, nemesis {}, seed {}, {} s, net {}; run dir {}",
        cli.nodes,
        cli.nemesis,
        cli.seed,
        cli.time,
        net.name(),
        dir.display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // Ctrl-C or SIGTERM: drop the run, which drops the runtime's tasks and
    // with them the node processes (killed on drop) and the namespaces.
    let results = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = run::run(args, net) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
            _ = term.recv() => Err(anyhow::anyhow!("terminated")),
        }
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    let results = results?;
    println!("{}", jepsen_lite::report::text_summary(&results));
    println!("report: {}", dir.join("report.html").display());
    Ok(exit_ok(&results, &cli.tolerate))
}

/// Whether the run passes, or fails only in classes the caller tolerates
/// (said loudly: a tolerated anomaly is still an anomaly).
fn exit_ok(results: &Results, tolerate: &[String]) -> bool {
    if results.verdict.valid {
        return true;
    }
    let classes = jepsen_lite::checker::failure_classes(results);
    let (known, new): (Vec<&str>, Vec<&str>) = classes
        .iter()
        .partition(|c| tolerate.iter().any(|t| t == *c));
    if new.is_empty() {
        println!(
            "FAIL, BUT ONLY IN TOLERATED KNOWN-OPEN CLASSES ({}): exit status 0 by --tolerate",
            known.join(", ")
        );
        true
    } else {
        println!("failing classes: {}", classes.join(", "));
        false
    }
}

/// Re-checks every run found under `dirs` and prints one table.
fn summarize(dirs: &[PathBuf]) -> anyhow::Result<bool> {
    let mut runs: Vec<PathBuf> = Vec::new();
    for d in dirs {
        if d.join("history.jsonl").exists() {
            runs.push(d.clone());
            continue;
        }
        let mut sub: Vec<PathBuf> = std::fs::read_dir(d)
            .with_context(|| format!("cannot read {}", d.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("history.jsonl").exists() && p.join("results.json").exists())
            .collect();
        sub.sort();
        runs.extend(sub);
    }
    let mut rows = Vec::new();
    let mut all_valid = true;
    for dir in runs {
        let history = jepsen_lite::history::load(&dir.join("history.jsonl"))?;
        let old: Results =
            serde_json::from_str(&std::fs::read_to_string(dir.join("results.json"))?)?;
        let mut results = jepsen_lite::checker::check(&history, old.run.clone());
        // Keep the runner's own failure lines (crashes, not ready).
        for f in &old.verdict.failures {
            if (f.contains("exited on its own") || f.starts_with("cluster not ready"))
                && !results.verdict.failures.contains(f)
            {
                results.verdict.failures.push(f.clone());
                results.verdict.valid = false;
            }
        }
        all_valid &= results.verdict.valid;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        rows.push((name, results));
    }
    println!("{}", jepsen_lite::report::matrix_table(&rows));
    Ok(all_valid)
}

/// Each cell in its own child process (its own namespaces), one after the
/// other; then one summary table.
fn matrix(cli: &Cli, binary: &Path) -> anyhow::Result<bool> {
    let dir = cli.out.clone().unwrap_or_else(|| {
        workspace_root()
            .join("target/jepsen-lite")
            .join(format!("matrix-{}", stamp()))
    });
    std::fs::create_dir_all(&dir)?;
    let nemeses: Vec<String> = match &cli.matrix_nemeses {
        Some(list) => list.split(',').map(|s| s.trim().to_string()).collect(),
        None => matrix_nemeses(),
    };
    let sizes: Vec<u64> = cli
        .matrix_nodes
        .split(',')
        .map(|s| s.trim().parse::<u64>())
        .collect::<Result<_, _>>()
        .context("--matrix-nodes")?;
    let exe = std::env::current_exe()?;
    let mut rows: Vec<(String, Results)> = Vec::new();
    let mut all_valid = true;
    for &n in &sizes {
        for k in &nemeses {
            for seed in 1..=cli.matrix_seeds {
                let name = format!("{n}n-{k}-s{seed}{}", if cli.archive { "-mam" } else { "" });
                let run_dir = dir.join(&name);
                eprintln!("== matrix: {name}");
                let status = std::process::Command::new(&exe)
                    .args(["--nodes", &n.to_string(), "--nemesis", k])
                    .args(["--seed", &seed.to_string(), "--time", &cli.time.to_string()])
                    .args([
                        "--pairs",
                        &cli.pairs.to_string(),
                        "--rate",
                        &cli.rate.to_string(),
                    ])
                    .args(["--net", &cli.net])
                    .args(cli.archive.then_some("--archive"))
                    .arg("--out")
                    .arg(&run_dir)
                    .arg("--starling")
                    .arg(binary)
                    .status()?;
                let results = std::fs::read_to_string(run_dir.join("results.json"))
                    .ok()
                    .and_then(|t| serde_json::from_str::<Results>(&t).ok());
                match results {
                    Some(r) => {
                        all_valid &= r.verdict.valid;
                        rows.push((name, r));
                    }
                    None => {
                        all_valid = false;
                        eprintln!("== matrix: {name} produced no results ({status})");
                    }
                }
                std::fs::write(
                    dir.join("summary.md"),
                    jepsen_lite::report::matrix_table(&rows),
                )?;
            }
        }
    }
    let table = jepsen_lite::report::matrix_table(&rows);
    std::fs::write(dir.join("summary.md"), &table)?;
    println!("{table}");
    println!("summary: {}", dir.join("summary.md").display());
    Ok(all_valid)
}
