//! Cancelling a run stops its whole fan-out: no subtask starts after the cancel, the subtasks in
//! flight are cancelled, the ledger forgets the run, and nothing of it is left running in
//! `sys_invocation`. Through Restate's admin API and through `fanout cancel`, for every fan-in
//! strategy, on the real server with the handler as a Lambda bootstrap.

use fanout::exit;
use fanout_tests::{Harness, Mode};
use serde_json::{Value, json};
use std::time::Duration;

const CAP: u64 = 8;
/// Subtasks that end at once, so a lane has made enough calls to hand over before the cancel.
const SHORT: u64 = 100;
/// Subtasks that would take a minute: only a cancel ends them within the test's deadlines.
const LONG: u64 = 24;

/// Four long subtasks first, then the short ones, then the other long ones. Under a cap of 8,
/// the first four hold their slots while the short ones pass through the other four; a ledger
/// lane hands over after 64 calls, so its successor *attaches* to the first four (calls it did
/// not make, which Restate's cancellation cannot follow) and starts the later long ones itself.
fn task() -> String {
    let long = |i: u64| format!("long{i}@60000");
    let mut items: Vec<String> = (0..4).map(long).collect();
    items.extend((0..SHORT).map(|i| format!("short{i}@10")));
    items.extend((4..LONG).map(long));
    items.join(",")
}

/// `runSubtask` invocations so far: (all, succeeded, not yet completed).
async fn subtask_counts(h: &Harness) -> (u64, u64, u64) {
    // Polled, not queried once: right after the server starts, a partition may not answer yet.
    let rows = h
        .query_until(
            "SELECT count(*) AS n, \
             count(CASE WHEN completion_result = 'success' THEN 1 END) AS ok, \
             count(CASE WHEN status != 'completed' THEN 1 END) AS going \
             FROM sys_invocation WHERE target = 'worker/runSubtask'",
            Duration::from_secs(30),
            |_| true,
        )
        .await;
    let count = |key: &str| rows[0][key].as_u64().unwrap_or(0);
    (count("n"), count("ok"), count("going"))
}

enum Via {
    AdminApi,
    Cli,
}

/// Starts the task under `strategy` and `policy`, waits until it settles with only long
/// subtasks running, cancels the run `via`, and checks that the whole fan-out stopped.
async fn cancel_mid_run(h: &Harness, strategy: &str, policy: &str, via: Via) {
    let case = format!("{strategy} {policy}");
    // Where the run settles: lanes keep the cap full, so the short subtasks all pass and the
    // cap fills with long ones; in order, the window waits behind the first long subtask with
    // the four short ones it holds done.
    let (settled_ok, settled_going) = match strategy {
        "in-order" => (4, 4),
        _ => (SHORT, CAP),
    };
    let (_, ok_before, going_before) = subtask_counts(h).await;
    assert_eq!(going_before, 0, "{case}: an earlier run is still going");
    let cap = CAP.to_string();
    let started = h
        .fanout(&[
            "invoke",
            &task(),
            "--send",
            "--output",
            "json",
            "--fan-in",
            strategy,
            "--max-concurrency",
            &cap,
            "--tolerate-failures",
            policy,
        ])
        .await;
    assert_eq!(started.code, Some(0), "{case}: {started:?}");
    let id = started.json()["invocationId"].as_str().unwrap().to_owned();

    h.query_until(
        "SELECT count(CASE WHEN completion_result = 'success' THEN 1 END) AS ok, \
         count(CASE WHEN status != 'completed' THEN 1 END) AS going \
         FROM sys_invocation WHERE target = 'worker/runSubtask'",
        Duration::from_secs(90),
        |rows| {
            rows[0]["ok"].as_u64() == Some(ok_before + settled_ok)
                && rows[0]["going"].as_u64() == Some(settled_going)
        },
    )
    .await;
    let (started_before_cancel, ok, going) = subtask_counts(h).await;
    assert_eq!(
        (ok, going),
        (ok_before + settled_ok, settled_going),
        "{case}: the run never settled with only long subtasks running"
    );

    match via {
        Via::AdminApi => {
            let answer = h
                .stack
                .admin
                .cancel_invocation(&id)
                .await
                .expect("the admin API answers");
            assert_eq!(answer, fanout::admin::CancelAnswer::Accepted, "{case}");
        }
        Via::Cli => {
            let cancelled = h.fanout(&["cancel", &id, "--output", "json"]).await;
            assert_eq!(cancelled.code, Some(0), "{case}: {cancelled:?}");
            let report = cancelled.json();
            assert_eq!(report["outcome"], "cancelled", "{case}: {report}");
            assert_eq!(report["coordinator"]["status"], "cancelled", "{case}");
            assert_eq!(
                report["summary"]["byStatus"]["cancelled"],
                json!(settled_going),
                "{case}: {report}"
            );
        }
    }

    // Nothing of the run is left: not the coordinator, a lane, the ledger, or a subtask. The
    // long subtasks would take a minute to end on their own.
    let left = h
        .query_until(
            "SELECT target, status FROM sys_invocation WHERE status != 'completed'",
            Duration::from_secs(40),
            |rows| rows.is_empty(),
        )
        .await;
    assert!(
        left.is_empty(),
        "{case}: still going after the cancel: {left:?}"
    );
    let (all, ok, _) = subtask_counts(h).await;
    assert_eq!(
        all, started_before_cancel,
        "{case}: a subtask started after the cancel"
    );
    assert_eq!(
        ok,
        ok_before + settled_ok,
        "{case}: a long subtask was not cancelled and finished"
    );
    let ledger_state = h
        .query(&format!(
            "SELECT key FROM state WHERE service_name = 'fanIn' AND service_key = '{id}'"
        ))
        .await;
    assert!(
        ledger_state.is_empty(),
        "{case}: the ledger kept state for the cancelled run: {ledger_state:?}"
    );

    // `fanout status` tells what happened, as it was.
    let status = h.fanout(&["status", &id, "--output", "json"]).await;
    assert_eq!(
        status.code,
        Some(exit::RUN_FAILED as i32),
        "{case}: {status:?}"
    );
    let report = status.json();
    assert_eq!(report["coordinator"]["status"], "cancelled", "{case}");
    let summary = &report["summary"];
    let width = 4 + SHORT + (LONG - 4);
    assert_eq!(summary["subtasks"], json!(width), "{case}: {summary}");
    let never = width - settled_ok - settled_going;
    assert_eq!(
        summary["byStatus"]["cancelled"],
        json!(settled_going),
        "{case}: {summary}"
    );
    assert_eq!(
        summary["byStatus"]["completed"],
        json!(settled_ok),
        "{case}: {summary}"
    );
    assert_eq!(summary["notCalled"], json!(never), "{case}: {summary}");
    let line = h.fanout(&["status", &id]).await.stdout;
    assert!(
        line.contains(&format!("{never} never started")) && line.contains("worker/run cancelled"),
        "{case}: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_run_stops_its_whole_fan_out() {
    let h = Harness::start(Mode::Lambda).await;
    // A tolerant policy too: a run that counts cancelled subtasks as tolerated failures must
    // still stop, not go on starting the rest.
    for (strategy, policy, via) in [
        ("ledger", "100%", Via::AdminApi),
        ("ledger", "100%", Via::Cli),
        ("in-order", "100%", Via::AdminApi),
        ("in-order", "100%", Via::Cli),
        ("select-any", "100%", Via::Cli),
    ] {
        cancel_mid_run(&h, strategy, policy, via).await;
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_says_when_there_is_nothing_to_cancel() {
    let h = Harness::start(Mode::Http).await;
    let done = h
        .fanout(&["invoke", "a,b", "--output", "json", "--progress", "none"])
        .await;
    assert_eq!(done.code, Some(0), "{done:?}");
    let id = done.json()["invocationId"].as_str().unwrap().to_owned();

    let finished = h.fanout(&["cancel", &id]).await;
    assert_eq!(finished.code, Some(exit::OTHER as i32), "{finished:?}");
    assert!(
        finished.stderr.contains("nothing to cancel") && finished.stderr.contains("succeeded"),
        "{finished:?}"
    );
    let unknown = h
        .fanout(&[
            "cancel",
            "inv_1d7ECWP1bH4t5dNhlnBYDTAV59WL5YJsYh",
            "--output",
            "json",
        ])
        .await;
    assert_eq!(unknown.code, Some(exit::UNKNOWN_ID as i32), "{unknown:?}");
    assert_eq!(unknown.json()["outcome"], "unknown");
    let malformed = h.fanout(&["cancel", "not-an-id"]).await;
    assert_eq!(
        malformed.code,
        Some(exit::BAD_INPUT as i32),
        "{malformed:?}"
    );

    // A subtask is not a run: cancelling one alone is Restate's business, not fanout cancel's.
    let rows: Vec<Value> = h
        .query("SELECT id FROM sys_invocation WHERE target = 'worker/runSubtask' LIMIT 1")
        .await;
    let subtask = rows[0]["id"].as_str().unwrap();
    let not_a_run = h.fanout(&["cancel", subtask]).await;
    assert_eq!(
        not_a_run.code,
        Some(exit::BAD_INPUT as i32),
        "{not_a_run:?}"
    );
    assert!(not_a_run.stderr.contains("not a fan-out"), "{not_a_run:?}");
    h.stop().await;
}
