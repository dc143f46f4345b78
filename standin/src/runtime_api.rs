//! The Lambda Runtime API as one instance's bootstrap sees it.
//!
//! `AWS_LAMBDA_RUNTIME_API` is a bare `host:port`, so the only exact way to tell instances
//! apart is a listener per instance; each serves exactly one process and holds at most one
//! event in flight.

use super::config::PAYLOAD_LIMIT;
use super::metering::epoch_ms;
use axum::Router;
use axum::body::{Body, Bytes, to_bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot, watch};

/// An event on its way to the instance.
pub(crate) struct Event {
    pub request_id: String,
    pub body: Bytes,
    pub invoked_arn: String,
    pub trace_id: String,
    /// Fires when the bootstrap has taken the event on `/next`: the billed duration starts.
    pub handed: oneshot::Sender<Instant>,
    pub outcome: oneshot::Sender<Outcome>,
}

/// What the bootstrap reported for the event it was handed.
#[derive(Debug)]
pub(crate) enum Outcome {
    Response(Bytes),
    Error { error_type: String, body: Bytes },
    ResponseTooLarge { size: usize },
}

/// Why an instance can take no more events.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Ended {
    /// The process is gone; Lambda's wording of the status, e.g. `exit status 1`.
    Exited(String),
    /// The bootstrap reported `/init/error`.
    InitError { error_type: String, body: Bytes },
}

impl Ended {
    /// In words: Lambda's wording of the exit, or the init error's type.
    pub(crate) fn describe(&self) -> String {
        match self {
            Ended::Exited(status) => status.clone(),
            Ended::InitError { error_type, .. } => format!("it reported {error_type}"),
        }
    }
}

/// State shared by the instance's listener and the invoker driving it.
pub(crate) struct RuntimeShared {
    timeout: Duration,
    events: tokio::sync::Mutex<mpsc::Receiver<Event>>,
    in_flight: Mutex<Option<InFlight>>,
    first_next: OnceLock<Instant>,
    ended: watch::Sender<Option<Ended>>,
}

struct InFlight {
    request_id: String,
    outcome: oneshot::Sender<Outcome>,
}

impl RuntimeShared {
    pub(crate) fn new(timeout: Duration) -> (Arc<Self>, mpsc::Sender<Event>) {
        // One event at a time per instance, so a slot of one never makes the invoker wait.
        let (tx, rx) = mpsc::channel(1);
        let shared = Arc::new(Self {
            timeout,
            events: tokio::sync::Mutex::new(rx),
            in_flight: Mutex::new(None),
            first_next: OnceLock::new(),
            ended: watch::channel(None).0,
        });
        (shared, tx)
    }

    /// When the bootstrap first asked for an event: the end of its init phase.
    pub(crate) fn first_next(&self) -> Option<Instant> {
        self.first_next.get().copied()
    }

    /// The first cause wins: an exit after an init error is a consequence, not news.
    pub(crate) fn end(&self, why: Ended) {
        self.ended.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(why);
                true
            } else {
                false
            }
        });
    }

    pub(crate) fn ended(&self) -> Option<Ended> {
        self.ended.borrow().clone()
    }

    pub(crate) async fn wait_ended(&self) -> Ended {
        let mut rx = self.ended.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(ended) => ended.clone().expect("waited for Some"),
            // Unreachable while `self` holds the sender; keeps the type total.
            Err(_) => Ended::Exited("runtime state dropped".into()),
        }
    }

    fn take_in_flight(&self, request_id: &str) -> Option<InFlight> {
        let mut slot = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|f| f.request_id == request_id) {
            slot.take()
        } else {
            None
        }
    }
}

pub(crate) fn router(shared: Arc<RuntimeShared>) -> Router {
    Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(response),
        )
        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .fallback(|| async {
            runtime_error(
                StatusCode::NOT_FOUND,
                "NotFound",
                "unknown Runtime API path",
            )
        })
        .with_state(shared)
}

async fn next(State(rt): State<Arc<RuntimeShared>>) -> Response {
    rt.first_next.get_or_init(Instant::now);
    // Asking for the next event abandons the current one: dropping its sender tells the
    // invoker now rather than at the timeout.
    drop(
        rt.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(),
    );
    // `recv` is cancel-safe: a bootstrap that drops its long poll loses no event.
    let event = rt.events.lock().await.recv().await;
    let Some(event) = event else {
        return runtime_error(
            StatusCode::GONE,
            "InstanceDiscarded",
            "this instance takes no more events",
        );
    };
    let handed_at = Instant::now();
    let deadline_ms = epoch_ms(SystemTime::now() + rt.timeout);
    *rt.in_flight.lock().unwrap_or_else(|p| p.into_inner()) = Some(InFlight {
        request_id: event.request_id.clone(),
        outcome: event.outcome,
    });
    let _ = event.handed.send(handed_at);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header("Lambda-Runtime-Aws-Request-Id", &event.request_id)
        .header("Lambda-Runtime-Deadline-Ms", deadline_ms.to_string())
        .header("Lambda-Runtime-Invoked-Function-Arn", &event.invoked_arn)
        .header("Lambda-Runtime-Trace-Id", &event.trace_id)
        .body(Body::from(event.body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn response(
    State(rt): State<Arc<RuntimeShared>>,
    Path(request_id): Path<String>,
    body: Body,
) -> Response {
    // Read whole before judging the size so the outcome can name it; the instance's own memory
    // bounds what it can send.
    let body = match to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(e) => {
            return runtime_error(StatusCode::BAD_REQUEST, "InvalidBody", &e.to_string());
        }
    };
    let Some(in_flight) = rt.take_in_flight(&request_id) else {
        return invalid_request_id();
    };
    if body.len() > PAYLOAD_LIMIT {
        let _ = in_flight
            .outcome
            .send(Outcome::ResponseTooLarge { size: body.len() });
        return runtime_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            &format!("Exceeded maximum allowed payload size ({PAYLOAD_LIMIT} bytes)."),
        );
    }
    let _ = in_flight.outcome.send(Outcome::Response(body));
    accepted()
}

async fn error(
    State(rt): State<Arc<RuntimeShared>>,
    Path(request_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(in_flight) = rt.take_in_flight(&request_id) else {
        return invalid_request_id();
    };
    let error_type = error_type(&headers, &body);
    let _ = in_flight.outcome.send(Outcome::Error { error_type, body });
    accepted()
}

async fn init_error(
    State(rt): State<Arc<RuntimeShared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let error_type = error_type(&headers, &body);
    tracing::debug!(%error_type, "a Lambda instance reported an init error");
    rt.end(Ended::InitError { error_type, body });
    accepted()
}

/// The body's `errorType` is what Lambda shows callers; runtimes such as `lambda_runtime` put
/// only a generic `unhandled` in the header.
fn error_type(headers: &HeaderMap, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        #[serde(rename = "errorType")]
        error_type: Option<String>,
    }
    serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|b| b.error_type)
        .filter(|t| !t.is_empty())
        .or_else(|| {
            headers
                .get("Lambda-Runtime-Function-Error-Type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "Unhandled".to_owned())
}

fn accepted() -> Response {
    (StatusCode::ACCEPTED, axum::Json(json!({"status": "OK"}))).into_response()
}

fn invalid_request_id() -> Response {
    runtime_error(
        StatusCode::BAD_REQUEST,
        "InvalidRequestID",
        "no event with this request id is in flight on this instance",
    )
}

fn runtime_error(status: StatusCode, error_type: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"errorMessage": message, "errorType": error_type})),
    )
        .into_response()
}
