//! `fanout runs`: the most recent fan-outs on a Restate, from its introspection: each one's
//! id, when it started and finished, its width, its status and how many subtasks are done and
//! failed. `fanout status ID` then shows one of them subtask by subtask.

use crate::commands::args::RestateArgs;
use crate::exit;
use crate::observe::{RunStatus, RunSummary};
use crate::outcome::{OutputFormat, fail_with};
use serde_json::json;
use std::fmt::Write as _;

/// List the most recent fan-outs: id, started, finished, width, status, done and failed.
#[derive(clap::Args)]
pub struct Args {
    /// Only runs in this state.
    #[arg(long, value_enum, default_value = "all")]
    status: RunStatus,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// text: a table; json: one object for scripts.
    #[arg(long, value_enum, default_value = "text")]
    output: OutputFormat,
    #[command(flatten)]
    restate: RestateArgs,
}

/// `fanout runs`: 0 with the list (empty or not), 5 when Restate is unreachable, 1 otherwise.
pub async fn run(args: Args) -> anyhow::Result<u8> {
    let endpoints = args.restate.endpoints();
    let runs = match endpoints.observer().runs(args.status, args.limit).await {
        Ok(runs) => runs,
        Err(e) => return Ok(fail_with(args.output, None, &e)),
    };
    match args.output {
        OutputFormat::Json => println!("{}", json!({ "runs": runs })),
        OutputFormat::Text if runs.is_empty() => eprintln!(
            "no runs{} on Restate at {}",
            match args.status {
                RunStatus::All => "",
                _ => " with that status",
            },
            endpoints.admin.base_url()
        ),
        OutputFormat::Text => print!("{}", table(&runs)),
    }
    Ok(exit::OK)
}

/// One line per run, newest first.
pub fn table(runs: &[RunSummary]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<38}  {:<19}  {:<19}  {:>6}  {:<11}  {:>6}  {:>6}",
        "invocation", "started (UTC)", "finished (UTC)", "width", "status", "done", "failed"
    );
    for run in runs {
        let line = format!(
            "{:<38}  {:<19}  {:<19}  {:>6}  {:<11}  {:>6}  {:>6}",
            run.invocation_id,
            to_seconds(run.started.as_deref()),
            to_seconds(run.finished.as_deref()),
            run.width
                .map(|w| w.to_string())
                .unwrap_or_else(|| "-".into()),
            run.status,
            run.done,
            run.failed
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// `2026-12-01T04:20:11.123Z` as `2026-12-01 04:20:11`; `-` when absent.
fn to_seconds(timestamp: Option<&str>) -> String {
    match timestamp {
        None => "-".into(),
        Some(t) => t.get(..19).unwrap_or(t).replacen('T', " ", 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_each_run_on_a_line_with_times_to_the_second() {
        let run = RunSummary {
            invocation_id: "inv_1hYdsryrDgo27rCy0RQKuZ54n0hc58Dy91".into(),
            target: "worker/run".into(),
            started: Some("2026-12-01T04:20:11.123Z".into()),
            finished: None,
            width: Some(124),
            status: "suspended".into(),
            done: 99,
            failed: 4,
        };
        let table = table(&[run]);
        let line = table.lines().nth(1).unwrap();
        assert!(line.starts_with("inv_1hYdsryrDgo27rCy0RQKuZ54n0hc58Dy91  2026-12-01 04:20:11  -"));
        assert!(
            line.ends_with("124  suspended        99       4"),
            "{line:?}"
        );
    }
}
