//! What one deployment of a handler serves: the whole worker, or one side of a split in which
//! the executors are a deployment (a Lambda function) of their own, sized and scaled apart from
//! the coordinator. `fanout deploy --serve` and `fanout local --layout split` set it; the
//! handler reads it at start.

use crate::names;

/// The handler's env var that picks the [`Serve`].
pub const SERVE_ENV: &str = "FANOUT_SERVE";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serve {
    /// `worker` with `run` and `runSubtask`: the reference contract, one deployment.
    All,
    /// `worker/run` and the fan-in machinery; subtasks go to `executor/runSubtask`.
    Coordinator,
    /// Only `executor/runSubtask`.
    Executor,
}

impl Serve {
    pub const ENV: &str = SERVE_ENV;

    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw.trim() {
            "all" => Ok(Self::All),
            "coordinator" => Ok(Self::Coordinator),
            "executor" => Ok(Self::Executor),
            other => Err(format!(
                "{other:?} is not a layout; use all (one deployment), coordinator or executor \
                 (the two halves of a split)"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Coordinator => "coordinator",
            Self::Executor => "executor",
        }
    }

    /// The service whose `runSubtask` the coordinator calls.
    pub fn executor_service(self) -> &'static str {
        match self {
            Self::All => names::WORKER,
            Self::Coordinator | Self::Executor => names::EXECUTOR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_parse_and_print_back() {
        for serve in [Serve::All, Serve::Coordinator, Serve::Executor] {
            assert_eq!(Serve::parse(serve.as_str()), Ok(serve));
        }
        assert!(Serve::parse("both").unwrap_err().contains("not a layout"));
    }
}
