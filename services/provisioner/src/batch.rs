//! Batches of fires from the timer pump.
//!
//! Light fires (the dummy runner, no policy that reads the job's history) are prepared as soon as the
//! batch arrives (job read, next fire time, output) and recorded at their instant, all those due
//! together in one Redis round trip ([`Store::fire_light`]). Any other fire goes on as a message of
//! its own through [`Provisioner::handle_fire`], where a launch's retries and failures concern it alone.
//!
//! A batch is acked when all its fires are done; one redelivered (a crash, a Redis error) fires
//! nothing twice: every fire is recorded once.
//!
//! [`Store::fire_light`]: spot_shared::store::Store::fire_light

use std::time::Duration;

use chrono::Utc;
use futures::future::try_join_all;
use spot_shared::messages::{FireBatch, FireMessage};
use spot_shared::model::{Job, Runner};
use spot_shared::store::{is_delayed, FireRecord, LatenessHistogram, LightFire, TimerMove};
use spot_shared::Result;

use crate::Provisioner;

/// Light fires per Lua script: Redis runs a script alone, so a long one would delay everyone else.
const LIGHT_FIRES_PER_SCRIPT: usize = 256;

/// What became of a batch's fires.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Recorded (and, being light, done) by this batch.
    pub fired: usize,
    /// Recorded before: a redelivered batch, or a fire that also came on its own.
    pub recorded_before: usize,
    /// Jobs gone, disabled or changed since their timers were taken.
    pub stale: usize,
    /// Sent on as messages of their own.
    pub handed_off: usize,
}

impl Provisioner {
    /// Handles a batch: light fires here, at their instants; the others as fire messages of their own.
    pub async fn handle_batch(&self, batch: &FireBatch) -> Result<BatchOutcome> {
        let ids: Vec<&str> = batch.fires.iter().map(|f| f.job_id.as_str()).collect();
        let jobs = self.store.get_jobs(&ids).await?;
        let mut outcome = BatchOutcome::default();
        // A fire further ahead than the pump hands timers over is held by the timer levels, not here.
        let hold_until = Utc::now() + self.pump_horizon().0 * 2;
        let mut light = Vec::new();
        let mut others: Vec<&FireMessage> = Vec::new();
        for (fire, job) in batch.fires.iter().zip(jobs) {
            let Some(job) = job.filter(|job| job.generation == fire.generation && job.enabled)
            else {
                outcome.stale += 1;
                continue;
            };
            match self.prepare_light(&job, fire) {
                Ok(Some(prepared)) if fire.scheduled_at <= hold_until => light.push(prepared),
                Ok(_) => others.push(fire),
                Err(err) => {
                    // Its own message fails (or dead-letters) alone.
                    tracing::warn!(job_id = %job.id, error = %err, "light fire not prepared");
                    others.push(fire);
                }
            }
        }
        try_join_all(
            others
                .iter()
                .map(|fire| self.broker.arm_timer(fire, fire.scheduled_at)),
        )
        .await?;
        outcome.handed_off = others.len();

        light.sort_by_key(|fire| fire.scheduled_at);
        let mut waiting = light.as_slice();
        while let Some(next) = waiting.first() {
            let early = (next.scheduled_at - Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO);
            tokio::time::sleep(early).await;
            let now = Utc::now();
            // Never early: a timer may wake a hair before the wall clock says so.
            let due = waiting.partition_point(|fire| fire.scheduled_at <= now);
            if due == 0 {
                continue;
            }
            let (group, later) = waiting.split_at(due);
            for chunk in group.chunks(LIGHT_FIRES_PER_SCRIPT) {
                let records = self
                    .store
                    .fire_light(chunk, now, self.settings.api.max_log_bytes)
                    .await?;
                let written = Utc::now();
                let mut lateness = LatenessHistogram::default();
                for (record, fire) in records.into_iter().zip(chunk) {
                    match record {
                        FireRecord::New(_) => {
                            lateness.observe(fire.scheduled_at, written);
                            outcome.fired += 1;
                        }
                        FireRecord::Existing(run_id) => {
                            // Recorded by an earlier delivery, which may have stopped half-way.
                            self.launch_run(&run_id).await?;
                            outcome.recorded_before += 1;
                        }
                        FireRecord::Passed
                        | FireRecord::Forbidden(_)
                        | FireRecord::Misfired
                        | FireRecord::Finished
                        | FireRecord::Queued(_)
                        | FireRecord::QueueFull => outcome.recorded_before += 1,
                        FireRecord::Stale => outcome.stale += 1,
                    }
                }
                // One batch is one shard's timers: its first job's shard keeps the counts.
                if let Some(first) = chunk.first() {
                    self.store
                        .note_fire_lateness(&lateness, &first.job_id)
                        .await;
                }
            }
            waiting = later;
        }
        // Retries and run-nows handled here are done with; those sent on are let go of by their own
        // message.
        for fire in batch.fires.iter().filter(|fire| is_delayed(fire)) {
            if !others.contains(&fire) {
                self.store.forget_fire(fire).await?;
            }
        }
        Ok(outcome)
    }

    /// The fire prepared for [`Store::fire_light`] if it is light: the dummy runner, no policy that
    /// needs the job's earlier runs, and nothing its ending sets off (chained jobs, notifications:
    /// a light run is written ended, without the step that notes them). `None` for any other.
    ///
    /// [`Store::fire_light`]: spot_shared::store::Store::fire_light
    pub(crate) fn prepare_light(&self, job: &Job, fire: &FireMessage) -> Result<Option<LightFire>> {
        let Runner::Dummy(spec) = &job.runner else {
            return Ok(None);
        };
        let sets_off_work = !job.policies.on_success.is_empty() || self.store.notifies(job);
        if crate::policies_read_history(job) || sets_off_work {
            return Ok(None);
        }
        let timer = if fire.attempt == 1 && !fire.manual {
            // As on every path (a light job's catch-up is `latest`: the first fire after now, so
            // downtime costs one fire, not a burst).
            let catch_up = spot_shared::catch_up::step(job, fire.scheduled_at, Utc::now())?;
            TimerMove::Advance(catch_up.next)
        } else {
            TimerMove::Leave
        };
        Ok(Some(LightFire {
            run_id: self.store.new_run_id(&job.id),
            job_id: job.id.clone(),
            account: job.account.clone(),
            generation: fire.generation,
            attempt: fire.attempt,
            scheduled_at: fire.scheduled_at,
            timer,
            keep_runs: job.policies.history_limit,
            output: spec.render(&job.account),
        }))
    }
}
