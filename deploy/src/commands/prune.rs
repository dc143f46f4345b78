//! `fanout prune`: remove old versions once no invocation needs them.
//!
//! Restate pins every invocation to the deployment that started it, so a version may only go
//! once it is drained: no invocation pinned to it is unfinished (running, suspended, backing
//! off, paused…). The newest version always stays. For each drained older version the Restate
//! deployment is deleted first, then the Lambda version, so Restate never points at code that
//! is gone.

use crate::admin::{AdminClient, sql_string};
use crate::aws::{VersionArn, explain};
use anyhow::Result;
use serde_json::Value;
use std::fmt::Write as _;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Keep(String),
    Remove,
}

#[derive(Debug, Clone)]
pub struct PlanEntry {
    pub deployment_id: String,
    pub arn: String,
    pub version: u64,
    pub action: Action,
}

/// What prune would do for `function`'s deployments registered with Restate.
pub async fn plan(admin: &AdminClient, function: &str) -> Result<Vec<PlanEntry>> {
    let mut versions: Vec<(u64, String, String)> = admin
        .deployments()
        .await?
        .iter()
        .filter_map(|deployment| {
            let arn = deployment_arn(deployment)?;
            let parsed = VersionArn::parse(&arn)?;
            let version = parsed.version.parse::<u64>().ok()?;
            let id = deployment.get("id")?.as_str()?.to_owned();
            (parsed.function == function).then_some((version, id, arn))
        })
        .collect();
    versions.sort();
    let newest = versions.last().map(|(v, _, _)| *v);

    let mut entries = Vec::new();
    for (version, deployment_id, arn) in versions {
        let action = if Some(version) == newest {
            Action::Keep("newest version".into())
        } else {
            let pinned = unfinished_invocations(admin, &deployment_id).await?;
            if pinned.is_empty() {
                Action::Remove
            } else {
                let total: u64 = pinned.iter().map(|(_, n)| n).sum();
                let detail: Vec<String> = pinned.iter().map(|(s, n)| format!("{s}: {n}")).collect();
                Action::Keep(format!(
                    "{total} unfinished invocation(s) pinned to it ({})",
                    detail.join(", ")
                ))
            }
        };
        entries.push(PlanEntry {
            deployment_id,
            arn,
            version,
            action,
        });
    }
    Ok(entries)
}

/// The Lambda ARN of a deployment as the admin API lists it.
fn deployment_arn(deployment: &Value) -> Option<String> {
    deployment
        .get("arn")
        .or_else(|| deployment.get("endpoint").and_then(|e| e.get("arn")))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// Unfinished invocations pinned to a deployment, counted by status.
async fn unfinished_invocations(
    admin: &AdminClient,
    deployment_id: &str,
) -> Result<Vec<(String, u64)>> {
    let rows = admin
        .query(&format!(
            "SELECT status, count(*) AS n FROM sys_invocation WHERE pinned_deployment_id = {} \
             AND status <> 'completed' GROUP BY status ORDER BY status",
            sql_string(deployment_id)
        ))
        .await?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            Some((
                row.get("status")?.as_str()?.to_owned(),
                row.get("n")?.as_u64()?,
            ))
        })
        .collect())
}

pub fn describe(entries: &[PlanEntry], dry_run: bool) -> String {
    let mut out = String::new();
    if entries.is_empty() {
        out.push_str("no Restate deployment is backed by this function\n");
    }
    for entry in entries {
        let verb = match (&entry.action, dry_run) {
            (Action::Remove, true) => "would remove".to_owned(),
            (Action::Remove, false) => "removed".to_owned(),
            (Action::Keep(why), _) => format!("keep ({why})"),
        };
        let _ = writeln!(
            out,
            "version {:>4}  {}  {}  {verb}",
            entry.version, entry.deployment_id, entry.arn
        );
    }
    out
}

/// Carries out the plan: for each drained old version, the Restate deployment, then the
/// Lambda version.
pub async fn apply(
    admin: &AdminClient,
    lambda: &aws_sdk_lambda::Client,
    function: &str,
    entries: &[PlanEntry],
) -> Result<()> {
    for entry in entries.iter().filter(|e| e.action == Action::Remove) {
        admin.delete_deployment(&entry.deployment_id, true).await?;
        let deleted = lambda
            .delete_function()
            .function_name(function)
            .qualifier(entry.version.to_string())
            .send()
            .await;
        match deleted {
            Ok(_) => {}
            // Already gone: what prune wanted.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) => {}
            Err(e) => {
                return Err(explain(
                    &format!("deleting version {} of {function}", entry.version),
                    e,
                ));
            }
        }
    }
    Ok(())
}
