//! Batches (`x-fanout-batch-size`, `fanout invoke --batch-size K`): K subtasks per executor
//! invocation (`runBatch`), on the real restate-server. Each subtask is settled once, in
//! order; the cap counts batches; one subtask's failure stays its own; a batch that Restate
//! retries does not redo what it finished.

use fanout::admin::{AdminClient, DeploymentTarget, RegisterOptions};
use fanout::ingress::IngressClient;
use fanout::report::{BATCH_PATH, SUBTASK_PATH};
use fanout::restate_server::{RestateServer, ServerOptions};
use fanout_handler::{InvalidInput, Job, SubtaskFailure, Worker, http_endpoint};
use fanout_standin::process::free_port;
use fanout_tests::{Harness, Mode};
use restate_sdk::prelude::*;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// Distinct executor invocations of `path` among the stand-in's records.
fn invocations(records: &[fanout_standin::InvocationRecord], path: &str) -> usize {
    records
        .iter()
        .filter(|r| r.path.as_deref() == Some(path))
        .filter_map(|r| r.restate_invocation_id.as_deref())
        .collect::<HashSet<_>>()
        .len()
}

/// The most executor invocations whose Lambda activity overlapped.
fn most_in_flight(records: &[fanout_standin::InvocationRecord]) -> usize {
    let intervals = fanout::commands::bench::subtask_intervals(records);
    fanout::commands::bench::schedule(&intervals, usize::MAX).max_in_flight
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_in_batches_settles_every_subtask_once_in_order_within_the_cap() {
    let h = Harness::start(Mode::Lambda).await;
    // 53 chores with results coming back in a jumbled order; 53 is no multiple of a batch.
    let items: Vec<String> = (1..=53)
        .map(|i| format!("s{i}@{}", (i * 37) % 7 * 40))
        .collect();
    let expected: Vec<String> = items.iter().map(|i| format!("{i}: DONE")).collect();
    for (strategy, cap, batch) in [("ledger", 3usize, 5usize), ("select-any", 2, 4)] {
        let before = h.records().len();
        let logged_before = h.log_lines_with("Started executing subtask: ").len();
        let response = h
            .run_with(
                &items.join(","),
                &[
                    ("x-fanout-fan-in", strategy),
                    ("x-fanout-max-concurrency", &cap.to_string()),
                    ("x-fanout-batch-size", &batch.to_string()),
                ],
            )
            .await;
        assert_eq!(response.status, 200, "{strategy}: {:?}", response.body);
        assert_eq!(
            response.body["description"],
            expected.join(","),
            "{strategy}"
        );
        let records = h.records()[before..].to_vec();
        assert_eq!(invocations(&records, SUBTASK_PATH), 0, "{strategy}");
        let batches = invocations(&records, BATCH_PATH);
        assert!(
            (53usize.div_ceil(batch)..=53 / 2).contains(&batches),
            "{strategy}: {batches} batches of up to {batch} for 53 subtasks"
        );
        let most = most_in_flight(&records);
        assert!(
            (2..=cap).contains(&most),
            "{strategy}: {most} batches in flight with a cap of {cap}"
        );
        // Every subtask started exactly once, in some batch.
        let logged = h.log_lines_with("Started executing subtask: ");
        let mut started: HashMap<String, usize> = HashMap::new();
        for line in &logged[logged_before..] {
            // A JSON log line on Lambda: the label ends where the message's string does.
            let after = line.rsplit("Started executing subtask: ").next().unwrap();
            let label = after.split('"').next().unwrap().trim();
            *started.entry(label.to_owned()).or_default() += 1;
        }
        for item in &items {
            assert_eq!(
                started.get(item),
                Some(&1),
                "{strategy}: {item} {started:?}"
            );
        }
    }

    // A batch size is checked before anything starts, with what to do.
    for bad in ["0", "1001", "ten"] {
        let response = h.run_with("a,b", &[("x-fanout-batch-size", bad)]).await;
        assert_eq!(response.status, 400, "{bad}");
        assert!(
            response.message().contains("x-fanout-batch-size")
                && response.message().contains("batch size"),
            "{bad}: {}",
            response.message()
        );
    }
    let in_order = h
        .run_with(
            "a,b",
            &[
                ("x-fanout-batch-size", "2"),
                ("x-fanout-fan-in", "in-order"),
            ],
        )
        .await;
    assert_eq!(in_order.status, 400);
    assert!(
        in_order.message().contains("not in-order"),
        "{}",
        in_order.message()
    );

    // The CLI passes it, and refuses what the handler would.
    let before = h.records().len();
    let run = h
        .fanout(&[
            "invoke",
            "a,b,c,d,e",
            "--batch-size",
            "5",
            "--output",
            "json",
            "--progress",
            "none",
        ])
        .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        invocations(&h.records()[before..], BATCH_PATH),
        1,
        "{run:?}"
    );
    let zero = h.fanout(&["invoke", "a,b", "--batch-size", "0"]).await;
    assert_eq!(zero.code, Some(2), "{zero:?}");
    assert!(zero.stderr.contains("--batch-size"), "{zero:?}");

    // One lane holds the whole task (the cap covers it), but its calls and answers outweigh
    // what one lane invocation's journal may carry (1 MiB): it hands over to a fresh
    // invocation through the ledger, and the run still completes, in order.
    let heavy: Vec<String> = (1..=120)
        .map(|i| format!("h{i}{}", "x".repeat(10_000)))
        .collect();
    let before = h.records().len();
    let response = h.run_with(&heavy.join(","), &[]).await;
    assert_eq!(response.status, 200, "{:?}", response.message());
    let expected: Vec<String> = heavy.iter().map(|i| format!("{i}: DONE")).collect();
    assert!(
        response.body["description"] == expected.join(","),
        "the heavy run's result is not every outcome in order"
    );
    let lanes = invocations(&h.records()[before..], "/invoke/worker/runShard");
    assert!(lanes >= 2, "{lanes} lane invocation(s): no hand-over");
    h.stop().await;
}

/// Words whose `ctx.run` side effects are counted: `bad…` fails for good, `flaky…` fails
/// retryably the first time (the whole batch is then retried by Restate).
struct Words;

/// How many times each word's side effect ran (inside `ctx.run`, journaled).
static EFFECTS: Mutex<Option<HashMap<String, usize>>> = Mutex::new(None);
/// How many times each word was executed (outside the journal: every attempt).
static ATTEMPTS: Mutex<Option<HashMap<String, usize>>> = Mutex::new(None);

fn count(counter: &Mutex<Option<HashMap<String, usize>>>, word: &str) -> usize {
    let mut counts = counter.lock().unwrap();
    let count = counts
        .get_or_insert_with(HashMap::new)
        .entry(word.to_owned())
        .or_default();
    *count += 1;
    *count
}

fn counted(counter: &Mutex<Option<HashMap<String, usize>>>, word: &str) -> usize {
    counter
        .lock()
        .unwrap()
        .as_ref()
        .and_then(|m| m.get(word).copied())
        .unwrap_or(0)
}

impl Job for Words {
    type Task = Vec<String>;
    type Subtask = String;
    type Outcome = usize;
    type Output = Vec<Option<usize>>;

    fn split(&self, words: Vec<String>) -> Result<Vec<String>, InvalidInput> {
        Ok(words)
    }

    async fn execute(&self, ctx: &mut Context<'_>, word: String) -> Result<usize, HandlerError> {
        if word.starts_with("bad") {
            return Err(TerminalError::new_with_code(422, format!("{word} is bad")).into());
        }
        let measured = word.clone();
        let length = ctx
            .run(|| async move {
                count(&EFFECTS, &measured);
                Ok(measured.chars().count() as u64)
            })
            .name("measure")
            .await? as usize;
        if word.starts_with("flaky") && count(&ATTEMPTS, &word) == 1 {
            return Err(std::io::Error::other(format!("{word}: try again")).into());
        }
        Ok(length)
    }

    fn aggregate(&self, lengths: Vec<usize>) -> Vec<Option<usize>> {
        lengths.into_iter().map(Some).collect()
    }

    fn tolerates_failures(&self) -> bool {
        true
    }

    fn aggregate_partial(
        &self,
        outcomes: Vec<Result<usize, SubtaskFailure>>,
    ) -> Option<Vec<Option<usize>>> {
        Some(outcomes.into_iter().map(Result::ok).collect())
    }

    fn subtask_label(&self, word: &String) -> String {
        word.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subtask_fails_alone_in_its_batch_and_a_retried_batch_keeps_what_it_finished() {
    let port = free_port().unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    // The job's default execute_batch: one subtask after the other, each failure its own.
    let endpoint = tokio::spawn(http_endpoint::serve(Worker::new(Words).endpoint(), addr));
    let server = RestateServer::start(
        &fanout::tools::restate_server().unwrap(),
        &ServerOptions::default(),
    )
    .await
    .unwrap();
    AdminClient::new(&server.admin_url, None)
        .register(
            &DeploymentTarget::Http {
                uri: format!("http://127.0.0.1:{port}"),
            },
            &RegisterOptions::default(),
        )
        .await
        .unwrap();
    let ingress = IngressClient::new(&server.ingress_url, None);
    // One batch: "ab" is measured, then "flaky" fails retryably once; the retry replays "ab"
    // from the journal and goes on. "bad" fails for good and alone.
    let words = json!(["ab", "flaky", "bad one", "four", "xyz"]);
    let tolerant = ingress
        .clone()
        .with_header("x-fanout-batch-size", "5")
        .with_header("x-fanout-failure-policy", "tolerate:1")
        .run(&words, None)
        .await
        .unwrap();
    assert_eq!(tolerant.status, 200, "{:?}", tolerant.body);
    assert_eq!(tolerant.body, json!([2, 5, null, 4, 3]));
    assert_eq!(counted(&ATTEMPTS, "flaky"), 2, "Restate retried the batch");
    for word in ["ab", "flaky", "four"] {
        assert_eq!(
            counted(&EFFECTS, word),
            1,
            "{word}: the retried batch redid a finished side effect"
        );
    }

    // Fail-fast: the bad word fails the run, named.
    let strict = ingress
        .clone()
        .with_header("x-fanout-batch-size", "3")
        .run(&json!(["a", "bad two", "c", "d"]), None)
        .await
        .unwrap();
    assert_eq!(strict.status, 500, "{:?}", strict.body);
    assert!(strict.message().contains("bad two"), "{}", strict.message());
    let _: Value = strict.body;

    server.stop().await;
    endpoint.abort();
}
