//! `fanout invoke`: start a fan-out through the ingress, show its progress, print its result.
//!
//! The run is always started asynchronously (`POST /worker/run/send`) and then attached to, so
//! it has an invocation id from the first moment: progress can be polled by id, and a client
//! that is interrupted or killed leaves a run that `fanout attach ID` can pick up.
//!
//! Every send carries an idempotency key (the user's, or one made up for this invoke), so a send
//! that broke because the server died under it can be repeated without starting a second run;
//! the wait re-attaches by id. Together `fanout invoke` rides out a restart of Restate and still
//! prints the run's exact result with its usual exit code.

use crate::commands::attach::{self, Endpoints, Interrupt, fail, fail_with};
use crate::ingress::{IngressClient, IngressResponse, RECONNECT_WINDOW, Reconnect};
use crate::observe::{Display, DisplayMode};
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

/// Exit codes of `fanout invoke`, `attach` and `status`, documented in their `--help`.
pub mod exit {
    pub const OK: u8 = 0;
    pub const OTHER: u8 = 1;
    pub const RUN_FAILED: u8 = 3;
    pub const BAD_INPUT: u8 = 4;
    pub const UNREACHABLE: u8 = 5;
    pub const UNKNOWN_ID: u8 = 6;
    /// Ctrl-C while waiting: the run goes on (128 + SIGINT, as shells report it).
    pub const INTERRUPTED: u8 = 130;

    /// The `--help` text listing them.
    pub const HELP: &str = "Exit codes:
  0    success (status: the run succeeded or is still going)
  1    other errors
  2    a bad flag or argument (nothing was sent)
  3    the run failed terminally (cancelled, or a subtask failed for good: the first under \
fail-fast, one more than the failure policy tolerates otherwise)
  4    rejected: bad input (unreadable --input, HTTP 4xx from the ingress, a task the handler \
refused with 400/413 before any subtask started, a malformed invocation id) or a missing or \
invalid token
  5    Restate unreachable (connection refused, DNS, timeout) or its ingress answered 5xx; \
once a run is started, invoke and attach ride out a restart of Restate (reconnecting for up to \
10 min) before giving up with 5
  6    unknown invocation id (never existed here, or past its retention)
  130  interrupted with Ctrl-C while waiting; the run goes on, `fanout attach ID` follows it again";
}

/// How a verb prints its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// The result on stdout, progress and messages on stderr.
    Text,
    /// One JSON object on stdout, for scripts.
    Json,
}

pub struct InvokeOptions {
    pub task: Value,
    pub idempotency_key: Option<String>,
    /// Start the run and print its invocation id, without waiting.
    pub send_only: bool,
    pub output: OutputFormat,
    pub display: DisplayMode,
}

/// A run Restate accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub invocation_id: String,
    /// The idempotency key was used before: this is that earlier run, not a new one.
    pub previously_accepted: bool,
}

/// Why a run could not be started, with its exit code.
#[derive(Debug)]
pub struct NotStarted {
    pub code: u8,
    pub message: String,
}

/// `POST /worker/run/send`: Restate journals the run and answers with its id at once.
///
/// Without `idempotency_key` the send gets one of its own (`fanout-invoke-UUID`), so that a send
/// cut off by a server crash can be repeated safely: Restate answers the repeat with the run the
/// first attempt started, if it got that far. See
/// [`IngressClient::post_idempotent`](crate::ingress::IngressClient::post_idempotent).
pub async fn send(
    ingress: &IngressClient,
    task: &Value,
    idempotency_key: Option<&str>,
) -> Result<Started, NotStarted> {
    let body = serde_json::to_vec(task).map_err(|e| NotStarted {
        code: exit::BAD_INPUT,
        message: format!("the task cannot be encoded as JSON: {e}"),
    })?;
    let own_key;
    let key = match idempotency_key {
        Some(key) => key,
        None => {
            own_key = format!("fanout-invoke-{}", uuid::Uuid::new_v4().simple());
            own_key.as_str()
        }
    };
    let (response, repeated) = ingress
        .post_idempotent(
            "/worker/run/send",
            "application/json",
            body,
            key,
            RECONNECT_WINDOW,
            |event| match event {
                Reconnect::Lost(why) => eprintln!(
                    "lost Restate while starting the run ({why}); sending it again with the same \
                     idempotency key for up to {} min",
                    RECONNECT_WINDOW.as_secs() / 60
                ),
                Reconnect::Back => eprintln!("Restate is back"),
            },
        )
        .await
        .map_err(|e| NotStarted {
            code: exit::UNREACHABLE,
            message: format!("{e:#}"),
        })?;
    let mut started = started_from(ingress.base_url(), &response)?;
    // Our own repeat of a send that may have got through is not an earlier run.
    if repeated || idempotency_key.is_none() {
        started.previously_accepted = false;
    }
    Ok(started)
}

/// Reads the ingress's answer to a send.
pub fn started_from(ingress_url: &str, response: &IngressResponse) -> Result<Started, NotStarted> {
    let rejected = |message: String| NotStarted {
        code: exit::BAD_INPUT,
        message,
    };
    match response.status {
        200..=299 => {
            let invocation_id = response
                .body
                .get("invocationId")
                .and_then(Value::as_str)
                .ok_or_else(|| NotStarted {
                    code: exit::OTHER,
                    message: format!(
                        "Restate's ingress accepted the run but sent no invocation id: {}",
                        response.body
                    ),
                })?;
            Ok(Started {
                invocation_id: invocation_id.to_owned(),
                previously_accepted: response.body.get("status").and_then(Value::as_str)
                    == Some("PreviouslyAccepted"),
            })
        }
        401 | 403 => Err(rejected(format!(
            "Restate's ingress at {ingress_url} refused the request (HTTP {}): pass a valid token \
             with --token or RESTATE_AUTH_TOKEN",
            response.status
        ))),
        404 => Err(rejected(format!(
            "Restate's ingress at {ingress_url} has no worker/run (HTTP 404: {}); register the \
             handler first (fanout register)",
            response.message()
        ))),
        400..=499 => Err(rejected(format!(
            "Restate's ingress rejected the task (HTTP {}): {}",
            response.status,
            response.message()
        ))),
        _ => Err(NotStarted {
            code: exit::UNREACHABLE,
            message: format!(
                "Restate's ingress at {ingress_url} could not take the run (HTTP {}): {}; try \
                 again when the server is healthy",
                response.status,
                response.message()
            ),
        }),
    }
}

/// `fanout invoke`.
pub async fn run(endpoints: &Endpoints, options: InvokeOptions) -> u8 {
    let output = options.output;
    // Before the run exists, so no Ctrl-C can leave a run without telling its id.
    let interrupt = match Interrupt::listen() {
        Ok(interrupt) => interrupt,
        Err(e) => return fail_with(output, None, &e),
    };
    let started = match send(
        &endpoints.ingress,
        &options.task,
        options.idempotency_key.as_deref(),
    )
    .await
    {
        Ok(started) => started,
        Err(not_started) => {
            let outcome = if not_started.code == exit::UNREACHABLE {
                "unreachable"
            } else {
                "rejected"
            };
            return fail(
                output,
                not_started.code,
                outcome,
                None,
                &not_started.message,
            );
        }
    };
    let id = started.invocation_id.as_str();
    let same_run = if started.previously_accepted {
        " (this idempotency key was used before: it is that run)"
    } else {
        ""
    };
    if options.send_only {
        match output {
            OutputFormat::Json => println!(
                "{}",
                json!({ "invocationId": id, "previouslyAccepted": started.previously_accepted })
            ),
            OutputFormat::Text => println!("{id}"),
        }
        eprintln!("started {id}{same_run}; wait for it with `fanout attach {id}`");
        return exit::OK;
    }
    if options.display != DisplayMode::Quiet {
        eprintln!("started {id}{same_run}; Ctrl-C stops waiting, not the run");
    }
    let mut display = Display::new(options.display);
    match attach::follow(endpoints, id, &mut display, interrupt).await {
        Ok(followed) => attach::report(&followed, output, started.previously_accepted),
        Err(e) => {
            display.abandon();
            fail_with(output, Some(id), &e)
        }
    }
}

/// Checks a `--tolerate-failures` value: a whole number of subtasks (at least 1) or a share
/// above 0% and at most 100%. Whether it fits the task's width is the handler's to say, once
/// the task is split.
pub fn parse_tolerance(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    if let Some(percent) = raw.strip_suffix('%') {
        return match percent.trim().parse::<f64>() {
            Ok(p) if p > 0.0 && p <= 100.0 => Ok(format!("{p}%")),
            _ => Err(format!(
                "{raw:?} is not a share of subtasks above 0% and at most 100% (e.g. 10%)"
            )),
        };
    }
    match raw.parse::<i64>() {
        Ok(n) if n >= 1 => Ok(n.to_string()),
        Ok(n) => Err(format!(
            "{n} is impossible: tolerate at least 1 failed subtask (leave the flag out for \
             fail-fast)"
        )),
        Err(_) => Err(format!(
            "{raw:?} is neither a number of subtasks (e.g. 3) nor a share (e.g. 10%)"
        )),
    }
}

#[cfg(test)]
mod tolerance_tests {
    use super::parse_tolerance;

    #[test]
    fn tolerances_are_counts_or_shares() {
        assert_eq!(parse_tolerance("3").unwrap(), "3");
        assert_eq!(parse_tolerance("12.5%").unwrap(), "12.5%");
        assert_eq!(parse_tolerance("100%").unwrap(), "100%");
        for bad in ["0", "-1", "0%", "101%", "-5%", "some"] {
            assert!(parse_tolerance(bad).is_err(), "{bad}");
        }
    }
}
