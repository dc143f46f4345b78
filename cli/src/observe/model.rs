//! What a fan-out looks like to an observer: its coordinator, its subtasks, counts by state.

use serde::Serialize;

/// `inv_` followed by base62: checked before an id reaches a URL or a query, so a typo gets a
/// clear answer instead of an empty result.
pub fn check_invocation_id(id: &str) -> Result<(), String> {
    let valid = id
        .strip_prefix("inv_")
        .is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric()));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not an invocation id; they look like inv_1d7ECWP1bH4t5dNhlnBYDTAV59WL5YJsYh \
             (printed by `fanout invoke --send`, or in the Restate UI)"
        ))
    }
}

/// The coordinator invocation as Restate reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Coordinator {
    pub invocation_id: String,
    /// `service/handler`, `worker/run` for a fan-out.
    pub target: String,
    /// Restate's status, with a completed failure shown as `failed`.
    pub status: String,
    /// The terminal failure, when `status` is `failed`.
    pub failure: Option<String>,
    pub duration_ms: Option<u64>,
}

impl Coordinator {
    pub fn is_finished(&self) -> bool {
        matches!(self.status.as_str(), "completed" | "failed" | "cancelled")
    }
}

/// Which runs `fanout runs` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RunStatus {
    All,
    /// Not finished: running, suspended, backing off or waiting to start.
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

/// One fan-out as `fanout runs` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    pub invocation_id: String,
    /// `worker/run` (an inline task) or `worker/runItems` (items from a source).
    pub target: String,
    /// When Restate took the run (RFC 3339, UTC).
    pub started: Option<String>,
    /// When it finished; `None` while it goes on.
    pub finished: Option<String>,
    /// Subtasks it split into; `None` before its split step (or when it refused the task).
    pub width: Option<usize>,
    /// As `fanout status` names it: running, suspended, completed, failed, cancelled…
    pub status: String,
    pub done: usize,
    pub failed: usize,
}

/// Counts of a fan-out's subtasks by state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Subtasks the coordinator has called; `None` until its split step is done.
    pub total: Option<usize>,
    pub completed: usize,
    pub failed: usize,
    /// Running or suspended (waiting durably, e.g. on a sleep), with no failure so far.
    pub running: usize,
    /// Backing off after a failed attempt, or running again after one.
    pub retrying: usize,
    /// Out of retries: Restate paused them until someone resumes or cancels them.
    pub paused: usize,
    /// Called but not started yet.
    pub pending: usize,
    /// The counts are of batches (`--batch-size` above 1), so a total of subtasks does not
    /// apply to them.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub batches: bool,
}

impl Progress {
    pub fn finished(&self) -> usize {
        self.completed + self.failed
    }

    fn seen(&self) -> usize {
        self.completed + self.failed + self.running + self.retrying + self.paused + self.pending
    }

    /// Sets the total; subtasks split off but without an invocation yet count as pending.
    pub fn with_total(mut self, total: Option<usize>) -> Self {
        if self.total.is_none()
            && !self.batches
            && let Some(total) = total
        {
            self.pending += total.saturating_sub(self.seen());
            self.total = Some(total.max(self.seen()));
        }
        self
    }
}

/// One subtask of a fan-out, as `fanout status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subtask {
    /// 1-based position in the task, the order of the aggregated result.
    pub index: usize,
    pub description: String,
    pub invocation_id: String,
    /// pending, running, backing-off, suspended, paused, completed or failed.
    pub status: String,
    /// Attempts started. Restate records one error event per distinct failure, so a subtask that
    /// failed repeatedly with the very same message counts once per distinct message after it
    /// completes.
    pub attempts: u64,
    pub duration_ms: Option<u64>,
    pub last_error: Option<String>,
}

/// Totals over a list of subtasks, for the summary line and `--output json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub subtasks: usize,
    pub by_status: std::collections::BTreeMap<String, usize>,
    /// Subtasks of the split that no one has called: not yet, or never (a failed run stops
    /// calling; see [`Totals::with_split_total`]).
    pub not_called: usize,
    /// Subtasks that needed more than one attempt.
    pub retried: usize,
    pub failed_attempts: u64,
}

pub fn totals(subtasks: &[Subtask]) -> Totals {
    let mut totals = Totals {
        subtasks: subtasks.len(),
        ..Totals::default()
    };
    for s in subtasks {
        *totals.by_status.entry(s.status.clone()).or_default() += 1;
        let failed = s.attempts.saturating_sub(current_attempt(&s.status));
        totals.retried += usize::from(failed > 0);
        totals.failed_attempts += failed;
    }
    totals
}

impl Totals {
    /// Counts the subtasks of a split of `total` that were never called.
    pub fn with_split_total(mut self, total: Option<usize>) -> Self {
        if let Some(total) = total {
            self.not_called = total.saturating_sub(self.subtasks);
            self.subtasks = self.subtasks.max(total);
        }
        self
    }
}

/// 1 when the subtask's latest attempt did not end in a transient failure: it is under way, or
/// it ended the subtask.
pub(super) fn current_attempt(status: &str) -> u64 {
    u64::from(matches!(
        status,
        "running" | "suspended" | "completed" | "failed" | "cancelled"
    ))
}

/// The first line of a Restate failure without its `[500 Internal] ` prefix.
pub(super) fn clean_error(message: &str) -> String {
    let line = message.lines().next().unwrap_or_default().trim();
    let line = match line
        .strip_prefix('[')
        .and_then(|rest| rest.split_once("] "))
    {
        Some((_, rest)) => rest,
        None => line,
    };
    line.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invocation_ids_are_checked() {
        assert!(check_invocation_id("inv_1d7ECWP1bH4t5dNhlnBYDTAV59WL5YJsYh").is_ok());
        for bad in ["", "inv_", "garbage", "inv_1'; DROP", "dp_123"] {
            let err = check_invocation_id(bad).unwrap_err();
            assert!(err.contains("is not an invocation id"), "{err}");
        }
    }

    #[test]
    fn errors_lose_their_code_prefix_and_repeats() {
        assert_eq!(
            clean_error("[500 Internal] flaky failed\nflaky failed"),
            "flaky failed"
        );
        assert_eq!(clean_error("plain"), "plain");
    }
}
