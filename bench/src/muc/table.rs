//! The `muc` rows as tables: the terminal's (every row) and the markdown
//! comparison `starling-bench report --muc` writes into BENCHMARKS.md.
use crate::RunResult;

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The table of `muc` rows, for the terminal.
pub(crate) fn print_table(results: &[RunResult]) {
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            let f = r.fanout.clone().unwrap_or_default();
            let cores = |c: f64| {
                if f.wall_s > 0.0 {
                    format!("{:.2}", c / f.wall_s)
                } else {
                    "–".into()
                }
            };
            vec![
                r.label.clone(),
                r.scenario.clone(),
                format!("{}/{}/{}", f.occupants, f.senders, f.nodes),
                r.offered_rate.to_string(),
                format!("{:.0}", f.messages_per_s),
                format!("{:.0}", f.deliveries_per_s),
                format!(
                    "{} / {} / {}",
                    ms(f.first_p50_ms),
                    ms(f.first_p99_ms),
                    ms(f.first_max_ms)
                ),
                format!(
                    "{} / {} / {}",
                    ms(f.last_p50_ms),
                    ms(f.last_p99_ms),
                    ms(f.last_max_ms)
                ),
                format!("{} / {}", ms(f.echo_p50_ms), ms(f.echo_p99_ms)),
                f.copies_lost.to_string(),
                r.errors.to_string(),
                cores(f.server_cpu_s),
                cores(f.bench_cpu_s),
                r.note.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        starling::ctl::table(
            &[
                "SERVER",
                "SCENARIO",
                "OCC/SND/NODES",
                "OFFERED/s",
                "MSG/s",
                "COPIES/s",
                "FIRST p50/p99/max ms",
                "LAST p50/p99/max ms",
                "ECHO p50/p99",
                "LOST",
                "ERR",
                "SRV CPU",
                "GEN CPU",
                "NOTE"
            ],
            &rows
        )
    );
}

/// The markdown comparison of `muc` rows: one line per server with its
/// saturation and its figures at the fixed `rate`.
pub fn table(rs: &[RunResult], rate: u64) -> String {
    use std::fmt::Write as _;
    let mut labels: Vec<&str> = Vec::new();
    for r in rs.iter().filter(|r| r.scenario.starts_with("muc")) {
        if !labels.contains(&r.label.as_str()) {
            labels.push(&r.label);
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| server | occupants / senders / nodes | saturation (msg/s) | copies/s at saturation | @{rate}/s first p50 / p99 (ms) | @{rate}/s last p50 / p99 / max (ms) | @{rate}/s copies lost | @{rate}/s server / generator CPU (cores) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for label in labels {
        let at = |scenario: &str, want: Option<u64>| {
            rs.iter().rev().find(|r| {
                r.label == label
                    && r.scenario == scenario
                    && want.is_none_or(|x| r.offered_rate == x)
            })
        };
        let sat = at("muc-saturation", None);
        let fixed = at("muc", Some(rate));
        let f = fixed.and_then(|r| r.fanout.clone());
        let shape = fixed
            .or(sat)
            .and_then(|r| r.fanout.clone())
            .map(|f| format!("{} / {} / {}", f.occupants, f.senders, f.nodes))
            .unwrap_or_else(|| "–".into());
        let dash = || "–".to_string();
        let _ = writeln!(
            out,
            "| {label} | {shape} | {} | {} | {} | {} | {} | {} |",
            sat.map_or_else(dash, |r| format!("{:.0}", r.rate_result)),
            sat.map_or_else(dash, |r| format!("{:.0}", r.throughput)),
            f.as_ref().map_or_else(dash, |f| format!(
                "{} / {}",
                ms(f.first_p50_ms),
                ms(f.first_p99_ms)
            )),
            f.as_ref().map_or_else(dash, |f| format!(
                "{} / {} / {}",
                ms(f.last_p50_ms),
                ms(f.last_p99_ms),
                ms(f.last_max_ms)
            )),
            f.as_ref().map_or_else(dash, |f| f.copies_lost.to_string()),
            f.as_ref().map_or_else(dash, |f| if f.wall_s > 0.0 {
                format!(
                    "{:.2} / {:.2}",
                    f.server_cpu_s / f.wall_s,
                    f.bench_cpu_s / f.wall_s
                )
            } else {
                dash()
            }),
        );
    }
    out
}
