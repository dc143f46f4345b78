//! Partial failure: fail-fast (the default) fails the run at the first subtask that fails for
//! good and cancels what is left; a tolerant policy (`tolerate:N`, `tolerate:P%`,
//! `min-successful:N`) lets the run aggregate every outcome, failures included.
//!
//! A chore named `flaky…` fails while `FANOUT_FLAKY_MS` lasts; with one attempt and
//! kill-at-limit, Restate gives up on it at once, so it fails for good.

use fanout::exit;
use fanout::stack::HandlerMode;
use fanout_tests::{Harness, Mode};
use serde_json::{Value, json};
use std::time::Duration;

const POLICY: &str = "x-fanout-failure-policy";

/// Options whose `flaky…` chores fail for good at once.
fn flaky_options(mode: HandlerMode) -> fanout::stack::StackOptions {
    let mut options = Harness::options(mode);
    for (name, value) in [
        ("FANOUT_FLAKY_MS", "600000"),
        ("FANOUT_SUBTASK_MAX_ATTEMPTS", "1"),
        ("FANOUT_SUBTASK_AT_MAX_ATTEMPTS", "kill"),
    ] {
        options = Harness::with_env(options, name, value);
    }
    options
}

async fn start(mode: HandlerMode) -> Harness {
    Harness::start_with(flaky_options(mode)).await
}

/// 70 subtasks over three ledger lanes; those at `flaky` (1-based) fail for good.
fn task(flaky: &[usize]) -> (String, String) {
    let (mut items, mut shown) = (Vec::new(), Vec::new());
    for i in 1..=70 {
        if flaky.contains(&i) {
            items.push(format!("flaky s{i}@20"));
            shown.push(format!("flaky s{i}@20: FAILED"));
        } else {
            items.push(format!("s{i}@{}", (i * 37) % 5 * 20));
            shown.push(format!("s{i}@{}: DONE", (i * 37) % 5 * 20));
        }
    }
    (items.join(","), shown.join(","))
}

const FLAKY: [usize; 3] = [5, 10, 40];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tolerated_failure_run_returns_the_failures_in_its_aggregate() {
    let h = start(Mode::Lambda).await;
    let (description, shown) = task(&FLAKY);
    for (strategy, policy) in [
        ("ledger", "tolerate:3"),
        ("in-order", "tolerate:3"),
        ("ledger", "tolerate:5%"), // 3.5 of 70, rounded down
        ("ledger", "min-successful:67"),
    ] {
        let response = h
            .run_with(
                &description,
                &[(POLICY, policy), ("x-fanout-fan-in", strategy)],
            )
            .await;
        assert_eq!(
            response.status, 200,
            "{strategy} {policy}: {:?}",
            response.body
        );
        assert_eq!(
            response.body["description"],
            json!(shown),
            "{strategy} {policy}"
        );
        let failed = response.body["failed"].as_array().expect("failures listed");
        let at: Vec<u64> = failed
            .iter()
            .map(|f| f["index"].as_u64().unwrap())
            .collect();
        assert_eq!(at, [4, 9, 39], "{strategy} {policy}: {failed:?}");
        for failure in failed {
            let subtask = failure["subtask"].as_str().unwrap();
            assert!(subtask.starts_with("flaky s"), "{failure}");
            assert!(
                !failure["message"].as_str().unwrap().is_empty() && failure["code"].is_u64(),
                "a failure carries its error: {failure}"
            );
        }
    }
    // A run without failures under a tolerant policy is the reference payload, nothing more.
    let (clean, clean_shown) = task(&[]);
    let response = h.run_with(&clean, &[(POLICY, "tolerate:3")]).await;
    assert_eq!(response.body, json!({ "description": clean_shown }));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handlers_policy_applies_unless_the_run_sets_its_own() {
    let options = Harness::with_env(
        flaky_options(Mode::Http),
        "FANOUT_FAILURE_POLICY",
        "tolerate:1",
    );
    let h = Harness::start_with(options).await;
    let tolerated = h.run("a,flaky b,c").await;
    assert_eq!(tolerated.status, 200, "{:?}", tolerated.body);
    assert_eq!(tolerated.body["failed"][0]["subtask"], "flaky b");
    let strict = h.run_with("a,flaky b,c", &[(POLICY, "fail-fast")]).await;
    assert_eq!(strict.status, 500, "{:?}", strict.body);
    assert!(strict.message().contains("subtask 2 of 3 (flaky b) failed"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failure_more_than_tolerated_fails_the_run_with_the_tally() {
    let h = start(Mode::Http).await;
    let (description, _) = task(&FLAKY);
    // Each lane alone stays within 2 (the ledger sees the third failure), then lane 0's
    // second failure (s5 or s10, whichever ends last) is already one too many (the lane
    // stops itself).
    for (policy, names, tally) in [
        (
            "tolerate:2",
            "flaky s",
            "3 of 70 subtasks failed, more than the 2 tolerated",
        ),
        ("min-successful:68", "flaky s", "more than the 2 tolerated"),
        ("tolerate:1", "(flaky s", "more than the 1 tolerated"),
    ] {
        let response = h.run_with(&description, &[(POLICY, policy)]).await;
        assert_eq!(response.status, 500, "{policy}: {:?}", response.body);
        let message = response.message();
        assert!(
            message.contains(names) && message.contains(tally),
            "{policy}: {message}"
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_failure_policies_are_refused_before_any_subtask_starts() {
    let h = start(Mode::Http).await;
    for (policy, says) in [
        (
            "tolerate:4",
            "tolerating 4 failed subtasks is impossible: the task split into 3",
        ),
        ("min-successful:4", "min-successful 4 is impossible"),
        ("min-successful:0", "at least 1"),
        ("tolerate:0", "at least 1"),
        ("tolerate:-1", "at least 1"),
        ("tolerate:150%", "at most 100%"),
        ("best-effort", "fail-fast, tolerate:N"),
    ] {
        let response = h.run_with("a,b,c", &[(POLICY, policy)]).await;
        assert_eq!(response.status, 400, "{policy}: {:?}", response.body);
        assert!(
            response.message().contains(says),
            "{policy}: {}",
            response.message()
        );
    }
    let started = h
        .query("SELECT count(*) AS n FROM sys_invocation WHERE target = 'worker/runSubtask'")
        .await;
    assert_eq!(started[0]["n"], json!(0), "a refused run started subtasks");

    // The same through `fanout invoke`: bad values never leave the command line, values the
    // width rules out come back as a rejection (exit 4), and a tolerated failure is reported.
    let zero = h
        .fanout(&["invoke", "a,b", "--tolerate-failures", "0"])
        .await;
    assert_ne!(zero.code, Some(0));
    assert!(zero.stderr.contains("--tolerate-failures"), "{zero:?}");
    let both = h
        .fanout(&[
            "invoke",
            "a,b",
            "--tolerate-failures",
            "1",
            "--min-successful",
            "1",
        ])
        .await;
    assert!(both.stderr.contains("cannot be used with"), "{both:?}");
    let wide = h
        .fanout(&["invoke", "a,b,c", "--min-successful", "4"])
        .await;
    assert_eq!(wide.code, Some(exit::BAD_INPUT as i32), "{wide:?}");
    assert!(
        wide.stderr.contains("min-successful 4 is impossible"),
        "{wide:?}"
    );
    let tolerated = h
        .fanout(&[
            "invoke",
            "a,flaky b,c",
            "--tolerate-failures",
            "50%",
            "--progress",
            "none",
        ])
        .await;
    assert_eq!(tolerated.code, Some(0), "{tolerated:?}");
    let result: Value = serde_json::from_str(tolerated.stdout.trim()).unwrap();
    assert_eq!(result["description"], "a: DONE,flaky b: FAILED,c: DONE");
    assert!(
        tolerated.stderr.contains("1 subtask(s) failed"),
        "{tolerated:?}"
    );
    let strict = h.fanout(&["invoke", "a,flaky b,c", "--fail-fast"]).await;
    assert_eq!(strict.code, Some(exit::RUN_FAILED as i32), "{strict:?}");
    h.stop().await;
}

/// Every `runSubtask` invocation once none is running: (how many, how many succeeded).
async fn subtasks_once_settled(h: &Harness) -> (u64, u64) {
    let rows = h
        .query_until(
            "SELECT count(*) AS n, count(CASE WHEN status = 'completed' THEN 1 END) AS ended, \
             count(CASE WHEN completion_result = 'success' THEN 1 END) AS ok \
             FROM sys_invocation WHERE target = 'worker/runSubtask'",
            Duration::from_secs(20),
            |rows| rows[0]["n"] == rows[0]["ended"],
        )
        .await;
    let count = |key: &str| rows[0][key].as_u64().unwrap_or(0);
    assert_eq!(
        count("n"),
        count("ended"),
        "subtasks still running: {rows:?}"
    );
    (count("n"), count("ok"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_cancels_what_is_in_flight_and_never_starts_the_rest() {
    // 70 subtasks; the flaky first one fails at once while the others would take 8 s.
    let mut wide: Vec<String> = vec!["flaky a".into()];
    wide.extend((2..=70).map(|i| format!("s{i}@8000")));
    let wide = wide.join(",");
    for mode in [Mode::Http, Mode::Lambda] {
        let h = start(mode).await;
        for (strategy, cap, description, in_flight) in [
            // One lane, three in flight: the last three wait for a slot in the lane.
            ("ledger", 3, "flaky a,b@8000,c@8000,d,e,f", 3),
            ("in-order", 3, "flaky a,b@8000,c@8000,d,e,f", 3),
            // One lane of 32: 32 in flight, the lane's next claim and the rest of the
            // inputs wait in the lane and the ledger.
            ("ledger", 32, wide.as_str(), 32),
        ] {
            let before = subtasks_once_settled(&h).await;
            let case = format!("{mode:?} {strategy} cap {cap}");
            let cap = cap.to_string();
            let response = h
                .run_with(
                    description,
                    &[
                        ("x-fanout-max-concurrency", cap.as_str()),
                        ("x-fanout-fan-in", strategy),
                    ],
                )
                .await;
            assert_eq!(response.status, 500, "{case}: {:?}", response.body);
            let message = response.message();
            assert!(message.contains("(flaky a) failed"), "{case}: {message}");
            let after = subtasks_once_settled(&h).await;
            assert_eq!(
                after.0 - before.0,
                in_flight,
                "{case}: only the subtasks in flight when it failed ever started"
            );
            assert_eq!(
                after.1, before.1,
                "{case}: a subtask in flight was not cancelled and finished"
            );
            // `fanout status` tells the failed subtask, the cancelled ones and those never
            // started apart.
            let run = h
                .query(
                    "SELECT id FROM sys_invocation WHERE target = 'worker/run' \
                     ORDER BY created_at DESC LIMIT 1",
                )
                .await;
            let id = run[0]["id"].as_str().unwrap();
            let status = h.fanout(&["status", id, "--output", "json"]).await;
            assert_eq!(status.code, Some(exit::RUN_FAILED as i32), "{status:?}");
            let summary = &status.json()["summary"];
            let width = description.split(',').count() as u64;
            assert_eq!(summary["subtasks"], json!(width), "{case}: {summary}");
            assert_eq!(summary["byStatus"]["failed"], json!(1), "{case}: {summary}");
            assert_eq!(
                summary["byStatus"]["cancelled"],
                json!(in_flight - 1),
                "{case}: {summary}"
            );
            assert_eq!(
                summary["notCalled"],
                json!(width - in_flight),
                "{case}: {summary}"
            );
        }
        h.stop().await;
    }
}
