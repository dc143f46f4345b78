//! The path to production, against real emulators: `fanout deploy` against moto (AWS's
//! control plane emulated) and the template against cfn-lint; the zips `fanout build` made
//! with cargo-lambda (`make test` builds them first).

use fanout_standin::process::{Managed, free_port, wait_until};
use fanout_tests::{
    changed_zip, fanout_with_env as fanout, lambda_zip as zip_for, local_aws_env as aws_env,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A program installed by `make tools-aws` into the project's venv.
fn venv_bin(name: &str) -> PathBuf {
    let path = root().join(".tools/venv/bin").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `make tools-aws` (make test does)",
        path.display()
    );
    path
}

/// moto in server mode on a free loopback port, killed with its process group on drop.
struct Moto {
    _process: Managed,
    url: String,
    _dir: tempfile::TempDir,
}

impl Moto {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port().unwrap();
        let mut command = tokio::process::Command::new(venv_bin("moto_server"));
        command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let process = Managed::spawn("moto", command, &dir.path().join("moto.log")).unwrap();
        let up = wait_until(Duration::from_secs(30), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        assert!(up, "moto did not listen on {port}");
        Self {
            _process: process,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// Creates an IAM role in moto and returns its ARN (Lambda there checks roles exist).
    async fn create_role(&self, name: &str) -> String {
        let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
        let response = reqwest::Client::new()
            .post(format!("{}/", self.url))
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=x",
            )
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[
                ("Action", "CreateRole"),
                ("Version", "2010-05-08"),
                ("RoleName", name),
                ("AssumeRolePolicyDocument", policy),
            ]))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert!(status.is_success(), "CreateRole: {status} {body}");
        let start = body.find("<Arn>").expect("an ARN in CreateRole's answer") + 5;
        let end = body[start..].find("</Arn>").unwrap() + start;
        body[start..end].to_owned()
    }
}

/// `application/x-www-form-urlencoded`, as AWS query APIs take it.
fn form(fields: &[(&str, &str)]) -> String {
    let encode = |text: &str| -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_creates_publishes_once_per_change_and_explains_failures() {
    let moto = Moto::start().await;
    let env = aws_env(&moto.url);
    let zip = zip_for("arm64");
    let zip_arg = zip.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let deploy = |extra: Vec<String>| {
        let mut args: Vec<String> = ["deploy", "--function-name", "fanout", "--arch", "arm64"]
            .map(String::from)
            .to_vec();
        args.extend(extra);
        args
    };
    let run = |args: Vec<String>| {
        let env = env.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            fanout(&args, &env).await
        }
    };

    // Creating needs a role; the message says which flag and what it must be.
    let no_role = run(deploy(vec!["--zip".into(), zip_arg.into()])).await;
    assert_ne!(no_role.code, Some(0));
    assert!(
        no_role.stderr.contains("--role arn:aws:iam::"),
        "{no_role:?}"
    );

    // A role Lambda cannot assume (it does not exist) is named as the cause.
    let missing_role = run(deploy(vec![
        "--zip".into(),
        zip_arg.into(),
        "--role".into(),
        "arn:aws:iam::123456789012:role/nobody".into(),
    ]))
    .await;
    assert_ne!(missing_role.code, Some(0));
    assert!(
        missing_role
            .stderr
            .contains("creating function fanout failed")
            && missing_role.stderr.contains("role"),
        "{missing_role:?}"
    );

    let role = moto.create_role("fanout-exec").await;
    let first = run(deploy(vec![
        "--zip".into(),
        zip_arg.into(),
        "--role".into(),
        role.clone(),
    ]))
    .await;
    assert_eq!(first.code, Some(0), "{first:?}");
    assert!(
        first
            .stdout
            .contains("created fanout and published version 1"),
        "{first:?}"
    );
    assert!(
        first.stdout.trim_end().ends_with(":function:fanout:1"),
        "{first:?}"
    );

    let again = run(deploy(vec!["--zip".into(), zip_arg.into()])).await;
    assert_eq!(again.code, Some(0), "{again:?}");
    assert!(
        again
            .stdout
            .contains("unchanged since version 1; nothing new was published"),
        "{again:?}"
    );
    assert!(
        again.stdout.trim_end().ends_with(":function:fanout:1"),
        "{again:?}"
    );

    let changed = changed_zip(&zip, dir.path());
    let second = run(deploy(vec![
        "--zip".into(),
        changed.to_str().unwrap().into(),
    ]))
    .await;
    assert_eq!(second.code, Some(0), "{second:?}");
    assert!(
        second.stdout.contains("published version 2 of fanout"),
        "{second:?}"
    );
    assert!(
        second.stdout.trim_end().ends_with(":function:fanout:2"),
        "{second:?}"
    );

    // A configuration change is a new version too.
    let memory = run(deploy(vec![
        "--zip".into(),
        changed.to_str().unwrap().into(),
        "--memory".into(),
        "512".into(),
    ]))
    .await;
    assert_eq!(memory.code, Some(0), "{memory:?}");
    assert!(memory.stdout.contains("published version 3"), "{memory:?}");

    // One half of a split layout: the same code, serving only the executors.
    let executor = run(vec![
        "deploy".into(),
        "--function-name".into(),
        "fanout-executor".into(),
        "--zip".into(),
        zip_arg.into(),
        "--role".into(),
        role.clone(),
        "--serve".into(),
        "executor".into(),
    ])
    .await;
    assert_eq!(executor.code, Some(0), "{executor:?}");
    // moto routes a request to a service by the credential scope of its signature.
    let configuration: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "{}/2015-03-31/functions/fanout-executor/configuration",
            moto.url
        ))
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=testing/20261201/us-east-1/lambda/aws4_request, \
             SignedHeaders=host, Signature=0",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        configuration["Environment"]["Variables"]["FANOUT_SERVE"], "executor",
        "{configuration}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_credentials_or_region_are_named_with_the_fix() {
    let moto = Moto::start().await;
    let zip = zip_for("arm64");
    let args = [
        "deploy",
        "--function-name",
        "fanout",
        "--zip",
        zip.to_str().unwrap(),
    ];

    let mut no_credentials = aws_env(&moto.url);
    no_credentials.retain(|(k, _)| !k.starts_with("AWS_ACCESS") && !k.starts_with("AWS_SECRET"));
    let run = fanout(&args, &no_credentials).await;
    assert_ne!(run.code, Some(0));
    assert!(run.stderr.contains("no AWS credentials"), "{run:?}");
    assert!(run.stderr.contains("AWS_PROFILE"), "{run:?}");

    // A profile that does not exist is named, in a sentence, not in a dump of the SDK's
    // connector internals.
    let mut no_such_profile = no_credentials.clone();
    no_such_profile.push(("AWS_PROFILE", "nosuch".to_owned()));
    let run = fanout(&args, &no_such_profile).await;
    assert_ne!(run.code, Some(0));
    assert!(
        run.stderr
            .contains("AWS_PROFILE is \"nosuch\", which is not a profile"),
        "{run:?}"
    );
    assert!(
        !run.stderr.contains("DispatchFailure") && run.stderr.len() < 500,
        "{run:?}"
    );
    // An endpoint nobody listens on is unreachable, said as such.
    let mut nobody = aws_env(&moto.url);
    nobody.retain(|(k, _)| !k.starts_with("AWS_ENDPOINT_URL"));
    nobody.push(("AWS_ENDPOINT_URL_LAMBDA", "http://127.0.0.1:1".to_owned()));
    let run = fanout(&args, &nobody).await;
    assert!(
        run.stderr.contains("cannot reach the Lambda API") && run.stderr.len() < 500,
        "{run:?}"
    );

    let mut no_region = aws_env(&moto.url);
    no_region.retain(|(k, _)| *k != "AWS_REGION");
    let run = fanout(&args, &no_region).await;
    assert_ne!(run.code, Some(0));
    assert!(run.stderr.contains("no AWS region"), "{run:?}");

    // Bad values are refused before anything is sent.
    let run = fanout(
        &[&args[..], &["--memory", "64"]].concat(),
        &aws_env(&moto.url),
    )
    .await;
    assert!(run.stderr.contains("128 to 10240"), "{run:?}");
}

/// The ELF machine of the `bootstrap` inside a zip (0xB7 aarch64, 0x3E x86-64) and whether it
/// is executable.
fn bootstrap_of(zip: &Path) -> (u16, bool) {
    let script = "import sys, zipfile\n\
        z = zipfile.ZipFile(sys.argv[1])\n\
        info = z.getinfo('bootstrap')\n\
        head = z.open(info).read(20)\n\
        assert head[:4] == b'\\x7fELF', head\n\
        print(int.from_bytes(head[18:20], 'little'), (info.external_attr >> 16) & 0o111 != 0)\n";
    let output = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(zip)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let mut parts = text.split_whitespace();
    (
        parts.next().unwrap().parse().unwrap(),
        parts.next().unwrap() == "True",
    )
}

#[test]
fn fanout_build_made_an_executable_bootstrap_for_each_architecture() {
    assert_eq!(bootstrap_of(&zip_for("arm64")), (0xB7, true));
    assert_eq!(bootstrap_of(&zip_for("x86_64")), (0x3E, true));
}

#[test]
fn the_sam_template_passes_cfn_lint_and_a_broken_one_does_not() {
    let lint = |path: &Path| {
        std::process::Command::new(venv_bin("cfn-lint"))
            .arg(path)
            .output()
            .unwrap()
    };
    let ok = lint(&root().join("template.yaml"));
    assert!(
        ok.status.success(),
        "{}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );

    // The same template with an output pointing at a resource it does not have: cfn-lint must
    // catch it, or the check above proves nothing.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("template.yaml");
    let text = std::fs::read_to_string(root().join("template.yaml")).unwrap();
    let broken_text = text.replace("!GetAtt RestateInvokerRole.Arn", "!GetAtt MissingRole.Arn");
    assert_ne!(
        broken_text, text,
        "the template still has the invoker role output"
    );
    std::fs::write(&broken, broken_text).unwrap();
    let bad = lint(&broken);
    assert!(
        !bad.status.success(),
        "cfn-lint accepted a dangling reference"
    );
    assert!(String::from_utf8_lossy(&bad.stdout).contains("MissingRole"));

    // The split layout is linted too: its executor's output resolves only while the executor
    // functions exist.
    let dangling = text.replace(
        "!Ref ExecutorFunction.Version",
        "!Ref MissingExecutor.Version",
    );
    assert_ne!(dangling, text, "the template has no split layout");
    std::fs::write(&broken, dangling).unwrap();
    assert!(
        !lint(&broken).status.success(),
        "cfn-lint accepted a dangling executor"
    );
    for split in [
        "FANOUT_SERVE: !If [Split, coordinator, all]",
        "FANOUT_SERVE: executor",
    ] {
        assert!(text.contains(split), "{split}");
    }
}
