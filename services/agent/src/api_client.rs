//! The agent's side of the api: every call carries the run's secret and is retried with exponential
//! backoff while the failure may pass (connection errors, 5xx, 409 while the provisioner catches up).

use std::time::Duration;

use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use spot_shared::messages::{CallbackRequest, RunSpec, RUN_SECRET_HEADER};

use crate::AgentSettings;

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("api unreachable: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("api answered {status}: {body}")]
    Status { status: StatusCode, body: String },
}

impl CallError {
    fn is_retryable(&self) -> bool {
        match self {
            CallError::Transport(_) => true,
            CallError::Status { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::CONFLICT
                    || *status == StatusCode::TOO_MANY_REQUESTS
            }
        }
    }
}

#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    run_id: String,
    secret: SecretString,
}

impl ApiClient {
    pub fn new(settings: &AgentSettings) -> anyhow::Result<ApiClient> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        Ok(ApiClient {
            http,
            base: settings.api_url.trim_end_matches('/').to_string(),
            run_id: settings.run_id.clone(),
            secret: settings.secret.clone(),
        })
    }

    fn backoff() -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .with_max_times(40)
            .with_jitter()
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        json: bool,
    ) -> Result<Vec<u8>, CallError> {
        let attempt = || async {
            let mut request = self
                .http
                .request(method.clone(), format!("{}{}", self.base, path))
                .header(RUN_SECRET_HEADER, self.secret.expose_secret());
            if let Some(body) = &body {
                if json {
                    request = request.header("Content-Type", "application/json");
                }
                request = request.body(body.clone());
            }
            let response = request.send().await?;
            let status = response.status();
            let bytes = response.bytes().await?;
            if status.is_success() {
                Ok(bytes.to_vec())
            } else {
                Err(CallError::Status {
                    status,
                    body: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
                })
            }
        };
        attempt
            .retry(Self::backoff())
            .when(CallError::is_retryable)
            .notify(|err, after| tracing::warn!(error = %err, ?after, path, "api call failed; retrying"))
            .await
    }

    pub async fn fetch_spec(&self) -> anyhow::Result<RunSpec> {
        let body = self
            .call(
                Method::GET,
                &format!("/agent/runs/{}", self.run_id),
                None,
                false,
            )
            .await?;
        Ok(serde_json::from_slice(&body)?)
    }

    pub async fn callback(&self, request: &CallbackRequest) -> anyhow::Result<()> {
        let body = serde_json::to_vec(request)?;
        self.call(Method::POST, "/callback", Some(body), true)
            .await?;
        Ok(())
    }

    pub async fn append_logs(&self, chunk: Vec<u8>) -> anyhow::Result<()> {
        self.call(
            Method::POST,
            &format!("/agent/runs/{}/logs", self.run_id),
            Some(chunk),
            false,
        )
        .await?;
        Ok(())
    }

    pub async fn heartbeat(&self) -> anyhow::Result<()> {
        self.call(
            Method::POST,
            &format!("/agent/runs/{}/heartbeat", self.run_id),
            Some(Vec::new()),
            false,
        )
        .await?;
        Ok(())
    }
}
