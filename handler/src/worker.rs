//! The Restate service `worker`: `run` (the coordinator) and `runSubtask` (the executor), plus
//! the internal pieces of the fan-in ledger (`runShard` and the `fanIn` Virtual Object).
//!
//! The names on the wire are the reference contract and never change. What the handlers do
//! with the data is the [`Job`]'s business; this module only owns the durable choreography.

use crate::fan_in::{self, Gathered, Shard, ShardReport, ShardResult, TooManyFailures};
use crate::job::{InvalidInput, Job, MAX_SUBTASKS, SubtaskFailure};
use crate::logging::InvocationLog;
use crate::payload::Payload;
use crate::plan::{self, PayloadBudget};
use crate::policy::{
    DEFAULT_MAX_CONCURRENCY, FailurePolicy, FanInStrategy, MAX_CONCURRENCY_HEADER, SubtaskRetry,
    parse_max_concurrency,
};
use restate_sdk::prelude::*;
use std::marker::PhantomData;
use std::sync::Arc;

/// The fan-out worker for a job `J`.
pub struct Worker<J> {
    job: Arc<J>,
    budget: Option<PayloadBudget>,
    fan_in: FanInStrategy,
    max_concurrency: usize,
    failure_policy: FailurePolicy,
    subtask_retry: SubtaskRetry,
}

impl<J: Job> Worker<J> {
    pub fn new(job: J) -> Self {
        Self {
            job: Arc::new(job),
            budget: None,
            fan_in: FanInStrategy::Ledger,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            failure_policy: FailurePolicy::FailFast,
            subtask_retry: SubtaskRetry::default(),
        }
    }

    /// The policy runs use unless their request sets [`FailurePolicy::HEADER`].
    pub fn with_failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.failure_policy = policy;
        self
    }

    /// The run's failure policy, refused up front if the job cannot aggregate failures.
    fn failure_policy(&self, ctx: &Context<'_>) -> Result<FailurePolicy, TerminalError> {
        let refuse = |message: String| TerminalError::new_with_code(400, message);
        let policy = match ctx.headers().get(FailurePolicy::HEADER) {
            None => self.failure_policy,
            Some(raw) => FailurePolicy::parse(raw)
                .map_err(|e| refuse(format!("{}: {e}", FailurePolicy::HEADER)))?,
        };
        if !policy.is_fail_fast() && !self.job.tolerates_failures() {
            return Err(refuse(format!(
                "failure policy {policy}: this job cannot aggregate failed subtasks \
                 (Job::tolerates_failures is false); run it fail-fast"
            )));
        }
        Ok(policy)
    }

    /// How Restate retries `runSubtask` (published in the deployment's discovery manifest).
    pub fn with_subtask_retry(mut self, retry: SubtaskRetry) -> Self {
        self.subtask_retry = retry;
        self
    }

    /// The cap runs use unless their request sets [`MAX_CONCURRENCY_HEADER`].
    pub fn with_max_concurrency(mut self, max_concurrency: usize) -> Self {
        self.max_concurrency = max_concurrency.max(1);
        self
    }

    fn max_concurrency(&self, ctx: &Context<'_>) -> Result<usize, TerminalError> {
        match ctx.headers().get(MAX_CONCURRENCY_HEADER) {
            None => Ok(self.max_concurrency),
            Some(raw) => parse_max_concurrency(raw).map_err(|e| {
                TerminalError::new_with_code(400, format!("{MAX_CONCURRENCY_HEADER}: {e}"))
            }),
        }
    }

    /// The strategy runs use unless their request names one in [`FanInStrategy::HEADER`].
    pub fn with_fan_in(mut self, strategy: FanInStrategy) -> Self {
        self.fan_in = strategy;
        self
    }

    fn strategy(&self, ctx: &Context<'_>) -> Result<FanInStrategy, TerminalError> {
        match ctx.headers().get(FanInStrategy::HEADER) {
            None => Ok(self.fan_in),
            Some(raw) => FanInStrategy::parse(raw).map_err(|e| {
                TerminalError::new_with_code(400, format!("{}: {e}", FanInStrategy::HEADER))
            }),
        }
    }

    /// Refuse fan-outs whose coordinator journal cannot fit `budget` (set on Lambda).
    pub fn with_payload_budget(mut self, budget: PayloadBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The Restate endpoint serving this worker, ready for the HTTP server or the Lambda adapter.
    pub fn endpoint(self) -> Endpoint {
        let internal = HandlerOptions::new().ingress_private(true);
        let subtask = self.subtask_retry.options();
        Endpoint::builder()
            .bind(
                self.into_service_definition().options(
                    ServiceOptions::new()
                        .handler("runShard", internal)
                        .handler("runSubtask", subtask),
                ),
            )
            // Lazy state: a record loads only the keys it touches, not every shard's outcomes.
            .bind(
                FanIn::<J>(PhantomData).into_service_definition().options(
                    ServiceOptions::new()
                        .enable_lazy_state(true)
                        .ingress_private(true),
                ),
            )
            .build()
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
        // How the run behaves comes from its headers: checked before anything is journaled.
        let strategy = self.strategy(&ctx)?;
        let cap = self.max_concurrency(&ctx)?;
        let policy = self.failure_policy(&ctx)?;

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

        let width = subtasks.len();
        let tolerated = policy.tolerated(width).map_err(|e| {
            TerminalError::new_with_code(400, format!("{}: {e}", FailurePolicy::HEADER))
        })?;
        let gathered = match strategy {
            FanInStrategy::InOrder => call_in_order(&ctx, &*self.job, subtasks, 0, cap, tolerated)
                .await
                .map_err(|too_many| too_many.into_error(width, tolerated))?,
            FanInStrategy::Ledger => {
                let (awakeable, all_reported) = ctx.awakeable::<fan_in::Outcomes<J::Outcome>>();
                let ledger = ctx.invocation_id().to_owned();
                let (lanes, window) = fan_in::lanes_and_window(cap);
                let plan = fan_in::Plan {
                    lanes,
                    shards: fan_in::shards(subtasks, &ledger, &awakeable, window, tolerated)
                        .collect(),
                };
                ctx.object_client::<FanInClient<J>>(ledger)
                    .start(Payload(plan))
                    .send();
                all_reported.await?.0
            }
        };

        let output = if policy.is_fail_fast() {
            // Fail-fast never gets here with a failure: the first one failed the run.
            self.job.aggregate(gathered.outcomes)
        } else {
            self.job
                .aggregate_partial(gathered.into_results())
                .ok_or_else(|| {
                    TerminalError::new(
                        "the job's aggregate_partial gave no result for a tolerant run",
                    )
                })?
        };
        log.info(format_args!(
            "Aggregated result: {}",
            self.job.output_label(&output)
        ));
        Ok(Payload(output))
    }

    /// One shard of a ledger fan-out: calls its subtasks, then reports to the run's ledger.
    /// Internal (not reachable from the ingress).
    #[handler(name = "runShard")]
    async fn run_shard(
        &self,
        ctx: Context<'_>,
        shard: Payload<Shard<J::Subtask>>,
    ) -> Result<(), HandlerError> {
        let Shard {
            ledger,
            awakeable,
            index,
            shards,
            offset,
            total,
            window,
            tolerated,
            subtasks,
        } = shard.0;
        let result =
            match call_in_order(&ctx, &*self.job, subtasks, offset, window, tolerated).await {
                Ok(gathered) => ShardResult::Done(gathered),
                Err(too_many) => ShardResult::TooManyFailures(too_many),
            };
        ctx.object_client::<FanInClient<J>>(ledger)
            .record(Payload(ShardReport {
                awakeable,
                index,
                shards,
                total,
                tolerated,
                result,
            }))
            .send();
        Ok(())
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

/// Calls `runSubtask` for every subtask, at most `window` in flight at once (all of them when
/// the window is as wide), and awaits them in index order (a wake of the caller takes every
/// result that has arrived by then). Up to `tolerated` failures are gathered with the
/// outcomes; the one after ends the wait, cancels the calls still in flight and never starts
/// the rest. `offset` places these subtasks in the whole task.
async fn call_in_order<J: Job>(
    ctx: &Context<'_>,
    job: &J,
    subtasks: Vec<J::Subtask>,
    offset: usize,
    window: usize,
    tolerated: usize,
) -> Result<Gathered<J::Outcome>, TooManyFailures> {
    let labels: Vec<String> = subtasks.iter().map(|s| job.subtask_label(s)).collect();
    let call = |subtask| {
        ctx.service_client::<WorkerClient<J>>()
            .run_subtask(Payload(subtask))
            .call()
    };
    let mut waiting = subtasks.into_iter();
    // A sliding window in index order: the first `window` calls go out at once, and each
    // result awaited lets the next call out.
    let mut in_flight: std::collections::VecDeque<_> =
        waiting.by_ref().take(window.max(1)).map(call).collect();
    let mut gathered = Gathered::default();
    while let Some(next) = in_flight.pop_front() {
        let index = gathered.len();
        match next.await {
            Ok(Payload(outcome)) => gathered.outcomes.push(outcome),
            Err(error) => {
                let failure = SubtaskFailure {
                    index: offset + index,
                    subtask: labels[index].clone(),
                    code: error.code(),
                    message: error.message().to_owned(),
                };
                if gathered.failures.len() >= tolerated {
                    // The run is lost: what is still running is work nobody will use.
                    for call in &in_flight {
                        if let Ok(handle) = call.invocation_handle().await {
                            handle.cancel();
                        }
                    }
                    return Err(TooManyFailures {
                        failed: gathered.failures.len() + 1,
                        failure,
                    });
                }
                gathered.failures.push(failure);
            }
        }
        if let Some(subtask) = waiting.next() {
            in_flight.push_back(call(subtask));
        }
    }
    Ok(gathered)
}

/// The ledger of one run's shards, keyed by the run's invocation id.
pub struct FanIn<J>(PhantomData<fn() -> J>);

#[restate_sdk::object(name = "fanIn")]
impl<J: Job> FanIn<J> {
    /// Starts the first `lanes` shards and keeps the others' inputs until a lane frees up.
    #[handler(name = "start")]
    async fn start(
        &self,
        ctx: ObjectContext<'_>,
        plan: Payload<fan_in::Plan<J::Subtask>>,
    ) -> Result<(), HandlerError> {
        let fan_in::Plan { lanes, shards } = plan.0;
        let count = shards.len();
        for shard in shards {
            if shard.index < lanes {
                ctx.service_client::<WorkerClient<J>>()
                    .run_shard(Payload(shard))
                    .send();
            } else {
                ctx.set(fan_in::input_key(shard.index), Payload(shard));
            }
        }
        if lanes < count {
            ctx.set("next", lanes as u64);
        }
        Ok(())
    }

    /// Keeps a shard's outcomes; the report that completes the last shard resolves the
    /// coordinator's awakeable with every outcome in order. A failure rejects it at once.
    #[handler(name = "record")]
    async fn record(
        &self,
        ctx: ObjectContext<'_>,
        report: Payload<ShardReport<J::Outcome>>,
    ) -> Result<(), HandlerError> {
        let ShardReport {
            awakeable,
            index,
            shards,
            total,
            tolerated,
            result,
        } = report.0;
        // Requested together: on Lambda each lazy read that is awaited alone costs a round
        // trip (a suspension and a fresh invocation).
        let closed = ctx.get::<bool>("closed");
        let done = ctx.get::<u64>("done");
        let next = ctx.get::<u64>("next");
        let failed = ctx.get::<u64>("failed");
        if closed.await?.unwrap_or(false) {
            return Ok(()); // the run already failed; later shards change nothing
        }
        // Failing the run also drops the inputs of shards still waiting for a lane, so what
        // has not started never starts.
        let fail_run = |too_many: TooManyFailures| {
            ctx.reject_awakeable(&awakeable, too_many.into_error(total, tolerated));
            ctx.clear_all();
            ctx.set("closed", true);
        };
        let failed_before = failed.await?.unwrap_or(0) as usize;
        let gathered = match result {
            ShardResult::TooManyFailures(mut too_many) => {
                too_many.failed += failed_before;
                fail_run(too_many);
                return Ok(());
            }
            ShardResult::Done(gathered) => gathered,
        };
        let failed = failed_before + gathered.failures.len();
        if failed > tolerated {
            // Under the limit before this report (or the run would be closed), so the
            // failure that crossed it is in this report.
            let failure = gathered.failures[tolerated - failed_before].clone();
            fail_run(TooManyFailures { failure, failed });
            return Ok(());
        }
        if failed > failed_before {
            ctx.set("failed", failed as u64);
        }
        let done = done.await?.unwrap_or(0) as usize + 1;
        if done < shards {
            ctx.set(fan_in::shard_key(index), Payload(gathered));
            ctx.set("done", done as u64);
            // A lane is free: start the next waiting shard, if any.
            if let Some(next) = next.await? {
                let next = next as usize;
                if next < shards {
                    let key = fan_in::input_key(next);
                    if let Some(shard) = ctx.get::<Payload<Shard<J::Subtask>>>(key).await? {
                        ctx.service_client::<WorkerClient<J>>()
                            .run_shard(shard)
                            .send();
                    }
                    ctx.clear(key);
                    ctx.set("next", next as u64 + 1);
                }
            }
            return Ok(());
        }
        // Every other shard's outcomes, requested together so Restate sends them in one go.
        let others: Vec<_> = (0..shards)
            .filter(|&j| j != index)
            .map(|j| {
                (
                    j,
                    ctx.get::<fan_in::Outcomes<J::Outcome>>(fan_in::shard_key(j)),
                )
            })
            .collect();
        let mut by_shard: Vec<Option<Gathered<J::Outcome>>> = (0..shards).map(|_| None).collect();
        by_shard[index] = Some(gathered);
        for (j, stored) in others {
            by_shard[j] = stored.await?.map(|p| p.0);
        }
        let mut all = Gathered::default();
        for (j, outcomes) in by_shard.into_iter().enumerate() {
            match outcomes {
                Some(outcomes) => all.append(outcomes),
                None => {
                    // Cannot happen while each shard reports once; fail loudly rather than
                    // hand the coordinator a result with holes.
                    ctx.reject_awakeable(
                        &awakeable,
                        TerminalError::new(format!("the ledger lost shard {j}'s outcomes")),
                    );
                    ctx.clear_all();
                    return Ok(());
                }
            }
        }
        ctx.resolve_awakeable(&awakeable, Payload(all));
        ctx.clear_all();
        Ok(())
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
