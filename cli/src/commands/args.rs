//! Argument groups several verbs share: where Restate is, which handler runs locally, how a
//! followed run is shown.

use crate::commands::build;
use crate::observe::DisplayMode;
use crate::outcome::{Endpoints, OutputFormat};
use crate::stack::HandlerMode;
use clap::{Args, ValueEnum};
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

/// `KEY=VALUE`, as `--env` and `--server-env` take it.
pub fn parse_env(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{raw:?} is not KEY=VALUE"))
}
