//! What the verbs that start, follow or inspect a run share: where Restate is
//! ([`Endpoints`]), how they print ([`OutputFormat`]), and how a run's outcome or an error
//! becomes output and an exit code ([`report`], [`fail`]).

use crate::admin::AdminClient;
use crate::exit;
use crate::ingress::{IngressClient, IngressResponse, RECONNECT_WINDOW, Reconnect};
use crate::observe::{self, Observer, Progress};
use anyhow::Result;
use serde_json::{Value, json};
use std::time::Duration;

/// How a verb prints its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// The result on stdout, progress and messages on stderr.
    Text,
    /// One JSON object on stdout, for scripts.
    Json,
}

/// Where Restate is: its ingress (to start and attach) and its admin API (to observe).
#[derive(Clone)]
pub struct Endpoints {
    pub ingress: IngressClient,
    pub admin: AdminClient,
}

impl Endpoints {
    pub fn new(ingress_url: &str, admin_url: &str, token: Option<String>) -> Self {
        Self {
            ingress: IngressClient::new(ingress_url, token.clone()),
            admin: AdminClient::new(admin_url, token),
        }
    }

    pub fn observer(&self) -> Observer {
        Observer::new(self.admin.clone())
    }

    /// `GET /restate/invocation/{id}/attach`: waits for the invocation's result, however long
    /// the run takes (no client timeout).
    pub async fn attach(&self, id: &str) -> Result<IngressResponse> {
        self.ingress.attach(id).await
    }

    /// [`Self::attach`], re-attaching while Restate is away: the run goes on in Restate
    /// regardless, so a restart of the server (or a proxy closing a long request) does not end
    /// the wait; see [`crate::ingress::IngressClient::attach_until_answered`].
    pub async fn attach_patiently(&self, id: &str) -> Result<IngressResponse> {
        self.ingress
            .attach_until_answered(id, RECONNECT_WINDOW, |event| match event {
                Reconnect::Lost(why) => eprintln!(
                    "lost Restate while waiting for {id} ({why}); reconnecting for up to {} min, \
                     the run goes on in Restate",
                    RECONNECT_WINDOW.as_secs() / 60
                ),
                Reconnect::Back => eprintln!("Restate is back; still waiting for {id}"),
            })
            .await
    }
}

/// A followed run: Restate's answer, or `None` when the user pressed Ctrl-C.
pub struct Followed {
    pub invocation_id: String,
    pub answer: Option<IngressResponse>,
    pub progress: Progress,
    pub elapsed: Duration,
}

/// Prints a followed run's outcome (stdout: the result or the JSON report; stderr: the rest)
/// and returns the exit code.
pub fn report(followed: &Followed, output: OutputFormat, previously_accepted: bool) -> u8 {
    let id = &followed.invocation_id;
    let Some(answer) = &followed.answer else {
        let message = format!(
            "interrupted: {id} goes on in Restate; follow it again with `fanout attach {id}`"
        );
        return fail(output, exit::INTERRUPTED, "interrupted", Some(id), &message);
    };
    let (code, outcome, error) = match answer.status {
        200..=299 => (exit::OK, "succeeded", None),
        404 => (
            exit::UNKNOWN_ID,
            "unknown",
            Some(format!(
                "Restate does not know {id}: check the id, and that --ingress-url points at the \
                 Restate that ran it (finished runs are kept 24 h by default)"
            )),
        ),
        401 | 403 => (
            exit::BAD_INPUT,
            "rejected",
            Some(format!(
                "Restate's ingress refused the request (HTTP {}): pass a valid token with \
                 --token or RESTATE_AUTH_TOKEN",
                answer.status
            )),
        ),
        // The coordinator refuses bad input (400) and a fan-out that cannot finish (413)
        // before any subtask starts; every other failure ended a run that was under way.
        400 | 413 => (
            exit::BAD_INPUT,
            "rejected",
            Some(format!(
                "the task was rejected (HTTP {}): {}",
                answer.status,
                answer.message()
            )),
        ),
        _ => (
            exit::RUN_FAILED,
            "failed",
            Some(format!(
                "the run failed (HTTP {}): {}; per-subtask detail: fanout status {id}",
                answer.status,
                answer.message()
            )),
        ),
    };
    match output {
        OutputFormat::Json => {
            let report = json!({
                "invocationId": id,
                "outcome": outcome,
                "httpStatus": answer.status,
                "result": if code == exit::OK { answer.body.clone() } else { Value::Null },
                "error": error,
                "previouslyAccepted": previously_accepted,
                "elapsedMs": followed.elapsed.as_millis() as u64,
                "progress": followed.progress,
            });
            println!("{report}");
            if let Some(error) = &error {
                eprintln!("error: {error}");
            }
        }
        OutputFormat::Text => match &error {
            None => {
                println!("{}", answer.body);
                let p = &followed.progress;
                eprintln!(
                    "{id}: {}/{} subtasks done in {}; per-subtask detail: fanout status {id}",
                    p.finished(),
                    p.total.unwrap_or(0),
                    observe::format_duration(followed.elapsed.as_millis() as u64)
                );
                // A tolerant run succeeds with failures in it; say so where a user looks.
                if let Some(failed) = answer.body["failed"].as_array().filter(|f| !f.is_empty()) {
                    eprintln!(
                        "{id}: {} subtask(s) failed, within what the failure policy \
                         tolerates; each is listed under \"failed\" in the result",
                        failed.len()
                    );
                }
            }
            Some(error) => eprintln!("error: {error}"),
        },
    }
    code
}

/// Reports an error that ended a verb before or instead of a result, and returns `code`.
pub fn fail(
    output: OutputFormat,
    code: u8,
    outcome: &str,
    invocation_id: Option<&str>,
    message: &str,
) -> u8 {
    if output == OutputFormat::Json {
        println!(
            "{}",
            json!({ "invocationId": invocation_id, "outcome": outcome, "error": message })
        );
    }
    if code == exit::INTERRUPTED {
        eprintln!("{message}");
    } else {
        eprintln!("error: {message}");
    }
    code
}

/// Reports an error that ended a verb, with the exit code and outcome its kind gives
/// ([`exit::code_of`]): unreachable (5), rejected (4), unknown (6) or another error (1).
pub fn fail_with(output: OutputFormat, invocation_id: Option<&str>, error: &anyhow::Error) -> u8 {
    let code = exit::code_of(error);
    fail(
        output,
        code,
        exit::outcome_of(code),
        invocation_id,
        &format!("{error:#}"),
    )
}

/// A verb's result as its exit code: an error is reported as [`fail_with`] does (one JSON
/// object on stdout with `--output json`, the message on stderr).
pub fn finish(output: OutputFormat, result: Result<u8>) -> u8 {
    match result {
        Ok(code) => code,
        Err(e) => fail_with(output, None, &e),
    }
}
