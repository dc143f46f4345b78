//! Restate's admin API: registering deployments, listing them, SQL introspection.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A client for one Restate admin endpoint (self-hosted `:9070` or Restate Cloud).
#[derive(Clone)]
pub struct AdminClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// What to register: a Lambda version ARN or an HTTP endpoint URI.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum DeploymentTarget {
    Lambda {
        arn: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        assume_role_arn: Option<String>,
    },
    Http {
        uri: String,
    },
}

#[derive(Debug, Clone, Default)]
pub struct RegisterOptions {
    pub force: bool,
    pub breaking: bool,
    pub dry_run: bool,
}

/// A registered deployment as the admin API reports it.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Deployment {
    pub id: String,
    #[serde(default)]
    pub services: Vec<RegisteredService>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RegisteredService {
    pub name: String,
    #[serde(default)]
    pub handlers: Vec<RegisteredHandler>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RegisteredHandler {
    pub name: String,
}

impl AdminClient {
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http: reqwest::Client::new(),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    async fn send(&self, builder: reqwest::RequestBuilder, what: &str) -> Result<Value> {
        let response = builder.send().await.with_context(|| {
            format!(
                "cannot reach Restate's admin API at {} to {what}; is the server running and is \
                 --admin-url right?",
                self.base
            )
        })?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(crate::exit::rejected(format!(
                "Restate's admin API refused the request to {what} ({status}); pass a valid \
                 token with --token or RESTATE_AUTH_TOKEN"
            )));
        }
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or(body);
            bail!("Restate's admin API could not {what} ({status}): {message}");
        }
        if body.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&body)
            .with_context(|| format!("Restate's admin API answered {what} with invalid JSON"))
    }

    pub async fn health(&self) -> Result<()> {
        self.send(
            self.request(reqwest::Method::GET, "/health"),
            "check health",
        )
        .await
        .map(|_| ())
    }

    /// Registers a deployment and returns what Restate discovered.
    pub async fn register(
        &self,
        target: &DeploymentTarget,
        options: &RegisterOptions,
    ) -> Result<Deployment> {
        let mut body = serde_json::to_value(target)?;
        let fields = body
            .as_object_mut()
            .expect("a target serializes to an object");
        fields.insert("force".into(), options.force.into());
        fields.insert("breaking".into(), options.breaking.into());
        fields.insert("dry_run".into(), options.dry_run.into());
        let value = self
            .send(
                self.request(reqwest::Method::POST, "/deployments")
                    .json(&body),
                "register the deployment",
            )
            .await?;
        serde_json::from_value(value).context("unexpected registration response")
    }

    pub async fn deployments(&self) -> Result<Vec<Value>> {
        let value = self
            .send(
                self.request(reqwest::Method::GET, "/deployments"),
                "list deployments",
            )
            .await?;
        Ok(value
            .get("deployments")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    pub async fn delete_deployment(&self, id: &str, force: bool) -> Result<()> {
        let path = format!("/deployments/{id}?force={force}");
        self.send(
            self.request(reqwest::Method::DELETE, &path),
            &format!("delete deployment {id}"),
        )
        .await
        .map(|_| ())
    }

    /// `PATCH /invocations/{id}/cancel`: asks Restate to cancel invocation `id`. The cancel is
    /// a signal the handler sees at its next await, so the invocation ends a little later.
    pub async fn cancel_invocation(&self, id: &str) -> Result<CancelAnswer> {
        let what = format!("cancel {id}");
        let path = format!("/invocations/{id}/cancel");
        let response = self
            .request(reqwest::Method::PATCH, &path)
            .send()
            .await
            .with_context(|| {
                format!(
                    "cannot reach Restate's admin API at {} to {what}; is the server running and \
                     is --admin-url right?",
                    self.base
                )
            })?;
        match response.status().as_u16() {
            200 | 202 => Ok(CancelAnswer::Accepted),
            404 => Ok(CancelAnswer::Unknown),
            409 => Ok(CancelAnswer::AlreadyCompleted),
            401 | 403 => Err(crate::exit::rejected(format!(
                "Restate's admin API refused the request to {what} ({}); pass a valid token with \
                 --token or RESTATE_AUTH_TOKEN",
                response.status()
            ))),
            _ => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                bail!("Restate's admin API could not {what} ({status}): {body}")
            }
        }
    }

    /// Runs a SQL query over Restate's introspection tables (`sys_invocation`, `sys_journal`…).
    pub async fn query(&self, sql: &str) -> Result<Vec<Value>> {
        let value = self
            .send(
                self.request(reqwest::Method::POST, "/query")
                    .header("accept", "application/json")
                    .json(&serde_json::json!({ "query": sql })),
                "run an introspection query",
            )
            .await?;
        Ok(value
            .get("rows")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }
}

/// Quotes a string for use as a SQL literal.
pub fn sql_string(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An admin endpoint that refuses everyone, as Restate Cloud does without a valid token.
    async fn refusing_server() -> String {
        let app = axum::Router::new().fallback(|| async {
            (
                axum::http::StatusCode::UNAUTHORIZED,
                r#"{"message":"unauthorized"}"#,
            )
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn lambda_target() -> DeploymentTarget {
        DeploymentTarget::Lambda {
            arn: "arn:aws:lambda:us-east-1:1:function:fanout:1".into(),
            assume_role_arn: None,
        }
    }

    #[tokio::test]
    async fn a_401_names_the_token_and_sends_it_as_bearer() {
        let admin = AdminClient::new(&refusing_server().await, Some("wrong".into()));
        let err = admin
            .register(&lambda_target(), &RegisterOptions::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--token") && err.contains("RESTATE_AUTH_TOKEN"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_admin_api_says_so() {
        let port = fanout_standin::process::free_port().unwrap();
        let admin = AdminClient::new(&format!("http://127.0.0.1:{port}"), None);
        let err = admin.health().await.unwrap_err().to_string();
        assert!(err.contains("cannot reach Restate's admin API"), "{err}");
        assert!(err.contains("--admin-url"), "{err}");
    }
}

/// What Restate said to a cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelAnswer {
    /// The cancel signal is on its way to the invocation.
    Accepted,
    /// Restate does not know the invocation.
    Unknown,
    /// The invocation had already completed.
    AlreadyCompleted,
}
