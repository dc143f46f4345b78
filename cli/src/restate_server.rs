//! A real restate-server on loopback: temp base dir, free ports (or the ones given), telemetry
//! off, stopped by pid.

use anyhow::{Context, Result, bail};
use fanout_standin::process::{Managed, free_port, wait_until};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::Command;

/// How long a healthy start may take. It starts in under a second offline; the margin covers a
/// loaded two-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings for a server that runs one fan-out at a time on a small machine, often next to other
/// servers in parallel tests. Restate's defaults size a production node: left to them, one
/// 10,000-wide run plus its floor took restate-server past 1 GB resident; with these it peaks
/// near 520 MB. A variable already set in our own environment wins over these, and
/// `ServerOptions::env` wins over both.
const SERVER_SETTINGS: &[(&str, &str)] = &[
    // Lanes replay their journals (up to 64 calls and their answers) on every wake. Above this
    // size the server zstd-compresses a request to a function that advertises it, as ours does;
    // the default, 4 MiB, only ever compresses near Lambda's 6 MB limit. Below 2 KiB a request is
    // a subtask's own (about 300 bytes of journal), which zstd cannot shrink.
    (
        "RESTATE_WORKER__INVOKER__REQUEST_COMPRESSION_THRESHOLD",
        "2 KiB",
    ),
    // Block cache and memtables share this budget. With the default (2 GiB) each partition's
    // memtables kept growing unflushed through the whole run. 256 MiB is Restate's minimum.
    ("RESTATE_ROCKSDB_TOTAL_MEMORY_SIZE", "256 MiB"),
    // Every partition holds memory of its own, idle or not, and on two cores 24 of them add no
    // throughput. The server reads this only when it provisions a cluster, and ours always does:
    // its base dir is new at every start.
    ("RESTATE_DEFAULT_NUM_PARTITIONS", "8"),
    // The invoker takes 32 KiB of this budget for each invocation it runs, so 64 MiB runs 2,048
    // at once: twice the local Lambda's default concurrency (1,000, as on AWS). With the default
    // (1.5 GiB) it ran about 9,000 when 10,000 subtasks arrived together; the extra ones only drew
    // 429s, and each running invocation holds several times its 32 KiB.
    ("RESTATE_WORKER__INVOKER__MEMORY_LIMIT", "64 MiB"),
    // Appended log records stay cached for the partitions that read just behind the tail; the
    // default (250 MiB) would keep filling over a long `fanout local` session.
    ("RESTATE_BIFROST__RECORD_CACHE_MEMORY_SIZE", "32 MiB"),
    // By default jemalloc keeps freed pages for 10 s and returns them only while allocating, so
    // a burst's memory is still resident when the next burst comes: about 60 MB of the peak.
    ("MALLOC_CONF", "background_thread:true,dirty_decay_ms:1000"),
];

/// Extra environment for the server (e.g. the Lambda endpoint override).
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    pub env: Vec<(String, String)>,
    /// Where to listen: these ports (`fanout local`'s fixed ports; a cluster's first node,
    /// the others add their index), or free ones when `None`.
    pub ports: Option<crate::ports::NodePorts>,
    /// Where the server's log goes; a file in the base dir when `None`.
    pub log_path: Option<PathBuf>,
}

pub struct RestateServer {
    process: Option<Managed>,
    pub ingress_url: String,
    pub admin_url: String,
    pub log_path: PathBuf,
    /// How it was started, so [`Self::restart`] starts it again the same way.
    launch: Launch,
    // Removed on drop, after the process is gone.
    _base_dir: tempfile::TempDir,
}

/// [`SERVER_SETTINGS`] for each of `nodes` servers that share one machine as one cluster.
/// What a node spends on the invocations it runs and on the records it caches is split between
/// the nodes, so the cluster as a whole runs as many invocations at once as one server. RocksDB's
/// budget cannot shrink (256 MiB is Restate's minimum), and the partition count is the
/// cluster's, not a node's.
pub(crate) fn server_settings(nodes: usize) -> Vec<(&'static str, String)> {
    const SPLIT: &[&str] = &[
        "RESTATE_WORKER__INVOKER__MEMORY_LIMIT",
        "RESTATE_BIFROST__RECORD_CACHE_MEMORY_SIZE",
    ];
    SERVER_SETTINGS
        .iter()
        .map(|&(key, value)| {
            let split = SPLIT
                .contains(&key)
                .then(|| value.strip_suffix(" MiB")?.parse::<usize>().ok())
                .flatten()
                .map(|mib| format!("{} MiB", (mib / nodes.max(1)).max(8)));
            (key, split.unwrap_or_else(|| value.to_owned()))
        })
        .collect()
}

/// Where a server listens.
enum Listen {
    /// Loopback, on these (admin, ingress, node) ports.
    Ports(u16, u16, u16),
    /// As the config file says: a cluster node, whose file also names its peers.
    ConfigFile(PathBuf),
}

/// Binary, base dir, addresses and environment of a server: enough to start it again.
struct Launch {
    binary: PathBuf,
    base_dir: PathBuf,
    listen: Listen,
    settings: Vec<(&'static str, String)>,
    env: Vec<(String, String)>,
}

impl Launch {
    fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .arg("--base-dir")
            .arg(&self.base_dir)
            .arg("--no-logo");
        match &self.listen {
            Listen::Ports(admin, ingress, node) => {
                command
                    .args(["--bind-ip", "127.0.0.1"])
                    .env("RESTATE_ADMIN__BIND_PORT", admin.to_string())
                    .env("RESTATE_INGRESS__BIND_PORT", ingress.to_string())
                    .env("RESTATE_BIND_PORT", node.to_string());
            }
            Listen::ConfigFile(file) => {
                command.arg("--config-file").arg(file);
            }
        }
        command
            .env("RESTATE_DISABLE_TELEMETRY", "true")
            .env("DO_NOT_TRACK", "1");
        for (key, value) in &self.settings {
            if std::env::var_os(key).is_none() {
                command.env(key, value);
            }
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }
}

impl RestateServer {
    /// Starts `binary` and waits until both the admin API and the ingress are healthy.
    /// On free ports, retries on fresh ones when another process took one of ours in the
    /// meantime; on fixed ports ([`ServerOptions::ports`]) it tries once.
    pub async fn start(binary: &Path, options: &ServerOptions) -> Result<Self> {
        if options.ports.is_some() {
            return Self::start_once(binary, options).await;
        }
        let mut last_error = None;
        for _ in 0..3 {
            match Self::start_once(binary, options).await {
                Ok(server) => return Ok(server),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("three attempts were made"))
    }

    async fn start_once(binary: &Path, options: &ServerOptions) -> Result<Self> {
        let (admin, ingress, node) = match options.ports {
            Some(ports) => (ports.admin, ports.ingress, ports.node),
            None => (free_port()?, free_port()?, free_port()?),
        };
        let urls = (
            format!("http://127.0.0.1:{admin}"),
            format!("http://127.0.0.1:{ingress}"),
        );
        let listen = Listen::Ports(admin, ingress, node);
        let mut server = Self::spawn(binary, listen, server_settings(1), urls, options)?;
        server.wait_until_healthy().await?;
        Ok(server)
    }

    /// Starts one node of a cluster from `config_file`, which names its addresses (the admin
    /// API and the ingress must be at `admin_url` and `ingress_url`) and its peers, with
    /// `settings` instead of one server's [`SERVER_SETTINGS`]. It does not wait: a cluster's nodes
    /// come up together, then [`Self::wait_until_healthy`] waits for each.
    pub(crate) fn spawn_node(
        binary: &Path,
        config_file: &Path,
        urls: (String, String),
        settings: Vec<(&'static str, String)>,
        options: &ServerOptions,
    ) -> Result<Self> {
        let listen = Listen::ConfigFile(config_file.to_path_buf());
        Self::spawn(binary, listen, settings, urls, options)
    }

    /// Starts the server in a new temp base dir, without waiting for it.
    fn spawn(
        binary: &Path,
        listen: Listen,
        settings: Vec<(&'static str, String)>,
        (admin_url, ingress_url): (String, String),
        options: &ServerOptions,
    ) -> Result<Self> {
        let base_dir = tempfile::Builder::new()
            .prefix("fanout-restate-")
            .tempdir()
            .context("cannot create a temp dir for restate-server")?;
        let log_path = options
            .log_path
            .clone()
            .unwrap_or_else(|| base_dir.path().join("restate-server.log"));
        let launch = Launch {
            binary: binary.to_path_buf(),
            base_dir: base_dir.path().to_path_buf(),
            listen,
            settings,
            env: options.env.clone(),
        };
        let process = Managed::spawn("restate-server", launch.command(), &log_path)?;
        Ok(Self {
            process: Some(process),
            ingress_url,
            admin_url,
            log_path,
            launch,
            _base_dir: base_dir,
        })
    }

    /// Waits until a server just started is healthy; stops it when it is not.
    pub(crate) async fn wait_until_healthy(&mut self) -> Result<()> {
        let process = self
            .process
            .take()
            .context("restate-server is not running")?;
        let process =
            wait_healthy(process, &self.admin_url, &self.ingress_url, &self.log_path).await?;
        self.process = Some(process);
        Ok(())
    }

    /// SIGKILLs the server (a crash: no shutdown, nothing flushed on purpose). It stays down
    /// until [`Self::restart`].
    pub fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            if let Some(pid) = process.pid() {
                fanout_standin::process::kill_group(pid);
            }
            drop(process);
        }
    }

    /// Starts the server again on the same base dir, ports and environment (after
    /// [`Self::kill`], or killing it first), and waits until it is healthy: a node coming back
    /// after a crash, with its journal and invocations. Used by the fault tests.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        let process = Managed::spawn("restate-server", self.launch.command(), &self.log_path)?;
        let process =
            wait_healthy(process, &self.admin_url, &self.ingress_url, &self.log_path).await?;
        self.process = Some(process);
        Ok(())
    }
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(Managed::pid)
    }

    /// Everything the server has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub async fn stop(mut self) {
        if let Some(process) = self.process.take() {
            process.stop(Duration::from_secs(5)).await;
        }
    }
}

/// Waits until the admin API and the ingress of a just-started server answer healthy; stops it
/// and says why when they do not within [`START_TIMEOUT`].
async fn wait_healthy(
    mut process: Managed,
    admin_url: &str,
    ingress_url: &str,
    log_path: &Path,
) -> Result<Managed> {
    let http = reqwest::Client::new();
    let healthy = wait_until(START_TIMEOUT, || {
        let http = http.clone();
        let (admin_url, ingress_url) = (admin_url.to_owned(), ingress_url.to_owned());
        async move {
            let ok = |url: String| {
                let http = http.clone();
                async move { matches!(http.get(url).send().await, Ok(r) if r.status().is_success()) }
            };
            ok(format!("{admin_url}/health")).await
                && ok(format!("{ingress_url}/restate/health")).await
        }
    })
    .await;
    if !healthy {
        let exited = process.exited();
        let _ = process.stop(Duration::from_secs(1)).await;
        let tail = log_tail(log_path, 20);
        bail!(
            "restate-server did not become healthy within {START_TIMEOUT:?} ({}); its log ends \
             with:\n{tail}",
            match exited {
                Some(status) => format!("it exited with {status}"),
                None => "it is still starting".into(),
            }
        );
    }
    Ok(process)
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
