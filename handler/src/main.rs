//! `fanout-handler`: the worker as a Lambda function (when `AWS_LAMBDA_RUNTIME_API` is set) or
//! as an HTTP endpoint (`--port`, `PORT`, default 9080).

use fanout_handler::logging::{self, LogFormat};
use fanout_handler::plan::PayloadBudget;
use fanout_handler::policy::{self, FailurePolicy, FanInStrategy};
use fanout_handler::{Chores, Worker, http_endpoint, lambda};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

const USAGE: &str = "\
fanout-handler: the fan-out worker (service `worker`, handlers `run` and `runSubtask`)

USAGE:
    fanout-handler [--port PORT]

Runs as an AWS Lambda function when AWS_LAMBDA_RUNTIME_API is set, otherwise serves the
Restate endpoint over HTTP on 0.0.0.0:PORT.

OPTIONS:
    --port PORT    port of the HTTP endpoint (env PORT; default 9080)
    -h, --help     print this help

ENVIRONMENT:
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
    RUST_LOG               log filter (default info)
";

/// A run option from env var `name`: `default` when unset, refused with the variable named
/// when `parse` says no.
fn option_from_env<T>(
    name: &str,
    default: T,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, String> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(raw) => parse(&raw).map_err(|message| format!("{name}: {message}")),
    }
}

/// The chores worker as the handler's environment configures it.
fn worker_from_env() -> Result<Worker<Chores>, String> {
    Ok(Worker::new(Chores::from_env()?)
        .with_fan_in(option_from_env(
            FanInStrategy::ENV,
            FanInStrategy::Ledger,
            FanInStrategy::parse,
        )?)
        .with_max_concurrency(option_from_env(
            policy::MAX_CONCURRENCY_ENV,
            policy::DEFAULT_MAX_CONCURRENCY,
            policy::parse_max_concurrency,
        )?)
        .with_failure_policy(option_from_env(
            FailurePolicy::ENV,
            FailurePolicy::FailFast,
            FailurePolicy::parse,
        )?)
        .with_subtask_retry(policy::SubtaskRetry::from_env()?))
}

fn main() -> ExitCode {
    let on_lambda = std::env::var_os(lambda::RUNTIME_API_ENV).is_some();
    logging::init(if on_lambda {
        LogFormat::Json
    } else {
        LogFormat::Human
    });

    let worker = match worker_from_env() {
        Ok(worker) => worker,
        Err(message) => return fail(&message),
    };
    // On Lambda every resume ships the whole journal, so fan-outs that cannot fit are refused.
    let worker = if on_lambda {
        worker.with_payload_budget(PayloadBudget::LAMBDA)
    } else {
        worker
    };
    let endpoint = worker.endpoint();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };

    if on_lambda {
        return match runtime.block_on(lambda::run(endpoint)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&format!("the Lambda runtime stopped: {e}")),
        };
    }

    let port = match port_from(std::env::args().skip(1), std::env::var("PORT").ok()) {
        Ok(Some(port)) => port,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => return fail(&format!("{message}\n\n{USAGE}")),
    };
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    match runtime.block_on(http_endpoint::serve(endpoint, addr)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&format!(
            "cannot serve on {addr}: {e} (is another process using port {port}? pick another with --port)"
        )),
    }
}

/// `Ok(None)` means help was asked for.
fn port_from(
    mut args: impl Iterator<Item = String>,
    env: Option<String>,
) -> Result<Option<u16>, String> {
    let mut raw = env.map(|p| ("PORT", p));
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--port" => match args.next() {
                Some(p) => raw = Some(("--port", p)),
                None => return Err("--port needs a value".into()),
            },
            other => match other.strip_prefix("--port=") {
                Some(p) => raw = Some(("--port", p.to_owned())),
                None => return Err(format!("unknown argument {other:?}")),
            },
        }
    }
    match raw {
        None => Ok(Some(http_endpoint::DEFAULT_PORT)),
        Some((source, p)) => p
            .trim()
            .parse::<u16>()
            .map(Some)
            .map_err(|_| format!("{source} {p:?} is not a port number (0-65535)")),
    }
}

fn fail(message: &str) -> ExitCode {
    tracing::error!("{message}");
    eprintln!("fanout-handler: {message}");
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::port_from;

    fn args(a: &[&str]) -> std::vec::IntoIter<String> {
        a.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn port_defaults_to_9080_and_flag_beats_env() {
        assert_eq!(port_from(args(&[]), None), Ok(Some(9080)));
        assert_eq!(port_from(args(&[]), Some("7000".into())), Ok(Some(7000)));
        assert_eq!(
            port_from(args(&["--port", "7001"]), Some("7000".into())),
            Ok(Some(7001))
        );
        assert_eq!(port_from(args(&["--port=7002"]), None), Ok(Some(7002)));
    }

    #[test]
    fn bad_ports_and_arguments_are_explained() {
        assert!(
            port_from(args(&["--port", "x"]), None)
                .unwrap_err()
                .contains("not a port")
        );
        assert!(
            port_from(args(&["--port"]), None)
                .unwrap_err()
                .contains("needs a value")
        );
        assert!(
            port_from(args(&["--bogus"]), None)
                .unwrap_err()
                .contains("unknown argument")
        );
        assert_eq!(port_from(args(&["--help"]), None), Ok(None));
    }
}
