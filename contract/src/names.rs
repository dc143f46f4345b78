//! Services, handlers and journal step names on the wire.
//!
//! restate-sdk's service macros take their names as literals, so the handler spells them there
//! too; its discovery test holds them to these.

/// The reference service: `run` (the coordinator) and `runSubtask` (one subtask).
pub const WORKER: &str = "worker";
/// The coordinator handler.
pub const RUN: &str = "run";
/// The subtask handler, on `worker` or, in a split layout, on [`EXECUTOR`].
pub const RUN_SUBTASK: &str = "runSubtask";
/// The batch handler: several subtasks in one invocation (`x-fanout-batch-size`), beside
/// [`RUN_SUBTASK`] on the same service.
pub const RUN_BATCH: &str = "runBatch";
/// A lane of the fan-in ledger (internal to a run).
pub const RUN_SHARD: &str = "runShard";
/// The fan-in ledger: a Virtual Object keyed by the run's invocation id.
pub const LEDGER: &str = "fanIn";
/// The ledger's handler that grants a lane its next subtasks.
pub const CLAIM: &str = "claim";
/// The executors' own service in a split layout.
pub const EXECUTOR: &str = "executor";

/// `worker/run`: what `fanout invoke` starts and `fanout runs` lists.
pub const RUN_TARGET: &str = "worker/run";
/// `worker/runSubtask`: a subtask of the one-deployment layout, as log lines name it.
pub const SUBTASK_TARGET: &str = "worker/runSubtask";
/// `worker/runBatch`: a batch of subtasks of the one-deployment layout, as log lines name it.
pub const BATCH_TARGET: &str = "worker/runBatch";
/// `worker/runShard`: a lane invocation, as introspection's `target` column names it.
pub const LANE_TARGET: &str = "worker/runShard";

/// The coordinator's journaled step whose result is the list of subtasks.
pub const SPLIT_STEP: &str = "split task";

/// The coordinator of a run of items: items from S3, results to S3 (`fanout invoke --items`).
pub const RUN_ITEMS: &str = "runItems";
/// `worker/runItems`, as introspection's `target` column names it.
pub const RUN_ITEMS_TARGET: &str = "worker/runItems";
/// A run of items' journaled step whose result is the number of items and the items' ETag
/// (`{"count": N, "etag": "…"}`).
pub const SCAN_STEP: &str = "scan items";
