//! `starling-bench report`: turns the JSON lines written by `starling-bench
//! run --out` into the comparison table of BENCHMARKS.md and an SVG plot of
//! latency percentiles against offered rate, one line per server.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use super::RunResult;

pub fn load(path: &Path) -> anyhow::Result<Vec<RunResult>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("bad result line: {l}")))
        .collect()
}

/// The run of `label`/`scenario` (at `rate`), preferring a dedicated run
/// over a point of a sweep.
fn find<'a>(
    rs: &'a [RunResult],
    label: &str,
    scenario: &str,
    rate: Option<u64>,
) -> Option<&'a RunResult> {
    let matching = |r: &&RunResult| {
        r.label == label && r.scenario == scenario && rate.is_none_or(|x| r.offered_rate == x)
    };
    rs.iter()
        .rev()
        .filter(matching)
        .find(|r| r.note != "sweep")
        .or_else(|| rs.iter().rev().find(matching))
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The markdown table: one row per server.
pub fn table(rs: &[RunResult], labels: &[String], rate: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| server | same node @{rate}/s p50 / p90 / p99 / p99.9 / max (ms) | cross node @{rate}/s p50 / p99 (ms) | saturation (msg/s) | logins/s | offline drain (msg/s) | KiB per idle session (plain / TLS) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for label in labels {
        let same = find(rs, label, "same-node", Some(rate))
            .map(|r| {
                format!(
                    "{} / {} / {} / {} / {}{}",
                    ms(r.p50_ms),
                    ms(r.p90_ms),
                    ms(r.p99_ms),
                    ms(r.p999_ms),
                    ms(r.max_ms),
                    if r.lost > 0 {
                        format!(" ({} lost)", r.lost)
                    } else {
                        String::new()
                    }
                )
            })
            .unwrap_or_else(|| "–".into());
        let cross = find(rs, label, "cross-node", Some(rate))
            .map(|r| format!("{} / {}", ms(r.p50_ms), ms(r.p99_ms)))
            .unwrap_or_else(|| "–".into());
        let sat = find(rs, label, "saturation", None)
            .map(|r| format!("{:.0}", r.rate_result))
            .unwrap_or_else(|| "–".into());
        let login = find(rs, label, "login", None)
            .map(|r| format!("{:.0}", r.rate_result))
            .unwrap_or_else(|| "–".into());
        let offline = find(rs, label, "offline", None)
            .map(|r| {
                format!(
                    "{:.0}{}",
                    r.rate_result,
                    if r.lost > 0 {
                        format!(" ({} lost)", r.lost)
                    } else {
                        String::new()
                    }
                )
            })
            .unwrap_or_else(|| "–".into());
        let idle = |l: &str| {
            find(rs, l, "idle", None)
                .map(|r| format!("{:.1}", r.rate_result))
                .unwrap_or_else(|| "–".into())
        };
        let _ = writeln!(
            out,
            "| {label} | {same} | {cross} | {sat} | {login} | {offline} | {} / {} |",
            idle(label),
            idle(&format!("{label}-tls"))
        );
    }
    out
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// SVG: p50 (dashed) and p99 (solid) latency against offered rate, log-log.
pub fn svg(rs: &[RunResult], labels: &[String]) -> String {
    let (w, h) = (760.0f64, 440.0f64);
    let (l, r, t, b) = (70.0, 170.0, 30.0, 50.0);
    let mut series: BTreeMap<&str, Vec<&RunResult>> = BTreeMap::new();
    for run in rs {
        if matches!(run.scenario.as_str(), "same-node" | "cross-node")
            && run.offered_rate > 0
            && run.p99_ms > 0.0
            && labels.contains(&run.label)
            && run.note == "sweep"
        {
            series.entry(run.label.as_str()).or_default().push(run);
        }
    }
    let rates: Vec<f64> = series
        .values()
        .flatten()
        .map(|r| r.offered_rate as f64)
        .collect();
    let lats: Vec<f64> = series
        .values()
        .flatten()
        .flat_map(|r| [r.p50_ms.max(0.01), r.p99_ms.max(0.01)])
        .collect();
    let (x0, x1) = (
        rates
            .iter()
            .cloned()
            .fold(f64::MAX, f64::min)
            .max(1.0)
            .log10()
            .floor(),
        rates.iter().cloned().fold(1.0, f64::max).log10().ceil(),
    );
    let (y0, y1) = (
        lats.iter()
            .cloned()
            .fold(f64::MAX, f64::min)
            .max(0.01)
            .log10()
            .floor(),
        lats.iter().cloned().fold(0.1, f64::max).log10().ceil(),
    );
    let x1 = if x1 <= x0 { x0 + 1.0 } else { x1 };
    let y1 = if y1 <= y0 { y0 + 1.0 } else { y1 };
    let px = |v: f64| l + (v.max(1e-9).log10() - x0) / (x1 - x0) * (w - l - r);
    let py = |v: f64| h - b - (v.max(1e-9).log10() - y0) / (y1 - y0) * (h - t - b);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>"
    );
    let _ = writeln!(s, "<rect width='100%' height='100%' fill='white'/>");
    let _ = writeln!(
        s,
        "<text x='{}' y='18' text-anchor='middle' font-size='14'>Message latency vs offered rate (solid p99, dashed p50)</text>",
        (w - r + l) / 2.0
    );
    // Grid and axes.
    let mut d = x0;
    while d <= x1 {
        let x = px(10f64.powf(d));
        let _ = writeln!(
            s,
            "<line x1='{x:.1}' y1='{t}' x2='{x:.1}' y2='{}' stroke='#ddd'/><text x='{x:.1}' y='{}' text-anchor='middle'>{}</text>",
            h - b,
            h - b + 16.0,
            10f64.powf(d)
        );
        d += 1.0;
    }
    let mut d = y0;
    while d <= y1 {
        let y = py(10f64.powf(d));
        let _ = writeln!(
            s,
            "<line x1='{l}' y1='{y:.1}' x2='{}' y2='{y:.1}' stroke='#ddd'/><text x='{}' y='{:.1}' text-anchor='end'>{}</text>",
            w - r,
            l - 6.0,
            y + 4.0,
            10f64.powf(d)
        );
        d += 1.0;
    }
    let _ = writeln!(
        s,
        "<text x='{}' y='{}' text-anchor='middle'>offered rate (messages/s, log)</text>",
        (w - r + l) / 2.0,
        h - 10.0
    );
    let _ = writeln!(
        s,
        "<text x='16' y='{}' transform='rotate(-90 16 {})' text-anchor='middle'>latency (ms, log)</text>",
        (h - b + t) / 2.0,
        (h - b + t) / 2.0
    );
    for (i, (label, runs)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut runs = runs.clone();
        runs.sort_by_key(|r| r.offered_rate);
        for (pick, dash) in [(0, "6,4"), (1, "")] {
            let pts: Vec<String> = runs
                .iter()
                .map(|r| {
                    let v = if pick == 0 { r.p50_ms } else { r.p99_ms };
                    format!("{:.1},{:.1}", px(r.offered_rate as f64), py(v))
                })
                .collect();
            let _ = writeln!(
                s,
                "<polyline fill='none' stroke='{color}' stroke-width='2' stroke-dasharray='{dash}' points='{}'/>",
                pts.join(" ")
            );
        }
        let y = t + 20.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            "<line x1='{}' y1='{y}' x2='{}' y2='{y}' stroke='{color}' stroke-width='2'/><text x='{}' y='{}'>{}</text>",
            w - r + 10.0,
            w - r + 34.0,
            w - r + 40.0,
            y + 4.0,
            starling::xmpp::element::escape(label)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Replaces what lies between `begin` and `end` in `markdown` with
/// `block` (markers included), or appends it when the markers are missing.
fn replace_block(markdown: &Path, begin: &str, end: &str, block: &str) -> anyhow::Result<()> {
    let old = std::fs::read_to_string(markdown).unwrap_or_default();
    let new = match (old.find(begin), old.find(end)) {
        (Some(a), Some(z)) if z > a => {
            format!("{}{}{}", &old[..a], block, &old[z + end.len()..])
        }
        _ => format!("{old}\n{block}\n"),
    };
    std::fs::write(markdown, new)?;
    Ok(())
}

/// Writes the group-chat table (`muc` rows of `input`, see
/// [`crate::muc::table`]) into `markdown` between `<!-- muc:begin -->` and
/// `<!-- muc:end -->`.
pub fn write_muc(input: &Path, markdown: &Path, rate: u64, header: &str) -> anyhow::Result<()> {
    let rs = load(input)?;
    let table = crate::muc::table(&rs, rate);
    let block = format!("<!-- muc:begin -->\n{header}\n\n{table}<!-- muc:end -->");
    replace_block(markdown, "<!-- muc:begin -->", "<!-- muc:end -->", &block)?;
    println!("{table}");
    Ok(())
}

/// Writes the table (and the plot) for `input` into `markdown` between
/// the `<!-- bench:begin -->` and `<!-- bench:end -->` markers (the rest of
/// the file, the prose, is kept).
pub fn write(
    input: &Path,
    markdown: &Path,
    svg_path: &Path,
    rate: u64,
    header: &str,
) -> anyhow::Result<()> {
    let rs = load(input)?;
    let mut labels: Vec<String> = Vec::new();
    for r in &rs {
        let base = r.label.trim_end_matches("-tls").to_string();
        if !labels.contains(&base) {
            labels.push(base);
        }
    }
    let table = table(&rs, &labels, rate);
    std::fs::write(svg_path, svg(&rs, &labels))?;
    let svg_name = svg_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let block = format!(
        "<!-- bench:begin -->\n{header}\n\n{table}\n![latency vs offered rate]({svg_name})\n<!-- bench:end -->"
    );
    let old = std::fs::read_to_string(markdown).unwrap_or_default();
    let new = match (
        old.find("<!-- bench:begin -->"),
        old.find("<!-- bench:end -->"),
    ) {
        (Some(a), Some(z)) if z > a => {
            format!(
                "{}{}{}",
                &old[..a],
                block,
                &old[z + "<!-- bench:end -->".len()..]
            )
        }
        _ => format!("{old}\n{block}\n"),
    };
    std::fs::write(markdown, new)?;
    println!("{table}");
    Ok(())
}
