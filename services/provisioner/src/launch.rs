//! Launching a run's instance, idempotently: whatever crashed before, a repeated launch of the same run
//! and attempt ends with one instance.

use chrono::Utc;
use spot_shared::cloud::AgentBoot;
use spot_shared::model::{
    DummySpec, Instance, InstanceSpec, InstanceState, Job, Run, RunState, Runner,
};
use spot_shared::store::Moved;
use spot_shared::{ids, policy};
use spot_shared::{Error, Result};

/// How long a launch may hold its run's lease: past this a crashed launcher no longer blocks a retry.
const LAUNCH_LEASE: std::time::Duration = std::time::Duration::from_secs(60);

use crate::Provisioner;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchOutcome {
    Launched,
    /// The instance was already alive (a redelivered message after a crash).
    FoundRunning,
    /// The run is past launching.
    NothingToDo,
    /// The provider refused for good; the run is `provision_failed`.
    Failed,
}

impl Provisioner {
    /// Launches the run's instance unless it is launched already. One launch of a run at a time: a
    /// second delivery of the same fire waits (retryable error) while the first holds the lease.
    pub async fn launch_run(&self, run_id: &str) -> Result<LaunchOutcome> {
        let lease_name = format!("launch:{run_id}");
        let Some(token) = self.store.try_lease(&lease_name, LAUNCH_LEASE).await? else {
            return Err(Error::unavailable(format!(
                "run {run_id} is being launched by another delivery"
            )));
        };
        let outcome = self.launch_run_leased(run_id).await;
        if let Err(err) = self.store.release_lease(&lease_name, &token).await {
            tracing::warn!(run_id, error = %err, "could not release the launch lease; it will expire");
        }
        outcome
    }

    async fn launch_run_leased(&self, run_id: &str) -> Result<LaunchOutcome> {
        let Some(run) = self.store.get_run(run_id).await? else {
            return Ok(LaunchOutcome::NothingToDo);
        };
        match self.store.get_job(&run.job_id).await? {
            Some(Job {
                runner: Runner::Dummy(spec),
                ..
            }) => return self.run_light(&run, &spec).await,
            Some(
                job @ Job {
                    runner: Runner::Http(_),
                    ..
                },
            ) => return self.start_http(&run, &job).await,
            Some(Job {
                runner: Runner::Instance(spec),
                ..
            }) => return self.run_instance_action(&run, &spec).await,
            _ => {}
        }
        if !matches!(run.state, RunState::Pending | RunState::Provisioning) {
            return Ok(LaunchOutcome::NothingToDo);
        }
        if let Moved::From(_) = self
            .store
            .advance_run(run_id, RunState::Provisioning, &[])
            .await?
        {
            tracing::debug!(run_id, "provisioning");
        }

        let instance_id = self.cloud.instance_id_for(&run.id, run.attempt);
        // Look first: if a crash came after the launch, the instance is there and must be kept as is
        // (its agent holds the secret already recorded).
        if self.cloud.find(&instance_id).await?.is_some() {
            self.store
                .advance_run(
                    run_id,
                    RunState::Booting,
                    &[("instance_id", instance_id.clone())],
                )
                .await?;
            return Ok(LaunchOutcome::FoundRunning);
        }

        let secret = ids::new_secret();
        self.store
            .set_run_fields(
                run_id,
                &[
                    ("secret_hash", ids::hash_secret(&secret)),
                    ("instance_id", instance_id.clone()),
                ],
            )
            .await?;
        let now = Utc::now();
        self.store
            .create_instance(&Instance {
                id: instance_id.clone(),
                run_id: run.id.clone(),
                provider: self.cloud.name().to_string(),
                state: InstanceState::Requested,
                instance_type: None,
                dns_name: None,
                ip_address: None,
                ready: false,
                transitions: [(InstanceState::Requested, now)].into(),
            })
            .await?;

        let boot = AgentBoot {
            run_id: run.id.clone(),
            api_url: self.settings.api.public_url.clone(),
            secret,
        };
        match self.cloud.launch(&instance_id, &boot).await {
            Ok(launched) => {
                let mut fields = Vec::new();
                for (field, value) in [
                    ("instance_type", launched.instance_type),
                    ("dns_name", launched.dns_name),
                    ("ip_address", launched.ip_address),
                ] {
                    if let Some(value) = value {
                        fields.push((field, value));
                    }
                }
                self.store
                    .set_instance_fields(&instance_id, &fields)
                    .await?;
                self.store
                    .advance_run(run_id, RunState::Booting, &[])
                    .await?;
                tracing::info!(run_id, instance_id, "instance launched");
                Ok(LaunchOutcome::Launched)
            }
            Err(err) if err.is_retryable() => Err(err),
            Err(err) => {
                tracing::error!(run_id, instance_id, error = %err, "launch failed");
                self.store
                    .advance_run(
                        run_id,
                        RunState::ProvisionFailed,
                        &[("error", err.to_string())],
                    )
                    .await?;
                self.store
                    .advance_instance(&instance_id, InstanceState::Terminated, &[])
                    .await?;
                if let Some(job) = self.store.get_job(&run.job_id).await? {
                    policy::retry_if_allowed(&self.broker, &job, &run, RunState::ProvisionFailed)
                        .await?;
                }
                Ok(LaunchOutcome::Failed)
            }
        }
    }
}

impl Provisioner {
    /// Minion's instance runner: start, stop or reboot an instance of the run's account, by the EC2 API.
    async fn run_instance_action(&self, run: &Run, spec: &InstanceSpec) -> Result<LaunchOutcome> {
        if !self.start_light(run).await? {
            return Ok(LaunchOutcome::NothingToDo);
        }
        let outcome = self
            .ec2
            .power(&spec.instance_id, &run.account, spec.action)
            .await;
        let (end, output, fields) = match outcome {
            Ok(state) => (
                RunState::Succeeded,
                format!("instance {} is {state}", spec.instance_id),
                vec![("exit_code", "0".to_string())],
            ),
            // A passing failure (throttling, an outage): requeue the fire and try again.
            Err(err) if err.is_retryable() => return Err(err),
            Err(err) => (
                RunState::Failed,
                err.to_string(),
                vec![("error", err.to_string())],
            ),
        };
        self.finish_light(run, &output, end, &fields).await?;
        tracing::info!(run_id = %run.id, instance_id = %spec.instance_id, state = %end, "instance action done");
        Ok(LaunchOutcome::Launched)
    }

    /// Runs a job that needs no instance (the dummy runner) right here: pending → running → succeeded.
    async fn run_light(&self, run: &Run, spec: &DummySpec) -> Result<LaunchOutcome> {
        if !self.start_light(run).await? {
            return Ok(LaunchOutcome::NothingToDo);
        }
        let output = spec.render(&run.account);
        self.finish_light(
            run,
            &output,
            RunState::Succeeded,
            &[("exit_code", "0".into())],
        )
        .await?;
        tracing::info!(run_id = %run.id, "light run done");
        Ok(LaunchOutcome::Launched)
    }

    /// Moves a light run to running; `false` if it is past that. A run found running already is one a
    /// crash interrupted between starting and finishing: it is finished now.
    async fn start_light(&self, run: &Run) -> Result<bool> {
        match run.state {
            RunState::Pending => {
                self.store
                    .advance_run(&run.id, RunState::Running, &[])
                    .await?;
                Ok(true)
            }
            RunState::Running => Ok(true),
            _ => Ok(false),
        }
    }

    /// Records a light run's output and its end.
    async fn finish_light(
        &self,
        run: &Run,
        output: &str,
        end: RunState,
        fields: &[(&str, String)],
    ) -> Result<()> {
        self.store
            .append_log(&run.id, output.as_bytes(), self.settings.api.max_log_bytes)
            .await?;
        self.store.advance_run(&run.id, end, fields).await?;
        Ok(())
    }
}
