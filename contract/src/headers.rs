//! The request headers a run takes, next to its body. Each overrides the handler's default
//! (its environment) for that run only; the values' syntax is in [`crate::policy`].

/// How many subtasks may be in flight at once: a whole number of at least 1.
pub const MAX_CONCURRENCY: &str = "x-fanout-max-concurrency";
/// How the coordinator waits: `ledger`, `select-any` or `in-order`.
pub const FAN_IN: &str = "x-fanout-fan-in";
/// How many subtasks may fail: `fail-fast`, `tolerate:N`, `tolerate:P%` or `min-successful:N`.
pub const FAILURE_POLICY: &str = "x-fanout-failure-policy";
/// How many subtasks one executor invocation runs (`worker/runBatch`): a whole number from 1
/// (one `runSubtask` per subtask, the default) to [`crate::policy::MAX_BATCH_SIZE`].
pub const BATCH_SIZE: &str = "x-fanout-batch-size";
/// Internal: on a lane's call to `runSubtask`, the subtask's position in the task (from 0),
/// which introspection reads back to show subtasks in input order.
pub const INDEX: &str = "x-fanout-index";
