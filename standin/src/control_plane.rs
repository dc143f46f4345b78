//! The part of Lambda's control-plane API a deploy tool uses, with Lambda's REST-JSON wire
//! shapes (PascalCase bodies, `x-amzn-ErrorType`, Lambda's status codes), on the Invoke API's
//! port, so aws-sdk-lambda (with `AWS_ENDPOINT_URL_LAMBDA`) deploys to the stand-in as to AWS:
//!
//! | operation | route |
//! |---|---|
//! | CreateFunction | `POST /2015-03-31/functions` (201) |
//! | ListFunctions | `GET /2015-03-31/functions` |
//! | GetFunction | `GET /2015-03-31/functions/{name}[?Qualifier=]` |
//! | DeleteFunction | `DELETE /2015-03-31/functions/{name}[?Qualifier=N]` (204) |
//! | GetFunctionConfiguration | `GET /2015-03-31/functions/{name}/configuration[?Qualifier=]` |
//! | UpdateFunctionConfiguration | `PUT /2015-03-31/functions/{name}/configuration` |
//! | UpdateFunctionCode | `PUT /2015-03-31/functions/{name}/code` |
//! | PublishVersion | `POST /2015-03-31/functions/{name}/versions` (201) |
//! | ListVersionsByFunction | `GET /2015-03-31/functions/{name}/versions` |
//!
//! Code comes only as `Code.ZipFile`. Each upload is extracted into a directory of its own
//! under the stand-in's code root; it must hold a `bootstrap` file at its root, which is made
//! executable (0755). `$LATEST` runs the latest upload with the latest configuration; a
//! published version keeps the code and configuration it was published with, and
//! `arn:...:function:NAME:N` runs it. Updates are applied at once: `State` is always
//! `Active` and `LastUpdateStatus` `Successful`, so the SDK's waiters return on their first poll.
//!
//! Where the stand-in is stricter or simpler than Lambda:
//! - Runtimes: `provided.al2023` and `provided.al2` only (the bootstrap runs natively; an
//!   `arm64` binary on an x86-64 host fails at invoke with `Runtime.InvalidEntrypoint`).
//! - A zip without a `bootstrap` at its root is refused at upload (400), where Lambda accepts it
//!   and fails every invoke. A malformed or missing Role is `InvalidParameterValueException`
//!   (Lambda answers a pattern mismatch with `ValidationException`); roles are not assumed.
//! - PublishVersion with a `CodeSha256` other than `$LATEST`'s is 412 `PreconditionFailedException`.
//! - Deleting a version (or the function) kills its idle instances; invocations already running
//!   on it finish, and their instances are discarded afterwards.
//! - Functions given at start ([`super::FunctionSpec`]) are listed and readable; they have no
//!   `$LATEST` until code is uploaded to them (until then an unqualified GetFunction reports the
//!   highest version, which is what an unqualified invoke runs), and UpdateFunctionConfiguration
//!   and PublishVersion answer 409 on them.
//! - Not modelled: aliases, layers, tags, S3 or image code, VPC, concurrency settings, signing,
//!   function URLs; fields for them in a request are ignored.

use super::Shared;
use super::instances::{Code, Config, Function, Version, Versions, civil_from_days};
use super::invoke_api::{lambda_error, with_request_id};
use super::names::{LATEST, NameError, Target, parse_function_name, version_order};
use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

/// Lambda's limit on a CreateFunction or UpdateFunctionCode request (50 MB of zip, base64).
const REQUEST_LIMIT: usize = 69_905_067;
/// Lambda's limit on a deployment package's unzipped size.
const UNZIPPED_LIMIT: u64 = 262_144_000;
/// Lambda's default regional concurrency, for functions created through the API.
const CONCURRENCY_LIMIT: usize = 1000;
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

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route(
            "/2015-03-31/functions",
            post(create_function).get(list_functions),
        )
        .route(
            "/2015-03-31/functions/{function}",
            get(get_function).delete(delete_function),
        )
        .route(
            "/2015-03-31/functions/{function}/configuration",
            get(get_function_configuration).put(update_function_configuration),
        )
        .route(
            "/2015-03-31/functions/{function}/code",
            put(update_function_code),
        )
        .route(
            "/2015-03-31/functions/{function}/versions",
            get(list_versions_by_function).post(publish_version),
        )
}

/// `x86_64` or `arm64`: what the stand-in's host runs natively.
pub(crate) fn host_architecture() -> &'static str {
    if cfg!(target_arch = "aarch64") {
        "arm64"
    } else {
        "x86_64"
    }
}

/// Lambda's `LastModified` format: `2026-11-28T09:00:00.000+0000`.
pub(crate) fn timestamp(at: SystemTime) -> String {
    let ms = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let (days, ms_of_day) = ((ms / 86_400_000) as i64, (ms % 86_400_000) as u64);
    let (y, m, d) = civil_from_days(days);
    let (h, min, s, frac) = (
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000,
    );
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{frac:03}+0000")
}

// ---------------------------------------------------------------------------------------------
// Errors

/// A Lambda error: status, `x-amzn-ErrorType`, and `{"Type":"User","message":...}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValueException",
            message,
        )
    }

    fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "ValidationException", message)
    }

    fn not_found(arn: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            format!("Function not found: {arn}"),
        )
    }

    fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "ResourceConflictException", message)
    }

    fn precondition(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailedException",
            message,
        )
    }

    fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ServiceException",
            message,
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"Type": "User", "message": self.message});
        lambda_error(
            self.status,
            self.kind,
            body,
            &uuid::Uuid::new_v4().to_string(),
        )
    }
}

fn answer(status: StatusCode, body: Value) -> Response {
    with_request_id(
        (status, axum::Json(body)).into_response(),
        &uuid::Uuid::new_v4().to_string(),
    )
}

fn respond(result: ApiResult<Response>) -> Response {
    result.unwrap_or_else(IntoResponse::into_response)
}

// ---------------------------------------------------------------------------------------------
// Requests

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct CreateFunctionRequest {
    function_name: Option<String>,
    runtime: Option<String>,
    role: Option<String>,
    handler: Option<String>,
    code: Option<CodeInput>,
    description: Option<String>,
    timeout: Option<i64>,
    memory_size: Option<i64>,
    publish: Option<bool>,
    environment: Option<EnvironmentInput>,
    architectures: Option<Vec<String>>,
    package_type: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct CodeInput {
    zip_file: Option<String>,
    #[serde(rename = "S3Bucket")]
    s3_bucket: Option<String>,
    image_uri: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct EnvironmentInput {
    variables: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct UpdateCodeRequest {
    zip_file: Option<String>,
    #[serde(rename = "S3Bucket")]
    s3_bucket: Option<String>,
    image_uri: Option<String>,
    publish: Option<bool>,
    architectures: Option<Vec<String>>,
    dry_run: Option<bool>,
    revision_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct UpdateConfigurationRequest {
    role: Option<String>,
    handler: Option<String>,
    description: Option<String>,
    timeout: Option<i64>,
    memory_size: Option<i64>,
    environment: Option<EnvironmentInput>,
    runtime: Option<String>,
    revision_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct PublishVersionRequest {
    code_sha256: Option<String>,
    description: Option<String>,
    revision_id: Option<String>,
}

#[derive(Deserialize)]
struct QualifierQuery {
    #[serde(rename = "Qualifier")]
    qualifier: Option<String>,
}

#[derive(Deserialize)]
struct PageQuery {
    #[serde(rename = "Marker")]
    marker: Option<String>,
    #[serde(rename = "MaxItems")]
    max_items: Option<usize>,
}

async fn read_json<T: DeserializeOwned + Default>(body: Body, operation: &str) -> ApiResult<T> {
    let bytes = to_bytes(body, REQUEST_LIMIT).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLargeException",
            format!(
                "Request must be smaller than {REQUEST_LIMIT} bytes for the {operation} operation"
            ),
        )
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            format!("Could not parse request body into json: {e}"),
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Validation

fn target(shared: &Shared, raw: &str, qualifier: Option<&str>) -> ApiResult<Target> {
    parse_function_name(raw, qualifier, &shared.region, &shared.account).map_err(|e| match e {
        NameError::Invalid(message) => ApiError::validation(message),
        NameError::QualifierMismatch => ApiError::invalid(
            "The derived qualifier from the function name does not match the specified qualifier.",
        ),
        NameError::Elsewhere(arn) => ApiError::not_found(&arn),
    })
}

/// For operations on the function itself, which take no qualifier.
fn unqualified(shared: &Shared, raw: &str) -> ApiResult<String> {
    let target = target(shared, raw, None)?;
    if target.qualifier.is_some() {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value '{raw}' at 'functionName' failed to satisfy constraint: this operation takes an unqualified function name or ARN"
        )));
    }
    Ok(target.name)
}

fn existing(shared: &Shared, name: &str) -> ApiResult<Arc<Function>> {
    shared
        .function(name)
        .ok_or_else(|| ApiError::not_found(&shared.arn(name, None)))
}

/// `arn:PARTITION:iam::ACCOUNT:role/[PATH/]NAME`, as Lambda's pattern for `Role` has it.
fn role(raw: Option<&str>) -> ApiResult<String> {
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

fn runtime(raw: &str) -> ApiResult<String> {
    if RUNTIMES.contains(&raw) {
        Ok(raw.to_owned())
    } else {
        Err(ApiError::invalid(format!(
            "The runtime parameter of {raw} is not supported by the Lambda stand-in: it runs OS-only runtimes ({}), whose bootstrap it starts natively",
            RUNTIMES.join(", ")
        )))
    }
}

fn handler(raw: &str) -> ApiResult<String> {
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

fn memory(value: i64) -> ApiResult<u32> {
    in_range(value, "memorySize", 128, 10_240)
}

fn timeout(value: i64) -> ApiResult<Duration> {
    in_range(value, "timeout", 1, 900).map(|s| Duration::from_secs(s.into()))
}

fn architectures(raw: &[String]) -> ApiResult<Vec<String>> {
    match raw {
        [one] if one == "x86_64" || one == "arm64" => Ok(raw.to_vec()),
        _ => Err(ApiError::validation(format!(
            "1 validation error detected: Value '{raw:?}' at 'architectures' failed to satisfy constraint: Member must have length 1, and each member must be x86_64 or arm64"
        ))),
    }
}

fn description(raw: String) -> ApiResult<String> {
    if raw.chars().count() > 256 {
        return Err(ApiError::validation(
            "1 validation error detected: Value at 'description' failed to satisfy constraint: Member must have length less than or equal to 256",
        ));
    }
    Ok(raw)
}

fn environment(input: EnvironmentInput) -> ApiResult<Vec<(String, String)>> {
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
fn zip_only(zip: Option<String>, s3: bool, image: bool) -> ApiResult<String> {
    if s3 || image {
        return Err(ApiError::invalid(
            "The Lambda stand-in takes code only as ZipFile (a base64 .zip); S3 and container image code are not supported",
        ));
    }
    zip.ok_or_else(|| {
        ApiError::invalid("Code.ZipFile is required: the deployment package as a base64 .zip")
    })
}

fn revision_matches(given: Option<&str>, current: &Version) -> ApiResult<()> {
    match given {
        Some(given) if given != current.config.revision_id => Err(ApiError::precondition(
            "The Revision Id provided does not match the latest Revision Id. Call the GetFunction/GetAlias API to retrieve the latest Revision Id",
        )),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Code

/// Decodes, hashes and extracts a deployment package into a new directory under the code root.
async fn unpack(shared: &Shared, function: &str, zip_base64: String) -> ApiResult<Arc<Code>> {
    let dir = shared
        .code_root
        .path()
        .join(format!("{function}-{}", uuid::Uuid::new_v4().simple()));
    tokio::task::spawn_blocking(move || unpack_blocking(dir, &zip_base64))
        .await
        .map_err(|e| ApiError::internal(format!("unpacking the code failed: {e}")))?
        .map(Arc::new)
}

fn unpack_blocking(dir: PathBuf, zip_base64: &str) -> ApiResult<Code> {
    use std::os::unix::fs::PermissionsExt as _;

    let zip = BASE64.decode(zip_base64.trim()).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            format!("Code.ZipFile is not valid base64: {e}"),
        )
    })?;
    let unreadable = |detail: String| {
        ApiError::invalid(format!(
            "Could not unzip uploaded file. Please check your file, then try to upload again. ({detail})"
        ))
    };
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(&zip)).map_err(|e| unreadable(e.to_string()))?;
    let mut unzipped: u64 = 0;
    for i in 0..archive.len() {
        unzipped += archive
            .by_index_raw(i)
            .map_err(|e| unreadable(e.to_string()))?
            .size();
    }
    if unzipped > UNZIPPED_LIMIT {
        return Err(ApiError::invalid(format!(
            "Unzipped size must be smaller than {UNZIPPED_LIMIT} bytes"
        )));
    }
    // The Code owns the directory from here on: an error below removes it.
    let code = Code {
        sha256: BASE64.encode(Sha256::digest(&zip)),
        size: zip.len() as u64,
        dir,
    };
    std::fs::create_dir_all(&code.dir)
        .map_err(|e| ApiError::internal(format!("cannot create {}: {e}", code.dir.display())))?;
    archive
        .extract(&code.dir)
        .map_err(|e| unreadable(e.to_string()))?;
    let bootstrap = code.dir.join("bootstrap");
    if !std::fs::metadata(&bootstrap).is_ok_and(|m| m.is_file()) {
        return Err(ApiError::invalid(
            "The deployment package has no bootstrap: bootstrap not found at the root of the .zip. An OS-only runtime (provided.al2023) runs the executable file named `bootstrap` at the zip's root; put the handler binary there under that name",
        ));
    }
    std::fs::set_permissions(&bootstrap, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| ApiError::internal(format!("cannot make bootstrap executable: {e}")))?;
    Ok(code)
}

/// `CodeSha256` and `CodeSize`: of the zip for uploaded code, of the binary for versions given
/// at start (hashed once, off the async threads).
async fn code_facts(version: &Version) -> (String, u64) {
    if let Some(code) = &version.config.code {
        return (code.sha256.clone(), code.size);
    }
    let size = std::fs::metadata(&version.binary).map_or(0, |m| m.len());
    if let Some(sha) = version.config.binary_sha256.get() {
        return (sha.clone(), size);
    }
    let binary = version.binary.clone();
    let sha = tokio::task::spawn_blocking(move || {
        std::fs::read(&binary)
            .map(|bytes| BASE64.encode(Sha256::digest(&bytes)))
            .unwrap_or_default()
    })
    .await
    .unwrap_or_default();
    let _ = version.config.binary_sha256.set(sha.clone());
    (sha, size)
}

fn code_sha256(version: &Version) -> Option<&str> {
    match &version.config.code {
        Some(code) => Some(&code.sha256),
        None => version.config.binary_sha256.get().map(String::as_str),
    }
}

// ---------------------------------------------------------------------------------------------
// Versions

/// Whether publishing `latest` would make a version different from `published`.
fn same_content(latest: &Version, published: &Version) -> bool {
    let (a, b) = (&latest.config, &published.config);
    let same_code = match (&a.code, &b.code) {
        (Some(x), Some(y)) => x.sha256 == y.sha256,
        (None, None) => latest.binary == published.binary,
        _ => false,
    };
    same_code
        && a.memory_mb == b.memory_mb
        && a.timeout == b.timeout
        && a.env == b.env
        && a.role == b.role
        && a.handler == b.handler
        && a.runtime == b.runtime
        && a.architectures == b.architectures
}

/// PublishVersion under the versions' lock: the last published version if `$LATEST` has not
/// changed since, else a new one numbered after every version ever published.
fn publish(versions: &mut Versions, description: Option<String>) -> ApiResult<Version> {
    let latest = versions.latest.clone().ok_or_else(no_latest)?;
    let last = versions
        .published
        .iter()
        .max_by(|a, b| version_order(&a.version, &b.version));
    if let Some(last) = last.filter(|last| same_content(&latest, last)) {
        return Ok(last.clone());
    }
    let number = versions.next_number;
    versions.next_number += 1;
    let mut config = (*latest.config).clone();
    if let Some(description) = description {
        config.description = description;
    }
    config.last_modified = timestamp(SystemTime::now());
    config.revision_id = uuid::Uuid::new_v4().to_string();
    let version = Version::new(number.to_string(), latest.binary.clone(), Arc::new(config));
    versions.published.push(version.clone());
    Ok(version)
}

fn no_latest() -> ApiError {
    ApiError::conflict(
        "The function was configured when the Lambda stand-in started and has no $LATEST code: upload code with UpdateFunctionCode first",
    )
}

fn latest_version(code: Arc<Code>, config: Config) -> Version {
    let binary = code.dir.join("bootstrap");
    Version::new(
        LATEST.to_owned(),
        binary,
        Arc::new(Config {
            code: Some(code),
            binary_sha256: OnceLock::new(),
            last_modified: timestamp(SystemTime::now()),
            revision_id: uuid::Uuid::new_v4().to_string(),
            ..config
        }),
    )
}

/// A FunctionConfiguration as Lambda returns it.
async fn configuration(
    shared: &Shared,
    function: &str,
    version: &Version,
    qualified: bool,
) -> Value {
    let (sha, size) = code_facts(version).await;
    let c = &version.config;
    let arn = if qualified {
        shared.arn(function, Some(&version.version))
    } else {
        shared.arn(function, None)
    };
    let mut out = json!({
        "FunctionName": function,
        "FunctionArn": arn,
        "Runtime": c.runtime,
        "Role": c.role,
        "Handler": c.handler,
        "CodeSize": size,
        "Description": c.description,
        "Timeout": c.timeout.as_secs(),
        "MemorySize": c.memory_mb,
        "LastModified": c.last_modified,
        "CodeSha256": sha,
        "Version": version.version,
        "TracingConfig": {"Mode": "PassThrough"},
        "RevisionId": c.revision_id,
        "State": "Active",
        "LastUpdateStatus": "Successful",
        "PackageType": "Zip",
        "Architectures": c.architectures,
        "EphemeralStorage": {"Size": 512},
        "SnapStart": {"ApplyOn": "None", "OptimizationStatus": "Off"},
        "LoggingConfig": {"LogFormat": "Text", "LogGroup": format!("/aws/lambda/{function}")},
    });
    if !c.env.is_empty() {
        let variables: Map<String, Value> = c
            .env
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        out["Environment"] = json!({"Variables": variables});
    }
    out
}

/// `None`: `$LATEST` answered with the unqualified ARN (or, for a function given at start, the
/// version an unqualified invoke runs).
async fn resolve(
    shared: &Shared,
    raw: &str,
    qualifier: Option<&str>,
) -> ApiResult<(String, Version, bool)> {
    let target = target(shared, raw, qualifier)?;
    let arn = shared.arn(&target.name, target.qualifier.as_deref());
    let function = shared
        .function(&target.name)
        .ok_or_else(|| ApiError::not_found(&arn))?;
    let version = function
        .resolve(target.qualifier.as_deref())
        .ok_or_else(|| ApiError::not_found(&arn))?;
    let qualified = target.qualifier.is_some() || version.version != LATEST;
    Ok((target.name, version, qualified))
}

fn page<T>(items: Vec<T>, query: &PageQuery) -> ApiResult<(Vec<T>, Option<String>)> {
    let start = match &query.marker {
        Some(m) => m
            .parse::<usize>()
            .map_err(|_| ApiError::invalid(format!("invalid Marker {m:?}")))?,
        None => 0,
    };
    let max = query.max_items.unwrap_or(50).clamp(1, 10_000);
    let total = items.len();
    let items: Vec<T> = items.into_iter().skip(start).take(max).collect();
    let next = (start + items.len() < total).then(|| (start + items.len()).to_string());
    Ok((items, next))
}

// ---------------------------------------------------------------------------------------------
// Handlers

async fn create_function(State(shared): State<Arc<Shared>>, body: Body) -> Response {
    respond(create_function_inner(&shared, body).await)
}

async fn create_function_inner(shared: &Shared, body: Body) -> ApiResult<Response> {
    let request: CreateFunctionRequest = read_json(body, "CreateFunction").await?;
    let raw_name = request.function_name.as_deref().ok_or_else(|| {
        ApiError::validation("1 validation error detected: Value null at 'functionName' failed to satisfy constraint: Member must not be null")
    })?;
    let name = unqualified(shared, raw_name)?;
    if let Some(package_type) = request.package_type.as_deref().filter(|p| *p != "Zip") {
        return Err(ApiError::invalid(format!(
            "PackageType {package_type} is not supported by the Lambda stand-in; use Zip"
        )));
    }
    let role = role(request.role.as_deref())?;
    let runtime = runtime(request.runtime.as_deref().ok_or_else(|| {
        ApiError::invalid("Runtime is required for a .zip deployment package (provided.al2023)")
    })?)?;
    let handler = handler(request.handler.as_deref().ok_or_else(|| {
        ApiError::invalid("Handler is required for a .zip deployment package (e.g. bootstrap)")
    })?)?;
    let memory_mb = memory(request.memory_size.unwrap_or(128))?;
    let timeout = timeout(request.timeout.unwrap_or(3))?;
    let architectures = match &request.architectures {
        Some(a) => architectures(a)?,
        None => vec!["x86_64".to_owned()],
    };
    let env = environment(request.environment.unwrap_or_default())?;
    let description = description(request.description.unwrap_or_default())?;
    let code = request.code.unwrap_or_default();
    let zip = zip_only(
        code.zip_file,
        code.s3_bucket.is_some(),
        code.image_uri.is_some(),
    )?;
    let already = || ApiError::conflict(format!("Function already exist: {name}"));
    if shared.function(&name).is_some() {
        return Err(already());
    }
    let code = unpack(shared, &name, zip).await?;

    let config = Config {
        memory_mb,
        timeout,
        env,
        role,
        handler,
        runtime,
        architectures,
        description,
        code: None,
        binary_sha256: OnceLock::new(),
        last_modified: String::new(),
        revision_id: String::new(),
    };
    let latest = latest_version(code, config);
    // Defaults without code, so they do not keep the first upload on disk.
    let defaults = Config {
        code: None,
        ..(*latest.config).clone()
    };
    let function = Arc::new(Function::empty(&name, CONCURRENCY_LIMIT, defaults));
    let answer_version = function.edit_versions(|versions| {
        versions.latest = Some(latest.clone());
        let published = match request.publish {
            Some(true) => publish(versions, None).ok(),
            _ => None,
        };
        (published, Vec::new())
    });
    {
        let mut functions = super::write(&shared.functions);
        if functions.contains_key(&name) {
            return Err(already());
        }
        functions.insert(name.clone(), Arc::clone(&function));
    }
    tracing::info!(function = %name, "created function through the control plane");
    let (version, qualified) = match answer_version {
        Some(v) => (v, true),
        None => (latest, false),
    };
    Ok(answer(
        StatusCode::CREATED,
        configuration(shared, &name, &version, qualified).await,
    ))
}

async fn list_functions(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<PageQuery>,
) -> Response {
    respond(
        async {
            let mut functions: Vec<Arc<Function>> =
                super::read(&shared.functions).values().cloned().collect();
            functions.sort_by(|a, b| a.name.cmp(&b.name));
            let (functions, next) = page(functions, &query)?;
            let mut out = Vec::new();
            for function in functions {
                if let Some(version) = function.resolve(None) {
                    let qualified = version.version != LATEST;
                    out.push(configuration(&shared, &function.name, &version, qualified).await);
                }
            }
            Ok(listing("Functions", out, next))
        }
        .await,
    )
}

/// One page of a List call: the items under `key`, and `NextMarker` when more follow.
fn listing(key: &str, items: Vec<Value>, next: Option<String>) -> Response {
    let mut body = json!({ key: items });
    if let Some(next) = next {
        body["NextMarker"] = json!(next);
    }
    answer(StatusCode::OK, body)
}

async fn get_function(
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
    Query(query): Query<QualifierQuery>,
) -> Response {
    respond(
        async {
            let (name, version, qualified) =
                resolve(&shared, &raw, query.qualifier.as_deref()).await?;
            let location = match &version.config.code {
                Some(code) => format!("file://{}", code.dir.display()),
                None => format!("file://{}", version.binary.display()),
            };
            Ok(answer(
                StatusCode::OK,
                json!({
                    "Configuration": configuration(&shared, &name, &version, qualified).await,
                    "Code": {"RepositoryType": "S3", "Location": location},
                }),
            ))
        }
        .await,
    )
}

async fn get_function_configuration(
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
    Query(query): Query<QualifierQuery>,
) -> Response {
    respond(
        async {
            let (name, version, qualified) =
                resolve(&shared, &raw, query.qualifier.as_deref()).await?;
            Ok(answer(
                StatusCode::OK,
                configuration(&shared, &name, &version, qualified).await,
            ))
        }
        .await,
    )
}

async fn update_function_code(
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
    body: Body,
) -> Response {
    respond(update_function_code_inner(&shared, &raw, body).await)
}

async fn update_function_code_inner(shared: &Shared, raw: &str, body: Body) -> ApiResult<Response> {
    let request: UpdateCodeRequest = read_json(body, "UpdateFunctionCode").await?;
    let name = unqualified(shared, raw)?;
    let function = existing(shared, &name)?;
    let architectures = request
        .architectures
        .as_deref()
        .map(architectures)
        .transpose()?;
    let zip = zip_only(
        request.zip_file,
        request.s3_bucket.is_some(),
        request.image_uri.is_some(),
    )?;
    if let Some(latest) = function
        .resolve(Some(LATEST))
        .filter(|v| v.version == LATEST)
    {
        revision_matches(request.revision_id.as_deref(), &latest)?;
    }
    let code = unpack(shared, &name, zip).await?;
    let dry_run = request.dry_run == Some(true);
    let (version, qualified) = function.edit_versions(|versions| {
        let result = (|| {
            let base = match &versions.latest {
                Some(latest) => {
                    revision_matches(request.revision_id.as_deref(), latest)?;
                    (*latest.config).clone()
                }
                None => (*function.defaults).clone(),
            };
            let architectures = architectures.unwrap_or_else(|| base.architectures.clone());
            let latest = latest_version(
                code,
                Config {
                    architectures,
                    ..base
                },
            );
            if dry_run {
                return Ok(((latest, false), Vec::new()));
            }
            let retired: Vec<u64> = versions.latest.iter().map(|v| v.revision).collect();
            versions.latest = Some(latest.clone());
            if request.publish == Some(true) {
                return Ok(((publish(versions, None)?, true), retired));
            }
            Ok(((latest, false), retired))
        })();
        match result {
            Ok((answer, retired)) => (Ok(answer), retired),
            Err(e) => (Err(e), Vec::new()),
        }
    })?;
    Ok(answer(
        StatusCode::OK,
        configuration(shared, &name, &version, qualified).await,
    ))
}

async fn update_function_configuration(
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
    body: Body,
) -> Response {
    respond(update_function_configuration_inner(&shared, &raw, body).await)
}

async fn update_function_configuration_inner(
    shared: &Shared,
    raw: &str,
    body: Body,
) -> ApiResult<Response> {
    let request: UpdateConfigurationRequest =
        read_json(body, "UpdateFunctionConfiguration").await?;
    let name = unqualified(shared, raw)?;
    let function = existing(shared, &name)?;
    let role = request.role.as_deref().map(|r| role(Some(r))).transpose()?;
    let handler = request.handler.as_deref().map(handler).transpose()?;
    let runtime = request.runtime.as_deref().map(runtime).transpose()?;
    let memory_mb = request.memory_size.map(memory).transpose()?;
    let timeout = request.timeout.map(timeout).transpose()?;
    let env = request.environment.map(environment).transpose()?;
    let description = request.description.map(description).transpose()?;
    let version = function.edit_versions(|versions| {
        let Some(latest) = &versions.latest else {
            return (Err(no_latest()), Vec::new());
        };
        if let Err(e) = revision_matches(request.revision_id.as_deref(), latest) {
            return (Err(e), Vec::new());
        }
        let mut config = (*latest.config).clone();
        config.role = role.unwrap_or(config.role);
        config.handler = handler.unwrap_or(config.handler);
        config.runtime = runtime.unwrap_or(config.runtime);
        config.memory_mb = memory_mb.unwrap_or(config.memory_mb);
        config.timeout = timeout.unwrap_or(config.timeout);
        config.env = env.unwrap_or(config.env);
        config.description = description.unwrap_or(config.description);
        config.last_modified = timestamp(SystemTime::now());
        config.revision_id = uuid::Uuid::new_v4().to_string();
        let updated = Version::new(LATEST.to_owned(), latest.binary.clone(), Arc::new(config));
        let retired = vec![latest.revision];
        versions.latest = Some(updated.clone());
        (Ok(updated), retired)
    })?;
    Ok(answer(
        StatusCode::OK,
        configuration(shared, &name, &version, false).await,
    ))
}

async fn publish_version(
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
    body: Body,
) -> Response {
    respond(
        async {
            let request: PublishVersionRequest = read_json(body, "PublishVersion").await?;
            let name = unqualified(&shared, &raw)?;
            let function = existing(&shared, &name)?;
            let latest = function
                .resolve(Some(LATEST))
                .filter(|v| v.version == LATEST)
                .ok_or_else(no_latest)?;
            // Hash first (only versions given at start need it), then check under the lock.
            code_facts(&latest).await;
            let description = request.description.map(description).transpose()?;
            let version = function.edit_versions(|versions| {
                let result = (|| {
                    let latest = versions.latest.as_ref().ok_or_else(no_latest)?;
                    if let Some(given) = request.code_sha256.as_deref() {
                        let current = code_sha256(latest).unwrap_or_default();
                        if given != current {
                            return Err(ApiError::precondition(format!(
                                "CodeSHA256 ({given}) you provided does not match the current CodeSHA256 ({current}) of the function."
                            )));
                        }
                    }
                    revision_matches(request.revision_id.as_deref(), latest)?;
                    publish(versions, description)
                })();
                (result, Vec::new())
            })?;
            tracing::info!(function = %name, version = %version.version, "published a version");
            Ok(answer(
                StatusCode::CREATED,
                configuration(&shared, &name, &version, true).await,
            ))
        }
        .await,
    )
}

async fn list_versions_by_function(
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
    Query(query): Query<PageQuery>,
) -> Response {
    respond(
        async {
            let name = unqualified(&shared, &raw)?;
            let function = existing(&shared, &name)?;
            let all = function.edit_versions(|versions| {
                let mut published = versions.published.clone();
                published.sort_by(|a, b| version_order(&a.version, &b.version));
                let all: Vec<Version> = versions.latest.iter().cloned().chain(published).collect();
                (all, Vec::new())
            });
            let (all, next) = page(all, &query)?;
            let mut out = Vec::new();
            for version in &all {
                out.push(configuration(&shared, &name, version, true).await);
            }
            Ok(listing("Versions", out, next))
        }
        .await,
    )
}

async fn delete_function(
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
    Query(query): Query<QualifierQuery>,
) -> Response {
    respond(
        async {
            let target = target(&shared, &raw, query.qualifier.as_deref())?;
            let name = target.name;
            match target.qualifier.as_deref() {
                None => {
                    let removed = super::write(&shared.functions).remove(&name);
                    let function =
                        removed.ok_or_else(|| ApiError::not_found(&shared.arn(&name, None)))?;
                    function.retire();
                    shared
                        .retired
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(Arc::downgrade(&function));
                    tracing::info!(function = %name, "deleted function through the control plane");
                }
                Some(LATEST) => {
                    return Err(ApiError::invalid(
                        "$LATEST version cannot be deleted without deleting the function.",
                    ));
                }
                Some(qualifier) => {
                    let function = existing(&shared, &name)?;
                    let found = function.edit_versions(|versions| {
                        match versions
                            .published
                            .iter()
                            .position(|v| v.version == qualifier)
                        {
                            Some(i) => {
                                let gone = versions.published.remove(i);
                                (true, vec![gone.revision])
                            }
                            None => (false, Vec::new()),
                        }
                    });
                    if !found {
                        return Err(ApiError::not_found(&shared.arn(&name, Some(qualifier))));
                    }
                    tracing::info!(function = %name, version = qualifier, "deleted a version");
                }
            }
            Ok(with_request_id(
                StatusCode::NO_CONTENT.into_response(),
                &uuid::Uuid::new_v4().to_string(),
            ))
        }
        .await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_look_like_lambdas() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_856_400_123);
        assert_eq!(timestamp(at), "2026-11-28T09:00:00.123+0000");
    }

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
