//! `parallel::run_all`: a subtask that works through several items at once, each side effect's
//! outcome journaled, on a real restate-server. A retry round runs only what failed retryably;
//! what succeeded never runs again, and what failed terminally is recorded, not retried.

use fanout::admin::{AdminClient, DeploymentTarget, RegisterOptions, sql_string};
use fanout::ingress::IngressClient;
use fanout::restate_server::{RestateServer, ServerOptions};
use fanout_handler::parallel::{RunAll, SideEffectError, run_all};
use fanout_handler::{InvalidInput, Job, Worker, http_endpoint};
use fanout_standin::process::free_port;
use restate_sdk::prelude::*;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How many times each item's side effect ran, across attempts and replays.
static RUNS: Mutex<Option<HashMap<String, usize>>> = Mutex::new(None);
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static MOST_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

fn ran(item: &str) -> usize {
    RUNS.lock()
        .unwrap()
        .as_ref()
        .and_then(|r| r.get(item).copied())
        .unwrap_or(0)
}

/// The side effect: counts itself, takes 300 ms, and fails the way the item's name says:
/// `flaky…` retryably on its first run, `bad…` terminally every time.
async fn process(item: String) -> Result<String, SideEffectError> {
    let run = {
        let mut runs = RUNS.lock().unwrap();
        let count = runs
            .get_or_insert_with(HashMap::new)
            .entry(item.clone())
            .or_default();
        *count += 1;
        *count
    };
    let now = IN_FLIGHT.fetch_add(1, Ordering::SeqCst) + 1;
    MOST_IN_FLIGHT.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    if item.starts_with("flaky") && run == 1 {
        let refused = std::io::Error::other(format!("{item}: connection reset"));
        return Err(refused.into());
    }
    if item.starts_with("bad") {
        return Err(SideEffectError::terminal(
            422,
            format!("{item} cannot be processed"),
        ));
    }
    Ok(format!("{item}: ok"))
}

/// A subtask is a batch of items, processed together.
struct Batches;

#[derive(Deserialize)]
struct Task {
    batches: Vec<Vec<String>>,
}

impl Job for Batches {
    type Task = Task;
    type Subtask = Vec<String>;
    type Outcome = Vec<String>;
    type Output = Vec<Vec<String>>;

    fn split(&self, task: Task) -> Result<Vec<Vec<String>>, InvalidInput> {
        Ok(task.batches)
    }

    async fn execute(
        &self,
        ctx: &mut Context<'_>,
        items: Vec<String>,
    ) -> Result<Vec<String>, HandlerError> {
        let how = RunAll::new("process").backoff(Duration::from_millis(50), Duration::from_secs(1));
        let shared = std::sync::Arc::new(items.clone());
        let outcomes = run_all(ctx, &how, items.len(), move |i| process(shared[i].clone())).await?;
        Ok(outcomes
            .into_iter()
            .zip(items)
            .map(|(outcome, item)| match outcome {
                Ok(done) => done,
                Err(e) => format!("{item}: FAILED ({}): {}", e.code(), e.message()),
            })
            .collect())
    }

    fn aggregate(&self, outcomes: Vec<Vec<String>>) -> Vec<Vec<String>> {
        outcomes
    }

    fn subtask_label(&self, items: &Vec<String>) -> String {
        items.join("+")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn side_effects_run_together_and_only_what_failed_runs_again() {
    let port = free_port().unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let endpoint = tokio::spawn(http_endpoint::serve(Worker::new(Batches).endpoint(), addr));
    let server = RestateServer::start(
        &fanout::tools::restate_server().unwrap(),
        &ServerOptions::default(),
    )
    .await
    .unwrap();
    let admin = AdminClient::new(&server.admin_url, None);
    admin
        .register(
            &DeploymentTarget::Http {
                uri: format!("http://127.0.0.1:{port}"),
            },
            &RegisterOptions::default(),
        )
        .await
        .unwrap();

    let wide: Vec<String> = (0..12).map(|i| format!("w{i}")).collect();
    let task = json!({ "batches": [wide, ["a", "flaky-b", "bad-c", "d"]] });
    let response = IngressClient::new(&server.ingress_url, None)
        .run(&task, None)
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{:?}", response.body);
    let wide_done: Vec<String> = (0..12).map(|i| format!("w{i}: ok")).collect();
    assert_eq!(
        response.body,
        json!([
            wide_done,
            [
                "a: ok",
                "flaky-b: ok",
                "bad-c: FAILED (422): bad-c cannot be processed",
                "d: ok"
            ]
        ])
    );

    // All twelve of a batch were in flight at once, not one after the other.
    assert!(
        MOST_IN_FLIGHT.load(Ordering::SeqCst) >= 12,
        "at most {} side effects ran at once",
        MOST_IN_FLIGHT.load(Ordering::SeqCst)
    );
    // The retry round ran the flaky item alone: what succeeded or failed for good in the first
    // round never ran again.
    for (item, runs) in [
        ("a", 1),
        ("d", 1),
        ("bad-c", 1),
        ("flaky-b", 2),
        ("w0", 1),
        ("w11", 1),
    ] {
        assert_eq!(ran(item), runs, "{item}");
    }
    // Each round is one journaled step: the small batch took two, the wide one one.
    let rounds = admin
        .query(&format!(
            "SELECT j.name AS name, i.id AS id FROM sys_journal j JOIN sys_invocation i \
             ON j.id = i.id WHERE i.target = 'worker/runSubtask' \
             AND j.entry_type = 'Command: Run' AND j.name LIKE {}",
            sql_string("process #%")
        ))
        .await
        .unwrap();
    let mut names: Vec<&str> = rounds.iter().filter_map(|r| r["name"].as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        ["process #0", "process #0", "process #1"],
        "{rounds:?}"
    );

    server.stop().await;
    endpoint.abort();
}

/// The example job `batched_items` (handler/examples), built by `cargo test` (which builds the
/// workspace's examples) or `cargo build -p fanout-handler --example batched_items`.
fn batched_items_binary(profile: &str) -> std::path::PathBuf {
    let binary = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join(profile)
        .join("examples/batched_items");
    assert!(
        binary.is_file(),
        "{} is missing: cargo build {}-p fanout-handler --example batched_items",
        binary.display(),
        if profile == "release" {
            "--release "
        } else {
            ""
        }
    );
    binary
}

/// The sum of the items' checksums, computed plainly, as the job must answer it.
fn expected_checksum(items: u64) -> u64 {
    (0..items).fold(0u64, |sum, item| {
        let hash = format!("item-{item}")
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
            });
        sum.wrapping_add(hash)
    })
}

/// One run of `batched_items` on a Lambda stack: its answer, wall time and what the stand-in
/// metered for it.
struct BatchRun {
    wall: Duration,
    answer: serde_json::Value,
    invocations: usize,
    subtask_invocations: usize,
    billed_ms: u64,
    bytes: usize,
}

async fn run_batched(
    h: &fanout_tests::Harness,
    items: u64,
    batch: u64,
    work_ms: u64,
    steps: bool,
) -> BatchRun {
    let before = h.records().len();
    let started = std::time::Instant::now();
    let task = json!({ "items": items, "batch": batch, "work_ms": work_ms, "steps": steps });
    let response = h.run_json(&task).await;
    let wall = started.elapsed();
    assert_eq!(response.status, 200, "{:?}", response.body);
    let records: Vec<_> = h
        .records()
        .into_iter()
        .skip(before)
        .filter(|r| r.path.as_deref().is_some_and(|p| p.starts_with("/invoke/")))
        .collect();
    BatchRun {
        wall,
        answer: response.body,
        invocations: records.len(),
        subtask_invocations: records
            .iter()
            .filter(|r| r.path.as_deref() == Some("/invoke/worker/runSubtask"))
            .count(),
        billed_ms: records.iter().map(|r| r.billed_ms).sum(),
        bytes: records
            .iter()
            .map(|r| r.request_bytes + r.response_bytes)
            .sum(),
    }
}

async fn batched_stack(profile: &str) -> fanout_tests::Harness {
    let options =
        fanout::stack::StackOptions::new(fanout_tests::Mode::Lambda, batched_items_binary(profile));
    fanout_tests::Harness::start_with(options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_per_invocation_runs_many_items_in_a_few_invocations() {
    let h = batched_stack("debug").await;
    let (items, batch) = (40, 10);
    let run = run_batched(&h, items, batch, 50, false).await;
    assert_eq!(
        run.answer,
        json!({ "items": items, "subtasks": 4, "checksum": expected_checksum(items) })
    );
    // Four subtask invocations, each resumed once after its round is journaled: far fewer
    // than one per item.
    assert!(
        (4..=12).contains(&run.subtask_invocations),
        "{} subtask invocations for 4 batches of 10",
        run.subtask_invocations
    );
    let bad = h.run_json(&json!({ "items": 10, "batch": 0 })).await;
    assert_eq!(bad.status, 400, "{:?}", bad.body);
    h.stop().await;
}

/// `make bench-batches`: the same items, one per subtask invocation or K at once, on the
/// release build of `batched_items` behind the stand-in. BATCH_ITEMS (1000), BATCH_SIZES
/// (1,10,50) and BATCH_WORK_MS (200) set the conditions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: make bench-batches"]
async fn batch_sizes_measured() {
    let number = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let items = number("BATCH_ITEMS", 1000);
    let work_ms = number("BATCH_WORK_MS", 200);
    let sizes: Vec<u64> = std::env::var("BATCH_SIZES")
        .unwrap_or_else(|_| "1,10,50".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let h = batched_stack("release").await;
    // Warm-up with one instance per item, so no size pays the instances' cold starts.
    run_batched(&h, items, 1, work_ms, false).await;
    println!(
        "{:>6} {:>6} {:>8} {:>9} {:>8} {:>10} {:>12} {:>12} {:>10}",
        "items",
        "batch",
        "how",
        "subtasks",
        "wall s",
        "lambda inv",
        "inv/item",
        "billed/item",
        "B/item"
    );
    let mut rows = Vec::new();
    // Every size with run_all, then the largest but one with one step per item in sequence,
    // the way a job would write it without run_all.
    let baseline = sizes.iter().copied().filter(|&k| k > 1).min();
    let plan: Vec<(u64, bool)> = sizes
        .iter()
        .map(|&k| (k, false))
        .chain(baseline.map(|k| (k, true)))
        .collect();
    for (batch, steps) in plan {
        let run = run_batched(&h, items, batch, work_ms, steps).await;
        assert_eq!(run.answer["checksum"], json!(expected_checksum(items)));
        let per_item = |n: f64| n / items as f64;
        let how = if steps { "steps" } else { "run_all" };
        println!(
            "{:>6} {:>6} {:>8} {:>9} {:>8.2} {:>10} {:>12.3} {:>10.1}ms {:>10.0}",
            items,
            batch,
            how,
            run.answer["subtasks"],
            run.wall.as_secs_f64(),
            run.invocations,
            per_item(run.invocations as f64),
            per_item(run.billed_ms as f64),
            per_item(run.bytes as f64)
        );
        rows.push(json!({
            "items": items, "batch": batch, "workMs": work_ms, "how": how,
            "subtasks": run.answer["subtasks"], "wallS": run.wall.as_secs_f64(),
            "lambdaInvocations": run.invocations, "subtaskInvocations": run.subtask_invocations,
            "billedMs": run.billed_ms, "bytes": run.bytes,
        }));
    }
    let out =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-batches.json");
    std::fs::write(&out, serde_json::to_string_pretty(&rows).unwrap()).unwrap();
    println!("written to {}", out.display());
    h.stop().await;
}
