//! How a run behaves, as a handler's environment sets it and a request may override it: how
//! the coordinator waits ([`FanInStrategy`]), how many subtasks run at once
//! ([`parse_max_concurrency`]), how many may fail ([`FailurePolicy`]) and how Restate retries
//! one that fails ([`SubtaskRetry`]).
//!
//! The first three, with their syntax, are part of the wire contract (`fanout_contract::policy`,
//! shared with the CLI); how Restate retries a subtask is the handler's own.

pub use fanout_contract::policy::{
    BATCH_SIZE_ENV, BATCH_SIZE_HEADER, DEFAULT_MAX_CONCURRENCY, FailurePolicy, FanInStrategy,
    MAX_BATCH_SIZE, MAX_CONCURRENCY_ENV, MAX_CONCURRENCY_HEADER, parse_batch_size,
    parse_max_concurrency,
};
use restate_sdk::prelude::HandlerOptions;

/// How Restate retries a subtask that fails with a retryable error (unset fields: the
/// server's defaults, 500 ms doubling up to 60 s, 70 attempts, then pause).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubtaskRetry {
    pub initial_interval: Option<std::time::Duration>,
    pub factor: Option<f64>,
    pub max_attempts: Option<u64>,
    /// `true`: kill the subtask at the limit (the run then fails, naming it); `false`: pause
    /// it for an operator to resume.
    pub kill_at_limit: Option<bool>,
}

impl SubtaskRetry {
    /// Reads `FANOUT_SUBTASK_RETRY_INITIAL_MS`, `FANOUT_SUBTASK_RETRY_FACTOR`,
    /// `FANOUT_SUBTASK_MAX_ATTEMPTS` and `FANOUT_SUBTASK_AT_MAX_ATTEMPTS` (`pause`|`kill`).
    pub fn from_env() -> Result<Self, String> {
        fn var(name: &str) -> Option<String> {
            std::env::var(name).ok().filter(|v| !v.trim().is_empty())
        }
        let number = |name: &str| -> Result<Option<f64>, String> {
            var(name)
                .map(|raw| {
                    raw.trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|v| v.is_finite() && *v > 0.0)
                        .ok_or_else(|| format!("{name}={raw:?} must be a number above 0"))
                })
                .transpose()
        };
        let kill_at_limit = match var("FANOUT_SUBTASK_AT_MAX_ATTEMPTS")
            .as_deref()
            .map(str::trim)
        {
            None => None,
            Some("kill") => Some(true),
            Some("pause") => Some(false),
            Some(other) => {
                return Err(format!(
                    "FANOUT_SUBTASK_AT_MAX_ATTEMPTS={other:?} must be \"pause\" or \"kill\""
                ));
            }
        };
        let factor = number("FANOUT_SUBTASK_RETRY_FACTOR")?;
        if factor.is_some_and(|f| f < 1.0) {
            return Err("FANOUT_SUBTASK_RETRY_FACTOR must be at least 1".into());
        }
        Ok(Self {
            initial_interval: number("FANOUT_SUBTASK_RETRY_INITIAL_MS")?
                .map(|ms| std::time::Duration::from_millis(ms as u64)),
            factor,
            max_attempts: number("FANOUT_SUBTASK_MAX_ATTEMPTS")?.map(|n| n as u64),
            kill_at_limit,
        })
    }

    pub(crate) fn options(&self) -> HandlerOptions {
        let mut options = HandlerOptions::new();
        if let Some(interval) = self.initial_interval {
            options = options.retry_policy_initial_interval(interval);
        }
        if let Some(factor) = self.factor {
            options = options.retry_policy_exponentiation_factor(factor);
        }
        if let Some(attempts) = self.max_attempts {
            options = options.retry_policy_max_attempts(attempts.max(1));
        }
        match self.kill_at_limit {
            Some(true) => options.retry_policy_kill_on_max_attempts(),
            Some(false) => options.retry_policy_pause_on_max_attempts(),
            None => options,
        }
    }
}
