//! What a user gives [`StandIn::start`](crate::StandIn::start): where to listen, the account's
//! region and id, where metering and the instances' logs go, and the functions that exist from
//! the start (each a name, Lambda's settings, and its versions as binaries). Beside them, the
//! Lambda limits the stand-in enforces.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Lambda's limit on a synchronous request's payload and on a response, in bytes.
pub(crate) const PAYLOAD_LIMIT: usize = 6_291_456;

/// How long a new instance may take to ask for its first event before the invocation fails
/// with `Runtime.InitError` (Lambda allows 10 s of init for on-demand functions).
pub(crate) const INIT_BOUND: Duration = Duration::from_secs(10);

/// Idle instances older than this are stopped, as Lambda recycles unused environments.
pub(crate) const IDLE_TTL: Duration = Duration::from_secs(10 * 60);

/// How to start a stand-in; [`Default`] listens on a free port of 127.0.0.1 as account
/// `000000000000` in `us-east-1`, with no functions (create them through the control plane).
#[derive(Debug, Clone)]
pub struct StandInConfig {
    /// Where the port (Invoke API, control plane, hooks) listens; port 0 picks a free one.
    pub bind: SocketAddr,
    pub region: String,
    pub account: String,
    /// JSON-lines file that gets one [`InvocationRecord`](crate::InvocationRecord) per
    /// invocation (appended to).
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

/// A function that exists from the start, with its published versions. It has no `$LATEST`
/// until code is uploaded to it through the control plane.
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
