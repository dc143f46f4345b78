//! `FANOUT_SERVE`: the executors as a deployment of their own. The hybrid layout here is the one
//! the split exists for: the coordinator on a long-running HTTP host, the executors as a Lambda
//! function (the bootstrap behind the stand-in) that scales on its own.

use fanout::admin::{DeploymentTarget, RegisterOptions};
use fanout_standin::process::{Managed, free_port, wait_until};
use fanout_tests::{Harness, Mode, handler_binary};
use serde_json::json;
use std::time::Duration;

const REFERENCE: &str = "get out of bed,shower,make coffee,have breakfast";
const REFERENCE_RESULT: &str =
    "get out of bed: DONE,shower: DONE,make coffee: DONE,have breakfast: DONE";

/// The coordinator half, over HTTP on loopback, serving what Restate signs for `h`.
async fn start_coordinator(h: &Harness, log: &std::path::Path) -> (Managed, String) {
    let port = free_port().expect("a free port");
    let mut command = tokio::process::Command::new(handler_binary());
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .env("FANOUT_SERVE", "coordinator")
        .env("FANOUT_MAX_SUBTASK_MS", "300");
    match &h.stack.identity_keys {
        Some(keys) => command.env("FANOUT_IDENTITY_KEYS", keys),
        None => command.env_remove("FANOUT_IDENTITY_KEYS"),
    };
    let process = Managed::spawn("the coordinator", command, log).expect("it starts");
    let address = format!("127.0.0.1:{port}");
    let up = wait_until(Duration::from_secs(20), || {
        let address = address.clone();
        async move { tokio::net::TcpStream::connect(address).await.is_ok() }
    })
    .await;
    assert!(up, "the coordinator never listened: {}", read(log));
    (process, format!("http://{address}"))
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_layout_runs_every_subtask_on_the_executor_function() {
    let executors = Harness::with_env(Harness::options(Mode::Lambda), "FANOUT_SERVE", "executor");
    let h = Harness::start_with(executors).await;
    let served: Vec<&str> = h
        .stack
        .deployment
        .services
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(
        served,
        ["executor"],
        "the function serves the executors alone"
    );

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("coordinator.log");
    let (coordinator, uri) = start_coordinator(&h, &log).await;
    let registered = h
        .stack
        .admin
        .register(&DeploymentTarget::Http { uri }, &RegisterOptions::default())
        .await
        .expect("the coordinator registers");
    let mut services: Vec<&str> = registered
        .services
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    services.sort();
    assert_eq!(services, ["fanIn", "worker"]);

    // The reference request answers exactly as in the single layout, for every strategy.
    for strategy in ["ledger", "in-order", "select-any"] {
        let response = h
            .run_with(REFERENCE, &[("x-fanout-fan-in", strategy)])
            .await;
        assert_eq!(response.status, 200, "{strategy}: {:?}", response.body);
        assert_eq!(
            response.body,
            json!({ "description": REFERENCE_RESULT }),
            "{strategy}"
        );
    }
    // Every subtask ran as executor/runSubtask, on the function, and only subtasks did.
    let targets = h
        .query(
            "SELECT target, count(*) AS n FROM sys_invocation \
             WHERE target LIKE '%/runSubtask' GROUP BY target",
        )
        .await;
    assert_eq!(
        targets,
        [json!({ "target": "executor/runSubtask", "n": 12 })],
        "{targets:?}"
    );
    // (Besides the registration's discovery.)
    let paths: Vec<String> = h
        .records()
        .into_iter()
        .filter_map(|r| r.path)
        .filter(|p| p != "/discover")
        .collect();
    assert!(!paths.is_empty());
    assert!(
        paths.iter().all(|p| p == "/invoke/executor/runSubtask"),
        "nothing of the coordinator's ran on the executor function: {paths:?}"
    );
    let coordinator_log = read(&log);
    assert!(
        coordinator_log.contains("Aggregated result: get out of bed: DONE")
            && !coordinator_log.contains("Started executing subtask"),
        "{coordinator_log}"
    );
    assert_eq!(
        h.log_lines_with("[executor/runSubtask]").len()
            + h.log_lines_with("\"executor/runSubtask\"").len(),
        2 * 12,
        "a started and a finished line per subtask, on the function: {}",
        h.handler_log()
    );

    // `fanout status` finds a split run's subtasks on the executor service.
    let last = h
        .query(
            "SELECT id FROM sys_invocation WHERE target = 'worker/run' \
             ORDER BY created_at DESC LIMIT 1",
        )
        .await;
    let id = last[0]["id"].as_str().unwrap();
    let status = h.fanout(&["status", id, "--output", "json"]).await;
    assert_eq!(status.code, Some(0), "{status:?}");
    assert_eq!(status.json()["summary"]["byStatus"]["completed"], json!(4));

    // The coordinator's own runSubtask is not for use: private to the ingress.
    let direct = h
        .ingress
        .post(
            "/worker/runSubtask",
            "application/json",
            r#"{"description": "x"}"#,
            None,
        )
        .await
        .expect("the ingress answers");
    assert!(
        (400..500).contains(&direct.status),
        "the ingress refuses the coordinator's runSubtask: {direct:?}"
    );
    coordinator.stop(Duration::from_secs(5)).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_layout_stops_the_handler_naming_the_variable() {
    let output = std::process::Command::new(handler_binary())
        .args(["--port", "0", "--bind", "127.0.0.1"])
        .env("FANOUT_SERVE", "both")
        .output()
        .expect("the handler runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("FANOUT_SERVE") && stderr.contains("coordinator or executor"),
        "{stderr}"
    );
}
