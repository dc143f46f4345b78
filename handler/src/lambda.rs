//! Lambda mode: Restate's invoke events on `lambda_runtime`.
//!
//! Restate calls the function with an API-Gateway-like event (`path`, `httpMethod`, `headers`,
//! base64 `body`) and always speaks the request/response protocol: the whole journal comes in,
//! the new entries plus the output or a suspension go out, and the function returns, so a
//! waiting coordinator costs nothing.
//!
//! What this adapter adds over the SDK's own minimal one:
//! - **Compression**: discovery advertises `lambdaCompression: "zstd"`, so Restate compresses
//!   large requests; zstd request bodies are decoded and large responses are compressed.
//! - **Limits**: a response that would still break Lambda's 6 MB payload limit ends the
//!   invocation with a terminal error that names the size, instead of a Lambda error that
//!   Restate would retry forever.
//! - **Bad events** (not from Restate, malformed, not even UTF-8) get a clear 400 response; the
//!   instance lives on.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use lambda_runtime::tower::{Layer, Service};
use lambda_runtime::{LambdaEvent, LambdaInvocation, Runtime, layers::TracingLayer, service_fn};
use restate_sdk::prelude::{Endpoint, HandleOptions, ProtocolMode};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Read as _;
use std::task::{Context, Poll};

pub const RUNTIME_API_ENV: &str = "AWS_LAMBDA_RUNTIME_API";

/// Lambda's limit on a synchronous invocation's response payload (the JSON document).
pub const LAMBDA_PAYLOAD_LIMIT: usize = 6 * 1024 * 1024;

/// Overrides [`LAMBDA_PAYLOAD_LIMIT`], in bytes. Only for exercising the guard in tests.
pub const PAYLOAD_LIMIT_ENV: &str = "FANOUT_LAMBDA_PAYLOAD_LIMIT";

/// Response bodies above this many bytes are zstd-compressed. Small ones stay plain and cheap.
pub const COMPRESS_ABOVE: usize = 64 * 1024;

/// Restate's own bound on a message; a decompressed request above it cannot be legitimate.
const MAX_DECOMPRESSED: usize = 64 * 1024 * 1024;

/// The variables `lambda_runtime` panics without; checked first so a misconfigured start fails
/// with a sentence instead.
const REQUIRED_ENV: [&str; 4] = [
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
    RUNTIME_API_ENV,
];

/// Runs the Lambda event loop until the runtime API goes away.
pub async fn run(endpoint: Endpoint) -> Result<(), lambda_runtime::Error> {
    let missing: Vec<&str> = REQUIRED_ENV
        .iter()
        .copied()
        .filter(|name| std::env::var_os(name).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "missing Lambda environment variables: {}; Lambda sets them for a deployed function \
             (run locally with `fanout local`)",
            missing.join(", ")
        )
        .into());
    }
    let adapter = Adapter::new(endpoint, payload_limit_from_env()?);
    // What `lambda_runtime::run` builds, with the UTF-8 guard in front of everything.
    Runtime::new(service_fn(move |event: LambdaEvent<Value>| {
        let adapter = adapter.clone();
        async move {
            crate::logging::set_lambda_request_id(Some(event.context.request_id.clone()));
            let response = adapter.handle(event.payload).await;
            crate::logging::set_lambda_request_id(None);
            Ok::<Value, lambda_runtime::Error>(response)
        }
    }))
    .layer(TracingLayer::new())
    .layer(Utf8Guard)
    .run()
    .await
}

/// The key of the event [`Utf8Guard`] puts in place of one that is not UTF-8.
const NOT_UTF8_KEY: &str = "fanout:eventNotUtf8";

/// Keeps an event that is not UTF-8 from stopping the runtime.
///
/// `lambda_runtime` 1.5 checks every event with `str::from_utf8` before it deserializes it (for
/// a trace line), and a failure there is not answered: it ends the run loop and the process
/// exits 1. This layer sees the raw event first and replaces such a body with
/// `{"fanout:eventNotUtf8": "<why>"}`, which [`Adapter::handle`] answers with a 400. Valid
/// UTF-8 passes through untouched (the same check the runtime makes, so no extra copy).
#[derive(Clone, Copy)]
struct Utf8Guard;

impl<S> Layer<S> for Utf8Guard {
    type Service = Utf8Guarded<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Utf8Guarded(inner)
    }
}

struct Utf8Guarded<S>(S);

impl<S> Service<LambdaInvocation> for Utf8Guarded<S>
where
    S: Service<LambdaInvocation, Response = (), Error = lambda_runtime::Error>,
{
    type Response = ();
    type Error = lambda_runtime::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut invocation: LambdaInvocation) -> Self::Future {
        invocation.body = utf8_or_marker(invocation.body);
        self.0.call(invocation)
    }
}

/// `body` when it is UTF-8, else the marker event that says why it is not.
fn utf8_or_marker(body: Bytes) -> Bytes {
    match std::str::from_utf8(&body) {
        Ok(_) => body,
        Err(e) => Bytes::from(json!({ NOT_UTF8_KEY: e.to_string() }).to_string()),
    }
}

fn payload_limit_from_env() -> Result<usize, lambda_runtime::Error> {
    match std::env::var(PAYLOAD_LIMIT_ENV) {
        Err(_) => Ok(LAMBDA_PAYLOAD_LIMIT),
        Ok(raw) => raw.trim().parse::<usize>().map_err(|_| {
            format!("{PAYLOAD_LIMIT_ENV}={raw:?} is not a number of bytes; unset it").into()
        }),
    }
}

/// The event Restate sends. Field names are Restate's (camelCase, API Gateway v1 style).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InvokeEvent {
    path: String,
    http_method: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    is_base64_encoded: bool,
}

/// Translates events to the SDK endpoint and back. Cheap to clone.
#[derive(Clone)]
pub struct Adapter {
    endpoint: Endpoint,
    payload_limit: usize,
}

impl Adapter {
    pub fn new(endpoint: Endpoint, payload_limit: usize) -> Self {
        Self {
            endpoint,
            payload_limit,
        }
    }

    /// Handles one Lambda event and returns the Lambda response document. Never fails: every
    /// problem becomes a response that says what went wrong.
    pub async fn handle(&self, event: Value) -> Value {
        let event = match parse_event(event) {
            Ok(event) => event,
            Err(message) => return bad_event(&message),
        };
        let body = match decode_body(&event) {
            Ok(body) => body,
            Err(message) => return bad_event(&message),
        };
        let request = match build_request(&event, body) {
            Ok(request) => request,
            Err(message) => return bad_event(&message),
        };
        let is_discovery = event.path.ends_with("/discover");

        let response = self.endpoint.handle_with_options(
            request,
            HandleOptions {
                protocol_mode: ProtocolMode::RequestResponse,
            },
        );
        let (parts, body) = response.into_parts();
        let mut body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                return plain_response(500, &format!("the handler's response failed: {e}"));
            }
        };
        let mut headers: BTreeMap<String, String> = parts
            .headers
            .iter()
            .filter_map(|(name, value)| {
                Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
            })
            .collect();

        if parts.status == http::StatusCode::UNAUTHORIZED {
            // The SDK's identity check (FANOUT_IDENTITY_KEYS) refused it; the 401 goes back as
            // the response's statusCode.
            tracing::warn!(
                "refused {} {}: {}",
                event.http_method,
                event.path,
                String::from_utf8_lossy(&body)
            );
        }
        if is_discovery && parts.status.is_success() {
            body = advertise_compression(body);
        }
        if body.len() > COMPRESS_ABOVE
            && let Ok(compressed) = zstd::bulk::compress(&body, 3)
            && compressed.len() < body.len()
        {
            body = Bytes::from(compressed);
            headers.insert("content-encoding".into(), "zstd".into());
        }

        let document = lambda_response(parts.status.as_u16(), &headers, &body);
        let size = document.to_string().len();
        if size <= self.payload_limit || !parts.status.is_success() || is_discovery {
            return document;
        }
        let message = format!(
            "the handler's response is {size} bytes after compression, above Lambda's \
             payload limit of {} bytes; the invocation cannot complete on Lambda (reduce the \
             fan-out's width or the size of its results)",
            self.payload_limit
        );
        tracing::error!("{message}");
        headers.remove("content-encoding");
        lambda_response(200, &headers, &terminal_failure(413, &message))
    }
}

fn parse_event(event: Value) -> Result<InvokeEvent, String> {
    const EXPECTED: &str = "this function serves Restate: it expects Restate's invoke event \
        {\"path\", \"httpMethod\", \"headers\", \"body\", \"isBase64Encoded\"}; invoke the \
        service through the Restate ingress (e.g. POST <ingress>/worker/run) instead of \
        invoking the function directly";
    if !event.is_object() {
        return Err(format!("the event is not a JSON object; {EXPECTED}"));
    }
    if let Some(why) = event.get(NOT_UTF8_KEY).and_then(Value::as_str) {
        return Err(format!("the event is not valid UTF-8 ({why}); {EXPECTED}"));
    }
    serde_json::from_value(event).map_err(|e| format!("malformed event ({e}); {EXPECTED}"))
}

fn decode_body(event: &InvokeEvent) -> Result<Bytes, String> {
    let raw = event.body.as_deref().unwrap_or_default();
    let body = if event.is_base64_encoded {
        BASE64
            .decode(raw)
            .map_err(|e| format!("the event body is not valid base64: {e}"))?
    } else {
        raw.as_bytes().to_vec()
    };
    let encoding = header(&event.headers, "content-encoding").unwrap_or_default();
    match encoding.trim() {
        "" | "identity" => Ok(Bytes::from(body)),
        "zstd" => {
            let mut decoded = Vec::new();
            zstd::stream::read::Decoder::new(body.as_slice())
                .map_err(|e| format!("cannot start zstd decoding of the body: {e}"))?
                .take(MAX_DECOMPRESSED as u64 + 1)
                .read_to_end(&mut decoded)
                .map_err(|e| format!("the body is not valid zstd: {e}"))?;
            if decoded.len() > MAX_DECOMPRESSED {
                return Err(format!(
                    "the body decompresses to more than {MAX_DECOMPRESSED} bytes"
                ));
            }
            Ok(Bytes::from(decoded))
        }
        other => Err(format!(
            "unsupported content-encoding {other:?}; only zstd is understood"
        )),
    }
}

fn header<'a>(headers: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

fn build_request(event: &InvokeEvent, body: Bytes) -> Result<http::Request<Full<Bytes>>, String> {
    let mut builder = http::Request::builder()
        .method(event.http_method.as_str())
        .uri(event.path.as_str());
    for (name, value) in &event.headers {
        // The body is handed over decoded, so its framing headers no longer apply.
        if name.eq_ignore_ascii_case("content-encoding")
            || name.eq_ignore_ascii_case("content-length")
        {
            continue;
        }
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder
        .body(Full::new(body))
        .map_err(|e| format!("the event does not make a valid HTTP request: {e}"))
}

/// Adds `lambdaCompression: "zstd"` to the discovery manifest, so Restate compresses large
/// requests (a long coordinator journal) before Lambda's payload limit is reached.
fn advertise_compression(manifest: Bytes) -> Bytes {
    match serde_json::from_slice::<Value>(&manifest) {
        Ok(Value::Object(mut fields)) => {
            fields.insert("lambdaCompression".into(), json!("zstd"));
            Bytes::from(Value::Object(fields).to_string())
        }
        _ => manifest,
    }
}

fn lambda_response(status: u16, headers: &BTreeMap<String, String>, body: &[u8]) -> Value {
    json!({
        "statusCode": status,
        "headers": headers,
        "body": BASE64.encode(body),
        "isBase64Encoded": true,
    })
}

fn plain_response(status: u16, message: &str) -> Value {
    json!({
        "statusCode": status,
        "headers": {"content-type": "application/json"},
        "body": json!({"message": message}).to_string(),
        "isBase64Encoded": false,
    })
}

fn bad_event(message: &str) -> Value {
    tracing::warn!("rejected a Lambda event: {message}");
    plain_response(400, message)
}

/// A protocol response that ends the invocation with a terminal failure: an `OutputCommand`
/// carrying the failure, then `End`. Restate records the failure and retries nothing.
fn terminal_failure(code: u32, message: &str) -> Vec<u8> {
    const OUTPUT_COMMAND: u16 = 0x0401;
    const END: u16 = 0x0003;

    let mut failure = Vec::new();
    put_varint(&mut failure, 1 << 3); // field 1 (code), varint
    put_varint(&mut failure, code as u64);
    put_varint(&mut failure, (2 << 3) | 2); // field 2 (message), bytes
    put_varint(&mut failure, message.len() as u64);
    failure.extend_from_slice(message.as_bytes());

    let mut output = Vec::new();
    put_varint(&mut output, (15 << 3) | 2); // field 15 (failure), message
    put_varint(&mut output, failure.len() as u64);
    output.extend_from_slice(&failure);

    let mut frames = Vec::new();
    put_frame(&mut frames, OUTPUT_COMMAND, &output);
    put_frame(&mut frames, END, &[]);
    frames
}

fn put_frame(out: &mut Vec<u8>, message_type: u16, payload: &[u8]) {
    out.extend_from_slice(&message_type.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes()); // flags
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Chores, Worker};

    fn adapter(limit: usize) -> Adapter {
        Adapter::new(Worker::new(Chores::default()).endpoint(), limit)
    }

    fn status(response: &Value) -> u64 {
        response["statusCode"].as_u64().unwrap()
    }

    fn body(response: &Value) -> Vec<u8> {
        let raw = response["body"].as_str().unwrap();
        if response["isBase64Encoded"] == json!(true) {
            BASE64.decode(raw).unwrap()
        } else {
            raw.as_bytes().to_vec()
        }
    }

    fn discovery_event() -> Value {
        json!({
            "path": "/discover",
            "httpMethod": "GET",
            "headers": {"accept": "application/vnd.restate.endpointmanifest.v4+json"},
            "body": "",
            "isBase64Encoded": true,
        })
    }

    #[tokio::test]
    async fn discovery_advertises_zstd_and_request_response_mode() {
        let response = adapter(LAMBDA_PAYLOAD_LIMIT)
            .handle(discovery_event())
            .await;
        assert_eq!(status(&response), 200);
        let manifest: Value = serde_json::from_slice(&body(&response)).unwrap();
        assert_eq!(manifest["lambdaCompression"], "zstd");
        assert_eq!(manifest["protocolMode"], "REQUEST_RESPONSE");
        // The service macros spell the names as literals; they must be the contract's.
        use fanout_contract::names;
        let services = manifest["services"].as_array().unwrap();
        let handlers_of = |service: &str| -> Vec<&str> {
            let found = services.iter().find(|s| s["name"] == service);
            let found = found.unwrap_or_else(|| panic!("service {service} is not discovered"));
            found["handlers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["name"].as_str().unwrap())
                .collect()
        };
        let worker = handlers_of(names::WORKER);
        for handler in [names::RUN, names::RUN_SUBTASK, names::RUN_SHARD] {
            assert!(
                worker.contains(&handler),
                "{handler} missing from {worker:?}"
            );
        }
        assert!(!handlers_of(names::LEDGER).is_empty());
    }

    #[tokio::test]
    async fn zstd_request_bodies_are_decoded() {
        let mut event = discovery_event();
        event["headers"]["content-encoding"] = json!("zstd");
        event["body"] = json!(BASE64.encode(zstd::bulk::compress(b"", 3).unwrap()));
        assert_eq!(
            status(&adapter(LAMBDA_PAYLOAD_LIMIT).handle(event).await),
            200
        );
    }

    #[tokio::test]
    async fn malformed_events_get_a_400_that_explains() {
        let a = adapter(LAMBDA_PAYLOAD_LIMIT);
        let cases = [
            (json!("just a string"), "not a JSON object"),
            (json!({"description": "a,b"}), "missing field"),
            (
                json!({"path": "/discover", "httpMethod": "GET", "body": "%%%", "isBase64Encoded": true}),
                "not valid base64",
            ),
            (
                json!({"path": "/discover", "httpMethod": "GET", "headers": {"content-encoding": "zstd"}, "body": "AAAA", "isBase64Encoded": true}),
                "not valid zstd",
            ),
            (
                json!({"path": "/discover", "httpMethod": "GET", "headers": {"content-encoding": "br"}, "body": "", "isBase64Encoded": true}),
                "unsupported content-encoding",
            ),
            (
                json!({"path": "/x", "httpMethod": "NOT A METHOD", "body": "", "isBase64Encoded": false}),
                "not make a valid HTTP request",
            ),
        ];
        for (event, expected) in cases {
            let response = a.handle(event.clone()).await;
            assert_eq!(status(&response), 400, "{event}");
            let text = String::from_utf8(body(&response)).unwrap();
            assert!(text.contains(expected), "{event} -> {text}");
        }
    }

    #[tokio::test]
    async fn events_that_are_not_utf8_get_a_400_that_explains() {
        let raw = Bytes::from_static(b"{\"path\":\"\xff\",\"httpMethod\":\"POST\"}");
        let guarded = utf8_or_marker(raw);
        let event: Value = serde_json::from_slice(&guarded).expect("the marker is JSON");
        let response = adapter(LAMBDA_PAYLOAD_LIMIT).handle(event).await;
        assert_eq!(status(&response), 400);
        let text = String::from_utf8(body(&response)).unwrap();
        assert!(
            text.contains("not valid UTF-8 (invalid utf-8 sequence of 1 bytes from index 9)"),
            "{text}"
        );
        // UTF-8 passes through as it was.
        let fine = Bytes::from_static("{\"path\":\"ÿ\"}".as_bytes());
        assert_eq!(utf8_or_marker(fine.clone()), fine);
    }

    #[tokio::test]
    async fn unknown_paths_are_answered_not_crashed() {
        let event = json!({"path": "/invoke/nope/run", "httpMethod": "POST",
            "headers": {"content-type": "application/vnd.restate.invocation.v5"},
            "body": "", "isBase64Encoded": true});
        let response = adapter(LAMBDA_PAYLOAD_LIMIT).handle(event).await;
        assert_eq!(status(&response), 404);
    }

    #[tokio::test]
    async fn with_identity_keys_unsigned_events_get_a_401_discovery_included() {
        let endpoint = Worker::new(Chores::default())
            .endpoint_builder()
            .identity_key("publickeyv1_ChjENKeMvCtRnqG2mrBK1HmPKufgFUc98K8B3ononQvp")
            .unwrap()
            .build();
        let a = Adapter::new(endpoint, LAMBDA_PAYLOAD_LIMIT);
        let mut unsigned = discovery_event();
        unsigned["headers"]["x-restate-signature-scheme"] = json!("unsigned");
        let mut forged = discovery_event();
        forged["headers"]["x-restate-signature-scheme"] = json!("v1");
        forged["headers"]["x-restate-jwt-v1"] = json!("eyJhbGciOiJFZERTQSJ9.e30.AAAA");
        let invoke = json!({"path": "/invoke/worker/runSubtask", "httpMethod": "POST",
            "headers": {"content-type": "application/vnd.restate.invocation.v5"},
            "body": "", "isBase64Encoded": true});
        for event in [discovery_event(), unsigned, forged, invoke] {
            let response = a.handle(event.clone()).await;
            assert_eq!(status(&response), 401, "{event}");
            let text = String::from_utf8(body(&response)).unwrap();
            assert!(text.contains("verifying identity"), "{event} -> {text}");
        }
    }

    #[test]
    fn terminal_failure_frames_output_then_end() {
        let frames = terminal_failure(413, "too big");
        // OutputCommand header: type 0x0401, no flags, length of its payload.
        assert_eq!(&frames[0..4], &[0x04, 0x01, 0, 0]);
        let len = u32::from_be_bytes(frames[4..8].try_into().unwrap()) as usize;
        let payload = &frames[8..8 + len];
        assert_eq!(payload[0], 0x7a); // field 15, length-delimited
        assert!(payload.ends_with(b"too big"));
        // End: type 0x0003, empty.
        assert_eq!(&frames[8 + len..], &[0, 3, 0, 0, 0, 0, 0, 0]);
    }
}
