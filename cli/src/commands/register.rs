//! `fanout register`: tell Restate about a published Lambda version (or an HTTP endpoint).

use crate::admin::{AdminClient, Deployment, DeploymentTarget, RegisterOptions};
use crate::commands::args::RestateArgs;
use crate::exit;
use crate::outcome::{OutputFormat, finish};
use anyhow::Result;
use serde_json::{Value, json};

/// Register a published Lambda version (or an HTTP endpoint) with Restate.
#[derive(clap::Args)]
pub struct Args {
    /// The published Lambda version ARN (arn:aws:lambda:REGION:ACCOUNT:function:NAME:VERSION).
    #[arg(long, required_unless_present = "uri", conflicts_with = "uri")]
    arn: Option<String>,
    /// An HTTP endpoint instead of Lambda (e.g. http://localhost:9080).
    #[arg(long)]
    uri: Option<String>,
    /// IAM role Restate assumes to invoke the function.
    #[arg(long)]
    assume_role_arn: Option<String>,
    /// Replace a deployment with the same endpoint.
    #[arg(long, conflicts_with = "breaking")]
    force: bool,
    /// Accept breaking changes to existing services.
    #[arg(long)]
    breaking: bool,
    /// Show what would be registered without registering.
    #[arg(long)]
    dry_run: bool,
    /// text: what was registered; json: one object on stdout for scripts.
    #[arg(long, value_enum, default_value = "text")]
    output: OutputFormat,
    #[command(flatten)]
    restate: RestateArgs,
}

pub async fn run(args: Args) -> Result<u8> {
    let output = args.output;
    Ok(finish(output, register_and_print(args).await))
}

async fn register_and_print(args: Args) -> Result<u8> {
    let target = match (args.arn, args.uri) {
        (Some(arn), _) => DeploymentTarget::Lambda {
            arn,
            assume_role_arn: args.assume_role_arn,
        },
        (None, Some(uri)) => DeploymentTarget::Http { uri },
        (None, None) => {
            return Err(exit::rejected(
                "give the deployment to register: --arn ARN or --uri URL",
            ));
        }
    };
    let options = RegisterOptions {
        force: args.force,
        breaking: args.breaking,
        dry_run: args.dry_run,
    };
    let deployment = register(&args.restate.admin(), target.clone(), options).await?;
    match args.output {
        OutputFormat::Text => print!("{}", describe(&deployment, args.dry_run)),
        OutputFormat::Json => println!("{}", to_json(&deployment, &target, args.dry_run)),
    }
    Ok(exit::OK)
}

/// What `fanout register --output json` prints: the deployment's id, what it points at, and
/// the services and handlers Restate discovered there.
pub fn to_json(deployment: &Deployment, target: &DeploymentTarget, dry_run: bool) -> Value {
    let services: Vec<Value> = deployment
        .services
        .iter()
        .map(|service| {
            let handlers: Vec<&str> = service.handlers.iter().map(|h| h.name.as_str()).collect();
            json!({ "name": service.name, "handlers": handlers })
        })
        .collect();
    json!({
        "outcome": if dry_run { "dry-run" } else { "registered" },
        "deploymentId": deployment.id,
        "endpoint": target,
        "services": services,
        "dryRun": dry_run,
    })
}

/// Checks that `arn` names a published Lambda version or alias.
///
/// Restate pins every invocation to the deployment that started it, so in-flight work
/// finishes on the code that began it. That only holds if the ARN is immutable: `$LATEST` or an
/// unqualified ARN would change under running invocations.
pub fn check_version_arn(arn: &str) -> Result<()> {
    let parts: Vec<&str> = arn.split(':').collect();
    let shape = "arn:PARTITION:lambda:REGION:ACCOUNT:function:NAME:VERSION";
    if parts.len() < 7 || parts[0] != "arn" || parts[2] != "lambda" || parts[5] != "function" {
        return Err(exit::rejected(format!(
            "{arn:?} is not a Lambda function ARN; expected {shape}"
        )));
    }
    if parts.len() == 7 {
        return Err(exit::rejected(format!(
            "{arn:?} has no version: register a published version ({shape}, e.g. …:function:fanout:3). \
             Restate pins each invocation to the deployment that started it, so in-flight work must \
             stay on code that cannot change; `fanout deploy` publishes a version and prints its ARN"
        )));
    }
    if parts.len() > 8 {
        return Err(exit::rejected(format!(
            "{arn:?} has too many parts; expected {shape}"
        )));
    }
    if parts[7] == "$LATEST" {
        return Err(exit::rejected(format!(
            "{arn:?} names $LATEST, which changes with every code update: register a published \
             version instead (`fanout deploy` publishes one and prints its ARN). Restate pins each \
             invocation to the deployment that started it, so in-flight work must stay on code \
             that cannot change"
        )));
    }
    if parts[1].is_empty() || parts[3].is_empty() || parts[4].is_empty() || parts[6].is_empty() {
        return Err(exit::rejected(format!(
            "{arn:?} has an empty partition, region, account or name; expected {shape}"
        )));
    }
    Ok(())
}

pub async fn register(
    admin: &AdminClient,
    target: DeploymentTarget,
    options: RegisterOptions,
) -> Result<Deployment> {
    match &target {
        DeploymentTarget::Lambda { arn, .. } => check_version_arn(arn)?,
        DeploymentTarget::Http { uri } => {
            if !(uri.starts_with("http://") || uri.starts_with("https://")) {
                return Err(exit::rejected(format!(
                    "--uri {uri:?} is not an HTTP endpoint: give http://HOST:PORT or \
                     https://HOST:PORT"
                )));
            }
        }
    }
    admin.register(&target, &options).await
}

/// What `fanout register` prints.
pub fn describe(deployment: &Deployment, dry_run: bool) -> String {
    let mut out = if dry_run {
        format!(
            "dry run: Restate would register deployment {}\n",
            deployment.id
        )
    } else {
        format!("registered deployment {}\n", deployment.id)
    };
    for service in &deployment.services {
        let handlers: Vec<&str> = service.handlers.iter().map(|h| h.name.as_str()).collect();
        out.push_str(&format!("  {}: {}\n", service.name, handlers.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::check_version_arn;

    #[test]
    fn accepts_versions_and_aliases() {
        check_version_arn("arn:aws:lambda:us-east-1:123456789012:function:fanout:3").unwrap();
        check_version_arn("arn:aws:lambda:eu-west-1:123456789012:function:fanout:live").unwrap();
    }

    #[test]
    fn refuses_latest_and_unqualified_with_the_reason() {
        let latest = check_version_arn("arn:aws:lambda:us-east-1:1:function:fanout:$LATEST")
            .unwrap_err()
            .to_string();
        assert!(
            latest.contains("$LATEST") && latest.contains("published"),
            "{latest}"
        );
        let bare = check_version_arn("arn:aws:lambda:us-east-1:1:function:fanout")
            .unwrap_err()
            .to_string();
        assert!(
            bare.contains("has no version") && bare.contains("in-flight"),
            "{bare}"
        );
    }

    #[test]
    fn refuses_what_is_not_a_lambda_arn() {
        for arn in [
            "fanout",
            "arn:aws:s3:::bucket",
            "arn:aws:lambda:us-east-1:1:layer:x:1",
        ] {
            assert!(check_version_arn(arn).is_err(), "{arn}");
        }
    }
}
