//! The agent: runs on an instance, one per run. It fetches its run's spec from the api with the run's
//! secret, pulls the image if the engine lacks it, fetches the files the spec names by URL, runs the container with the job's command and
//! environment, streams its output and heartbeats to the api, watches for a spot interruption notice,
//! reports the result by `POST /callback`, and removes the container.
//!
//! What it knows comes from a boot file (`--boot-file`, written from EC2 user data) and its environment
//! (`SPOT_AGENT_*`, how the local provider starts it); its instance id from `--instance-id` or the
//! instance metadata service.

mod api_client;
mod docker;
mod fetch;
pub mod metadata;
mod secrets;

use std::path::PathBuf;
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
    /// Empty: read from the instance metadata service.
    #[serde(default)]
    pub instance_id: String,
    /// Seconds between heartbeats.
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_secs: u64,
    /// The instance metadata service; empty turns off interruption watching (the local provider).
    #[serde(default = "default_metadata_url")]
    pub metadata_url: String,
    /// Seconds between looks for a spot interruption notice.
    #[serde(default = "default_interruption_poll_secs")]
    pub interruption_poll_secs: u64,
}

fn default_heartbeat_secs() -> u64 {
    15
}

fn default_metadata_url() -> String {
    "http://169.254.169.254".into()
}

fn default_interruption_poll_secs() -> u64 {
    5
}

impl AgentSettings {
    /// Reads the boot file named by `--boot-file` (JSON: `run_id`, `api_url`, `secret`), then
    /// `SPOT_AGENT_RUN_ID`, `SPOT_AGENT_API_URL`, `SPOT_AGENT_SECRET`, `SPOT_AGENT_INSTANCE_ID` (or
    /// `--instance-id`), `SPOT_AGENT_HEARTBEAT_SECS`, `SPOT_AGENT_METADATA_URL`,
    /// `SPOT_AGENT_INTERRUPTION_POLL_SECS`.
    pub fn from_env() -> anyhow::Result<AgentSettings> {
        let mut builder = config::Config::builder();
        let mut instance_id = None;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--instance-id" => {
                    instance_id = Some(args.next().context("--instance-id needs a value")?);
                }
                "--boot-file" => {
                    let path = PathBuf::from(args.next().context("--boot-file needs a path")?);
                    let text = std::fs::read(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let boot: spot_shared::cloud::AgentBoot = serde_json::from_slice(&text)
                        .with_context(|| format!("parsing {}", path.display()))?;
                    // Defaults, so the environment can still override them.
                    builder = builder
                        .set_default("run_id", boot.run_id)?
                        .set_default("api_url", boot.api_url)?
                        .set_default("secret", boot.secret)?
                        .set_default("heartbeat_secs", boot.heartbeat_secs)?;
                }
                // The provider's name for the deployment, read from the command line by its sweeps.
                "--cluster" => {
                    args.next().context("--cluster needs a value")?;
                }
                other => anyhow::bail!("unknown argument {other:?}"),
            }
        }
        builder =
            builder.add_source(config::Environment::with_prefix("SPOT_AGENT").try_parsing(false));
        if let Some(id) = instance_id {
            builder = builder.set_override("instance_id", id)?;
        }
        let mut settings: AgentSettings = builder.build()?.try_deserialize()?;
        if settings.heartbeat_secs == 0 {
            settings.heartbeat_secs = default_heartbeat_secs();
        }
        if settings.interruption_poll_secs == 0 {
            settings.interruption_poll_secs = default_interruption_poll_secs();
        }
        Ok(settings)
    }
}

/// How the container's run ended, as the agent saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exited(i64),
    TimedOut,
    /// The cloud is reclaiming the instance; the container was stopped.
    Interrupted,
    /// It never ran: the image could not be had, or the engine refused the container.
    Error(String),
    /// The agent was terminated (SIGTERM): the container, if it had started, was stopped with its
    /// stop signal and grace. Not reported: whoever terminates the instance has ended the run.
    Stopped,
}

/// Runs the job of this instance to the end and reports it. Stops early on SIGTERM (the reaper
/// terminating the instance), removing the container, and on a spot interruption notice.
/// [`run`] on a multi-threaded runtime of its own: what `main` calls. The runtime is built here, not
/// by `#[tokio::main]` in `main.rs`, so the service's futures are compiled once, in this crate: polled
/// from the binary they were compiled again there (BENCHMARKS.md, "A fresh machine").
pub fn run_blocking(settings: AgentSettings) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(settings))
}

pub async fn run(mut settings: AgentSettings) -> anyhow::Result<()> {
    let metadata = if settings.metadata_url.is_empty() {
        None
    } else {
        Some(metadata::Metadata::new(&settings.metadata_url)?)
    };
    if settings.instance_id.is_empty() {
        let metadata = metadata
            .as_ref()
            .context("no instance id given and no metadata service to ask")?;
        settings.instance_id = metadata.instance_id().await?;
    }
    let api = ApiClient::new(&settings)?;
    // Heartbeats from the start: pulling a large image is still progress, not a lost agent.
    let heartbeat = tokio::spawn(docker::heartbeat(api.clone(), settings.heartbeat_secs));
    let result = run_reporting(&settings, &api, metadata.as_ref()).await;
    heartbeat.abort();
    result
}

async fn run_reporting(
    settings: &AgentSettings,
    api: &ApiClient,
    metadata: Option<&metadata::Metadata>,
) -> anyhow::Result<()> {
    let spec = api.fetch_spec().await.context("fetching the run's spec")?;
    tracing::info!(run_id = %spec.run_id, image = %spec.image, instance_id = %settings.instance_id, "agent starting");
    let engine = docker::Engine::connect().await?;
    let container_name = format!("spot-{}-{}", spec.run_id, spec.attempt);
    docker::prepare_notices(&spec.run_id).context("making the run's notice directory")?;
    let interruption = async {
        match metadata {
            Some(metadata) => {
                let every = Duration::from_secs(settings.interruption_poll_secs);
                metadata.wait_for_interruption(every).await
            }
            None => std::future::pending().await,
        }
    };

    // SIGTERM (the instance being terminated) is the container's to hear too, with its grace.
    let (terminate, terminated) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        spot_shared::shutdown_signal().await;
        let _ = terminate.send(true);
    });
    let outcome = tokio::select! {
        outcome = engine.run_job(api, &spec, settings, &container_name, terminated) => outcome,
        notice = interruption => {
            // Inside the two-minute notice: the job's stop signal, then its grace (100 s at most).
            let grace = spec.stop_grace_secs.min(spot_shared::model::MAX_SPOT_STOP_GRACE_SECS);
            tracing::warn!(action = %notice.action, time = %notice.time, grace_secs = grace,
                "spot interruption notice; stopping the container");
            // Told first in a file it can watch, then by the signal.
            if let Err(err) = docker::give_notice(&spec.run_id, "interruption", &format!("{}\n", notice.time)) {
                tracing::warn!(error = %err, "the interruption notice file was not written");
            }
            engine
                .stop(&container_name, &spec.stop_signal, Duration::from_secs(grace))
                .await;
            Outcome::Interrupted
        }
    };
    engine.remove(&container_name).await;
    let _ = std::fs::remove_dir_all(docker::notice_dir(&spec.run_id));
    if outcome == Outcome::Stopped {
        tracing::info!("terminated; the container is stopped and removed");
        return Ok(());
    }

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
        Outcome::Interrupted => report.interrupted = Some(true),
        Outcome::Error(message) => report.error = Some(message.clone()),
        Outcome::Stopped => {}
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
