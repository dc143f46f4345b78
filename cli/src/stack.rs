//! The local stack: a real restate-server plus the handler, registered and ready.
//!
//! Two ways to run the handler, the same binary in both:
//! - [`HandlerMode::Http`]: `fanout-handler --port N`, registered by URI;
//! - [`HandlerMode::Lambda`]: the handler as a Lambda `bootstrap` behind the local Lambda
//!   stand-in, which restate-server reaches through `AWS_ENDPOINT_URL_LAMBDA`; registered by
//!   the version's ARN exactly as on AWS.
//!
//! Signed by default ([`RequestIdentity::Generated`]): a fresh ed25519 key pair in the state
//! dir, restate-server signing every request with its private key
//! (`RESTATE_WORKER__INVOKER__REQUEST_IDENTITY_PRIVATE_KEY_PEM_FILE`) and the handler serving
//! only requests signed with it (`FANOUT_IDENTITY_KEYS`). The HTTP handler listens on
//! 127.0.0.1 only.
//!
//! Used by `fanout local`, `fanout demo`, the benchmarks and the end-to-end tests.

use crate::admin::{AdminClient, Deployment, DeploymentTarget, RegisterOptions};
use crate::identity::{IDENTITY_KEYS_ENV, PRIVATE_KEY_PEM_ENV, SigningSetup};
use crate::ports::{LocalPorts, Ports, Wanted};
use crate::restate_cluster::{ClusterLayout, RestateCluster, SERVE_TIMEOUT, wait_until_serving};
use crate::restate_server::{RestateServer, ServerOptions, log_tail};
use anyhow::{Context, Result, bail};
use fanout_contract::layout::{SERVE_ENV, Serve};
use fanout_standin::process::{Managed, free_port, wait_until};
use fanout_standin::{FunctionSpec, StandIn, StandInConfig, VersionSpec};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::Command;

/// How the handler runs locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HandlerMode {
    /// The handler as an HTTP endpoint.
    Http,
    /// The handler as a Lambda bootstrap behind the local Lambda stand-in.
    Lambda,
}

/// One deployment serving everything, or the coordinator and the executors as deployments of
/// their own (the handler's `FANOUT_SERVE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    #[default]
    Single,
    /// The executors in [`StackOptions::mode`], the coordinator in `coordinator` mode: e.g. the
    /// coordinator over HTTP with the executors on the Lambda stand-in.
    Split { coordinator: HandlerMode },
}

/// The executors' Lambda function in a split layout: the main function's name with this after.
pub const EXECUTOR_FUNCTION_SUFFIX: &str = "-executor";

/// The local Lambda function's settings.
#[derive(Debug, Clone)]
pub struct LambdaSettings {
    pub function_name: String,
    pub memory_mb: u32,
    pub timeout: Duration,
    pub concurrency_limit: usize,
}

impl Default for LambdaSettings {
    fn default() -> Self {
        Self {
            function_name: "fanout".into(),
            memory_mb: 128,
            timeout: Duration::from_secs(60),
            // Lambda's default regional limit.
            concurrency_limit: 1000,
        }
    }
}

/// Whether restate-server signs its requests and the handler verifies them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RequestIdentity {
    /// A fresh key pair in the state dir: the server signs, the handler accepts only that key.
    #[default]
    Generated,
    /// Neither signing nor verification (`fanout local --unsigned`, for debugging).
    Unsigned,
    /// Given explicitly (rotation tests): the PEM the server signs with, if any, and the
    /// handler's `FANOUT_IDENTITY_KEYS`, if any.
    Explicit {
        server_pem: Option<PathBuf>,
        handler_keys: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct StackOptions {
    pub mode: HandlerMode,
    pub handler_binary: PathBuf,
    /// Env for the handler (e.g. `FANOUT_MAX_SUBTASK_MS`).
    pub handler_env: Vec<(String, String)>,
    /// Extra env for restate-server.
    pub server_env: Vec<(String, String)>,
    pub lambda: LambdaSettings,
    /// Where logs and metering go; a temp dir removed on stop when `None`.
    pub state_dir: Option<PathBuf>,
    /// Restate nodes: 1 is a single server; 3 or more a cluster ([`crate::restate_cluster`]),
    /// whose config files and logs also go in the state dir.
    pub nodes: usize,
    /// Signed by default.
    pub identity: RequestIdentity,
    /// One deployment by default.
    pub layout: Layout,
    /// Free ports by default (tests and benches run side by side); `fanout local` fixes them
    /// at Restate's defaults ([`crate::ports`]).
    pub ports: Ports,
    /// Serve an S3-compatible store (moto, [`crate::items::LocalS3`]) for runs of items, and
    /// give the handler its endpoint and throwaway credentials.
    pub s3: bool,
}

impl StackOptions {
    pub fn new(mode: HandlerMode, handler_binary: PathBuf) -> Self {
        Self {
            mode,
            handler_binary,
            handler_env: Vec::new(),
            server_env: Vec::new(),
            lambda: LambdaSettings::default(),
            state_dir: None,
            nodes: 1,
            identity: RequestIdentity::default(),
            layout: Layout::Single,
            ports: Ports::Auto,
            s3: false,
        }
    }
}

pub struct LocalStack {
    /// The single server, or a cluster's first node: the one the handler was registered
    /// through and [`Self::ingress_url`] points at.
    pub server: RestateServer,
    /// A cluster's other nodes; none on a single server.
    pub peers: Vec<RestateServer>,
    /// A cluster only: its nodes' ports and config files.
    pub cluster: Option<ClusterLayout>,
    /// A cluster only: how long after its nodes reported healthy each node's ingress served a
    /// first real invocation.
    pub first_served: Option<Duration>,
    pub admin: AdminClient,
    pub ingress_url: String,
    pub deployment: Deployment,
    /// Present in Lambda mode.
    pub standin: Option<StandIn>,
    /// The ARN registered in Lambda mode.
    pub function_arn: Option<String>,
    pub handler_log_path: PathBuf,
    pub metering_path: PathBuf,
    /// The handler's `FANOUT_IDENTITY_KEYS` (the public key restate-server signs with when
    /// generated); `None` when the handler accepts unsigned requests.
    pub identity_keys: Option<String>,
    /// The private key restate-server signs with; `None` when it does not sign.
    pub signing_key_pem: Option<PathBuf>,
    http_handler: Option<Managed>,
    /// A split layout only: the executors' deployment, their function's ARN on Lambda, their
    /// HTTP process otherwise.
    pub executor_deployment: Option<Deployment>,
    pub executor_function_arn: Option<String>,
    executor_http_handler: Option<Managed>,
    /// How the HTTP handler was started (binary, env, port), to start it again.
    http_launch: Option<HttpLaunch>,
    /// The local S3 store, when [`StackOptions::s3`] asked for it.
    pub s3: Option<crate::items::LocalS3>,
    _temp: Option<tempfile::TempDir>,
}

impl LocalStack {
    pub async fn start(options: StackOptions) -> Result<Self> {
        let restate_server = crate::tools::restate_server()?;
        if !options.handler_binary.is_file() {
            return Err(crate::exit::rejected(format!(
                "the handler binary {} does not exist; build it with `cargo build -p \
                 fanout-handler`",
                options.handler_binary.display()
            )));
        }
        // Instances start in their own task root, where a relative path means nothing.
        let handler_binary = std::fs::canonicalize(&options.handler_binary)
            .with_context(|| format!("cannot resolve {}", options.handler_binary.display()))?;
        let (temp, dir) = match &options.state_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                (None, dir.clone())
            }
            None => {
                let temp = tempfile::Builder::new().prefix("fanout-stack-").tempdir()?;
                let dir = temp.path().to_path_buf();
                (Some(temp), dir)
            }
        };
        if let Ports::Fixed(ports) = &options.ports {
            crate::ports::check_free(&wanted_ports(&options, ports))?;
        }
        let fixed = match options.ports {
            Ports::Fixed(ports) => Some(ports),
            Ports::Auto => None,
        };
        let handler_log_path = dir.join("handler.log");
        let metering_path = dir.join("invocations.jsonl");
        let mut server_options = ServerOptions {
            env: options.server_env.clone(),
            ports: fixed.map(|p| crate::restate_cluster::NodePorts {
                admin: p.admin,
                ingress: p.ingress,
                node: p.node,
            }),
            log_path: Some(dir.join("restate-server.log")),
        };
        let (server_pem, identity_keys) = match &options.identity {
            RequestIdentity::Generated => {
                let setup = SigningSetup::generate_in(&dir)?;
                (Some(setup.pem_path), Some(setup.public_key))
            }
            RequestIdentity::Unsigned => (None, None),
            RequestIdentity::Explicit {
                server_pem,
                handler_keys,
            } => (server_pem.clone(), handler_keys.clone()),
        };
        if let Some(pem) = &server_pem {
            server_options.env.push((
                PRIVATE_KEY_PEM_ENV.into(),
                pem.to_string_lossy().into_owned(),
            ));
        }
        // A generated or explicit identity wins over the same variable in `handler_env`.
        let mut handler_env = options.handler_env.clone();
        if options.identity != RequestIdentity::Unsigned {
            handler_env.retain(|(name, _)| name != IDENTITY_KEYS_ENV);
        }
        if let Some(keys) = &identity_keys {
            handler_env.push((IDENTITY_KEYS_ENV.into(), keys.clone()));
        }
        // The S3 store first, so the handler's processes start with its endpoint; a variable
        // the caller set wins.
        let s3 = match options.s3 {
            false => None,
            true => {
                let port = fixed.map(|p| crate::items::local_store_port(p.ingress));
                let store = crate::items::LocalS3::start_on(port, &dir.join("moto.log")).await?;
                for (name, value) in store.env() {
                    if !handler_env.iter().any(|(k, _)| *k == name) {
                        handler_env.push((name, value));
                    }
                }
                Some(store)
            }
        };

        // Which deployments, in which mode, with which FANOUT_SERVE.
        let serving = |role: Serve| {
            let mut env = handler_env.clone();
            env.retain(|(name, _)| name != SERVE_ENV);
            env.push((SERVE_ENV.into(), role.as_str().into()));
            env
        };
        let (main_mode, main_env, executors) = match options.layout {
            Layout::Single => (options.mode, handler_env.clone(), None),
            Layout::Split { coordinator } => (
                coordinator,
                serving(Serve::Coordinator),
                Some((options.mode, serving(Serve::Executor))),
            ),
        };
        let executor_function =
            format!("{}{EXECUTOR_FUNCTION_SUFFIX}", options.lambda.function_name);
        let function = |name: &str, env: &[(String, String)]| FunctionSpec {
            name: name.to_owned(),
            memory_mb: options.lambda.memory_mb,
            timeout: options.lambda.timeout,
            concurrency_limit: options.lambda.concurrency_limit,
            env: env.to_vec(),
            versions: vec![VersionSpec {
                version: "1".into(),
                binary: handler_binary.clone(),
            }],
        };
        let mut functions = Vec::new();
        if main_mode == HandlerMode::Lambda {
            functions.push(function(&options.lambda.function_name, &main_env));
        }
        if let Some((HandlerMode::Lambda, env)) = &executors {
            functions.push(function(&executor_function, env));
        }
        let mut standin = None;
        if !functions.is_empty() {
            let config = StandInConfig {
                metering_path: Some(metering_path.clone()),
                log_path: Some(handler_log_path.clone()),
                functions,
                ..StandInConfig::default()
            };
            let config = match fixed {
                Some(ports) => StandInConfig {
                    bind: std::net::SocketAddr::from(([127, 0, 0, 1], ports.lambda)),
                    ..config
                },
                None => config,
            };
            let started = StandIn::start(config)
                .await
                .context("cannot start the local Lambda stand-in")?;
            server_options
                .env
                .extend(lambda_client_env(&started.endpoint_url()));
            standin = Some(started);
        }
        let lambda_target = |name: &str| DeploymentTarget::Lambda {
            arn: standin
                .as_ref()
                .map(|s| s.version_arn(name, "1"))
                .unwrap_or_default(),
            assume_role_arn: None,
        };
        let mut http_handler = None;
        let mut http_launch = None;
        let target = match main_mode {
            HandlerMode::Lambda => lambda_target(&options.lambda.function_name),
            HandlerMode::Http => {
                let (process, uri) = start_http_handler(
                    &handler_binary,
                    &main_env,
                    &handler_log_path,
                    fixed.map(|p| p.handler),
                )
                .await?;
                http_handler = Some(process);
                let port = uri.rsplit(':').next().and_then(|p| p.parse().ok());
                http_launch = port.map(|port| (handler_binary.clone(), main_env.clone(), port));
                DeploymentTarget::Http { uri }
            }
        };
        let mut executor_http_handler = None;
        let executor_target = match &executors {
            None => None,
            Some((HandlerMode::Lambda, _)) => Some(lambda_target(&executor_function)),
            Some((HandlerMode::Http, env)) => {
                let (process, uri) = start_http_handler(
                    &handler_binary,
                    env,
                    &handler_log_path,
                    fixed.map(|p| p.handler + 1),
                )
                .await?;
                executor_http_handler = Some(process);
                Some(DeploymentTarget::Http { uri })
            }
        };

        let (server, peers, cluster, healthy_at) = if options.nodes <= 1 {
            let server = RestateServer::start(&restate_server, &server_options).await?;
            (server, Vec::new(), None, None)
        } else {
            let cluster =
                RestateCluster::start(&restate_server, options.nodes, &dir, &server_options)
                    .await?;
            let mut nodes = cluster.nodes.into_iter();
            let first = nodes.next().context("a cluster has nodes")?;
            let rest = nodes.collect();
            (first, rest, Some(cluster.layout), Some(cluster.healthy_at))
        };
        let admin = AdminClient::new(&server.admin_url, None);
        let executor_deployment = match &executor_target {
            None => None,
            Some(target) => Some(
                admin
                    .register(target, &RegisterOptions::default())
                    .await
                    .with_context(|| {
                        format!(
                            "registering the executors failed; handler log:\n{}",
                            log_tail(&handler_log_path, 20)
                        )
                    })?,
            ),
        };
        let deployment = admin
            .register(&target, &RegisterOptions::default())
            .await
            .with_context(|| {
                format!(
                    "registering the handler failed; handler log:\n{}",
                    log_tail(&handler_log_path, 20)
                )
            })?;
        // A cluster's nodes report healthy seconds before it serves: wait for a real
        // invocation (one subtask that sleeps 0 ms) through every node's ingress.
        let first_served = match healthy_at {
            Some(since) => {
                let nodes: Vec<&RestateServer> = std::iter::once(&server).chain(&peers).collect();
                let probe = serde_json::json!({ "description": "probe@0" });
                Some(wait_until_serving(&nodes, "/worker/run", &probe, since, SERVE_TIMEOUT).await?)
            }
            None => None,
        };
        let arn_of = |target: &DeploymentTarget| match target {
            DeploymentTarget::Lambda { arn, .. } => Some(arn.clone()),
            DeploymentTarget::Http { .. } => None,
        };
        let function_arn = arn_of(&target);
        let executor_function_arn = executor_target.as_ref().and_then(arn_of);
        Ok(Self {
            ingress_url: server.ingress_url.clone(),
            server,
            peers,
            cluster,
            first_served,
            admin,
            deployment,
            standin,
            function_arn,
            handler_log_path,
            metering_path,
            identity_keys,
            signing_key_pem: server_pem,
            http_handler,
            executor_deployment,
            executor_function_arn,
            executor_http_handler,
            http_launch,
            s3,
            _temp: temp,
        })
    }

    /// Everything the handler (HTTP process or Lambda instances) has logged so far.
    pub fn handler_log(&self) -> String {
        std::fs::read_to_string(&self.handler_log_path).unwrap_or_default()
    }

    /// Every Restate node: the server (a cluster's first node) and its peers.
    pub fn nodes(&self) -> Vec<&RestateServer> {
        std::iter::once(&self.server).chain(&self.peers).collect()
    }

    /// Restate node `index` (0: [`Self::server`]), e.g. to kill or restart it.
    pub fn node_mut(&mut self, index: usize) -> Option<&mut RestateServer> {
        match index {
            0 => Some(&mut self.server),
            i => self.peers.get_mut(i - 1),
        }
    }

    pub fn http_handler_pid(&self) -> Option<u32> {
        self.http_handler.as_ref().and_then(Managed::pid)
    }

    /// SIGKILLs the HTTP handler (HTTP mode), a crash; it stays down until
    /// [`Self::restart_http_handler`]. Used by the fault tests.
    ///
    /// It returns once the process is gone: a restart that only signalled it could see the
    /// dying process still answer on the port, take that for the new one listening, while the
    /// new one exits on a port in use — leaving no handler at all.
    pub async fn kill_http_handler(&mut self) {
        if let Some(handler) = self.http_handler.take() {
            handler.kill().await;
        }
    }

    /// Sets an env var of the HTTP handler (`None` removes it) for its next
    /// [`Self::restart_http_handler`]: a fixed handler deployed again, as the redrive tests
    /// use it.
    pub fn set_http_handler_env(&mut self, name: &str, value: Option<&str>) {
        if let Some((_, env, _)) = &mut self.http_launch {
            env.retain(|(k, _)| k != name);
            env.extend(value.map(|v| (name.to_owned(), v.to_owned())));
        }
    }

    /// Starts the HTTP handler again (killing it first if it runs) on the same port and
    /// environment, so the registered deployment reaches it again.
    pub async fn restart_http_handler(&mut self) -> Result<()> {
        self.kill_http_handler().await;
        let Some((binary, env, port)) = self.http_launch.clone() else {
            bail!("this stack has no HTTP handler to restart (it runs in Lambda mode)");
        };
        // The killed process's port may take a moment to be free again.
        for _ in 0..50 {
            if let Some(process) =
                spawn_http_handler(&binary, &env, &self.handler_log_path, port).await?
            {
                self.http_handler = Some(process);
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "the handler did not listen on port {port} again; log:\n{}",
            log_tail(&self.handler_log_path, 20)
        )
    }

    pub async fn stop(mut self) {
        for handler in [self.http_handler.take(), self.executor_http_handler.take()]
            .into_iter()
            .flatten()
        {
            handler.stop(Duration::from_secs(5)).await;
        }
        if let Some(standin) = self.standin.take() {
            standin.shutdown().await;
        }
        if let Some(s3) = self.s3.take() {
            s3.stop().await;
        }
        let Self { server, peers, .. } = self;
        server.stop().await;
        for peer in peers {
            peer.stop().await;
        }
    }
}

/// Starts the handler on `port` and waits until it listens; `None` when it exited first (the
/// port was taken).
async fn spawn_http_handler(
    binary: &Path,
    env: &[(String, String)],
    log: &Path,
    port: u16,
) -> Result<Option<Managed>> {
    let mut command = Command::new(binary);
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .env_remove("AWS_LAMBDA_RUNTIME_API")
        // Only what the stack chose, never a key list inherited from the caller's shell.
        .env_remove(IDENTITY_KEYS_ENV)
        .envs(env.iter().map(|(k, v)| (k, v)));
    let mut process = Managed::spawn("fanout-handler", command, log)?;
    let up = wait_until(Duration::from_secs(20), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    // Something answered on the port; it is ours only if ours is still running.
    let exited = process.exited();
    if up && exited.is_none() {
        return Ok(Some(process));
    }
    process.stop(Duration::from_secs(1)).await;
    if exited.is_none() {
        bail!(
            "the handler did not listen on port {port}; log:\n{}",
            log_tail(log, 20)
        );
    }
    Ok(None)
}

/// Binary, environment and port of the HTTP handler.
type HttpLaunch = (PathBuf, Vec<(String, String)>, u16);

/// What restate-server needs to call Lambda at a local endpoint with the standard AWS chain.
pub fn lambda_client_env(endpoint_url: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL_LAMBDA", endpoint_url),
        ("AWS_ACCESS_KEY_ID", "local"),
        ("AWS_SECRET_ACCESS_KEY", "local"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Starts the HTTP handler on `fixed` (once) or on a free port (up to three tries), and
/// returns it with its URI.
async fn start_http_handler(
    binary: &Path,
    env: &[(String, String)],
    log: &Path,
    fixed: Option<u16>,
) -> Result<(Managed, String)> {
    if let Some(port) = fixed {
        return match spawn_http_handler(binary, env, log, port).await? {
            Some(process) => Ok((process, format!("http://127.0.0.1:{port}"))),
            None => bail!(
                "the handler could not listen on port {port}; start the stack elsewhere with \
                 --ports auto or --ports BASE; its log:\n{}",
                log_tail(log, 20)
            ),
        };
    }
    for _ in 0..3 {
        let port = free_port()?;
        if let Some(process) = spawn_http_handler(binary, env, log, port).await? {
            return Ok((process, format!("http://127.0.0.1:{port}")));
        }
    }
    bail!(
        "the handler could not bind a port three times; log:\n{}",
        log_tail(log, 20)
    )
}

/// Every fixed port a stack with `options` listens on, with its role, to check before
/// anything starts.
fn wanted_ports(options: &StackOptions, ports: &LocalPorts) -> Vec<Wanted> {
    let mut wanted = Vec::new();
    let mut want = |port: u16, role: String| wanted.push(Wanted { port, role });
    for index in 0..options.nodes.max(1) {
        let (ingress, admin, node) = ports.of_node(index);
        let of = if options.nodes > 1 {
            format!(" of {}", crate::restate_cluster::node_name(index))
        } else {
            String::new()
        };
        want(ingress, format!("Restate ingress{of}"));
        want(admin, format!("Restate admin API{of}"));
        want(node, format!("Restate node-to-node{of}"));
    }
    let (main, executors) = match options.layout {
        Layout::Single => (options.mode, None),
        Layout::Split { coordinator } => (coordinator, Some(options.mode)),
    };
    if main == HandlerMode::Http {
        want(ports.handler, "the handler over HTTP".into());
    }
    if executors == Some(HandlerMode::Http) {
        want(ports.handler + 1, "the executors over HTTP".into());
    }
    if main == HandlerMode::Lambda || executors == Some(HandlerMode::Lambda) {
        want(ports.lambda, "the local Lambda endpoint".into());
    }
    if options.s3 {
        want(
            crate::items::local_store_port(ports.ingress),
            "the local S3 store (moto)".into(),
        );
    }
    wanted
}
