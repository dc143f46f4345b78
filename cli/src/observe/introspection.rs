//! The SQL side: Restate's system tables (`sys_invocation`, `sys_journal`,
//! `sys_journal_events`) read into the model, each poll one grouped query whatever the width.

use super::model::{
    Coordinator, Progress, RunStatus, RunSummary, Subtask, clean_error, current_attempt,
};
use crate::admin::{AdminClient, sql_string};
use anyhow::Result;
use serde_json::Value;
use std::collections::HashMap;

/// The coordinator's journaled step whose result is the list of subtasks (`worker/run`).
pub use fanout_contract::names::{SCAN_STEP, SPLIT_STEP};

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

    /// The most recent fan-outs (`worker/run` and `worker/runItems` invocations) matching
    /// `status`, newest first.
    pub async fn runs(&self, status: RunStatus, limit: usize) -> Result<Vec<RunSummary>> {
        let rows = self
            .admin
            .query(&format!(
                "SELECT id, target, status, completion_result, completion_failure, created_at, \
                 completed_at FROM sys_invocation WHERE target IN ({}, {}) AND {} \
                 ORDER BY created_at DESC LIMIT {limit}",
                sql_string(RUN_TARGET),
                sql_string(RUN_ITEMS_TARGET),
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
                target: text(row, "target").unwrap_or(RUN_TARGET).to_owned(),
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
                 AND ((entry_type = 'Command: Run' AND name IN ({}, {})) \
                 OR entry_type = 'Notification: Run') ORDER BY index",
                sql_string(id),
                sql_string(SPLIT_STEP),
                sql_string(SCAN_STEP)
            ))
            .await?;
        Ok(split_total_from(&rows))
    }

    /// Counts of the executor invocations of coordinator `id` by state: one grouped count,
    /// whatever the width of the fan-out. `total` comes from [`Self::split_total`]. A batched
    /// run (`--batch-size` above 1) is counted in batches, and its total, a count of subtasks,
    /// is not applied: how many batches a run forms is known only once its lanes formed them.
    pub async fn progress(&self, id: &str, total: Option<usize>) -> Result<Progress> {
        let groups = self
            .admin
            .query(&format!(
                "SELECT status, completion_result, last_failure IS NOT NULL AS failing, \
                 target_handler_name = {} AS batch, count(*) AS n FROM sys_invocation \
                 WHERE {} GROUP BY status, completion_result, last_failure IS NOT NULL, \
                 target_handler_name",
                sql_string(RUN_BATCH),
                executors_of(id)
            ))
            .await?;
        let batched = groups
            .iter()
            .any(|row| row.get("batch").and_then(Value::as_bool) == Some(true));
        let mut progress = Progress {
            batches: batched,
            ..Progress::default()
        };
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
        let of_run = executors_of(id);
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

use fanout_contract::headers::INDEX as INDEX_HEADER;
use fanout_contract::names::{
    LANE_TARGET, LEDGER, RUN_BATCH, RUN_ITEMS_TARGET, RUN_SUBTASK, RUN_TARGET,
};

/// SQL condition selecting the lane invocations of run `id`: started by the run's ledger
/// (the `fanIn` Virtual Object keyed by the run's id).
fn lanes_of(id: &str) -> String {
    format!(
        "SELECT id FROM sys_invocation WHERE target = {} AND invoked_by_id IN \
         (SELECT id FROM sys_invocation WHERE target_service_name = {} \
         AND target_service_key = {})",
        sql_string(LANE_TARGET),
        sql_string(LEDGER),
        sql_string(id)
    )
}

/// SQL condition selecting the subtask invocations of run `id`: called by the run itself
/// (in-order fan-in) or by one of its lanes (the fan-in ledger). By handler, not service: in a
/// split layout the subtasks are `executor/runSubtask`.
pub(crate) fn subtasks_of(id: &str) -> String {
    called_by_run(RUN_SUBTASK, id)
}

/// SQL condition selecting the batch invocations of run `id` (`--batch-size` above 1): each
/// ran a contiguous range of subtasks, the first of them named by its `x-fanout-index` header.
pub(crate) fn batches_of(id: &str) -> String {
    called_by_run(RUN_BATCH, id)
}

/// SQL condition selecting every executor invocation of run `id`, single subtasks and batches.
fn executors_of(id: &str) -> String {
    format!("({}) OR ({})", subtasks_of(id), batches_of(id))
}

fn called_by_run(handler: &str, id: &str) -> String {
    format!(
        "target_handler_name = {} AND (invoked_by_id = {} OR invoked_by_id IN ({}))",
        sql_string(handler),
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

/// What a subtask's input payload says: the `description` of a `{"description": …}` task, the
/// JSON otherwise.
pub(crate) fn payload_label(payload: &[u8]) -> String {
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

/// A call to `runSubtask` or `runBatch` in a journal: the position its `x-fanout-index` header
/// gives (a lane's call; a batch's first subtask), the callee's invocation id and its label (a
/// batch's says how many subtasks it holds). Other calls (a lane's claims from its ledger) are
/// not subtasks.
fn parse_call(entry_json: &str) -> Option<(Option<usize>, String, String)> {
    let entry: Value = serde_json::from_str(entry_json).ok()?;
    let request = entry.pointer("/Command/Call/request")?;
    let handler = request
        .pointer("/invocation_target/Service/handler")
        .and_then(Value::as_str)?;
    if handler != RUN_SUBTASK && handler != RUN_BATCH {
        return None;
    }
    let id = request.get("invocation_id")?.as_str()?.to_owned();
    let payload = journal_bytes(request.get("parameter")?)?;
    let label = if handler == RUN_BATCH {
        batch_label(&payload)
    } else {
        payload_label(&payload)
    };
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
    Some((position, id, label))
}

/// `batch of 10: s1 … s10`, from a batch's body (a JSON array of subtasks).
fn batch_label(payload: &[u8]) -> String {
    match serde_json::from_slice::<Vec<Value>>(payload) {
        Ok(subtasks) if !subtasks.is_empty() => {
            let label = |subtask: &Value| payload_label(subtask.to_string().as_bytes());
            let first = label(&subtasks[0]);
            match subtasks.len() {
                1 => format!("batch of 1: {first}"),
                n => format!("batch of {n}: {first} … {}", label(&subtasks[n - 1])),
            }
        }
        _ => payload_label(payload),
    }
}

fn completion_id(entry: &Value, path: &str) -> Option<u64> {
    entry.pointer(path)?.get("completion_id")?.as_u64()
}

/// Bytes journaled as a JSON array of numbers (or base64, in case a server version encodes
/// them so).
pub(crate) fn journal_bytes(value: &Value) -> Option<Vec<u8>> {
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
        // A run of items' scan step: `{"count": N, "etag": …}`.
        Value::Object(scanned) => scanned
            .get("count")
            .and_then(Value::as_u64)
            .map(|n| n as usize),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::model::totals;
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
        // A batch is one line, at its first subtask's position, saying what it holds.
        let batch = call_entry(
            "inv_z",
            "runBatch",
            r#"[{"description":"a"},{"description":"b"},{"description":"c"}]"#,
            json!([{"name": "x-fanout-index", "value": "30"}]),
        );
        assert_eq!(
            parse_call(&batch),
            Some((Some(30), "inv_z".into(), "batch of 3: a … c".into()))
        );
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
}
