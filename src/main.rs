//! The `starling` binary: parse the command line, set up tracing, run.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: a stanza's way through the
/// server allocates many small strings and nodes (parse, route, write),
/// and glibc's malloc/free were a quarter of the CPU at saturation
/// (BENCHMARKS.md). The declaration is safe code. Transparent huge pages
/// are off for the process (see [`no_huge_pages`]).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "starling", version, about = "A clustered XMPP server")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one node from its config file.
    Serve {
        /// Path of the node's TOML config.
        #[arg(long)]
        config: PathBuf,
        /// Stop when standard input closes (used by `starling dev`, so the
        /// nodes never outlive it).
        #[arg(long, hide = true)]
        exit_on_stdin_eof: bool,
    },
    /// Start a local cluster of N nodes as child processes.
    Dev(starling::dev::DevArgs),
    /// Operate a running cluster through its admin API.
    Ctl(starling::ctl::CtlArgs),
    /// Measure replicated write latency, throughput and failover time on a
    /// fresh local cluster.
    RaftBench(starling::raft_bench::RaftBenchArgs),
    /// Make a cluster CA and one certificate per node for `[cluster_tls]`
    /// (mTLS between nodes) in DIR: ca.pem, ca-key.pem, node<ID>.pem,
    /// node<ID>-key.pem, every file mode 0600. Copy ca.pem and a node's
    /// pair to that node; keep ca-key.pem off the nodes.
    ClusterCerts {
        /// Directory to write into (created if missing; files overwritten).
        #[arg(long)]
        dir: PathBuf,
        /// Node ids to issue certificates for, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<u64>,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STARLING_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,openraft=warn,sled=warn,h2=warn,tower=warn")
    });
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Turns transparent huge pages off for this process, as Redis and most
/// latency-bound servers advise: mimalloc asks for huge pages on its
/// regions, and the kernel zeroes each 2 MiB page at its first touch,
/// inside the allocation that touched it. `perf sched` showed runtime
/// workers stalled 3.5 ms per fault, several times a second while
/// sessions grew; p99 at 20,000 msg/s on one node went from 1-3 ms to
/// 0.4-0.5 ms without them (BENCHMARKS.md).
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!("warning: could not turn transparent huge pages off: {e}");
    }
}

fn main() -> ExitCode {
    no_huge_pages();
    // Everything this process writes (data, configs, logs, the admin
    // token of `dev`) is for its owner only.
    starling::private_files::restrict_umask();
    let cli = Cli::parse();
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = run(cli.cmd, &rt);
    // Do not wait for blocking tasks (such as the stdin watcher) at exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

fn run(cmd: Cmd, rt: &tokio::runtime::Runtime) -> ExitCode {
    match cmd {
        Cmd::Serve {
            config: config_path,
            exit_on_stdin_eof,
        } => {
            let config = match starling::config::Config::load(&config_path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            init_tracing();
            if let Some(mode) = starling::private_files::loose_mode(&config_path) {
                tracing::warn!(
                    config = %config_path.display(),
                    mode = format_args!("{mode:o}"),
                    "the config file holds the cluster secret and admin token but other users \
                     can read it; chmod 600 it"
                );
            }
            let result = rt.block_on(starling::node::run(
                config,
                shutdown_signal(exit_on_stdin_eof),
            ));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Dev(args) => {
            init_tracing();
            report(rt.block_on(starling::dev::run(args)))
        }
        Cmd::Ctl(args) => rt.block_on(starling::ctl::run(args)),
        Cmd::RaftBench(args) => report(rt.block_on(starling::raft_bench::run(args))),
        Cmd::ClusterCerts { dir, nodes } => {
            match starling::cluster_tls::write_cluster(&dir, &nodes) {
                Ok(sections) => {
                    for (id, s) in nodes.iter().zip(sections) {
                        println!(
                            "node {id}: [cluster_tls] ca = {:?} cert = {:?} key = {:?}",
                            s.ca, s.cert, s.key
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on Ctrl-C, SIGTERM, or (optionally) end of standard input.
async fn shutdown_signal(watch_stdin: bool) {
    use tokio::io::AsyncReadExt;
    let stdin_closed = async {
        if watch_stdin {
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 64];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        } else {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
        _ = stdin_closed => {}
    }
}
