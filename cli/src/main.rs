//! `fanout`: parses arguments and dispatches to one module per verb in `fanout::commands`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use fanout::admin::{AdminClient, DeploymentTarget, RegisterOptions};
use fanout::commands::build::Arch;
use fanout::commands::{
    attach, bench, build, cancel, demo, deploy, invoke, local, new, prune, register, runs, status,
};
use fanout::stack::HandlerMode;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "fanout",
    version,
    about = "Durable fan-out / fan-in on Restate, with the subtasks on AWS Lambda"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the reference example end to end on a local stack, print logs and figures, stop.
    Demo(DemoArgs),
    /// Start restate-server and the handler (as a local Lambda by default), register it, and
    /// stay up until Ctrl-C.
    Local(LocalArgs),
    /// Register a published Lambda version (or an HTTP endpoint) with Restate.
    Register(RegisterArgs),
    /// Create a job crate of your own in DIR: one job and a main that serves it, to build with
    /// `fanout build` and run with `fanout local --handler`.
    New(NewArgs),
    /// Build a job crate (default: the one in the current directory; here, fanout-handler) as
    /// a Lambda zip with cargo-lambda; print its path, size and SHA-256.
    Build(BuildArgs),
    /// Create or update the Lambda function, publish a version, print its ARN (and register it
    /// with --register).
    Deploy(DeployArgs),
    /// Remove old versions (Restate deployment, then Lambda version) once nothing is pinned to them.
    Prune(PruneArgs),
    /// Measure fan-outs of several widths on the local stack (Lambda mode) and print a table.
    Bench(BenchArgs),
    /// Start a fan-out through Restate's ingress, show its progress, print its result.
    #[command(after_help = invoke::exit::HELP)]
    Invoke(InvokeArgs),
    /// Wait for a fan-out started earlier (by id) with live progress, and print its result.
    #[command(after_help = invoke::exit::HELP)]
    Attach(AttachArgs),
    /// Show every subtask of a fan-out: status, attempts, duration, last error.
    #[command(after_help = invoke::exit::HELP)]
    Status(StatusArgs),
    /// Cancel a fan-out: its coordinator, its lanes and its subtasks in flight; nothing more
    /// starts. Waits until nothing of it is left running, then prints its status line.
    #[command(after_help = cancel::HELP)]
    Cancel(CancelArgs),
    /// List the most recent fan-outs: id, started, finished, width, status, done and failed.
    Runs(RunsArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// The handler as a Lambda bootstrap behind the local Lambda stand-in.
    Lambda,
    /// The handler as an HTTP endpoint.
    Http,
}

impl From<Mode> for HandlerMode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Lambda => HandlerMode::Lambda,
            Mode::Http => HandlerMode::Http,
        }
    }
}

#[derive(Args)]
struct HandlerArgs {
    /// How the handler runs.
    #[arg(long, value_enum, default_value = "lambda")]
    mode: Mode,
    /// The handler: a binary, or a Lambda zip from `fanout build` whose bootstrap is run
    /// (default: target/debug/fanout-handler of this workspace).
    #[arg(long, env = "FANOUT_HANDLER_BIN")]
    handler: Option<PathBuf>,
    /// Longest simulated subtask in ms (the handler's FANOUT_MAX_SUBTASK_MS; default 5000).
    #[arg(long)]
    max_subtask_ms: Option<u64>,
    /// Without request identity: restate-server does not sign its requests and the handler
    /// serves any caller. For debugging; by default a fresh key pair signs everything.
    #[arg(long)]
    unsigned: bool,
}

impl HandlerArgs {
    fn binary(&self) -> anyhow::Result<PathBuf> {
        match &self.handler {
            Some(path) => build::handler_binary_from(path),
            None => fanout::tools::handler_binary(false),
        }
    }
}

#[derive(Args)]
struct DemoArgs {
    #[command(flatten)]
    handler: HandlerArgs,
    /// The task to fan out.
    #[arg(default_value = demo::REFERENCE_TASK)]
    description: String,
    /// The task as a JSON file instead (e.g. the example.json of a `fanout new` crate, with
    /// --handler its zip).
    #[arg(long, conflicts_with = "description")]
    input: Option<PathBuf>,
}

#[derive(Args)]
struct BuildArgs {
    /// CPU architecture of the function.
    #[arg(long, value_enum, default_value = "arm64")]
    arch: Arch,
    /// The crate's Cargo.toml (default: the nearest above the current directory).
    #[arg(long, value_name = "PATH")]
    manifest_path: Option<PathBuf>,
    /// The package to build, in a workspace of several.
    #[arg(long, short = 'p', value_name = "SPEC")]
    package: Option<String>,
    /// The binary to build; needed only when there is more than one.
    #[arg(long, value_name = "NAME")]
    bin: Option<String>,
}

#[derive(Args)]
struct NewArgs {
    /// The folder to create (it must not exist, or be empty); its name names the crate.
    dir: PathBuf,
    /// The crate's name (default: the folder's).
    #[arg(long)]
    name: Option<String>,
    /// The fanout checkout to depend on by path (default: the one this fanout was built from).
    #[arg(long, value_name = "PATH")]
    fanout_path: Option<PathBuf>,
}

#[derive(Args)]
struct DeployArgs {
    /// The Lambda function to create or update.
    #[arg(long)]
    function_name: String,
    /// Execution role ARN (needed to create the function).
    #[arg(long)]
    role: Option<String>,
    /// Memory in MB (128-10240; default 256 when creating).
    #[arg(long)]
    memory: Option<i32>,
    /// Timeout in seconds (1-900; default 60 when creating).
    #[arg(long)]
    timeout: Option<i32>,
    /// CPU architecture of the function.
    #[arg(long, value_enum, default_value = "arm64")]
    arch: Arch,
    /// Environment variable of the function, KEY=VALUE (repeatable; replaces the function's
    /// environment when given).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// The zip to deploy (default: the one `fanout build --arch ARCH` left for the crate in
    /// the current directory, target/lambda/BIN/bootstrap-ARCH.zip).
    #[arg(long)]
    zip: Option<PathBuf>,
    /// AWS region (default: the AWS chain's, e.g. AWS_REGION).
    #[arg(long)]
    region: Option<String>,
    /// Also register the published version with Restate.
    #[arg(long)]
    register: bool,
    /// With --register: IAM role Restate assumes to invoke the function.
    #[arg(long)]
    assume_role_arn: Option<String>,
    /// Restate's request identity public keys (publickeyv1_…, comma-separated), set as the
    /// function's FANOUT_IDENTITY_KEYS: it then serves only requests Restate signed.
    #[arg(long, env = "FANOUT_IDENTITY_KEYS", value_name = "KEYS")]
    identity_keys: Option<String>,
    /// What the function serves (its FANOUT_SERVE): all (one function, the default), or one
    /// half of a split layout, coordinator or executor; merged into its environment.
    #[arg(long, value_enum)]
    serve: Option<ServeArg>,
    #[command(flatten)]
    restate: RestateArgs,
}

#[derive(Args)]
struct PruneArgs {
    /// The Lambda function whose old versions to remove.
    #[arg(long)]
    function_name: String,
    /// Print the plan without changing anything.
    #[arg(long)]
    dry_run: bool,
    /// AWS region (default: the AWS chain's).
    #[arg(long)]
    region: Option<String>,
    #[command(flatten)]
    restate: RestateArgs,
}

#[derive(Args)]
struct BenchArgs {
    /// The handler binary (default: target/release/fanout-handler, else target/debug).
    #[arg(long, env = "FANOUT_HANDLER_BIN")]
    handler: Option<PathBuf>,
    /// Fan-out widths to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    sizes: Vec<usize>,
    /// Completion orders to run for each width, comma-separated (random, increasing, decreasing).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "random")]
    orders: Vec<bench::Order>,
    /// Caps on each run's subtasks in flight, comma-separated: a number, n (the width) or n/D
    /// (a share of it); a cap at or above the width is run once.
    #[arg(
        long,
        alias = "max-concurrency",
        value_delimiter = ',',
        value_parser = bench::Cap::parse,
        default_value = "n,n/5"
    )]
    caps: Vec<bench::Cap>,
    /// Fan-in strategies to compare, comma-separated (ledger, select-any, in-order).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "ledger,select-any,in-order"
    )]
    strategies: Vec<bench::Strategy>,
    /// How long subtasks take, comma-separated: 0-10s, 0-500ms, a number of ms, tail (0-1s
    /// with 5 % of the subtasks 20 times longer) or tail:0-2s:5%x20. Each spread gets a
    /// stack of its own.
    #[arg(
        long,
        alias = "max-subtask-ms",
        value_delimiter = ',',
        value_parser = bench::Spread::parse,
        default_value = "0-1s"
    )]
    spreads: Vec<bench::Spread>,
    /// Skip the floor (the same subtasks sent straight through the ingress).
    #[arg(long)]
    no_floor: bool,
    /// Skip the unmeasured warm-up before each width (the floor's subtasks once), which
    /// starts the instances so that no row pays for cold starts the others do not.
    #[arg(long)]
    no_warm_up: bool,
    /// Also write an SVG plot of invocations and bytes against N.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Concurrent executions allowed to the local Lambda function.
    #[arg(long, default_value_t = 1000)]
    concurrency_limit: usize,
    /// A restate-server setting for every stack, as its env var (repeatable), e.g.
    /// --server-env RESTATE_WORKER__INVOKER__REQUEST_COMPRESSION_THRESHOLD="4 MiB".
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_env)]
    server_env: Vec<(String, String)>,
    /// Measure the select-any baseline only up to this width: its coordinator replays one
    /// call per subtask on every wake (O(N²) bytes), which takes long at 10,000.
    #[arg(long, default_value_t = 1000)]
    select_any_up_to: usize,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct LocalArgs {
    #[command(flatten)]
    handler: HandlerArgs,
    /// Where logs and metering are kept.
    #[arg(long, default_value = ".fanout/local")]
    state_dir: PathBuf,
    /// Concurrent executions allowed to the local Lambda function (429 beyond).
    #[arg(long, default_value_t = 1000)]
    concurrency_limit: usize,
    /// Restate nodes: 1 runs a single restate-server; 3 (up to 7) a Restate cluster on
    /// loopback, replication 2, which keeps serving when a node dies.
    #[arg(long, default_value_t = 1, value_parser = parse_nodes)]
    nodes: usize,
    /// An environment variable for the handler (its instances on the stand-in, or its
    /// process), as a function's configuration sets it; repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// single: one deployment serves everything; split: the coordinator and the executors as
    /// deployments of their own (FANOUT_SERVE), the executors in --mode.
    #[arg(long, value_enum, default_value = "single")]
    layout: LayoutArg,
    /// With --layout split: how the coordinator runs (default: as --mode). `--mode lambda
    /// --coordinator-mode http` is the coordinator on a long-running host, executors on Lambda.
    #[arg(long, value_enum)]
    coordinator_mode: Option<Mode>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LayoutArg {
    Single,
    Split,
}

fn parse_nodes(raw: &str) -> Result<usize, String> {
    let nodes = raw
        .parse()
        .map_err(|_| format!("--nodes takes a number of nodes (1, or 3 to 7), not {raw:?}"))?;
    fanout::restate_cluster::check_nodes(nodes)?;
    Ok(nodes)
}

#[derive(Args)]
struct RestateArgs {
    /// Restate's admin API.
    #[arg(
        long,
        env = "RESTATE_ADMIN_URL",
        default_value = "http://localhost:9070"
    )]
    admin_url: String,
    /// Restate's ingress.
    #[arg(
        long,
        env = "RESTATE_INGRESS_URL",
        default_value = "http://localhost:8080"
    )]
    ingress_url: String,
    /// Bearer token (Restate Cloud).
    #[arg(long, env = "RESTATE_AUTH_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl RestateArgs {
    fn endpoints(&self) -> attach::Endpoints {
        attach::Endpoints::new(&self.ingress_url, &self.admin_url, self.token.clone())
    }
}

#[derive(Args)]
struct RegisterArgs {
    /// The published Lambda version ARN (arn:aws:lambda:REGION:ACCOUNT:function:NAME:VERSION).
    #[arg(long, required_unless_present = "uri", conflicts_with = "uri")]
    arn: Option<String>,
    /// An HTTP endpoint instead of Lambda (e.g. http://localhost:9080).
    #[arg(long)]
    uri: Option<String>,
    /// IAM role Restate assumes to invoke the function.
    #[arg(long)]
    assume_role_arn: Option<String>,
    /// Replace a deployment with the same endpoint.
    #[arg(long, conflicts_with = "breaking")]
    force: bool,
    /// Accept breaking changes to existing services.
    #[arg(long)]
    breaking: bool,
    /// Show what would be registered without registering.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    restate: RestateArgs,
}

#[derive(Args)]
struct InvokeArgs {
    /// The task as a description: comma-separated subtasks.
    description: Option<String>,
    /// The task as a JSON file (e.g. {"description": "a,b"}).
    #[arg(long, conflicts_with = "description")]
    input: Option<PathBuf>,
    /// Repeating an invoke with the same key returns the same run instead of starting another.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Start the run, print its invocation id and return; `fanout attach ID` waits for it.
    #[arg(long)]
    send: bool,
    /// At most this many subtasks in flight at once (default: the handler's, 1000).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_concurrency: Option<u32>,
    /// How the coordinator waits: ledger (lanes keep the cap full, the coordinator wakes at
    /// most 3 times), select-any (the coordinator keeps the cap full itself) or in-order
    /// (default: the handler's, ledger).
    #[arg(long, value_parser = ["ledger", "select-any", "in-order"])]
    fan_in: Option<String>,
    /// Let up to N subtasks (or P% of them, e.g. 10%) fail for good: the run still
    /// aggregates, and its result lists every failure (default: the handler's, fail-fast).
    #[arg(long, value_name = "N|P%", value_parser = invoke::parse_tolerance)]
    tolerate_failures: Option<String>,
    /// Succeed when at least N subtasks succeed; the result lists every failure.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..),
          conflicts_with = "tolerate_failures")]
    min_successful: Option<u32>,
    /// Fail the run at its first failed subtask (the default unless the handler's
    /// FANOUT_FAILURE_POLICY says otherwise).
    #[arg(long, conflicts_with_all = ["tolerate_failures", "min_successful"])]
    fail_fast: bool,
    #[command(flatten)]
    watch: WatchArgs,
    #[command(flatten)]
    restate: RestateArgs,
}

#[derive(Args)]
struct AttachArgs {
    /// The coordinator's invocation id (inv_…), as `fanout invoke --send` prints it.
    id: String,
    #[command(flatten)]
    watch: WatchArgs,
    #[command(flatten)]
    restate: RestateArgs,
}

#[derive(Args)]
struct StatusArgs {
    /// The coordinator's invocation id (inv_…).
    id: String,
    /// text: a table and a summary line; json: one object for scripts.
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
    #[command(flatten)]
    restate: RestateArgs,
}

#[derive(Args)]
struct RunsArgs {
    /// Only runs in this state.
    #[arg(long, value_enum, default_value = "all")]
    status: RunStatusArg,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// text: a table; json: one object for scripts.
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
    #[command(flatten)]
    restate: RestateArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum ServeArg {
    All,
    Coordinator,
    Executor,
}

impl ServeArg {
    fn as_str(self) -> &'static str {
        match self {
            ServeArg::All => "all",
            ServeArg::Coordinator => "coordinator",
            ServeArg::Executor => "executor",
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum RunStatusArg {
    All,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl From<RunStatusArg> for fanout::observe::RunStatus {
    fn from(status: RunStatusArg) -> Self {
        use fanout::observe::RunStatus;
        match status {
            RunStatusArg::All => RunStatus::All,
            RunStatusArg::Running => RunStatus::Running,
            RunStatusArg::Succeeded => RunStatus::Succeeded,
            RunStatusArg::Failed => RunStatus::Failed,
            RunStatusArg::Cancelled => RunStatus::Cancelled,
        }
    }
}

#[derive(Args)]
struct CancelArgs {
    /// The coordinator's invocation id (inv_…).
    id: String,
    /// Return as soon as Restate has taken the cancel, without waiting for the run to stop.
    #[arg(long)]
    no_wait: bool,
    /// How long to wait for the run to stop, in seconds.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    timeout: u64,
    /// text: the run's status line; json: one object for scripts.
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
    #[command(flatten)]
    restate: RestateArgs,
}

#[derive(Args)]
struct WatchArgs {
    /// text: the result on stdout, progress on stderr; json: one object on stdout for scripts.
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
    /// How progress is shown on stderr (auto: a bar on a terminal, plain lines otherwise).
    #[arg(long, value_enum, default_value = "auto")]
    progress: ProgressArg,
}

impl WatchArgs {
    fn display(&self) -> fanout::observe::DisplayMode {
        use fanout::observe::DisplayMode;
        match self.progress {
            ProgressArg::Auto => DisplayMode::for_stderr(),
            ProgressArg::Bar => DisplayMode::Bar,
            ProgressArg::Plain => DisplayMode::Plain,
            ProgressArg::None => DisplayMode::Quiet,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

impl From<Output> for invoke::OutputFormat {
    fn from(output: Output) -> Self {
        match output {
            Output::Text => invoke::OutputFormat::Text,
            Output::Json => invoke::OutputFormat::Json,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum ProgressArg {
    Auto,
    Bar,
    Plain,
    None,
}

fn parse_env(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{raw:?} is not KEY=VALUE"))
}

fn main() -> ExitCode {
    // Like other command-line tools, end quietly when the reader of our output goes away
    // (`fanout status … | head`) instead of panicking in println!.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(&e),
    }
}

async fn dispatch(command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Demo(args) => {
            demo::run(demo::DemoOptions {
                mode: args.handler.mode.into(),
                handler_binary: args.handler.binary()?,
                max_subtask_ms: args.handler.max_subtask_ms,
                unsigned: args.handler.unsigned,
                description: args.description,
                input: args.input,
            })
            .await?;
            Ok(0)
        }
        Command::Local(args) => {
            local::run(local::LocalOptions {
                mode: args.handler.mode.into(),
                handler_binary: args.handler.binary()?,
                state_dir: args.state_dir,
                max_subtask_ms: args.handler.max_subtask_ms,
                unsigned: args.handler.unsigned,
                concurrency_limit: args.concurrency_limit,
                nodes: args.nodes,
                env: args.env,
                layout: match args.layout {
                    LayoutArg::Single => fanout::stack::Layout::Single,
                    LayoutArg::Split => fanout::stack::Layout::Split {
                        coordinator: args.coordinator_mode.unwrap_or(args.handler.mode).into(),
                    },
                },
            })
            .await?;
            Ok(0)
        }
        Command::New(args) => {
            let created = new::new(&new::NewOptions {
                dir: args.dir,
                name: args.name,
                fanout_path: args.fanout_path,
            })?;
            print!("{}", created.describe());
            Ok(0)
        }
        Command::Build(args) => {
            let artifact = build::build(&build::BuildOptions {
                arch: args.arch,
                manifest_path: args.manifest_path,
                package: args.package,
                bin: args.bin,
            })?;
            println!("{}", artifact.describe());
            Ok(0)
        }
        Command::Deploy(args) => {
            let zip = match args.zip {
                Some(zip) => zip,
                None => build::default_zip(args.arch)?,
            };
            let code = build::artifact(&zip)?;
            let lambda = fanout::aws::lambda_client(args.region.as_deref()).await?;
            let options = deploy::DeployOptions {
                function_name: args.function_name.clone(),
                role: args.role,
                memory_mb: args.memory,
                timeout_s: args.timeout,
                arch: args.arch,
                environment: (!args.env.is_empty()).then(|| args.env.into_iter().collect()),
                identity_keys: args.identity_keys,
                serve: args.serve.map(|serve| serve.as_str().to_owned()),
            };
            let deployed = deploy::deploy(&lambda, &options, &code).await?;
            println!("{}", deployed.describe(&args.function_name));
            eprintln!("{}", deployed.identity_note());
            if args.register {
                let admin = AdminClient::new(&args.restate.admin_url, args.restate.token);
                let target = DeploymentTarget::Lambda {
                    arn: deployed.version_arn.clone(),
                    assume_role_arn: args.assume_role_arn,
                };
                let registered =
                    register::register(&admin, target, RegisterOptions::default()).await?;
                print!("{}", register::describe(&registered, false));
            }
            Ok(0)
        }
        Command::Prune(args) => {
            let admin = AdminClient::new(&args.restate.admin_url, args.restate.token);
            let lambda = fanout::aws::lambda_client(args.region.as_deref()).await?;
            let scope = prune::scope(&lambda, &args.function_name).await?;
            let entries = prune::plan(&admin, &args.function_name, scope.as_ref()).await?;
            if !args.dry_run {
                prune::apply(&admin, &lambda, &args.function_name, &entries).await?;
            }
            print!("{}", prune::describe(&entries, args.dry_run));
            Ok(0)
        }
        Command::Bench(args) => {
            let handler_binary = match args.handler {
                Some(path) => path,
                None => fanout::tools::handler_binary(true)
                    .or_else(|_| fanout::tools::handler_binary(false))?,
            };
            let report = bench::run(bench::BenchOptions {
                handler_binary,
                sizes: args.sizes,
                orders: args.orders,
                strategies: args.strategies,
                caps: args.caps,
                spreads: args.spreads,
                concurrency_limit: args.concurrency_limit,
                server_env: args.server_env,
                select_any_up_to: args.select_any_up_to,
                floor: !args.no_floor,
                warm_up: !args.no_warm_up,
            })
            .await?;
            print!("{}", bench::table(&report));
            if let Some(path) = args.plot {
                std::fs::write(&path, bench::plot(&report))?;
                println!("wrote {}", path.display());
            }
            if let Some(path) = args.json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
                println!("wrote {}", path.display());
            }
            Ok(0)
        }
        Command::Register(args) => {
            let admin = AdminClient::new(&args.restate.admin_url, args.restate.token);
            let target = match (args.arn, args.uri) {
                (Some(arn), _) => DeploymentTarget::Lambda {
                    arn,
                    assume_role_arn: args.assume_role_arn,
                },
                (None, Some(uri)) => DeploymentTarget::Http { uri },
                (None, None) => unreachable!("clap requires --arn or --uri"),
            };
            let options = RegisterOptions {
                force: args.force,
                breaking: args.breaking,
                dry_run: args.dry_run,
            };
            let deployment = register::register(&admin, target, options).await?;
            print!("{}", register::describe(&deployment, args.dry_run));
            Ok(0)
        }
        Command::Invoke(args) => {
            let output = args.watch.output.into();
            let task = match invoke::task_from(args.description.as_deref(), args.input.as_deref()) {
                Ok(task) => task,
                Err(e) => {
                    let message = format!("{e:#}");
                    return Ok(attach::fail(
                        output,
                        invoke::exit::BAD_INPUT,
                        "rejected",
                        None,
                        &message,
                    ));
                }
            };
            let options = invoke::InvokeOptions {
                task,
                idempotency_key: args.idempotency_key,
                send_only: args.send,
                output,
                display: args.watch.display(),
            };
            let mut endpoints = args.restate.endpoints();
            if let Some(cap) = args.max_concurrency {
                endpoints.ingress = endpoints
                    .ingress
                    .with_header("x-fanout-max-concurrency", cap.to_string());
            }
            if let Some(strategy) = args.fan_in {
                endpoints.ingress = endpoints.ingress.with_header("x-fanout-fan-in", strategy);
            }
            let failure_policy = match (args.fail_fast, args.tolerate_failures, args.min_successful)
            {
                (true, _, _) => Some("fail-fast".to_owned()),
                (_, Some(tolerance), _) => Some(format!("tolerate:{tolerance}")),
                (_, _, Some(n)) => Some(format!("min-successful:{n}")),
                _ => None,
            };
            if let Some(policy) = failure_policy {
                endpoints.ingress = endpoints
                    .ingress
                    .with_header("x-fanout-failure-policy", policy);
            }
            Ok(invoke::run(&endpoints, options).await)
        }
        Command::Attach(args) => {
            let endpoints = args.restate.endpoints();
            let (output, display) = (args.watch.output.into(), args.watch.display());
            Ok(attach::run(&endpoints, &args.id, output, display).await)
        }
        Command::Status(args) => {
            let endpoints = args.restate.endpoints();
            let observer = endpoints.observer();
            let admin_url = &args.restate.admin_url;
            Ok(status::run(&observer, admin_url, &args.id, args.output.into()).await)
        }
        Command::Cancel(args) => {
            let options = cancel::CancelOptions {
                no_wait: args.no_wait,
                timeout: std::time::Duration::from_secs(args.timeout),
                output: args.output.into(),
            };
            Ok(cancel::run(&args.restate.endpoints(), &args.id, options).await)
        }
        Command::Runs(args) => {
            let options = runs::RunsOptions {
                status: args.status.into(),
                limit: args.limit,
                output: args.output.into(),
            };
            Ok(runs::run(&args.restate.endpoints(), options).await)
        }
    }
}

fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("error: {error:#}");
    ExitCode::FAILURE
}
