//! Faults on request: the ways a real Lambda fails a caller, made to happen now, so fault tests
//! can see that nothing is lost when they do.
//!
//! Each fault is armed for the next N invokes (optionally only those of one Restate handler,
//! matched against the event's `path`, e.g. `runSubtask`), and each is what AWS Lambda itself
//! does in that situation:
//! - `throttle`: 429 `TooManyRequestsException`, the function does not run (as when the
//!   concurrency limit is reached);
//! - `serviceError`: 500 `ServiceException`, the function does not run (a Lambda-side fault);
//! - `dropResponse`: the function runs to the end and is metered, then the connection is
//!   dropped before the response is read (a network fault after the work was done: the caller
//!   cannot know that it ran);
//! - `timeout`: the invocation times out after `timeoutMs` as if that were the function's
//!   timeout: the instance is killed mid-event and the answer is `Sandbox.Timedout`.
//!
//! Killing busy instances (`POST /fanout/instances/kill?function=NAME[&path=runSubtask]`) is the
//! fifth fault, in `invoke_api`. Nothing is armed unless asked: the stand-in stays a faithful
//! Lambda otherwise.

use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::Duration;

/// What to inject into the next invokes. Counts add to whatever is still armed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultPlan {
    /// The next N invokes answer 429 without running the function.
    #[serde(default)]
    pub throttle: u32,
    /// The next N invokes answer 500 `ServiceException` without running the function.
    #[serde(default)]
    pub service_error: u32,
    /// The next N invokes run, then lose their response (the connection is dropped).
    #[serde(default)]
    pub drop_response: u32,
    /// The next N invokes time out after `timeout_ms`.
    #[serde(default)]
    pub timeout: u32,
    /// The timeout of the invokes armed with `timeout` (default 100 ms).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Only invokes whose event path contains this (e.g. `runSubtask`) are hit; all when unset.
    #[serde(default)]
    pub path: Option<String>,
}

/// One fault to apply to one invoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    Throttle,
    ServiceError,
    DropResponse,
    Timeout(Duration),
}

/// How many of each fault were injected so far, and how many are still armed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultCounts {
    pub throttle: u64,
    pub service_error: u64,
    pub drop_response: u64,
    pub timeout: u64,
    pub killed: u64,
    /// Faults armed but not yet injected.
    pub armed: u64,
}

#[derive(Debug)]
struct Armed {
    fault: Fault,
    remaining: u32,
    path: Option<String>,
}

/// The stand-in's armed faults and tallies.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    armed: Vec<Armed>,
    counts: FaultCounts,
}

impl Faults {
    pub(crate) fn arm(&self, plan: &FaultPlan) {
        let timeout = Duration::from_millis(plan.timeout_ms.unwrap_or(100));
        let mut state = self.lock();
        for (fault, n) in [
            (Fault::Throttle, plan.throttle),
            (Fault::ServiceError, plan.service_error),
            (Fault::DropResponse, plan.drop_response),
            (Fault::Timeout(timeout), plan.timeout),
        ] {
            if n > 0 {
                state.armed.push(Armed {
                    fault,
                    remaining: n,
                    path: plan.path.clone(),
                });
            }
        }
    }

    /// Whether any fault is armed (checked before an event is parsed for its path).
    pub(crate) fn any_armed(&self) -> bool {
        !self.lock().armed.is_empty()
    }

    /// The fault for an invoke of `path`, if one is armed for it; counted as injected.
    pub(crate) fn take(&self, path: Option<&str>) -> Option<Fault> {
        let mut state = self.lock();
        let position = state.armed.iter().position(|armed| match &armed.path {
            None => true,
            Some(wanted) => path.is_some_and(|p| p.contains(wanted.as_str())),
        })?;
        let armed = &mut state.armed[position];
        armed.remaining -= 1;
        let fault = armed.fault;
        if armed.remaining == 0 {
            state.armed.remove(position);
        }
        let counts = &mut state.counts;
        match fault {
            Fault::Throttle => counts.throttle += 1,
            Fault::ServiceError => counts.service_error += 1,
            Fault::DropResponse => counts.drop_response += 1,
            Fault::Timeout(_) => counts.timeout += 1,
        }
        Some(fault)
    }

    pub(crate) fn count_killed(&self, n: usize) {
        self.lock().counts.killed += n as u64;
    }

    /// Disarms everything still armed.
    pub(crate) fn clear(&self) {
        self.lock().armed.clear();
    }

    pub(crate) fn counts(&self) -> FaultCounts {
        let state = self.lock();
        let mut counts = state.counts.clone();
        counts.armed = state.armed.iter().map(|a| u64::from(a.remaining)).sum();
        counts
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_taken_in_order_for_matching_paths_only() {
        let faults = Faults::default();
        assert!(!faults.any_armed());
        faults.arm(&FaultPlan {
            throttle: 1,
            drop_response: 2,
            path: Some("runSubtask".into()),
            ..FaultPlan::default()
        });
        assert_eq!(faults.counts().armed, 3);
        assert_eq!(faults.take(Some("/invoke/worker/run")), None);
        assert_eq!(faults.take(None), None);
        let subtask = Some("/invoke/worker/runSubtask");
        assert_eq!(faults.take(subtask), Some(Fault::Throttle));
        assert_eq!(faults.take(subtask), Some(Fault::DropResponse));
        assert_eq!(faults.take(subtask), Some(Fault::DropResponse));
        assert_eq!(faults.take(subtask), None);
        faults.arm(&FaultPlan {
            timeout: 1,
            timeout_ms: Some(250),
            ..FaultPlan::default()
        });
        assert_eq!(
            faults.take(Some("/discover")),
            Some(Fault::Timeout(Duration::from_millis(250)))
        );
        let counts = faults.counts();
        assert_eq!(
            (counts.throttle, counts.drop_response, counts.timeout),
            (1, 2, 1)
        );
        assert_eq!(counts.armed, 0);
    }

    #[test]
    fn plans_reject_unknown_fields() {
        let plan: FaultPlan = serde_json::from_str(r#"{"serviceError": 2}"#).unwrap();
        assert_eq!(plan.service_error, 2);
        assert!(serde_json::from_str::<FaultPlan>(r#"{"throttles": 2}"#).is_err());
    }
}
