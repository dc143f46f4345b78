//! # fanout-handler
//!
//! Restate's durable fan-out / fan-in pattern as a deployable handler: `worker/run` splits a
//! task and calls `worker/runSubtask` once per piece, all in flight at once; Restate journals
//! every call and result, retries failures and resumes the coordinator when results arrive.
//!
//! How the modules map to responsibilities:
//!
//! | module | responsibility |
//! |---|---|
//! | [`job`] | the seam: the [`job::Job`] trait a user implements (split, execute, aggregate) |
//! | [`chores`] | the reference job: comma-separated chores, each a short durable sleep |
//! | [`fan_in`] | the fan-in ledger: lanes that keep the cap full and the ledger that wakes the coordinator once |
//! | [`lane`] | one lane: a window of calls kept full with a select on any, each call one subtask or a batch (`runBatch`) |
//! | [`worker`] | the Restate service `worker` with `run` and `runSubtask` (or, split by `FANOUT_SERVE`, `executor/runSubtask` apart), generic over the job |
//! | [`policy`] | how a run behaves: fan-in strategy, concurrency cap, failure policy, retries |
//! | [`source`] | items from S3 and results to S3 (`worker/runItems`): the scan, ranged reads, result parts and their merge |
//! | [`plan`] | the journal planner: refuses a fan-out whose journal cannot fit Lambda's payload limit |
//! | [`payload`] | JSON on the wire with errors that say what was wrong |
//! | [`parallel`] | several side effects at once inside one invocation, each outcome journaled (`run_all`) |
//! | [`logging`] | the reference log lines, replay-aware, human or JSON |
//! | [`http_endpoint`] | HTTP mode: the endpoint on port 9080 with graceful shutdown |
//! | [`lambda`] | Lambda mode: Restate's invoke events on `lambda_runtime`, with compression and limits |
//! | [`serve`](mod@serve) | one call that serves a job: Lambda or HTTP by the environment, identity keys, run options, logs |
//!
//! The binary `fanout-handler` picks the mode: Lambda when `AWS_LAMBDA_RUNTIME_API` is set
//! (that is how Lambda starts a `bootstrap`), HTTP otherwise.

pub mod chores;
pub mod fan_in;
pub mod http_endpoint;
pub mod job;
pub mod lambda;
pub mod lane;
pub mod logging;
pub mod parallel;
pub mod payload;
pub mod plan;
pub mod policy;
pub mod serve;
pub mod source;
pub mod worker;

pub use chores::Chores;
pub use job::{InvalidInput, Job, SubtaskFailure};
pub use serve::serve;
pub use worker::Worker;
