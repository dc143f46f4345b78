//! # fanout-standin: a local AWS Lambda
//!
//! The real `bootstrap` runs unchanged, and restate-server (or aws-sdk-lambda, or any tool
//! that deploys to Lambda) reaches it through `AWS_ENDPOINT_URL_LAMBDA=`[`StandIn::endpoint_url`].
//! Nothing in it is specific to fanout: any Restate-on-Lambda project can run its handler here.
//!
//! - `invoke_api`: Lambda's Invoke API (`POST /2015-03-31/functions/{name}/invocations`)
//!   with Lambda's status codes, error types and headers, plus `GET /fanout/health`,
//!   `GET /fanout/metrics` (the [`InvocationRecord`]s as a JSON array) and
//!   `POST /fanout/instances/kill?function=NAME[&path=HANDLER]` (SIGKILL every busy instance,
//!   or those running an event for that Restate handler; a test hook), and `POST /fanout/faults`
//!   / `GET /fanout/faults` (arm faults for the next invokes, see `faults`; tallies).
//! - `faults`: 429s, 5xx, lost responses and timeouts on request, as Lambda produces them.
//! - `control_plane`: the part of Lambda's control-plane API a deploy tool uses (CreateFunction,
//!   GetFunction, GetFunctionConfiguration, UpdateFunctionCode, UpdateFunctionConfiguration,
//!   PublishVersion, ListVersionsByFunction, ListFunctions, DeleteFunction) on the same port,
//!   with Lambda's wire shapes, so aws-sdk-lambda deploys to the stand-in as to AWS. Uploaded
//!   zips are extracted under a directory the stand-in removes when it goes.
//! - `runtime_api`: the Runtime API, one listener per instance.
//! - `instances`: instances as child processes, warm reuse, the per-function concurrency
//!   limit, and kill-on-drop so no process outlives the stand-in.
//! - `invocation`: one invocation's life, with Lambda's bounds (start-up, timeout, payload
//!   sizes) and its failure modes (`Runtime.ExitError`, `Sandbox.Timedout`, ...).
//! - `metering`: what each invocation would cost and weigh, in memory and as JSON lines.
//!
//! Each instance runs in its own process group, and the whole group is SIGKILLed when the
//! instance is discarded, so helpers a bootstrap starts go with it (unless they leave the group).
//!
//! Not modelled: aliases, async-invocation queues and retries (an `Event` invoke just runs in
//! the background), and memory limits (the size is only reported to the function).

mod api;
mod control_plane;
#[cfg(test)]
mod control_plane_tests;
mod faults;
mod hooks;
mod instances;
mod invocation;
mod invoke_api;
mod metering;
mod names;
pub mod process;
mod router;
mod runtime_api;
#[cfg(test)]
mod tests;

pub use faults::{FaultCounts, FaultPlan};
pub use metering::InvocationRecord;

use anyhow::Context as _;
use instances::{Config, Environment, Function, Instance, LogSink};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Lambda's limit on a synchronous request's payload and on a response, in bytes.
pub const PAYLOAD_LIMIT: usize = 6_291_456;

/// How long a new instance may take to ask for its first event before the invocation fails
/// with `Runtime.InitError` (Lambda allows 10 s of init for on-demand functions).
pub const INIT_BOUND: Duration = Duration::from_secs(10);

/// Idle instances older than this are stopped, as Lambda recycles unused environments.
const IDLE_TTL: Duration = Duration::from_secs(10 * 60);

#[derive(Debug, Clone)]
pub struct StandInConfig {
    /// Where the Invoke API listens; port 0 picks a free one.
    pub bind: SocketAddr,
    pub region: String,
    pub account: String,
    /// JSON-lines file that gets one [`InvocationRecord`] per invocation (appended to).
    pub metering_path: Option<PathBuf>,
    /// Instances' stdout and stderr, appended line by line; `None` passes them to our stderr.
    pub log_path: Option<PathBuf>,
    pub functions: Vec<FunctionSpec>,
}

impl Default for StandInConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            region: "us-east-1".into(),
            account: "000000000000".into(),
            metering_path: None,
            log_path: None,
            functions: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct FunctionSpec {
    pub name: String,
    pub memory_mb: u32,
    /// Per invocation, from the event being handed out; `Sandbox.Timedout` past it.
    pub timeout: Duration,
    /// Simultaneously busy instances across all versions; more gets 429.
    pub concurrency_limit: usize,
    /// Extra environment for the function's processes.
    pub env: Vec<(String, String)>,
    pub versions: Vec<VersionSpec>,
}

impl FunctionSpec {
    /// 128 MB, 60 s, Lambda's default regional limit of 1000, no versions yet.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            memory_mb: 128,
            timeout: Duration::from_secs(60),
            concurrency_limit: 1000,
            env: Vec::new(),
            versions: Vec::new(),
        }
    }
}

/// A published version: an immutable binary, run as the `bootstrap` of `provided.al2023`.
#[derive(Debug, Clone)]
pub struct VersionSpec {
    pub version: String,
    pub binary: PathBuf,
}

impl VersionSpec {
    pub fn new(version: impl Into<String>, binary: impl Into<PathBuf>) -> Self {
        Self {
            version: version.into(),
            binary: binary.into(),
        }
    }
}

/// A running stand-in. Dropping it (or [`StandIn::shutdown`]) kills every instance.
pub struct StandIn {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: Option<JoinHandle<()>>,
    reaper: JoinHandle<()>,
}

/// State the HTTP handlers and invocations share.
pub(crate) struct Shared {
    pub region: String,
    pub account: String,
    /// Given at start or created through the control plane.
    pub functions: RwLock<HashMap<String, Arc<Function>>>,
    /// Deleted through the control plane but maybe still finishing invocations; shutdown
    /// reaches their instances here.
    pub retired: Mutex<Vec<Weak<Function>>>,
    /// Where uploaded deployment packages are extracted; removed with the stand-in.
    pub code_root: tempfile::TempDir,
    pub meter: metering::Meter,
    pub environment: Environment,
    pub next_instance: AtomicU64,
    pub init_bound: Duration,
    /// Faults armed for the next invokes (none unless a test or an operator asks).
    pub faults: faults::Faults,
}

impl Shared {
    pub(crate) fn arn(&self, function: &str, qualifier: Option<&str>) -> String {
        names::function_arn(&self.region, &self.account, function, qualifier)
    }

    pub(crate) fn function(&self, name: &str) -> Option<Arc<Function>> {
        read(&self.functions).get(name).cloned()
    }

    /// SIGKILLs the busy instances of `function` (those running an event whose path contains
    /// `path`, when given) and counts them as injected faults; `None` if there is no such
    /// function.
    pub(crate) fn kill_busy(&self, function: &str, path: Option<&str>) -> Option<usize> {
        let killed = self.function(function)?.kill_running_where(path);
        self.faults.count_killed(killed);
        Some(killed)
    }

    fn all_functions(&self) -> Vec<Arc<Function>> {
        let mut all: Vec<Arc<Function>> = read(&self.functions).values().cloned().collect();
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.retain(|f| f.strong_count() > 0);
        all.extend(retired.iter().filter_map(Weak::upgrade));
        all
    }

    fn close_all(&self) -> Vec<Arc<Instance>> {
        self.all_functions()
            .iter()
            .flat_map(|f| f.close())
            .collect()
    }
}

impl StandIn {
    pub async fn start(config: StandInConfig) -> anyhow::Result<StandIn> {
        Self::start_with(config, INIT_BOUND).await
    }

    pub(crate) async fn start_with(
        config: StandInConfig,
        init_bound: Duration,
    ) -> anyhow::Result<StandIn> {
        let code_root = tempfile::Builder::new()
            .prefix("fanout-standin-")
            .tempdir()
            .context("cannot create the stand-in's code directory")?;
        let mut shared = Shared {
            region: config.region.clone(),
            account: config.account.clone(),
            functions: RwLock::new(HashMap::new()),
            retired: Mutex::new(Vec::new()),
            code_root,
            meter: metering::Meter::open(config.metering_path.as_deref())?,
            environment: Environment {
                region: config.region.clone(),
                logs: LogSink::Stderr,
            },
            next_instance: AtomicU64::new(1),
            init_bound,
            faults: faults::Faults::default(),
        };
        let mut functions = HashMap::new();
        for spec in &config.functions {
            anyhow::ensure!(
                names::parse_function_name(&spec.name, None, &config.region, &config.account)
                    .is_ok_and(|t| t.name == spec.name && t.qualifier.is_none()),
                "{:?} is not a valid Lambda function name",
                spec.name
            );
            let function = Function::new(spec, Config::given_at_start(spec, &config.account))?;
            anyhow::ensure!(
                functions
                    .insert(spec.name.clone(), Arc::new(function))
                    .is_none(),
                "function {} is configured twice",
                spec.name
            );
        }
        shared.functions = RwLock::new(functions);
        shared.environment.logs = match &config.log_path {
            Some(path) => LogSink::File(Arc::new(Mutex::new(
                metering::open_append(path)
                    .with_context(|| format!("cannot open the log file {}", path.display()))?,
            ))),
            None => LogSink::Stderr,
        };
        let listener = TcpListener::bind(config.bind)
            .await
            .with_context(|| format!("cannot listen on {}", config.bind))?;
        let addr = listener.local_addr()?;

        let shared = Arc::new(shared);
        let (stop, mut stopped) = watch::channel(false);
        let router = router::router(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            });
            if let Err(e) = serve.await {
                tracing::error!("the Lambda stand-in's listener failed: {e}");
            }
        });
        let reaper = tokio::spawn(reap_idle(Arc::downgrade(&shared)));
        tracing::info!("local Lambda stand-in listening on http://{addr}");
        Ok(StandIn {
            shared,
            addr,
            stop,
            server: Some(server),
            reaper,
        })
    }

    /// `http://127.0.0.1:PORT`, for `AWS_ENDPOINT_URL_LAMBDA`.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `arn:aws:lambda:REGION:ACCOUNT:function:NAME:VERSION`, what Restate registers.
    pub fn version_arn(&self, function: &str, version: &str) -> String {
        self.shared.arn(function, Some(version))
    }

    /// Publishes another version while running; invocations already pinned to older versions
    /// keep running on them.
    pub fn add_version(&self, function: &str, version: VersionSpec) -> anyhow::Result<()> {
        self.shared
            .function(function)
            .with_context(|| format!("no function named {function:?}"))?
            .add_version(version)
    }

    /// The functions there are now, given at start or created through the control plane.
    pub fn function_names(&self) -> Vec<String> {
        let mut names: Vec<String> = read(&self.shared.functions).keys().cloned().collect();
        names.sort();
        names
    }

    /// Every invocation metered so far, in completion order.
    pub fn records(&self) -> Vec<InvocationRecord> {
        self.shared.meter.snapshot()
    }

    /// Arms faults for the next invokes (see [`FaultPlan`]); they add to those still armed.
    pub fn arm_faults(&self, plan: &FaultPlan) {
        self.shared.faults.arm(plan);
    }

    /// Disarms every fault not injected yet.
    pub fn clear_faults(&self) {
        self.shared.faults.clear();
    }

    /// How many faults were injected so far (kills included), and how many are still armed.
    pub fn fault_counts(&self) -> FaultCounts {
        self.shared.faults.counts()
    }

    /// SIGKILLs the busy instances of `function`, only those running an event whose path
    /// contains `path` when given (e.g. `runSubtask`): a crash mid-event. Returns how many.
    pub fn kill_busy(&self, function: &str, path: Option<&str>) -> anyhow::Result<usize> {
        self.shared
            .kill_busy(function, path)
            .with_context(|| format!("no function named {function:?}"))
    }

    /// Kills every instance, waits for the processes to be reaped, and stops listening.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for instance in self.shared.close_all() {
            let _ =
                tokio::time::timeout(Duration::from_secs(5), instance.runtime.wait_ended()).await;
        }
        if let Some(server) = self.server.take() {
            // In-flight invokes end promptly now that their instances are dead.
            let abort = server.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), server)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.reaper.abort();
        if let Some(server) = &self.server {
            server.abort();
        }
        // Each instance's supervisor gets a kill request; the children are `kill_on_drop` as
        // well, so they also die if the runtime is torn down before the supervisors run.
        drop(self.shared.close_all());
    }
}

async fn reap_idle(shared: Weak<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        for function in shared.all_functions() {
            function.reap_idle(IDLE_TTL);
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}
