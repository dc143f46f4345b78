//! `fanout redrive RUN_ID`: re-runs the items of a finished run of items (`worker/runItems`,
//! `fanout invoke --items …`) that have no successful outcome, never the ones that succeeded,
//! and merges their outcomes into the run's results, so that after a redrive that succeeds
//! the results hold every item's outcome, in input order.
//!
//! **Which items.** Every item without a successful outcome:
//! - a run that succeeded under a tolerant failure policy: the items whose line in the results
//!   is an error object (`{"error":{"index":I,…}}` at line I);
//! - a run that failed (fail-fast, or more failures than it tolerated) or was cancelled: it
//!   wrote no results, and some of its items never started. Its successes are recovered — from
//!   the result parts its lanes left in S3 (`<results>.fanout/<run>/parts/`), and from
//!   Restate: each succeeded subtask's journal holds its item's index (the `x-fanout-index`
//!   header of its call) and its outcome (journals are kept 24 h by default). Every other item
//!   is redriven: the one that failed, those cancelled when the run stopped, those that never
//!   started. So a redrive finishes the job. Past the journals' retention, a success that was
//!   never written to S3 cannot be told from an item that never ran, and is run again.
//!
//! **How.** The run's items and results locations, its items' ETag and item count come from
//! its journal (the `Command: Input` entry and the `scan items` step, through the admin API's
//! SQL). The items must still have that ETag (else the indexes would point at other items).
//! The indexes to re-run are written as a sub-items object (the original lines at those
//! indexes, in index order; line j is item `indexes[j]`), run through `worker/runItems` into
//! a sub-results object, both under `<results>.fanout/<run>/redrive-<n>/`, so no item passes
//! through a coordinator's journal. Line j of the sub-results then replaces line
//! `indexes[j]` of the results (an error object's `index` is rewritten to the run's own).
//! When the redrive run itself fails, what it finished is merged all the same (recovered as
//! above) and the rest keeps its error; a later `fanout redrive` picks it up.
//!
//! **Durability: the merge is made here, in the CLI, idempotent and re-runnable.** A merge
//! is a function of the results it starts from (generation n: the `fanout-redrive` metadata
//! counts the merges made) and of redrive run n's outcomes:
//! - redrive run n is started with the idempotency key `fanout-redrive-<run>-<n>-…`: a second
//!   `fanout redrive` after a crash (or Ctrl-C) attaches to the same run instead of starting
//!   another, and gets its answer again once it has finished (within Restate's idempotency
//!   retention, 24 h by default);
//! - the merged results are written with one PUT (atomic in S3), conditional on the object
//!   it replaces (`If-Match` its ETag, or `If-None-Match: *` when the failed run left none),
//!   with metadata `fanout-run` (the run), `fanout-redrive` (n + 1) and `fanout-failed`;
//! - the scratch objects are deleted after the PUT; leftovers of an interrupted redrive are
//!   deleted by the next one.
//!
//! A crash before the PUT leaves generation n (the next redrive attaches to the same redrive
//! run and merges); a crash after it leaves generation n + 1 (the next redrive re-runs only
//! what still failed, or has nothing to do). A concurrent redrive that loses the race gets
//! its PUT refused and says so. Doing the merge in the handler instead would take a new
//! handler; this keeps `worker/runItems` as it is and the merge re-runnable by hand.
//!
//! **A run from local files.** `fanout invoke --items FILE --results FILE` stages the items in
//! S3, fetches the results into FILE and removes both staged objects. `fanout redrive ID
//! --items FILE --results FILE` stages the items again at the run's items location (refused
//! and removed unless they have the ETag the run read: the very same bytes), starts from the
//! results FILE when the staged copy is gone (it must have a line per item), merges in S3 at
//! the run's results location as usual and fetches the merge into FILE. The staged objects
//! then stay, so that a later redrive needs neither flag.
//!
//! **Outcomes.** With nothing to redrive (every item has a successful outcome) it says so and
//! exits 0: the job is done, and a repeated redrive converges there. A redrive run that
//! succeeds exits 0, also with failures its own policy tolerated (they stay error objects, for
//! another redrive); one that fails exits 3, after merging what it finished. A run that is not
//! a run of items, was refused before any item ran, or whose items changed is refused with 4;
//! one still running with 1; an unknown id with 6.

use crate::admin::{AdminClient, sql_string};
use crate::commands::args::{RestateArgs, RunPolicyArgs, WatchArgs};
use crate::commands::attach::{self, Interrupt};
use crate::commands::invoke::started_from;
use crate::exit;
use crate::ingress::{RECONNECT_WINDOW, Reconnect};
use crate::items::{self, Place, S3Url};
use crate::observe::{self, Display};
use crate::outcome::{OutputFormat, fail, fail_with};
use anyhow::{Context, Result, anyhow};
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use fanout_contract::headers;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

// What `fanout invoke --items` starts: the only runs a redrive takes.
use fanout_contract::names::RUN_ITEMS_TARGET as ITEMS_TARGET;
// The coordinator's journaled step whose result is `{"count":N,"etag":"…"}`.
use fanout_contract::names::SCAN_STEP;
/// Results metadata: the run whose results these are (the handler writes it too).
const RUN_METADATA: &str = "fanout-run";
/// Results metadata: how many failed items the results hold (the handler writes it too).
const FAILED_METADATA: &str = "fanout-failed";
/// Results metadata: how many redrives have been merged into them.
const REDRIVE_METADATA: &str = "fanout-redrive";

/// Re-run the failed and never-run items of a finished run of items, and merge their outcomes
/// into its results.
#[derive(clap::Args)]
pub struct Args {
    /// The run's invocation id (inv_…), as `fanout invoke --items` prints it.
    id: String,
    /// Write the merged results here instead of into the run's own results object:
    /// s3://BUCKET/KEY (later redrives with the same --results go on from there), or a local
    /// FILE (the merge is made in the run's results object as without this flag, then fetched
    /// to FILE, as `fanout invoke --results FILE` does).
    #[arg(long, value_name = "PATH|s3://BUCKET/KEY")]
    results: Option<String>,
    /// The run's items as the local file `fanout invoke --items FILE` staged (and removed
    /// after the run): staged again at the run's items location when they are gone from it,
    /// if they are the very bytes the run read (same ETag).
    #[arg(long, value_name = "FILE")]
    items: Option<PathBuf>,
    #[command(flatten)]
    policy: RunPolicyArgs,
    #[command(flatten)]
    watch: WatchArgs,
    #[command(flatten)]
    restate: RestateArgs,
}

/// `fanout redrive`.
pub async fn run(args: Args) -> Result<u8> {
    let output = args.watch.output;
    let id = args.id.clone();
    if let Err(message) = observe::check_invocation_id(&id) {
        return Ok(fail(output, exit::BAD_INPUT, "rejected", None, &message));
    }
    let interrupt = match Interrupt::listen() {
        Ok(interrupt) => interrupt,
        Err(e) => return Ok(fail_with(output, Some(&id), &e)),
    };
    Ok(match redrive(&args, interrupt).await {
        Ok(report) => report.print(output),
        Err(e) => match e.downcast_ref::<Interrupted>() {
            Some(Interrupted(message)) => {
                fail(output, exit::INTERRUPTED, "interrupted", Some(&id), message)
            }
            None => fail_with(output, Some(&id), &e),
        },
    })
}

/// What a run of items is, from its journal.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ItemsRun {
    items: S3Url,
    results: S3Url,
    count: usize,
    etag: String,
}

/// The results a redrive starts from: one line per item.
struct Base {
    lines: Vec<String>,
    /// Where they are stored; `None` when put together from a failed run's leftovers.
    at: Option<S3Url>,
    /// How many redrives were merged into them.
    generation: u64,
}

/// An object's ETag and metadata.
struct Head {
    etag: String,
    metadata: HashMap<String, String>,
}

impl Head {
    fn run(&self) -> Option<&str> {
        self.metadata.get(RUN_METADATA).map(String::as_str)
    }

    fn generation(&self) -> u64 {
        self.metadata
            .get(REDRIVE_METADATA)
            .and_then(|g| g.parse().ok())
            .unwrap_or(0)
    }
}

/// How a redrive ended, for [`Report::print`].
struct Report {
    run: String,
    redrive: Option<String>,
    items: usize,
    redriven: usize,
    succeeded: usize,
    still_failed: usize,
    results: String,
    file: Option<PathBuf>,
    /// The redrive run's failure: exit 3 after the merge.
    failure: Option<String>,
    /// The redrive run was started before (same idempotency key): this attached to it.
    resumed: bool,
}

impl Report {
    fn outcome(&self) -> &'static str {
        match (&self.failure, self.redriven) {
            (Some(_), _) => "failed",
            (None, 0) => "nothing to redrive",
            (None, _) => "succeeded",
        }
    }

    fn print(&self, output: OutputFormat) -> u8 {
        let code = if self.failure.is_some() {
            exit::RUN_FAILED
        } else {
            exit::OK
        };
        let error = self.failure.as_ref().map(|failure| {
            format!(
                "the redrive run {} failed: {failure}; what it finished is merged, and `fanout \
                 redrive {}` runs the rest again",
                self.redrive.as_deref().unwrap_or("-"),
                self.run
            )
        });
        match output {
            OutputFormat::Json => println!(
                "{}",
                json!({
                    "invocationId": self.run,
                    "outcome": self.outcome(),
                    "redriveId": self.redrive,
                    "items": self.items,
                    "redriven": self.redriven,
                    "succeeded": self.succeeded,
                    "stillFailed": self.still_failed,
                    "results": self.results,
                    "resultsFile": self.file.as_ref().map(|f| f.display().to_string()),
                    "resumed": self.resumed,
                    "error": error,
                })
            ),
            OutputFormat::Text => println!(
                "{}",
                json!({
                    "items": self.items,
                    "succeeded": self.items - self.still_failed,
                    "failed": self.still_failed,
                    "results": self.file.as_ref().map(|f| f.display().to_string())
                        .unwrap_or_else(|| self.results.clone()),
                })
            ),
        }
        let run = &self.run;
        let results = match &self.file {
            Some(file) => format!("{} (merged in {})", file.display(), self.results),
            None => self.results.clone(),
        };
        if self.redriven == 0 {
            eprintln!(
                "{run}: nothing to redrive: all {} items have a successful outcome in {results}",
                self.items
            );
        } else {
            eprintln!(
                "{run}: redrove {} of {} items ({}): {} succeeded, {} still failed; results in {}",
                self.redriven,
                self.items,
                self.redrive.as_deref().unwrap_or("-"),
                self.succeeded,
                self.still_failed,
                results
            );
        }
        if let Some(error) = &error {
            eprintln!("error: {error}");
        } else if self.still_failed > 0 {
            eprintln!(
                "{run}: {} item(s) still failed, within what the redrive's failure policy \
                 tolerates; they are error objects in the results, and `fanout redrive {run}` \
                 runs them again",
                self.still_failed
            );
        }
        code
    }
}

async fn redrive(args: &Args, interrupt: Interrupt) -> Result<Report> {
    let id = args.id.as_str();
    let mut endpoints = args.restate.endpoints();
    let coordinator = endpoints
        .observer()
        .coordinator(id)
        .await
        .map_err(|e| {
            // Restate's own check of an id that looks like one but does not decode.
            if format!("{e:#}").contains("non valid invocation id") {
                exit::rejected(format!(
                    "{id:?} is not an invocation id Restate can read; copy it from `fanout \
                     invoke` or `fanout runs`"
                ))
            } else {
                e
            }
        })?
        .ok_or_else(|| {
            exit::not_found(format!(
                "Restate at {} does not know {id}: check the id and --admin-url (finished runs \
                 are kept 24 h by default)",
                endpoints.admin.base_url()
            ))
        })?;
    if coordinator.target != ITEMS_TARGET {
        return Err(exit::rejected(format!(
            "{id} is a run of {}, not of {ITEMS_TARGET}: redrive re-runs the failed items of a \
             run of items (`fanout invoke --items …`); start another run for the rest",
            coordinator.target
        )));
    }
    if !coordinator.is_finished() {
        return Err(anyhow!(
            "{id} is still {}: redrive re-runs the failed items of a finished run; wait for it \
             with `fanout attach {id}`, then redrive it",
            coordinator.status
        ));
    }
    let run_failed = coordinator.status != "completed";
    let run = read_run(&endpoints.admin, id).await?;
    let (s3, _) = items::client_for(&args.restate.ingress_url)
        .await
        .map_err(|e| exit::rejected(format!("{e:#}")))?;

    // The items must be those the run read: its indexes point into them.
    let mut now = head(&s3, &run.items).await?;
    if now.is_none()
        && let Some(file) = &args.items
    {
        items::stage(&s3, file, &run.items).await?;
        now = head(&s3, &run.items).await?;
        if now
            .as_ref()
            .is_some_and(|now| unquoted(&now.etag) != unquoted(&run.etag))
        {
            delete(&s3, &run.items.bucket, std::slice::from_ref(&run.items.key)).await?;
            return Err(exit::rejected(format!(
                "{} is not the items {id} read (its ETag differs from the run's {}): give the \
                 file the run was started with",
                file.display(),
                run.etag
            )));
        }
    }
    let now = now.ok_or_else(|| {
        exit::rejected(format!(
            "the items of {id}, {}, no longer exist: there is nothing to redrive from (if \
             `fanout invoke --items FILE` staged them, give the file again: `fanout redrive \
             {id} --items FILE --results FILE`)",
            run.items
        ))
    })?;
    if unquoted(&now.etag) != unquoted(&run.etag) {
        return Err(exit::rejected(format!(
            "the items of {id}, {}, changed since the run read them (ETag {} then, {} now): its \
             indexes would point at other items; start a new run with `fanout invoke --items`",
            run.items, run.etag, now.etag
        )));
    }

    let (target, file) = match args.results.as_deref().map(Place::parse) {
        None => (run.results.clone(), None),
        Some(Err(e)) => return Err(exit::rejected(format!("--results: {e}"))),
        Some(Ok(Place::S3(at))) => (at, None),
        Some(Ok(Place::File(path))) => (run.results.clone(), Some(path)),
    };
    if target == run.items {
        return Err(exit::rejected(format!(
            "--results {target} is the run's items: the results would replace them; give \
             another key"
        )));
    }
    let scratch = format!("{}.fanout/{id}/", target.key);
    let target_head = head(&s3, &target).await?;

    let mut items_text: Option<Vec<u8>> = None;
    let mut base = match load_base(&s3, id, &run, &target, target_head.as_ref()).await? {
        Some(base) => base,
        None if run_failed => {
            let bytes = get(&s3, &run.items, Some(&run.etag)).await?.0;
            let lines = item_lines(&bytes);
            check_count(&lines, &run)?;
            let known = recover(&endpoints.admin, &s3, id, &run.results).await?;
            let base = Base {
                lines: (0..run.count)
                    .map(|i| match known.get(&i) {
                        Some(line) => line.clone(),
                        None => no_outcome(i, lines[i], id),
                    })
                    .collect(),
                at: None,
                generation: 0,
            };
            items_text = Some(bytes);
            base
        }
        None => match file.as_ref().filter(|_| target_head.is_none()) {
            // `fanout invoke --results FILE` fetched the results and removed the staged copy:
            // the file is what the run wrote.
            Some(path) if path.is_file() => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    exit::rejected(format!("cannot read the results {}: {e}", path.display()))
                })?;
                let lines: Vec<String> = text.lines().map(str::to_owned).collect();
                if lines.len() != run.count {
                    return Err(exit::rejected(format!(
                        "{} holds {} lines for the {} items of {id}: it is not this run's \
                         results",
                        path.display(),
                        lines.len(),
                        run.count
                    )));
                }
                Base {
                    lines,
                    at: None,
                    generation: 0,
                }
            }
            _ => {
                return Err(exit::rejected(format!(
                    "the results of {id}, {}, are gone or were replaced by another run since: \
                     there is nothing to merge into (if `fanout invoke --results FILE` fetched \
                     them, give the file: `fanout redrive {id} --results FILE`)",
                    run.results
                )));
            }
        },
    };
    let generation = base.generation;
    let attempt_prefix = format!("{scratch}redrive-{generation}/");
    if base.at.as_ref() == Some(&target) {
        // Leftovers of an interrupted redrive or of the failed run: only this generation's
        // objects may still be needed.
        let stale: Vec<String> = list(&s3, &target.bucket, &scratch)
            .await?
            .into_iter()
            .filter(|key| !key.starts_with(&attempt_prefix))
            .collect();
        delete(&s3, &target.bucket, &stale).await?;
    }

    let indexes: Vec<usize> = base
        .lines
        .iter()
        .enumerate()
        .filter(|(i, line)| is_failure(line, *i))
        .map(|(i, _)| i)
        .collect();
    let mut report = Report {
        run: id.to_owned(),
        redrive: None,
        items: run.count,
        redriven: indexes.len(),
        succeeded: 0,
        still_failed: indexes.len(),
        results: target.to_string(),
        file: file.clone(),
        failure: None,
        resumed: false,
    };
    if indexes.is_empty() {
        if base.at.as_ref() != Some(&target) {
            write_results(&s3, &target, target_head.as_ref(), &base, id, 0).await?;
        }
        if let Some(file) = &file {
            items::fetch(&s3, &target, file).await?;
        }
        return Ok(report);
    }

    // The redrive run: the items at `indexes` into a sub-results object.
    let sub_items = S3Url {
        bucket: target.bucket.clone(),
        key: format!("{attempt_prefix}items.jsonl"),
    };
    let sub_results = S3Url {
        bucket: target.bucket.clone(),
        key: format!("{attempt_prefix}results.jsonl"),
    };
    let items_text = match items_text {
        Some(bytes) => bytes,
        None => get(&s3, &run.items, Some(&run.etag)).await?.0,
    };
    let lines = item_lines(&items_text);
    check_count(&lines, &run)?;
    let mut body = Vec::new();
    for &i in &indexes {
        body.extend_from_slice(lines[i]);
        body.push(b'\n');
    }
    put_once(&s3, &sub_items, body).await?;
    // A redrive run refused before it ran (its answer is kept under its idempotency key)
    // counts as an attempt: the next one gets a key of its own.
    let attempt = list(&s3, &target.bucket, &format!("{attempt_prefix}refused-"))
        .await?
        .len();
    let key = idempotency_key(id, generation, attempt, &target);

    for (name, value) in args.policy.headers() {
        endpoints.ingress = endpoints.ingress.with_header(name, value);
    }
    let request = json!({ "items": sub_items.to_string(), "results": sub_results.to_string() });
    let (response, _) = endpoints
        .ingress
        .post_idempotent(
            &format!("/{ITEMS_TARGET}/send"),
            "application/json",
            serde_json::to_vec(&request)?,
            &key,
            RECONNECT_WINDOW,
            |event| match event {
                Reconnect::Lost(why) => eprintln!(
                    "lost Restate while starting the redrive ({why}); sending it again with the \
                     same idempotency key for up to {} min",
                    RECONNECT_WINDOW.as_secs() / 60
                ),
                Reconnect::Back => eprintln!("Restate is back"),
            },
        )
        .await
        .map_err(|e| exit::unreachable(format!("{e:#}")))?;
    let started =
        started_from(endpoints.ingress.base_url(), &response).map_err(|e| match e.code {
            exit::BAD_INPUT => exit::rejected(e.message),
            exit::UNREACHABLE => exit::unreachable(e.message),
            _ => anyhow!(e.message),
        })?;
    let redrive_id = started.invocation_id.clone();
    report.redrive = Some(redrive_id.clone());
    report.resumed = started.previously_accepted;
    let display_mode = args.watch.display();
    if display_mode != observe::DisplayMode::Quiet {
        let how = if started.previously_accepted {
            "attached to the redrive started before"
        } else {
            "started"
        };
        eprintln!(
            "{id}: {} of {} items to redrive; {how} {redrive_id}; Ctrl-C stops waiting, not the \
             run",
            indexes.len(),
            run.count
        );
    }
    let mut display = Display::new(display_mode);
    let followed = match attach::follow(&endpoints, &redrive_id, &mut display, interrupt).await {
        Ok(followed) => followed,
        Err(e) => {
            display.abandon();
            return Err(e);
        }
    };
    let Some(answer) = followed.answer else {
        return Err(anyhow::Error::new(Interrupted(format!(
            "interrupted: the redrive run {redrive_id} goes on in Restate; `fanout redrive {id}` \
             again waits for it and merges its results"
        ))));
    };

    // Line j of the redrive is item indexes[j].
    let outcomes: BTreeMap<usize, String> = match answer.status {
        200..=299 => {
            let (bytes, _, _) = get(&s3, &sub_results, None).await?;
            let lines: Vec<String> = String::from_utf8_lossy(&bytes)
                .lines()
                .map(str::to_owned)
                .collect();
            if lines.len() != indexes.len() {
                return Err(anyhow!(
                    "the redrive's results {sub_results} hold {} lines for {} items",
                    lines.len(),
                    indexes.len()
                ));
            }
            lines.into_iter().enumerate().collect()
        }
        400 | 413 => {
            put_once(
                &s3,
                &S3Url {
                    bucket: target.bucket.clone(),
                    key: format!("{attempt_prefix}refused-{attempt}"),
                },
                redrive_id.clone().into_bytes(),
            )
            .await?;
            return Err(exit::rejected(format!(
                "the redrive run {redrive_id} was refused (HTTP {}): {}",
                answer.status,
                answer.message()
            )));
        }
        status => {
            report.failure = Some(format!("HTTP {status}: {}", answer.message()));
            recover(&endpoints.admin, &s3, &redrive_id, &sub_results).await?
        }
    };
    for (j, line) in outcomes {
        if let Some(&i) = indexes.get(j) {
            base.lines[i] = with_index(&line, j, i);
        }
    }
    let still_failed = base
        .lines
        .iter()
        .enumerate()
        .filter(|(i, line)| is_failure(line, *i))
        .count();
    report.succeeded = indexes
        .iter()
        .filter(|&&i| !is_failure(&base.lines[i], i))
        .count();
    report.still_failed = still_failed;
    write_results(&s3, &target, target_head.as_ref(), &base, id, still_failed).await?;
    let leftovers = list(&s3, &target.bucket, &scratch).await?;
    delete(&s3, &target.bucket, &leftovers).await?;
    if let Some(file) = &file {
        items::fetch(&s3, &target, file).await?;
    }
    Ok(report)
}

/// Ctrl-C while waiting: exit 130.
#[derive(Debug)]
struct Interrupted(String);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Interrupted {}

/// The results this redrive starts from, if stored: `--results`'s object when it already
/// holds this run's results, else the run's own results object when it still does.
async fn load_base(
    s3: &Client,
    id: &str,
    run: &ItemsRun,
    target: &S3Url,
    target_head: Option<&Head>,
) -> Result<Option<Base>> {
    let mut candidates = vec![(
        target.clone(),
        target_head.map(|h| h.run().map(str::to_owned)),
    )];
    if *target != run.results {
        let own = head(s3, &run.results).await?;
        candidates.push((run.results.clone(), own.map(|h| h.run().map(str::to_owned))));
    }
    for (at, owner) in candidates {
        if owner.flatten().as_deref() != Some(id) {
            continue;
        }
        let (bytes, _, head) = get(s3, &at, None).await?;
        let lines: Vec<String> = String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect();
        if lines.len() != run.count {
            return Err(anyhow!(
                "{at} holds {} lines for the {} items of {id}: it is not a whole results object",
                lines.len(),
                run.count
            ));
        }
        return Ok(Some(Base {
            lines,
            at: Some(at),
            generation: head.generation(),
        }));
    }
    Ok(None)
}

fn check_count(lines: &[&[u8]], run: &ItemsRun) -> Result<()> {
    if lines.len() == run.count {
        return Ok(());
    }
    Err(exit::rejected(format!(
        "the items {} hold {} items, the run read {}: they changed since",
        run.items,
        lines.len(),
        run.count
    )))
}

/// The run's items and results locations and what its scan found, from its journal.
async fn read_run(admin: &AdminClient, id: &str) -> Result<ItemsRun> {
    let rows = admin
        .query(&format!(
            "SELECT index, entry_type, name, entry_json FROM sys_journal WHERE id = {} AND \
             (entry_type = 'Command: Input' OR (entry_type = 'Command: Run' AND name = {}) \
             OR entry_type = 'Notification: Run') ORDER BY index",
            sql_string(id),
            sql_string(SCAN_STEP)
        ))
        .await?;
    run_from_journal(id, &rows)
}

fn run_from_journal(id: &str, rows: &[Value]) -> Result<ItemsRun> {
    let entries: Vec<Value> = rows
        .iter()
        .filter_map(|row| serde_json::from_str(row.get("entry_json")?.as_str()?).ok())
        .collect();
    let input = entries
        .iter()
        .find_map(|e| e.pointer("/Command/Input/payload"))
        .and_then(observe::journal_bytes)
        .ok_or_else(|| {
            exit::not_found(format!(
                "Restate no longer has the journal of {id} (journals are kept 24 h by default): \
                 its items and results locations are unknown"
            ))
        })?;
    let request: Value =
        serde_json::from_slice(&input).with_context(|| format!("the input of {id} is not JSON"))?;
    let location = |field: &str| -> Result<S3Url> {
        let raw = request
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or_default();
        match Place::parse(raw) {
            Ok(Place::S3(at)) => Ok(at),
            _ => Err(exit::rejected(format!(
                "{id} was refused before any item ran: its {field} {raw:?} is not an S3 object"
            ))),
        }
    };
    let (items, results) = (location("items")?, location("results")?);
    let step = entries.iter().find_map(|e| {
        let run = e.pointer("/Command/Run")?;
        (run.get("name")?.as_str()? == SCAN_STEP).then(|| run.get("completion_id")?.as_u64())?
    });
    let result = step.and_then(|step| {
        entries.iter().find_map(|e| {
            let done = e.pointer("/Notification/Completion/Run")?;
            (done.get("completion_id")?.as_u64()? == step).then(|| done.get("result"))?
        })
    });
    let refused = |why: String| {
        exit::rejected(format!(
            "{id} was refused before any item ran ({why}): there is nothing to redrive; fix it \
             and start a new run with `fanout invoke --items`"
        ))
    };
    let Some(result) = result else {
        return Err(refused("it never finished reading its items".into()));
    };
    if let Some(failure) = result.get("Failure") {
        let message = failure
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default();
        return Err(refused(message.to_owned()));
    }
    let scanned: Value = result
        .get("Success")
        .and_then(observe::journal_bytes)
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| anyhow!("the scan step of {id} has an unreadable result"))?;
    let count = scanned.get("count").and_then(Value::as_u64);
    let etag = scanned.get("etag").and_then(Value::as_str);
    let (Some(count), Some(etag)) = (count, etag) else {
        return Err(anyhow!(
            "the scan step of {id} gives no count and ETag: {scanned}"
        ));
    };
    Ok(ItemsRun {
        items,
        results,
        count: count as usize,
        etag: etag.to_owned(),
    })
}

/// The outcomes of run `run` that are known although it wrote no results: its lanes' result
/// parts in S3, and its succeeded subtasks' journals in Restate. By index.
async fn recover(
    admin: &AdminClient,
    s3: &Client,
    run: &str,
    results: &S3Url,
) -> Result<BTreeMap<usize, String>> {
    let mut known = BTreeMap::new();
    let parts = format!("{}.fanout/{run}/parts/", results.key);
    for key in list(s3, &results.bucket, &parts).await? {
        let at = S3Url {
            bucket: results.bucket.clone(),
            key,
        };
        let (bytes, _, _) = get(s3, &at, None).await?;
        known.extend(part_lines(&bytes));
    }
    for (executors, batch) in [
        (observe::subtasks_of(run), false),
        (observe::batches_of(run), true),
    ] {
        let rows = admin
            .query(&format!(
                "SELECT id, entry_type, entry_json FROM sys_journal WHERE entry_type IN \
                 ('Command: Input', 'Command: Output') AND id IN (SELECT id FROM \
                 sys_invocation WHERE {executors} AND completion_result = 'success')"
            ))
            .await?;
        known.extend(outcomes_from_journals(&rows, batch));
    }
    Ok(known)
}

/// `INDEX\tLINE` lines of a result part.
fn part_lines(bytes: &[u8]) -> Vec<(usize, String)> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter_map(|line| {
            let (index, result) = line.split_once('\t')?;
            Some((index.parse().ok()?, result.to_owned()))
        })
        .collect()
}

/// Succeeded subtasks' outcomes by the index their call carried (`x-fanout-index`), from the
/// `Command: Input` and `Command: Output` entries of their journals. The journals are of batch
/// invocations when `batch` is set: a batch's index is its first subtask's, and its output holds
/// one `{"ok": …}` or `{"error": …}` per subtask in order, of which only the `ok`s are known.
fn outcomes_from_journals(rows: &[Value], batch: bool) -> Vec<(usize, String)> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut output: HashMap<&str, Vec<(usize, String)>> = HashMap::new();
    for row in rows {
        let (Some(id), Some(entry)) = (
            row.get("id").and_then(Value::as_str),
            row.get("entry_json")
                .and_then(Value::as_str)
                .and_then(|json| serde_json::from_str::<Value>(json).ok()),
        ) else {
            continue;
        };
        if let Some(headers) = entry
            .pointer("/Command/Input/headers")
            .and_then(Value::as_array)
        {
            let position = headers.iter().find_map(|h| {
                (h.get("name")?.as_str()? == headers::INDEX)
                    .then(|| h.get("value")?.as_str()?.parse().ok())?
            });
            if let Some(position) = position {
                index.insert(id, position);
            }
        } else if let Some(bytes) = entry
            .pointer("/Command/Output/result/Success")
            .and_then(observe::journal_bytes)
            && let Ok(value) = serde_json::from_slice::<Value>(&bytes)
        {
            let lines = if batch {
                batch_lines(value)
            } else {
                // One line, as the handler writes it.
                let line = match String::from_utf8(bytes) {
                    Ok(text) if !text.contains('\n') => text,
                    _ => value.to_string(),
                };
                vec![(0, line)]
            };
            output.insert(id, lines);
        }
    }
    output
        .into_iter()
        .filter_map(|(id, lines)| Some((*index.get(id)?, lines)))
        .flat_map(|(first, lines)| {
            lines
                .into_iter()
                .map(move |(offset, line)| (first + offset, line))
        })
        .collect()
}

/// The succeeded subtasks of a batch's output, by their offset in the batch.
fn batch_lines(output: Value) -> Vec<(usize, String)> {
    let Value::Array(results) = output else {
        return Vec::new();
    };
    results
        .into_iter()
        .enumerate()
        .filter_map(|(offset, result)| match result {
            Value::Object(mut fields) if fields.len() == 1 => {
                Some((offset, fields.remove("ok")?.to_string()))
            }
            _ => None,
        })
        .collect()
}

/// Whether line `index` of a results object is a failed item's error object.
fn is_failure(line: &str, index: usize) -> bool {
    let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(line) else {
        return false;
    };
    fields.len() == 1
        && fields.get("error").is_some_and(|error| {
            error.get("index").and_then(Value::as_u64) == Some(index as u64)
                && error.get("message").is_some_and(Value::is_string)
        })
}

/// A redriven line in its place: an error object's `index` becomes the run's own.
fn with_index(line: &str, from: usize, to: usize) -> String {
    if !is_failure(line, from) {
        return line.to_owned();
    }
    let mut value: Value = serde_json::from_str(line).expect("an error object is JSON");
    value["error"]["index"] = json!(to);
    value.to_string()
}

/// The error object of an item a failed run has no outcome for.
fn no_outcome(index: usize, item: &[u8], run: &str) -> String {
    json!({ "error": {
        "index": index,
        "subtask": observe::payload_label(item),
        "code": 0,
        "message": format!(
            "no outcome: run {run} failed or was cancelled before this item succeeded (it \
             failed, was stopped, or never started); `fanout redrive {run}` runs it"
        ),
    }})
    .to_string()
}

/// The items of a JSON Lines object, as the run's scan counted them: every line that is not
/// blank (the scan refused blank lines between items), without its line ending.
fn item_lines(bytes: &[u8]) -> Vec<&[u8]> {
    bytes
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .collect()
}

fn idempotency_key(run: &str, generation: u64, attempt: usize, target: &S3Url) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(target.to_string().as_bytes());
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("fanout-redrive-{run}-{generation}-{attempt}-{hex}")
}

fn unquoted(etag: &str) -> &str {
    etag.trim_matches('"')
}

fn s3_failure<E, R>(doing: &str, at: &S3Url, error: SdkError<E, R>) -> anyhow::Error
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let refused = matches!(
        error.code(),
        Some("NoSuchBucket" | "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch")
    );
    let message = format!("{doing} {at} failed: {}", DisplayErrorContext(&error));
    if refused {
        exit::rejected(message)
    } else if matches!(
        error,
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_)
    ) {
        exit::unreachable(message)
    } else {
        anyhow!(message)
    }
}

async fn head(s3: &Client, at: &S3Url) -> Result<Option<Head>> {
    match s3
        .head_object()
        .bucket(&at.bucket)
        .key(&at.key)
        .send()
        .await
    {
        Ok(head) => Ok(Some(Head {
            etag: head.e_tag().unwrap_or_default().to_owned(),
            metadata: head.metadata().cloned().unwrap_or_default(),
        })),
        Err(e) if e.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(None),
        Err(e) => Err(s3_failure("reading", at, e)),
    }
}

/// The object's bytes, ETag and metadata; with `if_match`, only if it still has that ETag.
async fn get(s3: &Client, at: &S3Url, if_match: Option<&str>) -> Result<(Vec<u8>, String, Head)> {
    let object = s3
        .get_object()
        .bucket(&at.bucket)
        .key(&at.key)
        .set_if_match(if_match.map(str::to_owned))
        .send()
        .await
        .map_err(|e| {
            if e.code() == Some("PreconditionFailed") {
                exit::rejected(format!(
                    "{at} changed while this redrive read it; its indexes would point at other \
                     items: start a new run"
                ))
            } else {
                s3_failure("reading", at, e)
            }
        })?;
    let head = Head {
        etag: object.e_tag().unwrap_or_default().to_owned(),
        metadata: object.metadata().cloned().unwrap_or_default(),
    };
    let bytes = object
        .body
        .collect()
        .await
        .with_context(|| format!("reading {at}"))?
        .to_vec();
    Ok((bytes, head.etag.clone(), head))
}

/// Writes `body` at `at` unless an object is there already (a repeated redrive writes the same
/// bytes, and a redrive run may be reading them).
async fn put_once(s3: &Client, at: &S3Url, body: Vec<u8>) -> Result<()> {
    match s3
        .put_object()
        .bucket(&at.bucket)
        .key(&at.key)
        .if_none_match("*")
        .body(ByteStream::from(body))
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.code(),
                Some("PreconditionFailed" | "ConditionalRequestConflict")
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(s3_failure("writing", at, e)),
    }
}

/// Writes the merged results in one PUT, conditional on the object it replaces.
async fn write_results(
    s3: &Client,
    at: &S3Url,
    replaces: Option<&Head>,
    base: &Base,
    run: &str,
    failed: usize,
) -> Result<()> {
    let mut body = Vec::with_capacity(base.lines.iter().map(|l| l.len() + 1).sum());
    for line in &base.lines {
        body.extend_from_slice(line.as_bytes());
        body.push(b'\n');
    }
    let mut request = s3
        .put_object()
        .bucket(&at.bucket)
        .key(&at.key)
        .content_type("application/x-ndjson")
        .metadata(RUN_METADATA, run)
        .metadata(FAILED_METADATA, failed.to_string())
        .metadata(REDRIVE_METADATA, (base.generation + 1).to_string())
        .body(ByteStream::from(body));
    request = match replaces {
        Some(head) => request.if_match(&head.etag),
        None => request.if_none_match("*"),
    };
    request.send().await.map_err(|e| {
        if matches!(
            e.code(),
            Some("PreconditionFailed" | "ConditionalRequestConflict")
        ) {
            anyhow!(
                "{at} changed while this redrive ran (another redrive or run wrote it): nothing \
                 was merged; `fanout redrive {run}` again starts from what it holds now"
            )
        } else {
            s3_failure("writing the merged results to", at, e)
        }
    })?;
    Ok(())
}

async fn list(s3: &Client, bucket: &str, prefix: &str) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut token = None;
    loop {
        let page = s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(token)
            .send()
            .await
            .map_err(|e| {
                let at = S3Url {
                    bucket: bucket.to_owned(),
                    key: prefix.to_owned(),
                };
                s3_failure("listing", &at, e)
            })?;
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
        match page.next_continuation_token() {
            Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_owned()),
            _ => return Ok(keys),
        }
    }
}

async fn delete(s3: &Client, bucket: &str, keys: &[String]) -> Result<()> {
    use aws_sdk_s3::types::{Delete, ObjectIdentifier};
    for batch in keys.chunks(1000) {
        let objects = batch
            .iter()
            .map(|key| ObjectIdentifier::builder().key(key).build())
            .collect::<Result<Vec<_>, _>>()?;
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()?;
        s3.delete_objects()
            .bucket(bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|e| {
                let at = S3Url {
                    bucket: bucket.to_owned(),
                    key: batch[0].clone(),
                };
                s3_failure("deleting", &at, e)
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(text: &str) -> Vec<u8> {
        text.as_bytes().to_vec()
    }

    #[test]
    fn error_objects_are_told_from_outcomes_by_their_index() {
        let error = r#"{"error":{"code":500,"index":3,"message":"broke","subtask":"b"}}"#;
        assert!(is_failure(error, 3));
        assert!(!is_failure(error, 4), "another line's error object");
        assert!(!is_failure(r#"{"description":"s1: DONE"}"#, 0));
        assert!(!is_failure(
            r#"{"error":{"index":0,"message":"x"},"more":1}"#,
            0
        ));
        assert!(!is_failure("not json", 0));
        let moved = with_index(error, 3, 17);
        assert!(is_failure(&moved, 17), "{moved}");
        assert_eq!(
            with_index(r#"{"description":"x"}"#, 3, 17),
            r#"{"description":"x"}"#
        );
        let placeholder = no_outcome(5, br#"{"description":"flaky s6"}"#, "inv_1");
        assert!(is_failure(&placeholder, 5), "{placeholder}");
        assert!(
            placeholder.contains("\"subtask\":\"flaky s6\""),
            "{placeholder}"
        );
    }

    #[test]
    fn items_are_the_non_blank_lines() {
        let text = b"{\"a\":1}\r\n{\"a\":2}\n\n  \n";
        assert_eq!(item_lines(text), vec![&b"{\"a\":1}"[..], &b"{\"a\":2}"[..]]);
        assert_eq!(
            part_lines(b"4\t{\"x\":1}\n7\t{\"error\":{}}\n"),
            vec![
                (4, "{\"x\":1}".to_owned()),
                (7, "{\"error\":{}}".to_owned())
            ]
        );
    }

    #[test]
    fn the_run_is_read_from_its_journal() {
        let input = json!({"Command": {"Input": {"headers": [], "payload":
            bytes(r#"{"items":"s3://b/in.jsonl","results":"s3://b/out.jsonl"}"#)}}});
        let step = json!({"Command": {"Run": {"completion_id": 1, "name": "scan items"}}});
        let done = json!({"Notification": {"Completion": {"Run": {"completion_id": 1,
            "result": {"Success": bytes(r#"{"count":40,"etag":"\"abc\""}"#)}}}}});
        let rows: Vec<Value> = [&input, &step, &done]
            .iter()
            .map(|e| json!({ "entry_json": e.to_string() }))
            .collect();
        let run = run_from_journal("inv_1", &rows).unwrap();
        assert_eq!(run.items.to_string(), "s3://b/in.jsonl");
        assert_eq!(run.results.to_string(), "s3://b/out.jsonl");
        assert_eq!((run.count, run.etag.as_str()), (40, "\"abc\""));

        let refused = json!({"Notification": {"Completion": {"Run": {"completion_id": 1,
            "result": {"Failure": {"code": 400, "message": "line 3 is not valid JSON"}}}}}});
        let rows: Vec<Value> = [&input, &step, &refused]
            .iter()
            .map(|e| json!({ "entry_json": e.to_string() }))
            .collect();
        let error = run_from_journal("inv_1", &rows).unwrap_err();
        assert_eq!(exit::code_of(&error), exit::BAD_INPUT);
        assert!(
            format!("{error}").contains("line 3 is not valid JSON"),
            "{error}"
        );
        let error = run_from_journal("inv_1", &[]).unwrap_err();
        assert_eq!(exit::code_of(&error), exit::UNKNOWN_ID);
    }

    #[test]
    fn succeeded_subtasks_give_their_outcome_at_their_index() {
        let row = |id: &str, entry: Value| json!({"id": id, "entry_json": entry.to_string()});
        let rows = [
            row(
                "inv_a",
                json!({"Command": {"Input": {"headers": [{"name": "x-fanout-index", "value": "7"}],
                    "payload": bytes(r#"{"description":"s8"}"#)}}}),
            ),
            row(
                "inv_a",
                json!({"Command": {"Output": {"result": {"Success": bytes(r#"{"description":"s8: DONE"}"#)}}}}),
            ),
            // An outcome without its index (its input entry is gone) is not guessed.
            row(
                "inv_b",
                json!({"Command": {"Output": {"result": {"Success": bytes("1")}}}}),
            ),
        ];
        assert_eq!(
            outcomes_from_journals(&rows, false),
            vec![(7, r#"{"description":"s8: DONE"}"#.to_owned())]
        );
    }

    #[test]
    fn a_batch_gives_its_succeeded_subtasks_from_its_first_index_on() {
        let row = |entry: Value| json!({"id": "inv_batch", "entry_json": entry.to_string()});
        let rows = [
            row(
                json!({"Command": {"Input": {"headers": [{"name": "x-fanout-index", "value": "10"}],
                    "payload": bytes("[]")}}}),
            ),
            row(json!({"Command": {"Output": {"result": {"Success": bytes(
                r#"[{"ok":{"description":"a"}},{"error":{"code":500,"message":"boom"}},{"ok":3}]"#
            )}}}})),
        ];
        let mut known = outcomes_from_journals(&rows, true);
        known.sort();
        // The failed one in the middle is not known: a redrive runs it again.
        assert_eq!(
            known,
            vec![
                (10, r#"{"description":"a"}"#.to_owned()),
                (12, "3".to_owned())
            ]
        );
    }

    #[test]
    fn each_generation_and_target_has_its_own_key() {
        let at = |key: &str| S3Url {
            bucket: "b".into(),
            key: key.into(),
        };
        let key = idempotency_key("inv_1", 0, 0, &at("out.jsonl"));
        assert!(key.starts_with("fanout-redrive-inv_1-0-0-"), "{key}");
        assert_eq!(key, idempotency_key("inv_1", 0, 0, &at("out.jsonl")));
        assert_ne!(key, idempotency_key("inv_1", 1, 0, &at("out.jsonl")));
        assert_ne!(key, idempotency_key("inv_1", 0, 1, &at("out.jsonl")));
        assert_ne!(key, idempotency_key("inv_1", 0, 0, &at("other.jsonl")));
    }
}
