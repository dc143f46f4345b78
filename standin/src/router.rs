//! Every route of the stand-in's port in one table: Lambda's Invoke API, the part of its
//! control plane a deploy tool uses, and the `/fanout/*` hooks. Every answer, errors included,
//! carries an `x-amzn-RequestId` (see `api`); a path no route serves is Lambda's
//! `UnknownOperationException`.

use super::api::{stamp_request_id, unknown_operation};
use super::control_plane as cp;
use super::hooks;
use super::invoke_api::invoke;
use super::shared::Shared;
use axum::Router;
use axum::middleware::from_fn;
use axum::routing::{get, post, put};
use std::sync::Arc;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        // The Invoke API.
        .route("/2015-03-31/functions/{function}/invocations", post(invoke))
        // The control plane.
        .route(
            "/2015-03-31/functions",
            post(cp::create_function).get(cp::list_functions),
        )
        .route(
            "/2015-03-31/functions/{function}",
            get(cp::get_function).delete(cp::delete_function),
        )
        .route(
            "/2015-03-31/functions/{function}/configuration",
            get(cp::get_function_configuration).put(cp::update_function_configuration),
        )
        .route(
            "/2015-03-31/functions/{function}/code",
            put(cp::update_function_code),
        )
        .route(
            "/2015-03-31/functions/{function}/versions",
            get(cp::list_versions_by_function).post(cp::publish_version),
        )
        // The hooks.
        .route("/fanout/health", get(hooks::health))
        .route("/fanout/metrics", get(hooks::metrics))
        .route(
            "/fanout/faults",
            post(hooks::arm_faults).get(hooks::fault_counts),
        )
        .route("/fanout/instances/kill", post(hooks::kill))
        .route("/fanout/instances/warm", post(hooks::warm))
        .fallback(unknown_operation)
        .layer(from_fn(stamp_request_id))
        .with_state(shared)
}
