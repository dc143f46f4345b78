//! `fanout status`'s text: one line per subtask and a summary line.

use super::model::{Coordinator, Subtask, Totals, clean_error};
use std::fmt::Write as _;

/// `1.52 s`, `830 ms`.
pub fn format_duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.2} s", ms as f64 / 1000.0)
    }
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// One line per subtask: index, description, invocation id, status, attempts, duration, last
/// error (long descriptions and errors cut; `--output json` has them whole).
pub fn subtask_table(subtasks: &[Subtask]) -> String {
    let description_width = subtasks
        .iter()
        .map(|s| s.description.chars().count())
        .max()
        .unwrap_or(0)
        .clamp("description".len(), 32);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>5}  {:<dw$}  {:<38}  {:<11}  {:>8}  {:>9}  last error",
        "#",
        "description",
        "invocation",
        "status",
        "attempts",
        "duration",
        dw = description_width
    );
    for s in subtasks {
        let line = format!(
            "{:>5}  {:<dw$}  {:<38}  {:<11}  {:>8}  {:>9}  {}",
            s.index,
            truncate(&s.description, description_width),
            s.invocation_id,
            s.status,
            s.attempts,
            s.duration_ms.map(format_duration).unwrap_or_default(),
            s.last_error
                .as_deref()
                .map(|e| truncate(e, 100))
                .unwrap_or_default(),
            dw = description_width
        );
        // Columns are padded for the next one; a row without a last error has none, and
        // trailing blanks only get in the way of `grep` and diffs.
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// `4 subtasks: 3 completed, 1 running · 1 retried (2 failed attempts) · worker/run completed in 3.41 s`
pub fn summary_line(coordinator: &Coordinator, totals: &Totals) -> String {
    let mut states: Vec<String> = totals
        .by_status
        .iter()
        .map(|(status, n)| format!("{n} {status}"))
        .collect();
    if totals.not_called > 0 {
        let n = totals.not_called;
        states.push(if coordinator.is_finished() {
            format!("{n} never started")
        } else {
            format!("{n} not called yet")
        });
    }
    let states = if states.is_empty() {
        "none called yet".to_owned()
    } else {
        states.join(", ")
    };
    let plural = if totals.subtasks == 1 { "" } else { "s" };
    let mut line = format!("{} subtask{plural}: {states}", totals.subtasks);
    if totals.retried > 0 {
        let _ = write!(
            line,
            " · {} retried ({} failed attempt{})",
            totals.retried,
            totals.failed_attempts,
            if totals.failed_attempts == 1 { "" } else { "s" }
        );
    }
    let timing = match (coordinator.is_finished(), coordinator.duration_ms) {
        (true, Some(ms)) => format!(" in {}", format_duration(ms)),
        (false, Some(ms)) => format!(" for {}", format_duration(ms)),
        (_, None) => String::new(),
    };
    let _ = write!(
        line,
        " · {} {}{timing}",
        coordinator.target, coordinator.status
    );
    if let Some(failure) = &coordinator.failure {
        let _ = write!(line, ": {}", clean_error(failure));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::model::totals;

    #[test]
    fn the_subtask_table_has_no_trailing_blanks() {
        let row = |index, last_error: Option<&str>| Subtask {
            index,
            description: "shower".into(),
            invocation_id: "inv_1d7ECWP1bH4t5dNhlnBYDTAV59WL5YJsYh".into(),
            status: "completed".into(),
            attempts: 1,
            duration_ms: Some(120),
            last_error: last_error.map(str::to_owned),
        };
        let table = subtask_table(&[row(1, None), row(2, Some("boom"))]);
        assert_eq!(table.lines().count(), 3);
        for line in table.lines() {
            assert_eq!(line, line.trim_end(), "{line:?}");
        }
        assert!(table.lines().nth(2).unwrap().ends_with("  boom"), "{table}");
    }

    #[test]
    fn summary_line_names_states_retries_and_the_run() {
        let coordinator = Coordinator {
            invocation_id: "inv_x".into(),
            target: "worker/run".into(),
            status: "completed".into(),
            failure: None,
            duration_ms: Some(3410),
        };
        let subtasks = [Subtask {
            index: 1,
            description: "flaky".into(),
            invocation_id: "inv_a".into(),
            status: "completed".into(),
            attempts: 3,
            duration_ms: Some(1500),
            last_error: Some("boom".into()),
        }];
        assert_eq!(
            summary_line(&coordinator, &totals(&subtasks)),
            "1 subtask: 1 completed · 1 retried (2 failed attempts) · worker/run completed in 3.41 s"
        );
        // A run that failed before calling everything: what it never called is counted.
        let failed = Coordinator {
            status: "failed".into(),
            ..coordinator.clone()
        };
        assert_eq!(
            summary_line(&failed, &totals(&subtasks).with_split_total(Some(4))),
            "4 subtasks: 1 completed, 3 never started · 1 retried (2 failed attempts) · \
             worker/run failed in 3.41 s"
        );
        let running = Coordinator {
            status: "suspended".into(),
            ..coordinator
        };
        assert!(
            summary_line(&running, &totals(&subtasks).with_split_total(Some(4)))
                .contains("3 not called yet")
        );
    }
}
