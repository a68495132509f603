//! The http runner (HRM's tasks): GET the action URL with `hrm_task_id` added and hold it until the
//! worker answers or the run's timeout passes; record `[status] body` as the run's output; then GET the
//! callback URL with `hrm_task_id`. The work runs on a task of its own, so the fire is acknowledged at
//! once; targets are checked against the outbound policy when called.

use std::time::Duration;

use spot_shared::instance_power::{InstanceInfo, PowerAction};
use spot_shared::model::{HttpSpec, Job, Run, RunState};
use spot_shared::outbound::{check_url, checked_addresses, OutboundSettings};
use spot_shared::store::{SlotKind, Store};
use spot_shared::task_instances;
use spot_shared::Result;

use crate::launch::LaunchOutcome;
use crate::run_quotas::HTTP_SLOT_HOLD;
use crate::Provisioner;

/// How often a starting or stopping instance is looked at.
const INSTANCE_POLL: Duration = Duration::from_secs(2);

/// How often a run held by this provisioner says it is alive (as agents do).
const HEARTBEAT: Duration = Duration::from_secs(15);

/// Body bytes kept of an action's or callback's answer.
const KEPT_BODY: usize = 4096;
/// How long a task's callback may take.
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(60);

impl Provisioner {
    pub(crate) async fn start_http(&self, run: &Run, job: &Job) -> Result<LaunchOutcome> {
        let spot_shared::model::Runner::Http(spec) = &job.runner else {
            return Ok(LaunchOutcome::NothingToDo);
        };
        match run.state {
            RunState::Pending => {
                self.store
                    .advance_run(&run.id, RunState::Running, &[])
                    .await?;
            }
            // Already started by an earlier delivery: it runs (or was lost with its provisioner).
            _ => return Ok(LaunchOutcome::NothingToDo),
        }
        let this = self.clone();
        let (run, spec) = (run.clone(), spec.clone());
        let timeout = Duration::from_secs(job.policies.timeout_secs);
        let task_id = job.id.clone();
        tokio::spawn(async move {
            // The run heartbeats while this provisioner holds it: if the provisioner dies, the reaper's
            // sweep sees the silence and ends the run as lost instead of leaving it running for ever.
            let work = this.run_http(&run, &spec, &task_id, timeout);
            tokio::select! {
                outcome = work => if let Err(err) = outcome {
                    tracing::error!(run_id = %run.id, error = %err, "http run failed to record");
                },
                _ = this.heartbeat(&run) => {}
            }
            // Held until now; if this fails, the slot's hold runs out on its own.
            if let Err(err) = this
                .store
                .release_slot(SlotKind::HttpTask, &run.account, &run.id)
                .await
            {
                tracing::warn!(run_id = %run.id, error = %err, "http task slot not released");
            }
        });
        Ok(LaunchOutcome::Launched)
    }

    /// Marks the run alive, and renews its slot among the account's open HTTP tasks, every
    /// [`HEARTBEAT`] until dropped.
    async fn heartbeat(&self, run: &Run) {
        let mut beats = tokio::time::interval(HEARTBEAT);
        loop {
            beats.tick().await;
            let now = chrono::Utc::now().to_rfc3339();
            if let Err(err) = self
                .store
                .set_run_fields(&run.id, &[("heartbeat_at", now)])
                .await
            {
                tracing::warn!(run_id = %run.id, error = %err, "heartbeat not recorded");
            }
            // The limit is not checked again: a slot taken is kept until the task ends.
            let renewed = self
                .store
                .take_slot(
                    SlotKind::HttpTask,
                    &run.account,
                    &run.id,
                    u64::MAX,
                    HTTP_SLOT_HOLD,
                )
                .await;
            if let Err(err) = renewed {
                tracing::warn!(run_id = %run.id, error = %err, "http task slot not renewed");
            }
        }
    }

    async fn run_http(
        &self,
        run: &Run,
        spec: &HttpSpec,
        task_id: &str,
        timeout: Duration,
    ) -> Result<()> {
        let Some(instance_id) = &spec.instance_id else {
            let outbound = &self.settings.outbound;
            return self
                .run_http_action(run, spec, &spec.action_url, outbound, task_id, timeout)
                .await;
        };
        // The instance is needed from now until the task ends, whatever happens in between.
        let users = HttpSpec::users_set(instance_id);
        self.store.set_add(&users, &run.id).await?;
        let outcome =
            match tokio::time::timeout(timeout, self.ensure_instance(instance_id, &run.account))
                .await
            {
                Ok(Ok(info)) => {
                    // A URL naming the task's own instance (the account's, checked by its tag)
                    // reaches it at its address in the VPC: private ranges are allowed for it.
                    let names_instance = ["{dns_name}", "{private_dns_name}"]
                        .iter()
                        .any(|p| spec.action_url.contains(p));
                    let outbound = OutboundSettings {
                        allow_private: self.settings.outbound.allow_private || names_instance,
                        ..self.settings.outbound.clone()
                    };
                    let url = spec
                        .action_url
                        .replace("{dns_name}", info.dns_name.as_deref().unwrap_or(""))
                        .replace(
                            "{private_dns_name}",
                            info.private_dns_name.as_deref().unwrap_or(""),
                        );
                    self.run_http_action(run, spec, &url, &outbound, task_id, timeout)
                        .await
                }
                Ok(Err(err)) => {
                    self.fail_http(run, spec, task_id, RunState::Failed, err.to_string())
                        .await
                }
                Err(_) => {
                    self.fail_http(run, spec, task_id, RunState::TimedOut, "timeout".into())
                        .await
                }
            };
        task_instances::release(&self.store, &self.ec2, &run.id, instance_id, &run.account).await?;
        outcome
    }

    /// Records a task that never reached its action, and makes its callback.
    async fn fail_http(
        &self,
        run: &Run,
        spec: &HttpSpec,
        task_id: &str,
        end: RunState,
        meta: String,
    ) -> Result<()> {
        self.record_output(run, meta.as_bytes()).await?;
        self.end_light(run, end, &[("meta", meta)]).await?;
        self.callback(run, spec, task_id).await
    }

    /// Gets the instance running: starts it if stopped (and remembers that we did), waits while it is
    /// pending or stopping. Returns it, with its host names, once it runs.
    async fn ensure_instance(&self, instance_id: &str, account: &str) -> Result<InstanceInfo> {
        loop {
            let info = self.ec2.owned_instance(instance_id, account).await?;
            match info.state.as_str() {
                "running" => return Ok(info),
                "stopped" => {
                    self.store
                        .set_add(&HttpSpec::controlled_set(account), instance_id)
                        .await?;
                    self.ec2
                        .power(instance_id, account, PowerAction::Start)
                        .await?;
                    tracing::info!(instance_id, "started the instance for a task");
                }
                "pending" | "stopping" => {}
                other => {
                    return Err(spot_shared::Error::conflict(format!(
                        "instance {instance_id} is {other}"
                    )))
                }
            }
            tokio::time::sleep(INSTANCE_POLL).await;
        }
    }

    async fn run_http_action(
        &self,
        run: &Run,
        spec: &HttpSpec,
        action_url: &str,
        outbound: &OutboundSettings,
        task_id: &str,
        timeout: Duration,
    ) -> Result<()> {
        let (end, meta) = match self.call(run, action_url, outbound, task_id, timeout).await {
            Ok((200, body)) => (RunState::Succeeded, format!("[200] {body}")),
            Ok((status, body)) => (RunState::Failed, format!("[{status}] {body}")),
            Err(CallFailure::TimedOut) => (RunState::TimedOut, "timeout".to_string()),
            Err(CallFailure::Other(reason)) => (RunState::Failed, reason),
        };
        self.record_output(run, meta.as_bytes()).await?;
        self.end_light(run, end, &[("meta", meta.clone())]).await?;
        tracing::info!(run_id = %run.id, state = %end, "http action done");
        self.callback(run, spec, task_id).await
    }

    /// GETs the task's callback URL, if it has one, and records how that went.
    async fn callback(&self, run: &Run, spec: &HttpSpec, task_id: &str) -> Result<()> {
        if let Some(callback) = &spec.callback_url {
            let outbound = &self.settings.outbound;
            let status = match self
                .call(run, callback, outbound, task_id, CALLBACK_TIMEOUT)
                .await
            {
                Ok((200, _)) => "complete".to_string(),
                Ok((code, body)) => format!("[{code}] {body}"),
                Err(CallFailure::TimedOut) => "timeout".to_string(),
                Err(CallFailure::Other(reason)) => reason,
            };
            record(&self.store, &run.id, "callback_status", status).await?;
        }
        Ok(())
    }

    /// GETs `url` with `hrm_task_id` added and the run's identity in `X-Spot-*` headers, if the outbound policy allows its target: the name is
    /// resolved once, checked, and the request connects to the checked addresses only (redirects are
    /// not followed). Reads at most the [`KEPT_BODY`] bytes it keeps. A failure to connect is told
    /// without saying what (a refusal, a reset): that would map what listens where.
    async fn call(
        &self,
        run: &Run,
        url: &str,
        outbound: &OutboundSettings,
        task_id: &str,
        timeout: Duration,
    ) -> Result<(u16, String), CallFailure> {
        let mut url = check_url(url).map_err(|reason| CallFailure::Other(reason.to_string()))?;
        url.query_pairs_mut().append_pair("hrm_task_id", task_id);
        let addresses = checked_addresses(&url, outbound)
            .await
            .map_err(|e| CallFailure::Other(e.message))?;
        let mut client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(domain) = url.domain() {
            client = client.resolve_to_addrs(domain, &addresses);
        }
        let client = client
            .build()
            .map_err(|e| CallFailure::Other(format!("http client: {e}")))?;
        let failed = |e: reqwest::Error| {
            if e.is_timeout() {
                CallFailure::TimedOut
            } else {
                CallFailure::Other("could not reach the URL".to_string())
            }
        };
        let mut request = client.get(url);
        for (name, value) in run.identity_headers() {
            request = request.header(name, value);
        }
        let mut response = request.send().await.map_err(failed)?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while body.len() < KEPT_BODY {
            match response.chunk().await.map_err(failed)? {
                Some(chunk) => body.extend_from_slice(&chunk),
                None => break,
            }
        }
        body.truncate(KEPT_BODY);
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

enum CallFailure {
    TimedOut,
    Other(String),
}

async fn record(store: &Store, run_id: &str, field: &str, value: String) -> Result<()> {
    store.set_run_fields(run_id, &[(field, value)]).await
}
