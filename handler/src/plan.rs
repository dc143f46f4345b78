//! The journal planner: before fanning out on Lambda, estimate what Restate will ship to the
//! coordinator and refuse a fan-out that cannot fit Lambda's payload limit.
//!
//! On Lambda every resume of the coordinator is one Invoke request carrying its journal so far.
//! Under the fan-in ledger there are three: the input alone; the input and the split result
//! (the split step's acknowledgement); and, at the end, the input, the split result, the plan
//! sent to `fanIn/start` (every subtask again) and the awakeable's result (every outcome).
//! Restate zstd-compresses a request body from a threshold on (4 MiB by default) when the
//! endpoint advertises it, and the event is base64 inside JSON. A fan-out whose journal cannot
//! fit would fail on its last resume and be retried forever, so it is refused up front, before
//! any subtask starts, with the numbers that explain why.
//!
//! How it estimates: it writes a sample shaped like that journal, section by section in the
//! journal's order, from the subtasks' own bytes, and compresses it as Restate does (zstd
//! level 3, streaming), marking where each resume's request ends. Extrapolating one section's
//! compression ratio to the whole journal does not work: each subtask recurs in the journal
//! (input, split, plan, outcome), and whether zstd finds a repeat depends on where it is. At
//! level 3 zstd looks back 2 MiB at most, and through bytes it cannot match it skips ahead,
//! remembering fewer positions to match later. So 1,000 random subtasks of 1,080 bytes, whose
//! split result alone hardly compresses, compress to about 40 % of their 4.4 MB journal, and
//! random text stops compressing at all once the sections pass about 2 MB.
//!
//! Why it sizes one journal and does not choose between shapes: under the fan-in ledger the
//! coordinator's journal holds the task, its split, the plan and every outcome, and every
//! other invocation of the run (a lane, a ledger record, a subtask) ships a subset of that.
//! So when the coordinator fits, the rest fits too, and when it does not, no tree of
//! invocations helps: the split (journaled by `run`, as the contract says) and the aggregated
//! outcomes must pass through the coordinator whatever the shape. Flat in-order waiting
//! journals the same bytes, in more requests.

use crate::job::{InvalidInput, Job};
use crate::policy::DEFAULT_MAX_CONCURRENCY;
use std::borrow::Cow;
use std::io::Write as _;

/// The zstd level restate-server compresses Lambda requests with: its `service-client` calls
/// `zstd::stream::encode_all(body, 3)`, streaming, so zstd does not know the size up front.
const RESTATE_ZSTD_LEVEL: i32 = 3;
/// Journal bytes of the invocation's start (ids, key, seed) and the input entry's framing.
const START_OVERHEAD: usize = 256;
/// Journal bytes around each later entry's payload (the split step, the send to
/// `fanIn/start`, the awakeable's result): message headers, names, ids.
const ENTRY_OVERHEAD: usize = 512;
/// The Lambda event around the body: path, headers, JSON framing.
const EVENT_OVERHEAD: usize = 4 * 1024;
/// Stand-ins, at their real lengths, for the ids in the plan: the run's invocation id (the
/// ledger's key) and the awakeable's id.
const LEDGER_ID: &str = "inv_1gdJBtdVEcM942bjcDmb1c1khoaJe11Hbz";
const AWAKEABLE_ID: &str = "sign_1M28aqY6ZfuwBmRnmyP_pAhPbWIP6mEWbAAAAAQ";

/// What the coordinator's requests must fit on Lambda.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadBudget {
    /// Lambda's limit on a synchronous request (6 MB).
    pub limit: usize,
    /// Restate compresses request bodies of this many bytes or more (its
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
    /// Its size once zstd-compressed as Restate does it (the raw size when the journal stays
    /// below the compression threshold, so Restate never compresses it).
    pub compressed_bytes: usize,
    /// The largest Invoke request Restate will send to the coordinator: of its resumes, the
    /// one whose body, compressed or not, is largest, base64 in the Lambda event.
    pub request_bytes: usize,
}

/// Estimates the coordinator's requests for `subtasks` (the sizes of their serialized JSON,
/// whose array `split_result` is) whose outcomes are expected to be about
/// `outcome_bytes(subtask_bytes)` each.
///
/// The journal is sampled from the subtasks' own bytes. The task input is unknown here and
/// taken to list the subtasks' contents, without the framing they all share, as a chores
/// description does. An outcome is taken to repeat its subtask's bytes, as far as its
/// expected size allows, followed by new (incompressible) bytes for whatever it adds: see
/// [`crate::job::Job::outcome_size_hint`].
pub fn estimate(
    budget: &PayloadBudget,
    split_result: &[u8],
    subtasks: &[usize],
    outcome_bytes: impl Fn(usize) -> usize,
) -> Estimate {
    let journal = Journal {
        split_result,
        items: items(split_result, subtasks),
        outcomes: subtasks.iter().map(|&s| outcome_bytes(s)).collect(),
    };
    // Counting first is cheap, and most fan-outs never reach the compression threshold.
    let mut sink = Sink::counting();
    journal.write(&mut sink);
    if sink.raw >= budget.compression_threshold {
        sink = Sink::compressing();
        journal.write(&mut sink);
    }
    let body = |request: &Request| match request.compressed {
        Some(compressed) if request.raw >= budget.compression_threshold => compressed,
        _ => request.raw,
    };
    let last = sink.requests.last().copied().unwrap_or_default();
    Estimate {
        subtasks: subtasks.len(),
        journal_bytes: last.raw,
        compressed_bytes: body(&last),
        request_bytes: sink
            .requests
            .iter()
            .map(|request| body(request).div_ceil(3) * 4 + EVENT_OVERHEAD)
            .max()
            .unwrap_or(EVENT_OVERHEAD),
    }
}

/// Each subtask's serialized bytes, cut out of the split result when `sizes` describe it
/// (`[` + the subtasks joined by `,` + `]`, as serde_json writes a list). Otherwise the bytes
/// are taken from the split result in turn, at the sizes given.
fn items<'a>(split_result: &'a [u8], sizes: &[usize]) -> Vec<Cow<'a, [u8]>> {
    let described = split_result.len()
        == 2 + sizes.iter().sum::<usize>() + sizes.len().saturating_sub(1)
        && split_result.first() == Some(&b'[')
        && split_result.last() == Some(&b']');
    if described {
        let mut at = 1;
        return sizes
            .iter()
            .map(|&size| {
                let item = &split_result[at..at + size];
                at += size + 1;
                Cow::Borrowed(item)
            })
            .collect();
    }
    let mut cycle = split_result.iter().copied().cycle();
    sizes
        .iter()
        .map(|&size| {
            if split_result.is_empty() {
                Cow::Owned(vec![b'x'; size])
            } else {
                Cow::Owned(cycle.by_ref().take(size).collect())
            }
        })
        .collect()
}

/// The coordinator's journal under the fan-in ledger, as far as its size goes.
struct Journal<'a> {
    split_result: &'a [u8],
    items: Vec<Cow<'a, [u8]>>,
    /// Each outcome's expected size.
    outcomes: Vec<usize>,
}

impl Journal<'_> {
    /// Writes the journal in order, marking where each resume's request ends.
    fn write(&self, sink: &mut Sink) {
        let mut noise = Noise::default();
        // Resume 1: the input, taken to list the subtasks' contents as one string (a chores
        // description): no framing repeats between them, so zstd finds nothing to match in
        // it, which makes it skip ahead and remember fewer of its positions for later.
        sink.put(&noise.bytes(START_OVERHEAD));
        sink.put(b"{\"input\":\"");
        let (prefix, suffix) = common_framing(&self.items);
        for (i, item) in self.items.iter().enumerate() {
            if i > 0 {
                sink.put(b",");
            }
            sink.put(&item[prefix..item.len() - suffix]);
        }
        sink.put(b"\"}");
        sink.request();
        // Resume 2: the split step's result.
        sink.put(&noise.bytes(ENTRY_OVERHEAD));
        sink.put(self.split_result);
        sink.request();
        // Resume 3: the plan sent to `fanIn/start` (`fan_in::Plan`: the run, the lanes'
        // windows and the subtasks, serialized as the split result is), then the awakeable's
        // result (`fan_in::Gathered`: every outcome with its index).
        sink.put(&noise.bytes(ENTRY_OVERHEAD));
        let total = self.items.len();
        let windows = crate::fan_in::windows(total, DEFAULT_MAX_CONCURRENCY)
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",");
        sink.put(
            format!(
                "{{\"run\":{{\"ledger\":\"{LEDGER_ID}\",\"awakeable\":\"{AWAKEABLE_ID}\",\
                 \"total\":{total},\"tolerated\":0}},\"windows\":[{windows}],\"subtasks\":"
            )
            .as_bytes(),
        );
        sink.put(self.split_result);
        sink.put(b"}");
        sink.put(&noise.bytes(ENTRY_OVERHEAD));
        sink.put(b"{\"outcomes\":[");
        for (i, (item, &size)) in self.items.iter().zip(&self.outcomes).enumerate() {
            let comma = if i == 0 { "" } else { "," };
            sink.put(format!("{comma}{{\"i\":{i},\"v\":").as_bytes());
            sink.put(&item[..size.min(item.len())]);
            sink.put(&noise.bytes(size.saturating_sub(item.len())));
            sink.put(b"}");
        }
        sink.put(b"]}");
        sink.request();
    }
}

/// How many bytes every item starts and ends with as JSON syntax (a struct's field names,
/// quotes): what a task's input would not repeat between them. The common bytes are cut at
/// the syntax, so contents the items happen to share (leading zeros) stay. None with fewer
/// than two items.
fn common_framing(items: &[Cow<'_, [u8]>]) -> (usize, usize) {
    let Some((first, rest)) = items.split_first() else {
        return (0, 0);
    };
    if rest.is_empty() {
        return (0, 0);
    }
    let mut prefix = first.len();
    let mut suffix = first.len();
    for item in rest {
        prefix = first[..prefix]
            .iter()
            .zip(item.iter())
            .take_while(|(a, b)| a == b)
            .count();
        suffix = first[first.len() - suffix..]
            .iter()
            .rev()
            .zip(item.iter().rev())
            .take_while(|(a, b)| a == b)
            .count();
    }
    let syntax = |b: &u8| b"\"{}[],:".contains(b);
    let prefix = first[..prefix]
        .iter()
        .rposition(syntax)
        .map_or(0, |at| at + 1);
    let suffix = first[first.len() - suffix..]
        .iter()
        .position(syntax)
        .map_or(0, |at| suffix - at);
    let shortest = items.iter().map(|item| item.len()).min().unwrap_or(0);
    (prefix, suffix.min(shortest - prefix))
}

/// The size of one request's body: raw, and compressed when the sink compresses.
#[derive(Debug, Clone, Copy, Default)]
struct Request {
    raw: usize,
    compressed: Option<usize>,
}

/// Where the sampled journal goes: counted, and compressed as Restate compresses it.
struct Sink {
    raw: usize,
    zstd: Option<zstd::stream::write::Encoder<'static, Counter>>,
    requests: Vec<Request>,
}

impl Sink {
    fn counting() -> Self {
        Self {
            raw: 0,
            zstd: None,
            requests: Vec::new(),
        }
    }

    fn compressing() -> Self {
        Self {
            // Without an encoder (out of memory) every request counts as incompressible.
            zstd: zstd::stream::write::Encoder::new(Counter(0), RESTATE_ZSTD_LEVEL).ok(),
            ..Self::counting()
        }
    }

    fn put(&mut self, bytes: &[u8]) {
        self.raw += bytes.len();
        if let Some(zstd) = &mut self.zstd
            && zstd.write_all(bytes).is_err()
        {
            self.zstd = None;
        }
    }

    /// A resume sends the journal so far. Restate compresses each request on its own, into
    /// a frame about as large as what this stream has produced once flushed here.
    fn request(&mut self) {
        let raw = self.raw;
        // After a zstd error the rest counts as incompressible.
        let compressed = self.zstd.as_mut().map(|zstd| match zstd.flush() {
            Ok(()) => zstd.get_ref().0,
            Err(_) => raw,
        });
        self.requests.push(Request { raw, compressed });
    }
}

/// Counts what zstd writes.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Deterministic bytes that do not compress: ids, and what outcomes add to their subtasks.
struct Noise(u64);

impl Default for Noise {
    fn default() -> Self {
        Self(0x9E37_79B9_7F4A_7C15)
    }
}

impl Noise {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                (self.0 >> 32) as u8
            })
            .collect()
    }
}

/// The estimate for `job`'s `subtasks`, as the worker makes it before fanning out.
pub fn estimate_for<J: Job>(budget: &PayloadBudget, job: &J, subtasks: &[J::Subtask]) -> Estimate {
    let sizes: Vec<usize> = subtasks
        .iter()
        .map(|s| serde_json::to_vec(s).map_or(0, |b| b.len()))
        .collect();
    let split_result = serde_json::to_vec(subtasks).unwrap_or_default();
    estimate(budget, &split_result, &sizes, |bytes| {
        job.outcome_size_hint(bytes)
    })
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
    use crate::chores::{Chores, Description};
    use crate::worker::split_and_plan;

    /// What `split_and_plan` estimates for a chores task of these items.
    fn plan(items: &[String]) -> Estimate {
        let subtasks: Vec<Description> = items
            .iter()
            .map(|description| Description {
                description: description.clone(),
            })
            .collect();
        estimate_for(&PayloadBudget::LAMBDA, &Chores::default(), &subtasks)
    }

    /// Whether the worker accepts these items as one chores task on Lambda.
    fn accepted(items: &[String]) -> bool {
        let task = Description {
            description: items.join(","),
        };
        split_and_plan(&Chores::default(), task, Some(&PayloadBudget::LAMBDA)).is_ok()
    }

    /// `n` items of `width` pseudo-random characters out of 90 (xorshift), no commas.
    fn random_items(n: usize, width: usize) -> Vec<String> {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        (0..n)
            .map(|_| {
                (0..width)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        char::from(b'!' + (x % 90) as u8)
                    })
                    .map(|c| if c == ',' { '~' } else { c })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn small_fan_outs_fit_uncompressed() {
        let items: Vec<String> = (0..100).map(|i| format!("chore {i}")).collect();
        let e = plan(&items);
        assert!(e.journal_bytes < PayloadBudget::LAMBDA.compression_threshold);
        assert_eq!(e.compressed_bytes, e.journal_bytes, "not compressed");
        assert!(
            e.request_bytes > e.journal_bytes,
            "base64 grows an uncompressed body"
        );
        check(&PayloadBudget::LAMBDA, &e).unwrap();
    }

    #[test]
    fn compressible_journals_far_above_the_limit_fit() {
        // 2,000 subtasks of 1,000 repetitive bytes: ~8 MB of journal that zstd shrinks a lot.
        let items: Vec<String> = (0..2000).map(|i| format!("{i:01000}")).collect();
        let e = plan(&items);
        assert!(e.journal_bytes > 6 * 1024 * 1024, "{e:?}");
        assert!(e.compressed_bytes * 20 < e.journal_bytes, "{e:?}");
        check(&PayloadBudget::LAMBDA, &e).unwrap();
    }

    #[test]
    fn the_largest_request_can_be_a_resume_below_the_compression_threshold() {
        // Input and split result (~4 MB) go uncompressed, base64: larger than the final
        // journal, which is compressed.
        let items: Vec<String> = (0..2000).map(|i| format!("{i:01000}")).collect();
        let e = plan(&items);
        let split = serde_json::to_vec(
            &items
                .iter()
                .map(|d| serde_json::json!({ "description": d }))
                .collect::<Vec<_>>(),
        )
        .unwrap()
        .len();
        // The input (the items joined by commas) and the split result, base64.
        let input = items.iter().map(|i| i.len() + 1).sum::<usize>();
        let second = (START_OVERHEAD + ENTRY_OVERHEAD + input + split).div_ceil(3) * 4;
        let drift = e.request_bytes.abs_diff(second + EVENT_OVERHEAD);
        assert!(drift < 64, "{e:?} vs {second}");
        assert!(
            e.request_bytes > e.compressed_bytes.div_ceil(3) * 4 + EVENT_OVERHEAD,
            "{e:?}"
        );
    }

    #[test]
    fn incompressible_journals_above_the_limit_are_refused_with_the_numbers() {
        // Pseudo-random text whose journal sections are too far apart for zstd to find the
        // subtasks again: ~8 MB that do not compress below the limit.
        let items = random_items(2000, 1000);
        let e = plan(&items);
        let err = check(&PayloadBudget::LAMBDA, &e).unwrap_err().0;
        assert!(err.contains("a fan-out of 2000 subtasks"), "{err}");
        assert!(err.contains("6291456"), "{err}");
        assert!(err.contains("nothing was started"), "{err}");
        assert!(
            err.contains(&format!(
                "journal would reach about {} bytes",
                e.journal_bytes
            )),
            "{err}"
        );
    }

    #[test]
    fn random_subtasks_recurring_within_zstds_reach_are_accepted() {
        // The journal repeats every subtask four times; zstd finds the repeats while the
        // sections are about 1 MB, so 1,000 random subtasks of 1,100 bytes fit with room to
        // spare (the ratio of the split result alone said they would not).
        let items = random_items(1000, 1100);
        let e = plan(&items);
        assert!(e.journal_bytes > 4_000_000, "{e:?}");
        assert!(
            e.request_bytes < PayloadBudget::LAMBDA.limit * 3 / 4,
            "{e:?}"
        );
        assert!(accepted(&items));
    }

    #[test]
    fn the_input_is_sampled_without_the_framing_every_subtask_repeats() {
        let items: Vec<Cow<'_, [u8]>> = [r#"{"description":"0001"}"#, r#"{"description":"0002"}"#]
            .iter()
            .map(|s| Cow::Borrowed(s.as_bytes()))
            .collect();
        // The shared zeros are content, and stay.
        assert_eq!(common_framing(&items), (16, 2));
        let one = [Cow::Borrowed(&b"\"a\""[..])];
        assert_eq!(common_framing(&one), (0, 0));
    }

    #[test]
    fn the_estimate_is_deterministic_and_fast() {
        // The largest chores task: a 2 MiB description of random text, ~9 MB of journal.
        let items = random_items(1900, 1100);
        let started = std::time::Instant::now();
        let first = plan(&items);
        let took = started.elapsed();
        assert_eq!(plan(&items), first);
        assert!(first.journal_bytes > 8_000_000, "{first:?}");
        // Tens of ms; generous for a loaded machine and an unoptimised build.
        assert!(took < std::time::Duration::from_secs(2), "{took:?}");
        eprintln!("estimated {first:?} in {took:?}");
    }
}
