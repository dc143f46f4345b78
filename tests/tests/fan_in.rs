//! The fan-in ledger on Lambda: the coordinator is invoked at most three times (start, the
//! split step's acknowledgement, fan-in) whatever the width and the completion order, where
//! awaiting in order costs a resume per straggling result; and its lanes keep the cap full:
//! a freed slot takes the next subtask at once, and the cap is never exceeded.

use fanout::commands::bench::{schedule, subtask_intervals};
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
    assert!(
        message.contains("\"ledger\", \"select-any\" or \"in-order\""),
        "{message}"
    );
    h.stop().await;
}

/// The most subtasks whose Lambda activity overlapped: each subtask spans from its first
/// invocation's start to its last invocation's end, as the stand-in metered them.
fn most_in_flight(records: &[fanout_standin::InvocationRecord]) -> usize {
    schedule(&subtask_intervals(records), usize::MAX).max_in_flight
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

async fn started_subtasks(h: &Harness) -> u64 {
    let rows = h
        .query("SELECT count(*) AS n FROM sys_invocation WHERE target = 'worker/runSubtask'")
        .await;
    rows[0]["n"].as_u64().unwrap()
}

/// How many subtasks completed before the one labelled `label` did (found by the invocation
/// id on its log line).
async fn subtasks_finished_before(h: &Harness, label: &str) -> u64 {
    let line = h
        .log_lines_with(&format!("Execution subtask finished: {label}"))
        .pop()
        .unwrap_or_else(|| panic!("no log line for {label}"));
    // Human lines carry it in brackets, JSON lines (Lambda) in a field.
    let start = line
        .find("inv_")
        .unwrap_or_else(|| panic!("no invocation id in {line}"));
    let id: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    let rows = h
        .query(&format!(
            "SELECT count(*) AS n FROM sys_invocation WHERE target = 'worker/runSubtask' \
             AND completed_at < (SELECT completed_at FROM sys_invocation WHERE id = '{id}')"
        ))
        .await;
    rows[0]["n"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freed_slot_starts_the_next_subtask_before_the_slowest_one_finishes() {
    // Cap 4: one lane of 4. The first subtask takes 8 s, the 19 others 20-100 ms. Slots that
    // waited for the slowest of their group (waves), or for the earliest subtask (an in-order
    // window), would hold the 16 after the first four until it finished: 3 would finish
    // before it. The margin (19 short ones on 3 slots in well under 8 s) holds on a loaded
    // machine.
    for mode in [Mode::Lambda, Mode::Http] {
        let h = Harness::start(mode).await;
        let mut items = vec!["slow@8000".to_owned()];
        items.extend((2..=20).map(|i| format!("s{i}@{}", 20 + (i * 37) % 5 * 20)));
        let expected: Vec<String> = items.iter().map(|i| format!("{i}: DONE")).collect();
        let response = h
            .run_with(&items.join(","), &[("x-fanout-max-concurrency", "4")])
            .await;
        assert_eq!(response.status, 200, "{mode:?}: {}", response.message());
        assert_eq!(
            response.body,
            json!({ "description": expected.join(",") }),
            "{mode:?}: every result, in input order"
        );
        let finished_before_slow = subtasks_finished_before(&h, "slow@8000").await;
        assert_eq!(
            finished_before_slow, 19,
            "{mode:?}: every other subtask ran beside the slow one"
        );
        assert_eq!(started_subtasks(&h).await, 20, "{mode:?}");
        if mode == Mode::Lambda {
            let records = h.records();
            let timeline = schedule(&subtask_intervals(&records), 4);
            assert!(timeline.max_in_flight <= 4, "{timeline:?}");
            let coordinator = records
                .iter()
                .filter(|r| r.path.as_deref() == Some(COORDINATOR_PATH))
                .count();
            assert!(coordinator <= 3, "{coordinator} coordinator invocations");
        }
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_hand_over_and_claim_without_losing_or_repeating_a_subtask() {
    // 300 subtasks under a cap of 100: two lanes of 50, each handing over after 64 calls and
    // claiming in shrinking grants; a jumbled completion order.
    let h = Harness::start(Mode::Lambda).await;
    let items: Vec<String> = (1..=300)
        .map(|i| format!("s{i}@{}", (i * 37) % 11 * 20))
        .collect();
    let expected: Vec<String> = items.iter().map(|i| format!("{i}: DONE")).collect();
    let before = h.records().len();
    let response = h
        .run_with(&items.join(","), &[("x-fanout-max-concurrency", "100")])
        .await;
    assert_eq!(response.status, 200, "{}", response.message());
    assert_eq!(response.body, json!({ "description": expected.join(",") }));
    let records = h.records();
    let run = &records[before..];
    let lanes = run
        .iter()
        .filter(|r| r.path.as_deref() == Some("/invoke/worker/runShard"))
        .map(|r| r.restate_invocation_id.clone())
        .collect::<std::collections::HashSet<_>>();
    assert!(
        lanes.len() >= 4,
        "two lanes over 300 subtasks hand over at least once each: {} lane invocations",
        lanes.len()
    );
    // Lane wakes replay their journals: the stack's restate-server compresses any request above
    // 2 KiB (its default only does so above 4 MiB), and a subtask's own small ones stay plain.
    let lane_journals: Vec<_> = run
        .iter()
        .filter(|r| r.path.as_deref() == Some("/invoke/worker/runShard"))
        .filter(|r| r.request_body_bytes.unwrap_or(0) > 2048)
        .collect();
    assert!(!lane_journals.is_empty(), "no lane journal above 2 KiB");
    for wake in &lane_journals {
        assert_eq!(wake.request_encoding.as_deref(), Some("zstd"), "{wake:?}");
        assert!(
            wake.request_bytes < wake.request_body_bytes.unwrap(),
            "{wake:?}"
        );
    }
    assert!(
        run.iter()
            .filter(|r| r.path.as_deref() == Some("/invoke/worker/runSubtask"))
            .all(|r| r.request_encoding.is_none()),
        "a subtask's request is too small to compress"
    );
    let timeline = schedule(&subtask_intervals(run), 100);
    assert!(timeline.max_in_flight <= 100, "{timeline:?}");
    assert_eq!(subtask_intervals(run).len(), 300, "each subtask ran once");
    for i in [1, 150, 300] {
        let finished = format!("Execution subtask finished: s{i}@");
        assert_eq!(h.log_lines_with(&finished).len(), 1, "{finished}");
    }
    // `fanout status` puts a lane's calls back in input order.
    let id = h
        .query(
            "SELECT id FROM sys_invocation WHERE target = 'worker/run' \
             ORDER BY created_at DESC LIMIT 1",
        )
        .await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = h.fanout(&["status", &id, "--output", "json"]).await;
    let subtasks = status.json()["subtasks"].as_array().unwrap().clone();
    let shown: Vec<&str> = subtasks
        .iter()
        .map(|s| s["description"].as_str().unwrap())
        .collect();
    let labels: Vec<&str> = items.iter().map(String::as_str).collect();
    assert_eq!(shown, labels, "status lists the subtasks in input order");
    h.stop().await;
}
