//! The AWS side: config from the standard chain and errors that name the cause and the fix.
//!
//! Credentials and region come from the default chain (env, profiles, SSO, …); the standard
//! endpoint overrides (`AWS_ENDPOINT_URL_LAMBDA`, `AWS_ENDPOINT_URL`) are honoured by the SDK
//! itself, which is how the same code runs against AWS, moto and the local stand-in.

use anyhow::{Result, anyhow};
use aws_config::BehaviorVersion;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_lambda::error::SdkError;

/// A Lambda client for `region` (or the chain's region).
pub async fn lambda_client(region: Option<&str>) -> Result<aws_sdk_lambda::Client> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_owned()));
    }
    let config = loader.load().await;
    if config.region().is_none() {
        return Err(crate::exit::rejected(
            "no AWS region is configured: set AWS_REGION (e.g. us-east-1), pass --region, or set \
             a region in your AWS profile",
        ));
    }
    Ok(aws_sdk_lambda::Client::new(&config))
}

/// Turns an SDK error into a sentence that says what went wrong and what to do. It matches on
/// the SDK's error variants and types, never on their text, and shows only short `Display`
/// texts: an SDK error's debug form runs to a kilobyte of connector internals.
pub fn explain<E>(action: &str, error: SdkError<E>) -> anyhow::Error
where
    E: std::error::Error + aws_sdk_lambda::error::ProvideErrorMetadata + Send + Sync + 'static,
{
    if let Some(service) = error.as_service_error() {
        let code = service.code().unwrap_or("Unknown");
        let message = service.message().unwrap_or_default().to_owned();
        let message_of = |hint: &str| format!("{action} failed: {code}: {message}{hint}");
        let hint = match code {
            "AccessDeniedException"
            | "UnrecognizedClientException"
            | "InvalidSignatureException" => {
                " — check that your credentials are valid and allowed to manage Lambda functions"
            }
            "InvalidParameterValueException" if message.to_lowercase().contains("role") => {
                " — pass --role with the ARN of an execution role Lambda can assume \
                 (arn:aws:iam::ACCOUNT:role/NAME; template.yaml creates one)"
            }
            "ResourceNotFoundException" => " — check --function-name and the region",
            "TooManyRequestsException" => " — Lambda is throttling; retry in a moment",
            _ => "",
        };
        // What was asked was refused (credentials, a value Lambda cannot take) or names
        // nothing: exit 4 or 6; anything else Lambda said is exit 1.
        return match code {
            "AccessDeniedException"
            | "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "InvalidParameterValueException"
            | "ValidationException" => crate::exit::rejected(message_of(hint)),
            "ResourceNotFoundException" => crate::exit::not_found(message_of(hint)),
            _ => anyhow!(message_of(hint)),
        };
    }
    if let Some(credentials) = credentials_error(&error) {
        let profile = std::env::var("AWS_PROFILE").ok();
        let profile_hint = match profile.as_deref().filter(|p| !profile_exists(p)) {
            Some(name) => format!(
                "; AWS_PROFILE is {name:?}, which is not a profile in ~/.aws/config or \
                 ~/.aws/credentials"
            ),
            None => String::new(),
        };
        return crate::exit::rejected(format!(
            "{action} failed: no AWS credentials were found ({}){profile_hint} — set AWS_PROFILE \
             to a profile you have (and run `aws sso login` for SSO profiles) or \
             AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
            credentials_reason(credentials)
        ));
    }
    let unreachable = || {
        crate::exit::unreachable(format!(
            "{action} failed: cannot reach the Lambda API ({}) — check the region and your \
             network, or AWS_ENDPOINT_URL_LAMBDA if you point at a local endpoint",
            short(&error)
        ))
    };
    match &error {
        SdkError::DispatchFailure(failure) if failure.is_io() || failure.is_timeout() => {
            unreachable()
        }
        SdkError::TimeoutError(_) => unreachable(),
        SdkError::ConstructionFailure(_) => {
            anyhow!(
                "{action} failed: the request could not be built ({})",
                short(&error)
            )
        }
        SdkError::ResponseError(_) => anyhow!(
            "{action} failed: the Lambda API answered something unexpected ({}); check \
             AWS_ENDPOINT_URL_LAMBDA if you point at a local endpoint",
            short(&error)
        ),
        _ => anyhow!("{action} failed: {}", short(&error)),
    }
}

/// The credentials provider's error, if that is what stopped the request.
fn credentials_error<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a CredentialsError> {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(credentials) = current.downcast_ref::<CredentialsError>() {
            return Some(credentials);
        }
        cause = current.source();
    }
    None
}

fn credentials_reason(error: &CredentialsError) -> &'static str {
    match error {
        CredentialsError::CredentialsNotLoaded(_) => "no provider in the chain had any",
        CredentialsError::ProviderTimedOut(_) => "the credentials provider timed out",
        CredentialsError::InvalidConfiguration(_) => "the AWS configuration is invalid",
        CredentialsError::ProviderError(_) => "every provider in the chain failed",
        _ => "the credentials provider failed",
    }
}

/// Whether `name` is a profile in the shared config or credentials file.
fn profile_exists(name: &str) -> bool {
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let file = |env: &str, default: &str| {
        std::env::var_os(env)
            .map(std::path::PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(default)))
    };
    let headers = [
        (
            file("AWS_CONFIG_FILE", ".aws/config"),
            format!("[profile {name}]"),
        ),
        (
            file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials"),
            format!("[{name}]"),
        ),
    ];
    let default_in_config = (name == "default").then(|| "[default]".to_owned());
    headers.into_iter().any(|(path, header)| {
        let text = path
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        text.lines().any(|line| {
            let line = line.trim();
            line == header || default_in_config.as_deref() == Some(line)
        })
    })
}

/// The error's own text and its first cause's, without the debug dump of what is below.
fn short(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    if let Some(cause) = error.source() {
        text = format!("{text}: {cause}");
    }
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// The parts of a Lambda version ARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionArn {
    pub region: String,
    pub account: String,
    pub function: String,
    pub version: String,
}

impl VersionArn {
    /// Parses `arn:PARTITION:lambda:REGION:ACCOUNT:function:NAME:VERSION`.
    pub fn parse(arn: &str) -> Option<Self> {
        let parts: Vec<&str> = arn.split(':').collect();
        (parts.len() == 8 && parts[0] == "arn" && parts[2] == "lambda" && parts[5] == "function")
            .then(|| Self {
                region: parts[3].to_owned(),
                account: parts[4].to_owned(),
                function: parts[6].to_owned(),
                version: parts[7].to_owned(),
            })
    }
}
