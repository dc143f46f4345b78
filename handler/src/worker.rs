//! The Restate service `worker`: `run` (the coordinator) and `runSubtask` (the executor).
//!
//! The names on the wire are the reference contract and never change. What the handlers do
//! with the data is the [`Job`]'s business; this module only owns the durable choreography.

use crate::job::{InvalidInput, Job, MAX_SUBTASKS};
use crate::logging::InvocationLog;
use crate::payload::Payload;
use crate::plan::{self, PayloadBudget};
use restate_sdk::prelude::*;
use std::sync::Arc;

/// The fan-out worker for a job `J`.
pub struct Worker<J> {
    job: Arc<J>,
    budget: Option<PayloadBudget>,
}

impl<J: Job> Worker<J> {
    pub fn new(job: J) -> Self {
        Self {
            job: Arc::new(job),
            budget: None,
        }
    }

    /// Refuse fan-outs whose coordinator journal cannot fit `budget` (set on Lambda).
    pub fn with_payload_budget(mut self, budget: PayloadBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The Restate endpoint serving this worker, ready for the HTTP server or the Lambda adapter.
    pub fn endpoint(self) -> Endpoint {
        Endpoint::builder().bind(self).build()
    }
}

/// Why a task was refused, with the HTTP status the ingress answers.
#[derive(Debug)]
pub struct Refusal {
    pub code: u16,
    pub message: String,
}

/// Splits `task` and checks the fan-out can finish: width bounds, then (on Lambda) the
/// journal planner. Deterministic, so its journaled outcome holds on every replay.
pub fn split_and_plan<J: Job>(
    job: &J,
    task: J::Task,
    budget: Option<&PayloadBudget>,
) -> Result<Vec<J::Subtask>, Refusal> {
    let bad_input = |e: InvalidInput| Refusal {
        code: 400,
        message: e.0,
    };
    let subtasks = job.split(task).map_err(bad_input)?;
    check_width(subtasks.len()).map_err(bad_input)?;
    if let Some(budget) = budget {
        let sizes: Vec<usize> = subtasks
            .iter()
            .map(|s| serde_json::to_vec(s).map_or(0, |b| b.len()))
            .collect();
        let split_result = serde_json::to_vec(&subtasks).unwrap_or_default();
        let estimate = plan::estimate(budget, &split_result, &sizes, |bytes| {
            job.outcome_size_hint(bytes)
        });
        plan::check(budget, &estimate).map_err(|e| Refusal {
            code: 413,
            message: e.0,
        })?;
    }
    Ok(subtasks)
}

#[restate_sdk::service(name = "worker")]
impl<J: Job> Worker<J> {
    /// The coordinator: split, call `runSubtask` once per subtask with every call in flight,
    /// wait for all, aggregate.
    #[handler(name = "run")]
    async fn run(
        &self,
        ctx: Context<'_>,
        task: Payload<J::Task>,
    ) -> Result<Payload<J::Output>, HandlerError> {
        let log = InvocationLog::new("worker/run", ctx.invocation_id());
        let job = Arc::clone(&self.job);
        let budget = self.budget;

        // Splitting and planning are journaled together: a fan-out that cannot finish is
        // refused once, before any subtask starts, and never re-planned on replay.
        let Payload(subtasks) = ctx
            .run(|| async move {
                let subtasks = split_and_plan(&*job, task.0, budget.as_ref())
                    .map_err(|e| TerminalError::new_with_code(e.code, e.message))?;
                Ok(Payload(subtasks))
            })
            .name("split task")
            .await?;

        let labels: Vec<String> = subtasks.iter().map(|s| self.job.subtask_label(s)).collect();
        let width = subtasks.len();

        // Every call is issued before the first is awaited: all subtasks run at once.
        let calls: Vec<_> = subtasks
            .into_iter()
            .map(|subtask| {
                ctx.service_client::<WorkerClient<J>>()
                    .run_subtask(Payload(subtask))
                    .call()
            })
            .collect();

        // Awaiting in index order rather than select-on-any: on Lambda each wake replays the
        // whole journal, and in-order waiting wakes the coordinator far less often.
        let mut outcomes = Vec::with_capacity(calls.len());
        for (index, call) in calls.into_iter().enumerate() {
            let Payload(outcome) = call.await.map_err(|e| {
                TerminalError::new_with_code(
                    e.code(),
                    format!(
                        "subtask {} of {} ({}) failed: {}",
                        index + 1,
                        width,
                        labels[index],
                        e.message()
                    ),
                )
            })?;
            outcomes.push(outcome);
        }

        let output = self.job.aggregate(outcomes);
        log.info(format_args!(
            "Aggregated result: {}",
            self.job.output_label(&output)
        ));
        Ok(Payload(output))
    }

    /// The executor: runs one subtask.
    #[handler(name = "runSubtask")]
    async fn run_subtask(
        &self,
        mut ctx: Context<'_>,
        subtask: Payload<J::Subtask>,
    ) -> Result<Payload<J::Outcome>, HandlerError> {
        let log = InvocationLog::new("worker/runSubtask", ctx.invocation_id());
        let label = self.job.subtask_label(&subtask.0);
        log.info(format_args!("Started executing subtask: {label}"));
        let outcome = self.job.execute(&mut ctx, subtask.0).await?;
        log.info(format_args!("Execution subtask finished: {label}"));
        Ok(Payload(outcome))
    }
}

fn check_width(subtasks: usize) -> Result<(), InvalidInput> {
    match subtasks {
        0 => Err(InvalidInput::new(
            "the task split into no subtasks; give at least one",
        )),
        n if n > MAX_SUBTASKS => Err(InvalidInput::new(format!(
            "the task split into {n} subtasks; the limit is {MAX_SUBTASKS}"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn width_is_bounded_on_both_sides() {
        assert!(check_width(0).is_err());
        assert!(check_width(1).is_ok());
        assert!(check_width(MAX_SUBTASKS).is_ok());
        assert!(
            check_width(MAX_SUBTASKS + 1)
                .unwrap_err()
                .0
                .contains("10001")
        );
    }
}
