//! The fan-in ledger: a coordinator that wakes at most three times, whatever the width, while
//! the run's concurrency cap stays full.
//!
//! On Lambda every resume of the coordinator replays its whole journal, so awaiting N calls
//! costs up to N resumes and O(N²) bytes. Here the coordinator awaits one awakeable instead,
//! and *lanes* do the waiting:
//!
//! ```text
//! worker/run ──send──► fanIn/start ──send──► worker/runShard ×L ──call──► worker/runSubtask ×N
//!     ▲                 (Virtual Object,       │  (a lane: up to `window` subtasks in flight,
//!     │                  key = the run's id)   │   the next one started on any completion)
//!     │                        ▲   ▲            │
//!     │                        │   └─ fanIn/claim ◄─┤ (more subtasks when the lane runs low)
//!     │                        └──── fanIn/record ◄─┘ (outcomes; a lane that has started enough
//!     │                                               hands its in-flight calls to a fresh
//!     │                                               invocation through the ledger)
//!     └──── awakeable ◄──── resolved by the record that brings the last outcome
//!
//! worker/run cancelled ──send──► fanIn/cancel ──cancel──► every lane ──cancel──► its subtasks
//! ```
//!
//! Why lanes: the cap is a number of *subtasks* in flight, so a slot must be refilled the moment
//! its subtask finishes, wherever the next pending subtask sits. A lane awaits its calls with a
//! select on any and starts the next pending subtask on each completion; the windows of all
//! lanes add up to the cap, so the cap is full while work remains and never exceeded.
//!
//! Why claims: a lane that owned a fixed slice would idle at the end of it while other lanes
//! still had work. Lanes instead claim subtasks from the ledger in index order, in grants that
//! shrink as the run nears its end (guided self-scheduling), so the last subtasks go to
//! whichever lane frees first.
//!
//! Why hand-overs: every resume of a lane on Lambda replays its journal, which grows with each
//! call. After [`HAND_OVER_AFTER`] calls a lane reports its outcomes and passes its pending
//! subtasks and the invocation ids of its calls still in flight to a fresh lane invocation,
//! which attaches to them: journals stay bounded and no slot waits for a drain.
//!
//! Why the ledger knows every lane's invocation: lanes are one-way sends, which Restate's
//! cancellation does not follow. When the coordinator is cancelled it tells the ledger
//! (`fanIn/cancel`), and the ledger cancels each lane's current invocation; a cancelled lane's
//! SDK cancels the calls it made, and the lane itself cancels the calls it attached to. A run
//! that fails over its limit stops its lanes the same way. Nothing of a run outlives it: the
//! ledger's state exists exactly while the run is live, so a report or claim that arrives after
//! the end finds no state and is turned away.
//!
//! The ledger keeps unclaimed inputs and reported outcomes under keys of their own, with lazy
//! state, so a claim or a record ships only what it touches.

use crate::job::SubtaskFailure;
use crate::payload::Payload;
use crate::source::Sink;
use restate_sdk::prelude::TerminalError;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// Most subtasks one lane keeps in flight. Every completion wakes its lane unless the lane is
/// already awake, so fewer, wider lanes take several completions per wake where completions
/// come fast: at N = 1,000, 0–1 s, cap 200 lanes of 64 made 555–568 lane and ledger
/// invocations where lanes of 32 made 930–944, and took 1.43–1.74× the ideal schedule against
/// 1.66–2.20×. The journal a wake replays is bounded by [`HAND_OVER_AFTER`], not by this.
pub const LANE_WIDTH: usize = 64;

/// Calls a lane invocation makes before it hands over to a fresh one: each wake replays the
/// invocation's journal, so this bounds the bytes a wake ships. With lanes of 64, handing over
/// after 128 shipped 29.9–30.1 KB per subtask at N = 1,000, 0–10 s, cap 200 against 23.7–23.8
/// KB after 64 (and 24.0–25.7 against 19.2–23.4 KB at N = 10,000, cap 1,000).
pub const HAND_OVER_AFTER: usize = 64;

/// Most bytes of subtasks one batch carries (`runBatch`'s body, JSON). A batch is one request
/// to the executor and, with its answer, one entry in the lane's journal: the bound keeps both
/// far below Lambda's 6 MB payload whatever the items weigh. A larger subtask goes alone.
pub const BATCH_BYTES: usize = 256 * 1024;

/// A lane invocation hands over once its calls' bodies and answers add up to this many bytes,
/// even before [`HAND_OVER_AFTER`] calls: its journal, replayed on every resume, stays far
/// below Lambda's 6 MB payload with large items or batches.
pub const HAND_OVER_BYTES: usize = 1024 * 1024;

/// Most subtasks of one lane when the cap covers the whole task: such a lane only starts its
/// calls and awaits them in order, which resumes it a few times whatever the width, and fewer
/// lanes mean fewer reports queued on the ledger at the end of the run (each costs a Lambda
/// round trip on the run's key, one after the other).
pub const DRAIN_LANE_WIDTH: usize = 128;

/// The header on a lane's call to `runSubtask` that gives the subtask's position in the task.
pub const INDEX_HEADER: &str = fanout_contract::headers::INDEX;

pub use crate::payload::Indexed;

/// A subtask a call carries: its position in the task and its label (for messages).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    #[serde(rename = "i")]
    pub index: usize,
    #[serde(rename = "l")]
    pub label: String,
}

/// What one call of a lane carries: one subtask (`runSubtask`) or a batch (`runBatch`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Piece {
    pub members: Vec<Member>,
    /// A call to `runBatch`, which answers one result per member.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub batch: bool,
}

impl Piece {
    pub fn one(member: Member) -> Self {
        Self {
            members: vec![member],
            batch: false,
        }
    }

    pub fn batch(members: Vec<Member>) -> Self {
        Self {
            members,
            batch: true,
        }
    }

    /// The position of its first subtask.
    pub fn first(&self) -> usize {
        self.members.first().map_or(0, |member| member.index)
    }
}

/// A call a lane handed over: what it carries and the invocation to attach to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InFlight {
    #[serde(flatten)]
    pub piece: Piece,
    pub invocation: String,
}

/// What identifies a run to its lanes and its ledger.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    /// The ledger's key: the coordinator's invocation id.
    pub ledger: String,
    /// The awakeable the coordinator waits on.
    pub awakeable: String,
    /// The task's width.
    pub total: usize,
    /// How many of the run's subtasks may fail (0: fail-fast).
    pub tolerated: usize,
    /// A run of items from S3 ([`crate::source`]): lanes read their grants from the items
    /// object and write their outcomes as parts, and the ledger keeps counts only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<Sink>,
    /// Subtasks per executor invocation (`x-fanout-batch-size`); lanes' windows count calls.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub batch: usize,
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

/// One lane invocation, as `worker/runShard` receives it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Lane<S> {
    pub run: Run,
    pub lane: usize,
    /// At most this many subtasks in flight, handed-over ones included.
    pub window: usize,
    /// Claimed subtasks not started yet, in index order.
    pub pending: Vec<Indexed<S>>,
    /// Items `[start, end)` granted to the lane and not read yet (a run from a source): the
    /// lane reads them from the items object before it starts any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unread: Option<(usize, usize)>,
    /// Calls started by an earlier invocation of this lane.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_flight: Vec<InFlight>,
    /// The ledger has nothing left to claim.
    pub exhausted: bool,
    /// This lane holds every subtask of the run: it answers the coordinator itself, and the
    /// ledger keeps nothing for it.
    #[serde(default)]
    pub sole: bool,
}

/// What the coordinator hands the ledger: the subtasks and each lane's window.
#[derive(Debug, Serialize, Deserialize)]
pub struct Plan<S> {
    pub run: Run,
    pub windows: Vec<usize>,
    pub subtasks: Vec<S>,
}

/// The lanes' windows for `width` subtasks under a cap of `max_concurrency`: they add up to
/// the cap (or the width, if smaller), each at most [`LANE_WIDTH`] (or [`DRAIN_LANE_WIDTH`]
/// when every subtask starts at once), as even as can be.
pub fn windows(width: usize, max_concurrency: usize) -> Vec<usize> {
    let slots = width.min(max_concurrency).max(1);
    let widest = if max_concurrency >= width {
        DRAIN_LANE_WIDTH
    } else {
        LANE_WIDTH
    };
    let lanes = slots.div_ceil(widest);
    (0..lanes)
        .map(|lane| slots / lanes + usize::from(lane < slots % lanes))
        .collect()
}

/// How many subtasks a lane is granted when it claims: shrinking grants as the run nears its
/// end, so no lane sits on pending work while another has free slots.
pub fn grant(remaining: usize, lanes: usize, window: usize) -> usize {
    remaining
        .div_ceil(2 * lanes.max(1))
        .clamp(1, window.max(1))
        .min(remaining)
}

/// A lane claims more once its pending subtasks drop to this many.
pub fn low_water(window: usize) -> usize {
    window / 4
}

/// A lane's request for more subtasks.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClaimRequest {
    pub lane: usize,
    pub window: usize,
    /// Grant a range of indexes, not inputs: the lane reads the items itself (a run from a
    /// source, whose ledger holds no inputs).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub range: bool,
}

/// The ledger's answer to a claim.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claim<S> {
    /// The next subtasks in index order; empty when none are left.
    pub subtasks: Vec<Indexed<S>>,
    /// For a ranged claim: the next indexes `[start, end)`; none when none are left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<(usize, usize)>,
    /// The run already failed: stop and cancel what is in flight.
    pub closed: bool,
}

/// What a lane reports to the ledger: the outcomes it gathered, and either its successor (a
/// hand-over) or nothing (the lane is done).
#[derive(Debug, Serialize, Deserialize)]
pub struct LaneReport<S, O> {
    pub run: Run,
    pub result: LaneResult<O>,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub successor: Option<Lane<S>>,
}

fn none<T>() -> Option<T> {
    None
}

#[derive(Debug, Serialize, Deserialize)]
pub enum LaneResult<O> {
    /// Outcomes of subtasks that finished, each with its index.
    Done(Gathered<O>),
    /// More of the lane's subtasks failed than the whole run tolerates; the lane stopped.
    TooManyFailures(TooManyFailures),
}

/// The outcomes of a set of subtasks: what succeeded, with positions, and what failed. Failures
/// take no room in a run that has none.
#[derive(Debug, Serialize, Deserialize)]
pub struct Gathered<O> {
    pub outcomes: Vec<Indexed<O>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<SubtaskFailure>,
    /// Outcomes that succeeded and were written elsewhere (a run's results object in S3):
    /// counted, not carried.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub elsewhere: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl<O> Default for Gathered<O> {
    fn default() -> Self {
        Self {
            outcomes: Vec::new(),
            failures: Vec::new(),
            elsewhere: 0,
        }
    }
}

impl<O> Gathered<O> {
    pub fn len(&self) -> usize {
        self.outcomes.len() + self.failures.len() + self.elsewhere
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds subtask `index`'s result. A failure is kept while at most `tolerated` have
    /// failed; the one after is given back, with the tally, to end the wait.
    pub fn add(
        &mut self,
        index: usize,
        label: impl FnOnce() -> String,
        result: Result<O, TerminalError>,
        tolerated: usize,
    ) -> Result<(), TooManyFailures> {
        let error = match result {
            Ok(item) => {
                self.outcomes.push(Indexed { index, item });
                return Ok(());
            }
            Err(error) => error,
        };
        let failure = SubtaskFailure {
            index,
            subtask: label(),
            code: error.code(),
            message: error.message().to_owned(),
        };
        if self.failures.len() >= tolerated {
            return Err(TooManyFailures {
                failed: self.failures.len() + 1,
                failure,
            });
        }
        self.failures.push(failure);
        Ok(())
    }

    /// Adds the outcomes of other subtasks.
    pub fn append(&mut self, other: Self) {
        self.outcomes.extend(other.outcomes);
        self.failures.extend(other.failures);
        self.elsewhere += other.elsewhere;
    }

    /// Every subtask's outcome in index order, each failure at its index.
    pub fn into_results(mut self) -> Vec<Result<O, SubtaskFailure>> {
        self.sort();
        let total = self.outcomes.len() + self.failures.len();
        let mut outcomes = self.outcomes.into_iter().map(|o| o.item);
        let mut failures = self.failures.into_iter().peekable();
        (0..total)
            .filter_map(|i| match failures.next_if(|f| f.index == i) {
                Some(failure) => Some(Err(failure)),
                None => outcomes.next().map(Ok),
            })
            .collect()
    }

    /// The outcomes alone, in index order (a run without failures).
    pub fn into_outcomes(mut self) -> Vec<O> {
        self.sort();
        self.outcomes.into_iter().map(|o| o.item).collect()
    }

    fn sort(&mut self) {
        self.outcomes.sort_by_key(|o| o.index);
        self.failures.sort_by_key(|f| f.index);
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

/// The ledger key holding subtask `index`'s input until a lane claims it.
pub fn input_key(index: usize) -> &'static str {
    static KEYS: OnceLock<Vec<String>> = OnceLock::new();
    key(&KEYS, "input", index)
}

/// The ledger key holding the `index`th report's outcomes.
pub fn report_key(index: usize) -> &'static str {
    static KEYS: OnceLock<Vec<String>> = OnceLock::new();
    key(&KEYS, "report", index)
}

/// The ledger key holding the invocation id of lane `lane`'s current invocation, so that a
/// cancelled or failed run can cancel its lanes (and, through them, their subtasks).
pub fn lane_key(lane: usize) -> &'static str {
    static KEYS: OnceLock<Vec<String>> = OnceLock::new();
    key(&KEYS, "lane", lane)
}

/// The SDK's state getters take keys that outlive the handler's context, so the keys are made
/// once for the widest possible run and shared. A report holds at least one outcome, so there
/// are never more reports than subtasks.
fn key(keys: &'static OnceLock<Vec<String>>, prefix: &str, index: usize) -> &'static str {
    let keys = keys.get_or_init(|| {
        (0..crate::job::MAX_SUBTASKS)
            .map(|i| format!("{prefix}-{i}"))
            .collect()
    });
    keys.get(index)
        .map(String::as_str)
        .unwrap_or("out-of-range")
}

/// Outcomes as the ledger stores and returns them.
pub type Outcomes<O> = Payload<Gathered<O>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(index: usize) -> SubtaskFailure {
        SubtaskFailure {
            index,
            subtask: format!("s{index}"),
            code: 500,
            message: "broke".into(),
        }
    }

    #[test]
    fn keys_are_stable_and_cover_the_widest_run() {
        assert_eq!(input_key(0), "input-0");
        let last = crate::job::MAX_SUBTASKS - 1;
        assert_eq!(report_key(last), format!("report-{last}"));
        assert!(std::ptr::eq(input_key(3), input_key(3)));
        assert_eq!(lane_key(7), "lane-7");
    }

    #[test]
    fn gathered_outcomes_come_back_in_index_order_with_each_failure_in_place() {
        let at = |index, item| Indexed { index, item };
        let mut all = Gathered {
            outcomes: vec![at(2, "c"), at(0, "a")],
            failures: vec![failure(5)],
            elsewhere: 0,
        };
        all.append(Gathered {
            outcomes: vec![at(4, "e")],
            failures: vec![failure(3), failure(1)],
            elsewhere: 0,
        });
        let results = all.into_results();
        assert_eq!(results.len(), 6);
        assert_eq!(results[0], Ok("a"));
        assert_eq!(results[1].as_ref().unwrap_err().index, 1);
        assert_eq!(results[2], Ok("c"));
        assert_eq!(results[3].as_ref().unwrap_err().index, 3);
        assert_eq!(results[4], Ok("e"));
        assert_eq!(results[5].as_ref().unwrap_err().subtask, "s5");
        let ordered = Gathered {
            outcomes: vec![at(1, "b"), at(0, "a")],
            failures: vec![],
            elsewhere: 0,
        };
        assert_eq!(ordered.into_outcomes(), vec!["a", "b"]);
    }

    #[test]
    fn adding_results_keeps_failures_up_to_the_tolerance_and_gives_back_the_next() {
        let broke = || Err(TerminalError::new_with_code(503, "down"));
        let mut gathered = Gathered::default();
        gathered.add(4, || "e".into(), Ok('e'), 1).unwrap();
        gathered.add(2, || "c".into(), broke(), 1).unwrap();
        let too_many = gathered.add(7, || "h".into(), broke(), 1).unwrap_err();
        assert_eq!((too_many.failed, too_many.failure.index), (2, 7));
        assert_eq!(too_many.failure.subtask, "h");
        assert_eq!(too_many.failure.code, 503);
        assert_eq!(gathered.len(), 2, "the one over the limit is not kept");
        let mut strict = Gathered::<char>::default();
        assert!(strict.add(0, || "a".into(), broke(), 0).is_err());
    }

    #[test]
    fn windows_add_up_to_the_cap_or_the_width_and_stay_even() {
        assert_eq!(windows(1, 500), vec![1]);
        assert_eq!(windows(100, 100), vec![100]);
        assert_eq!(windows(100, 99), vec![50, 49]);
        assert_eq!(windows(70, 3), vec![3]);
        assert_eq!(windows(1000, 1000), vec![125; 8]);
        assert_eq!(windows(1000, 200), vec![50; 4]);
        for width in [1, 5, 63, 64, 65, 100, 999, 1000, 10_000] {
            for cap in [1, 2, 10, 63, 64, 65, 100, 500, 1000, 1024, 20_000] {
                let w = windows(width, cap);
                assert_eq!(w.iter().sum::<usize>(), width.min(cap), "{width} {cap}");
                let widest = if cap >= width {
                    DRAIN_LANE_WIDTH
                } else {
                    LANE_WIDTH
                };
                assert!(w.iter().all(|&x| (1..=widest).contains(&x)), "{w:?}");
                let (lo, hi) = (w.iter().min().unwrap(), w.iter().max().unwrap());
                assert!(hi - lo <= 1, "{w:?}");
            }
        }
    }

    #[test]
    fn grants_shrink_towards_the_end_and_never_exceed_what_is_left() {
        assert_eq!(grant(10_000, 16, 32), 32);
        assert_eq!(grant(100, 16, 32), 4);
        assert_eq!(grant(3, 16, 32), 1);
        assert_eq!(grant(1, 1, 32), 1);
        assert_eq!(grant(5, 1, 32), 3);
        for remaining in 1..500 {
            for lanes in [1, 2, 16, 32] {
                let g = grant(remaining, lanes, 8);
                assert!(
                    (1..=8).contains(&g) && g <= remaining,
                    "{remaining} {lanes}"
                );
            }
        }
    }

    #[test]
    fn a_run_without_failures_ships_no_failure_field() {
        let none: Gathered<u8> = Gathered {
            outcomes: vec![Indexed { index: 0, item: 1 }],
            failures: vec![],
            elsewhere: 0,
        };
        assert_eq!(
            serde_json::to_string(&none).unwrap(),
            r#"{"outcomes":[{"i":0,"v":1}]}"#
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
}
