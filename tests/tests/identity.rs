//! Request identity: only Restate may call the handler.
//!
//! The real restate-server signs with an ed25519 key (its PEM in
//! `RESTATE_WORKER__INVOKER__REQUEST_IDENTITY_PRIVATE_KEY_PEM_FILE`), the real handler verifies
//! with `FANOUT_IDENTITY_KEYS`, in both modes: over HTTP/2 to the endpoint, and on Lambda
//! through the stand-in's Invoke API. Signed runs succeed; unsigned requests and JWTs that are
//! well-formed but signed by another key get 401, `/discover` included; a correctly signed
//! direct call (the control) is served, so the refusals are about the signature and nothing
//! else. Rotation: a handler that lists the old and the new key serves a server that signs with
//! the new one; a handler that knows only an unrelated key is refused at registration.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use bytes::Bytes;
use fanout::identity::{self, KeyPair};
use fanout::stack::{LocalStack, RequestIdentity};
use fanout_tests::{Harness, Mode, fanout_with_env, handler_binary, local_aws_env};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const DISCOVER_ACCEPT: &str = "application/vnd.restate.endpointmanifest.v4+json";
const INVOKE_PATH: &str = "/invoke/worker/runSubtask";

/// A JWT as restate-server makes one (EdDSA, `kid` = the public key, audience = the path,
/// valid for a minute), signed by `key`, but naming `kid`.
fn jwt(key: &KeyPair, kid: &str, audience: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = json!({"typ": "JWT", "alg": "EdDSA", "kid": kid});
    let claims = json!({"aud": audience, "iat": now, "nbf": now - 60, "exp": now + 60});
    let signed = format!(
        "{}.{}",
        B64URL.encode(header.to_string()),
        B64URL.encode(claims.to_string())
    );
    format!("{signed}.{}", B64URL.encode(key.sign(signed.as_bytes())))
}

/// The start of a long body, for assertion messages.
fn short(body: &str) -> &str {
    match body.char_indices().nth(300) {
        Some((end, _)) => &body[..end],
        None => body,
    }
}

fn signed_headers(token: String) -> Vec<(&'static str, String)> {
    vec![
        ("x-restate-signature-scheme", "v1".into()),
        ("x-restate-jwt-v1", token),
    ]
}

/// The request headers of every way to get it wrong, each with what it is, for `path`.
fn refused_headers(
    genuine_kid: &str,
    path: &str,
) -> Vec<(&'static str, Vec<(&'static str, String)>)> {
    let attacker = KeyPair::generate().unwrap();
    vec![
        ("no signature headers", vec![]),
        (
            "scheme unsigned",
            vec![("x-restate-signature-scheme", "unsigned".into())],
        ),
        (
            "a JWT signed by another key",
            signed_headers(jwt(&attacker, &attacker.public_key(), path)),
        ),
        (
            "a JWT naming the genuine key, signed by another",
            signed_headers(jwt(&attacker, genuine_kid, path)),
        ),
        (
            "a JWT that is not one",
            signed_headers("eyJhbGciOiJFZERTQSJ9.e30.AAAA".into()),
        ),
    ]
}

/// The key pair the stack's restate-server signs with, read from its PEM.
fn server_key(h: &Harness) -> KeyPair {
    let pem = h
        .stack
        .signing_key_pem
        .as_ref()
        .expect("the stack signs by default");
    KeyPair::from_pem(&std::fs::read_to_string(pem).unwrap()).unwrap()
}

/// One HTTP/2 request (prior knowledge, as Restate speaks to an endpoint) straight to the
/// handler, bypassing Restate. Returns the status and the body.
async fn h2(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    content_type: &str,
) -> (u16, String) {
    let authority = base.trim_start_matches("http://");
    let tcp = tokio::net::TcpStream::connect(authority).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let mut request = ::http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("content-type", content_type)
        .header("accept", DISCOVER_ACCEPT);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = sender
        .send_request(request.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    // A refusal or a manifest ends at once; an accepted invocation would keep its stream open.
    let body = tokio::time::timeout(Duration::from_secs(5), response.into_body().collect())
        .await
        .map(|collected| collected.map(|c| c.to_bytes()).unwrap_or_default())
        .unwrap_or_default();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A direct call to the handler, bypassing Restate: over HTTP/2 to the endpoint, or through
/// the Lambda Invoke API. Returns the HTTP status the handler answered (on Lambda the
/// response's `statusCode`) and its body.
async fn call_directly(
    h: &Harness,
    mode: Mode,
    path: &str,
    headers: &[(&str, String)],
) -> (u16, String) {
    let (method, content_type) = if path == "/discover" {
        ("GET", "application/json")
    } else {
        ("POST", "application/vnd.restate.invocation.v5")
    };
    match mode {
        Mode::Http => {
            let deployments = h.stack.admin.deployments().await.unwrap();
            let uri = deployments
                .iter()
                .find_map(|d| d["uri"].as_str())
                .expect("the HTTP deployment's uri")
                .trim_end_matches('/')
                .to_owned();
            h2(&uri, method, path, headers, content_type).await
        }
        Mode::Lambda => {
            let mut event_headers =
                json!({"content-type": content_type, "accept": DISCOVER_ACCEPT});
            for (name, value) in headers {
                event_headers[*name] = json!(value);
            }
            let event = json!({"path": path, "httpMethod": method, "headers": event_headers,
                "body": "", "isBase64Encoded": true});
            let (status, answer) = h.invoke_function_directly(&event).await;
            assert_eq!(status, 200, "Lambda delivered the answer: {answer}");
            let body = answer["body"].as_str().unwrap_or_default();
            let body = if answer["isBase64Encoded"] == json!(true) {
                String::from_utf8_lossy(
                    &base64::engine::general_purpose::STANDARD
                        .decode(body)
                        .unwrap(),
                )
                .into_owned()
            } else {
                body.to_owned()
            };
            let code = answer["statusCode"]
                .as_u64()
                .unwrap_or_else(|| panic!("{answer}"));
            (code as u16, body)
        }
    }
}

async fn signed_runs_succeed_and_everything_else_gets_401(mode: Mode) {
    let h = Harness::start(mode).await;
    let key = h
        .stack
        .identity_keys
        .clone()
        .expect("the stack signs by default");
    assert!(
        key.starts_with("publickeyv1_") && !key.contains(','),
        "{key}"
    );
    // restate-server printed the public key of the PEM it was given: the one the handler has.
    let log = h.server_log();
    assert!(log.contains("Loaded request identity key"), "{log}");
    assert_eq!(
        identity::public_key_in_log(&log).as_deref(),
        Some(key.as_str())
    );
    assert!(
        h.handler_log()
            .contains("serving only requests signed by Restate (1 identity key(s)"),
        "{}",
        h.handler_log()
    );

    // Signed: Restate's own calls (discovery at registration, then the run) are served.
    let response = h.run("get out of bed,shower,make coffee").await;
    assert_eq!(response.status, 200, "{}", response.message());
    assert_eq!(
        response.body["description"],
        "get out of bed: DONE,shower: DONE,make coffee: DONE"
    );

    // Bypassing Restate: refused, discovery and handlers alike.
    for path in ["/discover", INVOKE_PATH] {
        for (what, headers) in refused_headers(&key, path) {
            let (status, body) = call_directly(&h, mode, path, &headers).await;
            let body = short(&body);
            assert_eq!(status, 401, "{path} with {what} -> {status} {body}");
            assert!(
                body.contains("verifying identity"),
                "{path} with {what} -> {body}"
            );
        }
    }
    // The control: the same kind of token, signed with the server's key, is served.
    let genuine = server_key(&h);
    assert_eq!(genuine.public_key(), key);
    let (status, body) = call_directly(
        &h,
        mode,
        "/discover",
        &signed_headers(jwt(&genuine, &key, "/discover")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("runSubtask"), "{body}");
    // A genuine token for another path is still refused: the audience is checked.
    let (status, _) = call_directly(
        &h,
        mode,
        INVOKE_PATH,
        &signed_headers(jwt(&genuine, &key, "/discover")),
    )
    .await;
    assert_eq!(status, 401);
    // No subtask ran for any of the refused calls: only the three of the run.
    assert_eq!(h.log_lines_with("Started executing subtask").len(), 3);

    // After all that, the handler (on Lambda: the same warm instances) still serves Restate.
    let response = h.run("after,refusals").await;
    assert_eq!(response.status, 200, "{}", response.message());
    if mode == Mode::Lambda {
        let records = h.records();
        assert!(
            records.iter().all(|r| r.outcome == "ok"),
            "no instance failed: {records:#?}"
        );
    }
    h.stop().await;
}

/// Two key pairs in `dir`, the second one's PEM for the server.
fn two_keys(dir: &Path) -> (KeyPair, KeyPair, PathBuf) {
    let (old, new) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
    let pem = dir.join("new.pem");
    new.write_private_key(&pem).unwrap();
    (old, new, pem)
}

async fn rotation_two_keys_serve_an_unrelated_key_is_refused(mode: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let (old, new, new_pem) = two_keys(dir.path());

    // Mid-rotation: the handler lists the old and the new key, the server signs with the new.
    let mut options = Harness::options(mode);
    options.identity = RequestIdentity::Explicit {
        server_pem: Some(new_pem.clone()),
        handler_keys: Some(format!("{},{}", old.public_key(), new.public_key())),
    };
    let h = Harness::start_with(options).await;
    assert!(
        h.handler_log().contains("(2 identity key(s)"),
        "{}",
        h.handler_log()
    );
    let response = h.run("rotated,keys").await;
    assert_eq!(response.status, 200, "{}", response.message());
    assert_eq!(response.body["description"], "rotated: DONE,keys: DONE");
    // Either listed key is accepted on a direct call, an unlisted one is not.
    for (key, expected) in [
        (&old, 200),
        (&new, 200),
        (&KeyPair::generate().unwrap(), 401),
    ] {
        let token = jwt(key, &key.public_key(), "/discover");
        let (status, body) = call_directly(&h, mode, "/discover", &signed_headers(token)).await;
        assert_eq!(status, expected, "{}", short(&body));
    }
    h.stop().await;

    // A handler that knows only an unrelated key: Restate's discovery is refused, so the
    // deployment is never registered.
    let unrelated = KeyPair::generate().unwrap();
    let mut options = Harness::options(mode);
    options.identity = RequestIdentity::Explicit {
        server_pem: Some(new_pem.clone()),
        handler_keys: Some(unrelated.public_key()),
    };
    let error = match LocalStack::start(options).await {
        Ok(stack) => {
            stack.stop().await;
            panic!("a handler with an unrelated key was registered");
        }
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("401"), "{error}");

    // A server that does not sign at all is refused the same way.
    let mut options = Harness::options(mode);
    options.identity = RequestIdentity::Explicit {
        server_pem: None,
        handler_keys: Some(new.public_key()),
    };
    let error = match LocalStack::start(options).await {
        Ok(stack) => {
            stack.stop().await;
            panic!("a handler with keys accepted an unsigned server");
        }
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("401"), "{error}");
}

fanout_tests::in_both_modes!(
    signed_runs_succeed_and_everything_else_gets_401,
    rotation_two_keys_serve_an_unrelated_key_is_refused,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_stack_serves_anyone_as_asked() {
    let mut options = Harness::options(Mode::Http);
    options.identity = RequestIdentity::Unsigned;
    let h = Harness::start_with(options).await;
    assert!(h.stack.identity_keys.is_none() && h.stack.signing_key_pem.is_none());
    assert!(!h.server_log().contains("Loaded request identity key"));
    let (status, body) = call_directly(&h, Mode::Http, "/discover", &[]).await;
    assert_eq!(status, 200, "{body}");
    let response = h.run("a,b").await;
    assert_eq!(response.status, 200, "{}", response.message());
    h.stop().await;
}

// ---- the handler binary on its own ----

/// Starts the handler in HTTP mode with `args` and `env` (and no key list but those given),
/// waits until 127.0.0.1:`port` answers, stops it, and returns its stderr.
fn handler_stderr(port: u16, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut child = Command::new(handler_binary())
        .args(["--port", &port.to_string()])
        .args(args)
        .env_remove("AWS_LAMBDA_RUNTIME_API")
        .env_remove("FANOUT_IDENTITY_KEYS")
        .env_remove("FANOUT_BIND")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the handler never listened on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    fanout_standin::process::terminate(child.id());
    let _ = child.wait();
    let mut stderr = String::new();
    use std::io::Read as _;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    stderr
}

#[test]
fn http_mode_warns_once_without_keys_and_binds_where_told() {
    const WARNING: &str = "FANOUT_IDENTITY_KEYS is not set: anyone who can reach";
    let port = fanout_standin::process::free_port().unwrap();
    let unsigned = handler_stderr(port, &["--bind", "127.0.0.1"], &[]);
    assert_eq!(unsigned.matches(WARNING).count(), 1, "{unsigned}");
    assert!(
        unsigned.contains(&format!(
            "serving the Restate endpoint on http://127.0.0.1:{port}"
        )),
        "{unsigned}"
    );

    let key = KeyPair::generate().unwrap().public_key();
    let port = fanout_standin::process::free_port().unwrap();
    let signed = handler_stderr(
        port,
        &[],
        &[("FANOUT_IDENTITY_KEYS", &key), ("FANOUT_BIND", "127.0.0.1")],
    );
    assert!(!signed.contains(WARNING), "{signed}");
    assert!(
        signed.contains("serving only requests signed by Restate"),
        "{signed}"
    );
    assert!(
        signed.contains(&format!("on http://127.0.0.1:{port}")),
        "FANOUT_BIND was used: {signed}"
    );
}

#[test]
fn a_bound_address_is_the_only_one_served() {
    // 127.0.0.2 is loopback too: a listener on 0.0.0.0 would take it, one on 127.0.0.1 not.
    let port = fanout_standin::process::free_port().unwrap();
    let mut child = Command::new(handler_binary())
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .env_remove("AWS_LAMBDA_RUNTIME_API")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the handler never listened on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let other = std::net::TcpStream::connect(("127.0.0.2", port));
    let _ = child.kill();
    let _ = child.wait();
    assert!(other.is_err(), "127.0.0.2:{port} was served too");
}

#[test]
fn bad_identity_keys_stop_the_handler_at_start_naming_the_variable() {
    let good = KeyPair::generate().unwrap().public_key();
    let cases = [
        ("not-a-key".to_owned(), "key 1 of 1 (\"not-a-key\")"),
        (format!("{good},publickeyv1_abc"), "key 2 of 2"),
        (" , ".to_owned(), "is set but holds no key"),
    ];
    for lambda in [false, true] {
        for (value, expected) in &cases {
            let mut command = Command::new(handler_binary());
            command
                .args(["--port", "0", "--bind", "127.0.0.1"])
                .env("FANOUT_IDENTITY_KEYS", value)
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            if lambda {
                // Refused before the runtime is reached: no Runtime API is needed.
                command
                    .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:1")
                    .env("AWS_LAMBDA_FUNCTION_NAME", "f")
                    .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
                    .env("AWS_LAMBDA_FUNCTION_VERSION", "1");
            } else {
                command.env_remove("AWS_LAMBDA_RUNTIME_API");
            }
            let output = command.output().unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(1), "{value:?}: {stderr}");
            assert!(
                stderr.contains("FANOUT_IDENTITY_KEYS") && stderr.contains(expected),
                "{value:?}: {stderr}"
            );
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }
}

// ---- fanout deploy passes the keys to the function ----

/// A zip with the debug handler as its `bootstrap` (the stand-in runs it on this machine).
fn handler_zip(dir: &Path) -> PathBuf {
    let out = dir.join("bootstrap.zip");
    let script = "import sys, zipfile\n\
        info = zipfile.ZipInfo('bootstrap')\n\
        info.external_attr = 0o755 << 16\n\
        info.compress_type = zipfile.ZIP_DEFLATED\n\
        with zipfile.ZipFile(sys.argv[2], 'w', zipfile.ZIP_DEFLATED) as z, open(sys.argv[1], 'rb') as f:\n\
        \x20   z.writestr(info, f.read())\n";
    let status = Command::new("python3")
        .args(["-c", script])
        .arg(handler_binary())
        .arg(&out)
        .status()
        .expect("python3 runs");
    assert!(status.success(), "could not write {}", out.display());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_deploy_passes_the_keys_and_the_function_then_refuses_unsigned_events() {
    const FUNCTION: &str = "fanout-signed";
    let h = Harness::start(Mode::Lambda).await;
    let dir = tempfile::tempdir().unwrap();
    let zip = handler_zip(dir.path());
    let key = KeyPair::generate().unwrap().public_key();
    let env = local_aws_env(&h.standin().endpoint_url());
    let deploy = |extra: Vec<String>| {
        let mut args: Vec<String> = [
            "deploy",
            "--function-name",
            FUNCTION,
            "--arch",
            "x86_64",
            "--role",
            "arn:aws:iam::000000000000:role/fanout-local",
            "--zip",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(zip.display().to_string());
        args.extend(extra);
        args
    };
    let cli = |args: Vec<String>, env: Vec<(&'static str, String)>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fanout_with_env(&args, &env).await
    };

    let bad = deploy(vec!["--identity-keys".into(), "publickeyv1_abc".into()]);
    let refused = cli(bad, env.clone()).await;
    assert_ne!(refused.code, Some(0), "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("--identity-keys: FANOUT_IDENTITY_KEYS: key 1 of 1"),
        "{refused:?}"
    );

    // The flag's env form, FANOUT_IDENTITY_KEYS, as a user with it exported would run it.
    let mut with_key = env.clone();
    with_key.push(("FANOUT_IDENTITY_KEYS", key.clone()));
    let args = deploy(vec!["--env".into(), "RUST_LOG=info".into()]);
    let deployed = cli(args, with_key).await;
    assert_eq!(deployed.code, Some(0), "{deployed:?}");
    assert!(
        deployed
            .stdout
            .trim_end()
            .ends_with(&format!(":function:{FUNCTION}:1")),
        "{deployed:?}"
    );
    assert!(
        deployed
            .stderr
            .contains(&format!("serves only requests Restate signs with {key}")),
        "{deployed:?}"
    );
    let configuration: Value = reqwest::get(format!(
        "{}/2015-03-31/functions/{FUNCTION}:1/configuration",
        h.standin().endpoint_url()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(
        configuration["Environment"]["Variables"]["FANOUT_IDENTITY_KEYS"],
        json!(key),
        "{configuration}"
    );
    assert_eq!(
        configuration["Environment"]["Variables"]["RUST_LOG"],
        json!("info")
    );

    // The deployed version answers an unsigned event with 401, and lives on to answer again.
    for _ in 0..2 {
        let event = json!({"path": "/discover", "httpMethod": "GET",
            "headers": {"accept": DISCOVER_ACCEPT}, "body": "", "isBase64Encoded": true});
        let answer: Value = reqwest::Client::new()
            .post(format!(
                "{}/2015-03-31/functions/{FUNCTION}:1/invocations",
                h.standin().endpoint_url()
            ))
            .json(&event)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            answer["statusCode"],
            json!(401),
            "{}",
            short(&answer.to_string())
        );
    }

    // Without keys the deploy says what that means.
    let args = deploy(vec!["--env".into(), "RUST_LOG=info".into()]);
    let open = cli(args, env.clone()).await;
    assert_eq!(open.code, Some(0), "{open:?}");
    assert!(
        open.stderr.contains("FANOUT_IDENTITY_KEYS is not set"),
        "{open:?}"
    );
    h.stop().await;
}
