//! `fanout prune`: remove old versions once no invocation needs them.
//!
//! Restate pins every invocation to the deployment that started it, so a version may only go
//! once it is drained: no invocation pinned to it is unfinished (running, suspended, backing
//! off, paused…). The newest version always stays. For each drained older version the Restate
//! deployment is deleted first, then the Lambda version, so Restate never points at code that
//! is gone.

use crate::admin::{AdminClient, sql_string};
use crate::aws::{VersionArn, explain};
use crate::commands::args::RestateArgs;
use crate::exit;
use crate::outcome::{OutputFormat, finish};
use anyhow::Result;
use serde_json::{Value, json};
use std::fmt::Write as _;

/// Remove old versions (Restate deployment, then Lambda version) once nothing is pinned to them.
#[derive(clap::Args)]
pub struct Args {
    /// The Lambda function whose old versions to remove.
    #[arg(long)]
    function_name: String,
    /// Print the plan without changing anything.
    #[arg(long)]
    dry_run: bool,
    /// AWS region (default: the AWS chain's).
    #[arg(long)]
    region: Option<String>,
    /// text: one line per version; json: the plan as one object on stdout for scripts.
    #[arg(long, value_enum, default_value = "text")]
    output: OutputFormat,
    #[command(flatten)]
    restate: RestateArgs,
}

pub async fn run(args: Args) -> Result<u8> {
    let output = args.output;
    Ok(finish(output, prune(args).await))
}

async fn prune(args: Args) -> Result<u8> {
    let admin = args.restate.admin();
    let lambda = crate::aws::lambda_client(args.region.as_deref()).await?;
    let Some(scope) = scope(&lambda, &args.function_name).await? else {
        return Err(exit::not_found(format!(
            "function {} does not exist where the AWS credentials and region point; nothing was \
             removed: check --function-name, --region and the credentials",
            args.function_name
        )));
    };
    let entries = plan(&admin, &args.function_name, Some(&scope)).await?;
    if !args.dry_run {
        apply(&admin, &lambda, &args.function_name, &entries).await?;
    }
    match args.output {
        OutputFormat::Text => print!("{}", describe(&entries, args.dry_run)),
        OutputFormat::Json => println!("{}", to_json(&args.function_name, &entries, args.dry_run)),
    }
    Ok(exit::OK)
}

/// What `fanout prune --output json` prints: per version its deployment, ARN and action
/// (`remove`, done unless a dry run, or `keep` with the reason).
pub fn to_json(function: &str, entries: &[PlanEntry], dry_run: bool) -> Value {
    let plan: Vec<Value> = entries
        .iter()
        .map(|entry| {
            let (action, reason) = match &entry.action {
                Action::Remove => ("remove", None),
                Action::Keep(why) => ("keep", Some(why.as_str())),
            };
            json!({
                "version": entry.version,
                "deploymentId": entry.deployment_id,
                "arn": entry.arn,
                "action": action,
                "reason": reason,
                "done": action == "remove" && !dry_run,
            })
        })
        .collect();
    json!({
        "outcome": if dry_run { "dry-run" } else { "pruned" },
        "function": function,
        "dryRun": dry_run,
        "plan": plan,
    })
}

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

/// The account and region prune works in: those of the Lambda client's function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub region: String,
    pub account: String,
}

/// The scope of `function` as the Lambda client sees it; `None` when the function does not
/// exist there.
pub async fn scope(lambda: &aws_sdk_lambda::Client, function: &str) -> Result<Option<Scope>> {
    match lambda.get_function().function_name(function).send().await {
        Ok(found) => Ok(found
            .configuration
            .and_then(|c| c.function_arn)
            .and_then(|arn| VersionArn::parse(&format!("{arn}:$LATEST")))
            .map(|arn| Scope {
                region: arn.region,
                account: arn.account,
            })),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            Ok(None)
        }
        Err(e) => Err(explain(&format!("looking up function {function}"), e)),
    }
}

/// A Restate deployment backed by a version of the function.
#[derive(Debug, Clone)]
pub struct Backed {
    pub deployment_id: String,
    pub arn: VersionArn,
    pub arn_text: String,
    pub version: u64,
}

/// What prune would do for `function`'s deployments registered with Restate. Only versions in
/// `scope` (the account and region the Lambda client manages) are candidates: a function of
/// the same name elsewhere is never touched by mistake.
pub async fn plan(
    admin: &AdminClient,
    function: &str,
    scope: Option<&Scope>,
) -> Result<Vec<PlanEntry>> {
    let backed: Vec<Backed> = admin
        .deployments()
        .await?
        .iter()
        .filter_map(|deployment| {
            let arn_text = deployment_arn(deployment)?;
            let arn = VersionArn::parse(&arn_text)?;
            let version = arn.version.parse::<u64>().ok()?;
            let deployment_id = deployment.get("id")?.as_str()?.to_owned();
            (arn.function == function).then_some(Backed {
                deployment_id,
                arn,
                arn_text,
                version,
            })
        })
        .collect();
    let mut entries = Vec::new();
    for (backed, decided) in classify(backed, scope) {
        let action = match decided {
            Some(keep) => keep,
            None => {
                let pinned = unfinished_invocations(admin, &backed.deployment_id).await?;
                if pinned.is_empty() {
                    Action::Remove
                } else {
                    let total: u64 = pinned.iter().map(|(_, n)| n).sum();
                    let detail: Vec<String> =
                        pinned.iter().map(|(s, n)| format!("{s}: {n}")).collect();
                    Action::Keep(format!(
                        "{total} unfinished invocation(s) pinned to it ({})",
                        detail.join(", ")
                    ))
                }
            }
        };
        entries.push(PlanEntry {
            deployment_id: backed.deployment_id,
            arn: backed.arn_text,
            version: backed.version,
            action,
        });
    }
    Ok(entries)
}

/// Decides what needs no look at invocations: out of scope and the newest version are kept;
/// `None` means "remove if drained". Sorted by version.
pub fn classify(mut backed: Vec<Backed>, scope: Option<&Scope>) -> Vec<(Backed, Option<Action>)> {
    backed.sort_by_key(|b| (b.arn.region.clone(), b.arn.account.clone(), b.version));
    let in_scope =
        |b: &Backed| scope.is_some_and(|s| s.region == b.arn.region && s.account == b.arn.account);
    let newest = backed
        .iter()
        .filter(|b| in_scope(b))
        .map(|b| b.version)
        .max();
    backed
        .into_iter()
        .map(|b| {
            let decided = match scope {
                None => Some(Action::Keep(
                    "the function does not exist where the AWS credentials and region point; \
                     nothing is removed"
                        .into(),
                )),
                Some(s) if !in_scope(&b) => Some(Action::Keep(format!(
                    "in {}/{}, not {}/{} where the AWS credentials and region point; prune it \
                     with --region and credentials for that account",
                    b.arn.account, b.arn.region, s.account, s.region
                ))),
                Some(_) if Some(b.version) == newest => Some(Action::Keep("newest version".into())),
                Some(_) => None,
            };
            (b, decided)
        })
        .collect()
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
    // Only entries `classify` left to the drain check can be Remove, so all are in scope.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn backed(arn: &str, id: &str) -> Backed {
        let parsed = VersionArn::parse(arn).unwrap();
        Backed {
            deployment_id: id.into(),
            version: parsed.version.parse().unwrap(),
            arn: parsed,
            arn_text: arn.into(),
        }
    }

    #[test]
    fn only_older_versions_in_scope_are_candidates() {
        let here = Scope {
            region: "us-east-1".into(),
            account: "111111111111".into(),
        };
        let decided = classify(
            vec![
                backed(
                    "arn:aws:lambda:us-east-1:111111111111:function:fanout:2",
                    "dp_2",
                ),
                backed(
                    "arn:aws:lambda:us-east-1:111111111111:function:fanout:1",
                    "dp_1",
                ),
                backed(
                    "arn:aws:lambda:eu-west-1:111111111111:function:fanout:7",
                    "dp_eu",
                ),
                backed(
                    "arn:aws:lambda:us-east-1:222222222222:function:fanout:1",
                    "dp_other",
                ),
            ],
            Some(&here),
        );
        let by_id = |id: &str| {
            decided
                .iter()
                .find(|(b, _)| b.deployment_id == id)
                .unwrap()
                .1
                .clone()
        };
        assert_eq!(
            by_id("dp_1"),
            None,
            "an older version here waits for the drain check"
        );
        assert_eq!(by_id("dp_2"), Some(Action::Keep("newest version".into())));
        for other in ["dp_eu", "dp_other"] {
            match by_id(other) {
                Some(Action::Keep(why)) => assert!(why.contains("--region"), "{why}"),
                action => panic!("{other}: {action:?}"),
            }
        }
    }

    #[test]
    fn nothing_is_removed_when_the_function_is_not_where_aws_points() {
        let decided = classify(
            vec![backed(
                "arn:aws:lambda:us-east-1:1:function:fanout:1",
                "dp_1",
            )],
            None,
        );
        assert!(matches!(decided[0].1, Some(Action::Keep(_))));
    }
}
