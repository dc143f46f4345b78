//! One call that serves a job: the worker as a Lambda function (when `AWS_LAMBDA_RUNTIME_API`
//! is set) or as an HTTP endpoint (`--port`, `PORT`, default 9080; `--bind`, `FANOUT_BIND`,
//! default 0.0.0.0), with everything the reference binary `fanout-handler` has: Lambda's
//! adapter with compression and payload limits, the journal planner's payload budget on
//! Lambda, the log lines (`RUST_LOG`, `AWS_LAMBDA_LOG_FORMAT`, `AWS_LAMBDA_LOG_LEVEL`),
//! Restate's request identity (`FANOUT_IDENTITY_KEYS`) and the run options from the
//! environment (`FANOUT_FAN_IN`, `FANOUT_MAX_CONCURRENCY`, `FANOUT_BATCH_SIZE`,
//! `FANOUT_FAILURE_POLICY`, `FANOUT_SUBTASK_RETRY_*`, `FANOUT_SERVE`).
//!
//! A job crate's `main` is one line:
//!
//! ```no_run
//! # use fanout_handler::Chores as MyJob;
//! fn main() -> std::process::ExitCode {
//!     fanout_handler::serve(MyJob::default())
//! }
//! ```
//!
//! `fanout-handler` itself is `Server::named("fanout-handler").usage(USAGE)
//! .serve_from(Chores::from_env)`: the reference binary and every job crate share this path.

use crate::job::Job;
use crate::logging::{self, LogFormat, LogSettings};
use crate::plan::PayloadBudget;
use crate::policy::{self, FailurePolicy, FanInStrategy};
use crate::worker::{Serve, Worker};
use crate::{http_endpoint, lambda};
use fanout_contract::identity;
use restate_sdk::endpoint::Builder;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;

/// Serves `job` as Lambda or HTTP, as the environment says, until the process is stopped;
/// returns the exit code for `main`. See [`Server`] to name the program or give it a usage
/// text of its own.
pub fn serve<J: Job>(job: J) -> ExitCode {
    Server::new().serve(job)
}

/// How a job's binary presents itself: its name (in error lines) and its `--help` text.
#[derive(Debug, Clone)]
pub struct Server {
    program: String,
    usage: Option<String>,
}

impl Default for Server {
    fn default() -> Self {
        Self::new()
    }
}

impl Server {
    /// Named after the running executable.
    pub fn new() -> Self {
        let program = std::env::args_os()
            .next()
            .and_then(|arg0| {
                std::path::Path::new(&arg0)
                    .file_name()
                    .map(|name| name.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "handler".to_owned());
        Self::named(program)
    }

    /// Named `program` in error lines and in the default usage text.
    pub fn named(program: impl Into<String>) -> Self {
        Self {
            program: program.into(),
            usage: None,
        }
    }

    /// The text `--help` prints, and that follows an argument error (default: the options
    /// and environment variables every job shares).
    pub fn usage(mut self, usage: impl Into<String>) -> Self {
        self.usage = Some(usage.into());
        self
    }

    /// Serves `job`; see [`serve`].
    pub fn serve<J: Job>(self, job: J) -> ExitCode {
        self.serve_from(|| Ok(job))
    }

    /// Serves the job `job` builds once logging is up, e.g. from its own environment
    /// variables; its error is reported like any other configuration error (exit code 1).
    pub fn serve_from<J: Job>(self, job: impl FnOnce() -> Result<J, String>) -> ExitCode {
        let on_lambda = std::env::var_os(lambda::RUNTIME_API_ENV).is_some();
        let default_format = if on_lambda {
            LogFormat::Json
        } else {
            LogFormat::Human
        };
        logging::init(LogSettings::from_env(default_format, |name| {
            std::env::var(name).ok()
        }));

        let worker = match job().and_then(worker_from_env) {
            Ok(worker) => worker,
            Err(message) => return self.fail(&message),
        };
        // On Lambda every resume ships the whole journal, so fan-outs that cannot fit are refused.
        let worker = if on_lambda {
            worker.with_payload_budget(PayloadBudget::LAMBDA)
        } else {
            worker
        };
        let (endpoint, identity_keys) = match env_text(IDENTITY_KEYS_ENV)
            .and_then(|raw| with_identity_keys(worker.endpoint_builder(), raw.as_deref()))
        {
            Ok((builder, count)) => (builder.build(), count),
            Err(message) => return self.fail(&message),
        };
        if identity_keys > 0 {
            tracing::info!(
                "serving only requests signed by Restate ({identity_keys} identity key(s) in \
                 {IDENTITY_KEYS_ENV})"
            );
        }

        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => return self.fail(&format!("cannot start the async runtime: {e}")),
        };

        if on_lambda {
            return match runtime.block_on(lambda::run(endpoint)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => self.fail(&format!("the Lambda runtime stopped: {e}")),
            };
        }

        let usage = self.usage_text();
        let env = env_text("PORT").and_then(|port| Ok((port, env_text(BIND_ENV)?)));
        let addr =
            match env.and_then(|(port, bind)| listen_addr(std::env::args().skip(1), port, bind)) {
                Ok(Some(addr)) => addr,
                Ok(None) => {
                    print!("{usage}");
                    return ExitCode::SUCCESS;
                }
                Err(message) => return self.fail(&format!("{message}\n\n{usage}")),
            };
        if identity_keys == 0 {
            tracing::warn!(
                "{IDENTITY_KEYS_ENV} is not set: anyone who can reach {addr} can call every \
                 handler of this endpoint, not only Restate. Set it to the publickeyv1_… key \
                 restate-server prints at startup (README, Security)"
            );
        }
        match runtime.block_on(http_endpoint::serve(endpoint, addr)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => self.fail(&format!(
                "cannot serve on {addr}: {e} (is another process using port {}? pick another \
                 with --port; is {} an address of this machine? see --bind)",
                addr.port(),
                addr.ip()
            )),
        }
    }

    fn usage_text(&self) -> String {
        match &self.usage {
            Some(usage) => usage.clone(),
            None => default_usage(&self.program),
        }
    }

    fn fail(&self, message: &str) -> ExitCode {
        tracing::error!("{message}");
        eprintln!("{}: {message}", self.program);
        ExitCode::FAILURE
    }
}

/// The usage text of a job's binary named `program`: what every job shares.
pub fn default_usage(program: &str) -> String {
    format!(
        "\
{program}: a fanout job (service `worker`, handlers `run` and `runSubtask`)

USAGE:
    {program} [--port PORT] [--bind ADDRESS]

Runs as an AWS Lambda function when AWS_LAMBDA_RUNTIME_API is set, otherwise serves the
Restate endpoint over HTTP on ADDRESS:PORT (default 0.0.0.0:9080, every interface).

OPTIONS:
    --port PORT       port of the HTTP endpoint (env PORT; default 9080)
    --bind ADDRESS    address to listen on: an IP (127.0.0.1, ::1, 0.0.0.0) or IP:PORT
                      (env FANOUT_BIND; default 0.0.0.0)
    -h, --help        print this help

ENVIRONMENT:
{SHARED_ENVIRONMENT}"
    )
}

/// The environment variables every job's binary reads, as the usage text lists them.
pub const SHARED_ENVIRONMENT: &str = "    \
    FANOUT_IDENTITY_KEYS   Restate's request identity public keys (publickeyv1_…, as
                           restate-server prints them at startup), comma-separated to rotate:
                           only requests signed with one of them are served, anything else,
                           /discover included, gets 401. Unset: every request is served (and
                           HTTP mode warns at start)
    FANOUT_LAMBDA_PAYLOAD_LIMIT  response limit in bytes on Lambda (default 6291456; for tests)
    FANOUT_FAN_IN          how run waits: ledger (default), select-any or in-order; a request
                           header x-fanout-fan-in overrides it per run
    FANOUT_MAX_CONCURRENCY most subtasks of one run in flight at once (default 1000); a request
                           header x-fanout-max-concurrency overrides it per run
    FANOUT_BATCH_SIZE      subtasks per executor invocation, 1 (default) to 1000: above 1 a
                           lane calls runBatch, and the cap counts batches; a request header
                           x-fanout-batch-size overrides it per run
    FANOUT_FAILURE_POLICY  what failed subtasks do to a run: fail-fast (default), tolerate:N,
                           tolerate:P% or min-successful:N; a request header
                           x-fanout-failure-policy overrides it per run
    FANOUT_SUBTASK_RETRY_INITIAL_MS, FANOUT_SUBTASK_RETRY_FACTOR, FANOUT_SUBTASK_MAX_ATTEMPTS,
    FANOUT_SUBTASK_AT_MAX_ATTEMPTS (pause|kill)
                           how Restate retries a failing subtask (default: the server's policy)
    FANOUT_SERVE           what this deployment serves: all (default), coordinator or executor
    RUST_LOG               log filter (default info)
    AWS_LAMBDA_LOG_FORMAT  JSON or Text (default JSON on Lambda, text lines elsewhere)
    AWS_LAMBDA_LOG_LEVEL   TRACE, DEBUG, INFO, WARN, ERROR or FATAL; wins over a level in
                           RUST_LOG
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

/// Restate's request identity keys: the env var that lists them.
pub use fanout_contract::identity::IDENTITY_KEYS_ENV;

/// The listen address of the HTTP endpoint.
pub const BIND_ENV: &str = "FANOUT_BIND";

/// Adds the keys listed in `raw` (the value of `FANOUT_IDENTITY_KEYS`, comma-separated) to
/// `builder`, so the endpoint serves only requests Restate signed with one of them. Returns how
/// many were added: 0 when `raw` is `None` (unset: unsigned requests are served).
fn with_identity_keys(builder: Builder, raw: Option<&str>) -> Result<(Builder, usize), String> {
    let Some(raw) = raw else {
        return Ok((builder, 0));
    };
    let keys = identity::key_list(raw)?;
    let count = keys.len();
    let mut builder = builder;
    for (i, key) in keys.into_iter().enumerate() {
        builder = builder
            .identity_key(key)
            .map_err(|e| identity::not_a_key(i, count, key, &e.to_string()))?;
    }
    Ok((builder, count))
}

/// The value of env var `name`; an error when it is set but not Unicode.
fn env_text(name: &str) -> Result<Option<String>, String> {
    match std::env::var(name) {
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{name} is not valid Unicode")),
    }
}

/// `job`'s worker with the run options the environment sets.
fn worker_from_env<J: Job>(job: J) -> Result<Worker<J>, String> {
    Ok(Worker::new(job)
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
        .with_batch_size(option_from_env(
            policy::BATCH_SIZE_ENV,
            1,
            policy::parse_batch_size,
        )?)
        .with_failure_policy(option_from_env(
            FailurePolicy::ENV,
            FailurePolicy::FailFast,
            FailurePolicy::parse,
        )?)
        .with_subtask_retry(policy::SubtaskRetry::from_env()?)
        .serving(option_from_env(Serve::ENV, Serve::All, Serve::parse)?))
}

/// The HTTP endpoint's address from the arguments and the `PORT` and `FANOUT_BIND` values; a
/// flag beats its variable. `Ok(None)` means help was asked for.
fn listen_addr(
    mut args: impl Iterator<Item = String>,
    env_port: Option<String>,
    env_bind: Option<String>,
) -> Result<Option<SocketAddr>, String> {
    let mut port = env_port.map(|p| ("PORT", p));
    let mut bind = env_bind.map(|b| (BIND_ENV, b));
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
            None => (arg.clone(), None),
        };
        let slot = match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--port" => &mut port,
            "--bind" => &mut bind,
            _ => return Err(format!("unknown argument {arg:?}")),
        };
        let source = if flag == "--port" { "--port" } else { "--bind" };
        match inline.or_else(|| args.next()) {
            Some(value) => *slot = Some((source, value)),
            None => return Err(format!("{source} needs a value")),
        }
    }
    let port = match port {
        None => None,
        Some((source, p)) => Some(
            p.trim()
                .parse::<u16>()
                .map_err(|_| format!("{source} {p:?} is not a port number (0-65535)"))?,
        ),
    };
    let Some((source, raw)) = bind else {
        let port = port.unwrap_or(http_endpoint::DEFAULT_PORT);
        return Ok(Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))));
    };
    let raw = raw.trim();
    if let Ok(ip) = raw.parse::<IpAddr>() {
        return Ok(Some(SocketAddr::new(
            ip,
            port.unwrap_or(http_endpoint::DEFAULT_PORT),
        )));
    }
    match raw.parse::<SocketAddr>() {
        Ok(addr) if port.is_some_and(|p| p != addr.port()) => Err(format!(
            "{source} {raw:?} names port {} but --port/PORT says {}; give the port once",
            addr.port(),
            port.unwrap_or_default()
        )),
        Ok(addr) => Ok(Some(addr)),
        Err(_) => Err(format!(
            "{source} {raw:?} is not an IP address or IP:PORT (e.g. 127.0.0.1, ::1, 0.0.0.0, \
             127.0.0.1:9080, [::1]:9080)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::{listen_addr, with_identity_keys};
    use crate::{Chores, Worker};
    use std::net::SocketAddr;

    fn args(a: &[&str]) -> std::vec::IntoIter<String> {
        a.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .into_iter()
    }

    fn addr(text: &str) -> Option<SocketAddr> {
        Some(text.parse().unwrap())
    }

    fn port_only(a: &[&str], env: Option<&str>) -> Result<Option<SocketAddr>, String> {
        listen_addr(args(a), env.map(str::to_owned), None)
    }

    #[test]
    fn port_defaults_to_9080_and_flag_beats_env() {
        assert_eq!(port_only(&[], None), Ok(addr("0.0.0.0:9080")));
        assert_eq!(port_only(&[], Some("7000")), Ok(addr("0.0.0.0:7000")));
        assert_eq!(
            port_only(&["--port", "7001"], Some("7000")),
            Ok(addr("0.0.0.0:7001"))
        );
        assert_eq!(port_only(&["--port=7002"], None), Ok(addr("0.0.0.0:7002")));
    }

    #[test]
    fn bind_sets_the_address_and_flag_beats_env() {
        let bind = |a: &[&str], port: Option<&str>, env: Option<&str>| {
            listen_addr(args(a), port.map(str::to_owned), env.map(str::to_owned))
        };
        assert_eq!(
            bind(&["--bind", "127.0.0.1"], None, None),
            Ok(addr("127.0.0.1:9080"))
        );
        assert_eq!(
            bind(&["--bind=::1", "--port", "7000"], None, None),
            Ok(addr("[::1]:7000"))
        );
        assert_eq!(
            bind(&[], Some("7001"), Some("127.0.0.1")),
            Ok(addr("127.0.0.1:7001"))
        );
        assert_eq!(
            bind(&["--bind", "127.0.0.2"], None, Some("127.0.0.1")),
            Ok(addr("127.0.0.2:9080"))
        );
        assert_eq!(
            bind(&[], None, Some("127.0.0.1:7002")),
            Ok(addr("127.0.0.1:7002"))
        );
        assert_eq!(
            bind(&["--port", "7003"], None, Some("127.0.0.1:7003")),
            Ok(addr("127.0.0.1:7003"))
        );
        let clash = bind(&["--port", "7004"], None, Some("127.0.0.1:7003")).unwrap_err();
        assert!(clash.contains("give the port once"), "{clash}");
        let bad = bind(&["--bind", "localhost"], None, None).unwrap_err();
        assert!(
            bad.contains("--bind \"localhost\" is not an IP address"),
            "{bad}"
        );
        let bad = bind(&[], None, Some("nope")).unwrap_err();
        assert!(bad.contains("FANOUT_BIND \"nope\""), "{bad}");
    }

    #[test]
    fn bad_ports_and_arguments_are_explained() {
        assert!(
            port_only(&["--port", "x"], None)
                .unwrap_err()
                .contains("not a port")
        );
        assert!(
            port_only(&["--port"], None)
                .unwrap_err()
                .contains("needs a value")
        );
        assert!(
            port_only(&["--bind"], None)
                .unwrap_err()
                .contains("--bind needs a value")
        );
        assert!(
            port_only(&["--bogus"], None)
                .unwrap_err()
                .contains("unknown argument")
        );
        assert_eq!(port_only(&["--help"], None), Ok(None));
    }

    fn builder() -> restate_sdk::endpoint::Builder {
        Worker::new(Chores::default()).endpoint_builder()
    }

    const KEY_A: &str = "publickeyv1_ChjENKeMvCtRnqG2mrBK1HmPKufgFUc98K8B3ononQvp";
    const KEY_B: &str = "publickeyv1_FP9oYi9S8LQyZcUMPv6JZZ5ytHYd9eeDmy1AyjTd7erQ";

    #[test]
    fn identity_keys_are_counted_and_bad_ones_named() {
        assert_eq!(with_identity_keys(builder(), None).unwrap().1, 0);
        assert_eq!(with_identity_keys(builder(), Some(KEY_A)).unwrap().1, 1);
        let two = format!(" {KEY_A} , {KEY_B},");
        assert_eq!(with_identity_keys(builder(), Some(&two)).unwrap().1, 2);

        let err = |raw: &str| with_identity_keys(builder(), Some(raw)).err().unwrap();
        let empty = err(" , ");
        assert!(
            empty.contains("FANOUT_IDENTITY_KEYS is set but holds no key"),
            "{empty}"
        );
        let prefix = err(&format!(
            "{KEY_A},ChjENKeMvCtRnqG2mrBK1HmPKufgFUc98K8B3ononQvp"
        ));
        assert!(
            prefix.starts_with("FANOUT_IDENTITY_KEYS: key 2 of 2")
                && prefix.contains("start with publickeyv1_"),
            "{prefix}"
        );
        let base58 = err("publickeyv1_0OIl");
        assert!(base58.contains("base58"), "{base58}");
        let short = err("publickeyv1_abc");
        assert!(short.contains("length of 32"), "{short}");
    }
}
