//! The `fanout-handler` binary as an operator meets it: ports, bad configuration, shutdown.

use fanout_tests::handler_binary;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn wait_for_port(port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn serves_on_the_given_port_and_stops_cleanly_on_sigterm() {
    let port = fanout_standin::process::free_port().unwrap();
    let mut child = Command::new(handler_binary())
        .args(["--port", &port.to_string()])
        .env_remove("AWS_LAMBDA_RUNTIME_API")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_for_port(port), "the handler never listened on {port}");
    fanout_standin::process::terminate(child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the handler ignored SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit after SIGTERM: {status}");
}

#[test]
fn the_port_env_var_is_honoured() {
    let port = fanout_standin::process::free_port().unwrap();
    let mut child = Command::new(handler_binary())
        .env("PORT", port.to_string())
        .env_remove("AWS_LAMBDA_RUNTIME_API")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let up = wait_for_port(port);
    let _ = child.kill();
    let _ = child.wait();
    assert!(up, "PORT={port} was not used");
}

fn run_failing(args: &[&str], env: &[(&str, &str)]) -> String {
    let output = Command::new(handler_binary())
        .args(args)
        .envs(env.iter().copied())
        .env_remove("AWS_LAMBDA_RUNTIME_API")
        .output()
        .unwrap();
    assert!(!output.status.success(), "{args:?} {env:?} should fail");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn bad_configuration_is_explained_not_panicked() {
    let port = run_failing(&["--port", "http"], &[]);
    assert!(port.contains("not a port number"), "{port}");
    assert!(!port.contains("panicked"), "{port}");

    let retry = run_failing(&[], &[("FANOUT_SUBTASK_AT_MAX_ATTEMPTS", "explode")]);
    assert!(retry.contains("\"pause\" or \"kill\""), "{retry}");
    let cap = run_failing(&[], &[("FANOUT_MAX_CONCURRENCY", "0")]);
    assert!(cap.contains("impossible"), "{cap}");
    let policy = run_failing(&[], &[("FANOUT_FAILURE_POLICY", "tolerate:0%")]);
    assert!(
        policy.contains("FANOUT_FAILURE_POLICY") && policy.contains("above 0%"),
        "{policy}"
    );

    let max = run_failing(&[], &[("FANOUT_MAX_SUBTASK_MS", "soon")]);
    assert!(
        max.contains("FANOUT_MAX_SUBTASK_MS") && max.contains("whole number"),
        "{max}"
    );

    let lambda = Command::new(handler_binary())
        .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:1")
        .env_remove("AWS_LAMBDA_FUNCTION_NAME")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&lambda.stderr);
    assert!(!lambda.status.success());
    assert!(
        stderr.contains("missing Lambda environment variables"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A running `fanout local`, with its stdout kept open: it prints again when it stops, and
/// a closed pipe would kill it with SIGPIPE.
struct FanoutLocal {
    child: std::process::Child,
    _stdout: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

/// `fanout local ARGS` up until it prints that Ctrl-C stops it: the process, what it printed
/// and its ingress URL.
fn start_fanout_local(
    state: &std::path::Path,
    args: &[&str],
) -> (FanoutLocal, Vec<String>, String) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(fanout_tests::fanout_binary())
        // Free ports: tests run side by side, and beside a `fanout local` on the default ones.
        .args([
            "local",
            "--ports",
            "auto",
            "--max-subtask-ms",
            "200",
            "--state-dir",
        ])
        .arg(state)
        .args(args)
        .env("FANOUT_HANDLER_BIN", handler_binary())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut printed = Vec::new();
    let mut ingress = None;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(url) = line.trim().strip_prefix("ingress:") {
            ingress = Some(url.trim().to_owned());
        }
        let done = line.contains("Ctrl-C stops everything");
        printed.push(line);
        if done {
            break;
        }
    }
    let ingress = ingress.unwrap_or_else(|| panic!("no ingress URL printed: {printed:#?}"));
    let local = FanoutLocal {
        child,
        _stdout: lines,
    };
    (local, printed, ingress)
}

fn run_reference(ingress: &str) -> serde_json::Value {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        reqwest::Client::new()
            .post(format!("{ingress}/worker/run"))
            .json(&serde_json::json!({"description": "get out of bed,shower"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    })
}

/// Ctrl-C, then: `fanout local` exits 0 and nothing listens on the ingress port any more.
fn stop_fanout_local(local: FanoutLocal, ingress: &str) {
    let mut child = local.child;
    let port: u16 = ingress.rsplit(':').next().unwrap().parse().unwrap();
    fanout_standin::process::interrupt(child.id());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("fanout local ignored Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "restate-server still listens on {port} after fanout local stopped"
    );
}

/// `fanout local`: the whole local stack comes up, serves the reference example through its
/// ingress, and goes away on Ctrl-C.
#[test]
fn fanout_local_serves_until_ctrl_c_and_leaves_nothing_behind() {
    let state = tempfile::tempdir().unwrap();
    let (child, _, ingress) = start_fanout_local(state.path(), &[]);
    assert_eq!(
        run_reference(&ingress),
        serde_json::json!({"description": "get out of bed: DONE,shower: DONE"})
    );
    assert!(
        std::fs::read_to_string(state.path().join("invocations.jsonl"))
            .unwrap()
            .contains("/invoke/worker/run"),
        "the Lambda stand-in metered the run into the state dir"
    );
    stop_fanout_local(child, &ingress);
}

/// `fanout local --layout split --coordinator-mode http`: the coordinator over HTTP, the
/// executors on the Lambda stand-in, with the user's `--env` reaching the instances.
#[test]
fn fanout_local_runs_the_split_layout_with_the_users_environment() {
    let state = tempfile::tempdir().unwrap();
    let (child, printed, ingress) = start_fanout_local(
        state.path(),
        &[
            "--layout",
            "split",
            "--coordinator-mode",
            "http",
            "--env",
            "AWS_LAMBDA_LOG_FORMAT=Text",
        ],
    );
    assert!(
        printed
            .iter()
            .any(|l| l.contains("split:") && l.contains("-executor:1")),
        "{printed:#?}"
    );
    assert_eq!(
        run_reference(&ingress),
        serde_json::json!({"description": "get out of bed: DONE,shower: DONE"})
    );
    let metered = std::fs::read_to_string(state.path().join("invocations.jsonl")).unwrap();
    assert!(metered.contains("/invoke/executor/runSubtask"), "{metered}");
    assert!(!metered.contains("/invoke/worker/"), "{metered}");
    // The instances log text lines, as --env asked, not their default JSON.
    let log = std::fs::read_to_string(state.path().join("handler.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.starts_with("[executor/runSubtask][inv_") && l.contains("Started executing")),
        "{log}"
    );
    stop_fanout_local(child, &ingress);
}

/// `fanout local` killed outright (SIGKILL: no Ctrl-C handler, no drop) takes its
/// restate-server and the handler's instances with it, instead of leaving them on their ports.
#[test]
fn fanout_local_killed_outright_leaves_nothing_behind() {
    let state = tempfile::tempdir().unwrap();
    let (local, _, ingress) = start_fanout_local(state.path(), &[]);
    assert_eq!(
        run_reference(&ingress),
        serde_json::json!({"description": "get out of bed: DONE,shower: DONE"})
    );
    let port: u16 = ingress.rsplit(':').next().unwrap().parse().unwrap();
    let mut child = local.child;
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "restate-server still listens on {port} 10 s after fanout local was killed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
