//! The agent's use of the Docker engine: pull if missing, create and start, stream output, wait with
//! the run's timeout, remove.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, KillContainerOptions,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use spot_shared::cloud::{INSTANCE_LABEL, RUN_LABEL};
use spot_shared::container_limits::AppliedLimits;
use spot_shared::messages::{CallbackRequest, RunSpec};

use crate::fetch::ContainerFile;
use crate::{AgentSettings, ApiClient, Outcome, LOG_FLUSH_BYTES, LOG_FLUSH_EVERY};

pub struct Engine {
    docker: Docker,
}

impl Engine {
    pub async fn connect() -> anyhow::Result<Engine> {
        let docker = Docker::connect_with_local_defaults()?
            .negotiate_version()
            .await?;
        Ok(Engine { docker })
    }

    /// Runs the job's container to its end and says how it ended. Once `terminated` turns true (the
    /// agent got SIGTERM: its instance is being terminated, a cancelled run's say), a container not
    /// started yet never starts, and one running gets its stop signal and grace, its last output
    /// sent, before [`Outcome::Stopped`].
    pub async fn run_job(
        &self,
        api: &ApiClient,
        spec: &RunSpec,
        settings: &AgentSettings,
        name: &str,
        terminated: tokio::sync::watch::Receiver<bool>,
    ) -> Outcome {
        let start = async {
            self.ensure_image(&spec.image).await?;
            let files = crate::fetch::container_files(spec, &settings.metadata_url).await?;
            let secret_env = crate::secrets::secret_env(spec).await?;
            self.create_and_start(spec, &files, &secret_env, settings, name)
                .await
                .map_err(|err| format!("cannot start the container: {err}"))
        };
        let container_id = tokio::select! {
            started = start => match started {
                Ok(id) => id,
                Err(message) => return Outcome::Error(message),
            },
            _ = until_true(terminated.clone()) => return Outcome::Stopped,
        };
        let ready = CallbackRequest {
            action: "update".into(),
            instance_id: Some(settings.instance_id.clone()),
            run_id: Some(spec.run_id.clone()),
            job_id: Some(spec.job_id.clone()),
            container_id: Some(container_id.clone()),
            ..CallbackRequest::default()
        };
        if let Err(err) = api.callback(&ready).await {
            tracing::error!(error = %err, "could not report the container running");
        }

        let logs = tokio::spawn(forward_logs(
            self.docker.clone(),
            api.clone(),
            container_id.clone(),
        ));
        let timeout = Duration::from_secs(spec.timeout_secs);
        let grace = Duration::from_secs(spec.stop_grace_secs);
        let outcome = tokio::select! {
            waited = tokio::time::timeout(timeout, self.wait(&container_id)) => match waited {
                Ok(outcome) => outcome,
                Err(_) => {
                    tracing::warn!(
                        timeout_secs = spec.timeout_secs,
                        signal = %spec.stop_signal,
                        grace_secs = spec.stop_grace_secs,
                        "timed out; stopping the container"
                    );
                    self.stop(&container_id, &spec.stop_signal, grace).await;
                    Outcome::TimedOut
                }
            },
            _ = until_true(terminated) => {
                tracing::info!(signal = %spec.stop_signal, grace_secs = spec.stop_grace_secs,
                    "terminated; stopping the container");
                self.stop(&container_id, &spec.stop_signal, grace).await;
                Outcome::Stopped
            }
        };
        // Let the output stream drain so the report comes after the last line, then send what it
        // missed.
        if let Ok(Ok(sent)) = tokio::time::timeout(Duration::from_secs(10), logs).await {
            send_rest(&self.docker, api, &container_id, sent).await;
        }
        outcome
    }

    async fn ensure_image(&self, image: &str) -> Result<(), String> {
        if self.docker.inspect_image(image).await.is_ok() {
            return Ok(());
        }
        tracing::info!(image, "pulling image");
        let options = CreateImageOptionsBuilder::new().from_image(image).build();
        let mut pull = self.docker.create_image(Some(options), None, None);
        while let Some(progress) = pull.next().await {
            if let Err(err) = progress {
                return Err(format!("cannot pull image {image}: {err}"));
            }
        }
        self.docker
            .inspect_image(image)
            .await
            .map(|_| ())
            .map_err(|err| format!("image {image} is not available after pulling: {err}"))
    }

    /// Creates the container with the run's environment and `secret_env` (`NAME=value`), places
    /// its files, starts it.
    async fn create_and_start(
        &self,
        spec: &RunSpec,
        files: &[ContainerFile],
        secret_env: &[String],
        settings: &AgentSettings,
        name: &str,
    ) -> Result<String, bollard::errors::Error> {
        // A container of the same name is a leftover of an earlier agent of this instance.
        self.remove(name).await;
        let labels = HashMap::from([
            (INSTANCE_LABEL.to_string(), settings.instance_id.clone()),
            (RUN_LABEL.to_string(), spec.run_id.clone()),
        ]);
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: spec.argv.clone(),
            env: Some(spec.env.iter().chain(secret_env).cloned().collect()),
            labels: Some(labels),
            host_config: Some(host_config(&spec.limits, &notice_dir(&spec.run_id))),
            ..ContainerCreateBody::default()
        };
        let options = CreateContainerOptionsBuilder::new().name(name).build();
        let created = self.docker.create_container(Some(options), body).await?;
        if !files.is_empty() {
            let archive =
                files_archive(files).map_err(|e| bollard::errors::Error::IOError { err: e })?;
            let options = UploadToContainerOptionsBuilder::new().path("/").build();
            self.docker
                .upload_to_container(
                    &created.id,
                    Some(options),
                    bollard::body_full(archive.into()),
                )
                .await?;
        }
        self.docker.start_container(&created.id, None).await?;
        tracing::info!(container_id = %created.id, "container started");
        Ok(created.id)
    }

    async fn wait(&self, container_id: &str) -> Outcome {
        let mut wait = self.docker.wait_container(container_id, None);
        match wait.next().await {
            Some(Ok(response)) => Outcome::Exited(response.status_code),
            // bollard reports a non-zero exit as an error carrying the code.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                Outcome::Exited(code)
            }
            Some(Err(err)) => Outcome::Error(format!("lost the container: {err}")),
            None => Outcome::Error("the engine ended the wait without an exit code".into()),
        }
    }

    /// Stops a container the way its job asks: its stop signal first, then `grace` for it to end on
    /// its own (a checkpoint, say), then the kill. Returns whether it ended within the grace.
    pub async fn stop(&self, container: &str, signal: &str, grace: Duration) -> bool {
        let options = KillContainerOptions {
            signal: signal.to_string(),
        };
        if let Err(err) = self.docker.kill_container(container, Some(options)).await {
            tracing::warn!(container, signal, error = %err, "could not signal the container");
        }
        let ended = tokio::time::timeout(grace, self.wait(container))
            .await
            .is_ok();
        if !ended {
            tracing::warn!(
                container,
                grace_secs = grace.as_secs(),
                "still running after its grace: killed"
            );
        }
        self.remove(container).await;
        ended
    }

    /// Removes a container, running or not; absent is fine.
    pub async fn remove(&self, container: &str) {
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        match self.docker.remove_container(container, Some(options)).await {
            Ok(()) => {}
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(err) => tracing::warn!(container, error = %err, "could not remove the container"),
        }
    }
}

/// Where a container finds the notices its agent gives it: `interruption` holds a spot interruption
/// notice's time, written before the stop signal is sent.
pub const NOTICE_MOUNT: &str = "/run/spot";

/// The host directory mounted at [`NOTICE_MOUNT`] for a run.
pub fn notice_dir(run_id: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("spot-run-{run_id}"))
}

/// Makes the run's notice directory, empty.
pub fn prepare_notices(run_id: &str) -> std::io::Result<()> {
    let dir = notice_dir(run_id);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
}

/// Writes a notice the container can watch for (whole, by a rename).
pub fn give_notice(run_id: &str, name: &str, content: &str) -> std::io::Result<()> {
    let dir = notice_dir(run_id);
    let draft = dir.join(format!(".{name}"));
    std::fs::write(&draft, content)?;
    std::fs::rename(draft, dir.join(name))
}

/// Streams the container's stdout and stderr to the api in batches until the container ends;
/// returns how many bytes it read.
async fn forward_logs(docker: Docker, api: ApiClient, container_id: String) -> usize {
    let options = LogsOptionsBuilder::new()
        .follow(true)
        .stdout(true)
        .stderr(true)
        .build();
    let mut stream = docker.logs(&container_id, Some(options));
    let mut buffer = Vec::new();
    let mut read = 0;
    let mut tick = tokio::time::interval(LOG_FLUSH_EVERY);
    loop {
        tokio::select! {
            item = stream.next() => match item {
                Some(Ok(output)) => {
                    let bytes = output.into_bytes();
                    read += bytes.len();
                    buffer.extend_from_slice(&bytes);
                    if buffer.len() >= LOG_FLUSH_BYTES {
                        flush(&api, &mut buffer).await;
                    }
                }
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "output stream broke");
                    break;
                }
                None => break,
            },
            _ = tick.tick() => flush(&api, &mut buffer).await,
        }
    }
    flush(&api, &mut buffer).await;
    read
}

/// The most output read again after the container ends (the api keeps no more of a run's output).
const CATCH_UP_LIMIT: usize = 1 << 20;

/// Sends what the following stream missed: the engine may end a follow of a container that exits at
/// once before its last output (a short-lived container's whole output, even). The finished log is
/// read again and sent from where the stream stopped, up to [`CATCH_UP_LIMIT`].
async fn send_rest(docker: &Docker, api: &ApiClient, container_id: &str, sent: usize) {
    if sent >= CATCH_UP_LIMIT {
        return;
    }
    let options = LogsOptionsBuilder::new()
        .follow(false)
        .stdout(true)
        .stderr(true)
        .build();
    let mut stream = docker.logs(container_id, Some(options));
    let mut seen = 0;
    let mut rest = Vec::new();
    while let Some(item) = stream.next().await {
        let Ok(output) = item else { break };
        let bytes = output.into_bytes();
        let skip = sent.saturating_sub(seen).min(bytes.len());
        seen += bytes.len();
        rest.extend_from_slice(&bytes[skip..]);
        if seen >= CATCH_UP_LIMIT {
            break;
        }
    }
    if !rest.is_empty() {
        tracing::info!(bytes = rest.len(), "sending output the stream missed");
        flush(api, &mut rest).await;
    }
}

async fn flush(api: &ApiClient, buffer: &mut Vec<u8>) {
    if buffer.is_empty() {
        return;
    }
    let chunk = std::mem::take(buffer);
    if let Err(err) = api.append_logs(chunk).await {
        tracing::warn!(error = %err, "could not send output");
    }
}

/// Resolves once the value is true (at once if it is already, or if its sender is gone).
async fn until_true(mut flag: tokio::sync::watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}

pub async fn heartbeat(api: ApiClient, every_secs: u64) {
    let mut tick = tokio::time::interval(Duration::from_secs(every_secs));
    loop {
        tick.tick().await;
        if let Err(err) = api.heartbeat().await {
            tracing::warn!(error = %err, "heartbeat failed");
        }
    }
}

/// A tar archive of the job's files, to unpack at the container's root.
fn files_archive(files: &[ContainerFile]) -> std::io::Result<Vec<u8>> {
    let mut archive = tar::Builder::new(Vec::new());
    for file in files {
        let content = &file.content;
        let mut header = tar::Header::new_gnu();
        header.set_mode(file.mode);
        header.set_size(content.len() as u64);
        archive.append_data(
            &mut header,
            file.path.trim_start_matches('/'),
            content.as_slice(),
        )?;
    }
    archive.into_inner()
}

/// The container's bounds: its limits (zero means none, from an api older than limits; memory
/// without swap beyond it), and no privileges gained through setuid binaries.
fn host_config(limits: &AppliedLimits, notices: &std::path::Path) -> HostConfig {
    let set = |value: i64| (value > 0).then_some(value);
    HostConfig {
        // The container reads the notices it is given (`/run/spot/interruption`), never writes.
        binds: Some(vec![format!("{}:{NOTICE_MOUNT}:ro", notices.display())]),
        memory: set(limits.memory_bytes),
        memory_swap: set(limits.memory_bytes),
        nano_cpus: set(limits.nano_cpus),
        pids_limit: set(limits.pids),
        security_opt: Some(vec!["no-new-privileges:true".to_string()]),
        ..HostConfig::default()
    }
}
