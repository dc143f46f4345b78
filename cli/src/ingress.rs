//! Restate's ingress: how a fan-out is started and its result fetched.
//!
//! A run lives in Restate, not in the client, so a client waiting for one rides out a restart of
//! Restate: when the server goes away (killed, restarted, a proxy cutting a long request) or its
//! ingress answers 502/503/504 while it comes back, [`IngressClient::attach_until_answered`]
//! keeps re-attaching by invocation id for up to [`RECONNECT_WINDOW`], and returns the run's
//! answer as if nothing had happened.
//!
//! ## Why not restate-sdk's `ingress` client
//!
//! restate-sdk 0.13 has one (`restate_sdk::ingress`, with the `reqwest-client` feature): typed
//! `call`/`send` to `/restate/call|send/{target}`, an idempotency key and headers per request,
//! `InvocationHandle::attach` by id, a bearer token. It is checked here and not used, because
//! what this module is for lies outside it:
//! - it sends each request once. Riding out a restart (repeat a send under its idempotency key
//!   while the connection breaks or the ingress answers 502-504, re-attach by id for up to
//!   [`RECONNECT_WINDOW`], but give up at once on a refused first connection) would stay ours,
//!   wrapped around its calls: [`IngressClient::post_idempotent`] and
//!   [`IngressClient::attach_until_answered`] (about 100 lines) remain either way;
//! - every answer that is not its expected status comes back as `ClientError::Status` holding
//!   the raw response, from which we would read the status and Restate's JSON `message` again:
//!   a fan-out's outcome is in that status (400/413 rejected, 404 unknown id, 500 failed), so
//!   ordinary outcomes would go through its error path;
//! - the result is any job's JSON, so its typed decoding would be `Json<Value>` throughout;
//! - the CLI would depend on restate-sdk, and its `reqwest-client` feature would be on in every
//!   workspace build of the handler too (features unify); what it would replace here is one
//!   `reqwest` request per method.
//!
//! Revisit if the SDK's client grows retries across an outage.

use anyhow::{Context, Result};
use serde_json::Value;
use std::time::{Duration, Instant};

/// How long a client that already has a run keeps reconnecting to a Restate that went away
/// before it gives up (exit code 5). A restart takes seconds; this covers a slow one and a
/// server being moved.
pub const RECONNECT_WINDOW: Duration = Duration::from_secs(600);

/// What a client that lost Restate tells its user, once per outage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconnect {
    /// The connection broke or the ingress answered it is unavailable; retrying.
    Lost(String),
    /// Attached again after an outage.
    Back,
}

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

    /// `GET /restate/invocation/{id}/attach`: one attempt to wait for the invocation's result,
    /// however long the run takes (no client timeout unless [`Self::with_timeout`]).
    pub async fn attach(&self, id: &str) -> Result<IngressResponse> {
        let mut request = self
            .http
            .get(format!("{}/restate/invocation/{id}/attach", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.with_context(|| {
            format!(
                "cannot reach Restate's ingress at {} to wait for {id}; is the server running \
                 and is --ingress-url right?",
                self.base
            )
        })?;
        let status = response.status().as_u16();
        let text = response.text().await.with_context(|| {
            format!("the connection to Restate's ingress broke while waiting for {id}")
        })?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(IngressResponse { status, body })
    }

    /// [`Self::attach`] until Restate answers with the run's outcome: a broken connection, a
    /// refused one (the server is restarting) or a 502/503/504 (it is coming back) means
    /// attach again, with a growing pause (0.2 s to 2 s), for up to `window` since the last
    /// answer. `notify` hears of each outage and of the return.
    pub async fn attach_until_answered(
        &self,
        id: &str,
        window: Duration,
        mut notify: impl FnMut(Reconnect),
    ) -> Result<IngressResponse> {
        let mut delay = Duration::from_millis(200);
        let mut lost_since: Option<Instant> = None;
        loop {
            let outage = match self.attach(id).await {
                Ok(answer) if !is_unavailable(answer.status) => {
                    if lost_since.is_some() {
                        notify(Reconnect::Back);
                    }
                    return Ok(answer);
                }
                Ok(answer) => {
                    let outage = format!(
                        "Restate's ingress answered HTTP {} ({})",
                        answer.status,
                        answer.message()
                    );
                    if lost_since.is_some_and(|t| t.elapsed() >= window) {
                        anyhow::bail!("{outage}, and still did after {window:?} of retrying");
                    }
                    outage
                }
                Err(e) if is_transport(&e) => {
                    if lost_since.is_some_and(|t| t.elapsed() >= window) {
                        return Err(e.context(format!(
                            "gave up waiting for {id} after {window:?} without Restate"
                        )));
                    }
                    format!("{e:#}")
                }
                Err(e) => return Err(e),
            };
            if lost_since.is_none() {
                lost_since = Some(Instant::now());
                notify(Reconnect::Lost(outage));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// [`Self::post`] that rides out a restart when `idempotency_key` makes a repeat safe: a
    /// request that broke after it was sent (the server died under it) is sent again, also
    /// while the server refuses connections or answers 502/503/504, for up to `window`. A
    /// connection refused before any request got through is returned at once: nothing is there
    /// (a wrong URL, a server not started), and waiting would only hide that. Returns the answer
    /// and whether the request had to be repeated.
    pub async fn post_idempotent(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
        idempotency_key: &str,
        window: Duration,
        mut notify: impl FnMut(Reconnect),
    ) -> Result<(IngressResponse, bool)> {
        let mut delay = Duration::from_millis(200);
        let mut lost_since: Option<Instant> = None;
        loop {
            let attempt = self
                .post(path, content_type, body.clone(), Some(idempotency_key))
                .await;
            let outage = match attempt {
                Ok(answer) if !is_unavailable(answer.status) => {
                    if lost_since.is_some() {
                        notify(Reconnect::Back);
                    }
                    return Ok((answer, lost_since.is_some()));
                }
                Ok(answer) if lost_since.is_some_and(|t| t.elapsed() >= window) => {
                    return Ok((answer, true));
                }
                Ok(answer) => format!(
                    "Restate's ingress answered HTTP {} ({})",
                    answer.status,
                    answer.message()
                ),
                Err(e) if lost_since.is_none() && is_refused(&e) => return Err(e),
                Err(e) if is_transport(&e) && lost_since.is_none_or(|t| t.elapsed() < window) => {
                    format!("{e:#}")
                }
                Err(e) => return Err(e),
            };
            if lost_since.is_none() {
                lost_since = Some(Instant::now());
                notify(Reconnect::Lost(outage));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
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

/// What Restate's ingress answers while it cannot serve yet: a restart in progress, a partition
/// without a leader. Never a run's own outcome (the handler ends runs with 2xx, 4xx or 500).
pub fn is_unavailable(status: u16) -> bool {
    matches!(status, 502..=504)
}

/// A transport failure (connection refused or reset, DNS, a timeout, a body cut short) rather
/// than an answer.
pub fn is_transport(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|cause| cause.downcast_ref::<reqwest::Error>().is_some())
}

/// A connection that was never made (nothing listens there).
fn is_refused(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<reqwest::Error>())
        .any(reqwest::Error::is_connect)
}
