//! The provisioner: consumes due timers, records each fire once as a run, arms the next occurrence,
//! and launches an instance for the run through the cloud provider.
//!
//! [`Provisioner::handle_fire`] is the whole of one message's work, callable without a broker consumer,
//! so tests can drive it directly. [`Provisioner::reconcile_once`] re-arms timers Redis says are overdue.

mod consumer;
mod launch;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use spot_shared::broker::Broker;
use spot_shared::cloud::Cloud;
use spot_shared::config::Settings;
use spot_shared::messages::FireMessage;
use spot_shared::schedule::Schedule;
use spot_shared::store::{FireRecord, Store};
use spot_shared::Result;

pub use launch::LaunchOutcome;

/// What became of one fire message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FireOutcome {
    /// The run was launched (or found launched already) by this message.
    Launched { run_id: String, new: bool },
    /// The run exists and is past launching; nothing to do.
    AlreadyHandled { run_id: String },
    /// The job is gone, disabled or changed since the timer was armed.
    Stale,
    /// The timer arrived before its time (delays beyond the top level); it was armed again.
    Rearmed,
    /// The launch failed for good; the run is `provision_failed`.
    ProvisionFailed { run_id: String },
}

/// The provisioner's shared parts.
#[derive(Clone)]
pub struct Provisioner {
    pub(crate) store: Store,
    pub(crate) broker: Arc<Broker>,
    pub(crate) cloud: Arc<Cloud>,
    pub(crate) settings: Arc<Settings>,
}

impl Provisioner {
    pub async fn build(settings: Settings) -> anyhow::Result<Provisioner> {
        let (store, broker) = spot_shared::connect(&settings).await?;
        let cloud =
            Cloud::from_settings(&settings.cloud).context("setting up the cloud provider")?;
        Ok(Provisioner {
            store,
            broker: Arc::new(broker),
            cloud: Arc::new(cloud),
            settings: Arc::new(settings),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Handles one fire: waits out the sub-unit remainder, checks the job still wants it, records the
    /// run once, arms the next occurrence and launches.
    pub async fn handle_fire(&self, fire: &FireMessage) -> Result<FireOutcome> {
        let early = (fire.scheduled_at - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        let unit = Duration::from_millis(
            self.settings.rabbitmq.timer_unit_ms + self.settings.rabbitmq.timer_lead_ms,
        );
        if early > unit {
            self.broker.arm_timer(fire, fire.scheduled_at).await?;
            return Ok(FireOutcome::Rearmed);
        }
        tokio::time::sleep(early).await;

        let Some(job) = self.store.get_job(&fire.job_id).await? else {
            return Ok(FireOutcome::Stale);
        };
        if job.generation != fire.generation || !job.enabled {
            return Ok(FireOutcome::Stale);
        }
        let (run_id, new) = match self
            .store
            .record_fire(&job, fire.generation, fire.scheduled_at)
            .await?
        {
            FireRecord::New(run_id) => (run_id, true),
            FireRecord::Existing(run_id) => (run_id, false),
            FireRecord::Stale => return Ok(FireOutcome::Stale),
        };
        if new {
            tracing::info!(job_id = %job.id, run_id = %run_id, scheduled_at = %fire.scheduled_at,
                lateness_ms = (Utc::now() - fire.scheduled_at).num_milliseconds(), "fired");
        }

        // Move the job's next fire time on (only if nobody else did), and arm it.
        let next = Schedule::parse(&job.schedule, "schedule")
            .ok()
            .and_then(|schedule| schedule.next_after(fire.scheduled_at));
        self.store
            .advance_timer(&job.id, fire.scheduled_at, next)
            .await?;
        if let Some(next) = next {
            let next_fire = FireMessage {
                job_id: job.id.clone(),
                generation: job.generation,
                scheduled_at: next,
            };
            if let Err(err) = self.broker.arm_timer(&next_fire, next).await {
                tracing::warn!(job_id = %job.id, error = %err, "next timer not armed; the reconciler will");
            }
        }

        Ok(match self.launch_run(&run_id).await? {
            LaunchOutcome::Launched | LaunchOutcome::FoundRunning => {
                FireOutcome::Launched { run_id, new }
            }
            LaunchOutcome::NothingToDo => FireOutcome::AlreadyHandled { run_id },
            LaunchOutcome::Failed => FireOutcome::ProvisionFailed { run_id },
        })
    }

    /// Re-arms every timer that Redis says is overdue by more than the grace period. Returns how many.
    pub async fn reconcile_once(&self) -> Result<usize> {
        let grace =
            chrono::Duration::seconds(self.settings.provisioner.reconcile_grace_secs as i64);
        let overdue = self.store.due_timers(Utc::now() - grace, 1000).await?;
        let mut armed = 0;
        for (job_id, due) in overdue {
            let Some(job) = self.store.get_job(&job_id).await? else {
                continue;
            };
            let fire = FireMessage {
                job_id,
                generation: job.generation,
                scheduled_at: due,
            };
            self.broker.arm_timer(&fire, due).await?;
            armed += 1;
        }
        if armed > 0 {
            tracing::warn!(armed, "re-armed overdue timers");
        }
        Ok(armed)
    }
}

/// Runs the provisioner until Ctrl-C or SIGTERM.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let provisioner = Provisioner::build(settings).await?;
    provisioner
        .run_until_stopped(spot_shared::shutdown_signal())
        .await
}
