//! `fanout redrive RUN_ID`: the items of a finished run of items (`worker/runItems`) that have
//! no successful outcome are run again, never the ones that succeeded, and their outcomes are
//! merged into the run's results in input order. On the real restate-server, the real handler
//! (HTTP endpoint) and a real S3-compatible store (moto in server mode, as `fanout local` runs
//! it).
//!
//! An item fails the way the failure-policy tests make one fail: a chore named `flaky…` fails
//! while `FANOUT_FLAKY_MS` lasts, and with one attempt and kill-at-limit Restate gives up on it
//! at once. Between the run and its redrive the handler is started again without
//! `FANOUT_FLAKY_MS`: the fix deployed, as a user would before redriving.

use fanout::exit;
use fanout::items::{LOCAL_BUCKET, LocalS3};
use fanout_tests::{CliRun, Harness, Mode};
use serde_json::{Value, json};
use std::collections::BTreeMap;

const FLAKY_ENV: [(&str, &str); 3] = [
    ("FANOUT_FLAKY_MS", "600000"),
    ("FANOUT_SUBTASK_MAX_ATTEMPTS", "1"),
    ("FANOUT_SUBTASK_AT_MAX_ATTEMPTS", "kill"),
];

/// A stack (HTTP handler) whose handler reaches a local S3 store.
struct Stack {
    h: Harness,
    s3: LocalS3,
    dir: tempfile::TempDir,
}

async fn start(env: &[(&str, &str)]) -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let s3 = LocalS3::start(&dir.path().join("moto.log"))
        .await
        .expect("moto starts (make tools-aws installs it)");
    let mut options = Harness::options(Mode::Http);
    for (name, value) in s3.env().into_iter() {
        options = Harness::with_env(options, &name, &value);
    }
    for (name, value) in env {
        options = Harness::with_env(options, name, value);
    }
    let h = Harness::start_with(options).await;
    Stack { h, s3, dir }
}

fn url(key: &str) -> String {
    format!("s3://{LOCAL_BUCKET}/{key}")
}

/// One chore per line; those at `flaky` (1-based) are named `flaky…`.
fn chores(n: usize, flaky: &[usize]) -> String {
    (1..=n)
        .map(|i| {
            let name = if flaky.contains(&i) {
                format!("flaky s{i}")
            } else {
                format!("s{i}")
            };
            format!("{{\"description\":\"{name}\"}}\n")
        })
        .collect()
}

/// The results of `chores(n, _)` once every item succeeded.
fn all_done(n: usize, flaky: &[usize]) -> String {
    chores(n, flaky).replace("\"}\n", ": DONE\"}\n")
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

    async fn metadata(&self, key: &str) -> std::collections::HashMap<String, String> {
        let head = self
            .s3
            .client()
            .head_object()
            .bucket(LOCAL_BUCKET)
            .key(key)
            .send()
            .await
            .expect("head");
        head.metadata().cloned().unwrap_or_default()
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

    /// Starts `worker/runItems` (`/send`) and waits for it: its id, status and body.
    async fn run_items(
        &self,
        items: &str,
        results: &str,
        headers: &[(&str, &str)],
    ) -> (String, u16, Value) {
        let id = self
            .send(
                "worker/runItems",
                json!({ "items": url(items), "results": url(results) }),
                headers,
            )
            .await;
        let (status, body) = self.attach(&id).await;
        (id, status, body)
    }

    async fn send(&self, target: &str, body: Value, headers: &[(&str, &str)]) -> String {
        let mut request = reqwest::Client::new()
            .post(format!("{}/{target}/send", self.h.stack.ingress_url))
            .json(&body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let answer: Value = request
            .send()
            .await
            .expect("the ingress answers")
            .json()
            .await
            .unwrap();
        answer["invocationId"]
            .as_str()
            .unwrap_or_else(|| panic!("no invocation id: {answer}"))
            .to_owned()
    }

    async fn attach(&self, id: &str) -> (u16, Value) {
        let response = reqwest::Client::new()
            .get(format!(
                "{}/restate/invocation/{id}/attach",
                self.h.stack.ingress_url
            ))
            .send()
            .await
            .expect("the ingress answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `fanout redrive ARGS` with the store's environment.
    async fn redrive(&self, args: &[&str]) -> CliRun {
        let mut all = vec!["redrive"];
        all.extend_from_slice(args);
        self.h
            .fanout_command(&all)
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("FANOUT_STAGE")
            .envs(self.s3.env())
            .output()
            .await
            .expect("the fanout binary runs")
            .into()
    }

    /// The description of every `runSubtask` invocation Restate has seen, with how many times
    /// each ran.
    async fn subtask_runs(&self) -> BTreeMap<String, usize> {
        let rows = self
            .h
            .query(
                "SELECT entry_json FROM sys_journal WHERE entry_type = 'Command: Input' AND id IN \
                 (SELECT id FROM sys_invocation WHERE target_handler_name = 'runSubtask')",
            )
            .await;
        let mut runs = BTreeMap::new();
        for row in rows {
            let entry: Value = serde_json::from_str(row["entry_json"].as_str().unwrap()).unwrap();
            let payload: Vec<u8> = entry["Command"]["Input"]["payload"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8)
                .collect();
            let item: Value = serde_json::from_slice(&payload).unwrap();
            *runs
                .entry(item["description"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        runs
    }

    /// The descriptions of the subtasks that succeeded so far.
    async fn succeeded(&self) -> Vec<String> {
        let rows = self
            .h
            .query(
                "SELECT entry_json FROM sys_journal WHERE entry_type = 'Command: Input' AND id IN \
                 (SELECT id FROM sys_invocation WHERE target_handler_name = 'runSubtask' \
                 AND completion_result = 'success')",
            )
            .await;
        rows.iter()
            .map(|row| {
                let entry: Value =
                    serde_json::from_str(row["entry_json"].as_str().unwrap()).unwrap();
                let payload: Vec<u8> = entry["Command"]["Input"]["payload"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| b.as_u64().unwrap() as u8)
                    .collect();
                let item: Value = serde_json::from_slice(&payload).unwrap();
                item["description"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    /// Deploys the fix: the handler again, without `FANOUT_FLAKY_MS`.
    async fn fix_handler(&mut self) {
        self.h.stack.set_http_handler_env("FANOUT_FLAKY_MS", None);
        self.h
            .stack
            .restart_http_handler()
            .await
            .expect("the handler starts again");
    }

    async fn stop(self) {
        self.h.stop().await;
        self.s3.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tolerant_run_redriven_has_every_outcome_and_ran_only_its_failures() {
    let mut s = start(&FLAKY_ENV).await;
    let flaky = [5usize, 17, 33];
    s.put("in/items.jsonl", chores(40, &flaky)).await;
    let (id, status, body) = s
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
    assert_eq!(body["failed"], 3, "{body}");
    let before = s.subtask_runs().await;
    assert_eq!(before.values().sum::<usize>(), 40);

    s.fix_handler().await;
    let redrive = s
        .redrive(&[&id, "--output", "json", "--progress", "none"])
        .await;
    assert_eq!(redrive.code, Some(0), "{redrive:?}");
    let report = redrive.json();
    assert_eq!(report["invocationId"], id.as_str());
    assert_eq!(report["outcome"], "succeeded", "{report}");
    assert_eq!(report["items"], 40);
    assert_eq!(report["redriven"], 3);
    assert_eq!(report["succeeded"], 3);
    assert_eq!(report["stillFailed"], 0);
    assert_eq!(report["results"], url("out/results.jsonl"));
    assert!(report["redriveId"].as_str().unwrap().starts_with("inv_"));

    // Every item's outcome, in input order, in the run's own results object.
    assert_eq!(
        s.get("out/results.jsonl").await.unwrap(),
        all_done(40, &flaky)
    );
    let metadata = s.metadata("out/results.jsonl").await;
    assert_eq!(metadata.get("fanout-run"), Some(&id));
    assert_eq!(
        metadata.get("fanout-redrive").map(String::as_str),
        Some("1")
    );
    assert_eq!(metadata.get("fanout-failed").map(String::as_str), Some("0"));
    // Only the three failed items ran again; every item that had succeeded ran once.
    let after = s.subtask_runs().await;
    for (description, runs) in &after {
        let expected = if description.starts_with("flaky") {
            2
        } else {
            1
        };
        assert_eq!(*runs, expected, "{description} ran {runs} times");
    }
    assert_eq!(after.values().sum::<usize>(), 43);
    assert_eq!(
        s.keys("out/results.jsonl.fanout/").await,
        Vec::<String>::new(),
        "the redrive's scratch objects are deleted"
    );

    // Again: nothing left to redrive (exit 0), nothing runs; --results FILE fetches the
    // merged results.
    let file = s.dir.path().join("results.jsonl");
    let again = s
        .redrive(&[&id, "--output", "json", "--results", file.to_str().unwrap()])
        .await;
    assert_eq!(again.code, Some(0), "{again:?}");
    let report = again.json();
    assert_eq!(report["outcome"], "nothing to redrive", "{report}");
    assert_eq!(report["redriven"], 0);
    assert_eq!(report["stillFailed"], 0);
    assert!(
        again.stderr.contains("nothing to redrive"),
        "{}",
        again.stderr
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        all_done(40, &flaky)
    );
    assert_eq!(s.subtask_runs().await.values().sum::<usize>(), 43);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fail_fast_run_that_stopped_early_is_finished_by_redrive() {
    let mut s = start(&FLAKY_ENV).await;
    let flaky = [3usize];
    s.put("in/items.jsonl", chores(20, &flaky)).await;
    // Two at a time: item 3 starts when item 1 or 2 has succeeded, fails, and stops the run
    // before most items start.
    let (id, status, body) = s
        .run_items(
            "in/items.jsonl",
            "out/results.jsonl",
            &[
                ("x-fanout-failure-policy", "fail-fast"),
                ("x-fanout-max-concurrency", "2"),
            ],
        )
        .await;
    assert_eq!(status, 500, "{body}");
    assert!(
        s.get("out/results.jsonl").await.is_none(),
        "a failed run writes no results"
    );
    let succeeded = s.succeeded().await;
    let ran_before: usize = s.subtask_runs().await.values().sum();
    assert!(
        !succeeded.is_empty() && ran_before < 20,
        "the run stopped early after some successes: {succeeded:?}, {ran_before} ran"
    );

    s.fix_handler().await;
    let redrive = s
        .redrive(&[&id, "--output", "json", "--progress", "none"])
        .await;
    assert_eq!(redrive.code, Some(0), "{redrive:?}");
    let report = redrive.json();
    assert_eq!(report["outcome"], "succeeded", "{report}");
    // The failed item and every item that never ran or was stopped; not those that succeeded.
    assert_eq!(report["redriven"], 20 - succeeded.len(), "{report}");
    assert_eq!(report["succeeded"], 20 - succeeded.len());
    assert_eq!(report["stillFailed"], 0);
    assert_eq!(
        s.get("out/results.jsonl").await.unwrap(),
        all_done(20, &flaky)
    );
    let after = s.subtask_runs().await;
    for description in &succeeded {
        assert_eq!(
            after[description], 1,
            "{description} succeeded, yet ran again"
        );
    }
    assert_eq!(after.len(), 20, "every item ran: {after:?}");
    assert_eq!(
        after.values().sum::<usize>(),
        ran_before + 20 - succeeded.len()
    );
    assert_eq!(
        s.metadata("out/results.jsonl").await.get("fanout-run"),
        Some(&id)
    );
    assert!(
        s.keys("out/results.jsonl.fanout/").await.is_empty(),
        "the failed run's parts and index and the redrive's objects are deleted"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_be_redriven_is_refused_with_its_reason() {
    let s = start(&[]).await;
    s.put("in/items.jsonl", chores(5, &[])).await;
    let (done, status, body) = s
        .run_items("in/items.jsonl", "out/results.jsonl", &[])
        .await;
    assert_eq!(status, 200, "{body}");

    // Every item succeeded: nothing to redrive, exit 0, nothing runs.
    let nothing = s.redrive(&[&done]).await;
    assert_eq!(nothing.code, Some(0), "{nothing:?}");
    assert!(
        nothing.stderr.contains("nothing to redrive"),
        "{}",
        nothing.stderr
    );
    let summary: Value = serde_json::from_str(nothing.stdout.trim()).unwrap();
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(s.subtask_runs().await.values().sum::<usize>(), 5);

    // Not an id; an id Restate does not know.
    let bad = s.redrive(&["nope"]).await;
    assert_eq!(bad.code, Some(exit::BAD_INPUT.into()), "{bad:?}");
    assert!(
        bad.stderr.contains("is not an invocation id"),
        "{}",
        bad.stderr
    );
    let undecodable = s.redrive(&["inv_1aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]).await;
    assert_eq!(
        undecodable.code,
        Some(exit::BAD_INPUT.into()),
        "{undecodable:?}"
    );
    let unknown = s
        .redrive(&["inv_1d7ECWP1bH4t5dNhlnBYDTAV59WL5YJsYh", "--output", "json"])
        .await;
    assert_eq!(unknown.code, Some(exit::UNKNOWN_ID.into()), "{unknown:?}");
    assert_eq!(unknown.json()["outcome"], "unknown");

    // A fan-out of a description is no run of items.
    let inline = s
        .send("worker/run", json!({ "description": "a,b" }), &[])
        .await;
    assert_eq!(s.attach(&inline).await.0, 200);
    let not_items = s.redrive(&[&inline]).await;
    assert_eq!(
        not_items.code,
        Some(exit::BAD_INPUT.into()),
        "{not_items:?}"
    );
    assert!(
        not_items.stderr.contains("not of worker/runItems"),
        "{}",
        not_items.stderr
    );

    // A run refused before any item ran.
    s.put("in/bad.jsonl", "{\"description\":\"a\"}\nnot json\n".into())
        .await;
    let (refused, status, _) = s.run_items("in/bad.jsonl", "out/bad.jsonl", &[]).await;
    assert_eq!(status, 400);
    let refusal = s.redrive(&[&refused]).await;
    assert_eq!(refusal.code, Some(exit::BAD_INPUT.into()), "{refusal:?}");
    assert!(
        refusal.stderr.contains("refused before any item ran")
            && refusal.stderr.contains("line 2 is not valid JSON"),
        "{}",
        refusal.stderr
    );

    // Still running.
    s.put("in/slow.jsonl", "{\"description\":\"slow@60000\"}\n".into())
        .await;
    let slow = s
        .send(
            "worker/runItems",
            json!({ "items": url("in/slow.jsonl"), "results": url("out/slow.jsonl") }),
            &[],
        )
        .await;
    let running = s.redrive(&[&slow]).await;
    assert_eq!(running.code, Some(exit::OTHER.into()), "{running:?}");
    assert!(
        running.stderr.contains("is still") && running.stderr.contains("fanout attach"),
        "{}",
        running.stderr
    );

    // Items changed since the run read them: its indexes would point at other items.
    s.put("in/items.jsonl", chores(6, &[])).await;
    let changed = s.redrive(&[&done]).await;
    assert_eq!(changed.code, Some(exit::BAD_INPUT.into()), "{changed:?}");
    assert!(
        changed.stderr.contains("changed since the run read them"),
        "{}",
        changed.stderr
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_that_fails_again_keeps_its_place_and_a_killed_one_is_resumed() {
    use tokio::io::AsyncBufReadExt;
    let mut s = start(&FLAKY_ENV).await;
    // Once fixed, the flaky chores take 2 s: time to kill a waiting redrive.
    let flaky = [4usize, 12, 25];
    let name = |i: usize| {
        if flaky.contains(&i) {
            format!("flaky s{i}@2000")
        } else {
            format!("s{i}")
        }
    };
    let items: String = (1..=30)
        .map(|i| format!("{{\"description\":\"{}\"}}\n", name(i)))
        .collect();
    let done: String = (1..=30)
        .map(|i| format!("{{\"description\":\"{}: DONE\"}}\n", name(i)))
        .collect();
    s.put("in/items.jsonl", items).await;
    let (id, status, body) = s
        .run_items(
            "in/items.jsonl",
            "out/results.jsonl",
            &[("x-fanout-failure-policy", "tolerate:3")],
        )
        .await;
    assert_eq!((status, &body["failed"]), (200, &json!(3)), "{body}");

    // Not fixed yet, fail-fast: the redrive run fails (exit 3); the failures stay in place.
    let again = s.redrive(&[&id, "--fail-fast", "--output", "json"]).await;
    assert_eq!(again.code, Some(exit::RUN_FAILED.into()), "{again:?}");
    let report = again.json();
    assert_eq!(report["outcome"], "failed", "{report}");
    assert_eq!(
        (report["redriven"].clone(), report["stillFailed"].clone()),
        (json!(3), json!(3))
    );
    let check_failures_in_place = |results: String| {
        let lines: Vec<Value> = results
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 30);
        for (index, line) in lines.iter().enumerate() {
            if flaky.contains(&(index + 1)) {
                assert_eq!(line["error"]["index"], index, "{line}");
                assert_eq!(line["error"]["subtask"], name(index + 1), "{line}");
            } else {
                assert_eq!(line["description"], format!("{}: DONE", name(index + 1)));
            }
        }
    };
    check_failures_in_place(s.get("out/results.jsonl").await.unwrap());
    // Tolerant: the redrive run succeeds (exit 0) with its failures tolerated, still in place.
    let tolerated = s
        .redrive(&[&id, "--tolerate-failures", "3", "--output", "json"])
        .await;
    assert_eq!(tolerated.code, Some(0), "{tolerated:?}");
    let report = tolerated.json();
    assert_eq!(
        (report["outcome"].clone(), report["stillFailed"].clone()),
        (json!("succeeded"), json!(3))
    );
    check_failures_in_place(s.get("out/results.jsonl").await.unwrap());
    assert_eq!(
        s.metadata("out/results.jsonl")
            .await
            .get("fanout-redrive")
            .map(String::as_str),
        Some("2"),
        "two redrives merged"
    );

    // Fixed. A redrive killed while it waits leaves its run going; the next one attaches to
    // that run (same idempotency key) instead of running the items again, and merges.
    s.fix_handler().await;
    let mut waiting =
        s.h.fanout_command(&["redrive", &id, "--progress", "plain"])
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL")
            .envs(s.s3.env())
            .spawn()
            .expect("fanout runs");
    let mut stderr = tokio::io::BufReader::new(waiting.stderr.take().unwrap()).lines();
    let mut started = None;
    while let Some(line) = stderr.next_line().await.unwrap() {
        if let Some(at) = line.find("started inv_") {
            started = line[at + "started ".len()..]
                .split(';')
                .next()
                .map(str::to_owned);
            break;
        }
    }
    let started = started.expect("the redrive says which run it started");
    waiting.kill().await.unwrap();
    let resumed = s.redrive(&[&id, "--output", "json"]).await;
    assert_eq!(resumed.code, Some(0), "{resumed:?}");
    let report = resumed.json();
    assert_eq!(report["resumed"], true, "{report}");
    assert_eq!(report["redriveId"], started.as_str());
    assert_eq!(
        (report["redriven"].clone(), report["stillFailed"].clone()),
        (json!(3), json!(0))
    );
    assert_eq!(s.get("out/results.jsonl").await.unwrap(), done);
    // Every item succeeded exactly once over the run and its three redrives.
    let succeeded = s.succeeded().await;
    assert_eq!(succeeded.len(), 30, "{succeeded:?}");
    let runs = s.subtask_runs().await;
    for i in (1..=30).filter(|i| !flaky.contains(i)) {
        assert_eq!(runs[&name(i)], 1, "{} ran again", name(i));
    }
    assert!(s.keys("out/results.jsonl.fanout/").await.is_empty());
    s.stop().await;
}

/// The walk from files: `fanout invoke --items FILE --results FILE` stages the items, fetches
/// the results and removes both staged objects; `fanout redrive ID --items FILE --results
/// FILE` stages the same items again (refusing other bytes) and merges into the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_from_files_is_redriven_from_the_same_files() {
    let mut s = start(&FLAKY_ENV).await;
    let flaky = [2usize, 9];
    let dir = s.dir.path().to_owned();
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let (items, results) = (path("items.jsonl"), path("results.jsonl"));
    std::fs::write(&items, chores(12, &flaky)).unwrap();
    let run: CliRun =
        s.h.fanout_command(&[
            "invoke",
            "--items",
            &items,
            "--results",
            &results,
            "--tolerate-failures",
            "2",
            "--output",
            "json",
            "--progress",
            "none",
        ])
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("FANOUT_STAGE")
        .envs(s.s3.env())
        .output()
        .await
        .expect("fanout runs")
        .into();
    assert_eq!(run.code, Some(0), "{run:?}");
    let id = run.json()["invocationId"].as_str().unwrap().to_owned();
    let failed = std::fs::read_to_string(&results).unwrap();
    assert_eq!(
        failed
            .lines()
            .filter(|l| l.starts_with("{\"error\""))
            .count(),
        2
    );

    s.fix_handler().await;
    // Other bytes than the run read are refused, and not left behind.
    let other = path("other.jsonl");
    std::fs::write(&other, chores(12, &[])).unwrap();
    let wrong = s
        .redrive(&[&id, "--items", &other, "--results", &results])
        .await;
    assert_eq!(wrong.code, Some(exit::BAD_INPUT.into()), "{wrong:?}");
    assert!(
        wrong.stderr.contains("is not the items"),
        "{}",
        wrong.stderr
    );

    let redrive = s
        .redrive(&[
            &id,
            "--items",
            &items,
            "--results",
            &results,
            "--output",
            "json",
        ])
        .await;
    assert_eq!(redrive.code, Some(0), "{redrive:?}");
    let report = redrive.json();
    assert_eq!(
        (report["redriven"].clone(), report["stillFailed"].clone()),
        (json!(2), json!(0)),
        "{report}"
    );
    assert_eq!(report["resultsFile"], results.as_str());
    assert_eq!(
        std::fs::read_to_string(&results).unwrap(),
        all_done(12, &flaky)
    );
    let runs = s.subtask_runs().await;
    assert_eq!(runs.values().sum::<usize>(), 14, "{runs:?}");
    s.stop().await;
}

/// A cancelled run is finished like a failed one: what succeeded before the cancel is kept,
/// the rest (cancelled in flight, never started) runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_is_finished_by_redrive() {
    let s = start(&[]).await;
    // Four at a time: s1..s4 are done at once, then s5..s8 take 3 s while the rest waits.
    let name = |i: usize| {
        if i <= 4 {
            format!("s{i}@10")
        } else {
            format!("s{i}@3000")
        }
    };
    let items: String = (1..=16)
        .map(|i| format!("{{\"description\":\"{}\"}}\n", name(i)))
        .collect();
    let done: String = (1..=16)
        .map(|i| format!("{{\"description\":\"{}: DONE\"}}\n", name(i)))
        .collect();
    s.put("in/items.jsonl", items).await;
    let id = s
        .send(
            "worker/runItems",
            json!({ "items": url("in/items.jsonl"), "results": url("out/results.jsonl") }),
            &[("x-fanout-max-concurrency", "4")],
        )
        .await;
    s.h.query_until(
        "SELECT count(*) AS n FROM sys_invocation WHERE target_handler_name = 'runSubtask' \
         AND completion_result = 'success'",
        std::time::Duration::from_secs(60),
        |rows| rows.first().and_then(|r| r["n"].as_u64()).unwrap_or(0) >= 4,
    )
    .await;
    s.h.stack
        .admin
        .cancel_invocation(&id)
        .await
        .expect("cancelled");
    let (status, body) = s.attach(&id).await;
    assert_eq!(status, 409, "{body}");
    let succeeded = s.succeeded().await;
    assert!(
        succeeded.len() >= 4 && succeeded.len() < 16,
        "{succeeded:?}"
    );
    let ran_before: usize = s.subtask_runs().await.values().sum();

    let redrive = s
        .redrive(&[&id, "--output", "json", "--progress", "none"])
        .await;
    assert_eq!(redrive.code, Some(0), "{redrive:?}");
    let report = redrive.json();
    assert_eq!(report["redriven"], 16 - succeeded.len(), "{report}");
    assert_eq!(s.get("out/results.jsonl").await.unwrap(), done);
    let runs = s.subtask_runs().await;
    for description in &succeeded {
        assert_eq!(
            runs[description], 1,
            "{description} succeeded, yet ran again"
        );
    }
    assert_eq!(
        runs.values().sum::<usize>(),
        ran_before + 16 - succeeded.len()
    );
    s.stop().await;
}

/// Figures for the README, not a check (`-- --ignored --nocapture`): a redrive of 2,000 items
/// (subtasks below 50 ms, cap 100), after a tolerant run with 20 failures and after a fail-fast
/// run stopped at item 1,200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_redrive_of_2000_items() {
    for policy in ["tolerate:20", "fail-fast"] {
        let n = 2000;
        let mut env = FLAKY_ENV.to_vec();
        env.push(("FANOUT_MAX_SUBTASK_MS", "50"));
        let mut s = start(&env).await;
        let flaky: Vec<usize> = if policy == "fail-fast" {
            vec![1200]
        } else {
            (1..=20).map(|k| k * 100).collect()
        };
        s.put("in/items.jsonl", chores(n, &flaky)).await;
        let t = std::time::Instant::now();
        let (id, status, _) = s
            .run_items(
                "in/items.jsonl",
                "out/results.jsonl",
                &[
                    ("x-fanout-failure-policy", policy),
                    ("x-fanout-max-concurrency", "100"),
                ],
            )
            .await;
        let run_wall = t.elapsed();
        let ran: usize = s.subtask_runs().await.values().sum();
        let succeeded = s.succeeded().await.len();
        s.fix_handler().await;
        let t = std::time::Instant::now();
        let redrive = s
            .redrive(&[
                &id,
                "--output",
                "json",
                "--progress",
                "none",
                "--max-concurrency",
                "100",
            ])
            .await;
        let wall = t.elapsed();
        let report = redrive.json();
        assert_eq!(redrive.code, Some(0), "{redrive:?}");
        assert_eq!(report["redriven"], n - succeeded);
        assert_eq!(
            s.get("out/results.jsonl").await.unwrap(),
            all_done(n, &flaky)
        );
        eprintln!(
            "N = {n}, {policy}: run HTTP {status} in {:.2} s ({ran} subtasks ran, {succeeded} \
             succeeded); redrive in {:.2} s: {} redriven, {} still failed",
            run_wall.as_secs_f64(),
            wall.as_secs_f64(),
            report["redriven"],
            report["stillFailed"]
        );
        s.stop().await;
    }
}
