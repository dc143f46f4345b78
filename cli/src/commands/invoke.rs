//! `fanout invoke`: start a fan-out through the ingress, show its progress, print its result.
//!
//! The run is always started asynchronously (`POST /worker/run/send`) and then attached to, so
//! it has an invocation id from the first moment: progress can be polled by id, and a client
//! that is interrupted or killed leaves a run that `fanout attach ID` can pick up.
//!
//! Every send carries an idempotency key (the user's, or one made up for this invoke), so a send
//! that broke because the server died under it can be repeated without starting a second run;
//! the wait re-attaches by id. Together `fanout invoke` rides out a restart of Restate and still
//! prints the run's exact result with its usual exit code.

use crate::commands::args::{RestateArgs, RunPolicyArgs, WatchArgs};
use crate::commands::attach::{self, Interrupt};
use crate::exit;
use crate::ingress::{IngressClient, IngressResponse, RECONNECT_WINDOW, Reconnect};
use crate::observe::{Display, DisplayMode};
use crate::outcome::{Endpoints, OutputFormat, fail, fail_with, report};
use anyhow::Result;
use fanout_contract::headers;
use fanout_contract::names::{RUN_ITEMS_TARGET, RUN_TARGET};
use fanout_contract::policy::FanInStrategy;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// Start a fan-out through Restate's ingress, show its progress, print its result.
#[derive(clap::Args)]
pub struct Args {
    /// The task as a description: comma-separated subtasks.
    description: Option<String>,
    /// The task as a JSON file (e.g. {"description": "a,b"}).
    #[arg(long, conflicts_with = "description")]
    input: Option<PathBuf>,
    /// Items, one JSON subtask per line (JSON Lines; for the reference job
    /// {"description":"shower"}): a local file (checked, then staged in S3) or s3://BUCKET/KEY.
    /// Runs worker/runItems: no width cap, nothing of the items or outcomes in the
    /// coordinator's journal.
    #[arg(long, value_name = "FILE|s3://BUCKET/KEY", value_parser = crate::items::Place::parse,
          conflicts_with_all = ["description", "input"], requires = "results")]
    items: Option<crate::items::Place>,
    /// Where the results of --items go, one JSON line per item in input order (a failed
    /// item under a tolerant policy as {"error":{…}} in its place): a local file (fetched
    /// when the run is done) or s3://BUCKET/KEY.
    #[arg(long, value_name = "FILE|s3://BUCKET/KEY", value_parser = crate::items::Place::parse,
          requires = "items")]
    results: Option<crate::items::Place>,
    /// Repeating an invoke with the same key returns the same run instead of starting another.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Start the run, print its invocation id and return; `fanout attach ID` waits for it.
    #[arg(long)]
    send: bool,
    /// How the coordinator waits: ledger (lanes keep the cap full, the coordinator wakes at
    /// most 3 times), select-any (the coordinator keeps the cap full itself) or in-order
    /// (default: the handler's, ledger).
    #[arg(long, value_name = "ledger|select-any|in-order", value_parser = FanInStrategy::parse)]
    fan_in: Option<FanInStrategy>,
    #[command(flatten)]
    policy: RunPolicyArgs,
    #[command(flatten)]
    watch: WatchArgs,
    #[command(flatten)]
    restate: RestateArgs,
}

impl Args {
    /// The run's `x-fanout-*` headers: what it asks of the handler beyond its defaults.
    fn run_headers(&self) -> Vec<(&'static str, String)> {
        let mut run = self.policy.headers();
        if let Some(strategy) = self.fan_in {
            run.push((headers::FAN_IN, strategy.as_str().to_owned()));
        }
        run
    }
}

/// The JSON task: from `--input FILE`, or a description string.
pub fn task_from(description: Option<&str>, input: Option<&Path>) -> Result<Value> {
    match (description, input) {
        (_, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                exit::rejected(format!("cannot read the task file {}: {e}", path.display()))
            })?;
            serde_json::from_str(&text)
                .map_err(|e| exit::rejected(format!("{} is not valid JSON: {e}", path.display())))
        }
        (Some(description), None) => Ok(json!({ "description": description })),
        (None, None) => Err(exit::rejected(
            "give the task as a description (fanout invoke \"a,b,c\") or as a JSON file (--input FILE)",
        )),
    }
}

struct InvokeOptions {
    task: Value,
    /// `worker/run`, or `worker/runItems` for a run of items.
    target: &'static str,
    idempotency_key: Option<String>,
    /// Start the run and print its invocation id, without waiting.
    send_only: bool,
    output: OutputFormat,
    display: DisplayMode,
}

/// A run Restate accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub invocation_id: String,
    /// The idempotency key was used before: this is that earlier run, not a new one.
    pub previously_accepted: bool,
}

/// Why a run could not be started, with its exit code.
#[derive(Debug)]
pub struct NotStarted {
    pub code: u8,
    pub message: String,
}

/// `POST /worker/run/send`: Restate journals the run and answers with its id at once.
///
/// Without `idempotency_key` the send gets one of its own (`fanout-invoke-UUID`), so that a send
/// cut off by a server crash can be repeated safely: Restate answers the repeat with the run the
/// first attempt started, if it got that far. See
/// [`IngressClient::post_idempotent`](crate::ingress::IngressClient::post_idempotent).
pub async fn send(
    ingress: &IngressClient,
    task: &Value,
    idempotency_key: Option<&str>,
) -> Result<Started, NotStarted> {
    send_to(ingress, RUN_TARGET, task, idempotency_key).await
}

/// [`send`] to another coordinator handler (`worker/runItems`).
pub async fn send_to(
    ingress: &IngressClient,
    target: &str,
    task: &Value,
    idempotency_key: Option<&str>,
) -> Result<Started, NotStarted> {
    let body = serde_json::to_vec(task).map_err(|e| NotStarted {
        code: exit::BAD_INPUT,
        message: format!("the task cannot be encoded as JSON: {e}"),
    })?;
    let own_key;
    let key = match idempotency_key {
        Some(key) => key,
        None => {
            own_key = format!("fanout-invoke-{}", uuid::Uuid::new_v4().simple());
            own_key.as_str()
        }
    };
    let (response, repeated) = ingress
        .post_idempotent(
            &format!("/{target}/send"),
            "application/json",
            body,
            key,
            RECONNECT_WINDOW,
            |event| match event {
                Reconnect::Lost(why) => eprintln!(
                    "lost Restate while starting the run ({why}); sending it again with the same \
                     idempotency key for up to {} min",
                    RECONNECT_WINDOW.as_secs() / 60
                ),
                Reconnect::Back => eprintln!("Restate is back"),
            },
        )
        .await
        .map_err(|e| NotStarted {
            code: exit::UNREACHABLE,
            message: format!("{e:#}"),
        })?;
    let mut started = started_from(ingress.base_url(), &response)?;
    // Our own repeat of a send that may have got through is not an earlier run.
    if repeated || idempotency_key.is_none() {
        started.previously_accepted = false;
    }
    Ok(started)
}

/// Reads the ingress's answer to a send.
pub fn started_from(ingress_url: &str, response: &IngressResponse) -> Result<Started, NotStarted> {
    let rejected = |message: String| NotStarted {
        code: exit::BAD_INPUT,
        message,
    };
    match response.status {
        200..=299 => {
            let invocation_id = response
                .body
                .get("invocationId")
                .and_then(Value::as_str)
                .ok_or_else(|| NotStarted {
                    code: exit::OTHER,
                    message: format!(
                        "Restate's ingress accepted the run but sent no invocation id: {}",
                        response.body
                    ),
                })?;
            Ok(Started {
                invocation_id: invocation_id.to_owned(),
                previously_accepted: response.body.get("status").and_then(Value::as_str)
                    == Some("PreviouslyAccepted"),
            })
        }
        401 | 403 => Err(rejected(format!(
            "Restate's ingress at {ingress_url} refused the request (HTTP {}): pass a valid token \
             with --token or RESTATE_AUTH_TOKEN",
            response.status
        ))),
        404 => Err(rejected(format!(
            "Restate's ingress at {ingress_url} has no worker/run (HTTP 404: {}); register the \
             handler first (fanout register)",
            response.message()
        ))),
        400..=499 => Err(rejected(format!(
            "Restate's ingress rejected the task (HTTP {}): {}",
            response.status,
            response.message()
        ))),
        _ => Err(NotStarted {
            code: exit::UNREACHABLE,
            message: format!(
                "Restate's ingress at {ingress_url} could not take the run (HTTP {}): {}; try \
                 again when the server is healthy",
                response.status,
                response.message()
            ),
        }),
    }
}

/// `fanout invoke`.
pub async fn run(args: Args) -> Result<u8> {
    let output = args.watch.output;
    if let (Some(items), Some(results)) = (&args.items, &args.results) {
        return Ok(invoke_items(&args, items, results).await);
    }
    let task = match task_from(args.description.as_deref(), args.input.as_deref()) {
        Ok(task) => task,
        Err(e) => {
            let message = format!("{e:#}");
            return Ok(fail(output, exit::BAD_INPUT, "rejected", None, &message));
        }
    };
    let mut endpoints = args.restate.endpoints();
    for (name, value) in args.run_headers() {
        endpoints.ingress = endpoints.ingress.with_header(name, value);
    }
    let options = InvokeOptions {
        task,
        target: RUN_TARGET,
        idempotency_key: args.idempotency_key,
        send_only: args.send,
        output,
        display: args.watch.display(),
    };
    Ok(invoke(&endpoints, options).await)
}

/// `fanout invoke --items … --results …`: a local items file is checked and staged first, a
/// local results file fetched once the run has written its results.
async fn invoke_items(
    args: &Args,
    items: &crate::items::Place,
    results: &crate::items::Place,
) -> u8 {
    let output = args.watch.output;
    if let (true, crate::items::Place::File(path)) = (args.send, results) {
        let message = format!(
            "--send returns before the run ends, so nothing would fetch the results into {}; \
             give --results s3://BUCKET/KEY, or wait for the run without --send",
            path.display()
        );
        return fail(output, exit::BAD_INPUT, "rejected", None, &message);
    }
    let prepared = match crate::items::prepare(items, results, &args.restate.ingress_url).await {
        Ok(prepared) => prepared,
        Err(e) => return fail_with(output, None, &e),
    };
    if let (Some(count), crate::items::Place::File(path)) = (prepared.count, items) {
        eprintln!(
            "{count} items in {} checked and staged at {}",
            path.display(),
            prepared.task["items"].as_str().unwrap_or_default()
        );
    }
    let mut endpoints = args.restate.endpoints();
    for (name, value) in args.run_headers() {
        endpoints.ingress = endpoints.ingress.with_header(name, value);
    }
    let options = InvokeOptions {
        task: prepared.task.clone(),
        target: RUN_ITEMS_TARGET,
        idempotency_key: args.idempotency_key.clone(),
        send_only: args.send,
        output,
        display: args.watch.display(),
    };
    let code = invoke(&endpoints, options).await;
    if args.send {
        // The run reads its staged items later: they stay, and `fanout attach` prints the
        // summary with the results' S3 location.
        return code;
    }
    match code {
        exit::OK => match prepared.finish().await {
            Ok(Some((file, bytes))) => eprintln!("results: {} ({bytes} bytes)", file.display()),
            Ok(None) => {}
            Err(e) => return fail_with(output, None, &e),
        },
        // The run goes on without this client: it still reads the staged items.
        exit::INTERRUPTED | exit::UNREACHABLE => {}
        _ => prepared.clean_up().await,
    }
    code
}

async fn invoke(endpoints: &Endpoints, options: InvokeOptions) -> u8 {
    let output = options.output;
    // Before the run exists, so no Ctrl-C can leave a run without telling its id.
    let interrupt = match Interrupt::listen() {
        Ok(interrupt) => interrupt,
        Err(e) => return fail_with(output, None, &e),
    };
    let started = match send_to(
        &endpoints.ingress,
        options.target,
        &options.task,
        options.idempotency_key.as_deref(),
    )
    .await
    {
        Ok(started) => started,
        Err(not_started) => {
            let outcome = if not_started.code == exit::UNREACHABLE {
                "unreachable"
            } else {
                "rejected"
            };
            return fail(
                output,
                not_started.code,
                outcome,
                None,
                &not_started.message,
            );
        }
    };
    let id = started.invocation_id.as_str();
    let same_run = if started.previously_accepted {
        " (this idempotency key was used before: it is that run)"
    } else {
        ""
    };
    if options.send_only {
        match output {
            OutputFormat::Json => println!(
                "{}",
                json!({ "invocationId": id, "previouslyAccepted": started.previously_accepted })
            ),
            OutputFormat::Text => println!("{id}"),
        }
        eprintln!("started {id}{same_run}; wait for it with `fanout attach {id}`");
        return exit::OK;
    }
    if options.display != DisplayMode::Quiet {
        eprintln!("started {id}{same_run}; Ctrl-C stops waiting, not the run");
    }
    let mut display = Display::new(options.display);
    match attach::follow(endpoints, id, &mut display, interrupt).await {
        Ok(followed) => report(&followed, output, started.previously_accepted),
        Err(e) => {
            display.abandon();
            fail_with(output, Some(id), &e)
        }
    }
}
