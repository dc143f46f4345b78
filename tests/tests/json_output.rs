//! `--output json` on the release verbs: `fanout deploy`, `register` and `prune` each print one
//! JSON object on stdout, against the local Lambda stand-in's control plane and a real
//! restate-server, and a script chains them: deploy → register with the ARN deploy printed →
//! prune's plan.

use fanout_tests::{
    CliRun, Harness, Mode, changed_zip, fanout_with_env, lambda_zip, local_aws_env,
};
use serde_json::{Value, json};

const FUNCTION: &str = "fanout-json";
const ROLE: &str = "arn:aws:iam::000000000000:role/fanout-local";

/// `fanout ARGS --output json` pointed at this stack's stand-in and admin API; one JSON object.
async fn json_of(h: &Harness, args: &[&str]) -> (CliRun, Value) {
    let mut env = local_aws_env(&h.standin().endpoint_url());
    env.push(("RESTATE_ADMIN_URL", h.stack.server.admin_url.clone()));
    let args: Vec<&str> = args.iter().copied().chain(["--output", "json"]).collect();
    let run = fanout_with_env(&args, &env).await;
    let value = run.json();
    (run, value)
}

fn deploy_args(zip: &std::path::Path) -> Vec<String> {
    [
        "deploy",
        "--function-name",
        FUNCTION,
        "--arch",
        "x86_64",
        "--role",
        ROLE,
        "--zip",
    ]
    .into_iter()
    .map(String::from)
    .chain([zip.display().to_string()])
    .collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Lambda's CodeSha256 of a file (base64 of its SHA-256), computed apart from fanout.
fn code_sha256(path: &std::path::Path) -> String {
    let script = "import base64, hashlib, sys\n\
        print(base64.b64encode(hashlib.sha256(open(sys.argv[1], 'rb').read()).digest()).decode())";
    let output = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .output()
        .expect("python3 runs");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_register_and_prune_print_one_object_a_script_can_chain() {
    let h = Harness::start(Mode::Lambda).await;
    let zip = lambda_zip("x86_64");

    // deploy: the function, the version and its ARN, what happened, the zip.
    let (run, first) = json_of(&h, &strs(&deploy_args(&zip))).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(first["outcome"], "published", "{first}");
    assert_eq!(first["function"], FUNCTION);
    assert_eq!(first["version"], "1");
    assert_eq!(first["createdFunction"], true);
    assert_eq!(first["published"], true);
    assert_eq!(first["registered"], Value::Null);
    assert_eq!(first["zip"]["codeSha256"], code_sha256(&zip));
    assert_eq!(
        first["zip"]["bytes"],
        std::fs::metadata(&zip).unwrap().len()
    );
    let arn = first["versionArn"]
        .as_str()
        .expect("a version ARN")
        .to_owned();
    assert!(arn.ends_with(&format!(":function:{FUNCTION}:1")), "{arn}");
    // Nothing but the object on stdout; the identity note goes to stderr.
    assert_eq!(run.stdout.trim().lines().count(), 1, "{run:?}");
    assert!(run.stderr.contains("FANOUT_IDENTITY_KEYS"), "{run:?}");

    // register with the ARN deploy printed.
    let (run, registered) = json_of(&h, &["register", "--arn", &arn]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(registered["outcome"], "registered", "{registered}");
    let v1 = registered["deploymentId"].as_str().unwrap().to_owned();
    assert!(v1.starts_with("dp_"), "{registered}");
    assert_eq!(registered["endpoint"]["arn"], arn.as_str());
    let worker = registered["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "worker")
        .unwrap_or_else(|| panic!("no worker service in {registered}"));
    assert!(
        worker["handlers"]
            .as_array()
            .unwrap()
            .contains(&json!("run")),
        "{registered}"
    );

    // The same code again: nothing new.
    let (run, again) = json_of(&h, &strs(&deploy_args(&zip))).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(again["outcome"], "unchanged", "{again}");
    assert_eq!(again["published"], false);
    assert_eq!(again["versionArn"], arn.as_str());

    // New code with --register: version 2 and its deployment in one object.
    let dir = tempfile::tempdir().unwrap();
    let changed = changed_zip(&zip, dir.path());
    let mut args = deploy_args(&changed);
    args.push("--register".into());
    let (run, second) = json_of(&h, &strs(&args)).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(second["version"], "2", "{second}");
    assert_eq!(second["createdFunction"], false);
    let v2 = second["registered"]["deploymentId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(v2.starts_with("dp_") && v2 != v1, "{second}");
    assert_eq!(
        second["registered"]["endpoint"]["arn"],
        second["versionArn"]
    );

    // prune: the plan, then the same plan carried out.
    let (run, plan) = json_of(&h, &["prune", "--function-name", FUNCTION, "--dry-run"]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(plan["outcome"], "dry-run", "{plan}");
    let entry = |plan: &Value, id: &str| {
        plan["plan"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["deploymentId"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no {id} in {plan}"))
    };
    let old = entry(&plan, &v1);
    assert_eq!(old["action"], "remove", "{plan}");
    assert_eq!(old["done"], false, "{plan}");
    assert_eq!(old["version"], 1);
    let newest = entry(&plan, &v2);
    assert_eq!(newest["action"], "keep", "{plan}");
    assert_eq!(newest["reason"], "newest version", "{plan}");

    let (run, pruned) = json_of(&h, &["prune", "--function-name", FUNCTION]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(pruned["outcome"], "pruned", "{pruned}");
    assert_eq!(entry(&pruned, &v1)["done"], true, "{pruned}");
    let deployments = h.stack.admin.deployments().await.unwrap();
    assert!(
        !deployments.iter().any(|d| d["id"] == json!(v1)),
        "{deployments:?}"
    );

    // An error is one object too, with the exit code's outcome.
    let (run, missing) = json_of(&h, &["prune", "--function-name", "nosuch"]).await;
    assert_eq!(run.code, Some(6), "{run:?}");
    assert_eq!(missing["outcome"], "unknown", "{missing}");
    assert!(
        missing["error"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{missing}"
    );
    h.stop().await;
}
