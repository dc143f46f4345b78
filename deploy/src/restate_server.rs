//! A real restate-server on loopback: temp base dir, free ports, telemetry off, stopped by pid.

use crate::process::{Managed, free_port, wait_until};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::Command;

/// How long a healthy start may take. It starts in under a second offline; the margin covers a
/// loaded two-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Extra environment for the server (e.g. the Lambda endpoint override).
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    pub env: Vec<(String, String)>,
    /// Where the server's log goes; a file in the base dir when `None`.
    pub log_path: Option<PathBuf>,
}

pub struct RestateServer {
    process: Option<Managed>,
    pub ingress_url: String,
    pub admin_url: String,
    pub log_path: PathBuf,
    // Removed on drop, after the process is gone.
    _base_dir: tempfile::TempDir,
}

impl RestateServer {
    /// Starts `binary` and waits until both the admin API and the ingress are healthy.
    /// Retries on fresh ports when another process took one of ours in the meantime.
    pub async fn start(binary: &Path, options: &ServerOptions) -> Result<Self> {
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
        let base_dir = tempfile::Builder::new()
            .prefix("fanout-restate-")
            .tempdir()
            .context("cannot create a temp dir for restate-server")?;
        let (admin, ingress, node) = (free_port()?, free_port()?, free_port()?);
        let log_path = options
            .log_path
            .clone()
            .unwrap_or_else(|| base_dir.path().join("restate-server.log"));

        let mut command = Command::new(binary);
        command
            .arg("--base-dir")
            .arg(base_dir.path())
            .args(["--no-logo", "--bind-ip", "127.0.0.1"])
            .env("RESTATE_ADMIN__BIND_PORT", admin.to_string())
            .env("RESTATE_INGRESS__BIND_PORT", ingress.to_string())
            .env("RESTATE_BIND_PORT", node.to_string())
            .env("RESTATE_DISABLE_TELEMETRY", "true")
            .env("DO_NOT_TRACK", "1")
            .envs(options.env.iter().map(|(k, v)| (k, v)));
        let mut process = Managed::spawn("restate-server", command, &log_path)?;

        let admin_url = format!("http://127.0.0.1:{admin}");
        let ingress_url = format!("http://127.0.0.1:{ingress}");
        let http = reqwest::Client::new();
        let healthy =
            wait_until(START_TIMEOUT, || {
                let http = http.clone();
                let (admin_url, ingress_url) = (admin_url.clone(), ingress_url.clone());
                async move {
                    let ok = |url: String| {
                        let http = http.clone();
                        async move {
                            matches!(http.get(url).send().await, Ok(r) if r.status().is_success())
                        }
                    };
                    ok(format!("{admin_url}/health")).await
                        && ok(format!("{ingress_url}/restate/health")).await
                }
            })
            .await;
        if !healthy {
            let exited = process.exited();
            let _ = process.stop(Duration::from_secs(1)).await;
            let tail = log_tail(&log_path, 20);
            bail!(
                "restate-server did not become healthy within {START_TIMEOUT:?} ({}); its log \
                 ends with:\n{tail}",
                match exited {
                    Some(status) => format!("it exited with {status}"),
                    None => "it is still starting".into(),
                }
            );
        }
        Ok(Self {
            process: Some(process),
            ingress_url,
            admin_url,
            log_path,
            _base_dir: base_dir,
        })
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

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
