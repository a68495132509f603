//! Launching a run's instance, idempotently: whatever crashed before, a repeated launch of the same run
//! and attempt ends with one instance.

use chrono::Utc;
use spot_shared::cloud::{AgentBoot, LaunchRequest, Launched};
use spot_shared::model::{
    ContainerSpec, DummySpec, Instance, InstanceSpec, InstanceState, Job, Run, RunState, Runner,
};
use spot_shared::store::{ArrayStep, Moved, SlotKind};
use spot_shared::{ids, policy};
use spot_shared::{Error, Result};

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
    /// Launches the run's instance unless it is launched already (or performs its light runner).
    pub async fn launch_run(&self, run_id: &str) -> Result<LaunchOutcome> {
        let Some(run) = self.store.get_run(run_id).await? else {
            return Ok(LaunchOutcome::NothingToDo);
        };
        let Some(job) = self.store.get_job(&run.job_id).await? else {
            return Ok(LaunchOutcome::NothingToDo);
        };
        self.launch(run, &job).await
    }

    /// Launches `run` of `job`. One launch of a run at a time: a second delivery of the same fire waits
    /// (retryable error) while the first holds the run's lease.
    pub(crate) async fn launch(&self, run: Run, job: &Job) -> Result<LaunchOutcome> {
        // The dummy runner touches nothing but its run, whose every move is a compare-and-set: no
        // lease (two Redis round trips saved on the hottest path).
        if let Runner::Dummy(spec) = &job.runner {
            return self.run_light(&run, spec).await;
        }
        // An array fire's own run launches nothing: it makes its copies, which launch on their own.
        if job.array().is_some() && run.array_parent().is_none() {
            return self.start_array(&run, job).await;
        }
        let lease_name = format!("launch:{}", run.id);
        let lease_ttl = std::time::Duration::from_secs(self.settings.provisioner.launch_lease_secs);
        let Some(token) = self.store.try_lease(&lease_name, lease_ttl).await? else {
            return Err(Error::unavailable(format!(
                "run {} is being launched by another delivery",
                run.id
            )));
        };
        // Read again under the lease: another delivery may have moved it on meanwhile.
        let outcome = match self.store.get_run(&run.id).await {
            Ok(Some(run)) => self.launch_leased(&run, job).await,
            Ok(None) => Ok(LaunchOutcome::NothingToDo),
            Err(err) => Err(err),
        };
        if let Err(err) = self.store.release_lease(&lease_name, &token).await {
            tracing::warn!(run_id = %run.id, error = %err, "could not release the launch lease; it will expire");
        }
        outcome
    }

    /// Expands an array fire into its copies (once: a redelivery finds it expanded) and starts the
    /// first of them. A crash between the two leaves the start to the next delivery or the sweep.
    async fn start_array(&self, run: &Run, job: &Job) -> Result<LaunchOutcome> {
        let expanded = match run.state {
            RunState::Pending => self.store.expand_array(job, run).await?,
            RunState::Running if run.is_array_parent() => false,
            _ => return Ok(LaunchOutcome::NothingToDo),
        };
        let step = spot_shared::arrays::advance(&self.store, Some(job), &run.id, None).await?;
        if let ArrayStep::Ended(cancelled) = step {
            self.terminate_cancelled(job, &cancelled).await;
        }
        Ok(match expanded {
            true => LaunchOutcome::Launched,
            false => LaunchOutcome::NothingToDo,
        })
    }

    async fn launch_leased(&self, run: &Run, job: &Job) -> Result<LaunchOutcome> {
        if let Some(refused) = self.admit(run, job).await? {
            return Ok(refused);
        }
        match &job.runner {
            Runner::Dummy(spec) => self.run_light(run, spec).await,
            Runner::Http(_) => self.start_http(run, job).await,
            Runner::Instance(spec) => self.run_instance_action(run, spec).await,
            Runner::Container(spec) => self.launch_container(run, job, spec).await,
        }
    }

    /// Launches the instance of a container run, at most once per attempt: the cloud is asked first
    /// whether the attempt has an instance already, and a launch whose answer was lost is not
    /// repeated until the cloud's listings have had time to show its instance.
    async fn launch_container(
        &self,
        run: &Run,
        job: &Job,
        spec: &ContainerSpec,
    ) -> Result<LaunchOutcome> {
        if !matches!(run.state, RunState::Pending | RunState::Provisioning) {
            return Ok(LaunchOutcome::NothingToDo);
        }
        if let Moved::From(_) = self
            .store
            .advance_run(&run.id, RunState::Provisioning, &[])
            .await?
        {
            tracing::debug!(run_id = %run.id, "provisioning");
        }

        // A crash after an earlier launch: keep that instance as it is (its agent holds the secret
        // already recorded).
        if let Some(found) = self.cloud.find_launch(&run.id, run.attempt).await? {
            // A launch of the attempt that the sweep or the api is terminating (it never started
            // the container): wait for the cloud to let it go rather than take it back.
            let dying = self
                .store
                .get_instance(&found.instance_id)
                .await?
                .is_some_and(|instance| {
                    matches!(
                        instance.state,
                        InstanceState::Terminating | InstanceState::Terminated
                    )
                });
            if dying {
                return Err(Error::unavailable(format!(
                    "run {} attempt {}: its earlier instance {} is being terminated",
                    run.id, run.attempt, found.instance_id
                )));
            }
            tracing::warn!(run_id = %run.id, instance_id = %found.instance_id, "instance found launched already");
            self.record_launch(run, &found).await?;
            return Ok(LaunchOutcome::FoundRunning);
        }
        if let Some(since) = self.store.launch_intent(&run.id, run.attempt).await? {
            let settle =
                chrono::Duration::seconds(self.settings.provisioner.launch_settle_secs as i64);
            if Utc::now() - since < settle {
                return Err(Error::unavailable(format!(
                    "the launch of run {} attempt {} at {since} is in doubt; waiting for the cloud to list it",
                    run.id, run.attempt
                )));
            }
            tracing::warn!(run_id = %run.id, %since, "an earlier launch left no instance; launching again");
        }

        // On this host the agent gets the secrets' values from here; on EC2 it reads them itself.
        let secret_values = match &self.secrets {
            Some(resolver) if self.cloud.is_local() && !spec.secrets.is_empty() => {
                match resolver.resolve(&spec.secrets).await {
                    Ok(values) => values,
                    Err(err) if err.is_retryable() => return Err(err),
                    Err(err) => {
                        tracing::warn!(run_id = %run.id, error = %err, "a secret could not be read");
                        self.store
                            .release_slot(SlotKind::Instance, &run.account, &run.id)
                            .await?;
                        let fields = [("error", err.to_string())];
                        policy::end_run(&self.store, Some(job), run, RunState::Failed, &fields)
                            .await?;
                        return Ok(LaunchOutcome::Failed);
                    }
                }
            }
            _ => Vec::new(),
        };
        let secret = ids::new_secret();
        self.store
            .set_run_fields(&run.id, &[("secret_hash", ids::hash_secret(&secret))])
            .await?;
        let boot = AgentBoot {
            run_id: run.id.clone(),
            api_url: self.settings.api.public_url.clone(),
            secret,
            heartbeat_secs: self.settings.reaper.agent_heartbeat_secs,
        };
        // Far into its budget, an account gets spot capacity or nothing.
        let spot_only;
        let spec = if spec.on_demand_fallback && self.on_demand_refused(&run.account).await? {
            tracing::info!(run_id = %run.id, account = %run.account,
                "on-demand fallback refused: the account is past quotas.on_demand_budget_fraction of its budget");
            spot_only = ContainerSpec {
                on_demand_fallback: false,
                ..spec.clone()
            };
            &spot_only
        } else {
            spec
        };
        let request = LaunchRequest {
            run_id: &run.id,
            attempt: run.attempt,
            relaunches: run.relaunches,
            account: &run.account,
            job_id: &job.id,
            spec,
            boot: &boot,
            secret_values: &secret_values,
        };
        self.store.mark_launch_intent(&run.id, run.attempt).await?;
        match self.cloud.launch(&request).await {
            Ok(launched) => {
                self.record_launch(run, &launched).await?;
                self.store.clear_launch_intent(&run.id, run.attempt).await?;
                tracing::info!(run_id = %run.id, instance_id = %launched.instance_id,
                    lifecycle = ?launched.lifecycle, "instance launched");
                let market = launched.lifecycle.as_deref().unwrap_or("unknown");
                self.store.note_event(&format!("launch_{market}"), 1).await;
                self.store
                    .note_event("spot_pool_failure", launched.pool_errors.len() as u64)
                    .await;
                Ok(LaunchOutcome::Launched)
            }
            Err(failure) if failure.error.is_retryable() => {
                if !failure.may_have_launched {
                    self.store.clear_launch_intent(&run.id, run.attempt).await?;
                }
                Err(failure.error)
            }
            Err(failure) => {
                self.store.clear_launch_intent(&run.id, run.attempt).await?;
                self.store
                    .release_slot(SlotKind::Instance, &run.account, &run.id)
                    .await?;
                tracing::error!(run_id = %run.id, error = %failure.error, "launch failed");
                self.store.note_event("provision_failed", 1).await;
                self.store
                    .note_event("spot_pool_failure", failure.pool_errors.len() as u64)
                    .await;
                let mut fields = vec![("error", failure.error.to_string())];
                if !failure.pool_errors.is_empty() {
                    fields.push(("launch_errors", failure.pool_errors.join("\n")));
                }
                policy::end_run(
                    &self.store,
                    Some(job),
                    run,
                    RunState::ProvisionFailed,
                    &fields,
                )
                .await?;
                Ok(LaunchOutcome::Failed)
            }
        }
    }

    /// Records a launched instance and moves its run to booting.
    async fn record_launch(&self, run: &Run, launched: &Launched) -> Result<()> {
        let price = self.cloud.price(launched, &self.settings.pricing).await;
        self.store
            .create_instance(&Instance {
                id: launched.instance_id.clone(),
                run_id: run.id.clone(),
                provider: self.cloud.name().to_string(),
                state: InstanceState::Requested,
                instance_type: launched.instance_type.clone(),
                dns_name: launched.dns_name.clone(),
                ip_address: launched.ip_address.clone(),
                lifecycle: launched.lifecycle.clone(),
                ready: false,
                transitions: [(InstanceState::Requested, Utc::now())].into(),
                zone: launched.zone.clone(),
                usd_per_hour: Some(price.usd_per_hour),
                price_source: Some(price.source),
                billed_secs: None,
                cost_nano_usd: None,
                leaked_secs: None,
            })
            .await?;
        let mut fields = vec![("instance_id", launched.instance_id.clone())];
        if !launched.pool_errors.is_empty() {
            fields.push(("launch_errors", launched.pool_errors.join("\n")));
        }
        match self
            .store
            .advance_run(&run.id, RunState::Booting, &fields)
            .await
        {
            Ok(_) => Ok(()),
            // Cancelled while launching: the instance has nothing to run.
            Err(err) if err.code == spot_shared::ErrorCode::Conflict => {
                self.broker
                    .request_terminate(&spot_shared::messages::TerminateRequest {
                        instance_id: launched.instance_id.clone(),
                        run_id: run.id.clone(),
                        reason: "run ended while its instance launched".into(),
                        stop_grace_secs: 0,
                    })
                    .await
            }
            Err(err) => Err(err),
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
        self.record_output(run, output.as_bytes()).await?;
        self.end_light(run, end, fields).await
    }

    /// Ends a run this provisioner ran itself (light, or an HTTP action) as its job's policies say:
    /// retried, counted toward a pause, ending a finite schedule ([`policy::end_run`]).
    pub(crate) async fn end_light(
        &self,
        run: &Run,
        end: RunState,
        fields: &[(&str, String)],
    ) -> Result<()> {
        let job = self.store.get_job(&run.job_id).await?;
        policy::end_run(&self.store, job.as_ref(), run, end, fields).await?;
        Ok(())
    }

    /// Adds to a run's output, within the run's cap and its account's history quota.
    pub(crate) async fn record_output(&self, run: &Run, output: &[u8]) -> Result<()> {
        let account_cap = self.settings.quotas.max_history_bytes(&run.account);
        self.store
            .append_log(run, output, self.settings.api.max_log_bytes, account_cap)
            .await?;
        Ok(())
    }
}
