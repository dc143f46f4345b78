//! The journal planner: before fanning out on Lambda, estimate what Restate will ship to the
//! coordinator and refuse a fan-out that cannot fit Lambda's payload limit.
//!
//! On Lambda every resume of the coordinator is one Invoke request carrying its whole journal:
//! the input, the split result, one call per subtask and, by the end, one result per subtask.
//! Restate zstd-compresses requests above a threshold (4 MiB by default) when the endpoint
//! advertises it, and the event is base64 inside JSON. A fan-out whose final journal cannot
//! fit would fail on its last resume and be retried forever, so it is refused up front, before
//! any subtask starts, with the numbers that explain why.
//!
//! Why it sizes one journal and does not choose between shapes: under the fan-in ledger the
//! coordinator's journal holds the task, its split, the shard plan and every outcome, and every
//! other invocation of the run (a shard, a ledger record, a subtask) ships a subset of that.
//! So when the coordinator fits, a shard of any width fits too, and when it does not, no tree
//! of shards helps: the split (journaled by `run`, as the contract says) and the aggregated
//! outcomes must pass through the coordinator whatever the shape. Flat in-order waiting
//! journals the same bytes, in more requests.

use crate::job::InvalidInput;

/// Journal bytes per call beyond the subtask payload: the call command (target, headers,
/// ids) and the notification carrying the callee's invocation id.
const PER_CALL_OVERHEAD: usize = 160;
/// Journal bytes per result beyond the outcome payload.
const PER_RESULT_OVERHEAD: usize = 48;
/// The Lambda event around the body: path, headers, JSON framing.
const EVENT_OVERHEAD: usize = 4 * 1024;

/// What the coordinator's requests must fit on Lambda.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadBudget {
    /// Lambda's limit on a synchronous request (6 MB).
    pub limit: usize,
    /// Restate compresses requests whose body is larger than this (its
    /// `request-compression-threshold`, 4 MiB by default).
    pub compression_threshold: usize,
}

impl PayloadBudget {
    pub const LAMBDA: Self = Self {
        limit: 6 * 1024 * 1024,
        compression_threshold: 4 * 1024 * 1024,
    };
}

/// The estimate for one fan-out.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub subtasks: usize,
    /// The coordinator's final journal, uncompressed.
    pub journal_bytes: usize,
    /// Its compressed size, from the compression ratio measured on the split result.
    pub compressed_bytes: usize,
    /// The largest Invoke request Restate will send to the coordinator.
    pub request_bytes: usize,
}

/// Estimates the coordinator's journal for `subtasks` (their serialized JSON) whose outcomes
/// are expected to be about `outcome_bytes(subtask_bytes)` each.
pub fn estimate(
    budget: &PayloadBudget,
    split_result: &[u8],
    subtasks: &[usize],
    outcome_bytes: impl Fn(usize) -> usize,
) -> Estimate {
    let calls: usize = subtasks.iter().map(|s| s + PER_CALL_OVERHEAD).sum();
    let outcomes: usize = subtasks.iter().map(|&s| outcome_bytes(s)).sum();
    let results = outcomes + subtasks.len() * PER_RESULT_OVERHEAD;
    // The input is about as large as the split result; the output about as large as all
    // outcomes together.
    let journal_bytes = 2 * split_result.len() + calls + results + outcomes;
    let ratio = compression_ratio(split_result);
    let compressed_bytes = (journal_bytes as f64 * ratio).ceil() as usize;
    let body = if journal_bytes > budget.compression_threshold {
        compressed_bytes
    } else {
        journal_bytes
    };
    Estimate {
        subtasks: subtasks.len(),
        journal_bytes,
        compressed_bytes,
        request_bytes: body.div_ceil(3) * 4 + EVENT_OVERHEAD,
    }
}

/// The compressed/raw ratio of a sample, measured with the fast zstd level. The journal's
/// bulk is the subtasks' payloads repeated, so the split result is a faithful sample.
fn compression_ratio(sample: &[u8]) -> f64 {
    if sample.len() < 1024 {
        return 1.0;
    }
    match zstd::bulk::compress(sample, 1) {
        Ok(packed) => (packed.len() as f64 / sample.len() as f64).clamp(0.01, 1.0),
        Err(_) => 1.0,
    }
}

/// Refuses a fan-out whose estimate does not fit, saying by how much and what to do.
pub fn check(budget: &PayloadBudget, estimate: &Estimate) -> Result<(), InvalidInput> {
    if estimate.request_bytes <= budget.limit {
        return Ok(());
    }
    let fitting = (estimate.subtasks as f64 * budget.limit as f64 / estimate.request_bytes as f64)
        .floor()
        .max(1.0) as usize;
    Err(InvalidInput::new(format!(
        "a fan-out of {} subtasks does not fit on Lambda: its coordinator's journal would reach \
         about {} bytes ({} compressed), so Restate would send requests of about {} bytes, \
         above Lambda's payload limit of {} bytes; nothing was started. Split the task into \
         runs of at most about {fitting} subtasks, or make the subtasks' payloads smaller",
        estimate.subtasks,
        estimate.journal_bytes,
        estimate.compressed_bytes,
        estimate.request_bytes,
        budget.limit,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_of(items: &[String]) -> Vec<u8> {
        serde_json::to_vec(items).unwrap()
    }

    #[test]
    fn small_fan_outs_fit_uncompressed() {
        let items: Vec<String> = (0..100).map(|i| format!("chore {i}")).collect();
        let sizes: Vec<usize> = items.iter().map(|i| i.len() + 17).collect();
        let e = estimate(&PayloadBudget::LAMBDA, &json_of(&items), &sizes, |s| s + 6);
        assert!(e.journal_bytes < PayloadBudget::LAMBDA.compression_threshold);
        assert!(
            e.request_bytes > e.journal_bytes,
            "base64 grows an uncompressed body"
        );
        check(&PayloadBudget::LAMBDA, &e).unwrap();
    }

    #[test]
    fn compressible_journals_far_above_the_limit_fit() {
        // 2,000 subtasks of 1,000 repetitive bytes: ~11 MB of journal that zstd shrinks a lot.
        let items: Vec<String> = (0..2000).map(|i| format!("{i:01000}")).collect();
        let sizes: Vec<usize> = items.iter().map(|i| i.len() + 17).collect();
        let e = estimate(&PayloadBudget::LAMBDA, &json_of(&items), &sizes, |s| s + 6);
        assert!(e.journal_bytes > 6 * 1024 * 1024, "{e:?}");
        check(&PayloadBudget::LAMBDA, &e).unwrap();
    }

    #[test]
    fn incompressible_journals_above_the_limit_are_refused_with_the_numbers() {
        // Pseudo-random text (xorshift) does not compress below the limit.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let items: Vec<String> = (0..2000)
            .map(|_| {
                (0..1000)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        char::from(b'!' + (x % 90) as u8)
                    })
                    .collect()
            })
            .collect();
        let sizes: Vec<usize> = items.iter().map(|i| i.len() + 17).collect();
        let e = estimate(&PayloadBudget::LAMBDA, &json_of(&items), &sizes, |s| s + 6);
        let err = check(&PayloadBudget::LAMBDA, &e).unwrap_err().0;
        assert!(err.contains("a fan-out of 2000 subtasks"), "{err}");
        assert!(err.contains("6291456"), "{err}");
        assert!(err.contains("nothing was started"), "{err}");
    }
}
