//! `fanout demo`: the reference example end to end on the local stack through `fanout invoke`'s
//! path (live progress, then the per-subtask table), then everything stops.

use crate::commands::args::HandlerArgs;
use crate::commands::attach::{self, Interrupt};
use crate::commands::{invoke, status};
use crate::observe::{Display, DisplayMode};
use crate::outcome::Endpoints;
use crate::report;
use crate::stack::{HandlerMode, LocalStack, RequestIdentity, StackOptions};
use anyhow::{Result, anyhow, bail};
use serde_json::json;
use std::path::PathBuf;

pub const REFERENCE_TASK: &str = "get out of bed,shower,make coffee,have breakfast";

/// Run the reference example end to end on a local stack, print logs and figures, stop.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    handler: HandlerArgs,
    /// The task to fan out.
    #[arg(default_value = REFERENCE_TASK)]
    description: String,
    /// The task as a JSON file instead (e.g. the example.json of a `fanout new` crate, with
    /// --handler its zip).
    #[arg(long, conflicts_with = "description")]
    input: Option<PathBuf>,
}

pub async fn run(args: Args) -> Result<u8> {
    let options = &args.handler;
    let mode_text = match options.mode {
        HandlerMode::Lambda => "as a Lambda function behind the local Lambda stand-in",
        HandlerMode::Http => "as an HTTP endpoint",
    };
    println!(
        "Starting restate-server {} and fanout-handler {mode_text}…",
        crate::tools::RESTATE_SERVER_VERSION
    );
    let mut stack_options = StackOptions::new(options.mode, options.binary()?);
    if options.unsigned {
        stack_options.identity = RequestIdentity::Unsigned;
    }
    if let Some(ms) = options.max_subtask_ms {
        stack_options
            .handler_env
            .push(("FANOUT_MAX_SUBTASK_MS".into(), ms.to_string()));
    }
    let (task, shown) = match &args.input {
        Some(path) => (
            invoke::task_from(None, Some(path))?,
            format!("--input {}", path.display()),
        ),
        None => (
            json!({ "description": args.description }),
            format!("{:?}", args.description),
        ),
    };
    let stack = LocalStack::start(stack_options).await?;
    let result = run_on(&stack, &task, &shown).await;
    stack.stop().await;
    result.map(|()| crate::exit::OK)
}

async fn run_on(stack: &LocalStack, task: &serde_json::Value, shown: &str) -> Result<()> {
    println!("Registered deployment {}", stack.deployment.id);
    if let Some(arn) = &stack.function_arn {
        println!("  Lambda version ARN: {arn}");
    }
    println!(
        "  Restate UI: {} (while the demo runs; `make local` keeps a stack up to look around)",
        super::local::ui_url(&stack.server.admin_url)
    );
    match &stack.identity_keys {
        Some(keys) => println!("  Signed: the handler serves only requests signed for {keys}"),
        None => println!("  UNSIGNED: the handler serves any caller (--unsigned)"),
    }
    println!(
        "\n$ fanout invoke --ingress-url {} --admin-url {} {shown}",
        stack.ingress_url, stack.server.admin_url
    );
    // The same path as `fanout invoke`: send, then follow with live progress.
    let endpoints = Endpoints::new(&stack.ingress_url, &stack.server.admin_url, None);
    let interrupt = Interrupt::listen()?;
    let started = invoke::send(&endpoints.ingress, task, None)
        .await
        .map_err(|e| anyhow!(e.message))?;
    let id = started.invocation_id;
    let mut display = Display::new(DisplayMode::for_stderr());
    let followed = attach::follow(&endpoints, &id, &mut display, interrupt).await?;
    let wall = followed.elapsed;
    let Some(response) = followed.answer else {
        bail!("interrupted; the demo stack stops, and the run with it");
    };

    println!("\nService log:");
    for line in stack.handler_log().lines().filter(|l| is_service_line(l)) {
        println!("  {}", reference_format(line));
    }
    if !(200..300).contains(&response.status) {
        bail!(
            "the fan-out failed with HTTP {}: {}",
            response.status,
            response.message()
        );
    }
    println!("\nResult ({} ms):\n{}", wall.as_millis(), response.body);

    println!("\n$ fanout status {id}");
    match status::collect(&endpoints.observer(), &id).await? {
        Some(report) => print!("{}", report.text()),
        None => println!("(Restate does not report {id})"),
    }

    if let Some(standin) = &stack.standin {
        let records: Vec<_> = standin
            .records()
            .into_iter()
            .filter(|r| r.path.as_deref() != Some("/discover"))
            .collect();
        println!("\nLambda invocations:");
        print!("{}", report::invocation_table(&records));
        println!();
        print!(
            "{}",
            report::summary_text(&report::summarize(&records), wall)
        );
    }
    Ok(())
}

/// A Lambda JSON log line shown as the reference's `[service/handler][invocation][time] LEVEL:`
/// line; lines already in that form are shown as they are.
fn reference_format(line: &str) -> String {
    let Ok(fields) = serde_json::from_str::<serde_json::Value>(line) else {
        return line.to_owned();
    };
    let field = |name: &str| fields.get(name).and_then(|v| v.as_str()).unwrap_or("-");
    format!(
        "[{}][{}][{}] {}: {}",
        field("handler"),
        field("invocationId"),
        field("timestamp"),
        field("level"),
        field("message")
    )
}

/// The reference log lines, in either log format.
fn is_service_line(line: &str) -> bool {
    [
        "Started executing subtask",
        "Execution subtask finished",
        "Aggregated result",
    ]
    .iter()
    .any(|needle| line.contains(needle))
}
