//! The control plane's requests: their bodies as Lambda's REST-JSON has them (PascalCase), and
//! the checks each value passes before a handler acts on it, refused with Lambda's own error
//! types and wording where the stand-in knows them.

use crate::api::{ApiError, ApiResult};
use crate::versions::Version;
use axum::body::{Body, to_bytes};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::time::Duration;

/// Lambda's limit on a CreateFunction or UpdateFunctionCode request (50 MB of zip, base64).
const REQUEST_LIMIT: usize = 69_905_067;
const RUNTIMES: [&str; 2] = ["provided.al2023", "provided.al2"];
/// Variables Lambda sets itself and refuses in `Environment.Variables`.
const RESERVED_VARIABLES: [&str; 18] = [
    "_HANDLER",
    "_X_AMZN_TRACE_ID",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_INITIALIZATION_TYPE",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_LAMBDA_RUNTIME_API",
    "LAMBDA_TASK_ROOT",
    "LAMBDA_RUNTIME_DIR",
];

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(super) struct CreateFunctionRequest {
    pub function_name: Option<String>,
    pub runtime: Option<String>,
    pub role: Option<String>,
    pub handler: Option<String>,
    pub code: Option<CodeInput>,
    pub description: Option<String>,
    pub timeout: Option<i64>,
    pub memory_size: Option<i64>,
    pub publish: Option<bool>,
    pub environment: Option<EnvironmentInput>,
    pub architectures: Option<Vec<String>>,
    pub package_type: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(super) struct CodeInput {
    pub zip_file: Option<String>,
    #[serde(rename = "S3Bucket")]
    pub s3_bucket: Option<String>,
    pub image_uri: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(super) struct EnvironmentInput {
    pub variables: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(super) struct UpdateCodeRequest {
    pub zip_file: Option<String>,
    #[serde(rename = "S3Bucket")]
    pub s3_bucket: Option<String>,
    pub image_uri: Option<String>,
    pub publish: Option<bool>,
    pub architectures: Option<Vec<String>>,
    pub dry_run: Option<bool>,
    pub revision_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(super) struct UpdateConfigurationRequest {
    pub role: Option<String>,
    pub handler: Option<String>,
    pub description: Option<String>,
    pub timeout: Option<i64>,
    pub memory_size: Option<i64>,
    pub environment: Option<EnvironmentInput>,
    pub runtime: Option<String>,
    pub revision_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(super) struct PublishVersionRequest {
    pub code_sha256: Option<String>,
    pub description: Option<String>,
    pub revision_id: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct QualifierQuery {
    #[serde(rename = "Qualifier")]
    pub qualifier: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct PageQuery {
    #[serde(rename = "Marker")]
    pub marker: Option<String>,
    #[serde(rename = "MaxItems")]
    pub max_items: Option<usize>,
}

pub(super) async fn read_json<T: DeserializeOwned + Default>(
    body: Body,
    operation: &str,
) -> ApiResult<T> {
    let bytes = to_bytes(body, REQUEST_LIMIT)
        .await
        .map_err(|_| ApiError::too_large(REQUEST_LIMIT, operation))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_content(format!("Could not parse request body into json: {e}")))
}

/// `arn:PARTITION:iam::ACCOUNT:role/[PATH/]NAME`, as Lambda's pattern for `Role` has it.
pub(super) fn role(raw: Option<&str>) -> ApiResult<String> {
    let raw = raw.ok_or_else(|| {
        ApiError::invalid("Role is required: the ARN of the function's execution role, arn:aws:iam::ACCOUNT:role/NAME")
    })?;
    let parts: Vec<&str> = raw.splitn(6, ':').collect();
    let ok = match parts.as_slice() {
        ["arn", partition, "iam", "", account, resource] => {
            partition.starts_with("aws")
                && account.len() == 12
                && account.bytes().all(|b| b.is_ascii_digit())
                && resource.strip_prefix("role/").is_some_and(|name| {
                    !name.is_empty()
                        && !name.ends_with('/')
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@-_/".contains(&b))
                })
        }
        _ => false,
    };
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(ApiError::invalid(format!(
            "The role ARN {raw:?} is not valid: it must look like arn:aws:iam::123456789012:role/NAME"
        )))
    }
}

pub(super) fn runtime(raw: &str) -> ApiResult<String> {
    if RUNTIMES.contains(&raw) {
        Ok(raw.to_owned())
    } else {
        Err(ApiError::invalid(format!(
            "The runtime parameter of {raw} is not supported by the Lambda stand-in: it runs OS-only runtimes ({}), whose bootstrap it starts natively",
            RUNTIMES.join(", ")
        )))
    }
}

pub(super) fn handler(raw: &str) -> ApiResult<String> {
    if raw.is_empty() || raw.len() > 128 || raw.chars().any(char::is_whitespace) {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value '{raw}' at 'handler' failed to satisfy constraint: Member must satisfy regular expression pattern: [^\\s]+"
        )));
    }
    Ok(raw.to_owned())
}

fn in_range(value: i64, member: &str, min: i64, max: i64) -> ApiResult<u32> {
    if value < min {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value '{value}' at '{member}' failed to satisfy constraint: Member must have value greater than or equal to {min}"
        )));
    }
    if value > max {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value '{value}' at '{member}' failed to satisfy constraint: Member must have value less than or equal to {max}"
        )));
    }
    Ok(value as u32)
}

pub(super) fn memory(value: i64) -> ApiResult<u32> {
    in_range(value, "memorySize", 128, 10_240)
}

pub(super) fn timeout(value: i64) -> ApiResult<Duration> {
    in_range(value, "timeout", 1, 900).map(|s| Duration::from_secs(s.into()))
}

pub(super) fn architectures(raw: &[String]) -> ApiResult<Vec<String>> {
    match raw {
        [one] if one == "x86_64" || one == "arm64" => Ok(raw.to_vec()),
        _ => Err(ApiError::validation(format!(
            "1 validation error detected: Value '{raw:?}' at 'architectures' failed to satisfy constraint: Member must have length 1, and each member must be x86_64 or arm64"
        ))),
    }
}

pub(super) fn description(raw: String) -> ApiResult<String> {
    if raw.chars().count() > 256 {
        return Err(ApiError::validation(
            "1 validation error detected: Value at 'description' failed to satisfy constraint: Member must have length less than or equal to 256",
        ));
    }
    Ok(raw)
}

pub(super) fn environment(input: EnvironmentInput) -> ApiResult<Vec<(String, String)>> {
    let variables = input.variables.unwrap_or_default();
    let reserved: Vec<&str> = variables
        .keys()
        .map(String::as_str)
        .filter(|k| RESERVED_VARIABLES.contains(k))
        .collect();
    if !reserved.is_empty() {
        return Err(ApiError::invalid(format!(
            "Lambda was unable to configure your environment variables because the environment variables you have provided contains reserved keys that are currently not supported for modification. Reserved keys used in this request: {}",
            reserved.join(",")
        )));
    }
    if let Some(bad) = variables.keys().find(|k| !valid_variable_name(k)) {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value '{bad}' at 'environment.variables' failed to satisfy constraint: Map keys must satisfy constraint: [Member must satisfy regular expression pattern: [a-zA-Z]([a-zA-Z0-9_])+]"
        )));
    }
    Ok(variables.into_iter().collect())
}

fn valid_variable_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() >= 2
        && bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `Code.ZipFile` is the one code source the stand-in has.
pub(super) fn zip_only(zip: Option<String>, s3: bool, image: bool) -> ApiResult<String> {
    if s3 || image {
        return Err(ApiError::invalid(
            "The Lambda stand-in takes code only as ZipFile (a base64 .zip); S3 and container image code are not supported",
        ));
    }
    zip.ok_or_else(|| {
        ApiError::invalid("Code.ZipFile is required: the deployment package as a base64 .zip")
    })
}

pub(super) fn revision_matches(given: Option<&str>, current: &Version) -> ApiResult<()> {
    match given {
        Some(given) if given != current.config.revision_id => Err(ApiError::precondition(
            "The Revision Id provided does not match the latest Revision Id. Call the GetFunction/GetAlias API to retrieve the latest Revision Id",
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn role_arns() {
        assert!(role(Some("arn:aws:iam::123456789012:role/fanout")).is_ok());
        assert!(role(Some("arn:aws:iam::123456789012:role/service-role/fanout-x")).is_ok());
        assert!(role(Some("arn:aws-cn:iam::123456789012:role/a.b@c")).is_ok());
        for bad in [
            "",
            "fanout",
            "arn:aws:iam::12345:role/fanout",
            "arn:aws:iam::123456789012:user/fanout",
            "arn:aws:iam::123456789012:role/",
            "arn:aws:s3::123456789012:role/fanout",
            "arn:aws:iam:us-east-1:123456789012:role/fanout",
        ] {
            let e = role(Some(bad)).unwrap_err();
            assert_eq!(e.kind, "InvalidParameterValueException", "{bad}");
        }
        assert_eq!(role(None).unwrap_err().status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn variable_names_and_reserved_keys() {
        let env = |k: &str| EnvironmentInput {
            variables: Some(BTreeMap::from([(k.to_owned(), "v".to_owned())])),
        };
        assert!(environment(env("FANOUT_MAX_SUBTASK_MS")).is_ok());
        assert_eq!(
            environment(env("AWS_REGION")).unwrap_err().kind,
            "InvalidParameterValueException"
        );
        assert_eq!(
            environment(env("1A")).unwrap_err().kind,
            "ValidationException"
        );
    }
}
