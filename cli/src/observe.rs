//! Watching a fan-out through Restate's admin introspection (`POST /query`): how far it is, and
//! what each subtask did.
//!
//! Everything comes from SQL over Restate's system tables, so it works from any machine, against
//! the local stack or a remote Restate, while the run is in flight or after it finished:
//!
//! | what | where |
//! |---|---|
//! | the coordinator | its `sys_invocation` row |
//! | its subtasks in input order, with their input | the coordinator's `Command: Call` entries in `sys_journal` |
//! | each subtask's state | `sys_invocation` rows whose `invoked_by_id` is the coordinator |
//! | retries in flight | `retry_count` (attempts started) and `last_failure` of those rows |
//! | retries after completion | `TransientError` events in `sys_journal_events` (the live columns are cleared when an invocation completes) |
//!
//! | how many subtasks | the journaled result of the coordinator's `split task` step, read once |
//!
//! A progress poll is one grouped count over the children (plus, until the split is known, one
//! lookup keyed by the coordinator's id), whatever the width; [`PollInterval`] spaces polls by
//! how long they take.

use crate::admin::{AdminClient, sql_string};
use anyhow::Result;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// The coordinator's journaled step whose result is the list of subtasks (`worker/run`).
pub const SPLIT_STEP: &str = "split task";

/// `inv_` followed by base62: checked before an id reaches a URL or a query, so a typo gets a
/// clear answer instead of an empty result.
pub fn check_invocation_id(id: &str) -> Result<(), String> {
    let valid = id
        .strip_prefix("inv_")
        .is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric()));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not an invocation id; they look like inv_1d7ECWP1bH4t5dNhlnBYDTAV59WL5YJsYh \
             (printed by `fanout invoke --send`, or in the Restate UI)"
        ))
    }
}

/// The coordinator invocation as Restate reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Coordinator {
    pub invocation_id: String,
    /// `service/handler`, `worker/run` for a fan-out.
    pub target: String,
    /// Restate's status, with a completed failure shown as `failed`.
    pub status: String,
    /// The terminal failure, when `status` is `failed`.
    pub failure: Option<String>,
    pub duration_ms: Option<u64>,
}

impl Coordinator {
    pub fn is_finished(&self) -> bool {
        matches!(self.status.as_str(), "completed" | "failed" | "cancelled")
    }
}

/// Which runs `fanout runs` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RunStatus {
    All,
    /// Not finished: running, suspended, backing off or waiting to start.
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunStatus {
    fn condition(self) -> &'static str {
        match self {
            Self::All => "true",
            Self::Running => "status <> 'completed'",
            Self::Succeeded => "completion_result = 'success'",
            Self::Failed => {
                "completion_result = 'failure' AND completion_failure NOT LIKE '[409]%'"
            }
            Self::Cancelled => "completion_result = 'failure' AND completion_failure LIKE '[409]%'",
        }
    }
}

/// One fan-out as `fanout runs` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    pub invocation_id: String,
    /// When Restate took the run (RFC 3339, UTC).
    pub started: Option<String>,
    /// When it finished; `None` while it goes on.
    pub finished: Option<String>,
    /// Subtasks it split into; `None` before its split step (or when it refused the task).
    pub width: Option<usize>,
    /// As `fanout status` names it: running, suspended, completed, failed, cancelled…
    pub status: String,
    pub done: usize,
    pub failed: usize,
}

/// Counts of a fan-out's subtasks by state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Subtasks the coordinator has called; `None` until its split step is done.
    pub total: Option<usize>,
    pub completed: usize,
    pub failed: usize,
    /// Running or suspended (waiting durably, e.g. on a sleep), with no failure so far.
    pub running: usize,
    /// Backing off after a failed attempt, or running again after one.
    pub retrying: usize,
    /// Out of retries: Restate paused them until someone resumes or cancels them.
    pub paused: usize,
    /// Called but not started yet.
    pub pending: usize,
}

impl Progress {
    pub fn finished(&self) -> usize {
        self.completed + self.failed
    }

    fn seen(&self) -> usize {
        self.completed + self.failed + self.running + self.retrying + self.paused + self.pending
    }

    /// Sets the total; subtasks split off but without an invocation yet count as pending.
    pub fn with_total(mut self, total: Option<usize>) -> Self {
        if self.total.is_none()
            && let Some(total) = total
        {
            self.pending += total.saturating_sub(self.seen());
            self.total = Some(total.max(self.seen()));
        }
        self
    }
}

/// One subtask of a fan-out, as `fanout status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subtask {
    /// 1-based position in the task, the order of the aggregated result.
    pub index: usize,
    pub description: String,
    pub invocation_id: String,
    /// pending, running, backing-off, suspended, paused, completed or failed.
    pub status: String,
    /// Attempts started. Restate records one error event per distinct failure, so a subtask that
    /// failed repeatedly with the very same message counts once per distinct message after it
    /// completes.
    pub attempts: u64,
    pub duration_ms: Option<u64>,
    pub last_error: Option<String>,
}

/// Introspection queries for one Restate admin endpoint.
#[derive(Clone)]
pub struct Observer {
    admin: AdminClient,
}

impl Observer {
    pub fn new(admin: AdminClient) -> Self {
        Self { admin }
    }

    /// The invocation `id`, or `None` when Restate does not know it (never existed, or past its
    /// completion retention).
    pub async fn coordinator(&self, id: &str) -> Result<Option<Coordinator>> {
        let rows = self
            .admin
            .query(&format!(
                "SELECT id, target, status, completion_result, completion_failure, \
                 CAST(COALESCE(running_at, created_at) AS BIGINT) AS started_ms, \
                 CAST(completed_at AS BIGINT) AS completed_ms, \
                 CAST(now() AS BIGINT) / 1000000 AS now_ms \
                 FROM sys_invocation WHERE id = {}",
                sql_string(id)
            ))
            .await?;
        Ok(rows.first().map(|row| {
            let status = status_name(
                text(row, "status"),
                text(row, "completion_result"),
                text(row, "completion_failure"),
            );
            Coordinator {
                invocation_id: text(row, "id").unwrap_or(id).to_owned(),
                target: text(row, "target").unwrap_or_default().to_owned(),
                failure: matches!(status, "failed" | "cancelled")
                    .then(|| text(row, "completion_failure").map(str::to_owned))
                    .flatten(),
                duration_ms: duration_ms(row),
                status: status.to_owned(),
            }
        }))
    }

    /// The most recent fan-outs (`worker/run` invocations) matching `status`, newest first.
    pub async fn runs(&self, status: RunStatus, limit: usize) -> Result<Vec<RunSummary>> {
        let rows = self
            .admin
            .query(&format!(
                "SELECT id, status, completion_result, completion_failure, created_at, \
                 completed_at FROM sys_invocation WHERE target = 'worker/run' AND {} \
                 ORDER BY created_at DESC LIMIT {limit}",
                status.condition()
            ))
            .await?;
        let mut runs = Vec::with_capacity(rows.len());
        for row in &rows {
            let Some(id) = text(row, "id") else { continue };
            let width = self.split_total(id).await?;
            let progress = self.progress(id, width).await?;
            runs.push(RunSummary {
                invocation_id: id.to_owned(),
                started: text(row, "created_at").map(str::to_owned),
                finished: text(row, "completed_at").map(str::to_owned),
                width,
                status: status_name(
                    text(row, "status"),
                    text(row, "completion_result"),
                    text(row, "completion_failure"),
                )
                .to_owned(),
                done: progress.completed,
                failed: progress.failed,
            });
        }
        Ok(runs)
    }

    /// How many subtasks coordinator `id` split its task into: the length of the journaled
    /// result of its `split task` step, `None` until that step is done (or when it refused the
    /// task). Counting the calls instead would show a total that grows while they are journaled
    /// one by one.
    pub async fn split_total(&self, id: &str) -> Result<Option<usize>> {
        let rows = self
            .admin
            .query(&format!(
                "SELECT index, entry_json FROM sys_journal WHERE id = {} \
                 AND ((entry_type = 'Command: Run' AND name = {}) \
                 OR entry_type = 'Notification: Run') ORDER BY index",
                sql_string(id),
                sql_string(SPLIT_STEP)
            ))
            .await?;
        Ok(split_total_from(&rows))
    }

    /// Counts of the subtasks of coordinator `id` by state: one grouped count, whatever the
    /// width of the fan-out. `total` comes from [`Self::split_total`].
    pub async fn progress(&self, id: &str, total: Option<usize>) -> Result<Progress> {
        let groups = self
            .admin
            .query(&format!(
                "SELECT status, completion_result, last_failure IS NOT NULL AS failing, \
                 count(*) AS n FROM sys_invocation WHERE {} \
                 GROUP BY status, completion_result, last_failure IS NOT NULL",
                subtasks_of(id)
            ))
            .await?;
        let mut progress = Progress::default();
        for row in &groups {
            let n = row.get("n").and_then(Value::as_u64).unwrap_or(0) as usize;
            let failing = row.get("failing").and_then(Value::as_bool).unwrap_or(false);
            // Progress counts a cancelled subtask as failed; `fanout status` tells them apart.
            let status = status_name(text(row, "status"), text(row, "completion_result"), None);
            *progress.bucket(status, failing) += n;
        }
        Ok(progress.with_total(total))
    }

    /// Every subtask of coordinator `id` in input order, with attempts, duration and last error.
    pub async fn subtasks(&self, id: &str) -> Result<Vec<Subtask>> {
        let id_literal = sql_string(id);
        let of_run = subtasks_of(id);
        // With the fan-in ledger the subtasks are called by the run's lanes, each in the order
        // it claimed them; every call carries its subtask's position in a header.
        let mut calls: Vec<(usize, String, String)> = self
            .admin
            .query(&format!(
                "SELECT id, index, entry_json FROM sys_journal \
                 WHERE entry_type = 'Command: Call' AND (id = {id_literal} OR id IN ({}))",
                lanes_of(id)
            ))
            .await?
            .iter()
            .filter_map(|row| {
                let (position, id, description) = parse_call(text(row, "entry_json")?)?;
                // In-order calls have no header: their journal order is the input order.
                let position = position.or_else(|| int(row, "index").map(|i| i as usize))?;
                Some((position, id, description))
            })
            .collect();
        calls.sort_by_key(|(position, _, _)| *position);
        let children = self
            .admin
            .query(&format!(
                "SELECT id, status, completion_result, completion_failure, retry_count, \
                 last_failure, CAST(COALESCE(running_at, created_at) AS BIGINT) AS started_ms, \
                 CAST(completed_at AS BIGINT) AS completed_ms, \
                 CAST(now() AS BIGINT) / 1000000 AS now_ms, \
                 CAST(created_at AS BIGINT) AS created_ms \
                 FROM sys_invocation WHERE {of_run}"
            ))
            .await?;
        // Servers older than 1.4 have no journal events: attempts then come from the live
        // columns only.
        let events = self
            .admin
            .query(&format!(
                "SELECT e.id AS id, CAST(e.appended_at AS BIGINT) AS at_ms, e.event_json \
                 FROM sys_journal_events e WHERE e.event_type = 'TransientError' AND e.id IN \
                 (SELECT id FROM sys_invocation WHERE {of_run})"
            ))
            .await
            .unwrap_or_default();
        Ok(merge_subtasks(&calls, &children, &events))
    }
}

/// The handler that runs a lane of a fan-in-ledger run (named `runShard` on the wire).
const LANE_TARGET: &str = "worker/runShard";

/// SQL condition selecting the lane invocations of run `id`: started by the run's ledger
/// (the `fanIn` Virtual Object keyed by the run's id).
fn lanes_of(id: &str) -> String {
    format!(
        "SELECT id FROM sys_invocation WHERE target = {} AND invoked_by_id IN \
         (SELECT id FROM sys_invocation WHERE target_service_name = 'fanIn' \
         AND target_service_key = {})",
        sql_string(LANE_TARGET),
        sql_string(id)
    )
}

/// SQL condition selecting the subtask invocations of run `id`: called by the run itself
/// (in-order fan-in) or by one of its lanes (the fan-in ledger). By handler, not service: in a
/// split layout the subtasks are `executor/runSubtask`.
fn subtasks_of(id: &str) -> String {
    format!(
        "target_handler_name = 'runSubtask' AND (invoked_by_id = {} OR invoked_by_id IN ({}))",
        sql_string(id),
        lanes_of(id)
    )
}

impl Progress {
    fn bucket(&mut self, status: &str, failing: bool) -> &mut usize {
        match status {
            "completed" => &mut self.completed,
            "failed" => &mut self.failed,
            "backing-off" => &mut self.retrying,
            "running" | "suspended" if failing => &mut self.retrying,
            "running" | "suspended" => &mut self.running,
            "paused" => &mut self.paused,
            _ => &mut self.pending,
        }
    }
}

/// Restate's status names, with a completed failure as `failed` (or `cancelled`, when that is
/// why it ended: fail-fast cancels the subtasks in flight) and the states before the first
/// attempt (scheduled, inboxed, ready) as `pending`.
fn status_name<'a>(
    status: Option<&'a str>,
    completion_result: Option<&str>,
    completion_failure: Option<&str>,
) -> &'a str {
    match (status, completion_result) {
        (Some("completed"), Some("failure"))
            if completion_failure.is_some_and(|f| f.starts_with("[409]")) =>
        {
            "cancelled"
        }
        (Some("completed"), Some("failure")) => "failed",
        (Some("scheduled" | "inboxed" | "ready") | None, _) => "pending",
        (Some(status), _) => status,
    }
}

fn text<'a>(row: &'a Value, field: &str) -> Option<&'a str> {
    row.get(field).and_then(Value::as_str)
}

fn int(row: &Value, field: &str) -> Option<i64> {
    row.get(field).and_then(Value::as_i64)
}

/// From the first attempt to completion, or to the server's now while in flight (the server's
/// clock on both ends, so a remote Restate gives the same numbers).
fn duration_ms(row: &Value) -> Option<u64> {
    let end = int(row, "completed_ms").or_else(|| int(row, "now_ms"))?;
    let start = int(row, "started_ms")?;
    u64::try_from(end - start).ok()
}

/// The first line of a Restate failure without its `[500 Internal] ` prefix.
fn clean_error(message: &str) -> String {
    let line = message.lines().next().unwrap_or_default().trim();
    let line = match line
        .strip_prefix('[')
        .and_then(|rest| rest.split_once("] "))
    {
        Some((_, rest)) => rest,
        None => line,
    };
    line.to_owned()
}

/// What a subtask's input payload says: the `description` of a `{"description": …}` task, the
/// JSON otherwise.
fn payload_label(payload: &[u8]) -> String {
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(fields)) if fields.len() == 1 && fields.contains_key("description") => {
            match &fields["description"] {
                Value::String(description) => description.clone(),
                other => other.to_string(),
            }
        }
        Ok(value) => value.to_string(),
        Err(_) => String::from_utf8_lossy(payload).into_owned(),
    }
}

/// The callee and input of a `Command: Call` journal entry.
/// A call to `runSubtask` in a journal: the position its `x-fanout-index` header gives (a
/// lane's call), the callee's invocation id and the subtask's label. Other calls (a lane's
/// claims from its ledger) are not subtasks.
fn parse_call(entry_json: &str) -> Option<(Option<usize>, String, String)> {
    let entry: Value = serde_json::from_str(entry_json).ok()?;
    let request = entry.pointer("/Command/Call/request")?;
    let handler = request
        .pointer("/invocation_target/Service/handler")
        .and_then(Value::as_str);
    if handler != Some("runSubtask") {
        return None;
    }
    let id = request.get("invocation_id")?.as_str()?.to_owned();
    let payload = journal_bytes(request.get("parameter")?)?;
    let position = request
        .get("headers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find_map(|header| {
            let (name, value) = match header {
                Value::Object(h) => (h.get("name")?.as_str()?, h.get("value")?.as_str()?),
                Value::Array(pair) => (pair.first()?.as_str()?, pair.get(1)?.as_str()?),
                _ => return None,
            };
            (name == INDEX_HEADER).then(|| value.parse().ok())?
        });
    Some((position, id, payload_label(&payload)))
}

/// The header a lane puts on each call to `runSubtask` (see the handler's `fan_in` module).
const INDEX_HEADER: &str = "x-fanout-index";

fn completion_id(entry: &Value, path: &str) -> Option<u64> {
    entry.pointer(path)?.get("completion_id")?.as_u64()
}

/// Bytes journaled as a JSON array of numbers (or base64, in case a server version encodes
/// them so).
fn journal_bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::Array(bytes) => bytes
            .iter()
            .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
            .collect(),
        Value::String(encoded) => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()
        }
        _ => None,
    }
}

/// The number of subtasks in the split step's result, from its `Command: Run` row and the
/// `Notification: Run` rows of the coordinator's journal.
fn split_total_from(rows: &[Value]) -> Option<usize> {
    let entries: Vec<Value> = rows
        .iter()
        .filter_map(|row| serde_json::from_str(text(row, "entry_json")?).ok())
        .collect();
    let step = entries
        .iter()
        .find_map(|entry| completion_id(entry, "/Command/Run"))?;
    let result = entries.iter().find_map(|entry| {
        (completion_id(entry, "/Notification/Completion/Run")? == step)
            .then(|| entry.pointer("/Notification/Completion/Run/result/Success"))
            .flatten()
    })?;
    match serde_json::from_slice::<Value>(&journal_bytes(result)?).ok()? {
        Value::Array(subtasks) => Some(subtasks.len()),
        _ => None,
    }
}

#[derive(Default)]
struct Failures {
    count: u64,
    last_at: i64,
    last_message: Option<String>,
}

fn merge_subtasks(
    calls: &[(usize, String, String)],
    children: &[Value],
    events: &[Value],
) -> Vec<Subtask> {
    let mut failures: HashMap<&str, Failures> = HashMap::new();
    for event in events {
        let Some(id) = text(event, "id") else {
            continue;
        };
        let at = int(event, "at_ms").unwrap_or(0);
        let message = text(event, "event_json")
            .and_then(|json| serde_json::from_str::<Value>(json).ok())
            .and_then(|e| {
                e.get("error_message")
                    .and_then(Value::as_str)
                    .map(clean_error)
            });
        let entry = failures.entry(id).or_default();
        entry.count += 1;
        if entry.last_message.is_none() || at >= entry.last_at {
            entry.last_at = at;
            entry.last_message = message;
        }
    }
    let mut rows: HashMap<&str, &Value> = children
        .iter()
        .filter_map(|row| Some((text(row, "id")?, row)))
        .collect();

    let mut subtasks = Vec::with_capacity(calls.len().max(children.len()));
    for (_, id, description) in calls {
        let row = rows.remove(id.as_str());
        subtasks.push(subtask(
            subtasks.len() + 1,
            id.clone(),
            description.clone(),
            row,
            &failures,
        ));
    }
    // Children the journal no longer names (its retention is shorter than the invocations'):
    // still shown, in creation order.
    let mut rest: Vec<&Value> = rows.into_values().collect();
    rest.sort_by_key(|row| int(row, "created_ms"));
    for row in rest {
        let id = text(row, "id").unwrap_or_default().to_owned();
        subtasks.push(subtask(
            subtasks.len() + 1,
            id,
            "-".into(),
            Some(row),
            &failures,
        ));
    }
    subtasks
}

fn subtask(
    index: usize,
    invocation_id: String,
    description: String,
    row: Option<&Value>,
    failures: &HashMap<&str, Failures>,
) -> Subtask {
    let recorded = failures.get(invocation_id.as_str());
    let failed_attempts = recorded.map_or(0, |f| f.count);
    let Some(row) = row else {
        return Subtask {
            index,
            description,
            invocation_id,
            status: "pending".into(),
            attempts: 0,
            duration_ms: None,
            last_error: None,
        };
    };
    let status = status_name(
        text(row, "status"),
        text(row, "completion_result"),
        text(row, "completion_failure"),
    );
    let attempts = (failed_attempts + current_attempt(status))
        .max(row.get("retry_count").and_then(Value::as_u64).unwrap_or(0));
    let last_error = text(row, "last_failure")
        .map(clean_error)
        .or_else(|| recorded.and_then(|f| f.last_message.clone()))
        .or_else(|| {
            (status == "failed")
                .then(|| text(row, "completion_failure").map(clean_error))
                .flatten()
        });
    let started = !matches!(status, "pending");
    Subtask {
        index,
        description,
        invocation_id,
        status: status.to_owned(),
        attempts,
        duration_ms: started.then(|| duration_ms(row)).flatten(),
        last_error,
    }
}

/// 1 when the subtask's latest attempt did not end in a transient failure: it is under way, or
/// it ended the subtask.
fn current_attempt(status: &str) -> u64 {
    u64::from(matches!(
        status,
        "running" | "suspended" | "completed" | "failed" | "cancelled"
    ))
}

/// `1.52 s`, `830 ms`.
pub fn format_duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.2} s", ms as f64 / 1000.0)
    }
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// One line per subtask: index, description, invocation id, status, attempts, duration, last
/// error (long descriptions and errors cut; `--output json` has them whole).
pub fn subtask_table(subtasks: &[Subtask]) -> String {
    let description_width = subtasks
        .iter()
        .map(|s| s.description.chars().count())
        .max()
        .unwrap_or(0)
        .clamp("description".len(), 32);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>5}  {:<dw$}  {:<38}  {:<11}  {:>8}  {:>9}  last error",
        "#",
        "description",
        "invocation",
        "status",
        "attempts",
        "duration",
        dw = description_width
    );
    for s in subtasks {
        let line = format!(
            "{:>5}  {:<dw$}  {:<38}  {:<11}  {:>8}  {:>9}  {}",
            s.index,
            truncate(&s.description, description_width),
            s.invocation_id,
            s.status,
            s.attempts,
            s.duration_ms.map(format_duration).unwrap_or_default(),
            s.last_error
                .as_deref()
                .map(|e| truncate(e, 100))
                .unwrap_or_default(),
            dw = description_width
        );
        // Columns are padded for the next one; a row without a last error has none, and
        // trailing blanks only get in the way of `grep` and diffs.
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// Totals over a list of subtasks, for the summary line and `--output json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub subtasks: usize,
    pub by_status: std::collections::BTreeMap<String, usize>,
    /// Subtasks of the split that no one has called: not yet, or never (a failed run stops
    /// calling; see [`Totals::with_split_total`]).
    pub not_called: usize,
    /// Subtasks that needed more than one attempt.
    pub retried: usize,
    pub failed_attempts: u64,
}

pub fn totals(subtasks: &[Subtask]) -> Totals {
    let mut totals = Totals {
        subtasks: subtasks.len(),
        ..Totals::default()
    };
    for s in subtasks {
        *totals.by_status.entry(s.status.clone()).or_default() += 1;
        let failed = s.attempts.saturating_sub(current_attempt(&s.status));
        totals.retried += usize::from(failed > 0);
        totals.failed_attempts += failed;
    }
    totals
}

impl Totals {
    /// Counts the subtasks of a split of `total` that were never called.
    pub fn with_split_total(mut self, total: Option<usize>) -> Self {
        if let Some(total) = total {
            self.not_called = total.saturating_sub(self.subtasks);
            self.subtasks = self.subtasks.max(total);
        }
        self
    }
}

/// `4 subtasks: 3 completed, 1 running · 1 retried (2 failed attempts) · worker/run completed in 3.41 s`
pub fn summary_line(coordinator: &Coordinator, totals: &Totals) -> String {
    let mut states: Vec<String> = totals
        .by_status
        .iter()
        .map(|(status, n)| format!("{n} {status}"))
        .collect();
    if totals.not_called > 0 {
        let n = totals.not_called;
        states.push(if coordinator.is_finished() {
            format!("{n} never started")
        } else {
            format!("{n} not called yet")
        });
    }
    let states = if states.is_empty() {
        "none called yet".to_owned()
    } else {
        states.join(", ")
    };
    let plural = if totals.subtasks == 1 { "" } else { "s" };
    let mut line = format!("{} subtask{plural}: {states}", totals.subtasks);
    if totals.retried > 0 {
        let _ = write!(
            line,
            " · {} retried ({} failed attempt{})",
            totals.retried,
            totals.failed_attempts,
            if totals.failed_attempts == 1 { "" } else { "s" }
        );
    }
    let timing = match (coordinator.is_finished(), coordinator.duration_ms) {
        (true, Some(ms)) => format!(" in {}", format_duration(ms)),
        (false, Some(ms)) => format!(" for {}", format_duration(ms)),
        (_, None) => String::new(),
    };
    let _ = write!(
        line,
        " · {} {}{timing}",
        coordinator.target, coordinator.status
    );
    if let Some(failure) = &coordinator.failure {
        let _ = write!(line, ": {}", clean_error(failure));
    }
    line
}

/// How progress is shown while a run is followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisplayMode {
    /// A live bar, redrawn in place (a terminal).
    Bar,
    /// A line when something changed, at most one a second, and one every 10 s regardless (a
    /// pipe or CI log).
    Plain,
    /// Nothing.
    Quiet,
}

impl DisplayMode {
    /// A bar when stderr, where progress goes, is a terminal; plain lines otherwise.
    pub fn for_stderr() -> Self {
        if std::io::stderr().is_terminal() {
            Self::Bar
        } else {
            Self::Plain
        }
    }
}

/// Progress shown on stderr, so stdout carries only the result.
pub struct Display {
    mode: DisplayMode,
    bar: Option<ProgressBar>,
    started: Instant,
    last_state: Option<String>,
    last_print: Option<Instant>,
    /// The bar is drawn against a total (until the split is done there is none).
    counting: bool,
}

const PLAIN_MIN_GAP: Duration = Duration::from_secs(1);
const PLAIN_HEARTBEAT: Duration = Duration::from_secs(10);

/// The bar's layout: spinner, elapsed, bar, done/total, then the states.
pub fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {elapsed:>4} [{bar:30}] {pos}/{len} subtasks done{msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// Before the coordinator has called its subtasks: no total to draw a bar against. The phase
/// is the prefix, the counts the message, as in the bar style.
pub fn waiting_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {elapsed:>4} {prefix}{msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

impl Display {
    pub fn new(mode: DisplayMode) -> Self {
        let bar = (mode == DisplayMode::Bar).then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(waiting_style());
            bar.set_prefix("starting the fan-out");
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self::with_bar(mode, bar)
    }

    /// A display drawing to `bar` (a hidden one in tests).
    pub fn with_bar(mode: DisplayMode, bar: Option<ProgressBar>) -> Self {
        Self {
            mode,
            bar,
            started: Instant::now(),
            last_state: None,
            last_print: None,
            counting: false,
        }
    }

    pub fn bar(&self) -> Option<&ProgressBar> {
        self.bar.as_ref()
    }

    pub fn update(&mut self, progress: &Progress) {
        match self.mode {
            DisplayMode::Bar => {
                let Some(bar) = &self.bar else { return };
                let message = counts_text(progress);
                match progress.total {
                    None => {
                        bar.set_prefix(phase(false));
                        bar.set_message(message);
                    }
                    Some(total) => {
                        bar.set_length(total as u64);
                        bar.set_message(message);
                        bar.set_position(progress.finished() as u64);
                        // Last, so the first frame in bar style already has its numbers.
                        if !self.counting {
                            bar.set_style(bar_style());
                            self.counting = true;
                        }
                    }
                }
            }
            DisplayMode::Plain => {
                let state = state_text(progress, false);
                let now = Instant::now();
                let since = self.last_print.map(|at| now - at);
                let due = match since {
                    None => true,
                    Some(gap) => {
                        (Some(&state) != self.last_state.as_ref() && gap >= PLAIN_MIN_GAP)
                            || gap >= PLAIN_HEARTBEAT
                    }
                };
                if due {
                    eprintln!("{}", plain_line(self.started.elapsed(), progress));
                    self.last_print = Some(now);
                    self.last_state = Some(state);
                }
            }
            DisplayMode::Quiet => {}
        }
    }

    /// The final state: the bar left drawn complete, or a last plain line.
    pub fn finish(&mut self, progress: &Progress) {
        match self.mode {
            DisplayMode::Bar => {
                self.update(progress);
                if let Some(bar) = &self.bar {
                    if progress.total.is_none() {
                        bar.set_prefix(phase(true));
                    }
                    bar.finish();
                    // The finished bar keeps the cursor on its line; what follows starts below.
                    eprintln!();
                }
            }
            DisplayMode::Plain => {
                let elapsed = self.started.elapsed();
                eprintln!("{}", line(elapsed, &state_text(progress, true)));
            }
            DisplayMode::Quiet => {}
        }
    }

    /// Removes the bar so a message can be printed on a clean line.
    pub fn abandon(&mut self) {
        if let Some(bar) = &self.bar {
            bar.abandon();
        }
    }
}

/// What follows `done/total` on the bar: `· 1 running · 1 retrying`.
pub fn bar_message(progress: &Progress) -> String {
    counts_text(progress)
}

/// The states after `done/total`; `ended`: the run is over, so no total means none were called.
/// What the run is doing while there is no total yet (`ended`: it is over, and called none).
fn phase(ended: bool) -> &'static str {
    if ended {
        "no subtask was called"
    } else {
        "splitting the task"
    }
}

fn messages(progress: &Progress, ended: bool) -> String {
    match progress.total {
        None => format!(" · {}{}", phase(ended), counts_text(progress)),
        Some(_) => counts_text(progress),
    }
}

fn counts_text(progress: &Progress) -> String {
    let mut message = String::new();
    for (n, what) in [
        (progress.running, "running"),
        (progress.retrying, "retrying"),
        (progress.pending, "pending"),
        (progress.paused, "paused"),
        (progress.failed, "failed"),
    ] {
        if n > 0 {
            let _ = write!(message, " · {n} {what}");
        }
    }
    message
}

fn state_text(progress: &Progress, ended: bool) -> String {
    let total = progress
        .total
        .map_or_else(|| "?".to_owned(), |n| n.to_string());
    format!(
        "{}/{total} subtasks done{}",
        progress.finished(),
        messages(progress, ended)
    )
}

fn line(elapsed: Duration, state: &str) -> String {
    format!("[{:>7.1}s] {state}", elapsed.as_secs_f64())
}

/// `[   2.5s] 3/4 subtasks done · 1 retrying`.
pub fn plain_line(elapsed: Duration, progress: &Progress) -> String {
    line(elapsed, &state_text(progress, false))
}

/// Spacing of progress polls: every 500 ms while things change, backing off to 2 s while they
/// do not, and never closer than ten times what the last poll took, so a busy server (or a wide
/// fan-out whose queries take longer) is asked less often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollInterval {
    current: Duration,
}

impl PollInterval {
    pub const FLOOR: Duration = Duration::from_millis(500);
    pub const IDLE: Duration = Duration::from_secs(2);
    pub const MAX: Duration = Duration::from_secs(10);

    pub fn new() -> Self {
        Self {
            current: Self::FLOOR,
        }
    }

    pub fn current(&self) -> Duration {
        self.current
    }

    /// The wait before the next poll, given whether the last one saw a change and how long
    /// its queries took.
    pub fn next(&mut self, changed: bool, query_time: Duration) -> Duration {
        let floor = (query_time * 10).clamp(Self::FLOOR, Self::MAX);
        self.current = if changed {
            floor
        } else {
            self.current
                .mul_f64(1.5)
                .clamp(floor, Self::IDLE.max(floor))
        };
        self.current
    }
}

impl Default for PollInterval {
    fn default() -> Self {
        Self::new()
    }
}

/// One progress poll; reads the split's total until it is known.
async fn poll(observer: &Observer, id: &str, total: &mut Option<usize>) -> Result<Progress> {
    let progress = observer.progress(id, *total).await?;
    if total.is_some() {
        return Ok(progress);
    }
    // Asked after the counts, so any child counted has its split already journaled.
    *total = observer.split_total(id).await.ok().flatten();
    Ok(progress.with_total(*total))
}

/// Polls the progress of coordinator `id` into `display` until `until` completes, then polls
/// once more so the display ends on the final counts. Returns `until`'s output and the last
/// progress seen. A failed poll keeps the previous counts: the display is a convenience, and the
/// run's outcome comes from `until`.
pub async fn watch<F: Future>(
    observer: &Observer,
    id: &str,
    display: &mut Display,
    until: F,
) -> (F::Output, Progress) {
    let mut until = std::pin::pin!(until);
    let mut interval = PollInterval::new();
    let mut last = Progress::default();
    // The first answer counts as a change: the run has just started, so look again soon.
    let mut seen_any = false;
    // Fixed once the split is journaled; read once, as it can be large.
    let mut total = None;
    loop {
        let started = Instant::now();
        let changed = match poll(observer, id, &mut total).await {
            Ok(progress) => {
                let changed = !seen_any || progress != last;
                seen_any = true;
                last = progress;
                display.update(&last);
                changed
            }
            Err(_) => false,
        };
        let wait = interval.next(changed, started.elapsed());
        tokio::select! {
            output = &mut until => {
                if let Ok(progress) = poll(observer, id, &mut total).await {
                    last = progress;
                }
                display.finish(&last);
                return (output, last);
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call_entry(id: &str, handler: &str, payload: &str, headers: Value) -> String {
        let bytes: Vec<u8> = payload.bytes().collect();
        json!({"Command": {"Call": {"request": {
            "invocation_id": id, "parameter": bytes, "headers": headers,
            "invocation_target": {"Service": {"name": "worker", "handler": handler}}
        }}}})
        .to_string()
    }

    /// A call as `subtasks` keeps it, in journal position `position`.
    fn call(id: &str, payload: &str) -> (usize, String, String) {
        let (position, id, description) =
            parse_call(&call_entry(id, "runSubtask", payload, json!([]))).unwrap();
        (position.unwrap_or(0), id, description)
    }

    #[test]
    fn a_lanes_calls_carry_their_position_and_its_claims_are_no_subtasks() {
        let headers = json!([{"name": "x-fanout-index", "value": "41"}]);
        let (position, id, description) = parse_call(&call_entry(
            "inv_x",
            "runSubtask",
            r#"{"description":"shower"}"#,
            headers,
        ))
        .unwrap();
        assert_eq!((position, id.as_str()), (Some(41), "inv_x"));
        assert_eq!(description, "shower");
        let claim = call_entry("inv_y", "claim", "{}", json!([]));
        assert_eq!(parse_call(&claim), None);
    }

    #[test]
    fn the_subtask_table_has_no_trailing_blanks() {
        let row = |index, last_error: Option<&str>| Subtask {
            index,
            description: "shower".into(),
            invocation_id: "inv_1d7ECWP1bH4t5dNhlnBYDTAV59WL5YJsYh".into(),
            status: "completed".into(),
            attempts: 1,
            duration_ms: Some(120),
            last_error: last_error.map(str::to_owned),
        };
        let table = subtask_table(&[row(1, None), row(2, Some("boom"))]);
        assert_eq!(table.lines().count(), 3);
        for line in table.lines() {
            assert_eq!(line, line.trim_end(), "{line:?}");
        }
        assert!(table.lines().nth(2).unwrap().ends_with("  boom"), "{table}");
    }

    #[test]
    fn invocation_ids_are_checked() {
        assert!(check_invocation_id("inv_1d7ECWP1bH4t5dNhlnBYDTAV59WL5YJsYh").is_ok());
        for bad in ["", "inv_", "garbage", "inv_1'; DROP", "dp_123"] {
            let err = check_invocation_id(bad).unwrap_err();
            assert!(err.contains("is not an invocation id"), "{err}");
        }
    }

    #[test]
    fn the_total_is_the_length_of_the_split_result() {
        let subtasks: Vec<u8> = br#"[{"description":"a"},{"description":"b"}]"#.to_vec();
        let rows = [
            json!({"entry_json": r#"{"Command":{"Run":{"completion_id":1,"name":"split task"}}}"#}),
            json!({"entry_json": json!({"Notification": {"Completion": {"Run": {
                "completion_id": 7, "result": {"Success": [91, 93]}}}}}).to_string()}),
            json!({"entry_json": json!({"Notification": {"Completion": {"Run": {
                "completion_id": 1, "result": {"Success": subtasks}}}}}).to_string()}),
        ];
        assert_eq!(split_total_from(&rows), Some(2));
        assert_eq!(
            split_total_from(&rows[..2]),
            None,
            "the step has not finished"
        );
        let refused = json!({"entry_json": json!({"Notification": {"Completion": {"Run": {
            "completion_id": 1, "result": {"Failure": {"code": 400}}}}}}).to_string()});
        assert_eq!(split_total_from(&[rows[0].clone(), refused]), None);
    }

    #[test]
    fn statuses_are_named_for_users() {
        assert_eq!(
            status_name(Some("completed"), Some("failure"), None),
            "failed"
        );
        assert_eq!(
            status_name(Some("completed"), Some("failure"), Some("[409] cancelled")),
            "cancelled"
        );
        assert_eq!(
            status_name(Some("completed"), Some("failure"), Some("[500] boom")),
            "failed"
        );
        assert_eq!(
            status_name(Some("completed"), Some("success"), None),
            "completed"
        );
        assert_eq!(status_name(Some("inboxed"), None, None), "pending");
        assert_eq!(status_name(None, None, None), "pending");
        assert_eq!(status_name(Some("backing-off"), None, None), "backing-off");
    }

    #[test]
    fn errors_lose_their_code_prefix_and_repeats() {
        assert_eq!(
            clean_error("[500 Internal] flaky failed\nflaky failed"),
            "flaky failed"
        );
        assert_eq!(clean_error("plain"), "plain");
    }

    #[test]
    fn subtasks_follow_call_order_and_count_recorded_failures() {
        let calls = [
            call("inv_a", r#"{"description":"shower"}"#),
            call("inv_b", r#"{"description":"flaky b"}"#),
            call("inv_c", r#"[1,2]"#),
        ];
        let children = [
            json!({"id": "inv_b", "status": "completed", "completion_result": "success",
                   "started_ms": 1000, "completed_ms": 2500}),
            json!({"id": "inv_a", "status": "backing-off", "retry_count": 2,
                   "last_failure": "[500 Internal] boom 2\nboom 2", "started_ms": 1000,
                   "now_ms": 1400}),
        ];
        let event = |id: &str, at: i64, message: &str| {
            json!({"id": id, "at_ms": at,
                   "event_json": json!({"ty": "TransientError", "error_message": message}).to_string()})
        };
        let events = [
            event("inv_b", 20, "second"),
            event("inv_b", 10, "first"),
            event("inv_a", 10, "boom 1"),
        ];
        let subtasks = merge_subtasks(&calls, &children, &events);
        let view: Vec<_> = subtasks
            .iter()
            .map(|s| {
                (
                    s.index,
                    s.description.as_str(),
                    s.status.as_str(),
                    s.attempts,
                    s.duration_ms,
                    s.last_error.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            view,
            [
                (1, "shower", "backing-off", 2, Some(400), Some("boom 2")),
                (2, "flaky b", "completed", 3, Some(1500), Some("second")),
                (3, "[1,2]", "pending", 0, None, None),
            ]
        );
        let totals = totals(&subtasks);
        assert_eq!(totals.retried, 2);
        assert_eq!(totals.failed_attempts, 4);
    }

    #[test]
    fn summary_line_names_states_retries_and_the_run() {
        let coordinator = Coordinator {
            invocation_id: "inv_x".into(),
            target: "worker/run".into(),
            status: "completed".into(),
            failure: None,
            duration_ms: Some(3410),
        };
        let subtasks = [Subtask {
            index: 1,
            description: "flaky".into(),
            invocation_id: "inv_a".into(),
            status: "completed".into(),
            attempts: 3,
            duration_ms: Some(1500),
            last_error: Some("boom".into()),
        }];
        assert_eq!(
            summary_line(&coordinator, &totals(&subtasks)),
            "1 subtask: 1 completed · 1 retried (2 failed attempts) · worker/run completed in 3.41 s"
        );
        // A run that failed before calling everything: what it never called is counted.
        let failed = Coordinator {
            status: "failed".into(),
            ..coordinator.clone()
        };
        assert_eq!(
            summary_line(&failed, &totals(&subtasks).with_split_total(Some(4))),
            "4 subtasks: 1 completed, 3 never started · 1 retried (2 failed attempts) · \
             worker/run failed in 3.41 s"
        );
        let running = Coordinator {
            status: "suspended".into(),
            ..coordinator
        };
        assert!(
            summary_line(&running, &totals(&subtasks).with_split_total(Some(4)))
                .contains("3 not called yet")
        );
    }

    #[test]
    fn plain_lines_and_bar_messages() {
        let progress = Progress {
            total: Some(4),
            completed: 2,
            running: 1,
            retrying: 1,
            ..Progress::default()
        };
        assert_eq!(
            plain_line(Duration::from_millis(2500), &progress),
            "[    2.5s] 2/4 subtasks done · 1 running · 1 retrying"
        );
        assert_eq!(
            plain_line(Duration::ZERO, &Progress::default()),
            "[    0.0s] 0/? subtasks done · splitting the task"
        );
    }

    #[test]
    fn the_bar_tracks_done_over_total() {
        let mut display = Display::with_bar(DisplayMode::Bar, Some(ProgressBar::hidden()));
        display.update(&Progress::default());
        assert_eq!(display.bar().unwrap().prefix(), "splitting the task");
        display.update(&Progress {
            total: Some(10),
            completed: 3,
            failed: 1,
            retrying: 2,
            running: 4,
            ..Progress::default()
        });
        let bar = display.bar().unwrap();
        assert_eq!((bar.position(), bar.length()), (4, Some(10)));
        assert_eq!(bar.message(), " · 4 running · 2 retrying · 1 failed");
        // The template itself must parse, or the bar would silently fall back to the default.
        assert!(
            ProgressStyle::with_template(
                "{spinner} {elapsed:>4} [{bar:30}] {pos}/{len} subtasks done{msg}"
            )
            .is_ok()
        );
    }

    #[test]
    fn polls_back_off_when_idle_and_slow_down_for_slow_queries() {
        let mut interval = PollInterval::new();
        let fast = Duration::from_millis(5);
        assert_eq!(interval.next(true, fast), PollInterval::FLOOR);
        let mut waits = Vec::new();
        for _ in 0..6 {
            waits.push(interval.next(false, fast));
        }
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
        assert_eq!(*waits.last().unwrap(), PollInterval::IDLE);
        assert_eq!(interval.next(true, fast), PollInterval::FLOOR);
        assert_eq!(
            interval.next(true, Duration::from_millis(300)),
            Duration::from_secs(3)
        );
        assert_eq!(
            interval.next(true, Duration::from_secs(5)),
            PollInterval::MAX
        );
    }
}
