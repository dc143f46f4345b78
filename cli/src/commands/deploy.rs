//! `fanout deploy`: create or update the Lambda function, wait until it is ready, publish a
//! version and print its ARN — the immutable thing Restate registers.
//!
//! Idempotent: when neither the code (same `CodeSha256`) nor the configuration changed since
//! the newest published version, nothing is published and that version is printed again.

use crate::admin::{DeploymentTarget, RegisterOptions};
use crate::aws::explain;
use crate::commands::args::{RestateArgs, parse_env};
use crate::commands::build::{self, Arch, Artifact};
use crate::commands::register;
use crate::exit;
use crate::identity::{IDENTITY_KEYS_ENV, check_public_keys};
use crate::outcome::{OutputFormat, finish};
use anyhow::{Context, Result, bail};
use aws_sdk_lambda::Client;
use aws_sdk_lambda::client::Waiters;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{
    Architecture, Environment, FunctionCode, FunctionConfiguration, LastUpdateStatus, Runtime,
    State,
};
use std::collections::BTreeMap;
use std::time::Duration;

/// How long to wait for Lambda to finish creating or updating the function.
const READY_TIMEOUT: Duration = Duration::from_secs(300);

pub const DEFAULT_MEMORY_MB: i32 = 256;
pub const DEFAULT_TIMEOUT_S: i32 = 60;

/// Create or update the Lambda function, publish a version, print its ARN (and register it with
/// --register).
#[derive(clap::Args)]
pub struct Args {
    /// The Lambda function to create or update.
    #[arg(long)]
    function_name: String,
    /// Execution role ARN (needed to create the function).
    #[arg(long)]
    role: Option<String>,
    /// Memory in MB (128-10240; default 256 when creating).
    #[arg(long)]
    memory: Option<i32>,
    /// Timeout in seconds (1-900; default 60 when creating).
    #[arg(long)]
    timeout: Option<i32>,
    /// CPU architecture of the function.
    #[arg(long, value_enum, default_value = "arm64")]
    arch: Arch,
    /// Environment variable of the function, KEY=VALUE (repeatable; replaces the function's
    /// environment when given).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// The zip to deploy (default: the one `fanout build --arch ARCH` left for the crate in
    /// the current directory, target/lambda/BIN/bootstrap-ARCH.zip).
    #[arg(long)]
    zip: Option<std::path::PathBuf>,
    /// AWS region (default: the AWS chain's, e.g. AWS_REGION).
    #[arg(long)]
    region: Option<String>,
    /// Also register the published version with Restate.
    #[arg(long)]
    register: bool,
    /// With --register: IAM role Restate assumes to invoke the function.
    #[arg(long)]
    assume_role_arn: Option<String>,
    /// Restate's request identity public keys (publickeyv1_…, comma-separated), set as the
    /// function's FANOUT_IDENTITY_KEYS: it then serves only requests Restate signed.
    #[arg(long, env = "FANOUT_IDENTITY_KEYS", value_name = "KEYS")]
    identity_keys: Option<String>,
    /// What the function serves (its FANOUT_SERVE): all (one function, the default), or one
    /// half of a split layout, coordinator or executor; merged into its environment.
    #[arg(long, value_enum)]
    serve: Option<Serve>,
    /// text: what was done and the version ARN last; json: one object on stdout for scripts.
    #[arg(long, value_enum, default_value = "text")]
    output: OutputFormat,
    #[command(flatten)]
    restate: RestateArgs,
}

/// The handler's `FANOUT_SERVE` values (the contract's [`layout::Serve`]).
#[derive(Clone, Copy, clap::ValueEnum)]
enum Serve {
    All,
    Coordinator,
    Executor,
}

impl Serve {
    fn as_str(self) -> &'static str {
        match self {
            Serve::All => layout::Serve::All,
            Serve::Coordinator => layout::Serve::Coordinator,
            Serve::Executor => layout::Serve::Executor,
        }
        .as_str()
    }
}

pub async fn run(args: Args) -> Result<u8> {
    let output = args.output;
    Ok(finish(output, deploy_and_print(args).await))
}

async fn deploy_and_print(args: Args) -> Result<u8> {
    let zip = match args.zip {
        Some(zip) => zip,
        None => build::default_zip(args.arch)?,
    };
    let code = build::artifact(&zip)?;
    let lambda = crate::aws::lambda_client(args.region.as_deref()).await?;
    let options = DeployOptions {
        function_name: args.function_name.clone(),
        role: args.role,
        memory_mb: args.memory,
        timeout_s: args.timeout,
        arch: args.arch,
        environment: (!args.env.is_empty()).then(|| args.env.into_iter().collect()),
        identity_keys: args.identity_keys,
        serve: args.serve.map(|serve| serve.as_str().to_owned()),
    };
    let deployed = deploy(&lambda, &options, &code).await?;
    if args.output == OutputFormat::Text {
        println!("{}", deployed.describe(&args.function_name));
    }
    eprintln!("{}", deployed.identity_note());
    let mut registered = None;
    if args.register {
        let target = DeploymentTarget::Lambda {
            arn: deployed.version_arn.clone(),
            assume_role_arn: args.assume_role_arn,
        };
        let deployment = register::register(
            &args.restate.admin(),
            target.clone(),
            RegisterOptions::default(),
        )
        .await?;
        if args.output == OutputFormat::Text {
            print!("{}", register::describe(&deployment, false));
        }
        registered = Some(register::to_json(&deployment, &target, false));
    }
    if args.output == OutputFormat::Json {
        let mut report = deployed.to_json(&args.function_name, &code);
        report["registered"] = registered.unwrap_or_default();
        println!("{report}");
    }
    Ok(exit::OK)
}

#[derive(Debug, Clone)]
pub struct DeployOptions {
    pub function_name: String,
    pub role: Option<String>,
    pub memory_mb: Option<i32>,
    pub timeout_s: Option<i32>,
    pub arch: Arch,
    /// The function's environment; `None` leaves an existing function's as it is.
    pub environment: Option<BTreeMap<String, String>>,
    /// Restate's request identity keys for `FANOUT_IDENTITY_KEYS` (`--identity-keys`), added to
    /// the environment given, or to the function's current one when none is given.
    pub identity_keys: Option<String>,
    /// What the function serves (`FANOUT_SERVE`: `all`, `coordinator` or `executor`), merged
    /// into the environment like the identity keys: one half of a split layout is the same
    /// code deployed twice with a different value.
    pub serve: Option<String>,
}

/// The handler's variable for what a deployment serves.
use fanout_contract::layout::{self, SERVE_ENV};

#[derive(Debug, Clone)]
pub struct Deployed {
    pub version_arn: String,
    pub version: String,
    pub created_function: bool,
    pub published: bool,
    /// The function's `FANOUT_IDENTITY_KEYS`, when set: it serves only Restate-signed requests.
    pub identity_keys: Option<String>,
}

impl Deployed {
    pub fn describe(&self, function: &str) -> String {
        let what = match (self.created_function, self.published) {
            (true, _) => format!("created {function} and published version {}", self.version),
            (false, true) => format!("published version {} of {function}", self.version),
            (false, false) => format!(
                "{function} is unchanged since version {}; nothing new was published",
                self.version
            ),
        };
        format!("{what}\n{}", self.version_arn)
    }

    /// What `fanout deploy --output json` prints (`registered` is added with `--register`).
    pub fn to_json(&self, function: &str, code: &Artifact) -> serde_json::Value {
        serde_json::json!({
            "outcome": if self.published { "published" } else { "unchanged" },
            "function": function,
            "version": self.version,
            "versionArn": self.version_arn,
            "createdFunction": self.created_function,
            "published": self.published,
            "identityKeys": self.identity_keys,
            "zip": code.to_json(),
        })
    }

    /// Whether the function verifies Restate's request identity, in a sentence (for stderr).
    pub fn identity_note(&self) -> String {
        match &self.identity_keys {
            Some(keys) => format!(
                "the function serves only requests Restate signs with {} ({IDENTITY_KEYS_ENV})",
                keys.trim()
            ),
            None => format!(
                "note: {IDENTITY_KEYS_ENV} is not set, so the function serves every request \
                 that IAM lets invoke it, not only Restate's; pass --identity-keys with the \
                 publickeyv1_… key your Restate server prints (README: Security)"
            ),
        }
    }
}

pub async fn deploy(client: &Client, options: &DeployOptions, code: &Artifact) -> Result<Deployed> {
    check_options(options)?;
    let zip = std::fs::read(&code.path)
        .with_context(|| format!("cannot read {}", code.path.display()))?;
    let name = options.function_name.as_str();

    let existing = match client.get_function().function_name(name).send().await {
        Ok(found) => found.configuration,
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            None
        }
        Err(e) => return Err(explain(&format!("looking up function {name}"), e)),
    };
    let options = &with_identity_keys(options, existing.as_ref());

    let created_function = existing.is_none();
    match existing {
        None => create(client, options, zip).await?,
        Some(current) => {
            check_healthy(name, &current)?;
            if current.last_update_status() == Some(&LastUpdateStatus::InProgress) {
                wait_updated(client, name).await?;
            }
            if current.code_sha256() != Some(code.code_sha256.as_str()) {
                client
                    .update_function_code()
                    .function_name(name)
                    .zip_file(Blob::new(zip))
                    .architectures(architecture(options.arch))
                    .send()
                    .await
                    .map_err(|e| explain(&format!("updating the code of {name}"), e))?;
                wait_updated(client, name).await?;
            }
            if configuration_differs(options, &current) {
                let mut update = client.update_function_configuration().function_name(name);
                if let Some(memory) = options.memory_mb {
                    update = update.memory_size(memory);
                }
                if let Some(timeout) = options.timeout_s {
                    update = update.timeout(timeout);
                }
                if let Some(role) = &options.role {
                    update = update.role(role);
                }
                if let Some(variables) = &options.environment {
                    update = update.environment(environment(variables));
                }
                update
                    .send()
                    .await
                    .map_err(|e| explain(&format!("updating the configuration of {name}"), e))?;
                wait_updated(client, name).await?;
            }
        }
    }

    let latest = client
        .get_function()
        .function_name(name)
        .send()
        .await
        .map_err(|e| explain(&format!("reading {name}"), e))?
        .configuration
        .with_context(|| format!("Lambda returned no configuration for {name}"))?;
    let identity_keys = variables(&latest).remove(IDENTITY_KEYS_ENV);
    if let Some(version) = newest_version(client, name).await?
        && same_code_and_configuration(&version, &latest)
    {
        return Ok(Deployed {
            version_arn: version.function_arn().unwrap_or_default().to_owned(),
            version: version.version().unwrap_or_default().to_owned(),
            created_function,
            published: false,
            identity_keys,
        });
    }
    let published = client
        .publish_version()
        .function_name(name)
        .code_sha256(&code.code_sha256)
        .send()
        .await
        .map_err(|e| explain(&format!("publishing a version of {name}"), e))?;
    let version = published.version().unwrap_or_default().to_owned();
    client
        .wait_until_published_version_active()
        .function_name(name)
        .qualifier(&version)
        .wait(READY_TIMEOUT)
        .await
        .with_context(|| format!("version {version} of {name} did not become active"))?;
    Ok(Deployed {
        version_arn: published.function_arn().unwrap_or_default().to_owned(),
        version,
        created_function,
        published: true,
        identity_keys,
    })
}

/// `options` with the identity keys and the layout put into the environment: the one given,
/// or else the existing function's (so `--identity-keys` or `--serve` alone changes nothing
/// else).
fn with_identity_keys(
    options: &DeployOptions,
    existing: Option<&FunctionConfiguration>,
) -> DeployOptions {
    let mut options = options.clone();
    let settings: Vec<(&str, String)> = [
        (IDENTITY_KEYS_ENV, options.identity_keys.take()),
        (SERVE_ENV, options.serve.take()),
    ]
    .into_iter()
    .filter_map(|(name, value)| Some((name, value?.trim().to_owned())))
    .collect();
    if !settings.is_empty() {
        let mut environment = options
            .environment
            .take()
            .unwrap_or_else(|| existing.map(variables).unwrap_or_default());
        for (name, value) in settings {
            environment.insert(name.into(), value);
        }
        options.environment = Some(environment);
    }
    options
}

fn check_options(options: &DeployOptions) -> Result<()> {
    if options.function_name.is_empty()
        || options.function_name.len() > 64
        || !options
            .function_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(exit::rejected(format!(
            "--function-name {:?} is not a valid Lambda function name: 1 to 64 letters, digits, \
             '-' or '_'",
            options.function_name
        )));
    }
    if let Some(memory) = options.memory_mb
        && !(128..=10_240).contains(&memory)
    {
        return Err(exit::rejected(format!(
            "--memory {memory} is outside Lambda's range of 128 to 10240 MB"
        )));
    }
    if let Some(timeout) = options.timeout_s
        && !(1..=900).contains(&timeout)
    {
        return Err(exit::rejected(format!(
            "--timeout {timeout} is outside Lambda's range of 1 to 900 seconds"
        )));
    }
    if let Some(variables) = &options.environment {
        if let Some(bad) = variables.keys().find(|k| {
            k.is_empty()
                || !k.starts_with(|c: char| c.is_ascii_alphabetic())
                || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        }) {
            return Err(exit::rejected(format!(
                "--env {bad:?}: a variable name is a letter followed by letters, digits or '_'"
            )));
        }
        if let Some(keys) = variables.get(IDENTITY_KEYS_ENV) {
            check_public_keys(keys).map_err(|e| exit::rejected(format!("--env {e}")))?;
        }
    }
    if let Some(keys) = &options.identity_keys {
        check_public_keys(keys).map_err(|e| exit::rejected(format!("--identity-keys: {e}")))?;
    }
    let serve = options
        .serve
        .as_deref()
        .map(|v| ("--serve", v))
        .or_else(|| {
            let value = options.environment.as_ref()?.get(SERVE_ENV)?;
            Some(("--env FANOUT_SERVE", value.as_str()))
        });
    if let Some((given_as, value)) = serve
        && !matches!(value.trim(), "all" | "coordinator" | "executor")
    {
        return Err(exit::rejected(format!(
            "{given_as} {value:?}: use all, coordinator or executor"
        )));
    }
    if let Some(role) = &options.role
        && !(role.starts_with("arn:") && role.contains(":iam::") && role.contains(":role/"))
    {
        return Err(exit::rejected(format!(
            "--role {role:?} is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)"
        )));
    }
    Ok(())
}

async fn create(client: &Client, options: &DeployOptions, zip: Vec<u8>) -> Result<()> {
    let name = options.function_name.as_str();
    let Some(role) = &options.role else {
        return Err(exit::rejected(format!(
            "function {name} does not exist yet and creating it needs an execution role: pass \
             --role arn:aws:iam::ACCOUNT:role/NAME (template.yaml creates one; any role with \
             AWSLambdaBasicExecutionRole works)"
        )));
    };
    client
        .create_function()
        .function_name(name)
        .runtime(Runtime::Providedal2023)
        .handler("bootstrap")
        .role(role)
        .code(FunctionCode::builder().zip_file(Blob::new(zip)).build())
        .architectures(architecture(options.arch))
        .memory_size(options.memory_mb.unwrap_or(DEFAULT_MEMORY_MB))
        .timeout(options.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S))
        .set_environment(options.environment.as_ref().map(environment))
        .publish(false)
        .send()
        .await
        .map_err(|e| explain(&format!("creating function {name}"), e))?;
    client
        .wait_until_function_active_v2()
        .function_name(name)
        .wait(READY_TIMEOUT)
        .await
        .with_context(|| format!("function {name} did not become active"))?;
    Ok(())
}

async fn wait_updated(client: &Client, name: &str) -> Result<()> {
    client
        .wait_until_function_updated_v2()
        .function_name(name)
        .wait(READY_TIMEOUT)
        .await
        .with_context(|| format!("the update of {name} did not complete"))?;
    Ok(())
}

fn check_healthy(name: &str, current: &FunctionConfiguration) -> Result<()> {
    if current.state() == Some(&State::Failed)
        || current.last_update_status() == Some(&LastUpdateStatus::Failed)
    {
        bail!(
            "function {name} is in a failed state ({}); fix the cause (often the role or the \
             package) in the Lambda console or delete the function, then deploy again",
            current
                .state_reason()
                .or(current.last_update_status_reason())
                .unwrap_or("no reason given")
        );
    }
    Ok(())
}

fn architecture(arch: Arch) -> Architecture {
    match arch {
        Arch::Arm64 => Architecture::Arm64,
        Arch::X86_64 => Architecture::X8664,
    }
}

fn environment(variables: &BTreeMap<String, String>) -> Environment {
    Environment::builder()
        .set_variables(Some(variables.clone().into_iter().collect()))
        .build()
}

fn variables(configuration: &FunctionConfiguration) -> BTreeMap<String, String> {
    configuration
        .environment()
        .and_then(|e| e.variables())
        .map(|v| v.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

fn configuration_differs(options: &DeployOptions, current: &FunctionConfiguration) -> bool {
    options
        .memory_mb
        .is_some_and(|m| current.memory_size() != Some(m))
        || options
            .timeout_s
            .is_some_and(|t| current.timeout() != Some(t))
        || options
            .role
            .as_deref()
            .is_some_and(|r| current.role() != Some(r))
        || options
            .environment
            .as_ref()
            .is_some_and(|env| *env != variables(current))
}

fn same_code_and_configuration(
    version: &FunctionConfiguration,
    latest: &FunctionConfiguration,
) -> bool {
    version.code_sha256() == latest.code_sha256()
        && version.memory_size() == latest.memory_size()
        && version.timeout() == latest.timeout()
        && version.role() == latest.role()
        && version.architectures() == latest.architectures()
        && variables(version) == variables(latest)
}

/// The newest published version (the highest number), if any.
pub async fn newest_version(client: &Client, name: &str) -> Result<Option<FunctionConfiguration>> {
    Ok(published_versions(client, name)
        .await?
        .into_iter()
        .max_by_key(|(number, _)| *number)
        .map(|(_, configuration)| configuration))
}

/// Every published version with its number ($LATEST left out).
pub async fn published_versions(
    client: &Client,
    name: &str,
) -> Result<Vec<(u64, FunctionConfiguration)>> {
    let mut versions = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let page = client
            .list_versions_by_function()
            .function_name(name)
            .set_marker(marker.take())
            .send()
            .await
            .map_err(|e| explain(&format!("listing the versions of {name}"), e))?;
        for configuration in page.versions() {
            if let Some(number) = configuration.version().and_then(|v| v.parse::<u64>().ok()) {
                versions.push((number, configuration.clone()));
            }
        }
        match page.next_marker() {
            Some(next) if !next.is_empty() => marker = Some(next.to_owned()),
            _ => break,
        }
    }
    Ok(versions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> DeployOptions {
        DeployOptions {
            function_name: "fanout".into(),
            role: None,
            memory_mb: None,
            timeout_s: None,
            arch: Arch::Arm64,
            environment: None,
            identity_keys: None,
            serve: None,
        }
    }

    #[test]
    fn impossible_options_are_refused_before_calling_aws() {
        let bad_name = DeployOptions {
            function_name: "fan out".into(),
            ..options()
        };
        assert!(
            check_options(&bad_name)
                .unwrap_err()
                .to_string()
                .contains("not a valid")
        );
        let memory = DeployOptions {
            memory_mb: Some(64),
            ..options()
        };
        assert!(
            check_options(&memory)
                .unwrap_err()
                .to_string()
                .contains("128 to 10240")
        );
        let timeout = DeployOptions {
            timeout_s: Some(901),
            ..options()
        };
        assert!(
            check_options(&timeout)
                .unwrap_err()
                .to_string()
                .contains("1 to 900")
        );
        let role = DeployOptions {
            role: Some("admin".into()),
            ..options()
        };
        assert!(
            check_options(&role)
                .unwrap_err()
                .to_string()
                .contains("IAM role ARN")
        );
        check_options(&options()).unwrap();
    }

    const KEY: &str = "publickeyv1_ChjENKeMvCtRnqG2mrBK1HmPKufgFUc98K8B3ononQvp";

    /// An existing function whose environment is `RUST_LOG=debug`.
    fn debug_function() -> FunctionConfiguration {
        FunctionConfiguration::builder()
            .environment(
                aws_sdk_lambda::types::EnvironmentResponse::builder()
                    .variables("RUST_LOG", "debug")
                    .build(),
            )
            .build()
    }

    #[test]
    fn identity_keys_are_checked_and_merged_into_the_environment() {
        let bad = DeployOptions {
            identity_keys: Some("ChjENKeMvCtRnqG2mrBK1HmPKufgFUc98K8B3ononQvp".into()),
            ..options()
        };
        let message = check_options(&bad).unwrap_err().to_string();
        assert!(
            message.starts_with("--identity-keys: FANOUT_IDENTITY_KEYS: key 1 of 1"),
            "{message}"
        );
        let bad_env = DeployOptions {
            environment: Some([(IDENTITY_KEYS_ENV.to_owned(), "x".to_owned())].into()),
            ..options()
        };
        assert!(check_options(&bad_env).is_err());

        let given = DeployOptions {
            identity_keys: Some(format!(" {KEY} ")),
            ..options()
        };
        check_options(&given).unwrap();
        // No --env: the function's current environment is kept and the keys added.
        let current = debug_function();
        let merged = with_identity_keys(&given, Some(&current));
        let env = merged.environment.unwrap();
        assert_eq!(env.get("RUST_LOG").map(String::as_str), Some("debug"));
        assert_eq!(env.get(IDENTITY_KEYS_ENV).map(String::as_str), Some(KEY));
        // With --env: exactly that environment plus the keys.
        let with_env = DeployOptions {
            environment: Some([("A".to_owned(), "1".to_owned())].into()),
            ..given.clone()
        };
        let env = with_identity_keys(&with_env, Some(&current))
            .environment
            .unwrap();
        assert_eq!(env.len(), 2);
        assert!(env.contains_key("A") && env.contains_key(IDENTITY_KEYS_ENV));
        // No keys: untouched.
        assert!(
            with_identity_keys(&options(), Some(&current))
                .environment
                .is_none()
        );
    }

    #[test]
    fn the_layout_is_checked_and_merged_into_the_environment() {
        let executor = DeployOptions {
            serve: Some("executor".into()),
            ..options()
        };
        check_options(&executor).unwrap();
        let current = debug_function();
        let env = with_identity_keys(&executor, Some(&current))
            .environment
            .unwrap();
        assert_eq!(env.get(SERVE_ENV).map(String::as_str), Some("executor"));
        assert_eq!(env.get("RUST_LOG").map(String::as_str), Some("debug"));
        for bad in [
            DeployOptions {
                serve: Some("both".into()),
                ..options()
            },
            DeployOptions {
                environment: Some([(SERVE_ENV.to_owned(), "both".to_owned())].into()),
                ..options()
            },
        ] {
            let message = check_options(&bad).unwrap_err().to_string();
            assert!(
                message.contains("use all, coordinator or executor"),
                "{message}"
            );
        }
    }
}
