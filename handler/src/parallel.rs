//! Several side effects at once inside one invocation, each outcome journaled.
//!
//! restate-sdk 0.13 runs one `ctx.run` at a time: a run must be awaited before the next starts
//! (sdk-rust#72), so side effects written as separate steps run one after the other. [`run_all`]
//! runs them together inside journaled *rounds*: a round is one `ctx.run` whose closure runs
//! every side effect still owed at once and returns each one's outcome, success or failure, as
//! a value. The round's outcomes are journaled together, so:
//!
//! - a side effect that succeeded in a journaled round never runs again, on any retry or replay;
//! - one that failed retryably runs again in the next round, after a durable backoff, alone with
//!   the others that failed: the ones that succeeded are not repeated;
//! - one that failed terminally (a [`SideEffectError::Terminal`]) is recorded and not retried;
//! - a round cut short (the process died, the invocation was interrupted) runs again whole, which
//!   is exactly what a single `ctx.run` allows.
//!
//! This is what lets one subtask invocation work through many items (a batch) in the time of
//! the slowest, instead of their sum.

use crate::payload::Payload;
use futures::StreamExt;
use restate_sdk::prelude::*;
use serde::{Deserialize as SerdeDeserialize, Serialize as SerdeSerialize};
use std::future::Future;
use std::time::Duration;

/// Why one side effect did not succeed this time.
#[derive(Debug)]
pub enum SideEffectError {
    /// Worth another try (a timeout, a 503): retried in the next round.
    Retryable(String),
    /// Will never succeed (bad data, a 4xx): recorded as that item's failure, never retried.
    Terminal { code: u16, message: String },
}

impl SideEffectError {
    pub fn terminal(code: u16, message: impl Into<String>) -> Self {
        Self::Terminal {
            code,
            message: message.into(),
        }
    }
}

/// Any error raised with `?` inside a side effect is retryable; say [`SideEffectError::terminal`]
/// for one that is not.
impl<E: std::error::Error> From<E> for SideEffectError {
    fn from(error: E) -> Self {
        Self::Retryable(error.to_string())
    }
}

/// How [`run_all`] runs its side effects.
#[derive(Debug, Clone)]
pub struct RunAll {
    name: String,
    concurrency: usize,
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
}

impl RunAll {
    /// Rounds are journaled as `NAME #ROUND`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            concurrency: 64,
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }

    /// At most this many side effects in flight at once (default 64).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Attempts per side effect before its last retryable error becomes its failure (default 10).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The durable pause before the first retry round, doubled each round up to `max`.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    fn backoff_before(&self, round: u32) -> Duration {
        let factor = 2u32.saturating_pow(round.saturating_sub(1));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// One side effect's outcome in a round, as the journal keeps it.
#[derive(SerdeSerialize, SerdeDeserialize)]
enum Attempt<T> {
    Done(T),
    Retry(String),
    Failed { code: u16, message: String },
}

/// Runs `effect(i)` for every `i` in `0..count`, up to [`RunAll::concurrency`] at once, inside
/// journaled rounds (see the module's documentation). Returns each item's outcome in index
/// order: its value, or the terminal error it failed with (its last retryable error once its
/// attempts ran out). The outer error is the invocation's own: cancelled, or the journal failed.
pub async fn run_all<T, F, Fut>(
    ctx: &Context<'_>,
    how: &RunAll,
    count: usize,
    effect: F,
) -> Result<Vec<Result<T, TerminalError>>, TerminalError>
where
    T: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<T, SideEffectError>> + Send + 'static,
{
    let mut outcomes: Vec<Option<Result<T, TerminalError>>> = (0..count).map(|_| None).collect();
    let mut last_error: Vec<String> = vec![String::new(); count];
    for round in 0..how.max_attempts {
        let owed: Vec<usize> = (0..count).filter(|&i| outcomes[i].is_none()).collect();
        if owed.is_empty() {
            break;
        }
        if round > 0 {
            ctx.sleep(how.backoff_before(round)).await?;
        }
        let concurrency = how.concurrency;
        let effect = effect.clone();
        let attempts = owed.clone();
        let Payload(round_outcomes) = ctx
            .run(move || async move {
                let outcomes: Vec<(usize, Attempt<T>)> = futures::stream::iter(attempts)
                    .map(|i| {
                        let effect = effect.clone();
                        async move {
                            let attempt = match effect(i).await {
                                Ok(value) => Attempt::Done(value),
                                Err(SideEffectError::Retryable(message)) => Attempt::Retry(message),
                                Err(SideEffectError::Terminal { code, message }) => {
                                    Attempt::Failed { code, message }
                                }
                            };
                            (i, attempt)
                        }
                    })
                    .buffer_unordered(concurrency)
                    .collect()
                    .await;
                Ok(Payload(outcomes))
            })
            .name(format!("{} #{round}", how.name))
            .await?;
        for (i, attempt) in round_outcomes {
            let Some(slot) = outcomes.get_mut(i) else {
                continue;
            };
            match attempt {
                Attempt::Done(value) => *slot = Some(Ok(value)),
                Attempt::Failed { code, message } => {
                    *slot = Some(Err(TerminalError::new_with_code(code, message)))
                }
                Attempt::Retry(message) => last_error[i] = message,
            }
        }
    }
    Ok(outcomes
        .into_iter()
        .zip(last_error)
        .map(|(outcome, last)| {
            outcome.unwrap_or_else(|| {
                Err(TerminalError::new_with_code(
                    500,
                    format!("failed {} times, the last with: {last}", how.max_attempts),
                ))
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_first_retry_up_to_the_cap() {
        let how = RunAll::new("x").backoff(Duration::from_millis(100), Duration::from_millis(500));
        let waits: Vec<u128> = (1..6).map(|r| how.backoff_before(r).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
    }

    #[test]
    fn errors_raised_with_question_mark_are_retryable() {
        fn parse(raw: &str) -> Result<u32, SideEffectError> {
            Ok(raw.parse::<u32>()?)
        }
        assert!(matches!(parse("x"), Err(SideEffectError::Retryable(_))));
        assert!(matches!(
            SideEffectError::terminal(400, "bad"),
            SideEffectError::Terminal { code: 400, .. }
        ));
    }
}
