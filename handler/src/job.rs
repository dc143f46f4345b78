//! The seam between the Restate plumbing and the work itself.
//!
//! A [`Job`] says how a task splits into subtasks, how one subtask is executed and how the
//! results are aggregated. [`crate::worker`] owns everything durable around it: the journaled
//! split, one Restate call per subtask, the fan-in and the logs. Swapping the chores example for
//! your own job means implementing this trait and handing it to [`crate::worker::Worker::new`].

use restate_sdk::prelude::{Context, HandlerError, TerminalError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::future::Future;

/// The widest fan-out the worker accepts. Every subtask is one Restate call and one journal
/// entry in the coordinator, so the width bounds the coordinator's journal (and, on Lambda, the
/// payload Restate ships on every resume).
pub const MAX_SUBTASKS: usize = 10_000;

/// A job the worker fans out.
///
/// The associated types are the job's own wire payloads (JSON on the wire); they never need to
/// know about Restate.
pub trait Job: Sized + Send + Sync + 'static {
    /// The input of `worker/run`.
    type Task: DeserializeOwned + Send + 'static;
    /// The input of `worker/runSubtask`; journaled by the split step and sent to each call.
    type Subtask: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// What one subtask returns.
    type Outcome: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// What `worker/run` returns.
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// Splits a task into subtasks, in the order their outcomes will be aggregated.
    ///
    /// Runs inside the journaled step `split task`, so it runs once per invocation whatever the
    /// replays. An error is terminal: the input can never succeed, so it is not retried.
    fn split(&self, task: Self::Task) -> Result<Vec<Self::Subtask>, InvalidInput>;

    /// Executes one subtask. `ctx` is the subtask's own Restate context: use it for durable
    /// steps (`ctx.run`, `ctx.sleep`, deterministic `ctx.rand()`).
    ///
    /// A [`restate_sdk::prelude::TerminalError`] fails the subtask for good; any other error
    /// makes Restate retry it.
    fn execute(
        &self,
        ctx: &mut Context<'_>,
        subtask: Self::Subtask,
    ) -> impl Future<Output = Result<Self::Outcome, HandlerError>> + Send;

    /// Executes a batch of subtasks in one invocation (`runBatch`, when a run asks for a batch
    /// size above 1 with `x-fanout-batch-size` or `fanout invoke --batch-size`), with one
    /// result per subtask in their order: a subtask that fails for good is an `Err` in its
    /// place and the others still count. The outer error is the batch's own: a retryable one
    /// makes Restate retry the batch, whose journal replays what it finished before, so a
    /// finished subtask's durable steps are not done again.
    ///
    /// The default runs them one after the other with [`Job::execute`], which is right for
    /// any job but takes the sum of their times. A job whose subtasks can run side by side
    /// should override it: [`crate::parallel::run_all`] runs side effects at once, each
    /// journaled (the chores job does so, and sleeps once for the whole batch).
    fn execute_batch(
        &self,
        ctx: &mut Context<'_>,
        subtasks: Vec<Self::Subtask>,
    ) -> impl Future<Output = Result<Vec<Result<Self::Outcome, TerminalError>>, HandlerError>> + Send
    {
        execute_each(self, ctx, subtasks)
    }

    /// Folds the outcomes, given in the order [`Job::split`] returned the subtasks.
    fn aggregate(&self, outcomes: Vec<Self::Outcome>) -> Self::Output;

    /// Whether the job can aggregate a run in which some subtasks failed
    /// ([`Job::aggregate_partial`]). A run with a tolerant failure policy of a job that says
    /// no is refused before it starts.
    fn tolerates_failures(&self) -> bool {
        false
    }

    /// Folds every subtask's outcome, success or failure, for a run under a tolerant failure
    /// policy, in the order [`Job::split`] returned the subtasks. Implement it together with
    /// [`Job::tolerates_failures`]; `None` fails the run.
    fn aggregate_partial(
        &self,
        outcomes: Vec<Result<Self::Outcome, SubtaskFailure>>,
    ) -> Option<Self::Output> {
        let _ = outcomes;
        None
    }

    /// About how many bytes the outcome of a subtask of `subtask_bytes` serialized bytes
    /// takes; the journal planner uses it to size the coordinator's journal before fanning
    /// out on Lambda. Err on the large side.
    ///
    /// The planner takes an outcome to repeat its subtask's bytes (as the chores' `"x: DONE"`
    /// does), which zstd then mostly removes, and the bytes beyond the subtask's size to be
    /// new. A job whose outcomes share nothing with their subtasks should count the subtask
    /// in: `subtask_bytes + outcome_bytes`.
    fn outcome_size_hint(&self, subtask_bytes: usize) -> usize {
        subtask_bytes
    }

    /// How a subtask is named in log lines (`Started executing subtask: …`).
    fn subtask_label(&self, subtask: &Self::Subtask) -> String;

    /// How the aggregated result is shown in the log line `Aggregated result: …`.
    fn output_label(&self, output: &Self::Output) -> String {
        serde_json::to_string(output).unwrap_or_else(|e| format!("<unprintable output: {e}>"))
    }
}

/// Runs subtasks one after the other with [`Job::execute`], each terminal failure in its
/// place: [`Job::execute_batch`]'s default, for an override to fall back on.
pub async fn execute_each<J: Job>(
    job: &J,
    ctx: &mut Context<'_>,
    subtasks: Vec<J::Subtask>,
) -> Result<Vec<Result<J::Outcome, TerminalError>>, HandlerError> {
    let mut results = Vec::with_capacity(subtasks.len());
    for subtask in subtasks {
        results.push(match job.execute(ctx, subtask).await {
            Ok(outcome) => Ok(outcome),
            Err(error) => Err(into_terminal(error)?),
        });
    }
    Ok(results)
}

/// The terminal error a handler error carries (the subtask failed for good), or the error
/// given back when it is retryable.
///
/// restate-sdk 0.13 keeps the kind private; the one public trace is how it shows a terminal
/// error, `Terminal error [CODE]: MESSAGE` (a unit test holds the SDK to it, so an upgrade that
/// changes it fails there, not in a batch).
pub fn into_terminal(error: HandlerError) -> Result<TerminalError, HandlerError> {
    let shown = AsRef::<dyn std::error::Error>::as_ref(&error).to_string();
    let terminal = shown
        .strip_prefix("Terminal error [")
        .and_then(|rest| rest.split_once("]: "))
        .and_then(|(code, message)| {
            Some(TerminalError::new_with_code(code.parse().ok()?, message))
        });
    terminal.ok_or(error)
}

/// Input that can never succeed. Becomes a terminal error with HTTP status 400 at the ingress.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

impl InvalidInput {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// A subtask that failed for good (after Restate's retries), as a tolerant run's aggregate
/// sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubtaskFailure {
    /// Its position in the task, from 0.
    pub index: usize,
    /// The subtask as [`Job::subtask_label`] names it.
    pub subtask: String,
    /// The terminal error's status code and message.
    pub code: u16,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminal_error_is_told_from_a_retryable_one_with_its_code_and_message() {
        let terminal: HandlerError = TerminalError::new_with_code(422, "no: [x]: y").into();
        let error = into_terminal(terminal).unwrap();
        assert_eq!((error.code(), error.message()), (422, "no: [x]: y"));

        let retryable: HandlerError =
            std::io::Error::other("Terminal error [1]: look-alike").into();
        assert!(into_terminal(retryable).is_err());
    }
}
