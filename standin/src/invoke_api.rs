//! Lambda's Invoke API as aws-sdk-lambda (and so restate-server) calls it:
//! `POST /2015-03-31/functions/{name}/invocations`, with Lambda's status codes, error types and
//! headers. The invocation itself runs in `invocation`; this is the door: which function and
//! version, is the payload small enough, is a fault armed, and which invocation type.

use super::api::{ApiError, ApiResult, Params, RequestId};
use super::config::PAYLOAD_LIMIT;
use super::faults::Fault;
use super::invocation::{self, Invocation, Invoked};
use super::metering::{InvocationRecord, epoch_ms, event_path};
use super::names::parse_function_name;
use super::shared::Shared;
use axum::Extension;
use axum::body::{Body, to_bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::sync::Arc;
use std::time::SystemTime;

/// Bodies past this are not even buffered; anything over [`PAYLOAD_LIMIT`] is refused anyway.
const READ_CAP: usize = 4 * PAYLOAD_LIMIT;

#[derive(Deserialize)]
pub(crate) struct InvokeQuery {
    #[serde(rename = "Qualifier")]
    qualifier: Option<String>,
}

pub(crate) async fn invoke(
    State(shared): State<Arc<Shared>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    Path(function_name): Path<String>,
    Params(query): Params<InvokeQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let started_at = SystemTime::now();
    let target = parse_function_name(
        &function_name,
        query.qualifier.as_deref(),
        &shared.region,
        &shared.account,
    )?;
    let arn = shared.arn(&target.name, target.qualifier.as_deref());
    let function = shared
        .function(&target.name)
        .ok_or_else(|| ApiError::not_found(&arn))?;
    let version = function
        .resolve(target.qualifier.as_deref())
        .ok_or_else(|| ApiError::not_found(&arn))?;

    let payload = match to_bytes(body, READ_CAP).await {
        Ok(payload) if payload.len() <= PAYLOAD_LIMIT => payload,
        too_large => {
            let error = ApiError::too_large(PAYLOAD_LIMIT, "InvokeFunction");
            let (request_bytes, path) = match &too_large {
                Ok(payload) => (payload.len(), event_path(payload)),
                Err(_) => (READ_CAP, None),
            };
            shared.meter.record(InvocationRecord {
                request_bytes,
                path,
                response_bytes: error.body().to_string().len(),
                ..refused_record(
                    &request_id,
                    &function.name,
                    &version.version,
                    started_at,
                    "too_large",
                )
            });
            return Err(error);
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
        Some(Fault::Throttle) => Some(("throttled", ApiError::throttled())),
        Some(Fault::ServiceError) => Some((
            "service_error",
            ApiError::internal("An internal error occurred (injected by the stand-in's faults)."),
        )),
        _ => None,
    };
    if let Some((outcome, error)) = refused {
        shared.meter.record(InvocationRecord {
            request_bytes: payload.len(),
            path: event_path(&payload),
            ..refused_record(
                &request_id,
                &function.name,
                &version.version,
                started_at,
                outcome,
            )
        });
        return Err(error);
    }

    let executed_version = version.version.clone();
    let invocation = Invocation {
        function,
        version,
        invoked_arn: arn,
        request_id,
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
        "DryRun" => return Ok(StatusCode::NO_CONTENT.into_response()),
        "Event" => {
            tokio::spawn(invocation::run(shared, invocation));
            return Ok(StatusCode::ACCEPTED.into_response());
        }
        other => {
            return Err(ApiError::invalid(format!(
                "Invalid invocation type {other:?}: use RequestResponse, Event or DryRun"
            )));
        }
    }

    // A task of its own: if the caller hangs up, the function still runs to the end and is
    // metered, as on Lambda, and its instance is not left half-used.
    let outcome = tokio::spawn(invocation::run(shared, invocation)).await;
    let (body, function_error) = match outcome {
        Ok(Invoked::Ok(body)) => (body, false),
        Ok(Invoked::FunctionError(body)) => (body, true),
        Ok(Invoked::Throttled) => return Err(ApiError::throttled()),
        Err(e) => {
            tracing::error!("an invocation task failed: {e}");
            return Err(ApiError::internal(format!(
                "the stand-in failed running the invocation: {e}"
            )));
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
        return Ok((StatusCode::OK, Body::from_stream(lost)).into_response());
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
    Ok(response)
}

/// The metering record of an invoke refused before its function ran (too large, or a fault).
fn refused_record(
    request_id: &str,
    function: &str,
    version: &str,
    started_at: SystemTime,
    outcome: &str,
) -> InvocationRecord {
    InvocationRecord {
        request_id: request_id.to_owned(),
        function: function.to_owned(),
        version: version.to_owned(),
        path: None,
        cold: false,
        init_ms: None,
        duration_ms: 0.0,
        billed_ms: 0,
        request_bytes: 0,
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
