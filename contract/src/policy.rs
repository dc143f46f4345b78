//! How a run behaves, and the syntax a request header or the handler's environment gives it
//! in: how the coordinator waits ([`FanInStrategy`]), how many subtasks run at once
//! ([`parse_max_concurrency`]) and how many may fail ([`FailurePolicy`]).
//!
//! Every value is validated where it enters (env at the handler's start, header at the start of
//! a run, flag in the CLI), with the same messages, so an impossible setting is refused before
//! any subtask starts.

/// How the coordinator waits for its subtasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FanInStrategy {
    /// Await every call in index order: simple, but on Lambda each resume replays the whole
    /// journal, and resumes grow with the width and the completion order.
    InOrder,
    /// Lanes keep the cap full and report to a ledger that resolves one awakeable: at most 3
    /// coordinator invocations for any width (the handler's `fan_in` module).
    Ledger,
    /// The coordinator itself keeps the cap full and waits with a select on any, as the
    /// reference TypeScript code does: as fast as a fan-out gets, but on Lambda the coordinator
    /// wakes about once per subtask and replays its whole journal each time.
    SelectAny,
}

impl FanInStrategy {
    /// The request header that picks the strategy for one run.
    pub const HEADER: &str = crate::headers::FAN_IN;
    /// The env var that sets the handler's default.
    pub const ENV: &str = "FANOUT_FAN_IN";

    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw.trim() {
            "in-order" => Ok(Self::InOrder),
            "ledger" => Ok(Self::Ledger),
            "select-any" => Ok(Self::SelectAny),
            other => Err(format!(
                "unknown fan-in strategy {other:?}: use \"ledger\", \"select-any\" or \"in-order\""
            )),
        }
    }

    /// The name [`Self::parse`] reads.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InOrder => "in-order",
            Self::Ledger => "ledger",
            Self::SelectAny => "select-any",
        }
    }
}

/// The most subtasks of one run in flight at once, unless the run or the handler's
/// environment says otherwise: Lambda's default regional concurrency (1,000 executions).
///
/// Why that number: a subtask that does its work inside its invocation holds one execution
/// while it runs, so a larger cap only turns into 429s that Restate retries with backoff
/// (an earlier bench: ~17,000 of them and twice the floor at a cap of 10,000); a smaller one
/// leaves the account's concurrency idle and, since the lanes keep the cap full, only costs
/// time: a fan-out of up to 1,000 subtasks runs all at once, as fast as with a cap of N. A
/// subtask suspended in a durable sleep holds no execution, and the lanes and the ledger add
/// a few dozen, so 1,000 is an upper bound on what the default takes from the account, not
/// a typical figure. Lower it to leave room for other functions; raise it with a quota
/// increase.
pub const DEFAULT_MAX_CONCURRENCY: usize = 1000;

/// The request header that caps one run's subtasks in flight.
pub const MAX_CONCURRENCY_HEADER: &str = crate::headers::MAX_CONCURRENCY;

/// The env var that sets the handler's default cap.
pub const MAX_CONCURRENCY_ENV: &str = "FANOUT_MAX_CONCURRENCY";

/// Parses a concurrency cap: a whole number of at least 1.
pub fn parse_max_concurrency(raw: &str) -> Result<usize, String> {
    match raw.trim().parse::<i64>() {
        Ok(n) if n >= 1 => Ok(n as usize),
        Ok(n) => Err(format!(
            "max concurrency {n} is impossible: at least 1 subtask must run at a time"
        )),
        Err(_) => Err(format!(
            "max concurrency {raw:?} is not a whole number (e.g. 100)"
        )),
    }
}

/// The most subtasks one executor invocation takes. A batch travels as one request and comes
/// back as one response, both journaled by the lane that calls it; its bytes are bounded
/// apart (the handler's `fan_in::BATCH_BYTES`), this bounds the count.
pub const MAX_BATCH_SIZE: usize = 1000;

/// The request header that batches one run's subtasks.
pub const BATCH_SIZE_HEADER: &str = crate::headers::BATCH_SIZE;

/// The env var that sets the handler's default batch size (unset: 1, no batching).
pub const BATCH_SIZE_ENV: &str = "FANOUT_BATCH_SIZE";

/// Parses a batch size: a whole number from 1 to [`MAX_BATCH_SIZE`].
pub fn parse_batch_size(raw: &str) -> Result<usize, String> {
    match raw.trim().parse::<i64>() {
        Ok(n) if (1..=MAX_BATCH_SIZE as i64).contains(&n) => Ok(n as usize),
        Ok(n) => Err(format!(
            "batch size {n} is out of range: give 1 (one subtask per invocation) to \
             {MAX_BATCH_SIZE}"
        )),
        Err(_) => Err(format!(
            "batch size {raw:?} is not a whole number (e.g. 10)"
        )),
    }
}

/// What a run does when subtasks fail for good (after Restate's retries).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FailurePolicy {
    /// The first failure fails the run, naming the subtask; what has not started never starts.
    FailFast,
    /// Up to this many subtasks may fail; the aggregate sees every outcome.
    TolerateFailures(usize),
    /// Up to this percentage of the subtasks (rounded down) may fail.
    ToleratePercent(f64),
    /// At least this many subtasks must succeed.
    MinSuccessful(usize),
}

impl FailurePolicy {
    /// The request header that sets the policy for one run.
    pub const HEADER: &str = crate::headers::FAILURE_POLICY;
    /// The env var that sets the handler's default.
    pub const ENV: &str = "FANOUT_FAILURE_POLICY";

    /// Parses `fail-fast`, `tolerate:N`, `tolerate:P%` or `min-successful:N`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let usage = "use fail-fast, tolerate:N, tolerate:P% or min-successful:N";
        if raw == "fail-fast" {
            return Ok(Self::FailFast);
        }
        let Some((kind, value)) = raw.split_once(':') else {
            return Err(format!("unknown failure policy {raw:?}: {usage}"));
        };
        let value = value.trim();
        let whole = |what: &str| -> Result<usize, String> {
            match value.parse::<i64>() {
                Ok(n) if n >= 1 => Ok(n as usize),
                Ok(n) => Err(format!("{what} {n} is impossible: it must be at least 1")),
                Err(_) => Err(format!("{what} {value:?} is not a whole number")),
            }
        };
        match kind.trim() {
            "tolerate" => match value.strip_suffix('%') {
                Some(percent) => match percent.trim().parse::<f64>() {
                    Ok(p) if p > 0.0 && p <= 100.0 => Ok(Self::ToleratePercent(p)),
                    Ok(p) => Err(format!(
                        "tolerating {p}% of failed subtasks is impossible: give a share above 0% \
                         and at most 100%"
                    )),
                    Err(_) => Err(format!("tolerated share {value:?} is not a percentage")),
                },
                None => whole("tolerated failures")
                    .map_err(|e| format!("{e} (fail-fast tolerates none)"))
                    .map(Self::TolerateFailures),
            },
            "min-successful" => whole("min-successful")
                .map_err(|e| {
                    format!("{e} (to accept a run where every subtask fails, use tolerate:100%)")
                })
                .map(Self::MinSuccessful),
            other => Err(format!("unknown failure policy {other:?}: {usage}")),
        }
    }

    pub fn is_fail_fast(&self) -> bool {
        matches!(self, Self::FailFast)
    }

    /// How many of `width` subtasks may fail, or why the policy cannot apply to that width.
    pub fn tolerated(&self, width: usize) -> Result<usize, String> {
        match *self {
            Self::FailFast => Ok(0),
            Self::TolerateFailures(n) if n > width => Err(format!(
                "tolerating {n} failed subtasks is impossible: the task split into {width}"
            )),
            Self::TolerateFailures(n) => Ok(n),
            Self::ToleratePercent(p) => Ok((width as f64 * p / 100.0).floor() as usize),
            Self::MinSuccessful(n) if n > width => Err(format!(
                "min-successful {n} is impossible: the task split into {width} subtasks"
            )),
            Self::MinSuccessful(n) => Ok(width - n),
        }
    }
}

impl std::fmt::Display for FailurePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::FailFast => write!(f, "fail-fast"),
            Self::TolerateFailures(n) => write!(f, "tolerate:{n}"),
            Self::ToleratePercent(p) => write!(f, "tolerate:{p}%"),
            Self::MinSuccessful(n) => write!(f, "min-successful:{n}"),
        }
    }
}

impl FailurePolicy {
    /// The `N` or `P%` of `tolerate:…`, as the CLI's `--tolerate-failures` takes it.
    pub fn tolerate(raw: &str) -> Result<Self, String> {
        Self::parse(&format!("tolerate:{}", raw.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_policies_parse_and_print_back() {
        for raw in [
            "fail-fast",
            "tolerate:3",
            "tolerate:12.5%",
            "min-successful:95",
        ] {
            assert_eq!(FailurePolicy::parse(raw).unwrap().to_string(), raw);
        }
        assert_eq!(
            FailurePolicy::parse(" tolerate: 10 % ").unwrap(),
            FailurePolicy::ToleratePercent(10.0)
        );
    }

    #[test]
    fn batch_sizes_run_from_one_to_the_bound() {
        assert_eq!(parse_batch_size(" 10 "), Ok(10));
        assert_eq!(parse_batch_size("1"), Ok(1));
        assert_eq!(
            parse_batch_size(&MAX_BATCH_SIZE.to_string()),
            Ok(MAX_BATCH_SIZE)
        );
        for (raw, says) in [
            ("0", "out of range"),
            ("1001", "out of range"),
            ("ten", "whole"),
        ] {
            let error = parse_batch_size(raw).unwrap_err();
            assert!(error.contains(says), "{raw}: {error}");
        }
    }

    #[test]
    fn impossible_failure_policies_say_why() {
        for (raw, says) in [
            ("tolerate:0", "at least 1"),
            ("tolerate:-2", "at least 1"),
            ("tolerate:0%", "above 0%"),
            ("tolerate:101%", "at most 100%"),
            ("tolerate:lots", "not a whole number"),
            ("min-successful:0", "tolerate:100%"),
            ("min-successful:-1", "at least 1"),
            ("best-effort", "fail-fast, tolerate:N"),
            ("never:1", "unknown failure policy"),
        ] {
            let error = FailurePolicy::parse(raw).unwrap_err();
            assert!(error.contains(says), "{raw}: {error}");
        }
    }

    #[test]
    fn tolerance_is_checked_against_the_width() {
        assert_eq!(FailurePolicy::FailFast.tolerated(10), Ok(0));
        assert_eq!(FailurePolicy::TolerateFailures(10).tolerated(10), Ok(10));
        assert!(
            FailurePolicy::TolerateFailures(11)
                .tolerated(10)
                .unwrap_err()
                .contains("split into 10")
        );
        assert_eq!(FailurePolicy::ToleratePercent(25.0).tolerated(10), Ok(2));
        assert_eq!(FailurePolicy::ToleratePercent(100.0).tolerated(7), Ok(7));
        assert_eq!(FailurePolicy::MinSuccessful(7).tolerated(10), Ok(3));
        assert!(FailurePolicy::MinSuccessful(11).tolerated(10).is_err());
    }
}
