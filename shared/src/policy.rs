//! Job policies that act at run time: retries with exponential backoff and full jitter, armed durably.

use chrono::{DateTime, Utc};
use rand::Rng;

use crate::error::Result;
use crate::messages::FireMessage;
use crate::model::{Job, Run, RunState};
use crate::store::{Moved, Store};

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

/// The next attempt of `run` if its job's policy allows one after it ended in `ended`: the fire and
/// when it is due (exponential backoff with full jitter). The caller hands both to
/// [`Store::end_run`](crate::store::Store::end_run), which records the retry in the same step that
/// ends the run, so no crash in between can lose it.
pub fn next_attempt(job: &Job, run: &Run, ended: RunState) -> Option<(FireMessage, DateTime<Utc>)> {
    if !should_retry(job, run, ended) {
        return None;
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
        relaunch: false,
    };
    tracing::info!(job_id = %job.id, run_id = %run.id, next_attempt, %due, "retry armed");
    Some((fire, due))
}

/// Ends `run` in `ended` with `fields`, arming its next attempt in the same step if `job` (when it
/// still exists) allows one. What [`Store::end_run`](crate::store::Store::end_run) returned.
pub async fn end_run(
    store: &Store,
    job: Option<&Job>,
    run: &Run,
    ended: RunState,
    fields: &[(&str, String)],
) -> Result<Moved<RunState>> {
    let retry = job.and_then(|job| next_attempt(job, run, ended));
    store
        .end_run(
            &run.id,
            ended,
            fields,
            retry.as_ref().map(|(fire, due)| (fire, *due)),
        )
        .await
}
