//! The reference job: a comma-separated list of chores, each "done" after a short durable sleep.
//!
//! `{"description": "shower,make coffee"}` → subtasks `shower`, `make coffee` →
//! `{"description": "shower: DONE,make coffee: DONE"}`.

use crate::job::{InvalidInput, Job, MAX_SUBTASKS, SubtaskFailure, execute_each};
use crate::parallel::{RunAll, run_all};
use restate_sdk::prelude::*;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The largest accepted `description`, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 2 * 1024 * 1024;

/// Env var that sets the longest simulated subtask, in milliseconds.
pub const MAX_SUBTASK_MS_ENV: &str = "FANOUT_MAX_SUBTASK_MS";

/// Env var that sets how long each subtask works inside a journaled step, in milliseconds.
pub const SUBTASK_WORK_MS_ENV: &str = "FANOUT_SUBTASK_WORK_MS";

/// Env var that makes chores named `flaky…` fail with a retryable error for this many
/// milliseconds after their first attempt: a documented way to watch Restate retry (tests,
/// demos). Unset: no chore ever fails.
pub const FLAKY_MS_ENV: &str = "FANOUT_FLAKY_MS";

/// Env var that gives the simulated work a heavy tail: `P%xF` makes P % of the chores (drawn
/// from the seeded generator) sleep F times longer, e.g. `5%x20`. Unset: no tail.
pub const TAIL_ENV: &str = "FANOUT_SUBTASK_TAIL";

/// Chores whose description starts with this fail transiently while [`FLAKY_MS_ENV`] says so.
pub const FLAKY_PREFIX: &str = "flaky";

/// The reference example's bound on a subtask's sleep: "a random number of seconds below 5".
pub const DEFAULT_MAX_SUBTASK: Duration = Duration::from_secs(5);

/// The one payload shape of the reference example, used by every handler in and out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Description {
    pub description: String,
}

/// What `worker/run` returns: the reference's `{"description": …}` and, when a run under a
/// tolerant failure policy had failures, each failed chore with its error. A run without
/// failures is exactly the reference payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Aggregate {
    pub description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<SubtaskFailure>,
}

/// How a failed chore shows in the aggregated description.
pub const FAILED_SUFFIX: &str = ": FAILED";

/// The chores job.
#[derive(Debug, Clone)]
pub struct Chores {
    /// Each subtask sleeps durably for a random duration in `[0, max_subtask)`; on Lambda the
    /// function returns while it sleeps.
    pub max_subtask: Duration,
    /// Each subtask then works this long inside a journaled step, holding its instance busy as
    /// real work would (0 by default, as in the reference).
    pub work: Duration,
    /// Chores named `flaky…` fail with a retryable error until this long after their first
    /// attempt (`None`: never).
    pub flaky_for: Option<Duration>,
    /// A share of the chores sleeps this many times longer: real work's heavy tail.
    pub tail: Option<Tail>,
}

/// A heavy tail: `percent` % of the chores take `factor` times as long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tail {
    pub percent: f64,
    pub factor: u64,
}

impl Tail {
    /// Parses `P%xF`, e.g. `5%x20`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{TAIL_ENV}={raw:?} is not a tail: write P%xF, e.g. 5%x20 (5 % of the chores \
                 take 20 times as long), or unset it"
            )
        };
        let (percent, factor) = raw.trim().split_once("%x").ok_or_else(bad)?;
        let percent: f64 = percent.trim().parse().map_err(|_| bad())?;
        let factor: u64 = factor.trim().parse().map_err(|_| bad())?;
        if !(percent > 0.0 && percent <= 100.0) || factor < 1 {
            return Err(bad());
        }
        Ok(Self { percent, factor })
    }
}

impl Default for Chores {
    fn default() -> Self {
        Self {
            max_subtask: DEFAULT_MAX_SUBTASK,
            work: Duration::ZERO,
            flaky_for: None,
            tail: None,
        }
    }
}

impl Chores {
    /// Reads [`MAX_SUBTASK_MS_ENV`] (unset: the reference's 5 s) and [`SUBTASK_WORK_MS_ENV`]
    /// (unset: no work).
    pub fn from_env() -> Result<Self, String> {
        let defaults = Self::default();
        Ok(Self {
            max_subtask: millis_from_env(MAX_SUBTASK_MS_ENV, defaults.max_subtask)?,
            work: millis_from_env(SUBTASK_WORK_MS_ENV, defaults.work)?,
            flaky_for: match std::env::var_os(FLAKY_MS_ENV) {
                None => None,
                Some(_) => Some(millis_from_env(FLAKY_MS_ENV, Duration::ZERO)?),
            },
            tail: match std::env::var(TAIL_ENV) {
                Ok(raw) if !raw.trim().is_empty() => Some(Tail::parse(&raw)?),
                _ => None,
            },
        })
    }
}

fn millis_from_env(name: &str, default: Duration) -> Result<Duration, String> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(raw) => raw
            .trim()
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| {
                format!(
                    "{name}={raw:?} is not a whole number of milliseconds; set it to e.g. 200, \
                     or unset it for the default of {}",
                    default.as_millis()
                )
            }),
    }
}

/// Splits a chores description into trimmed items, rejecting what cannot be a chore.
///
/// Empty items (`"a,,b"`, a leading or trailing comma) are rejected rather than skipped: a
/// stray comma usually means a chore went missing, and silently dropping it would lose work.
pub fn split_description(description: &str) -> Result<Vec<String>, InvalidInput> {
    if description.len() > MAX_DESCRIPTION_BYTES {
        return Err(InvalidInput::new(format!(
            "description is {} bytes; the limit is {MAX_DESCRIPTION_BYTES} bytes (2 MiB): \
             split the work into several tasks",
            description.len()
        )));
    }
    if description.trim().is_empty() {
        return Err(InvalidInput::new(
            "description is empty; give comma-separated subtasks, e.g. \"shower,make coffee\"",
        ));
    }
    let items: Vec<&str> = description.split(',').map(str::trim).collect();
    if items.len() > MAX_SUBTASKS {
        return Err(InvalidInput::new(format!(
            "description has {} subtasks; the limit is {MAX_SUBTASKS}: split the work into \
             several tasks",
            items.len()
        )));
    }
    if let Some(position) = items.iter().position(|item| item.is_empty()) {
        return Err(InvalidInput::new(format!(
            "subtask {} of {} is empty (two commas in a row, or a comma at the start or end); \
             remove the extra comma",
            position + 1,
            items.len()
        )));
    }
    Ok(items.into_iter().map(str::to_owned).collect())
}

/// The `MS` of a chore written `name@MS`.
pub fn fixed_sleep_ms(chore: &str) -> Option<u64> {
    let (_, ms) = chore.rsplit_once('@')?;
    if ms.is_empty() || !ms.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ms.parse().ok()
}

/// Joins subtask results in input order, as the reference example prints them.
pub fn join_results<'a>(results: impl IntoIterator<Item = &'a str>) -> String {
    results.into_iter().collect::<Vec<_>>().join(",")
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransientFailure(String);

/// Fails with a retryable error while less than `window` has passed since the first attempt,
/// whose time is journaled so every retry measures from the same start.
async fn fail_within(
    ctx: &mut Context<'_>,
    window: Duration,
    chore: &str,
) -> Result<(), HandlerError> {
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    };
    let first_attempt_ms = ctx
        .run(|| async move { Ok(now_ms()) })
        .name("first attempt")
        .await?;
    let elapsed = now_ms().saturating_sub(first_attempt_ms);
    if elapsed < window.as_millis() as u64 {
        return Err(TransientFailure(format!(
            "{chore} failed transiently ({FLAKY_MS_ENV}: {elapsed} ms of {} ms elapsed)",
            window.as_millis()
        ))
        .into());
    }
    Ok(())
}

impl Chores {
    /// How long a chore sleeps. A chore written `name@MS` sleeps exactly MS ms, so benchmarks
    /// can choose the order in which results come back; otherwise the time is drawn from the
    /// context's seeded generator, so a replay sleeps the same.
    fn sleep_ms(&self, ctx: &mut Context<'_>, chore: &Description) -> u64 {
        let max_ms = self.max_subtask.as_millis() as u64;
        match fixed_sleep_ms(&chore.description) {
            Some(ms) => ms,
            None if max_ms == 0 => 0,
            None => {
                let drawn = ctx.rand().random_range(0..max_ms);
                match self.tail {
                    Some(tail) if ctx.rand().random_range(0.0..100.0) < tail.percent => {
                        drawn * tail.factor
                    }
                    _ => drawn,
                }
            }
        }
    }
}

/// A chore's outcome: `"shower"` → `"shower: DONE"`.
fn done(chore: Description) -> Description {
    Description {
        description: format!("{}: DONE", chore.description),
    }
}

impl Job for Chores {
    type Task = Description;
    type Subtask = Description;
    type Outcome = Description;
    type Output = Aggregate;

    fn split(&self, task: Description) -> Result<Vec<Description>, InvalidInput> {
        Ok(split_description(&task.description)?
            .into_iter()
            .map(|description| Description { description })
            .collect())
    }

    async fn execute(
        &self,
        ctx: &mut Context<'_>,
        chore: Description,
    ) -> Result<Description, HandlerError> {
        if let Some(window) = self.flaky_for
            && chore.description.starts_with(FLAKY_PREFIX)
        {
            fail_within(ctx, window, &chore.description).await?;
        }
        let sleep_ms = self.sleep_ms(ctx, &chore);
        ctx.sleep(Duration::from_millis(sleep_ms)).await?;
        if !self.work.is_zero() {
            let work = self.work;
            ctx.run(|| async move {
                tokio::time::sleep(work).await;
                Ok(())
            })
            .name("work")
            .await?;
        }
        Ok(done(chore))
    }

    /// The chores of a batch run side by side: one durable sleep as long as the longest (so
    /// the batch costs one resume, not one per chore), then their work at once in journaled
    /// rounds ([`run_all`]). Flaky chores take the one-by-one path, whose retries they test.
    async fn execute_batch(
        &self,
        ctx: &mut Context<'_>,
        chores: Vec<Description>,
    ) -> Result<Vec<Result<Description, TerminalError>>, HandlerError> {
        if self.flaky_for.is_some()
            && chores
                .iter()
                .any(|chore| chore.description.starts_with(FLAKY_PREFIX))
        {
            return execute_each(self, ctx, chores).await;
        }
        let longest = chores
            .iter()
            .map(|chore| self.sleep_ms(ctx, chore))
            .max()
            .unwrap_or(0);
        ctx.sleep(Duration::from_millis(longest)).await?;
        if !self.work.is_zero() {
            let work = self.work;
            let worked = run_all(
                ctx,
                &RunAll::new("work"),
                chores.len(),
                move |_| async move {
                    tokio::time::sleep(work).await;
                    Ok(())
                },
            )
            .await?;
            return Ok(chores
                .into_iter()
                .zip(worked)
                .map(|(chore, worked)| worked.map(|()| done(chore)))
                .collect());
        }
        Ok(chores.into_iter().map(|chore| Ok(done(chore))).collect())
    }

    fn aggregate(&self, outcomes: Vec<Description>) -> Aggregate {
        Aggregate {
            description: join_results(outcomes.iter().map(|o| o.description.as_str())),
            failed: Vec::new(),
        }
    }

    fn tolerates_failures(&self) -> bool {
        true
    }

    fn aggregate_partial(
        &self,
        outcomes: Vec<Result<Description, SubtaskFailure>>,
    ) -> Option<Aggregate> {
        let shown: Vec<String> = outcomes
            .iter()
            .map(|outcome| match outcome {
                Ok(done) => done.description.clone(),
                Err(failure) => format!("{}{FAILED_SUFFIX}", failure.subtask),
            })
            .collect();
        Some(Aggregate {
            description: join_results(shown.iter().map(String::as_str)),
            failed: outcomes.into_iter().filter_map(Result::err).collect(),
        })
    }

    fn outcome_size_hint(&self, subtask_bytes: usize) -> usize {
        subtask_bytes + ": DONE".len()
    }

    fn subtask_label(&self, chore: &Description) -> String {
        chore.description.clone()
    }

    fn output_label(&self, output: &Aggregate) -> String {
        output.description.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chores(description: &str) -> Result<Vec<String>, String> {
        split_description(description).map_err(|e| e.0)
    }

    #[test]
    fn splits_the_reference_example_in_order() {
        assert_eq!(
            chores("get out of bed,shower,make coffee,have breakfast").unwrap(),
            ["get out of bed", "shower", "make coffee", "have breakfast"]
        );
    }

    #[test]
    fn tails_parse_and_impossible_ones_say_how_to_write_them() {
        assert_eq!(
            Tail::parse("5%x20").unwrap(),
            Tail {
                percent: 5.0,
                factor: 20
            }
        );
        assert_eq!(Tail::parse(" 0.5%x3 ").unwrap().percent, 0.5);
        for bad in ["5x20", "0%x20", "101%x2", "5%x0", "a%x2", ""] {
            let message = Tail::parse(bad).unwrap_err();
            assert!(message.contains("P%xF, e.g. 5%x20"), "{bad}: {message}");
        }
    }

    #[test]
    fn trims_whitespace_around_items() {
        assert_eq!(chores("  a ,\tb\n, c").unwrap(), ["a", "b", "c"]);
    }

    #[test]
    fn one_item_is_one_subtask() {
        assert_eq!(chores("shower").unwrap(), ["shower"]);
    }

    #[test]
    fn rejects_empty_items_naming_the_position() {
        let err = chores("a,,b").unwrap_err();
        assert!(err.contains("subtask 2 of 3 is empty"), "{err}");
        assert!(chores(",a").unwrap_err().contains("subtask 1 of 2"));
        assert!(chores("a, ").unwrap_err().contains("subtask 2 of 2"));
    }

    #[test]
    fn rejects_an_empty_description() {
        assert!(chores("").unwrap_err().contains("description is empty"));
        assert!(chores("  \n").unwrap_err().contains("description is empty"));
    }

    #[test]
    fn enforces_the_size_limit_at_the_boundary() {
        let at_limit = "x".repeat(MAX_DESCRIPTION_BYTES);
        assert_eq!(chores(&at_limit).unwrap().len(), 1);
        let err = chores(&format!("{at_limit}y")).unwrap_err();
        assert!(err.contains("2097153 bytes"), "{err}");
    }

    #[test]
    fn enforces_the_subtask_limit_at_the_boundary() {
        let at_limit = vec!["a"; MAX_SUBTASKS].join(",");
        assert_eq!(chores(&at_limit).unwrap().len(), MAX_SUBTASKS);
        let err = chores(&format!("{at_limit},a")).unwrap_err();
        assert!(err.contains("10001 subtasks"), "{err}");
    }

    #[test]
    fn a_chore_can_name_its_sleep() {
        assert_eq!(fixed_sleep_ms("s1@250"), Some(250));
        assert_eq!(fixed_sleep_ms("mail bob@example.com"), None);
        assert_eq!(fixed_sleep_ms("shower"), None);
        assert_eq!(fixed_sleep_ms("s@"), None);
    }

    #[test]
    fn aggregates_in_input_order() {
        let outcomes = ["b: DONE", "a: DONE"].map(|d| Description {
            description: d.into(),
        });
        assert_eq!(
            Chores::default().aggregate(outcomes.to_vec()).description,
            "b: DONE,a: DONE"
        );
    }

    #[test]
    fn a_partial_aggregate_shows_each_failure_in_place_and_lists_it() {
        let failure = SubtaskFailure {
            index: 1,
            subtask: "flaky b".into(),
            code: 500,
            message: "broke".into(),
        };
        let done = |d: &str| {
            Ok(Description {
                description: format!("{d}: DONE"),
            })
        };
        let aggregate = Chores::default()
            .aggregate_partial(vec![done("a"), Err(failure.clone()), done("c")])
            .unwrap();
        assert_eq!(aggregate.description, "a: DONE,flaky b: FAILED,c: DONE");
        assert_eq!(aggregate.failed, vec![failure]);
        // Without failures the payload is the reference's, field for field.
        let clean = Chores::default()
            .aggregate_partial(vec![done("a")])
            .unwrap();
        assert_eq!(
            serde_json::to_value(clean).unwrap(),
            serde_json::json!({"description": "a: DONE"})
        );
    }
}
