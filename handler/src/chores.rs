//! The reference job: a comma-separated list of chores, each "done" after a short durable sleep.
//!
//! `{"description": "shower,make coffee"}` → subtasks `shower`, `make coffee` →
//! `{"description": "shower: DONE,make coffee: DONE"}`.

use crate::job::{InvalidInput, Job, MAX_SUBTASKS};
use restate_sdk::prelude::*;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The largest accepted `description`, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 1024 * 1024;

/// Env var that sets the longest simulated subtask, in milliseconds.
pub const MAX_SUBTASK_MS_ENV: &str = "FANOUT_MAX_SUBTASK_MS";

/// The reference example's bound on a subtask's sleep: "a random number of seconds below 5".
pub const DEFAULT_MAX_SUBTASK: Duration = Duration::from_secs(5);

/// The one payload shape of the reference example, used by every handler in and out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Description {
    pub description: String,
}

/// The chores job.
#[derive(Debug, Clone)]
pub struct Chores {
    /// Each subtask sleeps a random duration in `[0, max_subtask)`.
    pub max_subtask: Duration,
}

impl Default for Chores {
    fn default() -> Self {
        Self {
            max_subtask: DEFAULT_MAX_SUBTASK,
        }
    }
}

impl Chores {
    /// Reads [`MAX_SUBTASK_MS_ENV`]; unset means the reference's 5 s.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var(MAX_SUBTASK_MS_ENV) {
            Err(_) => Ok(Self::default()),
            Ok(raw) => raw
                .trim()
                .parse::<u64>()
                .map(|ms| Self {
                    max_subtask: Duration::from_millis(ms),
                })
                .map_err(|_| {
                    format!(
                        "{MAX_SUBTASK_MS_ENV}={raw:?} is not a whole number of milliseconds; \
                         set it to e.g. 200, or unset it for the default of 5000"
                    )
                }),
        }
    }
}

/// Splits a chores description into trimmed items, rejecting what cannot be a chore.
///
/// Empty items (`"a,,b"`, a leading or trailing comma) are rejected rather than skipped: a
/// stray comma usually means a chore went missing, and silently dropping it would lose work.
pub fn split_description(description: &str) -> Result<Vec<String>, InvalidInput> {
    if description.len() > MAX_DESCRIPTION_BYTES {
        return Err(InvalidInput::new(format!(
            "description is {} bytes; the limit is {MAX_DESCRIPTION_BYTES} bytes (1 MiB): \
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

/// Joins subtask results in input order, as the reference example prints them.
pub fn join_results<'a>(results: impl IntoIterator<Item = &'a str>) -> String {
    results.into_iter().collect::<Vec<_>>().join(",")
}

impl Job for Chores {
    type Task = Description;
    type Subtask = Description;
    type Outcome = Description;
    type Output = Description;

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
        // Drawn from the context's seeded generator, so a replay sleeps the same.
        let max_ms = self.max_subtask.as_millis() as u64;
        let sleep_ms = if max_ms == 0 {
            0
        } else {
            ctx.rand().random_range(0..max_ms)
        };
        ctx.sleep(Duration::from_millis(sleep_ms)).await?;
        Ok(Description {
            description: format!("{}: DONE", chore.description),
        })
    }

    fn aggregate(&self, outcomes: Vec<Description>) -> Description {
        Description {
            description: join_results(outcomes.iter().map(|o| o.description.as_str())),
        }
    }

    fn subtask_label(&self, chore: &Description) -> String {
        chore.description.clone()
    }

    fn output_label(&self, output: &Description) -> String {
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
        assert!(err.contains("1048577 bytes"), "{err}");
    }

    #[test]
    fn enforces_the_subtask_limit_at_the_boundary() {
        let at_limit = vec!["a"; MAX_SUBTASKS].join(",");
        assert_eq!(chores(&at_limit).unwrap().len(), MAX_SUBTASKS);
        let err = chores(&format!("{at_limit},a")).unwrap_err();
        assert!(err.contains("10001 subtasks"), "{err}");
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
}
