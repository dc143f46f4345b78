//! The worker end to end through Restate's real ingress, in both modes: the handler as an
//! HTTP endpoint, and as a Lambda bootstrap behind the local Lambda stand-in.

use fanout::admin::sql_string;
use fanout_tests::{Harness, Mode, numbered_results, numbered_subtasks};
use serde_json::{Value, json};

const REFERENCE: &str = "get out of bed,shower,make coffee,have breakfast";

async fn reference_example(mode: Mode) {
    let h = Harness::start(mode).await;
    let response = h.run(REFERENCE).await;
    assert_eq!(response.status, 200, "{:?}", response.body);
    assert_eq!(
        response.body,
        json!({"description": "get out of bed: DONE,shower: DONE,make coffee: DONE,have breakfast: DONE"})
    );
    h.stop().await;
}

async fn one_subtask(mode: Mode) {
    let h = Harness::start(mode).await;
    let response = h.run("shower").await;
    assert_eq!(response.status, 200, "{:?}", response.body);
    assert_eq!(response.body, json!({"description": "shower: DONE"}));
    h.stop().await;
}

/// The journals, as (index, entry type) pairs, of every invocation that called `runSubtask`:
/// the coordinator itself, or its lanes when it fans in through the ledger.
async fn callers_journals(h: &Harness) -> Vec<Vec<(u64, String)>> {
    let callers = h
        .query(
            "SELECT DISTINCT invoked_by_id AS id FROM sys_invocation \
             WHERE target = 'worker/runSubtask'",
        )
        .await;
    let mut journals = Vec::new();
    for caller in callers {
        let id = caller["id"].as_str().unwrap().to_owned();
        journals.push(
            h.query(&format!(
                "SELECT index, entry_type FROM sys_journal WHERE id = {} ORDER BY index",
                sql_string(&id)
            ))
            .await
            .iter()
            .map(|row| {
                (
                    row["index"].as_u64().unwrap(),
                    row["entry_type"].as_str().unwrap().to_owned(),
                )
            })
            .collect(),
        );
    }
    journals
}

async fn hundred_subtasks_all_in_flight(mode: Mode) {
    let h = Harness::start(mode).await;
    let response = h.run(&numbered_subtasks(100)).await;
    assert_eq!(response.status, 200, "{:?}", response.body);
    assert_eq!(response.body, json!({"description": numbered_results(100)}));

    // Evidence of concurrency from the journals, not a timer: every caller journaled all of
    // its calls before the first call result came back, and together they made 100 calls.
    let mut calls_made = 0;
    for journal in callers_journals(&h).await {
        let calls: Vec<u64> = journal
            .iter()
            .filter(|(_, ty)| ty == "Command: Call")
            .map(|(i, _)| *i)
            .collect();
        let first_result = journal
            .iter()
            .find(|(_, ty)| ty == "Notification: Call")
            .map(|(i, _)| *i)
            .expect("call results are journaled");
        assert!(
            calls.iter().all(|&i| i < first_result),
            "a call was issued after a result arrived: calls {calls:?}, first result at {first_result}"
        );
        calls_made += calls.len();
    }
    assert_eq!(calls_made, 100);

    let coordinator = h
        .query("SELECT id FROM sys_invocation WHERE target = 'worker/run'")
        .await;
    assert_eq!(coordinator.len(), 1, "one coordinator: {coordinator:?}");
    let steps = h
        .query(&format!(
            "SELECT count(*) AS n FROM sys_journal WHERE id = {} AND entry_type = 'Command: Run'",
            sql_string(coordinator[0]["id"].as_str().unwrap())
        ))
        .await;
    assert_eq!(steps[0]["n"], json!(1), "one journaled split step");

    let subtasks = h
        .query("SELECT count(*) AS n FROM sys_invocation WHERE target = 'worker/runSubtask'")
        .await;
    assert_eq!(subtasks[0]["n"], json!(100));
    h.stop().await;
}

async fn bad_input_is_rejected_with_a_reason(mode: Mode) {
    let h = Harness::start(mode).await;
    let big = "x".repeat(2 * 1024 * 1024 + 1);
    let too_many = vec!["a"; 10_001].join(",");
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!("not json {"), 400, "not valid JSON"),
        (json!({}), 400, "missing field `description`"),
        (json!({"description": 5}), 400, "expected a string"),
        (json!({"description": ""}), 400, "description is empty"),
        (json!({"description": "   "}), 400, "description is empty"),
        (
            json!({"description": "a,,b"}),
            400,
            "subtask 2 of 3 is empty",
        ),
        (
            json!({"description": "a,b,"}),
            400,
            "subtask 3 of 3 is empty",
        ),
        (
            json!({"description": big}),
            400,
            "the limit is 2097152 bytes",
        ),
        (
            json!({"description": too_many}),
            400,
            "10001 subtasks; the limit is 10000",
        ),
    ];
    for (task, status, message) in cases {
        let response = match &task {
            // Sent raw: the body is not JSON at all.
            Value::String(raw) => h
                .ingress
                .post("/worker/run", "application/json", raw.clone(), None)
                .await
                .unwrap(),
            _ => h.run_json(&task).await,
        };
        let shown: String = task.to_string().chars().take(60).collect();
        assert_eq!(response.status, status, "{shown}: {:?}", response.body);
        assert!(
            response.message().contains(message),
            "{shown}: expected {message:?} in {:?}",
            response.message()
        );
    }
    // Whitespace around items is trimmed, not an error.
    let trimmed = h.run(" a , b\t").await;
    assert_eq!(trimmed.body, json!({"description": "a: DONE,b: DONE"}));

    // Nothing was retried: each rejected run failed on its first attempt and no subtask ran.
    // Checked once everything has ended: the ledger's last message to itself may still be
    // running, and Restate counts a running first attempt in `retry_count`.
    h.query_until(
        "SELECT count(*) AS n FROM sys_invocation WHERE status <> 'completed'",
        std::time::Duration::from_secs(30),
        |rows| rows[0]["n"] == json!(0),
    )
    .await;
    let retried = h
        .query("SELECT id, retry_count FROM sys_invocation WHERE retry_count > 0")
        .await;
    assert!(retried.is_empty(), "retried invocations: {retried:?}");
    let subtasks = h
        .query("SELECT count(*) AS n FROM sys_invocation WHERE target = 'worker/runSubtask'")
        .await;
    assert_eq!(
        subtasks[0]["n"],
        json!(2),
        "only the valid task's two subtasks ran"
    );
    h.stop().await;
}

async fn log_lines_once_per_subtask_despite_replays(mode: Mode) {
    let mut options = Harness::options(mode);
    // A short inactivity timeout makes restate-server suspend idle invocations in HTTP mode
    // too, so both modes resume handlers by replaying their journals.
    options.server_env.push((
        "RESTATE_WORKER__INVOKER__INACTIVITY_TIMEOUT".into(),
        "100ms".into(),
    ));
    // Suspensions are logged at debug; they are the evidence that replays happened.
    options
        .handler_env
        .push(("RUST_LOG".into(), "info,restate_sdk=debug".into()));
    let h = Harness::start_with(options).await;
    let n = 20;
    let response = h.run(&numbered_subtasks(n)).await;
    assert_eq!(response.status, 200, "{:?}", response.body);

    for i in 1..=n {
        for prefix in ["Started executing subtask", "Execution subtask finished"] {
            let needle = format!("{prefix}: s{i}");
            let lines: Vec<String> = h
                .log_lines_with(&needle)
                .into_iter()
                .filter(|l| l.trim_end().ends_with(&needle) || l.contains(&format!("{needle}\"")))
                .collect();
            assert_eq!(lines.len(), 1, "{needle}: {lines:#?}");
            assert!(
                lines[0].contains("worker/runSubtask") && lines[0].contains("inv_"),
                "the line names the handler and the invocation: {}",
                lines[0]
            );
            if mode == Mode::Lambda {
                // On Lambda a line is a JSON object that also names the Lambda request.
                let line: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
                assert_eq!(line["handler"], "worker/runSubtask");
                assert!(line["invocationId"].as_str().unwrap().starts_with("inv_"));
                assert!(
                    !line["requestId"].as_str().unwrap_or_default().is_empty(),
                    "{line}"
                );
            }
        }
    }
    let aggregated = h.log_lines_with("Aggregated result: s1: DONE,");
    assert_eq!(aggregated.len(), 1, "{aggregated:#?}");
    assert!(aggregated[0].contains("worker/run") && aggregated[0].contains("inv_"));

    // The replays really happened: the coordinator suspended (and was resumed) at least once.
    let suspensions = h.log_lines_with("suspended: Restate resumes it");
    assert!(
        suspensions.iter().any(|l| l.contains("worker/run")),
        "the coordinator never suspended, so nothing was replayed:\n{}",
        h.handler_log()
    );
    h.stop().await;
}

fanout_tests::in_both_modes!(
    reference_example,
    one_subtask,
    hundred_subtasks_all_in_flight,
    bad_input_is_rejected_with_a_reason,
    log_lines_once_per_subtask_despite_replays,
);

/// Lambda's advanced logging controls, as the function's `LoggingConfig` sets them, choose the
/// format and the level of the handler's lines, as `lambda_runtime`'s own subscriber would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambdas_logging_controls_set_the_format_and_the_level() {
    let options = Harness::with_env(
        Harness::options(Mode::Lambda),
        "AWS_LAMBDA_LOG_FORMAT",
        "Text",
    );
    let text = Harness::start_with(options).await;
    let response = text.run("a,b").await;
    assert_eq!(response.status, 200, "{:?}", response.body);
    let lines = text.log_lines_with("Started executing subtask: a");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].starts_with("[worker/runSubtask][inv_") && lines[0].contains("] INFO: "),
        "a text line, not JSON: {}",
        lines[0]
    );
    text.stop().await;

    // WARN hides the reference lines (INFO) even where RUST_LOG asks for them; a format that
    // Lambda does not have is warned about, in the default JSON.
    let mut options = Harness::options(Mode::Lambda);
    for (name, value) in [
        ("AWS_LAMBDA_LOG_LEVEL", "WARN"),
        ("AWS_LAMBDA_LOG_FORMAT", "xml"),
        ("RUST_LOG", "info"),
    ] {
        options = Harness::with_env(options, name, value);
    }
    let warn = Harness::start_with(options).await;
    let response = warn.run("a,b").await;
    assert_eq!(response.status, 200, "{:?}", response.body);
    assert!(
        warn.log_lines_with("Started executing subtask").is_empty(),
        "{}",
        warn.handler_log()
    );
    let warning = warn.log_lines_with("neither JSON nor Text");
    assert!(!warning.is_empty(), "{}", warn.handler_log());
    let line: Value = serde_json::from_str(&warning[0]).expect("a JSON line");
    assert_eq!(line["level"], "WARN", "{line}");
    warn.stop().await;
}
