//! Job policies that act at run time: retries with exponential backoff and full jitter.

use chrono::{DateTime, Utc};
use rand::Rng;

use crate::broker::Broker;
use crate::error::Result;
use crate::messages::FireMessage;
use crate::model::{Job, Run, RunState};

/// A reclaimed spot instance is not the job's fault: retry it at least this many attempts in all.
const MIN_ATTEMPTS_AFTER_INTERRUPTION: u32 = 3;

/// Whether a run that ended in `ended` gets another attempt under its job's policy.
pub fn should_retry(job: &Job, run: &Run, ended: RunState) -> bool {
    let allowed = match ended {
        RunState::Failed | RunState::TimedOut | RunState::ProvisionFailed => {
            job.policies.retries.max_attempts
        }
        RunState::Interrupted => job
            .policies
            .retries
            .max_attempts
            .max(MIN_ATTEMPTS_AFTER_INTERRUPTION),
        _ => return false,
    };
    job.enabled && run.attempt < allowed
}

/// Arms the next attempt of `run` if the policy allows; returns when it is due.
pub async fn retry_if_allowed(
    broker: &Broker,
    job: &Job,
    run: &Run,
    ended: RunState,
) -> Result<Option<DateTime<Utc>>> {
    if !should_retry(job, run, ended) {
        return Ok(None);
    }
    let next_attempt = run.attempt + 1;
    let ceiling = job.policies.retries.backoff_ceiling(next_attempt);
    let jitter_ms = rand::rng().random_range(0..=ceiling.as_millis() as u64);
    let due = Utc::now() + chrono::Duration::milliseconds(jitter_ms as i64);
    let fire = FireMessage {
        job_id: job.id.clone(),
        generation: job.generation,
        scheduled_at: run.scheduled_at,
        attempt: next_attempt,
        manual: false,
    };
    broker.arm_timer(&fire, due).await?;
    tracing::info!(job_id = %job.id, run_id = %run.id, next_attempt, %due, "retry armed");
    Ok(Some(due))
}
