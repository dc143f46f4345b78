//! `parallel::run_all`: a subtask that works through several items at once, each side effect's
//! outcome journaled, on a real restate-server. A retry round runs only what failed retryably;
//! what succeeded never runs again, and what failed terminally is recorded, not retried.

use fanout::admin::{AdminClient, DeploymentTarget, RegisterOptions, sql_string};
use fanout::ingress::IngressClient;
use fanout::process::free_port;
use fanout::restate_server::{RestateServer, ServerOptions};
use fanout_handler::parallel::{RunAll, SideEffectError, run_all};
use fanout_handler::{InvalidInput, Job, Worker, http_endpoint};
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
