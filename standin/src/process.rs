//! Child processes that never outlive their owner.
//!
//! Every process the toolkit starts (restate-server, handler endpoints, Lambda instances) runs
//! in a process group of its own and the whole group is killed when its handle is dropped,
//! including when a test panics half-way, so no grandchild outlives it either; and each dies
//! with its parent when that is killed outright and nothing is dropped.

use anyhow::{Context, Result};
use std::fs::File;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// A running child, killed (with its process group) on drop.
pub struct Managed {
    child: Child,
}

impl Drop for Managed {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            kill_group(pid);
        }
    }
}

/// SIGKILL to the process group led by `pid`.
pub fn kill_group(pid: u32) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is touched.
    unsafe {
        libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
    }
}

/// Makes the child that `command` starts die with this process, even when this process is
/// killed with SIGKILL or a signal it does not handle, when no `Drop` runs: `fanout local`
/// killed with `kill -9` must not leave restate-server on its ports. (The kernel delivers it
/// when the thread that spawned the child exits; the toolkit spawns from its runtime's worker
/// threads, which live as long as the runtime.)
pub fn die_with_parent(command: &mut Command) {
    // SAFETY: between fork and exec only async-signal-safe calls: prctl, getppid, kill, _exit.
    let parent = std::process::id() as libc::pid_t;
    unsafe {
        command.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // The parent died before prctl took effect: nobody would ever stop this child.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

impl Managed {
    /// Starts `command` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> Result<Self> {
        let file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open the log file {}", log.display()))?;
        let err_file = file.try_clone()?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err_file))
            .process_group(0)
            .kill_on_drop(true);
        die_with_parent(&mut command);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Self { child })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether the process has exited, with its status.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Kills the process group (SIGKILL, a crash) and waits until the leader is gone, so that
    /// what it held (its listening port) is free when this returns.
    pub async fn kill(mut self) -> Option<std::process::ExitStatus> {
        let pid = self.child.id()?;
        kill_group(pid);
        self.child.wait().await.ok()
    }

    /// Asks the process to stop (SIGTERM), then kills it if it is still there after `grace`.
    pub async fn stop(mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.child.id()?;
        terminate(pid);
        let status = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => Some(status),
            _ => {
                kill_group(pid);
                self.child.wait().await.ok()
            }
        };
        // Whatever the leader left behind in its group goes with it.
        kill_group(pid);
        status
    }
}

/// Sends SIGTERM by pid.
pub fn terminate(pid: u32) {
    // SAFETY: kill(2) only sends a signal.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}

/// Sends SIGINT (what Ctrl-C sends) by pid.
pub fn interrupt(pid: u32) {
    // SAFETY: kill(2) only sends a signal.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGINT);
    }
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM, whichever comes first.
pub async fn stop_requested() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// A free TCP port on loopback. The port is released before it is returned, so callers retry
/// when a process loses the race for it.
pub fn free_port() -> Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("no free port on loopback")?;
    Ok(listener.local_addr()?.port())
}

/// Polls `check` until it is true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A memory figure of a live process from `/proc/PID/status` (`VmRSS` now, `VmHWM` its peak),
/// in KiB; `None` once the process is gone.
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kb(&status, field)
}

fn parse_status_kb(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// The largest resident set a process reaches while it is sampled (every 100 ms): the peak
/// of one stretch of its life, where `VmHWM` is the peak since it started.
pub struct RssSampler {
    peak_kb: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    pub fn start(pid: u32) -> Self {
        let peak_kb = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let peak = std::sync::Arc::clone(&peak_kb);
        let task = tokio::spawn(async move {
            while let Some(kb) = status_kb(pid, "VmRSS") {
                peak.fetch_max(kb, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self { peak_kb, task }
    }

    /// Stops sampling; the peak seen, if the process was ever sampled.
    pub fn finish(self) -> Option<u64> {
        self.task.abort();
        let kb = self.peak_kb.load(std::sync::atomic::Ordering::Relaxed);
        (kb > 0).then_some(kb)
    }
}

#[cfg(test)]
mod memory_tests {
    use super::*;

    #[test]
    fn memory_figures_are_read_from_proc_status() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmHWM:\t    4242 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(parse_status_kb(status, "VmHWM"), Some(4242));
        assert_eq!(parse_status_kb(status, "VmRSS"), Some(100));
        assert_eq!(parse_status_kb("Name:\tx\n", "VmHWM"), None);
    }

    #[tokio::test]
    async fn a_sampler_sees_this_process() {
        let sampler = RssSampler::start(std::process::id());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(sampler.finish().unwrap() > 0);
    }
}
