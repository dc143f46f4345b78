//! The stand-in's front door: Lambda's Invoke API as aws-sdk-lambda (and so restate-server)
//! calls it, plus the `/fanout/*` hooks for tools and tests.

use super::faults::{Fault, FaultPlan};
use super::invocation::{self, Invocation, Invoked};
use super::metering::{InvocationRecord, epoch_ms, event_path};
use super::names::{NameError, parse_function_name};
use super::{PAYLOAD_LIMIT, Shared};
use axum::body::{Body, to_bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::SystemTime;

/// Bodies past this are not even buffered; anything over [`PAYLOAD_LIMIT`] is refused anyway.
const READ_CAP: usize = 4 * PAYLOAD_LIMIT;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/2015-03-31/functions/{function}/invocations", post(invoke))
        .merge(super::control_plane::router())
        .route("/fanout/health", get(health))
        .route("/fanout/metrics", get(metrics))
        .route("/fanout/instances/kill", post(kill))
        .route("/fanout/faults", post(arm_faults).get(fault_counts))
        .fallback(unknown_operation)
        .with_state(shared)
}

#[derive(Deserialize)]
struct InvokeQuery {
    #[serde(rename = "Qualifier")]
    qualifier: Option<String>,
}

async fn invoke(
    State(shared): State<Arc<Shared>>,
    Path(function_name): Path<String>,
    Query(query): Query<InvokeQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started_at = SystemTime::now();
    let request_id = uuid::Uuid::new_v4().to_string();
    let target = match parse_function_name(
        &function_name,
        query.qualifier.as_deref(),
        &shared.region,
        &shared.account,
    ) {
        Ok(target) => target,
        Err(NameError::Invalid(message)) => {
            let body = json!({"Type": "User", "message": message});
            return lambda_error(
                StatusCode::BAD_REQUEST,
                "ValidationException",
                body,
                &request_id,
            );
        }
        Err(NameError::QualifierMismatch) => {
            let body = json!({
                "Type": "User",
                "message": "The derived qualifier from the function name does not match the specified qualifier."
            });
            return lambda_error(
                StatusCode::BAD_REQUEST,
                "InvalidParameterValueException",
                body,
                &request_id,
            );
        }
        Err(NameError::Elsewhere(arn)) => return not_found(&arn, &request_id),
    };
    let arn = shared.arn(&target.name, target.qualifier.as_deref());
    let Some(function) = shared.function(&target.name) else {
        return not_found(&arn, &request_id);
    };
    let Some(version) = function.resolve(target.qualifier.as_deref()) else {
        return not_found(&arn, &request_id);
    };

    let payload = match to_bytes(body, READ_CAP).await {
        Ok(payload) if payload.len() <= PAYLOAD_LIMIT => payload,
        too_large => {
            let body = json!({
                "Type": "User",
                "message": format!("Request must be smaller than {PAYLOAD_LIMIT} bytes for the InvokeFunction operation")
            });
            let (request_bytes, path) = match &too_large {
                Ok(payload) => (payload.len(), event_path(payload)),
                Err(_) => (READ_CAP, None),
            };
            shared.meter.record(InvocationRecord {
                request_id: request_id.clone(),
                function: function.name.clone(),
                version: version.version.clone(),
                path,
                cold: false,
                init_ms: None,
                duration_ms: 0.0,
                billed_ms: 0,
                request_bytes,
                response_bytes: body.to_string().len(),
                request_encoding: None,
                request_body_bytes: None,
                restate_invocation_id: None,
                response_encoding: None,
                peak_rss_kb: None,
                outcome: "too_large".into(),
                started_at_ms: epoch_ms(started_at),
                instance: 0,
            });
            return lambda_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLargeException",
                body,
                &request_id,
            );
        }
    };

    // Armed faults (none unless a test or an operator asked): the invokes they hit fail as
    // Lambda's would.
    let fault = if shared.faults.any_armed() {
        shared.faults.take(event_path(&payload).as_deref())
    } else {
        None
    };
    // A fault that refuses the invoke is metered like Lambda's own refusals, then answered.
    let refused = match fault {
        Some(Fault::Throttle) => Some(("throttled", throttled(&request_id))),
        Some(Fault::ServiceError) => {
            let body = json!({"Type": "Service", "message": "An internal error occurred (injected by the stand-in's faults)."});
            let response = lambda_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ServiceException",
                body,
                &request_id,
            );
            Some(("service_error", response))
        }
        _ => None,
    };
    if let Some((outcome, response)) = refused {
        shared.meter.record(injected_record(
            &request_id,
            &function.name,
            &version.version,
            &payload,
            started_at,
            outcome,
        ));
        return response;
    }

    let executed_version = version.version.clone();
    let invocation = Invocation {
        function,
        version,
        invoked_arn: arn,
        request_id: request_id.clone(),
        payload,
        started_at,
        timeout: match fault {
            Some(Fault::Timeout(timeout)) => Some(timeout),
            _ => None,
        },
    };
    let invocation_type = headers
        .get("X-Amz-Invocation-Type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("RequestResponse");
    match invocation_type {
        "RequestResponse" => {}
        "DryRun" => return with_request_id(StatusCode::NO_CONTENT.into_response(), &request_id),
        "Event" => {
            tokio::spawn(invocation::run(shared, invocation));
            return with_request_id(StatusCode::ACCEPTED.into_response(), &request_id);
        }
        other => {
            let body = json!({
                "Type": "User",
                "message": format!("Invalid invocation type {other:?}: use RequestResponse, Event or DryRun")
            });
            return lambda_error(
                StatusCode::BAD_REQUEST,
                "InvalidParameterValueException",
                body,
                &request_id,
            );
        }
    }

    // A task of its own: if the caller hangs up, the function still runs to the end and is
    // metered, as on Lambda, and its instance is not left half-used.
    let outcome = tokio::spawn(invocation::run(shared, invocation)).await;
    let (body, function_error) = match outcome {
        Ok(Invoked::Ok(body)) => (body, false),
        Ok(Invoked::FunctionError(body)) => (body, true),
        Ok(Invoked::Throttled) => return throttled(&request_id),
        Err(e) => {
            tracing::error!("an invocation task failed: {e}");
            let body =
                json!({"message": format!("the stand-in failed running the invocation: {e}")});
            return lambda_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ServiceException",
                body,
                &request_id,
            );
        }
    };
    if fault == Some(Fault::DropResponse) {
        // The function ran and was metered; the caller never gets its answer: the status line
        // goes out, then the body fails and the connection is cut.
        let lost = futures_util::stream::once(async {
            Err::<axum::body::Bytes, _>(std::io::Error::other(
                "response dropped by the stand-in's faults",
            ))
        });
        return with_request_id(
            (StatusCode::OK, Body::from_stream(lost)).into_response(),
            &request_id,
        );
    }
    let mut response = (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&executed_version) {
        headers.insert("X-Amz-Executed-Version", v);
    }
    if function_error {
        headers.insert(
            "X-Amz-Function-Error",
            HeaderValue::from_static("Unhandled"),
        );
    }
    with_request_id(response, &request_id)
}

fn throttled(request_id: &str) -> Response {
    let body = json!({
        "Reason": "ReservedFunctionConcurrentInvocationLimitExceeded",
        "Type": "User",
        "message": "Rate Exceeded."
    });
    lambda_error(
        StatusCode::TOO_MANY_REQUESTS,
        "TooManyRequestsException",
        body,
        request_id,
    )
}

/// The metering record of an invoke a fault answered before the function ran.
fn injected_record(
    request_id: &str,
    function: &str,
    version: &str,
    payload: &[u8],
    started_at: SystemTime,
    outcome: &str,
) -> InvocationRecord {
    InvocationRecord {
        request_id: request_id.to_owned(),
        function: function.to_owned(),
        version: version.to_owned(),
        path: event_path(payload),
        cold: false,
        init_ms: None,
        duration_ms: 0.0,
        billed_ms: 0,
        request_bytes: payload.len(),
        response_bytes: 0,
        request_encoding: None,
        request_body_bytes: None,
        restate_invocation_id: None,
        response_encoding: None,
        peak_rss_kb: None,
        outcome: outcome.to_owned(),
        started_at_ms: epoch_ms(started_at),
        instance: 0,
    }
}

/// `POST /fanout/faults` with a [`FaultPlan`] as JSON: arms it, answers with the tallies.
async fn arm_faults(State(shared): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    match serde_json::from_slice::<FaultPlan>(&body) {
        Ok(plan) => {
            shared.faults.arm(&plan);
            Json(shared.faults.counts()).into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": format!(
                "the body is not a fault plan ({e}); send e.g. {{\"throttle\": 2, \"serviceError\": 1, \"dropResponse\": 1, \"timeout\": 1, \"timeoutMs\": 200, \"path\": \"runSubtask\"}}"
            )})),
        )
            .into_response(),
    }
}

async fn fault_counts(State(shared): State<Arc<Shared>>) -> Json<super::FaultCounts> {
    Json(shared.faults.counts())
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Json<Vec<InvocationRecord>> {
    Json(shared.meter.snapshot())
}

#[derive(Deserialize)]
struct KillQuery {
    function: String,
    /// Only instances running an event whose path contains this (e.g. `runSubtask`).
    path: Option<String>,
}

async fn kill(State(shared): State<Arc<Shared>>, Query(query): Query<KillQuery>) -> Response {
    match shared.function(&query.function) {
        Some(function) => {
            let killed = function.kill_running_where(query.path.as_deref());
            shared.faults.count_killed(killed);
            Json(json!({"killed": killed})).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no function named {:?}", query.function)})),
        )
            .into_response(),
    }
}

async fn unknown_operation() -> Response {
    let body = json!({
        "Type": "User",
        "message": "this Lambda stand-in serves Invoke and the function and version operations of the control plane only"
    });
    lambda_error(
        StatusCode::NOT_FOUND,
        "UnknownOperationException",
        body,
        &uuid::Uuid::new_v4().to_string(),
    )
}

fn not_found(arn: &str, request_id: &str) -> Response {
    let body = json!({"Type": "User", "message": format!("Function not found: {arn}")});
    lambda_error(
        StatusCode::NOT_FOUND,
        "ResourceNotFoundException",
        body,
        request_id,
    )
}

/// Lambda's error shape: the type in `x-amzn-ErrorType` (what the AWS SDKs dispatch on) and a
/// JSON body.
pub(super) fn lambda_error(
    status: StatusCode,
    error_type: &'static str,
    body: Value,
    request_id: &str,
) -> Response {
    let mut response = (status, Json(body)).into_response();
    response
        .headers_mut()
        .insert("x-amzn-ErrorType", HeaderValue::from_static(error_type));
    with_request_id(response, request_id)
}

pub(super) fn with_request_id(mut response: Response, request_id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("x-amzn-RequestId", v);
    }
    response
}
