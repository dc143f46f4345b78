//! A job whose subtasks each take a *batch* of items and work through them at once with
//! [`fanout_handler::parallel::run_all`]: how a job pays one executor invocation for many items.
//!
//! `worker/run` takes `{"items": N, "batch": K, "work_ms": W}`: N items, K per subtask, each
//! item a side effect of W ms (a stand-in for an HTTP call or an upload) that yields a checksum.
//! The answer is `{"items": N, "subtasks": ⌈N/K⌉, "checksum": …}`, the same for every K, so a
//! benchmark can compare batch sizes on the very same work (`tests/tests/parallel.rs`).
//!
//! ```sh
//! cargo build -p fanout-handler --example batched_items
//! fanout local --handler target/debug/examples/batched_items
//! curl localhost:8080/worker/run --json '{"items": 1000, "batch": 10, "work_ms": 200}'
//! ```

use fanout_handler::parallel::{RunAll, run_all};
use fanout_handler::{InvalidInput, Job};
use restate_sdk::prelude::*;
use serde::{Deserialize, Serialize};
use std::process::ExitCode;
use std::time::Duration;

/// Items of one run: at most this many, so a batch of one still fits the subtask limit.
const MAX_ITEMS: u64 = 10_000 * 100;
const MAX_WORK_MS: u64 = 60_000;

#[derive(Deserialize)]
struct Task {
    items: u64,
    #[serde(default = "one")]
    batch: u64,
    #[serde(default)]
    work_ms: u64,
    /// Each item in a `ctx.run` of its own, one after the other: the baseline `run_all` beats.
    #[serde(default)]
    steps: bool,
}

fn one() -> u64 {
    1
}

#[derive(Serialize, Deserialize)]
struct Batch {
    first: u64,
    count: u64,
    work_ms: u64,
    #[serde(default)]
    steps: bool,
}

#[derive(Serialize, Deserialize)]
struct Summed {
    count: u64,
    checksum: u64,
}

#[derive(Serialize, Deserialize)]
struct Answer {
    items: u64,
    subtasks: usize,
    checksum: u64,
}

/// The item's checksum: FNV-1a of its name, so any run can be checked against a plain loop.
pub fn checksum(item: u64) -> u64 {
    format!("item-{item}")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

struct BatchedItems;

impl Job for BatchedItems {
    type Task = Task;
    type Subtask = Batch;
    type Outcome = Summed;
    type Output = Answer;

    fn split(&self, task: Task) -> Result<Vec<Batch>, InvalidInput> {
        if task.items == 0 || task.items > MAX_ITEMS {
            return Err(InvalidInput::new(format!(
                "items must be 1 to {MAX_ITEMS}, not {}",
                task.items
            )));
        }
        if task.batch == 0 {
            return Err(InvalidInput::new("batch must be at least 1"));
        }
        if task.work_ms > MAX_WORK_MS {
            return Err(InvalidInput::new(format!(
                "work_ms must be at most {MAX_WORK_MS}"
            )));
        }
        Ok((0..task.items)
            .step_by(task.batch as usize)
            .map(|first| Batch {
                first,
                count: task.batch.min(task.items - first),
                work_ms: task.work_ms,
                steps: task.steps,
            })
            .collect())
    }

    async fn execute(&self, ctx: &mut Context<'_>, batch: Batch) -> Result<Summed, HandlerError> {
        let Batch {
            first,
            count,
            work_ms,
            steps,
        } = batch;
        let work = move |item: u64| async move {
            tokio::time::sleep(Duration::from_millis(work_ms)).await;
            checksum(item)
        };
        if steps {
            let mut sum = 0u64;
            for item in first..first + count {
                let value = ctx.run(move || async move { Ok(work(item).await) }).await?;
                sum = sum.wrapping_add(value);
            }
            return Ok(Summed {
                count,
                checksum: sum,
            });
        }
        let how = RunAll::new("items").concurrency(count as usize);
        let outcomes = run_all(ctx, &how, count as usize, move |i| async move {
            Ok(work(first + i as u64).await)
        })
        .await?;
        let mut sum = 0u64;
        for outcome in outcomes {
            sum = sum.wrapping_add(outcome?);
        }
        Ok(Summed {
            count,
            checksum: sum,
        })
    }

    fn aggregate(&self, outcomes: Vec<Summed>) -> Answer {
        Answer {
            items: outcomes.iter().map(|o| o.count).sum(),
            subtasks: outcomes.len(),
            checksum: outcomes
                .iter()
                .fold(0u64, |sum, o| sum.wrapping_add(o.checksum)),
        }
    }

    fn subtask_label(&self, batch: &Batch) -> String {
        format!("items {}..{}", batch.first, batch.first + batch.count)
    }
}

fn main() -> ExitCode {
    fanout_handler::serve(BatchedItems)
}
