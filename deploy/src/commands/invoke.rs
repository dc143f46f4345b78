//! `fanout invoke`: start a fan-out through the ingress and print its result.

use crate::ingress::{IngressClient, IngressResponse};
use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::path::Path;

/// The JSON task: from `--input FILE`, or a description string.
pub fn task_from(description: Option<&str>, input: Option<&Path>) -> Result<Value> {
    match (description, input) {
        (_, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the task file {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", path.display()))
        }
        (Some(description), None) => Ok(json!({ "description": description })),
        (None, None) => anyhow::bail!(
            "give the task as a description (fanout invoke \"a,b,c\") or as a JSON file (--input FILE)"
        ),
    }
}

/// Exit codes, documented in `fanout invoke --help`.
pub mod exit {
    pub const OK: u8 = 0;
    pub const RUN_FAILED: u8 = 3;
    pub const BAD_INPUT: u8 = 4;
    pub const UNREACHABLE: u8 = 5;
}

/// Calls `worker/run`; returns the response for the caller to print.
pub async fn invoke(
    ingress: &IngressClient,
    task: &Value,
    idempotency_key: Option<&str>,
) -> Result<IngressResponse> {
    ingress.run(task, idempotency_key).await
}

/// The exit code for an ingress answer.
pub fn exit_code(response: &IngressResponse) -> u8 {
    match response.status {
        200..=299 => exit::OK,
        400..=499 => exit::BAD_INPUT,
        _ => exit::RUN_FAILED,
    }
}
