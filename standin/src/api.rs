//! What every answer of the stand-in's port has in common, as Lambda's APIs have it: a request
//! id in `x-amzn-RequestId`, and one error shape, [`ApiError`], that every handler returns.
//!
//! An error is a status, the error type in `x-amzn-ErrorType` (what aws-sdk-lambda and
//! restate-server dispatch on) and a JSON body `{"Type": "User"|"Service", "message": ...}`,
//! plus the extra fields some errors carry (throttling's `Reason`). The request id is not part
//! of the error: [`stamp_request_id`] gives every request one before its handler runs (the
//! Invoke API hands the same id to the function as its invocation's id) and writes it on every
//! answer, errors and the `/fanout/*` hooks included.

use super::names::NameError;
use axum::Json;
use axum::extract::{FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// The id of one request: `x-amzn-RequestId` on its answer, and for an invoke the id its
/// function sees (`Lambda-Runtime-Aws-Request-Id`) and its metering record carries.
#[derive(Debug, Clone)]
pub(crate) struct RequestId(pub String);

/// The layer every route runs behind: a fresh [`RequestId`] in the request's extensions (a
/// handler takes it as `Extension<RequestId>`), and the same id on the answer.
pub(crate) async fn stamp_request_id(mut request: Request, next: Next) -> Response {
    let id = uuid::Uuid::new_v4().to_string();
    request.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-amzn-RequestId", value);
    }
    response
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// A Lambda error, answered as Lambda answers it (see the module's comment).
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    /// `x-amzn-ErrorType`, e.g. `ResourceNotFoundException`.
    pub kind: &'static str,
    pub message: String,
    /// Body fields beside `Type` and `message`, e.g. `Reason`.
    extra: Map<String, Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            extra: Map::new(),
        }
    }

    /// 400 `InvalidParameterValueException`: a value Lambda does not accept.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValueException",
            message,
        )
    }

    /// 400 `ValidationException`: a value outside the API's declared constraints.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "ValidationException", message)
    }

    /// 400 `InvalidRequestContentException`: a body that cannot be read as the request.
    pub fn bad_content(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            message,
        )
    }

    /// 404 `ResourceNotFoundException` for the function or version `arn`.
    pub fn not_found(arn: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            format!("Function not found: {arn}"),
        )
    }

    /// 409 `ResourceConflictException`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "ResourceConflictException", message)
    }

    /// 412 `PreconditionFailedException`: a stale `RevisionId` or `CodeSha256`.
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailedException",
            message,
        )
    }

    /// 413 `RequestEntityTooLargeException`: a request over `limit` bytes.
    pub fn too_large(limit: usize, operation: &str) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLargeException",
            format!("Request must be smaller than {limit} bytes for the {operation} operation"),
        )
    }

    /// 429 `TooManyRequestsException`: the function's concurrency limit is reached.
    pub fn throttled() -> Self {
        let mut error = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequestsException",
            "Rate Exceeded.",
        );
        error.extra.insert(
            "Reason".into(),
            "ReservedFunctionConcurrentInvocationLimitExceeded".into(),
        );
        error
    }

    /// 500 `ServiceException`: the stand-in itself failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ServiceException",
            message,
        )
    }

    /// The JSON body: `Type` is `Service` for a 5xx (Lambda's fault), `User` otherwise.
    pub fn body(&self) -> Value {
        let fault = if self.status.is_server_error() {
            "Service"
        } else {
            "User"
        };
        let mut body = self.extra.clone();
        body.insert("Type".into(), fault.into());
        body.insert("message".into(), self.message.clone().into());
        Value::Object(body)
    }
}

/// Both APIs refuse a function name the same way.
impl From<NameError> for ApiError {
    fn from(e: NameError) -> Self {
        match e {
            NameError::Invalid(message) => Self::validation(message),
            NameError::QualifierMismatch => Self::invalid(
                "The derived qualifier from the function name does not match the specified qualifier.",
            ),
            NameError::Elsewhere(arn) => Self::not_found(&arn),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        response
            .headers_mut()
            .insert("x-amzn-ErrorType", HeaderValue::from_static(self.kind));
        response
    }
}

/// A handler's query parameters: one that cannot be read (`MaxItems=ten`, a hook's missing
/// `function`) is a `ValidationException` that says which and why, not axum's plain-text 400.
pub(crate) struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Query::try_from_uri(&parts.uri)
            .map(|Query(params)| Params(params))
            .map_err(|e| ApiError::validation(e.body_text()))
    }
}

/// What the port answers to a path no route serves.
pub(crate) async fn unknown_operation() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "UnknownOperationException",
        "this Lambda stand-in serves Invoke and the function and version operations of the control plane only",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn errors_have_lambdas_shape() {
        let throttled = ApiError::throttled().into_response();
        assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            throttled.headers()["x-amzn-ErrorType"],
            "TooManyRequestsException"
        );
        assert_eq!(
            ApiError::throttled().body(),
            json!({"Reason": "ReservedFunctionConcurrentInvocationLimitExceeded", "Type": "User", "message": "Rate Exceeded."})
        );
        assert_eq!(
            ApiError::internal("boom").body(),
            json!({"Type": "Service", "message": "boom"})
        );
        let mismatch = ApiError::from(NameError::QualifierMismatch);
        assert_eq!(
            (mismatch.status, mismatch.kind),
            (StatusCode::BAD_REQUEST, "InvalidParameterValueException")
        );
    }
}
