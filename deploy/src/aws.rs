//! The AWS side: config from the standard chain and errors that name the cause and the fix.
//!
//! Credentials and region come from the default chain (env, profiles, SSO, …); the standard
//! endpoint overrides (`AWS_ENDPOINT_URL_LAMBDA`, `AWS_ENDPOINT_URL`) are honoured by the SDK
//! itself, which is how the same code runs against AWS, moto and the local stand-in.

use anyhow::{Result, anyhow, bail};
use aws_config::BehaviorVersion;
use aws_sdk_lambda::error::DisplayErrorContext;

/// A Lambda client for `region` (or the chain's region).
pub async fn lambda_client(region: Option<&str>) -> Result<aws_sdk_lambda::Client> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_owned()));
    }
    let config = loader.load().await;
    if config.region().is_none() {
        bail!(
            "no AWS region is configured: set AWS_REGION (e.g. us-east-1), pass --region, or set \
             a region in your AWS profile"
        );
    }
    Ok(aws_sdk_lambda::Client::new(&config))
}

/// Turns an SDK error into a sentence that says what went wrong and what to do.
pub fn explain<E>(action: &str, error: aws_sdk_lambda::error::SdkError<E>) -> anyhow::Error
where
    E: std::error::Error + aws_sdk_lambda::error::ProvideErrorMetadata + Send + Sync + 'static,
{
    let detail = DisplayErrorContext(&error).to_string();
    let lower = detail.to_lowercase();
    if let Some(service) = error.as_service_error() {
        let code = service.code().unwrap_or("Unknown");
        let message = service.message().unwrap_or_default().to_owned();
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
        return anyhow!("{action} failed: {code}: {message}{hint}");
    }
    if lower.contains("credential") {
        return anyhow!(
            "{action} failed: no AWS credentials were found — set AWS_PROFILE (and run \
             `aws sso login` for SSO profiles) or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY \
             ({detail})"
        );
    }
    if lower.contains("dispatch") || lower.contains("connect") || lower.contains("dns") {
        return anyhow!(
            "{action} failed: cannot reach the Lambda API — check the region and your network, \
             or AWS_ENDPOINT_URL_LAMBDA if you point at a local endpoint ({detail})"
        );
    }
    anyhow!("{action} failed: {detail}")
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
