//! The Restate service `worker`: `run` (the coordinator) and `runSubtask` (the executor), plus
//! the internal pieces of the fan-in ledger (`runShard` and the `fanIn` Virtual Object).
//!
//! The names on the wire are the reference contract and never change. What the handlers do
//! with the data is the [`Job`]'s business; this module only owns the durable choreography.

use crate::fan_in::{
    self, Claim, ClaimRequest, Gathered, Indexed, Lane, LaneReport, LaneResult, TooManyFailures,
};
use crate::job::{InvalidInput, Job, MAX_SUBTASKS};
use crate::lane::{LaneEnd, LaneSetup, done_unless_cancelled, read_granted, run_lane, write_part};
use crate::logging::InvocationLog;
use crate::payload::{ItemResult, Payload};
use crate::plan::{self, PayloadBudget};
use crate::policy::{
    BATCH_SIZE_HEADER, DEFAULT_MAX_CONCURRENCY, FailurePolicy, FanInStrategy,
    MAX_CONCURRENCY_HEADER, SubtaskRetry, parse_batch_size, parse_max_concurrency,
};
use crate::source::{self, ItemsRequest, ItemsSummary, S3Location, Sink};
use fanout_contract::names;
use restate_sdk::context::{Request, RequestTarget};
use restate_sdk::prelude::*;
use std::marker::PhantomData;
use std::sync::Arc;

pub use fanout_contract::layout::Serve;

/// The executors' own service in a split layout.
pub const EXECUTOR_SERVICE: &str = names::EXECUTOR;

/// The fan-out worker for a job `J`.
pub struct Worker<J> {
    job: Arc<J>,
    budget: Option<PayloadBudget>,
    fan_in: FanInStrategy,
    max_concurrency: usize,
    batch_size: usize,
    failure_policy: FailurePolicy,
    subtask_retry: SubtaskRetry,
    serve: Serve,
}

impl<J: Job> Worker<J> {
    pub fn new(job: J) -> Self {
        Self {
            job: Arc::new(job),
            budget: None,
            fan_in: FanInStrategy::Ledger,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            batch_size: 1,
            failure_policy: FailurePolicy::FailFast,
            subtask_retry: SubtaskRetry::default(),
            serve: Serve::All,
        }
    }

    /// What this deployment serves (default: everything, as one deployment).
    pub fn serving(mut self, serve: Serve) -> Self {
        self.serve = serve;
        self
    }

    /// The policy runs use unless their request sets [`FailurePolicy::HEADER`].
    pub fn with_failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.failure_policy = policy;
        self
    }

    /// The run's failure policy, refused up front if the job cannot aggregate failures.
    fn failure_policy(&self, ctx: &Context<'_>) -> Result<FailurePolicy, TerminalError> {
        let policy = self.requested_failure_policy(ctx)?;
        if !policy.is_fail_fast() && !self.job.tolerates_failures() {
            return Err(TerminalError::new_with_code(
                400,
                format!(
                    "failure policy {policy}: this job cannot aggregate failed subtasks \
                     (Job::tolerates_failures is false); run it fail-fast"
                ),
            ));
        }
        Ok(policy)
    }

    /// The run's failure policy as its header or the handler sets it. A run of items needs no
    /// more: its failed items are written in place, not aggregated.
    fn requested_failure_policy(&self, ctx: &Context<'_>) -> Result<FailurePolicy, TerminalError> {
        match ctx.headers().get(FailurePolicy::HEADER) {
            None => Ok(self.failure_policy),
            Some(raw) => FailurePolicy::parse(raw).map_err(|e| {
                TerminalError::new_with_code(400, format!("{}: {e}", FailurePolicy::HEADER))
            }),
        }
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

    /// Subtasks per executor invocation for runs whose request does not set
    /// [`BATCH_SIZE_HEADER`] (default 1: one `runSubtask` each).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    fn batch_size(&self, ctx: &Context<'_>) -> Result<usize, TerminalError> {
        match ctx.headers().get(BATCH_SIZE_HEADER) {
            None => Ok(self.batch_size),
            Some(raw) => parse_batch_size(raw).map_err(|e| {
                TerminalError::new_with_code(400, format!("{BATCH_SIZE_HEADER}: {e}"))
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
        self.endpoint_builder().build()
    }

    /// The endpoint's builder with the worker's services bound, for what the binary adds
    /// before building it (the identity keys that let only Restate call it).
    pub fn endpoint_builder(self) -> restate_sdk::endpoint::Builder {
        let internal = || HandlerOptions::new().ingress_private(true);
        let retry = self.subtask_retry.clone();
        let subtask = || retry.options();
        let serve = self.serve;
        if serve == Serve::Executor {
            return Endpoint::builder().bind(
                Executor(Arc::clone(&self.job))
                    .into_service_definition()
                    .options(
                        ServiceOptions::new()
                            .handler(names::RUN_SUBTASK, subtask())
                            .handler(names::RUN_BATCH, subtask()),
                    ),
            );
        }
        // A coordinator's own runSubtask and runBatch only refuse (see `run_subtask`);
        // private, so the ingress cannot reach them either.
        let own_subtask = || match serve {
            Serve::Coordinator => internal(),
            _ => subtask(),
        };
        Endpoint::builder()
            .bind(
                self.into_service_definition().options(
                    ServiceOptions::new()
                        .handler(names::RUN_SHARD, internal())
                        .handler(names::RUN_SUBTASK, own_subtask())
                        .handler(names::RUN_BATCH, own_subtask()),
                ),
            )
            // Lazy state: a claim or a record loads only the keys it touches, not every input
            // and report of the run.
            .bind(
                FanIn::<J>(PhantomData).into_service_definition().options(
                    ServiceOptions::new()
                        .enable_lazy_state(true)
                        .ingress_private(true),
                ),
            )
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
        let estimate = plan::estimate_for(budget, job, &subtasks);
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
        let log = InvocationLog::new(names::RUN_TARGET, ctx.invocation_id());
        let job = Arc::clone(&self.job);
        let budget = self.budget;
        // How the run behaves comes from its headers: checked before anything is journaled.
        let strategy = self.strategy(&ctx)?;
        let cap = self.max_concurrency(&ctx)?;
        let batch = self.batch_size(&ctx)?;
        let policy = self.failure_policy(&ctx)?;
        if batch > 1 && strategy == FanInStrategy::InOrder {
            return Err(TerminalError::new_with_code(
                400,
                format!(
                    "{BATCH_SIZE_HEADER}: {batch}: batches run with the ledger or select-any \
                     fan-in, not in-order; drop one of the two headers"
                ),
            )
            .into());
        }

        // Splitting and planning are journaled together: a fan-out that cannot finish is
        // refused once, before any subtask starts, and never re-planned on replay.
        let Payload(subtasks) = ctx
            .run(|| async move {
                let subtasks = split_and_plan(&*job, task.0, budget.as_ref())
                    .map_err(|e| TerminalError::new_with_code(e.code, e.message))?;
                Ok(Payload(subtasks))
            })
            .name(names::SPLIT_STEP)
            .await?;

        let width = subtasks.len();
        let tolerated = policy.tolerated(width).map_err(|e| {
            TerminalError::new_with_code(400, format!("{}: {e}", FailurePolicy::HEADER))
        })?;
        let gathered = match strategy {
            FanInStrategy::InOrder => {
                let executor = self.serve.executor_service();
                call_in_order(&ctx, &*self.job, executor, subtasks, cap, tolerated)
                    .await?
                    .map_err(|too_many| too_many.into_error(width, tolerated))?
            }
            FanInStrategy::SelectAny => {
                let pending = subtasks
                    .into_iter()
                    .enumerate()
                    .map(|(index, item)| Indexed { index, item })
                    .collect();
                let executor = self.serve.executor_service();
                let lane = LaneSetup::alone(pending, cap, batch, tolerated, executor);
                match run_lane(&ctx, &*self.job, lane).await? {
                    LaneEnd::Finished(gathered) => gathered,
                    LaneEnd::TooManyFailures(too_many) => {
                        return Err(too_many.into_error(width, tolerated).into());
                    }
                    LaneEnd::HandOver(_) | LaneEnd::Closed => {
                        return Err(TerminalError::new(
                            "a lane without a ledger cannot hand over or be closed",
                        )
                        .into());
                    }
                }
            }
            FanInStrategy::Ledger => {
                let (awakeable, all_reported) = ctx.awakeable::<fan_in::Outcomes<J::Outcome>>();
                let ledger = ctx.invocation_id().to_owned();
                let plan = fan_in::Plan {
                    run: fan_in::Run {
                        ledger: ledger.clone(),
                        awakeable,
                        total: width,
                        tolerated,
                        sink: None,
                        batch,
                    },
                    windows: fan_in::windows(width.div_ceil(batch), cap),
                    subtasks,
                };
                ctx.object_client::<FanInClient<J>>(ledger.clone())
                    .start(Payload(plan))
                    .send();
                if let Err(cancelled) = done_unless_cancelled(&all_reported).await {
                    // Restate's cancellation follows calls, not the sends that started the
                    // lanes: they hear of it from the ledger.
                    log.info(format_args!("Run cancelled: stopping its lanes"));
                    ctx.object_client::<FanInClient<J>>(ledger).cancel().send();
                    return Err(cancelled.into());
                }
                all_reported.await?.0
            }
        };

        let output = if policy.is_fail_fast() {
            // Fail-fast never gets here with a failure: the first one failed the run.
            self.job.aggregate(gathered.into_outcomes())
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

    /// A fan-out of items from S3 with its results written to S3 (see [`crate::source`]):
    /// neither passes through this journal, which holds the scan's count and ETag and the
    /// summary whatever the width. Always the ledger strategy, so the coordinator wakes at
    /// most three times.
    #[handler(name = "runItems")]
    async fn run_items(
        &self,
        ctx: Context<'_>,
        request: Payload<ItemsRequest>,
    ) -> Result<Payload<ItemsSummary>, HandlerError> {
        let log = InvocationLog::new(
            fanout_contract::names::RUN_ITEMS_TARGET,
            ctx.invocation_id(),
        );
        let refuse = |message: String| TerminalError::new_with_code(400, message);
        if let Some(raw) = ctx.headers().get(FanInStrategy::HEADER)
            && self.strategy(&ctx)? != FanInStrategy::Ledger
        {
            return Err(refuse(format!(
                "{}: {raw:?}: a run of items always waits through the ledger (its outcomes \
                 never pass through the coordinator); drop the header",
                FanInStrategy::HEADER
            ))
            .into());
        }
        let cap = self.max_concurrency(&ctx)?;
        let batch = self.batch_size(&ctx)?;
        let policy = self.requested_failure_policy(&ctx)?;
        let ItemsRequest { items, results } = request.0;
        let items = S3Location::parse("items", &items).map_err(refuse)?;
        let results = S3Location::parse("results", &results).map_err(refuse)?;
        if items == results {
            return Err(refuse(format!(
                "items and results are both {items}: the results would replace the items; \
                 give the results another key"
            ))
            .into());
        }
        let ledger = ctx.invocation_id().to_owned();
        let mut sink = Sink::new(items, results, &ledger);

        // Every line is checked before any subtask starts; only the count and the ETag are
        // journaled, the offsets go to the index object.
        let scanning = sink.clone();
        let Payload(scanned) = ctx
            .run(|| async move { Ok(Payload(source::scan::<J::Subtask>(&scanning).await?)) })
            .name(fanout_contract::names::SCAN_STEP)
            .await?;
        sink.etag = scanned.etag;
        let width = scanned.count;
        let tolerated = policy.tolerated(width).map_err(|e| {
            TerminalError::new_with_code(400, format!("{}: {e}", FailurePolicy::HEADER))
        })?;
        let (awakeable, all_reported) = ctx.awakeable::<Payload<ItemsSummary>>();
        let plan = fan_in::Plan::<J::Subtask> {
            run: fan_in::Run {
                ledger: ledger.clone(),
                awakeable,
                total: width,
                tolerated,
                sink: Some(sink),
                batch,
            },
            windows: fan_in::windows(width.div_ceil(batch), cap),
            subtasks: Vec::new(),
        };
        ctx.object_client::<FanInClient<J>>(ledger.clone())
            .start(Payload(plan))
            .send();
        if let Err(cancelled) = done_unless_cancelled(&all_reported).await {
            log.info(format_args!("Run cancelled: stopping its lanes"));
            ctx.object_client::<FanInClient<J>>(ledger).cancel().send();
            return Err(cancelled.into());
        }
        let summary = all_reported.await?.0;
        log.info(format_args!(
            "Results written: {} ({} items: {} succeeded, {} failed)",
            summary.results, summary.items, summary.succeeded, summary.failed
        ));
        Ok(Payload(summary))
    }

    /// One lane of a ledger fan-out: keeps its window of subtasks in flight, claiming more
    /// from the ledger, then reports to it (handing over to a fresh invocation when it has
    /// made enough calls). Internal (not reachable from the ingress).
    #[handler(name = "runShard")]
    async fn run_shard(
        &self,
        ctx: Context<'_>,
        lane: Payload<Lane<J::Subtask>>,
    ) -> Result<(), HandlerError> {
        let Lane {
            run,
            lane,
            window,
            mut pending,
            unread,
            in_flight,
            exhausted,
            sole,
        } = lane.0;
        // A run of items whose lane cannot go on (its items object changed, a bucket went
        // away) fails as a whole at once, rather than leaving its coordinator waiting forever.
        let fail_items_run = |error: TerminalError| {
            ctx.reject_awakeable(&run.awakeable, error);
            ctx.object_client::<FanInClient<J>>(run.ledger.clone())
                .cancel()
                .send();
        };
        if let (Some(sink), Some(range)) = (&run.sink, unread) {
            match read_granted::<J::Subtask>(&ctx, sink, range).await {
                Ok(items) => pending.extend(items),
                Err(error) => {
                    fail_items_run(error);
                    return Ok(());
                }
            }
        }
        let setup = LaneSetup {
            executor: self.serve.executor_service(),
            sink: run.sink.as_ref(),
            pending,
            in_flight,
            window,
            batch: run.batch,
            tolerated: run.tolerated,
            claim_from: Some((&run.ledger, lane)),
            exhausted,
            hand_over_after: Some(fan_in::HAND_OVER_AFTER),
            drain_in_order: true,
        };
        let mut end = match run_lane(&ctx, &*self.job, setup).await {
            Ok(end) => end,
            // 409: this lane was cancelled, the run is over anyway.
            Err(error) if run.sink.is_some() && error.code() != 409 => {
                fail_items_run(error);
                return Ok(());
            }
            Err(error) => return Err(error.into()),
        };
        if let Some(sink) = &run.sink {
            if sole && let LaneEnd::Finished(gathered) = &end {
                // Every outcome is here: the results object is written at once, no parts.
                let (body, failed) =
                    source::results_body::<J>(&gathered.outcomes, &gathered.failures);
                let (sink, id, total) = (sink.clone(), run.ledger.clone(), run.total);
                let written = ctx
                    .run(|| async move {
                        Ok(Payload(
                            source::write_results(&sink, &id, body, total, failed).await?,
                        ))
                    })
                    .name("write results")
                    .await;
                ctx.object_client::<FanInClient<J>>(run.ledger.clone())
                    .forget()
                    .send();
                match written {
                    Ok(summary) => ctx.resolve_awakeable(&run.awakeable, summary),
                    Err(error) => ctx.reject_awakeable(&run.awakeable, error),
                }
                return Ok(());
            }
            end = match write_part::<J>(&ctx, sink, end).await {
                Ok(end) => end,
                Err(error) => {
                    fail_items_run(error);
                    return Ok(());
                }
            };
        }
        // A sole lane that ended in this invocation holds every outcome: it answers the
        // coordinator without a hop through the ledger, which keeps only this lane's invocation
        // id, for a cancel. One that hands over (its calls outweighed a journal) reports as
        // any lane does, and the ledger answers once its successor is done.
        if sole {
            let forget = || {
                ctx.object_client::<FanInClient<J>>(run.ledger.clone())
                    .forget()
                    .send();
            };
            end = match end {
                LaneEnd::Finished(gathered) => {
                    forget();
                    ctx.resolve_awakeable(&run.awakeable, Payload(gathered));
                    return Ok(());
                }
                LaneEnd::TooManyFailures(too_many) => {
                    forget();
                    ctx.reject_awakeable(
                        &run.awakeable,
                        too_many.into_error(run.total, run.tolerated),
                    );
                    return Ok(());
                }
                other => other,
            };
        }
        let (result, successor) = match end {
            LaneEnd::Finished(gathered) => (LaneResult::Done(gathered), None),
            LaneEnd::HandOver(hand_over) => {
                let successor = Lane {
                    run: run.clone(),
                    lane,
                    window,
                    pending: hand_over.pending,
                    unread: None,
                    in_flight: hand_over.in_flight,
                    exhausted: hand_over.exhausted,
                    sole: false,
                };
                (LaneResult::Done(hand_over.gathered), Some(successor))
            }
            LaneEnd::TooManyFailures(too_many) => (LaneResult::TooManyFailures(too_many), None),
            // The run failed elsewhere; the ledger needs nothing more from this lane.
            LaneEnd::Closed => return Ok(()),
        };
        ctx.object_client::<FanInClient<J>>(run.ledger.clone())
            .record(Payload(LaneReport {
                run,
                result,
                successor,
            }))
            .send();
        Ok(())
    }

    /// The executor: runs one subtask. A coordinator of a split layout refuses: its
    /// subtasks run on the executors' own deployment.
    #[handler(name = "runSubtask")]
    async fn run_subtask(
        &self,
        ctx: Context<'_>,
        subtask: Payload<J::Subtask>,
    ) -> Result<Payload<J::Outcome>, HandlerError> {
        if self.serve == Serve::Coordinator {
            return Err(TerminalError::new_with_code(
                404,
                format!(
                    "this deployment is a coordinator ({}=coordinator): subtasks run on \
                     {EXECUTOR_SERVICE}/runSubtask",
                    Serve::ENV
                ),
            )
            .into());
        }
        execute_subtask(&*self.job, names::SUBTASK_TARGET, ctx, subtask.0).await
    }

    /// The executor of a batch (`x-fanout-batch-size`): runs several subtasks in one
    /// invocation and answers one result per subtask, in order. Refused by a coordinator of a
    /// split layout, as `runSubtask` is.
    #[handler(name = "runBatch")]
    async fn run_batch(
        &self,
        ctx: Context<'_>,
        subtasks: Payload<Vec<J::Subtask>>,
    ) -> Result<Payload<Vec<ItemResult<J::Outcome>>>, HandlerError> {
        if self.serve == Serve::Coordinator {
            return Err(TerminalError::new_with_code(
                404,
                format!(
                    "this deployment is a coordinator ({}=coordinator): batches run on \
                     {EXECUTOR_SERVICE}/runBatch",
                    Serve::ENV
                ),
            )
            .into());
        }
        execute_batch(&*self.job, names::BATCH_TARGET, ctx, subtasks.0).await
    }
}

/// Runs one subtask with the reference log lines around it.
async fn execute_subtask<J: Job>(
    job: &J,
    handler: &'static str,
    mut ctx: Context<'_>,
    subtask: J::Subtask,
) -> Result<Payload<J::Outcome>, HandlerError> {
    let log = InvocationLog::new(handler, ctx.invocation_id());
    let label = job.subtask_label(&subtask);
    log.info(format_args!("Started executing subtask: {label}"));
    let outcome = job.execute(&mut ctx, subtask).await?;
    log.info(format_args!("Execution subtask finished: {label}"));
    Ok(Payload(outcome))
}

/// Runs a batch with the reference log lines around each subtask.
async fn execute_batch<J: Job>(
    job: &J,
    handler: &'static str,
    mut ctx: Context<'_>,
    subtasks: Vec<J::Subtask>,
) -> Result<Payload<Vec<ItemResult<J::Outcome>>>, HandlerError> {
    let log = InvocationLog::new(handler, ctx.invocation_id());
    let labels: Vec<String> = subtasks.iter().map(|s| job.subtask_label(s)).collect();
    for label in &labels {
        log.info(format_args!("Started executing subtask: {label}"));
    }
    let results = job.execute_batch(&mut ctx, subtasks).await?;
    if results.len() != labels.len() {
        return Err(TerminalError::new(format!(
            "the job's execute_batch gave {} results for {} subtasks",
            results.len(),
            labels.len()
        ))
        .into());
    }
    for (label, result) in labels.iter().zip(&results) {
        match result {
            Ok(_) => log.info(format_args!("Execution subtask finished: {label}")),
            Err(error) => log.info(format_args!("Execution subtask failed: {label}: {error}")),
        }
    }
    Ok(Payload(results.into_iter().map(ItemResult::from).collect()))
}

/// The executors as a service of their own (`FANOUT_SERVE=executor`), so that they can be a
/// Lambda function with its own memory, timeout, architecture and concurrency.
pub struct Executor<J>(Arc<J>);

#[restate_sdk::service(name = "executor")]
impl<J: Job> Executor<J> {
    /// Runs one subtask, as `worker/runSubtask` does in the single layout.
    #[handler(name = "runSubtask")]
    async fn run_subtask(
        &self,
        ctx: Context<'_>,
        subtask: Payload<J::Subtask>,
    ) -> Result<Payload<J::Outcome>, HandlerError> {
        execute_subtask(&*self.0, "executor/runSubtask", ctx, subtask.0).await
    }

    /// Runs a batch of subtasks, as `worker/runBatch` does in the single layout.
    #[handler(name = "runBatch")]
    async fn run_batch(
        &self,
        ctx: Context<'_>,
        subtasks: Payload<Vec<J::Subtask>>,
    ) -> Result<Payload<Vec<ItemResult<J::Outcome>>>, HandlerError> {
        execute_batch(&*self.0, "executor/runBatch", ctx, subtasks.0).await
    }
}

/// Calls `runSubtask` for every subtask, at most `window` in flight at once (all of them when
/// the window is as wide), and awaits them in index order (a wake of the caller takes every
/// result that has arrived by then). Up to `tolerated` failures are gathered with the
/// outcomes; the one after ends the wait, cancels the calls still in flight and never starts
/// the rest. A cancelled run stops the same way, with the cancellation as its error.
async fn call_in_order<J: Job>(
    ctx: &Context<'_>,
    job: &J,
    executor: &str,
    subtasks: Vec<J::Subtask>,
    window: usize,
    tolerated: usize,
) -> Result<Result<Gathered<J::Outcome>, TooManyFailures>, TerminalError> {
    let labels: Vec<String> = subtasks.iter().map(|s| job.subtask_label(s)).collect();
    let call = |subtask| subtask_request::<J>(ctx, executor, subtask).call();
    let mut waiting = subtasks.into_iter();
    // A sliding window in index order: the first `window` calls go out at once, and each
    // result awaited lets the next call out.
    let mut in_flight: std::collections::VecDeque<_> =
        waiting.by_ref().take(window.max(1)).map(call).collect();
    let mut gathered = Gathered::default();
    while let Some(next) = in_flight.pop_front() {
        // Cancelled: the SDK has cancelled every call in flight, and nothing more starts.
        done_unless_cancelled(&next).await?;
        let index = gathered.len();
        let label = || labels[index].clone();
        if let Err(too_many) = gathered.add(index, label, next.await.map(|p| p.0), tolerated) {
            // The run is lost: what is still running is work nobody will use.
            for call in &in_flight {
                if let Ok(handle) = call.invocation_handle().await {
                    handle.cancel();
                }
            }
            return Ok(Err(too_many));
        }
        if let Some(subtask) = waiting.next() {
            in_flight.push_back(call(subtask));
        }
    }
    Ok(Ok(gathered))
}

/// The request that runs `subtask` on the `runSubtask` handler of service `executor`.
fn subtask_request<'c, J: Job>(
    ctx: &'c Context<'_>,
    executor: &str,
    subtask: J::Subtask,
) -> Request<'c, Payload<J::Subtask>, Payload<J::Outcome>> {
    ctx.request(
        RequestTarget::service(executor, names::RUN_SUBTASK),
        Payload(subtask),
    )
}

/// Cancels the current invocation of each of a run's `lanes` (each cancels its subtasks in
/// turn) and forgets the run.
async fn stop_lanes(ctx: &ObjectContext<'_>, lanes: usize) -> Result<(), TerminalError> {
    // Requested together: on Lambda each lazy read awaited alone costs a round trip.
    let ids: Vec<_> = (0..lanes)
        .map(|lane| ctx.get::<String>(fan_in::lane_key(lane)))
        .collect();
    for id in ids {
        if let Some(id) = id.await? {
            ctx.invocation_handle(id).cancel();
        }
    }
    ctx.clear_all();
    Ok(())
}

/// The ledger of one run, keyed by the run's invocation id: unclaimed inputs, the lanes'
/// reports, and the tallies that tell when the run is done or lost.
pub struct FanIn<J>(PhantomData<fn() -> J>);

#[restate_sdk::object(name = "fanIn")]
impl<J: Job> FanIn<J> {
    /// Fills every lane's window at once and keeps the other inputs for claims.
    #[handler(name = "start")]
    async fn start(
        &self,
        ctx: ObjectContext<'_>,
        plan: Payload<fan_in::Plan<J::Subtask>>,
    ) -> Result<(), HandlerError> {
        let fan_in::Plan {
            run,
            windows,
            subtasks,
        } = plan.0;
        // A run of items hands its lanes ranges to read; the ledger never holds an input.
        let from_source = run.sink.is_some();
        let total = if from_source {
            run.total
        } else {
            subtasks.len()
        };
        let mut subtasks = subtasks
            .into_iter()
            .enumerate()
            .map(|(index, item)| Indexed { index, item });
        let mut started = 0;
        // A window counts calls: a lane's first grant fills each of them with a whole batch.
        let lanes: Vec<(Vec<_>, Option<(usize, usize)>)> = windows
            .iter()
            .map(|&window| {
                let take = window * run.batch;
                let range = (started, (started + take).min(total));
                started = range.1;
                if from_source {
                    (Vec::new(), Some(range))
                } else {
                    (subtasks.by_ref().take(take).collect(), None)
                }
            })
            .collect();
        let exhausted = started == total;
        // What claims read; nothing when every subtask starts now.
        if !exhausted {
            for Indexed { index, item } in subtasks {
                ctx.set(fan_in::input_key(index), Payload(item));
            }
            ctx.set("next", started as u64);
            ctx.set("total", total as u64);
        }
        // The mark of a live run: claims and reports that find it gone are turned away.
        ctx.set("lanes", windows.len() as u64);
        let sole = exhausted && windows.len() == 1;
        let sends: Vec<_> = lanes
            .into_iter()
            .zip(windows)
            .enumerate()
            .map(|(lane, ((pending, unread), window))| {
                ctx.service_client::<WorkerClient<J>>()
                    .run_shard(Payload(Lane {
                        run: run.clone(),
                        lane,
                        window,
                        pending,
                        unread,
                        in_flight: Vec::new(),
                        exhausted,
                        sole,
                    }))
                    .send()
            })
            .collect();
        // Kept for a cancel. On Lambda the ids cost one round trip, which carries the sends.
        for (lane, send) in sends.into_iter().enumerate() {
            let handle = send.await?;
            ctx.set(fan_in::lane_key(lane), handle.invocation_id().to_owned());
        }
        Ok(())
    }

    /// Stops a cancelled run: cancels the current invocation of each lane, which cancels its
    /// subtasks in flight, and forgets the run's inputs and reports, so nothing more starts. A
    /// run that already ended has nothing here and is left alone.
    #[handler(name = "cancel")]
    async fn cancel(&self, ctx: ObjectContext<'_>) -> Result<(), HandlerError> {
        if let Some(lanes) = ctx.get::<u64>("lanes").await? {
            stop_lanes(&ctx, lanes as usize).await?;
        }
        Ok(())
    }

    /// Forgets a run whose only lane answered the coordinator itself.
    #[handler(name = "forget")]
    async fn forget(&self, ctx: ObjectContext<'_>) -> Result<(), HandlerError> {
        ctx.clear_all();
        Ok(())
    }

    /// Grants a lane the next subtasks in index order: fewer as the run nears its end, none
    /// once all are claimed, and a closed answer once the run has failed.
    #[handler(name = "claim")]
    async fn claim(
        &self,
        ctx: ObjectContext<'_>,
        request: Payload<ClaimRequest>,
    ) -> Result<Payload<Claim<J::Subtask>>, HandlerError> {
        // Requested together: on Lambda each lazy read awaited alone costs a round trip.
        let lanes = ctx.get::<u64>("lanes");
        let next = ctx.get::<u64>("next");
        let total = ctx.get::<u64>("total");
        let lanes = lanes.await?;
        let mut answer = Claim {
            subtasks: Vec::new(),
            range: None,
            // The run ended (failed or cancelled) and its state is gone.
            closed: lanes.is_none(),
        };
        let lanes = lanes.unwrap_or(1) as usize;
        let next = next.await?.unwrap_or(0) as usize;
        let total = total.await?.unwrap_or(0) as usize;
        if answer.closed || next >= total {
            return Ok(Payload(answer));
        }
        let granted = fan_in::grant(total - next, lanes, request.0.window);
        ctx.set("next", (next + granted) as u64);
        if request.0.range {
            answer.range = Some((next, next + granted));
            return Ok(Payload(answer));
        }
        let inputs: Vec<_> = (next..next + granted)
            .map(|index| {
                (
                    index,
                    ctx.get::<Payload<J::Subtask>>(fan_in::input_key(index)),
                )
            })
            .collect();
        for (index, input) in inputs {
            if let Some(Payload(item)) = input.await? {
                answer.subtasks.push(Indexed { index, item });
            }
            ctx.clear(fan_in::input_key(index));
        }
        Ok(Payload(answer))
    }

    /// Keeps a lane's outcomes and starts its successor, if it handed over; the report that
    /// brings the last outcome resolves the coordinator's awakeable with every outcome in
    /// order. A failure over the limit rejects it at once.
    #[handler(name = "record")]
    async fn record(
        &self,
        ctx: ObjectContext<'_>,
        report: Payload<LaneReport<J::Subtask, J::Outcome>>,
    ) -> Result<(), HandlerError> {
        let LaneReport {
            run,
            result,
            successor,
        } = report.0;
        let lanes = ctx.get::<u64>("lanes");
        let done = ctx.get::<u64>("done");
        let failed = ctx.get::<u64>("failed");
        let reports = ctx.get::<u64>("reports");
        // Failing the run stops every lane and drops the unclaimed inputs, so what has not
        // started never starts, and cancels what a hand-over would have carried on.
        let fail_run = async |too_many: TooManyFailures, lanes: usize| {
            ctx.reject_awakeable(
                &run.awakeable,
                too_many.into_error(run.total, run.tolerated),
            );
            stop_lanes(&ctx, lanes).await
        };
        let cancel_successor = |successor: Option<Lane<J::Subtask>>| {
            for flight in successor.into_iter().flat_map(|s| s.in_flight) {
                ctx.invocation_handle(flight.invocation).cancel();
            }
        };
        let Some(lanes) = lanes.await? else {
            cancel_successor(successor);
            return Ok(()); // the run already ended; later reports change nothing
        };
        let lanes = lanes as usize;
        let failed_before = failed.await?.unwrap_or(0) as usize;
        let gathered = match result {
            LaneResult::TooManyFailures(mut too_many) => {
                too_many.failed += failed_before;
                cancel_successor(successor);
                fail_run(too_many, lanes).await?;
                return Ok(());
            }
            LaneResult::Done(gathered) => gathered,
        };
        let failed = failed_before + gathered.failures.len();
        if failed > run.tolerated {
            // Under the limit before this report (or the run would be closed), so the
            // failure that crossed it is in this report.
            let mut failures = gathered.failures;
            failures.sort_by_key(|f| f.index);
            let failure = failures[run.tolerated - failed_before].clone();
            cancel_successor(successor);
            fail_run(TooManyFailures { failure, failed }, lanes).await?;
            return Ok(());
        }
        if failed > failed_before {
            ctx.set("failed", failed as u64);
        }
        let done = done.await?.unwrap_or(0) as usize + gathered.len();
        let reports = reports.await?.unwrap_or(0) as usize;
        if done < run.total {
            // A run of items keeps counts only: its outcomes are in the parts.
            if run.sink.is_none() && !gathered.is_empty() {
                ctx.set(fan_in::report_key(reports), Payload(gathered));
                ctx.set("reports", reports as u64 + 1);
            }
            ctx.set("done", done as u64);
            if let Some(successor) = successor {
                let lane = successor.lane;
                let handle = ctx
                    .service_client::<WorkerClient<J>>()
                    .run_shard(Payload(successor))
                    .send()
                    .await?;
                ctx.set(fan_in::lane_key(lane), handle.invocation_id().to_owned());
            }
            return Ok(());
        }
        if let Some(sink) = run.sink.clone() {
            // The last count is in: the parts become the results object, in index order.
            let (id, total) = (run.ledger.clone(), run.total);
            let merged = ctx
                .run(|| async move { Ok(Payload(source::merge(&sink, &id, total, failed).await?)) })
                .name("merge results")
                .await;
            match merged {
                Ok(summary) => ctx.resolve_awakeable(&run.awakeable, summary),
                Err(error) => ctx.reject_awakeable(&run.awakeable, error),
            }
            ctx.clear_all();
            return Ok(());
        }
        // Every earlier report, requested together so Restate sends them in one go.
        let earlier: Vec<_> = (0..reports)
            .map(|r| ctx.get::<fan_in::Outcomes<J::Outcome>>(fan_in::report_key(r)))
            .collect();
        let mut all = gathered;
        for (r, stored) in earlier.into_iter().enumerate() {
            match stored.await? {
                Some(Payload(outcomes)) => all.append(outcomes),
                None => {
                    // Cannot happen while every report is kept once; fail loudly rather
                    // than hand the coordinator a result with holes.
                    ctx.reject_awakeable(
                        &run.awakeable,
                        TerminalError::new(format!("the ledger lost report {r}")),
                    );
                    ctx.clear_all();
                    return Ok(());
                }
            }
        }
        ctx.resolve_awakeable(&run.awakeable, Payload(all));
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
