//! Functions, their execution environments ("instances") and the concurrency accounting.
//!
//! An instance is one child process of a version's binary plus its own Runtime API listener.
//! It runs one event at a time; between events it waits idle in its function's pool and is
//! reused warm. The function's limit counts busy instances across all of its versions, as
//! Lambda's reserved concurrency does.
//!
//! Every [`Version`] carries its own [`Config`] (memory, timeout, environment, and what the
//! control plane reports) and a stand-in-wide `revision`: an instance only ever serves the
//! revision it was started for, so a new `$LATEST` or a deleted version never reuses an
//! instance of other code. Retired revisions' busy instances finish their event and are then
//! discarded instead of going back to the pool.

use super::config::{FunctionSpec, VersionSpec};
use super::names::{LATEST, last_modified, log_stream_name, version_order};
use super::runtime_api::{self, Ended, Event, RuntimeShared};
use std::collections::{HashMap, HashSet};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

/// Where instances' stdout and stderr go, line by line.
#[derive(Clone)]
pub(crate) enum LogSink {
    File(Arc<Mutex<std::fs::File>>),
    Stderr,
}

impl LogSink {
    fn write_line(&self, line: &[u8]) {
        use std::io::Write as _;
        let result = match self {
            Self::File(file) => file
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .write_all(line),
            Self::Stderr => std::io::stderr().lock().write_all(line),
        };
        if let Err(e) = result {
            tracing::warn!("cannot write an instance's log line: {e}");
        }
    }
}

/// What every instance of the stand-in shares, whatever its function.
pub(crate) struct Environment {
    pub region: String,
    pub logs: LogSink,
}

/// What a version runs with and what the control plane reports about it. A published
/// version's is frozen; `$LATEST` gets a new one on every change.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub memory_mb: u32,
    pub timeout: Duration,
    pub env: Vec<(String, String)>,
    pub role: String,
    pub handler: String,
    pub runtime: String,
    pub architectures: Vec<String>,
    pub description: String,
    /// The uploaded code, for versions made through the control plane.
    pub code: Option<Arc<Code>>,
    /// For versions given at start: the SHA-256 of the binary, computed when first asked.
    pub binary_sha256: OnceLock<String>,
    pub last_modified: String,
    pub revision_id: String,
}

impl Config {
    /// A function given at start, as the control plane reports it: no uploaded code, so
    /// `provided.al2023` running the version's binary natively.
    pub(crate) fn given_at_start(spec: &FunctionSpec, account: &str) -> Self {
        Config {
            memory_mb: spec.memory_mb,
            timeout: spec.timeout,
            env: spec.env.clone(),
            role: format!("arn:aws:iam::{account}:role/fanout-standin"),
            handler: "bootstrap".into(),
            runtime: "provided.al2023".into(),
            architectures: vec![host_architecture().into()],
            description: String::new(),
            code: None,
            binary_sha256: OnceLock::new(),
            last_modified: last_modified(SystemTime::now()),
            revision_id: uuid::Uuid::new_v4().to_string(),
        }
    }
}

/// `x86_64` or `arm64`: what the stand-in's host runs natively.
pub(crate) fn host_architecture() -> &'static str {
    if cfg!(target_arch = "aarch64") {
        "arm64"
    } else {
        "x86_64"
    }
}

/// An uploaded deployment package, extracted into its own directory; the directory goes
/// when the last version and instance using it do.
#[derive(Debug)]
pub(crate) struct Code {
    pub dir: PathBuf,
    /// Base64 of the SHA-256 of the zip, as Lambda's `CodeSha256`.
    pub sha256: String,
    pub size: u64,
}

impl Drop for Code {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A runnable version of a function: `$LATEST` or a published one.
#[derive(Debug, Clone)]
pub(crate) struct Version {
    pub version: String,
    pub binary: PathBuf,
    pub config: Arc<Config>,
    /// Unique across the stand-in; instances are matched on it.
    pub revision: u64,
}

static NEXT_REVISION: AtomicU64 = AtomicU64::new(1);

impl Version {
    pub(crate) fn new(version: String, binary: PathBuf, config: Arc<Config>) -> Self {
        Self {
            version,
            binary,
            config,
            revision: NEXT_REVISION.fetch_add(1, Ordering::Relaxed),
        }
    }
}

/// A function's versions, as the control plane edits them.
pub(crate) struct Versions {
    /// `$LATEST`, once code was uploaded through the control plane. Functions given at start
    /// have none, and an unqualified invoke runs their highest published version.
    pub latest: Option<Version>,
    /// In publishing order.
    pub published: Vec<Version>,
    /// Lambda never reuses a version number, even after the version is deleted.
    pub next_number: u64,
}

/// A function: its versions and its pool of instances.
pub(crate) struct Function {
    pub name: String,
    pub concurrency_limit: usize,
    /// The configuration of versions added with [`Function::add_version`].
    pub defaults: Arc<Config>,
    versions: Mutex<Versions>,
    pool: Mutex<Pool>,
}

#[derive(Default)]
struct Pool {
    /// Busy slots, counted from the moment an invocation claims one (a cold start included).
    busy: usize,
    /// Instances running an event, by number; the kill hook reaches them here.
    running: HashMap<u64, Arc<Instance>>,
    idle: Vec<Arc<Instance>>,
    /// Shutting down: no new invocations, every instance killed.
    closed: bool,
    /// Deleted through the control plane: busy instances finish, none goes back to idle.
    retired: bool,
    /// Revisions that are no longer invocable (replaced `$LATEST`s, deleted versions).
    dead: HashSet<u64>,
}

pub(crate) enum Acquired {
    Warm(Lease),
    /// A slot is held; the caller spawns the instance and [`Lease::attach`]es it.
    Cold(Lease),
    Throttled,
}

impl Function {
    /// A function given at start: its versions share `defaults`, and it has no `$LATEST`.
    pub(crate) fn new(spec: &FunctionSpec, defaults: Config) -> anyhow::Result<Self> {
        let function = Self::empty(&spec.name, spec.concurrency_limit, defaults);
        for version in &spec.versions {
            function.add_version(version.clone())?;
        }
        Ok(function)
    }

    /// A function with no versions at all yet (the control plane adds `$LATEST`).
    pub(crate) fn empty(name: &str, concurrency_limit: usize, defaults: Config) -> Self {
        Self {
            name: name.to_owned(),
            concurrency_limit,
            defaults: Arc::new(defaults),
            versions: Mutex::new(Versions {
                latest: None,
                published: Vec::new(),
                next_number: 1,
            }),
            pool: Mutex::new(Pool::default()),
        }
    }

    /// `None` and `$LATEST` mean `$LATEST` if the function has one, else the highest
    /// published version.
    pub(crate) fn resolve(&self, qualifier: Option<&str>) -> Option<Version> {
        let versions = lock(&self.versions);
        match qualifier {
            None | Some(LATEST) => versions.latest.clone().or_else(|| {
                versions
                    .published
                    .iter()
                    .max_by(|a, b| version_order(&a.version, &b.version))
                    .cloned()
            }),
            Some(q) => versions.published.iter().find(|v| v.version == q).cloned(),
        }
    }

    pub(crate) fn add_version(&self, version: VersionSpec) -> anyhow::Result<()> {
        let mut versions = lock(&self.versions);
        check_version(&self.name, &versions.published, &version)?;
        if let Ok(n) = version.version.parse::<u64>() {
            versions.next_number = versions.next_number.max(n.saturating_add(1));
        }
        let version = Version::new(version.version, version.binary, Arc::clone(&self.defaults));
        versions.published.push(version);
        Ok(())
    }

    /// Runs `edit` on the versions under their lock (keep it short: no I/O). Revisions it
    /// returns are retired: their idle instances are killed and busy ones discarded after.
    pub(crate) fn edit_versions<R>(&self, edit: impl FnOnce(&mut Versions) -> (R, Vec<u64>)) -> R {
        let (result, retired) = edit(&mut lock(&self.versions));
        if !retired.is_empty() {
            let mut pool = lock(&self.pool);
            pool.dead.extend(retired.iter().copied());
            pool.idle.retain(|instance| {
                let keep = !retired.contains(&instance.revision);
                if !keep {
                    instance.kill();
                }
                keep
            });
        }
        result
    }

    /// Deleted through the control plane: idle instances are killed now, busy ones when their
    /// event is done.
    pub(crate) fn retire(&self) {
        let mut pool = lock(&self.pool);
        pool.retired = true;
        for instance in pool.idle.drain(..) {
            instance.kill();
        }
    }

    pub(crate) fn acquire(self: &Arc<Self>, version: &Version) -> Acquired {
        let mut pool = lock(&self.pool);
        if pool.closed || pool.busy >= self.concurrency_limit {
            return Acquired::Throttled;
        }
        pool.busy += 1;
        let mut lease = Lease {
            function: Arc::clone(self),
            instance: None,
            keep_warm: false,
        };
        // Most recently used first: its caches are the warmest, and the others may be reaped.
        while let Some(pos) = pool
            .idle
            .iter()
            .rposition(|i| i.revision == version.revision)
        {
            let instance = pool.idle.remove(pos);
            if instance.runtime.ended().is_none() {
                pool.running.insert(instance.id, Arc::clone(&instance));
                lease.instance = Some(instance);
                return Acquired::Warm(lease);
            }
            instance.kill();
        }
        Acquired::Cold(lease)
    }

    /// SIGKILLs the instances running an event whose path contains `path` (all busy ones when
    /// `None`); the invocations see a crash. Returns how many.
    pub(crate) fn kill_running_where(&self, path: Option<&str>) -> usize {
        let pool = lock(&self.pool);
        let mut killed = 0;
        for instance in pool.running.values() {
            let hit = match path {
                None => true,
                Some(wanted) => lock(&instance.event_path)
                    .as_deref()
                    .is_some_and(|p| p.contains(wanted)),
            };
            if hit {
                instance.kill();
                killed += 1;
            }
        }
        killed
    }

    /// Stops taking invocations and kills every instance, busy or idle. Returns them so the
    /// caller can wait for the processes to be gone.
    pub(crate) fn close(&self) -> Vec<Arc<Instance>> {
        let mut pool = lock(&self.pool);
        pool.closed = true;
        let mut all: Vec<Arc<Instance>> = pool.idle.drain(..).collect();
        all.extend(pool.running.values().cloned());
        for instance in &all {
            instance.kill();
        }
        all
    }

    /// Lambda recycles environments that sat unused; this keeps long local runs from piling
    /// up processes after a burst.
    pub(crate) fn reap_idle(&self, idle_for: Duration) {
        let mut pool = lock(&self.pool);
        pool.idle.retain(|instance| {
            let keep = instance.idle_since().elapsed() < idle_for;
            if !keep {
                instance.kill();
            }
            keep
        });
    }
}

fn check_version(
    function: &str,
    existing: &[Version],
    version: &VersionSpec,
) -> anyhow::Result<()> {
    let v = &version.version;
    anyhow::ensure!(
        !v.is_empty()
            && v != LATEST
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "function {function}: {v:?} is not a valid version"
    );
    anyhow::ensure!(
        !existing.iter().any(|e| &e.version == v),
        "function {function}: version {v} is already published"
    );
    anyhow::ensure!(
        version.binary.is_file(),
        "function {function} version {v}: bootstrap {} is not a file",
        version.binary.display()
    );
    Ok(())
}

/// One busy slot of a function, and the instance in it once there is one. Dropping it frees
/// the slot; the instance goes back to the pool only if [`Lease::keep_warm`] was called,
/// otherwise it is killed, so an invocation that fails or panics can never leak either.
pub(crate) struct Lease {
    function: Arc<Function>,
    instance: Option<Arc<Instance>>,
    keep_warm: bool,
}

impl Lease {
    pub(crate) fn function(&self) -> &Arc<Function> {
        &self.function
    }

    pub(crate) fn instance(&self) -> Option<&Arc<Instance>> {
        self.instance.as_ref()
    }

    pub(crate) fn attach(&mut self, instance: Arc<Instance>) {
        let mut pool = lock(&self.function.pool);
        if pool.closed {
            // Shutdown raced the cold start: the new process must not outlive the stand-in.
            instance.kill();
        }
        pool.running.insert(instance.id, Arc::clone(&instance));
        self.instance = Some(instance);
    }

    pub(crate) fn keep_warm(&mut self) {
        self.keep_warm = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut pool = lock(&self.function.pool);
        pool.busy -= 1;
        let Some(instance) = self.instance.take() else {
            return;
        };
        pool.running.remove(&instance.id);
        if self.keep_warm
            && !pool.closed
            && !pool.retired
            && !pool.dead.contains(&instance.revision)
            && instance.runtime.ended().is_none()
        {
            instance.touch();
            pool.idle.push(instance);
        } else {
            instance.kill();
        }
    }
}

/// One execution environment: a bootstrap process and its Runtime API listener.
pub(crate) struct Instance {
    pub id: u64,
    pub revision: u64,
    pub pid: Option<u32>,
    pub spawned_at: Instant,
    pub runtime: Arc<RuntimeShared>,
    events: mpsc::Sender<Event>,
    kill: Mutex<Option<oneshot::Sender<()>>>,
    idle_since: Mutex<Instant>,
    /// The path of the event it is running (Restate's handler), for targeted kills.
    pub event_path: Mutex<Option<String>>,
    /// Keeps the version's extracted code on disk while the process runs.
    _config: Arc<Config>,
    /// The supervisor (owner of the child, which is `kill_on_drop`) and the listener: aborting
    /// them when the instance is dropped is what guarantees no process outlives it.
    tasks: Vec<AbortHandle>,
}

impl Instance {
    pub(crate) async fn spawn(
        id: u64,
        function: &Function,
        version: &Version,
        environment: &Environment,
    ) -> anyhow::Result<Arc<Self>> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let runtime_api_addr = listener.local_addr()?;
        let (runtime, events) = RuntimeShared::new(version.config.timeout);
        let router = runtime_api::router(Arc::clone(&runtime));
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::warn!("a Runtime API listener failed: {e}");
            }
        });
        let server = AbortOnDrop(server.abort_handle());

        let mut command = Command::new(&version.binary);
        command
            .env_clear()
            .envs(lambda_env(
                function,
                version,
                &environment.region,
                &runtime_api_addr.to_string(),
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a kill also takes whatever the bootstrap started (a
            // shell wrapper's children, helpers), and a Ctrl-C at our terminal is ours to handle.
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = task_root(&version.binary) {
            command.current_dir(dir);
        }
        crate::process::die_with_parent(&mut command);
        let spawned_at = Instant::now();
        let mut child = command
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", version.binary.display()))?;
        let pid = child.id();
        // The pumps are left to end at EOF rather than aborted, so a crashing bootstrap's last
        // words still reach the log.
        if let Some(out) = child.stdout.take() {
            tokio::spawn(pump_lines(out, environment.logs.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(pump_lines(err, environment.logs.clone()));
        }

        let (kill_tx, kill_rx) = oneshot::channel::<()>();
        let supervised = Arc::clone(&runtime);
        let supervisor = tokio::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status,
                _ = kill_rx => {
                    kill_group(pid);
                    let _ = child.kill().await;
                    child.wait().await
                }
            };
            // Whatever the bootstrap left running dies with it, as with a Lambda sandbox.
            kill_group(pid);
            let description = match status {
                Ok(status) => describe_exit(status),
                Err(e) => format!("unknown status ({e})"),
            };
            supervised.end(Ended::Exited(description));
        });
        tracing::debug!(
            function = %function.name,
            version = %version.version,
            instance = id,
            ?pid,
            "started a Lambda instance"
        );
        let supervisor = supervisor.abort_handle();
        Ok(Arc::new(Self {
            id,
            revision: version.revision,
            pid,
            spawned_at,
            runtime,
            events,
            kill: Mutex::new(Some(kill_tx)),
            idle_since: Mutex::new(Instant::now()),
            event_path: Mutex::new(None),
            _config: Arc::clone(&version.config),
            tasks: vec![supervisor, server.disarm()],
        }))
    }

    /// Hands an event to the bootstrap's next `/next`. Fails only when the listener is gone.
    pub(crate) fn deliver(&self, event: Event) -> bool {
        self.events.try_send(event).is_ok()
    }

    /// SIGKILL, at most once; the supervisor reaps the process and reports the exit.
    pub(crate) fn kill(&self) {
        if let Some(kill) = lock(&self.kill).take() {
            let _ = kill.send(());
        }
    }

    fn touch(&self) {
        *lock(&self.idle_since) = Instant::now();
    }

    fn idle_since(&self) -> Instant {
        *lock(&self.idle_since)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // Synchronous, so even a stand-in dropped outside its runtime leaves no process behind;
        // once the supervisor has reported the exit it has already swept the group.
        if self.runtime.ended().is_none() {
            kill_group(self.pid);
        }
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// SIGKILL to the instance's process group (its leader is the bootstrap).
fn kill_group(pid: Option<u32>) {
    let Some(pgid) = pid.and_then(|p| libc::pid_t::try_from(p).ok()) else {
        return;
    };
    // SAFETY: kill(2) takes no pointers; a group that is already gone yields ESRCH, ignored.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// Aborts a task unless disarmed, so an early return in [`Instance::spawn`] leaves nothing
/// running.
struct AbortOnDrop(AbortHandle);

impl AbortOnDrop {
    fn disarm(self) -> AbortHandle {
        let handle = self.0.clone();
        std::mem::forget(self);
        handle
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The environment Lambda gives a `provided.al2023` bootstrap. The parent's variables are not
/// inherited so local AWS credentials never leak into function code.
fn lambda_env(
    function: &Function,
    version: &Version,
    region: &str,
    runtime_api: &str,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = ["PATH", "HOME", "RUST_LOG"]
        .into_iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_owned(), v)))
        .collect();
    let task_root = task_root(&version.binary)
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    let fixed = [
        ("AWS_LAMBDA_RUNTIME_API", runtime_api.to_owned()),
        ("AWS_LAMBDA_FUNCTION_NAME", function.name.clone()),
        ("AWS_LAMBDA_FUNCTION_VERSION", version.version.clone()),
        (
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
            version.config.memory_mb.to_string(),
        ),
        (
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/{}", function.name),
        ),
        (
            "AWS_LAMBDA_LOG_STREAM_NAME",
            log_stream_name(&version.version, SystemTime::now()),
        ),
        ("AWS_REGION", region.to_owned()),
        ("AWS_DEFAULT_REGION", region.to_owned()),
        ("_HANDLER", version.config.handler.clone()),
        ("AWS_EXECUTION_ENV", "AWS_Lambda_provided.al2023".to_owned()),
        ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand".to_owned()),
        ("LAMBDA_TASK_ROOT", task_root),
    ];
    env.extend(fixed.into_iter().map(|(k, v)| (k.to_owned(), v)));
    env.extend(version.config.env.iter().cloned());
    env
}

fn task_root(binary: &Path) -> Option<PathBuf> {
    let dir = binary.parent().filter(|d| !d.as_os_str().is_empty())?;
    std::path::absolute(dir).ok()
}

/// Lambda's wording in `Runtime.ExitError` messages.
fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(9)) => "signal: killed".to_owned(),
        (None, Some(sig)) => format!("signal: {sig}"),
        (None, None) => status.to_string(),
    }
}

async fn pump_lines(stream: impl AsyncRead + Unpin, sink: LogSink) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if !line.ends_with(b"\n") {
                    line.push(b'\n');
                }
                sink.write_line(&line);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_in_lambdas_words() {
        assert_eq!(describe_exit(ExitStatus::from_raw(1 << 8)), "exit status 1");
        assert_eq!(describe_exit(ExitStatus::from_raw(9)), "signal: killed");
        assert_eq!(describe_exit(ExitStatus::from_raw(15)), "signal: 15");
    }
}
