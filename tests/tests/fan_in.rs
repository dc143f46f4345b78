//! The fan-in ledger on Lambda: the coordinator is invoked at most three times (start, the
//! split step's acknowledgement, fan-in) whatever the width and the completion order, where
//! awaiting in order costs a resume per straggling result.

use fanout::report::COORDINATOR_PATH;
use fanout_tests::{Harness, Mode};
use serde_json::{Value, json};

/// `n` subtasks whose results arrive over about two seconds, in index order or reversed.
fn spread(n: usize, reversed: bool) -> (String, String) {
    let at = |i: usize| 2_000 * i / n;
    let items: Vec<String> = (1..=n)
        .map(|i| format!("s{i}@{}", if reversed { at(n - i) } else { at(i) }))
        .collect();
    let results: Vec<String> = items.iter().map(|i| format!("{i}: DONE")).collect();
    (items.join(","), results.join(","))
}

/// Runs `description` with the fan-in `strategy`; returns the coordinator's Lambda
/// invocations as (request bytes, decoded journal bytes).
async fn run(
    h: &Harness,
    strategy: &str,
    description: &str,
    expected: &str,
) -> Vec<(usize, usize)> {
    let before = h.records().len();
    let response = reqwest::Client::new()
        .post(format!("{}/worker/run", h.stack.ingress_url))
        .header("x-fanout-fan-in", strategy)
        .json(&json!({ "description": description }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({ "description": expected }));
    h.records()[before..]
        .iter()
        .filter(|r| r.path.as_deref() == Some(COORDINATOR_PATH))
        .map(|r| (r.request_bytes, r.request_body_bytes.unwrap_or(0)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_wakes_at_most_three_times_in_any_completion_order() {
    let h = Harness::start(Mode::Lambda).await;
    for reversed in [false, true] {
        let (description, expected) = spread(200, reversed);
        let coordinator = run(&h, "ledger", &description, &expected).await;
        assert!(
            (2..=3).contains(&coordinator.len()),
            "ledger, reversed={reversed}: the coordinator was invoked {} times",
            coordinator.len()
        );
        // What Restate shipped to the coordinator in all its invocations, against the final
        // journal it shipped last.
        let shipped: usize = coordinator.iter().map(|(_, body)| body).sum();
        let final_journal = coordinator.iter().map(|(_, body)| *body).max().unwrap();
        assert!(
            shipped <= 3 * final_journal,
            "{shipped} bytes shipped for a final journal of {final_journal}"
        );
    }
    // The same spread-out run awaiting in order: results trickling in index order wake the
    // coordinator again and again. This is what the ledger saves.
    let (description, expected) = spread(200, false);
    let in_order = run(&h, "in-order", &description, &expected).await;
    assert!(
        in_order.len() > 3,
        "awaiting in order took only {} invocations; the test no longer tells the strategies apart",
        in_order.len()
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_strategy_is_refused_with_the_choices() {
    let h = Harness::start(Mode::Http).await;
    let response = reqwest::Client::new()
        .post(format!("{}/worker/run", h.stack.ingress_url))
        .header("x-fanout-fan-in", "fastest")
        .json(&json!({ "description": "a,b" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("\"ledger\" or \"in-order\""), "{message}");
    h.stop().await;
}

/// The most subtasks whose Lambda activity overlapped: each subtask spans from its first
/// invocation's start to its last invocation's end, as the stand-in metered them.
fn most_in_flight(records: &[fanout::standin::InvocationRecord]) -> usize {
    let mut spans: std::collections::HashMap<&str, (f64, f64)> = Default::default();
    for r in records {
        if r.path.as_deref() != Some(fanout::report::SUBTASK_PATH) || r.outcome != "ok" {
            continue;
        }
        let Some(id) = r.restate_invocation_id.as_deref() else {
            continue;
        };
        let (start, end) = (
            r.started_at_ms as f64,
            r.started_at_ms as f64 + r.duration_ms,
        );
        let span = spans.entry(id).or_insert((start, end));
        span.0 = span.0.min(start);
        span.1 = span.1.max(end);
    }
    let mut edges: Vec<(f64, i32)> = spans
        .values()
        .flat_map(|&(start, end)| [(start, 1), (end, -1)])
        .collect();
    // Ends before starts at the same instant: touching spans do not overlap.
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut most) = (0, 0);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    most as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_cap_is_never_exceeded() {
    let h = Harness::start(Mode::Lambda).await;
    for (strategy, cap) in [("ledger", 5usize), ("ledger", 40), ("in-order", 3)] {
        let before = h.records().len();
        // 60 subtasks, each busy on its instance for a while, results in a jumbled order.
        let items: Vec<String> = (1..=60)
            .map(|i| format!("s{i}@{}", (i * 37) % 7 * 40))
            .collect();
        let response = reqwest::Client::new()
            .post(format!("{}/worker/run", h.stack.ingress_url))
            .header("x-fanout-fan-in", strategy)
            .header("x-fanout-max-concurrency", cap.to_string())
            .json(&json!({ "description": items.join(",") }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{strategy} {cap}");
        let records = h.records();
        let most = most_in_flight(&records[before..]);
        assert!(
            most <= cap,
            "{strategy}: {most} subtasks in flight with a cap of {cap}"
        );
        assert!(
            most >= 2,
            "{strategy}: the run never overlapped subtasks ({most})"
        );
        let subtasks = records[before..]
            .iter()
            .filter_map(|r| {
                r.restate_invocation_id
                    .as_deref()
                    .filter(|_| r.path.as_deref() == Some(fanout::report::SUBTASK_PATH))
            })
            .collect::<std::collections::HashSet<_>>();
        assert_eq!(subtasks.len(), 60, "every subtask ran once");
    }
    // Impossible caps are refused before anything starts.
    for bad in ["0", "-3", "many"] {
        let response = reqwest::Client::new()
            .post(format!("{}/worker/run", h.stack.ingress_url))
            .header("x-fanout-max-concurrency", bad)
            .json(&json!({ "description": "a,b" }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{bad}");
        let body: Value = response.json().await.unwrap();
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("max concurrency"),
            "{body}"
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_invoke_passes_the_cap_and_the_strategy() {
    let h = Harness::start(Mode::Lambda).await;
    let before = h.records().len();
    let items: Vec<String> = (1..=12)
        .map(|i| format!("s{i}@{}", (i * 53) % 5 * 50))
        .collect();
    let run = h
        .fanout(&[
            "invoke",
            &items.join(","),
            "--max-concurrency",
            "2",
            "--fan-in",
            "ledger",
            "--output",
            "json",
            "--progress",
            "none",
        ])
        .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.json()["outcome"], "succeeded", "{run:?}");
    let most = most_in_flight(&h.records()[before..]);
    assert!(
        (1..=2).contains(&most),
        "{most} in flight with --max-concurrency 2"
    );

    let zero = h.fanout(&["invoke", "a,b", "--max-concurrency", "0"]).await;
    assert_ne!(zero.code, Some(0));
    assert!(zero.stderr.contains("--max-concurrency"), "{zero:?}");
    let unknown = h.fanout(&["invoke", "a,b", "--fan-in", "fastest"]).await;
    assert_ne!(unknown.code, Some(0));
    assert!(unknown.stderr.contains("ledger"), "{unknown:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subtask_killed_at_its_retry_limit_fails_the_run_naming_it() {
    let mut options = Harness::options(Mode::Http);
    for (name, value) in [
        ("FANOUT_FLAKY_MS", "600000"),
        ("FANOUT_SUBTASK_MAX_ATTEMPTS", "2"),
        ("FANOUT_SUBTASK_RETRY_INITIAL_MS", "100"),
        ("FANOUT_SUBTASK_AT_MAX_ATTEMPTS", "kill"),
    ] {
        options = Harness::with_env(options, name, value);
    }
    let h = Harness::start_with(options).await;
    let response = h.run("a,flaky b,c").await;
    assert_ne!(response.status, 200, "{:?}", response.body);
    let message = response.message();
    assert!(
        message.contains("subtask 2 of 3 (flaky b) failed"),
        "{message}"
    );
    // The flaky subtask was killed at its limit; the others still in flight were cancelled
    // (fail-fast), and none of them succeeded.
    let failures = h
        .query(
            "SELECT completion_failure AS failure FROM sys_invocation \
             WHERE target = 'worker/runSubtask' AND completion_result = 'failure'",
        )
        .await;
    let cancelled = |row: &&Value| row["failure"].as_str().unwrap_or("").contains("cancel");
    assert_eq!(
        failures.iter().filter(|row| !cancelled(row)).count(),
        1,
        "only the flaky subtask failed on its own: {failures:?}"
    );
    h.stop().await;
}
