//! The `/fanout/*` hooks: what a tool or a test asks the stand-in that Lambda has no API for.
//!
//! | hook | what it does |
//! |---|---|
//! | `GET /fanout/health` | `{"status": "ok"}` once the port serves |
//! | `GET /fanout/metrics` | every [`InvocationRecord`] so far, as a JSON array |
//! | `POST /fanout/faults` | arms a [`FaultPlan`] (JSON) for the next invokes; answers the tallies |
//! | `GET /fanout/faults` | the tallies: [`FaultCounts`], injected and still armed |
//! | `POST /fanout/instances/kill?function=NAME[&path=HANDLER]` | SIGKILLs the busy instances (those running an event for that Restate handler): a crash mid-event |
//! | `POST /fanout/instances/warm?function=NAME&count=K[&qualifier=V]` | starts instances until K wait idle past their init (provisioned concurrency); answers `{"started": n}` |

use super::api::{ApiError, ApiResult, Params};
use super::faults::{FaultCounts, FaultPlan};
use super::metering::InvocationRecord;
use super::shared::Shared;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

pub(crate) async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub(crate) async fn metrics(State(shared): State<Arc<Shared>>) -> Json<Vec<InvocationRecord>> {
    Json(shared.meter.snapshot())
}

pub(crate) async fn arm_faults(
    State(shared): State<Arc<Shared>>,
    body: Bytes,
) -> ApiResult<Json<FaultCounts>> {
    let plan: FaultPlan = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_content(format!(
            "the body is not a fault plan ({e}); send e.g. {{\"throttle\": 2, \"serviceError\": 1, \"dropResponse\": 1, \"timeout\": 1, \"timeoutMs\": 200, \"path\": \"runSubtask\"}}"
        ))
    })?;
    shared.faults.arm(&plan);
    Ok(Json(shared.faults.counts()))
}

pub(crate) async fn fault_counts(State(shared): State<Arc<Shared>>) -> Json<FaultCounts> {
    Json(shared.faults.counts())
}

#[derive(Deserialize)]
pub(crate) struct KillQuery {
    function: String,
    /// Only instances running an event whose path contains this (e.g. `runSubtask`).
    path: Option<String>,
}

pub(crate) async fn kill(
    State(shared): State<Arc<Shared>>,
    Params(query): Params<KillQuery>,
) -> ApiResult<Json<Value>> {
    let killed = shared
        .kill_busy(&query.function, query.path.as_deref())
        .ok_or_else(|| ApiError::not_found(&shared.arn(&query.function, None)))?;
    Ok(Json(json!({"killed": killed})))
}

#[derive(Deserialize)]
pub(crate) struct WarmQuery {
    function: String,
    count: usize,
    qualifier: Option<String>,
}

pub(crate) async fn warm(
    State(shared): State<Arc<Shared>>,
    Params(query): Params<WarmQuery>,
) -> ApiResult<Json<Value>> {
    let qualifier = query.qualifier.as_deref();
    let Some((function, version)) = shared.version_of(&query.function, qualifier) else {
        return Err(ApiError::not_found(&shared.arn(&query.function, qualifier)));
    };
    let started = shared
        .warm(&function, &version, query.count)
        .await
        .map_err(|e| ApiError::internal(format!("{e:#}")))?;
    Ok(Json(json!({"started": started})))
}
