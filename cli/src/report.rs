//! Tables and summaries of what the Lambda stand-in metered.

use fanout_standin::InvocationRecord;
use std::fmt::Write as _;
use std::time::Duration;

/// Totals over one run's invocations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub coordinator_invocations: usize,
    pub subtask_invocations: usize,
    pub other_invocations: usize,
    pub cold_starts: usize,
    pub bytes_to_coordinator: usize,
    pub bytes_total: usize,
    pub billed_ms: u64,
    pub coordinator_billed_ms: u64,
    pub throttled: usize,
    pub function_errors: usize,
}

pub const COORDINATOR_PATH: &str = "/invoke/worker/run";
pub const SUBTASK_PATH: &str = "/invoke/worker/runSubtask";
/// A batch of subtasks in one executor invocation (`--batch-size`).
pub const BATCH_PATH: &str = "/invoke/worker/runBatch";

/// Whether a metered invocation is an executor's: one subtask or one batch. Either holds one
/// slot of the run's cap.
pub fn is_executor(record: &InvocationRecord) -> bool {
    matches!(record.path.as_deref(), Some(SUBTASK_PATH | BATCH_PATH))
}

pub fn summarize(records: &[InvocationRecord]) -> Summary {
    let mut summary = Summary::default();
    for record in records {
        let bytes = record.request_bytes + record.response_bytes;
        summary.bytes_total += bytes;
        summary.billed_ms += record.billed_ms;
        summary.cold_starts += usize::from(record.cold);
        if record.outcome == "throttled" {
            summary.throttled += 1;
        } else if record.outcome.starts_with("function_error") {
            summary.function_errors += 1;
        }
        match record.path.as_deref() {
            Some(COORDINATOR_PATH) => {
                summary.coordinator_invocations += 1;
                summary.bytes_to_coordinator += record.request_bytes;
                summary.coordinator_billed_ms += record.billed_ms;
            }
            Some(SUBTASK_PATH | BATCH_PATH) => summary.subtask_invocations += 1,
            _ => summary.other_invocations += 1,
        }
    }
    summary
}

/// One line per invocation: handler, cold/warm, ms, bytes.
pub fn invocation_table(records: &[InvocationRecord]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<22} {:>4} {:<5} {:>9} {:>8} {:>7} {:>9} {:>9}  outcome",
        "handler", "inst", "start", "init ms", "ms", "billed", "req B", "resp B"
    );
    for r in records {
        let handler = r
            .path
            .as_deref()
            .map(|p| p.trim_start_matches("/invoke/"))
            .unwrap_or("-");
        let _ = writeln!(
            out,
            "{:<22} {:>4} {:<5} {:>9} {:>8.1} {:>7} {:>9} {:>9}  {}",
            handler,
            r.instance,
            if r.cold { "cold" } else { "warm" },
            r.init_ms.map(|ms| format!("{ms:.1}")).unwrap_or_default(),
            r.duration_ms,
            r.billed_ms,
            r.request_bytes,
            r.response_bytes,
            r.outcome
        );
    }
    out
}

/// The summary block, including the coordinator's billed time against the run's wall time:
/// a suspended coordinator is not billed while it waits.
pub fn summary_text(summary: &Summary, wall: Duration) -> String {
    let wall_ms = wall.as_millis().max(1) as f64;
    format!(
        "coordinator invocations: {}\n\
         subtask invocations:     {}\n\
         fan-in invocations:      {} (lanes and the ledger)\n\
         cold starts:             {}\n\
         bytes shipped:           {} (to the coordinator: {})\n\
         billed ms:               {} (coordinator: {} ms = {:.1}% of the {:.0} ms wall time)\n\
         throttled (429):         {}\n\
         function errors:         {}\n",
        summary.coordinator_invocations,
        summary.subtask_invocations,
        summary.other_invocations,
        summary.cold_starts,
        summary.bytes_total,
        summary.bytes_to_coordinator,
        summary.billed_ms,
        summary.coordinator_billed_ms,
        100.0 * summary.coordinator_billed_ms as f64 / wall_ms,
        wall_ms,
        summary.throttled,
        summary.function_errors,
    )
}
