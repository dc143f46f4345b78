//! Restate's ingress: how a fan-out is started and its result fetched.

use anyhow::{Context, Result};
use serde_json::Value;

#[derive(Clone)]
pub struct IngressClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
    /// Sent with every request, e.g. a run's options (`x-fanout-max-concurrency`).
    headers: Vec<(String, String)>,
}

/// An ingress answer: status and JSON body (or the raw text when not JSON).
#[derive(Debug, Clone)]
pub struct IngressResponse {
    pub status: u16,
    pub body: Value,
}

impl IngressResponse {
    /// The `message` of a Restate error body, or the whole body.
    pub fn message(&self) -> String {
        self.body
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| self.body.to_string())
    }
}

impl IngressClient {
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http: reqwest::Client::new(),
            headers: Vec::new(),
        }
    }

    /// Adds a header to every request this client sends.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// Waits at most `timeout` for an answer (a wide fan-out can take minutes).
    pub fn with_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// POSTs `body` to `path` (e.g. `/worker/run`) and waits for the answer.
    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
        idempotency_key: Option<&str>,
    ) -> Result<IngressResponse> {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body);
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        let response = request.send().await.with_context(|| {
            format!(
                "cannot reach Restate's ingress at {}; is the server running and is \
                 --ingress-url right?",
                self.base
            )
        })?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(IngressResponse { status, body })
    }

    /// Calls `worker/run` with a JSON task.
    pub async fn run(
        &self,
        task: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<IngressResponse> {
        self.post(
            "/worker/run",
            "application/json",
            serde_json::to_vec(task)?,
            idempotency_key,
        )
        .await
    }
}
