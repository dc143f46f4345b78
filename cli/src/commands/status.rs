//! `fanout status ID`: one line per subtask of a fan-out (index, description, invocation id,
//! status, attempts, duration, last error) and a summary, from Restate's introspection. Works
//! while the run is going and after it finished.

use crate::commands::args::RestateArgs;
use crate::exit;
use crate::observe::{self, Coordinator, Observer, Subtask, Totals};
use crate::outcome::{OutputFormat, fail, fail_with};
use serde_json::json;

/// Show every subtask of a fan-out: status, attempts, duration, last error.
#[derive(clap::Args)]
pub struct Args {
    /// The coordinator's invocation id (inv_…).
    id: String,
    /// text: a table and a summary line; json: one object for scripts.
    #[arg(long, value_enum, default_value = "text")]
    output: OutputFormat,
    #[command(flatten)]
    restate: RestateArgs,
}

/// What `fanout status` found.
pub struct StatusReport {
    pub coordinator: Coordinator,
    pub subtasks: Vec<Subtask>,
    pub totals: Totals,
}

impl StatusReport {
    pub fn text(&self) -> String {
        let mut out = String::new();
        if self.subtasks.is_empty() {
            out.push_str("no subtasks called (yet)\n");
        } else {
            out.push_str(&observe::subtask_table(&self.subtasks));
        }
        out.push('\n');
        out.push_str(&observe::summary_line(&self.coordinator, &self.totals));
        out.push('\n');
        out
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "invocationId": self.coordinator.invocation_id,
            "coordinator": self.coordinator,
            "summary": self.totals,
            "subtasks": self.subtasks,
        })
    }
}

/// Looks up coordinator `id` and its subtasks; `Ok(None)` when Restate does not know `id`.
pub async fn collect(observer: &Observer, id: &str) -> anyhow::Result<Option<StatusReport>> {
    let Some(coordinator) = observer.coordinator(id).await? else {
        return Ok(None);
    };
    let subtasks = observer.subtasks(id).await?;
    let totals = observe::totals(&subtasks).with_split_total(observer.split_total(id).await?);
    Ok(Some(StatusReport {
        coordinator,
        subtasks,
        totals,
    }))
}

/// `fanout status ID`: exit 0 while the run goes on or after it succeeded, 3 when it failed.
pub async fn run(args: Args) -> anyhow::Result<u8> {
    let observer = args.restate.endpoints().observer();
    Ok(status(&observer, &args.restate.admin_url, &args.id, args.output).await)
}

async fn status(observer: &Observer, admin_url: &str, id: &str, output: OutputFormat) -> u8 {
    if let Err(message) = observe::check_invocation_id(id) {
        return fail(output, exit::BAD_INPUT, "rejected", None, &message);
    }
    let report = match collect(observer, id).await {
        Ok(Some(report)) => report,
        Ok(None) => {
            let message = format!(
                "Restate at {admin_url} does not know {id}: check the id and --admin-url \
                 (finished runs are kept 24 h by default)"
            );
            return fail(output, exit::UNKNOWN_ID, "unknown", Some(id), &message);
        }
        Err(e) => return fail_with(output, Some(id), &e),
    };
    match output {
        OutputFormat::Text => print!("{}", report.text()),
        OutputFormat::Json => println!("{}", report.json()),
    }
    if matches!(report.coordinator.status.as_str(), "failed" | "cancelled") {
        exit::RUN_FAILED
    } else {
        exit::OK
    }
}
