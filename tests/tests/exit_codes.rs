//! One exit-code table for every verb (`fanout::exit`), checked on the real `fanout` binary:
//! an unreachable Restate or Lambda API is 5 whatever the verb, bad input 4, an unknown id or
//! function 6, a bad flag 2; and every verb's `--help` ends with the same table.

use fanout::restate_server::{RestateServer, ServerOptions};
use fanout_standin::{StandIn, StandInConfig};
use fanout_tests::{CliRun, fanout_binary, lambda_zip, local_aws_env};

/// `fanout ARGS` with `env` on an environment cleared of Restate and AWS settings.
async fn fanout(args: &[&str], env: &[(&str, String)]) -> CliRun {
    let mut command = tokio::process::Command::new(fanout_binary());
    command.args(args);
    for name in [
        "RESTATE_ADMIN_URL",
        "RESTATE_INGRESS_URL",
        "RESTATE_AUTH_TOKEN",
        "AWS_PROFILE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_LAMBDA",
    ] {
        command.env_remove(name);
    }
    command
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("the fanout binary runs")
        .into()
}

/// A loopback URL nothing listens on.
fn nobody() -> String {
    format!(
        "http://127.0.0.1:{}",
        fanout_standin::process::free_port().unwrap()
    )
}

const ID: &str = "inv_1d7ECWP1bH4t5dNhlnBYDTAV59WL5YJsYh";
const ARN: &str = "arn:aws:lambda:us-east-1:000000000000:function:fanout:1";

fn assert_code(run: &CliRun, code: i32, what: &str) {
    assert_eq!(run.code, Some(code), "{what}: {run:?}");
    assert!(
        run.stderr.contains("error:"),
        "{what}: no error message: {run:?}"
    );
    assert!(!run.stderr.contains("panicked"), "{what}: {run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_restate_is_5_for_every_verb_that_talks_to_it() {
    let dead = nobody();
    let restate = [
        ("RESTATE_ADMIN_URL", dead.clone()),
        ("RESTATE_INGRESS_URL", dead.clone()),
    ];
    for args in [
        vec!["invoke", "a,b"],
        vec!["invoke", "--send", "a,b"],
        vec!["status", ID],
        vec!["attach", ID],
        vec!["cancel", ID],
        vec!["runs"],
        vec!["register", "--arn", ARN],
        vec!["register", "--uri", "http://127.0.0.1:9080"],
    ] {
        let run = fanout(&args, &restate).await;
        assert_code(&run, 5, &args.join(" "));
        assert!(
            run.stderr.contains("cannot reach Restate"),
            "{args:?}: {run:?}"
        );
    }

    // prune: the Lambda API first; unreachable too is 5.
    let mut aws = local_aws_env(&dead);
    aws.extend(restate.clone());
    let run = fanout(&["prune", "--function-name", "fanout"], &aws).await;
    assert_code(&run, 5, "prune, Lambda API unreachable");
    assert!(
        run.stderr.contains("cannot reach the Lambda API"),
        "{run:?}"
    );

    // prune with the function on a reachable Lambda (the stand-in's control plane, where
    // `fanout deploy` creates it) and Restate's admin API down: 5; a function Lambda does not
    // have: 6.
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let mut aws = local_aws_env(&standin.endpoint_url());
    aws.extend(restate.clone());
    let zip = lambda_zip("x86_64");
    let deploy = [
        "deploy",
        "--function-name",
        "fanout",
        "--arch",
        "x86_64",
        "--role",
        "arn:aws:iam::000000000000:role/local",
        "--zip",
        zip.to_str().unwrap(),
    ];
    let run = fanout(&deploy, &aws).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    let run = fanout(&["prune", "--function-name", "fanout"], &aws).await;
    assert_code(&run, 5, "prune, admin API unreachable");
    assert!(
        run.stderr.contains("cannot reach Restate's admin API"),
        "{run:?}"
    );
    let run = fanout(&["prune", "--function-name", "nosuch"], &aws).await;
    assert_code(&run, 6, "prune, no such function");
    assert!(run.stderr.contains("nosuch does not exist"), "{run:?}");
    standin.shutdown().await;

    // deploy: the Lambda API unreachable.
    let zip = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(zip.path(), b"PK\x03\x04 not really").unwrap();
    let run = fanout(
        &[
            "deploy",
            "--function-name",
            "fanout",
            "--zip",
            zip.path().to_str().unwrap(),
        ],
        &local_aws_env(&dead),
    )
    .await;
    assert_code(&run, 5, "deploy, Lambda API unreachable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_4_before_anything_is_sent() {
    let dead = nobody();
    let restate = [
        ("RESTATE_ADMIN_URL", dead.clone()),
        ("RESTATE_INGRESS_URL", dead.clone()),
    ];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["register", "--arn", "arn:aws:s3:::bucket"],
            "is not a Lambda function ARN",
        ),
        (
            vec![
                "register",
                "--arn",
                "arn:aws:lambda:us-east-1:1:function:fanout:$LATEST",
            ],
            "$LATEST",
        ),
        (vec!["register", "--uri", "localhost:9080"], "not an HTTP"),
        (vec!["status", "not-an-id"], "is not an invocation id"),
        (vec!["attach", "inv_"], "is not an invocation id"),
        (vec!["cancel", "123"], "is not an invocation id"),
        (
            vec!["invoke", "--input", "/nonexistent/task.json"],
            "cannot read the task file",
        ),
        (
            vec!["demo", "--input", "/nonexistent/task.json"],
            "cannot read the task file",
        ),
        (
            vec!["local", "--handler", "/nonexistent/bootstrap.zip"],
            "cannot read the handler",
        ),
    ];
    for (args, says) in cases {
        let run = fanout(&args, &restate).await;
        assert_code(&run, 4, &args.join(" "));
        assert!(run.stderr.contains(says), "{args:?}: {run:?}");
    }

    // deploy: a missing zip, a value Lambda cannot take, missing credentials or region.
    let aws = local_aws_env(&dead);
    let run = fanout(
        &[
            "deploy",
            "--function-name",
            "f",
            "--zip",
            "/nonexistent.zip",
        ],
        &aws,
    )
    .await;
    assert_code(&run, 4, "deploy, missing zip");
    assert!(run.stderr.contains("cannot read the zip"), "{run:?}");
    let zip = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(zip.path(), b"PK\x03\x04").unwrap();
    let zip_arg = zip.path().to_str().unwrap();
    let run = fanout(
        &[
            "deploy",
            "--function-name",
            "f",
            "--zip",
            zip_arg,
            "--memory",
            "64",
        ],
        &aws,
    )
    .await;
    assert_code(&run, 4, "deploy --memory 64");
    let mut no_region = aws.clone();
    no_region.retain(|(k, _)| *k != "AWS_REGION");
    let run = fanout(
        &["deploy", "--function-name", "f", "--zip", zip_arg],
        &no_region,
    )
    .await;
    assert_code(&run, 4, "deploy without a region");
    assert!(run.stderr.contains("no AWS region"), "{run:?}");

    // build and new: nothing to build here, a crate name cargo refuses.
    let empty = tempfile::tempdir().unwrap();
    let run: CliRun = tokio::process::Command::new(fanout_binary())
        .args(["build", "--output", "json"])
        .current_dir(empty.path())
        .output()
        .await
        .unwrap()
        .into();
    assert_code(&run, 4, "build outside a crate");
    let report = run.json();
    assert_eq!(report["outcome"], "rejected", "{run:?}");
    assert!(
        report["error"].as_str().unwrap().contains("no Cargo.toml"),
        "{run:?}"
    );
    let run = fanout(
        &[
            "new",
            empty.path().join("9lives").to_str().unwrap(),
            "--fanout-path",
            env!("CARGO_MANIFEST_DIR"),
        ],
        &[],
    )
    .await;
    assert_code(&run, 4, "new with a bad crate name");

    // With --output json, the error is one object on stdout, as for invoke and status.
    for verb in ["register", "deploy"] {
        let mut args = vec![verb, "--output", "json"];
        let arn_args = ["--arn", "arn:aws:s3:::bucket"];
        let deploy_args = ["--function-name", "fan out", "--zip", zip_arg];
        args.extend(if verb == "register" {
            &arn_args[..]
        } else {
            &deploy_args[..]
        });
        let run = fanout(&args, &aws).await;
        assert_code(&run, 4, verb);
        assert_eq!(run.json()["outcome"], "rejected", "{verb}: {run:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_id_is_6() {
    let server = RestateServer::start(
        &fanout::tools::restate_server().unwrap(),
        &ServerOptions::default(),
    )
    .await
    .unwrap();
    let env = [
        ("RESTATE_ADMIN_URL", server.admin_url.clone()),
        ("RESTATE_INGRESS_URL", server.ingress_url.clone()),
    ];
    // Right after start, the partitions may not answer introspection for a moment (exit 1).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while fanout(&["runs"], &env).await.code != Some(0) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    for verb in ["status", "attach", "cancel"] {
        let run = fanout(&[verb, ID], &env).await;
        assert_code(&run, 6, verb);
        assert!(run.stderr.contains("does not know"), "{verb}: {run:?}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_flag_is_2_and_every_verb_shows_the_one_table() {
    for args in [
        vec!["register", "--nope"],
        vec!["status"],
        vec!["invoke", "a", "--max-concurrency", "0"],
        vec!["prune"],
        vec!["local", "--ports", "http"],
        vec!["deploy", "--function-name", "f", "--arch", "sparc"],
    ] {
        let run = fanout(&args, &[]).await;
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
    }
    let verbs = [
        "demo", "local", "register", "new", "build", "deploy", "prune", "bench", "invoke",
        "attach", "status", "cancel", "runs", "redrive",
    ];
    let table = |help: &str| {
        let at = help
            .find("Exit codes (the same for every fanout verb):")
            .unwrap_or_else(|| panic!("no exit-code table in:\n{help}"));
        help[at..].to_owned()
    };
    let top = fanout(&["--help"], &[]).await;
    let expected = table(&top.stdout);
    for code in ["  2 ", "  4 ", "  5 ", "  6 ", "  130 "] {
        assert!(expected.contains(code), "{expected}");
    }
    for verb in verbs {
        let help = fanout(&[verb, "--help"], &[]).await;
        assert_eq!(help.code, Some(0), "{verb}: {help:?}");
        assert_eq!(table(&help.stdout), expected, "{verb} --help");
    }
}
