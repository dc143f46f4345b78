//! `fanout demo`: the reference example end to end on the local stack, then everything stops.

use crate::ingress::IngressClient;
use crate::report;
use crate::stack::{HandlerMode, LocalStack, StackOptions};
use anyhow::{Result, bail};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

pub const REFERENCE_TASK: &str = "get out of bed,shower,make coffee,have breakfast";

pub struct DemoOptions {
    pub mode: HandlerMode,
    pub description: String,
    pub handler_binary: PathBuf,
    pub max_subtask_ms: Option<u64>,
}

pub async fn run(options: DemoOptions) -> Result<()> {
    let mode_text = match options.mode {
        HandlerMode::Lambda => "as a Lambda function behind the local Lambda stand-in",
        HandlerMode::Http => "as an HTTP endpoint",
    };
    println!(
        "Starting restate-server {} and fanout-handler {mode_text}…",
        crate::tools::RESTATE_SERVER_VERSION
    );
    let mut stack_options = StackOptions::new(options.mode, options.handler_binary);
    if let Some(ms) = options.max_subtask_ms {
        stack_options
            .handler_env
            .push(("FANOUT_MAX_SUBTASK_MS".into(), ms.to_string()));
    }
    let stack = LocalStack::start(stack_options).await?;
    let result = run_on(&stack, &options.description).await;
    stack.stop().await;
    result
}

async fn run_on(stack: &LocalStack, description: &str) -> Result<()> {
    println!("Registered deployment {}", stack.deployment.id);
    if let Some(arn) = &stack.function_arn {
        println!("  Lambda version ARN: {arn}");
    }
    let task = json!({ "description": description });
    println!(
        "\n$ curl {}/worker/run --json '{}'",
        stack.ingress_url, task
    );
    let ingress = IngressClient::new(&stack.ingress_url, None);
    let started = Instant::now();
    let response = ingress.run(&task, None).await?;
    let wall = started.elapsed();

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
