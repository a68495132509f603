//! The instance metadata service (IMDS) as the agent uses it: the instance's own id, and the spot
//! `instance-action` notice EC2 posts about two minutes before it reclaims a spot instance.
//!
//! IMDSv2 first (a session token from `PUT /latest/api/token`), IMDSv1 if no token is to be had. The
//! base URL is configurable (`SPOT_AGENT_METADATA_URL`) so tests can serve the notice themselves.

use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

const TOKEN_TTL_SECS: &str = "21600";

#[derive(Clone)]
pub struct Metadata {
    http: reqwest::Client,
    base: String,
}

/// The notice: what EC2 will do to the instance, and when.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct InstanceAction {
    pub action: String,
    pub time: String,
}

impl Metadata {
    pub fn new(base: &str) -> anyhow::Result<Metadata> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .context("building the metadata client")?;
        Ok(Metadata {
            http,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    async fn token(&self) -> Option<String> {
        let response = self
            .http
            .put(format!("{}/latest/api/token", self.base))
            .header("X-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL_SECS)
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.text().await.ok()
    }

    /// `GET /latest/meta-data/{path}`: `Ok(None)` on 404 (nothing there), `Err` when unreachable.
    async fn get(&self, path: &str) -> anyhow::Result<Option<String>> {
        let mut request = self
            .http
            .get(format!("{}/latest/meta-data/{path}", self.base));
        if let Some(token) = self.token().await {
            request = request.header("X-aws-ec2-metadata-token", token);
        }
        let response = request.send().await?;
        match response.status() {
            status if status.is_success() => Ok(Some(response.text().await?)),
            reqwest::StatusCode::NOT_FOUND => Ok(None),
            status => anyhow::bail!("metadata {path}: {status}"),
        }
    }

    /// This instance's id.
    pub async fn instance_id(&self) -> anyhow::Result<String> {
        // Early in boot the service may not answer yet.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.get("instance-id").await {
                Ok(Some(id)) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
                Ok(_) => anyhow::bail!("the metadata service has no instance-id"),
                Err(err) if attempts >= 30 => return Err(err.context("reading the instance id")),
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }

    /// The spot interruption notice, if one is posted.
    pub async fn instance_action(&self) -> anyhow::Result<Option<InstanceAction>> {
        match self.get("spot/instance-action").await? {
            Some(body) => Ok(Some(
                serde_json::from_str(&body).context("a malformed instance-action notice")?,
            )),
            None => Ok(None),
        }
    }

    /// Resolves when a notice appears, polling every `every`. Unreachable metadata is logged and
    /// polled again: it must not end a job.
    pub async fn wait_for_interruption(&self, every: Duration) -> InstanceAction {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            match self.instance_action().await {
                Ok(Some(action)) => return action,
                Ok(None) => {}
                Err(err) => tracing::debug!(error = %err, "spot notice not readable"),
            }
        }
    }
}
