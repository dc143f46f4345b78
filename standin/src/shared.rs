//! The state every part of a running stand-in shares: its functions (given at start or
//! created through the control plane), the code directory, the meter, the armed faults.

use crate::config::StandInConfig;
use crate::faults::Faults;
use crate::functions::Function;
use crate::instances::{Environment, Instance, LogSink};
use crate::metering::{self, Meter};
use crate::names;
use crate::versions::Config;
use crate::versions::Version;
use anyhow::Context as _;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

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
    pub meter: Meter,
    pub environment: Environment,
    pub next_instance: AtomicU64,
    pub init_bound: Duration,
    /// Faults armed for the next invokes (none unless a test or an operator asks).
    pub faults: Faults,
}

impl Shared {
    /// The state `config` describes: its functions checked and built, its files opened.
    pub(crate) fn new(config: &StandInConfig, init_bound: Duration) -> anyhow::Result<Self> {
        let code_root = tempfile::Builder::new()
            .prefix("fanout-standin-")
            .tempdir()
            .context("cannot create the stand-in's code directory")?;
        let meter = Meter::open(config.metering_path.as_deref())?;
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
        let logs = match &config.log_path {
            Some(path) => LogSink::File(Arc::new(Mutex::new(
                metering::open_append(path)
                    .with_context(|| format!("cannot open the log file {}", path.display()))?,
            ))),
            None => LogSink::Stderr,
        };
        Ok(Shared {
            region: config.region.clone(),
            account: config.account.clone(),
            functions: RwLock::new(functions),
            retired: Mutex::new(Vec::new()),
            code_root,
            meter,
            environment: Environment {
                region: config.region.clone(),
                logs,
            },
            next_instance: AtomicU64::new(1),
            init_bound,
            faults: Faults::default(),
        })
    }

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

    /// The function `name` and the version `qualifier` names (what an unqualified invoke runs
    /// when `None`); `None` if either does not exist.
    pub(crate) fn version_of(
        &self,
        name: &str,
        qualifier: Option<&str>,
    ) -> Option<(Arc<Function>, Version)> {
        let function = self.function(name)?;
        let version = function.resolve(qualifier)?;
        Some((function, version))
    }

    /// Starts instances of `version` of `function` until `count` of them (at most the
    /// function's concurrency limit) wait idle, each through its init (it has asked for its
    /// first event), as provisioned concurrency keeps environments ready on Lambda. Returns
    /// how many it started.
    pub(crate) async fn warm(
        self: &Arc<Self>,
        function: &Arc<Function>,
        version: &Version,
        count: usize,
    ) -> anyhow::Result<usize> {
        // Processes that start at once share the machine's cores: a few at a time finish
        // their inits sooner than hundreds together.
        const STARTING_AT_ONCE: usize = 8;
        let missing = count
            .min(function.concurrency_limit)
            .saturating_sub(function.idle_of(version));
        let permits = Arc::new(tokio::sync::Semaphore::new(STARTING_AT_ONCE));
        let mut starts = tokio::task::JoinSet::new();
        for _ in 0..missing {
            let (shared, function, version) =
                (Arc::clone(self), Arc::clone(function), version.clone());
            let permits = Arc::clone(&permits);
            starts.spawn(async move {
                let _permit = permits.acquire_owned().await?;
                let id = shared.next_instance.fetch_add(1, Ordering::Relaxed);
                let instance =
                    Instance::spawn(id, &function.name, &version, &shared.environment).await?;
                if let Err(e) = initialised(&instance, shared.init_bound).await {
                    instance.kill();
                    return Err(e);
                }
                anyhow::ensure!(
                    function.add_idle(instance),
                    "function {} stopped taking instances while they started",
                    function.name
                );
                Ok(())
            });
        }
        let mut started = 0;
        while let Some(joined) = starts.join_next().await {
            joined.context("an instance start panicked")??;
            started += 1;
        }
        Ok(started)
    }

    pub(crate) fn all_functions(&self) -> Vec<Arc<Function>> {
        let mut all: Vec<Arc<Function>> = read(&self.functions).values().cloned().collect();
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.retain(|f| f.strong_count() > 0);
        all.extend(retired.iter().filter_map(Weak::upgrade));
        all
    }

    pub(crate) fn close_all(&self) -> Vec<Arc<Instance>> {
        self.all_functions()
            .iter()
            .flat_map(|f| f.close())
            .collect()
    }
}

/// Waits until `instance`'s bootstrap asks for its first event, the end of its init on
/// Lambda; an error if it exits, reports an init error or takes longer than `bound`.
async fn initialised(instance: &Instance, bound: Duration) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    while instance.runtime.first_next().is_none() {
        if let Some(ended) = instance.runtime.ended() {
            anyhow::bail!("an instance ended during its init: {}", ended.describe());
        }
        anyhow::ensure!(
            started.elapsed() < bound,
            "an instance did not finish its init within {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

pub(crate) fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}
