//! The `starling-bench` binary: `run` (the load generator), `report` (the
//! comparison table and plot from `run --out` results) and `relay` (the raw
//! baseline server). It was `starling bench`, `starling bench-report` and
//! `starling bench-relay` before it left the server's binary.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc, as in the `starling` binary, so that the load generator
/// allocates as it did when it was `starling bench` (its figures in
/// BENCHMARKS.md were measured so). Transparent huge pages are off for the
/// process too (see [`no_huge_pages`]).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "starling-bench",
    version,
    about = "An XMPP load generator for any server"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load-test an XMPP server (Starling, Prosody, ejabberd) or the raw
    /// relay: latency percentiles, throughput, logins/s, memory.
    Run(starling_bench::BenchArgs),
    /// Write the comparison table and plot from `run --out` results.
    Report {
        /// JSON lines from `starling-bench run --out`.
        #[arg(long)]
        input: PathBuf,
        /// Markdown file to update (between the bench markers).
        #[arg(long, default_value = "BENCHMARKS.md")]
        markdown: PathBuf,
        /// Where to write the SVG plot.
        #[arg(long, default_value = "bench/latency.svg")]
        svg: PathBuf,
        /// The offered rate of the fixed-rate columns.
        #[arg(long, default_value_t = 5000)]
        rate: u64,
        /// A line above the table (machine, date, command).
        #[arg(long, default_value = "")]
        header: String,
        /// Write the group-chat (`muc`) table between the muc markers
        /// instead (no plot).
        #[arg(long)]
        muc: bool,
    },
    /// What a phone's reconnect costs: round trips from TCP connect to the
    /// first message (STARTTLS + SCRAM, SASL2 + Bind 2, FAST + inline
    /// resumption) through a delaying proxy, and a reconnect storm.
    Mobile(starling_bench::mobile::MobileArgs),
    /// The raw baseline for `run --target raw`: a length-prefixed TCP relay.
    Relay {
        #[arg(long, default_value = "127.0.0.1:7400")]
        listen: std::net::SocketAddr,
    },
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Turns transparent huge pages off for this process, as the `starling`
/// binary does for itself (its `no_huge_pages` says why).
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!("warning: could not turn transparent huge pages off: {e}");
    }
}

fn main() -> ExitCode {
    no_huge_pages();
    let cli = Cli::parse();
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = run(cli.cmd, &rt);
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

fn run(cmd: Cmd, rt: &tokio::runtime::Runtime) -> ExitCode {
    match cmd {
        Cmd::Run(args) => report(rt.block_on(starling_bench::run(args))),
        Cmd::Report {
            input,
            markdown,
            svg,
            rate,
            header,
            muc,
        } => report(if muc {
            starling_bench::report::write_muc(&input, &markdown, rate, &header)
        } else {
            starling_bench::report::write(&input, &markdown, &svg, rate, &header)
        }),
        Cmd::Mobile(args) => report(rt.block_on(starling_bench::mobile::run(args))),
        Cmd::Relay { listen } => report(rt.block_on(starling_bench::raw::serve(listen))),
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
