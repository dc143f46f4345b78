//! Watching a fan-out through Restate's admin introspection (`POST /query`): how far it is, and
//! what each subtask did.
//!
//! Everything comes from SQL over Restate's system tables, so it works from any machine, against
//! the local stack or a remote Restate, while the run is in flight or after it finished:
//!
//! | what | where |
//! |---|---|
//! | the coordinator | its `sys_invocation` row |
//! | its subtasks in input order, with their input | the coordinator's `Command: Call` entries in `sys_journal` |
//! | each subtask's state | `sys_invocation` rows whose `invoked_by_id` is the coordinator |
//! | retries in flight | `retry_count` (attempts started) and `last_failure` of those rows |
//! | retries after completion | `TransientError` events in `sys_journal_events` (the live columns are cleared when an invocation completes) |
//!
//! | how many subtasks | the journaled result of the coordinator's `split task` step, read once |
//!
//! A progress poll is one grouped count over the children (plus, until the split is known, one
//! lookup keyed by the coordinator's id), whatever the width; [`PollInterval`] spaces polls by
//! how long they take.
//!
//! | module | what |
//! |---|---|
//! | `model` | the coordinator, its subtasks, progress counts, totals |
//! | `introspection` | the SQL queries and how their rows become the model ([`Observer`]) |
//! | `table` | `fanout status`'s table and summary line |
//! | `live` | the live display while a run is followed ([`watch`]) |

mod introspection;
mod live;
mod model;
mod table;

pub use introspection::{Observer, SPLIT_STEP};
/// For `fanout redrive`, which reads a run's subtasks' journals for their outcomes.
pub(crate) use introspection::{batches_of, journal_bytes, payload_label, subtasks_of};
pub use live::{
    Display, DisplayMode, PollInterval, bar_message, bar_style, plain_line, waiting_style, watch,
};
pub use model::{
    Coordinator, Progress, RunStatus, RunSummary, Subtask, Totals, check_invocation_id, totals,
};
pub use table::{format_duration, subtask_table, summary_line};
