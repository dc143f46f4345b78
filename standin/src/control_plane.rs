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

mod package;
mod publish;
mod requests;

use super::api::{ApiError, ApiResult, Params};
use super::functions::Function;
use super::names::{LATEST, Target, last_modified, parse_function_name, version_order};
use super::shared::Shared;
use super::versions::{Config, Version};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use package::{code_facts, code_sha256, unpack};
use publish::{configuration, latest_version, no_latest, publish};
use requests::{
    CreateFunctionRequest, PageQuery, PublishVersionRequest, QualifierQuery, UpdateCodeRequest,
    UpdateConfigurationRequest, architectures, description, environment, handler, memory,
    read_json, revision_matches, role, runtime, timeout, zip_only,
};
use serde_json::{Value, json};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

/// Lambda's default regional concurrency, for functions created through the API.
const CONCURRENCY_LIMIT: usize = 1000;

fn target(shared: &Shared, raw: &str, qualifier: Option<&str>) -> ApiResult<Target> {
    Ok(parse_function_name(
        raw,
        qualifier,
        &shared.region,
        &shared.account,
    )?)
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
    // Asked without a qualifier, Lambda answers with the function's own (unqualified) ARN,
    // which tools take apart; a function given at start has no $LATEST and stands in with its
    // newest version, under that same ARN.
    let qualified = target.qualifier.is_some();
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
// Handlers, one per operation (routed in `router`)

pub(crate) async fn create_function(
    State(shared): State<Arc<Shared>>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let request: CreateFunctionRequest = read_json(body, "CreateFunction").await?;
    let raw_name = request.function_name.as_deref().ok_or_else(|| {
        ApiError::validation("1 validation error detected: Value null at 'functionName' failed to satisfy constraint: Member must not be null")
    })?;
    let name = unqualified(&shared, raw_name)?;
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
    let code = unpack(&shared, &name, zip).await?;

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
        let mut functions = crate::shared::write(&shared.functions);
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
    Ok((
        StatusCode::CREATED,
        Json(configuration(&shared, &name, &version, qualified).await),
    ))
}

pub(crate) async fn list_functions(
    State(shared): State<Arc<Shared>>,
    Params(query): Params<PageQuery>,
) -> ApiResult<Json<Value>> {
    let mut functions: Vec<Arc<Function>> = crate::shared::read(&shared.functions)
        .values()
        .cloned()
        .collect();
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

/// One page of a List call: the items under `key`, and `NextMarker` when more follow.
fn listing(key: &str, items: Vec<Value>, next: Option<String>) -> Json<Value> {
    let mut body = json!({ key: items });
    if let Some(next) = next {
        body["NextMarker"] = json!(next);
    }
    Json(body)
}

pub(crate) async fn get_function(
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
    Params(query): Params<QualifierQuery>,
) -> ApiResult<Json<Value>> {
    let (name, version, qualified) = resolve(&shared, &raw, query.qualifier.as_deref()).await?;
    let location = match &version.config.code {
        Some(code) => format!("file://{}", code.dir.display()),
        None => format!("file://{}", version.binary.display()),
    };
    Ok(Json(json!({
        "Configuration": configuration(&shared, &name, &version, qualified).await,
        "Code": {"RepositoryType": "S3", "Location": location},
    })))
}

pub(crate) async fn get_function_configuration(
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
    Params(query): Params<QualifierQuery>,
) -> ApiResult<Json<Value>> {
    let (name, version, qualified) = resolve(&shared, &raw, query.qualifier.as_deref()).await?;
    Ok(Json(
        configuration(&shared, &name, &version, qualified).await,
    ))
}

pub(crate) async fn update_function_code(
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let request: UpdateCodeRequest = read_json(body, "UpdateFunctionCode").await?;
    let name = unqualified(&shared, &raw)?;
    let function = existing(&shared, &name)?;
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
    let code = unpack(&shared, &name, zip).await?;
    let dry_run = request.dry_run == Some(true);
    let (version, qualified) = function.edit_versions(|versions| {
        let result = (|| -> ApiResult<_> {
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
    Ok(Json(
        configuration(&shared, &name, &version, qualified).await,
    ))
}

pub(crate) async fn update_function_configuration(
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let request: UpdateConfigurationRequest =
        read_json(body, "UpdateFunctionConfiguration").await?;
    let name = unqualified(&shared, &raw)?;
    let function = existing(&shared, &name)?;
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
        config.last_modified = last_modified(SystemTime::now());
        config.revision_id = uuid::Uuid::new_v4().to_string();
        let updated = Version::new(LATEST.to_owned(), latest.binary.clone(), Arc::new(config));
        let retired = vec![latest.revision];
        versions.latest = Some(updated.clone());
        (Ok(updated), retired)
    })?;
    Ok(Json(configuration(&shared, &name, &version, false).await))
}

pub(crate) async fn publish_version(
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
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
    Ok((
        StatusCode::CREATED,
        Json(configuration(&shared, &name, &version, true).await),
    ))
}

pub(crate) async fn list_versions_by_function(
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
    Params(query): Params<PageQuery>,
) -> ApiResult<Json<Value>> {
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

pub(crate) async fn delete_function(
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
    Params(query): Params<QualifierQuery>,
) -> ApiResult<StatusCode> {
    let target = target(&shared, &raw, query.qualifier.as_deref())?;
    let name = target.name;
    match target.qualifier.as_deref() {
        None => {
            let removed = crate::shared::write(&shared.functions).remove(&name);
            let function = removed.ok_or_else(|| ApiError::not_found(&shared.arn(&name, None)))?;
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
    Ok(StatusCode::NO_CONTENT)
}
