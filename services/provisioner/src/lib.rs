//! The provisioner: consumes due timers, records each fire once as a run, arms the next occurrence,
//! and launches an instance for the run through the cloud provider.
//!
//! [`Provisioner::handle_fire`] is the whole of one message's work, callable without a broker consumer,
//! so tests can drive it directly. [`Provisioner::reconcile_once`] hands fires Redis says are overdue
//! back to the timer pump.

mod batch;
mod consumer;
mod http_runner;
mod launch;
mod run_quotas;
mod shard_leases;
mod timer_pump;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::DateTime;
use chrono::Utc;
pub use shard_leases::{ShardLeases, LEASE_TTL};
use spot_shared::broker::Broker;
use spot_shared::cloud::Cloud;
use spot_shared::config::Settings;
use spot_shared::instance_power::Ec2;
use spot_shared::messages::{FireMessage, TerminateRequest};
use spot_shared::model::{CatchUp, Concurrency, Job, OnLastRun};
use spot_shared::policy;
use spot_shared::store::{
    ArrayStep, CancelledRun, FireRecord, FireStep, JobRecord, LatenessHistogram, LightFire,
    ReconcileReport, Store, TimerMove,
};
use spot_shared::Result;

pub use batch::BatchOutcome;
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
    /// The job's timer had moved past this fire: it was fired before (a redelivery).
    Passed,
    /// The timer arrived before its time (delays beyond the top level); it was armed again.
    Rearmed,
    /// The launch failed for good; the run is `provision_failed`.
    ProvisionFailed { run_id: String },
    /// A policy skipped the fire: `misfire` (too late: the misfire grace or the catch-up policy),
    /// `concurrency` (a run is active, `forbid`), `queue_full` (as many fires wait as `queue` or
    /// `queue_all` allow) or `max_runs` (the schedule is over).
    Skipped { reason: &'static str },
    /// The job's stored record cannot be read: it was set aside (see `Store::quarantine_job`).
    Quarantined,
    /// A run of the job is under way: this fire's run waits, `queued`, and starts when it ends.
    Queued { run_id: String },
}

/// What the first half of a fire's work ([`Provisioner::record`]) left to do.
#[derive(Debug)]
pub enum Recorded {
    /// Nothing: the fire was skipped, stale, passed, re-armed, or light and done at once.
    Done(FireOutcome),
    /// The run to launch (`new` when this delivery recorded it).
    Run {
        run_id: String,
        new: bool,
        job: Box<Job>,
    },
}

/// The provisioner's shared parts.
#[derive(Clone)]
pub struct Provisioner {
    pub(crate) store: Store,
    pub(crate) broker: Arc<Broker>,
    pub(crate) cloud: Arc<Cloud>,
    pub(crate) ec2: Arc<Ec2>,
    pub(crate) settings: Arc<Settings>,
    pub(crate) shard_leases: Arc<ShardLeases>,
    /// Reads containers' `secrets` for agents started on this host (the local provider).
    pub(crate) secrets: Option<spot_shared::secrets::SecretResolver>,
    /// Held by the timer pump for each round, and by a stopping provisioner so that it never stops
    /// the pump mid-round (see [`Provisioner::run_until_stopped`]).
    pub(crate) pump_round: Arc<tokio::sync::Mutex<()>>,
}

impl Provisioner {
    pub async fn build(settings: Settings) -> anyhow::Result<Provisioner> {
        let (store, broker) = spot_shared::connect(&settings).await?;
        let cloud = Cloud::from_settings(&settings)
            .await
            .context("setting up the cloud provider")?;
        let ec2 = Ec2::for_deployment(&settings).await;
        let secrets = spot_shared::secrets::SecretResolver::for_deployment(&settings);
        Ok(Provisioner {
            secrets,
            store,
            broker: Arc::new(broker),
            cloud: Arc::new(cloud),
            ec2: Arc::new(ec2),
            settings: Arc::new(settings),
            shard_leases: Arc::new(ShardLeases::new()),
            pump_round: Arc::default(),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Handles one fire: waits out the sub-unit remainder, checks the job still wants it, applies the
    /// misfire and concurrency policies, records the run once, arms the next occurrence and launches.
    /// A retry or run-now is let go of in Redis once handled (see [`Store::forget_fire`]).
    pub async fn handle_fire(&self, fire: &FireMessage) -> Result<FireOutcome> {
        let outcome = self.fire_once(fire).await?;
        if outcome != FireOutcome::Rearmed {
            self.store.forget_fire(fire).await?;
        }
        Ok(outcome)
    }

    async fn fire_once(&self, fire: &FireMessage) -> Result<FireOutcome> {
        // Boxed: the two halves' futures together are too deep for the compiler's layout queries.
        let (run_id, new, job) = match Box::pin(self.record(fire)).await? {
            Recorded::Done(outcome) => return Ok(outcome),
            Recorded::Run { run_id, new, job } => (run_id, new, job),
        };
        let Some(run) = self.store.get_run(&run_id).await? else {
            return Ok(FireOutcome::AlreadyHandled { run_id });
        };
        Ok(match self.launch(run, &job).await? {
            LaunchOutcome::Launched | LaunchOutcome::FoundRunning => {
                FireOutcome::Launched { run_id, new }
            }
            LaunchOutcome::NothingToDo => FireOutcome::AlreadyHandled { run_id },
            LaunchOutcome::Failed => FireOutcome::ProvisionFailed { run_id },
        })
    }

    /// The first half of a fire's work: waits out the sub-unit remainder, checks the job still
    /// wants the fire and records it, in one Redis step with the timer's move and the misfire and
    /// concurrency decisions ([`Store::record_fire_step`]). A fire lost before this step leaves its
    /// timer for the reconciler; one lost after it leaves a recorded run, which the sweeps relaunch.
    /// Public so that tests can lose a fire exactly between the two halves.
    pub async fn record(&self, fire: &FireMessage) -> Result<Recorded> {
        let early = (fire.scheduled_at - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        let unit = Duration::from_millis(
            self.settings.rabbitmq.timer_unit_ms + self.settings.rabbitmq.timer_lead_ms,
        );
        if early > unit {
            self.broker.arm_timer(fire, fire.scheduled_at).await?;
            return Ok(Recorded::Done(FireOutcome::Rearmed));
        }
        tokio::time::sleep(early).await;

        let job = match self.store.read_job(&fire.job_id).await? {
            JobRecord::Found(job) => *job,
            JobRecord::Missing => return Ok(Recorded::Done(FireOutcome::Stale)),
            JobRecord::Unreadable(why) => {
                // Poison: set aside with the reason, never fired or re-armed again until released.
                let reason = format!("stored job cannot be read: {why}");
                self.store.quarantine_job(&fire.job_id, &reason).await?;
                return Ok(Recorded::Done(FireOutcome::Quarantined));
            }
        };
        if job.generation != fire.generation || !job.enabled {
            return Ok(Recorded::Done(FireOutcome::Stale));
        }
        if let Some(run_id) = &fire.run_id {
            if let Some(recorded) = self.record_array_retry(&job, run_id, fire).await? {
                return Ok(recorded);
            }
            // A backfill's run, started by its backfill, or an array's copy: launched by its id.
            return Ok(Recorded::Run {
                run_id: run_id.clone(),
                new: false,
                job: Box::new(job),
            });
        }
        if fire.relaunch {
            // A run that never started: found by its fire's marker, launched again as it is.
            return Ok(
                match self
                    .store
                    .fire_run(&job.id, fire.scheduled_at, fire.attempt)
                    .await?
                {
                    Some(run_id) => Recorded::Run {
                        run_id,
                        new: false,
                        job: Box::new(job),
                    },
                    None => Recorded::Done(FireOutcome::Stale),
                },
            );
        }
        if let Some(light) = self.prepare_light(&job, fire)? {
            return self.fire_light(light).await.map(Recorded::Done);
        }
        let scheduled = fire.attempt == 1 && !fire.manual;
        // Whatever becomes of this fire, the schedule moves on, as its catch-up policy says: by
        // default to the first fire after now, so a job that missed several fires during downtime
        // runs once for all of them.
        let (timer, too_late) = if scheduled {
            let catch_up = spot_shared::catch_up::step(&job, fire.scheduled_at, Utc::now())?;
            (
                TimerMove::Advance(catch_up.next),
                !catch_up.run || misfired(&job, fire),
            )
        } else {
            (TimerMove::Leave, false)
        };
        let step = FireStep {
            generation: fire.generation,
            scheduled_at: fire.scheduled_at,
            attempt: fire.attempt,
            interruptions: fire.interruptions,
            timer,
            too_late,
        };
        let recorded = self.store.record_fire_step(&job, &step).await?;
        let (run_id, new) = match recorded.record {
            FireRecord::New(run_id) => (run_id, true),
            FireRecord::Existing(run_id) => (run_id, false),
            FireRecord::Forbidden(active) => {
                tracing::info!(job_id = %job.id, active_run = %active,
                    "a run is under way: fire skipped (concurrency forbid)");
                return Ok(Recorded::Done(FireOutcome::Skipped {
                    reason: "concurrency",
                }));
            }
            FireRecord::Misfired => {
                tracing::warn!(job_id = %job.id, late_ms = (Utc::now() - fire.scheduled_at).num_milliseconds(),
                    "late fire skipped (misfire grace or catch_up)");
                // A skipped last fire ends the schedule with no run to end it.
                policy::finish_if_over(&self.store, &job).await?;
                return Ok(Recorded::Done(FireOutcome::Skipped { reason: "misfire" }));
            }
            FireRecord::Queued(run_id) => {
                tracing::info!(job_id = %job.id, run_id = %run_id, "a run is under way: fire queued");
                return Ok(Recorded::Done(FireOutcome::Queued { run_id }));
            }
            FireRecord::QueueFull => {
                tracing::info!(job_id = %job.id, "a run is under way and the queue is full: fire skipped");
                self.store.note_event("queue_full_skip", 1).await;
                return Ok(Recorded::Done(FireOutcome::Skipped {
                    reason: "queue_full",
                }));
            }
            FireRecord::Finished => {
                tracing::info!(job_id = %job.id, "max_runs reached: fire skipped, schedule over");
                policy::finish_if_over(&self.store, &job).await?;
                return Ok(Recorded::Done(FireOutcome::Skipped { reason: "max_runs" }));
            }
            FireRecord::Passed => return Ok(Recorded::Done(FireOutcome::Passed)),
            FireRecord::Stale => return Ok(Recorded::Done(FireOutcome::Stale)),
        };
        self.terminate_cancelled(&job, &recorded.cancelled).await;
        // Recorded: a retry or run-now is no longer the reconciler's to heal, however long the launch.
        self.store.forget_fire(fire).await?;
        if new {
            self.note_lateness(&fire.job_id, fire.scheduled_at).await;
            tracing::info!(job_id = %job.id, run_id = %run_id, scheduled_at = %fire.scheduled_at,
                attempt = fire.attempt, lateness_ms = (Utc::now() - fire.scheduled_at).num_milliseconds(),
                "fired");
            self.store
                .trim_runs(&job.id, job.policies.history_limit)
                .await?;
        }
        Ok(Recorded::Run {
            run_id,
            new,
            job: Box::new(job),
        })
    }

    /// Records a light fire, done at once (see [`batch`]); a fire recorded before is finished if a crash
    /// stopped it half-way.
    async fn fire_light(&self, light: LightFire) -> Result<FireOutcome> {
        let records = self
            .store
            .fire_light(
                std::slice::from_ref(&light),
                Utc::now(),
                self.settings.api.max_log_bytes,
            )
            .await?;
        Ok(match records.into_iter().next() {
            Some(FireRecord::New(run_id)) => {
                self.note_lateness(&light.job_id, light.scheduled_at).await;
                FireOutcome::Launched { run_id, new: true }
            }
            Some(FireRecord::Existing(run_id)) => match self.launch_run(&run_id).await? {
                LaunchOutcome::NothingToDo => FireOutcome::AlreadyHandled { run_id },
                _ => FireOutcome::Launched { run_id, new: false },
            },
            Some(FireRecord::Passed) => FireOutcome::Passed,
            // Light fires have no concurrency, misfire or max_runs policy; kept for completeness.
            Some(
                FireRecord::Forbidden(_)
                | FireRecord::Misfired
                | FireRecord::Finished
                | FireRecord::Queued(_)
                | FireRecord::QueueFull,
            ) => FireOutcome::Skipped {
                reason: "concurrency",
            },
            Some(FireRecord::Stale) | None => FireOutcome::Stale,
        })
    }

    /// Adds one fire of `job_id`, written just now, to the lateness histogram.
    async fn note_lateness(&self, job_id: &str, scheduled_at: DateTime<Utc>) {
        let mut lateness = LatenessHistogram::default();
        lateness.observe(scheduled_at, Utc::now());
        self.store.note_fire_lateness(&lateness, job_id).await;
    }

    /// The next attempt of an array copy, when `fire` is its retry (a later attempt than the copy
    /// it names): recorded once, however often the retry is delivered. `None` when the fire
    /// launches the copy it names.
    async fn record_array_retry(
        &self,
        job: &Job,
        run_id: &str,
        fire: &FireMessage,
    ) -> Result<Option<Recorded>> {
        let ended = match self.store.get_run(run_id).await? {
            Some(run) if run.array_parent().is_some() && run.attempt < fire.attempt => run,
            _ => return Ok(None),
        };
        let record = self
            .store
            .record_array_retry(job, &ended, fire.attempt, fire.interruptions)
            .await?;
        let (run_id, new) = match record {
            FireRecord::New(id) => (id, true),
            FireRecord::Existing(id) => (id, false),
            _ => {
                // Nothing to retry (the array ended meanwhile): its step settles the index.
                self.store.forget_fire(fire).await?;
                if let Some(parent) = ended.array_parent() {
                    let index = ended.array_index();
                    spot_shared::arrays::advance(&self.store, Some(job), parent, index).await?;
                }
                return Ok(Some(Recorded::Done(FireOutcome::Stale)));
            }
        };
        self.store.forget_fire(fire).await?;
        if new {
            tracing::info!(job_id = %job.id, run_id, follows = %ended.id, attempt = fire.attempt,
                "array copy retried");
        }
        Ok(Some(Recorded::Run {
            run_id,
            new,
            job: Box::new(job.clone()),
        }))
    }

    /// Asks the reaper to terminate the instances of runs a `replace` fire cancelled, each container
    /// given its job's stop signal and grace first; an array fire cancelled so takes its copies
    /// with it. A request that cannot be sent now is left to the sweep, which terminates any
    /// instance whose run has ended (at once).
    async fn terminate_cancelled(&self, job: &Job, cancelled: &[CancelledRun]) {
        let mut cancelled = cancelled.to_vec();
        if job.array().is_some() {
            for run in cancelled.clone() {
                match spot_shared::arrays::advance(&self.store, Some(job), &run.run_id, None).await
                {
                    Ok(ArrayStep::Ended(copies)) => cancelled.extend(copies),
                    Ok(_) => {}
                    Err(err) => tracing::warn!(run_id = %run.run_id, error = %err,
                        "an array's copies were not cancelled; the sweep will"),
                }
            }
        }
        for run in &cancelled {
            tracing::info!(run_id = %run.run_id, "run cancelled (concurrency replace)");
            let Some(instance_id) = &run.instance_id else {
                continue;
            };
            let request = TerminateRequest {
                instance_id: instance_id.clone(),
                run_id: run.run_id.clone(),
                reason: "run cancelled (concurrency replace)".into(),
                stop_grace_secs: job.stop_grace_secs(),
            };
            if let Err(err) = self.broker.request_terminate(&request).await {
                tracing::warn!(run_id = %run.run_id, error = %err,
                    "termination not requested; the sweep will end the instance");
            }
        }
    }

    /// Hands every fire Redis says is due and unfired (scheduled timers, retries, run-nows), overdue
    /// by more than the grace, back to the pump, which arms them in batches. Work in flight is left
    /// alone: a fire is overdue only once its instant plus the grace has passed without its run being
    /// recorded (a scheduled one moves its job's timer on; a retry or run-now leaves
    /// `timers:delayed`), which a healthy system does within milliseconds. Re-arming a fire that was
    /// only slow is harmless: it is recorded once.
    pub async fn reconcile_once(&self) -> Result<ReconcileReport> {
        let grace =
            chrono::Duration::seconds(self.settings.provisioner.reconcile_grace_secs as i64);
        let report = self
            .store
            .requeue_overdue(Utc::now() - grace, RECONCILE_PAGE)
            .await?;
        if report != ReconcileReport::default() {
            tracing::warn!(?report, "overdue fires handed back to the pump");
            let healed = (report.scheduled + report.delayed) as u64;
            self.store.note_event("reconciled_fire", healed).await;
        }
        Ok(report)
    }

    /// Hands back to the pump every fire due before the pump's horizon is out and not yet recorded:
    /// what RabbitMQ held may be gone (see [`Provisioner::check_broker_after_link`]; `why` says
    /// what made it look so), and without this the reconciler would find it only once overdue by
    /// its grace. Fires that were not lost arrive twice or more and are recorded once; the cost is
    /// one horizon of timers per loss per provisioner.
    pub async fn rearm_within_horizon(&self, why: &str) -> Result<ReconcileReport> {
        let (ahead, _) = self.pump_horizon();
        let report = self
            .store
            .requeue_overdue(Utc::now() + ahead, RECONCILE_PAGE)
            .await?;
        tracing::warn!(
            ?report,
            why,
            "fires within the horizon handed back to the pump"
        );
        self.store
            .note_event(
                "rearmed_after_link_loss",
                (report.scheduled + report.delayed) as u64,
            )
            .await;
        Ok(report)
    }

    /// What a new link to RabbitMQ (`after_loss`: not this provisioner's first) calls for: the
    /// fires within the horizon handed back to the pump ([`Provisioner::rearm_within_horizon`]) when
    /// RabbitMQ may have lost the timers it held, and the broker's marker left again if it is gone.
    /// It may have lost them:
    /// - after a lost link (a restart, a wiped vhost, deleted queues). Every provisioner re-arms on
    ///   each of its own new links, with no turn shared between them: a wipe deletes queues one by
    ///   one, and a provisioner that re-made its link midway may refill a level deleted next, so a
    ///   turn held by it would keep the re-arm after the next loss from happening;
    /// - when the broker has lost the marker a provisioner left in it before (the store remembers
    ///   that one was left), even on a first link: the queues were deleted or the node replaced
    ///   while no provisioner was linked, and the api or the reaper may have declared them again,
    ///   empty, since.
    ///
    /// The hand-back comes before the marker, so a crash between the two re-arms again next time
    /// rather than not at all. Returns the hand-back's report, if there was one.
    pub async fn check_broker_after_link(
        &self,
        after_loss: bool,
    ) -> Result<Option<ReconcileReport>> {
        // The store's note first: it is written after the marker, so a provisioner starting beside
        // one that is leaving the first marker never reads the note without the marker.
        let marked_before = self.store.broker_marked().await?;
        let marker_present = self.broker.state_marker_present().await?;
        let why = if after_loss {
            Some("RabbitMQ link made again")
        } else if marked_before && !marker_present {
            Some("RabbitMQ has lost the marker left in it: its queues were deleted or replaced")
        } else {
            None
        };
        let report = match why {
            Some(why) => Some(self.rearm_within_horizon(why).await?),
            None => None,
        };
        if !marker_present {
            self.broker.leave_state_marker().await?;
            self.store.note_broker_marked().await?;
        }
        Ok(report)
    }

    /// One reconcile pass, unless another provisioner holds this period's (then `None`): the work
    /// does not multiply with the number of provisioners.
    pub async fn reconcile_if_due(&self) -> Result<Option<ReconcileReport>> {
        if !self
            .store
            .take_turn("provisioner:reconcile", self.reconcile_period())
            .await?
        {
            return Ok(None);
        }
        self.reconcile_once().await.map(Some)
    }

    pub(crate) fn reconcile_period(&self) -> Duration {
        Duration::from_secs(self.settings.provisioner.reconcile_interval_secs.max(1))
    }
}

/// Overdue fires handed back per Redis script: a page costs Redis a few milliseconds.
const RECONCILE_PAGE: usize = 2000;

/// Whether the job's policies read its earlier runs when it fires (misfire, concurrency): such a job
/// is never fired on the light path.
fn policies_read_history(job: &Job) -> bool {
    let policies = &job.policies;
    policies.misfire_grace_secs.is_some()
        || policies.concurrency != Concurrency::Allow
        || policies.catch_up != CatchUp::Latest
        || policies.max_runs.is_some()
        || policies.on_last_run != OnLastRun::Keep
}

/// Whether the misfire policy skips a fire this late (only a scheduled first attempt: a retry or a
/// run-now is never too late). The store skips it only if it was not recorded before.
fn misfired(job: &Job, fire: &FireMessage) -> bool {
    if fire.attempt > 1 || fire.manual {
        return false;
    }
    // Bounded at the door; a grace too long to count in (stored before the bound) means none.
    let Some(grace) = job
        .policies
        .misfire_grace_secs
        .and_then(|secs| i64::try_from(secs).ok())
        .and_then(chrono::Duration::try_seconds)
    else {
        return false;
    };
    Utc::now() - fire.scheduled_at > grace
}

/// Runs the provisioner until Ctrl-C or SIGTERM.
/// [`run`] on a multi-threaded runtime of its own: what `main` calls. The runtime is built here, not
/// by `#[tokio::main]` in `main.rs`, so the service's futures are compiled once, in this crate: polled
/// from the binary they were compiled again there (BENCHMARKS.md, "A fresh machine").
pub fn run_blocking(settings: Settings) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(settings))
}

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let provisioner = Provisioner::build(settings).await?;
    provisioner
        .run_until_stopped(spot_shared::shutdown_signal())
        .await
}
