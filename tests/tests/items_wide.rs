//! `make bench-wide`: wide runs of items (default 100,000, `WIDE_N`) through the local Lambda
//! stand-in, one per batch size (`WIDE_BATCHES`, default 1,10,100), against the floor of the
//! same N (the same chores sent straight through the ingress, no coordinator, no cap). Prints,
//! per batch size, wall, wall / floor, Lambda invocations and bytes per item, coordinator
//! invocations and restate-server's peak RSS so far. A benchmark, not a CI test: `#[ignore]`d,
//! it asserts only that the results are exact.

use fanout::items::{LOCAL_BUCKET, LocalS3};
use fanout_tests::{Harness, Mode};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The floor: every chore sent at once through the ingress (64 requests in flight), then
/// awaited; no coordinator, no cap.
async fn floor(ingress: &str, n: usize) -> Duration {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3600))
        .build()
        .unwrap();
    let started = Instant::now();
    let permits = Arc::new(tokio::sync::Semaphore::new(64));
    let mut sends = Vec::with_capacity(n);
    for i in 1..=n {
        let (http, permits) = (http.clone(), Arc::clone(&permits));
        let url = format!("{ingress}/worker/runSubtask/send");
        sends.push(tokio::spawn(async move {
            let _permit = permits.acquire().await.unwrap();
            let sent: Value = http
                .post(url)
                .json(&json!({ "description": format!("f{i}") }))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            sent["invocationId"].as_str().unwrap().to_owned()
        }));
    }
    let mut attaches = Vec::with_capacity(n);
    for send in sends {
        let id = send.await.unwrap();
        let (http, permits) = (http.clone(), Arc::clone(&permits));
        let url = format!("{ingress}/restate/invocation/{id}/attach");
        attaches.push(tokio::spawn(async move {
            let _permit = permits.acquire().await.unwrap();
            let done = http.get(url).send().await.unwrap();
            assert!(done.status().is_success(), "floor subtask {id}");
        }));
    }
    for attach in attaches {
        attach.await.unwrap();
    }
    started.elapsed()
}

/// What one run of the sweep measured.
struct Measured {
    batch: usize,
    wall: Duration,
    invocations: usize,
    bytes: usize,
    coordinator: usize,
    coordinator_largest: usize,
    server_rss_kb: Option<u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: make bench-wide"]
async fn wide_run_of_items() {
    let n = env_or("WIDE_N", 100_000);
    let cap = env_or("WIDE_CAP", 1000);
    let max_ms = env_or("WIDE_MAX_SUBTASK_MS", 1000);
    let batches: Vec<usize> = std::env::var("WIDE_BATCHES")
        .unwrap_or_else(|_| "1,10,100".into())
        .split(',')
        .map(|k| {
            k.trim()
                .parse()
                .expect("WIDE_BATCHES: batch sizes, e.g. 1,10,100")
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let s3 = LocalS3::start(&dir.path().join("moto.log")).await.unwrap();
    let mut options = Harness::options(Mode::Lambda);
    for (name, value) in s3.env() {
        options = Harness::with_env(options, &name, &value);
    }
    options = Harness::with_env(options, "FANOUT_MAX_SUBTASK_MS", &max_ms.to_string());
    let h = Harness::start_with(options).await;
    let items: String = (1..=n)
        .map(|i| format!("{{\"description\":\"s{i}\"}}\n"))
        .collect();
    s3.client()
        .put_object()
        .bucket(LOCAL_BUCKET)
        .key("wide/items.jsonl")
        .body(items.into_bytes().into())
        .send()
        .await
        .unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(4 * 3600))
        .build()
        .unwrap();

    let mut measured = Vec::new();
    for batch in batches {
        let results_key = format!("wide/results-{batch}.jsonl");
        let before = h.records().len();
        let started = Instant::now();
        let response = http
            .post(format!("{}/worker/runItems", h.stack.ingress_url))
            .header("x-fanout-max-concurrency", cap.to_string())
            .header("x-fanout-batch-size", batch.to_string())
            .json(&json!({
                "items": format!("s3://{LOCAL_BUCKET}/wide/items.jsonl"),
                "results": format!("s3://{LOCAL_BUCKET}/{results_key}"),
            }))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        let wall = started.elapsed();
        assert_eq!(status, 200, "batch size {batch}: {body}");
        assert_eq!(body["succeeded"], n, "batch size {batch}: {body}");
        let records = h.records()[before..].to_vec();

        let object = s3
            .client()
            .get_object()
            .bucket(LOCAL_BUCKET)
            .key(&results_key)
            .send()
            .await
            .unwrap();
        let results = object.body.collect().await.unwrap().into_bytes();
        let mut lines = 0;
        for (i, line) in results
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .enumerate()
        {
            let expected = format!("{{\"description\":\"s{}: DONE\"}}", i + 1);
            assert_eq!(
                line,
                expected.as_bytes(),
                "batch size {batch}: line {}",
                i + 1
            );
            lines += 1;
        }
        assert_eq!(lines, n, "batch size {batch}");

        let coordinator: Vec<_> = records
            .iter()
            .filter(|r| r.path.as_deref() == Some("/invoke/worker/runItems"))
            .collect();
        assert!(coordinator.len() <= 3, "batch size {batch}");
        measured.push(Measured {
            batch,
            wall,
            invocations: records.len(),
            bytes: records
                .iter()
                .map(|r| r.request_bytes + r.response_bytes)
                .sum(),
            coordinator: coordinator.len(),
            coordinator_largest: coordinator
                .iter()
                .map(|r| r.request_body_bytes.unwrap_or(r.request_bytes))
                .max()
                .unwrap_or(0),
            server_rss_kb: h
                .stack
                .server
                .pid()
                .and_then(|pid| fanout_standin::process::status_kb(pid, "VmHWM")),
        });
        println!(
            "bench-wide: batch size {batch} done in {:.1} s",
            wall.as_secs_f64()
        );
    }
    // WIDE_FLOOR=0 skips the floor (it takes about as long again as the batch-size-1 run).
    let floor = match env_or("WIDE_FLOOR", 1) {
        0 => None,
        _ => Some(floor(&h.stack.ingress_url, n).await),
    };

    println!(
        "bench-wide: N = {n}, cap {cap} executor invocations, chores 0-{max_ms} ms (uniform), \
         Lambda mode (debug handler), floor {}",
        floor.map_or("not measured (WIDE_FLOOR=0)".into(), |f| format!(
            "{:.1} s (same N, every chore its own invocation, no coordinator, no cap)",
            f.as_secs_f64()
        ))
    );
    println!(
        "| batch size | wall (s) | wall / floor | Lambda invocations / item | bytes / item | \
         coordinator invocations | largest coordinator request (B) | server peak RSS so far (MiB) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for m in &measured {
        println!(
            "| {} | {:.1} | {} | {:.3} | {:.0} | {} | {} | {} |",
            m.batch,
            m.wall.as_secs_f64(),
            floor.map_or("-".into(), |f| format!(
                "{:.2}",
                m.wall.as_secs_f64() / f.as_secs_f64()
            )),
            m.invocations as f64 / n as f64,
            m.bytes as f64 / n as f64,
            m.coordinator,
            m.coordinator_largest,
            m.server_rss_kb
                .map_or("?".into(), |kb| format!("{:.0}", kb as f64 / 1024.0)),
        );
    }
    h.stop().await;
    s3.stop().await;
}
