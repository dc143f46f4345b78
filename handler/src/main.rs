//! `fanout-handler`: the worker as a Lambda function (when `AWS_LAMBDA_RUNTIME_API` is set) or
//! as an HTTP endpoint (`--port`, `PORT`, default 9080; `--bind`, `FANOUT_BIND`, default
//! 0.0.0.0). With `FANOUT_IDENTITY_KEYS` it serves only requests signed by Restate.
//!
//! It is the reference job ([`Chores`]) on [`fanout_handler::serve`], the one call a job crate
//! of your own (`fanout new`) makes too: both share one path.

use fanout_handler::Chores;
use fanout_handler::serve::Server;
use std::process::ExitCode;

const USAGE: &str = "\
fanout-handler: the fan-out worker (service `worker`, handlers `run` and `runSubtask`)

USAGE:
    fanout-handler [--port PORT] [--bind ADDRESS]

Runs as an AWS Lambda function when AWS_LAMBDA_RUNTIME_API is set, otherwise serves the
Restate endpoint over HTTP on ADDRESS:PORT (default 0.0.0.0:9080, every interface).

OPTIONS:
    --port PORT       port of the HTTP endpoint (env PORT; default 9080)
    --bind ADDRESS    address to listen on: an IP (127.0.0.1, ::1, 0.0.0.0) or IP:PORT
                      (env FANOUT_BIND; default 0.0.0.0)
    -h, --help        print this help

ENVIRONMENT:
    FANOUT_IDENTITY_KEYS   Restate's request identity public keys (publickeyv1_…, as
                           restate-server prints them at startup), comma-separated to rotate:
                           only requests signed with one of them are served, anything else,
                           /discover included, gets 401. Unset: every request is served (and
                           HTTP mode warns at start)
    FANOUT_MAX_SUBTASK_MS  longest simulated subtask in ms (default 5000)
    FANOUT_SUBTASK_WORK_MS time each subtask then works in a journaled step (default 0)
    FANOUT_FLAKY_MS        chores named flaky… fail (retryably) this long after their first try
    FANOUT_SUBTASK_TAIL    a heavy tail, P%xF: P % of the chores sleep F times longer (e.g. 5%x20)
    (a chore written name@MS sleeps exactly MS ms instead of a random time)
    FANOUT_LAMBDA_PAYLOAD_LIMIT  response limit in bytes on Lambda (default 6291456; for tests)
    FANOUT_FAN_IN          how run waits: ledger (default; lanes keep the cap full and the
                           coordinator wakes at most 3 times), select-any (the coordinator keeps
                           the cap full itself, waking about once per subtask) or in-order; a
                           request header x-fanout-fan-in overrides it per run
    FANOUT_MAX_CONCURRENCY most subtasks of one run in flight at once (default 1000); a request
                           header x-fanout-max-concurrency overrides it per run
    FANOUT_FAILURE_POLICY  what failed subtasks do to a run: fail-fast (default), tolerate:N,
                           tolerate:P% or min-successful:N; a request header
                           x-fanout-failure-policy overrides it per run
    FANOUT_SUBTASK_RETRY_INITIAL_MS, FANOUT_SUBTASK_RETRY_FACTOR, FANOUT_SUBTASK_MAX_ATTEMPTS,
    FANOUT_SUBTASK_AT_MAX_ATTEMPTS (pause|kill)
                           how Restate retries a failing subtask (default: the server's policy)
    FANOUT_SERVE           what this deployment serves: all (default; worker/run and
                           worker/runSubtask, the reference contract), coordinator (worker/run
                           and the fan-in; subtasks go to executor/runSubtask) or executor
                           (only executor/runSubtask), so executors can be a function of their own
    RUST_LOG               log filter (default info)
    AWS_LAMBDA_LOG_FORMAT  JSON or Text (Lambda's advanced logging controls; default JSON on
                           Lambda, text lines elsewhere)
    AWS_LAMBDA_LOG_LEVEL   TRACE, DEBUG, INFO, WARN, ERROR or FATAL; wins over a level in
                           RUST_LOG, whose per-target directives still apply
";

fn main() -> ExitCode {
    Server::named("fanout-handler")
        .usage(USAGE)
        .serve_from(Chores::from_env)
}
