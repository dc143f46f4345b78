//! What only Lambda mode has: compression, the payload-limit guard, events that are not from
//! Restate, throttling, crashed instances and the suspended coordinator, all through the real
//! restate-server and the real bootstrap behind the local Lambda stand-in.

use fanout::admin::sql_string;
use fanout::report::{COORDINATOR_PATH, SUBTASK_PATH};
use fanout_handler::chores::{Chores, Description};
use fanout_handler::plan::{self, Estimate, PayloadBudget};
use fanout_handler::worker::split_and_plan;
use fanout_standin::InvocationRecord;
use fanout_tests::{Harness, Mode, numbered_results, numbered_subtasks};
use serde_json::{Value, json};
use std::time::Duration;

const LIMIT: usize = 6 * 1024 * 1024;

fn coordinator(records: &[InvocationRecord]) -> Vec<&InvocationRecord> {
    records
        .iter()
        .filter(|r| r.path.as_deref() == Some(COORDINATOR_PATH))
        .collect()
}

/// A description of `n` subtasks of about `width` bytes each.
fn wide_subtasks(n: usize, width: usize) -> (String, String) {
    let items: Vec<String> = (1..=n).map(|i| format!("{i:0width$}")).collect();
    let results: Vec<String> = items.iter().map(|i| format!("{i}: DONE")).collect();
    (items.join(","), results.join(","))
}

/// `n` subtasks of `width` pseudo-random characters (xorshift over 75 printable ASCII
/// characters, no comma, no backslash): text that zstd hardly compresses on its own.
fn random_subtasks(n: usize, width: usize) -> Vec<String> {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    (0..n)
        .map(|_| {
            let mut item = String::with_capacity(width);
            while item.len() < width {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                match char::from(b'0' + (x % 75) as u8) {
                    '\\' => {}
                    c => item.push(c),
                }
            }
            item
        })
        .collect()
}

/// The planner's estimate for a chores task of these subtasks, as the worker makes it.
fn estimate(items: &[String]) -> Estimate {
    let subtasks: Vec<Description> = items
        .iter()
        .map(|description| Description {
            description: description.clone(),
        })
        .collect();
    plan::estimate_for(&PayloadBudget::LAMBDA, &Chores::default(), &subtasks)
}

/// Whether the worker on Lambda accepts the first `n` of `items` as one task.
fn accepted(items: &[String], n: usize) -> bool {
    let task = Description {
        description: items[..n].join(","),
    };
    split_and_plan(&Chores::default(), task, Some(&PayloadBudget::LAMBDA)).is_ok()
}

/// The largest `n` for which the worker accepts the first `n` of `items`.
fn largest_accepted(items: &[String]) -> usize {
    assert!(accepted(items, 1));
    let (mut fits, mut refused) = (1, items.len() + 1);
    while refused - fits > 1 {
        let n = (fits + refused) / 2;
        if accepted(items, n) {
            fits = n;
        } else {
            refused = n;
        }
    }
    fits
}

/// The largest request the stand-in metered on the coordinator's path.
fn largest_coordinator_request(records: &[InvocationRecord]) -> usize {
    coordinator(records)
        .iter()
        .map(|r| r.request_bytes)
        .max()
        .expect("the coordinator ran on Lambda")
}

fn assert_close(estimated: usize, actual: usize, what: &str) {
    let ratio = estimated as f64 / actual as f64;
    eprintln!(
        "{what}: estimated {estimated} bytes, largest request {actual} bytes, ratio {ratio:.3}"
    );
    assert!(
        (1.0 / 1.3..=1.3).contains(&ratio),
        "{what}: the planner estimated {estimated} bytes, the largest request was {actual} \
         (ratio {ratio:.3})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_journal_above_the_payload_limit_completes_compressed() {
    let options = Harness::with_env(Harness::options(Mode::Lambda), "FANOUT_MAX_SUBTASK_MS", "0");
    // Half the default cap: the point is the journal, and 1,000 instance processes starting
    // at once on a loaded two-core machine can overrun the stand-in's init timeout.
    let options = Harness::with_env(options, "FANOUT_MAX_CONCURRENCY", "500");
    let h = Harness::start_with(options).await;
    // 2,000 subtasks of 1,000 bytes: the coordinator's journal (input, split result, 2,000
    // calls and their results) ends near 11 MB, far above Lambda's 6 MB.
    let (description, expected) = wide_subtasks(2_000, 1_000);
    let response = h.run(&description).await;
    assert_eq!(response.status, 200, "{}", response.message());
    assert_eq!(response.body, json!({ "description": expected }));

    let records = h.records();
    let biggest = coordinator(&records)
        .into_iter()
        .max_by_key(|r| r.request_body_bytes.unwrap_or(0))
        .expect("the coordinator ran on Lambda")
        .clone();
    let raw = biggest.request_body_bytes.unwrap();
    assert!(
        raw > LIMIT,
        "the journal reached {raw} bytes raw, not above {LIMIT}"
    );
    assert_eq!(
        biggest.request_encoding.as_deref(),
        Some("zstd"),
        "restate-server compressed the request: {biggest:?}"
    );
    assert!(
        biggest.request_bytes < LIMIT,
        "what Lambda received ({} bytes) fits its limit",
        biggest.request_bytes
    );
    // 2,000 subtasks at once can meet the function's 1,000-execution limit; those 429s are
    // retried by Restate. Nothing else may go wrong.
    let failed: Vec<_> = records
        .iter()
        .filter(|r| r.outcome != "ok" && r.outcome != "throttled")
        .collect();
    assert!(failed.is_empty(), "Lambda errors on the way: {failed:?}");
    // The adapter compressed the big responses it sent back too.
    assert!(
        coordinator(&records)
            .iter()
            .any(|r| r.response_encoding.as_deref() == Some("zstd")),
        "no coordinator response was compressed"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_that_cannot_fit_is_refused_before_any_subtask_starts() {
    let h = Harness::start(Mode::Lambda).await;
    // 1,900 subtasks of 1,100 pseudo-random bytes: about 8.5 MB of journal whose sections
    // are too far apart for zstd to find the subtasks again, so it stays far above Lambda's
    // limit compressed.
    let items = random_subtasks(1_900, 1_100);
    let response = h.run(&items.join(",")).await;
    assert_eq!(response.status, 413, "{:?}", response.message());
    let message = response.message();
    assert!(
        message.contains("a fan-out of 1900 subtasks does not fit on Lambda")
            && message.contains("nothing was started"),
        "{message}"
    );
    let records = h.records();
    // The journaled split step takes one round trip on Lambda (run, then its acknowledgement).
    assert!(
        coordinator(&records).len() <= 2,
        "refused at the split step: {records:#?}"
    );
    assert!(
        !records
            .iter()
            .any(|r| r.path.as_deref() == Some(SUBTASK_PATH)),
        "no subtask started"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_random_fan_out_the_planner_accepts_completes_under_the_limit() {
    // Random text in subtasks of 20,000 bytes (wide, so that a run takes few subtasks), as
    // many as a 2 MiB description holds: the planner refuses the last few, whose journal
    // sections grow past what zstd can look back to.
    const WIDTH: usize = 20_000;
    let pool = random_subtasks((2 * 1024 * 1024 + 1) / (WIDTH + 1), WIDTH);
    let n = largest_accepted(&pool);
    assert!(
        n < pool.len(),
        "the planner, not the description limit, bounds the width ({n} of {})",
        pool.len()
    );
    let items = &pool[..n];
    let expected: Vec<String> = items.iter().map(|i| format!("{i}: DONE")).collect();

    let options = Harness::with_env(Harness::options(Mode::Lambda), "FANOUT_MAX_SUBTASK_MS", "0");
    let h = Harness::start_with(options).await;
    let response = h.run(&items.join(",")).await;
    assert_eq!(response.status, 200, "{}", response.message());
    assert_eq!(response.body, json!({ "description": expected.join(",") }));
    let records = h.records();
    // The stand-in refuses requests above 6 MB as Lambda does; none came near.
    assert!(
        records.iter().all(|r| r.outcome != "too_large"),
        "a request went over Lambda's limit: {:?}",
        records.iter().find(|r| r.outcome == "too_large")
    );
    let largest = largest_coordinator_request(&records);
    assert!(largest <= LIMIT, "{largest}");
    assert_close(
        estimate(items).request_bytes,
        largest,
        "random text at the largest width",
    );

    // One subtask more is refused up front, with the numbers.
    let subtasks_before = records
        .iter()
        .filter(|r| r.path.as_deref() == Some(SUBTASK_PATH))
        .count();
    let response = h.run(&pool[..n + 1].join(",")).await;
    assert_eq!(response.status, 413, "{}", response.message());
    let message = response.message();
    assert!(
        message.contains(&format!(
            "a fan-out of {} subtasks does not fit on Lambda",
            n + 1
        )) && message.contains("nothing was started"),
        "{message}"
    );
    let subtasks_after = h
        .records()
        .iter()
        .filter(|r| r.path.as_deref() == Some(SUBTASK_PATH))
        .count();
    assert_eq!(subtasks_after, subtasks_before, "no subtask started");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_planner_estimates_the_largest_request_for_repetitive_and_random_text() {
    let mut options =
        Harness::with_env(Harness::options(Mode::Lambda), "FANOUT_MAX_SUBTASK_MS", "0");
    // The planner sizes requests for a server on Restate's default threshold, the one it cannot
    // see past: a lower one (the stack's 2 KiB) only compresses more of them, so what it accepts
    // still fits, but its estimate is then an upper bound rather than close.
    let threshold = PayloadBudget::LAMBDA.compression_threshold;
    options.server_env.push((
        "RESTATE_WORKER__INVOKER__REQUEST_COMPRESSION_THRESHOLD".into(),
        format!("{} MiB", threshold / (1024 * 1024)),
    ));
    let h = Harness::start_with(options).await;
    // Repetitive text: 6.4 MB of journal that compresses to almost nothing, so the largest
    // request is the split step's acknowledgement (input and split result), sent as is.
    // Random text whose journal sections are about 1 MB: the largest request is that one
    // too, while zstd still finds the subtasks again in the final journal (the case:
    // 1,000 × 1,080 bytes ran, 1,000 × 1,100 bytes were refused).
    let cases = [
        (
            "repetitive text",
            (1..=80).map(|i| format!("{i:020000}")).collect::<Vec<_>>(),
        ),
        ("random text", random_subtasks(56, 20_000)),
    ];
    for (what, items) in cases {
        let before = h.records().len();
        let expected: Vec<String> = items.iter().map(|i| format!("{i}: DONE")).collect();
        let response = h.run(&items.join(",")).await;
        assert_eq!(response.status, 200, "{what}: {}", response.message());
        assert_eq!(
            response.body,
            json!({ "description": expected.join(",") }),
            "{what}"
        );
        let records = h.records();
        assert_close(
            estimate(&items).request_bytes,
            largest_coordinator_request(&records[before..]),
            what,
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_over_the_limit_after_compression_fails_terminally_once() {
    let mut options =
        Harness::with_env(Harness::options(Mode::Lambda), "FANOUT_MAX_SUBTASK_MS", "0");
    // A small limit stands in for 6 MB: 2,000 calls make a response of about 150 KB, which
    // zstd shrinks but not below 4 KB.
    options = Harness::with_env(options, "FANOUT_LAMBDA_PAYLOAD_LIMIT", "4096");
    let h = Harness::start_with(options).await;
    let response = h.run(&numbered_subtasks(2_000)).await;
    assert_eq!(response.status, 413, "{:?}", response.body);
    let message = response.message();
    assert!(
        message.contains("after compression") && message.contains("payload limit of 4096 bytes"),
        "{message}"
    );

    let records = h.records();
    assert_eq!(
        coordinator(&records).len(),
        1,
        "invoked once, never retried"
    );
    assert!(
        !records
            .iter()
            .any(|r| r.path.as_deref() == Some(SUBTASK_PATH)),
        "no subtask started for a fan-out that could not be recorded"
    );
    let retried = h
        .query("SELECT id FROM sys_invocation WHERE retry_count > 0")
        .await;
    assert!(retried.is_empty(), "{retried:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_not_from_restate_get_a_400_and_the_instance_lives_on() {
    let h = Harness::start(Mode::Lambda).await;
    let cases = [
        (json!({"description": "a,b"}), "missing field"),
        (json!([1, 2, 3]), "not a JSON object"),
        (
            json!({"path": "/invoke/worker/run", "httpMethod": "POST", "body": "***", "isBase64Encoded": true}),
            "not valid base64",
        ),
        (
            json!({"path": "/discover", "httpMethod": "GET", "headers": {"content-encoding": "zstd"}, "body": "AAAA", "isBase64Encoded": true}),
            "not valid zstd",
        ),
    ];
    let before = h.records().len();
    for (event, expected) in &cases {
        let (status, answer) = h.invoke_function_directly(event).await;
        assert_eq!(status, 200, "Lambda delivered the answer: {answer}");
        assert_eq!(answer["statusCode"], json!(400), "{event} -> {answer}");
        let text = answer["body"].as_str().unwrap_or_default();
        assert!(text.contains(expected), "{event} -> {text}");
    }
    // Bytes that are not UTF-8: lambda_runtime alone stops the runtime on these.
    let not_utf8: &[u8] = b"{\"path\":\"\xff\",\"httpMethod\":\"POST\"}";
    let raw = reqwest::Client::new()
        .post(format!(
            "{}/2015-03-31/functions/fanout/invocations",
            h.standin().endpoint_url()
        ))
        .body(not_utf8.to_vec())
        .send()
        .await
        .expect("the stand-in answers");
    assert_eq!(raw.status(), 200, "Lambda delivered the answer");
    let answer: Value = raw.json().await.expect("a JSON answer");
    assert_eq!(answer["statusCode"], json!(400), "{answer}");
    let text = answer["body"].as_str().unwrap_or_default();
    assert!(text.contains("not valid UTF-8"), "{text}");
    let cases = cases.len() + 1;
    // The same warm instance still serves Restate.
    let response = h.run("after,bad,events").await;
    assert_eq!(response.status, 200, "{}", response.message());
    let records = h.records();
    assert!(records.iter().all(|r| r.outcome == "ok"), "{records:#?}");
    let direct: Vec<u64> = records[before..before + cases]
        .iter()
        .map(|r| r.instance)
        .collect();
    assert!(
        records[before + cases..]
            .iter()
            .any(|r| direct.contains(&r.instance) && !r.cold),
        "an instance that answered a bad event went on to serve Restate warm"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_absorbed_and_every_result_arrives_exactly_once() {
    let mut options = Harness::options(Mode::Lambda);
    options.lambda.concurrency_limit = 2;
    let h = Harness::start_with(options).await;
    let n = 30;
    let response = h.run(&numbered_subtasks(n)).await;
    assert_eq!(response.status, 200, "{}", response.message());
    assert_eq!(response.body, json!({"description": numbered_results(n)}));

    let records = h.records();
    let throttled = records.iter().filter(|r| r.outcome == "throttled").count();
    assert!(
        throttled > 0,
        "a limit of 2 under 30 subtasks throttled nothing"
    );
    let subtasks = h
        .query("SELECT count(*) AS n FROM sys_invocation WHERE target = 'worker/runSubtask'")
        .await;
    assert_eq!(subtasks[0]["n"], json!(n), "one invocation per subtask");
    for i in 1..=n {
        let finished = format!("Execution subtask finished: s{i}\"");
        assert_eq!(h.log_lines_with(&finished).len(), 1, "{finished}");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_mid_subtask_is_retried_and_the_run_completes() {
    // Each subtask works 1.5 s inside a journaled step, so its instance is busy long enough
    // to be killed in the middle.
    let options = Harness::with_env(
        Harness::options(Mode::Lambda),
        "FANOUT_SUBTASK_WORK_MS",
        "1500",
    );
    let h = Harness::start_with(options).await;
    let run = {
        let ingress = h.ingress.clone();
        tokio::spawn(async move {
            ingress
                .run(&json!({"description": "a,b,c"}), None)
                .await
                .unwrap()
        })
    };
    let kill_url = format!(
        "{}/fanout/instances/kill?function=fanout",
        h.standin().endpoint_url()
    );
    let http = reqwest::Client::new();
    let mut killed = 0;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        // Kill only once a subtask is in its work step: its instance is then busy for 1.5 s.
        if h.log_lines_with("Started executing subtask").len() < 3 {
            continue;
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
        let answer: Value = http
            .post(&kill_url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        killed = answer["killed"].as_u64().unwrap();
        if killed > 0 {
            break;
        }
    }
    assert!(killed > 0, "no busy instance was found to kill");

    let response = run.await.unwrap();
    assert_eq!(response.status, 200, "{}", response.message());
    assert_eq!(
        response.body,
        json!({"description": "a: DONE,b: DONE,c: DONE"})
    );
    let records = h.records();
    let crashed = records
        .iter()
        .filter(|r| r.outcome == "function_error:Runtime.ExitError")
        .count();
    assert_eq!(
        crashed as u64, killed,
        "each kill surfaced as a function error"
    );
    // The killed instance was inside a subtask's work step, so that subtask's result can only
    // come from Restate retrying it; each finished exactly once.
    for chore in ["a", "b", "c"] {
        let finished = format!("Execution subtask finished: {chore}\"");
        assert_eq!(h.log_lines_with(&finished).len(), 1, "{finished}");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_returns_while_its_subtasks_still_run() {
    let options = Harness::with_env(
        Harness::options(Mode::Lambda),
        "FANOUT_SUBTASK_WORK_MS",
        "1000",
    );
    let h = Harness::start_with(options).await;
    let response = h.run("a,b,c,d").await;
    assert_eq!(response.status, 200, "{}", response.message());

    let records = h.records();
    let ends = |r: &InvocationRecord| r.started_at_ms as f64 + r.duration_ms;
    let first_coordinator = coordinator(&records)
        .into_iter()
        .min_by_key(|r| r.started_at_ms)
        .unwrap()
        .clone();
    let last_subtask_end = records
        .iter()
        .filter(|r| r.path.as_deref() == Some(SUBTASK_PATH))
        .map(ends)
        .fold(0.0, f64::max);
    assert!(
        ends(&first_coordinator) + 900.0 < last_subtask_end,
        "the coordinator's first invocation returned at {} but the subtasks worked until {}",
        ends(&first_coordinator),
        last_subtask_end
    );
    // Suspended, it was billed for a sliver of the run.
    let coordinator_billed: u64 = coordinator(&records).iter().map(|r| r.billed_ms).sum();
    let subtask_billed: u64 = records
        .iter()
        .filter(|r| r.path.as_deref() == Some(SUBTASK_PATH))
        .map(|r| r.billed_ms)
        .sum();
    assert!(
        coordinator_billed * 10 < subtask_billed,
        "coordinator billed {coordinator_billed} ms, subtasks {subtask_billed} ms"
    );
    let id = h
        .query("SELECT id FROM sys_invocation WHERE target = 'worker/run'")
        .await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = h
        .query(&format!(
            "SELECT status FROM sys_invocation WHERE id = {}",
            sql_string(&id)
        ))
        .await;
    assert_eq!(status[0]["status"], json!("completed"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_bench_measures_every_width_from_the_metering() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("bench.json");
    let svg_path = dir.path().join("bench.svg");
    let handler = fanout_tests::handler_binary();
    let run = fanout_tests::fanout_with_env(
        &[
            "bench",
            "--sizes",
            "2,5",
            "--max-subtask-ms",
            "100",
            "--handler",
            handler.to_str().unwrap(),
            "--json",
            json_path.to_str().unwrap(),
            "--orders",
            "random,decreasing",
            "--strategies",
            "ledger",
            "--caps",
            "n",
            "--plot",
            svg_path.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "two widths in two orders");
    let expected = [
        (2u64, "random"),
        (2, "decreasing"),
        (5, "random"),
        (5, "decreasing"),
    ];
    for (row, (n, order)) in rows.iter().zip(expected) {
        assert_eq!(row["subtasks"], json!(n));
        assert_eq!(row["order"], json!(order));
        assert!(
            row["floor_wall_ms"].as_u64().is_some(),
            "the floor was measured: {row}"
        );
        // Each subtask sleeps, so it is invoked at least once to start and once to finish
        // unless its sleep was 0 ms.
        let subtask_invocations = row["subtask_invocations"].as_u64().unwrap();
        assert!((n..=2 * n + 2).contains(&subtask_invocations), "{row}");
        assert!(
            row["coordinator_invocations"].as_u64().unwrap() >= 2,
            "{row}"
        );
        assert!(row["bytes_to_coordinator"].as_u64().unwrap() > 0, "{row}");
        // The subtasks' own timeline: the cap (the width) held, an ideal schedule to compare.
        assert_eq!(row["cap"], json!(n), "{row}");
        assert!(row["max_in_flight"].as_u64().unwrap() <= n, "{row}");
        assert!(row["ideal_ms"].as_f64().unwrap() > 0.0, "{row}");
        assert_eq!(row["spread"], json!("0-100ms"), "{row}");
        // Memory of restate-server during the run, and of the instances that served it.
        assert!(row["server_rss_kb"].as_u64().unwrap() > 1024, "{row}");
        assert!(row["instance_rss_kb"].as_u64().unwrap() > 0, "{row}");
    }
    assert!(
        report["server_peak_rss_kb"].as_u64().unwrap()
            >= rows[0]["server_rss_kb"].as_u64().unwrap(),
        "{report}"
    );
    assert!(run.stdout.contains("×ideal"), "{run:?}");
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    // Wall over the floor and coordinator invocations: one ledger line each (no cap < N).
    assert!(
        svg.starts_with("<svg") && svg.matches("<polyline").count() == 2,
        "{svg}"
    );
}
