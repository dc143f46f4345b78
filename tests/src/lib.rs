//! The test harness: a real restate-server plus the handler, per test, torn down by pid.
//!
//! Each [`Harness`] owns a [`fanout::stack::LocalStack`]: restate-server on free loopback ports
//! with a temp base dir, the handler (HTTP endpoint or Lambda instances behind the local Lambda
//! stand-in) registered through the admin API. Dropping it kills every process it started,
//! also when the test fails or panics, so tests run in parallel without clashes.

use fanout::ingress::{IngressClient, IngressResponse};
use fanout::stack::{HandlerMode, LocalStack, StackOptions};
use serde_json::{Value, json};
use std::path::PathBuf;

pub use fanout::stack::HandlerMode as Mode;

/// Subtasks sleep below this many ms in tests, so a 100-wide fan-out takes about a second.
pub const TEST_MAX_SUBTASK_MS: u64 = 500;

pub struct Harness {
    pub stack: LocalStack,
    pub ingress: IngressClient,
}

/// The handler binary built by `cargo build --workspace --bins` (what `make test` runs first).
pub fn handler_binary() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let binary = target.join("debug").join("fanout-handler");
    assert!(
        binary.is_file(),
        "{} is missing: run `cargo build --workspace --bins` (make test does) before the tests",
        binary.display()
    );
    binary
}

impl Harness {
    /// A stack in `mode` with the test's short subtasks.
    pub async fn start(mode: HandlerMode) -> Self {
        Self::start_with(Self::options(mode)).await
    }

    pub fn options(mode: HandlerMode) -> StackOptions {
        let mut options = StackOptions::new(mode, handler_binary());
        options.handler_env.push((
            "FANOUT_MAX_SUBTASK_MS".into(),
            TEST_MAX_SUBTASK_MS.to_string(),
        ));
        options
    }

    /// Options with the handler's env var `name` set (replacing an earlier value).
    pub fn with_env(mut options: StackOptions, name: &str, value: &str) -> StackOptions {
        options.handler_env.retain(|(k, _)| k != name);
        options.handler_env.push((name.into(), value.into()));
        options
    }

    pub async fn start_with(options: StackOptions) -> Self {
        let stack = match LocalStack::start(options).await {
            Ok(stack) => stack,
            Err(e) => panic!("the local stack did not start: {e:#}"),
        };
        let ingress = IngressClient::new(&stack.ingress_url, None);
        Self { stack, ingress }
    }

    /// Calls `worker/run` with `{"description": description}`.
    pub async fn run(&self, description: &str) -> IngressResponse {
        self.run_json(&json!({ "description": description })).await
    }

    /// Calls `worker/run` with `{"description": description}` and request headers that set
    /// the run's options (`x-fanout-…`).
    pub async fn run_with(&self, description: &str, headers: &[(&str, &str)]) -> IngressResponse {
        let ingress = headers
            .iter()
            .fold(self.ingress.clone(), |ingress, (name, value)| {
                ingress.with_header(name, *value)
            });
        ingress
            .run(&json!({ "description": description }), None)
            .await
            .expect("the ingress answers")
    }

    /// Polls an introspection query until `done` accepts its rows (up to `within`), and
    /// returns the last rows either way. Errors count as not done yet: right after the
    /// server starts, its partitions may not answer queries for a moment.
    pub async fn query_until(
        &self,
        sql: &str,
        within: std::time::Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let late = std::time::Instant::now() >= deadline;
            match self.stack.admin.query(sql).await {
                Ok(rows) if late || done(&rows) => return rows,
                Err(e) if late => panic!("query failed: {e:#}\n{sql}"),
                _ => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            }
        }
    }

    pub async fn run_json(&self, task: &Value) -> IngressResponse {
        self.ingress
            .run(task, None)
            .await
            .expect("the ingress answers")
    }

    /// Rows of an introspection query.
    pub async fn query(&self, sql: &str) -> Vec<Value> {
        self.stack
            .admin
            .query(sql)
            .await
            .unwrap_or_else(|e| panic!("query failed: {e:#}\n{sql}"))
    }

    /// What the local Lambda stand-in metered so far (Lambda mode only).
    pub fn records(&self) -> Vec<fanout_standin::InvocationRecord> {
        self.standin().records()
    }

    pub fn standin(&self) -> &fanout_standin::StandIn {
        self.stack
            .standin
            .as_ref()
            .expect("the stand-in runs in Lambda mode only")
    }

    /// Invokes the local Lambda function directly (not through Restate) with `event`.
    pub async fn invoke_function_directly(&self, event: &Value) -> (u16, Value) {
        let url = format!(
            "{}/2015-03-31/functions/fanout/invocations",
            self.standin().endpoint_url()
        );
        let response = reqwest::Client::new()
            .post(url)
            .json(event)
            .send()
            .await
            .expect("the stand-in answers");
        let status = response.status().as_u16();
        (status, response.json().await.expect("a JSON answer"))
    }

    pub fn handler_log(&self) -> String {
        self.stack.handler_log()
    }

    pub fn server_log(&self) -> String {
        self.stack.server.log()
    }

    /// Lines of the handler log that contain `needle`.
    pub fn log_lines_with(&self, needle: &str) -> Vec<String> {
        self.handler_log()
            .lines()
            .filter(|line| line.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    pub async fn stop(self) {
        self.stack.stop().await;
    }
}

/// `"s1,s2,…,sN"`.
pub fn numbered_subtasks(n: usize) -> String {
    (1..=n)
        .map(|i| format!("s{i}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `"s1: DONE,…,sN: DONE"`.
pub fn numbered_results(n: usize) -> String {
    (1..=n)
        .map(|i| format!("s{i}: DONE"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The `fanout` CLI built by `cargo build --workspace --bins` (what `make test` runs first).
pub fn fanout_binary() -> PathBuf {
    let binary = handler_binary().with_file_name("fanout");
    assert!(
        binary.is_file(),
        "{} is missing: run `cargo build --workspace --bins` (make test does) before the tests",
        binary.display()
    );
    binary
}

/// What a finished `fanout` subprocess left: exit code and its two streams.
#[derive(Debug)]
pub struct CliRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<std::process::Output> for CliRun {
    fn from(output: std::process::Output) -> Self {
        Self {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl CliRun {
    /// Stdout as one JSON document (`--output json`).
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {self:?}"))
    }
}

impl Harness {
    /// `fanout ARGS --ingress-url … --admin-url …` against this stack, as a subprocess with
    /// piped stdout/stderr (so progress comes as plain lines, as in CI).
    pub fn fanout_command(&self, args: &[&str]) -> tokio::process::Command {
        fanout_command_at(&self.stack.ingress_url, &self.stack.server.admin_url, args)
    }

    /// Runs `fanout ARGS` against this stack to the end.
    pub async fn fanout(&self, args: &[&str]) -> CliRun {
        self.fanout_command(args)
            .output()
            .await
            .expect("the fanout binary runs")
            .into()
    }
}

/// `fanout ARGS --ingress-url INGRESS --admin-url ADMIN` as a subprocess with piped
/// stdout/stderr, e.g. against one node of a cluster.
pub fn fanout_command_at(
    ingress_url: &str,
    admin_url: &str,
    args: &[&str],
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(fanout_binary());
    command
        .args(args)
        .args(["--ingress-url", ingress_url])
        .args(["--admin-url", admin_url])
        .env_remove("RESTATE_AUTH_TOKEN")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs `fanout ARGS` with `env` on top of an environment cleared of this machine's own AWS
/// settings, as a user pointed at an emulator would.
pub async fn fanout_with_env(args: &[&str], env: &[(&str, String)]) -> CliRun {
    tokio::process::Command::new(fanout_binary())
        .args(args)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("RESTATE_AUTH_TOKEN")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .await
        .expect("the fanout binary runs")
        .into()
}

/// The environment of a user pointed at a local Lambda `endpoint` (moto or the stand-in) with
/// throwaway credentials and no AWS config files.
pub fn local_aws_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL_LAMBDA", endpoint.to_owned()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("AWS_CONFIG_FILE", "/nonexistent/aws/config".into()),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/aws/credentials".into(),
        ),
    ]
}

/// The zip `fanout build --arch ARCH` left (`make test` builds both before the tests).
pub fn lambda_zip(arch: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/lambda/fanout-handler")
        .join(format!("bootstrap-{arch}.zip"));
    assert!(
        path.is_file(),
        "{} is missing: `make lambda-zips` (part of make test) builds it with `fanout build`",
        path.display()
    );
    path
}

/// A copy of `zip` with one more file in `dir`: other bytes, so new code to Lambda.
pub fn changed_zip(zip: &std::path::Path, dir: &std::path::Path) -> PathBuf {
    let out = dir.join("changed.zip");
    let script = "import sys, zipfile\n\
        with zipfile.ZipFile(sys.argv[1]) as a, zipfile.ZipFile(sys.argv[2], 'w', zipfile.ZIP_DEFLATED) as b:\n\
        \x20   for item in a.infolist():\n\
        \x20       b.writestr(item, a.read(item.filename))\n\
        \x20   b.writestr('RELEASE', 'changed')\n";
    let status = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(zip)
        .arg(&out)
        .status()
        .expect("python3 runs");
    assert!(status.success(), "could not write {}", out.display());
    out
}

/// Turns each `async fn NAME(mode: Mode)` of a test file into two tests, `http::NAME` and
/// `lambda::NAME`, so every end-to-end check runs against both ways of running the handler.
#[macro_export]
macro_rules! in_both_modes {
    ($($test:ident),* $(,)?) => {
        mod http {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test($crate::Mode::Http).await })*
        }
        mod lambda {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test($crate::Mode::Lambda).await })*
        }
    };
}
