//! The job operations every API surface shares: create, replace, enable, disable, delete, run now.
//! Each keeps Redis (the truth) and the timers on RabbitMQ in step: a change bumps the job's
//! generation, so timers armed before it are dropped when they arrive.
//!
//! A create's spec and its checks are in `spec` (the spec alone) and `checks` (the deployment and
//! the other jobs).

mod checks;
mod spec;

pub use checks::check_source_target;
pub use spec::{fill_placeholders, JobSpec, MAX_KEPT_COPIES};

use chrono::{DateTime, Utc};
use spot_shared::messages::FireMessage;
use spot_shared::model::{Job, RunOverrides};
use spot_shared::store::Created;
use spot_shared::{ids, Error, Result};

use self::checks::{
    check_chains, check_instances_usable, check_notify, check_outbound_targets,
    check_secrets_readable, enforce_quotas,
};
use crate::audit::Actor;
use crate::auth::Caller;
use crate::state::AppState;

/// A job the caller owns, or 404 (also for jobs of other accounts: their existence is not revealed).
pub async fn load_owned(state: &AppState, caller: &Caller, id: &str) -> Result<Job> {
    state
        .store
        .get_job(id)
        .await?
        .filter(|job| caller.owns(&job.account))
        .ok_or_else(|| Error::not_found(format!("no job {id}")))
}

/// Creates a job for `account` and arms its first timer. `id` is the id derived from the request's
/// idempotency key ([`crate::idempotency::IdempotencyKey::job_id`]), if it had one: a job of the
/// account with that id already is the one this create made before (its answer was lost), and is
/// returned as it is instead of making a second.
pub async fn create(
    state: &AppState,
    actor: &Actor,
    account: &str,
    spec: JobSpec,
    id: Option<String>,
) -> Result<Job> {
    let now = Utc::now();
    let job = match prepare(state, account, spec, id, now).await? {
        Prepared::MadeBefore(job) => return Ok(job),
        Prepared::New(job) => job,
    };
    // The job count quota is checked by the save itself, in the same step.
    let quotas = state.settings.quotas.for_account(account);
    let (job, created) = state.creates.create(job, quotas.max_jobs).await?;
    if let Created::OverQuota(held) = created {
        state.store.note_quota_refusal("max_jobs", account).await;
        tracing::info!(account, quota = "max_jobs", "over a quota");
        return Err(quotas
            .check_job_count(held)
            .err()
            .unwrap_or_else(|| Error::internal("refused under the job quota")));
    }
    tracing::info!(job_id = %job.id, account, next = ?job.next_fire_at, "job created");
    actor
        .record(state, "create", (None, Some(&job)), None)
        .await;
    Ok(job)
}

/// A create's job, checked and ready to save, or the one an earlier sending of the same request
/// made (its answer was lost), to answer as it is.
enum Prepared {
    New(Job),
    MadeBefore(Job),
}

/// Checks `spec` (fields, outbound targets, instances, the schedule and container quotas) and
/// makes its job, with its first fire. `id` is the id the request's idempotency key gives it: a job
/// of the account with that id already is the one this create made before.
async fn prepare(
    state: &AppState,
    account: &str,
    spec: JobSpec,
    id: Option<String>,
    now: DateTime<Utc>,
) -> Result<Prepared> {
    spec.validate("")?;
    if let Some(id) = &id {
        if let Some(made) = state.store.get_job(id).await? {
            if made.account == account {
                tracing::info!(job_id = %id, "create retried with its idempotency key: the job it made");
                return Ok(Prepared::MadeBefore(made));
            }
        }
    }
    check_outbound_targets(state, &spec.runner).await?;
    check_secrets_readable(state, &spec.runner)?;
    check_notify(state, account, &spec.policies).await?;
    check_instances_usable(state, &spec.runner)?;
    let mut job = new_job(account, spec, id, now);
    check_chains(state, &job).await?;
    // Parse once more in the job's own terms (periods count from its creation) and reject a schedule
    // that has no fire left in its window.
    job.next_fire_at = if job.enabled {
        first_fire(&job, now)?
    } else {
        None
    };
    enforce_quotas(state, &job, now).await?;
    Ok(Prepared::New(job))
}

/// The most jobs one `POST /v1/jobs:batch` may create.
pub const MAX_BATCH: usize = 1000;

/// Creates many jobs for `account` at once, each valid or refused on its own: the answer has one
/// result per spec, in order. Each spec comes with the id its idempotency key gives it (see
/// [`create`]). The accepted jobs are saved together ([`spot_shared::store::Store::save_new_jobs`]);
/// if that save fails, the whole request fails and none is kept.
pub async fn create_many(
    state: &AppState,
    actor: &Actor,
    account: &str,
    specs: Vec<(Result<JobSpec>, Option<String>)>,
) -> Result<Vec<Result<Job>>> {
    let now = Utc::now();
    let mut results: Vec<Result<Job>> = Vec::with_capacity(specs.len());
    // Jobs an earlier sending of the same batch made: answered as they are, not saved again.
    let mut made_before = vec![false; specs.len()];
    for (index, (spec, id)) in specs.into_iter().enumerate() {
        let job = match spec {
            Ok(spec) => prepare(state, account, spec, id, now).await,
            Err(err) => Err(err),
        };
        let job = job.map(|prepared| match prepared {
            Prepared::MadeBefore(job) => {
                made_before[index] = true;
                job
            }
            Prepared::New(job) => job,
        });
        results.push(job);
    }
    // The job count quota, read once: the batch's jobs count against it in order.
    let quotas = state.settings.quotas.for_account(account);
    let mut stored = state.store.count_jobs(account).await?;
    for (index, result) in results.iter_mut().enumerate() {
        if made_before[index] || result.is_err() {
            continue;
        }
        if let Err(err) = quotas.check_job_count(stored) {
            state.store.note_quota_refusal("max_jobs", account).await;
            *result = Err(err);
        } else {
            stored += 1;
        }
    }
    let new_jobs: Vec<Job> = results
        .iter()
        .enumerate()
        .filter(|(index, _)| !made_before[*index])
        .filter_map(|(_, result)| result.as_ref().ok().cloned())
        .collect();
    // A failed save keeps nothing of the batch and fails the whole request (503 or 500), so that
    // the client sends it again rather than reading half an answer.
    state.store.save_new_jobs(&new_jobs).await?;
    tracing::info!(account, created = new_jobs.len(), "jobs created in a batch");
    for job in &new_jobs {
        actor.record(state, "create", (None, Some(job)), None).await;
    }
    Ok(results)
}

/// A new job (generation 1) from `spec`, with no next fire yet.
fn new_job(account: &str, spec: JobSpec, id: Option<String>, now: DateTime<Utc>) -> Job {
    Job {
        id: id.unwrap_or_else(ids::new_id),
        account: account.to_string(),
        group: spec.group,
        name: spec.name,
        description: spec.description,
        modified_by: spec.modified_by,
        tags: spec.tags,
        schedule: spec.schedule.trim().to_string(),
        timezone: spec.timezone,
        runner: spec.runner,
        enabled: spec.enabled,
        generation: 1,
        paused: None,
        policies: spec.policies,
        created_at: spot_shared::model::whole_millis(now),
        updated_at: spot_shared::model::whole_millis(now),
        next_fire_at: None,
    }
}

/// Replaces a job's specification, keeping its id, account and history.
pub async fn replace(state: &AppState, actor: &Actor, current: Job, spec: JobSpec) -> Result<Job> {
    spec.validate("")?;
    check_outbound_targets(state, &spec.runner).await?;
    check_secrets_readable(state, &spec.runner)?;
    check_notify(state, &current.account, &spec.policies).await?;
    check_instances_usable(state, &spec.runner)?;
    let now = Utc::now();
    let mut job = Job {
        group: spec.group,
        name: spec.name,
        description: spec.description,
        modified_by: spec.modified_by,
        tags: spec.tags,
        schedule: spec.schedule.trim().to_string(),
        timezone: spec.timezone,
        runner: spec.runner,
        enabled: spec.enabled,
        policies: spec.policies,
        generation: current.generation + 1,
        // Saved enabled, it is resumed; saved disabled, it keeps its note.
        paused: current.paused.clone().filter(|_| !spec.enabled),
        updated_at: now,
        next_fire_at: None,
        ..current.clone()
    };
    check_chains(state, &job).await?;
    job.next_fire_at = if job.enabled {
        first_fire(&job, now)?
    } else {
        None
    };
    // A finite schedule whose runs are used up stays over (raise max_runs to go on).
    if remaining_runs(state, &job).await? == Some(0) {
        job.next_fire_at = None;
    }
    // An edit never re-fires the past: a one-shot whose instant has come is armed again only if the
    // job never fired (a past instant runs at once for a job that has not run).
    if let Some(next) = job.next_fire_at {
        let once = !job.parsed_schedule()?.is_recurring();
        if once && next <= now && !state.store.job_run_ids(&job.id, 1).await?.is_empty() {
            job.next_fire_at = None;
        }
    }
    enforce_quotas(state, &job, now).await?;
    // A job moved to another group leaves the old one's index in the same step.
    state
        .store
        .save_job_from_group(&job, Some(&current.group))
        .await?;
    actor
        .record(state, "edit", (Some(&current), Some(&job)), None)
        .await;
    Ok(job)
}

/// Enables or disables a job. Disabling drops its timer; enabling arms the next fire from now.
pub async fn set_enabled(
    state: &AppState,
    actor: &Actor,
    current: Job,
    enabled: bool,
) -> Result<Job> {
    if current.enabled == enabled {
        return Ok(current);
    }
    let action = match (enabled, current.paused.is_some()) {
        (true, true) => "resume",
        (true, false) => "enable",
        (false, _) => "disable",
    };
    let before = current.clone();
    let now = Utc::now();
    let mut job = Job {
        enabled,
        generation: current.generation + 1,
        // Enabled, a paused job is resumed; disabled, it keeps its note.
        paused: current.paused.clone().filter(|_| !enabled),
        updated_at: now,
        next_fire_at: None,
        ..current
    };
    if enabled {
        // A one-shot that already ran stays done, as does a schedule whose max_runs are used up.
        let ran = !job.parsed_schedule()?.is_recurring()
            && !state.store.job_run_ids(&job.id, 1).await?.is_empty();
        if !ran && remaining_runs(state, &job).await? != Some(0) {
            job.next_fire_at = job.first_fire(now)?;
        }
    }
    state.store.save_job(&job).await?;
    actor
        .record(state, action, (Some(&before), Some(&job)), None)
        .await;
    Ok(job)
}

/// How many scheduled fires the job's `max_runs` has left, if it has one.
pub async fn remaining_runs(state: &AppState, job: &Job) -> Result<Option<u64>> {
    let Some(max) = job.policies.max_runs else {
        return Ok(None);
    };
    let fired = state.store.scheduled_fire_count(&job.id).await?;
    Ok(Some(u64::from(max).saturating_sub(fired)))
}

/// The longest pause note kept, in bytes.
pub const MAX_PAUSE_NOTE: usize = 1024;

/// Pauses a job with `note`: disabled (its timer dropped) and marked with why and since when. A
/// paused job paused again keeps its first time and takes the new note. [`set_enabled`] resumes it.
pub async fn pause(state: &AppState, actor: &Actor, current: Job, note: String) -> Result<Job> {
    if note.len() > MAX_PAUSE_NOTE || note.chars().any(|c| c.is_control() && c != '\n') {
        return Err(Error::invalid(
            "note",
            format!("at most {MAX_PAUSE_NOTE} bytes, no control characters but line breaks"),
        ));
    }
    let job = current.clone().paused_with(note, Utc::now());
    state.store.save_job(&job).await?;
    tracing::info!(job_id = %job.id, "job paused");
    actor
        .record(state, "pause", (Some(&current), Some(&job)), None)
        .await;
    Ok(job)
}

pub async fn delete(state: &AppState, actor: &Actor, job: &Job) -> Result<()> {
    state.store.delete_job(job).await?;
    tracing::info!(job_id = %job.id, "job deleted");
    actor.record(state, "delete", (Some(job), None), None).await;
    Ok(())
}

/// Fires the job now, outside its schedule (which is not moved). Returns the fire's instant. A
/// request with an idempotency key fires at its first sending's instant however often it is sent,
/// so the fire's marker makes it one run even past the key's lease.
pub async fn run_now(
    state: &AppState,
    actor: &Actor,
    job: &Job,
    key: &crate::idempotency::IdempotencyKey,
) -> Result<DateTime<Utc>> {
    run_now_with(state, actor, job, key, &RunOverrides::default()).await
}

/// [`run_now`] with `overrides` (image, command, environment) for that run alone: checked like a
/// job's fields, kept with the fire before it is scheduled, so its run (and every retry of it) is
/// recorded with them.
pub async fn run_now_with(
    state: &AppState,
    actor: &Actor,
    job: &Job,
    key: &crate::idempotency::IdempotencyKey,
    overrides: &RunOverrides,
) -> Result<DateTime<Utc>> {
    if !job.enabled {
        return Err(Error::conflict("the job is disabled; enable it first"));
    }
    if !overrides.is_empty() {
        let Some(container) = job.container() else {
            return Err(Error::invalid(
                "overrides",
                "image, cmd and env apply to container jobs only",
            ));
        };
        overrides.validate(container)?;
    }
    // Millisecond instants: two clicks in one millisecond are one fire.
    let mut now =
        DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap_or_else(Utc::now);
    if let Some(key) = key.key() {
        let ttl = std::time::Duration::from_secs(state.settings.api.idempotency_ttl_secs);
        now = state
            .store
            .keyed_instant(&job.account, &job.id, key, now, ttl)
            .await?;
    }
    if !overrides.is_empty() {
        state
            .store
            .set_fire_overrides(&job.id, now, overrides)
            .await?;
    }
    let fire = FireMessage {
        manual: true,
        relaunch: false,
        ..FireMessage::scheduled(&job.id, job.generation, now)
    };
    // Recorded in Redis, handed to RabbitMQ by the pump: a run-now survives a broker outage.
    state.store.schedule_fire(&fire, now).await?;
    let mut detail = serde_json::json!({ "instant": now });
    if !overrides.is_empty() {
        detail["overrides"] = serde_json::to_value(overrides).unwrap_or_default();
    }
    actor
        .record(state, "run_now", (Some(job), Some(job)), Some(detail))
        .await;
    Ok(now)
}

fn first_fire(job: &Job, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>> {
    let next = job.first_fire(now)?;
    if next.is_none() {
        return Err(Error::invalid(
            "schedule",
            "has no fire between start_at and end_at",
        ));
    }
    Ok(next)
}

/// Marks a run's instance terminating and asks the reaper to terminate it, its container given
/// `stop_grace_secs` after its stop signal (0: at once).
pub async fn terminate_instance(
    state: &AppState,
    run: &spot_shared::model::Run,
    reason: &str,
    stop_grace_secs: u64,
) -> Result<()> {
    use spot_shared::model::InstanceState;
    let Some(instance_id) = &run.instance_id else {
        return Ok(());
    };
    if let Some(instance) = state.store.get_instance(instance_id).await? {
        if matches!(
            instance.state,
            InstanceState::Requested | InstanceState::Running
        ) {
            state
                .store
                .advance_instance(instance_id, InstanceState::Terminating, &[])
                .await?;
        }
    }
    state
        .broker
        .request_terminate(&spot_shared::messages::TerminateRequest {
            instance_id: instance_id.clone(),
            run_id: run.id.clone(),
            reason: reason.to_string(),
            stop_grace_secs,
        })
        .await
}
