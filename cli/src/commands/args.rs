//! Argument groups several verbs share: where Restate is, which handler runs locally, how a
//! followed run is shown.

use crate::commands::build;
use crate::observe::DisplayMode;
use crate::outcome::{Endpoints, OutputFormat};
use crate::stack::HandlerMode;
use clap::{Args, ValueEnum};
use fanout_contract::headers;
use fanout_contract::policy::{self, FailurePolicy};
use std::path::PathBuf;

/// Restate's ingress and admin API, as `fanout local` and a Restate install serve them.
#[derive(Args)]
pub struct RestateArgs {
    /// Restate's admin API.
    #[arg(
        long,
        env = "RESTATE_ADMIN_URL",
        default_value = "http://localhost:9070"
    )]
    pub admin_url: String,
    /// Restate's ingress.
    #[arg(
        long,
        env = "RESTATE_INGRESS_URL",
        default_value = "http://localhost:8080"
    )]
    pub ingress_url: String,
    /// Bearer token (Restate Cloud).
    #[arg(long, env = "RESTATE_AUTH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl RestateArgs {
    pub fn endpoints(&self) -> Endpoints {
        Endpoints::new(&self.ingress_url, &self.admin_url, self.token.clone())
    }

    pub fn admin(&self) -> crate::admin::AdminClient {
        crate::admin::AdminClient::new(&self.admin_url, self.token.clone())
    }
}

/// The handler a local stack runs (`fanout demo`, `fanout local`).
#[derive(Args)]
pub struct HandlerArgs {
    /// How the handler runs.
    #[arg(long, value_enum, default_value = "lambda")]
    pub mode: HandlerMode,
    /// The handler: a binary, or a Lambda zip from `fanout build` whose bootstrap is run
    /// (default: target/debug/fanout-handler of this workspace).
    #[arg(long, env = "FANOUT_HANDLER_BIN")]
    pub handler: Option<PathBuf>,
    /// Longest simulated subtask in ms (the handler's FANOUT_MAX_SUBTASK_MS; default 5000).
    #[arg(long)]
    pub max_subtask_ms: Option<u64>,
    /// Without request identity: restate-server does not sign its requests and the handler
    /// serves any caller. For debugging; by default a fresh key pair signs everything.
    #[arg(long)]
    pub unsigned: bool,
}

impl HandlerArgs {
    /// The binary to run: the given one (a zip's bootstrap is unpacked), or this workspace's.
    pub fn binary(&self) -> anyhow::Result<PathBuf> {
        match &self.handler {
            Some(path) => build::handler_binary_from(path),
            None => crate::tools::handler_binary(false),
        }
    }
}

/// How a followed run is printed (`fanout invoke`, `fanout attach`).
#[derive(Args)]
pub struct WatchArgs {
    /// text: the result on stdout, progress on stderr; json: one object on stdout for scripts.
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
    /// How progress is shown on stderr (auto: a bar on a terminal, plain lines otherwise).
    #[arg(long, value_enum, default_value = "auto")]
    progress: Progress,
}

#[derive(Clone, Copy, ValueEnum)]
enum Progress {
    Auto,
    Bar,
    Plain,
    None,
}

impl WatchArgs {
    pub fn display(&self) -> DisplayMode {
        match self.progress {
            Progress::Auto => DisplayMode::for_stderr(),
            Progress::Bar => DisplayMode::Bar,
            Progress::Plain => DisplayMode::Plain,
            Progress::None => DisplayMode::Quiet,
        }
    }
}

/// How a run behaves beyond the handler's defaults (`fanout invoke`, `fanout redrive`): its cap
/// and its failure policy, sent as the run's `x-fanout-*` headers.
#[derive(Args)]
pub struct RunPolicyArgs {
    /// At most this many subtasks (items, in a run of items) in flight at once (default: the
    /// handler's, 1000).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrency: Option<u32>,
    /// Hand K subtasks (items) to each executor invocation (`runBatch`), as Step Functions'
    /// ItemBatcher does: fewer invocations, each failure still its own. The cap then counts
    /// batches (default: the handler's, 1: one `runSubtask` per subtask).
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..=policy::MAX_BATCH_SIZE as i64))]
    pub batch_size: Option<u32>,
    /// Let up to N subtasks (or P% of them, e.g. 10%) fail for good: the run still finishes,
    /// and every failure is listed in its result, or left as an error object in its place in
    /// the results of a run of items (default: the handler's, fail-fast).
    #[arg(long, value_name = "N|P%", value_parser = FailurePolicy::tolerate)]
    tolerate_failures: Option<FailurePolicy>,
    /// Succeed when at least N subtasks succeed; the result lists every failure.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..),
          conflicts_with = "tolerate_failures")]
    min_successful: Option<u32>,
    /// Fail the run at its first failed subtask (the default unless the handler's
    /// FANOUT_FAILURE_POLICY says otherwise; what finished is kept).
    #[arg(long, conflicts_with_all = ["tolerate_failures", "min_successful"])]
    fail_fast: bool,
}

impl RunPolicyArgs {
    /// The `x-fanout-*` headers these flags ask for.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut run = Vec::new();
        if let Some(cap) = self.max_concurrency {
            run.push((headers::MAX_CONCURRENCY, cap.to_string()));
        }
        if let Some(batch) = self.batch_size {
            run.push((headers::BATCH_SIZE, batch.to_string()));
        }
        let policy = match (self.fail_fast, self.tolerate_failures, self.min_successful) {
            (true, _, _) => Some(FailurePolicy::FailFast),
            (_, Some(tolerance), _) => Some(tolerance),
            (_, _, Some(n)) => Some(FailurePolicy::MinSuccessful(n as usize)),
            _ => None,
        };
        if let Some(policy) = policy {
            run.push((headers::FAILURE_POLICY, policy.to_string()));
        }
        run
    }
}

/// `KEY=VALUE`, as `--env` and `--server-env` take it.
pub fn parse_env(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{raw:?} is not KEY=VALUE"))
}
