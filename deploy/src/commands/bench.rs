//! `fanout bench`: fan-outs of several widths on the local stack (the handler as a Lambda
//! function behind the stand-in), measured from the stand-in's metering.
//!
//! A benchmark, not a test: it prints figures and asserts nothing about time.

use crate::ingress::IngressClient;
use crate::report::{self, Summary};
use crate::stack::{HandlerMode, LocalStack, StackOptions};
use anyhow::{Result, bail};
use serde::Serialize;
use serde_json::json;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub struct BenchOptions {
    pub handler_binary: PathBuf,
    pub sizes: Vec<usize>,
    /// Subtasks sleep below this, so completions spread over this window.
    pub max_subtask_ms: u64,
    pub concurrency_limit: usize,
}

/// One width's figures.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub subtasks: usize,
    pub wall_ms: u128,
    pub coordinator_invocations: usize,
    pub bytes_to_coordinator: usize,
    pub subtask_invocations: usize,
    pub bytes_total: usize,
    pub billed_ms: u64,
    pub coordinator_billed_ms: u64,
    pub throttled: usize,
    pub cold_starts: usize,
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
    pub max_subtask_ms: u64,
    pub rows: Vec<BenchRow>,
}

pub async fn run(options: BenchOptions) -> Result<BenchReport> {
    if options.sizes.is_empty() || options.sizes.contains(&0) {
        bail!("--sizes needs one or more widths above 0, e.g. --sizes 10,100,1000");
    }
    let mut stack_options = StackOptions::new(HandlerMode::Lambda, options.handler_binary.clone());
    stack_options.lambda.concurrency_limit = options.concurrency_limit;
    stack_options.handler_env.push((
        "FANOUT_MAX_SUBTASK_MS".into(),
        options.max_subtask_ms.to_string(),
    ));
    let stack = LocalStack::start(stack_options).await?;
    let result = measure(&stack, &options).await;
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
        max_subtask_ms: options.max_subtask_ms,
        rows,
    })
}

async fn measure(stack: &LocalStack, options: &BenchOptions) -> Result<Vec<BenchRow>> {
    let standin = stack
        .standin
        .as_ref()
        .expect("the bench stack runs in Lambda mode");
    let ingress =
        IngressClient::new(&stack.ingress_url, None).with_timeout(Duration::from_secs(3600));
    let mut rows = Vec::new();
    for &n in &options.sizes {
        let description: Vec<String> = (1..=n).map(|i| format!("s{i}")).collect();
        let before = standin.records().len();
        let started = Instant::now();
        let response = ingress
            .run(&json!({ "description": description.join(",") }), None)
            .await?;
        let wall = started.elapsed();
        if response.status != 200 {
            bail!(
                "the fan-out of {n} failed with HTTP {}: {}",
                response.status,
                response.message()
            );
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
            wall_ms: wall.as_millis(),
            coordinator_invocations,
            bytes_to_coordinator,
            subtask_invocations,
            bytes_total,
            billed_ms,
            coordinator_billed_ms,
            throttled,
            cold_starts,
        });
    }
    Ok(rows)
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
         subtasks sleep < {} ms",
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
        report.max_subtask_ms,
    );
    let _ = writeln!(
        out,
        "{:>8} {:>9} {:>12} {:>14} {:>10} {:>13} {:>10} {:>12} {:>9}",
        "N",
        "wall ms",
        "coord inv",
        "coord bytes",
        "sub inv",
        "total bytes",
        "billed ms",
        "coord billed",
        "throttled"
    );
    for r in &report.rows {
        let _ = writeln!(
            out,
            "{:>8} {:>9} {:>12} {:>14} {:>10} {:>13} {:>10} {:>12} {:>9}",
            r.subtasks,
            r.wall_ms,
            r.coordinator_invocations,
            r.bytes_to_coordinator,
            r.subtask_invocations,
            r.bytes_total,
            r.billed_ms,
            r.coordinator_billed_ms,
            r.throttled
        );
    }
    out
}
