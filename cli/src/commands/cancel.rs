//! `fanout cancel ID`: stops a fan-out. Restate cancels the coordinator; the coordinator tells
//! its ledger, which cancels the lanes, which cancel their subtasks in flight (see the handler's
//! `fan_in` module). The verb then waits until nothing of the run is left running, and prints
//! the run's status line.

use crate::admin::CancelAnswer;
use crate::commands::args::RestateArgs;
use crate::commands::status::{self, StatusReport};
use crate::exit;
use crate::observe::{self, Coordinator};
use crate::outcome::{Endpoints, OutputFormat, fail, fail_with};
use serde_json::json;
use std::time::{Duration, Instant};

/// Cancel a fan-out: its coordinator, its lanes and its subtasks in flight; nothing more
/// starts. Waits until nothing of it is left running, then prints its status line.
#[derive(clap::Args)]
pub struct Args {
    /// The coordinator's invocation id (inv_…).
    id: String,
    /// Return as soon as Restate has taken the cancel, without waiting for the run to stop.
    #[arg(long)]
    no_wait: bool,
    /// How long to wait for the run to stop, in seconds.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    timeout: u64,
    /// text: the run's status line; json: one object for scripts.
    #[arg(long, value_enum, default_value = "text")]
    output: OutputFormat,
    #[command(flatten)]
    restate: RestateArgs,
}

// The coordinators' targets: `fanout cancel` stops fan-outs, not arbitrary invocations.
use fanout_contract::names::{RUN_ITEMS_TARGET, RUN_TARGET};

struct CancelOptions {
    /// Return once Restate took the cancel, without waiting for the run to stop.
    no_wait: bool,
    /// How long to wait for the run to stop before saying it has not.
    timeout: Duration,
    output: OutputFormat,
}

/// `fanout cancel ID`: 0 once the run is cancelled and stopped; 1 when there was nothing to
/// cancel (it had finished) or it did not stop in time; 4, 5, 6 as for the other verbs.
pub async fn run(args: Args) -> anyhow::Result<u8> {
    let options = CancelOptions {
        no_wait: args.no_wait,
        timeout: Duration::from_secs(args.timeout),
        output: args.output,
    };
    Ok(cancel(&args.restate.endpoints(), &args.id, options).await)
}

async fn cancel(endpoints: &Endpoints, id: &str, options: CancelOptions) -> u8 {
    let output = options.output;
    if let Err(message) = observe::check_invocation_id(id) {
        return fail(output, exit::BAD_INPUT, "rejected", None, &message);
    }
    let observer = endpoints.observer();
    let coordinator = match observer.coordinator(id).await {
        Err(e) => return fail_with(output, Some(id), &e),
        Ok(None) => return unknown(endpoints, id, output),
        Ok(Some(coordinator)) => coordinator,
    };
    if coordinator.target != RUN_TARGET && coordinator.target != RUN_ITEMS_TARGET {
        let message = format!(
            "{id} is a {} invocation, not a fan-out ({RUN_TARGET} or {RUN_ITEMS_TARGET}); fanout \
             cancel stops whole runs: give the coordinator's id (fanout status ID shows it)",
            coordinator.target
        );
        return fail(output, exit::BAD_INPUT, "rejected", Some(id), &message);
    }
    if coordinator.is_finished() {
        return nothing_to_cancel(id, &coordinator, output);
    }
    match endpoints.admin.cancel_invocation(id).await {
        Err(e) => return fail_with(output, Some(id), &e),
        Ok(CancelAnswer::Unknown) => return unknown(endpoints, id, output),
        Ok(CancelAnswer::AlreadyCompleted) => {
            // It finished between the look and the cancel.
            return match observer.coordinator(id).await {
                Ok(Some(coordinator)) => nothing_to_cancel(id, &coordinator, output),
                Ok(None) => unknown(endpoints, id, output),
                Err(e) => fail_with(output, Some(id), &e),
            };
        }
        Ok(CancelAnswer::Accepted) => {}
    }
    if options.no_wait {
        if output == OutputFormat::Json {
            println!("{}", json!({ "invocationId": id, "outcome": "cancelling" }));
        }
        eprintln!("{id}: cancel sent; `fanout status {id}` shows when it has stopped");
        return exit::OK;
    }
    let report = match wait_until_stopped(endpoints, id, options.timeout).await {
        Ok(report) => report,
        Err(e) => return fail_with(output, Some(id), &e),
    };
    let stopped = report.coordinator.is_finished() && still_going(&report) == 0;
    let (code, outcome) = match (stopped, report.coordinator.status.as_str()) {
        (true, "cancelled") => (exit::OK, "cancelled"),
        // The run ended on its own before the cancel reached it.
        (true, _) => (exit::OTHER, "finished"),
        (false, _) => (exit::OTHER, "stopping"),
    };
    match output {
        OutputFormat::Json => {
            let mut value = report.json();
            value["outcome"] = outcome.into();
            println!("{value}");
        }
        OutputFormat::Text => println!(
            "{}",
            observe::summary_line(&report.coordinator, &report.totals)
        ),
    }
    match outcome {
        "finished" => eprintln!(
            "error: {id} finished ({}) before the cancel reached it",
            report.coordinator.status
        ),
        "stopping" => eprintln!(
            "error: {id} had not stopped {} after the cancel ({} subtask(s) still going, \
             coordinator {}); `fanout status {id}` follows it",
            observe::format_duration(options.timeout.as_millis() as u64),
            still_going(&report),
            report.coordinator.status
        ),
        _ => {}
    }
    code
}

/// Subtasks of the report that have not ended.
fn still_going(report: &StatusReport) -> usize {
    report
        .subtasks
        .iter()
        .filter(|s| !matches!(s.status.as_str(), "completed" | "failed" | "cancelled"))
        .count()
}

/// Polls the run until its coordinator and every subtask it called have ended, or `timeout`,
/// then reads its full report once. A poll is the coordinator's row and one grouped count of
/// its subtasks, not the per-subtask detail, which reads every call of the run's journals.
async fn wait_until_stopped(
    endpoints: &Endpoints,
    id: &str,
    timeout: Duration,
) -> anyhow::Result<StatusReport> {
    let observer = endpoints.observer();
    let deadline = Instant::now() + timeout;
    loop {
        let finished = observer
            .coordinator(id)
            .await?
            .is_some_and(|c| c.is_finished());
        let progress = observer.progress(id, None).await?;
        let going = progress.running + progress.retrying + progress.paused + progress.pending;
        if (finished && going == 0) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    status::collect(&observer, id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("Restate forgot {id} while it was being cancelled"))
}

fn nothing_to_cancel(id: &str, coordinator: &Coordinator, output: OutputFormat) -> u8 {
    let how = match coordinator.status.as_str() {
        "cancelled" => "was already cancelled".to_owned(),
        "completed" => "already succeeded".to_owned(),
        other => format!("already ended ({other})"),
    };
    let message = format!("nothing to cancel: {id} {how}; `fanout status {id}` shows how it went");
    fail(output, exit::OTHER, "finished", Some(id), &message)
}

fn unknown(endpoints: &Endpoints, id: &str, output: OutputFormat) -> u8 {
    let message = format!(
        "Restate at {} does not know {id}: check the id and --admin-url (finished runs are kept \
         24 h by default)",
        endpoints.admin.base_url()
    );
    fail(output, exit::UNKNOWN_ID, "unknown", Some(id), &message)
}
