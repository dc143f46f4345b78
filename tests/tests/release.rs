//! A full local release loop with no AWS account: `fanout deploy --register` against the
//! local Lambda stand-in's control plane and the real restate-server, a long fan-out pinned to
//! version 1, version 2 deployed beside it, and `fanout prune` keeping version 1 until that
//! fan-out is done, then removing it from Restate and from Lambda.

use fanout::admin::sql_string;
use fanout_tests::{
    CliRun, Harness, Mode, changed_zip, fanout_with_env, lambda_zip, local_aws_env,
};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

const FUNCTION: &str = "fanout-rel";
const ROLE: &str = "arn:aws:iam::000000000000:role/fanout-local";

fn as_args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `fanout ARGS` pointed at this stack's Lambda stand-in and Restate admin API.
async fn cli(h: &Harness, args: &[&str]) -> CliRun {
    let mut env = local_aws_env(&h.standin().endpoint_url());
    env.push(("RESTATE_ADMIN_URL", h.stack.server.admin_url.clone()));
    fanout_with_env(args, &env).await
}

/// The deployment id `fanout register` printed.
fn deployment_id(run: &CliRun) -> String {
    run.stdout
        .split_whitespace()
        .find(|w| w.starts_with("dp_"))
        .unwrap_or_else(|| panic!("no deployment id in {run:?}"))
        .to_owned()
}

async fn lambda_version_exists(h: &Harness, version: &str) -> bool {
    let url = format!(
        "{}/2015-03-31/functions/{FUNCTION}?Qualifier={version}",
        h.standin().endpoint_url()
    );
    reqwest::get(url).await.unwrap().status().is_success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_register_run_deploy_again_and_prune_only_what_is_drained() {
    let h = Harness::start(Mode::Lambda).await;
    let x86 = lambda_zip("x86_64");
    // A chore named flaky… fails retryably for 6 s on version 1, so the fan-out stays pinned
    // to version 1 while version 2 is deployed and prune runs.
    let deploy = |zip: PathBuf| {
        vec![
            "deploy".to_owned(),
            "--function-name".into(),
            FUNCTION.into(),
            "--arch".into(),
            "x86_64".into(),
            "--zip".into(),
            zip.display().to_string(),
            "--role".into(),
            ROLE.into(),
            "--env".into(),
            "FANOUT_FLAKY_MS=6000".into(),
            "--env".into(),
            "FANOUT_MAX_SUBTASK_MS=100".into(),
            "--register".into(),
        ]
    };

    let v1_args = deploy(x86.clone());
    let v1 = cli(&h, &as_args(&v1_args)).await;
    assert_eq!(v1.code, Some(0), "{v1:?}");
    assert!(
        v1.stdout.contains(&format!("function:{FUNCTION}:1")),
        "{v1:?}"
    );
    let worker_line = v1
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("worker:"));
    assert!(
        worker_line.is_some_and(|l| l.contains(" run") && l.contains("runSubtask")),
        "{v1:?}"
    );
    let v1_deployment = deployment_id(&v1);

    // $LATEST is refused with the reason.
    let latest = cli(
        &h,
        &[
            "register",
            "--arn",
            &format!("arn:aws:lambda:us-east-1:000000000000:function:{FUNCTION}:$LATEST"),
        ],
    )
    .await;
    assert_ne!(latest.code, Some(0));
    assert!(
        latest.stderr.contains("$LATEST") && latest.stderr.contains("published version"),
        "{latest:?}"
    );

    // A long fan-out starts on version 1.
    let sent: Value = reqwest::Client::new()
        .post(format!("{}/worker/run/send", h.stack.ingress_url))
        .json(&json!({"description": "flaky chore,quick chore"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = sent["invocationId"]
        .as_str()
        .expect("an invocation id")
        .to_owned();
    let pinned = fanout_standin::process::wait_until(Duration::from_secs(10), || {
        let (h, id) = (&h, id.clone());
        async move {
            let rows = h
                .query(&format!(
                    "SELECT pinned_deployment_id FROM sys_invocation WHERE id = {}",
                    sql_string(&id)
                ))
                .await;
            rows.first()
                .and_then(|r| r["pinned_deployment_id"].as_str())
                .is_some()
        }
    })
    .await;
    assert!(pinned, "the fan-out never started");

    // Version 2: other code, registered beside version 1.
    let dir = tempfile::tempdir().unwrap();
    let changed = changed_zip(&x86, dir.path());
    let v2 = cli(&h, &as_args(&deploy(changed))).await;
    assert_eq!(v2.code, Some(0), "{v2:?}");
    assert!(
        v2.stdout.contains(&format!("function:{FUNCTION}:2")),
        "{v2:?}"
    );

    // Prune while version 1 still has the fan-out: it stays, in Restate and in Lambda.
    let busy = cli(&h, &["prune", "--function-name", FUNCTION]).await;
    assert_eq!(busy.code, Some(0), "{busy:?}");
    let line_1 = busy
        .stdout
        .lines()
        .find(|l| l.contains(&v1_deployment))
        .unwrap_or_default();
    assert!(
        line_1.contains("keep") && line_1.contains("unfinished"),
        "{busy:?}"
    );
    assert!(
        busy.stdout
            .lines()
            .any(|l| l.contains("keep (newest version)")),
        "{busy:?}"
    );
    assert!(lambda_version_exists(&h, "1").await);

    // The fan-out finishes on the code that began it.
    let result: Value = reqwest::get(format!(
        "{}/restate/invocation/{id}/attach",
        h.stack.ingress_url
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(
        result,
        json!({"description": "flaky chore: DONE,quick chore: DONE"})
    );
    let on = h
        .query(&format!(
            "SELECT pinned_deployment_id FROM sys_invocation WHERE id = {}",
            sql_string(&id)
        ))
        .await;
    assert_eq!(on[0]["pinned_deployment_id"], json!(v1_deployment));

    let plan = cli(&h, &["prune", "--function-name", FUNCTION, "--dry-run"]).await;
    assert!(plan.stdout.contains("would remove"), "{plan:?}");
    assert!(
        lambda_version_exists(&h, "1").await,
        "a dry run changes nothing"
    );

    let pruned = cli(&h, &["prune", "--function-name", FUNCTION]).await;
    assert_eq!(pruned.code, Some(0), "{pruned:?}");
    let line_1 = pruned
        .stdout
        .lines()
        .find(|l| l.contains(&v1_deployment))
        .unwrap_or_default();
    assert!(line_1.contains("removed"), "{pruned:?}");
    let deployments = h.stack.admin.deployments().await.unwrap();
    assert!(
        !deployments.iter().any(|d| d["id"] == json!(v1_deployment)),
        "{deployments:?}"
    );
    assert!(
        !lambda_version_exists(&h, "1").await,
        "Lambda version 1 is gone"
    );
    assert!(lambda_version_exists(&h, "2").await);

    // New work runs on version 2.
    let after = h.run("after,prune").await;
    assert_eq!(after.status, 200, "{}", after.message());
    h.stop().await;
}
