//! `fanout invoke | attach | status` as a user runs them: the `fanout` binary as a subprocess
//! against a real restate-server and handler. Stdout and stderr are pipes here, so progress
//! comes as plain lines (the bar's logic has unit tests in `fanout::observe`).

use fanout_tests::{CliRun, Harness, Mode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

const REFERENCE: &str = "get out of bed,shower,make coffee,have breakfast";
const REFERENCE_RESULT: &str =
    "get out of bed: DONE,shower: DONE,make coffee: DONE,have breakfast: DONE";

fn assert_exit(run: &CliRun, code: i32) {
    assert_eq!(run.code, Some(code), "{run:#?}");
}

/// The `[   1.2s] 3/4 subtasks done …` lines, as (done, total) where the total is known.
fn progress_lines(stderr: &str) -> Vec<(usize, usize)> {
    stderr
        .lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once("s] ")?;
            let (counts, _) = rest.split_once(" subtasks done")?;
            let (done, total) = counts.split_once('/')?;
            Some((done.parse().ok()?, total.parse().ok()?))
        })
        .collect()
}

/// How many invocations of `target` Restate has.
async fn invocations_of(h: &Harness, target: &str) -> u64 {
    let rows = h
        .query(&format!(
            "SELECT count(*) AS n FROM sys_invocation WHERE target = '{target}'"
        ))
        .await;
    rows[0]["n"].as_u64().unwrap()
}

async fn invoke_shows_progress_up_to_the_total(mode: Mode) {
    let h = Harness::start(mode).await;
    let run = h.fanout(&["invoke", REFERENCE]).await;
    assert_exit(&run, 0);
    assert_eq!(
        serde_json::from_str::<Value>(run.stdout.trim()).unwrap(),
        json!({ "description": REFERENCE_RESULT })
    );
    let lines = progress_lines(&run.stderr);
    assert_eq!(lines.last(), Some(&(4, 4)), "{}", run.stderr);
    assert!(
        lines
            .iter()
            .all(|&(done, total)| done <= total && total == 4),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("started inv_"), "{}", run.stderr);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http_invoke_shows_progress_up_to_the_total() {
    invoke_shows_progress_up_to_the_total(Mode::Http).await;
}

/// On Lambda the subtasks suspend while they sleep; they still count as in flight, then done.
#[tokio::test(flavor = "multi_thread")]
async fn lambda_invoke_shows_progress_up_to_the_total() {
    invoke_shows_progress_up_to_the_total(Mode::Lambda).await;
}

/// `FANOUT_FLAKY_MS=1400`: `flaky b` fails at ~0 s and ~0.5 s (Restate's first retry), and
/// succeeds at ~1.5 s (the second retry, 1 s later). Any stall short of 0.9 s keeps that count.
#[tokio::test(flavor = "multi_thread")]
async fn status_shows_attempts_and_last_error_of_a_flaky_subtask() {
    let options = Harness::with_env(Harness::options(Mode::Http), "FANOUT_FLAKY_MS", "1400");
    let h = Harness::start_with(options).await;
    let invoked = h
        .fanout(&["invoke", "a,flaky b,c", "--output", "json"])
        .await;
    assert_exit(&invoked, 0);
    let report = invoked.json();
    assert_eq!(report["outcome"], "succeeded");
    assert_eq!(
        report["result"],
        json!({"description": "a: DONE,flaky b: DONE,c: DONE"})
    );
    assert_eq!(report["progress"]["completed"], 3, "{report}");
    assert_eq!(report["progress"]["total"], 3, "{report}");
    let id = report["invocationId"].as_str().unwrap();

    let status = h.fanout(&["status", id, "--output", "json"]).await;
    assert_exit(&status, 0);
    let status = status.json();
    assert_eq!(status["invocationId"], id);
    assert_eq!(status["coordinator"]["status"], "completed");
    let subtasks = status["subtasks"].as_array().unwrap();
    let view: Vec<(u64, &str, &str, u64)> = subtasks
        .iter()
        .map(|s| {
            (
                s["index"].as_u64().unwrap(),
                s["description"].as_str().unwrap(),
                s["status"].as_str().unwrap(),
                s["attempts"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        view,
        [
            (1, "a", "completed", 1),
            (2, "flaky b", "completed", 3),
            (3, "c", "completed", 1),
        ],
        "{status:#}"
    );
    let last_error = subtasks[1]["lastError"].as_str().unwrap();
    assert!(
        last_error.contains("flaky b failed transiently"),
        "{last_error}"
    );
    assert!(subtasks[0]["lastError"].is_null() && subtasks[2]["lastError"].is_null());
    assert!(subtasks.iter().all(|s| s["durationMs"].is_u64()));
    let children: Vec<&str> = subtasks
        .iter()
        .map(|s| s["invocationId"].as_str().unwrap())
        .collect();
    assert!(children.iter().all(|c| c.starts_with("inv_") && *c != id));
    assert_eq!(status["summary"]["retried"], 1);
    assert_eq!(status["summary"]["failedAttempts"], 2);

    let table = h.fanout(&["status", id]).await;
    assert_exit(&table, 0);
    let flaky_row = table
        .stdout
        .lines()
        .find(|line| line.contains("flaky b"))
        .unwrap_or_else(|| panic!("no row for flaky b:\n{}", table.stdout));
    for column in [
        children[1],
        "completed",
        " 3 ",
        "flaky b failed transiently",
    ] {
        assert!(flaky_row.contains(column), "{column:?} in {flaky_row:?}");
    }
    assert!(
        table.stdout.contains(
            "3 subtasks: 3 completed · 1 retried (2 failed attempts) · worker/run completed in"
        ),
        "{}",
        table.stdout
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_returns_the_same_run_without_new_subtasks() {
    let h = Harness::start(Mode::Http).await;
    let args = [
        "invoke",
        "x,y,z",
        "--idempotency-key",
        "nightly-42",
        "--output",
        "json",
    ];
    let first = h.fanout(&args).await;
    assert_exit(&first, 0);
    let subtasks_after_first = invocations_of(&h, "worker/runSubtask").await;
    assert_eq!(subtasks_after_first, 3);

    let second = h.fanout(&args).await;
    assert_exit(&second, 0);
    let (first, second) = (first.json(), second.json());
    assert_eq!(first["invocationId"], second["invocationId"]);
    assert_eq!(
        second["result"],
        json!({"description": "x: DONE,y: DONE,z: DONE"})
    );
    assert_eq!(first["result"], second["result"]);
    assert_eq!(first["previouslyAccepted"], false);
    assert_eq!(second["previouslyAccepted"], true);
    assert_eq!(invocations_of(&h, "worker/runSubtask").await, 3);
    assert_eq!(invocations_of(&h, "worker/run").await, 1);

    // `--send` with the same key names the same run too.
    let sent = h
        .fanout(&[
            "invoke",
            "x,y,z",
            "--idempotency-key",
            "nightly-42",
            "--send",
        ])
        .await;
    assert_exit(&sent, 0);
    assert_eq!(sent.stdout.trim(), first["invocationId"].as_str().unwrap());
    assert_eq!(invocations_of(&h, "worker/runSubtask").await, 3);
    h.stop().await;
}

/// Subtasks that each work 3 s inside a journaled step: a client killed right after the start
/// is certainly killed mid-run.
async fn slow_stack() -> Harness {
    let options = Harness::with_env(
        Harness::options(Mode::Http),
        "FANOUT_SUBTASK_WORK_MS",
        "3000",
    );
    Harness::start_with(options).await
}

/// Starts `fanout invoke TASK` and returns the child and the invocation id from its
/// `started inv_…` line.
async fn start_invoke(h: &Harness, task: &str) -> (tokio::process::Child, String) {
    let mut child = h
        .fanout_command(&["invoke", task])
        .spawn()
        .expect("fanout starts");
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let id = loop {
        let line = stderr
            .next_line()
            .await
            .unwrap()
            .expect("fanout invoke prints `started inv_…` before it exits");
        if let Some(rest) = line.strip_prefix("started ") {
            break rest
                .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                .next()
                .unwrap()
                .to_owned();
        }
    };
    // Keep draining so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
    (child, id)
}

async fn coordinator_status(h: &Harness, id: &str) -> String {
    let rows = h
        .query(&format!(
            "SELECT status FROM sys_invocation WHERE id = '{id}'"
        ))
        .await;
    rows[0]["status"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn attach_after_the_client_was_killed() {
    let h = slow_stack().await;
    let (mut client, id) = start_invoke(&h, "a,b,c,d").await;
    client.start_kill().unwrap(); // SIGKILL: no chance to clean up
    client.wait().await.unwrap();
    assert_ne!(coordinator_status(&h, &id).await, "completed");

    let attached = h.fanout(&["attach", &id, "--output", "json"]).await;
    assert_exit(&attached, 0);
    let report = attached.json();
    assert_eq!(report["invocationId"], id.as_str());
    assert_eq!(report["outcome"], "succeeded");
    assert_eq!(
        report["result"],
        json!({"description": "a: DONE,b: DONE,c: DONE,d: DONE"})
    );
    assert_eq!(report["progress"]["completed"], 4, "{report}");
    assert_eq!(report["progress"]["total"], 4, "{report}");
    assert_eq!(progress_lines(&attached.stderr).last(), Some(&(4, 4)));
    // The killed client's run is the one that finished: nothing was started twice.
    assert_eq!(invocations_of(&h, "worker/run").await, 1);
    assert_eq!(invocations_of(&h, "worker/runSubtask").await, 4);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_stops_waiting_but_not_the_run() {
    let h = slow_stack().await;
    let (mut client, id) = start_invoke(&h, "a,b").await;
    let pid = client.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = client.wait().await.unwrap();
    assert_eq!(status.code(), Some(130));

    let attached = h.fanout(&["attach", &id]).await;
    assert_exit(&attached, 0);
    assert_eq!(
        serde_json::from_str::<Value>(attached.stdout.trim()).unwrap(),
        json!({"description": "a: DONE,b: DONE"})
    );
    assert_eq!(invocations_of(&h, "worker/runSubtask").await, 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn send_prints_the_id_and_status_follows_the_run() {
    let h = slow_stack().await;
    let sent = h
        .fanout(&["invoke", "a,b", "--send", "--output", "json"])
        .await;
    assert_exit(&sent, 0);
    let id = sent.json()["invocationId"].as_str().unwrap().to_owned();

    // Mid-run: the run is there, with its subtasks not all done.
    let status = h.fanout(&["status", &id, "--output", "json"]).await;
    assert_exit(&status, 0);
    let status = status.json();
    assert_ne!(status["coordinator"]["status"], "completed");

    let attached = h.fanout(&["attach", &id, "--output", "json"]).await;
    assert_exit(&attached, 0);
    assert_eq!(
        attached.json()["result"],
        json!({"description": "a: DONE,b: DONE"})
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_get_clear_messages_and_distinct_exit_codes() {
    let h = slow_stack().await;

    // 4: the handler refuses the task before any subtask starts.
    let rejected = h.fanout(&["invoke", "a,,b"]).await;
    assert_exit(&rejected, 4);
    assert!(
        rejected.stderr.contains("subtask 2 of 3 is empty"),
        "{}",
        rejected.stderr
    );
    let rejected = h.fanout(&["invoke", "a,,b", "--output", "json"]).await;
    assert_exit(&rejected, 4);
    assert_eq!(rejected.json()["outcome"], "rejected");

    // 4: a malformed id never reaches the server; 6: a well-formed one it does not know.
    let malformed = h.fanout(&["status", "not-an-id"]).await;
    assert_exit(&malformed, 4);
    assert!(malformed.stderr.contains("is not an invocation id"));
    let unknown = "inv_1d7ECWP1bH4t5dNhlnBYDTAV59WL5YJsYh";
    for verb in ["status", "attach"] {
        let run = h.fanout(&[verb, unknown]).await;
        assert_exit(&run, 6);
        assert!(run.stderr.contains("does not know"), "{}", run.stderr);
    }
    let json_unknown = h.fanout(&["status", unknown, "--output", "json"]).await;
    assert_exit(&json_unknown, 6);
    assert_eq!(json_unknown.json()["outcome"], "unknown");

    // 3: a run that fails terminally, here because one of its subtasks is cancelled.
    let sent = h.fanout(&["invoke", "a,b", "--send"]).await;
    assert_exit(&sent, 0);
    let id = sent.stdout.trim().to_owned();
    let mut polls = 0;
    let child = loop {
        polls += 1;
        assert!(polls < 400, "no subtask of {id} appeared within 20 s");
        let rows = h
            .query(&format!(
                "SELECT id FROM sys_invocation WHERE target = 'worker/runSubtask' AND \
                 (invoked_by_id = '{id}' OR invoked_by_id IN (SELECT id FROM sys_invocation \
                 WHERE target = 'worker/runShard' AND invoked_by_id IN (SELECT id FROM \
                 sys_invocation WHERE target_service_name = 'fanIn' AND \
                 target_service_key = '{id}'))) LIMIT 1"
            ))
            .await;
        if let Some(row) = rows.first() {
            break row["id"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let cancel = reqwest::Client::new()
        .patch(format!(
            "{}/invocations/{child}/cancel",
            h.stack.server.admin_url
        ))
        .send()
        .await
        .unwrap();
    assert!(cancel.status().is_success(), "{}", cancel.status());
    let failed = h.fanout(&["attach", &id]).await;
    assert_exit(&failed, 3);
    assert!(
        failed.stderr.contains("the run failed"),
        "{}",
        failed.stderr
    );
    assert!(failed.stderr.contains("cancelled"), "{}", failed.stderr);
    let status = h.fanout(&["status", &id, "--output", "json"]).await;
    assert_exit(&status, 3);
    let status = status.json();
    assert_eq!(status["coordinator"]["status"], "failed");
    assert!(
        status["subtasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["invocationId"] == child.as_str() && s["status"] == "cancelled"),
        "{status:#}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_server_is_exit_code_5() {
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let binary = fanout_tests::fanout_binary();
    for args in [
        vec!["invoke", "a,b", "--ingress-url", &url, "--admin-url", &url],
        vec![
            "status",
            "inv_1d7ECWP1bH4t5dNhlnBYDTAV59WL5YJsYh",
            "--admin-url",
            &url,
        ],
        vec![
            "attach",
            "inv_1d7ECWP1bH4t5dNhlnBYDTAV59WL5YJsYh",
            "--admin-url",
            &url,
        ],
    ] {
        let output = tokio::process::Command::new(&binary)
            .args(&args)
            .env_remove("RESTATE_AUTH_TOKEN")
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(5), "{args:?}: {stderr}");
        assert!(stderr.contains("cannot reach Restate"), "{stderr}");
    }
}
