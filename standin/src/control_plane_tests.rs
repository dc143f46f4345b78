//! The control plane against the real thing: zips of the real `fanout-handler` (build it first
//! with `cargo build -p fanout-handler`) deployed over Lambda's wire shapes, with reqwest and
//! with aws-sdk-lambda pointed at the stand-in, then invoked through the Invoke API.

use super::tests::Answer;
use super::*;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Digest as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

const DISCOVERY: &str = r#"{"path":"/discover","httpMethod":"GET","headers":{"accept":"application/vnd.restate.endpointmanifest.v4+json"},"body":"","isBase64Encoded":true}"#;
const ROLE: &str = "arn:aws:iam::000000000000:role/fanout";
const FN: &str = "arn%3Aaws%3Alambda%3Aus-east-1%3A000000000000%3Afunction%3A";

fn handler_binary() -> Vec<u8> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let binary = target.join("debug/fanout-handler");
    std::fs::read(&binary).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: run `cargo build -p fanout-handler` before these tests",
            binary.display()
        )
    })
}

/// A zip of `(name, bytes, unix mode)`, deflated as a deploy tool does: a debug build of the
/// handler (tens of MB) fits Lambda's 50 MB zip limit only compressed. Big entries get the
/// fastest level, so the tests do not wait on compression.
fn zip_of(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, bytes, mode) in entries {
        let level = if bytes.len() > 1 << 20 { 1 } else { 6 };
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .compression_level(Some(level))
            .unix_permissions(*mode)
            .large_file(bytes.len() > u32::MAX as usize / 2);
        writer.start_file(*name, options).unwrap();
        writer.write_all(bytes).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

/// The handler as `bootstrap` (not executable in the zip: the stand-in must make it so),
/// plus optional extra files that change the package's hash.
fn handler_zip(binary: &[u8], extra: Option<&str>) -> Vec<u8> {
    let mut entries: Vec<(&str, &[u8], u32)> = vec![("bootstrap", binary, 0o644)];
    if let Some(text) = extra {
        entries.push(("notes/extra.txt", text.as_bytes(), 0o644));
    }
    zip_of(&entries)
}

fn sha(zip: &[u8]) -> String {
    BASE64.encode(sha2::Sha256::digest(zip))
}

async fn start() -> StandIn {
    StandIn::start(StandInConfig::default()).await.unwrap()
}

impl Answer {
    /// Asserts a Lambda error: status, `x-amzn-ErrorType`, `Type`; returns the message.
    fn error(&self, status: u16, kind: &str) -> String {
        assert_eq!(
            (self.status.as_u16(), self.header("x-amzn-ErrorType")),
            (status, Some(kind)),
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        let body = self.json();
        assert_eq!(body["Type"], "User", "{body}");
        body["message"].as_str().unwrap().to_owned()
    }

    fn ok(&self, status: u16) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        assert!(self.header("x-amzn-RequestId").is_some());
        self.json()
    }
}

async fn call(standin: &StandIn, method: Method, path: &str, body: Option<Value>) -> Answer {
    let mut request =
        reqwest::Client::new().request(method, format!("{}{path}", standin.endpoint_url()));
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.unwrap();
    Answer::read(response).await
}

async fn invoke(standin: &StandIn, function_name: &str) -> Answer {
    let path = format!("/2015-03-31/functions/{function_name}/invocations");
    let response = reqwest::Client::new()
        .post(format!("{}{path}", standin.endpoint_url()))
        .body(DISCOVERY)
        .send()
        .await
        .unwrap();
    Answer::read(response).await
}

/// Discovery through the Invoke API answered 200 by the real handler, on `version`.
fn assert_discovered(answer: &Answer, version: &str) {
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.header("X-Amz-Function-Error"),
        None,
        "{:?}",
        answer.json()
    );
    assert_eq!(answer.header("X-Amz-Executed-Version"), Some(version));
    assert_eq!(answer.json()["statusCode"], 200, "{}", answer.json());
}

fn create_body(name: &str, zip: &[u8]) -> Value {
    json!({
        "FunctionName": name,
        "Runtime": "provided.al2023",
        "Role": ROLE,
        "Handler": "bootstrap",
        "Code": {"ZipFile": BASE64.encode(zip)},
        "Architectures": [versions::host_architecture()],
        "MemorySize": 256,
        "Timeout": 30,
        "Environment": {"Variables": {"FANOUT_MAX_SUBTASK_MS": "100", "RUST_LOG": "warn"}},
        "Publish": false,
    })
}

fn versions_of(list: &Value) -> Vec<String> {
    list["Versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["Version"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_release_loop_over_lambdas_wire_shapes() {
    let standin = start().await;
    let binary = handler_binary();
    let zip1 = handler_zip(&binary, None);
    let arn = "arn:aws:lambda:us-east-1:000000000000:function:fanout";

    // CreateFunction: $LATEST, unqualified ARN, the configuration as given.
    let created = call(
        &standin,
        Method::POST,
        "/2015-03-31/functions",
        Some(create_body("fanout", &zip1)),
    )
    .await
    .ok(201);
    assert_eq!(created["FunctionName"], "fanout");
    assert_eq!(created["FunctionArn"], arn);
    assert_eq!(created["Version"], "$LATEST");
    assert_eq!(created["Runtime"], "provided.al2023");
    assert_eq!(created["Role"], ROLE);
    assert_eq!(created["Handler"], "bootstrap");
    assert_eq!(created["CodeSha256"], sha(&zip1));
    assert_eq!(created["CodeSize"], zip1.len());
    assert_eq!(created["MemorySize"], 256);
    assert_eq!(created["Timeout"], 30);
    assert_eq!(created["State"], "Active");
    assert_eq!(created["LastUpdateStatus"], "Successful");
    assert_eq!(created["PackageType"], "Zip");
    assert_eq!(
        created["Architectures"],
        json!([versions::host_architecture()])
    );
    assert_eq!(
        created["Environment"]["Variables"]["FANOUT_MAX_SUBTASK_MS"],
        "100"
    );
    let modified = created["LastModified"].as_str().unwrap();
    assert!(
        modified.len() == 28 && modified.ends_with("+0000") && modified.as_bytes()[10] == b'T',
        "{modified}"
    );
    assert!(!created["RevisionId"].as_str().unwrap().is_empty());

    // GetFunction and GetFunctionConfiguration, plain and qualified.
    let got = call(&standin, Method::GET, "/2015-03-31/functions/fanout", None)
        .await
        .ok(200);
    assert_eq!(got["Configuration"]["CodeSha256"], sha(&zip1));
    assert_eq!(got["Configuration"]["FunctionArn"], arn);
    assert_eq!(got["Code"]["RepositoryType"], "S3");
    let latest = call(
        &standin,
        Method::GET,
        "/2015-03-31/functions/fanout/configuration?Qualifier=%24LATEST",
        None,
    )
    .await
    .ok(200);
    assert_eq!(latest["FunctionArn"], format!("{arn}:$LATEST"));
    assert_eq!(latest["RevisionId"], created["RevisionId"]);

    // PublishVersion: 1, then 1 again while nothing changed.
    let v1 = call(
        &standin,
        Method::POST,
        "/2015-03-31/functions/fanout/versions",
        Some(json!({"Description": "first"})),
    )
    .await
    .ok(201);
    assert_eq!(v1["Version"], "1");
    assert_eq!(v1["FunctionArn"], format!("{arn}:1"));
    assert_eq!(v1["Description"], "first");
    assert_eq!(v1["CodeSha256"], sha(&zip1));
    assert_discovered(&invoke(&standin, &format!("{FN}fanout%3A1")).await, "1");
    let again = call(
        &standin,
        Method::POST,
        "/2015-03-31/functions/fanout/versions",
        Some(json!({})),
    )
    .await
    .ok(201);
    assert_eq!(again["Version"], "1");
    assert_eq!(again["RevisionId"], v1["RevisionId"]);

    // UpdateFunctionCode with other bytes, then publish 2 guarded by CodeSha256.
    let zip2 = handler_zip(&binary, Some("version two"));
    assert_ne!(sha(&zip1), sha(&zip2));
    let updated = call(
        &standin,
        Method::PUT,
        "/2015-03-31/functions/fanout/code",
        Some(json!({"ZipFile": BASE64.encode(&zip2), "Publish": false})),
    )
    .await
    .ok(200);
    assert_eq!(updated["Version"], "$LATEST");
    assert_eq!(updated["FunctionArn"], arn);
    assert_eq!(updated["CodeSha256"], sha(&zip2));
    assert_eq!(updated["MemorySize"], 256, "the configuration stays");
    assert_ne!(updated["RevisionId"], created["RevisionId"]);
    let stale = call(
        &standin,
        Method::POST,
        "/2015-03-31/functions/fanout/versions",
        Some(json!({"CodeSha256": sha(&zip1)})),
    )
    .await;
    let message = stale.error(412, "PreconditionFailedException");
    assert!(message.contains(&sha(&zip2)), "{message}");
    let v2 = call(
        &standin,
        Method::POST,
        "/2015-03-31/functions/fanout/versions",
        Some(json!({"CodeSha256": sha(&zip2)})),
    )
    .await
    .ok(201);
    assert_eq!(v2["Version"], "2");
    assert_eq!(v2["FunctionArn"], format!("{arn}:2"));

    // Both versions side by side, and $LATEST.
    let (one, two) = (format!("{FN}fanout%3A1"), format!("{FN}fanout%3A2"));
    let (a, b, c) = tokio::join!(
        invoke(&standin, &one),
        invoke(&standin, &two),
        invoke(&standin, "fanout"),
    );
    assert_discovered(&a, "1");
    assert_discovered(&b, "2");
    assert_discovered(&c, "$LATEST");
    // Each version runs its own extracted package.
    let binaries: Vec<PathBuf> = ["1", "2", "$LATEST"]
        .iter()
        .map(|v| {
            standin
                .shared
                .function("fanout")
                .unwrap()
                .resolve(Some(v))
                .unwrap()
                .binary
        })
        .collect();
    assert_ne!(binaries[0], binaries[1]);
    assert_eq!(binaries[1], binaries[2]);
    assert!(
        binaries[1]
            .parent()
            .unwrap()
            .join("notes/extra.txt")
            .is_file()
    );
    assert!(!binaries[0].parent().unwrap().join("notes").exists());

    // UpdateFunctionConfiguration changes $LATEST only; publishing it makes 3.
    let configured = call(
        &standin,
        Method::PUT,
        "/2015-03-31/functions/fanout/configuration",
        Some(json!({"MemorySize": 512, "Environment": {"Variables": {"A_B": "c"}}})),
    )
    .await
    .ok(200);
    assert_eq!(configured["MemorySize"], 512);
    assert_eq!(configured["Timeout"], 30);
    assert_eq!(
        configured["Environment"],
        json!({"Variables": {"A_B": "c"}})
    );
    assert_eq!(configured["CodeSha256"], sha(&zip2));
    let v3 = call(
        &standin,
        Method::POST,
        "/2015-03-31/functions/fanout/versions",
        None,
    )
    .await
    .ok(201);
    assert_eq!(
        (v3["Version"].as_str(), v3["MemorySize"].as_u64()),
        (Some("3"), Some(512))
    );
    let v2_now = call(
        &standin,
        Method::GET,
        "/2015-03-31/functions/fanout/configuration?Qualifier=2",
        None,
    )
    .await
    .ok(200);
    assert_eq!(
        v2_now["MemorySize"], 256,
        "a published version is immutable"
    );
    assert_eq!(v2_now["FunctionArn"], format!("{arn}:2"));

    // ListVersionsByFunction: $LATEST first, then in order, every ARN qualified.
    let list = call(
        &standin,
        Method::GET,
        "/2015-03-31/functions/fanout/versions",
        None,
    )
    .await
    .ok(200);
    assert_eq!(versions_of(&list), ["$LATEST", "1", "2", "3"]);
    assert_eq!(list["Versions"][0]["FunctionArn"], format!("{arn}:$LATEST"));
    assert_eq!(list["Versions"][3]["FunctionArn"], format!("{arn}:3"));
    let page = call(
        &standin,
        Method::GET,
        "/2015-03-31/functions/fanout/versions?MaxItems=3",
        None,
    )
    .await
    .ok(200);
    assert_eq!(versions_of(&page), ["$LATEST", "1", "2"]);
    let rest = call(
        &standin,
        Method::GET,
        &format!(
            "/2015-03-31/functions/fanout/versions?MaxItems=3&Marker={}",
            page["NextMarker"].as_str().unwrap()
        ),
        None,
    )
    .await
    .ok(200);
    assert_eq!(versions_of(&rest), ["3"]);
    assert!(rest.get("NextMarker").is_none());

    // DeleteFunction of version 1: gone for invoke and get; $LATEST cannot go alone.
    let deleted = call(
        &standin,
        Method::DELETE,
        "/2015-03-31/functions/fanout?Qualifier=1",
        None,
    )
    .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    invoke(&standin, &format!("{FN}fanout%3A1"))
        .await
        .error(404, "ResourceNotFoundException");
    let message = call(
        &standin,
        Method::GET,
        "/2015-03-31/functions/fanout?Qualifier=1",
        None,
    )
    .await
    .error(404, "ResourceNotFoundException");
    assert_eq!(message, format!("Function not found: {arn}:1"));
    call(
        &standin,
        Method::DELETE,
        "/2015-03-31/functions/fanout?Qualifier=1",
        None,
    )
    .await
    .error(404, "ResourceNotFoundException");
    call(
        &standin,
        Method::DELETE,
        "/2015-03-31/functions/fanout?Qualifier=%24LATEST",
        None,
    )
    .await
    .error(400, "InvalidParameterValueException");
    assert_discovered(&invoke(&standin, &format!("{FN}fanout%3A2")).await, "2");
    let list = call(
        &standin,
        Method::GET,
        "/2015-03-31/functions/fanout/versions",
        None,
    )
    .await
    .ok(200);
    assert_eq!(versions_of(&list), ["$LATEST", "2", "3"]);

    // UpdateFunctionCode with Publish: the new version's configuration, numbers never reused.
    let zip4 = handler_zip(&binary, Some("version four"));
    let v4 = call(
        &standin,
        Method::PUT,
        "/2015-03-31/functions/fanout/code",
        Some(json!({"ZipFile": BASE64.encode(&zip4), "Publish": true})),
    )
    .await
    .ok(200);
    assert_eq!(
        (v4["Version"].as_str(), v4["FunctionArn"].as_str()),
        (Some("4"), Some(&*format!("{arn}:4")))
    );

    // The whole function: gone everywhere, and its code directories with it.
    let functions = call(&standin, Method::GET, "/2015-03-31/functions", None)
        .await
        .ok(200);
    assert_eq!(functions["Functions"][0]["FunctionArn"], arn);
    let deleted = call(
        &standin,
        Method::DELETE,
        "/2015-03-31/functions/fanout",
        None,
    )
    .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    call(&standin, Method::GET, "/2015-03-31/functions/fanout", None)
        .await
        .error(404, "ResourceNotFoundException");
    invoke(&standin, "fanout")
        .await
        .error(404, "ResourceNotFoundException");
    let functions = call(&standin, Method::GET, "/2015-03-31/functions", None)
        .await
        .ok(200);
    assert_eq!(functions["Functions"], json!([]));
    // Idle instances go asynchronously; their code directories with the last of them.
    let code_root = standin.shared.code_root.path().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(&code_root).unwrap().count() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "code directories stayed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    standin.shutdown().await;
    assert!(!code_root.exists(), "the code root goes with the stand-in");
}

#[tokio::test]
async fn control_plane_errors_are_lambdas() {
    let standin = start().await;
    // Small packages: these are refused or never invoked, and a 27 MB debug binary is slow
    // to encode, hash and unpack in an unoptimised build.
    let binary = b"#!/bin/sh\nexec sleep 30\n".as_slice();
    let zip = zip_of(&[("bootstrap", binary, 0o755)]);
    let create = |body: Value| call(&standin, Method::POST, "/2015-03-31/functions", Some(body));

    let message = call(&standin, Method::GET, "/2015-03-31/functions/nope", None)
        .await
        .error(404, "ResourceNotFoundException");
    assert_eq!(
        message,
        "Function not found: arn:aws:lambda:us-east-1:000000000000:function:nope"
    );
    for (method, path) in [
        (Method::GET, "/2015-03-31/functions/nope/configuration"),
        (Method::PUT, "/2015-03-31/functions/nope/configuration"),
        (Method::GET, "/2015-03-31/functions/nope/versions"),
        (Method::POST, "/2015-03-31/functions/nope/versions"),
        (Method::DELETE, "/2015-03-31/functions/nope"),
    ] {
        call(&standin, method, path, Some(json!({})))
            .await
            .error(404, "ResourceNotFoundException");
    }
    call(
        &standin,
        Method::PUT,
        "/2015-03-31/functions/nope/code",
        Some(json!({"ZipFile": BASE64.encode(&zip)})),
    )
    .await
    .error(404, "ResourceNotFoundException");

    // Query parameters that cannot be read are Lambda-shaped errors too, naming the parameter.
    let message = call(
        &standin,
        Method::GET,
        "/2015-03-31/functions?MaxItems=ten",
        None,
    )
    .await
    .error(400, "ValidationException");
    assert!(message.contains("MaxItems"), "{message}");
    let message = call(&standin, Method::POST, "/fanout/instances/kill", None)
        .await
        .error(400, "ValidationException");
    assert!(message.contains("function"), "{message}");

    create(create_body("f", &zip)).await.ok(201);
    let message = create(create_body("f", &zip))
        .await
        .error(409, "ResourceConflictException");
    assert!(message.contains("already exist"), "{message}");

    for role in [
        json!(null),
        json!("fanout"),
        json!("arn:aws:iam::000000000000:user/x"),
    ] {
        let mut body = create_body("g", &zip);
        body["Role"] = role;
        let message = create(body)
            .await
            .error(400, "InvalidParameterValueException");
        assert!(
            message.contains("role") || message.contains("Role"),
            "{message}"
        );
    }

    let no_bootstrap = zip_of(&[("main", binary, 0o755), ("README", b"hello", 0o644)]);
    let message = create(create_body("g", &no_bootstrap))
        .await
        .error(400, "InvalidParameterValueException");
    assert!(message.contains("bootstrap not found"), "{message}");
    let nested = zip_of(&[("dist/bootstrap", binary, 0o755)]);
    create(create_body("g", &nested))
        .await
        .error(400, "InvalidParameterValueException");
    let message = create(create_body("g", b"not a zip"))
        .await
        .error(400, "InvalidParameterValueException");
    assert!(message.contains("Could not unzip"), "{message}");
    call(&standin, Method::GET, "/2015-03-31/functions/g", None)
        .await
        .error(404, "ResourceNotFoundException");

    let mut body = create_body("g", &zip);
    body["Runtime"] = json!("python3.12");
    create(body)
        .await
        .error(400, "InvalidParameterValueException");
    let mut body = create_body("g", &zip);
    body["MemorySize"] = json!(64);
    create(body).await.error(400, "ValidationException");
    let mut body = create_body("g", &zip);
    body["Timeout"] = json!(901);
    create(body).await.error(400, "ValidationException");
    let mut body = create_body("g", &zip);
    body["Environment"] = json!({"Variables": {"AWS_REGION": "eu-west-1"}});
    create(body)
        .await
        .error(400, "InvalidParameterValueException");
    let mut body = create_body("g", &zip);
    body["Code"] = json!({"S3Bucket": "b", "S3Key": "k"});
    create(body)
        .await
        .error(400, "InvalidParameterValueException");
    let mut body = create_body("g", &zip);
    body["FunctionName"] = json!("g:1");
    create(body).await.error(400, "ValidationException");
    let bad_json = reqwest::Client::new()
        .post(format!("{}/2015-03-31/functions", standin.endpoint_url()))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_json.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        bad_json.headers()["x-amzn-ErrorType"],
        "InvalidRequestContentException"
    );
    // Nothing refused left code behind: only f's package is on disk.
    assert_eq!(
        std::fs::read_dir(standin.shared.code_root.path())
            .unwrap()
            .count(),
        1
    );

    call(
        &standin,
        Method::PUT,
        "/2015-03-31/functions/f/configuration",
        Some(json!({"RevisionId": "stale"})),
    )
    .await
    .error(412, "PreconditionFailedException");
    call(
        &standin,
        Method::DELETE,
        "/2015-03-31/functions/f?Qualifier=7",
        None,
    )
    .await
    .error(404, "ResourceNotFoundException");
    call(
        &standin,
        Method::GET,
        "/2015-03-31/functions/f?Qualifier=7",
        None,
    )
    .await
    .error(404, "ResourceNotFoundException");
    call(
        &standin,
        Method::PUT,
        "/2015-03-31/functions/f/code",
        Some(json!({"ZipFile": BASE64.encode(&no_bootstrap)})),
    )
    .await
    .error(400, "InvalidParameterValueException");
    call(
        &standin,
        Method::GET,
        "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aeu-west-1%3A000000000000%3Afunction%3Af",
        None,
    )
    .await
    .error(404, "ResourceNotFoundException");
    standin.shutdown().await;
}

/// Functions given at start are visible to the control plane, and code uploaded to one makes
/// its `$LATEST`; version numbers continue after the given ones.
#[tokio::test]
async fn functions_given_at_start_meet_the_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bootstrap");
    let binary = handler_binary();
    std::fs::write(&bin, &binary).unwrap();
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let standin = StandIn::start(StandInConfig {
        functions: vec![FunctionSpec {
            versions: vec![VersionSpec::new("1", &bin)],
            ..FunctionSpec::new("given")
        }],
        ..StandInConfig::default()
    })
    .await
    .unwrap();
    assert_eq!(standin.function_names(), ["given"]);
    let got = call(&standin, Method::GET, "/2015-03-31/functions/given", None)
        .await
        .ok(200);
    assert_eq!(got["Configuration"]["Version"], "1");
    assert_eq!(got["Configuration"]["CodeSha256"], sha(&binary));
    // Unqualified, as Lambda answers: the function's own ARN, which `fanout prune` takes apart
    // to learn the account and region.
    assert_eq!(
        got["Configuration"]["FunctionArn"],
        "arn:aws:lambda:us-east-1:000000000000:function:given"
    );
    call(
        &standin,
        Method::POST,
        "/2015-03-31/functions/given/versions",
        None,
    )
    .await
    .error(409, "ResourceConflictException");
    call(
        &standin,
        Method::PUT,
        "/2015-03-31/functions/given/configuration",
        Some(json!({"MemorySize": 256})),
    )
    .await
    .error(409, "ResourceConflictException");

    let zip = handler_zip(&binary, Some("uploaded"));
    let v2 = call(
        &standin,
        Method::PUT,
        "/2015-03-31/functions/given/code",
        Some(json!({"ZipFile": BASE64.encode(&zip), "Publish": true})),
    )
    .await
    .ok(200);
    assert_eq!(v2["Version"], "2");
    assert_discovered(&invoke(&standin, "given").await, "$LATEST");
    assert_discovered(&invoke(&standin, "given:1").await, "1");
    assert_discovered(&invoke(&standin, "given:2").await, "2");
    standin.shutdown().await;
}

/// Deleting a version while an invocation runs on it: the invocation finishes, its instance
/// is discarded, and the version is gone for new invokes.
#[tokio::test]
async fn deleting_a_busy_version_lets_its_invocation_finish() {
    needs_curl();
    let script = r#"#!/bin/sh
api="http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime"
work=$(mktemp -d)
while :; do
  curl -sS -D "$work/h" -o "$work/b" "$api/invocation/next" || exit 1
  id=$(grep -i '^lambda-runtime-aws-request-id:' "$work/h" | cut -d' ' -f2 | tr -d '\r')
  sleep 1
  printf '{"version":"%s","pid":%s}' "$AWS_LAMBDA_FUNCTION_VERSION" $$ > "$work/r"
  curl -sS -X POST --data-binary @"$work/r" "$api/invocation/$id/response" >/dev/null
done
"#;
    let standin = start().await;
    let zip = zip_of(&[("bootstrap", script.as_bytes(), 0o644)]);
    let mut body = create_body("slow", &zip);
    body["Publish"] = json!(true);
    let created = call(&standin, Method::POST, "/2015-03-31/functions", Some(body))
        .await
        .ok(201);
    assert_eq!(created["Version"], "1");

    let busy = tokio::spawn({
        let url = standin.endpoint_url();
        async move {
            reqwest::Client::new()
                .post(format!("{url}/2015-03-31/functions/slow:1/invocations"))
                .body("{}")
                .send()
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let deleted = call(
        &standin,
        Method::DELETE,
        "/2015-03-31/functions/slow?Qualifier=1",
        None,
    )
    .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    invoke(&standin, "slow:1")
        .await
        .error(404, "ResourceNotFoundException");
    let finished = busy.await.unwrap();
    assert_eq!(finished.status(), StatusCode::OK);
    assert!(finished.headers().get("X-Amz-Function-Error").is_none());
    let answer: Value = finished.json().await.unwrap();
    assert_eq!(answer["version"], "1");
    let pid = answer["pid"].as_u64().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the instance of version 1 lives on"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    standin.shutdown().await;
}

fn needs_curl() {
    assert!(
        std::process::Command::new("curl")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "the sh bootstrap of this test needs curl"
    );
}

/// The strongest check: aws-sdk-lambda, as `fanout deploy` uses it, against the stand-in.
#[tokio::test]
async fn aws_sdk_lambda_deploys_to_the_standin() {
    use aws_sdk_lambda::client::Waiters as _;
    use aws_sdk_lambda::config::{BehaviorVersion, Credentials, Region};
    use aws_sdk_lambda::primitives::Blob;
    use aws_sdk_lambda::types::{Architecture, Environment, FunctionCode, Runtime};

    let standin = start().await;
    let config = aws_sdk_lambda::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .endpoint_url(standin.endpoint_url())
        .build();
    let lambda = aws_sdk_lambda::Client::from_conf(config);
    let binary = handler_binary();
    let zip1 = handler_zip(&binary, None);
    let wait = Duration::from_secs(30);

    let created = lambda
        .create_function()
        .function_name("fanout")
        .runtime(Runtime::Providedal2023)
        .role(ROLE)
        .handler("bootstrap")
        .code(
            FunctionCode::builder()
                .zip_file(Blob::new(zip1.clone()))
                .build(),
        )
        .architectures(Architecture::from(versions::host_architecture()))
        .memory_size(256)
        .timeout(30)
        .environment(
            Environment::builder()
                .variables("FANOUT_MAX_SUBTASK_MS", "100")
                .build(),
        )
        .publish(false)
        .send()
        .await
        .unwrap();
    assert_eq!(created.version(), Some("$LATEST"));
    assert_eq!(created.code_sha256(), Some(&*sha(&zip1)));
    lambda
        .wait_until_function_active_v2()
        .function_name("fanout")
        .wait(wait)
        .await
        .unwrap();
    lambda
        .wait_until_function_active()
        .function_name("fanout")
        .wait(wait)
        .await
        .unwrap();
    let v1 = lambda
        .publish_version()
        .function_name("fanout")
        .code_sha256(sha(&zip1))
        .send()
        .await
        .unwrap();
    assert_eq!(v1.version(), Some("1"));
    let v1_arn = v1.function_arn().unwrap().to_owned();
    assert_eq!(v1_arn, standin.version_arn("fanout", "1"));
    lambda
        .wait_until_published_version_active()
        .function_name("fanout")
        .qualifier("1")
        .wait(wait)
        .await
        .unwrap();

    let zip2 = handler_zip(&binary, Some("two"));
    let updated = lambda
        .update_function_code()
        .function_name("fanout")
        .zip_file(Blob::new(zip2.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.code_sha256(), Some(&*sha(&zip2)));
    lambda
        .wait_until_function_updated_v2()
        .function_name("fanout")
        .wait(wait)
        .await
        .unwrap();
    lambda
        .wait_until_function_updated()
        .function_name("fanout")
        .wait(wait)
        .await
        .unwrap();
    let stale = lambda
        .publish_version()
        .function_name("fanout")
        .code_sha256(sha(&zip1))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(stale.is_precondition_failed_exception(), "{stale:?}");
    let v2 = lambda
        .publish_version()
        .function_name("fanout")
        .send()
        .await
        .unwrap();
    assert_eq!(v2.version(), Some("2"));

    for (arn, version) in [
        (&v1_arn, "1"),
        (&v2.function_arn().unwrap().to_owned(), "2"),
    ] {
        let out = lambda
            .invoke()
            .function_name(arn)
            .payload(Blob::new(DISCOVERY))
            .send()
            .await
            .unwrap();
        assert_eq!(out.status_code(), 200);
        assert_eq!(out.function_error(), None);
        assert_eq!(out.executed_version(), Some(version));
        let answer: Value = serde_json::from_slice(out.payload().unwrap().as_ref()).unwrap();
        assert_eq!(answer["statusCode"], 200, "{answer}");
    }

    let configured = lambda
        .update_function_configuration()
        .function_name("fanout")
        .memory_size(512)
        .send()
        .await
        .unwrap();
    assert_eq!(configured.memory_size(), Some(512));
    let got = lambda
        .get_function()
        .function_name("fanout")
        .send()
        .await
        .unwrap();
    assert_eq!(got.configuration().unwrap().memory_size(), Some(512));
    assert_eq!(got.code().unwrap().repository_type(), Some("S3"));
    let v1_conf = lambda
        .get_function_configuration()
        .function_name(&v1_arn)
        .send()
        .await
        .unwrap();
    assert_eq!(v1_conf.memory_size(), Some(256));

    let versions: Vec<String> = lambda
        .list_versions_by_function()
        .function_name("fanout")
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap()
        .iter()
        .filter_map(|v| v.version().map(str::to_owned))
        .collect();
    assert_eq!(versions, ["$LATEST", "1", "2"]);

    lambda
        .delete_function()
        .function_name("fanout")
        .qualifier("1")
        .send()
        .await
        .unwrap();
    let gone = lambda
        .invoke()
        .function_name(&v1_arn)
        .payload(Blob::new(DISCOVERY))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(gone.is_resource_not_found_exception(), "{gone:?}");

    let exists = lambda
        .create_function()
        .function_name("fanout")
        .runtime(Runtime::Providedal2023)
        .role(ROLE)
        .handler("bootstrap")
        .code(
            FunctionCode::builder()
                .zip_file(Blob::new(zip1.clone()))
                .build(),
        )
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(exists.is_resource_conflict_exception(), "{exists:?}");
    let bad_role = lambda
        .create_function()
        .function_name("other")
        .runtime(Runtime::Providedal2023)
        .role("not-a-role")
        .handler("bootstrap")
        .code(
            FunctionCode::builder()
                .zip_file(Blob::new(zip1.clone()))
                .build(),
        )
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        bad_role.is_invalid_parameter_value_exception(),
        "{bad_role:?}"
    );

    lambda
        .delete_function()
        .function_name("fanout")
        .send()
        .await
        .unwrap();
    let missing = lambda
        .get_function()
        .function_name("fanout")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(missing.is_resource_not_found_exception(), "{missing:?}");
    standin.shutdown().await;
}
