//! Job policies that act at run time: retries with exponential backoff and full jitter, armed durably,
//! and relaunches of runs that never started the user's code (not counted against retries).

use chrono::{DateTime, Utc};
use rand::Rng;

use crate::error::Result;
use crate::messages::FireMessage;
use crate::model::{Job, OnLastRun, RetryReason, Run, RunState};
use crate::store::{Moved, QueueStep, Relaunch, Store};

/// Whether a run that ended in `ended` (with `exit_code`, if its container exited) gets another
/// attempt under its job's policy: its retry rules must retry the ending, and an attempt must be
/// left. A reclaimed spot instance is not the job's fault: interrupted attempts count against
/// `retries.max_interruptions`, never against `retries.max_attempts`.
pub fn should_retry(job: &Job, run: &Run, ended: RunState, exit_code: Option<i64>) -> bool {
    let retries = &job.policies.retries;
    let Some(reason) = RetryReason::of(ended) else {
        return false;
    };
    // A backfill's runs are one attempt each: run the backfill again for what failed. An array
    // fire's own run is never retried: its copies are, each on its own.
    if run.backfill.is_some() || run.is_array_parent() {
        return false;
    }
    if !retries.retries_ending(reason, exit_code) {
        return false;
    }
    let allowed = match ended {
        RunState::Failed | RunState::TimedOut | RunState::ProvisionFailed => {
            run.attempt.saturating_sub(run.interruptions) < retries.max_attempts
        }
        RunState::Interrupted => run.interruptions < retries.max_interruptions,
        _ => false,
    };
    job.enabled && allowed
}

/// The next attempt of `run` if its job's policy allows one after it ended in `ended`: the fire and
/// when it is due (exponential backoff with full jitter). The caller hands both to
/// [`Store::end_run`](crate::store::Store::end_run), which records the retry in the same step that
/// ends the run, so no crash in between can lose it.
pub fn next_attempt(
    job: &Job,
    run: &Run,
    ended: RunState,
    exit_code: Option<i64>,
) -> Option<(FireMessage, DateTime<Utc>)> {
    if !should_retry(job, run, ended, exit_code) {
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
        interruptions: run.interruptions + u32::from(ended == RunState::Interrupted),
        // An array copy's retry names the copy it follows (see `Store::record_array_retry`).
        run_id: run.array_parent().map(|_| run.id.clone()),
    };
    tracing::info!(job_id = %job.id, run_id = %run.id, next_attempt, %due, "retry armed");
    Some((fire, due))
}

/// Ends `run` in `ended` with `fields`, arming its next attempt in the same step if `job` (when it
/// still exists) allows one (its retry rules read the `exit_code` among `fields`). What
/// [`Store::end_run`](crate::store::Store::end_run) returned.
pub async fn end_run(
    store: &Store,
    job: Option<&Job>,
    run: &Run,
    ended: RunState,
    fields: &[(&str, String)],
) -> Result<Moved<RunState>> {
    let exit_code = fields
        .iter()
        .find(|(name, _)| *name == "exit_code")
        .and_then(|(_, code)| code.parse().ok());
    let retry = job.and_then(|job| next_attempt(job, run, ended, exit_code));
    if let Some(parent) = run.array_parent() {
        return end_array_copy(store, job, run, parent, ended, fields, retry).await;
    }
    // Noted in the same step as the ending, so the chained jobs start once per ending.
    let chained =
        job.is_some_and(|job| !crate::chain::targets(job, ended, retry.is_some()).is_empty());
    let chain_at = chained.then(|| {
        DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap_or_else(Utc::now)
    });
    let moved = store
        .end_run(
            &run.id,
            ended,
            fields,
            retry.as_ref().map(|(fire, due)| (fire, *due)),
            chain_at,
        )
        .await?;
    if let (Moved::From(_), Some(job), Some(at)) = (moved, job, chain_at) {
        let ended_run = Run {
            state: ended,
            ..run.clone()
        };
        if let Err(err) = crate::chain::start(store, job, &ended_run, at).await {
            tracing::warn!(job_id = %job.id, run_id = %run.id, error = %err,
                "chained jobs not started; the sweep will");
        }
    }
    // Counted only by the step that moved the run: an ending reported again counts once.
    if let (Moved::From(_), Some(job)) = (moved, job) {
        if let Err(err) = count_toward_pause(store, job, run, ended, retry.is_some()).await {
            tracing::warn!(job_id = %job.id, run_id = %run.id, error = %err,
                "the run's outcome was not counted toward pause_after_failures");
        }
        if let Some(backfill) = &run.backfill {
            // The backfill's next run starts now; a crash before this step leaves it to the sweep.
            if let Err(err) = store.start_backfill_runs(job, backfill).await {
                tracing::warn!(job_id = %job.id, backfill, error = %err,
                    "the backfill's next run was not started; the sweep will");
            }
        }
        if job
            .policies
            .concurrency
            .queue_bound(job.policies.max_queued)
            > 0
        {
            // The next waiting fire starts now; a crash before this step leaves it to the sweep.
            match store.start_next_queued(&job.id, Some(job)).await {
                Ok(QueueStep::Started(next)) => {
                    tracing::info!(job_id = %job.id, run_id = %next, after = %run.id, "queued run started");
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(job_id = %job.id, error = %err,
                    "the next queued run was not started; the sweep will"),
            }
        }
        if retry.is_none() {
            if let Err(err) = finish_if_over(store, job).await {
                tracing::warn!(job_id = %job.id, run_id = %run.id, error = %err,
                    "on_last_run not applied");
            }
        }
    }
    Ok(moved)
}

/// Ends an array copy, arming its retry in the same step: a copy's ending chains, notifies and
/// counts toward nothing of its own (its parent does, once every copy has ended). The array's next
/// step is taken now; a crash before it leaves it to the sweep.
async fn end_array_copy(
    store: &Store,
    job: Option<&Job>,
    run: &Run,
    parent: &str,
    ended: RunState,
    fields: &[(&str, String)],
    retry: Option<(FireMessage, DateTime<Utc>)>,
) -> Result<Moved<RunState>> {
    let retry = retry.as_ref().map(|(fire, due)| (fire, *due));
    let moved = store.end_run(&run.id, ended, fields, retry, None).await?;
    if let Moved::From(_) = moved {
        let index = run.array_index();
        if let Err(err) = Box::pin(crate::arrays::advance(store, job, parent, index)).await {
            tracing::warn!(run_id = %run.id, parent, error = %err,
                "the array's next step was not taken; the sweep will");
        }
    }
    Ok(moved)
}

/// Applies the job's `on_last_run` if its schedule is over (no fire to come: `max_runs` reached, past
/// `end_at`, a one-shot fired) and none of its runs is under way: called as a run ends for good, so
/// the last to end applies it. `true` if the job was disabled or deleted now. Deleting goes through
/// disabling, so that a crash between the two leaves a disabled job, never a firing one.
pub async fn finish_if_over(store: &Store, job: &Job) -> Result<bool> {
    if job.policies.on_last_run == OnLastRun::Keep || !job.enabled {
        return Ok(false);
    }
    let now = Utc::now();
    let disabled = Job {
        enabled: false,
        generation: job.generation + 1,
        updated_at: now,
        next_fire_at: None,
        ..job.clone()
    };
    if !store.disable_job_if_over(&disabled, job.generation).await? {
        return Ok(false);
    }
    if job.policies.on_last_run == OnLastRun::Delete {
        store
            .delete_job_keeping_runs(&disabled, crate::store::DELETED_JOB_RUNS_TTL_SECS)
            .await?;
        tracing::info!(job_id = %job.id, "schedule over and its last run ended: job deleted");
    } else {
        tracing::info!(job_id = %job.id, "schedule over and its last run ended: job disabled");
    }
    store.note_event("schedule_finished", 1).await;
    Ok(true)
}

/// Counts a run's end toward its job's `pause_after_failures`, and pauses the job, with a note
/// saying why, once that many runs in a row have ended failed for good (an attempt that is retried
/// has not ended its fire; an interrupted or cancelled run is not the job's failure and neither
/// counts nor ends a streak).
async fn count_toward_pause(
    store: &Store,
    job: &Job,
    run: &Run,
    ended: RunState,
    retried: bool,
) -> Result<()> {
    // A job paused or disabled meanwhile: its runs still in flight count toward nothing.
    let Some(limit) = job.policies.pause_after_failures.filter(|_| job.enabled) else {
        return Ok(());
    };
    let failed = matches!(
        ended,
        RunState::Failed | RunState::TimedOut | RunState::ProvisionFailed
    );
    if (failed && retried) || !(failed || ended == RunState::Succeeded) {
        return Ok(());
    }
    let in_a_row = store.count_run_outcome(&job.id, failed).await?;
    if !failed || in_a_row < u64::from(limit) {
        return Ok(());
    }
    let note = format!(
        "paused after {in_a_row} runs in a row ended failed (pause_after_failures {limit}; the last: run {}, {ended})",
        run.id
    );
    let paused = job.clone().paused_with(note, Utc::now());
    if store
        .pause_job_if_current(&paused, job.generation, &run.id)
        .await?
    {
        tracing::warn!(job_id = %job.id, in_a_row, "job paused after failing in a row");
        store.note_event("paused_after_failures", 1).await;
    }
    Ok(())
}

/// What [`relaunch`] did with a run that never started the user's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relaunched {
    /// Launched again (as the same attempt) after a backoff; this many relaunches so far.
    Armed(u32),
    /// Its relaunches had run out: it ended `provision_failed` (and is retried if its policy allows).
    ProvisionFailed,
    /// Its job is gone: it ended `failed`.
    JobGone,
    /// It moved on meanwhile (launched, or ended some other way): nothing done.
    Moved,
}

/// Launches a run that never started the user's code again, as the same attempt, after a backoff
/// (1 s, doubling up to a minute), until it has had `max_relaunches`; then it ends `provision_failed`
/// with every reason kept. A `booting` run's instance must be terminated before; a `running` one is an
/// HTTP action whose provisioner went silent.
pub async fn relaunch(
    store: &Store,
    job: Option<&Job>,
    run: &Run,
    why: &str,
    max_relaunches: u32,
) -> Result<Relaunched> {
    let Some(job) = job else {
        let fields = [("error", why.to_string())];
        return Ok(
            match end_run(store, None, run, RunState::Failed, &fields).await? {
                Moved::From(_) => Relaunched::JobGone,
                Moved::AlreadyThere => Relaunched::Moved,
            },
        );
    };
    let backoff_secs = 1i64 << run.relaunches.min(6);
    let due = Utc::now() + chrono::Duration::seconds(backoff_secs);
    match store
        .relaunch_run(run, job.generation, due, max_relaunches, why)
        .await?
    {
        Relaunch::Armed(count) => {
            tracing::warn!(run_id = %run.id, relaunch = count, %due, why, "run never started: launched again");
            Ok(Relaunched::Armed(count))
        }
        Relaunch::Moved => Ok(Relaunched::Moved),
        Relaunch::Exhausted => {
            let mut reasons = run.relaunch_reasons.clone();
            reasons.push(why.to_string());
            let error = format!(
                "provision failed: never ran to its end after {} relaunches ({})",
                run.relaunches,
                reasons.join("; ")
            );
            let fields = [("error", error)];
            match end_run(store, Some(job), run, RunState::ProvisionFailed, &fields).await {
                Ok(Moved::From(_)) => Ok(Relaunched::ProvisionFailed),
                Ok(Moved::AlreadyThere) => Ok(Relaunched::Moved),
                Err(err) if err.code == crate::ErrorCode::Conflict => Ok(Relaunched::Moved),
                Err(err) => Err(err),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DummySpec, Policies, RetryPolicy, Runner};

    fn job(max_attempts: u32, max_interruptions: u32) -> Job {
        let runner = Runner::Dummy(DummySpec {
            template: "x".into(),
            runner_name: None,
        });
        let policies = Policies {
            retries: RetryPolicy {
                max_attempts,
                max_interruptions,
                ..RetryPolicy::default()
            },
            ..Policies::default()
        };
        Job::for_tests(runner, policies)
    }

    fn run(attempt: u32, interruptions: u32) -> Run {
        Run {
            attempt,
            interruptions,
            ..Run::default()
        }
    }

    #[test]
    fn interruptions_have_their_own_bound_and_never_use_up_retries() {
        let retrying = job(2, 3);
        // Two interruptions, then a failure: still a retry left of max_attempts 2.
        assert!(should_retry(
            &retrying,
            &run(1, 0),
            RunState::Interrupted,
            None
        ));
        assert!(should_retry(
            &retrying,
            &run(2, 1),
            RunState::Interrupted,
            None
        ));
        assert!(should_retry(&retrying, &run(3, 2), RunState::Failed, None));
        assert!(!should_retry(&retrying, &run(4, 2), RunState::Failed, None));
        // The fourth interruption of an instant is one too many.
        assert!(!should_retry(
            &retrying,
            &run(4, 3),
            RunState::Interrupted,
            None
        ));
        // A job without retries is still retried after an interruption, and not after a failure.
        let once = job(1, 3);
        assert!(should_retry(&once, &run(1, 0), RunState::Interrupted, None));
        assert!(!should_retry(&once, &run(2, 1), RunState::Failed, None));
        assert!(!should_retry(&once, &run(1, 0), RunState::Succeeded, None));
    }

    fn with_rules(rules: serde_json::Value) -> Job {
        let mut job = job(5, 3);
        job.policies.retries = serde_json::from_value(rules).unwrap();
        job.policies.retries.max_attempts = 5;
        job
    }

    #[test]
    fn the_first_retry_rule_that_matches_decides() {
        let first = run(1, 0);
        // never_on_exit_codes wins over everything.
        let job =
            with_rules(serde_json::json!({"never_on_exit_codes": [2], "on_exit_codes": [75]}));
        assert!(!should_retry(&job, &first, RunState::Failed, Some(2)));
        assert!(should_retry(&job, &first, RunState::Failed, Some(75)));
        // on_exit_codes alone: other failing codes are not retried, other endings still are.
        assert!(!should_retry(&job, &first, RunState::Failed, Some(1)));
        assert!(!should_retry(&job, &first, RunState::Failed, None));
        assert!(should_retry(&job, &first, RunState::TimedOut, None));
        assert!(should_retry(&job, &first, RunState::Interrupted, None));
        // on_reasons names the endings retried when no code rule matched.
        let job = with_rules(serde_json::json!({"on_exit_codes": [75], "on_reasons": ["failed"]}));
        assert!(should_retry(&job, &first, RunState::Failed, Some(1)));
        assert!(!should_retry(&job, &first, RunState::TimedOut, None));
        assert!(!should_retry(&job, &first, RunState::Interrupted, None));
        assert!(!should_retry(&job, &first, RunState::ProvisionFailed, None));
        // No rules: every failing ending is retried, success and cancel never.
        let job = with_rules(serde_json::json!({}));
        assert!(should_retry(&job, &first, RunState::Failed, Some(1)));
        assert!(should_retry(&job, &first, RunState::ProvisionFailed, None));
        assert!(!should_retry(&job, &first, RunState::Succeeded, Some(0)));
        assert!(!should_retry(&job, &first, RunState::Cancelled, None));
        // A rule that retries still leaves the attempt bound in force.
        let job = with_rules(serde_json::json!({"on_exit_codes": [75]}));
        assert!(!should_retry(&job, &run(5, 0), RunState::Failed, Some(75)));
    }

    #[test]
    fn retry_rules_that_contradict_or_name_no_failure_are_refused() {
        let refused = |rules: serde_json::Value| {
            let policies = Policies {
                retries: serde_json::from_value(rules).unwrap(),
                ..Policies::default()
            };
            policies.validate("policies.").unwrap_err().to_string()
        };
        let err = refused(serde_json::json!({"on_exit_codes": [3], "never_on_exit_codes": [3]}));
        assert!(
            err.contains("policies.retries.on_exit_codes") && err.contains("3"),
            "{err}"
        );
        let err = refused(serde_json::json!({"on_exit_codes": [0]}));
        assert!(err.contains("not a failing exit code"), "{err}");
        let err = refused(serde_json::json!({"never_on_exit_codes": [256]}));
        assert!(err.contains("never_on_exit_codes"), "{err}");
        let err = refused(serde_json::json!({"on_reasons": ["failed", "failed"]}));
        assert!(err.contains("names failed twice"), "{err}");
        let unknown: std::result::Result<RetryPolicy, _> =
            serde_json::from_value(serde_json::json!({"on_reasons": ["crashed"]}));
        assert!(unknown.is_err());
    }

    #[test]
    fn the_next_attempt_carries_the_interruptions_so_far() {
        let retrying = job(2, 3);
        let (fire, _) = next_attempt(&retrying, &run(1, 0), RunState::Interrupted, None).unwrap();
        assert_eq!((fire.attempt, fire.interruptions), (2, 1));
        let (fire, _) = next_attempt(&retrying, &run(2, 1), RunState::Failed, None).unwrap();
        assert_eq!((fire.attempt, fire.interruptions), (3, 1));
    }
}
