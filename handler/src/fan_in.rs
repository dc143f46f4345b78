//! The fan-in ledger: a coordinator that wakes at most three times, whatever the width.
//!
//! On Lambda every resume of the coordinator replays its whole journal, so awaiting N calls
//! costs up to N resumes and O(N²) bytes. Here the coordinator awaits one awakeable instead:
//!
//! ```text
//! worker/run ──send──► fanIn/start ──send──► worker/runShard ×S ──call──► worker/runSubtask ×N
//!     ▲                 (Virtual Object,        │ (≤ SHARD_WIDTH subtasks each,
//!     │                  key = the run's id)    │  ≤ window in flight, awaited in order)
//!     │                        ▲                │
//!     │                        └─ fanIn/record ◄┘ (stores the outcomes, starts the next
//!     │                                            waiting shard)
//!     └──── awakeable ◄──── resolved by the record that completes the last shard
//! ```
//!
//! The coordinator is invoked to start (the split step and its acknowledgement), and once more
//! when the awakeable carries every outcome back: at most 3 invocations. Each shard's journal
//! is bounded by the shard width, and the ledger keeps each shard's input and outcomes under
//! keys of their own with lazy state, so a record ships only what it touches: total bytes grow
//! linearly with N. The cost is S = ⌈N / SHARD_WIDTH⌉ shard invocations and S ledger records on
//! top of the subtasks.
//!
//! The ledger is also the scheduler behind `max_concurrency`: it keeps at most `lanes` shards
//! running, each with at most `window` subtasks in flight (`lanes × window ≤ max_concurrency`),
//! and starts the next waiting shard when one reports.

use crate::job::SubtaskFailure;
use crate::payload::Payload;
use restate_sdk::prelude::TerminalError;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// Subtasks per shard: bounds a shard's journal (it awaits its calls in order) while keeping
/// the number of ledger records, which run one at a time per run, small.
pub const SHARD_WIDTH: usize = 32;

/// One shard of a fan-out, as `worker/runShard` receives it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Shard<S> {
    /// The ledger's key: the coordinator's invocation id.
    pub ledger: String,
    /// The awakeable the coordinator waits on.
    pub awakeable: String,
    pub index: usize,
    pub shards: usize,
    /// Position of this shard's first subtask in the whole task, and the task's width (for
    /// messages that name a subtask as the user counts them).
    pub offset: usize,
    pub total: usize,
    /// At most this many of the shard's subtasks in flight at once.
    pub window: usize,
    /// How many of the run's subtasks may fail (0: fail-fast).
    pub tolerated: usize,
    pub subtasks: Vec<S>,
}

/// What the coordinator hands the ledger: every shard, and how many may run at once.
#[derive(Debug, Serialize, Deserialize)]
pub struct Plan<S> {
    pub lanes: usize,
    pub shards: Vec<Shard<S>>,
}

/// Shards running at once and subtasks in flight per shard for a cap of `max_concurrency`.
pub fn lanes_and_window(max_concurrency: usize) -> (usize, usize) {
    let window = SHARD_WIDTH.min(max_concurrency.max(1));
    ((max_concurrency / window).max(1), window)
}

/// What a shard reports to the ledger.
#[derive(Debug, Serialize, Deserialize)]
pub struct ShardReport<O> {
    pub awakeable: String,
    pub index: usize,
    pub shards: usize,
    pub total: usize,
    pub tolerated: usize,
    pub result: ShardResult<O>,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ShardResult<O> {
    /// Every subtask's outcome, in order.
    Done(Gathered<O>),
    /// More of the shard's subtasks failed than the whole run tolerates; the shard stopped.
    TooManyFailures(TooManyFailures),
}

/// The outcomes of consecutive subtasks: what succeeded, in order, and what failed, with the
/// positions that place it among them. Failures take no room in a run that has none.
#[derive(Debug, Serialize, Deserialize)]
pub struct Gathered<O> {
    pub outcomes: Vec<O>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<SubtaskFailure>,
}

impl<O> Default for Gathered<O> {
    fn default() -> Self {
        Self {
            outcomes: Vec::new(),
            failures: Vec::new(),
        }
    }
}

impl<O> Gathered<O> {
    pub fn len(&self) -> usize {
        self.outcomes.len() + self.failures.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the outcomes of the subtasks that follow.
    pub fn append(&mut self, next: Self) {
        self.outcomes.extend(next.outcomes);
        self.failures.extend(next.failures);
    }

    /// Every subtask's outcome in order, each failure at its index.
    pub fn into_results(self) -> Vec<Result<O, SubtaskFailure>> {
        let total = self.len();
        let mut outcomes = self.outcomes.into_iter();
        let mut failures = self.failures.into_iter().peekable();
        (0..total)
            .filter_map(|i| match failures.next_if(|f| f.index == i) {
                Some(failure) => Some(Err(failure)),
                None => outcomes.next().map(Ok),
            })
            .collect()
    }
}

/// More subtasks failed than the run tolerates.
#[derive(Debug, Serialize, Deserialize)]
pub struct TooManyFailures {
    /// The failure that went over the limit.
    pub failure: SubtaskFailure,
    /// How many subtasks had failed by then.
    pub failed: usize,
}

impl TooManyFailures {
    /// The error that fails the run: it names the subtask as the user counts them and, when
    /// some failures were tolerated, how many failed. Its status is always 500: the run did
    /// start, and 400/413 tell a caller that a task was refused before any subtask ran, so a
    /// subtask's own code goes in the message instead.
    pub fn into_error(self, total: usize, tolerated: usize) -> TerminalError {
        let f = self.failure;
        let code = match f.code {
            500 => String::new(),
            other => format!(" (code {other})"),
        };
        let mut message = format!(
            "subtask {} of {total} ({}) failed{code}: {}",
            f.index + 1,
            f.subtask,
            f.message
        );
        if tolerated > 0 {
            message += &format!(
                "; {} of {total} subtasks failed, more than the {tolerated} tolerated",
                self.failed
            );
        }
        TerminalError::new_with_code(500, message)
    }
}

/// The ledger key holding shard `index`'s outcomes.
pub fn shard_key(index: usize) -> &'static str {
    static KEYS: OnceLock<Vec<String>> = OnceLock::new();
    key(&KEYS, "shard", index)
}

/// The ledger key holding shard `index`'s input while it waits for a free lane.
pub fn input_key(index: usize) -> &'static str {
    static KEYS: OnceLock<Vec<String>> = OnceLock::new();
    key(&KEYS, "input", index)
}

/// The SDK's state getters take keys that outlive the handler's context, so the keys are made
/// once for the widest possible run and shared.
fn key(keys: &'static OnceLock<Vec<String>>, prefix: &str, index: usize) -> &'static str {
    let keys = keys.get_or_init(|| {
        (0..crate::job::MAX_SUBTASKS.div_ceil(SHARD_WIDTH))
            .map(|i| format!("{prefix}-{i}"))
            .collect()
    });
    keys.get(index)
        .map(String::as_str)
        .unwrap_or("out-of-range")
}

/// Splits `subtasks` into shards of at most [`SHARD_WIDTH`].
pub fn shards<S>(
    subtasks: Vec<S>,
    ledger: &str,
    awakeable: &str,
    window: usize,
    tolerated: usize,
) -> impl Iterator<Item = Shard<S>> {
    let total = subtasks.len();
    let shards = total.div_ceil(SHARD_WIDTH);
    let mut rest = subtasks.into_iter();
    (0..shards).map(move |index| Shard {
        ledger: ledger.to_owned(),
        awakeable: awakeable.to_owned(),
        index,
        shards,
        offset: index * SHARD_WIDTH,
        total,
        window,
        tolerated,
        subtasks: rest.by_ref().take(SHARD_WIDTH).collect(),
    })
}

/// Outcomes as the ledger stores and returns them.
pub type Outcomes<O> = Payload<Gathered<O>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_subtask_once_in_order() {
        let subtasks: Vec<usize> = (0..70).collect();
        let shards: Vec<Shard<usize>> = shards(subtasks, "inv_1", "sign_1", 32, 0).collect();
        assert_eq!(shards.len(), 3);
        assert_eq!(shards[0].subtasks.len(), 32);
        assert_eq!(shards[2].subtasks, (64..70).collect::<Vec<_>>());
        assert!(shards.iter().all(|s| s.shards == 3 && s.total == 70));
        assert_eq!(shards[2].offset, 64);
        let flat: Vec<usize> = shards.into_iter().flat_map(|s| s.subtasks).collect();
        assert_eq!(flat, (0..70).collect::<Vec<_>>());
    }

    #[test]
    fn keys_are_stable_and_cover_the_widest_run() {
        assert_eq!(shard_key(0), "shard-0");
        let last = crate::job::MAX_SUBTASKS.div_ceil(SHARD_WIDTH) - 1;
        assert_eq!(shard_key(last), format!("shard-{last}"));
        assert!(std::ptr::eq(shard_key(3), shard_key(3)));
        assert_eq!(input_key(2), "input-2");
    }

    fn failure(index: usize) -> SubtaskFailure {
        SubtaskFailure {
            index,
            subtask: format!("s{index}"),
            code: 500,
            message: "broke".into(),
        }
    }

    #[test]
    fn gathered_outcomes_put_each_failure_at_its_index() {
        let mut all = Gathered {
            outcomes: vec!["a", "c"],
            failures: vec![failure(1)],
        };
        all.append(Gathered {
            outcomes: vec!["e"],
            failures: vec![failure(3), failure(5)],
        });
        let results = all.into_results();
        assert_eq!(results.len(), 6);
        assert_eq!(results[0], Ok("a"));
        assert_eq!(results[1].as_ref().unwrap_err().index, 1);
        assert_eq!(results[2], Ok("c"));
        assert_eq!(results[3].as_ref().unwrap_err().index, 3);
        assert_eq!(results[4], Ok("e"));
        assert_eq!(results[5].as_ref().unwrap_err().subtask, "s5");
    }

    #[test]
    fn a_run_without_failures_ships_no_failure_field() {
        let none: Gathered<u8> = Gathered {
            outcomes: vec![1, 2],
            failures: vec![],
        };
        assert_eq!(
            serde_json::to_string(&none).unwrap(),
            r#"{"outcomes":[1,2]}"#
        );
    }

    #[test]
    fn too_many_failures_names_the_subtask_and_the_tally() {
        let error = |tolerated| {
            TooManyFailures {
                failure: failure(4),
                failed: 3,
            }
            .into_error(10, tolerated)
        };
        assert_eq!(error(0).message(), "subtask 5 of 10 (s4) failed: broke");
        assert_eq!(
            error(2).message(),
            "subtask 5 of 10 (s4) failed: broke; 3 of 10 subtasks failed, more than the 2 tolerated"
        );
        assert_eq!(error(2).code(), 500);
        // A subtask's own 400 must not read as a task refused before it started.
        let refused = TooManyFailures {
            failure: SubtaskFailure {
                code: 400,
                ..failure(0)
            },
            failed: 1,
        }
        .into_error(10, 0);
        assert_eq!(refused.code(), 500);
        assert_eq!(
            refused.message(),
            "subtask 1 of 10 (s0) failed (code 400): broke"
        );
    }

    #[test]
    fn lanes_times_window_never_exceeds_the_cap() {
        assert_eq!(lanes_and_window(1), (1, 1));
        assert_eq!(lanes_and_window(10), (1, 10));
        assert_eq!(lanes_and_window(32), (1, 32));
        assert_eq!(lanes_and_window(100), (3, 32));
        for cap in 1..2000 {
            let (lanes, window) = lanes_and_window(cap);
            assert!(lanes * window <= cap && lanes >= 1 && window >= 1, "{cap}");
        }
    }
}
