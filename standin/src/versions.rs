//! What a version of a function runs: its binary, its [`Config`] (memory, timeout,
//! environment, and what the control plane reports), the uploaded [`Code`] that holds the
//! binary when it came as a zip, and the set of a function's versions the control plane edits.
//!
//! Every [`Version`] carries a stand-in-wide `revision`: an instance only ever serves the
//! revision it was started for, so a new `$LATEST` or a deleted version never reuses an
//! instance of other code.

use super::config::FunctionSpec;
use super::names::last_modified;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

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
