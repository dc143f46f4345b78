//! `fanout bench`: fan-outs of several widths and completion orders on the local stack (the
//! handler as a Lambda function behind the stand-in), measured from the stand-in's metering,
//! next to the floor: the same subtasks sent straight through the ingress, no coordinator.
//!
//! A benchmark, not a test: it prints figures and asserts nothing about time.

use crate::ingress::IngressClient;
use crate::report::{self, Summary};
use crate::stack::{HandlerMode, LocalStack, StackOptions};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// In which order the subtasks' results come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Each subtask sleeps a random time below the bound.
    Random,
    /// Subtask i finishes before subtask i+1.
    Increasing,
    /// The last subtask finishes first.
    Decreasing,
}

impl Order {
    /// The task: `s1,…,sN`, with `@MS` sleeps fixing the completion order when asked.
    fn description(self, n: usize, spread_ms: u64) -> String {
        let at = |i: usize| spread_ms * i as u64 / n.max(1) as u64;
        (1..=n)
            .map(|i| match self {
                Order::Random => format!("s{i}"),
                Order::Increasing => format!("s{i}@{}", at(i)),
                Order::Decreasing => format!("s{i}@{}", at(n - i)),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// How the coordinator waits (the handler's `x-fanout-fan-in` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// The fan-in ledger: at most 3 coordinator invocations.
    Ledger,
    /// Awaiting every call in index order: the baseline.
    InOrder,
}

impl Strategy {
    fn header(self) -> &'static str {
        match self {
            Strategy::Ledger => "ledger",
            Strategy::InOrder => "in-order",
        }
    }
}

pub struct BenchOptions {
    pub handler_binary: PathBuf,
    pub sizes: Vec<usize>,
    pub orders: Vec<Order>,
    pub strategies: Vec<Strategy>,
    /// The runs' cap on subtasks in flight (`None`: the handler's default).
    pub max_concurrency: Option<usize>,
    /// Subtasks' completions spread over this window.
    pub max_subtask_ms: u64,
    pub concurrency_limit: usize,
    /// Also measure the floor for each width.
    pub floor: bool,
    /// Send each width's subtasks once, unmeasured, before its fan-outs: the first row of a
    /// width would otherwise pay for starting the instances the later rows and the floor reuse.
    pub warm_up: bool,
}

/// One fan-out's figures.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub subtasks: usize,
    pub order: Order,
    pub strategy: Strategy,
    pub wall_ms: u128,
    pub coordinator_invocations: usize,
    pub bytes_to_coordinator: usize,
    pub subtask_invocations: usize,
    pub bytes_total: usize,
    pub billed_ms: u64,
    pub coordinator_billed_ms: u64,
    pub throttled: usize,
    pub cold_starts: usize,
    /// restate-server's largest resident set during the fan-out (sampled every 100 ms).
    pub server_rss_kb: Option<u64>,
    /// The largest peak resident set of a Lambda instance that served the fan-out.
    pub instance_rss_kb: Option<u64>,
    /// Wall time of the same width's subtasks sent straight through the ingress.
    pub floor_wall_ms: Option<u128>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub handler_binary: String,
    pub handler_binary_bytes: u64,
    pub cold_starts: usize,
    pub cold_init_ms_min: Option<f64>,
    pub cold_init_ms_median: Option<f64>,
    pub cold_init_ms_max: Option<f64>,
    pub instance_peak_rss_kb_max: Option<u64>,
    /// restate-server's peak resident set over the whole benchmark (`VmHWM`).
    pub server_peak_rss_kb: Option<u64>,
    pub max_subtask_ms: u64,
    pub rows: Vec<BenchRow>,
}

pub async fn run(options: BenchOptions) -> Result<BenchReport> {
    if options.sizes.is_empty() || options.sizes.contains(&0) {
        bail!("--sizes needs one or more widths above 0, e.g. --sizes 10,100,1000");
    }
    if options.strategies.is_empty() {
        bail!("--strategies needs at least one of ledger, in-order");
    }
    if options.orders.is_empty() {
        bail!("--orders needs at least one of random, increasing, decreasing");
    }
    let mut stack_options = StackOptions::new(HandlerMode::Lambda, options.handler_binary.clone());
    stack_options.lambda.concurrency_limit = options.concurrency_limit;
    stack_options.handler_env.push((
        "FANOUT_MAX_SUBTASK_MS".into(),
        options.max_subtask_ms.to_string(),
    ));
    let stack = LocalStack::start(stack_options).await?;
    let result = measure(&stack, &options).await;
    let server_peak_rss_kb = stack
        .server
        .pid()
        .and_then(|pid| crate::process::status_kb(pid, "VmHWM"));
    let records = stack
        .standin
        .as_ref()
        .map(|s| s.records())
        .unwrap_or_default();
    stack.stop().await;
    let rows = result?;

    let mut inits: Vec<f64> = records.iter().filter_map(|r| r.init_ms).collect();
    inits.sort_by(f64::total_cmp);
    Ok(BenchReport {
        handler_binary: options.handler_binary.display().to_string(),
        handler_binary_bytes: std::fs::metadata(&options.handler_binary)
            .map(|m| m.len())
            .unwrap_or(0),
        cold_starts: inits.len(),
        cold_init_ms_min: inits.first().copied(),
        cold_init_ms_median: inits.get(inits.len() / 2).copied(),
        cold_init_ms_max: inits.last().copied(),
        instance_peak_rss_kb_max: records.iter().filter_map(|r| r.peak_rss_kb).max(),
        server_peak_rss_kb,
        max_subtask_ms: options.max_subtask_ms,
        rows,
    })
}

async fn measure(stack: &LocalStack, options: &BenchOptions) -> Result<Vec<BenchRow>> {
    let standin = stack
        .standin
        .as_ref()
        .expect("the bench stack runs in Lambda mode");
    let mut rows = Vec::new();
    for &n in &options.sizes {
        let first_row = rows.len();
        if options.warm_up {
            floor(&stack.ingress_url, n)
                .await
                .with_context(|| format!("the warm-up of {n} subtasks failed"))?;
        }
        for (&strategy, &order) in options
            .strategies
            .iter()
            .flat_map(|s| options.orders.iter().map(move |o| (s, o)))
        {
            let ingress = IngressClient::new(&stack.ingress_url, None)
                .with_timeout(Duration::from_secs(3600))
                .with_header("x-fanout-fan-in", strategy.header());
            let ingress = match options.max_concurrency {
                Some(cap) => ingress.with_header("x-fanout-max-concurrency", cap.to_string()),
                None => ingress,
            };
            let before = standin.records().len();
            let server_rss = stack.server.pid().map(crate::process::RssSampler::start);
            let started = Instant::now();
            let description = order.description(n, options.max_subtask_ms);
            let expected: Vec<String> = description
                .split(',')
                .map(|s| format!("{s}: DONE"))
                .collect();
            let response = ingress
                .run(&json!({ "description": description }), None)
                .await?;
            let wall = started.elapsed();
            let server_rss_kb = server_rss.and_then(crate::process::RssSampler::finish);
            if response.status != 200 {
                bail!(
                    "the fan-out of {n} ({order:?}) failed with HTTP {}: {}",
                    response.status,
                    response.message()
                );
            }
            // Every one of the N results, in input order, or the figures mean nothing.
            if response.body["description"].as_str() != Some(expected.join(",").as_str()) {
                bail!("the fan-out of {n} ({order:?}, {strategy:?}) returned a wrong result");
            }
            // The last subtask's invocation may be metered a moment after the result is out.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let records = standin.records();
            let Summary {
                coordinator_invocations,
                subtask_invocations,
                bytes_to_coordinator,
                bytes_total,
                billed_ms,
                coordinator_billed_ms,
                throttled,
                cold_starts,
                ..
            } = report::summarize(&records[before..]);
            rows.push(BenchRow {
                subtasks: n,
                order,
                strategy,
                wall_ms: wall.as_millis(),
                coordinator_invocations,
                bytes_to_coordinator,
                subtask_invocations,
                bytes_total,
                billed_ms,
                coordinator_billed_ms,
                throttled,
                cold_starts,
                server_rss_kb,
                instance_rss_kb: records[before..].iter().filter_map(|r| r.peak_rss_kb).max(),
                floor_wall_ms: None,
            });
        }
        // After the fan-outs, so the floor meets instances as warm as they did.
        if options.floor {
            let floor_ms = floor(&stack.ingress_url, n).await?.as_millis();
            for row in &mut rows[first_row..] {
                row.floor_wall_ms = Some(floor_ms);
            }
        }
    }
    Ok(rows)
}

/// The floor: `n` independent `runSubtask` invocations of the same random-order subtasks,
/// sent straight through the ingress, all started before any is awaited, from the first send
/// to the last result: no coordinator and no cap.
async fn floor(ingress_url: &str, n: usize) -> Result<Duration> {
    // Requests in flight at once: enough to keep Restate busy without exhausting sockets.
    const IN_FLIGHT: usize = 64;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3600))
        .build()?;
    let started = Instant::now();
    let sends = (1..=n).map(|i| {
        let http = http.clone();
        let url = format!("{ingress_url}/worker/runSubtask/send");
        async move {
            let sent: Value = http
                .post(url)
                .json(&json!({ "description": format!("s{i}") }))
                .send()
                .await?
                .json()
                .await?;
            sent["invocationId"]
                .as_str()
                .map(str::to_owned)
                .context("the ingress returned no invocation id")
        }
    });
    let ids = bounded(sends, IN_FLIGHT).await?;
    let attaches = ids.into_iter().map(|id| {
        let http = http.clone();
        let url = format!("{ingress_url}/restate/invocation/{id}/attach");
        async move {
            let done = http.get(url).send().await?;
            if !done.status().is_success() {
                bail!("floor subtask {id} failed with HTTP {}", done.status());
            }
            Ok(())
        }
    });
    bounded(attaches, IN_FLIGHT).await?;
    Ok(started.elapsed())
}

/// Runs `tasks` with at most `limit` at once; the first error wins.
async fn bounded<T: Send + 'static>(
    tasks: impl Iterator<Item = impl std::future::Future<Output = Result<T>> + Send + 'static>,
    limit: usize,
) -> Result<Vec<T>> {
    let permits = Arc::new(tokio::sync::Semaphore::new(limit));
    let mut set = tokio::task::JoinSet::new();
    for (index, task) in tasks.enumerate() {
        let permit = Arc::clone(&permits).acquire_owned().await?;
        set.spawn(async move {
            let result = task.await;
            drop(permit);
            result.map(|value| (index, value))
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = set.join_next().await {
        results.push(joined.context("a floor request panicked")??);
    }
    results.sort_by_key(|(index, _)| *index);
    Ok(results.into_iter().map(|(_, value)| value).collect())
}

fn mib(kb: Option<u64>) -> String {
    kb.map_or_else(|| "-".into(), |kb| format!("{:.1}", kb as f64 / 1024.0))
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

pub fn table(report: &BenchReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "handler: {} ({:.1} MiB); {} cold starts, init min {} / median {} / max {} ms \
         (instances start concurrently on this machine's cores); instance peak RSS {} KiB; \
         restate-server peak RSS {} KiB; subtasks complete within {} ms",
        report.handler_binary,
        report.handler_binary_bytes as f64 / (1024.0 * 1024.0),
        report.cold_starts,
        ms(report.cold_init_ms_min),
        ms(report.cold_init_ms_median),
        ms(report.cold_init_ms_max),
        report
            .instance_peak_rss_kb_max
            .map(|v| v.to_string())
            .unwrap_or("-".into()),
        report
            .server_peak_rss_kb
            .map(|v| v.to_string())
            .unwrap_or("-".into()),
        report.max_subtask_ms,
    );
    let _ = writeln!(
        out,
        "{:>6} {:<9} {:<10} {:>8} {:>9} {:>12} {:>8} {:>12} {:>10} {:>8} {:>6} {:>8} {:>8} {:>8} {:>6}",
        "N",
        "strategy",
        "order",
        "wall ms",
        "coord inv",
        "coord bytes",
        "sub inv",
        "total bytes",
        "billed ms",
        "c billed",
        "429s",
        "srv MiB",
        "inst MiB",
        "floor ms",
        "ratio"
    );
    for r in &report.rows {
        let order = format!("{:?}", r.order).to_lowercase();
        let (floor, ratio) = match r.floor_wall_ms {
            Some(f) => (
                f.to_string(),
                format!("{:.2}", r.wall_ms as f64 / f.max(1) as f64),
            ),
            None => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            out,
            "{:>6} {:<9} {:<10} {:>8} {:>9} {:>12} {:>8} {:>12} {:>10} {:>8} {:>6} {:>8} {:>8} {:>8} {:>6}",
            r.subtasks,
            r.strategy.header(),
            order,
            r.wall_ms,
            r.coordinator_invocations,
            r.bytes_to_coordinator,
            r.subtask_invocations,
            r.bytes_total,
            r.billed_ms,
            r.coordinator_billed_ms,
            r.throttled,
            mib(r.server_rss_kb),
            mib(r.instance_rss_kb),
            floor,
            ratio
        );
    }
    out
}

/// A plot's title and the figure it draws from a row.
type Panel = (&'static str, fn(&BenchRow) -> f64);

/// An SVG with two log-log panels against N: coordinator invocations, and bytes shipped to
/// the coordinator, one line per strategy (solid: ledger, dashed: in-order) and completion
/// order (colour).
pub fn plot(report: &BenchReport) -> String {
    const W: f64 = 420.0;
    const H: f64 = 300.0;
    const PAD: f64 = 50.0;
    let colors = [
        (Order::Random, "#1f77b4"),
        (Order::Increasing, "#d62728"),
        (Order::Decreasing, "#2ca02c"),
    ];
    let panels: [Panel; 2] = [
        ("coordinator invocations", |r| {
            r.coordinator_invocations as f64
        }),
        ("bytes to the coordinator", |r| {
            r.bytes_to_coordinator as f64
        }),
    ];
    let ns: Vec<f64> = report.rows.iter().map(|r| r.subtasks as f64).collect();
    let (n_min, n_max) = (
        ns.iter().copied().fold(f64::MAX, f64::min).max(1.0),
        ns.iter().copied().fold(1.0, f64::max),
    );
    let x_of = |n: f64| {
        let span = (n_max.log10() - n_min.log10()).max(1e-9);
        PAD + (n.log10() - n_min.log10()) / span * (W - 2.0 * PAD)
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"11\">\n",
        2.0 * W
    );
    for (panel, (title, value)) in panels.iter().enumerate() {
        let dx = panel as f64 * W;
        // Log scale on both axes: the baseline's bytes run 100× the ledger's at N=10,000.
        let y_max = report.rows.iter().map(value).fold(10.0, f64::max);
        let y_of = |v: f64| H - PAD - v.max(1.0).log10() / y_max.log10() * (H - 2.0 * PAD);
        let _ = writeln!(
            svg,
            "<g transform=\"translate({dx},0)\"><text x=\"{}\" y=\"20\" text-anchor=\"middle\">{title} vs N (log-log)</text>\
             <line x1=\"{PAD}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{}\" stroke=\"black\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{y_max:.0}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">1</text>",
            W / 2.0,
            H - PAD,
            W - PAD,
            H - PAD,
            H - PAD,
            PAD - 4.0,
            PAD + 4.0,
            PAD - 4.0,
            H - PAD,
        );
        for n in &report.rows {
            let x = x_of(n.subtasks as f64);
            let _ = writeln!(
                svg,
                "<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                H - PAD + 14.0,
                n.subtasks
            );
        }
        let lines = [Strategy::Ledger, Strategy::InOrder]
            .into_iter()
            .flat_map(|strategy| colors.iter().map(move |c| (strategy, c)));
        let mut legend = 0;
        for (strategy, (order, color)) in lines {
            let points: Vec<String> = report
                .rows
                .iter()
                .filter(|r| r.order == *order && r.strategy == strategy)
                .map(|r| format!("{:.1},{:.1}", x_of(r.subtasks as f64), y_of(value(r))))
                .collect();
            if points.is_empty() {
                continue;
            }
            let dash = match strategy {
                Strategy::Ledger => "",
                Strategy::InOrder => " stroke-dasharray=\"6 4\"",
            };
            let _ = writeln!(
                svg,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"{dash} points=\"{}\"/>\
                 <text x=\"{}\" y=\"{}\" fill=\"{color}\">{} {}</text>",
                points.join(" "),
                W - PAD - 110.0,
                PAD + 14.0 * legend as f64,
                strategy.header(),
                format!("{order:?}").to_lowercase()
            );
            legend += 1;
        }
        svg.push_str("</g>\n");
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(strategy: Strategy, order: Order, n: usize, invocations: usize) -> BenchRow {
        BenchRow {
            subtasks: n,
            order,
            strategy,
            wall_ms: 1,
            coordinator_invocations: invocations,
            bytes_to_coordinator: 10 * invocations,
            subtask_invocations: n,
            bytes_total: 0,
            billed_ms: 0,
            coordinator_billed_ms: 0,
            throttled: 0,
            cold_starts: 0,
            server_rss_kb: Some(2048),
            instance_rss_kb: None,
            floor_wall_ms: None,
        }
    }

    #[test]
    fn the_plot_draws_one_line_per_strategy_and_order() {
        let report = BenchReport {
            handler_binary: "h".into(),
            handler_binary_bytes: 0,
            cold_starts: 0,
            cold_init_ms_min: None,
            cold_init_ms_median: None,
            cold_init_ms_max: None,
            instance_peak_rss_kb_max: None,
            server_peak_rss_kb: Some(4096),
            max_subtask_ms: 0,
            rows: vec![
                row(Strategy::Ledger, Order::Random, 10, 3),
                row(Strategy::InOrder, Order::Random, 10, 5),
                row(Strategy::Ledger, Order::Random, 100, 3),
                row(Strategy::InOrder, Order::Random, 100, 30),
            ],
        };
        let svg = plot(&report);
        // Two panels, each with a ledger line and a dashed in-order line.
        assert_eq!(svg.matches("<polyline").count(), 4, "{svg}");
        assert_eq!(svg.matches("stroke-dasharray").count(), 2, "{svg}");
        let text = table(&report);
        assert!(text.contains("restate-server peak RSS 4096 KiB"), "{text}");
        let first_row = text.lines().nth(2).unwrap();
        assert!(
            first_row.split_whitespace().any(|column| column == "2.0"),
            "server RSS per row in MiB: {first_row}"
        );
    }

    #[test]
    fn orders_fix_when_each_subtask_finishes() {
        assert_eq!(Order::Random.description(3, 300), "s1,s2,s3");
        assert_eq!(
            Order::Increasing.description(3, 300),
            "s1@100,s2@200,s3@300"
        );
        assert_eq!(Order::Decreasing.description(3, 300), "s1@200,s2@100,s3@0");
    }
}
