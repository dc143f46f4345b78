//! One invocation from slot to metering record: claim a busy slot, start or reuse an instance,
//! hand it the event, wait for its answer within Lambda's bounds, and decide its fate.

use super::config::PAYLOAD_LIMIT;
use super::functions::{Acquired, Function};
use super::instances::Instance;
use super::metering::{
    InvocationRecord, billed_ms, content_encoding, epoch_ms, event_facts, millis, peak_rss_kb,
};
use super::runtime_api::{Ended, Event, Outcome};
use super::shared::Shared;
use super::versions::Version;
use axum::body::Bytes;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::oneshot;
use tokio::time::sleep_until;

pub(crate) struct Invocation {
    pub function: Arc<Function>,
    pub version: Version,
    pub invoked_arn: String,
    pub request_id: String,
    pub payload: Bytes,
    pub started_at: SystemTime,
    /// A shorter timeout than the function's for this invoke (an injected fault).
    pub timeout: Option<Duration>,
}

/// What the Invoke API answers.
pub(crate) enum Invoked {
    Ok(Bytes),
    /// 200 with `X-Amz-Function-Error: Unhandled`; the body is the error document.
    FunctionError(Bytes),
    Throttled,
}

/// The parts of an invocation that travel to the instance.
struct Delivery {
    request_id: String,
    payload: Bytes,
    invoked_arn: String,
}

/// How waiting on an instance ended.
enum Completion {
    Reported(Outcome),
    Ended(Ended),
    /// No `/next` within the start-up bound.
    InitTimedOut,
    TimedOut,
    /// The bootstrap asked for another event without answering this one.
    Abandoned,
}

pub(crate) async fn run(shared: Arc<Shared>, invocation: Invocation) -> Invoked {
    let Invocation {
        function,
        version,
        invoked_arn,
        request_id,
        payload,
        started_at,
        timeout,
    } = invocation;
    let timeout = timeout.map_or(version.config.timeout, |t| t.min(version.config.timeout));
    let facts = event_facts(&payload);
    let mut record = InvocationRecord {
        request_id: request_id.clone(),
        function: function.name.clone(),
        version: version.version.clone(),
        path: facts.path,
        cold: false,
        init_ms: None,
        duration_ms: 0.0,
        billed_ms: 0,
        request_bytes: payload.len(),
        response_bytes: 0,
        request_encoding: facts.encoding,
        request_body_bytes: facts.body_bytes,
        restate_invocation_id: facts.invocation_id,
        response_encoding: None,
        peak_rss_kb: None,
        outcome: String::new(),
        started_at_ms: epoch_ms(started_at),
        instance: 0,
    };

    let mut lease = match function.acquire(&version) {
        Acquired::Throttled => {
            record.outcome = "throttled".into();
            shared.meter.record(record);
            return Invoked::Throttled;
        }
        Acquired::Warm(lease) => lease,
        Acquired::Cold(mut lease) => {
            record.cold = true;
            let id = shared.next_instance.fetch_add(1, Ordering::Relaxed);
            record.instance = id;
            match Instance::spawn(id, &lease.function().name, &version, &shared.environment).await {
                Ok(instance) => lease.attach(instance),
                Err(e) => {
                    tracing::warn!("cannot start an instance of {}: {e:#}", function.name);
                    let body = error_document(
                        "Runtime.InvalidEntrypoint",
                        &format!("RequestId: {request_id} Error: {e:#}"),
                    );
                    return finish(&shared, record, "Runtime.InvalidEntrypoint", body);
                }
            }
            lease
        }
    };
    let instance = Arc::clone(lease.instance().expect("attached above"));
    record.instance = instance.id;
    set_event_path(&instance, record.path.clone());

    let (completion, handed_at) = drive(
        &shared,
        &instance,
        timeout,
        record.cold,
        Delivery {
            request_id: request_id.clone(),
            payload,
            invoked_arn,
        },
    )
    .await;
    set_event_path(&instance, None);
    let finished_at = Instant::now();
    record.duration_ms = handed_at.map_or(0.0, |h| millis(finished_at - h));
    if record.cold {
        let init_end = instance.runtime.first_next().unwrap_or(finished_at);
        record.init_ms = Some(millis(
            init_end.saturating_duration_since(instance.spawned_at),
        ));
    }
    record.billed_ms = billed_ms(record.duration_ms, record.init_ms);
    // Before the lease goes: a discarded instance is killed and its /proc entry vanishes.
    record.peak_rss_kb = instance.pid.and_then(peak_rss_kb);

    match completion {
        Completion::Reported(Outcome::Response(body)) => {
            lease.keep_warm();
            record.response_bytes = body.len();
            record.response_encoding = content_encoding(&body);
            record.outcome = "ok".into();
            shared.meter.record(record);
            Invoked::Ok(body)
        }
        Completion::Reported(Outcome::Error { error_type, body }) => {
            // A handled report leaves the runtime healthy, as on Lambda.
            lease.keep_warm();
            let body = if body.is_empty() {
                error_document(&error_type, "the function reported an error")
            } else {
                body
            };
            finish(&shared, record, &error_type, body)
        }
        Completion::Reported(Outcome::ResponseTooLarge { size }) => {
            lease.keep_warm();
            let error_type = "Function.ResponseSizeTooLarge";
            let body = error_document(
                error_type,
                &format!(
                    "Response payload size ({size} bytes) exceeded maximum allowed payload size \
                     ({PAYLOAD_LIMIT} bytes)."
                ),
            );
            finish(
                &shared,
                record_with_response(record, size),
                error_type,
                body,
            )
        }
        Completion::Ended(Ended::Exited(status)) => {
            let error_type = "Runtime.ExitError";
            let body = error_document(
                error_type,
                &format!("RequestId: {request_id} Error: Runtime exited with error: {status}"),
            );
            finish(&shared, record, error_type, body)
        }
        Completion::Ended(Ended::InitError { error_type, body }) => {
            let body = if serde_json::from_slice::<serde_json::Value>(&body).is_ok() {
                body
            } else {
                error_document(&error_type, &String::from_utf8_lossy(&body))
            };
            finish(&shared, record, &error_type, body)
        }
        Completion::InitTimedOut => {
            let error_type = "Runtime.InitError";
            let body = error_document(
                error_type,
                &format!(
                    "RequestId: {request_id} Error: the runtime did not ask for an event within \
                     {:.2} seconds of starting",
                    shared.init_bound.as_secs_f64()
                ),
            );
            finish(&shared, record, error_type, body)
        }
        Completion::TimedOut => {
            let error_type = "Sandbox.Timedout";
            let body = error_document(
                error_type,
                &format!(
                    "{request_id} Task timed out after {:.2} seconds",
                    timeout.as_secs_f64()
                ),
            );
            finish(&shared, record, error_type, body)
        }
        Completion::Abandoned => {
            let error_type = "Runtime.NoResponse";
            let body = error_document(
                error_type,
                &format!(
                    "RequestId: {request_id} Error: the runtime asked for the next event \
                     without answering this one"
                ),
            );
            finish(&shared, record, error_type, body)
        }
    }
    // `lease` drops here: warm instances return to the pool, all others are killed.
}

fn record_with_response(mut record: InvocationRecord, size: usize) -> InvocationRecord {
    // The size the function tried to return is the number worth seeing in a report.
    record.response_bytes = size;
    record
}

/// Waits for the instance to take the event and answer it. Returns when it was handed out.
async fn drive(
    shared: &Shared,
    instance: &Instance,
    timeout: Duration,
    cold: bool,
    delivery: Delivery,
) -> (Completion, Option<Instant>) {
    let (handed_tx, handed_rx) = oneshot::channel();
    let (outcome_tx, mut outcome_rx) = oneshot::channel();
    let event = Event {
        request_id: delivery.request_id,
        body: delivery.payload,
        invoked_arn: delivery.invoked_arn,
        trace_id: trace_id(),
        handed: handed_tx,
        outcome: outcome_tx,
    };
    let runtime = &instance.runtime;
    let enqueued_at = Instant::now();
    if !instance.deliver(event) {
        let ended = runtime
            .ended()
            .unwrap_or_else(|| Ended::Exited("the instance is gone".into()));
        return (Completion::Ended(ended), None);
    }

    // A warm instance is already polling /next, so only a cold one gets the start-up bound;
    // a warm one that stopped polling is out of time when the function's timeout runs out.
    let handout_bound = if cold { shared.init_bound } else { timeout };
    let handed_at = tokio::select! {
        biased;
        handed = handed_rx => match handed {
            Ok(at) => at,
            Err(_) => return (Completion::Ended(runtime.wait_ended().await), None),
        },
        ended = runtime.wait_ended() => return (Completion::Ended(ended), None),
        _ = sleep_until((enqueued_at + handout_bound).into()) => {
            let completion = if cold { Completion::InitTimedOut } else { Completion::TimedOut };
            return (completion, None);
        }
    };

    let completion = tokio::select! {
        // Biased so a bootstrap that answers and exits at once is not reported as a crash.
        biased;
        outcome = &mut outcome_rx => match outcome {
            Ok(outcome) => Completion::Reported(outcome),
            Err(_) => Completion::Abandoned,
        },
        ended = runtime.wait_ended() => Completion::Ended(ended),
        _ = sleep_until((handed_at + timeout).into()) => Completion::TimedOut,
    };
    (completion, Some(handed_at))
}

fn set_event_path(instance: &Instance, path: Option<String>) {
    *instance
        .event_path
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = path;
}

/// Records a function error and answers with its document.
fn finish(shared: &Shared, mut record: InvocationRecord, error_type: &str, body: Bytes) -> Invoked {
    if record.response_bytes == 0 {
        record.response_bytes = body.len();
    }
    record.outcome = format!("function_error:{error_type}");
    shared.meter.record(record);
    Invoked::FunctionError(body)
}

pub(crate) fn error_document(error_type: &str, message: &str) -> Bytes {
    Bytes::from(json!({"errorMessage": message, "errorType": error_type}).to_string())
}

/// X-Ray's format; nothing reads it locally, but runtimes expect the header to be there.
fn trace_id() -> String {
    let epoch_s = epoch_ms(SystemTime::now()) / 1000;
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "Root=1-{epoch_s:08x}-{};Parent={};Sampled=0",
        &random[..24],
        &random[16..32]
    )
}
