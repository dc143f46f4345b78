//! # fanout-standin: a local AWS Lambda
//!
//! A Restate-on-Lambda project's real `bootstrap` runs here unchanged, without AWS:
//! restate-server invokes it through Lambda's Invoke API, a deploy tool (aws-sdk-lambda, the
//! AWS CLI) creates functions and publishes versions through Lambda's control plane, and each
//! instance is a child process that talks to the Runtime API as on Lambda. Nothing in it is
//! specific to fanout.
//!
//! ## Using it from another project
//!
//! ```no_run
//! use fanout_standin::{FunctionSpec, StandIn, StandInConfig, VersionSpec};
//!
//! # async fn demo() -> anyhow::Result<()> {
//! let mut function = FunctionSpec::new("my-handler");
//! function.versions.push(VersionSpec::new("1", "target/debug/my-handler"));
//! let standin = StandIn::start(StandInConfig {
//!     functions: vec![function],
//!     ..StandInConfig::default()
//! })
//! .await?;
//! // Start restate-server (and any AWS SDK client) with AWS_ENDPOINT_URL_LAMBDA set to this,
//! // then register the deployment `standin.version_arn("my-handler", "1")`.
//! let endpoint = standin.endpoint_url();
//! # let _ = endpoint;
//! standin.shutdown().await; // or drop it: every instance is killed either way
//! # Ok(())
//! # }
//! ```
//!
//! Without functions at start, deploy with the tools you use for Lambda, pointed at
//! [`StandIn::endpoint_url`] (`AWS_ENDPOINT_URL_LAMBDA`); any credentials do, none are checked.
//! [`StandIn::records`] (or `GET /fanout/metrics`) tells what each invocation cost; faults on
//! request ([`FaultPlan`]) make the stand-in fail the way Lambda does.
//!
//! ## How the modules map to responsibilities
//!
//! | module | responsibility |
//! |---|---|
//! | `lib` | [`StandIn`]: start, the public handle, shutdown |
//! | `config` | what a user gives at start ([`StandInConfig`], [`FunctionSpec`], [`VersionSpec`]), and Lambda's limits |
//! | `shared` | the state every part shares: the functions, the code directory, the meter, the faults |
//! | `router` | every route of the port in one table |
//! | `api` | what every answer has in common: the request id, Lambda's error shape (`ApiError`) |
//! | `invoke_api` | the Invoke API: which function and version, payload limit, faults, invocation type |
//! | `control_plane` | CreateFunction, GetFunction, UpdateFunctionCode, PublishVersion, ... with Lambda's wire shapes; `requests` checks their bodies, `package` unpacks their zips, `publish` makes and describes versions |
//! | `hooks` | `/fanout/*`: health, metrics, arming faults, killing busy instances |
//! | `invocation` | one invocation's life within Lambda's bounds, and its failure modes (`Runtime.ExitError`, `Sandbox.Timedout`, ...) |
//! | `functions` | a function's versions and its pool of instances: warm reuse, the concurrency limit, retiring versions |
//! | `instances` | one instance: the bootstrap as a child process in its own process group, Lambda's environment, its logs |
//! | `versions` | what a version runs (binary, configuration, uploaded code) and the set the control plane edits |
//! | `runtime_api` | the Runtime API, one listener per instance |
//! | `faults` | 429s, 5xx, lost responses and timeouts on request, as Lambda produces them |
//! | `metering` | what each invocation would cost and weigh, in memory and as JSON lines |
//! | `names` | function names and ARNs as Lambda accepts them, version order, Lambda's date formats |
//! | [`process`] | child processes that never outlive their owner (public: the CLI supervises restate-server with it) |
//!
//! Each instance runs in its own process group, and the whole group is SIGKILLed when the
//! instance is discarded, so helpers a bootstrap starts go with it (unless they leave the group).
//!
//! Not modelled: aliases, async-invocation queues and retries (an `Event` invoke just runs in
//! the background), and memory limits (the size is only reported to the function).

mod api;
mod config;
mod control_plane;
#[cfg(test)]
mod control_plane_tests;
mod faults;
mod functions;
mod hooks;
mod instances;
mod invocation;
mod invoke_api;
mod metering;
mod names;
pub mod process;
mod router;
mod runtime_api;
mod shared;
#[cfg(test)]
mod tests;
mod versions;

pub use config::{FunctionSpec, StandInConfig, VersionSpec};
pub use faults::{FaultCounts, FaultPlan};
pub use metering::InvocationRecord;

use anyhow::Context as _;
use config::{IDLE_TTL, INIT_BOUND};
use shared::{Shared, read};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running stand-in. Dropping it (or [`StandIn::shutdown`]) kills every instance.
pub struct StandIn {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: Option<JoinHandle<()>>,
    reaper: JoinHandle<()>,
}

impl StandIn {
    /// Listens on `config.bind` with `config.functions` ready to invoke; each function's first
    /// instance starts with its first invoke, as on Lambda.
    pub async fn start(config: StandInConfig) -> anyhow::Result<StandIn> {
        Self::start_with(config, INIT_BOUND).await
    }

    pub(crate) async fn start_with(
        config: StandInConfig,
        init_bound: Duration,
    ) -> anyhow::Result<StandIn> {
        let shared = Shared::new(&config, init_bound)?;
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

    /// Starts instances of `function` (the version an unqualified invoke runs, or
    /// `qualifier`) until `count` of them, at most its concurrency limit, wait idle past their
    /// init: provisioned concurrency, so that invocations meet warm instances. Returns how many
    /// it started. On this machine hundreds of processes starting at once take up to seconds
    /// each, which Lambda's separate hosts do not: a benchmark warms its pool so that no run
    /// pays for instances another run reuses.
    pub async fn warm(
        &self,
        function: &str,
        qualifier: Option<&str>,
        count: usize,
    ) -> anyhow::Result<usize> {
        let (found, version) = self
            .shared
            .version_of(function, qualifier)
            .with_context(|| format!("no function {}", self.shared.arn(function, qualifier)))?;
        self.shared.warm(&found, &version, count).await
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
