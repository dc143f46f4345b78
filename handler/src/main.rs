//! `fanout-handler`: the worker as a Lambda function (when `AWS_LAMBDA_RUNTIME_API` is set) or
//! as an HTTP endpoint (`--port`, `PORT`, default 9080; `--bind`, `FANOUT_BIND`, default
//! 0.0.0.0). With `FANOUT_IDENTITY_KEYS` it serves only requests signed by Restate.
//!
//! It is the reference job ([`Chores`]) on [`fanout_handler::serve`], the one call a job crate
//! of your own (`fanout new`) makes too: both share one path.

use fanout_handler::Chores;
use fanout_handler::serve::{Server, default_usage};
use std::process::ExitCode;

/// What the reference job adds to the usage every job shares (`serve::default_usage`).
const CHORES_ENVIRONMENT: &str = "
THE REFERENCE JOB (chores):
    FANOUT_MAX_SUBTASK_MS  longest simulated subtask in ms (default 5000)
    FANOUT_SUBTASK_WORK_MS time each subtask then works in a journaled step (default 0)
    FANOUT_FLAKY_MS        chores named flaky… fail (retryably) this long after their first try
    FANOUT_SUBTASK_TAIL    a heavy tail, P%xF: P % of the chores sleep F times longer (e.g. 5%x20)
    (a chore written name@MS sleeps exactly MS ms instead of a random time)
";

fn main() -> ExitCode {
    let usage = format!("{}{CHORES_ENVIRONMENT}", default_usage("fanout-handler"));
    Server::named("fanout-handler")
        .usage(usage)
        .serve_from(Chores::from_env)
}
