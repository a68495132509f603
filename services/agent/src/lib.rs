//! The agent: runs on an instance, one per run. It fetches its run's spec from the api with the run's
//! secret, pulls the image if the engine lacks it, runs the container with the job's command and
//! environment, streams its output and heartbeats to the api, reports the result by `POST /callback`,
//! and removes the container.
//!
//! Everything it knows comes from its environment (`SPOT_AGENT_*`), set by the provider at launch.

mod api_client;
mod docker;

use std::time::Duration;

use anyhow::Context;
use secrecy::SecretString;
use serde::Deserialize;
use spot_shared::messages::CallbackRequest;

pub use api_client::ApiClient;

/// What the provider hands the agent at launch.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSettings {
    pub run_id: String,
    pub api_url: String,
    pub secret: SecretString,
    pub instance_id: String,
    /// Seconds between heartbeats.
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_secs: u64,
}

fn default_heartbeat_secs() -> u64 {
    15
}

impl AgentSettings {
    /// Reads `SPOT_AGENT_RUN_ID`, `SPOT_AGENT_API_URL`, `SPOT_AGENT_SECRET`, `SPOT_AGENT_INSTANCE_ID`
    /// (or `--instance-id`), `SPOT_AGENT_HEARTBEAT_SECS`.
    pub fn from_env() -> anyhow::Result<AgentSettings> {
        let mut builder = config::Config::builder()
            .add_source(config::Environment::with_prefix("SPOT_AGENT").try_parsing(false));
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            if arg == "--instance-id" {
                let id = args.next().context("--instance-id needs a value")?;
                builder = builder.set_override("instance_id", id)?;
            }
        }
        let mut settings: AgentSettings = builder.build()?.try_deserialize()?;
        if settings.heartbeat_secs == 0 {
            settings.heartbeat_secs = default_heartbeat_secs();
        }
        Ok(settings)
    }
}

/// How the container's run ended, as the agent saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exited(i64),
    TimedOut,
    /// It never ran: the image could not be had, or the engine refused the container.
    Error(String),
}

/// Runs the job of this instance to the end and reports it. Stops early on SIGTERM (the reaper
/// terminating the instance), removing the container.
pub async fn run(settings: AgentSettings) -> anyhow::Result<()> {
    let api = ApiClient::new(&settings)?;
    let spec = api.fetch_spec().await.context("fetching the run's spec")?;
    tracing::info!(run_id = %spec.run_id, image = %spec.image, "agent starting");
    let engine = docker::Engine::connect().await?;
    let container_name = format!("spot-{}-{}", spec.run_id, spec.attempt);

    let outcome = tokio::select! {
        outcome = engine.run_job(&api, &spec, &settings, &container_name) => outcome,
        _ = spot_shared::shutdown_signal() => {
            tracing::info!("terminated; removing the container");
            engine.remove(&container_name).await;
            return Ok(());
        }
    };
    engine.remove(&container_name).await;

    let mut report = CallbackRequest {
        action: "terminate".into(),
        instance_id: Some(settings.instance_id.clone()),
        run_id: Some(spec.run_id.clone()),
        job_id: Some(spec.job_id.clone()),
        ..CallbackRequest::default()
    };
    match &outcome {
        Outcome::Exited(code) => report.exit_code = Some(*code),
        Outcome::TimedOut => report.timed_out = Some(true),
        Outcome::Error(message) => report.error = Some(message.clone()),
    }
    tracing::info!(?outcome, "job ended; reporting");
    api.callback(&report)
        .await
        .context("reporting the result")?;
    Ok(())
}

/// Flushes buffered output at least this often.
const LOG_FLUSH_EVERY: Duration = Duration::from_millis(250);
/// And whenever this much is buffered.
const LOG_FLUSH_BYTES: usize = 64 * 1024;
