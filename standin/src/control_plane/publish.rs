//! How versions come to be: `$LATEST` from an upload, PublishVersion (a no-op when nothing
//! changed since the last published version), and a version described as Lambda's
//! FunctionConfiguration.

use super::package::code_facts;
use crate::api::{ApiError, ApiResult};
use crate::names::{LATEST, last_modified, version_order};
use crate::shared::Shared;
use crate::versions::{Code, Config, Version, Versions};
use serde_json::{Map, Value, json};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

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
pub(super) fn publish(versions: &mut Versions, description: Option<String>) -> ApiResult<Version> {
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
    config.last_modified = last_modified(SystemTime::now());
    config.revision_id = uuid::Uuid::new_v4().to_string();
    let version = Version::new(number.to_string(), latest.binary.clone(), Arc::new(config));
    versions.published.push(version.clone());
    Ok(version)
}

pub(super) fn no_latest() -> ApiError {
    ApiError::conflict(
        "The function was configured when the Lambda stand-in started and has no $LATEST code: upload code with UpdateFunctionCode first",
    )
}

pub(super) fn latest_version(code: Arc<Code>, config: Config) -> Version {
    let binary = code.dir.join("bootstrap");
    Version::new(
        LATEST.to_owned(),
        binary,
        Arc::new(Config {
            code: Some(code),
            binary_sha256: OnceLock::new(),
            last_modified: last_modified(SystemTime::now()),
            revision_id: uuid::Uuid::new_v4().to_string(),
            ..config
        }),
    )
}

/// A FunctionConfiguration as Lambda returns it.
pub(super) async fn configuration(
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
