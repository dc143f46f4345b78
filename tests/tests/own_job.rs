//! A job crate of your own, the walk the README gives: `fanout new` scaffolds it in a temp dir
//! outside this repo, `fanout build` makes its Lambda zip with cargo-lambda, the local stack runs
//! it (the stand-in runs the zip's bootstrap, as `fanout local --handler ZIP` does), and the
//! example in the scaffold's README gets exactly the answer the README prints, through the
//! ingress; then `fanout deploy --register`, run in the crate's folder, deploys that zip to the
//! stand-in's Lambda API and the new version answers the same, and `fanout demo --handler ZIP
//! --input example.json` runs it too. A second test serves the same scaffold as a debug build
//! over HTTP.
//!
//! Cost: both builds share this workspace's target dir (`CARGO_TARGET_DIR=<checkout>/target`).
//! The scaffold pins the checkout's Cargo.lock and uses its profiles, so the dependencies that
//! `make lambda-zips` (release, x86_64 via cargo-lambda) and `make build-local` (debug) already
//! compiled are reused: only fanout-handler and the scaffold itself compile, 40 to 100 s for the
//! release build (thin LTO) on two busy cores and seconds for the debug one, instead of 3 to 4
//! minutes each from a cold target dir. The debug/HTTP test is the cheap check of the scaffold's
//! code; the release/Lambda test is the one that proves `fanout build` and the zip work.

use fanout::stack::{HandlerMode, StackOptions};
use fanout_tests::{Harness, fanout_binary, local_aws_env};
use std::path::{Path, PathBuf};
use std::process::Command;

/// This checkout: the scaffold depends on it by path and shares its target dir.
fn checkout() -> PathBuf {
    std::fs::canonicalize(Path::new(env!("CARGO_MANIFEST_DIR")).join("..")).unwrap()
}

fn shared_target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| checkout().join("target"))
}

/// A crate `fanout new` wrote, and the example its README gives.
struct Scaffold {
    _temp: tempfile::TempDir,
    dir: PathBuf,
    name: String,
    /// The README's request body, as written.
    request: String,
    /// The README's response, as written.
    response: String,
}

/// The ```json blocks of `markdown`, in order.
fn json_blocks(markdown: &str) -> Vec<String> {
    markdown
        .split("```json\n")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap().trim().to_owned())
        .collect()
}

fn run(command: &mut Command) -> (bool, String, String) {
    let output = command.output().expect("the command runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn scaffold(name: &str) -> Scaffold {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join(name);
    let (ok, stdout, stderr) = run(Command::new(fanout_binary())
        .arg("new")
        .arg(&dir)
        .arg("--fanout-path")
        .arg(checkout()));
    assert!(ok, "fanout new failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("Created the job crate `{name}`"))
            && stdout.contains(&format!(
                "depends on fanout-handler at {}",
                checkout().join("handler").display()
            )),
        "{stdout}"
    );
    let main = std::fs::read_to_string(dir.join("src/main.rs")).unwrap();
    assert!(
        main.contains("fanout_handler::serve(word_count::WordCount)"),
        "main serves the job with one call:\n{main}"
    );
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    let blocks = json_blocks(&readme);
    assert!(
        blocks.len() >= 2,
        "the README has a request and a response:\n{readme}"
    );
    let example = std::fs::read_to_string(dir.join("example.json")).unwrap();
    assert_eq!(
        example.trim(),
        blocks[0],
        "example.json is the README's request"
    );
    Scaffold {
        _temp: temp,
        dir,
        name: name.to_owned(),
        request: blocks[0].clone(),
        response: blocks[1].clone(),
    }
}

/// POSTs the README's request to `worker/run` and returns status and body, byte for byte.
async fn ask(harness: &Harness, body: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(format!("{}/worker/run", harness.stack.ingress_url))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("the ingress answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scaffold_built_by_fanout_build_answers_its_readme_example_on_lambda() {
    let job = scaffold("wordcount");

    // `fanout build` in the crate's folder, as a user runs it, into the shared target dir.
    let (ok, stdout, stderr) = run(Command::new(fanout_binary())
        .args(["build", "--arch", "x86_64"])
        .current_dir(&job.dir)
        .env("CARGO_TARGET_DIR", shared_target_dir()));
    assert!(ok, "fanout build failed:\n{stdout}\n{stderr}");
    let zip = job
        .dir
        .join("target/lambda")
        .join(&job.name)
        .join("bootstrap-x86_64.zip");
    assert!(
        zip.is_file() && stdout.starts_with(&zip.display().to_string()),
        "the zip lands under the crate's own target/lambda: {stdout}"
    );

    // What `fanout local --handler ZIP` runs: the zip's bootstrap.
    let bootstrap = fanout::commands::build::handler_binary_from(&zip).unwrap();
    let harness =
        Harness::start_with(StackOptions::new(HandlerMode::Lambda, bootstrap.clone())).await;

    let (status, body) = ask(&harness, &job.request).await;
    assert_eq!(
        (status, body.as_str()),
        (200, job.response.as_str()),
        "the README's exact answer\n{}",
        harness.handler_log()
    );

    // Every chunk ran as its own Lambda invocation of the function.
    let subtasks: std::collections::BTreeSet<String> = harness
        .records()
        .into_iter()
        .filter(|r| r.path.as_deref() == Some("/invoke/worker/runSubtask"))
        .filter_map(|r| r.restate_invocation_id)
        .collect();
    assert_eq!(subtasks.len(), 3, "one subtask per chunk on the function");

    // Bad input is the job's terminal error, not retried.
    let (status, body) = ask(&harness, r#"{"chunks": []}"#).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("chunks must hold at least one chunk of text"),
        "{body}"
    );

    // `fanout deploy --register` in the crate's folder takes the crate's zip (no --zip), here
    // to the stand-in's Lambda API; new runs then go to that version.
    let mut deploy = Command::new(fanout_binary());
    deploy
        .args([
            "deploy",
            "--function-name",
            "wordcount-dev",
            "--arch",
            "x86_64",
        ])
        .args([
            "--role",
            "arn:aws:iam::000000000000:role/local",
            "--register",
        ])
        .args(["--admin-url", &harness.stack.server.admin_url])
        .current_dir(&job.dir);
    if let Some(keys) = &harness.stack.identity_keys {
        deploy.args(["--identity-keys", keys]);
    }
    for name in [
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
    ] {
        deploy.env_remove(name);
    }
    deploy.envs(local_aws_env(&harness.standin().endpoint_url()));
    let (ok, stdout, stderr) = run(&mut deploy);
    assert!(
        ok && stdout.contains("function:wordcount-dev:1") && stdout.contains("registered"),
        "fanout deploy failed:\n{stdout}\n{stderr}"
    );
    let (status, body) = ask(&harness, &job.request).await;
    assert_eq!((status, body.as_str()), (200, job.response.as_str()));
    assert!(
        harness
            .records()
            .iter()
            .any(|r| r.function == "wordcount-dev"),
        "the deployed version served the run"
    );
    harness.stop().await;

    // `fanout demo --handler ZIP --input example.json` from the crate's folder: the CLI's
    // path from a zip to a running stack, with the job's own task.
    let (ok, stdout, stderr) = run(Command::new(fanout_binary())
        .args(["demo", "--handler"])
        .arg(&zip)
        .args(["--input", "example.json"])
        .current_dir(&job.dir));
    assert!(
        ok && stdout.contains(&format!("Aggregated result: {}", job.response)),
        "fanout demo failed:\n{stdout}\n{stderr}"
    );

    // A zip built for the other CPU is refused with what to do, not started.
    let foreign = std::fs::read(&bootstrap).unwrap();
    let mut arm = foreign.clone();
    arm[18] = 0xb7;
    let arm_binary = job.dir.join("arm-bootstrap");
    std::fs::write(&arm_binary, arm).unwrap();
    let err = fanout::commands::build::handler_binary_from(&arm_binary)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("built for aarch64") && err.contains("--arch x86_64"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scaffold_as_a_debug_build_answers_its_readme_example_over_http() {
    let job = scaffold("wordcount-http");
    let target = shared_target_dir();
    let (ok, stdout, stderr) = run(Command::new("cargo")
        .args(["build", "--manifest-path"])
        .arg(job.dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target));
    assert!(ok, "cargo build failed:\n{stdout}\n{stderr}");
    let binary = target.join("debug").join(&job.name);

    // Its --help is the shared usage, under its own name.
    let (ok, help, _) = run(Command::new(&binary).arg("--help"));
    assert!(
        ok && help.starts_with("wordcount-http: a fanout job")
            && help.contains("FANOUT_IDENTITY_KEYS")
            && help.contains("FANOUT_MAX_CONCURRENCY"),
        "{help}"
    );
    // Configuration errors stop it, named after itself.
    let (ok, _, stderr) = run(Command::new(&binary).env("FANOUT_FAN_IN", "sideways"));
    assert!(
        !ok && stderr.contains("wordcount-http: FANOUT_FAN_IN"),
        "{stderr}"
    );

    let harness = Harness::start_with(StackOptions::new(HandlerMode::Http, binary)).await;
    let (status, body) = ask(&harness, &job.request).await;
    assert_eq!(
        (status, body.as_str()),
        (200, job.response.as_str()),
        "the README's exact answer\n{}",
        harness.handler_log()
    );
    harness.stop().await;
}

#[tokio::test]
async fn fanout_build_asks_which_binary_when_a_crate_has_several() {
    let job = scaffold("twojobs");
    std::fs::create_dir_all(job.dir.join("src/bin")).unwrap();
    std::fs::write(job.dir.join("src/bin/other.rs"), "fn main() {}\n").unwrap();
    let build = |args: &[&str]| {
        run(Command::new(fanout_binary())
            .arg("build")
            .args(args)
            .arg("--manifest-path")
            .arg(job.dir.join("Cargo.toml")))
    };
    let (ok, _, stderr) = build(&[]);
    assert!(
        !ok && stderr.contains("has 2 binaries; pick one with --bin NAME: other, twojobs"),
        "{stderr}"
    );
    let (ok, _, stderr) = build(&["--bin", "nope"]);
    assert!(
        !ok && stderr.contains("no binary \"nope\"")
            && stderr.contains("its binaries: other, twojobs"),
        "{stderr}"
    );
    let (ok, _, stderr) = build(&["--package", "elsewhere"]);
    assert!(
        !ok && stderr.contains("no package \"elsewhere\""),
        "{stderr}"
    );

    // A folder that is taken is refused.
    let (ok, _, stderr) = run(Command::new(fanout_binary()).arg("new").arg(&job.dir));
    assert!(
        !ok && stderr.contains("already exists and is not empty"),
        "{stderr}"
    );
}
