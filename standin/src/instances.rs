//! Instances, Lambda's execution environments: one child process of a version's binary, in
//! a process group of its own, with its own Runtime API listener and Lambda's environment
//! variables. Dropping an instance kills the whole group, so no process outlives it.

use super::names::log_stream_name;
use super::runtime_api::{self, Ended, Event, RuntimeShared};
use super::versions::{Config, Version};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};
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
        function: &str,
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
            function,
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

    /// Marks it idle from now (it just went back to its pool).
    pub(crate) fn touch(&self) {
        *lock(&self.idle_since) = Instant::now();
    }

    pub(crate) fn idle_since(&self) -> Instant {
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
    function: &str,
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
        ("AWS_LAMBDA_FUNCTION_NAME", function.to_owned()),
        ("AWS_LAMBDA_FUNCTION_VERSION", version.version.clone()),
        (
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
            version.config.memory_mb.to_string(),
        ),
        (
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/{function}"),
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
