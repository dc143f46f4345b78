//! Runs of items (`worker/runItems`): JSON Lines items read from S3, JSON Lines results written
//! to S3 in input order, neither through the coordinator's journal. On the real restate-server,
//! the real handler (HTTP endpoint and Lambda bootstrap behind the stand-in) and a real
//! S3-compatible store: moto in server mode, as `fanout local` runs it.

use fanout::items::{LOCAL_BUCKET, LocalS3};
use fanout_tests::{Harness, Mode, in_both_modes};
use serde_json::{Value, json};

/// A stack whose handler reaches a local S3 store.
struct Stack {
    h: Harness,
    s3: LocalS3,
    _dir: tempfile::TempDir,
}

async fn start(mode: Mode, env: &[(&str, &str)]) -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let s3 = LocalS3::start(&dir.path().join("moto.log"))
        .await
        .expect("moto starts (make tools-aws installs it)");
    let mut options = Harness::options(mode);
    for (name, value) in s3.env().into_iter() {
        options = Harness::with_env(options, &name, &value);
    }
    for (name, value) in env {
        options = Harness::with_env(options, name, value);
    }
    let h = Harness::start_with(options).await;
    Stack { h, s3, _dir: dir }
}

/// `n` chores, one per line: `{"description":"s1"}` …
fn chores(n: usize) -> String {
    (1..=n)
        .map(|i| format!("{{\"description\":\"s{i}\"}}\n"))
        .collect()
}

fn url(key: &str) -> String {
    format!("s3://{LOCAL_BUCKET}/{key}")
}

impl Stack {
    async fn put(&self, key: &str, body: String) {
        self.s3
            .client()
            .put_object()
            .bucket(LOCAL_BUCKET)
            .key(key)
            .body(body.into_bytes().into())
            .send()
            .await
            .expect("put");
    }

    async fn get(&self, key: &str) -> Option<String> {
        let object = self
            .s3
            .client()
            .get_object()
            .bucket(LOCAL_BUCKET)
            .key(key)
            .send()
            .await
            .ok()?;
        let bytes = object.body.collect().await.unwrap().into_bytes();
        Some(String::from_utf8(bytes.to_vec()).unwrap())
    }

    async fn keys(&self, prefix: &str) -> Vec<String> {
        let listed = self
            .s3
            .client()
            .list_objects_v2()
            .bucket(LOCAL_BUCKET)
            .prefix(prefix)
            .send()
            .await
            .expect("list");
        listed
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect()
    }

    /// `POST /worker/runItems` to the end: status and body.
    async fn run_items(
        &self,
        items: &str,
        results: &str,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .post(format!("{}/worker/runItems", self.h.stack.ingress_url))
            .json(&json!({ "items": url(items), "results": url(results) }));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("the ingress answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// How many invocations of `handler` (e.g. runSubtask) Restate has seen.
    async fn invocations_of(&self, handler: &str) -> usize {
        let rows = self
            .h
            .query(&format!(
                "SELECT count(*) AS n FROM sys_invocation WHERE target_handler_name = '{handler}'"
            ))
            .await;
        rows.first().and_then(|r| r["n"].as_u64()).unwrap_or(0) as usize
    }

    async fn stop(self) {
        self.h.stop().await;
        self.s3.stop().await;
    }
}

async fn items_in_results_out_in_input_order(mode: Mode) {
    let s = start(mode, &[]).await;
    s.put("in/items.jsonl", chores(300)).await;
    // A cap of 100 over 300 items: two lanes, claims, hand-overs, parts from many invocations.
    let (status, body) = s
        .run_items(
            "in/items.jsonl",
            "out/results.jsonl",
            &[("x-fanout-max-concurrency", "100")],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"items": 300, "succeeded": 300, "failed": 0, "results": url("out/results.jsonl")})
    );
    let results = s
        .get("out/results.jsonl")
        .await
        .expect("the results object");
    let expected: String = (1..=300)
        .map(|i| format!("{{\"description\":\"s{i}: DONE\"}}\n"))
        .collect();
    assert_eq!(results, expected);
    assert_eq!(
        s.keys("out/results.jsonl.fanout/").await,
        Vec::<String>::new(),
        "the index and the parts are deleted"
    );
    // A run of a few items: one lane holds them all and writes the results itself.
    s.put("in/few.jsonl", chores(3)).await;
    let (status, body) = s.run_items("in/few.jsonl", "out/few.jsonl", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        s.get("out/few.jsonl").await.unwrap(),
        "{\"description\":\"s1: DONE\"}\n{\"description\":\"s2: DONE\"}\n{\"description\":\"s3: DONE\"}\n"
    );
    assert!(s.keys("out/few.jsonl.fanout/").await.is_empty());
    s.stop().await;
}

async fn failed_items_are_error_objects_in_their_place(mode: Mode) {
    // A flaky chore fails for good at its first attempt.
    let s = start(
        mode,
        &[
            ("FANOUT_FLAKY_MS", "600000"),
            ("FANOUT_SUBTASK_MAX_ATTEMPTS", "1"),
            ("FANOUT_SUBTASK_AT_MAX_ATTEMPTS", "kill"),
        ],
    )
    .await;
    let flaky = [5usize, 17, 33];
    let items: String = (1..=40)
        .map(|i| {
            let name = if flaky.contains(&i) {
                format!("flaky s{i}")
            } else {
                format!("s{i}")
            };
            format!("{{\"description\":\"{name}\"}}\n")
        })
        .collect();
    s.put("in/items.jsonl", items).await;
    let (status, body) = s
        .run_items(
            "in/items.jsonl",
            "out/results.jsonl",
            &[
                ("x-fanout-failure-policy", "tolerate:3"),
                ("x-fanout-max-concurrency", "10"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["succeeded"], 37);
    assert_eq!(body["failed"], 3);
    let results = s.get("out/results.jsonl").await.unwrap();
    let lines: Vec<Value> = results
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 40);
    for (index, line) in lines.iter().enumerate() {
        let i = index + 1;
        if flaky.contains(&i) {
            let error = &line["error"];
            assert_eq!(error["index"], index, "{line}");
            assert_eq!(error["subtask"], format!("flaky s{i}"), "{line}");
            assert!(
                error["code"].is_u64() && error["message"].is_string(),
                "{line}"
            );
        } else {
            assert_eq!(line, &json!({ "description": format!("s{i}: DONE") }));
        }
    }
    // One failure more than tolerated fails the run with the tally, and writes no results.
    let (status, body) = s
        .run_items(
            "in/items.jsonl",
            "out/strict.jsonl",
            &[("x-fanout-failure-policy", "tolerate:2")],
        )
        .await;
    assert_eq!(status, 500, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("3 of 40 subtasks failed, more than the 2 tolerated"),
        "{message}"
    );
    assert!(s.get("out/strict.jsonl").await.is_none());
    s.stop().await;
}

async fn bad_items_are_refused_with_their_line_before_any_subtask(mode: Mode) {
    let s = start(mode, &[]).await;
    let mut lines: Vec<String> = chores(10).lines().map(str::to_owned).collect();
    let cases = [
        (6, "{\"description\": \"s7\"", "line 7 is not valid JSON"),
        (
            2,
            "{\"chore\": \"s3\"}",
            "line 3 is not a subtask of this job",
        ),
        (1, "", "line 2 is empty"),
    ];
    for (at, bad, expected) in cases {
        let original = std::mem::replace(&mut lines[at], bad.to_owned());
        s.put("in/bad.jsonl", lines.join("\n") + "\n").await;
        lines[at] = original;
        let (status, body) = s.run_items("in/bad.jsonl", "out/bad.jsonl", &[]).await;
        assert_eq!(status, 400, "{bad:?}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(expected) && message.contains("s3://fanout-local/in/bad.jsonl"),
            "{bad:?}: {message}"
        );
    }
    // What cannot be read at all, and locations that are not S3 objects.
    let (status, body) = s.run_items("in/missing.jsonl", "out/bad.jsonl", &[]).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("NoSuchKey"),
        "{body}"
    );
    let response = reqwest::Client::new()
        .post(format!("{}/worker/runItems", s.h.stack.ingress_url))
        .json(&json!({ "items": "items.jsonl", "results": url("out/x.jsonl") }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("s3://BUCKET/KEY"),
        "{body}"
    );
    s.put("in/good.jsonl", chores(2)).await;
    let (status, body) = s.run_items("in/good.jsonl", "in/good.jsonl", &[]).await;
    assert_eq!(status, 400, "{body}");
    // None of this started a lane or a subtask, nor wrote results.
    assert_eq!(s.invocations_of("runSubtask").await, 0);
    assert_eq!(s.invocations_of("runShard").await, 0);
    assert!(s.get("out/bad.jsonl").await.is_none());
    s.stop().await;
}

/// Batches of items: results in input order, a batch that fails takes down only its own
/// items (error objects in their places), and fewer executor invocations than items.
async fn batches_of_items_fill_the_results_in_order_and_fail_alone(mode: Mode) {
    let s = start(
        mode,
        &[
            ("FANOUT_FLAKY_MS", "600000"),
            ("FANOUT_SUBTASK_MAX_ATTEMPTS", "1"),
            ("FANOUT_SUBTASK_AT_MAX_ATTEMPTS", "kill"),
        ],
    )
    .await;
    let flaky = 61usize;
    let items: String = (1..=150)
        .map(|i| match i {
            i if i == flaky => format!("{{\"description\":\"flaky s{i}\"}}\n"),
            i => format!("{{\"description\":\"s{i}\"}}\n"),
        })
        .collect();
    s.put("in/items.jsonl", items).await;
    let (status, body) = s
        .run_items(
            "in/items.jsonl",
            "out/results.jsonl",
            &[
                ("x-fanout-batch-size", "8"),
                ("x-fanout-max-concurrency", "3"),
                ("x-fanout-failure-policy", "tolerate:8"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let failed = body["failed"].as_u64().unwrap() as usize;
    assert!((1..=8).contains(&failed), "one batch's items fail: {body}");
    assert_eq!(body["succeeded"].as_u64().unwrap() as usize + failed, 150);
    let results = s.get("out/results.jsonl").await.unwrap();
    let lines: Vec<Value> = results
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 150);
    let failed_at: Vec<usize> = (0..150)
        .filter(|&i| lines[i].get("error").is_some())
        .collect();
    assert_eq!(failed_at.len(), failed);
    assert!(failed_at.contains(&(flaky - 1)), "{failed_at:?}");
    assert!(
        failed_at.windows(2).all(|w| w[1] == w[0] + 1),
        "the failed items are one batch, consecutive: {failed_at:?}"
    );
    for (index, line) in lines.iter().enumerate() {
        if failed_at.contains(&index) {
            assert_eq!(line["error"]["index"], index, "{line}");
        } else {
            let i = index + 1;
            assert_eq!(line, &json!({ "description": format!("s{i}: DONE") }));
        }
    }
    assert_eq!(s.invocations_of("runSubtask").await, 0);
    let batches = s.invocations_of("runBatch").await;
    assert!(
        (19..=75).contains(&batches),
        "{batches} batches for 150 items"
    );
    s.stop().await;
}

in_both_modes!(
    items_in_results_out_in_input_order,
    batches_of_items_fill_the_results_in_order_and_fail_alone,
    failed_items_are_error_objects_in_their_place,
    bad_items_are_refused_with_their_line_before_any_subtask,
);

/// The coordinator's Lambda invocations of the last run: (count, largest request body).
fn coordinator_invocations(h: &Harness, since: usize) -> (usize, usize) {
    let coordinator: Vec<_> = h.records()[since..]
        .iter()
        .filter(|r| r.path.as_deref() == Some("/invoke/worker/runItems"))
        .map(|r| r.request_body_bytes.unwrap_or(r.request_bytes))
        .collect();
    (
        coordinator.len(),
        coordinator.iter().copied().max().unwrap_or(0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_journal_does_not_grow_with_the_items() {
    let s = start(Mode::Lambda, &[("FANOUT_MAX_SUBTASK_MS", "50")]).await;
    let mut largest = Vec::new();
    for n in [200, 2_000] {
        s.put(&format!("in/{n}.jsonl"), chores(n)).await;
        let before = s.h.records().len();
        let (status, body) = s
            .run_items(
                &format!("in/{n}.jsonl"),
                &format!("out/{n}.jsonl"),
                &[("x-fanout-max-concurrency", "100")],
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["succeeded"], n);
        let results = s.get(&format!("out/{n}.jsonl")).await.unwrap();
        assert_eq!(results.lines().count(), n);
        assert_eq!(
            results.lines().last().unwrap(),
            format!("{{\"description\":\"s{n}: DONE\"}}")
        );
        let (invocations, journal) = coordinator_invocations(&s.h, before);
        eprintln!("N = {n}: coordinator invoked {invocations} times, largest request {journal} B");
        assert!(
            (2..=3).contains(&invocations),
            "N = {n}: the coordinator was invoked {invocations} times"
        );
        assert!(journal <= 1_000_000, "N = {n}: {journal} B");
        largest.push(journal);
    }
    // Ten times the items, the same journal (give or take the digits of the count).
    assert!(
        largest[1] <= largest[0] + 64,
        "the coordinator's journal grew with the items: {largest:?}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_changed_during_a_run_fail_it_instead_of_hanging() {
    let s = start(Mode::Http, &[]).await;
    s.put("in/items.jsonl", chores(200)).await;
    let response = reqwest::Client::new()
        .post(format!("{}/worker/runItems/send", s.h.stack.ingress_url))
        .header("x-fanout-max-concurrency", "5")
        .json(&json!({ "items": url("in/items.jsonl"), "results": url("out/r.jsonl") }))
        .send()
        .await
        .unwrap();
    let id = response.json::<Value>().await.unwrap()["invocationId"]
        .as_str()
        .unwrap()
        .to_owned();
    // Once subtasks run, later claims read the items again: replace them.
    s.h.query_until(
        "SELECT count(*) AS n FROM sys_invocation WHERE target_handler_name = 'runSubtask'",
        std::time::Duration::from_secs(60),
        |rows| rows.first().and_then(|r| r["n"].as_u64()).unwrap_or(0) > 0,
    )
    .await;
    s.put("in/items.jsonl", chores(201)).await;
    let attached = reqwest::Client::new()
        .get(format!(
            "{}/restate/invocation/{id}/attach",
            s.h.stack.ingress_url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(attached.status(), 400);
    let body: Value = attached.json().await.unwrap();
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("changed while the run read it"),
        "{message}"
    );
    assert!(s.get("out/r.jsonl").await.is_none());
    s.stop().await;
}

/// `fanout invoke --items … --results …` against a stack serving its own S3 store, with the
/// variables `fanout local` prints for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_invoke_walks_file_to_file_and_s3_to_s3() {
    let mut options = Harness::options(Mode::Http);
    options.s3 = true;
    let h = Harness::start_with(options).await;
    let store = h.stack.s3.as_ref().expect("the stack's S3 store");
    let env = store.env();
    let client = store.client();
    let dir = tempfile::tempdir().unwrap();
    let fanout = |args: Vec<String>| {
        let mut command = h.fanout_command(&args.iter().map(String::as_str).collect::<Vec<_>>());
        command
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("AWS_CONFIG_FILE", "/nonexistent/aws/config")
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/aws/credentials",
            )
            .env_remove("FANOUT_STAGE");
        async move { fanout_tests::CliRun::from(command.output().await.unwrap()) }
    };
    let staged = || async {
        client
            .list_objects_v2()
            .bucket(LOCAL_BUCKET)
            .prefix("staging/")
            .send()
            .await
            .unwrap()
            .contents()
            .len()
    };
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();

    // File to file.
    std::fs::write(path("items.jsonl"), chores(50)).unwrap();
    let run = fanout(
        [
            "invoke",
            "--items",
            &path("items.jsonl"),
            "--results",
            &path("results.jsonl"),
            "--max-concurrency",
            "20",
            "--progress",
            "none",
            "--output",
            "json",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    let expected: String = (1..=50)
        .map(|i| format!("{{\"description\":\"s{i}: DONE\"}}\n"))
        .collect();
    assert_eq!(
        std::fs::read_to_string(path("results.jsonl")).unwrap(),
        expected
    );
    assert!(run.stdout.contains("\"succeeded\":50"), "{run:?}");
    assert!(run.stderr.contains("50 items in"), "{run:?}");
    assert_eq!(
        staged().await,
        0,
        "the staged items and results are removed"
    );

    // S3 to S3.
    client
        .put_object()
        .bucket(LOCAL_BUCKET)
        .key("walk/items.jsonl")
        .body(chores(5).into_bytes().into())
        .send()
        .await
        .unwrap();
    let run = fanout(
        [
            "invoke",
            "--items",
            &url("walk/items.jsonl"),
            "--results",
            &url("walk/results.jsonl"),
            "--progress",
            "none",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    let object = client
        .get_object()
        .bucket(LOCAL_BUCKET)
        .key("walk/results.jsonl")
        .send()
        .await
        .unwrap();
    let bytes = object.body.collect().await.unwrap().into_bytes();
    assert_eq!(
        bytes.as_ref(),
        chores(5).replace("\"}", ": DONE\"}").as_bytes()
    );

    // A malformed line is refused by the CLI before anything is uploaded or started; a line
    // the job cannot read, by the handler, before any subtask starts.
    std::fs::write(
        path("bad.jsonl"),
        "{\"description\":\"a\"}\n\n{\"description\":\"b\"}\n{\"description\":\n",
    )
    .unwrap();
    let bad = |file: &str| {
        [
            "invoke",
            "--items",
            &path(file),
            "--results",
            &path("never.jsonl"),
            "--progress",
            "none",
        ]
        .map(String::from)
        .to_vec()
    };
    let run = fanout(bad("bad.jsonl")).await;
    assert_eq!(run.code, Some(4), "{run:?}");
    assert!(run.stderr.contains("line 2 is empty"), "{run:?}");
    std::fs::write(
        path("bad.jsonl"),
        "{\"description\":\"a\"}\n{\"description\":\n",
    )
    .unwrap();
    let run = fanout(bad("bad.jsonl")).await;
    assert_eq!(run.code, Some(4), "{run:?}");
    assert!(run.stderr.contains("line 2 is not valid JSON"), "{run:?}");
    std::fs::write(
        path("shape.jsonl"),
        "{\"description\":\"a\"}\n{\"chore\":\"b\"}\n",
    )
    .unwrap();
    let run = fanout(bad("shape.jsonl")).await;
    assert_eq!(run.code, Some(4), "{run:?}");
    assert!(
        run.stderr.contains("line 2 is not a subtask of this job"),
        "{run:?}"
    );
    assert!(!dir.path().join("never.jsonl").exists());
    assert_eq!(staged().await, 0, "nothing is left staged");
    let subtasks = h
        .query("SELECT count(*) AS n FROM sys_invocation WHERE target_handler_name = 'runSubtask'")
        .await;
    assert_eq!(subtasks[0]["n"], 55, "only the two good runs ran subtasks");

    // File to file in batches: the same results, in batch invocations.
    let run = fanout(
        [
            "invoke",
            "--items",
            &path("items.jsonl"),
            "--results",
            &path("batched.jsonl"),
            "--batch-size",
            "9",
            "--progress",
            "none",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        std::fs::read_to_string(path("batched.jsonl")).unwrap(),
        expected
    );
    let batches = h
        .query("SELECT count(*) AS n FROM sys_invocation WHERE target_handler_name = 'runBatch'")
        .await;
    let batches = batches[0]["n"].as_u64().unwrap();
    assert!(
        (6..=25).contains(&batches),
        "{batches} batches for 50 items"
    );
    h.stop().await;
}

/// `fanout cancel` stops a run of items as it stops an inline run: the coordinator, its lanes
/// and the subtasks in flight; nothing more starts and no results are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_cancel_stops_a_run_of_items() {
    let s = start(Mode::Http, &[("FANOUT_MAX_SUBTASK_MS", "60000")]).await;
    s.put("in/items.jsonl", chores(100)).await;
    let response = reqwest::Client::new()
        .post(format!("{}/worker/runItems/send", s.h.stack.ingress_url))
        .header("x-fanout-max-concurrency", "5")
        .json(&json!({ "items": url("in/items.jsonl"), "results": url("out/r.jsonl") }))
        .send()
        .await
        .unwrap();
    let id = response.json::<Value>().await.unwrap()["invocationId"]
        .as_str()
        .unwrap()
        .to_owned();
    s.h.query_until(
        "SELECT count(*) AS n FROM sys_invocation WHERE target_handler_name = 'runSubtask'",
        std::time::Duration::from_secs(60),
        |rows| rows.first().and_then(|r| r["n"].as_u64()).unwrap_or(0) >= 5,
    )
    .await;

    let cancelled = s.h.fanout(&["cancel", &id, "--output", "json"]).await;
    assert_eq!(cancelled.code, Some(0), "{cancelled:?}");
    assert_eq!(cancelled.json()["outcome"], "cancelled", "{cancelled:?}");
    let started_by_then = s.invocations_of("runSubtask").await;
    let left =
        s.h.query_until(
            "SELECT target, status FROM sys_invocation WHERE status != 'completed'",
            std::time::Duration::from_secs(40),
            |rows| rows.is_empty(),
        )
        .await;
    assert!(
        left.is_empty(),
        "still unfinished after the cancel: {left:?}"
    );
    assert_eq!(
        s.invocations_of("runSubtask").await,
        started_by_then,
        "subtasks kept starting after the cancel"
    );
    assert!(s.get("out/r.jsonl").await.is_none());
    // `fanout runs` lists runs of items with the inline ones.
    let runs = s.h.fanout(&["runs", "--output", "json"]).await;
    assert_eq!(runs.code, Some(0), "{runs:?}");
    let listed = runs.json();
    let run = listed["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["invocationId"] == id.as_str())
        .unwrap_or_else(|| panic!("the run of items is not listed: {listed}"));
    assert_eq!(
        (
            run["target"].as_str(),
            run["status"].as_str(),
            run["width"].as_u64()
        ),
        (Some("worker/runItems"), Some("cancelled"), Some(100)),
        "{run}"
    );
    s.stop().await;
}
