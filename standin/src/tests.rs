//! The stand-in against real processes: the real `fanout-handler` bootstrap (build it first
//! with `cargo build -p fanout-handler`) and small `sh` + `curl` bootstraps written at test
//! time to crash, hang, fail or answer big on request.

use super::*;
use crate::config::PAYLOAD_LIMIT;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

const DISCOVERY: &str = r#"{"path":"/discover","httpMethod":"GET","headers":{"accept":"application/vnd.restate.endpointmanifest.v4+json"},"body":"","isBase64Encoded":true}"#;

/// Answers `{"marker","version","pid"}`; the event's text picks a misbehaviour.
const SCRIPT: &str = r#"#!/bin/sh
api="http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime"
work=$(mktemp -d "$SCRATCH/instance.XXXXXX")
echo "script instance $$ of version $AWS_LAMBDA_FUNCTION_VERSION started" >&2
while :; do
  curl -sS -D "$work/h" -o "$work/b" "$api/invocation/next" || exit 1
  id=$(grep -i '^lambda-runtime-aws-request-id:' "$work/h" | cut -d' ' -f2 | tr -d '\r')
  case "$(cat "$work/b")" in
    *crash*) kill -9 $$ ;;
    *sleep*) sleep 5 ;;
    *slow*) sleep 1 ;;
    *twice*) continue ;;
    *fail*)
      curl -sS -X POST -H 'Lambda-Runtime-Function-Error-Type: Unhandled' \
        --data '{"errorMessage":"asked to fail","errorType":"Asked"}' \
        "$api/invocation/$id/error" >/dev/null
      continue ;;
    *big*)
      head -c 6291457 /dev/zero | tr '\0' a > "$work/r"
      curl -sS -X POST --data-binary @"$work/r" "$api/invocation/$id/response" >/dev/null
      continue ;;
    *env*)
      env > "$work/r"
      curl -sS -X POST --data-binary @"$work/r" "$api/invocation/$id/response" >/dev/null
      continue ;;
  esac
  printf '{"marker":"@MARKER@","version":"%s","pid":%s}' "$AWS_LAMBDA_FUNCTION_VERSION" $$ > "$work/r"
  curl -sS -X POST --data-binary @"$work/r" "$api/invocation/$id/response" >/dev/null
done
"#;

const INIT_FAILS: &str = r#"#!/bin/sh
curl -sS -X POST -H 'Lambda-Runtime-Function-Error-Type: Runtime.InitError' \
  --data '{"errorMessage":"no config","errorType":"Runtime.InitError"}' \
  "http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime/init/error" >/dev/null
exit 3
"#;

const NEVER_POLLS: &str = "#!/bin/sh\nexec sleep 30\n";

/// A temp directory removed at the end of the test.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("standin-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn script(&self, name: &str, text: &str, marker: &str) -> PathBuf {
        let dir = self.0.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bootstrap");
        std::fs::write(&path, text.replace("@MARKER@", marker)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![("SCRATCH".into(), self.0.display().to_string())]
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn handler_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let binary = target.join("debug/fanout-handler");
    assert!(
        binary.is_file(),
        "{} is missing: run `cargo build -p fanout-handler` before these tests",
        binary.display()
    );
    binary
}

fn needs_curl() {
    assert!(
        std::process::Command::new("curl")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "the sh bootstraps of these tests need curl"
    );
}

fn function(name: &str, versions: Vec<VersionSpec>, scratch: &Scratch) -> FunctionSpec {
    FunctionSpec {
        timeout: Duration::from_secs(20),
        concurrency_limit: 10,
        env: scratch.env(),
        versions,
        ..FunctionSpec::new(name)
    }
}

async fn start(functions: Vec<FunctionSpec>, scratch: &Scratch) -> StandIn {
    StandIn::start(StandInConfig {
        metering_path: Some(scratch.0.join("metering.jsonl")),
        log_path: Some(scratch.0.join("instances.log")),
        functions,
        ..StandInConfig::default()
    })
    .await
    .unwrap()
}

/// An HTTP answer from the stand-in, read whole; shared with the control-plane tests.
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) headers: reqwest::header::HeaderMap,
    pub(super) body: Vec<u8>,
}

impl Answer {
    pub(super) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// Reads a whole response.
    pub(super) async fn read(response: reqwest::Response) -> Self {
        Self {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.bytes().await.unwrap().to_vec(),
        }
    }

    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The decoded `body` of a Restate-style response from the real handler.
    fn restate_body(&self) -> String {
        let response = self.json();
        let body = response["body"].as_str().unwrap();
        String::from_utf8(BASE64.decode(body).unwrap()).unwrap()
    }
}

/// `target` is a FunctionName as it goes into the path (callers encode ARNs themselves),
/// optionally followed by `?Qualifier=...`.
async fn invoke(standin: &StandIn, target: &str, payload: impl Into<Vec<u8>>) -> Answer {
    let (function_name, query) = target.split_once('?').unwrap_or((target, ""));
    let url = format!(
        "{}/2015-03-31/functions/{function_name}/invocations?{query}",
        standin.endpoint_url()
    );
    let response = reqwest::Client::new()
        .post(url)
        .body(payload.into())
        .send()
        .await
        .unwrap();
    Answer::read(response).await
}

fn assert_function_error(answer: &Answer, error_type: &str) -> Value {
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("X-Amz-Function-Error"), Some("Unhandled"));
    let body = answer.json();
    assert_eq!(body["errorType"], error_type, "{body}");
    body
}

fn encode(arn: &str) -> String {
    arn.replace(':', "%3A")
}

/// Live (non-zombie) processes in a process group.
fn group_members(pgid: u64) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            let fields: Vec<&str> = stat
                .rsplit_once(") ")
                .map_or(vec![], |(_, rest)| rest.split(' ').collect());
            fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string()
        })
        .count()
}

fn process_alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat.split(") ").nth(1).unwrap_or("").starts_with('Z'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_bootstrap_by_every_name_form_warm_and_metered() {
    let scratch = Scratch::new();
    let binary = handler_binary();
    let standin = start(
        vec![function(
            "fanout",
            vec![VersionSpec::new("1", &binary)],
            &scratch,
        )],
        &scratch,
    )
    .await;
    let arn = standin.version_arn("fanout", "1");
    assert_eq!(
        arn,
        "arn:aws:lambda:us-east-1:000000000000:function:fanout:1"
    );

    let names = [
        "fanout".to_owned(),
        "fanout:1".to_owned(),
        encode(&arn),
        "fanout?Qualifier=1".to_owned(),
        "000000000000%3Afunction%3Afanout".to_owned(),
    ];
    for name in &names {
        let answer = invoke(&standin, name, DISCOVERY).await;
        assert_eq!(answer.status, StatusCode::OK, "{name}");
        assert_eq!(answer.header("X-Amz-Executed-Version"), Some("1"), "{name}");
        assert_eq!(answer.header("X-Amz-Function-Error"), None, "{name}");
        assert!(answer.header("x-amzn-RequestId").is_some());
        assert_eq!(answer.json()["statusCode"], 200, "{name}");
        assert!(answer.restate_body().contains("\"services\""), "{name}");
    }
    let not_restate = invoke(&standin, "fanout", r#"{"hello":1}"#).await;
    assert_eq!(not_restate.status, StatusCode::OK);
    assert_eq!(not_restate.json()["statusCode"], 400);

    let records = standin.records();
    assert_eq!(records.len(), names.len() + 1);
    let first = &records[0];
    assert!(first.cold);
    assert!(first.init_ms.unwrap() > 0.0);
    assert_eq!(first.path.as_deref(), Some("/discover"));
    assert_eq!(first.outcome, "ok");
    assert_eq!(first.request_bytes, DISCOVERY.len());
    assert!(first.response_bytes > 0);
    assert!(first.peak_rss_kb.unwrap() > 0);
    assert_eq!(
        first.billed_ms,
        first.duration_ms.ceil() as u64 + first.init_ms.unwrap().ceil() as u64
    );
    assert!(first.started_at_ms > 1_600_000_000_000);
    for warm in &records[1..] {
        assert!(!warm.cold, "{warm:?}");
        assert_eq!(warm.init_ms, None);
        assert_eq!(
            warm.instance, first.instance,
            "one warm instance serves them all"
        );
        assert_eq!(warm.billed_ms, warm.duration_ms.ceil() as u64);
    }
    assert_eq!(records.last().unwrap().path, None);

    let file: Vec<InvocationRecord> = std::fs::read_to_string(scratch.0.join("metering.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(file, records);
    let client = reqwest::Client::new();
    let over_http: Vec<InvocationRecord> = client
        .get(format!("{}/fanout/metrics", standin.endpoint_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(over_http, records);
    let health = client
        .get(format!("{}/fanout/health", standin.endpoint_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    standin.shutdown().await;
    let log = std::fs::read_to_string(scratch.0.join("instances.log")).unwrap();
    assert!(!log.is_empty(), "the handler's own logs reach the log file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_functions_versions_and_bad_names_are_refused_like_lambda() {
    let scratch = Scratch::new();
    let bootstrap = scratch.script("a", SCRIPT, "A");
    let standin = start(
        vec![function(
            "f",
            vec![VersionSpec::new("1", bootstrap)],
            &scratch,
        )],
        &scratch,
    )
    .await;
    for (name, arn) in [
        (
            "nope",
            "arn:aws:lambda:us-east-1:000000000000:function:nope",
        ),
        ("f:2", "arn:aws:lambda:us-east-1:000000000000:function:f:2"),
        (
            "f?Qualifier=7",
            "arn:aws:lambda:us-east-1:000000000000:function:f:7",
        ),
    ] {
        let answer = invoke(&standin, name, "{}").await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{name}");
        assert_eq!(
            answer.header("x-amzn-ErrorType"),
            Some("ResourceNotFoundException")
        );
        assert!(answer.header("x-amzn-RequestId").is_some());
        assert_eq!(
            answer.json(),
            json!({"Type": "User", "message": format!("Function not found: {arn}")})
        );
    }
    let other_region = encode("arn:aws:lambda:eu-west-1:000000000000:function:f:1");
    assert_eq!(
        invoke(&standin, &other_region, "{}").await.status,
        StatusCode::NOT_FOUND
    );
    let mismatch = invoke(&standin, "f:1?Qualifier=2", "{}").await;
    assert_eq!(mismatch.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        mismatch.header("x-amzn-ErrorType"),
        Some("InvalidParameterValueException")
    );
    // A path no route serves is Lambda's UnknownOperationException, with a request id too.
    let unknown = Answer::read(
        reqwest::Client::new()
            .get(format!("{}/2015-03-31/layers", standin.endpoint_url()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(
        unknown.header("x-amzn-ErrorType"),
        Some("UnknownOperationException")
    );
    assert!(unknown.header("x-amzn-RequestId").is_some());
    assert!(standin.records().is_empty(), "nothing ran");
    assert!(
        standin
            .add_version("nope", VersionSpec::new("2", "/bin/sh"))
            .is_err()
    );
    assert!(
        standin
            .add_version("f", VersionSpec::new("1", "/bin/sh"))
            .is_err()
    );
    assert!(
        standin
            .add_version("f", VersionSpec::new("2", "/no/such/file"))
            .is_err()
    );
    standin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_413_and_metered() {
    let scratch = Scratch::new();
    let bootstrap = scratch.script("a", SCRIPT, "A");
    let standin = start(
        vec![function(
            "f",
            vec![VersionSpec::new("1", bootstrap)],
            &scratch,
        )],
        &scratch,
    )
    .await;
    let answer = invoke(&standin, "f", vec![b' '; PAYLOAD_LIMIT + 1]).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        answer.header("x-amzn-ErrorType"),
        Some("RequestEntityTooLargeException")
    );
    assert_eq!(
        answer.json(),
        json!({"Type": "User", "message": "Request must be smaller than 6291456 bytes for the InvokeFunction operation"})
    );
    let records = standin.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].outcome, "too_large");
    assert_eq!(records[0].request_bytes, PAYLOAD_LIMIT + 1);

    // Exactly at the limit is still accepted.
    let mut at_limit = br#"{"pad":""#.to_vec();
    at_limit.resize(PAYLOAD_LIMIT - 2, b'x');
    at_limit.extend_from_slice(br#""}"#);
    assert_eq!(at_limit.len(), PAYLOAD_LIMIT);
    let answer = invoke(&standin, "f", at_limit).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["marker"], "A");
    standin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_of_one_throttles_the_second_concurrent_invoke() {
    needs_curl();
    let scratch = Scratch::new();
    let bootstrap = scratch.script("a", SCRIPT, "A");
    let mut spec = function("f", vec![VersionSpec::new("1", bootstrap)], &scratch);
    spec.concurrency_limit = 1;
    let standin = start(vec![spec], &scratch).await;
    let (a, b) = tokio::join!(
        invoke(&standin, "f", r#""slow""#),
        invoke(&standin, "f", r#""slow""#)
    );
    let (ok, throttled) = if a.status == StatusCode::OK {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(throttled.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        throttled.header("x-amzn-ErrorType"),
        Some("TooManyRequestsException")
    );
    assert_eq!(
        throttled.json(),
        json!({"Reason": "ReservedFunctionConcurrentInvocationLimitExceeded", "Type": "User", "message": "Rate Exceeded."})
    );
    let outcomes: Vec<String> = standin.records().into_iter().map(|r| r.outcome).collect();
    assert_eq!(outcomes, vec!["throttled", "ok"]);
    // The slot is free again once the first one is done.
    assert_eq!(invoke(&standin, "f", "{}").await.status, StatusCode::OK);
    standin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_kills_the_instance_and_the_next_invoke_gets_a_fresh_one() {
    needs_curl();
    let scratch = Scratch::new();
    let bootstrap = scratch.script("a", SCRIPT, "A");
    let mut spec = function("f", vec![VersionSpec::new("1", bootstrap)], &scratch);
    spec.timeout = Duration::from_secs(1);
    let standin = start(vec![spec], &scratch).await;
    let before = Instant::now();
    let answer = invoke(&standin, "f", r#""sleep""#).await;
    assert!(before.elapsed() < Duration::from_secs(4));
    let body = assert_function_error(&answer, "Sandbox.Timedout");
    let message = body["errorMessage"].as_str().unwrap();
    let request_id = answer.header("x-amzn-RequestId").unwrap();
    assert_eq!(
        message,
        format!("{request_id} Task timed out after 1.00 seconds")
    );

    let next = invoke(&standin, "f", "{}").await;
    assert_eq!(next.status, StatusCode::OK);
    let records = standin.records();
    assert_eq!(records[0].outcome, "function_error:Sandbox.Timedout");
    assert!(records[0].duration_ms >= 1000.0);
    assert!(records[1].cold, "the timed-out instance is not reused");
    assert_ne!(records[1].instance, records[0].instance);
    standin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_is_an_exit_error_and_the_instance_is_replaced() {
    needs_curl();
    let scratch = Scratch::new();
    let bootstrap = scratch.script("a", SCRIPT, "A");
    let standin = start(
        vec![function(
            "f",
            vec![VersionSpec::new("1", bootstrap)],
            &scratch,
        )],
        &scratch,
    )
    .await;
    let first = invoke(&standin, "f", "{}").await;
    let first_pid = first.json()["pid"].as_u64().unwrap();
    let crash = invoke(&standin, "f", r#""crash""#).await;
    let body = assert_function_error(&crash, "Runtime.ExitError");
    assert!(
        body["errorMessage"]
            .as_str()
            .unwrap()
            .ends_with("Runtime exited with error: signal: killed"),
        "{body}"
    );
    assert!(!process_alive(first_pid));
    let after = invoke(&standin, "f", "{}").await;
    assert_eq!(after.status, StatusCode::OK);
    assert_ne!(after.json()["pid"].as_u64().unwrap(), first_pid);
    let records = standin.records();
    assert_eq!(records[1].outcome, "function_error:Runtime.ExitError");
    assert!(!records[1].cold && records[2].cold);
    standin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_errors_keep_the_instance_and_big_responses_are_refused() {
    needs_curl();
    let scratch = Scratch::new();
    let bootstrap = scratch.script("a", SCRIPT, "A");
    let standin = start(
        vec![function(
            "f",
            vec![VersionSpec::new("1", bootstrap)],
            &scratch,
        )],
        &scratch,
    )
    .await;
    let failed = invoke(&standin, "f", r#""fail""#).await;
    let body = assert_function_error(&failed, "Asked");
    assert_eq!(
        body,
        json!({"errorMessage": "asked to fail", "errorType": "Asked"})
    );
    let big = invoke(&standin, "f", r#""big""#).await;
    assert_function_error(&big, "Function.ResponseSizeTooLarge");
    assert_eq!(invoke(&standin, "f", "{}").await.status, StatusCode::OK);
    let records = standin.records();
    assert_eq!(records[0].outcome, "function_error:Asked");
    assert_eq!(records.len(), 3);
    // Asking for another event without answering fails the invocation at once.
    let abandoned = invoke(&standin, "f", r#""twice""#).await;
    assert_function_error(&abandoned, "Runtime.NoResponse");
    assert_eq!(
        records[1].outcome,
        "function_error:Function.ResponseSizeTooLarge"
    );
    assert_eq!(records[1].response_bytes, PAYLOAD_LIMIT + 1);
    assert!(
        records.iter().all(|r| r.instance == records[0].instance),
        "one instance lives through both"
    );
    standin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_run_side_by_side_each_on_its_own_binary() {
    needs_curl();
    let scratch = Scratch::new();
    let v2 = scratch.script("v2", SCRIPT, "B");
    let standin = start(
        vec![function(
            "f",
            vec![
                VersionSpec::new("1", handler_binary()),
                VersionSpec::new("2", v2),
            ],
            &scratch,
        )],
        &scratch,
    )
    .await;
    let v2_arn = encode(&standin.version_arn("f", "2"));
    let (one, two, latest) = tokio::join!(
        invoke(&standin, "f:1", DISCOVERY),
        invoke(&standin, &v2_arn, "{}"),
        invoke(&standin, "f", "{}"),
    );
    assert!(one.restate_body().contains("\"services\""));
    assert_eq!(one.header("X-Amz-Executed-Version"), Some("1"));
    assert_eq!(two.json()["marker"], "B");
    assert_eq!(latest.json()["version"], "2");
    assert_eq!(latest.header("X-Amz-Executed-Version"), Some("2"));

    // Published while running: becomes $LATEST, and the older versions keep serving.
    standin
        .add_version(
            "f",
            VersionSpec::new("10", scratch.script("v10", SCRIPT, "C")),
        )
        .unwrap();
    let latest = invoke(&standin, "f", "{}").await;
    assert_eq!(latest.json()["marker"], "C");
    assert_eq!(latest.header("X-Amz-Executed-Version"), Some("10"));
    assert!(
        invoke(&standin, "f:1", DISCOVERY)
            .await
            .restate_body()
            .contains("\"services\"")
    );
    assert_eq!(invoke(&standin, "f:2", "{}").await.json()["marker"], "B");
    let versions: Vec<String> = standin.records().into_iter().map(|r| r.version).collect();
    assert_eq!(versions.iter().filter(|v| *v == "10").count(), 1);
    standin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kill_hook_kills_busy_instances_only() {
    needs_curl();
    let scratch = Scratch::new();
    let bootstrap = scratch.script("a", SCRIPT, "A");
    let standin = start(
        vec![function(
            "f",
            vec![VersionSpec::new("1", bootstrap)],
            &scratch,
        )],
        &scratch,
    )
    .await;
    // Two warm instances; the "sleep" below takes one, and the hook must leave the other alone.
    let (a, b) = tokio::join!(
        invoke(&standin, "f", r#""slow""#),
        invoke(&standin, "f", r#""slow""#)
    );
    let pids = [
        a.json()["pid"].as_u64().unwrap(),
        b.json()["pid"].as_u64().unwrap(),
    ];
    assert_ne!(pids[0], pids[1]);
    let busy = tokio::spawn({
        let url = standin.endpoint_url();
        async move {
            reqwest::Client::new()
                .post(format!("{url}/2015-03-31/functions/f/invocations"))
                .body(r#""sleep""#)
                .send()
                .await
                .unwrap()
        }
    });
    let client = reqwest::Client::new();
    let kill_url = format!(
        "{}/fanout/instances/kill?function=f",
        standin.endpoint_url()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let killed: Value = client
            .post(&kill_url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if killed == json!({"killed": 1}) {
            break;
        }
        assert_eq!(killed, json!({"killed": 0}));
        assert!(
            Instant::now() < deadline,
            "the busy instance never showed up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let response = busy.await.unwrap();
    assert_eq!(response.headers()["X-Amz-Function-Error"], "Unhandled");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errorType"], "Runtime.ExitError");
    let alive: Vec<bool> = pids.iter().map(|&pid| process_alive(pid)).collect();
    assert!(alive.contains(&true) && alive.contains(&false), "{alive:?}");
    // The script was in `sleep 5`: the whole process group goes, not just the shell.
    let killed = pids[alive.iter().position(|a| !a).unwrap()];
    let deadline = Instant::now() + Duration::from_secs(2);
    while group_members(killed) > 0 {
        assert!(
            Instant::now() < deadline,
            "the bootstrap's children outlived it"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let idle = pids[alive.iter().position(|a| *a).unwrap()];
    assert!(group_members(idle) > 0, "the idle one lives on");
    let unknown = client
        .post(format!(
            "{}/fanout/instances/kill?function=nope",
            standin.endpoint_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        unknown.headers()["x-amzn-ErrorType"],
        "ResourceNotFoundException"
    );
    standin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmed_instances_wait_idle_and_serve_invocations_warm() {
    needs_curl();
    let scratch = Scratch::new();
    let standin = start(
        vec![
            function(
                "f",
                vec![VersionSpec::new("1", scratch.script("a", SCRIPT, "A"))],
                &scratch,
            ),
            function(
                "fails",
                vec![VersionSpec::new(
                    "1",
                    scratch.script("fails", INIT_FAILS, ""),
                )],
                &scratch,
            ),
        ],
        &scratch,
    )
    .await;
    let client = reqwest::Client::new();
    let warm = |query: &str| {
        client
            .post(format!(
                "{}/fanout/instances/warm?{query}",
                standin.endpoint_url()
            ))
            .send()
    };
    let started: Value = warm("function=f&count=3")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(started, json!({"started": 3}));
    let again: Value = warm("function=f&count=3")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again, json!({"started": 0}), "three already wait idle");
    assert!(standin.records().is_empty(), "warming invokes nothing");

    // Three at once, each on an instance of its own that had finished its init.
    let (a, b, c) = tokio::join!(
        invoke(&standin, "f", r#""slow""#),
        invoke(&standin, "f", r#""slow""#),
        invoke(&standin, "f", r#""slow""#)
    );
    let mut pids: Vec<u64> = [a, b, c]
        .iter()
        .map(|a| a.json()["pid"].as_u64().unwrap())
        .collect();
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 3);
    let records = standin.records();
    assert_eq!(records.len(), 3);
    assert!(
        records.iter().all(|r| !r.cold && r.init_ms.is_none()),
        "{records:?}"
    );

    // Never more than the function may run at once (10 in these tests).
    assert_eq!(standin.warm("f", None, 50).await.unwrap(), 7);
    assert_eq!(standin.warm("f", Some("1"), 10).await.unwrap(), 0);

    let unknown = warm("function=nope&count=1").await.unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let no_version = warm("function=f&count=1&qualifier=9").await.unwrap();
    assert_eq!(no_version.status(), StatusCode::NOT_FOUND);
    let missing_count = warm("function=f").await.unwrap();
    assert_eq!(missing_count.status(), StatusCode::BAD_REQUEST);
    let broken = warm("function=fails&count=1").await.unwrap();
    assert_eq!(broken.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body: Value = broken.json().await.unwrap();
    assert!(body.to_string().contains("ended during its init"), "{body}");
    standin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_failures_are_init_errors_and_never_hang() {
    needs_curl();
    let scratch = Scratch::new();
    let standin = StandIn::start_with(
        StandInConfig {
            functions: vec![
                function(
                    "fails",
                    vec![VersionSpec::new(
                        "1",
                        scratch.script("fails", INIT_FAILS, ""),
                    )],
                    &scratch,
                ),
                function(
                    "silent",
                    vec![VersionSpec::new(
                        "1",
                        scratch.script("silent", NEVER_POLLS, ""),
                    )],
                    &scratch,
                ),
            ],
            ..StandInConfig::default()
        },
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    let fails = invoke(&standin, "fails", "{}").await;
    let body = assert_function_error(&fails, "Runtime.InitError");
    assert_eq!(body["errorMessage"], "no config");
    let before = Instant::now();
    let silent = invoke(&standin, "silent", "{}").await;
    assert!(before.elapsed() < Duration::from_secs(3));
    assert_function_error(&silent, "Runtime.InitError");
    let records = standin.records();
    assert!(
        records
            .iter()
            .all(|r| r.cold && r.init_ms.is_some() && r.duration_ms == 0.0)
    );
    assert!(records[1].init_ms.unwrap() >= 1000.0);
    standin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_get_lambdas_environment_and_none_of_ours() {
    needs_curl();
    let scratch = Scratch::new();
    let bootstrap = scratch.script("a", SCRIPT, "A");
    let mut spec = function("f", vec![VersionSpec::new("3", &bootstrap)], &scratch);
    spec.memory_mb = 256;
    spec.env.push(("EXTRA".into(), "yes".into()));
    let standin = start(vec![spec], &scratch).await;
    let answer = invoke(&standin, "f", r#""env""#).await;
    let env: HashMap<&str, &str> = std::str::from_utf8(&answer.body)
        .unwrap()
        .lines()
        .filter_map(|line| line.split_once('='))
        .collect();
    assert_eq!(env["AWS_LAMBDA_FUNCTION_NAME"], "f");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_VERSION"], "3");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"], "256");
    assert_eq!(env["AWS_LAMBDA_LOG_GROUP_NAME"], "/aws/lambda/f");
    assert!(env["AWS_LAMBDA_LOG_STREAM_NAME"].contains("/[3]"));
    assert_eq!(env["AWS_REGION"], "us-east-1");
    assert_eq!(env["_HANDLER"], "bootstrap");
    assert_eq!(env["AWS_EXECUTION_ENV"], "AWS_Lambda_provided.al2023");
    assert_eq!(
        env["LAMBDA_TASK_ROOT"],
        bootstrap.parent().unwrap().to_str().unwrap()
    );
    assert_eq!(env["EXTRA"], "yes");
    assert!(env["AWS_LAMBDA_RUNTIME_API"].starts_with("127.0.0.1:"));
    assert!(
        !env.keys().any(|k| k.starts_with("CARGO")),
        "the test process's variables are not inherited"
    );
    let log = std::fs::read_to_string(scratch.0.join("instances.log")).unwrap();
    assert!(log.contains("of version 3 started"), "{log}");
    standin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_stand_in_kills_its_instances() {
    needs_curl();
    let scratch = Scratch::new();
    let bootstrap = scratch.script("a", SCRIPT, "A");
    let standin = start(
        vec![function(
            "f",
            vec![VersionSpec::new("1", bootstrap)],
            &scratch,
        )],
        &scratch,
    )
    .await;
    let (a, b) = tokio::join!(invoke(&standin, "f", "{}"), invoke(&standin, "f", "{}"));
    let pids = [
        a.json()["pid"].as_u64().unwrap(),
        b.json()["pid"].as_u64().unwrap(),
    ];
    assert!(pids.iter().all(|&pid| process_alive(pid)));
    let url = standin.endpoint_url();
    drop(standin);
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|&pid| process_alive(pid)) {
        assert!(Instant::now() < deadline, "instances outlived the stand-in");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gone = reqwest::Client::new()
        .get(format!("{url}/fanout/health"))
        .send()
        .await;
    assert!(gone.is_err(), "the listener is closed");
}
